//! Topic names of the MQTT contract (README, "MQTT contract").

/// `{prefix}/{site}/{gateway}` plus the leaf topics.
#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(root: String) -> Self {
        Self { root }
    }

    /// Retained presence: `online` / `offline` (the Will).
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }

    pub fn telemetry(&self, device: &str) -> String {
        format!("{}/telemetry/{device}", self.root)
    }

    pub fn events(&self) -> String {
        format!("{}/events", self.root)
    }
}
