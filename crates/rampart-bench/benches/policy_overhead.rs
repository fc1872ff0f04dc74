//! The stack users run: a full `Policy` (memory dead-letter store, retry + budget,
//! count-window breaker, attempt timeout) beside a bare call, an `Arc<AtomicU32>` floor, a
//! hand-built tower stack (`tower::retry` + `TpsBudget` + `tower::timeout`), tower-resilience's
//! breaker alone and its retry∘breaker. Every case is driven two ways — polled in place
//! (`poll_ready`, `call`, poll once) and from an async fn on a current-thread runtime
//! (`ready().await` + `call` + `.await`) — reports its allocations per successful call
//! (counting allocator) and runs on one and two threads (each thread a clone of one
//! service, sharing its layer's state).
//!
//! tower-resilience's retry needs a `Clone` error, so its retry∘breaker case wraps a bare
//! service failing with a small `Clone` error type instead of `io::Error`.
//!
//! Run with `cargo bench --bench policy_overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::alloc::System;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rampart::breaker::{CircuitBreakerConfig, Window};
use rampart::classify::IoErrors;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::Policy;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use support::{boxed, one_call, Factory};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Bare = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, io::Error>>>;

fn bare() -> Bare {
    service_fn(|x: u64| ready(Ok(x)))
}

/// The floor: one shared `AtomicU32` read per call and one `Arc` clone per future.
#[derive(Clone)]
struct Floor {
    inner: Bare,
    failures: Arc<AtomicU32>,
}

struct FloorFuture {
    inner: Ready<Result<u64, io::Error>>,
    failures: Arc<AtomicU32>,
}

impl Future for FloorFuture {
    type Output = Result<u64, io::Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if r.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(r)
    }
}

impl Service<u64> for Floor {
    type Response = u64;
    type Error = io::Error;
    type Future = FloorFuture;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        if self.failures.load(Ordering::Relaxed) >= 5 {
            return Poll::Ready(Err(io::Error::other("open")));
        }
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, x: u64) -> FloorFuture {
        FloorFuture {
            inner: self.inner.call(x),
            failures: self.failures.clone(),
        }
    }
}

/// tower's retry policy with its budget, as its docs suggest: deposit on success,
/// withdraw before a retry.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl tower::retry::Policy<u64, u64, BoxError> for Budgeted {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, r: &mut Result<u64, BoxError>) -> Option<Ready<()>> {
        match r {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }
    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// The full `Policy` stack: memory dead-letter store, retry + budget, count-window
/// breaker, 1 s attempt timeout.
fn policy_layer() -> rampart::PolicyLayer<IoErrors, MemoryStore, JsonExtractor> {
    let breaker = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(100)))
        .build()
        .unwrap();
    Policy::builder("bench")
        .attempt_timeout(Some(Duration::from_secs(1)))
        .breaker(Some(breaker))
        .build()
        .unwrap()
        .layer(IoErrors, MemoryStore::default(), JsonExtractor::default())
}

/// The hand-built tower stack: `tower::retry` with `TpsBudget` over `tower::timeout`.
fn tower_stack() -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send
{
    tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(Budgeted(Arc::new(
            TpsBudget::new(Duration::from_secs(10), 10, 0.1),
        ))))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .service(bare())
}

/// A `Clone` error for tower-resilience's retry, which requires one.
#[derive(Debug, Clone)]
struct BenchError;

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bench error")
    }
}

impl std::error::Error for BenchError {}

/// tower-resilience's retry (4 attempts, exponential backoff from 1 s) over its circuit
/// breaker (failure rate 50 % over a count window of 100): its retry∘breaker.
fn resilience_retry_breaker(
) -> impl Service<u64, Response = u64, Error: std::fmt::Debug, Future: Send> + Clone + Send {
    let inner = service_fn(|x: u64| ready(Ok::<u64, BenchError>(x)));
    let breaker = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid")
        .layer(inner);
    tower_resilience::retry::RetryLayer::<u64, u64, _>::builder()
        .max_attempts(4)
        .exponential_backoff(Duration::from_secs(1))
        .build()
        .layer(breaker)
}

fn resilience_breaker(
) -> impl Service<u64, Response = u64, Error: std::fmt::Debug, Future: Send> + Clone + Send {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid")
        .layer(bare())
}

/// Every case as a factory of clones of one service (the clones share its state); and, to
/// show what that sharing costs, `rampart_policy_own_stack`: each thread a stack of its own,
/// from a layer of its own (nothing shared).
fn variants() -> Vec<(&'static str, Factory)> {
    let floor = Floor {
        inner: bare(),
        failures: Arc::new(AtomicU32::new(0)),
    };
    let policy = policy_layer().layer(bare());
    let tower = tower_stack();
    let res = resilience_breaker();
    let res_retry = resilience_retry_breaker();
    vec![
        ("bare", Box::new(|| boxed(bare()))),
        ("floor_arc_atomic", Box::new(move || boxed(floor.clone()))),
        ("rampart_policy", Box::new(move || boxed(policy.clone()))),
        (
            "rampart_policy_own_stack",
            Box::new(|| boxed(policy_layer().layer(bare()))),
        ),
        (
            "tower_retry_budget_timeout",
            Box::new(move || boxed(tower.clone())),
        ),
        (
            "tower_resilience_breaker",
            Box::new(move || boxed(res.clone())),
        ),
        (
            "tower_resilience_retry_breaker",
            Box::new(move || boxed(res_retry.clone())),
        ),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Polled in place, one thread; and the allocations per call, printed once per case.
fn in_place(c: &mut Criterion) {
    let rt = runtime();
    let _g = rt.enter();
    let mut g = c.benchmark_group("policy_in_place");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let mut s = $svc;
            report_allocations($name, &mut s);
            g.bench_function($name, |b| b.iter(|| one_call(&mut s, black_box(7))));
        }};
    }
    case!("bare", bare());
    case!(
        "floor_arc_atomic",
        Floor {
            inner: bare(),
            failures: Arc::new(AtomicU32::new(0)),
        }
    );
    case!("rampart_policy", policy_layer().layer(bare()));
    case!("tower_retry_budget_timeout", tower_stack());
    case!("tower_resilience_breaker", resilience_breaker());
    case!("tower_resilience_retry_breaker", resilience_retry_breaker());
    g.finish();
}

fn report_allocations<S>(name: &str, svc: &mut S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    const N: u64 = 10_000;
    // Warm up (lazily made state), then count; the quietest of three windows, because the
    // counter also sees criterion's threads.
    for i in 0..100 {
        black_box(one_call(svc, i));
    }
    let best = (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for i in 0..N {
                black_box(one_call(svc, i));
            }
            region.change().allocations
        })
        .min()
        .unwrap_or_default();
    #[allow(clippy::cast_precision_loss)]
    let per_call = best as f64 / N as f64;
    println!("allocations/call {name}: {per_call:.3}");
}

/// Driven from an async fn: `ready().await`, `call`, `.await`, on a current-thread runtime.
fn from_async_fn(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("policy_async_fn");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let mut s = $svc;
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for i in 0..iters {
                            let svc = s.ready().await.unwrap();
                            black_box(svc.call(black_box(i)).await.unwrap());
                        }
                        start.elapsed()
                    })
                })
            });
        }};
    }
    case!("bare", bare());
    case!(
        "floor_arc_atomic",
        Floor {
            inner: bare(),
            failures: Arc::new(AtomicU32::new(0)),
        }
    );
    case!("rampart_policy", policy_layer().layer(bare()));
    case!("tower_retry_budget_timeout", tower_stack());
    case!("tower_resilience_breaker", resilience_breaker());
    case!("tower_resilience_retry_breaker", resilience_retry_breaker());
    g.finish();
}

/// One and two threads, each with a clone of one service.
fn threaded(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    // Timers need a runtime context: each thread enters it once, for its whole loop.
    support::threaded_in(c, "policy", Some(rt.handle()), variants);
}

/// A clone of the service per call, dropped after it (axum's router clones a route's service
/// for every request), on one and two threads.
fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    support::threaded_in(c, "policy_per_request", Some(rt.handle()), || {
        let policy = policy_layer().layer(bare());
        let tower = tower_stack();
        let cases: Vec<(&'static str, Factory)> = vec![
            ("bare", Box::new(|| support::per_request(bare()))),
            (
                "rampart_policy",
                Box::new(move || support::per_request(policy.clone())),
            ),
            (
                "tower_retry_budget_timeout",
                Box::new(move || support::per_request(tower.clone())),
            ),
        ];
        cases
    });
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = in_place, from_async_fn, threaded, per_request
}
criterion_main!(benches);
