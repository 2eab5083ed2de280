//! `[web]`: the status page settings, and their typed runtime form ([`WebSettings`]).
//!
//! ```toml
//! [web]
//! listen = "0.0.0.0:8443"                      # any address; non-loopback needs users_file
//! users_file = "/etc/edge-agent/web-users"     # users, roles and API tokens (edge-agent user …)
//! session_idle = "30m"                         # a session unused this long is over
//! session_max = "12h"                          # a session is over this long after login
//!
//! [web.tls]                                    # optional: HTTPS
//! cert_file = "/etc/edge-agent/web.pem"
//! key_file = "/etc/edge-agent/web.key"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edge_drivers::validate::Issues;
use serde::{Deserialize, Serialize};

/// `[web]`: the local status page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on. A non-loopback address requires `users_file`: the agent refuses
    /// to start an unauthenticated page that the plant network can reach.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The users, their roles and the API tokens (`edge-agent user add|passwd|remove|token`).
    /// Absent: no authentication, which is only allowed on a loopback address; the page is
    /// then read-only.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// A session not used for this long is over (the user logs in again).
    #[serde(default = "default_session_idle", with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session is over this long after its login, used or not (one shift and some).
    #[serde(default = "default_session_max", with = "humantime_serde")]
    pub session_max: Duration,
    /// `[web.tls]`: serve HTTPS instead of HTTP.
    #[serde(default)]
    pub tls: Option<WebTlsConfig>,
}

/// `[web.tls]`: the page's certificate chain and private key, PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebTlsConfig {
    /// The server certificate, then any intermediates (PEM).
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_session_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_session_max() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            users_file: None,
            session_idle: default_session_idle(),
            session_max: default_session_max(),
            tls: None,
        }
    }
}

/// The page's settings as the agent runs them: every default applied, every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub access: Access,
    /// `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// Who may use the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No users file: anyone who can connect reads the page, nobody can change anything.
    /// Only on a loopback address.
    Open,
    /// Users and tokens from `file`; sessions by login.
    Users { file: PathBuf, session_idle: Duration, session_max: Duration },
}

/// `[web.tls]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl WebConfig {
    /// Appends every problem of this section under `path`.
    pub fn validate(&self, path: &str, issues: &mut Issues) {
        let _ = self.check(path, issues);
    }

    /// The runtime settings, or every problem (the same as [`validate`](Self::validate)).
    pub fn build(&self) -> Result<WebSettings, Issues> {
        let mut issues = Issues::default();
        match self.check("web", &mut issues) {
            Some(settings) if issues.is_empty() => Ok(settings),
            _ => Err(issues),
        }
    }

    fn check(&self, path: &str, issues: &mut Issues) -> Option<WebSettings> {
        let listen = match self.listen.parse::<SocketAddr>() {
            Err(_) => {
                issues.push(format!("{path}.listen"), format!("{:?} is not an IP address and port, e.g. \"127.0.0.1:8080\"", self.listen));
                None
            }
            Ok(addr) => Some(addr),
        };
        let access = match &self.users_file {
            Some(file) if file.as_os_str().is_empty() => {
                issues.push(format!("{path}.users_file"), "must not be empty (remove the key to run without users, on loopback only)");
                None
            }
            Some(file) => Some(Access::Users { file: file.clone(), session_idle: self.session_idle, session_max: self.session_max }),
            None => Some(Access::Open),
        };
        if let (Some(addr), Some(Access::Open)) = (listen, &access) {
            if self.enabled && !addr.ip().is_loopback() {
                issues.push(
                    format!("{path}.listen"),
                    format!(
                        "{addr} is not a loopback address: set {path}.users_file (create it with `edge-agent user add --file FILE NAME --role operator`) so that the page requires a login, or listen on 127.0.0.1 or ::1"
                    ),
                );
            }
        }
        if self.session_idle < Duration::from_secs(60) || self.session_idle > Duration::from_secs(24 * 3600) {
            issues.push(format!("{path}.session_idle"), "must be between 1m and 24h");
        }
        if self.session_max < self.session_idle || self.session_max > Duration::from_secs(7 * 24 * 3600) {
            issues.push(format!("{path}.session_max"), "must be at least session_idle and at most 7d");
        }
        let tls = match &self.tls {
            None => None,
            Some(t) => {
                for (key, file) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                    if file.as_os_str().is_empty() {
                        issues.push(format!("{path}.tls.{key}"), "must not be empty");
                    }
                }
                Some(TlsFiles { cert_file: t.cert_file.clone(), key_file: t.key_file.clone() })
            }
        };
        Some(WebSettings { enabled: self.enabled, listen: listen?, access: access?, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(listen: &str, users: Option<&str>) -> WebConfig {
        WebConfig { listen: listen.into(), users_file: users.map(PathBuf::from), ..WebConfig::default() }
    }

    fn messages(c: &WebConfig) -> Vec<String> {
        match c.build() {
            Ok(_) => Vec::new(),
            Err(issues) => issues.0.iter().map(|i| format!("{}: {}", i.path, i.message)).collect(),
        }
    }

    #[test]
    fn a_non_loopback_address_without_users_is_refused_naming_the_users_file_key() {
        // Given the page on all interfaces and no users file
        let c = web("0.0.0.0:8080", None);
        // When it is checked
        let m = messages(&c);
        // Then the one problem names the address and the key that fixes it
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("web.listen: 0.0.0.0:8080 is not a loopback address: set web.users_file"), "{m:?}");
    }

    #[test]
    fn a_non_loopback_address_with_users_builds_settings_that_require_login() {
        // Given the page on all interfaces with a users file and TLS
        let mut c = web("0.0.0.0:8443", Some("/etc/edge/users"));
        c.tls = Some(WebTlsConfig { cert_file: "/etc/edge/web.pem".into(), key_file: "/etc/edge/web.key".into() });
        // When it is built
        let s = c.build().expect("valid");
        // Then the settings carry the parsed address, the users file with the default session
        // times, and the TLS files
        assert_eq!(s.listen, "0.0.0.0:8443".parse::<SocketAddr>().expect("addr"));
        assert_eq!(
            s.access,
            Access::Users {
                file: "/etc/edge/users".into(),
                session_idle: Duration::from_secs(1800),
                session_max: Duration::from_secs(43200)
            }
        );
        assert_eq!(s.tls, Some(TlsFiles { cert_file: "/etc/edge/web.pem".into(), key_file: "/etc/edge/web.key".into() }));
    }

    #[test]
    fn loopback_without_users_is_open_and_a_disabled_page_may_name_any_address() {
        // Given the default section, and a disabled page on all interfaces
        let open = WebConfig::default().build().expect("valid");
        let mut off = web("0.0.0.0:8080", None);
        off.enabled = false;
        // Then the first is open on loopback, and the second is accepted (nothing listens)
        assert_eq!(open.access, Access::Open);
        assert!(open.listen.ip().is_loopback());
        assert!(off.build().is_ok());
    }

    #[test]
    fn session_times_out_of_range_and_empty_paths_are_each_reported() {
        // Given an idle time of 10 s, a max below it, an empty users file and empty TLS paths
        let mut c = web("127.0.0.1:8080", Some(""));
        c.session_idle = Duration::from_secs(10);
        c.session_max = Duration::from_secs(5);
        c.tls = Some(WebTlsConfig { cert_file: "".into(), key_file: "".into() });
        // Then each is its own problem, with its path
        let m = messages(&c);
        for path in ["web.users_file", "web.session_idle", "web.session_max", "web.tls.cert_file", "web.tls.key_file"] {
            assert!(m.iter().any(|p| p.starts_with(&format!("{path}: "))), "{path} missing in {m:?}");
        }
        assert_eq!(m.len(), 5, "{m:?}");
    }
}
