//! Starting, supervising and stopping the agent's tasks.
//!
//! - [`supervise`]: restart a failed task with backoff, never take the daemon down.
//! - [`agent`]: wire drivers → store writer → outbox → uplink, plus the status page, and
//!   shut them down in order on a signal.

pub mod agent;
pub mod supervise;

pub use agent::{run, shutdown_signal};
