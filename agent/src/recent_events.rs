//! The latest events, in memory, for the status page and `/api/events`: the same payloads
//! the ERP receives over MQTT, kept as they are appended to the outbox (so the page shows an
//! event at once, whether or not the broker has taken it yet), with who acknowledged them on
//! the page (`crate::web::actions`; the ERP gets each acknowledgement as an
//! `event_acknowledged` event). Acknowledgements live as long as their event stays here: in
//! memory, for the latest [`KEPT`] events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::events::Severity;
use crate::payload::EventPayload;

/// How many events the page can list (older ones are in the ERP, and in the log).
pub const KEPT: usize = 500;

/// Shared ring of the latest events.
#[derive(Clone, Default)]
pub struct RecentEvents {
    ring: Arc<Mutex<VecDeque<Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    event: EventPayload,
    ack: Option<Acknowledgement>,
}

/// Who acknowledged an event, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acknowledgement {
    pub by: String,
    /// RFC 3339 UTC with milliseconds.
    pub at: String,
}

/// One event of `/api/events`: the payload as published, and its acknowledgement (`null`
/// until an operator acknowledged it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListedEvent {
    #[serde(flatten)]
    pub event: EventPayload,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
}

/// What `/api/events` answers: newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventList {
    /// Events kept in memory (the list is cut to `limit` of them).
    pub kept: usize,
    pub events: Vec<ListedEvent>,
}

/// What [`RecentEvents::claim_ack`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The event was not acknowledged: it is now, by the claimant (the event as it is).
    Claimed(EventPayload),
    /// Someone acknowledged it before.
    Already(Acknowledgement),
    /// No such event among the latest [`KEPT`].
    Unknown,
    /// An `info` event: nothing to acknowledge.
    NotNeeded(Severity),
}

impl RecentEvents {
    pub fn push(&self, event: EventPayload) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(Entry { event, ack: None });
    }

    /// Acknowledges event `id` by `by` at `at`, unless it is unknown, needs no
    /// acknowledgement (`info`), or was acknowledged before: at most one claim succeeds per
    /// event, however many operators press the button at once.
    pub fn claim_ack(&self, id: &str, by: &str, at: DateTime<Utc>) -> Claim {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = ring.iter_mut().rev().find(|e| e.event.id == id) else { return Claim::Unknown };
        if let Some(ack) = &entry.ack {
            return Claim::Already(ack.clone());
        }
        if entry.event.severity < Severity::Warning {
            return Claim::NotNeeded(entry.event.severity);
        }
        entry.ack = Some(Acknowledgement { by: by.to_string(), at: crate::payload::rfc3339(at) });
        Claim::Claimed(entry.event.clone())
    }

    /// Takes back a claim of [`RecentEvents::claim_ack`] whose audit event could not be
    /// stored: the event is unacknowledged again.
    pub fn release_ack(&self, id: &str) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = ring.iter_mut().rev().find(|e| e.event.id == id) {
            entry.ack = None;
        }
    }

    /// Events at or after `since` and at least `severity`, newest first, at most `limit`.
    pub fn list(&self, since: Option<DateTime<Utc>>, severity: Option<Severity>, limit: usize) -> EventList {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let events = ring
            .iter()
            .rev()
            .filter(|e| severity.is_none_or(|min| e.event.severity >= min))
            .filter(|e| since.is_none_or(|t| DateTime::parse_from_rfc3339(&e.event.ts).is_ok_and(|ts| ts >= t)))
            .take(limit)
            .map(|e| ListedEvent {
                event: e.event.clone(),
                acknowledged_by: e.ack.as_ref().map(|a| a.by.clone()),
                acknowledged_at: e.ack.as_ref().map(|a| a.at.clone()),
            })
            .collect();
        EventList { kept: ring.len(), events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32, severity: Severity) -> EventPayload {
        EventPayload {
            id: format!("gw-{n}"),
            kind: "device_lost".into(),
            gateway: "gw".into(),
            asset: "plc".into(),
            severity,
            ts: format!("2026-12-07T10:{:02}:00Z", n % 60),
            details: serde_json::json!({"reason": "timeout"}),
        }
    }

    #[test]
    fn the_newest_come_first_filtered_by_severity_and_time() {
        let recent = RecentEvents::default();
        for n in 0..10 {
            recent.push(event(n, if n % 3 == 0 { Severity::Warning } else { Severity::Info }));
        }
        let all = recent.list(None, None, 100);
        assert_eq!(all.events.iter().map(|e| e.event.id.as_str()).take(2).collect::<Vec<_>>(), ["gw-9", "gw-8"]);
        let warnings = recent.list(None, Some(Severity::Warning), 100);
        assert_eq!(warnings.events.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(), ["gw-9", "gw-6", "gw-3", "gw-0"]);
        let since = DateTime::parse_from_rfc3339("2026-12-07T10:07:00Z").map(|t| t.with_timezone(&Utc)).ok();
        assert_eq!(recent.list(since, None, 100).events.len(), 3);
        assert_eq!(recent.list(None, None, 2).events.len(), 2);
    }

    #[test]
    fn the_ring_keeps_the_latest_500() {
        let recent = RecentEvents::default();
        for n in 0..(KEPT as u32 + 20) {
            recent.push(event(n, Severity::Info));
        }
        let list = recent.list(None, None, usize::MAX);
        assert_eq!((list.kept, list.events.len()), (KEPT, KEPT));
        assert_eq!(list.events.last().map(|e| e.event.id.clone()), Some("gw-20".to_string()));
    }

    #[test]
    fn an_event_is_acknowledged_once_and_the_list_says_by_whom() {
        // Given a warning and an info event
        let recent = RecentEvents::default();
        recent.push(event(1, Severity::Warning));
        recent.push(event(2, Severity::Info));
        let at = Utc::now();
        // When an operator claims the warning, then it is hers, and a second claim finds hers
        assert!(matches!(recent.claim_ack("gw-1", "alice", at), Claim::Claimed(e) if e.id == "gw-1"));
        let Claim::Already(ack) = recent.claim_ack("gw-1", "bob", Utc::now()) else { panic!("claimed twice") };
        assert_eq!((ack.by.as_str(), ack.at.clone()), ("alice", crate::payload::rfc3339(at)));
        // And the list shows it, published fields unchanged and the acknowledgement beside them
        let listed = serde_json::to_value(recent.list(None, None, 10)).unwrap();
        assert_eq!(listed["events"][1]["id"], "gw-1");
        assert_eq!(listed["events"][1]["acknowledged_by"], "alice");
        assert_eq!(listed["events"][1]["acknowledged_at"], crate::payload::rfc3339(at));
        assert_eq!(listed["events"][0]["acknowledged_by"], serde_json::Value::Null);
        // And an info event needs none, an unknown one is not found
        assert_eq!(recent.claim_ack("gw-2", "alice", at), Claim::NotNeeded(Severity::Info));
        assert_eq!(recent.claim_ack("gw-404", "alice", at), Claim::Unknown);
        // When a claim is released (its audit event could not be stored), then it can be made again
        recent.release_ack("gw-1");
        assert!(matches!(recent.claim_ack("gw-1", "bob", at), Claim::Claimed(_)));
    }
}
