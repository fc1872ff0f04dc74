//! The load goals of issue 13, on tokio's paused clock: 100 calls/s for 300 s of virtual time
//! against a simulated upstream, for every preset. The harness is `tests/support/load.rs`;
//! `docs/load.md` has the tables and `examples/load_realtime.rs` the multi-threaded run.
//!
//! Run one scenario with its table: `cargo test --release --test load -- --nocapture transient`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/load.rs"]
mod load;

use std::time::Duration;

use load::{run, Kind, Report, Scenario};
use rampart::Policy;

const RATE: u32 = 100;
const SECS: u32 = 300;
const PRESETS: [&str; 4] = ["tts", "gemini_api", "database", "redis"];

fn preset(name: &str) -> Policy {
    Policy::preset(name)
        .expect("a preset")
        .seed(Some(7))
        .build()
        .expect("valid")
}

async fn each_preset(
    scenario: Scenario,
    adjust: impl Fn(Policy) -> Policy,
) -> Vec<(Policy, Report)> {
    each_preset_of(&PRESETS, scenario, adjust).await
}

async fn each_preset_of(
    presets: &[&str],
    scenario: Scenario,
    adjust: impl Fn(Policy) -> Policy,
) -> Vec<(Policy, Report)> {
    let mut out = Vec::new();
    for &name in presets {
        let p = adjust(preset(name));
        let r = run(&scenario, &Kind::Rampart(p.clone()), RATE, SECS, 1.0).await;
        println!(
            "{:<16} {:<24} success {:>7.3}%  attempts/call {:.3}  dead letters {} (failed {})  early {}",
            r.scenario,
            r.stack,
            r.success() * 100.0,
            r.attempts_per_call(),
            r.dead.len(),
            r.failed(),
            r.early
        );
        out.push((p, r));
    }
    out
}

/// Every failed call is dead-lettered once, with the attempts that reached the upstream.
fn dead_letters_true(r: &Report) {
    assert_eq!(
        r.dead.len(),
        r.failed(),
        "{}: dead letters = failed calls",
        r.stack
    );
    let wrong: Vec<_> = r
        .dead
        .iter()
        .filter(|(id, a, _, _)| r.upstream.arrivals_of(*id) != *a)
        .take(3)
        .map(|(id, a, why, text)| {
            (
                *id,
                *a,
                r.upstream.arrivals_of(*id),
                why.clone(),
                text.clone(),
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{}: {} dead letters with untrue attempts, e.g. (id, recorded, reached, reason, text) {wrong:?}",
        r.stack,
        r.untrue_attempts()
    );
}

/// The share of calls that fail when each of `retries + 1` independent attempts fails with
/// probability `p`: `p^(retries + 1)`.
fn floor_of_failures(p: f64, retries: u32) -> f64 {
    p.powi(i32::try_from(retries).unwrap_or(i32::MAX).saturating_add(1))
}

/// The goal — 20 % independent transient failures, ≥ 99.9 % success at ≤ 1.3 attempts per
/// call — for the preset whose retries can reach it: gemini_api (5 retries: at most
/// 0.2^6 = 0.0064 % of calls can fail).
///
/// The reference design gives tts, database and redis 3 retries, and its numbers are
/// requirements, so the presets keep them; a call then fails when all 4 independent attempts
/// fail, 0.2^4 = 0.16 %, and no budget or breaker can do better than 99.84 %. Those presets
/// are held to that mathematical cap (next test), and the documented override,
/// `max_retries = 4`, to the goal (the test after).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_20pct_succeeds_at_low_cost() {
    let r = run(
        &Scenario::transient(),
        &Kind::Rampart(preset("gemini_api")),
        RATE,
        SECS,
        1.0,
    )
    .await;
    println!(
        "{:<16} {:<24} success {:>7.3}%  attempts/call {:.3}",
        r.scenario,
        r.stack,
        r.success() * 100.0,
        r.attempts_per_call()
    );
    assert!(r.success() >= 0.999, "{}: success {}", r.stack, r.success());
    assert!(
        r.attempts_per_call() <= 1.3,
        "{}: attempts/call {}",
        r.stack,
        r.attempts_per_call()
    );
    dead_letters_true(&r);
}

/// The 3-retry presets (tts, database, redis) reach their mathematical cap, 1 − 0.2^4 =
/// 99.84 %, within noise, at ≤ 1.3 attempts per call: the failed calls number 0.2^4 of all
/// calls (48 of 30,000) within four standard deviations (±28), so neither the retry budget
/// nor the breaker loses a call the retries could have saved — and, the other way, the test
/// shows the cap is real: more successes than that would mean attempts were not independent.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_20pct_three_retry_presets_reach_their_cap() {
    let presets = ["tts", "database", "redis"];
    for (p, r) in each_preset_of(&presets, Scenario::transient(), |p| p).await {
        assert_eq!(
            p.backoff().max_retries(),
            3,
            "the reference design's number"
        );
        let calls = r.calls as f64;
        let q = floor_of_failures(0.2, 3);
        let expected = calls * q;
        let sigma = (calls * q * (1.0 - q)).sqrt();
        let failed = r.failed() as f64;
        assert!(
            (failed - expected).abs() <= 4.0 * sigma,
            "{}: {failed} failed calls, the cap allows {expected:.0} ± {:.0}",
            r.stack,
            4.0 * sigma
        );
        assert!(
            r.success() < 0.999,
            "{}: {} — above the cap?",
            r.stack,
            r.success()
        );
        assert!(
            r.attempts_per_call() <= 1.3,
            "{}: attempts/call {}",
            r.stack,
            r.attempts_per_call()
        );
        dead_letters_true(&r);
    }
}

/// The documented override for the 3-retry presets — one more retry, `max_retries = 4`
/// (`TTS_MAX_RETRIES=4`, `[services.tts] max_retries = 4`), nothing else changed — meets
/// the goal: ≥ 99.9 % success (cap 1 − 0.2^5 = 99.968 %) at ≤ 1.3 attempts per call
/// (1 + 0.2 + 0.04 + 0.008 + 0.0016 ≈ 1.25).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_20pct_with_the_documented_override_meets_the_goal() {
    let presets = ["tts", "database", "redis"];
    let four = |p: Policy| p.to_builder().max_retries(4).build().expect("valid");
    for (_, r) in each_preset_of(&presets, Scenario::transient(), four).await {
        assert!(r.success() >= 0.999, "{}: success {}", r.stack, r.success());
        assert!(
            r.attempts_per_call() <= 1.3,
            "{}: attempts/call {}",
            r.stack,
            r.attempts_per_call()
        );
        dead_letters_true(&r);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn full_outage_is_not_amplified() {
    for (_, r) in each_preset(Scenario::full_outage(), |p| p).await {
        assert!(
            r.attempts_per_call() <= 1.05,
            "{}: attempts/call {}",
            r.stack,
            r.attempts_per_call()
        );
        // Once tripped (from 30 s on), at most 5 % of the offered load reaches the upstream.
        let reached = r.upstream.arrivals_between(30, u64::from(SECS));
        let offered = u64::from(RATE) * (u64::from(SECS) - 30);
        assert!(
            reached as f64 <= 0.05 * offered as f64,
            "{}: {reached} of {offered} offered calls reached the upstream once tripped",
            r.stack
        );
        dead_letters_true(&r);
        let (_, a, why, text) = &r.dead[r.dead.len() / 2];
        assert!(
            why == "circuit_open" && *a == 0,
            "{}: a call rejected by the open circuit reads {why} / {a}: {text}",
            r.stack
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn outage_that_ends_recovers_within_one_open_period() {
    for (p, r) in each_preset(Scenario::outage_ends(), |p| p).await {
        let open = p.breaker().expect("a breaker").max_recovery_timeout();
        // The outage ends at 90 s; within the open period plus one probe round the policy
        // must be back.
        let from = 90.0 + open.as_secs_f64() + 1.0;
        let (rate, n) = load::success(&r.done, from, f64::MAX, |_| true);
        assert!(n > 0);
        assert!(
            rate >= 0.99,
            "{}: {:.2}% success from {from} s on",
            r.stack,
            rate * 100.0
        );
        dead_letters_true(&r);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn throttle_storm_never_retries_before_the_hint() {
    for (_, r) in each_preset(Scenario::throttle_storm(), |p| p).await {
        assert_eq!(r.early, 0, "{}: retries before Retry-After", r.stack);
        dead_letters_true(&r);
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_key_down_leaves_the_healthy_keys_whole() {
    let scenario = Scenario::one_key_down();
    for name in PRESETS {
        let p = preset(name);
        let r = run(&scenario, &Kind::RampartKeyed(p), RATE, SECS, 1.0).await;
        let (healthy, n) = load::success(&r.done, 0.0, f64::MAX, |d| d.call.key != 2);
        println!(
            "{:<16} {:<24} healthy keys {:>7.3}% of {n}  attempts/call {:.3}",
            r.scenario,
            r.stack,
            healthy * 100.0,
            r.attempts_per_call()
        );
        assert!(healthy >= 1.0, "{}: healthy keys at {healthy}", r.stack);
        dead_letters_true(&r);
    }
}

/// The keyed breaker chosen in a config file: every preset with
/// `[services.NAME.circuit_breaker] key = "header:x-key"`, loaded by the config loader and
/// applied by `Policy::http_layer` over `http::Request`s that carry their key in `x-key`.
/// One key of three down → 100 % on the healthy keys. The same policies without the key
/// (one breaker for the service) lose healthy calls: the key is what protects them.
#[cfg(all(
    feature = "config",
    any(feature = "http", feature = "client", feature = "grpc")
))]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_key_down_keyed_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.toml");
    let mut text = String::new();
    for name in PRESETS {
        text.push_str(&format!(
            "[services.{name}.circuit_breaker]\nkey = \"header:x-key\"\nmax_keys = 16\nidle_ttl = \"5m\"\n\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    let policies = rampart::config::Loader::new()
        .file(&path)
        .env(|_| None)
        .load()
        .unwrap();
    let scenario = Scenario::one_key_down();
    for name in PRESETS {
        let p = policies.get(name).unwrap().clone().with_seed(7);
        assert_eq!(
            p.breaker_key(),
            Some(&rampart::BreakerKey::Header("x-key".into()))
        );
        assert_eq!(
            (p.breaker_max_keys(), p.breaker_idle_ttl()),
            (16, Duration::from_secs(300))
        );
        let r = run(&scenario, &Kind::RampartHttp(p), RATE, SECS, 1.0).await;
        let (healthy, n) = load::success(&r.done, 0.0, f64::MAX, |d| d.call.key != 2);
        println!(
            "{:<16} {:<40} healthy keys {:>7.3}% of {n}  attempts/call {:.3}",
            r.scenario,
            r.stack,
            healthy * 100.0,
            r.attempts_per_call()
        );
        assert!(healthy >= 1.0, "{}: healthy keys at {healthy}", r.stack);
        dead_letters_true(&r);
    }
    // Without the key the same stack has one breaker, which the failing key trips.
    let unkeyed = Policy::preset("gemini_api")
        .unwrap()
        .seed(Some(7))
        .build()
        .unwrap();
    assert!(unkeyed.breaker_key().is_none());
    let r = run(&scenario, &Kind::RampartHttp(unkeyed), RATE, SECS, 1.0).await;
    let (healthy, _) = load::success(&r.done, 0.0, f64::MAX, |d| d.call.key != 2);
    assert!(
        healthy < 0.9,
        "{}: healthy keys at {healthy} with one breaker",
        r.stack
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn latency_spike_keeps_deadlines_and_recovers() {
    let deadline = Duration::from_secs(10);
    let adjust = |p: Policy| {
        p.to_builder()
            .attempt_timeout(Some(Duration::from_secs(1)))
            .deadline(Some(deadline))
            .build()
            .expect("valid")
    };
    for (_, r) in each_preset(Scenario::latency_spike(), adjust).await {
        let late = r
            .done
            .iter()
            .filter(|d| d.end - d.start > deadline + Duration::from_millis(1))
            .count();
        assert_eq!(late, 0, "{}: calls past their deadline", r.stack);
        // The spike ends at 130 s; from 10 s later on, ≥ 99 %.
        let (rate, _) = load::success(&r.done, 140.0, f64::MAX, |_| true);
        assert!(
            rate >= 0.99,
            "{}: {:.2}% after the spike",
            r.stack,
            rate * 100.0
        );
        dead_letters_true(&r);
    }
}

/// The full stack cloned per request (as axum's router calls a route) on a two-worker runtime,
/// so that calls on both threads go through their own thread's links, window stripe and
/// budget stripe: every call is answered, every failed call of the healthy phase is exactly
/// one dead letter, and the count window — the sum of the threads' stripes — still trips on
/// an outage. (Real threads, no timers: no retries, so nothing waits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_per_request_on_two_workers_loses_no_count() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use rampart::breaker::{State, Window};
    use rampart::classify::IoErrors;
    use rampart::dlq::{DeadLetterStore, ListQuery, MemoryStore, RequestPart};
    use rampart::CircuitBreakerConfig;
    use tower::{Layer, ServiceExt};

    let down = Arc::new(AtomicBool::new(false));
    let is_down = down.clone();
    let store = MemoryStore::default();
    let breaker = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(100)))
        .build()
        .unwrap();
    let layer = Policy::builder("threads")
        .retry(false)
        .breaker(Some(breaker))
        .build()
        .unwrap()
        .layer(IoErrors, store.clone(), |n: &u32| RequestPart {
            summary: n.to_string(),
            ..Default::default()
        });
    let handle = layer.breaker();
    let svc = layer.layer(tower::service_fn(move |n: u32| {
        let down = is_down.load(Ordering::SeqCst);
        async move {
            if down {
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            } else if n.is_multiple_of(10) {
                Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            } else {
                Ok(n)
            }
        }
    }));
    let call_all = |range: std::ops::Range<u32>| {
        let tasks: Vec<_> = range
            .map(|n| tokio::spawn(svc.clone().oneshot(n)))
            .collect();
        async move {
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            answers
        }
    };

    // Healthy, one call in ten refused for good: 10 % failures never trip a 50 % window.
    let answers = call_all(0..2_000).await;
    let failed = answers.iter().filter(|a| a.is_err()).count();
    assert_eq!((answers.len() - failed, failed), (1_800, 200));
    assert!(answers
        .iter()
        .all(|a| a.as_ref().err().is_none_or(|e| e.circuit_open().is_none())));
    assert_eq!(handle.state(), State::Closed);
    let recorded = store.list(ListQuery::newest(1_000)).await.unwrap().records;
    assert_eq!(recorded.len(), 200, "one dead letter per failed call");

    // Down: every call fails, and the window, whichever thread recorded what, opens.
    down.store(true, Ordering::SeqCst);
    let answers = call_all(0..400).await;
    assert!(answers.iter().all(Result::is_err));
    assert!(answers
        .iter()
        .any(|a| a.as_ref().err().is_some_and(|e| e.circuit_open().is_some())));
    assert_eq!(handle.state(), State::Open);
}
