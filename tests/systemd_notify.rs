//! The agent under systemd, without systemd: the real binary against a real mosquitto and
//! a real Modbus server, with the test as the service manager. `NOTIFY_SOCKET` points at a
//! datagram socket the test binds (READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1
//! arrive there), and `systemctl reload` is a SIGHUP sent by the test.

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;

use support::agent::{config, Killed};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, loopback, wait_for};
use tokio_util::sync::CancellationToken;

const COUNTER: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"
"#;

const COUNTER_AND_SECOND: &str = r#"
[[devices.tags]]
name = "counter"
table = "holding"
address = 0
type = "u16"

[[devices.tags]]
name = "second"
table = "holding"
address = 1
type = "u16"
"#;

/// The real binary; with `journal`, its stderr (the log file) is announced as a journald
/// stream (`JOURNAL_STREAM=<dev>:<ino>` of the log file), as systemd does.
fn start_agent(config_path: &Path, log: &Path, env: &[(&str, &str)], journal: bool) -> Killed {
    use std::os::unix::fs::MetadataExt;
    let out = std::fs::File::create(log).expect("create the agent log");
    let meta = out.metadata().expect("stat the agent log");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut cmd = support::agent::command(config_path);
    cmd.stderr(out).envs(env.iter().copied());
    if journal {
        cmd.env("JOURNAL_STREAM", &stream);
    }
    Killed(cmd.spawn().expect("start edge-agent"))
}

fn signal(child: &Child, name: &str) {
    support::broker::signal(child, name);
}

/// Every tag name the ERP has received readings of.
fn tags_seen(erp: &Subscriber) -> Vec<String> {
    let mut tags: Vec<String> = erp
        .telemetry()
        .iter()
        .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["tag"].as_str().map(str::to_string))
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Reads notifications from `socket` until `want` matches one (or `limit` passes); returns
/// everything read, in order.
async fn read_until(socket: &UnixDatagram, got: &mut Vec<String>, limit: Duration, want: impl Fn(&str) -> bool) -> bool {
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    while start.elapsed() < limit {
        let left = limit.saturating_sub(start.elapsed());
        if let Ok(Ok(n)) = tokio::time::timeout(left, socket.recv(&mut buf)).await {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = want(&text);
            got.push(text);
            if hit {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_its_service_manager_ready_status_watchdog_pings_and_stopping() {
    // Given a PLC, a broker, and a notify socket the test listens on
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0, 7], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, web, COUNTER)).unwrap();
    let log = dir.path().join("agent.log");
    // When the agent starts with NOTIFY_SOCKET and a 2 s watchdog
    let agent = start_agent(&cfg, &log, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")], false);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut got = Vec::new();

    // Then READY=1 arrives, and a STATUS= line with the verdict
    assert!(read_until(&socket, &mut got, Duration::from_secs(20), |m| m.contains("READY=1")).await, "{got:?}\n{}", log_text());
    let status =
        |m: &str| m.lines().any(|l| ["ok", "attention", "degraded", "fault"].iter().any(|s| l.starts_with(&format!("STATUS={s}"))));
    assert!(read_until(&socket, &mut got, Duration::from_secs(10), status).await, "{got:?}");
    support::wait_listening(loopback(web), Duration::from_secs(10)).await;
    // And WATCHDOG=1 pings keep coming while every loop beats (at least 3 within 4 s: every
    // second with a 2 s watchdog), and no task is marked hung
    let start = got.len();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        read_until(&socket, &mut got, deadline.saturating_duration_since(Instant::now()), |_| false).await;
    }
    let pings = got[start..].iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert!(pings >= 3, "{pings} pings: {got:?}\n{}", log_text());
    let st: serde_json::Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    assert!(st["tasks"].as_object().unwrap().values().all(|t| t["hung_for_s"].is_null()), "{st}");

    // When SIGTERM arrives, then STOPPING=1 is sent and the agent exits 0
    signal(&agent.0, "TERM");
    assert!(read_until(&socket, &mut got, Duration::from_secs(10), |m| m.contains("STOPPING=1")).await, "{got:?}\n{}", log_text());
    let mut agent = agent;
    let exited = wait_for("the agent to exit", Duration::from_secs(15), || agent.0.try_wait().ok().flatten()).await;
    assert!(exited.success(), "{exited:?}\n{}", log_text());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_file_and_a_broken_one_is_refused_while_the_agent_keeps_running() {
    // Given an agent publishing one tag, with a notify socket listening
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0, 7], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    let data = dir.path().join("data");
    std::fs::write(&cfg, config(&data, broker.port, plc, web, COUNTER)).unwrap();
    let log = dir.path().join("agent.log");
    let agent = start_agent(&cfg, &log, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())], true);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut got = Vec::new();
    assert!(read_until(&socket, &mut got, Duration::from_secs(20), |m| m.contains("READY=1")).await, "{got:?}\n{}", log_text());
    wait_for("the counter at the ERP", Duration::from_secs(20), || tags_seen(&erp).contains(&"counter".to_string()).then_some(())).await;
    assert!(!tags_seen(&erp).contains(&"second".to_string()));

    // When the file gains a tag and SIGHUP arrives (`systemctl reload`)
    std::fs::write(&cfg, config(&data, broker.port, plc, web, COUNTER_AND_SECOND)).unwrap();
    signal(&agent.0, "HUP");
    // Then systemd hears RELOADING=1 (with MONOTONIC_USEC) and READY=1 again
    assert!(read_until(&socket, &mut got, Duration::from_secs(15), |m| m.contains("RELOADING=1")).await, "{got:?}\n{}", log_text());
    let reloading = got.last().cloned().unwrap_or_default();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    assert!(read_until(&socket, &mut got, Duration::from_secs(15), |m| m.contains("READY=1")).await, "{got:?}\n{}", log_text());
    // And the new tag reaches the ERP
    wait_for("the new tag at the ERP", Duration::from_secs(20), || tags_seen(&erp).contains(&"second".to_string()).then_some(())).await;

    // When the file is broken and SIGHUP arrives
    std::fs::write(&cfg, "[gateway]\nid = \n").unwrap();
    signal(&agent.0, "HUP");
    // Then the refusal is logged with the report, as an error for journald (`<3>`, no
    // timestamp), and the agent keeps running and publishing
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        log_text()
            .lines()
            .any(|l| l.starts_with("<3>SIGHUP: the config was not reloaded; the agent keeps running with the old one"))
            .then_some(())
    })
    .await;
    assert!(log_text().lines().any(|l| l.starts_with("<6>agent running")), "{}", log_text());
    let before = erp.batch_seqs().into_iter().max().unwrap_or(0);
    wait_for("new batches after the refused reload", Duration::from_secs(20), || {
        (erp.batch_seqs().into_iter().max().unwrap_or(0) >= before + 3).then_some(())
    })
    .await;
    let mut agent = agent;
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited:\n{}", log_text());
    assert_eq!(http_get(web, "/readyz").await, "ready");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_uplink_loop_stops_the_watchdog_pings_and_the_verdict_says_why() {
    // Given an agent with a 2 s watchdog whose uplink task hangs 1 s after it starts
    // (EDGE_AGENT_TEST_HANG, debug builds only: never polled again, never ended)
    let cancel = CancellationToken::new();
    let plc = support::plc::counting_plc(&cancel, &[0, 7], Duration::from_millis(50)).await;
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (cfg, web) = (dir.path().join("agent.toml"), free_port());
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc, web, COUNTER)).unwrap();
    let log = dir.path().join("agent.log");
    let _agent = start_agent(
        &cfg,
        &log,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000"), ("EDGE_AGENT_TEST_HANG", "uplink@1000")],
        false,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut got = Vec::new();
    assert!(read_until(&socket, &mut got, Duration::from_secs(20), |m| m.contains("READY=1")).await, "{got:?}\n{}", log_text());
    // Pings come while the uplink still beats
    assert!(read_until(&socket, &mut got, Duration::from_secs(5), |m| m.trim() == "WATCHDOG=1").await, "{got:?}");

    // When the uplink has been silent past its allowance (15 s, confirmed on a second check)
    wait_for("the hang in the log", Duration::from_secs(40), || {
        log_text().contains("task looks hung (no progress): the systemd watchdog is no longer fed").then_some(())
    })
    .await;
    // Then, once what was queued before is read, no WATCHDOG=1 arrives any more (3 s:
    // three periods of the pinger)
    while read_until(&socket, &mut got, Duration::from_millis(100), |_| true).await {}
    let start = got.len();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        read_until(&socket, &mut got, deadline.saturating_duration_since(Instant::now()), |_| false).await;
    }
    let pings = got[start..].iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert_eq!(pings, 0, "{got:?}");
    // And the register and the verdict name the uplink as hung, and the log line too
    let st: serde_json::Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    assert!(st["tasks"]["uplink"]["hung_for_s"].as_u64().is_some_and(|s| s >= 15), "{st}");
    let health = &st["health"];
    assert_eq!(health["state"], "fault", "{health}");
    assert!(health["reasons"].as_array().unwrap().iter().any(|r| r["code"] == "task_hung" && r["subject"] == "uplink"), "{health}");
    assert!(log_text().lines().any(|l| l.contains("task looks hung") && l.contains("uplink")), "{}", log_text());
    // And the STATUS= line sent to systemd says so
    assert!(got.iter().any(|m| m.starts_with("STATUS=fault") && m.contains("uplink makes no progress")), "{got:?}");
    cancel.cancel();
}
