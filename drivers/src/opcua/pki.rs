//! The agent's OPC-UA PKI directory, as an operator manages it.
//!
//! ```text
//! {data_dir}/opcua/pki/own/cert.der          the agent's application certificate (created on first run)
//! {data_dir}/opcua/pki/private/private.pem   its private key
//! {data_dir}/opcua/pki/trusted/*.der         server certificates the operator trusted
//! {data_dir}/opcua/pki/rejected/*.der        server certificates seen and refused
//! ```
//!
//! A server certificate that is not in `trusted/` is refused and stored in `rejected/`
//! by the client library; [`trust`] is the operator's explicit action that moves it
//! (`edge-agent opcua trust <thumbprint>`, or the Trust button of the status page).
//! Nothing is trusted silently unless a device sets `auto_trust_server_certificate`.
//!
//! A trust made in this process is announced to the drivers of the same PKI directory
//! ([`changes`]): a driver waiting out its reconnect back-off tries again at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};

use opcua::crypto::X509;
use serde::Serialize;
use tokio::sync::watch;
use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    Own,
    Trusted,
    Rejected,
}

/// One certificate of the PKI directory.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub state: CertState,
    pub file: PathBuf,
    /// SHA-1 thumbprint, hex: what `opcua trust` takes (or a prefix of it).
    pub thumbprint: String,
    pub subject: String,
    /// Validity, RFC 3339.
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// The host names and IP addresses of its subject alternative names: the hosts the
    /// server says it is (an endpoint's host among them tells which device it belongs to).
    pub hosts: Vec<String>,
    /// The application URI of its subject alternative names.
    pub application_uri: Option<String>,
    /// Why the file could not be read as a certificate, if it could not.
    pub error: Option<String>,
}

/// Why an operator action on the PKI failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("no rejected certificate matches {0:?}: run `edge-agent opcua certs` to list them")]
    NotFound(String),
    #[error("{0:?} matches {1} rejected certificates: give more of the thumbprint")]
    Ambiguous(String, usize),
    #[error("{0:?} is too short: give at least 8 hex digits of the thumbprint, or the file name")]
    TooShort(String),
    #[error("cannot move {from} to {to}: {source}")]
    Move { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("cannot read {dir}: {source}")]
    Read { dir: PathBuf, source: std::io::Error },
}

fn read_cert(state: CertState, file: PathBuf) -> CertInfo {
    let parsed = std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| X509::from_der(&b).map(|c| (c, alternative_names(&b))).map_err(|e| e.to_string()));
    match parsed {
        Ok((c, (hosts, application_uri))) => CertInfo {
            state,
            thumbprint: c.thumbprint().as_hex_string(),
            subject: c.subject_name(),
            not_before: c.not_before().ok().map(|t| t.to_rfc3339()),
            not_after: c.not_after().ok().map(|t| t.to_rfc3339()),
            hosts,
            application_uri,
            file,
            error: None,
        },
        Err(e) => CertInfo {
            state,
            file,
            thumbprint: String::new(),
            subject: String::new(),
            not_before: None,
            not_after: None,
            hosts: Vec::new(),
            application_uri: None,
            error: Some(e),
        },
    }
}

/// The DNS names and IP addresses, and the URI, of a DER certificate's subject alternative
/// names (none when it has no such extension or it cannot be read).
fn alternative_names(der: &[u8]) -> (Vec<String>, Option<String>) {
    let names = x509_cert::Certificate::from_der(der)
        .ok()
        .and_then(|c| c.tbs_certificate.get::<SubjectAltName>().ok().flatten())
        .map(|(_, san)| san.0)
        .unwrap_or_default();
    let (mut hosts, mut uri) = (Vec::new(), None);
    for name in names {
        match name {
            GeneralName::DnsName(n) => hosts.push(n.to_string()),
            GeneralName::IpAddress(ip) => match <[u8; 4]>::try_from(ip.as_bytes()) {
                Ok(v4) => hosts.push(std::net::Ipv4Addr::from(v4).to_string()),
                Err(_) => {
                    if let Ok(v6) = <[u8; 16]>::try_from(ip.as_bytes()) {
                        hosts.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
            },
            GeneralName::UniformResourceIdentifier(u) if uri.is_none() => uri = Some(u.to_string()),
            _ => {}
        }
    }
    (hosts, uri)
}

/// Whether `cert` names the host of the OPC-UA `endpoint` (`opc.tcp://host:port/…`) among
/// its subject alternative names (case-insensitive; IPv6 hosts without their brackets).
pub fn names_endpoint_host(cert: &CertInfo, endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    !host.is_empty() && cert.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

fn certs_in(dir: &Path, state: CertState) -> Result<Vec<CertInfo>, PkiError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PkiError::Read { dir: dir.to_path_buf(), source }),
    };
    let mut files: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "der")).collect();
    files.sort();
    Ok(files.into_iter().map(|f| read_cert(state, f)).collect())
}

/// Every certificate in `pki`: the agent's own, then the trusted and the rejected ones.
pub fn list(pki: &Path) -> Result<Vec<CertInfo>, PkiError> {
    let mut out = Vec::new();
    let own = pki.join("own").join("cert.der");
    if own.exists() {
        out.push(read_cert(CertState::Own, own));
    }
    out.extend(certs_in(&pki.join("trusted"), CertState::Trusted)?);
    out.extend(certs_in(&pki.join("rejected"), CertState::Rejected)?);
    Ok(out)
}

/// The rejected server certificates (shown on the status page).
pub fn rejected(pki: &Path) -> Vec<CertInfo> {
    certs_in(&pki.join("rejected"), CertState::Rejected).unwrap_or_default()
}

/// Trusts the rejected certificate named by `selector` (its file name, or 8+ hex digits
/// of its thumbprint): moves it to `trusted/`, and tells the drivers of `pki` in this
/// process ([`changes`]). Returns it with its new path.
pub fn trust(pki: &Path, selector: &str) -> Result<CertInfo, PkiError> {
    let candidates = certs_in(&pki.join("rejected"), CertState::Rejected)?;
    let wanted = selector.trim().to_ascii_lowercase();
    let by_name: Vec<&CertInfo> =
        candidates.iter().filter(|c| c.file.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase() == wanted)).collect();
    let matches: Vec<&CertInfo> = if !by_name.is_empty() {
        by_name
    } else {
        if wanted.len() < 8 {
            return Err(PkiError::TooShort(selector.to_string()));
        }
        candidates.iter().filter(|c| c.thumbprint.to_ascii_lowercase().starts_with(&wanted)).collect()
    };
    let cert = match matches.as_slice() {
        [] => return Err(PkiError::NotFound(selector.to_string())),
        [one] => (*one).clone(),
        many => return Err(PkiError::Ambiguous(selector.to_string(), many.len())),
    };
    let trusted_dir = pki.join("trusted");
    std::fs::create_dir_all(&trusted_dir).map_err(|source| PkiError::Move { from: cert.file.clone(), to: trusted_dir.clone(), source })?;
    let to = trusted_dir.join(cert.file.file_name().unwrap_or_default());
    std::fs::rename(&cert.file, &to).map_err(|source| PkiError::Move { from: cert.file.clone(), to: to.clone(), source })?;
    announce(pki);
    Ok(CertInfo { state: CertState::Trusted, file: to, ..cert })
}

/// Undoes [`trust`] of `cert` (the trusted certificate it returned): moves it back to
/// `rejected/`. For an action that could not be recorded (its audit event).
pub fn untrust(pki: &Path, cert: &CertInfo) -> Result<(), PkiError> {
    let to = pki.join("rejected").join(cert.file.file_name().unwrap_or_default());
    std::fs::rename(&cert.file, &to).map_err(|source| PkiError::Move { from: cert.file.clone(), to, source })
}

/// One sender of trust changes per PKI directory (as the path is given), for this process.
static CHANGES: LazyLock<Mutex<HashMap<PathBuf, watch::Sender<u64>>>> = LazyLock::new(Mutex::default);

/// Trust changes of `pki` in this process: the value counts the trusts made since the
/// process started. A driver marks it seen before a session attempt and, while it waits
/// out its back-off, tries again as soon as it changes.
pub fn changes(pki: &Path) -> watch::Receiver<u64> {
    let mut all = CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
    all.entry(pki.to_path_buf()).or_insert_with(|| watch::channel(0).0).subscribe()
}

/// Tells every receiver of [`changes`] of `pki` that its trust list changed.
pub fn announce(pki: &Path) {
    let mut all = CHANGES.lock().unwrap_or_else(PoisonError::into_inner);
    all.entry(pki.to_path_buf()).or_insert_with(|| watch::channel(0).0).send_modify(|n| *n += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pki_directory_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn an_endpoints_host_is_matched_against_the_certificates_host_names() {
        let cert = CertInfo {
            state: CertState::Rejected,
            file: PathBuf::from("x.der"),
            thumbprint: "ab".into(),
            subject: "CN=plc".into(),
            not_before: None,
            not_after: None,
            hosts: vec!["PLC-1.plant.local".into(), "10.0.0.5".into(), "fe80::1".into()],
            application_uri: Some("urn:plc".into()),
            error: None,
        };
        assert!(names_endpoint_host(&cert, "opc.tcp://plc-1.plant.local:4840/"));
        assert!(names_endpoint_host(&cert, "opc.tcp://10.0.0.5:4840"));
        assert!(names_endpoint_host(&cert, "opc.tcp://[fe80::1]:4840/UA/Server"));
        assert!(!names_endpoint_host(&cert, "opc.tcp://10.0.0.6:4840"));
        assert!(!names_endpoint_host(&cert, "opc.tcp://plc-1:4840"));
        assert!(!names_endpoint_host(&cert, ""));
    }

    #[tokio::test]
    async fn a_trust_wakes_the_receivers_of_that_pki_directory_only() {
        // Given receivers of two PKI directories, both seen
        let (a, b) = (PathBuf::from("/nonexistent/pki-a"), PathBuf::from("/nonexistent/pki-b"));
        let (mut rx_a, mut rx_b) = (changes(&a), changes(&b));
        rx_a.borrow_and_update();
        rx_b.borrow_and_update();
        // When a trust in `a` is announced
        announce(&a);
        // Then `a`'s receiver sees a change at once, and `b`'s does not
        tokio::time::timeout(std::time::Duration::from_secs(1), rx_a.changed()).await.unwrap().unwrap();
        assert!(!rx_b.has_changed().unwrap());
    }

    #[test]
    fn trust_refuses_short_and_unknown_selectors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rejected")).unwrap();
        assert!(matches!(trust(dir.path(), "ab"), Err(PkiError::TooShort(_))));
        assert!(matches!(trust(dir.path(), "abcdef0123"), Err(PkiError::NotFound(_))));
    }
}
