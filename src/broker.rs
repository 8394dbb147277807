//! The [`Broker`] handle and the [`Subscription`] stream it hands out.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;

use async_channel::{Receiver, Sender};
use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_core::Stream;
use tracing::{debug, warn};

use crate::config::Config;
use crate::connection::{Connection, Connections};
use crate::core::{self, Command, Core, SentAhead, Start, StorageFailure};
use crate::error::{Error, StorageError};
use crate::event::{NewEvent, Publication, Record};
use crate::metrics::Metrics;
use crate::sse;
use crate::storage::{Storage, Version};

/// Threads that serve storage reads, beside the core thread that writes.
const READ_THREADS: usize = 2;

/// Maximum bytes of queued messages joined into one write to a client.
const MAX_CHUNK: usize = 64 * 1024;

/// A cloneable handle to a running broker.
///
/// The broker's core runs on a thread of its own and every method here talks
/// to it over a channel, so the handle works from any async runtime. The core
/// stops when the last handle and the last [`Subscription`] are dropped.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    commands: Sender<Command>,
    reads: Sender<ReadJob>,
    storage: Arc<dyn Storage>,
    /// The last failure, set by the core while appends fail.
    storage_failure: StorageFailure,
    /// Records that subscribers received before storage marked them published.
    sent_ahead: SentAhead,
    /// Client connections that the runtime serving this broker accepted.
    connections: Connections,
    /// Subscriptions not yet dropped.
    subscriptions: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    config: Config,
}

type ReadJob = Box<dyn FnOnce() + Send>;

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the storage named by `config.storage` and starts the broker:
    /// redb or sled in `config.data_dir`, created if needed, or PostgreSQL
    /// at `config.database`.
    ///
    /// Opening happens on the broker's own thread, so this never blocks the
    /// caller's executor.
    ///
    /// # Errors
    ///
    /// Returns [`Error::DataDir`] when the folder cannot be created, and
    /// [`Error::Storage`] when the database cannot be opened, reached or
    /// read, the folder contains another backend's database, or PostgreSQL
    /// is chosen without a database.
    #[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
    pub async fn open(config: Config) -> Result<Self, Error> {
        let opened = config.clone();
        Self::start(config, move || crate::backends::open(&opened)).await
    }

    /// Starts a broker on a storage backend of your own.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Storage`] when the storage cannot be read at start.
    pub async fn with_storage(config: Config, storage: impl Storage) -> Result<Self, Error> {
        let storage: Arc<dyn Storage> = Arc::new(storage);
        Self::start(config, move || Ok(storage)).await
    }

    /// Opens storage with `open` on a new core thread, starts the core there
    /// and the read threads beside it.
    async fn start<F>(config: Config, open: F) -> Result<Self, Error>
    where
        F: FnOnce() -> Result<Arc<dyn Storage>, Error> + Send + 'static,
    {
        let (commands, command_queue) = async_channel::unbounded();
        let (started, ready) = oneshot::channel();
        let queue_capacity = config.queue_capacity;
        let storage_failure: StorageFailure = Arc::new(Mutex::new(None));
        let core_storage_failure = storage_failure.clone();
        let sent_ahead = SentAhead::default();
        let core_sent_ahead = sent_ahead.clone();
        let connections = Connections::new(config.max_connections);
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new(connections.clone(), subscriptions.clone()));
        let core_metrics = metrics.clone();

        thread::Builder::new()
            .name("broker-core".into())
            .spawn(move || {
                let core = open().and_then(|storage| {
                    let core = Core::start(
                        storage.clone(),
                        core_storage_failure,
                        core_sent_ahead,
                        core_metrics,
                        command_queue,
                        queue_capacity,
                    )?;
                    Ok((core, storage))
                });
                match core {
                    Ok((core, storage)) => {
                        if started.send(Ok(storage)).is_ok() {
                            core.run();
                        }
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            })
            .expect("the OS can start a thread");
        let storage = ready.await.map_err(|_| Error::Stopped)??;

        let (reads, read_queue) = async_channel::unbounded::<ReadJob>();
        for _ in 0..READ_THREADS {
            let read_queue = read_queue.clone();
            thread::Builder::new()
                .name("broker-read".into())
                .spawn(move || {
                    while let Ok(job) = read_queue.recv_blocking() {
                        job();
                    }
                })
                .expect("the OS can start a thread");
        }

        Ok(Self {
            inner: Arc::new(Inner {
                commands,
                reads,
                storage,
                storage_failure,
                sent_ahead,
                connections,
                subscriptions,
                metrics,
                config,
            }),
        })
    }

    /// Returns the configuration the broker was started with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Returns the count of client connections, which the runtimes update
    /// as they accept and close connections.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// Returns the broker's metrics, which `GET /metrics` serves.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Returns the number of subscriptions not yet dropped.
    pub fn subscription_count(&self) -> usize {
        self.inner.subscriptions.load(Ordering::Acquire)
    }

    /// Stores a version and publishes it when its timestamp comes.
    ///
    /// Returns the stored record once it is durable. A version without a
    /// timestamp is due now.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Storage`] when the write fails; nothing was stored then.
    pub async fn insert(&self, event: NewEvent) -> Result<Record, Error> {
        let (event, timestamp, data) = event.into_parts(core::now());
        let version = Version {
            event,
            timestamp,
            data,
        };
        let (reply, record) = oneshot::channel();
        self.send(Command::Insert { version, reply }).await?;
        record.await.map_err(|_| Error::Stopped)?
    }

    /// Subscribes to publications: first the current version of every name,
    /// then every publication as it happens.
    ///
    /// With [`SubscribeOptions::after`], a client that saw publications up to
    /// an id gets every later one exactly once, in order, then the live
    /// ones, and no snapshot. An id that this log never issued gets the
    /// snapshot instead, and [`Subscription::is_reset`] says so.
    ///
    /// ```
    /// # futures_lite::future::block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let broker = broker::Broker::open(broker::Config::default().with_data_dir(dir.path())).await?;
    /// let options = broker::SubscribeOptions::default().after(41).events(["title"]);
    /// let subscription = broker.subscribe(options).await?;
    /// assert!(subscription.is_reset(), "this new log has not issued id 41");
    /// # Ok::<(), broker::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Returns [`Error::ShuttingDown`] after [`Broker::close`].
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        let events: Option<Arc<HashSet<String>>> = options
            .events
            .map(|events| Arc::new(events.into_iter().collect()));
        let (reply, subscriber) = oneshot::channel();
        let command = Command::Subscribe {
            after: options.after,
            events: events.clone(),
            connection: options.connection,
            reply,
        };
        self.send(command).await?;
        let subscriber = subscriber.await.map_err(|_| Error::Stopped)??;

        let (snapshot, replay, reset) = match subscriber.start {
            Start::Snapshot { frames, reset } => (frames.into(), None, reset),
            Start::Replay { after, until } => {
                let replay = Replay {
                    broker: self.clone(),
                    cursor: after,
                    until,
                    events,
                    page: None,
                };
                (VecDeque::new(), Some(replay), false)
            }
        };
        self.inner.subscriptions.fetch_add(1, Ordering::AcqRel);
        Ok(Subscription {
            id: subscriber.id,
            prelude: Some(sse::retry_frame(self.inner.config.retry)),
            reset,
            snapshot,
            replay,
            live: Box::pin(subscriber.live),
            commands: self.inner.commands.clone(),
            count: self.inner.subscriptions.clone(),
        })
    }

    /// Returns every version of `event`, pending and published, in
    /// insertion order.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Storage`] when the read fails.
    pub async fn collection(&self, event: &str) -> Result<Vec<Record>, Error> {
        let event = event.to_owned();
        let sent_ahead = self.inner.sent_ahead.clone();
        self.read(move |storage| {
            // Copied before the read: a record that left the set since was
            // stored as published before the read began.
            let sent_ahead = sent_ahead.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut records = storage.collection(&event)?;
            for record in &mut records {
                record.published |= sent_ahead.contains(&record.id);
            }
            Ok(records)
        })
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(Error::from)
    }

    /// Checks that the core is running, that the last append succeeded, and
    /// that storage serves a read.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the broker has stopped, and
    /// [`Error::Storage`] with the failure when the last append failed or a
    /// read fails.
    pub async fn health(&self) -> Result<(), Error> {
        if self.inner.commands.is_closed() {
            return Err(Error::Stopped);
        }
        let failure = self
            .inner
            .storage_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(failure) = failure {
            return Err(Error::Storage(failure));
        }
        self.read(|storage| storage.publications_after(u64::MAX, 1))
            .await
            .map_err(|_| Error::Stopped)??;
        Ok(())
    }

    /// Runs `read` on a read thread; the receiver yields its result.
    fn read<T, F>(&self, read: F) -> oneshot::Receiver<Result<T, StorageError>>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Storage) -> Result<T, StorageError> + Send + 'static,
    {
        let storage = self.inner.storage.clone();
        let (reply, result) = oneshot::channel();
        let job: ReadJob = Box::new(move || {
            let _ = reply.send(read(storage.as_ref()));
        });
        // The read queue is unbounded, so this only fails once the read
        // threads are gone; the receiver then reports the reply as dropped.
        let _ = self.inner.reads.try_send(job);
        result
    }

    /// Ends every subscription and refuses new ones, for a graceful shutdown.
    ///
    /// Inserts are still accepted, so that requests in flight can finish.
    pub async fn close(&self) {
        debug!("closing subscriptions");
        let _ = self.inner.commands.send(Command::Close).await;
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }
}

/// A subscription request: where to resume and which names to receive.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// The last publication id the client has seen; `None` starts from the
    /// snapshot.
    pub after: Option<u64>,
    /// Event names to receive; `None` receives every name.
    pub events: Option<Vec<String>>,
    /// The connection to close if the subscriber falls behind.
    connection: Option<Connection>,
}

impl SubscribeOptions {
    /// Resumes after publication `id`.
    pub fn after(mut self, id: u64) -> Self {
        self.after = Some(id);
        self
    }

    /// Receives only `events`, in the snapshot and live.
    pub fn events<I, S>(mut self, events: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.events = Some(events.into_iter().map(Into::into).collect());
        self
    }

    /// Closes `connection` when the broker drops this subscriber for
    /// letting its queue fill up.
    ///
    /// Without it, the stream of a subscriber that stops reading ends only
    /// when the stream is next polled, which an HTTP server does not do
    /// while the client's socket is full.
    pub fn close_on_overflow(mut self, connection: Connection) -> Self {
        self.connection = Some(connection);
        self
    }
}

/// Publications still to read from storage for a resuming subscriber.
struct Replay {
    broker: Broker,
    /// The last publication id already sent or skipped.
    cursor: u64,
    /// The last publication id to read; later ones come from the live queue.
    until: u64,
    events: Option<Arc<HashSet<String>>>,
    /// The page being read, if any.
    page: Option<oneshot::Receiver<Result<Vec<Publication>, StorageError>>>,
}

/// Publications read from storage in one step of a replay.
const REPLAY_PAGE: usize = 1000;

/// A stream of SSE-encoded bytes for one subscriber.
///
/// Yields a `retry:` field first, then the snapshot or the replay of missed
/// publications, then live messages, several joined into one chunk when they
/// queue up. Ends when the broker closes, or drops the subscriber for falling
/// behind, or a replay read fails. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    /// The `retry:` field, not yet yielded.
    prelude: Option<Bytes>,
    reset: bool,
    /// Snapshot frames not yet yielded.
    snapshot: VecDeque<Bytes>,
    replay: Option<Replay>,
    live: Pin<Box<Receiver<Bytes>>>,
    commands: Sender<Command>,
    /// The broker's count of live subscriptions, decremented on drop.
    count: Arc<AtomicUsize>,
}

impl Subscription {
    /// Returns whether the client asked to resume from an id that this log
    /// never issued, and so gets the snapshot: it may have missed events.
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// Reads and encodes the next page of a replay. Returns `None` when the
    /// replay is over, and ends it.
    fn poll_replay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let Some(replay) = self.replay.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            if replay.cursor >= replay.until {
                self.replay = None;
                return Poll::Ready(None);
            }
            let page = replay.page.get_or_insert_with(|| {
                let after = replay.cursor;
                replay
                    .broker
                    .read(move |storage| storage.publications_after(after, REPLAY_PAGE))
            });
            let publications = match Pin::new(page).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(publications))) => publications,
                Poll::Ready(Ok(Err(error))) => {
                    self.replay = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Err(_)) => {
                    self.replay = None;
                    return Poll::Ready(Some(Err(Error::Stopped)));
                }
            };
            replay.page = None;

            // Keep what the subscriber asked for, up to `until`.
            let mut chunk = BytesMut::new();
            let mut last = replay.until;
            for publication in publications {
                if publication.id > replay.until {
                    break;
                }
                last = publication.id;
                let requested = replay
                    .events
                    .as_ref()
                    .is_none_or(|events| events.contains(&publication.record.event));
                if requested {
                    chunk.extend_from_slice(&sse::encode(&publication));
                }
            }
            replay.cursor = last;
            if !chunk.is_empty() {
                return Poll::Ready(Some(Ok(chunk.freeze())));
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("reset", &self.reset)
            .field("queued", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(prelude) = self.prelude.take() {
            return Poll::Ready(Some(prelude));
        }

        // The snapshot, joined into chunks only as the client reads, so a
        // client that does not read keeps shared frames, not copies.
        if let Some(first) = self.snapshot.pop_front() {
            let chunk = join(first, || self.snapshot.pop_front());
            return Poll::Ready(Some(chunk));
        }

        // Or the missed publications, read from storage page by page.
        match self.poll_replay(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => return Poll::Ready(Some(chunk)),
            Poll::Ready(Some(Err(error))) => {
                // Ending the stream makes the client reconnect and resume.
                warn!(subscriber = self.id, %error, "replay read failed, ending the stream");
                return Poll::Ready(None);
            }
            Poll::Ready(None) => {}
        }

        let first = match self.live.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => frame,
            other => return other,
        };
        // Join what else is queued, so a burst costs one write, not one per message.
        let chunk = join(first, || self.live.try_recv().ok());
        Poll::Ready(Some(chunk))
    }
}

/// Joins `first` with frames from `next` until [`MAX_CHUNK`] bytes or until
/// `next` returns `None`; a lone frame is returned without a copy.
fn join(first: Bytes, mut next: impl FnMut() -> Option<Bytes>) -> Bytes {
    if first.len() >= MAX_CHUNK {
        return first;
    }
    let Some(second) = next() else {
        return first;
    };
    let mut chunk = BytesMut::with_capacity(MAX_CHUNK.min(first.len() + second.len()));
    chunk.extend_from_slice(&first);
    chunk.extend_from_slice(&second);
    while chunk.len() < MAX_CHUNK {
        match next() {
            Some(frame) => chunk.extend_from_slice(&frame),
            None => break,
        }
    }
    chunk.freeze()
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The command queue is unbounded, so this only fails once the core is gone.
        let _ = self.commands.try_send(Command::Unsubscribe { id: self.id });
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::testing;
    use proptest::prelude::*;

    /// A publication whose data is a string of `len` bytes, so that a few
    /// of them fill a chunk.
    fn large_publication(id: u64, len: usize) -> Publication {
        let data = serde_json::Value::from("x".repeat(len));
        let event = testing::accepted_event("large", &data, false);
        Publication {
            id,
            record: Record {
                id,
                event: event.event().to_owned(),
                timestamp: 0,
                published: true,
                data: event.data().to_owned(),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Snapshot frames joined into chunks parse back to exactly their
        /// messages in order, and every chunk ends on a frame boundary.
        #[test]
        fn joined_frames_parse_in_order(
            small in prop::collection::vec(testing::publication(), 1..24),
            large in prop::collection::vec((any::<u64>(), 0..MAX_CHUNK + 100), 0..4),
            seed in any::<u64>(),
        ) {
            let mut publications = small;
            for (index, (id, len)) in large.into_iter().enumerate() {
                let at = (seed as usize).wrapping_add(index) % (publications.len() + 1);
                publications.insert(at, large_publication(id, len));
            }
            let mut frames: VecDeque<Bytes> = publications.iter().map(sse::encode).collect();

            let mut stream = Vec::new();
            while let Some(first) = frames.pop_front() {
                let chunk = join(first, || frames.pop_front());
                let parsed = testing::parse(&chunk);
                prop_assert!(parsed.pending.is_empty(), "a chunk ends inside a message");
                prop_assert!(parsed.unterminated.is_empty(), "a chunk ends inside a line");
                stream.extend_from_slice(&chunk);
            }

            let expected: Vec<testing::Message> =
                publications.iter().map(testing::expected_message).collect();
            let interpreted = testing::interpret(&testing::parse(&stream));
            prop_assert_eq!(interpreted.messages, expected);
            prop_assert_eq!(interpreted.retry, None);
        }
    }
}
