//! `GET /events`: the snapshot sent on connect, live delivery, publication
//! ids, headers, wire format, keep-alive and isolation between subscribers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::metrics::scrape;
use super::{record_id, ARRIVAL, QUIET};
use crate::harness::{future_second, now_millis, Launch, Pair, Server};
use crate::sse::{Item, SseClient};

/// Checks that a new subscriber first receives the current version of every
/// name, ordered by publication id, and nothing else.
pub(crate) async fn sync_on_connect(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    // Publications: sync-a v1, sync-b v1, sync-a v2, sync-c v1. The current
    // versions are then sync-b v1, sync-a v2, sync-c v1, in that id order,
    // which is neither insertion order of the names nor alphabetical order.
    server
        .insert(&json!({ "event": "sync-a", "data": "a1" }))
        .await;
    server
        .insert(&json!({ "event": "sync-b", "data": "b1" }))
        .await;
    server
        .insert(&json!({ "event": "sync-a", "data": "a2" }))
        .await;
    server
        .insert(&json!({ "event": "sync-c", "data": "c1" }))
        .await;
    let pending_at = crate::harness::now_secs() + 3600;
    server.insert_at("sync-c", pending_at, json!("c2")).await;
    let live = watcher.next_events(4, ARRIVAL).await;

    let mut late = server.subscribe().await;
    let snapshot = late.next_events(3, ARRIVAL).await;
    late.assert_no_event(QUIET, "after the snapshot of three names")
        .await;

    let expected = [
        ("sync-b", "b1", &live[1]),
        ("sync-a", "a2", &live[2]),
        ("sync-c", "c1", &live[3]),
    ];
    for (index, (name, data, published)) in expected.iter().enumerate() {
        let message = &snapshot[index];
        assert_eq!(
            message.name(),
            *name,
            "snapshot message {index} should be the current version of {name}, in publication id order; got {:?}",
            snapshot.iter().map(|m| &m.raw).collect::<Vec<_>>()
        );
        assert_eq!(
            message.json(),
            json!(data),
            "snapshot of {name} should carry its latest published data {data:?}, not a pending one"
        );
        assert_eq!(
            message.publication_id(),
            published.publication_id(),
            "snapshot of {name} should keep the publication id it was sent with live"
        );
    }
}

/// Checks that two subscribers receive the same live messages in the same order.
pub(crate) async fn live_two_subscribers(pair: Pair) {
    let server = Server::start(pair).await;
    let mut first = server.subscribe().await;
    let mut second = server.subscribe().await;

    for index in 0..3 {
        server
            .insert(&json!({ "event": "live", "data": index }))
            .await;
    }
    let from_first = first.next_events(3, ARRIVAL).await;
    let from_second = second.next_events(3, ARRIVAL).await;

    for index in 0..3 {
        assert_eq!(
            from_first[index].json(),
            json!(index),
            "first subscriber: message {index} should carry data {index}"
        );
        assert_eq!(
            from_second[index].raw, from_first[index].raw,
            "both subscribers should receive identical message {index}"
        );
    }
}

/// Checks that publication ids grow strictly, live and across a later snapshot.
pub(crate) async fn publication_ids_grow(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    for index in 0..10 {
        let name = if index % 2 == 0 {
            "grow-even"
        } else {
            "grow-odd"
        };
        server
            .insert(&json!({ "event": name, "data": index }))
            .await;
    }
    let live = watcher.next_events(10, ARRIVAL).await;
    let ids: Vec<u64> = live
        .iter()
        .map(|message| message.publication_id())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "live publication ids should grow strictly, got {ids:?}"
    );

    let mut late = server.subscribe().await;
    let snapshot = late.next_events(2, ARRIVAL).await;
    let snapshot_ids: Vec<u64> = snapshot
        .iter()
        .map(|message| message.publication_id())
        .collect();
    assert_eq!(
        snapshot_ids,
        vec![ids[8], ids[9]],
        "the snapshot should hold the last publication of each name, with the same ids"
    );

    server.insert(&json!({ "event": "grow-even" })).await;
    let next = late.next_event(ARRIVAL).await;
    assert!(
        next.publication_id() > ids[9],
        "a new publication id ({}) should exceed every earlier one ({})",
        next.publication_id(),
        ids[9]
    );
}

/// Checks that record ids follow insertion order and publication ids follow
/// publication order, so a future event inserted first gets the larger publication id.
pub(crate) async fn id_sequences_distinct(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    let due_at = future_second(Duration::from_millis(1000));
    let later = server
        .insert_at("later", due_at, json!("inserted first"))
        .await;
    let sooner = server
        .insert(&json!({ "event": "sooner", "data": "inserted second" }))
        .await;
    assert!(
        record_id(&sooner) > record_id(&later),
        "record ids should follow insertion order: {later} then {sooner}"
    );

    let first = watcher.next_event(ARRIVAL).await;
    let second = watcher.next_event(ARRIVAL).await;
    assert_eq!(
        first.name(),
        "sooner",
        "the due event should be published before the future one"
    );
    assert_eq!(
        second.name(),
        "later",
        "the future event should be published when due"
    );
    assert!(
        second.publication_id() > first.publication_id(),
        "publication ids should follow publication order (later {} vs sooner {}), not record ids",
        second.publication_id(),
        first.publication_id()
    );
}

/// Checks that `GET /events` returns 200 with the SSE headers.
pub(crate) async fn sse_headers(pair: Pair) {
    let server = Server::start(pair).await;
    let client = SseClient::connect(server.addr(), &[]).await;

    assert_eq!(client.status, 200, "GET /events should answer 200");
    let content_type = client.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content-type should be text/event-stream, got {content_type:?}"
    );
    let cache_control = client.header("cache-control").unwrap_or_default();
    assert!(
        cache_control.contains("no-cache"),
        "cache-control should contain no-cache, got {cache_control:?}"
    );
    assert_eq!(
        client.header("x-accel-buffering").as_deref(),
        Some("no"),
        "x-accel-buffering should be `no` so proxies do not buffer the stream"
    );
}

/// Checks that each message is exactly `id: N\nevent: NAME\ndata: JSON\n\n`.
pub(crate) async fn sse_message_format(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscriber = server.subscribe().await;

    server
        .insert(&json!({ "event": "format-null", "data": null }))
        .await;
    server
        .insert(&json!({ "event": "format-object", "data": { "k": "v", "n": [1, 2] } }))
        .await;

    let null_message = subscriber.next_event(ARRIVAL).await;
    let expected = format!(
        "id: {}\nevent: format-null\ndata: null\n\n",
        null_message.publication_id()
    );
    assert_eq!(
        null_message.raw, expected,
        "a null data message should be exactly these bytes"
    );

    let object_message = subscriber.next_event(ARRIVAL).await;
    let expected = format!(
        "id: {}\nevent: format-object\ndata: {{\"k\":\"v\",\"n\":[1,2]}}\n\n",
        object_message.publication_id()
    );
    assert_eq!(
        object_message.raw, expected,
        "an object data message should be exactly these bytes, with compact one-line JSON"
    );
}

/// Checks that with `BROKER_KEEP_ALIVE=0.5` comment lines arrive about every half second.
pub(crate) async fn keep_alive_comment(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_KEEP_ALIVE", "0.5")).await;
    let mut subscriber = server.subscribe().await;

    let started = Instant::now();
    let first = subscriber.next_comment(Duration::from_secs(2)).await;
    assert!(
        first.is_some(),
        "a keep-alive comment should arrive within 2 s with a 0.5 s interval"
    );
    let second = subscriber.next_comment(Duration::from_secs(2)).await;
    assert!(
        second.is_some(),
        "a second keep-alive comment should arrive within 2 s of the first"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1800),
        "two keep-alive comments with a 0.5 s interval should take about 1 s, took {elapsed:?}"
    );
}

/// Checks that after 19 of 20 subscribers disconnect, the last one still receives every message.
pub(crate) async fn disconnect_spares_others(pair: Pair) {
    let server = Server::start(pair).await;
    let mut subscribers = Vec::new();
    for _ in 0..20 {
        subscribers.push(server.subscribe().await);
    }

    server.insert(&json!({ "event": "before-drop" })).await;
    for (index, subscriber) in subscribers.iter_mut().enumerate() {
        let message = subscriber.next_event(ARRIVAL).await;
        assert_eq!(
            message.name(),
            "before-drop",
            "subscriber {index} should receive the message sent while all 20 were connected"
        );
    }

    let mut survivor = subscribers.pop().expect("20 subscribers were opened");
    drop(subscribers);

    for index in 0..30 {
        server
            .insert(&json!({ "event": "after-drop", "data": index }))
            .await;
    }
    let messages = survivor.next_events(30, ARRIVAL).await;
    for (index, message) in messages.iter().enumerate() {
        assert_eq!(
            message.json(),
            json!(index),
            "the remaining subscriber should receive message {index} in order after 19 disconnected"
        );
    }

    let mut newcomer = server.subscribe().await;
    let snapshot = newcomer.next_events(2, ARRIVAL).await;
    assert_eq!(
        snapshot[1].json(),
        json!(29),
        "a new subscriber should still get the current versions after the disconnects"
    );
}

/// Messages of 64 KiB inserted while one subscriber stalls: 8 MiB, more
/// than the server's socket send buffer can grow to under Linux's default
/// `tcp_wmem` maximum of 4 MiB, plus the stalled client's small receive buffer.
const FLOOD: usize = 128;

/// Checks that a subscriber that stops reading is disconnected once its
/// queue fills, that another subscriber keeps receiving meanwhile, and that
/// the stalled one gets every message it missed when it resumes.
pub(crate) async fn slow_subscriber_dropped(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_QUEUE_CAPACITY", "4")).await;
    // Linux would grow a normal receive buffer to megabytes.
    let mut stalled = SseClient::connect_with_receive_buffer(server.addr(), 4096).await;
    let mut reader = server.subscribe().await;

    let payload = "x".repeat(64 * 1024);
    let started = now_millis();
    let mut first_id = None;
    for index in 0..FLOOD {
        server
            .insert(&json!({ "event": "flood", "data": [index, payload] }))
            .await;
        let message = reader.next_event(ARRIVAL).await;
        assert_eq!(
            message.json()[0],
            json!(index),
            "the reading subscriber should get message {index} although another subscriber stalls"
        );
        first_id.get_or_insert(message.publication_id());
    }
    let elapsed = now_millis() - started;
    assert!(
        elapsed < 30_000,
        "{FLOOD} inserts with one stalled subscriber took {elapsed} ms, expected well under 30 s"
    );

    // The server frees the stalled subscription without waiting for the
    // client to read again: its connection, which owns it, is closed.
    let mut subscriptions = Value::Null;
    let deadline = Instant::now() + ARRIVAL;
    while Instant::now() < deadline {
        subscriptions = server.get("/health").await.json()["subscriptions"].clone();
        if subscriptions == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        subscriptions, 1,
        "only the reading subscriber should remain once the stalled one's queue is full"
    );
    let metrics = scrape(&server).await;
    assert_eq!(
        metrics.value("broker_slow_clients_dropped_total"),
        1.0,
        "dropping the stalled subscriber should count once"
    );

    // What the kernel had buffered still arrives when the client reads,
    // then the end of the stream.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match stalled.next_item(deadline.into()).await {
            Some(Item::Event(event)) => received.push(event),
            Some(Item::Closed) => break,
            Some(_) => {}
            None => panic!(
                "the stalled subscriber's connection was still open 10 s after the flood; it had received {} of {FLOOD} messages",
                received.len()
            ),
        }
    }
    assert!(
        received.len() < FLOOD,
        "the stalled subscriber received all {FLOOD} messages, so its queue never filled and the test proved nothing"
    );
    for (index, event) in received.iter().enumerate() {
        assert_eq!(
            event.json()[0],
            json!(index),
            "the stalled subscriber's messages before the disconnect should be the first ones, in order"
        );
    }

    // Resuming from its last id brings every later message once, in order.
    let first_id = first_id.expect("the flood published messages");
    let last_id = received
        .last()
        .map_or(first_id - 1, |event| event.publication_id());
    let last_id = last_id.to_string();
    let mut resumed = SseClient::connect(server.addr(), &[("Last-Event-ID", &last_id)]).await;
    assert_eq!(
        resumed.header("broker-resume").as_deref(),
        Some("resumed"),
        "the resumed stream should say it resumed"
    );
    let missed = FLOOD - received.len();
    let rest = resumed.next_events(missed, ARRIVAL).await;
    for (offset, event) in rest.iter().enumerate() {
        assert_eq!(
            event.json()[0],
            json!(received.len() + offset),
            "the resumed stream should bring the missed messages in order"
        );
    }
    resumed
        .assert_no_event(QUIET, "after the missed messages")
        .await;
}

/// Checks that `GET /events` streams on a connection that carried another
/// request first, as when a browser reuses a kept-alive connection.
pub(crate) async fn events_on_reused_connection(pair: Pair) {
    let server = Server::start(pair).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("failed to connect");
    let host = server.addr();
    let health = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(health.as_bytes())
        .await
        .expect("failed to send GET /health");
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).ends_with('}') {
        let read = tokio::time::timeout(ARRIVAL, stream.read(&mut buffer))
            .await
            .expect("no health response in time")
            .expect("failed to read the health response");
        assert!(
            read > 0,
            "the server closed the connection after GET /health"
        );
        response.extend_from_slice(&buffer[..read]);
    }
    let events = format!("GET /events?event=reused HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(events.as_bytes())
        .await
        .expect("failed to send GET /events");

    let mut received = Vec::new();
    let deadline = Instant::now() + ARRIVAL;
    let mut inserted = false;
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if !inserted && text.contains("text/event-stream") {
            server
                .insert(&json!({ "event": "reused", "data": 1 }))
                .await;
            inserted = true;
        }
        if text.contains("event: reused\ndata: 1\n\n") {
            assert!(
                text.starts_with("HTTP/1.1 200"),
                "the stream should answer 200: {text:?}"
            );
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!("no message on the reused connection within {ARRIVAL:?}: {text:?}")
            })
            .expect("failed to read");
        assert!(
            read > 0,
            "the server closed the reused connection: {text:?}"
        );
        received.extend_from_slice(&buffer[..read]);
    }
}
