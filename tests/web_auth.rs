//! The status page off loopback: users, sessions, CSRF, roles, API tokens and TLS, against
//! the real `edge-agent` binary. The page listens on 0.0.0.0 (as on a gateway) and is
//! reached over loopback only; a second loopback address (127.0.0.2) stands for a second
//! client. Requests are plain HTTP/1.1 written by hand (`Connection: close`), as the other
//! tests of the page do, over TCP or over rustls with a test certificate made by `openssl`.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::agent::{config as agent_config, wait_exit, AgentProcess};
use support::{free_port, loopback, wait_listening};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;

const ALICE: &str = "alice-password-1";
const BOB: &str = "bob-password-22";

// ---------- the users file, through the real command line ----------

fn user_cmd(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edge-agent user");
    use std::io::Write as _;
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write the password");
    child.wait_with_output().expect("wait for edge-agent user")
}

fn add_user(file: &Path, name: &str, role: &str, password: &str) {
    let out = user_cmd(&["add", "--file", &file.display().to_string(), name, "--role", role], &format!("{password}\n"));
    assert!(out.status.success(), "user add {name}: {}", String::from_utf8_lossy(&out.stderr));
}

fn new_token(file: &Path, name: &str) -> String {
    let out = user_cmd(&["token", "--file", &file.display().to_string(), name], "");
    assert!(out.status.success(), "user token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

// ---------- an agent with the page on all interfaces ----------

struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    users: PathBuf,
    port: u16,
    agent: Option<AgentProcess>,
}

impl Gateway {
    /// A config with the page on 0.0.0.0, `web_extra` TOML lines in `[web]` (the users file
    /// is added unless `with_users` is false), one Modbus device and no broker (the driver
    /// and the uplink retry; neither matters here).
    fn new(with_users: bool, web_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let users = dir.path().join("web-users");
        let data = dir.path().join("data");
        let tag = "[[devices.tags]]\nname = \"speed\"\ntable = \"holding\"\naddress = 0\n";
        let mut text = agent_config(&data, free_port(), free_port(), port, tag);
        let users_line = if with_users { format!("users_file = \"{}\"\n", users.display()) } else { String::new() };
        text = text.replace(&format!("listen = \"127.0.0.1:{port}\"\n"), &format!("listen = \"0.0.0.0:{port}\"\n{users_line}{web_extra}"));
        assert!(text.contains("0.0.0.0"), "{text}");
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).expect("write config");
        Gateway { dir, config, users, port, agent: None }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn start(&mut self) {
        let log = self.dir.path().join("agent.log");
        self.agent = Some(AgentProcess::start(&self.config, log));
        wait_listening(loopback(self.port), Duration::from_secs(30)).await;
    }

    fn stop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            assert!(agent.terminate(Duration::from_secs(20)), "the agent did not stop cleanly");
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ---------- a hand-written HTTP/1.1 client ----------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `name=value` of the `Set-Cookie` header, and the whole header.
    fn cookie(&self) -> (String, String) {
        let set = self.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie in {self:?}"));
        (set.split(';').next().unwrap_or_default().to_string(), set.to_string())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    body: String,
}

impl<'a> Req<'a> {
    fn get(path: &'a str) -> Self {
        Req { method: "GET", path, headers: Vec::new(), body: String::new() }
    }
    fn post(path: &'a str) -> Self {
        Req { method: "POST", path, headers: Vec::new(), body: String::new() }
    }
    fn with(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn form(mut self, body: String) -> Self {
        self.body = body;
        self.with("Content-Type", "application/x-www-form-urlencoded")
    }

    fn raw(&self, port: u16) -> String {
        let mut text = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{}", self.body.len(), self.body));
        text
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, raw: &str) -> Reply {
    stream.write_all(raw.as_bytes()).await.expect("send request");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within 20 s")
        .expect("read answer");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status code");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: body.to_string() }
}

/// Sends `req` to the page from `from` (a loopback address).
async fn send_from(from: Ipv4Addr, port: u16, req: &Req<'_>) -> Reply {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind the client address");
    let stream = socket.connect(loopback(port)).await.expect("connect to the page");
    exchange(stream, &req.raw(port)).await
}

async fn send(port: u16, req: &Req<'_>) -> Reply {
    send_from(Ipv4Addr::LOCALHOST, port, req).await
}

fn login_form(user: &str, password: &str) -> String {
    format!("user={user}&password={password}")
}

/// Logs in and returns the session cookie (`name=value`).
async fn login(gw: &Gateway, user: &str, password: &str) -> String {
    let r = send(gw.port, &Req::post("/login").with("Origin", gw.origin()).form(login_form(user, password))).await;
    assert_eq!(r.status, 303, "login of {user}: {r:?}");
    assert_eq!(r.header("location"), Some("/"));
    r.cookie().0
}

/// The CSRF token of the session `cookie`.
async fn csrf(gw: &Gateway, cookie: &str) -> String {
    let r = send(gw.port, &Req::get("/api/session").with("Cookie", cookie)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["csrf"].as_str().expect("csrf token").to_string()
}

/// Checks Prometheus text format 0.0.4 line by line; returns the samples as (series, value).
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(valid_name(name), "bad metric name in {line:?}");
            if line.starts_with("# TYPE ") {
                let kind = rest.split(' ').nth(1).unwrap_or_default();
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type in {line:?}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels in {line:?}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no sample {series}"))
}

fn assert_security_headers(r: &Reply, what: &str) {
    let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP"));
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("*"), "{what}: {csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
}

// ---------- the tests ----------

#[tokio::test]
async fn given_the_page_on_all_interfaces_without_users_then_check_config_and_run_refuse_naming_web_users_file() {
    // Given a config whose page listens on 0.0.0.0 with no users file
    let gw = Gateway::new(false, "");

    // When check-config reads it, then it is refused with the key that fixes it
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent")).arg("check-config").arg(&gw.config).output().expect("check-config");
    let report = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(report.contains("web.listen") && report.contains("is not a loopback address") && report.contains("web.users_file"), "{report}");

    // When the agent is run with it, then it exits with the same report and never listens
    let mut child = support::agent::command(&gw.config).stderr(Stdio::piped()).spawn().expect("start edge-agent");
    let status = wait_exit(&mut child, Duration::from_secs(20)).expect("the agent exits by itself");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("web.users_file"), "{stderr}");
    assert!(TcpStream::connect(loopback(gw.port)).await.is_err(), "something listens on the page's port");
}

#[tokio::test]
async fn a_wrong_password_is_401_and_five_failures_lock_the_address_and_the_user_even_for_the_right_password() {
    // Given an agent on 0.0.0.0 with two users and a scraper token
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    add_user(&gw.users, "bob", "viewer", BOB);
    let token = new_token(&gw.users, "prometheus");
    gw.start().await;

    // When alice's password is wrong four times, then each is a 401 with the form again
    let wrong = Req::post("/login").with("Origin", gw.origin()).form(login_form("alice", "not-her-password"));
    for i in 1..=4 {
        let r = send(gw.port, &wrong).await;
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
        assert!(r.body.contains("Wrong user name or password.") && r.header("set-cookie").is_none(), "attempt {i}");
    }
    // And the fifth failure (a 401 too) locks: then the right password is refused unchecked
    assert_eq!(send(gw.port, &wrong).await.status, 401);
    let right = Req::post("/login").with("Origin", gw.origin()).form(login_form("alice", ALICE));
    let locked = send(gw.port, &right).await;
    assert_eq!(locked.status, 429, "{locked:?}");
    let retry: u64 = locked.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert!(locked.header("set-cookie").is_none());

    // And from another address, alice is still locked (per user) but bob is not (per address)
    let other = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(send_from(other, gw.port, &right).await.status, 429);
    let bob = Req::post("/login").with("Origin", gw.origin()).form(login_form("bob", BOB));
    assert_eq!(send_from(other, gw.port, &bob).await.status, 303);
    // While the first address is locked for everyone
    assert_eq!(send(gw.port, &bob).await.status, 429);

    // Then /metrics counts each outcome and both lockouts
    let r = send(gw.port, &Req::get("/metrics").with("Authorization", format!("Bearer {token}"))).await;
    assert_eq!(r.status, 200);
    let samples = parse_prometheus(&r.body);
    assert_eq!(sample(&samples, "edge_agent_web_logins_total{result=\"failure\"}"), 5.0);
    assert_eq!(sample(&samples, "edge_agent_web_logins_total{result=\"locked\"}"), 3.0);
    assert_eq!(sample(&samples, "edge_agent_web_logins_total{result=\"success\"}"), 1.0);
    assert_eq!(sample(&samples, "edge_agent_web_lockouts_total{scope=\"address\"}"), 1.0);
    assert_eq!(sample(&samples, "edge_agent_web_lockouts_total{scope=\"user\"}"), 1.0);

    // And the log names the address, with the failed logins of one address in one line a minute
    let log = gw.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("status page: failed login")).collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(failed[0].contains("127.0.0.1") && failed[0].contains("alice"), "{}", failed[0]);
    assert!(log.lines().any(|l| l.contains("locked") && l.contains("127.0.0.1")), "{log}");
    gw.stop();
}

#[tokio::test]
async fn a_reload_does_not_lift_a_login_lock_nor_forget_the_failures_counted_so_far() {
    // Given an agent with alice, bob and carol
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    add_user(&gw.users, "bob", "viewer", BOB);
    add_user(&gw.users, "carol", "viewer", BOB);
    gw.start().await;
    // And alice locked by five wrong passwords from 127.0.0.1, and four wrong ones for bob from 127.0.0.2
    let wrong = |user: &str| Req::post("/login").with("Origin", gw.origin()).form(login_form(user, "not-the-password"));
    for _ in 0..5 {
        assert_eq!(send(gw.port, &wrong("alice")).await.status, 401);
    }
    let other = Ipv4Addr::new(127, 0, 0, 2);
    for _ in 0..4 {
        assert_eq!(send_from(other, gw.port, &wrong("bob")).await.status, 401);
    }
    let right = |user: &str, pw: &str| Req::post("/login").with("Origin", gw.origin()).form(login_form(user, pw));
    assert_eq!(send_from(other, gw.port, &right("alice", ALICE)).await.status, 429);

    // When the config is reloaded (SIGHUP, as `systemctl reload` sends; the `reload` command does the same)
    let runs = |log: &str| log.lines().filter(|l| l.contains("agent running")).count();
    let before = support::wait_for("the agent running", Duration::from_secs(30), || Some(runs(&gw.log())).filter(|n| *n > 0)).await;
    let reloaded = |log: &str| runs(log) > before;
    gw.agent.as_ref().expect("running").signal("HUP");
    support::wait_for("the agent running again after the reload", Duration::from_secs(30), || reloaded(&gw.log()).then_some(())).await;
    wait_listening(loopback(gw.port), Duration::from_secs(30)).await;
    assert!(gw.log().contains("restarting with the reloaded config"), "{}", gw.log());

    // Then alice is still locked, from another address too, with the right password
    let locked = send_from(other, gw.port, &right("alice", ALICE)).await;
    assert_eq!(locked.status, 429, "{locked:?}");
    // And 127.0.0.1 is still locked for everyone
    assert_eq!(send(gw.port, &right("carol", BOB)).await.status, 429);
    // And bob's fifth failure, the first after the reload, locks him
    assert_eq!(send_from(other, gw.port, &wrong("bob")).await.status, 401);
    assert_eq!(send_from(Ipv4Addr::new(127, 0, 0, 3), gw.port, &right("bob", BOB)).await.status, 429);
    gw.stop();
}

#[tokio::test]
async fn a_session_cookie_survives_a_restart_but_not_a_rotated_secret_nor_a_logout() {
    // Given an agent with alice, and her session cookie
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    gw.start().await;
    let cookie = login(&gw, "alice", ALICE).await;
    assert!(cookie.starts_with("edge_session="), "{cookie}");
    let status = || Req::get("/api/status").with("Cookie", cookie.clone());
    assert_eq!(send(gw.port, &status()).await.status, 200);
    // And the session key in the data directory is private
    let key = gw.data_dir().join("web-session.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).expect("session key").permissions().mode() & 0o777, 0o600);

    // When the agent restarts with the same key, then the cookie still opens the page
    gw.stop();
    gw.start().await;
    let after_restart = send(gw.port, &status()).await;
    assert_eq!(after_restart.status, 200, "{after_restart:?}");

    // When it restarts after the key was deleted (rotated), then the cookie is refused
    gw.stop();
    std::fs::remove_file(&key).expect("delete the session key");
    gw.start().await;
    let rotated = send(gw.port, &status()).await;
    assert_eq!(rotated.status, 401, "{rotated:?}");
    assert_eq!(rotated.json()["reason"], "invalid_session");
    // And a person opening the page with it is sent to the login form
    let page = send(gw.port, &Req::get("/").with("Cookie", cookie.clone())).await;
    assert_eq!((page.status, page.header("location")), (303, Some("/login")));

    // When alice logs in again and logs out, then that cookie is refused too
    let fresh = login(&gw, "alice", ALICE).await;
    let token = csrf(&gw, &fresh).await;
    let out =
        send(gw.port, &Req::post("/logout").with("Cookie", fresh.clone()).with("Origin", gw.origin()).with("X-CSRF-Token", token)).await;
    assert_eq!(out.status, 204, "{out:?}");
    assert!(out.cookie().1.contains("Max-Age=0"), "{out:?}");
    assert_eq!(send(gw.port, &Req::get("/api/status").with("Cookie", fresh)).await.status, 401);
    gw.stop();
}

#[tokio::test]
async fn a_logged_out_session_cookie_is_still_refused_after_the_agent_restarts() {
    // Given an agent with alice, and a copy of her session cookie
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    gw.start().await;
    let cookie = login(&gw, "alice", ALICE).await;
    let status = || Req::get("/api/status").with("Cookie", cookie.clone());
    assert_eq!(send(gw.port, &status()).await.status, 200);
    // When she logs out, then the copy is refused
    let token = csrf(&gw, &cookie).await;
    let out =
        send(gw.port, &Req::post("/logout").with("Cookie", cookie.clone()).with("Origin", gw.origin()).with("X-CSRF-Token", token)).await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(send(gw.port, &status()).await.status, 401);
    // And the logout is in the data directory, private, beside the unchanged session key
    let file = gw.data_dir().join("web-sessions-revoked");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).expect("revoked sessions file").permissions().mode() & 0o777, 0o600);

    // When the agent restarts on the same data directory (same key)
    gw.stop();
    gw.start().await;
    // Then the logged-out copy is still refused, while a new login works
    let after = send(gw.port, &status()).await;
    assert_eq!(after.status, 401, "{after:?}");
    assert_eq!(after.json()["reason"], "invalid_session");
    let fresh = login(&gw, "alice", ALICE).await;
    assert_eq!(send(gw.port, &Req::get("/api/status").with("Cookie", fresh)).await.status, 200);
    gw.stop();
}

#[tokio::test]
async fn an_open_event_stream_ends_when_its_session_is_logged_out_while_another_session_streams_on() {
    // Given alice and bob logged in, each with the live stream open
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    add_user(&gw.users, "bob", "viewer", BOB);
    gw.start().await;
    let alice = login(&gw, "alice", ALICE).await;
    let bob = login(&gw, "bob", BOB).await;
    let port = gw.port;
    let stream = |cookie: String| tokio::spawn(async move { send(port, &Req::get("/api/stream").with("Cookie", cookie)).await });
    let (alice_stream, bob_stream) = (stream(alice.clone()), stream(bob.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!alice_stream.is_finished() && !bob_stream.is_finished(), "a stream ended by itself");

    // When alice logs out (on another connection, as the page does)
    let token = csrf(&gw, &alice).await;
    let out =
        send(gw.port, &Req::post("/logout").with("Cookie", alice.clone()).with("Origin", gw.origin()).with("X-CSRF-Token", token)).await;
    assert_eq!(out.status, 204, "{out:?}");

    // Then her stream says so and ends within a few seconds, after the status it had sent
    let ended = tokio::time::timeout(Duration::from_secs(5), alice_stream).await.expect("alice's stream ends").expect("task");
    assert_eq!(ended.status, 200);
    assert!(ended.body.contains("event: status") && ended.body.contains("event: end"), "{}", ended.body);
    // And a new stream with her cookie is refused (the browser's reconnect)
    let again = send(gw.port, &Req::get("/api/stream").with("Cookie", alice)).await;
    assert_eq!(again.status, 401, "{again:?}");
    // And bob's stream goes on
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!bob_stream.is_finished(), "bob's stream ended");
    bob_stream.abort();
    gw.stop();
}

#[tokio::test]
async fn a_state_changing_request_needs_the_csrf_token_and_the_page_origin_and_a_viewer_is_refused_the_operator_action() {
    // Given an operator and a viewer, both logged in, and a token
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    add_user(&gw.users, "bob", "viewer", BOB);
    let scraper = new_token(&gw.users, "scraper");
    gw.start().await;
    let alice = login(&gw, "alice", ALICE).await;
    let alice_csrf = csrf(&gw, &alice).await;
    let ack = || Req::post("/api/events/ev-1/ack").with("Cookie", alice.clone());

    // When the operator's POST has no CSRF token, then it is refused
    let r = send(gw.port, &ack().with("Origin", gw.origin())).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("csrf")), "{r:?}");
    // When the token is another session's, then it is refused
    let bob = login(&gw, "bob", BOB).await;
    let bob_csrf = csrf(&gw, &bob).await;
    let r = send(gw.port, &ack().with("Origin", gw.origin()).with("X-CSRF-Token", bob_csrf.clone())).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("csrf")), "{r:?}");
    // When it comes from another origin, or from none, then it is refused
    let r = send(gw.port, &ack().with("Origin", "http://evil.example").with("X-CSRF-Token", alice_csrf.clone())).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("origin")), "{r:?}");
    let r = send(gw.port, &ack().with("X-CSRF-Token", alice_csrf.clone())).await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("origin")), "{r:?}");
    // When an API token tries it, then it is refused (tokens are read-only)
    let r =
        send(gw.port, &Req::post("/api/events/ev-1/ack").with("Authorization", format!("Bearer {scraper}")).with("Origin", gw.origin()))
            .await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("role")), "{r:?}");

    // When the viewer sends it right (own CSRF token, this origin), then the role refuses it
    let r =
        send(gw.port, &Req::post("/api/events/ev-1/ack").with("Cookie", bob).with("Origin", gw.origin()).with("X-CSRF-Token", bob_csrf))
            .await;
    assert_eq!((r.status, r.json()["reason"].as_str()), (403, Some("role")), "{r:?}");

    // When the operator sends it right, then it passes every check, to find no such event
    let r = send(gw.port, &ack().with("Origin", gw.origin()).with("X-CSRF-Token", alice_csrf)).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["event"].as_str(), Some("ev-1"));
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("\"ev-1\"")), "{r:?}");

    // And a login form posted from another origin is refused without checking the password
    let r = send(gw.port, &Req::post("/login").with("Origin", "http://evil.example").form(login_form("alice", ALICE))).await;
    assert_eq!(r.status, 403);
    // And a browser's own word counts: under no-referrer it sends `Origin: null` with
    // `Sec-Fetch-Site`, which passes when same-origin and not when cross-site
    let browser =
        |site: &str| Req::post("/login").with("Origin", "null").with("Sec-Fetch-Site", site.to_string()).form(login_form("alice", ALICE));
    assert_eq!(send(gw.port, &browser("cross-site")).await.status, 403);
    assert_eq!(send(gw.port, &browser("same-origin")).await.status, 303);
    gw.stop();
}

#[tokio::test]
async fn a_bearer_token_reads_metrics_a_wrong_one_does_not_and_health_stays_open_with_security_headers_everywhere() {
    // Given an agent with users and a scraper token
    let mut gw = Gateway::new(true, "");
    add_user(&gw.users, "alice", "operator", ALICE);
    let token = new_token(&gw.users, "prometheus");
    assert!(token.starts_with("eat_") && token.len() > 40, "{token}");
    assert!(!std::fs::read_to_string(&gw.users).expect("users file").contains(&token), "the token is stored in clear");
    gw.start().await;

    // When /metrics is fetched with the token, then it is Prometheus text that parses
    let r = send(gw.port, &Req::get("/metrics").with("Authorization", format!("Bearer {token}"))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").is_some_and(|v| v.starts_with("text/plain; version=0.0.4")));
    let samples = parse_prometheus(&r.body);
    assert!(samples.len() > 50, "{} samples", samples.len());
    assert_eq!(sample(&samples, "edge_agent_web_requests_refused_total{reason=\"invalid_token\"}"), 0.0);
    assert_security_headers(&r, "/metrics");

    // When it is fetched with a wrong token, or none, then it is a 401
    let wrong = send(gw.port, &Req::get("/metrics").with("Authorization", format!("Bearer {}x", token))).await;
    assert_eq!((wrong.status, wrong.json()["reason"].as_str()), (401, Some("invalid_token")));
    assert!(wrong.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert_security_headers(&wrong, "401");
    let none = send(gw.port, &Req::get("/metrics")).await;
    assert_eq!((none.status, none.json()["reason"].as_str()), (401, Some("no_credentials")));
    let api = send(gw.port, &Req::get("/api/status")).await;
    assert_eq!(api.status, 401);

    // Then /healthz and /readyz answer without credentials and say nothing but their verdict
    let health = send(gw.port, &Req::get("/healthz")).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_security_headers(&health, "/healthz");
    let ready = send(gw.port, &Req::get("/readyz")).await;
    assert!(ready.body == "ready" || ready.body.starts_with("not ready: "), "{ready:?}");
    assert!(!ready.body.contains("alice") && !ready.body.contains("gw-test"), "{ready:?}");
    // And the login form is there, and an unknown path is a 401 before it is a 404
    let form = send(gw.port, &Req::get("/login")).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"password\""));
    assert_security_headers(&form, "/login");
    assert_eq!(send(gw.port, &Req::get("/nope")).await.status, 401);

    // And a user added while the agent runs can log in within seconds, with the page's headers
    add_user(&gw.users, "carol", "viewer", "carol-password-3");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let carol = login(&gw, "carol", "carol-password-3").await;
    let page = send(gw.port, &Req::get("/").with("Cookie", carol.clone())).await;
    assert_eq!(page.status, 200);
    assert_security_headers(&page, "/");
    let session = send(gw.port, &Req::get("/api/session").with("Cookie", carol)).await.json();
    assert_eq!((session["user"].as_str(), session["role"].as_str()), (Some("carol"), Some("viewer")));

    // And the refused token shows in /metrics
    let r = send(gw.port, &Req::get("/metrics").with("Authorization", format!("Bearer {token}"))).await;
    let samples = parse_prometheus(&r.body);
    assert_eq!(sample(&samples, "edge_agent_web_requests_refused_total{reason=\"invalid_token\"}"), 1.0);
    gw.stop();
}

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
fn test_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("web.pem"), dir.join("web.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (apt-get install -y openssl)");
    assert!(status.success(), "openssl req -x509 failed");
    (cert, key)
}

async fn send_tls(port: u16, ca: &Path, req: &Req<'_>) -> Reply {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read cert") {
        roots.add(cert.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(loopback(port)).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = connector.connect(name, tcp).await.expect("TLS handshake with the page");
    exchange(tls, &req.raw(port)).await
}

#[tokio::test]
async fn the_page_serves_https_with_a_test_certificate_and_its_cookie_is_secure() {
    // Given an agent with [web.tls] and a self-signed certificate for 127.0.0.1
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = test_certificate(dir.path());
    let tls = format!("\n[web.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display());
    let mut gw = Gateway::new(true, &tls);
    add_user(&gw.users, "alice", "operator", ALICE);
    gw.start().await;
    let origin = format!("https://127.0.0.1:{}", gw.port);

    // When alice logs in over HTTPS
    let r = send_tls(gw.port, &cert, &Req::post("/login").with("Origin", origin.clone()).form(login_form("alice", ALICE))).await;
    assert_eq!(r.status, 303, "{r:?}");
    // Then the cookie is Secure, HttpOnly, SameSite=Strict, with the __Host- prefix
    let (cookie, set) = r.cookie();
    assert!(cookie.starts_with("__Host-edge_session="), "{set}");
    for attribute in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing in {set}");
    }
    // And it opens the status over HTTPS, with the security headers
    let status = send_tls(gw.port, &cert, &Req::get("/api/status").with("Cookie", cookie.clone())).await;
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.json()["gateway"]["id"], "gw-test");
    assert_security_headers(&status, "/api/status over TLS");
    // And an origin of plain http is not this page's
    let csrf = send_tls(gw.port, &cert, &Req::get("/api/session").with("Cookie", cookie.clone())).await.json()["csrf"]
        .as_str()
        .expect("csrf")
        .to_string();
    let http_origin = send_tls(
        gw.port,
        &cert,
        &Req::post("/api/events/e/ack").with("Cookie", cookie).with("Origin", gw.origin()).with("X-CSRF-Token", csrf),
    )
    .await;
    assert_eq!(http_origin.status, 403);

    // When plain HTTP is sent to the TLS port, then no HTTP answer comes back
    let mut plain = TcpStream::connect(loopback(gw.port)).await.expect("connect");
    plain.write_all(Req::get("/healthz").raw(gw.port).as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut bytes)).await;
    assert!(!String::from_utf8_lossy(&bytes).contains("HTTP/1.1 200"), "plain HTTP was answered");
    gw.stop();
}

#[tokio::test]
async fn the_user_command_keeps_a_private_file_refuses_short_passwords_and_takes_none_from_the_arguments() {
    // Given no users file yet
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("users");
    let f = file.display().to_string();

    // When a user is added, then the file exists with mode 0600 and an argon2id hash
    add_user(&file, "alice", "operator", ALICE);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).expect("users file").permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    let line = text.lines().find(|l| l.starts_with("alice ")).expect("alice line").to_string();
    assert!(line.starts_with("alice operator $argon2id$") && !text.contains(ALICE), "{text}");

    // When the same name is added again, or a short password is given, then nothing changes
    assert!(!user_cmd(&["add", "--file", &f, "alice", "--role", "viewer"], "another-password\n").status.success());
    let short = user_cmd(&["add", "--file", &f, "bob", "--role", "viewer"], "short\n");
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("at least 8"));
    // And a password on the command line is not an option at all
    let argv = user_cmd(&["add", "--file", &f, "bob", "--role", "viewer", "--password", "secret-secret"], "");
    assert!(!argv.status.success());
    assert_eq!(std::fs::read_to_string(&file).expect("read"), text);

    // When the password changes, then the hash does and the role stays
    let out = user_cmd(&["passwd", "--file", &f, "alice"], "a-new-password\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changed = std::fs::read_to_string(&file).expect("read");
    let new_line = changed.lines().find(|l| l.starts_with("alice ")).expect("alice line");
    assert!(new_line.starts_with("alice operator $argon2id$") && new_line != line);

    // When a token is made and the user removed, then list shows what is left
    new_token(&file, "scraper");
    assert!(user_cmd(&["remove", "--file", &f, "alice"], "").status.success());
    let list = user_cmd(&["list", "--file", &f], "");
    assert_eq!(String::from_utf8_lossy(&list.stdout), "scraper token\n");
    assert_eq!(std::fs::metadata(&file).expect("users file").permissions().mode() & 0o777, 0o600);
    // And no temporary file is left beside it
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names, vec!["users".to_string()]);
}

#[test]
fn the_web_example_of_docs_access_md_is_a_valid_config_that_requires_login_over_tls() {
    // Given the first TOML example of docs/access.md, in a config with a gateway section
    let doc = include_str!("../docs/access.md");
    let start = doc.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let example = &doc[start..start + doc[start..].find("```").expect("its end")];
    let text = format!("[gateway]\nid = \"gw-01\"\nsite = \"plant\"\ndata_dir = \"/var/lib/edge-agent\"\n\n{example}");
    // When it is loaded and built
    let config = edge_agent::config::load_str(&text, "docs/access.md").unwrap_or_else(|e| panic!("refused:\n{e}"));
    let web = config.web.build().expect("valid [web]");
    // Then it listens on all interfaces, with users and TLS
    assert!(web.listen.ip().is_unspecified());
    assert!(matches!(web.access, edge_agent::web::config::Access::Users { .. }));
    assert!(web.tls.is_some());
}
