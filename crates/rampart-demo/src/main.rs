//! The main demo: N text-to-speech requests through the `gemini_api` policy — retries with
//! backoff, a retry budget, `retryDelay` hints, a circuit breaker, per-attempt timeouts and
//! a durable file dead-letter queue — against an embedded Gemini-shaped server that injects
//! faults (or, with `GEMINI_API_KEY` and `--base-url`, the real API).
//!
//! Run with `cargo run -p rampart-demo` (`-- --help` for the flags).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rampart::breaker::{CircuitBreakerConfig, State};
use rampart::client::HttpClient;
use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, SqliteStore};
use rampart::gemini::{decode_audio, tts_request, GeminiClassifier, SAMPLE_RATE};
use rampart::Policy;
use rampart_demo::{wav, AttemptCounter, FakeGemini, FaultMix};
use tower::{Layer, Service, ServiceExt};

/// Text-to-speech through rampart, against an embedded fault-injecting Gemini (default) or the real API.
#[derive(Parser, Debug)]
#[command(version, long_about = None)]
struct Args {
    /// Requests to make.
    #[arg(short = 'n', long, default_value_t = 200)]
    requests: u32,
    /// Requests started per second (an open loop, like real traffic: a request starts on
    /// time whether or not earlier ones have finished).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// At most this many requests in flight at once (later ones wait for a slot).
    #[arg(short, long, default_value_t = 256)]
    concurrency: usize,
    /// Seed of the embedded server's faults and of the retry jitter.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fault mix of the embedded server: fractions of 429 (RESOURCE_EXHAUSTED with retryDelay),
    /// 503 (model overloaded), 500, slow (past the attempt timeout) and reset (dropped connection).
    #[arg(
        long,
        default_value = "429=0.05,503=0.08,500=0.03,slow=0.02,reset=0.03"
    )]
    faults: FaultMix,
    /// An outage of the embedded server, START+LENGTH from the first request: every request
    /// gets a 503. The breaker trips on >= 50 % failures over 10 s once it has seen 20 calls,
    /// so at the default rate the default outage opens it within a second. "none" for no
    /// outage.
    #[arg(long, default_value = "1s+2500ms")]
    outage: String,
    /// The API's base URL; the real one is https://generativelanguage.googleapis.com.
    /// Used only with GEMINI_API_KEY set.
    #[arg(long, default_value = "https://generativelanguage.googleapis.com")]
    base_url: String,
    /// The TTS model.
    #[arg(long, default_value = rampart::gemini::DEFAULT_MODEL)]
    model: String,
    /// The prebuilt voice.
    #[arg(long, default_value = "Kore")]
    voice: String,
    /// Per-attempt timeout.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    attempt_timeout: Duration,
    /// Overall deadline of one request, retries and waits included.
    #[arg(long, default_value = "6s", value_parser = humantime_duration)]
    deadline: Duration,
    /// How long the circuit stays open before it lets probes through.
    #[arg(long, default_value = "500ms", value_parser = humantime_duration)]
    recovery_timeout: Duration,
    /// Where the WAV files and the dead-letter store (`dlq.sqlite`) go.
    #[arg(long, default_value = "target/gemini_tts")]
    out: PathBuf,
    /// Log every retry, transition and dead letter (tracing, to stderr).
    #[arg(short, long)]
    verbose: bool,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 500ms or 2s"))
}

fn parse_outage(s: &str) -> Result<Option<(Duration, Duration)>, String> {
    if s == "none" {
        return Ok(None);
    }
    let (a, b) = s
        .split_once('+')
        .ok_or_else(|| format!("--outage {s:?}: expected START+LENGTH, e.g. 1s+1500ms, or none"))?;
    Ok(Some((humantime_duration(a)?, humantime_duration(b)?)))
}

#[derive(Default)]
struct Tally {
    first_try: u32,
    after_retry: u32,
    failed: u32,
    latencies: Vec<Duration>,
}

/// `--verbose`: every tracing event at DEBUG or above, one line each on stderr. A minimal
/// subscriber (no spans), so that the demo does not compile `tracing-subscriber` and its
/// dependencies for one flag.
struct StderrEvents {
    start: Instant,
}

impl tracing::Subscriber for StderrEvents {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        // Less verbose levels compare lower: ERROR < WARN < INFO < DEBUG < TRACE.
        *meta.level() <= tracing::Level::DEBUG
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = if field.name() == "message" {
                    write!(self.0, " {value:?}")
                } else {
                    write!(self.0, " {}={value:?}", field.name())
                };
            }
        }
        let meta = event.metadata();
        let mut line = Line(format!(
            "{:>8.3}s {:>5} {}:",
            self.start.elapsed().as_secs_f64(),
            meta.level(),
            meta.target()
        ));
        event.record(&mut line);
        eprintln!("{}", line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.verbose {
        tracing::subscriber::set_global_default(StderrEvents {
            start: Instant::now(),
        })?;
    }
    let outage = parse_outage(&args.outage)?;
    std::fs::create_dir_all(args.out.join("wav"))?;

    // The API: the real one with a key, otherwise the embedded Gemini-shaped server.
    let (base, key, fake) = match std::env::var("GEMINI_API_KEY") {
        Ok(key) if !key.is_empty() => (args.base_url.clone(), key, None),
        _ => {
            let mix = FaultMix {
                outage,
                ..args.faults
            };
            let server = FakeGemini::start(mix, args.seed).await?;
            (server.base_url(), "demo-key".to_owned(), Some(server))
        }
    };

    // The policy: the gemini_api preset (5 retries, 0.5 s, ×2, 10 s cap, ±10 %), with a
    // per-attempt timeout, an overall deadline and a quick breaker for the demo.
    let policy = Policy::preset("gemini_api")
        .ok_or("no gemini_api preset")?
        .seed(Some(args.seed))
        .attempt_timeout(Some(args.attempt_timeout))
        .deadline(Some(args.deadline))
        // The preset's rate-based breaker (≥ 50 % failures over 10 s, at least 10 calls;
        // 3 probes, 2 failures reopen), opening for the demo's shorter recovery timeout at
        // first and growing to 4× it. The policy's default budget (30 % + 10/s) funds the
        // 20 % fault rate.
        .breaker(Some(
            CircuitBreakerConfig::builder()
                .consecutive_failures(None)
                .window(rampart::default_breaker().window())
                .failure_rate(0.5)
                .minimum_calls(rampart::default_breaker().minimum_calls())
                .recovery_timeout(args.recovery_timeout)
                .max_recovery_timeout(args.recovery_timeout.saturating_mul(4))
                .build()?,
        ))
        .build()?;
    let dlq_path = args.out.join("dlq.sqlite");
    let store = SqliteStore::open(&dlq_path, 100_000)?;
    let dlq_before = store.stats().await?.records;
    let layer = policy.layer(
        GeminiClassifier::default(),
        store.clone(),
        HttpExtractor::default()
            .keep_header("content-type")
            .keep_header("x-request-id"),
    );
    let breaker = layer.breaker();
    let transitions: Arc<Mutex<Vec<(Duration, State, State)>>> = Arc::default();
    let started = Instant::now();
    {
        let mut rx = breaker.subscribe();
        let transitions = transitions.clone();
        tokio::spawn(async move {
            while let Ok(t) = rx.recv().await {
                transitions.lock().unwrap_or_else(|e| e.into_inner()).push((
                    started.elapsed(),
                    t.from,
                    t.to,
                ));
            }
        });
    }
    let attempts = AttemptCounter::default();
    let counting = {
        let attempts = attempts.clone();
        let client = HttpClient::new();
        tower::service_fn(move |req: http::Request<Bytes>| {
            if let Some(id) = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
            {
                attempts.hit(id);
            }
            client.clone().oneshot(req)
        })
    };
    let svc = layer.layer(counting);

    let bar = ProgressBar::new(u64::from(args.requests));
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} requests  {msg}",
    )?);
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Open loop: request i starts at i / rate seconds, each in its own task, at most
    // `concurrency` in flight.
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!(
            "--rate {}: expected a positive number of requests per second",
            args.rate
        )
        .into());
    }
    let interval = Duration::try_from_secs_f64(1.0 / args.rate)
        .map_err(|e| format!("--rate {}: {e}", args.rate))?
        .max(Duration::from_nanos(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(
        args.concurrency.clamp(1, 1 << 20),
    ));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut workers = Vec::new();
    for i in 0..args.requests {
        tick.tick().await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (svc, bar, tally, attempts, breaker) = (
            svc.clone(),
            bar.clone(),
            tally.clone(),
            attempts.clone(),
            breaker.clone(),
        );
        let (base, key, model, voice, out) = (
            base.clone(),
            key.clone(),
            args.model.clone(),
            args.voice.clone(),
            args.out.clone(),
        );
        workers.push(tokio::spawn(async move {
            let _slot = slot;
            let id = format!("req-{i:05}");
            let text = format!("Say cheerfully: have a wonderful day! ({id})");
            let mut req = match tts_request(&base, &model, &key, &text, &voice) {
                Ok(r) => r,
                Err(e) => {
                    bar.println(format!("{id}: cannot build the request: {e}"));
                    return;
                }
            };
            let Ok(value) = http::HeaderValue::from_str(&id) else {
                return;
            };
            req.headers_mut().insert("x-request-id", value.clone());
            // generateContent is a POST: an Idempotency-Key makes it safe to retry after a
            // connection reset (rampart's method-safety rule).
            req.headers_mut().insert("idempotency-key", value);
            let t = Instant::now();
            let mut svc = svc.clone();
            let result = match svc.ready().await {
                Ok(s) => s.call(req).await,
                Err(e) => Err(e),
            };
            let took = t.elapsed();
            let ok = match &result {
                Ok(res) if res.status().is_success() => match decode_audio(res.body()) {
                    Ok(pcm) => std::fs::write(
                        out.join("wav").join(format!("{id}.wav")),
                        wav(&pcm, SAMPLE_RATE),
                    )
                    .is_ok(),
                    Err(e) => {
                        bar.println(format!("{id}: {e}"));
                        false
                    }
                },
                _ => false,
            };
            {
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                t.latencies.push(took);
                match (ok, attempts.get(&id)) {
                    (true, 0 | 1) => t.first_try += 1,
                    (true, _) => t.after_retry += 1,
                    (false, _) => t.failed += 1,
                }
            }
            bar.set_message(format!("breaker {}", breaker.state()));
            bar.inc(1);
        }));
    }
    for w in workers {
        w.await?;
    }
    bar.finish_with_message(format!("done, breaker {}", breaker.state()));

    let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let mut lat = t.latencies.clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let total_attempts: u32 = (0..args.requests)
        .map(|i| attempts.get(&format!("req-{i:05}")))
        .sum();
    let dl = layer.dead_letters();
    let by_reason: BTreeMap<&str, u64> =
        dl.recorded.iter().map(|(r, n)| (r.as_str(), *n)).collect();

    println!();
    println!(
        "  rampart × Gemini TTS — {} requests at {}/s, against {}",
        args.requests,
        args.rate,
        if fake.is_some() {
            "the embedded fault-injecting server"
        } else {
            base.as_str()
        }
    );
    println!("  {:-<58}", "");
    let row = |k: &str, v: String| println!("  {k:<40} {v:>16}");
    row("succeeded on the first attempt", t.first_try.to_string());
    row("succeeded after retrying", t.after_retry.to_string());
    row("failed (dead-lettered)", t.failed.to_string());
    for (reason, n) in &by_reason {
        row(&format!("  dead letters: {reason}"), n.to_string());
    }
    row("attempts made", total_attempts.to_string());
    row(
        "attempts per request",
        format!(
            "{:.2}",
            f64::from(total_attempts) / f64::from(args.requests.max(1))
        ),
    );
    let tr = transitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    row("breaker transitions", tr.len().to_string());
    for (at, from, to) in tr.iter().take(12) {
        row(&format!("  at {:.2?}", at), format!("{from} → {to}"));
    }
    row("latency p50", format!("{:.1?}", pct(0.50)));
    row("latency p99", format!("{:.1?}", pct(0.99)));
    if let Some(server) = &fake {
        let s = server.stats();
        row(
            "server: requests / faults injected",
            format!("{} / {}", s.requests, s.faults),
        );
    }
    println!("  {:-<58}", "");
    let stored = store.list(ListQuery::newest(1)).await?;
    println!("  WAV files:     {}", args.out.join("wav").display());
    println!(
        "  dead letters:  {} ({} new, {} in the store)",
        dlq_path.display(),
        store.stats().await?.records.saturating_sub(dlq_before),
        store.stats().await?.records
    );
    if let Some(r) = stored.records.first() {
        println!(
            "  newest:        {} {} {} — {}",
            r.id, r.reason, r.request.summary, r.error
        );
    }
    if dlq_path == std::path::Path::new("target/gemini_tts/dlq.sqlite") {
        println!("  inspect them:  cargo run -p rampart-cli -- dlq list");
    } else {
        println!(
            "  inspect them:  cargo run -p rampart-cli -- --store sqlite:{} dlq list",
            dlq_path.display()
        );
    }
    Ok(())
}
