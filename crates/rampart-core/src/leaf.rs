//! [`LeafLayer`]: the adapter that lets rampart layers wrap a service with any error type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::Error;

/// Turns a service's errors, of any type, into rampart errors ([`Error::from_inner`]), so
/// that rampart layers (a `Policy`, `RetryLayer`, `CircuitBreakerLayer`, `DeadLetterLayer`)
/// can wrap it. **This is the way to use a foreign error type** — `reqwest::Error`,
/// `sqlx::Error`, `tonic::Status`, `std::num::ParseIntError` — for which the orphan rule
/// forbids implementing [`IntoError`](crate::IntoError) outside the crate that defines it.
///
/// Put it directly over the service, under the rampart layers. The classifier then sees the
/// service's own error type.
///
/// # Example
///
/// ```
/// use rampart_core::{classify::ErrorsAre, Error, LeafLayer, Outcome};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // `ParseIntError` is foreign to both your crate and rampart: no impl, no macro.
/// let svc = ServiceBuilder::new()
///     .layer(LeafLayer)
///     .service(service_fn(|s: &'static str| async move { s.parse::<u32>() }));
/// let err: Error<std::num::ParseIntError> = svc.oneshot("x").await.unwrap_err();
/// assert!(err.inner().is_some());
/// # let _ = ErrorsAre(Outcome::Permanent);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LeafLayer;

impl<S> Layer<S> for LeafLayer {
    type Service = Leaf<S>;

    fn layer(&self, inner: S) -> Leaf<S> {
        Leaf { inner }
    }
}

/// Turns the inner service's errors into rampart errors. Made by [`LeafLayer`].
///
/// # Example
///
/// ```
/// use rampart_core::Leaf;
/// use tower::{service_fn, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = Leaf::new(service_fn(|n: u32| async move { u8::try_from(n) }));
/// assert_eq!(svc.oneshot(7).await.ok(), Some(7));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Leaf<S> {
    inner: S,
}

impl<S> Leaf<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Leaf { inner }
    }

    crate::inner_service_accessors!(S);
}

impl<S, Req> Service<Req> for Leaf<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = LeafFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        LeafFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`Leaf`].
    #[derive(Debug)]
    pub struct LeafFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, Res, E> Future for LeafFuture<F>
where
    F: Future<Output = Result<Res, E>>,
{
    type Output = Result<Res, Error<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Error::from_inner)
    }
}
