//! The OPC-UA driver against a real async-opcua server on loopback
//! (`edge_drivers::sim::opcua_server`): values of every scalar type through a
//! subscription, recovery after a server restart, a PLC download and a subscription the
//! server drops, the reconnect bound while the server is down, polling, absolute and
//! percent deadband, writes.

use std::collections::HashMap;
use std::time::Duration;

use edge_drivers::config::{DeviceConfig, Interval, Protocol, TagConfig};
use edge_drivers::modbus::{write_channel, WriteError, WriteRequest};
use edge_drivers::opcua::reconnect::max_attempts_within;
use edge_drivers::opcua::{run_device, OpcuaConfig, OpcuaDevice};
use edge_drivers::sim::opcua_server::{scalar_nodes, OpcuaSim, SimOptions};
use edge_drivers::{DeviceReport, DriverStats, Quality, ReportKind, Sample, Value};
use opcua::types::Variant;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

fn ua_tag(name: &str, node: &str) -> TagConfig {
    TagConfig { name: name.into(), table: None, address: None, node_id: Some(node.into()), ..Default::default() }
}

fn device(endpoint: &str, tags: Vec<TagConfig>) -> DeviceConfig {
    DeviceConfig {
        name: "plc".into(),
        protocol: Protocol::Opcua,
        opcua: Some(OpcuaConfig {
            endpoint: endpoint.into(),
            publishing_interval: Duration::from_millis(50),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(800),
            connect_timeout: Duration::from_secs(5),
            ..Default::default()
        }),
        timeout: Duration::from_secs(2),
        tags,
        ..Default::default()
    }
}

fn sim(nodes: Vec<(String, Variant)>) -> (OpcuaSim, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sim =
        OpcuaSim::start(SimOptions { pki_dir: dir.path().join("server-pki"), secure: false, user: None, x509_user: None, nodes }).unwrap();
    (sim, dir)
}

/// A running driver and what it reported so far.
struct Driver {
    rx: mpsc::Receiver<DeviceReport>,
    writes: mpsc::Sender<WriteRequest>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    samples: Vec<(Instant, Sample)>,
    connected: usize,
    disconnects: Vec<String>,
    stats: DriverStats,
}

impl Driver {
    fn start(device: DeviceConfig, data: &TempDir) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (writes, inbox) = write_channel(4);
        let cancel = CancellationToken::new();
        let pki = edge_drivers::opcua::pki_dir(data.path());
        let device = OpcuaDevice::build(&device).unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(run_device(device, pki, tx, inbox, cancel.clone()));
        Self { rx, writes, cancel, task, samples: Vec::new(), connected: 0, disconnects: Vec::new(), stats: DriverStats::default() }
    }

    fn take(&mut self, r: DeviceReport) {
        match r.kind {
            ReportKind::Samples(s) => self.samples.extend(s.into_iter().map(|s| (Instant::now(), s))),
            ReportKind::Connected => self.connected += 1,
            ReportKind::Disconnected(why) => self.disconnects.push(why.to_string()),
            ReportKind::Stats(s) => self.stats = s,
        }
    }

    /// Collects reports until `done` holds (checked after each), or panics after `limit`.
    async fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&Driver) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.take(r),
                Ok(None) => panic!("the driver stopped while waiting for: {what}"),
                Err(_) => panic!(
                    "timed out waiting for: {what}\nconnected {} times, disconnects {:?}\nlast samples: {:?}",
                    self.connected,
                    self.disconnects,
                    self.samples.iter().rev().take(8).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects every report for `d`.
    async fn collect_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.take(r);
        }
    }

    fn last(&self, tag: &str) -> Option<&Sample> {
        self.samples.iter().rev().map(|(_, s)| s).find(|s| s.tag == tag)
    }

    fn has_good(&self, tag: &str, value: &Value) -> bool {
        self.samples.iter().any(|(_, s)| s.tag == tag && s.quality.is_good() && s.value.as_ref() == Some(value))
    }

    async fn write(&self, tag: &str, value: Value) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.writes.send(WriteRequest { tag: tag.into(), value, reply }).await.unwrap();
        timeout(Duration::from_secs(10), rx).await.expect("write answered in time").unwrap()
    }

    async fn stop(self) {
        self.cancel.cancel();
        timeout(Duration::from_secs(5), self.task).await.expect("driver stops").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_scalar_type_arrive_through_a_subscription() {
    // Given a server with one node of every scalar type, and a device with a tag on each
    let (sim, data) = sim(scalar_nodes());
    let tags: Vec<TagConfig> = scalar_nodes().iter().map(|(n, _)| ua_tag(n, &format!("ns=2;s={n}"))).collect();
    let mut d = Driver::start(device(&sim.endpoint(), tags), &data);

    // When the driver connects, then every tag arrives good with the server's value
    d.until(Duration::from_secs(20), "a first value of every tag", |d| scalar_nodes().iter().all(|(n, _)| d.last(n).is_some())).await;
    let expected: HashMap<&str, Value> = HashMap::from([
        ("Bool", Value::Bool(true)),
        ("SByte", Value::Int(-8)),
        ("Byte", Value::Int(200)),
        ("Int16", Value::Int(-1600)),
        ("UInt16", Value::Int(60_000)),
        ("Int32", Value::Int(-320_000)),
        ("UInt32", Value::Int(3_200_000_000)),
        ("Int64", Value::Int(-6_400_000_000)),
        ("UInt64", Value::Int(6_400_000_000)),
        ("Float", Value::Float(1.5)),
        ("Double", Value::Float(2.25)),
        ("String", Value::Text("batch-42".into())),
        ("DateTime", Value::Text("2024-05-01T10:00:00.000Z".into())),
        ("Guid", Value::Text("07070707-0707-0707-0707-070707070707".into())),
        ("ByteString", Value::Text("dead".into())),
        ("LocalizedText", Value::Text("running".into())),
        ("QualifiedName", Value::Text("Mode".into())),
        ("StatusCode", Value::Text("BadOutOfService".into())),
    ]);
    for (name, value) in &expected {
        let s = d.last(name).unwrap();
        assert_eq!((s.value.as_ref(), &s.quality), (Some(value), &Quality::Good), "tag {name}");
    }
    assert_eq!(expected.len(), scalar_nodes().len(), "every scalar node is checked");

    // When values change on the server, then the changes arrive, with the source timestamp
    let before = chrono::Utc::now();
    sim.set("Double", 7.5).unwrap();
    sim.set("Int32", 12).unwrap();
    d.until(Duration::from_secs(10), "the changed values", |d| {
        d.has_good("Double", &Value::Float(7.5)) && d.has_good("Int32", &Value::Int(12))
    })
    .await;
    let s = d.last("Double").unwrap();
    assert!(s.source_ts >= before - chrono::Duration::seconds(1), "source timestamp {:?} is the server's, fresh", s.source_ts);

    // And a bad status on the server arrives as bad quality with the code's name
    sim.set_status("Float", 9.5f32, opcua::types::StatusCode::BadSensorFailure).unwrap();
    d.until(Duration::from_secs(10), "the bad status", |d| {
        d.last("Float").is_some_and(|s| s.quality == Quality::Bad("BadSensorFailure".into()))
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_resumes_after_a_server_restart_without_restarting_the_driver() {
    // Given a driver receiving a changing value
    let (mut sim, data) = sim(vec![("Speed".into(), Variant::Double(1.0))]);
    let mut d = Driver::start(device(&sim.endpoint(), vec![ua_tag("speed", "ns=2;s=Speed")]), &data);
    d.until(Duration::from_secs(20), "the first value", |d| d.has_good("speed", &Value::Float(1.0))).await;

    // When the server goes away (every connection closed) and comes back on the same port
    sim.stop();
    let stopped_at = Instant::now();
    d.until(Duration::from_secs(10), "the loss to be reported", |d| !d.disconnects.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.nodes_mut()[0].1 = Variant::Double(2.0);
    sim.start_again().unwrap();
    let restarted_at = Instant::now();

    // Then the new value arrives good, from a new session, with no restart of the driver
    d.until(Duration::from_secs(20), "the value after the restart", |d| d.has_good("speed", &Value::Float(2.0))).await;
    assert!(d.connected >= 2, "a second session was built");
    d.until(Duration::from_secs(5), "the counters", |d| d.stats.reconnects >= 1 && d.stats.subscriptions_rebuilt >= 1).await;
    // And the gap is visible: bad samples between the stop and the restart, no good one
    let gap: Vec<&Sample> = d.samples.iter().filter(|(t, _)| *t >= stopped_at && *t < restarted_at).map(|(_, s)| s).collect();
    assert!(
        gap.iter()
            .any(|s| matches!(&s.quality, Quality::Bad(r) if r.contains("connection") || r.contains("closed") || r.contains("session"))),
        "{gap:?}"
    );
    assert!(gap.iter().all(|s| !s.quality.is_good()), "no good value while the server was down: {gap:?}");
    // And the stale value (1.0) was never reported good after the stop
    assert!(
        d.samples.iter().filter(|(t, _)| *t >= stopped_at).all(|(_, s)| !(s.quality.is_good() && s.value == Some(Value::Float(1.0)))),
        "the value from before the restart came back as good"
    );

    // And changes keep flowing on the rebuilt subscription
    sim.set("Speed", 3.0).unwrap();
    d.until(Duration::from_secs(10), "a change after the restart", |d| d.has_good("speed", &Value::Float(3.0))).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_removed_by_a_plc_download_recovers_when_the_node_is_back() {
    // Given a driver on two nodes, one of them addressed by browse path
    let (mut sim, data) = sim(vec![("Level".into(), Variant::Double(1.0)), ("Temp".into(), Variant::Float(20.0))]);
    let mut by_path = ua_tag("temp", "x");
    by_path.node_id = None;
    by_path.browse_path = Some("/2:Plant/2:Temp".into());
    let mut d = Driver::start(device(&sim.endpoint(), vec![ua_tag("level", "ns=2;s=Level"), by_path]), &data);
    d.until(Duration::from_secs(20), "first values", |d| {
        d.has_good("level", &Value::Float(1.0)) && d.has_good("temp", &Value::Float(20.0))
    })
    .await;

    // When the PLC program is downloaded: the server restarts without node Level…
    sim.nodes_mut().retain(|(n, _)| n != "Level");
    sim.stop();
    sim.start_again().unwrap();
    // Then Level is reported bad with the server's reason, Temp comes back good
    d.until(Duration::from_secs(20), "level bad, temp resolved again", |d| {
        d.last("level").is_some_and(|s| matches!(&s.quality, Quality::Bad(r) if r.contains("BadNodeIdUnknown")))
    })
    .await;
    sim.set("Temp", 21.0f32).unwrap();
    d.until(Duration::from_secs(10), "temp after the download", |d| d.has_good("temp", &Value::Float(21.0))).await;

    // And while it is missing, the retries (every 200 ms here) do not repeat the report
    tokio::time::sleep(Duration::from_millis(1000)).await;
    d.collect_for(Duration::from_millis(100)).await;
    let unknown = d.samples.iter().filter(|(_, s)| s.tag == "level" && s.quality == Quality::Bad("BadNodeIdUnknown".into())).count();
    assert!(unknown <= 2, "the missing node was reported {unknown} times");

    // When the node is added back, then the item recovers without a reconnect
    let sessions = d.connected;
    assert!(sim.add("Level", Variant::Double(5.0)));
    d.until(Duration::from_secs(15), "level back", |d| d.has_good("level", &Value::Float(5.0))).await;
    sim.set("Level", 6.0).unwrap();
    d.until(Duration::from_secs(10), "level changes again", |d| d.has_good("level", &Value::Float(6.0))).await;
    assert_eq!(d.connected, sessions, "recovered in the same session");
    assert!(d.stats.bad_items >= 1 || d.samples.iter().any(|(_, s)| s.tag == "level" && !s.quality.is_good()));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_server_is_down_connection_attempts_stay_within_the_backoff_bound() {
    // Given a port where a dead server's host still accepts and drops connections
    // (the driver's delays scaled down 10×: 100 ms doubling to 6 s, over 6 s)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("opc.tcp://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            if let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        }
    });
    let data = tempfile::tempdir().unwrap();
    let mut dev = device(&endpoint, vec![ua_tag("x", "ns=2;s=X")]);
    let ua = dev.opcua.as_mut().unwrap();
    ua.reconnect_min = Duration::from_millis(100);
    ua.reconnect_max = Duration::from_secs(6);
    let (min, max) = (ua.reconnect_min, ua.reconnect_max);

    // When the driver runs for the window
    let window = Duration::from_secs(6);
    let mut d = Driver::start(dev, &data);
    d.collect_for(window).await;
    let attempts = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let (connected, disconnects) = (d.connected, d.disconnects.len());
    d.stop().await;
    acceptor.abort();

    // Then the attempts are at most the bound of the backoff (and it did keep trying)
    let bound = max_attempts_within(window, min, max);
    assert!(attempts >= 3, "the driver kept trying: {attempts} attempts");
    assert!(attempts <= bound, "{attempts} connection attempts in {window:?}, bound {bound}");
    assert_eq!(connected, 0);
    // And the loss was reported once (one device_lost event), not once per attempt
    assert_eq!(disconnects, 1, "one report per loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_group_is_read_every_interval() {
    // Given a device whose "slow" group is polled with the Read service
    let (sim, data) = sim(vec![("Count".into(), Variant::Int32(1))]);
    let mut tag = ua_tag("count", "ns=2;s=Count");
    tag.poll_group = Some("slow".into());
    let mut dev = device(&sim.endpoint(), vec![tag]);
    dev.poll_groups.insert("slow".into(), Interval(Duration::from_millis(200)));
    dev.opcua.as_mut().unwrap().poll_groups = vec!["slow".into()];
    let mut d = Driver::start(dev, &data);

    // Then the value arrives repeatedly although it does not change (polls, not changes)
    d.until(Duration::from_secs(20), "three reads", |d| d.samples.iter().filter(|(_, s)| s.tag == "count").count() >= 3).await;
    assert!(d.has_good("count", &Value::Int(1)));
    assert!(d.stats.requests >= 1 || d.samples.len() >= 3);
    // And a change is seen on the next read
    sim.set("Count", 2).unwrap();
    d.until(Duration::from_secs(5), "the new value", |d| d.has_good("count", &Value::Int(2))).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadband_suppresses_small_changes() {
    // Given a tag with an absolute deadband of 1.0
    let (sim, data) = sim(vec![("Flow".into(), Variant::Double(10.0))]);
    let mut tag = ua_tag("flow", "ns=2;s=Flow");
    tag.deadband = Some(1.0);
    let mut d = Driver::start(device(&sim.endpoint(), vec![tag]), &data);
    d.until(Duration::from_secs(20), "the first value", |d| d.has_good("flow", &Value::Float(10.0))).await;

    // When the value moves by less than the deadband, then by more
    sim.set("Flow", 10.4).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set("Flow", 10.8).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set("Flow", 12.0).unwrap();
    d.until(Duration::from_secs(10), "the big change", |d| d.has_good("flow", &Value::Float(12.0))).await;

    // Then only the big change came through
    assert!(!d.has_good("flow", &Value::Float(10.4)) && !d.has_good("flow", &Value::Float(10.8)), "{:?}", d.samples);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_deadband_suppresses_changes_smaller_than_that_percent_of_the_eu_range() {
    // The async-opcua server implements the percent deadband (Part 4: a percent of the
    // node's EURange property), so this runs against the real filter, not a stand-in.
    // Given an analog node with EURange 0..1000 and a tag with deadband_percent = 1 (10 units)
    let (sim, data) = sim(vec![]);
    assert!(sim.add_analog("Tank", 500.0, (0.0, 1000.0)));
    let mut tag = ua_tag("tank", "ns=2;s=Tank");
    tag.deadband_percent = Some(1.0);
    let mut d = Driver::start(device(&sim.endpoint(), vec![tag]), &data);
    d.until(Duration::from_secs(20), "the first value", |d| d.has_good("tank", &Value::Float(500.0))).await;

    // When the value moves by 5 and 8 units (under 10; 8 is over 1 % of the value itself),
    // then by 12
    sim.set("Tank", 505.0).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set("Tank", 508.0).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set("Tank", 512.0).unwrap();
    d.until(Duration::from_secs(10), "the change over 10 units", |d| d.has_good("tank", &Value::Float(512.0))).await;

    // Then only the change over 1 % of the range came through, and the item is not bad
    let seen: Vec<&Sample> = d.samples.iter().map(|(_, s)| s).filter(|s| s.tag == "tank").collect();
    assert!(!d.has_good("tank", &Value::Float(505.0)) && !d.has_good("tank", &Value::Float(508.0)), "{seen:?}");
    assert!(seen.iter().all(|s| s.quality.is_good()), "{seen:?}");
    assert_eq!(d.stats.bad_items, 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_deadband_on_a_node_without_an_eu_range_is_reported_bad_with_the_servers_reason() {
    // Given a plain node (no EURange) and a tag asking for a percent deadband on it, next to
    // a tag without one
    let (sim, data) = sim(vec![("Flow".into(), Variant::Double(10.0)), ("Level".into(), Variant::Double(1.0))]);
    let mut tag = ua_tag("flow", "ns=2;s=Flow");
    tag.deadband_percent = Some(1.0);
    let mut d = Driver::start(device(&sim.endpoint(), vec![tag, ua_tag("level", "ns=2;s=Level")]), &data);

    // Then the server refuses the filter, and the tag is reported bad with the code's name
    // and counted, not silently left without values
    d.until(Duration::from_secs(20), "the refusal", |d| {
        d.last("flow").is_some_and(|s| s.quality == Quality::Bad("BadDeadbandFilterInvalid".into()))
    })
    .await;
    d.until(Duration::from_secs(5), "the counter", |d| d.stats.bad_items >= 1).await;
    // And the other tag of the subscription is not affected
    d.until(Duration::from_secs(10), "the other tag", |d| d.has_good("level", &Value::Float(1.0))).await;
    assert!(!d.samples.iter().any(|(_, s)| s.tag == "flow" && s.quality.is_good()), "{:?}", d.samples);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_read_back_and_a_wrong_value_is_refused_before_sending() {
    let (sim, data) = sim(vec![("Setpoint".into(), Variant::UInt16(100)), ("Mode".into(), Variant::String("auto".into()))]);
    let mut d = Driver::start(device(&sim.endpoint(), vec![ua_tag("sp", "ns=2;s=Setpoint"), ua_tag("mode", "ns=2;s=Mode")]), &data);
    d.until(Duration::from_secs(20), "first values", |d| d.has_good("sp", &Value::Int(100))).await;

    // When a value is written, then the server holds it (in the node's own type)
    d.write("sp", Value::Int(250)).await.unwrap();
    assert_eq!(sim.get("Setpoint"), Some(Variant::UInt16(250)));
    d.write("mode", Value::Text("manual".into())).await.unwrap();
    assert_eq!(sim.get("Mode"), Some(Variant::String("manual".into())));

    // And a value the node cannot hold is refused without being sent
    let e = d.write("sp", Value::Int(70_000)).await.unwrap_err();
    assert!(matches!(e, WriteError::NotSent(ref m) if m.contains("range")), "{e:?}");
    assert_eq!(sim.get("Setpoint"), Some(Variant::UInt16(250)));
    assert!(matches!(d.write("nope", Value::Int(1)).await, Err(WriteError::UnknownTag(_))));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_refused_and_listed_until_an_operator_trusts_it() {
    // Given a server offering Basic256Sha256 SignAndEncrypt, never seen by the agent
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: true,
        user: None,
        x509_user: None,
        nodes: vec![("Speed".into(), Variant::Double(42.0))],
    })
    .unwrap();
    let mut dev = device(&sim.endpoint(), vec![ua_tag("speed", "ns=2;s=Speed")]);
    let ua = dev.opcua.as_mut().unwrap();
    ua.security_policy = edge_drivers::opcua::config::SecurityPolicy::Basic256Sha256;
    ua.security_mode = edge_drivers::opcua::config::SecurityMode::SignAndEncrypt;
    let pki = edge_drivers::opcua::pki_dir(dir.path());
    let mut d = Driver::start(dev, &dir);

    // When the driver connects, then the session is refused: the certificate is untrusted
    d.until(Duration::from_secs(30), "the refusal", |d| d.disconnects.iter().any(|m| m.contains("not trusted"))).await;
    assert!(d.samples.iter().all(|(_, s)| !s.quality.is_good()), "no value over an untrusted channel");
    // And the certificate is listed as rejected, and the agent's own one was created
    let certs = edge_drivers::opcua::pki::list(&pki).unwrap();
    let rejected: Vec<_> = certs.iter().filter(|c| c.state == edge_drivers::opcua::pki::CertState::Rejected).collect();
    assert_eq!(rejected.len(), 1, "{certs:?}");
    assert!(certs.iter().any(|c| c.state == edge_drivers::opcua::pki::CertState::Own));
    d.until(Duration::from_secs(10), "the warning on the page", |d| d.stats.warnings.iter().any(|w| w.contains("opcua trust"))).await;

    // When the operator trusts it by thumbprint
    let thumb: String = rejected[0].thumbprint.chars().take(10).collect();
    let trusted = edge_drivers::opcua::pki::trust(&pki, &thumb).unwrap();
    assert!(trusted.file.starts_with(pki.join("trusted")));

    // Then the next attempt succeeds over the encrypted channel and values arrive
    d.until(Duration::from_secs(30), "the value over SignAndEncrypt", |d| d.has_good("speed", &Value::Float(42.0))).await;
    // And the warning is gone from the page
    d.until(Duration::from_secs(5), "the warning cleared", |d| d.stats.warnings.is_empty()).await;
    assert_eq!((d.stats.reconnects, d.stats.subscriptions_rebuilt), (0, 0), "the first session is not a reconnect");
    sim.set("Speed", 43.0).unwrap();
    d.until(Duration::from_secs(10), "a change", |d| d.has_good("speed", &Value::Float(43.0))).await;
    d.stop().await;
}

/// Runs a driver with `ua` until `done` or a limit; returns what it saw.
async fn run_until(dev: DeviceConfig, data: &TempDir, what: &str, done: impl Fn(&Driver) -> bool) -> Driver {
    let mut d = Driver::start(dev, data);
    d.until(Duration::from_secs(30), what, done).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_security_policy_and_mode_and_each_user_identity_work_once_the_server_is_trusted() {
    use edge_drivers::opcua::config::{IdentityKind, SecurityMode, SecurityPolicy};
    // Given a secure server with a password user and an X.509 user (certificate made with openssl)
    let dir = tempfile::tempdir().unwrap();
    let (user_cert, user_key) = (dir.path().join("user-cert.der"), dir.path().join("user-key.pem"));
    let openssl = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=operator-x509", "-outform", "DER"])
        .arg("-keyout")
        .arg(&user_key)
        .arg("-out")
        .arg(&user_cert)
        .output()
        .expect("openssl must be installed (the README's apt line names it)");
    assert!(openssl.status.success(), "{}", String::from_utf8_lossy(&openssl.stderr));
    let sim = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: true,
        user: Some(("operator".into(), "s3cret".into())),
        x509_user: Some(user_cert.clone()),
        nodes: vec![("Speed".into(), Variant::Double(42.0))],
    })
    .unwrap();
    let secure = |policy, mode| {
        let mut dev = device(&sim.endpoint(), vec![ua_tag("speed", "ns=2;s=Speed")]);
        let ua = dev.opcua.as_mut().unwrap();
        ua.security_policy = policy;
        ua.security_mode = mode;
        dev
    };
    // (the operator trusts the server once)
    let d = run_until(secure(SecurityPolicy::Basic256Sha256, SecurityMode::Sign), &dir, "the refusal", |d| !d.disconnects.is_empty()).await;
    d.stop().await;
    let pki = edge_drivers::opcua::pki_dir(dir.path());
    let rejected = edge_drivers::opcua::pki::list(&pki)
        .unwrap()
        .into_iter()
        .find(|c| c.state == edge_drivers::opcua::pki::CertState::Rejected)
        .unwrap();
    edge_drivers::opcua::pki::trust(&pki, &rejected.thumbprint).unwrap();

    // Then every policy in both modes carries values
    for policy in [SecurityPolicy::Basic256Sha256, SecurityPolicy::Aes128Sha256RsaOaep, SecurityPolicy::Aes256Sha256RsaPss] {
        for mode in [SecurityMode::Sign, SecurityMode::SignAndEncrypt] {
            let d = run_until(secure(policy, mode), &dir, &format!("a value over {policy:?} {mode:?}"), |d| {
                d.has_good("speed", &Value::Float(42.0))
            })
            .await;
            d.stop().await;
        }
    }

    // And a user with the right password (from a file) gets in
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let mut dev = secure(SecurityPolicy::Basic256Sha256, SecurityMode::SignAndEncrypt);
    let ua = dev.opcua.as_mut().unwrap();
    ua.identity = IdentityKind::Username;
    ua.username = Some("operator".into());
    ua.password_file = Some(password.clone());
    run_until(dev.clone(), &dir, "a value as the password user", |d| d.has_good("speed", &Value::Float(42.0))).await.stop().await;

    // And a wrong password is refused, named, and the password is not in the message
    std::fs::write(&password, "wrong-pass\n").unwrap();
    let d = run_until(dev, &dir, "the refusal of the wrong password", |d| !d.disconnects.is_empty()).await;
    assert!(d.samples.iter().all(|(_, s)| !s.quality.is_good()));
    assert!(d.disconnects.iter().all(|m| !m.contains("wrong-pass")), "{:?}", d.disconnects);
    assert!(d.disconnects.iter().any(|m| m.contains("Bad")), "the refusal names the status: {:?}", d.disconnects);
    d.stop().await;

    // And the X.509 user identity gets in
    let mut dev = secure(SecurityPolicy::Basic256Sha256, SecurityMode::SignAndEncrypt);
    let ua = dev.opcua.as_mut().unwrap();
    ua.identity = IdentityKind::Certificate;
    ua.user_certificate = Some(user_cert);
    ua.user_private_key = Some(user_key);
    run_until(dev, &dir, "a value as the X.509 user", |d| d.has_good("speed", &Value::Float(42.0))).await.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_on_one_endpoint_never_hold_two_session_attempts_at_once() {
    // Given a server that accepts connections and never answers (each attempt runs into
    // connect_timeout), and two devices naming it
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("opc.tcp://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    let stats = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize))); // (accepted, most open at once)
    let seen = stats.clone();
    std::thread::spawn(move || {
        let mut open: Vec<std::net::TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            // A connection whose peer closed reads to its end at once: it no longer counts.
            open.retain_mut(|s| {
                use std::io::Read;
                let _ = s.set_nonblocking(true);
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(_) => return false,
                    }
                }
            });
            open.push(stream);
            let mut st = seen.lock().unwrap();
            st.0 += 1;
            st.1 = st.1.max(open.len());
        }
    });
    let data = tempfile::tempdir().unwrap();
    let dev = |name: &str| {
        let mut d = device(&endpoint, vec![ua_tag("x", "ns=2;s=X")]);
        d.name = name.into();
        let ua = d.opcua.as_mut().unwrap();
        ua.connect_timeout = Duration::from_millis(300);
        ua.reconnect_min = Duration::from_millis(50);
        ua.reconnect_max = Duration::from_millis(100);
        d
    };

    // When both run for a while
    let (mut a, mut b) = (Driver::start(dev("a"), &data), Driver::start(dev("b"), &data));
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        tokio::select! {
            Some(r) = a.rx.recv() => a.take(r),
            Some(r) = b.rx.recv() => b.take(r),
            () = tokio::time::sleep_until(until) => {}
        }
    }
    let (accepted, most_open) = *stats.lock().unwrap();
    a.collect_for(Duration::from_millis(1100)).await;
    b.collect_for(Duration::from_millis(10)).await;
    let (attempts_a, attempts_b) = (a.stats.session_attempts, b.stats.session_attempts);
    a.stop().await;
    b.stop().await;

    // Then both kept trying, taking turns: never two connections open at once
    assert!(attempts_a >= 2 && attempts_b >= 2, "both devices tried: {attempts_a}, {attempts_b}");
    assert!(accepted >= 4, "{accepted} connections");
    assert_eq!(most_open, 1, "two session attempts were open at once ({accepted} connections)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_server_drops_without_a_word_is_rebuilt_in_the_same_session() {
    use edge_drivers::opcua::config::IdentityKind;
    // Given a driver receiving a value, logged in as a user (the server moves subscriptions
    // only between sessions of one user, which is how the test makes it drop one)
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: false,
        user: Some(("operator".into(), "s3cret".into())),
        x509_user: None,
        nodes: vec![("Speed".into(), Variant::Double(1.0))],
    })
    .unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let mut dev = device(&sim.endpoint(), vec![ua_tag("speed", "ns=2;s=Speed")]);
    let ua = dev.opcua.as_mut().unwrap();
    ua.identity = IdentityKind::Username;
    ua.username = Some("operator".into());
    ua.password_file = Some(password);
    let mut d = Driver::start(dev, &dir);
    d.until(Duration::from_secs(20), "the first value", |d| d.has_good("speed", &Value::Float(1.0))).await;
    d.until(Duration::from_secs(5), "the counters", |d| d.stats.session_attempts >= 1).await;
    let (attempts, sessions, rebuilt) = (d.stats.session_attempts, d.connected, d.stats.subscriptions_rebuilt);

    // When the server drops the subscription, telling the session nothing (no status
    // change), and the value changes meanwhile
    let dropped = sim.drop_subscriptions().await.unwrap();
    assert!(!dropped.is_empty(), "the server held the driver's subscription");
    let dropped_at = Instant::now();
    sim.set("Speed", 2.0).unwrap();

    // Then the new value arrives good, through a new subscription in the same session
    d.until(Duration::from_secs(20), "the value after the drop", |d| d.has_good("speed", &Value::Float(2.0))).await;
    d.until(Duration::from_secs(5), "the rebuild counted", |d| d.stats.subscriptions_rebuilt > rebuilt).await;
    assert_eq!((d.stats.session_attempts, d.connected), (attempts, sessions), "no new session: {:?}", d.disconnects);
    assert!(d.disconnects.is_empty(), "{:?}", d.disconnects);
    // And in between the tag was shown bad (subscription lost), never good
    let back = d.samples.iter().position(|(_, s)| s.tag == "speed" && s.quality.is_good() && s.value == Some(Value::Float(2.0))).unwrap();
    let gap: Vec<&Sample> = d.samples[..back].iter().filter(|(t, _)| *t >= dropped_at).map(|(_, s)| s).collect();
    assert!(gap.iter().any(|s| matches!(&s.quality, Quality::Bad(r) if r.contains("subscription"))), "{gap:?}");
    assert!(gap.iter().all(|s| !s.quality.is_good()), "a value was good while the subscription was gone: {gap:?}");

    // And changes keep flowing on the new subscription
    sim.set("Speed", 3.0).unwrap();
    d.until(Duration::from_secs(10), "a change after the rebuild", |d| d.has_good("speed", &Value::Float(3.0))).await;
    d.stop().await;
}
