//! Arbitrary bytes, under arbitrary command names, into the command parser: it must never
//! panic, and every refusal must carry a reason.
//!
//! The first byte picks the name (one of the contract's, or a few bytes of the input), the
//! rest is the payload.
#![no_main]

use edge_agent::commands::parse::{parse, NAMES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let (name, payload) = match usize::from(selector) {
        i if i < NAMES.len() => (NAMES[i].to_string(), rest),
        i => {
            // A name taken from the input itself (lossy: topic levels are UTF-8).
            let n = (i % 8).min(rest.len());
            (String::from_utf8_lossy(&rest[..n]).into_owned(), &rest[n..])
        }
    };
    match parse(&name, payload) {
        Ok(command) => assert!(!command.id().is_empty()),
        Err(e) => assert!(!e.reason.is_empty()),
    }
});
