//! `edge-agent demo`: the whole chain in one process, with nothing installed.
//!
//! A simulated sugar-mill PLC on real Modbus TCP, an embedded MQTT broker (rumqttd), and
//! the agent between them with its status page, all on loopback. The config is
//! `firmware-configs/demo/sugar-mill.toml`, compiled in.

pub mod broker;
pub mod plant;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::{load_str, Config};

/// The demo config, as shipped in `firmware-configs/`.
pub const DEMO_CONFIG: &str = include_str!("../../../firmware-configs/demo/sugar-mill.toml");

/// Command-line overrides for the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub web_listen: Option<String>,
    pub mqtt_port: Option<u16>,
    pub modbus_port: Option<u16>,
}

/// The demo config with the overrides applied, validated like any other.
pub fn demo_config(opts: &DemoOptions) -> anyhow::Result<Config> {
    let mut config = load_str(DEMO_CONFIG, "firmware-configs/demo/sugar-mill.toml")?;
    config.gateway.data_dir = opts.data_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("edge-agent-demo"));
    if let Some(listen) = &opts.web_listen {
        config.web.listen = listen.clone();
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
    let issues = config.validate();
    anyhow::ensure!(issues.is_empty(), "demo overrides are invalid: {:?}", issues.0);
    Ok(config)
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let config = demo_config(&opts)?;
    let plant_addrs = plant::start(&config).await?;
    let broker_addr: SocketAddr = format!("{}:{}", config.mqtt.host, config.mqtt.port)
        .parse()
        .context("the demo broker needs an IP address in mqtt.host")?;
    broker::start(broker_addr, Duration::from_secs(5)).await?;

    let topic_filter = format!("{}/#", config.mqtt.prefix);
    let root = config.topic_root();
    crate::runtime::run(config, crate::runtime::shutdown_signal(), move |started| {
        println!();
        println!("edge-agent demo is running: simulated sugar mill -> agent -> embedded MQTT broker");
        for addr in &plant_addrs {
            println!("  Simulated PLC (Modbus TCP): {addr}");
        }
        println!("  MQTT broker:                {broker_addr}   topics under {root}/");
        if let Some(web) = started.web {
            println!("  Status page:                http://{web}/");
        }
        println!("  Watch the MQTT stream:      edge-agent watch --port {}", broker_addr.port());
        println!("     (or, with mosquitto-clients: mosquitto_sub -h {} -p {} -t '{topic_filter}' -v)", broker_addr.ip(), broker_addr.port());
        println!("Press Ctrl-C to stop.");
        println!();
    })
    .await
}
