//! Warm-up rows: a model's window filled at start from history the agent did not read
//! live. Only `edge-agent demo` sets them, from its simulated plant's own recent past, so
//! a newcomer sees the models' outputs within seconds instead of after 16 minutes to 4
//! hours. A real plant's agent never invents history: the config file cannot set them.
//!
//! While a window still holds warm-up rows, the model's `state` is `warm-up` and its
//! outputs are shown on the status page only: they are not published as telemetry and
//! raise no events, so nothing leaves the gateway that was not read from a PLC.

/// The rows a model's window starts with, oldest first, in the model's input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WarmUp {
    pub rows: Vec<Vec<f32>>,
    /// Where they come from, for the log (e.g. "simulated history").
    pub source: String,
}

/// The model's `state` while its window holds warm-up rows.
pub const WARM_UP_STATE: &str = "warm-up";
