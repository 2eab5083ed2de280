//! End to end: the real `edge-agent` binary given bad config files. Each refusal must name
//! the file, line, key path and reason on stderr, exit with code 2, and start nothing.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Exit code of a refused config.
const EXIT_BAD_CONFIG: i32 = 2;

/// Longest any child may run before the test kills it and fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished child left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-agent"));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // The report must not depend on the caller's log settings.
    cmd.env_remove("EDGE_AGENT_LOG");
    cmd
}

/// Reads a child's pipe on its own thread, so a full pipe never blocks the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    let mut pipe = pipe.expect("the pipe was requested");
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Kills the child (it is ours) and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the agent with `args` to completion, failing the test if it takes longer than
/// [`CHILD_TIMEOUT`].
fn run_agent(args: &[&str]) -> Finished {
    let start = Instant::now();
    let mut child = agent().args(args).spawn().expect("the edge-agent binary starts");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on the child") {
            break status;
        }
        if start.elapsed() > CHILD_TIMEOUT {
            kill(&mut child);
            panic!("edge-agent {args:?} still running after {CHILD_TIMEOUT:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Finished { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader"), took: start.elapsed() }
}

fn check_config(file: &Path) -> Finished {
    run_agent(&["check-config", file.to_str().expect("a UTF-8 temp path")])
}

/// Writes `text` as `plant.toml` in `dir` and returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("plant.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// The 1-based line of the only line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line of the test config");
    lines[0]
}

/// Asserts that the child was refused a bad config: exit code 2, nothing on stdout, and
/// each of `problems` (line, path, reason) in the report on stderr as `file:line: path: reason`.
fn assert_refused(out: &Finished, file: &Path, problems: &[(usize, &str, &str)]) {
    assert_eq!(out.status.code(), Some(EXIT_BAD_CONFIG), "exit status {:?}; stderr:\n{}", out.status, out.stderr);
    assert_eq!(out.stdout, "", "nothing belongs on stdout");
    let n = problems.len();
    let header = format!("{}: {n} problem{} in the config:", file.display(), if n == 1 { "" } else { "s" });
    assert!(out.stderr.contains(&header), "missing {header:?} in stderr:\n{}", out.stderr);
    for (line, path, reason) in problems {
        let expected = format!("  {}:{line}: {path}: {reason}", file.display());
        assert!(out.stderr.lines().any(|l| l.starts_with(&expected)), "missing {expected:?} in stderr:\n{}", out.stderr);
    }
}

/// A free loopback port: bound by the OS, then released.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn is_listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A config that would run: gateway, a loopback broker, a loopback status page on
/// `web_port`, the store in `data_dir`, and one loopback PLC with two tags.
fn config_text(data_dir: &Path, web_port: u16) -> String {
    format!(
        r#"[gateway]
id = "gw-01"
site = "test-site"
data_dir = "{data_dir}"
shutdown_timeout = "2s"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[web]
listen = "127.0.0.1:{web_port}"

[[devices]]
name = "plc-1"
protocol = "modbus-tcp"
address = "127.0.0.1:{plc_port}"

[[devices.tags]]
name = "speed"
table = "holding"
address = 0
type = "u16"

[[devices.tags]]
name = "temperature"
table = "input"
address = 10
type = "f32"
"#,
        data_dir = data_dir.display(),
        mqtt_port = free_port(),
        plc_port = free_port(),
    )
}

/// `text` with `new` in place of the one occurrence of `old`.
fn replace_once(text: &str, old: &str, new: &str) -> String {
    assert_eq!(text.matches(old).count(), 1, "{old:?} must occur once in the test config");
    text.replacen(old, new, 1)
}

fn with_unknown_tag_key(text: &str) -> String {
    replace_once(text, "type = \"f32\"\n", "type = \"f32\"\ncolour = \"red\"\n")
}

#[test]
fn check_config_reports_an_unknown_key_with_its_line_and_path() {
    // Given a config whose second tag has a key that does not exist
    let dir = tempfile::tempdir().unwrap();
    let text = with_unknown_tag_key(&config_text(&dir.path().join("data"), 8080));
    let file = write_config(dir.path(), &text);

    // When it is checked
    let out = check_config(&file);

    // Then it is refused, naming the line, the path and the reason
    let line = line_of(&text, "colour =");
    assert_refused(&out, &file, &[(line, "devices[0].tags[1].colour", "unknown key")]);
}

#[test]
fn check_config_reports_a_bad_byte_order_and_the_valid_ones() {
    // Given a tag with a byte order that does not exist
    let dir = tempfile::tempdir().unwrap();
    let text = replace_once(&config_text(&dir.path().join("data"), 8080), "type = \"u16\"\n", "type = \"u16\"\nbyte_order = \"ABDC\"\n");
    let file = write_config(dir.path(), &text);

    // When it is checked
    let out = check_config(&file);

    // Then the report names the key, its line, and lists the valid orders
    let line = line_of(&text, "byte_order");
    assert_refused(
        &out,
        &file,
        &[(line, "devices[0].tags[0].byte_order", "unknown variant `ABDC`, expected one of `ABCD`, `CDAB`, `BADC`, `DCBA`")],
    );
}

#[test]
fn check_config_reports_every_problem_at_once() {
    // Given a config with errors in the gateway, web, and device sections
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("data"), 8080);
    let text = replace_once(&text, "id = \"gw-01\"", "id = \"gw 01\"");
    let text = replace_once(&text, "listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
    let text = replace_once(&text, "name = \"temperature\"", "name = \"speed\"");
    let text = replace_once(&text, "table = \"input\"", "table = \"coil\"");
    let text = replace_once(&text, "type = \"u16\"\n", "type = \"u16\"\nscale = 0\n");
    let file = write_config(dir.path(), &text);

    // When it is checked
    let out = check_config(&file);

    // Then every one of them is in the report, each at its line
    let tag1 = line_of(&text, "address = 10");
    assert_refused(
        &out,
        &file,
        &[
            (line_of(&text, "gw 01"), "gateway.id", "\"gw 01\" is not a valid id"),
            (line_of(&text, "0.0.0.0:8080"), "web.listen", "0.0.0.0:8080 is not a loopback address"),
            (line_of(&text, "scale = 0"), "devices[0].tags[0].scale", "must be a finite number other than 0"),
            (tag1 - 2, "devices[0].tags[1].name", "duplicate tag name \"speed\" in this device"),
            (line_of(&text, "type = \"f32\""), "devices[0].tags[1].type", "coil tables hold single bits: the type must be bool, not f32"),
        ],
    );
}

#[test]
fn check_config_on_a_missing_file_says_it_cannot_read_it() {
    // Given a path where there is no file
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-such-config.toml");

    // When it is checked
    let out = check_config(&file);

    // Then the agent says it cannot read that file, and fails
    assert!(!out.status.success(), "a missing file was accepted: {:?}", out.status);
    assert!(out.status.code().is_some(), "the agent did not exit by itself: {:?}", out.status);
    let expected = format!("{}: cannot read the file:", file.display());
    assert!(out.stderr.contains(&expected), "missing {expected:?} in stderr:\n{}", out.stderr);
}

#[test]
fn run_refuses_a_bad_config_quickly_and_starts_nothing() {
    // Given a config with an unknown key whose data_dir does not exist yet and whose
    // status page port is free
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let text = with_unknown_tag_key(&config_text(&data_dir, port));
    let file = write_config(dir.path(), &text);

    // When the agent is run with it
    let out = run_agent(&["run", "--config", file.to_str().unwrap()]);

    // Then it exits at once with the same report as check-config
    let line = line_of(&text, "colour =");
    assert_refused(&out, &file, &[(line, "devices[0].tags[1].colour", "unknown key")]);
    assert!(out.took < Duration::from_secs(10), "refusing took {:?}", out.took);

    // And nothing was started: no store directory, no status page
    assert!(!data_dir.exists(), "{} was created", data_dir.display());
    assert!(!is_listening(port), "something listens on the status page port {port}");
}

#[test]
fn run_with_the_same_config_fixed_does_start() {
    // Given the config of the test above, without its error (so that test's "nothing
    // started" checks are shown to be able to fail)
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_port();
    let file = write_config(dir.path(), &config_text(&data_dir, port));

    // When the agent is run with it
    let mut child = agent()
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the edge-agent binary starts");

    // Then it creates its store and opens its status page
    let start = Instant::now();
    let started = loop {
        if data_dir.exists() && is_listening(port) {
            break Ok(());
        }
        if let Some(status) = child.try_wait().expect("waiting on the child") {
            break Err(format!("the agent exited with {status:?}"));
        }
        if start.elapsed() > CHILD_TIMEOUT {
            break Err(format!("not started after {CHILD_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    kill(&mut child);
    started.unwrap();
}

#[test]
fn check_config_accepts_the_demo_config() {
    // Given the sugar mill config shipped with the demo
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-configs/demo/sugar-mill.toml");

    // When it is checked
    let out = check_config(&file);

    // Then it is accepted, with its device and tag count
    assert!(out.status.success(), "exit status {:?}; stderr:\n{}", out.status, out.stderr);
    assert_eq!(out.stdout, format!("{}: ok (1 devices, 26 tags)\n", file.display()));
    assert_eq!(out.stderr, "");
}
