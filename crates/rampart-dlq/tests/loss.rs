//! Records that used to be lost: a background queue dropped with its layer (issue 10, item 7)
//! and a journaled record stranded by `Fallback::requeue` (item 8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_core::classify::IoErrors;
use rampart_dlq::{
    DeadLetterEvent, DeadLetterLayer, DeadLetterReason, DeadLetterRecord, DeadLetterStore,
    Fallback, ListQuery, MemoryStore, Page, Pushed, RecordId, StoreError, StoreStats,
};
use tower::{service_fn, Layer, ServiceExt};

/// A memory store that takes `delay` per push, and fails every call while `down` is set.
#[derive(Clone)]
struct Slow {
    mem: MemoryStore,
    delay: Duration,
    down: Arc<AtomicBool>,
}

impl Slow {
    fn new(delay: Duration) -> Self {
        Slow {
            mem: MemoryStore::new(100_000),
            delay,
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Closed { store: "slow" })
        } else {
            Ok(())
        }
    }
}

impl DeadLetterStore for Slow {
    fn kind(&self) -> &'static str {
        "slow"
    }
    async fn push(&self, r: DeadLetterRecord) -> Result<Pushed, StoreError> {
        tokio::time::sleep(self.delay).await;
        self.check()?;
        self.mem.push(r).await
    }
    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        self.check()?;
        self.mem.get(id).await
    }
    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.check()?;
        self.mem.list(q).await
    }
    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        self.check()?;
        self.mem.delete(id).await
    }
    async fn replace(&self, r: DeadLetterRecord) -> Result<bool, StoreError> {
        self.check()?;
        self.mem.replace(r).await
    }
    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        self.check()?;
        self.mem.requeue(id).await
    }
    async fn take_requeued(&self, n: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        self.check()?;
        self.mem.take_requeued(n).await
    }
    async fn purge_older_than(&self, a: Duration) -> Result<usize, StoreError> {
        self.check()?;
        self.mem.purge_older_than(a).await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.check()?;
        self.mem.stats().await
    }
}

// ===== item 7: the background queue outlives the layer =====

#[tokio::test(start_paused = true)]
async fn background_queue_is_written_out_after_the_layer_and_services_are_dropped() {
    let store = Slow::new(Duration::from_millis(5));
    let failures = Arc::new(AtomicU64::new(0));
    let f = failures.clone();
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .background(2_000)
            .observe(move |e| {
                if matches!(e, DeadLetterEvent::WriteFailed { .. }) {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap(),
        store.clone(),
    );
    let flush = layer.flush_handle();
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
    }));
    for i in 0..2_000u64 {
        let _ = svc.clone().oneshot(i).await;
    }
    let queued = layer.stats();
    assert!(
        queued.queued >= 1_990,
        "the calls returned before the slow store wrote their records: {queued:?}"
    );
    assert!(flush.pending() >= 1_990);
    // Drop every layer and service: the writer keeps the queue and writes all of it.
    drop(svc);
    drop(layer);
    // 2,000 × 5 ms of (paused) store time; an hour means the writer stopped.
    tokio::time::timeout(Duration::from_secs(3_600), flush.flush())
        .await
        .expect("the writer writes out the whole queue");
    assert_eq!(flush.pending(), 0);
    let stats = store.mem.stats().await.unwrap();
    assert_eq!(stats.records, 2_000, "every queued record is stored");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no write failed");
}

#[tokio::test(start_paused = true)]
async fn flush_on_a_live_layer_waits_for_the_queue_and_counts_refused_records() {
    let store = Slow::new(Duration::from_millis(2));
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .background(64)
            .build()
            .unwrap(),
        store.clone(),
    );
    // Nothing queued yet: flush returns at once.
    layer.flush().await;
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
    }));
    for i in 0..50u64 {
        let _ = svc.clone().oneshot(i).await;
    }
    layer.flush().await;
    assert_eq!(store.mem.stats().await.unwrap().records, 50);
    assert_eq!(layer.stats().queued, 0);

    // A store that refuses: flush still ends, and the refusals are counted, not hidden.
    store.down.store(true, Ordering::SeqCst);
    for i in 0..10u64 {
        let _ = svc.clone().oneshot(i).await;
    }
    layer.flush().await;
    assert_eq!(layer.stats().write_failures, 10);
}

// ===== item 8: a requeued journaled record is not stranded =====

fn record(n: u64) -> DeadLetterRecord {
    DeadLetterRecord::new("svc", DeadLetterReason::RetriesExhausted).error(format!("failure {n}"))
}

async fn listed(store: &impl DeadLetterStore) -> Vec<RecordId> {
    store
        .list(ListQuery::newest(100))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test]
async fn requeue_of_a_journaled_record_behaves_as_in_the_primary() {
    let primary = Slow::new(Duration::ZERO);
    let journal = MemoryStore::new(100);
    let store =
        Fallback::with_interval(primary.clone(), journal.clone(), Duration::from_secs(3600));

    let in_primary = record(1);
    assert_eq!(
        store.push(in_primary.clone()).await.unwrap(),
        Pushed::Stored
    );
    // Two records still waiting in the journal, as after an outage of the primary (put there
    // directly, so that no drainer races the test).
    let journaled = record(2);
    journal.push(journaled.clone()).await.unwrap();
    let other = record(3);
    journal.push(other.clone()).await.unwrap();

    let before = store.stats().await.unwrap();
    assert_eq!((before.records, before.requeued), (3, 0));

    // Requeue the journaled record (the primary is up but does not have it).
    let moved = store.requeue(journaled.id).await.unwrap().unwrap();
    assert_eq!(moved.id, journaled.id);
    assert_eq!(store.get(journaled.id).await.unwrap(), None, "get");
    assert!(!listed(&store).await.contains(&journaled.id), "list");
    let s = store.stats().await.unwrap();
    assert_eq!((s.records, s.requeued), (2, 1), "stats");
    assert!(store.requeue(journaled.id).await.unwrap().is_none());

    // Requeue the primary's record too: take_requeued drains both queues, each record once.
    store.requeue(in_primary.id).await.unwrap().unwrap();
    assert_eq!(store.stats().await.unwrap().requeued, 2);
    let first = store.take_requeued(1).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        [in_primary.id]
    );
    let second = store.take_requeued(10).await.unwrap();
    assert_eq!(
        second.iter().map(|r| r.id).collect::<Vec<_>>(),
        [journaled.id]
    );
    assert!(store.take_requeued(10).await.unwrap().is_empty());
    let s = store.stats().await.unwrap();
    assert_eq!((s.records, s.requeued), (1, 0));

    // Draining the journal moves the remaining record, never the taken one.
    assert_eq!(store.drain_once().await.unwrap(), 1);
    assert_eq!(listed(&primary).await, [other.id]);
    assert_eq!(listed(&store).await, [other.id]);
}

#[tokio::test]
async fn requeue_and_take_of_a_journaled_record_work_while_the_primary_is_down() {
    let primary = Slow::new(Duration::ZERO);
    let journal = MemoryStore::new(100);
    let store =
        Fallback::with_interval(primary.clone(), journal.clone(), Duration::from_secs(3600));
    primary.down.store(true, Ordering::SeqCst);
    let r = record(7);
    assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Journaled);

    let moved = store.requeue(r.id).await.unwrap().unwrap();
    assert_eq!(moved.id, r.id);
    assert_eq!(store.get(r.id).await.unwrap(), None);
    let taken = store.take_requeued(10).await.unwrap();
    assert_eq!(taken.iter().map(|x| x.id).collect::<Vec<_>>(), [r.id]);
    // Nothing left anywhere, and an unknown id is the primary's error while it is down.
    assert!(store.take_requeued(10).await.is_err());
    assert!(store.requeue(RecordId::new()).await.is_err());
    primary.down.store(false, Ordering::SeqCst);
    assert!(store.requeue(RecordId::new()).await.unwrap().is_none());
    assert_eq!(journal.stats().await.unwrap().requeued, 0);
}
