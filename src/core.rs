//! The core: one thread that owns the write side of storage, the schedule of
//! future events, the current version of every name and the subscriber
//! registry.
//!
//! Every [`Broker`](crate::Broker) handle talks to it over an async-channel,
//! so the core runs the same under any async runtime, or none. Because one
//! thread applies every command in order, publication order, the snapshot a
//! new subscriber gets and the live messages after it always agree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender, TryRecvError};
use bytes::Bytes;
use futures_channel::oneshot;
use tracing::{debug, error, info, warn};

use crate::connection::Connection;
use crate::error::{Error, StorageError};
use crate::event::{Publication, Record};
use crate::metrics::Metrics;
use crate::sse;
use crate::storage::{Appended, SharedLog, Storage, Version};

/// Maximum inserts committed in one storage append.
const MAX_BATCH: usize = 1024;

/// Maximum time the core sleeps without looking at the wall clock, so that a
/// clock change delays a due event by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How long the core waits after a storage failure before it reopens the
/// storage and writes again. The wait doubles after each failure in a row,
/// up to [`MAX_RETRY_DELAY`], so that a lasting failure is not logged every
/// second. Inserts that arrive during the wait are rejected without a write.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Maximum wait between retries after storage failures. Inserts are
/// rejected until the retry, so the wait stays short.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// How often the core of a shared log reads the log's state without a
/// notice from the backend, which may have missed one while it reconnected.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Publications read from a shared log per storage read.
const TAIL_PAGE: usize = 1024;

/// A request to the core.
pub(crate) enum Command {
    /// Store a version and reply with its record once it is durable.
    Insert {
        version: Version,
        reply: oneshot::Sender<Result<Record, Error>>,
    },
    /// Register a subscriber and reply with where its stream starts and
    /// its live queue.
    Subscribe {
        /// The last publication id the client has seen, if it is resuming.
        after: Option<u64>,
        /// Event names to send, or `None` for all.
        events: Option<Arc<HashSet<String>>>,
        /// The client's connection, closed if its queue fills up.
        connection: Option<Connection>,
        reply: oneshot::Sender<Result<Subscriber, Error>>,
    },
    /// Forget a subscriber whose stream was dropped.
    Unsubscribe { id: u64 },
    /// End every stream and take no new subscribers.
    Close,
}

/// The last storage failure while storage is failing, `None` while it works.
/// The core sets and clears it, and health checks read it.
pub(crate) type StorageFailure = Arc<Mutex<Option<Arc<StorageError>>>>;

/// The ids of records sent to subscribers as published before the append
/// that publishes them succeeded. The core adds them before it sends them
/// and removes them after that append, so a collection read that copies
/// this set before it reads storage sees every record a client has
/// received as published.
pub(crate) type SentAhead = Arc<Mutex<HashSet<u64>>>;

/// A new subscriber's start and live queue, as the core hands them out.
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) start: Start,
    /// Live messages, one SSE frame each: every publication after the
    /// start, so that the start and the queue neither overlap nor leave a gap.
    pub(crate) live: Receiver<Bytes>,
}

/// The start of a new subscriber's stream.
pub(crate) enum Start {
    /// The current version of every requested name, one SSE frame each,
    /// shared with the core rather than copied. `reset` is set when the
    /// client asked to resume from an id this log never issued.
    Snapshot { frames: Vec<Bytes>, reset: bool },
    /// The publications with ids in `after + 1 ..= until`, to be read from
    /// storage, then the live queue.
    Replay { after: u64, until: u64 },
}

/// A publication sent to subscribers before the append that publishes it
/// has succeeded.
struct Unsynced {
    /// The id of the published record.
    record: u64,
    timestamp: u64,
    event: String,
    frame: Bytes,
}

/// A registered subscriber's live queue, name filter and connection.
struct Entry {
    queue: Sender<Bytes>,
    events: Option<Arc<HashSet<String>>>,
    connection: Option<Connection>,
}

/// The core's state. Lives on its own thread; see [`Core::run`].
pub(crate) struct Core {
    storage: Arc<dyn Storage>,
    /// Set while appends fail, for health checks.
    failure: StorageFailure,
    sent_ahead: SentAhead,
    metrics: Arc<Metrics>,
    commands: Receiver<Command>,
    /// Live queues by subscriber id. Queues are unbounded channels whose
    /// length the core checks before each send, because a bounded
    /// async-channel allocates its whole capacity up front.
    subscribers: HashMap<u64, Entry>,
    next_subscriber: u64,
    queue_capacity: usize,
    /// Encoded current version of each name, keyed by publication id so
    /// that a snapshot comes out in publication order.
    current: BTreeMap<u64, Bytes>,
    /// Publication id of each name's current version.
    current_ids: HashMap<String, u64>,
    /// The latest publication id, 0 before the first publication.
    last_publication: u64,
    /// Due records sent before the append that publishes them succeeded,
    /// by publication id. They have the latest ids. The map is empty except
    /// from sending them until that append succeeds, which takes one sync
    /// normally and longer while storage fails.
    unsynced: BTreeMap<u64, Unsynced>,
    /// Timestamp of the earliest pending version.
    next_due: Option<u64>,
    /// When to reopen the storage and write again, set while storage fails.
    retry_at: Option<Instant>,
    /// Wait before the next retry; grows while appends keep failing.
    retry_delay: Duration,
    /// When the current run of storage failures began.
    failing_since: Option<Instant>,
    closing: bool,
    waker: Waker,
    /// Set when other processes append to the same log.
    shared: bool,
    /// Set by the backend's watch thread when another process changed a
    /// shared log, and cleared when the core reads it.
    changed: Arc<AtomicBool>,
    /// When the core next reads a shared log's state without a notice.
    poll_at: Instant,
    /// Whether this turn of the loop has read the shared log already.
    caught_up: bool,
    /// Whether the last read of the shared log failed, so that a lasting
    /// failure is logged once.
    tail_failing: bool,
}

impl Core {
    /// Loads the current versions and publishes what fell due while the
    /// broker was down.
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        failure: StorageFailure,
        sent_ahead: SentAhead,
        metrics: Arc<Metrics>,
        commands: Receiver<Command>,
        queue_capacity: usize,
    ) -> Result<Self, StorageError> {
        let mut core = Self {
            storage,
            failure,
            sent_ahead,
            metrics,
            commands,
            subscribers: HashMap::new(),
            next_subscriber: 1,
            queue_capacity,
            current: BTreeMap::new(),
            current_ids: HashMap::new(),
            last_publication: 0,
            unsynced: BTreeMap::new(),
            next_due: None,
            retry_at: None,
            retry_delay: RETRY_DELAY,
            failing_since: None,
            closing: false,
            waker: Waker::from(Arc::new(ThreadWaker(thread::current()))),
            shared: false,
            changed: Arc::new(AtomicBool::new(false)),
            poll_at: Instant::now() + POLL_INTERVAL,
            caught_up: false,
            tail_failing: false,
        };
        // Watch before the first read, so that nothing another process
        // publishes after that read goes unnoticed.
        if let Some(shared) = core.storage.shared() {
            core.shared = true;
            let changed = core.changed.clone();
            let core_thread = thread::current();
            shared.watch(Box::new(move || {
                changed.store(true, Ordering::Release);
                core_thread.unpark();
            }));
            info!("the log is shared with other processes; publishing theirs as they appear");
        }
        for publication in core.storage.current()? {
            core.set_current(&publication, sse::encode(&publication));
        }
        let appended = core.storage.append(&[], now())?;
        core.next_due = appended.next_due;
        for publication in &appended.published {
            if !core.publish_in_order(publication) {
                break;
            }
        }
        // Counted once here, and kept exact after each append by what it
        // stored and published, so that scrapes never read storage.
        match core.storage.pending_count()? {
            Some(pending) => {
                let pending = i64::try_from(pending).unwrap_or(i64::MAX);
                core.metrics.pending.set(pending);
            }
            None => debug!(
                "the storage does not count pending events, so the pending gauge counts from 0"
            ),
        }
        Ok(core)
    }

    /// Serves commands until every handle is gone.
    pub(crate) fn run(mut self) {
        // The waker must unpark the thread that parks, which is this one.
        self.waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        loop {
            let first = match self.wait() {
                Wait::Command(command) => Some(command),
                Wait::TimedOut | Wait::Changed => None,
                Wait::Closed => break,
            };
            self.caught_up = false;
            if self.shared
                && (self.changed.swap(false, Ordering::AcqRel) || Instant::now() >= self.poll_at)
            {
                self.catch_up();
            }

            // Take every command already queued, so that concurrent inserts
            // share one durable append.
            let mut inserts = Vec::new();
            if let Some(command) = first {
                self.apply(command, &mut inserts);
            }
            while inserts.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => self.apply(command, &mut inserts),
                    Err(_) => break,
                }
            }

            match self.retry_at {
                // Storage is failing and the retry is not due yet.
                Some(at) if Instant::now() < at => self.reject(inserts),
                // The retry is due: reopen and write, with or without
                // inserts, so that storage recovers without traffic.
                Some(_) => self.append(inserts),
                None => {
                    let due = self.next_due.is_some_and(|timestamp| timestamp <= now());
                    if due {
                        self.send_due();
                    }
                    if !inserts.is_empty() || due {
                        self.append(inserts);
                    }
                }
            }
        }
        debug!("core stopped");
    }

    fn apply(&mut self, command: Command, inserts: &mut Vec<(Version, InsertReply)>) {
        match command {
            Command::Insert { version, reply } => inserts.push((version, reply)),
            Command::Subscribe {
                after,
                events,
                connection,
                reply,
            } => self.subscribe(after, events, connection, reply),
            Command::Unsubscribe { id } => {
                if self.subscribers.remove(&id).is_some() {
                    debug!(subscriber = id, "subscriber left");
                }
            }
            Command::Close => {
                self.closing = true;
                self.subscribers.clear();
            }
        }
    }

    /// Sends the records that are due to subscribers before the append that
    /// publishes them, so that the time an append takes to sync does not
    /// delay scheduled events.
    ///
    /// Nothing acknowledged can be lost by this: the records have been
    /// durable since their insert, and [`Storage::due`] promises that the
    /// next append publishes exactly these records under these ids. After
    /// a crash, the first append at start publishes them again under the
    /// same ids, before any insert. After a failed append, [`Core::write`]
    /// repeats that append before any insert.
    fn send_due(&mut self) {
        let started = Instant::now();
        let records = match self.storage.due(now()) {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "failed to read the due events, publishing them after their write");
                return;
            }
        };
        let read = started.elapsed();
        if records.is_empty() {
            return;
        }
        self.sent_ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(records.iter().map(|record| record.id));
        for mut record in records {
            record.published = true;
            let publication = Publication {
                id: self.last_publication + 1,
                record,
            };
            let frame = self.publish(&publication);
            let sent = Unsynced {
                record: publication.record.id,
                timestamp: publication.record.timestamp,
                event: publication.record.event,
                frame,
            };
            self.unsynced.insert(publication.id, sent);
        }
        debug!(
            publications = self.unsynced.len(),
            read = ?read,
            elapsed = ?started.elapsed(),
            "sent due events ahead of their write"
        );
    }

    /// Appends a batch of inserts, publishes what is due and replies to each
    /// insert. After a storage failure, reopens the storage first.
    fn append(&mut self, inserts: Vec<(Version, InsertReply)>) {
        let (versions, replies): (Vec<Version>, Vec<InsertReply>) = inserts.into_iter().unzip();
        match self.write(&versions) {
            Ok(records) => {
                if let Some(since) = self.failing_since.take() {
                    info!(failed_for = ?since.elapsed(), "storage recovered, writing again");
                }
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.retry_at = None;
                self.retry_delay = RETRY_DELAY;
                for (reply, record) in replies.into_iter().zip(records) {
                    // A requester that went away still had its record stored.
                    let _ = reply.send(Ok(record));
                }
            }
            Err(failure) => {
                error!(
                    error = %failure,
                    source = ?std::error::Error::source(&failure),
                    inserts = versions.len(),
                    retry_in = ?self.retry_delay,
                    "storage write failed, rejecting inserts until the retry"
                );
                let failure = Arc::new(failure);
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure.clone());
                self.failing_since.get_or_insert_with(Instant::now);
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
                for reply in replies {
                    let _ = reply.send(Err(Error::Storage(failure.clone())));
                }
            }
        }
    }

    /// Appends `versions` and publishes what became due, and returns the
    /// stored records. After a storage failure, reopens the storage first.
    fn write(&mut self, versions: &[Version]) -> Result<Vec<Record>, StorageError> {
        if self.retry_at.is_some() {
            self.storage.reopen()?;
        }
        // Publications already sent must keep their ids. Appends publish in
        // (timestamp, id) order, so a new version due before one of them
        // would take its id. In that case they are stored alone first.
        let last_sent = self.unsynced.values().map(|sent| sent.timestamp).max();
        if last_sent.is_some_and(|last| versions.iter().any(|version| version.timestamp < last)) {
            let appended = self.storage.append(&[], now())?;
            self.apply_appended(appended);
        }
        let appended = self.storage.append(versions, now())?;
        Ok(self.apply_appended(appended))
    }

    /// Publishes what a successful append published, except the publications
    /// sent before it, and returns its stored records.
    fn apply_appended(&mut self, appended: Appended) -> Vec<Record> {
        let sent_ahead = !self.unsynced.is_empty();
        self.next_due = appended.next_due;
        self.count_appended(&appended);
        for publication in &appended.published {
            match self.unsynced.remove(&publication.id) {
                None => {
                    if !self.publish_in_order(publication) {
                        break;
                    }
                }
                Some(sent) if sent.record == publication.record.id => {}
                Some(sent) => error!(
                    publication = publication.id,
                    sent_record = sent.record,
                    stored_record = publication.record.id,
                    "storage published another record than the one sent under this id"
                ),
            }
        }
        if !self.unsynced.is_empty() {
            error!(
                publications = ?self.unsynced.keys().collect::<Vec<_>>(),
                "storage did not publish records that were sent as due"
            );
            self.unsynced.clear();
        }
        if sent_ahead {
            self.sent_ahead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        appended.records
    }

    /// Publishes `publication`, one that this process's append published,
    /// in id order with those of other processes on a shared log. Returns
    /// `false` when the publications before it cannot be read yet: it and
    /// those after it are then left for the next [`Core::catch_up`], which
    /// reads them back from the log.
    fn publish_in_order(&mut self, publication: &Publication) -> bool {
        if !self.shared {
            self.publish(publication);
            return true;
        }
        if publication.id <= self.last_publication {
            // Read from the log already, after another process's notice.
            return true;
        }
        if publication.id > self.last_publication + 1 {
            let storage = self.storage.clone();
            if let Err(error) = self.publish_until(storage.as_ref(), publication.id - 1) {
                warn!(
                    %error,
                    publication = publication.id,
                    "failed to read the publications before this one; sending them at the next read of the log"
                );
                return false;
            }
        }
        self.publish(publication);
        true
    }

    /// Reads a shared log's state and publishes what other processes
    /// published since the last read.
    fn catch_up(&mut self) {
        self.caught_up = true;
        self.poll_at = Instant::now() + POLL_INTERVAL;
        let storage = self.storage.clone();
        let Some(shared) = storage.shared() else {
            return;
        };
        match self.read_shared(storage.as_ref(), shared) {
            Ok(()) => {
                if self.tail_failing {
                    info!("reading the shared log again");
                    self.tail_failing = false;
                }
            }
            Err(error) if self.tail_failing => {
                debug!(%error, "the shared log is still unreadable");
            }
            Err(error) => {
                warn!(
                    %error,
                    source = ?std::error::Error::source(&error),
                    "failed to read the shared log; other processes' publications wait until it is readable"
                );
                self.tail_failing = true;
            }
        }
    }

    fn read_shared(
        &mut self,
        storage: &dyn Storage,
        shared: &dyn SharedLog,
    ) -> Result<(), StorageError> {
        let state = shared.state()?;
        self.next_due = state.next_due;
        self.metrics
            .pending
            .set(i64::try_from(state.pending).unwrap_or(i64::MAX));
        self.publish_until(storage, state.last_publication)
    }

    /// Publishes the publications after the latest one this core has
    /// published, up to `until`, reading them from storage.
    fn publish_until(&mut self, storage: &dyn Storage, until: u64) -> Result<(), StorageError> {
        while self.last_publication < until {
            let page = storage.publications_after(self.last_publication, TAIL_PAGE)?;
            if page.is_empty() {
                break;
            }
            for publication in page
                .iter()
                .take_while(|publication| publication.id <= until)
            {
                self.publish(publication);
            }
        }
        Ok(())
    }

    /// Counts the records that an append stored, and updates the pending
    /// gauge: each stored record is pending until its publication, and
    /// every publication publishes one pending record.
    fn count_appended(&self, appended: &Appended) {
        let stored = appended.records.len() as u64;
        self.metrics.inserts.inc_by(stored);
        let change = i64::try_from(stored).unwrap_or(i64::MAX)
            - i64::try_from(appended.published.len()).unwrap_or(i64::MAX);
        let pending = self.metrics.pending.inc_by(change) + change;
        if pending < 0 {
            // Only a storage without `pending_count` starts the gauge
            // below the stored count, so it cannot show fewer than zero.
            self.metrics.pending.set(0);
        }
    }

    /// Rejects inserts without a write while storage is failing, with the
    /// last failure.
    fn reject(&mut self, inserts: Vec<(Version, InsertReply)>) {
        if inserts.is_empty() {
            return;
        }
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failure = failure.unwrap_or_else(|| {
            Arc::new(StorageError::backend(
                "append",
                "an earlier write failed; see the server log",
            ))
        });
        debug!(
            inserts = inserts.len(),
            retry_at = ?self.retry_at,
            "storage is failing, rejected inserts without a write"
        );
        for (_, reply) in inserts {
            let _ = reply.send(Err(Error::Storage(failure.clone())));
        }
    }

    /// Makes `publication` its name's current version, sends it to every
    /// subscriber and returns its frame.
    fn publish(&mut self, publication: &Publication) -> Bytes {
        let frame = sse::encode(publication);
        self.set_current(publication, frame.clone());
        self.metrics.publications.inc();
        debug!(
            publication = publication.id,
            record = publication.record.id,
            event = %publication.record.event,
            subscribers = self.subscribers.len(),
            "published"
        );

        let capacity = self.queue_capacity;
        let event = &publication.record.event;
        self.subscribers.retain(|&id, entry| {
            if entry
                .events
                .as_ref()
                .is_some_and(|events| !events.contains(event))
            {
                return true;
            }
            if entry.queue.len() >= capacity {
                warn!(
                    subscriber = id,
                    capacity, "subscriber queue full, disconnecting the slow client"
                );
                self.metrics.slow_clients_dropped.inc();
                // Dropping the queue ends the stream, but the runtime polls
                // the stream only when the client reads, so close the socket too.
                if let Some(connection) = &entry.connection {
                    connection.close();
                }
                return false;
            }
            entry.queue.try_send(frame.clone()).is_ok()
        });
        frame
    }

    fn set_current(&mut self, publication: &Publication, frame: Bytes) {
        self.last_publication = self.last_publication.max(publication.id);
        let name = publication.record.event.clone();
        if let Some(previous) = self.current_ids.insert(name, publication.id) {
            self.current.remove(&previous);
        }
        self.current.insert(publication.id, frame);
    }

    fn subscribe(
        &mut self,
        after: Option<u64>,
        events: Option<Arc<HashSet<String>>>,
        connection: Option<Connection>,
        reply: oneshot::Sender<Result<Subscriber, Error>>,
    ) {
        if self.closing {
            let _ = reply.send(Err(Error::ShuttingDown));
            return;
        }
        // A client may arrive from another process with an id this one has
        // not read yet, or after an insert there: read the log first, so
        // that every process starts it from the same state.
        if self.shared && !self.caught_up {
            self.catch_up();
        }

        // Publications not yet stored are read from memory, not storage.
        let stored = self.last_publication - self.unsynced.len() as u64;
        let start = match after {
            Some(after) if after <= self.last_publication => Start::Replay {
                after,
                until: stored.max(after),
            },
            // An id ahead of the log, as after a data reset: the client
            // may have missed anything, so it gets the whole state.
            Some(_) => Start::Snapshot {
                frames: self.snapshot(events.as_deref()),
                reset: true,
            },
            None => Start::Snapshot {
                frames: self.snapshot(events.as_deref()),
                reset: false,
            },
        };

        let id = self.next_subscriber;
        self.next_subscriber += 1;
        let (queue, live) = async_channel::unbounded();
        if let Some(after) = after.filter(|&after| after <= self.last_publication) {
            for (_, sent) in self.unsynced.range(after + 1..) {
                if events
                    .as_ref()
                    .is_none_or(|events| events.contains(&sent.event))
                {
                    let _ = queue.try_send(sent.frame.clone());
                }
            }
        }
        let subscriber = Subscriber { id, start, live };
        if reply.send(Ok(subscriber)).is_ok() {
            let entry = Entry {
                queue,
                events,
                connection,
            };
            self.subscribers.insert(id, entry);
            debug!(
                subscriber = id,
                subscribers = self.subscribers.len(),
                "subscriber joined"
            );
        }
    }

    /// Returns the current frames of `events` (all names for `None`), in
    /// publication order.
    fn snapshot(&self, events: Option<&HashSet<String>>) -> Vec<Bytes> {
        let Some(events) = events else {
            return self.current.values().cloned().collect();
        };
        let mut ids: Vec<u64> = events
            .iter()
            .filter_map(|event| self.current_ids.get(event).copied())
            .collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| self.current.get(id).cloned())
            .collect()
    }

    /// Waits for a command, or until the next due time or retry time.
    fn wait(&self) -> Wait {
        match self.commands.try_recv() {
            Ok(command) => return Wait::Command(command),
            Err(TryRecvError::Closed) => return Wait::Closed,
            Err(TryRecvError::Empty) => {}
        }

        let deadline = self.deadline();
        let mut context = Context::from_waker(&self.waker);
        let mut receive = std::pin::pin!(self.commands.recv());
        loop {
            match receive.as_mut().poll(&mut context) {
                Poll::Ready(Ok(command)) => return Wait::Command(command),
                Poll::Ready(Err(_)) => return Wait::Closed,
                Poll::Pending => {}
            }
            if self.shared && self.changed.load(Ordering::Acquire) {
                return Wait::Changed;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Wait::TimedOut;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Returns when the core must next wake without a command, if ever.
    fn deadline(&self) -> Option<Instant> {
        let poll = self.shared.then_some(self.poll_at);
        // While storage fails, nothing is published before the retry.
        if let Some(retry_at) = self.retry_at {
            return Some(poll.map_or(retry_at, |poll| poll.min(retry_at)));
        }
        let due = self.next_due.map(|due| {
            let due_in = Duration::from_secs(due).saturating_sub(since_epoch());
            Instant::now() + due_in.min(MAX_SLEEP)
        });
        match (due, poll) {
            (Some(due), Some(poll)) => Some(due.min(poll)),
            (due, poll) => due.or(poll),
        }
    }
}

type InsertReply = oneshot::Sender<Result<Record, Error>>;

enum Wait {
    Command(Command),
    TimedOut,
    /// Another process changed the shared log.
    Changed,
    Closed,
}

/// Wakes the core thread when a command arrives.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Returns the current time in epoch seconds.
pub(crate) fn now() -> u64 {
    since_epoch().as_secs()
}
