//! `GET /metrics`: the Prometheus exposition, counters and gauges that follow
//! real traffic, the switch that turns the route off, and JSON log lines.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::ARRIVAL;
use crate::harness::{future_second, now_secs, Launch, Pair, Server};
use crate::sse::SseClient;

/// Every metric family that `GET /metrics` exposes, as its `# TYPE` line
/// names it.
const FAMILIES: [(&str, &str); 9] = [
    ("broker_inserts_total", "counter"),
    ("broker_publications_total", "counter"),
    ("broker_pending_events", "gauge"),
    ("broker_rejected_requests_total", "counter"),
    ("broker_slow_clients_dropped_total", "counter"),
    ("broker_request_duration_seconds", "histogram"),
    ("broker_subscribers", "gauge"),
    ("broker_open_connections", "gauge"),
    ("broker_connections_accepted_total", "counter"),
];

/// A parsed exposition: each sample's value by its name and labels as
/// written, such as `broker_rejected_requests_total{code="invalid_json"}`,
/// and each family's type by its name.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    pub(crate) samples: HashMap<String, f64>,
    pub(crate) types: HashMap<String, String>,
}

impl Exposition {
    /// Returns the value of the sample `key`, or 0 when it is absent, as a
    /// labelled counter is until its first increment.
    pub(crate) fn value(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

/// Parses the Prometheus text format (version 0.0.4), panicking on any line
/// that is neither a `# HELP` or `# TYPE` comment nor a sample of a family
/// with a `# TYPE` line.
pub(crate) fn parse_exposition(text: &str) -> Exposition {
    let mut exposition = Exposition::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default();
            let rest = parts.next().unwrap_or_default();
            match keyword {
                "HELP" => assert!(!rest.is_empty(), "a HELP line without text: {line:?}"),
                "TYPE" => {
                    assert!(
                        matches!(rest, "counter" | "gauge" | "histogram"),
                        "unexpected type in {line:?}"
                    );
                    exposition.types.insert(name.to_owned(), rest.to_owned());
                }
                _ => panic!("a comment that is neither HELP nor TYPE: {line:?}"),
            }
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a sample value that is not a number: {line:?}"));
        let name = key.split('{').next().unwrap_or_default();
        let typed = [name, family_of_histogram_sample(name)]
            .iter()
            .any(|family| exposition.types.contains_key(*family));
        assert!(typed, "sample {key:?} has no `# TYPE` line before it");
        if let Some(labels) = key.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "malformed labels in {line:?}"
            );
        }
        let previous = exposition.samples.insert(key.to_owned(), value);
        assert!(previous.is_none(), "sample {key:?} appears twice");
    }
    exposition
}

/// Returns the family of a histogram's `_bucket`, `_sum` or `_count` sample.
fn family_of_histogram_sample(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Scrapes `GET /metrics`, asserting a `200` in the Prometheus text format.
pub(crate) async fn scrape(server: &Server) -> Exposition {
    let reply = server.get("/metrics").await;
    assert_eq!(
        reply.status, 200,
        "GET /metrics: expected 200, got {} {}",
        reply.status, reply.text
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "GET /metrics: expected the Prometheus text format, got content type {content_type:?}"
    );
    parse_exposition(&reply.text)
}

/// Polls the metrics until sample `key` has `expected` or [`ARRIVAL`]
/// passes, and returns the last value seen.
async fn wait_for_value(server: &Server, key: &str, expected: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let value = scrape(server).await.value(key);
        if value == expected || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that the exposition parses, names every family with its type,
/// has a latency series for every route, and starts at zero on a new server.
pub(crate) async fn exposition(pair: Pair) {
    let server = Server::start(pair).await;
    // A labelled counter has no series, and so no `# TYPE` line, before
    // its first increment.
    let rejected = server.get("/nope").await;
    assert_eq!(rejected.status, 404, "{}", rejected.text);
    let metrics = scrape(&server).await;

    for (family, kind) in FAMILIES {
        assert_eq!(
            metrics.types.get(family).map(String::as_str),
            Some(kind),
            "GET /metrics should declare {family} as a {kind}: {:?}",
            metrics.types
        );
    }
    for key in [
        "broker_inserts_total",
        "broker_publications_total",
        "broker_pending_events",
        "broker_slow_clients_dropped_total",
        "broker_subscribers",
    ] {
        assert_eq!(
            metrics.samples.get(key),
            Some(&0.0),
            "{key} should be 0 on a new server"
        );
    }
    for route in ["insert", "events", "collection", "health", "metrics"] {
        let key = format!("broker_request_duration_seconds_count{{route=\"{route}\"}}");
        assert!(
            metrics.samples.contains_key(&key),
            "{key} should exist before the first request to the route"
        );
    }
    assert!(
        metrics.value("broker_connections_accepted_total") >= 1.0,
        "the scrape's own connection should be counted: {:?}",
        metrics.samples
    );
}

/// Checks that inserts, publications and request durations grow by what
/// the server did between two scrapes.
pub(crate) async fn counts_inserts(pair: Pair) {
    const INSERTS: usize = 5;
    let server = Server::start(pair).await;
    let insert_count = "broker_request_duration_seconds_count{route=\"insert\"}";
    let collection_count = "broker_request_duration_seconds_count{route=\"collection\"}";
    let before = scrape(&server).await;

    for index in 0..INSERTS {
        server
            .insert(&json!({ "event": "counted", "data": index }))
            .await;
    }
    server.collection("counted").await;
    let after = scrape(&server).await;

    let grown = |key: &str| after.value(key) - before.value(key);
    assert_eq!(
        grown("broker_inserts_total"),
        INSERTS as f64,
        "broker_inserts_total should grow by one per stored insert"
    );
    assert_eq!(
        grown("broker_publications_total"),
        INSERTS as f64,
        "each insert due now should be published once"
    );
    assert_eq!(
        grown(insert_count),
        INSERTS as f64,
        "each POST /insert should be timed once"
    );
    assert_eq!(
        grown(collection_count),
        1.0,
        "the GET /collection should be timed once"
    );
    assert!(
        after.value("broker_request_duration_seconds_sum{route=\"insert\"}") > 0.0,
        "the insert durations should add up to more than zero"
    );
    assert_eq!(
        after.value("broker_pending_events"),
        0.0,
        "inserts due now should leave nothing pending"
    );
}

/// Checks that a subscriber shows in `broker_subscribers` while connected
/// and leaves it after it disconnects.
pub(crate) async fn subscriber_gauge(pair: Pair) {
    let server = Server::start(pair).await;
    let subscriber = server.subscribe().await;
    let connected = wait_for_value(&server, "broker_subscribers", 1.0).await;
    assert_eq!(
        connected, 1.0,
        "broker_subscribers should count the open stream"
    );
    let metrics = scrape(&server).await;
    assert!(
        metrics.value("broker_open_connections") >= 2.0,
        "the stream and the scrape should both count as open connections: {:?}",
        metrics.samples
    );
    assert_eq!(
        metrics.value("broker_request_duration_seconds_count{route=\"events\"}"),
        1.0,
        "the GET /events should be timed once, up to its response head"
    );

    drop(subscriber);
    let left = wait_for_value(&server, "broker_subscribers", 0.0).await;
    assert_eq!(
        left, 0.0,
        "broker_subscribers should drop back to 0 after the client disconnects"
    );
}

/// Checks that rejected requests count under the error code of their JSON
/// body, on every path that can reject one.
pub(crate) async fn rejected_by_code(pair: Pair) {
    let server = Server::start(pair).await;
    let invalid_json = server.post_raw("application/json", "{\"event\":").await;
    assert_eq!(invalid_json.status, 400, "{}", invalid_json.text);
    let unknown_route = server.get("/nope").await;
    assert_eq!(unknown_route.status, 404, "{}", unknown_route.text);
    let invalid_id = SseClient::connect(server.addr(), &[("last-event-id", "x")]).await;
    assert_eq!(
        invalid_id.status, 400,
        "GET /events with a bad Last-Event-ID should get 400"
    );
    drop(invalid_id);
    server.insert(&json!({ "event": "accepted" })).await;

    let metrics = scrape(&server).await;
    for code in ["invalid_json", "not_found", "invalid_last_event_id"] {
        let key = format!("broker_rejected_requests_total{{code=\"{code}\"}}");
        assert_eq!(
            metrics.value(&key),
            1.0,
            "one rejected request should count under {key}: {:?}",
            metrics.samples
        );
    }
    assert_eq!(
        metrics.value("broker_inserts_total"),
        1.0,
        "rejected inserts should not count as inserts"
    );
}

/// Checks that `broker_pending_events` counts future events, drops when one
/// is published, and is still right after a restart.
pub(crate) async fn pending_gauge(pair: Pair) {
    let mut server = Server::start(pair).await;
    let soon = future_second(Duration::from_millis(1500));
    server.insert_at("pending", soon, json!("soon")).await;
    server
        .insert_at("pending", now_secs() + 3600, json!("later"))
        .await;
    server
        .insert(&json!({ "event": "pending", "data": "now" }))
        .await;

    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.value("broker_pending_events"),
        2.0,
        "the two future events should be pending, the one due now not"
    );

    let published = wait_for_value(&server, "broker_pending_events", 1.0).await;
    assert_eq!(
        published, 1.0,
        "publishing the first future event should leave one pending"
    );
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.value("broker_publications_total"),
        2.0,
        "the event due now and the first future event should be published"
    );

    server.restart().await;
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.value("broker_pending_events"),
        1.0,
        "after a restart the gauge should count the event still pending in storage"
    );
    assert_eq!(
        metrics.value("broker_inserts_total"),
        0.0,
        "a restarted server counts inserts from its own start"
    );
}

/// Checks that `BROKER_METRICS=false` turns `GET /metrics` into a `404`
/// like any unknown route, and leaves the rest of the API alone.
pub(crate) async fn disabled(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_METRICS", "false")).await;
    let reply = server.get("/metrics").await;
    assert_eq!(
        reply.status, 404,
        "GET /metrics with BROKER_METRICS=false: {}",
        reply.text
    );
    assert_eq!(
        reply.json()["error"],
        "not_found",
        "the 404 should be the API's JSON error"
    );
    let health = server.get("/health").await;
    assert_eq!(health.status, 200, "GET /health: {}", health.text);
}

/// Checks that `BROKER_LOG_FORMAT=json` prints every log line as one JSON
/// object, with the `listening` line's fields.
pub(crate) async fn json_log_lines(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_LOG_FORMAT", "json")).await;
    let line: Value = serde_json::from_str(server.listening_line()).unwrap_or_else(|error| {
        panic!(
            "the `listening` line should be JSON: {error}: {:?}",
            server.listening_line()
        )
    });
    assert_eq!(line["fields"]["message"], "listening", "{line}");
    assert_eq!(
        line["fields"]["address"],
        server.addr().to_string(),
        "{line}"
    );
    assert_eq!(line["fields"]["storage"], pair.storage, "{line}");
    assert!(line["level"].is_string(), "{line}");

    let output = server.output();
    let stdout_lines = output
        .lines()
        .filter(|line| !line.starts_with("stderr: ") && !line.starts_with("--- process"));
    for printed in stdout_lines {
        assert!(
            serde_json::from_str::<Value>(printed).is_ok_and(|value| value.is_object()),
            "every log line should be a JSON object: {printed:?}"
        );
    }
}
