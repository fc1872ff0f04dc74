//! Where a dead-letter layer gets the request it records: a copy it makes before the call
//! ([`CloneReplay`], [`CopyWith`]), or the copy the layer below kept and hands back once the
//! call has ended ([`FromInner`]).

use std::fmt;
use std::pin::Pin;

use rampart_core::replay::{CloneReplay, KeepsRequest, Replay};

/// Where a [`DeadLetter`](crate::DeadLetter) service gets the request a record describes,
/// for calls of `Req` whose inner response future is `F`. Set on the layer:
/// [`CloneReplay`] (the default), [`CopyWith`] (any [`Replay`], through
/// [`DeadLetterLayer::replay`](crate::DeadLetterLayer::replay)) or [`FromInner`]
/// ([`DeadLetterLayer::request_from_inner`](crate::DeadLetterLayer::request_from_inner)).
///
/// # Example
///
/// ```
/// use std::future::{ready, Ready};
/// use std::pin::pin;
/// use rampart_core::replay::CloneReplay;
/// use rampart_dlq::{CopyWith, RequestSource};
///
/// // Copied before the call, handed over as it was after it.
/// let held = RequestSource::<String, Ready<()>>::before(&CopyWith(CloneReplay), &"order 42".to_string());
/// let inner = pin!(ready(()));
/// let kept = <CopyWith<CloneReplay> as RequestSource<String, Ready<()>>>::after(held, inner);
/// assert_eq!(kept.as_deref(), Some("order 42"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep a `{Req}` for a dead-letter record",
    label = "no `RequestSource<{Req}, _>` for this replayer",
    note = "`CloneReplay` (the default) needs `{Req}: Clone`; `DeadLetterLayer::replay` takes any `Replay<{Req}>`",
    note = "`FromInner` needs the service right below to be a retry layer (its response future implements `KeepsRequest<{Req}>`), best with `RetryLayer::keep_request(true)`"
)]
pub trait RequestSource<Req, F> {
    /// What a call holds for its record until it ends.
    type Held: Default;

    /// Called before the call (only when the layer records something): what to hold.
    fn before(&self, req: &Req) -> Self::Held;

    /// Called once the call has ended and is being recorded, with what was held and the
    /// inner response future (completed, still pinned): the request to describe, if any.
    fn after(held: Self::Held, inner: Pin<&mut F>) -> Option<Req>;
}

/// Copies with [`CloneReplay::keep`](Replay::keep): a clone of each request, made before the call.
impl<Req: Clone, F> RequestSource<Req, F> for CloneReplay {
    type Held = Option<Req>;

    #[inline]
    fn before(&self, req: &Req) -> Option<Req> {
        Replay::keep(self, req)
    }

    #[inline]
    fn after(held: Option<Req>, _: Pin<&mut F>) -> Option<Req> {
        held
    }
}

/// Copies each request before the call with a [`Replay`] ([`Replay::keep`]): what
/// [`DeadLetterLayer::replay`](crate::DeadLetterLayer::replay) sets.
///
/// # Example
///
/// ```
/// use rampart_core::replay::CloneReplay;
/// use rampart_dlq::CopyWith;
///
/// let copier = CopyWith(CloneReplay);
/// assert!(format!("{copier:?}").contains("CloneReplay"));
/// ```
#[derive(Clone, Copy, Default)]
pub struct CopyWith<R>(pub R);

impl<R: fmt::Debug> fmt::Debug for CopyWith<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CopyWith").field(&self.0).finish()
    }
}

impl<Req, F, R: Replay<Req>> RequestSource<Req, F> for CopyWith<R> {
    type Held = Option<Req>;

    #[inline]
    fn before(&self, req: &Req) -> Option<Req> {
        self.0.keep(req)
    }

    #[inline]
    fn after(held: Option<Req>, _: Pin<&mut F>) -> Option<Req> {
        held
    }
}

/// Copies nothing: takes the request from the inner response future once the call has
/// ended ([`KeepsRequest`]), and only for a call it records. Right above a retry layer with
/// `RetryLayer::keep_request(true)` — what a `rampart::Policy` builds —
/// a call is then copied once (by the retry layer), not twice; a successful call is never
/// copied for the record. Made by
/// [`DeadLetterLayer::request_from_inner`](crate::DeadLetterLayer::request_from_inner).
///
/// The record has no request when the inner future kept none (a retry layer without
/// `keep_request` moves its copy into the last attempt and keeps none with no retries).
///
/// # Example
///
/// ```
/// use rampart_core::{classify::IoErrors, Backoff};
/// use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, DeadLetterStore, ListQuery, MemoryStore};
/// use rampart_retry::RetryLayer;
/// use std::io;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::default();
/// let svc = ServiceBuilder::new()
///     .layer(DeadLetterLayer::new(DeadLetterConfig::builder().classifier(IoErrors).build()?, store.clone())
///         .request_from_inner())
///     .layer(RetryLayer::new(IoErrors).keep_request(true).backoff(Backoff::none()))
///     .service(service_fn(|_: u64| async { Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied)) }));
/// let _ = svc.oneshot(42).await;
/// let page = store.list(ListQuery::newest(1)).await?;
/// assert_eq!(page.records[0].request.payload, serde_json::json!(42));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FromInner;

impl<Req, F: KeepsRequest<Req>> RequestSource<Req, F> for FromInner {
    type Held = ();

    #[inline]
    fn before(&self, _: &Req) {}

    #[inline]
    fn after((): (), inner: Pin<&mut F>) -> Option<Req> {
        inner.take_request()
    }
}
