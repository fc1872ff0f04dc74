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
    Policy::preset(name).expect("a preset").seed(Some(7)).build().expect("valid")
}

async fn each_preset(scenario: Scenario, adjust: impl Fn(Policy) -> Policy) -> Vec<(Policy, Report)> {
    let mut out = Vec::new();
    for name in PRESETS {
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
        .map(|(id, a, why, text)| (*id, *a, r.upstream.arrivals_of(*id), why.clone(), text.clone()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{}: {} dead letters with untrue attempts, e.g. (id, recorded, reached, reason, text) {wrong:?}",
        r.stack,
        r.untrue_attempts()
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn transient_20pct_succeeds_at_low_cost() {
    for (p, r) in each_preset(Scenario::transient(), |p| p).await {
        // The goal is 99.9 %. With `max_retries` r a call fails when all r + 1 independent
        // attempts fail: 0.2^(r+1). The 3-retry presets (tts, database, redis) therefore cap
        // at 99.84 % whatever the budget and breaker do; they are held to that ceiling less
        // 0.1 point, gemini_api (5 retries, 99.994 %) to the goal itself.
        let retries = i32::try_from(p.backoff().max_retries()).unwrap_or(i32::MAX);
        let ceiling = 1.0 - 0.2f64.powi(retries + 1);
        let want = if ceiling >= 0.9995 { 0.999 } else { ceiling - 0.001 };
        assert!(
            r.success() >= want,
            "{}: success {} (want {want}, ceiling {ceiling})",
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
        assert!(rate >= 0.99, "{}: {:.2}% after the spike", r.stack, rate * 100.0);
        dead_letters_true(&r);
    }
}
