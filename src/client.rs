//! An HTTP client as a tower service, with typed errors that say whether the request reached
//! the server, and the HTTP classifier: status codes, both forms of `Retry-After`, and the
//! method-safety rule.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rampart_core::{Classify, Outcome};
use tower_service::Service;

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

/// `true` for methods that may be repeated, or a request carrying an `Idempotency-Key`.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP/1.1 client over hyper-util with rustls (webpki roots) for `https`, as a tower
/// service from `Request<Bytes>` to `Response<Bytes>` (the body read whole). Cloning shares
/// the connection pool.
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
    inner: Client<Connector, Full<Bytes>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client that speaks `http` and `https`.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(https),
        }
    }
}

impl Service<Request<Bytes>> for HttpClient {
    type Response = Response<Bytes>;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let method = req.method().clone();
        let idempotent = is_idempotent(&method, req.headers());
        let (parts, body) = req.into_parts();
        let fut = self
            .inner
            .request(Request::from_parts(parts, Full::new(body)));
        Box::pin(async move {
            let res = fut.await.map_err(|e| {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                HttpError::new(kind, method.clone(), idempotent, e)
            })?;
            let (parts, body) = res.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Body, method, idempotent, e))?
                .to_bytes();
            Ok(Response::from_parts(parts, bytes))
        })
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

/// Classifies HTTP responses by status and `Retry-After`, and [`HttpError`]s by the
/// method-safety rule: a request that never reached the server (connect errors) is always
/// retryable; one that may have reached it only if it is idempotent (method or
/// `Idempotency-Key`) or the classifier was told that retrying it is safe.
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
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier {
    retry_non_idempotent: bool,
}

impl HttpClassifier {
    /// Also retries non-idempotent requests (POST, PATCH) after errors where they may have
    /// reached the server. Only for endpoints where a repeat is harmless.
    ///
    /// Defaults to `false`.
    #[must_use]
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry_non_idempotent = yes;
        self
    }

    /// The outcome of a transport error.
    pub fn error_outcome(&self, e: &HttpError) -> Outcome {
        if !e.reached_server() || e.idempotent() || self.retry_non_idempotent {
            Outcome::TRANSIENT
        } else {
            // It may have been processed: repeating it could do it twice.
            Outcome::Permanent
        }
    }
}

impl Classify<Response<Bytes>, HttpError> for HttpClassifier {
    fn classify(&self, result: Result<&Response<Bytes>, &HttpError>) -> Outcome {
        match result {
            Ok(res) => status_outcome(res.status(), retry_after(res.headers())),
            Err(e) => self.error_outcome(e),
        }
    }
}
