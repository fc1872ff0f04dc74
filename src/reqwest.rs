//! reqwest through rampart: a `reqwest::Client` as a tower service whose errors say whether
//! the request reached the server, classified by the same
//! [`HttpClassifier`](crate::client::HttpClassifier) as rampart's own HTTP client (status,
//! both forms of `Retry-After`, method safety), and a replay that copies `reqwest::Request`s.
//!
//! # Why a tower service, not a `reqwest-middleware` middleware
//!
//! A rampart policy is a tower `Layer` (retry, breaker, dead-letter, timeout share one
//! classifier and their state), and `reqwest::Client` already is a
//! `tower::Service<reqwest::Request>`. Stacking the layers on the client keeps one model for
//! every downstream and needs no second middleware framework; build requests with the
//! client's usual builder (`client.get(url).header(..).build()?`) and call the stack.
//!
//! The service takes `reqwest::Request`s, and also `http::Request<Bytes>` (converted for
//! each attempt): those are `Clone`, so a whole [`Policy`](crate::Policy) — dead-lettering
//! with [`HttpExtractor`](crate::dlq::HttpExtractor) and its redaction, retry, breaker,
//! timeout — stacks on the same service. With the `http` feature it also takes the
//! `http::Request<ReplayBody<B>>`s that
//! [`Policy::layer_streaming`](crate::Policy::layer_streaming) hands down, so a request whose
//! body streams (hyper's `Incoming`, axum's `Body`) is buffered once and every retry and the
//! dead-letter record share the buffer.
//!
//! # Proxies
//!
//! rampart's own [`HttpClient`](crate::client::HttpClient) connects directly; to go through
//! an HTTP proxy (SOCKS needs reqwest's `socks` feature), build the `reqwest::Client` with
//! `reqwest::Proxy` and wrap it: every attempt of a policy then goes through the proxy.
//!
//! # Replaying requests
//!
//! [`ReqwestReplay`] copies a request with `Request::try_clone`: any body given as bytes or a
//! string is replayable; a body from `Body::wrap_stream` cannot be copied, so such a request
//! gets one attempt, and a retryable failure ends as
//! [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable).
//!
//! # Example
//!
//! ```no_run
//! use rampart::client::HttpClassifier;
//! use rampart::reqwest::{ReqwestReplay, ReqwestService};
//! use rampart::{Backoff, RetryLayer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest::Client::new();
//! let api = ServiceBuilder::new()
//!     .layer(RetryLayer::new(HttpClassifier::default())
//!         .replay(ReqwestReplay)
//!         .backoff(Backoff::builder().max_retries(3).base_delay(Duration::from_millis(100)).build()?))
//!     .service(ReqwestService::new(client.clone()));
//! let res = api.oneshot(client.get("http://127.0.0.1:8080/v1/items").build()?).await?;
//! println!("{}", res.text().await?);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
#[cfg(feature = "http")]
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;

use rampart_core::{Classify, NotReplayable, Outcome};
use rampart_retry::Replay;
#[cfg(feature = "http")]
use rampart_retry::ReplayBody;
use tower_service::Service;

use crate::client::{is_idempotent, HttpClassifier, HttpError, HttpErrorKind};

/// A `reqwest::Client` as a tower service from `reqwest::Request` to `reqwest::Response`
/// (the body left to the caller to read), with [`HttpError`]s that say whether the request
/// reached the server and whether it was idempotent. Cloning shares the client's pool.
///
/// # Example
///
/// ```
/// use rampart::reqwest::ReqwestService;
///
/// let svc = ReqwestService::new(reqwest::Client::new());
/// assert!(format!("{svc:?}").starts_with("ReqwestService"));
/// ```
#[derive(Debug, Clone)]
pub struct ReqwestService {
    client: ::reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: ::reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn client(&self) -> &::reqwest::Client {
        &self.client
    }
}

/// The kind of a reqwest failure: connect errors never reached the server; body and decode
/// errors came while reading the response; everything else (timeouts, resets) may have
/// reached it.
///
/// # Example
///
/// ```
/// # async fn f() {
/// let e = reqwest::get("http://127.0.0.1:1/").await.unwrap_err();
/// assert_eq!(rampart::reqwest::error_kind(&e), rampart::client::HttpErrorKind::Connect);
/// # }
/// ```
pub fn error_kind(e: &::reqwest::Error) -> HttpErrorKind {
    if e.is_connect() {
        HttpErrorKind::Connect
    } else if e.is_body() || e.is_decode() {
        HttpErrorKind::Body
    } else {
        HttpErrorKind::Request
    }
}

/// Also a service of `http::Request<Bytes>`, converted to a `reqwest::Request` for each
/// attempt: such requests are `Clone`, so the whole [`Policy`](crate::Policy) stack works on
/// them — `CloneReplay` for retries, and dead-lettering with
/// [`HttpExtractor`](crate::dlq::HttpExtractor) and its redaction (the dead-letter layer keeps
/// a copy of each request).
impl Service<http::Request<Bytes>> for ReqwestService {
    type Response = ::reqwest::Response;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<::reqwest::Response, HttpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Service::<::reqwest::Request>::poll_ready(self, cx)
    }

    fn call(&mut self, req: http::Request<Bytes>) -> Self::Future {
        let method = req.method().clone();
        let idempotent = is_idempotent(&method, req.headers());
        match ::reqwest::Request::try_from(req) {
            Ok(req) => Service::<::reqwest::Request>::call(self, req),
            // Not a valid request for reqwest (the URL): never sent.
            Err(e) => Box::pin(std::future::ready(Err(HttpError::new(
                error_kind(&e),
                method,
                idempotent,
                e,
            )))),
        }
    }
}

/// Also a service of `http::Request<ReplayBody<B>>` (feature `http`): the requests that
/// [`Policy::layer_streaming`](crate::Policy::layer_streaming) hands down, whose body
/// streams (hyper's `Incoming`, axum's `Body`, a `StreamBody`) and was buffered once above
/// the policy. Each attempt sends its copy of the buffered bytes through
/// `reqwest::Body::wrap`; a body over the buffer limit streams through once.
///
/// # Example
///
/// ```no_run
/// use rampart::client::HttpClassifier;
/// use rampart::dlq::{HttpExtractor, MemoryStore};
/// use rampart::reqwest::ReqwestService;
/// use rampart::Policy;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn f(upload: axum::body::Body) -> Result<(), Box<dyn std::error::Error>> {
/// let policy = Policy::preset("tts").expect("a preset").build()?;
/// let blobs = ServiceBuilder::new()
///     .layer(policy.layer_streaming(HttpClassifier::default(), MemoryStore::default(), HttpExtractor::default()))
///     .service(ReqwestService::new(reqwest::Client::new()));
/// let req = http::Request::put("http://blobs.internal/k").body(upload)?;
/// println!("{}", blobs.oneshot(req).await?.status());
/// # Ok(()) }
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B> Service<http::Request<ReplayBody<B>>> for ReqwestService
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Unpin + Send + 'static,
{
    type Response = ::reqwest::Response;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<::reqwest::Response, HttpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Service::<::reqwest::Request>::poll_ready(self, cx)
    }

    fn call(&mut self, req: http::Request<ReplayBody<B>>) -> Self::Future {
        let req = req.map(|body| ::reqwest::Body::wrap(SyncBody(Mutex::new(body))));
        Service::<http::Request<::reqwest::Body>>::call(self, req)
    }
}

/// Converts an `http::Request<reqwest::Body>` and calls the client, stamping the response
/// with the request's method (or failing at once, never sent, on a URL reqwest refuses).
#[cfg(feature = "http")]
impl Service<http::Request<::reqwest::Body>> for ReqwestService {
    type Response = ::reqwest::Response;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<::reqwest::Response, HttpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Service::<::reqwest::Request>::poll_ready(self, cx)
    }

    fn call(&mut self, req: http::Request<::reqwest::Body>) -> Self::Future {
        let method = req.method().clone();
        let idempotent = is_idempotent(&method, req.headers());
        match ::reqwest::Request::try_from(req) {
            Ok(req) => Service::<::reqwest::Request>::call(self, req),
            Err(e) => Box::pin(std::future::ready(Err(HttpError::new(
                error_kind(&e),
                method,
                idempotent,
                e,
            )))),
        }
    }
}

/// `reqwest::Body::wrap` takes only `Sync` bodies, and some streaming bodies are not (axum's
/// `Body`): a `Mutex` makes any `Send` body `Sync`. Polling goes through `Mutex::get_mut`
/// (no lock); only `is_end_stream` and `size_hint`, which take `&self`, lock, uncontended.
#[cfg(feature = "http")]
struct SyncBody<B>(Mutex<B>);

#[cfg(feature = "http")]
impl<B> http_body::Body for SyncBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}

impl Service<::reqwest::Request> for ReqwestService {
    type Response = ::reqwest::Response;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<::reqwest::Response, HttpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Service::<::reqwest::Request>::poll_ready(&mut self.client, cx)
            .map_err(|e| HttpError::new(error_kind(&e), ::reqwest::Method::GET, false, e))
    }

    fn call(&mut self, req: ::reqwest::Request) -> Self::Future {
        let method = req.method().clone();
        let idempotent = is_idempotent(&method, req.headers());
        let fut = self.client.execute(req);
        Box::pin(async move {
            match fut.await {
                Ok(mut res) => {
                    // The method-safety rule applies to responses too: a 5xx to a POST
                    // without an Idempotency-Key is not retried (see `HttpClassifier`).
                    res.extensions_mut()
                        .insert(crate::client::RequestMethod::new(method, idempotent));
                    Ok(res)
                }
                Err(e) => Err(HttpError::new(error_kind(&e), method, idempotent, e)),
            }
        })
    }
}

/// reqwest responses classify like rampart's own HTTP client's: by status and `Retry-After`;
/// errors by the method-safety rule (see [`HttpClassifier`]). A request reqwest refused to
/// build (an invalid URL) is rejected: it was never sent and never will be.
impl Classify<::reqwest::Response, HttpError> for HttpClassifier {
    fn classify(&self, result: Result<&::reqwest::Response, &HttpError>) -> Outcome {
        match result {
            Ok(res) => self.outcome_of(res.status(), res.headers(), res.extensions()),
            Err(e) if is_builder_error(e) => Outcome::Rejected,
            Err(e) => self.error_outcome(e),
        }
    }
}

fn is_builder_error(e: &HttpError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<::reqwest::Error>())
        .is_some_and(::reqwest::Error::is_builder)
}

/// Replays a `reqwest::Request` with `Request::try_clone`: a streaming body is
/// [`NotReplayable`].
///
/// # Example
///
/// ```
/// use rampart::reqwest::ReqwestReplay;
/// use rampart::retry::Replay;
///
/// let client = reqwest::Client::new();
/// let req = client.post("http://127.0.0.1:9/orders").body("{}").build()?;
/// assert_eq!(ReqwestReplay.replay(&req)?.method(), reqwest::Method::POST);
///
/// let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("chunk")]);
/// let streaming = client.post("http://127.0.0.1:9/upload").body(reqwest::Body::wrap_stream(stream)).build()?;
/// assert!(ReqwestReplay.replay(&streaming).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReqwestReplay;

impl Replay<::reqwest::Request> for ReqwestReplay {
    fn replay(&self, req: &::reqwest::Request) -> Result<::reqwest::Request, NotReplayable> {
        req.try_clone().ok_or_else(|| {
            NotReplayable::new("the request body is a stream (reqwest cannot copy it)")
        })
    }
}
