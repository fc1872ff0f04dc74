//! What the overhead benches share: one call through a service, and the two-thread runner.
//! (Each bench uses part of it.)
#![allow(dead_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use tower::{Service, ServiceExt};

/// One successful call: `poll_ready`, `call`, poll the future to completion. Busy-polls a
/// pending future (only tower-resilience's ever are, when two threads contend).
#[inline(always)]
pub(crate) fn one_call<S>(svc: &mut S, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(e)) => panic!("not ready: {e:?}"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut fut = pin!(svc.call(x));
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(v)) => return v,
            Poll::Ready(Err(e)) => panic!("failed: {e:?}"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

/// One successful call through a service whose readiness and response are immediate (every
/// retry-bench service): `poll_ready` and the future are each polled once.
#[inline(always)]
pub(crate) fn one_call_ready<S>(svc: &mut S, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the bench services are always ready: {other:?}"),
    }
    match pin!(svc.call(x)).poll(&mut cx) {
        Poll::Ready(Ok(v)) => v,
        Poll::Ready(Err(e)) => panic!("failed: {e:?}"),
        Poll::Pending => panic!("the bench services answer at once"),
    }
}

/// The other harness shape: calls driven from an async fn on `rt` (`ready().await`, `call`,
/// `.await`), as an application makes them.
pub(crate) fn bench_async_fn<S>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    mut svc: S,
) where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let ready = svc.ready().await.unwrap();
                    black_box(ready.call(black_box(i)).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
}

/// [`bench_async_fn`] for a peer that wraps futures rather than services: `call(x)` makes
/// the call's future, awaited from the async fn.
pub(crate) fn bench_async_fn_future<Fut>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    call: impl Fn(u64) -> Fut,
) where
    Fut: Future<Output = u64>,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(call(black_box(i)).await);
                }
                start.elapsed()
            })
        })
    });
}

/// A current-thread runtime with timers, for the async-fn shape.
pub(crate) fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The criterion settings every overhead bench uses.
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// A boxed call through one service (or one breaker).
pub(crate) type Call = Box<dyn FnMut(u64) -> u64 + Send>;
/// Makes a caller that shares the variant's layer or breaker.
pub(crate) type Factory = Box<dyn Fn() -> Call + Send + Sync>;

/// Boxes a service as a [`Call`] (busy-polling, see [`one_call`]).
pub(crate) fn boxed<S>(mut s: S) -> Call
where
    S: Service<u64, Response = u64> + Send + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move |x| one_call(&mut s, x))
}

/// A call through a clone of `s` made for that call and dropped after it, as axum's router
/// calls a route's service (`clone().oneshot(req)`).
pub(crate) fn per_request<S>(s: S) -> Call
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move |x| one_call(&mut s.clone(), x))
}

/// Boxes an always-ready service as a [`Call`] (see [`one_call_ready`]).
pub(crate) fn boxed_ready<S>(mut s: S) -> Call
where
    S: Service<u64, Response = u64> + Send + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move |x| one_call_ready(&mut s, x))
}

/// Groups `{prefix}_threads_1` and `{prefix}_threads_2`: wall time for `iters` calls on each
/// thread, divided by the threads, so ns/call at 1 and 2 threads compare directly
/// (scaling = ns/call at 1 thread ÷ ns/call at 2 threads).
pub(crate) fn threaded(
    c: &mut Criterion,
    prefix: &str,
    variants: impl Fn() -> Vec<(&'static str, Factory)>,
) {
    threaded_in(c, prefix, None, variants);
}

/// [`threaded`] with each thread inside `rt`'s context for its whole loop (entered once per
/// thread, as a runtime's worker is, not once per call: entering clones the runtime's handle,
/// a reference count every thread shares, which would be measured as the case's own).
pub(crate) fn threaded_in(
    c: &mut Criterion,
    prefix: &str,
    rt: Option<&tokio::runtime::Handle>,
    variants: impl Fn() -> Vec<(&'static str, Factory)>,
) {
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("{prefix}_threads_{threads}"));
        for (name, make) in variants() {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let barrier = Barrier::new(threads);
                    let mut total = Duration::ZERO;
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..threads)
                            .map(|_| {
                                let make = &make;
                                let barrier = &barrier;
                                let rt = rt.cloned();
                                scope.spawn(move || {
                                    let mut call = make();
                                    let _entered = rt.as_ref().map(|rt| rt.enter());
                                    barrier.wait();
                                    let start = Instant::now();
                                    for i in 0..iters {
                                        black_box(call(black_box(i)));
                                    }
                                    start.elapsed()
                                })
                            })
                            .collect();
                        for h in handles {
                            total = total.max(h.join().unwrap_or_default());
                        }
                    });
                    total / threads as u32
                })
            });
        }
        g.finish();
    }
}
