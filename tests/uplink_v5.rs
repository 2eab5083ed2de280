//! The uplink over MQTT 5 (`mqtt.protocol = "5"`): Debian's mosquitto (which speaks both
//! versions and passes messages between them), a real Modbus server, the real agent binary.
//! The ERP's side subscribes with 3.1.1 clients, and an MQTT 5 client reads the status.

mod support;
mod support_commands;
mod support_uplink;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use support::agent::AgentProcess;
use support::broker::Mosquitto;
use support::proxy::Proxy;
use support::subscriber::Subscriber;
use support::{free_port, loopback, wait_for};
use support_commands::Erp;
use support_uplink::{agent_config, api_status, counting_plc, v5_retained, Broker, Listener};
use tokio_util::sync::CancellationToken;

const ROOT: &str = "plant/test-site/gw-test";
const V5: &str = "protocol = \"5\"\n";

fn seq_set(erp: &Subscriber) -> BTreeSet<u64> {
    erp.batch_seqs().into_iter().collect()
}

fn statuses(erp: &Subscriber) -> Vec<String> {
    erp.all()
        .into_iter()
        .filter(|m| m.topic == format!("{ROOT}/status"))
        .filter_map(|m| m.json["state"].as_str().map(str::to_string))
        .collect()
}

fn first_sample_ts(batch: &Value) -> DateTime<Utc> {
    batch["samples"][0]["ts"].as_str().and_then(|s| s.parse().ok()).expect("sample ts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_5_telemetry_arrives_commands_are_answered_and_the_status_goes_offline() {
    // Given mosquitto, an ERP subscribed with MQTT 3.1.1, and the agent configured for MQTT 5
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let listener = Listener::plain();
    let broker = Broker::start(&[&listener]).await;
    let erp = Subscriber::start(listener.port, "plant/#").await;
    let commands = Erp::start(listener.port, ROOT).await;
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), listener.port, plc, web, V5)).unwrap();

    // When the agent starts
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then telemetry arrives, in order and without gaps
    wait_for("5 batches", Duration::from_secs(30), || (seq_set(&erp).len() >= 5).then_some(())).await;
    let seqs = seq_set(&erp);
    assert_eq!(seqs, (1..=*seqs.iter().max().unwrap()).collect(), "gaps in {seqs:?}");
    assert!(erp.telemetry().iter().all(|b| b["gateway"] == "gw-test" && b["device"] == "plc1"));
    // over an MQTT 5 connection that keeps its session (mosquitto logs "p5" for the
    // protocol version and "c0" for clean start = false)
    let log = broker.log();
    assert!(log.contains("as edge-agent-gw-test (p5, c0, k5)"), "{log}");
    // and the retained status is `online`, to 3.1.1 and to MQTT 5 subscribers alike
    wait_for("online", Duration::from_secs(5), || (statuses(&erp).first().map(String::as_str) == Some("online")).then_some(())).await;
    let retained = v5_retained(listener.port, &format!("{ROOT}/status")).await.expect("a retained status for a v5 client");
    assert_eq!(retained["state"], "online", "{retained}");
    assert_eq!(api_status(web).await["uplink"]["connected"], true);

    // When the ERP sends a ping
    let reply = commands.ask("ping", "v5-ping", json!({ "id": "v5-ping" })).await;

    // Then the reply comes back on cmd/response over the MQTT 5 connection
    assert_eq!(reply["id"], "v5-ping", "{reply}");
    assert_eq!(reply["ok"], true, "{reply}");

    // When the agent is stopped with SIGTERM
    assert!(agent.terminate(Duration::from_secs(15)), "the agent did not exit cleanly:\n{}", agent.log_text());

    // Then the ERP sees `offline` last, and it is the retained status from now on
    wait_for("offline", Duration::from_secs(5), || (statuses(&erp).last().map(String::as_str) == Some("offline")).then_some(())).await;
    assert_eq!(statuses(&erp).first().map(String::as_str), Some("online"));
    let retained = v5_retained(listener.port, &format!("{ROOT}/status")).await.expect("a retained status");
    assert_eq!(retained["state"], "offline", "{retained}");
    let log = agent.log_text();
    assert!(!log.contains("refused a publish"), "{log}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_5_a_broker_restart_loses_nothing_and_replays_stored_batches_as_historical() {
    // Given the agent publishing over MQTT 5 through mosquitto (sessions persisted) to the ERP
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let mut broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), broker.port, plc, free_port(), V5)).unwrap();
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("5 live batches", Duration::from_secs(30), || (seq_set(&erp).len() >= 5).then_some(())).await;

    // When the broker is down for 3 seconds while the PLC keeps producing
    broker.stop();
    let down_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_at = Utc::now();
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;

    // Then once live data flows again, every batch_seq up to the newest has arrived
    wait_for("live batches after the outage", Duration::from_secs(60), || {
        erp.telemetry().iter().any(|b| b["historical"] == false && first_sample_ts(b) > up_at + chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs = seq_set(&erp);
    let max = *seqs.iter().max().unwrap();
    let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "batches lost: {missing:?}");

    // and every batch sampled while the broker was down came back marked historical
    let during: Vec<Value> = erp
        .telemetry()
        .into_iter()
        // (margins: a batch sampled just before the stop may still have gone out live, and
        // one sampled just before the restart is only flushed (200 ms) after the agent has
        // reconnected, so it is live, not history; the agent reconnects within ~100 ms)
        .filter(|b| {
            let ts = first_sample_ts(b);
            ts > down_at + chrono::Duration::milliseconds(300) && ts < up_at - chrono::Duration::milliseconds(500)
        })
        .collect();
    assert!(during.len() >= 5, "expected batches from the 3 s outage, got {}", during.len());
    for b in &during {
        assert_eq!(b["historical"], true, "batch {} sampled during the outage: {b}", b["batch_seq"]);
    }
    // and the broker kept the MQTT 5 session across its restart (clean start = false with a
    // session expiry interval; with an expiry of 0 the session would end with the connection)
    let log = agent.log_text();
    assert!(log.contains("session_present=true"), "{log}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_5_a_publish_the_broker_refuses_stays_in_the_outbox_and_goes_out_later() {
    // Given a broker whose ACL lets the gateway publish its status but not its telemetry
    // (an MQTT 5 broker answers such a publish with PUBACK "Not authorized", 0x87)
    let cancel = CancellationToken::new();
    let plc = counting_plc(&cancel).await;
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, format!("topic readwrite {ROOT}/status\ntopic readwrite {ROOT}/cmd/#\ntopic read plant/#\n")).unwrap();
    let listener = Listener { port: free_port(), settings: format!("allow_anonymous true\nacl_file {}\n", acl.display()) };
    let broker = Broker::start(&[&listener]).await;
    let erp = Subscriber::start(listener.port, "plant/#").await;
    // (the agent reaches the broker through a proxy, so that the test decides when it
    // reconnects: only once the ERP is subscribed to the restarted broker)
    let proxy = Proxy::start(loopback(listener.port)).await;
    let web = free_port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, agent_config(&dir.path().join("data"), proxy.port, plc, web, V5)).unwrap();
    let agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("online", Duration::from_secs(60), || statuses(&erp).contains(&"online".to_string()).then_some(())).await;

    // When the agent publishes telemetry for a while
    wait_for("refused publishes", Duration::from_secs(60), || agent.log_text().contains("refused a publish").then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Then nothing reached the ERP, and the refused batches were not deleted from the outbox
    assert!(erp.batch_seqs().is_empty(), "{:?}", erp.batch_seqs());
    let status = api_status(web).await;
    let pending = status["store"]["pending_batches"].as_u64().unwrap_or(0);
    assert!(pending >= 5, "the refused batches must stay in the outbox: {status}");
    assert!(agent.log_text().contains("NotAuthorized"), "{}", agent.log_text());

    // When the broker comes back (restarted, which makes the agent reconnect) allowing it
    proxy.cut();
    drop(broker);
    // The first subscriber goes too: a second one with the same client id would keep
    // taking the session over from it.
    drop(erp);
    std::fs::write(&acl, "topic readwrite plant/#\n").unwrap();
    let _broker = Broker::start(&[&listener]).await;
    let erp = Subscriber::start(listener.port, "plant/#").await;
    // (regression: the agent used to reconnect before the ERP had subscribed to the new
    // broker, which took the replayed batches for nobody; the test then waited in vain)
    proxy.restore();

    // Then every batch arrives, from the first one on, without a gap
    wait_for("the refused batches, replayed", Duration::from_secs(60), || {
        let seqs = seq_set(&erp);
        let max = *seqs.iter().max()?;
        (max > pending && (1..=max).all(|s| seqs.contains(&s))).then_some(())
    })
    .await;
    assert!(erp.telemetry().iter().any(|b| b["batch_seq"] == 1 && b["historical"] == true));
    cancel.cancel();
}
