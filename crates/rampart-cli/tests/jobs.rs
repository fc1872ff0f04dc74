//! `rampart dlq redrive --to-queue` / `requeue --to-queue`: dead letters written by a
//! `rampart-jobs` worker go back onto its apalis queue, the worker consumes them, and a
//! record comes back only if the job dies again — with its redrive count bumped.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cli_support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use cli_support::rampart_ok;
use rampart_core::{Backoff, Outcome};
use rampart_dlq::{DeadLetterStore, ListQuery, SqliteStore};
use rampart_jobs::apalis_core::{
    backend::{ext::with_codec::WithCodec, ext::BackendExt},
    worker::builder::WorkerBuilder,
};
use rampart_jobs::apalis_sqlite::{Config, SqlitePool, SqliteStorage};
use rampart_jobs::{BackendScheduler, Job, JobCodec, JobLayer, JobPolicy, JobQueue, Refusal};

#[derive(Debug)]
struct Nope;
impl std::fmt::Display for Nope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no")
    }
}
impl Refusal for Nope {
    fn circuit_open(&self) -> Option<&rampart_core::CircuitOpen> {
        None
    }
}

/// Job `n` fails for good on its first `fails[n]` calls, then succeeds.
#[derive(Clone)]
struct Handler {
    calls: Arc<Mutex<HashMap<u64, u32>>>,
    done: Arc<Mutex<Vec<u64>>>,
    fails: Arc<HashMap<u64, u32>>,
}

impl tower::Service<u64> for Handler {
    type Response = ();
    type Error = Nope;
    type Future = std::future::Ready<Result<(), Nope>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Nope>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, n: u64) -> Self::Future {
        let mut calls = self.calls.lock().unwrap();
        let c = calls.entry(n).or_insert(0);
        *c += 1;
        if *c <= self.fails.get(&n).copied().unwrap_or(0) {
            std::future::ready(Err(Nope))
        } else {
            self.done.lock().unwrap().push(n);
            std::future::ready(Ok(()))
        }
    }
}

async fn run_worker_until(
    pool: &SqlitePool,
    store: &SqliteStore,
    h: &Handler,
    settled: impl Fn(usize, usize) -> bool,
) {
    let backend = WithCodec::new(
        SqliteStorage::<Job>::new(pool).with_config(Config::default().queue("tts")),
        JobCodec,
    );
    let classify = |r: Result<&(), &Nope>| {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Permanent
        }
    };
    let policy = JobPolicy::new("tts", Backoff::builder().max_retries(3).build().unwrap());
    let layer = JobLayer::new(
        policy,
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    )
    .typed::<u64>();
    let worker = WorkerBuilder::new(format!("cli-test-{}", uuid_like()))
        .backend(backend.poll_with_interval(Duration::from_millis(20)))
        .build(tower::Layer::layer(&layer, h.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = rx.await;
        Ok::<(), std::io::Error>(())
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dead = store
            .list(ListQuery::newest(100))
            .await
            .unwrap()
            .records
            .len();
        let done = h.done.lock().unwrap().len();
        if settled(done, dead) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "done {done}, dead {dead}"
        );
    }
    tx.send(()).unwrap();
    running.await.unwrap().unwrap();
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_to_queue_feeds_the_worker_and_keeps_the_redrive_count() {
    let dir = tempfile::tempdir().unwrap();
    let jobs_path = dir.path().join("jobs.db");
    let jobs_url = format!("sqlite://{}", jobs_path.display());
    let dlq_path = dir.path().join("dlq.db");
    let store_url = format!("sqlite://{}", dlq_path.display());
    let store = SqliteStore::open_default(&dlq_path).unwrap();

    let mut q = JobQueue::open(&jobs_url, "tts").await.unwrap();
    for n in 0..3u64 {
        q.push(Job::new("tts", &n).unwrap(), None).await.unwrap();
    }
    let pool = SqlitePool::connect(&format!("sqlite://{}", jobs_path.display()))
        .await
        .unwrap();
    // Job 2 fails twice for good: it dies again after its first redrive.
    let h = Handler {
        calls: Arc::default(),
        done: Arc::default(),
        fails: Arc::new(HashMap::from([(0, 1), (1, 1), (2, 2)])),
    };
    run_worker_until(&pool, &store, &h, |done, dead| done == 0 && dead == 3).await;
    let first: Vec<_> = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert!(first.iter().all(|r| r.redrive_count == 0));

    // Requeue one by id, redrive the rest.
    let one = first[0].id.to_string();
    let out = rampart_ok(
        &store_url,
        &[
            "dlq",
            "requeue",
            &one,
            "--to-queue",
            "tts",
            "--jobs",
            &jobs_url,
        ],
    );
    assert!(out.contains("queued as jobs") && out.contains('1'), "{out}");
    let out = rampart_ok(
        &store_url,
        &["dlq", "redrive", "--to-queue", "tts", "--jobs", &jobs_url],
    );
    assert!(out.contains("queued as jobs"), "{out}");
    assert!(
        store
            .list(ListQuery::newest(10))
            .await
            .unwrap()
            .records
            .is_empty(),
        "records left once queued"
    );

    run_worker_until(&pool, &store, &h, |done, dead| done == 2 && dead == 1).await;
    let again = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert_eq!(again.len(), 1);
    let r = &again[0];
    assert_eq!(r.request.payload["args"], serde_json::json!(2));
    assert_eq!(r.redrive_count, 1, "the redrive count is kept");
    let was = first
        .iter()
        .find(|f| f.request.payload["args"] == serde_json::json!(2))
        .unwrap();
    assert_eq!(r.id, was.id, "the same job names the same record");
    let mut done = h.done.lock().unwrap().clone();
    done.sort_unstable();
    assert_eq!(done, vec![0, 1]);
}
