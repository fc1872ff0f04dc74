//! Nothing lost, nothing doubled, nothing secret: crashes of the journal writer, corrupt
//! tails, a Redis that dies mid-run, garbage under the Redis keys, and secrets in requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, FileStore, ListQuery, RecordId,
};

const CHILD_ENV: &str = "RAMPART_DLQ_CRASH_CHILD";

/// Not a test of its own: the body of the child process that `a_killed_writer_loses_no_acknowledged_record`
/// starts (this same test binary, with `CHILD_ENV` set). It pushes records as fast as it can
/// and prints each id once `push` has returned (acknowledged = on disk).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = FileStore::open(&path, 1_000_000).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RecordId>();
        // Many concurrent writers, so that batches (group commits) are in flight when killed.
        for w in 0..16 {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    let r = DeadLetterRecord::new("crash", DeadLetterReason::Permanent)
                        .error(format!("writer {w} record {n} {}", "x".repeat(200)));
                    let id = r.id;
                    if store.push(r).await.is_ok() {
                        let _ = tx.send(id);
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

#[test]
fn a_killed_writer_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.journal");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = HashSet::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let target = 2_000 + round * 1_500;
        while acked.len() < target {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Ok(id) = l.trim().parse::<RecordId>() {
                        acked.insert(id);
                    }
                }
                _ => break,
            }
        }
        // SIGKILL mid-write: the writers never stop on their own.
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever was printed before the kill was acknowledged.
        for l in lines.map_while(Result::ok) {
            if let Ok(id) = l.trim().parse::<RecordId>() {
                acked.insert(id);
            }
        }
        assert!(
            acked.len() >= target,
            "round {round}: the child acknowledged only {}",
            acked.len()
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = FileStore::open(&path, 1_000_000).unwrap();
            let page = store.list(ListQuery::newest(usize::MAX - 1)).await.unwrap();
            assert!(
                page.unreadable.is_empty(),
                "no corrupt record is returned: {:?}",
                page.unreadable
            );
            let have: HashSet<RecordId> = page.records.iter().map(|r| r.id).collect();
            let missing: Vec<_> = acked.difference(&have).take(5).collect();
            assert!(
                missing.is_empty(),
                "round {round}: acknowledged records lost: {missing:?}"
            );
            assert!(page.records.iter().all(|r| r.service == "crash"));
            eprintln!(
                "round {round}: {} acknowledged, {} on disk, {} bytes of torn tail dropped",
                acked.len(),
                have.len(),
                store.recovery().dropped_bytes
            );
        });
    }
}

#[tokio::test]
async fn random_bytes_appended_to_a_journal_are_dropped_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let mut ids = Vec::new();
    {
        let store = FileStore::open(&path, 1000).unwrap();
        for _ in 0..50 {
            let r = DeadLetterRecord::new("s", DeadLetterReason::Permanent);
            ids.push(r.id);
            store.push(r).await.unwrap();
        }
    }
    let clean_len = std::fs::metadata(&path).unwrap().len();
    // Garbage of every shape: random bytes, a plausible length with a bad checksum, a huge
    // length field.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut garbage: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed & 0xFF) as u8
        })
        .collect();
    garbage.splice(0..0, [20, 0, 0, 0, 1]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&garbage).unwrap();
    drop(f);

    let store = FileStore::open(&path, 1000).unwrap();
    assert_eq!(store.recovery().dropped_bytes, garbage.len() as u64);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        clean_len,
        "the tail was truncated"
    );
    let page = store.list(ListQuery::newest(1000)).await.unwrap();
    assert!(page.unreadable.is_empty());
    let have: HashSet<_> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(have, ids.iter().copied().collect());
    // And the journal takes new writes after the recovery.
    store
        .push(DeadLetterRecord::new("s", DeadLetterReason::Permanent))
        .await
        .unwrap();
    drop(store);
    let again = FileStore::open(&path, 1000).unwrap();
    assert_eq!(again.stats().await.unwrap().records, 51);
    assert_eq!(again.recovery().dropped_bytes, 0);
}

#[tokio::test]
async fn a_file_that_is_not_a_journal_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let err = FileStore::open(&path, 10).unwrap_err();
    assert!(err.to_string().contains("is not readable"), "{err}");
    assert!(format!("{err:?}").contains("RDLQ"));
}

#[tokio::test]
async fn compaction_keeps_exactly_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let store = FileStore::open(&path, 100_000).unwrap();
    let mut keep = Vec::new();
    for n in 0..3_000 {
        let r = DeadLetterRecord::new("s", DeadLetterReason::Permanent);
        if n % 10 == 0 {
            keep.push(r.id);
            store.push(r).await.unwrap();
        } else {
            let id = r.id;
            store.push(r).await.unwrap();
            store.delete(id).await.unwrap();
        }
    }
    let big = 3_000 * 300;
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < big, "the journal was compacted ({len} bytes)");
    drop(store);
    let reopened = FileStore::open(&path, 100_000).unwrap();
    let page = reopened.list(ListQuery::newest(10_000)).await.unwrap();
    let have: HashSet<_> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(have, keep.into_iter().collect());
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
        let journal = FileStore::open(dir.path().join("fallback.journal"), 100_000).unwrap();
        let store =
            Fallback::with_interval(redis.clone(), journal.clone(), Duration::from_millis(100));
        let layer = DeadLetterLayer::new(
            store.clone(),
            rampart_dlq::JsonExtractor::default(),
            IoErrors,
        )
        .name("tts");
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
        let path = dir.path().join("secrets.journal");
        let store = FileStore::open(&path, 100).unwrap();
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
        let svc = DeadLetterLayer::new(store, extractor, IoErrors).layer(service_fn(
            |r: http::Request<bytes::Bytes>| async move {
                Err::<(), _>(std::io::Error::other(format!("POST {} failed", r.uri())))
            },
        ));
        let _ = svc.oneshot(req).await.unwrap_err();
        let stored = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&stored);
        for s in secrets {
            assert!(!text.contains(s), "{s} reached the journal: {text}");
        }
        assert!(text.contains("[redacted]"));
        assert!(text.contains("alt=json"), "harmless parameters are kept");
        assert!(text.contains("application/json"));
        assert!(text.contains("hello"), "the body is kept for redrive");
    }
}

#[tokio::test]
async fn a_journal_torn_at_any_byte_keeps_every_whole_entry_before_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("whole");
    let mut ids = Vec::new();
    {
        let store = FileStore::open(&path, 1000).unwrap();
        for n in 0..40 {
            let r = DeadLetterRecord::new("s", DeadLetterReason::Permanent).error(format!("r{n}"));
            ids.push(r.id);
            store.push(r).await.unwrap();
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    // Entry boundaries, from the layout: 4-byte length, kind, payload, 4-byte checksum.
    let mut ends = Vec::new();
    let mut pos = 5;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4 + 1 + len + 4;
        ends.push(pos);
    }
    assert_eq!(ends.len(), 40);
    let mut cut = 5;
    while cut < bytes.len() {
        let torn = dir.path().join(format!("torn-{cut}"));
        std::fs::write(&torn, &bytes[..cut]).unwrap();
        let store = FileStore::open(&torn, 1000).unwrap();
        let whole = ends.iter().filter(|e| **e <= cut).count();
        let page = store.list(ListQuery::newest(1000)).await.unwrap();
        let have: HashSet<_> = page.records.iter().map(|r| r.id).collect();
        assert_eq!(
            have,
            ids[..whole].iter().copied().collect(),
            "cut at byte {cut}"
        );
        let last_end = ends.iter().rfind(|e| **e <= cut).copied().unwrap_or(5);
        assert_eq!(store.recovery().dropped_bytes as usize, cut - last_end);
        cut += 37; // a stride that lands inside lengths, kinds, payloads and checksums
    }
}
