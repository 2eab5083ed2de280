//! Payload → [`Command`]: pure, total (never panics on any input), unit- and fuzz-tested.
//!
//! Every command is a JSON object with a string `"id"` the reply echoes. Unknown fields
//! are errors, as in the config: a misspelt `"valeu"` must not turn into a write of
//! nothing. When the id itself cannot be read, the reply carries `"id": null`.

use edge_drivers::Value;
use serde_json::Map;

/// Largest payload accepted; commands are a few hundred bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest `"id"` accepted (it is echoed in the reply and the audit event).
pub const MAX_ID_LEN: usize = 200;

/// The command names of the MQTT contract (`…/cmd/{name}`).
pub const NAMES: [&str; 5] = ["write", "reload", "rebirth", "ping", "lab"];

/// A command that parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Write(WriteCommand),
    Reload {
        id: String,
    },
    Rebirth {
        id: String,
    },
    Ping {
        id: String,
    },
    /// `cmd/lab`: a lab result for a quality model (corrects its bias).
    Lab(LabCommand),
}

/// `cmd/lab`: `{"id", "model", "value", "sampled_at"?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabCommand {
    pub id: String,
    /// A `[[models]]` name of kind `quality`.
    pub model: String,
    /// The lab value, finite, in the model's unit.
    pub value: f64,
    /// When the sample was taken (RFC 3339); default: when the command arrived.
    pub sampled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `cmd/write`: set one tag of one device, in engineering units.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteCommand {
    pub id: String,
    pub device: String,
    pub tag: String,
    /// `Bool` for coils; `Int` or `Float` (always finite) for registers.
    pub value: Value,
}

impl Command {
    pub fn id(&self) -> &str {
        match self {
            Command::Write(w) => &w.id,
            Command::Lab(l) => &l.id,
            Command::Reload { id } | Command::Rebirth { id } | Command::Ping { id } => id,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Write(_) => "write",
            Command::Reload { .. } => "reload",
            Command::Rebirth { .. } => "rebirth",
            Command::Ping { .. } => "ping",
            Command::Lab(_) => "lab",
        }
    }
}

/// A payload that was refused, with the id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub id: Option<String>,
    pub reason: String,
}

/// Parses the payload of a command received on `…/cmd/{name}`.
pub fn parse(name: &str, payload: &[u8]) -> Result<Command, ParseError> {
    let fail = |id: Option<String>, reason: String| ParseError { id, reason };
    if payload.len() > MAX_PAYLOAD {
        return Err(fail(None, format!("payload of {} bytes is larger than the {MAX_PAYLOAD} bytes allowed", payload.len())));
    }
    let json: serde_json::Value = serde_json::from_slice(payload).map_err(|e| fail(None, format!("malformed JSON: {e}")))?;
    let serde_json::Value::Object(fields) = json else {
        return Err(fail(None, format!("the payload must be a JSON object, not {}", kind(&json))));
    };
    let id = match fields.get("id") {
        None => return Err(fail(None, "missing \"id\": every command needs a string id, echoed in its reply".into())),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Err(fail(None, "\"id\" is empty".into())),
        Some(serde_json::Value::String(s)) if s.chars().count() > MAX_ID_LEN => {
            return Err(fail(None, format!("\"id\" is longer than {MAX_ID_LEN} characters")))
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(fail(None, format!("\"id\" must be a string, not {}", kind(other)))),
    };
    let allowed: &[&str] = match name {
        "write" => &["id", "device", "tag", "value"],
        "reload" | "rebirth" | "ping" => &["id"],
        "lab" => &["id", "model", "value", "sampled_at"],
        _ => {
            return Err(fail(Some(id), format!("unknown command {:?}: expected one of {}", truncate(name), NAMES.join(", "))));
        }
    };
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(fail(Some(id), format!("unknown field {:?} in {name}: expected only {}", truncate(unknown), allowed.join(", "))));
    }
    match name {
        "write" => parse_write(id, &fields),
        "lab" => parse_lab(id, &fields),
        "reload" => Ok(Command::Reload { id }),
        "rebirth" => Ok(Command::Rebirth { id }),
        _ => Ok(Command::Ping { id }),
    }
}

fn parse_write(id: String, fields: &Map<String, serde_json::Value>) -> Result<Command, ParseError> {
    let text = |key: &str| -> Result<String, String> {
        match fields.get(key) {
            None => Err(format!("missing {key:?}")),
            Some(serde_json::Value::String(s)) if s.is_empty() => Err(format!("{key:?} is empty")),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{key:?} must be a string, not {}", kind(other))),
        }
    };
    let checked = (|| {
        let device = text("device")?;
        let tag = text("tag")?;
        let value = match fields.get("value") {
            None => return Err("missing \"value\"".to_string()),
            Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
            Some(serde_json::Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(f)) if f.is_finite() => Value::Float(f),
                _ => return Err(format!("\"value\" {n} is not a finite number")),
            },
            Some(other) => return Err(format!("\"value\" must be a number or true/false, not {}", kind(other))),
        };
        Ok((device, tag, value))
    })();
    match checked {
        Ok((device, tag, value)) => Ok(Command::Write(WriteCommand { id, device, tag, value })),
        Err(reason) => Err(ParseError { id: Some(id), reason }),
    }
}

fn parse_lab(id: String, fields: &Map<String, serde_json::Value>) -> Result<Command, ParseError> {
    let checked = (|| {
        let model = match fields.get("model") {
            None => return Err("missing \"model\"".to_string()),
            Some(serde_json::Value::String(s)) if s.is_empty() => return Err("\"model\" is empty".to_string()),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("\"model\" must be a string, not {}", kind(other))),
        };
        let value = match fields.get("value") {
            None => return Err("missing \"value\"".to_string()),
            Some(serde_json::Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => f,
                _ => return Err(format!("\"value\" {n} is not a finite number")),
            },
            Some(other) => return Err(format!("\"value\" must be a number, not {}", kind(other))),
        };
        let sampled_at = match fields.get("sampled_at") {
            None => None,
            Some(serde_json::Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&chrono::Utc)),
                Err(e) => return Err(format!("\"sampled_at\" {:?} is not an RFC 3339 time: {e}", truncate(s))),
            },
            Some(other) => return Err(format!("\"sampled_at\" must be a string, not {}", kind(other))),
        };
        Ok(LabCommand { id: id.clone(), model, value, sampled_at })
    })();
    match checked {
        Ok(lab) => Ok(Command::Lab(lab)),
        Err(reason) => Err(ParseError { id: Some(id), reason }),
    }
}

/// "a string", "an array"… for messages.
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Keeps names from the wire short in messages.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str, payload: &str) -> Command {
        parse(name, payload.as_bytes()).unwrap_or_else(|e| panic!("{payload} was refused: {e:?}"))
    }

    fn err(name: &str, payload: &str) -> ParseError {
        match parse(name, payload.as_bytes()) {
            Ok(c) => panic!("{payload} was accepted as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_command_parses() {
        assert_eq!(
            ok("write", r#"{"id":"w1","device":"plc","tag":"speed","value":12.5}"#),
            Command::Write(WriteCommand { id: "w1".into(), device: "plc".into(), tag: "speed".into(), value: Value::Float(12.5) })
        );
        assert_eq!(ok("reload", r#"{"id":"r"}"#), Command::Reload { id: "r".into() });
        assert_eq!(ok("rebirth", r#"{"id":"b"}"#), Command::Rebirth { id: "b".into() });
        assert_eq!(ok("ping", r#" {"id":"p"} "#), Command::Ping { id: "p".into() });
        assert_eq!(
            ok("lab", r#"{"id":"l","model":"syrup-purity","value":86.4,"sampled_at":"2026-11-28T06:00:00Z"}"#),
            Command::Lab(LabCommand {
                id: "l".into(),
                model: "syrup-purity".into(),
                value: 86.4,
                sampled_at: Some(chrono::DateTime::parse_from_rfc3339("2026-11-28T06:00:00Z").unwrap().with_timezone(&chrono::Utc)),
            })
        );
    }

    #[test]
    fn lab_fields_are_checked_one_by_one() {
        assert!(err("lab", r#"{"id":"l","value":1}"#).reason.contains("missing \"model\""));
        assert!(err("lab", r#"{"id":"l","model":"m","value":"86"}"#).reason.contains("must be a number"));
        assert!(err("lab", r#"{"id":"l","model":"m","value":1,"sampled_at":"yesterday"}"#).reason.contains("RFC 3339"));
        assert!(err("lab", r#"{"id":"l","model":"m","value":1,"unit":"%"}"#).reason.contains("unknown field"));
        assert_eq!(err("lab", r#"{"id":"l","model":"m"}"#).id.as_deref(), Some("l"));
    }

    #[test]
    fn write_values_keep_their_json_type() {
        let value = |v: &str| match ok("write", &format!(r#"{{"id":"1","device":"d","tag":"t","value":{v}}}"#)) {
            Command::Write(w) => w.value,
            other => panic!("{other:?}"),
        };
        assert_eq!(value("true"), Value::Bool(true));
        assert_eq!(value("42"), Value::Int(42));
        assert_eq!(value("-7"), Value::Int(-7));
        assert_eq!(value("42.0"), Value::Float(42.0));
        assert_eq!(value("1e3"), Value::Float(1000.0));
        assert_eq!(value("18446744073709551615"), Value::Float(18446744073709551615.0));
    }

    #[test]
    fn malformed_json_is_refused_without_an_id() {
        for payload in ["", "{", "{\"id\":\"x\"", "not json", "{\"id\":\"x\",}", "\u{0}"] {
            let e = err("ping", payload);
            assert_eq!(e.id, None);
            assert!(e.reason.starts_with("malformed JSON"), "{payload:?}: {}", e.reason);
        }
        let e = parse("ping", &[0xff, 0xfe]).unwrap_err();
        assert!(e.reason.starts_with("malformed JSON"));
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_refused() {
        for (payload, what) in [("[]", "an array"), ("\"id\"", "a string"), ("3", "a number"), ("null", "null")] {
            let e = err("ping", payload);
            assert_eq!(e, ParseError { id: None, reason: format!("the payload must be a JSON object, not {what}") });
        }
    }

    #[test]
    fn a_missing_or_bad_id_is_refused_with_a_null_id() {
        assert!(err("ping", "{}").reason.contains("missing \"id\""));
        assert_eq!(err("ping", r#"{"id":7}"#).reason, "\"id\" must be a string, not a number");
        assert_eq!(err("ping", r#"{"id":null}"#).reason, "\"id\" must be a string, not null");
        assert_eq!(err("ping", r#"{"id":""}"#).reason, "\"id\" is empty");
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert!(err("ping", &long).reason.contains("longer than"));
        for payload in [r#"{}"#, r#"{"id":7}"#, r#"{"id":""}"#] {
            assert_eq!(err("write", payload).id, None);
        }
    }

    #[test]
    fn an_unknown_command_is_refused_with_its_id() {
        let e = err("explode", r#"{"id":"x1"}"#);
        assert_eq!(e.id.as_deref(), Some("x1"));
        assert_eq!(e.reason, "unknown command \"explode\": expected one of write, reload, rebirth, ping, lab");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = err("write", r#"{"id":"a","device":"d","tag":"t","valeu":1}"#);
        assert_eq!(e.id.as_deref(), Some("a"));
        assert_eq!(e.reason, "unknown field \"valeu\" in write: expected only id, device, tag, value");
        let e = err("ping", r#"{"id":"a","extra":true}"#);
        assert_eq!(e.reason, "unknown field \"extra\" in ping: expected only id");
    }

    #[test]
    fn write_fields_are_checked_one_by_one() {
        let reason = |payload: &str| {
            let e = err("write", payload);
            assert_eq!(e.id.as_deref(), Some("w"));
            e.reason
        };
        assert_eq!(reason(r#"{"id":"w","tag":"t","value":1}"#), "missing \"device\"");
        assert_eq!(reason(r#"{"id":"w","device":3,"tag":"t","value":1}"#), "\"device\" must be a string, not a number");
        assert_eq!(reason(r#"{"id":"w","device":"d","value":1}"#), "missing \"tag\"");
        assert_eq!(reason(r#"{"id":"w","device":"d","tag":"","value":1}"#), "\"tag\" is empty");
        assert_eq!(reason(r#"{"id":"w","device":"d","tag":"t"}"#), "missing \"value\"");
        assert_eq!(reason(r#"{"id":"w","device":"d","tag":"t","value":"12"}"#), "\"value\" must be a number or true/false, not a string");
        assert_eq!(reason(r#"{"id":"w","device":"d","tag":"t","value":null}"#), "\"value\" must be a number or true/false, not null");
        assert_eq!(reason(r#"{"id":"w","device":"d","tag":"t","value":[1]}"#), "\"value\" must be a number or true/false, not an array");
    }

    #[test]
    fn numbers_too_large_for_a_double_are_malformed_json() {
        // serde_json refuses to turn 1e999 into infinity: no infinite value ever gets through.
        let e = err("write", r#"{"id":"w","device":"d","tag":"t","value":1e999}"#);
        assert!(e.reason.starts_with("malformed JSON"), "{}", e.reason);
    }

    #[test]
    fn an_oversized_payload_is_refused_before_parsing() {
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(parse("ping", &big).unwrap_err().reason.contains("larger than"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = err("ping", &format!(r#"{{"id":"x","a":{deep}}}"#));
        assert!(e.reason.starts_with("malformed JSON"), "{}", e.reason);
    }

    /// xorshift64*: a fixed seed gives the same inputs on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The plain-`cargo test` stand-in for the fuzz target (`fuzz/fuzz_targets/command_parse.rs`):
    /// random bytes and mutated valid commands, under every name, must never panic, and
    /// every refusal must say why.
    #[test]
    fn random_and_mutated_payloads_never_panic() {
        let seeds: [&[u8]; 6] = [
            br#"{"id":"w1","device":"plc","tag":"speed","value":12.5}"#,
            br#"{"id":"w2","device":"plc","tag":"pump","value":true}"#,
            br#"{"id":"r1"}"#,
            br#"{"id":"p","extra":[1,{"a":null}]}"#,
            br#"{"id":"\u00e9\ud83d\ude00","device":"d","tag":"t","value":-1e308}"#,
            b"[{\"id\":1e-400},\"\\u0000\"]",
        ];
        let names = ["write", "reload", "rebirth", "ping", "", "response", "WRITE", "wr\u{0}ite"];
        let alphabet = b"{}[]\":,.-+eE0123456789 truefalsnl\\u\x00\xff\xc3\xa9idvalue";
        let mut rng = Rng(0x5eed_c0de_1234_5678);
        let check = |name: &str, bytes: &[u8]| {
            if let Err(e) = parse(name, bytes) {
                assert!(!e.reason.is_empty());
            }
        };
        for _ in 0..4000 {
            let len = rng.below(96);
            let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check(names[rng.below(names.len())], &random);
            let jsonish: Vec<u8> = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            check(names[rng.below(names.len())], &jsonish);

            let mut mutated = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(mutated.len() + 1);
                match rng.below(4) {
                    0 if at < mutated.len() => mutated[at] = rng.next() as u8,
                    1 if at < mutated.len() => {
                        mutated.remove(at);
                    }
                    2 => mutated.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => {
                        let from = rng.below(mutated.len());
                        let piece: Vec<u8> = mutated[from..].iter().take(8).copied().collect();
                        mutated.splice(at..at, piece);
                    }
                }
            }
            check(names[rng.below(names.len())], &mutated);
        }
    }
}
