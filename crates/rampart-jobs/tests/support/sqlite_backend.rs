//! apalis-sqlite in a temporary file, and its time control (the rows' `run_at`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::backend::ext::with_codec::WithCodec;
use apalis_sqlite::{Config, SqliteConnectOptions, SqlitePool, SqliteStorage};
use rampart_jobs::{Job, JobCodec};

use super::{TimeControl, Waiting};

pub type Backend = WithCodec<SqliteStorage<Job>, JobCodec>;

/// Connect options for `jobs.db` in `dir` (created if missing).
pub fn options(dir: &tempfile::TempDir) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(dir.path().join("jobs.db"))
        .create_if_missing(true)
}

/// The pool over `opts`, migrated, and queue `tts` on it.
pub async fn backend_with(
    opts: SqliteConnectOptions,
    heartbeat: Duration,
) -> (SqlitePool, Backend) {
    let pool = SqlitePool::connect_with(opts).await.unwrap();
    SqliteStorage::setup(&pool).await.unwrap();
    let config = Config::default()
        .queue("tts")
        .heartbeat_interval(heartbeat)
        .batch_size(25);
    let storage = SqliteStorage::<Job>::new(&pool).with_config(config);
    (pool, WithCodec::new(storage, JobCodec))
}

/// Queue `tts` in `dir/jobs.db`.
pub async fn backend(dir: &tempfile::TempDir, heartbeat: Duration) -> (SqlitePool, Backend) {
    backend_with(options(dir), heartbeat).await
}

pub fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Time control over the `Jobs` table.
pub struct Control(pub SqlitePool);

impl TimeControl for Control {
    async fn waiting(&mut self) -> Vec<Waiting> {
        let now = now_secs();
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT id, job, run_at FROM Jobs WHERE status = 'Pending' AND run_at > ?1",
        )
        .bind(now)
        .fetch_all(&self.0)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id, b, at)| Waiting {
                id,
                job: serde_json::from_slice(&b).unwrap(),
                run_at: at as f64,
            })
            .collect()
    }

    async fn make_due(&mut self, ids: &[String]) {
        let now = now_secs();
        for id in ids {
            sqlx::query("UPDATE Jobs SET run_at = ?1 WHERE id = ?2")
                .bind(now)
                .bind(id)
                .execute(&self.0)
                .await
                .unwrap();
        }
    }
}
