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
//! (`edge-agent opcua trust <thumbprint>`). Nothing is trusted silently unless a device
//! sets `auto_trust_server_certificate`.

use std::path::{Path, PathBuf};

use opcua::crypto::X509;
use serde::Serialize;

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
    pub not_after: Option<String>,
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
    let parsed = std::fs::read(&file).map_err(|e| e.to_string()).and_then(|b| X509::from_der(&b).map_err(|e| e.to_string()));
    match parsed {
        Ok(c) => CertInfo {
            state,
            thumbprint: c.thumbprint().as_hex_string(),
            subject: c.subject_name(),
            not_after: c.not_after().ok().map(|t| t.to_rfc3339()),
            file,
            error: None,
        },
        Err(e) => CertInfo { state, file, thumbprint: String::new(), subject: String::new(), not_after: None, error: Some(e) },
    }
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
/// of its thumbprint): moves it to `trusted/`. Returns its new path.
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
    Ok(CertInfo { state: CertState::Trusted, file: to, ..cert })
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
    fn trust_refuses_short_and_unknown_selectors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rejected")).unwrap();
        assert!(matches!(trust(dir.path(), "ab"), Err(PkiError::TooShort(_))));
        assert!(matches!(trust(dir.path(), "abcdef0123"), Err(PkiError::NotFound(_))));
    }
}
