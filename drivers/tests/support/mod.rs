//! Real Modbus peers for the end-to-end tests of the Modbus driver: a tokio-modbus server
//! that answers as several unit ids, over TCP or over RTU on a pseudo-terminal pair made
//! by `socat`, with faults the tests switch on (a unit that stays silent, answers late,
//! or is busy) and a log of every request it saw.

#![allow(dead_code)] // each test file uses its own part of this module

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_drivers::modbus::write::{write_channel, WriteError, WriteRequest};
use edge_drivers::modbus::{run_bus, ByteOrder, DataType, ModbusDevice, Table};
use edge_drivers::sim::register_server::RegisterBank;
use edge_drivers::{DeviceConfig, DeviceReport, DriverStats, ReportKind, Sample, TagConfig};
use tokio::sync::mpsc;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

/// One request as the server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub unit: u8,
    pub function: u8,
    pub start: u16,
    pub count: u16,
}

/// One unit id served by the peer.
#[derive(Debug, Default)]
pub struct Unit {
    pub bank: RegisterBank,
    /// Never answer (a dead slave on the bus).
    pub silent: bool,
    /// Answer requests this late: every request, or every `late_every`-th one.
    pub delay: Option<Duration>,
    pub late_every: u32,
    /// Requests this unit was asked.
    pub asked: u32,
    /// Answer every request with the `ServerDeviceBusy` exception.
    pub busy: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub units: HashMap<u8, Unit>,
    pub seen: Vec<Seen>,
}

/// The simulated devices behind one server, shared with the test that drives them.
#[derive(Debug, Clone, Default)]
pub struct Peer(pub Arc<Mutex<State>>);

impl Peer {
    pub fn with_unit(self, id: u8, bank: RegisterBank) -> Self {
        self.0.lock().unwrap().units.insert(id, Unit { bank, ..Unit::default() });
        self
    }

    pub fn unit<R>(&self, id: u8, f: impl FnOnce(&mut Unit) -> R) -> R {
        f(self.0.lock().unwrap().units.get_mut(&id).expect("unit served by the peer"))
    }

    /// Every request seen so far, and forgets them.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.0.lock().unwrap().seen)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    fn answer(&self, req: SlaveRequest<'static>) -> (Option<Duration>, Result<Option<Response>, ExceptionCode>) {
        let mut state = self.0.lock().unwrap();
        let (function, start, count) = describe(&req.request);
        state.seen.push(Seen { unit: req.slave, function, start, count });
        let Some(unit) = state.units.get_mut(&req.slave) else {
            // Nobody with that unit id on the bus: silence, as on RS-485.
            return (None, Ok(None));
        };
        if unit.silent {
            return (None, Ok(None));
        }
        unit.asked += 1;
        let delay = unit.delay.filter(|_| unit.late_every == 0 || unit.asked % unit.late_every == 0);
        if unit.busy {
            return (delay, Err(ExceptionCode::ServerDeviceBusy));
        }
        let bank = &mut unit.bank;
        let result = match req.request {
            Request::ReadHoldingRegisters(a, n) => words(&bank.holding, a, n).map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => words(&bank.input, a, n).map(Response::ReadInputRegisters),
            Request::ReadCoils(a, n) => bits(&bank.coils, a, n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => bits(&bank.discrete, a, n).map(Response::ReadDiscreteInputs),
            Request::WriteSingleRegister(a, w) if bank.holding.contains_key(&a) => {
                bank.holding.insert(a, w);
                Ok(Response::WriteSingleRegister(a, w))
            }
            Request::WriteMultipleRegisters(a, ws) if (0..ws.len() as u16).all(|i| bank.holding.contains_key(&(a + i))) => {
                bank.set_holding(a, &ws);
                Ok(Response::WriteMultipleRegisters(a, ws.len() as u16))
            }
            Request::WriteSingleCoil(a, c) if bank.coils.contains_key(&a) => {
                bank.coils.insert(a, c);
                Ok(Response::WriteSingleCoil(a, c))
            }
            Request::WriteMultipleCoils(a, cs) if (0..cs.len() as u16).all(|i| bank.coils.contains_key(&(a + i))) => {
                for (i, c) in cs.iter().enumerate() {
                    bank.coils.insert(a + i as u16, *c);
                }
                Ok(Response::WriteMultipleCoils(a, cs.len() as u16))
            }
            Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::WriteSingleCoil(..)
            | Request::WriteMultipleCoils(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (delay, result.map(Some))
    }
}

fn describe(r: &Request<'_>) -> (u8, u16, u16) {
    match r {
        Request::ReadCoils(a, n) => (1, *a, *n),
        Request::ReadDiscreteInputs(a, n) => (2, *a, *n),
        Request::ReadHoldingRegisters(a, n) => (3, *a, *n),
        Request::ReadInputRegisters(a, n) => (4, *a, *n),
        Request::WriteSingleCoil(a, _) => (5, *a, 1),
        Request::WriteSingleRegister(a, _) => (6, *a, 1),
        Request::WriteMultipleCoils(a, c) => (15, *a, c.len() as u16),
        Request::WriteMultipleRegisters(a, w) => (16, *a, w.len() as u16),
        _ => (0, 0, 0),
    }
}

fn words(table: &HashMap<u16, u16>, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
    (0..count).map(|i| table.get(&start.wrapping_add(i)).copied().ok_or(ExceptionCode::IllegalDataAddress)).collect()
}

fn bits(table: &HashMap<u16, bool>, start: u16, count: u16) -> Result<Vec<bool>, ExceptionCode> {
    (0..count).map(|i| table.get(&start.wrapping_add(i)).copied().ok_or(ExceptionCode::IllegalDataAddress)).collect()
}

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for Peer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, req: Self::Request) -> Self::Future {
        let (delay, result) = self.answer(req);
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            result
        })
    }
}

/// Serves `peer` as a Modbus TCP server on a free loopback port until `cancel` fires.
pub async fn serve_tcp(peer: Peer, cancel: CancellationToken) -> SocketAddr {
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream, socket_addr| {
            let peer = peer.clone();
            async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(peer.clone()))) }
        };
        let _ = server.serve_until(&on_connected, |_err| {}, async move { cancel.cancelled().await }).await;
    });
    addr
}

/// A pair of connected pseudo-terminals made by `socat`: what one end writes, the other
/// reads, as on a serial cable. `socat` is killed on drop.
pub struct PtyPair {
    child: Child,
    pub server_end: String,
    pub client_end: String,
}

impl PtyPair {
    pub fn new() -> Self {
        let mut child = Command::new("socat")
            .args(["-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("socat must be installed to run the Modbus RTU tests (apt-get install socat; .ci/run installs it)");
        let stderr = child.stderr.take().unwrap();
        let mut ptys = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        while ptys.len() < 2 {
            let line = lines.next().expect("socat ended before naming its two ptys").unwrap();
            if let Some(at) = line.find("PTY is ") {
                ptys.push(line[at + "PTY is ".len()..].trim().to_string());
            }
        }
        // Keep reading socat's log so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // socat names the ptys before it starts copying between them.
        std::thread::sleep(Duration::from_millis(50));
        Self { child, client_end: ptys.pop().unwrap(), server_end: ptys.pop().unwrap() }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `peer` as a Modbus RTU server on the pty `path` until `cancel` fires.
pub fn serve_rtu(peer: Peer, path: &str, cancel: CancellationToken) {
    use tokio_serial::SerialPortBuilderExt;
    let serial = tokio_serial::new(path, 19_200).open_native_async().expect("open the server end of the pty pair");
    let server = tokio_modbus::server::rtu::Server::new(serial);
    tokio::spawn(async move {
        let _ = server.serve_until(peer, async move { cancel.cancelled().await }).await;
    });
}

/// A tag with the given table, address and type (other keys at their defaults).
pub fn tag(name: &str, table: Table, address: u16, data_type: DataType, byte_order: ByteOrder) -> TagConfig {
    TagConfig {
        name: name.into(),
        table: Some(table),
        address: Some(address),
        data_type: Some(data_type),
        byte_order,
        ..TagConfig::default()
    }
}

/// The reports of a running driver, gathered per device.
pub struct Driver {
    rx: mpsc::Receiver<DeviceReport>,
    pub cancel: CancellationToken,
    /// Every sample received, per device, with the time it was received.
    pub samples: BTreeMap<String, Vec<(Instant, Sample)>>,
    pub stats: BTreeMap<String, DriverStats>,
    pub connected: BTreeMap<String, u32>,
    pub disconnected: BTreeMap<String, Vec<String>>,
    /// The write queue of each device, by name.
    pub writes: BTreeMap<String, mpsc::Sender<WriteRequest>>,
}

impl Driver {
    /// Starts the poller of one connection with `devices` on it.
    pub fn start(devices: Vec<DeviceConfig>) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let mut writes = BTreeMap::new();
        let devices = devices
            .into_iter()
            .map(|d| {
                let (sender, inbox) = write_channel(4);
                writes.insert(d.name.clone(), sender);
                (ModbusDevice::build(&d).unwrap_or_else(|e| panic!("{e}")), inbox)
            })
            .collect();
        tokio::spawn(run_bus(devices, tx, cancel.clone()));
        Self {
            rx,
            cancel,
            samples: BTreeMap::new(),
            stats: BTreeMap::new(),
            connected: BTreeMap::new(),
            disconnected: BTreeMap::new(),
            writes,
        }
    }

    /// Writes `value` to `device`'s tag `tag` and waits for the answer, taking in reports
    /// meanwhile (the poller must not block on a full report channel).
    pub async fn write(&mut self, device: &str, tag: &str, value: edge_drivers::Value) -> Result<(), WriteError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.writes[device].send(WriteRequest { tag: tag.into(), value, reply }).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::select! {
                a = &mut answer => return a.expect("the driver answers every write"),
                r = self.rx.recv() => self.take(r.expect("the driver ended")),
                () = tokio::time::sleep_until(deadline) => panic!("no answer to the write within 5 s"),
            }
        }
    }

    /// Takes in reports until `done` holds or `limit` passes; returns whether it held.
    pub async fn until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.take(r),
                Ok(None) => panic!("the driver ended"),
                Err(_) => return done(self),
            }
        }
    }

    /// Takes in reports for `d`.
    pub async fn run_for(&mut self, d: Duration) {
        self.until(d, |_| false).await;
    }

    fn take(&mut self, r: DeviceReport) {
        let now = Instant::now();
        match r.kind {
            ReportKind::Samples(s) => self.samples.entry(r.device).or_default().extend(s.into_iter().map(|s| (now, s))),
            ReportKind::Stats(s) => {
                self.stats.insert(r.device, s);
            }
            ReportKind::Connected => *self.connected.entry(r.device).or_default() += 1,
            ReportKind::Disconnected(why) => self.disconnected.entry(r.device).or_default().push(why.to_string()),
        }
    }

    /// The samples of `device`'s tag `tag`.
    pub fn of(&self, device: &str, tag: &str) -> Vec<&Sample> {
        self.samples.get(device).map(|v| v.iter().filter(|(_, s)| s.tag == tag).map(|(_, s)| s).collect()).unwrap_or_default()
    }

    /// The latest sample of every tag of `device`, by tag name.
    pub fn latest(&self, device: &str) -> BTreeMap<String, Sample> {
        let mut out = BTreeMap::new();
        for (_, s) in self.samples.get(device).into_iter().flatten() {
            out.insert(s.tag.clone(), s.clone());
        }
        out
    }

    /// Good samples of `device` received at or after `since`.
    pub fn good_since(&self, device: &str, since: Instant) -> usize {
        self.samples.get(device).map_or(0, |v| v.iter().filter(|(t, s)| *t >= since && s.quality.is_good()).count())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The registers that hold the big-endian bytes `be` in `order`, laid out as docs/modbus.md's
/// byte-order table says (`A` the most significant byte): `CDAB` and `DCBA` put the least
/// significant register first, `BADC` and `DCBA` swap the two bytes inside each register.
/// Written from that table, independently of the driver's decoder.
pub fn lay_out(be: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut regs: Vec<u16> = be.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    if matches!(order, ByteOrder::BADC | ByteOrder::DCBA) {
        regs = regs.into_iter().map(u16::swap_bytes).collect();
    }
    if matches!(order, ByteOrder::CDAB | ByteOrder::DCBA) {
        regs.reverse();
    }
    regs
}

/// A tag's name, the value it must read, and the quality code it must have.
pub type Expected = (String, edge_drivers::Value, &'static str);

/// A register map with every data type in every byte order, plus bits, strings, scaling,
/// clamping: the bank to serve, the tags to read it with, and for each tag the exact value
/// and quality code the driver must report.
pub fn every_type_map() -> (RegisterBank, Vec<TagConfig>, Vec<Expected>) {
    use edge_drivers::Value;
    let mut bank = RegisterBank::default();
    let mut tags = Vec::new();
    let mut expected = Vec::new();
    let mut next: u16 = 0;
    let mut put = |bank: &mut RegisterBank, regs: &[u16]| {
        let at = next;
        bank.set_holding(at, regs);
        // One unused (but mapped) register between values, so that a decoder reading one
        // register too many or too few shows.
        bank.set_holding(at + regs.len() as u16, &[0xFFFF]);
        next += regs.len() as u16 + 1;
        at
    };
    let numbers: [(DataType, Vec<u8>, Value); 8] = [
        (DataType::U16, 48_879u16.to_be_bytes().to_vec(), Value::Int(48_879)),
        (DataType::I16, (-12_345i16).to_be_bytes().to_vec(), Value::Int(-12_345)),
        (DataType::U32, 3_000_000_123u32.to_be_bytes().to_vec(), Value::Int(3_000_000_123)),
        (DataType::I32, (-2_000_000_001i32).to_be_bytes().to_vec(), Value::Int(-2_000_000_001)),
        (DataType::U64, 9_000_000_000_000_000_123u64.to_be_bytes().to_vec(), Value::Int(9_000_000_000_000_000_123)),
        (DataType::I64, (-9_000_000_000_000_000_001i64).to_be_bytes().to_vec(), Value::Int(-9_000_000_000_000_000_001)),
        // 0.1 is not exact in binary: it must still read 0.1, not 0.10000000149011612.
        (DataType::F32, 0.1f32.to_be_bytes().to_vec(), Value::Float(0.1)),
        (DataType::F64, (-6.022_140_76e23f64).to_be_bytes().to_vec(), Value::Float(-6.022_140_76e23)),
    ];
    for (dt, be, value) in numbers {
        for order in ByteOrder::ALL {
            let name = format!("{}_{}", dt.as_str(), order.as_str());
            let at = put(&mut bank, &lay_out(&be, order));
            tags.push(tag(&name, Table::Holding, at, dt, order));
            expected.push((name, value.clone(), "good"));
        }
    }
    // Bits of a register: bit 0 and bit 15 of 0x8001, bit 7 of it (clear).
    let at = put(&mut bank, &[0x8001]);
    for (bit, set) in [(0u8, true), (15, true), (7, false)] {
        let name = format!("bit{bit}");
        tags.push(TagConfig { bit: Some(bit), ..tag(&name, Table::Holding, at, DataType::Bool, ByteOrder::ABCD) });
        expected.push((name, Value::Bool(set), "good"));
    }
    // Strings: "PUMP-07" in 4 registers, high byte first, and the same with bytes swapped.
    let text = b"PUMP-07\0";
    let plain: Vec<u16> = text.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    let swapped: Vec<u16> = plain.iter().map(|w| w.swap_bytes()).collect();
    for (name, regs, byte_swap) in [("text", plain, false), ("text_swapped", swapped, true)] {
        let at = put(&mut bank, &regs);
        tags.push(TagConfig { length: Some(4), byte_swap, ..tag(name, Table::Holding, at, DataType::String, ByteOrder::ABCD) });
        expected.push((name.to_string(), Value::Text("PUMP-07".into()), "good"));
    }
    // Scaling: 3084 × 0.1 = 308.4 t/h; −50 × 0.5 + 10 = −15.
    let at = put(&mut bank, &[3084]);
    tags.push(TagConfig { scale: 0.1, ..tag("scaled", Table::Holding, at, DataType::U16, ByteOrder::ABCD) });
    expected.push(("scaled".into(), Value::Float(308.4), "good"));
    let at = put(&mut bank, &[(-50i16) as u16]);
    tags.push(TagConfig { scale: 0.5, offset: 10.0, ..tag("scaled_offset", Table::Holding, at, DataType::I16, ByteOrder::ABCD) });
    expected.push(("scaled_offset".into(), Value::Float(-15.0), "good"));
    // Clamping: 500 read, 100 allowed: reported 100, uncertain.
    let at = put(&mut bank, &[500]);
    tags.push(TagConfig { clamp_max: Some(100.0), ..tag("clamped", Table::Holding, at, DataType::U16, ByteOrder::ABCD) });
    expected.push(("clamped".into(), Value::Int(100), "uncertain"));
    // Input registers, coils, discrete inputs.
    bank.set_input(7, &lay_out(&(-1.5f32).to_be_bytes(), ByteOrder::CDAB));
    tags.push(tag("input_f32", Table::Input, 7, DataType::F32, ByteOrder::CDAB));
    expected.push(("input_f32".into(), Value::Float(-1.5), "good"));
    bank.coils.insert(3, true);
    bank.coils.insert(4, false);
    tags.push(tag("coil_on", Table::Coil, 3, DataType::Bool, ByteOrder::ABCD));
    tags.push(tag("coil_off", Table::Coil, 4, DataType::Bool, ByteOrder::ABCD));
    expected.push(("coil_on".into(), Value::Bool(true), "good"));
    expected.push(("coil_off".into(), Value::Bool(false), "good"));
    bank.discrete.insert(9, true);
    tags.push(tag("discrete_on", Table::Discrete, 9, DataType::Bool, ByteOrder::ABCD));
    expected.push(("discrete_on".into(), Value::Bool(true), "good"));
    (bank, tags, expected)
}

/// Checks every expected value against the latest samples of `device`.
pub fn assert_values(driver: &Driver, device: &str, expected: &[Expected]) {
    let latest = driver.latest(device);
    let mut wrong = Vec::new();
    for (name, value, quality) in expected {
        match latest.get(name) {
            Some(s) if s.value.as_ref() == Some(value) && s.quality.code() == *quality => {}
            other => wrong.push(format!("{name}: expected {value:?} ({quality}), got {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} of {} tags wrong:\n{}", wrong.len(), expected.len(), wrong.join("\n"));
}

/// A serial-to-Ethernet converter in software: accepts TCP connections on a free loopback
/// port and copies bytes both ways between each and the serial port `path` (one
/// connection at a time, as most converters do), until `cancel` fires.
pub async fn serve_converter(path: &str, cancel: CancellationToken) -> SocketAddr {
    use tokio_serial::SerialPortBuilderExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = path.to_string();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((mut tcp, _)) = accepted else { return };
            let mut serial = tokio_serial::new(&path, 19_200).open_native_async().expect("open the converter's serial end");
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tokio::io::copy_bidirectional(&mut tcp, &mut serial) => {}
            }
        }
    });
    addr
}
