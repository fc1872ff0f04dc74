//! The success path of `Retry` allocates nothing, budget on, for a `Clone` request type.
//! (One test per binary: the allocation counter is process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use rampart_core::classify::IoErrors;
use rampart_retry::RetryLayer;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Clone)]
struct Request {
    id: u64,
    payload: [u8; 32],
}

#[test]
fn success_path_allocates_nothing() {
    let inner = tower::service_fn(|r: Request| {
        std::future::ready(Ok::<_, std::io::Error>(r.id + u64::from(r.payload[0])))
    });
    let mut svc = RetryLayer::new(IoErrors).name("alloc").layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |svc: &mut _, id| {
        let svc: &mut rampart_retry::Retry<_, IoErrors> = svc;
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let fut = pin!(svc.call(Request {
            id,
            payload: [1; 32]
        }));
        match fut.poll(&mut cx) {
            Poll::Ready(Ok(v)) => v,
            other => panic!(
                "unexpected {:?}",
                other.map(|r| r.map_err(|e| e.to_string()))
            ),
        }
    };
    // Warm up: anything lazily initialised is initialised now.
    for id in 0..64 {
        call(&mut svc, id);
    }
    // The counting allocator sees every thread of the test binary, the harness's included, so
    // a stray allocation elsewhere can land in one window; an allocation per call lands in
    // every window (thousands of them). The quietest of three windows must be empty.
    let mut sum = 0;
    let stats = (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for id in 0..10_000 {
                sum += call(&mut svc, id);
            }
            region.change()
        })
        .min_by_key(|s| s.allocations + s.reallocations)
        .unwrap();
    assert!(sum > 0);
    assert_eq!(stats.allocations, 0, "{stats:?}");
    assert_eq!(stats.reallocations, 0, "{stats:?}");
}
