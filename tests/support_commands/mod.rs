//! The ERP's side of the command contract: an MQTT client that publishes commands on
//! `{root}/cmd/{name}` and records what comes back on `{root}/cmd/response`, `{root}/events`
//! and `{root}/telemetry/+`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub struct Erp {
    client: AsyncClient,
    root: String,
    messages: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Erp {
    /// Connects to the broker on `port`, subscribes to `{root}/#` and waits for the SUBACK.
    pub async fn start(port: u16, root: &str) -> Self {
        let mut opts = MqttOptions::new(format!("erp-commands-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5)).set_clean_session(true).set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let messages: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let (sink, filter, sub_client) = (messages.clone(), format!("{root}/#"), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        sink.lock().unwrap().push((p.topic.clone(), json));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx).await.expect("SUBACK within 10 s").expect("ERP task alive");
        Erp { client, root: root.to_string(), messages, task }
    }

    /// Publishes `payload` as it is on `{root}/cmd/{name}` (QoS 1).
    pub async fn send(&self, name: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(format!("{}/cmd/{name}", self.root), QoS::AtLeastOnce, false, payload.into()).await.expect("queue a command");
    }

    fn on(&self, leaf: &str) -> Vec<Value> {
        let topic = format!("{}/{leaf}", self.root);
        self.messages.lock().unwrap().iter().filter(|(t, _)| *t == topic).map(|(_, v)| v.clone()).collect()
    }

    pub fn responses(&self) -> Vec<Value> {
        self.on("cmd/response")
    }

    pub fn events(&self) -> Vec<Value> {
        self.on("events")
    }

    pub fn statuses(&self) -> Vec<Value> {
        self.on("status")
    }

    /// Telemetry batches of `device`, in arrival order.
    pub fn telemetry(&self, device: &str) -> Vec<Value> {
        self.on(&format!("telemetry/{device}"))
    }

    /// The last value of `tag` read with good quality, if any.
    pub fn last_good(&self, device: &str, tag: &str) -> Option<Value> {
        self.telemetry(device)
            .iter()
            .flat_map(|b| b["samples"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["tag"] == tag && s["q"] == "good")
            .map(|s| s["v"].clone())
            .last()
    }

    /// Waits up to `limit` for the reply to the command `id`.
    pub async fn response(&self, id: &str, limit: Duration) -> Value {
        super::support::wait_for(&format!("the reply to command {id:?}"), limit, || self.responses().into_iter().find(|r| r["id"] == id))
            .await
    }

    /// Sends `payload` (which carries `"id": id`) on `cmd/{name}` and returns the reply.
    pub async fn ask(&self, name: &str, id: &str, payload: Value) -> Value {
        assert_eq!(payload["id"], id, "the payload must carry the id");
        self.send(name, payload.to_string()).await;
        self.response(id, Duration::from_secs(15)).await
    }

    /// Sends a payload whose id the agent cannot read, and returns the new `"id": null` reply.
    pub async fn ask_without_id(&self, name: &str, payload: &[u8]) -> Value {
        let before = self.responses().iter().filter(|r| r["id"].is_null()).count();
        self.send(name, payload.to_vec()).await;
        super::support::wait_for("a reply with a null id", Duration::from_secs(15), || {
            self.responses().into_iter().filter(|r| r["id"].is_null()).nth(before)
        })
        .await
    }

    /// Waits for the audit event of command `id`.
    pub async fn audit(&self, id: &Value) -> Value {
        super::support::wait_for(&format!("the audit event of command {id}"), Duration::from_secs(15), || {
            self.events().into_iter().find(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("command_")) && e["details"]["id"] == *id)
        })
        .await
    }
}

impl Drop for Erp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
