//! The retry layer's contract, on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod support;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::{CircuitOpen, Error, ErrorKind, Name, NotReplayable, Outcome};
use rampart_retry::observe::{AttemptEvent, FinishEvent, GiveUp, RetryEvent, RetryObserver};
use rampart_retry::{Retry, RetryBudget, RetryLayer};
use support::{classify, exact, Resp, Scripted, Step};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn layer() -> RetryLayer<fn(Result<&Resp, &io::Error>) -> Outcome> {
    RetryLayer::new(classify as fn(Result<&Resp, &io::Error>) -> Outcome).name("test")
}

#[tokio::test(start_paused = true)]
async fn fails_twice_then_succeeds_in_three_calls() {
    let svc = Scripted::new([
        Step::Io(io::ErrorKind::ConnectionReset),
        Step::Status(503),
        Step::Status(200),
    ]);
    let retry = layer().backoff(exact(3, 1000)).layer_ok(svc.clone());
    let start = Instant::now();
    let resp = retry.oneshot("req").await.expect("third call succeeds");
    assert_eq!(resp.status, 200);
    assert_eq!(svc.calls(), 3);
    // 1 s then 2 s of backoff, exactly (no jitter).
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_last_error_with_the_true_attempt_count() {
    let svc = Scripted::new([
        Step::Io(io::ErrorKind::ConnectionRefused),
        Step::Io(io::ErrorKind::TimedOut),
    ]);
    let retry = layer().backoff(exact(2, 10)).layer_ok(svc.clone());
    let err = retry.oneshot("req").await.expect_err("always fails");
    assert_eq!(svc.calls(), 3);
    assert_eq!(err.attempts(), 3);
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::TimedOut)
    );
    assert!(matches!(err.kind(), ErrorKind::Inner(_)));
    assert_eq!(err.to_string(), "inner service failed after 3 attempts");
    assert_eq!(
        err.elapsed(),
        Duration::from_millis(30),
        "10 ms + 20 ms of backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_and_rejected_failures_are_not_retried() {
    for (step, what) in [
        (
            Step::Io(io::ErrorKind::PermissionDenied),
            "permanent io error",
        ),
        (Step::Status(400), "rejected response"),
        (Step::Status(501), "permanent response"),
    ] {
        let svc = Scripted::new([step, Step::Status(200)]);
        let retry = layer().backoff(exact(3, 10)).layer_ok(svc.clone());
        let _ = retry.oneshot("req").await;
        assert_eq!(svc.calls(), 1, "{what} must not be retried");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_response_is_returned_when_retries_run_out() {
    let svc = Scripted::new([Step::Status(503)]);
    let retry = layer().backoff(exact(3, 10)).layer_ok(svc.clone());
    let resp = retry
        .oneshot("req")
        .await
        .expect("responses are handed back");
    assert_eq!(resp.status, 503);
    assert_eq!(svc.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff_and_a_hint_beyond_max_delay_stops() {
    let svc = Scripted::new([Step::Hinted(429, Duration::from_secs(7)), Step::Status(200)]);
    let retry = layer().backoff(exact(3, 100)).layer_ok(svc.clone());
    let start = Instant::now();
    retry.oneshot("req").await.expect("succeeds after the hint");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(7),
        "waited exactly the hint"
    );

    let svc = Scripted::new([
        Step::Hinted(503, Duration::from_secs(3600)),
        Step::Status(200),
    ]);
    let capped = rampart_core::Backoff::builder()
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(10))
        .jitter(rampart_core::Jitter::None)
        .build()
        .expect("valid");
    let retry = layer().backoff(capped).layer_ok(svc.clone());
    let start = Instant::now();
    // Never retry before the server allows it: a hint beyond max_delay stops the call at once
    // (the throttled reason) and hands the response back, rather than retrying early.
    let resp = retry
        .oneshot("req")
        .await
        .expect("the throttled response is handed back");
    assert_eq!(resp.status, 503);
    assert_eq!(svc.calls(), 1, "no retry before the hint");
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait either");
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_if_the_delay_would_cross_the_deadline() {
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset)]);
    // Delays 1 s, 2 s, 4 s; deadline 2.5 s: attempt 1 at 0 s, attempt 2 at 1 s, then 1 + 2 >= 2.5.
    let retry = layer()
        .backoff(exact(3, 1000))
        .deadline(Duration::from_millis(2500))
        .layer_ok(svc.clone());
    let start = Instant::now();
    let err = retry.oneshot("req").await.expect_err("deadline");
    assert_eq!(svc.calls(), 2);
    assert_eq!(err.attempts(), 2);
    assert!(err.is_deadline_exceeded(), "{err:?}");
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "gave up at once, without sleeping"
    );
    assert_eq!(err.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_in_flight() {
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset), Step::Hang]);
    let retry = layer()
        .backoff(exact(3, 1000))
        .deadline(Duration::from_secs(5))
        .layer_ok(svc.clone());
    let start = Instant::now();
    let err = retry.oneshot("req").await.expect_err("deadline");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(err.attempts(), 2);
    assert!(
        matches!(err.kind(), ErrorKind::DeadlineExceeded(None)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_retried_as_transient() {
    let svc = Scripted::new([Step::Hang, Step::Status(200)]);
    let retry = layer()
        .backoff(exact(3, 100))
        .attempt_timeout(Duration::from_secs(2))
        .layer_ok(svc.clone());
    let start = Instant::now();
    retry.oneshot("req").await.expect("second attempt answers");
    assert_eq!(svc.calls(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(2100));

    let svc = Scripted::new([Step::Hang]);
    let retry = layer()
        .backoff(exact(1, 100))
        .attempt_timeout(Duration::from_secs(1))
        .layer_ok(svc.clone());
    let err = retry.oneshot("req").await.expect_err("every attempt hangs");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.attempts(), 2);
    assert_eq!(
        err.to_string(),
        "attempt timed out after 1s after 2 attempts"
    );
}

/// A service that is a circuit breaker stand-in: open for the first `open_calls` calls.
fn breaker_stub(
    open_calls: u32,
    retry_in: Duration,
) -> (
    impl Service<&'static str, Response = u8, Error = Error<io::Error>, Future = impl Send> + Clone,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |_: &'static str| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < open_calls {
                Err(Error::from(CircuitOpen::new(Name::new("db"), retry_in)))
            } else {
                Ok(7u8)
            }
        }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_never_retried_without_a_deadline_that_fits() {
    let ok = |r: Result<&u8, &io::Error>| {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::TRANSIENT
        }
    };

    let (svc, calls) = breaker_stub(1, Duration::from_secs(2));
    let err = RetryLayer::new(ok)
        .backoff(exact(3, 10))
        .layer_ok(svc)
        .oneshot("q")
        .await
        .expect_err("open");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no deadline: fail fast");
    assert_eq!(
        err.circuit_open().map(|c| c.retry_in),
        Some(Duration::from_secs(2))
    );

    let (svc, calls) = breaker_stub(1, Duration::from_secs(2));
    let err = RetryLayer::new(ok)
        .backoff(exact(3, 10))
        .deadline(Duration::from_secs(1))
        .layer_ok(svc)
        .oneshot("q")
        .await
        .expect_err("retry_in does not fit");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(err.circuit_open().is_some());

    let (svc, calls) = breaker_stub(1, Duration::from_secs(2));
    let start = Instant::now();
    let v = RetryLayer::new(ok)
        .backoff(exact(3, 10))
        .deadline(Duration::from_secs(10))
        .layer_ok(svc)
        .oneshot("q")
        .await
        .expect("waits for the probe window");
    assert_eq!(v, 7);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // At least retry_in, spread with jitter over a quarter of it (never all at once).
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2500),
        "waited retry_in plus at most a quarter: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_sent_once_and_the_error_says_why() {
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset), Step::Status(200)]);
    let no_copy = |_: &&'static str| Err(NotReplayable::new("the body was a one-shot stream"));
    let retry = layer()
        .backoff(exact(3, 10))
        .replay(no_copy)
        .layer_ok(svc.clone());
    let err = retry.oneshot("req").await.expect_err("not replayable");
    assert_eq!(svc.calls(), 1);
    match err.kind() {
        ErrorKind::NotReplayable { reason, .. } => {
            assert_eq!(reason.reason(), "the body was a one-shot stream")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_is_polled_again_before_every_retry() {
    let (mock, mut handle) = tower_test::mock::pair::<&'static str, Resp>();
    let mock = mock.map_err(|e| io::Error::other(e.to_string()));
    handle.allow(1);
    let mut retry = layer().backoff(exact(3, 10)).no_budget().layer_ok(mock);
    std::future::poll_fn(|cx| retry.poll_ready(cx))
        .await
        .expect("ready");
    let mut fut = tokio_test::task::spawn(retry.call("hello"));
    tokio_test::assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.expect("first attempt");
    assert_eq!(req, "hello");
    send.send_response(Resp {
        status: 503,
        retry_after: None,
    });
    tokio_test::assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(10)).await;
    // The backoff is over, but the mock has no capacity: the retry must wait for readiness.
    tokio_test::assert_pending!(fut.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    tokio_test::assert_pending!(fut.poll());
    let (req, send) = handle
        .next_request()
        .await
        .expect("second attempt after readiness");
    assert_eq!(req, "hello");
    send.send_response(Resp {
        status: 200,
        retry_after: None,
    });
    let resp = tokio_test::assert_ready_ok!(fut.poll());
    assert_eq!(resp.status, 200);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_errors_pass_through_typed() {
    let (mock, mut handle) = tower_test::mock::pair::<&'static str, Resp>();
    let mut retry = RetryLayer::new(rampart_core::classify::TowerErrors).layer(mock);
    handle.send_error(io::Error::from(io::ErrorKind::BrokenPipe));
    let err = std::future::poll_fn(|cx| retry.poll_ready(cx))
        .await
        .expect_err("not ready");
    assert!(err.inner().is_some_and(|e| e.is::<io::Error>()));
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Duration>>>);

impl RetryObserver for Recorder {
    fn on_retry(&self, e: &RetryEvent) {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e.delay);
        self.push(format!(
            "retry {} after attempt {} ({}) in {:?}",
            e.service, e.attempt, e.outcome, e.delay
        ));
    }
    fn on_attempt(&self, e: &AttemptEvent) {
        self.push(format!("attempt {} {}", e.attempt, e.outcome));
    }
    fn on_finish(&self, e: &FinishEvent) {
        self.push(format!("finish {} {:?}", e.attempts, e.gave_up));
    }
}

impl Recorder {
    fn push(&self, s: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s);
    }
    fn delays(&self) -> Vec<Duration> {
        self.1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn observers_hear_retries_attempts_and_give_ups_but_nothing_on_first_success() {
    let rec = Recorder::default();
    let svc = Scripted::new([Step::Status(200)]);
    layer()
        .observer(rec.clone())
        .layer_ok(svc)
        .oneshot("a")
        .await
        .expect("ok");
    assert!(rec.take().is_empty());

    let svc = Scripted::new([Step::Status(503), Step::Status(200)]);
    layer()
        .backoff(exact(3, 10))
        .observer(rec.clone())
        .layer_ok(svc)
        .oneshot("a")
        .await
        .expect("ok");
    assert_eq!(
        rec.take(),
        [
            "retry test after attempt 1 (transient) in 10ms",
            "attempt 2 success",
            "finish 2 None"
        ]
    );

    let svc = Scripted::new([Step::Status(400)]);
    layer()
        .observer(rec.clone())
        .layer_ok(svc)
        .oneshot("a")
        .await
        .expect("a response");
    assert_eq!(rec.take(), ["finish 1 Some(NotRetryable)"]);

    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset)]);
    let _ = layer()
        .backoff(exact(1, 10))
        .observer(rec.clone())
        .layer_ok(svc)
        .oneshot("a")
        .await;
    assert_eq!(
        rec.take(),
        [
            "retry test after attempt 1 (transient) in 10ms",
            "attempt 2 transient",
            "finish 2 Some(Exhausted)"
        ]
    );
    assert_eq!(GiveUp::Exhausted.as_str(), "exhausted");
}

#[tokio::test(start_paused = true)]
async fn stacked_rampart_layers_do_not_nest_errors() {
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset)]);
    let inner = layer().backoff(exact(1, 10)).layer_ok(svc.clone());
    let outer = layer().backoff(exact(2, 10)).layer_ok(inner);
    let err: Error<io::Error> = outer.oneshot("req").await.expect_err("always fails");
    // The inner layer gave up with Inner(e) after 2 attempts; the outer retried it twice more.
    assert_eq!(svc.calls(), 6);
    assert_eq!(err.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_budget() {
    // One token to start with (one second of a 1/s floor), no deposits.
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_sec(1)
        .max_tokens(1)
        .build()
        .expect("valid");
    let svc = Scripted::new([Step::Status(503)]);
    let a = layer()
        .backoff(exact(3, 10))
        .budget(budget.clone())
        .layer_ok(svc.clone());
    let b = a.clone();
    assert_eq!(b.budget().map(RetryBudget::balance), Some(1.0));
    let resp = a.oneshot("x").await.expect("the last response is returned");
    assert_eq!(resp.status, 503);
    assert_eq!(svc.calls(), 2, "clone a spends the only token on one retry");
    let resp = b.oneshot("y").await.expect("the response is returned");
    assert_eq!(resp.status, 503);
    assert_eq!(svc.calls(), 3, "clone b finds the shared budget empty");

    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset)]);
    let c = layer()
        .backoff(exact(3, 10))
        .budget(budget.clone())
        .layer_ok(svc.clone());
    let err = c.oneshot("z").await.expect_err("budget exhausted");
    assert!(err.is_budget_exhausted(), "{err:?}");
    assert_eq!(err.to_string(), "retry budget exhausted");
    assert_eq!(
        err.inner().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
}

/// The delays of `calls` sequential failing calls through one service with a seeded backoff.
async fn seeded_delays(seed: u64, calls: usize) -> Vec<Duration> {
    let backoff = rampart_core::Backoff::builder()
        .max_retries(3)
        .base_delay(Duration::from_millis(100))
        .jitter(rampart_core::Jitter::Full)
        .seed(seed)
        .build()
        .expect("valid");
    let rec = Recorder::default();
    let svc = Scripted::new([Step::Status(503)]);
    let mut retry = layer()
        .backoff(backoff)
        .no_budget()
        .observer(rec.clone())
        .layer_ok(svc);
    for _ in 0..calls {
        let _ = ServiceExt::<&str>::ready(&mut retry)
            .await
            .expect("ready")
            .call("x")
            .await;
    }
    rec.delays()
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_makes_retry_timings_reproducible() {
    let a = seeded_delays(42, 4).await;
    let b = seeded_delays(42, 4).await;
    let c = seeded_delays(43, 4).await;
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "same seed, same calls: same delays");
    assert_ne!(a, c, "another seed: other delays");
    assert_ne!(
        a[0..3],
        a[3..6],
        "consecutive calls do not move in lock step"
    );
    assert!(a
        .iter()
        .enumerate()
        .all(|(i, d)| *d <= Duration::from_millis(100 << (i % 3))));
}

#[tokio::test(start_paused = true)]
async fn retry_new_uses_defaults() {
    let svc = Scripted::new([Step::Status(200)]);
    let r = Retry::new(svc, classify as fn(Result<&Resp, &io::Error>) -> Outcome);
    assert_eq!(r.name().as_str(), "default");
    assert!(r.budget().is_some());
    let resp = r.oneshot("x").await.expect("ok");
    assert_eq!(resp.status, 200);
}

/// `Layer::layer` without importing the trait at every call site.
trait LayerOk<S> {
    type Service;
    fn layer_ok(&self, s: S) -> Self::Service;
}

impl<S, L: tower::Layer<S>> LayerOk<S> for L {
    type Service = L::Service;
    fn layer_ok(&self, s: S) -> Self::Service {
        self.layer(s)
    }
}

use tower::Layer;

#[test]
fn the_response_future_stays_small() {
    // The hot part of the future is a handful of words plus the call's timer: tokio's `Sleep`
    // inline and pinned (about 110 bytes), so that a deadline or an attempt timeout costs no
    // allocation per call (it used to be boxed with the failure state: 88 bytes without
    // timers, one allocation per call with them). Failures and retries live in a part
    // allocated on first use. A regression here shows up as per-call memcpy.
    let s = tower::service_fn(|x: u64| std::future::ready(Ok::<_, io::Error>(x)));
    let mut r = RetryLayer::new(rampart_core::classify::IoErrors).layer(s);
    let f = r.call(1);
    assert!(
        std::mem::size_of_val(&f) <= 208,
        "future is {} bytes",
        std::mem::size_of_val(&f)
    );
}

/// Regression: a response future used to find its budget through a process-wide registry
/// of live budgets, so a call whose service (the budget's last handle) was dropped while it
/// ran — plain `oneshot` on a temporary stack — retried unbudgeted. The future now holds the
/// budget, which governs the call to its end.
#[tokio::test(start_paused = true)]
async fn in_flight_calls_of_a_dropped_service_stay_budgeted() {
    let budget = || {
        RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(0)
            .max_tokens(1)
            .build()
            .expect("valid")
    };
    // An empty budget, owned by nothing but the temporary stack: the retry is refused.
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset), Step::Status(200)]);
    let retry = layer()
        .backoff(exact(3, 10))
        .budget(budget())
        .layer_ok(svc.clone());
    let err = retry
        .oneshot("x")
        .await
        .expect_err("the budget refuses the retry");
    assert!(err.is_budget_exhausted(), "{err:?}");
    assert_eq!(svc.calls(), 1, "no unbudgeted retry");

    // The same, with the service and every other handle on the budget dropped before the
    // call is first polled: the future alone keeps the budget, and the budget still says no.
    let b = budget();
    let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset), Step::Status(200)]);
    let mut retry = layer()
        .backoff(exact(3, 10))
        .budget(b.clone())
        .layer_ok(svc.clone());
    let call = ServiceExt::<&str>::ready(&mut retry)
        .await
        .expect("ready")
        .call("y");
    drop((retry, b));
    let err = call.await.expect_err("still budgeted");
    assert!(err.is_budget_exhausted(), "{err:?}");
    assert_eq!(svc.calls(), 1);
}
