//! How close the Modbus driver gets to the wire: tags per second read from one loopback
//! Modbus TCP server, against the most the same server answers to a bare tokio-modbus
//! loop of 125-register reads (the "wire limit"), measured in the same run in short
//! alternating slices (wire, driver, wire, driver…), so that load from other processes on
//! a shared machine hits both alike; the figure is the median of the per-pair ratios.
//! Also: CPU time of the client process per 1,000 tags/s.
//!
//! The server runs in a child process (this binary, started again with
//! `MODBUS_BENCH_SERVER=1`), so that the CPU figures are the client's alone.
//!
//! `cargo bench -p edge-drivers --bench modbus_throughput`
//! Knobs: `MODBUS_BENCH_SECS` (per slice, default 1), `MODBUS_BENCH_ROUNDS` (pairs,
//! default 9),
//! `MODBUS_BENCH_TAGS` (u16 tags, one per register, default 1000).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_drivers::modbus::write::write_channel;
use edge_drivers::modbus::{run_device, ByteOrder, DataType, Table};
use edge_drivers::sim::register_server::{self, RegisterBank};
use edge_drivers::{DeviceConfig, Protocol, ReportKind, TagConfig};
use tokio::sync::mpsc;
use tokio_modbus::client::Reader;
use tokio_util::sync::CancellationToken;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn serve(registers: u16) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut bank = RegisterBank::default();
        for a in 0..registers {
            bank.holding.insert(a, a);
        }
        let (listener, addr) = register_server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        println!("{addr}");
        std::io::stdout().flush().unwrap();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        // The parent closes our stdin when it is done.
        std::thread::spawn(move || {
            let _ = std::io::stdin().lines().count();
            stop.cancel();
        });
        let _ = register_server::serve(listener, bank.shared(), cancel).await;
    });
}

struct Run {
    items_per_s: f64,
    cpu_per_s: f64,
}

/// A bare loop of 125-register reads over one connection, back to back.
async fn wire_limit(addr: SocketAddr, registers: u16, secs: Duration) -> Run {
    let mut ctx = tokio_modbus::client::tcp::connect(addr).await.unwrap();
    let blocks = registers / 125;
    let (mut items, mut i) = (0u64, 0u16);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    while t0.elapsed() < secs {
        let words = ctx.read_holding_registers((i % blocks) * 125, 125).await.unwrap().unwrap();
        items += words.len() as u64;
        i = i.wrapping_add(1);
    }
    let wall = t0.elapsed().as_secs_f64();
    Run { items_per_s: items as f64 / wall, cpu_per_s: (cpu_time() - cpu0).as_secs_f64() / wall }
}

/// The driver polling `registers` u16 tags as fast as it can, its reports counted as the
/// agent's receiver would take them.
async fn driver(addr: SocketAddr, registers: u16, secs: Duration) -> Run {
    let tags = (0..registers)
        .map(|a| TagConfig {
            name: format!("t{a}"),
            table: Some(Table::Holding),
            address: Some(a),
            data_type: Some(DataType::U16),
            byte_order: ByteOrder::ABCD,
            ..TagConfig::default()
        })
        .collect();
    let device = DeviceConfig {
        name: "bench".into(),
        protocol: Protocol::ModbusTcp,
        address: Some(addr.to_string()),
        // Always due: the driver polls back to back.
        poll_interval: Duration::from_micros(1),
        timeout: Duration::from_secs(2),
        tags,
        ..DeviceConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(256);
    let cancel = CancellationToken::new();
    let (_writes, inbox) = write_channel(1);
    let device = edge_drivers::modbus::ModbusDevice::build(&device).unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(run_device(device, tx, inbox, cancel.clone()));
    // Warm up: connected and polling.
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        let _ = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
    }
    let (mut items, mut bad) = (0u64, 0u64);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    while t0.elapsed() < secs {
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if let ReportKind::Samples(s) = r.kind {
                for x in &s {
                    if x.quality.is_good() {
                        items += 1;
                    } else {
                        bad += 1;
                    }
                }
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    cancel.cancel();
    assert_eq!(bad, 0, "bad readings during the benchmark");
    Run { items_per_s: items as f64 / wall, cpu_per_s: cpu / wall }
}

fn main() {
    let registers = env_num("MODBUS_BENCH_TAGS", 1000).clamp(125, 65_000) as u16 / 125 * 125;
    if std::env::var_os("MODBUS_BENCH_SERVER").is_some() {
        serve(registers);
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let secs = Duration::from_secs(env_num("MODBUS_BENCH_SECS", 1));
    let rounds = env_num("MODBUS_BENCH_ROUNDS", 9);
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env("MODBUS_BENCH_SERVER", "1")
        .env("MODBUS_BENCH_TAGS", registers.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().parse().unwrap();

    // Two worker threads, like the agent on a small gateway.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "modbus_throughput: {registers} u16 tags (one per register) on one loopback TCP server, {rounds} pairs of {} s slices",
        secs.as_secs()
    );
    println!("{:<6} {:>16} {:>14} {:>8} {:>22}", "round", "wire regs/s", "driver tags/s", "ratio", "driver CPU per 1k t/s");
    let mut ratios = Vec::new();
    let mut cpu_per_k = Vec::new();
    let mut wire_per_k = Vec::new();
    let (mut wire_sum, mut drv_sum) = (0.0, 0.0);
    let (mut wire_best, mut drv_best) = (0.0f64, 0.0f64);
    for round in 1..=rounds {
        let wire = rt.block_on(wire_limit(addr, registers, secs));
        let drv = rt.block_on(driver(addr, registers, secs));
        let ratio = drv.items_per_s / wire.items_per_s;
        let per_k = drv.cpu_per_s / (drv.items_per_s / 1000.0);
        println!(
            "{round:<6} {:>16.0} {:>14.0} {:>7.1}% {:>17.3} % core   (bare loop: {:.3} % core per 1k regs/s)",
            wire.items_per_s,
            drv.items_per_s,
            ratio * 100.0,
            per_k * 100.0,
            wire.cpu_per_s / (wire.items_per_s / 1000.0) * 100.0
        );
        ratios.push(ratio);
        cpu_per_k.push(per_k);
        wire_per_k.push(wire.cpu_per_s / (wire.items_per_s / 1000.0));
        wire_sum += wire.items_per_s;
        drv_sum += drv.items_per_s;
        wire_best = wire_best.max(wire.items_per_s);
        drv_best = drv_best.max(drv.items_per_s);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("driver / wire limit (target >= 90%):");
    println!("  median of the pairs' ratios: {:.1}%", median(&mut ratios) * 100.0);
    println!(
        "  mean rates: wire {:.0} regs/s, driver {:.0} tags/s: {:.1}%",
        wire_sum / rounds as f64,
        drv_sum / rounds as f64,
        drv_sum / wire_sum * 100.0
    );
    println!("  best slices: wire {wire_best:.0} regs/s, driver {drv_best:.0} tags/s: {:.1}%", drv_best / wire_best * 100.0);
    println!(
        "load average during the run (1, 5, 15 min): {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "median CPU of the client process: driver {:.3} % of one core per 1,000 tags/s; bare loop {:.3} % per 1,000 regs/s",
        median(&mut cpu_per_k) * 100.0,
        median(&mut wire_per_k) * 100.0
    );
    drop(server.stdin.take());
    let _ = server.wait();
}
