//! [`Downcast`]: classifying type-erased errors with a typed classifier.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::marker::PhantomData;

use crate::classify::{io_error, TowerErrors};
use crate::{BoxError, BoxedError, CircuitOpen, Classify, Error, ErrorKind, Outcome, Timeout};

/// Classifies type-erased errors ([`BoxedError`], [`BoxError`]) with a classifier `C` of a
/// concrete error type `E`, by downcasting.
///
/// Use it when a `Buffer`, tower's `Timeout`, a `BoxService` / `BoxCloneService` or any other
/// type-erasing layer sits **under** a rampart layer: the service's errors are then
/// `BoxError`s, which rampart layers see as [`BoxedError`].
///
/// The error's `source()` chain is walked (looking inside every `BoxedError`), and the first
/// match decides:
/// - an `E`: `C` classifies it;
/// - a rampart [`Error<E>`] or `Error<BoxedError>` (a rampart stack under the erasing layer):
///   its last failure — `C` for the inner error, transient for a per-attempt
///   [`Timeout`], transient with the breaker's `retry_in` as hint for a [`CircuitOpen`];
/// - tower's [`Elapsed`](tower::timeout::error::Elapsed) or rampart's [`Timeout`]: transient;
/// - a [`CircuitOpen`]: transient, with its `retry_in` as hint;
/// - an [`io::Error`]: by kind, as [`IoErrors`](crate::classify::IoErrors) does.
///
/// Anything else is [`Outcome::Permanent`]: an error rampart cannot recognise is never retried
/// blindly. Responses (`Ok`) go to `C` unchanged.
///
/// # Example
///
/// ```
/// use rampart_core::classify::{Downcast, IoErrors};
/// use rampart_core::{BoxError, BoxedError, Classify, Outcome};
/// use std::io;
///
/// let c = Downcast::<_, io::Error>::new(IoErrors);
/// let reset = BoxedError::new(io::Error::from(io::ErrorKind::ConnectionReset));
/// let elapsed = BoxedError::new(tower::timeout::error::Elapsed::new());
/// let other = BoxedError::new("validation failed");
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&reset)), Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&elapsed)), Outcome::TRANSIENT);
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&other)), Outcome::Permanent);
/// assert_eq!(Classify::<(), BoxedError>::classify(&c, Ok(&())), Outcome::Success);
/// ```
pub struct Downcast<C, E> {
    inner: C,
    _error: PhantomData<fn(&E)>,
}

impl<C, E> Downcast<C, E> {
    /// Classifies errors that downcast to `E` with `inner`.
    pub const fn new(inner: C) -> Self {
        Downcast {
            inner,
            _error: PhantomData,
        }
    }

    /// The typed classifier.
    pub const fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<C: Clone, E> Clone for Downcast<C, E> {
    fn clone(&self) -> Self {
        Downcast::new(self.inner.clone())
    }
}

impl<C: Copy, E> Copy for Downcast<C, E> {}

impl<C: Default, E> Default for Downcast<C, E> {
    fn default() -> Self {
        Downcast::new(C::default())
    }
}

impl<C: fmt::Debug, E> fmt::Debug for Downcast<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downcast")
            .field("inner", &self.inner)
            .field("error", &std::any::type_name::<E>())
            .finish()
    }
}

impl<Res, C, E> Classify<Res, BoxedError> for Downcast<C, E>
where
    C: Classify<Res, E>,
    E: StdError + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxedError>) -> Outcome {
        match result {
            Ok(res) => self.inner.classify(Ok(res)),
            Err(e) => classify_dyn::<Res, C, E>(&self.inner, e.get_ref()),
        }
    }
}

impl<Res, C, E> Classify<Res, BoxError> for Downcast<C, E>
where
    C: Classify<Res, E>,
    E: StdError + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        match result {
            Ok(res) => self.inner.classify(Ok(res)),
            Err(e) => classify_dyn::<Res, C, E>(&self.inner, &**e),
        }
    }
}

/// [`TowerErrors`] over [`BoxedError`], the inner error rampart layers see for a `BoxError`
/// service.
impl<Res> Classify<Res, BoxedError> for TowerErrors {
    fn classify(&self, result: Result<&Res, &BoxedError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => classify_dyn::<Res, ErrorsOnly, Infallible>(&ErrorsOnly, e.get_ref()),
        }
    }
}

/// Classifies nothing but `Ok` (used with `Infallible`, which never matches).
struct ErrorsOnly;

impl<Res> Classify<Res, Infallible> for ErrorsOnly {
    fn classify(&self, _: Result<&Res, &Infallible>) -> Outcome {
        Outcome::Success
    }
}

/// Classifies one type-erased error with `c` (see [`Downcast`]).
///
/// # Example
///
/// ```
/// use rampart_core::classify::{classify_error, IoErrors};
/// use rampart_core::Outcome;
/// use std::io;
///
/// let e = io::Error::from(io::ErrorKind::TimedOut);
/// assert_eq!(classify_error::<(), _, io::Error>(&IoErrors, &e), Outcome::TRANSIENT);
/// ```
pub fn classify_error<Res, C, E>(c: &C, err: &(dyn StdError + 'static)) -> Outcome
where
    C: Classify<Res, E>,
    E: StdError + 'static,
{
    classify_dyn::<Res, C, E>(c, err)
}

fn classify_dyn<Res, C, E>(c: &C, mut err: &(dyn StdError + 'static)) -> Outcome
where
    C: Classify<Res, E>,
    E: StdError + 'static,
{
    // Bounded: a source chain longer than this is a cycle or a pathology.
    for _ in 0..64 {
        if let Some(e) = err.downcast_ref::<E>() {
            return c.classify(Err(e));
        }
        if let Some(b) = err.downcast_ref::<BoxedError>() {
            err = b.get_ref();
            continue;
        }
        if let Some(r) = err.downcast_ref::<Error<E>>() {
            return match r.last_failure() {
                Some(ErrorKind::Inner(e)) => c.classify(Err(e)),
                Some(k) => kind_outcome(k),
                None => Outcome::TRANSIENT,
            };
        }
        if let Some(r) = err.downcast_ref::<Error<BoxedError>>() {
            match r.last_failure() {
                Some(ErrorKind::Inner(b)) => {
                    err = b.get_ref();
                    continue;
                }
                Some(k) => return kind_outcome(k),
                None => return Outcome::TRANSIENT,
            }
        }
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<Timeout>() {
            return Outcome::TRANSIENT;
        }
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return Outcome::Transient {
                retry_after: Some(open.retry_in),
            };
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io_error(io);
        }
        match err.source() {
            Some(next) => err = next,
            None => return Outcome::Permanent,
        }
    }
    Outcome::Permanent
}

/// The outcome of one of rampart's own failures seen from above.
fn kind_outcome<E>(k: &ErrorKind<E>) -> Outcome {
    match k {
        ErrorKind::Timeout(_) => Outcome::TRANSIENT,
        ErrorKind::CircuitOpen(open) => Outcome::Transient {
            retry_after: Some(open.retry_in),
        },
        // `last_failure` sees through the "gave up" kinds, so only new kinds land here.
        _ => Outcome::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IntoError, Name};
    use std::time::Duration;

    #[derive(Debug)]
    struct Typed(u16);
    impl fmt::Display for Typed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "typed {}", self.0)
        }
    }
    impl StdError for Typed {}

    fn typed(r: Result<&(), &Typed>) -> Outcome {
        match r {
            Ok(()) => Outcome::Success,
            Err(Typed(429)) => Outcome::THROTTLED,
            Err(_) => Outcome::Rejected,
        }
    }

    #[test]
    fn downcasts_to_the_typed_error_through_boxes_and_rampart_errors() {
        let c = Downcast::<_, Typed>::new(typed);
        let direct = BoxedError::new(Typed(429));
        assert_eq!(c.classify(Err(&direct)), Outcome::THROTTLED);
        // A rampart stack under a Buffer: Error<Typed> boxed.
        let nested = BoxedError::new(Error::from_inner(Typed(400)).with_attempts(3));
        assert_eq!(c.classify(Err(&nested)), Outcome::Rejected);
        // Error<BoxedError> boxed again, holding a Typed.
        let twice = BoxedError::new(BoxError::from(Box::new(Typed(429)) as BoxError).into_error());
        assert_eq!(c.classify(Err(&twice)), Outcome::THROTTLED);
        // rampart's own kinds.
        let open: Error<Typed> =
            Error::from(CircuitOpen::new(Name::new("x"), Duration::from_secs(3)));
        assert_eq!(
            c.classify(Err(&BoxedError::new(open))),
            Outcome::Transient {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let t: Error<Typed> = Error::from(Timeout::new(Duration::from_secs(1)));
        assert_eq!(c.classify(Err(&BoxedError::new(t))), Outcome::TRANSIENT);
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(c.classify(Err(&elapsed)), Outcome::TRANSIENT);
        let unknown: BoxError = "who knows".into();
        assert_eq!(c.classify(Err(&unknown)), Outcome::Permanent);
        assert_eq!(
            Classify::<(), BoxedError>::classify(&c, Ok(&())),
            Outcome::Success
        );
    }

    #[test]
    fn tower_errors_classify_boxed_errors() {
        let e = BoxedError::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            Classify::<(), _>::classify(&TowerErrors, Err(&e)),
            Outcome::TRANSIENT
        );
        let e = BoxedError::new("nope");
        assert_eq!(
            Classify::<(), _>::classify(&TowerErrors, Err(&e)),
            Outcome::Permanent
        );
    }

    #[test]
    fn boxed_errors_box_back() {
        fn is_std_error<T: StdError + Send + Sync + 'static>() {}
        is_std_error::<Error<BoxedError>>();
        let e: Error<BoxedError> = String::from("bad").into_error();
        let boxed: BoxError = e.into();
        let back = boxed.downcast_ref::<Error<BoxedError>>();
        assert_eq!(
            back.and_then(Error::inner)
                .map(ToString::to_string)
                .as_deref(),
            Some("bad")
        );
        let e: Error<BoxedError> = "static".into_error();
        assert_eq!(
            e.inner().map(ToString::to_string).as_deref(),
            Some("static")
        );
    }
}
