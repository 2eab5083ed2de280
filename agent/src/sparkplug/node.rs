//! The edge node's messages and session state (pure: the uplink publishes what it returns).
//!
//! Per MQTT session: the NDEATH Will carries that session's `bdSeq` (Int64); the NBIRTH
//! repeats it with `seq = 0`; then each device's DBIRTH before its first DDATA; every
//! NBIRTH, DBIRTH, NDATA, DDATA and DDEATH takes the next `seq` (0–255, wrapping). A DDATA
//! names its metrics by alias only, with the sample's source time, `is_historical` when the
//! batch was stored before the session's birth, and the `Quality` property when not good.
//! An NDATA reports a node metric (the store depth) that changed since the last NBIRTH or
//! NDATA.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use edge_drivers::{DeviceConfig, Value};
use prost::Message as _;
use srad_types::payload::{metric, property_value, Metric, PropertySet, PropertyValue};

use super::catalog::{
    self, Catalog, DeviceMetrics, MetricDef, ALIAS_BROKER, ALIAS_FAILOVER, ALIAS_REBOOT, ALIAS_STORE_DEPTH, ALIAS_VERSION,
};
use super::config::NodeIds;
use super::{DataType, Payload};
use crate::payload::WireSample;

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";

/// The `Quality` property's values: Sparkplug 3.0 allows only 0 (bad), 192 (good) and
/// 500 (stale) (`payloads-propertyset-quality-value-value`). It has no "uncertain": an
/// uncertain reading (a clamped value, an OPC-UA uncertain status) is sent as bad.
pub const QUALITY_BAD: i32 = 0;
pub const QUALITY_GOOD: i32 = 192;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the NBIRTH reports about the node itself.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub version: String,
    /// Telemetry batches waiting in the outbox.
    pub store_depth: u64,
    /// Whether `Node Control/Reboot` is obeyed (`sparkplug.allow_reboot`).
    pub reboot_allowed: bool,
    /// The broker of this session (`mqtt://host:port`), and whether it is the failover one.
    pub broker: String,
    pub failover: bool,
}

/// The edge node of one agent.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    ids: NodeIds,
    catalog: Catalog,
    /// The `seq` of the next message.
    seq: u8,
    /// The NBIRTH of this session went out.
    node_born: bool,
    /// Devices whose DBIRTH went out in this session.
    born: HashSet<String>,
    /// The last live value of each device's metrics, for the next DBIRTH.
    last: HashMap<String, HashMap<String, WireSample>>,
    /// Born devices reported lost (`device_lost`), with the outbox's next `batch_seq` when
    /// the event was read: their DDEATH goes out once every batch numbered below it has
    /// been queued (the last readings before the loss come first).
    dying: HashMap<String, u64>,
    /// Devices lost (DDEATH sent, or lost while not born): no DBIRTH until they are back
    /// (`device_connected`) or a reading of theirs is published.
    dead: HashSet<String>,
    /// The `seq` of the last message, if any.
    last_seq: Option<u8>,
    /// The store depth the last NBIRTH or NDATA of this session reported.
    reported_depth: u64,
}

impl EdgeNode {
    pub fn new(ids: NodeIds, devices: &[DeviceConfig]) -> Self {
        Self {
            ids,
            catalog: Catalog::from_devices(devices),
            seq: 0,
            node_born: false,
            born: HashSet::new(),
            last: HashMap::new(),
            dying: HashMap::new(),
            dead: HashSet::new(),
            last_seq: None,
            reported_depth: 0,
        }
    }

    /// The `seq` of the last message published, if any.
    pub fn last_seq(&self) -> Option<u8> {
        self.last_seq
    }

    /// Devices whose DDEATH went out (or that were lost while not born), not back yet.
    pub fn dead_devices(&self) -> impl Iterator<Item = &str> {
        self.dead.iter().map(String::as_str)
    }

    pub fn ids(&self) -> &NodeIds {
        &self.ids
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// `spBv1.0/{group}/{kind}/{edge_node}[/{device}]`.
    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.ids.group_id, self.ids.edge_node_id),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.ids.group_id, self.ids.edge_node_id),
        }
    }

    /// The NDEATH to register as the Will of a CONNECT with `bdseq`: that one metric, no `seq`.
    pub fn death(&self, bdseq: u8, now: DateTime<Utc>) -> Message {
        let payload = Payload { timestamp: Some(ms(now)), metrics: vec![bdseq_metric(bdseq, None)], seq: None, uuid: None, body: None };
        Message { topic: self.topic("NDEATH", None), payload: payload.encode_to_vec() }
    }

    /// The connection is gone (or the node published its NDEATH): the next session starts
    /// with an NBIRTH and new DBIRTHs. A device that was dying is dead: not born again
    /// until it is back.
    pub fn session_ended(&mut self) {
        self.node_born = false;
        self.born.clear();
        self.dead.extend(self.dying.drain().map(|(d, _)| d));
    }

    /// `Node Control/Rebirth`: the next message is a new NBIRTH (`seq` 0, the same
    /// `bdSeq`: the Will of the connection has not changed), then every DBIRTH again.
    pub fn rebirth(&mut self) {
        self.node_born = false;
        self.born.clear();
    }

    /// A stored `device_lost` of `device` was read; `next_batch_seq` is the outbox's next
    /// number at that moment (every reading taken before the loss is numbered below it).
    pub fn device_lost(&mut self, device: &str, next_batch_seq: u64) {
        if self.born.contains(device) {
            self.dying.insert(device.to_string(), next_batch_seq);
        } else {
            self.dead.insert(device.to_string());
        }
    }

    /// A stored `device_connected` of `device` was read: it may be born again.
    pub fn device_back(&mut self, device: &str) {
        self.dying.remove(device);
        self.dead.remove(device);
    }

    /// The DDEATHs due once every batch below `published_below` has been queued, in device
    /// order; those devices are dead until they are back.
    pub fn deaths_due(&mut self, published_below: u64, now: DateTime<Utc>) -> Vec<Message> {
        let mut due: Vec<String> = self.dying.iter().filter(|(_, &mark)| mark <= published_below).map(|(d, _)| d.clone()).collect();
        due.sort();
        due.into_iter()
            .map(|device| {
                self.dying.remove(&device);
                self.born.remove(&device);
                let seq = self.next_seq();
                let payload = Payload { timestamp: Some(ms(now)), metrics: Vec::new(), seq: Some(seq), uuid: None, body: None };
                let message = Message { topic: self.topic("DDEATH", Some(&device)), payload: payload.encode_to_vec() };
                self.dead.insert(device);
                message
            })
            .collect()
    }

    pub fn is_born(&self) -> bool {
        self.node_born
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.last_seq = Some(s);
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    /// The NBIRTH of a session whose CONNECT carried `bdseq`: `seq` starts again at 0, and
    /// every device needs a new DBIRTH.
    pub fn birth(&mut self, bdseq: u8, info: &NodeInfo, now: DateTime<Utc>) -> Message {
        self.seq = 0;
        self.born.clear();
        self.node_born = true;
        let t = ms(now);
        let node_metric = |name: &str, alias: Option<u64>, datatype: DataType, value: metric::Value| Metric {
            name: Some(name.to_string()),
            alias,
            timestamp: Some(t),
            datatype: Some(datatype as u32),
            value: Some(value),
            ..Metric::new()
        };
        let mut reboot = node_metric("Node Control/Reboot", Some(ALIAS_REBOOT), DataType::Boolean, metric::Value::BooleanValue(false));
        if !info.reboot_allowed {
            reboot.properties = Some(properties(vec![("Writable", PropertyValue::from_bool(false))]));
        }
        self.reported_depth = info.store_depth;
        let metrics = vec![
            bdseq_metric(bdseq, Some(t)),
            // No alias: Sparkplug 3.0 forbids one on `Node Control/Rebirth`.
            node_metric("Node Control/Rebirth", None, DataType::Boolean, metric::Value::BooleanValue(false)),
            reboot,
            node_metric("Node Info/Version", Some(ALIAS_VERSION), DataType::String, metric::Value::StringValue(info.version.clone())),
            node_metric("Node Info/Store Depth", Some(ALIAS_STORE_DEPTH), DataType::UInt64, metric::Value::LongValue(info.store_depth)),
            node_metric("Node Info/Broker", Some(ALIAS_BROKER), DataType::String, metric::Value::StringValue(info.broker.clone())),
            node_metric("Node Info/Failover", Some(ALIAS_FAILOVER), DataType::Boolean, metric::Value::BooleanValue(info.failover)),
        ];
        let seq = self.next_seq();
        let payload = Payload { timestamp: Some(t), metrics, seq: Some(seq), uuid: None, body: None };
        Message { topic: self.topic("NBIRTH", None), payload: payload.encode_to_vec() }
    }

    /// The NDATA of a store depth that differs from the one the last NBIRTH or NDATA of
    /// this session reported (by alias, with its time and the next `seq`); `None` when it
    /// is the same or the node is not born.
    pub fn node_data(&mut self, store_depth: u64, now: DateTime<Utc>) -> Option<Message> {
        if !self.node_born || store_depth == self.reported_depth {
            return None;
        }
        self.reported_depth = store_depth;
        let t = ms(now);
        let depth = Metric {
            alias: Some(ALIAS_STORE_DEPTH),
            timestamp: Some(t),
            value: Some(metric::Value::LongValue(store_depth)),
            ..Metric::new()
        };
        let seq = self.next_seq();
        let payload = Payload { timestamp: Some(t), metrics: vec![depth], seq: Some(seq), uuid: None, body: None };
        Some(Message { topic: self.topic("NDATA", None), payload: payload.encode_to_vec() })
    }

    /// Devices with metrics, not lost, and no DBIRTH in this session yet, in order.
    pub fn unborn_devices(&self) -> Vec<String> {
        self.catalog
            .devices()
            .filter(|(d, m)| !m.metrics.is_empty() && !self.born.contains(*d) && !self.dead.contains(*d))
            .map(|(d, _)| d.to_string())
            .collect()
    }

    /// The DBIRTH of `device`: every metric with name, alias, datatype, properties and its
    /// last value (or `is_null`).
    pub fn device_birth(&mut self, device: &str, now: DateTime<Utc>) -> Message {
        let t = ms(now);
        let empty = DeviceMetrics::default();
        let defs = self.catalog.device(device).unwrap_or(&empty);
        let last = self.last.get(device);
        let metrics = defs.metrics.iter().map(|def| birth_metric(def, last.and_then(|l| l.get(&def.name)), t)).collect();
        self.born.insert(device.to_string());
        let seq = self.next_seq();
        let payload = Payload { timestamp: Some(t), metrics, seq: Some(seq), uuid: None, body: None };
        Message { topic: self.topic("DBIRTH", Some(device)), payload: payload.encode_to_vec() }
    }

    /// The DDATA for one stored batch, preceded by a DBIRTH when the device has none in
    /// this session or a value needs a metric it was not born with.
    pub fn data(&mut self, device: &str, samples: &[WireSample], historical: bool, now: DateTime<Utc>) -> (Option<Message>, Message) {
        // A device with a reading to publish is alive: born again if it was lost.
        self.dead.remove(device);
        let mut rebirth = !self.born.contains(device);
        let mut aliases = Vec::with_capacity(samples.len());
        for s in samples {
            let o = self.catalog.observe(device, &s.tag, s.v.as_ref());
            rebirth |= o.changed;
            aliases.push(o.alias);
        }
        if !historical {
            let last = self.last.entry(device.to_string()).or_default();
            for s in samples {
                last.insert(s.tag.clone(), s.clone());
            }
        }
        let birth = rebirth.then(|| self.device_birth(device, now));
        let defs = self.catalog.device(device);
        let metrics = samples
            .iter()
            .zip(aliases)
            .map(|(s, alias)| {
                let datatype = defs.and_then(|d| d.get(&s.tag)).map_or(DataType::Double, |d| d.datatype);
                let mut m = Metric { alias: Some(alias), timestamp: Some(sample_ms(s, now)), ..Metric::new() };
                set_value(&mut m, datatype, s.v.as_ref());
                if historical {
                    m.is_historical = Some(true);
                }
                m.properties = quality(s);
                m
            })
            .collect();
        let seq = self.next_seq();
        let payload = Payload { timestamp: Some(ms(now)), metrics, seq: Some(seq), uuid: None, body: None };
        (birth, Message { topic: self.topic("DDATA", Some(device)), payload: payload.encode_to_vec() })
    }
}

fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// The sample's source time in ms since the epoch (`now` if it does not parse).
fn sample_ms(s: &WireSample, now: DateTime<Utc>) -> u64 {
    DateTime::parse_from_rfc3339(&s.ts).map_or(ms(now), |t| ms(t.with_timezone(&Utc)))
}

/// `bdSeq`: an Int64, as Sparkplug 3.0 asks in the NDEATH and the NBIRTH
/// (`message-flow-edge-node-birth-publish-will-message-payload-bdSeq`); the NBIRTH's has a
/// timestamp like every birth metric.
fn bdseq_metric(bdseq: u8, timestamp: Option<u64>) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        timestamp,
        datatype: Some(DataType::Int64 as u32),
        value: Some(metric::Value::LongValue(u64::from(bdseq))),
        ..Metric::new()
    }
}

/// The value, or `is_null` when there is none (or it does not fit: never a wrong value).
fn set_value(m: &mut Metric, datatype: DataType, v: Option<&Value>) {
    match v.and_then(|v| catalog::encode_value(datatype, v)) {
        Some(value) => m.value = Some(value),
        None => m.is_null = Some(true),
    }
}

fn properties(entries: Vec<(&str, PropertyValue)>) -> PropertySet {
    let (keys, values) = entries.into_iter().map(|(k, v)| (k.to_string(), v)).unzip();
    PropertySet { keys, values }
}

trait PropertyValueExt {
    fn from_bool(b: bool) -> Self;
}

impl PropertyValueExt for PropertyValue {
    fn from_bool(b: bool) -> Self {
        typed(DataType::Boolean, property_value::Value::BooleanValue(b))
    }
}

fn typed(t: DataType, v: property_value::Value) -> PropertyValue {
    PropertyValue { r#type: Some(t as u32), is_null: None, value: Some(v) }
}

/// The `Quality` property of a sample that is not good (none when good: hosts take a
/// missing `Quality` for good).
fn quality(s: &WireSample) -> Option<PropertySet> {
    let code = match s.q.as_str() {
        "bad" | "uncertain" => QUALITY_BAD,
        _ => return None,
    };
    Some(properties(vec![("Quality", typed(DataType::Int32, property_value::Value::IntValue(code as u32)))]))
}

fn birth_metric(def: &MetricDef, last: Option<&WireSample>, t: u64) -> Metric {
    let mut m = Metric {
        name: Some(def.name.clone()),
        alias: Some(def.alias),
        timestamp: Some(last.map_or(t, |s| sample_ms(s, DateTime::from_timestamp_millis(t as i64).unwrap_or_default()))),
        datatype: Some(def.datatype as u32),
        ..Metric::new()
    };
    set_value(&mut m, def.datatype, last.and_then(|s| s.v.as_ref()));
    let mut props = Vec::new();
    if let Some(unit) = &def.unit {
        props.push(("engUnit", typed(DataType::String, property_value::Value::StringValue(unit.clone()))));
    }
    if let Some(low) = def.low {
        props.push(("engLow", typed(DataType::Double, property_value::Value::DoubleValue(low))));
    }
    if let Some(high) = def.high {
        props.push(("engHigh", typed(DataType::Double, property_value::Value::DoubleValue(high))));
    }
    if let Some(text) = &def.description {
        props.push(("Documentation", typed(DataType::String, property_value::Value::StringValue(text.clone()))));
    }
    let code = match last.map(|s| s.q.as_str()) {
        Some("bad" | "uncertain") => Some(QUALITY_BAD),
        Some(_) => Some(QUALITY_GOOD),
        None => None,
    };
    if let Some(code) = code {
        props.push(("Quality", typed(DataType::Int32, property_value::Value::IntValue(code as u32))));
    }
    if !props.is_empty() {
        m.properties = Some(properties(props));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> EdgeNode {
        let device: DeviceConfig = toml::from_str(
            "name = \"m1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n[[tags]]\nname = \"flow\"\ntable = \"holding\"\naddress = 0\ntype = \"f32\"\nunit = \"t/h\"\nclamp_min = 0.0\nclamp_max = 500.0\n[[tags]]\nname = \"run\"\ntable = \"coil\"\naddress = 0",
        )
        .unwrap();
        let ids = NodeIds { group_id: "mill".into(), edge_node_id: "gw1".into(), primary_host_id: None };
        EdgeNode::new(ids, &[device])
    }

    fn sample(tag: &str, v: Option<Value>, q: &str) -> WireSample {
        WireSample { tag: tag.into(), v, q: q.into(), ts: "2024-05-01T10:00:00.000Z".into(), server_ts: None, reason: None }
    }

    fn decode(m: &Message) -> Payload {
        Payload::decode(m.payload.as_slice()).unwrap()
    }

    fn info(store_depth: u64) -> NodeInfo {
        NodeInfo { version: "0.1.0".into(), store_depth, reboot_allowed: false, broker: "mqtt://b:1883".into(), failover: false }
    }

    #[test]
    fn the_will_and_the_birth_of_a_session_carry_the_same_int64_bdseq_and_the_birth_starts_seq_at_zero() {
        let mut n = node();
        let will = n.death(7, Utc::now());
        assert_eq!(will.topic, "spBv1.0/mill/NDEATH/gw1");
        let death = decode(&will);
        assert_eq!(death.seq, None);
        assert_eq!(death.metrics.len(), 1, "the NDEATH holds bdSeq only");
        assert_eq!(death.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(death.metrics[0].datatype, Some(DataType::Int64 as u32));
        assert_eq!(death.metrics[0].value, Some(metric::Value::LongValue(7)));

        let birth = n.birth(7, &info(3), Utc::now());
        assert_eq!(birth.topic, "spBv1.0/mill/NBIRTH/gw1");
        let p = decode(&birth);
        assert_eq!(p.seq, Some(0));
        let names: Vec<_> = p.metrics.iter().filter_map(|m| m.name.as_deref()).collect();
        assert_eq!(
            names,
            [
                "bdSeq",
                "Node Control/Rebirth",
                "Node Control/Reboot",
                "Node Info/Version",
                "Node Info/Store Depth",
                "Node Info/Broker",
                "Node Info/Failover"
            ]
        );
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(7)));
        assert_eq!(p.metrics[0].datatype, Some(DataType::Int64 as u32));
        // Every birth metric has a timestamp, a datatype and a value
        assert!(p.metrics.iter().all(|m| m.timestamp.is_some() && m.datatype.is_some() && m.value.is_some()));
        // Node Control/Rebirth: Boolean false, and no alias (Sparkplug 3.0 forbids one)
        let rebirth = &p.metrics[1];
        assert_eq!(
            (rebirth.datatype, rebirth.value.clone(), rebirth.alias),
            (Some(DataType::Boolean as u32), Some(metric::Value::BooleanValue(false)), None)
        );
    }

    #[test]
    fn a_changed_store_depth_is_published_as_ndata_by_alias_with_the_next_seq_and_an_unchanged_one_is_not() {
        // Given a node born with a store depth of 3
        let mut n = node();
        assert!(n.node_data(5, Utc::now()).is_none(), "no NDATA before the NBIRTH");
        let birth = decode(&n.birth(0, &info(3), Utc::now()));
        let alias = birth.metrics.iter().find(|m| m.name.as_deref() == Some("Node Info/Store Depth")).and_then(|m| m.alias);
        // When the depth is still 3: nothing
        assert!(n.node_data(3, Utc::now()).is_none());
        // When it is 0: an NDATA with that metric by alias, its time, and seq 1
        let data = n.node_data(0, Utc::now()).expect("an NDATA");
        assert_eq!(data.topic, "spBv1.0/mill/NDATA/gw1");
        let p = decode(&data);
        assert_eq!(p.seq, Some(1));
        assert!(p.timestamp.is_some());
        assert_eq!(p.metrics.len(), 1);
        let m = &p.metrics[0];
        assert_eq!((m.name.as_deref(), m.alias, m.datatype), (None, alias, None));
        assert_eq!(m.value, Some(metric::Value::LongValue(0)));
        assert!(m.timestamp.is_some());
        // And the same depth again is not sent twice
        assert!(n.node_data(0, Utc::now()).is_none());
    }

    #[test]
    fn a_device_is_born_with_every_metric_before_its_first_ddata_which_names_metrics_by_alias_only() {
        // Given a born node
        let mut n = node();
        n.birth(0, &info(0), Utc::now());
        assert_eq!(n.unborn_devices(), ["m1"]);
        // When a batch of m1 is published without a DBIRTH yet
        let samples = [sample("flow", Some(Value::Float(12.5)), "good"), sample("run", Some(Value::Bool(true)), "bad")];
        let (birth, data) = n.data("m1", &samples, false, Utc::now());
        // Then a DBIRTH comes first, with datatypes, the unit and the range
        let birth = decode(&birth.expect("a DBIRTH before the first DDATA"));
        assert_eq!(birth.seq, Some(1));
        let flow = &birth.metrics[0];
        assert_eq!(flow.name.as_deref(), Some("flow"));
        assert_eq!(flow.datatype, Some(DataType::Float as u32));
        let props = flow.properties.as_ref().unwrap();
        assert!(props.keys.iter().any(|k| k == "engUnit") && props.keys.iter().any(|k| k == "engHigh"));
        assert_eq!(birth.metrics[1].datatype, Some(DataType::Boolean as u32));
        // And the DDATA names metrics by alias only, with the Quality property when not good
        assert_eq!(data.topic, "spBv1.0/mill/DDATA/gw1/m1");
        let p = decode(&data);
        assert_eq!(p.seq, Some(2));
        assert!(p.metrics.iter().all(|m| m.name.is_none() && m.datatype.is_none()));
        assert_eq!(p.metrics[0].alias, flow.alias);
        assert_eq!(p.metrics[0].value, Some(metric::Value::FloatValue(12.5)));
        assert_eq!(p.metrics[0].timestamp, Some(1_714_557_600_000));
        let quality = p.metrics[1].properties.as_ref().unwrap();
        assert_eq!(quality.keys, ["Quality"]);
        assert_eq!(quality.values[0].value, Some(property_value::Value::IntValue(QUALITY_BAD as u32)));
        // And an uncertain reading is bad too: Sparkplug knows only 0, 192 and 500
        let (_, uncertain) = n.data("m1", &[sample("flow", Some(Value::Float(500.0)), "uncertain")], false, Utc::now());
        let uncertain = decode(&uncertain).metrics[0].properties.clone().unwrap();
        assert_eq!(uncertain.values[0].value, Some(property_value::Value::IntValue(QUALITY_BAD as u32)));
        assert!(n.unborn_devices().is_empty());
        // And a second batch needs no new birth; a historical one is marked
        let (again, data) = n.data("m1", &samples[..1], true, Utc::now());
        assert!(again.is_none());
        assert_eq!(decode(&data).metrics[0].is_historical, Some(true));
    }

    #[test]
    fn seq_wraps_from_255_to_0_and_a_new_birth_starts_again_at_0() {
        let mut n = node();
        n.birth(0, &info(0), Utc::now());
        let samples = [sample("flow", Some(Value::Float(1.0)), "good")];
        let mut seqs = Vec::new();
        for _ in 0..300 {
            let (birth, data) = n.data("m1", &samples, false, Utc::now());
            seqs.extend(birth.iter().chain([&data]).map(|m| decode(m).seq.unwrap()));
        }
        // 1 (DBIRTH), 2, …, 255, 0, 1, …
        for pair in seqs.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 256, "{pair:?}");
        }
        assert!(seqs.contains(&0));
        let birth = n.birth(1, &info(0), Utc::now());
        assert_eq!(decode(&birth).seq, Some(0));
        assert_eq!(n.unborn_devices(), ["m1"], "a new session needs new DBIRTHs");
    }

    #[test]
    fn a_value_of_a_new_kind_brings_a_new_dbirth_with_the_corrected_datatype() {
        let mut n = node();
        n.birth(0, &info(0), Utc::now());
        n.data("gpio", &[sample("door", Some(Value::Int(1)), "good")], false, Utc::now());
        let (birth, _) = n.data("gpio", &[sample("door", Some(Value::Text("open".into())), "good")], false, Utc::now());
        let birth = decode(&birth.expect("a new DBIRTH"));
        assert_eq!(birth.metrics[0].datatype, Some(DataType::String as u32));
    }

    #[test]
    fn a_rebirth_request_starts_again_with_an_nbirth_at_seq_zero_and_every_dbirth() {
        let mut n = node();
        n.birth(4, &info(0), Utc::now());
        n.data("m1", &[sample("flow", Some(Value::Float(1.0)), "good")], false, Utc::now());
        assert!(n.unborn_devices().is_empty());
        n.rebirth();
        assert!(!n.is_born());
        let p = decode(&n.birth(4, &info(0), Utc::now()));
        assert_eq!((p.seq, p.metrics[0].value.clone()), (Some(0), Some(metric::Value::LongValue(4))), "same bdSeq, seq 0");
        assert_eq!(n.unborn_devices(), ["m1"]);
    }

    #[test]
    fn a_lost_device_dies_after_its_last_readings_and_is_born_again_before_its_next_ddata() {
        // Given a born device
        let mut n = node();
        n.birth(0, &info(0), Utc::now());
        n.data("m1", &[sample("flow", Some(Value::Float(1.0)), "good")], false, Utc::now());
        // When its device_lost is read while batches up to 10 are not all queued
        n.device_lost("m1", 11);
        // Then no DDEATH yet; once they are, a DDEATH with the next seq
        assert!(n.deaths_due(10, Utc::now()).is_empty());
        let deaths = n.deaths_due(11, Utc::now());
        assert_eq!(deaths.len(), 1);
        assert_eq!(deaths[0].topic, "spBv1.0/mill/DDEATH/gw1/m1");
        let p = decode(&deaths[0]);
        assert_eq!(p.seq, Some(3));
        assert!(p.metrics.is_empty() && p.timestamp.is_some());
        // And no DBIRTH for it, even after a rebirth, until it is back
        n.rebirth();
        n.birth(0, &info(0), Utc::now());
        assert!(n.unborn_devices().is_empty());
        n.device_back("m1");
        assert_eq!(n.unborn_devices(), ["m1"]);
        // And a reading of a lost device brings its DBIRTH first
        n.device_lost("m1", 0);
        let (birth, _) = n.data("m1", &[sample("flow", Some(Value::Float(2.0)), "good")], false, Utc::now());
        assert!(birth.is_some());
    }

    #[test]
    fn model_outputs_are_metrics_of_the_analytics_device_with_learned_datatypes() {
        // Given a born node and a batch of the models' outputs (device `analytics`)
        let mut n = node();
        n.birth(0, &info(0), Utc::now());
        let outputs = [
            sample("mill_anomaly_score", Some(Value::Float(0.4)), "good"),
            sample("mill_anomaly_active", Some(Value::Bool(false)), "good"),
        ];
        // When it is published
        let (birth, data) = n.data("analytics", &outputs, false, Utc::now());
        // Then the device `analytics` is born with a Double and a Boolean metric, and after a
        // rebirth it is born again like any device
        let birth = decode(&birth.expect("a DBIRTH of analytics"));
        let types: Vec<_> = birth.metrics.iter().map(|m| (m.name.clone().unwrap(), m.datatype.unwrap())).collect();
        assert_eq!(
            types,
            [("mill_anomaly_score".to_string(), DataType::Double as u32), ("mill_anomaly_active".to_string(), DataType::Boolean as u32)]
        );
        assert_eq!(data.topic, "spBv1.0/mill/DDATA/gw1/analytics");
        n.rebirth();
        n.birth(0, &info(0), Utc::now());
        assert_eq!(n.unborn_devices(), ["m1", "analytics"]);
    }
}
