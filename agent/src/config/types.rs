//! Sections of the config file. Every field documents what it means; defaults are the
//! values a gateway should run with when the key is absent.

use std::path::PathBuf;
use std::time::Duration;

use edge_drivers::DeviceConfig;
use serde::{Deserialize, Serialize};

pub use crate::analytics::config::{CalendarConfig, ModelConfig};
pub use crate::commands::config::CommandsConfig;
pub use crate::store::config::StoreConfig;
pub use crate::uplink::config::MqttConfig;
pub use crate::web::config::WebConfig;

/// The whole config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub web: WebConfig,
    /// The PLCs and meters this gateway reads.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Commands from the ERP: whether writes are allowed, and to which tags.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// Local models (`[[models]]`): anomaly detection, quality soft sensors, remaining
    /// useful life. See `analytics::config`.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// The production calendar (`[calendar]`) the maintenance scheduler plans in.
    #[serde(default)]
    pub calendar: CalendarConfig,
    /// The in-memory history behind the status page's trends (`[history]`).
    #[serde(default)]
    pub history: crate::history::HistoryConfig,
    /// The stack light, relays and digital inputs (`[gpio]`).
    #[serde(default)]
    pub gpio: crate::gpio::config::GpioConfig,
    /// The Sparkplug B edge node (`[sparkplug]`), used with `mqtt.payload = "sparkplug"`.
    #[serde(default)]
    pub sparkplug: crate::sparkplug::config::SparkplugConfig,
}

/// `[gateway]`: who this gateway is and where it keeps its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// Unique id of this gateway within its site; part of every MQTT topic.
    pub id: String,
    /// The plant (site) this gateway belongs to; part of every MQTT topic.
    pub site: String,
    /// Area of the plant (ISA-95), for people reading the config.
    #[serde(default)]
    pub area: Option<String>,
    /// Directory for the store (outbox) and state. Must be writable by the agent.
    pub data_dir: PathBuf,
    /// How long a SIGTERM may take: stop polling, flush, publish what can be, say offline.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// `{prefix}/{site}/{gateway_id}`, the root of every topic this gateway uses.
    pub fn topic_root(&self) -> String {
        format!("{}/{}/{}", self.mqtt.prefix, self.gateway.site, self.gateway.id)
    }

    /// `mqtt.client_id`, else `edge-agent-{gateway.id}`: the one place this default is
    /// resolved (by [`Config::build`] and the uplink's build step, `Prepared::load`).
    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("edge-agent-{}", self.gateway.id))
    }
}
