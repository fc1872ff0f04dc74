//! Streamed response bodies with the client's limits, and collecting them back.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use rampart_core::BoxError;
use tower_service::Service;

use super::{
    HttpError, HttpErrorKind, RequestMethod, RequestTimedOut, ResponseTooLarge,
    DEFAULT_MAX_RESPONSE_BYTES,
};

pin_project_lite::pin_project! {
    /// The body of a [`StreamingHttpClient`](super::StreamingHttpClient)'s response: hyper's
    /// body, with the client's limits enforced as it streams. It fails with an
    /// [`HttpError`] of kind [`TooLarge`](HttpErrorKind::TooLarge) as soon as more than
    /// [`max_response_bytes`](super::HttpClientBuilder::max_response_bytes) have arrived,
    /// [`Timeout`](HttpErrorKind::Timeout) once the client's
    /// [`request_timeout`](super::HttpClientBuilder::request_timeout) has passed (counted from
    /// the start of the call), and [`Body`](HttpErrorKind::Body) if the connection fails; after
    /// an error it ends.
    ///
    /// Its error is an [`HttpError`], which converts into a `BoxError`, as tower-http's body
    /// layers need.
    ///
    /// # Example
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use rampart::client::{HttpErrorKind, HttpClient};
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let addr = listener.local_addr()?;
    /// # tokio::spawn(async move {
    /// #     let (tcp, _) = listener.accept().await.unwrap();
    /// #     let svc = hyper::service::service_fn(|_req| async {
    /// #         let chunks = ["0123456789"; 3].map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(c))));
    /// #         let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    /// #         Ok::<_, std::convert::Infallible>(http::Response::new(body))
    /// #     });
    /// #     let _ = hyper::server::conn::http1::Builder::new()
    /// #         .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
    /// # });
    /// // The server streams 30 bytes without a Content-Length; the limit is 16.
    /// let client = HttpClient::builder().max_response_bytes(16).build().streaming();
    /// let req = http::Request::get(format!("http://{addr}/")).body(http_body_util::Empty::<bytes::Bytes>::new())?;
    /// let res = client.oneshot(req).await?;
    /// assert_eq!(res.status(), 200);
    /// let err = res.into_body().collect().await.unwrap_err();
    /// assert_eq!(err.kind(), HttpErrorKind::TooLarge);
    /// # Ok(()) }
    /// ```
    pub struct ResponseBody {
        #[pin]
        inner: hyper::body::Incoming,
        limit: usize,
        read: usize,
        method: RequestMethod,
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
        failed: bool,
    }
}

impl ResponseBody {
    pub(super) fn new(
        inner: hyper::body::Incoming,
        limit: usize,
        method: RequestMethod,
        deadline: Option<(tokio::time::Instant, Duration)>,
    ) -> Self {
        ResponseBody {
            inner,
            limit,
            read: 0,
            method,
            deadline: deadline.map(|(at, after)| (Box::pin(tokio::time::sleep_until(at)), after)),
            failed: false,
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("limit", &self.limit)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        if let Some((sleep, after)) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                *this.failed = true;
                let after = *after;
                return Poll::Ready(Some(Err(this
                    .method
                    .error(HttpErrorKind::Timeout, RequestTimedOut { after }))));
            }
        }
        match ready!(this.inner.poll_frame(cx)) {
            None => Poll::Ready(None),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.read = this.read.saturating_add(data.len());
                    if *this.read > *this.limit {
                        *this.failed = true;
                        let limit = *this.limit;
                        return Poll::Ready(Some(Err(this
                            .method
                            .error(HttpErrorKind::TooLarge, ResponseTooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.failed = true;
                Poll::Ready(Some(Err(this.method.error(HttpErrorKind::Body, e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// Reads each response body whole into [`Bytes`], up to a limit: the streamed responses of a
/// [`StreamingHttpClient`](super::StreamingHttpClient), or of tower-http layers over it
/// (decompressed bodies), become `Response<Bytes>` again, for classifiers that read bodies
/// (`GeminiClassifier`), dead-letter records and callers that want the whole body.
///
/// A body larger than the limit fails with an [`HttpError`] of kind
/// [`TooLarge`](HttpErrorKind::TooLarge) (source: [`ResponseTooLarge`]) — above a
/// `DecompressionLayer` this is the limit on the *decompressed* size. Other body errors are
/// the [`HttpError`] they carry, or one of kind [`Body`](HttpErrorKind::Body). The service's
/// error type stays the inner one, which must be able to hold an `HttpError` (`HttpError`
/// itself, or a `BoxError`).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use rampart::client::{CollectBodyLayer, HttpClient, HttpError};
/// use rampart::{Outcome, RetryLayer};
/// use tower::ServiceBuilder;
///
/// // A classifier that reads response bodies (as `GeminiClassifier` does).
/// fn classify(r: Result<&http::Response<Bytes>, &HttpError>) -> Outcome {
///     match r {
///         Ok(res) if res.body().starts_with(b"{\"error\"") => Outcome::TRANSIENT,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::TRANSIENT,
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(classify))
///     .layer(CollectBodyLayer::new(8 << 20))
///     .service(HttpClient::new().streaming());
/// # let _ = svc;
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct CollectBodyLayer {
    limit: usize,
}

impl CollectBodyLayer {
    /// Collects bodies of at most `limit` bytes.
    pub const fn new(limit: usize) -> Self {
        CollectBodyLayer { limit }
    }
}

impl Default for CollectBodyLayer {
    /// A limit of [`DEFAULT_MAX_RESPONSE_BYTES`] (32 MiB).
    fn default() -> Self {
        CollectBodyLayer::new(DEFAULT_MAX_RESPONSE_BYTES)
    }
}

impl<S> tower_layer::Layer<S> for CollectBodyLayer {
    type Service = CollectBody<S>;

    fn layer(&self, inner: S) -> CollectBody<S> {
        CollectBody {
            inner,
            limit: self.limit,
        }
    }
}

/// Reads each response body whole. Made by [`CollectBodyLayer`].
#[derive(Debug, Clone)]
pub struct CollectBody<S> {
    inner: S,
    limit: usize,
}

impl<S> CollectBody<S> {
    /// Wraps `inner`, collecting bodies of at most `limit` bytes.
    pub const fn new(inner: S, limit: usize) -> Self {
        CollectBody { inner, limit }
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S, B, RB> Service<Request<B>> for CollectBody<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: From<HttpError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Bytes>;
    type Error = S::Error;
    type Future = CollectBodyFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = RequestMethod::of(&req);
        CollectBodyFuture {
            state: CollectState::Head {
                future: self.inner.call(req),
            },
            method,
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CollectBody`].
    pub struct CollectBodyFuture<F, RB> {
        #[pin]
        state: CollectState<F, RB>,
        method: RequestMethod,
        limit: usize,
    }
}

pin_project_lite::pin_project! {
    #[project = CollectProj]
    enum CollectState<F, RB> {
        Head { #[pin] future: F },
        Body {
            parts: Option<http::response::Parts>,
            #[pin]
            body: RB,
            buf: BytesMut,
        },
    }
}

impl<F, RB> fmt::Debug for CollectBodyFuture<F, RB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectBodyFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for CollectBodyFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: From<HttpError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<Bytes>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CollectProj::Head { future } => {
                    let (parts, body) = ready!(future.poll(cx))?.into_parts();
                    let declared = body.size_hint().lower();
                    if declared > u64::try_from(*this.limit).unwrap_or(u64::MAX) {
                        let limit = *this.limit;
                        return Poll::Ready(Err(this
                            .method
                            .error(HttpErrorKind::TooLarge, ResponseTooLarge { limit })
                            .into()));
                    }
                    // Reserve what the body says it has, never more than the limit.
                    let hint = usize::try_from(declared).unwrap_or(usize::MAX);
                    let buf = BytesMut::with_capacity(hint.min(*this.limit));
                    this.state.set(CollectState::Body {
                        parts: Some(parts),
                        body,
                        buf,
                    });
                }
                CollectProj::Body { parts, body, buf } => {
                    let mut body = body;
                    loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let Ok(mut data) = frame.into_data() else {
                                    continue; // trailers: not kept
                                };
                                if buf.len().saturating_add(data.remaining()) > *this.limit {
                                    let limit = *this.limit;
                                    return Poll::Ready(Err(this
                                        .method
                                        .error(HttpErrorKind::TooLarge, ResponseTooLarge { limit })
                                        .into()));
                                }
                                while data.has_remaining() {
                                    let chunk = data.chunk();
                                    let n = chunk.len();
                                    buf.put_slice(chunk);
                                    data.advance(n);
                                }
                            }
                            Some(Err(e)) => {
                                let e: BoxError = e.into();
                                let e = match e.downcast::<HttpError>() {
                                    Ok(http) => *http,
                                    Err(other) => {
                                        // A layer between (a decoder) may have wrapped the
                                        // client's error: keep its kind (timeout, too large).
                                        let kind = find_http_error(&*other)
                                            .map_or(HttpErrorKind::Body, HttpError::kind);
                                        this.method.error(kind, other)
                                    }
                                };
                                return Poll::Ready(Err(e.into()));
                            }
                            None => {
                                let Some(parts) = parts.take() else {
                                    return Poll::Pending;
                                };
                                let bytes = std::mem::take(buf).freeze();
                                return Poll::Ready(Ok(Response::from_parts(parts, bytes)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The [`HttpError`] in an error's chain, looking into `io::Error`s too (whose `source()`
/// skips the error they wrap).
fn find_http_error<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a HttpError> {
    // Bounded: a chain longer than this is a cycle or a pathology.
    for _ in 0..64 {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            return Some(http);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            err = inner;
            continue;
        }
        err = err.source()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_client_error_inside_io_errors_and_chains() {
        let timeout = HttpError::new(
            HttpErrorKind::Timeout,
            http::Method::GET,
            true,
            RequestTimedOut {
                after: Duration::from_secs(1),
            },
        );
        // A decoder's `io::Error` around it: `source()` alone would skip it.
        let wrapped = std::io::Error::other(timeout);
        let found = find_http_error(&wrapped).map(HttpError::kind);
        assert_eq!(found, Some(HttpErrorKind::Timeout));
        let plain = std::io::Error::other("not ours");
        assert!(find_http_error(&plain).is_none());
    }
}
