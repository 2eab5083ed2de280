//! What the driver asks of a session: tags grouped by interval into subscriptions (or
//! polled groups), browse paths resolved to nodes, monitored items created with their
//! sampling interval, queue and deadband filter.
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

use super::config::{tag_address, Address, OpcuaConfig};
use crate::config::{DeviceConfig, TagConfig};

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

/// Tags that share an interval and a way of being read.
#[derive(Debug, Clone)]
pub struct Group {
    /// The device's poll group, `None` for the default one.
    pub name: Option<String>,
    /// Publishing interval of the subscription, or the polling interval.
    pub interval: Duration,
    /// Read with the Read service every interval instead of subscribing.
    pub poll: bool,
    /// Indices into the device's tags.
    pub tags: Vec<usize>,
    /// The monitoring parameters of every tag of the device (by tag index), resolved once
    /// when the groups are planned; only this group's `tags` are used from it.
    pub monitoring: Arc<[Monitoring]>,
}

/// The parameters of one tag's monitored item, every default resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitoring {
    /// The tag's `sampling_interval`, else the device's, else its group's interval.
    pub sampling_interval: Duration,
    /// The tag's `queue_size`, else the device's.
    pub queue_size: u32,
}

/// The groups of a device, in the order of their first tag.
pub fn plan(device: &DeviceConfig, ua: &OpcuaConfig) -> Vec<Group> {
    let interval_of = |name: &Option<String>| match name {
        Some(_) => device.group_interval(name.as_deref()),
        None if ua.polls(None) => device.poll_interval,
        None => ua.publishing_interval,
    };
    let monitoring: Arc<[Monitoring]> = device
        .tags
        .iter()
        .map(|tag| Monitoring {
            sampling_interval: tag.sampling_interval.or(ua.sampling_interval).unwrap_or_else(|| interval_of(&tag.poll_group)),
            queue_size: tag.queue_size.unwrap_or(ua.queue_size),
        })
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    for (i, tag) in device.tags.iter().enumerate() {
        let name = tag.poll_group.clone();
        if let Some(g) = groups.iter_mut().find(|g| g.name == name) {
            g.tags.push(i);
            continue;
        }
        let poll = ua.polls(name.as_deref());
        let interval = interval_of(&name);
        groups.push(Group { name, interval, poll, tags: vec![i], monitoring: monitoring.clone() });
    }
    groups
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
pub async fn resolve(session: &Session, device: &DeviceConfig, tags: &[usize]) -> Vec<(usize, Result<NodeId, String>)> {
    let mut out = Vec::with_capacity(tags.len());
    let mut paths = Vec::new();
    for &i in tags {
        match tag_address(&device.tags[i]) {
            Ok(Address::Node(n)) => out.push((i, Ok(n))),
            Ok(Address::Path(p)) => paths.push((i, p)),
            Err(e) => out.push((i, Err(e))),
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
/// `events` tagged with `generation`.
pub async fn create_subscription(
    session: &Session,
    group_index: usize,
    group: &Group,
    ua: &OpcuaConfig,
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
    let lifetime = ((ua.session_timeout.as_millis() as u64 / interval_ms) as u32).max(keep_alive * 3);
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
pub fn item_request(index: usize, tag: &TagConfig, node: NodeId, monitoring: Monitoring) -> MonitoredItemCreateRequest {
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
pub fn deadband_filter(tag: &TagConfig) -> Option<DataChangeFilter> {
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
    device: &DeviceConfig,
    group: &Group,
    items: &[(usize, NodeId)],
) -> Result<Vec<(usize, StatusCode, u32)>, StatusCode> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(items.len());
    // Servers cap the items per request (MaxMonitoredItemsPerCall); stay well under it.
    for chunk in items.chunks(500) {
        let requests = chunk.iter().map(|(i, n)| item_request(*i, &device.tags[*i], n.clone(), group.monitoring[*i])).collect();
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
    use crate::config::{Interval, Protocol};

    fn tag(name: &str, group: Option<&str>) -> TagConfig {
        TagConfig {
            name: name.into(),
            table: None,
            address: None,
            node_id: Some("ns=2;i=1".into()),
            poll_group: group.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn tags_are_grouped_by_poll_group_and_polled_groups_are_marked() {
        let mut device = DeviceConfig {
            protocol: Protocol::Opcua,
            tags: vec![tag("a", None), tag("b", Some("slow")), tag("c", None)],
            ..Default::default()
        };
        device.poll_groups.insert("slow".into(), Interval(Duration::from_secs(10)));
        let ua = OpcuaConfig { poll_groups: vec!["slow".into()], ..Default::default() };
        let groups = plan(&device, &ua);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].tags.clone(), groups[0].poll, groups[0].interval), (vec![0, 2], false, ua.publishing_interval));
        assert_eq!((groups[1].tags.clone(), groups[1].poll, groups[1].interval), (vec![1], true, Duration::from_secs(10)));
    }

    #[test]
    fn each_tag_samples_at_its_own_then_the_device_then_the_group_interval() {
        // Given a device with a tag that sets its own sampling interval and queue, one that sets none, and one in a poll group
        let mut device = DeviceConfig {
            protocol: Protocol::Opcua,
            tags: vec![
                tag("a", None),
                TagConfig { sampling_interval: Some(Duration::from_millis(50)), queue_size: Some(3), ..tag("b", None) },
                tag("c", Some("slow")),
            ],
            ..Default::default()
        };
        device.poll_groups.insert("slow".into(), Interval(Duration::from_secs(10)));
        let plain = OpcuaConfig::default();

        // When the groups are planned without a device sampling interval
        let m = plan(&device, &plain)[0].monitoring.clone();
        // Then a tag samples at its own interval, else at its group's; its queue is its own, else the device's
        assert_eq!((m[0].sampling_interval, m[0].queue_size), (plain.publishing_interval, 10));
        assert_eq!((m[1].sampling_interval, m[1].queue_size), (Duration::from_millis(50), 3));
        assert_eq!(m[2].sampling_interval, Duration::from_secs(10));

        // And with a device sampling interval, the tags without their own take it
        let ua = OpcuaConfig { sampling_interval: Some(Duration::from_millis(200)), queue_size: 7, ..Default::default() };
        let m = plan(&device, &ua)[0].monitoring.clone();
        let got: Vec<(Duration, u32)> = m.iter().map(|m| (m.sampling_interval, m.queue_size)).collect();
        assert_eq!(got, vec![(Duration::from_millis(200), 7), (Duration::from_millis(50), 3), (Duration::from_millis(200), 7)]);
    }

    #[test]
    fn an_absolute_deadband_is_sent_in_raw_units() {
        let t = TagConfig { deadband: Some(0.5), scale: 0.1, ..tag("a", None) };
        let f = deadband_filter(&t).unwrap();
        assert_eq!(f.deadband_type, DeadbandType::Absolute as u32);
        assert!((f.deadband_value - 5.0).abs() < 1e-9);
        assert!(deadband_filter(&tag("b", None)).is_none());
    }

    #[test]
    fn handles_and_indices_round_trip() {
        assert_eq!(index_of(handle_of(0)), Some(0));
        assert_eq!(index_of(handle_of(41)), Some(41));
        assert_eq!(index_of(0), None);
    }
}
