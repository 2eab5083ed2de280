//! The local models, end to end: the simulated sugar mill (faster than real time) on a
//! real Modbus TCP server, the real agent binary running the demo's embedded models,
//! Debian's mosquitto, and an ERP client reading `…/events` and `…/telemetry/analytics`.
//! Every model event is checked against `schemas/event.schema.json`.

mod support;
mod support_commands;

use std::path::Path;
use std::time::Duration;

use edge_drivers::sim::register_server;
use edge_drivers::sim::sugar_mill::{self, Fault, RunOptions, SugarMill};
use serde_json::{json, Value};
use support::agent::AgentProcess;
use support::broker::Mosquitto;
use support::{free_port, loopback, wait_for};
use support_commands::Erp;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use toml_edit::{value, DocumentMut};

const ROOT: &str = "plant/demo-sugar-mill/demo-gw-01";
const DEMO_CONFIG: &str = include_str!("../firmware-configs/demo/sugar-mill.toml");

/// The simulated mill on a free loopback port, `speed` times faster than real time, with
/// no random faults; returns the port and the fault injector.
async fn mill(cancel: &CancellationToken, speed: f64, seed: u64) -> (u16, UnboundedSender<Fault>) {
    let mut mill = SugarMill::new(seed);
    mill.set_random_faults(false);
    let bank = sugar_mill::initial_bank(&mill).shared();
    let (listener, addr) = register_server::bind(loopback(0)).await.unwrap();
    tokio::spawn(register_server::serve(listener, bank.clone(), cancel.clone()));
    let (faults, rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = RunOptions { tick: Duration::from_millis(20), speed, faults: Some(rx) };
    tokio::spawn(sugar_mill::run_with(bank, mill, opts, cancel.clone()));
    (addr.port(), faults)
}

/// The demo config, pointed at the test's ports, with only the models named in `keep`,
/// every plant-time interval divided by `speed`, then changed by `edit`.
fn config(dir: &Path, mqtt: u16, modbus: u16, speed: f64, keep: &[&str], edit: impl Fn(&mut DocumentMut)) -> String {
    let mut doc: DocumentMut = DEMO_CONFIG.parse().unwrap();
    doc["gateway"]["data_dir"] = value(dir.join("data").display().to_string());
    doc["mqtt"]["port"] = value(i64::from(mqtt));
    doc["store"]["flush_interval"] = value("100ms");
    doc["web"]["listen"] = value(format!("127.0.0.1:{}", free_port()));
    let device = &mut doc["devices"][0];
    device["address"] = value(format!("127.0.0.1:{modbus}"));
    device["poll_interval"] = value("40ms");
    let scale = |text: &str| {
        let d = humantime_serde::re::humantime::parse_duration(text).unwrap();
        format!("{}ms", (d.as_secs_f64() * 1000.0 / speed).round() as u64)
    };
    let models = doc["models"].as_array_of_tables_mut().unwrap();
    models.retain(|m| keep.contains(&m["name"].as_str().unwrap()));
    for m in models.iter_mut() {
        for key in ["row_interval", "min_duration"] {
            if let Some(text) = m.get(key).and_then(|v| v.as_str()).map(str::to_string) {
                m[key] = value(scale(&text));
            }
        }
    }
    edit(&mut doc);
    doc.to_string()
}

struct Rig {
    _cancel: CancellationToken,
    _broker: Mosquitto,
    dir: tempfile::TempDir,
    agent: AgentProcess,
    erp: Erp,
    faults: UnboundedSender<Fault>,
}

async fn start(speed: f64, seed: u64, keep: &[&str], edit: impl Fn(&mut DocumentMut)) -> Rig {
    let cancel = CancellationToken::new();
    let (modbus, faults) = mill(&cancel, speed, seed).await;
    let broker = Mosquitto::start().await;
    let erp = Erp::start(broker.port, ROOT).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config(dir.path(), broker.port, modbus, speed, keep, edit)).unwrap();
    let agent = AgentProcess::start(&path, dir.path().join("agent.log"));
    Rig { _cancel: cancel, _broker: broker, dir, agent, erp, faults }
}

fn event_schema() -> jsonschema::Validator {
    support::schema("event.schema.json")
}

impl Rig {
    /// Waits for the first event of `kind` from `model`, and checks it against the schema.
    async fn event(&self, kind: &str, model: &str, limit: Duration) -> Value {
        let e = wait_for(&format!("{kind} from {model}"), limit, || {
            self.erp.events().into_iter().find(|e| e["kind"] == kind && e["details"]["model"] == model)
        })
        .await;
        let errors: Vec<String> = event_schema().iter_errors(&e).map(|err| format!("{}: {err}", err.instance_path())).collect();
        assert!(errors.is_empty(), "{kind} does not match the event schema: {errors:?}\n{e:#}");
        e
    }

    fn count(&self, kind: &str) -> usize {
        self.erp.events().iter().filter(|e| e["kind"] == kind).count()
    }

    /// Values of one tag of the virtual `analytics` device, in arrival order.
    fn predictions(&self, tag: &str) -> Vec<f64> {
        self.erp
            .telemetry("analytics")
            .iter()
            .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["tag"] == tag)
            .filter_map(|s| s["v"].as_f64())
            .collect()
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_injected_cavitation_raises_anomaly_started_then_anomaly_ended_naming_the_pump() {
    // Given the mill at 600× real time (a plant minute every 0.1 s) and the pump's anomaly model
    let rig = start(600.0, 31, &["juice-pump-anomaly"], |_| {}).await;
    rig.event("model_loaded", "juice-pump-anomaly", LONG).await;
    // And an hour of normal operation, scored all along, with no anomaly
    wait_for("an hour of scores", LONG, || (rig.predictions("juice-pump-anomaly_score").len() >= 60).then_some(())).await;
    assert_eq!(rig.count("anomaly_started"), 0, "normal operation raised an anomaly: {:#?}", rig.erp.events());
    // (the predictions arrive as telemetry of the device "analytics", valid like any batch)
    let telemetry = support::schema("telemetry.schema.json");
    let batch = rig.erp.telemetry("analytics").remove(0);
    assert!(telemetry.is_valid(&batch), "{batch:#}");

    // When the pump cavitates (30 plant minutes)
    rig.faults.send(Fault::Cavitation).unwrap();

    // Then anomaly_started names a pump tag first, on the pump asset
    let started = rig.event("anomaly_started", "juice-pump-anomaly", LONG).await;
    assert_eq!(started["asset"], "juice-pump");
    let top = started["details"]["contributions"][0]["tag"].as_str().unwrap().to_string();
    assert!(top.starts_with("mill-plc/juice_pump_"), "top contributor {top}");
    assert!(started["details"]["score"].as_f64().unwrap() >= 1.0);
    // And once the pump is back to normal, anomaly_ended follows
    let ended = rig.event("anomaly_ended", "juice-pump-anomaly", LONG).await;
    assert!(ended["details"]["peak_score"].as_f64().unwrap() >= started["details"]["score"].as_f64().unwrap());
    assert_eq!(rig.count("anomaly_started"), 1);
}

#[tokio::test]
async fn a_purity_excursion_raises_quality_deviation_and_a_lab_value_over_mqtt_corrects_it() {
    // Given the mill at 600× and the syrup purity soft sensor (spec: at least 85 %)
    let rig = start(600.0, 32, &["syrup-purity"], |_| {}).await;
    rig.event("model_loaded", "syrup-purity", LONG).await;
    wait_for("purity predictions", LONG, || (rig.predictions("syrup-purity_value").len() >= 20).then_some(())).await;
    assert_eq!(rig.count("quality_deviation"), 0, "in-spec syrup raised a deviation");

    // When the heater's steam valve sticks (under-heated juice, poor clarification)
    rig.faults.send(Fault::Underheat).unwrap();

    // Then the predicted purity leaves the specification and quality_deviation is raised
    let deviation = rig.event("quality_deviation", "syrup-purity", LONG).await;
    assert_eq!(deviation["asset"], "evaporator");
    assert!(deviation["details"]["value"].as_f64().unwrap() < 85.0, "{deviation:#}");

    // When the lab reports a purity well inside the specification over MQTT
    let current = *rig.predictions("syrup-purity_value").last().unwrap();
    let reply = rig.erp.ask("lab", "lab-1", json!({ "id": "lab-1", "model": "syrup-purity", "value": current + 10.0 })).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Then the prediction is corrected by the bias (lab_gain 0.3 of the gap) and the deviation is restored
    let restored = rig.event("quality_restored", "syrup-purity", LONG).await;
    assert_eq!(restored["details"]["last_lab"]["source"], "mqtt");
    assert!(restored["details"]["bias"].as_f64().unwrap() > 2.0, "{restored:#}");

    // And a lab value for a model that is not a quality model is refused with the reason
    let reply = rig.erp.ask("lab", "lab-2", json!({ "id": "lab-2", "model": "no-such-model", "value": 86.0 })).await;
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("syrup-purity"), "{reply}");
}

#[tokio::test]
async fn a_degrading_bearing_raises_maintenance_due_with_a_window_in_the_planned_stop() {
    // Given the mill at 3600× (a plant hour a second) with a bearing about two days from
    // failure, the bearing's RUL model, and a planned stop starting in 12 hours
    let stop_start = chrono::Utc::now() + chrono::Duration::hours(12);
    let stop = stop_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let rig = start(3600.0, 33, &["mill-bearing-rul"], |doc| {
        let stops = doc["calendar"]["planned_stops"].as_array_of_tables_mut().unwrap();
        stops.clear();
        let mut t = toml_edit::Table::new();
        t["name"] = value("test-stop");
        t["start"] = value(stop.clone());
        t["duration"] = value("12h");
        t["crew"] = value(6);
        stops.push(t);
    })
    .await;
    rig.faults.send(Fault::BearingWear).unwrap();
    rig.event("model_loaded", "mill-bearing-rul", LONG).await;

    // When the model sees the worn bearing
    // Then maintenance_due proposes the planned stop, with a small risk of failing before
    // it starts
    let due = rig.event("maintenance_due", "mill-bearing-rul", LONG).await;
    let d = &due["details"];
    assert_eq!(d["window"]["planned_stop"], "test-stop", "{d:#}");
    let start = chrono::DateTime::parse_from_rfc3339(d["window"]["start"].as_str().unwrap()).unwrap();
    assert!((start.with_timezone(&chrono::Utc) - stop_start).num_seconds().abs() <= 2, "window starts {start}, the stop {stop}");
    assert!(d["window"]["failure_risk"].as_f64().unwrap() < 0.1, "{d:#}");
    assert!(d["rul_h"].as_f64().unwrap() > 12.0 && d["rul_h"].as_f64().unwrap() < 100.0, "{d:#}");
    assert_eq!(due["asset"], "mill-bearing");
    // And the estimate is published as telemetry of the analytics device, with its band
    // (that it falls with the true life is checked over whole plant days in analytics_sim.rs)
    let (value, lower, upper) = wait_for("a RUL prediction with its band", LONG, || {
        Some((
            *rig.predictions("mill-bearing-rul_value").last()?,
            *rig.predictions("mill-bearing-rul_lower").last()?,
            *rig.predictions("mill-bearing-rul_upper").last()?,
        ))
    })
    .await;
    assert!(lower <= value && value <= upper, "{lower} {value} {upper}");
}

#[tokio::test]
async fn a_missing_or_mismatched_model_raises_model_failed_while_the_others_keep_running_and_reload_loads_it_once_fixed() {
    // Given the pump model as shipped, the purity model pointing at no artifact, and the
    // bearing model given two inputs where its artifact reads three
    let rig = start(600.0, 34, &["juice-pump-anomaly", "syrup-purity", "mill-bearing-rul"], |doc| {
        for m in doc["models"].as_array_of_tables_mut().unwrap().iter_mut() {
            match m["name"].as_str().unwrap() {
                "syrup-purity" => m["artifact"] = value("/nonexistent/syrup-purity"),
                "mill-bearing-rul" => {
                    let mut inputs = toml_edit::Array::new();
                    inputs.push("mill-plc/mill_bearing_vibration");
                    inputs.push("mill-plc/mill_bearing_temp");
                    m["inputs"] = value(inputs);
                }
                _ => {}
            }
        }
    })
    .await;

    // Then each broken model raises model_failed saying why
    let missing = rig.event("model_failed", "syrup-purity", LONG).await;
    assert!(missing["details"]["reason"].as_str().unwrap().contains("/nonexistent/syrup-purity"), "{missing:#}");
    let mismatched = rig.event("model_failed", "mill-bearing-rul", LONG).await;
    assert!(mismatched["details"]["reason"].as_str().unwrap().contains("reads 3 inputs"), "{mismatched:#}");
    // And the pump model loads and keeps scoring, and the PLC's telemetry keeps flowing
    rig.event("model_loaded", "juice-pump-anomaly", LONG).await;
    let scores = rig.predictions("juice-pump-anomaly_score").len();
    wait_for("more pump scores", LONG, || (rig.predictions("juice-pump-anomaly_score").len() > scores + 20).then_some(())).await;
    assert!(!rig.erp.telemetry("mill-plc").is_empty());
    // And /metrics says which model runs
    let port: u16 = std::fs::read_to_string(rig.dir.path().join("agent.toml")).unwrap().parse::<DocumentMut>().unwrap()["web"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = support::http_get(port, "/metrics").await;
    for line in [
        "edge_agent_model_loaded{model=\"juice-pump-anomaly\"} 1",
        "edge_agent_model_loaded{model=\"syrup-purity\"} 0",
        "edge_agent_model_loaded{model=\"mill-bearing-rul\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?}");
    }
    assert!(rig.agent.log_text().contains("model not loaded"));

    // When the purity model's artifact is fixed in the config and the ERP sends reload
    let path = rig.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("/nonexistent/syrup-purity", "embedded:syrup-purity");
    std::fs::write(&path, text).unwrap();
    let reply = rig.erp.ask("reload", "reload-1", json!({ "id": "reload-1" })).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Then the purity model is loaded and runs, and the pump model is loaded again
    rig.event("model_loaded", "syrup-purity", LONG).await;
    wait_for("the pump model loaded again", LONG, || {
        (rig.erp.events().iter().filter(|e| e["kind"] == "model_loaded" && e["details"]["model"] == "juice-pump-anomaly").count() == 2)
            .then_some(())
    })
    .await;
    wait_for("purity predictions", LONG, || (!rig.predictions("syrup-purity_value").is_empty()).then_some(())).await;
}
