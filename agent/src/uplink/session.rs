//! The uplink task: one rumqttc event loop, driven here, publishing from the outbox.
//!
//! Why the retransmission queue of rumqttc is emptied on every disconnect: the outbox,
//! not rumqttc's memory, is the source of truth. After each (re)connection everything
//! still in the outbox is published again, in order, marked `historical` when it was
//! stored before the connection came up. This also covers a broker that lost our session
//! (rumqttc would then silently drop its pending packets) and an agent restart. The cost
//! is a possible duplicate after a reconnect, which `batch_seq` lets the ERP drop.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use edge_drivers::backoff::Backoff;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::topics::Topics;
use super::tracker::{Carried, Tracker};
use crate::config::Config;
use crate::live::Live;
use crate::payload::{self, TelemetryPayload};
use crate::store::Outbox;

/// Largest MQTT packet sent or accepted (a full batch of 1000 samples is ~100 KiB).
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// Set to `Some(deadline)` to make the uplink drain the outbox and go offline.
pub type UplinkShutdown = watch::Receiver<Option<Instant>>;

pub struct Uplink {
    pub config: Config,
    pub outbox: Outbox,
    pub live: Live,
    /// Woken by the store writer after each write.
    pub stored: Arc<Notify>,
}

/// Where the next publish reads from in the outbox.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    next_batch: u64,
    next_event: u64,
}

struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    topics: Topics,
    gateway: String,
    window: usize,
    tracker: Tracker,
    cursor: Cursor,
    connected: bool,
    /// Batches numbered below this were stored before the current connection came up.
    live_from: u64,
}

impl Uplink {
    fn options(&self) -> MqttOptions {
        let topics = Topics::new(self.config.topic_root());
        let mqtt = &self.config.mqtt;
        let mut opts = MqttOptions::new(self.config.client_id(), mqtt.host.clone(), mqtt.port);
        opts.set_keep_alive(mqtt.keep_alive)
            // Keep the broker-side session (and queued commands) across reconnects.
            .set_clean_session(false)
            .set_inflight(mqtt.max_inflight)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                topics.status(),
                serde_json::to_vec(&payload::status("offline")).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
            ));
        opts
    }

    /// Runs until `shutdown` carries a deadline and the outbox is drained (or the
    /// deadline passes); then publishes `offline` and disconnects.
    pub async fn run(self, mut shutdown: UplinkShutdown) {
        let window = usize::from(self.config.mqtt.max_inflight);
        let (client, mut eventloop) = AsyncClient::new(self.options(), window + 16);
        eventloop.network_options.set_connection_timeout(10);
        let broker = format!("{}:{}", self.config.mqtt.host, self.config.mqtt.port);
        self.live.update(|s| s.uplink.broker = broker.clone());
        let mut s = Session {
            client,
            eventloop,
            topics: Topics::new(self.config.topic_root()),
            gateway: self.config.gateway.id.clone(),
            window,
            tracker: Tracker::default(),
            cursor: Cursor::default(),
            connected: false,
            live_from: 0,
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut deadline: Option<Instant> = *shutdown.borrow();

        loop {
            if s.connected {
                s.fill(&self.outbox);
            }
            self.show(&s);
            if let Some(d) = deadline {
                let drained = s.tracker.is_empty() && self.outbox.pending_batches() == 0 && self.outbox.pending_events() == 0;
                if (s.connected && drained) || Instant::now() >= d {
                    break;
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                event = s.eventloop.poll() => match event {
                    Ok(event) => s.handle(event, &self.outbox, &mut backoff, &self.live),
                    Err(e) => {
                        s.lost(&e.to_string(), &self.live);
                        let delay = backoff.next_delay();
                        debug!(?delay, "uplink reconnect delay");
                        let until = deadline.map_or(Instant::now() + delay, |d| d.min(Instant::now() + delay));
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => {}
                            Ok(()) = shutdown.changed() => deadline = *shutdown.borrow(),
                        }
                    }
                },
                () = self.stored.notified(), if s.connected => {}
                Ok(()) = shutdown.changed() => deadline = *shutdown.borrow(),
                () = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
            }
        }
        s.go_offline(deadline).await;
        self.live.update(|v| v.uplink.connected = false);
        info!(pending_batches = self.outbox.pending_batches(), "uplink stopped");
    }

    fn show(&self, s: &Session) {
        let in_flight = s.tracker.in_flight() as u64;
        let (pending_batches, pending_events) = (self.outbox.pending_batches(), self.outbox.pending_events());
        let acked = self.outbox.counters.batches_acked.load(std::sync::atomic::Ordering::Relaxed);
        self.live.update(|v| {
            v.uplink.in_flight = in_flight;
            v.store.pending_batches = pending_batches;
            v.store.pending_events = pending_events;
            v.store.batches_acked = acked;
        });
    }
}

impl Session {
    fn handle(&mut self, event: Event, outbox: &Outbox, backoff: &mut Backoff, live: &Live) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                info!(session_present = ack.session_present, "uplink connected");
                backoff.reset();
                self.connected = true;
                // Everything still in the outbox is resent; what is there now is history.
                self.tracker.clear();
                self.cursor = Cursor::default();
                self.live_from = outbox.next_batch_seq();
                live.update(|v| {
                    v.uplink.connected = true;
                    v.uplink.since = Some(Utc::now());
                    v.uplink.last_error = None;
                    v.uplink.connects += 1;
                });
                self.publish_status("online");
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.tracker.sent(pkid);
                live.update(|v| v.uplink.published += 1);
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let result = match self.tracker.acked(ack.pkid) {
                    Some(Carried::Telemetry(seq)) => outbox.ack_telemetry(seq),
                    Some(Carried::Event(seq)) => outbox.ack_event(seq),
                    Some(Carried::Status) | None => Ok(()),
                };
                if let Err(e) = result {
                    // The entry stays and is sent again later: a duplicate, never a loss.
                    error!(error = %e, pkid = ack.pkid, "could not delete an acknowledged entry");
                }
                live.update(|v| v.uplink.acked += 1);
            }
            _ => {}
        }
    }

    fn lost(&mut self, reason: &str, live: &Live) {
        if self.connected {
            warn!(%reason, "uplink connection lost");
        } else {
            debug!(%reason, "uplink connect failed");
        }
        self.connected = false;
        // The outbox will resend all of it after reconnecting (see the module comment).
        self.eventloop.pending.clear();
        self.eventloop.state.events.clear();
        self.eventloop.state.collision = None;
        self.tracker.clear();
        live.update(|v| {
            v.uplink.connected = false;
            v.uplink.since = Some(Utc::now());
            v.uplink.last_error = Some(reason.to_string());
            v.uplink.connection_errors += 1;
            v.uplink.in_flight = 0;
        });
    }

    fn publish_status(&mut self, state: &str) {
        let body = serde_json::to_vec(&payload::status(state)).unwrap_or_default();
        match self.client.try_publish(self.topics.status(), QoS::AtLeastOnce, true, body) {
            Ok(()) => self.tracker.queued(Carried::Status),
            Err(e) => warn!(error = %e, "could not queue the status message"),
        }
    }

    /// Queues publishes from the outbox until the in-flight window is full: events first
    /// (they are few and matter most), then telemetry in `batch_seq` order.
    fn fill(&mut self, outbox: &Outbox) {
        let room = self.window.saturating_sub(self.tracker.len());
        if room == 0 {
            return;
        }
        let mut used = 0;
        for (seq, event) in outbox.events_from(self.cursor.next_event, room) {
            let Ok(body) = serde_json::to_vec(&event.0) else { continue };
            if self.client.try_publish(self.topics.events(), QoS::AtLeastOnce, false, body).is_err() {
                return;
            }
            self.tracker.queued(Carried::Event(seq));
            self.cursor.next_event = seq + 1;
            used += 1;
        }
        for (seq, batch) in outbox.telemetry_from(self.cursor.next_batch, room - used) {
            let topic = self.topics.telemetry(&batch.device);
            let body = TelemetryPayload {
                gateway: self.gateway.clone(),
                device: batch.device,
                batch_seq: seq,
                historical: seq < self.live_from,
                samples: batch.samples,
            };
            let Ok(body) = serde_json::to_vec(&body) else { continue };
            if self.client.try_publish(topic, QoS::AtLeastOnce, false, body).is_err() {
                return;
            }
            self.tracker.queued(Carried::Telemetry(seq));
            self.cursor.next_batch = seq + 1;
        }
    }

    /// Publishes `offline` (retained) and waits, within the deadline, for its PUBACK so
    /// the broker has it before the connection closes; the Will covers the other cases.
    async fn go_offline(&mut self, deadline: Option<Instant>) {
        if !self.connected {
            return;
        }
        let until = deadline.unwrap_or_else(Instant::now).max(Instant::now() + Duration::from_millis(500));
        self.publish_status("offline");
        let _ = self.client.try_disconnect();
        loop {
            match tokio::time::timeout_at(until, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}
