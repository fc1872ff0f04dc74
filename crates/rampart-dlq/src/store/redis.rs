//! The Redis store (cargo feature `redis`), on one server or a Redis Cluster.
//!
//! # Keys
//!
//! All keys share one hash tag, `{prefix}`, so that every script touches one cluster slot. An
//! empty prefix means [`DEFAULT_PREFIX`] (an empty tag `{}` would hash every key by its whole
//! name and scatter them over the cluster); a prefix with `{` or `}` is refused.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:records` | hash | record id → record JSON: every record held, the source of truth |
//! | `{prefix}:pending` | list | ids pushed since the index last caught up, oldest first |
//! | `{prefix}:index` | sorted set, all scores 0 | the other ids; UUID v7 text sorts by time, so lexical order is age order |
//! | `{prefix}:evictions` | string (integer) | records evicted by the size cap |
//! | `{prefix}:meta` | hash | field `max_size`: the store's cap, set by [`RedisStore::connect`] |
//! | the retry list (default `{prefix}:retry_queue`) | list | requeued records' JSON |
//! | `{prefix}:quarantine` | list | retry-list entries that could not be read, byte for byte ([`RedisStore::quarantined`]) |
//!
//! # Layout: the index catches up when order is needed
//!
//! A push costs the server one hash field per record plus one short list element (its id):
//! one `HSET` and one `RPUSH` per batch (and one `HGET` of the store's cap). Ordering the
//! ids (a sorted-set insert costs about as much again as the hash field) is deferred: the
//! pending ids are moved into the index, oldest first and skipping records deleted or
//! requeued meanwhile, by the script that needs order —
//! a push that takes the store over its cap (which then evicts the oldest ids exactly, as
//! before), a listing (10,000 ids per script call, so a long backlog never blocks the server
//! for long) or a purge. Below the cap each record is therefore written about once; at the
//! cap it is also indexed and later evicted, as in the previous layout. The count of records
//! (`stats`, the cap) is `HLEN` of the hash. Ids of records deleted while pending stay in the
//! pending list until the next catch-up; a push catches up whenever they would outnumber the
//! records held by more than 1,024, so they cannot pile up.
//!
//! Data written by the previous layout (the same hash, every id in the index, no pending
//! list) is a state of this one with nothing pending, so it is read, counted, evicted and
//! purged as is: there is nothing to migrate. (The reverse does not hold: a process running
//! the previous version does not see records still pending; upgrade the readers, such as the
//! `rampart` CLI, together with the writers.)
//!
//! # The cap is the store's
//!
//! [`RedisStore::connect`] records its `max_size` in `{prefix}:meta`, and every push applies
//! the cap recorded there, whichever handle pushes: a tool that opens the store with
//! [`RedisStore::connect_existing`] (the `rampart` CLI does) reports and keeps the
//! application's cap instead of imposing its own. A store written before the cap was recorded
//! has no `{prefix}:meta`; it is read as is, with a cap of [`UNRECORDED_MAX_SIZE`] for the
//! handles that did not set one, until the application's next `connect` records its cap.
//!
//! # Atomicity
//!
//! Every mutation is one Lua script, and every script first checks the `TYPE` of each key it
//! touches: if one holds another type (say something else wrote a string under the index), the
//! script refuses before any write with [`StoreError::RedisKeyType`] naming the key. So a push is
//! all or nothing, and a [`Fallback`](super::fallback::Fallback) over this store journals the
//! record instead of being told it is a duplicate.
//!
//! # Batching
//!
//! Pushes go to a writer task that owns a connection. Up to two batches are at the server at
//! once; the writer waits for a free slot before it takes the queue, then lets the tasks that
//! are ready to run queue their pushes too (one `yield_now`), and takes everything queued
//! (up to 512 records or 8 MiB) as the next batch, stored with one script call, which also
//! applies the size cap once for the batch. So the busier the server, the larger the batches
//! (64 writers: ~29 records per call, against ~11 when the writer took the queue first and
//! then waited for one of four slots); each push is then answered with its
//! own [`Pushed::Stored`] or [`Pushed::Duplicate`] (a record pushed twice in one batch is sent
//! once, and its second push answered `Duplicate`). The writer stops when the last clone of
//! the store is dropped.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable,
    DEFAULT_MAX_SIZE, UNRECORDED_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId};

/// The reference design's list name, used as the default key prefix (and as the hash tag when
/// the prefix given is empty).
pub const DEFAULT_PREFIX: &str = "dead_letter_queue";

/// At most this many records per push script call.
const MAX_BATCH: usize = 512;
/// At most this many bytes of records per push script call (a single larger record still goes,
/// alone).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Push batches at the server at once.
const IN_FLIGHT: usize = 2;
/// Pushes waiting for the writer before `push` waits for room.
const QUEUE: usize = 4 * MAX_BATCH;
/// How often `take_requeued` re-reads a retry list that changed under it before giving up.
const TAKE_ATTEMPTS: usize = 64;
/// Index catch-up calls a listing makes at most (10,000 ids each).
const CATCH_UP_CALLS: usize = 1_000;
/// Retry-list entries read per `take_requeued` round.
const TAKE_CHUNK: usize = 256;

/// The error code a script answers with when a key holds the wrong type.
const KEYTYPE: &str = "RAMPART_KEYTYPE";

/// A Lua script whose keys are type-checked before anything else runs.
struct Lua {
    script: Script,
    /// Per key: the type the script checks for (`TYPE` name, or `counter`) and how an error
    /// message names it.
    wants: &'static [(&'static str, &'static str)],
}

const RECORDS: (&str, &str) = ("hash", "hash");
const INDEX: (&str, &str) = ("zset", "sorted set");
const COUNTER: (&str, &str) = ("counter", "integer string");
const LIST: (&str, &str) = ("list", "list");

impl Lua {
    fn new(wants: &'static [(&'static str, &'static str)], body: &str) -> Lua {
        let list = wants
            .iter()
            .map(|(t, _)| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let src = format!(
            r"
local want = {{{list}}}
for i = 1, #want do
  local t = redis.call('TYPE', KEYS[i]).ok
  if want[i] == 'counter' then
    if t == 'string' then
      if not tonumber(redis.call('GET', KEYS[i])) then
        return redis.error_reply('{KEYTYPE} ' .. i .. ' non-integer string')
      end
    elseif t ~= 'none' then
      return redis.error_reply('{KEYTYPE} ' .. i .. ' ' .. t)
    end
  elseif t ~= 'none' and t ~= want[i] then
    return redis.error_reply('{KEYTYPE} ' .. i .. ' ' .. t)
  end
end
{body}"
        );
        Lua {
            script: Script::new(&src),
            wants,
        }
    }
}

/// Lua that brings the index up to date: `catch_up(limit)` moves up to `limit` ids from the
/// head (oldest end) of the pending list (KEYS[3]) into the index (KEYS[2]), skipping ids
/// whose record (KEYS[1]) was deleted or requeued meanwhile, and returns how many ids are
/// still pending; `catch_up_all()` repeats it until none is.
const CATCH_UP: &str = r"
local function catch_up(limit)
  local ids = redis.call('LRANGE', KEYS[3], 0, limit - 1)
  if #ids == 0 then return 0 end
  local z, k = {}, 0
  for i = 1, #ids do
    if redis.call('HEXISTS', KEYS[1], ids[i]) == 1 then
      z[k + 1] = '0'
      z[k + 2] = ids[i]
      k = k + 2
    end
  end
  for i = 1, k, 1000 do
    redis.call('ZADD', KEYS[2], unpack(z, i, math.min(i + 999, k)))
  end
  redis.call('LTRIM', KEYS[3], #ids, -1)
  return redis.call('LLEN', KEYS[3])
end
local function catch_up_all()
  while catch_up(10000) > 0 do end
end
";

/// KEYS: records, index, pending, evictions, meta. ARGV: the handle's cap (used when the
/// store has none recorded in meta's `max_size`), then (id, json) pairs with distinct ids.
/// Returns one character per pair: `1` stored, `0` duplicate.
///
/// Below the cap a push is one `HSET` of the new records and one `RPUSH` of their ids onto
/// the pending list; the index is brought up to date only when the cap must evict (or when
/// the pending list holds mostly ids of records gone meanwhile).
static PUSH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS, INDEX, LIST, COUNTER, RECORDS],
        &format!(
            r"{CATCH_UP}
local cap = tonumber(redis.call('HGET', KEYS[5], 'max_size'))
if not cap or cap < 1 then cap = tonumber(ARGV[1]) end
local n = (#ARGV - 1) / 2
local ids = {{}}
for i = 1, n do ids[i] = ARGV[2 * i] end
local existing = redis.call('HMGET', KEYS[1], unpack(ids))
local out
local dups = false
for i = 1, n do
  if existing[i] then dups = true break end
end
if not dups then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('RPUSH', KEYS[3], unpack(ids))
  out = string.rep('1', n)
else
  local flags, hset, fresh = {{}}, {{}}, {{}}
  local h, f = 0, 0
  for i = 1, n do
    if existing[i] then
      flags[i] = '0'
    else
      flags[i] = '1'
      f = f + 1
      fresh[f] = ids[i]
      hset[h + 1] = ids[i]
      hset[h + 2] = ARGV[2 * i + 1]
      h = h + 2
    end
  end
  if f > 0 then
    redis.call('HSET', KEYS[1], unpack(hset))
    redis.call('RPUSH', KEYS[3], unpack(fresh))
  end
  out = table.concat(flags)
end
local size = redis.call('HLEN', KEYS[1])
if size > cap then
  catch_up_all()
  local evicted = 0
  while size > cap do
    local old = redis.call('ZRANGE', KEYS[2], 0, math.min(size - cap, 1000) - 1)
    if #old == 0 then break end
    local gone = redis.call('HDEL', KEYS[1], unpack(old))
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, #old - 1)
    evicted = evicted + gone
    size = size - gone
  end
  if evicted > 0 then redis.call('INCRBY', KEYS[4], evicted) end
elseif redis.call('LLEN', KEYS[3]) > size + 1024 then
  catch_up_all()
end
return out
"
        ),
    )
});

/// KEYS: meta. ARGV: a cap to record, or nothing. Returns the cap recorded (after the
/// write), or nil if none is.
static META: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS],
        r"
if ARGV[1] then redis.call('HSET', KEYS[1], 'max_size', ARGV[1]) end
return redis.call('HGET', KEYS[1], 'max_size')
",
    )
});

/// KEYS: records, index, pending. Indexes up to 10,000 pending ids; returns how many are
/// still pending.
static INDEX_PENDING: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS, INDEX, LIST],
        &format!("{CATCH_UP}\nreturn catch_up(10000)\n"),
    )
});

/// KEYS: records, index, pending (its stale entry is skipped when the index catches up).
static DELETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS, INDEX, LIST],
        r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
",
    )
});

static REPLACE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS],
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// KEYS: records, index, pending, retry list.
static REQUEUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS, INDEX, LIST, LIST],
        r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[4], v)
return v
",
    )
});

/// KEYS: records, index, pending. Returns how many records were removed.
static PURGE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[RECORDS, INDEX, LIST],
        &format!(
            r"{CATCH_UP}
catch_up_all()
local old = redis.call('ZRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1])
local gone = 0
for i = 1, #old, 1000 do
  gone = gone + redis.call('HDEL', KEYS[1], unpack(old, i, math.min(i + 999, #old)))
end
redis.call('ZREMRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[1])
return gone
"
        ),
    )
});

/// KEYS: retry list, quarantine. ARGV: n, the n entries expected at the head of the retry
/// list, then the 1-based positions of the unreadable ones. If the head still holds exactly
/// those entries, removes them, appends the unreadable ones to the quarantine and returns 1;
/// otherwise (another taker was faster) changes nothing and returns 0.
static TAKE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        &[LIST, LIST],
        r"
local n = tonumber(ARGV[1])
local cur = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #cur ~= n then return 0 end
for i = 1, n do
  if cur[i] ~= ARGV[i + 1] then return 0 end
end
redis.call('LTRIM', KEYS[1], n, -1)
for j = n + 2, #ARGV do
  redis.call('RPUSH', KEYS[2], cur[tonumber(ARGV[j])])
end
return 1
",
    )
});

/// The connection a store talks through: one server (reconnecting) or a cluster.
#[derive(Clone)]
enum Con {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

/// A retry-list entry that could not be read, kept in the quarantine list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The entry, byte for byte as it was in the retry list.
    pub bytes: Vec<u8>,
    /// Why it cannot be read as a record.
    pub reason: String,
}

/// One push waiting for the writer.
struct Job {
    id: String,
    json: Vec<u8>,
    ack: oneshot::Sender<Result<Pushed, StoreError>>,
}

/// What the writer task needs: its connection and the keys a push touches.
struct Writer {
    con: Con,
    records: String,
    index: String,
    pending: String,
    evictions: String,
    meta: String,
    cap: String,
}

impl Writer {
    /// Takes the queued pushes in batches until every sender is gone. Up to [`IN_FLIGHT`]
    /// batches are at the server at once; the writer waits for a free slot *before* it takes
    /// the queue, so while the slots are busy pushes gather into the next, larger batch (the
    /// busier the server, the larger the batches).
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        loop {
            // The semaphore is never closed, so this always gets a permit.
            let Ok(mut permit) = slots.clone().acquire_owned().await else {
                return;
            };
            if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                return;
            }
            // Let the tasks that are ready to run (typically the writers just answered,
            // making their next record) queue their pushes before the batch is closed.
            tokio::task::yield_now().await;
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(jobs.len());
            let mut bytes = 0usize;
            for job in jobs.drain(..) {
                if !batch.is_empty() && bytes.saturating_add(job.json.len()) > MAX_BATCH_BYTES {
                    this.spawn_write(permit, std::mem::take(&mut batch));
                    let Ok(next) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    permit = next;
                    bytes = 0;
                }
                bytes = bytes.saturating_add(job.json.len());
                batch.push(job);
            }
            this.spawn_write(permit, batch);
        }
    }

    /// Writes `batch` in a task of its own, holding `permit` (a slot) until it is done.
    fn spawn_write(self: &Arc<Self>, permit: OwnedSemaphorePermit, batch: Vec<Job>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.write(batch).await;
            drop(permit);
        });
    }

    /// Stores `batch` with one script call and answers each push. A record pushed more than
    /// once in the batch is sent once; its other pushes are answered `Duplicate` (or with the
    /// same error).
    async fn write(&self, batch: Vec<Job>) {
        // `EVALSHA` built here rather than through `ScriptInvocation`, which copies every
        // argument twice more.
        let mut inv = redis::cmd("EVALSHA");
        inv.arg(PUSH.script.get_hash())
            .arg(5)
            .arg(&self.records)
            .arg(&self.index)
            .arg(&self.pending)
            .arg(&self.evictions)
            .arg(&self.meta)
            .arg(&self.cap);
        // For each job, the position of its id's first job in the batch.
        let mut first: Vec<usize> = Vec::with_capacity(batch.len());
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let mut sent = 0usize;
        for (i, job) in batch.iter().enumerate() {
            match seen.get(job.id.as_str()) {
                Some(&at) => first.push(at),
                None => {
                    seen.insert(&job.id, i);
                    first.push(i);
                    inv.arg(&job.id).arg(&job.json);
                    sent = sent.saturating_add(1);
                }
            }
        }
        drop(seen);
        let mut con = self.con.clone();
        let mut result: Result<Vec<u8>, RedisError> = inv.query_async(&mut con).await;
        if matches!(&result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            result = match PUSH.script.load_async(&mut con).await {
                Ok(_) => inv.query_async(&mut con).await,
                Err(e) => Err(e),
            };
        }
        let keys = [
            self.records.as_str(),
            self.index.as_str(),
            self.pending.as_str(),
            self.evictions.as_str(),
            self.meta.as_str(),
        ];
        let answers: Vec<Result<Pushed, StoreError>> = match result {
            Ok(flags) if flags.len() == sent => {
                // The flags are in the order the first pushes of each id were sent.
                let mut flags = flags.into_iter();
                first
                    .iter()
                    .enumerate()
                    .map(|(i, &at)| {
                        if at == i && flags.next() == Some(b'1') {
                            Ok(Pushed::Stored)
                        } else {
                            Ok(Pushed::Duplicate)
                        }
                    })
                    .collect()
            }
            Ok(flags) => {
                let e = RedisError::from((
                    ErrorKind::Client,
                    "the push script answered a different number of flags than records sent",
                    format!("{} flags for {sent} records", flags.len()),
                ));
                batch.iter().map(|_| Err(err("push")(e.clone()))).collect()
            }
            Err(e) => batch
                .iter()
                .map(|_| Err(script_error(&PUSH, &keys, "push", e.clone())))
                .collect(),
        };
        for (job, answer) in batch.into_iter().zip(answers) {
            let _ = job.ack.send(answer);
        }
    }
}

/// Dead letters in Redis or a Redis Cluster. Cloning shares the connection and the writer.
///
/// Pushes are batched by a writer task spawned on the Tokio runtime the store was connected
/// on (see the [module docs](self)); if that runtime shuts down, pushes fail with
/// [`StoreError::Closed`].
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
    con: Con,
    writer: mpsc::Sender<Job>,
    records: String,
    index: String,
    pending: String,
    evictions: String,
    meta: String,
    retry: String,
    quarantine: String,
    max_size: usize,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("records", &self.records)
            .field("cluster", &matches!(self.con, Con::Cluster(_)))
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

fn err(op: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |source| StoreError::Redis { op, source }
}

/// A script's error: the typed wrong-type refusal, naming the key, or the Redis error.
fn script_error(lua: &Lua, keys: &[&str], op: &'static str, e: RedisError) -> StoreError {
    if e.code() == Some(KEYTYPE) {
        let refusal = e.detail().and_then(|d| {
            let (i, found) = d.trim().split_once(' ')?;
            let i = i.parse::<usize>().ok()?.checked_sub(1)?;
            Some(StoreError::RedisKeyType {
                key: (*keys.get(i)?).to_owned(),
                found: found.to_owned(),
                expected: lua.wants.get(i)?.1,
            })
        });
        if let Some(refusal) = refusal {
            return refusal;
        }
    }
    StoreError::Redis { op, source: e }
}

/// A reconnecting connection to one server; operations time out after 2 s.
async fn connect_single(url: &str) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(err("parse the URL"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(err("connect"))
}

/// A recorded cap, if it is one (a positive integer).
fn parse_cap(v: &str) -> Option<usize> {
    v.parse::<usize>().ok().filter(|&c| c >= 1)
}

/// The hash tag for `prefix`: `{prefix}`, or `{DEFAULT_PREFIX}` for an empty prefix.
fn hash_tag(prefix: &str) -> Result<String, StoreError> {
    if prefix.contains(['{', '}']) {
        return Err(StoreError::RedisPrefix {
            prefix: prefix.to_owned(),
            reason: "must not contain `{` or `}` (the store wraps it in its hash tag)",
        });
    }
    let prefix = if prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        prefix
    };
    Ok(format!("{{{prefix}}}"))
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`), keeping at most `max_size` records (at
    /// least 1) under keys tagged `{prefix}` (an empty prefix means [`DEFAULT_PREFIX`]).
    /// `max_size` becomes the store's cap: it is recorded in `{prefix}:meta` and applies to
    /// every handle's pushes (see the [module docs](self)). Operations time out after 2 s, so
    /// that a [`Fallback`] takes over quickly when Redis is down; the connection is
    /// re-established in the background.
    ///
    /// # Errors
    ///
    /// If the URL or the prefix is invalid, Redis cannot be reached, or `{prefix}:meta` holds
    /// another type than a hash ([`StoreError::RedisKeyType`]).
    ///
    /// [`Fallback`]: super::fallback::Fallback
    pub async fn connect(url: &str, prefix: &str, max_size: usize) -> Result<Self, StoreError> {
        let tag = hash_tag(prefix)?;
        let con = connect_single(url).await?;
        RedisStore::open(Con::Single(con), &tag, Some(max_size.max(1))).await
    }

    /// Connects to the store under `{prefix}` keeping the cap its application recorded (with
    /// [`connect`](Self::connect)), for tools that work on an application's store without
    /// owning it, such as the `rampart` CLI. A store with no cap recorded (one written before
    /// caps were recorded) keeps [`UNRECORDED_MAX_SIZE`] for this handle's pushes and records
    /// nothing. Otherwise as [`connect`](Self::connect).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use rampart_dlq::{DeadLetterStore, RedisStore};
    ///
    /// # async fn f() -> Result<(), rampart_dlq::StoreError> {
    /// let url = "redis://127.0.0.1:6379/0";
    /// let app = RedisStore::connect(url, "billing", 100_000).await?;
    /// let tool = RedisStore::connect_existing(url, "billing").await?;
    /// assert_eq!(tool.stats().await?.max_size, 100_000); // the cap is the store's
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_existing(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let tag = hash_tag(prefix)?;
        let con = connect_single(url).await?;
        RedisStore::open(Con::Single(con), &tag, None).await
    }

    /// The store over `con`: records `set` as the store's cap (if given), reads the cap
    /// recorded, and starts the writer.
    async fn open(mut con: Con, tag: &str, set: Option<usize>) -> Result<Self, StoreError> {
        let meta = format!("{tag}:meta");
        let cap = set.map(|c| c.to_string());
        let op = if set.is_some() {
            "record the cap"
        } else {
            "read the cap"
        };
        let mut inv = META.script.prepare_invoke();
        inv.key(&meta);
        if let Some(cap) = &cap {
            inv.arg(cap);
        }
        let recorded: Option<String> = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| script_error(&META, &[&meta], op, e))?;
        let max_size = recorded
            .as_deref()
            .and_then(parse_cap)
            .or(set)
            .unwrap_or(UNRECORDED_MAX_SIZE);
        Ok(RedisStore::start(con, tag, max_size))
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:port` each, one is enough)
    /// belong to; otherwise as [`connect`](Self::connect). All keys share the `{prefix}` hash
    /// tag, so every script runs on the one node that owns its slot.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use rampart_dlq::RedisStore;
    ///
    /// # async fn f() -> Result<(), rampart_dlq::StoreError> {
    /// let store = RedisStore::connect_cluster(
    ///     &["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
    ///     "dead_letter_queue",
    ///     1_000,
    /// )
    /// .await?;
    /// assert_eq!(store.records_key(), "{dead_letter_queue}:records");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// If a URL or the prefix is invalid, or the cluster cannot be reached.
    pub async fn connect_cluster(
        nodes: &[&str],
        prefix: &str,
        max_size: usize,
    ) -> Result<Self, StoreError> {
        let tag = hash_tag(prefix)?;
        let client = ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2))
            .retries(1)
            .build()
            .map_err(err("parse the cluster URLs"))?;
        let con = client
            .get_async_connection()
            .await
            .map_err(err("connect to the cluster"))?;
        RedisStore::open(Con::Cluster(con), &tag, Some(max_size.max(1))).await
    }

    /// Connects with the reference design's key prefix and cap.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_default(url: &str) -> Result<Self, StoreError> {
        RedisStore::connect(url, DEFAULT_PREFIX, DEFAULT_MAX_SIZE).await
    }

    /// The store over `con`, with its writer task spawned (we are inside tokio: the
    /// connection was just made there).
    fn start(con: Con, tag: &str, max_size: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = RedisStore {
            con,
            writer: tx,
            records: format!("{tag}:records"),
            index: format!("{tag}:index"),
            pending: format!("{tag}:pending"),
            evictions: format!("{tag}:evictions"),
            meta: format!("{tag}:meta"),
            retry: format!("{tag}:retry_queue"),
            quarantine: format!("{tag}:quarantine"),
            max_size,
        };
        let writer = Writer {
            con: store.con.clone(),
            records: store.records.clone(),
            index: store.index.clone(),
            pending: store.pending.clone(),
            evictions: store.evictions.clone(),
            meta: store.meta.clone(),
            cap: max_size.to_string(),
        };
        tokio::spawn(writer.run(rx));
        store
    }

    /// Requeued records go to list `key` instead (keep the `{prefix}` hash tag in it on a
    /// cluster, or Redis refuses the scripts with `CROSSSLOT`).
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

    /// The pending list's key: ids of records pushed since the index last caught up (see the
    /// [module docs](self)).
    pub fn pending_key(&self) -> &str {
        &self.pending
    }

    /// The evictions counter's key.
    pub fn evictions_key(&self) -> &str {
        &self.evictions
    }

    /// The meta hash's key: its field `max_size` holds the store's cap (see the
    /// [module docs](self)).
    pub fn meta_key(&self) -> &str {
        &self.meta
    }

    /// The quarantine list's key: retry-list entries that could not be read are moved there
    /// by [`take_requeued`](DeadLetterStore::take_requeued), never dropped.
    pub fn quarantine_key(&self) -> &str {
        &self.quarantine
    }

    /// How many entries are in the quarantine.
    ///
    /// # Errors
    ///
    /// If Redis fails.
    pub async fn quarantine_len(&self) -> Result<usize, StoreError> {
        let mut con = self.con.clone();
        redis::cmd("LLEN")
            .arg(&self.quarantine)
            .query_async(&mut con)
            .await
            .map_err(err("count the quarantine"))
    }

    /// The oldest `limit` quarantined entries, each with why it cannot be read.
    ///
    /// # Errors
    ///
    /// If Redis fails.
    pub async fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.quarantine)
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut con)
            .await
            .map_err(err("list the quarantine"))?;
        Ok(items
            .into_iter()
            .map(|bytes| {
                let reason = match DeadLetterRecord::from_json(&bytes) {
                    Ok(_) => "readable now (quarantined by an older version?)".to_owned(),
                    Err(e) => e.to_string(),
                };
                Quarantined { bytes, reason }
            })
            .collect())
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        lua: &Lua,
        keys: &[&str],
        args: &[&[u8]],
        op: &'static str,
    ) -> Result<T, StoreError> {
        let mut inv = lua.script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut con = self.con.clone();
        inv.invoke_async(&mut con)
            .await
            .map_err(|e| script_error(lua, keys, op, e))
    }

    /// Brings the index up to date with the pending list, 10,000 ids per script call (so a
    /// long backlog never blocks the server for long). Gives up after [`CATCH_UP_CALLS`]
    /// calls while pushes keep coming: what is still pending then arrived after the listing
    /// began.
    async fn catch_up(&self) -> Result<(), StoreError> {
        for _ in 0..CATCH_UP_CALLS {
            let left: i64 = self
                .script(
                    &INDEX_PENDING,
                    &[&self.records, &self.index, &self.pending],
                    &[],
                    "index pending records",
                )
                .await?;
            if left <= 0 {
                break;
            }
        }
        Ok(())
    }

    fn parse(key: &str, bytes: &[u8]) -> Result<DeadLetterRecord, Unreadable> {
        DeadLetterRecord::from_json(bytes).map_err(|e| Unreadable {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Takes up to `limit` entries off the head of the retry list in one atomic step: the
    /// readable ones are returned with how many entries were taken in all, the unreadable ones
    /// moved to the quarantine. `None` if the list changed between reading and taking (retry).
    async fn take_chunk(
        &self,
        limit: usize,
    ) -> Result<Option<(Vec<DeadLetterRecord>, usize)>, StoreError> {
        let mut con = self.con.clone();
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&self.retry)
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut con)
            .await
            .map_err(err("take requeued"))?;
        if items.is_empty() {
            return Ok(Some((Vec::new(), 0)));
        }
        let mut records = Vec::with_capacity(items.len());
        let mut bad = Vec::new();
        for (i, bytes) in items.iter().enumerate() {
            match RedisStore::parse(&self.retry, bytes) {
                Ok(r) => records.push(r),
                Err(u) => {
                    tracing::warn!(
                        key = %u.key,
                        quarantine = %self.quarantine,
                        reason = %u.reason,
                        "unreadable requeued record moved to the quarantine"
                    );
                    bad.push(i.saturating_add(1).to_string());
                }
            }
        }
        let n = items.len().to_string();
        let mut args: Vec<&[u8]> =
            Vec::with_capacity(items.len().saturating_add(bad.len()).saturating_add(1));
        args.push(n.as_bytes());
        args.extend(items.iter().map(Vec::as_slice));
        args.extend(bad.iter().map(String::as_bytes));
        let taken: i64 = self
            .script(
                &TAKE,
                &[&self.retry, &self.quarantine],
                &args,
                "take requeued",
            )
            .await?;
        Ok((taken == 1).then_some((records, items.len())))
    }
}

impl DeadLetterStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let json = super::encode(&record)?;
        let (ack, answer) = oneshot::channel();
        let job = Job {
            id: record.id.to_string(),
            json,
            ack,
        };
        let closed = || StoreError::Closed { store: "redis" };
        self.writer.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
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
        self.catch_up().await?;
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
                &[&self.records, &self.index, &self.pending],
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
                &[&self.records, &self.index, &self.pending, &self.retry],
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

    /// Takes records off the retry list; entries that cannot be read are moved to the
    /// quarantine ([`RedisStore::quarantined`]) in the same atomic step, never dropped.
    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let mut taken = Vec::new();
        let mut attempts = 0usize;
        while taken.len() < limit {
            let want = limit.saturating_sub(taken.len()).min(TAKE_CHUNK);
            match self.take_chunk(want).await? {
                // The list is empty.
                Some((_, 0)) => break,
                // Some entries may have been unreadable (quarantined): look again.
                Some((chunk, _)) => taken.extend(chunk),
                None => {
                    attempts = attempts.saturating_add(1);
                    if attempts >= TAKE_ATTEMPTS {
                        if taken.is_empty() {
                            return Err(err("take requeued")(RedisError::from((
                                ErrorKind::Client,
                                "the retry list kept changing under every attempt",
                            ))));
                        }
                        break;
                    }
                }
            }
        }
        Ok(taken)
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let cut = cutoff(age).to_string();
        let n: i64 = self
            .script(
                &PURGE,
                &[&self.records, &self.index, &self.pending],
                &[cut.as_bytes()],
                "purge",
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut con = self.con.clone();
        let (records, requeued, evictions, cap): (usize, usize, Option<u64>, Option<String>) =
            redis::pipe()
                .cmd("HLEN")
                .arg(&self.records)
                .cmd("LLEN")
                .arg(&self.retry)
                .cmd("GET")
                .arg(&self.evictions)
                .cmd("HGET")
                .arg(&self.meta)
                .arg("max_size")
                .query_async(&mut con)
                .await
                .map_err(err("stats"))?;
        Ok(StoreStats {
            records,
            requeued,
            evictions: evictions.unwrap_or(0),
            // The cap pushes apply: the recorded one, else this handle's.
            max_size: cap.as_deref().and_then(parse_cap).unwrap_or(self.max_size),
        })
    }
}
