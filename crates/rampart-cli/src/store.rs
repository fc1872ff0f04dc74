//! The store a command works on: a SQLite file or Redis, chosen by `--store`.

use std::path::PathBuf;
use std::time::Duration;

use rampart_dlq::{
    DeadLetterRecord, DeadLetterStore, ListQuery, Page, Pushed, RecordId, RedisStore, SqliteStore,
    StoreError, StoreStats,
};

/// Where the Gemini demo writes its dead letters: the default store.
pub(crate) const DEFAULT_STORE: &str = "sqlite:target/gemini_tts/dlq.sqlite";

/// A SQLite or a Redis store.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

/// Opens `spec`: `sqlite:PATH`, a bare path, or `redis://HOST:PORT/DB[#prefix]`.
pub(crate) async fn open(spec: &str, create: bool) -> Result<(AnyStore, String), String> {
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        let (url, prefix) = spec
            .split_once('#')
            .unwrap_or((spec, rampart_dlq::store::redis::DEFAULT_PREFIX));
        let store = RedisStore::connect(url, prefix, 1_000_000)
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {}", chain(&e)))?;
        // The connection manager connects lazily on some errors; prove it answers.
        store
            .stats()
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {}", chain(&e)))?;
        return Ok((
            AnyStore::Redis(store),
            format!("redis store {url} (prefix {prefix})"),
        ));
    }
    if spec.starts_with("file:") {
        return Err(format!(
            "{spec}: the file journal store was retired in favour of SQLite; pass --store sqlite:PATH"
        ));
    }
    let path = PathBuf::from(spec.strip_prefix("sqlite:").unwrap_or(spec));
    if !create && !path.exists() {
        return Err(format!(
            "no dead-letter store at {} (run `cargo run --release --example gemini_tts` first, or pass --store sqlite:PATH or --store redis://HOST:PORT/DB)",
            path.display()
        ));
    }
    // The cap is the store's (set by the app that owns it); a store the CLI creates (import
    // into a new file) gets room for a million records.
    let store = if path.exists() {
        SqliteStore::open_existing(&path)
    } else {
        SqliteStore::open(&path, 1_000_000)
    }
    .map_err(|e| chain(&e))?;
    Ok((
        AnyStore::Sqlite(store),
        format!("sqlite store {}", path.display()),
    ))
}

/// An error with its causes, on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Redis($s) => $e,
        }
    };
}

impl DeadLetterStore for AnyStore {
    fn kind(&self) -> &'static str {
        both!(self, s => s.kind())
    }
    async fn push(&self, r: DeadLetterRecord) -> Result<Pushed, StoreError> {
        both!(self, s => s.push(r).await)
    }
    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        both!(self, s => s.get(id).await)
    }
    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        both!(self, s => s.list(q).await)
    }
    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        both!(self, s => s.delete(id).await)
    }
    async fn replace(&self, r: DeadLetterRecord) -> Result<bool, StoreError> {
        both!(self, s => s.replace(r).await)
    }
    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        both!(self, s => s.requeue(id).await)
    }
    async fn take_requeued(&self, n: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        both!(self, s => s.take_requeued(n).await)
    }
    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        both!(self, s => s.purge_older_than(age).await)
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        both!(self, s => s.stats().await)
    }
}
