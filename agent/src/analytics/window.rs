//! From the sample flow to the rows a model reads: the latest reading of each input, a
//! row taken every `row_interval` when every input is good and fresh, and the last
//! `window` rows. A row that cannot be taken (an input bad, missing or stale) empties the
//! window, so a model never sees a window with a hole in it; it is counted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use edge_drivers::{Quality, Value};

/// The latest reading of one input.
#[derive(Debug, Clone, Copy)]
struct Latest {
    value: Option<f64>,
    good: bool,
    at: Instant,
}

/// Why a row could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// No reading yet.
    Missing(String),
    /// The last reading is not of good quality (or not a number).
    Bad(String),
    /// The last reading is older than the freshness limit.
    Stale(String),
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Missing(t) => write!(f, "no reading of {t} yet"),
            Gap::Bad(t) => write!(f, "the last reading of {t} is not good"),
            Gap::Stale(t) => write!(f, "the last reading of {t} is stale"),
        }
    }
}

#[derive(Debug)]
pub struct Windower {
    names: Vec<String>,
    latest: Vec<Option<Latest>>,
    rows: VecDeque<Vec<f32>>,
    window: usize,
    /// A reading older than this cannot go into a row.
    max_age: Duration,
    /// How many of the oldest rows are warm-up rows (see [`super::warmup`]).
    warm: usize,
}

/// A tag value as a number: numbers as they are, booleans as 0/1, text as nothing.
pub fn numeric(value: &Option<Value>) -> Option<f64> {
    match value {
        Some(Value::Float(f)) if f.is_finite() => Some(*f),
        Some(Value::Int(i)) => Some(*i as f64),
        Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

impl Windower {
    /// `names`: the inputs (`device/tag`) in model order.
    pub fn new(names: Vec<String>, window: usize, row_interval: Duration) -> Self {
        let latest = vec![None; names.len()];
        Windower {
            names,
            latest,
            rows: VecDeque::new(),
            window: window.max(1),
            max_age: (row_interval * 3).max(Duration::from_secs(2)),
            warm: 0,
        }
    }

    /// Records a reading of input `index`.
    pub fn record(&mut self, index: usize, value: &Option<Value>, quality: &Quality, at: Instant) {
        if let Some(slot) = self.latest.get_mut(index) {
            let value = numeric(value);
            *slot = Some(Latest { value, good: quality.is_good() && value.is_some(), at });
        }
    }

    /// Takes a row from the latest readings at `now`; on a gap the window is emptied.
    pub fn take_row(&mut self, now: Instant) -> Result<(), Gap> {
        let mut row = Vec::with_capacity(self.names.len());
        for (name, latest) in self.names.iter().zip(&self.latest) {
            let gap = match latest {
                None => Some(Gap::Missing(name.clone())),
                Some(l) if !l.good => Some(Gap::Bad(name.clone())),
                Some(l) if now.saturating_duration_since(l.at) > self.max_age => Some(Gap::Stale(name.clone())),
                Some(l) => {
                    row.push(l.value.unwrap_or(f64::NAN) as f32);
                    None
                }
            };
            if let Some(gap) = gap {
                self.rows.clear();
                self.warm = 0;
                return Err(gap);
            }
        }
        self.rows.push_back(row);
        self.trim();
        Ok(())
    }

    /// Starts the window with warm-up rows (oldest first; rows of the wrong width are
    /// left out, and only the newest `window` are kept). Live rows push them out one by one.
    pub fn prefill(&mut self, rows: &[Vec<f32>]) {
        self.rows.clear();
        self.rows.extend(rows.iter().filter(|r| r.len() == self.names.len()).cloned());
        self.warm = self.rows.len();
        self.trim();
    }

    fn trim(&mut self) {
        while self.rows.len() > self.window {
            self.rows.pop_front();
            self.warm = self.warm.saturating_sub(1);
        }
        self.warm = self.warm.min(self.rows.len());
    }

    /// How many rows of the window are warm-up rows, not live ones.
    pub fn warm_rows(&self) -> usize {
        self.warm
    }

    /// The full window, oldest first; `None` until `window` rows in a row were taken.
    pub fn window(&self) -> Option<Vec<Vec<f32>>> {
        (self.rows.len() == self.window).then(|| self.rows.iter().cloned().collect())
    }

    pub fn filled(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_fills_with_good_rows_and_a_bad_input_empties_it() {
        // Given two inputs and a window of three rows
        let t0 = Instant::now();
        let ms = Duration::from_millis(100);
        let mut w = Windower::new(vec!["plc/a".into(), "plc/b".into()], 3, ms);
        assert_eq!(w.take_row(t0), Err(Gap::Missing("plc/a".into())));

        // When both inputs read good values for three rows
        for i in 0..3u32 {
            let now = t0 + ms * i;
            w.record(0, &Some(Value::Float(i as f64)), &Quality::Good, now);
            w.record(1, &Some(Value::Int(10)), &Quality::Good, now);
            w.take_row(now).unwrap();
        }
        // Then the window holds them oldest first
        assert_eq!(w.window(), Some(vec![vec![0.0, 10.0], vec![1.0, 10.0], vec![2.0, 10.0]]));

        // When one input goes bad, the row is refused and the window starts again
        w.record(1, &None, &Quality::Bad("timeout".into()), t0 + ms * 3);
        assert_eq!(w.take_row(t0 + ms * 3), Err(Gap::Bad("plc/b".into())));
        assert_eq!(w.filled(), 0);
        assert!(w.window().is_none());
    }

    #[test]
    fn a_reading_older_than_the_freshness_limit_is_stale() {
        let t0 = Instant::now();
        let mut w = Windower::new(vec!["plc/a".into()], 1, Duration::from_secs(1));
        w.record(0, &Some(Value::Float(1.0)), &Quality::Good, t0);
        assert!(w.take_row(t0 + Duration::from_secs(3)).is_ok());
        assert_eq!(w.take_row(t0 + Duration::from_secs(4)), Err(Gap::Stale("plc/a".into())));
    }

    #[test]
    fn text_values_are_not_numbers() {
        assert_eq!(numeric(&Some(Value::Text("x".into()))), None);
        assert_eq!(numeric(&Some(Value::Bool(true))), Some(1.0));
        assert_eq!(numeric(&Some(Value::Float(f64::NAN))), None);
    }

    #[test]
    fn warm_up_rows_fill_the_window_and_live_rows_push_them_out_one_by_one() {
        // Given a window of three rows started with four warm-up rows
        let t0 = Instant::now();
        let ms = Duration::from_millis(100);
        let mut w = Windower::new(vec!["plc/a".into()], 3, ms);
        w.prefill(&[vec![-1.0], vec![0.0], vec![1.0], vec![2.0]]);

        // Then the window is full at once with the newest three, all of them warm-up rows
        assert_eq!(w.window(), Some(vec![vec![0.0], vec![1.0], vec![2.0]]));
        assert_eq!(w.warm_rows(), 3);

        // When live rows come, each pushes out the oldest warm-up row
        for i in 0..3u32 {
            let now = t0 + ms * i;
            w.record(0, &Some(Value::Float(10.0 + i as f64)), &Quality::Good, now);
            w.take_row(now).unwrap();
            assert_eq!(w.warm_rows(), 2 - i as usize);
        }
        // Then the window holds live rows only
        assert_eq!(w.window(), Some(vec![vec![10.0], vec![11.0], vec![12.0]]));

        // And a gap right after a prefill drops the warm-up rows with the rest
        w.prefill(&[vec![1.0], vec![2.0], vec![3.0]]);
        assert_eq!(w.take_row(t0 + Duration::from_secs(60)), Err(Gap::Stale("plc/a".into())));
        assert_eq!((w.filled(), w.warm_rows()), (0, 0));
    }
}
