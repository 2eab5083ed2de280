//! `edge-agent modbus read` and `edge-agent modbus scan`, run as the real binary against
//! a real tokio-modbus server on loopback (TCP) and on a socat pty pair (RTU).

use std::collections::HashMap;
use std::future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// Units 3 and 7 exist; 3 maps holding registers 100..104, 7 maps nothing (it answers
/// every read with an exception). Every other unit id is silent.
#[derive(Clone)]
struct Plant {
    holding: HashMap<u16, u16>,
}

impl Plant {
    fn new() -> Self {
        // 1234.5 as f32 word-swapped (CDAB), then "ABC" as text.
        let holding = [(100, 0x5000), (101, 0x449A), (102, 0x4142), (103, 0x4300)].into_iter().collect();
        Self { holding }
    }
}

impl tokio_modbus::server::Service for Plant {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(match (req.slave, req.request) {
            (3, Request::ReadHoldingRegisters(a, n)) => (0..n)
                .map(|i| self.holding.get(&(a + i)).copied().ok_or(ExceptionCode::IllegalDataAddress))
                .collect::<Result<Vec<u16>, _>>()
                .map(|w| Some(Response::ReadHoldingRegisters(w))),
            (3 | 7, _) => Err(ExceptionCode::IllegalDataAddress),
            _ => Ok(None),
        })
    }
}

async fn serve_tcp(cancel: CancellationToken) -> std::net::SocketAddr {
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream, socket_addr| async move { accept_tcp_connection(stream, socket_addr, |_| Ok(Some(Plant::new()))) };
        let _ = server.serve_until(&on_connected, |_| {}, async move { cancel.cancelled().await }).await;
    });
    addr
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn edge_agent(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-agent")).args(args).stdin(Stdio::null()).output();
    let out = tokio::time::timeout(Duration::from_secs(20), child).await.expect("edge-agent ended in time").expect("edge-agent ran");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The line of `out` that starts with `addr` and names `order`.
fn row<'a>(out: &'a str, addr: &str, order: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(addr) && l.split_whitespace().nth(1) == Some(order))
        .unwrap_or_else(|| panic!("no {addr} {order} row in:\n{out}"))
}

#[tokio::test]
async fn read_prints_the_registers_and_every_decoding_side_by_side() {
    let cancel = CancellationToken::new();
    let addr = serve_tcp(cancel.clone()).await.to_string();
    let r = edge_agent(&["modbus", "read", "--tcp", &addr, "--unit", "3", "--addr", "100", "--count", "4"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    // Each register as hex, u16 and i16.
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["101", "0x449A", "17562", "17562", "\"D.\""]), "{out}");
    // The float the PLC holds shows in the CDAB row, and not in the ABCD one.
    assert_eq!(row(out, "100", "CDAB").split_whitespace().last(), Some("1234.5"), "{out}");
    assert_ne!(row(out, "100", "ABCD").split_whitespace().last(), Some("1234.5"));
    assert_eq!(row(out, "100", "ABCD").split_whitespace().nth(2), Some(&*(0x5000_449Au32).to_string()));
    assert!(out.contains("string: \"P.D.ABC\""), "{out}");
    cancel.cancel();
}

#[tokio::test]
async fn read_names_the_exception_a_device_answers_with() {
    let cancel = CancellationToken::new();
    let addr = serve_tcp(cancel.clone()).await.to_string();
    let r = edge_agent(&["modbus", "read", "--tcp", &addr, "--unit", "3", "--addr", "500"]).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("Illegal data address (0x02)"), "{}", r.stderr);
    // A unit that never answers is reported after --timeout, not waited on forever.
    let r = edge_agent(&["modbus", "read", "--tcp", &addr, "--unit", "9", "--addr", "100", "--timeout", "200ms"]).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no reply within 200ms"), "{}", r.stderr);
    cancel.cancel();
}

#[tokio::test]
async fn scan_lists_the_units_that_answer() {
    let cancel = CancellationToken::new();
    let addr = serve_tcp(cancel.clone()).await.to_string();
    let r = edge_agent(&["modbus", "scan", "--tcp", &addr, "--from", "1", "--to", "8", "--addr", "100", "--timeout", "100ms"]).await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("unit   3: answers, holding registers (FC 3) 100 = 20480 (0x5000)"), "{}", r.stdout);
    assert!(r.stdout.contains("unit   7: answers with exception Illegal data address (0x02)"), "{}", r.stdout);
    assert!(r.stdout.contains("2 unit(s) answer: 3, 7"), "{}", r.stdout);
    // Nobody there: a failure, said so.
    let r = edge_agent(&["modbus", "scan", "--tcp", &addr, "--from", "10", "--to", "11", "--timeout", "100ms"]).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no unit in 10..11 answered"), "{}", r.stderr);
    cancel.cancel();
}

/// Two pseudo-terminals joined by socat; killed on drop.
struct PtyPair(Child, String, String);

impl PtyPair {
    fn new() -> Self {
        let mut child = std::process::Command::new("socat")
            .args(["-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("socat must be installed for the Modbus RTU tests (.ci/run installs it)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut ptys = Vec::new();
        while ptys.len() < 2 {
            let line = lines.next().expect("socat names its ptys").unwrap();
            if let Some(at) = line.find("PTY is ") {
                ptys.push(line[at + 7..].trim().to_string());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        std::thread::sleep(Duration::from_millis(50));
        PtyPair(child, ptys.remove(0), ptys.remove(0))
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn read_works_over_a_serial_line() {
    use tokio_serial::SerialPortBuilderExt;
    let pty = PtyPair::new();
    let serial = tokio_serial::new(&pty.1, 9600).open_native_async().unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio_modbus::server::rtu::Server::new(serial).serve_until(Plant::new(), async move { stop.cancelled().await }).await
    });
    let r = edge_agent(&[
        "modbus", "read", "--rtu", &pty.2, "--baud", "9600", "--parity", "none", "--unit", "3", "--addr", "101", "--base", "1", "--count",
        "2",
    ])
    .await;
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert_eq!(row(&r.stdout, "101", "CDAB").split_whitespace().last(), Some("1234.5"), "{}", r.stdout);
    assert!(r.stdout.contains("protocol address 100 first"), "{}", r.stdout);
    cancel.cancel();
}
