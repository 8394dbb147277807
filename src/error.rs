//! Error types: one enum per failure domain, plus [`Error`] for the handle.
//!
//! [`InsertError`] is what a publisher did wrong and maps to `400`.
//! [`StorageError`] is what the storage backend failed to do and maps to `503`.
//! [`Error`] is what a [`Broker`](crate::Broker) operation returns.

use std::path::PathBuf;
use std::sync::Arc;

/// The largest accepted timestamp: 9999-12-31T23:59:59Z, in epoch seconds.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// The largest accepted event name, in bytes of UTF-8.
pub const MAX_EVENT_LEN: usize = 256;

/// A rejected insert: the request body is not a valid event.
///
/// Every variant names the field at fault (see [`InsertError::field`]) and its
/// message gives the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The body is not valid JSON.
    #[error("request body is not valid JSON ({reason}); send one JSON object")]
    InvalidJson {
        /// The parser's description of the problem, with line and column.
        reason: String,
    },

    /// The body is valid JSON but not an object.
    #[error("request body is a JSON {found}; send a JSON object such as {{\"event\": \"name\", \"data\": {{}}}}")]
    NotAnObject {
        /// The JSON type that was sent instead.
        found: &'static str,
    },

    /// A required field is absent.
    #[error("`{field}` is missing; add it to the request body")]
    MissingField {
        /// The missing field.
        field: &'static str,
    },

    /// A field has the wrong JSON type.
    #[error("`{field}` must be {expected}, not a JSON {found}")]
    WrongType {
        /// The field at fault.
        field: &'static str,
        /// The expected type, as a phrase ("a string").
        expected: &'static str,
        /// The JSON type that was sent.
        found: &'static str,
    },

    /// A top-level field that Broker does not define.
    #[error("`{field}` is not a known field; send only `event`, `timestamp`, `published` and `data`, and put your own fields inside `data`")]
    UnknownField {
        /// The field as sent.
        field: String,
    },

    /// A string in `data` with a `\u` escape of a UTF-16 surrogate that is
    /// not half of a pair. JSON's grammar allows it, but it encodes no
    /// character, and strict parsers such as serde_json reject it.
    #[error("`data` contains the escape {escape}, a lone UTF-16 surrogate that encodes no character; send the character itself or a surrogate pair such as \\ud83d\\ude00")]
    LoneSurrogate {
        /// The escape as sent, such as `\ud800`.
        escape: String,
    },

    /// A field that appears twice in the same object.
    #[error("`{field}` appears more than once; send each field once")]
    DuplicateField {
        /// The repeated field.
        field: String,
    },

    /// The event name is the empty string.
    #[error("`event` is empty; send a name of 1 to 256 bytes")]
    EmptyEvent,

    /// The event name is longer than [`MAX_EVENT_LEN`] bytes.
    #[error("`event` is {len} bytes long; the maximum is 256 bytes of UTF-8")]
    EventTooLong {
        /// The length sent, in bytes.
        len: usize,
    },

    /// The event name contains a control character such as CR, LF or NUL.
    #[error("`event` contains the control character {character:?} at byte {position}; remove control characters (such as CR, LF and NUL) from the name")]
    ControlCharacter {
        /// The character found.
        character: char,
        /// Its byte offset in the name.
        position: usize,
    },

    /// The timestamp is below zero.
    #[error(
        "`timestamp` is {value}, which is negative; send epoch seconds from 0 to 253402300799"
    )]
    NegativeTimestamp {
        /// The value as sent.
        value: String,
    },

    /// The timestamp has a fractional part.
    #[error("`timestamp` is {value}, which is not an integer; send whole epoch seconds, e.g. Math.floor(Date.now() / 1000)")]
    FractionalTimestamp {
        /// The value as sent.
        value: String,
    },

    /// The timestamp is in the range of epoch milliseconds.
    #[error("`timestamp` is {value}, which looks like milliseconds; send epoch seconds instead ({seconds})")]
    TimestampInMilliseconds {
        /// The value sent.
        value: u64,
        /// The same instant in seconds.
        seconds: u64,
    },

    /// The timestamp is after 9999-12-31T23:59:59Z.
    #[error("`timestamp` is {value}, beyond the maximum 253402300799 (9999-12-31T23:59:59Z); send epoch seconds")]
    TimestampTooLarge {
        /// The value sent, as the JSON text.
        value: String,
    },
}

impl InsertError {
    /// Returns the request field at fault, or `None` when the body as a whole is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { .. } | Self::NotAnObject { .. } => None,
            Self::MissingField { field } | Self::WrongType { field, .. } => Some(field),
            Self::UnknownField { field } | Self::DuplicateField { field } => Some(field),
            Self::LoneSurrogate { .. } => Some("data"),
            Self::EmptyEvent | Self::EventTooLong { .. } | Self::ControlCharacter { .. } => {
                Some("event")
            }
            Self::NegativeTimestamp { .. }
            | Self::FractionalTimestamp { .. }
            | Self::TimestampInMilliseconds { .. }
            | Self::TimestampTooLarge { .. } => Some("timestamp"),
        }
    }

    /// Returns a short, stable code for the kind of error, for clients to match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson { .. } | Self::LoneSurrogate { .. } => "invalid_json",
            Self::NotAnObject { .. } => "not_an_object",
            Self::MissingField { .. } => "missing_field",
            Self::WrongType { .. } => "wrong_type",
            Self::UnknownField { .. } => "unknown_field",
            Self::DuplicateField { .. } => "duplicate_field",
            Self::EmptyEvent | Self::EventTooLong { .. } | Self::ControlCharacter { .. } => {
                "invalid_event"
            }
            Self::NegativeTimestamp { .. }
            | Self::FractionalTimestamp { .. }
            | Self::TimestampInMilliseconds { .. }
            | Self::TimestampTooLarge { .. } => "invalid_timestamp",
        }
    }
}

/// A failure of the storage backend.
///
/// The request that met it had no effect: a failed append stores nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database could not be opened or created.
    #[error("failed to open the database at {path}")]
    Open {
        /// The database file or folder.
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The data folder contains another backend's database.
    #[error("the data folder contains a {found} database ({path}), but the storage is set to {configured}; set BROKER_STORAGE={found} or use another data folder")]
    WrongStorage {
        /// The other backend's file or folder.
        path: PathBuf,
        /// The backend that wrote it.
        found: &'static str,
        /// The backend that was configured.
        configured: &'static str,
    },

    /// The database server could not be reached, or refused the login.
    #[error("failed to connect to the database {database}")]
    Connect {
        /// The server and database, without the password.
        database: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The connection broke while the database committed, so whether the
    /// write is stored is unknown.
    #[error(
        "the connection to the database broke during the commit, so the insert may be stored; \
         read GET /collection/{{event}} before you send it again"
    )]
    CommitUnknown {
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The storage needs a database, and none is configured.
    #[error(
        "the postgres storage needs a database: set BROKER_DATABASE_URL, \
         e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE"
    )]
    NoDatabase,

    /// A read or write failed.
    #[error("storage {operation} failed")]
    Backend {
        /// The operation that failed ("append", "collection", ...).
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The database was closed after a failed write and is not open again
    /// yet. The broker reopens it when it retries the write.
    #[error(
        "the database {path} is closed after a failed write and is reopened at the next retry"
    )]
    Closed {
        /// The database file or folder.
        path: PathBuf,
    },

    /// Stored bytes could not be decoded: the file was written by an
    /// incompatible version or is damaged.
    #[error("stored record {id} is unreadable: {reason}")]
    Corrupt {
        /// The record id.
        id: u64,
        /// The decoding problem.
        reason: String,
    },
}

impl StorageError {
    /// Wraps a backend error raised by `operation`.
    pub fn backend(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            operation,
            source: source.into(),
        }
    }
}

/// The error returned by [`Broker`](crate::Broker) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event was rejected before anything was stored.
    #[error(transparent)]
    Insert(#[from] InsertError),

    /// The storage backend failed. Shared, because one failed append fails
    /// every insert batched into it.
    #[error(transparent)]
    Storage(Arc<StorageError>),

    /// The data folder could not be created.
    #[error("failed to create the data folder {path}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The broker is shutting down and takes no new subscribers.
    #[error("the broker is shutting down")]
    ShuttingDown,

    /// The broker's core has stopped, so the handle can no longer reach it.
    #[error("the broker has stopped")]
    Stopped,
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Self {
        Self::Storage(Arc::new(error))
    }
}

/// Formats `error` followed by its causes, each after a colon.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
