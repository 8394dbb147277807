//! Accepted inserts: the `201` record, defaults, content types, name lengths
//! and data kept unchanged.

use serde_json::{json, Value};

use super::{assert_record_shape, assert_single_data_line, record_id, ARRIVAL, QUIET};
use crate::harness::{now_secs, Pair, Server};

/// Checks that `POST /insert` returns `201` with the stored record, and that record ids grow.
pub(crate) async fn returns_record(pair: Pair) {
    let server = Server::start(pair).await;
    let now = now_secs();
    let body = json!({ "event": "greeting", "timestamp": now, "data": { "text": "hello" } });

    let reply = server.post_insert(&body).await;
    assert_eq!(
        reply.status, 201,
        "POST /insert {body}: expected 201, got {} {}",
        reply.status, reply.text
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "the 201 response should be application/json, got {content_type:?}"
    );
    let record = reply.json();
    assert_record_shape(&record, "201 response");
    assert_eq!(
        record["event"], "greeting",
        "record should echo the event name"
    );
    assert_eq!(record["timestamp"], now, "record should echo the timestamp");
    assert_eq!(
        record["data"],
        json!({ "text": "hello" }),
        "record should echo the data"
    );
    assert_eq!(
        record["published"], true,
        "an event whose timestamp has come should be published at once: {record}"
    );

    let second = server.insert(&json!({ "event": "greeting" })).await;
    assert!(
        record_id(&second) > record_id(&record),
        "record ids should grow: first {record}, second {second}"
    );
}

/// Checks that without `timestamp` and `data` the record is timestamped now with data null.
pub(crate) async fn defaults(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    let before = now_secs();
    let record = server.insert(&json!({ "event": "bare" })).await;
    let after = now_secs();

    assert_record_shape(&record, "201 response without timestamp and data");
    let timestamp = record["timestamp"].as_u64().unwrap_or_default();
    assert!(
        timestamp + 1 >= before && timestamp <= after + 1,
        "default timestamp should be now ({before}..={after}), got {timestamp}"
    );
    assert_eq!(
        record["data"],
        Value::Null,
        "default data should be null: {record}"
    );
    assert_eq!(
        record["published"], true,
        "an event timestamped now should be published at once: {record}"
    );

    let message = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        message.data.as_deref(),
        Some("null"),
        "default data should be sent as `data: null`, got {:?}",
        message.raw
    );
}

/// Checks that a given `published` flag is accepted and has no effect.
pub(crate) async fn ignores_published(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    let due = server
        .insert(&json!({ "event": "flag-now", "published": false }))
        .await;
    assert_eq!(
        due["published"], true,
        "`published: false` on a due event should be ignored, and the event published: {due}"
    );
    let message = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        message.name(),
        "flag-now",
        "the due event sent with `published: false` should be delivered"
    );

    let later = now_secs() + 3600;
    let pending = server
        .insert(&json!({ "event": "flag-later", "timestamp": later, "published": true }))
        .await;
    assert_eq!(
        pending["published"], false,
        "`published: true` on a future event should be ignored: {pending}"
    );
    let history = server.collection("flag-later").await;
    assert_eq!(
        history.first().map(|record| &record["published"]),
        Some(&json!(false)),
        "the future event should be stored as not yet published, got {history:?}"
    );
    subscriber
        .assert_no_event(QUIET, "a future event sent with `published: true`")
        .await;
}

/// Checks that JSON sent as `application/json` or `text/plain`, with or
/// without a charset, is accepted.
pub(crate) async fn content_types(pair: Pair) {
    let server = Server::start(pair).await;
    let content_types = [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "text/plain;charset=UTF-8",
    ];

    for (index, content_type) in content_types.iter().enumerate() {
        let name = format!("typed-{index}");
        let body = json!({ "event": name, "data": index }).to_string();
        let reply = server.post_raw(content_type, body.clone()).await;
        assert_eq!(
            reply.status, 201,
            "POST /insert as {content_type:?}: expected 201, got {} {}",
            reply.status, reply.text
        );
        let history = server.collection(&name).await;
        assert_eq!(
            history.len(),
            1,
            "the insert sent as {content_type:?} should be stored once, got {history:?}"
        );
        assert_eq!(
            history[0]["data"],
            json!(index),
            "the insert sent as {content_type:?} should keep its data"
        );
    }
}

/// Checks that names of 256 bytes are accepted, counting multi-byte characters in bytes.
pub(crate) async fn name_bytes(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;
    let names = [
        "a".repeat(256),
        "é".repeat(128),
        "😀".repeat(64),
        format!("ab{}", "€".repeat(84)),
    ];

    for name in &names {
        assert!(name.len() <= 256, "test name should fit in 256 bytes");
        let reply = server.post_insert(&json!({ "event": name })).await;
        assert_eq!(
            reply.status,
            201,
            "a {}-byte name of {} characters should be accepted, got {} {}",
            name.len(),
            name.chars().count(),
            reply.status,
            reply.text
        );
        let record = reply.json();
        assert_eq!(
            record["event"].as_str(),
            Some(name.as_str()),
            "the stored name should equal the {}-byte name sent",
            name.len()
        );

        let message = subscriber.next_event(ARRIVAL).await;
        assert_eq!(
            message.name(),
            name,
            "the SSE `event` field should carry the {}-byte name unchanged",
            name.len()
        );
        let history = server.collection(name).await;
        assert_eq!(
            history.len(),
            1,
            "GET /collection should find the {}-byte name",
            name.len()
        );
    }
}

/// Checks that timestamps 0 and 253402300799 (the last second of year 9999) are accepted.
pub(crate) async fn timestamp_bounds(pair: Pair) {
    let server = Server::start(pair).await;

    let oldest = server.insert_at("bounds-low", 0, json!("oldest")).await;
    assert_eq!(oldest["timestamp"], 0, "timestamp 0 should be stored as 0");
    assert_eq!(
        oldest["published"], true,
        "timestamp 0 is in the past, so the event should be published at once: {oldest}"
    );

    let latest = server
        .insert_at("bounds-high", 253_402_300_799, json!("latest"))
        .await;
    assert_eq!(
        latest["timestamp"], 253_402_300_799_u64,
        "timestamp 253402300799 should be stored unchanged"
    );
    assert_eq!(
        latest["published"], false,
        "timestamp 253402300799 is in the future, so the event should wait: {latest}"
    );
}

/// Checks that data comes back unchanged in the `201` response, over SSE and
/// from `/collection`, including nested values, Unicode, large numbers and key order.
pub(crate) async fn data_kept_unchanged(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    let data_text = concat!(
        r#"{"zeta":{"nested":[1,2,{"deep":true}]},"#,
        r#""alpha":"café 😀 \u0000 tab\tend \u2028","#,
        r#""mu":12345678901234567890,"negative":-9223372036854775808,"#,
        r#""tiny":1.5e300,"text":"line one\nline two\r\nthree","#,
        r#""empty":{},"list":[],"nothing":null}"#
    );
    let expected: Value = serde_json::from_str(data_text).expect("test data is JSON");
    let body = format!(r#"{{"event":"kept","data":{data_text}}}"#);

    let reply = server.post_raw("application/json", body).await;
    assert_eq!(
        reply.status, 201,
        "insert with rich data: expected 201, got {} {}",
        reply.status, reply.text
    );
    assert_eq!(
        reply.json()["data"],
        expected,
        "201 response should echo the data unchanged"
    );
    assert_key_order(&reply.text, "201 response");

    let message = subscriber.next_event(ARRIVAL).await;
    assert_single_data_line(&message, "data with newlines inside strings");
    assert_eq!(
        message.json(),
        expected,
        "SSE data should equal the data sent"
    );
    let sent = message.data.clone().unwrap_or_default();
    assert!(
        sent.contains("12345678901234567890"),
        "the integer 12345678901234567890 should be sent digit for digit: {sent}"
    );
    assert_key_order(&sent, "SSE data");

    let history = server.get("/collection/kept").await;
    assert_eq!(
        history.json()[0]["data"],
        expected,
        "/collection should return the data unchanged"
    );
    assert_key_order(&history.text, "/collection response");

    check_pretty_and_scalar_data(&server, &mut subscriber).await;
}

/// Checks pretty-printed data (newlines between tokens) and scalar data.
async fn check_pretty_and_scalar_data(server: &Server, subscriber: &mut crate::sse::SseClient) {
    let pretty = "{\n  \"event\": \"pretty\",\n  \"data\": {\n    \"a\": [1,\n      2],\n    \"b\": \"x\"\n  }\n}";
    let reply = server.post_raw("application/json", pretty).await;
    assert_eq!(
        reply.status, 201,
        "pretty-printed insert: expected 201, got {} {}",
        reply.status, reply.text
    );
    let message = subscriber.next_event(ARRIVAL).await;
    assert_single_data_line(&message, "pretty-printed data");
    assert_eq!(
        message.json(),
        json!({ "a": [1, 2], "b": "x" }),
        "pretty-printed data should keep its value"
    );

    let scalars = [
        json!("just a string"),
        json!(42),
        json!(-0.5),
        json!(true),
        json!([1, "two", null]),
        Value::Null,
    ];
    for value in scalars {
        let record = server
            .insert(&json!({ "event": "scalar", "data": value }))
            .await;
        assert_eq!(
            record["data"], value,
            "201 response should echo data {value}"
        );
        let message = subscriber.next_event(ARRIVAL).await;
        assert_eq!(message.json(), value, "SSE data should equal {value}");
    }
}

/// Checks that data nested 100 levels deep is kept, and that data nested
/// 100000 levels deep is either stored or rejected with `400`. The server must
/// keep serving reads before and after a restart.
pub(crate) async fn deep_data_handled(pair: Pair) {
    let mut server = Server::start(pair).await;

    let nested_100 = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let body = format!(r#"{{"event":"deep-100","data":{nested_100}}}"#);
    let reply = server.post_raw("application/json", body).await;
    assert_eq!(
        reply.status, 201,
        "data nested 100 deep should be accepted, got {} {}",
        reply.status, reply.text
    );
    let history = server.get("/collection/deep-100").await;
    let stored: Value = history.json();
    let expected: Value = serde_json::from_str(&nested_100).expect("test data is JSON");
    assert_eq!(
        stored[0]["data"], expected,
        "data nested 100 deep should be returned unchanged"
    );

    let depth = 100_000;
    let body = format!(
        r#"{{"event":"deep-max","data":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let reply = server.post_raw("application/json", body).await;
    assert!(
        reply.status == 201 || reply.status == 400,
        "data nested {depth} deep should be stored (201) or rejected (400), got {} {}",
        reply.status,
        reply.text.chars().take(200).collect::<String>()
    );

    check_deep_reads(&server, "before a restart").await;
    server.restart().await;
    check_deep_reads(&server, "after a restart").await;
}

/// Reads `/collection` and the SSE snapshot, which include the deep data if it was stored.
async fn check_deep_reads(server: &Server, context: &str) {
    let reply = server.get("/collection/deep-max").await;
    assert_eq!(
        reply.status, 200,
        "{context}: GET /collection/deep-max should answer 200, got {}",
        reply.status
    );
    let mut subscriber = server.subscribe().await;
    let snapshot = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        snapshot.name(),
        "deep-100",
        "{context}: the snapshot should start with the first name published"
    );
}

/// Asserts that the keys `zeta`, `alpha`, `mu` appear in the order they were sent.
fn assert_key_order(text: &str, context: &str) {
    let zeta = text.find("\"zeta\"");
    let alpha = text.find("\"alpha\"");
    let mu = text.find("\"mu\"");
    assert!(
        zeta.is_some() && alpha.is_some() && mu.is_some(),
        "{context}: keys zeta, alpha and mu should all be present: {text}"
    );
    assert!(
        zeta < alpha && alpha < mu,
        "{context}: object keys should keep the order sent (zeta, alpha, mu): {text}"
    );
}
