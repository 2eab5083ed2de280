//! Who may use the status page, and how they prove it.
//!
//! - **Open** (no `web.users_file`, loopback only): every `GET` is answered, every
//!   state-changing request is refused (the page is read-only).
//! - **Users**: `/healthz` and `/readyz` stay open; `/login` takes a user name and password
//!   (argon2id) and sets a signed session cookie ([`super::session`]); everything else needs
//!   that cookie, or for reading only (`GET`), an API token in `Authorization: Bearer`.
//!   A state-changing request (any method but `GET`/`HEAD`/`OPTIONS`) also needs
//!   - a session (tokens are read-only),
//!   - an `Origin` (or, without one, a `Referer`) of this very page,
//!   - the session's CSRF token in the `X-CSRF-Token` header, and
//!   - the role `operator`, except `/logout`.
//!
//! Failed logins are throttled per source address and per user name ([`super::throttle`]),
//! counted in `/metrics` and logged with the source address, at most once a minute per
//! address ([`edge_drivers::log_limit`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use edge_drivers::log_limit::LogLimit;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use super::config::{Access, WebSettings};
use super::revoked::Revoked;
use super::session::{Claims, Secret};
use super::throttle::LoginThrottle;
use super::users::{hash_fingerprint, verify_password, Role, Users, MAX_PASSWORD_BYTES};

/// The login form: inline CSS only, no script.
const LOGIN_PAGE: &str = include_str!("login.html");

/// The login page's HTML as embedded (for the CSP's hashes).
pub fn login_html_source() -> &'static str {
    LOGIN_PAGE
}
/// Where the login page's message goes.
const MESSAGE_SLOT: &str = "<!--MESSAGE-->";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session cookie is re-issued (its idle clock restarted) at most this often.
const REFRESH_AFTER: i64 = 60;
/// The users file is looked at again (changed? re-read) at most this often.
const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// Password checks at once: each takes 19 MiB and tens of milliseconds of a core.
const CONCURRENT_VERIFIES: usize = 2;

/// The address a request came from (the TCP peer; proxies' headers are not trusted).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Who is asking, put into every request's extensions by [`guard`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// Empty for the anonymous reader of an open page.
    pub name: String,
    pub role: Role,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An open page (no users file).
    Anonymous,
    /// A logged-in user; `csrf` is the session's CSRF token.
    Session { sid: String, issued: i64, csrf: String },
    /// An API token.
    Token,
}

// ---------- counters for /metrics (process-wide: they survive a reload of the page) ----------

static LOGIN_SUCCESS: AtomicU64 = AtomicU64::new(0);
static LOGIN_FAILURE: AtomicU64 = AtomicU64::new(0);
static LOGIN_LOCKED: AtomicU64 = AtomicU64::new(0);
static LOCKOUT_ADDRESS: AtomicU64 = AtomicU64::new(0);
static LOCKOUT_USER: AtomicU64 = AtomicU64::new(0);

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No cookie and no token.
    NoCredentials,
    /// A cookie that is forged, expired, logged out, of a removed user or an old secret.
    InvalidSession,
    /// A bearer token that is not in the users file.
    InvalidToken,
    /// A state-changing request from another origin, or without an origin.
    Origin,
    /// A state-changing request without the session's CSRF token.
    Csrf,
    /// The role (or a token, or an open page) may not do this.
    Role,
}

impl Refusal {
    pub const ALL: [Refusal; 6] =
        [Refusal::NoCredentials, Refusal::InvalidSession, Refusal::InvalidToken, Refusal::Origin, Refusal::Csrf, Refusal::Role];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::InvalidSession => "invalid_session",
            Refusal::InvalidToken => "invalid_token",
            Refusal::Origin => "origin",
            Refusal::Csrf => "csrf",
            Refusal::Role => "role",
        }
    }
}

static REFUSED: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// The login and refusal counters, for `/metrics` and `/api/session`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuthCounters {
    pub logins_success: u64,
    pub logins_failure: u64,
    /// Login attempts refused while the address or the user was locked.
    pub logins_locked: u64,
    pub lockouts_address: u64,
    pub lockouts_user: u64,
    #[serde(skip)]
    pub refused: [u64; 6],
}

pub fn counters() -> AuthCounters {
    AuthCounters {
        logins_success: LOGIN_SUCCESS.load(Ordering::Relaxed),
        logins_failure: LOGIN_FAILURE.load(Ordering::Relaxed),
        logins_locked: LOGIN_LOCKED.load(Ordering::Relaxed),
        lockouts_address: LOCKOUT_ADDRESS.load(Ordering::Relaxed),
        lockouts_user: LOCKOUT_USER.load(Ordering::Relaxed),
        refused: std::array::from_fn(|i| REFUSED[i].load(Ordering::Relaxed)),
    }
}

fn count_refusal(r: Refusal) {
    if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
        REFUSED[i].fetch_add(1, Ordering::Relaxed);
    }
}

// ---------- the guard's state ----------

/// The page's access control, built once per start of the agent.
#[derive(Debug)]
pub struct Guard {
    users: Option<UsersAuth>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

#[derive(Debug)]
struct UsersAuth {
    file: PathBuf,
    idle: i64,
    max: i64,
    /// Under TLS: `Secure` and the `__Host-` name prefix.
    secure: bool,
    secret: Secret,
    users: RwLock<Arc<Users>>,
    /// The users file's (modified, length) when read, and when that was last looked at.
    stamp: Mutex<(Option<(SystemTime, u64)>, Instant)>,
    /// Shared with the next page after a reload (see [`LoginThrottle`]).
    logins: Arc<LoginThrottle>,
    /// Logged-out sessions, kept in the data directory so that a logout survives a restart.
    revoked: Arc<Revoked>,
    log_limit: Mutex<LogLimit<String>>,
    verifies: Semaphore,
    /// A hash to check unknown users' passwords against, so they take as long as known ones.
    dummy_hash: String,
}

/// Locks a mutex, taking over a poisoned one (the data are counters and caches).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Guard {
    /// An open page: no users, no TLS (tests and the loopback default).
    pub fn open() -> Arc<Guard> {
        Arc::new(Guard { users: None, tls: None })
    }

    /// Loads what `settings` refer to: the users file, the session secret in `data_dir`
    /// (created on first use) and the TLS certificate and key. Every error names the key.
    /// `logins` is the failed-login throttle, kept by the caller across reloads.
    pub async fn load(settings: &WebSettings, data_dir: &Path, logins: Arc<LoginThrottle>) -> anyhow::Result<Arc<Guard>> {
        let (settings, data_dir) = (settings.clone(), data_dir.to_path_buf());
        tokio::task::spawn_blocking(move || Guard::load_blocking(&settings, &data_dir, logins)).await?
    }

    fn load_blocking(settings: &WebSettings, data_dir: &Path, logins: Arc<LoginThrottle>) -> anyhow::Result<Arc<Guard>> {
        use anyhow::Context as _;
        let tls = match &settings.tls {
            Some(files) => Some(super::tls::server_config(files)?),
            None => None,
        };
        let users = match &settings.access {
            Access::Open => None,
            Access::Users { file, session_idle, session_max } => {
                let list = Users::load(file).map_err(|e| anyhow::anyhow!("web.users_file: {e}"))?;
                if !list.entries.iter().any(|e| matches!(e, super::users::Entry::User { .. })) {
                    warn!(file = %file.display(), "the users file has no user: nobody can log in to the status page (edge-agent user add)");
                }
                let secret = Secret::load_or_create(data_dir).with_context(|| {
                    format!("cannot read or create the session key {}", data_dir.join(super::session::SECRET_FILE).display())
                })?;
                let revoked = Revoked::load(data_dir, session_max.as_secs() as i64, now_unix())
                    .with_context(|| "cannot read the logged-out sessions (gateway.data_dir)")?;
                let dummy_hash = super::users::hash_password("not a password: unknown users are checked against this")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(UsersAuth {
                    stamp: Mutex::new((file_stamp(file), Instant::now())),
                    file: file.clone(),
                    idle: session_idle.as_secs() as i64,
                    max: session_max.as_secs() as i64,
                    secure: tls.is_some(),
                    secret,
                    users: RwLock::new(Arc::new(list)),
                    logins,
                    revoked: Arc::new(revoked),
                    log_limit: Mutex::new(LogLimit::default()),
                    verifies: Semaphore::new(CONCURRENT_VERIFIES),
                    dummy_hash,
                })
            }
        };
        Ok(Arc::new(Guard { users, tls }))
    }

    pub fn tls(&self) -> Option<Arc<tokio_rustls::rustls::ServerConfig>> {
        self.tls.clone()
    }

    pub fn requires_login(&self) -> bool {
        self.users.is_some()
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl UsersAuth {
    fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-edge_session"
        } else {
            "edge_session"
        }
    }

    fn users(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_cookie(&self, value: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text = format!("{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}", self.cookie_name());
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("edge_session=; Max-Age=0"))
    }

    /// The session the request's cookie proves, with the user's role now, and a refreshed
    /// cookie when it is due.
    fn session(&self, headers: &HeaderMap, now: i64) -> Result<(Claims, Role, Option<HeaderValue>), Refusal> {
        let value = cookie(headers, self.cookie_name()).ok_or(Refusal::NoCredentials)?;
        let claims = self.secret.open(value).ok_or(Refusal::InvalidSession)?;
        let fresh = now - claims.seen <= self.idle && now - claims.issued <= self.max && claims.seen <= now + 300;
        if !fresh || self.revoked.contains(&claims.sid) {
            return Err(Refusal::InvalidSession);
        }
        let users = self.users();
        let (role, hash) = users.user(&claims.user).ok_or(Refusal::InvalidSession)?;
        if hash_fingerprint(hash) != claims.fingerprint {
            return Err(Refusal::InvalidSession);
        }
        let refresh = (now - claims.seen >= REFRESH_AFTER).then(|| {
            let renewed = Claims { seen: now, ..claims.clone() };
            self.set_cookie(&self.secret.seal(&renewed), self.idle)
        });
        Ok((claims, role, refresh))
    }

    /// Revokes session `sid` in memory at once and on disk before returning.
    async fn revoke(&self, sid: &str, issued: i64) {
        let (revoked, sid, max) = (self.revoked.clone(), sid.to_string(), self.max);
        let written = tokio::task::spawn_blocking(move || revoked.revoke(&sid, issued, max, now_unix())).await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        error!(error = %error, "status page: the logout could not be written to the data directory: it holds until the agent stops, not after");
    }

    fn log_limited(&self, key: String, f: impl FnOnce(u64)) {
        if let Some(suppressed) = lock(&self.log_limit).allow(key) {
            f(suppressed);
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Whether a state-changing request comes from this page.
///
/// A browser says so itself in `Sec-Fetch-Site` (a header no page script can set): when it
/// is there it must be `same-origin`. Under `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` with a POST, so `null` is no answer; a real `Origin` must be
/// `scheme://host` of the request. A client that sends neither `Sec-Fetch-Site` nor an
/// `Origin` needs a `Referer` under that origin; one that sends nothing at all is refused.
fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let expected =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|host| format!("{}://{host}", if tls { "https" } else { "http" }));
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).filter(|o| *o != "null");
    if let Some(origin) = origin {
        if !expected.as_deref().is_some_and(|e| origin.eq_ignore_ascii_case(e)) {
            return false;
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    if origin.is_some() {
        return true;
    }
    let (Some(expected), Some(r)) = (expected, headers.get(header::REFERER).and_then(|r| r.to_str().ok())) else { return false };
    r.get(..expected.len()).is_some_and(|p| p.eq_ignore_ascii_case(&expected)) && r[expected.len()..].starts_with('/')
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Paths anyone may fetch: liveness and readiness, and the login form itself.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login")
}

fn refuse(refusal: Refusal, message: &str) -> Response {
    count_refusal(refusal);
    let status = match refusal {
        Refusal::NoCredentials | Refusal::InvalidSession | Refusal::InvalidToken => StatusCode::UNAUTHORIZED,
        Refusal::Origin | Refusal::Csrf | Refusal::Role => StatusCode::FORBIDDEN,
    };
    let mut response =
        (status, [(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({ "error": message, "reason": refusal.as_str() })))
            .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"edge-agent\""));
    }
    response
}

/// The middleware in front of every route: authenticates, checks origin, CSRF and role of
/// state-changing requests, and puts the [`Principal`] into the request.
pub async fn guard(State(g): State<Arc<Guard>>, ConnectInfo(peer): ConnectInfo<Peer>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let changing = is_state_changing(req.method());
    let Some(auth) = g.users.as_ref() else {
        if changing {
            return refuse(Refusal::Role, "the page is read-only: no users are configured (web.users_file)");
        }
        req.extensions_mut().insert(Principal { name: String::new(), role: Role::Viewer, via: Via::Anonymous });
        req.extensions_mut().insert(Held { guard: g.clone(), by: HeldBy::Open });
        return next.run(req).await;
    };
    // Users added or removed meanwhile count from now on.
    refresh(&g).await;
    let headers = req.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let users = auth.users();
        let Some(name) = token.and_then(|t| users.token_owner(t)) else {
            auth.log_limited(format!("token:{}", peer.0.ip()), |suppressed| {
                warn!(address = %peer.0.ip(), path = %path, suppressed, "status page: a request with a wrong API token was refused");
            });
            return refuse(Refusal::InvalidToken, "the API token is not valid");
        };
        if changing {
            return refuse(Refusal::Role, "API tokens are read-only");
        }
        let (name, token) = (name.to_string(), token.unwrap_or_default().to_string());
        req.extensions_mut().insert(Principal { name, role: Role::Viewer, via: Via::Token });
        req.extensions_mut().insert(Held { guard: g.clone(), by: HeldBy::Token(token) });
        return next.run(req).await;
    }
    let (claims, role, refreshed) = match auth.session(headers, now_unix()) {
        Ok(s) => s,
        Err(refusal) => {
            // A person opening the page is sent to the form; programs get the 401.
            if req.method() == Method::GET && path == "/" {
                count_refusal(refusal);
                return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login"), (header::CACHE_CONTROL, "no-store")]).into_response();
            }
            return refuse(refusal, "log in first (POST /login), or send an API token");
        }
    };
    if changing {
        if !same_origin(headers, auth.secure) {
            auth.log_limited(format!("origin:{}", peer.0.ip()), |suppressed| {
                warn!(address = %peer.0.ip(), user = %claims.user, path = %path, suppressed, "status page: a state-changing request from another origin was refused");
            });
            return refuse(Refusal::Origin, "the request does not come from this page (Origin)");
        }
        let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !auth.secret.csrf_ok(&claims.sid, token) {
            auth.log_limited(format!("csrf:{}", peer.0.ip()), |suppressed| {
                warn!(address = %peer.0.ip(), user = %claims.user, path = %path, suppressed, "status page: a request without its CSRF token was refused");
            });
            return refuse(Refusal::Csrf, "the CSRF token is missing or wrong (X-CSRF-Token)");
        }
        if path != "/logout" && role < Role::Operator {
            auth.log_limited(format!("role:{}", peer.0.ip()), |suppressed| {
                warn!(address = %peer.0.ip(), user = %claims.user, role = %role, path = %path, suppressed, "status page: an operator action by a user without the operator role was refused");
            });
            return refuse(Refusal::Role, "this needs the operator role");
        }
    }
    let csrf = auth.secret.csrf_token(&claims.sid);
    req.extensions_mut().insert(Held { guard: g.clone(), by: HeldBy::Session(claims.clone()) });
    req.extensions_mut().insert(Principal {
        name: claims.user.clone(),
        role,
        via: Via::Session { sid: claims.sid, issued: claims.issued, csrf },
    });
    let mut response = next.run(req).await;
    if let Some(cookie) = refreshed {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// What a long-lived request (the event stream) was let in with, to check again while it
/// runs: put into every request's extensions by [`guard`].
#[derive(Debug, Clone)]
pub struct Held {
    guard: Arc<Guard>,
    by: HeldBy,
}

#[derive(Debug, Clone)]
enum HeldBy {
    /// An open page: nothing to end.
    Open,
    /// An API token (as sent).
    Token(String),
    Session(Claims),
}

impl Held {
    /// Whether the request may go on at `now` (unix seconds): its token is still in the users
    /// file; its session was not logged out, is within `session_max` of its login, and its
    /// user is still there with the same password. An open request counts as use of its
    /// session, so `session_idle` does not end it (see docs/access.md, Sessions).
    pub async fn holds(&self, now: i64) -> bool {
        let Some(auth) = self.guard.users.as_ref() else { return true };
        refresh(&self.guard).await;
        match &self.by {
            HeldBy::Open => true,
            HeldBy::Token(token) => auth.users().token_owner(token).is_some(),
            HeldBy::Session(claims) => {
                !auth.revoked.contains(&claims.sid)
                    && now - claims.issued <= auth.max
                    && auth.users().user(&claims.user).is_some_and(|(_, hash)| hash_fingerprint(hash) == claims.fingerprint)
            }
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    now_unix()
}

/// Reads the users file again when it changed (`edge-agent user …` while the agent runs),
/// at most every [`RELOAD_CHECK`]. A file that no longer parses keeps the last good list.
async fn refresh(g: &Arc<Guard>) {
    let Some(auth) = g.users.as_ref() else { return };
    {
        let mut stamp = lock(&auth.stamp);
        if stamp.1.elapsed() < RELOAD_CHECK {
            return;
        }
        stamp.1 = Instant::now();
    }
    let g = g.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let Some(auth) = g.users.as_ref() else { return };
        let now = file_stamp(&auth.file);
        if now == lock(&auth.stamp).0 {
            return;
        }
        match Users::load(&auth.file) {
            Ok(list) => {
                *auth.users.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(list);
                lock(&auth.stamp).0 = now;
                info!(file = %auth.file.display(), "the status page's users file changed: read again");
            }
            Err(e) => auth.log_limited("users-file".into(), |suppressed| {
                error!(error = %e, suppressed, "the users file cannot be read: the page keeps the users it had");
            }),
        }
    })
    .await;
}

// ---------- login, logout, session ----------

/// `/login`, `/logout` and `/api/session`, with the guard as their state.
pub fn routes(guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/api/session", get(session_info))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(guard)
}

fn login_html(message: &str) -> Html<String> {
    let block = if message.is_empty() { String::new() } else { format!("<p class=\"error\" role=\"alert\">{message}</p>") };
    Html(LOGIN_PAGE.replace(MESSAGE_SLOT, &block))
}

async fn login_page(State(g): State<Arc<Guard>>) -> Response {
    if !g.requires_login() {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    }
    ([(header::CACHE_CONTROL, "no-store")], login_html("")).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
}

async fn login(
    State(g): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(auth) = g.users.as_ref() else {
        return (StatusCode::NOT_FOUND, "no users are configured (web.users_file)").into_response();
    };
    let ip = peer.0.ip();
    if !same_origin(&headers, auth.secure) {
        count_refusal(Refusal::Origin);
        return (StatusCode::FORBIDDEN, [(header::CACHE_CONTROL, "no-store")], login_html("This form must be sent from this page."))
            .into_response();
    }
    refresh(&g).await;
    // Names are logged: keep them short and printable.
    let user: String = form.user.chars().filter(|c| !c.is_control()).take(64).collect();
    let now = Instant::now();
    let locked = {
        let (a, u) = (lock(&auth.logins.by_address).check(&ip, now), lock(&auth.logins.by_user).check(&user, now));
        a.err().max(u.err())
    };
    if let Some(wait) = locked {
        LOGIN_LOCKED.fetch_add(1, Ordering::Relaxed);
        auth.log_limited(format!("locked:{ip}"), |suppressed| {
            warn!(address = %ip, user = %user, wait_s = wait.as_secs(), suppressed, "status page: login refused, too many failed logins");
        });
        let secs = wait.as_secs().max(1);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string()), (header::CACHE_CONTROL, "no-store".to_string())],
            login_html(&format!("Too many failed logins. Try again in {secs} s.")),
        )
            .into_response();
    }
    let users = auth.users();
    let known = users.user(&user).map(|(role, hash)| (role, hash.to_string()));
    let hash = known.as_ref().map_or(auth.dummy_hash.clone(), |(_, h)| h.clone());
    let password = form.password;
    let ok = match auth.verifies.acquire().await {
        Ok(_permit) => {
            let checked =
                tokio::task::spawn_blocking(move || password.len() <= MAX_PASSWORD_BYTES && verify_password(&password, &hash)).await;
            checked.unwrap_or(false) && known.is_some()
        }
        Err(_) => false,
    };
    if let (true, Some((role, hash))) = (ok, known) {
        lock(&auth.logins.by_address).success(&ip);
        lock(&auth.logins.by_user).success(&user);
        LOGIN_SUCCESS.fetch_add(1, Ordering::Relaxed);
        info!(address = %ip, user = %user, role = %role, "status page: login");
        let claims = Claims::new(&user, hash_fingerprint(&hash), now_unix());
        let cookie = auth.set_cookie(&auth.secret.seal(&claims), auth.idle);
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/"), (header::CACHE_CONTROL, "no-store")]).into_response();
        response.headers_mut().append(header::SET_COOKIE, cookie);
        return response;
    }
    LOGIN_FAILURE.fetch_add(1, Ordering::Relaxed);
    let address_lock = lock(&auth.logins.by_address).failure(ip, now);
    let user_lock = lock(&auth.logins.by_user).failure(user.clone(), now);
    auth.log_limited(format!("failed:{ip}"), |suppressed| {
        warn!(address = %ip, user = %user, suppressed, "status page: failed login");
    });
    if let Some(lock) = address_lock {
        LOCKOUT_ADDRESS.fetch_add(1, Ordering::Relaxed);
        warn!(address = %ip, lock_s = lock.as_secs(), "status page: too many failed logins from this address: locked");
    }
    if let Some(lock) = user_lock {
        LOCKOUT_USER.fetch_add(1, Ordering::Relaxed);
        warn!(address = %ip, user = %user, lock_s = lock.as_secs(), "status page: too many failed logins for this user: locked");
    }
    (StatusCode::UNAUTHORIZED, [(header::CACHE_CONTROL, "no-store")], login_html("Wrong user name or password.")).into_response()
}

/// `POST /logout` (the guard checked session, origin and CSRF): the session id is revoked
/// and the cookie deleted.
async fn logout(State(g): State<Arc<Guard>>, Extension(who): Extension<Principal>) -> Response {
    let (Some(auth), Via::Session { sid, issued, .. }) = (g.users.as_ref(), &who.via) else {
        return refuse(Refusal::Role, "only a logged-in user can log out");
    };
    auth.revoke(sid, *issued).await;
    info!(user = %who.name, "status page: logout");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().append(header::SET_COOKIE, auth.set_cookie("", 0));
    response
}

/// `GET /api/session`: who is logged in, the CSRF token the page sends back, and the login
/// counters.
async fn session_info(State(g): State<Arc<Guard>>, Extension(who): Extension<Principal>) -> Response {
    let csrf = match &who.via {
        Via::Session { csrf, .. } => Some(csrf.clone()),
        _ => None,
    };
    let body = serde_json::json!({
        "login_required": g.requires_login(),
        "user": (!who.name.is_empty()).then_some(who.name.clone()),
        "role": who.role.as_str(),
        "csrf": csrf,
        "logins": counters(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// A refusal a handler returns (it counts and answers as the guard's do).
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub Refusal, pub &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

/// For handlers of state-changing requests: the guard already refused anyone below
/// `role`; this checks again where the action is taken.
pub fn require(who: &Principal, role: Role) -> Result<(), Refused> {
    if who.role >= role && matches!(who.via, Via::Session { .. }) {
        Ok(())
    } else {
        Err(Refused(Refusal::Role, "this needs the operator role"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn same_origin_needs_the_origin_or_referer_of_the_request_host() {
        // Given requests to host 10.0.0.5:8080 over HTTP
        let ok = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), false);
        // Then an Origin of that host passes, and so does a Referer under it without an Origin
        assert!(ok(&[("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8080")]));
        assert!(ok(&[("host", "10.0.0.5:8080"), ("referer", "http://10.0.0.5:8080/")]));
        // And another host, another scheme, a look-alike prefix, or nothing at all do not
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "http://evil.example")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "https://10.0.0.5:8080")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("referer", "http://10.0.0.5:8080.evil.example/")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "null")]));
        assert!(!ok(&[("host", "10.0.0.5:8080")]));
        assert!(!ok(&[("origin", "http://10.0.0.5:8080")]));
        // And under TLS the scheme is https
        assert!(same_origin(&headers(&[("host", "gw:8443"), ("origin", "https://gw:8443")]), true));
        // And a browser's own word decides: same-origin passes with the `null` origin that
        // no-referrer makes it send, cross-site does not even with a matching Origin
        assert!(ok(&[("host", "10.0.0.5:8080"), ("origin", "null"), ("sec-fetch-site", "same-origin")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8080"), ("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "null"), ("sec-fetch-site", "same-site")]));
        assert!(!ok(&[("host", "10.0.0.5:8080"), ("origin", "http://evil.example"), ("sec-fetch-site", "same-origin")]));
    }

    #[test]
    fn the_cookie_is_found_among_others_by_its_exact_name() {
        // Given two Cookie headers with look-alike names
        let h = headers(&[("cookie", "a=1; edge_session_x=2"), ("cookie", "edge_session=abc.def; b=3")]);
        // Then the exact name is found, and a missing one is not
        assert_eq!(cookie(&h, "edge_session"), Some("abc.def"));
        assert_eq!(cookie(&h, "__Host-edge_session"), None);
    }

    #[test]
    fn the_login_page_has_its_message_slot_and_no_script() {
        // Given the embedded login page
        // Then the message goes where the slot is, and it loads and runs nothing
        assert!(LOGIN_PAGE.contains(MESSAGE_SLOT));
        assert!(login_html("Wrong user name or password.")
            .0
            .contains("<p class=\"error\" role=\"alert\">Wrong user name or password.</p>"));
        for needle in ["<script", "http://", "https://", "src=", "url("] {
            assert!(!LOGIN_PAGE.contains(needle), "login page contains {needle:?}");
        }
    }
}
