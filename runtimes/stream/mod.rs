//! `GET /events` served straight on the socket, the parts that both
//! runtimes share.
//!
//! The HTTP servers keep buffers for each connection's whole life: hyper an
//! 8 KiB read buffer and an 8 KiB header buffer, async-h1 an 8 KiB buffer
//! that it copies the response body through. That is most of what an idle
//! SSE stream costs under them. A stream reads nothing after its request
//! and writes only small frames, so each runtime's accept loop peeks at the
//! first request of a connection. It serves a plain `GET /events` itself,
//! with the same checks, headers and frames from [`api`](crate::api) and
//! [`sse`](crate::sse). Every other request goes to the HTTP server with
//! nothing consumed.
//!
//! This module parses the peeked request head ([`request`]) and builds the
//! bytes of the response ([`response`]). Each runtime's I/O loop is in its
//! own module: `tokio_stream` and `async_std_stream`.

mod request;
mod response;

pub(crate) use request::{first_request, FirstRequest, Head, Peek};
pub(crate) use response::{respond, Batches, Response};
