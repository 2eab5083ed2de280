//! `[mqtt]`: the broker connection.
//!
//! [`MqttConfig::validate`] checks only the shape of the section (no I/O): the files named
//! here (CA, client certificate and key, password) are read and checked when the options
//! are built (`uplink::options`), with an error that names the key and the file.

use std::path::PathBuf;
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
    /// User name sent to the broker. The password comes from `password_file` or
    /// `password_env`, never from this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (one trailing newline is ignored). Readable by the agent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Name of the environment variable holding the password (e.g. set by systemd's
    /// `LoadCredential=` wrapper or an `EnvironmentFile=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `[mqtt.tls]`: connect over TLS (rustls). Absent: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Before the first connect, wait a uniformly random time in `[0, start_delay_max]` so
    /// that a plant-wide power return does not reconnect every gateway in the same second.
    /// `0s` disables it.
    #[serde(default = "default_start_delay_max", with = "humantime_serde")]
    pub start_delay_max: Duration,
    /// `[mqtt.failover]`: a second broker, used after `failover_after` failed connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverConfig>,
    /// Consecutive failed connects to the current broker before switching to the other one.
    #[serde(default = "default_failover_after")]
    pub failover_after: u32,
    /// Most historical (replayed) batches published per second after a reconnect; live
    /// batches are not counted and go first.
    #[serde(default = "default_replay_max_per_sec")]
    pub replay_max_per_sec: u32,
    /// The MQTT version spoken to the broker(s): `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// MQTT 5 only: how long the broker keeps this gateway's session (subscription and
    /// queued commands) after the connection is gone; the 3.1.1 session never expires.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// What is published: `"json"` (the default, docs/mqtt.md) or `"sparkplug"`
    /// (Sparkplug B 3.0 edge node, settings in `[sparkplug]`).
    #[serde(default)]
    pub payload: PayloadFormat,
}

/// `mqtt.payload`: the contract spoken on the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The JSON contract of docs/mqtt.md.
    #[default]
    Json,
    /// Sparkplug B 3.0 (protobuf) under `spBv1.0/{group_id}/…`.
    Sparkplug,
}

/// `mqtt.protocol`: which MQTT version the uplink speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1 (`rumqttc`), persistent session with `clean_session = false`.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5 (`rumqttc::v5`), `clean_start = false` with a session expiry interval.
    #[serde(rename = "5")]
    V5,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

/// `[mqtt.tls]`: server verification against a private CA, optional client certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) the broker's certificate must chain to. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file with this gateway's certificate (chain), for brokers that require client
    /// certificates. Together with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file with the private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Name the broker's certificate must be valid for, when it differs from `host`
    /// (connecting by IP address to a broker whose certificate names a DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// `[mqtt.failover]`: the other broker. Same client id, TLS and credentials as the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
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
fn default_start_delay_max() -> Duration {
    Duration::from_secs(10)
}
fn default_failover_after() -> u32 {
    3
}
fn default_replay_max_per_sec() -> u32 {
    50
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The longest session expiry MQTT 5 can express (a 4-byte number of seconds).
pub const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(u32::MAX as u64 - 1);

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            client_id: None,
            prefix: default_prefix(),
            keep_alive: default_keep_alive(),
            max_inflight: default_max_inflight(),
            username: None,
            password_file: None,
            password_env: None,
            tls: None,
            start_delay_max: default_start_delay_max(),
            failover: None,
            failover_after: default_failover_after(),
            replay_max_per_sec: default_replay_max_per_sec(),
            protocol: Protocol::default(),
            session_expiry: default_session_expiry(),
            payload: PayloadFormat::default(),
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
            issues.push(
                format!("{path}.prefix"),
                format!("{:?} is not a usable topic prefix: no wildcards, no leading or trailing '/'", self.prefix),
            );
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
        self.validate_auth(path, issues);
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), issues);
        }
        if self.start_delay_max > Duration::from_secs(600) {
            issues.push(format!("{path}.start_delay_max"), "must be at most 10m (0s disables it)");
        }
        if let Some(f) = &self.failover {
            if f.host.trim().is_empty() {
                issues.push(format!("{path}.failover.host"), "must not be empty");
            }
            if f.port == 0 {
                issues.push(format!("{path}.failover.port"), "must be 1–65535");
            }
            if f.host.trim() == self.host.trim() && f.port == self.port {
                issues.push(format!("{path}.failover"), "is the same broker as mqtt.host and mqtt.port");
            }
        }
        if !(1..=100).contains(&self.failover_after) {
            issues.push(format!("{path}.failover_after"), "must be between 1 and 100");
        }
        if !(1..=100_000).contains(&self.replay_max_per_sec) {
            issues.push(format!("{path}.replay_max_per_sec"), "must be between 1 and 100000");
        }
        // 0 would end the session with each connection; u32::MAX means "never expires",
        // which would let a decommissioned gateway's queue grow on the broker for ever.
        if self.session_expiry < Duration::from_secs(60) || self.session_expiry > MAX_SESSION_EXPIRY {
            issues.push(format!("{path}.session_expiry"), "must be between 1m and 136y (MQTT 5 only)");
        }
    }

    fn validate_auth(&self, path: &str, issues: &mut Issues) {
        if let Some(user) = &self.username {
            if user.is_empty() || user.len() > 65535 {
                issues.push(format!("{path}.username"), "must be 1–65535 characters");
            }
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            issues.push(format!("{path}.password_env"), "set either password_file or password_env, not both");
        }
        let has_password = self.password_file.is_some() || self.password_env.is_some();
        if has_password && self.username.is_none() {
            // MQTT 3.1.1 (§3.1.2.9): a password is only allowed with a user name.
            let key = if self.password_file.is_some() { "password_file" } else { "password_env" };
            issues.push(format!("{path}.{key}"), "needs mqtt.username (MQTT sends no password without a user name)");
        }
        if let Some(file) = &self.password_file {
            if file.as_os_str().is_empty() {
                issues.push(format!("{path}.password_file"), "must not be empty");
            }
        }
        if let Some(name) = &self.password_env {
            if name.is_empty() || name.contains(['=', '\0']) {
                issues.push(format!("{path}.password_env"), format!("{name:?} is not an environment variable name"));
            }
        }
    }
}

impl TlsConfig {
    fn validate(&self, path: &str, issues: &mut Issues) {
        match &self.ca_file {
            None => issues.push(
                format!("{path}.ca_file"),
                "required when [mqtt.tls] is present (PEM file of the CA that signed the broker's certificate)",
            ),
            Some(f) if f.as_os_str().is_empty() => issues.push(format!("{path}.ca_file"), "must not be empty"),
            Some(_) => {}
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => issues.push(format!("{path}.client_key_file"), "required with client_cert_file (set both or neither)"),
            (None, Some(_)) => issues.push(format!("{path}.client_cert_file"), "required with client_key_file (set both or neither)"),
            _ => {}
        }
        for (key, file) in [("client_cert_file", &self.client_cert_file), ("client_key_file", &self.client_key_file)] {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                issues.push(format!("{path}.{key}"), "must not be empty");
            }
        }
        if let Some(name) = &self.server_name {
            if name.trim().is_empty() {
                issues.push(format!("{path}.server_name"), "must not be empty");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(config: &MqttConfig) -> Vec<String> {
        let mut issues = Issues::default();
        config.validate("mqtt", &mut issues);
        issues.0.into_iter().map(|i| format!("{}: {}", i.path, i.message)).collect()
    }

    #[test]
    fn the_default_section_is_valid() {
        assert!(problems(&MqttConfig::default()).is_empty());
    }

    #[test]
    fn tls_needs_a_ca_file_and_client_cert_and_key_come_together() {
        let config =
            MqttConfig { tls: Some(TlsConfig { client_cert_file: Some("gw.pem".into()), ..Default::default() }), ..Default::default() };
        let p = problems(&config);
        assert!(p.iter().any(|p| p.starts_with("mqtt.tls.ca_file: required")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("mqtt.tls.client_key_file: required with client_cert_file")), "{p:?}");

        let config = MqttConfig {
            tls: Some(TlsConfig { ca_file: Some("ca.pem".into()), client_key_file: Some("gw.key".into()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(problems(&config), vec!["mqtt.tls.client_cert_file: required with client_key_file (set both or neither)"]);

        let config = MqttConfig {
            tls: Some(TlsConfig {
                ca_file: Some("ca.pem".into()),
                client_cert_file: Some("gw.pem".into()),
                client_key_file: Some("gw.key".into()),
                server_name: Some("broker.plant".into()),
            }),
            ..Default::default()
        };
        assert!(problems(&config).is_empty());
    }

    #[test]
    fn a_password_needs_a_user_name_and_only_one_source() {
        let config = MqttConfig { password_file: Some("pw".into()), password_env: Some("PW".into()), ..Default::default() };
        let p = problems(&config);
        assert!(p.iter().any(|p| p.starts_with("mqtt.password_env: set either")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("mqtt.password_file: needs mqtt.username")), "{p:?}");

        let config = MqttConfig { username: Some("gw".into()), password_env: Some("MQTT_PW".into()), ..Default::default() };
        assert!(problems(&config).is_empty());
    }

    #[test]
    fn failover_and_replay_bounds_are_checked() {
        let config = MqttConfig {
            failover: Some(FailoverConfig { host: "127.0.0.1".into(), port: 1883 }),
            failover_after: 0,
            replay_max_per_sec: 0,
            start_delay_max: Duration::from_secs(3600),
            ..Default::default()
        };
        let p = problems(&config);
        assert_eq!(
            p,
            vec![
                "mqtt.start_delay_max: must be at most 10m (0s disables it)",
                "mqtt.failover: is the same broker as mqtt.host and mqtt.port",
                "mqtt.failover_after: must be between 1 and 100",
                "mqtt.replay_max_per_sec: must be between 1 and 100000",
            ]
        );
    }

    #[test]
    fn the_protocol_defaults_to_3_1_1_and_5_is_accepted() {
        let c: MqttConfig = toml::from_str("").unwrap();
        assert_eq!(c.protocol, Protocol::V311);
        assert_eq!(c.session_expiry, Duration::from_secs(86_400));
        let c: MqttConfig = toml::from_str("protocol = \"5\"\nsession_expiry = \"2h\"").unwrap();
        assert_eq!(c.protocol, Protocol::V5);
        assert_eq!(c.session_expiry, Duration::from_secs(7200));
        assert!(problems(&c).is_empty());
        let c: MqttConfig = toml::from_str("protocol = \"3.1.1\"").unwrap();
        assert_eq!(c.protocol, Protocol::V311);
        assert_eq!(Protocol::V5.to_string(), "5");
    }

    #[test]
    fn an_unknown_protocol_is_refused_and_the_session_expiry_is_bounded() {
        let e = toml::from_str::<MqttConfig>("protocol = \"4\"").unwrap_err().to_string();
        assert!(e.contains("3.1.1") && e.contains("5"), "{e}");
        assert!(toml::from_str::<MqttConfig>("protocol = 5").is_err());
        let c = MqttConfig { session_expiry: Duration::from_secs(10), ..Default::default() };
        assert_eq!(problems(&c), vec!["mqtt.session_expiry: must be between 1m and 136y (MQTT 5 only)"]);
    }
}
