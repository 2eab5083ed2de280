//! Data-change notifications one OPC-UA subscription sustains, and the CPU the driver
//! spends on them.
//!
//! `cargo bench -p edge-drivers --bench opcua_notifications` (figures go to BENCHMARKS.md
//! with the machine). A simulated server (its own thread and runtime) changes every one of
//! OPCUA_BENCH_ITEMS nodes (default 100) as fast as it can; the driver (one subscription,
//! publishing interval OPCUA_BENCH_PUBLISH_MS, default 50 ms) runs on the bench's
//! single-threaded runtime, so that thread's CPU time is the driver's (the library's
//! session and subscription loops included) and the server's is not counted. Runs
//! OPCUA_BENCH_SECS seconds (default 10) after the first value of every item.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_drivers::config::{DeviceConfig, Protocol, TagConfig};
use edge_drivers::modbus::write_channel;
use edge_drivers::opcua::{run_device, OpcuaConfig};
use edge_drivers::sim::opcua_server::{OpcuaSim, SimOptions};
use edge_drivers::{ReportKind, Value};
use opcua::types::Variant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) of the calling thread, from /proc (clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces): the
    // state is the first; utime and stime (fields 14 and 15 of the line) the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

fn main() {
    let items = env_u64("OPCUA_BENCH_ITEMS", 100) as usize;
    let secs = env_u64("OPCUA_BENCH_SECS", 10);
    let publish_ms = env_u64("OPCUA_BENCH_PUBLISH_MS", 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<String> = (0..items).map(|i| format!("V{i:05}")).collect();
    let sim = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: false,
        user: None,
        x509_user: None,
        nodes: names.iter().map(|n| (n.clone(), Variant::Double(0.0))).collect(),
    })
    .expect("start the simulated server");
    let sim = Arc::new(sim);

    // The server side: every node changes every round, as fast as the server takes it.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let ids: Vec<_> = names.iter().map(|n| sim.node_id(n)).collect();
    let writer = {
        let (sim, stop, rounds) = (sim.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut x = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                x += 1.0;
                let values: Vec<_> = ids.iter().map(|id| (id.clone(), Variant::Double(x))).collect();
                let _ = sim.set_many(&values);
                rounds.fetch_add(1, Ordering::Relaxed);
                // Leave the server's threads room to publish.
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (received, cpu, wall, counted) = rt.block_on(async {
        let tags = names
            .iter()
            .map(|n| TagConfig {
                name: n.to_lowercase(),
                table: None,
                address: None,
                node_id: Some(format!("ns=2;s={n}")),
                ..Default::default()
            })
            .collect();
        let device = DeviceConfig {
            name: "bench".into(),
            protocol: Protocol::Opcua,
            opcua: Some(OpcuaConfig {
                endpoint: sim.endpoint(),
                publishing_interval: Duration::from_millis(publish_ms),
                sampling_interval: Some(Duration::ZERO),
                queue_size: 100,
                ..Default::default()
            }),
            timeout: Duration::from_secs(5),
            tags,
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(1024);
        let (_w, inbox) = write_channel(1);
        let cancel = CancellationToken::new();
        let pki = edge_drivers::opcua::pki_dir(dir.path());
        let device = edge_drivers::opcua::OpcuaDevice::build(&device).unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(run_device(device, pki, tx, inbox, cancel.clone()));
        // Warm up: a good value of every item.
        let mut seen = std::collections::HashSet::new();
        let warm_deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < items {
            let left = warm_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(r)) => {
                    if let ReportKind::Samples(s) = r.kind {
                        seen.extend(
                            s.into_iter().filter(|s| s.quality.is_good() && matches!(s.value, Some(Value::Float(_)))).map(|s| s.tag),
                        );
                    }
                }
                _ => panic!("only {} of {items} items reported in 60 s", seen.len()),
            }
        }
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        let mut received = 0u64;
        let mut last_stats = None;
        let end = t0 + Duration::from_secs(secs);
        while let Ok(Some(r)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
            match r.kind {
                ReportKind::Samples(s) => received += s.iter().filter(|s| s.quality.is_good()).count() as u64,
                ReportKind::Stats(s) => last_stats = Some(s),
                _ => {}
            }
        }
        let (cpu, wall) = (thread_cpu() - cpu0, t0.elapsed());
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        (received, cpu, wall, last_stats.map(|s| s.notifications))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let w = wall.as_secs_f64();
    println!("opcua_notifications: {items} items, publishing interval {publish_ms} ms, queue 100, {secs} s");
    println!("  server rounds (every item changed): {:.0}/s", rounds.load(Ordering::Relaxed) as f64 / w);
    println!("  notifications received by the driver: {:.0}/s ({received} in {w:.1} s; driver counter {counted:?})", received as f64 / w);
    println!("  driver thread CPU: {:.1} % of one core ({:.2} s CPU)", 100.0 * cpu.as_secs_f64() / w, cpu.as_secs_f64());
}
