//! Where a record's request comes from: a copy the dead-letter layer makes before the call
//! (alone, or over any service), or the copy the retry layer below kept to the end of the
//! call (`FromInner`). Requests count their clones. Paused clock throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rampart_core::classify::IoErrors;
use rampart_dlq::{
    DeadLetterConfig, DeadLetterLayer, DeadLetterRecord, DeadLetterStore, ListQuery, MemoryStore,
    RequestPart,
};
use rampart_retry::RetryLayer;
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[path = "../../rampart-retry/tests/support/counted.rs"]
mod counted;
use counted::Counted;

fn extract(r: &Counted) -> RequestPart {
    RequestPart {
        summary: format!("call {}", r.id),
        payload: serde_json::json!(r.id),
    }
}

fn layer(
    store: &MemoryStore,
) -> DeadLetterLayer<MemoryStore, fn(&Counted) -> RequestPart, IoErrors> {
    let config = DeadLetterConfig::builder()
        .classifier(IoErrors)
        .build()
        .unwrap()
        .with_extractor(extract as fn(&Counted) -> RequestPart);
    DeadLetterLayer::new(config, store.clone())
}

#[path = "../../rampart-retry/tests/support/backoff.rs"]
mod backoff;
use backoff::backoff;

/// Fails odd ids with a connection reset (transient), answers even ones.
fn upstream() -> impl tower::Service<
    Counted,
    Response = u32,
    Error = io::Error,
    Future = impl std::future::Future<Output = Result<u32, io::Error>> + Send,
> + Clone {
    service_fn(|r: Counted| async move {
        if r.id % 2 == 1 {
            Err(io::Error::from(io::ErrorKind::ConnectionReset))
        } else {
            Ok(r.id)
        }
    })
}

async fn records(store: &MemoryStore) -> Vec<DeadLetterRecord> {
    store.list(ListQuery::newest(100)).await.unwrap().records
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_layer_alone_copies_each_request_and_records_it() {
    let store = MemoryStore::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(&store))
        .service(upstream());
    let req = |id| Counted {
        id,
        clones: clones.clone(),
    };
    assert_eq!(svc.clone().oneshot(req(2)).await.unwrap(), 2);
    let _ = svc.oneshot(req(3)).await.unwrap_err();
    // A copy per call, made before it: nothing below hands the request back.
    assert_eq!(clones.load(Ordering::SeqCst), 2);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].request.payload, serde_json::json!(3));
}

#[tokio::test(start_paused = true)]
async fn from_inner_takes_the_copy_a_retry_layer_kept_and_copies_nothing_itself() {
    let store = MemoryStore::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(&store).request_from_inner())
        .layer(
            RetryLayer::new(IoErrors)
                .backoff(backoff(2))
                .no_budget()
                .keep_request(true),
        )
        .service(upstream());
    let req = |id| Counted {
        id,
        clones: clones.clone(),
    };
    assert_eq!(svc.clone().oneshot(req(4)).await.unwrap(), 4);
    assert_eq!(
        clones.load(Ordering::SeqCst),
        1,
        "the retry layer's copy only"
    );
    let err = svc.oneshot(req(5)).await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(clones.load(Ordering::SeqCst), 1 + 3, "one per attempt");
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].attempts, 3);
    assert_eq!(all[0].request.payload, serde_json::json!(5));
}

#[tokio::test(start_paused = true)]
async fn from_inner_over_a_retry_that_does_not_keep_its_copy_records_no_request() {
    // Without `keep_request` the retry layer sends its copy as the last attempt: after the
    // retries ran out it holds nothing, and the record says nothing of the request (what
    // `FromInner` documents; `rampart::Policy` always pairs the two).
    let store = MemoryStore::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(&store).request_from_inner())
        .layer(RetryLayer::new(IoErrors).backoff(backoff(2)).no_budget())
        .service(upstream());
    let err = svc
        .oneshot(Counted {
            id: 7,
            clones: clones.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(
        clones.load(Ordering::SeqCst),
        2,
        "attempts − 1: the last is moved"
    );
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].request.payload, serde_json::Value::Null);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_layer_that_records_nothing_copies_nothing() {
    let store = MemoryStore::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let config = DeadLetterConfig::builder()
        .classifier(IoErrors)
        .record_nothing()
        .build()
        .unwrap()
        .with_extractor(extract as fn(&Counted) -> RequestPart);
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(config, store.clone()))
        .service(upstream());
    let _ = svc
        .oneshot(Counted {
            id: 1,
            clones: clones.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(clones.load(Ordering::SeqCst), 0);
    assert!(records(&store).await.is_empty());
}
