//! A user of the status page: added to a users file through the real `edge-agent user add`,
//! logged in over plain HTTP/1.1 on loopback (`Connection: close`, written by hand as the
//! other page tests do), sending the session cookie, and the page's origin and CSRF token
//! with every `POST`, as the page's own script does.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Adds `name` with `role` to the users file `file` (the password on standard input).
pub fn add_user(file: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["user", "add", "--file"])
        .arg(file)
        .args([name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edge-agent user add");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write the password");
    let out = child.wait_with_output().expect("wait for edge-agent user add");
    assert!(out.status.success(), "user add {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An answer of the page: status code, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request to the page on 127.0.0.1:`port`.
pub async fn request(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut stream = tokio::net::TcpStream::connect(super::loopback(port)).await.expect("connect to the page");
    stream.write_all(raw.as_bytes()).await.expect("send the request");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes)).await.expect("an answer within 20 s").expect("read");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status code");
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Answer { status, headers, body: body.to_string() }
}

/// A logged-in user.
pub struct Session {
    pub port: u16,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// Logs `user` in with `password` (the login form, from the page's origin).
    pub async fn login(port: u16, user: &str, password: &str) -> Session {
        let form = format!("user={user}&password={password}");
        let origin = format!("http://127.0.0.1:{port}");
        let headers = [("Origin", origin), ("Content-Type", "application/x-www-form-urlencoded".to_string())];
        let r = request(port, "POST", "/login", &headers, &form).await;
        assert_eq!(r.status, 303, "login of {user}: {r:?}");
        let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).expect("a session cookie").to_string();
        let session = request(port, "GET", "/api/session", &[("Cookie", cookie.clone())], "").await;
        let csrf = session.json()["csrf"].as_str().expect("a CSRF token").to_string();
        Session { port, cookie, csrf }
    }

    pub async fn get(&self, path: &str) -> Answer {
        request(self.port, "GET", path, &[("Cookie", self.cookie.clone())], "").await
    }

    /// A `POST` as the page sends it: cookie, origin and CSRF token.
    pub async fn post(&self, path: &str) -> Answer {
        let headers = [("Cookie", self.cookie.clone()), ("Origin", self.origin()), ("X-CSRF-Token", self.csrf.clone())];
        request(self.port, "POST", path, &headers, "").await
    }

    /// A `POST` with the cookie and the origin, but without the CSRF token.
    pub async fn post_without_csrf(&self, path: &str) -> Answer {
        request(self.port, "POST", path, &[("Cookie", self.cookie.clone()), ("Origin", self.origin())], "").await
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
