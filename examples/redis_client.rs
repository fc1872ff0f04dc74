//! The reference design's "enqueue request" through the `redis` preset: an idempotent
//! `LPUSH` of a JSON job, wrapped as a tower service.
//!
//! Run with `cargo run --example redis_client --features redis` (Redis on 127.0.0.1:6379,
//! or set `REDIS_URL`).

use std::time::Duration;

use rampart::dlq::MemoryStore;
use rampart::redis::{Enqueue, Job, RedisClassifier};
use rampart::Policy;
use tower::{Layer, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let enqueue = Enqueue::connect(&url, "rampart_example_jobs").await?;
    let policy = Policy::preset("redis")
        .ok_or("no redis preset")?
        .deadline(Some(Duration::from_secs(5)))
        .build()?;
    let store = MemoryStore::default();
    let svc = policy
        .layer(RedisClassifier, store.clone(), |job: &Job| {
            rampart::dlq::RequestPart {
                summary: format!("enqueue {}", job.id),
                payload: serde_json::json!({ "id": job.id, "json": job.json }),
            }
        })
        .layer(enqueue.clone());
    for i in 0..5 {
        let job = Job {
            id: format!("req-{i}"),
            json: format!("{{\"request_id\":\"req-{i}\",\"text\":\"hello\"}}"),
        };
        let fresh = svc.clone().oneshot(job.clone()).await?;
        let again = svc.clone().oneshot(job).await?;
        println!("req-{i}: enqueued {fresh}, repeated enqueue {again} (idempotent on the job id)");
    }
    println!(
        "queue {} — dead letters: {}",
        enqueue.queue_key(),
        rampart::dlq::DeadLetterStore::stats(&store).await?.records
    );
    Ok(())
}
