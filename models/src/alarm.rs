//! Turning a stream of normalised anomaly scores into alarms: smoothing, hysteresis and a
//! minimum duration, so one noisy sample neither raises nor clears an alarm.

/// Alarm settings (scores are normalised: 1.0 is the calibrated threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmOptions {
    /// Exponential smoothing factor per sample (1.0: none).
    pub smoothing: f32,
    /// The alarm starts when the smoothed score stays at or above `on` for `min_on` samples.
    pub on: f32,
    /// The alarm ends when the smoothed score stays below `off` for `min_off` samples.
    pub off: f32,
    pub min_on: usize,
    pub min_off: usize,
}

impl Default for AlarmOptions {
    fn default() -> Self {
        AlarmOptions { smoothing: 0.2, on: 1.0, off: 0.8, min_on: 5, min_off: 10 }
    }
}

/// What one new score did to the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Started,
    Ended,
}

/// The alarm state machine for one asset.
#[derive(Debug, Clone)]
pub struct Alarm {
    opts: AlarmOptions,
    smoothed: Option<f32>,
    active: bool,
    run: usize,
}

impl Alarm {
    pub fn new(opts: AlarmOptions) -> Alarm {
        Alarm { opts, smoothed: None, active: false, run: 0 }
    }

    pub fn active(&self) -> bool {
        self.active
    }

    pub fn smoothed(&self) -> Option<f32> {
        self.smoothed
    }

    /// Feeds one score (a non-finite score counts as no news and is ignored).
    pub fn update(&mut self, score: f32) -> Transition {
        if !score.is_finite() {
            return Transition::None;
        }
        let a = self.opts.smoothing.clamp(0.0, 1.0);
        let s = match self.smoothed {
            Some(prev) => prev + a * (score - prev),
            None => score,
        };
        self.smoothed = Some(s);
        if !self.active {
            self.run = if s >= self.opts.on { self.run + 1 } else { 0 };
            if self.run >= self.opts.min_on.max(1) {
                self.active = true;
                self.run = 0;
                return Transition::Started;
            }
        } else {
            self.run = if s < self.opts.off { self.run + 1 } else { 0 };
            if self.run >= self.opts.min_off.max(1) {
                self.active = false;
                self.run = 0;
                return Transition::Ended;
            }
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_spike_raises_no_alarm_but_a_sustained_excess_does_and_then_clears() {
        let mut a = Alarm::new(AlarmOptions { smoothing: 1.0, on: 1.0, off: 0.8, min_on: 3, min_off: 3 });
        // Given one spike among normal scores, then no alarm.
        for s in [0.2, 5.0, 0.2, 0.2] {
            assert_eq!(a.update(s), Transition::None);
        }
        // When the score stays high, the third sample starts the alarm.
        assert_eq!(a.update(2.0), Transition::None);
        assert_eq!(a.update(2.0), Transition::None);
        assert_eq!(a.update(2.0), Transition::Started);
        // Then a score between off and on keeps it; three low samples end it.
        assert_eq!(a.update(0.9), Transition::None);
        assert_eq!(a.update(0.1), Transition::None);
        assert_eq!(a.update(0.1), Transition::None);
        assert_eq!(a.update(0.1), Transition::Ended);
    }
}
