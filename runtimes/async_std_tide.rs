//! The HTTP and SSE API served by [tide](https://docs.rs/tide) on async-std.
//!
//! This module only routes: request checks, error bodies, CORS and SSE
//! framing come from the runtime-agnostic [`api`] and [`sse`](crate::sse)
//! modules, so it gives an API request the same status, JSON body and SSE
//! framing as the `tokio_axum` module does.
//!
//! # Status of this leg
//!
//! tide has had no stable release since 0.16.0, and async-std's maintainers
//! discontinued it in 1.13.1 in favour of smol. Everything that depends on
//! either is in this module and in `async_std_stream`, which serves SSE
//! streams, behind the `async-std-tide` feature, so the rest of Broker does
//! not depend on them. Prefer `tokio-axum` for new programs.
//!
//! async-h1, tide's HTTP server, speaks HTTP/1.1 only. It closes the
//! connection without a response on HTTP/1.0, on a request without `Host`
//! and on a malformed request, where hyper under axum responds `400`. It
//! reads a connection only between requests, so this module watches each
//! connection for a closed peer itself, so that a subscriber that goes away
//! is dropped at once, as under axum.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_h1::server::ConnectionStatus;
use async_std::net::{TcpListener, TcpStream};
use futures_util::future::{self, Either};
use futures_util::io::AsyncReadExt;
use futures_util::{StreamExt, TryStreamExt};
use tide::http::headers::HeaderValue;
use tide::{Body, Next, Request, Response, StatusCode};
use tracing::{debug, info};

use crate::accept;
use crate::api::{self, ApiError};
use crate::async_std_stream::{self, Served};
use crate::auth::Credentials;
use crate::connection::Connection;
use crate::debug_page;
use crate::metrics::{self, Rejected};
use crate::sse::KeepAlive;
use crate::stream::{self, FirstRequest};
use crate::{Broker, Config, Listen};

/// How often a connection with unread request bytes is checked for a
/// closed peer.
const PEEK_INTERVAL: Duration = Duration::from_millis(100);

/// The headers timeout that async-h1 2.3 sets on its own and that this
/// module cannot change: each request's headers must arrive within it.
const ASYNC_H1_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the tide [`Server`](tide::Server) for the whole API, ready to nest
/// or serve.
///
/// With [`Config::debug_page`] on, `GET /` serves the
/// [debug page](crate::debug_page).
pub fn app(broker: Broker) -> tide::Server<Broker> {
    let debug_page = broker.config().debug_page;
    let mut app = tide::with_state(broker);
    app.with(cors);
    app.with(json_errors);
    if debug_page {
        app.at(debug_page::PATH).get(page);
    }
    app.at("/insert").post(insert);
    app.at("/events").get(events);
    app.at("/collection/:event").get(collection);
    app.at("/health").get(health);
    app.at(api::OPENAPI_PATH).get(openapi);
    if app.state().config().metrics {
        app.at(metrics::PATH).get(metrics);
    }
    app
}

/// Serves the API on `listen` until the process ends. Call it from
/// async-std.
///
/// # Errors
///
/// Returns the I/O error that stopped the server, such as an address
/// already in use.
pub async fn serve(broker: Broker, listen: impl Into<Listen>) -> io::Result<()> {
    serve_with_shutdown(broker, listen, future::pending()).await
}

/// Serves the API on `listen` until `shutdown` completes, then ends every
/// SSE stream, waits up to three seconds for requests in flight, and returns.
///
/// A connection whose first request is `GET /events` is served without
/// async-h1, which would copy the stream through an 8 KiB buffer for the
/// stream's life. Programs that serve [`app`] themselves, as with tide's
/// `listen`, get the same responses through async-h1.
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
    let listener = TcpListener::from(listen.into().into_std()?);
    let app = app(broker.clone());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut shutdown = Box::pin(shutdown);

    // Accept connections until the shutdown future completes.
    loop {
        let accepted = match future::select(Box::pin(listener.accept()), shutdown.as_mut()).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(((), _)) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let connection = broker.connections().open();
                debug!(%peer, admitted = connection.is_admitted(), "accepted a connection");
                let serving = Serving {
                    app: app.clone(),
                    connection,
                    in_flight: in_flight.clone(),
                    request_timeout: broker.config().request_timeout,
                };
                async_std::task::spawn(serving.run(stream));
            }
            Err(error) => {
                accept::failed(&error);
                async_std::task::sleep(accept::RETRY).await;
            }
        }
    }

    // Closing the listener makes new connections fail at once rather than
    // wait in the backlog.
    drop(listener);

    // End the streams, then give requests in flight time to finish.
    info!("shutting down: ending streams, finishing requests in flight");
    broker.close().await;
    let deadline = std::time::Instant::now() + api::SHUTDOWN_GRACE;
    while in_flight.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        async_std::task::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The state that one connection's task serves it with.
struct Serving {
    app: tide::Server<Broker>,
    connection: Connection,
    /// Requests being handled on every connection, for the shutdown.
    in_flight: Arc<AtomicUsize>,
    request_timeout: Duration,
}

impl Serving {
    /// Serves one connection: a first request of `GET /events` on its own,
    /// anything else with async-h1.
    async fn run(self, stream: TcpStream) {
        // Small SSE frames should leave at once rather than wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "failed to set TCP_NODELAY");
        }
        let timeout = self.request_timeout.min(ASYNC_H1_HEADERS_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let first =
            stream::first_request(&stream, deadline, async_std_stream::read_as_async_h1).await;
        let deadline = match first {
            FirstRequest::None => {
                debug!(?timeout, "no request in time, closing the connection");
                return;
            }
            FirstRequest::Stream(head, read) => {
                let broker = self.app.state();
                match async_std_stream::serve(broker, &stream, &self.connection, head, read).await {
                    Served::Close => return,
                    Served::KeepAlive => Instant::now() + self.request_timeout,
                }
            }
            FirstRequest::Other => deadline,
        };
        // Unboxed, the async-h1 futures made this task about 5 KiB larger
        // (`size_of_val` in a release build), also for a connection whose
        // stream is served on the socket, which never runs them.
        Box::pin(self.serve_h1(stream, deadline)).await;
    }

    /// Serves the requests of one connection with async-h1 until the client
    /// leaves, the connection is closed by the broker, or a request's
    /// headers time out. The first request's headers are due by `deadline`.
    async fn serve_h1(self, stream: TcpStream, deadline: Instant) {
        let closed = pin!(peer_closed(stream.clone()));
        let evicted = self.connection.closed();
        let served = pin!(self.requests(stream, deadline));

        // Dropping the connection's future drops an SSE response body too,
        // and with it the subscription.
        let ended = future::select(served, future::select(closed, evicted)).await;
        match ended {
            Either::Left(((), _)) => {}
            Either::Right((Either::Left(((), _)), _)) => debug!("peer closed the connection"),
            Either::Right((Either::Right(((), _)), _)) => {
                debug!("closed the connection at the broker's request");
            }
        }
    }

    /// Reads requests and writes responses one after another, as async-h1 does,
    /// with a deadline on each request's headers: `deadline` for the first,
    /// and the request timeout after the previous response for the others.
    ///
    /// async-h1 has a headers timeout of its own, [`ASYNC_H1_HEADERS_TIMEOUT`],
    /// so a configured timeout longer than 60 seconds acts as 60 seconds.
    async fn requests(&self, stream: TcpStream, mut deadline: Instant) {
        let head_read = Arc::new(AtomicBool::new(false));
        let endpoint = |mut request: tide::http::Request| {
            head_read.store(true, Ordering::Release);
            request.ext_mut().insert(self.connection.clone());
            let app = self.app.clone();
            let in_flight = self.in_flight.clone();
            async move {
                in_flight.fetch_add(1, Ordering::AcqRel);
                let response = app.respond(request).await;
                in_flight.fetch_sub(1, Ordering::AcqRel);
                response
            }
        };
        let mut server = async_h1::server::Server::new(stream, endpoint);
        loop {
            head_read.store(false, Ordering::Release);
            let head_timeout = async {
                async_std::task::sleep(deadline.saturating_duration_since(Instant::now())).await;
                if head_read.load(Ordering::Acquire) {
                    future::pending::<()>().await;
                }
            };
            let request = pin!(server.accept_one());
            match future::select(request, pin!(head_timeout)).await {
                Either::Left((Ok(ConnectionStatus::KeepAlive), _)) => {}
                Either::Left((Ok(ConnectionStatus::Close), _)) => return,
                Either::Left((Err(error), _)) => {
                    debug!(%error, "connection ended with an error");
                    return;
                }
                Either::Right(((), _)) => {
                    debug!(timeout = ?self.request_timeout, "no request headers in time, closing the connection");
                    return;
                }
            }
            deadline = Instant::now() + self.request_timeout;
        }
    }
}

/// Completes when the peer has closed the connection.
///
/// async-h1 reads a connection only between requests, so without this a
/// subscriber that went away would be noticed only at the next write to it.
/// `peek` leaves any bytes it reads for async-h1 to read again.
async fn peer_closed(stream: TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            // Request bytes that async-h1 has not read yet; look again later.
            Ok(_) => async_std::task::sleep(PEEK_INTERVAL).await,
        }
    }
}

async fn insert(mut request: Request<Broker>) -> tide::Result {
    let broker = request.state().clone();
    let content_type = header_text(&request, "content-type");
    let origin = header_text(&request, "origin");
    let (authorization, cookie) = token_headers(&request);
    let credentials = Credentials::new(authorization.as_deref(), cookie.as_deref());
    let body = match read_body(&mut request, broker.config()).await {
        Ok(body) => body,
        Err(error) => {
            // async-h1 reads the rest of an unread body after the response,
            // which a stalled client, or one that announced a huge body,
            // would hold up for good. Closing the connection ends it once
            // the response is written, because the connection's task writes
            // the response before it looks at the close request.
            if let Some(connection) = request.ext::<Connection>() {
                connection.close();
            }
            return Ok(error_response(error));
        }
    };
    let content_type = content_type.as_deref();
    let inserted = api::insert(&broker, origin.as_deref(), credentials, content_type, &body).await;
    Ok(match inserted {
        Ok(record) => json(StatusCode::Created, record),
        Err(error) => error_response(error),
    })
}

async fn events(request: Request<Broker>) -> tide::Result {
    let broker = request.state();
    let last_event_id = header_text(&request, "last-event-id");
    let (authorization, cookie) = token_headers(&request);
    let credentials = Credentials::new(authorization.as_deref(), cookie.as_deref());
    let connection = request.ext::<Connection>();
    let query = request.url().query();
    let last_event_id = last_event_id.as_deref();
    let subscribed = api::events(broker, query, last_event_id, credentials, connection).await;
    let (subscription, resume) = match subscribed {
        Ok(subscribed) => subscribed,
        Err(error) => return Ok(error_response(error)),
    };
    let ticks = async_std::stream::interval(broker.config().keep_alive);
    let frames = KeepAlive::new(subscription, ticks).map(Ok::<_, io::Error>);

    let mut response = Response::new(StatusCode::Ok);
    response.set_body(Body::from_reader(frames.into_async_read(), None));
    for (name, value) in api::SSE_HEADERS {
        response.insert_header(name, value);
    }
    if let Some(resume) = resume {
        response.insert_header(api::RESUME_HEADER, resume);
    }
    Ok(response)
}

async fn collection(request: Request<Broker>) -> tide::Result {
    // The core decodes the raw segment, so that every runtime decodes alike.
    let segment = request
        .url()
        .path()
        .strip_prefix(api::COLLECTION_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let (authorization, cookie) = token_headers(&request);
    let credentials = Credentials::new(authorization.as_deref(), cookie.as_deref());
    let query = request.url().query();
    Ok(
        match api::collection(request.state(), &segment, query, credentials).await {
            Ok(records) => json(StatusCode::Ok, records),
            Err(error) => error_response(error),
        },
    )
}

async fn health(request: Request<Broker>) -> tide::Result {
    Ok(match api::health(request.state()).await {
        Ok(body) => json(StatusCode::Ok, body),
        Err(error) => error_response(error),
    })
}

async fn openapi(_: Request<Broker>) -> tide::Result {
    let mut response = Response::new(StatusCode::Ok);
    response.set_body(api::OPENAPI);
    response.insert_header("content-type", api::OPENAPI_CONTENT_TYPE);
    Ok(response)
}

async fn metrics(request: Request<Broker>) -> tide::Result {
    let mut response = Response::new(StatusCode::Ok);
    response.set_body(api::metrics(request.state()));
    response.insert_header("content-type", metrics::CONTENT_TYPE);
    Ok(response)
}

async fn page(request: Request<Broker>) -> tide::Result {
    let page = debug_page::response(header_text(&request, "if-none-match").as_deref());
    let status = StatusCode::try_from(page.status).unwrap_or(StatusCode::Ok);
    let mut response = Response::new(status);
    if status == StatusCode::Ok {
        response.set_body(page.body);
    }
    for (name, value) in page.headers {
        response.insert_header(name, value);
    }
    Ok(response)
}

/// Returns the first value of a request header as text, as the axum
/// runtime reads it, so that a repeated header means the same under both.
fn header_text(request: &Request<Broker>, name: &str) -> Option<String> {
    request
        .header(name)
        .and_then(|values| values.iter().next())
        .map(|value| value.as_str().to_owned())
}

/// Returns the `Authorization` and `Cookie` headers, which may carry a token.
fn token_headers(request: &Request<Broker>) -> (Option<String>, Option<String>) {
    let authorization = header_text(request, "authorization");
    (authorization, header_text(request, "cookie"))
}

/// Reads the request body, up to the configured limit and within the
/// request timeout. A `Content-Length` over the limit is rejected before
/// any of the body is read.
async fn read_body(request: &mut Request<Broker>, config: &Config) -> Result<Vec<u8>, ApiError> {
    let limit = config.body_limit;
    let timeout = config.request_timeout;
    if request.len().is_some_and(|length| length > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = Vec::new();
    let mut reader = request.take_body().take(limit as u64 + 1);
    let read = async_std::future::timeout(timeout, reader.read_to_end(&mut body)).await;
    match read {
        Err(_) => Err(ApiError::BodyTimeout { timeout }),
        Ok(Ok(_)) if body.len() > limit => Err(ApiError::BodyTooLarge { limit }),
        Ok(Ok(_)) => Ok(body),
        Ok(Err(error)) => Err(ApiError::BodyUnreadable {
            reason: error.to_string(),
        }),
    }
}

/// Adds CORS headers to every response and responds to preflights itself.
/// Requests on connections past the connection limit get `503`, with CORS
/// headers so that a page can read why. Counts each rejected request and
/// times each request to a route, except preflights.
fn cors<'a>(
    request: Request<Broker>,
    next: Next<'a, Broker>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        let started = Instant::now();
        let broker = request.state().clone();
        let route = api::route(&broker, request.url().path());
        let origins = &broker.config().allowed_origins;
        let origin = header_text(&request, "origin");

        let preflight =
            request.method() == tide::http::Method::Options && api::is_route(request.url().path());
        let (mut response, headers) = if preflight {
            let headers = api::preflight_headers(origins, origin.as_deref());
            (Response::new(StatusCode::NoContent), headers)
        } else {
            let connection = request.ext::<Connection>();
            let admitted = connection.is_none_or(Connection::is_admitted);
            let mut response = match api::admit(&broker, connection, request.url().path()) {
                Ok(()) => next.run(request).await,
                Err(error) => error_response(error),
            };
            if !admitted {
                response.insert_header("connection", "close");
            }
            if let Some(Rejected(code)) = response.ext::<Rejected>() {
                broker.metrics().count_rejected(code);
            }
            if let Some(route) = route {
                broker.metrics().observe_request(route, started.elapsed());
            }
            (response, api::cors_headers(origins, origin.as_deref()))
        };
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(value.into_bytes()) {
                response.insert_header(name, value);
            }
        }
        Ok(response)
    })
}

/// Gives tide's own `404` and `405` responses, which have no body, the API's
/// JSON error body.
fn json_errors<'a>(
    request: Request<Broker>,
    next: Next<'a, Broker>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        let method = request.method().to_string();
        let path = request.url().path().to_owned();
        let response = next.run(request).await;
        if response.content_type().is_some() {
            return Ok(response);
        }
        Ok(match response.status() {
            StatusCode::NotFound => error_response(ApiError::NotFound { path }),
            StatusCode::MethodNotAllowed => {
                // A 405 must list the allowed methods (RFC 9110, section 15.5.6).
                let allow = api::allowed_methods(&path);
                let mut response = error_response(ApiError::MethodNotAllowed { method, path });
                if let Some(allow) = allow {
                    response.insert_header("allow", allow);
                }
                response
            }
            _ => response,
        })
    })
}

fn error_response(error: ApiError) -> Response {
    let status = StatusCode::try_from(error.status()).unwrap_or(StatusCode::BadRequest);
    let mut response = json(status, error.to_json());
    response.insert_ext(Rejected(error.code()));
    for (name, value) in error.headers() {
        response.insert_header(name, value);
    }
    response
}

fn json(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut response = Response::new(status);
    response.set_body(Body::from_bytes(body.to_vec()));
    response.insert_header("content-type", "application/json");
    response
}
