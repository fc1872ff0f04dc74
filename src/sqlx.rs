//! sqlx (PostgreSQL) through rampart: a classifier for [`sqlx::Error`](::sqlx::Error) and a
//! pool-backed tower service that runs one transaction per call.
//!
//! Only sqlx's PostgreSQL driver is enabled by this feature (rampart's SQLite store links
//! SQLite through rusqlite).
//!
//! # Example
//!
//! ```no_run
//! use rampart::sqlx::{Isolation, SqlxClassifier, Transact, TxService};
//! use rampart::{Backoff, RetryLayer};
//! use sqlx::PgConnection;
//! use std::{future::Future, pin::Pin, sync::Arc};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! struct Bump;
//! impl Transact for Bump {
//!     type Output = i64;
//!     fn run<'a>(&'a self, tx: &'a mut PgConnection)
//!         -> Pin<Box<dyn Future<Output = Result<i64, sqlx::Error>> + Send + 'a>> {
//!         Box::pin(async move {
//!             let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1").fetch_one(&mut *tx).await?;
//!             sqlx::query("UPDATE counter SET n = $1 WHERE id = 1").bind(n + 1).execute(&mut *tx).await?;
//!             Ok(n + 1)
//!         })
//!     }
//! }
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(SqlxClassifier).backoff(Backoff::builder().max_retries(10).build()?))
//!     .service(TxService::new(pool).isolation(Isolation::Serializable));
//! let n = svc.oneshot(Arc::new(Bump)).await?; // serialization failures (40001) are retried
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::sqlx::{PgConnection, PgPool};
use rampart_core::{Classify, Error, Outcome};
use tower_service::Service;

/// The outcome of an [`sqlx::Error`](::sqlx::Error):
///
/// - a database error by its SQLSTATE, as [`crate::sqlx::sqlstate_outcome`] says: class 08,
///   `40001`, `40P01`, `57P01`–`57P03` and `53300` transient; classes 23 and 42 rejected;
///   the rest permanent;
/// - I/O errors, TLS errors, a pool that timed out or was closed, a crashed worker and a
///   failed `BEGIN` transient;
/// - `RowNotFound`, decode/encode errors, missing columns or types, configuration and
///   protocol errors permanent.
///
/// # Example
///
/// ```
/// use rampart::sqlx::sqlx_error;
/// use rampart::Outcome;
///
/// assert_eq!(sqlx_error(&sqlx::Error::PoolTimedOut), Outcome::TRANSIENT);
/// assert_eq!(sqlx_error(&sqlx::Error::RowNotFound), Outcome::Permanent);
/// ```
pub fn sqlx_error(e: &::sqlx::Error) -> Outcome {
    use ::sqlx::Error as E;
    match e {
        E::Database(db) => match db.code() {
            Some(code) => sqlstate_outcome(&code),
            None => Outcome::Permanent,
        },
        // Any I/O failure talking to the server may go away with a new connection.
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::BeginFailed => Outcome::TRANSIENT,
        _ => Outcome::Permanent,
    }
}

/// The outcome of a PostgreSQL SQLSTATE code: class `08` (connection exception), `40001`
/// serialization_failure, `40P01` deadlock_detected, `57P01` admin_shutdown (a terminated
/// backend), `57P02` crash_shutdown, `57P03` cannot_connect_now and `53300`
/// too_many_connections are transient; class `23` (integrity constraints) and `42` (syntax,
/// undefined objects, privileges) are rejected; anything else permanent.
///
/// # Example
///
/// ```
/// use rampart::sqlx::sqlstate_outcome;
/// use rampart::Outcome;
///
/// assert_eq!(sqlstate_outcome("40P01"), Outcome::TRANSIENT);
/// assert_eq!(sqlstate_outcome("23505"), Outcome::Rejected);
/// assert_eq!(sqlstate_outcome("22012"), Outcome::Permanent); // division_by_zero
/// ```
pub fn sqlstate_outcome(code: &str) -> Outcome {
    const TRANSIENT: [&str; 6] = ["40001", "40P01", "57P01", "57P02", "57P03", "53300"];
    if code.starts_with("08") || TRANSIENT.contains(&code) {
        Outcome::TRANSIENT
    } else if code.starts_with("23") || code.starts_with("42") {
        Outcome::Rejected
    } else {
        Outcome::Permanent
    }
}

/// Classifies [`sqlx::Error`](::sqlx::Error)s with [`sqlx_error`]; every `Ok` is a success.
/// Over [`TxService`] (whose error is `rampart::Error<sqlx::Error>`) rampart's layers hand it
/// the inner `sqlx::Error`.
///
/// # Example
///
/// ```
/// use rampart::sqlx::SqlxClassifier;
/// use rampart::{Classify, Outcome};
///
/// let c = SqlxClassifier;
/// assert_eq!(Classify::<(), sqlx::Error>::classify(&c, Err(&sqlx::Error::PoolClosed)), Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), sqlx::Error>::classify(&c, Ok(&())), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlxClassifier;

impl<Res> Classify<Res, ::sqlx::Error> for SqlxClassifier {
    fn classify(&self, result: Result<&Res, &::sqlx::Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => sqlx_error(e),
        }
    }
}

/// Work to do in one transaction. Retries run it again in a new transaction, so make it
/// idempotent where a repeat could do harm (for example record an operation id in the same
/// transaction).
///
/// # Example
///
/// ```
/// use rampart::sqlx::Transact;
/// use sqlx::PgConnection;
/// use std::{future::Future, pin::Pin};
///
/// struct Ping;
/// impl Transact for Ping {
///     type Output = i32;
///     fn run<'a>(&'a self, tx: &'a mut PgConnection)
///         -> Pin<Box<dyn Future<Output = Result<i32, sqlx::Error>> + Send + 'a>> {
///         Box::pin(async move { sqlx::query_scalar("SELECT 1").fetch_one(tx).await })
///     }
/// }
/// ```
pub trait Transact: Send + Sync + 'static {
    /// What the transaction returns.
    type Output: Send + 'static;
    /// Runs the work on the transaction's connection (committed by [`TxService`] when this
    /// returns `Ok`, rolled back otherwise).
    fn run<'a>(
        &'a self,
        tx: &'a mut PgConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Output, ::sqlx::Error>> + Send + 'a>>;
}

/// The isolation level [`TxService`] starts its transactions with.
///
/// # Example
///
/// ```
/// use rampart::sqlx::Isolation;
/// assert_eq!(Isolation::default(), Isolation::ReadCommitted);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// `READ COMMITTED`, PostgreSQL's default.
    #[default]
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`: concurrent read-modify-writes fail with `40001`, which
    /// [`SqlxClassifier`] retries.
    Serializable,
}

impl Isolation {
    fn begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// A [`PgPool`] as a tower service: each call takes a connection from the pool, runs a
/// [`Transact`] in its own transaction at the configured [`Isolation`] and commits it. A
/// broken connection (a terminated backend) is dropped by sqlx rather than returned to the
/// pool, so a retry runs on a fresh one. Cloning shares the pool.
///
/// Errors are `rampart::Error<sqlx::Error>`, so rampart layers stack over it without
/// `leaf_error!`; [`SqlxClassifier`] classifies the inner `sqlx::Error`.
///
/// # Example
///
/// ```no_run
/// use rampart::sqlx::{Isolation, TxService};
///
/// # async fn f() -> Result<(), sqlx::Error> {
/// let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect("postgres://postgres@127.0.0.1/test").await?;
/// let svc = TxService::new(pool).isolation(Isolation::Serializable);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TxService {
    pool: PgPool,
    isolation: Isolation,
}

impl TxService {
    /// A service over `pool`, running transactions at READ COMMITTED.
    pub fn new(pool: PgPool) -> Self {
        TxService {
            pool,
            isolation: Isolation::ReadCommitted,
        }
    }

    /// Runs transactions at `level`.
    #[must_use]
    pub fn isolation(mut self, level: Isolation) -> Self {
        self.isolation = level;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl<T: Transact> Service<Arc<T>> for TxService {
    type Response = T::Output;
    type Error = Error<::sqlx::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<T::Output, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool waits for a connection inside the call (bounded by its acquire timeout).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, op: Arc<T>) -> Self::Future {
        let (pool, isolation) = (self.pool.clone(), self.isolation);
        Box::pin(async move {
            let result: Result<T::Output, ::sqlx::Error> = async {
                let mut tx = pool.begin_with(isolation.begin()).await?;
                let out = op.run(&mut tx).await?;
                tx.commit().await?;
                Ok(out)
            }
            .await;
            result.map_err(Error::from_inner)
        })
    }
}
