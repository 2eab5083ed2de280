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
