//! The gateway's own resources, for the page's overview and `/metrics`: CPU use of the
//! whole machine and of the agent, memory available and the agent's resident memory, and
//! the free space of the filesystem that holds `gateway.data_dir` (where the outbox lives).
//!
//! A small task ([`spawn`]) samples them every [`SAMPLE_EVERY`]. The reads (`/proc/stat`,
//! `/proc/self/stat`, `/proc/meminfo`, `/proc/self/status`, `statvfs` through `fs2`) run on
//! a thread of their own, each file read capped at [`MAX_READ`] bytes, the whole round bounded
//! by [`READ_TIMEOUT`]: a round that does not finish in time (a hung mount) is counted, and
//! no second round starts until it has. A value that cannot be read is `None` ("unknown" on
//! the page, no sample in `/metrics`): on a system without `/proc` only the disk is known.
//! Every failed read is counted by source (`read_errors`) and logged at most once an hour
//! per source; the agent never stops for it.
//!
//! CPU shares are of the whole machine (every core): 100 % is every core busy. They need
//! two rounds: the second comes [`FIRST_SHARE_AFTER`] after the first, so that the page
//! has them at once.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_drivers::log_limit::LogLimit;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::live::Live;

/// How often the resources are sampled (and the CPU shares averaged over).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The second round after the first (the CPU shares need two).
pub const FIRST_SHARE_AFTER: Duration = Duration::from_secs(1);
/// The longest one round of reads may take before it counts as hung.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes read from one `/proc` file (the lines wanted are near the top).
pub const MAX_READ: u64 = 64 * 1024;
/// A failing source is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(3600);

/// What the page and `/metrics` show about the gateway itself (`host` in `/api/status`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostView {
    /// When the values were read (the latest round that finished).
    pub sampled_at: Option<DateTime<Utc>>,
    /// Busy share of every core together since the previous round, 0–100.
    pub cpu_percent: Option<f64>,
    /// The agent's own share of every core together since the previous round, 0–100.
    pub agent_cpu_percent: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    /// Memory the system can give to programs without swapping (`MemAvailable`).
    pub memory_available_bytes: Option<u64>,
    /// The agent's resident memory (`VmRSS`).
    pub agent_memory_bytes: Option<u64>,
    /// `gateway.data_dir`, whose filesystem the disk values are of.
    pub data_dir: String,
    pub disk_total_bytes: Option<u64>,
    /// Space the agent may still write there (what an unprivileged user may use).
    pub disk_free_bytes: Option<u64>,
    pub read_errors: ReadErrors,
    /// The last failed read, in words.
    pub last_error: Option<String>,
}

/// Failed reads since the agent started, by source. Only grow.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReadErrors {
    /// `/proc/stat`.
    pub cpu: u64,
    /// `/proc/meminfo`.
    pub memory: u64,
    /// `/proc/self/stat` and `/proc/self/status`.
    pub process: u64,
    /// The free space of `gateway.data_dir`.
    pub disk: u64,
    /// Rounds that did not finish within [`READ_TIMEOUT`] (or panicked).
    pub timeouts: u64,
}

impl ReadErrors {
    /// (source, count), for the `/metrics` label.
    pub fn by_source(&self) -> [(&'static str, u64); 5] {
        [("cpu", self.cpu), ("memory", self.memory), ("process", self.process), ("disk", self.disk), ("timeout", self.timeouts)]
    }
}

/// Cumulative CPU time of the machine, in clock ticks (`/proc/stat`, first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every tick of every core (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Ticks no task ran (idle and iowait).
    pub idle: u64,
}

/// The machine's CPU times from the text of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice, so it is left out.
    if fields.len() < 4 {
        return None;
    }
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// The process's CPU time (user + system), in clock ticks, from `/proc/self/stat`. The
/// command name (field 2) may hold spaces and parentheses: the fields are counted from
/// the last `)`.
pub fn parse_self_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4) … utime (14), stime (15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`; `MemAvailable` is `None` on a
/// kernel older than 3.14.
pub fn parse_meminfo(text: &str) -> Option<(u64, Option<u64>)> {
    let total = kib_field(text, "MemTotal:")?;
    Some((total, kib_field(text, "MemAvailable:")))
}

/// The resident memory (`VmRSS`) in bytes from `/proc/self/status`.
pub fn parse_status_rss(text: &str) -> Option<u64> {
    kib_field(text, "VmRSS:")
}

/// The value of a `Key:   1234 kB` line, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The share (0–100) of `busy` ticks in the ticks between two readings of `/proc/stat`;
/// `None` when no tick passed (or the counters went back: a new boot, a container move).
pub fn share(busy: u64, before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0))
}

/// One round of reads: each value, or why it could not be read.
#[derive(Debug)]
pub struct Round {
    pub at: DateTime<Utc>,
    pub cpu: Result<CpuTimes, String>,
    pub agent_ticks: Result<u64, String>,
    pub memory: Result<(u64, Option<u64>), String>,
    pub rss: Result<u64, String>,
    pub disk: Result<(u64, u64), String>,
}

/// Reads the files and the filesystem; blocking, kept off the async workers.
pub struct Sampler {
    proc_dir: PathBuf,
    data_dir: PathBuf,
}

impl Sampler {
    pub fn new(data_dir: &Path) -> Self {
        Self::with_proc(Path::new("/proc"), data_dir)
    }

    /// The same, reading `proc_dir` instead of `/proc` (tests).
    pub fn with_proc(proc_dir: &Path, data_dir: &Path) -> Self {
        Self { proc_dir: proc_dir.to_path_buf(), data_dir: data_dir.to_path_buf() }
    }

    pub fn read(&self) -> Round {
        let parsed = |file: &str, parse: &dyn Fn(&str) -> Option<u64>| -> Result<u64, String> {
            let text = self.file(file)?;
            parse(&text).ok_or_else(|| format!("{}: unexpected content", self.proc_dir.join(file).display()))
        };
        let cpu = self
            .file("stat")
            .and_then(|t| parse_proc_stat(&t).ok_or_else(|| format!("{}: no cpu line", self.proc_dir.join("stat").display())));
        let memory = self
            .file("meminfo")
            .and_then(|t| parse_meminfo(&t).ok_or_else(|| format!("{}: no MemTotal", self.proc_dir.join("meminfo").display())));
        let disk = fs2::available_space(&self.data_dir)
            .and_then(|free| Ok((free, fs2::total_space(&self.data_dir)?)))
            .map_err(|e| format!("free space of {}: {e}", self.data_dir.display()));
        Round {
            at: Utc::now(),
            cpu,
            agent_ticks: parsed("self/stat", &parse_self_stat),
            memory,
            rss: parsed("self/status", &parse_status_rss),
            disk,
        }
    }

    /// The first [`MAX_READ`] bytes of `proc_dir/name`, as text.
    fn file(&self, name: &str) -> Result<String, String> {
        let path = self.proc_dir.join(name);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_READ).read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Turns rounds into the [`HostView`]: keeps the previous CPU times for the shares, the
/// counts of failed reads, and the log limit.
pub struct Tracker {
    view: HostView,
    previous: Option<(CpuTimes, Option<u64>)>,
    log: LogLimit<&'static str>,
}

impl Tracker {
    pub fn new(data_dir: &Path) -> Self {
        let view = HostView { data_dir: data_dir.display().to_string(), ..HostView::default() };
        Self { view, previous: None, log: LogLimit::new(LOG_EVERY) }
    }

    pub fn view(&self) -> &HostView {
        &self.view
    }

    /// Takes one round's values; a value that failed is unknown until a round reads it.
    pub fn apply(&mut self, round: Round) {
        let v = &mut self.view;
        v.sampled_at = Some(round.at);
        let mut failures: Vec<(&'static str, String)> = Vec::new();
        let mut fail = |source: &'static str, counter: &mut u64, e: String| {
            *counter += 1;
            failures.push((source, e));
        };
        let agent_ticks = match round.agent_ticks {
            Ok(t) => Some(t),
            Err(e) => {
                fail("process", &mut v.read_errors.process, e);
                None
            }
        };
        match round.cpu {
            Ok(now) => {
                let before = self.previous.replace((now, agent_ticks));
                let busy = |t: CpuTimes| t.total.saturating_sub(t.idle);
                v.cpu_percent = before.and_then(|(b, _)| share(busy(now).saturating_sub(busy(b)), b, now));
                v.agent_cpu_percent = match (before, agent_ticks) {
                    (Some((b, Some(was))), Some(is)) if is >= was => share(is - was, b, now),
                    _ => None,
                };
            }
            Err(e) => {
                self.previous = None;
                v.cpu_percent = None;
                v.agent_cpu_percent = None;
                fail("cpu", &mut v.read_errors.cpu, e);
            }
        }
        match round.memory {
            Ok((total, available)) => {
                v.memory_total_bytes = Some(total);
                v.memory_available_bytes = available;
            }
            Err(e) => {
                v.memory_total_bytes = None;
                v.memory_available_bytes = None;
                fail("memory", &mut v.read_errors.memory, e);
            }
        }
        match round.rss {
            Ok(rss) => v.agent_memory_bytes = Some(rss),
            Err(e) => {
                v.agent_memory_bytes = None;
                fail("process", &mut v.read_errors.process, e);
            }
        }
        match round.disk {
            Ok((free, total)) => {
                v.disk_free_bytes = Some(free);
                v.disk_total_bytes = Some(total);
            }
            Err(e) => {
                v.disk_free_bytes = None;
                v.disk_total_bytes = None;
                fail("disk", &mut v.read_errors.disk, e);
            }
        }
        for (source, error) in failures {
            if let Some(suppressed) = self.log.allow(source) {
                warn!(source, %error, suppressed, "cannot read the gateway's resources; the page shows them as unknown");
            }
            v.last_error = Some(error);
        }
    }

    /// A round that did not finish within [`READ_TIMEOUT`], or whose thread panicked.
    pub fn timed_out(&mut self, what: &str) {
        self.view.read_errors.timeouts += 1;
        let error = format!("reading the gateway's resources {what}");
        if let Some(suppressed) = self.log.allow("timeout") {
            warn!(%error, suppressed, "the page shows the last values read");
        }
        self.view.last_error = Some(error);
    }
}

/// Samples the gateway's resources into `live` every [`SAMPLE_EVERY`] until `cancel`.
///
/// The reads run on a thread of their own (not the runtime's blocking pool: a read hung on
/// a dead mount must not hold up the agent's exit), asked for one round at a time.
pub fn spawn(live: Live, data_dir: PathBuf, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tracker = Tracker::new(&data_dir);
        let sampler = Sampler::new(&data_dir);
        let (ask, asked) = std::sync::mpsc::sync_channel::<oneshot::Sender<Round>>(1);
        // The thread ends when `ask` is dropped (this task ends), after its current round.
        let thread = std::thread::Builder::new().name("host-sampler".into()).spawn(move || {
            while let Ok(reply) = asked.recv() {
                let _ = reply.send(sampler.read());
            }
        });
        if let Err(e) = thread {
            tracker.timed_out(&format!("cannot start: {e}"));
        }
        // A round still running (past its timeout): no second one is asked for beside it.
        let mut pending: Option<oneshot::Receiver<Round>> = None;
        let mut pause = FIRST_SHARE_AFTER;
        loop {
            let job = match pending.take() {
                Some(job) => Some(job),
                None => {
                    let (reply, job) = oneshot::channel();
                    ask.try_send(reply).ok().map(|()| job)
                }
            };
            if let Some(mut job) = job {
                match tokio::time::timeout(READ_TIMEOUT, &mut job).await {
                    Ok(Ok(round)) => tracker.apply(round),
                    // The thread is gone (it could not start, or a read panicked).
                    Ok(Err(_)) => tracker.timed_out("failed: the sampling thread is gone"),
                    Err(_) => {
                        tracker.timed_out(&format!("took longer than {READ_TIMEOUT:?}"));
                        pending = Some(job);
                    }
                }
            } else {
                tracker.timed_out("failed: the sampling thread is gone");
            }
            let view = tracker.view().clone();
            live.update(|s| s.host = view);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = SAMPLE_EVERY;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "cpu  4705 356 584 3699176 23060 0 277 0 12 0\n\
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n\
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]\n\
ctxt 1990473\nbtime 1062191376\nprocesses 2915\n";

    const SELF_STAT: &str =
        "4242 (edge agent (x)) S 1 4242 4242 0 -1 4194560 10395 0 0 0 150 37 0 0 20 0 9 0 1234 123456789 6000 18446744073709551615\n";

    const MEMINFO: &str =
        "MemTotal:        3884172 kB\nMemFree:          210460 kB\nMemAvailable:    2034512 kB\nBuffers:          123 kB\n";

    const STATUS: &str = "Name:\tedge-agent\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\nVmRSS:\t   24576 kB\nThreads:\t9\n";

    #[test]
    fn the_machines_cpu_times_are_the_first_cpu_line_without_guest_time() {
        // Given /proc/stat's text (guest time 12, already inside user time)
        let t = parse_proc_stat(PROC_STAT).unwrap();
        // Then the total is user..steal, the idle time idle + iowait
        assert_eq!(t.total, 4705 + 356 + 584 + 3699176 + 23060 + 277);
        assert_eq!(t.idle, 3699176 + 23060);
        // And text without a cpu line is unknown, not zero
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  a b c d\n"), None);
    }

    #[test]
    fn the_agents_cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parse_self_stat(SELF_STAT), Some(150 + 37));
        assert_eq!(parse_self_stat("4242 (short) S 1"), None);
        assert_eq!(parse_self_stat("garbage"), None);
    }

    #[test]
    fn memory_comes_in_bytes_and_an_old_kernel_without_memavailable_leaves_it_unknown() {
        assert_eq!(parse_meminfo(MEMINFO), Some((3884172 * 1024, Some(2034512 * 1024))));
        assert_eq!(parse_meminfo("MemTotal: 1000 kB\nMemFree: 10 kB\n"), Some((1000 * 1024, None)));
        assert_eq!(parse_meminfo("MemFree: 10 kB\n"), None);
        assert_eq!(parse_status_rss(STATUS), Some(24576 * 1024));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_shares_are_of_the_ticks_between_two_rounds_and_unknown_when_none_passed() {
        let before = CpuTimes { total: 1000, idle: 800 };
        let after = CpuTimes { total: 1400, idle: 1100 };
        // 400 ticks passed, 100 of them busy
        assert_eq!(share(100, before, after), Some(25.0));
        assert_eq!(share(0, before, before), None);
        // Counters that went back (a new boot under a restored container) give no share
        assert_eq!(share(10, after, before), None);
    }

    /// A fake /proc with the given files.
    fn fake_proc(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn two_rounds_give_the_cpu_shares_and_every_value_in_bytes() {
        // Given a /proc whose counters move by 400 ticks, 100 busy, 20 of them the agent's
        let data = tempfile::tempdir().unwrap();
        let proc =
            fake_proc(&[("stat", "cpu  100 0 100 800 0 0 0 0\n"), ("self/stat", SELF_STAT), ("meminfo", MEMINFO), ("self/status", STATUS)]);
        let sampler = Sampler::with_proc(proc.path(), data.path());
        let mut tracker = Tracker::new(data.path());
        // When the first round is read: memory and disk are known, the CPU shares not yet
        tracker.apply(sampler.read());
        let v = tracker.view().clone();
        assert_eq!((v.cpu_percent, v.agent_cpu_percent), (None, None));
        assert_eq!(v.memory_available_bytes, Some(2034512 * 1024));
        assert_eq!(v.agent_memory_bytes, Some(24576 * 1024));
        assert!(v.disk_free_bytes.is_some_and(|f| f > 0) && v.disk_total_bytes >= v.disk_free_bytes, "{v:?}");
        assert_eq!(v.read_errors, ReadErrors::default());
        // And after the counters moved, the second round has both shares
        std::fs::write(proc.path().join("stat"), "cpu  150 0 150 1100 0 0 0 0\n").unwrap();
        std::fs::write(proc.path().join("self/stat"), SELF_STAT.replace(" 150 37 ", " 160 47 ")).unwrap();
        tracker.apply(sampler.read());
        let v = tracker.view();
        assert_eq!(v.cpu_percent, Some(25.0));
        assert_eq!(v.agent_cpu_percent, Some(5.0));
    }

    #[test]
    fn a_system_without_proc_shows_unknown_counts_each_failure_and_still_knows_the_disk() {
        // Given no /proc at all (another OS) but a data directory
        let data = tempfile::tempdir().unwrap();
        let sampler = Sampler::with_proc(&data.path().join("no-proc"), data.path());
        let mut tracker = Tracker::new(data.path());
        // When two rounds are read
        tracker.apply(sampler.read());
        tracker.apply(sampler.read());
        // Then CPU and memory are unknown, the failures counted per source, the disk known
        let v = tracker.view();
        assert_eq!((v.cpu_percent, v.memory_total_bytes, v.agent_memory_bytes), (None, None, None));
        assert_eq!((v.read_errors.cpu, v.read_errors.memory, v.read_errors.process, v.read_errors.disk), (2, 2, 4, 0));
        assert!(v.last_error.as_deref().is_some_and(|e| e.contains("no-proc")), "{v:?}");
        assert!(v.disk_free_bytes.is_some());
        // And a data directory that is gone makes the disk unknown too, counted
        let gone = data.path().join("gone");
        let mut tracker = Tracker::new(&gone);
        tracker.apply(Sampler::with_proc(&gone, &gone).read());
        assert_eq!((tracker.view().disk_free_bytes, tracker.view().read_errors.disk), (None, 1));
    }

    #[test]
    fn a_round_that_hangs_is_counted_and_the_last_values_stay() {
        let data = tempfile::tempdir().unwrap();
        let mut tracker = Tracker::new(data.path());
        tracker.apply(Sampler::new(data.path()).read());
        let before = tracker.view().disk_free_bytes;
        tracker.timed_out("took longer than 2s");
        assert_eq!(tracker.view().read_errors.timeouts, 1);
        assert_eq!(tracker.view().disk_free_bytes, before);
        assert!(tracker.view().last_error.as_deref().is_some_and(|e| e.contains("longer")));
    }

    #[tokio::test]
    async fn the_task_puts_the_values_in_the_live_state_at_once_and_stops_on_cancel() {
        // Given the sampling task on a data directory
        let data = tempfile::tempdir().unwrap();
        let live = Live::default();
        let cancel = CancellationToken::new();
        let task = spawn(live.clone(), data.path().to_path_buf(), cancel.clone());
        // Then the first round is in the live state within a moment, the disk known
        let started = std::time::Instant::now();
        while live.read(|s| s.host.sampled_at.is_none()) {
            assert!(started.elapsed() < Duration::from_secs(5), "no round within 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let host = live.snapshot().host;
        assert!(host.disk_free_bytes.is_some() && host.data_dir == data.path().display().to_string(), "{host:?}");
        // And when cancelled it ends
        cancel.cancel();
        assert!(tokio::time::timeout(Duration::from_secs(5), task).await.is_ok_and(|r| r.is_ok()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_the_real_proc_gives_every_value() {
        let data = tempfile::tempdir().unwrap();
        let sampler = Sampler::new(data.path());
        let mut tracker = Tracker::new(data.path());
        tracker.apply(sampler.read());
        std::thread::sleep(Duration::from_millis(50));
        tracker.apply(sampler.read());
        let v = tracker.view();
        assert!(v.memory_total_bytes.is_some() && v.memory_available_bytes.is_some() && v.agent_memory_bytes.is_some(), "{v:?}");
        assert!(v.disk_free_bytes.is_some(), "{v:?}");
        assert_eq!(v.read_errors, ReadErrors::default(), "{v:?}");
    }
}
