//! Starting, supervising and stopping the agent's tasks.
//!
//! - [`supervise`]: the task register, and the two policies for a task that ends
//!   unexpectedly: restart it with back-off, or stop the agent so that systemd restarts it.
//! - [`agent`]: wire drivers → store writer → outbox → uplink, plus the status page, and
//!   shut them down in order on a signal.
//! - [`log_sink`]: stderr for the logs, without ever failing (or panicking) on a write.
//! - [`fault`]: a debug-build-only seam to make a real task panic in the tests.

pub mod agent;
pub mod fault;
pub mod journal;
pub mod log_sink;
pub mod supervise;
pub mod systemd;

pub use agent::{run, shutdown_signal};
