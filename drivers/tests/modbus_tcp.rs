//! The Modbus driver against a real tokio-modbus server over TCP on loopback: exact
//! decoding of every type and byte order, the fewest requests for a scattered map,
//! exceptions and the splits they cause, and late replies never taken for later answers.

mod support;

use std::time::Duration;

use edge_drivers::modbus::{ByteOrder, DataType, Table};
use edge_drivers::sim::register_server::RegisterBank;
use edge_drivers::{DeviceConfig, Protocol, TagConfig, Value};
use support::{assert_values, every_type_map, lay_out, serve_tcp, tag, Driver, Peer, Seen};
use tokio_util::sync::CancellationToken;

fn device(name: &str, addr: std::net::SocketAddr, unit_id: u8, tags: Vec<TagConfig>) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        protocol: Protocol::ModbusTcp,
        address: Some(addr.to_string()),
        unit_id,
        poll_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        tags,
        ..DeviceConfig::default()
    }
}

#[test]
fn the_reference_layout_follows_the_byte_order_table_of_the_readme() {
    let be = 0x1234_5678u32.to_be_bytes();
    assert_eq!(lay_out(&be, ByteOrder::ABCD), [0x1234, 0x5678]);
    assert_eq!(lay_out(&be, ByteOrder::CDAB), [0x5678, 0x1234]);
    assert_eq!(lay_out(&be, ByteOrder::BADC), [0x3412, 0x7856]);
    assert_eq!(lay_out(&be, ByteOrder::DCBA), [0x7856, 0x3412]);
}

#[tokio::test]
async fn every_type_and_byte_order_decodes_to_the_exact_value() {
    // Given a server holding every type in every byte order, bits, strings, scaled values
    let (bank, tags, expected) = every_type_map();
    let cancel = CancellationToken::new();
    let addr = serve_tcp(Peer::default().with_unit(1, bank), cancel.clone()).await;
    // When the driver polls it
    let mut driver = Driver::start(vec![device("plc", addr, 1, tags)]);
    let all = expected.len();
    driver.until(Duration::from_secs(5), |d| d.latest("plc").len() == all).await;
    // Then every tag reads exactly the value the registers hold
    assert_values(&driver, "plc", &expected);
    cancel.cancel();
}

#[tokio::test]
async fn addresses_counted_from_one_read_the_register_below() {
    // Given a device whose manual numbers registers from 1
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[11, 22]);
    let cancel = CancellationToken::new();
    let addr = serve_tcp(Peer::default().with_unit(1, bank), cancel.clone()).await;
    let mut d = device("plc", addr, 1, vec![tag("first", Table::Holding, 1, DataType::U16, ByteOrder::ABCD)]);
    d.address_base = 1;
    // When register 1 is read
    let mut driver = Driver::start(vec![d]);
    driver.until(Duration::from_secs(5), |d| !d.of("plc", "first").is_empty()).await;
    // Then it is protocol address 0
    assert_eq!(driver.of("plc", "first")[0].value, Some(Value::Int(11)));
    cancel.cancel();
}

/// Every register, input register, coil and discrete input of `0..n` mapped.
fn full_bank(n: u16) -> RegisterBank {
    let mut bank = RegisterBank::default();
    for a in 0..n {
        bank.holding.insert(a, a);
        bank.input.insert(a, a);
        bank.coils.insert(a, a % 2 == 0);
        bank.discrete.insert(a, a % 3 == 0);
    }
    bank
}

#[tokio::test]
async fn a_scattered_map_is_read_with_the_fewest_requests_the_limits_allow() {
    // Given a scattered map (default max_gap 8) on a device that maps everything
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, full_bank(2100)).with_unit(2, full_bank(100));
    let addr = serve_tcp(peer.clone(), cancel.clone()).await;
    let h = |name: &str, a, dt| tag(name, Table::Holding, a, dt, ByteOrder::ABCD);
    let mut tags = vec![
        // 0..16: gaps of 2 and 7 merge; bit 3 of register 15 joins.
        h("h0", 0, DataType::U16),
        h("h5", 5, DataType::F32),
        h("h14", 14, DataType::U16),
        TagConfig { bit: Some(3), ..h("h15b3", 15, DataType::Bool) },
        // 40..42: 24 registers away, too far.
        h("h40", 40, DataType::U32),
        // Tags every 8 registers from 300 to 420, then 424 and 425: 300..425 is exactly
        // 125 registers; 425 needs a request of its own.
        h("h424", 424, DataType::U16),
        h("h425", 425, DataType::U16),
        // Input registers 0 and 9: a gap of 8, merged.
        tag("i0", Table::Input, 0, DataType::U16, ByteOrder::ABCD),
        tag("i9", Table::Input, 9, DataType::U16, ByteOrder::ABCD),
        // Coil 1999 (and one every 8 coils below it, added below): 2000 bits, one
        // request; coil 2000 needs another.
        tag("c1999", Table::Coil, 1999, DataType::Bool, ByteOrder::ABCD),
        tag("c2000", Table::Coil, 2000, DataType::Bool, ByteOrder::ABCD),
        // Discrete inputs 3 and 10.
        tag("d3", Table::Discrete, 3, DataType::Bool, ByteOrder::ABCD),
        tag("d10", Table::Discrete, 10, DataType::Bool, ByteOrder::ABCD),
    ];
    tags.extend((300..=420).step_by(8).map(|a| h(&format!("h{a}"), a, DataType::U16)));
    tags.extend((0..=1992).step_by(8).map(|a| tag(&format!("c{a}"), Table::Coil, a, DataType::Bool, ByteOrder::ABCD)));
    tags.sort_by(|a, b| a.name.cmp(&b.name)); // config order does not matter
    let n = tags.len();
    let mut d1 = device("scattered", addr, 1, tags);
    d1.poll_interval = Duration::from_secs(60); // one poll in this test
                                                // And a device that accepts at most 10 registers per request, with 30 tags in a row
    let mut d2 =
        device("small", addr, 2, (0..30).map(|a| tag(&format!("r{a}"), Table::Holding, a, DataType::U16, ByteOrder::ABCD)).collect());
    d2.max_registers_per_request = Some(10);
    d2.poll_interval = Duration::from_secs(60);

    // When each is polled once
    let mut first = Driver::start(vec![d1]);
    let mut second = Driver::start(vec![d2]);
    assert!(first.until(Duration::from_secs(5), |d| d.latest("scattered").len() == n).await);
    assert!(second.until(Duration::from_secs(5), |d| d.latest("small").len() == 30).await);

    // Then the server saw exactly the fewest requests
    let mut seen = peer.seen();
    seen.sort();
    let s = |unit, function, start, count| Seen { unit, function, start, count };
    assert_eq!(
        seen,
        vec![
            s(1, 1, 0, 2000),
            s(1, 1, 2000, 1),
            s(1, 2, 3, 8),
            s(1, 3, 0, 16),
            s(1, 3, 40, 2),
            s(1, 3, 300, 125),
            s(1, 3, 425, 1),
            s(1, 4, 0, 10),
            s(2, 3, 0, 10),
            s(2, 3, 10, 10),
            s(2, 3, 20, 10),
        ]
    );
    // And every tag got its own value out of the merged replies
    let latest = first.latest("scattered");
    assert_eq!(latest["h40"].value, Some(Value::Int((40 << 16) | 41)));
    assert_eq!(latest["h300"].value, Some(Value::Int(300)));
    assert_eq!(latest["h424"].value, Some(Value::Int(424)));
    assert_eq!(latest["h425"].value, Some(Value::Int(425)));
    assert_eq!(latest["i9"].value, Some(Value::Int(9)));
    assert_eq!(latest["c1999"].value, Some(Value::Bool(false)));
    assert_eq!(latest["c2000"].value, Some(Value::Bool(true)));
    assert_eq!(latest["d3"].value, Some(Value::Bool(true)));
    assert_eq!(latest["h15b3"].value, Some(Value::Bool(15 & 8 != 0)));
    assert_eq!(second.latest("small")["r29"].value, Some(Value::Int(29)));
    cancel.cancel();
}

#[tokio::test]
async fn a_refused_merged_read_is_split_once_and_the_split_is_remembered() {
    // Given registers 0, 1 and 6 mapped but 2..6 not: the merged read 0..7 is refused
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[10, 11]);
    bank.set_holding(6, &[16]);
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank);
    let addr = serve_tcp(peer.clone(), cancel.clone()).await;
    let tags = vec![
        tag("a", Table::Holding, 0, DataType::U16, ByteOrder::ABCD),
        tag("b", Table::Holding, 1, DataType::U16, ByteOrder::ABCD),
        tag("c", Table::Holding, 6, DataType::U16, ByteOrder::ABCD),
        // And a tag on a register the device does not map at all
        tag("unmapped", Table::Holding, 50, DataType::U16, ByteOrder::ABCD),
    ];
    // When it is polled several times
    let mut driver = Driver::start(vec![device("plc", addr, 1, tags)]);
    assert!(driver.until(Duration::from_secs(5), |d| d.of("plc", "c").len() >= 4).await);

    // Then the merged read was tried once, then split into the spans of its tags
    let seen = peer.seen();
    let count = |start, n| seen.iter().filter(|s| s.function == 3 && s.start == start && s.count == n).count();
    assert_eq!(count(0, 7), 1, "merged read tried once: {seen:?}");
    assert!(count(0, 2) >= 4 && count(6, 1) >= 4, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.start < 50).count(), 1 + 2 * count(6, 1), "one split, into two requests: {seen:?}");
    // And every mapped tag reads good, the unmapped one bad with the exception named
    let latest = driver.latest("plc");
    assert_eq!(
        (latest["a"].value.clone(), latest["b"].value.clone(), latest["c"].value.clone()),
        (Some(Value::Int(10)), Some(Value::Int(11)), Some(Value::Int(16)))
    );
    assert!(latest["a"].quality.is_good() && latest["c"].quality.is_good());
    let reason = latest["unmapped"].quality.reason().unwrap_or_default().to_string();
    assert_eq!(latest["unmapped"].quality.code(), "bad");
    assert!(reason.contains("Illegal data address (0x02)") && reason.contains("holding 50+1"), "{reason}");
    // And exceptions do not cost the connection
    assert!(driver.until(Duration::from_secs(3), |d| d.stats.get("plc").is_some_and(|s| s.splits == 1 && s.exceptions >= 2)).await);
    assert_eq!(driver.stats["plc"].reconnects, 0);
    assert!(driver.disconnected.is_empty(), "{:?}", driver.disconnected);
    cancel.cancel();
}

#[tokio::test]
async fn a_busy_device_reads_bad_with_the_exception_named_and_recovers_without_reconnecting() {
    // Given a device that answers "busy"
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[1, 2]);
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank);
    peer.unit(1, |u| u.busy = true);
    let addr = serve_tcp(peer.clone(), cancel.clone()).await;
    let tags =
        vec![tag("a", Table::Holding, 0, DataType::U16, ByteOrder::ABCD), tag("b", Table::Holding, 1, DataType::U16, ByteOrder::ABCD)];
    let mut driver = Driver::start(vec![device("plc", addr, 1, tags)]);
    // When it is polled
    assert!(driver.until(Duration::from_secs(5), |d| d.of("plc", "b").len() >= 2).await);
    // Then both tags of the request are bad, the exception named, and nothing split
    for t in ["a", "b"] {
        let s = driver.of("plc", t)[0].clone();
        assert_eq!(s.quality.code(), "bad");
        assert!(s.quality.reason().unwrap().contains("Server device busy (0x06)"), "{:?}", s.quality);
    }
    let split_reads = peer.seen().iter().filter(|s| s.count == 1).count();
    assert_eq!(split_reads, 0, "a busy device must not split the plan");
    // And when it is no longer busy, the values come back on the same connection
    peer.unit(1, |u| u.busy = false);
    assert!(driver.until(Duration::from_secs(5), |d| d.latest("plc")["b"].quality.is_good()).await);
    assert_eq!(driver.latest("plc")["a"].value, Some(Value::Int(1)));
    assert!(driver.disconnected.is_empty());
    assert!(driver.until(Duration::from_secs(3), |d| d.stats.get("plc").is_some_and(|s| s.exceptions >= 2 && s.reconnects == 0)).await);
    cancel.cancel();
}

#[tokio::test]
async fn a_late_reply_is_never_taken_for_the_answer_to_a_later_request() {
    // Given a server that answers every third request after the driver's timeout, and
    // registers that each hold their own address plus 1000
    let mut bank = RegisterBank::default();
    for a in [0u16, 10, 20, 30] {
        bank.set_holding(a, &[1000 + a]);
    }
    let cancel = CancellationToken::new();
    let peer = Peer::default().with_unit(1, bank);
    peer.unit(1, |u| {
        u.delay = Some(Duration::from_millis(150));
        u.late_every = 3;
    });
    let addr = serve_tcp(peer.clone(), cancel.clone()).await;
    let tags: Vec<TagConfig> =
        [0u16, 10, 20, 30].iter().map(|&a| tag(&format!("r{a}"), Table::Holding, a, DataType::U16, ByteOrder::ABCD)).collect();
    let mut d = device("plc", addr, 1, tags);
    d.max_gap = 0; // one request per tag, all of the same size
    d.timeout = Duration::from_millis(100);
    d.poll_interval = Duration::from_millis(20);
    d.backoff_after_failures = Some(1000);
    // When it is polled for a while
    let mut driver = Driver::start(vec![d]);
    driver.run_for(Duration::from_millis(1500)).await;
    // Then some reads timed out, many succeeded, and every good value is its own register's
    let stats = driver.stats["plc"].clone();
    assert!(stats.timeouts >= 2, "{stats:?}");
    let mut good = 0;
    for a in [0u16, 10, 20, 30] {
        for s in driver.of("plc", &format!("r{a}")) {
            if s.quality.is_good() {
                good += 1;
                assert_eq!(s.value, Some(Value::Int(i64::from(1000 + a))), "r{a} got another register's reply");
            }
        }
    }
    assert!(good >= 20, "only {good} good readings");
    cancel.cancel();
}

#[tokio::test]
async fn regression_polls_are_counted_when_a_deadband_holds_back_every_reading() {
    // Given flat values behind a deadband (heartbeat one minute away)
    let mut bank = RegisterBank::default();
    bank.set_holding(0, &[5, 6]);
    let cancel = CancellationToken::new();
    let addr = serve_tcp(Peer::default().with_unit(1, bank), cancel.clone()).await;
    let tags = vec![
        TagConfig { deadband: Some(1.0), ..tag("a", Table::Holding, 0, DataType::U16, ByteOrder::ABCD) },
        TagConfig { deadband_percent: Some(5.0), ..tag("b", Table::Holding, 1, DataType::U16, ByteOrder::ABCD) },
    ];
    let mut d = device("plc", addr, 1, tags);
    d.poll_interval = Duration::from_millis(20);
    // When it is polled many times
    let mut driver = Driver::start(vec![d]);
    assert!(
        driver.until(Duration::from_secs(5), |d| d.stats.get("plc").is_some_and(|s| s.polls >= 10)).await,
        "polls not counted: {:?}",
        driver.stats.get("plc")
    );
    // Then only the first readings were sent, yet every poll was counted
    assert_eq!(driver.samples["plc"].len(), 2);
    cancel.cancel();
}
