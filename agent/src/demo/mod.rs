//! `edge-agent demo`: the whole chain in one process, with nothing installed.
//!
//! A simulated sugar-mill PLC on real Modbus TCP, an embedded MQTT broker (rumqttd), and
//! the agent between them with its status page, all on loopback. The config is
//! `firmware-configs/demo/sugar-mill.toml`, compiled in.

pub mod artifacts;
pub mod broker;
pub mod events;
pub mod plant;
pub mod warmup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::{load_str, Config};

/// The demo config, as shipped in `firmware-configs/`.
pub const DEMO_CONFIG: &str = include_str!("../../../firmware-configs/demo/sugar-mill.toml");

/// Command-line overrides for the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub web_listen: Option<String>,
    /// The page's users (`web.users_file`): with it the page asks for a login, and may
    /// listen off loopback.
    pub users_file: Option<PathBuf>,
    pub mqtt_port: Option<u16>,
    pub modbus_port: Option<u16>,
    /// Plant seconds per wall-clock second (1 = real time).
    pub speed: f64,
    /// Faults to inject, each after a wall-clock delay.
    pub faults: Vec<(edge_drivers::sim::sugar_mill::Fault, Duration)>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self { data_dir: None, web_listen: None, users_file: None, mqtt_port: None, modbus_port: None, speed: 1.0, faults: Vec::new() }
    }
}

/// The demo config with the overrides applied, validated like any other.
pub fn demo_config(opts: &DemoOptions) -> anyhow::Result<Config> {
    let mut config = load_str(DEMO_CONFIG, "firmware-configs/demo/sugar-mill.toml")?;
    config.gateway.data_dir = opts.data_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("edge-agent-demo"));
    if let Some(listen) = &opts.web_listen {
        config.web.listen = listen.clone();
    }
    if let Some(file) = &opts.users_file {
        config.web.users_file = Some(file.clone());
    }
    if let Some(port) = opts.mqtt_port {
        config.mqtt.port = port;
    }
    if let Some(port) = opts.modbus_port {
        for device in &mut config.devices {
            let mut addr: SocketAddr = device.address.as_deref().unwrap_or_default().parse().context("demo device address")?;
            addr.set_port(port);
            device.address = Some(addr.to_string());
        }
    }
    speed_up(&mut config, opts.speed);
    let issues = config.validate();
    anyhow::ensure!(issues.is_empty(), "demo overrides are invalid: {:?}", issues.0);
    Ok(config)
}

/// A plant running `speed` times faster: the models take their rows (and hold their
/// conditions) in plant time, so every interval shrinks by `speed`, and the PLC is
/// polled at least once per shortest row interval.
fn speed_up(config: &mut Config, speed: f64) {
    if !(speed.is_finite() && speed > 1.0) {
        return;
    }
    let scale = |d: Duration| d.div_f64(speed).max(Duration::from_millis(10));
    for m in &mut config.models {
        m.row_interval = scale(m.row_interval);
        m.period = m.period.map(scale);
        m.min_duration = m.min_duration.div_f64(speed);
    }
    let fastest = config.models.iter().map(|m| m.row_interval).min().unwrap_or(Duration::from_secs(1));
    for device in &mut config.devices {
        device.poll_interval = device.poll_interval.div_f64(speed).min(fastest / 2).max(Duration::from_millis(20));
    }
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let mut config = demo_config(&opts)?;
    let mut mills = plant::mills(&config);
    // The models' windows start full of the mill's own recent past (marked as warm-up),
    // so their outputs are on the page within seconds.
    warmup::prepare(&mut config, opts.speed, &mut mills);
    let plant_addrs = plant::start(mills, opts.speed, &opts.faults).await?;
    let broker_addr: SocketAddr =
        format!("{}:{}", config.mqtt.host, config.mqtt.port).parse().context("the demo broker needs an IP address in mqtt.host")?;
    broker::start(broker_addr, Duration::from_secs(5)).await?;

    let topic_filter = format!("{}/#", config.mqtt.prefix);
    let root = config.topic_root();
    // Subscribed before the agent connects, so the console shows every event from the first.
    let events_here = match events::print_from_start(broker_addr, format!("{root}/events")).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the demo's console will not print the events");
            false
        }
    };
    crate::runtime::run(config, crate::runtime::shutdown_signal(), move |started| {
        println!();
        println!("edge-agent demo is running: simulated sugar mill -> agent -> embedded MQTT broker");
        for addr in &plant_addrs {
            println!("  Simulated PLC (Modbus TCP): {addr}");
        }
        if opts.speed > 1.0 {
            println!("  Plant speed:                {}x real time", opts.speed);
        }
        for (fault, delay) in &opts.faults {
            println!("  Fault:                      {fault} after {delay:?}");
        }
        println!("  MQTT broker:                {broker_addr}   topics under {root}/");
        if let Some(web) = started.web {
            println!("  Status page:                http://{web}/");
        }
        if events_here {
            println!("  Events:                     printed below as they happen (every one, from the start)");
        }
        println!("  Watch the MQTT stream:      edge-agent watch --port {}", broker_addr.port());
        println!(
            "     (or, with mosquitto-clients: mosquitto_sub -h {} -p {} -t '{topic_filter}' -v)",
            broker_addr.ip(),
            broker_addr.port()
        );
        println!("Press Ctrl-C to stop.");
        println!();
    })
    .await
}
