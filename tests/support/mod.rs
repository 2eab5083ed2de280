//! Real protocol peers for the end-to-end tests: Debian's `mosquitto` on a free loopback
//! port, a tokio-modbus TCP server with a known register map, the real `edge-agent`
//! binary, and an MQTT subscriber that records everything it receives.
#![allow(dead_code)] // each test file uses a different part of the support code

pub mod agent;
pub mod broker;
pub mod browser;
pub mod demo;
pub mod page;
pub mod plc;
pub mod proxy;
pub mod subscriber;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < limit, "nothing listening on {addr} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the body (the status line must say 200).
pub async fn http_get(port: u16, path: &str) -> String {
    let (status, body) = http_get_any(port, path).await;
    assert!(status.starts_with("HTTP/1.1 200"), "GET {path}: {status}");
    body
}

/// A plain HTTP/1.1 GET on loopback, whatever its status: the status line and the body.
pub async fn http_get_any(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(loopback(port)).await.expect("connect to the status page");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("HTTP answer in 10 s").expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// The value of a series in Prometheus text: its name, and its labels exactly as written.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in /metrics"))
}

/// The JSON Schema `schemas/{file}` of the MQTT contract, compiled (draft 2020-12).
pub fn schema(file: &str) -> jsonschema::Validator {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::draft202012::options().build(&schema).unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}
