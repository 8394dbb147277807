//! Server-Sent Events framing, shared by every runtime.
//!
//! A publication is encoded once into a [`Bytes`] frame and the same frame
//! is queued for every subscriber. Names and data are safe on one line each:
//! names are checked for control characters on insert, and data is compact
//! JSON, which has no raw line breaks.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;

use crate::event::Publication;

#[cfg(test)]
pub(crate) mod testing;

/// The comment line sent to keep idle connections open.
pub(crate) const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// Encodes the `retry` field that sets a client's reconnection delay, in
/// whole milliseconds, as a block of its own that dispatches no message.
pub(crate) fn retry_frame(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

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
    use proptest::prelude::*;
    use serde_json::value::RawValue;
    use testing::Line;

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any accepted name and data, under any id, parse back to exactly
        /// one message with the fields `id`, `event` and `data`, in that
        /// order, and nothing else.
        #[test]
        fn frame_parses_to_one_message(publication in testing::publication()) {
            let frame = encode(&publication);
            let parsed = testing::parse(&frame);
            let record = &publication.record;
            let lines = vec![
                Line::Field("id".into(), publication.id.to_string()),
                Line::Field("event".into(), record.event.clone()),
                Line::Field("data".into(), record.data.get().to_owned()),
            ];
            prop_assert_eq!(&parsed.blocks, &vec![lines]);
            prop_assert!(parsed.pending.is_empty());
            prop_assert!(parsed.unterminated.is_empty());

            let interpreted = testing::interpret(&parsed);
            prop_assert_eq!(interpreted.messages, vec![testing::expected_message(&publication)]);
            prop_assert_eq!(interpreted.retry, None);
        }

        /// The `retry` block sets the reconnection time and dispatches nothing.
        #[test]
        fn retry_frame_parses_to_retry_only(millis in any::<u64>()) {
            let frame = retry_frame(Duration::from_millis(millis));
            let parsed = testing::parse(&frame);
            prop_assert_eq!(
                &parsed.blocks,
                &vec![vec![Line::Field("retry".into(), millis.to_string())]]
            );
            prop_assert!(parsed.pending.is_empty());
            prop_assert!(parsed.unterminated.is_empty());

            let interpreted = testing::interpret(&parsed);
            prop_assert!(interpreted.messages.is_empty());
            prop_assert_eq!(interpreted.retry, Some(millis));
        }
    }

    #[test]
    fn keep_alive_is_one_comment() {
        let parsed = testing::parse(KEEP_ALIVE_FRAME);
        assert_eq!(parsed.blocks, vec![vec![Line::Comment(String::new())]]);
        assert!(parsed.pending.is_empty());
        assert!(parsed.unterminated.is_empty());
        assert_eq!(testing::interpret(&parsed), testing::Interpreted::default());
    }
}
