//! Dead-letter throughput (records/s), side by side with the floors, all in one run:
//!
//! - SQLite: the `SqliteStore` (group commit, 64 concurrent writers) against raw rusqlite
//!   batched inserts of the same bytes (same pragmas: WAL, `synchronous = FULL`; 64 rows per
//!   `BEGIN IMMEDIATE` transaction, one writer, no cap, no idempotency check) and against raw
//!   `append` + `fsync` of the same bytes (one fsync per record, and one per batch of 64);
//! - Redis: raw redis-rs pipelined `LPUSH` of the same bytes against the `RedisStore`'s
//!   scripted, idempotent, capped push.
//!
//! Run with `cargo bench --features redis,sqlite --bench dlq_throughput` (Redis on
//! 127.0.0.1:6379 for the Redis rows; override with `RAMPART_BENCH_REDIS`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rampart::dlq::{
    DeadLetterReason, DeadLetterRecord, DeadLetterStore, RecordId, RedisStore, SqliteStore,
};

const CONCURRENCY: usize = 64;

fn record(n: u64) -> DeadLetterRecord {
    DeadLetterRecord::new("bench", DeadLetterReason::RetriesExhausted)
        .error(format!("503 model is overloaded (call {n})"))
        .attempts(4, 4)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `n` records from `CONCURRENCY` tasks; returns the elapsed time.
async fn push_concurrently<S: DeadLetterStore + Clone>(store: &S, n: u64) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(CONCURRENCY as u64);
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY as u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                store.push(record(t * per + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn sqlite(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let bytes = record(0).to_json().unwrap();
    let mut g = c.benchmark_group("dlq_sqlite");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("raw_append_fsync_each", |b| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("raw1"))
            .unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f.write_all(&bytes).unwrap();
                f.sync_data().unwrap();
            }
            start.elapsed()
        });
    });
    g.bench_function("raw_append_fsync_batch64", |b| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("raw64"))
            .unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                f.write_all(&bytes).unwrap();
                if i % 64 == 63 {
                    f.sync_data().unwrap();
                }
            }
            f.sync_data().unwrap();
            start.elapsed()
        });
    });
    let conn = rusqlite::Connection::open(dir.path().join("raw.sqlite")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE records (id BLOB PRIMARY KEY NOT NULL, service TEXT NOT NULL,
                               reason TEXT NOT NULL, body BLOB NOT NULL)",
    )
    .unwrap();
    g.bench_function("raw_rusqlite_batch64", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(64);
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                let mut insert = conn
                    .prepare_cached(
                        "INSERT INTO records (id, service, reason, body) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .unwrap();
                for _ in 0..n {
                    let id = RecordId::new();
                    insert
                        .execute(rusqlite::params![
                            &id.as_bytes()[..],
                            "bench",
                            "retries_exhausted",
                            bytes.as_slice()
                        ])
                        .unwrap();
                }
                drop(insert);
                conn.execute_batch("COMMIT").unwrap();
                left -= n;
            }
            start.elapsed()
        });
    });
    let store = SqliteStore::open(dir.path().join("store.sqlite"), 100_000_000).unwrap();
    g.bench_function("sqlite_store_64_tasks", |b| {
        b.iter_custom(|iters| rt.block_on(push_concurrently(&store, iters)));
    });
    g.finish();
}

fn redis(c: &mut Criterion) {
    let url =
        std::env::var("RAMPART_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let rt = rt();
    let Ok(store) = rt.block_on(RedisStore::connect(&url, "rampart_bench", 100_000_000)) else {
        eprintln!("SKIPPED: no Redis at {url}");
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let con = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let bytes = Arc::new(record(0).to_json().unwrap());
    let mut g = c.benchmark_group("dlq_redis");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));

    g.bench_function("raw_lpush_pipelined_64", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let per = iters.div_ceil(CONCURRENCY as u64);
                let mut tasks = Vec::new();
                for _ in 0..CONCURRENCY {
                    let mut con = con.clone();
                    let bytes = bytes.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut left = per;
                        while left > 0 {
                            let n = left.min(64);
                            let mut p = redis::pipe();
                            for _ in 0..n {
                                p.cmd("LPUSH")
                                    .arg("rampart_bench_raw")
                                    .arg(bytes.as_slice())
                                    .ignore();
                            }
                            let _: () = p.query_async(&mut con).await.unwrap();
                            left -= n;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        });
    });
    g.bench_function("redis_store_64_tasks", |b| {
        b.iter_custom(|iters| rt.block_on(push_concurrently(&store, iters)));
    });
    g.finish();
    let mut con = con;
    let _: Result<(), _> = rt.block_on(
        redis::cmd("DEL")
            .arg("rampart_bench_raw")
            .arg(store.records_key())
            .arg(store.index_key())
            .query_async(&mut con),
    );
}

criterion_group!(benches, sqlite, redis);
criterion_main!(benches);
