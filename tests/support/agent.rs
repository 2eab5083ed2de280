//! The real `edge-agent` binary, run with a config written for the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

/// The sections every test agent shares, without devices: `[gateway]` (id `gw-test`, site
/// `test-site`), `[mqtt]` at `mqtt_port` with no start delay, `[store]` with the TOML lines
/// `store`, and `[web]` at `web_port`. Append the devices (and anything else) to it.
pub fn base_config(data_dir: &Path, mqtt_port: u16, web_port: u16, store: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-test"
site = "test-site"
data_dir = "{data_dir}"
shutdown_timeout = "5s"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keep_alive = "5s"
max_inflight = 16
start_delay_max = "0s"

[store]
{store}

[web]
listen = "127.0.0.1:{web_port}"
"#,
        data_dir = data_dir.display()
    )
}

/// A config for one Modbus device at `modbus_port`, publishing to `mqtt_port`.
/// `tags` is the TOML of the `[[devices.tags]]` entries.
pub fn config(data_dir: &Path, mqtt_port: u16, modbus_port: u16, web_port: u16, tags: &str) -> String {
    config_with(data_dir, mqtt_port, modbus_port, web_port, "", tags)
}

/// Like [`config`], with extra `[store]` keys (`store_extra`, TOML lines).
pub fn config_with(data_dir: &Path, mqtt_port: u16, modbus_port: u16, web_port: u16, store_extra: &str, tags: &str) -> String {
    let base = base_config(data_dir, mqtt_port, web_port, &format!("flush_interval = \"200ms\"\n{store_extra}"));
    format!(
        r#"{base}
[[devices]]
name = "plc1"
protocol = "modbus-tcp"
address = "127.0.0.1:{modbus_port}"
poll_interval = "100ms"
timeout = "500ms"
{tags}
"#
    )
}

/// `edge-agent run --config config_path` with info logs and stdout discarded, and none of
/// systemd's variables inherited from the test's environment; set stderr (and any extra
/// environment) before spawning.
pub fn command(config_path: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.arg("run").arg("--config").arg(config_path).env("EDGE_AGENT_LOG", "info").stdout(Stdio::null());
    cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID").env_remove("JOURNAL_STREAM");
    cmd
}

/// A child process killed (and reaped) when the test lets go of it, pass or fail.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `child` to exit by itself; `None` (and the child killed) if it
/// did not.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl AgentProcess {
    pub fn start(config_path: &Path, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open agent log");
        let child = command(config_path).stderr(out).spawn().expect("start edge-agent");
        AgentProcess { child: Some(child), log }
    }

    /// SIGKILL: no flush, no goodbye, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::broker::signal(&child, "KILL");
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns whether it exited by itself within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        super::broker::signal(&child, "TERM");
        wait_exit(&mut child, limit).is_some_and(|status| status.success())
    }

    /// Sends signal `name` (`HUP`: `systemctl reload`) to the running agent.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            super::broker::signal(child, name);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last agent log lines ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
