//! Where dead letters are kept: the [`DeadLetterStore`] trait and its implementations.

use std::future::Future;
use std::time::Duration;

use crate::record::{DeadLetterReason, DeadLetterRecord, RecordId};

pub mod fallback;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

/// The reference design's `DLQ_MAX_SIZE`.
pub const DEFAULT_MAX_SIZE: usize = 1_000;
/// The cap of a Redis or PostgreSQL store that has none recorded (one written before stores
/// recorded their cap), for a handle opened with `connect_existing`: the cap the `rampart` CLI
/// used for every such store, large enough that a tool never evicts an application's
/// records by a guess below the application's own cap.
///
/// ```
/// assert_eq!(rampart_dlq::store::UNRECORDED_MAX_SIZE, 1_000_000);
/// ```
pub const UNRECORDED_MAX_SIZE: usize = 1_000_000;
/// The reference design's `DLQ_RETENTION_DAYS`, as a duration.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation on the store's path failed.
    #[error("dead-letter store {path}: {op} failed")]
    Io {
        /// The store's path.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store (or one record in it) is not readable: not a regular file, not a rampart
    /// store, a schema version this build does not know, or a record that does not parse.
    #[error("dead-letter store {path} is not readable: {reason}")]
    Format {
        /// The store's path (and the record's key, for one record).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[error("dead-letter sqlite store {path}: {op} failed")]
    Sqlite {
        /// The database file's path.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// Redis failed.
    #[cfg(feature = "redis")]
    #[error("dead-letter redis store: {op} failed")]
    Redis {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: ::redis::RedisError,
    },
    /// PostgreSQL failed. The source is shared (an `Arc`) because one failed group commit
    /// fails every push in it.
    #[cfg(feature = "postgres")]
    #[error("dead-letter postgres store: {op} failed")]
    Postgres {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::sync::Arc<tokio_postgres::Error>,
    },
    /// A store setting is invalid.
    #[error("dead-letter store setting `{field}` = {value:?} is invalid: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A Redis key the store uses holds a value of another type (or a counter that is not a
    /// number); the operation was refused before anything was written.
    #[cfg(feature = "redis")]
    #[error("dead-letter redis store: key {key} holds a {found}, expected a {expected}; nothing was written")]
    RedisKeyType {
        /// The key.
        key: String,
        /// What it holds (Redis `TYPE`, or `non-integer string` for a counter).
        found: String,
        /// What the store needs there.
        expected: &'static str,
    },
    /// A Redis key prefix the store cannot use.
    #[cfg(feature = "redis")]
    #[error("dead-letter redis store: key prefix {prefix:?} {reason}")]
    RedisPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record could not be encoded.
    #[error("dead-letter record {id} could not be encoded")]
    Encode {
        /// The record's id.
        id: RecordId,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The store's background writer stopped.
    #[error("dead-letter store {store} is closed")]
    Closed {
        /// Which store.
        store: &'static str,
    },
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The record is stored.
    Stored,
    /// A record with this id was already stored; nothing changed (pushes are idempotent).
    Duplicate,
    /// The primary store failed; the record is in the fallback journal and will be drained.
    Journaled,
}

/// A record that is in the store but cannot be read (corrupt or foreign data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Where it is (the id or key it is stored under).
    pub key: String,
    /// Why it cannot be read.
    pub reason: String,
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The records.
    pub records: Vec<DeadLetterRecord>,
    /// Entries that could not be read (listed, counted, never a panic).
    pub unreadable: Vec<Unreadable>,
    /// Pass as [`ListQuery::before`] to get the next (older) page; `None` at the end.
    pub next: Option<RecordId>,
}

/// What to list: newest first, at most `limit` records, optionally filtered.
///
/// Every store applies the filters itself (SQL stores as a query), so a page holds up to
/// `limit` *matching* records and [`Page::next`] continues after the last one returned.
///
/// # Example
///
/// ```
/// use rampart_dlq::{DeadLetterReason, ListQuery, RecordId};
/// use std::time::{Duration, SystemTime};
///
/// let q = ListQuery::newest(50)
///     .service("gemini_api")
///     .reason(DeadLetterReason::RetriesExhausted)
///     .since(RecordId::lower_bound(SystemTime::now() - Duration::from_secs(3600)));
/// assert_eq!(q.limit, 50);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// At most this many records (`0` lists nothing).
    pub limit: usize,
    /// Only records older than this id (a page cursor).
    pub before: Option<RecordId>,
    /// Only records of this service.
    pub service: Option<String>,
    /// Only records with this reason.
    pub reason: Option<DeadLetterReason>,
    /// Only records made at or after this id's time (see [`RecordId::lower_bound`]).
    pub since: Option<RecordId>,
}

impl ListQuery {
    /// The newest `limit` records.
    pub fn newest(limit: usize) -> Self {
        ListQuery {
            limit,
            ..ListQuery::default()
        }
    }

    /// Only records older than `id` (the next page after a page ending at `id`).
    #[must_use]
    pub fn before(mut self, id: RecordId) -> Self {
        self.before = Some(id);
        self
    }

    /// Only records of `service`.
    #[must_use]
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Only records with `reason`.
    #[must_use]
    pub fn reason(mut self, reason: DeadLetterReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Only records at or after `id` (by time: ids are time-ordered).
    #[must_use]
    pub fn since(mut self, id: RecordId) -> Self {
        self.since = Some(id);
        self
    }

    /// Whether `r` passes the filters (service, reason, since and before).
    pub fn matches(&self, r: &DeadLetterRecord) -> bool {
        self.before.is_none_or(|b| r.id < b)
            && self.since.is_none_or(|s| r.id >= s)
            && self.service.as_ref().is_none_or(|s| &r.service == s)
            && self.reason.is_none_or(|x| r.reason == x)
    }
}

/// Counters of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records held.
    pub records: usize,
    /// Records waiting in the retry queue.
    pub requeued: usize,
    /// Records evicted (oldest first) because the store was full.
    pub evictions: u64,
    /// The size cap.
    pub max_size: usize,
}

/// An async store of dead letters, idempotent on [`RecordId`].
///
/// Every implementation keeps at most `max_size` records, evicting the oldest first and
/// counting evictions; `requeue` moves a record to the store's retry queue by its stable id
/// (never by list position, which races with concurrent writers).
pub trait DeadLetterStore: Send + Sync + 'static {
    /// A short name for metrics and messages: `memory`, `sqlite`, `redis`, `fallback`.
    fn kind(&self) -> &'static str;

    /// Stores `record`, unless a record with its id is already stored.
    fn push(
        &self,
        record: DeadLetterRecord,
    ) -> impl Future<Output = Result<Pushed, StoreError>> + Send;

    /// The record with `id`.
    fn get(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<DeadLetterRecord>, StoreError>> + Send;

    /// A page of records, newest first.
    fn list(&self, query: ListQuery) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Removes the record with `id`; `false` if there was none.
    fn delete(&self, id: RecordId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Replaces a stored record with a new version of itself (same id), e.g. to bump its
    /// redrive count; `false` if there was none.
    fn replace(
        &self,
        record: DeadLetterRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Moves the record with `id` to the retry queue; returns it, or `None` if there was none.
    fn requeue(
        &self,
        id: RecordId,
    ) -> impl Future<Output = Result<Option<DeadLetterRecord>, StoreError>> + Send;

    /// Takes up to `limit` records off the retry queue, oldest requeue first.
    fn take_requeued(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetterRecord>, StoreError>> + Send;

    /// Removes records older than `age` (by their id's time); returns how many.
    fn purge_older_than(
        &self,
        age: Duration,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Counters.
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;
}

/// A record's JSON, cut to [`DEFAULT_MAX_RECORD_BYTES`](crate::DEFAULT_MAX_RECORD_BYTES)
/// if it is larger, or the error that names it.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "redis", feature = "postgres")),
    allow(dead_code)
)]
pub(crate) fn encode(r: &DeadLetterRecord) -> Result<Vec<u8>, StoreError> {
    encode_capped(r, crate::record::DEFAULT_MAX_RECORD_BYTES)
}

/// A record's JSON, at most `max_bytes` long (at least
/// [`MIN_RECORD_BYTES`](crate::MIN_RECORD_BYTES)): a larger record is cut with
/// [`DeadLetterRecord::fit`] and comes back `truncated`, with its original size. Every store
/// writes what this returns, so a record is never acknowledged and then lost for its size.
///
/// # Errors
///
/// [`StoreError::Encode`] if the payload holds something JSON cannot represent.
///
/// # Example
///
/// ```
/// use rampart_dlq::{store::encode_capped, DeadLetterReason, DeadLetterRecord};
///
/// let r = DeadLetterRecord::new("db", DeadLetterReason::Permanent).error("e".repeat(10_000));
/// let json = encode_capped(&r, 4096)?;
/// assert!(json.len() <= 4096);
/// assert!(DeadLetterRecord::from_json(&json)?.truncated);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_capped(r: &DeadLetterRecord, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
    let encode_err = |source| StoreError::Encode { id: r.id, source };
    let json = r.to_json().map_err(encode_err)?;
    if json.len() <= max_bytes.max(crate::record::MIN_RECORD_BYTES) {
        return Ok(json);
    }
    r.clone().fit(max_bytes).map_err(encode_err)
}

/// The id below which records are older than `age`.
pub(crate) fn cutoff(age: Duration) -> RecordId {
    let t = std::time::SystemTime::now()
        .checked_sub(age)
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    RecordId::lower_bound(t)
}
