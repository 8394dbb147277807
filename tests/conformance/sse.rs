//! A Server-Sent Events client over a raw TCP connection.
//!
//! It sends `GET /events` as HTTP/1.1, decodes a chunked or close-delimited
//! body and parses the `text/event-stream` fields `id`, `event` and `data`,
//! comments and blank-line dispatch. It keeps the exact bytes of each message,
//! so tests can check the wire format as well as the fields.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time allowed for the response headers of `GET /events`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// One dispatched SSE message.
#[derive(Debug, Clone)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<String>,
    pub(crate) event: Option<String>,
    /// The `data` lines joined with `\n`, or `None` if the message had no `data` field.
    pub(crate) data: Option<String>,
    pub(crate) data_lines: usize,
    /// The message exactly as sent, from its first field line to the blank line.
    pub(crate) raw: String,
}

impl SseEvent {
    /// Returns the `id` field as a number, panicking if it is missing or not one.
    pub(crate) fn publication_id(&self) -> u64 {
        let id = self
            .id
            .as_deref()
            .unwrap_or_else(|| panic!("SSE message has no `id` field: {:?}", self.raw));
        id.parse()
            .unwrap_or_else(|_| panic!("SSE `id` is not an unsigned integer: {:?}", self.raw))
    }

    /// Returns the `event` field, panicking if it is missing.
    pub(crate) fn name(&self) -> &str {
        self.event
            .as_deref()
            .unwrap_or_else(|| panic!("SSE message has no `event` field: {:?}", self.raw))
    }

    /// Parses the `data` field as JSON, panicking if it is missing or invalid.
    pub(crate) fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("SSE message has no `data` field: {:?}", self.raw));
        serde_json::from_str(data)
            .unwrap_or_else(|error| panic!("SSE data is not JSON ({error}): {:?}", self.raw))
    }
}

/// One item read from the stream.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(SseEvent),
    /// A comment line, without the leading `:` and one following space.
    Comment(String),
    /// A message with a `retry` field and no `data`, which sets the
    /// reconnection delay and dispatches no event.
    Retry(String),
    /// The server closed the connection or ended the chunked body.
    Closed,
}

#[derive(Debug)]
enum Framing {
    /// `transfer-encoding: chunked`: bytes left in the current chunk, and
    /// whether the CRLF after a chunk is still due.
    Chunked { remaining: usize, crlf_due: bool },
    /// The body runs until the server closes the connection.
    UntilClose,
}

/// An open `GET /events` connection.
#[derive(Debug)]
pub(crate) struct SseClient {
    pub(crate) status: u16,
    /// Response headers with lower-case names, in the order received.
    pub(crate) headers: Vec<(String, String)>,
    stream: TcpStream,
    framing: Framing,
    /// Bytes read from the socket but not yet decoded from the chunked framing.
    wire: Vec<u8>,
    /// Decoded body bytes not yet split into lines.
    body: Vec<u8>,
    closed: bool,
    current: Pending,
}

/// Fields of the message being read, before the blank line dispatches it.
#[derive(Debug, Default)]
struct Pending {
    id: Option<String>,
    event: Option<String>,
    retry: Option<String>,
    data: Vec<String>,
    raw: String,
}

impl SseClient {
    /// Connects, sends `GET /events` with `extra_headers` and reads the response headers.
    pub(crate) async fn connect(addr: SocketAddr, extra_headers: &[(&str, &str)]) -> SseClient {
        SseClient::connect_to(addr, "/events", extra_headers).await
    }

    /// Connects, sends `GET target` (a path with an optional query) with
    /// `extra_headers` and reads the response headers.
    pub(crate) async fn connect_to(
        addr: SocketAddr,
        target: &str,
        extra_headers: &[(&str, &str)],
    ) -> SseClient {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
        SseClient::request(stream, addr, target, extra_headers).await
    }

    /// Connects with a socket receive buffer of about `bytes`, sends
    /// `GET /events` and reads the response headers. A small buffer makes a
    /// client that does not read fill up after little data, where Linux
    /// would otherwise grow the buffer to megabytes.
    pub(crate) async fn connect_with_receive_buffer(addr: SocketAddr, bytes: u32) -> SseClient {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("failed to create a socket");
        socket
            .set_recv_buffer_size(bytes)
            .expect("failed to set SO_RCVBUF");
        let stream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
        SseClient::request(stream, addr, "/events", &[]).await
    }

    /// Sends `GET target` on `stream` and reads the response headers.
    async fn request(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        extra_headers: &[(&str, &str)],
    ) -> SseClient {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("failed to send GET /events");

        let mut wire = Vec::new();
        let deadline = Instant::now() + HEADER_TIMEOUT;
        let header_end = loop {
            if let Some(position) = find(&wire, b"\r\n\r\n") {
                break position;
            }
            let mut buffer = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
                .await
                .unwrap_or_else(|_| {
                    panic!("GET /events: no response headers within {HEADER_TIMEOUT:?}")
                })
                .expect("failed to read the GET /events response");
            assert!(
                read > 0,
                "GET /events: connection closed before the response headers ended: {:?}",
                String::from_utf8_lossy(&wire)
            );
            wire.extend_from_slice(&buffer[..read]);
        };

        let head = String::from_utf8_lossy(&wire[..header_end]).into_owned();
        wire.drain(..header_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("GET /events: invalid status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let chunked = headers.iter().any(|(name, value)| {
            name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
        });
        let framing = if chunked {
            Framing::Chunked {
                remaining: 0,
                crlf_due: false,
            }
        } else {
            Framing::UntilClose
        };

        let mut client = SseClient {
            status,
            headers,
            stream,
            framing,
            wire,
            body: Vec::new(),
            closed: false,
            current: Pending::default(),
        };
        // The first read may already hold the start of the body.
        client.decode();
        client
    }

    /// Returns every value of header `name` (lower case), joined with `, `.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }

    /// Reads the next message, comment or end of stream, or `None` if nothing
    /// complete arrives before `deadline`.
    pub(crate) async fn next_item(&mut self, deadline: Instant) -> Option<Item> {
        loop {
            if let Some(item) = self.parse_line() {
                return Some(item);
            }
            if self.closed {
                return Some(Item::Closed);
            }
            let mut buffer = [0u8; 16384];
            let read = match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await
            {
                Err(_) => return None,
                Ok(Ok(read)) => read,
                // A reset connection ends the stream like a close does.
                Ok(Err(_)) => 0,
            };
            if read == 0 {
                self.closed = true;
            } else {
                self.wire.extend_from_slice(&buffer[..read]);
                self.decode();
            }
        }
    }

    /// Returns the next message within `timeout`, skipping comments, or `None`.
    /// Panics if the stream ends.
    pub(crate) async fn try_next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_item(deadline).await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) | Item::Retry(_) => continue,
                Item::Closed => panic!("the SSE stream ended while a message was expected"),
            }
        }
    }

    /// Returns the next message within `timeout`, skipping comments, and
    /// panics if none arrives.
    pub(crate) async fn next_event(&mut self, timeout: Duration) -> SseEvent {
        match self.try_next_event(timeout).await {
            Some(event) => event,
            None => panic!("expected an SSE message within {timeout:?}, none arrived"),
        }
    }

    /// Reads exactly `count` messages, each within `timeout`.
    pub(crate) async fn next_events(&mut self, count: usize, timeout: Duration) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(count);
        for index in 0..count {
            match self.try_next_event(timeout).await {
                Some(event) => events.push(event),
                None => panic!(
                    "expected {count} SSE messages, message {} did not arrive within {timeout:?}; got {:?}",
                    index + 1,
                    events.iter().map(|event| &event.raw).collect::<Vec<_>>()
                ),
            }
        }
        events
    }

    /// Returns the next `retry` value within `timeout`, skipping comments,
    /// or `None`. Panics if a message or the end of the stream comes first.
    pub(crate) async fn next_retry(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_item(deadline).await? {
                Item::Retry(retry) => return Some(retry),
                Item::Comment(_) => continue,
                Item::Event(event) => panic!("expected a retry field first, got {:?}", event.raw),
                Item::Closed => panic!("the SSE stream ended before a retry field"),
            }
        }
    }

    /// Asserts that no message arrives for `window`. Comments are allowed.
    pub(crate) async fn assert_no_event(&mut self, window: Duration, context: &str) {
        if let Some(event) = self.try_next_event(window).await {
            panic!("{context}: expected no SSE message, got {:?}", event.raw);
        }
    }

    /// Returns the next comment within `timeout`, skipping messages, or `None`.
    pub(crate) async fn next_comment(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_item(deadline).await? {
                Item::Comment(text) => return Some(text),
                Item::Event(_) | Item::Retry(_) => continue,
                Item::Closed => return None,
            }
        }
    }

    /// Waits up to `timeout` for the server to end the stream, skipping
    /// anything else that arrives.
    pub(crate) async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_item(deadline).await {
                None => return false,
                Some(Item::Closed) => return true,
                Some(_) => continue,
            }
        }
    }

    /// Moves decoded bytes from `wire` to `body`.
    fn decode(&mut self) {
        match &mut self.framing {
            Framing::UntilClose => self.body.append(&mut self.wire),
            Framing::Chunked {
                remaining,
                crlf_due,
            } => loop {
                if *remaining > 0 {
                    let take = (*remaining).min(self.wire.len());
                    if take == 0 {
                        return;
                    }
                    self.body.extend(self.wire.drain(..take));
                    *remaining -= take;
                    *crlf_due = *remaining == 0;
                } else if *crlf_due {
                    if self.wire.len() < 2 {
                        return;
                    }
                    assert_eq!(
                        &self.wire[..2],
                        b"\r\n",
                        "chunked body: expected CRLF after a chunk"
                    );
                    self.wire.drain(..2);
                    *crlf_due = false;
                } else {
                    let Some(line_end) = find(&self.wire, b"\r\n") else {
                        return;
                    };
                    let size_line = String::from_utf8_lossy(&self.wire[..line_end]).into_owned();
                    self.wire.drain(..line_end + 2);
                    let size_text = size_line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_text, 16).unwrap_or_else(|_| {
                        panic!("chunked body: invalid chunk size line {size_line:?}")
                    });
                    if size == 0 {
                        // The last chunk: the body, and so the stream, has ended.
                        self.closed = true;
                        return;
                    }
                    *remaining = size;
                }
            },
        }
    }

    /// Parses complete lines from `body` until one of them completes an item.
    fn parse_line(&mut self) -> Option<Item> {
        while let Some(newline) = self.body.iter().position(|&byte| byte == b'\n') {
            let line_bytes: Vec<u8> = self.body.drain(..=newline).collect();
            let raw_line = String::from_utf8_lossy(&line_bytes).into_owned();
            let without_lf = raw_line.strip_suffix('\n').unwrap_or(&raw_line);
            let line = without_lf.strip_suffix('\r').unwrap_or(without_lf);

            if line.is_empty() {
                let pending = std::mem::take(&mut self.current);
                if pending.raw.is_empty() {
                    continue;
                }
                let data_lines = pending.data.len();
                if data_lines == 0 {
                    if let Some(retry) = pending.retry {
                        return Some(Item::Retry(retry));
                    }
                }
                let data = if data_lines == 0 {
                    None
                } else {
                    Some(pending.data.join("\n"))
                };
                return Some(Item::Event(SseEvent {
                    id: pending.id,
                    event: pending.event,
                    data,
                    data_lines,
                    raw: pending.raw + &raw_line,
                }));
            }

            if let Some(comment) = line.strip_prefix(':') {
                let text = comment.strip_prefix(' ').unwrap_or(comment);
                return Some(Item::Comment(text.to_owned()));
            }

            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => self.current.data.push(value.to_owned()),
                "retry" => self.current.retry = Some(value.to_owned()),
                _ => {}
            }
            self.current.raw.push_str(&raw_line);
        }
        None
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
