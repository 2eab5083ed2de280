//! The agent's own HTTP server: the operator status page and the machine endpoints.
//!
//! - `GET /`: the status page, one self-contained file (no external assets: the plant
//!   floor has no internet). It polls `/api/status` every 2 s.
//! - `GET /api/status`: the [`Snapshot`](crate::live::Snapshot) as JSON, with the health
//!   verdict (`health`: state, ready, reasons) and the task register (`tasks`).
//! - `GET /healthz`: liveness, `200 ok` while the process serves HTTP.
//! - `GET /readyz`: readiness, `200 ready` unless a core task is down or the store cannot
//!   be written; then `503` and the reasons, one a line.
//! - `GET /metrics`: Prometheus text format 0.0.4.
//! - `GET /api/tags`, `GET /api/tags/{device}/{tag}/history?from=&to=&step=`: every tag
//!   with its value, and a tag's recent history (see [`crate::history::api`]).
//! - `GET /api/stream`: the status as Server-Sent Events, one `status` event a second, so
//!   the page updates without polling; the browser's `EventSource` reconnects by itself
//!   after an agent restart.
//! - `GET /login`, `POST /login`, `POST /logout`, `GET /api/session`: see [`auth`].
//! - `GET /api/events?since=&severity=&limit=`: the latest events, with who acknowledged them.
//! - `POST /api/events/{id}/ack`, `GET /api/opcua/certificates`,
//!   `POST /api/opcua/certificates/{thumbprint}/trust`: the operators' actions, see [`actions`].
//!
//! Every response carries the security headers of [`security_headers`]. Who may fetch what
//! is decided by [`auth::guard`], in front of every route (see `docs/access.md`).

pub mod actions;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod revoked;
pub mod session;
mod stream;
pub mod throttle;
pub mod tls;
pub mod users;

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::live::Live;
use actions::Actions;
use auth::{Guard, Peer};

/// The status page: inline CSS and vanilla JS, nothing fetched but `api/status`.
const PAGE: &str = include_str!("page.html");

/// Live values must never come from a browser or proxy cache.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

/// All routes, sharing `live`.
pub fn router(live: Live) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/api/tags", get(api_tags))
        .route("/api/tags/{device}/{tag}/history", get(api_history))
        .route("/api/sparklines", get(api_sparklines))
        .route("/api/events", get(api_events))
        .route("/api/stream", get(stream::status_events))
        .route("/trends.js", get(trends_js))
        .with_state(live)
}

/// [`router`] with the login routes and the operators' actions (`None`: every action
/// answers `503`), behind the [`auth::guard`] and the security headers.
pub fn app(live: Live, guard: Arc<Guard>, actions: Option<Arc<Actions>>) -> Router {
    router(live)
        .merge(auth::routes(guard.clone()))
        .merge(actions::routes(actions))
        .layer(axum::middleware::from_fn_with_state(guard, auth::guard))
        .layer(axum::middleware::map_response(security_headers))
}

/// Serves [`app`] on `listener` (over TLS when the guard has a certificate) until `cancel`
/// fires, then lets open requests finish. The caller binds the listener, so it can report
/// bind errors and the real port.
pub async fn serve(
    listener: TcpListener,
    live: Live,
    guard: Arc<Guard>,
    actions: Option<Arc<Actions>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let tls = guard.tls();
    let app = app(live, guard, actions).into_make_service_with_connect_info::<Peer>();
    let stop = async move { cancel.cancelled().await };
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
        Some(config) => axum::serve(tls::TlsListener::new(listener, config)?, app).with_graceful_shutdown(stop).await,
    }
}

/// The Content-Security-Policy: everything from our own origin only, the pages' inline
/// script and styles allowed by their SHA-256 (not `unsafe-inline`), no framing.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hashes = |tag: &str| -> String {
        [PAGE, auth::login_html_source()]
            .iter()
            .flat_map(|page| inline_blocks(page, tag))
            .map(|block| format!(" 'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(block.as_bytes()))))
            .collect()
    };
    let policy = format!(
        "default-src 'self'; script-src 'self'{}; style-src 'self'{}; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        hashes("script"),
        hashes("style")
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"))
});

/// The text of every `<tag>…</tag>` block of `page` (what a browser hashes for the CSP).
fn inline_blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// On every response, errors and redirects included.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin"));
    response
}

async fn page() -> impl IntoResponse {
    ([NO_STORE], Html(PAGE))
}

async fn status(State(live): State<Live>) -> impl IntoResponse {
    ([NO_STORE], Json(live.snapshot()))
}

async fn api_tags(State(live): State<Live>) -> impl IntoResponse {
    let snapshot = live.snapshot();
    ([NO_STORE], Json(crate::history::api::tags(&snapshot, live.history())))
}

async fn api_history(
    State(live): State<Live>,
    Path((device, tag)): Path<(String, String)>,
    Query(q): Query<crate::history::api::HistoryQuery>,
) -> axum::response::Response {
    match crate::history::api::series(live.history(), &device, &tag, &q, chrono::Utc::now()) {
        Ok(Some(series)) => ([NO_STORE], Json(series)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, [NO_STORE], format!("no history for tag {tag:?} of device {device:?}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, [NO_STORE], format!("{e}\n")).into_response(),
    }
}

/// Query of `/api/events`.
#[derive(Debug, Default, serde::Deserialize)]
struct EventsQuery {
    /// RFC 3339 time or a duration before now (`1h`).
    since: Option<String>,
    /// The lowest severity listed: `info`, `warning` or `critical`.
    severity: Option<String>,
    /// At most this many (default 100, at most 500).
    limit: Option<usize>,
}

async fn api_events(State(live): State<Live>, Query(q): Query<EventsQuery>) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, [NO_STORE], format!("{m}\n")).into_response();
    let since = match q.since.as_deref().map(|v| crate::history::api::time("since", v, chrono::Utc::now())).transpose() {
        Ok(since) => since,
        Err(e) => return bad(e.to_string()),
    };
    let severity = match q.severity.as_deref() {
        None => None,
        Some(s) => match crate::events::Severity::ALL.into_iter().find(|v| v.as_str() == s) {
            Some(v) => Some(v),
            None => return bad(format!("severity={s:?} is not one of info, warning, critical")),
        },
    };
    let limit = q.limit.unwrap_or(100).min(crate::recent_events::KEPT);
    ([NO_STORE], Json(live.events().list(since, severity, limit))).into_response()
}

async fn api_sparklines(State(live): State<Live>, Query(q): Query<crate::history::api::HistoryQuery>) -> axum::response::Response {
    match crate::history::api::sparklines(live.history(), &q, chrono::Utc::now()) {
        Ok(lines) => ([NO_STORE], Json(lines)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, [NO_STORE], format!("{e}\n")).into_response(),
    }
}

/// The page's trends (sparklines and the trend dialog), a script of its own so that the
/// page's Content-Security-Policy can allow scripts from our own origin only.
const TRENDS_JS: &str = include_str!("trends.js");

async fn trends_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), NO_STORE], TRENDS_JS)
}

async fn healthz() -> impl IntoResponse {
    ([NO_STORE], "ok")
}

async fn readyz(State(live): State<Live>) -> impl IntoResponse {
    let health = live.snapshot().health;
    if health.ready {
        return (StatusCode::OK, [NO_STORE], "ready".to_string());
    }
    let mut body = format!("not ready: {}\n", health.state.as_str());
    for r in &health.reasons {
        body.push_str(&format!("{}: {}\n", r.code.as_str(), r.message));
    }
    (StatusCode::SERVICE_UNAVAILABLE, [NO_STORE], body)
}

async fn prometheus(State(live): State<Live>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE), NO_STORE], metrics::render(&live.snapshot()))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chrono::Utc;
    use edge_drivers::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::live::{DeviceView, GatewayView, TagView};

    /// A response read off the wire: status code, raw header block, body.
    struct Response {
        status: u16,
        headers: String,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// A minimal HTTP/1.1 GET over a plain TCP stream; `Connection: close` lets us read
    /// to the end. Every response here has a `content-length` body, never chunked.
    async fn get(addr: SocketAddr, path: &str) -> Response {
        request(addr, "GET", path).await
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
        Response { status, headers: headers.to_string(), body: body.to_string() }
    }

    fn live_with_one_device() -> Live {
        let gateway = GatewayView { id: "gw-test".into(), site: "plant-1".into(), version: "0.1.0".into(), started_at: Some(Utc::now()) };
        let live = Live::new(gateway, &[]);
        live.update(|s| {
            let tag = TagView {
                name: "temperature".into(),
                unit: Some("°C".into()),
                value: Some(Value::Float(21.5)),
                quality: "good".into(),
                reason: None,
                ts: Some(Utc::now()),
            };
            let device = DeviceView {
                name: "press-1".into(),
                protocol: "modbus-tcp".into(),
                address: "10.0.0.10:502".into(),
                connected: true,
                tags: vec![tag],
                ..Default::default()
            };
            s.devices.insert(device.name.clone(), device);
        });
        live
    }

    async fn start(live: Live) -> (SocketAddr, CancellationToken, JoinHandle<std::io::Result<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, live, Guard::open(), None, cancel.clone()));
        (addr, cancel, server)
    }

    #[tokio::test]
    async fn the_real_server_answers_every_route_and_stops_on_cancel() {
        // Given the server on an ephemeral port, with one device in the live state
        let (addr, cancel, server) = start(live_with_one_device()).await;

        // When /healthz is fetched, then it is a plain 200 ok
        let health = get(addr, "/healthz").await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body, "ok");

        // When /api/status is fetched, then it is the JSON snapshot of what was put in Live
        let status = get(addr, "/api/status").await;
        assert_eq!(status.status, 200);
        assert!(status.header("content-type").is_some_and(|v| v.starts_with("application/json")));
        let json: serde_json::Value = serde_json::from_str(&status.body).expect("json body");
        assert_eq!(json["devices"]["press-1"]["tags"][0]["name"], "temperature");
        assert_eq!(json["devices"]["press-1"]["tags"][0]["value"], 21.5);
        assert_eq!(json["gateway"]["id"], "gw-test");

        // When / is fetched, then it is HTML that loads nothing from outside
        let page = get(addr, "/").await;
        assert_eq!(page.status, 200);
        assert!(page.header("content-type").is_some_and(|v| v.starts_with("text/html")));
        assert!(page.body.contains("api/status"));
        assert!(!page.body.contains("http://") && !page.body.contains("https://"), "external URL in page");
        assert!(!page.body.contains("src=\"//") && !page.body.contains("href=\"//"), "protocol-relative URL in page");

        // When /metrics is fetched, then it is Prometheus text 0.0.4 with the device's line
        let metrics = get(addr, "/metrics").await;
        assert_eq!(metrics.status, 200);
        assert!(metrics.header("content-type").is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
        assert!(metrics.body.lines().any(|l| l == "edge_agent_device_connected{device=\"press-1\"} 1"));

        // When the token is cancelled, then the server returns Ok
        cancel.cancel();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "server did not stop cleanly: {result:?}");
    }

    #[tokio::test]
    async fn readyz_fails_with_the_reasons_while_a_core_task_is_down() {
        // Given the server, and a core task running
        let live = live_with_one_device();
        live.update(|s| {
            let t = crate::live::TaskView { name: "uplink".into(), core: true, ..Default::default() };
            s.tasks.insert(t.name.clone(), t);
        });
        let (addr, cancel, _server) = start(live.clone()).await;
        // Then /readyz is 200 ready
        let ready = get(addr, "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
        // When the task goes down
        live.update(|s| {
            if let Some(t) = s.tasks.get_mut("uplink") {
                t.state = crate::live::TaskState::Restarting;
                t.last_exit = Some("panicked: boom".into());
            }
        });
        // Then /readyz is 503 with the verdict and the reason, and /api/status says the same
        let not_ready = get(addr, "/readyz").await;
        assert_eq!(not_ready.status, 503);
        assert!(not_ready.body.starts_with("not ready: fault\ntask_down: task uplink is down (panicked: boom)"), "{}", not_ready.body);
        let status: serde_json::Value = serde_json::from_str(&get(addr, "/api/status").await.body).expect("json");
        assert_eq!(status["health"]["state"], "fault");
        assert_eq!(status["health"]["ready"], false);
        assert_eq!(status["health"]["reasons"][0]["code"], "task_down");
        assert_eq!(status["tasks"]["uplink"]["state"], "restarting");
        cancel.cancel();
    }

    #[tokio::test]
    async fn the_actions_script_is_served_and_without_an_agent_behind_the_page_the_actions_are_unavailable() {
        // Given the server without the operators' actions (no outbox, no PKI)
        let (addr, cancel, _server) = start(Live::default()).await;
        // When the page's actions script is fetched, then it is served from the binary
        let js = get(addr, "/actions.js").await;
        assert_eq!(js.status, 200);
        assert!(js.header("content-type").is_some_and(|v| v.starts_with("text/javascript")));
        assert!(js.body.contains("var Actions"));
        // When the certificates are asked for, then the answer says the actions are unavailable
        let certs = get(addr, "/api/opcua/certificates").await;
        assert_eq!(certs.status, 503, "{}", certs.body);
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_unknown_path_is_not_found() {
        // Given the server
        let (addr, cancel, _server) = start(Live::default()).await;
        // When a path that is no route is fetched
        let response = get(addr, "/nope").await;
        // Then it is a 404
        assert_eq!(response.status, 404);
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_open_page_is_read_only_and_every_response_carries_the_security_headers() {
        // Given the server without users (loopback, open)
        let (addr, cancel, _server) = start(live_with_one_device()).await;
        // When the operator action is posted, then it is refused: an open page changes nothing
        let post = request(addr, "POST", "/api/events/ev-1/ack").await;
        assert_eq!(post.status, 403, "{}", post.body);
        assert!(post.body.contains("web.users_file"), "{}", post.body);
        // And the session says that no login is needed, with no CSRF token
        let session: serde_json::Value = serde_json::from_str(&get(addr, "/api/session").await.body).expect("json");
        assert_eq!((session["login_required"].as_bool(), session["csrf"].is_null()), (Some(false), true));
        // And every answer, the refusal and a 404 included, has the security headers, the
        // CSP allowing the page's inline script by its hash only
        for response in [post, get(addr, "/").await, get(addr, "/healthz").await, get(addr, "/nope").await] {
            let csp = response.header("content-security-policy").expect("CSP");
            assert!(csp.starts_with("default-src 'self'; script-src 'self' 'sha256-"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
            assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
        }
        cancel.cancel();
    }

    #[test]
    fn the_csp_hashes_are_those_of_the_inline_blocks_as_a_browser_computes_them() {
        // Given the page's one inline script
        let scripts = inline_blocks(PAGE, "script");
        assert_eq!(scripts.len(), 1);
        assert!(scripts[0].starts_with("\n\"use strict\";"));
        // Then the CSP names its SHA-256 (base64 of the exact text between the tags)
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(scripts[0].as_bytes()));
        assert!(CSP.to_str().expect("ascii").contains(&format!("'sha256-{hash}'")));
        // And the styles of the page and of the login form are there too
        assert_eq!(CSP.to_str().expect("ascii").matches("'sha256-").count(), 3);
    }

    #[test]
    fn the_page_is_self_contained() {
        // Given the embedded page
        // Then it references no external stylesheet, script, image or font: its script
        // files are served by the agent from the binary (`/trends.js`, `/actions.js`)
        let page = PAGE.replace(r#"<script src="trends.js"></script>"#, "").replace(r#"<script src="actions.js"></script>"#, "");
        // (the SVG namespace is a name, not an address anything is fetched from)
        let trends = TRENDS_JS.replace(r#""http://www.w3.org/2000/svg""#, "");
        let actions = include_str!("actions.js");
        for needle in ["http://", "https://", "<link", "src=", "@import", "url(", "@font-face"] {
            assert!(!page.contains(needle), "page contains {needle:?}");
            assert!(!trends.contains(needle), "trends.js contains {needle:?}");
            assert!(!actions.contains(needle), "actions.js contains {needle:?}");
        }
        for script in [TRENDS_JS, actions] {
            assert!(!script.contains("innerHTML") && !script.contains("outerHTML") && !script.contains("insertAdjacentHTML"));
        }
        // And it never inserts data as markup
        assert!(!PAGE.contains("innerHTML") && !PAGE.contains("outerHTML") && !PAGE.contains("insertAdjacentHTML"));
    }
}
