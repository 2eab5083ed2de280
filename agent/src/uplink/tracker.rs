//! Matching PUBACKs to outbox entries.
//!
//! rumqttc's `publish()` only queues a packet; the packet id is assigned later, by the
//! event loop, and announced as `Outgoing::Publish(pkid)` in the order the publishes were
//! queued. The tracker keeps that queue order, learns each packet id as it is announced,
//! and on `PubAck(pkid)` says which outbox entry is now safe to delete.

use std::collections::{HashMap, VecDeque};

/// What a QoS 1 publish carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    Status,
    Telemetry(u64),
    Event(u64),
    /// A reply to a command (`Outbox::replies_from`), deleted with `ack_reply`.
    Reply(u64),
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// Queued, packet id not known yet, in queue order.
    queued: VecDeque<Carried>,
    /// Sent, waiting for the PUBACK.
    in_flight: HashMap<u16, Carried>,
}

impl Tracker {
    pub fn queued(&mut self, carried: Carried) {
        self.queued.push_back(carried);
    }

    /// The event loop announced that the oldest queued publish went out as `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        if self.in_flight.contains_key(&pkid) {
            return; // a retransmission of a packet we already know
        }
        if let Some(carried) = self.queued.pop_front() {
            self.in_flight.insert(pkid, carried);
        }
    }

    /// The broker acknowledged `pkid`: returns what it carried.
    pub fn acked(&mut self, pkid: u16) -> Option<Carried> {
        self.in_flight.remove(&pkid)
    }

    /// Publishes queued or in flight.
    pub fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The connection is gone: nothing queued or in flight will be acknowledged.
    pub fn clear(&mut self) {
        self.queued.clear();
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_puback_names_the_entry_whose_publish_got_that_packet_id() {
        // Given three publishes queued in order
        let mut t = Tracker::default();
        t.queued(Carried::Status);
        t.queued(Carried::Telemetry(7));
        t.queued(Carried::Event(3));
        // When the event loop sends them as packet ids 1, 2, 3
        t.sent(1);
        t.sent(2);
        t.sent(3);
        // Then acks map back to the entries, in any order
        assert_eq!(t.acked(3), Some(Carried::Event(3)));
        assert_eq!(t.acked(2), Some(Carried::Telemetry(7)));
        assert_eq!(t.acked(1), Some(Carried::Status));
        assert!(t.is_empty());
    }

    #[test]
    fn an_ack_for_an_unknown_packet_id_deletes_nothing() {
        let mut t = Tracker::default();
        t.queued(Carried::Telemetry(1));
        t.sent(5);
        assert_eq!(t.acked(6), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_retransmission_does_not_consume_the_next_queued_entry() {
        let mut t = Tracker::default();
        t.queued(Carried::Telemetry(1));
        t.queued(Carried::Telemetry(2));
        t.sent(1);
        t.sent(1); // resent with the same id
        t.sent(2);
        assert_eq!(t.acked(2), Some(Carried::Telemetry(2)));
    }

    #[test]
    fn replies_are_tracked_like_the_other_entries() {
        // Given a reply queued first, then a batch and an event
        let mut t = Tracker::default();
        t.queued(Carried::Reply(4));
        t.queued(Carried::Telemetry(9));
        t.queued(Carried::Event(2));
        t.sent(10);
        t.sent(11);
        t.sent(12);
        // Then the reply's PUBACK names the reply, by its own sequence number
        assert_eq!(t.acked(10), Some(Carried::Reply(4)));
        assert_eq!(t.acked(12), Some(Carried::Event(2)));
        assert_eq!(t.acked(11), Some(Carried::Telemetry(9)));
        assert!(t.is_empty());
    }

    #[test]
    fn clearing_forgets_everything_so_nothing_stale_is_deleted_later() {
        let mut t = Tracker::default();
        t.queued(Carried::Telemetry(1));
        t.sent(1);
        t.clear();
        assert_eq!(t.acked(1), None);
    }
}
