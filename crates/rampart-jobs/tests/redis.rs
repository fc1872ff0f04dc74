//! Jobs on a real apalis-redis backend: the shared server (127.0.0.1:6379, or
//! `RAMPART_REDIS_URL`) under a queue of each test's own, or a private `redis-server` that
//! the test kills and starts again. Countdowns are read from the scheduled set's scores, then
//! fast-forwarded by rewriting those scores (backend time control). Two worker processes (this
//! test binary, started again as a child) share one queue and one is SIGKILLed mid-job.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::{
    backend::{ext::BackendExt, TaskSink},
    worker::builder::WorkerBuilder,
};
use apalis_redis::ConnectionManager;
use futures_util::{future::BoxFuture, task::AtomicWaker};
use rampart_core::{Backoff, Jitter};
use rampart_dlq::{DeadLetterReason, SqliteStore};
use rampart_jobs::{BackendScheduler, Job, JobLayer, JobPolicy, Supervisor};
use redis::AsyncCommands;
use support::redis_backend::{backend, cleanup, config, connect, queue, Control};
use support::redis_server::{skip, RedisServer};
use support::{
    all_records, check_settled, classify, settle, spawn, twenty_percent, wait_for, Act, Recording,
    UpErr, Upstream,
};
use tower_layer::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_settle_exactly_once_on_redis() {
    const JOBS: u64 = 1000;
    let Some(mut conn) = connect().await else {
        return;
    };
    let q = queue();
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(conn.clone(), config(&q, Duration::from_secs(30)));
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
        conn: conn.clone(),
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
    assert!(seen.len() > 150, "only {} retries scheduled", seen.len());
    cleanup(&mut conn, &q).await;
}

/// A retry pushed twice for one attempt (a worker died between the push and its
/// acknowledgement, and the attempt ran again) is stored once: its key `{origin}#{attempt}`
/// is kept (see `redis_config`; apalis-redis' default config would delete it at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pushed_twice_is_stored_once_on_redis() {
    use rampart_jobs::Reschedule;
    let Some(mut conn) = connect().await else {
        return;
    };
    let q = queue();
    let scheduler =
        BackendScheduler::new(backend(conn.clone(), config(&q, Duration::from_secs(30))));
    let retry = Job::new("tts", &1u64).unwrap().next_attempt("origin-1");
    for _ in 0..2 {
        scheduler
            .schedule(retry.clone(), Duration::from_secs(60), "origin-1#1".into())
            .await
            .unwrap();
    }
    let tasks: usize = conn.hlen(format!("{q}:data")).await.unwrap();
    let scheduled: usize = conn.zcard(format!("{q}:scheduled")).await.unwrap();
    cleanup(&mut conn, &q).await;
    assert_eq!((tasks, scheduled), (1, 1));
}

// ---------------------------------------------------------------------------------------
// Two worker processes on one queue, one SIGKILLed mid-job.

/// The worker name; set, the test binary is a worker process (see `worker_child`).
const CHILD_ENV: &str = "RAMPART_JOBS_WORKER_CHILD";
const URL_ENV: &str = "RAMPART_JOBS_CHILD_URL";
const QUEUE_ENV: &str = "RAMPART_JOBS_CHILD_QUEUE";
const DLQ_ENV: &str = "RAMPART_JOBS_CHILD_DLQ";
/// Set: after this many jobs done, the worker hangs inside every job it starts.
const HANG_ENV: &str = "RAMPART_JOBS_CHILD_HANG_AFTER";
/// Jobs a worker process runs at once (its handler's readiness says so).
const SLOTS: usize = 2;

/// The job handler of the worker processes. Its effects go to Redis, shared by both
/// processes: `{q}:t:calls` counts calls per job (across processes), `{q}:t:done` is the set
/// of jobs done (an idempotent effect, like writing `{id}.wav`), `{q}:t:effects` counts how
/// often each job's effect was applied. Job 13 fails for good; jobs `n % 5 == 2` fail
/// transiently on their first call. Every step is printed (`@@ start 7`, `@@ done 7`,
/// `@@ hang 7`) for the parent.
#[derive(Clone)]
struct Effects {
    conn: ConnectionManager,
    queue: Arc<str>,
    done: Arc<AtomicUsize>,
    hang_after: Option<usize>,
    busy: Arc<AtomicUsize>,
    waker: Arc<AtomicWaker>,
}

fn say(what: &str, n: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {what} {n}").unwrap();
    out.flush().unwrap();
}

/// Gives a slot back when a job's future ends, however it ends.
struct Slot {
    busy: Arc<AtomicUsize>,
    waker: Arc<AtomicWaker>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.waker.wake();
    }
}

impl tower_service::Service<u64> for Effects {
    type Response = ();
    type Error = UpErr;
    type Future = BoxFuture<'static, Result<(), UpErr>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpErr>> {
        self.waker.register(cx.waker());
        if self.busy.load(Ordering::SeqCst) < SLOTS {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, n: u64) -> Self::Future {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let slot = Slot {
            busy: Arc::clone(&self.busy),
            waker: Arc::clone(&self.waker),
        };
        let this = self.clone();
        Box::pin(async move {
            let _slot = slot;
            let mut conn = this.conn.clone();
            let q = &this.queue;
            let call: u32 = conn.hincr(format!("{q}:t:calls"), n, 1).await.unwrap();
            say("start", n);
            if this
                .hang_after
                .is_some_and(|k| this.done.load(Ordering::SeqCst) >= k)
            {
                say("hang", n);
                std::future::pending::<()>().await;
            }
            if n == 13 {
                return Err(UpErr(Act::Permanent));
            }
            if n % 5 == 2 && call == 1 {
                return Err(UpErr(Act::Transient));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _: () = conn.sadd(format!("{q}:t:done"), n).await.unwrap();
            let _: () = conn.hincr(format!("{q}:t:effects"), n, 1).await.unwrap();
            this.done.fetch_add(1, Ordering::SeqCst);
            say("done", n);
            Ok(())
        })
    }
}

/// Not a test of its own: the body of the worker processes the multi-process test starts
/// (this same test binary, with `CHILD_ENV` set). Runs a worker on the queue until killed.
#[test]
fn worker_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let url = std::env::var(URL_ENV).unwrap();
    let q = std::env::var(QUEUE_ENV).unwrap();
    let dlq = std::env::var(DLQ_ENV).unwrap();
    let hang_after = std::env::var(HANG_ENV).ok().map(|v| v.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let conn = apalis_redis::connect(url.as_str()).await.unwrap();
        // Heartbeat every second; a worker silent for 3 s is dead and its jobs go back.
        let backend = backend(
            conn.clone(),
            config(&q, Duration::from_secs(1)).batch_size(SLOTS),
        );
        let store = SqliteStore::open_default(dlq).unwrap();
        let handler = Effects {
            conn,
            queue: q.into(),
            done: Arc::default(),
            hang_after,
            busy: Arc::default(),
            waker: Arc::default(),
        };
        // Short countdowns: this test is about the kill, not the 60 s schedule.
        let policy = JobPolicy::new(
            "tts",
            Backoff::builder()
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1))
                .jitter(Jitter::Proportional(0.2))
                .build()
                .unwrap(),
        );
        let layer = JobLayer::new(
            policy,
            classify,
            store,
            BackendScheduler::new(backend.clone()),
        );
        WorkerBuilder::new(name)
            .backend(
                backend.poll_with_strategy(rampart_jobs::PollEvery::new(Duration::from_millis(20))),
            )
            .build(layer.typed::<u64>().layer(handler))
            .run()
            .await
            .unwrap();
    });
}

/// What a worker process printed: (event, job) pairs, as they come.
struct ChildOut {
    lines: Arc<Mutex<Vec<(String, u64)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChildOut {
    /// Waits until the process's output has ended (it exited or was killed).
    fn finish(&mut self) {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }

    fn of(&self, what: &str) -> BTreeSet<u64> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == what)
            .map(|(_, n)| *n)
            .collect()
    }
}

fn spawn_worker(
    name: &str,
    url: &str,
    q: &str,
    dlq: &std::path::Path,
    hang_after: Option<usize>,
) -> (Child, ChildOut) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["worker_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env(URL_ENV, url)
        .env(QUEUE_ENV, q)
        .env(DLQ_ENV, dlq)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(k) = hang_after {
        cmd.env(HANG_ENV, k.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may print `test worker_child ... ` in front of the first line.
            let Some((_, rest)) = line.split_once("@@ ") else {
                continue;
            };
            let mut it = rest.split_whitespace();
            if let (Some(w), Some(n)) = (it.next(), it.next().and_then(|n| n.parse().ok())) {
                sink.lock().unwrap().push((w.to_owned(), n));
            }
        }
    });
    (
        child,
        ChildOut {
            lines,
            reader: Some(reader),
        },
    )
}

/// Two worker processes on one Redis queue; worker A finishes a few jobs, then hangs inside
/// every job it starts and is SIGKILLed there (two jobs running, more fetched and leased to
/// it). apalis-redis keeps each worker's leased jobs in `{queue}:inflight:{worker}`; worker B's
/// heartbeat re-enqueues the jobs of a worker whose last heartbeat is older than
/// `heartbeat_interval × missed_heartbeats` (here 1 s × 3), and B runs them.
///
/// Nothing is lost: every job is done or (job 13) dead-lettered. Nothing is done twice
/// except a job A ran to the end but could not acknowledge before it died (done, or its retry
/// scheduled): it runs again on B. That repeat is harmless where keys make it so — the
/// handler's effect is idempotent (a set member, like a WAV named by the job); a retry
/// scheduled twice for the same attempt is stored once (its idempotency key
/// `{origin}#{attempt}` is claimed once in `{queue}:idempotency:*`); a job dead-lettered twice
/// is one record (its id is derived from the job). The upstream call itself is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_one_sigkilled_mid_job_lose_nothing() {
    const JOBS: u64 = 60;
    let Some(mut conn) = connect().await else {
        return;
    };
    let url = support::redis_backend::url();
    let q = queue();
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.db");
    // Created here, so that the two processes do not race to create it.
    let store = SqliteStore::open_default(&dlq).unwrap();
    let jobs: Vec<Job> = (0..JOBS).map(|n| Job::new("tts", &n).unwrap()).collect();
    backend(conn.clone(), config(&q, Duration::from_secs(1)))
        .push_bulk(jobs)
        .await
        .unwrap();

    let name_a = format!("{q}-A");
    let (mut a, mut out_a) = spawn_worker(&name_a, &url, &q, &dlq, Some(4));
    wait_for(Duration::from_secs(20), "A starts a job", || {
        !out_a.of("start").is_empty()
    })
    .await;
    let (mut b, mut out_b) = spawn_worker(&format!("{q}-B"), &url, &q, &dlq, None);
    wait_for(Duration::from_secs(20), "A hangs in two jobs", || {
        out_a.of("hang").len() >= SLOTS
    })
    .await;
    let leased: Vec<String> = conn
        .smembers(format!("{q}:inflight:{name_a}"))
        .await
        .unwrap();
    a.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    a.wait().unwrap();
    out_a.finish();
    let hung = out_a.of("hang");
    let started_by_a = out_a.of("start");
    assert!(
        leased.len() >= SLOTS,
        "A held {} leases when killed",
        leased.len()
    );

    // B picks A's jobs up once A's heartbeat is 3 s old.
    let done_key = format!("{q}:t:done");
    let deadline = Instant::now() + Duration::from_secs(30);
    let picked_up = loop {
        let done: BTreeSet<u64> = conn.smembers(&done_key).await.unwrap();
        if hung.iter().filter(|n| **n != 13).all(|n| done.contains(n)) {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "A's jobs {hung:?} never ran again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: usize = conn.scard(&done_key).await.unwrap();
        let dead = all_records(&store).await.len();
        if done == usize::try_from(JOBS).unwrap() - 1 && dead == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {done} done, {dead} dead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a straggler show up as a second run, then stop B.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.kill().unwrap();
    b.wait().unwrap();
    out_b.finish();

    // Nothing lost.
    let done: BTreeSet<u64> = conn.smembers(&done_key).await.unwrap();
    let expected: BTreeSet<u64> = (0..JOBS).filter(|n| *n != 13).collect();
    assert_eq!(done, expected);
    let records = all_records(&store).await;
    assert_eq!(records.len(), 1, "job 13 dead-lettered once");
    assert_eq!(records[0].reason, DeadLetterReason::Permanent);
    assert_eq!(records[0].request.payload["args"], 13);
    let left: usize = conn.scard(format!("{q}:inflight:{name_a}")).await.unwrap();
    assert_eq!(left, 0, "A's leases were all handed back");

    // Done twice only where A ran the job and its acknowledgement died with it (A finished
    // it, or scheduled its retry, and the original ran again on B).
    let effects: HashMap<u64, u32> = conn.hgetall(format!("{q}:t:effects")).await.unwrap();
    let mut twice = Vec::new();
    for n in &expected {
        let e = effects.get(n).copied().unwrap_or(0);
        assert!((1..=2).contains(&e), "job {n}: effect applied {e} times");
        if e == 2 {
            assert!(
                started_by_a.contains(n) && !hung.contains(n),
                "job {n} done twice, but A never ran it to the end"
            );
            twice.push(*n);
        }
    }
    for n in hung.iter().filter(|n| **n != 13) {
        assert_eq!(effects.get(n), Some(&1), "hung job {n} done once, by B");
        assert!(out_b.of("done").contains(n), "B ran hung job {n}");
    }
    // Each retry stored once: every task in the queue's data is one of the jobs pushed or a
    // retry whose idempotency key it claimed.
    let keys: Vec<String> = conn.keys(format!("{q}:idempotency:*")).await.unwrap();
    let tasks: usize = conn.hlen(format!("{q}:data")).await.unwrap();
    assert_eq!(tasks, usize::try_from(JOBS).unwrap() + keys.len());
    assert!(!keys.is_empty(), "retries were scheduled");
    eprintln!(
        "SIGKILL: A held {} leases ({} running); B had them all done {:.1?} after the kill; \
         done twice (A's unacknowledged work, harmless): {twice:?}; retries stored: {}",
        leased.len(),
        hung.len(),
        picked_up,
        keys.len()
    );
    cleanup(&mut conn, &q).await;
}

// ---------------------------------------------------------------------------------------
// A Redis that goes away and comes back.

/// The private Redis server is SIGKILLed while a supervised worker runs, and started again
/// on the same port (its append-only file keeps every acknowledged write). apalis ends the
/// worker with a backend error; the supervisor logs it, backs off and starts the worker
/// again — the first restarts fail while Redis is down — and once Redis is back the worker
/// re-registers (its leased jobs handed back to the queue) and every job completes. A job
/// cut off mid-run, or whose acknowledgement was lost, runs again: at most twice here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_worker_survives_a_redis_restart() {
    const JOBS: u64 = 40;
    let Some(mut server) = RedisServer::start() else {
        skip("redis-server is not installed");
        return;
    };
    let q = queue();
    let conn = apalis_redis::connect(server.url()).await.unwrap();
    let backend = backend(conn, config(&q, Duration::from_secs(1)));
    let jobs: Vec<Job> = (0..JOBS).map(|n| Job::new("tts", &n).unwrap()).collect();
    backend.clone().push_bulk(jobs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_default(dir.path().join("dlq.db")).unwrap();
    let up = Upstream::serial(|_, _| Act::OkAfter(25));
    let layer = JobLayer::new(
        JobPolicy::tts_task(),
        classify,
        store.clone(),
        BackendScheduler::new(backend.clone()),
    )
    .typed::<u64>();
    let supervisor = Supervisor::new(
        Backoff::builder()
            .max_retries(200)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(500))
            .jitter(Jitter::None)
            .build()
            .unwrap(),
    );
    let starts = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let supervised = {
        let (starts, up, name) = (Arc::clone(&starts), up.clone(), format!("{q}-w"));
        tokio::spawn(async move {
            supervisor
                .run_until(
                    async move {
                        let _ = stop_rx.await;
                    },
                    move |stop| {
                        starts.fetch_add(1, Ordering::SeqCst);
                        // The connection manager reconnects by itself; a new worker is
                        // needed because apalis' dies with its backend.
                        WorkerBuilder::new(name.clone())
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
    wait_for(Duration::from_secs(20), "first jobs done", || {
        up.done() >= 5
    })
    .await;
    tokio::task::block_in_place(|| server.kill());
    let done_at_kill = up.done();
    wait_for(
        Duration::from_secs(30),
        "a restart while Redis is down",
        || starts.load(Ordering::SeqCst) >= 2,
    )
    .await;
    assert!(
        up.done() < usize::try_from(JOBS).unwrap(),
        "Redis went away too late"
    );
    tokio::task::block_in_place(|| server.restart());
    let back = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "every job done after the restart",
        || up.done() == usize::try_from(JOBS).unwrap(),
    )
    .await;
    let recovered = back.elapsed();
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
        "Redis killed after {done_at_kill} jobs; {} worker starts; all done {recovered:.1?} \
         after Redis came back; {twice} job(s) ran twice",
        starts.load(Ordering::SeqCst)
    );
}
