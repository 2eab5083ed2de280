//! The agent itself: every task wired together, and the ordered shutdown.
//!
//! Shutdown order (SIGTERM/SIGINT), all within `gateway.shutdown_timeout`:
//! 1. stop the drivers (no new samples);
//! 2. the store writer writes and flushes what it gathered, then ends;
//! 3. the uplink publishes what the outbox holds, then `offline`, then disconnects;
//! 4. the status page stops; the outbox is flushed once more.
//! Whatever is still unpublished at the deadline stays in the outbox for the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use edge_drivers::modbus::run_device;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::supervise::supervise;
use crate::config::Config;
use crate::live::{GatewayView, Live};
use crate::store::writer::Writer;
use crate::store::{Outbox, StoredEventDraft};
use crate::uplink::Uplink;

/// What a started agent tells its caller (the demo prints it).
#[derive(Debug, Clone)]
pub struct Started {
    pub web: Option<std::net::SocketAddr>,
}

/// Runs the agent until `shutdown` completes, then stops it in order.
/// `on_started` is called once everything is up.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>, on_started: impl FnOnce(Started)) -> anyhow::Result<()> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create gateway.data_dir {}", data_dir.display()))?;
    let outbox = Outbox::open(data_dir).with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    if let Some(aside) = &outbox.moved_aside {
        let reset = StoredEventDraft {
            gateway: config.gateway.id.clone(),
            kind: "store_reset".into(),
            asset: config.gateway.id.clone(),
            severity: "critical".into(),
            ts: Utc::now(),
            details: serde_json::json!({ "moved_aside_to": aside.display().to_string() }),
        };
        outbox.append(&[], &[reset]).await.context("cannot write to the fresh store")?;
    }

    let live = Live::new(
        GatewayView {
            id: config.gateway.id.clone(),
            site: config.gateway.site.clone(),
            version: crate::payload::VERSION.to_string(),
            started_at: Some(Utc::now()),
        },
        &config.devices,
    );
    live.update(|s| s.store.next_batch_seq = outbox.next_batch_seq());

    let web_cancel = CancellationToken::new();
    let web_addr = if config.web.enabled { Some(start_web(&config, &live, &web_cancel).await?) } else { None };

    // Drivers → writer.
    let (reports_tx, reports_rx) = mpsc::channel(1024);
    let driver_cancel = CancellationToken::new();
    let mut drivers = Vec::new();
    for device in &config.devices {
        let (device, tx, cancel) = (device.clone(), reports_tx.clone(), driver_cancel.clone());
        drivers.push(supervise(format!("device {}", device.name), driver_cancel.clone(), move || {
            let (device, tx, cancel) = (device.clone(), tx.clone(), cancel.clone());
            async move {
                run_device(device, tx, cancel).await;
                Ok(())
            }
        }));
    }
    drop(reports_tx);

    let stored = Arc::new(Notify::new());
    let writer = Writer {
        outbox: outbox.clone(),
        gateway: config.gateway.id.clone(),
        config: config.store.clone(),
        live: live.clone(),
        stored: stored.clone(),
    };
    let writer = tokio::spawn(writer.run(reports_rx));

    let (uplink_stop, uplink_stop_rx) = watch::channel(None);
    let uplink = Uplink { config: config.clone(), outbox: outbox.clone(), live: live.clone(), stored };
    let uplink = tokio::spawn(uplink.run(uplink_stop_rx));

    info!(gateway = %config.gateway.id, devices = config.devices.len(), broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port), "agent running");
    on_started(Started { web: web_addr });

    shutdown.await;
    let deadline = Instant::now() + config.gateway.shutdown_timeout;
    info!(timeout = ?config.gateway.shutdown_timeout, "shutting down");

    driver_cancel.cancel();
    for d in drivers {
        if timeout_at(deadline, d).await.is_err() {
            warn!("a driver did not stop in time");
        }
    }
    match timeout_at(deadline, writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "store writer failed"),
        Err(_) => warn!("store writer did not finish in time"),
    }
    let _ = uplink_stop.send(Some(deadline));
    if timeout_at(deadline + Duration::from_secs(2), uplink).await.is_err() {
        warn!("uplink did not stop in time");
    }
    web_cancel.cancel();
    if let Err(e) = outbox.flush().await {
        error!(error = %e, "final store flush failed");
    }
    info!(pending_batches = outbox.pending_batches(), pending_events = outbox.pending_events(), "stopped");
    Ok(())
}

async fn start_web(config: &Config, live: &Live, cancel: &CancellationToken) -> anyhow::Result<std::net::SocketAddr> {
    let listen = config.web.listen.clone();
    let listener = TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on web.listen = {listen}"))?;
    let addr = listener.local_addr()?;
    let mut first = Some(listener);
    let (live, cancel2) = (live.clone(), cancel.clone());
    supervise("status page".into(), cancel.clone(), move || {
        let (live, cancel, listen, listener) = (live.clone(), cancel2.clone(), addr, first.take());
        async move {
            let listener = match listener {
                Some(l) => l,
                None => TcpListener::bind(listen).await?,
            };
            crate::web::serve(listener, live, cancel).await?;
            Ok(())
        }
    });
    Ok(addr)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers the process still stops on Ctrl-C through the default action.
            error!("cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}
