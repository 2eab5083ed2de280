//! A full disk under the real agent: its data dir is a small tmpfs mounted in a user and
//! mount namespace of its own (`unshare --user --map-root-user --mount`, no root needed),
//! filled and freed from the test with `nsenter`. Real mosquitto, real Modbus server.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_drivers::sim::register_server::{self, RegisterBank};
use support::agent::config_with;
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, loopback, metric, wait_for};
use tokio_util::sync::CancellationToken;

/// A PLC with 50 holding registers.
async fn plc(cancel: &CancellationToken) -> (u16, String) {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &(0..50).collect::<Vec<u16>>());
    let (listener, addr) = register_server::bind(loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, bank.shared(), cancel.clone()));
    let tags: String = (0..50).map(|i| format!("[[devices.tags]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\n")).collect();
    (addr.port(), tags)
}

/// The agent, running with `data` on an 8 MiB tmpfs that only it (and `nsenter`) sees.
struct Agent {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(cfg: &Path, data: &Path, log: PathBuf) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size=8m tmpfs "$0" || { echo "MOUNT FAILED" >&2; exit 97; }; exec "$1" run --config "$2""#)
            .arg(data)
            .arg(env!("CARGO_BIN_EXE_edge-agent"))
            .arg(cfg)
            .env("EDGE_AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("this test needs util-linux `unshare` (user and mount namespaces)");
        let mut agent = Agent { child: Some(child), data: data.to_path_buf(), log };
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!(
                "could not start the agent on a tmpfs in a user+mount namespace ({status}); this machine must allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or run as root). Log:\n{}",
                agent.log_text()
            );
        }
        agent
    }

    /// Runs `script` in the agent's mount namespace (`$0` is the data dir).
    fn in_namespace(&self, script: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "--user", "--mount", "--preserve-credentials", "sh", "-c", script])
            .arg(&self.data)
            .output()
            .expect("this test needs util-linux `nsenter`");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Fills the tmpfs up to the last block.
    fn fill_disk(&self) {
        self.in_namespace(r#"cat /dev/zero > "$0/filler" 2>/dev/null; test -s "$0/filler""#);
    }

    fn free_disk(&self) {
        self.in_namespace(r#"rm "$0/filler""#);
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        support::broker::signal(&child, "TERM");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ---\n{}",
                self.log_text().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The value of `name{label="value"}` in Prometheus text.
fn labelled(text: &str, name: &str, label: &str) -> u64 {
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name}{{{label}}} not in /metrics"))
}

async fn wait_metrics(web: u16, what: &str, limit: Duration, check: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let m = http_get(web, "/metrics").await;
        if check(&m) {
            return m;
        }
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for {what}; /metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 50 samples a batch, so ten batches' worth (what is kept in memory) is one second of polls.
const STORE: &str = "max_bytes = \"256 KiB\"\nmax_batch_samples = 50";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_counts_and_events_the_drops_and_writes_resume_when_space_returns_without_a_restart() {
    // Given an agent publishing to an ERP, its data dir on a small filesystem
    let cancel = CancellationToken::new();
    let (plc_port, tags) = plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config_with(&dir.path().join("data"), broker.port, plc_port, web, STORE, &tags)).unwrap();
    let agent = Agent::start(&cfg, &dir.path().join("data"), dir.path().join("agent.log"));
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    wait_for("telemetry", Duration::from_secs(20), || (!erp.telemetry().is_empty()).then_some(())).await;

    // When the disk fills up
    agent.fill_disk();

    // Then writes fail, the store shows unwritable, and the samples past the memory bound
    // are counted as dropped
    let m = wait_metrics(web, "the store unwritable and dropping from memory", Duration::from_secs(20), |m| {
        metric(m, "edge_agent_store_writable") == 0
            && labelled(m, "edge_agent_store_unwritten_samples_dropped_total", "reason=\"memory_bound\"") > 0
    })
    .await;
    assert!(metric(&m, "edge_agent_store_write_errors_total") >= 1, "{m}");
    assert!(
        metric(&m, "edge_agent_store_samples_dropped_total")
            >= labelled(&m, "edge_agent_store_unwritten_samples_dropped_total", "reason=\"memory_bound\"")
    );
    let status: serde_json::Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    assert_eq!(status["store"]["writable"], false, "{status}");
    let stored_while_full = metric(&m, "edge_agent_store_samples_stored_total");

    // When space returns
    agent.free_disk();

    // Then the store is reopened and writes resume, without a restart
    let m = wait_metrics(web, "writes to resume", Duration::from_secs(60), |m| {
        metric(m, "edge_agent_store_writable") == 1 && metric(m, "edge_agent_store_samples_stored_total") > stored_while_full + 500
    })
    .await;
    assert!(metric(&m, "edge_agent_store_reopens_total") >= 1, "{m}");
    let dropped = labelled(&m, "edge_agent_store_unwritten_samples_dropped_total", "reason=\"memory_bound\"");
    // and the ERP is told what was dropped, in a buffer_overflow event
    let overflow = wait_for("a buffer_overflow event", Duration::from_secs(20), || {
        erp.all().into_iter().find(|m| m.topic.ends_with("/events") && m.json["kind"] == "buffer_overflow")
    })
    .await;
    let told = overflow.json["details"]["dropped_unwritten_samples"].as_u64().unwrap_or(0);
    assert!(told > 0 && told <= dropped, "event says {told}, /metrics {dropped}: {}", overflow.json);
    // and telemetry keeps arriving, with no batch_seq twice (one connection throughout, so
    // QoS 1 had no reason to repeat one) and none with two contents
    let seen = erp.batch_seqs().into_iter().max().unwrap_or(0);
    wait_for("newer telemetry", Duration::from_secs(20), || erp.batch_seqs().into_iter().any(|s| s > seen + 5).then_some(())).await;
    let m = http_get(web, "/metrics").await;
    assert_eq!(metric(&m, "edge_agent_uplink_connects_total"), 1, "the uplink reconnected: {m}");
    let mut by_seq: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for b in erp.telemetry() {
        by_seq.entry(b["batch_seq"].as_u64().unwrap()).or_default().push(b["samples"].clone());
    }
    for (seq, contents) in &by_seq {
        assert_eq!(contents.len(), 1, "batch_seq {seq} received {} times", contents.len());
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_a_full_disk_ends_within_shutdown_timeout_and_logs_what_it_dropped() {
    // Given an agent whose disk is full (shutdown_timeout = 5 s)
    let cancel = CancellationToken::new();
    let (plc_port, tags) = plc(&cancel).await;
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config_with(&dir.path().join("data"), broker.port, plc_port, web, STORE, &tags)).unwrap();
    let mut agent = Agent::start(&cfg, &dir.path().join("data"), dir.path().join("agent.log"));
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    wait_metrics(web, "samples stored", Duration::from_secs(20), |m| metric(m, "edge_agent_store_samples_stored_total") > 0).await;
    agent.fill_disk();
    wait_metrics(web, "the store unwritable", Duration::from_secs(20), |m| metric(m, "edge_agent_store_writable") == 0).await;

    // When it is asked to stop
    let started = Instant::now();
    let status = agent.terminate();

    // Then it exits by itself within shutdown_timeout and a margin
    let took = started.elapsed();
    assert!(status.is_some(), "the agent did not exit within 20 s of SIGTERM");
    assert!(took < Duration::from_secs(12), "the agent took {took:?} to stop with shutdown_timeout = 5 s");
    // and says how many samples it could not write
    let log = agent.log_text();
    assert!(log.contains("the store could not be written before the writer stopped"), "{log}");
    cancel.cancel();
}
