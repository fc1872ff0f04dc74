//! Per-call overhead of circuit breakers on the closed-state success path, side by side in
//! one run: a bare service; the floor (a hand-written breaker: an `Arc<AtomicU32>` failure
//! counter cloned into the response future, reset on success only when non-zero); rampart's
//! breaker with a consecutive-failure threshold and with a count window; and `failsafe`,
//! `recloser` and `tower-resilience`; each polled in place (`breaker_success_path`: failsafe
//! and recloser call a closure) and driven from an async fn (`breaker_async_fn`:
//! `ready().await` + `call` + `.await`; failsafe and recloser through their future APIs,
//! around a ready future). Then two threads hammering one shared breaker: each
//! thread holds a clone of one service (tower variants) or of one `Arc`'d breaker (failsafe,
//! recloser, which wrap closures rather than services).
//!
//! Run with `cargo bench -p rampart-bench --bench breaker_overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use failsafe::CircuitBreaker as _;
use rampart::breaker::{CircuitBreakerConfig, CircuitBreakerLayer, Window};
use rampart::classify::IoErrors;
use support::{boxed, one_call, Factory};
use tower::{service_fn, Layer, Service};

type Bare = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, io::Error>>>;

fn bare() -> Bare {
    service_fn(|x: u64| ready(Ok(x)))
}

// ===== the floor: the least a breaker can do =====

#[derive(Clone)]
struct Floor<S> {
    inner: S,
    failures: Arc<AtomicU32>,
}

struct FloorFuture<F> {
    inner: F,
    failures: Arc<AtomicU32>,
}

impl<F: Future<Output = Result<u64, io::Error>> + Unpin> Future for FloorFuture<F> {
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

impl<S> Service<u64> for Floor<S>
where
    S: Service<u64, Response = u64, Error = io::Error>,
    S::Future: Unpin,
{
    type Response = u64;
    type Error = io::Error;
    type Future = FloorFuture<S::Future>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        if self.failures.load(Ordering::Relaxed) >= 5 {
            return Poll::Ready(Err(io::Error::other("open")));
        }
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, x: u64) -> Self::Future {
        FloorFuture {
            inner: self.inner.call(x),
            failures: self.failures.clone(),
        }
    }
}

fn floor(shared: &Arc<AtomicU32>) -> Floor<Bare> {
    Floor {
        inner: bare(),
        failures: shared.clone(),
    }
}

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
    let cfg = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(100)))
        .build()
        .expect("valid");
    CircuitBreakerLayer::new(cfg.to_builder().name("bench").build().unwrap()).classifier(IoErrors)
}

type FailsafeConsecutive = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

fn failsafe_consecutive() -> FailsafeConsecutive {
    let policy = failsafe::failure_policy::consecutive_failures(
        5,
        failsafe::backoff::constant(Duration::from_secs(60)),
    );
    failsafe::Config::new().failure_policy(policy).build()
}

fn tower_resilience_layer() -> tower_resilience::circuitbreaker::CircuitBreakerLayer<
    impl tower_resilience::circuitbreaker::FailureClassifier<u64, io::Error> + Clone + 'static,
> {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid")
}

fn variants() -> Vec<(&'static str, Factory)> {
    // Each tower variant is one service, cloned per thread: clones share the breaker.
    let floor_svc = floor(&Arc::new(AtomicU32::new(0)));
    let cons = consecutive_layer().layer(bare());
    let win = window_layer().layer(bare());
    let fs = Arc::new(failsafe_consecutive());
    let fs_default = Arc::new(failsafe::Config::new().build());
    let rc = Arc::new(recloser::Recloser::default());
    let tr = tower_resilience_layer().layer(bare());
    vec![
        ("bare", Box::new(|| boxed(bare()))),
        (
            "floor_arc_atomic",
            Box::new(move || boxed(floor_svc.clone())),
        ),
        ("rampart_consecutive", Box::new(move || boxed(cons.clone()))),
        ("rampart_count_window", Box::new(move || boxed(win.clone()))),
        (
            "failsafe_consecutive",
            Box::new(move || {
                let fs = fs.clone();
                Box::new(move |x| fs.call(|| Ok::<u64, io::Error>(black_box(x))).unwrap())
            }),
        ),
        (
            "failsafe_default",
            Box::new(move || {
                let fs = fs_default.clone();
                Box::new(move |x| fs.call(|| Ok::<u64, io::Error>(black_box(x))).unwrap())
            }),
        ),
        (
            "recloser",
            Box::new(move || {
                let rc = rc.clone();
                Box::new(move |x| rc.call(|| Ok::<u64, io::Error>(black_box(x))).unwrap())
            }),
        ),
        ("tower_resilience", Box::new(move || boxed(tr.clone()))),
    ]
}

fn success_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker_success_path");
    let mut s = bare();
    g.bench_function("bare", |b| b.iter(|| one_call(&mut s, black_box(7))));
    let shared = Arc::new(AtomicU32::new(0));
    let mut s = floor(&shared);
    g.bench_function("floor_arc_atomic", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let mut s = consecutive_layer().layer(bare());
    g.bench_function("rampart_consecutive", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let mut s = window_layer().layer(bare());
    g.bench_function("rampart_count_window", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let fs = failsafe_consecutive();
    g.bench_function("failsafe_consecutive", |b| {
        b.iter(|| fs.call(|| Ok::<u64, io::Error>(black_box(7))).unwrap())
    });
    let fs = failsafe::Config::new().build();
    g.bench_function("failsafe_default", |b| {
        b.iter(|| fs.call(|| Ok::<u64, io::Error>(black_box(7))).unwrap())
    });
    let rc = recloser::Recloser::default();
    g.bench_function("recloser", |b| {
        b.iter(|| rc.call(|| Ok::<u64, io::Error>(black_box(7))).unwrap())
    });
    let mut s = tower_resilience_layer().layer(bare());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    g.finish();
}

fn from_async_fn(c: &mut Criterion) {
    let rt = support::current_thread();
    let mut g = c.benchmark_group("breaker_async_fn");
    support::bench_async_fn(&mut g, &rt, "bare", bare());
    support::bench_async_fn(
        &mut g,
        &rt,
        "floor_arc_atomic",
        floor(&Arc::new(AtomicU32::new(0))),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "rampart_consecutive",
        consecutive_layer().layer(bare()),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "rampart_count_window",
        window_layer().layer(bare()),
    );
    let fs = failsafe_consecutive();
    support::bench_async_fn_future(&mut g, &rt, "failsafe_consecutive", |x| {
        let f = failsafe::futures::CircuitBreaker::call(&fs, ready(Ok::<u64, io::Error>(x)));
        async move { f.await.unwrap() }
    });
    let fs = failsafe::Config::new().build();
    support::bench_async_fn_future(&mut g, &rt, "failsafe_default", |x| {
        let f = failsafe::futures::CircuitBreaker::call(&fs, ready(Ok::<u64, io::Error>(x)));
        async move { f.await.unwrap() }
    });
    let rc = recloser::AsyncRecloser::from(recloser::Recloser::default());
    support::bench_async_fn_future(&mut g, &rt, "recloser", |x| {
        let f = rc.call(ready(Ok::<u64, io::Error>(x)));
        async move { f.await.unwrap() }
    });
    support::bench_async_fn(
        &mut g,
        &rt,
        "tower_resilience",
        tower_resilience_layer().layer(bare()),
    );
    g.finish();
}

fn threaded(c: &mut Criterion) {
    support::threaded(c, "breaker", variants);
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = success_path, from_async_fn, threaded
}
criterion_main!(benches);
