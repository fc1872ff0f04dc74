//! A job queue named by URL: where producers, the CLI's redrive and the example push jobs.

use std::{fmt, time::Duration};

#[cfg(any(feature = "sqlite", feature = "redis", feature = "postgres"))]
use apalis_core::{
    backend::{ext::with_codec::WithCodec, TaskSink},
    task::builder::TaskBuilder,
};
use rampart_dlq::DeadLetterRecord;

use crate::{Job, JobCodec};

/// A dead-letter record that cannot become a job again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotAJob {
    /// The record was not written by a job worker (no `kind` / `args` in its payload).
    #[error("record {0} is not a job (no kind and args in its payload)")]
    Foreign(String),
    /// Redaction or the size cap changed the arguments; pushing them would run another job.
    #[error("record {0} was redacted or truncated; its arguments are not the job's")]
    Altered(String),
}

impl Job {
    /// The job a dead letter came from, to run again: attempt 0, its origin and enqueue time
    /// kept (so a second death names the same record), its redrive count one higher.
    ///
    /// # Errors
    ///
    /// [`NotAJob`] for records not written by a job worker, or whose arguments were redacted
    /// or truncated.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, RequestPart};
    /// use rampart_jobs::Job;
    ///
    /// let mut r = DeadLetterRecord::new("tts", DeadLetterReason::RetriesExhausted).request(RequestPart {
    ///     summary: "job tts 01J".into(),
    ///     payload: serde_json::json!({ "kind": "tts", "args": { "text": "hi" }, "origin": "01J" }),
    /// });
    /// r.redrive_count = 2;
    /// let job = Job::from_dead_letter(&r).unwrap();
    /// assert_eq!((job.attempt, job.redrives, job.origin.as_deref()), (0, 3, Some("01J")));
    /// ```
    pub fn from_dead_letter(r: &DeadLetterRecord) -> Result<Job, NotAJob> {
        let p = &r.request.payload;
        let (Some(kind), Some(args)) = (p.get("kind").and_then(|k| k.as_str()), p.get("args"))
        else {
            return Err(NotAJob::Foreign(r.id.to_string()));
        };
        if r.request_redacted || r.kept_whole().is_err() {
            return Err(NotAJob::Altered(r.id.to_string()));
        }
        let enqueued_at_ms = r
            .first_attempt_at
            .0
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(Job {
            kind: kind.to_owned(),
            args: args.clone(),
            attempt: 0,
            redrives: r.redrive_count.saturating_add(1),
            origin: p.get("origin").and_then(|o| o.as_str()).map(str::to_owned),
            enqueued_at_ms,
            undecodable: None,
        })
    }
}

/// Why a job queue could not be opened or pushed to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The URL names no backend this build supports.
    #[error("job queue URL {url:?}: {reason}")]
    Url {
        /// The URL, password scrubbed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend refused.
    #[error("job queue {url}: {source}")]
    Backend {
        /// The URL, password scrubbed.
        url: String,
        /// The backend's error.
        #[source]
        source: rampart_core::BoxError,
    },
}

/// How long [`redis_config`] has apalis-redis keep an idempotency key: 7 days, far longer
/// than the window in which one attempt's retry can be pushed twice (a worker dying between
/// the push and its acknowledgement, then the orphan timeout).
#[cfg(feature = "redis")]
pub const REDIS_IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The apalis-redis config for queue `queue` that rampart's retries need: apalis' defaults,
/// except that idempotency keys are kept for [`REDIS_IDEMPOTENCY_TTL`]. apalis-redis 1.0's
/// default (`idempotency_ttl: None`, documented as "keys do not expire") has its push script
/// `EXPIRE` each key with 0 seconds, which deletes it at once: a retry pushed twice for the
/// same attempt would then be stored twice. Use this config for workers and producers alike.
///
/// # Example
///
/// ```
/// use rampart_jobs::{redis_config, REDIS_IDEMPOTENCY_TTL};
///
/// let config = redis_config("tts");
/// assert_eq!(config.queue.as_ref(), "tts");
/// assert_eq!(config.idempotency_ttl, Some(REDIS_IDEMPOTENCY_TTL));
/// ```
#[cfg(feature = "redis")]
pub fn redis_config(queue: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue)
        .idempotency_ttl(Some(REDIS_IDEMPOTENCY_TTL))
}

/// An apalis queue named by URL — `sqlite://PATH` (apalis-sqlite; created if missing),
/// `redis://…` (apalis-redis) or `postgres://…` (apalis-postgres) — and a queue name.
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn demo() -> Result<(), rampart_jobs::QueueError> {
/// use rampart_jobs::{Job, JobQueue};
///
/// let mut q = JobQueue::open("sqlite://jobs.db", "tts").await?;
/// q.push(Job::new("tts", &serde_json::json!({ "text": "hello" })).unwrap(), None).await?;
/// # Ok(()) }
/// ```
pub struct JobQueue {
    url: String,
    inner: Inner,
}

enum Inner {
    #[cfg(feature = "sqlite")]
    Sqlite(WithCodec<apalis_sqlite::SqliteStorage<Job>, JobCodec>),
    #[cfg(feature = "redis")]
    Redis(WithCodec<apalis_redis::RedisStorage<Job>, JobCodec>),
    #[cfg(feature = "postgres")]
    Postgres(WithCodec<apalis_postgres::PostgresStorage<Job>, JobCodec>),
    #[allow(dead_code)]
    None(std::convert::Infallible, JobCodec),
}

impl fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobQueue")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`.
fn scrub(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let auth = &url[s + 3..at];
            match auth.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &auth[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl JobQueue {
    /// Opens queue `queue` at `url` (running the backend's migrations for SQL backends).
    ///
    /// # Errors
    ///
    /// [`QueueError::Url`] for a scheme this build has no backend for;
    /// [`QueueError::Backend`] when the backend cannot be reached or set up.
    pub async fn open(url: &str, queue: &str) -> Result<JobQueue, QueueError> {
        let shown = scrub(url);
        let backend_err = |e: rampart_core::BoxError| QueueError::Backend {
            url: shown.clone(),
            source: e,
        };
        let _ = (&backend_err, queue);
        if queue.is_empty() {
            return Err(QueueError::Url {
                url: shown,
                reason: "the queue name is empty".into(),
            });
        }
        #[cfg(feature = "sqlite")]
        if let Some(path) = url.strip_prefix("sqlite://") {
            let opts = apalis_sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true);
            let pool = apalis_sqlite::SqlitePool::connect_with(opts)
                .await
                .map_err(|e| backend_err(Box::new(e)))?;
            apalis_sqlite::SqliteStorage::setup(&pool)
                .await
                .map_err(|e| backend_err(Box::new(e)))?;
            let config = apalis_sqlite::Config::default().queue(queue);
            let storage = apalis_sqlite::SqliteStorage::<Job>::new(&pool).with_config(config);
            return Ok(JobQueue {
                url: shown,
                inner: Inner::Sqlite(WithCodec::new(storage, JobCodec)),
            });
        }
        #[cfg(feature = "redis")]
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let conn = apalis_redis::connect(url)
                .await
                .map_err(|e| backend_err(Box::new(e)))?;
            let storage =
                apalis_redis::RedisStorage::<Job>::new(conn).with_config(redis_config(queue));
            return Ok(JobQueue {
                url: shown,
                inner: Inner::Redis(WithCodec::new(storage, JobCodec)),
            });
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = apalis_postgres::PgPool::connect(url)
                .await
                .map_err(|e| backend_err(Box::new(e)))?;
            apalis_postgres::PostgresStorage::setup(&pool)
                .await
                .map_err(|e| backend_err(Box::new(e)))?;
            let config = apalis_postgres::Config::default().queue(queue);
            let storage = apalis_postgres::PostgresStorage::<Job>::new(&pool).with_config(config);
            return Ok(JobQueue {
                url: shown,
                inner: Inner::Postgres(WithCodec::new(storage, JobCodec)),
            });
        }
        Err(QueueError::Url {
            url: shown,
            reason: "expected sqlite://PATH, redis://HOST or postgres://HOST/DB (with the matching feature of rampart-jobs)".into(),
        })
    }

    /// The queue's URL, password scrubbed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Pushes `job`, to run after `delay` (now if `None`). Its idempotency key is
    /// `"{origin}#redrive{n}"` for a redriven job, so a second push of the same redrive is
    /// stored once where the backend knows keys.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] when the backend refuses the job.
    pub async fn push(&mut self, job: Job, delay: Option<Duration>) -> Result<(), QueueError> {
        let key = job
            .origin
            .as_ref()
            .map(|o| format!("{o}#redrive{}", job.redrives));
        let _ = (&key, &delay);
        let url = self.url.clone();
        let wrap = move |e: rampart_core::BoxError| QueueError::Backend { url, source: e };
        match &mut self.inner {
            #[cfg(feature = "sqlite")]
            Inner::Sqlite(b) => b
                .push_task(task(job, delay, key))
                .await
                .map_err(|e| wrap(Box::new(e))),
            #[cfg(feature = "redis")]
            Inner::Redis(b) => b
                .push_task(task(job, delay, key))
                .await
                .map_err(|e| wrap(Box::new(e))),
            #[cfg(feature = "postgres")]
            Inner::Postgres(b) => b
                .push_task(task(job, delay, key))
                .await
                .map_err(|e| wrap(Box::new(e))),
            Inner::None(never, _) => {
                let _ = wrap;
                match *never {}
            }
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "redis", feature = "postgres"))]
fn task(job: Job, delay: Option<Duration>, key: Option<String>) -> apalis_core::task::Task<Job> {
    let mut b = TaskBuilder::new(job);
    if let Some(d) = delay {
        b = b.run_after(d);
    }
    if let Some(k) = key {
        b = b.idempotency_key(k);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn passwords_are_scrubbed() {
        assert_eq!(scrub("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(scrub("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(scrub("sqlite://jobs.db"), "sqlite://jobs.db");
    }
}
