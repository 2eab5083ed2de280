//! The operators' actions on the status page, and the data behind them.
//!
//! - `POST /api/events/{id}/ack`: acknowledges a warning or critical event of the page's
//!   list (`crate::recent_events`). The acknowledgement is an audit event,
//!   `event_acknowledged`, written through the outbox like every event (so the ERP gets it
//!   over MQTT, after an outage too). Once per event: a second acknowledgement is answered
//!   `200` with who did it first, and raises no second event. `404` for an event that is
//!   not among the latest ones, `409` for an `info` event (nothing to acknowledge).
//! - `GET /api/opcua/certificates`: the OPC-UA server certificates the agent rejected and
//!   that wait for an operator (subject, thumbprint, validity, host names), each with the
//!   OPC-UA devices whose endpoint host it names.
//! - `POST /api/opcua/certificates/{thumbprint}/trust`: trusts one of them (moves it to the
//!   PKI's `trusted/`, as `edge-agent opcua trust` does), raises `certificate_trusted`, and
//!   the OPC-UA drivers waiting out their reconnect back-off try again at once
//!   ([`edge_drivers::opcua::pki::changes`]). Trusting a trusted one again is `200`, no event.
//! - `GET /actions.js`: the page's script for both (buttons for operators only).
//!
//! The guard ([`super::auth::guard`]) has checked the session, the origin, the CSRF token
//! and the role of every `POST` before it gets here; the role is checked again where the
//! action is taken. An action whose audit event cannot be stored is taken back: no
//! acknowledgement, no trust, without its record.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use edge_drivers::opcua::pki::{self, CertInfo, CertState, PkiError};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify};
use tokio::time::timeout;
use tracing::{error, info, warn};

use super::auth::{self, Peer, Principal};
use super::users::Role;
use crate::events::{CertificateTrusted, Event, EventAcknowledged};
use crate::recent_events::{Claim, KEPT};
use crate::store::{Outbox, StoredEventDraft};

/// The page's script for the actions (a file of its own: the CSP allows scripts from our
/// origin, and inline ones by their hash only).
const ACTIONS_JS: &str = include_str!("actions.js");

/// Limit on storing an audit event, and on the PKI's file work.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the actions need of the running agent.
pub struct Actions {
    gateway: String,
    outbox: Outbox,
    /// Woken after an append, so that the uplink publishes at once.
    stored: Arc<Notify>,
    /// The agent's OPC-UA PKI directory.
    pki: PathBuf,
    /// The OPC-UA devices: (name, endpoint URL).
    opcua: Vec<(String, String)>,
    /// One trust at a time: the move and its audit event, or neither.
    trusting: Mutex<()>,
}

impl Actions {
    pub fn new(gateway: String, outbox: Outbox, stored: Arc<Notify>, pki: PathBuf, opcua: Vec<(String, String)>) -> Arc<Actions> {
        Arc::new(Actions { gateway, outbox, stored, pki, opcua, trusting: Mutex::new(()) })
    }

    /// The OPC-UA devices whose endpoint host `cert` names.
    fn devices_of(&self, cert: &CertInfo) -> Vec<String> {
        self.opcua.iter().filter(|(_, endpoint)| pki::names_endpoint_host(cert, endpoint)).map(|(name, _)| name.clone()).collect()
    }

    /// Appends `draft` to the outbox (on a task of its own, which finishes whatever happens
    /// here) and waits up to [`STORE_TIMEOUT`] for it. When it cannot be stored (an error,
    /// a panic), `undo` runs.
    async fn record(&self, draft: StoredEventDraft, undo: Box<dyn FnOnce() + Send>) -> Recorded {
        let (outbox, stored) = (self.outbox.clone(), self.stored.clone());
        let task = tokio::spawn(async move {
            let mut undo = Undo(Some(undo));
            outbox.append(&[], std::slice::from_ref(&draft)).await?;
            undo.0 = None;
            stored.notify_one();
            Ok::<(), crate::store::StoreError>(())
        });
        match timeout(STORE_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => Recorded::Stored,
            Ok(Ok(Err(e))) => Recorded::Failed(e.to_string()),
            Ok(Err(e)) => Recorded::Failed(format!("the store task failed: {e}")),
            Err(_) => Recorded::Pending,
        }
    }
}

/// Runs its function when dropped, unless taken: the undo of an action whose record failed.
struct Undo(Option<Box<dyn FnOnce() + Send>>);

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

enum Recorded {
    Stored,
    /// Not stored; the action was taken back.
    Failed(String),
    /// Not confirmed within the timeout: stored when the store takes it, else taken back.
    Pending,
}

// ---------- counters for /metrics ----------

/// What became of an operator action (the refused ones are `web_requests_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done, with its audit event.
    Done,
    /// Done before (by anyone): nothing changed, no event.
    Already,
    /// No such event or rejected certificate.
    NotFound,
    /// Nothing to act on: an `info` event, or not a thumbprint.
    Invalid,
    /// The store or the PKI failed: nothing changed.
    Failed,
}

const OUTCOMES: [Outcome; 5] = [Outcome::Done, Outcome::Already, Outcome::NotFound, Outcome::Invalid, Outcome::Failed];

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Already => "already",
            Outcome::NotFound => "not_found",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

static ACKNOWLEDGE: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static TRUST: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

fn count(counters: &[AtomicU64; 5], outcome: Outcome) {
    if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
        counters[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The actions' counters since the process started: (action, result, count), every
/// combination always.
pub fn counters() -> Vec<(&'static str, &'static str, u64)> {
    [("acknowledge", &ACKNOWLEDGE), ("trust_certificate", &TRUST)]
        .into_iter()
        .flat_map(|(action, counters)| {
            OUTCOMES.iter().zip(counters.iter()).map(move |(o, n)| (action, o.as_str(), n.load(Ordering::Relaxed)))
        })
        .collect()
}

// ---------- routes ----------

type Shared = Option<Arc<Actions>>;

/// The actions' routes; `actions` is `None` where there is no agent behind the page (unit
/// tests): every action then answers `503`.
pub fn routes(actions: Shared) -> Router {
    Router::new()
        .route("/api/events/{id}/ack", post(acknowledge))
        .route("/api/opcua/certificates", get(certificates))
        .route("/api/opcua/certificates/{thumbprint}/trust", post(trust))
        .route("/actions.js", get(actions_js))
        .with_state(actions)
}

const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [NO_STORE], Json(body)).into_response()
}

fn unavailable() -> Response {
    answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": "operator actions are not available on this server" }))
}

async fn actions_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), NO_STORE], ACTIONS_JS)
}

fn address(peer: SocketAddr) -> Option<String> {
    Some(peer.ip().to_string())
}

/// `POST /api/events/{id}/ack`.
async fn acknowledge(
    State(actions): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = auth::require(&who, Role::Operator) {
        return refused.into_response();
    }
    let Some(a) = actions else { return unavailable() };
    let events = a.outbox.recent_events();
    let now = Utc::now();
    let event = match events.claim_ack(&id, &who.name, now) {
        Claim::Claimed(event) => event,
        Claim::Unknown => {
            count(&ACKNOWLEDGE, Outcome::NotFound);
            let error = format!("no event {id:?} among the latest {KEPT} events: it does not exist, or is too old to acknowledge here");
            return answer(StatusCode::NOT_FOUND, json!({ "error": error, "event": id }));
        }
        Claim::NotNeeded(severity) => {
            count(&ACKNOWLEDGE, Outcome::Invalid);
            let error = format!("event {id} is {severity}: only warning and critical events are acknowledged");
            return answer(StatusCode::CONFLICT, json!({ "error": error, "event": id }));
        }
        Claim::Already(ack) => {
            count(&ACKNOWLEDGE, Outcome::Already);
            let message = format!("event {id} was already acknowledged by {} at {}", ack.by, ack.at);
            return answer(
                StatusCode::OK,
                json!({ "event": id, "already": true, "acknowledged_by": ack.by, "acknowledged_at": ack.at, "message": message }),
            );
        }
    };
    let details = EventAcknowledged {
        event_id: event.id.clone(),
        event_kind: event.kind.clone(),
        event_severity: event.severity,
        user: who.name.clone(),
        address: address(peer.0),
    };
    let draft = StoredEventDraft::now(a.gateway.as_str(), event.asset.clone(), Event::EventAcknowledged(details));
    let (release, released_id) = (events.clone(), id.clone());
    let recorded = a.record(draft, Box::new(move || release.release_ack(&released_id))).await;
    let (by, at) = (who.name.clone(), crate::payload::rfc3339(now));
    match recorded {
        Recorded::Stored => {
            count(&ACKNOWLEDGE, Outcome::Done);
            info!(user = %who.name, address = %peer.0.ip(), event = %id, kind = %event.kind, "status page: event acknowledged");
            let message = format!("event {id} acknowledged by {}", who.name);
            answer(
                StatusCode::OK,
                json!({ "event": id, "already": false, "acknowledged_by": by, "acknowledged_at": at, "message": message }),
            )
        }
        Recorded::Pending => {
            count(&ACKNOWLEDGE, Outcome::Done);
            warn!(user = %who.name, event = %id, "status page: event acknowledged, but the store has not confirmed its audit event in time");
            let message = format!(
                "event {id} acknowledged by {}; the store has not confirmed its audit event within {STORE_TIMEOUT:?}: it is sent once stored, or the acknowledgement is taken back",
                who.name
            );
            answer(
                StatusCode::ACCEPTED,
                json!({ "event": id, "already": false, "acknowledged_by": by, "acknowledged_at": at, "message": message }),
            )
        }
        Recorded::Failed(e) => {
            count(&ACKNOWLEDGE, Outcome::Failed);
            error!(user = %who.name, event = %id, error = %e, "status page: an acknowledgement could not be recorded; taken back");
            let error = format!("the acknowledgement could not be recorded (its audit event: {e}); nothing changed, try again");
            answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": error, "event": id }))
        }
    }
}

/// A certificate awaiting trust, as `GET /api/opcua/certificates` lists it.
#[derive(Debug, Serialize)]
struct AwaitingTrust {
    thumbprint: String,
    subject: String,
    not_before: Option<String>,
    not_after: Option<String>,
    /// Whether now is within its validity (an expired certificate is refused even trusted).
    valid_now: bool,
    hosts: Vec<String>,
    application_uri: Option<String>,
    file: PathBuf,
    /// The OPC-UA devices whose endpoint host it names (empty: none does).
    devices: Vec<String>,
    /// Why the file cannot be read as a certificate (it cannot be trusted from the page).
    error: Option<String>,
}

fn valid_at(cert: &CertInfo, now: DateTime<Utc>) -> bool {
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let (from, until) = (parse(&cert.not_before), parse(&cert.not_after));
    from.is_some_and(|f| f <= now) && until.is_some_and(|u| now <= u)
}

/// Runs PKI file work on a blocking thread, within [`STORE_TIMEOUT`].
async fn on_pki<T: Send + 'static>(f: impl FnOnce() -> Result<T, PkiError> + Send + 'static) -> Result<T, String> {
    match timeout(STORE_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("the PKI task failed: {e}")),
        Err(_) => Err(format!("the PKI directory did not answer within {STORE_TIMEOUT:?}")),
    }
}

/// `GET /api/opcua/certificates`.
async fn certificates(State(actions): State<Shared>) -> Response {
    let Some(a) = actions else { return unavailable() };
    let dir = a.pki.clone();
    let listed = match on_pki(move || pki::list(&dir)).await {
        Ok(l) => l,
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": e })),
    };
    let now = Utc::now();
    let awaiting: Vec<AwaitingTrust> = listed
        .into_iter()
        .filter(|c| c.state == CertState::Rejected)
        .map(|c| AwaitingTrust {
            valid_now: valid_at(&c, now),
            devices: a.devices_of(&c),
            thumbprint: c.thumbprint,
            subject: c.subject,
            not_before: c.not_before,
            not_after: c.not_after,
            hosts: c.hosts,
            application_uri: c.application_uri,
            file: c.file,
            error: c.error,
        })
        .collect();
    answer(StatusCode::OK, json!({ "pki": a.pki, "certificates": awaiting }))
}

/// What the trust's file work found.
enum Found {
    Trusted(CertInfo),
    AlreadyTrusted(CertInfo),
    Unknown,
}

/// `POST /api/opcua/certificates/{thumbprint}/trust`.
async fn trust(
    State(actions): State<Shared>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Extension(who): Extension<Principal>,
    Path(thumbprint): Path<String>,
) -> Response {
    if let Err(refused) = auth::require(&who, Role::Operator) {
        return refused.into_response();
    }
    let Some(a) = actions else { return unavailable() };
    let wanted = thumbprint.to_ascii_lowercase();
    if wanted.len() != 40 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        count(&TRUST, Outcome::Invalid);
        let error = format!("{thumbprint:?} is not a certificate thumbprint (40 hex digits; GET /api/opcua/certificates lists them)");
        return answer(StatusCode::BAD_REQUEST, json!({ "error": error }));
    }
    let _one_at_a_time = a.trusting.lock().await;
    let (dir, w) = (a.pki.clone(), wanted.clone());
    let found = on_pki(move || {
        let all = pki::list(&dir)?;
        let is = |c: &&CertInfo, state| c.state == state && c.thumbprint.eq_ignore_ascii_case(&w);
        if let Some(c) = all.iter().find(|c| is(c, CertState::Trusted)) {
            return Ok(Found::AlreadyTrusted(c.clone()));
        }
        if !all.iter().any(|c| is(&c, CertState::Rejected)) {
            return Ok(Found::Unknown);
        }
        pki::trust(&dir, &w).map(Found::Trusted)
    })
    .await;
    let cert = match found {
        Ok(Found::Trusted(cert)) => cert,
        Ok(Found::AlreadyTrusted(cert)) => {
            count(&TRUST, Outcome::Already);
            let message = format!("the certificate {} [{}] is already trusted", cert.subject, cert.thumbprint);
            return answer(StatusCode::OK, json!({ "thumbprint": cert.thumbprint, "already": true, "message": message }));
        }
        Ok(Found::Unknown) => {
            count(&TRUST, Outcome::NotFound);
            let error =
                format!("no rejected certificate has the thumbprint {thumbprint}: GET /api/opcua/certificates lists those awaiting trust");
            return answer(StatusCode::NOT_FOUND, json!({ "error": error }));
        }
        Err(e) => {
            count(&TRUST, Outcome::Failed);
            error!(user = %who.name, thumbprint = %wanted, error = %e, "status page: a certificate could not be trusted");
            return answer(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": format!("the certificate could not be trusted: {e}") }));
        }
    };
    let devices = a.devices_of(&cert);
    let details = CertificateTrusted {
        thumbprint: cert.thumbprint.clone(),
        subject: cert.subject.clone(),
        not_after: cert.not_after.clone(),
        devices: devices.clone(),
        user: who.name.clone(),
        address: address(peer.0),
    };
    let draft = StoredEventDraft::now(a.gateway.as_str(), a.gateway.as_str(), Event::CertificateTrusted(details));
    let (dir, moved) = (a.pki.clone(), cert.clone());
    let undo = move || {
        // A rename, off the async workers; logged if even that fails.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = pki::untrust(&dir, &moved) {
                error!(error = %e, "a trust whose audit event could not be stored could not be taken back");
            }
        });
    };
    let recorded = a.record(draft, Box::new(undo)).await;
    let body = |message: String| json!({ "thumbprint": cert.thumbprint, "subject": cert.subject, "devices": devices, "already": false, "message": message });
    match recorded {
        Recorded::Stored | Recorded::Pending => {
            count(&TRUST, Outcome::Done);
            info!(user = %who.name, address = %peer.0.ip(), thumbprint = %cert.thumbprint, subject = %cert.subject, devices = ?devices, "status page: OPC-UA server certificate trusted");
            let message = format!("trusted {} [{}]: the OPC-UA devices try again now", cert.subject, cert.thumbprint);
            let status = if matches!(recorded, Recorded::Stored) { StatusCode::OK } else { StatusCode::ACCEPTED };
            answer(status, body(message))
        }
        Recorded::Failed(e) => {
            count(&TRUST, Outcome::Failed);
            error!(user = %who.name, thumbprint = %cert.thumbprint, error = %e, "status page: a trust could not be recorded; taken back");
            let error = format!("the trust could not be recorded (its audit event: {e}); the certificate stays rejected, try again");
            answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": error }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: &str, not_after: &str) -> CertInfo {
        CertInfo {
            state: CertState::Rejected,
            file: PathBuf::from("rejected/x.der"),
            thumbprint: "ab".repeat(20),
            subject: "CN=plc".into(),
            not_before: Some(not_before.into()),
            not_after: Some(not_after.into()),
            hosts: vec!["10.0.0.5".into()],
            application_uri: None,
            error: None,
        }
    }

    #[test]
    fn a_certificate_is_valid_between_its_two_dates_only() {
        let now = Utc::now();
        let at = |d: chrono::Duration| (now + d).to_rfc3339();
        assert!(valid_at(&cert(&at(-chrono::Duration::days(1)), &at(chrono::Duration::days(1))), now));
        assert!(!valid_at(&cert(&at(chrono::Duration::days(1)), &at(chrono::Duration::days(2))), now));
        assert!(!valid_at(&cert(&at(-chrono::Duration::days(2)), &at(-chrono::Duration::days(1))), now));
        assert!(!valid_at(&CertInfo { not_after: None, ..cert(&at(-chrono::Duration::days(1)), "") }, now));
    }

    #[test]
    fn every_action_and_result_is_counted_from_the_start() {
        // Given the counters of a process that did nothing yet (or something: they only rise)
        let all = counters();
        // Then both actions have every result
        for action in ["acknowledge", "trust_certificate"] {
            for result in ["done", "already", "not_found", "invalid", "failed"] {
                assert!(all.iter().any(|(a, r, _)| *a == action && *r == result), "{action}/{result} missing");
            }
        }
        assert_eq!(all.len(), 10);
    }
}
