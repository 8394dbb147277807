//! Stopping and restarting on the same data folder: history, current
//! versions, id growth, pending events and durability of a `201`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{assert_on_time, record_id, ARRIVAL, QUIET};
use crate::harness::{future_second, now_millis, now_secs, poll_until, Pair, Server};
use crate::sse::SseClient;

/// Time allowed, after a restart, for versions that fell due while the server
/// was down to be published.
const OVERDUE_GRACE: Duration = Duration::from_secs(1);

/// How the first server process is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Terminate,
    Kill,
}

/// Checks that history, current versions and id growth survive SIGTERM and a restart.
pub(crate) async fn after_sigterm(pair: Pair) {
    restart_keeps_state(pair, Stop::Terminate).await;
}

/// Checks that history, current versions and id growth survive SIGKILL and a restart.
pub(crate) async fn after_sigkill(pair: Pair) {
    restart_keeps_state(pair, Stop::Kill).await;
}

async fn restart_keeps_state(pair: Pair, stop: Stop) {
    let mut server = Server::start(pair).await;
    let names = ["keep-a", "keep-b", "keep-c"];

    let mut watcher = server.subscribe().await;
    let mut records = Vec::new();
    records.push(
        server
            .insert(&json!({ "event": "keep-a", "data": "a1" }))
            .await,
    );
    let rich = r#"{"zeta":[1,{"deep":"café 😀\n"}],"alpha":12345678901234567890,"mu":1.5e300}"#;
    let body = format!(r#"{{"event":"keep-b","data":{rich}}}"#);
    let reply = server.post_raw("application/json", body).await;
    assert_eq!(
        reply.status, 201,
        "insert keep-b: expected 201, got {}",
        reply.text
    );
    records.push(reply.json());
    records.push(
        server
            .insert(&json!({ "event": "keep-a", "data": "a2" }))
            .await,
    );
    records.push(
        server
            .insert_at("keep-c", now_secs() + 3600, json!("c1"))
            .await,
    );
    let live = watcher.next_events(3, ARRIVAL).await;
    drop(watcher);

    let mut history_before = Vec::new();
    for name in names {
        history_before.push(server.collection(name).await);
    }
    let mut subscriber = server.subscribe().await;
    let snapshot_before = subscriber.next_events(2, ARRIVAL).await;
    drop(subscriber);

    match stop {
        Stop::Terminate => {
            server.terminate().await;
        }
        Stop::Kill => server.kill(),
    }
    server.restart().await;

    for (index, name) in names.iter().enumerate() {
        let history = server.collection(name).await;
        assert_eq!(
            history, history_before[index],
            "after {stop:?} and restart, /collection/{name} should be unchanged"
        );
    }

    let mut subscriber = server.subscribe().await;
    let snapshot_after = subscriber.next_events(2, ARRIVAL).await;
    subscriber
        .assert_no_event(
            QUIET,
            &format!("after {stop:?}: snapshot of two published names"),
        )
        .await;
    for index in 0..2 {
        assert_eq!(
            snapshot_after[index].raw, snapshot_before[index].raw,
            "after {stop:?} and restart, snapshot message {index} should be identical (id, name, data)"
        );
    }

    let max_record_id = records.iter().map(record_id).max().unwrap_or_default();
    let max_publication_id = live
        .iter()
        .map(|message| message.publication_id())
        .max()
        .unwrap_or_default();
    let fresh = server
        .insert(&json!({ "event": "keep-a", "data": "a3" }))
        .await;
    assert!(
        record_id(&fresh) > max_record_id,
        "after {stop:?} and restart, a new record id ({}) should exceed every earlier one ({max_record_id})",
        record_id(&fresh)
    );
    let message = subscriber.next_event(ARRIVAL).await;
    assert!(
        message.publication_id() > max_publication_id,
        "after {stop:?} and restart, a new publication id ({}) should exceed every earlier one ({max_publication_id})",
        message.publication_id()
    );
}

/// Checks that SIGTERM makes the server exit although a subscriber is
/// connected, and that the subscriber's stream ends.
pub(crate) async fn sigterm_closes_streams(pair: Pair) {
    let mut server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;
    server.insert(&json!({ "event": "before-stop" })).await;
    subscriber.next_event(ARRIVAL).await;

    // `terminate` panics if the process has not exited within its timeout.
    server.terminate().await;
    assert!(
        subscriber.wait_closed(Duration::from_secs(2)).await,
        "the SSE stream should end when the server exits"
    );
}

/// Returns a subscriber that never reads, after publishing about 20 MB to
/// it: more than the socket buffers of both ends can absorb, so the server
/// cannot finish its stream.
async fn stall_subscriber(server: &Server) -> SseClient {
    let stalled = server.subscribe().await;
    let padding = "x".repeat(100 * 1024);
    for index in 0..200 {
        server
            .insert(&json!({ "event": "bulk", "data": { "index": index, "padding": padding } }))
            .await;
    }
    stalled
}

/// Checks that SIGTERM makes the server exit within a few seconds although
/// a subscriber has stopped reading while megabytes were published to it.
pub(crate) async fn sigterm_with_stalled_reader(pair: Pair) {
    let mut server = Server::start(pair).await;
    let stalled = stall_subscriber(&server).await;

    let started = Instant::now();
    // `terminate` panics if the process has not exited within its timeout.
    let status = server.terminate().await;
    assert!(
        status.success(),
        "the server should exit with 0 after SIGTERM, got {status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the server should exit within a few seconds, took {:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// Checks that after SIGTERM the server refuses new connections at once,
/// although a stalled reader may hold its graceful shutdown open for a
/// few seconds.
pub(crate) async fn sigterm_stops_accepting(pair: Pair) {
    let mut server = Server::start(pair).await;
    let stalled = stall_subscriber(&server).await;

    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(1);
    let refused = loop {
        if tokio::net::TcpStream::connect(server.addr()).await.is_err() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused,
        "new connections should be refused within 1 s of SIGTERM"
    );
    drop(stalled);
    let status = server.wait_exit().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Checks that SIGINT makes the server exit although a subscriber is connected.
pub(crate) async fn sigint_exits(pair: Pair) {
    let mut server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    // `interrupt` panics if the process has not exited within its timeout.
    server.interrupt().await;
    assert!(
        subscriber.wait_closed(Duration::from_secs(2)).await,
        "the SSE stream should end when the server exits on SIGINT"
    );
}

/// Checks that a future event stored before a restart is published on time afterwards.
pub(crate) async fn pending_fires_after_restart(pair: Pair) {
    let mut server = Server::start(pair).await;
    let due_at = future_second(Duration::from_millis(3000));
    let record = server
        .insert_at("wake", due_at, json!("after restart"))
        .await;
    assert_eq!(
        record["published"], false,
        "the event due at {due_at} should wait: {record}"
    );
    server
        .insert_at("sleeper", now_secs() + 3600, json!("in an hour"))
        .await;

    server.terminate().await;
    server.restart().await;
    let due_ms = u128::from(due_at) * 1000;
    assert!(
        now_millis() < due_ms,
        "stop and restart took over 2 s, so the event fell due before the server listened again"
    );

    let mut subscriber = server.subscribe().await;
    let message = subscriber.next_event(ARRIVAL).await;
    let arrived = now_millis();
    assert_eq!(
        message.name(),
        "wake",
        "the pending event should fire after the restart"
    );
    assert_on_time(arrived, due_ms);

    let sleeper = server.collection("sleeper").await;
    assert_eq!(
        sleeper[0]["published"], false,
        "an event due in an hour should still be pending after the restart: {sleeper:?}"
    );
}

/// Checks that events that fell due while the server was down are published
/// at once on start, in (timestamp, record id) order.
pub(crate) async fn overdue_fires_on_start(pair: Pair) {
    let mut server = Server::start(pair).await;
    let first_second = future_second(Duration::from_millis(1000));
    server
        .insert_at("late-a", first_second + 1, json!("a"))
        .await;
    server.insert_at("late-b", first_second, json!("b")).await;
    server.insert_at("late-c", first_second, json!("c")).await;

    server.kill();
    let overdue_ms = u128::from(first_second + 1) * 1000 + 100;
    let now = now_millis();
    if now < overdue_ms {
        tokio::time::sleep(Duration::from_millis((overdue_ms - now) as u64)).await;
    }

    server.restart().await;
    let started = Instant::now();
    let all_published = poll_until(OVERDUE_GRACE, || {
        let server = &server;
        async move {
            for name in ["late-a", "late-b", "late-c"] {
                let history = server.collection(name).await;
                if history.first().map(|record| &record["published"]) != Some(&json!(true)) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(
        all_published,
        "events that fell due while the server was down should be published within {OVERDUE_GRACE:?} of start, still pending after {:?}",
        started.elapsed()
    );

    let mut subscriber = server.subscribe().await;
    let snapshot = subscriber.next_events(3, ARRIVAL).await;
    let names: Vec<&str> = snapshot.iter().map(|message| message.name()).collect();
    assert_eq!(
        names,
        ["late-b", "late-c", "late-a"],
        "overdue events should be published in (timestamp, record id) order"
    );
}

/// Checks that every insert that got `201` is present exactly once after `kill -9`.
///
/// NOTE: SIGKILL leaves the kernel's page cache intact, so this catches a `201`
/// sent before the write, not a write that was never flushed to disk.
pub(crate) async fn created_survives_sigkill(pair: Pair) {
    let mut server = Server::start(pair).await;

    let mut sequential_ids = Vec::new();
    for index in 0..20 {
        let record = server
            .insert(&json!({ "event": "durable", "data": index }))
            .await;
        sequential_ids.push(record_id(&record));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..10 {
        let http = server.http().clone();
        let url = server.url("/insert");
        tasks.spawn(async move {
            let body = json!({ "event": "durable-concurrent", "data": 100 + index });
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("concurrent insert failed");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (status, text)
        });
    }
    let mut concurrent_ids = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (status, text) = joined.expect("insert task panicked");
        assert_eq!(
            status, 201,
            "concurrent insert: expected 201, got {status} {text}"
        );
        let record: Value = serde_json::from_str(&text).expect("201 body should be JSON");
        concurrent_ids.insert(record_id(&record));
    }

    server.kill();
    server.restart().await;

    let history = server.collection("durable").await;
    let data: Vec<&Value> = history.iter().map(|record| &record["data"]).collect();
    let expected: Vec<Value> = (0..20).map(|index| json!(index)).collect();
    assert_eq!(
        data,
        expected.iter().collect::<Vec<_>>(),
        "all 20 sequential inserts answered 201 should be present once, in order, after kill -9"
    );
    let ids: Vec<u64> = history.iter().map(record_id).collect();
    assert_eq!(
        ids, sequential_ids,
        "records should keep the ids returned in their 201 responses"
    );

    let history = server.collection("durable-concurrent").await;
    let ids: BTreeSet<u64> = history.iter().map(record_id).collect();
    assert_eq!(
        history.len(),
        10,
        "all 10 concurrent inserts answered 201 should be present once after kill -9, got {history:?}"
    );
    assert_eq!(
        ids, concurrent_ids,
        "concurrent records should keep the ids returned in their 201 responses"
    );

    let mut subscriber = server.subscribe().await;
    let snapshot = subscriber.next_events(2, ARRIVAL).await;
    let durable = snapshot
        .iter()
        .find(|message| message.name() == "durable")
        .expect("the snapshot should contain the current version of `durable`");
    assert_eq!(
        durable.json(),
        json!(19),
        "the last sequential insert should be current after kill -9"
    );
}

/// Checks that a data folder written by one storage backend is not opened
/// with another: the server exits with an error that names both, and the
/// data is still there for the right backend.
#[cfg(all(feature = "redb", feature = "sled"))]
pub(crate) async fn other_storage_rejected(pair: Pair) {
    let mut server = Server::start(pair).await;
    server.insert(&json!({"event": "kept", "data": 1})).await;
    server.terminate().await;

    let other = if pair.storage == "redb" {
        "sled"
    } else {
        "redb"
    };
    let (status, output) = server.run_to_exit(&[("BROKER_STORAGE", other)]).await;
    assert!(
        !status.success(),
        "starting {other} on a {} folder should fail; output:\n{output}",
        pair.storage
    );
    let names_found = format!("contains a {} database", pair.storage);
    assert!(
        output.contains(&names_found),
        "the error should say the folder {names_found}; output:\n{output}"
    );
    let names_fix = format!("BROKER_STORAGE={}", pair.storage);
    assert!(
        output.contains(&names_fix),
        "the error should suggest {names_fix}; output:\n{output}"
    );

    server.restart().await;
    let kept = server.collection("kept").await;
    assert_eq!(kept.len(), 1, "the data should be intact: {kept:?}");
}
