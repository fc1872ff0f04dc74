//! A circuit breaker for any [`tower::Service`](tower_service::Service): fail fast while a
//! dependency is down, probe it back when it may have recovered.
//!
//! # Example
//!
//! ```
//! use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
//! use rampart_core::classify::IoErrors;
//! use std::io;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreakerLayer::new(
//!     CircuitBreakerConfig::builder()
//!         .name("db")
//!         .consecutive_failures(Some(2))
//!         .recovery_timeout(Duration::from_secs(30))
//!         .build()?,
//! )
//! .classifier(IoErrors);
//! let handle = breaker.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|_: ()| async { Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionRefused)) }));
//!
//! for _ in 0..2 {
//!     let _ = svc.clone().oneshot(()).await; // two failures in a row...
//! }
//! assert_eq!(handle.state(), State::Open); // ...open the circuit
//! let err = svc.clone().oneshot(()).await.unwrap_err();
//! assert_eq!(err.circuit_open().map(|o| o.retry_in), Some(Duration::from_secs(30)));
//! # Ok(()) }
//! ```
//!
//! # Semantics
//!
//! - **Closed**: calls pass. The circuit opens when any configured condition holds:
//!   `consecutive_failures` in a row (a success resets the count — the reference design's bug
//!   fixed), or, over a [`Window`] of the last N calls or N seconds and once it holds
//!   `minimum_calls`, a failure rate or a slow-call rate at or above its threshold.
//!   Which outcomes are failures is set by [`FailureKinds`]: transient and permanent by
//!   default, not throttling (429) and not the caller's own 4xx.
//! - **Open**: calls fail at once with [`CircuitOpen`](rampart_core::CircuitOpen)
//!   `{ service, retry_in }` and never reach the inner service. The circuit stays open for
//!   `recovery_timeout` (60 s by default), doubling on every trip that follows a failed probe,
//!   up to `max_recovery_timeout`.
//! - **Half-open**: at most `permitted_probes` calls are in flight at once; others are
//!   rejected with `retry_in` zero. `success_threshold` successful probes close the circuit;
//!   one failed probe reopens it. A probe whose future is dropped gives its slot back.
//! - **Forced open** and **disabled** are operator states, set through a [`BreakerHandle`].
//!
//! Every transition emits a `tracing` event (warn when opening), reaches listeners added with
//! [`CircuitBreakerConfigBuilder::on_transition`], and is broadcast to [`BreakerHandle::subscribe`]rs.
//!
//! # Readiness
//!
//! The breaker decides in `poll_ready`, like tower's `LoadShed`. While open, `poll_ready`
//! returns `Ready(Ok(()))` without polling the inner service, and `call` returns an
//! immediately ready `CircuitOpen` error. Holding `poll_ready` pending instead would make
//! `Buffer` workers and load balancers wait on a dependency that is known to be down, starving
//! every other caller; that behaviour is an explicit opt-in
//! ([`backpressure`](CircuitBreakerConfigBuilder::backpressure)).
//!
//! # Clone
//!
//! The layer owns the breaker's state (its state word, counters and window) behind an `Arc`:
//! every service it makes, every clone of those, every [`BreakerHandle`] and every call in
//! flight shares it, and it is freed with the last of them. Nothing lives in process-wide
//! memory. The layer makes a few small links to the breaker (at least one per count-window
//! stripe: as many as the machine has cores, at most 8), shared by its services and their
//! clones, so cloning a service does not allocate. A call in flight holds its thread's link:
//! one reference count per call, in cache lines that only calls on that thread write, so
//! calls on different threads do not contend, whichever clone they go through.
//! A closed breaker's success path otherwise only reads shared memory: the failure streak is
//! written only to end a streak, and a count window is split into stripes, one per link.
//! A clone starts without an admission.
//!
//! # Cancel safety
//!
//! Dropping a response future cancels the inner call; a probe's slot is given back, and no
//! outcome is recorded for it.
//!
//! # Errors
//!
//! [`rampart_core::Error<E>`](rampart_core::Error): the inner service's error unchanged
//! (`ErrorKind::Inner`), or `ErrorKind::CircuitOpen` when the breaker rejects the call.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
pub mod config;
mod events;
pub mod future;
mod keyed;
mod layer;
mod service;
mod window;
mod word;

pub use breaker::{BreakerHandle, Snapshot};
pub use config::{CircuitBreakerConfig, CircuitBreakerConfigBuilder, FailureKinds, Window};
pub use events::{CallObserver, CallOutcome, Listener, Reason, State, Transition};

pub use keyed::{
    KeyOf, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, KeyedHandle, DEFAULT_IDLE_TTL,
    DEFAULT_MAX_KEYS, EVICTION_STEPS, MAX_FILTER_SLOTS, MAX_LABEL_BYTES, OVERFLOW_KEY,
};
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
