//! Storage in one [redb](https://docs.rs/redb) file, `broker.redb`, in the
//! data folder.
//!
//! Every [`append`](Storage::append) is one redb write transaction committed
//! with redb's default immediate durability, so an `Ok` has reached the disk.
//! The core batches concurrent inserts into one append, which makes that one
//! sync for many inserts.
//!
//! After an I/O error redb (5.0) rejects every later transaction with
//! `PreviousIo` until the file is opened again. So a failed append closes
//! the database, and [`Storage::reopen`] opens it again, which also runs
//! redb's repair of the file.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use super::codec::{decode, encode};
use super::publication_order;
use crate::error::StorageError;
use crate::event::{Publication, Record};
use crate::storage::{Appended, Storage, Version};
use ::redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// The file name inside the data folder.
pub const FILE_NAME: &str = "broker.redb";

/// Record id to encoded record (see [`encode`]).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// (event name, record id): the records of each name in insertion order.
const BY_EVENT: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_event");
/// (timestamp, record id) of every pending record, in publication order.
const PENDING: TableDefinition<(u64, u64), ()> = TableDefinition::new("pending");
/// Publication id to record id.
const PUBLICATIONS: TableDefinition<u64, u64> = TableDefinition::new("publications");
/// Event name to the publication id of its current version.
const CURRENT: TableDefinition<&str, u64> = TableDefinition::new("current");
/// Format marker, checked on open.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes of pages that redb keeps cached in memory. redb's own default is
/// 1 GiB, which a server holding one small log per process should not take.
/// Reads of the current versions are served from the core's memory, so the
/// cache mostly serves collection reads and the write path.
const CACHE_SIZE: usize = 64 * 1024 * 1024;

/// The layout written by this version; bump it when the tables change.
const FORMAT_VERSION: u64 = 1;

/// A [`Storage`] backed by a redb database file.
#[derive(Debug)]
pub struct RedbStorage {
    /// The open database, or `None` from a failed append until a
    /// successful [`Storage::reopen`].
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

impl RedbStorage {
    /// Opens `broker.redb` in `data_dir`, creating the file and its tables if
    /// they do not exist.
    ///
    /// # Errors
    ///
    /// Returns [`StorageError::Open`] when the file cannot be opened (for
    /// example because another process has it open) or has another layout.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let path = data_dir.join(FILE_NAME);
        let db = open_database(&path)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path,
        })
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the open database, or [`StorageError::Closed`] after a failed append.
    fn database(&self) -> Result<DatabaseGuard<'_>, StorageError> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StorageError::Closed {
                path: self.path.clone(),
            });
        }
        Ok(DatabaseGuard(guard))
    }

    /// Closes the database after a failed write, so that the next
    /// [`Storage::reopen`] can open the file again.
    fn close(&self) {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Dropping a database after an I/O error writes nothing and leaves
        // the file for the next open to repair.
        *db = None;
    }
}

/// Read access to the open database.
struct DatabaseGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DatabaseGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked in RedbStorage::database")
    }
}

/// Opens or creates the database file at `path` and its tables.
fn open_database(path: &Path) -> Result<Database, StorageError> {
    let open_failed = |source: ::redb::Error| StorageError::Open {
        path: path.to_path_buf(),
        source: source.into(),
    };

    let db = Database::builder()
        .set_cache_size(CACHE_SIZE)
        .create(path)
        .map_err(|error| match error {
            ::redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Open {
                path: path.to_path_buf(),
                source: "another process has the database open; stop it or choose \
                         another data folder"
                    .into(),
            },
            other => open_failed(other.into()),
        })?;
    let txn = db.begin_write().map_err(|e| open_failed(e.into()))?;
    {
        txn.open_table(RECORDS).map_err(|e| open_failed(e.into()))?;
        txn.open_table(BY_EVENT)
            .map_err(|e| open_failed(e.into()))?;
        txn.open_table(PENDING).map_err(|e| open_failed(e.into()))?;
        txn.open_table(PUBLICATIONS)
            .map_err(|e| open_failed(e.into()))?;
        txn.open_table(CURRENT).map_err(|e| open_failed(e.into()))?;

        let mut meta = txn.open_table(META).map_err(|e| open_failed(e.into()))?;
        let format = meta.get("format").map_err(|e| open_failed(e.into()))?;
        match format.map(|guard| guard.value()) {
            None => {
                meta.insert("format", FORMAT_VERSION)
                    .map_err(|e| open_failed(e.into()))?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StorageError::Open {
                    path: path.to_path_buf(),
                    source: format!(
                        "the file has layout version {other}, but this build reads version \
                         {FORMAT_VERSION}; use a matching Broker version or another data folder"
                    )
                    .into(),
                })
            }
        }
    }
    txn.commit().map_err(|e| open_failed(e.into()))?;
    Ok(db)
}

impl Storage for RedbStorage {
    fn append(&self, versions: &[Version], now: u64) -> Result<Appended, StorageError> {
        let appended = self.try_append(versions, now);
        if let Err(Failure::Backend(_)) = appended {
            self.close();
        }
        appended.map_err(|failure| failure.during("append"))
    }

    fn current(&self) -> Result<Vec<Publication>, StorageError> {
        self.try_current()
            .map_err(|failure| failure.during("current"))
    }

    fn publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, StorageError> {
        self.try_publications_after(after, limit)
            .map_err(|failure| failure.during("publications_after"))
    }

    fn collection(&self, event: &str) -> Result<Vec<Record>, StorageError> {
        self.try_collection(event)
            .map_err(|failure| failure.during("collection"))
    }

    fn due(&self, now: u64) -> Result<Vec<Record>, StorageError> {
        self.try_due(now).map_err(|failure| failure.during("due"))
    }

    /// Returns the length of the pending table, which redb 5 stores in the
    /// table's header, so counting reads no entry.
    fn pending_count(&self) -> Result<Option<u64>, StorageError> {
        self.try_pending_count()
            .map(Some)
            .map_err(|failure| failure.during("pending_count"))
    }

    fn reopen(&self) -> Result<(), StorageError> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if db.is_none() {
            *db = Some(open_database(&self.path)?);
        }
        Ok(())
    }
}

impl RedbStorage {
    fn try_append(&self, versions: &[Version], now: u64) -> Result<Appended, Failure> {
        let txn = self.database()?.begin_write()?;
        let appended = {
            let mut records = txn.open_table(RECORDS)?;
            let mut by_event = txn.open_table(BY_EVENT)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut publications = txn.open_table(PUBLICATIONS)?;
            let mut current = txn.open_table(CURRENT)?;

            // Store the new versions. Only those due later go into
            // `pending`: the ones due now are published below, in this
            // transaction, and leaving `pending` untouched saves its pages
            // from this commit.
            let first_id = last_key(&records)? + 1;
            let mut stored = Vec::with_capacity(versions.len());
            for (id, version) in (first_id..).zip(versions) {
                records.insert(id, encode(version).as_slice())?;
                by_event.insert((version.event.as_str(), id), ())?;
                if version.timestamp > now {
                    pending.insert((version.timestamp, id), ())?;
                }
                stored.push(Record {
                    id,
                    event: version.event.clone(),
                    timestamp: version.timestamp,
                    published: false,
                    data: version.data.clone(),
                });
            }

            // Publish everything due, older pending records and new ones
            // alike, in (timestamp, id) order.
            let pending_due = pending
                .range(..=(now, u64::MAX))?
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<Vec<_>, _>>()?;
            let due = publication_order(pending_due, &stored, now);
            let mut publication_id = last_key(&publications)?;
            let mut published = Vec::with_capacity(due.len());
            for (timestamp, record_id) in due {
                if record_id < first_id {
                    pending.remove((timestamp, record_id))?;
                }
                publication_id += 1;
                publications.insert(publication_id, record_id)?;

                let record = match record_id.checked_sub(first_id) {
                    Some(index) => {
                        let record = &mut stored[index as usize];
                        record.published = true;
                        record.clone()
                    }
                    None => read_record(&records, record_id, true)?,
                };
                current.insert(record.event.as_str(), publication_id)?;
                published.push(Publication {
                    id: publication_id,
                    record,
                });
            }

            let next_due = pending.first()?.map(|(key, _)| key.value().0);
            Appended {
                records: stored,
                published,
                next_due,
            }
        };
        txn.commit()?;
        Ok(appended)
    }

    fn try_current(&self) -> Result<Vec<Publication>, Failure> {
        let txn = self.database()?.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let publications = txn.open_table(PUBLICATIONS)?;
        let current = txn.open_table(CURRENT)?;

        let mut latest = Vec::new();
        for entry in current.iter()? {
            let (_, publication_id) = entry?;
            let publication_id = publication_id.value();
            let record_id = publications
                .get(publication_id)?
                .ok_or_else(|| StorageError::Corrupt {
                    id: publication_id,
                    reason: "the current version points to a missing publication".into(),
                })?
                .value();
            latest.push(Publication {
                id: publication_id,
                record: read_record(&records, record_id, true)?,
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
        let txn = self.database()?.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let publications = txn.open_table(PUBLICATIONS)?;

        let mut page = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(page);
        };
        for entry in publications.range(first..)?.take(limit) {
            let (publication_id, record_id) = entry?;
            page.push(Publication {
                id: publication_id.value(),
                record: read_record(&records, record_id.value(), true)?,
            });
        }
        Ok(page)
    }

    fn try_due(&self, now: u64) -> Result<Vec<Record>, Failure> {
        let txn = self.database()?.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let pending = txn.open_table(PENDING)?;

        let mut due = Vec::new();
        for entry in pending.range(..=(now, u64::MAX))? {
            let (key, _) = entry?;
            let (_, id) = key.value();
            due.push(read_record(&records, id, false)?);
        }
        Ok(due)
    }

    fn try_pending_count(&self) -> Result<u64, Failure> {
        let txn = self.database()?.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        Ok(pending.len()?)
    }

    fn try_collection(&self, event: &str) -> Result<Vec<Record>, Failure> {
        let txn = self.database()?.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let by_event = txn.open_table(BY_EVENT)?;
        let pending = txn.open_table(PENDING)?;

        let mut versions = Vec::new();
        for entry in by_event.range((event, 0)..=(event, u64::MAX))? {
            let (key, _) = entry?;
            let (_, id) = key.value();
            let mut record = read_record(&records, id, true)?;
            record.published = pending.get((record.timestamp, id))?.is_none();
            versions.push(record);
        }
        Ok(versions)
    }
}

type Failure = super::Failure<::redb::Error>;

macro_rules! redb_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(error: $error) -> Self {
                Self::Backend(error.into())
            }
        }
    )*};
}

redb_failures!(
    ::redb::Error,
    ::redb::StorageError,
    ::redb::TableError,
    ::redb::TransactionError,
    ::redb::CommitError
);

/// Returns the largest key of a table keyed by id, or 0 when it is empty.
fn last_key<V: ::redb::Value + 'static>(
    table: &impl ReadableTable<u64, V>,
) -> Result<u64, ::redb::StorageError> {
    Ok(table.last()?.map_or(0, |(key, _)| key.value()))
}

fn read_record(
    records: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
    published: bool,
) -> Result<Record, Failure> {
    let bytes = records.get(id)?.ok_or_else(|| StorageError::Corrupt {
        id,
        reason: "the record is missing".into(),
    })?;
    Ok(decode(id, bytes.value(), published)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn version(event: &str, timestamp: u64, data: &str) -> Version {
        Version {
            event: event.to_owned(),
            timestamp,
            data: RawValue::from_string(data.to_owned()).unwrap(),
        }
    }

    #[test]
    fn append_publishes_due_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RedbStorage::open(dir.path()).unwrap();

        let appended = storage
            .append(
                &[
                    version("a", 30, "1"),
                    version("b", 10, "2"),
                    version("a", 20, "3"),
                ],
                15,
            )
            .unwrap();
        let ids: Vec<u64> = appended.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(appended.published.len(), 1);
        assert_eq!(appended.published[0].record.id, 2);
        assert_eq!(appended.next_due, Some(20));

        let later = storage.append(&[], 40).unwrap();
        let order: Vec<(u64, u64)> = later
            .published
            .iter()
            .map(|p| (p.id, p.record.id))
            .collect();
        assert_eq!(order, [(2, 3), (3, 1)]);
        assert_eq!(later.next_due, None);
    }

    #[test]
    fn reopen_keeps_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = RedbStorage::open(dir.path()).unwrap();
            storage
                .append(&[version("a", 1, "{\"x\":1}"), version("a", 99, "2")], 5)
                .unwrap();
        }
        let storage = RedbStorage::open(dir.path()).unwrap();

        let current = storage.current().unwrap();
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].record.data.get(), "{\"x\":1}");

        let collection = storage.collection("a").unwrap();
        let published: Vec<bool> = collection.iter().map(|r| r.published).collect();
        assert_eq!(published, [true, false]);
        assert!(storage.collection("b").unwrap().is_empty());

        let appended = storage.append(&[version("c", 1, "null")], 5).unwrap();
        assert_eq!(appended.records[0].id, 3);
        assert_eq!(appended.published[0].id, 2);
    }
}
