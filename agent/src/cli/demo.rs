//! `edge-agent demo …`: the demo (simulated mill, embedded broker, agent with its three
//! models), and the tools that make the demo's models: simulated history as CSV
//! (`export-csv`, the format `edge-agent train` reads) and the shipped artifacts
//! (`build-artifacts`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use edge_drivers::sim::history::{write_csv, HistoryOptions};
use edge_drivers::sim::sugar_mill::Fault;

use crate::demo::{self, DemoOptions};

/// `edge-agent demo [OPTIONS] [COMMAND]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub action: Option<DemoAction>,
    /// Where the demo keeps its outbox (default: a directory under the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Status page address (default from the demo config: 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub web_listen: Option<String>,
    /// The status page's users (made with `edge-agent user add --file FILE …`): the page
    /// then asks for a login, and `--web-listen` may be off loopback (`0.0.0.0:8080`).
    #[arg(long, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Port of the embedded MQTT broker (default 18830).
    #[arg(long)]
    pub mqtt_port: Option<u16>,
    /// Port of the simulated PLC (default 15020).
    #[arg(long)]
    pub modbus_port: Option<u16>,
    /// Run the plant this many times faster than real time (1–1000); the models' row
    /// intervals and the poll interval shrink with it, so the models see the plant as
    /// they were trained. 600: ten plant minutes a second.
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
    /// Inject a fault: cavitation, underheat (or purity) or bearing; `NAME@DELAY` waits
    /// DELAY of wall-clock time first (e.g. `cavitation@30s`). Repeatable.
    #[arg(long, value_name = "NAME[@DELAY]", value_parser = parse_fault)]
    pub fault: Vec<(Fault, Duration)>,
}

#[derive(Debug, Subcommand)]
pub enum DemoAction {
    /// Write simulated history of the mill as CSV (the format `edge-agent train` reads).
    ExportCsv {
        /// Output file (`-` for standard output).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Plant time to simulate, e.g. `7d`, `500h`.
        #[arg(long, default_value = "7d", value_parser = humantime_serde::re::humantime::parse_duration)]
        duration: Duration,
        /// Plant time between two rows.
        #[arg(long, default_value = "1m", value_parser = humantime_serde::re::humantime::parse_duration)]
        every: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No random cavitation or under-heat episodes (normal operation; bearings still wear).
        #[arg(long)]
        no_faults: bool,
    },
    /// Train the demo's three models on simulated history and write them (then rebuild).
    BuildArtifacts {
        #[arg(long, value_name = "DIR", default_value = "models/artifacts/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (1.0..=1000.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 1 and 1000".into())
    }
}

fn parse_fault(s: &str) -> Result<(Fault, Duration), String> {
    let (name, delay) = match s.split_once('@') {
        Some((n, d)) => (n, humantime_serde::re::humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}"))?),
        None => (s, Duration::ZERO),
    };
    Ok((name.parse()?, delay))
}

/// Runs `edge-agent demo …`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    match args.action {
        None => {
            let opts = DemoOptions {
                data_dir: args.data_dir,
                web_listen: args.web_listen,
                users_file: args.users_file,
                mqtt_port: args.mqtt_port,
                modbus_port: args.modbus_port,
                speed: args.speed,
                faults: args.fault,
            };
            demo::run(opts).await
        }
        Some(DemoAction::ExportCsv { out, duration, every, seed, no_faults }) => {
            let start: DateTime<Utc> = Utc::now() - chrono::Duration::from_std(duration).unwrap_or_default();
            let opts = HistoryOptions { seed, duration, every, random_faults: !no_faults, start };
            let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                if out.as_os_str() == "-" {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    Ok(write_csv(&opts, &mut w)?)
                } else {
                    let file = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let s = write_csv(&opts, &mut w)?;
                    std::io::Write::flush(&mut w)?;
                    Ok(s)
                }
            })
            .await??;
            eprintln!(
                "{} rows; {} bearing failures, {} rows of cavitation, {} of heater under-heat, {} lab samples",
                summary.rows, summary.bearing_failures, summary.cavitation_rows, summary.underheat_rows, summary.lab_samples
            );
            Ok(())
        }
        Some(DemoAction::BuildArtifacts { out, seed }) => {
            let built = tokio::task::spawn_blocking(move || demo::artifacts::build(&out, seed)).await??;
            for b in built {
                let figures: Vec<String> = b.metrics.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                println!("{} -> {}: {}", b.name, b.dir.display(), figures.join(", "));
            }
            println!("rebuild the binary to embed them: cargo build --release -p edge-agent");
            Ok(())
        }
    }
}
