//! Redis for real: 1,000 enqueues while the test restarts its private redis-server; every
//! enqueue succeeds within the policy and the queue holds exactly 1,000 jobs.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../crates/rampart-dlq/tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use rampart::redis::{redis_error, Enqueue, Job, RedisClassifier};
use rampart::{Backoff, Outcome, RetryLayer};
use tower::{Layer, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_enqueues_survive_a_restart_without_doubling() {
    let Some(mut server) = support::RedisServer::start() else {
        return support::skip("redis-server is not installed");
    };
    let enqueue = Enqueue::connect(&server.url(), "tts_jobs").await.unwrap();
    // The `redis` preset's backoff (0.1 s, ×2, capped at 1 s) with enough retries to ride out
    // a restart.
    let backoff = Backoff::builder()
        .max_retries(10)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = RetryLayer::new(RedisClassifier)
        .name("redis")
        .backoff(backoff)
        .no_budget()
        .layer(enqueue.clone());
    let mut tasks = Vec::new();
    for w in 0..10u32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100u32 {
                let id = format!("job-{w}-{n}");
                let job = Job {
                    id: id.clone(),
                    json: format!("{{\"id\":\"{id}\",\"text\":\"hello\"}}"),
                };
                svc.clone()
                    .oneshot(job)
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e:?}"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.restart();
    for t in tasks {
        t.await.unwrap();
    }
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let jobs: Vec<String> = ::redis::cmd("LRANGE")
        .arg(enqueue.queue_key())
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1000, "exactly one entry per job");
    let distinct: HashSet<_> = jobs.iter().collect();
    assert_eq!(distinct.len(), 1000);

    // An enqueue repeated after an ambiguous failure (sent, reply lost) is a no-op.
    let job = Job {
        id: "job-0-0".into(),
        json: "{}".into(),
    };
    assert!(
        !enqueue.clone().oneshot(job).await.unwrap(),
        "already enqueued"
    );
    let len: usize = ::redis::cmd("LLEN")
        .arg(enqueue.queue_key())
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 1000);

    // Classification of real server errors.
    let _: () = ::redis::cmd("SET")
        .arg("plain")
        .arg("x")
        .query_async(&mut con)
        .await
        .unwrap();
    let wrongtype = ::redis::cmd("LPUSH")
        .arg("plain")
        .arg("y")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(redis_error(&wrongtype), Outcome::Rejected, "{wrongtype:?}");
    let syntax = ::redis::cmd("SET")
        .arg("a")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(redis_error(&syntax), Outcome::Rejected, "{syntax:?}");
    server.kill();
    let gone = ::redis::cmd("PING")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(redis_error(&gone), Outcome::TRANSIENT, "{gone:?}");
}
