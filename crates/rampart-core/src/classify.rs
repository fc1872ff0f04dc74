//! Classifiers: turn a finished call into an [`Outcome`].

use std::io;

use crate::{BoxError, Outcome};

pub use crate::downcast::{classify_error, Downcast};

/// Decides what a finished call means: success, or which kind of failure.
///
/// One classifier serves every layer. It sees the inner service's own result — `Ok` with the
/// response (an HTTP 503 is an `Ok` response that classifies as transient) or `Err` with the
/// service's own error — never rampart's additions, which the layers classify themselves
/// (a per-attempt timeout is transient, an open circuit is handled by the retry layer).
///
/// Closures `Fn(Result<&Res, &E>) -> Outcome` are classifiers.
///
/// Under a type-erasing layer (`Buffer`, tower's `Timeout`, `BoxService`) the error a
/// rampart layer sees is [`BoxedError`](crate::BoxedError): wrap a typed classifier in
/// [`Downcast`] to classify it.
///
/// # Example
///
/// ```
/// use rampart_core::{Classify, Outcome};
///
/// let by_status = |r: Result<&u16, &std::io::Error>| match r {
///     Ok(200..=299) => Outcome::Success,
///     Ok(429) => Outcome::THROTTLED,
///     Ok(500..=599) => Outcome::TRANSIENT,
///     Ok(_) => Outcome::Rejected,
///     Err(_) => Outcome::TRANSIENT,
/// };
/// assert_eq!(by_status.classify(Ok(&503)), Outcome::TRANSIENT);
/// assert_eq!(by_status.classify(Ok(&404)), Outcome::Rejected);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify calls that return `Result<{Res}, {E}>`",
    label = "this classifier does not implement `Classify<{Res}, {E}>`",
    note = "a classifier sees the inner service's own response and error; under a `Buffer`, tower `Timeout` or `BoxService` the error is `rampart::BoxedError`: wrap a typed classifier in `rampart::classify::Downcast::<_, TypedError>::new(classifier)` or use `rampart::classify::TowerErrors`",
    note = "a closure `|r: Result<&{Res}, &{E}>| -> rampart::Outcome` is a classifier"
)]
pub trait Classify<Res, E> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;
}

// Not recommended to the compiler: a classifier of the wrong type is reported with the
// notes on `Classify`, not as "expected an `Fn(Result<&Res, &E>)` closure".
#[diagnostic::do_not_recommend]
impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self(result)
    }
}

/// Classifies [`std::io::Error`]s by their [`ErrorKind`](io::ErrorKind); every `Ok` is a
/// success.
///
/// Transient: `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`,
/// `TimedOut`, `BrokenPipe`, `Interrupted`, `WouldBlock`, `UnexpectedEof`. Everything else
/// (`PermissionDenied`, `InvalidInput`, `InvalidData`, `NotFound`, …) is permanent.
///
/// # Example
///
/// ```
/// use rampart_core::{classify::IoErrors, Classify, Outcome};
/// use std::io;
///
/// let c = IoErrors;
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// let denied = io::Error::from(io::ErrorKind::PermissionDenied);
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&reset)), Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&denied)), Outcome::Permanent);
/// assert_eq!(Classify::<(), io::Error>::classify(&c, Ok(&())), Outcome::Success);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IoErrors;

/// The outcome of one [`io::Error`], by kind (see [`IoErrors`]).
///
/// # Example
///
/// ```
/// use rampart_core::{classify, Outcome};
/// use std::io;
///
/// assert_eq!(classify::io_error(&io::ErrorKind::TimedOut.into()), Outcome::TRANSIENT);
/// ```
pub fn io_error(e: &io::Error) -> Outcome {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | TimedOut
        | BrokenPipe | Interrupted | WouldBlock | UnexpectedEof => Outcome::TRANSIENT,
        _ => Outcome::Permanent,
    }
}

impl<Res> Classify<Res, io::Error> for IoErrors {
    #[inline]
    fn classify(&self, result: Result<&Res, &io::Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => io_error(e),
        }
    }
}

/// Classifies tower's [`BoxError`]s: tower's timeout error
/// ([`Elapsed`](tower::timeout::error::Elapsed)) is transient, an [`io::Error`] anywhere in
/// the `source()` chain is classified like [`IoErrors`] does, a rampart
/// [`Timeout`](crate::Timeout) is transient, and anything else is permanent — an error
/// rampart cannot recognise is never retried blindly.
///
/// # Example
///
/// ```
/// use rampart_core::{classify::TowerErrors, BoxError, Classify, Outcome};
///
/// let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// let other: BoxError = "validation failed".into();
/// assert_eq!(Classify::<(), _>::classify(&TowerErrors, Err(&elapsed)), Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), _>::classify(&TowerErrors, Err(&other)), Outcome::Permanent);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TowerErrors;

impl<Res> Classify<Res, BoxError> for TowerErrors {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        let Err(err) = result else {
            return Outcome::Success;
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
        while let Some(e) = cur {
            if e.is::<tower::timeout::error::Elapsed>() || e.is::<crate::Timeout>() {
                return Outcome::TRANSIENT;
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return io_error(io);
            }
            cur = e.source();
        }
        Outcome::Permanent
    }
}

impl<Res> Classify<Res, tower::timeout::error::Elapsed> for TowerErrors {
    fn classify(&self, result: Result<&Res, &tower::timeout::error::Elapsed>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::TRANSIENT,
        }
    }
}

/// The one mapping from a finished call, with rampart's own error kinds, to an [`Outcome`]:
/// every layer (retry, breaker, dead-letter) classifies through it, so that they agree.
///
/// | result | outcome |
/// |---|---|
/// | `Ok(response)`, `Err(Inner(e))` | what `classifier` says |
/// | `Err(Timeout)` (an attempt ran out of time) | transient |
/// | `Err(CircuitOpen)` (the call never reached the service) | rejected: no news about the dependency; the retry layer waits for the circuit instead |
/// | `Err(BudgetExhausted / DeadlineExceeded / NotReplayable)` (an inner retry already gave up) | permanent: never retried again |
///
/// # Example
///
/// ```
/// use rampart_core::{classify, CircuitOpen, ErrorKind, Name, Outcome, Timeout};
/// use std::time::Duration;
///
/// let c = classify::IoErrors;
/// let timeout: ErrorKind<std::io::Error> = ErrorKind::Timeout(Timeout::new(Duration::from_secs(1)));
/// assert_eq!(classify::outcome::<(), _, _>(&c, Err(&timeout)), Outcome::TRANSIENT);
/// let open: ErrorKind<std::io::Error> =
///     ErrorKind::CircuitOpen(CircuitOpen::new(Name::new("db"), Duration::from_secs(5)));
/// assert_eq!(classify::outcome::<(), _, _>(&c, Err(&open)), Outcome::Rejected);
/// assert_eq!(classify::outcome::<(), std::io::Error, _>(&c, Ok(&())), Outcome::Success);
/// ```
pub fn outcome<Res, E, C>(classifier: &C, result: Result<&Res, &crate::ErrorKind<E>>) -> Outcome
where
    C: Classify<Res, E> + ?Sized,
{
    use crate::ErrorKind;
    match result {
        Ok(res) => classifier.classify(Ok(res)),
        Err(ErrorKind::Inner(e)) => classifier.classify(Err(e)),
        Err(ErrorKind::Timeout(_)) => Outcome::TRANSIENT,
        Err(ErrorKind::CircuitOpen(_)) => Outcome::Rejected,
        Err(
            ErrorKind::BudgetExhausted(_)
            | ErrorKind::DeadlineExceeded(_)
            | ErrorKind::NotReplayable { .. },
        ) => Outcome::Permanent,
    }
}

/// Classifies every `Ok` as success and every `Err` as the given outcome. Handy in tests and
/// for services whose errors are all of one kind.
///
/// # Example
///
/// ```
/// use rampart_core::{classify::ErrorsAre, Classify, Outcome};
///
/// let c = ErrorsAre(Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), &str>::classify(&c, Err(&"boom")), Outcome::TRANSIENT);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorsAre(pub Outcome);

impl<Res, E> Classify<Res, E> for ErrorsAre {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => self.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds() {
        use io::ErrorKind::*;
        for k in [
            ConnectionRefused,
            ConnectionReset,
            ConnectionAborted,
            TimedOut,
            BrokenPipe,
            Interrupted,
            WouldBlock,
        ] {
            assert_eq!(io_error(&k.into()), Outcome::TRANSIENT, "{k:?}");
        }
        for k in [
            PermissionDenied,
            InvalidInput,
            InvalidData,
            NotFound,
            Unsupported,
        ] {
            assert_eq!(io_error(&k.into()), Outcome::Permanent, "{k:?}");
        }
    }

    #[test]
    fn tower_errors_walk_the_source_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapper")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e: BoxError = Box::new(Wrapper(io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(
            Classify::<(), _>::classify(&TowerErrors, Err(&e)),
            Outcome::TRANSIENT
        );
        let e: BoxError = Box::new(Wrapper(io::ErrorKind::PermissionDenied.into()));
        assert_eq!(
            Classify::<(), _>::classify(&TowerErrors, Err(&e)),
            Outcome::Permanent
        );
        let e: BoxError = Box::new(crate::Timeout::new(std::time::Duration::from_secs(1)));
        assert_eq!(
            Classify::<(), _>::classify(&TowerErrors, Err(&e)),
            Outcome::TRANSIENT
        );
    }
}
