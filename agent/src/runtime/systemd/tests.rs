use super::*;
use crate::health::{HealthState, ReasonCode};
use crate::runtime::supervise::supervise;
use crate::runtime::supervise::Register;

/// A register with `names` running (supervised tasks that wait for `cancel`).
fn running(names: &[&str], cancel: &CancellationToken) -> Live {
    let live = Live::default();
    for name in names {
        let c = cancel.clone();
        supervise(name.to_string(), true, Register::new(live.clone()), cancel.clone(), move || {
            let c = c.clone();
            async move {
                c.cancelled().await;
                Ok(())
            }
        });
    }
    live
}

#[tokio::test(start_paused = true)]
async fn a_loop_silent_past_its_allowance_on_two_checks_is_hung_and_shown_in_the_verdict() {
    // Given the uplink and a driver, both beating
    let cancel = CancellationToken::new();
    let live = running(&["uplink", "driver plc1"], &cancel);
    let (uplink, driver) = (Heartbeat::new(), Heartbeat::new());
    let watched = Watched::default();
    watched
        .set(live.clone(), vec![("uplink".into(), uplink.clone(), Duration::ZERO), ("driver plc1".into(), driver.clone(), Duration::ZERO)]);
    let mut judge = Judge::default();
    // When the driver keeps beating and the uplink falls silent for 16 s, then 17 s
    for _ in 0..16 {
        tokio::time::advance(Duration::from_secs(1)).await;
        driver.beat();
    }
    let first = judge.check(&watched, Instant::now(), HUNG_AFTER);
    tokio::time::advance(Duration::from_secs(1)).await;
    driver.beat();
    let second = judge.check(&watched, Instant::now(), HUNG_AFTER);
    // Then the first check only suspects it, the second names the uplink alone
    assert!(first.is_empty(), "{first:?}");
    assert_eq!(second.iter().map(|(n, d)| (n.as_str(), d.as_secs())).collect::<Vec<_>>(), vec![("uplink", 17)]);
    // And the register and the verdict say so
    let s = live.snapshot();
    assert_eq!(s.tasks["uplink"].hung_for_s, Some(17));
    assert_eq!(s.tasks["driver plc1"].hung_for_s, None);
    assert_eq!(s.health.state, HealthState::Fault);
    assert_eq!(s.health.count(ReasonCode::TaskHung), 1);
    // When it beats again, the next check clears the mark
    uplink.beat();
    assert!(judge.check(&watched, Instant::now(), HUNG_AFTER).is_empty());
    assert_eq!(live.snapshot().health.count(ReasonCode::TaskHung), 0);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_loop_in_a_planned_back_off_within_its_slack_or_waiting_for_its_restart_is_not_hung() {
    // Given a driver that promised a 30 s back-off, and an uplink the register shows restarting
    let cancel = CancellationToken::new();
    // and a store writer whose loop turns once a minute when no reading comes
    let live = running(&["driver plc1", "store-writer"], &cancel);
    let _uplink = supervise("uplink".into(), true, Register::new(live.clone()), cancel.clone(), || async { Err(anyhow::anyhow!("down")) });
    let (uplink, driver) = (Heartbeat::new(), Heartbeat::new());
    driver.alive_until(Instant::now() + Duration::from_secs(30));
    let watched = Watched::default();
    let writer = Heartbeat::new();
    watched.set(
        live.clone(),
        vec![
            ("uplink".into(), uplink, Duration::ZERO),
            ("driver plc1".into(), driver, Duration::ZERO),
            ("store-writer".into(), writer, Duration::from_secs(60)),
        ],
    );
    let mut judge = Judge::default();
    // When 40 s pass without a beat (checked every second)
    let mut hung = Vec::new();
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(1)).await;
        hung.extend(judge.check(&watched, Instant::now(), HUNG_AFTER));
    }
    // Then nothing was hung: the back-off ended 10 s ago (< 15 s), the writer is within its
    // minute (and 15 s), the uplink is not running
    assert!(hung.is_empty(), "{hung:?}");
    assert_eq!(live.snapshot().tasks["uplink"].state, TaskState::Restarting);
    cancel.cancel();
}

#[test]
fn the_status_line_is_the_verdict_and_its_first_two_reasons_on_one_line() {
    // Given a verdict with three reasons, one with a line break
    let reason = |m: &str| crate::health::Reason {
        code: ReasonCode::DeviceDisconnected,
        level: HealthState::Degraded,
        subject: None,
        message: m.to_string(),
    };
    let h = Health {
        state: HealthState::Degraded,
        ready: true,
        reasons: vec![reason("device a not connected\nfor 3 min"), reason("device b not connected"), reason("device c")],
    };
    // Then the line names the level, the first two reasons, and how many more
    assert_eq!(status_line(&h), "degraded: device a not connected for 3 min; device b not connected (+1 more)");
    assert_eq!(status_line(&Health::default()), "ok");
}
