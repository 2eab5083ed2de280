//! Session cookies: signed with HMAC-SHA256 under a secret kept in the data directory.
//!
//! A cookie carries the user, a random session id, when it was issued and when it was last
//! used, and a fingerprint of the user's password hash; the agent keeps no session table.
//! So a session survives a restart of the agent, and ends when
//! - it was not used for `session_idle`, or is older than `session_max`;
//! - the user logs out (its id is written to `web-sessions-revoked` in the data directory, see
//!   [`super::revoked`], until it would have expired anyway, so a logout survives a restart);
//! - the user's password changes or the user is removed (the fingerprint no longer matches);
//! - the secret changes: delete `web-session.key` in the data directory and restart, and
//!   every cookie issued before is refused.
//!
//! The CSRF token of a session is an HMAC of its id under the same secret: the page reads
//! it from `/api/session` and sends it back in the `X-CSRF-Token` header.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// The secret's file name in the data directory.
pub const SECRET_FILE: &str = "web-session.key";

/// The key that signs session cookies and derives CSRF tokens.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Reads `data_dir/web-session.key`, or creates it (32 random bytes, mode 0600) when it
    /// does not exist. Blocking.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Secret> {
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not a session key of 32 bytes: delete it, and a new one is made at start", path.display()),
                    )
                })?;
                Ok(Secret(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir)?;
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                super::users::write_private_atomically(&path, &key)?;
                Ok(Secret(key))
            }
            Err(e) => Err(e),
        }
    }

    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> Secret {
        Secret(key)
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes a key of any length: new_from_slice cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        };
        for p in parts {
            mac.update(p);
        }
        mac
    }

    /// The cookie value for `claims`: `base64url(payload).base64url(hmac)`.
    pub fn seal(&self, claims: &Claims) -> String {
        let payload = claims.encode();
        let tag = self.mac(&[b"session|", payload.as_bytes()]).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload.as_bytes()), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The claims of a cookie value this secret signed; `None` for anything else (the tag
    /// is checked in constant time before the payload is looked at).
    pub fn open(&self, value: &str) -> Option<Claims> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&[b"session|", &payload]).verify_slice(&tag).ok()?;
        Claims::decode(std::str::from_utf8(&payload).ok()?)
    }

    /// The CSRF token of session `sid`.
    pub fn csrf_token(&self, sid: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"csrf|", sid.as_bytes()]).finalize().into_bytes())
    }

    /// Whether `token` is the CSRF token of session `sid` (constant time).
    pub fn csrf_ok(&self, sid: &str, token: &str) -> bool {
        let expected = self.csrf_token(sid);
        expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac::new_from_slice only fails for fixed-size-key MACs; HMAC accepts every length.
    std::process::abort()
}

/// What a session cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    /// Random, 128 bits, base64url.
    pub sid: String,
    /// Unix seconds of the login.
    pub issued: i64,
    /// Unix seconds of the last request that refreshed the cookie.
    pub seen: i64,
    /// [`super::users::hash_fingerprint`] of the password hash at login.
    pub fingerprint: String,
}

impl Claims {
    /// A new session for `user`, now.
    pub fn new(user: &str, fingerprint: String, now: i64) -> Claims {
        let mut sid = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut sid);
        Claims { user: user.to_string(), sid: URL_SAFE_NO_PAD.encode(sid), issued: now, seen: now, fingerprint }
    }

    fn encode(&self) -> String {
        format!("v1|{}|{}|{}|{}|{}", self.user, self.sid, self.issued, self.seen, self.fingerprint)
    }

    fn decode(s: &str) -> Option<Claims> {
        let mut it = s.split('|');
        if it.next()? != "v1" {
            return None;
        }
        let claims = Claims {
            user: it.next()?.to_string(),
            sid: it.next()?.to_string(),
            issued: it.next()?.parse().ok()?,
            seen: it.next()?.parse().ok()?,
            fingerprint: it.next()?.to_string(),
        };
        it.next().is_none().then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new("alice", "0011223344556677".into(), 1_700_000_000)
    }

    #[test]
    fn a_sealed_cookie_opens_with_its_secret_only() {
        // Given a cookie sealed under one secret
        let (a, b) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        let c = claims();
        let cookie = a.seal(&c);
        // Then the same secret opens it to the same claims, another secret does not
        assert_eq!(a.open(&cookie), Some(c));
        assert_eq!(b.open(&cookie), None);
    }

    #[test]
    fn a_cookie_changed_anywhere_is_refused() {
        // Given a sealed cookie
        let s = Secret::from_bytes([7; 32]);
        let cookie = s.seal(&claims());
        let (payload, tag) = cookie.split_once('.').expect("two parts");
        // When its payload claims another user, or its tag is cut or changed
        let forged_payload = URL_SAFE_NO_PAD
            .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("utf8").replace("alice", "admin").as_bytes());
        let mut flipped = URL_SAFE_NO_PAD.decode(tag).expect("b64");
        flipped[0] ^= 1;
        for bad in [
            format!("{forged_payload}.{tag}"),
            format!("{payload}.{}", &tag[..10]),
            format!("{payload}.{}", URL_SAFE_NO_PAD.encode(flipped)),
            payload.to_string(),
            String::new(),
        ] {
            // Then it does not open
            assert_eq!(s.open(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_csrf_token_belongs_to_one_session_and_one_secret() {
        // Given two sessions and two secrets
        let (a, b) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        let token = a.csrf_token("sid-1");
        // Then the token passes for its session under its secret only
        assert!(a.csrf_ok("sid-1", &token));
        assert!(!a.csrf_ok("sid-2", &token));
        assert!(!b.csrf_ok("sid-1", &token));
        assert!(!a.csrf_ok("sid-1", ""));
    }

    #[test]
    fn the_secret_is_created_private_once_and_read_back_after() {
        // Given an empty data directory
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        // When the secret is loaded twice
        let first = Secret::load_or_create(dir.path()).expect("create");
        let second = Secret::load_or_create(dir.path()).expect("read");
        // Then the file is 0600 and both seal alike
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = claims();
        assert_eq!(first.seal(&c), second.seal(&c));
        // And a file of the wrong size is an error, not a weak key
        std::fs::write(dir.path().join(SECRET_FILE), b"short").expect("write");
        assert!(Secret::load_or_create(dir.path()).is_err());
    }
}
