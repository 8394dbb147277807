//! The HTTP and SSE API served by [axum](https://docs.rs/axum) on tokio.
//!
//! This module only routes: request checks, error bodies, CORS and SSE
//! framing come from the runtime-agnostic [`api`] and
//! [`sse`](crate::sse) modules, so every runtime responds the same.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use futures_core::Stream;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::api::{self, ApiError};
use crate::auth::Credentials;
use crate::sse::KeepAlive;
use crate::{Broker, Listen};

/// Builds the axum [`Router`] for the whole API, ready to nest or serve.
pub fn router(broker: Broker) -> Router {
    let body_limit = broker.config().body_limit;
    Router::new()
        .route("/insert", post(insert))
        .route("/events", get(events))
        .route("/collection/{event}", get(collection))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
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
    // Small SSE frames should leave at once rather than wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "failed to set TCP_NODELAY");
        }
    });
    let (stopping, stopped) = futures_channel::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: ending streams, finishing requests in flight");
        broker.close().await;
        let _ = stopping.send(());
    });

    // A client that stopped reading its stream would hold the graceful
    // shutdown forever, so it gets a deadline.
    let deadline = async move {
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(api::SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server.into_future() => served,
        () = deadline => {
            tracing::warn!(
                grace = ?api::SHUTDOWN_GRACE,
                "connections still open after the shutdown grace period, closing them"
            );
            Ok(())
        }
    }
}

async fn insert(
    State(broker): State<Broker>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(&broker, rejection).into_response(),
    };
    let content_type = header_text(&headers, header::CONTENT_TYPE);
    let origin = header_text(&headers, header::ORIGIN);
    match api::insert(&broker, origin, credentials(&headers), content_type, &body).await {
        Ok(record) => json(StatusCode::CREATED, record),
        Err(error) => error.into_response(),
    }
}

async fn events(State(broker): State<Broker>, uri: Uri, headers: HeaderMap) -> Response {
    let last_event_id = header_text(&headers, HeaderName::from_static("last-event-id"));
    let credentials = credentials(&headers);
    let subscribed = api::events(&broker, uri.query(), last_event_id, credentials).await;
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
async fn cors(State(broker): State<Broker>, request: Request, next: Next) -> Response {
    let origins = &broker.config().allowed_origins;
    let origin = header_text(request.headers(), header::ORIGIN).map(str::to_owned);

    let preflight = request.method() == Method::OPTIONS && api::is_route(request.uri().path());
    let (mut response, headers) = if preflight {
        let headers = api::preflight_headers(origins, origin.as_deref());
        (StatusCode::NO_CONTENT.into_response(), headers)
    } else {
        let response = next.run(request).await;
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

fn body_rejection(broker: &Broker, rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge {
            limit: broker.config().body_limit,
        }
    } else {
        ApiError::BodyUnreadable {
            reason: rejection.body_text(),
        }
    }
}

fn json(status: StatusCode, body: Bytes) -> Response {
    let content_type = [(header::CONTENT_TYPE, "application/json")];
    (status, content_type, body).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = json(status, self.to_json());
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
struct Ticks(Interval);

impl Ticks {
    fn new(period: Duration) -> Self {
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
