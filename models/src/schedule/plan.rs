//! Proposing a maintenance window per job (see the module documentation of `schedule`).

use super::calendar::Calendar;
use super::risk::RulEstimate;

/// One maintenance job: replace or repair one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub asset: String,
    pub rul: RulEstimate,
    /// Hours the work takes.
    pub duration: f64,
    /// People it needs for the whole duration.
    pub crew: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    /// Highest acceptable probability of a failure before the window starts (e.g. 0.1).
    pub max_risk: f64,
    /// Inside a planned stop, a start that clashes with other work is tried again this many
    /// hours later.
    pub step: f64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { max_risk: 0.1, step: 1.0 }
    }
}

/// A window the job fits in.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: f64,
    pub end: f64,
    /// The planned stop it falls in; `None`: production time (a shift).
    pub planned_stop: Option<String>,
    /// Probability that the asset fails before the window starts.
    pub failure_risk: f64,
}

/// What the scheduler proposes for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub asset: String,
    /// `None`: no window within the horizon fits the job (duration, crew).
    pub window: Option<Window>,
    /// The next window after the proposed one (a planned stop when there is one).
    pub next: Option<Window>,
    /// Probability of a failure before the next window starts (before the end of the
    /// horizon when there is none): what waiting would risk.
    pub risk_of_waiting: f64,
    /// Why this window, in words.
    pub reason: String,
}

/// Proposes a window for each job, most urgent (lowest `rul.lower`) first; each proposal
/// books its crew so that later jobs see what is left. Returns the proposals in job order.
pub fn propose(jobs: &[Job], calendar: &Calendar, opts: &PlanOptions) -> Vec<Proposal> {
    let mut cal = calendar.clone();
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| jobs[a].rul.lower.total_cmp(&jobs[b].rul.lower));
    let mut out: Vec<Option<Proposal>> = vec![None; jobs.len()];
    for i in order {
        let proposal = propose_one(&jobs[i], &cal, opts);
        if let Some(w) = &proposal.window {
            cal.book(w.start, w.end, jobs[i].crew);
        }
        out[i] = Some(proposal);
    }
    out.into_iter().flatten().collect()
}

fn propose_one(job: &Job, cal: &Calendar, opts: &PlanOptions) -> Proposal {
    let candidates = candidates(job, cal, opts);
    let acceptable = |w: &&Window| w.failure_risk <= opts.max_risk;
    let (chosen, reason) = if let Some(w) = candidates.iter().rfind(|w| w.planned_stop.is_some() && acceptable(w)) {
        (Some(w.clone()), format!("the last planned stop before the risk of failure exceeds {:.0} %", opts.max_risk * 100.0))
    } else if let Some(w) = candidates.iter().rfind(acceptable) {
        (
            Some(w.clone()),
            format!("no planned stop fits before the risk of failure exceeds {:.0} %: the last shift that does", opts.max_risk * 100.0),
        )
    } else if let Some(w) = candidates.first() {
        (Some(w.clone()), format!("the risk of failure is already above {:.0} %: the earliest window", opts.max_risk * 100.0))
    } else {
        (None, "no window within the horizon fits the job's duration and crew".to_string())
    };
    let next = chosen.as_ref().and_then(|c| {
        let later = || candidates.iter().filter(|w| w.start > c.start);
        later().find(|w| w.planned_stop.is_some()).or_else(|| later().next()).cloned()
    });
    let risk_of_waiting = match &next {
        Some(n) => n.failure_risk,
        None => job.rul.failure_probability_by(cal.horizon),
    };
    Proposal { asset: job.asset.clone(), window: chosen, next, risk_of_waiting, reason }
}

/// Every window the job fits in, by start: in each planned stop the first start that
/// fits, and at each shift start (production time) outside planned stops.
fn candidates(job: &Job, cal: &Calendar, opts: &PlanOptions) -> Vec<Window> {
    let step = if opts.step > 0.0 { opts.step } else { 1.0 };
    let risk = |t: f64| job.rul.failure_probability_by(t);
    let mut out = Vec::new();
    for stop in &cal.stops {
        let mut start = stop.start.max(0.0);
        while start + job.duration <= stop.end && start <= cal.horizon {
            if cal.fits(start, start + job.duration, job.crew) {
                out.push(Window { start, end: start + job.duration, planned_stop: Some(stop.name.clone()), failure_risk: risk(start) });
                break;
            }
            start += step;
        }
    }
    let mut starts: Vec<f64> = cal.shifts.iter().map(|s| s.start.max(0.0)).collect();
    if cal.shifts.is_empty() {
        starts.push(0.0);
    }
    starts.sort_by(f64::total_cmp);
    starts.dedup();
    for start in starts {
        let end = start + job.duration;
        let in_stop = cal.stops.iter().any(|s| start < s.end && end > s.start);
        if start <= cal.horizon && !in_stop && cal.fits(start, end, job.crew) {
            out.push(Window { start, end, planned_stop: None, failure_risk: risk(start) });
        }
    }
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

#[cfg(test)]
mod tests {
    use super::super::calendar::{PlannedStop, Shift};
    use super::*;

    /// Three eight-hour shifts a day for `days` days, `crew` fitters each, from now (t = 0
    /// is 06:00 on day 0).
    fn shifts(days: u32, crew: u32) -> Vec<Shift> {
        (0..days * 3).map(|i| Shift { start: 8.0 * i as f64, end: 8.0 * (i + 1) as f64, crew }).collect()
    }

    fn stop(name: &str, start: f64, hours: f64) -> PlannedStop {
        PlannedStop { name: name.into(), start, end: start + hours, crew: None }
    }

    fn job(asset: &str, value: f64, lower: f64, upper: f64) -> Job {
        Job { asset: asset.into(), rul: RulEstimate { value, lower, upper }, duration: 8.0, crew: 2 }
    }

    #[test]
    fn proposes_the_last_planned_stop_before_the_risk_gets_too_high() {
        // Given weekly stops on days 2, 9 and 16, and a bearing with about 14 days left
        let cal = Calendar {
            shifts: shifts(21, 3),
            stops: vec![stop("stop-a", 48.0, 12.0), stop("stop-b", 216.0, 12.0), stop("stop-c", 384.0, 12.0)],
            horizon: 21.0 * 24.0,
            booked: vec![],
        };
        let p = &propose(&[job("mill-bearing", 336.0, 280.0, 400.0)], &cal, &PlanOptions::default())[0];

        // Then the second stop is proposed (the third starts after the 10 % point of failure)
        let w = p.window.as_ref().expect("a window");
        assert_eq!(w.planned_stop.as_deref(), Some("stop-b"));
        assert_eq!((w.start, w.end), (216.0, 224.0));
        assert!(w.failure_risk < 0.01);
        // And waiting for the third stop would risk more than the limit
        assert_eq!(p.next.as_ref().and_then(|n| n.planned_stop.as_deref()), Some("stop-c"));
        assert!(p.risk_of_waiting > 0.1, "{}", p.risk_of_waiting);
    }

    #[test]
    fn without_an_acceptable_stop_it_proposes_the_last_safe_shift() {
        // Given a stop only after the asset will most likely have failed
        let cal = Calendar { shifts: shifts(10, 3), stops: vec![stop("late", 200.0, 24.0)], horizon: 240.0, booked: vec![] };
        let p = &propose(&[job("pump", 60.0, 40.0, 90.0)], &cal, &PlanOptions::default())[0];

        // Then a production-time window before the 10 % point is proposed
        let w = p.window.as_ref().expect("a window");
        assert!(w.planned_stop.is_none());
        assert!(w.start <= 40.0 && w.failure_risk <= 0.1, "{w:?}");
        assert!(p.reason.contains("no planned stop"));
    }

    #[test]
    fn an_asset_already_at_risk_gets_the_earliest_window() {
        let cal = Calendar { shifts: shifts(3, 3), stops: vec![], horizon: 72.0, booked: vec![] };
        // (with a 10 % limit the lower band edge is by definition safe; a 2 % limit is not)
        let p = &propose(&[job("pump", 2.0, 0.5, 5.0)], &cal, &PlanOptions { max_risk: 0.02, ..Default::default() })[0];
        assert_eq!(p.window.as_ref().map(|w| w.start), Some(0.0));
        assert!(p.reason.contains("already above"));
    }

    #[test]
    fn two_jobs_needing_the_whole_crew_do_not_share_a_stop_slot() {
        // Given one stop with a crew of four and two four-person jobs
        let cal = Calendar {
            shifts: vec![],
            stops: vec![PlannedStop { name: "stop".into(), start: 24.0, end: 48.0, crew: Some(4) }],
            horizon: 100.0,
            booked: vec![],
        };
        let jobs = [
            Job { asset: "a".into(), rul: RulEstimate { value: 500.0, lower: 400.0, upper: 600.0 }, duration: 8.0, crew: 4 },
            Job { asset: "b".into(), rul: RulEstimate { value: 300.0, lower: 200.0, upper: 400.0 }, duration: 8.0, crew: 4 },
        ];
        let p = propose(&jobs, &cal, &PlanOptions::default());

        // Then the more urgent one (b) starts first, and a follows when b is done
        let (a, b) = (p[0].window.clone().unwrap(), p[1].window.clone().unwrap());
        assert_eq!(b.start, 24.0);
        assert_eq!(a.start, 32.0);
        assert_eq!(p[0].asset, "a");
    }

    #[test]
    fn a_job_longer_than_every_window_gets_none() {
        let cal = Calendar { shifts: shifts(2, 3), stops: vec![stop("short", 10.0, 4.0)], horizon: 48.0, booked: vec![] };
        let p = &propose(&[Job { crew: 5, ..job("mill", 100.0, 80.0, 120.0) }], &cal, &PlanOptions::default())[0];
        assert!(p.window.is_none());
        assert!(p.reason.contains("no window"));
    }
}
