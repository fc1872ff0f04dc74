//! Putting a job back into its backend to run later.

use std::{fmt, time::Duration};

use apalis_core::{
    backend::{finalize::Durable, TaskSink},
    task::builder::TaskBuilder,
};
use futures_util::future::BoxFuture;
use rampart_core::BoxError;

use crate::Job;

/// Puts a job back into a backend to run after a countdown. The worker calls it instead of
/// sleeping: the job in hand is acknowledged, its next attempt waits in the backend.
///
/// Implemented by [`BackendScheduler`] for every apalis backend that accepts pushed jobs.
pub trait Reschedule: Clone + Send + Sync + 'static {
    /// Enqueues `job` to run no earlier than `after` from now. `key` identifies this attempt
    /// of this job: a backend that knows idempotency keys stores a second push with the same
    /// key only once.
    ///
    /// # Errors
    ///
    /// The backend's error when the job could not be stored; the caller must then not
    /// acknowledge the job it holds.
    fn schedule(
        &self,
        job: Job,
        after: Duration,
        key: String,
    ) -> BoxFuture<'static, Result<(), BoxError>>;
}

/// A [`Reschedule`] over an apalis backend (apalis-sqlite, apalis-redis, apalis-postgres, …)
/// through its `TaskSink`: the retry is a new task with `run_after(countdown)` and an
/// idempotency key of `"{origin}#{attempt}"`.
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use apalis_core::backend::ext::with_codec::WithCodec;
/// use apalis_sqlite::{SqlitePool, SqliteStorage};
/// use rampart_jobs::{BackendScheduler, Job, JobCodec};
///
/// let pool = SqlitePool::connect("sqlite://jobs.db?mode=rwc").await?;
/// SqliteStorage::setup(&pool).await?;
/// let backend = WithCodec::new(SqliteStorage::<Job>::new(&pool), JobCodec);
/// let scheduler = BackendScheduler::new(backend);
/// # let _ = scheduler; Ok(()) }
/// ```
#[derive(Clone)]
pub struct BackendScheduler<B> {
    backend: B,
}

impl<B> fmt::Debug for BackendScheduler<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendScheduler").finish_non_exhaustive()
    }
}

impl<B> BackendScheduler<B> {
    /// Schedules retries into `backend` (a clone of the worker's backend).
    pub fn new(backend: B) -> Self {
        BackendScheduler { backend }
    }
}

impl<B> Reschedule for BackendScheduler<B>
where
    B: TaskSink<Job, Durable> + Clone + Send + Sync + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    fn schedule(
        &self,
        job: Job,
        after: Duration,
        key: String,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let mut backend = self.backend.clone();
        Box::pin(async move {
            let task = TaskBuilder::new(job)
                .run_after(after)
                .idempotency_key(key)
                .build();
            backend
                .push_task(task)
                .await
                .map_err(|e| Box::new(e) as BoxError)
        })
    }
}
