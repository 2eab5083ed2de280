//! The demo's console shows every event the agent publishes, from the first one: a
//! subscriber on the embedded broker, subscribed before the agent connects. (`watch`
//! started later only sees what comes after it subscribed, and `…/events` is not
//! retained in the MQTT contract.)

use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tracing::warn;

/// Longest line of details printed for one event.
const DETAILS_MAX: usize = 160;

/// Subscribes to `topic` on the embedded broker and returns once the broker
/// confirmed it; then prints each event on standard output until the process ends.
pub async fn print_from_start(broker: std::net::SocketAddr, topic: String) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(format!("edge-agent-demo-console-{}", std::process::id()), broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client.subscribe(topic.clone(), QoS::AtLeastOnce).await.context("subscribe to the demo's events")?;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
                return Ok::<_, rumqttc::ConnectionError>(());
            }
        }
    })
    .await
    .context("the embedded broker did not confirm the subscription in 5 s")??;
    tokio::spawn(async move {
        let _client = client; // dropping it would end the session
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => println!("{}", line(&p.payload)),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "the demo's console lost the embedded broker; events are no longer printed here");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

/// `event  <kind>  <asset>  <severity>  <details>` for one event payload.
fn line(payload: &[u8]) -> String {
    let Ok(event) = serde_json::from_slice::<Value>(payload) else {
        return format!("event  (not JSON) {}", String::from_utf8_lossy(payload));
    };
    let field = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let mut details = event.get("details").map(Value::to_string).unwrap_or_default();
    if details.len() > DETAILS_MAX {
        let cut = (0..=DETAILS_MAX).rev().find(|&i| details.is_char_boundary(i)).unwrap_or(0);
        details.truncate(cut);
        details.push('…');
    }
    format!("event  {:<18} {:<14} {:<8} {details}", field("kind"), field("asset"), field("severity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_with_its_kind_asset_severity_and_shortened_details() {
        let long = "x".repeat(400);
        let payload = serde_json::json!({"kind": "device_connected", "asset": "mill-plc", "severity": "info", "details": {"note": long}});
        let text = line(payload.to_string().as_bytes());
        assert!(text.starts_with("event  device_connected   mill-plc       info     {\"note\":\"xxx"), "{text}");
        assert!(text.ends_with('…') && text.len() < 260, "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(line(b"nope"), "event  (not JSON) nope");
    }
}
