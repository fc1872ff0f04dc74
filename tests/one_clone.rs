//! One request copy per `Policy` call (issue 12): the retry layer copies the request once per
//! attempt it may still need it for and keeps that copy to the end of the call; the
//! dead-letter layer above copies nothing and takes the retry layer's copy for a call it
//! records (`rampart_dlq::FromInner`). Counted with a request type whose `Clone` counts, and
//! for `http::Request<Bytes>` with a counting extension (`Request::clone` clones every
//! extension). Paused clock throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart::classify::IoErrors;
use rampart::dlq::{DeadLetterRecord, DeadLetterStore, ListQuery, MemoryStore, RequestPart};
use rampart::{NotReplayable, Policy};
use tower::{service_fn, Layer, ServiceExt};

#[path = "../crates/rampart-retry/tests/support/counted.rs"]
mod counted;
use counted::Counted;

fn extract(r: &Counted) -> RequestPart {
    RequestPart {
        summary: format!("call {}", r.id),
        payload: serde_json::json!({ "id": r.id }),
    }
}

async fn records(store: &MemoryStore) -> Vec<DeadLetterRecord> {
    store.list(ListQuery::newest(100)).await.unwrap().records
}

/// Three attempts at most, short delays, no breaker to trip.
fn policy() -> rampart::PolicyBuilder {
    Policy::builder("one-clone")
        .max_retries(2)
        .base_delay(Duration::from_millis(10))
        .breaker(None)
}

/// Answers `Ok(id)`, or fails with `fail` for every id listed in `failing`.
fn upstream(
    fail: io::ErrorKind,
    failing: &'static [u32],
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Counted, Response = u32, Error = io::Error, Future = impl Send> + Clone {
    service_fn(move |r: Counted| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if failing.contains(&r.id) {
                Err(io::Error::from(fail))
            } else {
                Ok(r.id)
            }
        }
    })
}

/// The policy `builder` builds, recording into a new memory store, over `upstream(fail,
/// failing)`; with the store and the upstream's call count.
#[allow(clippy::type_complexity)]
fn stack(
    builder: rampart::PolicyBuilder,
    fail: io::ErrorKind,
    failing: &'static [u32],
) -> (
    impl tower::Service<
            Counted,
            Response = u32,
            Error = rampart::Error<io::Error>,
            Future = impl Send,
        > + Clone,
    MemoryStore,
    Arc<AtomicUsize>,
) {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = builder
        .build()
        .unwrap()
        .layer(IoErrors, store.clone(), extract)
        .layer(upstream(fail, failing, calls.clone()));
    (svc, store, calls)
}

fn request(id: u32, clones: &Arc<AtomicUsize>) -> Counted {
    Counted {
        id,
        clones: clones.clone(),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_successful_policy_call_clones_its_request_once() {
    let (svc, store, calls) = stack(policy(), io::ErrorKind::ConnectionReset, &[]);
    let clones = Arc::new(AtomicUsize::new(0));
    for id in 0..10 {
        assert_eq!(svc.clone().oneshot(request(id, &clones)).await.unwrap(), id);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(clones.load(Ordering::SeqCst), 10, "one clone per call");
    assert!(records(&store).await.is_empty());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_failing_after_three_attempts_is_cloned_once_per_attempt_and_recorded() {
    let (svc, store, calls) = stack(policy(), io::ErrorKind::ConnectionReset, &[7]);
    let clones = Arc::new(AtomicUsize::new(0));
    let err = svc.oneshot(request(7, &clones)).await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // One copy held for each attempt's successor and the record: attempts, not attempts + 1.
    assert_eq!(clones.load(Ordering::SeqCst), 3);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].attempts, 3);
    assert_eq!(all[0].request.summary, "call 7");
    assert_eq!(all[0].request.payload, serde_json::json!({ "id": 7 }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_permanent_failure_is_cloned_once_and_recorded() {
    let (svc, store, _) = stack(policy(), io::ErrorKind::PermissionDenied, &[3]);
    let clones = Arc::new(AtomicUsize::new(0));
    let err = svc.oneshot(request(3, &clones)).await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(clones.load(Ordering::SeqCst), 1);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].request.payload, serde_json::json!({ "id": 3 }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_retries_the_retry_layer_still_keeps_the_one_copy_for_the_record() {
    let (svc, store, _) = stack(policy().retry(false), io::ErrorKind::ConnectionReset, &[5]);
    let clones = Arc::new(AtomicUsize::new(0));
    assert_eq!(svc.clone().oneshot(request(1, &clones)).await.unwrap(), 1);
    assert_eq!(clones.load(Ordering::SeqCst), 1);
    let err = svc.oneshot(request(5, &clones)).await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(clones.load(Ordering::SeqCst), 2);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].request.payload, serde_json::json!({ "id": 5 }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_dead_letters_a_call_is_copied_only_for_its_retries() {
    let clones = Arc::new(AtomicUsize::new(0));
    for (retry, per_call) in [(true, 1), (false, 0)] {
        clones.store(0, Ordering::SeqCst);
        let builder = policy().retry(retry).dead_letter(None);
        let (svc, _, _) = stack(builder, io::ErrorKind::ConnectionReset, &[]);
        for id in 0..4 {
            assert_eq!(svc.clone().oneshot(request(id, &clones)).await.unwrap(), id);
        }
        assert_eq!(clones.load(Ordering::SeqCst), 4 * per_call, "retry {retry}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_replayer_of_the_policy_makes_the_one_copy_and_the_record_holds_it() {
    // A request that is not `Clone`, copied by a replayer that counts its copies.
    #[derive(Debug)]
    struct Job(u32);
    let copies = Arc::new(AtomicUsize::new(0));
    let counter = copies.clone();
    let store = MemoryStore::default();
    let svc = policy()
        .build()
        .unwrap()
        .layer(IoErrors, store.clone(), |j: &Job| RequestPart {
            summary: format!("job {}", j.0),
            payload: serde_json::json!(j.0),
        })
        .replay(move |j: &Job| -> Result<Job, NotReplayable> {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Job(j.0))
        })
        .layer(service_fn(|j: Job| async move {
            if j.0 == 9 {
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            } else {
                Ok(j.0)
            }
        }));
    assert_eq!(svc.clone().oneshot(Job(1)).await.unwrap(), 1);
    assert_eq!(copies.load(Ordering::SeqCst), 1);
    let _ = svc.oneshot(Job(9)).await.unwrap_err();
    assert_eq!(copies.load(Ordering::SeqCst), 1 + 3);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].request.payload, serde_json::json!(9));
}

#[cfg(feature = "http")]
mod http_requests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, Response};
    use rampart::dlq::HttpExtractor;

    /// Counts the clones of the request it is an extension of.
    #[derive(Debug)]
    struct CloneCounter(Arc<AtomicUsize>);

    impl Clone for CloneCounter {
        fn clone(&self) -> Self {
            self.0.fetch_add(1, Ordering::SeqCst);
            CloneCounter(self.0.clone())
        }
    }

    fn request(path: &str, clones: &Arc<AtomicUsize>) -> Request<Bytes> {
        let mut req = Request::post(format!("http://tts.local{path}?voice=Kore"))
            .header("content-type", "application/json")
            .header("x-request-id", "r-42")
            .body(Bytes::from_static(b"{\"text\":\"hello\"}"))
            .unwrap();
        req.extensions_mut().insert(CloneCounter(clones.clone()));
        req
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_http_request_is_cloned_once_per_call_and_recorded_exactly() {
        let store = MemoryStore::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let layer = policy().build().unwrap().http_layer(
            IoErrors,
            store.clone(),
            HttpExtractor::default()
                .keep_header("content-type")
                .keep_header("x-request-id"),
        );
        let svc = layer.layer(service_fn(move |req: Request<Bytes>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if req.uri().path() == "/down" {
                    Err(io::Error::from(io::ErrorKind::ConnectionReset))
                } else {
                    Ok(Response::new(req.into_body()))
                }
            }
        }));

        let clones = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let res = svc.clone().oneshot(request("/up", &clones)).await.unwrap();
            assert_eq!(res.body(), &Bytes::from_static(b"{\"text\":\"hello\"}"));
        }
        assert_eq!(
            clones.load(Ordering::SeqCst),
            5,
            "one clone per successful call"
        );
        assert!(records(&store).await.is_empty());

        clones.store(0, Ordering::SeqCst);
        let err = svc.oneshot(request("/down", &clones)).await.unwrap_err();
        assert_eq!(err.attempts(), 3);
        assert_eq!(
            clones.load(Ordering::SeqCst),
            3,
            "one per attempt, none for the record"
        );

        let all = records(&store).await;
        assert_eq!(all.len(), 1);
        let p = &all[0].request.payload;
        assert_eq!(p["method"], "POST");
        assert_eq!(p["uri"], "http://tts.local/down?voice=Kore");
        assert_eq!(p["headers"]["content-type"], "application/json");
        assert_eq!(p["headers"]["x-request-id"], "r-42");
        assert_eq!(p["body"], "{\"text\":\"hello\"}");
        assert_eq!(p["body_truncated"], false);
        assert!(all[0].kept_whole().is_ok());
    }
}

/// The service under the policy: a call clones it only when its first retry is due (from the
/// copy the retry layer keeps), never on a first-time success.
mod service_clones {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use rampart::RetryLayer;
    use tower::Service;

    /// `upstream` with a count of its clones.
    struct CountedService<S> {
        inner: S,
        clones: Arc<AtomicUsize>,
    }

    impl<S: Clone> Clone for CountedService<S> {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            CountedService {
                inner: self.inner.clone(),
                clones: self.clones.clone(),
            }
        }
    }

    impl<S: Service<Counted>> Service<Counted> for CountedService<S>
    where
        S::Future: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: Counted) -> Self::Future {
            Box::pin(self.inner.call(req))
        }
    }

    fn counted_upstream(
        calls: &Arc<AtomicUsize>,
        clones: &Arc<AtomicUsize>,
    ) -> CountedService<
        impl Service<Counted, Response = u32, Error = io::Error, Future = impl Send> + Clone,
    > {
        CountedService {
            inner: upstream(io::ErrorKind::ConnectionReset, &[7], calls.clone()),
            clones: clones.clone(),
        }
    }

    /// One call through `svc` (`ready`, then `call`), with a fresh counted request.
    async fn call<S>(svc: &mut S, id: u32) -> Result<u32, S::Error>
    where
        S: Service<Counted, Response = u32>,
        S::Error: std::fmt::Debug,
    {
        let requests = Arc::new(AtomicUsize::new(0));
        svc.ready()
            .await
            .unwrap()
            .call(request(id, &requests))
            .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_policy_call_clones_the_service_only_when_it_retries() {
        let store = MemoryStore::default();
        let (calls, clones) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut svc = policy()
            .breaker(Some(Default::default()))
            .build()
            .unwrap()
            .layer(IoErrors, store.clone(), extract)
            .layer(counted_upstream(&calls, &clones));
        let built = clones.load(Ordering::SeqCst);
        for id in [0, 2, 4, 6, 8] {
            let answer = call(&mut svc, id).await;
            assert_eq!(answer.unwrap(), id);
        }
        assert_eq!(
            clones.load(Ordering::SeqCst),
            built,
            "no clone for first-time successes"
        );

        let err = call(&mut svc, 7).await.unwrap_err();
        assert_eq!(err.attempts(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 5 + 3);
        assert_eq!(
            clones.load(Ordering::SeqCst),
            built + 1,
            "one handle for both retries of the failing call"
        );
        assert_eq!(records(&store).await.len(), 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_bare_retry_layer_clones_the_service_only_when_it_retries() {
        let (calls, clones) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut svc = RetryLayer::new(IoErrors)
            .no_budget()
            .layer(counted_upstream(&calls, &clones));
        let built = clones.load(Ordering::SeqCst);
        for id in [0, 2, 4] {
            let answer = call(&mut svc, id).await;
            assert_eq!(answer.unwrap(), id);
        }
        assert_eq!(clones.load(Ordering::SeqCst), built);
        let err = call(&mut svc, 7).await.unwrap_err();
        assert_eq!(err.attempts(), 4, "the default backoff: three retries");
        assert_eq!(clones.load(Ordering::SeqCst), built + 1);
    }

    /// A service that says which instance answered.
    #[derive(Clone)]
    struct Tagged {
        tag: u32,
        log: Arc<std::sync::Mutex<Vec<u32>>>,
    }

    impl Service<Counted> for Tagged {
        type Response = u32;
        type Error = io::Error;
        type Future = std::future::Ready<Result<u32, io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, r: Counted) -> Self::Future {
            self.log.lock().unwrap().push(self.tag);
            std::future::ready(if r.id == 7 {
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            } else {
                Ok(r.id)
            })
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn after_get_mut_the_retries_go_to_the_changed_service() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut svc = RetryLayer::new(IoErrors).no_budget().layer(Tagged {
            tag: 1,
            log: log.clone(),
        });
        call(&mut svc, 7).await.unwrap_err();
        assert_eq!(*log.lock().unwrap(), [1, 1, 1, 1]);
        log.lock().unwrap().clear();
        svc.get_mut().tag = 2;
        call(&mut svc, 7).await.unwrap_err();
        assert_eq!(
            *log.lock().unwrap(),
            [2, 2, 2, 2],
            "every attempt on the changed service"
        );
    }
}
