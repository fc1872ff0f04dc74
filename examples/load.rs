//! The load comparison of docs/load.md: every scenario of `tests/support/load.rs`, for every
//! preset, through three stacks — the rampart preset, the reference design's naive numbers
//! (5 consecutive failures / 60 s / 3 probes, no budget) and tower's retry with `TpsBudget`.
//!
//! ```text
//! cargo run --release --example load                  # 100 calls/s for 300 s, paused clock
//! cargo run --release --example load -- --realtime    # multi-threaded, real time, delays ÷100
//! cargo run --release --example load -- --realtime --scale 100 --rate 10 --secs 1000
//! ```
//!
//! The paused-clock run takes a few seconds. `--realtime` runs on a multi-threaded runtime in
//! real time with every duration (upstream latency, outage windows, backoff, breaker
//! timeouts) divided by `--scale`; `--rate` is calls per *unscaled* second, so the default
//! (`--rate 100 --scale 100`) offers 10,000 calls/s for 3 s of wall time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/load.rs"]
mod load;

use std::time::Duration;

use load::{run, Kind, Report, Scenario};
use rampart::Policy;

struct Args {
    realtime: bool,
    scale: f64,
    rate: u32,
    secs: u32,
    presets: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        realtime: false,
        scale: 1.0,
        rate: 100,
        secs: 300,
        presets: vec![
            "tts".into(),
            "gemini_api".into(),
            "database".into(),
            "redis".into(),
        ],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match arg.as_str() {
            "--realtime" => {
                a.realtime = true;
                if (a.scale - 1.0).abs() < f64::EPSILON {
                    a.scale = 100.0;
                }
            }
            "--scale" => a.scale = val().parse().expect("--scale N"),
            "--rate" => a.rate = val().parse().expect("--rate N"),
            "--secs" => a.secs = val().parse().expect("--secs N"),
            "--preset" => a.presets = vec![val()],
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn preset(name: &str, timeout: Option<Duration>) -> Policy {
    let mut b = Policy::preset(name).expect("a preset").seed(Some(7));
    if let Some(t) = timeout {
        b = b.attempt_timeout(Some(t)).deadline(Some(t * 10));
    }
    b.build().expect("valid")
}

fn row(r: &Report, secs: u32, rate: u32, scale: f64) -> String {
    let sc = r.scenario;
    // tokio's timers tick in milliseconds: in real time a deadline can be a tick late, which
    // is `scale` ticks of unscaled time.
    let tolerance = Duration::from_millis(1).mul_f64(scale.max(1.0) * 2.0);
    let s = |from: f64, keep: &dyn Fn(&load::Done) -> bool| {
        let (v, _) = load::success(&r.done, from, f64::MAX, keep);
        format!("{:.2}%", v * 100.0)
    };
    let dead = if r.stack.starts_with("tower") {
        "n/a".to_owned()
    } else {
        format!(
            "{} / {} ({} untrue)",
            r.dead.len(),
            r.failed(),
            r.untrue_attempts()
        )
    };
    let goal = match sc {
        "full_outage" => {
            let reached = r.upstream.arrivals_between(30, u64::from(secs));
            let offered = u64::from(rate) * u64::from(secs.saturating_sub(30));
            format!(
                "{:.2}% of offered load reached it after 30 s",
                reached as f64 * 100.0 / offered.max(1) as f64
            )
        }
        "outage_ends" => format!("{} from 151 s on", s(151.0, &|_| true)),
        "throttle_storm" => format!("{} retries before Retry-After", r.early),
        "one_key_down" => format!("healthy keys {}", s(0.0, &|d| d.call.key != 2)),
        "latency_spike" => {
            let late = r
                .done
                .iter()
                .filter(|d| d.end - d.start > Duration::from_secs(10) + tolerance)
                .count();
            format!(
                "{late} calls past 10 s (+{tolerance:?}); {} from 140 s on",
                s(140.0, &|_| true)
            )
        }
        _ => String::new(),
    };
    format!(
        "| {} | {:.3}% | {:.3} | {} | {} |",
        r.stack,
        r.success() * 100.0,
        r.attempts_per_call(),
        goal,
        dead
    )
}

async fn all(a: &Args) {
    for scenario in Scenario::all() {
        println!("\n### {}\n", scenario.name);
        println!(
            "| stack | success | attempts/call | scenario measure | dead letters / failed calls |"
        );
        println!("|---|---|---|---|---|");
        let timeout = (scenario.name == "latency_spike").then(|| Duration::from_secs(1));
        for name in &a.presets {
            let p = preset(name, timeout);
            let mut kinds = vec![Kind::Rampart(p.clone())];
            if scenario.name == "transient_20pct" && p.backoff().max_retries() < 4 {
                // The documented override for the 3-retry presets (docs/load.md).
                if let Ok(four) = p.to_builder().max_retries(4).build() {
                    kinds.push(Kind::Rampart(four));
                }
            }
            if scenario.name == "one_key_down" {
                kinds.push(Kind::RampartKeyed(p.clone()));
                // The key named in a config file (`key = "header:x-key"`), over http::Request.
                #[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
                if let Ok(key) = rampart::BreakerKey::header("x-key") {
                    if let Ok(keyed) = p.to_builder().breaker_key(Some(key)).build() {
                        kinds.push(Kind::RampartHttp(keyed));
                    }
                }
            }
            kinds.push(Kind::Naive(load::naive_policy(name, timeout)));
            kinds.push(Kind::Tower(p.clone()));
            for k in kinds {
                let r = run(&scenario, &k, a.rate, a.secs, a.scale).await;
                println!("{}", row(&r, a.secs, a.rate, a.scale));
            }
        }
    }
}

fn main() {
    let a = args();
    let started = std::time::Instant::now();
    if a.realtime {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        println!(
            "real time, multi-threaded, delays ÷{}, {} calls per unscaled second ({} calls/s of wall time) for {} unscaled s",
            a.scale,
            a.rate,
            f64::from(a.rate) * a.scale,
            a.secs
        );
        rt.block_on(all(&a));
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        println!(
            "paused clock, {} calls/s for {} s of virtual time",
            a.rate, a.secs
        );
        rt.block_on(all(&a));
    }
    println!("\n(wall time {:.1} s)", started.elapsed().as_secs_f64());
}
