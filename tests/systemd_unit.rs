//! The systemd unit and sysusers file we ship, checked with systemd's own tools:
//! `systemd-analyze security --offline` scores the sandbox, `systemd-sysusers --root`
//! creates the user in a scratch root. Neither touches the machine's systemd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn unit_path() -> PathBuf {
    repo().join("systemd/edge-agent.service")
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn unit_value(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(unit_path()).expect("read the unit");
    text.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).last().map(str::to_string)
}

fn tool(name: &str) -> Command {
    let found = ["/usr/bin", "/bin", "/usr/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists());
    let path = found.unwrap_or_else(|| panic!("{name} is missing: install Debian's systemd package (.ci/run does)"));
    Command::new(path)
}

#[test]
fn the_unit_scores_an_exposure_of_at_most_2_0() {
    // Given the unit file as shipped
    // When systemd scores its sandbox
    let out = tool("systemd-analyze").arg("security").arg("--offline=yes").arg(unit_path()).output().expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    // Then the overall exposure is at most 2.0
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no score in: {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(score <= 2.0, "{line}");
}

#[test]
fn the_unit_waits_for_the_agents_own_shutdown_before_killing_it() {
    // Given the shipped config's shutdown_timeout (the uplink gets 2 s more to say offline)
    let config = edge_agent::config::load_file(&repo().join("firmware-configs/demo/sugar-mill.toml")).expect("the shipped config is valid");
    let agent_needs = config.gateway.shutdown_timeout + Duration::from_secs(2);
    // Then systemd's stop timeout is longer, so a normal stop never ends in SIGKILL
    let stop = unit_value("TimeoutStopSec").expect("TimeoutStopSec is set");
    let secs: u64 = stop.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("TimeoutStopSec={stop} is not in seconds"));
    assert!(Duration::from_secs(secs) > agent_needs, "TimeoutStopSec={stop}, the agent may take {agent_needs:?}");
    // and the agent is supervised as a notify service with a watchdog
    assert_eq!(unit_value("Type").as_deref(), Some("notify"));
    assert!(unit_value("WatchdogSec").is_some(), "no WatchdogSec");
    assert_eq!(unit_value("Restart").as_deref(), Some("on-failure"));
}

#[test]
fn the_sysusers_file_creates_the_user_the_unit_runs_as_in_the_serial_and_gpio_groups() {
    // Given an empty scratch root
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    // When systemd-sysusers applies our file there
    let out = tool("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join("systemd/edge-agent.sysusers"))
        .output()
        .expect("run systemd-sysusers");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Then the unit's user exists, with a system uid and no login shell
    let user = unit_value("User").expect("User= is set");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry = passwd.lines().find(|l| l.starts_with(&format!("{user}:"))).unwrap_or_else(|| panic!("no {user} in {passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "{entry}");
    assert!(fields[6].ends_with("nologin"), "{entry}");
    // and it is a member of dialout and gpio
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    for g in ["dialout", "gpio"] {
        let line = group.lines().find(|l| l.starts_with(&format!("{g}:"))).unwrap_or_else(|| panic!("no group {g} in {group}"));
        assert!(line.rsplit(':').next().unwrap().split(',').any(|m| m == user), "{line}");
    }
}
