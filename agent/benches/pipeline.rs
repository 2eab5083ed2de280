//! End-to-end benchmark: samples → store writer → sled outbox → uplink → mosquitto
//! (QoS 1, PUBACK deletes) → a subscriber, all on loopback, in one process plus Debian's
//! mosquitto.
//!
//! `cargo bench -p edge-agent --bench pipeline` (needs /usr/sbin/mosquitto). Phases:
//! 1. sustained: producers push PIPELINE_BENCH_RATE samples/s (default 200000) for
//!    PIPELINE_BENCH_SECS (default 30): samples/s stored and received by the subscriber,
//!    the backlog left at the end (0 = sustained), and the latency from a sample's
//!    timestamp to its arrival at the subscriber (p50/p99); then 10 s as fast as the
//!    pipeline takes them, for the ceiling;
//! 2. outage: the broker is stopped for PIPELINE_BENCH_OUTAGE_SECS (default 600) while live
//!    data continues at PIPELINE_BENCH_LIVE_RATE samples/s (default 20000), then restarted:
//!    the replay rate of historical batches while live data continues, the time to drain,
//!    and bytes on disk per buffered sample.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use edge_agent::config::load_str;
use edge_agent::live::{GatewayView, Live};
use edge_agent::store::writer::Writer;
use edge_agent::store::Outbox;
use edge_agent::uplink::Uplink;
use edge_drivers::{DeviceReport, Quality, ReportKind, Sample, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};

const DEVICES: usize = 10;
const SAMPLES_PER_REPORT: usize = 500;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    fn start(port: u16, dir: tempfile::TempDir) -> Broker {
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n",
                dir.path().display()
            ),
        )
        .expect("mosquitto.conf");
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start mosquitto");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { port, dir, child: Some(child) }
    }

    fn stop(mut self) -> (u16, tempfile::TempDir) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp"));
        (port, dir)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Default)]
struct Received {
    samples: AtomicU64,
    historical_batches: AtomicU64,
    live_batches: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
}

async fn subscriber(port: u16, received: Arc<Received>) {
    let mut opts = MqttOptions::new("bench-erp", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30)).set_clean_session(false).set_max_packet_size(8 << 20, 8 << 20).set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    let _ = client.subscribe("plant/#", QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.contains("/telemetry/") => {
                    let now = Utc::now();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else { continue };
                    let n = v["samples"].as_array().map_or(0, Vec::len) as u64;
                    received.samples.fetch_add(n, Ordering::Relaxed);
                    if v["historical"] == true {
                        received.historical_batches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        received.live_batches.fetch_add(1, Ordering::Relaxed);
                        if let Some(ts) = v["samples"][0]["ts"].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()) {
                            received.latencies_ms.lock().expect("lock").push((now - ts).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
}

/// Pushes reports for DEVICES devices; `rate` samples/s, or as fast as accepted when 0.
async fn produce(tx: mpsc::Sender<DeviceReport>, rate: u64, until: Instant) {
    let tags: Vec<String> = (0..SAMPLES_PER_REPORT).map(|i| format!("tag_{i:04}")).collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < until {
        for d in 0..DEVICES {
            let now = Utc::now();
            let samples = tags
                .iter()
                .enumerate()
                .map(|(i, t)| Sample {
                    tag: t.clone(),
                    value: Some(Value::Float(100.0 + i as f64 * 0.5)),
                    quality: Quality::Good,
                    source_ts: now,
                    server_ts: None,
                    agent_ts: now,
                })
                .collect();
            if tx.send(DeviceReport { device: format!("plc{d:02}"), kind: ReportKind::Samples(samples) }).await.is_err() {
                return;
            }
            sent += SAMPLES_PER_REPORT as u64;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries.flatten().map(|e| if e.path().is_dir() { dir_bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) }).sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_u64("PIPELINE_BENCH_SECS", 30);
    let rate = env_u64("PIPELINE_BENCH_RATE", 200_000);
    let outage = env_u64("PIPELINE_BENCH_OUTAGE_SECS", 600);
    let live_rate = env_u64("PIPELINE_BENCH_LIVE_RATE", 20_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let broker = Broker::start(port, tempfile::tempdir().expect("tmp"));
    let data = tempfile::tempdir().expect("tmp");
    let config = load_str(
        &format!(
            r#"
[gateway]
id = "bench"
site = "bench"
data_dir = "{}"
[mqtt]
port = {port}
max_inflight = 256
start_delay_max = "0s"
replay_max_per_sec = 200
[store]
flush_interval = "100ms"
max_batch_samples = 1000
max_bytes = "2 GiB"
[web]
enabled = false
"#,
            data.path().display()
        ),
        "bench.toml",
    )
    .expect("bench config");
    let outbox = Outbox::open(data.path()).expect("outbox");
    let live = Live::new(GatewayView::default(), &[]);
    let stored = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(64);
    let writer = Writer {
        outbox: outbox.clone(),
        gateway: "bench".into(),
        config: config.store.clone(),
        live: live.clone(),
        stored: stored.clone(),
        heartbeat: Default::default(),
    };
    let writer = tokio::spawn(writer.run(rx));
    let (stop_tx, stop_rx) = watch::channel(None);
    let uplink = tokio::spawn(Uplink { config: config.clone(), outbox: outbox.clone(), live: live.clone(), stored }.run(stop_rx));
    let received = Arc::new(Received::default());
    subscriber(port, received.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Phase 1: a fixed rate, then as fast as it goes.
    for (label, target, run) in [("sustained", rate, secs), ("ceiling", 0, 10)] {
        let got0 = received.samples.load(Ordering::Relaxed);
        let stored0 = outbox.counters().samples_stored.load(Ordering::Relaxed);
        received.latencies_ms.lock().expect("lock").clear();
        let t0 = Instant::now();
        produce(tx.clone(), target, t0 + Duration::from_secs(run)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let backlog = outbox.pending_batches();
        let stored = outbox.counters().samples_stored.load(Ordering::Relaxed) - stored0;
        let got = received.samples.load(Ordering::Relaxed) - got0;
        let mut lat = std::mem::take(&mut *received.latencies_ms.lock().expect("lock"));
        lat.sort_by(f64::total_cmp);
        let asked = if target == 0 { "as fast as accepted".to_string() } else { format!("{target} samples/s offered") };
        println!("{label} ({run} s, {DEVICES} devices, {asked}):");
        println!(
            "  stored {:.0} samples/s; received by the subscriber {:.0} samples/s; backlog at the end {backlog} batches",
            stored as f64 / elapsed,
            got as f64 / elapsed
        );
        println!(
            "  sample -> subscriber latency: p50 {:.0} ms, p99 {:.0} ms ({} batches)",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.len()
        );
        let drain_start = Instant::now();
        while outbox.pending_batches() > 0 && drain_start.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Let the backlog of phase 1 drain before the outage.
    let drain_start = Instant::now();
    while outbox.pending_batches() > 0 && drain_start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Phase 2: outage with live data continuing, then replay.
    let (port_again, dir) = broker.stop();
    let stored_before = outbox.counters().samples_stored.load(Ordering::Relaxed);
    let producer = tokio::spawn(produce(tx.clone(), live_rate, Instant::now() + Duration::from_secs(outage + 600)));
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let buffered = outbox.pending_batches();
    let buffered_samples = outbox.counters().samples_stored.load(Ordering::Relaxed) - stored_before;
    let disk = dir_bytes(data.path());
    let hist0 = received.historical_batches.load(Ordering::Relaxed);
    let live0 = received.live_batches.load(Ordering::Relaxed);
    let broker = Broker::start(port_again, dir);
    let t1 = Instant::now();
    while outbox.pending_batches() > 10 && t1.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = t1.elapsed().as_secs_f64();
    let hist = received.historical_batches.load(Ordering::Relaxed) - hist0;
    let live_during = received.live_batches.load(Ordering::Relaxed) - live0;
    println!("outage {outage} s with live data at {live_rate} samples/s:");
    println!(
        "  buffered {buffered} batches ({buffered_samples} samples); outbox dir {:.1} MiB = {:.0} bytes on disk per buffered sample",
        disk as f64 / (1 << 20) as f64,
        disk as f64 / buffered_samples.max(1) as f64
    );
    println!(
        "  after reconnect: backlog drained in {drain:.1} s; replay {:.0} historical batches/s while {:.1} live batches/s kept flowing",
        hist as f64 / drain,
        live_during as f64 / drain
    );

    producer.abort();
    drop(tx);
    let _ = writer.await;
    let _ = stop_tx.send(Some(tokio::time::Instant::now() + Duration::from_secs(5)));
    let _ = uplink.await;
    drop(broker);
}
