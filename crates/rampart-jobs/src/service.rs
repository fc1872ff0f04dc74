//! The job layer: one retry loop, in the backend.

use std::{
    fmt,
    future::Future,
    hash::{Hash, Hasher},
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis_core::task::Task;
use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;
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
    S: Service<A> + Clone,
    S::Error: Refusal + fmt::Display,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    St: DeadLetterStore,
    R: Reschedule,
    A: DeserializeOwned,
{
    type Response = JobOutcome;
    type Error = JobError;
    type Future = JobFuture<S::Future, C, St, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Honest readiness: a job is taken only when the handler can run it.
        self.inner
            .poll_ready(cx)
            .map_err(|e| JobError::NotReady(e.to_string().into()))
    }

    fn call(&mut self, task: Task<Job>) -> Self::Future {
        let (job, ctx) = task.take();
        let job_id = ctx
            .task_id()
            .map(ToString::to_string)
            .unwrap_or_else(|| "unknown".to_owned());
        let origin = job.origin.clone().unwrap_or_else(|| job_id.clone());
        let shared = Arc::clone(&self.shared);
        let attempt = job.attempt;
        let args = match runnable::<A>(&shared.policy, &job) {
            Ok(args) => args,
            Err(step) => return JobFuture::settling(shared, job, job_id, origin, step),
        };
        // The breaker is open: wait for it in the backend, not in a worker slot.
        if let Some(wait) = shared.policy.breaker_wait() {
            return JobFuture::settling(shared, job, job_id, origin, Step::Defer { wait });
        }
        // Take the handler that was made ready; leave a clone for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        JobFuture {
            state: State::Calling {
                future: inner.call(args),
            },
            shared,
            job: Some(job),
            job_id,
            origin,
            attempt,
        }
    }
}

/// The job's arguments, or why it cannot run at all (not a job, a type this worker does not
/// handle, arguments the handler cannot read): a permanent dead letter, no attempt made.
fn runnable<A: DeserializeOwned>(policy: &JobPolicy, job: &Job) -> Result<A, Step> {
    let why = if let Some(e) = &job.undecodable {
        format!("payload is not a job: {e}")
    } else if job.kind != policy.kind() {
        format!(
            "unknown job type {:?} (this worker handles {:?})",
            job.kind,
            policy.kind()
        )
    } else {
        match serde_json::from_value(job.args.clone()) {
            Ok(a) => return Ok(a),
            Err(e) => format!("arguments do not fit the {:?} handler: {e}", policy.kind()),
        }
    };
    Err(Step::DeadLetter {
        reason: DeadLetterReason::Permanent,
        classification: "permanent",
        error: why,
        attempts: job.attempt,
    })
}

/// What is left to make durable after the handler ran (or instead of running it).
enum Step {
    /// Enqueue the next attempt after `countdown`.
    Retry { countdown: Duration },
    /// Enqueue the same attempt for when the breaker half-opens.
    Defer { wait: Duration },
    /// Store the dead letter.
    DeadLetter {
        reason: DeadLetterReason,
        classification: &'static str,
        error: String,
        attempts: u32,
    },
}

pin_project! {
    /// The future of [`JobService`]: runs the handler, then settles the job — done, or its
    /// decision made durable (a retry enqueued, a deferral enqueued, a dead letter stored)
    /// before it resolves. A successful job costs no allocation here; the settling steps
    /// (backend or store I/O, rare) are boxed, as the store's and scheduler's futures are.
    pub struct JobFuture<F, C, St, R> {
        #[pin]
        state: State<F>,
        shared: Arc<Shared<C, St, R>>,
        job: Option<Job>,
        job_id: String,
        origin: String,
        attempt: u32,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Settling {
            future: BoxFuture<'static, Result<JobOutcome, JobError>>,
        },
        Done,
    }
}

impl<F, C, St, R> fmt::Debug for JobFuture<F, C, St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobFuture")
            .field("job_id", &self.job_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<F, C, St, R> JobFuture<F, C, St, R>
where
    C: Send + Sync + 'static,
    St: DeadLetterStore,
    R: Reschedule,
{
    fn settling(
        shared: Arc<Shared<C, St, R>>,
        job: Job,
        job_id: String,
        origin: String,
        step: Step,
    ) -> Self {
        let attempt = job.attempt;
        let future = settle(
            Arc::clone(&shared),
            job,
            job_id.clone(),
            origin.clone(),
            step,
        );
        JobFuture {
            state: State::Settling { future },
            shared,
            job: None,
            job_id,
            origin,
            attempt,
        }
    }
}

impl<F, T, E, C, St, R> Future for JobFuture<F, C, St, R>
where
    F: Future<Output = Result<T, E>>,
    E: Refusal + fmt::Display,
    C: Classify<T, E> + Send + Sync + 'static,
    St: DeadLetterStore,
    R: Reschedule,
{
    type Output = Result<JobOutcome, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let out = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    let Some(job) = this.job.take() else {
                        return Poll::Pending;
                    };
                    match decide(&**this.shared, &job, this.origin, result) {
                        Ok(outcome) => Ok(outcome),
                        Err(step) => {
                            let future = settle(
                                Arc::clone(this.shared),
                                job,
                                this.job_id.clone(),
                                this.origin.clone(),
                                step,
                            );
                            this.state.set(State::Settling { future });
                            continue;
                        }
                    }
                }
                StateProj::Settling { future } => ready!(future.as_mut().poll(cx)),
                // Polled after completion: the contract of `Future` allows anything but UB.
                StateProj::Done => return Poll::Pending,
            };
            this.state.set(State::Done);
            if let Ok(o) = &out {
                crate::observe::record(this.shared.policy.kind(), *this.attempt, o);
            }
            return Poll::Ready(out);
        }
    }
}

/// The handler's result, classified: done now, or the step that settles the job.
fn decide<T, E, C, St, R>(
    shared: &Shared<C, St, R>,
    job: &Job,
    origin: &str,
    result: Result<T, E>,
) -> Result<JobOutcome, Step>
where
    E: Refusal + fmt::Display,
    C: Classify<T, E>,
{
    let policy = &shared.policy;
    let attempts = job.attempt.saturating_add(1);
    if let Err(e) = &result {
        if let Some(open) = e.circuit_open() {
            let wait = open.retry_in.saturating_add(policy.jitter());
            return Err(Step::Defer { wait });
        }
    }
    let outcome = shared.classifier.classify(result.as_ref());
    let error = |result: &Result<T, E>| match result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    // The same job gets the same jitter sequence on whichever worker runs it.
    let stream = stable_hash(origin, 0);
    match outcome {
        Outcome::Success => Ok(JobOutcome::Done { attempts }),
        Outcome::Transient { .. } | Outcome::Throttled { .. } => {
            match policy.countdown(job.attempt, outcome, stream) {
                Some(countdown) => Err(Step::Retry { countdown }),
                None => Err(Step::DeadLetter {
                    reason: DeadLetterReason::RetriesExhausted,
                    classification: outcome.as_str(),
                    error: error(&result),
                    attempts,
                }),
            }
        }
        Outcome::Rejected => Err(Step::DeadLetter {
            reason: DeadLetterReason::Rejected,
            classification: outcome.as_str(),
            error: error(&result),
            attempts,
        }),
        _ => Err(Step::DeadLetter {
            reason: DeadLetterReason::Permanent,
            classification: outcome.as_str(),
            error: error(&result),
            attempts,
        }),
    }
}

/// Makes `step` durable; the future owns everything it needs.
fn settle<C, St, R>(
    shared: Arc<Shared<C, St, R>>,
    job: Job,
    job_id: String,
    origin: String,
    step: Step,
) -> BoxFuture<'static, Result<JobOutcome, JobError>>
where
    C: Send + Sync + 'static,
    St: DeadLetterStore,
    R: Reschedule,
{
    Box::pin(async move {
        match step {
            Step::Retry { countdown } => {
                let attempts = job.attempt.saturating_add(1);
                let next = job.next_attempt(&origin);
                let key = format!("{origin}#{}", next.attempt);
                shared
                    .scheduler
                    .schedule(next, countdown, key)
                    .await
                    .map_err(|source| JobError::Schedule {
                        job_id,
                        attempt: attempts.saturating_add(1),
                        source,
                    })?;
                Ok(JobOutcome::Retried {
                    next_attempt: attempts.saturating_add(1),
                    countdown,
                })
            }
            Step::Defer { wait } => defer(&shared, &job, &job_id, &origin, wait).await,
            Step::DeadLetter {
                reason,
                classification,
                error,
                attempts,
            } => {
                dead_letter(
                    &shared,
                    &job,
                    &job_id,
                    &origin,
                    reason,
                    classification,
                    &error,
                    attempts,
                )
                .await
            }
        }
    })
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
