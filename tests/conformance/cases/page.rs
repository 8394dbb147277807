//! The debug page at `GET /`, and the switch that turns it off.

use crate::cases::assert_error_body;
use crate::harness::{Launch, Pair, Reply, Server};

/// Sends a request with no body and the given extra headers.
async fn send(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = server.http().request(method, server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::from_request(request).await
}

/// Checks that `GET /` returns the page with its content type, a content
/// security policy that allows only the page's own inline script and style,
/// and an entity tag that a revalidation gets `304` for.
pub(crate) async fn served(pair: Pair) {
    let server = Server::start(pair).await;
    let reply = server.get("/").await;
    assert_eq!(reply.status, 200, "GET /: {}", reply.text);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(
        reply.text.starts_with("<!doctype html>"),
        "GET /: expected an HTML page, got {:?}",
        &reply.text[..reply.text.len().min(80)]
    );
    assert!(reply.text.contains("<title>Broker debug page</title>"));

    let policy = reply.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            policy.contains(directive),
            "content-security-policy should contain {directive:?}: {policy:?}"
        );
    }
    assert!(
        !policy.contains("unsafe-inline"),
        "content-security-policy should allow inline code by hash only: {policy:?}"
    );
    assert_eq!(
        reply.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"));

    let etag = reply
        .header("etag")
        .expect("GET /: expected an etag header");
    let revalidated = send(
        &server,
        reqwest::Method::GET,
        "/",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(revalidated.status, 304, "GET / with If-None-Match: {etag}");
    assert!(revalidated.text.is_empty(), "a 304 has no body");
    assert_eq!(revalidated.header("etag"), Some(etag.clone()));
    let stale = send(
        &server,
        reqwest::Method::GET,
        "/",
        &[("if-none-match", "\"stale\"")],
    )
    .await;
    assert_eq!(stale.status, 200, "GET / with a stale If-None-Match");

    let posted = send(&server, reqwest::Method::POST, "/", &[]).await;
    assert_eq!(posted.status, 405, "POST /: {}", posted.text);
    assert_error_body(&posted.json(), None, "POST /");
}

/// Checks that `BROKER_DEBUG_PAGE=false` makes `/` an unknown route for
/// every method, and that the `listening` line reports it.
pub(crate) async fn switched_off(pair: Pair) {
    let server = Server::launch(Launch::new(pair).env("BROKER_DEBUG_PAGE", "false")).await;
    assert!(
        server.listening_line().contains("debug_page=false"),
        "the `listening` line should contain debug_page=false: {:?}",
        server.listening_line()
    );
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let context = format!("{method} / with the page off");
        let reply = send(&server, method, "/", &[]).await;
        assert_eq!(reply.status, 404, "{context}: {}", reply.text);
        let body = reply.json();
        assert_error_body(&body, None, &context);
        assert_eq!(body["error"], "not_found", "{context}: {body}");
    }
    let health = server.get("/health").await;
    assert_eq!(health.status, 200, "the API stays on: {}", health.text);
}
