//! The HTTP API without a web framework: request checks, error bodies, CORS
//! and SSE headers. Each runtime routes requests here, so that every runtime
//! gives an API request the same status, JSON body and SSE framing. Below
//! the API, protocol errors are left to each runtime's HTTP server.

use bytes::Bytes;
use serde::Serialize;
use tracing::{debug, error};

use crate::auth::{self, AuthError, Credentials, Role};
use crate::broker::{Broker, SubscribeOptions, Subscription};
use crate::config::AllowedOrigins;
use crate::connection::Connection;
use crate::error::{Error, InsertError};
use crate::event::{validate_event, NewEvent};
use crate::metrics;

/// Headers of every `GET /events` response.
pub const SSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// Methods allowed by a CORS preflight.
pub const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";

/// Request headers allowed by a CORS preflight.
pub const ALLOWED_HEADERS: &str = "content-type, authorization, last-event-id";

/// How long a graceful shutdown waits for requests and streams in flight
/// before the server returns anyway.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How long browsers may cache a preflight response, in seconds.
pub const PREFLIGHT_MAX_AGE: &str = "86400";

/// A request that the API rejects, with its status and a JSON body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The insert body is not a valid event: `400`.
    #[error(transparent)]
    Insert(#[from] InsertError),

    /// The body is larger than the configured limit: `413`.
    #[error("request body is larger than the limit of {limit} bytes; send a smaller body or raise BROKER_BODY_LIMIT")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// The body did not arrive within the request timeout: `408`.
    #[error("the request body did not arrive within {} s; send the whole body without pauses, or raise BROKER_REQUEST_TIMEOUT", .timeout.as_secs_f64())]
    BodyTimeout {
        /// The request timeout.
        timeout: std::time::Duration,
    },

    /// The body could not be read from the connection: `400`.
    #[error("failed to read the request body: {reason}")]
    BodyUnreadable {
        /// The transport's description of the failure.
        reason: String,
    },

    /// The content type is neither JSON nor plain text: `415`.
    #[error("content type {content_type:?} is not supported; send Content-Type: application/json or text/plain (with curl: -H 'Content-Type: application/json')")]
    UnsupportedMediaType {
        /// The content type sent.
        content_type: String,
    },

    /// No route matches the path: `404`.
    #[error(
        "no route for {path}; the API is POST /insert, GET /events and GET /collection/{{event}}, described at GET /openapi.yaml"
    )]
    NotFound {
        /// The path requested.
        path: String,
    },

    /// The route exists but not for this method: `405`.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path requested.
        path: String,
    },

    /// The path does not decode to a valid event name: `400`.
    #[error("the path does not name a valid event: {reason}")]
    InvalidPath {
        /// The decoding error.
        reason: String,
    },

    /// A resume position that is not a publication id: `400`.
    #[error("{source_name} is {value:?}, which is not a publication id; send the `id` of the last message received (a whole number), or omit it")]
    InvalidLastEventId {
        /// The source: the `Last-Event-ID` header or the `lastEventId` query parameter.
        source_name: &'static str,
        /// The value sent.
        value: String,
    },

    /// An event name in a filter that no event can have: `400`.
    #[error("the `event` filter {value:?} is not a valid event name: {reason}")]
    InvalidFilter {
        /// The name sent, after percent-decoding.
        value: String,
        /// The reason that no event can have that name.
        reason: String,
    },

    /// A missing, invalid or expired token (`401`), or an event name outside
    /// the token's `events` claim (`403`).
    #[error(transparent)]
    Auth(#[from] AuthError),

    /// An insert from a web page whose origin is not allowed: `403`.
    #[error("origin {origin} is not allowed to publish; add it to BROKER_ORIGIN to publish from that site")]
    OriginNotAllowed {
        /// The `Origin` header sent.
        origin: String,
    },

    /// The connection is past the connection limit: `503`.
    #[error("the server has reached its limit of {limit} open connections; retry later, or raise BROKER_MAX_CONNECTIONS")]
    TooManyConnections {
        /// The configured limit.
        limit: usize,
    },

    /// The broker cannot serve the request now: `503`. The message carries
    /// the cause, such as the I/O error of a failed write.
    #[error("the broker is unavailable: {}", with_causes(.0))]
    Unavailable(#[source] Error),
}

impl ApiError {
    /// Returns the HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::Insert(_)
            | Self::BodyUnreadable { .. }
            | Self::InvalidPath { .. }
            | Self::InvalidLastEventId { .. }
            | Self::InvalidFilter { .. } => 400,
            Self::Auth(error) => error.status(),
            Self::OriginNotAllowed { .. } => 403,
            Self::BodyTimeout { .. } => 408,
            Self::NotFound { .. } => 404,
            Self::MethodNotAllowed { .. } => 405,
            Self::BodyTooLarge { .. } => 413,
            Self::UnsupportedMediaType { .. } => 415,
            Self::TooManyConnections { .. } | Self::Unavailable(_) => 503,
        }
    }

    /// Returns a short, stable code for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Insert(error) => error.code(),
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyUnreadable { .. } => "body_unreadable",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::InvalidPath { .. } => "invalid_path",
            Self::InvalidLastEventId { .. } => "invalid_last_event_id",
            Self::InvalidFilter { .. } => "invalid_filter",
            Self::Auth(error) => error.code(),
            Self::OriginNotAllowed { .. } => "origin_not_allowed",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::Unavailable(Error::ShuttingDown) => "shutting_down",
            Self::Unavailable(Error::Storage(_)) => "storage_unavailable",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Returns the JSON body: `{"error": code, "message": text, "field": name}`,
    /// where `field` appears only when one field is at fault.
    pub fn to_json(&self) -> Bytes {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        let field = match self {
            Self::Insert(error) => error.field(),
            Self::InvalidLastEventId { source_name, .. } => Some(*source_name),
            Self::InvalidFilter { .. } => Some("event"),
            Self::Auth(error) => error.field(),
            _ => None,
        };
        let body = Body {
            error: self.code(),
            message: self.to_string(),
            field,
        };
        serde_json::to_vec(&body)
            .expect("an error body serializes")
            .into()
    }

    /// Returns the headers that the error response carries besides its
    /// content type. [`ApiError::Auth`] gets a `WWW-Authenticate` challenge.
    /// [`ApiError::TooManyConnections`] gets `Connection: close`, which frees
    /// the file descriptor. So do the body errors, because they leave the
    /// rest of the body unread and the connection cannot carry another
    /// request.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Auth(error) => vec![("www-authenticate", error.www_authenticate())],
            Self::TooManyConnections { .. } => vec![
                ("retry-after", "1".to_owned()),
                ("connection", "close".to_owned()),
            ],
            Self::BodyTimeout { .. } | Self::BodyTooLarge { .. } | Self::BodyUnreadable { .. } => {
                vec![("connection", "close".to_owned())]
            }
            _ => Vec::new(),
        }
    }
}

/// Formats `error` followed by its causes, for a storage failure such as
/// "storage append failed: File too large (os error 27); retry later".
fn with_causes(error: &Error) -> String {
    let mut text = crate::error::with_causes(error);
    let unknown = matches!(error, Error::Storage(storage) if matches!(**storage, crate::StorageError::CommitUnknown { .. }));
    if matches!(error, Error::Storage(_)) && !unknown {
        text.push_str("; retry later");
    }
    text
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Insert(error) => Self::Insert(error),
            other => {
                match &other {
                    Error::ShuttingDown => debug!("request rejected during shutdown"),
                    _ => {
                        error!(error = %other, source = ?std::error::Error::source(&other), "request failed")
                    }
                }
                Self::Unavailable(other)
            }
        }
    }
}

/// Handles `POST /insert`: checks the origin, the publisher token and the
/// content type, parses the body and stores the event. Returns the record
/// for a `201`.
///
/// With a publisher secret set, `credentials` must carry a valid token
/// whose `events` claim, if any, lists the event's name. See [`auth`].
///
/// With a list of allowed origins, a request whose `Origin` header is not
/// on it is rejected. CORS alone would only hide the response from the
/// page, because a `text/plain` POST needs no preflight and so would still
/// be stored. Requests without `Origin`, such as from curl or a server, are
/// not affected.
///
/// # Errors
///
/// Returns an [`ApiError`] for a disallowed origin, a missing or rejected
/// token, or a bad content type or body (nothing stored), and for a storage
/// failure.
pub async fn insert(
    broker: &Broker,
    origin: Option<&str>,
    credentials: Credentials<'_>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Bytes, ApiError> {
    if let Some(origin) = origin {
        if broker
            .config()
            .allowed_origins
            .allow(Some(origin))
            .is_none()
        {
            return Err(ApiError::OriginNotAllowed {
                origin: origin.to_owned(),
            });
        }
    }
    let secret = broker.config().publisher_secret.as_ref();
    let grant = auth::authorize(secret, Role::Publisher, credentials, None)?;
    check_content_type(content_type)?;
    let event = NewEvent::from_json(body)?;
    grant.check(Role::Publisher, event.event())?;
    let record = broker.insert(event).await?;
    Ok(to_json(&record))
}

/// Checks that a request to `path` may be served on its connection: the
/// connection is within the connection limit, or the request is
/// `GET /health` or `GET /metrics`, which monitoring needs most when the
/// server is full.
/// Requests without a [`Connection`], as when a program serves the API with
/// its own server loop, are not limited.
///
/// The runtimes close a connection past the limit after each response.
///
/// # Errors
///
/// Returns [`ApiError::TooManyConnections`] for a connection past the limit.
pub fn admit(broker: &Broker, connection: Option<&Connection>, path: &str) -> Result<(), ApiError> {
    match connection {
        Some(connection)
            if !connection.is_admitted() && path != "/health" && path != metrics::PATH =>
        {
            Err(ApiError::TooManyConnections {
                limit: broker.connections().limit(),
            })
        }
        _ => Ok(()),
    }
}

/// The response header that shows a resuming client how its stream starts:
/// `resumed` when it gets every publication after its id, `reset` when its
/// id is unknown to this log and it gets the snapshot instead.
pub const RESUME_HEADER: &str = "broker-resume";

/// Handles `GET /events`: reads the resume position and name filter, and
/// subscribes. Returns the stream and the value of [`RESUME_HEADER`], if any.
///
/// `query` is the raw query string. It may carry `event` (repeated, one name
/// each), `lastEventId`, for a first request that resumes, and
/// `authorization`, a subscriber token. The `Last-Event-ID` header, which
/// browsers send on their own when they reconnect, takes precedence over
/// `lastEventId`. `connection`, when given, is closed if the subscriber
/// stops reading and its queue fills up.
///
/// With a subscriber secret set, the request needs a valid token. A token
/// with an `events` claim limits the stream to those names, and a filter
/// naming any other is rejected.
///
/// # Errors
///
/// Returns [`ApiError::Auth`] for a missing or rejected token or a filter
/// outside its claim, [`ApiError::InvalidLastEventId`] or
/// [`ApiError::InvalidFilter`] for a bad request, and
/// [`ApiError::Unavailable`] during shutdown.
pub async fn events(
    broker: &Broker,
    query: Option<&str>,
    last_event_id: Option<&str>,
    credentials: Credentials<'_>,
    connection: Option<&Connection>,
) -> Result<(Subscription, Option<&'static str>), ApiError> {
    let secret = broker.config().subscriber_secret.as_ref();
    let grant = auth::authorize(secret, Role::Subscriber, credentials, query)?;
    let mut options = subscribe_options(query, last_event_id)?;
    options.events = grant.limit_filter(options.events.take())?;
    if let Some(connection) = connection {
        options = options.close_on_overflow(connection.clone());
    }
    let resuming = options.after.is_some();
    let subscription = broker.subscribe(options).await?;
    let resume = match (resuming, subscription.is_reset()) {
        (false, _) => None,
        (true, false) => Some("resumed"),
        (true, true) => Some("reset"),
    };
    Ok((subscription, resume))
}

fn subscribe_options(
    query: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<SubscribeOptions, ApiError> {
    let mut options = SubscribeOptions::default();
    let mut query_id = None;
    let mut events = Vec::new();
    let pairs = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty());
    for pair in pairs {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode_form(key).unwrap_or_else(|lossy| lossy);
        match key.as_str() {
            "event" => {
                let value = decode_form(value).map_err(|lossy| ApiError::InvalidFilter {
                    value: lossy,
                    reason: "it is not UTF-8 after percent-decoding".to_owned(),
                })?;
                validate_event(&value).map_err(|reason| ApiError::InvalidFilter {
                    value: value.clone(),
                    reason: reason.to_string(),
                })?;
                events.push(value);
            }
            "lastEventId" => query_id = Some(decode_form(value).unwrap_or_else(|lossy| lossy)),
            // Other parameters, such as cache busters, are ignored.
            _ => {}
        }
    }
    if !events.is_empty() {
        options = options.events(events);
    }

    // An empty value means no id, as in the SSE specification's handling of
    // an empty `id:` field.
    let header = last_event_id.map(str::trim).filter(|id| !id.is_empty());
    let position = match (header, query_id.as_deref().map(str::trim)) {
        (Some(id), _) => Some(("Last-Event-ID", id)),
        (None, Some(id)) if !id.is_empty() => Some(("lastEventId", id)),
        _ => None,
    };
    if let Some((source_name, id)) = position {
        let after = match id.parse::<u64>() {
            Ok(after) => after,
            // A whole number past the largest id was never issued, so the
            // client gets the snapshot, as for any id ahead of the log.
            Err(error) if *error.kind() == std::num::IntErrorKind::PosOverflow => u64::MAX,
            Err(_) => {
                return Err(ApiError::InvalidLastEventId {
                    source_name,
                    value: id.to_owned(),
                })
            }
        };
        options = options.after(after);
    }
    Ok(options)
}

/// Handles `GET /collection/{event}`, given the path segment as sent,
/// still percent-encoded, and the raw query string.
///
/// Malformed escapes such as `%zz` stay as they are, as in most URL
/// decoders; an escape that decodes to invalid UTF-8 is rejected. With a
/// subscriber secret set, the request needs a token as for [`events`],
/// and its `events` claim must list the name.
///
/// # Errors
///
/// Returns [`ApiError::Auth`] for a missing or rejected token or a name
/// outside its claim, [`ApiError::InvalidPath`] when the segment does not
/// decode to UTF-8, and [`ApiError::Unavailable`] when storage fails.
pub async fn collection(
    broker: &Broker,
    segment: &str,
    query: Option<&str>,
    credentials: Credentials<'_>,
) -> Result<Bytes, ApiError> {
    let secret = broker.config().subscriber_secret.as_ref();
    let grant = auth::authorize(secret, Role::Subscriber, credentials, query)?;
    let event = decode_segment(segment)?;
    grant.check(Role::Subscriber, &event)?;
    let records = broker.collection(&event).await?;
    Ok(to_json(&records))
}

/// Decodes a path segment into an event name, rejecting segments that no
/// event name can decode from, as the `event` filter of `GET /events` does.
fn decode_segment(segment: &str) -> Result<std::borrow::Cow<'_, str>, ApiError> {
    let event = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|error| ApiError::InvalidPath {
            reason: format!(
                "{segment:?} is not UTF-8 after percent-decoding ({error}); \
                 percent-encode the UTF-8 bytes of the name"
            ),
        })?;
    validate_event(&event).map_err(|error| ApiError::InvalidPath {
        reason: format!("{event:?}: {error}"),
    })?;
    Ok(event)
}

/// Decodes one key or value of an `application/x-www-form-urlencoded`
/// query: `+` is a space and `%XX` a byte. Returns the lossy decoding as the
/// error when the bytes are not UTF-8.
fn decode_form(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    String::from_utf8(bytes).map_err(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Handles `GET /health`: `200` when the broker runs and its storage reads
/// and writes, else `503` with the cause.
///
/// The body also counts open connections (this request's included) and
/// subscriptions: `{"status":"ok","storage":"ok","connections":1,"subscriptions":0}`.
///
/// # Errors
///
/// Returns [`ApiError::Unavailable`] when the check fails.
pub async fn health(broker: &Broker) -> Result<Bytes, ApiError> {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
        storage: &'static str,
        connections: usize,
        subscriptions: usize,
    }
    broker.health().await?;
    Ok(to_json(&Health {
        status: "ok",
        storage: "ok",
        connections: broker.connections().count(),
        subscriptions: broker.subscription_count(),
    }))
}

/// The path at which the API description is served.
pub const OPENAPI_PATH: &str = "/openapi.yaml";

/// The API description, an OpenAPI 3.0 document, served at [`OPENAPI_PATH`].
pub const OPENAPI: &str = include_str!("../docs/openapi.yaml");

/// The media type of [`OPENAPI`] (RFC 9512).
pub const OPENAPI_CONTENT_TYPE: &str = "application/yaml";

/// Returns the route that serves `path`, for the request duration
/// histogram, or `None` for a path that gets `404`.
pub fn route(broker: &Broker, path: &str) -> Option<metrics::Route> {
    if path == metrics::PATH && !broker.config().metrics {
        return None;
    }
    if path != metrics::PATH && !is_route(path) {
        return None;
    }
    metrics::Route::from_path(path)
}

/// Handles `GET /metrics`: returns the broker's metrics in the Prometheus
/// text format, to send with the `Content-Type`
/// [`metrics::CONTENT_TYPE`]. The runtimes route it only while
/// [`Config::metrics`](crate::Config::metrics) is set.
pub fn metrics(broker: &Broker) -> String {
    broker.metrics().render()
}

/// The route prefix of `GET /collection/{event}`.
pub const COLLECTION_PREFIX: &str = "/collection/";

/// Returns whether `path` is one of the API's routes, for any method.
/// Only these get preflight responses, so other paths get `404`.
pub fn is_route(path: &str) -> bool {
    allowed_methods(path).is_some()
}

/// Returns the methods that the route at `path` serves, as the `Allow`
/// header of a `405` lists them, or `None` for a path that is no route.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    match path.strip_prefix(COLLECTION_PREFIX) {
        Some(segment) => (!segment.is_empty() && !segment.contains('/')).then_some("GET,HEAD"),
        None => match path {
            "/insert" => Some("POST"),
            "/events" | "/health" | OPENAPI_PATH | metrics::PATH | crate::debug_page::PATH => {
                Some("GET,HEAD")
            }
            _ => None,
        },
    }
}

/// Accepts JSON (`application/json`, `*/*+json`), `text/plain` (which
/// browsers send without a CORS preflight) and a missing content type.
fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(content_type) = content_type else {
        return Ok(());
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let accepted = essence == "application/json"
        || essence == "text/plain"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if accepted {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            content_type: content_type.to_owned(),
        })
    }
}

/// Returns the CORS headers for a response to a request from `origin`.
///
/// With a list of origins, a listed origin also gets
/// `Access-Control-Allow-Credentials: true`, so that pages may send the
/// token cookie or an `Authorization` header with `credentials: "include"`.
/// Browsers ignore that header with `*`, so it is never sent then.
pub fn cors_headers(origins: &AllowedOrigins, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(4);
    if let Some(allowed) = origins.allow(origin) {
        headers.push(("access-control-allow-origin", allowed.to_owned()));
        // Lets fetch-based SSE clients read how their stream resumed, and
        // pages read the challenge of a `401`.
        let exposed = format!("{RESUME_HEADER}, www-authenticate");
        headers.push(("access-control-expose-headers", exposed));
        if let AllowedOrigins::List(_) = origins {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
    }
    if let AllowedOrigins::List(_) = origins {
        // The header depends on the request's origin, so caches must key on it.
        headers.push(("vary", "origin".to_owned()));
    }
    headers
}

/// Returns the headers of a `204` response to a CORS preflight.
pub fn preflight_headers(
    origins: &AllowedOrigins,
    origin: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = cors_headers(origins, origin);
    headers.push(("access-control-allow-methods", ALLOWED_METHODS.to_owned()));
    headers.push(("access-control-allow-headers", ALLOWED_HEADERS.to_owned()));
    headers.push(("access-control-max-age", PREFLIGHT_MAX_AGE.to_owned()));
    headers
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .expect("records serialize to JSON")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn content_types() {
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("Text/Plain;charset=UTF-8")).is_ok());
        assert!(check_content_type(Some("application/ld+json")).is_ok());
        let error = check_content_type(Some("application/x-www-form-urlencoded")).unwrap_err();
        assert_eq!(error.status(), 415);
    }

    #[test]
    fn events_query() {
        let options =
            subscribe_options(Some("event=a&event=b%20c&_=1&lastEventId=7"), None).unwrap();
        assert_eq!(options.events, Some(vec!["a".to_owned(), "b c".to_owned()]));
        assert_eq!(options.after, Some(7));

        let header_wins = subscribe_options(Some("lastEventId=7"), Some("9")).unwrap();
        assert_eq!(header_wins.after, Some(9));

        let empty = subscribe_options(Some("lastEventId="), Some("")).unwrap();
        assert_eq!(empty.after, None);
        assert_eq!(empty.events, None);

        let error = subscribe_options(None, Some("abc")).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.to_string().contains("Last-Event-ID"), "{error}");
        let error = subscribe_options(Some("event=%0A"), None).unwrap_err();
        assert_eq!(error.code(), "invalid_filter");
        let error = subscribe_options(Some("event=%FF"), None).unwrap_err();
        assert_eq!(error.code(), "invalid_filter");
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn routes() {
        for path in [
            "/",
            "/insert",
            "/events",
            "/health",
            "/metrics",
            "/openapi.yaml",
            "/collection/a",
            "/collection/a%2Fb",
        ] {
            assert!(is_route(path), "{path}");
        }
        for path in [
            "/nope",
            "/index.html",
            "/collection/",
            "/collection/a/b",
            "/insert/x",
        ] {
            assert!(!is_route(path), "{path}");
        }
        assert_eq!(allowed_methods("/insert"), Some("POST"));
        assert_eq!(allowed_methods("/collection/a"), Some("GET,HEAD"));
        assert_eq!(allowed_methods("/nope"), None);
    }

    #[test]
    fn error_body_names_field() {
        let error = ApiError::from(InsertError::EmptyEvent);
        let body: serde_json::Value = serde_json::from_slice(&error.to_json()).unwrap();
        assert_eq!(body["error"], "invalid_event");
        assert_eq!(body["field"], "event");
        assert!(body["message"].as_str().unwrap().contains("1 to 256 bytes"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any query and header either subscribe with valid names only or
        /// fail with one of the two request errors and a JSON body.
        #[test]
        fn subscribe_options_never_panic(
            query in prop_oneof![any::<String>(), query_string()],
            header in proptest::option::of(any::<String>()),
        ) {
            match subscribe_options(Some(&query), header.as_deref()) {
                Ok(options) => {
                    for event in options.events.iter().flatten() {
                        prop_assert!(validate_event(event).is_ok(), "{event:?}");
                    }
                }
                Err(error) => {
                    let code = error.code();
                    prop_assert!(
                        matches!(code, "invalid_filter" | "invalid_last_event_id"),
                        "{code}"
                    );
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&error.to_json()).is_ok());
                }
            }
        }

        /// Arbitrary segments never panic, a percent-encoded valid name
        /// decodes back to itself, and an invalid one is rejected.
        #[test]
        fn segments_decode(segment in any::<String>(), name in any::<String>()) {
            if let Err(error) = decode_segment(&segment) {
                prop_assert_eq!(error.code(), "invalid_path");
            }
            let encoded =
                percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            match validate_event(&name) {
                Ok(()) => prop_assert_eq!(decode_segment(&encoded).unwrap(), name),
                Err(_) => prop_assert_eq!(decode_segment(&encoded).unwrap_err().code(), "invalid_path"),
            }
        }
    }

    /// A query string of `event` and `lastEventId` pairs with encoded,
    /// raw and malformed values, mixed with other keys.
    fn query_string() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec!["event", "lastEventId", "_", "", "event[]"]);
        let value = prop_oneof![
            any::<String>().prop_map(|value| {
                form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
            }),
            any::<u64>().prop_map(|id| id.to_string()),
            "[ +%0-9a-fA-F&=;]{0,12}",
            Just("%FF%FE".to_owned()),
            Just("%0A".to_owned()),
            Just("18446744073709551616".to_owned()),
        ];
        prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
            let pairs: Vec<String> = pairs
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            pairs.join("&")
        })
    }
}
