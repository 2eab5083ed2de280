//! What the store's tests share: a writer over a given outbox, a device report of numbered
//! samples, and a bounded wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_drivers::{DeviceReport, Quality, ReportKind, Sample, Value};

use super::config::{StoreConfig, StoreSettings};
use super::outbox::Outbox;
use super::writer::Writer;
use crate::live::{GatewayView, Live};

/// The store settings of `[store]` with the given edits, built as the agent builds them.
pub(super) fn settings(edit: impl FnOnce(&mut StoreConfig)) -> StoreSettings {
    let mut config = StoreConfig::default();
    edit(&mut config);
    config.build()
}

/// A writer for gateway `gw` over `outbox`, showing its state in `live`.
pub(super) fn writer(outbox: &Outbox, live: &Live, config: StoreSettings) -> Writer {
    Writer {
        outbox: outbox.clone(),
        gateway: "gw".into(),
        config,
        live: live.clone(),
        stored: Arc::default(),
        heartbeat: Default::default(),
    }
}

/// A live state with no devices, for writers whose page nobody reads.
pub(super) fn live() -> Live {
    Live::new(GatewayView::default(), &[])
}

/// Device `plc`'s samples `t{from}` … `t{from + n - 1}`, each valued with its number.
pub(super) fn report(from: i64, n: i64) -> DeviceReport {
    let now = Utc::now();
    let samples = (from..from + n)
        .map(|i| Sample {
            tag: format!("t{i}"),
            value: Some(Value::Int(i)),
            quality: Quality::Good,
            source_ts: now,
            server_ts: None,
            agent_ts: now,
        })
        .collect();
    DeviceReport { device: "plc".into(), kind: ReportKind::Samples(samples) }
}

/// Waits until `done`, failing the test after 30 s, naming `what` it waited for.
pub(super) async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
