//! A property test of every compiled-in storage backend against a model
//! of the [`Storage`] contract: random appends of versions with past, due
//! and future timestamps, at a clock that moves forward.
//!
//! Beyond ids and publication order, it checks the promise the core relies
//! on to send scheduled events before their write: [`Storage::due`] returns
//! exactly what the next append of no versions publishes.
#![cfg(any(feature = "redb", feature = "sled"))]

use std::collections::{BTreeMap, BTreeSet};

use broker::{Storage, Version};
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

fn backends(dir: &tempfile::TempDir) -> Vec<(&'static str, Box<dyn Storage>)> {
    let mut backends: Vec<(&'static str, Box<dyn Storage>)> = Vec::new();
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
    backends
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

            let due: Vec<u64> = storage.due(now).unwrap().iter().map(|r| r.id).collect();
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
