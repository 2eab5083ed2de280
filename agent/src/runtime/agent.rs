//! The agent itself: every task wired together, and the ordered shutdown.
//!
//! Shutdown order (SIGTERM/SIGINT), all within `gateway.shutdown_timeout`:
//! 1. the command handler finishes the command in progress and stops (no new writes);
//! 2. stop the drivers (no new samples);
//! 3. the store writer writes and flushes what it gathered, then ends;
//! 4. the uplink publishes what the outbox holds, then `offline`, then disconnects;
//! 5. the status page stops; the outbox is flushed once more.
//!
//! Whatever is still unpublished at the deadline stays in the outbox for the next start.
//!
//! `reload` (a command from the ERP) stops everything in the same order and starts it
//! again with the new config, in the same process; the outbox stays open across it.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use edge_drivers::modbus::{group_by_bus, run_bus, write_channel};
use edge_drivers::DeviceReport;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::supervise::supervise;
use crate::analytics::Analytics;
use crate::commands::{Handler, InboundCommand};
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
/// `on_started` is called once everything is up. `reload` is refused (no config file).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>, on_started: impl FnOnce(Started)) -> anyhow::Result<()> {
    run_with_file(config, None, shutdown, on_started).await
}

/// As [`run`], for an agent started from `config_file` (`run --config FILE`): the
/// `reload` command reads that file again and, when it is valid, the agent stops as on
/// SIGTERM and starts again with the new config, in the same process. `on_started` is
/// called after the first start only.
pub async fn run_with_file(
    mut config: Config,
    config_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    on_started: impl FnOnce(Started),
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let mut on_started = Some(on_started);
    // sled lets one handle open a store: keep it across reloads (unless data_dir moves).
    let mut store: Option<(PathBuf, Outbox)> = None;
    loop {
        let outbox = match store.take() {
            Some((dir, outbox)) if dir == config.gateway.data_dir => outbox,
            _ => open_store(&config).await?,
        };
        store = Some((config.gateway.data_dir.clone(), outbox.clone()));
        let started = |s: Started| {
            if let Some(f) = on_started.take() {
                f(s);
            }
        };
        match run_once(&config, outbox, config_file.clone(), shutdown.as_mut(), started).await? {
            Stop::Shutdown => return Ok(()),
            Stop::Reload(new) => {
                info!("restarting with the reloaded config");
                config = *new;
            }
        }
    }
}

/// Why [`run_once`] returned.
enum Stop {
    Shutdown,
    Reload(Box<Config>),
}

async fn open_store(config: &Config) -> anyhow::Result<Outbox> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create gateway.data_dir {}", data_dir.display()))?;
    let outbox = Outbox::open(data_dir).with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    if let Some(reset) = &outbox.reset {
        let reset = StoredEventDraft {
            gateway: config.gateway.id.clone(),
            kind: "store_reset".into(),
            asset: config.gateway.id.clone(),
            severity: "critical".into(),
            ts: Utc::now(),
            details: store_reset_details(reset),
        };
        outbox.append(&[], &[reset]).await.context("cannot write to the fresh store")?;
    }
    Ok(outbox)
}

/// The `store_reset` event's details (`schemas/event.schema.json`, `store_reset_details`).
fn store_reset_details(r: &crate::store::StoreReset) -> serde_json::Value {
    let mut d = serde_json::json!({ "reason": r.reason, "next_batch_seq": r.next_batch_seq });
    let mut put = |k: &str, v: serde_json::Value| {
        d[k] = v;
    };
    if let Some(aside) = &r.moved_aside {
        put("moved_aside_to", aside.display().to_string().into());
    }
    if let Some(n) = r.batches_possibly_lost {
        put("batches_possibly_lost", n.into());
    }
    if let Some(n) = r.events_possibly_lost {
        put("events_possibly_lost", n.into());
    }
    if let Some((from, below)) = r.lost_batch_seqs {
        put("lost_batch_seq_from", from.into());
        put("lost_batch_seq_below", below.into());
    }
    if let Some(e) = &r.error {
        put("error", e.clone().into());
    }
    d
}

/// Starts every task, waits for `shutdown` or a reload, and stops them in order.
async fn run_once(
    config: &Config,
    outbox: Outbox,
    config_file: Option<PathBuf>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    on_started: impl FnOnce(Started),
) -> anyhow::Result<Stop> {
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
    let web = if config.web.enabled { Some(start_web(config, &live, &web_cancel).await?) } else { None };

    // Drivers → feed (the models take their inputs) → writer; the command handler → each
    // driver's write queue.
    // Batches from here on belong to this run (live if the uplink's first connect works).
    outbox.mark_run_start();
    let (reports_tx, reports_rx) = mpsc::channel(1024);
    let (drivers_tx, mut drivers_rx) = mpsc::channel::<DeviceReport>(1024);
    let driver_cancel = CancellationToken::new();
    let mut drivers = Vec::new();
    let mut writers = HashMap::new();
    // Devices sharing a serial bus or a converter share one connection and one task.
    for bus in group_by_bus(&config.devices) {
        let mut members = Vec::new();
        for device in bus {
            let (write_tx, inbox) = write_channel(16);
            writers.insert(device.name.clone(), write_tx);
            members.push((device, inbox));
        }
        let name = members.iter().map(|(d, _)| d.name.as_str()).collect::<Vec<_>>().join(", ");
        let (tx, cancel) = (drivers_tx.clone(), driver_cancel.clone());
        drivers.push(supervise(format!("device {name}"), driver_cancel.clone(), move || {
            let (members, tx, cancel) = (members.clone(), tx.clone(), cancel.clone());
            async move {
                run_bus(members, tx, cancel).await;
                Ok(())
            }
        }));
    }
    // OPC-UA devices: one task and one session each.
    for device in config.devices.iter().filter(|d| d.protocol == edge_drivers::Protocol::Opcua) {
        let (write_tx, inbox) = write_channel(16);
        writers.insert(device.name.clone(), write_tx);
        let pki = edge_drivers::opcua::pki_dir(&config.gateway.data_dir);
        let (device, tx, cancel) = (device.clone(), drivers_tx.clone(), driver_cancel.clone());
        drivers.push(supervise(format!("device {}", device.name), driver_cancel.clone(), move || {
            let (device, pki, tx, cancel, inbox) = (device.clone(), pki.clone(), tx.clone(), cancel.clone(), inbox.clone());
            async move {
                edge_drivers::opcua::run_device(device, pki, tx, inbox, cancel).await;
                Ok(())
            }
        }));
    }
    drop(drivers_tx);

    let stored = Arc::new(Notify::new());
    // Models: one thread each; their events go through the sink task, their predictions
    // to the writer as the `analytics` device's telemetry.
    let (events_tx, events_rx) = mpsc::channel(crate::analytics::sink::QUEUE);
    let analytics = Analytics::start(config, &live, events_tx, reports_tx.clone());
    let lab = analytics.lab_inbox();
    let mut sink = tokio::spawn(crate::analytics::sink::run(outbox.clone(), stored.clone(), events_rx));
    let mut feed = tokio::spawn(async move {
        while let Some(report) = drivers_rx.recv().await {
            analytics.offer(&report);
            if reports_tx.send(report).await.is_err() {
                break;
            }
        }
        analytics
    });
    let writer = Writer {
        outbox: outbox.clone(),
        gateway: config.gateway.id.clone(),
        config: config.store.clone(),
        live: live.clone(),
        stored: stored.clone(),
    };
    let mut writer = tokio::spawn(writer.run(reports_rx));

    // Uplink → command handler → drivers; a good `reload` comes back on `restart_rx`.
    let (commands_tx, commands_rx) = mpsc::channel::<InboundCommand>(64);
    let (restart_tx, mut restart_rx) = mpsc::channel(1);
    let handler = Handler {
        config: Arc::new(config.clone()),
        config_file,
        outbox: outbox.clone(),
        live: live.clone(),
        writers,
        restart: restart_tx,
        counters: Arc::default(),
        stored: stored.clone(),
        recent: Default::default(),
        lab,
    };
    let handler_cancel = CancellationToken::new();
    let mut handler = tokio::spawn(handler.run(commands_rx, handler_cancel.clone()));

    let (uplink_stop, uplink_stop_rx) = watch::channel(None);
    let uplink = Uplink { config: config.clone(), outbox: outbox.clone(), live: live.clone(), stored };
    let mut uplink = tokio::spawn(uplink.run_with_commands(uplink_stop_rx, Some(commands_tx)));

    info!(gateway = %config.gateway.id, devices = config.devices.len(), broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port), "agent running");
    on_started(Started { web: web.as_ref().map(|(addr, _)| *addr) });

    let stop = tokio::select! {
        () = &mut shutdown => Stop::Shutdown,
        Some(new) = restart_rx.recv() => Stop::Reload(new),
    };
    let deadline = Instant::now() + config.gateway.shutdown_timeout;
    match &stop {
        Stop::Shutdown => info!(timeout = ?config.gateway.shutdown_timeout, "shutting down"),
        Stop::Reload(_) => info!(timeout = ?config.gateway.shutdown_timeout, "reload: stopping everything before restarting"),
    }

    // A command in progress finishes first; then no new write can reach a driver.
    handler_cancel.cancel();
    if timeout_at(deadline, &mut handler).await.is_err() {
        warn!("the command handler did not stop in time");
        handler.abort();
    }
    driver_cancel.cancel();
    for mut d in drivers {
        if timeout_at(deadline, &mut d).await.is_err() {
            warn!("a driver did not stop in time");
            d.abort();
        }
    }
    // The feed ends with the drivers; then the model threads (their inboxes close).
    match timeout_at(deadline, &mut feed).await {
        Ok(Ok(analytics)) => {
            let stopping = tokio::task::spawn_blocking(move || analytics.stop());
            if timeout_at(deadline, stopping).await.is_err() {
                warn!("the model threads did not stop in time");
            }
        }
        Ok(Err(e)) => error!(error = %e, "the sample feed failed"),
        Err(_) => {
            warn!("the sample feed did not stop in time");
            feed.abort();
        }
    }
    match timeout_at(deadline, &mut writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "store writer failed"),
        Err(_) => {
            warn!("store writer did not finish in time");
            writer.abort();
        }
    }
    if timeout_at(deadline, &mut sink).await.is_err() {
        warn!("the model event sink did not finish in time");
        sink.abort();
    }
    let _ = uplink_stop.send(Some(deadline));
    if timeout_at(deadline + Duration::from_secs(2), &mut uplink).await.is_err() {
        warn!("uplink did not stop in time");
        // Aborting drops its MQTT connection: a restarted uplink must not share the client id.
        uplink.abort();
    }
    web_cancel.cancel();
    if let Some((_, mut task)) = web {
        // Wait for the listener to close, so that a restart can bind the same address.
        if timeout_at(deadline.max(Instant::now() + Duration::from_secs(1)), &mut task).await.is_err() {
            task.abort();
        }
    }
    if let Err(e) = outbox.flush().await {
        error!(error = %e, "final store flush failed");
    }
    info!(pending_batches = outbox.pending_batches(), pending_events = outbox.pending_events(), "stopped");
    Ok(stop)
}

async fn start_web(config: &Config, live: &Live, cancel: &CancellationToken) -> anyhow::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let listen = config.web.listen.clone();
    let listener = bind_web(&listen).await.with_context(|| format!("cannot listen on web.listen = {listen}"))?;
    let addr = listener.local_addr()?;
    let mut first = Some(listener);
    let (live, cancel2) = (live.clone(), cancel.clone());
    let task = supervise("status page".into(), cancel.clone(), move || {
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
    Ok((addr, task))
}

/// Binds the status page's address. After a reload the previous server has just let go
/// of it; "address in use" is retried for a moment.
async fn bind_web(listen: &str) -> std::io::Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(listen).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
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
