//! The PostgreSQL schema of a [`Server`](crate::harness::Server) of the
//! `postgres` storage.
//!
//! The pairs of that storage need a PostgreSQL server, whose URL they read
//! from `BROKER_TEST_DATABASE_URL`; `eval "$(ci/postgres.sh start)"` starts a
//! throwaway one and sets it. Each `Server` keeps its tables in a schema of
//! its own, named after its temporary folder, so cases that run in parallel
//! never share a log, and a restarted server finds the tables of the one
//! before it. The schema is dropped when the `Server` is dropped.

use std::path::Path;
use std::process::Command;

/// The variable that names the PostgreSQL server for the postgres pairs.
const URL_VARIABLE: &str = "BROKER_TEST_DATABASE_URL";

/// Session settings for psql, so that PostgreSQL cancels a statement that
/// runs over 10 s or waits over 10 s for a lock, and a drop cannot hang a test.
const PSQL_OPTIONS: &str =
    "-c statement_timeout=10s -c lock_timeout=10s -c client_min_messages=warning";

/// Seconds that psql waits for a connection.
const PSQL_CONNECT_TIMEOUT: &str = "10";

/// A schema in the test database that one `Server` owns.
#[derive(Debug)]
pub(crate) struct Database {
    /// The libpq URL of the test database, from `BROKER_TEST_DATABASE_URL`.
    pub(crate) url: String,
    /// The schema name, lowercase ASCII letters, digits and `_`, so it needs
    /// no quoting in SQL.
    pub(crate) schema: String,
}

impl Database {
    /// Names the schema for the server whose temporary folder is `root`, and
    /// drops any schema of that name left by an earlier run, so the server
    /// starts on an empty log.
    ///
    /// # Panics
    ///
    /// When `BROKER_TEST_DATABASE_URL` is not set, or psql fails.
    pub(crate) fn for_server(root: &Path) -> Database {
        let url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
            panic!(
                "{URL_VARIABLE} is not set, and the postgres pairs need a PostgreSQL server; \
                 start one with `eval \"$(ci/postgres.sh start)\"`, as ci/test.sh does"
            )
        });
        let database = Database {
            url,
            schema: schema_name(root),
        };
        if let Err(error) = database.drop_schema() {
            panic!("{error}");
        }
        database
    }

    /// Drops the schema and every table in it, with psql.
    fn drop_schema(&self) -> Result<(), String> {
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        let output = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url])
            .args(["-c", &statement])
            .env("PGOPTIONS", PSQL_OPTIONS)
            .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT)
            .output()
            .map_err(|error| {
                format!(
                    "failed to run psql, which Debian's postgresql-client package installs: {error}"
                )
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "psql failed to run `{statement}` on {}: {}",
                self.url,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // A panic here would abort a test that is already unwinding.
        if let Err(error) = self.drop_schema() {
            eprintln!("warning: {error}");
        }
    }
}

/// Derives a schema name from the name of a temporary folder such as
/// `broker-conformance-aB3x9Q`, from its random part.
///
/// PostgreSQL folds unquoted names to lowercase, so an uppercase letter
/// becomes `_` and the letter in lowercase: two folder names that differ
/// only in case get different schemas. Other characters become `__`.
fn schema_name(root: &Path) -> String {
    let folder = root
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_else(|| panic!("the temporary folder {} has no UTF-8 name", root.display()));
    let random = folder
        .strip_prefix(crate::harness::TEMP_PREFIX)
        .unwrap_or(folder);

    let mut schema = String::from("conformance_");
    for character in random.chars() {
        if character.is_ascii_uppercase() {
            schema.push('_');
            schema.push(character.to_ascii_lowercase());
        } else if character.is_ascii_lowercase() || character.is_ascii_digit() {
            schema.push(character);
        } else {
            schema.push_str("__");
        }
    }
    schema
}

#[test]
fn schema_name_keeps_case_apart() {
    let lower = schema_name(Path::new("/tmp/broker-conformance-ab3x9q"));
    let upper = schema_name(Path::new("/tmp/broker-conformance-aB3x9Q"));

    assert_eq!(lower, "conformance_ab3x9q");
    assert_eq!(upper, "conformance_a_b3x9_q");
}
