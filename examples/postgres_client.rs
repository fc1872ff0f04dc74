//! The reference design's "update request status" through the `database` preset: one SQL
//! transaction per call on a reconnecting connection, idempotent on an operation id.
//!
//! Run with `cargo run --example postgres_client --features postgres` (PostgreSQL at
//! `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rampart::dlq::{MemoryStore, RequestPart};
use rampart::postgres::{PgService, PostgresClassifier, Transact};
use rampart::Policy;
use tokio_postgres::Transaction;
use tower::{Layer, ServiceExt};

/// Sets a TTS request's status, once per operation id.
struct UpdateStatus {
    op_id: String,
    request_id: String,
    status: &'static str,
}

impl Transact for UpdateStatus {
    type Output = bool;
    fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, tokio_postgres::Error>> + Send + 'a>> {
        Box::pin(async move {
            let fresh = tx
                .execute(
                    "INSERT INTO rampart_example_ops (op_id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&self.op_id],
                )
                .await?;
            if fresh == 1 {
                tx.execute(
                    "INSERT INTO rampart_example_requests (id, status) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()",
                    &[&self.request_id, &self.status],
                )
                .await?;
            }
            Ok(fresh == 1)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS rampart_example_requests (id text PRIMARY KEY, status text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS rampart_example_ops (op_id text PRIMARY KEY);",
        )
        .await?;
    let policy = Policy::preset("database")
        .ok_or("no database preset")?
        .build()?;
    let store = MemoryStore::default();
    let svc = policy
        .layer(PostgresClassifier, store, |op: &Arc<UpdateStatus>| RequestPart {
            summary: format!("{} -> {}", op.request_id, op.status),
            payload: serde_json::json!({ "op_id": op.op_id, "request_id": op.request_id, "status": op.status }),
        })
        .layer(PgService::new(&url));
    let run = std::process::id();
    for (i, status) in ["queued", "processing", "done"].into_iter().enumerate() {
        let op = Arc::new(UpdateStatus {
            op_id: format!("{run}-{i}"),
            request_id: format!("req-{run}"),
            status,
        });
        let applied = svc.clone().oneshot(op.clone()).await?;
        let repeated = svc.clone().oneshot(op).await?;
        println!("req-{run} -> {status}: applied {applied}, repeated {repeated} (idempotent on the op id)");
    }
    let row = admin
        .query_one(
            "SELECT status FROM rampart_example_requests WHERE id = $1",
            &[&format!("req-{run}")],
        )
        .await?;
    println!("final status: {}", row.get::<_, String>(0));
    Ok(())
}
