//! `[web]`: the status page settings.

use std::net::SocketAddr;

use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[web]`: the local status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on. Only loopback addresses are accepted until the page has
    /// authentication.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for WebConfig {
    fn default() -> Self {
        Self { enabled: true, listen: default_listen() }
    }
}

impl WebConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        match self.listen.parse::<SocketAddr>() {
            Err(_) => issues.push(format!("{path}.listen"), format!("{:?} is not an IP address and port, e.g. \"127.0.0.1:8080\"", self.listen)),
            Ok(addr) if !addr.ip().is_loopback() => issues.push(
                "web.listen",
                format!("{addr} is not a loopback address: the status page has no authentication yet, so it may only listen on 127.0.0.1 or ::1"),
            ),
            Ok(_) => {}
        }
    }
}
