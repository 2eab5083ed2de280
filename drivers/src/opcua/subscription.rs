//! What the driver asks of a session: the device's groups (built once with the device,
//! [`super::device::Group`]) as subscriptions (or polled groups), browse paths resolved to
//! nodes, monitored items created with their sampling interval, queue and deadband filter.
//!
//! Notifications arrive in the library's callbacks; they are forwarded, tagged with the
//! session's generation, into one channel that the driver task drains. A notification
//! from an older session (one being torn down) is dropped by the driver, never reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    AttributeId, BrowsePath, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage, ObjectId, ReadValueId,
    StatusChangeNotification, StatusCode, TimestampsToReturn,
};
use tokio::sync::mpsc;

use super::config::Address;
pub use super::device::{Group, Monitoring};
use super::device::{OpcuaDevice, OpcuaTag};

/// Most notifications the server may put in one Publish response. Without a limit a server
/// packs everything queued into one message; with a thousand items that overruns the
/// message size (≈ 320 KB by default on both sides) and the server sends nothing at all.
pub const MAX_NOTIFICATIONS_PER_PUBLISH: u32 = 1000;

/// What the library's callbacks forward to the driver task.
#[derive(Debug)]
pub enum Event {
    /// A data change of the item whose client handle is `handle` (tag index + 1).
    Data { handle: u32, value: DataValue },
    /// A subscription's status changed: `BadTimeout` (the server dropped it) or
    /// `GoodSubscriptionTransferred` (another session took it over); either way it is gone.
    /// `from`: the heartbeat of the subscription it is about (a late word about an older
    /// subscription of the group must not end the new one).
    Status { group: usize, status: StatusCode, from: Heartbeat },
}

/// Data changes the driver may hold before it drops new ones (counted): about a second
/// at 100 000 notifications/s, while the agent does not take reports.
pub const EVENT_QUEUE: usize = 100_000;

/// Where the callbacks put events, tagged with the generation of the session that produced
/// them. Data changes go to a bounded queue (a full queue drops the new one and counts
/// it); status changes, rare and needed to rebuild a subscription, are never dropped.
#[derive(Clone)]
pub struct Events {
    pub data: mpsc::Sender<(u64, Event)>,
    pub status: mpsc::UnboundedSender<(u64, Event)>,
    pub dropped: Arc<AtomicU64>,
}

/// The receiving side of [`Events`].
pub struct EventsRx {
    pub data: mpsc::Receiver<(u64, Event)>,
    pub status: mpsc::UnboundedReceiver<(u64, Event)>,
}

/// A fresh pair of queues.
pub fn events() -> (Events, EventsRx) {
    let (data, data_rx) = mpsc::channel(EVENT_QUEUE);
    let (status, status_rx) = mpsc::unbounded_channel();
    (Events { data, status, dropped: Arc::default() }, EventsRx { data: data_rx, status: status_rx })
}

/// The client handle of tag `index` (handles start at 1; 0 lets the library pick).
pub fn handle_of(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The tag index of a client handle.
pub fn index_of(handle: u32) -> Option<usize> {
    (handle as usize).checked_sub(1)
}

/// Resolves the nodes of `tags`: NodeIds as they are, browse paths through
/// TranslateBrowsePathsToNodeIds from the Objects folder. One result per tag.
pub async fn resolve(session: &Session, device: &OpcuaDevice, tags: &[usize]) -> Vec<(usize, Result<NodeId, String>)> {
    let mut out = Vec::with_capacity(tags.len());
    let mut paths = Vec::new();
    for &i in tags {
        match &device.tags[i].address {
            Address::Node(n) => out.push((i, Ok(n.clone()))),
            Address::Path(p) => paths.push((i, p.clone())),
        }
    }
    if paths.is_empty() {
        return out;
    }
    let request: Vec<BrowsePath> =
        paths.iter().map(|(_, p)| BrowsePath { starting_node: ObjectId::ObjectsFolder.into(), relative_path: p.clone() }).collect();
    match session.translate_browse_paths_to_node_ids(&request).await {
        Ok(results) => {
            for ((i, _), r) in paths.iter().zip(results.iter()) {
                let target = r.targets.as_ref().and_then(|t| t.first());
                out.push(match (r.status_code.is_good(), target) {
                    (true, Some(t)) => (*i, Ok(t.target_id.node_id.clone())),
                    _ => (*i, Err(format!("browse_path not found: {}", r.status_code))),
                });
            }
            // A server that answers fewer results than asked leaves the rest unresolved.
            for (i, _) in paths.iter().skip(results.len()) {
                out.push((*i, Err("browse_path not resolved: no result from the server".into())));
            }
        }
        Err(e) => {
            for (i, _) in &paths {
                out.push((*i, Err(format!("browse_path not resolved: {e}"))));
            }
        }
    }
    out
}

/// When a subscription last heard from the server: any Publish response for it counts
/// (data, keep-alive, status change). A server sends at least a keep-alive every
/// keep-alive period; a longer silence means it dropped the subscription without a word
/// (async-opcua's client then simply stops: no status change reaches the callbacks).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    base: std::time::Instant,
    heard_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    fn new() -> Self {
        Self { base: std::time::Instant::now(), heard_ms: Arc::default() }
    }

    fn beat(&self) {
        self.heard_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether `self` and `other` watch the same subscription.
    pub fn same_as(&self, other: &Heartbeat) -> bool {
        Arc::ptr_eq(&self.heard_ms, &other.heard_ms)
    }

    /// How long since the server last said anything about the subscription (or since it
    /// was created).
    pub fn silence(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_millis(self.heard_ms.load(Ordering::Relaxed)))
    }
}

/// A subscription the server created.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub id: u32,
    pub heartbeat: Heartbeat,
    /// The silence after which the subscription counts as dropped: two keep-alive
    /// periods (as the server revised them) and a second.
    pub silence_limit: Duration,
}

/// Forwards what the server sends for one subscription to the driver task. Unlike the
/// library's `SubscriptionCallbacks` it also sees keep-alives (for the [`Heartbeat`]).
struct Forward {
    group: usize,
    generation: u64,
    events: Events,
    heartbeat: Heartbeat,
}

impl OnSubscriptionNotificationCore for Forward {
    fn on_subscription_notification(&mut self, message: NotificationMessage, _items: MonitoredItemMap<'_>) {
        self.heartbeat.beat();
        for body in message.notification_data.into_iter().flatten() {
            if body.inner_as::<DataChangeNotification>().is_some() {
                let Some(changes) = body.into_inner_as::<DataChangeNotification>() else { continue };
                for n in changes.monitored_items.into_iter().flatten() {
                    let event = Event::Data { handle: n.client_handle, value: n.value };
                    if let Err(mpsc::error::TrySendError::Full(_)) = self.events.data.try_send((self.generation, event)) {
                        self.events.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if let Some(change) = body.inner_as::<StatusChangeNotification>() {
                let event = Event::Status { group: self.group, status: change.status, from: self.heartbeat.clone() };
                let _ = self.events.status.send((self.generation, event));
            }
        }
    }
}

/// Creates the subscription of group `group_index`, forwarding its notifications to
/// `events` tagged with `generation`. `session_timeout`: the session's (the subscription
/// lives at least as long).
pub async fn create_subscription(
    session: &Session,
    group_index: usize,
    group: &Group,
    session_timeout: Duration,
    events: &Events,
    generation: u64,
) -> Result<Subscribed, StatusCode> {
    let heartbeat = Heartbeat::new();
    let forward = Forward { group: group_index, generation, events: events.clone(), heartbeat: heartbeat.clone() };
    // Keep-alive every ~second (at least 3 intervals), lifetime 3 keep-alives or the session
    // timeout, whichever is longer: the server keeps the subscription through short gaps,
    // and a subscription it dropped silently is noticed within seconds.
    let interval_ms = group.interval.as_millis().max(1) as u64;
    let keep_alive = (KEEP_ALIVE_TARGET_MS / interval_ms).clamp(3, 1000) as u32;
    let lifetime = ((session_timeout.as_millis() as u64 / interval_ms) as u32).max(keep_alive * 3);
    let id = session
        .create_subscription(group.interval, lifetime, keep_alive, MAX_NOTIFICATIONS_PER_PUBLISH, 0, true, forward)
        .await
        .map_err(|e| e.status())?;
    // The server may revise the interval and the keep-alive count: watch what it chose.
    let (interval, keep_alive) = session
        .subscription_state()
        .lock()
        .get(id)
        .map_or((group.interval, keep_alive), |s| (s.publishing_interval(), s.max_keep_alive_count()));
    let period = interval.saturating_mul(keep_alive.max(1));
    Ok(Subscribed { id, heartbeat, silence_limit: period.saturating_mul(2) + Duration::from_secs(1) })
}

/// The keep-alive period the driver asks for, in milliseconds.
const KEEP_ALIVE_TARGET_MS: u64 = 1_000;

/// The create request of one tag's monitored item.
pub fn item_request(index: usize, tag: &OpcuaTag, node: NodeId) -> MonitoredItemCreateRequest {
    let monitoring = tag.monitoring;
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId { node_id: node, attribute_id: AttributeId::Value as u32, ..Default::default() },
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: handle_of(index),
            sampling_interval: monitoring.sampling_interval.as_secs_f64() * 1000.0,
            filter: deadband_filter(tag).map_or_else(ExtensionObject::null, ExtensionObject::from_message),
            queue_size: monitoring.queue_size,
            discard_oldest: true,
        },
    }
}

/// The server-side deadband of a tag: `deadband` is absolute in engineering units (so
/// divided by the tag's scale for the server's raw value); `deadband_percent` is the
/// OPC-UA percent deadband (percent of the node's EURange; the server must have one).
pub fn deadband_filter(tag: &OpcuaTag) -> Option<DataChangeFilter> {
    let (kind, value) = match (tag.deadband, tag.deadband_percent) {
        (Some(d), _) => (DeadbandType::Absolute, d / tag.scale.abs()),
        (None, Some(p)) => (DeadbandType::Percent, p),
        (None, None) => return None,
    };
    Some(DataChangeFilter { trigger: DataChangeTrigger::StatusValue, deadband_type: kind as u32, deadband_value: value })
}

/// Creates the monitored items `items` (tag index, node) in subscription `sub`. One
/// status per item, in order: a bad one names why the server refused the item.
pub async fn create_items(
    session: &Session,
    sub: u32,
    device: &OpcuaDevice,
    items: &[(usize, NodeId)],
) -> Result<Vec<(usize, StatusCode, u32)>, StatusCode> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(items.len());
    // Servers cap the items per request (MaxMonitoredItemsPerCall); stay well under it.
    for chunk in items.chunks(500) {
        let requests = chunk.iter().map(|(i, n)| item_request(*i, &device.tags[*i], n.clone())).collect();
        let results = session.create_monitored_items(sub, TimestampsToReturn::Both, requests).await.map_err(|e| e.status())?;
        for ((i, _), r) in chunk.iter().zip(results.iter()) {
            out.push((*i, r.result.status_code, r.result.monitored_item_id));
        }
    }
    Ok(out)
}

/// Reads the values of `items` with the Read service (polled groups, write read-backs).
pub async fn read(session: &Session, items: &[(usize, NodeId)]) -> Result<Vec<(usize, DataValue)>, StatusCode> {
    let request: Vec<ReadValueId> = items
        .iter()
        .map(|(_, n)| ReadValueId { node_id: n.clone(), attribute_id: AttributeId::Value as u32, ..Default::default() })
        .collect();
    let values = session.read(&request, TimestampsToReturn::Both, 0.0).await.map_err(|e| e.status())?;
    Ok(items.iter().map(|(i, _)| *i).zip(values).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TagConfig;
    use crate::opcua::OpcuaConfig;

    fn tag(name: &str) -> OpcuaTag {
        let cfg = TagConfig { name: name.into(), table: None, address: None, node_id: Some("ns=2;i=1".into()), ..Default::default() };
        OpcuaTag::build(&cfg, &OpcuaConfig::default(), Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn an_absolute_deadband_is_sent_in_raw_units() {
        let t = OpcuaTag { deadband: Some(0.5), scale: 0.1, ..tag("a") };
        let f = deadband_filter(&t).unwrap();
        assert_eq!(f.deadband_type, DeadbandType::Absolute as u32);
        assert!((f.deadband_value - 5.0).abs() < 1e-9);
        assert!(deadband_filter(&tag("b")).is_none());
    }

    #[test]
    fn handles_and_indices_round_trip() {
        assert_eq!(index_of(handle_of(0)), Some(0));
        assert_eq!(index_of(handle_of(41)), Some(41));
        assert_eq!(index_of(0), None);
    }
}
