//! The core through the library API, with no async runtime: each test
//! drives futures with `block_on` on plain threads.
#![cfg(any(feature = "redb", feature = "sled"))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::{
    Appended, Broker, Config, NewEvent, Publication, Record, Storage, StorageError,
    SubscribeOptions, Subscription, Version,
};
use futures_lite::future::block_on;
use futures_lite::StreamExt;
use serde_json::json;

fn open(dir: &tempfile::TempDir, config: Config) -> Broker {
    block_on(Broker::open(config.with_data_dir(dir.path()))).expect("broker opens")
}

fn event(name: &str, data: serde_json::Value) -> NewEvent {
    NewEvent::new(name, &data).expect("valid event")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Subscribes and reads the `retry:` field that every stream starts with.
fn subscribe(broker: &Broker, options: SubscribeOptions) -> Subscription {
    let mut subscription = block_on(broker.subscribe(options)).expect("subscribed");
    let prelude = text(&block_on(subscription.next()).expect("a retry field"));
    assert_eq!(prelude, "retry: 3000\n\n");
    subscription
}

/// Reads chunks until `expected` bytes have arrived, then compares.
fn read_exactly(subscription: &mut Subscription, expected: &str) {
    let mut received = String::new();
    while received.len() < expected.len() {
        match block_on(subscription.next()) {
            Some(chunk) => received.push_str(&text(&chunk)),
            None => break,
        }
    }
    assert_eq!(received, expected);
}

#[test]
fn resume_replays_missed_publications() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    for (name, value) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
        block_on(broker.insert(event(name, json!(value)))).unwrap();
    }

    let mut resumed = subscribe(&broker, SubscribeOptions::default().after(1));
    assert!(!resumed.is_reset());
    read_exactly(
        &mut resumed,
        "id: 2\nevent: b\ndata: 2\n\nid: 3\nevent: a\ndata: 3\n\nid: 4\nevent: c\ndata: 4\n\n",
    );

    // Then live, with nothing repeated.
    block_on(broker.insert(event("d", json!(5)))).unwrap();
    read_exactly(&mut resumed, "id: 5\nevent: d\ndata: 5\n\n");
}

#[test]
fn resume_respects_filter() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    for (name, value) in [("a", 1), ("b", 2), ("a", 3)] {
        block_on(broker.insert(event(name, json!(value)))).unwrap();
    }

    let options = SubscribeOptions::default().after(0).events(["a"]);
    let mut resumed = subscribe(&broker, options);
    read_exactly(
        &mut resumed,
        "id: 1\nevent: a\ndata: 1\n\nid: 3\nevent: a\ndata: 3\n\n",
    );

    block_on(broker.insert(event("b", json!(4)))).unwrap();
    block_on(broker.insert(event("a", json!(5)))).unwrap();
    read_exactly(&mut resumed, "id: 5\nevent: a\ndata: 5\n\n");
}

#[test]
fn unknown_id_gets_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    block_on(broker.insert(event("a", json!(1)))).unwrap();

    let mut reset = subscribe(&broker, SubscribeOptions::default().after(99));
    assert!(reset.is_reset());
    read_exactly(&mut reset, "id: 1\nevent: a\ndata: 1\n\n");
}

#[test]
fn snapshot_has_current_versions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    block_on(broker.insert(event("a", json!(1)))).unwrap();
    block_on(broker.insert(event("b", json!(2)))).unwrap();
    block_on(broker.insert(event("a", json!(3)))).unwrap();

    let mut subscription = subscribe(&broker, SubscribeOptions::default());
    let snapshot = text(&block_on(subscription.next()).unwrap());
    assert_eq!(
        snapshot,
        "id: 2\nevent: b\ndata: 2\n\nid: 3\nevent: a\ndata: 3\n\n"
    );
}

#[test]
fn future_event_waits_for_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    let mut subscription = subscribe(&broker, SubscribeOptions::default());

    let due = now() + 1;
    let record = block_on(broker.insert(event("later", json!("x")).at(due).unwrap())).unwrap();
    assert!(!record.published, "a future version is pending when stored");

    let frame = block_on(subscription.next()).expect("the stream stays open");
    let published_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(text(&frame), "id: 1\nevent: later\ndata: \"x\"\n\n");
    assert!(
        published_at >= Duration::from_secs(due),
        "published at {published_at:?}, before its timestamp {due}"
    );
    assert!(
        published_at < Duration::from_secs(due) + Duration::from_millis(500),
        "published at {published_at:?}, late for {due}"
    );
}

#[test]
fn concurrent_inserts_get_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());

    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|thread_index| {
            let broker = broker.clone();
            thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let data = json!({"thread": thread_index, "i": i});
                        block_on(broker.insert(event("load", data))).unwrap().id
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut ids: Vec<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200, "every insert got its own id");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&200));
    assert!(started.elapsed() < Duration::from_secs(60));

    let collection = block_on(broker.collection("load")).unwrap();
    assert_eq!(collection.len(), 200);
}

#[test]
fn slow_subscriber_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default().with_queue_capacity(2));
    let mut slow = subscribe(&broker, SubscribeOptions::default());
    let mut fast = subscribe(&broker, SubscribeOptions::default());

    for i in 0..5 {
        block_on(broker.insert(event("tick", json!(i)))).unwrap();
        // The fast subscriber reads each message as it comes.
        let frame = text(&block_on(fast.next()).unwrap());
        assert!(frame.contains(&format!("data: {i}\n")), "{frame}");
    }

    // The slow one gets what was queued before it fell behind, then the end.
    let mut queued = String::new();
    while let Some(chunk) = block_on(slow.next()) {
        queued.push_str(&text(&chunk));
    }
    assert_eq!(
        queued,
        "id: 1\nevent: tick\ndata: 0\n\nid: 2\nevent: tick\ndata: 1\n\n"
    );
}

#[test]
fn close_ends_streams_and_rejects_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir, Config::default());
    let mut subscription = subscribe(&broker, SubscribeOptions::default());

    block_on(broker.close());

    assert!(block_on(subscription.next()).is_none(), "the stream ends");
    let error = block_on(broker.subscribe(Default::default())).unwrap_err();
    assert!(matches!(error, broker::Error::ShuttingDown), "{error}");
    block_on(broker.insert(event("after", json!(null)))).expect("inserts still work");
}

#[test]
fn reopen_publishes_overdue_events() {
    let dir = tempfile::tempdir().unwrap();
    let due = now() + 1;
    {
        let broker = open(&dir, Config::default());
        let pending = event("due", json!("soon")).at(due).unwrap();
        block_on(broker.insert(pending)).unwrap();
    }
    // Wait until the event is overdue while no broker runs, then reopen.
    while now() < due {
        thread::sleep(Duration::from_millis(50));
    }
    let broker = reopen_when_free(&dir);

    let mut subscription = subscribe(&broker, SubscribeOptions::default());
    let snapshot = text(&block_on(subscription.next()).unwrap());
    assert_eq!(snapshot, "id: 1\nevent: due\ndata: \"soon\"\n\n");
}

/// Reopens the data folder, retrying while the previous broker's core
/// thread still has the database open.
fn reopen_when_free(dir: &tempfile::TempDir) -> Broker {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match block_on(Broker::open(Config::default().with_data_dir(dir.path()))) {
            Ok(broker) => return broker,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(error) => panic!("reopen failed: {error}"),
        }
    }
}

/// A real backend whose appends fail while `failing` is set, as they do
/// while a disk is full.
struct FailingAppends {
    inner: Box<dyn Storage>,
    failing: Arc<AtomicBool>,
}

impl FailingAppends {
    fn open(dir: &tempfile::TempDir, failing: Arc<AtomicBool>) -> Self {
        #[cfg(feature = "redb")]
        let inner: Box<dyn Storage> =
            Box::new(broker::backends::redb::RedbStorage::open(dir.path()).unwrap());
        #[cfg(not(feature = "redb"))]
        let inner: Box<dyn Storage> =
            Box::new(broker::backends::sled::SledStorage::open(dir.path()).unwrap());
        Self { inner, failing }
    }
}

impl Storage for FailingAppends {
    fn append(&self, versions: &[Version], now: u64) -> Result<Appended, StorageError> {
        if self.failing.load(Ordering::Acquire) {
            return Err(StorageError::backend("append", "no space left on device"));
        }
        self.inner.append(versions, now)
    }

    fn current(&self) -> Result<Vec<Publication>, StorageError> {
        self.inner.current()
    }

    fn due(&self, now: u64) -> Result<Vec<Record>, StorageError> {
        self.inner.due(now)
    }

    fn publications_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Publication>, StorageError> {
        self.inner.publications_after(after, limit)
    }

    fn collection(&self, event: &str) -> Result<Vec<Record>, StorageError> {
        self.inner.collection(event)
    }
}

/// Clears `failing` after 5 s and then sets the returned flag, so that a
/// test waiting for a publication while appends fail ends even when the
/// broker waits for a successful append.
fn recover_later(failing: &Arc<AtomicBool>) -> Arc<AtomicBool> {
    let recovered = Arc::new(AtomicBool::new(false));
    let (failing, flag) = (failing.clone(), recovered.clone());
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(5));
        if failing.swap(false, Ordering::AcqRel) {
            flag.store(true, Ordering::Release);
        }
    });
    recovered
}

#[test]
fn due_event_sent_before_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let storage = FailingAppends::open(&dir, failing.clone());
    let config = Config::default().with_data_dir(dir.path());
    let broker = block_on(Broker::with_storage(config, storage)).unwrap();
    let mut live = subscribe(&broker, SubscribeOptions::default());

    let due = now() + 1;
    block_on(broker.insert(event("a", json!(1)).at(due).unwrap())).unwrap();
    failing.store(true, Ordering::Release);

    // The append that publishes it fails, but subscribers get it on time.
    let recovered = recover_later(&failing);
    let frame = block_on(live.next()).expect("the stream stays open");
    assert!(
        !recovered.load(Ordering::Acquire),
        "the due event was sent only after its append succeeded"
    );
    assert_eq!(text(&frame), "id: 1\nevent: a\ndata: 1\n\n");
    let sent = block_on(broker.collection("a")).unwrap();
    assert!(
        sent[0].published,
        "a record that clients received reads as published"
    );
    let insert = block_on(broker.insert(event("b", json!(2))));
    assert!(insert.is_err(), "inserts fail while appends fail");

    // A client that resumes from before the sent publication gets it from memory.
    let mut resumed = subscribe(&broker, SubscribeOptions::default().after(0));
    read_exactly(&mut resumed, "id: 1\nevent: a\ndata: 1\n\n");

    // After the retry, the sent publication is stored under the id it was
    // sent with, and inserts go on from there.
    failing.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        match block_on(broker.insert(event("b", json!(3)))) {
            Ok(record) => break record,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("storage did not recover: {error}"),
        }
    };
    assert!(record.published);
    let stored = block_on(broker.collection("a")).unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].published,
        "the sent record is stored as published"
    );
    let expected_next = "id: 2\nevent: b\ndata: 3\n\n";
    read_exactly(&mut live, expected_next);
    read_exactly(&mut resumed, expected_next);
    let mut replayed = subscribe(&broker, SubscribeOptions::default().after(0));
    read_exactly(
        &mut replayed,
        &format!("id: 1\nevent: a\ndata: 1\n\n{expected_next}"),
    );
}

#[test]
fn due_event_sent_then_crash_keeps_id() {
    let dir = tempfile::tempdir().unwrap();
    let due = now() + 1;
    {
        let failing = Arc::new(AtomicBool::new(false));
        let storage = FailingAppends::open(&dir, failing.clone());
        let config = Config::default().with_data_dir(dir.path());
        let broker = block_on(Broker::with_storage(config, storage)).unwrap();
        let mut live = subscribe(&broker, SubscribeOptions::default());
        block_on(broker.insert(event("a", json!(1)).at(due).unwrap())).unwrap();
        block_on(broker.insert(event("b", json!(2)).at(due).unwrap())).unwrap();

        // Sent, never stored as published: as if the process died first.
        failing.store(true, Ordering::Release);
        let recovered = recover_later(&failing);
        read_exactly(
            &mut live,
            "id: 1\nevent: a\ndata: 1\n\nid: 2\nevent: b\ndata: 2\n\n",
        );
        assert!(
            !recovered.load(Ordering::Acquire),
            "the due events were sent only after their append succeeded"
        );
    }

    // A past-due insert after the restart must not take their ids.
    let broker = reopen_when_free(&dir);
    let late = event("c", json!(3)).at(due - 1).unwrap();
    block_on(broker.insert(late)).unwrap();
    let mut replayed = subscribe(&broker, SubscribeOptions::default().after(0));
    read_exactly(
        &mut replayed,
        "id: 1\nevent: a\ndata: 1\n\nid: 2\nevent: b\ndata: 2\n\nid: 3\nevent: c\ndata: 3\n\n",
    );
}

/// Returns the value of the unlabelled sample `name` in the broker's
/// metrics, or `None` when it is missing.
fn metric(broker: &Broker, name: &str) -> Option<f64> {
    let text = broker.metrics().render();
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.parse().ok())
}

#[test]
fn pending_gauge_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(&dir, Config::default());
        let later = event("later", json!(1)).at(now() + 3600).unwrap();
        block_on(broker.insert(later)).unwrap();
        block_on(broker.insert(event("now", json!(2)))).unwrap();
        assert_eq!(metric(&broker, "broker_inserts_total"), Some(2.0));
        assert_eq!(metric(&broker, "broker_publications_total"), Some(1.0));
        assert_eq!(metric(&broker, "broker_pending_events"), Some(1.0));
    }
    let broker = reopen_when_free(&dir);
    assert_eq!(
        metric(&broker, "broker_pending_events"),
        Some(1.0),
        "the gauge should count the event still pending in storage"
    );
    assert_eq!(metric(&broker, "broker_inserts_total"), Some(0.0));
}
