//! `GET /collection/{event}`: every version in insertion order, unknown names
//! and percent-decoded names.

use std::time::Duration;

use serde_json::json;

use super::{assert_error_body, assert_record_shape, ARRIVAL};
use crate::harness::{future_second, now_secs, percent_encode, Pair, Server};

/// Checks that every version, published or pending, is listed in insertion
/// order, and that a pending one turns to published after it fires.
pub(crate) async fn insertion_order(pair: Pair) {
    let server = Server::start(pair).await;
    let mut watcher = server.subscribe().await;

    let due_at = future_second(Duration::from_millis(1000));
    let mut inserted = Vec::new();
    inserted.push(
        server
            .insert(&json!({ "event": "history", "data": 1 }))
            .await,
    );
    inserted.push(server.insert_at("history", due_at, json!(2)).await);
    server
        .insert(&json!({ "event": "history-other", "data": "not listed" }))
        .await;
    inserted.push(
        server
            .insert(&json!({ "event": "history", "data": 3 }))
            .await,
    );
    inserted.push(
        server
            .insert_at("history", now_secs() - 86_400, json!(4))
            .await,
    );

    let before = server.collection("history").await;
    for record in &before {
        assert_record_shape(record, "/collection entry");
    }
    assert_eq!(
        before, inserted,
        "/collection should list every version in insertion order, as the 201 responses returned them"
    );
    assert_eq!(
        before[1]["published"], false,
        "the future version should be listed as not yet published"
    );

    // Versions 1, 3 and 4 and the other name are published at once, and
    // version 2 fires when due.
    let mut fired = None;
    for _ in 0..5 {
        let message = watcher.next_event(ARRIVAL).await;
        if message.name() == "history" && message.json() == json!(2) {
            fired = Some(message);
            break;
        }
    }
    assert!(
        fired.is_some(),
        "the future version should be published when due"
    );

    let after = server.collection("history").await;
    assert_eq!(
        after.len(),
        4,
        "firing should not add or remove versions: {after:?}"
    );
    assert_eq!(
        after[1]["published"], true,
        "the fired version should now be listed as published: {after:?}"
    );
    for index in [0, 2, 3] {
        assert_eq!(
            after[index], inserted[index],
            "version {index} should be unchanged after another version fired"
        );
    }
    assert_eq!(
        after[1]["id"], inserted[1]["id"],
        "the fired version should keep its record id"
    );
}

/// Checks that an unknown name gives `200` and an empty JSON array.
pub(crate) async fn unknown_empty(pair: Pair) {
    let server = Server::start(pair).await;

    let reply = server.get("/collection/never-inserted").await;
    assert_eq!(
        reply.status, 200,
        "GET /collection of an unknown name should answer 200, got {} {}",
        reply.status, reply.text
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "/collection should answer application/json, got {content_type:?}"
    );
    assert_eq!(
        reply.json(),
        json!([]),
        "an unknown name should give an empty array"
    );
}

/// Checks that names in the path are percent-decoded, and that `+` is not a space.
pub(crate) async fn percent_decoded(pair: Pair) {
    let server = Server::start(pair).await;
    let names = ["a b", "a+b", "café", "100%", "q?x#y", "slash/name"];

    for name in names {
        server.insert(&json!({ "event": name, "data": name })).await;
    }

    let literal_paths = [
        ("/collection/a%20b", "a b"),
        ("/collection/caf%C3%A9", "café"),
        ("/collection/a+b", "a+b"),
    ];
    for (path, name) in literal_paths {
        let reply = server.get(path).await;
        assert_eq!(
            reply.status, 200,
            "GET {path}: expected 200, got {} {}",
            reply.status, reply.text
        );
        let records = reply.json();
        assert_eq!(
            records.as_array().map(Vec::len),
            Some(1),
            "GET {path} should list the one version of {name:?}, got {records}"
        );
        assert_eq!(
            records[0]["event"], name,
            "GET {path} should decode to the name {name:?}"
        );
    }

    for name in names {
        let path = format!("/collection/{}", percent_encode(name));
        let records = server.collection(name).await;
        assert_eq!(
            records.len(),
            1,
            "GET {path} should list the one version of {name:?}, got {records:?}"
        );
        assert_eq!(
            records[0]["data"], name,
            "GET {path} should return the record of {name:?}"
        );
    }
}

/// Checks that a path that does not decode to UTF-8 gets a 4xx JSON error, not a 5xx.
pub(crate) async fn bad_path(pair: Pair) {
    let server = Server::start(pair).await;

    for path in ["/collection/%FF", "/collection/caf%C3"] {
        let reply = server.get(path).await;
        assert!(
            (400..500).contains(&reply.status),
            "GET {path}: a name that is not UTF-8 should get a 4xx, got {} {}",
            reply.status,
            reply.text
        );
        assert_error_body(&reply.json(), None, &format!("GET {path}"));
    }
}
