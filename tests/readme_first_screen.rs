//! The README's first screen (everything above its `---`) is what a newcomer copies and
//! pastes: its commands are read from README.md and run here, as far as a test can: the
//! setup script in check mode, the demo (with free ports) and `watch` against it. The test
//! command is the one CI runs.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

const README: &str = include_str!("../README.md");
const CI: &str = include_str!("../.ci/run");

/// The repository's root (this file is in `tests/`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("agent/ has a parent")
}

/// The lines of every ```sh block of the first screen, in order.
fn first_screen_commands() -> Vec<String> {
    let screen = &README[..README.find("\n---\n").expect("the README's first screen ends with ---")];
    let mut commands = Vec::new();
    let mut rest = screen;
    while let Some(start) = rest.find("```sh\n") {
        let block = &rest[start + "```sh\n".len()..];
        let end = block.find("```").expect("the sh block ends");
        commands.extend(block[..end].lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
        rest = &block[end + 3..];
    }
    commands
}

/// The arguments after `cargo run -p edge-agent --`.
fn agent_args(command: &str) -> Vec<String> {
    let cargo = command.rsplit("&& ").next().unwrap_or(command);
    let (cargo, args) = cargo.split_once(" -- ").unwrap_or_else(|| panic!("{command:?} runs no `cargo run … --`"));
    assert_eq!(cargo, "cargo run -p edge-agent", "{command:?} must run this package's binary, the one this test runs");
    args.split_whitespace().map(str::to_string).collect()
}

/// A child process killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_first_screen_leads_with_the_demo_and_the_test_command_and_no_sudo() {
    // Given the commands of the README's first screen
    let commands = first_screen_commands();

    // Then they are the demo, `watch` and the tests, each one copy-pasteable line
    assert_eq!(
        commands,
        [
            "./scripts/setup-dev && cargo run -p edge-agent -- demo",
            "cargo run -p edge-agent -- watch --port 18830",
            "./scripts/setup-dev && cargo test --workspace --locked",
        ],
        "the README's first screen changed: update this test, and check that each command still works verbatim as root and as a user"
    );
    // And none needs sudo (a fresh Debian container has none; scripts/setup-dev uses it only when it is there)
    assert!(commands.iter().all(|c| !c.contains("sudo")), "{commands:?}");
    // And CI runs the README's test command verbatim
    let test = &commands[2];
    assert!(CI.lines().any(|l| l.trim() == test), ".ci/run does not run the README's test command {test:?}");
}

#[test]
fn the_setup_script_of_both_commands_finds_everything_the_tests_need() {
    // Given the setup script both commands start with
    let script = root().join("scripts/setup-dev");
    let first = first_screen_commands().into_iter().next().unwrap_or_default();
    assert!(first.starts_with("./scripts/setup-dev && "), "{first:?}");

    // When it is run in check mode (installs nothing), on this machine that runs the tests
    let out = Command::new(&script).arg("--check").current_dir(root()).output().unwrap_or_else(|e| panic!("run {script:?}: {e}"));

    // Then it reports nothing missing and Rust as fine
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/setup-dev --check failed:\n{said}");
    assert!(said.contains("all there") && said.contains("Rust"), "{said}");
}

#[test]
fn the_demo_command_starts_the_demo_and_the_watch_command_shows_its_messages() {
    // Given the demo command's arguments, with free ports and a fresh outbox (the README's
    // defaults may be taken on a test machine)
    let commands = first_screen_commands();
    let demo_args = agent_args(&commands[0]);
    assert_eq!(demo_args, ["demo"]);
    let dir = tempfile::tempdir().unwrap();
    let (web, mqtt, modbus) = (free_port(), free_port(), free_port());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    demo.args(&demo_args)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--web-listen", &format!("127.0.0.1:{web}"), "--mqtt-port", &mqtt.to_string(), "--modbus-port", &modbus.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut demo = Killed(demo.spawn().expect("start the demo"));

    // When it has started
    let stdout = demo.0.stdout.take().expect("the demo's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.starts_with("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => banner.push(line),
            Err(_) => panic!("the demo did not print its banner in 30 s; so far:\n{}", banner.join("\n")),
        }
    }
    // Then its banner names the status page and the watch command the README gives
    let text = banner.join("\n");
    assert!(text.contains(&format!("Status page:                http://127.0.0.1:{web}/")), "{text}");
    assert!(text.contains(&format!("edge-agent watch --port {mqtt}")), "{text}");

    // When the README's watch command runs against it (its port, one message)
    let mut watch_args = agent_args(&commands[1]);
    assert_eq!(watch_args, ["watch", "--port", "18830"], "the README's watch port is the demo's default broker port");
    watch_args[2] = mqtt.to_string();
    let watch = Command::new(env!("CARGO_BIN_EXE_edge-agent")).args(&watch_args).args(["--count", "1"]).stdout(Stdio::piped()).spawn();
    let mut watch = Killed(watch.expect("start watch"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = watch.0.try_wait().expect("wait for watch") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "watch printed nothing in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Then it prints a message of the demo's gateway
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watch.0.stdout.take().expect("watch's stdout"), &mut out).unwrap();
    assert!(status.success(), "watch failed: {out}");
    assert!(out.starts_with("plant/demo-sugar-mill/demo-gw-01/"), "{out}");
}
