//! `edge-agent`: the command line. Everything it runs lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::config::load_file;
use edge_agent::{runtime, watch};
use tracing_subscriber::EnvFilter;

/// Exit code for a config that was refused (nothing was started).
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "Industrial edge agent: PLCs to MQTT with store-and-forward")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the agent with a config file (the systemd service does this).
    Run {
        /// The gateway's config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file and report every problem with its line; starts nothing.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the config reference (every key, its type, default and meaning) in Markdown,
    /// as in docs/configuration.md.
    ConfigReference,
    /// Run a simulated sugar mill, an embedded MQTT broker and the agent with its models,
    /// all on loopback; or export simulated history, or rebuild the demo's models.
    // Not in the gateway package, which is built without the `demo` feature.
    #[cfg(feature = "demo")]
    Demo(edge_agent::cli::demo::DemoArgs),
    /// OPC-UA commissioning: browse a server, list and trust certificates.
    Opcua {
        #[command(subcommand)]
        command: edge_agent::cli::opcua::OpcuaCommand,
    },
    /// Print the messages arriving on an MQTT broker (topic, then payload).
    Watch {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
        #[arg(long, default_value = "plant/#")]
        topic: String,
        /// Stop after this many messages (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// Commissioning tools for Modbus devices: read registers with every decoding, scan a bus.
    Modbus(edge_agent::cli::modbus::ModbusArgs),
    /// The status page's users and API tokens (`web.users_file`): add, passwd, remove, token, list.
    User {
        #[command(subcommand)]
        command: edge_agent::cli::user::UserCommand,
    },
    /// Model training and evaluation (`train`, `eval`).
    #[command(flatten)]
    Models(edge_agent::cli::models::ModelsCommand),
}

fn init_logging() {
    // rumqttd is only the demo's embedded broker; its connection chatter is not the agent's news.
    let filter =
        EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rumqttc=warn,tokio_modbus=warn"));
    // A log line that cannot be written (stderr closed while journald restarts) is dropped
    // and counted, never an error: see `runtime::log_sink`.
    // Other crates' lines (a library logging every retry) pass once a minute per source
    // line; the agent's own rate-limit themselves (`edge_drivers::log_limit`).
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    // Under systemd, stderr is journald's: `<N>` priorities and no timestamp (runtime::journal).
    let journal = runtime::journal::stderr_is_journal();
    let journal_layer = journal.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(runtime::journal::JournalFormat)
            .with_writer(runtime::log_sink::Stderr)
            .log_internal_errors(false)
            .with_ansi(false)
            .with_filter(runtime::log_sink::LibraryLimit::default())
    });
    let plain_layer = (!journal).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(runtime::log_sink::Stderr)
            .log_internal_errors(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(runtime::log_sink::LibraryLimit::default())
    });
    tracing_subscriber::registry().with(filter).with(journal_layer).with(plain_layer).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        return match load_file(file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} devices, {} tags)",
                    file.display(),
                    config.devices.len(),
                    config.devices.iter().map(|d| d.tags.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        };
    }
    if let Command::ConfigReference = &cli.command {
        return match edge_agent::config::reference::markdown() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edge-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::User { command } = cli.command {
        return match edge_agent::cli::user::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            runtime::log_sink::eprint_line(&format!("edge-agent: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config: path } => {
                let config = match load_file(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        runtime::log_sink::eprint_line(e.to_string().trim_end());
                        return Ok(Some(EXIT_BAD_CONFIG));
                    }
                };
                // The path is kept for the `reload` command.
                runtime::agent::run_with_file(config, Some(path), runtime::shutdown_signal(), |_| {}).await.map(|()| None)
            }
            #[cfg(feature = "demo")]
            Command::Demo(args) => edge_agent::cli::demo::run(args).await.map(|()| None),
            Command::Watch { host, port, topic, count } => {
                watch::run(watch::WatchOptions { host, port, topic, count }).await.map(|()| None)
            }
            Command::Modbus(args) => edge_agent::cli::modbus::run(args).await.map(|()| None),
            Command::Models(cmd) => edge_agent::cli::models::run(cmd).map(|()| None),
            Command::Opcua { command } => edge_agent::cli::opcua::run(command).await,
            Command::CheckConfig { .. } | Command::ConfigReference | Command::User { .. } => Ok(None), // handled above
        }
    });
    // Don't wait for the blocking threads (the demo broker's) to finish.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(code)) => ExitCode::from(code),
        Err(e) => {
            runtime::log_sink::eprint_line(&format!("edge-agent: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
