//! The first request of a connection: peeking at its head until it is
//! complete, and reading the parts of a `GET /events` that the API needs.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{self, Either};

/// Bytes of a request head that the peek looks at. A longer head goes to
/// the runtime's HTTP server.
const MAX_HEAD: usize = 8192;

/// Maximum headers parsed from a request head. A head with more goes to
/// the runtime's HTTP server.
const MAX_HEADERS: usize = 64;

/// The first wait before a connection whose first request head is
/// incomplete is peeked at again. Peeking does not consume the bytes, so
/// the socket stays readable and waiting on it would return at once. The
/// wait doubles up to [`MAX_PEEK_INTERVAL`], so that a client that sends
/// its head a byte at a time costs few wakeups.
const PEEK_INTERVAL: Duration = Duration::from_millis(10);

/// The maximum wait between two peeks at an incomplete head.
const MAX_PEEK_INTERVAL: Duration = Duration::from_millis(320);

/// A connection's socket as the peek loop uses it, with its runtime's timer.
pub(crate) trait Peek {
    /// Waits for received bytes and copies them into `buffer` without
    /// consuming them. Returns 0 once the peer has closed the connection.
    fn peek(&self, buffer: &mut [u8]) -> impl Future<Output = io::Result<usize>>;

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()>;
}

/// The route of a connection's first request.
pub(crate) enum FirstRequest<T> {
    /// A `GET /events` to serve on the socket, with its parsed head and
    /// what the runtime's `read_head` read from it.
    Stream(Head, T),
    /// Any other request, or one that the runtime leaves to its HTTP server.
    Other,
    /// The client closed the connection or sent no complete head in time.
    None,
}

/// The parts of a `GET /events` request head that the API reads.
pub(crate) struct Head {
    /// The head's length in bytes, consumed from the socket before the response.
    pub(crate) length: usize,
    /// Whether the request is HTTP/1.0, which gets a stream delimited by the close.
    pub(crate) http_10: bool,
    /// The query string as sent, without the `?`.
    pub(crate) query: Option<String>,
    pub(crate) origin: Option<String>,
    pub(crate) last_event_id: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) cookie: Option<String>,
}

/// Peeks at the first request on `socket` until its head is complete or
/// `deadline` passes, and returns its route.
///
/// `read_head` reads the bytes of a complete `GET /events` head, and the
/// request parsed from them, as the runtime's HTTP server would. It returns
/// `None` for a request that the server would treat differently from the
/// stream served here, which then goes to the server.
pub(crate) async fn first_request<T>(
    socket: &impl Peek,
    deadline: Instant,
    read_head: impl Fn(&httparse::Request<'_, '_>, &[u8]) -> Option<T>,
) -> FirstRequest<T> {
    let mut buffer = vec![0u8; MAX_HEAD];
    let mut interval = PEEK_INTERVAL;
    loop {
        let peeked = {
            let peek = pin!(socket.peek(&mut buffer));
            let timeout = pin!(socket.sleep_until(deadline));
            match future::select(peek, timeout).await {
                Either::Left((Ok(peeked), _)) if peeked > 0 => peeked,
                Either::Left(_) | Either::Right(_) => return FirstRequest::None,
            }
        };
        match parse(&buffer[..peeked], &read_head) {
            Parsed::Stream(head, read) => return FirstRequest::Stream(head, read),
            Parsed::Other => return FirstRequest::Other,
            Parsed::Partial if peeked == MAX_HEAD => return FirstRequest::Other,
            Parsed::Partial => {
                let now = Instant::now();
                if now >= deadline {
                    return FirstRequest::None;
                }
                socket.sleep_until(deadline.min(now + interval)).await;
                interval = (interval * 2).min(MAX_PEEK_INTERVAL);
            }
        }
    }
}

enum Parsed<T> {
    Stream(Head, T),
    Other,
    Partial,
}

fn parse<T>(
    bytes: &[u8],
    read_head: impl Fn(&httparse::Request<'_, '_>, &[u8]) -> Option<T>,
) -> Parsed<T> {
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
        // A request with a body or an upgrade is rare on a stream, so the
        // HTTP server handles it by the book.
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
        // The first value counts, as under hyper and tide. A value that is
        // not visible ASCII matches no origin, name or id, as under hyper.
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
    match read_head(&request, &bytes[..length]) {
        Some(read) => Parsed::Stream(head, read),
        None => Parsed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Parsed<()> {
        parse(bytes, |_, _| Some(()))
    }

    #[test]
    fn parse_reads_stream_head() {
        let bytes = b"GET /events?event=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\
            Origin: http://a.test\r\nCookie: c=1\r\nAuthorization: Bearer t\r\n\r\n";
        let Parsed::Stream(head, ()) = parse_all(bytes) else {
            panic!("a complete GET /events head should parse as a stream");
        };
        assert_eq!(head.length, bytes.len());
        assert!(!head.http_10);
        assert_eq!(head.query.as_deref(), Some("event=a"));
        assert_eq!(head.last_event_id.as_deref(), Some("7"));
        assert_eq!(head.origin.as_deref(), Some("http://a.test"));
        assert_eq!(head.cookie.as_deref(), Some("c=1"));
        assert_eq!(head.authorization.as_deref(), Some("Bearer t"));
    }

    #[test]
    fn parse_keeps_first_value() {
        let bytes = b"GET /events HTTP/1.0\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n";
        let Parsed::Stream(head, ()) = parse_all(bytes) else {
            panic!("an HTTP/1.0 GET /events head should parse as a stream");
        };
        assert!(head.http_10);
        assert_eq!(head.last_event_id.as_deref(), Some("1"));
    }

    #[test]
    fn parse_leaves_others_to_server() {
        let others: [&[u8]; 5] = [
            b"GET /health HTTP/1.1\r\n\r\n",
            b"POST /events HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /events HTTP/1.1\r\nbad header\r\n\r\n",
        ];
        for bytes in others {
            assert!(
                matches!(parse_all(bytes), Parsed::Other),
                "{:?} should go to the HTTP server",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn parse_waits_for_whole_head() {
        assert!(matches!(
            parse_all(b"GET /events HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn parse_leaves_unread_to_server() {
        let parsed = parse(b"GET /events HTTP/1.1\r\n\r\n", |_, _| None::<()>);
        assert!(matches!(parsed, Parsed::Other));
    }
}
