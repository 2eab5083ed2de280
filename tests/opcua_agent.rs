//! OPC-UA PLC to ERP, end to end: a real async-opcua server on loopback, the real agent
//! binary, Debian's mosquitto, and a subscriber in the ERP's place.

mod support;
mod support_commands;

use std::time::Duration;

use edge_drivers::sim::opcua_server::{OpcuaSim, SimOptions};
use serde_json::{json, Value};
use support::agent::AgentProcess;
use support::broker::Mosquitto;
use support::subscriber::Subscriber;
use support::{free_port, http_get, wait_for};
use support_commands::Erp;

fn config(data_dir: &std::path::Path, mqtt_port: u16, web_port: u16, endpoint: &str) -> String {
    let base = support::agent::base_config(data_dir, mqtt_port, web_port, r#"flush_interval = "200ms""#);
    format!(
        r#"{base}
[[devices]]
name = "press"
protocol = "opcua"
timeout = "2s"
[devices.opcua]
endpoint = "{endpoint}"
publishing_interval = "100ms"
reconnect_min = "200ms"
reconnect_max = "2s"
[[devices.tags]]
name = "speed"
node_id = "ns=2;s=Speed"
unit = "rpm"
[[devices.tags]]
name = "count"
browse_path = "/2:Plant/2:Count"
[[devices.tags]]
name = "running"
node_id = "ns=2;s=Running"
[[devices.tags]]
name = "recipe"
node_id = "ns=2;s=Recipe"
"#
    )
}

/// Every sample of `tag` the ERP received, in order.
fn samples_of(erp: &Subscriber, tag: &str) -> Vec<Value> {
    erp.telemetry()
        .iter()
        .filter(|b| b["device"] == "press")
        .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["tag"] == tag)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_values_reach_the_erp_and_resume_after_a_server_restart() {
    // Given an OPC-UA server, a broker, and the agent configured for both
    let dir = tempfile::tempdir().unwrap();
    let mut plc = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: false,
        user: None,
        x509_user: None,
        nodes: vec![
            ("Speed".into(), 1480.5f64.into()),
            ("Count".into(), 7i32.into()),
            ("Running".into(), true.into()),
            ("Recipe".into(), "R-12".into()),
        ],
    })
    .unwrap();
    let broker = Mosquitto::start().await;
    let erp = Subscriber::start(broker.port, "plant/#").await;
    let cfg = dir.path().join("agent.toml");
    let web = free_port();
    std::fs::write(&cfg, config(&dir.path().join("data"), broker.port, web, &plc.endpoint())).unwrap();

    // When the agent runs
    let mut agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));

    // Then every tag arrives at the ERP with the server's value, good
    for (tag, value) in [("speed", json!(1480.5)), ("count", json!(7)), ("running", json!(true)), ("recipe", json!("R-12"))] {
        let s = wait_for(&format!("{tag} at the ERP"), Duration::from_secs(30), || {
            samples_of(&erp, tag).into_iter().find(|s| s["q"] == "good")
        })
        .await;
        assert_eq!(s["v"], value, "{tag}: {s}");
    }
    // And a change on the server follows, with the PLC's and the server's timestamps each
    // in its own field (here the PLC's clock runs 5 s ahead of the server's; a PLC stamp in
    // the past would not do: the server shifts a source time older than its last sample)
    let plc_time = chrono::Utc::now() + chrono::Duration::seconds(5);
    plc.set_stamped("Speed", 1500.0, plc_time).unwrap();
    let s = wait_for("the new speed", Duration::from_secs(10), || samples_of(&erp, "speed").into_iter().find(|s| s["v"] == json!(1500.0)))
        .await;
    let ts = |field: &str| chrono::DateTime::parse_from_rfc3339(s[field].as_str().unwrap_or_else(|| panic!("no {field}: {s}"))).unwrap();
    assert_eq!(s["ts"], edge_agent::payload::rfc3339(plc_time), "{s}");
    let lead = ts("ts") - ts("server_ts");
    assert!(
        lead > chrono::Duration::milliseconds(4000) && lead <= chrono::Duration::seconds(5),
        "server_ts should be the server's time, 5 s behind the PLC's: {s}"
    );
    let telemetry = support::schema("telemetry.schema.json");
    for batch in erp.telemetry().iter().filter(|b| b["device"] == "press") {
        assert!(telemetry.is_valid(batch), "not valid against telemetry.schema.json: {batch}");
    }

    // When the server restarts (all sessions gone), then the agent reports the gap as bad
    // and resumes by itself
    plc.stop();
    let bad = wait_for("speed bad after the server stopped", Duration::from_secs(15), || {
        samples_of(&erp, "speed").into_iter().rev().find(|s| s["q"] == "bad")
    })
    .await;
    assert!(bad.get("server_ts").is_none(), "a bad sample the agent made up has no server time: {bad}");
    plc.nodes_mut()[0].1 = 1200.0f64.into();
    plc.start_again().unwrap();
    wait_for("speed after the restart", Duration::from_secs(30), || {
        samples_of(&erp, "speed").into_iter().find(|s| s["v"] == json!(1200.0) && s["q"] == "good")
    })
    .await;

    // And the status page shows the device connected with its OPC-UA counters
    let status: Value = serde_json::from_str(&http_get(web, "/api/status").await).unwrap();
    let press = &status["devices"]["press"];
    assert_eq!(press["protocol"], "opcua");
    assert_eq!(press["address"], plc.endpoint());
    wait_for("the counters to show the rebuild", Duration::from_secs(10), || {
        let s: Value = serde_json::from_str(&status_now(web)).ok()?;
        let c = &s["devices"]["press"]["counters"];
        (s["devices"]["press"]["connected"] == true && c["session_attempts"].as_u64()? >= 2 && c["subscriptions_rebuilt"].as_u64()? >= 1)
            .then_some(())
    })
    .await;
    let metrics = http_get(web, "/metrics").await;
    assert!(metrics.contains("edge_agent_device_opcua_subscriptions_rebuilt_total{device=\"press\"}"), "{metrics}");
    assert!(agent.terminate(Duration::from_secs(10)), "agent did not exit cleanly on SIGTERM");
}

/// A blocking GET of `/api/status` for use inside `wait_for`'s closure.
fn status_now(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Runs `edge-agent opcua ARGS…`; returns (exit code, stdout, stderr).
fn opcua_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent")).arg("opcua").args(args).output().expect("run edge-agent opcua");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn an_operator_browses_a_secure_server_after_trusting_its_certificate_with_the_cli() {
    // Given a server offering only what a plant should: Basic256Sha256 SignAndEncrypt (and None)
    let dir = tempfile::tempdir().unwrap();
    let plc = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: true,
        user: None,
        x509_user: None,
        nodes: vec![("Speed".into(), 1480.5f64.into()), ("Recipe".into(), "R-12".into())],
    })
    .unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let endpoint = plc.endpoint();
    let secure = [
        "browse",
        "--endpoint",
        &endpoint,
        "--security-policy",
        "Basic256Sha256",
        "--security-mode",
        "SignAndEncrypt",
        "--data-dir",
        data_s,
    ];

    // When the operator browses it for the first time, then it is refused: certificate untrusted
    // (The server runs on its own thread: a blocking call here does not hold it up.)
    let (code, _, err) = opcua_cli(&secure);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("opcua trust"), "{err}");

    // And `opcua certs` lists the agent's own certificate and the rejected one
    let (code, certs, err) = opcua_cli(&["certs", "--data-dir", data_s]);
    assert_eq!(code, 0, "{err}");
    assert!(certs.contains("own") && certs.contains("REJECTED"), "{certs}");
    let rejected_line = certs.lines().find(|l| l.trim_start().starts_with("REJECTED")).unwrap();
    let thumbprint = rejected_line.split_whitespace().nth(1).unwrap().to_string();

    // When the operator trusts it by thumbprint
    let (code, out, err) = opcua_cli(&["trust", "--data-dir", data_s, &thumbprint[..12]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("trusted"), "{out}");
    let (_, certs, _) = opcua_cli(&["certs", "--data-dir", data_s]);
    assert!(certs.contains("trusted") && !certs.contains("REJECTED"), "{certs}");

    // Then browsing over the encrypted channel prints the tree with types and values,
    // and a config snippet for the variables
    let args: Vec<String> = secure.iter().map(|s| s.to_string()).chain(["--snippet".to_string()]).collect();
    let (code, tree, err) = opcua_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(tree.contains("2:Plant [Object]"), "{tree}");
    assert!(tree.contains("2:Speed [Variable] ns=2;s=Speed  Double = 1480.5"), "{tree}");
    assert!(tree.contains("name = \"speed\"\nnode_id = \"ns=2;s=Speed\""), "{tree}");
    assert!(tree.contains("node_id = \"ns=2;s=Recipe\""), "{tree}");
}

#[test]
fn check_config_reports_every_opcua_mistake_with_its_path_and_line() {
    // Given a config with an unknown key in [devices.opcua], a policy without a mode and a
    // Modbus key on an OPC-UA tag
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        r#"[gateway]
id = "gw"
site = "s"
data_dir = "/tmp/unused"

[mqtt]
host = "127.0.0.1"

[[devices]]
name = "press"
protocol = "opcua"
[devices.opcua]
endpoint = "opc.tcp://127.0.0.1:4840/"
security_policy = "Basic256Sha256"
colour = "blue"
[[devices.tags]]
name = "speed"
node_id = "ns=2;s=Speed"
table = "holding"
"#,
    )
    .unwrap();
    // When it is checked
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent")).arg("check-config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // Then it is refused with all three problems, each with its line
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains(":12: devices[0].opcua.security_mode"), "{err}"); // the table: the key is missing
    assert!(err.contains(":15: devices[0].opcua.colour: unknown key"), "{err}");
    assert!(err.contains(":19: devices[0].tags[0].table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erp_write_reaches_the_opcua_node_in_its_own_type_and_bad_ones_are_refused() {
    // Given an OPC-UA server with a UInt16 setpoint and a text mode, both allowlisted
    let dir = tempfile::tempdir().unwrap();
    let plc = OpcuaSim::start(SimOptions {
        pki_dir: dir.path().join("server-pki"),
        secure: false,
        user: None,
        x509_user: None,
        nodes: vec![("Setpoint".into(), opcua_u16(100)), ("Mode".into(), "auto".into())],
    })
    .unwrap();
    let broker = Mosquitto::start().await;
    let erp = Erp::start(broker.port, "plant/test-site/gw-test").await;
    let cfg = dir.path().join("agent.toml");
    let base = config(&dir.path().join("data"), broker.port, free_port(), &plc.endpoint());
    // (the tags of this test replace those of the shared config)
    let head = &base[..base.find("[[devices.tags]]").unwrap()];
    let text = format!(
        r#"{head}[[devices.tags]]
name = "setpoint"
node_id = "ns=2;s=Setpoint"
scale = 0.1
[[devices.tags]]
name = "mode"
node_id = "ns=2;s=Mode"

[commands]
writes_enabled = true
[[commands.writable]]
device = "press"
tag = "setpoint"
min = 0.0
max = 100.0
[[commands.writable]]
device = "press"
tag = "mode"
"#
    );
    std::fs::write(&cfg, text).unwrap();
    let _agent = AgentProcess::start(&cfg, dir.path().join("agent.log"));
    wait_for("a good setpoint at the ERP", Duration::from_secs(30), || erp.last_good("press", "setpoint")).await;

    // When the ERP writes 25.5 (raw 255 after the tag's scale)
    let r = erp.ask("write", "w1", json!({ "id": "w1", "device": "press", "tag": "setpoint", "value": 25.5 })).await;
    assert_eq!(r["ok"], true, "{r}");
    // Then the node holds it in its own type
    assert_eq!(plc.get("Setpoint"), Some(opcua_u16(255)));

    // And a value the node's type cannot hold is refused before anything is sent
    let r = erp.ask("write", "w3", json!({ "id": "w3", "device": "press", "tag": "setpoint", "value": 25.55 })).await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap_or_default().contains("whole number"), "{r}");
    assert_eq!(plc.get("Setpoint"), Some(opcua_u16(255)));
    // And a number for a tag without limits is refused by the allowlist
    let r = erp.ask("write", "w4", json!({ "id": "w4", "device": "press", "tag": "mode", "value": 3 })).await;
    assert_eq!(r["ok"], false, "{r}");
}

/// A UInt16 variant, through the simulated server's value type.
fn opcua_u16(v: u16) -> edge_drivers::sim::opcua_server::Variant {
    edge_drivers::sim::opcua_server::Variant::UInt16(v)
}

#[test]
fn the_manuals_opcua_example_is_a_valid_config() {
    // Given the manual's OPC-UA example (docs/opcua.md, moved there from the README), in a minimal config
    let page = include_str!("../docs/opcua.md");
    let section = &page[page.find("## `[devices.opcua]`").expect("docs/opcua.md has the [devices.opcua] section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + section[start..].find("```").expect("the block ends");
    let text = format!(
        "[gateway]\nid = \"gw-01\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\n{}",
        &section[start..end]
    );

    // When it is loaded and checked, then it is accepted as documented
    let config =
        edge_agent::config::load_str(&text, "docs/opcua.md").unwrap_or_else(|e| panic!("the manual's OPC-UA example is refused:\n{e}"));
    let ua = config.devices[0].opcua.as_ref().expect("the [devices.opcua] table");
    assert_eq!(ua.security_policy, edge_drivers::opcua::config::SecurityPolicy::Basic256Sha256);
    assert_eq!(config.devices[0].tags.len(), 2);
}
