//! The verdict, case by case: each input alone, then how they combine.

use chrono::{Duration, TimeZone};

use super::*;
use crate::analytics::status::{ModelView, PredictionView};
use crate::live::{DeviceView, StoreView, TaskView, UplinkView};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().unwrap_or_default()
}

fn task(name: &str, core: bool, state: TaskState) -> TaskView {
    TaskView { name: name.into(), core, on_failure: "restart".into(), state, ..Default::default() }
}

/// A gateway with nothing wrong: tasks running, uplink connected, one device connected.
fn healthy() -> Snapshot {
    let mut s = Snapshot::default();
    for (name, core) in [("store-writer", true), ("uplink", true), ("command-handler", true), ("status-page", false)] {
        s.tasks.insert(name.into(), task(name, core, TaskState::Running));
    }
    s.uplink = UplinkView { broker: "10.0.0.5:1883".into(), connected: true, connects: 1, since: Some(now()), ..Default::default() };
    s.devices.insert("plc1".into(), DeviceView { name: "plc1".into(), connected: true, since: Some(now()), ..Default::default() });
    s.store = StoreView { max_bytes: 1000, writable: true, ..Default::default() };
    s
}

fn codes(h: &Health) -> Vec<ReasonCode> {
    h.reasons.iter().map(|r| r.code).collect()
}

#[test]
fn a_healthy_gateway_is_ok_and_ready_with_no_reasons() {
    // Given everything running and connected
    let h = evaluate(&healthy(), now());
    // Then the verdict is ok, ready, with no reason
    assert_eq!(h.state, HealthState::Ok);
    assert!(h.ready);
    assert!(h.reasons.is_empty(), "{:?}", h.reasons);
}

#[test]
fn a_core_task_restarting_is_a_fault_and_not_ready() {
    // Given the uplink task panicked and waits for its back-off
    let mut s = healthy();
    let t = s.tasks.get_mut("uplink").unwrap();
    t.state = TaskState::Restarting;
    t.restarts = 1;
    t.last_exit = Some("panicked: boom".into());
    // When the verdict is computed
    let h = evaluate(&s, now());
    // Then it is a fault, not ready, and says which task, why, and what happens
    assert_eq!(h.state, HealthState::Fault);
    assert!(!h.ready);
    assert_eq!(codes(&h), vec![ReasonCode::TaskDown]);
    assert_eq!(h.reasons[0].subject.as_deref(), Some("uplink"));
    assert_eq!(h.reasons[0].message, "task uplink is down (panicked: boom); restarting, 1 restart so far");
}

#[test]
fn a_failed_core_task_says_the_agent_is_stopping() {
    // Given the store writer failed (its policy: the agent exits)
    let mut s = healthy();
    let t = s.tasks.get_mut("store-writer").unwrap();
    t.state = TaskState::Failed;
    t.last_exit = Some("panicked: disk on fire".into());
    // Then the verdict is a fault that says systemd restarts the agent
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Fault);
    assert!(!h.ready);
    assert!(h.reasons[0].message.contains("systemd restarts it"), "{}", h.reasons[0].message);
}

#[test]
fn a_non_core_task_down_is_degraded_but_ready() {
    // Given the status page task restarting
    let mut s = healthy();
    s.tasks.get_mut("status-page").unwrap().state = TaskState::Restarting;
    // Then the verdict is degraded and the agent stays ready
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert!(h.ready);
    assert_eq!(codes(&h), vec![ReasonCode::TaskDown]);
}

#[test]
fn a_task_restarted_lately_keeps_the_verdict_degraded_for_five_minutes() {
    // Given the command handler restarted 2 minutes ago and runs again
    let mut s = healthy();
    let t = s.tasks.get_mut("command-handler").unwrap();
    t.restarts = 3;
    t.last_exit = Some("panicked: bad".into());
    t.last_exit_at = Some(now() - Duration::minutes(2));
    // Then the verdict is degraded (ready) and names the restart
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert!(h.ready);
    assert_eq!(h.reasons[0].message, "task command-handler restarted 2 min ago (panicked: bad), 3 restarts so far");
    // And 6 minutes after the restart it is ok again
    assert_eq!(evaluate(&s, now() + Duration::minutes(4)).state, HealthState::Ok);
}

#[test]
fn a_store_that_cannot_be_written_is_a_fault_and_not_ready() {
    // Given failed store writes
    let mut s = healthy();
    s.store.write_errors = 1204;
    // When the store says it is not writable
    s.store.writable = false;
    let h = evaluate(&s, now());
    // Then the verdict is a fault and not ready
    assert_eq!(h.state, HealthState::Fault);
    assert!(!h.ready);
    assert_eq!(codes(&h), vec![ReasonCode::StoreUnwritable]);
    assert!(h.reasons[0].message.contains("1,204 failed writes"), "{}", h.reasons[0].message);
}

#[test]
fn a_store_nine_tenths_full_is_degraded() {
    let mut s = healthy();
    s.store.bytes = 899;
    assert_eq!(evaluate(&s, now()).state, HealthState::Ok);
    s.store.bytes = 930;
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert_eq!(codes(&h), vec![ReasonCode::StoreNearlyFull]);
    assert!(h.reasons[0].message.starts_with("the store is 93 % full"), "{}", h.reasons[0].message);
}

#[test]
fn an_uplink_down_says_for_how_long_and_what_is_buffered() {
    // Given the uplink lost its broker 3 minutes ago, with 1,204 batches buffered, the oldest 2 h old
    let mut s = healthy();
    s.uplink.connected = false;
    s.uplink.since = Some(now() - Duration::minutes(3));
    s.uplink.last_error = Some("connection refused".into());
    s.uplink.oldest_pending_at = Some(now() - Duration::hours(2));
    s.store.pending_batches = 1204;
    // Then the verdict is degraded (still ready: everything is buffered) with the sentence
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert!(h.ready);
    assert_eq!(h.reasons[0].code, ReasonCode::UplinkDown);
    assert_eq!(h.reasons[0].message, "uplink down for 3 min (connection refused), 1,204 batches buffered, oldest 2 h");
}

#[test]
fn an_uplink_that_never_connected_says_not_yet() {
    let mut s = healthy();
    s.uplink = UplinkView { broker: "10.0.0.5:1883".into(), ..Default::default() };
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert_eq!(h.reasons[0].message, "uplink not connected yet to 10.0.0.5:1883, nothing buffered");
}

#[test]
fn a_connected_uplink_with_an_old_backlog_is_degraded() {
    // Given a connected uplink whose oldest pending batch is 11 minutes old
    let mut s = healthy();
    s.store.pending_batches = 5;
    s.uplink.oldest_pending_at = Some(now() - Duration::minutes(11));
    let h = evaluate(&s, now());
    assert_eq!(codes(&h), vec![ReasonCode::BacklogOld]);
    assert_eq!(h.state, HealthState::Degraded);
    // And a backlog of 9 minutes is not worth a reason
    s.uplink.oldest_pending_at = Some(now() - Duration::minutes(9));
    assert_eq!(evaluate(&s, now()).state, HealthState::Ok);
}

#[test]
fn a_disconnected_device_is_degraded_with_its_name_and_error() {
    let mut s = healthy();
    let d = s.devices.get_mut("plc1").unwrap();
    d.connected = false;
    d.since = Some(now() - Duration::seconds(45));
    d.last_error = Some("timeout".into());
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert!(h.ready);
    assert_eq!(h.reasons[0].subject.as_deref(), Some("plc1"));
    assert_eq!(h.reasons[0].message, "device plc1 not connected for 45 s: timeout");
}

/// A poll rate of 1 a second configured, `achieved` measured over a minute.
fn rate(achieved: f64) -> crate::live::poll_rate::PollRateView {
    crate::live::poll_rate::PollRateView {
        intervals: vec![],
        configured_per_s: 1.0,
        achieved_per_s: Some(achieved),
        measured_s: 60.0,
        window_s: 60.0,
        behind: achieved < 0.8,
        note: None,
    }
}

#[test]
fn a_device_connected_for_a_whole_window_and_polled_too_slowly_is_degraded() {
    // Given a device connected for ten minutes, polled at half its configured rate
    let mut s = healthy();
    let d = s.devices.get_mut("plc1").unwrap();
    d.since = Some(now() - Duration::minutes(10));
    d.poll_rate = Some(rate(0.5));
    // When the verdict is computed
    let h = evaluate(&s, now());
    // Then it is degraded, saying how far behind
    assert_eq!(h.state, HealthState::Degraded);
    assert_eq!(codes(&h), vec![ReasonCode::DeviceBehind]);
    assert_eq!(
        h.reasons[0].message,
        "device plc1 polled 0.5 instead of 1 times a second (50 %) over the last 1 min; its readings come late"
    );
    // But a device at its rate, or one that reconnected within the window, gives no reason
    s.devices.get_mut("plc1").unwrap().poll_rate = Some(rate(0.95));
    assert!(evaluate(&s, now()).reasons.is_empty());
    let d = s.devices.get_mut("plc1").unwrap();
    d.poll_rate = Some(rate(0.5));
    d.since = Some(now() - Duration::seconds(30));
    assert!(evaluate(&s, now()).reasons.is_empty());
}

fn model(kind: &str) -> ModelView {
    ModelView { name: "m1".into(), kind: kind.into(), asset: "mill-1".into(), state: "running".into(), ..Default::default() }
}

#[test]
fn a_model_that_failed_to_load_is_degraded() {
    let mut s = healthy();
    s.models.insert("m1".into(), ModelView { state: "failed".into(), error: Some("no such file".into()), ..model("anomaly") });
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Degraded);
    assert_eq!(h.reasons[0].message, "model m1 is not loaded: no such file");
}

#[test]
fn an_active_anomaly_needs_attention_not_ok() {
    // Given an anomaly model reporting an anomaly for 3 minutes, mostly on two tags
    let mut s = healthy();
    let prediction =
        PredictionView { value: 2.5, contributions: vec![("vibration".into(), 0.7), ("temp".into(), 0.2)], ..Default::default() };
    s.models.insert(
        "m1".into(),
        ModelView {
            active: true,
            last_event_at: Some(now() - Duration::minutes(3)),
            last_prediction: Some(prediction),
            ..model("anomaly")
        },
    );
    // Then the verdict is attention (ready), with the asset and tags in words
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Attention);
    assert!(h.ready);
    assert_eq!(h.reasons[0].code, ReasonCode::AnomalyActive);
    assert_eq!(h.reasons[0].message, "anomaly on mill-1 for 3 min (model m1, mostly vibration, temp)");
}

#[test]
fn a_quality_deviation_and_maintenance_due_need_attention() {
    let mut s = healthy();
    s.models.insert("q".into(), ModelView { name: "q".into(), active: true, ..model("quality") });
    s.models.insert("r".into(), ModelView { name: "r".into(), active: true, ..model("rul") });
    let h = evaluate(&s, now());
    assert_eq!(h.state, HealthState::Attention);
    assert_eq!(codes(&h), vec![ReasonCode::QualityDeviation, ReasonCode::MaintenanceDue]);
}

#[test]
fn the_verdict_is_the_worst_reason_and_lists_the_worst_first() {
    // Given an anomaly, a disconnected device and a store that cannot be written
    let mut s = healthy();
    s.models.insert("m1".into(), ModelView { active: true, ..model("anomaly") });
    s.devices.get_mut("plc1").unwrap().connected = false;
    s.store.writable = false;
    let h = evaluate(&s, now());
    // Then the verdict is the fault, and the reasons go fault, degraded, attention
    assert_eq!(h.state, HealthState::Fault);
    assert_eq!(codes(&h), vec![ReasonCode::StoreUnwritable, ReasonCode::DeviceDisconnected, ReasonCode::AnomalyActive]);
    assert_eq!(h.count(ReasonCode::DeviceDisconnected), 1);
}

#[test]
fn codes_and_states_have_stable_names_in_json() {
    // The names are a contract: dashboards and alert rules match on them.
    for code in ReasonCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
    }
    for state in HealthState::ALL {
        assert_eq!(serde_json::to_value(state).unwrap(), serde_json::json!(state.as_str()));
    }
    assert!(HealthState::Ok < HealthState::Attention && HealthState::Attention < HealthState::Degraded);
    assert!(HealthState::Degraded < HealthState::Fault);
}

#[test]
fn numbers_and_ages_read_as_words() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1204), "1,204");
    assert_eq!(thousands(1234567), "1,234,567");
    assert_eq!(ago(now(), now() - Duration::seconds(59)), "59 s");
    assert_eq!(ago(now(), now() - Duration::minutes(61)), "1 h");
    assert_eq!(ago(now(), now() - Duration::days(3)), "3 d");
    assert_eq!(ago(now(), now() + Duration::seconds(5)), "0 s");
}
