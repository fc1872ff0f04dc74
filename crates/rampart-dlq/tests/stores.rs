//! One contract, every store: memory, SQLite (tempdir) and a private Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "redis")]
#[path = "support/redis_cluster.rs"]
mod redis_cluster;
mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use rampart_dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, MemoryStore, Pushed, RecordId,
    RequestPart,
};

fn record(n: u64) -> DeadLetterRecord {
    DeadLetterRecord::new("svc", DeadLetterReason::RetriesExhausted)
        .error(format!("failure {n}"))
        .attempts(4, 4)
        .request(RequestPart {
            summary: format!("req {n}"),
            payload: serde_json::json!({ "n": n }),
        })
}

/// A record made `days` days ago (its id carries the time), `n` ms apart from its siblings.
fn old_record(now: SystemTime, days: u64, n: u64) -> DeadLetterRecord {
    let mut r = record(n);
    let t = now - Duration::from_secs(days * 86_400) - Duration::from_millis(n);
    r.id = RecordId::lower_bound(t);
    r
}

async fn contract<S: DeadLetterStore>(make: impl AsyncFn(usize) -> S) {
    // push, duplicate, get
    let s = make(100).await;
    let a = record(1);
    assert_eq!(s.push(a.clone()).await.unwrap(), Pushed::Stored);
    assert_eq!(
        s.push(a.clone()).await.unwrap(),
        Pushed::Duplicate,
        "pushes are idempotent on id"
    );
    assert_eq!(s.get(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.get(RecordId::new()).await.unwrap(), None);

    // list newest first, paged by cursor
    let mut ids = vec![a.id];
    for n in 2..=25 {
        let r = record(n);
        ids.push(r.id);
        s.push(r).await.unwrap();
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut q = ListQuery::newest(10);
    loop {
        let page = s.list(q.clone()).await.unwrap();
        assert!(page.unreadable.is_empty());
        seen.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(next) => q.before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages cover every record once, newest first");
    assert!(
        s.list(ListQuery::newest(0))
            .await
            .unwrap()
            .records
            .is_empty(),
        "limit 0 lists nothing"
    );

    // filters: service, reason, since — applied by the store, paged by matching records
    let f = make(100).await;
    let mut tts = Vec::new();
    for n in 0..12u64 {
        let mut r = record(100 + n);
        if n % 3 == 0 {
            r.service = "tts".into();
            r.reason = DeadLetterReason::Permanent;
            tts.push(r.id);
        }
        f.push(r).await.unwrap();
    }
    tts.reverse();
    let mut q = ListQuery::newest(2).service("tts");
    let mut got = Vec::new();
    loop {
        let page = f.list(q.clone()).await.unwrap();
        assert!(page.records.len() <= 2);
        got.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(n) => q.before = Some(n),
            None => break,
        }
    }
    assert_eq!(got, tts, "service filter, paged");
    let by_reason = f
        .list(ListQuery::newest(100).reason(DeadLetterReason::Permanent))
        .await
        .unwrap();
    assert_eq!(by_reason.records.len(), 4);
    let since = f.list(ListQuery::newest(100).since(tts[1])).await.unwrap();
    assert!(since.records.iter().all(|r| r.id >= tts[1]));
    assert_eq!(
        since.records.last().map(|r| r.id),
        Some(tts[1]),
        "since is inclusive"
    );

    // delete, replace
    assert!(s.delete(ids[0]).await.unwrap());
    assert!(!s.delete(ids[0]).await.unwrap());
    let mut b = s.get(ids[1]).await.unwrap().unwrap();
    b.redrive_count = 7;
    assert!(s.replace(b.clone()).await.unwrap());
    assert_eq!(s.get(b.id).await.unwrap().unwrap().redrive_count, 7);
    let mut ghost = record(99);
    ghost.redrive_count = 1;
    assert!(!s.replace(ghost).await.unwrap());

    // requeue by stable id moves exactly that record
    let moved = s.requeue(ids[2]).await.unwrap().unwrap();
    assert_eq!(moved.id, ids[2]);
    assert!(s.requeue(ids[2]).await.unwrap().is_none());
    assert!(s.get(ids[2]).await.unwrap().is_none());
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.records, stats.requeued), (23, 1));
    let taken = s.take_requeued(10).await.unwrap();
    assert_eq!(taken.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[2]]);
    assert_eq!(s.stats().await.unwrap().requeued, 0);

    // retention
    let now = SystemTime::now();
    for n in 0..5 {
        assert_eq!(
            s.push(old_record(now, 40, n)).await.unwrap(),
            Pushed::Stored
        );
    }
    s.push(old_record(now, 10, 9)).await.unwrap();
    assert_eq!(
        s.purge_older_than(Duration::from_secs(30 * 86_400))
            .await
            .unwrap(),
        5
    );
    assert_eq!(s.stats().await.unwrap().records, 24);

    // the cap evicts oldest first and counts
    let small = make(5).await;
    let mut kept = Vec::new();
    for n in 0..8 {
        let r = record(n);
        kept.push(r.id);
        small.push(r).await.unwrap();
    }
    let st = small.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (5, 3, 5));
    let page = small.list(ListQuery::newest(10)).await.unwrap();
    let left: HashSet<_> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(left, kept[3..].iter().copied().collect());

    // concurrent push / requeue / delete from many tasks stay consistent
    let c = std::sync::Arc::new(make(10_000).await);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for n in 0..50 {
                let r = record(t * 1000 + n);
                mine.push(r.id);
                assert_eq!(c.push(r.clone()).await.unwrap(), Pushed::Stored);
                assert_eq!(c.push(r).await.unwrap(), Pushed::Duplicate);
            }
            for (i, id) in mine.iter().enumerate() {
                match i % 3 {
                    0 => assert!(c.delete(*id).await.unwrap()),
                    1 => assert!(c.requeue(*id).await.unwrap().is_some()),
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = c.stats().await.unwrap();
    assert_eq!(
        st.records,
        8 * 16,
        "8 tasks × 16 records neither deleted nor requeued"
    );
    assert_eq!(st.requeued, 8 * 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_contract() {
    contract(async |cap| MemoryStore::new(cap)).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_contract_and_reopen() {
    use rampart_dlq::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract(async |cap| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SqliteStore::open(dir.path().join(format!("s{n}.sqlite")), cap).unwrap()
    })
    .await;
    // Everything the contract left in the first store reads back after a reopen.
    let path = dir.path().join("s0.sqlite");
    let before = SqliteStore::open_existing(&path).unwrap();
    let b = before.list(ListQuery::newest(1000)).await.unwrap();
    let st = before.stats().await.unwrap();
    drop(before);
    let after = SqliteStore::open_existing(&path).unwrap();
    assert_eq!(after.list(ListQuery::newest(1000)).await.unwrap(), b);
    assert_eq!(after.stats().await.unwrap(), st);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_handles_on_one_file_see_each_others_changes_at_once() {
    use rampart_dlq::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    // Two handles, two write connections: what two processes on one file have.
    let app = SqliteStore::open(&path, 100).unwrap();
    let cli = SqliteStore::open_existing(&path).unwrap();

    let a = record(1);
    app.push(a.clone()).await.unwrap();
    assert_eq!(cli.get(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(cli.push(a.clone()).await.unwrap(), Pushed::Duplicate);
    assert!(cli.delete(a.id).await.unwrap());
    assert_eq!(app.get(a.id).await.unwrap(), None, "a CLI delete is seen");
    assert_eq!(
        app.push(a.clone()).await.unwrap(),
        Pushed::Stored,
        "nothing resurrects it either"
    );
    assert!(app.delete(a.id).await.unwrap());

    let b = record(2);
    cli.push(b.clone()).await.unwrap();
    let mut b2 = b.clone();
    b2.redrive_count = 3;
    assert!(app.replace(b2.clone()).await.unwrap());
    assert_eq!(cli.get(b.id).await.unwrap(), Some(b2));
    assert!(cli.requeue(b.id).await.unwrap().is_some());
    assert_eq!(
        app.stats().await.unwrap().requeued,
        1,
        "a CLI requeue is seen"
    );
    assert_eq!(
        app.push(b.clone()).await.unwrap(),
        Pushed::Duplicate,
        "a requeued record is not stored twice"
    );
    let taken = app.take_requeued(10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(cli.take_requeued(10).await.unwrap().is_empty());

    let now = SystemTime::now();
    app.push(old_record(now, 40, 1)).await.unwrap();
    app.push(record(3)).await.unwrap();
    assert_eq!(
        cli.purge_older_than(Duration::from_secs(30 * 86_400))
            .await
            .unwrap(),
        1
    );
    let page = app.list(ListQuery::newest(10)).await.unwrap();
    assert_eq!(page.records.len(), 1, "a CLI purge is seen");
    assert_eq!(app.stats().await.unwrap(), cli.stats().await.unwrap());
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_and_evictions_hold_across_two_sqlite_handles() {
    use rampart_dlq::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capped.sqlite");
    let a = SqliteStore::open(&path, 5).unwrap();
    let b = SqliteStore::open_existing(&path).unwrap();
    let mut ids = Vec::new();
    for n in 0..8 {
        let r = record(n);
        ids.push(r.id);
        let via = if n % 2 == 0 { &a } else { &b };
        via.push(r).await.unwrap();
    }
    for s in [&a, &b] {
        let st = s.stats().await.unwrap();
        assert_eq!((st.records, st.evictions, st.max_size), (5, 3, 5));
    }
    let left: HashSet<_> = b
        .list(ListQuery::newest(10))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        left,
        ids[3..].iter().copied().collect(),
        "oldest evicted first"
    );
    // A later `open` with a smaller cap applies to every handle at once.
    let c = SqliteStore::open(&path, 2).unwrap();
    let st = a.stats().await.unwrap();
    assert_eq!((st.records, st.evictions, st.max_size), (2, 6, 2));
    drop(c);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_handles_never_take_the_same_requeued_record() {
    use rampart_dlq::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let a = SqliteStore::open(&path, 10_000).unwrap();
    let b = SqliteStore::open_existing(&path).unwrap();
    let mut ids = HashSet::new();
    for n in 0..400 {
        let r = record(n);
        ids.insert(r.id);
        a.push(r.clone()).await.unwrap();
        a.requeue(r.id).await.unwrap().unwrap();
    }
    let taken = support::take_all_concurrently(&[a.clone(), b.clone()], 8).await;
    assert_eq!(taken.len(), 400, "each record taken exactly once");
    assert_eq!(taken.into_iter().collect::<HashSet<_>>(), ids);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_contract() {
    let Some(server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let url = server.url();
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract(async |cap| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rampart_dlq::RedisStore::connect(&url, &format!("test{n}"), cap)
            .await
            .unwrap()
    })
    .await;
}

/// The contract through redis-rs's cluster client, on a private 3-master cluster: each
/// store's keys share one hash tag (one slot, one node), so its scripts run there.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_contract() {
    let Some(cluster) = redis_cluster::RedisCluster::start(3) else {
        return support::skip("redis-server or redis-cli is not installed");
    };
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract(async |cap| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rampart_dlq::RedisStore::connect_cluster(&nodes, &format!("test{n}"), cap)
            .await
            .unwrap()
    })
    .await;

    // An empty prefix gets the default tag, not `{}`: all its keys are in one slot, and the
    // store works.
    let store = rampart_dlq::RedisStore::connect_cluster(&nodes, "", 10)
        .await
        .unwrap();
    let keys = [
        store.records_key(),
        store.index_key(),
        store.pending_key(),
        store.evictions_key(),
        store.retry_key(),
        store.quarantine_key(),
    ];
    let slots: HashSet<u16> = keys.iter().map(|k| cluster.slot(k)).collect();
    assert_eq!(slots.len(), 1, "{keys:?} share one slot");
    assert_ne!(
        cluster.slot("{}:records"),
        cluster.slot("{}:index"),
        "the empty tag would have split them"
    );
    let r = record(1);
    assert_eq!(store.push(r.clone()).await.unwrap(), Pushed::Stored);
    assert!(store.requeue(r.id).await.unwrap().is_some());
    assert_eq!(store.take_requeued(5).await.unwrap(), vec![r]);
}

#[tokio::test]
async fn fallback_lists_journaled_records_with_the_primary_ones() {
    let primary = MemoryStore::new(100);
    let journal = MemoryStore::new(100);
    let store = rampart_dlq::Fallback::new(primary.clone(), journal.clone());
    let mut ids = Vec::new();
    for n in 0..9 {
        let r = record(n);
        ids.push(r.id);
        // Every third record is still waiting in the journal (the primary was down).
        if n % 3 == 0 {
            journal.push(r).await.unwrap();
        } else {
            primary.push(r).await.unwrap();
        }
    }
    // A record drained to the primary but not yet deleted from the journal shows once.
    primary
        .push(journal.get(ids[3]).await.unwrap().unwrap())
        .await
        .unwrap();
    ids.reverse();
    let mut seen = Vec::new();
    let mut q = ListQuery::newest(4);
    loop {
        let page = store.list(q.clone()).await.unwrap();
        seen.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(n) => q.before = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids, "merged, newest first, each once, across pages");
    assert_eq!(
        store.stats().await.unwrap().records,
        10,
        "stats counts both stores"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_contract() {
    let url = support::postgres_url();
    let Ok((admin, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        return support::skip(&format!(
            "PostgreSQL is not reachable at DATABASE_URL or {url}"
        ));
    };
    tokio::spawn(connection);
    // A schema of its own per run, dropped at the end.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("rampart_contract_{}_{nanos}", std::process::id());
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract(async |cap| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rampart_dlq::PostgresStore::connect(&url, &format!("{schema}.t{n}"), cap)
            .await
            .unwrap()
    })
    .await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
