//! The config reference (`docs/configuration.md`), generated: `edge-agent config-reference`
//! prints it, and a test fails when the committed file differs from it.
//!
//! Each key's default is not written here but taken from where the code decides it:
//! - a key with a serde default shows the value serde gives it when the key is absent
//!   (the section is parsed from a file that leaves it out, and the value written back);
//! - a key whose default is resolved when the config is built (an `Option` in the file's
//!   shape) shows the named constant the build step uses (`edge_drivers::config::DEFAULT_*`);
//! - a default that depends on other keys (`client_id`, `compact_above`, a tag's `type`)
//!   is described in words.
//!
//! So a default changed in its one place changes the runtime and this reference together;
//! the tests below also check that every key listed exists, and that every key the file's
//! shape has (with a default) is listed.

use std::fmt::Write as _;
use std::time::Duration;

use toml::Value;

/// How a key's default is shown.
#[derive(Debug, Clone)]
pub enum DefaultIs {
    /// The key must be set.
    Required,
    /// The value serde gives the key when it is absent (looked up in the parsed default
    /// section).
    Serde,
    /// A value decided by a named constant of the build step, already rendered.
    Value(String),
    /// A rule in words (no value, or one that depends on other keys).
    Text(&'static str),
}

/// One key of a section.
#[derive(Debug, Clone)]
pub struct Key {
    pub key: &'static str,
    pub ty: &'static str,
    pub default: DefaultIs,
    pub meaning: &'static str,
}

/// One table of the file.
#[derive(Debug, Clone)]
pub struct Section {
    /// The heading, e.g. ``### `[mqtt]` ``.
    pub heading: &'static str,
    /// Prose before the table (may be empty).
    pub intro: &'static str,
    /// The dotted path of the section in a parsed default config (see [`defaults`]),
    /// where the `Serde` defaults are looked up; `devices[0]` style indices allowed.
    pub path: &'static str,
    pub keys: Vec<Key>,
    /// Prose after the table (may be empty).
    pub outro: &'static str,
}

const fn key(key: &'static str, ty: &'static str, default: DefaultIs, meaning: &'static str) -> Key {
    Key { key, ty, default, meaning }
}

use DefaultIs::{Required, Serde, Text};

/// A config that leaves every key with a default out: each section present but empty
/// (so serde's field defaults apply, not a section's `Default` impl), one device of each
/// kind and one of each repeated table with only its required keys.
pub const DEFAULTS_TOML: &str = r#"[gateway]
id = "gw"
site = "site"
data_dir = "/var/lib/edge-agent"

[mqtt]
[mqtt.tls]
[mqtt.failover]
host = "broker-b"

[store]
[web]
[commands]
[[commands.writable]]
device = "d"
tag = "t"

[calendar]
[history]
[sparkplug]
[gpio]
[[gpio.outputs]]
pin = 17
when = "running"
[[gpio.inputs]]
name = "i"
pin = 5
kind = "counter"

[[devices]]
name = "tcp"
protocol = "modbus-tcp"
[[devices.tags]]
name = "t"

[[devices]]
name = "rtu"
protocol = "modbus-rtu"
[devices.serial]
port = "/dev/ttyUSB0"

[[devices]]
name = "ua"
protocol = "opcua"
[devices.opcua]
endpoint = "opc.tcp://127.0.0.1:4840/"

[[models]]
name = "m"
kind = "anomaly"
artifact = "a"
inputs = []
"#;

/// [`DEFAULTS_TOML`] parsed (serde defaults applied) and written back as TOML values.
pub fn defaults() -> Result<Value, String> {
    let config: super::Config = toml::from_str(DEFAULTS_TOML).map_err(|e| format!("the defaults config does not parse: {e}"))?;
    Value::try_from(&config).map_err(|e| format!("the defaults config cannot be written back: {e}"))
}

/// The value at a dotted path (`devices[1].serial`) of `root`.
fn at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').filter(|p| !p.is_empty()).try_fold(root, |v, part| match part.split_once('[') {
        Some((k, i)) => v.get(k)?.get(i.trim_end_matches(']').parse::<usize>().ok()?),
        None => v.get(part),
    })
}

fn duration(d: Duration) -> String {
    format!("`{:?}`", humantime_serde::re::humantime::format_duration(d).to_string())
}

fn value(v: impl std::fmt::Display) -> DefaultIs {
    DefaultIs::Value(format!("`{v}`"))
}

/// Every section of the reference, in the order of the document.
pub fn sections() -> Vec<Section> {
    use edge_drivers::config as dc;
    vec![
        Section {
            heading: "## `[gateway]` (required)",
            intro: "",
            path: "gateway",
            keys: vec![
                key("id", "string", Required, "Unique id of this gateway within its site; part of every MQTT topic."),
                key("site", "string", Required, "The plant (site) this gateway belongs to; part of every MQTT topic."),
                key("area", "string", Text("none"), "Area of the plant (ISA-95), for people. Not shown or published anywhere yet."),
                key(
                    "data_dir",
                    "path",
                    Required,
                    "Directory for the store (outbox, in `{data_dir}/outbox`) and state. Created if missing; must be writable by the agent. A relative path is relative to the working directory.",
                ),
                key(
                    "shutdown_timeout",
                    "duration",
                    Serde,
                    "How long a SIGTERM may take: stop polling, flush, publish what can be, say offline. 1s–5m.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[mqtt]`",
            intro: "",
            path: "mqtt",
            keys: vec![
                key("host", "string", Serde, "Broker host name or IP address."),
                key("port", "integer", Serde, "Broker port, 1–65535."),
                key(
                    "client_id",
                    "string",
                    Text("`\"edge-agent-{gateway.id}\"`"),
                    "MQTT client id, 1–128 characters. Must be stable across restarts, since the broker keeps this gateway's session under it.",
                ),
                key(
                    "prefix",
                    "string",
                    Serde,
                    "First level of every topic: `{prefix}/{site}/{gateway_id}/…`. No `+` or `#`, no leading or trailing `/`.",
                ),
                key(
                    "keep_alive",
                    "duration",
                    Serde,
                    "MQTT keep-alive, 5s–65535s. The broker publishes the Will about 1.5 × this after the agent goes silent.",
                ),
                key("max_inflight", "integer", Serde, "Most QoS 1 publishes awaiting their PUBACK at once, 1–1000."),
                key("username", "string", Text("none"), "User name sent to the broker, 1–65535 characters."),
                key(
                    "password_file",
                    "path",
                    Text("none"),
                    "File holding the password; one trailing newline (`\\n` or `\\r\\n`) is ignored; must not be empty. Needs `username`. There is no plain-text password key.",
                ),
                key(
                    "password_env",
                    "string",
                    Text("none"),
                    "Name of an environment variable holding the password (e.g. from systemd `LoadCredential=` or an `EnvironmentFile=`). Needs `username`; not together with `password_file`.",
                ),
                key("tls", "table", Text("none"), "`[mqtt.tls]` below: connect over TLS. Absent: plain TCP."),
                key(
                    "start_delay_max",
                    "duration",
                    Serde,
                    "Before the first connect, wait a uniformly random time in [0, this], so that a plant-wide power return does not reconnect every gateway in the same second. `\"0s\"` disables it. At most 10m. Batches stored meanwhile are live, not historical, unless that first connect fails.",
                ),
                key("failover", "table", Text("none"), "`[mqtt.failover]` below: a second broker."),
                key(
                    "failover_after",
                    "integer",
                    Serde,
                    "Failed connects in a row to the current broker before switching to the other one (`[mqtt.failover]`), 1–100.",
                ),
                key(
                    "replay_max_per_sec",
                    "integer",
                    Serde,
                    "Most historical batches published per second when the outbox is replayed after a reconnect (a token bucket holding one second's worth); live batches are not counted and go first. 1–100000.",
                ),
                key(
                    "protocol",
                    "string",
                    Serde,
                    "MQTT version spoken to the broker(s), failover included: `\"3.1.1\"` or `\"5\"` (a string). Same topics, payloads, QoS, Will, retained status and guarantees with either.",
                ),
                key(
                    "session_expiry",
                    "duration",
                    Serde,
                    "MQTT 5 only: how long the broker keeps this gateway's session (its subscription to commands and the commands queued for it) after the connection is gone. 1m–136y. Ignored with 3.1.1, whose session does not expire.",
                ),
                key(
                    "payload",
                    "string",
                    Serde,
                    "What is published: `\"json\"` (the contract of docs/mqtt.md) or `\"sparkplug\"` (a Sparkplug B 3.0 edge node under `spBv1.0/{group_id}/…`, set up in `[sparkplug]`). Either way every batch goes through the outbox and is deleted only on its PUBACK.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "### `[mqtt.tls]`: MQTT over TLS (rustls)",
            intro: "Present: the agent connects over TLS and verifies the broker's certificate against `ca_file` only (not the system's CAs). The files are read and checked when the uplink starts; a problem is logged with the key, the file and what is wrong, shown as the uplink's last error on the status page, and retried every 30 s (a certificate provisioned later is picked up); meanwhile everything stays in the outbox. The same holds for `password_file` and `password_env`.",
            path: "mqtt.tls",
            keys: vec![
                key("ca_file", "path", Required, "PEM file with the CA certificate(s) the broker's certificate must chain to."),
                key(
                    "client_cert_file",
                    "path",
                    Text("none"),
                    "PEM file with this gateway's certificate (chain, X.509 v3), for brokers that require client certificates. Set together with `client_key_file`.",
                ),
                key(
                    "client_key_file",
                    "path",
                    Text("none"),
                    "PEM file with the private key of `client_cert_file` (PKCS#8, PKCS#1 or SEC1); checked to belong to the certificate.",
                ),
                key(
                    "server_name",
                    "string",
                    Text("`host`"),
                    "Name (DNS name or IP address) the broker's certificate must be valid for, when it differs from `host`, e.g. when connecting by IP address to a broker whose certificate names a DNS name.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "### `[mqtt.failover]`: a second broker",
            intro: "",
            path: "mqtt.failover",
            keys: vec![
                key("host", "string", Required, "Host name or IP address of the failover broker."),
                key("port", "integer", Serde, "Its port. Not the same broker as `mqtt.host`/`mqtt.port`."),
            ],
            outro: "Same client id, TLS settings and login as the first broker. After `failover_after` failed connects in a row the uplink switches brokers, and stays on the new one until it fails as often (no automatic return while it works).",
        },
        Section {
            heading: "## `[sparkplug]`: the Sparkplug B edge node",
            intro: "Used with `mqtt.payload = \"sparkplug\"`. The node connects with a clean session and registers its NDEATH (with `bdSeq`) as the MQTT Will; `bdSeq` is kept in `{data_dir}/sparkplug-bdseq` and advanced, and saved, before every CONNECT. Each session publishes an NBIRTH, a DBIRTH per device (every metric with its alias, datatype, `engUnit`, `engLow`/`engHigh` from `clamp_min`/`clamp_max`), then each stored batch as one DDATA by alias, `is_historical` when it was stored before the session's birth; DDEATH for a lost device; NCMD rebirth and DCMD writes (through `[commands]`). Replies and events stay on the JSON topics (`{prefix}/{site}/{gateway}/…`). See [Sparkplug B](sparkplug.md).",
            path: "sparkplug",
            keys: vec![
                key("group_id", "string", Text("`gateway.site`"), "The Sparkplug group id: the second topic level. No `/`, `+` or `#`."),
                key("edge_node_id", "string", Text("`gateway.id`"), "The edge node id. No `/`, `+` or `#`."),
                key(
                    "primary_host_id",
                    "string",
                    Text("none"),
                    "The primary host application whose `spBv1.0/STATE/{id}` the node follows: NBIRTH and data only while it says online; while it is offline everything is stored and later replayed as `is_historical`. None: births whenever the broker is reachable.",
                ),
                key(
                    "allow_reboot",
                    "bool",
                    Serde,
                    "Whether a host's `Node Control/Reboot` (NCMD) is obeyed. It then means the JSON `reload`: the config file is read again and the agent restarts in place (never the machine). Refused and audited otherwise.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[store]`",
            intro: "",
            path: "store",
            keys: vec![
                key(
                    "flush_interval",
                    "duration",
                    Serde,
                    "How often buffered samples are written and flushed to disk as batches. This is the durability window: on a power cut, samples younger than this may be lost; anything older was flushed and will be delivered. 10ms–60s.",
                ),
                key("max_batch_samples", "integer", Serde, "A device's batch is cut early when it reaches this many samples. 1–100000."),
                key(
                    "flush_bytes",
                    "size",
                    Serde,
                    "Gathered samples are written and flushed early once they take about this much; interval and size both apply, whichever comes first. 1 KiB–64 MiB.",
                ),
                key(
                    "max_bytes",
                    "size",
                    Serde,
                    "Most bytes of records the outbox holds. When full, the oldest telemetry is dropped first and events last; every drop is counted and raised as a `buffer_overflow` event. sled's files take up to `compact_above` on disk, plus a copy of the store while it is compacted: give it about 4 × this (`BENCHMARKS.md`). At least 64 KiB.",
                ),
                key(
                    "max_age",
                    "duration",
                    Text("unset"),
                    "Telemetry older than this is dropped even when there is room (e.g. `\"7d\"`). Unset: kept until `max_bytes` forces it out. At least 1m.",
                ),
                key(
                    "compact_above",
                    "size",
                    Text("2 × `max_bytes`"),
                    "The outbox directory is compacted (its records rewritten into a fresh sled database, pausing the store briefly) when it grows past this size on disk and by a quarter since the last compaction. A compaction needs room for a copy of the records beside the store. Must be more than `max_bytes`.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[web]`",
            intro: "",
            path: "web",
            keys: vec![
                key("enabled", "bool", Serde, "Serve the status page and the HTTP endpoints."),
                key(
                    "listen",
                    "string",
                    Serde,
                    "Address to listen on, `IP:port`. A non-loopback address (`0.0.0.0:8080`) requires `users_file`: the agent refuses to start a page the plant network can reach without a login.",
                ),
                key(
                    "users_file",
                    "path",
                    Text("none"),
                    "The users (name, role `viewer` or `operator`, argon2id hash) and API tokens, managed with `edge-agent user add|passwd|remove|token|list` (see [Access](access.md)). Absent: no login, allowed on loopback only; the page is then read-only.",
                ),
                key("session_idle", "duration", Serde, "A session not used for this long is over."),
                key("session_max", "duration", Serde, "A session is over this long after its login, used or not."),
                key(
                    "tls",
                    "table",
                    Text("none (plain HTTP)"),
                    "`[web.tls]`: `cert_file` (the certificate chain, PEM) and `key_file` (its private key, PEM): serve HTTPS; session cookies are then `Secure`.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[[devices]]`: one per PLC, meter or drive",
            intro: "",
            path: "devices[0]",
            keys: vec![
                key(
                    "name",
                    "string",
                    Required,
                    "Unique name; used in MQTT topics (`…/telemetry/{name}`) and on the status page. 1–64 letters, digits, `-`, `_`.",
                ),
                key(
                    "protocol",
                    "string",
                    Required,
                    "`\"modbus-tcp\"`, `\"modbus-rtu\"` (serial line, settings in `[devices.serial]`) or `\"modbus-rtu-over-tcp\"` (RTU frames through a serial-to-Ethernet converter); or `\"opcua\"` (settings in `[devices.opcua]`). The Modbus keys below (`address` to `write_multiple_only`, except the poll keys) apply to Modbus devices.",
                ),
                key(
                    "address",
                    "string",
                    Text("required for `modbus-tcp` and `modbus-rtu-over-tcp`"),
                    "`host:port` of the device or converter as an IP address and port (`\"192.168.1.10:502\"`); host names are not resolved. Not allowed for `modbus-rtu` and `opcua`.",
                ),
                key("serial", "table", Text("required for `modbus-rtu`"), "The serial line: `[devices.serial]` below. Not allowed for the other protocols."),
                key("opcua", "table", Text("required for `opcua`"), "The OPC-UA server: `[devices.opcua]` below."),
                key(
                    "unit_id",
                    "integer",
                    Serde,
                    "Modbus unit (slave) id. 0–255 for `modbus-tcp` (most TCP devices ignore it; gateways to RS-485 need it), 1–247 on a serial bus or a converter. Devices on one bus need distinct unit ids.",
                ),
                key(
                    "address_base",
                    "integer",
                    Serde,
                    "`0`: tag addresses are protocol addresses. `1`: the \"register 1 = address 0\" convention of many manuals (address 0 is then an error).",
                ),
                key("poll_interval", "duration", Serde, "Time between two polls of the tags that name no `poll_group`. At least 10ms."),
                key(
                    "poll_groups",
                    "table",
                    Serde,
                    "Named poll groups and their intervals, e.g. `poll_groups = { fast = \"100ms\", slow = \"10m\" }`; a tag joins one with `poll_group`. Names like device names, intervals at least 10ms.",
                ),
                key("timeout", "duration", Serde, "Limit on connecting and on each request; past it the connection is rebuilt. Greater than 0."),
                key("max_gap", "integer", Serde, "Largest run of unused registers (or bits) read over to merge two tags into one request. 0–100."),
                key(
                    "max_registers_per_request",
                    "integer",
                    value(dc::DEFAULT_MAX_REGISTERS_PER_REQUEST),
                    "Most registers one read may ask for, for devices that accept fewer. 1–125.",
                ),
                key("max_bits_per_request", "integer", value(dc::DEFAULT_MAX_BITS_PER_REQUEST), "Most coils or discrete inputs one read may ask for. 1–2000."),
                key(
                    "backoff_after_failures",
                    "integer",
                    value(dc::DEFAULT_BACKOFF_AFTER_FAILURES),
                    "Failed polls in a row after which the device is backed off (only probed now and then, so that it does not slow the rest of its bus). At least 1.",
                ),
                key(
                    "backoff_max",
                    "duration",
                    DefaultIs::Value(duration(dc::DEFAULT_BACKOFF_MAX)),
                    "Longest wait between two probes of a backed-off device; the wait grows from the poll interval, doubling with jitter. At least 1s.",
                ),
                key(
                    "write_multiple_only",
                    "bool",
                    Serde,
                    "Write with function codes 15/16 even for one coil or register, for devices that do not implement 5/6.",
                ),
                key("tags", "array of tables", Required, "The tags read from this device (`[[devices.tags]]`), at least one."),
            ],
            outro: "",
        },
        Section {
            heading: "### `[devices.serial]`: the serial line of a `modbus-rtu` device",
            intro: "Devices with the same `port` share the bus: they are polled in turn on one connection and must have the same line settings.",
            path: "devices[1].serial",
            keys: vec![
                key("port", "string", Required, "The serial device, e.g. `\"/dev/ttyUSB0\"`, `\"/dev/ttyAMA0\"`."),
                key("baud_rate", "integer", Serde, "Bits per second, 300–921600."),
                key("parity", "string", Serde, "`\"none\"`, `\"even\"` (the Modbus default) or `\"odd\"`."),
                key("data_bits", "integer", Serde, "7 or 8 (Modbus RTU uses 8)."),
                key("stop_bits", "integer", Serde, "1 or 2."),
                key(
                    "inter_frame_delay",
                    "duration",
                    Text("3.5 characters"),
                    "Silence kept between two frames on the bus. Default: 3.5 character times at `baud_rate` (2ms at 19200), 1.75ms above 19200 baud, as the Modbus serial line specification says. At most 1s.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "### `[[devices.tags]]`: one per value read",
            intro: "The keys of a Modbus tag; an OPC-UA tag has its own addressing keys instead of `table` to `byte_swap` (see `[devices.opcua]`).",
            path: "devices[0].tags[0]",
            keys: vec![
                key("name", "string", Required, "Unique within the device; the `tag` field of every sample."),
                key(
                    "table",
                    "string",
                    Required,
                    "Register table: `holding` (read with function code 3), `input` (4), `coil` (1) or `discrete` (2).",
                ),
                key(
                    "address",
                    "integer",
                    Required,
                    "Register (or coil) address, counted from the device's `address_base`. A value of several registers occupies `address` onwards and must end at or before 65535.",
                ),
                key(
                    "type",
                    "string",
                    Text("`bool` for coils and discrete inputs, `u16` for registers"),
                    "`bool`, `u16`, `i16`, `u32`, `i32`, `u64`, `i64`, `f32`, `f64` or `string`. Coils and discrete inputs hold only `bool`; a `bool` in a register needs `bit`.",
                ),
                key("bit", "integer", Text("none"), "For `type = \"bool\"` in a holding or input register: the bit, 0 (least significant) to 15."),
                key(
                    "length",
                    "integer",
                    Text("required for `string`"),
                    "For `type = \"string\"`: the number of registers, two ASCII characters each (1 to the device's `max_registers_per_request`).",
                ),
                key(
                    "byte_order",
                    "string",
                    Serde,
                    "Order of the bytes of a number on the wire, `A` being the most significant: `ABCD`, `CDAB`, `BADC` or `DCBA`.",
                ),
                key("byte_swap", "bool", Serde, "For `type = \"string\"`: the low byte of each register holds the first character."),
                key("scale", "float", Serde, "Engineering value = raw × scale + offset. Finite, not 0. Numbers only."),
                key("offset", "float", Serde, "See `scale`. Finite."),
                key(
                    "clamp_min",
                    "float",
                    Text("none"),
                    "Engineering values below this are reported as this, with quality `uncertain` and the value read in the reason. Numbers only.",
                ),
                key("clamp_max", "float", Text("none"), "Likewise above; at least `clamp_min`."),
                key("poll_group", "string", Text("none"), "One of the device's `poll_groups`; without it the tag is polled every `poll_interval`."),
                key(
                    "deadband",
                    "float",
                    Text("none"),
                    "Send a reading only when it moved by more than this (engineering units) since the last one sent, or when its quality changed, or `heartbeat` passed. 0 or more; numbers only.",
                ),
                key(
                    "deadband_percent",
                    "float",
                    Text("none"),
                    "Likewise, in percent of the last value sent. With both, moving past either sends.",
                ),
                key(
                    "heartbeat",
                    "duration",
                    DefaultIs::Value(duration(dc::DEFAULT_HEARTBEAT)),
                    "With a deadband: longest time without sending a reading, so that a flat value is still seen to be alive. At least 1s.",
                ),
                key("node_id", "string", Text("none"), "OPC-UA: the node, e.g. `ns=2;s=Line1.Speed` or `ns=2;i=1001`; or `browse_path` (exactly one)."),
                key(
                    "browse_path",
                    "string",
                    Text("none"),
                    "OPC-UA: the node by browse names from the Objects folder, e.g. `/2:Line1/2:Speed`; resolved again on every reconnect.",
                ),
                key(
                    "sampling_interval",
                    "duration",
                    Text("the device's `sampling_interval`"),
                    "OPC-UA: how often the server samples this value.",
                ),
                key("queue_size", "integer", Text("the device's `queue_size`"), "OPC-UA: changes the server queues for this value between publishes."),
                key("unit", "string", Text("none"), "Engineering unit shown on the status page (`t/h`, `°C`, `bar`…). Not sent over MQTT."),
                key("description", "string", Text("none"), "Free text for people. Not used by the agent."),
            ],
            outro: "",
        },
        Section {
            heading: "### `[devices.opcua]`: one OPC-UA server",
            intro: "A device with `protocol = \"opcua\"` has no `address`; its connection is this table. Shared device keys that apply: `name`, `timeout` (each Read/Write), `poll_interval` and `poll_groups` (intervals), `tags`. The Modbus keys `table`, `address`, `type`, `bit`, `length`, `byte_swap` are errors on an OPC-UA tag; `heartbeat` too, since the server only sends changes.",
            path: "devices[2].opcua",
            keys: vec![
                key("endpoint", "string", Required, "`opc.tcp://host:port/path`"),
                key(
                    "security_policy",
                    "string",
                    Serde,
                    "`None`, `Basic256Sha256`, `Aes128_Sha256_RsaOaep`, `Aes256_Sha256_RsaPss`",
                ),
                key("security_mode", "string", Serde, "`None`, `Sign`, `SignAndEncrypt`; `None` exactly when the policy is `None`"),
                key("identity", "string", Serde, "`anonymous`, `username`, `certificate`"),
                key("username", "string", Text("none"), "with `identity = \"username\"`"),
                key(
                    "password_file",
                    "path",
                    Text("none"),
                    "with `identity = \"username\"`: first line of the file is the password (one of `password_file`, `password_env`)",
                ),
                key("password_env", "string", Text("none"), "with `identity = \"username\"`: environment variable holding the password"),
                key(
                    "user_certificate",
                    "path",
                    Text("none"),
                    "with `identity = \"certificate\"`: the user's certificate (DER or PEM); needs a security policy",
                ),
                key("user_private_key", "path", Text("none"), "with `identity = \"certificate\"`: the user's private key (PEM)"),
                key(
                    "auto_trust_server_certificate",
                    "bool",
                    Serde,
                    "trust any server certificate without an operator; the status page then warns. Leave off.",
                ),
                key("publishing_interval", "duration", Serde, "interval of the subscription of tags without `poll_group`"),
                key(
                    "sampling_interval",
                    "duration",
                    Text("the group's interval"),
                    "how often the server samples each value (a tag's own `sampling_interval` wins)",
                ),
                key("queue_size", "integer", Serde, "changes the server keeps per item between publishes (a tag's own `queue_size` wins)"),
                key(
                    "poll_groups",
                    "array of strings",
                    Serde,
                    "groups read with the Read service instead of a subscription; `\"*\"` all, `\"default\"` tags without a group",
                ),
                key("connect_timeout", "duration", Serde, "limit on GetEndpoints + secure channel + session, and on building the subscriptions"),
                key("reconnect_min", "duration", Serde, "first wait between session attempts; it doubles up to `reconnect_max`, with jitter"),
                key("reconnect_max", "duration", Serde, "longest wait between session attempts"),
                key("session_timeout", "duration", Serde, "how long the server keeps the session (and subscriptions, as lifetime) without the agent"),
            ],
            outro: "",
        },
        Section {
            heading: "## `[commands]`: what the ERP may ask over MQTT",
            intro: "`ping`, `reload` and `rebirth` are always answered; writes to PLCs are off until `writes_enabled = true`, and then only to the tags listed in `[[commands.writable]]`.",
            path: "commands",
            keys: vec![
                key("writes_enabled", "bool", Serde, "Whether `cmd/write` may write to PLCs at all."),
                key(
                    "write_timeout",
                    "duration",
                    Serde,
                    "How long a write may take from the moment it is handled: waiting for the poll in progress, then the write itself (which the driver also bounds by the device's `timeout`). 100ms–60s.",
                ),
                key(
                    "writable",
                    "array of tables",
                    Text("empty"),
                    "The tags that may be written (`[[commands.writable]]`). A tag not listed is never written.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "### `[[commands.writable]]`: one writable tag",
            intro: "",
            path: "commands.writable[0]",
            keys: vec![
                key("device", "string", Required, "A device of `[[devices]]`."),
                key(
                    "tag",
                    "string",
                    Required,
                    "One of that device's tags, in the `holding` or `coil` table (input registers and discrete inputs are read-only). One entry per tag.",
                ),
                key(
                    "min",
                    "float",
                    Text("required for registers"),
                    "Smallest value a write may set, in engineering units. Not allowed for a coil (it takes `true`/`false`).",
                ),
                key("max", "float", Text("required for registers"), "Largest value a write may set; at least `min`. Not allowed for a coil."),
                key(
                    "max_step",
                    "float",
                    Text("none"),
                    "Largest change one write may make from the tag's last good reading, greater than 0. When set, a write is refused while the tag has no good reading. Registers only.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[[models]]`",
            intro: "",
            path: "models[0]",
            keys: vec![
                key(
                    "name",
                    "string",
                    Required,
                    "Unique; in the events (`details.model`), the `analytics` telemetry, the status page and `/metrics`. Letters, digits, `-`, `_`.",
                ),
                key("kind", "string", Required, "`anomaly`, `quality` or `rul`; must match the artifact."),
                key(
                    "artifact",
                    "string",
                    Required,
                    "A directory with `manifest.json` and `weights.safetensors` (relative paths are relative to the working directory), or `embedded:NAME` for one shipped in the binary: `embedded:juice-pump-anomaly`, `embedded:syrup-purity`, `embedded:mill-bearing-rul`.",
                ),
                key("asset", "string", Text("the name"), "The asset the events name."),
                key(
                    "inputs",
                    "array of `device/tag`",
                    Required,
                    "In the order of the manifest's `inputs`; each tag's name must be the manifest's input name.",
                ),
                key("window", "integer", Text("the manifest's"), "Rows per inference; when set it must equal the manifest's."),
                key(
                    "row_interval",
                    "duration",
                    Serde,
                    "How often a row is taken: the sample period the model was trained at. 10ms–1d.",
                ),
                key("period", "duration", Text("`row_interval`"), "How often the model runs; not shorter than `row_interval`."),
                key(
                    "min_duration",
                    "duration",
                    Serde,
                    "How long a condition must hold before its event is raised, and be gone before it is cleared. At most 7d.",
                ),
                key("score_on", "float", Serde, "Anomaly only: the score that starts an anomaly (1.0 = the calibrated threshold)."),
                key("score_off", "float", Serde, "Anomaly only: the score below which it ends (hysteresis); `0 ≤ score_off ≤ score_on`."),
                key("top_tags", "integer", Serde, "Anomaly only: contributing tags named in the events."),
                key("spec_min", "float", Text("none"), "Quality only, at least one of `spec_min`, `spec_max`: the specification's lower limit."),
                key("spec_max", "float", Text("none"), "Quality only: the specification's upper limit."),
                key(
                    "band_outside_spec",
                    "bool",
                    Serde,
                    "Quality only: also raise when the band (not only the value) leaves the specification.",
                ),
                key("hysteresis", "float", Serde, "Quality only: how far inside the limits the value must be to count as restored."),
                key(
                    "lab_tag",
                    "`device/tag`",
                    Text("none"),
                    "Quality only: the tag where the lab's results arrive; each new good value is a lab value.",
                ),
                key(
                    "lab_gain",
                    "float",
                    Serde,
                    "Quality only: each lab value moves the bias this share of the way to (lab − prediction); 1 trusts every lab value fully, less smooths out the lab's own scatter. 0 < `lab_gain` ≤ 1.",
                ),
                key("maintenance_duration", "duration", Serde, "RUL only: how long the work takes. 1m–30d."),
                key("crew", "integer", Serde, "RUL only: people the work needs throughout."),
                key(
                    "notify_within",
                    "duration",
                    Serde,
                    "RUL only: raise `maintenance_due` when the 10 % point of the RUL is closer.",
                ),
                key("max_risk", "float", Serde, "RUL only: highest acceptable probability of a failure before the window starts."),
            ],
            outro: "A key of another kind's model is an error (`models[0].spec_min: only for kind = \"quality\"`).",
        },
        Section {
            heading: "## `[calendar]`",
            intro: "",
            path: "calendar",
            keys: vec![
                key("horizon", "duration", Serde, "How far ahead windows are proposed. 1h–366d."),
                key(
                    "shifts",
                    "array of tables",
                    Text("none"),
                    "`[[calendar.shifts]]`: `name`, `start` (`\"HH:MM\"`, UTC), `duration` (≤ 24h; may run past midnight), `crew` (maintenance people on the shift), `days` (`[\"mon\", …]`, default every day). No shifts at all: the crew is not limited.",
                ),
                key(
                    "planned_stops",
                    "array of tables",
                    Text("none"),
                    "`[[calendar.planned_stops]]`: `name`, `start` (RFC 3339), `duration`, `every` (e.g. `\"7d\"`; default once), `crew` (people on site during the stop; default: the shifts').",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "## `[history]`",
            intro: "The in-memory history behind the status page's trends and the history API (see [Status page](status-page.md#the-history-behind-the-trends)). Not kept across restarts.",
            path: "history",
            keys: vec![
                key("enabled", "bool", Serde, "Keep a history at all."),
                key("full_rate_window", "duration", Serde, "How far back full-rate points reach."),
                key("max_points_per_tag", "integer", Serde, "At most this many full-rate points per tag (8 bytes each): a tag polled faster keeps less than the window at full rate."),
                key("minutes", "integer", Serde, "Minutes of per-minute min/avg/max kept (16 bytes each; 1440 = 24 h). At most 144,000."),
                key("memory_limit", "size", Serde, "The most memory the whole history may take. Tags beyond `memory_limit / bytes per tag` get no history (named in the log, counted on the page)."),
            ],
            outro: "",
        },
        Section {
            heading: "## `[gpio]`",
            intro: "The stack light, relays and digital inputs (see [GPIO](gpio.md)).",
            path: "gpio",
            keys: vec![key(
                "backend",
                "string",
                Serde,
                "`auto` (the Raspberry Pi's GPIO where there is one, else simulated), `rppal` (refused where there is none) or `simulated` (levels shown on the page only).",
            )],
            outro: "",
        },
        Section {
            heading: "### `[[gpio.outputs]]`",
            intro: "One output pin, driven by one condition of the agent.",
            path: "gpio.outputs[0]",
            keys: vec![
                key("pin", "integer", Required, "BCM GPIO number, 0–27; each pin used once."),
                key("when", "string", Required, "`running` (blinks while every core task runs and none is hung), `uplink_down`, `buffer_above`, `anomaly_active`, `device_lost`."),
                key("percent", "float", Text("none"), "For `buffer_above` only (and required there): the outbox fill in percent of `store.max_bytes`, 0–100."),
                key("active_level", "string", Serde, "`high` or `low`: the level while the condition holds (`low` for an active-low relay board)."),
                key(
                    "fail_safe_level",
                    "string",
                    Text("`running`: the inactive level; the alarms: the active level"),
                    "The level written before the agent knows its state and when it stops: a stopped agent reads as an alarm.",
                ),
            ],
            outro: "",
        },
        Section {
            heading: "### `[[gpio.inputs]]`",
            intro: "One input pin, a tag of the device `gpio`.",
            path: "gpio.inputs[0]",
            keys: vec![
                key("name", "string", Required, "The tag name; unique among the inputs."),
                key("pin", "integer", Required, "BCM GPIO number, 0–27; each pin used once."),
                key("kind", "string", Required, "`level` (a boolean tag) or `counter` (debounced rising edges; the total survives restarts)."),
                key("pull", "string", Serde, "`none`, `up` or `down`: the pin's internal resistor."),
                key("debounce", "duration", Serde, "A change must hold this long to count (at most 10 s)."),
            ],
            outro: "",
        },
    ]
}

/// The text before the sections.
const PREAMBLE: &str = "One TOML file per gateway. `firmware-configs/demo/sugar-mill.toml` is a complete, commented example.

- Durations are strings: `\"500ms\"`, `\"1s\"`, `\"30s\"`, `\"5m\"`, `\"1h\"`, `\"1m 30s\"`. Sizes are strings too: `\"64 KiB\"`, `\"512 MiB\"`.
- Names (`gateway.id`, `gateway.site`, device and tag names) travel in MQTT topics and URLs: 1–64 characters from `A–Z a–z 0–9 - _`.
- **Unknown keys are errors**: a misspelt key is reported, never silently ignored.
- `edge-agent check-config FILE` runs the checks and prints every problem as `FILE:LINE: PATH: MESSAGE`, then exits with 2; `run` refuses a bad config with the same report and exit code. Range, name and uniqueness checks report every problem at once, and so do values of the wrong type and unknown words such as `byte_order = \"CDBA\"`. A missing required key stops the parsing there: it is reported with what was found before it, and the range and name checks run once the file parses.
- A default shown as a value is what the agent runs with when the key is absent. The agent resolves every default once, when the config is built, from the same place this page is generated from.
";

/// The whole reference in Markdown.
pub fn markdown() -> Result<String, String> {
    let defaults = defaults()?;
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str("<!-- Generated by `edge-agent config-reference` from agent/src/config/reference.rs and the defaults in the code. Do not edit: run `cargo run -p edge-agent -- config-reference > docs/configuration.md`. -->\n\n");
    out.push_str(PREAMBLE);
    for section in sections() {
        let table = at(&defaults, section.path).ok_or_else(|| format!("no section {} in the defaults config", section.path))?;
        let _ = write!(out, "\n{}\n\n", section.heading);
        if !section.intro.is_empty() {
            let _ = write!(out, "{}\n\n", section.intro);
        }
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        for k in &section.keys {
            let default = match &k.default {
                DefaultIs::Required => "required".to_string(),
                DefaultIs::Text(t) => (*t).to_string(),
                DefaultIs::Value(v) => v.clone(),
                DefaultIs::Serde => match table.get(k.key) {
                    Some(v) => format!("`{v}`"),
                    None => return Err(format!("{}.{}: no serde default (it is absent from the parsed defaults)", section.path, k.key)),
                },
            };
            let _ = writeln!(out, "| `{}` | {} | {} | {} |", k.key, k.ty, default, k.meaning.replace('|', "\\|"));
        }
        if !section.outro.is_empty() {
            let _ = write!(out, "\n{}\n", section.outro);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;

    fn committed_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
    }

    #[test]
    fn the_committed_reference_is_the_generated_one() {
        // Given the reference generated from the code
        let generated = markdown().unwrap();
        // When it is compared with docs/configuration.md
        let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
        // Then they are the same text
        assert!(
            committed == generated,
            "docs/configuration.md is not the generated config reference; regenerate it with\n    cargo run -p edge-agent -- config-reference > docs/configuration.md"
        );
    }

    #[test]
    fn every_key_with_a_default_in_the_code_is_in_the_reference() {
        // Given the parsed defaults config and the reference's sections
        let defaults = defaults().unwrap();
        for section in sections() {
            let table = at(&defaults, section.path).and_then(Value::as_table).unwrap();
            let listed: BTreeSet<&str> = section.keys.iter().map(|k| k.key).collect();
            // Then every key the code writes back (every key with a value when absent) is listed
            for (k, v) in table {
                // Nested tables and arrays of tables have sections of their own.
                let nested = v.is_table() || v.as_array().is_some_and(|a| a.first().is_some_and(Value::is_table));
                assert!(listed.contains(k.as_str()) || nested, "{}.{k} is not in the reference", section.path);
            }
        }
    }

    #[test]
    fn every_key_in_the_reference_is_a_key_of_the_config() {
        // Given a config that sets every key the reference lists, in its section
        let mut unknown = Vec::new();
        for section in sections() {
            let (text, prefix) = config_setting_every_key(&section);
            // When it is parsed
            let parsed: Result<crate::config::Config, _> =
                serde_ignored::deserialize(toml::Deserializer::new(&text), |p| unknown.push(format!("{prefix}: {p}")));
            // Then it parses (the key exists)
            parsed.unwrap_or_else(|e| panic!("{}: {e}\n{text}", section.path));
        }
        // And no key of the reference is unknown to the config's shape
        assert!(unknown.is_empty(), "keys in the reference that the config does not have: {unknown:?}");
    }

    /// A config text that sets each key of `section` to its default (or a stand-in of its
    /// type when it has none), and the section's name for messages.
    fn config_setting_every_key(section: &Section) -> (String, String) {
        let defaults = defaults().unwrap();
        let table = at(&defaults, section.path).and_then(Value::as_table).unwrap().clone();
        let mut set = table.clone();
        for k in &section.keys {
            if set.contains_key(k.key) {
                continue;
            }
            let stand_in = match k.ty {
                "string" | "path" | "`device/tag`" => Value::String(stand_in_string(k.key)),
                "integer" => Value::Integer(1),
                "float" => Value::Float(1.0),
                "bool" => Value::Boolean(false),
                "duration" => Value::String("1s".into()),
                "size" => Value::String("1 GiB".into()),
                "array of tables" | "array of `device/tag`" | "array of strings" => Value::Array(Vec::new()),
                // A sub-table is a section of its own, checked there.
                "table" => continue,
                other => panic!("no stand-in for type {other}"),
            };
            set.insert(k.key.to_string(), stand_in);
        }
        // Put the section back into the defaults config at its path.
        let mut root = defaults;
        let mut slot = &mut root;
        for part in section.path.split('.') {
            slot = match part.split_once('[') {
                Some((k, i)) => slot.get_mut(k).and_then(|a| a.get_mut(i.trim_end_matches(']').parse::<usize>().unwrap())).unwrap(),
                None => slot.get_mut(part).unwrap(),
            };
        }
        *slot = Value::Table(set);
        (toml::to_string(&root).unwrap(), section.path.to_string())
    }

    fn stand_in_string(key: &str) -> String {
        match key {
            "protocol" => "modbus-tcp".into(),
            "type" => "u16".into(),
            "table" => "holding".into(),
            "kind" => "anomaly".into(),
            "fail_safe_level" => "low".into(),
            _ => "x".into(),
        }
    }

    #[test]
    fn a_default_from_a_build_constant_is_the_one_the_driver_runs_with() {
        // Given the reference's default for a device's backoff_after_failures and heartbeat
        let sections = sections();
        let shown = |path: &str, name: &str| {
            let k = sections.iter().find(|s| s.path == path).and_then(|s| s.keys.iter().find(|k| k.key == name)).unwrap();
            match &k.default {
                DefaultIs::Value(v) => v.clone(),
                other => panic!("{other:?}"),
            }
        };
        // When a device that leaves them out is built
        let config: crate::config::Config = toml::from_str(DEFAULTS_TOML).unwrap();
        let mut tcp = config.devices[0].clone();
        tcp.address = Some("127.0.0.1:502".into());
        tcp.tags[0].table = Some(edge_drivers::modbus::Table::Holding);
        tcp.tags[0].address = Some(0);
        tcp.tags[0].deadband = Some(1.0);
        let built = edge_drivers::modbus::ModbusDevice::build(&tcp).unwrap();
        // Then the reference shows what the driver runs with
        assert_eq!(shown("devices[0]", "backoff_after_failures"), format!("`{}`", built.backoff_after_failures));
        assert_eq!(shown("devices[0]", "max_registers_per_request"), format!("`{}`", built.max_registers_per_request));
        assert_eq!(shown("devices[0]", "backoff_max"), duration(built.backoff_max));
        assert_eq!(shown("devices[0].tags[0]", "heartbeat"), duration(built.tags[0].heartbeat));
    }

    #[test]
    fn a_section_left_out_has_the_same_defaults_as_an_empty_one() {
        // Given a config without the optional sections, and one with each of them empty
        let without: crate::config::Config =
            toml::from_str("[gateway]\nid = \"gw\"\nsite = \"site\"\ndata_dir = \"/var/lib/edge-agent\"\n").unwrap();
        let with = defaults().unwrap();
        let without = Value::try_from(&without).unwrap();
        // Then each section's `Default` impl (used when it is left out) agrees with its fields' serde defaults
        for section in ["mqtt", "store", "web", "commands", "calendar"] {
            // The defaults config adds repeated tables and sub-tables of its own; compare the other keys.
            let plain = |v: &Value| -> toml::Table {
                let nested = |k: &str| {
                    with.get(section).and_then(|s| s.get(k)).is_some_and(|v| v.is_table() || v.as_array().is_some_and(|a| !a.is_empty()))
                };
                v.as_table().unwrap().iter().filter(|(k, _)| !nested(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            assert_eq!(plain(&without[section]), plain(&with[section]), "[{section}]");
        }
    }

    #[test]
    fn a_serde_default_in_the_reference_is_the_value_the_config_loads_with() {
        // Given the generated reference
        let md = markdown().unwrap();
        // Then the MQTT keep-alive and the store's max_bytes are shown as the loaded defaults
        let config = crate::config::load_str("[gateway]\nid = \"gw\"\nsite = \"s\"\ndata_dir = \"/tmp/x\"\n", "t.toml").unwrap();
        let keep_alive = humantime_serde::re::humantime::format_duration(config.mqtt.keep_alive).to_string();
        assert!(md.contains(&format!("| `keep_alive` | duration | `\"{keep_alive}\"` |")), "{md}");
        assert!(md.contains(&format!("| `port` | integer | `{}` |", config.mqtt.port)), "{md}");
    }
}
