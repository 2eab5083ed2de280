//! Grouping a device's tags into read requests.
//!
//! Every request costs a round trip (tens of milliseconds on RS-485), so tags that sit
//! close together are read with one request, over gaps of at most `max_gap` unused
//! registers, and never more than the device allows in one request (125 registers or
//! 2000 bits by the protocol, less with `max_registers_per_request`).
//!
//! A device may refuse a merged request because the gap holds a register it does not
//! map. Such a request is [`split`] in two (by its tags) and the halves replace it in the
//! plan for good, so the refusal costs one extra round trip once, not on every poll.

use crate::modbus::device::ModbusDevice;
use crate::modbus::types::Table;

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    /// Protocol address (0-based) of the first register or bit.
    pub start: u16,
    pub count: u16,
    /// Indices into the device's `tags`, with each tag's offset from `start`, in address
    /// order.
    pub tags: Vec<(usize, u16)>,
}

/// The limits a plan respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_registers: u16,
    pub max_bits: u16,
    pub max_gap: u16,
}

impl Limits {
    pub fn of(device: &ModbusDevice) -> Self {
        Self {
            max_registers: device.max_registers_per_request.clamp(1, Table::Holding.max_per_request()),
            max_bits: device.max_bits_per_request.clamp(1, Table::Coil.max_per_request()),
            max_gap: device.max_gap,
        }
    }

    pub fn max_per_request(&self, table: Table) -> u16 {
        match table {
            Table::Coil | Table::Discrete => self.max_bits,
            Table::Holding | Table::Input => self.max_registers,
        }
    }
}

/// One item to read: a tag index, its table, protocol start address and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub index: usize,
    pub table: Table,
    pub start: u16,
    pub len: u16,
}

/// Plans the requests that read `items`, table by table, in address order. An item
/// wider than the limit gets a request of its own (validation keeps that from happening).
pub fn plan_items(items: &[Item], limits: Limits) -> Vec<ReadRequest> {
    let mut items = items.to_vec();
    items.sort_by_key(|it| (it.table, it.start, it.index));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for it in items {
        let end = u32::from(it.start) + u32::from(it.len);
        if let Some(req) = requests.last_mut() {
            let req_end = u32::from(req.start) + u32::from(req.count);
            let close_enough = u32::from(it.start) <= req_end + u32::from(limits.max_gap);
            let new_count = end.max(req_end) - u32::from(req.start);
            if req.table == it.table && close_enough && new_count <= u32::from(limits.max_per_request(it.table)) {
                req.count = new_count as u16; // bounded by max_per_request above
                req.tags.push((it.index, it.start - req.start));
                continue;
            }
        }
        requests.push(ReadRequest { table: it.table, start: it.start, count: it.len, tags: vec![(it.index, 0)] });
    }
    requests
}

/// The items of the tags of `device` in poll group `group` (`None`: the tags without one).
pub fn items_of_group(device: &ModbusDevice, group: Option<&str>) -> Vec<Item> {
    device
        .tags
        .iter()
        .enumerate()
        .filter(|(_, t)| t.poll_group.as_deref() == group)
        .map(|(index, t)| Item { index, table: t.table, start: t.start, len: t.register_count() })
        .collect()
}

/// Plans the requests that read every tag of `device`, whatever its poll group.
pub fn plan_requests(device: &ModbusDevice) -> Vec<ReadRequest> {
    let items: Vec<Item> =
        device.tags.iter().enumerate().map(|(index, t)| Item { index, table: t.table, start: t.start, len: t.register_count() }).collect();
    plan_items(&items, Limits::of(device))
}

/// Splits a request serving several tags into two, each reading only the span of its
/// own tags, at the widest gap between two tags (in the middle when there is none);
/// `None` for a request serving one tag. `width(i)` is the width of tag `i`.
pub fn split(req: &ReadRequest, width: impl Fn(usize) -> u16) -> Option<(ReadRequest, ReadRequest)> {
    if req.tags.len() < 2 {
        return None;
    }
    // Cut at the widest run of registers no tag needs: that is where a register the
    // device does not map usually sits, so one split tends to be the only one. Without
    // any such run (a contiguous block), cut in the middle.
    let mut mid = req.tags.len() / 2;
    let mut widest = 0u32;
    let mut end = 0u32;
    for (k, &(i, off)) in req.tags.iter().enumerate() {
        let gap = u32::from(off).saturating_sub(end);
        if k > 0 && gap > widest {
            widest = gap;
            mid = k;
        }
        end = end.max(u32::from(off) + u32::from(width(i)));
    }
    let part = |tags: &[(usize, u16)]| {
        let first = tags.iter().map(|&(_, off)| off).min().unwrap_or(0);
        let last = tags.iter().map(|&(i, off)| u32::from(off) + u32::from(width(i))).max().unwrap_or(1);
        ReadRequest {
            table: req.table,
            start: req.start + first,
            count: (last - u32::from(first)) as u16, // within the original request
            tags: tags.iter().map(|&(i, off)| (i, off - first)).collect(),
        }
    };
    Some((part(&req.tags[..mid]), part(&req.tags[mid..])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeviceConfig, Protocol, TagConfig};
    use crate::modbus::types::{ByteOrder, DataType};
    use proptest::prelude::*;

    /// The plan of a device config, built as the driver builds it.
    fn plan_requests(device: &DeviceConfig) -> Vec<ReadRequest> {
        super::plan_requests(&ModbusDevice::build(device).unwrap())
    }

    fn device(tags: &[(Table, u16, DataType)], max_gap: u16) -> DeviceConfig {
        DeviceConfig {
            name: "d".into(),
            protocol: Protocol::ModbusTcp,
            address: Some("127.0.0.1:502".into()),
            max_gap,
            tags: tags
                .iter()
                .enumerate()
                .map(|(i, &(table, address, dt))| TagConfig {
                    name: format!("t{i}"),
                    table: Some(table),
                    address: Some(address),
                    data_type: Some(dt),
                    byte_order: ByteOrder::ABCD,
                    ..TagConfig::default()
                })
                .collect(),
            ..DeviceConfig::default()
        }
    }

    #[test]
    fn neighbouring_tags_share_one_request() {
        let d = device(&[(Table::Holding, 10, DataType::U16), (Table::Holding, 11, DataType::F32), (Table::Holding, 13, DataType::U16)], 0);
        let plan = plan_requests(&d);
        assert_eq!(plan, vec![ReadRequest { table: Table::Holding, start: 10, count: 4, tags: vec![(0, 0), (1, 1), (2, 3)] }]);
    }

    #[test]
    fn a_gap_wider_than_max_gap_splits_the_request() {
        let d = device(&[(Table::Holding, 0, DataType::U16), (Table::Holding, 5, DataType::U16), (Table::Holding, 20, DataType::U16)], 4);
        let plan = plan_requests(&d);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].start, plan[0].count), (0, 6));
        assert_eq!((plan[1].start, plan[1].count), (20, 1));
    }

    #[test]
    fn tables_are_never_mixed() {
        let d = device(&[(Table::Holding, 0, DataType::U16), (Table::Input, 1, DataType::U16), (Table::Coil, 2, DataType::Bool)], 10);
        let tables: Vec<Table> = plan_requests(&d).iter().map(|r| r.table).collect();
        assert_eq!(tables, vec![Table::Coil, Table::Holding, Table::Input]);
    }

    #[test]
    fn no_request_exceeds_125_registers() {
        let tags: Vec<(Table, u16, DataType)> = (0..200).map(|i| (Table::Input, i * 2, DataType::U32)).collect();
        let plan = plan_requests(&device(&tags, 0));
        assert!(plan.iter().all(|r| r.count <= 125), "{plan:?}");
        let served: usize = plan.iter().map(|r| r.tags.len()).sum();
        assert_eq!(served, 200);
    }

    #[test]
    fn a_device_limit_below_125_is_respected() {
        let tags: Vec<(Table, u16, DataType)> = (0..100).map(|i| (Table::Holding, i, DataType::U16)).collect();
        let mut d = device(&tags, 0);
        d.max_registers_per_request = Some(32);
        let counts: Vec<u16> = plan_requests(&d).iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![32, 32, 32, 4]);
    }

    #[test]
    fn one_based_addresses_are_shifted_to_protocol_addresses() {
        let mut d = device(&[(Table::Holding, 1, DataType::U16)], 0);
        d.address_base = 1;
        assert_eq!(plan_requests(&d)[0].start, 0);
    }

    #[test]
    fn a_split_cuts_at_the_widest_gap_and_reads_only_the_span_of_each_part() {
        // Tags at 0 (u16), 1 (f32), 10 (u16), 20 (u32) merged over gaps.
        let d = device(
            &[
                (Table::Holding, 0, DataType::U16),
                (Table::Holding, 1, DataType::F32),
                (Table::Holding, 10, DataType::U16),
                (Table::Holding, 20, DataType::U32),
            ],
            20,
        );
        let plan = plan_requests(&d);
        assert_eq!(plan.len(), 1);
        let (a, b) = split(&plan[0], |i| d.tags[i].register_count()).unwrap();
        // Gaps: none after the f32, 7 before register 10, 9 before register 20.
        assert_eq!((a.start, a.count, a.tags.clone()), (0, 11, vec![(0, 0), (1, 1), (2, 10)]));
        assert_eq!((b.start, b.count, b.tags.clone()), (20, 2, vec![(3, 0)]));
        // A contiguous block is cut in the middle.
        let d = device(
            &[
                (Table::Holding, 0, DataType::U16),
                (Table::Holding, 1, DataType::U16),
                (Table::Holding, 2, DataType::U16),
                (Table::Holding, 3, DataType::U16),
            ],
            0,
        );
        let (a, b) = split(&plan_requests(&d)[0], |i| d.tags[i].register_count()).unwrap();
        assert_eq!((a.start, a.count, b.start, b.count), (0, 2, 2, 2));
        assert_eq!(split(&ReadRequest { table: Table::Holding, start: 0, count: 1, tags: vec![(0, 0)] }, |_| 1), None);
    }

    fn arb_items() -> impl Strategy<Value = (Vec<Item>, Limits)> {
        let item = (0..4u8, 0u16..400, 1u16..=8);
        (prop::collection::vec(item, 1..60), 1u16..=125, 1u16..=2000, 0u16..=20).prop_map(|(raw, max_registers, max_bits, max_gap)| {
            let items = raw
                .into_iter()
                .enumerate()
                .map(|(index, (t, start, len))| {
                    let table = [Table::Coil, Table::Discrete, Table::Holding, Table::Input][usize::from(t)];
                    let len = if matches!(table, Table::Coil | Table::Discrete) { 1 } else { len.min(max_registers) };
                    Item { index, table, start, len }
                })
                .collect();
            (items, Limits { max_registers, max_bits, max_gap })
        })
    }

    proptest! {
        #[test]
        fn a_plan_covers_every_tag_exactly_once_within_every_limit((items, limits) in arb_items()) {
            let plan = plan_items(&items, limits);
            let mut served: Vec<usize> = plan.iter().flat_map(|r| r.tags.iter().map(|&(i, _)| i)).collect();
            served.sort_unstable();
            prop_assert_eq!(served, (0..items.len()).collect::<Vec<_>>());
            for r in &plan {
                prop_assert!(r.count >= 1 && r.count <= limits.max_per_request(r.table), "{:?}", r);
                for &(i, off) in &r.tags {
                    let it = items[i];
                    // The request reads exactly the tag's registers where the tag says they are.
                    prop_assert_eq!(it.table, r.table);
                    prop_assert_eq!(r.start + off, it.start);
                    prop_assert!(u32::from(off) + u32::from(it.len) <= u32::from(r.count));
                }
            }
            // Splitting keeps every tag at its address and never widens a request.
            for r in &plan {
                if let Some((a, b)) = split(r, |i| items[i].len) {
                    for half in [&a, &b] {
                        prop_assert!(half.count <= r.count);
                        for &(i, off) in &half.tags {
                            prop_assert_eq!(half.start + off, items[i].start);
                            prop_assert!(u32::from(off) + u32::from(items[i].len) <= u32::from(half.count));
                        }
                    }
                    prop_assert_eq!(a.tags.len() + b.tags.len(), r.tags.len());
                    prop_assert!(!a.tags.is_empty() && !b.tags.is_empty());
                }
            }
        }
    }
}
