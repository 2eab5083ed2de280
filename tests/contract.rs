//! The MQTT contract, checked against its JSON Schemas (`schemas/*.json`, draft 2020-12):
//! the real agent binary, Debian's mosquitto and a Modbus TCP register server, with an ERP
//! client that records every message on `plant/#` and validates each one against the schema
//! of its topic. Also checks that the schemas are valid and refuse broken payloads, so they
//! cannot pass everything.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank};
use jsonschema::Validator;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use support::agent::{config_with, AgentProcess};
use support::broker::Mosquitto;
use support::{free_port, http_get, metric, wait_for};
use tokio_util::sync::CancellationToken;

const ROOT: &str = "plant/test-site/gw-test";
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// The files of `schemas/`, all of which must be checked here.
const SCHEMA_FILES: [&str; 5] =
    ["status.schema.json", "telemetry.schema.json", "event.schema.json", "command.schema.json", "command-response.schema.json"];
const COMMANDS: [&str; 4] = ["write", "reload", "rebirth", "ping"];

// ---------------------------------------------------------------------------------------
// The schemas

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn load(file: &str) -> Value {
    let path = schema_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A draft 2020-12 validator that also checks `format` (date-time); nothing is fetched.
fn compile(what: &str, schema: &Value) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{what} does not compile: {e}"))
}

/// The schema of one command: the command schema's definitions, rooted at `#/$defs/{name}`.
fn command_schema(schema: &Value, name: &str) -> Value {
    json!({ "$schema": DRAFT_2020_12, "$defs": schema["$defs"].clone(), "$ref": format!("#/$defs/{name}") })
}

struct Schemas {
    status: Validator,
    telemetry: Validator,
    event: Validator,
    response: Validator,
    /// Any command (the root of command.schema.json).
    command: Validator,
    /// One per command name: `write`, `reload`, `rebirth`, `ping`.
    commands: Vec<(&'static str, Validator)>,
}

impl Schemas {
    fn load() -> Self {
        let command = load("command.schema.json");
        Schemas {
            status: compile("status.schema.json", &load("status.schema.json")),
            telemetry: compile("telemetry.schema.json", &load("telemetry.schema.json")),
            event: compile("event.schema.json", &load("event.schema.json")),
            response: compile("command-response.schema.json", &load("command-response.schema.json")),
            command: compile("command.schema.json", &command),
            commands: COMMANDS
                .iter()
                .map(|&name| (name, compile(&format!("command.schema.json#/$defs/{name}"), &command_schema(&command, name))))
                .collect(),
        }
    }

    fn command(&self, name: &str) -> Option<&Validator> {
        self.commands.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The schema of a topic (under [`ROOT`]) and its name, or `None` for a topic outside
    /// the contract.
    fn for_topic(&self, topic: &str) -> Option<(&Validator, String)> {
        let leaf = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
        match leaf.split('/').collect::<Vec<_>>().as_slice() {
            ["status"] => Some((&self.status, "status.schema.json".into())),
            ["telemetry", device] if !device.is_empty() => Some((&self.telemetry, "telemetry.schema.json".into())),
            ["events"] => Some((&self.event, "event.schema.json".into())),
            ["cmd", "response"] => Some((&self.response, "command-response.schema.json".into())),
            ["cmd", name] => self.command(name).map(|v| (v, format!("command.schema.json#/$defs/{name}"))),
            _ => None,
        }
    }
}

/// Every way `instance` breaks `schema`, one line each (empty when it is valid).
fn violations(schema: &Validator, instance: &Value) -> Vec<String> {
    schema
        .iter_errors(instance)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("at {:?} (schema {}): {e}", if at.is_empty() { "/" } else { at.as_str() }, e.schema_path())
        })
        .collect()
}

#[track_caller]
fn assert_valid(schema: &Validator, what: &str, instance: &Value) {
    let errors = violations(schema, instance);
    assert!(errors.is_empty(), "{what} does not match its schema:\n  {}\npayload: {instance}", errors.join("\n  "));
}

#[track_caller]
fn assert_invalid(schema: &Validator, what: &str, instance: &Value) {
    assert!(!schema.is_valid(instance), "the schema accepts {what}, which it must refuse: {instance}");
}

// ---------------------------------------------------------------------------------------
// The ERP's side: records every message raw, and publishes commands

#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: Vec<u8>,
}

impl Message {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

struct Erp {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<Message>>>,
    /// SUBACKs and resumed sessions: grows each time the subscription is live again.
    ready: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Erp {
    /// Connects with a persistent session (the broker queues for it while it is away),
    /// subscribes to `plant/#` (QoS 1) and waits for the SUBACK.
    async fn start(port: u16) -> Self {
        let mut opts = MqttOptions::new(format!("contract-erp-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(false).set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let messages: Arc<Mutex<Vec<Message>>> = Arc::default();
        let ready: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let (sink, sub_client, live) = (messages.clone(), client.clone(), ready.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.session_present {
                            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        } else {
                            let _ = sub_client.subscribe("plant/#", QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().unwrap().push(Message { topic: p.topic.clone(), payload: p.payload.to_vec() });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await.expect("SUBACK within 10 s").expect("ERP task alive");
        Erp { client, messages, ready, task }
    }

    fn all(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    fn ready(&self) -> usize {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_resubscribed(&self, before: usize) {
        wait_for("the ERP client to reconnect", Duration::from_secs(20), || (self.ready() > before).then_some(())).await;
    }

    /// The JSON payloads received on `{ROOT}/{leaf}`.
    fn on(&self, leaf: &str) -> Vec<Value> {
        let topic = format!("{ROOT}/{leaf}");
        self.all().into_iter().filter(|m| m.topic == topic).filter_map(|m| m.json()).collect()
    }

    fn telemetry_samples(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|m| m.topic.starts_with(&format!("{ROOT}/telemetry/")))
            .filter_map(|m| m.json())
            .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn event(&self, kind: &str) -> Option<Value> {
        self.on("events").into_iter().find(|e| e["kind"] == kind)
    }

    async fn send(&self, name: &str, payload: &[u8]) {
        self.client.publish(format!("{ROOT}/cmd/{name}"), QoS::AtLeastOnce, false, payload.to_vec()).await.expect("queue a command");
    }

    /// Sends a command and waits for the reply with its id (`id: None`: the next reply with
    /// a null id).
    async fn ask(&self, name: &str, payload: &[u8], id: Option<&str>) -> Value {
        let want = id.map_or(Value::Null, |s| json!(s));
        let before = self.on("cmd/response").iter().filter(|r| r["id"] == want).count();
        self.send(name, payload).await;
        wait_for(&format!("the reply to {name} {}", String::from_utf8_lossy(payload)), Duration::from_secs(20), || {
            self.on("cmd/response").into_iter().filter(|r| r["id"] == want).nth(before)
        })
        .await
    }

    /// Pings until the agent answers (it subscribes to commands once connected).
    async fn wait_answering(&self, agent: &AgentProcess, tag: &str) {
        let start = std::time::Instant::now();
        for n in 1.. {
            let id = format!("{tag}-{n}");
            self.send("ping", json!({ "id": id }).to_string().as_bytes()).await;
            let answered = tokio::time::timeout(Duration::from_secs(1), async {
                while !self.on("cmd/response").iter().any(|r| r["id"] == id) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if answered.is_ok() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the agent never answered a ping:\n{}", agent.log_text());
        }
    }

    /// Validates every message received so far against the schema of its topic. The
    /// commands in `refused` (name, payload), sent on purpose, must be refused by it.
    fn check_all_against_the_schemas(&self, schemas: &Schemas, refused: &[(&str, &[u8])]) -> Vec<Message> {
        let all = self.all();
        let mut failures = Vec::new();
        for m in &all {
            let leaf = m.topic.strip_prefix(ROOT).and_then(|l| l.strip_prefix('/')).unwrap_or(&m.topic);
            let expected_refusal = refused.iter().any(|(name, p)| leaf == format!("cmd/{name}") && *p == m.payload.as_slice());
            let text = String::from_utf8_lossy(&m.payload);
            let text = match text.char_indices().nth(1500) {
                Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], m.payload.len()),
                None => text.to_string(),
            };
            let Some(json) = m.json() else {
                if !expected_refusal {
                    failures.push(format!("{}: the payload is not JSON: {text}", m.topic));
                }
                continue;
            };
            match schemas.for_topic(&m.topic) {
                None if expected_refusal => {}
                None => failures.push(format!("{}: a topic outside the MQTT contract (no schema); payload: {text}", m.topic)),
                Some((schema, name)) => {
                    let errors = violations(schema, &json);
                    if expected_refusal && errors.is_empty() {
                        failures.push(format!("{}: {name} accepts a payload the agent refuses: {text}", m.topic));
                    } else if !expected_refusal && !errors.is_empty() {
                        failures.push(format!("{}: does not match {name}:\n    {}\n  payload: {text}", m.topic, errors.join("\n    ")));
                    }
                }
            }
        }
        let shown = failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n- ");
        assert!(failures.is_empty(), "{} of {} messages broke the contract (first 10):\n- {shown}", failures.len(), all.len());
        all
    }
}

impl Drop for Erp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// A PLC that can be switched off

/// The register server on its own runtime, so that stopping it closes the agent's
/// connection too (dropping the runtime drops every connection task).
struct Plc {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Plc {
    fn start(bank: RegisterBank) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the PLC");
        std_listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("PLC address");
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime for the PLC");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let _ = register_server::serve(listener, bank.shared(), CancellationToken::new()).await;
        });
        Plc { addr, runtime: Some(runtime) }
    }

    /// Switches it off: the listener and every open connection close.
    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Plc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// End to end

/// Good tags of every JSON type, a tag at an unmapped register (bad, with the device's
/// exception as reason), and a `[commands]` section so that writes can succeed and fail.
const TAGS: &str = r#"
max_gap = 0

[[devices.tags]]
name = "count"
table = "holding"
address = 0
type = "u16"

[[devices.tags]]
name = "flow"
table = "holding"
address = 1
type = "u16"
scale = 0.1

[[devices.tags]]
name = "temperature"
table = "input"
address = 0
type = "f32"

[[devices.tags]]
name = "pump"
table = "coil"
address = 1

[[devices.tags]]
name = "trip"
table = "discrete"
address = 2

[[devices.tags]]
name = "unmapped"
table = "holding"
address = 500
type = "u16"

[commands]
writes_enabled = true
write_timeout = "3s"

[[commands.writable]]
device = "plc1"
tag = "pump"
"#;

fn plc_registers() -> RegisterBank {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[4321, 3084]);
    bank.set_input(0, &[0x4048, 0xF5C3]); // 3.14f32
    bank.coils.insert(1, false);
    bank.discrete.insert(2, true);
    bank
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_run_matches_the_schema_of_its_topic() {
    let schemas = Schemas::load();

    // Given a PLC, a broker, an ERP subscribed to plant/# and the agent
    let mut plc = Plc::start(plc_registers());
    let broker = Mosquitto::start().await;
    let erp = Erp::start(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config_with(&dir.path().join("data"), broker.port, plc.addr.port(), free_port(), "", TAGS)).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // When it runs: online, device_connected, good samples and a bad one with its reason
    wait_for("status online", Duration::from_secs(30), || erp.on("status").into_iter().find(|s| s["state"] == "online")).await;
    wait_for("a device_connected event", Duration::from_secs(30), || erp.event("device_connected")).await;
    wait_for("good and bad samples", Duration::from_secs(30), || {
        let samples = erp.telemetry_samples();
        let good = samples.iter().any(|s| s["q"] == "good" && s["tag"] == "temperature");
        let bad = samples.iter().any(|s| s["q"] == "bad" && s["tag"] == "unmapped" && s["reason"].is_string());
        (good && bad).then_some(())
    })
    .await;
    erp.wait_answering(&agent, "ready").await;

    // and the ERP sends commands: valid ones, which must match command.schema.json ...
    let valid: [(&str, Value); 5] = [
        ("ping", json!({ "id": "c-ping" })),
        ("write", json!({ "id": "c-write-ok", "device": "plc1", "tag": "pump", "value": true })),
        ("write", json!({ "id": "c-write-refused", "device": "plc1", "tag": "count", "value": 12 })),
        ("write", json!({ "id": "c-write-unknown-device", "device": "plc9", "tag": "pump", "value": 1.5 })),
        ("rebirth", json!({ "id": "c-rebirth" })),
    ];
    for (name, payload) in &valid {
        assert_valid(schemas.command(name).unwrap(), &format!("the {name} command we send"), payload);
        assert_valid(&schemas.command, &format!("the {name} command we send"), payload);
    }
    // ... and malformed ones, which the schema must refuse as the agent does
    let refused: [(&str, &[u8]); 5] = [
        ("write", b"{\"id\":\"c-bad-json\",\"device\""),
        ("write", br#"{"id":"c-typo","device":"plc1","tag":"pump","valeu":true}"#),
        ("ping", br#"{"id":7}"#),
        ("write", br#"{"id":"c-string-value","device":"plc1","tag":"pump","value":"true"}"#),
        ("explode", br#"{"id":"c-unknown"}"#),
    ];
    for (name, payload) in &refused[1..4] {
        let json: Value = serde_json::from_slice(payload).unwrap();
        assert_invalid(schemas.command(name).unwrap(), &format!("the {name} command {json}"), &json);
        assert_invalid(&schemas.command, &format!("the command {json}"), &json);
    }

    let reply = erp.ask("ping", valid[0].1.to_string().as_bytes(), Some("c-ping")).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = erp.ask("write", valid[1].1.to_string().as_bytes(), Some("c-write-ok")).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = erp.ask("write", valid[2].1.to_string().as_bytes(), Some("c-write-refused")).await;
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("not in the allowlist")), "{reply}");
    let reply = erp.ask("write", valid[3].1.to_string().as_bytes(), Some("c-write-unknown-device")).await;
    assert_eq!(reply["ok"], false, "{reply}");
    let reply = erp.ask("rebirth", valid[4].1.to_string().as_bytes(), Some("c-rebirth")).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = erp.ask("write", refused[0].1, None).await;
    assert!(reply["error"].as_str().is_some_and(|e| e.starts_with("malformed JSON")), "{reply}");
    let reply = erp.ask("write", refused[1].1, Some("c-typo")).await;
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("unknown field")), "{reply}");
    let reply = erp.ask("ping", refused[2].1, None).await;
    assert_eq!(reply["ok"], false, "{reply}");
    let reply = erp.ask("write", refused[3].1, Some("c-string-value")).await;
    assert_eq!(reply["ok"], false, "{reply}");
    let reply = erp.ask("explode", refused[4].1, Some("c-unknown")).await;
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("unknown command")), "{reply}");
    // and a reload of the same (valid) file: the agent restarts in place
    let reload = json!({ "id": "c-reload" });
    assert_valid(schemas.command("reload").unwrap(), "the reload command we send", &reload);
    let reply = erp.ask("reload", reload.to_string().as_bytes(), Some("c-reload")).await;
    assert_eq!(reply["ok"], true, "{reply}");
    erp.wait_answering(&agent, "after-reload").await;
    wait_for("the audit events of the commands", Duration::from_secs(20), || {
        let audits = erp.on("events").into_iter().filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("command_"))).count();
        (audits >= 11).then_some(())
    })
    .await;

    // and the PLC goes away mid-run: device_lost
    plc.stop();
    let lost = wait_for("a device_lost event", Duration::from_secs(30), || erp.event("device_lost")).await;
    assert!(lost["details"]["reason"].is_string(), "{lost}");

    // and a SIGTERM stops the agent: offline
    assert!(agent.terminate(Duration::from_secs(15)), "the agent did not exit cleanly on SIGTERM:\n{}", agent.log_text());
    wait_for("status offline", Duration::from_secs(10), || {
        erp.on("status").into_iter().last().filter(|s| s["state"] == "offline").map(|_| ())
    })
    .await;

    // Then every message on plant/# matches the schema of its topic
    let all = erp.check_all_against_the_schemas(&schemas, &refused);
    // and the run covered what it should have
    let kinds: std::collections::BTreeSet<String> =
        erp.on("events").iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect();
    for kind in ["device_connected", "device_lost", "command_executed", "command_rejected"] {
        assert!(kinds.contains(kind), "no {kind} event among {kinds:?}");
    }
    let states: Vec<Value> = erp.on("status").iter().map(|s| s["state"].clone()).collect();
    assert!(states.contains(&json!("online")) && states.contains(&json!("offline")), "{states:?}");
    let replies = erp.on("cmd/response");
    assert!(replies.iter().any(|r| r["id"].is_null()), "no reply with a null id");
    assert!(replies.iter().any(|r| r["ok"] == true) && replies.iter().any(|r| r["ok"] == false));
    eprintln!("{} messages validated: {} events of kinds {kinds:?}, {} replies", all.len(), erp.on("events").len(), replies.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_overflow_during_an_outage_and_the_replay_match_the_schemas() {
    let schemas = Schemas::load();

    // Given a PLC with 50 registers (a few KiB per batch), an ERP with a persistent session
    // on a broker that then goes down, and an agent with the smallest store allowed
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &(0..50).collect::<Vec<u16>>());
    let plc = Plc::start(bank);
    let tags: String = (0..50).map(|i| format!("[[devices.tags]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\n")).collect();
    let mut broker = Mosquitto::start().await;
    let erp = Erp::start(broker.port).await;
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let web = free_port();
    let data = dir.path().join("data");
    std::fs::write(&cfg, config_with(&data, broker.port, plc.addr.port(), web, "max_bytes = \"64 KiB\"", &tags)).unwrap();
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // When the store overflows while the broker is down
    support::wait_listening(support::loopback(web), Duration::from_secs(10)).await;
    let mut dropped = 0;
    for _ in 0..300 {
        dropped = metric(&http_get(web, "/metrics").await, "edge_agent_store_batches_dropped_total");
        if dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0, "the store never overflowed:\n{}", agent.log_text());

    // and the broker comes back: the backlog (historical) and live data are published
    let before = erp.ready();
    broker.restart().await;
    erp.wait_resubscribed(before).await;
    wait_for("buffer_overflow and device_connected events", Duration::from_secs(60), || {
        (erp.event("buffer_overflow").is_some() && erp.event("device_connected").is_some()).then_some(())
    })
    .await;
    wait_for("historical and live telemetry", Duration::from_secs(30), || {
        let batches = erp.on("telemetry/plc1");
        (batches.iter().any(|b| b["historical"] == true) && batches.iter().any(|b| b["historical"] == false)).then_some(())
    })
    .await;
    assert!(agent.terminate(Duration::from_secs(15)), "the agent did not exit cleanly on SIGTERM:\n{}", agent.log_text());
    wait_for("status offline", Duration::from_secs(10), || {
        erp.on("status").into_iter().last().filter(|s| s["state"] == "offline").map(|_| ())
    })
    .await;

    // Then every message matches the schema of its topic, the overflow event included
    let all = erp.check_all_against_the_schemas(&schemas, &[]);
    let overflow = erp.event("buffer_overflow").unwrap();
    assert!(overflow["details"]["dropped_batches"].as_u64().is_some_and(|n| n > 0), "{overflow}");
    eprintln!("{} messages validated", all.len());
}

// ---------------------------------------------------------------------------------------
// The schemas themselves

#[test]
fn the_schemas_are_valid_draft_2020_12_and_refuse_broken_payloads() {
    // Every file in schemas/ is checked here, and is a valid draft 2020-12 schema
    let mut on_disk: Vec<String> = std::fs::read_dir(schema_dir())
        .expect("schemas/")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = SCHEMA_FILES.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(on_disk, known, "a schema in schemas/ that tests/contract.rs does not check (or the reverse)");
    for file in SCHEMA_FILES {
        let schema = load(file);
        assert_eq!(schema["$schema"], DRAFT_2020_12, "{file}");
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{file} is not a valid draft 2020-12 schema: {e} (at {})", e.instance_path());
        }
        // and its own examples match it
        let validator = compile(file, &schema);
        for example in schema["examples"].as_array().unwrap_or_else(|| panic!("{file} has no examples")) {
            assert_valid(&validator, &format!("an example of {file}"), example);
        }
    }
    let schemas = Schemas::load();
    let command = load("command.schema.json");
    for name in COMMANDS {
        for example in command["$defs"][name]["examples"].as_array().unwrap_or_else(|| panic!("no examples of {name}")) {
            assert_valid(schemas.command(name).unwrap(), &format!("an example of {name}"), example);
        }
    }

    // Valid payloads, as the agent writes them, pass ...
    let ts = "2026-11-23T17:00:39.101Z";
    let batch = json!({ "gateway": "gw", "device": "plc", "batch_seq": 1, "historical": false, "samples": [
        { "tag": "a", "v": 1, "q": "good", "ts": ts },
        { "tag": "b", "v": null, "q": "bad", "ts": ts, "reason": "no reply within 1s" },
    ]});
    assert_valid(&schemas.telemetry, "a batch", &batch);
    assert_valid(&schemas.status, "a status", &json!({ "state": "offline", "ts": ts, "version": "0.1.0" }));
    let event = |kind: &str, severity: &str, details: Value| json!({ "id": "gw-7", "kind": kind, "gateway": "gw", "asset": "plc", "severity": severity, "ts": ts, "details": details });
    let overflow = json!({ "dropped_batches": 3, "dropped_samples": 150, "dropped_events": 0, "dropped_too_old": 0, "max_bytes": 65536, "bytes": 60000 });
    let audit = json!({ "command": "ping", "id": "p", "ok": true, "result": { "pong": true }, "received_at": ts });
    let rejected = json!({ "command": "nope", "id": null, "ok": false, "reason": "malformed JSON", "received_at": ts });
    for (kind, severity, details) in [
        ("device_connected", "info", json!({})),
        ("device_lost", "warning", json!({ "reason": "connect failed" })),
        ("store_reset", "critical", json!({ "moved_aside_to": "/var/lib/edge-agent/outbox.corrupt-1" })),
        ("buffer_overflow", "warning", overflow.clone()),
        ("command_executed", "info", audit.clone()),
        ("command_rejected", "warning", rejected.clone()),
        // A kind this contract does not know yet: any details.
        ("some_future_kind", "critical", json!({ "anything": [1, 2] })),
        (
            "anomaly_started",
            "warning",
            json!({ "model": "pump", "version": "1", "score": 1.4, "threshold": 1.0, "contributions": [{ "tag": "plc/a", "share": 0.7 }], "started_at": ts }),
        ),
    ] {
        assert_valid(&schemas.event, &format!("a {kind} event"), &event(kind, severity, details));
    }
    for reply in [
        json!({ "id": "p", "ok": true, "result": { "pong": true, "ts": ts, "version": "0.1.0" } }),
        json!({ "id": null, "ok": false, "error": "malformed JSON" }),
    ] {
        assert_valid(&schemas.response, "a reply", &reply);
    }

    // ... and broken ones do not: telemetry
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut b = batch.clone();
        f(&mut b);
        b
    };
    for (what, b) in [
        ("a batch without batch_seq", broken(&|b| drop(b.as_object_mut().unwrap().remove("batch_seq")))),
        ("batch_seq 0", broken(&|b| b["batch_seq"] = json!(0))),
        ("historical as a string", broken(&|b| b["historical"] = json!("false"))),
        ("a batch with an extra field", broken(&|b| b["extra"] = json!(1))),
        ("q = \"ok\"", broken(&|b| b["samples"][0]["q"] = json!("ok"))),
        ("a sample with an extra field", broken(&|b| b["samples"][0]["unit"] = json!("t/h"))),
        ("a sample without ts", broken(&|b| drop(b["samples"][0].as_object_mut().unwrap().remove("ts")))),
        ("a ts without milliseconds", broken(&|b| b["samples"][0]["ts"] = json!("2026-11-23T17:00:39Z"))),
        ("a good sample with a reason", broken(&|b| b["samples"][0]["reason"] = json!("why"))),
        ("a bad sample without a reason", broken(&|b| drop(b["samples"][1].as_object_mut().unwrap().remove("reason")))),
        ("a bad sample with a value", broken(&|b| b["samples"][1]["v"] = json!(3))),
        ("a value that is an object", broken(&|b| b["samples"][0]["v"] = json!({ "x": 1 }))),
    ] {
        assert_invalid(&schemas.telemetry, what, &b);
    }
    // status
    for s in [
        json!({ "state": "idle", "ts": ts, "version": "0.1.0" }),
        json!({ "state": "online", "ts": ts }),
        json!({ "state": "online", "ts": ts, "version": "0.1.0", "extra": true }),
        json!({ "state": "online", "ts": "yesterday", "version": "0.1.0" }),
    ] {
        assert_invalid(&schemas.status, "a broken status", &s);
    }
    // events
    let mut extra = event("device_connected", "info", json!({}));
    extra["extra"] = json!(1);
    let mut no_details = event("device_connected", "info", json!({}));
    no_details.as_object_mut().unwrap().remove("details");
    let mut bad_id = event("device_connected", "info", json!({}));
    bad_id["id"] = json!("gw");
    for (what, e) in [
        ("an event with an extra field", extra),
        ("an event without details", no_details),
        ("an event id without its sequence number", bad_id),
        ("device_connected with details", event("device_connected", "info", json!({ "reason": "x" }))),
        ("device_lost without a reason", event("device_lost", "warning", json!({}))),
        ("device_lost as info", event("device_lost", "info", json!({ "reason": "x" }))),
        ("store_reset as a warning", event("store_reset", "warning", json!({ "moved_aside_to": "/x" }))),
        ("buffer_overflow without counts", event("buffer_overflow", "warning", json!({ "dropped_batches": 1 }))),
        (
            "a negative drop count",
            event("buffer_overflow", "warning", {
                let mut o = overflow.clone();
                o["bytes"] = json!(-1);
                o
            }),
        ),
        ("an executed command as a warning with ok true", event("command_executed", "warning", audit.clone())),
        (
            "an executed command with ok false and no reason",
            event("command_executed", "warning", {
                let mut a = audit.clone();
                a["ok"] = json!(false);
                a
            }),
        ),
        (
            "an executed command with a null id",
            event("command_executed", "info", {
                let mut a = audit.clone();
                a["id"] = Value::Null;
                a
            }),
        ),
        ("a rejected command with ok true", event("command_rejected", "warning", audit.clone())),
        (
            "a rejected write with a device but no tag",
            event("command_rejected", "warning", {
                let mut r = rejected.clone();
                r["device"] = json!("plc");
                r
            }),
        ),
        ("a severity outside the enum", event("anomaly_started", "fatal", json!({}))),
    ] {
        assert_invalid(&schemas.event, what, &e);
    }
    // command replies
    for (what, r) in [
        ("ok true with an error", json!({ "id": "p", "ok": true, "error": "x", "result": { "note": "n" } })),
        ("ok true without a result", json!({ "id": "p", "ok": true })),
        ("ok false without an error", json!({ "id": "p", "ok": false })),
        ("ok false with a result", json!({ "id": "p", "ok": false, "error": "x", "result": { "note": "n" } })),
        ("a number as id", json!({ "id": 7, "ok": false, "error": "x" })),
        ("no id", json!({ "ok": false, "error": "x" })),
        ("an extra field", json!({ "id": "p", "ok": false, "error": "x", "command": "ping" })),
        ("an unknown result", json!({ "id": "p", "ok": true, "result": { "pong": false } })),
    ] {
        assert_invalid(&schemas.response, what, &r);
    }
    // commands: what parse() refuses
    let write = schemas.command("write").unwrap();
    for (what, c) in [
        ("a misspelt field", json!({ "id": "w", "device": "d", "tag": "t", "valeu": 1 })),
        ("an extra field", json!({ "id": "w", "device": "d", "tag": "t", "value": 1, "force": true })),
        ("no device", json!({ "id": "w", "tag": "t", "value": 1 })),
        ("an empty tag", json!({ "id": "w", "device": "d", "tag": "", "value": 1 })),
        ("a string value", json!({ "id": "w", "device": "d", "tag": "t", "value": "12" })),
        ("a null value", json!({ "id": "w", "device": "d", "tag": "t", "value": null })),
        ("no id", json!({ "device": "d", "tag": "t", "value": 1 })),
        ("a numeric id", json!({ "id": 7, "device": "d", "tag": "t", "value": 1 })),
    ] {
        assert_invalid(write, &format!("a write with {what}"), &c);
    }
    for name in ["ping", "reload", "rebirth"] {
        let v = schemas.command(name).unwrap();
        assert_valid(v, name, &json!({ "id": "x" }));
        for c in
            [json!({ "id": "x", "extra": true }), json!({ "id": "" }), json!({ "id": "x".repeat(201) }), json!({}), json!([]), json!("x")]
        {
            assert_invalid(v, &format!("{name} {c}"), &c);
        }
        assert_valid(v, name, &json!({ "id": "é".repeat(200) }));
        assert_invalid(v, &format!("{name} with the fields of a write"), &json!({ "id": "w", "device": "d", "tag": "t", "value": 1 }));
    }
    assert_valid(write, "a write", &json!({ "id": "w", "device": "d", "tag": "t", "value": 1e300 }));
    assert_valid(write, "a write", &json!({ "id": "w", "device": "d", "tag": "t", "value": false }));
}
