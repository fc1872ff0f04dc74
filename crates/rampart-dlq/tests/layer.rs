//! The dead-letter layer: recorded once, with the true attempt count, for the right reason;
//! secrets never stored; the caller's result unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_core::{
    classify::IoErrors, Backoff, CircuitOpen, Error, Jitter, Name, NotReplayable, Outcome,
};
use rampart_dlq::{
    redrive, DeadLetterLayer, DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery,
    MemoryStore, Page, Pushed, RecordId, StoreError, StoreStats,
};
use rampart_retry::{RetryBudget, RetryLayer};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

#[path = "../../rampart-retry/tests/support/backoff.rs"]
mod backoff;
use backoff::backoff;

async fn records(store: &MemoryStore) -> Vec<DeadLetterRecord> {
    store.list(ListQuery::newest(100)).await.unwrap().records
}

#[tokio::test(start_paused = true)]
async fn one_failing_call_is_one_record_with_its_true_attempts_and_success_is_none() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .classifier(IoErrors)
                .name("gemini_api")
                .max_attempts(3)
                .build()
                .unwrap(),
            store.clone(),
        ))
        .layer(RetryLayer::new(IoErrors).backoff(backoff(2)).no_budget())
        .service(service_fn(move |fail: bool| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "peer reset the connection",
                    ))
                } else {
                    Ok("ok")
                }
            }
        }));
    assert_eq!(svc.clone().oneshot(false).await.unwrap(), "ok");
    assert!(records(&store).await.is_empty(), "success writes nothing");

    let err = svc.clone().oneshot(true).await.unwrap_err();
    assert_eq!(err.attempts(), 3, "the caller's error is unchanged");
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let rs = records(&store).await;
    assert_eq!(
        rs.len(),
        1,
        "one dead letter per failed request, not one per attempt"
    );
    let r = &rs[0];
    assert_eq!(r.service, "gemini_api");
    assert_eq!(r.reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(r.classification, "transient");
    assert_eq!((r.attempts, r.max_attempts), (3, 3));
    assert_eq!(
        r.error,
        "inner service failed after 3 attempts: peer reset the connection"
    );
    assert_eq!(r.request.payload, serde_json::json!(true));
    assert!(r.first_attempt_at <= r.last_attempt_at);
    // Wall-clock times (tokio's paused clock does not move them): the call took no real time.
    assert!(
        r.last_attempt_at
            .0
            .duration_since(r.first_attempt_at.0)
            .unwrap_or_default()
            < Duration::from_secs(1)
    );
}

/// Runs one call through `layer` over `inner` and returns what was recorded.
async fn recorded<S>(inner: S, req: u64, enable_rejected: bool) -> Vec<DeadLetterRecord>
where
    S: tower::Service<u64, Response = u16, Error = Error<io::Error>> + Send + 'static,
    S::Future: Send + 'static,
{
    let store = MemoryStore::default();
    let classify = |r: Result<&u16, &io::Error>| match r {
        Ok(200) => Outcome::Success,
        Ok(400) => Outcome::Rejected,
        Ok(_) => Outcome::TRANSIENT,
        Err(e) => rampart_core::classify::io_error(e),
    };
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(classify)
            .record(DeadLetterReason::Rejected, enable_rejected)
            .build()
            .unwrap(),
        store.clone(),
    );
    let _ = layer.layer(inner).oneshot(req).await;
    records(&store).await
}

fn reason_of(rs: &[DeadLetterRecord]) -> Option<DeadLetterReason> {
    assert!(rs.len() <= 1, "{rs:?}");
    rs.first().map(|r| r.reason)
}

#[tokio::test(start_paused = true)]
async fn each_final_outcome_maps_to_its_reason() {
    let fail = |kind: io::ErrorKind| {
        service_fn(move |_: u64| async move { Err::<u16, _>(io::Error::from(kind)) })
    };
    let classify = |r: Result<&u16, &io::Error>| match r {
        Ok(200) => Outcome::Success,
        Ok(_) => Outcome::TRANSIENT,
        Err(e) => rampart_core::classify::io_error(e),
    };

    // permanent: the retry layer returns it at once
    let svc = RetryLayer::new(IoErrors)
        .backoff(backoff(3))
        .layer(fail(io::ErrorKind::PermissionDenied));
    let rs = recorded(svc.map_response(|_| 200u16), 1, false).await;
    assert_eq!(reason_of(&rs), Some(DeadLetterReason::Permanent));
    assert_eq!(rs[0].attempts, 1);

    // a transient response handed back after retries
    let svc = RetryLayer::new(classify)
        .backoff(backoff(2))
        .layer(service_fn(|_: u64| async { Ok::<u16, io::Error>(503) }));
    let rs = recorded(svc, 1, false).await;
    assert_eq!(reason_of(&rs), Some(DeadLetterReason::RetriesExhausted));

    // budget (kept alive here: `oneshot` drops the service, and a budget with no live
    // handle does not govern in-flight calls)
    let empty = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(0)
        .build()
        .unwrap();
    let svc = RetryLayer::new(IoErrors)
        .backoff(backoff(3))
        .budget(empty.clone())
        .layer(fail(io::ErrorKind::ConnectionReset));
    assert_eq!(
        reason_of(&recorded(svc, 1, false).await),
        Some(DeadLetterReason::BudgetExhausted)
    );
    drop(empty);

    // deadline
    let svc = RetryLayer::new(IoErrors)
        .backoff(
            Backoff::builder()
                .base_delay(Duration::from_secs(10))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .deadline(Duration::from_secs(1))
        .layer(fail(io::ErrorKind::TimedOut));
    assert_eq!(
        reason_of(&recorded(svc, 1, false).await),
        Some(DeadLetterReason::DeadlineExceeded)
    );

    // circuit open
    let open = service_fn(|_: u64| async {
        Err::<u16, Error<io::Error>>(
            CircuitOpen::new(Name::new("db"), Duration::from_secs(5)).into(),
        )
    });
    assert_eq!(
        reason_of(&recorded(open, 1, false).await),
        Some(DeadLetterReason::CircuitOpen)
    );

    // not replayable
    let svc = RetryLayer::new(IoErrors)
        .backoff(backoff(3))
        .replay(|_: &u64| Err(NotReplayable::new("one-shot body")))
        .layer(fail(io::ErrorKind::ConnectionReset));
    let rs = recorded(svc, 1, false).await;
    assert_eq!(reason_of(&rs), Some(DeadLetterReason::NotReplayable));
    assert!(rs[0].error.contains("one-shot body"), "{}", rs[0].error);

    // rejected: off by default, on when asked
    let bad = service_fn(|_: u64| async { Ok::<u16, Error<io::Error>>(400) });
    assert_eq!(reason_of(&recorded(bad, 1, false).await), None);
    let bad = service_fn(|_: u64| async { Ok::<u16, Error<io::Error>>(400) });
    assert_eq!(
        reason_of(&recorded(bad, 1, true).await),
        Some(DeadLetterReason::Rejected)
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_record_is_durable_before_the_caller_sees_the_error() {
    use rampart_dlq::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.sqlite");
    let store = SqliteStore::open(&path, 1000).unwrap();
    let svc = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .build()
            .unwrap(),
        store,
    )
    .layer(service_fn(|_: u64| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
    }));
    let _ = svc.oneshot(5).await.unwrap_err();
    // A second, independent handle on the file sees it already.
    let reader = SqliteStore::open_existing(&path).unwrap();
    let page = reader.list(ListQuery::newest(10)).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].request.payload, serde_json::json!(5));
}

/// A store that refuses every write.
#[derive(Clone, Default)]
struct Broken;

impl DeadLetterStore for Broken {
    fn kind(&self) -> &'static str {
        "broken"
    }
    async fn push(&self, _: DeadLetterRecord) -> Result<Pushed, StoreError> {
        Err(StoreError::Closed { store: "broken" })
    }
    async fn get(&self, _: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _: ListQuery) -> Result<Page, StoreError> {
        Ok(Page::default())
    }
    async fn delete(&self, _: RecordId) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn replace(&self, _: DeadLetterRecord) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn requeue(&self, _: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        Ok(None)
    }
    async fn take_requeued(&self, _: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn purge_older_than(&self, _: Duration) -> Result<usize, StoreError> {
        Ok(0)
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats::default())
    }
}

#[tokio::test]
async fn a_failed_store_write_is_counted_and_the_caller_still_gets_its_error() {
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .build()
            .unwrap(),
        Broken,
    );
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
    }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::PermissionDenied)
    );
    let stats = layer.stats();
    assert_eq!(stats.write_failures, 1);
    assert_eq!(stats.recorded, [(DeadLetterReason::Permanent, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_mode_queues_and_its_loss_window_is_the_queue() {
    // A store that holds writes until released, so the queue fills.
    #[derive(Clone)]
    struct Gate(MemoryStore, Arc<tokio::sync::Semaphore>);
    impl DeadLetterStore for Gate {
        fn kind(&self) -> &'static str {
            "gate"
        }
        async fn push(&self, r: DeadLetterRecord) -> Result<Pushed, StoreError> {
            let _p = self
                .1
                .acquire()
                .await
                .map_err(|_| StoreError::Closed { store: "gate" })?;
            self.0.push(r).await
        }
        async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
            self.0.list(q).await
        }
        async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
            self.0.delete(id).await
        }
        async fn replace(&self, r: DeadLetterRecord) -> Result<bool, StoreError> {
            self.0.replace(r).await
        }
        async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
            self.0.requeue(id).await
        }
        async fn take_requeued(&self, n: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
            self.0.take_requeued(n).await
        }
        async fn purge_older_than(&self, a: Duration) -> Result<usize, StoreError> {
            self.0.purge_older_than(a).await
        }
        async fn stats(&self) -> Result<StoreStats, StoreError> {
            self.0.stats().await
        }
    }
    let mem = MemoryStore::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let layer = DeadLetterLayer::new(
        rampart_dlq::DeadLetterConfig::builder()
            .classifier(IoErrors)
            .background(8)
            .build()
            .unwrap(),
        Gate(mem.clone(), gate.clone()),
    );
    let svc = layer.layer(service_fn(|_: u64| async {
        Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied))
    }));
    for i in 0..8 {
        // The caller gets its error without waiting for the store.
        let _ = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(i))
            .await
            .expect("not blocked by the store");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The writer holds one record (blocked in the store); the rest wait in the queue: that
    // is what a crash now would lose.
    let s = layer.stats();
    assert_eq!(s.queued, 7, "{s:?}");
    assert_eq!(mem.stats().await.unwrap().records, 0);
    gate.add_permits(100);
    for _ in 0..100 {
        if mem.stats().await.unwrap().records == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        mem.stats().await.unwrap().records,
        8,
        "nothing dropped once the store answers"
    );
    assert_eq!(layer.stats().queued, 0);
}

#[tokio::test]
async fn redrive_removes_what_succeeds_and_bumps_what_fails_again() {
    let store = MemoryStore::default();
    let mut ids = Vec::new();
    for n in 0..6u64 {
        let r = DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(
            rampart_dlq::RequestPart {
                summary: format!("order {n}"),
                payload: serde_json::json!(n),
            },
        );
        ids.push(r.id);
        store.push(r).await.unwrap();
    }
    let even_ok = service_fn(|n: u64| async move {
        if n.is_multiple_of(2) {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
        }
    });
    let report = redrive(
        &store,
        &ids,
        even_ok,
        |r| r.request.payload.as_u64(),
        Some(1000),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.redriven, report.failed_again, report.skipped),
        (3, 3, 0)
    );
    let left = records(&store).await;
    assert_eq!(left.len(), 3);
    assert!(left
        .iter()
        .all(|r| r.redrive_count == 1 && r.request.payload.as_u64().unwrap() % 2 == 1));
}

/// Config first: a dead-letter config is validated once, naming the field; the layer made
/// from it has no setters, and its counters and flush progress are shared by its clones and
/// every service made from any of them (nothing is silently dropped after a clone).
#[tokio::test]
async fn config_is_validated_and_the_layer_state_is_made_once() {
    use rampart_dlq::DeadLetterConfig;
    let err = DeadLetterConfig::builder()
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_attempts");
    let err = DeadLetterConfig::builder()
        .background(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "background");
    let too_big = rampart_dlq::config::MAX_BACKGROUND_CAPACITY + 1;
    let err = DeadLetterConfig::builder()
        .background(too_big)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "background");
    assert!(err.to_string().contains(&too_big.to_string()), "{err}");

    let store = MemoryStore::default();
    let config = DeadLetterConfig::builder()
        .name("orders")
        .classifier(IoErrors)
        .build()
        .unwrap();
    let layer = DeadLetterLayer::new(config.clone(), store.clone());
    let flush = layer.flush_handle();
    let clone = layer.clone();
    let fail = |_: u64| async { Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied)) };
    let _ = layer.layer(service_fn(fail)).oneshot(1).await;
    let _ = clone.layer(service_fn(fail)).oneshot(2).await;
    flush.flush().await;
    let counted = |l: &DeadLetterLayer<MemoryStore, rampart_dlq::JsonExtractor, IoErrors>| {
        l.stats().recorded.iter().map(|(_, n)| n).sum::<u64>()
    };
    assert_eq!(
        counted(&layer),
        2,
        "one set of counters for the layer and its clone"
    );
    assert_eq!(counted(&clone), 2);
    assert_eq!(store.stats().await.unwrap().records, 2);
    // A second layer from the same config is a second set of counters.
    let other = DeadLetterLayer::new(config, store);
    assert_eq!(counted(&other), 0);
}
