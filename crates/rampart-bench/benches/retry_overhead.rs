//! Per-call overhead of retry layers on the success path, side by side in one run:
//! a bare `service_fn`, tower's `Retry` with a minimal policy and with its `TpsBudget`,
//! and rampart's `RetryLayer` without and with its budget (full, as a healthy service's is,
//! and never full: every call deposits). Each polled in place (`retry_success_path`) and
//! driven from an async fn (`retry_async_fn`: `ready().await` + `call` + `.await`). Then the
//! same at two threads sharing one layer (each thread holds its own service made by the
//! shared layer).
//!
//! Run with `cargo bench -p rampart-bench --bench retry_overhead`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::future::{ready, Ready};
use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rampart::classify::IoErrors;
use rampart::retry::RetryBudget;
use rampart::RetryLayer;
use support::{boxed_ready as boxed, one_call_ready as one_call, Factory};
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;
use tower::{service_fn, Layer};

type Bare = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, io::Error>>>;

fn bare() -> Bare {
    service_fn(|x: u64| ready(Ok(x)))
}

/// tower's minimal policy: clone the request, never retry.
#[derive(Clone)]
struct Minimal;

impl Policy<u64, u64, io::Error> for Minimal {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, r: &mut Result<u64, io::Error>) -> Option<Ready<()>> {
        r.is_err().then(|| ready(()))
    }
    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// tower's policy with its budget, used as its docs suggest: deposit on success, withdraw
/// before a retry.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl Policy<u64, u64, io::Error> for Budgeted {
    type Future = Ready<()>;
    fn retry(&mut self, _: &mut u64, r: &mut Result<u64, io::Error>) -> Option<Ready<()>> {
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

/// rampart's budget with a cap no run reaches: it is never full, so every call deposits (one
/// atomic add), the path of a service whose retries are eating into its budget.
fn never_full() -> RetryLayer<IoErrors> {
    RetryLayer::new(IoErrors).budget(RetryBudget::builder().max_tokens(u32::MAX).build().unwrap())
}

/// Every variant as a factory of services sharing one layer.
fn variants() -> Vec<(&'static str, Factory)> {
    let tower_plain = tower::retry::RetryLayer::new(Minimal);
    let tower_budget = tower::retry::RetryLayer::new(Budgeted(tps_budget()));
    let ours_plain = RetryLayer::new(IoErrors).no_budget();
    let ours_budget = RetryLayer::new(IoErrors);
    let ours_not_full = never_full();
    vec![
        ("bare", Box::new(|| boxed(bare()))),
        (
            "tower_retry",
            Box::new(move || boxed(tower_plain.layer(bare()))),
        ),
        (
            "tower_retry_tps_budget",
            Box::new(move || boxed(tower_budget.layer(bare()))),
        ),
        (
            "rampart_retry_no_budget",
            Box::new(move || boxed(ours_plain.layer(bare()))),
        ),
        (
            "rampart_retry_budget",
            Box::new(move || boxed(ours_budget.layer(bare()))),
        ),
        (
            "rampart_retry_budget_not_full",
            Box::new(move || boxed(ours_not_full.layer(bare()))),
        ),
    ]
}

fn success_path(c: &mut Criterion) {
    // Monomorphic calls for the single-thread numbers: no boxing in the measured loop.
    let mut g = c.benchmark_group("retry_success_path");
    let mut s = bare();
    g.bench_function("bare", |b| b.iter(|| one_call(&mut s, black_box(7))));
    let mut s = tower::retry::RetryLayer::new(Minimal).layer(bare());
    g.bench_function("tower_retry", |b| b.iter(|| one_call(&mut s, black_box(7))));
    let mut s = tower::retry::RetryLayer::new(Budgeted(tps_budget())).layer(bare());
    g.bench_function("tower_retry_tps_budget", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let mut s = RetryLayer::new(IoErrors).no_budget().layer(bare());
    g.bench_function("rampart_retry_no_budget", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let mut s = RetryLayer::new(IoErrors).layer(bare());
    g.bench_function("rampart_retry_budget", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    let mut s = never_full().layer(bare());
    g.bench_function("rampart_retry_budget_not_full", |b| {
        b.iter(|| one_call(&mut s, black_box(7)))
    });
    g.finish();
}

fn from_async_fn(c: &mut Criterion) {
    let rt = support::current_thread();
    let mut g = c.benchmark_group("retry_async_fn");
    support::bench_async_fn(&mut g, &rt, "bare", bare());
    support::bench_async_fn(
        &mut g,
        &rt,
        "tower_retry",
        tower::retry::RetryLayer::new(Minimal).layer(bare()),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "tower_retry_tps_budget",
        tower::retry::RetryLayer::new(Budgeted(tps_budget())).layer(bare()),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "rampart_retry_no_budget",
        RetryLayer::new(IoErrors).no_budget().layer(bare()),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "rampart_retry_budget",
        RetryLayer::new(IoErrors).layer(bare()),
    );
    support::bench_async_fn(
        &mut g,
        &rt,
        "rampart_retry_budget_not_full",
        never_full().layer(bare()),
    );
    g.finish();
}

fn threaded(c: &mut Criterion) {
    support::threaded(c, "retry", variants);
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = success_path, from_async_fn, threaded
}
criterion_main!(benches);
