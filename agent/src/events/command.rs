//! The details of the command audit events, `command_executed` and `command_rejected`:
//! the audit record of one command (`command_details` in the schema).

use edge_drivers::Value;
use serde::{Deserialize, Serialize};

/// What the agent made of one command. `device`, `tag` and `value` come together, for a
/// write whose fields parsed; `reason` (the reply's `error`) when `ok` is false, `result`
/// (the reply's `result`) when it is true. Absent fields are left out, not `null`; `id`
/// is `null` when it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAudit {
    /// The last level of the topic the command came on (any name, also unknown ones).
    pub command: String,
    /// The command's id; `None` (sent as `null`) when it could not be read.
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The value the write asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Same as the reply's `ok`.
    pub ok: bool,
    /// Same as the reply's `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Same as the reply's `result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// When the agent received the command (RFC 3339 UTC with milliseconds).
    pub received_at: String,
}
