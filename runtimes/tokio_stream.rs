//! `GET /events` served straight on the socket under tokio, without hyper.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB
//! header buffer for its whole life, about three quarters of what an idle
//! SSE stream costs under it. A stream reads nothing after its request and
//! writes only small frames, so the accept loop peeks at the first request
//! of each connection. This module serves a plain `GET /events` itself, with
//! the same checks, headers and frames from [`api`] and [`sse`](crate::sse).
//! Every other request goes to hyper with nothing consumed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::api::{self, ApiError};
use crate::auth::Credentials;
use crate::connection::Connection;
use crate::sse::KeepAlive;
use crate::Broker;

/// Bytes of a request head that the peek looks at. A longer head goes to
/// hyper, which allows larger heads.
const MAX_HEAD: usize = 8192;

/// Maximum headers parsed from a request head. A head with more goes to hyper.
const MAX_HEADERS: usize = 64;

/// The first wait before a connection whose first request head is
/// incomplete is peeked at again. Peeking does not consume the bytes, so
/// the socket stays readable and waiting on it would return at once. The
/// wait doubles up to [`MAX_PEEK_INTERVAL`], so that a client that sends
/// its head a byte at a time costs few wakeups.
const PEEK_INTERVAL: Duration = Duration::from_millis(10);

/// The maximum wait between two peeks at an incomplete head.
const MAX_PEEK_INTERVAL: Duration = Duration::from_millis(320);

/// The route of a connection's first request.
pub(crate) enum FirstRequest {
    /// A `GET /events` to serve here, with its head already parsed.
    Stream(Head),
    /// Any other request, or one that this module does not parse, for hyper.
    Other,
    /// The client closed the connection or sent no complete head in time.
    None,
}

/// The parts of a `GET /events` request head that the API reads.
pub(crate) struct Head {
    /// The head's length in bytes, consumed from the socket before the response.
    length: usize,
    /// Whether the request is HTTP/1.0, which gets a stream delimited by the close.
    http_10: bool,
    query: Option<String>,
    origin: Option<String>,
    last_event_id: Option<String>,
    authorization: Option<String>,
    cookie: Option<String>,
}

/// Peeks at the first request on `stream` until its head is complete or
/// `deadline` passes, and returns its route.
pub(crate) async fn first_request(stream: &TcpStream, deadline: Instant) -> FirstRequest {
    let mut buffer = vec![0u8; MAX_HEAD];
    let mut interval = PEEK_INTERVAL;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return FirstRequest::None,
            Ok(Ok(peeked)) => peeked,
        };
        match parse(&buffer[..peeked]) {
            Parsed::Stream(head) => return FirstRequest::Stream(head),
            Parsed::Other => return FirstRequest::Other,
            Parsed::Partial if peeked == MAX_HEAD => return FirstRequest::Other,
            Parsed::Partial => {
                if Instant::now() >= deadline {
                    return FirstRequest::None;
                }
                tokio::time::sleep_until(deadline.min(Instant::now() + interval)).await;
                interval = (interval * 2).min(MAX_PEEK_INTERVAL);
            }
        }
    }
}

enum Parsed {
    Stream(Head),
    Other,
    Partial,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some("GET"), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    if path != "/events" {
        return Parsed::Other;
    }

    let mut head = Head {
        length,
        http_10: version == 0,
        query,
        origin: None,
        last_event_id: None,
        authorization: None,
        cookie: None,
    };
    for header in request.headers.iter() {
        let name = header.name;
        // A request with a body or an upgrade is rare on a stream, so hyper
        // handles it by the book.
        if name.eq_ignore_ascii_case("content-length") && header.value != b"0"
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Other;
        }
        let slot = if name.eq_ignore_ascii_case("origin") {
            &mut head.origin
        } else if name.eq_ignore_ascii_case("last-event-id") {
            &mut head.last_event_id
        } else if name.eq_ignore_ascii_case("authorization") {
            &mut head.authorization
        } else if name.eq_ignore_ascii_case("cookie") {
            &mut head.cookie
        } else {
            continue;
        };
        // The first value counts, as under hyper. A value that is not
        // visible ASCII matches no origin, name or id, also as under hyper.
        if slot.is_none() {
            let value = std::str::from_utf8(header.value)
                .ok()
                .filter(|value| {
                    value
                        .bytes()
                        .all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
                })
                .unwrap_or("(not ASCII)");
            *slot = Some(value.trim().to_owned());
        }
    }
    Parsed::Stream(head)
}

/// Serves the SSE stream of a `GET /events` whose head [`first_request`]
/// parsed, until the stream ends, the client leaves, or the broker closes
/// the connection.
pub(crate) async fn serve(
    broker: Broker,
    mut stream: TcpStream,
    connection: Connection,
    head: Head,
) {
    // The head was only peeked at; take it off the socket.
    let mut consumed = vec![0u8; head.length];
    if stream.read_exact(&mut consumed).await.is_err() {
        return;
    }
    drop(consumed);

    let origins = &broker.config().allowed_origins;
    let cors = api::cors_headers(origins, head.origin.as_deref());
    let subscribed = match api::admit(&broker, Some(&connection), "/events") {
        Ok(()) => {
            let credentials =
                Credentials::new(head.authorization.as_deref(), head.cookie.as_deref());
            let last_event_id = head.last_event_id.as_deref();
            api::events(
                &broker,
                head.query.as_deref(),
                last_event_id,
                credentials,
                Some(&connection),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let (subscription, resume) = match subscribed {
        Ok(subscribed) => subscribed,
        Err(error) => {
            let response = error_response(&error, &cors);
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
            return;
        }
    };

    let mut response = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in api::SSE_HEADERS {
        push_header(&mut response, name, value);
    }
    if let Some(resume) = resume {
        push_header(&mut response, api::RESUME_HEADER, resume);
    }
    for (name, value) in &cors {
        push_header(&mut response, name, value);
    }
    if head.http_10 {
        push_header(&mut response, "connection", "close");
    } else {
        push_header(&mut response, "transfer-encoding", "chunked");
    }
    response.push_str("\r\n");

    let ticks = crate::tokio_axum::Ticks::new(broker.config().keep_alive);
    let mut frames = KeepAlive::new(subscription, ticks);
    let (mut reader, mut writer) = stream.split();
    let written = async {
        writer.write_all(response.as_bytes()).await?;
        while let Some(chunk) = frames.next().await {
            if head.http_10 {
                writer.write_all(&chunk).await?;
            } else {
                writer.write_all(&chunked(&chunk)).await?;
            }
        }
        // The broker closed the stream, as at shutdown: end it cleanly.
        if !head.http_10 {
            writer.write_all(b"0\r\n\r\n").await?;
        }
        writer.shutdown().await
    };
    // Nothing more is expected from the client: a read that returns
    // means it left, or it broke the protocol.
    let left = async {
        let mut byte = [0u8; 64];
        loop {
            match reader.read(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::select! {
        written = written => {
            if let Err(error) = written {
                debug!(%error, "failed to write to a subscriber");
            }
        }
        () = left => debug!("subscriber left"),
        () = connection.closed() => debug!("closed the connection at the broker's request"),
    }
}

/// Frames `data` as one HTTP/1.1 chunk.
fn chunked(data: &Bytes) -> BytesMut {
    let size = format!("{:x}\r\n", data.len());
    let mut chunk = BytesMut::with_capacity(size.len() + data.len() + 2);
    chunk.extend_from_slice(size.as_bytes());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

fn push_header(response: &mut String, name: &str, value: &str) {
    response.push_str(name);
    response.push_str(": ");
    response.push_str(value);
    response.push_str("\r\n");
}

/// Returns a whole error response, which closes the connection.
fn error_response(error: &ApiError, cors: &[(&'static str, String)]) -> Vec<u8> {
    let body = error.to_json();
    let status = axum::http::StatusCode::from_u16(error.status())
        .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let mut response = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    push_header(&mut response, "content-type", "application/json");
    push_header(&mut response, "content-length", &body.len().to_string());
    for (name, value) in cors {
        push_header(&mut response, name, value);
    }
    for (name, value) in error.headers() {
        if name != "connection" {
            push_header(&mut response, name, &value);
        }
    }
    push_header(&mut response, "connection", "close");
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}
