use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{BackendChoice, Condition, GpioConfig, InputConfig, InputKind, Level, OutputConfig, Pull};
use super::pins::{SimulatedHandle, SimulatedPins};
use super::*;
use crate::live::{Live, TaskState, TaskView};

fn output(pin: u8, when: Condition, active_level: Level) -> OutputConfig {
    OutputConfig { pin, when, percent: (when == Condition::BufferAbove).then_some(80.0), active_level, fail_safe_level: None }
}

fn alive_live() -> Live {
    let live = Live::default();
    live.update(|s| {
        s.tasks.insert(
            "store-writer".into(),
            TaskView { name: "store-writer".into(), core: true, state: TaskState::Running, ..Default::default() },
        );
        s.uplink.connected = true;
        s.store.max_bytes = 1000;
    });
    live
}

struct Running {
    handle: SimulatedHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    reports: mpsc::Receiver<DeviceReport>,
}

fn start(config: &GpioConfig, live: &Live, dir: &std::path::Path) -> Running {
    let (pins, handle) = SimulatedPins::new();
    let (tx, reports) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(config.build(), Box::new(pins), live.clone(), dir.to_path_buf(), tx, cancel.clone()));
    Running { handle, cancel, task, reports }
}

async fn stop(r: Running) -> SimulatedHandle {
    r.cancel.cancel();
    r.task.await.unwrap_or_else(|e| panic!("gpio task: {e}"));
    r.handle
}

#[test]
fn each_output_has_its_active_level_only_while_its_condition_holds() {
    let cfg = GpioConfig {
        outputs: vec![
            output(17, Condition::Running, Level::Low),
            output(27, Condition::UplinkDown, Level::High),
            output(22, Condition::BufferAbove, Level::High),
            output(23, Condition::AnomalyActive, Level::Low),
            output(24, Condition::DeviceLost, Level::High),
        ],
        ..Default::default()
    }
    .build();
    let all_well = Conditions { alive: true, uplink_down: false, buffer_percent: 50.0, anomaly_active: false, device_lost: false };
    let all_bad = Conditions { alive: false, uplink_down: true, buffer_percent: 81.0, anomaly_active: true, device_lost: true };
    let o = &cfg.outputs;
    // running blinks while alive (active-low relay: low on the "on" phase), rests released when not
    assert_eq!((level_of(&o[0], &all_well, true), level_of(&o[0], &all_well, false)), (Level::Low, Level::High));
    assert_eq!((level_of(&o[0], &all_bad, true), level_of(&o[0], &all_bad, false)), (Level::High, Level::High));
    // the alarms are steady, at their active level only while their condition holds
    for (out, active) in [(&o[1], Level::High), (&o[2], Level::High), (&o[3], Level::Low), (&o[4], Level::High)] {
        assert_eq!(level_of(out, &all_bad, true), active, "{:?}", out.when);
        assert_eq!(level_of(out, &all_bad, false), active, "{:?}", out.when);
        assert_eq!(level_of(out, &all_well, true), active.inverted(), "{:?}", out.when);
    }
    // buffer_above is strictly above its percent
    assert_eq!(level_of(&o[2], &Conditions { buffer_percent: 80.0, ..all_well }, true), Level::Low);
}

#[test]
fn the_fail_safe_level_of_running_is_released_and_of_an_alarm_is_the_alarm() {
    let cfg = GpioConfig {
        outputs: vec![output(17, Condition::Running, Level::Low), output(27, Condition::UplinkDown, Level::Low)],
        ..Default::default()
    }
    .build();
    assert_eq!(cfg.outputs[0].fail_safe_level, Level::High, "a stopped agent is not running: relay released");
    assert_eq!(cfg.outputs[1].fail_safe_level, Level::Low, "a stopped agent cannot say the uplink is fine: alarm");
}

#[test]
fn a_pin_used_twice_or_off_the_header_is_refused_with_its_path() {
    let cfg = GpioConfig {
        backend: BackendChoice::Simulated,
        outputs: vec![
            output(17, Condition::Running, Level::High),
            output(40, Condition::UplinkDown, Level::High),
            OutputConfig { percent: None, ..output(5, Condition::BufferAbove, Level::High) },
        ],
        inputs: vec![InputConfig {
            name: "bags".into(),
            pin: 17,
            kind: InputKind::Counter,
            pull: Pull::Up,
            debounce: Duration::from_millis(20),
        }],
    };
    let mut issues = edge_drivers::validate::Issues::default();
    cfg.validate("gpio", &mut issues);
    let text = format!("{issues:?}");
    assert!(text.contains("gpio.outputs[1].pin") && text.contains("GPIO40"), "{text}");
    assert!(text.contains("gpio.inputs[0].pin") && text.contains("already used by gpio.outputs[0]"), "{text}");
    assert!(text.contains("gpio.outputs[2].percent"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_follow_the_agent_and_fall_to_their_fail_safe_levels_on_shutdown() {
    // Given a running light (active low), an uplink-down relay and a buffer light
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = GpioConfig {
        outputs: vec![
            output(17, Condition::Running, Level::Low),
            output(27, Condition::UplinkDown, Level::High),
            output(22, Condition::BufferAbove, Level::High),
        ],
        ..Default::default()
    };
    let live = alive_live();
    let r = start(&config, &live, dir.path());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // Then the first levels written were the fail-safe ones
    assert_eq!(r.handle.transitions(27).first(), Some(&Level::High), "uplink relay starts in alarm");
    assert_eq!(r.handle.transitions(17).first(), Some(&Level::High), "running light starts released");
    // And with everything well, running blinks and the alarms are released
    assert!(r.handle.transitions(17).len() >= 3, "running did not blink: {:?}", r.handle.transitions(17));
    assert_eq!((r.handle.output(27), r.handle.output(22)), (Some(Level::Low), Some(Level::Low)));
    // When the broker goes away and the outbox fills past 80 %
    live.update(|s| {
        s.uplink.connected = false;
        s.store.bytes = 900;
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Then both alarms are set
    assert_eq!((r.handle.output(27), r.handle.output(22)), (Some(Level::High), Some(Level::High)));
    // When a core task fails, the running light stops blinking (released)
    live.update(|s| {
        if let Some(t) = s.tasks.get_mut("store-writer") {
            t.state = TaskState::Failed;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = r.handle.transitions(17).len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(r.handle.transitions(17).len(), before, "still blinking with a failed core task");
    assert_eq!(r.handle.output(17), Some(Level::High));
    // And the page sees the levels
    let view = live.read(|s| s.gpio.clone());
    assert_eq!(view.backend, "simulated");
    assert!(view.outputs.iter().any(|o| o.pin == 27 && o.active && o.level == Level::High), "{view:?}");
    // When the agent stops, every output is at its fail-safe level
    live.update(|s| {
        s.uplink.connected = true;
        s.store.bytes = 0;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handle = stop(r).await;
    assert_eq!((handle.output(17), handle.output(27), handle.output(22)), (Some(Level::High), Some(Level::High), Some(Level::High)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_counter_counts_debounced_pulses_exactly_and_keeps_its_total_across_restarts() {
    // Given a bag counter on GPIO5 with a 20 ms debounce
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = GpioConfig {
        inputs: vec![
            InputConfig { name: "bags".into(), pin: 5, kind: InputKind::Counter, pull: Pull::Down, debounce: Duration::from_millis(20) },
            InputConfig {
                name: "door_closed".into(),
                pin: 6,
                kind: InputKind::Level,
                pull: Pull::Down,
                debounce: Duration::from_millis(20),
            },
        ],
        ..Default::default()
    };
    let live = alive_live();
    let mut r = start(&config, &live, dir.path());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // When 37 pulses arrive, each bouncing three times, and one 5 ms spike
    let t0 = Instant::now();
    for p in 0..37u32 {
        let at = t0 + Duration::from_millis(u64::from(p) * 60);
        for (i, ms) in [0u64, 1, 2, 3, 4].into_iter().enumerate() {
            r.handle.drive(5, if i % 2 == 0 { Level::High } else { Level::Low }, at + Duration::from_millis(ms));
        }
        r.handle.drive(5, Level::Low, at + Duration::from_millis(30));
    }
    let spike = t0 + Duration::from_millis(37 * 60 + 10);
    r.handle.drive(5, Level::High, spike);
    r.handle.drive(5, Level::Low, spike + Duration::from_millis(5));
    r.handle.drive(6, Level::High, spike);
    // (the edges carry times up to 2.2 s ahead: wait until they have passed, and a report)
    tokio::time::sleep_until((spike + Duration::from_millis(1500)).into()).await;
    // Then the tag `gpio/bags` reads exactly 37, and the door input reads true
    let mut last = None;
    while let Ok(report) = r.reports.try_recv() {
        last = Some(report);
    }
    let Some(DeviceReport { device, kind: ReportKind::Samples(samples) }) = last else { panic!("no samples reported") };
    assert_eq!(device, "gpio");
    let bags = samples.iter().find(|s| s.tag == "bags").map(|s| s.value.clone());
    assert_eq!(bags, Some(Some(Value::Int(37))));
    let door = samples.iter().find(|s| s.tag == "door_closed").map(|s| s.value.clone());
    assert_eq!(door, Some(Some(Value::Bool(true))));
    // When the agent restarts and three more pulses come
    stop(r).await;
    let r = start(&config, &live, dir.path());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t1 = Instant::now();
    for p in 0..3u32 {
        let at = t1 + Duration::from_millis(u64::from(p) * 60);
        r.handle.drive(5, Level::High, at);
        r.handle.drive(5, Level::Low, at + Duration::from_millis(30));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Then the count goes on from 37
    let count = live.read(|s| s.gpio.inputs.iter().find(|i| i.name == "bags").and_then(|i| i.count));
    assert_eq!(count, Some(40));
    stop(r).await;
    let saved = std::fs::read_to_string(dir.path().join("gpio-counters.json")).unwrap_or_default();
    assert!(saved.contains("\"bags\": 40"), "{saved}");
}
