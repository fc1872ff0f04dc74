//! PostgreSQL through rampart: the tokio-postgres classifier, and a reconnecting connection
//! as a tower service that runs one transaction per call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rampart_core::{Classify, Error, Outcome};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, NoTls, Transaction};
use tower_service::Service;

/// The outcome of a tokio-postgres error: a closed connection or I/O failure, SQLSTATE class
/// 08 (connection exception), `40001` serialization_failure, `40P01` deadlock_detected,
/// `57P01` admin_shutdown (a terminated backend), `57P02`, `57P03` and `53300`
/// too_many_connections are transient; class 23 (integrity constraint violations) and 42
/// (syntax, undefined objects) are rejected; the rest permanent.
///
/// # Example
///
/// ```
/// use rampart::postgres::sqlstate_outcome;
/// use rampart::Outcome;
///
/// assert_eq!(sqlstate_outcome("40001"), Outcome::TRANSIENT);
/// assert_eq!(sqlstate_outcome("23505"), Outcome::Rejected);
/// ```
pub fn pg_error(e: &tokio_postgres::Error) -> Outcome {
    if e.is_closed() {
        return Outcome::TRANSIENT;
    }
    if let Some(code) = e.code() {
        return sqlstate_outcome(code.code());
    }
    // No SQLSTATE: an I/O error, a failed connect, a protocol error.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if s.is::<std::io::Error>() {
            return Outcome::TRANSIENT;
        }
        cur = s.source();
    }
    Outcome::Permanent
}

/// The outcome of a SQLSTATE code (see [`pg_error`]).
pub fn sqlstate_outcome(code: &str) -> Outcome {
    let transient = [
        SqlState::T_R_SERIALIZATION_FAILURE.code(),
        SqlState::T_R_DEADLOCK_DETECTED.code(),
        SqlState::ADMIN_SHUTDOWN.code(),
        SqlState::CRASH_SHUTDOWN.code(),
        SqlState::CANNOT_CONNECT_NOW.code(),
        SqlState::TOO_MANY_CONNECTIONS.code(),
    ];
    if code.starts_with("08") || transient.contains(&code) {
        Outcome::TRANSIENT
    } else if code.starts_with("23") || code.starts_with("42") {
        Outcome::Rejected
    } else {
        Outcome::Permanent
    }
}

/// Classifies tokio-postgres errors with [`pg_error`]; every `Ok` is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresClassifier;

impl<Res> Classify<Res, tokio_postgres::Error> for PostgresClassifier {
    fn classify(&self, result: Result<&Res, &tokio_postgres::Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => pg_error(e),
        }
    }
}

/// Work to do in one transaction. Implement it for your operations; retries run it again in a
/// new transaction, so make it idempotent where a repeat could do harm (see the
/// `postgres_client` example: an operation id recorded in the same transaction).
pub trait Transact: Send + Sync + 'static {
    /// What the transaction returns.
    type Output: Send + 'static;
    /// Runs the work inside `tx` (committed by the service when this returns `Ok`).
    fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a>>;
}

/// One PostgreSQL connection as a tower service: each call runs a [`Transact`] in its own
/// transaction at the configured isolation level and commits it. When the connection breaks
/// (a terminated backend, a restart), the next call connects afresh, so a retry runs on a new
/// connection. Cloning shares the connection (calls on it are serialised).
#[derive(Clone)]
pub struct PgService {
    url: Arc<str>,
    isolation: IsolationLevel,
    client: Arc<Mutex<Option<Client>>>,
}

impl std::fmt::Debug for PgService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgService")
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl PgService {
    /// A service for the database at `url` (`postgres://user@host:port/db`), connecting on the
    /// first call, running transactions at READ COMMITTED.
    pub fn new(url: &str) -> Self {
        PgService {
            url: Arc::from(url),
            isolation: IsolationLevel::ReadCommitted,
            client: Arc::default(),
        }
    }

    /// Runs transactions at `level`.
    #[must_use]
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = level;
        self
    }

    /// The server process id of the current connection, if connected (for tests that
    /// terminate it).
    pub async fn backend_pid(&self) -> Option<i32> {
        let guard = self.client.lock().await;
        let c = guard.as_ref()?;
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()
            .map(|r| r.get(0))
    }
}

impl<T: Transact> Service<Arc<T>> for PgService {
    type Response = T::Output;
    type Error = Error<tokio_postgres::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<T::Output, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, op: Arc<T>) -> Self::Future {
        let (url, isolation, client) = (self.url.clone(), self.isolation, self.client.clone());
        Box::pin(async move {
            let mut guard = client.lock().await;
            let mut c = match guard.take() {
                Some(c) if !c.is_closed() => c,
                _ => {
                    let (c, connection) = tokio_postgres::connect(&url, NoTls)
                        .await
                        .map_err(Error::from_inner)?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    c
                }
            };
            let result = run(&mut c, isolation, &*op).await;
            // Keep the connection unless it broke; the next call reconnects.
            match &result {
                Err(e) if e.is_closed() || e.code().is_none() => {}
                _ => *guard = Some(c),
            }
            result.map_err(Error::from_inner)
        })
    }
}

async fn run<T: Transact + ?Sized>(
    c: &mut Client,
    isolation: IsolationLevel,
    op: &T,
) -> Result<T::Output, tokio_postgres::Error> {
    let tx = c
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await?;
    let out = op.run(&tx).await?;
    tx.commit().await?;
    Ok(out)
}
