//! `GET /events` served straight on the socket under async-std, without
//! async-h1.
//!
//! async-h1 copies a response body through an 8 KiB buffer for the
//! stream's whole life, and an idle SSE stream cost 19.4 KiB of resident
//! memory under it. The accept loop therefore peeks at the first request of
//! each connection with [`stream::first_request`], and this module serves a
//! plain `GET /events` on the socket. Every other request goes to async-h1
//! with nothing consumed, and so does every head that async-h1 would reject
//! or read differently, so that both paths respond alike.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::time::Instant;

use async_std::net::TcpStream;
use futures_util::future::{self, Either};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use tide::http::Url;
use tracing::debug;

use crate::connection::Connection;
use crate::sse::KeepAlive;
use crate::stream::{self, Batches, Head, Peek, Response};
use crate::Broker;

/// The length at which async-h1 2.3 rejects a request head.
const ASYNC_H1_MAX_HEAD: usize = 8 * 1024;

impl Peek for TcpStream {
    fn peek(&self, buffer: &mut [u8]) -> impl Future<Output = io::Result<usize>> {
        TcpStream::peek(self, buffer)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        async_std::task::sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// The parts of a `GET /events` head that async-h1 reads beyond [`Head`].
pub(crate) struct AsyncH1Head {
    /// The query string of the URL that async-h1 builds, which
    /// percent-encodes some bytes that the request sent as they are.
    query: Option<String>,
    /// Whether the connection may carry another request after an error
    /// response: the request's first `Connection` header is not `close`.
    keep_alive: bool,
}

/// Reads `request`, a complete `GET /events` head of the bytes `head`, as
/// async-h1 2.3 does. Returns `None` for a head that async-h1 rejects by
/// closing the connection: HTTP/1.0, no `Host`, a host that makes no valid
/// URL, a header value that is not ASCII, or a head of 8 KiB or more. Also
/// returns `None` for a head that does not end with CRLF CRLF, because
/// async-h1 reads on past any other end of the head.
pub(crate) fn read_as_async_h1(
    request: &httparse::Request<'_, '_>,
    head: &[u8],
) -> Option<AsyncH1Head> {
    let read_alike = head.len() < ASYNC_H1_MAX_HEAD && head.ends_with(b"\r\n\r\n");
    let ascii = request.headers.iter().all(|header| header.value.is_ascii());
    if request.version != Some(1) || !read_alike || !ascii {
        return None;
    }
    let first_value = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    let host = first_value("host")?;
    let target = request.path?;
    let url = Url::parse(&format!("http://{host}{target}")).ok()?;
    let keep_alive =
        !first_value("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
    Some(AsyncH1Head {
        query: url.query().map(str::to_owned),
        keep_alive,
    })
}

/// The connection's next step after [`serve`].
pub(crate) enum Served {
    /// Closing, because the stream ended, the client left, or the error
    /// response or the request carried `Connection: close`.
    Close,
    /// Reading the next request, after an error response.
    KeepAlive,
}

/// Serves the SSE stream of a `GET /events` whose head
/// [`stream::first_request`] parsed, until the stream ends, the client
/// leaves, or the broker closes the connection. After an error response,
/// the connection stays open for another request unless the response or
/// the request carries `Connection: close`, as under async-h1.
pub(crate) async fn serve(
    broker: &Broker,
    stream: &TcpStream,
    connection: &Connection,
    mut head: Head,
    read: AsyncH1Head,
) -> Served {
    // The head was only peeked at; take it off the socket.
    let mut consumed = vec![0u8; head.length];
    if (&*stream).read_exact(&mut consumed).await.is_err() {
        return Served::Close;
    }
    drop(consumed);

    head.query = read.query;
    let close_after_error = false;
    let (response_head, subscription) =
        match stream::respond(broker, connection, &head, close_after_error).await {
            Response::Stream {
                response_head,
                subscription,
            } => (response_head, subscription),
            Response::Error { bytes, closes } => {
                let written = (&*stream).write_all(&bytes).await;
                return if written.is_ok() && read.keep_alive && !closes {
                    Served::KeepAlive
                } else {
                    Served::Close
                };
            }
        };

    let ticks = async_std::stream::interval(broker.config().keep_alive);
    let frames = KeepAlive::new(subscription, ticks);
    let mut batches = Batches::new(response_head, frames, head.http_10);
    let written = async {
        while let Some(batch) = batches.next().await {
            (&*stream).write_all(batch).await?;
        }
        // The broker closed the stream, as at shutdown, and the last batch
        // ended the body.
        stream.shutdown(Shutdown::Write)
    };
    // Nothing more is expected from the client: a read that returns
    // means it left, or it broke the protocol.
    let left = async {
        let mut bytes = [0u8; 64];
        loop {
            match (&*stream).read(&mut bytes).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    let (written, left) = (pin!(written), pin!(left));
    let ended = future::select(written, future::select(left, connection.closed())).await;
    match ended {
        Either::Left((Err(error), _)) => debug!(%error, "failed to write to a subscriber"),
        Either::Left((Ok(()), _)) => {}
        Either::Right((Either::Left(((), _)), _)) => debug!("subscriber left"),
        Either::Right((Either::Right(((), _)), _)) => {
            debug!("closed the connection at the broker's request");
        }
    }
    Served::Close
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes`, a complete request head, and returns what
    /// [`read_as_async_h1`] reads from it.
    fn read_head(bytes: &[u8]) -> Option<AsyncH1Head> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let status = request.parse(bytes).expect("the head parses");
        assert_eq!(status, httparse::Status::Complete(bytes.len()));
        read_as_async_h1(&request, bytes)
    }

    #[test]
    fn reads_query_as_url() {
        let read = read_head(b"GET /events?event=\"a\" HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("a plain GET /events is served on the socket");
        assert_eq!(read.query.as_deref(), Some("event=%22a%22"));
        assert!(read.keep_alive);
    }

    #[test]
    fn reads_connection_close() {
        let bytes = b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n";
        let read = read_head(bytes).expect("a plain GET /events is served on the socket");
        assert_eq!(read.query, None);
        assert!(!read.keep_alive);
    }

    #[test]
    fn leaves_rejected_to_async_h1() {
        let rejected: [&[u8]; 5] = [
            b"GET /events HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET /events HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET /events HTTP/1.1\r\nHost: x\r\nOrigin: \xc3\xa9\r\n\r\n",
            b"GET /events HTTP/1.1\nHost: x\n\n",
        ];
        for bytes in rejected {
            assert!(
                read_head(bytes).is_none(),
                "{:?} should go to async-h1",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
