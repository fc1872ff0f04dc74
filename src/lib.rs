//! rampart: tower middleware that makes calls to flaky dependencies survivable.
//!
//! One policy model ([`Outcome`] + [`Classify`]) drives every layer, so an HTTP API, a
//! database and Redis share the same semantics: retries ([`RetryLayer`]), a circuit breaker
//! ([`CircuitBreakerLayer`]) and dead-lettering ([`DeadLetterLayer`]); [`Policy`] stacks them
//! for one downstream service from a builder or a config file.
//!
//! # Example
//!
//! ```
//! use rampart::{classify::IoErrors, Backoff, RetryLayer};
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new(IoErrors)
//!             .name("inventory")
//!             .backoff(Backoff::builder().max_retries(2).base_delay(Duration::from_millis(50)).build()?)
//!             .deadline(Duration::from_secs(2)),
//!     )
//!     .service(service_fn(|sku: u32| async move { Ok::<_, std::io::Error>(sku * 2) }));
//! assert_eq!(svc.oneshot(21).await?, 42);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `retry` | [`RetryLayer`], [`RetryBudget`] | yes |
//! | `breaker` | [`CircuitBreakerLayer`], keyed breakers, transition events | yes |
//! | `dlq` | [`DeadLetterLayer`], the memory store, fallback, redrive | yes |
//! | `sqlite` | the SQLite dead-letter store (`dlq::SqliteStore`), the embedded default | no |
//! | `redis` | the Redis dead-letter store, `redis::RedisClassifier`, `redis::Enqueue` | no |
//! | `postgres` | `postgres::PostgresClassifier`, `postgres::PgService`, the PostgreSQL dead-letter store (`dlq::PostgresStore`) | no |
//! | `policy` | [`Policy`], [`Policies`]: one layer per downstream service | yes |
//! | `config` | `Policies::load`: TOML file + environment, presets and profiles | no |
//! | `metrics` | the reference design's series through the `metrics` facade | no |
//! | `prometheus` | `observe::prometheus_builder` with the reference buckets | no |
//! | `client` | `client::HttpClient` (hyper-util + rustls; collected or streamed bodies) and `client::HttpClassifier` | no (implied by `gemini`) |
//! | `http2` | HTTP/2 for `client::HttpClient` (ALPN `h2`, `http2_only` for h2c) | no |
//! | `tower-http` | `client::FromTowerHttp` / `client::IntoTowerHttp`: tower-http's response classifiers as rampart's and back | no |
//! | `gemini` | `gemini::GeminiClassifier`, TTS request and audio decoding helpers | no |
//! | `grpc` | `grpc::GrpcClassifier` (status in headers or trailers, A6 mapping per method, pushback, `RetryInfo`), `grpc::GrpcLayer` for a tonic `Channel` | no |
//! | `reqwest` | `reqwest::ReqwestService` (a `reqwest::Client` as a tower service), `reqwest::ReqwestClassifier`, `reqwest::ReqwestReplay` | no |
//! | `sqlx` | `sqlx::SqlxClassifier`, `sqlx::TxService` (PostgreSQL driver only) | no |
//! | `http` | replay `http::Request`s with streaming bodies (`BufferBodyLayer`, `HttpReplay`) | no |
//! | `chaos` | `chaos::ChaosLayer`: seeded fault injection from a parseable spec | no |
//! | `full` | everything | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The shapes a tower user gets wrong must not compile (E0277, with rampart's message): each
/// case of `crates/rampart-ui/tests/ui` (whose trybuild test pins the messages' text) as a
/// `compile_fail` doctest too, checked against this crate with the features under test
/// (about 1 s for the five).
#[cfg(all(doctest, feature = "http"))]
#[doc = concat!("```compile_fail,E0277\n", include_str!("../crates/rampart-ui/tests/ui/box_service.rs"), "```")]
#[doc = concat!("```compile_fail,E0277\n", include_str!("../crates/rampart-ui/tests/ui/streaming_body.rs"), "```")]
#[doc = concat!("```compile_fail,E0277\n", include_str!("../crates/rampart-ui/tests/ui/json_extractor.rs"), "```")]
#[doc = concat!("```compile_fail,E0277\n", include_str!("../crates/rampart-ui/tests/ui/foreign_error.rs"), "```")]
#[doc = concat!("```compile_fail,E0277\n", include_str!("../crates/rampart-ui/tests/ui/boxed_error_classifier.rs"), "```")]
pub struct CompileFailDoctests;

/// Fault injection: [`ChaosLayer`](chaos::ChaosLayer) and its spec.
#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
pub mod chaos {
    pub use rampart_chaos::*;
}
#[cfg(feature = "policy")]
mod breaker_key;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
#[cfg(feature = "gemini")]
#[cfg_attr(docsrs, doc(cfg(feature = "gemini")))]
pub mod gemini;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub mod observe;
#[cfg(feature = "policy")]
mod policy;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;

#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub use breaker_key::BreakerKey;
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub use policy::{
    breaker_for, default_breaker, BudgetSettings, DeadLetterSettings, KeyedPolicyService, Policies,
    Policy, PolicyBuilder, PolicyLayer, PolicyService,
};
#[cfg(feature = "policy")]
#[cfg_attr(docsrs, doc(cfg(feature = "policy")))]
pub use policy::{HttpPolicyService, PolicyBreaker, PolicyBreakerLayer, MAX_BREAKER_KEYS};
#[cfg(all(feature = "policy", feature = "http"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "policy", feature = "http"))))]
pub use policy::{StreamingPolicyLayer, StreamingPolicyService};

pub use rampart_core::{
    backoff, classify, leaf_error, time, Backoff, BackoffBuilder, BoxError, CircuitOpen, Classify,
    ConfigError, Error, ErrorKind, IntoError, Jitter, Name, NotReplayable, Outcome, Timeout,
    MAX_DURATION,
};
pub use rampart_core::{error_chain_find, BoxedError, Leaf, LeafLayer};

/// The retry layer: [`RetryLayer`], its budget and its observation seam.
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry {
    pub use rampart_retry::*;
}

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use rampart_retry::{Retry, RetryBudget, RetryLayer};

/// The circuit breaker: [`CircuitBreakerLayer`], keyed breakers, states and transitions.
#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub mod breaker {
    pub use rampart_breaker::*;
}

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub use rampart_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};

/// Dead letters: [`DeadLetterLayer`], records, stores (memory, SQLite, PostgreSQL, Redis),
/// fallback, redrive.
#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub mod dlq {
    pub use rampart_dlq::*;
}

#[cfg(feature = "dlq")]
#[cfg_attr(docsrs, doc(cfg(feature = "dlq")))]
pub use rampart_dlq::{DeadLetter, DeadLetterLayer, DeadLetterRecord, DeadLetterStore};

/// Durable job retries on apalis workers: [`JobLayer`](jobs::JobLayer), [`JobPolicy`](jobs::JobPolicy)
/// (`tts_task`), countdowns in the backend, the breaker's deferral, dead letters once.
#[cfg(feature = "jobs")]
#[cfg_attr(docsrs, doc(cfg(feature = "jobs")))]
pub mod jobs {
    pub use rampart_jobs::*;
}
