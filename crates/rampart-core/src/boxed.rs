//! [`BoxedError`]: a type-erased inner error that is itself a [`std::error::Error`], so that
//! a rampart [`Error`](crate::Error) over a `BoxError` service converts back into a
//! `BoxError`.

use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// The inner error of a service whose error type is tower's [`BoxError`] (`Buffer`, tower's
/// `Timeout`, `BoxService`, `BoxCloneService`, erased stacks) or a plain `String` /
/// `&'static str`.
///
/// `Box<dyn Error + Send + Sync>` does not implement [`std::error::Error`] itself, so a
/// `rampart::Error<BoxError>` could never be boxed back into a `BoxError`; rampart layers wrap
/// such errors in this newtype instead, and `Error<BoxedError>` is an ordinary
/// `Error + Send + Sync + 'static`.
///
/// It is transparent: `Display` and `source()` are those of the boxed error. Use
/// [`downcast_ref`](BoxedError::downcast_ref) (or [`find`](BoxedError::find), which also walks
/// the `source()` chain) to get at the concrete error, or
/// [`classify::Downcast`](crate::classify::Downcast) to classify it with a typed classifier.
///
/// # Example
///
/// ```
/// use rampart_core::{BoxError, BoxedError, Error, IntoError};
///
/// let from_buffer: BoxError = Box::new(tower::timeout::error::Elapsed::new());
/// let err: Error<BoxedError> = from_buffer.into_error();
/// assert!(err.inner().is_some_and(|b| b.is::<tower::timeout::error::Elapsed>()));
///
/// // …and back into a `BoxError`, as `Buffer` and `BoxService` need:
/// let boxed: BoxError = err.into();
/// assert_eq!(boxed.to_string(), "inner service failed");
/// ```
pub struct BoxedError(BoxError);

impl BoxedError {
    /// Wraps a boxed error.
    pub fn new(err: impl Into<BoxError>) -> Self {
        BoxedError(err.into())
    }

    /// The boxed error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// Unwraps the boxed error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }

    /// `true` if the boxed error is a `T`.
    pub fn is<T: StdError + 'static>(&self) -> bool {
        self.0.is::<T>()
    }

    /// The boxed error as a `T`, if it is one.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// The first error of type `T` in the boxed error's `source()` chain, starting with the
    /// boxed error itself.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::BoxedError;
    /// use std::io;
    ///
    /// let e = BoxedError::new(io::Error::from(io::ErrorKind::ConnectionReset));
    /// assert_eq!(e.find::<io::Error>().map(io::Error::kind), Some(io::ErrorKind::ConnectionReset));
    /// ```
    pub fn find<T: StdError + 'static>(&self) -> Option<&T> {
        find_in_chain(&*self.0)
    }
}

/// The first error of type `T` in `err`'s `source()` chain, starting with `err` itself, and
/// looking inside every [`BoxedError`] on the way.
///
/// # Example
///
/// ```
/// use rampart_core::{error_chain_find, BoxedError, Error, IntoError};
///
/// let err: Error<BoxedError> = BoxedError::new(tower::timeout::error::Elapsed::new()).into_error();
/// assert!(error_chain_find::<tower::timeout::error::Elapsed>(&err).is_some());
/// ```
pub fn error_chain_find<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    find_in_chain(err)
}

fn find_in_chain<'a, T: StdError + 'static>(
    mut err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    // Bounded: a source chain longer than this is a cycle or a pathology.
    for _ in 0..64 {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(b) = err.downcast_ref::<BoxedError>() {
            err = b.get_ref();
            continue;
        }
        err = err.source()?;
    }
    None
}

impl fmt::Debug for BoxedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BoxedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for BoxedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl From<BoxError> for BoxedError {
    fn from(e: BoxError) -> Self {
        BoxedError(e)
    }
}
crate::leaf_error!(BoxedError);
