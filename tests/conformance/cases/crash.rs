//! Crashes and storage failures: SIGKILL in the middle of concurrent
//! inserts, a disk that stops taking writes, and a data folder that cannot
//! be opened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{assert_error_body, record_id};
use crate::harness::{future_second, now_millis, poll_until, Pair, Server};

/// Clients that insert at the same time in [`sigkill_under_load`].
const CLIENTS: usize = 16;

/// Inserts each client sends at most.
const INSERTS_PER_CLIENT: usize = 400;

/// `201`s to collect before the server is killed.
const ACKNOWLEDGED_BEFORE_KILL: usize = 300;

/// Maximum time the load runs, whether or not the kill has happened.
const LOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Event names the load spreads over.
const LOAD_NAMES: [&str; 4] = ["crash-0", "crash-1", "crash-2", "crash-3"];

/// Time to keep watching the stream after the last due time.
const DUE_MARGIN: Duration = Duration::from_secs(2);

/// What a client sent in one insert, keyed by the token in its data.
#[derive(Debug, Clone)]
struct Sent {
    event: String,
    /// The explicit timestamp of a future event, `None` for "now".
    timestamp: Option<u64>,
    data: Value,
}

/// How one insert ended, as its client saw it.
#[derive(Debug)]
enum Outcome {
    /// `201` with the stored record.
    Created(Value),
    /// No complete response: the connection broke or timed out.
    Unknown,
    /// Any other status, which no insert should get before the kill.
    Unexpected(u16, String),
}

/// Checks that SIGKILL during concurrent inserts loses no insert that got
/// `201`, stores none twice and invents none, and that every future event
/// stored before the kill is published exactly once after the restart.
pub(crate) async fn sigkill_under_load(pair: Pair) {
    let mut server = Server::start(pair).await;
    let acknowledged = Arc::new(AtomicUsize::new(0));

    // Every client inserts until an insert fails, which the kill makes
    // happen, or its bounds are reached. So requests are in flight when the
    // kill comes, unless the machine stalls every client at that moment.
    // A quarter of the inserts are due 4 to 6 s ahead.
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let http = server.http().clone();
        let url = server.url("/insert");
        let acknowledged = acknowledged.clone();
        clients.spawn(async move {
            let started = Instant::now();
            let mut results = Vec::new();
            for index in 0..INSERTS_PER_CLIENT {
                if started.elapsed() > LOAD_TIMEOUT {
                    break;
                }
                let token = format!("c{client}-{index}");
                let event = LOAD_NAMES[(client + index) % LOAD_NAMES.len()].to_owned();
                let timestamp = ((client + index) % 4 == 0)
                    .then(|| future_second(Duration::from_secs(4 + (index % 3) as u64)));
                let data = json!({ "token": token, "at": [client, index, { "text": "é\n\"" }] });
                let mut body = json!({ "event": event, "data": data });
                if let Some(timestamp) = timestamp {
                    body["timestamp"] = json!(timestamp);
                }
                let sent = Sent {
                    event,
                    timestamp,
                    data,
                };

                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let outcome = match response {
                    Err(_) => Outcome::Unknown,
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match (status, response.text().await) {
                            (_, Err(_)) => Outcome::Unknown,
                            (201, Ok(text)) => match serde_json::from_str(&text) {
                                Ok(record) => Outcome::Created(record),
                                Err(_) => Outcome::Unexpected(status, text),
                            },
                            (_, Ok(text)) => Outcome::Unexpected(status, text),
                        }
                    }
                };
                let failed = !matches!(outcome, Outcome::Created(_));
                if !failed {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                results.push((token, sent, outcome));
                if failed {
                    break;
                }
            }
            results
        });
    }

    // Kill the server while the clients still send.
    let enough = poll_until(LOAD_TIMEOUT, || {
        let count = acknowledged.load(Ordering::Relaxed);
        async move { count >= ACKNOWLEDGED_BEFORE_KILL }
    })
    .await;
    assert!(
        enough,
        "only {} inserts got 201 within {LOAD_TIMEOUT:?}; output:\n{}",
        acknowledged.load(Ordering::Relaxed),
        server.output()
    );
    server.kill();

    let mut sent = BTreeMap::new();
    let mut created = BTreeMap::new();
    while let Some(joined) = clients.join_next().await {
        let results = joined.expect("a client task panicked");
        for (token, request, outcome) in results {
            match outcome {
                Outcome::Created(record) => {
                    created.insert(token.clone(), record);
                }
                Outcome::Unknown => {}
                Outcome::Unexpected(status, text) => {
                    panic!(
                        "insert {token} got {status} {text}, expected 201 or a broken connection"
                    )
                }
            }
            sent.insert(token, request);
        }
    }

    // Subscribe from publication 0 right after the restart, which replays
    // every publication ever made, then the live ones, each exactly once.
    server.restart().await;
    let mut stream =
        crate::sse::SseClient::connect_to(server.addr(), "/events?lastEventId=0", &[]).await;
    assert_eq!(stream.status, 200, "GET /events?lastEventId=0");

    let last_due = sent
        .values()
        .filter_map(|request| request.timestamp)
        .max()
        .expect("some inserts should be future events");
    let watch_until = u128::from(last_due) * 1000 + DUE_MARGIN.as_millis();
    let mut published: BTreeMap<String, Vec<(u64, Value, u128)>> = BTreeMap::new();
    let mut last_publication = 0;
    while now_millis() < watch_until {
        let wait = Duration::from_millis((watch_until - now_millis()) as u64);
        let Some(message) = stream.try_next_event(wait).await else {
            continue;
        };
        let id = message.publication_id();
        assert!(
            id > last_publication,
            "publication ids should grow: {id} after {last_publication}"
        );
        last_publication = id;
        let data = message.json();
        let token = data["token"].as_str().unwrap_or_default().to_owned();
        let request = sent
            .get(&token)
            .unwrap_or_else(|| panic!("publication {id} carries data that no client sent: {data}"));
        assert_eq!(
            message.name(),
            request.event,
            "publication {id} of {token} has the wrong name"
        );
        assert_eq!(
            data, request.data,
            "publication {id} of {token} should carry the data as sent"
        );
        published
            .entry(token)
            .or_default()
            .push((id, data, now_millis()));
    }

    // Storage: every 201 exactly once and unchanged, nothing invented.
    let mut stored = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for name in LOAD_NAMES {
        let history = server.collection(name).await;
        let name_ids: Vec<u64> = history.iter().map(record_id).collect();
        assert!(
            name_ids.windows(2).all(|pair| pair[0] < pair[1]),
            "/collection/{name} should be in insertion order: {name_ids:?}"
        );
        for record in history {
            let id = record_id(&record);
            assert!(ids.insert(id), "record id {id} appears twice: {record}");
            let token = record["data"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let request = sent
                .get(&token)
                .unwrap_or_else(|| panic!("record {record} carries data that no client sent"));
            assert_eq!(record["event"], request.event, "record of {token}");
            assert_eq!(record["data"], request.data, "record of {token}");
            if let Some(timestamp) = request.timestamp {
                assert_eq!(record["timestamp"], timestamp, "record of {token}");
            }
            assert_eq!(
                record["published"], true,
                "every record is due by now, so {token} should be published: {record}"
            );
            assert!(
                stored.insert(token.clone(), record).is_none(),
                "the insert {token} is stored twice"
            );
        }
    }
    for (token, acknowledged) in &created {
        let record = stored.get(token).unwrap_or_else(|| {
            panic!("the insert {token} got 201 but is missing after kill -9: {acknowledged}")
        });
        for key in ["id", "event", "timestamp", "data"] {
            assert_eq!(
                record[key], acknowledged[key],
                "`{key}` of {token} should be as its 201 returned"
            );
        }
    }

    // Stream: every stored record published exactly once, and no future
    // event received live before its second.
    for (token, record) in &stored {
        let publications = published.get(token).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            publications.len(),
            1,
            "{token} should be published exactly once, got {publications:?}; record {record}"
        );
    }
    for (token, publications) in &published {
        assert!(
            stored.contains_key(token),
            "{token} was published but is not stored"
        );
        if let Some(timestamp) = sent[token].timestamp {
            let (id, _, arrived) = &publications[0];
            assert!(
                *arrived + 50 >= u128::from(timestamp) * 1000,
                "publication {id} of {token} arrived at {arrived} ms, before its second {timestamp}"
            );
        }
    }
}

/// Checks that a disk that takes no more writes makes inserts fail with
/// `503` and `/health` report the cause, without a crash. Nothing rejected
/// is stored, and the server writes again by itself once the disk takes
/// writes again.
///
/// The server's file size limit (`RLIMIT_FSIZE`) is lowered to 0, so every
/// write to its files fails with `EFBIG`, as on a full disk.
pub(crate) async fn disk_full_recovers(pair: Pair) {
    let mut server = Server::start(pair).await;
    let mut accepted = Vec::new();
    for index in 0..5 {
        let record = server
            .insert(&json!({ "event": "full", "data": { "token": format!("before-{index}") } }))
            .await;
        accepted.push(record);
    }

    server.set_file_size_limit(Some(0));
    let mut rejected = Vec::new();
    for index in 0..5 {
        let token = format!("rejected-{index}");
        let reply = server
            .post_insert(&json!({ "event": "full", "data": { "token": token } }))
            .await;
        assert_eq!(
            reply.status, 503,
            "an insert while the disk takes no writes should get 503, got {} {}",
            reply.status, reply.text
        );
        let body = reply.json();
        assert_error_body(&body, None, "insert while the disk takes no writes");
        assert_eq!(body["error"], "storage_unavailable", "{body}");
        rejected.push(token);
        if index == 0 {
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("File too large"),
                "the first 503 should name the I/O error (EFBIG, File too large): {body}"
            );
        }
    }

    let health = server.get("/health").await;
    assert_eq!(
        health.status, 503,
        "GET /health while writes fail: {}",
        health.text
    );
    let body = health.json();
    assert_error_body(&body, None, "GET /health while writes fail");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("File too large"),
        "GET /health should name the cause: {body}"
    );
    // Reads either serve what was acknowledged or fail with 503: a backend
    // may have to reopen its file before it reads again, which needs a write.
    let reply = server.get("/collection/full").await;
    match reply.status {
        200 => assert_eq!(
            reply.json(),
            Value::Array(accepted.clone()),
            "a read while writes fail should return exactly the acknowledged records"
        ),
        503 => assert_error_body(&reply.json(), None, "a read while writes fail"),
        other => panic!(
            "a read while writes fail should get 200 or 503, got {other} {}",
            reply.text
        ),
    }
    assert!(
        server.is_running(),
        "the server should survive the failed writes (SIGXFSZ); output:\n{}",
        server.output()
    );
    assert!(
        server.output().contains("storage write failed"),
        "the server should log the failed write; output:\n{}",
        server.output()
    );

    // The server retries by itself with a back-off of 1 s, then 2 s, 4 s.
    server.set_file_size_limit(None);
    let healthy = poll_until(Duration::from_secs(10), || async {
        server.get("/health").await.status == 200
    })
    .await;
    assert!(
        healthy,
        "GET /health should return 200 within 10 s after the disk takes writes again; output:\n{}",
        server.output()
    );
    for index in 0..5 {
        let record = server
            .insert(&json!({ "event": "full", "data": { "token": format!("after-{index}") } }))
            .await;
        accepted.push(record);
    }
    assert!(
        server.output().contains("storage recovered"),
        "the server should log the recovery; output:\n{}",
        server.output()
    );

    let history = server.collection("full").await;
    assert_eq!(
        history, accepted,
        "after recovery the history should hold every acknowledged insert once, and no rejected one ({rejected:?})"
    );
    let ids: BTreeSet<u64> = history.iter().map(record_id).collect();
    assert_eq!(ids.len(), history.len(), "record ids should be unique");

    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM after recovery: {status}");
    server.restart().await;
    let history = server.collection("full").await;
    assert_eq!(
        history, accepted,
        "after a restart the history should hold every acknowledged insert once, and no rejected one ({rejected:?})"
    );
    assert!(
        !server.output().contains("panicked"),
        "the server should not panic; output:\n{}",
        server.output()
    );
}

/// Checks that a data folder that is a regular file, or that contains a
/// damaged database, stops the server at start with one error line that
/// names the path and the fix, and that the damaged file is left as it was.
pub(crate) async fn unreadable_data_dir(pair: Pair) {
    let mut server = Server::start(pair).await;
    server.terminate().await;

    let file = server.data_dir().with_file_name("not-a-folder");
    std::fs::write(&file, "a file, not a folder").expect("failed to write the test file");
    let file_name = file.to_string_lossy().into_owned();
    let (status, output) = server
        .run_to_exit(&[("BROKER_DATA_DIR", file_name.as_str())])
        .await;
    assert_start_error(status, &output, &file_name, "choose a folder path");

    // Replace the database with bytes that no backend reads as a database.
    let damaged = if pair.storage == "redb" {
        server.data_dir().join("broker.redb")
    } else {
        server.data_dir().join("sled").join("conf")
    };
    let garbage: Vec<u8> = (0..70_000u32)
        .map(|index| (index * 7 % 251) as u8)
        .collect();
    std::fs::write(&damaged, &garbage).expect("failed to damage the database file");
    let (status, output) = server.run_to_exit(&[]).await;
    let database = if pair.storage == "redb" {
        damaged.clone()
    } else {
        server.data_dir().join("sled")
    };
    assert_start_error(
        status,
        &output,
        &database.to_string_lossy(),
        "BROKER_DATA_DIR",
    );
    let after = std::fs::read(&damaged).expect("the damaged file should still exist");
    assert!(
        after == garbage,
        "the server should leave a file it cannot read unchanged"
    );
}

/// Asserts that the server exited non-zero with one error line that names
/// `path` and contains `fix`, and did not panic.
fn assert_start_error(status: std::process::ExitStatus, output: &str, path: &str, fix: &str) {
    assert!(
        !status.success(),
        "the server should exit non-zero; output:\n{output}"
    );
    let errors: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("ERROR broker"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "the server should print one error line; output:\n{output}"
    );
    assert!(
        errors[0].contains(path),
        "the error should name {path}; output:\n{output}"
    );
    assert!(
        errors[0].contains(fix),
        "the error should give the fix ({fix}); output:\n{output}"
    );
    assert!(
        !output.contains("panicked") && !output.contains("backtrace"),
        "the server should not panic; output:\n{output}"
    );
}
