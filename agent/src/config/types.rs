//! Sections of the config file. Every field documents what it means; defaults are the
//! values a gateway should run with when the key is absent.

use std::path::PathBuf;
use std::time::Duration;

use edge_drivers::DeviceConfig;
use serde::{Deserialize, Serialize};

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

/// `[store]`: the outbox every sample passes through before it is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    /// How often buffered samples are written and flushed to disk as batches. This is the
    /// durability window: on a power cut, samples younger than this may be lost; anything
    /// older was flushed and will be delivered.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// A device's batch is cut early when it reaches this many samples.
    #[serde(default = "default_max_batch_samples")]
    pub max_batch_samples: usize,
}

/// `[web]`: the local status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on. Only loopback addresses are accepted until the page has
    /// authentication.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
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
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_batch_samples() -> usize {
    1000
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
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

impl Default for StoreConfig {
    fn default() -> Self {
        Self { flush_interval: default_flush_interval(), max_batch_samples: default_max_batch_samples() }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self { enabled: true, listen: default_listen() }
    }
}

impl Config {
    /// `{prefix}/{site}/{gateway_id}`, the root of every topic this gateway uses.
    pub fn topic_root(&self) -> String {
        format!("{}/{}/{}", self.mqtt.prefix, self.gateway.site, self.gateway.id)
    }

    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("edge-agent-{}", self.gateway.id))
    }
}
