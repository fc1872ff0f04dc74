//! apalis-redis on the shared server (127.0.0.1:6379, or `RAMPART_REDIS_URL`) under a queue
//! of its own, and its time control (the scheduled set's scores).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::backend::ext::with_codec::WithCodec;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use rampart_jobs::{Job, JobCodec};
use redis::AsyncCommands;

use super::{TimeControl, Waiting};

pub type Backend = WithCodec<RedisStorage<Job, ConnectionManager>, JobCodec>;

pub fn url() -> String {
    std::env::var("RAMPART_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A connection to the shared server; `None` (the test is skipped) if there is none and
/// services are not required.
pub async fn connect() -> Option<ConnectionManager> {
    match apalis_redis::connect(url()).await {
        Ok(c) => Some(c),
        Err(e) => {
            super::redis_server::skip(&format!("no Redis at {} ({e})", url()));
            None
        }
    }
}

/// A queue name of this test's own.
pub fn queue() -> String {
    format!("rampart-jobs-test-{}", uuid::Uuid::now_v7())
}

/// The apalis config of the tests: rampart's (idempotency keys kept), heartbeat
/// `heartbeat`, a worker dead after three missed heartbeats, batches of 25.
pub fn config(queue: &str, heartbeat: Duration) -> Config {
    rampart_jobs::redis_config(queue)
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(3)
        .batch_size(25)
}

pub fn backend(conn: ConnectionManager, config: Config) -> Backend {
    WithCodec::new(RedisStorage::new(conn).with_config(config), JobCodec)
}

/// Removes every key of `queue`.
pub async fn cleanup(conn: &mut ConnectionManager, queue: &str) {
    let keys: Vec<String> = conn.keys(format!("{queue}*")).await.unwrap();
    for k in keys {
        let _: () = conn.del(k).await.unwrap();
    }
    // apalis lists every queue a worker registered on.
    let _: () = conn
        .zrem("core:apalis:queues:list", format!("{queue}:workers"))
        .await
        .unwrap();
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Time control over `{queue}:scheduled`.
pub struct Control {
    pub conn: ConnectionManager,
    pub queue: String,
}

impl TimeControl for Control {
    async fn waiting(&mut self) -> Vec<Waiting> {
        let scheduled = format!("{}:scheduled", self.queue);
        let data = format!("{}:data", self.queue);
        let all: Vec<(String, f64)> = self
            .conn
            .zrange_withscores(&scheduled, 0, -1)
            .await
            .unwrap();
        let now = now_secs();
        let mut out = Vec::new();
        // Only tasks still in the future: immediate ones (and those made due) wait for
        // promotion at the next fetch.
        for (id, score) in all.into_iter().filter(|(_, s)| *s > now) {
            let bytes: Vec<u8> = self.conn.hget(&data, &id).await.unwrap();
            out.push(Waiting {
                id,
                job: serde_json::from_slice(&bytes).unwrap(),
                run_at: score,
            });
        }
        out
    }

    async fn make_due(&mut self, ids: &[String]) {
        let scheduled = format!("{}:scheduled", self.queue);
        let now = now_secs().floor() - 1.0;
        for id in ids {
            let _: () = self.conn.zadd(&scheduled, id, now).await.unwrap();
        }
    }
}
