//! Nothing lost, nothing doubled, nothing secret: writer processes SIGKILLed mid-batch, a
//! reader process opening the store while another process writes, garbage rows, odd paths,
//! a Redis that dies mid-run, and secrets in requests.

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, RecordId, SqliteStore,
    StoreError,
};

/// The store's path, for the child process.
const CHILD_ENV: &str = "RAMPART_DLQ_CRASH_CHILD";
/// Set: the child takes requeued records instead of pushing.
const TAKER_ENV: &str = "RAMPART_DLQ_TAKER_CHILD";
/// Optional: the child stops after this many acknowledged pushes (else it runs until killed).
const CHILD_LIMIT_ENV: &str = "RAMPART_DLQ_CHILD_LIMIT";

/// Not a test of its own: the body of the writer process the multi-process tests start (this
/// same test binary, with `CHILD_ENV` set). 16 tasks push records as fast as they can; each
/// id is printed once `push` has returned (acknowledged = committed and synced).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let limit: u64 = std::env::var(CHILD_LIMIT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(TAKER_ENV).is_ok() {
        // The taker: takes requeued records, a few at a time, until the queue is empty.
        return rt.block_on(async move {
            let store = SqliteStore::open_existing(&path).unwrap();
            let mut out = std::io::stdout().lock();
            loop {
                let batch = store.take_requeued(5).await.unwrap();
                if batch.is_empty() {
                    return;
                }
                for r in batch {
                    writeln!(out, "{}", r.id).unwrap();
                }
                out.flush().unwrap();
            }
        });
    }
    rt.block_on(async move {
        let store = SqliteStore::open(&path, 1_000_000).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RecordId>();
        let started = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Many concurrent writers, so that batches (group commits) are in flight when killed.
        for w in 0..16 {
            let store = store.clone();
            let tx = tx.clone();
            let started = started.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    if started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= limit {
                        return;
                    }
                    let r = DeadLetterRecord::new("crash", DeadLetterReason::Permanent)
                        .error(format!("writer {w} record {n} {}", "x".repeat(200)));
                    let id = r.id;
                    match store.push(r).await {
                        Ok(_) => {
                            let _ = tx.send(id);
                        }
                        Err(e) => {
                            eprintln!("push failed: {e}: {:?}", std::error::Error::source(&e))
                        }
                    }
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(id) = rx.recv().await {
            writeln!(out, "{id}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// Starts the writer process on `path`; its stdout carries the acknowledged ids.
fn spawn_writer(path: &Path, limit: Option<u64>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = limit {
        cmd.env(CHILD_LIMIT_ENV, n.to_string());
    }
    cmd.spawn().unwrap()
}

/// The id on one line of the child's output (the test harness prints `test crash_child ... `
/// in front of the first one).
fn ack(line: &str) -> Result<RecordId, rampart_dlq::ParseIdError> {
    line.split_whitespace().last().unwrap_or("").parse()
}

/// Every record in the store (paged), with how often each id appeared.
async fn everything(store: &SqliteStore) -> (HashMap<RecordId, usize>, usize) {
    let mut seen = HashMap::new();
    let mut unreadable = 0;
    let mut q = ListQuery::newest(5_000);
    loop {
        let page = store.list(q.clone()).await.unwrap();
        unreadable += page.unreadable.len();
        for r in &page.records {
            *seen.entry(r.id).or_insert(0) += 1;
        }
        match page.next {
            Some(n) => q.before = Some(n),
            None => return (seen, unreadable),
        }
    }
}

fn integrity_check(path: &Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A pseudo-random number from the clock (the kill points vary run to run).
fn jitter(max: usize) -> usize {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    n % max
}

#[test]
fn a_writer_process_killed_three_times_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sqlite");
    let mut acked = HashSet::new();
    for round in 0..3 {
        let mut child = spawn_writer(&path, None);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // A random kill point: somewhere between 300 and 2,300 acknowledgements this round.
        let target = acked.len() + 300 + jitter(2_000);
        while acked.len() < target {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Ok(id) = ack(&l) {
                        acked.insert(id);
                    }
                }
                _ => break,
            }
        }
        // SIGKILL mid-batch: the writers never stop on their own.
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever was printed before the kill was acknowledged.
        for l in lines.map_while(Result::ok) {
            if let Ok(id) = ack(&l) {
                acked.insert(id);
            }
        }
        assert!(
            acked.len() >= target,
            "round {round}: the child acknowledged only {}",
            acked.len()
        );

        assert_eq!(integrity_check(&path), "ok", "round {round}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStore::open_existing(&path).unwrap();
            let (seen, unreadable) = everything(&store).await;
            assert_eq!(unreadable, 0);
            let missing: Vec<_> = acked.iter().filter(|id| !seen.contains_key(id)).take(5).collect();
            assert!(
                missing.is_empty(),
                "round {round}: acknowledged records lost: {missing:?}"
            );
            assert!(seen.values().all(|n| *n == 1), "each record exactly once");
            assert_eq!(store.stats().await.unwrap().records, seen.len());
            eprintln!(
                "round {round}: {} acknowledged, {} stored (the rest were committed but not yet acknowledged)",
                acked.len(),
                seen.len()
            );
        });
    }
}

#[test]
fn a_process_opening_and_listing_the_store_never_loses_the_writers_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    // The writer writes until it is killed: the reader's opens overlap its writes however
    // fast or slow this machine is (no timing assumption), and the kill is a crash too.
    const OPENS: u32 = 20;
    let mut child = spawn_writer(&path, None);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| ack(&l).ok())
            .collect::<Vec<RecordId>>()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Open, list, count and close the store in a loop while the writer process writes (what
    // `rampart dlq list` in a loop does): each open must leave the writer's records alone.
    let mut opens = 0;
    let mut last = 0;
    while opens < OPENS {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer stopped on its own"
        );
        if !path.exists() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        rt.block_on(async {
            let store = match SqliteStore::open_existing(&path) {
                Ok(s) => s,
                // The writer may still be creating the schema.
                Err(StoreError::Format { .. }) => return,
                Err(e) => panic!("{e}"),
            };
            let page = store.list(ListQuery::newest(1)).await.unwrap();
            let n = store.stats().await.unwrap().records;
            assert!(n >= last, "the record count never goes back ({last} → {n})");
            assert!(page.records.len() <= 1);
            last = n;
            opens += 1;
        });
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(!acked.is_empty(), "the writer acknowledged nothing");
    assert_eq!(integrity_check(&path), "ok");
    rt.block_on(async {
        let store = SqliteStore::open_existing(&path).unwrap();
        let (seen, _) = everything(&store).await;
        let missing = acked.iter().filter(|id| !seen.contains_key(id)).count();
        assert_eq!(
            missing, 0,
            "records lost while another process opened the store"
        );
        assert!(seen.values().all(|n| *n == 1), "each record exactly once");
    });
    eprintln!(
        "the reader opened the store {opens} times while the writer wrote {} acknowledged records",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_taking_requeued_records_never_take_the_same_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let store = SqliteStore::open(&path, 100_000).unwrap();
    let mut ids = HashSet::new();
    for n in 0..600 {
        let r = DeadLetterRecord::new("q", DeadLetterReason::Permanent).error(format!("r{n}"));
        ids.insert(r.id);
        store.push(r.clone()).await.unwrap();
        store.requeue(r.id).await.unwrap().unwrap();
    }
    let takers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &path)
                .env(TAKER_ENV, "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut taken = Vec::new();
    let mut per_process = Vec::new();
    for child in takers {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success());
        let mine: Vec<RecordId> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| ack(l).ok())
            .collect();
        per_process.push(mine.len());
        taken.extend(mine);
    }
    assert_eq!(
        taken.len(),
        600,
        "each record taken exactly once ({per_process:?})"
    );
    assert_eq!(taken.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(store.stats().await.unwrap().requeued, 0);
    eprintln!("two taker processes took {per_process:?} records");
}

/// Inserts a row straight into the table, bypassing the store.
fn raw_row(path: &Path, table: &str, id: &[u8], body: &[u8]) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute(
        &format!(
            "INSERT INTO {table} (id, service, reason, body) VALUES (?1, 's', 'permanent', ?2)"
        ),
        rusqlite::params![id, body],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rows_in_the_middle_are_listed_as_unreadable_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sqlite");
    let store = SqliteStore::open(&path, 1_000).unwrap();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for n in 0..20 {
        if n % 5 == 2 {
            // Garbage between good records: not JSON, JSON of the wrong shape, binary.
            let id = RecordId::new();
            let body: &[u8] = match n {
                2 => b"{not json",
                7 => br#"{"version": 1, "id": "nope"}"#,
                12 => &[0xff, 0x00, 0x01],
                _ => b"",
            };
            raw_row(&path, "records", id.as_bytes(), body);
            bad.push(id);
        } else {
            let r = DeadLetterRecord::new("s", DeadLetterReason::Permanent).error(format!("r{n}"));
            good.push(r.id);
            store.push(r).await.unwrap();
        }
    }
    // An id that is not even 16 bytes.
    raw_row(&path, "records", b"abc", b"{}");

    let page = store.list(ListQuery::newest(100)).await.unwrap();
    let have: Vec<_> = page.records.iter().map(|r| r.id).collect();
    let mut expect = good.clone();
    expect.reverse();
    assert_eq!(have, expect, "every good record, newest first");
    assert_eq!(page.unreadable.len(), 5, "{:?}", page.unreadable);
    let keys: HashSet<_> = page.unreadable.iter().map(|u| u.key.clone()).collect();
    for id in &bad {
        assert!(
            keys.contains(&id.to_string()),
            "{id} is listed as unreadable"
        );
    }
    assert!(
        keys.contains("616263"),
        "a short id is shown in hex: {keys:?}"
    );

    // Paged listings see every good record once, and each bad row on some page.
    let mut seen = Vec::new();
    let mut unreadable = 0;
    let mut q = ListQuery::newest(3);
    loop {
        let page = store.list(q.clone()).await.unwrap();
        seen.extend(page.records.iter().map(|r| r.id));
        unreadable += page.unreadable.len();
        match page.next {
            Some(n) => q.before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, expect);
    assert_eq!(unreadable, 5);

    // Reading one is an error naming it; requeueing one leaves it where it is; nothing is
    // deleted behind the operator's back.
    let err = store.get(bad[0]).await.unwrap_err();
    assert!(err.to_string().contains(&bad[0].to_string()), "{err}");
    assert!(store.requeue(bad[0]).await.is_err());
    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.requeued), (good.len() + 5, 0));

    // An unreadable retry-queue entry is skipped, not dropped, and does not block the queue.
    let junk = RecordId::new();
    raw_row(&path, "retry", junk.as_bytes(), b"junk");
    assert!(store.requeue(good[0]).await.unwrap().is_some());
    let taken = store.take_requeued(10).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [good[0]]);
    assert_eq!(
        store.stats().await.unwrap().requeued,
        1,
        "the junk entry stays"
    );

    // And the store keeps taking writes.
    store
        .push(DeadLetterRecord::new("s", DeadLetterReason::Permanent))
        .await
        .unwrap();
    assert_eq!(integrity_check(&path), "ok");
}

/// Opens `path` on another thread; fails the test (instead of hanging it) after 10 s.
fn open_or_hang(path: &Path) -> Result<SqliteStore, StoreError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(SqliteStore::open(&p, 10));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("opening the store hung")
}

#[test]
fn a_fifo_a_directory_or_a_foreign_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("dlq.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let err = open_or_hang(&fifo).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("FIFO") && msg.contains("dlq.fifo"), "{msg}");
        assert!(matches!(err, StoreError::Format { .. }));
        let err = SqliteStore::open_existing(&fifo).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
    } else {
        support::skip("mkfifo is not available");
    }

    let err = open_or_hang(dir.path()).unwrap_err();
    assert!(err.to_string().contains("a directory"), "{err}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a database at all").unwrap();
    let err = open_or_hang(&text).unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains("notes.txt") && msg.contains("not a database"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "hello, this is not a database at all"
    );

    let foreign = dir.path().join("other-app.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT)")
        .unwrap();
    let err = open_or_hang(&foreign).unwrap_err();
    assert!(err.to_string().contains("another application"), "{err}");

    let missing = dir.path().join("missing.sqlite");
    let err = SqliteStore::open_existing(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.sqlite"), "{err}");
    assert!(!missing.exists(), "open_existing creates nothing");
}

#[tokio::test]
async fn a_store_of_a_newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.sqlite");
    let store = SqliteStore::open(&path, 10).unwrap();
    store
        .push(DeadLetterRecord::new("s", DeadLetterReason::Permanent))
        .await
        .unwrap();
    drop(store);
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open_existing(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 99") && msg.contains("future.sqlite"),
        "{msg}"
    );
}

#[cfg(all(feature = "redis", feature = "http"))]
mod redis_and_http {
    use super::*;
    use rampart_core::classify::IoErrors;
    use rampart_dlq::{DeadLetterLayer, Fallback, HttpExtractor, RedisStore};
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_failures_through_a_redis_that_dies_and_returns() {
        let Some(mut server) = support::RedisServer::start() else {
            return support::skip("redis-server is not installed");
        };
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisStore::connect(&server.url(), "outage", 100_000)
            .await
            .unwrap();
        let journal = SqliteStore::open(dir.path().join("fallback.sqlite"), 100_000).unwrap();
        let store =
            Fallback::with_interval(redis.clone(), journal.clone(), Duration::from_millis(100));
        let layer = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .classifier(IoErrors)
                .name("tts")
                .build()
                .unwrap(),
            store.clone(),
        );
        let svc = layer.layer(service_fn(|_: u64| async {
            Err::<(), _>(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }));

        let total = 10_000u64;
        let mut tasks = Vec::new();
        for w in 0..20u64 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..total / 20 {
                    let _ = svc.clone().oneshot(w * 1_000_000 + n).await;
                }
            }));
        }
        // Kill Redis while the calls are running (once a fifth of them are in), leave it dead
        // for a while, bring it back.
        for _ in 0..2_000 {
            if redis.stats().await.map(|s| s.records).unwrap_or(0) >= 2_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.restart();
        for t in tasks {
            t.await.unwrap();
        }
        // Drain what was journaled while Redis was down.
        for _ in 0..600 {
            if journal.stats().await.unwrap().records == 0 {
                break;
            }
            let _ = store.drain_once().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            journal.stats().await.unwrap().records,
            0,
            "the journal drained"
        );
        assert!(
            store.primary_failures() > 0,
            "Redis really was down for some writes"
        );
        assert_eq!(layer.stats().write_failures, 0, "no record was lost");

        let mut seen = HashSet::new();
        let mut payloads = HashSet::new();
        let mut q = ListQuery::newest(1000);
        loop {
            let page = redis.list(q.clone()).await.unwrap();
            for r in &page.records {
                assert!(seen.insert(r.id), "a record was written twice");
                payloads.insert(r.request.payload.as_u64().unwrap());
            }
            match page.next {
                Some(n) => q.before = Some(n),
                None => break,
            }
        }
        assert_eq!(
            seen.len() as u64,
            total,
            "exactly one record per failed call"
        );
        assert_eq!(payloads.len() as u64, total, "one per distinct request");
        assert_eq!(redis.stats().await.unwrap().records as u64, total);
        eprintln!(
            "redis outage: {} writes fell back to the journal and were drained",
            store.primary_failures()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_under_the_redis_keys_is_listed_as_unreadable_never_a_panic() {
        let Some(server) = support::RedisServer::start() else {
            return support::skip("redis-server is not installed");
        };
        let redis = RedisStore::connect(&server.url(), "garbage", 1000)
            .await
            .unwrap();
        let good = DeadLetterRecord::new("s", DeadLetterReason::Permanent);
        redis.push(good.clone()).await.unwrap();
        let client = ::redis::Client::open(server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let bad_id = RecordId::new().to_string();
        let _: () = ::redis::pipe()
            .cmd("HSET")
            .arg(redis.records_key())
            .arg(&bad_id)
            .arg("{not json")
            .ignore()
            .cmd("ZADD")
            .arg(redis.index_key())
            .arg(0)
            .arg(&bad_id)
            .ignore()
            .cmd("HSET")
            .arg(redis.records_key())
            .arg("x")
            .arg(vec![0xffu8, 0, 1])
            .ignore()
            .cmd("ZADD")
            .arg(redis.index_key())
            .arg(0)
            .arg("x")
            .ignore()
            .query_async(&mut con)
            .await
            .unwrap();
        let page = redis.list(ListQuery::newest(10)).await.unwrap();
        assert_eq!(page.records, std::slice::from_ref(&good));
        assert_eq!(page.unreadable.len(), 2, "{:?}", page.unreadable);
        assert!(redis.get(bad_id.parse().unwrap()).await.is_err());
        assert!(redis.get(good.id).await.unwrap().is_some());
        // A key of the wrong type is an error, not a panic.
        let _: () = ::redis::cmd("SET")
            .arg(redis.index_key())
            .arg("oops")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(redis.list(ListQuery::newest(10)).await.is_err());
        assert!(redis
            .push(DeadLetterRecord::new("s", DeadLetterReason::Permanent))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn secrets_in_a_real_http_request_never_reach_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.sqlite");
        let store = SqliteStore::open(&path, 100).unwrap();
        let secrets = [
            "Bearer-tok-123",
            "sess-cookie-456",
            "AIzaSy-goog-789",
            "qkey-abc",
            "qapikey-def",
            "qtoken-ghi",
            "qaccess-jkl",
            "urlpass-mno",
            "proxy-cred-pqr",
        ];
        let req = http::Request::post(
            "https://user:urlpass-mno@generativelanguage.googleapis.com/v1beta/models/tts:generateContent?key=qkey-abc&api_key=qapikey-def&token=qtoken-ghi&access_token=qaccess-jkl&alt=json",
        )
        .header("authorization", "Bearer Bearer-tok-123")
        .header("proxy-authorization", "Basic proxy-cred-pqr")
        .header("cookie", "session=sess-cookie-456")
        .header("x-goog-api-key", "AIzaSy-goog-789")
        .header("content-type", "application/json")
        .body(bytes::Bytes::from_static(b"{\"contents\":[{\"parts\":[{\"text\":\"hello\"}]}]}"))
        .unwrap();
        let extractor = HttpExtractor::default()
            .keep_header("authorization")
            .keep_header("proxy-authorization")
            .keep_header("cookie")
            .keep_header("x-goog-api-key")
            .keep_header("content-type");
        let svc = DeadLetterLayer::new(
            rampart_dlq::DeadLetterConfig::builder()
                .extractor(extractor)
                .classifier(IoErrors)
                .build()
                .unwrap(),
            store,
        )
        .layer(service_fn(|r: http::Request<bytes::Bytes>| async move {
            Err::<(), _>(std::io::Error::other(format!("POST {} failed", r.uri())))
        }));
        let _ = svc.oneshot(req).await.unwrap_err();
        // The raw bytes SQLite wrote: the database file and its write-ahead log.
        let mut stored = std::fs::read(&path).unwrap();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        stored.extend(std::fs::read(&wal).unwrap_or_default());
        let text = String::from_utf8_lossy(&stored);
        for s in secrets {
            assert!(!text.contains(s), "{s} reached the store file: {text}");
        }
        assert!(text.contains("[redacted]"));
        assert!(text.contains("alt=json"), "harmless parameters are kept");
        assert!(text.contains("application/json"));
        assert!(text.contains("hello"), "the body is kept for redrive");
    }
}
