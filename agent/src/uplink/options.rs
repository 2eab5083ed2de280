//! Building rumqttc's options from `[mqtt]`: the broker(s), TLS, credentials, the Will.
//!
//! The files the section names (CA, client certificate and key, password) are read and
//! checked here, once, when the uplink starts: a problem is reported with the key, the
//! file and what is wrong with it (`mqtt.tls.ca_file = "/etc/edge/ca.pem": no PEM
//! certificate in it …`). [`check`] does the same without starting anything.
//!
//! Connection errors are turned into messages a plant engineer can act on by
//! [`Prepared::explain`] (wrong CA, name mismatch, refused login, …).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5ReturnCode, LastWill as V5LastWill};
use rumqttc::{ConnectReturnCode, ConnectionError, LastWill, MqttOptions, QoS, TlsConfiguration, TlsError, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::config::{PayloadFormat, Protocol};
use super::topics::Topics;
use crate::config::Config;
use crate::payload;

/// Largest MQTT packet sent or accepted (a full batch of 1000 samples is ~100 KiB).
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// What a connect timeout means (the timeout is `CONNECT_TIMEOUT_S` in `session`).
const NO_CONNECTION: &str = "no connection within 10 s (network, firewall or broker down)";

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why the options cannot be built. Each message names the config key and, for files,
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("mqtt.{key} = {:?}: cannot read the file: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mqtt.{key} = {:?}: {problem}", path.display())]
    File { key: &'static str, path: PathBuf, problem: String },
    #[error("mqtt.password_env = {name:?}: {problem}")]
    Env { name: String, problem: String },
    #[error("mqtt.{key}: {problem}")]
    Config { key: &'static str, problem: String },
}

/// Everything the options of either broker are made of, files already loaded.
pub struct Prepared {
    client_id: String,
    keep_alive: Duration,
    max_inflight: u16,
    will_topic: String,
    credentials: Option<(String, String)>,
    tls: Option<Arc<ClientConfig>>,
    /// The primary broker, then the failover one if configured.
    pub brokers: Vec<Broker>,
    /// `mqtt.protocol`: which of [`Prepared::options`] / [`Prepared::options_v5`] is used.
    pub protocol: Protocol,
    session_expiry: Duration,
    /// `mqtt.payload`: a Sparkplug edge node connects with a clean session (Sparkplug 3.0
    /// requires it; the outbox, not the broker, keeps what was not delivered).
    payload: PayloadFormat,
    /// For [`Prepared::explain`].
    username: Option<String>,
    password_source: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    server_name: Option<String>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("Prepared")
            .field("client_id", &self.client_id)
            .field("brokers", &self.brokers)
            .field("username", &self.username)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads and checks every file `[mqtt]` names, as the uplink will at start.
pub fn check(config: &Config) -> Result<(), OptionsError> {
    Prepared::load(config).map(|_| ())
}

impl Prepared {
    /// `[mqtt]`'s build step: every default resolved (the client id from the gateway id),
    /// the files and the password read (from the process environment for `password_env`).
    /// Run by `check-config` and at each start of the uplink task, so that a renewed
    /// certificate or password file is read again on a restart.
    pub fn load(config: &Config) -> Result<Self, OptionsError> {
        Self::load_with_env(config, |name| std::env::var_os(name))
    }

    /// [`Prepared::load`] with the environment given as a function (for tests).
    pub fn load_with_env(config: &Config, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, OptionsError> {
        let mqtt = &config.mqtt;
        let (password, password_source) = match (&mqtt.password_file, &mqtt.password_env) {
            (Some(path), _) => (Some(read_password_file(path)?), Some(format!("mqtt.password_file ({})", path.display()))),
            (None, Some(name)) => {
                (Some(read_password_env(name, &env)?), Some(format!("the environment variable {name} (mqtt.password_env)")))
            }
            (None, None) => (None, None),
        };
        let credentials = match (&mqtt.username, password) {
            (Some(user), password) => Some((user.clone(), password.unwrap_or_default())),
            (None, Some(_)) => {
                return Err(OptionsError::Config {
                    key: "username",
                    problem: "required with a password (password_file or password_env)".into(),
                })
            }
            (None, None) => None,
        };
        let tls = mqtt.tls.as_ref().map(tls_config).transpose()?;
        let mut brokers = vec![Broker { host: mqtt.host.clone(), port: mqtt.port }];
        if let Some(f) = &mqtt.failover {
            brokers.push(Broker { host: f.host.clone(), port: f.port });
        }
        Ok(Self {
            client_id: config.client_id(),
            keep_alive: mqtt.keep_alive,
            max_inflight: mqtt.max_inflight,
            will_topic: Topics::new(config.topic_root()).status(),
            credentials,
            tls,
            brokers,
            protocol: mqtt.protocol,
            session_expiry: mqtt.session_expiry,
            payload: mqtt.payload,
            username: mqtt.username.clone(),
            password_source,
            ca_file: mqtt.tls.as_ref().and_then(|t| t.ca_file.clone()),
            client_cert_file: mqtt.tls.as_ref().and_then(|t| t.client_cert_file.clone()),
            server_name: mqtt.tls.as_ref().and_then(|t| t.server_name.clone()),
        })
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// rumqttc's options for `broker`: persistent session, window, packet size, TLS,
    /// credentials and the retained `offline` Will.
    pub fn options(&self, broker: &Broker) -> MqttOptions {
        let mut opts = MqttOptions::new(self.client_id.clone(), broker.host.clone(), broker.port);
        opts.set_keep_alive(self.keep_alive)
            // Keep the broker-side session (and queued commands) across reconnects; not for
            // a Sparkplug edge node, which must start each session clean.
            .set_clean_session(self.payload == PayloadFormat::Sparkplug)
            .set_inflight(self.max_inflight)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                self.will_topic.clone(),
                serde_json::to_vec(&payload::status("offline")).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some((user, password)) = &self.credentials {
            opts.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        opts
    }

    /// `rumqttc::v5`'s options for `broker`: the same as [`Prepared::options`], with the
    /// MQTT 5 form of the persistent session: `clean_start = false` and a session expiry
    /// interval (`mqtt.session_expiry`), without which an MQTT 5 broker ends the session
    /// when the connection closes. The window is an upper limit here: the broker's
    /// `Receive Maximum` (CONNACK) may lower it.
    pub fn options_v5(&self, broker: &Broker) -> rumqttc::v5::MqttOptions {
        let mut opts = rumqttc::v5::MqttOptions::new(self.client_id.clone(), broker.host.clone(), broker.port);
        let expiry = u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX - 1);
        let sparkplug = self.payload == PayloadFormat::Sparkplug;
        opts.set_keep_alive(self.keep_alive)
            .set_clean_start(sparkplug)
            .set_session_expiry_interval(Some(if sparkplug { 0 } else { expiry }))
            .set_outgoing_inflight_upper_limit(self.max_inflight)
            .set_max_packet_size(Some(MAX_PACKET as u32))
            .set_last_will(V5LastWill::new(
                self.will_topic.clone(),
                serde_json::to_vec(&payload::status("offline")).unwrap_or_default(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
        if let Some((user, password)) = &self.credentials {
            opts.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        opts
    }

    /// A connection error as a sentence that says what to check.
    pub fn explain(&self, broker: &Broker, error: &ConnectionError) -> String {
        let why = match error {
            ConnectionError::ConnectionRefused(code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized)) => {
                self.explain_login(&format!("{code:?}"))
            }
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => self.explain_client_id(),
            ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
            ConnectionError::Tls(e) => self.explain_tls_error(broker, e),
            ConnectionError::Io(e) => self.explain_io(broker, e),
            ConnectionError::NetworkTimeout => NO_CONNECTION.into(),
            other => other.to_string(),
        };
        format!("{broker}: {why}")
    }

    /// [`Prepared::explain`] for an MQTT 5 connection error (its refusal codes are the
    /// reason codes of MQTT 5; TLS and I/O errors are the same types as with 3.1.1).
    pub fn explain_v5(&self, broker: &Broker, error: &rumqttc::v5::ConnectionError) -> String {
        use rumqttc::v5::ConnectionError as E;
        let why = match error {
            E::ConnectionRefused(
                code @ (V5ReturnCode::BadUserNamePassword | V5ReturnCode::NotAuthorized | V5ReturnCode::BadAuthenticationMethod),
            ) => self.explain_login(&format!("{code:?}")),
            E::ConnectionRefused(V5ReturnCode::BadClientId | V5ReturnCode::ClientIdentifierNotValid) => self.explain_client_id(),
            E::ConnectionRefused(code @ (V5ReturnCode::RefusedProtocolVersion | V5ReturnCode::UnsupportedProtocolVersion)) => {
                format!("the broker refused the connection ({code:?}): it does not speak MQTT 5; set mqtt.protocol = \"3.1.1\"")
            }
            E::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
            E::Tls(e) => self.explain_tls_error(broker, e),
            E::Io(e) => self.explain_io(broker, e),
            E::Timeout(_) => NO_CONNECTION.into(),
            other => other.to_string(),
        };
        format!("{broker}: {why}")
    }

    fn explain_login(&self, code: &str) -> String {
        match (&self.username, &self.password_source) {
            (Some(user), Some(source)) => format!(
                "the broker refused the login ({code}): check mqtt.username = {user:?} and the password in {source}"
            ),
            (Some(user), None) => format!("the broker refused the login ({code}) of mqtt.username = {user:?} without a password: set mqtt.password_file or mqtt.password_env"),
            (None, _) => format!("the broker refused the connection ({code}): it needs a login; set mqtt.username and mqtt.password_file or mqtt.password_env"),
        }
    }

    fn explain_client_id(&self) -> String {
        format!("the broker refused the client id {:?} (mqtt.client_id)", self.client_id)
    }

    fn explain_tls_error(&self, broker: &Broker, e: &TlsError) -> String {
        match e {
            TlsError::TLS(e) => self.explain_tls(broker, e),
            TlsError::Io(e) => self.explain_io(broker, e),
            e => format!("TLS: {e}"),
        }
    }

    fn explain_io(&self, broker: &Broker, e: &io::Error) -> String {
        match rustls_error(e) {
            Some(tls) => self.explain_tls(broker, tls),
            None if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connection refused (is the broker running and listening on this port?)".into()
            }
            None if e.kind() == io::ErrorKind::UnexpectedEof && !self.uses_tls() => {
                format!("the broker closed the connection during the MQTT handshake ({e}); if this port is a TLS listener, configure [mqtt.tls]")
            }
            None => format!("{e}"),
        }
    }

    fn explain_tls(&self, broker: &Broker, e: &rustls::Error) -> String {
        let ca = self.ca_file.as_ref().map_or_else(|| "mqtt.tls.ca_file".to_string(), |p| format!("mqtt.tls.ca_file ({})", p.display()));
        match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                format!("TLS: the broker's certificate is not signed by the CA in {ca} ({e})")
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
                let name = self.server_name.as_deref().unwrap_or(&broker.host);
                format!("TLS: the broker's certificate is not valid for the name {name:?} ({e}); connect by a name or address in its certificate, or set mqtt.tls.server_name")
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => format!("TLS: the broker's certificate is outside its validity period; check it and this gateway's clock ({e})"),
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                "TLS: the broker requires a client certificate: set mqtt.tls.client_cert_file and mqtt.tls.client_key_file".into()
            }
            rustls::Error::AlertReceived(
                alert @ (rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateUnknown
                | rustls::AlertDescription::CertificateExpired
                | rustls::AlertDescription::CertificateRevoked
                | rustls::AlertDescription::UnsupportedCertificate
                | rustls::AlertDescription::AccessDenied),
            ) => match &self.client_cert_file {
                Some(cert) => format!(
                    "TLS: the broker rejected this gateway's client certificate mqtt.tls.client_cert_file ({}) ({alert:?})",
                    cert.display()
                ),
                None => format!(
                    "TLS: the broker refused the handshake ({alert:?}); does it require a client certificate (mqtt.tls.client_cert_file)?"
                ),
            },
            rustls::Error::InvalidMessage(_) => format!("TLS: {e}; is this port a TLS listener?"),
            other => format!("TLS: {other}"),
        }
    }
}

/// The rustls error inside an I/O error from the TLS stream, if that is what it is.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|source| OptionsError::Read { key, path: path.to_path_buf(), source })
}

fn read_password_file(path: &Path) -> Result<String, OptionsError> {
    let bytes = read_file("password_file", path)?;
    let problem = |problem: &str| OptionsError::File { key: "password_file", path: path.to_path_buf(), problem: problem.into() };
    let text = String::from_utf8(bytes).map_err(|_| problem("the password is not UTF-8 text"))?;
    let password = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if password.is_empty() {
        return Err(problem("the file is empty"));
    }
    Ok(password.to_string())
}

fn read_password_env(name: &str, env: &impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<String, OptionsError> {
    let problem = |problem: &str| OptionsError::Env { name: name.to_string(), problem: problem.into() };
    let value = env(name).ok_or_else(|| problem("the environment variable is not set"))?;
    let value = value.into_string().map_err(|_| problem("the environment variable is not UTF-8 text"))?;
    if value.is_empty() {
        return Err(problem("the environment variable is empty"));
    }
    Ok(value)
}

fn pem_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, OptionsError> {
    let bytes = read_file(key, path)?;
    let problem = |problem: String| OptionsError::File { key, path: path.to_path_buf(), problem };
    let certs =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| problem(format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(problem("no PEM certificate in it (expected a '-----BEGIN CERTIFICATE-----' block)".into()));
    }
    Ok(certs)
}

fn tls_config(tls: &super::config::TlsConfig) -> Result<Arc<ClientConfig>, OptionsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ca_file = tls
        .ca_file
        .as_deref()
        .ok_or_else(|| OptionsError::Config { key: "tls.ca_file", problem: "required when [mqtt.tls] is present".into() })?;
    let mut roots = RootCertStore::empty();
    for cert in pem_certs("tls.ca_file", ca_file)? {
        roots.add(cert).map_err(|e| OptionsError::File {
            key: "tls.ca_file",
            path: ca_file.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| {
        OptionsError::File { key: "tls.ca_file", path: ca_file.to_path_buf(), problem: format!("cannot verify servers with it: {e}") }
    })?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.trim().to_string()).map_err(|_| OptionsError::Config {
                key: "tls.server_name",
                problem: format!("{name:?} is not a DNS name or an IP address"),
            })?;
            Arc::new(ServerNameOverride { inner: webpki, name })
        }
        None => webpki,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OptionsError::Config { key: "tls", problem: format!("TLS set-up failed: {e}") })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = pem_certs("tls.client_cert_file", cert_file)?;
            let key_bytes = read_file("tls.client_key_file", key_file)?;
            let key_problem = |problem: String| OptionsError::File { key: "tls.client_key_file", path: key_file.to_path_buf(), problem };
            let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    key_problem("no PEM private key in it (expected a 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)".into())
                }
                e => key_problem(format!("not a valid PEM file: {e}")),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => key_problem(format!(
                    "this key does not belong to the certificate in mqtt.tls.client_cert_file ({})",
                    cert_file.display()
                )),
                rustls::Error::InvalidCertificate(e) => OptionsError::File {
                    key: "tls.client_cert_file",
                    path: cert_file.to_path_buf(),
                    problem: format!("not a usable certificate ({e:?}); it must be X.509 v3"),
                },
                e => key_problem(format!("unusable private key: {e}")),
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(OptionsError::Config {
                key: "tls.client_cert_file",
                problem: "client_cert_file and client_key_file go together (set both or neither)".into(),
            })
        }
    };
    Ok(Arc::new(config))
}

/// Verifies the broker's certificate against `name` instead of the host connected to.
#[derive(Debug)]
struct ServerNameOverride {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ServerNameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::config::{FailoverConfig, TlsConfig};

    /// Test PEM files (EC P-256, made with openssl; see testdata/README).
    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/uplink/testdata").join(name)
    }

    fn config(edit: impl FnOnce(&mut Config)) -> Config {
        let mut c: Config = toml::from_str("[gateway]\nid = \"gw\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        edit(&mut c);
        c
    }

    fn tls(ca: &str, cert: Option<&str>, key: Option<&str>) -> TlsConfig {
        TlsConfig {
            ca_file: Some(testdata(ca)),
            client_cert_file: cert.map(testdata),
            client_key_file: key.map(testdata),
            server_name: None,
        }
    }

    fn no_env(_: &str) -> Option<std::ffi::OsString> {
        None
    }

    fn error_of(c: &Config) -> String {
        Prepared::load_with_env(c, no_env).expect_err("the options must be refused").to_string()
    }

    #[test]
    fn plain_options_carry_the_persistent_session_and_the_will() {
        let c = config(|_| {});
        let p = Prepared::load_with_env(&c, no_env).unwrap();
        let o = p.options(&p.brokers[0]);
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1883));
        assert!(!o.clean_session());
        assert_eq!(o.client_id(), "edge-agent-gw");
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "plant/s/gw/status");
        assert!(will.retain);
        assert!(o.credentials().is_none());
        assert!(matches!(o.transport(), Transport::Tcp));
    }

    #[test]
    fn mqtt_5_options_keep_the_session_with_an_expiry_and_carry_the_same_will_and_login() {
        let c = config(|c| {
            c.mqtt.protocol = Protocol::V5;
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_env = Some("PW".into());
            c.mqtt.max_inflight = 16;
            c.mqtt.tls = Some(tls("ca.pem", None, None));
        });
        let p = Prepared::load_with_env(&c, |_| Some("secret".into())).unwrap();
        assert_eq!(p.protocol, Protocol::V5);
        let o = p.options_v5(&p.brokers[0]);
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1883));
        assert!(!o.clean_start());
        assert_eq!(o.session_expiry_interval(), Some(86_400));
        assert_eq!(o.get_outgoing_inflight_upper_limit(), Some(16));
        assert_eq!(o.client_id(), "edge-agent-gw");
        let will = o.last_will().unwrap();
        assert_eq!(&will.topic[..], b"plant/s/gw/status");
        assert!(will.retain);
        assert_eq!(will.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
        let status: serde_json::Value = serde_json::from_slice(&will.message).unwrap();
        assert_eq!(status["state"], "offline");
        assert_eq!(o.credentials().map(|l| (l.username, l.password)), Some(("gw".into(), "secret".into())));
        assert!(matches!(o.transport(), Transport::Tls(TlsConfiguration::Rustls(_))));
    }

    #[test]
    fn mqtt_5_connection_errors_say_what_to_check() {
        use rumqttc::v5::ConnectionError as E;
        let c = config(|c| {
            c.mqtt.protocol = Protocol::V5;
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_env = Some("PW".into());
        });
        let p = Prepared::load_with_env(&c, |_| Some("x".into())).unwrap();
        let b = p.brokers[0].clone();
        let e = p.explain_v5(&b, &E::ConnectionRefused(V5ReturnCode::NotAuthorized));
        assert!(e.contains("refused the login") && e.contains("\"gw\"") && e.contains("PW"), "{e}");
        let e = p.explain_v5(&b, &E::ConnectionRefused(V5ReturnCode::UnsupportedProtocolVersion));
        assert!(e.contains("mqtt.protocol = \"3.1.1\""), "{e}");
        let down = E::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(p.explain_v5(&b, &down), "127.0.0.1:1883: connection refused (is the broker running and listening on this port?)");
    }

    #[test]
    fn tls_with_a_client_certificate_loads() {
        let c = config(|c| c.mqtt.tls = Some(tls("ca.pem", Some("client.pem"), Some("client.key"))));
        let p = Prepared::load_with_env(&c, no_env).unwrap();
        assert!(matches!(p.options(&p.brokers[0]).transport(), Transport::Tls(TlsConfiguration::Rustls(_))));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let c = config(|c| c.mqtt.tls = Some(tls("nope.pem", None, None)));
        let e = error_of(&c);
        assert!(e.starts_with("mqtt.tls.ca_file = \"") && e.contains("nope.pem") && e.contains("cannot read the file"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        // A key is not a certificate
        let c = config(|c| c.mqtt.tls = Some(tls("client.key", None, None)));
        let e = error_of(&c);
        assert!(e.starts_with("mqtt.tls.ca_file = ") && e.contains("client.key") && e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn a_key_file_without_a_key_is_named() {
        let c = config(|c| c.mqtt.tls = Some(tls("ca.pem", Some("client.pem"), Some("client.pem"))));
        let e = error_of(&c);
        assert!(e.starts_with("mqtt.tls.client_key_file = ") && e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_named() {
        let c = config(|c| c.mqtt.tls = Some(tls("ca.pem", Some("client.pem"), Some("other.key"))));
        let e = error_of(&c);
        assert!(e.starts_with("mqtt.tls.client_key_file = ") && e.contains("other.key") && e.contains("does not belong"), "{e}");
    }

    #[test]
    fn an_unusable_client_certificate_is_named() {
        let c = config(|c| c.mqtt.tls = Some(tls("ca.pem", Some("client-v1.pem"), Some("client.key"))));
        let e = error_of(&c);
        assert!(
            e.starts_with("mqtt.tls.client_cert_file = ") && e.contains("client-v1.pem") && e.contains("not a usable certificate"),
            "{e}"
        );
    }

    #[test]
    fn client_certificate_and_key_go_together() {
        let c = config(|c| c.mqtt.tls = Some(tls("ca.pem", Some("client.pem"), None)));
        assert_eq!(error_of(&c), "mqtt.tls.client_cert_file: client_cert_file and client_key_file go together (set both or neither)");
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let c = config(|c| {
            let mut t = tls("ca.pem", None, None);
            t.server_name = Some("not a name!".into());
            c.mqtt.tls = Some(t);
        });
        assert!(error_of(&c).starts_with("mqtt.tls.server_name: "));
    }

    #[test]
    fn the_password_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        let c = config(|c| {
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_file = Some(file.clone());
        });
        let p = Prepared::load_with_env(&c, no_env).unwrap();
        assert_eq!(
            p.options(&p.brokers[0]).credentials().map(|l| (l.username, l.password)),
            Some(("gw".to_string(), "s3cret".to_string()))
        );
        // and the password never shows in Debug
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn a_missing_or_empty_password_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let c = config(|c| {
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_file = Some(missing.clone());
        });
        let e = error_of(&c);
        assert!(e.starts_with("mqtt.password_file = ") && e.contains("missing") && e.contains("cannot read the file"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let c = config(|c| {
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_file = Some(empty.clone());
        });
        assert!(error_of(&c).ends_with("the file is empty"));
    }

    #[test]
    fn the_password_comes_from_the_named_environment_variable() {
        let c = config(|c| {
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_env = Some("GW_MQTT_PASSWORD".into());
        });
        let p = Prepared::load_with_env(&c, |n| (n == "GW_MQTT_PASSWORD").then(|| "pw".into())).unwrap();
        assert_eq!(p.options(&p.brokers[0]).credentials().map(|l| (l.username, l.password)), Some(("gw".to_string(), "pw".to_string())));
        assert_eq!(error_of(&c), "mqtt.password_env = \"GW_MQTT_PASSWORD\": the environment variable is not set");
    }

    #[test]
    fn the_failover_broker_gets_the_same_tls_and_credentials() {
        let c = config(|c| {
            c.mqtt.tls = Some(tls("ca.pem", None, None));
            c.mqtt.username = Some("gw".into());
            c.mqtt.failover = Some(FailoverConfig { host: "10.0.0.2".into(), port: 8883 });
        });
        let p = Prepared::load_with_env(&c, no_env).unwrap();
        assert_eq!(p.brokers.len(), 2);
        let o = p.options(&p.brokers[1]);
        assert_eq!(o.broker_address(), ("10.0.0.2".to_string(), 8883));
        assert!(matches!(o.transport(), Transport::Tls(_)));
        assert_eq!(o.credentials().map(|l| l.username), Some("gw".to_string()));
    }

    #[test]
    fn connection_errors_say_what_to_check() {
        let c = config(|c| {
            c.mqtt.tls = Some(tls("ca.pem", None, None));
            c.mqtt.username = Some("gw".into());
            c.mqtt.password_env = Some("PW".into());
        });
        let p = Prepared::load_with_env(&c, |_| Some("x".into())).unwrap();
        let b = p.brokers[0].clone();
        let unknown_ca = ConnectionError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        let e = p.explain(&b, &unknown_ca);
        assert!(e.starts_with("127.0.0.1:1883: TLS: the broker's certificate is not signed by the CA in mqtt.tls.ca_file ("), "{e}");
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        let e = p.explain(&b, &refused);
        assert!(e.contains("refused the login") && e.contains("\"gw\"") && e.contains("PW"), "{e}");
        let down = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(p.explain(&b, &down).contains("connection refused"));
    }
}
