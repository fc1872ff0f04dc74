//! The PostgreSQL store against a real server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): two stores (as two processes would have) on
//! one table, concurrent takers, the cap under concurrent writers, unreadable rows, and URLs
//! never printed with their password. The shared contract is in `stores.rs`.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, PostgresStore, Pushed,
    RecordId, StoreError,
};
use tokio_postgres::{Client, NoTls};

fn url() -> String {
    support::postgres_url()
}

/// A plain client for setup and inspection, and a fresh schema dropped when the test ends;
/// `None` (after a SKIPPED line, or a panic when services are required) without a server.
struct Db {
    admin: Arc<Client>,
    schema: String,
}

impl Db {
    async fn new(test: &str) -> Option<Db> {
        let Ok((admin, connection)) = tokio_postgres::connect(&url(), NoTls).await else {
            support::skip(&format!("PostgreSQL is not reachable at {}", url()));
            return None;
        };
        tokio::spawn(connection);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("rampart_{test}_{}_{nanos}", std::process::id());
        Some(Db {
            admin: Arc::new(admin),
            schema,
        })
    }

    fn prefix(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    async fn drop_schema(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

fn record(n: u64) -> DeadLetterRecord {
    DeadLetterRecord::new("svc", DeadLetterReason::RetriesExhausted).error(format!("failure {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_table_see_each_other_and_never_take_a_record_twice() {
    let Some(db) = Db::new("share").await else {
        return;
    };
    let prefix = db.prefix("dlq");
    let a = PostgresStore::connect(&url(), &prefix, 100_000)
        .await
        .unwrap();
    let b = PostgresStore::connect(&url(), &prefix, 100_000)
        .await
        .unwrap();

    // Each sees the other's writes, and a push is idempotent across them.
    let r = record(1);
    assert_eq!(a.push(r.clone()).await.unwrap(), Pushed::Stored);
    assert_eq!(b.push(r.clone()).await.unwrap(), Pushed::Duplicate);
    assert_eq!(b.get(r.id).await.unwrap(), Some(r.clone()));
    assert!(b.delete(r.id).await.unwrap());
    assert_eq!(a.get(r.id).await.unwrap(), None);

    // 400 records pushed from 8 tasks over both stores, all requeued.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                let r = record(t * 1_000 + n);
                ids.push(r.id);
                assert_eq!(s.push(r).await.unwrap(), Pushed::Stored);
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(a.stats().await.unwrap().records, 400);
    for (i, id) in all.iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        assert!(s.requeue(*id).await.unwrap().is_some());
    }
    assert_eq!(b.stats().await.unwrap().requeued, 400);

    // 8 concurrent takers, 4 on each store (each store's takes run on its own connection,
    // so the two stores' transactions really overlap): every record taken exactly once.
    let taken = support::take_all_concurrently(&[a.clone(), b.clone()], 8).await;
    let unique: HashSet<RecordId> = taken.iter().copied().collect();
    assert_eq!(taken.len(), unique.len(), "no record taken twice");
    assert_eq!(unique, all, "every requeued record taken");
    assert_eq!(a.stats().await.unwrap().requeued, 0);
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_exactly_with_two_stores_writing_at_once() {
    let Some(db) = Db::new("cap").await else {
        return;
    };
    let prefix = db.prefix("dlq");
    let a = PostgresStore::connect(&url(), &prefix, 50).await.unwrap();
    let b = PostgresStore::connect(&url(), &prefix, 50).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                s.push(record(t * 100 + n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = a.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (50, 150, 50));
    // The newest 50 are the ones kept.
    let newest: Vec<RecordId> = a
        .list(ListQuery::newest(1_000))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id)
        .collect();
    let count: i64 = db
        .admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.dlq_records WHERE id < $1",
                db.schema
            ),
            &[&uuid::Uuid::from_bytes(*newest.last().unwrap().as_bytes())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((newest.len(), count), (50, 0));
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rows_are_reported_not_dropped() {
    let Some(db) = Db::new("garbage").await else {
        return;
    };
    let s = PostgresStore::connect(&url(), &db.prefix("dlq"), 100)
        .await
        .unwrap();
    let good: Vec<DeadLetterRecord> = (0..3).map(record).collect();
    for r in &good {
        s.push(r.clone()).await.unwrap();
    }
    // Rows written by something else: JSON, but not a record.
    let bad = RecordId::new();
    db.admin
        .execute(
            &format!(
                "INSERT INTO {}.dlq_records (id, service, reason, created_at, record) \
                 VALUES ($1, 'svc', 'permanent', now(), '{{\"not\": \"a record\"}}')",
                db.schema
            ),
            &[&uuid::Uuid::from_bytes(*bad.as_bytes())],
        )
        .await
        .unwrap();
    let page = s.list(ListQuery::newest(10)).await.unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(page.unreadable.len(), 1);
    assert_eq!(page.unreadable[0].key, bad.to_string());
    assert!(matches!(s.get(bad).await, Err(StoreError::Format { .. })));
    // The filtered listing reports it too, and paging over it loses nothing.
    let mut seen = 0;
    let mut unreadable = 0;
    let mut q = ListQuery::newest(1).service("svc");
    loop {
        let page = s.list(q.clone()).await.unwrap();
        seen += page.records.len();
        unreadable += page.unreadable.len();
        match page.next {
            Some(n) => q.before = Some(n),
            None => break,
        }
    }
    assert_eq!((seen, unreadable), (3, 1));

    // A garbage retry-queue entry is quarantined, never taken and never deleted.
    s.requeue(good[0].id).await.unwrap().unwrap();
    db.admin
        .execute(
            &format!(
                "INSERT INTO {}.dlq_retry_queue (id, record) VALUES (gen_random_uuid(), '[1, 2]')",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap();
    s.requeue(good[1].id).await.unwrap().unwrap();
    assert_eq!(s.stats().await.unwrap().requeued, 3);
    let taken = s.take_requeued(10).await.unwrap();
    assert_eq!(
        taken.iter().map(|r| r.id).collect::<Vec<_>>(),
        [good[0].id, good[1].id]
    );
    assert_eq!(s.stats().await.unwrap().requeued, 0);
    let kept: i64 = db
        .admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.dlq_retry_queue WHERE quarantined",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the unreadable entry is kept, flagged");
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_byte_exact_including_nul_and_any_unicode() {
    let Some(db) = Db::new("exact").await else {
        return;
    };
    let s = PostgresStore::connect(&url(), &db.prefix("dlq"), 100)
        .await
        .unwrap();
    // `jsonb` would refuse the NUL; the store keeps the record as `json`.
    let mut r = record(1).error("bad byte \u{0} then \u{1F600} and \"quotes\"");
    r.request.payload = serde_json::json!({ "z": 1, "a": [1.5, null, "\u{0}"] });
    assert_eq!(s.push(r.clone()).await.unwrap(), Pushed::Stored);
    assert_eq!(s.get(r.id).await.unwrap(), Some(r.clone()));
    // Operators can query records in SQL (a record holding a NUL is stored and read back
    // whole, but PostgreSQL's JSON operators refuse that one row, `json` and `jsonb` alike).
    let plain = record(2).error("upstream said \u{1F600}");
    s.push(plain.clone()).await.unwrap();
    let error: String = db
        .admin
        .query_one(
            &format!(
                "SELECT record::jsonb->>'error' FROM {}.dlq_records WHERE id = $1",
                db.schema
            ),
            &[&uuid::Uuid::from_bytes(*plain.id.as_bytes())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(error, "upstream said \u{1F600}");
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_never_printed_with_their_password() {
    let Some(db) = Db::new("secret").await else {
        return;
    };
    // Trust authentication ignores the password; the store must still never print it.
    let with_password = url().replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let s = PostgresStore::connect(&with_password, &db.prefix("dlq"), 10)
        .await
        .unwrap();
    for shown in [s.to_string(), format!("{s:?}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres@"), "{shown}");
    }
    // Nor in a connection error, with its whole chain of causes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = PostgresStore::connect(
        &format!("postgres://postgres:hunter2@127.0.0.1:{port}/test"),
        "dlq",
        10,
    )
    .await
    .unwrap_err();
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(" {s} {s:?}"));
        source = s.source();
    }
    assert!(matches!(err, StoreError::Postgres { .. }), "{chain}");
    assert!(!chain.contains("hunter2"), "{chain}");
    db.drop_schema().await;
}

#[tokio::test]
async fn an_invalid_prefix_is_refused_by_name() {
    for bad in [
        "",
        "1dlq",
        "dlq; DROP TABLE x",
        "a.b.c",
        "a\"b",
        &"x".repeat(41),
    ] {
        let err = PostgresStore::connect(&url(), bad, 10).await.unwrap_err();
        match err {
            StoreError::Config { field, value, .. } => {
                assert_eq!((field, value.as_str()), ("prefix", bad));
            }
            other => panic!("{bad}: {other}"),
        }
    }
}

#[test]
fn store_errors_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<StoreError>();
}

/// A private PostgreSQL server (initdb + postgres as the `postgres` OS user, trust auth) on a
/// free loopback port, which the test may stop and start again. `None` where that cannot be
/// done (not root, or the PostgreSQL binaries are not installed).
struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn bin(name: &str) -> std::path::PathBuf {
    std::env::var("PG_BIN")
        .map_or_else(
            |_| std::path::PathBuf::from(PG_BIN),
            std::path::PathBuf::from,
        )
        .join(name)
}

impl PrivateServer {
    fn start() -> Option<PrivateServer> {
        use std::process::{Command, Stdio};
        if !bin("initdb").exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !owned {
            return None;
        }
        let data = dir.path().join("data");
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = PrivateServer {
            dir,
            port,
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn spawn(&mut self) {
        use std::process::{Command, Stdio};
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let ready = Command::new(bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("private postgres on port {} did not start", self.port);
    }

    /// Immediate shutdown (SIGQUIT to the postmaster, no checkpoint): every client connection
    /// is cut; committed work survives through the WAL.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The postmaster's pid is the first line of its pid file (`runuser` is its parent).
            let pidfile = self.dir.path().join("data").join("postmaster.pid");
            if let Some(pid) = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
            {
                let _ = std::process::Command::new("kill")
                    .args(["-QUIT", &pid])
                    .status();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_by_reconnecting() {
    let Some(mut server) = tokio::task::spawn_blocking(PrivateServer::start)
        .await
        .unwrap()
    else {
        return support::skip("cannot run a private PostgreSQL server (needs root and initdb)");
    };
    let s = PostgresStore::connect(&server.url(), "dlq", 10_000)
        .await
        .unwrap();
    let mut acked = Vec::new();
    for n in 0..20 {
        let r = record(n);
        s.push(r.clone()).await.unwrap();
        acked.push(r.id);
    }
    s.requeue(acked[0]).await.unwrap().unwrap();

    // Cut every connection; while the server is down, operations fail (a Fallback would
    // journal), and once it is back the same store works again without being rebuilt.
    let mut server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    assert!(s.push(record(100)).await.is_err());
    assert!(s.stats().await.is_err());
    let server = tokio::task::spawn_blocking(move || {
        server.spawn();
        server
    })
    .await
    .unwrap();

    let r = record(101);
    assert_eq!(s.push(r.clone()).await.unwrap(), Pushed::Stored);
    acked.push(r.id);
    let listed: HashSet<RecordId> = s
        .list(ListQuery::newest(100))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id)
        .collect();
    assert!(
        acked[1..].iter().all(|id| listed.contains(id)),
        "every acknowledged record survived"
    );
    let taken = s.take_requeued(10).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [acked[0]]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_the_stores_and_a_handle_that_connects_to_it_existing_keeps_it() {
    let Some(db) = Db::new("storecap").await else {
        return;
    };
    let prefix = db.prefix("dlq");
    let app = PostgresStore::connect(&url(), &prefix, 3).await.unwrap();
    let tool = PostgresStore::connect_existing(&url(), &prefix)
        .await
        .unwrap();
    assert_eq!(tool.stats().await.unwrap().max_size, 3);
    let mut ids: Vec<RecordId> = Vec::new();
    for n in 0..5 {
        let r = record(n);
        ids.push(r.id);
        assert_eq!(tool.push(r).await.unwrap(), Pushed::Stored);
    }
    let st = tool.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (3, 2, 3));
    let kept: Vec<RecordId> = app
        .list(ListQuery::newest(10))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id)
        .collect();
    let newest: Vec<RecordId> = ids[2..].iter().rev().copied().collect();
    assert_eq!(
        kept, newest,
        "the tool's pushes evicted the oldest, down to 3"
    );
    // The app reconnecting with another cap changes the store's, for every handle.
    let _again = PostgresStore::connect(&url(), &prefix, 2).await.unwrap();
    assert_eq!(tool.stats().await.unwrap().max_size, 2);
    assert_eq!(app.push(record(9)).await.unwrap(), Pushed::Stored);
    let st = tool.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (2, 4, 2));
    drop((app, tool, _again));
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_recorded_cap_are_read_with_the_documented_default() {
    let Some(db) = Db::new("oldcap").await else {
        return;
    };
    let prefix = db.prefix("dlq");
    let app = PostgresStore::connect(&url(), &prefix, 3).await.unwrap();
    for n in 0..2 {
        app.push(record(n)).await.unwrap();
    }
    drop(app);
    // As the previous layout left them: a meta row without the cap.
    db.admin
        .batch_execute(&format!(
            "ALTER TABLE {}.dlq_meta DROP COLUMN max_size",
            db.schema
        ))
        .await
        .unwrap();
    let tool = PostgresStore::connect_existing(&url(), &prefix)
        .await
        .unwrap();
    let st = tool.stats().await.unwrap();
    assert_eq!(
        (st.records, st.max_size),
        (2, rampart_dlq::store::UNRECORDED_MAX_SIZE)
    );
    assert_eq!(
        tool.list(ListQuery::newest(10))
            .await
            .unwrap()
            .records
            .len(),
        2
    );
    let recorded: Option<i64> = db
        .admin
        .query_one(&format!("SELECT max_size FROM {}.dlq_meta", db.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, None, "connect_existing records nothing");
    for n in 2..6 {
        assert_eq!(tool.push(record(n)).await.unwrap(), Pushed::Stored);
    }
    assert_eq!(tool.stats().await.unwrap().records, 6);
    // The app's next connect records its cap, which the tool's next push applies.
    let _app = PostgresStore::connect(&url(), &prefix, 3).await.unwrap();
    assert_eq!(tool.push(record(6)).await.unwrap(), Pushed::Stored);
    let st = tool.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (3, 4, 3));
    drop((tool, _app));
    db.drop_schema().await;
}
