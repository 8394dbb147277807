//! Resuming with `Last-Event-ID` or `lastEventId`, the `retry:` field that
//! starts every stream, and name filters.

use serde_json::json;

use super::{ARRIVAL, QUIET};
use crate::harness::{Launch, Pair, Server};
use crate::sse::{SseClient, SseEvent};

/// Opens `GET target` with `headers` and checks the status and `retry:` field.
async fn open(server: &Server, target: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut client = SseClient::connect_to(server.addr(), target, headers).await;
    assert_eq!(
        client.status, 200,
        "GET {target} with {headers:?}: expected 200, got headers {:?}",
        client.headers
    );
    let retry = client.next_retry(ARRIVAL).await;
    assert!(
        retry.is_some(),
        "GET {target}: the stream should start with a retry field"
    );
    client
}

/// Returns the (id, name, data) of each message, for compact comparisons.
fn summary(events: &[SseEvent]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .map(|event| {
            let data = event.data.clone().unwrap_or_default();
            (event.publication_id(), event.name().to_owned(), data)
        })
        .collect()
}

/// Inserts `a`, `b`, `a`, `c` (publications 1 to 4) and returns the server.
async fn server_with_history(pair: Pair) -> Server {
    let server = Server::start(pair).await;
    for (name, value) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
        server.insert(&json!({"event": name, "data": value})).await;
    }
    server
}

/// Checks that a client cut off mid-stream and reconnected with its last id
/// gets every publication after it exactly once, in order, then live ones,
/// and no snapshot.
pub(crate) async fn resume_after_id(pair: Pair) {
    let server = server_with_history(pair).await;

    // A client reads the snapshot, then the connection is cut.
    let mut first = open(&server, "/events", &[]).await;
    let snapshot = first.next_events(3, ARRIVAL).await;
    let last_seen = snapshot.last().unwrap().publication_id();
    assert_eq!(last_seen, 4, "snapshot: {:?}", summary(&snapshot));
    drop(first);

    // Publications it missed while away.
    server.insert(&json!({"event": "b", "data": 5})).await;
    server.insert(&json!({"event": "d", "data": 6})).await;

    let last = last_seen.to_string();
    let mut resumed = open(&server, "/events", &[("Last-Event-ID", &last)]).await;
    assert_eq!(
        resumed.header("broker-resume").as_deref(),
        Some("resumed"),
        "a known id should be resumed: {:?}",
        resumed.headers
    );
    let missed = resumed.next_events(2, ARRIVAL).await;
    assert_eq!(
        summary(&missed),
        [(5, "b".into(), "5".into()), (6, "d".into(), "6".into())],
        "the resumed stream should carry exactly the missed publications"
    );

    server.insert(&json!({"event": "a", "data": 7})).await;
    let live = resumed.next_event(ARRIVAL).await;
    assert_eq!(summary(&[live]), [(7, "a".into(), "7".into())]);
    resumed
        .assert_no_event(QUIET, "after resuming, nothing should repeat")
        .await;
}

/// Checks that `lastEventId` in the query resumes a first request, and that
/// the `Last-Event-ID` header, sent by browsers when they reconnect, wins.
pub(crate) async fn resume_query_param(pair: Pair) {
    let server = server_with_history(pair).await;

    let mut by_query = open(&server, "/events?lastEventId=2", &[]).await;
    let missed = by_query.next_events(2, ARRIVAL).await;
    assert_eq!(
        summary(&missed),
        [(3, "a".into(), "3".into()), (4, "c".into(), "4".into())],
        "lastEventId=2 should replay publications 3 and 4"
    );
    by_query.assert_no_event(QUIET, "lastEventId=2").await;

    let headers = [("Last-Event-ID", "3")];
    let mut both = open(&server, "/events?lastEventId=1", &headers).await;
    let missed = both.next_events(1, ARRIVAL).await;
    assert_eq!(
        summary(&missed),
        [(4, "c".into(), "4".into())],
        "the Last-Event-ID header should win over the query parameter"
    );
    both.assert_no_event(QUIET, "Last-Event-ID: 3").await;
}

/// Checks that a resume position that is not a number gets a JSON 400.
pub(crate) async fn resume_invalid_id(pair: Pair) {
    let server = Server::start(pair).await;
    let cases = [
        ("/events", Some("abc")),
        ("/events", Some("-1")),
        ("/events", Some("1.5")),
        ("/events?lastEventId=x", None),
    ];
    for (path, header) in cases {
        let mut request = server.http().get(server.url(path));
        if let Some(value) = header {
            request = request.header("Last-Event-ID", value);
        }
        let reply = crate::harness::Reply::from_request(request).await;
        let context = format!("GET {path} with Last-Event-ID {header:?}");
        assert_eq!(reply.status, 400, "{context}: {}", reply.text);
        let body = reply.json();
        assert_eq!(body["error"], "invalid_last_event_id", "{context}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("not a publication id"),
            "{context}: the message should say what is wrong: {body}"
        );
    }
}

/// Checks that an id the server never issued, as after a data reset, gets
/// the full snapshot and a header that says so.
pub(crate) async fn resume_unknown_id(pair: Pair) {
    let server = server_with_history(pair).await;

    let mut reset = open(&server, "/events", &[("Last-Event-ID", "1000")]).await;
    assert_eq!(
        reset.header("broker-resume").as_deref(),
        Some("reset"),
        "an id ahead of the log should be reported: {:?}",
        reset.headers
    );
    let snapshot = reset.next_events(3, ARRIVAL).await;
    assert_eq!(
        summary(&snapshot),
        [
            (2, "b".into(), "2".into()),
            (3, "a".into(), "3".into()),
            (4, "c".into(), "4".into())
        ],
        "an unknown id should get the current version of every name"
    );

    // One more than the largest 64-bit id is a whole number that no log
    // can have issued, so it gets the snapshot too, not a 400.
    let past_max = open(
        &server,
        "/events",
        &[("Last-Event-ID", "18446744073709551616")],
    )
    .await;
    assert_eq!(
        past_max.header("broker-resume").as_deref(),
        Some("reset"),
        "an id past the largest id should be reported as a reset: {:?}",
        past_max.headers
    );

    let plain = open(&server, "/events", &[]).await;
    assert_eq!(
        plain.header("broker-resume"),
        None,
        "a plain connect should not carry the resume header"
    );
}

/// Checks that every stream starts with the configured `retry:` value.
pub(crate) async fn retry_field_first(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_RETRY", "1.5")).await;
    server.insert(&json!({"event": "a", "data": 1})).await;

    let mut client = SseClient::connect(server.addr(), &[]).await;
    let retry = client.next_retry(ARRIVAL).await;
    assert_eq!(
        retry.as_deref(),
        Some("1500"),
        "BROKER_RETRY=1.5 should send `retry: 1500` before anything else"
    );
    let snapshot = client.next_event(ARRIVAL).await;
    assert_eq!(snapshot.name(), "a");
}

/// Checks that `?event=` limits the snapshot and the live stream to those
/// names, and that resuming keeps the filter.
pub(crate) async fn filter_by_name(pair: Pair) {
    let server = server_with_history(pair).await;

    let mut filtered = open(&server, "/events?event=a&event=c", &[]).await;
    let snapshot = filtered.next_events(2, ARRIVAL).await;
    assert_eq!(
        summary(&snapshot),
        [(3, "a".into(), "3".into()), (4, "c".into(), "4".into())],
        "the snapshot should hold only the filtered names"
    );
    server.insert(&json!({"event": "b", "data": 5})).await;
    server.insert(&json!({"event": "c", "data": 6})).await;
    let live = filtered.next_event(ARRIVAL).await;
    assert_eq!(
        summary(&[live]),
        [(6, "c".into(), "6".into())],
        "the live stream should skip names outside the filter"
    );
    filtered
        .assert_no_event(QUIET, "filtered live stream")
        .await;

    let mut resumed = open(&server, "/events?event=b&lastEventId=1", &[]).await;
    let missed = resumed.next_events(2, ARRIVAL).await;
    assert_eq!(
        summary(&missed),
        [(2, "b".into(), "2".into()), (5, "b".into(), "5".into())],
        "a filtered resume should replay only the filtered names"
    );
    resumed.assert_no_event(QUIET, "filtered resume").await;

    let reply = server.get("/events?event=%0A").await;
    assert_eq!(reply.status, 400, "a filter with LF: {}", reply.text);
    assert_eq!(reply.json()["error"], "invalid_filter", "{}", reply.text);
}

/// Checks that resuming works across a restart: ids are not reused, and
/// publications made after the restart are replayed.
pub(crate) async fn resume_after_restart(pair: Pair) {
    let mut server = server_with_history(pair).await;
    server.restart().await;
    server.insert(&json!({"event": "e", "data": 5})).await;

    let mut resumed = open(&server, "/events", &[("Last-Event-ID", "3")]).await;
    let missed = resumed.next_events(2, ARRIVAL).await;
    assert_eq!(
        summary(&missed),
        [(4, "c".into(), "4".into()), (5, "e".into(), "5".into())],
        "publications from before and after the restart should be replayed"
    );
}
