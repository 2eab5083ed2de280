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
//!
//! Every task is supervised (see [`super::supervise`] for which are restarted and why):
//! the drivers, the status page, the uplink and the command handler are restarted with
//! back-off; when the store writer, the sample feed or the model event sink ends
//! unexpectedly, the agent stops in the order above and [`run`] returns an error, so the
//! process exits non-zero and systemd starts it again.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use edge_drivers::heartbeat::Heartbeat;
use edge_drivers::modbus::{run_bus_beating, write_channel};
use edge_drivers::DeviceReport;
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::supervise::{supervise, watch_once, Once, Register};
use super::systemd::{self, Note, Notifier, Watched};
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
    // systemd (`Type=notify`): no-ops unless started by it. The watchdog outlives reloads.
    let sd = Sd {
        notifier: Notifier::from_env(),
        watched: Watched::default(),
        logins: Arc::new(crate::web::throttle::LoginThrottle::default()),
    };
    let watchdog = systemd::spawn_watchdog(sd.notifier.clone(), sd.watched.clone(), sd_notify::watchdog_enabled());
    // `systemctl reload` (SIGHUP) re-reads the file, as the `reload` command does.
    let mut hangup = match &config_file {
        Some(_) => match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                error!(error = %e, "cannot install the SIGHUP handler: `systemctl reload` will not work (the `reload` command does)");
                None
            }
        },
        None => None,
    };
    let result = run_loop(&mut config, config_file, shutdown.as_mut(), &mut on_started, &sd, &mut hangup).await;
    if let Some(w) = watchdog {
        w.abort();
    }
    result
}

/// What outlives a reload: systemd's notifier and the loops its watchdog watches, and the
/// status page's failed-login throttle (a `reload` or SIGHUP must not unlock a guesser).
struct Sd {
    notifier: Notifier,
    watched: Watched,
    logins: Arc<crate::web::throttle::LoginThrottle>,
}

async fn run_loop(
    config: &mut Config,
    config_file: Option<PathBuf>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    on_started: &mut Option<impl FnOnce(Started)>,
    sd: &Sd,
    hangup: &mut Option<Signal>,
) -> anyhow::Result<()> {
    // sled lets one handle open a store: keep it across reloads (unless data_dir moves).
    let mut store: Option<(PathBuf, Outbox)> = None;
    loop {
        let outbox = match store.take() {
            Some((dir, outbox)) if dir == config.gateway.data_dir => outbox,
            _ => open_store(config).await?,
        };
        store = Some((config.gateway.data_dir.clone(), outbox.clone()));
        let started = |s: Started| {
            if let Some(f) = on_started.take() {
                f(s);
            }
        };
        match run_once(config, outbox, config_file.clone(), shutdown.as_mut(), started, sd, hangup).await? {
            Stop::Shutdown => return Ok(()),
            Stop::Fatal(cause) => anyhow::bail!("{cause}; the agent stopped so that systemd restarts it"),
            Stop::Reload(new) => {
                info!("restarting with the reloaded config");
                *config = *new;
            }
        }
    }
}

/// Why [`run_once`] returned.
enum Stop {
    Shutdown,
    Reload(Box<Config>),
    /// A task that cannot be restarted in the process ended (see `supervise::watch_once`).
    Fatal(String),
}

async fn open_store(config: &Config) -> anyhow::Result<Outbox> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create gateway.data_dir {}", data_dir.display()))?;
    // Opening waits up to 10 s for a lock and reads every record (and may recover from
    // damage): blocking work, kept off the runtime's workers.
    let dir = data_dir.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(&dir))
        .await
        .context("the store's open task failed")?
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    if let Some(reset) = &outbox.reset {
        let reset = StoredEventDraft::now(config.gateway.id.as_str(), config.gateway.id.as_str(), reset.event());
        outbox.append(&[], &[reset]).await.context("cannot write to the fresh store")?;
    }
    Ok(outbox)
}

/// Starts every task, waits for `shutdown` or a reload, and stops them in order.
async fn run_once(
    config: &Config,
    outbox: Outbox,
    config_file: Option<PathBuf>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    on_started: impl FnOnce(Started),
    sd: &Sd,
    hangup: &mut Option<Signal>,
) -> anyhow::Result<Stop> {
    // Built from the validated config: every default resolved before a task starts.
    let built = config.build().context("building the config")?;
    let live = Live::new(
        GatewayView {
            id: config.gateway.id.clone(),
            site: config.gateway.site.clone(),
            version: crate::payload::VERSION.to_string(),
            started_at: Some(Utc::now()),
        },
        &config.devices,
    )
    .with_history(config.history.build())
    .with_events(outbox.recent_events());
    live.update(|s| s.store.next_batch_seq = outbox.next_batch_seq());
    let gpio = config.gpio.build();
    if !gpio.inputs.is_empty() {
        live.update(|s| {
            s.devices.insert(crate::gpio::DEVICE.into(), crate::gpio::device_view(&gpio));
        });
    }
    let register = Register::new(live.clone());
    // The gateway's CPU, memory and disk for the page's overview; stops when this run ends,
    // however it ends.
    let host_stop = CancellationToken::new();
    let _host_stop = host_stop.clone().drop_guard();
    crate::host::spawn(live.clone(), config.gateway.data_dir.clone(), host_stop);
    // Cancelled when the agent starts to stop: tasks ending after that are expected to.
    let stopping = CancellationToken::new();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(8);
    let once = |name: &str| Once {
        name: name.to_string(),
        core: true,
        register: register.clone(),
        stopping: stopping.clone(),
        fatal: fatal_tx.clone(),
        may_finish: false,
    };

    // Woken after every append to the outbox, so that the uplink publishes at once.
    let stored = Arc::new(Notify::new());
    let web_cancel = CancellationToken::new();
    let web = if config.web.enabled {
        // The page's operator actions write their audit events through the outbox.
        let opcua = config.devices.iter().filter(|d| d.protocol == edge_drivers::Protocol::Opcua).map(|d| (d.name.clone(), d.endpoint()));
        let pki = edge_drivers::opcua::pki_dir(&config.gateway.data_dir);
        let actions = crate::web::actions::Actions::new(config.gateway.id.clone(), outbox.clone(), stored.clone(), pki, opcua.collect());
        Some(start_web(config, &live, &register, actions, sd.logins.clone(), &web_cancel).await?)
    } else {
        None
    };

    // Drivers → feed (the models take their inputs) → writer; the command handler → each
    // driver's write queue.
    // Batches from here on belong to this run (live if the uplink's first connect works).
    outbox.mark_run_start();
    let (reports_tx, reports_rx) = mpsc::channel(1024);
    let (drivers_tx, mut drivers_rx) = mpsc::channel::<DeviceReport>(1024);
    let driver_cancel = CancellationToken::new();
    let mut drivers = Vec::new();
    let mut writers = HashMap::new();
    // The loops the systemd watchdog watches, by task name.
    let mut loops: systemd::Loops = Vec::new();
    // Devices sharing a serial bus or a converter share one connection and one task.
    for bus in built.modbus {
        let mut members = Vec::new();
        for device in bus {
            let (write_tx, inbox) = write_channel(16);
            writers.insert(device.name.clone(), write_tx);
            members.push((device, inbox));
        }
        let names: Vec<String> = members.iter().map(|(d, _)| d.name.clone()).collect();
        let (tx, cancel, lv) = (drivers_tx.clone(), driver_cancel.clone(), live.clone());
        let (task, beat) = (format!("driver {}", names.join(", ")), Heartbeat::new());
        loops.push((task.clone(), beat.clone(), Duration::ZERO));
        drivers.push(supervise(task, false, register.clone(), driver_cancel.clone(), move || {
            let (members, tx, cancel, beat) = (members.clone(), tx.clone(), cancel.clone(), beat.clone());
            let down = DevicesDown(lv.clone(), names.clone());
            async move {
                let _down = down;
                run_bus_beating(members, tx, cancel, beat).await;
                Ok(())
            }
        }));
    }
    // OPC-UA devices: one task and one session each.
    for device in built.opcua {
        let (write_tx, inbox) = write_channel(16);
        writers.insert(device.name.clone(), write_tx);
        let pki = edge_drivers::opcua::pki_dir(&config.gateway.data_dir);
        let (tx, cancel, lv) = (drivers_tx.clone(), driver_cancel.clone(), live.clone());
        let (task, beat) = (format!("driver {}", device.name), Heartbeat::new());
        loops.push((task.clone(), beat.clone(), Duration::ZERO));
        drivers.push(supervise(task, false, register.clone(), driver_cancel.clone(), move || {
            let (device, pki, tx, cancel, inbox) = (device.clone(), pki.clone(), tx.clone(), cancel.clone(), inbox.clone());
            let down = DevicesDown(lv.clone(), vec![device.name.clone()]);
            let beat = beat.clone();
            async move {
                let _down = down;
                edge_drivers::opcua::run_device_beating(device, pki, tx, inbox, cancel, beat).await;
                Ok(())
            }
        }));
    }
    // GPIO: the stack light follows the agent; inputs are tags of the device `gpio`. It
    // stops with the drivers, writing its fail-safe levels.
    if !gpio.is_empty() {
        let (tx, lv, data_dir, stop) = (drivers_tx.clone(), live.clone(), config.gateway.data_dir.clone(), driver_cancel.clone());
        drivers.push(supervise("gpio".into(), false, register.clone(), driver_cancel.clone(), move || {
            let (settings, tx, lv, data_dir, cancel) = (gpio.clone(), tx.clone(), lv.clone(), data_dir.clone(), stop.clone());
            async move {
                let pins = crate::gpio::pins::open(settings.backend).context("[gpio] backend")?;
                crate::gpio::run(settings, pins, lv, data_dir, tx, cancel).await;
                Ok(())
            }
        }));
    }
    drop(drivers_tx);

    // Models: one thread each; their events go through the sink task, their predictions
    // to the writer as the `analytics` device's telemetry.
    let (events_tx, events_rx) = mpsc::channel(crate::analytics::sink::QUEUE);
    let analytics = Analytics::start(config, &built.models, &live, events_tx, reports_tx.clone());
    let lab = analytics.lab_inbox();
    // The sink ends by itself when no model runs (every sender of its queue is gone).
    let sink_task = Once { may_finish: true, ..once("model-events") };
    let mut sink = watch_once(sink_task, crate::analytics::sink::run(outbox.clone(), stored.clone(), events_rx), |_| None);
    let feed = async move {
        while let Some(report) = drivers_rx.recv().await {
            analytics.offer(&report);
            if reports_tx.send(report).await.is_err() {
                break;
            }
        }
        analytics
    };
    let mut feed = watch_once(once("sample-feed"), feed, |_| None);
    let writer = Writer {
        outbox: outbox.clone(),
        gateway: config.gateway.id.clone(),
        config: built.store.clone(),
        live: live.clone(),
        stored: stored.clone(),
        heartbeat: Heartbeat::new(),
    };
    // With no reading coming, the writer's loop turns once per flush interval.
    loops.push(("store-writer".into(), writer.heartbeat.clone(), config.store.flush_interval));
    let mut writer = watch_once(once("store-writer"), writer.run(reports_rx), |_| None);

    // Uplink → command handler → drivers; a good `reload` comes back on `restart_rx`.
    let (commands_tx, commands_rx) = mpsc::channel::<InboundCommand>(64);
    let (restart_tx, mut restart_rx) = mpsc::channel(1);
    let handler = Handler {
        config: Arc::new(config.clone()),
        config_file: config_file.clone(),
        outbox: outbox.clone(),
        live: live.clone(),
        writers,
        restart: restart_tx,
        counters: Arc::default(),
        stored: stored.clone(),
        recent: Default::default(),
        lab,
        log_limit: Default::default(),
    };
    let handler_cancel = CancellationToken::new();
    // A restarted handler takes the same queue and the same memory of recent command ids.
    let (handler, commands_rx) = (Arc::new(handler), Arc::new(tokio::sync::Mutex::new(commands_rx)));
    let cancel = handler_cancel.clone();
    let mut handler = supervise("command-handler".into(), true, register.clone(), handler_cancel.clone(), move || {
        let (handler, commands_rx, cancel) = (handler.clone(), commands_rx.clone(), cancel.clone());
        async move {
            handler.run_shared(commands_rx, cancel).await;
            Ok(())
        }
    });

    // A restarted uplink starts a new MQTT session; the outbox holds what is unpublished.
    let (uplink_stop, uplink_stop_rx) = watch::channel(None);
    let (cfg, ob, lv, beat) = (config.clone(), outbox.clone(), live.clone(), Heartbeat::new());
    loops.push(("uplink".into(), beat.clone(), Duration::ZERO));
    let mut uplink = supervise("uplink".into(), true, register.clone(), stopping.clone(), move || {
        let uplink = Uplink { config: cfg.clone(), outbox: ob.clone(), live: lv.clone(), stored: stored.clone() };
        let (stop, commands, beat) = (uplink_stop_rx.clone(), Some(commands_tx.clone()), beat.clone());
        async move {
            uplink.run_beating(stop, commands, beat).await;
            Ok(())
        }
    });

    info!(gateway = %config.gateway.id, devices = config.devices.len(), broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port), "agent running");
    on_started(Started { web: web.as_ref().map(|(addr, _)| *addr) });
    sd.watched.set(live.clone(), loops);
    sd.notifier.notify(Note::Ready);
    let status_cancel = CancellationToken::new();
    let status = systemd::spawn_status(sd.notifier.clone(), live.clone(), status_cancel.clone());

    let stop = loop {
        tokio::select! {
            () = &mut shutdown => break Stop::Shutdown,
            Some(new) = restart_rx.recv() => break Stop::Reload(new),
            Some(cause) = fatal_rx.recv() => break Stop::Fatal(cause),
            Some(()) = next_hangup(hangup) => {
                if let Some(path) = &config_file {
                    if let Some(new) = reread(path).await {
                        break Stop::Reload(Box::new(new));
                    }
                }
            }
        }
    };
    stopping.cancel();
    // An orderly stop is bounded by the shutdown timeout: the watchdog is fed meanwhile.
    sd.watched.clear();
    sd.notifier.notify(match stop {
        Stop::Reload(_) => Note::Reloading,
        Stop::Shutdown | Stop::Fatal(_) => Note::Stopping,
    });
    let deadline = Instant::now() + config.gateway.shutdown_timeout;
    match &stop {
        Stop::Shutdown => info!(timeout = ?config.gateway.shutdown_timeout, "shutting down"),
        Stop::Reload(_) => info!(timeout = ?config.gateway.shutdown_timeout, "reload: stopping everything before restarting"),
        Stop::Fatal(cause) => {
            error!(%cause, timeout = ?config.gateway.shutdown_timeout, "a task that cannot be restarted ended: stopping the agent")
        }
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
        Ok(Ok(Some(analytics))) => {
            let stopping = tokio::task::spawn_blocking(move || analytics.stop());
            if timeout_at(deadline, stopping).await.is_err() {
                warn!("the model threads did not stop in time");
            }
        }
        // Logged by `watch_once`; the model threads end when their inboxes drop.
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Err(_) => {
            warn!("the sample feed did not stop in time");
            feed.abort();
        }
    }
    match timeout_at(deadline, &mut writer).await {
        // A failure is logged by `watch_once`.
        Ok(_) => {}
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
    status_cancel.cancel();
    if let Some(task) = status {
        let _ = task.await;
    }
    if let Err(e) = outbox.flush().await {
        error!(error = %e, "final store flush failed");
    }
    info!(pending_batches = outbox.pending_batches(), pending_events = outbox.pending_events(), "stopped");
    Ok(stop)
}

/// Marks a driver task's devices disconnected when the task ends, a panic included: the
/// connection went with it, and the page must not go on saying "connected". The restarted
/// driver reports its new connection as usual.
struct DevicesDown(Live, Vec<String>);

impl Drop for DevicesDown {
    fn drop(&mut self) {
        for device in &self.1 {
            if self.0.device_connected(device) {
                self.0.record_connection(device, false, Some("its driver task ended".into()));
            }
        }
    }
}

async fn start_web(
    config: &Config,
    live: &Live,
    register: &Register,
    actions: Arc<crate::web::actions::Actions>,
    logins: Arc<crate::web::throttle::LoginThrottle>,
    cancel: &CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let settings = config
        .web
        .build()
        .map_err(|issues| anyhow::anyhow!("{}", issues.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
    // The users file, the session key and the TLS certificate: a start without them fails.
    let guard = crate::web::auth::Guard::load(&settings, &config.gateway.data_dir, logins).await?;
    let listen = settings.listen;
    let listener = bind_web(listen).await.with_context(|| format!("cannot listen on web.listen = {listen}"))?;
    let addr = listener.local_addr()?;
    let mut first = Some(listener);
    let (live, cancel2) = (live.clone(), cancel.clone());
    let task = supervise("status-page".into(), false, register.clone(), cancel.clone(), move || {
        let (live, cancel, listen, listener, guard, actions) =
            (live.clone(), cancel2.clone(), addr, first.take(), guard.clone(), actions.clone());
        async move {
            let listener = match listener {
                Some(l) => l,
                None => TcpListener::bind(listen).await?,
            };
            crate::web::serve(listener, live, guard, Some(actions), cancel).await?;
            Ok(())
        }
    });
    Ok((addr, task))
}

/// Binds the status page's address. After a reload the previous server has just let go
/// of it; "address in use" is retried for a moment.
async fn bind_web(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
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

/// The next SIGHUP; never, without a handler.
async fn next_hangup(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP: reads and checks the config file again, as the `reload` command does. A good
/// config comes back for the restart; a bad one is refused, logged with its report, and the
/// running config kept.
async fn reread(path: &std::path::Path) -> Option<Config> {
    info!(file = %path.display(), "SIGHUP received: reading the config again");
    match crate::config::reread(path).await {
        Ok(config) => {
            info!(devices = config.devices.len(), "SIGHUP: the config is valid; the agent restarts with it now");
            Some(config)
        }
        Err(crate::config::RereadError::Invalid(report)) => {
            error!(file = %path.display(), report = %report.to_string().trim_end(), "SIGHUP: the config was not reloaded; the agent keeps running with the old one");
            None
        }
        Err(e) => {
            error!(file = %path.display(), error = %e, "SIGHUP: the config was not reloaded; the agent keeps running with the old one");
            None
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
