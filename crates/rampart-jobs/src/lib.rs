//! Durable job retries for [apalis](https://docs.rs/apalis) workers, under rampart's policy
//! model (classifier, breaker, dead letters).
//!
//! A request path can afford to wait a few hundred milliseconds between attempts; a job
//! whose retry countdown is a minute to an hour cannot hold a worker slot (or a process) that
//! long. [`JobLayer`] wraps a job handler — any tower `Service` over the job's arguments — so
//! that a transient or throttled failure is **not slept on**: the job in hand is acknowledged
//! and its next attempt is enqueued in the backend with `attempt + 1` and a countdown from the
//! policy's backoff ([`JobPolicy::tts_task`]: 3 retries, 60 s × 2ⁿ capped at 3,600 s, ±20 %
//! jitter; `Retry-After` / `retryDelay` hints respected). A restart loses nothing: the retry
//! is a row (or a sorted-set member) in the backend. While the policy's breaker is open, jobs
//! are not run but enqueued again for when it half-opens. Permanent failures and exhausted
//! jobs go to the dead-letter store once, under an id derived from the job.
//!
//! One retry loop: rampart's. Do not add apalis' `RetryLayer` to the worker; the only time a
//! job is left to the backend's own redelivery is when rampart could not record its decision
//! (the backend or the dead-letter store was down), so that nothing is lost.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use apalis_core::backend::ext::with_codec::WithCodec;
//! use apalis_core::worker::builder::WorkerBuilder;
//! use apalis_sqlite::{SqlitePool, SqliteStorage};
//! use rampart_core::{classify::IoErrors};
//! use rampart_dlq::MemoryStore;
//! use rampart_jobs::{BackendScheduler, Job, JobCodec, JobLayer, JobPolicy};
//! use tower_layer::Layer;
//!
//! let pool = SqlitePool::connect("sqlite://jobs.db?mode=rwc").await?;
//! SqliteStorage::setup(&pool).await?;
//! let backend = WithCodec::new(SqliteStorage::<Job>::new(&pool), JobCodec);
//! let layer = JobLayer::new(
//!     JobPolicy::tts_task(),
//!     IoErrors,
//!     MemoryStore::new(1000),
//!     BackendScheduler::new(backend.clone()),
//! );
//! let handler = tower_util_service_fn();
//! # fn tower_util_service_fn() -> rampart_jobs::__doc::Echo { rampart_jobs::__doc::Echo }
//! let worker = WorkerBuilder::new("tts-1")
//!     .backend(backend)
//!     .build(layer.typed::<String>().layer(handler));
//! worker.run().await?;
//! # Ok(()) }
//! ```
//!
//! apalis ends a worker when its backend fails (a Redis restart, a locked SQLite file); run it
//! under a [`Supervisor`], which logs the error, backs off (rampart's [`Backoff`]) and starts
//! it again — nothing in the backend is lost, and the worker's own in-flight jobs are handed
//! back when it registers again.
//!
//! [`Backoff`]: rampart_core::Backoff
//!
//! Poll backends with [`PollEvery`] rather than apalis' `poll_with_interval`, whose timer can
//! miss a tick and leave a worker idle until its next heartbeat.
//!
//! With the `metrics` feature every run is counted under the request path's series names
//! (`retry_attempts_total`, `retry_delay_seconds`, `dead_letters_total`) plus `jobs_total`
//! and `jobs_scheduled_retries`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod job;
mod observe;
mod policy;
mod poll;
mod queue;
mod schedule;
mod service;
mod supervise;

pub use job::{Job, JobCodec};
pub use policy::JobPolicy;
pub use poll::PollEvery;
#[cfg(feature = "redis")]
pub use queue::{redis_config, REDIS_IDEMPOTENCY_TTL};
pub use queue::{JobQueue, NotAJob, QueueError};
pub use schedule::{BackendScheduler, Reschedule};
pub use service::{record_id, JobError, JobFuture, JobLayer, JobOutcome, JobService, Refusal};
pub use supervise::{Stop, SuperviseError, Supervisor};

/// apalis' core, re-exported so that workers build against the version this crate uses.
pub use apalis_core;
/// apalis-postgres, re-exported (feature `postgres`).
#[cfg(feature = "postgres")]
pub use apalis_postgres;
/// apalis-redis, re-exported (feature `redis`).
#[cfg(feature = "redis")]
pub use apalis_redis;
/// apalis-sqlite, re-exported (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use apalis_sqlite;

#[doc(hidden)]
pub mod __doc {
    //! A handler for the crate-level example.
    use std::task::{Context, Poll};

    /// Accepts every string.
    #[derive(Debug, Clone, Copy)]
    pub struct Echo;

    impl tower_service::Service<String> for Echo {
        type Response = ();
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<(), std::io::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: String) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }
}
