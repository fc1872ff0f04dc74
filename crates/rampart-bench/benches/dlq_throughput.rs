//! Dead-letter throughput (records/s), side by side with the floors, all in one run:
//!
//! - SQLite: the `SqliteStore` (group commit, 64 concurrent writers) against raw rusqlite
//!   batched inserts of the same bytes (same pragmas: WAL, `synchronous = FULL`; 64 rows per
//!   `BEGIN IMMEDIATE` transaction, one writer, no cap, no idempotency check) and against raw
//!   `append` + `fsync` of the same bytes (one fsync per record, and one per batch of 64);
//! - Redis: raw redis-rs pipelined `LPUSH` of the same bytes against the `RedisStore`'s
//!   scripted, idempotent, capped push.
//!
//! Run with `cargo bench -p rampart-bench --bench dlq_throughput` (Redis on
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

/// Runs `task(connection, key, bytes, records)` on `CONCURRENCY` tasks sharing `con`, `n`
/// records in all; returns the elapsed time.
async fn raw_writers<F, Fut>(
    con: &redis::aio::MultiplexedConnection,
    key: &str,
    bytes: &Arc<Vec<u8>>,
    n: u64,
    task: F,
) -> Duration
where
    F: Fn(redis::aio::MultiplexedConnection, String, Arc<Vec<u8>>, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let per = n.div_ceil(CONCURRENCY as u64);
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(task(con.clone(), key.to_owned(), bytes.clone(), per)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Raw pipelined `LPUSH` of `bytes` from `CONCURRENCY` tasks sharing `con`, 64 commands per
/// round trip per task; `n` records in all. Returns the elapsed time.
async fn raw_lpush(
    con: &redis::aio::MultiplexedConnection,
    key: &str,
    bytes: &Arc<Vec<u8>>,
    n: u64,
) -> Duration {
    raw_writers(con, key, bytes, n, |mut con, key, bytes, per| async move {
        let mut left = per;
        while left > 0 {
            let k = left.min(64);
            let mut p = redis::pipe();
            for _ in 0..k {
                p.cmd("LPUSH").arg(&key).arg(bytes.as_slice()).ignore();
            }
            let _: () = p.query_async(&mut con).await.unwrap();
            left -= k;
        }
    })
    .await
}

/// Raw `LPUSH` of `bytes` from `CONCURRENCY` tasks sharing `con`, each task awaiting its own
/// command before sending the next (one record in flight per writer, as a store's callers
/// push; redis-rs's multiplexed connection pipelines the concurrent commands); `n` records in
/// all. Returns the elapsed time.
async fn raw_lpush_each(
    con: &redis::aio::MultiplexedConnection,
    key: &str,
    bytes: &Arc<Vec<u8>>,
    n: u64,
) -> Duration {
    raw_writers(con, key, bytes, n, |mut con, key, bytes, per| async move {
        for _ in 0..per {
            let _: () = redis::cmd("LPUSH")
                .arg(&key)
                .arg(bytes.as_slice())
                .query_async(&mut con)
                .await
                .unwrap();
        }
    })
    .await
}

/// The batched `RedisStore` push against the raw floor, in the same run: 64 writers each, the
/// same record bytes. Besides criterion's rows it prints an interleaved head-to-head (raw and
/// store alternating, 7 rounds of 50,000 records each, medians), which a busy shared machine
/// skews least.
/// This process's CPU time (user + system), from `/proc/self/stat` (Linux; `None` elsewhere).
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The Redis server's CPU time (user + system), from `INFO cpu`.
async fn server_cpu(con: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(con).await.ok()?;
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

/// The server's count of script calls (`EVALSHA` and `EVAL`), from `INFO commandstats`.
async fn script_calls(con: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .ok()?;
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// Runs `f`, returning its records/s, the client's and server's CPU µs per record, and the
/// records per script call (all the server's script calls meanwhile, so other clients of a
/// shared server lower it).
fn measured(
    rt: &tokio::runtime::Runtime,
    con: &mut redis::aio::MultiplexedConnection,
    n: u64,
    f: impl std::future::Future<Output = Duration>,
) -> (f64, f64, f64, f64) {
    let (c0, s0, k0) = (
        process_cpu(),
        rt.block_on(server_cpu(con)),
        rt.block_on(script_calls(con)),
    );
    let t = rt.block_on(f);
    let (c1, s1, k1) = (
        process_cpu(),
        rt.block_on(server_cpu(con)),
        rt.block_on(script_calls(con)),
    );
    let per = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / n as f64 * 1e6,
        _ => f64::NAN,
    };
    let batch = match (k0, k1) {
        (Some(a), Some(b)) if b > a => n as f64 / (b - a),
        _ => f64::NAN,
    };
    (n as f64 / t.as_secs_f64(), per(c0, c1), per(s0, s1), batch)
}

/// Pushes `records` (built before the clock starts) from `CONCURRENCY` tasks; returns the
/// elapsed time.
async fn push_built<S: DeadLetterStore + Clone>(
    store: &S,
    records: Vec<DeadLetterRecord>,
) -> Duration {
    let mut chunks: Vec<Vec<DeadLetterRecord>> = (0..CONCURRENCY).map(|_| Vec::new()).collect();
    for (i, r) in records.into_iter().enumerate() {
        chunks[i % CONCURRENCY].push(r);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for r in chunk {
                store.push(r).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn redis_batched(c: &mut Criterion) {
    const ROUND: u64 = 50_000;
    const ROUNDS: usize = 7;
    const RAW: &str = "rampart_bench_batched_raw";
    let url =
        std::env::var("RAMPART_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let rt = rt();
    let Ok(store) = rt.block_on(RedisStore::connect(
        &url,
        "rampart_bench_batched",
        100_000_000,
    )) else {
        eprintln!("SKIPPED: no Redis at {url}");
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let bytes = Arc::new(record(0).to_json().unwrap());
    let clear = |con: &mut redis::aio::MultiplexedConnection| {
        let _: () = rt
            .block_on(
                redis::cmd("UNLINK")
                    .arg(RAW)
                    .arg(store.records_key())
                    .arg(store.index_key())
                    .arg(store.pending_key())
                    .query_async(con),
            )
            .unwrap();
    };

    let (mut raw, mut each, mut batched, mut built) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut probe = con.clone();
    clear(&mut con);
    for _ in 0..ROUNDS {
        raw.push(measured(
            &rt,
            &mut probe,
            ROUND,
            raw_lpush(&con, RAW, &bytes, ROUND),
        ));
        each.push(measured(
            &rt,
            &mut probe,
            ROUND,
            raw_lpush_each(&con, RAW, &bytes, ROUND),
        ));
        batched.push(measured(
            &rt,
            &mut probe,
            ROUND,
            push_concurrently(&store, ROUND),
        ));
        clear(&mut con);
        let records: Vec<DeadLetterRecord> = (0..ROUND).map(record).collect();
        built.push(measured(
            &rt,
            &mut probe,
            ROUND,
            push_built(&store, records),
        ));
        clear(&mut con);
    }
    // Medians of each column.
    type Row = (f64, f64, f64, f64);
    let median = |v: &[Row], pick: fn(&Row) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(pick).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let row = |v: &[Row]| {
        (
            median(v, |x| x.0),
            median(v, |x| x.1),
            median(v, |x| x.2),
            median(v, |x| x.3),
        )
    };
    let (r, e, b, p) = (row(&raw), row(&each), row(&batched), row(&built));
    eprintln!(
        "dlq_redis_batched head-to-head, {CONCURRENCY} writers, {} B records, medians of {ROUNDS} \
         interleaved rounds of {ROUND}:\n  raw pipelined LPUSH:       {:>8.0}/s  client {:.1} µs/record, \
         server {:.1} µs/record\n  RedisStore batched push:   {:>8.0}/s  client {:.1} µs/record, \
         server {:.1} µs/record, {:.1} records/script call\n  ratio {:.2}\n  \
         RedisStore push, records built before the clock: {:>8.0}/s  client {:.1} µs/record, \
         server {:.1} µs/record, {:.1} records/script call (ratio {:.2})\n  \
         raw LPUSH, each writer awaiting its own: {:>8.0}/s  client {:.1} µs/record, server {:.1} \
         µs/record; store push ÷ this: {:.2} (built before: {:.2})",
        bytes.len(),
        r.0,
        r.1,
        r.2,
        b.0,
        b.1,
        b.2,
        b.3,
        b.0 / r.0,
        p.0,
        p.1,
        p.2,
        p.3,
        p.0 / r.0,
        e.0,
        e.1,
        e.2,
        b.0 / e.0,
        p.0 / e.0
    );

    let mut g = c.benchmark_group("dlq_redis_batched");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    // Every sample starts from empty keys (cleared before its clock starts), so the store
    // never grows towards its cap over the run.
    let mut fresh = con.clone();
    g.bench_function("raw_lpush_pipelined_64_writers", |b| {
        b.iter_custom(|iters| {
            clear(&mut fresh);
            rt.block_on(raw_lpush(&con, RAW, &bytes, iters))
        });
    });
    g.bench_function("raw_lpush_each_64_writers", |b| {
        b.iter_custom(|iters| {
            clear(&mut fresh);
            rt.block_on(raw_lpush_each(&con, RAW, &bytes, iters))
        });
    });
    g.bench_function("redis_store_batched_64_writers", |b| {
        b.iter_custom(|iters| {
            clear(&mut fresh);
            rt.block_on(push_concurrently(&store, iters))
        });
    });
    g.finish();
    clear(&mut con);
}

criterion_group!(benches, sqlite, redis_batched, postgres);
criterion_main!(benches);

/// `PostgresStore` (group commit: one multi-row `INSERT … ON CONFLICT DO NOTHING` + cap per
/// transaction, acknowledged after `COMMIT`) beside raw multi-row `INSERT`s of the same bytes
/// into a bare table (64 rows per statement, autocommit, 8 connections), in the same run.
/// Needs the `postgres` feature (on by default) and a server at `DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`).
fn postgres(c: &mut Criterion) {
    #[cfg(not(feature = "postgres"))]
    {
        let _ = c;
        eprintln!("SKIPPED: the postgres rows need the postgres feature (on by default)");
    }
    #[cfg(feature = "postgres")]
    {
        use rampart::dlq::PostgresStore;
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let rt = rt();
        let schema = format!("rampart_bench_{}", std::process::id());
        let Ok(store) = rt.block_on(PostgresStore::connect(
            &url,
            &format!("{schema}.dlq"),
            10_000,
        )) else {
            eprintln!("SKIPPED: no PostgreSQL at {url}");
            return;
        };
        let conns: Vec<Arc<tokio_postgres::Client>> = (0..8)
            .map(|_| {
                let (client, conn) = rt
                    .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
                    .unwrap();
                rt.spawn(conn);
                Arc::new(client)
            })
            .collect();
        rt.block_on(conns[0].batch_execute(&format!(
            "CREATE TABLE {schema}.raw (seq bigserial PRIMARY KEY, record json NOT NULL)"
        )))
        .unwrap();
        let json = Arc::new(String::from_utf8(record(0).to_json().unwrap()).unwrap());
        let insert = format!("INSERT INTO {schema}.raw (record) SELECT unnest($1::text[])::json");
        let mut g = c.benchmark_group("dlq_postgres");
        g.throughput(Throughput::Elements(1));
        g.sample_size(10).measurement_time(Duration::from_secs(5));

        g.bench_function("raw_batched_insert_64", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let per = iters.div_ceil(CONCURRENCY as u64);
                    let mut tasks = Vec::new();
                    for t in 0..CONCURRENCY {
                        let client = conns[t % conns.len()].clone();
                        let json = json.clone();
                        let insert = insert.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut left = per;
                            while left > 0 {
                                let n = left.min(64);
                                let rows: Vec<&str> = (0..n).map(|_| json.as_str()).collect();
                                client.execute(&insert, &[&rows]).await.unwrap();
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
        g.bench_function("postgres_store_64_tasks", |b| {
            b.iter_custom(|iters| rt.block_on(push_concurrently(&store, iters)));
        });
        g.finish();
        rt.block_on(conns[0].batch_execute(&format!("DROP SCHEMA {schema} CASCADE")))
            .unwrap();
    }
}
