//! The built form of an OPC-UA device: what the driver, its sessions, subscriptions,
//! polled groups and writes run on.
//!
//! A [`DeviceConfig`] with its `[devices.opcua]` table is the config file's shape (flat,
//! with an `Option` for every key a file may leave out). [`OpcuaDevice::build`] turns a
//! *validated* one into plain values, resolving every default once, here: the driver
//! never reads a config `Option` to fall back on a default. The defaults themselves stay
//! next to their fields (`crate::config`, [`super::config`]), where the config reference
//! (`edge-agent config-reference`) documents them.
//!
//! An `Option` left in these types means "absent" (no clamp, no deadband, no poll
//! group), never "use the default".
//!
//! **Secrets.** The password of a user identity and the user's private key are read when
//! a session is activated ([`super::session::identity`]), not here: the built device
//! holds where they are ([`PasswordSource`], a key file's path), never the secret, so its
//! `Debug` and the logs cannot show one, and a password changed in its file is used on the
//! next connection attempt.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{tag_address, Address, IdentityKind, OpcuaConfig, SecurityMode, SecurityPolicy};
use crate::config::{BuildError, DeviceConfig, Protocol, TagConfig};

/// One OPC-UA device, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaDevice {
    pub name: String,
    /// The server, the channel's security and the agent's identity there.
    pub connection: Connection,
    /// Limit on each Read and Write (the device's `timeout`; the client's request
    /// timeout is at least 500ms of it).
    pub timeout: Duration,
    /// Limit on connecting (secure channel, session) and on building the subscriptions.
    pub connect_timeout: Duration,
    /// First wait before a reconnect; it doubles up to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The tags by the way they are read: one subscription or polled group per poll
    /// group, in the order of their first tag.
    pub groups: Vec<Group>,
    pub tags: Vec<OpcuaTag>,
}

/// How to reach one OPC-UA server, and who the agent is there. Also what the
/// commissioning tools (`edge-agent opcua browse`) connect with.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// `opc.tcp://host:port/path`.
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub identity: Identity,
    /// Trust any server certificate without an operator's `edge-agent opcua trust`.
    pub auto_trust_server_certificate: bool,
    /// How long the server keeps the session (and, as lifetime, the subscriptions)
    /// without the agent.
    pub session_timeout: Duration,
}

/// Who the agent says it is when it activates a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    /// A user name and where its password is read from (at every session activation).
    UserName {
        user: String,
        password: PasswordSource,
    },
    /// An X.509 user certificate (DER or PEM) and its private key (PEM), read at every
    /// session activation.
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Where the password of a user identity is: never the password itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The first line of this file (`password_file`).
    File(PathBuf),
    /// This environment variable (`password_env`).
    Env(String),
}

/// One tag of an OPC-UA device, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaTag {
    pub name: String,
    /// The node, or a browse path resolved on every (re)connect.
    pub address: Address,
    /// Engineering value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
    pub clamp_min: Option<f64>,
    pub clamp_max: Option<f64>,
    /// The server-side deadband, absolute in engineering units.
    pub deadband: Option<f64>,
    /// The server-side percent deadband (percent of the node's EURange).
    pub deadband_percent: Option<f64>,
    /// `None`: the device's default group.
    pub poll_group: Option<String>,
    /// The parameters of the tag's monitored item.
    pub monitoring: Monitoring,
}

/// The parameters of one tag's monitored item, every default resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitoring {
    /// The tag's `sampling_interval`, else the device's, else its group's interval.
    pub sampling_interval: Duration,
    /// The tag's `queue_size`, else the device's.
    pub queue_size: u32,
}

/// Tags that share an interval and a way of being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The device's poll group, `None` for the default one.
    pub name: Option<String>,
    /// Publishing interval of the subscription, or the polling interval.
    pub interval: Duration,
    /// Read with the Read service every interval instead of subscribing.
    pub poll: bool,
    /// Indices into the device's tags.
    pub tags: Vec<usize>,
}

impl OpcuaDevice {
    /// Builds a validated OPC-UA device (see the module doc). Fails only on what
    /// validation refuses: another protocol, no `[devices.opcua]`, an identity without
    /// its keys, a tag without a node (or with a node or path that does not parse).
    pub fn build(cfg: &DeviceConfig) -> Result<Self, BuildError> {
        let fail = |path: &str, message: String| BuildError { device: cfg.name.clone(), path: path.to_string(), message };
        if cfg.protocol != Protocol::Opcua {
            return Err(fail("protocol", format!("{} is not opcua", cfg.protocol.as_str())));
        }
        let ua = cfg.opcua.as_ref().ok_or_else(|| fail("opcua", "missing: an OPC-UA device needs [devices.opcua]".into()))?;
        let identity = Identity::build(ua).map_err(|(key, message)| fail(&format!("opcua.{key}"), message))?;
        // The interval of a group: a named group's own; the default group's is the
        // device's poll_interval when polled, the publishing interval when subscribed.
        let interval_of = |name: Option<&str>| match name {
            Some(_) => cfg.group_interval(name),
            None if ua.polls(None) => cfg.poll_interval,
            None => ua.publishing_interval,
        };
        let tags = cfg
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| OpcuaTag::build(t, ua, interval_of(t.poll_group.as_deref())).map_err(|m| fail(&format!("tags[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut groups: Vec<Group> = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            if let Some(g) = groups.iter_mut().find(|g| g.name == tag.poll_group) {
                g.tags.push(i);
                continue;
            }
            let name = tag.poll_group.clone();
            let (interval, poll) = (interval_of(name.as_deref()), ua.polls(name.as_deref()));
            groups.push(Group { name, interval, poll, tags: vec![i] });
        }
        Ok(Self {
            name: cfg.name.clone(),
            connection: Connection {
                endpoint: ua.endpoint.clone(),
                security_policy: ua.security_policy,
                security_mode: ua.security_mode,
                identity,
                auto_trust_server_certificate: ua.auto_trust_server_certificate,
                session_timeout: ua.session_timeout,
            },
            timeout: cfg.timeout,
            connect_timeout: ua.connect_timeout,
            reconnect_min: ua.reconnect_min,
            reconnect_max: ua.reconnect_max,
            groups,
            tags,
        })
    }
}

impl TryFrom<&DeviceConfig> for OpcuaDevice {
    type Error = BuildError;
    fn try_from(cfg: &DeviceConfig) -> Result<Self, BuildError> {
        Self::build(cfg)
    }
}

impl Identity {
    /// The identity of `[devices.opcua]`; the error names the key and why.
    fn build(ua: &OpcuaConfig) -> Result<Self, (&'static str, String)> {
        Ok(match ua.identity {
            IdentityKind::Anonymous => Identity::Anonymous,
            IdentityKind::Username => {
                let user = ua.username.clone().filter(|u| !u.is_empty());
                let user = user.ok_or(("username", "is required with identity = \"username\"".to_string()))?;
                let password = match (&ua.password_file, &ua.password_env) {
                    (Some(file), None) => PasswordSource::File(file.clone()),
                    (None, Some(var)) => PasswordSource::Env(var.clone()),
                    _ => {
                        return Err(("password_file", "identity = \"username\" needs exactly one of password_file or password_env".into()))
                    }
                };
                Identity::UserName { user, password }
            }
            IdentityKind::Certificate => {
                let cert = ua.user_certificate.clone().ok_or(("user_certificate", "is required with identity = \"certificate\"".into()))?;
                let key = ua.user_private_key.clone().ok_or(("user_private_key", "is required with identity = \"certificate\"".into()))?;
                Identity::Certificate { cert, key }
            }
        })
    }
}

impl OpcuaTag {
    /// Builds one validated tag of a device, `group_interval` being the interval of its
    /// group. The error says why the tag has no address.
    pub fn build(cfg: &TagConfig, ua: &OpcuaConfig, group_interval: Duration) -> Result<Self, String> {
        Ok(Self {
            name: cfg.name.clone(),
            address: tag_address(cfg)?,
            scale: cfg.scale,
            offset: cfg.offset,
            clamp_min: cfg.clamp_min,
            clamp_max: cfg.clamp_max,
            deadband: cfg.deadband,
            deadband_percent: cfg.deadband_percent,
            poll_group: cfg.poll_group.clone(),
            monitoring: Monitoring {
                sampling_interval: cfg.sampling_interval.or(ua.sampling_interval).unwrap_or(group_interval),
                queue_size: cfg.queue_size.unwrap_or(ua.queue_size),
            },
        })
    }

    /// Whether scale and offset leave the raw value as it is.
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// Builds every OPC-UA device of `devices` (the other protocols are left out), in config
/// order.
pub fn build_opcua(devices: &[DeviceConfig]) -> Result<Vec<OpcuaDevice>, BuildError> {
    devices.iter().filter(|d| d.protocol == Protocol::Opcua).map(OpcuaDevice::build).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Interval;

    fn tag(name: &str, group: Option<&str>) -> TagConfig {
        TagConfig {
            name: name.into(),
            table: None,
            address: None,
            node_id: Some("ns=2;i=1".into()),
            poll_group: group.map(Into::into),
            ..Default::default()
        }
    }

    fn device(ua: OpcuaConfig, tags: Vec<TagConfig>) -> DeviceConfig {
        DeviceConfig {
            name: "press".into(),
            protocol: Protocol::Opcua,
            opcua: Some(OpcuaConfig { endpoint: "opc.tcp://127.0.0.1:4840/".into(), ..ua }),
            tags,
            ..Default::default()
        }
    }

    #[test]
    fn a_device_that_leaves_everything_out_is_built_with_the_documented_defaults() {
        // Given an anonymous device that sets nothing but its endpoint, with one tag
        let cfg = device(OpcuaConfig::default(), vec![tag("speed", None)]);

        // When it is built
        let d = OpcuaDevice::build(&cfg).unwrap();

        // Then the connection and the timings have their documented defaults
        assert_eq!(
            d.connection,
            Connection {
                endpoint: "opc.tcp://127.0.0.1:4840/".into(),
                security_policy: SecurityPolicy::None,
                security_mode: SecurityMode::None,
                identity: Identity::Anonymous,
                auto_trust_server_certificate: false,
                session_timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(d.timeout, Duration::from_secs(1));
        assert_eq!(
            (d.connect_timeout, d.reconnect_min, d.reconnect_max),
            (Duration::from_secs(10), Duration::from_secs(1), Duration::from_secs(60))
        );
        // And the tag is subscribed at the publishing interval (500ms), sampled at it, with a queue of 10
        assert_eq!(d.groups, vec![Group { name: None, interval: Duration::from_millis(500), poll: false, tags: vec![0] }]);
        assert_eq!(d.tags[0].monitoring, Monitoring { sampling_interval: Duration::from_millis(500), queue_size: 10 });
        assert_eq!(d.tags[0].address, Address::Node(opcua::types::NodeId::new(2, 1u32)));
    }

    #[test]
    fn tags_are_grouped_by_poll_group_and_polled_groups_are_marked() {
        // Given tags in the default group and in a polled group of 10s
        let mut cfg = device(
            OpcuaConfig { poll_groups: vec!["slow".into()], ..Default::default() },
            vec![tag("a", None), tag("b", Some("slow")), tag("c", None)],
        );
        cfg.poll_groups.insert("slow".into(), Interval(Duration::from_secs(10)));

        // When the device is built
        let groups = OpcuaDevice::build(&cfg).unwrap().groups;

        // Then the default group is subscribed at the publishing interval, the slow one polled every 10s
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].tags.clone(), groups[0].poll, groups[0].interval),
            (vec![0, 2], false, OpcuaConfig::default().publishing_interval)
        );
        assert_eq!((groups[1].tags.clone(), groups[1].poll, groups[1].interval), (vec![1], true, Duration::from_secs(10)));
    }

    #[test]
    fn a_polled_default_group_runs_at_the_device_poll_interval() {
        // Given every tag polled ("*") on a device polled every 2s
        let mut cfg = device(OpcuaConfig { poll_groups: vec!["*".into()], ..Default::default() }, vec![tag("a", None)]);
        cfg.poll_interval = Duration::from_secs(2);

        // When it is built, Then the default group is polled every 2s and its tag sampled at that
        let d = OpcuaDevice::build(&cfg).unwrap();
        assert_eq!((d.groups[0].poll, d.groups[0].interval), (true, Duration::from_secs(2)));
        assert_eq!(d.tags[0].monitoring.sampling_interval, Duration::from_secs(2));
    }

    #[test]
    fn each_tag_samples_at_its_own_then_the_device_then_the_group_interval() {
        // Given a device with a tag that sets its own sampling interval and queue, one that sets none, and one in a poll group
        let tags = vec![
            tag("a", None),
            TagConfig { sampling_interval: Some(Duration::from_millis(50)), queue_size: Some(3), ..tag("b", None) },
            tag("c", Some("slow")),
        ];
        let mut plain = device(OpcuaConfig::default(), tags.clone());
        plain.poll_groups.insert("slow".into(), Interval(Duration::from_secs(10)));

        // When it is built without a device sampling interval
        let m: Vec<Monitoring> = OpcuaDevice::build(&plain).unwrap().tags.iter().map(|t| t.monitoring).collect();
        // Then a tag samples at its own interval, else at its group's; its queue is its own, else the device's
        let publishing = OpcuaConfig::default().publishing_interval;
        assert_eq!((m[0].sampling_interval, m[0].queue_size), (publishing, 10));
        assert_eq!((m[1].sampling_interval, m[1].queue_size), (Duration::from_millis(50), 3));
        assert_eq!(m[2].sampling_interval, Duration::from_secs(10));

        // And with a device sampling interval, the tags without their own take it
        let mut set =
            device(OpcuaConfig { sampling_interval: Some(Duration::from_millis(200)), queue_size: 7, ..Default::default() }, tags);
        set.poll_groups = plain.poll_groups.clone();
        let got: Vec<(Duration, u32)> =
            OpcuaDevice::build(&set).unwrap().tags.iter().map(|t| (t.monitoring.sampling_interval, t.monitoring.queue_size)).collect();
        assert_eq!(got, vec![(Duration::from_millis(200), 7), (Duration::from_millis(50), 3), (Duration::from_millis(200), 7)]);
    }

    #[test]
    fn each_identity_is_built_with_where_its_secret_is_not_the_secret() {
        // Given a password from a file, a password from the environment, and a user certificate
        let user = |file: Option<&str>, env: Option<&str>| OpcuaConfig {
            identity: IdentityKind::Username,
            username: Some("operator".into()),
            password_file: file.map(PathBuf::from),
            password_env: env.map(Into::into),
            ..Default::default()
        };
        let cert = OpcuaConfig {
            security_policy: SecurityPolicy::Basic256Sha256,
            security_mode: SecurityMode::Sign,
            identity: IdentityKind::Certificate,
            user_certificate: Some("/etc/edge/user.der".into()),
            user_private_key: Some("/etc/edge/user.pem".into()),
            ..Default::default()
        };
        let identity = |ua: OpcuaConfig| OpcuaDevice::build(&device(ua, vec![tag("a", None)])).map(|d| d.connection.identity);

        // When they are built, Then each names its source
        assert_eq!(
            identity(user(Some("/run/secrets/ua"), None)).unwrap(),
            Identity::UserName { user: "operator".into(), password: PasswordSource::File("/run/secrets/ua".into()) }
        );
        assert_eq!(
            identity(user(None, Some("UA_PASSWORD"))).unwrap(),
            Identity::UserName { user: "operator".into(), password: PasswordSource::Env("UA_PASSWORD".into()) }
        );
        assert_eq!(
            identity(cert.clone()).unwrap(),
            Identity::Certificate { cert: "/etc/edge/user.der".into(), key: "/etc/edge/user.pem".into() }
        );
        assert_eq!(identity(OpcuaConfig::default()).unwrap(), Identity::Anonymous);

        // And what validation refuses is not built: no password source, or a certificate without its key
        assert_eq!(identity(user(None, None)).unwrap_err().path, "opcua.password_file");
        assert_eq!(identity(OpcuaConfig { user_private_key: None, ..cert }).unwrap_err().path, "opcua.user_private_key");
    }

    #[test]
    fn every_device_that_passes_validation_builds() {
        // Given a valid device with a browse path, a deadband and a username identity
        let mut by_path = tag("b", None);
        by_path.node_id = None;
        by_path.browse_path = Some("/2:Plant/2:Speed".into());
        let ua = OpcuaConfig {
            identity: IdentityKind::Username,
            username: Some("operator".into()),
            password_env: Some("UA_PASSWORD".into()),
            ..Default::default()
        };
        let cfg = device(ua, vec![TagConfig { deadband: Some(0.5), scale: 0.1, ..tag("a", None) }, by_path]);
        let mut issues = crate::validate::Issues::default();
        cfg.validate("devices[0]", &mut issues);
        assert!(issues.0.is_empty(), "{:?}", issues.0);

        // When it is built, Then the tags keep their scaling and deadband, and the path is parsed
        let d = OpcuaDevice::build(&cfg).unwrap();
        assert_eq!((d.tags[0].scale, d.tags[0].deadband), (0.1, Some(0.5)));
        assert!(matches!(&d.tags[1].address, Address::Path(_)));
    }

    #[test]
    fn an_unvalidated_device_is_not_built_and_the_error_names_the_key() {
        // Given devices validation would refuse: no [devices.opcua], a tag without a node, a Modbus device
        let mut no_table = device(OpcuaConfig::default(), vec![tag("a", None)]);
        no_table.opcua = None;
        let no_node = device(OpcuaConfig::default(), vec![tag("a", None), TagConfig { node_id: None, ..tag("b", None) }]);
        let modbus = DeviceConfig { name: "m".into(), ..DeviceConfig::default() };

        // When they are built, Then each error names the device and the key
        let e = OpcuaDevice::build(&no_table).unwrap_err();
        assert_eq!((e.device.as_str(), e.path.as_str()), ("press", "opcua"));
        assert_eq!(OpcuaDevice::build(&no_node).unwrap_err().path, "tags[1]");
        assert_eq!(OpcuaDevice::build(&modbus).unwrap_err().path, "protocol");
        // And build_opcua leaves the Modbus device out
        assert_eq!(build_opcua(&[modbus, device(OpcuaConfig::default(), vec![tag("a", None)])]).unwrap().len(), 1);
    }
}
