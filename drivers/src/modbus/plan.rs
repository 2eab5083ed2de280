//! Grouping a device's tags into read requests.
//!
//! Every request costs a round trip (tens of milliseconds on RS-485 gateways), so tags
//! that sit close together are read with one request, over gaps of at most `max_gap`
//! unused registers, and never more than the protocol allows in one request.

use crate::config::DeviceConfig;
use crate::modbus::types::Table;

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    /// Protocol address (0-based) of the first register or bit.
    pub start: u16,
    pub count: u16,
    /// Indices into the device's `tags`, with each tag's offset from `start`.
    pub tags: Vec<(usize, u16)>,
}

/// Plans the requests that read every tag of `device`, table by table, in address order.
pub fn plan_requests(device: &DeviceConfig) -> Vec<ReadRequest> {
    let base = u16::from(device.address_base);
    let mut items: Vec<(Table, u16, u16, usize)> = device
        .tags
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t.table?, t.address?.saturating_sub(base), t.register_count(), i)))
        .collect();
    items.sort_by_key(|&(table, addr, _, i)| (table, addr, i));

    let mut requests: Vec<ReadRequest> = Vec::new();
    for (table, addr, len, index) in items {
        let end = u32::from(addr) + u32::from(len);
        if let Some(req) = requests.last_mut() {
            let req_end = u32::from(req.start) + u32::from(req.count);
            let close_enough = u32::from(addr) <= req_end + u32::from(device.max_gap);
            let new_count = end.max(req_end) - u32::from(req.start);
            if req.table == table && close_enough && new_count <= u32::from(table.max_per_request()) {
                req.count = new_count as u16; // bounded by max_per_request above
                req.tags.push((index, addr - req.start));
                continue;
            }
        }
        requests.push(ReadRequest { table, start: addr, count: len, tags: vec![(index, 0)] });
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Protocol, TagConfig};
    use crate::modbus::types::{ByteOrder, DataType};

    fn device(tags: &[(Table, u16, DataType)], max_gap: u16) -> DeviceConfig {
        DeviceConfig {
            name: "d".into(),
            protocol: Protocol::ModbusTcp,
            address: Some("127.0.0.1:502".into()),
            unit_id: 1,
            address_base: 0,
            poll_interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
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
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    description: None,
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
    fn one_based_addresses_are_shifted_to_protocol_addresses() {
        let mut d = device(&[(Table::Holding, 1, DataType::U16)], 0);
        d.address_base = 1;
        assert_eq!(plan_requests(&d)[0].start, 0);
    }
}
