//! Layers own their state: building and dropping 100,000 retry layers, breakers and
//! retry-over-breaker stacks (and 10,000 whole policy stacks), each with its own name and settings, and making a call through each, leaves
//! the heap where it was. (Names and retry settings used to be interned for the life of the
//! process, budgets registered in a global map, and breakers' counters and count windows
//! kept in process-lived pools: tens of megabytes here.)
//!
//! One test per binary: the allocation counter is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rampart::breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Window};
use rampart::classify::IoErrors;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::{Backoff, Policy, RetryBudget, RetryLayer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One successful call: the services under test answer at once.
fn call<S, Req>(svc: &mut S, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        Poll::Ready(Err(e)) => panic!("failed: {e:?}"),
        Poll::Pending => panic!("the services answer at once"),
    }
}

/// Builds, uses and drops one of each kind of layer, all distinct from every other round's.
fn round(i: u32) {
    let name = format!("tenant-{i}");
    let inner = service_fn(|x: u64| std::future::ready(Ok::<_, io::Error>(x)));

    // A retry layer with its own name, backoff, deadline and budget.
    let backoff = Backoff::builder()
        .max_retries(1 + i % 7)
        .base_delay(Duration::from_micros(1 + u64::from(i % 50_000_000)))
        .build()
        .unwrap();
    let budget = RetryBudget::builder()
        .max_tokens(1 + i % 100)
        .build()
        .unwrap();
    let retry = RetryLayer::new(IoErrors)
        .name(name.as_str())
        .backoff(backoff)
        .budget(budget);
    let mut svc = retry.layer(inner);
    let mut copy = svc.clone();
    assert_eq!(call(&mut svc, 1) + call(&mut copy, 2), 3);

    // A breaker with its own name and count window, a call through a clone, a snapshot.
    let cfg = CircuitBreakerConfig::builder()
        .window(Some(Window::Count(1 + i % 64)))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new(cfg.to_builder().name(name.clone()).build().unwrap())
        .classifier(IoErrors);
    let svc = breaker.layer(inner);
    let mut copy = svc.clone();
    assert_eq!(call(&mut copy, 3), 3);
    assert_eq!(breaker.handle().snapshot().calls_in_window, 1);

    // Retry over breaker, as a policy stacks them, and (every tenth round, to keep the test
    // quick in debug builds) a whole policy stack with its dead-letter store.
    let mut stacked = retry.layer(breaker.layer(inner));
    assert_eq!(call(&mut stacked, 4), 4);
    if !i.is_multiple_of(10) {
        return;
    }
    let policy = Policy::builder(name)
        .max_retries(i % 5)
        .deadline(Some(Duration::from_secs(1 + u64::from(i) % 10_000_000)))
        .build()
        .unwrap();
    let mut svc = policy
        .layer(IoErrors, MemoryStore::default(), JsonExtractor::default())
        .layer(inner);
    assert_eq!(call(&mut svc, 5), 5);
}

#[test]
fn a_hundred_thousand_distinct_layers_leave_the_heap_as_it_was() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // Warm up: whatever the libraries below us initialise once is initialised now.
    for i in 0..1_000 {
        round(u32::MAX - i);
    }
    let region = Region::new(GLOBAL);
    for i in 0..100_000 {
        round(i);
    }
    let stats = region.change();
    // (stats_alloc books a realloc's growth or shrinkage in these two as well.)
    let net = stats.bytes_allocated as i128 - stats.bytes_deallocated as i128;
    assert!(
        stats.allocations >= 100_000,
        "the rounds did allocate: {stats:?}"
    );
    assert_eq!(
        net, 0,
        "bytes still held after every layer was dropped: {stats:?}"
    );
    assert_eq!(stats.allocations, stats.deallocations, "{stats:?}");
}
