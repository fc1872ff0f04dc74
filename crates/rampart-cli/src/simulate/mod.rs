//! `rampart simulate`: the real rampart layers against a chaos-driven upstream, on tokio's
//! paused clock.

mod plot;
pub(crate) mod scenario;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rampart::breaker::State;
use rampart::chaos::{ChaosClassifier, ChaosError, ChaosLayer};
use rampart::config::Loader;
use rampart::dlq::{MemoryStore, RequestPart};
use rampart::{Classify, Outcome, Policy};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

use crate::simulate_args::SimulateArgs;
use scenario::Scenario;

/// One request of the simulation.
#[derive(Debug, Clone)]
struct Call {
    id: u64,
    key: Arc<str>,
}

/// Classifies the chaos upstream's results: the real classifier (each fault as what it
/// stands for), or the reference design's (every error transient, hints ignored).
#[derive(Debug, Clone, Copy)]
struct SimClassifier {
    naive: bool,
}

impl Classify<(), ChaosError<Infallible>> for SimClassifier {
    fn classify(&self, r: Result<&(), &ChaosError<Infallible>>) -> Outcome {
        match (self.naive, r) {
            (_, Ok(())) => Outcome::Success,
            (true, Err(_)) => Outcome::TRANSIENT,
            (false, r) => {
                ChaosClassifier(|_: Result<&(), &Infallible>| Outcome::Success).classify(r)
            }
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Second {
    pub(crate) offered: u64,
    pub(crate) attempts: u64,
    /// Calls started this second that succeeded / finished.
    pub(crate) ok: u64,
    pub(crate) done: u64,
    /// The worst breaker state seen: 0 closed, 1 half-open, 2 open.
    pub(crate) breaker: u8,
}

/// What one policy did in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    pub(crate) name: String,
    pub(crate) seconds: Vec<Second>,
    calls: u64,
    ok: u64,
    attempts: u64,
    p50: Duration,
    p99: Duration,
    peak_load: f64,
    dead_letters: Vec<(String, u64)>,
    transitions: u64,
    opens: u64,
    /// The policy has no breaker (it is disabled, still counting).
    pub(crate) breaker_off: bool,
}

#[derive(Default)]
struct Rec {
    seconds: Vec<Second>,
    latencies: Vec<Duration>,
    late_attempts: u64,
}

fn lock(r: &Mutex<Rec>) -> std::sync::MutexGuard<'_, Rec> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sec_index(t: Duration, len: usize) -> usize {
    usize::try_from(t.as_secs())
        .unwrap_or(usize::MAX)
        .min(len.saturating_sub(1))
}

/// Runs `policy` through `scenario` on a fresh paused runtime.
fn run_one(
    name: &str,
    policy: &Policy,
    naive: bool,
    scenario: &Scenario,
    seed: u64,
    progress: &ProgressBar,
) -> Result<Run, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(simulate(name, policy, naive, scenario, seed, progress))
}

async fn simulate(
    name: &str,
    policy: &Policy,
    naive: bool,
    scenario: &Scenario,
    seed: u64,
    progress: &ProgressBar,
) -> Result<Run, String> {
    let secs = usize::try_from(scenario.duration.as_secs().max(1))
        .map_err(|_| "the scenario is too long".to_owned())?;
    let rec = Arc::new(Mutex::new(Rec {
        seconds: vec![Second::default(); secs],
        latencies: Vec::new(),
        late_attempts: 0,
    }));
    let start = Instant::now();

    let first = scenario
        .chaos
        .first()
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let chaos = ChaosLayer::new(first)
        .seed(seed)
        .epoch(start)
        .key_by(|c: &Call| Some(&*c.key));
    let chaos_handle = chaos.handle();
    let upstream = chaos.layer(service_fn(|_: Call| async { Ok::<(), Infallible>(()) }));
    let counted = {
        let rec = rec.clone();
        let end = scenario.duration;
        tower::util::MapRequest::new(upstream, move |c: Call| {
            let t = start.elapsed();
            let mut r = lock(&rec);
            if t >= end {
                // Retries of the last calls, after the offered load ended: in the totals,
                // not in the plot.
                r.late_attempts += 1;
            } else if let Some(s) = r.seconds.get_mut(sec_index(t, secs)) {
                s.attempts += 1;
            }
            c
        })
    };
    let extract = |c: &Call| RequestPart {
        summary: format!("call {} key {}", c.id, c.key),
        payload: serde_json::json!({ "id": c.id, "key": &*c.key }),
    };
    let layer = policy.layer(
        SimClassifier { naive },
        MemoryStore::new(usize::MAX),
        extract,
    );
    let breaker = layer.breaker();
    let mut transitions = breaker.subscribe();
    let svc = layer.layer(counted);

    // The breaker sampler, the chaos schedule and the progress bar: every 100 ms.
    let sampler = {
        let rec = rec.clone();
        let breaker = breaker.clone();
        let chaos_steps = scenario.chaos.clone();
        let progress = progress.clone();
        let duration = scenario.duration;
        tokio::spawn(async move {
            let mut next_step = 1;
            let (mut count, mut opens) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let t = start.elapsed();
                while let Some((at, spec)) = chaos_steps.get(next_step) {
                    if *at > t {
                        break;
                    }
                    chaos_handle.set_spec(spec.clone());
                    next_step += 1;
                }
                loop {
                    match transitions.try_recv() {
                        Ok(tr) => {
                            count += 1;
                            if tr.to == State::Open {
                                opens += 1;
                            }
                        }
                        Err(TryRecvError::Lagged(n)) => count += n,
                        Err(_) => break,
                    }
                }
                let level = match breaker.state() {
                    State::Closed | State::Disabled => 0,
                    State::HalfOpen => 1,
                    _ => 2,
                };
                if t < duration {
                    if let Some(s) = lock(&rec).seconds.get_mut(sec_index(t, secs)) {
                        s.breaker = s.breaker.max(level);
                    }
                    progress.set_position(t.as_secs());
                } else {
                    return (count, opens);
                }
            }
        })
    };

    // The offered load: evenly spaced calls at each step's rate, `at + k / rate`.
    let mut calls = tokio::task::JoinSet::new();
    let mut id = 0u64;
    let keys: Vec<Arc<str>> = (0..scenario.keys.max(1))
        .map(|k| Arc::from(format!("k{k}")))
        .collect();
    for (n, (at, rate)) in scenario.load.iter().enumerate() {
        let until = scenario
            .load
            .get(n + 1)
            .map_or(scenario.duration, |(next, _)| *next)
            .min(scenario.duration);
        if *rate <= 0.0 {
            continue;
        }
        for k in 0u64.. {
            let t = at.saturating_add(Duration::from_secs_f64(k as f64 / rate));
            if t >= until {
                break;
            }
            tokio::time::sleep_until(start + t).await;
            let key = keys
                .get(usize::try_from(id % keys.len() as u64).unwrap_or(0))
                .cloned()
                .unwrap_or_else(|| Arc::from("k0"));
            let call = Call { id, key };
            let svc = svc.clone();
            let rec = rec.clone();
            let i = sec_index(t, secs);
            if let Some(s) = lock(&rec).seconds.get_mut(i) {
                s.offered += 1;
            }
            calls.spawn(async move {
                let t0 = Instant::now();
                let ok = svc.oneshot(call).await.is_ok();
                let mut r = lock(&rec);
                r.latencies.push(t0.elapsed());
                if let Some(s) = r.seconds.get_mut(i) {
                    s.done += 1;
                    s.ok += u64::from(ok);
                }
            });
            id += 1;
        }
    }
    while calls.join_next().await.is_some() {}
    let (transitions, opens) = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    progress.set_position(scenario.duration.as_secs());

    let mut rec = lock(&rec);
    let Rec {
        seconds,
        latencies,
        late_attempts,
    } = &mut *rec;
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies.get(i).copied().unwrap_or_default()
    };
    let calls_n: u64 = seconds.iter().map(|s| s.done).sum();
    let ok: u64 = seconds.iter().map(|s| s.ok).sum();
    let attempts: u64 = seconds.iter().map(|s| s.attempts).sum::<u64>() + *late_attempts;
    let peak_load = seconds
        .windows(10.min(seconds.len()).max(1))
        .map(|w| {
            let off: u64 = w.iter().map(|s| s.offered).sum();
            let att: u64 = w.iter().map(|s| s.attempts).sum();
            if off == 0 {
                0.0
            } else {
                att as f64 / off as f64
            }
        })
        .fold(0.0, f64::max);
    let mut dead_letters: Vec<(String, u64)> = layer
        .dead_letters()
        .recorded
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.as_str().to_owned(), *n))
        .collect();
    dead_letters.sort();
    Ok(Run {
        name: name.to_owned(),
        seconds: seconds.clone(),
        calls: calls_n,
        ok,
        attempts,
        p50: pct(0.50),
        p99: pct(0.99),
        peak_load,
        dead_letters,
        transitions,
        opens,
        breaker_off: policy.breaker().is_none(),
    })
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The table: one row per policy.
pub(crate) fn table(runs: &[Run]) -> String {
    let mut rows = vec![[
        "policy".to_owned(),
        "success".to_owned(),
        "attempts/call".to_owned(),
        "peak load÷offered".to_owned(),
        "p50".to_owned(),
        "p99".to_owned(),
        "breaker".to_owned(),
        "dead letters".to_owned(),
    ]];
    for r in runs {
        let calls = r.calls.max(1) as f64;
        let dl = if r.dead_letters.is_empty() {
            "-".to_owned()
        } else {
            r.dead_letters
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            r.name.clone(),
            format!("{:.2}%", r.ok as f64 * 100.0 / calls),
            format!("{:.2}", r.attempts as f64 / calls),
            format!("{:.2}", r.peak_load),
            fmt_dur(r.p50),
            fmt_dur(r.p99),
            if r.breaker_off {
                "off".to_owned()
            } else {
                format!("{} transitions, {} opens", r.transitions, r.opens)
            },
            dl,
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i == 0 || i == 7 {
                line.push_str(&format!("{c:<w$}  "));
            } else {
                line.push_str(&format!("{c:>w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `rampart simulate`.
pub(crate) fn main(args: SimulateArgs) -> Result<(), crate::Fail> {
    let scenario = {
        let path = std::path::Path::new(&args.scenario);
        if path.extension().is_some_and(|e| e == "toml") || path.is_file() {
            Scenario::from_file(path)
        } else {
            Scenario::built_in(&args.scenario, args.duration, args.rate)
        }
    }
    .map_err(crate::usage)?;

    let mut loader = Loader::new().env(|_| None);
    if let Some(c) = &args.config {
        loader = loader.file(c);
    }
    if let Some(p) = &args.profile {
        loader = loader.profile(p.clone());
    }
    let policies = loader.load().map_err(|e| crate::usage(e.to_string()))?;
    let mut chosen: Vec<(String, Policy, bool)> = Vec::new();
    let names: Vec<String> = if args.policies.is_empty() {
        ["tts", "gemini_api", "database", "redis"]
            .map(String::from)
            .to_vec()
    } else {
        args.policies.clone()
    };
    for n in &names {
        let p = policies.get(n).ok_or_else(|| {
            let known: Vec<&str> = policies.iter().map(|(k, _)| k).collect();
            crate::usage(format!(
                "--policy {n:?}: no such policy; known: {}",
                known.join(", ")
            ))
        })?;
        chosen.push((n.clone(), p.clone().with_seed(args.seed), false));
    }
    for c in &args.compare {
        if c == "naive" {
            let p = Policy::builder("naive")
                .budget(None)
                .breaker(None)
                .seed(Some(args.seed))
                .build()
                .map_err(|e| crate::op(e.to_string()))?;
            chosen.push(("naive (reference)".to_owned(), p, true));
        }
    }

    eprintln!(
        "simulating {} polic{} × scenario {} ({} virtual, seed {})",
        chosen.len(),
        if chosen.len() == 1 { "y" } else { "ies" },
        scenario.name,
        humantime::format_duration(scenario.duration),
        args.seed
    );
    let mut runs = Vec::new();
    for (name, policy, naive) in &chosen {
        let bar = ProgressBar::with_draw_target(
            Some(scenario.duration.as_secs()),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} virtual s")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name.clone());
        let wall = std::time::Instant::now();
        let run = run_one(name, policy, *naive, &scenario, args.seed, &bar).map_err(crate::op)?;
        bar.finish_and_clear();
        eprintln!(
            "  {name}: {} calls, {} virtual s in {:.2} s",
            run.calls,
            scenario.duration.as_secs(),
            wall.elapsed().as_secs_f64()
        );
        runs.push(run);
    }

    println!(
        "scenario {} — {} virtual, seed {}",
        scenario.name,
        humantime::format_duration(scenario.duration),
        args.seed
    );
    print!("{}", table(&runs));

    if !args.no_plot {
        let svg = args.plot.with_extension("svg");
        let png = args.plot.with_extension("png");
        let title = format!("scenario {} (seed {})", scenario.name, args.seed);
        plot::write(&runs, &title, &svg, &png).map_err(crate::op)?;
        eprintln!("plot: {} and {}", svg.display(), png.display());
    }
    Ok(())
}

/// For tests: the table of `policies` (preset names) in `scenario`.
#[cfg(test)]
fn runs_of(policies: &[&str], scenario: &Scenario, seed: u64) -> Vec<Run> {
    let bar = ProgressBar::hidden();
    policies
        .iter()
        .filter_map(|n| {
            let p = Policy::preset(n)?.build().ok()?.with_seed(seed);
            run_one(n, &p, false, scenario, seed, &bar).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sc(name: &str, secs: u64, rate: f64) -> Scenario {
        Scenario::built_in(name, Duration::from_secs(secs), rate).unwrap()
    }

    #[test]
    fn same_seed_same_table_other_seed_another() {
        let s = sc("transient=20%", 60, 50.0);
        let a = runs_of(&["tts", "redis"], &s, 7);
        let b = runs_of(&["tts", "redis"], &s, 7);
        let c = runs_of(&["tts", "redis"], &s, 8);
        assert_eq!(a, b);
        assert_eq!(table(&a), table(&b));
        assert_ne!(a, c);
    }

    /// Each scenario's fault shape, measured at the upstream: with retries off and no
    /// breaker, every call is one attempt and fails exactly when the chaos says.
    #[test]
    fn scenarios_have_their_shape_at_the_upstream() {
        let p = Policy::builder("probe")
            .retry(false)
            .breaker(None)
            .seed(Some(1))
            .build()
            .unwrap();
        let bar = ProgressBar::hidden();
        let run = |name: &str| run_one(name, &p, false, &sc(name, 300, 20.0), 1, &bar).unwrap();
        let ok_share = |r: &Run, from: usize, to: usize| {
            let w = &r.seconds[from..to];
            w.iter().map(|s| s.ok).sum::<u64>() as f64
                / w.iter().map(|s| s.done).sum::<u64>() as f64
        };

        let t = run("transient=20%");
        assert_eq!(t.calls, 6_000);
        assert_eq!(t.attempts, 6_000);
        assert!(
            (ok_share(&t, 0, 300) - 0.8).abs() < 0.02,
            "{}",
            ok_share(&t, 0, 300)
        );

        let o = run("outage");
        assert_eq!(ok_share(&o, 0, 60), 1.0);
        assert_eq!(ok_share(&o, 60, 300), 0.0);

        let r = run("outage-then-recovery");
        assert_eq!(ok_share(&r, 0, 60), 1.0);
        assert_eq!(ok_share(&r, 60, 90), 0.0);
        assert_eq!(ok_share(&r, 90, 300), 1.0);

        let s = run("retry-after-storm");
        assert_eq!(ok_share(&s, 60, 120), 0.0);
        assert_eq!(ok_share(&s, 120, 300), 1.0);

        let k = run("one-key-down");
        assert!((ok_share(&k, 0, 300) - 0.9).abs() < 1e-9);

        let f = run("flapping");
        assert_eq!(ok_share(&f, 60, 70), 0.0);
        assert_eq!(ok_share(&f, 70, 90), 1.0);
        assert_eq!(ok_share(&f, 90, 100), 0.0);
        assert_eq!(ok_share(&f, 240, 300), 1.0);

        let l = run("latency-spike");
        assert_eq!(ok_share(&l, 0, 300), 1.0);
        assert!(l.p99 >= Duration::from_secs(1), "{:?}", l.p99);
        assert!(l.p50 < Duration::from_millis(100), "{:?}", l.p50);
    }

    /// A policy known to be bad shows as bad: the reference design's plain retry (no
    /// budget, no breaker) multiplies the load on a dead upstream by its four attempts,
    /// while a preset with a budget and breaker sheds it.
    #[test]
    fn the_naive_baseline_amplifies_an_outage() {
        let s = sc("outage", 120, 50.0);
        let bar = ProgressBar::hidden();
        let naive = Policy::builder("naive")
            .budget(None)
            .breaker(None)
            .seed(Some(1))
            .build()
            .unwrap();
        let n = run_one("naive", &naive, true, &s, 1, &bar).unwrap();
        let good = runs_of(&["gemini_api"], &s, 1).remove(0);
        assert!(n.peak_load > 3.5, "naive peak {}", n.peak_load);
        assert!(
            good.peak_load < n.peak_load / 2.0,
            "{} vs {}",
            good.peak_load,
            n.peak_load
        );
        assert!(good.opens >= 1);
        assert_eq!(n.opens, 0);
    }
}
