//! Every event variant against `schemas/event.schema.json`, and the schema's kinds against
//! the variants, so that code and schema cannot drift.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use edge_models::ModelKind;
use jsonschema::Validator;
use serde_json::{json, Value as Json};

use super::*;
use crate::payload::EventPayload;

fn schema() -> Json {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/event.schema.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn validator(schema: &Json) -> Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}"))
}

fn violations(validator: &Validator, instance: &Json) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("at {} (schema {}): {e}", e.instance_path(), e.schema_path())).collect()
}

const AT: &str = "2026-11-23T17:00:39.101Z";

fn figures(last_lab: Option<LastLab>) -> QualityFigures {
    QualityFigures {
        model: "purity".into(),
        version: "2026.11.1".into(),
        value: 84.61,
        lower: 84.12,
        upper: 85.1,
        raw_value: 86.11,
        bias: -1.5,
        spec_min: Some(85.0),
        spec_max: None,
        last_lab,
    }
}

fn window(planned_stop: Option<&str>, failure_risk: f64) -> MaintenanceWindow {
    MaintenanceWindow {
        start: "2026-11-29T06:00:00.000Z".into(),
        end: "2026-11-29T14:00:00.000Z".into(),
        planned_stop: planned_stop.map(str::to_string),
        failure_risk,
    }
}

fn audit(command: &str, id: Option<&str>) -> CommandAudit {
    CommandAudit {
        command: command.into(),
        id: id.map(str::to_string),
        device: None,
        tag: None,
        value: None,
        ok: false,
        reason: None,
        result: None,
        received_at: AT.into(),
    }
}

/// Realistic events of every kind (several shapes of some), as the producers build them.
fn examples() -> Vec<Event> {
    vec![
        Event::DeviceConnected(DeviceConnected {}),
        Event::DeviceLost(DeviceLost { reason: "connect failed: Connection refused (os error 111)".into() }),
        Event::StoreReset(StoreResetDetails {
            reason: StoreResetReason::Unreadable,
            next_batch_seq: 1_764_000_000_000,
            moved_aside_to: Some("/var/lib/edge-agent/outbox.unreadable-20261123T170039.101Z".into()),
            batches_possibly_lost: None,
            events_possibly_lost: None,
            lost_batch_seq_from: None,
            lost_batch_seq_below: None,
            error: Some("sled panicked while opening: cannot find pid 12 in view_for_key".into()),
        }),
        Event::StoreReset(StoreResetDetails {
            reason: StoreResetReason::RecordsLost,
            next_batch_seq: 1042,
            moved_aside_to: None,
            batches_possibly_lost: Some(9),
            events_possibly_lost: Some(2),
            lost_batch_seq_from: Some(1033),
            lost_batch_seq_below: Some(1042),
            error: None,
        }),
        Event::StoreReset(StoreResetDetails {
            reason: StoreResetReason::NumberingUnreadable,
            next_batch_seq: 1_764_000_000_000,
            moved_aside_to: None,
            batches_possibly_lost: None,
            events_possibly_lost: None,
            lost_batch_seq_from: None,
            lost_batch_seq_below: None,
            error: None,
        }),
        Event::BufferOverflow(BufferOverflow {
            dropped_batches: 12,
            dropped_samples: 480,
            dropped_events: 0,
            dropped_too_old: 3,
            dropped_unwritten_samples: 0,
            max_bytes: 64 * 1024 * 1024,
            bytes: 66_000_000,
        }),
        Event::CommandExecuted(CommandAudit {
            device: Some("mill-plc".into()),
            tag: Some("cane_feed_setpoint".into()),
            value: Some(edge_drivers::Value::Float(112.5)),
            ok: true,
            result: Some(json!({ "device": "mill-plc", "tag": "cane_feed_setpoint", "value": 112.5 })),
            ..audit("write", Some("w7"))
        }),
        Event::CommandExecuted(CommandAudit {
            device: Some("mill-plc".into()),
            tag: Some("pump_run".into()),
            value: Some(edge_drivers::Value::Bool(true)),
            reason: Some("mill-plc/pump_run: no answer within 2s".into()),
            ..audit("write", Some("w8"))
        }),
        Event::CommandExecuted(CommandAudit {
            ok: true,
            result: Some(json!({ "pong": true, "ts": AT, "version": "0.1.0" })),
            ..audit("ping", Some("p1"))
        }),
        Event::CommandRejected(CommandAudit {
            device: Some("mill-plc".into()),
            tag: Some("cane_feed_setpoint".into()),
            value: Some(edge_drivers::Value::Int(150)),
            reason: Some("value 150 is out of the allowed range [0, 120] for mill-plc/cane_feed_setpoint".into()),
            ..audit("write", Some("w9"))
        }),
        Event::CommandRejected(CommandAudit { reason: Some("the payload is not JSON".into()), ..audit("nope", None) }),
        Event::ModelLoaded(ModelLoaded {
            model: "mill-anomaly".into(),
            version: "2026.11.1".into(),
            kind: ModelKind::Anomaly,
            artifact: "embedded:sugar-mill-anomaly".into(),
            architecture: "autoencoder".into(),
            inputs: vec!["mill-plc/motor_current".into(), "mill-plc/vibration".into()],
            window: 30,
            unit: None,
            training_data_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        }),
        Event::ModelLoaded(ModelLoaded {
            model: "purity".into(),
            version: "2026.11.1".into(),
            kind: ModelKind::Quality,
            artifact: "/var/lib/edge-agent/models/purity".into(),
            architecture: "mlp".into(),
            inputs: vec!["mill-plc/brix".into()],
            window: 1,
            unit: Some("%".into()),
            training_data_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        }),
        Event::ModelFailed(ModelFailed {
            model: "rul".into(),
            kind: ModelKind::Rul,
            artifact: "/var/lib/edge-agent/models/rul".into(),
            reason: "cannot read /var/lib/edge-agent/models/rul/manifest.json: No such file or directory (os error 2)".into(),
        }),
        Event::AnomalyStarted(AnomalyStarted {
            model: "mill-anomaly".into(),
            version: "2026.11.1".into(),
            score: 1.4312,
            threshold: f64::from(1.2f32),
            contributions: vec![
                Contribution { tag: "mill-plc/vibration".into(), share: 0.7 },
                Contribution { tag: "mill-plc/motor_current".into(), share: 0.2 },
            ],
            started_at: AT.into(),
        }),
        Event::AnomalyEnded(AnomalyEnded {
            model: "mill-anomaly".into(),
            version: "2026.11.1".into(),
            score: 0.61,
            peak_score: 1.9,
            threshold: f64::from(0.9f32),
            contributions: vec![Contribution { tag: "mill-plc/vibration".into(), share: 0.55 }],
            started_at: AT.into(),
            duration_s: 312.4,
        }),
        Event::QualityDeviation(QualityDeviation { figures: figures(None), band_outside_spec: false }),
        Event::QualityDeviation(QualityDeviation {
            figures: figures(Some(LastLab { value: 84.5, at: AT.into(), source: "mqtt".into() })),
            band_outside_spec: true,
        }),
        Event::QualityRestored(QualityRestored {
            figures: figures(Some(LastLab { value: 85.9, at: AT.into(), source: "tag".into() })),
            worst_value: 83.9,
            started_at: AT.into(),
            duration_s: 1800.0,
        }),
        Event::MaintenanceDue(MaintenanceDue {
            model: "rul".into(),
            version: "2026.11.1".into(),
            rul_h: 60.0,
            rul_lower_h: 45.0,
            rul_upper_h: 80.0,
            window: Some(window(Some("sunday"), 0.12)),
            next_window: Some(window(None, 0.61)),
            risk_of_waiting: 0.61,
            reason: "the last planned stop before the risk of failure exceeds 20 %".into(),
            duration_h: 8.0,
            crew: 2,
            update: false,
            critical: false,
        }),
        Event::MaintenanceDue(MaintenanceDue {
            model: "rul".into(),
            version: "2026.11.1".into(),
            rul_h: 6.0,
            rul_lower_h: 2.5,
            rul_upper_h: 9.0,
            window: None,
            next_window: None,
            risk_of_waiting: 1.0,
            reason: "no window before the risk of failure exceeds 20 %".into(),
            duration_h: 8.0,
            crew: 2,
            update: true,
            critical: true,
        }),
        Event::EventAcknowledged(EventAcknowledged {
            event_id: "gw-01-41".into(),
            event_kind: "anomaly_started".into(),
            event_severity: Severity::Warning,
            user: "alice".into(),
            address: Some("10.0.0.31".into()),
        }),
        Event::EventAcknowledged(EventAcknowledged {
            event_id: "gw-01-42".into(),
            event_kind: "store_reset".into(),
            event_severity: Severity::Critical,
            user: "alice".into(),
            address: None,
        }),
        Event::CertificateTrusted(CertificateTrusted {
            thumbprint: "5f3c0a9e1b7d2c4e6a8f0b1d3e5c7a9b2d4f6e8a".into(),
            subject: "CN=boiler-plc, O=Plant".into(),
            not_after: Some("2031-11-23T17:00:39+00:00".into()),
            devices: vec!["boiler-plc".into()],
            user: "alice".into(),
            address: Some("10.0.0.31".into()),
        }),
        Event::CertificateTrusted(CertificateTrusted {
            thumbprint: "5f3c0a9e1b7d2c4e6a8f0b1d3e5c7a9b2d4f6e8a".into(),
            subject: "CN=UA Server".into(),
            not_after: None,
            devices: vec![],
            user: "bob".into(),
            address: None,
        }),
    ]
}

fn payload(n: usize, event: &Event) -> EventPayload {
    let ts = Utc.with_ymd_and_hms(2026, 11, 23, 17, 0, 39).single().unwrap() + chrono::Duration::milliseconds(101);
    EventPayload::new(format!("gw-01-{n}"), "gw-01".into(), "mill-plc".into(), ts, event).unwrap()
}

#[test]
fn every_event_variant_serialises_to_a_payload_its_schema_accepts() {
    // Given the published event schema
    let schema = validator(&schema());
    for (n, event) in examples().iter().enumerate() {
        // When an event of each kind (and shape) is made into its payload
        let json = serde_json::to_value(payload(n + 1, event)).unwrap();
        // Then the schema accepts it, with the severity the variant says
        let errors = violations(&schema, &json);
        assert!(errors.is_empty(), "{} does not match the schema:\n  {}\npayload: {json}", event.kind(), errors.join("\n  "));
        assert_eq!(json["kind"], event.kind());
        assert_eq!(json["severity"], event.severity().as_str());
    }
}

#[test]
fn a_severity_other_than_the_one_the_variant_gives_is_refused_by_the_schema() {
    // Given the schema, and every example with each severity it does not have (but for
    // maintenance_due, whose warning or critical depends on models[].max_risk, which the
    // payload does not carry: the schema allows both)
    let schema = validator(&schema());
    for (n, event) in examples().iter().enumerate() {
        let allowed = |s: &Severity| *s == event.severity() || (matches!(event, Event::MaintenanceDue(_)) && *s != Severity::Info);
        for other in Severity::ALL.into_iter().filter(|s| !allowed(s)) {
            let mut json = serde_json::to_value(payload(n + 1, event)).unwrap();
            json["severity"] = json!(other);
            // Then the schema refuses it: the severity the code gives is the only one allowed
            assert!(!schema.is_valid(&json), "{} accepted with severity {other}: {json}", event.kind());
        }
    }
}

#[test]
fn the_kinds_in_the_schema_are_exactly_the_event_variants() {
    // Given the kinds the schema fixes a shape for (allOf: if kind = … then details = …)
    // and the kinds it lists as emitted
    let schema = schema();
    let mut shaped = BTreeSet::new();
    for rule in schema["allOf"].as_array().unwrap() {
        let kind = rule["if"]["properties"]["kind"]["const"].as_str().unwrap();
        if let Some(details) = rule["then"]["properties"]["details"]["$ref"].as_str() {
            let def = details.strip_prefix("#/$defs/").unwrap();
            assert_eq!(def, format!("{kind}_details"), "{kind}'s details are described by {details}");
            assert!(schema["$defs"][def].is_object(), "{details} is not defined");
            shaped.insert(kind.to_string());
        }
    }
    let listed: BTreeSet<String> =
        schema["properties"]["kind"]["examples"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().into()).collect();
    // Then they are the variants' kinds, and the examples above cover every variant
    let variants: BTreeSet<String> = Event::KINDS.iter().map(|k| k.to_string()).collect();
    let examples: BTreeSet<String> = examples().iter().map(|e| e.kind().to_string()).collect();
    assert_eq!(shaped, variants, "kinds with a details shape in the schema vs Event's variants");
    assert_eq!(listed, variants, "kinds listed in the schema's kind.examples vs Event's variants");
    assert_eq!(examples, variants, "the examples in this test must cover every variant");
    assert_eq!(Event::KINDS.len(), variants.len(), "a kind is used by two variants");
}

#[test]
fn the_severities_are_exactly_those_the_schema_allows() {
    let schema = schema();
    let allowed: Vec<String> =
        schema["properties"]["severity"]["enum"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
    let ours: Vec<String> = Severity::ALL.iter().map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_string()).collect();
    assert_eq!(ours, allowed);
    for s in Severity::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        assert_eq!(serde_json::from_value::<Severity>(json!(s.to_string())).unwrap(), s);
    }
}

#[test]
fn a_payload_read_back_from_the_store_gives_the_same_typed_event() {
    for (n, event) in examples().iter().enumerate() {
        // Given a payload as the outbox stores it
        let bytes = serde_json::to_vec(&payload(n + 1, event)).unwrap();
        // When it is read back
        let read: EventPayload = serde_json::from_slice(&bytes).unwrap();
        // Then its typed view is the event it was made from
        assert_eq!(read.event().unwrap(), *event, "{}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn a_payload_of_a_kind_this_build_does_not_know_is_kept_as_it_was_sent() {
    // Given an event of a kind from a later version, in the store
    let text = r#"{"id":"gw-01-7","kind":"tag_renamed","gateway":"gw-01","asset":"mill-plc","severity":"info","ts":"2026-11-23T17:00:39.101Z","details":{"from":"a","to":"b"}}"#;
    // When it is read back
    let read: EventPayload = serde_json::from_str(text).unwrap();
    // Then it is published unchanged, and has no typed view
    assert_eq!(serde_json::to_string(&read).unwrap(), text);
    assert!(read.event().is_err());
}

#[test]
fn details_are_the_json_the_agent_sent_before_they_were_typed() {
    // The details used to be built with json!, whose objects sort their keys and whose
    // f32 numbers are widened to f64: the typed ones are published the same way.
    let old = json!({ "threshold": 1.2f32, "score": 1.4312, "started_at": AT, "model": "m", "version": "1",
                      "contributions": [{ "tag": "plc/a", "share": 0.7 }] });
    let new = Event::AnomalyStarted(AnomalyStarted {
        model: "m".into(),
        version: "1".into(),
        score: 1.4312,
        threshold: f64::from(1.2f32),
        contributions: vec![Contribution { tag: "plc/a".into(), share: 0.7 }],
        started_at: AT.into(),
    });
    let published = payload(1, &new).details;
    assert_eq!(published.to_string(), old.to_string());
    assert_eq!(Event::DeviceConnected(DeviceConnected {}).details().unwrap().to_string(), "{}");
}
