//! Redis through rampart: the redis-rs classifier, and the reference design's "enqueue
//! request" as an idempotent tower service.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Script};
use rampart_core::{Classify, Error, Outcome};
use tower_service::Service;

/// The outcome of a redis-rs error: I/O errors, dropped or refused connections, timeouts
/// and the server's `TRYAGAIN`, `LOADING`, `MASTERDOWN`, `CLUSTERDOWN`, `BUSY` and `READONLY`
/// (a failover in progress) are transient; `WRONGTYPE` and other command errors (`ERR`,
/// syntax) are the caller's and rejected; `NOAUTH`, `WRONGPASS`, `NOPERM` and anything else
/// are permanent.
///
/// # Example
///
/// ```
/// use rampart::redis::redis_error;
/// use rampart::Outcome;
///
/// let e = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
/// assert_eq!(redis_error(&e), Outcome::TRANSIENT);
/// ```
pub fn redis_error(e: &RedisError) -> Outcome {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return Outcome::TRANSIENT;
    }
    match e.code() {
        Some("TRYAGAIN" | "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY" | "READONLY") => {
            Outcome::TRANSIENT
        }
        Some("WRONGTYPE" | "ERR" | "EXECABORT") => Outcome::Rejected,
        _ if e.kind() == ::redis::ErrorKind::ClusterConnectionNotFound => Outcome::TRANSIENT,
        _ => Outcome::Permanent,
    }
}

/// Classifies redis-rs errors with [`redis_error`]; every `Ok` is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisClassifier;

impl<Res> Classify<Res, RedisError> for RedisClassifier {
    fn classify(&self, result: Result<&Res, &RedisError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => redis_error(e),
        }
    }
}

/// A job for [`Enqueue`]: its id (the idempotency key) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's unique id.
    pub id: String,
    /// The job's JSON.
    pub json: String,
}

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[1], ARGV[1])
  return 1
end
return 0
",
    )
});

/// The reference design's "enqueue request" (`LPUSH` of a JSON job) as a tower service, made
/// idempotent on the job's id so that retrying it is safe.
///
/// A retry after an ambiguous failure — the command reached Redis but the reply was lost —
/// must not enqueue the job twice. Each enqueue is one Lua script: `SET {queue}:seen:<id> 1
/// NX EX <ttl>` and, only if that key was new, `LPUSH`. Scripts run atomically and are
/// persisted as a whole, so either both effects happened or neither; a repeat finds the key
/// and does nothing. The answer says which (`true`: enqueued now, `false`: already there).
///
/// # Example
///
/// ```no_run
/// use rampart::redis::{Enqueue, Job};
/// use tower::ServiceExt;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let enqueue = Enqueue::connect("redis://127.0.0.1:6379/0", "tts_jobs").await?;
/// let fresh = enqueue.oneshot(Job { id: "req-1".into(), json: "{\"text\":\"hi\"}".into() }).await?;
/// assert!(fresh);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Enqueue {
    con: ConnectionManager,
    queue: String,
    seen_prefix: String,
    dedup_ttl: Duration,
}

impl std::fmt::Debug for Enqueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enqueue")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Enqueue {
    /// Connects to `url` and enqueues onto list `queue` (its dedup keys share the hash tag
    /// `{queue}`, so the script touches one cluster slot). Dedup keys live 24 hours.
    ///
    /// # Errors
    ///
    /// If the URL is invalid or Redis cannot be reached.
    pub async fn connect(url: &str, queue: &str) -> Result<Self, RedisError> {
        let client = ::redis::Client::open(url)?;
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(0);
        let con = ConnectionManager::new_with_config(client, config).await?;
        Ok(Enqueue {
            con,
            queue: format!("{{{queue}}}"),
            seen_prefix: format!("{{{queue}}}:seen:"),
            dedup_ttl: Duration::from_secs(24 * 3600),
        })
    }

    /// The list's key.
    pub fn queue_key(&self) -> &str {
        &self.queue
    }
}

impl Service<Job> for Enqueue {
    type Response = bool;
    type Error = Error<RedisError>;
    type Future = Pin<Box<dyn Future<Output = Result<bool, Error<RedisError>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        let mut con = self.con.clone();
        let keys = [
            self.queue.clone(),
            format!("{}{}", self.seen_prefix, job.id),
        ];
        let ttl = self.dedup_ttl.as_secs().max(1);
        Box::pin(async move {
            let mut inv = ENQUEUE.prepare_invoke();
            inv.key(&keys[0]).key(&keys[1]).arg(&job.json).arg(ttl);
            let n: i64 = inv
                .invoke_async(&mut con)
                .await
                .map_err(Error::from_inner)?;
            Ok(n == 1)
        })
    }
}
