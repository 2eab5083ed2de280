//! Where the daemon's logs go: stderr (journald under systemd), through a writer that never
//! fails. A log line that cannot be written (stderr closed, as while journald restarts; a
//! full pipe; EPIPE) is dropped and counted (`edge_agent_log_lines_lost_total`), never
//! returned as an error: `tracing-subscriber` reports a failed write with `eprintln!`,
//! which panics when stderr is gone, and would take the logging task down with it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Log lines (writes) that could not be written to stderr since the start.
static LOST: AtomicU64 = AtomicU64::new(0);

/// How many log writes were lost since the start.
pub fn lines_lost() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// A `MakeWriter` for stderr that swallows write errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            LOST.fetch_add(1, Ordering::Relaxed);
        }
        // Reported as written: the caller must not retry, fail, or report it.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes `message` and a newline to stderr, ignoring failure (instead of `eprintln!`,
/// which panics when stderr is closed).
pub fn eprint_line(message: &str) {
    let mut err = io::stderr();
    if writeln!(err, "{message}").is_err() {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lines of other crates (the OPC-UA and MQTT libraries' retries) held back by
/// [`LibraryLimit`] since the start.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// How many lines of other crates [`LibraryLimit`] held back since the start.
pub fn library_lines_suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// A filter for the log layer: the agent's own lines (targets `edge_agent…`,
/// `edge_drivers…`, which rate-limit themselves with `log_limit`) all pass; a line of
/// another crate (a library that logs each retry: OPC-UA, MQTT) passes once a minute per
/// place in its source, and the ones held back are counted
/// (`edge_agent_log_lines_suppressed_total`): a library's line cannot carry our count.
pub struct LibraryLimit {
    limit: edge_drivers::log_limit::SharedLogLimit<tracing::callsite::Identifier>,
}

impl Default for LibraryLimit {
    fn default() -> Self {
        LibraryLimit { limit: edge_drivers::log_limit::SharedLogLimit::new(edge_drivers::log_limit::DEFAULT_PERIOD) }
    }
}

fn ours(target: &str) -> bool {
    target.starts_with("edge_agent") || target.starts_with("edge_drivers")
}

impl<S> tracing_subscriber::layer::Filter<S> for LibraryLimit {
    fn enabled(&self, _meta: &tracing::Metadata<'_>, _cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        let meta = event.metadata();
        if ours(meta.target()) {
            return true;
        }
        let pass = self.limit.allow(meta.callsite()).is_some();
        if !pass {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        }
        pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_stderr_reports_success_whatever_happens() {
        // Given the writer (stderr may or may not be usable under the test harness)
        let mut w = Stderr;
        // When a line is written, then it is reported written in full, never an error
        assert_eq!(w.write(b"log_sink test line\n").ok(), Some(19));
        assert!(w.flush().is_ok());
    }

    #[test]
    fn the_agents_own_targets_are_never_held_back() {
        assert!(ours("edge_agent::uplink::session"));
        assert!(ours("edge_drivers::modbus::poller"));
        assert!(!ours("opcua_client::session"));
        assert!(!ours("rumqttc::state"));
    }
}
