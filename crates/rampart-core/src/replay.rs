//! Copying a request: for a retry's next attempt, and for the dead-letter record.
//!
//! The retry layer and the dead-letter layer copy a request the same way, through one
//! [`Replay`]: the retry layer to send it again, the dead-letter layer to describe it if the
//! call finally fails. A replayer whose copies share the request's bytes (a `Bytes` body, or
//! a streaming body buffered once by the retry crate's `BufferBodyLayer`) keeps one buffer
//! per call, however many attempts there are.
//!
//! A layer that already holds a copy for the whole call can hand it to the layer above when
//! the call has ended ([`KeepsRequest`]): in a `rampart::Policy` the retry layer keeps its
//! copy to the end of the call and the dead-letter layer above takes it only for a call it
//! records, so that a call is copied once, not once per layer.

use std::pin::Pin;

use crate::NotReplayable;

/// Makes the copies of a request that a retry sends and that a dead-letter record
/// describes.
///
/// The retry layer asks for the copy *before* each attempt (the attempt consumes the
/// request), so a request that cannot be replayed is known before the first call: that call
/// is still made once, and if it fails in a retryable way the error is
/// [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable), saying why.
///
/// [`CloneReplay`] serves every `Clone` request, including `http::Request<B>` with a
/// cloneable body (method, URI, version, headers and extensions are carried over).
/// With the retry crate's `http` feature, `HttpReplay` serves requests whose streaming body
/// was buffered by `BufferBodyLayer` (`rampart::Policy::layer_streaming` stacks both).
///
/// # Example
///
/// ```
/// use rampart_core::replay::{CloneReplay, Replay};
///
/// let copy = CloneReplay.replay(&String::from("hello")).expect("strings clone");
/// assert_eq!(copy, "hello");
/// assert_eq!(CloneReplay.keep(&String::from("kept")).as_deref(), Some("kept"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot copy a `{Req}` for retries and dead-letter records",
    label = "this replayer does not implement `Replay<{Req}>`",
    note = "`CloneReplay` (what `Policy::layer`, `RetryLayer` and `DeadLetterLayer` use by default) needs `{Req}: Clone`",
    note = "for an `http::Request` with a streaming body (hyper `Incoming`, axum `Body`, `StreamBody`), use `Policy::layer_streaming` (feature `http`), or put `BufferBodyLayer` above the layers and replay with `HttpReplay`"
)]
pub trait Replay<Req> {
    /// A copy of `req` to send on the next attempt.
    ///
    /// # Errors
    ///
    /// [`NotReplayable`] if this request cannot be sent again.
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable>;

    /// A copy of `req` for a dead-letter record, made once per call before its first
    /// attempt and only read (by the record's extractor), never sent. By default the
    /// [`replay`](Self::replay) copy, or nothing when the request cannot be replayed; a
    /// replayer may return a partial copy here, marked as such, so that the record still
    /// describes the request (the retry crate's `HttpReplay` keeps the method, URI, headers
    /// and the buffered start of a body over its limit, marked cut, so that the record is
    /// marked truncated and never redriven).
    fn keep(&self, req: &Req) -> Option<Req> {
        self.replay(req).ok()
    }
}

/// Replays any `Clone` request by cloning it.
///
/// # Example
///
/// ```
/// use rampart_core::replay::{CloneReplay, Replay};
///
/// let req = vec![1u8, 2, 3];
/// assert_eq!(CloneReplay.replay(&req).expect("a Vec clones"), req);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneReplay;

// Not recommended to the compiler: a request that is not `Clone` is reported as
// "`CloneReplay` cannot copy a `Req`", with the notes on `Replay`, rather than as a bare
// "`Req: Clone` is not satisfied".
#[diagnostic::do_not_recommend]
impl<Req: Clone> Replay<Req> for CloneReplay {
    #[inline]
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable> {
        Ok(req.clone())
    }
}

#[diagnostic::do_not_recommend]
impl<F, Req> Replay<Req> for F
where
    F: Fn(&Req) -> Result<Req, NotReplayable>,
{
    fn replay(&self, req: &Req) -> Result<Req, NotReplayable> {
        self(req)
    }
}

/// A response future that holds a copy of its call's request and, once the call has ended,
/// hands it to the layer above.
///
/// The retry layer's response future implements it: it holds a copy of the request (made
/// by its [`Replay`]) to send the next attempt, and with `RetryLayer::keep_request(true)`
/// it keeps one to the end of the call — also with no retries configured, through the last
/// attempt, and, for a request that cannot be replayed, the partial copy [`Replay::keep`]
/// makes. A dead-letter layer in `FromInner` mode (`rampart_dlq::FromInner`, what a
/// `rampart::Policy` builds) copies nothing itself and takes this copy when it records a
/// failed call, so that the call makes one copy where the two layers made two.
///
/// # Example
///
/// ```
/// use std::future::Future;
/// use std::pin::{pin, Pin};
/// use std::task::{Context, Poll, Waker};
/// use rampart_core::replay::KeepsRequest;
///
/// /// Answers at once, and keeps its request for the layer above.
/// struct Echo { req: Option<String>, done: bool }
/// impl Future for Echo {
///     type Output = usize;
///     fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
///         self.done = true;
///         Poll::Ready(self.req.as_ref().map_or(0, String::len))
///     }
/// }
/// impl KeepsRequest<String> for Echo {
///     fn take_request(mut self: Pin<&mut Self>) -> Option<String> {
///         if self.done { self.req.take() } else { None }
///     }
/// }
///
/// let mut fut = pin!(Echo { req: Some("hello".into()), done: false });
/// assert_eq!(fut.as_mut().take_request(), None); // not before the call has ended
/// let _ = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
/// assert_eq!(fut.as_mut().take_request().as_deref(), Some("hello"));
/// assert_eq!(fut.as_mut().take_request(), None); // handed over once
/// ```
pub trait KeepsRequest<Req> {
    /// The request this future kept, once it has completed (returned `Poll::Ready`);
    /// `None` before that, after it was taken once, or if the future kept none.
    fn take_request(self: Pin<&mut Self>) -> Option<Req>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_replay_and_keep() {
        let refuse = |_: &u32| -> Result<u32, NotReplayable> { Err(NotReplayable::new("once")) };
        assert!(refuse.replay(&1).is_err());
        assert_eq!(refuse.keep(&1), None);
        let double = |n: &u32| -> Result<u32, NotReplayable> { Ok(n * 2) };
        assert_eq!(double.keep(&2), Some(4));
    }
}
