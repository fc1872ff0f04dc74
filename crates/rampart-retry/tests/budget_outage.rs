//! Under a total outage the retry budget keeps attempts per call near 1 + ratio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod support;

use std::io;
use std::time::Duration;

use rampart_retry::{RetryBudget, RetryLayer};
use support::{exact, Scripted, Step};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

const CALLS: u32 = 1_000;

#[tokio::test(start_paused = true)]
async fn a_thousand_calls_against_a_dead_service_stay_within_the_bound() {
    let ratio = 0.1;
    let min_per_sec = 10;
    let budget = RetryBudget::builder()
        .ratio(ratio)
        .min_per_sec(min_per_sec)
        .max_tokens(100)
        .build()
        .expect("valid budget");
    let dead = Scripted::new([Step::Io(io::ErrorKind::ConnectionRefused)]);
    let mut svc = RetryLayer::new(rampart_core::classify::IoErrors)
        .name("dead")
        .backoff(exact(3, 1))
        .budget(budget.clone())
        .layer(dead.clone());
    let start = Instant::now();
    let mut budget_stops = 0;
    for _ in 0..CALLS {
        let err = ServiceExt::<()>::ready(&mut svc)
            .await
            .expect("ready")
            .call(())
            .await
            .expect_err("the service is down");
        if err.is_budget_exhausted() {
            budget_stops += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let attempts = dead.calls();
    let retries = f64::from(attempts - CALLS);

    // The guarantee (see `rampart_retry::budget`): retries <= initial + ratio * N + floor * T,
    // where the initial balance is one second of the floor.
    let bound = f64::from(min_per_sec) + ratio * f64::from(CALLS) + f64::from(min_per_sec) * secs;
    assert!(
        retries <= bound,
        "{retries} retries exceed the bound {bound} (T = {secs} s)"
    );
    let per_call = f64::from(attempts) / f64::from(CALLS);
    eprintln!("{attempts} attempts for {CALLS} calls ({per_call:.3}/call), {retries} retries, bound {bound:.1}, T = {secs:.3} s");
    assert!(per_call <= 1.13, "{per_call} attempts per call");
    // And the budget does allow what it promises: every request's deposit arrives at once.
    let floor = ratio * f64::from(CALLS);
    assert!(
        retries >= floor,
        "only {retries} retries; the budget promised about {floor}"
    );
    assert!(
        budget_stops > 800,
        "{budget_stops} calls stopped by the budget"
    );
    // Without a budget the same outage costs max_retries + 1 = 4 attempts per call.
    assert!(attempts < 4 * CALLS / 3);
    assert!(secs < 1.0, "the run took {secs} s of (paused) time");
    let _ = Duration::ZERO;
}

#[tokio::test(start_paused = true)]
async fn without_a_budget_every_call_makes_every_attempt() {
    let dead = Scripted::new([Step::Io(io::ErrorKind::ConnectionRefused)]);
    let mut svc = RetryLayer::new(rampart_core::classify::IoErrors)
        .backoff(exact(3, 1))
        .no_budget()
        .layer(dead.clone());
    for _ in 0..100 {
        let err = ServiceExt::<()>::ready(&mut svc)
            .await
            .expect("ready")
            .call(())
            .await
            .expect_err("down");
        assert_eq!(err.attempts(), 4);
    }
    assert_eq!(dead.calls(), 400);
}

use tower::Layer;
