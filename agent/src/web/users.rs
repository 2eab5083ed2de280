//! The users file: who may use the status page, in which role, and the API tokens of
//! machines (Prometheus scrapers).
//!
//! One entry a line, three fields separated by spaces; `#` starts a comment line:
//!
//! ```text
//! # edge-agent users: NAME ROLE HASH (edit with `edge-agent user …`)
//! alice operator $argon2id$v=19$m=19456,t=2,p=1$…$…
//! bob viewer $argon2id$v=19$m=19456,t=2,p=1$…$…
//! prometheus token sha256:5f1d…
//! ```
//!
//! Passwords are argon2id hashes (PHC strings, OWASP parameters: 19 MiB, 2 passes). Tokens
//! are 256 random bits, so a SHA-256 of them is as good as a slow hash and costs a scrape
//! nothing; the token itself is shown once, when it is made, and never stored.
//!
//! The file is written whole to a temporary file (mode 0600) in the same directory, synced
//! and renamed over the old one: a reader never sees half a file.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// What a user may do on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Also state-changing actions (acknowledge an event, trust a certificate).
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    User {
        name: String,
        role: Role,
        hash: String,
    },
    /// A machine's API token: read-only access (`GET`) without a session.
    Token {
        name: String,
        sha256: [u8; 32],
    },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::User { name, .. } | Entry::Token { name, .. } => name,
        }
    }
}

/// The whole file, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{file}: cannot read the users file: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error("{file}: cannot write the users file: {error}")]
    Write { file: String, error: std::io::Error },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// User and token names: 1–64 letters, digits, `.`, `_`, `-` or `@`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Shortest password `edge-agent user add|passwd` accepts.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted anywhere (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl Users {
    /// Parses the file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Users, UsersError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let fail = |message: String| UsersError::Parse { file: file.to_string(), line: line_no, message };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [name, kind, hash] = fields[..] else {
                return Err(fail("expected three fields: NAME ROLE HASH".into()));
            };
            if !is_valid_name(name) {
                return Err(fail(format!("{name:?} is not a valid name: use 1–64 letters, digits, '.', '_', '-' or '@'")));
            }
            if entries.iter().any(|e| e.name() == name) {
                return Err(fail(format!("{name:?} appears twice")));
            }
            let entry = match kind {
                "token" => {
                    let hex = hash.strip_prefix("sha256:").ok_or_else(|| fail("a token's hash must be sha256:HEX".into()))?;
                    Entry::Token {
                        name: name.to_string(),
                        sha256: parse_hex32(hex).ok_or_else(|| fail("a token's hash must be 64 hex digits".into()))?,
                    }
                }
                role => {
                    let role =
                        Role::parse(role).ok_or_else(|| fail(format!("unknown role {role:?}: expected viewer, operator or token")))?;
                    let parsed = PasswordHash::new(hash).map_err(|e| fail(format!("not a password hash: {e}")))?;
                    if parsed.algorithm.as_str() != "argon2id" {
                        return Err(fail(format!("the password hash must be argon2id, not {}", parsed.algorithm)));
                    }
                    Entry::User { name: name.to_string(), role, hash: hash.to_string() }
                }
            };
            entries.push(entry);
        }
        Ok(Users { entries })
    }

    /// Reads and parses `path` (blocking).
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| UsersError::Read { file: file.clone(), error })?;
        Users::parse(&text, &file)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out =
            String::from("# edge-agent users: NAME ROLE HASH, one a line; edit with `edge-agent user add|passwd|remove|token`.\n");
        for e in &self.entries {
            match e {
                Entry::User { name, role, hash } => out.push_str(&format!("{name} {} {hash}\n", role.as_str())),
                Entry::Token { name, sha256 } => out.push_str(&format!("{name} token sha256:{}\n", hex(sha256))),
            }
        }
        out
    }

    /// Writes the file atomically with mode 0600 (blocking).
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        let fail = |error| UsersError::Write { file: path.display().to_string(), error };
        write_private_atomically(path, self.render().as_bytes()).map_err(fail)
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name() == name)
    }

    /// The user `name` with its role and hash.
    pub fn user(&self, name: &str) -> Option<(Role, &str)> {
        match self.get(name)? {
            Entry::User { role, hash, .. } => Some((*role, hash.as_str())),
            Entry::Token { .. } => None,
        }
    }

    /// Puts `entry` in place of the entry of the same name, or at the end.
    pub fn upsert(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.name() == entry.name()) {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes the entry `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.name() != name);
        self.entries.len() != before
    }

    /// The name of the token whose SHA-256 is that of `token`, compared in constant time
    /// with every token of the file (no early exit on a match either).
    pub fn token_owner(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if let Entry::Token { name, sha256 } = e {
                if bool::from(sha256.ct_eq(&digest)) && found.is_none() {
                    found = Some(name.as_str());
                }
            }
        }
        found
    }
}

/// An argon2id hash of `password` with a fresh random salt (CPU- and memory-heavy: call
/// it off the async workers).
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| UsersError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (argon2 compares in constant time).
/// CPU- and memory-heavy: call it off the async workers.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A new API token (`eat_` and 256 random bits) and the entry that stores its hash.
pub fn new_token(name: &str) -> (String, Entry) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("eat_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let sha256: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    (token, Entry::Token { name: name.to_string(), sha256 })
}

/// A short fingerprint of a password hash: in the session cookie, so that a changed
/// password (or a removed and re-added user) ends the sessions made with the old one.
pub fn hash_fingerprint(hash: &str) -> String {
    hex(&Sha256::digest(hash.as_bytes())[..8])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes `bytes` to `path` through a temporary file of mode 0600 in the same directory,
/// synced, then renamed over `path`; the directory is synced after.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_written_file_reads_back_the_same_with_mode_0600_and_verifies_its_passwords() {
        // Given a user of each role and a token, saved to a file
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        let mut users = Users::default();
        users.upsert(Entry::User { name: "alice".into(), role: Role::Operator, hash: hash_password("correct horse").expect("hash") });
        users.upsert(Entry::User { name: "bob".into(), role: Role::Viewer, hash: hash_password("battery staple").expect("hash") });
        let (token, entry) = new_token("prometheus");
        users.upsert(entry);
        users.save(&path).expect("save");

        // When it is read back
        let back = Users::load(&path).expect("load");

        // Then it is the same, private, and the passwords and the token check out
        assert_eq!(back, users);
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let (role, hash) = back.user("alice").expect("alice");
        assert_eq!(role, Role::Operator);
        assert!(verify_password("correct horse", hash));
        assert!(!verify_password("correct horsE", hash));
        assert_eq!(back.token_owner(&token), Some("prometheus"));
        assert_eq!(back.token_owner("eat_wrong"), None);
        assert!(back.user("prometheus").is_none(), "a token is no user");
        assert!(std::fs::read_to_string(&path).expect("read").lines().all(|l| !l.contains(&token)), "the token itself is stored");
    }

    #[test]
    fn every_malformed_line_is_refused_with_its_line_number() {
        // Given lines with each kind of mistake, after a comment and a blank line
        for (bad, says) in [
            ("alice operator", "three fields"),
            ("al ice operator $argon2id$x", "three fields"),
            ("alice admin $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "unknown role"),
            ("alice viewer plaintext", "not a password hash"),
            ("bot token 0123", "sha256:HEX"),
            ("bot token sha256:0123", "64 hex digits"),
            ("a/b viewer x", "not a valid name"),
        ] {
            let text = format!("# comment\n\n{bad}\n");
            // When it is parsed
            let err = Users::parse(&text, "users").expect_err(bad).to_string();
            // Then the error names the file, line 3 and the mistake
            assert!(err.starts_with("users:3: ") && err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_name_twice_is_refused_and_remove_takes_users_and_tokens_alike() {
        // Given a file with a user and a token
        let mut users = Users::default();
        users.upsert(Entry::User {
            name: "alice".into(),
            role: Role::Viewer,
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        });
        users.upsert(new_token("scraper").1);
        let text = users.render();
        // Then the same name twice does not parse
        let twice = format!("{text}{}", text.lines().nth(1).expect("alice line"));
        assert!(Users::parse(&twice, "f").expect_err("twice").to_string().contains("appears twice"));
        // And remove finds both kinds, once
        assert!(users.remove("scraper") && users.remove("alice"));
        assert!(!users.remove("alice"));
        assert!(users.entries.is_empty());
    }
}
