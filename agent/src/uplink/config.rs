//! `[mqtt]`: the broker connection.

use std::time::Duration;

use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[mqtt]`: the broker the ERP listens on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqttConfig {
    /// Broker host name or IP address.
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// MQTT client id; defaults to `edge-agent-{gateway.id}`. Must be stable across
    /// restarts, since the broker keeps this gateway's session under it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// First level of every topic: `{prefix}/{site}/{gateway_id}/…`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Most QoS 1 publishes awaiting their PUBACK at once.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_prefix() -> String {
    "plant".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_inflight() -> u16 {
    32
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            client_id: None,
            prefix: default_prefix(),
            keep_alive: default_keep_alive(),
            max_inflight: default_max_inflight(),
        }
    }
}

impl MqttConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        if self.host.trim().is_empty() {
            issues.push(format!("{path}.host"), "must not be empty");
        }
        if self.port == 0 {
            issues.push(format!("{path}.port"), "must be 1–65535");
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#']) || self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            issues.push(format!("{path}.prefix"), format!("{:?} is not a usable topic prefix: no wildcards, no leading or trailing '/'", self.prefix));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 128 {
                issues.push(format!("{path}.client_id"), "must be 1–128 characters");
            }
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive > Duration::from_secs(65535) {
            issues.push(format!("{path}.keep_alive"), "must be between 5s and 65535s");
        }
        if !(1..=1000).contains(&self.max_inflight) {
            issues.push(format!("{path}.max_inflight"), "must be between 1 and 1000");
        }
    }
}
