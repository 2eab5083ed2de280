//! Store benchmarks: append+flush throughput, and disk use under write-then-delete churn.
//!
//! `cargo bench -p edge-agent --bench store` (figures go to BENCHMARKS.md with the machine).
//! Sizes can be changed with STORE_BENCH_BATCHES (throughput), STORE_BENCH_CHURN_MIB
//! (total written in the churn run, default 20 × max_bytes), STORE_BENCH_COMPACT_ABOVE_MIB
//! (the churn run's `store.compact_above`, default 2 × max_bytes as in the agent, 0 = never
//! compact) and
//! STORE_BENCH_PAUSE_MIB (sizes of full stores whose compaction pause is measured, default
//! "32,512"; empty = skip).

use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use edge_agent::payload::{rfc3339, WireSample};
use edge_agent::store::{Outbox, StoredBatch};

const SAMPLES_PER_BATCH: usize = 1000;

fn batch(device: usize, n: usize) -> StoredBatch {
    let ts = rfc3339(Utc::now());
    StoredBatch {
        device: format!("plc{device}"),
        samples: (0..n)
            .map(|i| WireSample {
                tag: format!("line1_tag_{i:04}"),
                v: Some(edge_drivers::Value::Float(1234.5 + i as f64)),
                q: "good".into(),
                ts: ts.clone(),
                server_ts: None,
                reason: None,
            })
            .collect(),
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() { dir_bytes(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) };
        }
    }
    total
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open");
    let batches = env_u64("STORE_BENCH_BATCHES", 400) as usize;
    let b = batch(0, SAMPLES_PER_BATCH);
    let start = Instant::now();
    for _ in 0..batches {
        outbox.append(std::slice::from_ref(&b), &[]).await.expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    let samples = (batches * SAMPLES_PER_BATCH) as f64;
    println!(
        "append+flush: {batches} batches x {SAMPLES_PER_BATCH} samples in {secs:.2} s = {:.0} samples/s, {:.1} flushed batches/s",
        samples / secs,
        batches as f64 / secs
    );
    println!(
        "record bytes per sample: {:.1}; on disk per sample: {:.1}",
        outbox.bytes() as f64 / samples,
        dir_bytes(dir.path()) as f64 / samples
    );

    let start = Instant::now();
    let mut read = 0;
    let mut from = 0;
    loop {
        let chunk = outbox.telemetry_from(from, 64);
        let Some(&(last, _)) = chunk.last() else { break };
        read += chunk.len();
        for (seq, _) in &chunk {
            outbox.ack_telemetry(*seq).expect("ack");
        }
        from = last + 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("read+ack: {read} batches in {secs:.2} s = {:.0} samples/s", (read * SAMPLES_PER_BATCH) as f64 / secs);
}

async fn churn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open");
    let max_bytes: u64 = 32 << 20;
    let total_mib = env_u64("STORE_BENCH_CHURN_MIB", 20 * (max_bytes >> 20));
    let b = batch(0, SAMPLES_PER_BATCH);
    let record_bytes = edge_agent::store::record::encode(&b).expect("encode").len() as u64;
    let compact_above = env_u64("STORE_BENCH_COMPACT_ABOVE_MIB", 2 * (max_bytes >> 20)) << 20;
    let (mut compactions, mut max_pause, mut max_peak) = (0u64, std::time::Duration::ZERO, 0u64);
    let (mut written, mut max_disk, mut dropped) = (0u64, 0u64, 0u64);
    let mut acked_to = 0u64;
    let start = Instant::now();
    let mut round = 0u64;
    // The uplink is slower than the producer: it acknowledges 3 of every 4 batches, so the
    // outbox fills up to max_bytes and then evicts, while deletes churn the tree.
    while written < total_mib << 20 {
        outbox.append(std::slice::from_ref(&b), &[]).await.expect("append");
        round += 1;
        if round % 4 != 0 {
            if let Some((seq, _)) = outbox.telemetry_from(acked_to, 1).first() {
                outbox.ack_telemetry(*seq).expect("ack");
                acked_to = seq + 1;
            }
        }
        dropped += outbox.enforce_bounds(max_bytes, None, Utc::now()).expect("bounds").batches;
        // What the store writer does after every write.
        if compact_above > 0 && outbox.compaction_due(compact_above) {
            let before_dir = dir_bytes(dir.path());
            let c = outbox.compact().expect("compaction");
            compactions += 1;
            max_pause = max_pause.max(c.paused);
            // During a compaction the old store and the full copy are both on disk.
            max_peak = max_peak.max(before_dir + dir_bytes(dir.path()));
            println!(
                "compaction {compactions} at {} MiB written: {:.1} -> {:.1} MiB (sled size), store paused {} ms",
                written >> 20,
                c.before as f64 / (1u64 << 20) as f64,
                c.after as f64 / (1u64 << 20) as f64,
                c.paused.as_millis()
            );
        }
        written += record_bytes;
        if round % 50 == 0 {
            max_disk = max_disk.max(dir_bytes(dir.path()));
        }
        // Progress every tenth of the run, so a long run shows whether the disk use levels
        // off or keeps creeping up.
        let tenth = (total_mib << 20) / 10;
        if tenth > 0 && written % tenth < record_bytes {
            println!(
                "churn progress: {} MiB written, {:.0} s, disk now {:.1} MiB, max so far {:.1} MiB",
                written >> 20,
                start.elapsed().as_secs_f64(),
                dir_bytes(dir.path()) as f64 / (1u64 << 20) as f64,
                max_disk as f64 / (1u64 << 20) as f64
            );
        }
    }
    outbox.flush().await.expect("flush");
    let final_disk = dir_bytes(dir.path());
    max_disk = max_disk.max(final_disk);
    println!(
        "churn compactions: {compactions} (compact_above = {} MiB), longest pause {} ms, disk peak during a compaction (old + copy) {:.1} MiB",
        compact_above >> 20,
        max_pause.as_millis(),
        max_peak as f64 / (1u64 << 20) as f64
    );
    println!(
        "churn: {round} batches (~{} MiB of records) in {:.1} s with max_bytes = {} MiB: records held {} MiB, disk max {:.1} MiB, disk final {:.1} MiB ({:.2}x max_bytes), {dropped} batches evicted",
        written >> 20,
        start.elapsed().as_secs_f64(),
        max_bytes >> 20,
        outbox.bytes() >> 20,
        max_disk as f64 / (1u64 << 20) as f64,
        final_disk as f64 / (1u64 << 20) as f64,
        max_disk as f64 / max_bytes as f64
    );
}

/// How long a compaction pauses a store holding `mib` MiB of records (freshly written, so
/// this is the copy of a full store, not of a churned one).
async fn compaction_pause(mib: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open");
    let batches: Vec<StoredBatch> = (0..16).map(|d| batch(d, SAMPLES_PER_BATCH)).collect();
    while outbox.bytes() < mib << 20 {
        outbox.append(&batches, &[]).await.expect("append");
    }
    let before_dir = dir_bytes(dir.path());
    let c = outbox.compact().expect("compaction");
    println!(
        "compaction pause: {} MiB of records ({} batches), sled size {:.1} -> {:.1} MiB, directory {:.1} -> {:.1} MiB: store paused {} ms",
        outbox.bytes() >> 20,
        outbox.pending_batches(),
        c.before as f64 / (1u64 << 20) as f64,
        c.after as f64 / (1u64 << 20) as f64,
        before_dir as f64 / (1u64 << 20) as f64,
        dir_bytes(dir.path()) as f64 / (1u64 << 20) as f64,
        c.paused.as_millis()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let pauses = std::env::var("STORE_BENCH_PAUSE_MIB").unwrap_or_else(|_| "32,512".into());
    rt.block_on(async {
        throughput().await;
        for mib in pauses.split(',').filter_map(|m| m.trim().parse().ok()) {
            compaction_pause(mib).await;
        }
        churn().await;
    });
}
