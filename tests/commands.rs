//! Commands from the ERP, end to end: Debian's mosquitto, a real Modbus TCP server with a
//! known register map, the real agent binary, and an MQTT client in the ERP's place that
//! publishes on `…/cmd/{name}` and reads `…/cmd/response` and `…/events`.

mod support;
mod support_commands;

use std::path::Path;
use std::time::Duration;

use edge_drivers::modbus::{ByteOrder, DataType};
use edge_drivers::sim::register_server::{self, RegisterBank, SharedBank};
use serde_json::{json, Value};
use support::agent::AgentProcess;
use support::broker::Mosquitto;
use support::{free_port, loopback, wait_for};
use support_commands::Erp;
use tokio_util::sync::CancellationToken;

const ROOT: &str = "plant/test-site/gw-test";

/// The PLC: a scaled flow (u16 × 0.1), an f32 setpoint in CDAB order, a speed that is not
/// allowlisted, a pump coil and a read-only level.
fn plc_registers() -> RegisterBank {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[3084]); // flow 308.4
    bank.set_holding(2, &edge_drivers::modbus::decode::encode_registers(50.0, DataType::F32, ByteOrder::CDAB)); // setpoint 50.0
    bank.set_holding(4, &[1500]); // speed
    bank.coils.insert(1, false); // pump
    bank.set_input(0, &[42]); // level
    bank
}

fn config(data_dir: &Path, mqtt_port: u16, modbus_port: u16, writes_enabled: bool) -> String {
    let base = support::agent::base_config(data_dir, mqtt_port, free_port(), r#"flush_interval = "100ms""#);
    format!(
        r#"{base}
[[devices]]
name = "plc1"
protocol = "modbus-tcp"
address = "127.0.0.1:{modbus_port}"
poll_interval = "100ms"
timeout = "500ms"
max_gap = 0

[[devices.tags]]
name = "flow"
table = "holding"
address = 0
type = "u16"
scale = 0.1

[[devices.tags]]
name = "setpoint"
table = "holding"
address = 2
type = "f32"
byte_order = "CDAB"

[[devices.tags]]
name = "speed"
table = "holding"
address = 4
type = "u16"

[[devices.tags]]
name = "pump"
table = "coil"
address = 1

[[devices.tags]]
name = "level"
table = "input"
address = 0

[commands]
writes_enabled = {writes_enabled}
write_timeout = "3s"

[[commands.writable]]
device = "plc1"
tag = "flow"
min = 0.0
max = 500.0
max_step = 10.0

[[commands.writable]]
device = "plc1"
tag = "setpoint"
min = 0.0
max = 100.0

[[commands.writable]]
device = "plc1"
tag = "pump"
"#
    )
}

/// A running plant, broker, agent and ERP client.
struct Rig {
    bank: SharedBank,
    erp: Erp,
    agent: AgentProcess,
    config_file: std::path::PathBuf,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    plc_cancel: CancellationToken,
}

impl Rig {
    async fn start(writes_enabled: bool) -> Self {
        let plc_cancel = CancellationToken::new();
        let bank = plc_registers().shared();
        let (listener, plc) = register_server::bind(loopback(0)).await.unwrap();
        tokio::spawn(register_server::serve(listener, bank.clone(), plc_cancel.clone()));
        let broker = Mosquitto::start().await;
        let erp = Erp::start(broker.port, ROOT).await;
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("agent.toml");
        std::fs::write(&config_file, config(&dir.path().join("data"), broker.port, plc.port(), writes_enabled)).unwrap();
        let agent = AgentProcess::start(&config_file, dir.path().join("agent.log"));
        let rig = Rig { bank, erp, agent, config_file, _broker: broker, _dir: dir, plc_cancel };
        rig.wait_ready().await;
        rig
    }

    /// Pings until the agent answers (it subscribes to commands once connected), then
    /// waits for a good reading of `flow`, which `max_step` is checked against.
    async fn wait_ready(&self) {
        let start = std::time::Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let id = format!("ready-{n}");
            self.erp.send("ping", json!({ "id": id }).to_string()).await;
            let answered = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    if self.erp.responses().iter().any(|r| r["id"] == id) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if answered.is_ok() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the agent never answered a ping:\n{}", self.agent.log_text());
        }
        wait_for("a good reading of flow", Duration::from_secs(15), || self.erp.last_good("plc1", "flow")).await;
    }

    fn holding(&self, address: u16) -> u16 {
        self.bank.read().unwrap().holding[&address]
    }

    fn registers(&self) -> RegisterBank {
        self.bank.read().unwrap().clone()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.plc_cancel.cancel();
    }
}

fn error_of(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "expected a refusal: {reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    reply["error"].as_str().unwrap_or_else(|| panic!("no error string in {reply}"))
}

fn same_registers(a: &RegisterBank, b: &RegisterBank) -> bool {
    a.holding == b.holding && a.coils == b.coils && a.input == b.input && a.discrete == b.discrete
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_gets_ok_false_with_its_reason_and_leaves_the_plc_untouched() {
    let rig = Rig::start(true).await;
    let before = rig.registers();
    let write = |id: &str, tag: &str, value: Value| json!({ "id": id, "device": "plc1", "tag": tag, "value": value });

    // Policy refusals, each with a reason naming what was wrong.
    let cases = [
        (write("not-listed", "speed", json!(1600)), "plc1/speed is not writable: it is not in the allowlist (commands.writable)"),
        (write("read-only", "level", json!(1)), "plc1/level is not writable"),
        (write("out-of-range", "setpoint", json!(150.0)), "value 150 is out of the allowed range [0, 100] for plc1/setpoint"),
        (
            write("too-big-a-step", "flow", json!(330.0)),
            "a change of 21.6 from the last reading 308.4 to 330 is larger than max_step 10 for plc1/flow",
        ),
        (write("coil-needs-bool", "pump", json!(1)), "plc1/pump is a coil: the value must be true or false, not 1"),
        (write("register-needs-number", "flow", json!(true)), "plc1/flow is a u16 register: the value must be a number, not true"),
        (write("string-value", "flow", json!("310")), "\"value\" must be a number or true/false, not a string"),
        (
            write("between-raw-steps", "flow", json!(308.45)),
            "raw value 3084.5 ((value - offset) / scale) is not a whole number, but the tag is u16",
        ),
        (json!({ "id": "misspelt", "device": "plc1", "tag": "flow", "valeu": 310 }), "unknown field \"valeu\" in write"),
        (json!({ "id": "no-device", "tag": "flow", "value": 310 }), "missing \"device\""),
    ];
    for (payload, reason) in &cases {
        let id = payload["id"].as_str().unwrap();
        let reply = rig.erp.ask("write", id, payload.clone()).await;
        assert!(error_of(&reply).contains(reason), "{id}: expected …{reason}… in {reply}");
        let event = rig.erp.audit(&json!(id)).await;
        assert_eq!(event["kind"], "command_rejected", "{event}");
        assert_eq!(event["severity"], "warning");
        assert_eq!(event["details"]["reason"], reply["error"]);
        assert_eq!(event["details"]["command"], "write");
        assert!(event["details"]["received_at"].is_string(), "{event}");
    }
    let event = rig.erp.audit(&json!("out-of-range")).await;
    assert_eq!(event["asset"], "plc1");
    assert_eq!(event["details"]["tag"], "setpoint");
    assert_eq!(event["details"]["value"], 150.0);

    // An unknown command keeps its id.
    let reply = rig.erp.ask("explode", "u1", json!({ "id": "u1" })).await;
    assert_eq!(error_of(&reply), "unknown command \"explode\": expected one of write, reload, rebirth, ping, lab");
    assert_eq!(rig.erp.audit(&json!("u1")).await["details"]["command"], "explode");

    // Malformed JSON and a missing or non-string id are answered with "id": null.
    let no_id = |e: &&Value| e["kind"] == "command_rejected" && e["details"]["id"].is_null();
    let nulls_before = rig.erp.events().iter().filter(no_id).count();
    let reply = rig.erp.ask_without_id("write", b"{\"id\":\"x\",\"device\":").await;
    assert!(error_of(&reply).starts_with("malformed JSON"), "{reply}");
    let reply = rig.erp.ask_without_id("ping", b"{}").await;
    assert!(error_of(&reply).starts_with("missing \"id\""), "{reply}");
    let reply = rig.erp.ask_without_id("write", br#"{"id":17,"device":"plc1","tag":"flow","value":310}"#).await;
    assert_eq!(error_of(&reply), "\"id\" must be a string, not a number");
    wait_for("three audit events without an id", Duration::from_secs(10), || {
        (rig.erp.events().iter().filter(no_id).count() >= nulls_before + 3).then_some(())
    })
    .await;

    // Nothing reached the PLC.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(same_registers(&before, &rig.registers()), "a refused command changed the PLC's registers");
    assert_eq!(rig.erp.last_good("plc1", "flow"), Some(json!(308.4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_writes_reach_the_plc_as_the_right_raw_registers() {
    let rig = Rig::start(true).await;

    // A scaled u16: 312.5 / 0.1 = 3125, function code 6.
    let reply = rig.erp.ask("write", "w-flow", json!({ "id": "w-flow", "device": "plc1", "tag": "flow", "value": 312.5 })).await;
    assert_eq!(reply, json!({ "id": "w-flow", "ok": true, "result": { "device": "plc1", "tag": "flow", "value": 312.5 } }));
    assert_eq!(rig.holding(0), 3125);

    // An f32 in CDAB order: 42.5 = 0x422A0000, low word first, function code 16.
    let reply = rig.erp.ask("write", "w-setpoint", json!({ "id": "w-setpoint", "device": "plc1", "tag": "setpoint", "value": 42.5 })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!((rig.holding(2), rig.holding(3)), (0x0000, 0x422A));

    // A coil, function code 5.
    let reply = rig.erp.ask("write", "w-pump", json!({ "id": "w-pump", "device": "plc1", "tag": "pump", "value": true })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(rig.bank.read().unwrap().coils[&1]);

    // Each is audited as executed, on the device.
    for id in ["w-flow", "w-setpoint", "w-pump"] {
        let event = rig.erp.audit(&json!(id)).await;
        assert_eq!(event["kind"], "command_executed", "{event}");
        assert_eq!(event["severity"], "info");
        assert_eq!(event["asset"], "plc1");
        assert_eq!(event["details"]["ok"], true);
        assert_eq!(event["details"]["result"], reply_result(&rig.erp.response(id, Duration::from_secs(1)).await));
    }

    // The new values are read back, and the next step is measured from them.
    wait_for("flow read back as 312.5", Duration::from_secs(10), || {
        (rig.erp.last_good("plc1", "flow") == Some(json!(312.5))).then_some(())
    })
    .await;
    wait_for("setpoint read back as 42.5", Duration::from_secs(10), || {
        (rig.erp.last_good("plc1", "setpoint") == Some(json!(42.5))).then_some(())
    })
    .await;
    let reply = rig.erp.ask("write", "w-flow-2", json!({ "id": "w-flow-2", "device": "plc1", "tag": "flow", "value": 322.5 })).await;
    assert_eq!(reply["ok"], true, "10.0 from 312.5 is within max_step: {reply}");
    assert_eq!(rig.holding(0), 3225);
}

fn reply_result(reply: &Value) -> Value {
    reply["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_writes_disabled_every_write_is_refused() {
    let rig = Rig::start(false).await;
    let before = rig.registers();
    for (id, tag, value) in [("d1", "flow", json!(310.0)), ("d2", "pump", json!(true))] {
        let reply = rig.erp.ask("write", id, json!({ "id": id, "device": "plc1", "tag": tag, "value": value })).await;
        assert_eq!(error_of(&reply), "writes are disabled on this gateway (commands.writes_enabled = false)");
        assert_eq!(rig.erp.audit(&json!(id)).await["kind"], "command_rejected");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(same_registers(&before, &rig.registers()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_rebirth_and_reload_answer_and_a_broken_reload_keeps_the_agent_running() {
    let rig = Rig::start(true).await;

    let reply = rig.erp.ask("ping", "p1", json!({ "id": "p1" })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["pong"], true);
    assert!(reply["result"]["ts"].is_string());
    let event = rig.erp.audit(&json!("p1")).await;
    assert_eq!((event["kind"].as_str(), event["asset"].as_str()), (Some("command_executed"), Some("gw-test")));

    let reply = rig.erp.ask("rebirth", "b1", json!({ "id": "b1" })).await;
    assert_eq!(reply["result"], json!({ "note": "JSON mode: nothing to rebirth; status is retained" }));

    // A broken config file: refused with the full report, and the agent keeps publishing.
    let good = std::fs::read_to_string(&rig.config_file).unwrap();
    std::fs::write(
        &rig.config_file,
        good.replace("max_step = 10.0", "max_step = 10.0\nmax_stepp = 3").replace("max = 100.0", "max = -1.0"),
    )
    .unwrap();
    let reply = rig.erp.ask("reload", "r-bad", json!({ "id": "r-bad" })).await;
    let error = error_of(&reply);
    assert!(error.contains("the config was not reloaded; the agent keeps running with the old one"), "{error}");
    // The full report: every problem, with the file, line and path.
    assert!(error.contains("agent.toml: 2 problems in the config"), "{error}");
    assert!(error.contains("commands.writable[0].max_stepp: unknown key"), "{error}");
    assert!(error.contains("commands.writable[1].min: min (0) is greater than max (-1)"), "{error}");
    assert_eq!(rig.erp.audit(&json!("r-bad")).await["kind"], "command_rejected");
    let batches = rig.erp.telemetry("plc1").len();
    wait_for("telemetry after the refused reload", Duration::from_secs(10), || {
        (rig.erp.telemetry("plc1").len() > batches + 3).then_some(())
    })
    .await;
    let reply = rig.erp.ask("ping", "p2", json!({ "id": "p2" })).await;
    assert_eq!(reply["ok"], true);

    // A good one: ok, then the agent restarts with it (here: writes switched off).
    std::fs::write(&rig.config_file, good.replace("writes_enabled = true", "writes_enabled = false")).unwrap();
    let reply = rig.erp.ask("reload", "r-good", json!({ "id": "r-good" })).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["devices"], 1);
    assert_eq!(rig.erp.audit(&json!("r-good")).await["kind"], "command_executed");
    let reply = wait_for_reply_after_restart(&rig, "after-reload").await;
    assert_eq!(error_of(&reply), "writes are disabled on this gateway (commands.writes_enabled = false)");
    let batches = rig.erp.telemetry("plc1").len();
    wait_for("telemetry after the restart", Duration::from_secs(10), || (rig.erp.telemetry("plc1").len() > batches + 3).then_some(()))
        .await;
    assert!(rig.agent.log_text().contains("restarting with the reloaded config"), "{}", rig.agent.log_text());
}

/// After a reload the agent resubscribes; a command sent while it restarts may be lost
/// (nobody is subscribed for a moment), so retry with fresh ids.
async fn wait_for_reply_after_restart(rig: &Rig, prefix: &str) -> Value {
    for attempt in 0..30 {
        let id = format!("{prefix}-{attempt}");
        rig.erp.send("write", json!({ "id": id, "device": "plc1", "tag": "flow", "value": 310.0 }).to_string()).await;
        for _ in 0..20 {
            if let Some(r) = rig.erp.responses().into_iter().find(|r| r["id"] == id.as_str()) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("no reply after the restart:\n{}", rig.agent.log_text());
}
