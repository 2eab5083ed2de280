//! Commands already carried out, by id, so a command delivered twice (a QoS 1 redelivery
//! after a reconnect, or an ERP that retries with the same id) is not carried out twice.
//!
//! Only commands that acted (or may have acted: a write the device did not confirm) are
//! remembered. A refused command did nothing, so a repeat is simply checked again.
//! The memory is bounded (the last [`CAPACITY`] commands) and lives as long as the
//! process: a repeat arriving after a restart is carried out again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How many carried-out commands are remembered.
pub const CAPACITY: usize = 1024;

/// What the memory says about a command that is about to run.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Not carried out before (or too long ago to be remembered).
    New,
    /// The same command (same name, same payload) was carried out: here is its reply.
    Repeat(serde_json::Value),
    /// The id was used by a different command (name or payload differ).
    IdReused,
}

#[derive(Default)]
pub struct RecentCommands(Mutex<Memory>);

#[derive(Default)]
struct Memory {
    by_id: HashMap<String, Entry>,
    order: VecDeque<String>,
}

struct Entry {
    name: String,
    payload: Vec<u8>,
    reply: serde_json::Value,
}

impl RecentCommands {
    pub fn check(&self, name: &str, id: &str, payload: &[u8]) -> Seen {
        let memory = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match memory.by_id.get(id) {
            None => Seen::New,
            Some(e) if e.name == name && e.payload == payload => Seen::Repeat(e.reply.clone()),
            Some(_) => Seen::IdReused,
        }
    }

    pub fn remember(&self, name: &str, id: &str, payload: &[u8], reply: serde_json::Value) {
        let mut memory = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = Entry { name: name.to_string(), payload: payload.to_vec(), reply };
        if memory.by_id.insert(id.to_string(), entry).is_none() {
            memory.order.push_back(id.to_string());
        }
        while memory.order.len() > CAPACITY {
            if let Some(old) = memory.order.pop_front() {
                memory.by_id.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_same_command_twice_is_a_repeat_with_the_first_reply() {
        let recent = RecentCommands::default();
        recent.remember("write", "w1", b"{\"id\":\"w1\"}", json!({"id": "w1", "ok": true}));
        assert_eq!(recent.check("write", "w1", b"{\"id\":\"w1\"}"), Seen::Repeat(json!({"id": "w1", "ok": true})));
    }

    #[test]
    fn an_id_reused_for_another_payload_or_command_is_flagged() {
        let recent = RecentCommands::default();
        recent.remember("write", "w1", b"a", json!({}));
        assert_eq!(recent.check("write", "w1", b"b"), Seen::IdReused);
        assert_eq!(recent.check("ping", "w1", b"a"), Seen::IdReused);
        assert_eq!(recent.check("write", "w2", b"a"), Seen::New);
    }

    #[test]
    fn the_oldest_commands_are_forgotten_past_the_capacity() {
        let recent = RecentCommands::default();
        for i in 0..=CAPACITY {
            recent.remember("ping", &format!("p{i}"), b"x", json!(i));
        }
        assert_eq!(recent.check("ping", "p0", b"x"), Seen::New);
        assert_eq!(recent.check("ping", "p1", b"x"), Seen::Repeat(json!(1)));
        assert_eq!(recent.check("ping", &format!("p{CAPACITY}"), b"x"), Seen::Repeat(json!(CAPACITY)));
    }
}
