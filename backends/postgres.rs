//! Storage in PostgreSQL, where any number of brokers share one event log.
//!
//! Each broker process keeps one connection for appends, a few for reads
//! and one that listens for the other processes' appends. Tables live in one
//! schema (`broker` unless [`Database::with_schema`] names another), which
//! the backend creates and migrates itself; [`SCHEMA_VERSION`] is the
//! version this build writes.
//!
//! # How processes share the log
//!
//! Every append runs in one transaction that first locks the single row of
//! `broker_log`, which holds the last record and publication ids. Appends
//! therefore take turns and commit their ids in order: a reader that sees
//! publication `n` sees every publication below it, and each pending record
//! is published by exactly one append, whichever process runs it first
//! after the record falls due.
//!
//! A committed append that stored or published anything sends a
//! `NOTIFY broker_log`, with the schema and the sending process in its
//! payload. Each process listens on its own connection and hands the other
//! processes' notices to the core, which reads the new publications with
//! [`Storage::publications_after`]; see [`SharedLog`].
//!
//! # Durability
//!
//! An append returns once PostgreSQL has committed it, which with the
//! server's default `synchronous_commit = on` means it is in the write-ahead
//! log on disk. A connection lost during the commit leaves its outcome
//! unknown: the append reports a failure, yet the records may be stored,
//! and their publications then reach subscribers from the log.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::error::Severity;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row, Statement, Transaction};
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use crate::error::StorageError;
use crate::event::{Publication, Record};
use crate::storage::{Appended, LogState, SharedLog, Storage, Version};

/// The schema version this build creates and reads. A database migrated by
/// a newer build is refused rather than misread.
pub const SCHEMA_VERSION: i32 = 1;

/// The schema that contains Broker's tables unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "broker";

/// The notification channel of every Broker schema; the payload names the
/// schema, so brokers on other schemas of one database ignore each other.
const CHANNEL: &str = "broker_log";

/// Idle read connections kept open for the next read.
const MAX_IDLE_READERS: usize = 8;

/// Time allowed to open a connection, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Session settings of every connection. A statement may run 10 s. A
/// session may stay idle inside a transaction for 3 s, so the log's lock is
/// freed soon when a broker stops mid-append without its connection
/// closing, as when it is paused. Appends never wait between statements,
/// so the limit never ends a working one. An `idle_session_timeout` of the
/// server or role (PostgreSQL 14 and later) is turned off, because the
/// listening connection is idle by design.
const SESSION_SETTINGS: &str = "SET statement_timeout = '10s';
     SET idle_in_transaction_session_timeout = '3s';
     SELECT set_config('idle_session_timeout', '0', false)
         WHERE current_setting('server_version_num')::int >= 140000";

/// How long the listening connection waits for a notice before it checks
/// whether the storage has been dropped.
const LISTEN_TICK: Duration = Duration::from_millis(500);

/// Maximum wait between attempts to reconnect the listening connection.
const MAX_LISTEN_RETRY: Duration = Duration::from_secs(5);

/// Each migration, in order; migration `n` takes the schema to version `n`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // The log's counters in one row, which every append locks first.
    "CREATE TABLE broker_log (
         singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
         last_record bigint NOT NULL,
         last_publication bigint NOT NULL
     );
     INSERT INTO broker_log VALUES (true, 0, 0);
     CREATE TABLE broker_records (
         id bigint PRIMARY KEY,
         event text NOT NULL,
         timestamp bigint NOT NULL,
         data text NOT NULL,
         publication bigint UNIQUE
     );
     CREATE INDEX broker_records_by_event ON broker_records (event, id);
     CREATE INDEX broker_records_pending ON broker_records (timestamp, id)
         WHERE publication IS NULL;
     CREATE TABLE broker_current (
         event text PRIMARY KEY,
         publication bigint NOT NULL
     );",
];

/// The connection settings of the `postgres` backend, and the schema that
/// contains its tables.
///
/// ```
/// # use broker::backends::postgres::Database;
/// let database: Database = "postgresql://broker:secret@127.0.0.1:5432/app".parse()?;
/// let database = database.with_schema("events")?;
/// assert_eq!(database.schema(), "events");
/// // The password never shows in logs.
/// assert!(!format!("{database:?}").contains("secret"));
/// # Ok::<(), broker::backends::postgres::DatabaseError>(())
/// ```
#[derive(Clone)]
pub struct Database {
    config: postgres::Config,
    schema: String,
}

/// A database URL or schema name that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The URL is empty.
    #[error(
        "the database URL is empty; set it to \
         postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    Empty,

    /// The URL does not parse.
    #[error(
        "the database URL is not valid; use the form \
         postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    Url {
        /// The parser's error.
        #[source]
        source: postgres::Error,
    },

    /// The schema name is not one Broker accepts.
    #[error(
        "the database schema {name:?} is not valid: {reason}; use 1 to 63 lowercase \
         letters, digits and underscores, starting with a letter"
    )]
    Schema {
        /// The name as given.
        name: String,
        /// The rule that the name breaks.
        reason: &'static str,
    },
}

impl Database {
    /// Parses a connection URL (`postgresql://user:password@host:port/db`)
    /// or a key-value string (`host=127.0.0.1 user=broker dbname=app`),
    /// with the schema set to [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    ///
    /// Returns [`DatabaseError::Url`] when the string does not parse.
    pub fn new(url: &str) -> Result<Self, DatabaseError> {
        if url.trim().is_empty() {
            return Err(DatabaseError::Empty);
        }
        let mut config =
            postgres::Config::from_str(url).map_err(|source| DatabaseError::Url { source })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("broker");
        }
        Ok(Self {
            config,
            schema: DEFAULT_SCHEMA.to_owned(),
        })
    }

    /// Sets the schema that contains Broker's tables. The backend creates it
    /// at start when it is missing.
    ///
    /// # Errors
    ///
    /// Returns [`DatabaseError::Schema`] for a name other than 1 to 63
    /// lowercase ASCII letters, digits and underscores starting with a
    /// letter, or one starting with `pg_`, which PostgreSQL reserves.
    pub fn with_schema(mut self, schema: &str) -> Result<Self, DatabaseError> {
        let reason = if schema.is_empty() || schema.len() > 63 {
            Some("it must be 1 to 63 characters long")
        } else if !schema.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("it must start with a lowercase ASCII letter (a to z)")
        } else if !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            Some("it may contain only lowercase letters, digits and underscores")
        } else if schema.starts_with("pg_") {
            Some("names starting with pg_ are reserved by PostgreSQL")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(DatabaseError::Schema {
                name: schema.to_owned(),
                reason,
            });
        }
        self.schema = schema.to_owned();
        Ok(self)
    }

    /// Returns the schema that contains Broker's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Describes the server and database without the password, for logs
    /// and errors: `user@host:port/database`.
    pub fn target(&self) -> String {
        let config = &self.config;
        let user = config.get_user().unwrap_or("(default user)");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().unwrap_or(user);
        format!("{user}@{host}:{port}/{dbname}")
    }
}

impl FromStr for Database {
    type Err = DatabaseError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::new(url)
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target())
            .field("schema", &self.schema)
            .finish()
    }
}

/// An event log in a PostgreSQL schema, shared by every broker that opens
/// the same database and schema.
pub struct PostgresStorage {
    database: Database,
    /// A name for this process in notices, so that it skips its own.
    node: String,
    /// The connection that appends, opened again after a failure.
    writer: Mutex<Option<Connection>>,
    /// Idle connections for reads.
    readers: Mutex<Vec<Connection>>,
    /// Set when the storage is dropped, to stop the listening thread.
    stopped: Arc<AtomicBool>,
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("database", &self.database)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A connection with its prepared statements.
struct Connection {
    client: Client,
    statements: Statements,
}

struct Statements {
    lock_log: Statement,
    insert_records: Statement,
    due: Statement,
    mark_published: Statement,
    set_current: Statement,
    set_log: Statement,
    next_due: Statement,
    notify: Statement,
    current: Statement,
    publications_after: Statement,
    collection: Statement,
    state: Statement,
}

impl Connection {
    fn open(database: &Database) -> Result<Self, postgres::Error> {
        let mut client = connect(database)?;
        client.batch_execute(SESSION_SETTINGS)?;
        let statements = Statements {
            lock_log: client
                .prepare("SELECT last_record, last_publication FROM broker_log FOR UPDATE")?,
            insert_records: client.prepare(
                "INSERT INTO broker_records (id, event, timestamp, data)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[])",
            )?,
            due: client.prepare(
                "SELECT id, event, timestamp, data FROM broker_records
                 WHERE publication IS NULL AND timestamp <= $1
                 ORDER BY timestamp, id",
            )?,
            mark_published: client.prepare(
                "UPDATE broker_records SET publication = due.publication
                 FROM unnest($1::bigint[], $2::bigint[]) AS due (id, publication)
                 WHERE broker_records.id = due.id",
            )?,
            set_current: client.prepare(
                "INSERT INTO broker_current (event, publication)
                 SELECT * FROM unnest($1::text[], $2::bigint[])
                 ON CONFLICT (event) DO UPDATE SET publication = excluded.publication",
            )?,
            set_log: client
                .prepare("UPDATE broker_log SET last_record = $1, last_publication = $2")?,
            next_due: client.prepare(
                "SELECT min(timestamp), count(*) FROM broker_records WHERE publication IS NULL",
            )?,
            notify: client.prepare("SELECT pg_notify($1, $2)")?,
            current: client.prepare(
                "SELECT r.publication, r.id, r.event, r.timestamp, r.data
                 FROM broker_current c JOIN broker_records r ON r.publication = c.publication
                 ORDER BY r.publication",
            )?,
            publications_after: client.prepare(
                "SELECT publication, id, event, timestamp, data FROM broker_records
                 WHERE publication > $1 ORDER BY publication LIMIT $2",
            )?,
            collection: client.prepare(
                "SELECT id, event, timestamp, data, publication IS NOT NULL
                 FROM broker_records WHERE event = $1 ORDER BY id",
            )?,
            state: client.prepare(
                "SELECT last_publication,
                        (SELECT min(timestamp) FROM broker_records WHERE publication IS NULL),
                        (SELECT count(*) FROM broker_records WHERE publication IS NULL)
                 FROM broker_log",
            )?,
        };
        Ok(Self { client, statements })
    }
}

/// Opens a connection with `search_path` set to the schema.
fn connect(database: &Database) -> Result<Client, postgres::Error> {
    let mut client = database.config.connect(NoTls)?;
    client.batch_execute(&format!(
        "SET search_path TO \"{}\"; SET client_min_messages = warning",
        database.schema
    ))?;
    Ok(client)
}

impl PostgresStorage {
    /// Connects, creates the schema and its tables when missing, and
    /// migrates them to [`SCHEMA_VERSION`].
    ///
    /// Several brokers may open the same database and schema at once; the
    /// first creates the tables and the others wait for it.
    ///
    /// # Errors
    ///
    /// Returns [`StorageError::Connect`] when the server cannot be reached
    /// or refuses the login, and [`StorageError::Backend`] when the schema
    /// cannot be created or migrated, or was migrated by a newer build.
    pub fn open(database: &Database) -> Result<Self, StorageError> {
        let connect_error = |source: postgres::Error| StorageError::Connect {
            database: database.target(),
            source: Box::new(source),
        };
        let mut client = connect(database).map_err(connect_error)?;
        check_encoding(&mut client)?;
        migrate(&mut client, &database.schema)?;
        drop(client);
        let writer = Connection::open(database).map_err(connect_error)?;
        info!(
            database = %database.target(),
            schema = %database.schema,
            version = SCHEMA_VERSION,
            "opened the PostgreSQL log"
        );
        Ok(Self {
            database: database.clone(),
            node: node_name(),
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(Vec::new()),
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Option<Connection>> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one append on `writer`, opening it first when it is `None`,
    /// and drops it after a failure.
    fn append_on(
        &self,
        writer: &mut Option<Connection>,
        versions: &[Version],
        now: u64,
    ) -> Result<Appended, Failure> {
        let connection = match writer {
            Some(connection) => connection,
            None => writer.insert(Connection::open(&self.database)?),
        };
        let result = append(connection, versions, now, &self.database.schema, &self.node);
        if result.is_err() {
            // The next append starts on a new connection, whatever state
            // this one was left in.
            *writer = None;
        }
        result
    }

    /// Runs `read` on an idle read connection, or a new one, and keeps the
    /// connection for the next read unless the read failed.
    ///
    /// An idle connection whose session the server has ended, as every
    /// session ends when the server restarts, fails its next read. That
    /// read runs once more on a new connection.
    fn read<T>(
        &self,
        operation: &'static str,
        read: impl Fn(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T, StorageError> {
        let open = || {
            Connection::open(&self.database)
                .map_err(|source| StorageError::backend(operation, source))
        };
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut connection, reused) = match idle {
            Some(connection) if !connection.client.is_closed() => (connection, true),
            _ => (open()?, false),
        };
        let mut result = read(&mut connection);
        let lost = result.as_ref().err().and_then(Failure::lost_session);
        if let Some(error) = lost.filter(|_| reused) {
            debug!(
                operation,
                %error,
                source = ?std::error::Error::source(error),
                "the server ended an idle read connection's session; reading on a new connection"
            );
            connection = open()?;
            result = read(&mut connection);
        }
        let result = result.map_err(|failure| failure.during(operation))?;
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.len() < MAX_IDLE_READERS {
            readers.push(connection);
        }
        Ok(result)
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        // Each client runs a tokio runtime of its own, and dropping one
        // panics inside another runtime, where the last handle to the
        // storage may go. The clients are dropped on a thread of their own.
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let readers = std::mem::take(self.readers.get_mut().unwrap_or_else(|e| e.into_inner()));
        let closed = thread::Builder::new()
            .name("broker-pg-close".into())
            .spawn(move || drop((writer, readers)));
        match closed {
            Ok(closing) => {
                if closing.join().is_err() {
                    warn!("closing the PostgreSQL connections panicked");
                }
            }
            Err(error) => {
                warn!(%error, "failed to start a thread to close the PostgreSQL connections")
            }
        }
    }
}

/// A failed read or write: PostgreSQL's error, or a stored value that does
/// not decode.
enum Failure {
    /// A statement or the connection failed before any commit, so a
    /// transaction that it was part of did not commit.
    Database(postgres::Error),
    /// The commit failed, so whether the transaction committed is unknown.
    Commit(postgres::Error),
    Corrupt(StorageError),
}

impl Failure {
    fn during(self, operation: &'static str) -> StorageError {
        match self {
            Self::Database(error) => StorageError::backend(operation, error),
            Self::Commit(error) => StorageError::CommitUnknown {
                source: Box::new(error),
            },
            Self::Corrupt(error) => error,
        }
    }

    /// Returns the error when the session ended before anything committed,
    /// because the connection was closed or reset, or because the server
    /// sent a FATAL or PANIC error, after which it closes the session. The
    /// request can then run again on a new connection.
    fn lost_session(&self) -> Option<&postgres::Error> {
        let Self::Database(error) = self else {
            return None;
        };
        let ended = error
            .as_db_error()
            .and_then(|error| error.parsed_severity())
            .is_some_and(|severity| matches!(severity, Severity::Fatal | Severity::Panic));
        let io = std::error::Error::source(error).is_some_and(|source| source.is::<io::Error>());
        (error.is_closed() || ended || io).then_some(error)
    }
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Self {
        Self::Database(error)
    }
}

impl From<StorageError> for Failure {
    fn from(error: StorageError) -> Self {
        Self::Corrupt(error)
    }
}

impl Storage for PostgresStorage {
    fn append(&self, versions: &[Version], now: u64) -> Result<Appended, StorageError> {
        let mut writer = self.writer();
        let reused = writer.is_some();
        let mut result = self.append_on(&mut writer, versions, now);
        // The server ends every session when it restarts, so a writer that
        // sat idle through a restart fails its next append. A session lost
        // before the commit stored nothing, so the append runs once more
        // on a new connection.
        let lost = result.as_ref().err().and_then(Failure::lost_session);
        if let Some(error) = lost.filter(|_| reused) {
            warn!(
                %error,
                source = ?std::error::Error::source(error),
                "the server ended the writer's session; appending again on a new connection"
            );
            result = self.append_on(&mut writer, versions, now);
        }
        result.map_err(|failure| failure.during("append"))
    }

    fn current(&self) -> Result<Vec<Publication>, StorageError> {
        self.read("current", |connection| {
            let rows = connection
                .client
                .query(&connection.statements.current, &[])?;
            rows.iter().map(publication).collect()
        })
    }

    fn pending_count(&self) -> Result<Option<u64>, StorageError> {
        Ok(Some(self.state()?.pending))
    }

    fn publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, StorageError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("publications_after", |connection| {
            let rows = connection
                .client
                .query(&connection.statements.publications_after, &[&after, &limit])?;
            rows.iter().map(publication).collect()
        })
    }

    fn collection(&self, event: &str) -> Result<Vec<Record>, StorageError> {
        self.read("collection", |connection| {
            let rows = connection
                .client
                .query(&connection.statements.collection, &[&event])?;
            rows.iter()
                .map(|row| record(row, 0, row.get(4)).map_err(Failure::from))
                .collect()
        })
    }

    fn reopen(&self) -> Result<(), StorageError> {
        let mut writer = self.writer();
        if writer.is_none() {
            let connection =
                Connection::open(&self.database).map_err(|source| StorageError::Connect {
                    database: self.database.target(),
                    source: Box::new(source),
                })?;
            *writer = Some(connection);
        }
        Ok(())
    }

    fn shared(&self) -> Option<&dyn SharedLog> {
        Some(self)
    }
}

impl SharedLog for PostgresStorage {
    fn watch(&self, changed: Box<dyn Fn() + Send + Sync>) {
        let listener = Listener {
            database: self.database.clone(),
            node: self.node.clone(),
            stopped: self.stopped.clone(),
            changed,
        };
        thread::Builder::new()
            .name("broker-pg-listen".into())
            .spawn(move || listener.run())
            .expect("the OS can start a thread");
    }

    fn state(&self) -> Result<LogState, StorageError> {
        self.read("state", |connection| {
            let row = connection
                .client
                .query_one(&connection.statements.state, &[])?;
            Ok(LogState {
                last_publication: to_u64(row.get(0)),
                next_due: row.get::<_, Option<i64>>(1).map(to_u64),
                pending: to_u64(row.get(2)),
            })
        })
    }
}

/// Stores `versions` and publishes what is due at `now`, in one
/// transaction that holds the log's lock until it commits.
fn append(
    connection: &mut Connection,
    versions: &[Version],
    now: u64,
    schema: &str,
    node: &str,
) -> Result<Appended, Failure> {
    let statements = &connection.statements;
    let mut transaction = connection.client.transaction()?;
    let row = transaction.query_one(&statements.lock_log, &[])?;
    let last_record = to_u64(row.get(0));
    let last_publication = to_u64(row.get(1));

    let mut records = Vec::with_capacity(versions.len());
    if !versions.is_empty() {
        records = versions
            .iter()
            .zip(last_record + 1..)
            .map(|(version, id)| Record {
                id,
                event: version.event.clone(),
                timestamp: version.timestamp,
                published: version.timestamp <= now,
                data: version.data.clone(),
            })
            .collect();
        let ids: Vec<i64> = records.iter().map(|record| to_i64(record.id)).collect();
        let events: Vec<&str> = records.iter().map(|record| record.event.as_str()).collect();
        let timestamps: Vec<i64> = records
            .iter()
            .map(|record| to_i64(record.timestamp))
            .collect();
        let data: Vec<&str> = records.iter().map(|record| record.data.get()).collect();
        transaction.execute(
            &statements.insert_records,
            &[&ids, &events, &timestamps, &data],
        )?;
    }

    let published = publish_due(&mut transaction, statements, now, last_publication)?;
    let last_record = last_record + records.len() as u64;
    let last_publication = last_publication + published.len() as u64;
    if !records.is_empty() || !published.is_empty() {
        transaction.execute(
            &statements.set_log,
            &[&to_i64(last_record), &to_i64(last_publication)],
        )?;
        let payload = format!("{schema} {node}");
        transaction.execute(&statements.notify, &[&CHANNEL, &payload])?;
    }
    let row = transaction.query_one(&statements.next_due, &[])?;
    let next_due = row.get::<_, Option<i64>>(0).map(to_u64);
    transaction.commit().map_err(Failure::Commit)?;
    Ok(Appended {
        records,
        published,
        next_due,
    })
}

/// Publishes every pending record due at `now`, in (timestamp, id) order,
/// under the ids after `last_publication`.
fn publish_due(
    transaction: &mut Transaction<'_>,
    statements: &Statements,
    now: u64,
    last_publication: u64,
) -> Result<Vec<Publication>, Failure> {
    let rows = transaction.query(&statements.due, &[&to_i64(now)])?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let published = rows
        .iter()
        .zip(last_publication + 1..)
        .map(|(row, id)| {
            Ok(Publication {
                id,
                record: record(row, 0, true)?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let ids: Vec<i64> = published.iter().map(|p| to_i64(p.record.id)).collect();
    let publications: Vec<i64> = published.iter().map(|p| to_i64(p.id)).collect();
    transaction.execute(&statements.mark_published, &[&ids, &publications])?;

    // One row per name: ON CONFLICT may not touch a row twice in one
    // statement, and only the latest publication of a name is current.
    let mut current: Vec<(&str, i64)> = Vec::new();
    for publication in published.iter().rev() {
        let event = publication.record.event.as_str();
        if !current.iter().any(|(name, _)| *name == event) {
            current.push((event, to_i64(publication.id)));
        }
    }
    let (events, ids): (Vec<&str>, Vec<i64>) = current.into_iter().unzip();
    transaction.execute(&statements.set_current, &[&events, &ids])?;
    Ok(published)
}

/// Decodes a publication from a row of (publication, id, event, timestamp, data).
fn publication(row: &Row) -> Result<Publication, Failure> {
    Ok(Publication {
        id: to_u64(row.get(0)),
        record: record(row, 1, true)?,
    })
}

/// Decodes a record from the columns (id, event, timestamp, data) that
/// start at `first`.
fn record(row: &Row, first: usize, published: bool) -> Result<Record, StorageError> {
    let id = to_u64(row.get(first));
    let data: String = row.get(first + 3);
    let data = RawValue::from_string(data).map_err(|error| StorageError::Corrupt {
        id,
        reason: format!("its data is not JSON ({error})"),
    })?;
    Ok(Record {
        id,
        event: row.get(first + 1),
        timestamp: to_u64(row.get(first + 2)),
        published,
        data,
    })
}

/// Refuses a database whose encoding cannot hold every event name and
/// value that Broker accepts.
fn check_encoding(client: &mut Client) -> Result<(), StorageError> {
    let row = client
        .query_one("SHOW server_encoding", &[])
        .map_err(|source| StorageError::backend("open", source))?;
    let encoding: String = row.get(0);
    if encoding == "UTF8" {
        return Ok(());
    }
    Err(StorageError::backend(
        "open",
        format!(
            "the database encoding is {encoding}, which cannot hold every name and value; \
             create the database with ENCODING 'UTF8'"
        ),
    ))
}

/// Creates the schema when missing and applies the migrations it lacks,
/// under a lock that makes brokers starting together take turns.
fn migrate(client: &mut Client, schema: &str) -> Result<(), StorageError> {
    let failed = |source: postgres::Error| StorageError::backend("migrate", source);
    let mut transaction = client.transaction().map_err(failed)?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('broker_migrate'), hashtext($1))",
            &[&schema],
        )
        .map_err(failed)?;
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .map_err(failed)?
        .is_some();
    if !exists {
        transaction
            .batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
            .map_err(failed)?;
    }
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS broker_schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .map_err(failed)?;
    let version: i32 = transaction
        .query_one(
            "SELECT coalesce(max(version), 0) FROM broker_schema_version",
            &[],
        )
        .map_err(failed)?
        .get(0);
    if version > SCHEMA_VERSION {
        return Err(StorageError::backend(
            "migrate",
            format!(
                "the schema {schema} is at version {version}, written by a newer broker; \
                 this build reads version {SCHEMA_VERSION}: upgrade the broker"
            ),
        ));
    }
    for (number, migration) in (1..).zip(MIGRATIONS.iter()).skip(version as usize) {
        transaction.batch_execute(migration).map_err(failed)?;
        transaction
            .execute(
                "INSERT INTO broker_schema_version (version) VALUES ($1)",
                &[&number],
            )
            .map_err(failed)?;
        info!(schema, version = number, "migrated the database schema");
    }
    transaction.commit().map_err(failed)
}

/// The thread that listens for other processes' appends.
struct Listener {
    database: Database,
    node: String,
    stopped: Arc<AtomicBool>,
    changed: Box<dyn Fn() + Send + Sync>,
}

impl Listener {
    /// Listens until the storage is dropped, reconnecting after failures.
    fn run(self) {
        let mut retry = Duration::from_millis(100);
        let mut lost = false;
        while !self.stopped.load(Ordering::Acquire) {
            let listening = connect(&self.database).and_then(|mut client| {
                client.batch_execute(SESSION_SETTINGS)?;
                client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(client)
            });
            match listening {
                Ok(mut client) => {
                    if lost {
                        info!("listening for other brokers' appends again");
                        lost = false;
                    }
                    retry = Duration::from_millis(100);
                    // Notices sent while no connection listened are lost, so the core
                    // reads the log now.
                    (self.changed)();
                    if let Err(error) = self.listen(&mut client) {
                        warn!(error = %describe(&error), "lost the connection that listens for other brokers' appends; reconnecting");
                        lost = true;
                    }
                }
                Err(error) => {
                    if !lost {
                        warn!(error = %describe(&error), "cannot listen for other brokers' appends; retrying, and reading the log every second meanwhile");
                        lost = true;
                    } else {
                        debug!(error = %describe(&error), "still cannot listen for other brokers' appends");
                    }
                    self.sleep(retry);
                    retry = (retry * 2).min(MAX_LISTEN_RETRY);
                }
            }
        }
        debug!("stopped listening for other brokers' appends");
    }

    /// Hands notices from other processes on this schema to the core until
    /// the connection fails or the storage is dropped.
    fn listen(&self, client: &mut Client) -> Result<(), postgres::Error> {
        while !self.stopped.load(Ordering::Acquire) {
            let mut notifications = client.notifications();
            let mut notices = notifications.timeout_iter(LISTEN_TICK);
            while let Some(notice) = notices.next()? {
                let mut payload = notice.payload().split(' ');
                if payload.next() == Some(self.database.schema.as_str())
                    && payload.next() != Some(self.node.as_str())
                {
                    (self.changed)();
                }
                if self.stopped.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
            drop(notices);
            drop(notifications);
            if client.is_closed() {
                warn!("the server closed the connection that listens for other brokers' appends; reconnecting");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sleeps for `duration`, waking early when the storage is dropped.
    fn sleep(&self, duration: Duration) {
        let step = Duration::from_millis(100);
        let mut slept = Duration::ZERO;
        while slept < duration && !self.stopped.load(Ordering::Acquire) {
            thread::sleep(step);
            slept += step;
        }
    }
}

/// Returns a name for this process that is unique among the brokers on
/// one database: the process id and the start time.
fn node_name() -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{started:x}", std::process::id())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("ids and timestamps stay below i64::MAX")
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Describes a client error with its causes: the client's own message for
/// a server error is only "db error", and the server's message is its source.
fn describe(error: &dyn std::error::Error) -> String {
    crate::error::with_causes(error)
}

#[cfg(test)]
mod tests {
    //! These tests need `BROKER_TEST_DATABASE_URL`, a database where they
    //! create schemas; `ci/postgres.sh start` starts a throwaway server and
    //! prints it.

    use super::*;

    fn test_url() -> String {
        std::env::var("BROKER_TEST_DATABASE_URL").expect(
            "the postgres backend's tests need BROKER_TEST_DATABASE_URL; \
             start a throwaway server with: eval \"$(ci/postgres.sh start)\"",
        )
    }

    /// Returns a database on a schema that no other test uses.
    fn fresh_database(test: &str) -> Database {
        let schema = format!("unit_{test}_{}", node_name().replace('-', "_"));
        Database::new(&test_url())
            .and_then(|database| database.with_schema(&schema))
            .unwrap()
    }

    fn version(event: &str, timestamp: u64) -> Version {
        Version {
            event: event.to_owned(),
            timestamp,
            data: RawValue::from_string("{}".to_owned()).unwrap(),
        }
    }

    #[test]
    fn schema_names_checked() {
        let database = Database::new("postgresql://u:p@127.0.0.1/db").unwrap();
        for (name, accepted) in [
            ("broker", true),
            ("b_2", true),
            ("", false),
            ("2b", false),
            ("Broker", false),
            ("a-b", false),
            ("a\"b", false),
            ("pg_broker", false),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(
                database.clone().with_schema(name).is_ok(),
                accepted,
                "schema {name:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let database = Database::new("postgresql://broker:hunter2@db.example:6543/app").unwrap();
        let shown = format!("{database:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("broker@db.example:6543/app"), "{shown}");
        assert!(Database::new("postgresql://[bad").is_err());
    }

    #[test]
    fn brokers_starting_together_migrate_once() {
        let database = fresh_database("together");
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let database = database.clone();
                thread::spawn(move || PostgresStorage::open(&database).map(drop))
            })
            .collect();
        for open in opened {
            open.join().unwrap().unwrap();
        }
        let mut client = connect(&database).unwrap();
        let versions: Vec<i32> = client
            .query("SELECT version FROM broker_schema_version", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, [SCHEMA_VERSION]);
    }

    #[test]
    fn newer_schema_refused() {
        let database = fresh_database("newer");
        drop(PostgresStorage::open(&database).unwrap());
        let mut client = connect(&database).unwrap();
        client
            .execute(
                "INSERT INTO broker_schema_version (version) VALUES ($1)",
                &[&(SCHEMA_VERSION + 1)],
            )
            .unwrap();
        let error = PostgresStorage::open(&database).unwrap_err();
        let message = describe(&error);
        assert!(message.contains("newer broker"), "{message}");
    }

    #[test]
    fn appends_from_several_processes_publish_in_order_once() {
        const WRITERS: usize = 3;
        const APPENDS: usize = 40;
        let database = fresh_database("interleave");
        let storages: Vec<Arc<PostgresStorage>> = (0..WRITERS)
            .map(|_| Arc::new(PostgresStorage::open(&database).unwrap()))
            .collect();
        let now = 1_000;
        // Some versions are due at once and some later, so that appends
        // of no versions publish what other writers stored.
        let writers: Vec<_> = storages
            .iter()
            .enumerate()
            .map(|(writer, storage)| {
                let storage = storage.clone();
                thread::spawn(move || {
                    for append in 0..APPENDS {
                        let event = format!("w{writer}");
                        let versions = [version(&event, now + (append % 3) as u64)];
                        storage
                            .append(&versions, now + (append / 3) as u64)
                            .unwrap();
                    }
                    storage.append(&[], now + APPENDS as u64).unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }

        let storage = &storages[0];
        let publications = storage.publications_after(0, usize::MAX).unwrap();
        let ids: Vec<u64> = publications.iter().map(|p| p.id).collect();
        let expected: Vec<u64> = (1..=(WRITERS * APPENDS) as u64).collect();
        assert_eq!(ids, expected, "publication ids are consecutive from 1");
        let mut records: Vec<u64> = publications.iter().map(|p| p.record.id).collect();
        records.sort_unstable();
        assert_eq!(records, expected, "every record is published once");
        let state = storage.state().unwrap();
        assert_eq!(
            state,
            LogState {
                last_publication: (WRITERS * APPENDS) as u64,
                next_due: None,
                pending: 0,
            }
        );
        let current = storage.current().unwrap();
        assert_eq!(current.len(), WRITERS, "one current version per name");
    }

    #[test]
    fn other_processes_appends_are_signalled() {
        let database = fresh_database("watch");
        let watcher = PostgresStorage::open(&database).unwrap();
        let writer = PostgresStorage::open(&database).unwrap();
        let (signal, signalled) = std::sync::mpsc::channel();
        let signal = Mutex::new(signal);
        watcher.watch(Box::new(move || {
            let _ = signal.lock().unwrap().send(());
        }));
        // The first signal comes once the listening connection is up.
        signalled.recv_timeout(Duration::from_secs(10)).unwrap();

        watcher.append(&[version("own", 1)], 1).unwrap();
        assert!(
            signalled.recv_timeout(Duration::from_millis(500)).is_err(),
            "a process's own append is not signalled to it"
        );
        writer.append(&[version("other", 1)], 1).unwrap();
        signalled
            .recv_timeout(Duration::from_secs(5))
            .expect("another process's append is signalled");
    }
}
