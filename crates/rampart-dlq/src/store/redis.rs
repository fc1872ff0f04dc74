//! The Redis store (cargo feature `redis`).
//!
//! # Keys
//!
//! All keys share one hash tag, `{prefix}`, so that every script touches one cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:records` | hash | record id → record JSON |
//! | `{prefix}:index` | sorted set, all scores 0 | record ids; UUID v7 text sorts by time, so lexical order is age order |
//! | `{prefix}:evictions` | string (integer) | records evicted by the size cap |
//! | the retry list (default `{prefix}:retry_queue`) | list | requeued records' JSON |
//!
//! Every mutation that touches more than one key is one Lua script, so it is atomic.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable,
    DEFAULT_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId};

/// The reference design's list name, used as the default key prefix.
pub const DEFAULT_PREFIX: &str = "dead_letter_queue";

static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
local n = redis.call('ZCARD', KEYS[2])
local cap = tonumber(ARGV[3])
if n > cap then
  local old = redis.call('ZRANGE', KEYS[2], 0, n - cap - 1)
  for _, id in ipairs(old) do redis.call('HDEL', KEYS[1], id) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - cap - 1)
  redis.call('INCRBY', KEYS[3], #old)
end
return 1
",
    )
});

static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
",
    )
});

static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], v)
return v
",
    )
});

static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('ZRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1])
for _, id in ipairs(old) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1])
return #old
",
    )
});

/// Dead letters in Redis, via redis-rs's reconnecting [`ConnectionManager`]. Cloning shares
/// the connection.
///
/// # Example
///
/// ```no_run
/// # #[cfg(feature = "sqlite")] mod m {
/// use rampart_dlq::{Fallback, RedisStore, SqliteStore};
///
/// # async fn f() -> Result<(), rampart_dlq::StoreError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/0", "dead_letter_queue", 1_000).await?;
/// // Never lose a record while Redis is down: keep it in a local SQLite file, drain later
/// // (needs the `sqlite` feature).
/// let store = Fallback::new(redis, SqliteStore::open("/var/lib/app/dlq-fallback.sqlite", 100_000)?);
/// # Ok(()) }
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    records: String,
    index: String,
    evictions: String,
    retry: String,
    max_size: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("records", &self.records)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

fn err(op: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |source| StoreError::Redis { op, source }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`), keeping at most `max_size` records under
    /// keys tagged `{prefix}`. Operations time out after 2 s, so that a [`Fallback`] takes
    /// over quickly when Redis is down; the connection is re-established in the background.
    ///
    /// # Errors
    ///
    /// If the URL is invalid or Redis cannot be reached.
    ///
    /// [`Fallback`]: super::fallback::Fallback
    pub async fn connect(url: &str, prefix: &str, max_size: usize) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err("parse the URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err("connect"))?;
        let tag = format!("{{{prefix}}}");
        Ok(RedisStore {
            con,
            records: format!("{tag}:records"),
            index: format!("{tag}:index"),
            evictions: format!("{tag}:evictions"),
            retry: format!("{tag}:retry_queue"),
            max_size: max_size.max(1),
        })
    }

    /// Connects with the reference design's key prefix and cap.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_default(url: &str) -> Result<Self, StoreError> {
        RedisStore::connect(url, DEFAULT_PREFIX, DEFAULT_MAX_SIZE).await
    }

    /// Requeued records go to list `key` instead (keep the `{prefix}` hash tag in it on a
    /// cluster).
    #[must_use]
    pub fn retry_list(mut self, key: impl Into<String>) -> Self {
        self.retry = key.into();
        self
    }

    /// The retry list's key.
    pub fn retry_key(&self) -> &str {
        &self.retry
    }

    /// The records hash's key.
    pub fn records_key(&self) -> &str {
        &self.records
    }

    /// The index's key.
    pub fn index_key(&self) -> &str {
        &self.index
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
        op: &'static str,
    ) -> Result<T, StoreError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut con = self.con.clone();
        inv.invoke_async(&mut con).await.map_err(err(op))
    }

    fn parse(key: &str, bytes: &[u8]) -> Result<DeadLetterRecord, Unreadable> {
        DeadLetterRecord::from_json(bytes).map_err(|e| Unreadable {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl DeadLetterStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let id = record.id.to_string();
        let json = super::encode(&record)?;
        let cap = self.max_size.to_string();
        let stored: i64 = self
            .script(
                &PUSH,
                &[&self.records, &self.index, &self.evictions],
                &[id.as_bytes(), &json, cap.as_bytes()],
                "push",
            )
            .await?;
        Ok(if stored == 1 {
            Pushed::Stored
        } else {
            Pushed::Duplicate
        })
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let mut con = self.con.clone();
        let v: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&self.records)
            .arg(id.to_string())
            .query_async(&mut con)
            .await
            .map_err(err("get"))?;
        match v {
            None => Ok(None),
            Some(bytes) => RedisStore::parse(&id.to_string(), &bytes)
                .map(Some)
                .map_err(|u| StoreError::Format {
                    path: format!("{} {}", self.records, u.key),
                    reason: u.reason,
                }),
        }
    }

    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        let mut con = self.con.clone();
        let mut page = Page::default();
        let min = q.since.map_or_else(|| "-".to_owned(), |s| format!("[{s}"));
        let mut cursor = q.before;
        // Scan the id index newest first in chunks, keeping the records that match, until
        // `limit` matched (plus one to know whether there is a next page) or the index ends.
        let chunk = q.limit.saturating_add(1).clamp(1, 512);
        while page.records.len() <= q.limit {
            let max = cursor.map_or_else(|| "+".to_owned(), |b| format!("({b}"));
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&self.index)
                .arg(max)
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(chunk)
                .query_async(&mut con)
                .await
                .map_err(err("list"))?;
            if ids.is_empty() {
                break;
            }
            let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&self.records)
                .arg(&ids)
                .query_async(&mut con)
                .await
                .map_err(err("list"))?;
            let exhausted = ids.len() < chunk;
            for (id, v) in ids.iter().zip(values) {
                if let Ok(parsed) = id.parse::<RecordId>() {
                    cursor = Some(parsed);
                }
                match v {
                    // Deleted between the two reads.
                    None => {}
                    Some(bytes) => match RedisStore::parse(id, &bytes) {
                        Ok(r) if q.matches(&r) => page.records.push(r),
                        Ok(_) => {}
                        Err(u) => page.unreadable.push(u),
                    },
                }
            }
            if exhausted {
                break;
            }
        }
        if page.records.len() > q.limit {
            page.records.truncate(q.limit);
            page.next = page.records.last().map(|r| r.id);
        }
        Ok(page)
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        let id = id.to_string();
        let n: i64 = self
            .script(
                &DELETE,
                &[&self.records, &self.index],
                &[id.as_bytes()],
                "delete",
            )
            .await?;
        Ok(n > 0)
    }

    async fn replace(&self, record: DeadLetterRecord) -> Result<bool, StoreError> {
        let id = record.id.to_string();
        let json = super::encode(&record)?;
        let n: i64 = self
            .script(
                &REPLACE,
                &[&self.records],
                &[id.as_bytes(), &json],
                "replace",
            )
            .await?;
        Ok(n == 1)
    }

    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let key = id.to_string();
        let v: Option<Vec<u8>> = self
            .script(
                &REQUEUE,
                &[&self.records, &self.index, &self.retry],
                &[key.as_bytes()],
                "requeue",
            )
            .await?;
        match v {
            None => Ok(None),
            Some(bytes) => {
                RedisStore::parse(&key, &bytes)
                    .map(Some)
                    .map_err(|u| StoreError::Format {
                        path: format!("{} {}", self.records, u.key),
                        reason: u.reason,
                    })
            }
        }
    }

    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let v: Value = redis::cmd("LPOP")
            .arg(&self.retry)
            .arg(limit)
            .query_async(&mut con)
            .await
            .map_err(err("take requeued"))?;
        let items: Vec<Vec<u8>> = match v {
            Value::Nil => Vec::new(),
            other => redis::from_redis_value(other)
                .map_err(|e| err("take requeued")(RedisError::from(e)))?,
        };
        Ok(items
            .iter()
            .filter_map(|b| match RedisStore::parse(&self.retry, b) {
                Ok(r) => Some(r),
                Err(u) => {
                    tracing::warn!(key = %u.key, reason = %u.reason, "unreadable requeued record skipped");
                    None
                }
            })
            .collect())
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let cut = cutoff(age).to_string();
        let n: i64 = self
            .script(
                &PURGE,
                &[&self.records, &self.index],
                &[cut.as_bytes()],
                "purge",
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut con = self.con.clone();
        let (records, requeued, evictions): (usize, usize, Option<u64>) = redis::pipe()
            .cmd("ZCARD")
            .arg(&self.index)
            .cmd("LLEN")
            .arg(&self.retry)
            .cmd("GET")
            .arg(&self.evictions)
            .query_async(&mut con)
            .await
            .map_err(err("stats"))?;
        Ok(StoreStats {
            records,
            requeued,
            evictions: evictions.unwrap_or(0),
            max_size: self.max_size,
        })
    }
}
