//! Replaying `http::Request`s whose bodies stream.
//!
//! A request body that streams can be sent only once. [`BufferBodyLayer`] reads it into
//! memory, up to a limit, before the first attempt, and hands the inner service a
//! `Request<`[`ReplayBody<B>`]`>`; [`HttpReplay`] then copies such a request for each retry
//! (method, URI, version, headers, extensions and the buffered bytes). The bytes are read
//! once per call: every attempt's copy, and the copy a dead-letter layer keeps for its
//! record, share them (`Bytes`, reference-counted). A body larger than the limit is not held
//! back: the first attempt streams it whole, and that attempt is the only one — if it fails
//! in a retryable way the error is
//! [`ErrorKind::NotReplayable`](rampart_core::ErrorKind::NotReplayable), naming the limit;
//! the dead-letter copy of such a request keeps the body's start, marked cut (its record is
//! marked truncated and never redriven).
//!
//! `rampart::Policy::layer_streaming` stacks `BufferBodyLayer` above a whole policy whose
//! retry layer copies with [`HttpReplay`] and keeps its copy to the end of the call
//! ([`RetryLayer::keep_request`](crate::RetryLayer::keep_request)): the dead-letter layer
//! above records that copy — for a body over the limit, the cut copy
//! [`Replay::keep`] made — instead of making its own.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use rampart_core::{Outcome, classify::ErrorsAre};
//! use rampart_retry::{BufferBodyLayer, HttpReplay, ReplayBody, RetryLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let echo = service_fn(|req: http::Request<ReplayBody<Full<Bytes>>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, std::convert::Infallible>(body)
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(BufferBodyLayer::new(64 * 1024))
//!     .layer(RetryLayer::new(ErrorsAre(Outcome::TRANSIENT)).replay(HttpReplay))
//!     .service(echo);
//! let req = http::Request::post("http://tts.local/v1").body(Full::new(Bytes::from("hi")))?;
//! assert_eq!(svc.oneshot(req).await?, Bytes::from("hi"));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use rampart_core::NotReplayable;
use tower_layer::Layer;
use tower_service::Service;

use crate::replay::Replay;

/// The default replay buffer limit: 1 MiB.
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// A request body that [`BufferBodyLayer`] has read into memory (replayable), or one it gave
/// up buffering because it exceeded the limit (streams once).
///
/// The inner body must be `Unpin` (hyper's `Incoming`, axum's `Body`, `Full`, `BoxBody`,
/// a `StreamBody` over an `Unpin` stream are); pin any other body in a `Box` first
/// (`http_body_util::BodyExt::boxed`).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use rampart_retry::ReplayBody;
///
/// let body: ReplayBody<http_body_util::Empty<Bytes>> = ReplayBody::full(Bytes::from_static(b"{}"));
/// assert!(body.is_replayable());
/// ```
pub struct ReplayBody<B: Body> {
    kind: Kind<B>,
}

enum Kind<B: Body> {
    Full {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Over the limit: the start that was read, then the rest of the stream.
    Streaming {
        prefix: Bytes,
        rest: B,
        limit: usize,
    },
    /// Reading the body failed while buffering it: what was read, then the error.
    Failed {
        prefix: Bytes,
        error: Option<B::Error>,
    },
    /// A dead-letter record's copy of a body that was not held whole: its start, and its
    /// size (at least `size` bytes; exact when the stream announced it). Never sent.
    Partial { prefix: Bytes, size: u64 },
}

impl<B: Body> ReplayBody<B> {
    /// A complete, replayable body.
    pub fn full(data: Bytes) -> Self {
        ReplayBody {
            kind: Kind::Full {
                data,
                trailers: None,
            },
        }
    }

    /// `true` if the whole body is in memory, so the request can be replayed.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// The bytes held in memory: the whole body when it [is replayable](Self::is_replayable),
    /// otherwise the start that was read before the limit was passed (or before reading
    /// failed). A dead-letter record describes the request from these bytes.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use rampart_retry::ReplayBody;
    ///
    /// let body: ReplayBody<http_body_util::Empty<Bytes>> = ReplayBody::full(Bytes::from_static(b"{}"));
    /// assert_eq!(body.buffered(), b"{}");
    /// assert_eq!(body.cut(), None);
    /// ```
    pub fn buffered(&self) -> &[u8] {
        match &self.kind {
            Kind::Full { data, .. } => data,
            Kind::Streaming { prefix, .. }
            | Kind::Failed { prefix, .. }
            | Kind::Partial { prefix, .. } => prefix,
        }
    }

    /// `None` when [`buffered`](Self::buffered) is the whole body; otherwise `Some(size)`:
    /// the body is not held whole and has at least `size` bytes (its exact size when the
    /// stream announced it, e.g. by `Content-Length`).
    pub fn cut(&self) -> Option<u64> {
        match &self.kind {
            Kind::Full { .. } => None,
            Kind::Streaming { prefix, rest, .. } => {
                Some(len64(prefix).saturating_add(rest.size_hint().lower()))
            }
            Kind::Failed { prefix, .. } => Some(len64(prefix)),
            Kind::Partial { size, .. } => Some(*size),
        }
    }

    fn try_clone(&self) -> Result<Self, NotReplayable> {
        match &self.kind {
            Kind::Full { data, trailers } => Ok(ReplayBody {
                kind: Kind::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Kind::Streaming { limit, .. } => Err(NotReplayable::new(format!(
                "request body exceeds the replay buffer limit of {limit} bytes"
            ))),
            Kind::Failed { .. } => Err(NotReplayable::new(
                "reading the request body failed while buffering it",
            )),
            Kind::Partial { .. } => Err(NotReplayable::new(
                "only the start of the request body was kept",
            )),
        }
    }

    /// The copy a dead-letter record keeps: the body itself when it is in memory (sharing
    /// its bytes), otherwise its start and size, marked cut.
    fn kept(&self) -> Self {
        let kind = match &self.kind {
            Kind::Full { data, trailers } => Kind::Full {
                data: data.clone(),
                trailers: trailers.clone(),
            },
            Kind::Streaming { prefix, .. }
            | Kind::Failed { prefix, .. }
            | Kind::Partial { prefix, .. } => Kind::Partial {
                prefix: prefix.clone(),
                size: self.cut().unwrap_or_else(|| len64(prefix)),
            },
        };
        ReplayBody { kind }
    }
}

fn len64(b: &Bytes) -> u64 {
    u64::try_from(b.len()).unwrap_or(u64::MAX)
}

impl<B: Body> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { data, .. } => f
                .debug_struct("ReplayBody::Full")
                .field("len", &data.len())
                .finish(),
            Kind::Streaming { limit, .. } => f
                .debug_struct("ReplayBody::Streaming")
                .field("limit", limit)
                .finish_non_exhaustive(),
            Kind::Failed { .. } => f.debug_struct("ReplayBody::Failed").finish_non_exhaustive(),
            Kind::Partial { prefix, size } => f
                .debug_struct("ReplayBody::Partial")
                .field("kept", &prefix.len())
                .field("size", size)
                .finish(),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full { data, trailers } => {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Streaming { prefix, rest, .. } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(mem::take(prefix)))));
                }
                Pin::new(rest).poll_frame(cx)
            }
            Kind::Failed { prefix, error } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(mem::take(prefix)))));
                }
                Poll::Ready(error.take().map(Err))
            }
            // A record's copy is only read, never sent; polled anyway, it gives its start.
            Kind::Partial { prefix, .. } => {
                if !prefix.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(mem::take(prefix)))));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_empty() && trailers.is_none(),
            Kind::Streaming { prefix, rest, .. } => prefix.is_empty() && rest.is_end_stream(),
            Kind::Failed { prefix, error } => prefix.is_empty() && error.is_none(),
            Kind::Partial { prefix, .. } => prefix.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => SizeHint::with_exact(len64(data)),
            Kind::Streaming { prefix, rest, .. } => {
                let held = len64(prefix);
                let r = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower().saturating_add(held));
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
            Kind::Failed { prefix, .. } | Kind::Partial { prefix, .. } => {
                SizeHint::with_exact(len64(prefix))
            }
        }
    }
}

/// Replays `Request<ReplayBody<B>>`: clones the method, URI, version, headers and extensions,
/// and the buffered body (its bytes are shared, not copied). A body that was not buffered
/// is [`NotReplayable`]; for a dead-letter record ([`Replay::keep`]) such a request is
/// still copied, with the body's start marked cut ([`ReplayBody::cut`]).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use rampart_retry::{HttpReplay, Replay, ReplayBody};
///
/// let req = http::Request::put("http://db.local/k")
///     .header("x-trace", "1")
///     .body(ReplayBody::<http_body_util::Empty<Bytes>>::full(Bytes::from("v")))?;
/// let copy = HttpReplay.replay(&req)?;
/// assert_eq!(copy.method(), http::Method::PUT);
/// assert_eq!(copy.headers()["x-trace"], "1");
/// let kept = HttpReplay.keep(&req).expect("always kept");
/// assert_eq!(kept.body().buffered(), b"v");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpReplay;

/// `req`'s head (method, URI, version, headers, extensions) over `body`.
fn with_head<B: Body>(req: &Request<ReplayBody<B>>, body: ReplayBody<B>) -> Request<ReplayBody<B>> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

impl<B: Body> Replay<Request<ReplayBody<B>>> for HttpReplay {
    fn replay(
        &self,
        req: &Request<ReplayBody<B>>,
    ) -> Result<Request<ReplayBody<B>>, NotReplayable> {
        let body = req.body().try_clone()?;
        Ok(with_head(req, body))
    }

    fn keep(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        Some(with_head(req, req.body().kept()))
    }
}

/// Buffers streaming request bodies, up to a limit, so that [`HttpReplay`] can replay them.
///
/// Stack it *outside* the [`RetryLayer`](crate::RetryLayer) (and outside a dead-letter
/// layer, so that its record shares the buffer).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers up to `limit` bytes of each request body.
    pub const fn new(limit: usize) -> Self {
        BufferBodyLayer { limit }
    }

    /// The limit, in bytes.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for BufferBodyLayer {
    /// A limit of [`DEFAULT_BUFFER_LIMIT`] (1 MiB).
    fn default() -> Self {
        BufferBodyLayer::new(DEFAULT_BUFFER_LIMIT)
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
        }
    }
}

/// Buffers each request body before calling the inner service. Made by [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// Wraps `inner`, buffering up to `limit` bytes of each body.
    pub const fn new(inner: S, limit: usize) -> Self {
        BufferBody { inner, limit }
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    B: Body<Data = Bytes> + Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service made ready by `poll_ready` is the one called once the body is read.
        let clone = self.inner.clone();
        let service = mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        BufferFuture {
            state: BufferState::Reading {
                service: Some(service),
                parts: Some(parts),
                body: Some(body),
                chunks: VecDeque::new(),
                size: 0,
                limit: self.limit,
            },
        }
    }
}

pin_project! {
    /// The response future of [`BufferBody`].
    pub struct BufferFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        #[pin]
        state: BufferState<S, B>,
    }
}

pin_project! {
    #[project = BufferStateProj]
    enum BufferState<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        Reading {
            service: Option<S>,
            parts: Option<http::request::Parts>,
            body: Option<B>,
            chunks: VecDeque<Bytes>,
            size: usize,
            limit: usize,
        },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                BufferStateProj::Reading {
                    service,
                    parts,
                    body,
                    chunks,
                    size,
                    limit,
                } => {
                    let Some(stream) = body.as_mut() else {
                        return Poll::Pending;
                    };
                    let kind = match ready!(Pin::new(stream).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                *size = size.saturating_add(data.len());
                                chunks.push_back(data);
                                if *size <= *limit {
                                    continue;
                                }
                                match body.take() {
                                    // The start is joined once; the stream and a
                                    // dead-letter record's copy share it.
                                    Some(rest) => Kind::Streaming {
                                        prefix: concat(chunks),
                                        rest,
                                        limit: *limit,
                                    },
                                    None => continue,
                                }
                            }
                            Err(frame) => Kind::Full {
                                data: concat(chunks),
                                trailers: frame.into_trailers().ok(),
                            },
                        },
                        Some(Err(error)) => Kind::Failed {
                            prefix: concat(chunks),
                            error: Some(error),
                        },
                        None => Kind::Full {
                            data: concat(chunks),
                            trailers: None,
                        },
                    };
                    let (Some(mut svc), Some(parts)) = (service.take(), parts.take()) else {
                        return Poll::Pending;
                    };
                    let future = svc.call(Request::from_parts(parts, ReplayBody { kind }));
                    this.state.set(BufferState::Calling { future });
                }
                BufferStateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

fn concat(chunks: &mut VecDeque<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks.drain(..) {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    }
}

impl<S, B> fmt::Debug for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture").finish_non_exhaustive()
    }
}
