//! A minimal HTTP/1.1 client over raw TCP: keep-alive `POST` requests and
//! Server-Sent Events streams, with `Content-Length` and chunked bodies.
//!
//! It sends the same bytes to every server, so that Broker and nchan get
//! identical client work. It speaks only to loopback addresses.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Maximum size of a response head; a larger one is an error.
const MAX_HEAD: usize = 64 * 1024;

/// Bytes read per call at least; small, because the idle scenario keeps
/// 10,000 connections with a buffer each.
const READ_SIZE: usize = 4 * 1024;

/// Time allowed for a TCP connect and for each response head.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `http://` URL whose host resolves to a loopback address.
#[derive(Debug, Clone)]
pub(crate) struct Url {
    pub(crate) addr: SocketAddr,
    /// The `Host` header value, as written in the URL.
    pub(crate) authority: String,
    /// Path and query, starting with `/`.
    pub(crate) target: String,
}

impl Url {
    /// Parses `http://HOST:PORT/PATH?QUERY`; rejects other schemes and any
    /// host that is not a loopback address.
    pub(crate) fn parse(text: &str) -> Result<Url, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("invalid URL {text:?}: only http:// is supported"))?;
        let (authority, target) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()
            .map_err(|error| format!("invalid URL {text:?}: {error} (write HOST:PORT)"))?
            .next()
            .ok_or_else(|| format!("invalid URL {text:?}: {authority} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "invalid URL {text:?}: {} is not a loopback address; this tool sends load only to 127.0.0.0/8 or ::1",
                addr.ip()
            ));
        }
        Ok(Url {
            addr,
            authority: authority.to_owned(),
            target: target.to_owned(),
        })
    }

    /// Returns a copy with `name=value` appended to the query.
    pub(crate) fn with_query(&self, name: &str, value: &str) -> Url {
        let separator = if self.target.contains('?') { '&' } else { '?' };
        let mut url = self.clone();
        url.target = format!("{}{separator}{name}={value}", self.target);
        url
    }
}

/// The delimiting of a response body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A response head: status code, body framing and whether the server
/// closes the connection after the body.
#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
    close: bool,
}

/// The read side of a connection with its buffer of unparsed bytes.
#[derive(Debug)]
struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Start of the unparsed bytes in `buffer`.
    start: usize,
}

impl Reader {
    fn new(stream: TcpStream) -> Reader {
        Reader {
            stream,
            buffer: Vec::with_capacity(READ_SIZE),
            start: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    fn consume(&mut self, count: usize) {
        self.start += count;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes; returns `false` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        // `read_buf` fills spare capacity without zeroing it first.
        self.buffer.reserve(READ_SIZE);
        Ok(self.stream.read_buf(&mut self.buffer).await? > 0)
    }

    /// Reads and parses a response head.
    async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = find(self.pending(), b"\r\n\r\n") {
                let head = parse_head(&self.pending()[..end])?;
                self.consume(end + 4);
                return Ok(head);
            }
            if self.pending().len() > MAX_HEAD {
                return Err(invalid("response head is over 64 KiB"));
            }
            if !self.fill().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection before a response head",
                ));
            }
        }
    }

    /// Reads and discards a body with the given framing.
    async fn skip_body(&mut self, framing: Framing) -> io::Result<()> {
        let mut decoder = BodyDecoder::new(framing);
        let mut sink = Vec::new();
        loop {
            let used = decoder.decode(self.pending(), &mut sink)?;
            self.consume(used);
            sink.clear();
            if decoder.is_done() {
                return Ok(());
            }
            if !self.fill().await? {
                return match framing {
                    Framing::UntilClose => Ok(()),
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "server closed the connection inside a response body",
                    )),
                };
            }
        }
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(&format!("invalid status line {status_line:?}")))?;
    let mut framing = Framing::UntilClose;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let length = value
                .parse()
                .map_err(|_| invalid(&format!("invalid Content-Length {value:?}")))?;
            framing = Framing::Length(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    // A 204 or 304 has no body, whatever its headers contain.
    if status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Head {
        status,
        framing,
        close: close || framing == Framing::UntilClose,
    })
}

/// Turns a framed body into its payload bytes, incrementally.
#[derive(Debug)]
struct BodyDecoder {
    framing: Framing,
    /// Payload bytes left in the current chunk or in a `Content-Length` body.
    remaining: usize,
    /// In a chunked body: the CRLF after a chunk's data is still to come.
    chunk_end: bool,
    done: bool,
}

impl BodyDecoder {
    fn new(framing: Framing) -> BodyDecoder {
        let remaining = match framing {
            Framing::Length(length) => length,
            _ => 0,
        };
        BodyDecoder {
            framing,
            remaining,
            chunk_end: false,
            done: framing == Framing::Length(0),
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the payload found in `input` to `output` and returns how many
    /// bytes of `input` it used; the rest waits for more input.
    fn decode(&mut self, input: &[u8], output: &mut Vec<u8>) -> io::Result<usize> {
        match self.framing {
            Framing::UntilClose => {
                output.extend_from_slice(input);
                Ok(input.len())
            }
            Framing::Length(_) => {
                let take = self.remaining.min(input.len());
                output.extend_from_slice(&input[..take]);
                self.remaining -= take;
                self.done = self.remaining == 0;
                Ok(take)
            }
            Framing::Chunked => self.decode_chunked(input, output),
        }
    }

    fn decode_chunked(&mut self, input: &[u8], output: &mut Vec<u8>) -> io::Result<usize> {
        let mut used = 0;
        while !self.done {
            let rest = &input[used..];
            if self.remaining > 0 {
                let take = self.remaining.min(rest.len());
                if take == 0 {
                    break;
                }
                output.extend_from_slice(&rest[..take]);
                self.remaining -= take;
                used += take;
                self.chunk_end = self.remaining == 0;
            } else if self.chunk_end {
                if rest.len() < 2 {
                    break;
                }
                if &rest[..2] != b"\r\n" {
                    return Err(invalid("chunk data is not followed by CRLF"));
                }
                used += 2;
                self.chunk_end = false;
            } else {
                let Some(end) = find(rest, b"\r\n") else {
                    break;
                };
                let line = std::str::from_utf8(&rest[..end]).unwrap_or_default();
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| invalid(&format!("invalid chunk size line {line:?}")))?;
                used += end + 2;
                if size == 0 {
                    // The last chunk. Neither server sends trailer fields,
                    // so only the empty line after it is consumed.
                    self.done = true;
                    if input[used..].starts_with(b"\r\n") {
                        used += 2;
                    }
                } else {
                    self.remaining = size;
                }
            }
        }
        Ok(used)
    }
}

async fn connect(url: &Url) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(url.addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A keep-alive connection that sends `POST` requests one at a time.
#[derive(Debug)]
pub(crate) struct Publisher {
    url: Url,
    reader: Option<Reader>,
}

impl Publisher {
    pub(crate) fn new(url: Url) -> Publisher {
        Publisher { url, reader: None }
    }

    /// Sends `body` as JSON and returns the response status once the whole
    /// response has been read. Reconnects when the server closed the
    /// previous connection.
    pub(crate) async fn post(&mut self, body: &str) -> io::Result<u16> {
        let mut reader = match self.reader.take() {
            Some(reader) => reader,
            None => Reader::new(connect(&self.url).await?),
        };
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.url.target,
            self.url.authority,
            body.len()
        );
        reader.stream.write_all(request.as_bytes()).await?;
        let head = tokio::time::timeout(IO_TIMEOUT, reader.read_head())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))??;
        reader.skip_body(head.framing).await?;
        if !head.close {
            self.reader = Some(reader);
        }
        Ok(head.status)
    }
}

/// One message of an event stream: its `event` field and its `data`.
#[derive(Debug, Default)]
pub(crate) struct Message {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// An open Server-Sent Events stream whose response head has been read.
#[derive(Debug)]
pub(crate) struct EventStream {
    reader: Reader,
    decoder: BodyDecoder,
    /// Decoded body bytes not yet parsed into messages.
    body: Vec<u8>,
    /// Start of the unparsed bytes in `body`.
    start: usize,
    message: Message,
}

impl EventStream {
    /// Connects, sends `GET` and reads the response head; fails unless the
    /// status is 200.
    pub(crate) async fn open(url: &Url) -> io::Result<EventStream> {
        let mut stream = connect(url).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            url.target, url.authority
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = Reader::new(stream);
        let head = tokio::time::timeout(IO_TIMEOUT, reader.read_head())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response head timed out"))??;
        if head.status != 200 {
            return Err(io::Error::other(format!(
                "GET {} returned status {}, expected 200",
                url.target, head.status
            )));
        }
        Ok(EventStream {
            reader,
            decoder: BodyDecoder::new(head.framing),
            body: Vec::with_capacity(READ_SIZE),
            start: 0,
            message: Message::default(),
        })
    }

    /// Returns the next message that has data, or `None` at the end of the
    /// stream. Comments, `retry` and `id` fields are skipped.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(message) = self.parse() {
                return Ok(Some(message));
            }
            if self.decoder.is_done() {
                return Ok(None);
            }
            if self.reader.pending().is_empty() && !self.reader.fill().await? {
                return Ok(None);
            }
            if self.start > 0 {
                self.body.drain(..self.start);
                self.start = 0;
            }
            let used = self.decoder.decode(self.reader.pending(), &mut self.body)?;
            self.reader.consume(used);
            if used == 0 && !self.reader.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Parses complete lines from the decoded body; returns a message when a
    /// blank line ends one that has data.
    fn parse(&mut self) -> Option<Message> {
        while let Some(length) = self.body[self.start..].iter().position(|&b| b == b'\n') {
            let line = &self.body[self.start..self.start + length];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line);
            self.start += length + 1;
            if line.is_empty() {
                let message = std::mem::take(&mut self.message);
                if !message.data.is_empty() {
                    return Some(message);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.message.event = value.to_owned(),
                "data" => {
                    if !self.message.data.is_empty() {
                        self.message.data.push('\n');
                    }
                    self.message.data.push_str(value);
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_body_decodes_across_splits() {
        let raw = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let mut output = Vec::new();
            let used = decoder.decode(&raw[..split], &mut output).unwrap();
            let mut rest = raw[used..].to_vec();
            let used = decoder.decode(&rest, &mut output).unwrap();
            rest.drain(..used);
            assert_eq!(output, b"hello world", "split at {split}");
            assert!(decoder.is_done(), "split at {split}");
        }
    }

    #[test]
    fn url_rejects_other_hosts() {
        assert!(Url::parse("http://127.0.0.1:80/pub").is_ok());
        assert!(Url::parse("http://[::1]:80/pub").is_ok());
        assert!(Url::parse("http://10.0.0.1:80/pub").is_err());
        assert!(Url::parse("https://127.0.0.1:80/pub").is_err());
    }
}
