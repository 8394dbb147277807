//! Test bodies, written once and run for every (runtime, storage) pair.
//!
//! Each public function takes the pair, starts its own server and checks one
//! part of the contract.

use std::time::Duration;

use serde_json::Value;

use crate::sse::SseEvent;

pub(crate) mod auth;
pub(crate) mod collection;
pub(crate) mod config;
pub(crate) mod connections;
pub(crate) mod cors;
pub(crate) mod crash;
pub(crate) mod delivery;
pub(crate) mod insert;
pub(crate) mod metrics;
pub(crate) mod page;
pub(crate) mod restart;
pub(crate) mod resume;
pub(crate) mod schedule;
pub(crate) mod validation;

/// Time allowed for an SSE message that should arrive now.
pub(crate) const ARRIVAL: Duration = Duration::from_secs(5);

/// Time to wait before concluding that no further SSE message will arrive.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// Upper bound on how late a future event may arrive after its second starts.
/// The contract promises well under 100 ms. The bound leaves room for a loaded
/// machine and still catches a scheduler that checks only once per second.
pub(crate) const MAX_LATENESS_MS: u128 = 500;

/// Asserts that an event due at `due_ms` (epoch milliseconds) arrived at
/// `arrived`: not before, and less than [`MAX_LATENESS_MS`] after.
pub(crate) fn assert_on_time(arrived: u128, due_ms: u128) {
    assert!(
        arrived >= due_ms,
        "the event due at {due_ms} ms arrived {} ms early",
        due_ms - arrived
    );
    assert!(
        arrived - due_ms < MAX_LATENESS_MS,
        "the event due at {due_ms} ms arrived {} ms late, expected under {MAX_LATENESS_MS} ms",
        arrived - due_ms
    );
}

/// Keys of a stored record, in the order the contract lists them.
const RECORD_KEYS: [&str; 5] = ["id", "event", "timestamp", "published", "data"];

/// Returns the record id of a stored record.
pub(crate) fn record_id(record: &Value) -> u64 {
    record["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("record `id` should be an unsigned integer: {record}"))
}

/// Asserts that `record` has exactly the record keys with the right types.
pub(crate) fn assert_record_shape(record: &Value, context: &str) {
    let object = record
        .as_object()
        .unwrap_or_else(|| panic!("{context}: expected a record object, got {record}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = RECORD_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(
        keys, expected,
        "{context}: expected exactly the keys {RECORD_KEYS:?}, got {record}"
    );
    assert!(
        record["id"].is_u64(),
        "{context}: `id` should be an unsigned integer: {record}"
    );
    assert!(
        record["event"].is_string(),
        "{context}: `event` should be a string: {record}"
    );
    assert!(
        record["timestamp"].is_u64(),
        "{context}: `timestamp` should be an unsigned integer: {record}"
    );
    assert!(
        record["published"].is_boolean(),
        "{context}: `published` should be a boolean: {record}"
    );
}

/// Asserts that `message` has exactly three field lines (`id`, `event`, one
/// `data`) and no carriage return, so no newline inside the data leaked out raw.
pub(crate) fn assert_single_data_line(message: &SseEvent, context: &str) {
    assert_eq!(
        message.data_lines, 1,
        "{context}: expected one `data:` line, got {:?}",
        message.raw
    );
    assert_eq!(
        message.raw.matches('\n').count(),
        4,
        "{context}: expected three field lines and a blank line, got {:?}",
        message.raw
    );
    assert!(
        !message.raw.contains('\r'),
        "{context}: expected no raw carriage return, got {:?}",
        message.raw
    );
}

/// Asserts that an error response is a JSON object with a short `error` code,
/// a `message` sentence and, when `field` is given, that `field`.
pub(crate) fn assert_error_body(body: &Value, field: Option<&str>, context: &str) {
    assert!(
        body.is_object(),
        "{context}: expected a JSON object body, got {body}"
    );
    let code = body["error"].as_str().unwrap_or_else(|| {
        panic!("{context}: expected a string `error` code in the body, got {body}")
    });
    assert!(
        !code.is_empty() && !code.contains(char::is_whitespace),
        "{context}: `error` should be a short code without spaces, got {code:?}"
    );
    let message = body["message"].as_str().unwrap_or_else(|| {
        panic!("{context}: expected a string `message` in the body, got {body}")
    });
    assert!(
        !message.trim().is_empty(),
        "{context}: `message` should explain the fix, got an empty string"
    );
    match field {
        Some(field) => assert_eq!(
            body["field"].as_str(),
            Some(field),
            "{context}: expected `field` to name {field:?}, got {body}"
        ),
        None => assert!(
            body["field"].is_null() || body["field"].is_string(),
            "{context}: `field`, when present, should be a string, got {body}"
        ),
    }
}
