//! The resident memory the status page's history costs: fills the history of N tags as a
//! day of polling at 1 s would (23 h at one sample a minute, the last hour at one a second:
//! the same rings, full), and prints the growth of the process's RSS next to the bound the
//! settings promise. BENCHMARKS.md quotes it.
//!
//!   cargo run -p edge-agent --example history_memory -- 1000
//!   cargo run -p edge-agent --example history_memory -- 10000
//!
//! The memory does not depend on the build profile (the same allocations); a release build
//! (`--release`) only fills faster.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use edge_agent::history::{History, HistoryConfig};
use edge_drivers::{Quality, Sample, Value};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn main() {
    let tags: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let config = HistoryConfig { memory_limit: bytesize::ByteSize::gib(8), ..HistoryConfig::default() };
    let settings = config.build();
    let history = History::new(settings.clone());
    let names: Vec<String> = (0..tags).map(|i| format!("tag_{i:05}")).collect();
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().unwrap_or_default().timestamp_millis();
    let before = rss_kib();
    let started = Instant::now();
    let mut batch: Vec<Sample> = Vec::with_capacity(tags);
    let mut push = |ms: i64, history: &History| {
        batch.clear();
        let ts = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        batch.extend(names.iter().enumerate().map(|(i, n)| Sample {
            tag: n.clone(),
            value: Some(Value::Float((ms / 1000) as f64 * 0.001 + i as f64)),
            quality: Quality::Good,
            source_ts: ts,
            server_ts: None,
            agent_ts: ts,
        }));
        history.record("plc", &batch);
    };
    for minute in 0..(23 * 60) {
        push(t0 + minute * 60_000, &history);
    }
    for s in 0..3600 {
        push(t0 + 23 * 3_600_000 + s * 1000, &history);
    }
    let after = rss_kib();
    let stats = history.stats();
    let per_tag = settings.limits.bytes_per_tag();
    println!("tags                      {tags}");
    println!(
        "settings                  {} points/tag over {} s, {} minutes",
        settings.limits.max_points,
        settings.limits.full_rate_window_ms / 1000,
        settings.limits.minutes
    );
    println!("bound per tag             {per_tag} B");
    println!("bound for {tags:>6} tags     {:.1} MiB", (per_tag * tags) as f64 / 1048576.0);
    println!("rings held (heap)         {:.1} MiB", stats.bytes as f64 / 1048576.0);
    println!("RSS growth                {:.1} MiB ({} KiB -> {} KiB)", (after.saturating_sub(before)) as f64 / 1024.0, before, after);
    println!("RSS growth per tag        {:.0} B", (after.saturating_sub(before) * 1024) as f64 / tags as f64);
    println!("fill time                 {:.1} s ({} samples)", started.elapsed().as_secs_f64(), tags * (23 * 60 + 3600));
}
