//! Supervision of the agent's tasks, in the real binary against a real mosquitto and a
//! real Modbus server: a task that panics is restarted (or the agent exits non-zero so
//! that systemd restarts it), the health verdict says so, and a closed stderr stops nothing.
//!
//! The panics come from the debug-build-only seam `EDGE_AGENT_TEST_PANIC=<task>@<ms>`
//! (agent/src/runtime/fault.rs); `cargo test` builds the binary in the debug profile.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::agent::{config, Killed};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, loopback, wait_for};
use tokio_util::sync::CancellationToken;

const TAGS: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"
"#;

/// The real binary with `config_path`, extra environment, and stderr to `stderr`.
fn start_agent(config_path: &Path, env: &[(&str, &str)], stderr: Stdio) -> Child {
    let mut cmd = support::agent::command(config_path);
    cmd.stderr(stderr).envs(env.iter().copied());
    cmd.spawn().expect("start edge-agent")
}

/// Waits for the process to exit by itself within `limit`; kills it and fails otherwise.
fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    support::agent::wait_exit(child, limit).unwrap_or_else(|| panic!("the agent did not exit within {limit:?}"))
}

async fn status(web: u16) -> serde_json::Value {
    serde_json::from_str(&http_get(web, "/api/status").await).expect("/api/status is JSON")
}

/// The highest `batch_seq` the ERP has received.
fn newest(erp: &Subscriber) -> u64 {
    erp.batch_seqs().into_iter().max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_task_that_panics_is_restarted_keeps_publishing_and_the_verdict_shows_the_restart() {
    // Given a PLC, a broker with an ERP subscribed, and an agent whose uplink task will
    // panic 2 s after it starts
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, web, TAGS)).unwrap();
    let log = dir.path().join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let agent = Killed(start_agent(&cfg, &[("EDGE_AGENT_TEST_PANIC", "uplink@2000")], Stdio::from(out)));
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;

    // When the panic has happened
    let mut restarted = serde_json::Value::Null;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let st = status(web).await;
        if st["tasks"]["uplink"]["restarts"] == 1 && st["tasks"]["uplink"]["state"] == "running" {
            restarted = st;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!restarted.is_null(), "the uplink was not restarted; log:\n{}", log_text());

    // Then the register names the cause, and the verdict shows the restart (degraded, ready)
    let uplink = &restarted["tasks"]["uplink"];
    assert!(uplink["last_exit"].as_str().unwrap_or("").starts_with("panicked: injected by EDGE_AGENT_TEST_PANIC"), "{uplink}");
    assert_eq!(uplink["core"], true);
    let health = &restarted["health"];
    assert_eq!(health["state"], "degraded", "{health}");
    assert_eq!(health["ready"], true, "{health}");
    assert!(health["reasons"].as_array().unwrap().iter().any(|r| r["code"] == "task_restarted" && r["subject"] == "uplink"), "{health}");
    // And /metrics says the same
    let metrics = http_get(web, "/metrics").await;
    for line in [
        "edge_agent_task_restarts_total{task=\"uplink\"} 1",
        "edge_agent_task_up{task=\"uplink\"} 1",
        "edge_agent_health{state=\"degraded\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    // And the agent is ready again (a core task runs again, the store is writable)
    assert_eq!(http_get(web, "/readyz").await, "ready");
    // And the log has the cause
    assert!(log_text().contains("task ended unexpectedly; restarting"), "{}", log_text());

    // And the restarted uplink publishes new readings to the ERP
    let before = newest(&erp);
    wait_for("new batches after the restart", Duration::from_secs(20), || (newest(&erp) >= before + 5).then_some(())).await;
    // And no other task was restarted
    let st = status(web).await;
    for (name, task) in st["tasks"].as_object().unwrap() {
        if name != "uplink" {
            assert_eq!(task["restarts"], 0, "{name}: {task}");
        }
    }
    drop(agent);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writer_that_panics_makes_the_agent_stop_in_order_and_exit_non_zero() {
    // Given an agent whose store writer panics 2 s after it starts
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, web, TAGS)).unwrap();
    let log = dir.path().join("agent.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut agent = start_agent(&cfg, &[("EDGE_AGENT_TEST_PANIC", "store-writer@2000")], Stdio::from(out));

    // When it panics, then the process exits by itself, non-zero (systemd restarts it)
    let status = wait_exit(&mut agent, Duration::from_secs(30));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit status {status:?}; log:\n{log_text}");
    assert_eq!(status.code(), Some(1), "log:\n{log_text}");
    // And the log says which task, why, and that the agent stopped for systemd
    assert!(log_text.contains("task store-writer panicked: injected by EDGE_AGENT_TEST_PANIC"), "{log_text}");
    assert!(log_text.contains("systemd restarts it"), "{log_text}");
    // And it stopped in order: the uplink said goodbye (retained offline status)
    wait_for("the offline status", Duration::from_secs(10), || {
        erp.all().iter().any(|m| m.topic.ends_with("/status") && m.json["state"] == "offline").then_some(())
    })
    .await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stderr_does_not_stop_the_agent_from_publishing() {
    // Given an agent logging into a pipe
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, web, TAGS)).unwrap();
    let mut child = start_agent(&cfg, &[], Stdio::piped());
    let mut stderr = child.stderr.take().expect("stderr pipe");
    let mut agent = Killed(child);
    // and running: it published a batch
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("agent running") {
        let n = stderr.read(&mut buf).expect("read the agent's stderr");
        assert!(n > 0, "stderr closed early:\n{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    wait_for("a first batch", Duration::from_secs(20), || (newest(&erp) >= 1).then_some(())).await;

    // When the reading end of its stderr is closed (as when journald restarts)
    drop(stderr);
    // and something worth a warning happens: the broker goes away
    let mut broker = broker;
    broker.stop();
    let mut lost = 0;
    for _ in 0..200 {
        lost = support::metric(&http_get(web, "/metrics").await, "edge_agent_log_lines_lost_total");
        if lost > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lost > 0, "the agent never wrote to its closed stderr");
    // and comes back
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;

    // Then the agent reconnects and keeps publishing new readings
    let before = newest(&erp);
    wait_for("new batches with stderr closed", Duration::from_secs(30), || (newest(&erp) >= before + 10).then_some(())).await;
    // And no task died or restarted, and it is ready
    let st = status(web).await;
    // (the model event sink has finished: this agent runs no model)
    for (name, task) in st["tasks"].as_object().unwrap() {
        let state = if name == "model-events" { "finished" } else { "running" };
        assert_eq!((task["state"].as_str(), task["restarts"].as_u64()), (Some(state), Some(0)), "{name}: {task}");
    }
    assert_eq!(st["health"]["ready"], true, "{}", st["health"]);
    // And it still stops cleanly on SIGTERM, with a zero exit
    support::broker::signal(&agent.0, "TERM");
    let status = wait_exit(&mut agent.0, Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    cancel.cancel();
}
