//! An HTTP client as a tower service, with typed errors that say whether the request reached
//! the server, and the HTTP classifier: status codes, both forms of `Retry-After`, and the
//! method-safety rule.
//!
//! # Method safety
//!
//! A request that is not idempotent (POST, PATCH, CONNECT, or any method other than GET,
//! HEAD, OPTIONS, PUT, DELETE, TRACE) and carries no `Idempotency-Key` header may have been
//! processed when it failed, so [`HttpClassifier`] retries it only where the server said it
//! did not process it:
//!
//! | failure | idempotent | not idempotent |
//! |---|---|---|
//! | connect error (refused, DNS, TLS) | retried | retried (never reached the server) |
//! | reset / closed after sending | retried | **not retried** |
//! | 429 | retried (throttled) | retried (throttled) |
//! | 503 with `Retry-After` | retried | retried |
//! | 408, 500, 502, 503 without `Retry-After`, 504, … | retried | **not retried** (permanent) |
//!
//! The classifier learns the method from a [`RequestMethod`] in the response's extensions:
//! [`HttpClient`] puts it there, and [`MethodSafetyLayer`] does it for any other HTTP service
//! (a tower-http stack, your own hyper client). A response without it is classified by status
//! alone. Change the rule with [`HttpClassifier::retry_non_idempotent`] (retry every
//! failure) or [`HttpClassifier::not_processed`] (which responses mean "not processed").
//!
//! # Bodies: collected or streaming
//!
//! [`HttpClient`] takes a `Request<Bytes>` or `Request<Full<Bytes>>` and reads the response
//! whole, up to [`max_response_bytes`](HttpClientBuilder::max_response_bytes), into a
//! `Response<Bytes>`: what a classifier that reads bodies (Gemini's), a dead-letter record or
//! a JSON caller wants. [`HttpClient::streaming`] gives the same client (same pool) as a
//! [`StreamingHttpClient`], the shape of hyper's and tower-http's services: a request with
//! any [`http_body::Body`] and a `Response<`[`ResponseBody`]`>` that streams, with the size
//! limit and the request timeout enforced while it streams. tower-http's body layers
//! (`DecompressionLayer`, `TraceLayer`, `FollowRedirectLayer`) stack on it directly;
//! [`CollectBodyLayer`] reads a streamed (for example, decompressed) body back into `Bytes`,
//! with a limit, wherever the stack needs whole bodies.
//!
//! ```
//! use rampart::client::{CollectBodyLayer, HttpClient};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let client = HttpClient::new();
//! // Any request body, streamed response bodies: for tower-http layers.
//! let streaming = client.streaming();
//! // Any request body, whole responses (at most 1 MiB) again.
//! let collected = ServiceBuilder::new()
//!     .layer(CollectBodyLayer::new(1 << 20))
//!     .service(streaming.clone());
//! # let _ = collected;
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rampart_core::{BoxError, Classify, Outcome};
use tower_service::Service;

mod body;
#[cfg(feature = "tower-http")]
mod tower_http_classify;

pub use body::{CollectBody, CollectBodyFuture, CollectBodyLayer, ResponseBody};
#[cfg(feature = "tower-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-http")))]
pub use tower_http_classify::{FromTowerHttp, IntoTowerHttp, OutcomeFailure};

/// What went wrong with an HTTP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpErrorKind {
    /// Connecting failed (refused, DNS, TLS): the request never reached the server.
    Connect,
    /// The request was sent (or may have been) but no complete response came back
    /// (reset, closed, incomplete).
    Request,
    /// The response body could not be read.
    Body,
    /// The response body was larger than the client's limit
    /// ([`HttpClientBuilder::max_response_bytes`]); the source is a [`ResponseTooLarge`].
    TooLarge,
    /// The whole call (connect, send, read the response) took longer than
    /// [`HttpClientBuilder::request_timeout`].
    Timeout,
}

/// A response body was larger than the client's limit.
///
/// # Example
///
/// ```
/// use rampart::client::ResponseTooLarge;
///
/// assert_eq!(ResponseTooLarge { limit: 1024 }.to_string(), "response body exceeds the limit of 1024 bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("response body exceeds the limit of {limit} bytes")]
pub struct ResponseTooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

/// The whole HTTP call ran past the client's request timeout.
///
/// # Example
///
/// ```
/// use rampart::client::RequestTimedOut;
/// use std::time::Duration;
///
/// assert_eq!(RequestTimedOut { after: Duration::from_secs(2) }.to_string(), "no complete response within 2s");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no complete response within {after:?}")]
pub struct RequestTimedOut {
    /// The timeout.
    pub after: Duration,
}

/// An HTTP call failed.
#[derive(Debug)]
pub struct HttpError {
    kind: HttpErrorKind,
    method: Method,
    idempotent: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl HttpError {
    /// A failure of `kind` for a request with `method`, `idempotent` if the method is safe to
    /// repeat or the request carried an `Idempotency-Key`.
    pub fn new(
        kind: HttpErrorKind,
        method: Method,
        idempotent: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        HttpError {
            kind,
            method,
            idempotent,
            source: source.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> HttpErrorKind {
        self.kind
    }

    /// `false` only when the request provably never reached the server.
    pub fn reached_server(&self) -> bool {
        self.kind != HttpErrorKind::Connect
    }

    /// Whether repeating the request is safe: an idempotent method (GET, HEAD, OPTIONS, PUT,
    /// DELETE, TRACE) or an `Idempotency-Key` header.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            HttpErrorKind::Connect => "could not connect",
            HttpErrorKind::Request => "request failed",
            HttpErrorKind::Body => "reading the response body failed",
            HttpErrorKind::TooLarge => "response body too large",
            HttpErrorKind::Timeout => "timed out",
        };
        write!(f, "{} {what}", self.method)
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

rampart_core::leaf_error!(HttpError);

/// The method of the request a response answers, and whether repeating it is safe; put into
/// the response's extensions by [`HttpClient`] and [`MethodSafetyLayer`], read by
/// [`HttpClassifier`] (see [Method safety](self#method-safety)).
///
/// # Example
///
/// ```
/// use rampart::client::RequestMethod;
///
/// let req = http::Request::post("http://api.test/orders").header("idempotency-key", "k1").body(()).unwrap();
/// let m = RequestMethod::of(&req);
/// assert_eq!(m.method(), http::Method::POST);
/// assert!(m.idempotent());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMethod {
    method: Method,
    idempotent: bool,
}

impl RequestMethod {
    /// A method and whether repeating the request is safe (for request types other than
    /// `http::Request`).
    #[cfg(feature = "reqwest")]
    pub(crate) fn new(method: Method, idempotent: bool) -> Self {
        RequestMethod { method, idempotent }
    }

    /// The method of `req`, idempotent by method or by an `Idempotency-Key` header.
    pub fn of<B>(req: &Request<B>) -> Self {
        RequestMethod {
            method: req.method().clone(),
            idempotent: is_idempotent(req.method(), req.headers()),
        }
    }

    /// The request's method.
    pub fn method(&self) -> Method {
        self.method.clone()
    }

    /// Whether repeating the request is safe.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// An [`HttpError`] of `kind` for this request.
    pub(crate) fn error(
        &self,
        kind: HttpErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> HttpError {
        HttpError::new(kind, self.method.clone(), self.idempotent, source)
    }
}

/// Puts a [`RequestMethod`] into every response's extensions, so that [`HttpClassifier`]
/// applies the method-safety rule to responses of any HTTP service (the [`HttpClient`] does
/// it itself).
///
/// # Example
///
/// ```
/// use rampart::client::{MethodSafetyLayer, RequestMethod};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(MethodSafetyLayer)
///     .service(service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     }));
/// let res = svc.oneshot(http::Request::post("/orders").body(()).unwrap()).await.unwrap();
/// assert_eq!(res.extensions().get::<RequestMethod>().map(RequestMethod::idempotent), Some(false));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MethodSafetyLayer;

impl<S> tower_layer::Layer<S> for MethodSafetyLayer {
    type Service = MethodSafety<S>;

    fn layer(&self, inner: S) -> MethodSafety<S> {
        MethodSafety { inner }
    }
}

/// Puts a [`RequestMethod`] into every response's extensions. Made by [`MethodSafetyLayer`].
#[derive(Debug, Clone, Copy)]
pub struct MethodSafety<S> {
    inner: S,
}

impl<S> MethodSafety<S> {
    rampart_core::inner_service_accessors!(S);
}

impl<S, B, R> Service<Request<B>> for MethodSafety<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = MethodSafetyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = Some(RequestMethod::of(&req));
        MethodSafetyFuture {
            inner: self.inner.call(req),
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`MethodSafety`].
    #[derive(Debug)]
    pub struct MethodSafetyFuture<F> {
        #[pin]
        inner: F,
        method: Option<RequestMethod>,
    }
}

impl<F, R, E> Future for MethodSafetyFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(m) = this.method.take() {
            res.extensions_mut().insert(m);
        }
        Poll::Ready(Ok(res))
    }
}

/// `true` for methods that may be repeated, or a request carrying an `Idempotency-Key`.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The request body the pooled hyper client sends: a whole body as it is, any other boxed.
type SendBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, BoxError>>;

/// An HTTP client over hyper-util with rustls (webpki roots, or yours) for `https`, as a
/// tower service from `Request<Bytes>` (or `Request<Full<Bytes>>`) to `Response<Bytes>`: the
/// response body read whole, up to a limit. HTTP/1.1, and HTTP/2 with the `http2` feature
/// (ALPN, or `HttpClientBuilder::http2_only`). Cloning shares the connection
/// pool. Configure it with [`HttpClient::builder`]; for streamed bodies and requests with any
/// [`http_body::Body`], see [`HttpClient::streaming`].
///
/// # Example
///
/// ```no_run
/// use rampart::client::HttpClient;
/// use tower::ServiceExt;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = HttpClient::new();
/// let res = client.oneshot(http::Request::get("https://example.com/").body(bytes::Bytes::new())?).await?;
/// println!("{}", res.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, SendBody>,
    max_response_bytes: usize,
    request_timeout: Option<Duration>,
}

/// [`HttpClient`] with streamed bodies, as hyper and tower-http stack it: a tower service from
/// `Request<B>` for any [`http_body::Body`] `B` (data [`Bytes`], errors convertible into a
/// `BoxError`) to `Response<`[`ResponseBody`]`>`, whose body enforces the client's
/// [`max_response_bytes`](HttpClientBuilder::max_response_bytes) and
/// [`request_timeout`](HttpClientBuilder::request_timeout) as it streams. Made by
/// [`HttpClient::streaming`]; shares its pool.
///
/// The call completes with the response head; the [`RequestMethod`] is in its extensions, so
/// [`HttpClassifier`] classifies it (status, `Retry-After`, method safety) before the body is
/// read. A retry or a breaker above it sees only the head: a body that fails later fails to
/// whoever reads it.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use rampart::client::HttpClient;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move {
/// #     let (tcp, _) = listener.accept().await.unwrap();
/// #     let svc = hyper::service::service_fn(|_req| async {
/// #         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("pong"))))
/// #     });
/// #     let _ = hyper::server::conn::http1::Builder::new()
/// #         .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
/// # });
/// let client = HttpClient::new().streaming();
/// let req = http::Request::post(format!("http://{addr}/ping")).body(Full::new(Bytes::from("ping")))?;
/// let res = client.oneshot(req).await?;
/// assert_eq!(res.into_body().collect().await?.to_bytes(), "pong");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamingHttpClient {
    client: HttpClient,
}

/// The default response size limit of [`HttpClient`]: 32 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Builds an [`HttpClient`].
///
/// # Example
///
/// ```
/// use rampart::client::HttpClient;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = HttpClient::builder()
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Some(Duration::from_secs(10)))
///     .pool_idle_timeout(Duration::from_secs(30))
///     .pool_max_idle_per_host(16)
///     .max_response_bytes(4 << 20)
///     .build();
/// # let _ = client;
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct HttpClientBuilder {
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    max_response_bytes: usize,
    tls: Option<rustls::ClientConfig>,
    #[cfg(feature = "http2")]
    http2_only: bool,
}

impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpClientBuilder");
        d.field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("custom_tls", &self.tls.is_some());
        #[cfg(feature = "http2")]
        d.field("http2_only", &self.http2_only);
        d.finish()
    }
}

impl Default for HttpClientBuilder {
    fn default() -> Self {
        HttpClientBuilder {
            connect_timeout: Some(Duration::from_secs(5)),
            request_timeout: None,
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            tls: None,
            #[cfg(feature = "http2")]
            http2_only: false,
        }
    }
}

impl HttpClientBuilder {
    /// How long connecting (TCP) may take; `None` for no limit. Defaults to 5 s. A connect
    /// that times out is an [`HttpErrorKind::Connect`] error: the request never left.
    pub fn connect_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = d.into();
        self
    }

    /// How long the whole call — connect, send, read the response body — may take; `None`
    /// for no limit (the default; a policy's per-attempt timeout usually bounds it). A call
    /// that runs past it fails with [`HttpErrorKind::Timeout`]; with a
    /// [`StreamingHttpClient`], a body still streaming then fails with it.
    pub fn request_timeout(mut self, d: Option<Duration>) -> Self {
        self.request_timeout = d;
        self
    }

    /// How long an idle pooled connection is kept. Defaults to 90 s.
    pub fn pool_idle_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = d.into();
        self
    }

    /// At most this many idle connections per host. Defaults to no limit.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// The largest response body read, in bytes; a larger one fails with
    /// [`HttpErrorKind::TooLarge`] (source: [`ResponseTooLarge`]) without being read whole:
    /// at once if its `Content-Length` says so, else as soon as the bytes received pass the
    /// limit (also while a [`StreamingHttpClient`]'s body streams). Defaults to
    /// [`DEFAULT_MAX_RESPONSE_BYTES`] (32 MiB).
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// The rustls configuration for `https` (your own root certificates, client
    /// certificates). Defaults to the webpki roots. ALPN is the client's: any
    /// `alpn_protocols` in `config` are replaced (`http/1.1`, and `h2` with the `http2`
    /// feature).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::client::HttpClient;
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let roots = rustls::RootCertStore::empty(); // add your CA: roots.add(ca_der)?
    /// let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
    ///     .with_safe_default_protocol_versions()?
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let client = HttpClient::builder().tls_config(tls).build();
    /// # let _ = client;
    /// # Ok(()) }
    /// ```
    pub fn tls_config(mut self, mut config: rustls::ClientConfig) -> Self {
        // hyper-rustls panics on a config with ALPN protocols set: it sets them itself.
        config.alpn_protocols.clear();
        self.tls = Some(config);
        self
    }

    /// Speak only HTTP/2: over `http`, without TLS (h2c with prior knowledge), and over
    /// `https` with ALPN `h2` only. Defaults to `false`: with the `http2` feature, `https`
    /// connections offer `h2` and `http/1.1` by ALPN and use what the server picks, and
    /// `http` connections use HTTP/1.1.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // An internal h2c service (gRPC-style gateways, Envoy sidecars).
    /// let client = rampart::client::HttpClient::builder().http2_only(true).build();
    /// # let _ = client;
    /// # }
    /// ```
    #[cfg(feature = "http2")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http2")))]
    pub fn http2_only(mut self, yes: bool) -> Self {
        self.http2_only = yes;
        self
    }

    /// The client.
    pub fn build(self) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(self.connect_timeout);
        let https = match self.tls {
            Some(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
            None => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        }
        .https_or_http();
        #[cfg(feature = "http2")]
        let https = if self.http2_only {
            https.enable_http2().wrap_connector(http)
        } else {
            https.enable_all_versions().wrap_connector(http)
        };
        #[cfg(not(feature = "http2"))]
        let https = https.enable_http1().wrap_connector(http);
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        if self.pool_idle_timeout.is_some() {
            client.pool_timer(hyper_util::rt::TokioTimer::new());
        }
        #[cfg(feature = "http2")]
        client.http2_only(self.http2_only);
        HttpClient {
            inner: client.build(https),
            max_response_bytes: self.max_response_bytes,
            request_timeout: self.request_timeout,
        }
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("max_response_bytes", &self.max_response_bytes)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StreamingHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingHttpClient")
            .field("max_response_bytes", &self.client.max_response_bytes)
            .field("request_timeout", &self.client.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client that speaks `http` and `https`, with [`HttpClientBuilder`]'s defaults.
    pub fn new() -> Self {
        HttpClient::builder().build()
    }

    /// A builder: timeouts, pool, TLS roots, HTTP/2, response size limit.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// This client with streamed bodies: requests with any [`http_body::Body`], responses
    /// whose [`ResponseBody`] streams (see [`StreamingHttpClient`]). Shares the pool and the
    /// settings.
    pub fn streaming(&self) -> StreamingHttpClient {
        StreamingHttpClient {
            client: self.clone(),
        }
    }
}

/// The client's response future.
pub type HttpFuture = Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send>>;

/// The [`StreamingHttpClient`]'s response future: it completes with the response head.
pub type StreamingFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, HttpError>> + Send>>;

impl Service<Request<Bytes>> for HttpClient {
    type Response = Response<Bytes>;
    type Error = HttpError;
    type Future = HttpFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        self.send(req.map(|b| Either::Left(Full::new(b))))
    }
}

/// Requests whose body is an [`http_body::Body`](http_body_util::Full) (`Full<Bytes>`), as
/// tower-http's `TraceLayer`, `FollowRedirectLayer` and other body-generic layers need. For
/// any other body type use [`HttpClient::streaming`] (and [`CollectBodyLayer`]).
impl Service<Request<Full<Bytes>>> for HttpClient {
    type Response = Response<Bytes>;
    type Error = HttpError;
    type Future = HttpFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.send(req.map(Either::Left))
    }
}

impl<B> Service<Request<B>> for StreamingHttpClient
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = HttpError;
    type Future = StreamingFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(
            self.client
                .head(req.map(|b| Either::Right(b.map_err(Into::into).boxed_unsync()))),
        )
    }
}

impl HttpClient {
    /// Reads the response whole (the body enforces the limit and the deadline).
    fn send(&self, req: Request<SendBody>) -> HttpFuture {
        let head = self.head(req);
        Box::pin(async move {
            let (parts, body) = head.await?.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(Response::from_parts(parts, bytes))
        })
    }

    /// Sends the request; completes with the response head and a body that streams.
    fn head(
        &self,
        req: Request<SendBody>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, HttpError>> + Send + 'static {
        let stamp = RequestMethod::of(&req);
        let fut = self.inner.request(req);
        let limit = self.max_response_bytes;
        let timeout = self.request_timeout;
        async move {
            // The deadline counts from the first poll, as tower's `Timeout` does.
            let deadline = timeout.and_then(|after| {
                tokio::time::Instant::now()
                    .checked_add(after)
                    .map(|at| (at, after))
            });
            let res = match deadline {
                None => fut.await,
                Some((at, after)) => match tokio::time::timeout_at(at, fut).await {
                    Ok(res) => res,
                    Err(_) => {
                        return Err(stamp.error(HttpErrorKind::Timeout, RequestTimedOut { after }))
                    }
                },
            };
            let res = res.map_err(|e| {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                stamp.error(kind, e)
            })?;
            let (mut parts, incoming) = res.into_parts();
            let declared = http_body::Body::size_hint(&incoming).lower();
            if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
                return Err(stamp.error(HttpErrorKind::TooLarge, ResponseTooLarge { limit }));
            }
            parts.extensions.insert(stamp.clone());
            let body = ResponseBody::new(incoming, limit, stamp, deadline);
            Ok(Response::from_parts(parts, body))
        }
    }
}

/// Parses a `Retry-After` value: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`, counted from `now`; a date in the past is zero).
///
/// # Example
///
/// ```
/// use rampart::client::parse_retry_after;
/// use std::time::{Duration, SystemTime};
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
/// let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
/// assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The `Retry-After` hint of a response's headers, if any.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now())
}

/// The outcome of a status code (with the response's `Retry-After` hint): 2xx/3xx success;
/// 408 and 5xx transient, except 501 and 505 which are permanent; 429 throttled; any other
/// 4xx rejected.
pub fn status_outcome(status: StatusCode, hint: Option<Duration>) -> Outcome {
    match status.as_u16() {
        100..=399 => Outcome::Success,
        408 => Outcome::Transient { retry_after: hint },
        429 => Outcome::Throttled { retry_after: hint },
        501 | 505 => Outcome::Permanent,
        400..=499 => Outcome::Rejected,
        _ => Outcome::Transient { retry_after: hint },
    }
}

/// Classifies HTTP responses by status and `Retry-After`, and both responses and
/// [`HttpError`]s by the [method-safety rule](self#method-safety): a request that never
/// reached the server (connect errors), or that the server said it did not process (429, 503
/// with `Retry-After`), is retryable; any other failure only if the request is idempotent
/// (method or `Idempotency-Key`) or the classifier was told that retrying it is safe.
///
/// It also classifies [`BoxedError`](crate::BoxedError)s (an `HttpClient` under a `Buffer`,
/// tower `Timeout` or `BoxCloneService`) by downcasting them to [`HttpError`] (see
/// [`Downcast`](crate::classify::Downcast)).
///
/// # Example
///
/// ```
/// use rampart::client::HttpClassifier;
/// use rampart::{Classify, Outcome};
/// use bytes::Bytes;
///
/// let c = HttpClassifier::default();
/// let res = http::Response::builder().status(503).header("retry-after", "2").body(Bytes::new()).unwrap();
/// assert_eq!(
///     Classify::<_, rampart::client::HttpError>::classify(&c, Ok(&res)),
///     Outcome::Transient { retry_after: Some(std::time::Duration::from_secs(2)) }
/// );
/// ```
#[derive(Clone, Copy)]
pub struct HttpClassifier {
    retry_non_idempotent: bool,
    not_processed: fn(StatusCode, &HeaderMap) -> bool,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier {
            retry_non_idempotent: false,
            not_processed: server_did_not_process,
        }
    }
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClassifier")
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .finish_non_exhaustive()
    }
}

/// The default answer to "did the server say it did not process the request?": 429, and 503
/// with a `Retry-After` header (RFC 9110 §15.6.4: the server is temporarily unable to handle
/// the request).
///
/// # Example
///
/// ```
/// use rampart::client::server_did_not_process;
/// use http::{HeaderMap, StatusCode};
///
/// let mut h = HeaderMap::new();
/// assert!(server_did_not_process(StatusCode::TOO_MANY_REQUESTS, &h));
/// assert!(!server_did_not_process(StatusCode::SERVICE_UNAVAILABLE, &h));
/// h.insert("retry-after", "3".parse().unwrap());
/// assert!(server_did_not_process(StatusCode::SERVICE_UNAVAILABLE, &h));
/// assert!(!server_did_not_process(StatusCode::BAD_GATEWAY, &h));
/// ```
pub fn server_did_not_process(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && headers.contains_key(http::header::RETRY_AFTER))
}

impl HttpClassifier {
    /// Also retries non-idempotent requests (POST, PATCH) after failures where they may have
    /// been processed: transport errors after sending, and 5xx/408 responses. Only for
    /// endpoints where a repeat is harmless.
    ///
    /// Defaults to `false`.
    #[must_use]
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry_non_idempotent = yes;
        self
    }

    /// Which retryable responses mean the server did not process the request, so that a
    /// non-idempotent request may be retried after them. Defaults to
    /// [`server_did_not_process`] (429, 503 with `Retry-After`).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::client::{server_did_not_process, HttpClassifier};
    ///
    /// // This API also promises that a 502 from its gateway was never forwarded.
    /// let c = HttpClassifier::default()
    ///     .not_processed(|status, headers| status == 502 || server_did_not_process(status, headers));
    /// # let _ = c;
    /// ```
    #[must_use]
    pub fn not_processed(mut self, rule: fn(StatusCode, &HeaderMap) -> bool) -> Self {
        self.not_processed = rule;
        self
    }

    /// The outcome of a response: its [`status_outcome`], made permanent if the request was
    /// not idempotent and the server did not say it left it unprocessed (see
    /// [Method safety](self#method-safety)).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::client::{HttpClassifier, RequestMethod};
    /// use rampart::Outcome;
    ///
    /// let post = http::Request::post("/orders").body(()).unwrap();
    /// let mut res = http::Response::builder().status(502).body(()).unwrap();
    /// res.extensions_mut().insert(RequestMethod::of(&post));
    /// assert_eq!(HttpClassifier::default().response_outcome(&res), Outcome::Permanent);
    /// ```
    pub fn response_outcome<B>(&self, res: &Response<B>) -> Outcome {
        self.outcome_of(res.status(), res.headers(), res.extensions())
    }

    /// [`response_outcome`](Self::response_outcome) from a response's parts, for response
    /// types other than `http::Response` (reqwest's).
    pub(crate) fn outcome_of(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Outcome {
        let outcome = status_outcome(status, retry_after(headers));
        if !outcome.is_retryable() || self.retry_non_idempotent {
            return outcome;
        }
        match extensions.get::<RequestMethod>() {
            Some(m) if !m.idempotent && !(self.not_processed)(status, headers) => {
                // It may have been processed: repeating it could do it twice.
                Outcome::Permanent
            }
            _ => outcome,
        }
    }

    /// The outcome of a transport error. A response over the size limit is permanent (it
    /// would be as large again).
    pub fn error_outcome(&self, e: &HttpError) -> Outcome {
        if e.kind() == HttpErrorKind::TooLarge {
            return Outcome::Permanent;
        }
        if !e.reached_server() || e.idempotent() || self.retry_non_idempotent {
            Outcome::TRANSIENT
        } else {
            // It may have been processed: repeating it could do it twice.
            Outcome::Permanent
        }
    }
}

impl<B> Classify<Response<B>, HttpError> for HttpClassifier {
    fn classify(&self, result: Result<&Response<B>, &HttpError>) -> Outcome {
        match result {
            Ok(res) => self.response_outcome(res),
            Err(e) => self.error_outcome(e),
        }
    }
}

/// An HTTP service under a `Buffer`, tower `Timeout` or `BoxCloneService`: its [`HttpError`]s
/// are found by downcasting (see [`Downcast`](crate::classify::Downcast)).
impl<B> Classify<Response<B>, crate::BoxedError> for HttpClassifier {
    fn classify(&self, result: Result<&Response<B>, &crate::BoxedError>) -> Outcome {
        crate::classify::Downcast::<_, HttpError>::new(*self).classify(result)
    }
}
