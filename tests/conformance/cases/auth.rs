//! Publisher and subscriber tokens (HS256 JWTs), the startup warning for
//! open publishing, and CORS with credentials.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cases::{assert_error_body, ARRIVAL, QUIET};
use crate::harness::{now_secs, Launch, Pair, Reply, Server};
use crate::sse::SseClient;

const PUBLISHER_SECRET: &str = "publisher-secret-0123456789abcdef0123";
const SUBSCRIBER_SECRET: &str = "subscriber-secret-0123456789abcdef012";
const OTHER_SECRET: &str = "another-secret-0123456789abcdef0123456";
const COOKIE: &str = "broker_authorization";

/// A token with `alg: none` and an empty signature. It decodes to the
/// header `{"alg":"none","typ":"JWT"}` and the claims `{"exp":4102444800}`
/// (the year 2100).
const ALG_NONE_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQxMDI0NDQ4MDB9.";

/// Signs `claims` with `secret` and `algorithm`.
fn mint_with(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("the test secret is not empty");
    jsonwebtoken::encode(&Header::new(algorithm), claims, &key).expect("the test token signs")
}

/// Signs `claims` with `secret` and HS256.
fn mint(secret: &str, claims: &Value) -> String {
    mint_with(Algorithm::HS256, secret, claims)
}

/// Claims that expire in an hour, with an optional `events` claim.
fn claims(events: Option<&[&str]>) -> Value {
    let mut claims = json!({ "exp": now_secs() + 3600 });
    if let Some(events) = events {
        claims["events"] = json!(events);
    }
    claims
}

/// Sends `POST /insert` with a JSON body and the given extra headers.
async fn insert_with(server: &Server, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut request = server
        .http()
        .post(server.url("/insert"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::from_request(request).await
}

/// Sends `GET path` with the given extra headers.
async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = server.http().get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::from_request(request).await
}

/// Asserts a `401` with error `code`, a JSON error body and a `Bearer`
/// challenge that carries `error="invalid_token"` unless the token is missing.
fn assert_unauthorized(reply: &Reply, code: &str, context: &str) {
    assert_eq!(
        reply.status, 401,
        "{context}: expected 401, got {} {}",
        reply.status, reply.text
    );
    let body = reply.json();
    assert_error_body(&body, None, context);
    assert_eq!(
        body["error"], code,
        "{context}: expected error code {code:?}, got {body}"
    );
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{context}: expected a `WWW-Authenticate: Bearer` challenge, got {challenge:?}"
    );
    let has_error = challenge.contains("error=\"invalid_token\"");
    assert_eq!(
        has_error,
        code != "missing_token",
        "{context}: `error=\"invalid_token\"` belongs in the challenge exactly when a token was sent, got {challenge:?}"
    );
}

/// Starts a server whose publishers need a token.
async fn publisher_server(pair: Pair) -> Server {
    let launch = Launch::new(pair).env("BROKER_PUBLISHER_SECRET", PUBLISHER_SECRET);
    Server::launch(launch).await
}

/// Starts a server whose subscribers need a token, with debug logs on so
/// that the tests can check that no token reaches the log.
async fn subscriber_server(pair: Pair) -> Server {
    let launch = Launch::new(pair)
        .env("BROKER_SUBSCRIBER_SECRET", SUBSCRIBER_SECRET)
        .env("RUST_LOG", "debug");
    Server::launch(launch).await
}

/// Checks that an insert without a token gets `401 missing_token` and
/// stores nothing.
pub(crate) async fn unsigned_insert_rejected(pair: Pair) {
    let server = publisher_server(pair).await;
    let reply = insert_with(&server, &json!({ "event": "guarded" }), &[]).await;
    assert_unauthorized(&reply, "missing_token", "POST /insert without a token");

    let basic = [("authorization", "Basic dXNlcjpwYXNz")];
    let reply = insert_with(&server, &json!({ "event": "guarded" }), &basic).await;
    assert_unauthorized(
        &reply,
        "missing_token",
        "POST /insert with Basic credentials",
    );

    let stored = server.collection("guarded").await;
    assert!(
        stored.is_empty(),
        "rejected inserts should store nothing, got {stored:?}"
    );
}

/// Checks that a signed token in the header or the cookie publishes.
pub(crate) async fn signed_insert_accepted(pair: Pair) {
    let server = publisher_server(pair).await;
    let token = mint(PUBLISHER_SECRET, &claims(None));

    let bearer = format!("Bearer {token}");
    let lower = format!("bearer {token}");
    let cookie = format!("theme=dark; {COOKIE}={token}");
    let sources = [
        ("a Bearer token", "authorization", &bearer),
        ("a lower-case `bearer` scheme", "authorization", &lower),
        ("the token cookie among others", "cookie", &cookie),
    ];
    for (label, name, value) in sources {
        let body = json!({ "event": "signed" });
        let reply = insert_with(&server, &body, &[(name, value.as_str())]).await;
        assert_eq!(
            reply.status, 201,
            "POST /insert with {label}: expected 201, got {} {}",
            reply.status, reply.text
        );
    }

    let query_path = format!("/insert?authorization={token}");
    let request = server
        .http()
        .post(server.url(&query_path))
        .header("content-type", "application/json")
        .body(json!({ "event": "signed" }).to_string());
    let reply = Reply::from_request(request).await;
    assert_unauthorized(&reply, "missing_token", "POST /insert with a query token");

    let stored = server.collection("signed").await;
    assert_eq!(
        stored.len(),
        3,
        "three inserts should be stored, got {stored:?}"
    );
}

/// Checks that expired, wrongly signed and non-HS256 tokens get `401` and
/// store nothing.
pub(crate) async fn bad_tokens_rejected(pair: Pair) {
    let server = publisher_server(pair).await;
    let expired = mint(PUBLISHER_SECRET, &json!({ "exp": now_secs() - 60 }));
    let no_exp = mint(PUBLISHER_SECRET, &json!({ "events": ["bad"] }));
    let cases = [
        ("an expired token", expired, "token_expired"),
        ("a token without `exp`", no_exp, "invalid_token"),
        (
            "a token signed with another secret",
            mint(OTHER_SECRET, &claims(None)),
            "invalid_token",
        ),
        (
            "an HS512 token",
            mint_with(Algorithm::HS512, PUBLISHER_SECRET, &claims(None)),
            "invalid_token",
        ),
        (
            "an `alg: none` token",
            ALG_NONE_TOKEN.to_owned(),
            "invalid_token",
        ),
        ("a malformed token", "not.a.jwt".to_owned(), "invalid_token"),
    ];

    for (label, token, code) in cases {
        let header = format!("Bearer {token}");
        let reply = insert_with(
            &server,
            &json!({ "event": "bad" }),
            &[("authorization", &header)],
        )
        .await;
        let context = format!("POST /insert with {label}");
        assert_unauthorized(&reply, code, &context);
        assert!(
            !reply.text.contains(&token),
            "{context}: the error body should not echo the token: {}",
            reply.text
        );
    }

    let stored = server.collection("bad").await;
    assert!(
        stored.is_empty(),
        "rejected inserts should store nothing, got {stored:?}"
    );
}

/// Checks that an `events` claim lets a publisher insert the names it lists
/// and rejects others with `403` naming the field.
pub(crate) async fn publisher_claim_limits(pair: Pair) {
    let server = publisher_server(pair).await;
    let token = mint(PUBLISHER_SECRET, &claims(Some(&["allowed"])));
    let header = format!("Bearer {token}");
    let headers = [("authorization", header.as_str())];

    let reply = insert_with(&server, &json!({ "event": "forbidden" }), &headers).await;
    assert_eq!(
        reply.status, 403,
        "POST /insert outside the `events` claim: expected 403, got {} {}",
        reply.status, reply.text
    );
    let body = reply.json();
    assert_error_body(&body, Some("event"), "POST /insert outside the claim");
    assert_eq!(
        body["error"], "event_not_allowed",
        "POST /insert outside the claim: expected error code event_not_allowed, got {body}"
    );

    let reply = insert_with(&server, &json!({ "event": "allowed" }), &headers).await;
    assert_eq!(
        reply.status, 201,
        "POST /insert inside the `events` claim: expected 201, got {} {}",
        reply.status, reply.text
    );

    let forbidden = server.collection("forbidden").await;
    assert!(
        forbidden.is_empty(),
        "the rejected insert should store nothing, got {forbidden:?}"
    );
}

/// Checks that without a token `GET /events` and `GET /collection` get
/// `401` while `GET /health` stays open.
pub(crate) async fn subscriber_token_required(pair: Pair) {
    let server = subscriber_server(pair).await;

    let stream = SseClient::connect(server.addr(), &[]).await;
    assert_eq!(
        stream.status, 401,
        "GET /events without a token: expected 401, got {} with headers {:?}",
        stream.status, stream.headers
    );
    let challenge = stream.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "GET /events without a token: expected a Bearer challenge, got {challenge:?}"
    );

    let reply = server.get("/collection/anything").await;
    assert_unauthorized(&reply, "missing_token", "GET /collection without a token");

    let expired = mint(SUBSCRIBER_SECRET, &json!({ "exp": now_secs() - 60 }));
    let path = format!("/collection/anything?authorization={expired}");
    let reply = server.get(&path).await;
    assert_unauthorized(
        &reply,
        "token_expired",
        "GET /collection with an expired query token",
    );
    assert!(
        !reply.text.contains(&expired),
        "the error body should not echo the query token: {}",
        reply.text
    );

    let publisher_token = mint(PUBLISHER_SECRET, &claims(None));
    let header = format!("Bearer {publisher_token}");
    let reply = get_with(
        &server,
        "/collection/anything",
        &[("authorization", &header)],
    )
    .await;
    assert_unauthorized(
        &reply,
        "invalid_token",
        "GET /collection with a token of another secret",
    );

    let health = server.get("/health").await;
    assert_eq!(
        health.status, 200,
        "GET /health should need no token, got {} {}",
        health.status, health.text
    );

    let output = server.output();
    assert!(
        !output.contains(&expired),
        "the server log should not contain the query token:\n{output}"
    );
}

/// Checks that a subscriber token in the header, the query or the cookie
/// each opens a stream that gets the current events.
pub(crate) async fn subscriber_token_sources(pair: Pair) {
    let server = subscriber_server(pair).await;
    server.insert(&json!({ "event": "news", "data": 1 })).await;
    let token = mint(SUBSCRIBER_SECRET, &claims(None));

    let header = format!("Bearer {token}");
    let cookie = format!("theme=dark; {COOKIE}={token}");
    let query_target = format!("/events?authorization={token}");
    let sources = [
        (
            "the Authorization header",
            "/events",
            Some(("Authorization", header.as_str())),
        ),
        ("the query parameter", query_target.as_str(), None),
        ("the cookie", "/events", Some(("Cookie", cookie.as_str()))),
    ];

    for (label, target, header) in sources {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let mut stream = SseClient::connect_to(server.addr(), target, &headers).await;
        assert_eq!(
            stream.status, 200,
            "GET /events with a token in {label}: expected 200, got {} with headers {:?}",
            stream.status, stream.headers
        );
        let event = stream.next_event(ARRIVAL).await;
        assert_eq!(
            event.name(),
            "news",
            "GET /events with a token in {label}: expected the current `news` event, got {:?}",
            event.raw
        );
    }

    let reply = get_with(&server, "/collection/news", &[("authorization", &header)]).await;
    assert_eq!(
        reply.status, 200,
        "GET /collection with a token: expected 200, got {} {}",
        reply.status, reply.text
    );

    let output = server.output();
    assert!(
        !output.contains(&token),
        "the server log should not contain the token:\n{output}"
    );
}

/// Checks that a subscriber token's `events` claim limits the stream and
/// the history, and that a filter outside the claim gets `403`.
pub(crate) async fn subscriber_claim_filters(pair: Pair) {
    let server = subscriber_server(pair).await;
    server
        .insert(&json!({ "event": "public", "data": 1 }))
        .await;
    server
        .insert(&json!({ "event": "secret", "data": 1 }))
        .await;
    let token = mint(SUBSCRIBER_SECRET, &claims(Some(&["public"])));
    let header = format!("Bearer {token}");
    let headers = [("Authorization", header.as_str())];

    let mut stream = SseClient::connect(server.addr(), &headers).await;
    assert_eq!(
        stream.status, 200,
        "GET /events with a limited token: expected 200, got {}",
        stream.status
    );
    let first = stream.next_event(ARRIVAL).await;
    assert_eq!(
        first.name(),
        "public",
        "the snapshot should hold only names in the claim, got {:?}",
        first.raw
    );
    stream
        .assert_no_event(QUIET, "the snapshot should leave out `secret`")
        .await;

    server
        .insert(&json!({ "event": "secret", "data": 2 }))
        .await;
    server
        .insert(&json!({ "event": "public", "data": 2 }))
        .await;
    let live = stream.next_event(ARRIVAL).await;
    assert_eq!(
        live.name(),
        "public",
        "the live stream should skip `secret` and deliver `public`, got {:?}",
        live.raw
    );

    let filtered = SseClient::connect_to(server.addr(), "/events?event=secret", &headers).await;
    assert_eq!(
        filtered.status, 403,
        "GET /events?event=secret outside the claim: expected 403, got {}",
        filtered.status
    );
    let allowed = SseClient::connect_to(server.addr(), "/events?event=public", &headers).await;
    assert_eq!(
        allowed.status, 200,
        "GET /events?event=public inside the claim: expected 200, got {}",
        allowed.status
    );

    let reply = get_with(&server, "/collection/secret", &[("authorization", &header)]).await;
    assert_eq!(
        reply.status, 403,
        "GET /collection/secret outside the claim: expected 403, got {} {}",
        reply.status, reply.text
    );
    assert_error_body(
        &reply.json(),
        Some("event"),
        "GET /collection outside the claim",
    );
    let reply = get_with(&server, "/collection/public", &[("authorization", &header)]).await;
    assert_eq!(
        reply.status, 200,
        "GET /collection/public inside the claim: expected 200, got {} {}",
        reply.status, reply.text
    );
}

/// Checks that the server warns at start when publishing is open, and not
/// when a publisher secret is set, and that it never logs the secret.
pub(crate) async fn open_publishing_warning(pair: Pair) {
    let open = Server::start(pair).await;
    let output = open.output();
    let warning = output
        .lines()
        .find(|line| line.contains("publishing is open"));
    assert!(
        warning.is_some_and(|line| line.contains("WARN")),
        "without a publisher secret the server should log a WARN line saying publishing is open:\n{output}"
    );
    assert!(
        output.contains("BROKER_PUBLISHER_SECRET"),
        "the warning should name BROKER_PUBLISHER_SECRET:\n{output}"
    );

    let guarded = publisher_server(pair).await;
    let output = guarded.output();
    assert!(
        !output.contains("publishing is open"),
        "with a publisher secret the server should not warn that publishing is open:\n{output}"
    );
    assert!(
        !output.contains(PUBLISHER_SECRET),
        "the server log should not contain the secret:\n{output}"
    );
}

/// Sends a CORS preflight for `GET /events` with an `Authorization` header.
async fn preflight(server: &Server, origin: &str) -> Reply {
    let request = server
        .http()
        .request(Method::OPTIONS, server.url("/events"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization");
    Reply::from_request(request).await
}

/// Checks that a list of origins allows credentials on responses and
/// preflights, and that `*` never does.
pub(crate) async fn cors_credentials(pair: Pair) {
    let origin = "https://app.example";
    let listed = Server::launch(Launch::new(pair).env("BROKER_ORIGIN", origin)).await;

    let reply = get_with(&listed, "/collection/x", &[("origin", origin)]).await;
    assert_eq!(
        reply.header("access-control-allow-credentials").as_deref(),
        Some("true"),
        "GET from a listed origin: expected access-control-allow-credentials: true"
    );
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some(origin),
        "GET from a listed origin: expected the origin echoed"
    );

    let reply = preflight(&listed, origin).await;
    assert_eq!(
        reply.header("access-control-allow-credentials").as_deref(),
        Some("true"),
        "preflight from a listed origin: expected access-control-allow-credentials: true"
    );
    let allowed = reply
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed
            .split(',')
            .any(|name| name.trim() == "authorization"),
        "preflight: access-control-allow-headers should list authorization, got {allowed:?}"
    );

    let reply = get_with(
        &listed,
        "/collection/x",
        &[("origin", "https://other.example")],
    )
    .await;
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        None,
        "GET from an unlisted origin: expected no access-control-allow-credentials"
    );

    let any = Server::start(pair).await;
    let reply = get_with(&any, "/collection/x", &[("origin", origin)]).await;
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        None,
        "GET with BROKER_ORIGIN=*: expected no access-control-allow-credentials"
    );
    let reply = preflight(&any, origin).await;
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        None,
        "preflight with BROKER_ORIGIN=*: expected no access-control-allow-credentials"
    );
}
