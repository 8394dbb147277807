//! Storage in a [sled](https://docs.rs/sled) database, in the folder `sled`
//! inside the data folder.
//!
//! Everything lives in one sled tree under one-byte key prefixes, so that an
//! append is a single [`sled::Batch`], which sled applies atomically. sled
//! keeps writes in memory until a flush, so every append ends with
//! [`sled::Tree::flush`], which writes and syncs the log. The core batches
//! concurrent inserts into one append, so many inserts share one flush.
//!
//! sled applies a batch atomically for each single read, but a read that
//! takes several steps (a scan, then lookups) could see a batch half way.
//! A reader-writer lock keeps multi-step reads and appends apart. An append
//! holds it until its flush returns, so no read sees a batch before it is
//! durable.
//!
//! When a flush fails, the batch stays in sled's memory, and sled rejects
//! every later flush. So a failed append closes the database while it
//! still holds the lock, which drops the batch unread, and
//! [`Storage::reopen`] opens it again from what is on disk.
//!
//! NOTE: if the log write succeeded and only the sync failed, the reopened
//! database may still contain the batch whose append returned an error.
//! The conformance suite tests only writes that fail outright (`EFBIG`).
//!
//! NOTE: sled 0.34's README calls it beta and warns that its on-disk format
//! will change before 1.0 in ways that need a manual migration. redb is the
//! default for that reason.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ::sled::{Batch, Db, IVec, Tree};

use super::codec::{decode, encode};
use super::publication_order;
use crate::error::StorageError;
use crate::event::{Publication, Record};
use crate::storage::{Appended, Storage, Version};

/// The folder inside the data folder.
pub const DIR_NAME: &str = "sled";

/// Record id (u64, big-endian) to encoded record.
const RECORD: u8 = b'r';
/// Event name, NUL, record id: the records of each name in insertion order.
/// Names cannot contain NUL, so one name's keys never run into another's.
const BY_EVENT: u8 = b'n';
/// Timestamp and record id of every pending record, in publication order.
const PENDING: u8 = b'p';
/// Publication id to record id.
const PUBLICATION: u8 = b'u';
/// Event name to the publication id of its current version.
const CURRENT: u8 = b'c';
/// Format marker, checked on open.
const META_FORMAT: &[u8] = b"mformat";

/// The layout written by this version; bump it when the keys change.
const FORMAT_VERSION: u64 = 1;

/// A [`Storage`] backed by a sled database.
#[derive(Debug)]
pub struct SledStorage {
    /// The open database, or `None` from a failed append until a
    /// successful [`Storage::reopen`]. Held for writing by an append from
    /// before its batch is applied until its flush returns, and for reading
    /// by every read.
    state: RwLock<Option<SledDb>>,
    path: PathBuf,
}

/// An open sled database and the tree that holds the log.
#[derive(Debug)]
struct SledDb {
    db: Db,
    tree: Tree,
}

impl SledStorage {
    /// Opens the sled database in `data_dir/sled`, creating it if needed.
    ///
    /// # Errors
    ///
    /// Returns [`StorageError::Open`] when the database cannot be opened
    /// (for example because another process has it open) or has another layout.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let path = data_dir.join(DIR_NAME);
        let db = SledDb::open(&path)?;
        Ok(Self {
            state: RwLock::new(Some(db)),
            path,
        })
    }

    /// Returns the path of the database folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on the open database under the read lock.
    fn read<T>(
        &self,
        operation: &'static str,
        read: impl FnOnce(&SledDb) -> Result<T, Failure>,
    ) -> Result<T, StorageError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let db = state.as_ref().ok_or_else(|| StorageError::Closed {
            path: self.path.clone(),
        })?;
        read(db).map_err(|failure| failure.during(operation))
    }
}

impl SledDb {
    /// Opens or creates the sled database in the folder `path`.
    fn open(path: &Path) -> Result<Self, StorageError> {
        let open_failed = |source: ::sled::Error| StorageError::Open {
            path: path.to_path_buf(),
            source: source.into(),
        };

        let db = ::sled::open(path).map_err(open_failed)?;
        let tree = db.open_tree("broker").map_err(open_failed)?;
        match tree.get(META_FORMAT).map_err(open_failed)? {
            None => {
                tree.insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())
                    .map_err(open_failed)?;
                tree.flush().map_err(open_failed)?;
            }
            Some(format) if read_u64(&format) == Some(FORMAT_VERSION) => {}
            Some(format) => {
                return Err(StorageError::Open {
                    path: path.to_path_buf(),
                    source: format!(
                        "the database has layout version {:?}, but this build reads version \
                         {FORMAT_VERSION}; use a matching Broker version or another data folder",
                        read_u64(&format)
                    )
                    .into(),
                })
            }
        }
        Ok(Self { db, tree })
    }

    /// Appends under the caller's write lock. The caller closes the
    /// database when this fails.
    fn try_append(&self, versions: &[Version], now: u64) -> Result<Appended, Failure> {
        let first_id = self.last_id(RECORD)? + 1;
        let mut batch = Batch::default();

        // Store the new versions. Only those due later get a pending key:
        // the ones due now are published below, in this batch.
        let mut stored = Vec::with_capacity(versions.len());
        for (id, version) in (first_id..).zip(versions) {
            batch.insert(key(RECORD, &id.to_be_bytes()), encode(version));
            batch.insert(by_event_key(&version.event, id), &[]);
            if version.timestamp > now {
                batch.insert(pending_key(version.timestamp, id), &[]);
            }
            stored.push(Record {
                id,
                event: version.event.clone(),
                timestamp: version.timestamp,
                published: false,
                data: version.data.clone(),
            });
        }

        // Due records: the stored ones, merged with the new ones, in
        // (timestamp, id) order.
        let mut pending_due: Vec<(u64, u64)> = Vec::new();
        for entry in self
            .tree
            .range(pending_key(0, 0)..=pending_key(now, u64::MAX))
        {
            let (key, _) = entry?;
            pending_due.push(parse_pending_key(&key)?);
        }
        let due = publication_order(pending_due, &stored, now);

        // Publish them.
        let mut publication_id = self.last_id(PUBLICATION)?;
        let mut published = Vec::with_capacity(due.len());
        for (timestamp, record_id) in due {
            if record_id < first_id {
                batch.remove(pending_key(timestamp, record_id));
            }
            publication_id += 1;
            batch.insert(
                key(PUBLICATION, &publication_id.to_be_bytes()),
                &record_id.to_be_bytes(),
            );
            let record = match record_id.checked_sub(first_id) {
                Some(index) => {
                    let record = &mut stored[index as usize];
                    record.published = true;
                    record.clone()
                }
                None => self.read_record(record_id)?,
            };
            batch.insert(
                key(CURRENT, record.event.as_bytes()),
                &publication_id.to_be_bytes(),
            );
            published.push(Publication {
                id: publication_id,
                record,
            });
        }

        self.tree.apply_batch(batch)?;
        self.tree.flush()?;

        let next_due = self.next_due()?;
        Ok(Appended {
            records: stored,
            published,
            next_due,
        })
    }

    fn try_current(&self) -> Result<Vec<Publication>, Failure> {
        let mut latest = Vec::new();
        for entry in self.tree.scan_prefix([CURRENT]) {
            let (_, publication_id) = entry?;
            let publication_id =
                read_u64(&publication_id).ok_or(Failure::Corrupt(StorageError::Corrupt {
                    id: 0,
                    reason: "a current version has an invalid publication id".into(),
                }))?;
            let record_id = self
                .tree
                .get(key(PUBLICATION, &publication_id.to_be_bytes()))?
                .and_then(|value| read_u64(&value))
                .ok_or_else(|| StorageError::Corrupt {
                    id: publication_id,
                    reason: "the current version points to a missing publication".into(),
                })?;
            latest.push(Publication {
                id: publication_id,
                record: self.read_record(record_id)?,
            });
        }
        latest.sort_unstable_by_key(|publication| publication.id);
        Ok(latest)
    }

    fn try_publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, Failure> {
        let mut page = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(page);
        };
        let start = key(PUBLICATION, &first.to_be_bytes());
        let end = key(PUBLICATION, &u64::MAX.to_be_bytes());
        for entry in self.tree.range(start..=end).take(limit) {
            let (key, record_id) = entry?;
            let ids = key.get(1..).and_then(read_u64).zip(read_u64(&record_id));
            let Some((publication_id, record_id)) = ids else {
                return Err(Failure::Corrupt(StorageError::Corrupt {
                    id: 0,
                    reason: "invalid publication entry".into(),
                }));
            };
            page.push(Publication {
                id: publication_id,
                record: self.read_record(record_id)?,
            });
        }
        Ok(page)
    }

    fn try_due(&self, now: u64) -> Result<Vec<Record>, Failure> {
        let mut due = Vec::new();
        for entry in self
            .tree
            .range(pending_key(0, 0)..=pending_key(now, u64::MAX))
        {
            let (key, _) = entry?;
            let (_, id) = parse_pending_key(&key)?;
            let mut record = self.read_record(id)?;
            record.published = false;
            due.push(record);
        }
        Ok(due)
    }

    fn try_pending_count(&self) -> Result<u64, Failure> {
        let mut count = 0;
        for entry in self.tree.scan_prefix([PENDING]).keys() {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    fn try_collection(&self, event: &str) -> Result<Vec<Record>, Failure> {
        let mut prefix = key(BY_EVENT, event.as_bytes());
        prefix.push(0);

        let mut versions = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, _) = entry?;
            // The prefix of `a` and NUL also matches the keys of a name `a`,
            // NUL and more, and the prefix of `a` and two NULs matches keys
            // of `a` whose id starts with a zero byte. Only keys that end in
            // exactly one id after the prefix belong to `event`.
            let Some(id) = key.get(prefix.len()..).and_then(read_u64) else {
                continue;
            };
            let mut record = self.read_record(id)?;
            record.published = !self.tree.contains_key(pending_key(record.timestamp, id))?;
            versions.push(record);
        }
        Ok(versions)
    }

    fn read_record(&self, id: u64) -> Result<Record, Failure> {
        let bytes = self
            .tree
            .get(key(RECORD, &id.to_be_bytes()))?
            .ok_or_else(|| StorageError::Corrupt {
                id,
                reason: "the record is missing".into(),
            })?;
        Ok(decode(id, &bytes, true)?)
    }

    /// Returns the largest id under `prefix`, or 0 when there is none.
    fn last_id(&self, prefix: u8) -> Result<u64, Failure> {
        match self.tree.scan_prefix([prefix]).next_back() {
            None => Ok(0),
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key.get(1..).and_then(read_u64).unwrap_or(0))
            }
        }
    }

    fn next_due(&self) -> Result<Option<u64>, Failure> {
        match self.tree.scan_prefix([PENDING]).next() {
            None => Ok(None),
            Some(entry) => {
                let (key, _) = entry?;
                Ok(Some(parse_pending_key(&key)?.0))
            }
        }
    }
}

impl Storage for SledStorage {
    fn append(&self, versions: &[Version], now: u64) -> Result<Appended, StorageError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let db = state.as_ref().ok_or_else(|| StorageError::Closed {
            path: self.path.clone(),
        })?;
        let appended = db.try_append(versions, now);
        if let Err(Failure::Backend(_)) = appended {
            // The batch may be applied in memory but not on disk: drop it
            // before any read can see it.
            *state = None;
        }
        appended.map_err(|failure| failure.during("append"))
    }

    fn current(&self) -> Result<Vec<Publication>, StorageError> {
        self.read("current", SledDb::try_current)
    }

    fn publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, StorageError> {
        self.read("publications_after", |db| {
            db.try_publications_after(after, limit)
        })
    }

    fn collection(&self, event: &str) -> Result<Vec<Record>, StorageError> {
        self.read("collection", |db| db.try_collection(event))
    }

    fn due(&self, now: u64) -> Result<Vec<Record>, StorageError> {
        self.read("due", |db| db.try_due(now))
    }

    /// Counts the pending keys. sled keeps no count, so this scans them,
    /// reading keys only; the core calls it once at start.
    fn pending_count(&self) -> Result<Option<u64>, StorageError> {
        self.read("pending_count", |db| db.try_pending_count().map(Some))
    }

    fn reopen(&self) -> Result<(), StorageError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            *state = Some(SledDb::open(&self.path)?);
        }
        Ok(())
    }
}

impl Drop for SledDb {
    fn drop(&mut self) {
        // Every append already flushed; this covers the format marker and
        // anything sled keeps for itself. After a failed flush this fails
        // too, and what it would write is dropped.
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "failed to flush sled on close");
        }
    }
}

type Failure = super::Failure<::sled::Error>;

impl From<::sled::Error> for Failure {
    fn from(error: ::sled::Error) -> Self {
        Self::Backend(error)
    }
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

fn by_event_key(event: &str, id: u64) -> Vec<u8> {
    let mut key = key(BY_EVENT, event.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn pending_key(timestamp: u64, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(PENDING);
    key.extend_from_slice(&timestamp.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn parse_pending_key(key: &IVec) -> Result<(u64, u64), Failure> {
    let timestamp = key.get(1..9).and_then(read_u64);
    let id = key.get(9..17).and_then(read_u64);
    match (timestamp, id) {
        (Some(timestamp), Some(id)) => Ok((timestamp, id)),
        _ => Err(Failure::Corrupt(StorageError::Corrupt {
            id: 0,
            reason: "invalid pending key".into(),
        })),
    }
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
