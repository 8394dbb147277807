//! The byte layout of a stored record, shared by the embedded backends.

use serde_json::value::RawValue;

use crate::error::StorageError;
use crate::event::Record;
use crate::storage::Version;

/// First byte of an encoded record, so that a later layout can be recognized.
const RECORD_LAYOUT: u8 = 1;

/// Encodes a version as: layout byte, timestamp (u64, big-endian), name
/// length (u16, big-endian), name, data.
pub(crate) fn encode(version: &Version) -> Vec<u8> {
    let event = version.event.as_bytes();
    let data = version.data.get().as_bytes();
    let mut bytes = Vec::with_capacity(11 + event.len() + data.len());
    bytes.push(RECORD_LAYOUT);
    bytes.extend_from_slice(&version.timestamp.to_be_bytes());
    // Names are at most 256 bytes, checked before they reach storage.
    bytes.extend_from_slice(&(event.len() as u16).to_be_bytes());
    bytes.extend_from_slice(event);
    bytes.extend_from_slice(data);
    bytes
}

pub(crate) fn decode(id: u64, bytes: &[u8], published: bool) -> Result<Record, StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        id,
        reason: reason.to_owned(),
    };
    let (&layout, rest) = bytes.split_first().ok_or_else(|| corrupt("empty value"))?;
    if layout != RECORD_LAYOUT {
        return Err(corrupt("unknown record layout"));
    }
    let (timestamp, rest) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("truncated timestamp"))?;
    let (event_len, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt("truncated name length"))?;
    let event_len = usize::from(u16::from_be_bytes(*event_len));
    if rest.len() < event_len {
        return Err(corrupt("truncated name"));
    }
    let (event, data) = rest.split_at(event_len);
    let event = std::str::from_utf8(event).map_err(|_| corrupt("name is not UTF-8"))?;
    let data = std::str::from_utf8(data).map_err(|_| corrupt("data is not UTF-8"))?;
    let data = RawValue::from_string(data.to_owned()).map_err(|_| corrupt("data is not JSON"))?;
    Ok(Record {
        id,
        event: event.to_owned(),
        timestamp: u64::from_be_bytes(*timestamp),
        published,
        data,
    })
}
