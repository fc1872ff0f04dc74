//! Per-call cost of a keyed circuit breaker when every call brings a key never seen before
//! (a client cycling through fresh keys), beside the cost of calls with keys already held,
//! in the same run, at 1k, 100k and 1M held keys.
//!
//! Every variant is rampart's `KeyedCircuitBreakerLayer` with the default config, keyed by
//! the `u64` request itself, over a bare `service_fn` that returns `Ok(x)`; the registry is
//! filled to its bound (`max_keys` = N) before measuring. One call = `poll_ready` + `call` +
//! polling the (immediately ready) future.
//!
//! - `hot_key`: every call has the same held key.
//! - `known_keys`: calls cycle through all N held keys (at 1M, most lookups miss the CPU
//!   caches).
//! - `fresh_keys`: every call has a key never seen before. Such a call makes no breaker
//!   (a key gets its own breaker on its second call): it writes the key's fingerprint into
//!   the registry's first-call filter and is admitted by the overflow breaker's state.
//! - `fresh_key_twice`: one iteration = two calls with the same new key, the first (as in
//!   `fresh_keys`) and the second, which makes the key's breaker and evicts another: what a
//!   client that repeats each made-up key once costs, per pair of calls.
//! - `hot_key_while_churning` (group `keyed_contended_N`): `hot_key` on one thread while a
//!   second thread makes `fresh_keys` calls on a clone of the same service as fast as it
//!   can: what a fresh-key client costs everybody else.
//!
//! Run with `cargo bench -p rampart-bench --bench keyed_churn`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::future::{ready, Ready};
use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use rampart::breaker::{CircuitBreakerConfig, KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
use rampart::classify::IoErrors;
use support::one_call_ready;
use tower::{service_fn, Layer};

type Bare = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, io::Error>>>;
type Keyed = KeyedCircuitBreaker<Bare, IoErrors, fn(&u64) -> u64, u64>;

fn key_of(x: &u64) -> u64 {
    *x
}

/// A keyed breaker holding keys `0..n`, at its bound of `n` keys (each key called twice: a
/// key gets its own breaker on its second call).
fn filled(n: u64) -> Keyed {
    let layer = KeyedCircuitBreakerLayer::new(
        CircuitBreakerConfig::default(),
        IoErrors,
        key_of as fn(&u64) -> u64,
    )
    .max_keys(usize::try_from(n).unwrap());
    let bare: Bare = service_fn(|x: u64| ready(Ok(x)));
    let mut svc = layer.layer(bare);
    for k in 0..n {
        one_call_ready(&mut svc, k);
        one_call_ready(&mut svc, k);
    }
    svc
}

const SIZES: [(&str, u64); 3] = [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)];

fn churn(c: &mut Criterion) {
    for (label, n) in SIZES {
        // Filled on first use, so that a filtered run does not fill the registries it skips.
        let mut svc = None;
        let mut g = c.benchmark_group(format!("keyed_churn_{label}"));
        g.bench_function("hot_key", |b| {
            let svc = svc.get_or_insert_with(|| filled(n));
            b.iter(|| one_call_ready(svc, black_box(n / 2)))
        });
        let mut i = 0u64;
        g.bench_function("known_keys", |b| {
            let svc = svc.get_or_insert_with(|| filled(n));
            b.iter(|| {
                i = if i + 1 >= n { 0 } else { i + 1 };
                one_call_ready(svc, black_box(i))
            })
        });
        // Fresh keys from 2^40 up: never held before, never repeated.
        let mut next = 1u64 << 40;
        g.bench_function("fresh_keys", |b| {
            let svc = svc.get_or_insert_with(|| filled(n));
            b.iter(|| {
                next += 1;
                one_call_ready(svc, black_box(next))
            })
        });
        // Keys from 2^42 up, each called twice.
        let mut next2 = 1u64 << 42;
        g.bench_function("fresh_key_twice", |b| {
            let svc = svc.get_or_insert_with(|| filled(n));
            b.iter(|| {
                next2 += 1;
                one_call_ready(svc, black_box(next2));
                one_call_ready(svc, black_box(next2))
            })
        });
        g.finish();
    }
}

fn contended(c: &mut Criterion) {
    for (label, n) in &SIZES[..2] {
        let n = *n;
        let mut svc = None;
        let mut next = 1u64 << 41;
        let mut g = c.benchmark_group(format!("keyed_contended_{label}"));
        g.bench_function("hot_key_while_churning", |b| {
            let svc = svc.get_or_insert_with(|| filled(n));
            let mut churner = svc.clone();
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let stop = &stop;
                let churner = &mut churner;
                let next = &mut next;
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        *next += 1;
                        black_box(one_call_ready(churner, *next));
                    }
                });
                b.iter(|| one_call_ready(svc, black_box(n / 2)));
                stop.store(true, Ordering::Relaxed);
            });
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = churn, contended
}
criterion_main!(benches);
