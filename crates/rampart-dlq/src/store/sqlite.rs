//! The embedded default store: one SQLite file in WAL mode, shared safely by every process
//! that opens it (the app, `rampart dlq …`, a second app instance).
//!
//! # Durability
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction and is acknowledged only after its
//! `COMMIT` returned with `PRAGMA synchronous = FULL`: in WAL mode that syncs the log on every
//! commit, so an acknowledged record survives a power loss, not only a crash of the process
//! (`NORMAL` would keep it across a crash but could lose the last commits on power loss).
//!
//! Writes are group-committed: one writer thread owns the write connection; pushes (and every
//! other write) reach it over a channel, and it runs everything queued meanwhile (up to
//! [`MAX_BATCH`] writes) in one transaction, each write in its own savepoint, then acknowledges
//! each of them. Reads run on their own connections on tokio's blocking pool.
//!
//! Several processes share one file: WAL lets readers run while a writer writes, and a
//! writer that finds the file locked by another waits up to the busy timeout
//! ([`DEFAULT_BUSY_TIMEOUT`]) instead of failing. Counts, the cap, eviction, requeue and
//! `take_requeued` are queries inside one transaction, so two processes never take the same
//! record and never disagree about what is stored.
//!
//! # Schema (version [`SCHEMA_VERSION`], in `PRAGMA user_version`)
//!
//! ```sql
//! CREATE TABLE records (id BLOB PRIMARY KEY NOT NULL,   -- the 16-byte UUID v7, time-ordered
//!                       service TEXT NOT NULL, reason TEXT NOT NULL,
//!                       body BLOB NOT NULL);            -- the record as JSON
//! CREATE INDEX records_service ON records (service, id);
//! CREATE INDEX records_reason ON records (reason, id);
//! CREATE TABLE retry (seq INTEGER PRIMARY KEY AUTOINCREMENT, -- requeue order
//!                     id BLOB NOT NULL UNIQUE, service TEXT NOT NULL, reason TEXT NOT NULL,
//!                     body BLOB NOT NULL);
//! CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
//! -- keys: records, requeued (kept by triggers), evictions, max_size
//! ```
//!
//! A row whose body is not a record is listed in [`Page::unreadable`]; it is never deleted and
//! never stops a listing. A file of a newer schema version is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable,
    DEFAULT_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId};

/// The schema version this build writes (kept in `PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// The most writes group-committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// How long a write waits for another process's write lock before failing.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// While writers are concurrent, the writer thread waits for the next write this long…
const GATHER_GAP: Duration = Duration::from_micros(200);
/// …and gathers one batch for at most this long.
const GATHER_MAX: Duration = Duration::from_millis(2);
/// Reader connections kept open for reuse.
const READERS_KEPT: usize = 4;

const SCHEMA: &str = "
CREATE TABLE records (id BLOB PRIMARY KEY NOT NULL, service TEXT NOT NULL,
                      reason TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX records_service ON records (service, id);
CREATE INDEX records_reason ON records (reason, id);
CREATE TABLE retry (seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL UNIQUE,
                    service TEXT NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('records', 0), ('requeued', 0), ('evictions', 0),
                                     ('max_size', 1000);
CREATE TRIGGER records_added AFTER INSERT ON records
  BEGIN UPDATE meta SET value = value + 1 WHERE key = 'records'; END;
CREATE TRIGGER records_removed AFTER DELETE ON records
  BEGIN UPDATE meta SET value = value - 1 WHERE key = 'records'; END;
CREATE TRIGGER retry_added AFTER INSERT ON retry
  BEGIN UPDATE meta SET value = value + 1 WHERE key = 'requeued'; END;
CREATE TRIGGER retry_removed AFTER DELETE ON retry
  BEGIN UPDATE meta SET value = value - 1 WHERE key = 'requeued'; END;
";

/// How many statements a write runs (one is atomic by itself; more need a savepoint).
#[derive(Clone, Copy)]
enum Statements {
    One,
    Many,
}

/// What a write job hands back once it ran: called with the batch's commit outcome.
type Completion = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;
/// A write: runs inside the batch's transaction (or learns that it could not begin).
type Job = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Completion + Send>;

/// The embedded, durable, multi-process store: a SQLite file in WAL mode (see the
/// [module docs](self) for the schema and the durability guarantee). Cloning shares it.
///
/// # Example
///
/// ```
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("dlq.sqlite");
/// let app = SqliteStore::open(&path, 1_000)?;
/// let r = DeadLetterRecord::new("gemini_api", DeadLetterReason::RetriesExhausted);
/// app.push(r.clone()).await?; // committed and synced when this returns
///
/// // Another handle (or another process, say `rampart dlq list`) sees it at once.
/// let cli = SqliteStore::open_existing(&path)?;
/// let page = cli.list(ListQuery::newest(10).service("gemini_api")).await?;
/// assert_eq!(page.records, vec![r]);
/// assert_eq!(cli.stats().await?.max_size, 1_000); // the cap is the store's, not the handle's
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// A write is queued to the writer thread when its future is first polled; dropping the
/// future after that does not cancel it (it commits, unacknowledged). Dropping the last
/// handle waits for the writer to commit everything queued.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The path as text, for errors.
    label: Arc<str>,
    busy_timeout: Duration,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
}

struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    /// Closes the queue and waits for the writer to commit what is queued.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn sql_err<'a>(path: &'a str, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        op,
        source,
    }
}

/// A copy of an error (rusqlite's is not `Clone`), for each write of a failed batch.
fn dup(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_usize(n: i64) -> usize {
    usize::try_from(n.max(0)).unwrap_or(usize::MAX)
}

/// The key an unreadable row is listed under: its id, or the id bytes in hex.
fn key_of(id: &[u8]) -> String {
    match <[u8; 16]>::try_from(id) {
        Ok(b) => RecordId::from_bytes(b).to_string(),
        Err(_) => id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn decode(label: &str, id: &[u8], body: &[u8]) -> Result<DeadLetterRecord, StoreError> {
    DeadLetterRecord::from_json(body).map_err(|e| StoreError::Format {
        path: format!("{label} record {}", key_of(id)),
        reason: e.to_string(),
    })
}

/// Refuses anything at `path` that is not a regular file (a FIFO would block the open
/// forever, a directory or device is a mistake); `Ok(false)` if nothing is there.
fn check_path(path: &Path, label: &str) -> Result<bool, StoreError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(m) => {
            let ft = m.file_type();
            let what = if ft.is_dir() {
                "a directory"
            } else {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::FileTypeExt;
                    if ft.is_fifo() {
                        "a FIFO"
                    } else if ft.is_socket() {
                        "a socket"
                    } else if ft.is_block_device() || ft.is_char_device() {
                        "a device"
                    } else {
                        "not a regular file"
                    }
                }
                #[cfg(not(unix))]
                {
                    "not a regular file"
                }
            };
            Err(StoreError::Format {
                path: label.to_owned(),
                reason: format!("it is {what}, not a regular file (a SQLite database)"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            path: label.to_owned(),
            op: "inspect the store's path",
            source,
        }),
    }
}

/// Opens a connection with the store's settings.
fn connect(
    path: &Path,
    label: &str,
    busy: Duration,
    create: bool,
) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err(label, "open"))?;
    conn.busy_timeout(busy)
        .map_err(sql_err(label, "set the busy timeout"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_err(label, "set synchronous = FULL"))?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and sets its cap to `max_size` records (at
    /// least 1; the oldest are evicted first, now if the store holds more). The cap is the
    /// store's: it applies to every handle and process on the file until the next `open`
    /// sets another. Tools that should leave it alone use [`open_existing`](Self::open_existing).
    ///
    /// Blocks while it opens the file (and waits for another process's write, if any); call
    /// it at start-up.
    ///
    /// # Errors
    ///
    /// If `path` exists and is not a regular file (a FIFO, a directory, a device) — checked
    /// before it is opened; if it is not a SQLite database, is a database of another
    /// application, or has a newer schema version; if it cannot be created or switched to WAL.
    pub fn open(path: impl AsRef<Path>, max_size: usize) -> Result<Self, StoreError> {
        SqliteStore::open_inner(path.as_ref(), Some(max_size.max(1)), DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens the store with the reference design's cap of 1,000 records.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_default(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        SqliteStore::open(path, DEFAULT_MAX_SIZE)
    }

    /// Opens a store that already exists, keeping its cap (for tools such as the CLI).
    ///
    /// # Errors
    ///
    /// If nothing is at `path`; otherwise as [`open`](Self::open).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        SqliteStore::open_inner(path.as_ref(), None, DEFAULT_BUSY_TIMEOUT)
    }

    fn open_inner(
        path: &Path,
        max_size: Option<usize>,
        busy: Duration,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let label: Arc<str> = Arc::from(path.display().to_string());
        let exists = check_path(&path, &label)?;
        if !exists {
            if max_size.is_none() {
                return Err(StoreError::Io {
                    path: label.to_string(),
                    op: "open an existing store",
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                    path: label.to_string(),
                    op: "create the store's directory",
                    source,
                })?;
            }
        }
        let conn = connect(&path, &label, busy, true)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql_err(&label, "switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Format {
                path: label.to_string(),
                reason: format!("SQLite refused WAL mode (journal mode is {mode})"),
            });
        }
        prepare_schema(&conn, &label, max_size)?;

        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("rampart-dlq-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(|source| StoreError::Io {
                path: label.to_string(),
                op: "start the writer thread",
                source,
            })?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                label,
                busy_timeout: busy,
                writer: Writer {
                    tx: Some(tx),
                    thread: Some(thread),
                },
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` as one write, group-committed with whatever else is queued; resolves once
    /// the transaction holding it committed.
    async fn write<T: Send + 'static>(
        &self,
        op: &'static str,
        statements: Statements,
        f: impl FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (ack, rx) = oneshot::channel::<Result<T, StoreError>>();
        let label = self.inner.label.clone();
        let job: Job = Box::new(move |conn| {
            let res = match conn {
                // One statement is atomic on its own (SQLite undoes a failed statement, with
                // its triggers); several get a savepoint.
                Ok(c) => match statements {
                    Statements::One => f(c, &label),
                    Statements::Many => in_savepoint(c, &label, op, f),
                },
                Err(e) => Err(sql_err(&label, "begin a transaction")(dup(e))),
            };
            Box::new(move |commit| {
                let out = match (res, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(sql_err(&label, "commit")(dup(e))),
                };
                let _ = ack.send(out);
            })
        });
        let tx = self
            .inner
            .writer
            .tx
            .as_ref()
            .ok_or(StoreError::Closed { store: "sqlite" })?;
        tx.send(job)
            .map_err(|_| StoreError::Closed { store: "sqlite" })?;
        rx.await
            .map_err(|_| StoreError::Closed { store: "sqlite" })?
    }

    /// Runs `f` on a reader connection on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = connect(&inner.path, &inner.label, inner.busy_timeout, false)?;
                    c.pragma_update(None, "query_only", true)
                        .map_err(sql_err(&inner.label, "set query_only"))?;
                    c
                }
            };
            let out = f(&conn, &inner.label);
            let mut pool = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < READERS_KEPT {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|_| StoreError::Closed { store: "sqlite" })?
    }
}

/// Creates the schema on first open, checks its version, and sets the cap if asked to.
fn prepare_schema(
    conn: &Connection,
    label: &str,
    max_size: Option<usize>,
) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_err(label, "begin the schema transaction"))?;
    let res = (|| {
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql_err(label, "read the schema version"))?;
        if version == 0 {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(sql_err(label, "read the schema"))?;
            if tables != 0 {
                return Err(StoreError::Format {
                    path: label.to_owned(),
                    reason:
                        "it is a SQLite database of another application (no rampart schema version)"
                            .into(),
                });
            }
            conn.execute_batch(SCHEMA)
                .map_err(sql_err(label, "create the schema"))?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql_err(label, "set the schema version"))?;
        } else if version != SCHEMA_VERSION {
            return Err(StoreError::Format {
                path: label.to_owned(),
                reason: format!(
                    "schema version {version} is not supported (this build reads version {SCHEMA_VERSION}; upgrade rampart)"
                ),
            });
        }
        if let Some(cap) = max_size {
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'max_size'",
                [to_i64(cap)],
            )
            .map_err(sql_err(label, "set the cap"))?;
            enforce_cap(conn).map_err(sql_err(label, "evict over the cap"))?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(sql_err(label, "commit the schema")),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Evicts the oldest records over the store's cap, counting them.
fn enforce_cap(conn: &Connection) -> rusqlite::Result<()> {
    let (count, cap): (i64, i64) = conn
        .prepare_cached(
            "SELECT (SELECT value FROM meta WHERE key = 'records'),
                    (SELECT value FROM meta WHERE key = 'max_size')",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let excess = count.saturating_sub(cap.max(1));
    if excess > 0 {
        let evicted = conn
            .prepare_cached(
                "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY id LIMIT ?1)",
            )?
            .execute([excess])?;
        conn.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'evictions'")?
            .execute([to_i64(evicted)])?;
    }
    Ok(())
}

/// Runs one write in its own savepoint, so that a failed write leaves no trace in the batch.
fn in_savepoint<T>(
    conn: &Connection,
    label: &str,
    op: &'static str,
    f: impl FnOnce(&Connection, &str) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT job")
        .and_then(|mut s| s.execute([]))
        .map_err(sql_err(label, op))?;
    match f(conn, label) {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]))
                .map_err(sql_err(label, op))?;
            Ok(v)
        }
        Err(e) => {
            // If even this fails the transaction is gone; the commit then fails every write.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(e)
        }
    }
}

/// The writer thread: one transaction per batch of queued writes; acknowledges each write
/// after COMMIT returned. Ends (after finishing what is queued) when every handle is gone.
fn writer(conn: Connection, rx: mpsc::Receiver<Job>) {
    let mut concurrent = false;
    while let Ok(first) = rx.recv() {
        let begun = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]).map(|_| ()));
        let run = |j: Job| match &begun {
            Ok(()) => j(Ok(&conn)),
            Err(e) => j(Err(e)),
        };
        let mut completions: Vec<Completion> = vec![run(first)];
        // Run every write queued behind the first (up to MAX_BATCH). When the last batch had
        // company (concurrent writers), also wait for writes that keep arriving less than
        // GATHER_GAP apart, for at most GATHER_MAX: the writers just acknowledged are about
        // to send their next write, and one fsync for all of them beats one for each half.
        // Each write runs as it arrives, so waiting costs no extra time. A lone writer never
        // waits.
        let start = Instant::now();
        while completions.len() < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::TryRecvError::Disconnected) => None,
                Err(mpsc::TryRecvError::Empty) if !concurrent || begun.is_err() => None,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = GATHER_MAX.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        None
                    } else {
                        rx.recv_timeout(GATHER_GAP.min(left)).ok()
                    }
                }
            };
            match next {
                Some(j) => completions.push(run(j)),
                None => break,
            }
        }
        concurrent = completions.len() > 1;
        if begun.is_err() {
            // Each write already carries the error; nothing to commit.
            for c in completions {
                c(Ok(()));
            }
            continue;
        }
        let committed = if conn.is_autocommit() {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the batch's transaction was rolled back".into()),
            ))
        } else {
            enforce_cap(&conn).and_then(|()| {
                conn.prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]).map(|_| ()))
            })
        };
        if committed.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for c in completions {
            c(committed.as_ref().map(|_| ()));
        }
    }
}

fn push_job(
    conn: &Connection,
    id: [u8; 16],
    service: &str,
    reason: &str,
    body: &[u8],
) -> rusqlite::Result<Pushed> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO records (id, service, reason, body)
             SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (SELECT 1 FROM retry WHERE id = ?1)",
        )?
        .execute(params![&id[..], service, reason, body])?;
    Ok(if n == 1 {
        Pushed::Stored
    } else {
        Pushed::Duplicate
    })
}

impl DeadLetterStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let body = super::encode(&record)?;
        let id = *record.id.as_bytes();
        let service = record.service;
        let reason = record.reason.as_str();
        self.write("push", Statements::One, move |c, label| {
            push_job(c, id, &service, reason, &body).map_err(sql_err(label, "push"))
        })
        .await
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        self.read(move |c, label| {
            let body: Option<Vec<u8>> = c
                .prepare_cached("SELECT body FROM records WHERE id = ?1")
                .and_then(|mut s| s.query_row([&id.as_bytes()[..]], |r| r.get(0)).optional())
                .map_err(sql_err(label, "get"))?;
            body.map(|b| decode(label, id.as_bytes(), &b)).transpose()
        })
        .await
    }

    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        if q.limit == 0 {
            return Ok(Page::default());
        }
        self.read(move |c, label| list(c, label, &q)).await
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        self.write("delete", Statements::One, move |c, label| {
            c.prepare_cached("DELETE FROM records WHERE id = ?1")
                .and_then(|mut s| s.execute([&id.as_bytes()[..]]))
                .map(|n| n > 0)
                .map_err(sql_err(label, "delete"))
        })
        .await
    }

    async fn replace(&self, record: DeadLetterRecord) -> Result<bool, StoreError> {
        let body = super::encode(&record)?;
        let id = *record.id.as_bytes();
        let service = record.service;
        let reason = record.reason.as_str();
        self.write("replace", Statements::One, move |c, label| {
            c.prepare_cached(
                "UPDATE records SET service = ?2, reason = ?3, body = ?4 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![&id[..], service, reason, body]))
            .map(|n| n > 0)
            .map_err(sql_err(label, "replace"))
        })
        .await
    }

    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        self.write("requeue", Statements::Many, move |c, label| {
            let key = &id.as_bytes()[..];
            let row: Option<(String, String, Vec<u8>)> = c
                .prepare_cached("DELETE FROM records WHERE id = ?1 RETURNING service, reason, body")
                .and_then(|mut s| {
                    s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql_err(label, "requeue"))?;
            let Some((service, reason, body)) = row else {
                return Ok(None);
            };
            // An unreadable record stays where it is (the savepoint rolls the move back).
            let record = decode(label, key, &body)?;
            c.prepare_cached(
                "INSERT INTO retry (id, service, reason, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![key, service, reason, body]))
            .map_err(sql_err(label, "requeue"))?;
            Ok(Some(record))
        })
        .await
    }

    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(
            "take requeued records",
            Statements::Many,
            move |c, label| {
                let mut taken = Vec::new();
                let mut seqs = Vec::new();
                {
                    let mut s = c
                        .prepare_cached("SELECT seq, id, body FROM retry ORDER BY seq")
                        .map_err(sql_err(label, "take requeued records"))?;
                    let mut rows = s
                        .query([])
                        .map_err(sql_err(label, "take requeued records"))?;
                    while taken.len() < limit {
                        let Some(row) = rows
                            .next()
                            .map_err(sql_err(label, "take requeued records"))?
                        else {
                            break;
                        };
                        let (seq, id, body): (i64, Vec<u8>, Vec<u8>) =
                            (|| Ok::<_, rusqlite::Error>((row.get(0)?, row.get(1)?, row.get(2)?)))(
                            )
                            .map_err(sql_err(label, "take requeued records"))?;
                        match DeadLetterRecord::from_json(&body) {
                            Ok(r) => {
                                taken.push(r);
                                seqs.push(seq);
                            }
                            Err(e) => tracing::warn!(
                                store = %label,
                                record_id = %key_of(&id),
                                error = %e,
                                "unreadable record in the retry queue; left in place"
                            ),
                        }
                    }
                }
                let mut del = c
                    .prepare_cached("DELETE FROM retry WHERE seq = ?1")
                    .map_err(sql_err(label, "take requeued records"))?;
                for seq in seqs {
                    del.execute([seq])
                        .map_err(sql_err(label, "take requeued records"))?;
                }
                Ok(taken)
            },
        )
        .await
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let cut = *cutoff(age).as_bytes();
        self.write("purge", Statements::One, move |c, label| {
            c.prepare_cached("DELETE FROM records WHERE id < ?1")
                .and_then(|mut s| s.execute([&cut[..]]))
                .map_err(sql_err(label, "purge"))
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|c, label| {
            let mut stats = StoreStats::default();
            let mut s = c
                .prepare_cached("SELECT key, value FROM meta")
                .map_err(sql_err(label, "read the counters"))?;
            let rows = s
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql_err(label, "read the counters"))?;
            for row in rows {
                let (k, v) = row.map_err(sql_err(label, "read the counters"))?;
                match k.as_str() {
                    "records" => stats.records = to_usize(v),
                    "requeued" => stats.requeued = to_usize(v),
                    "evictions" => stats.evictions = u64::try_from(v.max(0)).unwrap_or(0),
                    "max_size" => stats.max_size = to_usize(v),
                    _ => {}
                }
            }
            Ok(stats)
        })
        .await
    }
}

/// A page, newest first, filtered by SQL; unreadable rows are listed, never fatal.
fn list(c: &Connection, label: &str, q: &ListQuery) -> Result<Page, StoreError> {
    let err = || sql_err(label, "list");
    let mut sql = String::from("SELECT id, body FROM records WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(b) = q.before {
        args.push(rusqlite::types::Value::Blob(b.as_bytes().to_vec()));
        sql.push_str(&format!(" AND id < ?{}", args.len()));
    }
    if let Some(s) = q.since {
        args.push(rusqlite::types::Value::Blob(s.as_bytes().to_vec()));
        sql.push_str(&format!(" AND id >= ?{}", args.len()));
    }
    if let Some(s) = &q.service {
        args.push(rusqlite::types::Value::Text(s.clone()));
        sql.push_str(&format!(" AND service = ?{}", args.len()));
    }
    if let Some(r) = q.reason {
        args.push(rusqlite::types::Value::Text(r.as_str().to_owned()));
        sql.push_str(&format!(" AND reason = ?{}", args.len()));
    }
    sql.push_str(" ORDER BY id DESC");
    let mut stmt = c.prepare_cached(&sql).map_err(err())?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(err())?;
    let mut page = Page::default();
    // Unreadable rows up to the last record returned; those after it belong to the next page.
    let mut reported = 0;
    while let Some(row) = rows.next().map_err(err())? {
        let id: Vec<u8> = row.get(0).map_err(err())?;
        let body: Vec<u8> = row.get(1).map_err(err())?;
        match DeadLetterRecord::from_json(&body) {
            Ok(r) => {
                if page.records.len() == q.limit {
                    page.next = page.records.last().map(|r| r.id);
                    page.unreadable.truncate(reported);
                    break;
                }
                page.records.push(r);
                reported = page.unreadable.len();
            }
            Err(e) => page.unreadable.push(Unreadable {
                key: key_of(&id),
                reason: e.to_string(),
            }),
        }
    }
    Ok(page)
}
