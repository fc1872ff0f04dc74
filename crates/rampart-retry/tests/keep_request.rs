//! `RetryLayer::keep_request` and the response future's `KeepsRequest`: the copy a call held
//! is handed to the layer above once the call has ended, never while it runs, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

use rampart_core::classify::IoErrors;
use rampart_core::replay::KeepsRequest;
use rampart_core::{Backoff, NotReplayable};
use rampart_retry::{Replay, RetryLayer};
use tower::{service_fn, Layer, Service, ServiceExt};

#[path = "support/counted.rs"]
mod counted;
use counted::Counted;

#[path = "support/backoff.rs"]
mod backoff;
use backoff::backoff;

/// Id 0 never answers; odd ids fail with a connection reset; even ids answer.
fn upstream() -> impl Service<
    Counted,
    Response = u32,
    Error = io::Error,
    Future = impl Future<Output = Result<u32, io::Error>> + Send,
> + Clone {
    service_fn(|r: Counted| async move {
        if r.id == 0 {
            std::future::pending::<()>().await;
        }
        if r.id % 2 == 1 {
            Err(io::Error::from(io::ErrorKind::ConnectionReset))
        } else {
            Ok(r.id)
        }
    })
}

fn counted(id: u32, clones: &Arc<AtomicUsize>) -> Counted {
    Counted {
        id,
        clones: clones.clone(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_copy_is_handed_back_once_after_the_call_and_never_during_it() {
    let clones = Arc::new(AtomicUsize::new(0));
    let mut svc = RetryLayer::new(IoErrors)
        .backoff(backoff(2))
        .no_budget()
        .keep_request(true)
        .layer(upstream());

    // In progress: the copy is the next attempt's, not the caller's.
    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(counted(0, &clones)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(fut.as_mut().take_request().is_none());

    // Ended: the copy, once.
    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(counted(2, &clones)));
    assert_eq!(fut.as_mut().await.unwrap(), 2);
    let kept = fut.as_mut().take_request().unwrap();
    assert_eq!(kept.id, 2);
    assert!(fut.as_mut().take_request().is_none());
    assert_eq!(clones.load(Ordering::SeqCst), 2, "one copy per call");
}

#[tokio::test(start_paused = true)]
async fn with_keep_request_the_last_attempt_is_a_copy_and_the_call_keeps_one() {
    for (keep, clones_made, kept) in [(true, 3, true), (false, 2, false)] {
        let clones = Arc::new(AtomicUsize::new(0));
        let mut svc = RetryLayer::new(IoErrors)
            .backoff(backoff(2))
            .no_budget()
            .keep_request(keep)
            .layer(upstream());
        svc.ready().await.unwrap();
        let mut fut = pin!(svc.call(counted(1, &clones)));
        let err = fut.as_mut().await.unwrap_err();
        assert_eq!(err.attempts(), 3);
        assert_eq!(clones.load(Ordering::SeqCst), clones_made, "keep {keep}");
        assert_eq!(fut.as_mut().take_request().is_some(), kept, "keep {keep}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_no_retries_the_call_keeps_a_copy_only_when_asked() {
    for keep in [true, false] {
        let clones = Arc::new(AtomicUsize::new(0));
        let mut svc = RetryLayer::new(IoErrors)
            .backoff(Backoff::none())
            .keep_request(keep)
            .layer(upstream());
        svc.ready().await.unwrap();
        let mut fut = pin!(svc.call(counted(3, &clones)));
        assert_eq!(fut.as_mut().await.unwrap_err().attempts(), 1);
        assert_eq!(clones.load(Ordering::SeqCst), usize::from(keep));
        assert_eq!(fut.as_mut().take_request().map(|r| r.id), keep.then_some(3));
    }
}

/// Cannot replay a request; keeps its id with the body cut.
#[derive(Clone)]
struct OneShot;

#[derive(Debug, PartialEq)]
struct Upload {
    id: u32,
    body: Option<Vec<u8>>,
}

impl Replay<Upload> for OneShot {
    fn replay(&self, _: &Upload) -> Result<Upload, NotReplayable> {
        Err(NotReplayable::new("the body streams"))
    }

    fn keep(&self, req: &Upload) -> Option<Upload> {
        Some(Upload {
            id: req.id,
            body: None,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_sent_once_and_its_partial_copy_kept() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = RetryLayer::new(IoErrors)
        .backoff(backoff(3))
        .no_budget()
        .replay(OneShot)
        .keep_request(true)
        .layer(service_fn(move |u: Upload| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(
                    u.body.as_deref(),
                    Some(&b"stream"[..]),
                    "the original is sent"
                );
                Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        }));
    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(Upload {
        id: 9,
        body: Some(b"stream".to_vec()),
    }));
    let err = fut.as_mut().await.unwrap_err();
    assert!(
        matches!(err.kind(), rampart_core::ErrorKind::NotReplayable { .. }),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        fut.as_mut().take_request(),
        Some(Upload { id: 9, body: None })
    );
}
