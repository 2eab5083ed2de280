//! Log lines for journald. Under systemd, stderr is a journald stream (`JOURNAL_STREAM`
//! names it, systemd.exec(5)): there each line starts with its syslog priority (`<3>` err,
//! `<4>` warning, `<6>` info, `<7>` debug), which journald parses and strips, and carries
//! the message alone (journald stamps the time itself). Anywhere else the usual format
//! (timestamp, level, target) stays.

use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether stderr is the journald stream `JOURNAL_STREAM` names (device and inode match,
/// so a stderr redirected elsewhere by a wrapper keeps the usual format).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => names(stream.to_str().unwrap_or_default(), &meta),
        Err(_) => false,
    }
}

/// Whether a `JOURNAL_STREAM` value (`<device>:<inode>`) names the file of `meta`.
fn names(stream: &str, meta: &std::fs::Metadata) -> bool {
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    matches!((dev.parse::<u64>(), ino.parse::<u64>()), (Ok(dev), Ok(ino)) if meta.dev() == dev && meta.ino() == ino)
}

/// The syslog priority of a level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `<N>message key=value …`: the priority and the event's fields, nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut text = String::new();
        ctx.field_format().format_fields(Writer::new(&mut text), event)?;
        // journald takes each line of the stream as an entry of its own: a multi-line
        // message (a config report) keeps its priority on every line.
        let p = priority(event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{p}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_carries_its_syslog_priority_and_the_message_alone_without_a_timestamp() {
        // Given the journald format writing into a buffer, at debug level
        let buf = Buffer::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer().event_format(JournalFormat).with_ansi(false).with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry().with(layer).with(tracing_subscriber::filter::LevelFilter::DEBUG);
        // When an error, a warning, an info and a debug line are logged
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(path = "/var/lib/edge-agent", "store write failed");
            tracing::warn!(device = "plc1", "cannot connect");
            tracing::info!("agent running");
            tracing::debug!(delay = 3, "reconnect delay");
            tracing::error!("config refused:\nline 2: missing value");
        });
        // Then each line starts with its priority (err 3, warning 4, info 6, debug 7) and
        // holds the message and its fields only; a second line of a message keeps the priority
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "<3>store write failed path=\"/var/lib/edge-agent\"",
                "<4>cannot connect device=\"plc1\"",
                "<6>agent running",
                "<7>reconnect delay delay=3",
                "<3>config refused:",
                "<3>line 2: missing value",
            ]
        );
    }

    #[test]
    fn journal_stream_counts_only_when_it_names_the_very_file_stderr_is() {
        // Given two files
        let (a, b) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let (a, b) = (a.metadata().unwrap(), b.metadata().unwrap());
        // Then `<dev>:<ino>` of the first names it, not the second; garbage names nothing
        let stream = format!("{}:{}", a.dev(), a.ino());
        assert!(names(&stream, &a));
        assert!(!names(&stream, &b));
        assert!(!names("", &a));
        assert!(!names(&format!("{}", a.dev()), &a));
        assert!(!names(&format!("x:{}", a.ino()), &a));
    }
}
