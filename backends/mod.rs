//! Storage backends, one module per Cargo feature.
//!
//! Each implements [`Storage`](crate::Storage), and any number of them may
//! be compiled in at once. [`StorageKind`] names the compiled-in ones;
//! [`Config::storage`](crate::Config::storage) picks one, redb by default.
//!
//! redb and sled keep the log in the data folder, for one broker process.
//! PostgreSQL keeps it in a database that several brokers share.

#[cfg(any(feature = "redb", feature = "sled"))]
mod codec;

#[cfg(feature = "redb")]
pub mod redb;

#[cfg(feature = "sled")]
pub mod sled;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
pub use self::kind::StorageKind;

/// Returns the (timestamp, record id) of every record to publish at `now`:
/// the due keys of earlier pending records and the new records due at
/// `now`, which get no pending key, in publication order.
#[cfg(any(feature = "redb", feature = "sled"))]
fn publication_order(
    mut pending_due: Vec<(u64, u64)>,
    stored: &[crate::Record],
    now: u64,
) -> Vec<(u64, u64)> {
    pending_due.extend(
        stored
            .iter()
            .filter(|record| record.timestamp <= now)
            .map(|record| (record.timestamp, record.id)),
    );
    pending_due.sort_unstable();
    pending_due
}

/// A failed read or write in an embedded backend: the backend's own error,
/// or a stored value that does not decode.
#[cfg(any(feature = "redb", feature = "sled"))]
#[derive(Debug)]
enum Failure<E> {
    Backend(E),
    Corrupt(crate::StorageError),
}

#[cfg(any(feature = "redb", feature = "sled"))]
impl<E: std::error::Error + Send + Sync + 'static> Failure<E> {
    /// Converts to the trait's error, naming the operation that failed.
    fn during(self, operation: &'static str) -> crate::StorageError {
        match self {
            Self::Backend(error) => crate::StorageError::backend(operation, error),
            Self::Corrupt(error) => error,
        }
    }
}

#[cfg(any(feature = "redb", feature = "sled"))]
impl<E> From<crate::StorageError> for Failure<E> {
    fn from(error: crate::StorageError) -> Self {
        Self::Corrupt(error)
    }
}

#[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
pub(crate) use self::kind::open;

#[cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]
mod kind {
    use std::fmt;
    #[cfg(any(feature = "redb", feature = "sled"))]
    use std::path::Path;
    use std::str::FromStr;
    use std::sync::Arc;

    use crate::error::StorageError;
    use crate::storage::Storage;

    /// A storage backend compiled into this build.
    ///
    /// The default is the first compiled in of redb, sled and PostgreSQL.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum StorageKind {
        /// One redb file, `broker.redb`, in the data folder.
        #[cfg(feature = "redb")]
        Redb,
        /// A sled database in the folder `sled` inside the data folder.
        #[cfg(feature = "sled")]
        Sled,
        /// A PostgreSQL database, which
        /// [`Config::database`](crate::Config::database) names.
        #[cfg(feature = "postgres")]
        Postgres,
    }

    impl StorageKind {
        /// Every kind compiled into this build, the default first.
        pub const ALL: &'static [StorageKind] = &[
            #[cfg(feature = "redb")]
            StorageKind::Redb,
            #[cfg(feature = "sled")]
            StorageKind::Sled,
            #[cfg(feature = "postgres")]
            StorageKind::Postgres,
        ];

        /// Returns the name used in configuration: `redb`, `sled` or
        /// `postgres`.
        pub fn name(self) -> &'static str {
            match self {
                #[cfg(feature = "redb")]
                Self::Redb => "redb",
                #[cfg(feature = "sled")]
                Self::Sled => "sled",
                #[cfg(feature = "postgres")]
                Self::Postgres => "postgres",
            }
        }

        /// Returns whether the backend keeps its log in the data folder.
        pub fn uses_data_dir(self) -> bool {
            match self {
                #[cfg(feature = "redb")]
                Self::Redb => true,
                #[cfg(feature = "sled")]
                Self::Sled => true,
                #[cfg(feature = "postgres")]
                Self::Postgres => false,
            }
        }
    }

    impl Default for StorageKind {
        fn default() -> Self {
            Self::ALL[0]
        }
    }

    impl fmt::Display for StorageKind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name())
        }
    }

    impl FromStr for StorageKind {
        type Err = String;

        fn from_str(name: &str) -> Result<Self, Self::Err> {
            Self::ALL
                .iter()
                .copied()
                .find(|kind| kind.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                    format!(
                        "unknown storage {name:?}; this build has: {}",
                        names.join(", ")
                    )
                })
        }
    }

    /// The entry each embedded backend keeps in the data folder, listed
    /// whether or not the backend is compiled in, so that any build can
    /// recognize a folder written by another.
    #[cfg(any(feature = "redb", feature = "sled"))]
    const ENTRIES: [(&str, &str); 2] = [("redb", "broker.redb"), ("sled", "sled")];

    /// Opens the storage that `config` names: a file backend in the data
    /// folder, created if missing, or PostgreSQL at the configured URL.
    pub(crate) fn open(config: &crate::Config) -> Result<Arc<dyn Storage>, crate::Error> {
        match config.storage {
            #[cfg(feature = "postgres")]
            StorageKind::Postgres => {
                let database = config.database.as_ref().ok_or(StorageError::NoDatabase)?;
                Ok(Arc::new(super::postgres::PostgresStorage::open(database)?))
            }
            #[cfg(any(feature = "redb", feature = "sled"))]
            kind => {
                let data_dir = &config.data_dir;
                let created = if data_dir.exists() && !data_dir.is_dir() {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the path is a file, not a folder; choose a folder path",
                    ))
                } else {
                    std::fs::create_dir_all(data_dir)
                };
                created.map_err(|source| crate::Error::DataDir {
                    path: data_dir.clone(),
                    source,
                })?;
                Ok(open_in(kind, data_dir)?)
            }
        }
    }

    /// Opens the file backend `kind` in `data_dir`, after checking that no
    /// other backend's database is there: the backend would otherwise start
    /// an empty log beside the other's and hide its events.
    #[cfg(any(feature = "redb", feature = "sled"))]
    fn open_in(kind: StorageKind, data_dir: &Path) -> Result<Arc<dyn Storage>, StorageError> {
        for (name, entry) in ENTRIES {
            if name != kind.name() && data_dir.join(entry).exists() {
                return Err(StorageError::WrongStorage {
                    path: data_dir.join(entry),
                    found: name,
                    configured: kind.name(),
                });
            }
        }

        Ok(match kind {
            #[cfg(feature = "redb")]
            StorageKind::Redb => Arc::new(super::redb::RedbStorage::open(data_dir)?),
            #[cfg(feature = "sled")]
            StorageKind::Sled => Arc::new(super::sled::SledStorage::open(data_dir)?),
            #[cfg(feature = "postgres")]
            StorageKind::Postgres => unreachable!("opened by `open` above"),
        })
    }
}
