//! An MQTT subscriber that records every message, as the ERP would receive it.
//!
//! It keeps a persistent session (fixed client id, clean_session = false, QoS 1), so the
//! broker queues messages for it while it is disconnected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retained: bool,
    pub json: Value,
}

pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Received>>>,
    /// Number of SUBACKs and session resumptions: grows each time the subscription is live again.
    pub ready_count: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to the broker on `port`, subscribes to `filter` and waits for the SUBACK.
    pub async fn start(port: u16, filter: &str) -> Self {
        let mut opts = MqttOptions::new(format!("erp-test-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(false).set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let messages: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let ready_count: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (sink, filter, ready) = (messages.clone(), filter.to_string(), ready_count.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.session_present {
                            ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        } else {
                            let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        sink.lock().unwrap().push(Received { topic: p.topic.clone(), retained: p.retain, json });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await.expect("SUBACK within 10 s").expect("subscriber task alive");
        Subscriber { messages, ready_count, task }
    }

    /// Waits until the subscription is live again after a broker restart.
    pub async fn wait_resubscribed(&self, before: usize) {
        let ready = self.ready_count.clone();
        super::wait_for("the subscriber to reconnect", Duration::from_secs(20), || {
            (ready.load(std::sync::atomic::Ordering::SeqCst) > before).then_some(())
        })
        .await;
    }

    pub fn ready(&self) -> usize {
        self.ready_count.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// Telemetry payloads received so far, in arrival order.
    pub fn telemetry(&self) -> Vec<Value> {
        self.all().into_iter().filter(|m| m.topic.contains("/telemetry/")).map(|m| m.json).collect()
    }

    pub fn batch_seqs(&self) -> Vec<u64> {
        self.telemetry().iter().filter_map(|t| t["batch_seq"].as_u64()).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
