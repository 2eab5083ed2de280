//! `[sparkplug]`: who this edge node is in the Sparkplug namespace.

use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[sparkplug]`: the Sparkplug B edge node, used with `mqtt.payload = "sparkplug"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SparkplugConfig {
    /// The Sparkplug group (`spBv1.0/{group_id}/…`); defaults to `gateway.site`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The edge node id (`…/NBIRTH/{edge_node_id}`); defaults to `gateway.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_node_id: Option<String>,
    /// The primary host application whose `spBv1.0/STATE/{id}` the node follows.
    /// Absent: births and data are published whenever the broker is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_host_id: Option<String>,
    /// Whether `Node Control/Reboot` from a host is obeyed: it then means the JSON `reload`
    /// (the config file read again, the agent restarted in place); refused and audited otherwise.
    #[serde(default)]
    pub allow_reboot: bool,
}

/// The ids the node runs with, defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIds {
    pub group_id: String,
    pub edge_node_id: String,
    pub primary_host_id: Option<String>,
}

/// A Sparkplug id (group, edge node, device, host): UTF-8 without `/`, `+`, `#` (they
/// are topic levels), not empty.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.contains(['/', '+', '#', '\0'])
}

impl SparkplugConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        for (key, value) in [("group_id", &self.group_id), ("edge_node_id", &self.edge_node_id), ("primary_host_id", &self.primary_host_id)]
        {
            if let Some(id) = value {
                if !is_valid_id(id) {
                    issues.push(format!("{path}.{key}"), format!("{id:?} is not a Sparkplug id: 1–256 characters, no '/', '+' or '#'"));
                }
            }
        }
    }

    /// The ids with their defaults (`gateway.site`, `gateway.id`).
    pub fn ids(&self, site: &str, gateway_id: &str) -> NodeIds {
        NodeIds {
            group_id: self.group_id.clone().unwrap_or_else(|| site.to_string()),
            edge_node_id: self.edge_node_id.clone().unwrap_or_else(|| gateway_id.to_string()),
            primary_host_id: self.primary_host_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_default_to_the_site_and_the_gateway_id() {
        let ids = SparkplugConfig::default().ids("mill", "gw1");
        assert_eq!((ids.group_id.as_str(), ids.edge_node_id.as_str(), ids.primary_host_id), ("mill", "gw1", None));
        let set = SparkplugConfig { group_id: Some("G".into()), edge_node_id: Some("E".into()), ..Default::default() };
        assert_eq!(set.ids("mill", "gw1").group_id, "G");
        assert_eq!(set.ids("mill", "gw1").edge_node_id, "E");
    }

    #[test]
    fn ids_with_topic_characters_are_refused_with_their_path() {
        let c = SparkplugConfig {
            group_id: Some("a/b".into()),
            edge_node_id: Some(String::new()),
            primary_host_id: Some("host#".into()),
            allow_reboot: false,
        };
        let mut issues = Issues::default();
        c.validate("sparkplug", &mut issues);
        let text = format!("{issues:?}");
        for key in ["sparkplug.group_id", "sparkplug.edge_node_id", "sparkplug.primary_host_id"] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
    }
}
