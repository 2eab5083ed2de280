//! The pure validation step: no I/O, no connection, every problem collected.

use std::collections::HashSet;
use std::time::Duration;

use edge_drivers::config::is_valid_name;
use edge_drivers::validate::Issues;

use super::types::Config;

impl Config {
    /// Checks the whole config and returns every problem, each with its path.
    pub fn validate(&self) -> Issues {
        let mut issues = Issues::default();
        self.validate_gateway(&mut issues);
        self.mqtt.validate("mqtt", &mut issues);
        self.store.validate("store", &mut issues);
        self.web.validate("web", &mut issues);
        self.validate_devices(&mut issues);
        self.commands.validate("commands", &self.devices, &mut issues);
        crate::analytics::config::validate_models(&self.models, &self.devices, &mut issues);
        self.calendar.validate("calendar", &mut issues);
        self.history.validate("history", &mut issues);
        self.gpio.validate("gpio", &mut issues);
        self.sparkplug.validate("sparkplug", &mut issues);
        if !self.gpio.inputs.is_empty() {
            if let Some(i) = self.devices.iter().position(|d| d.name == crate::gpio::DEVICE) {
                issues.push(
                    format!("devices[{i}].name"),
                    "\"gpio\" is the device of the [[gpio.inputs]] tags: give this device another name",
                );
            }
        }
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

    fn validate_devices(&self, issues: &mut Issues) {
        let mut names = HashSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let path = format!("devices[{i}]");
            if !names.insert(device.name.as_str()) {
                issues.push(format!("{path}.name"), format!("duplicate device name {:?}", device.name));
            }
            device.validate(&path, issues);
        }
        edge_drivers::config::validate_devices(&self.devices, issues);
    }
}
