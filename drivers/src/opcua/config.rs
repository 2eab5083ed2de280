//! The `[devices.opcua]` sub-table of an OPC-UA device and the OPC-UA checks of its tags.
//!
//! ```toml
//! [[devices]]
//! name = "press-3"
//! protocol = "opcua"
//! [devices.opcua]
//! endpoint = "opc.tcp://192.168.1.20:4840/"
//! security_policy = "Basic256Sha256"
//! security_mode = "SignAndEncrypt"
//! [[devices.tags]]
//! name = "speed"
//! node_id = "ns=2;s=Press3.Speed"
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use opcua::types::{NodeId, RelativePath, RelativePathElement};
use serde::{Deserialize, Serialize};

use crate::config::{DeviceConfig, TagConfig};
use crate::validate::Issues;

/// Message security policy of the secure channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SecurityPolicy {
    /// No signing, no encryption (only on an isolated network).
    #[default]
    None,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// The library's policy.
    pub fn to_opcua(self) -> opcua::crypto::SecurityPolicy {
        match self {
            SecurityPolicy::None => opcua::crypto::SecurityPolicy::None,
            SecurityPolicy::Basic256Sha256 => opcua::crypto::SecurityPolicy::Basic256Sha256,
            SecurityPolicy::Aes128Sha256RsaOaep => opcua::crypto::SecurityPolicy::Aes128Sha256RsaOaep,
            SecurityPolicy::Aes256Sha256RsaPss => opcua::crypto::SecurityPolicy::Aes256Sha256RsaPss,
        }
    }
}

/// Message security mode of the secure channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SecurityMode {
    #[default]
    None,
    /// Messages are signed (tamper-proof), not encrypted.
    Sign,
    /// Messages are signed and encrypted.
    SignAndEncrypt,
}

impl SecurityMode {
    pub fn to_opcua(self) -> opcua::types::MessageSecurityMode {
        match self {
            SecurityMode::None => opcua::types::MessageSecurityMode::None,
            SecurityMode::Sign => opcua::types::MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => opcua::types::MessageSecurityMode::SignAndEncrypt,
        }
    }
}

/// Who the agent says it is when it activates a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    #[default]
    Anonymous,
    /// `username` with a password from `password_file` or `password_env`.
    Username,
    /// An X.509 user certificate (`user_certificate`, `user_private_key`).
    Certificate,
}

/// `[devices.opcua]`: how to reach and talk to one OPC-UA server.
// No `deny_unknown_fields`: the agent's loader reports unknown keys (with every other
// problem) through serde_ignored; a serde error would stop at the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpcuaConfig {
    /// Endpoint URL, `opc.tcp://host:port/path`.
    pub endpoint: String,
    /// `None` (default), `Basic256Sha256`, `Aes128_Sha256_RsaOaep` or `Aes256_Sha256_RsaPss`.
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// `None` (default), `Sign` or `SignAndEncrypt`; must be `None` exactly when the
    /// policy is `None`.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// `anonymous` (default), `username` or `certificate`.
    #[serde(default)]
    pub identity: IdentityKind,
    /// For `identity = "username"`.
    #[serde(default)]
    pub username: Option<String>,
    /// For `identity = "username"`: a file holding the password (first line). The
    /// password is never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// For `identity = "username"`: the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// For `identity = "certificate"`: the user certificate (DER or PEM).
    #[serde(default)]
    pub user_certificate: Option<PathBuf>,
    /// For `identity = "certificate"`: its private key (PEM).
    #[serde(default)]
    pub user_private_key: Option<PathBuf>,
    /// Trust any server certificate without an operator's `edge-agent opcua trust`.
    /// Off by default; when on, the status page warns.
    #[serde(default)]
    pub auto_trust_server_certificate: bool,
    /// How often the server sends the changes of a subscription (default 500ms). A tag in
    /// a `poll_group` uses that group's interval instead.
    #[serde(default = "default_publishing_interval", with = "humantime_serde")]
    pub publishing_interval: Duration,
    /// How often the server samples each value (default: the interval of the tag's group,
    /// the publishing interval for tags without a `poll_group`). A tag's own
    /// `sampling_interval` wins. Resolved per tag when the device is built
    /// (`device::Monitoring`).
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// Changes the server keeps per item between two publishes (default 10).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Poll groups read with the Read service every interval instead of a subscription,
    /// for servers without subscriptions or values that need a fixed rate. `"*"` means
    /// every tag.
    #[serde(default)]
    pub poll_groups: Vec<String>,
    /// Limit on connecting (secure channel, session, subscriptions), default 10s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First wait before a reconnect (default 1s); it doubles up to `reconnect_max`,
    /// with jitter.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between two connection attempts (default 60s).
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long the server keeps the session alive without the agent (default 60s).
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for OpcuaConfig {
    /// An anonymous, unsecured connection to `endpoint` with every default.
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            security_policy: SecurityPolicy::None,
            security_mode: SecurityMode::None,
            identity: IdentityKind::Anonymous,
            username: None,
            password_file: None,
            password_env: None,
            user_certificate: None,
            user_private_key: None,
            auto_trust_server_certificate: false,
            publishing_interval: default_publishing_interval(),
            sampling_interval: None,
            queue_size: default_queue_size(),
            poll_groups: Vec::new(),
            connect_timeout: default_connect_timeout(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            session_timeout: default_session_timeout(),
        }
    }
}

fn default_publishing_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_queue_size() -> u32 {
    10
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(60)
}

impl OpcuaConfig {
    /// Whether poll group `group` (`None`: the device's default group) is read by
    /// polling rather than by a subscription.
    pub fn polls(&self, group: Option<&str>) -> bool {
        self.poll_groups.iter().any(|g| g == "*" || Some(g.as_str()) == group || (g == "default" && group.is_none()))
    }
}

/// Where a tag is in the server's address space.
#[derive(Debug, Clone, PartialEq)]
pub enum Address {
    Node(NodeId),
    /// A browse path from the Objects folder, resolved on every (re)connect.
    Path(RelativePath),
}

/// The parsed address of an OPC-UA tag (validate() has checked it).
pub fn tag_address(tag: &TagConfig) -> Result<Address, String> {
    match (&tag.node_id, &tag.browse_path) {
        (Some(n), None) => parse_node_id(n).map(Address::Node),
        (None, Some(p)) => parse_browse_path(p).map(Address::Path),
        (Some(_), Some(_)) => Err("set node_id or browse_path, not both".into()),
        (None, None) => Err("missing field `node_id` (or `browse_path`): an OPC-UA tag needs its node".into()),
    }
}

/// `ns=2;s=Name`, `ns=2;i=1001`, `ns=2;g=<guid>`, `ns=2;b=<base64>` (and `i=85` in ns 0).
pub fn parse_node_id(text: &str) -> Result<NodeId, String> {
    NodeId::from_str(text.trim())
        .map_err(|_| format!("{text:?} is not a NodeId: expected ns=<index>;i=<number>, ;s=<string>, ;g=<guid> or ;b=<base64>"))
}

/// `/2:Plant/2:Line1/2:Speed`: browse names from the Objects folder, each `ns:Name`.
pub fn parse_browse_path(text: &str) -> Result<RelativePath, String> {
    let path = if text.starts_with('/') || text.starts_with('.') { text.to_string() } else { format!("/{text}") };
    match RelativePath::from_str(&path, &RelativePathElement::default_node_resolver) {
        Ok(p) if p.elements.as_ref().is_some_and(|e| !e.is_empty()) => Ok(p),
        Ok(_) => Err(format!("{text:?} is an empty browse path")),
        Err(e) => Err(format!("{text:?} is not a browse path ({e:?}): expected /2:Folder/2:Variable")),
    }
}

/// The OPC-UA checks of one device (the shared ones are in [`DeviceConfig::validate`]).
pub(crate) fn validate_device(device: &DeviceConfig, path: &str, issues: &mut Issues) {
    for (key, set) in [
        ("address", device.address.is_some()),
        ("serial", device.serial.is_some()),
        ("max_registers_per_request", device.max_registers_per_request.is_some()),
        ("max_bits_per_request", device.max_bits_per_request.is_some()),
        ("backoff_after_failures", device.backoff_after_failures.is_some()),
        ("backoff_max", device.backoff_max.is_some()),
        ("write_multiple_only", device.write_multiple_only),
    ] {
        if set {
            issues.push(format!("{path}.{key}"), "only applies to Modbus devices; an OPC-UA device is set up in [devices.opcua]");
        }
    }
    let Some(ua) = &device.opcua else {
        issues.push(format!("{path}.opcua"), "is required for opcua: [devices.opcua] with at least endpoint = \"opc.tcp://host:4840/\"");
        return;
    };
    validate_opcua(ua, device, &format!("{path}.opcua"), issues);
    for (i, tag) in device.tags.iter().enumerate() {
        validate_tag(tag, &format!("{path}.tags[{i}]"), issues);
    }
}

fn validate_opcua(ua: &OpcuaConfig, device: &DeviceConfig, path: &str, issues: &mut Issues) {
    if !ua.endpoint.starts_with("opc.tcp://") || ua.endpoint.len() <= "opc.tcp://".len() {
        issues.push(
            format!("{path}.endpoint"),
            format!("{:?} is not an OPC-UA endpoint URL: expected opc.tcp://host:port/path", ua.endpoint),
        );
    }
    match (ua.security_policy, ua.security_mode) {
        (SecurityPolicy::None, SecurityMode::None) => {}
        (SecurityPolicy::None, mode) => {
            issues.push(format!("{path}.security_mode"), format!("{mode:?} needs a security_policy other than None"))
        }
        (policy, SecurityMode::None) => issues.push(
            format!("{path}.security_mode"),
            format!("security_policy {policy:?} needs security_mode = \"Sign\" or \"SignAndEncrypt\""),
        ),
        _ => {}
    }
    let username_keys =
        [("username", ua.username.is_some()), ("password_file", ua.password_file.is_some()), ("password_env", ua.password_env.is_some())];
    let cert_keys = [("user_certificate", ua.user_certificate.is_some()), ("user_private_key", ua.user_private_key.is_some())];
    match ua.identity {
        IdentityKind::Anonymous => {}
        IdentityKind::Username => {
            if ua.username.as_deref().is_none_or(str::is_empty) {
                issues.push(format!("{path}.username"), "is required with identity = \"username\"");
            }
            if ua.password_file.is_some() == ua.password_env.is_some() {
                issues.push(format!("{path}.password_file"), "identity = \"username\" needs exactly one of password_file or password_env");
            }
        }
        IdentityKind::Certificate => {
            for (key, set) in cert_keys {
                if !set {
                    issues.push(format!("{path}.{key}"), "is required with identity = \"certificate\"");
                }
            }
            if ua.security_policy == SecurityPolicy::None {
                issues.push(
                    format!("{path}.identity"),
                    "a certificate identity needs a security_policy other than None (the token is signed)",
                );
            }
        }
    }
    let (wrong, label) = match ua.identity {
        IdentityKind::Username => (&cert_keys[..], "certificate"),
        IdentityKind::Certificate => (&username_keys[..], "username"),
        IdentityKind::Anonymous => (&[][..], ""),
    };
    for (key, set) in wrong {
        if *set {
            issues.push(format!("{path}.{key}"), format!("only applies to identity = \"{label}\""));
        }
    }
    if ua.identity == IdentityKind::Anonymous {
        for (key, set) in username_keys.iter().chain(cert_keys.iter()) {
            if *set {
                issues.push(format!("{path}.{key}"), "does not apply to identity = \"anonymous\": set identity too");
            }
        }
    }
    if ua.publishing_interval < Duration::from_millis(10) {
        issues.push(format!("{path}.publishing_interval"), "must be at least 10ms");
    }
    if ua.queue_size == 0 {
        issues.push(format!("{path}.queue_size"), "must be at least 1");
    }
    if ua.connect_timeout < Duration::from_millis(100) {
        issues.push(format!("{path}.connect_timeout"), "must be at least 100ms");
    }
    if ua.reconnect_min < Duration::from_millis(10) {
        issues.push(format!("{path}.reconnect_min"), "must be at least 10ms");
    }
    if ua.reconnect_max < ua.reconnect_min {
        issues.push(format!("{path}.reconnect_max"), "must be at least reconnect_min");
    }
    if ua.session_timeout < Duration::from_secs(1) {
        issues.push(format!("{path}.session_timeout"), "must be at least 1s");
    }
    for (i, group) in ua.poll_groups.iter().enumerate() {
        if group != "*" && group != "default" && !device.poll_groups.contains_key(group) {
            issues.push(
                format!("{path}.poll_groups[{i}]"),
                format!("no poll group {group:?} in this device (use \"*\" for all tags, \"default\" for tags without a group)"),
            );
        }
    }
}

fn validate_tag(tag: &TagConfig, path: &str, issues: &mut Issues) {
    for (key, set) in [
        ("table", tag.table.is_some()),
        ("address", tag.address.is_some()),
        ("bit", tag.bit.is_some()),
        ("type", tag.data_type.is_some()),
        ("length", tag.length.is_some()),
        ("byte_swap", tag.byte_swap),
    ] {
        if set {
            issues.push(
                format!("{path}.{key}"),
                "only applies to Modbus tags; an OPC-UA tag has node_id or browse_path (its type comes from the server)",
            );
        }
    }
    match (&tag.node_id, &tag.browse_path) {
        (Some(n), None) => {
            if let Err(e) = parse_node_id(n) {
                issues.push(format!("{path}.node_id"), e);
            }
        }
        (None, Some(p)) => {
            if let Err(e) = parse_browse_path(p) {
                issues.push(format!("{path}.browse_path"), e);
            }
        }
        (Some(_), Some(_)) => issues.push(format!("{path}.browse_path"), "set node_id or browse_path, not both"),
        (None, None) => issues.push(path, "missing field `node_id` (or `browse_path`): an OPC-UA tag needs its node"),
    }
    if tag.heartbeat.is_some() {
        issues.push(format!("{path}.heartbeat"), "does not apply to OPC-UA: the server sends a value when it changes");
    }
    if tag.sampling_interval.is_some_and(|d| d < Duration::from_millis(1)) {
        issues.push(format!("{path}.sampling_interval"), "must be at least 1ms");
    }
    if tag.queue_size == Some(0) {
        issues.push(format!("{path}.queue_size"), "must be at least 1");
    }
}

/// Modbus devices must not carry OPC-UA keys.
pub(crate) fn reject_on_other_protocol(device: &DeviceConfig, path: &str, issues: &mut Issues) {
    if device.opcua.is_some() {
        issues.push(format!("{path}.opcua"), format!("only applies to protocol = \"opcua\", not {}", device.protocol.as_str()));
    }
    for (i, tag) in device.tags.iter().enumerate() {
        for (key, set) in [
            ("node_id", tag.node_id.is_some()),
            ("browse_path", tag.browse_path.is_some()),
            ("sampling_interval", tag.sampling_interval.is_some()),
            ("queue_size", tag.queue_size.is_some()),
        ] {
            if set {
                issues.push(format!("{path}.tags[{i}].{key}"), "only applies to OPC-UA tags");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn device(ua: OpcuaConfig, tags: Vec<TagConfig>) -> DeviceConfig {
        DeviceConfig { name: "press".into(), protocol: Protocol::Opcua, opcua: Some(ua), tags, ..Default::default() }
    }

    fn ua_tag(name: &str, node: &str) -> TagConfig {
        TagConfig { name: name.into(), table: None, address: None, node_id: Some(node.into()), ..Default::default() }
    }

    fn problems(d: &DeviceConfig) -> Vec<String> {
        let mut issues = Issues::default();
        d.validate("devices[0]", &mut issues);
        issues.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_plain_anonymous_device_with_node_ids_and_browse_paths_is_valid() {
        let mut by_path = ua_tag("b", "x");
        by_path.node_id = None;
        by_path.browse_path = Some("/2:Plant/2:Speed".into());
        let d = device(
            OpcuaConfig { endpoint: "opc.tcp://127.0.0.1:4840/".into(), ..Default::default() },
            vec![ua_tag("a", "ns=2;s=Line.Speed"), ua_tag("n", "ns=2;i=1001"), by_path],
        );
        assert_eq!(problems(&d), Vec::<String>::new());
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let mut both = ua_tag("both", "ns=2;i=1");
        both.browse_path = Some("/2:X".into());
        let mut modbus_keys = ua_tag("mb", "ns=2;i=2");
        modbus_keys.table = Some(crate::modbus::Table::Holding);
        let d = device(
            OpcuaConfig {
                endpoint: "http://x".into(),
                security_policy: SecurityPolicy::Basic256Sha256,
                identity: IdentityKind::Username,
                queue_size: 0,
                ..Default::default()
            },
            vec![ua_tag("bad", "ns=2;q=zzz"), both, modbus_keys],
        );
        let p = problems(&d).join("\n");
        for expected in [
            "devices[0].opcua.endpoint",
            "devices[0].opcua.security_mode",
            "devices[0].opcua.username",
            "devices[0].opcua.password_file",
            "devices[0].opcua.queue_size",
            "devices[0].tags[0].node_id",
            "devices[0].tags[1].browse_path",
            "devices[0].tags[2].table",
        ] {
            assert!(p.contains(expected), "missing {expected} in:\n{p}");
        }
    }

    #[test]
    fn an_opcua_device_without_its_table_is_refused() {
        let mut d = device(OpcuaConfig::default(), vec![ua_tag("a", "ns=2;i=1")]);
        d.opcua = None;
        assert!(problems(&d).iter().any(|p| p.starts_with("devices[0].opcua:")));
    }

    #[test]
    fn node_ids_of_every_kind_parse() {
        for text in ["ns=2;i=1001", "ns=2;s=Line.Speed", "ns=3;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63", "ns=2;b=AQID", "i=2258"] {
            assert!(parse_node_id(text).is_ok(), "{text}");
        }
    }
}
