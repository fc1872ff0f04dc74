//! `Retry` over `CircuitBreaker` — the stack a `Policy` builds — allocates nothing per
//! successful call, budget on, in consecutive and count-window mode. (`Retry::call` clones
//! the inner breaker service for the call's retries; that clone used to allocate.)
//! One test per binary: the allocation counter is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rampart::breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Window};
use rampart::classify::IoErrors;
use rampart::RetryLayer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn calls<S: Service<u64, Response = u64>>(svc: &mut S, n: u64) -> u64
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut sum = 0;
    for i in 0..n {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        match pin!(svc.call(i)).poll(&mut cx) {
            Poll::Ready(Ok(v)) => sum += v,
            _ => panic!("the service answers at once"),
        }
    }
    sum
}

#[test]
fn retry_over_a_breaker_allocates_nothing_per_call() {
    let inner = service_fn(|x: u64| std::future::ready(Ok::<_, io::Error>(x)));
    let windowed = CircuitBreakerConfig::builder()
        .window(Some(Window::Count(50)))
        .build()
        .unwrap();
    let retry = RetryLayer::new(IoErrors).name(String::from("stack"));
    let mut consecutive = retry.layer(
        CircuitBreakerLayer::new(
            CircuitBreakerConfig::builder()
                .name(String::from("stack"))
                .build()
                .unwrap(),
        )
        .classifier(IoErrors)
        .layer(inner),
    );
    let mut windowed = retry.layer(
        CircuitBreakerLayer::new(windowed)
            .classifier(IoErrors)
            .layer(inner),
    );
    calls(&mut consecutive, 64);
    calls(&mut windowed, 64);
    // The counting allocator sees every thread of the test binary, the harness's included, so
    // a stray allocation elsewhere can land in one window; an allocation per call lands in
    // every window (thousands of them). The quietest of three windows must be empty.
    let mut sum = 0;
    let stats = (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            sum += calls(&mut consecutive, 10_000) + calls(&mut windowed, 10_000);
            region.change()
        })
        .min_by_key(|s| s.allocations + s.reallocations)
        .unwrap();
    assert!(sum > 0);
    assert_eq!(stats.allocations, 0, "{stats:?}");
    assert_eq!(stats.reallocations, 0, "{stats:?}");
}
