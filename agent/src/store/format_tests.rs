//! The store's format version on open: a store stamped with a newer (or unknown) format is
//! set aside unread with a message naming both versions; a store from before the marker
//! opens with its records and is stamped.

use std::sync::atomic::Ordering;

use super::format::{self, Marker, CURRENT};
use super::outbox::Handles;
// One telemetry batch and one event, as the compaction tests store them.
use super::compaction_tests::{batch, event};
use super::Outbox;

/// A data dir whose store holds batches 1 to 3 and one event, closed.
async fn store_with_three_batches() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    o.append(&[batch("a"), batch("b"), batch("c")], &[event()]).await.unwrap();
    drop(o);
    dir
}

#[tokio::test]
async fn a_new_store_is_stamped_with_the_current_format() {
    let dir = tempfile::tempdir().unwrap();
    let _o = Outbox::open(dir.path()).unwrap();
    assert_eq!(format::read(dir.path()).unwrap(), Marker::Version(CURRENT));
}

#[tokio::test]
async fn a_store_stamped_with_a_newer_format_is_set_aside_unread_with_a_message_naming_both_versions() {
    // Given a store stamped by a newer agent (format version CURRENT + 1)
    let dir = store_with_three_batches().await;
    let newer = CURRENT + 1;
    std::fs::write(dir.path().join(format::FILE), format!("edge-agent store format {newer}\n")).unwrap();
    // When this agent opens it
    let o = Outbox::open(dir.path()).unwrap();
    // Then nothing of it is read: the store it runs on is a fresh one
    assert_eq!((o.pending_batches(), o.pending_events()), (0, 0));
    assert!(o.telemetry_from(0, 10).is_empty() && o.events_from(0, 10).is_empty());
    // and numbering goes on above every number handed out before (no batch_seq repeats)
    assert!(o.next_batch_seq() >= 4, "{}", o.next_batch_seq());
    // and the store was set aside as it was, raised and counted as a store reset
    let aside = o.moved_aside.clone().expect("set aside");
    let name = aside.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(&format!("outbox.format-v{newer}-")), "{name}");
    let reset = o.reset.clone().expect("a store_reset");
    assert_eq!(reset.reason, crate::events::StoreResetReason::FormatNewer);
    assert_eq!(reset.event().details().unwrap()["moved_aside_to"], aside.display().to_string());
    assert_eq!(o.counters().store_resets.load(Ordering::Relaxed), 1);
    // with a message that names both versions and says what to do
    let message = reset.error.clone().unwrap_or_default();
    assert!(message.contains(&format!("format version {newer}")), "{message}");
    assert!(message.contains(&format!("store format version {CURRENT}")), "{message}");
    assert!(message.contains("run the edge-agent version that wrote it") && message.contains("remove"), "{message}");
    assert_eq!(reset.event().details().unwrap()["error"], message.as_str());
    // and the fresh store is stamped with this agent's format
    assert_eq!(format::read(dir.path()).unwrap(), Marker::Version(CURRENT));
    drop(o);
    // while the one set aside still holds everything, untouched
    let kept = Handles::open(&aside).unwrap();
    assert_eq!((kept.telemetry.len(), kept.events.len()), (3, 1));
}

#[tokio::test]
async fn a_store_whose_marker_names_no_version_is_set_aside_as_format_unknown() {
    let dir = store_with_three_batches().await;
    std::fs::write(dir.path().join(format::FILE), b"\x00\x17garbage").unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    assert_eq!(o.pending_batches(), 0);
    let reset = o.reset.clone().expect("a store_reset");
    assert_eq!(reset.reason, crate::events::StoreResetReason::FormatUnknown);
    let name = o.moved_aside.clone().unwrap().file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("outbox.format-unknown-"), "{name}");
    let message = reset.error.unwrap_or_default();
    assert!(message.contains(&format!("store format version {CURRENT}")) && message.contains("garbage"), "{message}");
}

#[tokio::test]
async fn a_store_written_before_the_format_marker_opens_with_its_records_and_is_stamped_version_1() {
    // Given a store as the agent wrote it before the marker existed (no store.format)
    let dir = store_with_three_batches().await;
    std::fs::remove_file(dir.path().join(format::FILE)).unwrap();
    // When it is opened
    let o = Outbox::open(dir.path()).unwrap();
    // Then it keeps its records and numbering, without a reset
    assert!(o.reset.is_none() && o.moved_aside.is_none(), "{:?}", o.reset);
    let held: Vec<(u64, String)> = o.telemetry_from(0, 10).into_iter().map(|(s, b)| (s, b.device)).collect();
    assert_eq!(held, vec![(1, "a".to_string()), (2, "b".to_string()), (3, "c".to_string())]);
    assert_eq!(o.events_from(0, 10).len(), 1);
    assert_eq!(o.next_batch_seq(), 4);
    // and it is stamped as version 1, the format it was written in
    assert_eq!(format::read(dir.path()).unwrap(), Marker::Version(1));
}

#[tokio::test]
async fn the_event_raised_for_a_store_in_a_newer_format_matches_the_published_schema() {
    let dir = store_with_three_batches().await;
    std::fs::write(dir.path().join(format::FILE), format!("edge-agent store format {}\n", CURRENT + 1)).unwrap();
    let o = Outbox::open(dir.path()).unwrap();
    let details = o.reset.clone().expect("a store_reset").event().details().unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/event.schema.json")).unwrap())
            .unwrap();
    let event = serde_json::json!({
        "id": "gw-1", "kind": "store_reset", "gateway": "gw", "asset": "gw", "severity": "critical",
        "ts": "2026-01-01T00:00:00.000Z", "details": details,
    });
    let validator = jsonschema::draft202012::options().build(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&event).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{event}");
}
