//! `edge-agent watch`: print what arrives on an MQTT broker, one line per message.
//! For commissioning and for the demo, where no `mosquitto_sub` may be installed.

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub struct WatchOptions {
    pub host: String,
    pub port: u16,
    pub topic: String,
    /// Stop after this many messages (0: never).
    pub count: usize,
}

pub async fn run(opts: WatchOptions) -> anyhow::Result<()> {
    let id = format!("edge-agent-watch-{}", std::process::id());
    let mut mqtt = MqttOptions::new(id, opts.host.clone(), opts.port);
    mqtt.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 16);
    client.subscribe(opts.topic.clone(), QoS::AtLeastOnce).await.context("subscribe")?;
    let mut seen = 0;
    let mut connected = false;
    loop {
        // Only the connection itself is timed: a quiet but healthy broker is fine.
        let poll = eventloop.poll();
        let event = if connected {
            poll.await
        } else {
            tokio::time::timeout(Duration::from_secs(15), poll)
                .await
                .with_context(|| format!("no answer from the broker at {}:{} in 15s", opts.host, opts.port))?
        }
        .with_context(|| format!("MQTT connection to {}:{}", opts.host, opts.port))?;
        if let Event::Incoming(Packet::ConnAck(_)) = event {
            connected = true;
        }
        if let Event::Incoming(Packet::Publish(p)) = event {
            println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
            seen += 1;
            if opts.count > 0 && seen >= opts.count {
                return Ok(());
            }
        }
    }
}
