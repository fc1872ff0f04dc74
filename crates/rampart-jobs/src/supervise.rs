//! Keeping a worker running through backend outages.
//!
//! apalis ends a worker with [`WorkerError::BackendError`] the first time its backend fails
//! (a Redis that restarts, a PostgreSQL failover, a SQLite file locked past its busy
//! timeout): the worker's state machine goes dead and `run` returns. [`Supervisor`] starts
//! the worker again, after a backoff, until it stops on purpose.

use std::{
    fmt,
    future::Future,
    pin::{pin, Pin},
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::error::WorkerError;
use futures_util::future::{BoxFuture, Either, FutureExt, Shared};
use rampart_core::{backoff::RETRIES_LIMIT, Backoff, ConfigError, Jitter};
use tokio::time::Instant;

/// Why a supervised worker stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperviseError {
    /// The backend kept failing: the supervisor's backoff allows no more restarts in a row.
    #[error("job worker gave up after {restarts} restarts in a row: {source}")]
    GaveUp {
        /// The restarts made since the worker last ran healthily.
        restarts: u32,
        /// The last backend error.
        #[source]
        source: WorkerError,
    },
    /// The worker failed in a way a restart does not fix: a panic, a worker state error, an
    /// error from the stop signal.
    #[error("job worker failed: {0}")]
    Fatal(#[source] WorkerError),
}

/// The stop signal handed to every run of a supervised worker: pass it to apalis'
/// `Worker::run_until`, which then stops the worker gracefully (in-flight jobs finish) when
/// the supervisor's signal fires. Cheap to clone.
#[derive(Clone)]
pub struct Stop {
    inner: Shared<BoxFuture<'static, ()>>,
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop")
            .field("fired", &self.fired())
            .finish()
    }
}

impl Stop {
    fn new(signal: impl Future<Output = ()> + Send + 'static) -> Stop {
        Stop {
            inner: signal.boxed().shared(),
        }
    }

    /// Whether the signal has fired (as seen by the last poll of any clone).
    pub fn fired(&self) -> bool {
        self.inner.peek().is_some()
    }
}

impl Future for Stop {
    type Output = Result<(), std::io::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.poll_unpin(cx).map(Ok)
    }
}

/// Runs an apalis worker and starts it again when its backend fails: on
/// [`WorkerError::BackendError`] it logs the error, waits the next delay of its
/// [`Backoff`] (jittered, growing) and calls the start closure again, which builds a new
/// worker (and, if it likes, a new connection) and runs it. Nothing is lost meanwhile:
/// jobs stay in the backend, and the worker's own in-flight jobs (leased to its name) are
/// handed back when a worker of that name registers again (apalis re-enqueues a worker's
/// orphaned jobs on registration once its last heartbeat is one heartbeat interval old; until
/// then the backend refuses the name, and the backoff rides that out). A job cut off mid-run
/// runs again: work must be idempotent, as with every at-least-once queue.
///
/// A run that lasted at least [`reset_after`](Self::reset_after) (default 60 s) starts the
/// backoff afresh. Other errors (a panic, a state error) end supervision:
/// [`SuperviseError::Fatal`]. When the backoff's `max_retries` restarts in a row have failed:
/// [`SuperviseError::GaveUp`].
///
/// The default backoff: 500 ms × 2ⁿ capped at 30 s, ±20 % jitter, up to 1,000 restarts in a
/// row (about eight hours of outage).
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "redis")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use apalis_core::backend::ext::with_codec::WithCodec;
/// use apalis_core::error::WorkerError;
/// use apalis_core::worker::builder::WorkerBuilder;
/// use rampart_core::classify::IoErrors;
/// use rampart_dlq::MemoryStore;
/// use rampart_jobs::{BackendScheduler, Job, JobCodec, JobLayer, JobPolicy, Supervisor};
/// use tower_layer::Layer;
///
/// let store = MemoryStore::new(1000);
/// Supervisor::default()
///     .run_until(async { /* e.g. tokio::signal::ctrl_c() */ }, |stop| {
///         let store = store.clone();
///         async move {
///             let conn = rampart_jobs::apalis_redis::connect("redis://127.0.0.1:6379")
///                 .await
///                 .map_err(|e| WorkerError::BackendError(e.into()))?;
///             let config = rampart_jobs::apalis_redis::Config::default().queue("tts");
///             let storage = rampart_jobs::apalis_redis::RedisStorage::<Job>::new(conn);
///             let backend = WithCodec::new(storage.with_config(config), JobCodec);
///             let layer = JobLayer::new(
///                 JobPolicy::tts_task(),
///                 IoErrors,
///                 store,
///                 BackendScheduler::new(backend.clone()),
///             );
///             # let handler = rampart_jobs::__doc::Echo;
///             WorkerBuilder::new("tts-1")
///                 .backend(backend)
///                 .build(layer.typed::<String>().layer(handler))
///                 .run_until(stop)
///                 .await
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Supervisor {
    backoff: Backoff,
    reset_after: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        let backoff = Backoff::builder()
            .max_retries(RETRIES_LIMIT)
            .base_delay(Duration::from_millis(500))
            .max_delay(Duration::from_secs(30))
            .factor(2.0)
            .jitter(Jitter::Proportional(0.2))
            .build()
            .unwrap_or_else(fallback);
        Supervisor::new(backoff)
    }
}

#[cold]
fn fallback(_: ConfigError) -> Backoff {
    // The constants above are valid; fall back to the default rather than panic.
    Backoff::default()
}

impl Supervisor {
    /// A supervisor that waits `backoff`'s delays between restarts and gives up after its
    /// `max_retries` restarts in a row.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::Backoff;
    /// use rampart_jobs::Supervisor;
    /// use std::time::Duration;
    ///
    /// let s = Supervisor::new(Backoff::builder().max_retries(100).build().unwrap())
    ///     .reset_after(Duration::from_secs(10));
    /// assert_eq!(s.backoff().max_retries(), 100);
    /// ```
    pub fn new(backoff: Backoff) -> Supervisor {
        Supervisor {
            backoff,
            reset_after: Duration::from_secs(60),
        }
    }

    /// A run that lasts at least this long counts as healthy: the next failure starts the
    /// backoff from its first delay again.
    #[must_use]
    pub fn reset_after(mut self, d: Duration) -> Self {
        self.reset_after = d;
        self
    }

    /// The backoff between restarts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Runs `start(stop)` — a future that builds a worker and runs it with
    /// `run_until(stop)` — and runs it again after a backoff whenever it ends with a backend
    /// error. Returns `Ok` when a run ends without error (the worker was stopped) or when
    /// `signal` fires during a backoff.
    ///
    /// # Errors
    ///
    /// [`SuperviseError::Fatal`] for errors other than the backend's;
    /// [`SuperviseError::GaveUp`] when the backoff is used up.
    pub async fn run_until<S, F, Fut>(&self, signal: S, mut start: F) -> Result<(), SuperviseError>
    where
        S: Future<Output = ()> + Send + 'static,
        F: FnMut(Stop) -> Fut,
        Fut: Future<Output = Result<(), WorkerError>>,
    {
        let stop = Stop::new(signal);
        let mut schedule = self.backoff.schedule(0);
        loop {
            let started = Instant::now();
            let error = match start(stop.clone()).await {
                Ok(()) => return Ok(()),
                Err(e @ WorkerError::BackendError(_)) => e,
                Err(e) => {
                    tracing::error!(error = %e, "job worker failed; not restarting");
                    return Err(SuperviseError::Fatal(e));
                }
            };
            if stop.fired() {
                return Ok(());
            }
            if started.elapsed() >= self.reset_after {
                schedule = self.backoff.schedule(0);
            }
            let Some(delay) = schedule.next() else {
                tracing::error!(error = %error, restarts = schedule.retries(), "job worker: backend still failing; giving up");
                return Err(SuperviseError::GaveUp {
                    restarts: schedule.retries(),
                    source: error,
                });
            };
            tracing::warn!(
                error = %error,
                restart = schedule.retries(),
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "job worker: backend error; restarting after a backoff"
            );
            let sleep = pin!(tokio::time::sleep(delay));
            if let Either::Right(_) = futures_util::future::select(sleep, stop.clone()).await {
                return Ok(());
            }
        }
    }

    /// [`run_until`](Self::run_until) with no stop signal of its own: runs until a run ends
    /// without error.
    ///
    /// # Errors
    ///
    /// As [`run_until`](Self::run_until).
    pub async fn run<F, Fut>(&self, start: F) -> Result<(), SuperviseError>
    where
        F: FnMut(Stop) -> Fut,
        Fut: Future<Output = Result<(), WorkerError>>,
    {
        self.run_until(std::future::pending(), start).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    fn backend_error() -> WorkerError {
        WorkerError::BackendError("connection refused".into())
    }

    #[tokio::test(start_paused = true)]
    async fn backend_errors_are_restarted_after_the_backoff() {
        let backoff = Backoff::builder()
            .max_retries(5)
            .base_delay(Duration::from_secs(1))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let t0 = Instant::now();
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = Supervisor::new(backoff)
            .run(|_stop| {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                starts.lock().unwrap().push(t0.elapsed());
                async move {
                    if n < 3 {
                        Err(backend_error())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        // Delays 1 s, 2 s, 4 s between the runs.
        let s = starts.lock().unwrap().clone();
        assert_eq!(s, [0, 1, 3, 7].map(Duration::from_secs));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_backoff_is_used_up_and_fatal_errors_are_not_restarted() {
        let backoff = Backoff::builder().max_retries(2).build().unwrap();
        let runs = AtomicU32::new(0);
        let r = Supervisor::new(backoff)
            .run(|_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err(backend_error()) }
            })
            .await;
        assert!(
            matches!(r, Err(SuperviseError::GaveUp { restarts: 2, .. })),
            "{r:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);

        let runs = AtomicU32::new(0);
        let r = Supervisor::default()
            .run(|_| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Err(WorkerError::PanicError("boom".into())) }
            })
            .await;
        assert!(matches!(r, Err(SuperviseError::Fatal(_))), "{r:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_run_resets_the_backoff_and_the_signal_ends_a_backoff() {
        let backoff = Backoff::builder()
            .max_retries(2)
            .base_delay(Duration::from_secs(1))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        // Every run lasts 20 s (healthy with reset_after 10 s) before failing: the backoff
        // never runs out. The signal fires at 100 s, during a backoff or a run.
        let runs = Arc::new(AtomicU32::new(0));
        let r = Supervisor::new(backoff)
            .reset_after(Duration::from_secs(10))
            .run_until(tokio::time::sleep(Duration::from_secs(100)), |stop| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    let fail = tokio::time::sleep(Duration::from_secs(20));
                    match futures_util::future::select(pin!(fail), stop).await {
                        Either::Left(_) => Err(backend_error()),
                        Either::Right(_) => Ok(()),
                    }
                }
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        // 20 s runs with 1 s backoffs: 5 runs fit in 100 s.
        assert_eq!(runs.load(Ordering::SeqCst), 5);
    }
}
