//! The demo's embedded MQTT broker (rumqttd), on loopback only.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// Starts rumqttd on `addr` in its own threads and waits until it accepts connections.
pub async fn start(addr: SocketAddr, wait: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(addr.ip().is_loopback(), "the embedded broker only listens on loopback, not {addr}");
    // Fail early and clearly if the port is taken (rumqttd would only log it).
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot start the embedded MQTT broker on {addr} (is the port in use? try --mqtt-port)"))?;
    let config: rumqttd::Config = toml::from_str(&format!(
        r#"
        id = 0
        [router]
        id = 0
        max_connections = 100
        max_outgoing_packet_count = 200
        max_segment_size = 104857600
        max_segment_count = 10
        [v4.1]
        name = "demo-v4"
        listen = "{addr}"
        next_connection_delay_ms = 1
        [v4.1.connections]
        connection_timeout_ms = 60000
        max_payload_size = 4194304
        max_inflight_count = 200
        dynamic_filters = true
        "#
    ))
    .context("embedded broker config")?;
    std::thread::Builder::new().name("demo-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    })?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < until, "the embedded MQTT broker did not start on {addr} within {wait:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
