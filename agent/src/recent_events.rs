//! The latest events, in memory, for the status page and `/api/events`: the same payloads
//! the ERP receives over MQTT, kept as they are appended to the outbox (so the page shows an
//! event at once, whether or not the broker has taken it yet).

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
    ring: Arc<Mutex<VecDeque<EventPayload>>>,
}

/// What `/api/events` answers: newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventList {
    /// Events kept in memory (the list is cut to `limit` of them).
    pub kept: usize,
    pub events: Vec<EventPayload>,
}

impl RecentEvents {
    pub fn push(&self, event: EventPayload) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Events at or after `since` and at least `severity`, newest first, at most `limit`.
    pub fn list(&self, since: Option<DateTime<Utc>>, severity: Option<Severity>, limit: usize) -> EventList {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let events = ring
            .iter()
            .rev()
            .filter(|e| severity.is_none_or(|min| e.severity >= min))
            .filter(|e| since.is_none_or(|t| DateTime::parse_from_rfc3339(&e.ts).is_ok_and(|ts| ts >= t)))
            .take(limit)
            .cloned()
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
        assert_eq!(all.events.iter().map(|e| e.id.as_str()).take(2).collect::<Vec<_>>(), ["gw-9", "gw-8"]);
        let warnings = recent.list(None, Some(Severity::Warning), 100);
        assert_eq!(warnings.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["gw-9", "gw-6", "gw-3", "gw-0"]);
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
        assert_eq!(list.events.last().map(|e| e.id.clone()), Some("gw-20".to_string()));
    }
}
