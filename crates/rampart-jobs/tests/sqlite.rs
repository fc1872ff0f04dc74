//! Jobs on a real apalis-sqlite file backend, with the dead-letter store in a real SQLite
//! file. Countdowns are checked in the backend's rows, then fast-forwarded by moving the rows'
//! `run_at` (backend time control): nothing sleeps for the minutes the policy asks for.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use apalis_core::{
    backend::{ext::BackendExt, TaskSink},
    task::{builder::TaskBuilder, Task},
    worker::builder::WorkerBuilder,
};
use rampart_dlq::{DeadLetterReason, SqliteStore};
use rampart_jobs::{BackendScheduler, Job, JobLayer, JobOutcome, JobPolicy};
use support::sqlite_backend::{backend, Control};
use support::{
    all_records, check_countdown, check_settled, classify, settle, spawn, twenty_percent, Act,
    Recording, Upstream,
};
use tower_layer::Layer;
use tower_service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_settle_exactly_once_with_countdowns_in_the_backend() {
    const JOBS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let (pool, backend) = backend(&dir, Duration::from_secs(30)).await;
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
    let worker = WorkerBuilder::new("sqlite-1")
        .backend(
            backend.poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
        )
        .build(layer.typed::<u64>().layer(up.clone()));
    let running = spawn(|stop| worker.run_until(stop));

    // The countdown is in the backend: each retry is seen waiting, due when the policy says.
    let checked = settle(&mut Control(pool), &up, &store, JOBS, &scheduler).await;
    running.stop().await;

    let records = all_records(&store).await;
    let seen = scheduler.seen();
    check_settled(&up, &records, &seen, JOBS, twenty_percent).await;
    // Every retry the worker scheduled was found waiting in the backend with its countdown
    // (the loop fast-forwards only the rows it has checked, so this holds at any pace).
    assert_eq!(
        checked,
        support::distinct_retries(&seen),
        "retries checked in the backend vs scheduled"
    );
    assert!(seen.len() > 150, "only {} retries scheduled", seen.len());
    assert!(
        records.len() >= 6,
        "the always-failing and permanent jobs are dead-lettered"
    );
    // The cap: the tts_task numbers with more retries never exceed 3,600 s.
    let long = JobPolicy::new(
        "tts",
        rampart_core::Backoff::builder()
            .max_retries(10)
            .base_delay(Duration::from_secs(60))
            .max_delay(Duration::from_secs(3600))
            .jitter(rampart_core::Jitter::Proportional(0.2))
            .build()
            .unwrap(),
    );
    for k in 0..10 {
        let d = long
            .countdown(k, rampart_core::Outcome::TRANSIENT, 42)
            .unwrap();
        assert!(d <= Duration::from_secs(3600), "retry {k}: {d:?}");
        check_countdown(k, d, None);
    }
}

/// A job the worker cannot run — bytes that are not JSON, a type it does not handle,
/// arguments of the wrong shape — is dead-lettered with a clear reason, once, and the worker
/// keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_dead_lettered_with_a_reason_and_the_worker_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, backend) = backend(&dir, Duration::from_secs(30)).await;
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    // Bytes that are not a job, written straight into the queue.
    let raw = TaskBuilder::new(b"{not json".to_vec()).build();
    apalis_sqlite::queries::push_tasks(&mut *pool.acquire().await.unwrap(), "tts", &[raw])
        .await
        .unwrap();
    let mut b = backend.clone();
    b.push(Job::new("thumbnail", &1u64).unwrap()).await.unwrap();
    b.push(Job::new("tts", &"not a number").unwrap())
        .await
        .unwrap();
    b.push(Job::new("tts", &5u64).unwrap()).await.unwrap();

    let up = Upstream::new(|_, _| Act::Ok);
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    );
    let worker = WorkerBuilder::new("sqlite-bad")
        .backend(
            backend.poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
        )
        .build(layer.typed::<u64>().layer(up.clone()));
    let running = spawn(|stop| worker.run_until(stop));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = all_records(&store).await;
        if r.len() == 3 && up.done() == 1 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} records, {} done",
            r.len(),
            up.done()
        );
    };
    running.stop().await;
    let mut errors: Vec<String> = records.iter().map(|r| r.error.clone()).collect();
    errors.sort();
    assert!(
        errors[0].starts_with("arguments do not fit the \"tts\" handler"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("payload is not a job"), "{errors:?}");
    assert!(
        errors[2].starts_with("unknown job type \"thumbnail\""),
        "{errors:?}"
    );
    for r in &records {
        assert_eq!(r.reason, DeadLetterReason::Permanent);
        assert_eq!(r.attempts, 0, "never ran");
    }
}

/// Two workers racing on one job (a redelivery after a lost lease) store one dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_dead_letter_a_job_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_pool, backend) = backend(&dir, Duration::from_secs(30)).await;
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    let up = Upstream::new(|_, _| Act::Permanent);
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend),
    )
    .typed::<u64>();
    let mut tasks = Vec::new();
    for job in 0..50u64 {
        let mut j = Job::new("tts", &job).unwrap();
        j.origin = Some(format!("origin-{job}"));
        for _ in 0..4 {
            let mut svc = layer.layer(up.clone());
            let task: Task<Job> = TaskBuilder::new(j.clone()).build();
            tasks.push(tokio::spawn(async move {
                std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
                svc.call(task).await.unwrap()
            }));
        }
    }
    let mut stored = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap() {
            JobOutcome::DeadLettered {
                duplicate: false, ..
            } => stored += 1,
            JobOutcome::DeadLettered {
                duplicate: true, ..
            } => duplicates += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stored, 50);
    assert_eq!(duplicates, 150);
    assert_eq!(all_records(&store).await.len(), 50);
}

/// A worker whose runtime is dropped mid-job loses nothing: its job is leased to a dead
/// worker, the next worker re-enqueues it (the dead worker's heartbeat is moved back in the
/// backend instead of waiting for it to age) and the job completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, backend) = backend(&dir, Duration::from_secs(1)).await;
    backend
        .clone()
        .push(Job::new("tts", &77u64).unwrap())
        .await
        .unwrap();
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();

    // Worker A hangs inside the handler; its whole runtime is then dropped.
    let hung = Upstream::new(|_, _| Act::Hang);
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
        let worker = WorkerBuilder::new("sqlite-doomed")
            .backend(
                backend
                    .clone()
                    .poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
            )
            .build(layer.typed::<u64>().layer(hung.clone()));
        rt.spawn(worker.run());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while hung.calls(77) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "worker A never took the job"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::spawn(move || rt.shutdown_background())
            .join()
            .unwrap();
    }
    let locked: (String, Option<String>) = sqlx::query_as("SELECT status, lock_by FROM Jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(locked.1.as_deref(), Some("sqlite-doomed"), "{locked:?}");
    // Backend time control: worker A was last seen long ago.
    sqlx::query("UPDATE Workers SET last_seen = last_seen - 1000 WHERE id = 'sqlite-doomed'")
        .execute(&pool)
        .await
        .unwrap();

    let up = Upstream::new(|_, _| Act::Ok);
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    );
    let worker = WorkerBuilder::new("sqlite-survivor")
        .backend(
            backend.poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
        )
        .build(layer.typed::<u64>().layer(up.clone()));
    let running = spawn(|stop| worker.run_until(stop));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while up.done() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphaned job was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(up.max_successes(), 1);
    assert!(all_records(&store).await.is_empty());
}

/// The breaker is open: the job is not run, and waits in the backend until the breaker
/// half-opens (plus jitter), without using up an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_defers_jobs_to_its_half_open_time() {
    use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    let dir = tempfile::tempdir().unwrap();
    let (_pool, backend) = backend(&dir, Duration::from_secs(30)).await;
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    let config = CircuitBreakerConfig::builder()
        .recovery_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new(config).classifier(rampart_core::classify::ErrorsAre(
        rampart_core::Outcome::TRANSIENT,
    ));
    let handle = breaker.handle();
    handle.force_open();
    let up = Upstream::new(|_, _| Act::Ok);
    let scheduler = Recording::new(BackendScheduler::new(backend));
    let policy = JobPolicy::tts_task()
        .breaker(handle)
        .open_jitter(Duration::from_secs(10));
    let layer = JobLayer::new(policy, classify, store, scheduler.clone()).typed::<u64>();
    let mut svc = layer.layer(up.clone());
    let mut job = Job::new("tts", &3u64).unwrap();
    job.attempt = 1;
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let out = svc.call(TaskBuilder::new(job).build()).await.unwrap();
    let JobOutcome::Deferred { countdown } = out else {
        panic!("{out:?}")
    };
    // Forced open has no half-open time: the policy waits one jitter span plus jitter.
    assert!(
        countdown >= Duration::from_secs(10) && countdown <= Duration::from_secs(20),
        "{countdown:?}"
    );
    assert_eq!(up.calls(3), 0, "not run while open");
    let seen = scheduler.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, 1, "the refusal is not an attempt");
}

/// The SQLite file is locked by another writer for longer than the worker's busy timeout:
/// apalis ends the worker with a backend error ("database is locked"); the supervisor logs
/// it, backs off and starts the worker again (the first restarts fail while the lock is
/// held), and once the lock is gone every job completes — none lost. A job whose completion
/// could not be recorded while locked runs again (at least once, never lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_worker_outlasts_a_locked_database() {
    use rampart_jobs::Supervisor;
    use sqlx::Connection;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const JOBS: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let opts = support::sqlite_backend::options(&dir).busy_timeout(Duration::from_millis(50));
    let (_pool, backend) =
        support::sqlite_backend::backend_with(opts, Duration::from_secs(1)).await;
    let jobs: Vec<Job> = (0..JOBS).map(|n| Job::new("tts", &n).unwrap()).collect();
    backend.clone().push_bulk(jobs).await.unwrap();
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    let up = Upstream::serial(|_, _| Act::OkAfter(20));
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    )
    .typed::<u64>();
    let supervisor = Supervisor::new(
        rampart_core::Backoff::builder()
            .max_retries(200)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(400))
            .jitter(rampart_core::Jitter::None)
            .build()
            .unwrap(),
    );
    let starts = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervised = {
        let (starts, up) = (Arc::clone(&starts), up.clone());
        tokio::spawn(async move {
            supervisor
                .run_until(
                    async move {
                        let _ = stop_rx.await;
                    },
                    move |stop| {
                        starts.fetch_add(1, Ordering::SeqCst);
                        WorkerBuilder::new("sqlite-supervised")
                            .backend(backend.clone().poll_with_strategy(
                                rampart_jobs::PollEvery::new(Duration::from_millis(20)),
                            ))
                            .build(layer.layer(up.clone()))
                            .run_until(stop)
                    },
                )
                .await
        })
    };
    support::wait_for(Duration::from_secs(20), "first jobs done", || {
        up.done() >= 3
    })
    .await;

    // Another writer takes the database and keeps it past the worker's busy timeout.
    let mut locker = sqlx::SqliteConnection::connect_with(&support::sqlite_backend::options(&dir))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let done_at_lock = up.done();
    support::wait_for(Duration::from_secs(20), "a restart while locked", || {
        starts.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(
        up.done() < usize::try_from(JOBS).unwrap(),
        "the lock came too late"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);

    support::wait_for(
        Duration::from_secs(30),
        "every job done after the lock",
        || up.done() == usize::try_from(JOBS).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(()).unwrap();
    supervised.await.unwrap().unwrap();
    let twice = up
        .successes
        .lock()
        .unwrap()
        .values()
        .filter(|c| **c > 1)
        .count();
    assert!(up.max_successes() <= 2, "a job ran more than twice");
    assert!(all_records(&store).await.is_empty());
    eprintln!(
        "locked after {done_at_lock} jobs; {} worker starts; {twice} job(s) ran twice",
        starts.load(Ordering::SeqCst)
    );
}
