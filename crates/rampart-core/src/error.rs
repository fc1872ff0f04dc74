//! Typed errors shared by every rampart layer.
//!
//! A rampart stack never erases the inner service's error: [`Error<E>`] keeps `E` matchable
//! through [`ErrorKind::Inner`] and adds the failures the layers themselves produce, each with
//! the number of attempts made.

use std::borrow::Cow;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::Name;

/// The error every rampart layer returns: what failed, after how many attempts, and how long
/// the logical call took.
///
/// `Display` prints this level only (for example `inner service failed after 3 attempts`);
/// the cause — the inner service's error or the last failure before rampart gave up — is
/// reachable through [`source()`](std::error::Error::source), so error reporters print each
/// level once.
///
/// # Example
///
/// ```
/// use rampart_core::{Error, ErrorKind};
///
/// let err: Error<std::io::Error> =
///     Error::from_inner(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).with_attempts(3);
/// assert_eq!(err.attempts(), 3);
/// match err.kind() {
///     ErrorKind::Inner(io) => assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset),
///     other => panic!("unexpected {other}"),
/// }
/// assert_eq!(err.to_string(), "inner service failed after 3 attempts");
/// ```
pub struct Error<E> {
    // One pointer: a layer's output `Result<Response, Error<E>>` stays as small as the
    // response (16 bytes for a `u64`, instead of 64), and every layer moves it on every
    // successful call; the box is made only when a call fails.
    body: Box<Body<E>>,
}

/// What an [`Error`] holds, behind its one pointer.
struct Body<E> {
    kind: ErrorKind<E>,
    attempts: u32,
    elapsed: Duration,
}

/// What went wrong, as seen by the layer that gave up.
///
/// `BudgetExhausted`, `DeadlineExceeded` and `NotReplayable` say why rampart stopped
/// retrying; each keeps the last attempt's failure, which [`Error::last_failure`] and
/// [`Error::inner`] see through.
#[non_exhaustive]
pub enum ErrorKind<E> {
    /// The inner service failed with its own error.
    Inner(E),
    /// A circuit breaker rejected the call without calling the service.
    CircuitOpen(CircuitOpen),
    /// One attempt ran past its per-attempt timeout.
    Timeout(Timeout),
    /// The call was retryable, but the shared retry budget had no tokens left.
    BudgetExhausted(Box<ErrorKind<E>>),
    /// The overall deadline of the logical call ran out: either during an attempt (`None`)
    /// or because the next backoff delay would have crossed it (`Some(last failure)`).
    DeadlineExceeded(Option<Box<ErrorKind<E>>>),
    /// The call was retryable, but the request could not be replayed.
    NotReplayable {
        /// Why the request could not be replayed.
        reason: NotReplayable,
        /// The failure of the one attempt that was made.
        last: Box<ErrorKind<E>>,
    },
}

/// A circuit breaker is open and rejected the call without touching the service.
///
/// # Example
///
/// ```
/// use rampart_core::{CircuitOpen, Name};
/// use std::time::Duration;
///
/// let e = CircuitOpen::new(Name::new("gemini_api"), Duration::from_secs(30));
/// assert_eq!(e.to_string(), "circuit breaker is open for gemini_api (half-open in 30s)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    /// The downstream service whose breaker is open.
    pub service: Name,
    /// How long until the breaker lets a probe through (zero if a probe may go now but all
    /// probe slots are taken).
    pub retry_in: Duration,
}

impl CircuitOpen {
    /// A rejection by `service`'s breaker, which will admit a probe in `retry_in`.
    pub const fn new(service: Name, retry_in: Duration) -> Self {
        CircuitOpen { service, retry_in }
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker is open for {} (half-open in {:?})",
            self.service, self.retry_in
        )
    }
}

impl StdError for CircuitOpen {}

/// One attempt ran past its per-attempt timeout.
///
/// # Example
///
/// ```
/// use rampart_core::Timeout;
/// use std::time::Duration;
///
/// assert_eq!(Timeout::new(Duration::from_millis(250)).to_string(), "attempt timed out after 250ms");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// The per-attempt timeout that elapsed.
    pub after: Duration,
}

impl Timeout {
    /// A timeout of `after`.
    pub const fn new(after: Duration) -> Self {
        Timeout { after }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.after)
    }
}

impl StdError for Timeout {}

/// Why a request could not be replayed for a retry.
///
/// # Example
///
/// ```
/// use rampart_core::NotReplayable;
///
/// let r = NotReplayable::new("request body exceeds the replay buffer limit of 65536 bytes");
/// assert_eq!(r.reason(), "request body exceeds the replay buffer limit of 65536 bytes");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReplayable {
    reason: Cow<'static, str>,
}

impl NotReplayable {
    /// A reason, in words.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        NotReplayable {
            reason: reason.into(),
        }
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request cannot be replayed: {}", self.reason)
    }
}

impl StdError for NotReplayable {}

// ===== impl Error =====

impl<E> Error<E> {
    /// An error of `kind` after one attempt.
    pub fn new(kind: ErrorKind<E>) -> Self {
        Error {
            body: Box::new(Body {
                kind,
                attempts: 1,
                elapsed: Duration::ZERO,
            }),
        }
    }

    /// The inner service's own error, after one attempt.
    pub fn from_inner(inner: E) -> Self {
        Error::new(ErrorKind::Inner(inner))
    }

    /// Sets the number of attempts made.
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.body.attempts = attempts;
        self
    }

    /// Sets the elapsed time of the logical call.
    #[must_use]
    pub fn with_elapsed(mut self, elapsed: Duration) -> Self {
        self.body.elapsed = elapsed;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind<E> {
        &self.body.kind
    }

    /// Consumes the error, returning what went wrong.
    pub fn into_kind(self) -> ErrorKind<E> {
        self.body.kind
    }

    /// How many attempts were made (1 if the call was never retried).
    pub fn attempts(&self) -> u32 {
        self.body.attempts
    }

    /// How long the logical call took, as measured by the layer that gave up.
    ///
    /// rampart reads no clock on the success path, so a retry layer without a deadline
    /// measures from the end of the first failed attempt; with a deadline (or when the error
    /// comes from a layer that timed the whole call) it measures from the start of the call.
    pub fn elapsed(&self) -> Duration {
        self.body.elapsed
    }

    /// The last attempt's failure, seeing through `BudgetExhausted`, `DeadlineExceeded` and
    /// `NotReplayable`. `None` only for a deadline that expired during the first attempt.
    pub fn last_failure(&self) -> Option<&ErrorKind<E>> {
        self.body.kind.last_failure()
    }

    /// The inner service's error, if the last failure was one.
    pub fn inner(&self) -> Option<&E> {
        match self.last_failure() {
            Some(ErrorKind::Inner(e)) => Some(e),
            _ => None,
        }
    }

    /// Consumes the error, returning the inner service's error, if the last failure was one.
    pub fn into_inner(self) -> Option<E> {
        self.body.kind.into_last_failure().and_then(|k| match k {
            ErrorKind::Inner(e) => Some(e),
            _ => None,
        })
    }

    /// The breaker rejection, if the last failure was one.
    pub fn circuit_open(&self) -> Option<&CircuitOpen> {
        match self.last_failure() {
            Some(ErrorKind::CircuitOpen(c)) => Some(c),
            _ => None,
        }
    }

    /// `true` if the retry budget stopped the retries.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self.body.kind, ErrorKind::BudgetExhausted(_))
    }

    /// `true` if the overall deadline stopped the call.
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self.body.kind, ErrorKind::DeadlineExceeded(_))
    }

    /// `true` if the last failure was a per-attempt timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self.last_failure(), Some(ErrorKind::Timeout(_)))
    }

    /// Maps the inner service's error type.
    pub fn map_inner<F, T>(self, f: F) -> Error<T>
    where
        F: FnOnce(E) -> T,
    {
        let Body {
            kind,
            attempts,
            elapsed,
        } = *self.body;
        Error {
            body: Box::new(Body {
                kind: kind.map_inner(f),
                attempts,
                elapsed,
            }),
        }
    }
}

impl<E> From<CircuitOpen> for Error<E> {
    fn from(e: CircuitOpen) -> Self {
        Error::new(ErrorKind::CircuitOpen(e))
    }
}

impl<E> From<Timeout> for Error<E> {
    fn from(e: Timeout) -> Self {
        Error::new(ErrorKind::Timeout(e))
    }
}

impl<E: fmt::Debug> fmt::Debug for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.body.kind)
            .field("attempts", &self.body.attempts)
            .field("elapsed", &self.body.elapsed)
            .finish()
    }
}

impl<E> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.body.kind, f)?;
        match self.body.attempts {
            1 => Ok(()),
            n => write!(f, " after {n} attempts"),
        }
    }
}

impl<E: StdError + 'static> StdError for Error<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.body.kind.source()
    }
}

// ===== impl ErrorKind =====

impl<E> ErrorKind<E> {
    /// The last attempt's failure, seeing through the "gave up" kinds.
    pub fn last_failure(&self) -> Option<&ErrorKind<E>> {
        match self {
            ErrorKind::BudgetExhausted(last) | ErrorKind::NotReplayable { last, .. } => {
                last.last_failure()
            }
            ErrorKind::DeadlineExceeded(last) => last.as_deref().and_then(ErrorKind::last_failure),
            other => Some(other),
        }
    }

    fn into_last_failure(self) -> Option<ErrorKind<E>> {
        match self {
            ErrorKind::BudgetExhausted(last) | ErrorKind::NotReplayable { last, .. } => {
                last.into_last_failure()
            }
            ErrorKind::DeadlineExceeded(last) => last.and_then(|l| l.into_last_failure()),
            other => Some(other),
        }
    }

    /// A short, stable, lowercase name, suitable as a metric label or a dead-letter reason:
    /// `inner`, `circuit_open`, `timeout`, `budget_exhausted`, `deadline_exceeded`,
    /// `not_replayable`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Inner(_) => "inner",
            ErrorKind::CircuitOpen(_) => "circuit_open",
            ErrorKind::Timeout(_) => "timeout",
            ErrorKind::BudgetExhausted(_) => "budget_exhausted",
            ErrorKind::DeadlineExceeded(_) => "deadline_exceeded",
            ErrorKind::NotReplayable { .. } => "not_replayable",
        }
    }

    /// Maps the inner service's error type.
    pub fn map_inner<F, T>(self, f: F) -> ErrorKind<T>
    where
        F: FnOnce(E) -> T,
    {
        match self {
            ErrorKind::Inner(e) => ErrorKind::Inner(f(e)),
            ErrorKind::CircuitOpen(c) => ErrorKind::CircuitOpen(c),
            ErrorKind::Timeout(t) => ErrorKind::Timeout(t),
            ErrorKind::BudgetExhausted(last) => {
                ErrorKind::BudgetExhausted(Box::new(last.map_inner(f)))
            }
            ErrorKind::DeadlineExceeded(last) => {
                ErrorKind::DeadlineExceeded(last.map(|l| Box::new(l.map_inner(f))))
            }
            ErrorKind::NotReplayable { reason, last } => ErrorKind::NotReplayable {
                reason,
                last: Box::new(last.map_inner(f)),
            },
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for ErrorKind<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Inner(e) => f.debug_tuple("Inner").field(e).finish(),
            ErrorKind::CircuitOpen(c) => f.debug_tuple("CircuitOpen").field(c).finish(),
            ErrorKind::Timeout(t) => f.debug_tuple("Timeout").field(t).finish(),
            ErrorKind::BudgetExhausted(l) => f.debug_tuple("BudgetExhausted").field(l).finish(),
            ErrorKind::DeadlineExceeded(l) => f.debug_tuple("DeadlineExceeded").field(l).finish(),
            ErrorKind::NotReplayable { reason, last } => f
                .debug_struct("NotReplayable")
                .field("reason", reason)
                .field("last", last)
                .finish(),
        }
    }
}

impl<E> fmt::Display for ErrorKind<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Inner(_) => f.pad("inner service failed"),
            ErrorKind::CircuitOpen(c) => fmt::Display::fmt(c, f),
            ErrorKind::Timeout(t) => fmt::Display::fmt(t, f),
            ErrorKind::BudgetExhausted(_) => f.pad("retry budget exhausted"),
            ErrorKind::DeadlineExceeded(_) => f.pad("deadline exceeded"),
            ErrorKind::NotReplayable { reason, .. } => fmt::Display::fmt(reason, f),
        }
    }
}

impl<E: StdError + 'static> StdError for ErrorKind<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ErrorKind::Inner(e) => Some(e),
            ErrorKind::CircuitOpen(_) | ErrorKind::Timeout(_) => None,
            ErrorKind::BudgetExhausted(last) | ErrorKind::NotReplayable { last, .. } => {
                Some(&**last)
            }
            ErrorKind::DeadlineExceeded(last) => last.as_deref().map(|l| l as _),
        }
    }
}

// ===== IntoError =====

/// Turns a service's error into a rampart [`Error`], so that rampart layers stack without
/// nesting: a layer over another rampart layer passes its `Error<E>` through unchanged,
/// a layer over a plain service wraps the service's error as [`ErrorKind::Inner`].
///
/// Implemented for `Error<E>` (identity) and for the error types tower services commonly
/// return: [`std::io::Error`], [`Infallible`], tower's
/// [`Elapsed`](tower::timeout::error::Elapsed), and — as
/// [`BoxedError`](crate::BoxedError), so that the result is still a `std::error::Error` —
/// [`tower::BoxError`](BoxError), `String` and `&'static str`.
///
/// **A foreign error type** (`reqwest::Error`, `sqlx::Error`, `tonic::Status`,
/// `ParseIntError`, …) needs no impl and no macro: put [`LeafLayer`](crate::LeafLayer)
/// directly over the service (`ServiceBuilder::new().layer(policy).layer(LeafLayer).service(svc)`),
/// which turns its errors into `Error<ThatError>`. For your own error type you may instead
/// use [`leaf_error!`](crate::leaf_error) in the crate that defines it.
///
/// # Example
///
/// ```
/// use rampart_core::{Error, IntoError};
///
/// #[derive(Debug)]
/// struct MyError;
/// rampart_core::leaf_error!(MyError);
///
/// let e: Error<MyError> = MyError.into_error();
/// assert!(e.inner().is_some());
/// let again: Error<MyError> = e.into_error(); // identity
/// assert_eq!(again.attempts(), 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rampart error: rampart layers cannot wrap it",
    label = "the service's error type must implement `rampart::IntoError`",
    note = "put `rampart::LeafLayer` directly over the service (`ServiceBuilder::new().layer(policy).layer(rampart::LeafLayer).service(svc)`) or map its error with `.map_err(rampart::Error::from_inner)`; for your own error type, `rampart::leaf_error!(YourError)` also works"
)]
pub trait IntoError {
    /// The inner service's own error type.
    type Inner;
    /// Converts `self` into a rampart error.
    fn into_error(self) -> Error<Self::Inner>;
}

impl<E> IntoError for Error<E> {
    type Inner = E;
    #[inline]
    fn into_error(self) -> Error<E> {
        self
    }
}

/// The boxed error type used throughout tower.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Implements [`IntoError`] for error types that come from a plain (non-rampart) service, so
/// that rampart layers wrap them as [`ErrorKind::Inner`].
///
/// # Example
///
/// ```
/// #[derive(Debug)]
/// enum DbError { Disconnected }
/// rampart_core::leaf_error!(DbError);
/// ```
#[macro_export]
macro_rules! leaf_error {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::IntoError for $t {
            type Inner = $t;
            #[inline]
            fn into_error(self) -> $crate::Error<$t> {
                $crate::Error::from_inner(self)
            }
        }
    )+};
}

leaf_error!(std::io::Error, Infallible, tower::timeout::error::Elapsed);

/// Boxed errors become [`BoxedError`](crate::BoxedError), which (unlike `BoxError`) is a
/// `std::error::Error`, so `Error<BoxedError>` converts back into a `BoxError`.
impl IntoError for BoxError {
    type Inner = crate::BoxedError;
    #[inline]
    fn into_error(self) -> Error<crate::BoxedError> {
        Error::from_inner(crate::BoxedError::from(self))
    }
}

/// A message becomes a [`BoxedError`](crate::BoxedError) with that text.
impl IntoError for String {
    type Inner = crate::BoxedError;
    fn into_error(self) -> Error<crate::BoxedError> {
        Error::from_inner(crate::BoxedError::new(self))
    }
}

/// A message becomes a [`BoxedError`](crate::BoxedError) with that text.
impl IntoError for &'static str {
    type Inner = crate::BoxedError;
    fn into_error(self) -> Error<crate::BoxedError> {
        Error::from_inner(crate::BoxedError::new(self))
    }
}

// ===== ConfigError =====

/// A configuration value was rejected. The message names the field, the bad value and why.
///
/// # Example
///
/// ```
/// use rampart_core::ConfigError;
///
/// let e = ConfigError::new("backoff_factor", 0.5, "must be at least 1");
/// assert_eq!(e.to_string(), "invalid backoff_factor = 0.5: must be at least 1");
/// assert_eq!(e.field(), "backoff_factor");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} = {value}: {reason}{}", origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default())]
pub struct ConfigError {
    field: Cow<'static, str>,
    value: String,
    reason: Cow<'static, str>,
    origin: Option<String>,
}

impl ConfigError {
    /// `field` was given `value`, which is wrong because of `reason`.
    pub fn new(
        field: impl Into<Cow<'static, str>>,
        value: impl fmt::Debug,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            field: field.into(),
            value: format!("{value:?}"),
            reason: reason.into(),
            origin: None,
        }
    }

    /// A value already rendered as text (as it appeared in a file or variable).
    pub fn raw(
        field: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        ConfigError {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
            origin: None,
        }
    }

    /// Says where the value came from (`rampart.toml line 12`, `environment variable
    /// TTS_MAX_RETRIES`).
    #[must_use]
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Renames the field (e.g. to its full path in a config file).
    #[must_use]
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = field.into();
        self
    }

    /// Where the value came from, if known.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The name of the offending field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The offending value, as written in the message.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the value was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_are_send_sync_static() {
        assert_send_sync_static::<Error<std::io::Error>>();
        assert_send_sync_static::<Error<BoxError>>();
        assert_send_sync_static::<ErrorKind<std::io::Error>>();
        assert_send_sync_static::<CircuitOpen>();
        assert_send_sync_static::<Timeout>();
        assert_send_sync_static::<NotReplayable>();
        assert_send_sync_static::<ConfigError>();
        fn is_std_error<T: StdError + Send + Sync + 'static>() {}
        is_std_error::<Error<std::io::Error>>();
    }

    #[test]
    fn display_is_this_level_only_and_source_walks_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let err =
            Error::new(ErrorKind::BudgetExhausted(Box::new(ErrorKind::Inner(io)))).with_attempts(2);
        assert_eq!(err.to_string(), "retry budget exhausted after 2 attempts");
        let first = err.source().map(ToString::to_string);
        assert_eq!(first.as_deref(), Some("inner service failed"));
        let second = err
            .source()
            .and_then(StdError::source)
            .map(ToString::to_string);
        assert_eq!(second.as_deref(), Some("peer reset"));
        assert_eq!(
            err.inner().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert!(err.is_budget_exhausted());
        assert_eq!(err.kind().as_str(), "budget_exhausted");
    }

    #[test]
    fn circuit_open_is_visible_through_wrappers() {
        let open = CircuitOpen::new(Name::new("db"), Duration::from_secs(5));
        let err: Error<std::io::Error> = Error::new(ErrorKind::DeadlineExceeded(Some(Box::new(
            ErrorKind::CircuitOpen(open.clone()),
        ))));
        assert_eq!(err.circuit_open(), Some(&open));
        assert!(err.inner().is_none());
        let cut: Error<std::io::Error> = Error::new(ErrorKind::DeadlineExceeded(None));
        assert!(cut.last_failure().is_none());
        assert!(cut.into_inner().is_none());
    }

    #[test]
    fn map_inner_keeps_structure() {
        let err: Error<&'static str> = Error::new(ErrorKind::BudgetExhausted(Box::new(
            ErrorKind::Inner("boom"),
        )))
        .with_attempts(4);
        let mapped = err.map_inner(str::len);
        assert_eq!(mapped.inner(), Some(&4));
        assert_eq!(mapped.attempts(), 4);
    }
}
