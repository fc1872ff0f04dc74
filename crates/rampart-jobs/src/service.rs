//! The job layer: one retry loop, in the backend.

use std::{
    fmt,
    hash::{Hash, Hasher},
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis_core::task::Task;
use futures_util::future::BoxFuture;
use rampart_core::{BoxError, CircuitOpen, Classify, Outcome};
use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, Pushed, RecordId, RequestPart, StoreError,
    Timestamp,
};
use serde::de::DeserializeOwned;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Job, JobPolicy, Reschedule};

/// What became of one run of a job. The worker acknowledges the job in every case: the
/// decision is durable (a retry in the backend, a record in the dead-letter store) before
/// this is returned. apalis stores it as the job's result (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobOutcome {
    /// The handler succeeded.
    Done {
        /// Attempts it took (1 on the first run).
        attempts: u32,
    },
    /// The handler failed transiently or was throttled; the next attempt waits in the
    /// backend.
    Retried {
        /// The attempt that will run next (1-based: `2` is the first retry).
        next_attempt: u32,
        /// Its countdown.
        countdown: Duration,
    },
    /// The breaker is open: the job was not run and waits in the backend until the breaker
    /// half-opens (with jitter). No attempt was used up.
    Deferred {
        /// The countdown.
        countdown: Duration,
    },
    /// The job failed for good and is in the dead-letter store.
    DeadLettered {
        /// Why.
        reason: DeadLetterReason,
        /// Attempts made.
        attempts: u32,
        /// `true` if another worker had already stored this dead letter (same job).
        duplicate: bool,
    },
}

/// Why a job could not be settled. Returned to apalis, which then does not acknowledge the
/// job as done: the job stays in the backend (nothing acknowledged is lost).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The retry could not be enqueued.
    #[error("job {job_id}: could not schedule attempt {attempt}: {source}")]
    Schedule {
        /// The backend's id of the job.
        job_id: String,
        /// The attempt that was to be scheduled.
        attempt: u32,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The dead letter could not be stored.
    #[error("job {job_id}: could not store the dead letter: {source}")]
    DeadLetter {
        /// The backend's id of the job.
        job_id: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The handler was not ready.
    #[error("job handler not ready: {0}")]
    NotReady(#[source] BoxError),
}

/// Errors that may say "a circuit breaker refused this call", so that a refused job waits for
/// the breaker instead of using up an attempt.
///
/// # Example
///
/// ```
/// use rampart_core::{BoxError, CircuitOpen, Name};
/// use rampart_jobs::Refusal;
/// use std::time::Duration;
///
/// let e: BoxError = Box::new(CircuitOpen::new(Name::new("gemini"), Duration::from_secs(30)));
/// assert_eq!(e.circuit_open().map(|c| c.retry_in), Some(Duration::from_secs(30)));
/// ```
pub trait Refusal {
    /// The breaker's refusal, if this error is one.
    fn circuit_open(&self) -> Option<&CircuitOpen>;
}

impl<E> Refusal for rampart_core::Error<E> {
    fn circuit_open(&self) -> Option<&CircuitOpen> {
        rampart_core::Error::circuit_open(self)
    }
}

impl Refusal for BoxError {
    fn circuit_open(&self) -> Option<&CircuitOpen> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&**self);
        while let Some(cur) = e {
            if let Some(c) = cur.downcast_ref::<CircuitOpen>() {
                return Some(c);
            }
            e = cur.source();
        }
        None
    }
}

impl Refusal for std::io::Error {
    fn circuit_open(&self) -> Option<&CircuitOpen> {
        None
    }
}

impl Refusal for std::convert::Infallible {
    fn circuit_open(&self) -> Option<&CircuitOpen> {
        None
    }
}

/// Wraps a job handler (a tower `Service<A>` over the job's typed arguments) into an apalis
/// job service (`Service<Task<Job>>`) under a [`JobPolicy`]:
///
/// - success: done;
/// - transient or throttled, attempts left: acknowledged, and the next attempt is enqueued
///   with the policy's countdown (`Retry-After` / `retryDelay` hints respected) — no worker
///   slot waits;
/// - breaker open: not run; enqueued again for when the breaker half-opens, with jitter;
/// - permanent, rejected, retries used up, a payload that is not a job, arguments the
///   handler cannot read, a job type it does not handle: dead-lettered once (the record id
///   is derived from the job, so two workers racing on one job store one record).
///
/// There is one retry loop: this one. The handler must not retry by itself, and apalis'
/// own retry layer must not be added to the worker.
///
/// # Example
///
/// ```
/// use rampart_core::classify::ErrorsAre;
/// use rampart_core::Outcome;
/// use rampart_dlq::MemoryStore;
/// use rampart_jobs::{Job, JobLayer, JobPolicy, Reschedule};
/// use rampart_core::BoxError;
/// use std::time::Duration;
/// use tower_layer::Layer;
///
/// #[derive(Clone)]
/// struct NoBackend;
/// impl Reschedule for NoBackend {
///     fn schedule(&self, _: Job, _: Duration, _: String)
///         -> futures_util::future::BoxFuture<'static, Result<(), BoxError>> {
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// let handler = tower_service_fn();
/// # fn tower_service_fn() -> impl tower_service::Service<String, Response = (), Error = std::io::Error, Future = std::future::Ready<Result<(), std::io::Error>>> + Clone {
/// #     #[derive(Clone)] struct H;
/// #     impl tower_service::Service<String> for H {
/// #         type Response = (); type Error = std::io::Error; type Future = std::future::Ready<Result<(), std::io::Error>>;
/// #         fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> { std::task::Poll::Ready(Ok(())) }
/// #         fn call(&mut self, _: String) -> Self::Future { std::future::ready(Ok(())) }
/// #     }
/// #     H
/// # }
/// let layer = JobLayer::new(JobPolicy::tts_task(), ErrorsAre(Outcome::TRANSIENT), MemoryStore::new(1000), NoBackend);
/// let _service = layer.typed::<String>().layer(handler);
/// ```
pub struct JobLayer<C, St, R, A = serde_json::Value> {
    shared: Arc<Shared<C, St, R>>,
    _args: PhantomData<fn(A)>,
}

struct Shared<C, St, R> {
    policy: JobPolicy,
    classifier: C,
    store: St,
    scheduler: R,
}

impl<C, St, R, A> Clone for JobLayer<C, St, R, A> {
    fn clone(&self) -> Self {
        JobLayer {
            shared: Arc::clone(&self.shared),
            _args: PhantomData,
        }
    }
}

impl<C, St, R, A> fmt::Debug for JobLayer<C, St, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLayer")
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl<C, St, R> JobLayer<C, St, R> {
    /// A layer with `policy`, classifying results with `classifier`, dead-lettering into
    /// `store` and re-scheduling through `scheduler`.
    pub fn new(policy: JobPolicy, classifier: C, store: St, scheduler: R) -> Self {
        JobLayer {
            shared: Arc::new(Shared {
                policy,
                classifier,
                store,
                scheduler,
            }),
            _args: PhantomData,
        }
    }
}

impl<C, St, R, A> JobLayer<C, St, R, A> {
    /// The same layer for a handler that takes arguments of type `B` (decoded from the
    /// job's JSON arguments).
    pub fn typed<B>(&self) -> JobLayer<C, St, R, B> {
        JobLayer {
            shared: Arc::clone(&self.shared),
            _args: PhantomData,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &JobPolicy {
        &self.shared.policy
    }
}

impl<S, C, St, R, A> Layer<S> for JobLayer<C, St, R, A> {
    type Service = JobService<S, C, St, R, A>;

    fn layer(&self, inner: S) -> Self::Service {
        JobService {
            inner,
            shared: Arc::clone(&self.shared),
            _args: PhantomData,
        }
    }
}

/// The service [`JobLayer`] makes: an apalis job service over a typed handler.
pub struct JobService<S, C, St, R, A = serde_json::Value> {
    inner: S,
    shared: Arc<Shared<C, St, R>>,
    _args: PhantomData<fn(A)>,
}

impl<S: Clone, C, St, R, A> Clone for JobService<S, C, St, R, A> {
    fn clone(&self) -> Self {
        JobService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _args: PhantomData,
        }
    }
}

impl<S: fmt::Debug, C, St, R, A> fmt::Debug for JobService<S, C, St, R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobService")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<S, C, St, R, A> Service<Task<Job>> for JobService<S, C, St, R, A>
where
    S: Service<A> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Refusal + fmt::Display + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    St: DeadLetterStore,
    R: Reschedule,
    A: DeserializeOwned + Send + 'static,
{
    type Response = JobOutcome;
    type Error = JobError;
    type Future = BoxFuture<'static, Result<JobOutcome, JobError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Honest readiness: a job is taken only when the handler can run it.
        self.inner
            .poll_ready(cx)
            .map_err(|e| JobError::NotReady(e.to_string().into()))
    }

    fn call(&mut self, task: Task<Job>) -> Self::Future {
        // Take the handler that was made ready; leave a clone for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let (job, ctx) = task.take();
        let job_id = ctx
            .task_id()
            .map(ToString::to_string)
            .unwrap_or_else(|| "unknown".to_owned());
        Box::pin(async move {
            let service = shared.policy.kind().to_owned();
            let attempt = job.attempt;
            let out = run(shared, inner, job, job_id).await;
            if let Ok(o) = &out {
                crate::observe::record(&service, attempt, o);
            }
            out
        })
    }
}

async fn run<S, C, St, R, A>(
    shared: Arc<Shared<C, St, R>>,
    mut inner: S,
    job: Job,
    job_id: String,
) -> Result<JobOutcome, JobError>
where
    S: Service<A>,
    S::Error: Refusal + fmt::Display,
    C: Classify<S::Response, S::Error>,
    St: DeadLetterStore,
    R: Reschedule,
    A: DeserializeOwned,
{
    let origin = job.origin.clone().unwrap_or_else(|| job_id.clone());
    let attempts = job.attempt.saturating_add(1);
    let policy = &shared.policy;

    // Jobs that cannot run at all.
    let unrunnable = if let Some(e) = &job.undecodable {
        Some(format!("payload is not a job: {e}"))
    } else if job.kind != policy.kind() {
        Some(format!(
            "unknown job type {:?} (this worker handles {:?})",
            job.kind,
            policy.kind()
        ))
    } else {
        None
    };
    if let Some(why) = unrunnable {
        return dead_letter(
            &shared,
            &job,
            &job_id,
            &origin,
            DeadLetterReason::Permanent,
            "permanent",
            &why,
            job.attempt,
        )
        .await;
    }
    let args: A = match serde_json::from_value(job.args.clone()) {
        Ok(a) => a,
        Err(e) => {
            let why = format!("arguments do not fit the {:?} handler: {e}", policy.kind());
            return dead_letter(
                &shared,
                &job,
                &job_id,
                &origin,
                DeadLetterReason::Permanent,
                "permanent",
                &why,
                job.attempt,
            )
            .await;
        }
    };

    // The breaker is open: wait for it in the backend, not in a worker slot.
    if let Some(wait) = policy.breaker_wait() {
        return defer(&shared, &job, &job_id, &origin, wait).await;
    }

    let result = inner.call(args).await;
    if let Err(e) = &result {
        if let Some(open) = e.circuit_open() {
            let wait = open.retry_in.saturating_add(policy.jitter());
            return defer(&shared, &job, &job_id, &origin, wait).await;
        }
    }
    let outcome = shared.classifier.classify(result.as_ref());
    let error_text = match &result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    match outcome {
        Outcome::Success => Ok(JobOutcome::Done { attempts }),
        Outcome::Transient { .. } | Outcome::Throttled { .. } => {
            match policy.countdown(job.attempt, outcome, stream_of(&origin)) {
                Some(countdown) => {
                    let next = job.next_attempt(&origin);
                    let key = format!("{origin}#{}", next.attempt);
                    shared
                        .scheduler
                        .schedule(next, countdown, key)
                        .await
                        .map_err(|source| JobError::Schedule {
                            job_id: job_id.clone(),
                            attempt: attempts.saturating_add(1),
                            source,
                        })?;
                    Ok(JobOutcome::Retried {
                        next_attempt: attempts.saturating_add(1),
                        countdown,
                    })
                }
                None => {
                    dead_letter(
                        &shared,
                        &job,
                        &job_id,
                        &origin,
                        DeadLetterReason::RetriesExhausted,
                        outcome.as_str(),
                        &error_text,
                        attempts,
                    )
                    .await
                }
            }
        }
        Outcome::Rejected => {
            dead_letter(
                &shared,
                &job,
                &job_id,
                &origin,
                DeadLetterReason::Rejected,
                outcome.as_str(),
                &error_text,
                attempts,
            )
            .await
        }
        _ => {
            dead_letter(
                &shared,
                &job,
                &job_id,
                &origin,
                DeadLetterReason::Permanent,
                outcome.as_str(),
                &error_text,
                attempts,
            )
            .await
        }
    }
}

async fn defer<C, St, R: Reschedule>(
    shared: &Shared<C, St, R>,
    job: &Job,
    job_id: &str,
    origin: &str,
    wait: Duration,
) -> Result<JobOutcome, JobError> {
    // Same attempt number: the breaker's refusal is not an attempt.
    let mut again = job.next_attempt(origin);
    again.attempt = job.attempt;
    let key = format!("{origin}#{}@{}", job.attempt, deadline_secs(wait));
    shared
        .scheduler
        .schedule(again, wait, key)
        .await
        .map_err(|source| JobError::Schedule {
            job_id: job_id.to_owned(),
            attempt: job.attempt.saturating_add(1),
            source,
        })?;
    Ok(JobOutcome::Deferred { countdown: wait })
}

fn deadline_secs(wait: Duration) -> u64 {
    SystemTime::now()
        .checked_add(wait)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter<C, St: DeadLetterStore, R>(
    shared: &Shared<C, St, R>,
    job: &Job,
    job_id: &str,
    origin: &str,
    reason: DeadLetterReason,
    classification: &str,
    error: &str,
    attempts: u32,
) -> Result<JobOutcome, JobError> {
    let policy = &shared.policy;
    let redactor = &policy.redactor;
    let mut payload = serde_json::json!({
        "job_id": job_id,
        "origin": origin,
        "kind": job.kind,
        "args": job.args,
    });
    let redacted = redactor.json(&mut payload);
    let mut record = DeadLetterRecord::new(policy.kind(), reason)
        .error(redactor.text(error))
        .attempts(attempts, policy.backoff().max_retries().saturating_add(1))
        .request(RequestPart {
            summary: redactor.text(&format!("job {} {origin}", job.kind)),
            payload,
        });
    record.id = record_id(origin, job.enqueued_at_ms);
    classification.clone_into(&mut record.classification);
    record.redrive_count = job.redrives;
    record.request_redacted = redacted;
    if job.enqueued_at_ms > 0 {
        record.first_attempt_at = Timestamp(UNIX_EPOCH + Duration::from_millis(job.enqueued_at_ms));
    }
    let pushed = shared
        .store
        .push(record)
        .await
        .map_err(|source| JobError::DeadLetter {
            job_id: job_id.to_owned(),
            source,
        })?;
    Ok(JobOutcome::DeadLettered {
        reason,
        attempts,
        duplicate: matches!(pushed, Pushed::Duplicate),
    })
}

/// The dead-letter record id of a job: time-ordered by when the job was first enqueued,
/// the rest derived from its origin id, so every worker that dead-letters the same job (and
/// every redrive of it) names the same record.
///
/// # Example
///
/// ```
/// use rampart_jobs::record_id;
///
/// assert_eq!(record_id("01J0ABC", 1_700_000_000_000), record_id("01J0ABC", 1_700_000_000_000));
/// assert_ne!(record_id("01J0ABC", 1_700_000_000_000), record_id("01J0ABD", 1_700_000_000_000));
/// ```
pub fn record_id(origin: &str, enqueued_at_ms: u64) -> RecordId {
    let mut bytes = [0u8; 16];
    let ms = enqueued_at_ms & 0xFFFF_FFFF_FFFF;
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let h1 = stable_hash(origin, 1);
    let h2 = stable_hash(origin, 2);
    bytes[6..14].copy_from_slice(&h1.to_be_bytes());
    bytes[14..16].copy_from_slice(&h2.to_be_bytes()[..2]);
    // UUID version 7, RFC 4122 variant.
    bytes[6] = (bytes[6] & 0x0F) | 0x70;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    RecordId::from_bytes(bytes)
}

fn stream_of(origin: &str) -> u64 {
    stable_hash(origin, 0)
}

/// FNV-1a: stable across processes and Rust versions (unlike `DefaultHasher`).
fn stable_hash(s: &str, salt: u8) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    salt.hash(&mut h);
    h.write(s.as_bytes());
    h.finish()
}
