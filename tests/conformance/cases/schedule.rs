//! Future timestamps: on-time publication, which version is current, and the
//! order of versions that fall due together.

use std::time::Duration;

use serde_json::{json, Value};

use super::{assert_on_time, record_id, ARRIVAL, QUIET};
use crate::harness::{future_second, now_millis, now_secs, Pair, Server};

/// Checks that a future event is stored as pending and published within its second.
pub(crate) async fn future_on_time(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    let due_at = future_second(Duration::from_millis(1000));
    let record = server.insert_at("timed", due_at, json!("on time")).await;
    assert_eq!(
        record["published"], false,
        "an event due at {due_at} should not be published at insert time: {record}"
    );
    let pending = server.collection("timed").await;
    assert_eq!(
        pending[0]["published"], false,
        "/collection should show the future event as not yet published: {pending:?}"
    );

    let message = subscriber.next_event(ARRIVAL).await;
    let arrived = now_millis();
    let due_ms = u128::from(due_at) * 1000;
    assert_eq!(message.name(), "timed", "the future event should arrive");
    assert_on_time(arrived, due_ms);

    let published = server.collection("timed").await;
    assert_eq!(
        published[0]["published"], true,
        "/collection should show the event as published after it fired: {published:?}"
    );
}

/// Checks that the current version is the one published last. A pending future
/// version does not replace it until it fires, and a backdated insert replaces it at once.
pub(crate) async fn current_is_last_published(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    server
        .insert(&json!({ "event": "current", "data": 1 }))
        .await;
    watcher.next_event(ARRIVAL).await;

    let due_at = future_second(Duration::from_millis(1500));
    server.insert_at("current", due_at, json!(2)).await;
    assert_current(&server, json!(1), "while version 2 is pending").await;

    let fired = watcher.next_event(ARRIVAL).await;
    assert_eq!(
        fired.json(),
        json!(2),
        "the pending version 2 should be published when due"
    );
    assert_current(&server, json!(2), "after version 2 fired").await;

    let backdated = server
        .insert_at("current", now_secs() - 3600, json!(3))
        .await;
    assert_eq!(
        backdated["published"], true,
        "a backdated version should be published at once: {backdated}"
    );
    let published = watcher.next_event(ARRIVAL).await;
    assert_eq!(
        published.json(),
        json!(3),
        "the backdated version 3 should be sent live"
    );
    assert_current(
        &server,
        json!(3),
        "after a backdated version older than version 2 was published",
    )
    .await;
}

/// Asserts that a new subscriber's snapshot contains exactly one message, with `data`.
async fn assert_current(server: &Server, data: Value, context: &str) {
    let mut subscriber = server.subscribe().await;
    let snapshot = subscriber.next_event(ARRIVAL).await;
    assert_eq!(
        snapshot.json(),
        data,
        "{context}: the snapshot should hold the current version {data}"
    );
    subscriber
        .assert_no_event(QUIET, &format!("{context}: after the one-name snapshot"))
        .await;
}

/// Checks that versions due together are published in (timestamp, record id)
/// order, whatever order they were inserted in.
pub(crate) async fn due_together_order(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    let first_second = future_second(Duration::from_millis(1500));
    let second_second = first_second + 1;
    let inserts = [
        ("order-1", second_second),
        ("order-2", first_second),
        ("order-3", second_second),
        ("order-4", first_second),
        ("order-2", first_second),
        ("order-5", first_second),
    ];
    let mut records = Vec::new();
    for (index, (name, due_at)) in inserts.iter().enumerate() {
        let record = server
            .insert_at(name, *due_at, json!(format!("{name} #{index}")))
            .await;
        records.push(record);
    }

    let mut expected = records.clone();
    expected.sort_by_key(|record| (record["timestamp"].as_u64(), record_id(record)));
    let expected_data: Vec<&Value> = expected.iter().map(|record| &record["data"]).collect();

    let messages = watcher.next_events(records.len(), ARRIVAL).await;
    let received: Vec<Value> = messages.iter().map(|message| message.json()).collect();
    let received_refs: Vec<&Value> = received.iter().collect();
    assert_eq!(
        received_refs, expected_data,
        "versions due together should be published in (timestamp, record id) order"
    );
    let ids: Vec<u64> = messages
        .iter()
        .map(|message| message.publication_id())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "publication ids should grow in publication order, got {ids:?}"
    );

    let mut late = server.subscribe().await;
    let snapshot = late.next_events(5, ARRIVAL).await;
    let order_2 = snapshot
        .iter()
        .find(|message| message.name() == "order-2")
        .expect("the snapshot should contain order-2");
    assert_eq!(
        order_2.json(),
        json!("order-2 #4"),
        "of two versions due in the same second, the one inserted last should be current"
    );
}
