//! PLC to ERP, end to end: a real Modbus TCP server with a known register map, the real
//! agent binary, Debian's mosquitto, and a subscriber in the ERP's place.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use edge_drivers::sim::register_server::{self, RegisterBank};
use serde_json::{json, Value};
use support::agent::{config, AgentProcess};
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, loopback, wait_for};
use tokio_util::sync::CancellationToken;

/// The register map, written as a device manual shows it: raw words per address.
fn plc_registers() -> RegisterBank {
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[4321, 0xFB2E]); // u16 4321, i16 -1234
                                          // 0x12345678 in the four byte orders
    bank.set_holding(10, &[0x1234, 0x5678, 0x5678, 0x1234, 0x3412, 0x7856, 0x7856, 0x3412]);
    // -123456 (0xFFFE1DC0) in the four byte orders
    bank.set_holding(18, &[0xFFFE, 0x1DC0, 0x1DC0, 0xFFFE, 0xFEFF, 0xC01D, 0xC01D, 0xFEFF]);
    // 0.3f32 (0x3E99999A) in the four byte orders
    bank.set_holding(26, &[0x3E99, 0x999A, 0x999A, 0x3E99, 0x993E, 0x9A99, 0x9A99, 0x993E]);
    bank.set_holding(34, &[1234, 0xFF9C]); // scaled: 1234 × 0.1, -100 × 0.5 − 10
    bank.set_input(5, &[777, 0xC49A, 0x5000]); // u16 777, f32 -1234.5 (× 2)
    bank.coils.insert(3, true);
    bank.discrete.insert(7, false);
    bank
}

const TAGS: &str = r#"
max_gap = 0
[[devices.tags]]
name = "u16_plain"
table = "holding"
address = 0
type = "u16"
[[devices.tags]]
name = "i16_negative"
table = "holding"
address = 1
type = "i16"
[[devices.tags]]
name = "u32_abcd"
table = "holding"
address = 10
type = "u32"
byte_order = "ABCD"
[[devices.tags]]
name = "u32_cdab"
table = "holding"
address = 12
type = "u32"
byte_order = "CDAB"
[[devices.tags]]
name = "u32_badc"
table = "holding"
address = 14
type = "u32"
byte_order = "BADC"
[[devices.tags]]
name = "u32_dcba"
table = "holding"
address = 16
type = "u32"
byte_order = "DCBA"
[[devices.tags]]
name = "i32_abcd"
table = "holding"
address = 18
type = "i32"
byte_order = "ABCD"
[[devices.tags]]
name = "i32_cdab"
table = "holding"
address = 20
type = "i32"
byte_order = "CDAB"
[[devices.tags]]
name = "i32_badc"
table = "holding"
address = 22
type = "i32"
byte_order = "BADC"
[[devices.tags]]
name = "i32_dcba"
table = "holding"
address = 24
type = "i32"
byte_order = "DCBA"
[[devices.tags]]
name = "f32_abcd"
table = "holding"
address = 26
type = "f32"
byte_order = "ABCD"
[[devices.tags]]
name = "f32_cdab"
table = "holding"
address = 28
type = "f32"
byte_order = "CDAB"
[[devices.tags]]
name = "f32_badc"
table = "holding"
address = 30
type = "f32"
byte_order = "BADC"
[[devices.tags]]
name = "f32_dcba"
table = "holding"
address = 32
type = "f32"
byte_order = "DCBA"
[[devices.tags]]
name = "flow_tenths"
table = "holding"
address = 34
type = "u16"
scale = 0.1
unit = "t/h"
[[devices.tags]]
name = "temp_scaled_offset"
table = "holding"
address = 35
type = "i16"
scale = 0.5
offset = -10.0
[[devices.tags]]
name = "input_u16"
table = "input"
address = 5
type = "u16"
[[devices.tags]]
name = "input_f32_doubled"
table = "input"
address = 6
type = "f32"
scale = 2.0
[[devices.tags]]
name = "valve_open"
table = "coil"
address = 3
[[devices.tags]]
name = "trip"
table = "discrete"
address = 7
[[devices.tags]]
name = "unmapped"
table = "holding"
address = 500
type = "u16"
"#;

fn expected_values() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("u16_plain", json!(4321)),
        ("i16_negative", json!(-1234)),
        ("u32_abcd", json!(305_419_896)),
        ("u32_cdab", json!(305_419_896)),
        ("u32_badc", json!(305_419_896)),
        ("u32_dcba", json!(305_419_896)),
        ("i32_abcd", json!(-123_456)),
        ("i32_cdab", json!(-123_456)),
        ("i32_badc", json!(-123_456)),
        ("i32_dcba", json!(-123_456)),
        ("f32_abcd", json!(0.3)),
        ("f32_cdab", json!(0.3)),
        ("f32_badc", json!(0.3)),
        ("f32_dcba", json!(0.3)),
        ("flow_tenths", json!(123.4)),
        ("temp_scaled_offset", json!(-60.0)),
        ("input_u16", json!(777)),
        ("input_f32_doubled", json!(-2469.0)),
        ("valve_open", json!(true)),
        ("trip", json!(false)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tag_arrives_decoded_to_its_exact_value_with_contiguous_batch_seq() {
    // Given a PLC with a known register map, a broker, and the agent configured for both
    let cancel = CancellationToken::new();
    let (listener, plc) = register_server::bind(loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, plc_registers().shared(), cancel.clone()));
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, plc.port(), free_port(), TAGS)).unwrap();

    // When the agent runs for a while
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("10 telemetry batches", Duration::from_secs(30), || (erp.batch_seqs().len() >= 10).then_some(())).await;

    // Then every tag arrived with its exact engineering value and good quality
    let telemetry = erp.telemetry();
    let first = &telemetry[0];
    assert_eq!(first["gateway"], "gw-test");
    assert_eq!(first["device"], "plc1");
    assert_eq!(first["historical"], false);
    let samples: BTreeMap<String, Value> =
        first["samples"].as_array().expect("samples array").iter().map(|s| (s["tag"].as_str().unwrap().to_string(), s.clone())).collect();
    for (tag, value) in expected_values() {
        let s = samples.get(tag).unwrap_or_else(|| panic!("tag {tag} missing from {first}"));
        assert_eq!(s["q"], "good", "{tag}: {s}");
        assert_eq!(s["v"], value, "{tag}: {s}");
    }
    // and the unmapped register is reported bad with the device's exception, not dropped
    let unmapped = &samples["unmapped"];
    assert_eq!(unmapped["q"], "bad", "{unmapped}");
    assert_eq!(unmapped["v"], Value::Null);
    assert!(unmapped["reason"].as_str().unwrap().contains("exception"), "{unmapped}");

    // and batch_seq starts at 1 and has no gaps or repeats
    let seqs = erp.batch_seqs();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);

    // and the retained status says online
    let status = erp.all().into_iter().find(|m| m.topic == "plant/test-site/gw-test/status").expect("status message");
    assert_eq!(status.json["state"], "online");

    // and a SIGTERM stops it cleanly, leaving `offline` as the retained status
    assert!(agent.terminate(Duration::from_secs(10)), "agent did not exit cleanly on SIGTERM");
    wait_for("offline status", Duration::from_secs(5), || {
        erp.all().into_iter().rev().find(|m| m.topic.ends_with("/status")).filter(|m| m.json["state"] == "offline")
    })
    .await;
    cancel.cancel();
}
