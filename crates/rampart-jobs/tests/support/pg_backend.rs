//! apalis-postgres in a database of its own (`rampart_jobs_test`, next to `DATABASE_URL` or
//! 127.0.0.1:5432/test, so that apalis' migrations never meet another migrator's history),
//! and its time control (the rows' `run_at`).

use apalis_core::backend::ext::with_codec::WithCodec;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use rampart_jobs::{Job, JobCodec};

use super::{TimeControl, Waiting};

pub type Backend = WithCodec<PostgresStorage<Job>, JobCodec>;

pub fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A migrated pool on `rampart_jobs_test`; `None` (the test is skipped) if there is no
/// server and services are not required.
pub async fn pool() -> Option<PgPool> {
    let admin = match PgPool::connect(&url()).await {
        Ok(p) => p,
        Err(e) => {
            super::redis_server::skip(&format!("no PostgreSQL at {} ({e})", url()));
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

/// Queue `queue` on `pool`.
pub fn backend(pool: &PgPool, queue: &str) -> Backend {
    let config = Config::default().queue(queue).batch_size(25);
    WithCodec::new(
        PostgresStorage::<Job>::new(pool).with_config(config),
        JobCodec,
    )
}

/// Time control over `apalis.jobs` rows of one queue.
pub struct Control {
    pub pool: PgPool,
    pub queue: String,
}

impl TimeControl for Control {
    async fn waiting(&mut self) -> Vec<Waiting> {
        let rows: Vec<(String, Vec<u8>, f64)> = sqlx::query_as(
            "SELECT id, job, EXTRACT(EPOCH FROM run_at)::float8 FROM apalis.jobs \
             WHERE job_type = $1 AND status = 'Pending' AND run_at > now()",
        )
        .bind(&self.queue)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(id, b, run_at)| Waiting {
                id,
                job: serde_json::from_slice(&b).unwrap(),
                run_at,
            })
            .collect()
    }

    async fn make_due(&mut self, ids: &[String]) {
        sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE job_type = $1 AND id = ANY($2)")
            .bind(&self.queue)
            .bind(ids)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// Removes the queue's rows.
pub async fn cleanup(pool: &PgPool, queue: &str) {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(queue)
        .execute(pool)
        .await
        .unwrap();
}
