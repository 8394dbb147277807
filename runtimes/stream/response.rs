//! The response to a `GET /events` served on the socket: its head or a
//! whole error response, then the stream's frames, batched for writing.

use std::io::Write;
use std::time::SystemTime;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::{FutureExt, StreamExt};

use super::Head;
use crate::api::{self, ApiError};
use crate::auth::Credentials;
use crate::connection::Connection;
use crate::metrics;
use crate::{Broker, Subscription};

/// The size at which a batch of frames takes no further frame. A batch is
/// larger only by its last frame.
const MAX_BATCH: usize = 64 * 1024;

/// The largest write buffer that a stream keeps between two writes while
/// frames keep coming. A larger one is freed after its write.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// The response to a `GET /events`.
pub(crate) enum Response {
    /// A `200` SSE stream: the response head, then the subscription's
    /// frames, chunked or, for HTTP/1.0, delimited by the close.
    Stream {
        response_head: Vec<u8>,
        subscription: Subscription,
    },
    /// A whole error response.
    Error {
        bytes: Vec<u8>,
        /// Whether the response carries `Connection: close`, so that the
        /// connection is closed after it.
        #[cfg_attr(not(feature = "async-std-tide"), allow(dead_code))]
        closes: bool,
    },
}

/// Admits the connection, subscribes it as `head` requests, and returns the
/// response, with the checks and headers of [`api::events`].
///
/// With `close_after_error`, an error response always carries
/// `Connection: close`. Without it, only the errors whose response closes
/// the connection carry it, such as the one for a connection past the limit.
pub(crate) async fn respond(
    broker: &Broker,
    connection: &Connection,
    head: &Head,
    close_after_error: bool,
) -> Response {
    let started = std::time::Instant::now();
    let origins = &broker.config().allowed_origins;
    let cors = api::cors_headers(origins, head.origin.as_deref());
    let subscribed = match api::admit(broker, Some(connection), "/events") {
        Ok(()) => {
            let credentials =
                Credentials::new(head.authorization.as_deref(), head.cookie.as_deref());
            let last_event_id = head.last_event_id.as_deref();
            let query = head.query.as_deref();
            api::events(broker, query, last_event_id, credentials, Some(connection)).await
        }
        Err(error) => Err(error),
    };
    let response = match subscribed {
        Ok((subscription, resume)) => Response::Stream {
            response_head: stream_head(resume, &cors, head.http_10),
            subscription,
        },
        Err(error) => {
            broker.metrics().count_rejected(error.code());
            error_response(&error, &cors, close_after_error)
        }
    };
    let metrics = broker.metrics();
    metrics.observe_request(metrics::Route::Events, started.elapsed());
    response
}

/// Returns the head of a `200` SSE response.
fn stream_head(resume: Option<&str>, cors: &[(&'static str, String)], http_10: bool) -> Vec<u8> {
    let mut response = status_line(200);
    for (name, value) in api::SSE_HEADERS {
        push_header(&mut response, name, value);
    }
    if let Some(resume) = resume {
        push_header(&mut response, api::RESUME_HEADER, resume);
    }
    for (name, value) in cors {
        push_header(&mut response, name, value);
    }
    if http_10 {
        push_header(&mut response, "connection", "close");
    } else {
        push_header(&mut response, "transfer-encoding", "chunked");
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// Returns a whole error response with the API's JSON body.
fn error_response(error: &ApiError, cors: &[(&'static str, String)], close: bool) -> Response {
    let body = error.to_json();
    let mut response = status_line(error.status());
    push_header(&mut response, "content-type", "application/json");
    push_header(&mut response, "content-length", &body.len().to_string());
    for (name, value) in cors {
        push_header(&mut response, name, value);
    }
    let mut closes = close;
    for (name, value) in error.headers() {
        if name == "connection" {
            closes |= value.eq_ignore_ascii_case("close");
        } else {
            push_header(&mut response, name, &value);
        }
    }
    if closes {
        push_header(&mut response, "connection", "close");
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    bytes.extend_from_slice(&body);
    Response::Error { bytes, closes }
}

/// Returns the status line and the `Date` header that hyper and async-h1
/// send on every response.
fn status_line(status: u16) -> String {
    let mut line = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    push_header(
        &mut line,
        "date",
        &httpdate::fmt_http_date(SystemTime::now()),
    );
    line
}

/// Returns the reason phrase of a status that the API sends, as RFC 9110
/// names it, or an empty phrase for any other status.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn push_header(response: &mut String, name: &str, value: &str) {
    response.push_str(name);
    response.push_str(": ");
    response.push_str(value);
    response.push_str("\r\n");
}

/// The bytes that a stream writes: its response head, then its frames in
/// batches, so that one write carries every frame that is ready.
///
/// One buffer is reused for every batch while frames keep coming. It is
/// freed while the stream waits for a frame, so that an idle stream keeps
/// no buffer.
pub(crate) struct Batches<S> {
    frames: S,
    /// Whether the body is delimited by the close rather than chunked.
    until_close: bool,
    buffer: Vec<u8>,
    /// Whether `buffer` contains a batch already returned, which the caller
    /// wrote before this call.
    returned: bool,
    /// Whether the last batch, with the end of the body, was returned.
    ended: bool,
}

impl<S: Stream<Item = Bytes> + Unpin> Batches<S> {
    /// Starts with the response head `head`, which goes out with the first
    /// frames.
    pub(crate) fn new(head: Vec<u8>, frames: S, until_close: bool) -> Self {
        Self {
            frames,
            until_close,
            buffer: head,
            returned: false,
            ended: false,
        }
    }

    /// Waits for the next frame and returns it, with every further frame
    /// that is ready, as the bytes of one write: chunked, or as they are
    /// for a body delimited by the close. The batch takes no further frame
    /// once it reaches 64 KiB. When the frames end, the batch ends the
    /// body, and the next call returns `None`.
    ///
    /// Write the batch before the next call, which reuses its buffer.
    pub(crate) async fn next(&mut self) -> Option<&[u8]> {
        if self.ended {
            return None;
        }
        if self.returned {
            self.buffer.clear();
            if self.buffer.capacity() > RETAINED_CAPACITY {
                self.buffer = Vec::new();
            }
        }
        self.returned = true;
        if self.buffer.is_empty() {
            let frame = match self.frames.next().now_or_never() {
                Some(frame) => frame,
                None => {
                    // The stream goes idle; it needs no buffer until the next frame.
                    self.buffer = Vec::new();
                    self.frames.next().await
                }
            };
            self.push(frame);
        }
        while !self.ended && self.buffer.len() < MAX_BATCH {
            match self.frames.next().now_or_never() {
                Some(frame) => self.push(frame),
                None => break,
            }
        }
        Some(&self.buffer)
    }

    /// Appends `frame` to the batch, or the end of the body for `None`.
    fn push(&mut self, frame: Option<Bytes>) {
        match frame {
            Some(frame) if self.until_close => self.buffer.extend_from_slice(&frame),
            Some(frame) => {
                // Writing to a `Vec` cannot fail.
                let _ = write!(self.buffer, "{:x}\r\n", frame.len());
                self.buffer.extend_from_slice(&frame);
                self.buffer.extend_from_slice(b"\r\n");
            }
            None => {
                if !self.until_close {
                    self.buffer.extend_from_slice(b"0\r\n\r\n");
                }
                self.ended = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// Returns every batch of `batches` until the body ends.
    fn collect<S: Stream<Item = Bytes> + Unpin>(mut batches: Batches<S>) -> Vec<Vec<u8>> {
        let mut collected = Vec::new();
        while let Some(batch) = batches.next().now_or_never().expect("every frame is ready") {
            collected.push(batch.to_vec());
        }
        collected
    }

    #[test]
    fn batches_ready_frames_chunked() {
        let frames = stream::iter([Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        let batches = collect(Batches::new(b"HEAD\r\n\r\n".to_vec(), frames, false));
        assert_eq!(
            batches,
            vec![b"HEAD\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n".to_vec()]
        );
    }

    #[test]
    fn batches_until_close_unframed() {
        let frames = stream::iter([Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        let batches = collect(Batches::new(b"H\r\n\r\n".to_vec(), frames, true));
        assert_eq!(batches, vec![b"H\r\n\r\nabc".to_vec()]);
    }

    #[test]
    fn batch_stops_at_max_size() {
        let frame = Bytes::from(vec![b'x'; MAX_BATCH / 2]);
        let frames = stream::iter(vec![frame; 3]);
        let batches = collect(Batches::new(Vec::new(), frames, true));
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH / 2]);
    }

    #[test]
    fn pending_frame_ends_batch() {
        let ready = stream::iter([Bytes::from_static(b"a")]);
        let frames = ready.chain(stream::pending());
        let mut batches = Batches::new(b"H".to_vec(), frames, true);
        let first = batches
            .next()
            .now_or_never()
            .expect("the first frame is ready");
        assert_eq!(first, Some(&b"Ha"[..]));
        assert!(
            batches.next().now_or_never().is_none(),
            "the next batch should wait for a frame"
        );
        assert_eq!(
            batches.buffer.capacity(),
            0,
            "an idle stream keeps no buffer"
        );
    }

    #[test]
    fn error_response_closes_on_request() {
        let error = ApiError::TooManyConnections { limit: 1 };
        let Response::Error { bytes, closes } = error_response(&error, &[], false) else {
            panic!("an error gives an error response");
        };
        let text = String::from_utf8(bytes).expect("the response is text");
        assert!(closes, "a connection past the limit is closed");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    }

    #[test]
    fn error_response_keeps_alive_by_default() {
        let error = ApiError::InvalidLastEventId {
            source_name: "Last-Event-ID",
            value: "x".into(),
        };
        let cors = [("vary", "origin".to_owned())];
        let Response::Error { bytes, closes } = error_response(&error, &cors, false) else {
            panic!("an error gives an error response");
        };
        let text = String::from_utf8(bytes).expect("the response is text");
        assert!(!closes, "a bad request leaves the connection open");
        assert!(!text.contains("connection:"), "{text}");
        assert!(text.contains("\r\nvary: origin\r\n"), "{text}");
        let (_, body) = text.split_once("\r\n\r\n").expect("the head ends");
        assert!(
            text.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
    }
}
