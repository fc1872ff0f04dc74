//! Jobs on a real apalis-postgres backend (`DATABASE_URL`, or 127.0.0.1:5432 database
//! `test`). apalis' migrations go into a database of their own, `rampart_jobs_test`, so that
//! they never meet another migrator's history. Countdowns are read from the rows' `run_at`
//! and fast-forwarded by moving it (backend time control).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use apalis_core::{
    backend::{ext::with_codec::WithCodec, ext::BackendExt, TaskSink},
    worker::builder::WorkerBuilder,
};
use apalis_postgres::{Config, PgPool, PostgresStorage};
use rampart_dlq::SqliteStore;
use rampart_jobs::{BackendScheduler, Job, JobCodec, JobLayer, JobPolicy};
use support::{all_records, check_settled, classify, twenty_percent, Act, Recording, Upstream};
use tower_layer::Layer;

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pool() -> Option<PgPool> {
    let admin = match PgPool::connect(&url()).await {
        Ok(p) => p,
        Err(e) => {
            assert!(
                !std::env::var("RAMPART_REQUIRE_SERVICES").is_ok_and(|v| v == "1"),
                "PostgreSQL required: {e}"
            );
            eprintln!("skipped: no PostgreSQL at {} ({e})", url());
            return None;
        }
    };
    let exists: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = 'rampart_jobs_test'")
            .fetch_optional(&admin)
            .await
            .unwrap();
    if exists.is_none() {
        // Two test binaries may race here; the loser's "already exists" is fine.
        let _ = sqlx::query("CREATE DATABASE rampart_jobs_test")
            .execute(&admin)
            .await;
    }
    let mut own = url();
    let cut = own.rfind('/').unwrap();
    own.truncate(cut);
    own.push_str("/rampart_jobs_test");
    let pool = PgPool::connect(&own).await.unwrap();
    PostgresStorage::setup(&pool).await.unwrap();
    Some(pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_settle_exactly_once_on_postgres() {
    const JOBS: u64 = 300;
    let Some(pool) = pool().await else { return };
    let q = format!("rampart-jobs-test-{}", uuid::Uuid::now_v7());
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default().queue(&q).batch_size(25);
    let backend = WithCodec::new(
        PostgresStorage::<Job>::new(&pool).with_config(config),
        JobCodec,
    );
    let jobs: Vec<Job> = (0..JOBS).map(|n| Job::new("tts", &n).unwrap()).collect();
    backend.clone().push_bulk(jobs).await.unwrap();

    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    let up = Upstream::new(twenty_percent);
    let scheduler = Recording::new(BackendScheduler::new(backend.clone()));
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        scheduler.clone(),
    );
    let worker = WorkerBuilder::new(format!("{q}-w1"))
        .backend(backend.poll_with_interval(Duration::from_millis(20)))
        .build(layer.typed::<u64>().layer(up.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stop_rx.await;
        Ok::<(), std::io::Error>(())
    }));

    let mut checked = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting: Vec<(Vec<u8>, f64)> = sqlx::query_as(
            "SELECT job, EXTRACT(EPOCH FROM run_at - now())::float8 FROM apalis.jobs \
             WHERE job_type = $1 AND status = 'Pending' AND run_at > now()",
        )
        .bind(&q)
        .fetch_all(&pool)
        .await
        .unwrap();
        for (bytes, due_in) in &waiting {
            let job: Job = serde_json::from_slice(bytes).unwrap();
            let n = job.args.as_u64().unwrap();
            let retry = job.attempt - 1;
            let nominal = match twenty_percent(n, retry) {
                Act::Throttled(s) => s as f64,
                _ => 60.0 * 2f64.powi(i32::try_from(retry).unwrap()),
            };
            assert!(
                *due_in >= nominal * 0.8 - 2.0 && *due_in <= nominal * 1.2 + 1.0,
                "job {n} attempt {}: due in {due_in}s, nominal {nominal}s",
                job.attempt
            );
            checked += 1;
        }
        sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE job_type = $1 AND status = 'Pending' AND run_at > now()")
            .bind(&q)
            .execute(&pool)
            .await
            .unwrap();
        let dead = all_records(&store).await.len();
        if up.done() + dead == usize::try_from(JOBS).unwrap() && waiting.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {} done, {dead} dead",
            up.done()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    let records = all_records(&store).await;
    check_settled(&up, &records, &scheduler.seen(), JOBS, twenty_percent).await;
    assert!(checked > 20, "only {checked} waiting rows checked");
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(&q)
        .execute(&pool)
        .await
        .unwrap();
}
