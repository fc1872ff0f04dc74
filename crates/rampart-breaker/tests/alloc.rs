//! A closed breaker's success path allocates nothing, in consecutive and count-window mode,
//! and neither does cloning a breaker service.
//! (One test per binary: the allocation counter is process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Window};
use rampart_core::classify::IoErrors;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Layer, Service};

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
        let fut = pin!(svc.call(i));
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(v)) => sum += v,
            _ => panic!("the service answers at once"),
        }
    }
    sum
}

#[test]
fn success_path_allocates_nothing() {
    let inner = tower::service_fn(|x: u64| std::future::ready(Ok::<_, std::io::Error>(x)));
    let window = CircuitBreakerConfig::builder()
        .consecutive_failures(Some(5))
        .window(Some(Window::Count(50)))
        .build()
        .unwrap();
    let mut consecutive = CircuitBreakerLayer::new(CircuitBreakerConfig::default())
        .classifier(IoErrors)
        .layer(inner);
    let mut windowed = CircuitBreakerLayer::new(window)
        .classifier(IoErrors)
        .layer(inner);
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
            // Clones share their service's link to the breaker (they used to allocate a new
            // one, which made `Retry` over a breaker allocate on every call).
            let mut clone = windowed.clone();
            sum += calls(&mut clone, 100);
            drop(clone);
            region.change()
        })
        .min_by_key(|s| s.allocations + s.reallocations)
        .unwrap();
    assert!(sum > 0);
    assert_eq!(stats.allocations, 0, "{stats:?}");
    assert_eq!(stats.reallocations, 0, "{stats:?}");
}
