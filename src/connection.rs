//! Client connections as the runtimes track them.
//!
//! Each runtime's accept loop registers every TCP connection with the
//! broker's [`Connections`], which counts them against
//! [`Config::max_connections`](crate::Config::max_connections). The
//! resulting [`Connection`] travels with each request on that connection.
//! It lets the API reject requests past the cap, and it lets the core close
//! the connection of a subscriber that stopped reading.
//!
//! Closing from the core matters because an HTTP server polls a response
//! body only when the socket can take more bytes. Ending a stalled client's
//! stream therefore would not close its socket, and the connection with its
//! buffers would stay until the client read again. A closed [`Connection`]
//! instead wakes its accept loop's connection task, which drops the
//! connection at once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// The count of open connections and its limit, shared by a broker and
/// the accept loop that serves it.
#[derive(Clone)]
pub struct Connections {
    counter: Arc<Counter>,
}

struct Counter {
    open: AtomicUsize,
    limit: usize,
    /// Connections registered with [`Connections::open`], admitted or not.
    accepted: AtomicU64,
}

impl Connections {
    /// Creates a count of zero connections with room for `limit`.
    pub fn new(limit: usize) -> Self {
        Self {
            counter: Arc::new(Counter {
                open: AtomicUsize::new(0),
                limit,
                accepted: AtomicU64::new(0),
            }),
        }
    }

    /// Registers a connection that was just accepted.
    ///
    /// Below the limit, the connection is admitted and counted until its
    /// last [`Connection`] clone is dropped. At the limit, it is returned
    /// without being counted and [`Connection::is_admitted`] is false: the
    /// runtime still reads its requests, so that it can respond to each one with
    /// a `503` error rather than reset the socket.
    pub fn open(&self) -> Connection {
        let limit = self.counter.limit;
        self.counter.accepted.fetch_add(1, Ordering::Relaxed);
        let admitted = self
            .counter
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .is_ok();
        Connection {
            state: Arc::new(State {
                closed: AtomicBool::new(false),
                waker: AtomicWaker::new(),
                counter: admitted.then(|| self.counter.clone()),
            }),
        }
    }

    /// Returns the number of admitted connections still open.
    pub fn count(&self) -> usize {
        self.counter.open.load(Ordering::Acquire)
    }

    /// Returns the number of connections registered since the start,
    /// admitted or not.
    pub fn accepted(&self) -> u64 {
        self.counter.accepted.load(Ordering::Relaxed)
    }

    /// Returns the maximum number of connections admitted at once.
    pub fn limit(&self) -> usize {
        self.counter.limit
    }
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.count())
            .field("limit", &self.limit())
            .finish()
    }
}

/// One client connection: its admission and a switch that closes it.
///
/// Clones share the same connection. The accept loop awaits
/// [`Connection::closed`] beside the HTTP connection and drops the latter
/// when the former completes.
#[derive(Clone)]
pub struct Connection {
    state: Arc<State>,
}

struct State {
    closed: AtomicBool,
    /// The task that awaits [`Connection::closed`]; one per connection.
    waker: AtomicWaker,
    /// The count this connection is part of, if it was admitted.
    counter: Option<Arc<Counter>>,
}

impl Connection {
    /// Returns whether the connection is within the connection limit.
    pub fn is_admitted(&self) -> bool {
        self.state.counter.is_some()
    }

    /// Asks the accept loop to drop the connection, without waiting for
    /// the response in progress. The core calls it for a subscriber whose
    /// queue is full.
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.waker.wake();
    }

    /// Returns whether [`Connection::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// Returns a future that completes once [`Connection::close`] is called.
    pub fn closed(&self) -> Closed {
        Closed {
            state: self.state.clone(),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("admitted", &self.is_admitted())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(counter) = &self.counter {
            counter.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The future returned by [`Connection::closed`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Closed {
    state: Arc<State>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Future for Closed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Register first, so that a close between the check and the
        // registration still wakes this task.
        self.state.waker.register(cx.waker());
        if self.state.closed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_admits_and_releases() {
        let connections = Connections::new(2);
        let first = connections.open();
        let second = connections.open();
        let third = connections.open();
        assert!(first.is_admitted());
        assert!(second.is_admitted());
        assert!(
            !third.is_admitted(),
            "the third connection is past the limit"
        );
        assert_eq!(connections.count(), 2);

        let clone = first.clone();
        drop(first);
        assert_eq!(connections.count(), 2, "a clone keeps the connection open");
        drop(clone);
        drop(third);
        assert_eq!(connections.count(), 1);
        assert!(connections.open().is_admitted());
    }

    #[test]
    fn close_completes_closed() {
        let connection = Connections::new(1).open();
        let mut closed = connection.closed();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut closed).poll(&mut cx).is_pending());
        connection.close();
        assert!(Pin::new(&mut closed).poll(&mut cx).is_ready());
        assert!(connection.is_closed());
    }
}
