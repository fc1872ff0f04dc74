use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use rampart_core::replay::CloneReplay;
use rampart_core::{Classify, Error, IntoError};
use tower_service::Service;

use crate::extract::Extract;
use crate::future::ResponseFuture;
use crate::layer::{stats, DeadLetterStats, Links};
use crate::source::RequestSource;
use crate::store::DeadLetterStore;

/// Records requests that finally fail. Made by [`DeadLetterLayer`](crate::DeadLetterLayer).
///
/// # Clone
///
/// Clones share the store and counters (a clone takes one reference count); each call takes
/// a reference count on its thread's link to them (one of a few, so that calls on different
/// threads do not write one shared count, whichever clone they go through).
///
/// # Requests
///
/// `R` says where a record's request comes from ([`RequestSource`]). By default each call
/// keeps a copy of its request until the call ends, because it may have to record it, made
/// with [`CloneReplay`] ([`Replay::keep`](rampart_core::replay::Replay::keep)), which needs
/// `Req: Clone` (for `http::Request<Full<Bytes>>` or `Request<Bytes>` the body's copy is a
/// reference-count bump); [`DeadLetterLayer::replay`](crate::DeadLetterLayer::replay) copies
/// with another `Replay` ([`CopyWith`](crate::CopyWith): `HttpReplay` for requests whose
/// streaming body `BufferBodyLayer` buffered). With
/// [`FromInner`](crate::FromInner) ([`DeadLetterLayer::request_from_inner`](crate::DeadLetterLayer::request_from_inner))
/// it copies nothing and takes the copy the retry layer below kept, only for a call it
/// records. Nothing is kept while the layer records nothing.
pub struct DeadLetter<S, St, X, C, R = CloneReplay> {
    inner: S,
    /// The layer's links: a call takes its thread's.
    links: Arc<Links<St, X, C>>,
    replay: R,
}

impl<S, St, X, C> DeadLetter<S, St, X, C> {
    /// Wraps `inner` in a new dead-letter layer's service:
    /// [`DeadLetterLayer::new(config, store)`](crate::DeadLetterLayer::new) applied to
    /// `inner`. Use the layer to share its counters and queue between services.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_dlq::{DeadLetter, DeadLetterConfig, MemoryStore};
    /// use tower::service_fn;
    ///
    /// let svc = DeadLetter::new(
    ///     service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }),
    ///     DeadLetterConfig::default(),
    ///     MemoryStore::default(),
    /// );
    /// assert_eq!(svc.stats().write_failures, 0);
    /// ```
    pub fn new(inner: S, config: crate::DeadLetterConfig<X, C>, store: St) -> Self {
        tower_layer::Layer::layer(&crate::DeadLetterLayer::new(config, store), inner)
    }
}

impl<S, St, X, C, R> DeadLetter<S, St, X, C, R> {
    pub(crate) fn from_parts(inner: S, links: Arc<Links<St, X, C>>, replay: R) -> Self {
        DeadLetter {
            inner,
            links,
            replay,
        }
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> DeadLetterStats {
        stats(self.links.any())
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.links.any().store
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, St, X, C, R: Clone> Clone for DeadLetter<S, St, X, C, R> {
    fn clone(&self) -> Self {
        DeadLetter {
            inner: self.inner.clone(),
            links: self.links.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<S: fmt::Debug, St, X, C, R> fmt::Debug for DeadLetter<S, St, X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("inner", &self.inner)
            .field("name", &self.links.any().name)
            .finish_non_exhaustive()
    }
}

impl<S, St, X, C, R, Req> Service<Req> for DeadLetter<S, St, X, C, R>
where
    S: Service<Req>,
    S::Error: IntoError,
    <S::Error as IntoError>::Inner: fmt::Display,
    St: DeadLetterStore + Clone,
    X: Extract<Req> + Send + Sync + 'static,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Send + Sync + 'static,
    R: RequestSource<Req, S::Future>,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S::Future, Req, St, X, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = self.links.here().clone();
        let copy = if shared.reasons == 0 {
            R::Held::default()
        } else {
            self.replay.before(&req)
        };
        // Everything else first, the inner call last: nothing runs between the inner future
        // being made and its move into this one, so the compiler builds it in place instead
        // of copying it (a policy's inner future is hundreds of bytes). The call's span is
        // made when the future is first polled, for the same reason, under the span current
        // now.
        let parent = crate::future::CallSpan::parent();
        ResponseFuture::new(self.inner.call(req), copy, shared, parent)
    }
}
