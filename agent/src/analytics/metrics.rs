//! The models' families in `/metrics` (rendered by `web::metrics`), one sample per model
//! labelled `model`.

use std::fmt::Write as _;

use super::status::{CountersView, ModelView};
use crate::live::Snapshot;

/// (name after `edge_agent_`, type, help, value).
type Family = (&'static str, &'static str, &'static str, fn(&ModelView, &CountersView) -> u64);

const FAMILIES: [Family; 11] = [
    (
        "model_loaded",
        "gauge",
        "1 when the model's artifact loaded and its thread runs, 0 when it failed (disabled) or is loading.",
        |v, _| u64::from(v.state == "running" || v.state == super::warmup::WARM_UP_STATE),
    ),
    ("model_active", "gauge", "1 while the model's condition is raised: an anomaly, a quality deviation or a maintenance due.", |v, _| {
        u64::from(v.active)
    }),
    ("model_inferences_total", "counter", "Inferences the model ran.", |_, c| c.inferences),
    ("model_inference_errors_total", "counter", "Inferences that failed (shape, non-finite input, computation).", |_, c| {
        c.inference_errors
    }),
    ("model_inference_last_microseconds", "gauge", "Duration of the model's last inference.", |_, c| c.last_latency_us),
    ("model_inference_max_microseconds", "gauge", "Longest inference of the model since it started.", |_, c| c.max_latency_us),
    (
        "model_rows_skipped_total",
        "counter",
        "Rows not taken because an input was bad, missing or stale (the window starts again).",
        |_, c| c.rows_skipped,
    ),
    ("model_samples_dropped_total", "counter", "Readings (and lab values) not handed to the model because its queue was full.", |_, c| {
        c.samples_dropped
    }),
    ("model_events_total", "counter", "Events the model raised (model_loaded and model_failed included).", |_, c| c.events),
    ("model_panics_total", "counter", "Times the model's thread panicked; each time it was started again after a back-off.", |_, c| {
        c.panics
    }),
    ("model_outputs_dropped_total", "counter", "Events and prediction telemetry lost because the queue to the store was full.", |_, c| {
        c.events_dropped + c.telemetry_dropped
    }),
];

/// Number of families rendered here.
pub const FAMILY_COUNT: usize = FAMILIES.len();

/// Appends the models' families to `out`.
pub fn render(out: &mut String, s: &Snapshot) {
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP edge_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE edge_agent_{name} {kind}");
        for (model, view) in &s.models {
            // Model names are checked in the config (letters, digits, - and _): no escaping.
            let _ = writeln!(out, "edge_agent_{name}{{model=\"{model}\"}} {}", value(view, &view.counters));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_model_gets_one_sample_per_family() {
        // Given one running model with counters and one that failed
        let mut s = Snapshot::default();
        let counters = CountersView { inferences: 12, last_latency_us: 340, events: 2, ..Default::default() };
        s.models.insert(
            "pump".into(),
            ModelView { name: "pump".into(), state: "running".into(), active: true, counters, ..Default::default() },
        );
        s.models.insert("rul".into(), ModelView { name: "rul".into(), state: "failed".into(), ..Default::default() });

        // When rendered
        let mut out = String::new();
        render(&mut out, &s);

        // Then the values are there, labelled by model
        for line in [
            "edge_agent_model_loaded{model=\"pump\"} 1",
            "edge_agent_model_loaded{model=\"rul\"} 0",
            "edge_agent_model_active{model=\"pump\"} 1",
            "edge_agent_model_inferences_total{model=\"pump\"} 12",
            "edge_agent_model_inference_last_microseconds{model=\"pump\"} 340",
            "edge_agent_model_events_total{model=\"pump\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.lines().filter(|l| l.starts_with("# TYPE")).count(), FAMILY_COUNT);
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 2 * FAMILY_COUNT);
    }
}
