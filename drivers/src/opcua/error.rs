//! Why an OPC-UA device is not connected, or a service call of its session failed, as
//! types that keep the server's status code. `Display` gives the sentence the operator
//! sees (a tag's bad reason, a device's `device_lost` reason and its line on the status
//! page); the driver turns the error into text only where it reports it.

use std::path::PathBuf;
use std::time::Duration;

use opcua::types::StatusCode;

use super::session::ConnectError;

/// Why a service call of a session (Read, CreateSubscription, CreateMonitoredItems)
/// failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// The session's deadline for the whole step passed.
    #[error("no answer in time")]
    Deadline,
    #[error("no answer to Read within {0:?}")]
    ReadTimeout(Duration),
    /// The server answered with a bad status.
    #[error("{service} refused: {status}")]
    Refused { service: &'static str, status: StatusCode },
}

impl ServiceError {
    /// The server's status, when it gave one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ServiceError::Refused { status, .. } => Some(*status),
            ServiceError::Deadline | ServiceError::ReadTimeout(_) => None,
        }
    }
}

/// Why an OPC-UA device is not connected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpcuaError {
    /// The client (with the agent's certificate) could not be created.
    #[error("cannot set up the OPC-UA client (PKI {}): {reason}", .pki.display())]
    Client { pki: PathBuf, reason: String },
    /// The task creating the client failed.
    #[error("cannot set up the OPC-UA client: {0}")]
    ClientTask(String),
    /// The configured identity cannot be used (a password or user certificate to fix).
    #[error("{0}")]
    Identity(String),
    /// The connection attempt failed.
    #[error("{0}")]
    Connect(ConnectError),
    /// The server's certificate is not trusted: an operator must trust it.
    #[error("{0}: the server certificate is not trusted; it was stored as rejected — list it with `edge-agent opcua certs` and trust it with `edge-agent opcua trust`")]
    Untrusted(ConnectError),
    /// The session's connection ended (as the session's event loop said).
    #[error("{0}")]
    Lost(String),
    /// The session ended without saying why.
    #[error("the session ended")]
    Ended,
    #[error("setting up subscriptions failed: {0}")]
    Setup(ServiceError),
    #[error("reading polled group failed: {0}")]
    PolledRead(ServiceError),
    #[error("re-creating items failed: {0}")]
    Recreate(ServiceError),
}

impl OpcuaError {
    /// The server's status code behind the error, when there is one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            OpcuaError::Connect(e) | OpcuaError::Untrusted(e) => e.status,
            OpcuaError::Setup(e) | OpcuaError::PolledRead(e) | OpcuaError::Recreate(e) => e.status(),
            _ => None,
        }
    }

    /// Whether the failure needs an operator (a certificate to trust, a login to fix)
    /// rather than time.
    pub fn needs_operator(&self) -> bool {
        match self {
            OpcuaError::Identity(_) | OpcuaError::Untrusted(_) => true,
            OpcuaError::Connect(_) => self.status().is_some_and(|s| {
                let name = s.sub_code().name();
                name.contains("Certificate") || name == "BadUserAccessDenied" || name.starts_with("BadIdentityToken")
            }),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(status: Option<StatusCode>, message: &str) -> ConnectError {
        ConnectError { status, message: message.into() }
    }

    #[test]
    fn each_error_reads_as_the_sentence_the_operator_saw_before_it_was_typed() {
        let refused = ServiceError::Refused { service: "Read", status: StatusCode::BadTooManyOperations };
        let cases = [
            (OpcuaError::Client { pki: "/var/lib/pki".into(), reason: "no key".into() }, "cannot set up the OPC-UA client (PKI /var/lib/pki): no key".to_string()),
            (OpcuaError::Setup(ServiceError::Deadline), "setting up subscriptions failed: no answer in time".into()),
            (OpcuaError::PolledRead(refused.clone()), format!("reading polled group failed: Read refused: {}", StatusCode::BadTooManyOperations)),
            (OpcuaError::PolledRead(ServiceError::ReadTimeout(Duration::from_secs(2))), "reading polled group failed: no answer to Read within 2s".into()),
            (
                OpcuaError::Recreate(ServiceError::Refused { service: "CreateMonitoredItems", status: StatusCode::BadTooManyMonitoredItems }),
                format!("re-creating items failed: CreateMonitoredItems refused: {}", StatusCode::BadTooManyMonitoredItems),
            ),
            (OpcuaError::Ended, "the session ended".into()),
            (
                OpcuaError::Untrusted(connect(Some(StatusCode::BadCertificateUntrusted), "connecting failed: BadCertificateUntrusted")),
                "connecting failed: BadCertificateUntrusted: the server certificate is not trusted; it was stored as rejected — list it with `edge-agent opcua certs` and trust it with `edge-agent opcua trust`".into(),
            ),
        ];
        for (error, sentence) in cases {
            assert_eq!(error.to_string(), sentence, "{error:?}");
        }
        assert_eq!(OpcuaError::PolledRead(refused).status(), Some(StatusCode::BadTooManyOperations));
    }

    #[test]
    fn a_refusal_an_operator_must_act_on_is_told_apart_by_its_status_not_its_text() {
        let operator = [
            OpcuaError::Identity("environment variable UA_PASSWORD (password_env) is not set".into()),
            OpcuaError::Untrusted(connect(Some(StatusCode::BadSecurityChecksFailed), "connecting failed")),
            OpcuaError::Connect(connect(Some(StatusCode::BadCertificateInvalid), "connecting failed")),
            OpcuaError::Connect(connect(Some(StatusCode::BadUserAccessDenied), "connecting failed")),
            OpcuaError::Connect(connect(Some(StatusCode::BadIdentityTokenRejected), "connecting failed")),
        ];
        for e in operator {
            assert!(e.needs_operator(), "{e:?}");
        }
        let time = [
            OpcuaError::Connect(connect(Some(StatusCode::BadTimeout), "no answer from opc.tcp://127.0.0.1:4840 (GetEndpoints) in time")),
            OpcuaError::Connect(connect(None, "the connection closed while connecting")),
            OpcuaError::Lost("connection lost: BadConnectionClosed".into()),
            OpcuaError::Setup(ServiceError::Deadline),
        ];
        for e in time {
            assert!(!e.needs_operator(), "{e:?}");
        }
    }
}
