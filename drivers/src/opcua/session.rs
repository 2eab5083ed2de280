//! One OPC-UA session: the client (with the agent's PKI), the connection attempt
//! (GetEndpoints, secure channel, session) under one deadline, and the watch that says
//! when the session is lost.
//!
//! The library can reconnect by itself; the driver does not let it. A lost session is
//! rebuilt by the driver from scratch (new session, subscriptions, browse paths resolved
//! again), with its own jittered backoff, so that there is exactly one reconnect policy
//! and never two session attempts at once on one endpoint ([`endpoint_gate`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionPollResult};
use opcua::crypto::{CertificateStore, PrivateKey, X509};
use opcua::types::{EndpointDescription, StatusCode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use super::config::SecurityPolicy;
use super::device::{Connection, Identity, PasswordSource};

/// The agent's application name and URI in its certificate and sessions.
pub const APPLICATION_NAME: &str = "edge-agent";
pub const APPLICATION_URI: &str = "urn:edge-agent:opcua-client";

/// Why a connection attempt failed.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub status: Option<StatusCode>,
    pub message: String,
}

impl ConnectError {
    fn new(status: Option<StatusCode>, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// Whether the server's certificate was refused as untrusted (an operator must trust it).
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self.status, Some(StatusCode::BadCertificateUntrusted | StatusCode::BadSecurityChecksFailed))
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

/// The agent's PKI directory for OPC-UA under the data dir: `own/` (its certificate),
/// `private/` (its key), `trusted/` and `rejected/` (server certificates).
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("opcua").join("pki")
}

/// A client for one device (or a commissioning tool) connecting with `connection`.
/// Creating it creates the agent's certificate and key on first use (slow: run it off the
/// async threads).
pub fn build_client(connection: &Connection, pki: &Path, request_timeout: Duration) -> Result<Client, String> {
    ClientBuilder::new()
        .application_name(APPLICATION_NAME)
        .application_uri(APPLICATION_URI)
        .product_uri(APPLICATION_URI)
        .pki_dir(pki)
        .create_sample_keypair(true)
        .trust_server_certs(connection.auto_trust_server_certificate)
        .verify_server_certs(true)
        // The driver reconnects by itself (see the module notes).
        .session_retry_limit(0)
        .session_timeout(u32::try_from(connection.session_timeout.as_millis()).unwrap_or(u32::MAX))
        .request_timeout(request_timeout.max(Duration::from_millis(500)))
        .keep_alive_interval(Duration::from_secs(5).min(connection.session_timeout / 4))
        .max_failed_keep_alive_count(2)
        .client()
        .map_err(|e| e.join("; "))
}

/// The identity token for the session; reads the password or the user certificate and
/// key now (on every attempt: a changed password file is picked up). Errors never contain
/// the password.
pub fn identity(identity: &Identity) -> Result<IdentityToken, String> {
    match identity {
        Identity::Anonymous => Ok(IdentityToken::Anonymous),
        Identity::UserName { user, password } => {
            let password = match password {
                PasswordSource::File(file) => std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                PasswordSource::Env(var) => {
                    std::env::var(var).map_err(|_| format!("environment variable {var} (password_env) is not set"))?
                }
            };
            Ok(IdentityToken::new_user_name(user.clone(), password))
        }
        Identity::Certificate { cert, key } => {
            let x509 = read_x509(cert)?;
            let pkey = CertificateStore::read_pkey(key).map_err(|e| format!("cannot read user_private_key {}: {e}", key.display()))?;
            Ok(IdentityToken::new_x509(x509, pkey))
        }
    }
}

fn read_x509(path: &Path) -> Result<X509, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read user_certificate {}: {e}", path.display()))?;
    X509::from_der(&bytes)
        .or_else(|_| X509::from_pem(&bytes))
        .map_err(|e| format!("user_certificate {} is neither DER nor PEM: {e}", path.display()))
}

/// A session that is up; `lost` fires (with the reason) when its connection ends.
pub struct Connected {
    pub session: Arc<Session>,
    pub lost: oneshot::Receiver<String>,
    event_loop: JoinHandle<()>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

/// One attempt: GetEndpoints, then the secure channel and the session, all before
/// `deadline`. The caller holds the endpoint's gate.
pub async fn connect(
    client: &mut Client,
    connection: &Connection,
    identity: IdentityToken,
    deadline: Instant,
) -> Result<Connected, ConnectError> {
    let url = connection.endpoint.as_str();
    let endpoints = match timeout_at(deadline, client.get_server_endpoints_from_url(url)).await {
        Err(_) => return Err(ConnectError::new(Some(StatusCode::BadTimeout), format!("no answer from {url} (GetEndpoints) in time"))),
        Ok(Err(e)) => return Err(ConnectError::new(Some(e.status()), format!("GetEndpoints on {url} failed: {e}"))),
        Ok(Ok(e)) => e,
    };
    let wanted = EndpointDescription::from((url, connection.security_policy.to_opcua().to_uri(), connection.security_mode.to_opcua()));
    let (session, event_loop) = client
        .session_builder()
        .with_endpoints(endpoints.clone())
        .connect_to_matching_endpoint(wanted)
        .map_err(|e| {
            let offered: Vec<String> = endpoints
                .iter()
                .map(|e| format!("{} {:?}", SecurityPolicy::name_of_uri(e.security_policy_uri.as_ref()), e.security_mode))
                .collect();
            ConnectError::new(
                Some(e.status()),
                format!(
                    "the server offers no endpoint with {:?} / {:?} (it offers: {})",
                    connection.security_policy,
                    connection.security_mode,
                    offered.join(", ")
                ),
            )
        })?
        .user_identity_token(identity)
        .build(client.certificate_store().clone())
        .map_err(|e| ConnectError::new(Some(e.status()), format!("cannot set up the session: {e}")))?;
    session.disable_reconnects();
    let mut events = Box::pin(event_loop.enter());
    loop {
        match timeout_at(deadline, events.next()).await {
            Err(_) => return Err(ConnectError::new(Some(StatusCode::BadTimeout), "the session was not up in time")),
            Ok(None) => return Err(ConnectError::new(None, "the connection closed while connecting")),
            Ok(Some(Err(code))) => return Err(ConnectError::new(Some(code), format!("connecting failed: {code}"))),
            Ok(Some(Ok(SessionPollResult::Reconnected(_)))) => break,
            Ok(Some(Ok(SessionPollResult::ReconnectFailed(code)))) => {
                return Err(ConnectError::new(Some(code), format!("connecting failed: {code}")))
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let (lost_tx, lost) = oneshot::channel();
    let event_loop = tokio::spawn(async move {
        let reason = loop {
            match events.next().await {
                None => break "the connection closed".to_string(),
                Some(Err(code)) => break format!("the session ended: {code}"),
                Some(Ok(SessionPollResult::ConnectionLost(code))) => break format!("connection lost: {code}"),
                Some(Ok(_)) => {}
            }
        };
        let _ = lost_tx.send(reason);
    });
    Ok(Connected { session, lost, event_loop })
}

impl SecurityPolicy {
    fn name_of_uri(uri: &str) -> &str {
        uri.rsplit('#').next().unwrap_or(uri)
    }
}

/// The lock that lets one session attempt at a time reach an endpoint, across all the
/// devices of the agent that name it.
pub fn endpoint_gate(endpoint: &str) -> Arc<tokio::sync::Mutex<()>> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let gates = GATES.get_or_init(Mutex::default);
    let mut map = gates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(endpoint.to_string()).or_default().clone()
}

/// Reads a PEM or DER private key (used by the user-certificate identity).
pub fn read_private_key(path: &Path) -> Result<PrivateKey, String> {
    CertificateStore::read_pkey(path)
}
