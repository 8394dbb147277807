//! The HTTP and SSE API served by [axum](https://docs.rs/axum) on tokio.
//!
//! This module only routes: request checks, error bodies, CORS and SSE
//! framing come from the runtime-agnostic [`api`] and
//! [`sse`](crate::sse) modules, so every runtime gives an API request the
//! same status, JSON body and SSE framing.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::BytesMut;
use futures_core::Stream;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::accept;
use crate::api::{self, ApiError};
use crate::auth::Credentials;
use crate::connection::Connection;
use crate::debug_page;
use crate::metrics::{self, Rejected};
use crate::sse::KeepAlive;
use crate::stream::{self, FirstRequest};
use crate::tokio_stream;
use crate::{Broker, Listen};

/// Builds the axum [`Router`] for the whole API, ready to nest or serve.
///
/// With [`Config::debug_page`](crate::Config::debug_page) on, `GET /`
/// serves the [debug page](crate::debug_page).
pub fn router(broker: Broker) -> Router {
    let mut router = Router::new();
    if broker.config().debug_page {
        router = router.route(debug_page::PATH, get(page));
    }
    router = router
        .route("/insert", post(insert))
        .route("/events", get(events))
        .route("/collection/{event}", get(collection))
        .route("/health", get(health))
        .route(api::OPENAPI_PATH, get(openapi));
    if broker.config().metrics {
        router = router.route(metrics::PATH, get(metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(broker.clone(), cors))
        .with_state(broker)
}

/// Serves the API on `listen` until the process ends. Call it from tokio.
///
/// # Errors
///
/// Returns the I/O error that stopped the server, such as an address
/// already in use.
pub async fn serve(broker: Broker, listen: impl Into<Listen>) -> io::Result<()> {
    serve_with_shutdown(broker, listen, std::future::pending()).await
}

/// Serves the API on `listen` until `shutdown` completes, then ends every
/// SSE stream, lets requests in flight finish for up to three seconds, and
/// returns.
///
/// Each connection counts against
/// [`Config::max_connections`](crate::Config::max_connections), must send
/// each request's headers within
/// [`Config::request_timeout`](crate::Config::request_timeout), and is closed
/// at once when its subscriber falls behind.
///
/// A connection whose first request is `GET /events` is served without
/// hyper, which would keep 16 KiB of buffers for the stream's life. Programs
/// that serve [`router`] with their own server get the same responses
/// through hyper.
///
/// # Errors
///
/// Returns the I/O error that stopped the server.
pub async fn serve_with_shutdown<F>(
    broker: Broker,
    listen: impl Into<Listen>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::from_std(listen.into().into_std()?)?;
    let app = router(broker.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(broker.config().request_timeout);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept::failed(&error);
                tokio::time::sleep(accept::RETRY).await;
                continue;
            }
        };
        let connection = broker.connections().open();
        debug!(%peer, admitted = connection.is_admitted(), "accepted a connection");
        let serving = Serving {
            broker: broker.clone(),
            app: app.clone(),
            builder: builder.clone(),
            graceful: graceful.watcher(),
            connection,
        };
        tokio::spawn(serving.run(stream, peer));
    }

    // Closing the listener makes new connections fail at once rather than
    // wait in the backlog.
    drop(listener);
    info!("shutting down: ending streams, finishing requests in flight");
    broker.close().await;
    // A client that stopped reading its stream would hold the graceful
    // shutdown forever, so it gets a deadline.
    let finished = async {
        graceful.shutdown().await;
        // SSE streams served without hyper end on their own once the broker
        // closes them; the count falls to zero when the last one has.
        while broker.connections().count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = finished => {}
        () = tokio::time::sleep(api::SHUTDOWN_GRACE) => {
            warn!(
                grace = ?api::SHUTDOWN_GRACE,
                "connections still open after the shutdown grace period, closing them"
            );
        }
    }
    Ok(())
}

/// The state that one connection's task serves it with.
struct Serving {
    broker: Broker,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Watcher,
    connection: Connection,
}

impl Serving {
    /// Serves one connection: a first request of `GET /events` on its own,
    /// anything else with hyper.
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        // Small SSE frames should leave at once rather than wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "failed to set TCP_NODELAY");
        }
        let timeout = self.broker.config().request_timeout;
        let deadline = std::time::Instant::now() + timeout;
        // hyper reads every `GET /events` head that parses as this module
        // does, so each one is served on the socket.
        let first = stream::first_request(&stream, deadline, |_, _| Some(())).await;
        match first {
            FirstRequest::None => {
                debug!(%peer, ?timeout, "no request in time, closing the connection");
                return;
            }
            FirstRequest::Stream(head, ()) => {
                return tokio_stream::serve(self.broker, stream, self.connection, head).await;
            }
            FirstRequest::Other => {}
        }

        let Self {
            app,
            builder,
            graceful,
            connection,
            ..
        } = self;
        let service = connection_service(app, connection.clone());
        let served = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::select! {
            result = graceful.watch(served) => {
                if let Err(error) = result {
                    debug!(%peer, %error, "connection ended with an error");
                }
            }
            () = connection.closed() => {
                debug!(%peer, "closed the connection at the broker's request");
            }
        }
    }
}

/// Returns the router as a hyper service that adds `connection` to each
/// request's extensions, where the handlers find it.
fn connection_service(
    app: Router,
    connection: Connection,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(connection.clone());
        app.clone().oneshot(request)
    })
}

async fn insert(State(broker): State<Broker>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&broker, &headers, body).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let content_type = header_text(&headers, header::CONTENT_TYPE);
    let origin = header_text(&headers, header::ORIGIN);
    match api::insert(&broker, origin, credentials(&headers), content_type, &body).await {
        Ok(record) => json(StatusCode::CREATED, record),
        Err(error) => error.into_response(),
    }
}

async fn events(
    State(broker): State<Broker>,
    connection: Option<Extension<Connection>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let last_event_id = header_text(&headers, HeaderName::from_static("last-event-id"));
    let connection = connection.as_ref().map(|Extension(connection)| connection);
    let credentials = credentials(&headers);
    let query = uri.query();
    let subscribed = api::events(&broker, query, last_event_id, credentials, connection).await;
    let (subscription, resume) = match subscribed {
        Ok(subscribed) => subscribed,
        Err(error) => return error.into_response(),
    };
    let ticks = Ticks::new(broker.config().keep_alive);
    let stream = KeepAlive::new(subscription, ticks).map(Ok::<_, Infallible>);

    let mut response = Response::new(Body::from_stream(stream));
    for (name, value) in api::SSE_HEADERS {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if let Some(resume) = resume {
        response.headers_mut().insert(
            HeaderName::from_static(api::RESUME_HEADER),
            HeaderValue::from_static(resume),
        );
    }
    response
}

async fn collection(State(broker): State<Broker>, uri: Uri, headers: HeaderMap) -> Response {
    // The core decodes the raw segment, so that every runtime decodes alike.
    let segment = uri
        .path()
        .strip_prefix(api::COLLECTION_PREFIX)
        .unwrap_or_default();
    match api::collection(&broker, segment, uri.query(), credentials(&headers)).await {
        Ok(records) => json(StatusCode::OK, records),
        Err(error) => error.into_response(),
    }
}

async fn health(State(broker): State<Broker>) -> Response {
    match api::health(&broker).await {
        Ok(body) => json(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

async fn openapi() -> Response {
    let content_type = [(header::CONTENT_TYPE, api::OPENAPI_CONTENT_TYPE)];
    (content_type, api::OPENAPI).into_response()
}

async fn metrics(State(broker): State<Broker>) -> Response {
    let content_type = [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)];
    (StatusCode::OK, content_type, api::metrics(&broker)).into_response()
}

async fn page(headers: HeaderMap) -> Response {
    let page = debug_page::response(header_text(&headers, header::IF_NONE_MATCH));
    let mut response = Response::new(Body::from(page.body));
    *response.status_mut() = StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK);
    for (name, value) in page.headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

async fn not_found(uri: Uri) -> Response {
    let path = uri.path().to_owned();
    ApiError::NotFound { path }.into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let error = ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    };
    error.into_response()
}

/// Adds CORS headers to every response and responds to preflights itself.
/// Requests on connections past the connection limit get `503`, with CORS
/// headers so that a page can read why. Counts each rejected request and
/// times each request to a route, except preflights.
async fn cors(State(broker): State<Broker>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = api::route(&broker, request.uri().path());
    let origins = &broker.config().allowed_origins;
    let origin = header_text(request.headers(), header::ORIGIN).map(str::to_owned);

    let preflight = request.method() == Method::OPTIONS && api::is_route(request.uri().path());
    let (mut response, headers) = if preflight {
        let headers = api::preflight_headers(origins, origin.as_deref());
        (StatusCode::NO_CONTENT.into_response(), headers)
    } else {
        let connection = request.extensions().get::<Connection>();
        let admitted = connection.is_none_or(Connection::is_admitted);
        let mut response = match api::admit(&broker, connection, request.uri().path()) {
            Ok(()) => next.run(request).await,
            Err(error) => error.into_response(),
        };
        if !admitted {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(Rejected(code)) = response.extensions().get::<Rejected>() {
            broker.metrics().count_rejected(code);
        }
        if let Some(route) = route {
            broker.metrics().observe_request(route, started.elapsed());
        }
        (response, api::cors_headers(origins, origin.as_deref()))
    };
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::try_from(value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// Returns a header's value as text; a value that is not visible ASCII
/// reads as a placeholder that matches no origin, name or id.
fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("(not ASCII)"))
}

/// Returns the headers that may carry a token, for the API to check.
fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    let authorization = header_text(headers, header::AUTHORIZATION);
    Credentials::new(authorization, header_text(headers, header::COOKIE))
}

/// Reads the request body, up to the configured limit and within the
/// request timeout.
///
/// A `Content-Length` over the limit is rejected without keeping the body.
/// Up to twice the limit, the body is read and dropped first: a socket
/// closed with unread data sends a reset, and a client still writing its
/// body may then lose the `413` before it reads it. A larger body is
/// rejected before any of it is read.
async fn read_body(broker: &Broker, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = broker.config().body_limit;
    let timeout = broker.config().request_timeout;
    let declared = header_text(headers, header::CONTENT_LENGTH).and_then(|text| text.parse().ok());
    if let Some(length) = declared.filter(|&length: &usize| length > limit) {
        if length <= limit.saturating_mul(2) {
            let mut chunks = body.into_data_stream();
            let drain = async { while let Some(Ok(_)) = chunks.next().await {} };
            let _ = tokio::time::timeout(timeout, drain).await;
        }
        return Err(ApiError::BodyTooLarge { limit });
    }
    let read = async {
        let mut chunks = body.into_data_stream();
        let mut body = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|error| ApiError::BodyUnreadable {
                reason: error.to_string(),
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout { timeout }))
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    (status, content_type, body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = json(status, self.to_json());
        response.extensions_mut().insert(Rejected(self.code()));
        for (name, value) in self.headers() {
            if let Ok(value) = HeaderValue::try_from(value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}

/// A tick per keep-alive interval, the first one interval after the start.
pub(crate) struct Ticks(Interval);

impl Ticks {
    pub(crate) fn new(period: Duration) -> Self {
        // tokio panics on a zero period.
        let period = period.max(Duration::from_millis(1));
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self(interval)
    }
}

impl Stream for Ticks {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.0.poll_tick(cx).map(|_| Some(()))
    }
}
