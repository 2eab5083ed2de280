//! The Modbus driver over RTU against a real tokio-modbus RTU server, through a pair of
//! pseudo-terminals joined by `socat` (a serial cable without the hardware): several
//! slaves on one bus, a dead slave that must not slow the others, late replies that must
//! never be taken for later answers, exceptions. `socat` must be installed (`.ci/run`
//! installs it); these tests fail, not skip, without it.

mod support;

use std::time::{Duration, Instant};

use edge_drivers::modbus::config::{Parity, SerialConfig};
use edge_drivers::modbus::{ByteOrder, DataType, Table};
use edge_drivers::sim::register_server::RegisterBank;
use edge_drivers::{DeviceConfig, Protocol, TagConfig, Value};
use support::{assert_values, every_type_map, serve_converter, serve_rtu, tag, Driver, Peer, PtyPair, Seen};
use tokio_util::sync::CancellationToken;

fn serial(port: &str) -> SerialConfig {
    SerialConfig { port: port.into(), baud_rate: 19_200, parity: Parity::None, data_bits: 8, stop_bits: 1, inter_frame_delay: None }
}

fn device(name: &str, port: &str, unit_id: u8, tags: Vec<TagConfig>) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        protocol: Protocol::ModbusRtu,
        address: None,
        serial: Some(serial(port)),
        unit_id,
        poll_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        tags,
        ..DeviceConfig::default()
    }
}

/// Registers 0..n holding 1000 + their address, for unit `unit`: a reply for the wrong
/// register or the wrong unit shows in the value.
fn bank_of(unit: u8, n: u16) -> RegisterBank {
    let mut bank = RegisterBank::default();
    for a in 0..n {
        bank.holding.insert(a, u16::from(unit) * 1000 + a);
    }
    bank
}

fn u16_tags(addresses: &[u16]) -> Vec<TagConfig> {
    addresses.iter().map(|&a| tag(&format!("r{a}"), Table::Holding, a, DataType::U16, ByteOrder::ABCD)).collect()
}

#[tokio::test]
async fn every_type_and_byte_order_decodes_to_the_exact_value_over_rtu() {
    // Given an RTU slave holding every type in every byte order
    let pty = PtyPair::new();
    let (bank, tags, expected) = every_type_map();
    let cancel = CancellationToken::new();
    serve_rtu(Peer::default().with_unit(7, bank), &pty.server_end, cancel.clone());
    // When the driver polls it over the serial line
    let mut driver = Driver::start(vec![device("meter", &pty.client_end, 7, tags)]);
    let all = expected.len();
    driver.until(Duration::from_secs(5), |d| d.latest("meter").len() == all).await;
    // Then every value is exact
    assert_values(&driver, "meter", &expected);
    cancel.cancel();
}

#[tokio::test]
async fn slaves_sharing_a_bus_are_each_read_with_the_fewest_requests() {
    // Given two slaves on one bus, one with a scattered map and one that takes at most 4
    // registers per request
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank_of(1, 200)).with_unit(2, bank_of(2, 20));
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let mut a = device("a", &pty.client_end, 1, u16_tags(&[0, 3, 11, 21, 150, 199]));
    a.poll_interval = Duration::from_secs(60);
    let mut b = device("b", &pty.client_end, 2, u16_tags(&[0, 1, 2, 3, 4, 5, 6, 7, 8]));
    b.max_registers_per_request = Some(4);
    b.poll_interval = Duration::from_secs(60);
    // When both are polled once
    let mut driver = Driver::start(vec![a, b]);
    assert!(driver.until(Duration::from_secs(5), |d| d.latest("a").len() == 6 && d.latest("b").len() == 9).await);
    // Then the bus carried exactly the fewest requests, each to the right unit
    let mut seen = peer.seen();
    seen.sort();
    let s = |unit, start, count| Seen { unit, function: 3, start, count };
    assert_eq!(seen, vec![s(1, 0, 12), s(1, 21, 1), s(1, 150, 1), s(1, 199, 1), s(2, 0, 4), s(2, 4, 4), s(2, 8, 1)]);
    // And each value came from its own unit and register
    assert_eq!(driver.latest("a")["r11"].value, Some(Value::Int(1011)));
    assert_eq!(driver.latest("b")["r8"].value, Some(Value::Int(2008)));
    cancel.cancel();
}

#[tokio::test]
async fn a_dead_slave_is_backed_off_without_slowing_the_others_and_recovers() {
    // Given three slaves on one bus polled every 100 ms, the third of which has stopped
    // answering
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank_of(1, 10)).with_unit(2, bank_of(2, 10)).with_unit(3, bank_of(3, 10));
    peer.unit(3, |u| u.silent = true);
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let mut dead = device("dead", &pty.client_end, 3, u16_tags(&[0, 1]));
    dead.timeout = Duration::from_millis(100);
    dead.backoff_max = Some(Duration::from_secs(1));
    let mut driver = Driver::start(vec![
        device("one", &pty.client_end, 1, u16_tags(&[0, 1])),
        device("two", &pty.client_end, 2, u16_tags(&[0, 1])),
        dead,
    ]);

    // When it has been backed off
    assert!(
        driver.until(Duration::from_secs(5), |d| d.stats.get("dead").is_some_and(|s| s.backed_off)).await,
        "the dead slave was never backed off: {:?} {:?}",
        driver.stats.get("dead"),
        driver.disconnected
    );
    let since = Instant::now();
    let window = Duration::from_millis(2500);
    driver.run_for(window).await;

    // Then the others kept their configured rate: one reading per tag per 100 ms, less
    // the odd poll delayed past its slot by a probe (each probe costs the dead slave's
    // timeout and as long again of silence; polling the dead slave instead would halve
    // the others' rate)
    let expected = window.as_millis() as usize / 100 * 2;
    for name in ["one", "two"] {
        let good = driver.good_since(name, since);
        assert!(good * 100 >= expected * 75, "{name}: {good} good readings in {window:?}, configured rate gives {expected}");
    }
    // And the dead one was only probed now and then, its tags bad and the device lost
    let stats = driver.stats["dead"].clone();
    assert!(stats.backoffs == 1 && stats.timeouts >= 3, "{stats:?}");
    let probes = peer.seen().iter().filter(|s| s.unit == 3).count();
    assert!(probes <= 3 + 5, "the dead slave was asked {probes} times");
    assert!(driver.of("dead", "r0").iter().all(|s| s.quality.code() == "bad"));
    assert!(!driver.disconnected.get("dead").unwrap_or(&Vec::new()).is_empty());

    // When it answers again, it is read again at its own rate
    peer.unit(3, |u| u.silent = false);
    let back = Instant::now();
    assert!(driver.until(Duration::from_secs(3), |d| d.good_since("dead", back) >= 10).await, "the slave that came back is not read again");
    assert_eq!(driver.latest("dead")["r1"].value, Some(Value::Int(3001)));
    assert!(driver.until(Duration::from_secs(2), |d| d.stats.get("dead").is_some_and(|s| !s.backed_off)).await);
    cancel.cancel();
}

#[tokio::test]
async fn a_late_reply_on_the_bus_is_never_taken_for_the_answer_to_a_later_request() {
    // Given a slave that answers every third request 50 ms after the driver gave up (a
    // reply within the silence the driver waits for after a timeout: as long again), and
    // two slaves whose registers each hold their own unit and address
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank_of(1, 40)).with_unit(2, bank_of(2, 40));
    peer.unit(1, |u| {
        u.delay = Some(Duration::from_millis(150));
        u.late_every = 3;
    });
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let make = |name: &str, unit| {
        let mut d = device(name, &pty.client_end, unit, u16_tags(&[0, 10, 20, 30]));
        d.max_gap = 0; // one request per tag, all of the same size
        d.timeout = Duration::from_millis(100);
        d.poll_interval = Duration::from_millis(50);
        d.backoff_after_failures = Some(1000);
        d
    };
    // When both are polled for a while
    let mut driver = Driver::start(vec![make("slow", 1), make("fine", 2)]);
    driver.run_for(Duration::from_millis(2500)).await;
    // Then reads timed out, and every good value is the one of its own unit and register
    assert!(driver.stats["slow"].timeouts >= 2, "{:?}", driver.stats["slow"]);
    for (name, unit) in [("slow", 1i64), ("fine", 2)] {
        let mut good = 0;
        for a in [0i64, 10, 20, 30] {
            for s in driver.of(name, &format!("r{a}")) {
                if s.quality.is_good() {
                    good += 1;
                    assert_eq!(s.value, Some(Value::Int(unit * 1000 + a)), "{name}/r{a} got another request's reply");
                }
            }
        }
        assert!(good >= 8, "{name}: only {good} good readings");
    }
    cancel.cancel();
}

#[tokio::test]
async fn an_exception_from_one_slave_leaves_the_bus_and_the_other_slaves_alone() {
    // Given a busy slave and a healthy one on the same bus
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank_of(1, 10)).with_unit(2, bank_of(2, 10));
    peer.unit(1, |u| u.busy = true);
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let mut driver =
        Driver::start(vec![device("busy", &pty.client_end, 1, u16_tags(&[0, 5])), device("ok", &pty.client_end, 2, u16_tags(&[0, 5]))]);
    // When they are polled
    assert!(driver.until(Duration::from_secs(5), |d| d.of("busy", "r5").len() >= 3 && d.of("ok", "r5").len() >= 3).await);
    // Then the busy one reads bad with the exception named, the other good, and nothing
    // was reconnected
    let busy = driver.latest("busy");
    assert_eq!(busy["r0"].quality.code(), "bad");
    assert!(busy["r5"].quality.reason().unwrap().contains("Server device busy (0x06)"), "{:?}", busy["r5"].quality);
    assert_eq!(driver.latest("ok")["r5"].value, Some(Value::Int(2005)));
    assert!(driver.of("ok", "r0").iter().all(|s| s.quality.is_good()));
    assert!(driver.disconnected.is_empty(), "{:?}", driver.disconnected);
    // And it reads good once it is no longer busy
    peer.unit(1, |u| u.busy = false);
    assert!(driver.until(Duration::from_secs(3), |d| d.latest("busy")["r5"].quality.is_good()).await);
    assert_eq!(driver.latest("busy")["r5"].value, Some(Value::Int(1005)));
    assert!(driver.until(Duration::from_secs(3), |d| d.stats.get("busy").is_some_and(|s| s.reconnects == 0 && s.exceptions >= 1)).await);
    cancel.cancel();
}

#[tokio::test]
async fn slaves_behind_a_serial_to_ethernet_converter_read_exactly_over_rtu_over_tcp() {
    // Given two RTU slaves on a line behind a converter (TCP on one side, the pty on the
    // other)
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let (bank, tags, expected) = every_type_map();
    let peer = Peer::default().with_unit(4, bank).with_unit(9, bank_of(9, 10));
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let converter = serve_converter(&pty.client_end, cancel.clone()).await;
    let over_tcp = |name: &str, unit, tags| DeviceConfig {
        protocol: Protocol::ModbusRtuOverTcp,
        address: Some(converter.to_string()),
        serial: None,
        ..device(name, "", unit, tags)
    };
    // When the driver polls both through it
    let all = expected.len();
    let mut driver = Driver::start(vec![over_tcp("panel", 4, tags), over_tcp("drive", 9, u16_tags(&[2, 7]))]);
    assert!(driver.until(Duration::from_secs(5), |d| d.latest("panel").len() == all && d.latest("drive").len() == 2).await);
    // Then every value is exact, each from its own unit
    assert_values(&driver, "panel", &expected);
    assert_eq!(driver.latest("drive")["r7"].value, Some(Value::Int(9007)));
    assert!(peer.seen().iter().all(|s| s.unit == 4 || s.unit == 9));
    cancel.cancel();
}

#[tokio::test]
async fn writes_reach_only_their_own_slave_on_a_shared_bus_and_are_read_back() {
    // Given two slaves on one bus with the same register map; the second takes only
    // "write multiple" function codes
    let pty = PtyPair::new();
    let cancel = CancellationToken::new();
    let with_coils = |unit| {
        let mut bank = bank_of(unit, 10);
        bank.coils.insert(4, false);
        bank
    };
    let peer = Peer::default().with_unit(1, with_coils(1)).with_unit(2, with_coils(2));
    serve_rtu(peer.clone(), &pty.server_end, cancel.clone());
    let tags = || {
        vec![
            TagConfig { scale: 0.1, ..tag("setpoint", Table::Holding, 2, DataType::U16, ByteOrder::ABCD) },
            tag("limit", Table::Holding, 6, DataType::F32, ByteOrder::CDAB),
            tag("pump", Table::Coil, 4, DataType::Bool, ByteOrder::ABCD),
        ]
    };
    let mut second = device("second", &pty.client_end, 2, tags());
    second.write_multiple_only = true;
    let mut driver = Driver::start(vec![device("first", &pty.client_end, 1, tags()), second]);
    assert!(driver.until(Duration::from_secs(5), |d| d.connected.len() == 2).await);

    // When each is written
    driver.write("first", "setpoint", Value::Float(12.3)).await.unwrap();
    driver.write("first", "pump", Value::Bool(true)).await.unwrap();
    driver.write("second", "setpoint", Value::Float(45.6)).await.unwrap();
    driver.write("second", "limit", Value::Float(-2.5)).await.unwrap();
    driver.write("second", "pump", Value::Bool(true)).await.unwrap();

    // Then each slave holds its own values, in the tag's encoding
    peer.unit(1, |u| {
        assert_eq!(u.bank.holding[&2], 123);
        assert!(u.bank.coils[&4]);
        assert_eq!((u.bank.holding[&6], u.bank.holding[&7]), (1006, 1007), "untouched");
    });
    peer.unit(2, |u| {
        assert_eq!(u.bank.holding[&2], 456);
        // -2.5f32 is 0xC0200000; CDAB puts the low word first.
        assert_eq!((u.bank.holding[&6], u.bank.holding[&7]), (0x0000, 0xC020));
        assert!(u.bank.coils[&4]);
    });
    // And every write used the function codes the slave takes, and was read back
    let seen = peer.seen();
    let codes = |unit| {
        let mut c: Vec<u8> = seen.iter().filter(|s| s.unit == unit && s.function >= 5).map(|s| s.function).collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    assert_eq!(codes(1), vec![5, 6]);
    assert_eq!(codes(2), vec![15, 16]);
    // (the request right after each write, to the same slave, reads the same address)
    for unit in [1, 2] {
        let mine: Vec<&Seen> = seen.iter().filter(|s| s.unit == unit).collect();
        for (k, w) in mine.iter().enumerate().filter(|(_, s)| s.function >= 5) {
            let next = mine.get(k + 1).unwrap_or_else(|| panic!("no read-back after {w:?}"));
            let read_fc = if matches!(w.function, 5 | 15) { 1 } else { 3 };
            assert_eq!((next.function, next.start, next.count), (read_fc, w.start, w.count), "read-back of {w:?}");
        }
    }
    // And the new values are read by the next polls
    assert!(
        driver
            .until(Duration::from_secs(3), |d| d.latest("second").get("limit").is_some_and(|s| s.value == Some(Value::Float(-2.5))))
            .await
    );
    cancel.cancel();
}
