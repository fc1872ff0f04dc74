//! One record per call through a `Policy`: true attempts and stop reasons in dead letters
//! (for errors and for failed responses), hints obeyed, and waiting on an open circuit
//! without spinning or spending the retry budget. Paused clock throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::breaker::{CircuitBreakerConfig, State};
use rampart::dlq::{DeadLetterRecord, DeadLetterStore, ListQuery, MemoryStore, RequestPart};
use rampart::{BudgetSettings, Outcome, Policy};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// (status, Retry-After seconds)
type Resp = (u16, Option<u64>);

fn classify(r: Result<&Resp, &io::Error>) -> Outcome {
    match r {
        Ok((200, _)) => Outcome::Success,
        Ok((429, after)) => Outcome::Throttled {
            retry_after: after.map(Duration::from_secs),
        },
        Ok(_) => Outcome::TRANSIENT,
        Err(e) => rampart::classify::io_error(e),
    }
}

fn extract(id: &u32) -> RequestPart {
    RequestPart {
        summary: format!("call {id}"),
        payload: serde_json::json!(id),
    }
}

async fn records(store: &MemoryStore) -> Vec<DeadLetterRecord> {
    store.list(ListQuery::newest(1000)).await.unwrap().records
}

/// An upstream that answers `answer` and counts calls, noting when each came.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU32>,
    at: Arc<Mutex<Vec<Instant>>>,
}

impl Upstream {
    fn service(
        &self,
        answer: Resp,
    ) -> impl tower::Service<u32, Response = Resp, Error = io::Error, Future = impl Send> + Clone
    {
        let me = self.clone();
        service_fn(move |_id: u32| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            me.at.lock().unwrap().push(Instant::now());
            async move { Ok::<Resp, io::Error>(answer) }
        })
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_response_is_dead_lettered_with_its_true_attempts() {
    let policy = Policy::preset("gemini_api")
        .unwrap()
        .breaker(None)
        .build()
        .unwrap();
    let store = MemoryStore::default();
    let up = Upstream::default();
    let svc = policy
        .layer(classify, store.clone(), extract)
        .layer(up.service((503, None)));
    // A 503 returned as `Ok`: handed back as it is, after every retry.
    assert_eq!(svc.oneshot(1).await.unwrap(), (503, None));
    assert_eq!(up.calls.load(Ordering::SeqCst), 6);
    let rs = records(&store).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].attempts, 6, "{}", rs[0].error);
    assert_eq!(rs[0].reason.as_str(), "retries_exhausted");
    assert_eq!(
        rs[0].error,
        "the response classified as transient; retries exhausted for gemini_api after 6 of 6 attempts reached it"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_stopped_by_the_open_circuit_says_none_reached_it() {
    let policy = Policy::preset("gemini_api")
        .unwrap()
        .deadline(Some(Duration::from_secs(600)))
        .build()
        .unwrap();
    let store = MemoryStore::default();
    let up = Upstream::default();
    let layer = policy.layer(classify, store.clone(), extract);
    let breaker = layer.breaker();
    let svc = layer.layer(up.service((503, None)));
    breaker.force_open();
    let r = svc.clone().oneshot(7).await;
    assert!(r.unwrap_err().circuit_open().is_some());
    assert_eq!(up.calls.load(Ordering::SeqCst), 0);
    let rs = records(&store).await;
    assert_eq!(rs.len(), 1);
    assert_eq!((rs[0].attempts, rs[0].reason.as_str()), (0, "circuit_open"));
    assert!(
        rs[0]
            .error
            .starts_with("circuit open for gemini_api; 0 of 1 attempts reached it"),
        "{}",
        rs[0].error
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waiting_on_the_circuit_never_spins_nor_spends_the_budget() {
    // Trip on the first failure; open 5 s; a deadline long enough to wait for it.
    let breaker = CircuitBreakerConfig::builder()
        .consecutive_failures(Some(1))
        .recovery_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let policy = Policy::preset("gemini_api")
        .unwrap()
        .breaker(Some(breaker))
        .deadline(Some(Duration::from_secs(120)))
        // One token: enough for one upstream retry, none for circuit waits.
        .budget(Some(BudgetSettings {
            ratio: 0.0,
            min_per_sec: 1,
            max_tokens: 1,
        }))
        .build()
        .unwrap();
    let store = MemoryStore::default();
    let up = Upstream::default();
    let ok_after = Arc::new(AtomicU32::new(0));
    let flip = ok_after.clone();
    let counter = up.clone();
    let layer = policy.layer(classify, store.clone(), extract);
    let handle = layer.breaker();
    let svc = layer.layer(service_fn(move |_id: u32| {
        let n = counter.calls.fetch_add(1, Ordering::SeqCst);
        counter.at.lock().unwrap().push(Instant::now());
        let ok = n >= flip.load(Ordering::SeqCst);
        async move { Ok::<Resp, io::Error>(if ok { (200, None) } else { (503, None) }) }
    }));
    ok_after.store(1, Ordering::SeqCst);
    let start = Instant::now();
    // 50 callers: the first fails and trips the circuit; the others wait for it.
    let mut tasks = Vec::new();
    for id in 0..50 {
        tasks.push(tokio::spawn(svc.clone().oneshot(id)));
    }
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Ok((200, _))) {
            ok += 1;
        }
    }
    assert_eq!(handle.state(), State::Closed);
    let at = up.at.lock().unwrap().clone();
    // Nothing reached the upstream while the circuit was open, and the waiters came back
    // spread out, not all at one instant.
    assert!(at
        .iter()
        .skip(1)
        .all(|t| t.duration_since(start) >= Duration::from_secs(5)));
    let mut distinct: Vec<_> = at.iter().skip(1).map(|t| t.duration_since(start)).collect();
    distinct.dedup();
    assert!(
        distinct.len() > 10,
        "waiters spread over the probe window: {distinct:?}"
    );
    // The budget (one token, refilled at 1/s) paid the first caller's upstream retry; it
    // could not have paid for 49 waits on the circuit as well: waiting spends none.
    assert_eq!(ok, 50, "every caller gets through once the circuit closes");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hint_beyond_max_delay_stops_as_throttled_instead_of_retrying_early() {
    let policy = Policy::preset("redis")
        .unwrap()
        .breaker(None)
        .build()
        .unwrap();
    assert_eq!(policy.backoff().max_delay(), Duration::from_secs(1));
    let store = MemoryStore::default();
    let up = Upstream::default();
    let svc = policy
        .layer(classify, store.clone(), extract)
        .layer(up.service((429, Some(30))));
    assert_eq!(svc.oneshot(3).await.unwrap(), (429, Some(30)));
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        1,
        "no retry before the 30 s hint"
    );
    let rs = records(&store).await;
    assert_eq!((rs[0].attempts, rs[0].reason.as_str()), (1, "throttled"));
    assert!(rs[0].error.starts_with("throttled by redis beyond the policy's limit (asked to wait 30s); 1 of 1 attempts reached it"), "{}", rs[0].error);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hint_within_max_delay_is_a_floor() {
    let policy = Policy::preset("gemini_api")
        .unwrap()
        .breaker(None)
        .build()
        .unwrap();
    let up = Upstream::default();
    let svc = policy
        .layer(classify, MemoryStore::default(), extract)
        .layer(up.service((429, Some(3))));
    let _ = svc.oneshot(4).await;
    let at = up.at.lock().unwrap().clone();
    assert_eq!(at.len(), 6);
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_secs(3),
            "retried {:?} after a 3 s hint",
            w[1] - w[0]
        );
    }
}

/// Counts the calls that reach the service a policy wraps (its attempts that reached it).
fn counting<S>(
    inner: S,
    count: Arc<AtomicU32>,
) -> impl tower::Service<u32, Response = Resp, Error = S::Error, Future = impl Send> + Clone
where
    S: tower::Service<u32, Response = Resp> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    service_fn(move |id: u32| {
        count.fetch_add(1, Ordering::SeqCst);
        inner.clone().oneshot(id)
    })
}

/// A policy without a breaker of its own calls a client that has one (a bare
/// `CircuitBreakerLayer`, opened by the first failure for 60 s). That breaker is the
/// client's: it writes nothing into the policy's record, so the dead letter counts the
/// policy's own attempts that reached the client — the ones the client's breaker refused
/// included — and gives the policy's own reason. It does not say "circuit open for
/// gemini_api": gemini_api has no breaker. (Before the record was scoped to the policy's
/// own layers, the client's refusals were counted as this policy's open circuit: "circuit
/// open for gemini_api; 1 of 6 attempts reached it".)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_inside_the_service_leaves_the_policys_record_its_own() {
    let policy = Policy::preset("gemini_api")
        .unwrap()
        .breaker(None)
        .build()
        .unwrap();
    let client_breaker = CircuitBreakerConfig::builder()
        .name("client")
        .consecutive_failures(Some(1))
        .window(None)
        .recovery_timeout(Duration::from_secs(60))
        .max_recovery_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let up = Upstream::default();
    let client = rampart::CircuitBreakerLayer::new(client_breaker)
        .classifier(classify)
        .layer(up.service((503, None)));
    let reached = Arc::new(AtomicU32::new(0));
    let store = MemoryStore::default();
    let svc = policy
        .layer(classify, store.clone(), extract)
        .layer(counting(client, reached.clone()));
    let err = svc.oneshot(9).await.unwrap_err();
    assert!(err.circuit_open().is_some(), "the client's refusal: {err}");
    let reached = reached.load(Ordering::SeqCst);
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        1,
        "the client's breaker opened"
    );
    assert_eq!(
        reached, 2,
        "the retry after 0.5 s met the client's open breaker"
    );
    let rs = records(&store).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].attempts, reached, "{}", rs[0].error);
    // The client asked to wait ~60 s, past gemini_api's 10 s max_delay: the policy's own
    // reason is that it was throttled beyond its limit.
    assert_eq!(rs[0].reason.as_str(), "throttled", "{}", rs[0].error);
    // (~59.5 s: 60 s less the jittered 0.5 s backoff.)
    assert!(
        rs[0]
            .error
            .starts_with("throttled by gemini_api beyond the policy's limit (asked to wait 59."),
        "{}",
        rs[0].error
    );
    assert!(
        rs[0].error.contains("; 2 of 2 attempts reached it (")
            && !rs[0].error.contains("circuit open for gemini_api"),
        "{}",
        rs[0].error
    );
}

/// A policy calls a client that retries on its own (a bare `RetryLayer`, 2 retries): the
/// client's attempts are the client's. The policy's dead letter counts the policy's two
/// attempts, not the six the upstream saw.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_layer_inside_the_service_leaves_the_policys_counts_its_own() {
    let policy = Policy::preset("redis")
        .unwrap()
        .max_retries(1)
        .build()
        .unwrap();
    let up = Upstream::default();
    let client = rampart::RetryLayer::new(classify)
        .backoff(
            rampart::Backoff::builder()
                .max_retries(2)
                .base_delay(Duration::from_millis(10))
                .build()
                .unwrap(),
        )
        .no_budget()
        .layer(up.service((503, None)));
    let reached = Arc::new(AtomicU32::new(0));
    let store = MemoryStore::default();
    let svc = policy
        .layer(classify, store.clone(), extract)
        .layer(counting(client, reached.clone()));
    assert_eq!(svc.oneshot(5).await.unwrap(), (503, None));
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    assert_eq!(up.calls.load(Ordering::SeqCst), 6);
    let rs = records(&store).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(
        (rs[0].attempts, rs[0].reason.as_str()),
        (2, "retries_exhausted"),
        "{}",
        rs[0].error
    );
    assert!(
        rs[0].error.ends_with("after 2 of 2 attempts reached it"),
        "{}",
        rs[0].error
    );
}
