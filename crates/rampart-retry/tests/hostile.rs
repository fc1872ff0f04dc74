//! Absurd durations and server hints never panic the retry layer (issue 11, "Panics").
//!
//! Before the fix, a deadline or attempt timeout of about 1e19 s, or a circuit-open hint of
//! `Duration::MAX` (what a forced-open breaker reports), panicked in the response future with
//! "overflow when adding duration to instant".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rampart_core::{CircuitOpen, Error, Name, Outcome};
use rampart_retry::RetryLayer;
use support::{classify, exact, Resp, Scripted, Step};
use tower::{Layer, ServiceExt};

const HUGE: Duration = Duration::from_secs(10_000_000_000_000_000_000); // 1e19 s

type Classifier = fn(Result<&Resp, &io::Error>) -> Outcome;

fn layer() -> RetryLayer<Classifier> {
    RetryLayer::new(classify as Classifier).name("hostile")
}

#[tokio::test(start_paused = true)]
async fn a_deadline_of_1e19_seconds_does_not_panic() {
    for deadline in [HUGE, Duration::MAX] {
        let svc = Scripted::new([Step::Status(503), Step::Status(200)]);
        let retry = layer()
            .backoff(exact(3, 10))
            .deadline(deadline)
            .layer(svc.clone());
        let resp = retry
            .oneshot("x")
            .await
            .expect("retried within the deadline");
        assert_eq!(resp.status, 200);
        assert_eq!(svc.calls(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_of_1e19_seconds_does_not_panic() {
    for timeout in [HUGE, Duration::MAX] {
        let svc = Scripted::new([Step::Io(io::ErrorKind::ConnectionReset), Step::Status(200)]);
        let retry = layer()
            .backoff(exact(3, 10))
            .attempt_timeout(timeout)
            .deadline(HUGE)
            .layer(svc.clone());
        let resp = retry.oneshot("x").await.expect("second attempt succeeds");
        assert_eq!(resp.status, 200);
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_call_under_a_huge_deadline_ends_at_the_far_future() {
    let svc = Scripted::new([Step::Hang]);
    let retry = layer().deadline(Duration::MAX).layer(svc);
    let err = retry
        .oneshot("x")
        .await
        .expect_err("the deadline fires eventually");
    assert!(err.is_deadline_exceeded(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_call_under_a_huge_but_representable_attempt_timeout_ends() {
    // 7.2e18 s fits in an `Instant`, so it used to be armed as is: tokio's timer wheel then
    // turned once per ~2.2 virtual years to reach it, for ever (found by the property test
    // below after the layers were merged).
    let svc = Scripted::new([Step::Hang, Step::Hang]);
    let retry = layer()
        .backoff(
            rampart_core::Backoff::builder()
                .max_retries(1)
                .base_delay(Duration::ZERO)
                .build()
                .unwrap(),
        )
        .no_budget()
        .attempt_timeout(Duration::new(7_215_731_246_554_196_323, 906_617_669))
        .layer(svc.clone());
    let err = retry
        .oneshot("x")
        .await
        .expect_err("both attempts time out");
    assert_eq!(err.attempts(), 2, "{err}");
    assert_eq!(svc.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_breaker_under_a_deadline_does_not_panic() {
    // A forced-open breaker reports `retry_in = Duration::MAX`; with a deadline the retry
    // layer compared `now + retry_in` against it.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |_: &'static str| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            Err::<u8, _>(Error::<io::Error>::from(CircuitOpen::new(
                Name::new("db"),
                Duration::MAX,
            )))
        }
    });
    let ok = |r: Result<&u8, &io::Error>| {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::TRANSIENT
        }
    };
    let err = RetryLayer::new(ok)
        .backoff(exact(3, 10))
        .deadline(Duration::from_secs(5))
        .layer(svc)
        .oneshot("q")
        .await
        .expect_err("open");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the probe window is past the deadline"
    );
    assert_eq!(err.circuit_open().map(|c| c.retry_in), Some(Duration::MAX));
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..5_000).prop_map(Duration::from_millis),
        (0u64..=rampart_core::MAX_DURATION.as_secs()).prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(Duration::ZERO),
    ]
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Status(200)),
        Just(Step::Status(503)),
        Just(Step::Status(501)),
        Just(Step::Io(io::ErrorKind::ConnectionReset)),
        Just(Step::Hang),
        any_duration().prop_map(|d| Step::Hinted(429, d)),
        any_duration().prop_map(|d| Step::Hinted(503, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any deadline, attempt timeout, backoff and server hint: the backoff either fails to
    /// build (naming a field) or the call completes on the paused clock without panicking.
    #[test]
    fn arbitrary_durations_build_or_complete(
        deadline in proptest::option::of(any_duration()),
        timeout in proptest::option::of(any_duration()),
        base in any_duration(),
        max in any_duration(),
        retries in 0u32..4,
        steps in proptest::collection::vec(any_step(), 1..5),
    ) {
        let backoff = match rampart_core::Backoff::builder()
            .max_retries(retries)
            .base_delay(base)
            .max_delay(max)
            .build()
        {
            Ok(b) => b,
            Err(e) => {
                prop_assert!(["base_delay", "max_delay"].contains(&e.field()), "{}", e);
                return Ok(());
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        // A hanging call without any timer would hang the test, as it should.
        let timed = deadline.is_some() || timeout.is_some();
        let steps = steps
            .into_iter()
            .map(|s| if matches!(s, Step::Hang) && !timed { Step::Status(503) } else { s });
        let svc = Scripted::new(steps);
        let mut l = layer().backoff(backoff).no_budget().deadline_opt(deadline);
        if let Some(t) = timeout {
            l = l.attempt_timeout(t);
        }
        let retry = l.layer(svc.clone());
        let result = rt.block_on(retry.oneshot("x"));
        // Every call ends (the paused clock jumps to each timer) and made at least one
        // attempt, at most 1 + retries.
        prop_assert!(svc.calls() >= 1 && svc.calls() <= retries + 1, "calls {}", svc.calls());
        if let Ok(resp) = result {
            prop_assert!(resp.status == 200 || resp.status >= 400);
        }
    }
}
