//! The pure validation step: no I/O, no connection, every problem collected.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use edge_drivers::config::is_valid_name;
use edge_drivers::validate::Issues;

use super::types::Config;

impl Config {
    /// Checks the whole config and returns every problem, each with its path.
    pub fn validate(&self) -> Issues {
        let mut issues = Issues::default();
        self.validate_gateway(&mut issues);
        self.validate_mqtt(&mut issues);
        self.validate_store(&mut issues);
        self.validate_web(&mut issues);
        self.validate_devices(&mut issues);
        issues
    }

    fn validate_gateway(&self, issues: &mut Issues) {
        let g = &self.gateway;
        if !is_valid_name(&g.id) {
            issues.push("gateway.id", format!("{:?} is not a valid id: use 1–64 letters, digits, '-' or '_'", g.id));
        }
        if !is_valid_name(&g.site) {
            issues.push("gateway.site", format!("{:?} is not a valid site: use 1–64 letters, digits, '-' or '_'", g.site));
        }
        if g.data_dir.as_os_str().is_empty() {
            issues.push("gateway.data_dir", "must not be empty");
        }
        if g.shutdown_timeout < Duration::from_secs(1) || g.shutdown_timeout > Duration::from_secs(300) {
            issues.push("gateway.shutdown_timeout", "must be between 1s and 5m");
        }
    }

    fn validate_mqtt(&self, issues: &mut Issues) {
        let m = &self.mqtt;
        if m.host.trim().is_empty() {
            issues.push("mqtt.host", "must not be empty");
        }
        if m.port == 0 {
            issues.push("mqtt.port", "must be 1–65535");
        }
        if m.prefix.is_empty() || m.prefix.contains(['+', '#']) || m.prefix.starts_with('/') || m.prefix.ends_with('/') {
            issues.push("mqtt.prefix", format!("{:?} is not a usable topic prefix: no wildcards, no leading or trailing '/'", m.prefix));
        }
        if let Some(id) = &m.client_id {
            if id.is_empty() || id.len() > 128 {
                issues.push("mqtt.client_id", "must be 1–128 characters");
            }
        }
        if m.keep_alive < Duration::from_secs(5) || m.keep_alive > Duration::from_secs(65535) {
            issues.push("mqtt.keep_alive", "must be between 5s and 65535s");
        }
        if !(1..=1000).contains(&m.max_inflight) {
            issues.push("mqtt.max_inflight", "must be between 1 and 1000");
        }
    }

    fn validate_store(&self, issues: &mut Issues) {
        let s = &self.store;
        if s.flush_interval < Duration::from_millis(10) || s.flush_interval > Duration::from_secs(60) {
            issues.push("store.flush_interval", "must be between 10ms and 60s");
        }
        if !(1..=100_000).contains(&s.max_batch_samples) {
            issues.push("store.max_batch_samples", "must be between 1 and 100000");
        }
    }

    fn validate_web(&self, issues: &mut Issues) {
        match self.web.listen.parse::<SocketAddr>() {
            Err(_) => issues.push("web.listen", format!("{:?} is not an IP address and port, e.g. \"127.0.0.1:8080\"", self.web.listen)),
            Ok(addr) if !addr.ip().is_loopback() => issues.push(
                "web.listen",
                format!("{addr} is not a loopback address: the status page has no authentication yet, so it may only listen on 127.0.0.1 or ::1"),
            ),
            Ok(_) => {}
        }
    }

    fn validate_devices(&self, issues: &mut Issues) {
        let mut names = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let path = format!("devices[{i}]");
            if !names.insert(device.name.as_str()) {
                issues.push(format!("{path}.name"), format!("duplicate device name {:?}", device.name));
            }
            device.validate(&path, issues);
        }
    }
}
