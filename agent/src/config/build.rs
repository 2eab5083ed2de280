//! The build step: a validated [`Config`] (the file's shape, with an `Option` for every key a
//! file may leave out) becomes [`AgentConfig`], the values the agent runs with, every
//! default resolved once, here.
//!
//! The defaults themselves live next to their doc-commented fields (serde default
//! functions, `DEFAULT_*` constants, `Default` impls), and the config reference
//! (`docs/configuration.md`, [`super::reference`]) is generated from the same place. A
//! section without a default left to resolve is carried as it is.

use std::time::Duration;

use edge_drivers::modbus::{build_buses, BuildError, ModbusDevice};
use edge_drivers::opcua::{build_opcua, OpcuaDevice};

use super::types::{Config, GatewayConfig};
use crate::store::config::StoreSettings;

/// The config as the agent runs it (built once per start, and again after a reload).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub gateway: GatewayConfig,
    /// `{prefix}/{site}/{gateway_id}`, the root of every topic.
    pub topic_root: String,
    /// `mqtt.client_id`, else `edge-agent-{gateway.id}`.
    pub client_id: String,
    /// `[store]`, sizes in bytes, `compact_above` resolved.
    pub store: StoreSettings,
    /// The Modbus devices, grouped by the connection they share, in config order.
    pub modbus: Vec<Vec<ModbusDevice>>,
    /// The OPC-UA devices, one session each, in config order.
    pub opcua: Vec<OpcuaDevice>,
    /// Per `[[models]]` entry, in config order.
    pub models: Vec<ModelRun>,
}

/// How one model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRun {
    pub name: String,
    /// `asset`, else the model's name.
    pub asset: String,
    /// `period`, else `row_interval` (and never shorter than it).
    pub period: Duration,
}

impl Config {
    /// Builds the runtime values of a validated config. Fails only on what validation
    /// refuses (a config that was not validated).
    pub fn build(&self) -> Result<AgentConfig, BuildError> {
        Ok(AgentConfig {
            gateway: self.gateway.clone(),
            topic_root: self.topic_root(),
            client_id: self.client_id(),
            store: self.store.build(),
            modbus: build_buses(&self.devices)?,
            opcua: build_opcua(&self.devices)?,
            models: self
                .models
                .iter()
                .map(|m| ModelRun { name: m.name.clone(), asset: m.asset().to_string(), period: m.period() })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        super::super::load_str(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    const GATEWAY: &str = "[gateway]\nid = \"gw-01\"\nsite = \"mill\"\ndata_dir = \"/var/lib/edge-agent\"\n";

    #[test]
    fn a_minimal_config_builds_with_the_documented_defaults() {
        // Given a config with only the required keys
        let built = load(GATEWAY).build().unwrap();

        // Then the derived defaults are the documented ones
        assert_eq!(built.client_id, "edge-agent-gw-01");
        assert_eq!(built.topic_root, "plant/mill/gw-01");
        assert_eq!(built.store.compact_above, 2 * 512 * 1024 * 1024, "2 × max_bytes (512 MiB)");
        assert!(built.modbus.is_empty() && built.models.is_empty());
    }

    #[test]
    fn values_set_in_the_file_win_over_the_derived_defaults() {
        // Given a config that sets the client id and the compaction bound, and a model with its asset and period
        let text = format!(
            "{GATEWAY}[mqtt]\nclient_id = \"gw-01-a\"\n[store]\nmax_bytes = \"32 MiB\"\ncompact_above = \"40 MiB\"\n\
             [[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
             [[devices.tags]]\nname = \"speed\"\ntable = \"holding\"\naddress = 0\n\
             [[models]]\nname = \"m\"\nkind = \"anomaly\"\nartifact = \"embedded:juice-pump-anomaly\"\nasset = \"press\"\n\
             inputs = []\nrow_interval = \"10s\"\nperiod = \"1m\"\n"
        );
        // When it is built
        let built = load_unvalidated(&text).build().unwrap();

        // Then the file's values are kept
        assert_eq!(built.client_id, "gw-01-a");
        assert_eq!(built.store.compact_above, 40 << 20);
        assert_eq!(built.modbus.len(), 1);
        assert_eq!(built.modbus[0][0].backoff_after_failures, edge_drivers::config::DEFAULT_BACKOFF_AFTER_FAILURES);
        assert_eq!(built.models, vec![ModelRun { name: "m".into(), asset: "press".into(), period: Duration::from_secs(60) }]);
    }

    #[test]
    fn a_model_without_asset_or_period_names_itself_and_runs_every_row() {
        // Given a model that leaves asset and period out
        let text = format!("{GATEWAY}[[models]]\nname = \"m\"\nkind = \"rul\"\nartifact = \"a\"\ninputs = []\nrow_interval = \"30s\"\n");
        // When it is built
        let built = load_unvalidated(&text).build().unwrap();
        // Then its asset is its name and it runs once per row
        assert_eq!(built.models, vec![ModelRun { name: "m".into(), asset: "m".into(), period: Duration::from_secs(30) }]);
    }

    #[test]
    fn an_opcua_device_is_built_with_its_defaults_and_its_identity() {
        // Given an OPC-UA device that sets its endpoint, a password from the environment and a device
        // sampling interval, and two tags, one with its own sampling interval and queue
        let text = format!(
            "{GATEWAY}[[devices]]\nname = \"press\"\nprotocol = \"opcua\"\n\
             [devices.opcua]\nendpoint = \"opc.tcp://127.0.0.1:4840/\"\nidentity = \"username\"\nusername = \"operator\"\n\
             password_env = \"UA_PASSWORD\"\nsampling_interval = \"200ms\"\n\
             [[devices.tags]]\nname = \"speed\"\nnode_id = \"ns=2;s=Speed\"\n\
             [[devices.tags]]\nname = \"count\"\nbrowse_path = \"/2:Plant/2:Count\"\nsampling_interval = \"50ms\"\nqueue_size = 3\n"
        );
        // When it is built
        let built = load(&text).build().unwrap();

        // Then it is an OPC-UA device, not a Modbus one, with the password's source and the documented defaults
        assert!(built.modbus.is_empty());
        assert_eq!(built.opcua.len(), 1);
        let d = &built.opcua[0];
        assert_eq!(d.name, "press");
        assert_eq!(
            d.connection.identity,
            edge_drivers::opcua::Identity::UserName {
                user: "operator".into(),
                password: edge_drivers::opcua::PasswordSource::Env("UA_PASSWORD".into())
            }
        );
        assert_eq!(
            (d.connect_timeout, d.reconnect_min, d.reconnect_max),
            (Duration::from_secs(10), Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(d.connection.session_timeout, Duration::from_secs(60));
        // And each tag samples at its own interval, else the device's; its queue is its own, else 10
        let m: Vec<(Duration, u32)> = d.tags.iter().map(|t| (t.monitoring.sampling_interval, t.monitoring.queue_size)).collect();
        assert_eq!(m, vec![(Duration::from_millis(200), 10), (Duration::from_millis(50), 3)]);
        // And both are in one subscription at the publishing interval (500ms)
        assert_eq!(d.groups.len(), 1);
        assert_eq!((d.groups[0].poll, d.groups[0].interval, d.groups[0].tags.clone()), (false, Duration::from_millis(500), vec![0, 1]));
    }

    /// Parsed with serde's defaults, without the semantic checks (the models here name
    /// inputs that do not exist).
    fn load_unvalidated(text: &str) -> Config {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }
}
