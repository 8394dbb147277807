//! Connections: the connection limit, the deadline for request headers, and
//! what many short-lived subscribers leave behind.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::metrics::parse_exposition;
use super::ARRIVAL;
use crate::harness::{poll_until, Launch, Pair, Server};
use crate::sse::SseClient;

/// Sends `GET path` on a new connection that requests a close after the
/// response, and returns the status code and the body.
async fn get_once(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("failed to send the request");
    let mut response = Vec::new();
    tokio::time::timeout(ARRIVAL, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no complete response within {ARRIVAL:?}"))
        .expect("failed to read the response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: response without a header end: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: invalid status line in {head:?}"));
    (status, body.to_owned())
}

/// Returns the `GET /health` body, asserting a `200`.
async fn health(addr: SocketAddr) -> Value {
    let (status, body) = get_once(addr, "/health").await;
    assert_eq!(status, 200, "GET /health: {body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("GET /health body is not JSON: {body}"))
}

/// Checks that requests on connections past `BROKER_MAX_CONNECTIONS` get a
/// `503` JSON error, except `GET /health`, and that a closed connection
/// frees its place.
pub(crate) async fn connection_limit(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_MAX_CONNECTIONS", "3")).await;
    let first = server.subscribe().await;
    let _second = server.subscribe().await;
    let _third = server.subscribe().await;

    let (status, body) = get_once(server.addr(), "/collection/full").await;
    assert_eq!(status, 503, "GET /collection past the limit: {body}");
    let error: Value = serde_json::from_str(&body).expect("the 503 body should be JSON");
    assert_eq!(error["error"], "too_many_connections", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("BROKER_MAX_CONNECTIONS"),
        "the message should name the setting to raise: {message}"
    );

    let refused = SseClient::connect(server.addr(), &[]).await;
    assert_eq!(
        refused.status, 503,
        "GET /events past the limit should get 503"
    );
    assert_eq!(
        refused.header("connection").as_deref(),
        Some("close"),
        "a connection past the limit should be closed after its response"
    );
    drop(refused);

    let (status, body) = get_once(server.addr(), "/health").await;
    assert_eq!(
        status, 200,
        "GET /health should be served past the limit, for monitoring: {body}"
    );
    let (status, body) = get_once(server.addr(), "/metrics").await;
    assert_eq!(
        status, 200,
        "GET /metrics should be served past the limit, for monitoring: {body}"
    );
    let metrics = parse_exposition(&body);
    assert_eq!(
        metrics.value("broker_rejected_requests_total{code=\"too_many_connections\"}"),
        2.0,
        "the GET /collection and the GET /events past the limit should count as rejected"
    );
    assert_eq!(
        metrics.value("broker_open_connections"),
        3.0,
        "only the connections within the limit should count as open"
    );

    drop(first);
    let freed = poll_until(ARRIVAL, || async {
        get_once(server.addr(), "/collection/full").await.0 == 200
    })
    .await;
    assert!(
        freed,
        "closing a stream should free its place under the limit"
    );
}

/// Waits up to 5 s for the server to close `stream`, reading and dropping
/// anything it sends first, such as a `408` response. Returns the time from
/// `started` to the close, or `None` if the stream stayed open.
async fn wait_for_close(stream: &mut TcpStream, started: Instant) -> Option<Duration> {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Checks that connections that send nothing, or part of a request's
/// headers and then nothing, are closed after `BROKER_REQUEST_TIMEOUT`.
pub(crate) async fn header_timeout(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_REQUEST_TIMEOUT", "1")).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr())
        .await
        .expect("failed to connect");
    let mut partial = TcpStream::connect(server.addr())
        .await
        .expect("failed to connect");
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHost: broker\r\n")
        .await
        .expect("failed to send part of a request");

    for (stream, what) in [
        (&mut silent, "a connection that sent nothing"),
        (&mut partial, "a connection with unfinished headers"),
    ] {
        let closed = wait_for_close(stream, started).await;
        let Some(elapsed) = closed else {
            panic!("{what} was still open after 5 s; the request timeout is 1 s");
        };
        assert!(
            elapsed >= Duration::from_millis(800),
            "{what} was closed after {elapsed:?}, before the 1 s request timeout"
        );
    }

    let (status, _) = get_once(server.addr(), "/health").await;
    assert_eq!(status, 200, "a complete request should still be served");
}

/// Checks that an insert whose body stops arriving gets a `408` JSON error
/// after `BROKER_REQUEST_TIMEOUT`, and that a `Content-Length` over the body
/// limit gets `413` before any of the body is sent.
pub(crate) async fn body_timeout(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_REQUEST_TIMEOUT", "1")).await;
    let mut stream = TcpStream::connect(server.addr())
        .await
        .expect("failed to connect");
    let request = "POST /insert HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\"";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("failed to send part of a request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect(
            "an insert with a stalled body was still open after 5 s; the request timeout is 1 s",
        )
        .expect("failed to read the response");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "a stalled body should get 408: {response:?}"
    );
    assert!(
        response.contains("\"error\":\"request_timeout\""),
        "the 408 should have a JSON body naming the error: {response:?}"
    );

    let mut stream = TcpStream::connect(server.addr())
        .await
        .expect("failed to connect");
    let request = "POST /insert HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .expect("failed to send the request head");
    let mut head = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_millis(800), stream.read(&mut head))
        .await
        .expect("a Content-Length over the limit should get a response before the timeout")
        .expect("failed to read the response");
    let head = String::from_utf8_lossy(&head[..read]);
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "a Content-Length over the limit should get 413: {head:?}"
    );
    assert!(
        wait_for_close(&mut stream, Instant::now()).await.is_some(),
        "the connection should be closed after the 413 rather than wait for the body"
    );
    assert_eq!(
        server.collection("x").await.len(),
        0,
        "nothing should be stored"
    );
}

/// Subscribers opened and closed in the churn test, after the warm-up.
const CHURN: usize = 2000;

/// Subscribers open at the same time during the churn test.
const CHURN_BATCH: usize = 50;

/// Resident memory the server may gain over the churn test, in KiB. A leak
/// of 2 KiB per subscriber, less than one connection's buffers, would
/// exceed it; the allocator's own slack stays well under it.
const CHURN_GROWTH_KIB: u64 = 4 * 1024;

/// Checks that thousands of subscribers that connect and leave, some after
/// reading and some without, leave no connection, subscription or memory
/// behind.
pub(crate) async fn churn_leaves_nothing(pair: Pair) {
    let server = Server::start(pair).await;
    server
        .insert(&json!({ "event": "churn", "data": "x".repeat(1024) }))
        .await;

    // The test's HTTP client keeps the insert's connection open for reuse;
    // that and the health request itself are the connections to expect.
    let open = health(server.addr()).await["connections"].clone();

    // The first connections size the runtime's thread pools and buffers.
    churn(server.addr(), 200).await;
    let baseline = settled(&server, &open).await;
    churn(server.addr(), CHURN).await;
    let after = settled(&server, &open).await;
    let growth = after.saturating_sub(baseline);
    assert!(
        growth < CHURN_GROWTH_KIB,
        "resident memory grew by {growth} KiB over {CHURN} subscribers (from {baseline} to {after} KiB), expected under {CHURN_GROWTH_KIB} KiB"
    );
}

/// Opens `count` subscribers, [`CHURN_BATCH`] at a time, and closes each:
/// half right after the response headers, half after the first message.
async fn churn(addr: SocketAddr, count: usize) {
    for batch in 0..count / CHURN_BATCH {
        let clients = (0..CHURN_BATCH).map(|index| async move {
            let mut client = SseClient::connect(addr, &[]).await;
            assert_eq!(client.status, 200, "GET /events during the churn");
            if (batch + index) % 2 == 0 {
                client.next_event(ARRIVAL).await;
            }
        });
        futures_util::future::join_all(clients).await;
    }
}

/// Waits until the server counts no subscription and `open` connections,
/// then returns its resident memory in KiB.
async fn settled(server: &Server, open: &Value) -> u64 {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let health = health(server.addr()).await;
        if health["subscriptions"] == 0 && health["connections"] == *open {
            return server.resident_kib();
        }
        assert!(
            Instant::now() < deadline,
            "the server should count no subscription and {open} connections once every client left: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
