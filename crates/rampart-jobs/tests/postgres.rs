//! Jobs on a real apalis-postgres backend (`DATABASE_URL`, or 127.0.0.1:5432; apalis'
//! tables live in a database of their own, `rampart_jobs_test`). Countdowns are read from
//! the rows' `run_at` and fast-forwarded by moving it (backend time control).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use apalis_core::{
    backend::{ext::BackendExt, TaskSink},
    worker::builder::WorkerBuilder,
};
use rampart_dlq::SqliteStore;
use rampart_jobs::{BackendScheduler, Job, JobLayer, JobPolicy};
use support::pg_backend::{backend, cleanup, pool, Control};
use support::{
    all_records, check_settled, classify, settle, spawn, twenty_percent, Recording, Upstream,
};
use tower_layer::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_settle_exactly_once_on_postgres() {
    const JOBS: u64 = 300;
    let Some(pool) = pool().await else { return };
    let q = format!("rampart-jobs-test-{}", uuid::Uuid::now_v7());
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(&pool, &q);
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
        .backend(
            backend.poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
        )
        .build(layer.typed::<u64>().layer(up.clone()));
    let running = spawn(|stop| worker.run_until(stop));

    let mut ctl = Control {
        pool: pool.clone(),
        queue: q.clone(),
    };
    let checked = settle(&mut ctl, &up, &store, JOBS, &scheduler).await;
    running.stop().await;
    let records = all_records(&store).await;
    let seen = scheduler.seen();
    check_settled(&up, &records, &seen, JOBS, twenty_percent).await;
    assert_eq!(
        checked,
        support::distinct_retries(&seen),
        "retries checked in the backend vs scheduled"
    );
    assert!(seen.len() > 40, "only {} retries scheduled", seen.len());
    cleanup(&pool, &q).await;
}
