//! `mqtt.payload = "sparkplug"` against real mosquitto: a consumer decodes every message
//! with the Sparkplug B protobuf types and checks what the specification requires.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent::config::load_str;
use edge_agent::live::{GatewayView, Live};
use edge_agent::payload::WireSample;
use edge_agent::store::{Outbox, StoredBatch};
use edge_agent::uplink::Uplink;
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use srad_types::payload::{metric, Payload};
use support::broker::Mosquitto;
use support::wait_for;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

fn config(data_dir: &std::path::Path, port: u16) -> edge_agent::config::Config {
    let text = format!(
        "[gateway]\nid = \"gw-sp\"\nsite = \"mill\"\ndata_dir = {:?}\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive = \"5s\"\nstart_delay_max = \"0s\"\npayload = \"sparkplug\"\nreplay_max_per_sec = 100000\n\
         [sparkplug]\ngroup_id = \"Mill\"\n\
         [[devices]]\nname = \"plc1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:1502\"\n\
         [[devices.tags]]\nname = \"level\"\ntable = \"holding\"\naddress = 0\ntype = \"i32\"\nunit = \"mm\"\n\
         [[devices.tags]]\nname = \"flow\"\ntable = \"holding\"\naddress = 2\nscale = 0.1\n",
        data_dir.display().to_string()
    );
    load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn batch(n: i64) -> StoredBatch {
    let ts = "2026-01-01T00:00:00.000Z".to_string();
    let level = WireSample {
        tag: "level".into(),
        v: Some(edge_drivers::Value::Int(n)),
        q: "good".into(),
        ts: ts.clone(),
        server_ts: None,
        reason: None,
    };
    let flow = WireSample { tag: "flow".into(), v: None, q: "bad".into(), ts, server_ts: None, reason: Some("timeout".into()) };
    StoredBatch { device: "plc1".into(), samples: vec![level, flow] }
}

/// One message as the host received it.
#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: Payload,
}

/// A host-like consumer: persistent session on `spBv1.0/#`, every payload decoded.
struct Host {
    messages: Arc<Mutex<Vec<Got>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(port: u16) -> Self {
        let mut opts = MqttOptions::new(format!("host-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let messages: Arc<Mutex<Vec<Got>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        let _ = client.subscribe("spBv1.0/#", QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload =
                            Payload::decode(p.payload.as_ref()).unwrap_or_else(|e| panic!("{}: not a Sparkplug payload: {e}", p.topic));
                        sink.lock().unwrap().push(Got { topic: p.topic.clone(), payload });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("SUBACK").expect("host task");
        Host { messages, _task: task }
    }

    fn all(&self) -> Vec<Got> {
        self.messages.lock().unwrap().clone()
    }

    fn count(&self, kind: &str) -> usize {
        self.all().iter().filter(|m| m.topic.split('/').nth(2) == Some(kind)).count()
    }
}

fn bdseq(p: &Payload) -> u64 {
    match p.metrics.iter().find(|m| m.name.as_deref() == Some("bdSeq")).and_then(|m| m.value.clone()) {
        Some(metric::Value::LongValue(n)) => n,
        other => panic!("no bdSeq: {other:?}"),
    }
}

/// What the specification asks of the stream, checked message by message like a host:
/// the NBIRTH's bdSeq is the next NDEATH's, seq runs on from the NBIRTH's 0 (wrapping at
/// 256), no DDATA before its device's DBIRTH in the session, every DDATA alias is a metric
/// of that DBIRTH with the datatype its value is encoded as, timestamps everywhere.
/// Returns the bdSeq of each NBIRTH and how many DDATA metrics were historical.
fn check_stream(messages: &[Got]) -> (Vec<u64>, usize) {
    let mut births = Vec::new();
    let mut historical = 0;
    let mut expected_seq: Option<u64> = None;
    let mut born: HashMap<String, HashMap<u64, u32>> = HashMap::new();
    let mut session_bdseq: Option<u64> = None;
    for m in messages {
        let kind = m.topic.split('/').nth(2).unwrap();
        assert_eq!(m.topic.split('/').nth(1), Some("Mill"), "group id");
        assert_eq!(m.topic.split('/').nth(3), Some("gw-sp"), "edge node id");
        assert!(m.payload.timestamp.is_some(), "{kind} without a timestamp");
        match kind {
            "NDEATH" => {
                assert_eq!(m.payload.seq, None);
                if let Some(b) = session_bdseq.take() {
                    assert_eq!(bdseq(&m.payload), b, "NDEATH bdSeq matches its NBIRTH");
                }
                expected_seq = None;
                born.clear();
                continue;
            }
            "NBIRTH" => {
                assert_eq!(m.payload.seq, Some(0), "NBIRTH seq");
                let b = bdseq(&m.payload);
                births.push(b);
                session_bdseq = Some(b);
                born.clear();
                for name in ["Node Control/Rebirth", "Node Control/Reboot"] {
                    assert!(m.payload.metrics.iter().any(|x| x.name.as_deref() == Some(name)), "{name} in NBIRTH");
                }
            }
            "DBIRTH" => {
                let device = m.topic.split('/').nth(4).unwrap().to_string();
                let mut metrics = HashMap::new();
                for x in &m.payload.metrics {
                    assert!(x.name.is_some() && x.timestamp.is_some());
                    metrics.insert(x.alias.expect("alias in DBIRTH"), x.datatype.expect("datatype in DBIRTH"));
                }
                born.insert(device, metrics);
            }
            "DDATA" => {
                let device = m.topic.split('/').nth(4).unwrap();
                let metrics = born.get(device).unwrap_or_else(|| panic!("DDATA of {device} before its DBIRTH"));
                for x in &m.payload.metrics {
                    assert!(x.name.is_none(), "DDATA by alias only");
                    assert!(x.timestamp.is_some());
                    let datatype = metrics.get(&x.alias.expect("alias")).expect("alias born in the DBIRTH");
                    let fits = match &x.value {
                        None => x.is_null == Some(true),
                        Some(metric::Value::IntValue(_)) => (1..=7).contains(datatype),
                        Some(metric::Value::LongValue(_)) => [4, 8].contains(datatype),
                        Some(metric::Value::FloatValue(_)) => *datatype == 9,
                        Some(metric::Value::DoubleValue(_)) => *datatype == 10,
                        Some(metric::Value::BooleanValue(_)) => *datatype == 11,
                        Some(metric::Value::StringValue(_)) => [12, 14].contains(datatype),
                        Some(_) => false,
                    };
                    assert!(fits, "value {:?} does not fit datatype {datatype}", x.value);
                    if x.is_historical == Some(true) {
                        historical += 1;
                    }
                }
            }
            other => panic!("unexpected {other}"),
        }
        let seq = m.payload.seq.expect("seq");
        if let Some(e) = expected_seq {
            assert_eq!(seq, e, "seq continuity at {}", m.topic);
        }
        expected_seq = Some((seq + 1) % 256);
    }
    (births, historical)
}

struct Running {
    stop: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
    stored: Arc<Notify>,
}

fn start(config: edge_agent::config::Config, outbox: &Outbox) -> Running {
    let live = Live::new(GatewayView::default(), &[]);
    let stored = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(None);
    let uplink = Uplink { config, outbox: outbox.clone(), live, stored: stored.clone() };
    let task = tokio::spawn(uplink.run(stop_rx));
    Running { stop, task, stored }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_node_births_before_data_keeps_seq_and_bdseq_and_marks_the_replay_historical() {
    // Given a host on the broker and 300 batches in the outbox (more than one seq cycle)
    let mut broker = Mosquitto::start().await;
    let host = Host::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let backlog: Vec<StoredBatch> = (0..300).map(batch).collect();
    outbox.append(&backlog, &[]).await.unwrap();

    // When the uplink runs in Sparkplug mode
    let first = start(config(dir.path(), broker.port), &outbox);

    // Then NBIRTH, DBIRTH and one DDATA per batch arrive, and the outbox drains on PUBACKs
    wait_for("300 DDATA", Duration::from_secs(20), || (host.count("DDATA") >= 300).then_some(())).await;
    wait_for("the outbox drained", Duration::from_secs(10), || (outbox.pending_batches() == 0).then_some(())).await;
    let (births, _) = check_stream(&host.all());
    assert_eq!(births, [0], "the first session's bdSeq");

    // When the connection drops without a DISCONNECT (the task dies)
    first.task.abort();
    let _ = first.task.await;
    // Then the broker publishes the Will: the NDEATH with the session's bdSeq
    wait_for("the NDEATH Will", Duration::from_secs(20), || (host.count("NDEATH") == 1).then_some(())).await;

    // When the agent starts again and the broker then goes away while data is stored
    let second = start(config(dir.path(), broker.port), &outbox);
    wait_for("the second NBIRTH", Duration::from_secs(20), || (host.count("NBIRTH") == 2).then_some(())).await;
    broker.stop();
    outbox.append(&[batch(1000), batch(1001)], &[]).await.unwrap();
    second.stored.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart().await;

    // Then a new session births again (a higher bdSeq), and the two batches come as
    // historical DDATA after the DBIRTH; a batch stored now is live
    wait_for("the third NBIRTH", Duration::from_secs(30), || (host.count("NBIRTH") == 3).then_some(())).await;
    wait_for("302 DDATA", Duration::from_secs(20), || (host.count("DDATA") >= 302).then_some(())).await;
    outbox.append(&[batch(2000)], &[]).await.unwrap();
    second.stored.notify_one();
    wait_for("303 DDATA", Duration::from_secs(20), || (host.count("DDATA") >= 303).then_some(())).await;
    let all = host.all();
    let (births, historical) = check_stream(&all);
    assert_eq!(births.len(), 3);
    assert_eq!(births[1], 1, "the restart took the next bdSeq from disk");
    assert!(births[2] > births[1], "a new CONNECT, a new bdSeq: {births:?}");
    // each replayed batch has two metrics, both historical; the live one none
    assert_eq!(historical, 4, "the two batches stored during the outage are historical");
    let last = all.iter().rev().find(|m| m.topic.ends_with("/DDATA/gw-sp/plc1")).unwrap();
    assert!(last.payload.metrics.iter().all(|m| m.is_historical.is_none()), "live data is not historical");

    // When the agent shuts down cleanly, it publishes its NDEATH itself
    let _ = second.stop.send(Some(Instant::now() + Duration::from_secs(3)));
    tokio::time::timeout(Duration::from_secs(6), second.task).await.expect("stops").expect("task");
    wait_for("the NDEATH of the clean shutdown", Duration::from_secs(10), || (host.count("NDEATH") >= 2).then_some(())).await;
    check_stream(&host.all());
    assert_eq!(std::fs::read_to_string(dir.path().join("sparkplug-bdseq")).unwrap().trim(), births[2].to_string());
}
