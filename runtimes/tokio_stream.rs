//! `GET /events` served straight on the socket under tokio, without hyper.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB
//! header buffer for its whole life, about three quarters of what an idle
//! SSE stream costs under it. The accept loop therefore peeks at the first
//! request of each connection with [`stream::first_request`], and this
//! module serves a plain `GET /events` on the socket. Every other request
//! goes to hyper with nothing consumed.

use std::future::Future;
use std::io;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::connection::Connection;
use crate::sse::KeepAlive;
use crate::stream::{self, Batches, Head, Peek, Response};
use crate::Broker;

impl Peek for TcpStream {
    fn peek(&self, buffer: &mut [u8]) -> impl Future<Output = io::Result<usize>> {
        TcpStream::peek(self, buffer)
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(deadline.into())
    }
}

/// Serves the SSE stream of a `GET /events` whose head
/// [`stream::first_request`] parsed, until the stream ends, the client
/// leaves, or the broker closes the connection. An error response closes
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

    let close_after_error = true;
    let (response_head, subscription) =
        match stream::respond(&broker, &connection, &head, close_after_error).await {
            Response::Stream {
                response_head,
                subscription,
            } => (response_head, subscription),
            Response::Error { bytes, .. } => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
        };

    let ticks = crate::tokio_axum::Ticks::new(broker.config().keep_alive);
    let frames = KeepAlive::new(subscription, ticks);
    let mut batches = Batches::new(response_head, frames, head.http_10);
    let (mut reader, mut writer) = stream.split();
    let written = async {
        while let Some(batch) = batches.next().await {
            writer.write_all(batch).await?;
        }
        // The broker closed the stream, as at shutdown, and the last batch
        // ended the body.
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
