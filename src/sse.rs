//! Server-Sent Events framing, shared by every runtime.
//!
//! A publication is encoded once into a [`Bytes`] frame and the same frame
//! is queued for every subscriber. Names and data are safe on one line each:
//! names are checked for control characters on insert, and data is compact
//! JSON, which has no raw line breaks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::event::Publication;

/// The comment line sent to keep idle connections open.
pub(crate) const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// Encodes one publication as an SSE message.
pub(crate) fn encode(publication: &Publication) -> Bytes {
    let record = &publication.record;
    let data = record.data.get();
    let mut frame = Vec::with_capacity(32 + record.event.len() + data.len());
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(publication.id.to_string().as_bytes());
    frame.extend_from_slice(b"\nevent: ");
    frame.extend_from_slice(record.event.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(data.as_bytes());
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// A stream of SSE frames with a keep-alive comment on every tick.
///
/// The stream ends when `frames` ends. `ticks` comes from the runtime's own
/// timer, which keeps this module free of any runtime.
#[derive(Debug)]
pub struct KeepAlive<F, T> {
    frames: F,
    ticks: T,
}

impl<F, T> KeepAlive<F, T> {
    /// Interleaves `frames` with a keep-alive comment per item of `ticks`.
    pub fn new(frames: F, ticks: T) -> Self {
        Self { frames, ticks }
    }
}

impl<F, T> Stream for KeepAlive<F, T>
where
    F: Stream<Item = Bytes> + Unpin,
    T: Stream + Unpin,
{
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.frames).poll_next(cx) {
            return Poll::Ready(frame);
        }
        match Pin::new(&mut self.ticks).poll_next(cx) {
            Poll::Ready(Some(_)) => Poll::Ready(Some(Bytes::from_static(KEEP_ALIVE_FRAME))),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Record;
    use serde_json::value::RawValue;

    #[test]
    fn encodes_one_message() {
        let publication = Publication {
            id: 7,
            record: Record {
                id: 3,
                event: "title".into(),
                timestamp: 0,
                published: true,
                data: RawValue::from_string(r#"{"text":"a\nb"}"#.into()).unwrap(),
            },
        };
        assert_eq!(
            &encode(&publication)[..],
            b"id: 7\nevent: title\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
    }
}
