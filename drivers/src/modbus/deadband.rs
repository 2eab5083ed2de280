//! Report-by-exception: with a deadband, a reading is sent only when it moved far enough
//! from the last one sent, when its quality changed, or when the heartbeat is due, so
//! that a flat value is still seen to be alive.

use tokio::time::Instant;

pub use crate::config::DEFAULT_HEARTBEAT;
use crate::modbus::device::ModbusTag;
use crate::sample::{Sample, Value};

/// The last reading sent of each tag of a device.
#[derive(Debug, Default)]
pub struct Deadbands {
    sent: Vec<Option<Sent>>,
}

#[derive(Debug, Clone)]
struct Sent {
    value: Option<Value>,
    quality: &'static str,
    at: Instant,
}

impl Deadbands {
    pub fn new(tags: usize) -> Self {
        Self { sent: vec![None; tags] }
    }

    /// Whether `sample` of tag `index` is to be sent; if so it is remembered as sent.
    pub fn pass(&mut self, index: usize, tag: &ModbusTag, sample: &Sample, now: Instant) -> bool {
        // Without a deadband every reading is sent, and nothing need be remembered.
        if !tag.has_deadband() {
            return true;
        }
        let Some(slot) = self.sent.get_mut(index) else { return true };
        let send = match &*slot {
            None => true,
            Some(last) => {
                last.quality != sample.quality.code()
                    || now.duration_since(last.at) >= tag.heartbeat
                    || moved(last.value.as_ref(), sample.value.as_ref(), tag)
            }
        };
        if send {
            *slot = Some(Sent { value: sample.value.clone(), quality: sample.quality.code(), at: now });
        }
        send
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Whether the value left the deadband around the last value sent (either band, when
/// both are set).
fn moved(last: Option<&Value>, now: Option<&Value>, tag: &ModbusTag) -> bool {
    let (Some(a), Some(b)) = (number(last), number(now)) else { return last != now };
    let change = (b - a).abs();
    let abs = tag.deadband.is_some_and(|d| change > d);
    let pct = tag.deadband_percent.is_some_and(|p| change > a.abs() * p / 100.0);
    abs || pct
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::TagConfig;
    use crate::sample::Quality;
    use chrono::Utc;

    fn built(tag: TagConfig) -> ModbusTag {
        ModbusTag::build(&tag, 0).unwrap()
    }

    fn sample(v: f64, good: bool) -> Sample {
        let now = Utc::now();
        Sample {
            tag: "t".into(),
            value: good.then_some(Value::Float(v)),
            quality: if good { Quality::Good } else { Quality::Bad("timeout".into()) },
            source_ts: now,
            server_ts: None,
            agent_ts: now,
        }
    }

    #[test]
    fn small_moves_are_held_back_until_the_band_or_the_heartbeat_is_crossed() {
        let tag = built(TagConfig { deadband: Some(0.5), heartbeat: Some(Duration::from_secs(10)), ..TagConfig::default() });
        let mut d = Deadbands::new(1);
        let t0 = Instant::now();
        assert!(d.pass(0, &tag, &sample(10.0, true), t0), "the first reading is sent");
        assert!(!d.pass(0, &tag, &sample(10.4, true), t0 + Duration::from_secs(1)));
        assert!(!d.pass(0, &tag, &sample(9.6, true), t0 + Duration::from_secs(2)), "measured from the last sent, not the last read");
        assert!(d.pass(0, &tag, &sample(10.6, true), t0 + Duration::from_secs(3)));
        assert!(!d.pass(0, &tag, &sample(10.6, true), t0 + Duration::from_secs(12)));
        assert!(d.pass(0, &tag, &sample(10.6, true), t0 + Duration::from_secs(13)), "heartbeat 10s after the last sent");
        assert!(d.pass(0, &tag, &sample(0.0, false), t0 + Duration::from_secs(14)), "a quality change is always sent");
    }

    #[test]
    fn a_percent_band_scales_with_the_value() {
        let tag = built(TagConfig { deadband_percent: Some(1.0), ..TagConfig::default() });
        let mut d = Deadbands::new(1);
        let t0 = Instant::now();
        assert!(d.pass(0, &tag, &sample(1000.0, true), t0));
        assert!(!d.pass(0, &tag, &sample(1009.0, true), t0));
        assert!(d.pass(0, &tag, &sample(1011.0, true), t0));
    }

    #[test]
    fn without_a_deadband_every_reading_is_sent() {
        let tag = built(TagConfig::default());
        let mut d = Deadbands::new(1);
        let t0 = Instant::now();
        assert!(d.pass(0, &tag, &sample(1.0, true), t0));
        assert!(d.pass(0, &tag, &sample(1.0, true), t0));
    }
}
