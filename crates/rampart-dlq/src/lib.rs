//! Dead-lettering for any [`tower::Service`](tower_service::Service): a request that
//! finally fails is recorded once, durably, with its true attempt count, for an operator to
//! inspect, fix and redrive.
//!
//! # Example
//!
//! ```
//! use rampart_core::{classify::IoErrors, Backoff};
//! use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, DeadLetterStore, ListQuery, MemoryStore};
//! use rampart_retry::RetryLayer;
//! use std::io;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::default();
//! let svc = ServiceBuilder::new()
//!     .layer(DeadLetterLayer::new(
//!         DeadLetterConfig::builder().name("orders").classifier(IoErrors).max_attempts(3).build()?,
//!         store.clone(),
//!     ))
//!     .layer(RetryLayer::new(IoErrors).backoff(Backoff::builder().max_retries(2).base_delay(Duration::from_millis(10)).build()?))
//!     .service(service_fn(|_order: u64| async { Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset)) }));
//!
//! let err = svc.oneshot(42).await.unwrap_err();
//! assert_eq!(err.attempts(), 3); // the caller gets the original error
//! let page = store.list(ListQuery::newest(10)).await?;
//! assert_eq!(page.records.len(), 1); // recorded once, not once per attempt
//! assert_eq!(page.records[0].attempts, 3);
//! assert_eq!(page.records[0].reason.as_str(), "retries_exhausted");
//! # Ok(()) }
//! ```
//!
//! # What is recorded
//!
//! The layer sits outermost (the stack of the repository's docs/architecture.md) and sees each call's final outcome
//! once. It records, by default:
//!
//! | final outcome | reason |
//! |---|---|
//! | an error or response the classifier calls permanent | `permanent` |
//! | a transient one after the retries ran out (incl. attempt timeouts) | `retries_exhausted` |
//! | the retry budget stopped the retries | `budget_exhausted` |
//! | the deadline passed | `deadline_exceeded` |
//! | a circuit breaker rejected the call | `circuit_open` |
//! | the request could not be replayed | `not_replayable` |
//!
//! Success and `rejected` (the caller's own 4xx) write nothing; every reason can be switched
//! on or off with [`DeadLetterConfigBuilder::record`]. The caller always gets the original result,
//! unchanged.
//!
//! # Durability
//!
//! By default the record is in the store before the caller sees the error. The embedded
//! store is `SqliteStore` (feature `sqlite`): one SQLite file in WAL mode, each write
//! acknowledged after its transaction committed with `synchronous = FULL`, shared safely by
//! the app, the `rampart` CLI and other instances. Wrap a primary store in [`Fallback`] to
//! keep records locally while the primary (Redis) is down and drain them to it later; ids are stable and pushes idempotent, so nothing is written twice.
//! [`DeadLetterConfigBuilder::background`] hands records to a bounded queue instead (documented loss
//! window: what is queued when the process dies). The queue is not dropped with the layer:
//! its writer stores every queued record, and a [`FlushHandle`] waits for that at shutdown.
//!
//! # Secrets
//!
//! Extractors and error text go through a [`Redactor`] before anything is encoded: names
//! are compared normalised (case, `-`/`_`, percent-decoding, camelCase), so `Authorization`,
//! `X-Api-Key`, `apiKey`, `access%5Ftoken`, `client_secret`, `token_value`, … in headers,
//! query strings, form bodies and JSON bodies at any depth become `[redacted]`, and so do
//! bearer/basic credentials, Google API keys, JWTs, URL passwords and long high-entropy
//! tokens anywhere in text or binary bodies (see [`redact`]). Free text is truncated to 500
//! characters. The reference design's IP and user agent are kept only on opt-in
//! ([`TtsExtractor::keep_client_info`]).
//!
//! # Bounded records
//!
//! Every record is capped ([`DEFAULT_MAX_RECORD_BYTES`], 1 MiB, by default): extractors cut
//! bodies and payloads to their limits and every store cuts a larger record with
//! [`DeadLetterRecord::fit`] before it acknowledges it, marking it `truncated` with its
//! original size. Bodies are kept byte-exact (UTF-8 text, or base64 for binary); a request
//! that was cut or changed by redaction is never redriven ([`DeadLetterRecord::kept_whole`]).
//!
//! # Clone
//!
//! Clones of the service share the layer's store and counters.
//!
//! # Cancel safety
//!
//! Dropping the response future before the inner call ends records nothing. Dropping it while
//! the record is being written cancels the write (the durable default writes before the
//! future completes; use a [`Fallback`] store or background mode where callers time out).
//!
//! # Errors
//!
//! [`rampart_core::Error<E>`], unchanged from the inner service.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod extract;
pub mod future;
mod layer;
mod record;
pub mod redact;
mod redrive;
mod service;
mod source;
pub mod store;

pub use config::{DeadLetterConfig, DeadLetterConfigBuilder};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use extract::{BodyBytes, HttpExtractor};
pub use extract::{Extract, Extracted, JsonExtractor, TtsExtractor, TtsRequest};
pub use layer::{DeadLetterEvent, DeadLetterLayer, DeadLetterStats, FlushHandle, Observer};
pub use record::{
    DeadLetterReason, DeadLetterRecord, NotKeptWhole, ParseIdError, RecordId, RequestPart,
    Timestamp, DEFAULT_MAX_RECORD_BYTES, MIN_RECORD_BYTES, RECORD_VERSION,
};
pub use redact::Redactor;
pub use redrive::{redrive, RedriveReport, Skip, SkipReason};
pub use service::DeadLetter;
pub use source::{CopyWith, FromInner, RequestSource};
pub use store::fallback::Fallback;
pub use store::memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::postgres::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::redis::RedisStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::sqlite::SqliteStore;
pub use store::{DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable};
