//! The storage contract that every backend implements.
//!
//! Broker's core calls a [`Storage`] from its own threads, never from an
//! async executor, so implementations may block on disk or network I/O.

use serde_json::value::RawValue;

use crate::error::StorageError;
use crate::event::{Publication, Record};

/// An event version ready to store: name, due time and compact JSON data.
#[derive(Debug, Clone)]
pub struct Version {
    /// Event name, already validated.
    pub event: String,
    /// Epoch second at which the version becomes due.
    pub timestamp: u64,
    /// Compact JSON data.
    pub data: Box<RawValue>,
}

/// The outcome of one [`Storage::append`] call: what it stored and published.
#[derive(Debug, Default)]
pub struct Appended {
    /// The stored records, one per appended version, in the same order.
    pub records: Vec<Record>,
    /// Every version published by this call, in publication id order.
    pub published: Vec<Publication>,
    /// The timestamp of the earliest version still pending, if any.
    pub next_due: Option<u64>,
}

/// A durable, append-only event log.
///
/// The log contains two sequences. Records are numbered from 1 in insertion
/// order. Publications are numbered from 1 in publication order, and each
/// publishes one record exactly once. A record is *pending* until its
/// publication.
///
/// Ids are never reused, even after a restart, and nothing is ever changed
/// or deleted except a record's move from pending to published.
///
/// The core calls `append` from one thread at a time; the read methods may
/// run concurrently with it and with each other, and must see either all or
/// nothing of an append.
pub trait Storage: Send + Sync + 'static {
    /// Appends `versions`, then publishes every pending record whose
    /// timestamp is at most `now`, in one atomic and durable step.
    ///
    /// New records get consecutive ids in the order given. Due records,
    /// older ones and those just appended alike, are published in
    /// `(timestamp, record id)` order, and each becomes the current version
    /// of its name. Calling it with no versions publishes what is due.
    ///
    /// When this returns `Ok`, everything it reports survives a crash or a
    /// power loss. When it returns `Err`, nothing of it was stored.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the write or its sync fails.
    fn append(&self, versions: &[Version], now: u64) -> Result<Appended, StorageError>;

    /// Returns the current version of every event name: its latest
    /// publication, in publication id order.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails or a record is unreadable.
    fn current(&self) -> Result<Vec<Publication>, StorageError>;

    /// Returns the pending records that an [`append`](Storage::append) of no
    /// versions at `now` would publish, in the order it would publish them:
    /// every pending record whose timestamp is at most `now`, in
    /// `(timestamp, record id)` order.
    ///
    /// The core sends these to subscribers before that append is synced,
    /// which keeps scheduled events on time. That is safe only because the
    /// append publishes exactly these records, in this order, under the
    /// next publication ids, even when it runs again after a crash. A
    /// backend whose appends other processes can interleave must not
    /// promise that, and keeps the default, which returns nothing: the
    /// core then sends due records after their append is durable.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails or a record is unreadable.
    fn due(&self, now: u64) -> Result<Vec<Record>, StorageError> {
        let _ = now;
        Ok(Vec::new())
    }

    /// Returns the number of pending records, or `None` when the backend
    /// cannot count them cheaply.
    ///
    /// The core calls it once at start, for the `broker_pending_events`
    /// gauge, and from then on adds what each append stores and subtracts
    /// what it publishes. With the default, which returns `None`, the gauge
    /// starts at 0 and so leaves out records that were pending at start.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails.
    fn pending_count(&self) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }

    /// Returns up to `limit` publications with ids above `after`, in
    /// publication id order, each with its record.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails or a record is unreadable.
    fn publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, StorageError>;

    /// Returns every record of `event`, pending and published, in insertion order.
    ///
    /// An unknown name returns an empty list.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails or a record is unreadable.
    fn collection(&self, event: &str) -> Result<Vec<Record>, StorageError>;

    /// Reopens the database after a failed [`append`](Storage::append), so
    /// that the next append starts from what is durable on disk.
    ///
    /// The core calls it before it retries a write that failed, at most once
    /// per retry. An embedded database may keep a failed write in memory or
    /// reject every later write after one I/O error. Such a backend closes
    /// its database when an append fails and opens it again here, and until
    /// then its reads may fail too. The default does nothing, for backends that
    /// recover by themselves.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the database cannot be opened yet,
    /// for example while the disk is still full.
    fn reopen(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Returns the log's [`SharedLog`] side when other processes append to
    /// the same log, as several brokers on one database do. The default
    /// returns `None`: this process is the log's only writer.
    ///
    /// The core of a shared log publishes what other processes publish, by
    /// reading [`publications_after`](Storage::publications_after) from
    /// its last publication whenever the log changes, and it learns their
    /// pending records' due times from [`SharedLog::state`].
    fn shared(&self) -> Option<&dyn SharedLog> {
        None
    }
}

/// The side of a [`Storage`] that several processes append to.
///
/// Every process must see publications in id order with no gaps: when a
/// reader sees publication `n`, it must also see every publication below
/// `n`. A backend makes appends that publish take turns, for example under
/// a lock held until commit, so that ids commit in order.
pub trait SharedLog: Send + Sync {
    /// Starts calling `changed` whenever another process may have changed
    /// the log, from a thread of the backend's own, until the storage is
    /// dropped.
    ///
    /// A notice may be late or lost, for example while the backend
    /// reconnects; the core also reads [`state`](SharedLog::state) every
    /// second. A backend that loses its source of notices calls `changed`
    /// once it has it back, so that nothing waits for the next second.
    fn watch(&self, changed: Box<dyn Fn() + Send + Sync>);

    /// Returns the log's latest publication id and what is pending.
    ///
    /// # Errors
    ///
    /// Returns a [`StorageError`] when the read fails.
    fn state(&self) -> Result<LogState, StorageError>;
}

/// A shared log's position, as [`SharedLog::state`] reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogState {
    /// The latest publication id, 0 before the first publication.
    pub last_publication: u64,
    /// The timestamp of the earliest pending record, if any.
    pub next_due: Option<u64>,
    /// The number of pending records.
    pub pending: u64,
}
