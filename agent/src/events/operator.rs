//! The details of the operators' audit events, raised by the status page's actions
//! (`crate::web::actions`): `event_acknowledged` and `certificate_trusted`.

use serde::{Deserialize, Serialize};

use super::Severity;

/// `event_acknowledged`: an operator acknowledged an event on the status page. The
/// event's `asset` is the acknowledged event's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventAcknowledged {
    /// The acknowledged event's `id`.
    pub event_id: String,
    /// Its `kind` and `severity`.
    pub event_kind: String,
    pub event_severity: Severity,
    /// The operator's user name (`web.users_file`).
    pub user: String,
    /// The address the request came from (the TCP peer), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `certificate_trusted`: an operator trusted a rejected OPC-UA server certificate on the
/// status page (moved from the PKI's `rejected/` to `trusted/`). The event's `asset` is the
/// gateway id: the PKI is the gateway's, shared by its OPC-UA devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateTrusted {
    /// SHA-1 thumbprint, hex.
    pub thumbprint: String,
    pub subject: String,
    /// End of validity (RFC 3339), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The OPC-UA devices whose endpoint host the certificate names (may be empty).
    pub devices: Vec<String>,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}
