//! Rejected requests: `400` for bad input, `413`, `415`, `404` and `405`, each
//! with a JSON error body and with nothing stored or published.

use std::time::Duration;

use serde_json::json;

use super::{assert_error_body, ARRIVAL};
use crate::harness::{Launch, Pair, Server};
use crate::sse::SseClient;

/// One request body that must be rejected with `400`.
struct BadInput {
    label: &'static str,
    body: Vec<u8>,
    /// The field the error body should name, if one is at fault.
    field: Option<&'static str>,
    /// Text the error message should contain.
    message_contains: Option<&'static str>,
    /// Event names whose `/collection` must stay empty.
    names: Vec<&'static str>,
}

impl BadInput {
    fn new(label: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            label,
            body: body.into(),
            field: None,
            message_contains: None,
            names: Vec::new(),
        }
    }

    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    fn mentions(mut self, text: &'static str) -> Self {
        self.message_contains = Some(text);
        self
    }

    fn stores_nothing_for(mut self, names: &[&'static str]) -> Self {
        self.names = names.to_vec();
        self
    }
}

/// Sends each bad input, checks the `400` and its body, and checks that
/// nothing was stored or published.
async fn check_rejected(pair: Pair, cases: Vec<BadInput>) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    for case in &cases {
        let reply = server.post_raw("application/json", case.body.clone()).await;
        let context = format!(
            "{} (body {:?})",
            case.label,
            String::from_utf8_lossy(&case.body)
        );
        assert_eq!(
            reply.status, 400,
            "{context}: expected 400, got {} {}",
            reply.status, reply.text
        );
        let body = reply.json();
        assert_error_body(&body, case.field, &context);
        if let Some(text) = case.message_contains {
            let message = body["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(text),
                "{context}: the error message should mention {text:?}, got {message:?}"
            );
        }
        for name in &case.names {
            let history = server.collection(name).await;
            assert!(
                history.is_empty(),
                "{context}: nothing should be stored under {name:?}, got {history:?}"
            );
        }
    }

    assert_nothing_published(&server, &mut subscriber, "rejected inserts").await;
}

/// Inserts a marker event and asserts that it is the next SSE message, so no
/// rejected request published anything.
async fn assert_nothing_published(server: &Server, subscriber: &mut SseClient, context: &str) {
    server
        .insert(&json!({ "event": "marker-after-rejections" }))
        .await;
    let message = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        message.name(),
        "marker-after-rejections",
        "{context} should publish nothing, but this arrived first: {:?}",
        message.raw
    );
}

/// Checks that invalid JSON and bodies that are not a JSON object are rejected.
pub(crate) async fn bad_body(pair: Pair) {
    let cases = vec![
        BadInput::new("unclosed object", r#"{"event":"bad-json-1""#)
            .stores_nothing_for(&["bad-json-1"]),
        BadInput::new("missing value", r#"{"event":}"#),
        BadInput::new("empty body", ""),
        BadInput::new("single quotes", "{'event':'bad-json-2'}")
            .stores_nothing_for(&["bad-json-2"]),
        BadInput::new(
            "two objects",
            r#"{"event":"bad-json-3"}{"event":"bad-json-4"}"#,
        )
        .stores_nothing_for(&["bad-json-3", "bad-json-4"]),
        BadInput::new("trailing text", r#"{"event":"bad-json-5"} trailing"#)
            .stores_nothing_for(&["bad-json-5"]),
        BadInput::new("invalid UTF-8", b"{\"event\":\"bad-\xff\"}".to_vec()),
        BadInput::new("lone surrogate escape", r#"{"event":"bad-\ud800"}"#),
        BadInput::new("array body", r#"[{"event":"bad-json-6"}]"#)
            .stores_nothing_for(&["bad-json-6"]),
        BadInput::new("empty array body", "[]"),
        BadInput::new("string body", r#""bad-json-7""#).stores_nothing_for(&["bad-json-7"]),
        BadInput::new("number body", "42"),
        BadInput::new("null body", "null"),
        BadInput::new("boolean body", "true"),
    ];
    check_rejected(pair, cases).await;
}

/// Checks that missing, mistyped, empty, too long and control-character
/// event names are rejected.
pub(crate) async fn bad_event(pair: Pair) {
    let body = |event: serde_json::Value| json!({ "event": event }).to_string();
    let cases = vec![
        BadInput::new("missing event", r#"{"data":1}"#).field("event"),
        BadInput::new("null event", body(json!(null))).field("event"),
        BadInput::new("number event", body(json!(42))).field("event"),
        BadInput::new("boolean event", body(json!(true))).field("event"),
        BadInput::new("array event", body(json!(["a"]))).field("event"),
        BadInput::new("object event", body(json!({ "a": 1 }))).field("event"),
        BadInput::new("empty event", body(json!(""))).field("event"),
        BadInput::new("257 ASCII bytes", body(json!("a".repeat(257)))).field("event"),
        BadInput::new(
            "257 bytes as 128 two-byte characters and one ASCII",
            body(json!(format!("{}a", "é".repeat(128)))),
        )
        .field("event"),
        BadInput::new(
            "257 bytes as 64 four-byte characters and one ASCII",
            body(json!(format!("{}a", "😀".repeat(64)))),
        )
        .field("event"),
        BadInput::new("CR in event", body(json!("a\rb"))).field("event"),
        BadInput::new("LF in event", body(json!("a\nb"))).field("event"),
        BadInput::new("CRLF field injection", body(json!("a\r\nevent: injected"))).field("event"),
        BadInput::new("NUL in event", body(json!("a\u{0}b"))).field("event"),
        BadInput::new("tab in event", body(json!("a\tb"))).field("event"),
        BadInput::new("escape in event", body(json!("a\u{1b}b"))).field("event"),
        BadInput::new("DEL in event", body(json!("a\u{7f}b"))).field("event"),
        BadInput::new("C1 control NEL in event", body(json!("a\u{85}b"))).field("event"),
    ];
    check_rejected(pair, cases).await;
}

/// Checks that negative, fractional, string, out-of-range and millisecond
/// timestamps are rejected.
pub(crate) async fn bad_timestamp(pair: Pair) {
    let cases = vec![
        BadInput::new(
            "negative timestamp",
            r#"{"event":"bad-ts-1","timestamp":-1}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-1"]),
        BadInput::new(
            "fractional timestamp",
            r#"{"event":"bad-ts-2","timestamp":1.5}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-2"]),
        BadInput::new(
            "string timestamp",
            r#"{"event":"bad-ts-3","timestamp":"1733312000"}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-3"]),
        BadInput::new(
            "timestamp after year 9999",
            r#"{"event":"bad-ts-4","timestamp":253402300800}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-4"]),
        BadInput::new(
            "timestamp in milliseconds",
            r#"{"event":"bad-ts-5","timestamp":1733312000000}"#,
        )
        .field("timestamp")
        .mentions("seconds")
        .stores_nothing_for(&["bad-ts-5"]),
        BadInput::new(
            "timestamp beyond u64",
            r#"{"event":"bad-ts-6","timestamp":18446744073709551616}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-6"]),
        BadInput::new(
            "boolean timestamp",
            r#"{"event":"bad-ts-7","timestamp":true}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["bad-ts-7"]),
        BadInput::new("object timestamp", r#"{"event":"bad-ts-8","timestamp":{}}"#)
            .field("timestamp")
            .stores_nothing_for(&["bad-ts-8"]),
    ];
    check_rejected(pair, cases).await;
}

/// Checks that a `published` value that is not a boolean is rejected.
pub(crate) async fn bad_published(pair: Pair) {
    let cases = vec![
        BadInput::new(
            "string published",
            r#"{"event":"bad-pub-1","published":"true"}"#,
        )
        .field("published")
        .stores_nothing_for(&["bad-pub-1"]),
        BadInput::new("number published", r#"{"event":"bad-pub-2","published":1}"#)
            .field("published")
            .stores_nothing_for(&["bad-pub-2"]),
        BadInput::new("array published", r#"{"event":"bad-pub-3","published":[]}"#)
            .field("published")
            .stores_nothing_for(&["bad-pub-3"]),
    ];
    check_rejected(pair, cases).await;
}

/// Checks that unknown top-level fields are rejected and named in the message.
pub(crate) async fn unknown_field(pair: Pair) {
    let cases = vec![
        BadInput::new(
            "unknown field colour",
            r#"{"event":"unknown-1","colour":"red"}"#,
        )
        .field("colour")
        .mentions("colour")
        .stores_nothing_for(&["unknown-1"]),
        BadInput::new(
            "field name in another case",
            r#"{"event":"unknown-2","Data":1}"#,
        )
        .field("Data")
        .mentions("Data")
        .stores_nothing_for(&["unknown-2"]),
        BadInput::new(
            "unknown field with object value",
            r#"{"event":"unknown-3","extra":{"nested":true}}"#,
        )
        .field("extra")
        .mentions("extra")
        .stores_nothing_for(&["unknown-3"]),
    ];
    check_rejected(pair, cases).await;
}

/// Checks that a field given twice is rejected and named.
pub(crate) async fn duplicate_field(pair: Pair) {
    let cases = vec![
        BadInput::new("duplicate event", r#"{"event":"dup-1","event":"dup-2"}"#)
            .field("event")
            .stores_nothing_for(&["dup-1", "dup-2"]),
        BadInput::new("duplicate data", r#"{"event":"dup-3","data":1,"data":2}"#)
            .field("data")
            .stores_nothing_for(&["dup-3"]),
        BadInput::new(
            "duplicate timestamp",
            r#"{"event":"dup-4","timestamp":1,"timestamp":2}"#,
        )
        .field("timestamp")
        .stores_nothing_for(&["dup-4"]),
        BadInput::new(
            "duplicate published",
            r#"{"event":"dup-5","published":true,"published":true}"#,
        )
        .field("published")
        .stores_nothing_for(&["dup-5"]),
    ];
    check_rejected(pair, cases).await;
}

/// Builds an insert body of exactly `size` bytes for event `name`.
fn body_of_size(name: &str, size: usize) -> Vec<u8> {
    let frame = format!(r#"{{"event":"{name}","data":""}}"#);
    assert!(size >= frame.len(), "requested body is too small");
    let padding = "x".repeat(size - frame.len());
    let body = format!(r#"{{"event":"{name}","data":"{padding}"}}"#).into_bytes();
    assert_eq!(body.len(), size, "body should be exactly {size} bytes");
    body
}

/// Checks that with `BROKER_BODY_LIMIT=1024` a body of 1024 bytes is accepted
/// and larger ones get `413`, with or without a content length.
pub(crate) async fn body_over_limit(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_BODY_LIMIT", "1024")).await;
    let mut subscriber = server.subscribe().await;

    let fits = server
        .post_raw("application/json", body_of_size("fits", 1024))
        .await;
    assert_eq!(
        fits.status, 201,
        "a body of exactly the 1024-byte limit should be accepted, got {} {}",
        fits.status, fits.text
    );
    let message = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        message.name(),
        "fits",
        "the body at the limit should be published"
    );

    let over = server
        .post_raw("application/json", body_of_size("too-big", 1025))
        .await;
    assert_eq!(
        over.status, 413,
        "a 1025-byte body over the 1024-byte limit should get 413, got {} {}",
        over.status, over.text
    );
    assert_error_body(&over.json(), None, "413 with content-length");
    let history = server.collection("too-big").await;
    assert!(
        history.is_empty(),
        "a body over the limit should store nothing, got {history:?}"
    );

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(body_of_size("too-big-chunked", 4096))];
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let over_chunked = server.post_raw("application/json", streamed).await;
    assert_eq!(
        over_chunked.status, 413,
        "a 4096-byte chunked body without content-length should get 413, got {} {}",
        over_chunked.status, over_chunked.text
    );
    assert_error_body(&over_chunked.json(), None, "413 with chunked body");
    let history = server.collection("too-big-chunked").await;
    assert!(
        history.is_empty(),
        "a chunked body over the limit should store nothing, got {history:?}"
    );

    assert_nothing_published(&server, &mut subscriber, "bodies over the limit").await;
}

/// Checks that without `BROKER_BODY_LIMIT` the limit is 1048576 bytes (1 MiB).
pub(crate) async fn default_body_limit(pair: Pair) {
    let server = Server::start(pair).await;

    let fits = server
        .post_raw("application/json", body_of_size("mebibyte", 1_048_576))
        .await;
    assert_eq!(
        fits.status, 201,
        "a body of exactly the default 1048576-byte limit should be accepted, got {} {}",
        fits.status, fits.text
    );

    let over = server
        .post_raw("application/json", body_of_size("over-mebibyte", 1_048_577))
        .await;
    assert_eq!(
        over.status, 413,
        "a 1048577-byte body over the default limit should get 413, got {} {}",
        over.status, over.text
    );
    assert_error_body(&over.json(), None, "413 at the default limit");
    let history = server.collection("over-mebibyte").await;
    assert!(
        history.is_empty(),
        "a body over the default limit should store nothing, got {history:?}"
    );
}

/// Checks that form, multipart and XML content types get `415`, even with a JSON body.
pub(crate) async fn unsupported_media_type(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;
    let content_types = [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
    ];

    for (index, content_type) in content_types.iter().enumerate() {
        let name = format!("wrong-type-{index}");
        let body = json!({ "event": name }).to_string();
        let reply = server.post_raw(content_type, body).await;
        let context = format!("POST /insert as {content_type:?}");
        assert_eq!(
            reply.status, 415,
            "{context}: expected 415, got {} {}",
            reply.status, reply.text
        );
        assert_error_body(&reply.json(), None, &context);
        let history = server.collection(&name).await;
        assert!(
            history.is_empty(),
            "{context}: nothing should be stored, got {history:?}"
        );
    }

    assert_nothing_published(&server, &mut subscriber, "unsupported content types").await;
}

/// Checks that unknown routes get `404` with a JSON error body.
pub(crate) async fn unknown_route(pair: Pair) {
    let server = Server::start(pair).await;
    let requests = [
        (reqwest::Method::GET, "/nope"),
        (reqwest::Method::POST, "/nope"),
        (reqwest::Method::GET, "/index.html"),
        (reqwest::Method::GET, "/insert/extra"),
        (reqwest::Method::GET, "/collection/a/b"),
    ];

    for (method, path) in requests {
        let context = format!("{method} {path}");
        let reply = send(&server, method, path).await;
        assert_eq!(
            reply.status, 404,
            "{context}: expected 404, got {} {}",
            reply.status, reply.text
        );
        assert_error_body(&reply.json(), None, &context);
    }
}

/// Checks that known routes with the wrong method get `405` with a JSON error
/// body and an `Allow` header that lists the route's methods.
pub(crate) async fn wrong_method(pair: Pair) {
    let server = Server::start(pair).await;
    let requests = [
        (reqwest::Method::GET, "/insert", "POST"),
        (reqwest::Method::PUT, "/insert", "POST"),
        (reqwest::Method::DELETE, "/insert", "POST"),
        (reqwest::Method::POST, "/events", "GET,HEAD"),
        (reqwest::Method::POST, "/collection/name", "GET,HEAD"),
        (reqwest::Method::DELETE, "/collection/name", "GET,HEAD"),
        (reqwest::Method::TRACE, "/health", "GET,HEAD"),
    ];

    for (method, path, allowed) in requests {
        let context = format!("{method} {path}");
        let reply = send(&server, method, path).await;
        assert_eq!(
            reply.status, 405,
            "{context}: expected 405, got {} {}",
            reply.status, reply.text
        );
        assert_error_body(&reply.json(), None, &context);
        assert_eq!(
            reply.header("allow").as_deref(),
            Some(allowed),
            "{context}: a 405 must list the allowed methods"
        );
    }
}

async fn send(server: &Server, method: reqwest::Method, path: &str) -> crate::harness::Reply {
    let request = server
        .http()
        .request(method, server.url(path))
        .timeout(Duration::from_secs(5));
    crate::harness::Reply::from_request(request).await
}
