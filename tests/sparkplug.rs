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
    /// The payload as received (JSON for STATE and the JSON topics).
    raw: Vec<u8>,
}

/// A host-like consumer: persistent session on `spBv1.0/#`, every payload decoded.
struct Host {
    messages: Arc<Mutex<Vec<Got>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(port: u16) -> Self {
        Self::start_on(port, &["spBv1.0/#"]).await.0
    }

    /// Subscribed to `filters`; Sparkplug payloads decoded (not STATE, not NCMD/DCMD).
    /// Also returns a client to publish with.
    async fn start_on(port: u16, filters: &[&str]) -> (Self, AsyncClient) {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let mut opts = MqttOptions::new(format!("host-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let publisher = client.clone();
        let messages: Arc<Mutex<Vec<Got>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        for f in &filters {
                            let _ = client.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let levels: Vec<&str> = p.topic.split('/').collect();
                        let sparkplug = levels[0] == "spBv1.0"
                            && levels.get(1) != Some(&"STATE")
                            && !["NCMD", "DCMD"].contains(levels.get(2).unwrap_or(&""));
                        let payload = if sparkplug {
                            Payload::decode(p.payload.as_ref()).unwrap_or_else(|e| panic!("{}: not a Sparkplug payload: {e}", p.topic))
                        } else {
                            Payload::default()
                        };
                        sink.lock().unwrap().push(Got { topic: p.topic.clone(), payload, raw: p.payload.to_vec() });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("SUBACK").expect("host task");
        (Host { messages, _task: task }, publisher)
    }

    fn all(&self) -> Vec<Got> {
        self.messages.lock().unwrap().clone()
    }

    fn count(&self, kind: &str) -> usize {
        self.all().iter().filter(|m| m.topic.starts_with("spBv1.0/") && m.topic.split('/').nth(2) == Some(kind)).count()
    }

    /// The JSON messages on topics ending in `leaf`.
    fn json(&self, leaf: &str) -> Vec<serde_json::Value> {
        self.all().iter().filter(|m| m.topic.ends_with(leaf)).filter_map(|m| serde_json::from_slice(&m.raw).ok()).collect()
    }
}

fn bdseq(p: &Payload) -> u64 {
    match p.metrics.iter().find(|m| m.name.as_deref() == Some("bdSeq")).and_then(|m| m.value.clone()) {
        Some(metric::Value::LongValue(n)) => n,
        other => panic!("no bdSeq: {other:?}"),
    }
}

/// What the specification asks of the stream, checked message by message like a host:
/// the NBIRTH's bdSeq (an Int64) is the next NDEATH's, seq runs on from the NBIRTH's 0
/// (wrapping at 256), no DDATA before its device's DBIRTH in the session, every DDATA alias
/// is a metric of that DBIRTH with the datatype its value is encoded as, every NDATA alias
/// one of the NBIRTH, `Node Control/Rebirth` without an alias, timestamps everywhere.
/// Returns the bdSeq of each NBIRTH and how many DDATA metrics were historical.
fn check_stream(messages: &[Got]) -> (Vec<u64>, usize) {
    let mut births = Vec::new();
    let mut historical = 0;
    let mut expected_seq: Option<u64> = None;
    let mut born: HashMap<String, HashMap<u64, u32>> = HashMap::new();
    let mut node_aliases: HashMap<u64, u32> = HashMap::new();
    let mut session_bdseq: Option<u64> = None;
    for m in messages.iter().filter(|m| m.topic.starts_with("spBv1.0/")) {
        let kind = m.topic.split('/').nth(2).unwrap();
        if ["STATE", "NCMD", "DCMD"].contains(&m.topic.split('/').nth(1).unwrap_or("")) || ["NCMD", "DCMD"].contains(&kind) {
            continue; // the host's own messages
        }
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
                expected_seq = None; // a rebirth starts again at 0
                let b = bdseq(&m.payload);
                births.push(b);
                session_bdseq = Some(b);
                born.clear();
                for name in ["Node Control/Rebirth", "Node Control/Reboot"] {
                    assert!(m.payload.metrics.iter().any(|x| x.name.as_deref() == Some(name)), "{name} in NBIRTH");
                }
                let find = |name: &str| m.payload.metrics.iter().find(|x| x.name.as_deref() == Some(name)).unwrap();
                assert_eq!(find("bdSeq").datatype, Some(4), "bdSeq is an Int64");
                assert_eq!(find("Node Control/Rebirth").alias, None, "Node Control/Rebirth has no alias");
                assert!(m.payload.metrics.iter().all(|x| x.timestamp.is_some() && x.datatype.is_some()), "NBIRTH metrics");
                node_aliases = m.payload.metrics.iter().filter_map(|x| Some((x.alias?, x.datatype?))).collect();
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
            "NDATA" => {
                for x in &m.payload.metrics {
                    assert!(x.name.is_none() && x.timestamp.is_some(), "NDATA by alias only, with timestamps");
                    assert!(node_aliases.contains_key(&x.alias.expect("alias")), "NDATA alias born in the NBIRTH");
                }
            }
            "DDEATH" => {
                let device = m.topic.split('/').nth(4).unwrap();
                assert!(born.remove(device).is_some(), "DDEATH of {device}, which was not born");
                assert!(m.payload.metrics.is_empty());
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
    // And the NBIRTH's store depth (300) is followed by an NDATA with the drained one (0),
    // no sooner than 10 s after the birth
    let depth = |p: &Payload| match p.metrics.first().and_then(|m| m.value.clone()) {
        Some(metric::Value::LongValue(n)) => n,
        other => panic!("no store depth: {other:?}"),
    };
    let ndata = wait_for("the NDATA of the store depth", Duration::from_secs(15), || {
        host.all().into_iter().find(|m| m.topic == "spBv1.0/Mill/NDATA/gw-sp").map(|m| m.payload)
    })
    .await;
    assert_eq!(depth(&ndata), 0, "{ndata:?}");
    let nbirth = host.all().into_iter().find(|m| m.topic == "spBv1.0/Mill/NBIRTH/gw-sp").unwrap().payload;
    let born_depth = nbirth.metrics.iter().find(|m| m.name.as_deref() == Some("Node Info/Store Depth")).unwrap();
    assert_eq!(born_depth.value, Some(metric::Value::LongValue(300)));
    assert_eq!(ndata.metrics[0].alias, born_depth.alias);
    assert!(ndata.timestamp.unwrap() >= nbirth.timestamp.unwrap() + 10_000, "rate-limited to one NDATA per 10 s");

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

// ---------------------------------------------------------------------------------------
// The real agent against a host: commands, a device lost and back, a host outage, SIGKILL

/// A Modbus PLC on its own runtime (stopping it closes the agent's connection too), on a
/// fixed port so that it can come back where the agent looks for it.
struct Plc {
    port: u16,
    bank: edge_drivers::sim::register_server::SharedBank,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Plc {
    fn start(port: u16, bank: edge_drivers::sim::register_server::SharedBank) -> Self {
        let started = std::time::Instant::now();
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind the PLC on {port}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let served = bank.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let cancel = tokio_util::sync::CancellationToken::new();
            let _ = edge_drivers::sim::register_server::serve(listener, served, cancel).await;
        });
        Plc { port, bank, runtime: Some(runtime) }
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    fn restart(&mut self) {
        self.stop();
        *self = Plc::start(self.port, self.bank.clone());
    }
}

impl Drop for Plc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn agent_config(data_dir: &std::path::Path, mqtt: u16, plc: u16, web: u16) -> String {
    format!(
        r#"
[gateway]
id = "gw-sp"
site = "test-site"
data_dir = "{data_dir}"
shutdown_timeout = "5s"

[mqtt]
host = "127.0.0.1"
port = {mqtt}
keep_alive = "5s"
max_inflight = 16
start_delay_max = "0s"
payload = "sparkplug"

[sparkplug]
group_id = "Mill"
primary_host_id = "scada"

[store]
flush_interval = "200ms"

[web]
listen = "127.0.0.1:{web}"

[commands]
writes_enabled = true

[[commands.writable]]
device = "plc1"
tag = "setpoint"
min = 0
max = 100

[[devices]]
name = "plc1"
protocol = "modbus-tcp"
address = "127.0.0.1:{plc}"
poll_interval = "100ms"
timeout = "500ms"

[[devices.tags]]
name = "level"
table = "holding"
address = 0
type = "u16"

[[devices.tags]]
name = "setpoint"
table = "holding"
address = 1
type = "u16"
"#,
        data_dir = data_dir.display()
    )
}

fn state(online: bool) -> Vec<u8> {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    serde_json::json!({ "online": online, "timestamp": ts }).to_string().into_bytes()
}

fn command_payload(metrics: Vec<srad_types::payload::Metric>) -> Vec<u8> {
    Payload { timestamp: Some(1), metrics, seq: None, uuid: None, body: None }.encode_to_vec()
}

fn metric_named(name: &str, datatype: srad_types::payload::DataType, value: metric::Value) -> srad_types::payload::Metric {
    srad_types::payload::Metric {
        name: Some(name.into()),
        datatype: Some(datatype as u32),
        value: Some(value),
        ..srad_types::payload::Metric::new()
    }
}

/// Index of the `n`-th (0-based) message of `kind` (for `device`, if given).
fn nth(all: &[Got], kind: &str, device: Option<&str>, n: usize) -> Option<usize> {
    all.iter()
        .enumerate()
        .filter(|(_, m)| m.topic.starts_with("spBv1.0/Mill/") && m.topic.split('/').nth(2) == Some(kind))
        .filter(|(_, m)| device.is_none_or(|d| m.topic.split('/').nth(4) == Some(d)))
        .nth(n)
        .map(|(i, _)| i)
}

/// The value of `tag` in each DDATA from `from` on, by the aliases of the DBIRTHs.
fn values(all: &[Got], tag: &str, from: usize) -> Vec<(u64, bool)> {
    let mut alias = None;
    let mut out = Vec::new();
    for (i, m) in all.iter().enumerate() {
        match m.topic.split('/').nth(2) {
            Some("DBIRTH") => {
                alias = m.payload.metrics.iter().find(|x| x.name.as_deref() == Some(tag)).and_then(|x| x.alias);
            }
            Some("DDATA") if i >= from => {
                for x in m.payload.metrics.iter().filter(|x| x.alias.is_some() && x.alias == alias) {
                    if let Some(metric::Value::IntValue(v)) = x.value {
                        out.push((u64::from(v), x.is_historical == Some(true)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_answers_a_host_rebirths_refuses_writes_outside_the_allowlist_follows_its_devices_and_the_primary_host_and_keeps_bdseq_across_sigkill(
) {
    use srad_types::payload::DataType;
    // Given a host that is online (retained STATE), a PLC whose register 0 counts up every
    // 300 ms, and the real agent in Sparkplug mode with that primary host
    let broker = Mosquitto::start().await;
    let (host, client) = Host::start_on(broker.port, &["spBv1.0/#", "plant/#"]).await;
    client.publish("spBv1.0/STATE/scada", QoS::AtLeastOnce, true, state(true)).await.unwrap();
    let mut registers = edge_drivers::sim::register_server::RegisterBank::default();
    registers.set_holding(0, &[0, 0]);
    let bank = registers.shared();
    let mut plc = Plc::start(support::free_port(), bank.clone());
    let counting = bank.clone();
    let counter = tokio::spawn(async move {
        for n in 1u16.. {
            counting.write().unwrap().set_holding(0, &[n]);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let web = support::free_port();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, agent_config(&dir.path().join("data"), broker.port, plc.port, web)).unwrap();
    let mut agent = support::agent::AgentProcess::start(&config_path, dir.path().join("agent.log"));
    wait_for("NBIRTH, DBIRTH and DDATA", Duration::from_secs(30), || (host.count("DDATA") >= 3).then_some(())).await;

    // When the host asks for a rebirth (NCMD Node Control/Rebirth = true)
    let ncmd = "spBv1.0/Mill/NCMD/gw-sp";
    let rebirth = command_payload(vec![metric_named("Node Control/Rebirth", DataType::Boolean, metric::Value::BooleanValue(true))]);
    client.publish(ncmd, QoS::AtLeastOnce, false, rebirth).await.unwrap();
    // Then a fresh NBIRTH (seq 0) and the DBIRTH follow, before further DDATA (check_stream)
    wait_for("the rebirth", Duration::from_secs(15), || {
        let all = host.all();
        nth(&all, "NBIRTH", None, 1).and_then(|b| nth(&all, "DBIRTH", Some("plc1"), 1).filter(|&d| d > b))
    })
    .await;
    // And a Reboot is refused (sparkplug.allow_reboot is false) and audited
    let reboot = command_payload(vec![metric_named("Node Control/Reboot", DataType::Boolean, metric::Value::BooleanValue(true))]);
    client.publish(ncmd, QoS::AtLeastOnce, false, reboot).await.unwrap();

    // When the host writes a tag outside the allowlist, and one inside it (DCMD)
    let dcmd = "spBv1.0/Mill/DCMD/gw-sp/plc1";
    let outside = command_payload(vec![metric_named("level", DataType::UInt16, metric::Value::IntValue(7))]);
    client.publish(dcmd, QoS::AtLeastOnce, false, outside).await.unwrap();
    let inside = command_payload(vec![metric_named("setpoint", DataType::UInt16, metric::Value::IntValue(42))]);
    client.publish(dcmd, QoS::AtLeastOnce, false, inside).await.unwrap();
    // Then the first is refused and audited (command_rejected), the reboot too, and the
    // second is written: the next DDATA carries setpoint 42
    let rejected = wait_for("the refused write audited", Duration::from_secs(15), || {
        let events = host.json("/events");
        let refused: Vec<_> = events.into_iter().filter(|e| e["kind"] == "command_rejected").collect();
        (refused.len() >= 2).then_some(refused)
    })
    .await;
    let write = rejected.iter().find(|e| e["details"]["command"] == "dcmd").expect("the DCMD refusal");
    assert_eq!(write["details"]["tag"], "level");
    assert!(write["details"]["reason"].as_str().unwrap().contains("not in the allowlist"), "{write}");
    assert!(rejected.iter().any(|e| e["details"]["command"] == "reboot"), "{rejected:?}");
    wait_for("setpoint 42 in a DDATA", Duration::from_secs(15), || {
        values(&host.all(), "setpoint", 0).iter().any(|v| v.0 == 42).then_some(())
    })
    .await;
    assert_eq!(bank.read().unwrap().holding.get(&1), Some(&42));
    assert!(host.json("/cmd/response").is_empty(), "Sparkplug commands get no JSON reply");

    // When the PLC goes away and comes back
    plc.stop();
    wait_for("the DDEATH", Duration::from_secs(20), || (host.count("DDEATH") == 1).then_some(())).await;
    plc.restart();
    // Then a new DBIRTH comes before its next DDATA (check_stream)
    let back = wait_for("the DBIRTH after the return", Duration::from_secs(30), || {
        let all = host.all();
        let death = nth(&all, "DDEATH", Some("plc1"), 0)?;
        all.iter().enumerate().skip(death).find(|(_, m)| m.topic.ends_with("/DBIRTH/gw-sp/plc1")).map(|(i, _)| i)
    })
    .await;
    wait_for("DDATA after the return", Duration::from_secs(10), || (nth(&host.all(), "DDATA", None, 0).is_some()).then_some(())).await;

    // When the primary host goes offline for a while, then comes back
    let connects = |metrics: &str| support::metric(metrics, "edge_agent_uplink_connects_total");
    let connects_before = connects(&support::http_get(web, "/metrics").await);
    client.publish("spBv1.0/STATE/scada", QoS::AtLeastOnce, true, state(false)).await.unwrap();
    // Then the node publishes its NDEATH, disconnects and connects again (Sparkplug 3.0),
    // and waits without births
    wait_for("the NDEATH when the host went offline", Duration::from_secs(10), || (host.count("NDEATH") == 1).then_some(())).await;
    let started = std::time::Instant::now();
    while connects(&support::http_get(web, "/metrics").await) <= connects_before {
        assert!(started.elapsed() < Duration::from_secs(10), "no new connection after the host went offline");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ddata_offline = host.count("DDATA");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(host.count("DDATA") <= ddata_offline + 1, "no data while the host is offline");
    client.publish("spBv1.0/STATE/scada", QoS::AtLeastOnce, true, state(true)).await.unwrap();
    // Then NBIRTH and DBIRTH again, the stored readings as historical, live data going on
    wait_for("the NBIRTH after the host's return", Duration::from_secs(10), || (host.count("NBIRTH") == 3).then_some(())).await;
    wait_for("historical and live data", Duration::from_secs(15), || {
        let v = values(&host.all(), "level", back);
        (v.iter().any(|x| x.1) && v.last().is_some_and(|x| !x.1)).then_some(())
    })
    .await;
    // And nothing was lost: every count of register 0 since the PLC came back was published
    let mut seen: Vec<u64> = values(&host.all(), "level", back).into_iter().map(|v| v.0).collect();
    seen.sort_unstable();
    seen.dedup();
    let (first, last) = (seen[0], seen[seen.len() - 1]);
    assert_eq!(seen.len() as u64, last - first + 1, "a reading is missing: {seen:?}");

    // And the status page and /metrics show the edge node
    let status: serde_json::Value = serde_json::from_str(&support::http_get(web, "/api/status").await).unwrap();
    let sp = &status["uplink"]["sparkplug"];
    assert_eq!(sp["host_state"], "online", "{sp}");
    assert_eq!(sp["rebirth_requests"], 1, "{sp}");
    assert_eq!(sp["device_deaths"], 1, "{sp}");
    assert!(sp["commands_refused"].as_u64().unwrap() >= 2, "{sp}");
    let metrics = support::http_get(web, "/metrics").await;
    assert_eq!(support::metric(&metrics, "edge_agent_sparkplug_rebirth_requests_total"), 1);
    assert_eq!(support::metric(&metrics, "edge_agent_sparkplug_primary_host_online"), 1);

    // When the agent is killed (SIGKILL) and started again
    agent.kill9();
    wait_for("the NDEATH Will", Duration::from_secs(20), || (host.count("NDEATH") == 2).then_some(())).await;
    let mut agent = support::agent::AgentProcess::start(&config_path, dir.path().join("agent.log"));
    wait_for("the NBIRTH after the restart", Duration::from_secs(30), || (host.count("NBIRTH") == 4).then_some(())).await;
    assert!(agent.terminate(Duration::from_secs(15)), "clean exit");
    wait_for("the NDEATH of the clean shutdown", Duration::from_secs(10), || (host.count("NDEATH") == 3).then_some(())).await;
    counter.abort();

    // Then the whole stream holds the spec's invariants, and the restart took the next bdSeq
    let (births, historical) = check_stream(&host.all());
    assert!(historical > 0);
    assert_eq!(births[..2], [0, 0], "a rebirth keeps the connection's bdSeq: {births:?}");
    assert_eq!(births[2], 1, "the host's return is birthed on a new connection, with the next bdSeq: {births:?}");
    assert_eq!(births[3], 2, "after SIGKILL, the next bdSeq from disk: {births:?}");
}
