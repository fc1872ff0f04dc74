//! Replaying a request for a retry.

use rampart_core::NotReplayable;

/// Makes the copy of a request that a retry sends.
///
/// The retry layer asks for the copy *before* each attempt (the attempt consumes the
/// request), so a request that cannot be replayed is known before the first call: that call
/// is still made once, and if it fails in a retryable way the error is
/// [`ErrorKind::NotReplayable`](rampart_core::ErrorKind::NotReplayable), saying why.
///
/// [`CloneReplay`] serves every `Clone` request, including `http::Request<B>` with a
/// cloneable body (method, URI, version, headers and extensions are carried over).
/// With the `http` feature, `HttpReplay` serves requests whose streaming body was buffered
/// by `BufferBodyLayer`.
///
/// # Example
///
/// ```
/// use rampart_retry::{CloneReplay, Replay};
///
/// let copy = CloneReplay.replay(&String::from("hello")).expect("strings clone");
/// assert_eq!(copy, "hello");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot replay a `{Req}` for a retry",
    label = "this replayer does not implement `Replay<{Req}>`",
    note = "`CloneReplay` needs `{Req}: Clone`; for `http::Request`s with a streaming body, put `BufferBodyLayer` above the retry layer and replay with `HttpReplay` (feature `http`)"
)]
pub trait Replay<Req> {
    /// A copy of `req` to send on the next attempt.
    ///
    /// # Errors
    ///
    /// [`NotReplayable`] if this request cannot be sent again.
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable>;
}

/// Replays any `Clone` request by cloning it.
///
/// # Example
///
/// ```
/// use rampart_retry::{CloneReplay, Replay};
///
/// let req = http::Request::post("http://example.test/v1").body("payload").expect("valid request");
/// let copy = CloneReplay.replay(&req).expect("Request<&str> clones");
/// assert_eq!(copy.uri(), req.uri());
/// assert_eq!(*copy.body(), "payload");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneReplay;

impl<Req: Clone> Replay<Req> for CloneReplay {
    #[inline]
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable> {
        Ok(req.clone())
    }
}

impl<F, Req> Replay<Req> for F
where
    F: Fn(&Req) -> Result<Req, NotReplayable>,
{
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable> {
        self(req)
    }
}
