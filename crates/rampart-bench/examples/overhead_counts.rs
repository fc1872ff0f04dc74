//! Makes `N` successful calls through one case of the overhead benches, in one of the two
//! harness shapes, so that `valgrind --tool=callgrind` can count the instructions per call
//! (deterministic whatever the machine's load, unlike criterion's wall time). Run natively it
//! also prints the allocations per call (counting allocator).
//!
//! ```sh
//! cargo build --release -p rampart-bench --example overhead_counts
//! target/release/examples/overhead_counts list
//! # instructions per call = (Ir at 2N − Ir at N) / N, which cancels the setup:
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/overhead_counts rampart_policy in_place 100000
//! scripts/overhead-counts.sh   # every case, both shapes, with the ratios of the goals
//! ```
//!
//! Shapes: `in_place` polls `poll_ready`, `call` and the (immediately ready) future once each
//! with a no-op waker; `async_fn` drives `ready().await` + `call` + `.await` from an async fn on
//! a current-thread runtime. Closure-based peers (failsafe, recloser) are called directly in
//! place and through their future APIs from the async fn. The cases and their settings are
//! those of `benches/{retry,breaker,policy}_overhead.rs`; the `*_per_request` cases clone the
//! service for every call and call the clone once, as axum's router does.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rampart::breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Window};
use rampart::classify::IoErrors;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::retry::RetryBudget;
use rampart::{Policy, RetryLayer};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Bare = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, io::Error>>>;

fn bare() -> Bare {
    service_fn(|x: u64| ready(Ok(x)))
}

// ===== the floor: an `Arc<AtomicU32>` failure count cloned into each future =====

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
        match &r {
            Ok(_) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
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

// ===== tower's retry policies =====

/// tower's minimal policy: clone the request, never retry a success.
#[derive(Clone)]
struct Minimal;

impl tower::retry::Policy<u64, u64, io::Error> for Minimal {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, r: &mut Result<u64, io::Error>) -> Option<Ready<()>> {
        r.is_err().then(|| ready(()))
    }
    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// tower's policy with its budget, as its docs suggest: deposit on success, withdraw before
/// a retry.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl<E> tower::retry::Policy<u64, u64, E> for Budgeted {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, r: &mut Result<u64, E>) -> Option<Ready<()>> {
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

fn tps_budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.1))
}

// ===== rampart's cases =====

fn consecutive_layer() -> CircuitBreakerLayer<IoErrors> {
    CircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .name("bench")
            .build()
            .unwrap(),
    )
    .classifier(IoErrors)
}

fn window_layer() -> CircuitBreakerLayer<IoErrors> {
    CircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .name("bench")
            .consecutive_failures(None)
            .window(Some(Window::Count(100)))
            .build()
            .unwrap(),
    )
    .classifier(IoErrors)
}

/// The full `Policy` stack: memory dead-letter store, retry + budget, count-window breaker,
/// 1 s attempt timeout (as in `benches/policy_overhead.rs`).
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

/// A POST `http::Request<Bytes>` with two headers and a JSON body: what each call of the
/// `*_http` cases sends (a clone of it, made by [`HttpCalls`]).
fn http_request() -> http::Request<bytes::Bytes> {
    http::Request::post("http://tts.local/v1/speak?voice=Kore")
        .header("content-type", "application/json")
        .header("x-request-id", "r-42")
        .body(bytes::Bytes::from_static(b"{\"text\":\"hello\"}"))
        .unwrap()
}

/// Answers an `http::Request<Bytes>` with its body's length.
type HttpBare =
    tower::util::ServiceFn<fn(http::Request<bytes::Bytes>) -> Ready<Result<u64, io::Error>>>;

fn http_bare() -> HttpBare {
    service_fn(
        (|r: http::Request<bytes::Bytes>| ready(Ok(u64::try_from(r.body().len()).unwrap_or(0))))
            as fn(http::Request<bytes::Bytes>) -> _,
    )
}

/// Turns each `u64` call into a clone of one `http::Request<Bytes>` (the caller's request;
/// the `http_bare` case measures it alone), so that the `u64` harness drives services of
/// HTTP requests.
#[derive(Clone)]
struct HttpCalls<S> {
    template: http::Request<bytes::Bytes>,
    inner: S,
}

impl<S: Service<http::Request<bytes::Bytes>>> Service<u64> for HttpCalls<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _: u64) -> S::Future {
        self.inner.call(self.template.clone())
    }
}

/// Clones the service for every request and calls the clone once (`oneshot`), as axum's
/// router does with a route's service: what a framework that clones per request pays.
#[derive(Clone)]
struct PerRequest<S>(S);

impl<S: Service<u64> + Clone> Service<u64> for PerRequest<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, u64>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u64) -> Self::Future {
        self.0.clone().oneshot(x)
    }
}

fn http_calls<S>(inner: S) -> HttpCalls<S> {
    HttpCalls {
        template: http_request(),
        inner,
    }
}

type HttpExtract = fn(&http::Request<bytes::Bytes>) -> rampart::dlq::RequestPart;

/// The `rampart_policy` stack over `http::Request<Bytes>`; the record describes the method
/// and URI (an extractor is called only for a failed call).
fn policy_http_layer() -> rampart::PolicyLayer<IoErrors, MemoryStore, HttpExtract> {
    let breaker = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(100)))
        .build()
        .unwrap();
    let extract: HttpExtract = |r| rampart::dlq::RequestPart {
        summary: format!("{} {}", r.method(), r.uri()),
        payload: Default::default(),
    };
    Policy::builder("bench")
        .attempt_timeout(Some(Duration::from_secs(1)))
        .breaker(Some(breaker))
        .build()
        .unwrap()
        .layer(IoErrors, MemoryStore::default(), extract)
}

/// The hand-built tower stack: `tower::retry` with `TpsBudget` over `tower::timeout`.
fn tower_stack() -> impl Service<u64, Response = u64, Error = BoxError> + Clone {
    tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(Budgeted(tps_budget())))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .service(bare())
}

fn resilience_breaker() -> impl Service<u64, Response = u64, Error: std::fmt::Debug> + Clone {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid")
        .layer(bare())
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

/// tower-resilience's retry (3 attempts, exponential backoff) over its circuit breaker
/// (failure rate 50 % over a count window of 100): its retry∘breaker.
fn resilience_retry_breaker() -> impl Service<u64, Response = u64, Error: std::fmt::Debug> + Clone {
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

fn failsafe_consecutive() -> impl failsafe::futures::CircuitBreaker + failsafe::CircuitBreaker {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(60)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

fn failsafe_default() -> impl failsafe::futures::CircuitBreaker + failsafe::CircuitBreaker {
    failsafe::Config::new().build()
}

// ===== the two shapes =====

#[inline(always)]
fn one_call<S>(svc: &mut S, cx: &mut Context<'_>, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the bench services are always ready: {other:?}"),
    }
    match pin!(svc.call(x)).poll(cx) {
        Poll::Ready(Ok(v)) => v,
        Poll::Ready(Err(e)) => panic!("failed: {e:?}"),
        Poll::Pending => panic!("the bench services answer at once"),
    }
}

#[inline(never)]
fn in_place<S>(svc: &mut S, n: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(one_call(svc, &mut cx, black_box(i)));
    }
    sum
}

#[inline(never)]
fn from_async_fn<S>(rt: &tokio::runtime::Runtime, svc: &mut S, n: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let mut sum = 0u64;
        for i in 0..n {
            let ready = svc.ready().await.unwrap();
            sum = sum.wrapping_add(ready.call(black_box(i)).await.unwrap());
        }
        sum
    })
}

/// Runs `n` calls of one shape; returns the allocations they made.
fn run<S>(rt: &tokio::runtime::Runtime, shape: &str, mut svc: S, n: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    // Warm up: lazily made state, and a budget filled to its cap (10 → 100 tokens at 0.1
    // a call takes 900 calls).
    let _g = rt.enter();
    black_box(in_place(&mut svc, 2_000));
    let region = Region::new(GLOBAL);
    let sum = match shape {
        "in_place" => in_place(&mut svc, n),
        "async_fn" => from_async_fn(rt, &mut svc, n),
        other => panic!("unknown shape {other}"),
    };
    black_box(sum);
    region.change().allocations as u64
}

/// A failsafe breaker through [`run_closures`]: its closure API in place, its future API from
/// the async fn.
fn run_failsafe<B>(rt: &tokio::runtime::Runtime, shape: &str, fs: &B, n: u64) -> u64
where
    B: failsafe::CircuitBreaker + failsafe::futures::CircuitBreaker,
{
    run_closures(
        rt,
        shape,
        |x| failsafe::CircuitBreaker::call(fs, || Ok::<u64, io::Error>(black_box(x))).unwrap(),
        |x| {
            let f = failsafe::futures::CircuitBreaker::call(fs, ready(Ok::<u64, io::Error>(x)));
            async move { f.await.unwrap() }
        },
        n,
    )
}

/// Closure-based peers: a plain call in place, the peer's future API from an async fn.
fn run_closures<Sync, Fut>(
    rt: &tokio::runtime::Runtime,
    shape: &str,
    sync_call: Sync,
    future_call: impl Fn(u64) -> Fut,
    n: u64,
) -> u64
where
    Sync: Fn(u64) -> u64,
    Fut: Future<Output = u64>,
{
    for i in 0..2_000 {
        black_box(sync_call(i));
    }
    let region = Region::new(GLOBAL);
    let sum = match shape {
        "in_place" => closure_loop(&sync_call, n),
        "async_fn" => rt.block_on(async {
            let mut sum = 0u64;
            for i in 0..n {
                sum = sum.wrapping_add(future_call(black_box(i)).await);
            }
            sum
        }),
        other => panic!("unknown shape {other}"),
    };
    black_box(sum);
    region.change().allocations as u64
}

#[inline(never)]
fn closure_loop(f: &impl Fn(u64) -> u64, n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(f(black_box(i)));
    }
    sum
}

const CASES: &[&str] = &[
    "bare",
    "floor_arc_atomic",
    "tower_retry",
    "tower_retry_tps_budget",
    "rampart_retry_no_budget",
    "rampart_retry_budget",
    "rampart_retry_budget_not_full",
    "rampart_consecutive",
    "rampart_count_window",
    "failsafe_consecutive",
    "failsafe_default",
    "recloser",
    "tower_resilience_breaker",
    "rampart_policy",
    "tower_retry_budget_timeout",
    "tower_resilience_retry_breaker",
    "http_bare",
    "rampart_policy_http",
    "bare_per_request",
    "rampart_policy_per_request",
    "tower_retry_budget_timeout_per_request",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("list") {
        for c in CASES {
            println!("{c}");
        }
        return;
    }
    let (Some(case), Some(shape), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: overhead_counts list | CASE in_place|async_fn N");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("N is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let allocs = match case.as_str() {
        "bare" => run(&rt, shape, bare(), n),
        "floor_arc_atomic" => run(
            &rt,
            shape,
            Floor {
                inner: bare(),
                failures: Arc::new(AtomicU32::new(0)),
            },
            n,
        ),
        "tower_retry" => run(
            &rt,
            shape,
            tower::retry::RetryLayer::new(Minimal).layer(bare()),
            n,
        ),
        "tower_retry_tps_budget" => run(
            &rt,
            shape,
            tower::retry::RetryLayer::new(Budgeted(tps_budget())).layer(bare()),
            n,
        ),
        "rampart_retry_no_budget" => run(
            &rt,
            shape,
            RetryLayer::new(IoErrors).no_budget().layer(bare()),
            n,
        ),
        "rampart_retry_budget" => run(&rt, shape, RetryLayer::new(IoErrors).layer(bare()), n),
        "rampart_retry_budget_not_full" => {
            // A cap no run reaches: every call deposits (one atomic add).
            let budget = RetryBudget::builder().max_tokens(u32::MAX).build().unwrap();
            run(
                &rt,
                shape,
                RetryLayer::new(IoErrors).budget(budget).layer(bare()),
                n,
            )
        }
        "rampart_consecutive" => run(&rt, shape, consecutive_layer().layer(bare()), n),
        "rampart_count_window" => run(&rt, shape, window_layer().layer(bare()), n),
        "failsafe_consecutive" => run_failsafe(&rt, shape, &failsafe_consecutive(), n),
        "failsafe_default" => run_failsafe(&rt, shape, &failsafe_default(), n),
        "recloser" => {
            let rc = recloser::Recloser::default();
            let arc = recloser::AsyncRecloser::from(recloser::Recloser::default());
            run_closures(
                &rt,
                shape,
                |x| rc.call(|| Ok::<u64, io::Error>(black_box(x))).unwrap(),
                |x| {
                    let f = arc.call(ready(Ok::<u64, io::Error>(x)));
                    async move { f.await.unwrap() }
                },
                n,
            )
        }
        "tower_resilience_breaker" => run(&rt, shape, resilience_breaker(), n),
        "rampart_policy" => run(&rt, shape, policy_layer().layer(bare()), n),
        "tower_retry_budget_timeout" => run(&rt, shape, tower_stack(), n),
        "tower_resilience_retry_breaker" => run(&rt, shape, resilience_retry_breaker(), n),
        "bare_per_request" => run(&rt, shape, PerRequest(bare()), n),
        "rampart_policy_per_request" => {
            run(&rt, shape, PerRequest(policy_layer().layer(bare())), n)
        }
        "tower_retry_budget_timeout_per_request" => run(&rt, shape, PerRequest(tower_stack()), n),
        "http_bare" => run(&rt, shape, http_calls(http_bare()), n),
        "rampart_policy_http" => run(
            &rt,
            shape,
            http_calls(policy_http_layer().layer(http_bare())),
            n,
        ),
        other => panic!("unknown case {other}; `list` lists them"),
    };
    #[allow(clippy::cast_precision_loss)]
    let per_call = allocs as f64 / n as f64;
    println!("{case} {shape} calls {n} allocations/call {per_call:.3}");
}
