//! Keys an older version of the agent accepted and this one does not: a config written for
//! an older version is refused at such a key with what to change, never with a bare
//! "unknown key".
//!
//! Every rename or removal of a config key adds an entry here, in the same change, with the
//! version that made it. Version 0.1.0 is the first release, so the list is empty; keys are
//! only ever added until then.

/// What became of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same setting under another key (a dotted path relative to the same table).
    Renamed { to: &'static str },
    /// The setting went; what to do instead.
    Removed { instead: &'static str },
}

/// A key of an older version: `path` as in the problems (`store.max_size`), with `[]` for
/// any index (`devices[].tags[].scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormerKey {
    pub path: &'static str,
    /// The version that renamed or removed it.
    pub since: &'static str,
    pub change: Change,
}

/// The keys renamed or removed since 0.1.0 (none yet).
pub const FORMER_KEYS: &[FormerKey] = &[];

/// The message for an unknown key at `path`: what to change when an older version had it,
/// else "unknown key".
pub fn unknown_key_message(path: &str, former: &[FormerKey]) -> String {
    let pattern = without_indices(path);
    match former.iter().find(|k| k.path == pattern) {
        Some(FormerKey { since, change: Change::Renamed { to }, .. }) => {
            format!("unknown key: renamed to `{to}` in version {since}; rename it (the value stays the same)")
        }
        Some(FormerKey { since, change: Change::Removed { instead }, .. }) => {
            format!("unknown key: removed in version {since}; {instead}")
        }
        None => "unknown key".into(),
    }
}

/// `devices[0].tags[3].scale` → `devices[].tags[].scale`.
fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMER: &[FormerKey] = &[
        FormerKey { path: "store.max_size", since: "0.2.0", change: Change::Renamed { to: "max_bytes" } },
        FormerKey {
            path: "devices[].tags[].scale_factor",
            since: "0.3.0",
            change: Change::Removed { instead: "use `scale` (a multiplier) and `offset`" },
        },
    ];

    #[test]
    fn a_renamed_key_is_refused_with_its_new_name_and_the_version_that_renamed_it() {
        let message = unknown_key_message("store.max_size", FORMER);
        assert_eq!(message, "unknown key: renamed to `max_bytes` in version 0.2.0; rename it (the value stays the same)");
    }

    #[test]
    fn a_removed_key_inside_arrays_is_refused_with_what_to_do_instead() {
        let message = unknown_key_message("devices[2].tags[14].scale_factor", FORMER);
        assert_eq!(message, "unknown key: removed in version 0.3.0; use `scale` (a multiplier) and `offset`");
    }

    #[test]
    fn a_key_no_version_had_is_just_unknown() {
        assert_eq!(unknown_key_message("store.max_sise", FORMER), "unknown key");
        assert_eq!(unknown_key_message("store.max_size", FORMER_KEYS), "unknown key");
    }
}
