//! The command task: parse → policy → execute → reply and audit, one command at a time
//! (so writes reach a PLC in the order the ERP sent them).
//!
//! Every command gets a reply on `…/cmd/response` and an audit event on `…/events`, both
//! through the outbox:
//! - `command_rejected` (severity `warning`): the agent did nothing (malformed payload,
//!   unknown command, policy refusal, device not connected, broken config on `reload`);
//! - `command_executed`: the agent acted; `details.ok` says whether it worked (severity
//!   `info`, or `warning` when the device refused or did not answer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_drivers::log_limit::SharedLogLimit;
use edge_drivers::modbus::{WriteError, WriteRequest};
use edge_drivers::Value;
use serde_json::{json, Map};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::inbound::InboundCommand;
use super::parse::{parse, Command, WriteCommand};
use super::policy::check_write;
use super::recent::{RecentCommands, Seen};
use crate::config::{reread, Config, RereadError};
use crate::events::{CommandAudit, Event};
use crate::live::Live;
use crate::payload::{rfc3339, VERSION};
use crate::store::{Outbox, StoredEventDraft, StoredReply};
use crate::uplink::session::{SPARKPLUG_REBOOT, SPARKPLUG_WRITE};

/// Topic leaf of every reply.
pub const RESPONSE_LEAF: &str = "cmd/response";
/// Limit on storing a reply or an audit event.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands handled since the agent (re)started.
#[derive(Debug, Default)]
pub struct CommandCounters {
    /// Executed and succeeded.
    pub accepted: AtomicU64,
    /// Refused before anything was done.
    pub rejected: AtomicU64,
    /// Executed, but the device refused or did not answer.
    pub failed: AtomicU64,
    /// Repeats of a command already carried out: answered with the first reply, not run again.
    pub duplicates: AtomicU64,
}

/// Everything the command task needs.
pub struct Handler {
    /// The running config (the allowlist, the devices, the gateway id).
    pub config: Arc<Config>,
    /// The file the agent was started from (`run --config FILE`); `None` for the demo,
    /// which cannot `reload`.
    pub config_file: Option<PathBuf>,
    pub outbox: Outbox,
    /// Read only: the last good reading of a tag, for `max_step`.
    pub live: Live,
    /// Each device's write queue, by device name.
    pub writers: HashMap<String, mpsc::Sender<WriteRequest>>,
    /// A checked new config for the runtime to restart with (`reload`).
    pub restart: mpsc::Sender<Box<Config>>,
    pub counters: Arc<CommandCounters>,
    /// Woken after each reply and event is stored, so the uplink publishes them at once.
    pub stored: Arc<Notify>,
    /// Commands carried out lately, by id (see [`super::recent`]).
    pub recent: RecentCommands,
    /// Where `cmd/lab` hands lab values to the quality models.
    pub lab: crate::analytics::LabInbox,
    /// Rejected and repeated commands are logged once a minute per command and kind, with
    /// the count held back (an ERP retrying a bad command must not fill the journal).
    pub log_limit: SharedLogLimit<String>,
}

/// How a command ended: what to reply, what to record, and whether to restart.
#[derive(Debug)]
pub struct Outcome {
    /// The `cmd/response` body: `{"id","ok","error"?,"result"?}`.
    pub reply: serde_json::Value,
    /// The audit event; `None` for a repeat of a command already carried out (its first
    /// run has its event).
    pub event: Option<StoredEventDraft>,
    /// Set by a successful `reload`: the runtime restarts with it once the reply is stored.
    pub restart: Option<Box<Config>>,
    /// Whether `reply` is stored for `cmd/response`: not for a Sparkplug host's DCMD or
    /// NCMD (Sparkplug has no replies: the next DDATA confirms a write; the audit event
    /// records every one).
    pub publish_reply: bool,
}

/// The facts of one command, gathered as it goes through.
struct Audit {
    command: String,
    id: Option<String>,
    device: Option<String>,
    tag: Option<String>,
    value: Option<Value>,
    received_at: DateTime<Utc>,
}

enum Verdict {
    /// Nothing was done.
    Rejected(String),
    /// Done; the result.
    Executed(serde_json::Value),
    /// Attempted, but it did not (or may not have) worked.
    Failed(String),
}

impl Handler {
    /// Handles commands until `cancel` fires. A command in progress is finished first.
    pub async fn run(self, inbound: mpsc::Receiver<InboundCommand>, cancel: CancellationToken) {
        Arc::new(self).run_shared(Arc::new(tokio::sync::Mutex::new(inbound)), cancel).await;
    }

    /// [`Handler::run`] for a supervised task that may be started again after a panic: the
    /// queue and the handler (its memory of recent command ids, its counters) outlive the
    /// task. A command being handled when the task died gets no reply; the ERP sends it
    /// again after its timeout, and a repeat of one already carried out is not run twice.
    pub async fn run_shared(self: Arc<Self>, inbound: Arc<tokio::sync::Mutex<mpsc::Receiver<InboundCommand>>>, cancel: CancellationToken) {
        let mut inbound = inbound.lock().await;
        loop {
            let command = tokio::select! {
                () = cancel.cancelled() => return,
                c = inbound.recv() => c,
            };
            let Some(command) = command else {
                // The uplink is gone (it stops last); wait for the shutdown.
                cancel.cancelled().await;
                return;
            };
            let Some(outcome) = self.handle(command).await else { continue };
            self.record(&outcome).await;
            if let Some(config) = outcome.restart {
                info!("reload: the reply is stored; restarting with the new config");
                if self.restart.try_send(config).is_err() {
                    warn!("reload: a restart is already under way");
                }
            }
        }
    }

    /// Handles one command; `None` when it is not a command at all (our own replies on
    /// `cmd/response`, should the uplink pass them on).
    pub async fn handle(&self, inbound: InboundCommand) -> Option<Outcome> {
        if inbound.name == "response" {
            debug!("ignoring a message on cmd/response");
            return None;
        }
        let mut audit = Audit { command: inbound.name.clone(), id: None, device: None, tag: None, value: None, received_at: Utc::now() };
        let mut restart = None;
        // From a Sparkplug host (see `uplink::session`): a DCMD metric as a `write`, or
        // `Node Control/Reboot`, which is a `reload` when `sparkplug.allow_reboot` is set.
        let sparkplug = match inbound.name.as_str() {
            SPARKPLUG_WRITE => {
                audit.command = "dcmd".into();
                Some("write")
            }
            SPARKPLUG_REBOOT => {
                audit.command = "reboot".into();
                if !self.config.sparkplug.allow_reboot {
                    audit.id = parse("reload", &inbound.payload).ok().map(|c| c.id().to_string());
                    let reason = "Node Control/Reboot refused: sparkplug.allow_reboot is false on this gateway".to_string();
                    return Some(self.sparkplug_outcome(audit, Verdict::Rejected(reason), None));
                }
                Some("reload")
            }
            _ => None,
        };
        let name = sparkplug.unwrap_or(inbound.name.as_str());
        let verdict = match parse(name, &inbound.payload) {
            Err(e) => {
                audit.id = e.id;
                Verdict::Rejected(e.reason)
            }
            Ok(command) => {
                audit.id = Some(command.id().to_string());
                match self.recent.check(&inbound.name, command.id(), &inbound.payload) {
                    Seen::New => {}
                    Seen::Repeat(reply) => return Some(self.repeat(command.name(), command.id(), reply)),
                    Seen::IdReused => {
                        let reason = format!(
                            "id {:?} was already used by a different command; each command needs its own id (the first one was carried out)",
                            command.id()
                        );
                        return Some(self.conclude(audit, Verdict::Rejected(reason), None));
                    }
                }
                match command {
                    Command::Write(w) => {
                        audit.device = Some(w.device.clone());
                        audit.tag = Some(w.tag.clone());
                        audit.value = Some(w.value.clone());
                        self.write(&w).await
                    }
                    Command::Ping { .. } => Verdict::Executed(json!({ "pong": true, "ts": rfc3339(Utc::now()), "version": VERSION })),
                    Command::Lab(lab) => {
                        let sampled_at = lab.sampled_at.unwrap_or(audit.received_at);
                        match self.lab.send(&lab.model, lab.value, sampled_at) {
                            Ok(()) => {
                                Verdict::Executed(json!({ "model": lab.model, "value": lab.value, "sampled_at": rfc3339(sampled_at) }))
                            }
                            Err(reason) => Verdict::Rejected(reason),
                        }
                    }
                    Command::Rebirth { .. } => Verdict::Executed(json!({ "note": "JSON mode: nothing to rebirth; status is retained" })),
                    Command::Reload { .. } => {
                        let (verdict, config) = self.reload().await;
                        restart = config;
                        verdict
                    }
                }
            }
        };
        if sparkplug.is_some() {
            return Some(self.sparkplug_outcome(audit, verdict, restart));
        }
        let acted = !matches!(verdict, Verdict::Rejected(_));
        let outcome = self.conclude(audit, verdict, restart);
        if acted {
            if let Some(id) = outcome.reply.get("id").and_then(|v| v.as_str()) {
                self.recent.remember(&inbound.name, id, &inbound.payload, outcome.reply.clone());
            }
        }
        Some(outcome)
    }

    /// The outcome of a Sparkplug host's command: audited and counted like any, no reply,
    /// refusals also counted as the edge node's (`commands.sparkplug_refused`).
    fn sparkplug_outcome(&self, audit: Audit, verdict: Verdict, restart: Option<Box<Config>>) -> Outcome {
        let refused = matches!(verdict, Verdict::Rejected(_));
        let mut outcome = self.conclude(audit, verdict, restart);
        outcome.publish_reply = false;
        if refused {
            self.live.update(|s| s.commands.sparkplug_refused += 1);
        }
        outcome
    }

    /// A command already carried out came again: answer with the first reply, do nothing.
    fn repeat(&self, name: &str, id: &str, reply: serde_json::Value) -> Outcome {
        let duplicates = self.counters.duplicates.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.update(|s| s.commands.duplicates = duplicates);
        if let Some(suppressed) = self.log_limit.allow(format!("{name}/repeated")) {
            warn!(command = name, %id, duplicates, suppressed, "command repeated (same id and payload): answered with the first reply, not carried out again");
        }
        Outcome { reply, event: None, restart: None, publish_reply: true }
    }

    async fn write(&self, w: &WriteCommand) -> Verdict {
        let last_good = self.last_good(&w.device, &w.tag);
        if let Err(reason) = check_write(&self.config.commands, &self.config.devices, last_good.as_ref(), w) {
            return Verdict::Rejected(reason);
        }
        let Some(queue) = self.writers.get(&w.device) else {
            return Verdict::Rejected(format!("device {} has no driver running", w.device));
        };
        let limit = self.config.commands.write_timeout;
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest { tag: w.tag.clone(), value: w.value.clone(), reply };
        let exchange = async {
            queue.send(request).await.map_err(|_| Verdict::Rejected(format!("the driver of device {} is not running", w.device)))?;
            answer.await.map_err(|_| {
                Verdict::Failed(format!(
                    "the driver of device {} stopped before answering; the write may or may not have happened",
                    w.device
                ))
            })
        };
        match timeout(limit, exchange).await {
            Err(_) => Verdict::Failed(format!(
                "no answer from device {} within {limit:?} (commands.write_timeout); the write may or may not have happened",
                w.device
            )),
            Ok(Err(verdict)) => verdict,
            Ok(Ok(Ok(()))) => Verdict::Executed(json!({ "device": w.device, "tag": w.tag, "value": w.value })),
            Ok(Ok(Err(e))) => {
                let reason = format!("{}/{}: {e}", w.device, w.tag);
                match e {
                    // Nothing was sent.
                    WriteError::NotConnected | WriteError::UnknownTag(_) | WriteError::Encode(_) | WriteError::NotSent(_) => {
                        Verdict::Rejected(reason)
                    }
                    WriteError::Exception(_)
                    | WriteError::Refused(_)
                    | WriteError::Timeout(_)
                    | WriteError::Transport(_)
                    | WriteError::NotConfirmed(_) => Verdict::Failed(reason),
                }
            }
        }
    }

    /// The tag's last good reading, from the live state.
    fn last_good(&self, device: &str, tag: &str) -> Option<Value> {
        self.live.read(|s| s.devices.get(device)?.tags.iter().find(|t| t.name == tag)?.value.clone())
    }

    /// Reads and checks the config file again. A good one comes back for the restart.
    async fn reload(&self) -> (Verdict, Option<Box<Config>>) {
        let Some(path) = self.config_file.clone() else {
            return (Verdict::Rejected("reload is not supported: the agent was not started from a config file (demo)".into()), None);
        };
        match reread(&path).await {
            Err(RereadError::Invalid(report)) => {
                (Verdict::Rejected(format!("the config was not reloaded; the agent keeps running with the old one. {report}")), None)
            }
            Err(e) => (Verdict::Rejected(e.to_string()), None),
            Ok(config) => {
                let result = json!({
                    "note": "config is valid; the agent restarts with it now",
                    "file": self.show_file(),
                    "devices": config.devices.len(),
                    "tags": config.devices.iter().map(|d| d.tags.len()).sum::<usize>(),
                });
                (Verdict::Executed(result), Some(Box::new(config)))
            }
        }
    }

    fn show_file(&self) -> String {
        self.config_file.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
    }

    fn conclude(&self, audit: Audit, verdict: Verdict, restart: Option<Box<Config>>) -> Outcome {
        let gateway = &self.config.gateway.id;
        let mut reply = Map::new();
        reply.insert("id".into(), audit.id.clone().map_or(serde_json::Value::Null, serde_json::Value::String));
        let refused = matches!(verdict, Verdict::Rejected(_));
        let ok = matches!(verdict, Verdict::Executed(_));
        reply.insert("ok".into(), json!(ok));
        let (reason, result) = match verdict {
            Verdict::Rejected(reason) | Verdict::Failed(reason) => {
                reply.insert("error".into(), json!(reason));
                (Some(reason), None)
            }
            Verdict::Executed(result) => {
                reply.insert("result".into(), result.clone());
                (None, Some(result))
            }
        };
        let audit_record = CommandAudit {
            command: audit.command.clone(),
            id: audit.id.clone(),
            device: audit.device.clone(),
            tag: audit.tag,
            value: audit.value,
            ok,
            reason,
            result,
            received_at: rfc3339(audit.received_at),
        };
        let why = audit_record.reason.clone().unwrap_or_default();
        let event = if refused { Event::CommandRejected(audit_record) } else { Event::CommandExecuted(audit_record) };
        let kind = event.kind();

        let counter = match (refused, ok) {
            (true, _) => &self.counters.rejected,
            (_, true) => &self.counters.accepted,
            _ => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let (accepted, rejected, failed) = (
            self.counters.accepted.load(Ordering::Relaxed),
            self.counters.rejected.load(Ordering::Relaxed),
            self.counters.failed.load(Ordering::Relaxed),
        );
        self.live.update(|s| {
            s.commands.accepted = accepted;
            s.commands.rejected = rejected;
            s.commands.failed = failed;
        });
        let id = audit.id.as_deref().unwrap_or("-");
        if ok {
            info!(command = %audit.command, %id, accepted, rejected, failed, "command executed");
        } else {
            // Every one is in the audit event and the counters; the log gets one a minute.
            if let Some(suppressed) = self.log_limit.allow(format!("{}/{kind}", audit.command)) {
                warn!(command = %audit.command, %id, reason = %why, accepted, rejected, failed, suppressed, "{}", kind.replace('_', " "));
            }
        }

        let asset = audit.device.unwrap_or_else(|| gateway.clone());
        let event = StoredEventDraft::now(gateway.as_str(), asset, event);
        Outcome { reply: serde_json::Value::Object(reply), event: Some(event), restart, publish_reply: true }
    }

    /// Stores the reply, then the audit event (each flushed before it can be published).
    async fn record(&self, outcome: &Outcome) {
        if outcome.publish_reply {
            let reply = StoredReply { topic_leaf: RESPONSE_LEAF.into(), body: outcome.reply.clone() };
            self.outbox.until_not_compacting().await;
            match timeout(STORE_TIMEOUT, self.outbox.append_reply(&reply)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => error!(error = %e, "could not store a command reply"),
                Err(_) => error!("storing a command reply took longer than {STORE_TIMEOUT:?}"),
            }
        }
        if let Some(event) = &outcome.event {
            self.outbox.until_not_compacting().await;
            match timeout(STORE_TIMEOUT, self.outbox.append(&[], std::slice::from_ref(event))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "could not store a command audit event"),
                Err(_) => error!("storing a command audit event took longer than {STORE_TIMEOUT:?}"),
            }
        }
        self.stored.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use edge_drivers::{Quality, Sample};

    use super::*;
    use crate::config::load_str;
    use crate::events::Severity;
    use crate::live::GatewayView;

    fn config_text(data_dir: &Path, writes_enabled: bool) -> String {
        format!(
            r#"
[gateway]
id = "gw"
site = "site"
data_dir = "{}"

[[devices]]
name = "plc"
protocol = "modbus-tcp"
address = "127.0.0.1:502"

[[devices.tags]]
name = "flow"
table = "holding"
address = 0
scale = 0.1

[[devices.tags]]
name = "pump"
table = "coil"
address = 1

[[devices.tags]]
name = "level"
table = "input"
address = 2

[commands]
writes_enabled = {writes_enabled}
write_timeout = "200ms"

[[commands.writable]]
device = "plc"
tag = "flow"
min = 0.0
max = 500.0
max_step = 10.0

[[commands.writable]]
device = "plc"
tag = "pump"
"#,
            data_dir.display()
        )
    }

    /// What the fake driver answers.
    #[derive(Clone, Copy)]
    enum Driver {
        Ok,
        NotConnected,
        Exception,
        Silent,
    }

    struct Fixture {
        handler: Handler,
        outbox: Outbox,
        seen: Arc<Mutex<Vec<(String, Value)>>>,
        restart_rx: mpsc::Receiver<Box<Config>>,
        _dir: tempfile::TempDir,
    }

    fn fixture(driver: Driver, config_file: Option<PathBuf>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = load_str(&config_text(dir.path(), true), "test.toml").unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let live = Live::new(GatewayView::default(), &config.devices);
        let now = Utc::now();
        live.record_samples(
            "plc",
            &[Sample {
                tag: "flow".into(),
                value: Some(Value::Float(308.4)),
                quality: Quality::Good,
                source_ts: now,
                server_ts: None,
                agent_ts: now,
            }],
        );
        let (tx, mut rx) = mpsc::channel::<WriteRequest>(4);
        let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let sink = seen.clone();
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Some(req) = rx.recv().await {
                sink.lock().unwrap().push((req.tag.clone(), req.value.clone()));
                let answer = match driver {
                    Driver::Ok => Ok(()),
                    Driver::NotConnected => Err(WriteError::NotConnected),
                    Driver::Exception => Err(WriteError::Exception(tokio_modbus::ExceptionCode::IllegalDataValue)),
                    Driver::Silent => {
                        parked.push(req);
                        continue;
                    }
                };
                let _ = req.reply.send(answer);
            }
        });
        let (restart, restart_rx) = mpsc::channel(1);
        let handler = Handler {
            config: Arc::new(config),
            config_file,
            outbox: outbox.clone(),
            live,
            writers: HashMap::from([("plc".to_string(), tx)]),
            restart,
            counters: Arc::default(),
            stored: Arc::default(),
            recent: Default::default(),
            lab: Default::default(),
            log_limit: SharedLogLimit::default(),
        };
        Fixture { handler, outbox, seen, restart_rx, _dir: dir }
    }

    fn inbound(name: &str, payload: &str) -> InboundCommand {
        InboundCommand { name: name.into(), payload: payload.as_bytes().to_vec() }
    }

    async fn handle(f: &Fixture, name: &str, payload: &str) -> Outcome {
        f.handler.handle(inbound(name, payload)).await.expect("a command")
    }

    #[tokio::test]
    async fn ping_answers_pong_and_is_audited() {
        let f = fixture(Driver::Ok, None);
        let out = handle(&f, "ping", r#"{"id":"p1"}"#).await;
        assert_eq!(out.reply["id"], "p1");
        assert_eq!(out.reply["ok"], true);
        assert_eq!(out.reply["result"]["pong"], true);
        assert!(out.reply.get("error").is_none());
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_executed");
        assert_eq!(out.event.as_ref().unwrap().event.severity(), Severity::Info);
        assert_eq!(out.event.as_ref().unwrap().asset, "gw");
        assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["command"], "ping");
        assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["id"], "p1");
        assert!(out.event.as_ref().unwrap().event.details().unwrap()["received_at"].is_string());
    }

    #[tokio::test]
    async fn a_malformed_payload_gets_a_reply_with_a_null_id() {
        let f = fixture(Driver::Ok, None);
        let out = handle(&f, "write", "{not json").await;
        assert_eq!(out.reply["id"], serde_json::Value::Null);
        assert_eq!(out.reply["ok"], false);
        assert!(out.reply["error"].as_str().unwrap().starts_with("malformed JSON"));
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_rejected");
        assert_eq!(out.event.as_ref().unwrap().event.severity(), Severity::Warning);
        assert_eq!(f.handler.counters.rejected.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_allowed_write_goes_to_the_driver() {
        let f = fixture(Driver::Ok, None);
        let out = handle(&f, "write", r#"{"id":"w1","device":"plc","tag":"flow","value":312.5}"#).await;
        assert_eq!(out.reply, json!({"id":"w1","ok":true,"result":{"device":"plc","tag":"flow","value":312.5}}));
        assert_eq!(*f.seen.lock().unwrap(), vec![("flow".to_string(), Value::Float(312.5))]);
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_executed");
        assert_eq!(out.event.as_ref().unwrap().asset, "plc");
        assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["tag"], "flow");
        assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["value"], 312.5);
        assert_eq!(f.handler.counters.accepted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_write_delivered_twice_reaches_the_plc_once_and_both_get_the_same_reply() {
        // Given a write that was carried out
        let f = fixture(Driver::Ok, None);
        let payload = r#"{"id":"w1","device":"plc","tag":"flow","value":312.5}"#;
        let first = handle(&f, "write", payload).await;
        // When the broker delivers it again (same id, same payload)
        let again = handle(&f, "write", payload).await;
        // Then the PLC saw one write, the repeat got the first reply and no second audit event
        assert_eq!(f.seen.lock().unwrap().len(), 1);
        assert_eq!(again.reply, first.reply);
        assert!(again.event.is_none());
        assert_eq!(f.handler.counters.accepted.load(Ordering::Relaxed), 1);
        assert_eq!(f.handler.counters.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(f.handler.live.snapshot().commands.duplicates, 1);
    }

    #[tokio::test]
    async fn an_id_reused_for_a_different_write_is_refused() {
        // Given a write that was carried out
        let f = fixture(Driver::Ok, None);
        handle(&f, "write", r#"{"id":"w1","device":"plc","tag":"flow","value":312.5}"#).await;
        // When another write comes with the same id
        let out = handle(&f, "write", r#"{"id":"w1","device":"plc","tag":"flow","value":315}"#).await;
        // Then it is refused, named, and never reaches the PLC
        assert_eq!(out.reply["ok"], false);
        assert!(out.reply["error"].as_str().unwrap().contains("already used by a different command"), "{}", out.reply);
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_rejected");
        assert_eq!(f.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_write_never_reaches_the_driver() {
        let f = fixture(Driver::Ok, None);
        for (payload, needle) in [
            (r#"{"id":"a","device":"plc","tag":"flow","value":330}"#, "larger than max_step"),
            (r#"{"id":"b","device":"plc","tag":"flow","value":-1}"#, "out of the allowed range"),
            (r#"{"id":"c","device":"plc","tag":"level","value":1}"#, "not in the allowlist"),
            (r#"{"id":"d","device":"plc","tag":"pump","value":1}"#, "must be true or false"),
        ] {
            let out = handle(&f, "write", payload).await;
            assert_eq!(out.reply["ok"], false);
            assert!(out.reply["error"].as_str().unwrap().contains(needle), "{payload}: {}", out.reply);
            assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_rejected");
            assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["reason"], out.reply["error"]);
        }
        assert!(f.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_disconnected_device_is_a_rejection_and_an_exception_a_failure() {
        let f = fixture(Driver::NotConnected, None);
        let out = handle(&f, "write", r#"{"id":"w","device":"plc","tag":"pump","value":true}"#).await;
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_rejected");
        assert_eq!(out.reply["error"], "plc/pump: the device is not connected");

        let f = fixture(Driver::Exception, None);
        let out = handle(&f, "write", r#"{"id":"w","device":"plc","tag":"pump","value":true}"#).await;
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_executed");
        assert_eq!(out.event.as_ref().unwrap().event.severity(), Severity::Warning);
        assert_eq!(out.event.as_ref().unwrap().event.details().unwrap()["ok"], false);
        assert!(out.reply["error"].as_str().unwrap().contains("modbus exception"), "{}", out.reply);
        assert_eq!(f.handler.counters.failed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_driver_that_does_not_answer_times_out() {
        let f = fixture(Driver::Silent, None);
        let started = std::time::Instant::now();
        let out = handle(&f, "write", r#"{"id":"w","device":"plc","tag":"pump","value":true}"#).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(out.reply["error"].as_str().unwrap().contains("no answer from device plc within 200ms"), "{}", out.reply);
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_executed");
    }

    #[tokio::test]
    async fn reload_without_a_file_is_not_supported() {
        let f = fixture(Driver::Ok, None);
        let out = handle(&f, "reload", r#"{"id":"r"}"#).await;
        assert_eq!(out.reply["ok"], false);
        assert!(out.reply["error"].as_str().unwrap().contains("not supported"));
        assert!(out.restart.is_none());
    }

    #[tokio::test]
    async fn reload_reports_a_broken_file_and_restarts_with_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plant.toml");
        std::fs::write(&file, "[gateway]\nid = \"gw\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\nbogus = 1\n").unwrap();
        let mut f = fixture(Driver::Ok, Some(file.clone()));
        let out = handle(&f, "reload", r#"{"id":"r1"}"#).await;
        assert_eq!(out.reply["ok"], false);
        let error = out.reply["error"].as_str().unwrap();
        assert!(error.contains("plant.toml:5: gateway.bogus: unknown key"), "{error}");
        assert!(out.restart.is_none());
        assert_eq!(out.event.as_ref().unwrap().event.kind(), "command_rejected");

        std::fs::write(&file, config_text(dir.path(), false)).unwrap();
        let out = handle(&f, "reload", r#"{"id":"r2"}"#).await;
        assert_eq!(out.reply["ok"], true, "{}", out.reply);
        assert_eq!(out.reply["result"]["devices"], 1);
        let new = out.restart.expect("a config to restart with");
        assert!(!new.commands.writes_enabled);

        // Through the task: the reply is stored, then the runtime is told.
        let (tx, rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let outbox = f.outbox.clone();
        let restart_rx = &mut f.restart_rx;
        let task = tokio::spawn(f.handler.run(rx, cancel.clone()));
        tx.send(inbound("reload", r#"{"id":"r3"}"#)).await.unwrap();
        let restarted = timeout(Duration::from_secs(5), restart_rx.recv()).await.unwrap();
        assert!(restarted.is_some());
        let replies = outbox.replies_from(0, 10);
        assert_eq!(replies.last().unwrap().1.body["id"], "r3");
        assert_eq!(replies.last().unwrap().1.topic_leaf, "cmd/response");
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn every_command_stores_its_reply_and_its_event() {
        let f = fixture(Driver::Ok, None);
        let (tx, rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let outbox = f.outbox.clone();
        let events_before = outbox.next_event_seq();
        let task = tokio::spawn(f.handler.run(rx, cancel.clone()));
        tx.send(inbound("ping", r#"{"id":"1"}"#)).await.unwrap();
        tx.send(inbound("response", r#"{"id":"1","ok":true}"#)).await.unwrap(); // our own echo: ignored
        tx.send(inbound("nope", r#"{"id":"2"}"#)).await.unwrap();
        tx.send(inbound("rebirth", r#"{"id":"3"}"#)).await.unwrap();
        let replies = loop {
            let r = outbox.replies_from(0, 10);
            if r.len() >= 3 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ids: Vec<_> = replies.iter().map(|(_, r)| r.body["id"].clone()).collect();
        assert_eq!(ids, vec![json!("1"), json!("2"), json!("3")]);
        assert_eq!(replies[1].1.body["error"], "unknown command \"nope\": expected one of write, reload, rebirth, ping, lab");
        assert_eq!(replies[2].1.body["result"]["note"], "JSON mode: nothing to rebirth; status is retained");
        cancel.cancel();
        task.await.unwrap();
        let events = outbox.events_from(events_before, 10);
        let kinds: Vec<_> = events.iter().map(|(_, e)| e.0.kind.as_str()).collect();
        assert_eq!(kinds, vec!["command_executed", "command_rejected", "command_executed"]);
    }
}
