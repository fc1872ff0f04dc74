//! The reference design's Celery TTS worker on apalis, done right: jobs are queued in
//! apalis-sqlite (default, no server) or Redis (`--backend redis://…`); the worker turns each
//! into a WAV through the Gemini client and a circuit breaker, against an embedded
//! Gemini-shaped server that injects faults (or the real API with `GEMINI_API_KEY`). A failed
//! attempt is not slept on: the job is re-scheduled in the backend with the `tts_task`
//! countdown (60 s × 2ⁿ, cap 3,600 s, jitter; `retryDelay` respected); while the breaker is
//! open jobs wait for it to half-open; permanent failures and exhausted jobs are
//! dead-lettered once.
//!
//! ```text
//! cargo run -p rampart-demo --example tts_worker -- produce -n 50
//! cargo run -p rampart-demo --example tts_worker -- work --base-delay 1s --for 20s
//! cargo run -p rampart-demo --example tts_worker -- --backend redis://127.0.0.1:6379 produce -n 50
//! cargo run -p rampart-demo --example tts_worker -- --backend redis://127.0.0.1:6379 work --base-delay 1s
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::Response;
use rampart::breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use rampart::client::{HttpClient, HttpError};
use rampart::dlq::{DeadLetterStore, ListQuery, SqliteStore};
use rampart::gemini::{decode_audio, tts_request, GeminiClassifier, SAMPLE_RATE};
use rampart::jobs::apalis_core::backend::ext::{with_codec::WithCodec, BackendExt};
use rampart::jobs::apalis_core::worker::builder::WorkerBuilder;
use rampart::jobs::{apalis_redis, apalis_sqlite};
use rampart::jobs::{
    BackendScheduler, Job, JobCodec, JobLayer, JobPolicy, JobQueue, Reschedule, Supervisor,
};
use rampart::{BoxError, Classify, Outcome};
use rampart_demo::{wav, FakeGemini, FaultMix};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A TTS worker on apalis with rampart's retry policy.
#[derive(Parser, Debug)]
struct Args {
    /// The job backend: sqlite://PATH or redis://HOST:PORT.
    #[arg(long, default_value = "sqlite://tts-jobs.db")]
    backend: String,
    /// The apalis queue.
    #[arg(long, default_value = "tts")]
    queue: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Enqueue N TTS jobs.
    Produce {
        /// Jobs to enqueue.
        #[arg(short = 'n', long, default_value_t = 50)]
        jobs: u32,
    },
    /// Run the worker until every job seen is settled, or for a while.
    Work {
        /// Where WAVs go.
        #[arg(long, default_value = "tts-out")]
        out: PathBuf,
        /// The dead-letter store (SQLite file).
        #[arg(long, default_value = "tts-dlq.db")]
        dlq: PathBuf,
        /// The first countdown (the reference task's is 60s; 1s for a quick demo).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        base_delay: Duration,
        /// Stop after this long.
        #[arg(long = "for", default_value = "30s", value_parser = humantime::parse_duration)]
        run_for: Duration,
        /// Fault mix of the embedded server.
        #[arg(long, default_value = "429=0.05,503=0.10,500=0.03,reset=0.03")]
        faults: FaultMix,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TtsJob {
    id: u32,
    text: String,
}

/// The handler: one TTS call through the breaker, the WAV written on success.
#[derive(Clone)]
struct Tts {
    client: CircuitBreaker<HttpClient, GeminiClassifier>,
    base: Arc<str>,
    key: Arc<str>,
    out: Arc<PathBuf>,
}

impl Service<TtsJob> for Tts {
    type Response = Response<Bytes>;
    type Error = rampart::Error<HttpError>;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<Bytes>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, job: TtsJob) -> Self::Future {
        let req = tts_request(
            &self.base,
            rampart::gemini::DEFAULT_MODEL,
            &self.key,
            &job.text,
            "Kore",
        );
        let fut = req.map(|r| self.client.call(r));
        let out = Arc::clone(&self.out);
        Box::pin(async move {
            let Ok(fut) = fut else {
                return Ok(Response::builder()
                    .status(400)
                    .body(Bytes::new())
                    .unwrap_or_default());
            };
            let res = fut.await?;
            if res.status().is_success() {
                if let Ok(pcm) = decode_audio(res.body()) {
                    let _ = tokio::fs::write(
                        out.join(format!("{}.wav", job.id)),
                        wav(&pcm, SAMPLE_RATE),
                    )
                    .await;
                }
            }
            Ok(res)
        })
    }
}

/// Counts the retries and their countdowns for the summary.
#[derive(Clone)]
struct Counting<R> {
    inner: R,
    countdowns: Arc<Mutex<Vec<Duration>>>,
}

impl<R: Reschedule> Reschedule for Counting<R> {
    fn schedule(
        &self,
        job: Job,
        after: Duration,
        key: String,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        if let Ok(mut c) = self.countdowns.lock() {
            c.push(after);
        }
        self.inner.schedule(job, after, key)
    }
}

fn classify(r: Result<&Response<Bytes>, &rampart::Error<HttpError>>) -> Outcome {
    match r {
        Ok(res) => GeminiClassifier::default().classify(Ok(res)),
        Err(e) => match e.inner() {
            Some(h) => GeminiClassifier::default().classify(Err(h)),
            None => Outcome::TRANSIENT,
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Produce { jobs } => {
            let mut q = JobQueue::open(&args.backend, &args.queue).await?;
            for id in 0..jobs {
                let text = format!("Job {id}: the quick brown fox jumps over the lazy dog.");
                q.push(Job::new("tts", &TtsJob { id, text })?, None).await?;
            }
            println!(
                "enqueued {jobs} tts job(s) on {} queue {}",
                q.url(),
                args.queue
            );
        }
        Cmd::Work {
            out,
            dlq,
            base_delay,
            run_for,
            faults,
        } => {
            tokio::fs::create_dir_all(&out).await?;
            let (base, key, _server) = match std::env::var("GEMINI_API_KEY") {
                Ok(k) => (
                    "https://generativelanguage.googleapis.com".to_owned(),
                    k,
                    None,
                ),
                Err(_) => {
                    let server = FakeGemini::start(faults, 7).await?;
                    (server.base_url(), "demo-key".to_owned(), Some(server))
                }
            };
            let breaker = CircuitBreakerLayer::new(
                CircuitBreakerConfig::builder().name("gemini_api").build()?,
            )
            .classifier(GeminiClassifier::default());
            let handler = Tts {
                client: breaker.layer(HttpClient::new()),
                base: base.into(),
                key: key.into(),
                out: Arc::new(out.clone()),
            };
            let backoff = rampart::Backoff::builder()
                .max_retries(3)
                .base_delay(base_delay)
                .max_delay(Duration::from_secs(3600).max(base_delay))
                .jitter(rampart::Jitter::Proportional(0.2))
                .build()?;
            let policy = JobPolicy::new("tts", backoff).breaker(breaker.handle());
            let store = SqliteStore::open_default(&dlq)?;
            let countdowns = Arc::new(Mutex::new(Vec::new()));
            let done = Arc::new(Mutex::new(0u32));
            let started = Instant::now();
            let stop = tokio::time::sleep(run_for);
            // Supervised: a backend that goes away (Redis restarting, the SQLite file locked)
            // ends apalis' worker; the supervisor logs it, backs off and starts it again.
            macro_rules! run {
                ($backend:expr) => {{
                    let backend = WithCodec::new($backend, JobCodec);
                    let scheduler = Counting {
                        inner: BackendScheduler::new(backend.clone()),
                        countdowns: Arc::clone(&countdowns),
                    };
                    let layer =
                        JobLayer::new(policy, classify, store.clone(), scheduler).typed::<TtsJob>();
                    Supervisor::default()
                        .run_until(stop, |stop| {
                            WorkerBuilder::new("tts-worker")
                                .backend(backend.clone().poll_with_strategy(
                                    rampart::jobs::PollEvery::new(Duration::from_millis(100)),
                                ))
                                .build(layer.layer(handler.clone()))
                                .run_until(stop)
                        })
                        .await?;
                }};
            }
            if let Some(path) = args.backend.strip_prefix("sqlite://") {
                let opts = apalis_sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true);
                let pool = apalis_sqlite::SqlitePool::connect_with(opts).await?;
                apalis_sqlite::SqliteStorage::setup(&pool).await?;
                let config = apalis_sqlite::Config::default().queue(&args.queue);
                run!(apalis_sqlite::SqliteStorage::<Job>::new(&pool).with_config(config));
            } else {
                let conn = apalis_redis::connect(args.backend.as_str()).await?;
                let config = rampart::jobs::redis_config(&args.queue);
                run!(apalis_redis::RedisStorage::<Job>::new(conn).with_config(config));
            }
            let wavs = std::fs::read_dir(&out)?.count();
            *done.lock().map_err(|_| "poisoned")? = u32::try_from(wavs).unwrap_or(u32::MAX);
            let dead = store.list(ListQuery::newest(10_000)).await?.records.len();
            let cds = countdowns.lock().map_err(|_| "poisoned")?.clone();
            println!("after {:.1?}:", started.elapsed());
            println!("  done (WAVs in {}) {:>6}", out.display(), wavs);
            println!("  retried               {:>6}", cds.len());
            if !cds.is_empty() {
                let min = cds.iter().min().copied().unwrap_or_default();
                let max = cds.iter().max().copied().unwrap_or_default();
                println!("    countdowns          {min:.1?} .. {max:.1?}");
            }
            println!(
                "  dead-lettered         {dead:>6}   (rampart --store sqlite://{} dlq list)",
                dlq.display()
            );
        }
    }
    Ok(())
}
