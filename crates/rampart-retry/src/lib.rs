//! Retries for any [`tower::Service`](tower_service::Service): only what the classifier calls
//! transient or throttled, with exponential backoff and jitter, a shared retry budget,
//! server hints, an optional overall deadline and an optional per-attempt timeout.
//!
//! # Example
//!
//! ```
//! use rampart_core::{classify::IoErrors, Backoff};
//! use rampart_retry::RetryLayer;
//! use std::io;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = calls.clone();
//! // Fails twice with a connection reset, then answers.
//! let flaky = service_fn(move |name: &'static str| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         if n < 2 { Err(io::Error::from(io::ErrorKind::ConnectionReset)) } else { Ok(format!("hello, {name}")) }
//!     }
//! });
//!
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new(IoErrors)
//!             .name("greeter")
//!             .backoff(Backoff::builder().base_delay(Duration::from_millis(100)).build()?)
//!             .deadline(Duration::from_secs(5)),
//!     )
//!     .service(flaky);
//!
//! assert_eq!(svc.oneshot("rampart").await?, "hello, rampart");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(()) }
//! ```
//!
//! # What is retried
//!
//! The [`Classify`](rampart_core::Classify)er sees each attempt's result. Transient and
//! throttled outcomes are retried, up to `max_retries` times; permanent and rejected ones are
//! returned at once. A per-attempt timeout is transient. An open circuit
//! ([`CircuitOpen`](rampart_core::CircuitOpen)) from an inner breaker is retried only when a
//! deadline is set and the breaker's `retry_in` ends before it; then the layer waits exactly
//! `retry_in`. Errors from another layer that already gave up (a nested retry's budget or
//! deadline) are never retried.
//!
//! A hint from the server (the outcome's `retry_after`, from `Retry-After` or Google's
//! `retryDelay`) replaces the backoff's delay, capped at `max_delay`. With a deadline, no
//! attempt starts if the wait before it would cross the deadline.
//!
//! When the layer gives up on a *response* that classified as a failure (an HTTP 503), it
//! returns that response, so the caller can read it; when it gives up on an *error*, the
//! error says why ([`ErrorKind::BudgetExhausted`](rampart_core::ErrorKind::BudgetExhausted),
//! [`DeadlineExceeded`](rampart_core::ErrorKind::DeadlineExceeded),
//! [`NotReplayable`](rampart_core::ErrorKind::NotReplayable)) and keeps the last failure.
//!
//! # Clone
//!
//! [`Retry`] is `Clone` when the inner service is. Clones share the [`RetryBudget`] and the
//! settings, and cloning does not allocate. The layer owns everything it holds: each service
//! it makes gets a few small allocations (links) with the settings, the budget and a copy of
//! the inner service, shared by the service and its clones; each call in flight holds a
//! reference to its thread's link, so a call stays budgeted even after its service is
//! dropped (as with `oneshot`), and everything is freed with the last service and call
//! using it. Nothing is interned or registered process-wide.
//!
//! A healthy service's success path only reads the budget (a full budget takes no deposits;
//! a budget below its cap takes them in a per-thread stripe, see [`budget`]); the one
//! write per call to memory calls on other threads may share is that reference count, on
//! its thread's link (four per service: calls on up to four threads never share one). A
//! call that needs a retry clones its own handle on the inner service — from the copy the
//! layer keeps with the settings, when the first retry is due — and polls it for readiness
//! before every retry; a call that succeeds first time clones no service (tower's `Retry`
//! clones it for every call).
//!
//! # Cancel safety
//!
//! Dropping a response future cancels the attempt in flight and any pending retry; nothing
//! is left running in the background.
//!
//! # Errors
//!
//! The error type is [`rampart_core::Error<E>`](rampart_core::Error), where `E` is the inner
//! service's own error (inner rampart layers' `Error<E>` passes through without nesting, see
//! [`IntoError`](rampart_core::IntoError)). It carries the number of attempts made and the
//! time taken.
//!
//! # Optional features
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `http` | `BufferBodyLayer` and `HttpReplay`: replay `http::Request`s with streaming bodies | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
pub mod future;
mod layer;
pub mod observe;
mod replay;
mod service;
mod timeout;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

pub use budget::{RetryBudget, RetryBudgetBuilder};
pub use layer::RetryLayer;
pub use replay::{CloneReplay, KeepsRequest, Replay};
pub use service::{CloneService, Retry};
pub use timeout::{AttemptTimeout, AttemptTimeoutLayer, TimeoutFuture};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use http::{BufferBody, BufferBodyLayer, HttpReplay, ReplayBody};
