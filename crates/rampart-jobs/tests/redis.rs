//! Jobs on a real apalis-redis backend (127.0.0.1:6379, or `RAMPART_REDIS_URL`). Each test
//! uses its own queue and removes its keys. Countdowns are read from the scheduled set's
//! scores, then fast-forwarded by rewriting those scores (backend time control).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::{
    backend::{ext::with_codec::WithCodec, ext::BackendExt, TaskSink},
    worker::builder::WorkerBuilder,
};
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use rampart_dlq::SqliteStore;
use rampart_jobs::{BackendScheduler, Job, JobCodec, JobLayer, JobPolicy};
use redis::AsyncCommands;
use support::{all_records, check_settled, classify, twenty_percent, Act, Recording, Upstream};
use tower_layer::Layer;

type Backend = WithCodec<RedisStorage<Job, ConnectionManager>, JobCodec>;

fn url() -> String {
    std::env::var("RAMPART_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

async fn connect() -> Option<ConnectionManager> {
    match apalis_redis::connect(url()).await {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(
                !std::env::var("RAMPART_REQUIRE_SERVICES").is_ok_and(|v| v == "1"),
                "Redis required: {e}"
            );
            eprintln!("skipped: no Redis at {} ({e})", url());
            None
        }
    }
}

fn queue() -> String {
    format!("rampart-jobs-test-{}", uuid::Uuid::now_v7())
}

fn backend(conn: ConnectionManager, queue: &str, heartbeat: Duration) -> Backend {
    let config = Config::default()
        .queue(queue)
        .heartbeat_interval(heartbeat)
        .batch_size(25);
    WithCodec::new(RedisStorage::new(conn).with_config(config), JobCodec)
}

async fn cleanup(conn: &mut ConnectionManager, queue: &str) {
    let keys: Vec<String> = conn.keys(format!("{queue}*")).await.unwrap();
    for k in keys {
        let _: () = conn.del(k).await.unwrap();
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_settle_exactly_once_on_redis() {
    const JOBS: u64 = 1000;
    let Some(mut conn) = connect().await else {
        return;
    };
    let q = queue();
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(conn.clone(), &q, Duration::from_secs(30));
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

    let scheduled = format!("{q}:scheduled");
    let data = format!("{q}:data");
    let mut checked = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting: Vec<(String, f64)> = conn.zrange_withscores(&scheduled, 0, -1).await.unwrap();
        let now = now_secs();
        // Only rows still in the future: those already moved to "now" wait for promotion.
        let waiting: Vec<(String, f64)> = waiting.into_iter().filter(|(_, s)| *s > now).collect();
        for (id, score) in &waiting {
            let bytes: Vec<u8> = conn.hget(&data, id).await.unwrap();
            let job: Job = serde_json::from_slice(&bytes).unwrap();
            let n = job.args.as_u64().unwrap();
            let retry = job.attempt - 1;
            let nominal = match twenty_percent(n, retry) {
                Act::Throttled(s) => s as f64,
                _ => 60.0 * 2f64.powi(i32::try_from(retry).unwrap()),
            };
            let due_in = score - now;
            assert!(
                due_in >= nominal * 0.8 - 2.0 && due_in <= nominal * 1.2 + 1.0,
                "job {n} attempt {}: due in {due_in}s, nominal {nominal}s",
                job.attempt
            );
            checked += 1;
            // Backend time control: due now.
            let _: () = conn.zadd(&scheduled, id, now.floor() - 1.0).await.unwrap();
        }
        let dead = all_records(&store).await.len();
        let left: usize = conn.zcard(&scheduled).await.unwrap();
        if up.done() + dead == usize::try_from(JOBS).unwrap() && waiting.is_empty() && left == 0 {
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
    assert!(checked > 100, "only {checked} scheduled retries checked");
    cleanup(&mut conn, &q).await;
}

/// Two workers on one Redis queue; one is killed (its runtime dropped) while it holds a job.
/// The job is leased to a dead worker; once the dead worker's heartbeat is old (moved back in
/// the workers set rather than waited for), the survivor re-enqueues and completes it. Every
/// job completes exactly once here: the killed worker never finished its job, and the retry
/// keys (`origin#attempt`) make a repeated schedule of the same attempt a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_on_redis() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let q = queue();
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(conn.clone(), &q, Duration::from_secs(1));
    let jobs: Vec<Job> = (0..20u64).map(|n| Job::new("tts", &n).unwrap()).collect();
    backend.clone().push_bulk(jobs).await.unwrap();
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();

    // Worker A hangs on job 7 and finishes the others it takes.
    let doomed_name = format!("{q}-doomed");
    let a = Upstream::new(|n, _| if n == 7 { Act::Hang } else { Act::Ok });
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let layer = JobLayer::new(
            JobPolicy::tts_task(),
            classify,
            store.clone(),
            BackendScheduler::new(backend.clone()),
        );
        let worker = WorkerBuilder::new(doomed_name.clone())
            .backend(
                backend
                    .clone()
                    .poll_with_interval(Duration::from_millis(20)),
            )
            .build(layer.typed::<u64>().layer(a.clone()));
        rt.spawn(worker.run());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while a.calls(7) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "worker A never took job 7"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::spawn(move || rt.shutdown_background())
            .join()
            .unwrap();
    }
    let inflight: Vec<String> = conn
        .smembers(format!("{q}:inflight:{doomed_name}"))
        .await
        .unwrap();
    assert!(!inflight.is_empty(), "job 7 is leased to the dead worker");
    // Backend time control: the dead worker was last seen long ago.
    let _: () = conn
        .zadd(format!("{q}:workers"), &doomed_name, 1)
        .await
        .unwrap();

    let b = Upstream::new(|_, _| Act::Ok);
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    );
    let worker = WorkerBuilder::new(format!("{q}-survivor"))
        .backend(backend.poll_with_interval(Duration::from_millis(20)))
        .build(layer.typed::<u64>().layer(b.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stop_rx.await;
        Ok::<(), std::io::Error>(())
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: Vec<u64> = (0..20)
            .filter(|n| {
                a.successes.lock().unwrap().contains_key(n)
                    || b.successes.lock().unwrap().contains_key(n)
            })
            .collect();
        if done.len() == 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "done: {done:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    for n in 0..20u64 {
        let total = a.successes.lock().unwrap().get(&n).copied().unwrap_or(0)
            + b.successes.lock().unwrap().get(&n).copied().unwrap_or(0);
        assert_eq!(total, 1, "job {n} done {total} times");
    }
    assert_eq!(b.calls(7), 1, "the survivor ran the orphaned job");
    assert!(all_records(&store).await.is_empty());
    cleanup(&mut conn, &q).await;
}
