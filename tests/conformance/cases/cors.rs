//! CORS headers with the default `*`, with a list of origins, and on preflight.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Launch, Pair, Reply, Server};
use crate::sse::SseClient;

const ALLOWED_A: &str = "https://a.example";
const ALLOWED_B: &str = "https://b.example";

/// Sends a request with an `Origin` header and an optional JSON body.
async fn request_from(
    server: &Server,
    origin: &str,
    method: Method,
    path: &str,
    body: Option<(&str, String)>,
) -> Reply {
    let mut request = server
        .http()
        .request(method, server.url(path))
        .header("origin", origin);
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    Reply::from_request(request).await
}

/// Sends a preflight `OPTIONS` request.
async fn send_preflight(server: &Server, origin: &str, path: &str, method: &str) -> Reply {
    let request = server
        .http()
        .request(Method::OPTIONS, server.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "content-type, last-event-id",
        );
    Reply::from_request(request).await
}

/// Splits a comma-separated header value into lower-case items.
fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Checks that with the default origin setting every response carries
/// `access-control-allow-origin: *`, errors included.
pub(crate) async fn default_any(pair: Pair) {
    let server = Server::start(pair).await;
    let origin = "https://anywhere.example";
    let valid = Some(("application/json", json!({ "event": "cors" }).to_string()));
    let invalid = Some(("application/json", "{".to_owned()));
    let form = Some(("application/x-www-form-urlencoded", "event=cors".to_owned()));
    let requests = [
        ("201 insert", Method::POST, "/insert", valid, 201),
        ("200 collection", Method::GET, "/collection/cors", None, 200),
        ("400 invalid JSON", Method::POST, "/insert", invalid, 400),
        ("404 unknown route", Method::GET, "/nope", None, 404),
        ("405 wrong method", Method::GET, "/insert", None, 405),
        ("415 form body", Method::POST, "/insert", form, 415),
    ];

    for (label, method, path, body, status) in requests {
        let reply = request_from(&server, origin, method, path, body).await;
        assert_eq!(
            reply.status, status,
            "{label}: expected status {status}, got {} {}",
            reply.status, reply.text
        );
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some("*"),
            "{label}: expected access-control-allow-origin `*`"
        );
    }

    let stream = SseClient::connect(server.addr(), &[("Origin", origin)]).await;
    assert_eq!(
        stream.header("access-control-allow-origin").as_deref(),
        Some("*"),
        "GET /events: expected access-control-allow-origin `*`"
    );
}

/// Checks that with a list of origins a listed origin is echoed with
/// `vary: origin`, and any other origin gets no allow-origin header.
pub(crate) async fn origin_list(pair: Pair) {
    let origins = format!("{ALLOWED_A},{ALLOWED_B}");
    let server = Server::launch(Launch::new(pair).env("BROKER_ORIGIN", &origins)).await;

    for origin in [ALLOWED_A, ALLOWED_B] {
        let reply = request_from(&server, origin, Method::GET, "/collection/x", None).await;
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some(origin),
            "GET /collection from listed origin {origin}: the origin should be echoed"
        );
        let vary = list_items(&reply.header("vary").unwrap_or_default());
        assert!(
            vary.iter().any(|item| item == "origin"),
            "GET /collection from listed origin {origin}: expected `vary: origin`, got {vary:?}"
        );
    }

    let insert = Some(("application/json", json!({ "event": "cors" }).to_string()));
    let reply = request_from(&server, ALLOWED_A, Method::POST, "/insert", insert).await;
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_A),
        "POST /insert from a listed origin: the origin should be echoed"
    );
    let invalid = Some(("application/json", "{".to_owned()));
    let reply = request_from(&server, ALLOWED_B, Method::POST, "/insert", invalid).await;
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_B),
        "400 from a listed origin: the origin should be echoed"
    );

    let unlisted = [
        "https://c.example",
        "https://a.example.evil.test",
        "http://a.example",
    ];
    for origin in unlisted {
        // A page from another site must not publish, even with a
        // text/plain body that a browser sends without a preflight.
        let insert = Some(("text/plain", json!({ "event": "forged" }).to_string()));
        let reply = request_from(&server, origin, Method::POST, "/insert", insert).await;
        assert_eq!(
            reply.status, 403,
            "POST /insert from unlisted origin {origin}: expected 403, got {} {}",
            reply.status, reply.text
        );
        assert_eq!(
            reply.json()["error"],
            "origin_not_allowed",
            "POST /insert from unlisted origin {origin}: {}",
            reply.text
        );

        let reply = request_from(&server, origin, Method::GET, "/collection/x", None).await;
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "GET /collection from unlisted origin {origin}: expected no allow-origin header"
        );
        let reply = send_preflight(&server, origin, "/insert", "POST").await;
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "preflight from unlisted origin {origin}: expected no allow-origin header"
        );
    }

    let reply = send_preflight(&server, ALLOWED_B, "/insert", "POST").await;
    assert!(
        (200..300).contains(&reply.status),
        "preflight from a listed origin should answer 2xx, got {} {}",
        reply.status,
        reply.text
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_B),
        "preflight from a listed origin: the origin should be echoed"
    );

    let stream = SseClient::connect(server.addr(), &[("Origin", ALLOWED_A)]).await;
    assert_eq!(
        stream.header("access-control-allow-origin").as_deref(),
        Some(ALLOWED_A),
        "GET /events from a listed origin: the origin should be echoed"
    );

    let forged = server.collection("forged").await;
    assert!(
        forged.is_empty(),
        "inserts from unlisted origins must store nothing: {forged:?}"
    );
}

/// Checks that `OPTIONS` on any path returns 2xx with the allowed methods and headers.
pub(crate) async fn preflight(pair: Pair) {
    let server = Server::start(pair).await;
    let origin = "https://anywhere.example";
    let requests = [
        ("/insert", "POST"),
        ("/events", "GET"),
        ("/collection/name", "GET"),
    ];

    for (path, method) in requests {
        let context = format!("OPTIONS {path} requesting {method}");
        let reply = send_preflight(&server, origin, path, method).await;
        assert!(
            (200..300).contains(&reply.status),
            "{context}: expected 2xx, got {} {}",
            reply.status,
            reply.text
        );
        assert_eq!(
            reply.header("access-control-allow-origin").as_deref(),
            Some("*"),
            "{context}: expected access-control-allow-origin `*`"
        );
        let methods = list_items(
            &reply
                .header("access-control-allow-methods")
                .unwrap_or_default(),
        );
        for expected in ["get", "post", "options"] {
            assert!(
                methods.iter().any(|item| item == expected),
                "{context}: access-control-allow-methods should list {}, got {methods:?}",
                expected.to_ascii_uppercase()
            );
        }
        let headers = list_items(
            &reply
                .header("access-control-allow-headers")
                .unwrap_or_default(),
        );
        for expected in ["content-type", "authorization", "last-event-id"] {
            assert!(
                headers.iter().any(|item| item == expected),
                "{context}: access-control-allow-headers should list {expected}, got {headers:?}"
            );
        }
    }

    // Paths outside the API get the JSON 404, not a preflight response.
    for path in ["/nope", "/collection/"] {
        let reply = send_preflight(&server, origin, path, "GET").await;
        assert_eq!(
            reply.status, 404,
            "OPTIONS {path}: expected 404, got {} {}",
            reply.status, reply.text
        );
        assert_eq!(
            reply.json()["error"],
            "not_found",
            "OPTIONS {path}: expected a JSON 404 body, got {}",
            reply.text
        );
    }
}
