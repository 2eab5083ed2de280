//! The MQTT client of either version (`mqtt.protocol`) behind one small interface, so that
//! [`super::session`] is written once: [`Transport`] wraps rumqttc's 3.1.1 or 5 client and
//! event loop, and [`Wire`] is what the session needs to know of an event of either.
//!
//! Checked in rumqttc 0.25.1's sources: `v5::EventLoop` has the same public `pending`
//! queue, `state.events` and `state.collision` as the 3.1.1 one, with the same meaning
//! (`poll` moves unacknowledged publishes and unread requests into `pending` on an error,
//! and resends `pending` after a CONNACK with `session_present`), so
//! [`Transport::clear_pending`] empties the same things for both; and both announce
//! `Outgoing::Publish(pkid)` in the order the publishes were queued, which the
//! [`super::tracker::Tracker`] relies on.

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PubAckReason};
use rumqttc::{Event, Outgoing, Packet, SubscribeReasonCode};

use super::config::Protocol;
use super::options::{Broker, Prepared};

/// A connection error of either version.
#[derive(Debug)]
pub enum LinkError {
    V4(rumqttc::ConnectionError),
    V5(v5::ConnectionError),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::V4(e) => e.fmt(f),
            LinkError::V5(e) => e.fmt(f),
        }
    }
}

/// What the session needs to know of an event of the event loop, for either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// The broker accepted the connection.
    ConnAck { session_present: bool },
    /// An inbound publish (a command).
    Publish { topic: String, payload: Vec<u8> },
    /// The broker acknowledged the publish `pkid`. `refused` is `Some(reason)` when an
    /// MQTT 5 PUBACK carries an error reason code (0x80 or above): the broker did not
    /// take the message, so the outbox entry must stay (see [`v5_puback`]).
    PubAck { pkid: u16, refused: Option<String> },
    /// A publish went out with packet id `pkid` (its first transmission or a resend).
    SentPublish(u16),
    /// The broker answered the subscription; `refused` when it refused a filter.
    SubAck { refused: bool },
    /// The DISCONNECT packet went out.
    SentDisconnect,
    /// Anything else (pings, our own PUBACKs, …).
    Other,
}

/// The client and event loop of the protocol in use.
// One per uplink, replaced only on failover: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    V4(rumqttc::AsyncClient, rumqttc::EventLoop),
    V5(v5::AsyncClient, v5::EventLoop),
}

/// Why a request could not be queued (the request channel is full or closed).
#[derive(Debug)]
pub struct QueueFull(pub String);

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Transport {
    /// A client for `broker` speaking `prepared.protocol`, with a request channel of
    /// `capacity` and a connect timeout of `connect_timeout_s` seconds.
    pub fn new(prepared: &Prepared, broker: &Broker, capacity: usize, connect_timeout_s: u64) -> Self {
        match prepared.protocol {
            Protocol::V311 => {
                let (client, mut eventloop) = rumqttc::AsyncClient::new(prepared.options(broker), capacity);
                eventloop.network_options.set_connection_timeout(connect_timeout_s);
                Transport::V4(client, eventloop)
            }
            Protocol::V5 => {
                let mut options = prepared.options_v5(broker);
                options.set_connection_timeout(connect_timeout_s);
                let (client, eventloop) = v5::AsyncClient::new(options, capacity);
                Transport::V5(client, eventloop)
            }
        }
    }

    /// The next event of the event loop (connecting first if needed).
    pub async fn poll(&mut self) -> Result<Wire, LinkError> {
        match self {
            Transport::V4(_, eventloop) => eventloop.poll().await.map(v4_wire).map_err(LinkError::V4),
            Transport::V5(_, eventloop) => eventloop.poll().await.map(v5_wire).map_err(LinkError::V5),
        }
    }

    /// Queues a QoS 1 publish (the packet id is assigned when it goes out).
    pub fn try_publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), QueueFull> {
        match self {
            Transport::V4(client, _) => {
                client.try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload).map_err(|e| QueueFull(e.to_string()))
            }
            Transport::V5(client, _) => {
                client.try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload).map_err(|e| QueueFull(e.to_string()))
            }
        }
    }

    /// Queues a QoS 1 subscription to `filter`.
    pub fn try_subscribe(&self, filter: String) -> Result<(), QueueFull> {
        match self {
            Transport::V4(client, _) => client.try_subscribe(filter, rumqttc::QoS::AtLeastOnce).map_err(|e| QueueFull(e.to_string())),
            Transport::V5(client, _) => client.try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce).map_err(|e| QueueFull(e.to_string())),
        }
    }

    /// Queues a DISCONNECT (normal disconnection: the broker does not publish the Will).
    pub fn try_disconnect(&self) -> Result<(), QueueFull> {
        match self {
            Transport::V4(client, _) => client.try_disconnect().map_err(|e| QueueFull(e.to_string())),
            Transport::V5(client, _) => client.try_disconnect().map_err(|e| QueueFull(e.to_string())),
        }
    }

    /// Drops the network connection (after a DISCONNECT, or instead of one): the next
    /// [`Transport::poll`] connects again, with the options (and Will) as they are then.
    pub fn close(&mut self) {
        match self {
            Transport::V4(_, eventloop) => eventloop.clean(),
            Transport::V5(_, eventloop) => eventloop.clean(),
        }
    }

    /// Forgets every publish rumqttc would resend by itself (the outbox resends them; see
    /// the module comment of `session`): the pending queue, buffered events and a
    /// publish held back by a packet id collision.
    pub fn clear_pending(&mut self) {
        match self {
            Transport::V4(_, eventloop) => {
                eventloop.pending.clear();
                eventloop.state.events.clear();
                eventloop.state.collision = None;
            }
            Transport::V5(_, eventloop) => {
                eventloop.pending.clear();
                eventloop.state.events.clear();
                eventloop.state.collision = None;
            }
        }
    }

    /// Replaces the Will of the next CONNECT (QoS 1, not retained): the Sparkplug NDEATH,
    /// whose `bdSeq` changes with every connection. The event loop reads its options again
    /// on each reconnect.
    pub fn set_will(&mut self, topic: String, payload: Vec<u8>) {
        match self {
            Transport::V4(_, eventloop) => {
                eventloop.mqtt_options.set_last_will(rumqttc::LastWill::new(topic, payload, rumqttc::QoS::AtLeastOnce, false));
            }
            Transport::V5(_, eventloop) => {
                eventloop.options.set_last_will(v5::mqttbytes::v5::LastWill::new(
                    topic,
                    payload,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    None,
                ));
            }
        }
    }

    /// Whether the event loop rumqttc holds has anything it would resend on its own.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        match self {
            Transport::V4(_, eventloop) => eventloop.pending.len(),
            Transport::V5(_, eventloop) => eventloop.pending.len(),
        }
    }
}

/// A 3.1.1 event as the session sees it.
pub fn v4_wire(event: Event) -> Wire {
    match event {
        Event::Incoming(Packet::ConnAck(ack)) => Wire::ConnAck { session_present: ack.session_present },
        Event::Incoming(Packet::Publish(p)) => Wire::Publish { topic: p.topic, payload: p.payload.to_vec() },
        Event::Incoming(Packet::PubAck(ack)) => Wire::PubAck { pkid: ack.pkid, refused: None },
        Event::Incoming(Packet::SubAck(ack)) => {
            Wire::SubAck { refused: ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) }
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => Wire::SentPublish(pkid),
        Event::Outgoing(Outgoing::Disconnect) => Wire::SentDisconnect,
        _ => Wire::Other,
    }
}

/// An MQTT 5 event as the session sees it.
pub fn v5_wire(event: v5::Event) -> Wire {
    use v5::mqttbytes::v5::SubscribeReasonCode as V5Sub;
    match event {
        v5::Event::Incoming(V5Packet::ConnAck(ack)) => Wire::ConnAck { session_present: ack.session_present },
        v5::Event::Incoming(V5Packet::Publish(p)) => {
            Wire::Publish { topic: String::from_utf8_lossy(&p.topic).into_owned(), payload: p.payload.to_vec() }
        }
        v5::Event::Incoming(V5Packet::PubAck(ack)) => Wire::PubAck { pkid: ack.pkid, refused: v5_puback(&ack.reason) },
        v5::Event::Incoming(V5Packet::SubAck(ack)) => {
            Wire::SubAck { refused: ack.return_codes.iter().any(|c| !matches!(c, V5Sub::Success(_))) }
        }
        v5::Event::Outgoing(Outgoing::Publish(pkid)) => Wire::SentPublish(pkid),
        v5::Event::Outgoing(Outgoing::Disconnect) => Wire::SentDisconnect,
        _ => Wire::Other,
    }
}

/// Whether an MQTT 5 PUBACK refuses the message: `None` when the broker took it,
/// `Some(reason)` otherwise.
///
/// MQTT 5 (§3.4.2.1) splits the reason codes: below 0x80 the publish was accepted —
/// `Success` (0x00) and `No matching subscribers` (0x10, mosquitto's answer whenever no ERP
/// happens to be subscribed; the message was taken and, for a retained one, stored). From
/// 0x80 on (`Not authorized`, `Quota exceeded`, `Topic Name invalid`, …) the broker did NOT
/// take the message although the PUBACK ends the exchange: deleting the outbox entry
/// would lose it. So such a PUBACK frees the packet id (rumqttc has already freed it) but
/// keeps the entry, which is sent again after the next (re)connection; the reason is
/// logged. MQTT 3.1.1 has no such codes: every PUBACK there is an acceptance.
///
/// rumqttc 0.25.1 (`v5::state::handle_incoming_puback`) frees the packet id of a refused
/// publish too but returns before releasing a publish held back by a packet id collision;
/// such a stuck collision ends in a connection error, after which `clear_pending` and the
/// resend from the outbox apply as for any lost connection.
pub fn v5_puback(reason: &PubAckReason) -> Option<String> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
        other => Some(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5 as m5;

    #[test]
    fn v4_events_map_to_the_neutral_events() {
        let connack = rumqttc::ConnAck::new(rumqttc::ConnectReturnCode::Success, true);
        assert_eq!(v4_wire(Event::Incoming(Packet::ConnAck(connack))), Wire::ConnAck { session_present: true });
        let publish = rumqttc::Publish::new("a/cmd/ping", rumqttc::QoS::AtLeastOnce, b"{}".to_vec());
        assert_eq!(
            v4_wire(Event::Incoming(Packet::Publish(publish))),
            Wire::Publish { topic: "a/cmd/ping".into(), payload: b"{}".to_vec() }
        );
        assert_eq!(v4_wire(Event::Incoming(Packet::PubAck(rumqttc::PubAck::new(7)))), Wire::PubAck { pkid: 7, refused: None });
        assert_eq!(v4_wire(Event::Outgoing(Outgoing::Publish(9))), Wire::SentPublish(9));
        assert_eq!(v4_wire(Event::Outgoing(Outgoing::Disconnect)), Wire::SentDisconnect);
        let ok = rumqttc::SubAck::new(1, vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]);
        assert_eq!(v4_wire(Event::Incoming(Packet::SubAck(ok))), Wire::SubAck { refused: false });
        let no = rumqttc::SubAck::new(1, vec![SubscribeReasonCode::Failure]);
        assert_eq!(v4_wire(Event::Incoming(Packet::SubAck(no))), Wire::SubAck { refused: true });
        assert_eq!(v4_wire(Event::Incoming(Packet::PingResp)), Wire::Other);
    }

    #[test]
    fn v5_events_map_to_the_neutral_events() {
        let connack = m5::ConnAck { session_present: false, code: m5::ConnectReturnCode::Success, properties: None };
        assert_eq!(v5_wire(v5::Event::Incoming(V5Packet::ConnAck(connack))), Wire::ConnAck { session_present: false });
        let publish = m5::Publish::new("a/cmd/ping", v5::mqttbytes::QoS::AtLeastOnce, b"{\"id\":1}".to_vec(), None);
        assert_eq!(
            v5_wire(v5::Event::Incoming(V5Packet::Publish(publish))),
            Wire::Publish { topic: "a/cmd/ping".into(), payload: b"{\"id\":1}".to_vec() }
        );
        assert_eq!(v5_wire(v5::Event::Outgoing(Outgoing::Publish(3))), Wire::SentPublish(3));
        assert_eq!(v5_wire(v5::Event::Outgoing(Outgoing::Disconnect)), Wire::SentDisconnect);
        let ok =
            m5::SubAck { pkid: 1, return_codes: vec![m5::SubscribeReasonCode::Success(v5::mqttbytes::QoS::AtLeastOnce)], properties: None };
        assert_eq!(v5_wire(v5::Event::Incoming(V5Packet::SubAck(ok))), Wire::SubAck { refused: false });
        let no = m5::SubAck { pkid: 1, return_codes: vec![m5::SubscribeReasonCode::NotAuthorized], properties: None };
        assert_eq!(v5_wire(v5::Event::Incoming(V5Packet::SubAck(no))), Wire::SubAck { refused: true });
        assert_eq!(v5_wire(v5::Event::Incoming(V5Packet::PingResp(m5::PingResp))), Wire::Other);
    }

    #[test]
    fn a_v5_puback_with_an_error_reason_is_not_an_acknowledgement() {
        let ack = |reason| v5_wire(v5::Event::Incoming(V5Packet::PubAck(m5::PubAck { pkid: 4, reason, properties: None })));
        assert_eq!(ack(PubAckReason::Success), Wire::PubAck { pkid: 4, refused: None });
        // 0x10 is a success code: the broker took the message, nobody was subscribed
        assert_eq!(ack(PubAckReason::NoMatchingSubscribers), Wire::PubAck { pkid: 4, refused: None });
        assert_eq!(ack(PubAckReason::NotAuthorized), Wire::PubAck { pkid: 4, refused: Some("NotAuthorized".into()) });
        assert_eq!(ack(PubAckReason::QuotaExceeded), Wire::PubAck { pkid: 4, refused: Some("QuotaExceeded".into()) });
    }

    #[test]
    fn clearing_empties_what_rumqttc_would_resend_for_either_version() {
        let c: crate::config::Config = toml::from_str("[gateway]\nid = \"gw\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut c = c.clone();
            c.mqtt.protocol = protocol;
            let p = Prepared::load_with_env(&c, |_| None).unwrap();
            let mut t = Transport::new(&p, &p.brokers[0], 8, 1);
            assert!(matches!((&t, protocol), (Transport::V4(..), Protocol::V311) | (Transport::V5(..), Protocol::V5)));
            match &mut t {
                Transport::V4(_, e) => {
                    e.pending.push_back(rumqttc::Request::PingReq(rumqttc::PingReq));
                    e.state.events.push_back(Event::Outgoing(Outgoing::PingReq));
                }
                Transport::V5(_, e) => {
                    e.pending.push_back(v5::Request::PingReq);
                    e.state.events.push_back(v5::Event::Outgoing(Outgoing::PingReq));
                }
            }
            t.clear_pending();
            assert_eq!(t.pending_len(), 0);
            match &t {
                Transport::V4(_, e) => assert!(e.state.events.is_empty() && e.state.collision.is_none()),
                Transport::V5(_, e) => assert!(e.state.events.is_empty() && e.state.collision.is_none()),
            }
        }
    }
}
