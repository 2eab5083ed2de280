//! The demo's warm-up: before the simulated mill is served, it runs through its own recent
//! past (instantly: a few hours of plant time take milliseconds), and each model's window
//! starts with the rows it would have taken from that past. The mill is then served from
//! where that past ends, so the warm-up rows and the live ones are one continuous history
//! of the same plant. Without it the models would show "Filling its window" for 16 min
//! (pump), 41 min (purity) and 4 h (bearing) at normal speed.
//!
//! The rows are marked (see [`crate::analytics::warmup`]): the model's state is `warm-up`
//! until live rows have pushed them all out, and meanwhile its outputs stay on the page.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use edge_drivers::sim::history::readings_at;
use edge_drivers::sim::sugar_mill::SugarMill;
use tracing::warn;

use crate::analytics::warmup::WarmUp;
use crate::config::Config;

/// Where the rows come from (the model's log line says so).
pub const SOURCE: &str = "simulated history of the demo's mill";

/// One model's rows: the plant-time offsets they are taken at, and the inputs they read.
struct Plan {
    model: usize,
    offsets: Vec<Duration>,
    /// (mill index, tag) per input.
    inputs: Vec<(usize, String)>,
}

/// Runs each mill through the recent past the models' windows need and sets each model's
/// [`WarmUp`]. `speed`: the demo's plant speed (the models' row intervals in `config` were
/// divided by it; their plant-time intervals are what the mill is sampled at). A model
/// whose artifact does not load, or whose inputs the mills do not have, starts empty.
pub fn prepare(config: &mut Config, speed: f64, mills: &mut [(SocketAddr, SugarMill)]) {
    let speed = if speed.is_finite() && speed > 1.0 { speed } else { 1.0 };
    let mut plans = Vec::new();
    for (index, cfg) in config.models.iter().enumerate() {
        let window = match crate::analytics::worker::load(cfg) {
            Ok(model) => model.manifest().window,
            Err(_) => continue, // the model's own thread reports it
        };
        let mut inputs = Vec::new();
        for input in &cfg.inputs {
            let mill = input.split_once('/').and_then(|(device, tag)| {
                let addr: SocketAddr = config.devices.iter().find(|d| d.name == device)?.address.as_deref()?.parse().ok()?;
                Some((mills.iter().position(|(a, _)| *a == addr)?, tag.to_string()))
            });
            match mill {
                Some(m) => inputs.push(m),
                None => {
                    warn!(model = %cfg.name, %input, "no simulated mill serves this input: the model's window fills from live readings");
                    break;
                }
            }
        }
        if inputs.len() != cfg.inputs.len() || window == 0 {
            continue;
        }
        let interval = cfg.row_interval.mul_f64(speed);
        plans.push(Plan { model: index, offsets: (0..window as u32).map(|k| interval * k).collect(), inputs });
    }
    // Every plan ends at the same instant (now): offsets count back from the longest span.
    let span = plans.iter().filter_map(|p| p.offsets.last().copied()).max().unwrap_or_default();
    let times: BTreeSet<Duration> = plans.iter().flat_map(|p| p.offsets.iter().map(|&o| span - o)).collect();
    let times: Vec<Duration> = times.into_iter().collect();
    let readings: Vec<Vec<BTreeMap<&'static str, f64>>> = mills.iter_mut().map(|(_, mill)| readings_at(mill, &times)).collect();
    let at: BTreeMap<Duration, usize> = times.iter().enumerate().map(|(i, &t)| (t, i)).collect();

    for plan in plans {
        let rows: Option<Vec<Vec<f32>>> = plan
            .offsets
            .iter()
            .rev()
            .map(|&o| {
                let i = at.get(&(span - o))?;
                plan.inputs.iter().map(|(mill, tag)| readings.get(*mill)?.get(*i)?.get(tag.as_str()).map(|&v| v as f32)).collect()
            })
            .collect();
        let cfg = &mut config.models[plan.model];
        match rows {
            Some(rows) => cfg.warm_up = Some(WarmUp { rows, source: SOURCE.into() }),
            None => {
                warn!(model = %cfg.name, "the simulated mill does not have every input of the model: its window fills from live readings")
            }
        }
    }
}
