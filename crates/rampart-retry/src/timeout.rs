//! A per-attempt timeout that returns rampart's typed [`Timeout`](rampart_core::Timeout).
//!
//! In the stack of the repository's docs/architecture.md it sits innermost, under the circuit breaker, so that a
//! timed-out attempt counts against the dependency's health.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rampart_core::{Error, IntoError, Timeout};
use tokio::time::{sleep, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// Bounds each call of the inner service; `None` passes calls through without a timer.
///
/// # Example
///
/// ```
/// use rampart_retry::AttemptTimeoutLayer;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(10)).await;
///     Ok::<_, std::io::Error>(())
/// });
/// let err = AttemptTimeoutLayer::new(Some(Duration::from_secs(1))).layer(slow).oneshot(()).await.unwrap_err();
/// assert!(err.is_timeout());
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct AttemptTimeoutLayer {
    timeout: Option<Duration>,
}

impl AttemptTimeoutLayer {
    /// Times out calls after `timeout`, or never for `None`.
    pub const fn new(timeout: Option<Duration>) -> Self {
        AttemptTimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Bounds each call of the inner service. Made by [`AttemptTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Option<Duration>,
}

impl<S> AttemptTimeout<S> {
    rampart_core::inner_service_accessors!(S);
}

impl<S, Req> Service<Req> for AttemptTimeout<S>
where
    S: Service<Req>,
    S::Error: IntoError,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = TimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: None,
            after: self.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`AttemptTimeout`]: the inner call and, when a timeout is
    /// set, its timer, both pinned in place (nothing is boxed).
    ///
    /// The timer starts when the attempt is first polled and not ready: an attempt that
    /// answers on its first poll (a cache, a ready service, a failure detected at once) reads
    /// no clock and touches no timer, and an attempt polled late is not charged for the
    /// time before it ran.
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Option<Duration>,
    }
}

impl<F, Res, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<Res, E>>,
    E: IntoError,
{
    type Output = Result<Res, Error<E::Inner>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(IntoError::into_error));
        }
        let Some(after) = *this.after else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            // The attempt is running: start its timer (reads the clock once).
            this.sleep.set(Some(sleep(after)));
        }
        if let Some(s) = this.sleep.as_pin_mut() {
            ready!(s.poll(cx));
            return Poll::Ready(Err(Error::from(Timeout::new(after))));
        }
        Poll::Pending
    }
}

impl<F> fmt::Debug for TimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutFuture")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
