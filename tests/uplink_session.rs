//! The uplink task on its own (library API) against real mosquitto: inbound commands and
//! their replies, and a replay that is rate-bounded while live batches go first.

mod support;

use std::sync::Arc;
use std::time::Duration;

use edge_agent::config::load_str;
use edge_agent::live::{GatewayView, Live};
use edge_agent::payload::WireSample;
use edge_agent::store::{Outbox, StoredBatch, StoredReply};
use edge_agent::uplink::{InboundCommand, Uplink};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::wait_for;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

fn config(data_dir: &std::path::Path, port: u16, extra: &str) -> edge_agent::config::Config {
    let text = format!(
        "[gateway]\nid = \"gw-up\"\nsite = \"s\"\ndata_dir = {:?}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive = \"5s\"\nstart_delay_max = \"0s\"\n{extra}\n",
        data_dir.display().to_string()
    );
    load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn batch(n: u64) -> StoredBatch {
    let sample = WireSample {
        tag: "t".into(),
        v: Some(edge_drivers::Value::Int(n as i64)),
        q: "good".into(),
        ts: "2026-01-01T00:00:00.000Z".into(),
        server_ts: None,
        reason: None,
    };
    StoredBatch { device: "plc1".into(), samples: vec![sample] }
}

struct Running {
    stop: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
    live: Live,
    stored: Arc<Notify>,
}

fn start(config: edge_agent::config::Config, outbox: &Outbox, commands: Option<mpsc::Sender<InboundCommand>>) -> Running {
    let live = Live::new(GatewayView::default(), &[]);
    let stored = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(None);
    let uplink = Uplink { config, outbox: outbox.clone(), live: live.clone(), stored: stored.clone() };
    let task = tokio::spawn(uplink.run_with_commands(stop_rx, commands));
    Running { stop, task, live, stored }
}

impl Running {
    async fn shut_down(self, within: Duration) {
        let _ = self.stop.send(Some(Instant::now() + within));
        tokio::time::timeout(within + Duration::from_secs(3), self.task).await.expect("uplink stops in time").expect("uplink task");
    }
}

fn is_online(erp: &Subscriber) -> bool {
    erp.all().iter().any(|m| m.topic.ends_with("/status") && m.json["state"] == "online")
}

/// Publishes one QoS 1 message with a fresh client and waits for its PUBACK.
async fn publish(port: u16, topic: &str, payload: &str) {
    let mut opts = MqttOptions::new("erp-command-sender", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client.publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("command sender: {e}"),
            }
        }
    })
    .await
    .expect("PUBACK for the command");
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_forwarded_and_replies_published_first_then_deleted() {
    // Given the uplink connected, with a command channel
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    let up = start(config(dir.path(), broker.port, ""), &outbox, Some(tx));
    wait_for("online", Duration::from_secs(10), || is_online(&erp).then_some(())).await;

    // When the ERP publishes a command
    publish(broker.port, "plant/s/gw-up/cmd/ping", r#"{"id":"c-1"}"#).await;

    // Then the handler gets it with its name and payload
    let command = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a command within 5 s").expect("channel open");
    assert_eq!(command, InboundCommand { name: "ping".into(), payload: br#"{"id":"c-1"}"#.to_vec() });

    // When the handler stores a reply (with telemetry waiting too)
    outbox.append(&[batch(1)], &[]).await.unwrap();
    outbox
        .append_reply(&StoredReply { topic_leaf: "cmd/response".into(), body: serde_json::json!({"id": "c-1", "ok": true}) })
        .await
        .unwrap();
    up.stored.notify_one();

    // Then it is published on cmd/response and deleted from the outbox once acknowledged
    wait_for("the reply at the ERP", Duration::from_secs(5), || {
        erp.all().into_iter().find(|m| m.topic == "plant/s/gw-up/cmd/response" && m.json["id"] == "c-1").map(|_| ())
    })
    .await;
    wait_for("the reply deleted", Duration::from_secs(5), || (outbox.pending_replies() == 0).then_some(())).await;
    // and our own reply, which matches cmd/+, is not taken for a command
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "the reply came back as a command");
    assert!(up.live.snapshot().uplink.connected);

    up.shut_down(Duration::from_secs(3)).await;
    assert_eq!(outbox.pending_batches(), 0, "the batch was drained at shutdown");
    wait_for("offline status", Duration::from_secs(5), || {
        erp.all().into_iter().rev().find(|m| m.topic.ends_with("/status")).filter(|m| m.json["state"] == "offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_batches_overtake_a_replay_that_is_rate_bounded() {
    // Given 200 batches in the outbox from before the connection, and a replay bound of 20/s
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let backlog: Vec<StoredBatch> = (1..=200).map(batch).collect();
    outbox.append(&backlog, &[]).await.unwrap();
    // (left by an earlier run of the agent, as after a restart: this run starts here)
    outbox.mark_run_start();
    let up = start(config(dir.path(), broker.port, "replay_max_per_sec = 20"), &outbox, None);
    wait_for("online", Duration::from_secs(10), || is_online(&erp).then_some(())).await;
    let connected = Instant::now();

    // When a live batch is stored
    outbox.append(&[batch(201)], &[]).await.unwrap();
    up.stored.notify_one();

    // Then it arrives long before the backlog is through, not marked historical
    wait_for("the live batch", Duration::from_secs(3), || erp.batch_seqs().contains(&201).then_some(())).await;
    let live = erp.telemetry().into_iter().find(|b| b["batch_seq"] == 201).unwrap();
    assert_eq!(live["historical"], false);
    let history_then = erp.batch_seqs().iter().filter(|&&s| s <= 200).count();
    assert!(history_then < 100, "{history_then} historical batches went before the live one");

    // and the replay goes on at about 20 per second after a first second's worth at once,
    // in batch_seq order, marked historical
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = connected.elapsed().as_secs_f64();
    let history: Vec<u64> = erp.batch_seqs().into_iter().filter(|&s| s <= 200).collect();
    assert!(history.len() >= 40, "replay too slow: {} in {elapsed:.1} s", history.len());
    assert!((history.len() as f64) <= 20.0 + 20.0 * elapsed + 2.0, "replay too fast: {} in {elapsed:.1} s", history.len());
    assert_eq!(history, (1..=history.len() as u64).collect::<Vec<_>>(), "history out of order");
    assert!(erp.telemetry().iter().filter(|b| b["batch_seq"].as_u64() < Some(201)).all(|b| b["historical"] == true));

    // When the agent shuts down, the bound is lifted and the rest is drained before the deadline
    up.shut_down(Duration::from_secs(5)).await;
    assert_eq!(outbox.pending_batches(), 0);
    wait_for("all 201 batches", Duration::from_secs(5), || (erp.batch_seqs().len() >= 201).then_some(())).await;
}
