//! On-disk records: `crc32 (4 bytes, big-endian) ‖ JSON`. The checksum catches torn or
//! bit-flipped records, which are skipped and counted instead of poisoning the replay.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::payload::{EventPayload, WireSample};

/// A telemetry batch waiting in the outbox. Its `batch_seq` is its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub device: String,
    pub samples: Vec<WireSample>,
}

/// An event waiting in the outbox (the payload is complete, id included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent(pub EventPayload);

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&json).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record shorter than its checksum")]
    Truncated,
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("undecodable record: {0}")]
    Json(String),
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    let (crc, json) = bytes.split_at_checked(4).ok_or(RecordError::Truncated)?;
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(json);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    serde_json::from_slice(json).map_err(|e| RecordError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> StoredBatch {
        StoredBatch {
            device: "plc".into(),
            samples: vec![WireSample {
                tag: "t".into(),
                v: Some(edge_drivers::Value::Int(7)),
                q: "good".into(),
                ts: "2026-01-01T00:00:00.000Z".into(),
                server_ts: None,
                reason: None,
            }],
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let bytes = encode(&batch()).unwrap();
        assert_eq!(decode::<StoredBatch>(&bytes).unwrap(), batch());
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_checksum() {
        let mut bytes = encode(&batch()).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        assert!(matches!(decode::<StoredBatch>(&bytes), Err(RecordError::Checksum { .. })));
    }

    #[test]
    fn a_record_stored_before_server_timestamps_existed_still_decodes() {
        // Given a batch as an agent without `server_ts` wrote it (upgrade with a backlog)
        let json = br#"{"device":"plc","samples":[{"tag":"t","v":7,"q":"good","ts":"2026-01-01T00:00:00.000Z"}]}"#;
        let mut bytes = crc32fast::hash(json).to_be_bytes().to_vec();
        bytes.extend_from_slice(json);
        // Then it decodes, without a server timestamp
        assert_eq!(decode::<StoredBatch>(&bytes).unwrap(), batch());
    }

    #[test]
    fn a_torn_record_is_reported_not_panicked_on() {
        assert_eq!(decode::<StoredBatch>(&[0x01, 0x02]), Err(RecordError::Truncated));
    }
}
