//! The Redis store's own promises, on a private redis-server: scripts that refuse wrong-typed
//! keys before any write, a quarantine for unreadable retry entries, batched pushes, and key
//! names that keep one hash tag.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, Fallback, ListQuery, MemoryStore, Pushed,
    RecordId, RedisStore, StoreError,
};
use redis::aio::MultiplexedConnection;

fn record(n: u64) -> DeadLetterRecord {
    DeadLetterRecord::new("svc", DeadLetterReason::RetriesExhausted).error(format!("failure {n}"))
}

async fn raw(server: &support::RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn exists(con: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(con)
        .await
        .unwrap()
        == 1
}

/// Puts a value of the wrong kind under `key`: a string, or (for the string counter) a list.
async fn spoil(con: &mut MultiplexedConnection, key: &str, with_list: bool) {
    let _: () = redis::cmd("DEL").arg(key).query_async(con).await.unwrap();
    let cmd = if with_list { "RPUSH" } else { "SET" };
    let _: () = redis::cmd(cmd)
        .arg(key)
        .arg("not yours")
        .query_async(con)
        .await
        .unwrap();
}

fn assert_refused(e: StoreError, key: &str, found: &str) {
    let text = e.to_string();
    match e {
        StoreError::RedisKeyType {
            key: k, found: f, ..
        } => {
            assert_eq!((k.as_str(), f.as_str()), (key, found));
            assert!(text.contains(key), "{text} names the key");
            assert!(text.contains("nothing was written"), "{text}");
        }
        other => panic!("expected a key-type refusal for {key}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_onto_any_wrong_typed_key_writes_nothing_and_names_the_key() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "wrongtype", 100)
        .await
        .unwrap();
    let keys = [
        (store.records_key().to_owned(), false, "string"),
        (store.index_key().to_owned(), false, "string"),
        (store.pending_key().to_owned(), false, "string"),
        (
            store.evictions_key().to_owned(),
            false,
            "non-integer string",
        ),
        (store.evictions_key().to_owned(), true, "list"),
        (store.meta_key().to_owned(), false, "string"),
    ];
    for (bad, with_list, found) in &keys {
        let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
        spoil(&mut con, bad, *with_list).await;
        let e = store.push(record(1)).await.unwrap_err();
        assert_refused(e, bad, found);
        for other in [
            store.records_key(),
            store.index_key(),
            store.pending_key(),
            store.evictions_key(),
        ] {
            if other != bad {
                assert!(
                    !exists(&mut con, other).await,
                    "{other} untouched while {bad} is wrong"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_refuses_wrong_typed_keys_before_any_write() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "scripts", 100)
        .await
        .unwrap();
    let r = record(1);
    store.push(r.clone()).await.unwrap();

    // requeue: a wrong-typed retry list used to fail on RPUSH after HDEL + ZREM had removed
    // the record: it was gone from everywhere.
    spoil(&mut con, store.retry_key(), false).await;
    assert_refused(
        store.requeue(r.id).await.unwrap_err(),
        store.retry_key(),
        "string",
    );
    assert_eq!(
        store.get(r.id).await.unwrap(),
        Some(r.clone()),
        "still held"
    );
    let _: () = redis::cmd("DEL")
        .arg(store.retry_key())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        store.list(ListQuery::newest(5)).await.unwrap().records,
        std::slice::from_ref(&r)
    );

    // delete and purge: a wrong-typed index must not leave the hash half-cleaned.
    let index_backup: Vec<String> = redis::cmd("ZRANGE")
        .arg(store.index_key())
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    spoil(&mut con, store.index_key(), false).await;
    assert_refused(
        store.delete(r.id).await.unwrap_err(),
        store.index_key(),
        "string",
    );
    assert_refused(
        store
            .purge_older_than(Duration::from_secs(0))
            .await
            .unwrap_err(),
        store.index_key(),
        "string",
    );
    assert_eq!(store.get(r.id).await.unwrap(), Some(r.clone()));
    let _: () = redis::cmd("DEL")
        .arg(store.index_key())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(store.index_key())
        .arg(0)
        .arg(&index_backup[0])
        .query_async(&mut con)
        .await
        .unwrap();

    // replace: a wrong-typed hash.
    let hash: Vec<Vec<u8>> = redis::cmd("HGETALL")
        .arg(store.records_key())
        .query_async(&mut con)
        .await
        .unwrap();
    spoil(&mut con, store.records_key(), false).await;
    assert_refused(
        store.replace(r.clone()).await.unwrap_err(),
        store.records_key(),
        "string",
    );
    let _: () = redis::cmd("DEL")
        .arg(store.records_key())
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(store.records_key())
        .arg(&hash)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(store.delete(r.id).await.unwrap());
}

/// The defect: PUSH ran HSETNX, then failed on ZADD; the Fallback journaled the record, its
/// drain then got `Duplicate` (the hash had it), deleted the journal copy, and the record was
/// orphaned in the hash: never listed, evicted or purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_over_a_wrong_typed_index_journals_and_drains_once_it_is_fixed() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let redis = RedisStore::connect(&server.url(), "orphan", 100)
        .await
        .unwrap();
    let journal = MemoryStore::new(100);
    let store = Fallback::with_interval(redis.clone(), journal.clone(), Duration::from_secs(3600));
    spoil(&mut con, redis.index_key(), false).await;

    let r = record(7);
    assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Journaled);
    assert!(
        !exists(&mut con, redis.records_key()).await,
        "nothing half-written"
    );
    assert!(
        store.drain_once().await.is_err(),
        "the index is still wrong"
    );
    assert_eq!(
        journal.get(r.id).await.unwrap(),
        Some(r.clone()),
        "still journaled"
    );

    let _: () = redis::cmd("DEL")
        .arg(redis.index_key())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(store.drain_once().await.unwrap(), 1);
    assert_eq!(journal.stats().await.unwrap().records, 0);
    assert_eq!(redis.list(ListQuery::newest(5)).await.unwrap().records, [r]);
}

/// The defect: unreadable retry-list entries were popped and dropped with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_requeued_entries_move_to_the_quarantine_never_dropped() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "quarantine", 100)
        .await
        .unwrap();
    let good: Vec<DeadLetterRecord> = (0..3).map(record).collect();
    let garbage: Vec<&[u8]> = vec![b"{not json", b"\xff\xfe binary", br#"{"id":"nope"}"#];
    // garbage, good, garbage, good, garbage, good
    for (g, r) in garbage.iter().zip(&good) {
        let _: () = redis::cmd("RPUSH")
            .arg(store.retry_key())
            .arg(*g)
            .arg(r.to_json().unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    assert_eq!(store.take_requeued(2).await.unwrap(), good[..2]);
    assert_eq!(store.take_requeued(10).await.unwrap(), good[2..]);
    assert_eq!(store.take_requeued(10).await.unwrap(), []);
    assert_eq!(store.stats().await.unwrap().requeued, 0);

    assert_eq!(store.quarantine_len().await.unwrap(), 3);
    let q = store.quarantined(10).await.unwrap();
    assert_eq!(
        q.iter().map(|q| q.bytes.as_slice()).collect::<Vec<_>>(),
        garbage,
        "kept byte for byte, in order"
    );
    assert!(q.iter().all(|q| !q.reason.is_empty()));

    // A wrong-typed quarantine: the take is refused and the entry stays in the retry list.
    spoil(&mut con, store.quarantine_key(), false).await;
    let _: () = redis::cmd("RPUSH")
        .arg(store.retry_key())
        .arg("garbage")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_refused(
        store.take_requeued(10).await.unwrap_err(),
        store.quarantine_key(),
        "string",
    );
    assert_eq!(store.stats().await.unwrap().requeued, 1, "not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_get_every_requeued_record_exactly_once() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let store = RedisStore::connect(&server.url(), "takers", 10_000)
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for n in 0..400 {
        let r = record(n);
        ids.insert(r.id);
        store.push(r.clone()).await.unwrap();
        store.requeue(r.id).await.unwrap().unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store.take_requeued(7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 400, "no record taken twice");
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(store.quarantine_len().await.unwrap(), 0);
}

async fn script_calls(con: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_go_in_batches_each_acked_with_its_own_answer() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "batch", 300)
        .await
        .unwrap();
    let first = record(0);
    store.push(first.clone()).await.unwrap(); // loads the script
    let before = script_calls(&mut con).await;

    // 512 tasks: 500 distinct records, and one record pushed by 12 tasks at once. The twin is
    // made last, so it is the newest and the cap never evicts it (an evicted record pushed
    // again is stored again).
    let others: Vec<DeadLetterRecord> = (12..512).map(record).collect();
    let twin = record(1);
    let mut tasks = Vec::new();
    for n in 0..512usize {
        let store = store.clone();
        let r = if n < 12 {
            twin.clone()
        } else {
            others[n - 12].clone()
        };
        tasks.push(tokio::spawn(
            async move { (r.id, store.push(r).await.unwrap()) },
        ));
    }
    let mut stored = Vec::new();
    let mut twins = Vec::new();
    for t in tasks {
        let (id, pushed) = t.await.unwrap();
        if id == twin.id {
            twins.push(pushed);
        } else {
            assert_eq!(pushed, Pushed::Stored);
            stored.push(id);
        }
    }
    assert_eq!(
        twins.iter().filter(|p| **p == Pushed::Stored).count(),
        1,
        "one of the twelve stores it, {twins:?}"
    );
    let calls = script_calls(&mut con).await - before;
    assert!(calls < 128, "512 pushes took {calls} script calls");

    // The cap holds across batches: the 300 newest ids are kept, the rest evicted.
    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.evictions), (300, 502 - 300));
    let mut all = stored;
    all.push(twin.id);
    all.push(first.id);
    all.sort();
    let page = store.list(ListQuery::newest(1000)).await.unwrap();
    let mut kept: Vec<_> = page.records.iter().map(|r| r.id).collect();
    kept.reverse();
    assert_eq!(kept, all[all.len() - 300..], "the newest 300 are kept");
}

/// The writer sends `EVALSHA` itself (not through redis-rs's `ScriptInvocation`): a server
/// that lost its scripts (a restart, `SCRIPT FLUSH`, a failover) gets the push script loaded
/// again, and the push goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_after_the_server_lost_its_scripts_loads_the_script_again() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "noscript", 100)
        .await
        .unwrap();
    let (a, b) = (record(1), record(2));
    assert_eq!(store.push(a.clone()).await.unwrap(), Pushed::Stored);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(store.push(b.clone()).await.unwrap(), Pushed::Stored);
    assert_eq!(store.push(a).await.unwrap(), Pushed::Duplicate);
    assert_eq!(
        store
            .list(ListQuery::newest(10))
            .await
            .unwrap()
            .records
            .len(),
        2
    );
}

#[tokio::test]
async fn keys_share_one_hash_tag_and_an_empty_prefix_is_not_the_empty_tag() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let s = RedisStore::connect(&server.url(), "", 10).await.unwrap();
    assert_eq!(
        [
            s.records_key(),
            s.index_key(),
            s.pending_key(),
            s.evictions_key(),
            s.retry_key(),
            s.quarantine_key()
        ],
        [
            "{dead_letter_queue}:records",
            "{dead_letter_queue}:index",
            "{dead_letter_queue}:pending",
            "{dead_letter_queue}:evictions",
            "{dead_letter_queue}:retry_queue",
            "{dead_letter_queue}:quarantine",
        ]
    );
    let s = RedisStore::connect(&server.url(), "billing", 10)
        .await
        .unwrap();
    assert_eq!(s.records_key(), "{billing}:records");
    for bad in ["a}b", "}", "{x", "{}"] {
        match RedisStore::connect(&server.url(), bad, 10).await {
            Err(StoreError::RedisPrefix { prefix, .. }) => assert_eq!(prefix, bad),
            other => panic!("prefix {bad:?} accepted: {other:?}"),
        }
    }
}

async fn len(con: &mut MultiplexedConnection, cmd: &str, key: &str) -> usize {
    redis::cmd(cmd).arg(key).query_async(con).await.unwrap()
}

/// The previous layout kept every id in the sorted-set index at push time; this one appends
/// new ids to the pending list and indexes them when the cap, a listing or a purge needs
/// order. Data the previous layout wrote (hash + complete index, no pending list) is this
/// layout with nothing pending: it must be listed, counted, read, evicted oldest first and
/// purged, none of it ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_the_previous_layout_are_listed_counted_evicted_and_purged() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "legacy", 6)
        .await
        .unwrap();
    // Written exactly as the previous push script wrote them.
    let old: Vec<DeadLetterRecord> = (0..5).map(record).collect();
    for r in &old {
        let _: () = redis::pipe()
            .cmd("HSET")
            .arg(store.records_key())
            .arg(r.id.to_string())
            .arg(r.to_json().unwrap())
            .ignore()
            .cmd("ZADD")
            .arg(store.index_key())
            .arg(0)
            .arg(r.id.to_string())
            .ignore()
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg(store.evictions_key())
        .arg(2)
        .query_async(&mut con)
        .await
        .unwrap();

    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.evictions), (5, 2));
    let newest_first = |v: &[DeadLetterRecord]| v.iter().rev().cloned().collect::<Vec<_>>();
    assert_eq!(
        store.list(ListQuery::newest(10)).await.unwrap().records,
        newest_first(&old)
    );
    assert_eq!(store.get(old[0].id).await.unwrap().as_ref(), Some(&old[0]));
    assert_eq!(
        store.push(old[1].clone()).await.unwrap(),
        Pushed::Duplicate,
        "an old record is known to the idempotency check"
    );

    // Three new records: the cap (6) evicts the two oldest old ones, not a new one.
    let new: Vec<DeadLetterRecord> = (5..8).map(record).collect();
    for r in &new {
        assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Stored);
    }
    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.evictions), (6, 4));
    let mut kept = old[2..].to_vec();
    kept.extend(new.iter().cloned());
    assert_eq!(
        store.list(ListQuery::newest(10)).await.unwrap().records,
        newest_first(&kept)
    );
    assert_eq!(store.get(old[1].id).await.unwrap(), None, "evicted");
    assert_eq!(len(&mut con, "LLEN", store.pending_key()).await, 0);
    assert_eq!(len(&mut con, "ZCARD", store.index_key()).await, 6);

    assert_eq!(
        store.purge_older_than(Duration::ZERO).await.unwrap(),
        6,
        "old and new records purged alike"
    );
    assert_eq!(store.stats().await.unwrap().records, 0);
}

/// Records deleted or requeued while their id is still pending are never indexed (nor
/// listed, counted or evicted) later, and such stale pending ids cannot pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_ids_of_records_gone_meanwhile_are_skipped_and_bounded() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let store = RedisStore::connect(&server.url(), "pending", 3)
        .await
        .unwrap();
    let rs: Vec<DeadLetterRecord> = (0..4).map(record).collect();
    for r in &rs[..3] {
        store.push(r.clone()).await.unwrap();
    }
    assert_eq!(len(&mut con, "LLEN", store.pending_key()).await, 3);
    assert!(store.delete(rs[0].id).await.unwrap());
    assert_eq!(
        store.requeue(rs[1].id).await.unwrap().as_ref(),
        Some(&rs[1])
    );
    // The fourth push is under the cap (2 records held): nothing is evicted, and the
    // stale ids do not count.
    store.push(rs[3].clone()).await.unwrap();
    let st = store.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.requeued), (2, 0, 1));
    assert_eq!(
        store.list(ListQuery::newest(10)).await.unwrap().records,
        [rs[3].clone(), rs[2].clone()]
    );
    assert_eq!(len(&mut con, "LLEN", store.pending_key()).await, 0);
    assert_eq!(
        len(&mut con, "ZCARD", store.index_key()).await,
        2,
        "no stale id indexed"
    );
    // Pushed again after its deletion: stored again, and indexed once.
    assert_eq!(store.push(rs[0].clone()).await.unwrap(), Pushed::Stored);
    assert_eq!(store.stats().await.unwrap().records, 3);
    assert_eq!(
        store.list(ListQuery::newest(10)).await.unwrap().records,
        [rs[3].clone(), rs[2].clone(), rs[0].clone()]
    );

    // Push and delete 3,000 records without ever listing: the pending list stays bounded by
    // the records held plus 1,024 (plus one batch).
    let big = RedisStore::connect(&server.url(), "churn", 100_000)
        .await
        .unwrap();
    let keep = record(0);
    big.push(keep.clone()).await.unwrap();
    for n in 0..3_000 {
        let r = record(n);
        big.push(r.clone()).await.unwrap();
        assert!(big.delete(r.id).await.unwrap());
    }
    let pending = len(&mut con, "LLEN", big.pending_key()).await;
    assert!(
        pending <= 1 + 1024 + 1,
        "{pending} pending ids for 1 record"
    );
    assert_eq!(
        big.list(ListQuery::newest(10)).await.unwrap().records,
        [keep]
    );
    assert_eq!(len(&mut con, "ZCARD", big.index_key()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_is_the_stores_and_a_handle_that_connects_to_it_existing_keeps_it() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let app = RedisStore::connect(&server.url(), "capped", 3)
        .await
        .unwrap();
    let tool = RedisStore::connect_existing(&server.url(), "capped")
        .await
        .unwrap();
    assert_eq!(tool.meta_key(), "{capped}:meta");
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
    let _again = RedisStore::connect(&server.url(), "capped", 2)
        .await
        .unwrap();
    assert_eq!(tool.stats().await.unwrap().max_size, 2);
    assert_eq!(app.push(record(9)).await.unwrap(), Pushed::Stored);
    let st = tool.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (2, 4, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_recorded_cap_is_read_with_the_documented_default() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let mut con = raw(&server).await;
    let app = RedisStore::connect(&server.url(), "old", 3).await.unwrap();
    for n in 0..2 {
        app.push(record(n)).await.unwrap();
    }
    // As the previous layout left it: no meta hash.
    let _: () = redis::cmd("DEL")
        .arg(app.meta_key())
        .query_async(&mut con)
        .await
        .unwrap();
    let tool = RedisStore::connect_existing(&server.url(), "old")
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
    assert!(
        !exists(&mut con, tool.meta_key()).await,
        "connect_existing records nothing"
    );
    // The app's handle still applies its own cap to its pushes.
    for n in 2..6 {
        app.push(record(n)).await.unwrap();
    }
    let st = app.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (3, 3, 3));
    // A wrong-typed meta key is refused, naming the key.
    spoil(&mut con, app.meta_key(), false).await;
    let e = RedisStore::connect_existing(&server.url(), "old")
        .await
        .unwrap_err();
    match e {
        StoreError::RedisKeyType { key, found, .. } => {
            assert_eq!((key.as_str(), found.as_str()), ("{old}:meta", "string"));
        }
        other => panic!("expected a key-type refusal, got {other:?}"),
    }
}
