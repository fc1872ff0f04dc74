//! Retries against a flaky, Gemini-shaped in-process service: transient 503s, throttling 429s
//! with a `Retry-After` hint, and the caller's own 400s, which are never retried.
//!
//! Run with `cargo run --release --example flaky_retry`.
//! Set `RUST_LOG`-style tracing with `FLAKY_TRACE=1` to see every retry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rampart::retry::observe::{FinishEvent, RetryEvent, RetryObserver};
use rampart::{Backoff, Error, Jitter, Outcome, RetryBudget, RetryLayer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::{Service, ServiceExt};

const CALLS: usize = 200;
const CONCURRENCY: usize = 16;
const SEED: u64 = 7;

/// What the fake API answers: a status and an optional `Retry-After`.
#[derive(Debug, Clone, Copy)]
struct Reply {
    status: u16,
    retry_after: Option<Duration>,
}

#[derive(Debug)]
struct ConnectionReset;
impl std::fmt::Display for ConnectionReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by peer")
    }
}
impl std::error::Error for ConnectionReset {}
rampart::leaf_error!(ConnectionReset);

/// HTTP semantics: 2xx success, 429 throttled (with its hint), 5xx transient, 4xx rejected.
fn classify(r: Result<&Reply, &ConnectionReset>) -> Outcome {
    match r {
        Ok(Reply {
            status: 200..=299, ..
        }) => Outcome::Success,
        Ok(Reply {
            status: 429,
            retry_after,
        }) => Outcome::Throttled {
            retry_after: *retry_after,
        },
        Ok(Reply {
            status: 500..=599,
            retry_after,
        }) => Outcome::Transient {
            retry_after: *retry_after,
        },
        Ok(_) => Outcome::Rejected,
        Err(_) => Outcome::TRANSIENT,
    }
}

/// Counts what the retry layer did.
#[derive(Clone, Default)]
struct Tally {
    retries: Arc<AtomicU32>,
    hinted: Arc<AtomicU32>,
    gave_up: Arc<Mutex<BTreeMap<&'static str, u32>>>,
}

impl RetryObserver for Tally {
    fn on_retry(&self, e: &RetryEvent) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if e.hinted {
            self.hinted.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn on_finish(&self, e: &FinishEvent) {
        if let Some(why) = e.gave_up {
            let mut m = self
                .gave_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *m.entry(why.as_str()).or_default() += 1;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("FLAKY_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .init();
    }
    // The flaky dependency: each attempt draws its fate from a seeded RNG.
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(SEED)));
    let attempts = Arc::new(AtomicU32::new(0));
    let (r, a) = (rng.clone(), attempts.clone());
    let flaky = tower::service_fn(move |_text: String| {
        a.fetch_add(1, Ordering::Relaxed);
        let roll: f64 = r
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .random();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match roll {
                x if x < 0.20 => Ok(Reply {
                    status: 503,
                    retry_after: None,
                }),
                x if x < 0.28 => Ok(Reply {
                    status: 429,
                    retry_after: Some(Duration::from_millis(150)),
                }),
                x if x < 0.33 => Err(ConnectionReset),
                x if x < 0.35 => Ok(Reply {
                    status: 400,
                    retry_after: None,
                }),
                _ => Ok(Reply {
                    status: 200,
                    retry_after: None,
                }),
            }
        }
    });

    let tally = Tally::default();
    let layer = RetryLayer::new(classify as fn(Result<&Reply, &ConnectionReset>) -> Outcome)
        .name("gemini_api")
        .backoff(
            Backoff::builder()
                .max_retries(3)
                .base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Proportional(0.1))
                .seed(SEED)
                .build()?,
        )
        .deadline(Duration::from_secs(5))
        .budget(RetryBudget::builder().ratio(1.0).min_per_sec(20).build()?)
        .observer(tally.clone());
    let svc = tower::Layer::layer(&layer, flaky);

    let bar = ProgressBar::new(CALLS as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} calls  {msg}",
    )?);
    let started = Instant::now();
    let results = Arc::new(Mutex::new(Vec::with_capacity(CALLS)));
    let next = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (mut svc, bar, results, next) =
            (svc.clone(), bar.clone(), results.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < CALLS {
                let t = Instant::now();
                let out: Result<Reply, Error<ConnectionReset>> = match svc.ready().await {
                    Ok(s) => s.call("Say cheerfully: have a wonderful day!".into()).await,
                    Err(e) => Err(e),
                };
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((out, t.elapsed()));
                bar.inc(1);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    bar.finish_with_message(format!("done in {:.2?}", started.elapsed()));

    let results = std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut lat: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let ok = results
        .iter()
        .filter(|(r, _)| matches!(r, Ok(x) if x.status == 200))
        .count();
    let failed_responses = results
        .iter()
        .filter(|(r, _)| matches!(r, Ok(x) if x.status != 200))
        .count();
    let errors = results.iter().filter(|(r, _)| r.is_err()).count();
    let total_attempts = attempts.load(Ordering::Relaxed);

    println!();
    println!("  {:<34} {:>8}", "calls", CALLS);
    println!("  {:<34} {:>8}", "succeeded (200)", ok);
    println!(
        "  {:<34} {:>8}",
        "failed with a response (4xx/5xx)", failed_responses
    );
    println!("  {:<34} {:>8}", "failed with an error", errors);
    println!("  {:<34} {:>8}", "attempts made", total_attempts);
    println!(
        "  {:<34} {:>8.2}",
        "attempts per call",
        f64::from(total_attempts) / CALLS as f64
    );
    println!(
        "  {:<34} {:>8}",
        "retries",
        tally.retries.load(Ordering::Relaxed)
    );
    println!(
        "  {:<34} {:>8}",
        "  of which waited a Retry-After",
        tally.hinted.load(Ordering::Relaxed)
    );
    for (why, n) in tally
        .gave_up
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        println!("  {:<34} {:>8}", format!("gave up: {why}"), n);
    }
    println!("  {:<34} {:>8.1?}", "latency p50", pct(0.50));
    println!("  {:<34} {:>8.1?}", "latency p99", pct(0.99));
    Ok(())
}
