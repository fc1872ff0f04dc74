//! Replaying `http::Request`s whose bodies stream.
//!
//! A request body that streams can be sent only once. [`BufferBodyLayer`] reads it into
//! memory, up to a limit, before the first attempt, and hands the inner service a
//! `Request<`[`ReplayBody<B>`]`>`; [`HttpReplay`] then copies such a request for each retry
//! (method, URI, version, headers, extensions and the buffered bytes). A body larger than the
//! limit is not held back: the first attempt streams it whole, and that attempt is the only
//! one — if it fails in a retryable way the error is
//! [`ErrorKind::NotReplayable`](rampart_core::ErrorKind::NotReplayable), naming the limit.
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
    Streaming {
        buffered: VecDeque<Bytes>,
        rest: B,
        limit: usize,
    },
    Failed {
        buffered: VecDeque<Bytes>,
        error: Option<B::Error>,
    },
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
        }
    }
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
            Kind::Streaming { buffered, rest, .. } => {
                if let Some(chunk) = buffered.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Pin::new(rest).poll_frame(cx)
            }
            Kind::Failed { buffered, error } => {
                if let Some(chunk) = buffered.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_empty() && trailers.is_none(),
            Kind::Streaming { buffered, rest, .. } => buffered.is_empty() && rest.is_end_stream(),
            Kind::Failed { buffered, error } => buffered.is_empty() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => SizeHint::with_exact(data.len() as u64),
            Kind::Streaming { buffered, rest, .. } => {
                let held: u64 = buffered.iter().map(|b| b.len() as u64).sum();
                let r = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + held);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
            Kind::Failed { buffered, .. } => {
                SizeHint::with_exact(buffered.iter().map(|b| b.len() as u64).sum())
            }
        }
    }
}

/// Replays `Request<ReplayBody<B>>`: clones the method, URI, version, headers and extensions,
/// and the buffered body. A body that was not buffered is [`NotReplayable`].
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
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpReplay;

impl<B: Body> Replay<Request<ReplayBody<B>>> for HttpReplay {
    fn replay(
        &self,
        req: &Request<ReplayBody<B>>,
    ) -> Result<Request<ReplayBody<B>>, NotReplayable> {
        let body = req.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Ok(copy)
    }
}

/// Buffers streaming request bodies, up to a limit, so that [`HttpReplay`] can replay them.
///
/// Stack it *outside* the [`RetryLayer`](crate::RetryLayer).
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
                                    Some(rest) => Kind::Streaming {
                                        buffered: mem::take(chunks),
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
                            buffered: mem::take(chunks),
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
