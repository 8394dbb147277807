//! A property test of every compiled-in storage backend against a model
//! of the [`Storage`] contract: random appends of versions with past, due
//! and future timestamps, at a clock that moves forward.
//!
//! Beyond ids and publication order, it checks the promise the core relies
//! on to send scheduled events before their write: [`Storage::due`] returns
//! exactly what the next append of no versions publishes. A shared log,
//! which makes no such promise, is checked for its [`LogState`] instead.
//!
//! With the `postgres` feature it needs `BROKER_TEST_DATABASE_URL`, a
//! database where it creates one schema per case; `ci/postgres.sh start`
//! starts a throwaway server and prints it.
#![cfg(any(feature = "redb", feature = "sled", feature = "postgres"))]

use std::collections::{BTreeMap, BTreeSet};

use broker::{LogState, Storage, Version};
use proptest::prelude::*;
use serde_json::value::RawValue;

/// The contract, in memory: record ids, pending keys and publications.
#[derive(Default)]
struct Model {
    /// (event, timestamp) of each record; record id `i + 1` is at index `i`.
    records: Vec<(String, u64)>,
    /// (timestamp, record id) of each pending record.
    pending: BTreeSet<(u64, u64)>,
    /// Publication id to record id.
    publications: BTreeMap<u64, u64>,
}

impl Model {
    fn due(&self, now: u64) -> Vec<u64> {
        self.pending
            .range(..=(now, u64::MAX))
            .map(|&(_, id)| id)
            .collect()
    }

    /// Returns the new record ids and the (publication id, record id) pairs published.
    fn append(&mut self, versions: &[(String, u64)], now: u64) -> (Vec<u64>, Vec<(u64, u64)>) {
        let mut ids = Vec::new();
        for (event, timestamp) in versions {
            self.records.push((event.clone(), *timestamp));
            let id = self.records.len() as u64;
            self.pending.insert((*timestamp, id));
            ids.push(id);
        }
        let mut published = Vec::new();
        for id in self.due(now) {
            let timestamp = self.records[id as usize - 1].1;
            self.pending.remove(&(timestamp, id));
            let publication = self.publications.len() as u64 + 1;
            self.publications.insert(publication, id);
            published.push((publication, id));
        }
        (ids, published)
    }

    fn next_due(&self) -> Option<u64> {
        self.pending.first().map(|&(timestamp, _)| timestamp)
    }
}

/// One append: versions as (event, seconds after the clock minus 3), then
/// seconds the clock moves forward afterwards.
type Step = (Vec<(String, u64)>, u64);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let version = ("[abc]", 0u64..7);
    let step = (prop::collection::vec(version, 0..5), 0u64..3);
    prop::collection::vec(step, 1..12)
}

#[allow(
    clippy::vec_init_then_push,
    reason = "each push is behind its own feature"
)]
fn backends(dir: &tempfile::TempDir) -> Vec<(&'static str, Box<dyn Storage>)> {
    let mut backends: Vec<(&'static str, Box<dyn Storage>)> = Vec::new();
    #[cfg(any(feature = "redb", feature = "sled"))]
    let folder = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    #[cfg(feature = "redb")]
    backends.push((
        "redb",
        Box::new(broker::backends::redb::RedbStorage::open(&folder("redb")).unwrap()),
    ));
    #[cfg(feature = "sled")]
    backends.push((
        "sled",
        Box::new(broker::backends::sled::SledStorage::open(&folder("sled")).unwrap()),
    ));
    #[cfg(feature = "postgres")]
    backends.push(("postgres", Box::new(postgres_storage(dir))));
    backends
}

/// Opens a PostgreSQL log in a new schema of the test database, named
/// after the case's temporary folder so that cases never share a log.
#[cfg(feature = "postgres")]
fn postgres_storage(dir: &tempfile::TempDir) -> broker::backends::postgres::PostgresStorage {
    use broker::backends::postgres::{Database, PostgresStorage};
    let url = std::env::var("BROKER_TEST_DATABASE_URL").expect(
        "the postgres feature's tests need BROKER_TEST_DATABASE_URL; \
         start a throwaway server with: eval \"$(ci/postgres.sh start)\"",
    );
    let suffix: String = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let schema = format!("model_{}", suffix.to_ascii_lowercase());
    let database = Database::new(&url)
        .and_then(|database| database.with_schema(&schema))
        .unwrap();
    PostgresStorage::open(&database).unwrap()
}

fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, storage) in backends(&dir) {
        let mut model = Model::default();
        let mut now = 100;
        for (offsets, advance) in steps {
            let versions: Vec<(String, u64)> = offsets
                .iter()
                .map(|(event, offset)| (event.clone(), now - 3 + offset))
                .collect();
            let stored: Vec<Version> = versions
                .iter()
                .map(|(event, timestamp)| Version {
                    event: event.clone(),
                    timestamp: *timestamp,
                    data: RawValue::from_string(timestamp.to_string()).unwrap(),
                })
                .collect();

            // A shared log promises nothing from `due`: other processes
            // may publish before this one appends.
            let due: Vec<u64> = if storage.shared().is_some() {
                model.due(now)
            } else {
                storage.due(now).unwrap().iter().map(|r| r.id).collect()
            };
            prop_assert_eq!(&due, &model.due(now), "{} due at {}", name, now);

            let appended = storage.append(&stored, now).unwrap();
            let (ids, published) = model.append(&versions, now);
            let stored_ids: Vec<u64> = appended.records.iter().map(|r| r.id).collect();
            prop_assert_eq!(&stored_ids, &ids, "{} record ids", name);
            let stored_published: Vec<(u64, u64)> = appended
                .published
                .iter()
                .map(|p| (p.id, p.record.id))
                .collect();
            prop_assert_eq!(&stored_published, &published, "{} publications", name);
            prop_assert_eq!(appended.next_due, model.next_due(), "{} next due", name);
            if offsets.is_empty() {
                // What `due` returned is what this append published.
                let published_records: Vec<u64> = published.iter().map(|&(_, id)| id).collect();
                prop_assert_eq!(&due, &published_records, "{} due then append", name);
            }
            now += advance;
        }

        for event in ["a", "b", "c"] {
            let flags: Vec<(u64, bool)> = storage
                .collection(event)
                .unwrap()
                .iter()
                .map(|record| (record.id, record.published))
                .collect();
            let expected: Vec<(u64, bool)> = (1..=model.records.len() as u64)
                .filter(|&id| model.records[id as usize - 1].0 == event)
                .map(|id| {
                    let timestamp = model.records[id as usize - 1].1;
                    (id, !model.pending.contains(&(timestamp, id)))
                })
                .collect();
            prop_assert_eq!(flags, expected, "{} collection of {}", name, event);
        }
        let replayed: Vec<(u64, u64)> = storage
            .publications_after(0, usize::MAX)
            .unwrap()
            .iter()
            .map(|p| (p.id, p.record.id))
            .collect();
        let expected: Vec<(u64, u64)> = model.publications.iter().map(|(&p, &r)| (p, r)).collect();
        prop_assert_eq!(replayed, expected, "{} publications after 0", name);

        // Each name's current version is its latest publication.
        let current: Vec<(u64, u64)> = storage
            .current()
            .unwrap()
            .iter()
            .map(|p| (p.id, p.record.id))
            .collect();
        let mut expected: Vec<(u64, u64)> = Vec::new();
        for event in ["a", "b", "c"] {
            let latest = model
                .publications
                .iter()
                .filter(|(_, &record)| model.records[record as usize - 1].0 == event)
                .map(|(&publication, &record)| (publication, record))
                .next_back();
            expected.extend(latest);
        }
        expected.sort_unstable();
        prop_assert_eq!(current, expected, "{} current versions", name);

        if let Some(shared) = storage.shared() {
            let state = shared.state().unwrap();
            prop_assert_eq!(
                state,
                LogState {
                    last_publication: model.publications.len() as u64,
                    next_due: model.next_due(),
                    pending: model.pending.len() as u64,
                },
                "{} shared state",
                name
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn storage_matches_model(steps in steps()) {
        check(&steps)?;
    }
}
