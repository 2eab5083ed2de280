//! Loading and validating config text: defaults, unknown keys, semantic errors, and the
//! path and line of every problem reported.

use std::time::Duration;

use super::{load_str, Config, ConfigError, Problem};

const ORIGIN: &str = "plant.toml";

/// The smallest config that is accepted: only the required keys of `[gateway]`.
const MINIMAL: &str = r#"[gateway]
id = "gw-01"
site = "test-site"
data_dir = "/var/lib/edge-agent"
"#;

/// A valid config with one device of two tags, the base the error cases below change.
const ONE_DEVICE: &str = r#"[gateway]
id = "gw-01"
site = "test-site"
data_dir = "/var/lib/edge-agent"

[mqtt]
host = "127.0.0.1"
port = 1883

[[devices]]
name = "plc-1"
protocol = "modbus-tcp"
address = "127.0.0.1:502"

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
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(text, ORIGIN)
}

/// The problems of a config that must be refused.
fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(_) => panic!("the config was accepted, but it should have been refused:\n{text}"),
        Err(e) => {
            assert_eq!(e.origin, ORIGIN);
            assert!(!e.problems.is_empty(), "an error without problems");
            e.problems
        }
    }
}

/// The 1-based line of the only line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line of the test config");
    lines[0]
}

/// The 1-based line of the `n`th (from 0) line of `text` containing `needle`.
fn line_of_nth(text: &str, needle: &str, n: usize) -> usize {
    let (i, _) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .unwrap_or_else(|| panic!("{needle:?} occurs fewer than {} times in the test config", n + 1));
    i + 1
}

/// The only problem reported for `path`.
fn problem_at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
    let found: Vec<&Problem> = problems.iter().filter(|p| p.path == path).collect();
    assert_eq!(found.len(), 1, "expected one problem at {path:?}, got: {problems:#?}");
    found[0]
}

/// `text` with `new` in place of the one occurrence of `old`.
fn replace_once(text: &str, old: &str, new: &str) -> String {
    assert_eq!(text.matches(old).count(), 1, "{old:?} must occur once in the test config");
    text.replacen(old, new, 1)
}

#[test]
fn a_minimal_config_loads_with_the_documented_defaults() {
    // Given a config with only the required gateway keys
    // When it is loaded
    let config = load(MINIMAL).expect("the minimal config is valid");

    // Then the absent sections take their defaults
    assert_eq!(config.gateway.id, "gw-01");
    assert_eq!(config.gateway.site, "test-site");
    assert_eq!(config.gateway.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.mqtt.host, "127.0.0.1");
    assert_eq!(config.mqtt.port, 1883);
    assert_eq!(config.mqtt.prefix, "plant");
    assert_eq!(config.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(config.store.flush_interval, Duration::from_secs(1));
    assert_eq!(config.store.max_batch_samples, 1000);
    assert!(config.web.enabled);
    assert_eq!(config.web.listen, "127.0.0.1:8080");
    assert!(config.devices.is_empty());
    assert_eq!(config.client_id(), "edge-agent-gw-01");
    assert_eq!(config.topic_root(), "plant/test-site/gw-01");
}

#[test]
fn a_device_and_its_tags_load_with_their_defaults() {
    // Given a valid config with one device whose optional keys are absent
    // When it is loaded
    let config = load(ONE_DEVICE).expect("the one-device config is valid");

    // Then the device and tag defaults are applied
    let device = &config.devices[0];
    assert_eq!(device.unit_id, 1);
    assert_eq!(device.address_base, 0);
    assert_eq!(device.poll_interval, Duration::from_secs(1));
    assert_eq!(device.tags.len(), 2);
    assert_eq!(device.tags[0].scale, 1.0);
    assert_eq!(device.tags[0].offset, 0.0);
}

#[test]
fn the_demo_config_loads_without_problems() {
    // Given the sugar mill config the demo runs with
    let text = include_str!("../../../firmware-configs/demo/sugar-mill.toml");

    // When it is loaded
    let config = load_str(text, "sugar-mill.toml").unwrap_or_else(|e| panic!("the demo config was refused:\n{e}"));

    // Then every device and tag is there
    assert_eq!(config.gateway.id, "demo-gw-01");
    assert_eq!(config.devices.len(), 1);
    assert_eq!(config.devices[0].tags.len(), 26);
}

#[test]
fn an_unknown_top_level_key_is_reported_with_its_line() {
    // Given a config with a misspelt top-level key
    let text = replace_once(ONE_DEVICE, "[gateway]\n", "verbose = true\n\n[gateway]\n");

    // When it is loaded
    let problems = problems(&text);

    // Then the key is reported as unknown, at its line
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "verbose");
    assert_eq!(p.message, "unknown key");
    assert_eq!(p.line, Some(1));
}

#[test]
fn an_unknown_key_in_the_mqtt_section_is_reported_with_its_path_and_line() {
    // Given `[mqtt]` with a key that does not exist
    let text = replace_once(ONE_DEVICE, "port = 1883\n", "port = 1883\nqos = 2\n");

    // When it is loaded
    let problems = problems(&text);

    // Then it is reported as `mqtt.qos`, at its line
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "mqtt.qos");
    assert_eq!(p.message, "unknown key");
    assert_eq!(p.line, Some(line_of(&text, "qos = 2")));
}

#[test]
fn an_unknown_key_in_a_tag_is_reported_with_the_tag_index_and_line() {
    // Given the second tag of the first device with a key that does not exist
    let text = replace_once(ONE_DEVICE, "type = \"f32\"\n", "type = \"f32\"\ncolour = \"red\"\n");

    // When it is loaded
    let problems = problems(&text);

    // Then the path names the device, the tag and the key, with the key's own line
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "devices[0].tags[1].colour");
    assert_eq!(p.message, "unknown key");
    assert_eq!(p.line, Some(line_of(&text, "colour =")));
}

#[test]
fn unknown_keys_in_several_sections_are_all_reported_in_line_order() {
    // Given unknown keys at the top level, in `[mqtt]` and in a tag
    let text = replace_once(ONE_DEVICE, "port = 1883\n", "port = 1883\nqos = 2\n");
    let text = replace_once(&text, "type = \"f32\"\n", "type = \"f32\"\ncolour = \"red\"\n");
    let text = replace_once(&text, "[gateway]\n", "verbose = true\n\n[gateway]\n");

    // When it is loaded
    let problems = problems(&text);

    // Then all three are reported, each at its own line, first line first
    let got: Vec<(&str, Option<usize>)> = problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        got,
        vec![
            ("verbose", Some(1)),
            ("mqtt.qos", Some(line_of(&text, "qos = 2"))),
            ("devices[0].tags[1].colour", Some(line_of(&text, "colour ="))),
        ]
    );
    assert!(problems.iter().all(|p| p.message == "unknown key"), "{problems:#?}");
}

/// A config with six semantic errors, each in a different place.
const SEVERAL_ERRORS: &str = r#"[gateway]
id = "gw 01"
site = "test-site"
data_dir = "/var/lib/edge-agent"

[web]
listen = "0.0.0.0:8080"

[[devices]]
name = "plc-1"
protocol = "modbus-tcp"
address = "127.0.0.1:502"

[[devices.tags]]
name = "speed"
table = "holding"
address = 0

[[devices.tags]]
name = "speed"
table = "holding"
address = 1

[[devices.tags]]
name = "running"
table = "coil"
address = 0
type = "f32"

[[devices.tags]]
name = "flow"
table = "input"
address = 5
scale = 0

[[devices]]
name = "plc-1"
protocol = "modbus-tcp"
address = "127.0.0.1:503"

[[devices.tags]]
name = "level"
table = "input"
address = 0
"#;

#[test]
fn several_semantic_errors_are_all_reported_at_once_with_path_and_line() {
    // Given a config with errors in the gateway, web and device sections
    // When it is loaded
    let problems = problems(SEVERAL_ERRORS);

    // Then every error is reported, none hiding another, each with its path and line
    let expect = [
        ("gateway.id", line_of_nth(SEVERAL_ERRORS, "id = \"gw 01\"", 0), "is not a valid id"),
        ("web.listen", line_of_nth(SEVERAL_ERRORS, "listen = \"0.0.0.0:8080\"", 0), "is not a loopback address"),
        ("devices[0].tags[1].name", line_of_nth(SEVERAL_ERRORS, "name = \"speed\"", 1), "duplicate tag name \"speed\""),
        ("devices[0].tags[2].type", line_of_nth(SEVERAL_ERRORS, "type = \"f32\"", 0), "the type must be bool, not f32"),
        ("devices[0].tags[3].scale", line_of_nth(SEVERAL_ERRORS, "scale = 0", 0), "must be a finite number other than 0"),
        ("devices[1].name", line_of_nth(SEVERAL_ERRORS, "name = \"plc-1\"", 1), "duplicate device name \"plc-1\""),
    ];
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    for (path, line, reason) in expect {
        let p = problem_at(&problems, path);
        assert!(p.message.contains(reason), "{path}: {:?} should say {reason:?}", p.message);
        assert_eq!(p.line, Some(line), "line of {path}");
    }

    // And they come in the order of the file
    let lines: Vec<usize> = problems.iter().filter_map(|p| p.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "not in line order: {problems:#?}");
}

#[test]
fn a_wrong_byte_order_is_reported_with_its_path_line_and_the_valid_orders() {
    // Given a tag whose byte order is a typo
    let text = replace_once(ONE_DEVICE, "type = \"u16\"\n", "type = \"u16\"\nbyte_order = \"ABDC\"\n");

    // When it is loaded
    let problems = problems(&text);

    // Then the path, the line and the valid orders are in the report
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "devices[0].tags[0].byte_order");
    assert_eq!(p.line, Some(line_of(&text, "byte_order = \"ABDC\"")));
    assert!(p.message.contains("ABDC"), "{:?}", p.message);
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        assert!(p.message.contains(order), "{:?} should list {order}", p.message);
    }
}

#[test]
fn a_toml_syntax_error_is_reported_with_its_line() {
    // Given a value whose string is never closed, on line 3
    let text = "[gateway]\nid = \"gw-01\"\nsite = \"test-site\ndata_dir = \"/var/lib/edge-agent\"\n";

    // When it is loaded
    let problems = problems(text);

    // Then there is one problem, for the whole file, at that line
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].path, "");
    assert_eq!(problems[0].line, Some(3));
    assert!(!problems[0].message.is_empty());
}

#[test]
fn a_missing_required_key_is_reported_by_name() {
    // Given a gateway section without its `site`
    let text = replace_once(MINIMAL, "site = \"test-site\"\n", "");

    // When it is loaded
    let problems = problems(&text);

    // Then the report names the missing key, near the gateway section
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert!(p.message.contains("missing field") && p.message.contains("`site`"), "{:?}", p.message);
    assert_eq!(p.line, Some(1), "{p:?}");
}

#[test]
fn a_missing_required_key_is_reported_at_its_section_path() {
    // Given a gateway section without its `site`
    let text = replace_once(MINIMAL, "site = \"test-site\"\n", "");

    // When it is loaded
    let problems = problems(&text);

    // Then the report points at `gateway`, the table the key is missing from
    assert_eq!(problems[0].path, "gateway", "{problems:#?}");
}

#[test]
fn address_zero_is_refused_when_the_device_counts_from_one() {
    // Given a device with `address_base = 1` and a tag at address 0
    let text = replace_once(ONE_DEVICE, "address = \"127.0.0.1:502\"\n", "address = \"127.0.0.1:502\"\naddress_base = 1\n");

    // When it is loaded
    let problems = problems(&text);

    // Then that tag's address is refused, at its line
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "devices[0].tags[0].address");
    assert!(p.message.contains("counts addresses from 1"), "{:?}", p.message);
    assert_eq!(p.line, Some(line_of(&text, "address = 0")));
}

#[test]
fn the_report_names_file_line_path_and_reason() {
    // Given a refused config
    let text = replace_once(ONE_DEVICE, "port = 1883\n", "port = 1883\nqos = 2\n");

    // When the error is displayed
    let report = load(&text).unwrap_err().to_string();

    // Then it reads `file:line: path: reason`
    let line = line_of(&text, "qos = 2");
    assert_eq!(report, format!("plant.toml: 1 problem in the config:\n  plant.toml:{line}: mqtt.qos: unknown key\n"));
}

#[test]
fn a_key_missing_from_a_tag_is_reported_at_that_tag() {
    // Given the second tag of the device without its `address`
    let text = replace_once(ONE_DEVICE, "address = 10\n", "");

    // When it is loaded
    let problems = problems(&text);

    // Then the report names the key and points at that tag
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = &problems[0];
    assert!(p.message.contains("missing field `address`"), "{:?}", p.message);
    assert_eq!(p.path, "devices[0].tags[1]");
    assert_eq!(p.line, Some(line_of_nth(&text, "[[devices.tags]]", 1)));
}

#[test]
fn a_value_of_the_wrong_type_is_reported_at_its_key() {
    // Given an MQTT port that does not fit in a port number
    let text = replace_once(ONE_DEVICE, "port = 1883\n", "port = 70000\n");

    // When it is loaded
    let problems = problems(&text);

    // Then the key and its line are named
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let p = problem_at(&problems, "mqtt.port");
    assert_eq!(p.line, Some(line_of(&text, "port = 70000")));
}

#[test]
fn several_values_of_the_wrong_type_are_all_reported_with_their_lines() {
    // Given a config with three bad values in different sections
    let text = r#"
[gateway]
id = "gw"
site = "s"
data_dir = "/tmp/x"

[mqtt]
port = "eighteen-eighty-three"

[store]
max_batch_samples = -5

[[devices]]
name = "plc"
protocol = "modbus-tcp"
address = "127.0.0.1:502"
[[devices.tags]]
name = "a"
table = "holding"
address = 1
byte_order = "ABDC"
[[devices.tags]]
name = "b"
table = "holding"
address = 2
"#;
    // When it is loaded
    let err = load_str(text, "plant.toml").unwrap_err();
    // Then each bad value is reported at its own key and line
    let found: Vec<(Option<usize>, &str)> = err.problems.iter().map(|p| (p.line, p.path.as_str())).collect();
    assert_eq!(
        found,
        vec![(Some(8), "mqtt.port"), (Some(11), "store.max_batch_samples"), (Some(21), "devices[0].tags[0].byte_order")],
        "{err}"
    );
}

#[test]
fn a_bad_required_value_is_reported_once_not_again_as_missing() {
    let text = "[gateway]\nid = 7\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n";
    let err = load_str(text, "plant.toml").unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].path, "gateway.id");
    assert_eq!(err.problems[0].line, Some(2));
}
