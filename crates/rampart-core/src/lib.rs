//! rampart's one policy model, shared by every layer.
//!
//! Every rampart layer asks the same question of a finished call — *what happened?* —
//! through one trait, [`Classify`], whose answer is an [`Outcome`]. The same classifier
//! therefore drives retries, the circuit breaker's health count and dead-lettering.
//! [`Backoff`] and [`Jitter`] say how long to wait between attempts, and [`Error`] is the
//! typed error every layer returns, keeping the inner service's error matchable.
//!
//! # Example
//!
//! ```
//! use rampart_core::{Backoff, Classify, Jitter, Outcome};
//! use std::time::Duration;
//!
//! // A classifier is any `Fn(Result<&Res, &E>) -> Outcome`.
//! let classify = |r: Result<&u16, &std::io::Error>| match r {
//!     Ok(s) if *s < 400 => Outcome::Success,
//!     Ok(429) => Outcome::THROTTLED,
//!     Ok(s) if *s >= 500 => Outcome::TRANSIENT,
//!     Ok(_) => Outcome::Rejected,
//!     Err(e) => rampart_core::classify::io_error(e),
//! };
//! assert!(classify.classify(Ok(&503)).is_retryable());
//!
//! // The reference design's backoff: 3 retries, 1 s, ×2, capped at 60 s, ±10 % jitter.
//! let backoff = Backoff::default();
//! assert_eq!(backoff.nominal_delay(2), Duration::from_secs(4));
//! let delays: Vec<Duration> = backoff.schedule(0).collect();
//! assert_eq!(delays.len(), 3);
//! # Ok::<(), rampart_core::ConfigError>(())
//! ```
//!
//! # Errors
//!
//! Configuration is validated into [`ConfigError`], which names the field and the bad value;
//! nothing in this crate panics on input.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
mod boxed;
pub mod classify;
mod downcast;
mod error;
mod leaf;
mod name;
mod outcome;
pub mod record;
pub mod replay;
pub mod time;

pub use backoff::{Backoff, BackoffBuilder, Jitter, Schedule};
pub use boxed::{error_chain_find, BoxedError};
pub use classify::Classify;
pub use error::{
    BoxError, CircuitOpen, ConfigError, Error, ErrorKind, IntoError, NotReplayable, Timeout,
};
pub use leaf::{Leaf, LeafFuture, LeafLayer};
pub use name::Name;
pub use time::{instant_after, MAX_DURATION};

/// Defines `get_ref`, `get_mut` and `into_inner` for a middleware service whose inner
/// service is the field `inner` of type `$inner` (tower-http's `define_inner_service_accessors!`).
/// Use it inside an `impl` block.
///
/// # Example
///
/// ```
/// pub struct Wrap<S> { inner: S }
/// impl<S> Wrap<S> {
///     rampart_core::inner_service_accessors!(S);
/// }
/// let mut w = Wrap { inner: 1 };
/// *w.get_mut() += 1;
/// assert_eq!(*w.get_ref(), 2);
/// assert_eq!(w.into_inner(), 2);
/// ```
#[macro_export]
macro_rules! inner_service_accessors {
    ($inner:ty) => {
        /// A reference to the inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.inner
        }

        /// A mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> $inner {
            self.inner
        }
    };
}
pub use outcome::Outcome;
