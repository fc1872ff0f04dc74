//! A private `redis-server` per test, on a free loopback port, that tests may kill and
//! restart; the services-required switch; the PostgreSQL URL; concurrent takers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod redis_server;
pub use redis_server::*;

/// `DATABASE_URL`, or the local test server.
pub fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Empties the retry queue with `tasks` concurrent takers spread over `stores` in turn (7
/// records a take); every id taken, in no particular order.
pub async fn take_all_concurrently<S>(stores: &[S], tasks: usize) -> Vec<rampart_dlq::RecordId>
where
    S: rampart_dlq::DeadLetterStore + Clone,
{
    let mut takers = Vec::new();
    for s in stores.iter().cycle().take(tasks) {
        let s = s.clone();
        takers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.take_requeued(7).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.unwrap());
    }
    taken
}
