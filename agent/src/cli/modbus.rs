//! `edge-agent modbus …`: commissioning tools for Modbus devices, run by an engineer at
//! the gateway before writing the config.
//!
//! - `read` prints a block of registers with every decoding of them side by side (u16,
//!   i16, then u32/i32/f32 in the four byte orders, then text), so that the right `type`
//!   and `byte_order` can be picked by looking for the value the PLC's display shows.
//! - `scan` asks each unit id of a range for one register and lists those that answer
//!   (a Modbus exception is an answer too: something is there).
//!
//! Connections go through the driver's own transport (`edge_drivers::modbus::transport`),
//! so what works here works in the agent. Every connect and request is under `--timeout`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use edge_drivers::modbus::config::{Parity, SerialConfig};
use edge_drivers::modbus::decode::to_big_endian;
use edge_drivers::modbus::transport::Link;
use edge_drivers::modbus::ByteOrder;
use tokio::time::timeout;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

#[derive(Debug, Args)]
pub struct ModbusArgs {
    #[command(subcommand)]
    pub command: ModbusCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModbusCommand {
    /// Read registers (or bits) and print every decoding of them side by side.
    Read {
        #[command(flatten)]
        link: LinkArgs,
        /// Unit (slave) id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// First address, as the protocol counts (0-based; see --base).
        #[arg(long)]
        addr: u16,
        /// How many registers (1–125) or bits (1–2000).
        #[arg(long, default_value_t = 1)]
        count: u16,
        /// Which table: holding (FC 3), input (FC 4), coil (FC 1), discrete (FC 2).
        #[arg(long, value_enum, default_value_t = Kind::Holding)]
        kind: Kind,
        /// 1 when --addr counts from 1, as in many device manuals (register 1 = address 0).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
        base: u8,
    },
    /// Find the unit ids that answer on a bus (or behind a gateway).
    Scan {
        #[command(flatten)]
        link: LinkArgs,
        /// First unit id to try.
        #[arg(long, default_value_t = 1)]
        from: u8,
        /// Last unit id to try.
        #[arg(long, default_value_t = 247)]
        to: u8,
        /// The register (or bit) each unit is asked for.
        #[arg(long, default_value_t = 0)]
        addr: u16,
        #[arg(long, value_enum, default_value_t = Kind::Holding)]
        kind: Kind,
    },
}

/// How to reach the device, and the serial line settings.
#[derive(Debug, Args)]
pub struct LinkArgs {
    #[command(flatten)]
    pub target: Target,
    /// Serial line: bits per second.
    #[arg(long, default_value_t = 19_200)]
    pub baud: u32,
    /// Serial line: parity.
    #[arg(long, value_enum, default_value_t = ParityArg::Even)]
    pub parity: ParityArg,
    /// Serial line: data bits (7 or 8).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(7..=8))]
    pub data_bits: u8,
    /// Serial line: stop bits (1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stop_bits: u8,
    /// Limit on connecting and on each request, e.g. 500ms, 2s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Where the device is: exactly one of `--tcp`, `--rtu`, `--rtu-over-tcp`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Modbus TCP device, `IP:PORT` (e.g. 192.168.1.10:502).
    #[arg(long, value_name = "IP:PORT")]
    pub tcp: Option<String>,
    /// Modbus RTU on a serial port (e.g. /dev/ttyUSB0).
    #[arg(long, value_name = "DEV")]
    pub rtu: Option<String>,
    /// Modbus RTU through a serial-to-Ethernet converter, `IP:PORT`.
    #[arg(long, value_name = "IP:PORT")]
    pub rtu_over_tcp: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Holding,
    Input,
    Coil,
    Discrete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParityArg {
    None,
    Even,
    Odd,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err("must be more than 0 and at most 60s".into());
    }
    Ok(d)
}

impl LinkArgs {
    fn link(&self) -> anyhow::Result<Link> {
        let addr = |a: &str| a.parse().with_context(|| format!("{a:?} is not an IP address and port, e.g. 192.168.1.10:502"));
        if let Some(a) = &self.target.tcp {
            return Ok(Link::Tcp(addr(a)?));
        }
        if let Some(a) = &self.target.rtu_over_tcp {
            return Ok(Link::RtuOverTcp(addr(a)?));
        }
        let Some(port) = &self.target.rtu else { bail!("one of --tcp, --rtu or --rtu-over-tcp is required") };
        let parity = match self.parity {
            ParityArg::None => Parity::None,
            ParityArg::Even => Parity::Even,
            ParityArg::Odd => Parity::Odd,
        };
        Ok(Link::Serial(SerialConfig {
            port: port.clone(),
            baud_rate: self.baud,
            parity,
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
            inter_frame_delay: None,
        }))
    }
}

impl Kind {
    fn request(self, addr: u16, count: u16) -> Request<'static> {
        match self {
            Kind::Holding => Request::ReadHoldingRegisters(addr, count),
            Kind::Input => Request::ReadInputRegisters(addr, count),
            Kind::Coil => Request::ReadCoils(addr, count),
            Kind::Discrete => Request::ReadDiscreteInputs(addr, count),
        }
    }

    fn is_bits(self) -> bool {
        matches!(self, Kind::Coil | Kind::Discrete)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Holding => "holding registers (FC 3)",
            Kind::Input => "input registers (FC 4)",
            Kind::Coil => "coils (FC 1)",
            Kind::Discrete => "discrete inputs (FC 2)",
        }
    }
}

/// What one read got.
enum Reply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Exception(ExceptionCode),
}

/// One request under `limit`; `Err` for no reply or a broken connection.
async fn ask(ctx: &mut Context, kind: Kind, addr: u16, count: u16, limit: Duration) -> anyhow::Result<Reply> {
    let reply = match timeout(limit, ctx.call(kind.request(addr, count))).await {
        Err(_) => bail!("no reply within {limit:?}"),
        Ok(Err(e)) => bail!("{e}"),
        Ok(Ok(Err(exception))) => return Ok(Reply::Exception(exception)),
        Ok(Ok(Ok(r))) => r,
    };
    let n = usize::from(count);
    Ok(match reply {
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) if w.len() == n => Reply::Words(w),
        Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) if b.len() >= n => Reply::Bits(b.into_iter().take(n).collect()),
        _ => bail!("the reply does not hold the {count} items asked for"),
    })
}

/// Runs `edge-agent modbus …`.
pub async fn run(args: ModbusArgs) -> anyhow::Result<()> {
    match args.command {
        ModbusCommand::Read { link, unit, addr, count, kind, base } => read(&link, unit, addr, count, kind, base).await,
        ModbusCommand::Scan { link, from, to, addr, kind } => scan(&link, from, to, addr, kind).await,
    }
}

async fn read(args: &LinkArgs, unit: u8, addr: u16, count: u16, kind: Kind, base: u8) -> anyhow::Result<()> {
    let max = if kind.is_bits() { 2000 } else { 125 };
    if count == 0 || count > max {
        bail!("--count must be 1–{max} for {}", kind.name());
    }
    if base == 1 && addr == 0 {
        bail!("--addr 0 does not exist when addresses count from 1 (--base 1)");
    }
    let start = addr - u16::from(base);
    if u32::from(start) + u32::from(count) > 65_536 {
        bail!("--addr {addr} --count {count} runs past the last address (65535)");
    }
    let link = args.link()?;
    let mut ctx = link.connect(unit, args.timeout, None).await.map_err(anyhow::Error::msg).with_context(|| link.describe())?;
    let started = Instant::now();
    let reply = ask(&mut ctx, kind, start, count, args.timeout).await.with_context(|| format!("unit {unit} at {}", link.describe()))?;
    let took = started.elapsed();
    let _ = timeout(args.timeout, ctx.disconnect()).await;
    println!(
        "{} {}..{} of unit {unit} at {} ({count} read in {:.1} ms){}",
        kind.name(),
        addr,
        u32::from(addr) + u32::from(count) - 1,
        link.describe(),
        took.as_secs_f64() * 1000.0,
        if base == 1 { format!("; addresses from 1, protocol address {start} first") } else { String::new() }
    );
    match reply {
        Reply::Exception(e) => bail!("the device answered with exception {e} (0x{:02X})", u8::from(e)),
        Reply::Bits(bits) => print!("{}", show_bits(addr, &bits)),
        Reply::Words(words) => print!("{}", show_words(addr, &words)),
    }
    Ok(())
}

/// Bits, eight to a line: `addr  0 1 1 0 …`.
fn show_bits(addr: u16, bits: &[bool]) -> String {
    let mut out = String::new();
    for (i, chunk) in bits.chunks(8).enumerate() {
        let at = u32::from(addr) + i as u32 * 8;
        let row: Vec<&str> = chunk.iter().map(|b| if *b { "1" } else { "0" }).collect();
        let _ = writeln!(out, "{at:<6} {}", row.join(" "));
    }
    out
}

/// Registers one per line (hex, u16, i16, the two bytes as text), then every 32-bit
/// decoding of each pair of consecutive registers in the four byte orders, then the
/// block as text both ways round.
fn show_words(addr: u16, words: &[u16]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<6} {:<7} {:>6} {:>7}  text", "addr", "hex", "u16", "i16");
    for (i, w) in words.iter().enumerate() {
        let at = u32::from(addr) + i as u32;
        let _ = writeln!(out, "{at:<6} 0x{w:04X}  {w:>6} {:>7}  {:?}", *w as i16, printable(&w.to_be_bytes()));
    }
    if words.len() >= 2 {
        let _ = writeln!(out, "\n32-bit values in registers (addr, addr+1):");
        let _ = writeln!(out, "{:<6} {:<5} {:>11} {:>12} {:>16}", "addr", "order", "u32", "i32", "f32");
        for (i, pair) in words.windows(2).enumerate() {
            let at = u32::from(addr) + i as u32;
            for order in ByteOrder::ALL {
                let be = to_big_endian(pair, order);
                let b = [be[0], be[1], be[2], be[3]];
                let _ = writeln!(
                    out,
                    "{at:<6} {:<5} {:>11} {:>12} {:>16}",
                    order.as_str(),
                    u32::from_be_bytes(b),
                    i32::from_be_bytes(b),
                    show_f32(f32::from_be_bytes(b))
                );
            }
        }
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    let swapped: Vec<u8> = words.iter().flat_map(|w| w.swap_bytes().to_be_bytes()).collect();
    let _ = writeln!(out, "\nstring: {:?}", printable(&bytes));
    let _ = writeln!(out, "string (byte_swap): {:?}", printable(&swapped));
    out
}

/// A float as an engineer reads it: plain when it is of a plausible size, in exponent
/// form when it is tiny or huge (a sign of the wrong byte order).
fn show_f32(f: f32) -> String {
    let a = f.abs();
    if f == 0.0 || !f.is_finite() || (1e-4..1e9).contains(&a) {
        f.to_string()
    } else {
        format!("{f:e}")
    }
}

/// ASCII as is, anything else as `.`; NULs at the end dropped.
fn printable(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    bytes[..end].iter().map(|&b| if (0x20..0x7F).contains(&b) { char::from(b) } else { '.' }).collect()
}

async fn scan(args: &LinkArgs, from: u8, to: u8, addr: u16, kind: Kind) -> anyhow::Result<()> {
    if from > to {
        bail!("--from {from} is above --to {to}");
    }
    let link = args.link()?;
    println!("scanning units {from}..{to} at {} ({} {addr}, {:?} per unit)", link.describe(), kind.name(), args.timeout);
    let mut found = Vec::new();
    let mut ctx: Option<Context> = None;
    let mut drain = None;
    for unit in from..=to {
        if ctx.is_none() {
            ctx = Some(link.connect(unit, args.timeout, drain.take()).await.map_err(anyhow::Error::msg).with_context(|| link.describe())?);
        }
        let Some(c) = ctx.as_mut() else { continue };
        c.set_slave(Slave(unit));
        match ask(c, kind, addr, 1, args.timeout).await {
            Ok(Reply::Words(w)) => {
                println!("unit {unit:>3}: answers, {} {addr} = {} (0x{:04X})", kind.name(), w[0], w[0]);
                found.push(unit);
            }
            Ok(Reply::Bits(b)) => {
                println!("unit {unit:>3}: answers, {} {addr} = {}", kind.name(), u8::from(b[0]));
                found.push(unit);
            }
            Ok(Reply::Exception(e)) => {
                println!("unit {unit:>3}: answers with exception {e} (0x{:02X}); try another --addr or --kind", u8::from(e));
                found.push(unit);
            }
            Err(e) => {
                tracing::debug!(unit, error = %e, "no answer");
                // A late reply must not be taken for the next unit's answer: start again
                // on a fresh connection, after the line has been silent.
                ctx = None;
                drain = Some(args.timeout);
            }
        }
    }
    if found.is_empty() {
        bail!("no unit in {from}..{to} answered");
    }
    let list: Vec<String> = found.iter().map(u8::to_string).collect();
    println!("{} unit(s) answer: {}", found.len(), list.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_float_shows_in_the_row_of_its_byte_order() {
        // 1234.5 as f32 is 0x449A5000; word-swapped it is sent as 0x5000 0x449A.
        let table = show_words(100, &[0x5000, 0x449A]);
        let row = table.lines().find(|l| l.starts_with("100") && l.contains("CDAB")).unwrap();
        assert!(row.trim_end().ends_with("1234.5"), "{row}");
        let row = table.lines().find(|l| l.starts_with("100") && l.contains("ABCD")).unwrap();
        assert!(!row.contains("1234.5"), "{row}");
    }

    #[test]
    fn text_is_shown_both_ways_round() {
        let table = show_words(0, &[0x4142, 0x4300]);
        assert!(table.contains("string: \"ABC\""), "{table}");
        assert!(table.contains("string (byte_swap): \"BA.C\""), "{table}");
    }
}
