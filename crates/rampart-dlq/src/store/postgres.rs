//! The PostgreSQL store (cargo feature `postgres`): the reference design's "also log dead
//! letters to the database", as tables beside the application's own.
//!
//! # Tables
//!
//! [`PostgresStore::connect`] creates them if they do not exist (under an advisory lock, so
//! that two processes starting at once do not race), named after a prefix that may be
//! schema-qualified (`app.dlq` puts `dlq_records` … in schema `app`):
//!
//! | table | columns | holds |
//! |---|---|---|
//! | `{prefix}_records` | `id uuid` primary key, `service text`, `reason text`, `created_at timestamptz`, `record json` | the records |
//! | `{prefix}_retry_queue` | `seq bigserial` primary key, `id uuid`, `record json`, `requeued_at timestamptz`, `quarantined boolean` | requeued records, oldest first |
//! | `{prefix}_meta` | `records bigint`, `evictions bigint`, `max_size bigint` (one row) | how many records the store holds (for the cap), how many the cap evicted, and the cap |
//!
//! # The cap is the store's
//!
//! [`PostgresStore::connect`] records its `max_size` in the meta row, and every push applies
//! the cap recorded there, whichever process pushes: a tool that opens the tables with
//! [`PostgresStore::connect_existing`] (the `rampart` CLI does) reports and keeps the
//! application's cap instead of imposing its own. Tables created before the cap was recorded
//! get the column (null) on the next connect; while it is null, a handle that did not set a
//! cap uses [`UNRECORDED_MAX_SIZE`], until the application's next `connect` records its cap.
//!
//! Ids are UUID v7, so `ORDER BY id` is age order. The record is stored as `json`, not
//! `jsonb` or `bytea`: operators can query it in SQL (`record->>'error'`, `record::jsonb @>
//! …`) as with `jsonb`, but `json` keeps the encoded bytes exactly (no key reordering) and
//! accepts every string the record may carry, where `jsonb` refuses `\u0000` — a NUL in an
//! error text would make a whole batch fail. (PostgreSQL's JSON operators, `json` and `jsonb`
//! alike, refuse to read a row whose record holds a `\u0000`; the store itself reads it back
//! whole.)
//!
//! # Writes
//!
//! Pushes are group-committed: a writer task, on its own connection, takes every push that is
//! waiting, inserts them with one multi-row `INSERT … ON CONFLICT (id) DO NOTHING` in one
//! transaction that also enforces the cap (oldest first, counted in `{prefix}_meta`), and
//! acknowledges each push only after `COMMIT`. The transaction first locks the meta row, so
//! that writers of several processes sharing the tables keep the cap exact; the row counts the
//! records (every store statement that adds or removes records updates it in the same
//! statement), so enforcing the cap never scans the table. Rows deleted by hand, outside the
//! store, leave that count high — the store then keeps fewer than `max_size` records until
//! `UPDATE {prefix}_meta SET records = (SELECT count(*) FROM {prefix}_records)` is run.
//! [`stats`](DeadLetterStore::stats) always reports the true `count(*)`.
//! [`take_requeued`](DeadLetterStore::take_requeued) runs on the same connection, with
//! `FOR UPDATE SKIP LOCKED`: concurrent takers, in this process or others, never take the
//! same record. A retry-queue entry that cannot be read is quarantined (kept, flagged, no
//! longer counted or taken) instead of dropped.
//!
//! # Connections
//!
//! Two connections, no pool: the writer's (transactions need a connection of their own), and
//! one shared by every other operation — each of those is a single statement, atomic on its
//! own, and tokio-postgres pipelines concurrent statements on one connection. A connection
//! that broke is replaced on the next operation, and an operation that failed because its
//! connection closed is retried once on a new one (every operation is idempotent: a push
//! whose `COMMIT` was lost answers [`Pushed::Duplicate`] on the retry).
//!
//! TLS is not supported (the connections use `NoTls`): connect over loopback, a Unix socket
//! or a private network.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls, Statement};
use uuid::Uuid;

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable,
    DEFAULT_MAX_SIZE, UNRECORDED_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId};

/// The reference design's list name, used as the default table prefix.
pub const DEFAULT_PREFIX: &str = "dead_letter_queue";

/// At most this many pushes go in one transaction.
const MAX_BATCH: usize = 1_024;

/// Dead letters in PostgreSQL tables, pushes group-committed. Cloning shares the
/// connections and the writer.
///
/// See the [module docs](self) for the tables, batching and connections. `Display` and
/// `Debug` show the server without its password.
///
/// # Example
///
/// ```no_run
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, PostgresStore, Pushed};
///
/// # async fn f() -> Result<(), rampart_dlq::StoreError> {
/// let store = PostgresStore::connect("postgres://app:secret@127.0.0.1/app", "dlq", 10_000).await?;
/// assert_eq!(store.to_string(), "postgres://app@127.0.0.1:5432/app (dlq)");
/// let r = DeadLetterRecord::new("payments", DeadLetterReason::Permanent);
/// assert_eq!(store.push(r.clone()).await?, Pushed::Stored);
/// assert_eq!(store.push(r).await?, Pushed::Duplicate);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: String,
    prefix: String,
    tables: Tables,
    max_size: usize,
    reads: Conn,
    writer: mpsc::Sender<Cmd>,
}

/// The quoted, possibly schema-qualified table names.
#[derive(Debug, Clone)]
struct Tables {
    records: String,
    retry: String,
    meta: String,
}

impl fmt::Display for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.inner.target, self.inner.prefix)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.inner.target)
            .field("prefix", &self.inner.prefix)
            .field("max_size", &self.inner.max_size)
            .finish_non_exhaustive()
    }
}

fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres {
        op,
        source: Arc::new(source),
    }
}

/// A copy of a writer error for each push of a failed batch.
fn share(e: &StoreError) -> StoreError {
    match e {
        StoreError::Postgres { op, source } => StoreError::Postgres {
            op,
            source: source.clone(),
        },
        _ => StoreError::Closed { store: "postgres" },
    }
}

/// Whether `e` means the connection is gone (so a new one may succeed).
fn broken(e: &tokio_postgres::Error, client: &Client) -> bool {
    e.is_closed() || client.is_closed()
}

/// `postgres://user@host:port/db`, never with the password.
fn describe(config: &Config) -> String {
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{host}:{port}/{db}")
}

/// Checks one identifier: a letter or `_`, then letters, digits or `_`, at most 40 bytes
/// (leaving room for the table suffixes within PostgreSQL's 63).
fn identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 40
}

fn tables(prefix: &str) -> Result<(Option<String>, Tables), StoreError> {
    let invalid = || {
        StoreError::Config {
        field: "prefix",
        value: prefix.to_owned(),
        reason: "must be `name` or `schema.name`, each a letter or `_` then letters, digits or `_`, at most 40 characters",
    }
    };
    let (schema, name) = match prefix.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, prefix),
    };
    if !identifier(name) || schema.is_some_and(|s| !identifier(s)) {
        return Err(invalid());
    }
    let q = |table: &str| match schema {
        Some(s) => format!("\"{s}\".\"{name}_{table}\""),
        None => format!("\"{name}_{table}\""),
    };
    Ok((
        schema.map(|s| format!("\"{s}\"")),
        Tables {
            records: q("records"),
            retry: q("retry_queue"),
            meta: q("meta"),
        },
    ))
}

// ===== connections =====

async fn open(config: &Config, op: &'static str) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg(op))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "dead-letter postgres connection ended");
        }
    });
    Ok(client)
}

/// A connection shared by single-statement operations, replaced when it breaks.
struct Conn {
    config: Config,
    client: Mutex<Option<Arc<Client>>>,
}

impl Conn {
    async fn get(&self, op: &'static str) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(open(&self.config, op).await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// Runs `$body` (an expression using the client `$c`) on the shared connection, once more on
/// a new connection if the first one broke.
macro_rules! on_shared {
    ($self:ident, $op:literal, |$c:ident| $body:expr) => {{
        let mut retried = false;
        loop {
            let $c = $self.inner.reads.get($op).await?;
            match $body.await {
                Ok(v) => break v,
                Err(e) if !retried && broken(&e, &$c) => retried = true,
                Err(e) => return Err(pg($op)(e)),
            }
        }
    }};
}

// ===== the writer =====

struct Pending {
    id: Uuid,
    service: String,
    reason: &'static str,
    created: std::time::SystemTime,
    json: String,
    reply: oneshot::Sender<Result<Pushed, StoreError>>,
}

enum Cmd {
    Push(Pending),
    Take {
        limit: i64,
        reply: oneshot::Sender<Result<Vec<DeadLetterRecord>, StoreError>>,
    },
}

/// Runs `$body` (an expression using `$client: &mut Client` and `$st: &Prepared`) on the
/// writer's connection, once more on a new connection if the first one broke.
macro_rules! on_writer {
    ($self:ident, $op:literal, |$client:ident, $st:ident| $body:expr) => {{
        let mut retried = false;
        loop {
            let ($client, $st) = match $self.conn().await {
                Ok((c, p)) => (c, &*p),
                Err(e) => break Err(e),
            };
            match $body.await {
                Ok(v) => break Ok(v),
                Err(e) if !retried && broken(&e, $client) => {
                    retried = true;
                    $self.conn = None;
                }
                Err(e) => break Err(pg($op)(e)),
            }
        }
    }};
}

/// The writer's connection and its prepared statements.
struct Writer {
    config: Config,
    tables: Tables,
    max_size: i64,
    conn: Option<(Client, Prepared)>,
}

struct Prepared {
    lock: Statement,
    insert: Statement,
    count: Statement,
    evict: Statement,
    take: Statement,
    done: Statement,
    quarantine: Statement,
}

impl Writer {
    async fn conn(&mut self) -> Result<&mut (Client, Prepared), StoreError> {
        if self.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let c = open(&self.config, "connect").await?;
            let t = &self.tables;
            let prep = async {
                Ok::<_, tokio_postgres::Error>(Prepared {
                    lock: c
                        .prepare(&format!(
                            "SELECT records, max_size FROM {} FOR UPDATE",
                            t.meta
                        ))
                        .await?,
                    insert: c
                        .prepare(&format!(
                            "INSERT INTO {} (id, service, reason, created_at, record) \
                             SELECT u.id, u.service, u.reason, u.created_at, u.record::json \
                             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
                               AS u(id, service, reason, created_at, record) \
                             ON CONFLICT (id) DO NOTHING RETURNING id",
                            t.records
                        ))
                        .await?,
                    count: c
                        .prepare(&format!("UPDATE {} SET records = records + $1", t.meta))
                        .await?,
                    evict: c
                        .prepare(&format!(
                            "WITH old AS (DELETE FROM {r} WHERE id IN \
                               (SELECT id FROM {r} ORDER BY id LIMIT $2) RETURNING 1) \
                             UPDATE {m} SET \
                               records = records + $1 - (SELECT count(*) FROM old), \
                               evictions = evictions + (SELECT count(*) FROM old)",
                            r = t.records,
                            m = t.meta
                        ))
                        .await?,
                    take: c
                        .prepare(&format!(
                            "SELECT seq, id, record::text FROM {} WHERE NOT quarantined \
                             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                            t.retry
                        ))
                        .await?,
                    done: c
                        .prepare(&format!("DELETE FROM {} WHERE seq = ANY($1)", t.retry))
                        .await?,
                    quarantine: c
                        .prepare(&format!(
                            "UPDATE {} SET quarantined = true WHERE seq = ANY($1)",
                            t.retry
                        ))
                        .await?,
                })
            };
            let prepared = prep.await.map_err(pg("prepare"))?;
            self.conn = Some((c, prepared));
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Closed { store: "postgres" }),
        }
    }

    async fn push_batch(&mut self, batch: Vec<Pending>) {
        // One row per id: a second push of an id in the same batch is a duplicate.
        let mut first: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut dupes: Vec<Pending> = Vec::new();
        for p in batch {
            if first.iter().any(|f| f.id == p.id) {
                dupes.push(p);
            } else {
                first.push(p);
            }
        }
        let ids: Vec<Uuid> = first.iter().map(|p| p.id).collect();
        let services: Vec<&str> = first.iter().map(|p| p.service.as_str()).collect();
        let reasons: Vec<&str> = first.iter().map(|p| p.reason).collect();
        let created: Vec<std::time::SystemTime> = first.iter().map(|p| p.created).collect();
        let json: Vec<&str> = first.iter().map(|p| p.json.as_str()).collect();
        let rows = Rows {
            ids: &ids,
            services: &services,
            reasons: &reasons,
            created: &created,
            json: &json,
        };
        let max_size = self.max_size;
        let result: Result<Vec<Uuid>, StoreError> = on_writer!(self, "push", |client, st| insert(
            client, st, &rows, max_size
        ));
        match result {
            Ok(stored) => {
                for p in first {
                    let pushed = if stored.contains(&p.id) {
                        Pushed::Stored
                    } else {
                        Pushed::Duplicate
                    };
                    let _ = p.reply.send(Ok(pushed));
                }
                for p in dupes {
                    let _ = p.reply.send(Ok(Pushed::Duplicate));
                }
            }
            Err(e) => {
                for p in first.into_iter().chain(dupes) {
                    let _ = p.reply.send(Err(share(&e)));
                }
            }
        }
    }

    async fn take(&mut self, limit: i64) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let retry = self.tables.retry.clone();
        on_writer!(self, "take requeued", |client, st| take(
            client, st, limit, &retry
        ))
    }

    /// Serves commands until every store handle is dropped and the queue is empty.
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut cmds = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut cmds, MAX_BATCH).await > 0 {
            let mut batch = Vec::new();
            for cmd in cmds.drain(..) {
                match cmd {
                    Cmd::Push(p) => batch.push(p),
                    Cmd::Take { limit, reply } => {
                        // Pushes queued before the take are committed first.
                        if !batch.is_empty() {
                            self.push_batch(std::mem::take(&mut batch)).await;
                        }
                        let _ = reply.send(self.take(limit).await);
                    }
                }
            }
            if !batch.is_empty() {
                self.push_batch(batch).await;
            }
        }
    }
}

/// The columns of a batch of pushes.
struct Rows<'a> {
    ids: &'a [Uuid],
    services: &'a [&'a str],
    reasons: &'a [&'a str],
    created: &'a [std::time::SystemTime],
    json: &'a [&'a str],
}

/// One group commit: lock the meta row (which counts the records and holds the cap), insert,
/// evict the oldest past the cap (the recorded one, else `max_size`), commit. The ids stored.
async fn insert(
    client: &mut Client,
    st: &Prepared,
    rows: &Rows<'_>,
    max_size: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let meta = tx.query_one(&st.lock, &[]).await?;
    let held: i64 = meta.try_get(0)?;
    let recorded: Option<i64> = meta.try_get(1)?;
    let max_size = recorded.filter(|&c| c >= 1).unwrap_or(max_size);
    let stored = tx
        .query(
            &st.insert,
            &[
                &rows.ids,
                &rows.services,
                &rows.reasons,
                &rows.created,
                &rows.json,
            ],
        )
        .await?;
    let added = i64::try_from(stored.len()).unwrap_or(i64::MAX);
    let excess = held.saturating_add(added).saturating_sub(max_size);
    if excess > 0 {
        tx.execute(&st.evict, &[&added, &excess]).await?;
    } else if added > 0 {
        tx.execute(&st.count, &[&added]).await?;
    }
    tx.commit().await?;
    stored.iter().map(|row| row.try_get::<_, Uuid>(0)).collect()
}

/// Takes up to `limit` requeued records in one transaction, skipping rows other takers hold;
/// unreadable ones are quarantined, not dropped.
async fn take(
    client: &mut Client,
    st: &Prepared,
    limit: i64,
    table: &str,
) -> Result<Vec<DeadLetterRecord>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx.query(&st.take, &[&limit]).await?;
    let mut taken = Vec::with_capacity(rows.len());
    let mut done: Vec<i64> = Vec::with_capacity(rows.len());
    let mut bad: Vec<i64> = Vec::new();
    for row in &rows {
        let seq: i64 = row.try_get(0)?;
        let id: Uuid = row.try_get(1)?;
        let json: String = row.try_get(2)?;
        match DeadLetterRecord::from_json(json.as_bytes()) {
            Ok(r) => {
                taken.push(r);
                done.push(seq);
            }
            Err(e) => {
                tracing::warn!(
                    table, seq, id = %id, reason = %e,
                    "unreadable requeued dead letter quarantined"
                );
                bad.push(seq);
            }
        }
    }
    if !done.is_empty() {
        tx.execute(&st.done, &[&done]).await?;
    }
    if !bad.is_empty() {
        tx.execute(&st.quarantine, &[&bad]).await?;
    }
    tx.commit().await?;
    Ok(taken)
}

// ===== impl PostgresStore =====

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or the key-value form),
    /// creates the tables named after `prefix` (`name` or `schema.name`) if they do not
    /// exist, and keeps at most `max_size` records (at least 1). `max_size` becomes the
    /// store's cap: it is recorded in the meta row and applies to every process's pushes (see
    /// the [module docs](self)). Connecting times out after 5 s unless the URL sets
    /// `connect_timeout`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] if `prefix` is not a plain identifier (or two, dot-separated);
    /// [`StoreError::Postgres`] if the URL is invalid, the server cannot be reached or the
    /// tables cannot be created.
    pub async fn connect(url: &str, prefix: &str, max_size: usize) -> Result<Self, StoreError> {
        PostgresStore::open(url, prefix, Some(max_size.max(1))).await
    }

    /// Connects to the tables named after `prefix` keeping the cap their application
    /// recorded (with [`connect`](Self::connect)), for tools that work on an application's
    /// store without owning it, such as the `rampart` CLI. Tables with no cap recorded (made
    /// before caps were recorded, or just created here) keep [`UNRECORDED_MAX_SIZE`] for this
    /// handle's pushes, and nothing is recorded. Otherwise as [`connect`](Self::connect).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use rampart_dlq::{DeadLetterStore, PostgresStore};
    ///
    /// # async fn f() -> Result<(), rampart_dlq::StoreError> {
    /// let url = "postgres://app@127.0.0.1/app";
    /// let app = PostgresStore::connect(url, "dlq", 100_000).await?;
    /// let tool = PostgresStore::connect_existing(url, "dlq").await?;
    /// assert_eq!(tool.stats().await?.max_size, 100_000); // the cap is the store's
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_existing(url: &str, prefix: &str) -> Result<Self, StoreError> {
        PostgresStore::open(url, prefix, None).await
    }

    /// Connects, creates the tables if needed, records `set` as the cap (if given) and reads
    /// the cap recorded.
    async fn open(url: &str, prefix: &str, set: Option<usize>) -> Result<Self, StoreError> {
        let (schema, tables) = tables(prefix)?;
        let mut config: Config = url.parse().map_err(pg("parse the URL"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let reads = Conn {
            config: config.clone(),
            client: Mutex::new(None),
        };
        let client = reads.get("connect").await?;
        create(&client, schema.as_deref(), &tables, prefix)
            .await
            .map_err(pg("create the tables"))?;
        let recorded: Option<i64> = match set {
            Some(cap) => {
                let cap = i64::try_from(cap).unwrap_or(i64::MAX);
                let sql = format!(
                    "UPDATE {} SET max_size = $1 RETURNING max_size",
                    tables.meta
                );
                client.query_one(&sql, &[&cap]).await
            }
            None => {
                let sql = format!("SELECT max_size FROM {}", tables.meta);
                client.query_one(&sql, &[]).await
            }
        }
        .and_then(|row| row.try_get(0))
        .map_err(pg("record the cap"))?;
        let max_size = recorded
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c >= 1)
            .or(set)
            .unwrap_or(UNRECORDED_MAX_SIZE);
        let (tx, rx) = mpsc::channel(MAX_BATCH.saturating_mul(4));
        let writer = Writer {
            config: config.clone(),
            tables: tables.clone(),
            max_size: i64::try_from(max_size).unwrap_or(i64::MAX),
            conn: None,
        };
        tokio::spawn(writer.run(rx));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                target: describe(&config),
                prefix: prefix.to_owned(),
                tables,
                max_size,
                reads,
                writer: tx,
            }),
        })
    }

    /// Connects with the reference design's table prefix and cap.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_default(url: &str) -> Result<Self, StoreError> {
        PostgresStore::connect(url, DEFAULT_PREFIX, DEFAULT_MAX_SIZE).await
    }

    /// The records table's (quoted, possibly schema-qualified) name, for operators' SQL.
    pub fn records_table(&self) -> &str {
        &self.inner.tables.records
    }

    /// The retry queue table's (quoted, possibly schema-qualified) name.
    pub fn retry_table(&self) -> &str {
        &self.inner.tables.retry
    }

    async fn send<T>(
        &self,
        cmd: Cmd,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let closed = || StoreError::Closed { store: "postgres" };
        self.inner.writer.send(cmd).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    fn parse(id: Uuid, json: &str) -> Result<DeadLetterRecord, Unreadable> {
        DeadLetterRecord::from_json(json.as_bytes()).map_err(|e| Unreadable {
            key: id.to_string(),
            reason: e.to_string(),
        })
    }

    fn unreadable(&self, u: Unreadable) -> StoreError {
        StoreError::Format {
            path: format!("{} id {}", self.inner.tables.records, u.key),
            reason: u.reason,
        }
    }
}

async fn create(
    c: &Client,
    schema: Option<&str>,
    t: &Tables,
    prefix: &str,
) -> Result<(), tokio_postgres::Error> {
    let schema = schema
        .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {s};"))
        .unwrap_or_default();
    // `IF NOT EXISTS` is not safe against a concurrent creator: serialise on an advisory lock.
    let lock = format!("SELECT pg_advisory_xact_lock(hashtext('rampart_dlq {prefix}'));");
    c.batch_execute(&format!(
        "BEGIN;
         {lock}
         {schema}
         CREATE TABLE IF NOT EXISTS {r} (
             id uuid PRIMARY KEY,
             service text NOT NULL,
             reason text NOT NULL,
             created_at timestamptz NOT NULL,
             record json NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {q} (
             seq bigserial PRIMARY KEY,
             id uuid NOT NULL,
             record json NOT NULL,
             requeued_at timestamptz NOT NULL DEFAULT now(),
             quarantined boolean NOT NULL DEFAULT false
         );
         CREATE TABLE IF NOT EXISTS {m} (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             records bigint NOT NULL DEFAULT 0,
             evictions bigint NOT NULL DEFAULT 0
         );
         INSERT INTO {m} (records) SELECT count(*) FROM {r} ON CONFLICT DO NOTHING;
         DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{m}'::regclass
                          AND attname = 'max_size' AND NOT attisdropped) THEN
             ALTER TABLE {m} ADD COLUMN max_size bigint;
           END IF;
         END $$;
         COMMIT;",
        r = t.records,
        q = t.retry,
        m = t.meta,
    ))
    .await
}

fn uuid(id: RecordId) -> Uuid {
    Uuid::from_bytes(*id.as_bytes())
}

impl DeadLetterStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let bytes = super::encode(&record)?;
        let json = String::from_utf8(bytes).map_err(|e| StoreError::Format {
            path: format!("{} id {}", self.inner.tables.records, record.id),
            reason: e.to_string(),
        })?;
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            id: uuid(record.id),
            reason: record.reason.as_str(),
            created: record.last_attempt_at.0,
            service: record.service,
            json,
            reply,
        };
        self.send(Cmd::Push(pending), rx).await
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let sql = format!(
            "SELECT record::text FROM {} WHERE id = $1",
            self.inner.tables.records
        );
        let key = uuid(id);
        let row = on_shared!(self, "get", |c| c.query_opt(&sql, &[&key]));
        match row {
            None => Ok(None),
            Some(row) => {
                let json: String = row.try_get(0).map_err(pg("get"))?;
                PostgresStore::parse(key, &json)
                    .map(Some)
                    .map_err(|u| self.unreadable(u))
            }
        }
    }

    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        if q.limit == 0 {
            return Ok(Page::default());
        }
        let sql = format!(
            "SELECT id, record::text FROM {} \
             WHERE ($1::uuid IS NULL OR id < $1) AND ($2::uuid IS NULL OR id >= $2) \
               AND ($3::text IS NULL OR service = $3) AND ($4::text IS NULL OR reason = $4) \
             ORDER BY id DESC LIMIT $5",
            self.inner.tables.records
        );
        let before = q.before.map(uuid);
        let since = q.since.map(uuid);
        let reason = q.reason.map(|r| r.as_str());
        let limit = i64::try_from(q.limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = on_shared!(self, "list", |c| c
            .query(&sql, &[&before, &since, &q.service, &reason, &limit]));
        let more = rows.len() > q.limit;
        let mut page = Page::default();
        let mut last = None;
        for row in rows.iter().take(q.limit) {
            let id: Uuid = row.try_get(0).map_err(pg("list"))?;
            let json: String = row.try_get(1).map_err(pg("list"))?;
            last = Some(RecordId::from_bytes(id.into_bytes()));
            match PostgresStore::parse(id, &json) {
                Ok(r) => page.records.push(r),
                Err(u) => page.unreadable.push(u),
            }
        }
        if more {
            page.next = last;
        }
        Ok(page)
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        let t = &self.inner.tables;
        let sql = format!(
            "WITH d AS (DELETE FROM {} WHERE id = $1 RETURNING 1), \
               m AS (UPDATE {} SET records = records - 1 WHERE EXISTS (SELECT 1 FROM d)) \
             SELECT count(*) FROM d",
            t.records, t.meta
        );
        let key = uuid(id);
        let row = on_shared!(self, "delete", |c| c.query_one(&sql, &[&key]));
        let n: i64 = row.try_get(0).map_err(pg("delete"))?;
        Ok(n > 0)
    }

    async fn replace(&self, record: DeadLetterRecord) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE {} SET record = $2::text::json, service = $3, reason = $4 WHERE id = $1",
            self.inner.tables.records
        );
        let bytes = super::encode(&record)?;
        let json = String::from_utf8_lossy(&bytes);
        let key = uuid(record.id);
        let reason = record.reason.as_str();
        let n = on_shared!(self, "replace", |c| c
            .execute(&sql, &[&key, &json, &record.service, &reason]));
        Ok(n > 0)
    }

    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let t = &self.inner.tables;
        let sql = format!(
            "WITH moved AS (DELETE FROM {} WHERE id = $1 RETURNING id, record), \
               m AS (UPDATE {} SET records = records - 1 WHERE EXISTS (SELECT 1 FROM moved)) \
             INSERT INTO {} (id, record) SELECT id, record FROM moved RETURNING record::text",
            t.records, t.meta, t.retry
        );
        let key = uuid(id);
        let row = on_shared!(self, "requeue", |c| c.query_opt(&sql, &[&key]));
        match row {
            None => Ok(None),
            Some(row) => {
                let json: String = row.try_get(0).map_err(pg("requeue"))?;
                // Moved either way; an unreadable one waits in the queue to be quarantined.
                PostgresStore::parse(key, &json)
                    .map(Some)
                    .map_err(|u| self.unreadable(u))
            }
        }
    }

    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.send(Cmd::Take { limit, reply }, rx).await
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let t = &self.inner.tables;
        let sql = format!(
            "WITH d AS (DELETE FROM {} WHERE id < $1 RETURNING 1), \
               m AS (UPDATE {} SET records = records - (SELECT count(*) FROM d) \
                     WHERE EXISTS (SELECT 1 FROM d)) \
             SELECT count(*) FROM d",
            t.records, t.meta
        );
        let cut = uuid(cutoff(age));
        let row = on_shared!(self, "purge", |c| c.query_one(&sql, &[&cut]));
        let n: i64 = row.try_get(0).map_err(pg("purge"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let t = &self.inner.tables;
        let sql = format!(
            "SELECT (SELECT count(*) FROM {}), \
                    (SELECT count(*) FROM {} WHERE NOT quarantined), \
                    (SELECT evictions FROM {m}), \
                    (SELECT max_size FROM {m})",
            t.records,
            t.retry,
            m = t.meta
        );
        let row = on_shared!(self, "stats", |c| c.query_one(&sql, &[]));
        let records: i64 = row.try_get(0).map_err(pg("stats"))?;
        let requeued: i64 = row.try_get(1).map_err(pg("stats"))?;
        let evictions: Option<i64> = row.try_get(2).map_err(pg("stats"))?;
        let recorded: Option<i64> = row.try_get(3).map_err(pg("stats"))?;
        Ok(StoreStats {
            records: usize::try_from(records).unwrap_or(0),
            requeued: usize::try_from(requeued).unwrap_or(0),
            evictions: evictions.and_then(|e| u64::try_from(e).ok()).unwrap_or(0),
            // The cap pushes apply: the recorded one, else this handle's.
            max_size: recorded
                .and_then(|c| usize::try_from(c).ok())
                .filter(|&c| c >= 1)
                .unwrap_or(self.inner.max_size),
        })
    }
}
