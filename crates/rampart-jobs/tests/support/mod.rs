//! Shared pieces of the job tests: a counting upstream, a recording scheduler, checks, the
//! backends (with backend time control), the settle loop every backend's 1,000-job test runs,
//! a worker running in the background, and a private `redis-server`.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::error::WorkerError;
use futures_util::future::BoxFuture;
use rampart_core::{BoxError, CircuitOpen, Outcome};
use rampart_dlq::{DeadLetterRecord, DeadLetterStore, ListQuery};
use rampart_jobs::{Job, Refusal, Reschedule};

#[cfg(feature = "postgres")]
pub mod pg_backend;
#[cfg(feature = "redis")]
pub mod redis_backend;
// The dead-letter store tests' private redis-server (one copy for both crates).
#[path = "../../../rampart-dlq/tests/support/redis_server.rs"]
pub mod redis_server;
#[cfg(feature = "sqlite")]
pub mod sqlite_backend;

/// What the upstream does with call `attempt` (0-based) of job `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Ok,
    Transient,
    Throttled(u64),
    Permanent,
    Hang,
    /// Succeeds after this many milliseconds (real time).
    OkAfter(u64),
}

impl Act {
    pub fn succeeds(self) -> bool {
        matches!(self, Act::Ok | Act::OkAfter(_))
    }
}

#[derive(Debug, Clone)]
pub struct UpErr(pub Act);

impl fmt::Display for UpErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream said {:?} (api_key=sk-live-0123456789abcdef)",
            self.0
        )
    }
}

impl std::error::Error for UpErr {}

impl Refusal for UpErr {
    fn circuit_open(&self) -> Option<&CircuitOpen> {
        None
    }
}

pub fn classify(r: Result<&(), &UpErr>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err(UpErr(Act::Throttled(s))) => Outcome::Throttled {
            retry_after: Some(Duration::from_secs(*s)),
        },
        Err(UpErr(Act::Permanent)) => Outcome::Permanent,
        Err(_) => Outcome::TRANSIENT,
    }
}

/// The 20 % transient upstream: job `n`'s call `a` fails when a stable hash says so; some
/// jobs always fail, some fail for good.
pub fn twenty_percent(n: u64, a: u32) -> Act {
    if n % 250 == 7 {
        return Act::Transient; // never succeeds: exhausts its retries
    }
    if n % 333 == 5 {
        return Act::Permanent;
    }
    if n % 97 == 3 && a == 0 {
        return Act::Throttled(900); // a Retry-After hint longer than the backoff
    }
    let h = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(a).wrapping_mul(0xBF58_476D_1CE4_E5B9))
    .wrapping_mul(0x94D0_49BB_1331_11EB);
    if h % 100 < 20 {
        Act::Transient
    } else {
        Act::Ok
    }
}

/// A handler over `u64` job arguments that counts every call per job.
#[derive(Clone)]
pub struct Upstream {
    pub calls: Arc<Mutex<HashMap<u64, u32>>>,
    pub successes: Arc<Mutex<HashMap<u64, u32>>>,
    pub plan: Arc<dyn Fn(u64, u32) -> Act + Send + Sync>,
    /// When set, `OkAfter` calls run one at a time.
    pub serial: Option<Arc<tokio::sync::Semaphore>>,
}

impl Upstream {
    pub fn new(plan: impl Fn(u64, u32) -> Act + Send + Sync + 'static) -> Self {
        Upstream {
            calls: Arc::default(),
            successes: Arc::default(),
            plan: Arc::new(plan),
            serial: None,
        }
    }

    /// An upstream whose `OkAfter` calls run one at a time (the worker still takes every job
    /// it can; they wait here, in flight).
    pub fn serial(plan: impl Fn(u64, u32) -> Act + Send + Sync + 'static) -> Self {
        Upstream {
            serial: Some(Arc::new(tokio::sync::Semaphore::new(1))),
            ..Upstream::new(plan)
        }
    }

    pub fn calls(&self, n: u64) -> u32 {
        self.calls.lock().unwrap().get(&n).copied().unwrap_or(0)
    }

    pub fn done(&self) -> usize {
        self.successes.lock().unwrap().len()
    }

    pub fn max_successes(&self) -> u32 {
        self.successes
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl tower_service::Service<u64> for Upstream {
    type Response = ();
    type Error = UpErr;
    type Future = Pin<Box<dyn Future<Output = Result<(), UpErr>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpErr>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u64) -> Self::Future {
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            let c = calls.entry(n).or_insert(0);
            *c += 1;
            *c - 1
        };
        let act = (self.plan)(n, attempt);
        let successes = Arc::clone(&self.successes);
        let serial = self.serial.clone();
        Box::pin(async move {
            match act {
                Act::Ok => {
                    *successes.lock().unwrap().entry(n).or_insert(0) += 1;
                    Ok(())
                }
                Act::OkAfter(ms) => {
                    let _permit = match &serial {
                        Some(s) => Some(s.acquire().await.unwrap()),
                        None => None,
                    };
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    *successes.lock().unwrap().entry(n).or_insert(0) += 1;
                    Ok(())
                }
                Act::Hang => {
                    std::future::pending::<()>().await;
                    Ok(())
                }
                other => Err(UpErr(other)),
            }
        })
    }
}

/// A scheduled retry: (job, attempt scheduled, countdown, when it was scheduled).
pub type Scheduled = (u64, u32, Duration, std::time::SystemTime);

/// A scheduler that records every countdown it is asked for and passes the job on.
#[derive(Clone)]
pub struct Recording<R> {
    pub inner: R,
    pub seen: Arc<Mutex<Vec<Scheduled>>>,
}

impl<R> Recording<R> {
    pub fn new(inner: R) -> Self {
        Recording {
            inner,
            seen: Arc::default(),
        }
    }

    pub fn seen(&self) -> Vec<(u64, u32, Duration)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(n, a, d, _)| (*n, *a, *d))
            .collect()
    }

    /// When the retry of job `n` for `attempt` was due, by its countdown: the scheduling time
    /// plus the countdown, in seconds since the Unix epoch.
    pub fn due_at(&self, n: u64, attempt: u32) -> Option<f64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(m, a, _, _)| *m == n && *a == attempt)
            .map(|(_, _, d, at)| {
                (*at + *d)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            })
    }
}

impl<R: Reschedule> Reschedule for Recording<R> {
    fn schedule(
        &self,
        job: Job,
        after: Duration,
        key: String,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let n = job.args.as_u64().unwrap_or(u64::MAX);
        self.seen
            .lock()
            .unwrap()
            .push((n, job.attempt, after, std::time::SystemTime::now()));
        self.inner.schedule(job, after, key)
    }
}

/// Every record in `store`.
pub async fn all_records(store: &impl DeadLetterStore) -> Vec<DeadLetterRecord> {
    let mut out = Vec::new();
    let mut q = ListQuery::newest(500);
    loop {
        let page = store.list(q.clone()).await.unwrap();
        assert!(page.unreadable.is_empty());
        let n = page.records.len();
        out.extend(page.records);
        match page.next {
            Some(c) if n > 0 => q.before = Some(c),
            _ => break,
        }
    }
    out
}

/// The countdown of retry `k` (1-based: the delay before attempt k+1) under `tts_task`:
/// 60·2^(k-1) s ±20 %, capped at 3,600 s.
pub fn check_countdown(retry_index: u32, d: Duration, hint: Option<u64>) {
    if let Some(h) = hint {
        assert_eq!(d, Duration::from_secs(h), "a longer Retry-After hint wins");
        return;
    }
    let nominal = (60.0 * 2f64.powi(i32::try_from(retry_index).unwrap())).min(3600.0);
    let (lo, hi) = (nominal * 0.8, (nominal * 1.2).min(3600.0));
    let s = d.as_secs_f64();
    assert!(
        s >= lo - 1e-6 && s <= hi + 1e-6,
        "retry {retry_index}: countdown {s}s outside [{lo}, {hi}]"
    );
}

/// The settlement checks of the 1,000-job test, shared by every backend.
pub async fn check_settled(
    up: &Upstream,
    records: &[DeadLetterRecord],
    seen: &[(u64, u32, Duration)],
    jobs: u64,
    plan: impl Fn(u64, u32) -> Act,
) {
    let mut dead: HashMap<u64, &DeadLetterRecord> = HashMap::new();
    for r in records {
        let n = r.request.payload["args"].as_u64().unwrap();
        assert!(dead.insert(n, r).is_none(), "job {n} dead-lettered twice");
        assert!(
            !r.error.contains("sk-live-0123456789abcdef"),
            "the secret reached the store"
        );
        assert_eq!(
            r.attempts,
            up.calls(n),
            "job {n}: record attempts = upstream calls"
        );
    }
    let successes = up.successes.lock().unwrap().clone();
    for n in 0..jobs {
        let done = successes.get(&n).copied().unwrap_or(0);
        let is_dead = dead.contains_key(&n);
        assert!(done <= 1, "job {n} done {done} times");
        assert!(
            (done == 1) ^ is_dead,
            "job {n}: done {done}, dead-lettered {is_dead}"
        );
        // What the plan says must have happened.
        let calls = up.calls(n);
        let expect_dead = (0..calls).all(|a| !plan(n, a).succeeds());
        assert_eq!(is_dead, expect_dead, "job {n}: {calls} calls");
        if let Some(r) = dead.get(&n) {
            if plan(n, calls - 1) == Act::Permanent {
                assert_eq!(r.reason, rampart_dlq::DeadLetterReason::Permanent);
            } else {
                assert_eq!(r.reason, rampart_dlq::DeadLetterReason::RetriesExhausted);
                assert_eq!(calls, 4, "job {n}: 1 + 3 retries");
            }
        }
    }
    for &(n, attempt, d) in seen {
        // `attempt` is the attempt number of the retry being scheduled (1 = first retry).
        let hint = match plan(n, attempt - 1) {
            Act::Throttled(s) if s > 72 => Some(s),
            _ => None,
        };
        check_countdown(attempt - 1, d, hint);
    }
}

/// A retry waiting in the backend for its countdown.
#[derive(Debug)]
pub struct Waiting {
    /// The backend's id of the task.
    pub id: String,
    pub job: Job,
    /// When it is due, in seconds since the Unix epoch.
    pub run_at: f64,
}

/// Backend time control: what waits for a countdown, and making it due now.
#[allow(async_fn_in_trait)]
pub trait TimeControl {
    /// The retries that are due later than now.
    async fn waiting(&mut self) -> Vec<Waiting>;
    /// Makes these retries due now.
    async fn make_due(&mut self, ids: &[String]);
}

/// Drives a running worker to settlement: every 50 ms each retry that has appeared in the
/// backend since the last look is checked and made due now — only the retries checked, so
/// none is fast-forwarded unseen however slowly the loop runs. The check: the retry is one the
/// worker scheduled (`recording`), and the backend has it due at the scheduling time plus the
/// countdown the policy chose (within the backend's whole seconds) — an absolute time, so the
/// check does not depend on how late the loop looks. (The countdowns themselves are checked
/// against 60·2ⁿ ±20 % / Retry-After by `check_settled`.) Returns how many retries were
/// checked; every test compares it with the retries the worker scheduled.
pub async fn settle<R>(
    ctl: &mut impl TimeControl,
    up: &Upstream,
    store: &impl DeadLetterStore,
    jobs: u64,
    recording: &Recording<R>,
) -> usize {
    let mut checked = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = ctl.waiting().await;
        for w in &waiting {
            let n = w.job.args.as_u64().unwrap();
            let Some(due) = recording.due_at(n, w.job.attempt) else {
                panic!(
                    "job {n} attempt {} waits in the backend, but was never scheduled",
                    w.job.attempt
                );
            };
            assert!(
                (w.run_at - due.floor()).abs() <= 1.0,
                "job {n} attempt {}: due at {} in the backend, scheduled for {due}",
                w.job.attempt,
                w.run_at
            );
        }
        checked += waiting.len();
        let ids: Vec<String> = waiting.into_iter().map(|w| w.id).collect();
        if !ids.is_empty() {
            ctl.make_due(&ids).await;
        }
        let dead = all_records(store).await.len();
        if up.done() + dead == usize::try_from(jobs).unwrap() {
            return checked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {} done, {dead} dead",
            up.done()
        );
    }
}

/// A worker running in the background until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

/// Spawns `run(stop)` — typically `|stop| worker.run_until(stop)`.
pub fn spawn<F, Fut>(run: F) -> Running
where
    F: FnOnce(BoxFuture<'static, Result<(), std::io::Error>>) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
{
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let signal: BoxFuture<'static, Result<(), std::io::Error>> = Box::pin(async move {
        let _ = rx.await;
        Ok(())
    });
    Running {
        stop,
        task: tokio::spawn(run(signal)),
    }
}

impl Running {
    /// Lets a straggler show up as a second run (300 ms), then stops the worker gracefully
    /// and checks that it ended without error.
    pub async fn stop(self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The distinct retries among `seen` (job, attempt): one attempt is scheduled twice when its
/// first schedule or its acknowledgement failed (SQLite busy under load) and apalis ran it
/// again — the second push is a no-op by key, so the backend holds one row for both.
pub fn distinct_retries(seen: &[(u64, u32, Duration)]) -> usize {
    seen.iter()
        .map(|(n, a, _)| (*n, *a))
        .collect::<std::collections::HashSet<_>>()
        .len()
}
