//! The store a command works on: a SQLite file or Redis, chosen by `--store`.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "postgres")]
use rampart_dlq::PostgresStore;
#[cfg(feature = "redis")]
use rampart_dlq::RedisStore;
use rampart_dlq::{
    DeadLetterRecord, DeadLetterStore, ListQuery, Page, Pushed, RecordId, SqliteStore, StoreError,
    StoreStats,
};

/// Where the Gemini demo writes its dead letters: the default store.
pub(crate) const DEFAULT_STORE: &str = "sqlite:target/gemini_tts/dlq.sqlite";

/// A SQLite, PostgreSQL or Redis store (the last two with the `postgres` and `redis`
/// features; SQLite is always built in).
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

/// Splits `URL#PREFIX`; a `#` before the userinfo's end belongs to the password.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn url_and_prefix<'a>(spec: &'a str, default: &'a str) -> (&'a str, &'a str) {
    match (spec.rfind('#'), spec.rfind('@')) {
        (Some(hash), at) if at.is_none_or(|at| hash > at) => (
            spec.get(..hash).unwrap_or(spec),
            spec.get(hash + 1..).unwrap_or_default(),
        ),
        _ => (spec, default),
    }
}

/// Opens `spec`: `sqlite:PATH`, a bare path, `postgres://USER@HOST/DB[#prefix]` or
/// `redis://HOST:PORT/DB[#prefix]`.
pub(crate) async fn open(spec: &str, create: bool) -> Result<(AnyStore, String), String> {
    #[cfg(not(feature = "redis"))]
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        return Err(format!(
            "{}: this rampart was built without Redis support; rebuild it with --features redis",
            mask_url(spec)
        ));
    }
    #[cfg(not(feature = "postgres"))]
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Err(format!(
            "{}: this rampart was built without PostgreSQL support; rebuild it with --features postgres",
            mask_url(spec)
        ));
    }
    #[cfg(feature = "redis")]
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        let (url, prefix) = url_and_prefix(spec, rampart_dlq::store::redis::DEFAULT_PREFIX);
        let shown = mask_url(url);
        // The cap is the store's (recorded by the app that owns it), as for SQLite.
        let store = RedisStore::connect_existing(url, prefix)
            .await
            .map_err(|e| format!("cannot reach Redis at {shown}: {}", chain(&e)))?;
        // The connection manager connects lazily on some errors; prove it answers.
        store
            .stats()
            .await
            .map_err(|e| format!("cannot reach Redis at {shown}: {}", chain(&e)))?;
        return Ok((
            AnyStore::Redis(store),
            format!("redis store {shown} (prefix {prefix})"),
        ));
    }
    #[cfg(feature = "postgres")]
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let (url, prefix) = url_and_prefix(spec, rampart_dlq::store::postgres::DEFAULT_PREFIX);
        let shown = mask_url(url);
        let store = PostgresStore::connect_existing(url, prefix)
            .await
            .map_err(|e| format!("cannot reach PostgreSQL at {shown}: {}", chain(&e)))?;
        return Ok((
            AnyStore::Postgres(store),
            format!("postgres store {shown} (tables {prefix}_*)"),
        ));
    }
    if spec.starts_with("file:") {
        return Err(format!(
            "{spec}: the file journal store was retired in favour of SQLite; pass --store sqlite:PATH"
        ));
    }
    let path = sqlite_path(spec);
    if !create && !path.exists() {
        return Err(format!(
            "no dead-letter store at {} (run the demo first: `cargo run -p rampart-demo`, or pass --store sqlite:PATH or --store redis://HOST:PORT/DB)",
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

/// The password of a URL's userinfo (`redis://user:PASSWORD@host`), if it has one.
///
/// The userinfo ends at the last `@` before the path, so a password holding `/`, `?`, `#`
/// or `@` (unencoded, as people type them) is still found whole.
fn password(spec: &str) -> Option<(usize, usize)> {
    let (scheme, rest) = spec.split_once("://")?;
    let at = rest.rfind('@')?;
    let colon = rest.get(..at)?.find(':')?;
    let start = scheme.len() + 3 + colon + 1;
    let end = scheme.len() + 3 + at;
    (start < end).then_some((start, end))
}

/// `spec` as it may be shown: a URL's password replaced by `***` (`redis://:***@host:6379`).
///
/// Store URLs reach labels, tables and error messages; none of them may carry a password.
pub(crate) fn mask_url(spec: &str) -> String {
    match password(spec) {
        Some((start, end)) => format!(
            "{}***{}",
            spec.get(..start).unwrap_or_default(),
            spec.get(end..).unwrap_or_default()
        ),
        None => spec.to_owned(),
    }
}

/// `text` with the store URL's password removed wherever it appears (as typed and
/// percent-decoded), for messages that quote the URL or parts of it (driver errors do).
pub(crate) fn scrub(text: &str, spec: &str) -> String {
    let Some(secret) = password(spec).and_then(|(s, e)| spec.get(s..e)) else {
        return text.to_owned();
    };
    let mut out = text.to_owned();
    for form in [secret.to_owned(), percent_decode(secret)] {
        if !form.is_empty() {
            out = out.replace(&form, "***");
        }
    }
    out
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => $e,
            #[cfg(feature = "redis")]
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

/// The file of a SQLite store spec: `sqlite:PATH`, the URL form apalis and sqlx print
/// (`sqlite://relative.db`, `sqlite:///absolute.db`), or a bare path.
fn sqlite_path(spec: &str) -> PathBuf {
    PathBuf::from(
        spec.strip_prefix("sqlite://")
            .or_else(|| spec.strip_prefix("sqlite:"))
            .unwrap_or(spec),
    )
}

#[cfg(test)]
mod tests {
    use super::{mask_url, scrub, sqlite_path};
    use std::path::PathBuf;

    #[test]
    fn sqlite_specs_name_the_file() {
        assert_eq!(
            sqlite_path("sqlite:target/x.db"),
            PathBuf::from("target/x.db")
        );
        assert_eq!(
            sqlite_path("sqlite://tts-dlq.db"),
            PathBuf::from("tts-dlq.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///var/dlq.db"),
            PathBuf::from("/var/dlq.db")
        );
        assert_eq!(sqlite_path("dlq.db"), PathBuf::from("dlq.db"));
    }

    #[test]
    fn passwords_never_shown() {
        for (spec, shown) in [
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("redis://app:hunter2@h:1/0#dlq", "redis://app:***@h:1/0#dlq"),
            ("rediss://u:p/a#s?s@h:1", "rediss://u:***@h:1"),
            (
                "postgres://pg:s3cr%40t@db/test",
                "postgres://pg:***@db/test",
            ),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://user@h/0", "redis://user@h/0"),
            ("sqlite:target/x.sqlite", "sqlite:target/x.sqlite"),
        ] {
            assert_eq!(mask_url(spec), shown);
        }
        let msg = "connect to redis://:hunter2@h failed: auth hunter2 refused";
        assert_eq!(
            scrub(msg, "redis://:hunter2@h"),
            "connect to redis://:***@h failed: auth *** refused"
        );
        assert_eq!(
            scrub("bad s3cr@t", "postgres://pg:s3cr%40t@db/test"),
            "bad ***"
        );
    }
}
