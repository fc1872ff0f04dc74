//! A policy loaded from `rampart.example.toml` (plus the environment) wraps a flaky
//! dependency; the run ends by printing the Prometheus series rampart exported.
//!
//! Run with `cargo run --release --example policy_metrics --features config,prometheus,sqlite`.
//! Try `GEMINI_API_MAX_RETRIES=0` or `CIRCUIT_BREAKER_ENABLED=false` to see the environment win.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rampart::config::Loader;
use rampart::dlq::{DeadLetterStore, JsonExtractor, SqliteStore};
use rampart::Outcome;
use tower::{Layer, ServiceExt};

fn classify(r: Result<&u64, &io::Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Outcome::Permanent,
        Err(_) => Outcome::TRANSIENT,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = rampart::observe::prometheus_builder()?.install_recorder()?;
    rampart::observe::describe();

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rampart.example.toml");
    let policies = Loader::new().file(path).load()?;
    let policy = policies.get("gemini_api").expect("the gemini_api preset");
    println!(
        "gemini_api: {} retries, {:?} base, {:?} max, breaker {:?}",
        policy.backoff().max_retries(),
        policy.backoff().base_delay(),
        policy.backoff().max_delay(),
        policy.breaker().map(|b| b.consecutive_failures())
    );

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("dlq.sqlite"), 1000)?;
    let n = Arc::new(AtomicU64::new(0));
    let flaky = tower::service_fn(move |x: u64| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        async move {
            match i % 10 {
                0 | 1 => Err(io::Error::from(io::ErrorKind::ConnectionReset)),
                2 if x.is_multiple_of(50) => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
                _ => Ok(x),
            }
        }
    });
    let layer = policy.layer(
        classify as fn(Result<&u64, &io::Error>) -> Outcome,
        store.clone(),
        JsonExtractor::default(),
    );
    let svc = layer.layer(flaky);
    // 200 concurrent calls: their backoff waits overlap.
    let calls: Vec<_> = (0..200)
        .map(|x| tokio::spawn(svc.clone().oneshot(x)))
        .collect();
    let mut ok = 0;
    for c in calls {
        if c.await?.is_ok() {
            ok += 1;
        }
    }
    println!(
        "{ok}/200 calls succeeded; {} dead letters in {}",
        store.stats().await?.records,
        store.path().display()
    );
    println!("breaker: {}\n", layer.breaker().state());
    for line in metrics.render().lines() {
        if !line.starts_with('#') && !line.contains("_bucket") && !line.is_empty() {
            println!("  {line}");
        }
    }
    Ok(())
}
