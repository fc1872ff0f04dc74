//! gRPC over tonic: the classifier for `tonic::Status` and for gRPC responses, and the layers
//! that make a `tonic::transport::Channel` retryable.
//!
//! # What is retried
//!
//! The mapping follows gRPC's retry design (A6): `UNAVAILABLE` is transient;
//! `RESOURCE_EXHAUSTED` throttled; `DEADLINE_EXCEEDED` transient only for methods marked
//! idempotent; `INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED` and `UNAUTHENTICATED`
//! rejected (the caller's fault); every other code permanent. Each method can mark itself
//! idempotent and override the outcome of any code ([`MethodPolicy`]).
//!
//! The server's hints are honoured: `grpc-retry-pushback-ms` (a negative or malformed value
//! means *do not retry*) and a `google.rpc.RetryInfo` in the status details
//! (`grpc-status-details-bin`) become the outcome's `retry_after`; pushback wins when both
//! are present. Every retry carries `grpc-previous-rpc-attempts` ([`GrpcReplay`]).
//!
//! # Headers, trailers and streams
//!
//! A gRPC status arrives in the response headers (a *Trailers-Only* response: how tonic
//! servers answer an error before any message) or in the trailers at the end of the stream
//! (every unary success, and errors a server sends after its headers). [`GrpcLayer`] reads a
//! response until its first message or its end, like tower-http's `ClassifyEos` classifies
//! at the end of a stream: when the stream ends before any message, the trailers' status is
//! classified (and retried when it says so); once a message has arrived the call is
//! *committed* — its response goes to the caller, and a failure later in the stream reaches
//! the caller as the stream's error, **never retried** (the caller has already seen data;
//! repeating the call could deliver it twice). This is A6's commit rule.
//!
//! # Example
//!
//! The usual `ServiceBuilder` line around a `Channel`; the generated client (or
//! `tonic::client::Grpc`) takes the stack as its transport:
//!
//! ```no_run
//! use rampart::grpc::{GrpcClassifier, GrpcLayer, GrpcReplay, MethodPolicy};
//! use rampart::retry::BufferBodyLayer;
//! use rampart::{Backoff, RetryLayer};
//! use tower::ServiceBuilder;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let classifier = GrpcClassifier::new()
//!     .method("/shop.Inventory/Get", MethodPolicy::new().idempotent(true));
//! let svc = ServiceBuilder::new()
//!     .layer(BufferBodyLayer::new(64 * 1024))     // request messages replayable up to 64 KiB
//!     .layer(RetryLayer::new(classifier).replay(GrpcReplay).backoff(Backoff::builder().max_retries(3).build()?))
//!     .layer(GrpcLayer::new())                    // status in headers or trailers, commit rule
//!     .service(channel);
//! let mut grpc = tonic::client::Grpc::new(svc); // or InventoryClient::new(svc)
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use rampart_core::{BoxError, Classify, NotReplayable, Outcome};
use rampart_retry::{HttpReplay, Replay, ReplayBody};
use tonic::Code;
use tonic_types::StatusExt as _;
use tower_layer::Layer;
use tower_service::Service;

/// The header that carries the status code.
pub const GRPC_STATUS: &str = "grpc-status";
/// The server's pushback header (milliseconds; negative or malformed: do not retry).
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// The header a retry carries: how many attempts came before it.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: &str = "grpc-previous-rpc-attempts";
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// The A6 outcome of a status `code`, before server hints: see the [module docs](self).
///
/// # Example
///
/// ```
/// use rampart::grpc::code_outcome;
/// use rampart::Outcome;
/// use tonic::Code;
///
/// assert_eq!(code_outcome(Code::Unavailable, false), Outcome::TRANSIENT);
/// assert_eq!(code_outcome(Code::DeadlineExceeded, false), Outcome::Permanent);
/// assert_eq!(code_outcome(Code::DeadlineExceeded, true), Outcome::TRANSIENT);
/// assert_eq!(code_outcome(Code::NotFound, true), Outcome::Rejected);
/// ```
pub fn code_outcome(code: Code, idempotent: bool) -> Outcome {
    match code {
        Code::Ok => Outcome::Success,
        Code::Unavailable => Outcome::TRANSIENT,
        Code::ResourceExhausted => Outcome::THROTTLED,
        Code::DeadlineExceeded if idempotent => Outcome::TRANSIENT,
        Code::InvalidArgument | Code::NotFound | Code::PermissionDenied | Code::Unauthenticated => {
            Outcome::Rejected
        }
        _ => Outcome::Permanent,
    }
}

/// A server's retry hint, as read from `grpc-retry-pushback-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Retry after this long.
    After(Duration),
    /// A negative or malformed value: the server says not to retry.
    DoNotRetry,
}

/// Parses a `grpc-retry-pushback-ms` value: a non-negative integer of milliseconds, or
/// [`Pushback::DoNotRetry`] for anything else (negative, not a number, not ASCII).
///
/// # Example
///
/// ```
/// use rampart::grpc::{parse_pushback, Pushback};
/// use std::time::Duration;
///
/// assert_eq!(parse_pushback(b"250"), Pushback::After(Duration::from_millis(250)));
/// assert_eq!(parse_pushback(b"-1"), Pushback::DoNotRetry);
/// assert_eq!(parse_pushback(b"soon"), Pushback::DoNotRetry);
/// ```
pub fn parse_pushback(value: &[u8]) -> Pushback {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(Pushback::DoNotRetry, |ms| {
            Pushback::After(Duration::from_millis(ms))
        })
}

/// How one method's failures are classified: whether it is idempotent (so a
/// `DEADLINE_EXCEEDED` is retried) and per-code overrides.
///
/// # Example
///
/// ```
/// use rampart::grpc::MethodPolicy;
/// use rampart::Outcome;
/// use tonic::Code;
///
/// let p = MethodPolicy::new().idempotent(true).code(Code::Aborted, Outcome::TRANSIENT);
/// assert_eq!(p.outcome(Code::Aborted), Outcome::TRANSIENT);
/// assert_eq!(p.outcome(Code::DeadlineExceeded), Outcome::TRANSIENT);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MethodPolicy {
    idempotent: bool,
    overrides: Vec<(Code, Outcome)>,
}

impl MethodPolicy {
    /// Not idempotent, no overrides: the A6 mapping.
    pub fn new() -> Self {
        MethodPolicy::default()
    }

    /// Marks the method idempotent (safe to repeat after a deadline ran out).
    #[must_use]
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    /// Classifies `code` as `outcome` for this method (the last call for a code wins).
    #[must_use]
    pub fn code(mut self, code: Code, outcome: Outcome) -> Self {
        self.overrides.retain(|(c, _)| *c != code);
        self.overrides.push((code, outcome));
        self
    }

    /// The outcome of `code` for this method, before server hints.
    pub fn outcome(&self, code: Code) -> Outcome {
        self.overrides
            .iter()
            .find(|(c, _)| *c == code)
            .map_or_else(|| code_outcome(code, self.idempotent), |(_, o)| *o)
    }
}

/// Classifies gRPC calls: `tonic::Status` errors (a generated client's calls wrapped in a
/// service), and HTTP responses of a `Channel` through [`GrpcLayer`] (status in headers or
/// trailers). See the [module docs](self) for the mapping and the hints. Cloning is cheap
/// (the per-method table is shared).
///
/// # Example
///
/// ```
/// use rampart::grpc::{GrpcClassifier, MethodPolicy};
/// use rampart::{Classify, Outcome};
/// use std::time::Duration;
///
/// let c = GrpcClassifier::new().method("/shop.Inventory/Get", MethodPolicy::new().idempotent(true));
/// let mut status = tonic::Status::resource_exhausted("slow down");
/// status.metadata_mut().insert("grpc-retry-pushback-ms", "1500".parse().unwrap());
/// assert_eq!(
///     Classify::<(), tonic::Status>::classify(&c, Err(&status)),
///     Outcome::Throttled { retry_after: Some(Duration::from_millis(1500)) }
/// );
/// let late = tonic::Status::deadline_exceeded("late");
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&late)), Outcome::Permanent);
/// assert_eq!(Classify::<(), _>::classify(&c.for_method("/shop.Inventory/Get"), Err(&late)), Outcome::TRANSIENT);
/// ```
#[derive(Debug, Clone, Default)]
pub struct GrpcClassifier {
    default: Arc<MethodPolicy>,
    methods: Arc<HashMap<String, Arc<MethodPolicy>>>,
}

impl GrpcClassifier {
    /// The A6 mapping for every method, none idempotent.
    pub fn new() -> Self {
        GrpcClassifier::default()
    }

    /// The policy of methods without their own.
    #[must_use]
    pub fn default_policy(mut self, policy: MethodPolicy) -> Self {
        self.default = Arc::new(policy);
        self
    }

    /// The policy of the method at `path` (`/package.Service/Method`).
    #[must_use]
    pub fn method(mut self, path: impl Into<String>, policy: MethodPolicy) -> Self {
        Arc::make_mut(&mut self.methods).insert(path.into(), Arc::new(policy));
        self
    }

    /// A classifier of `tonic::Status` for calls of the method at `path` (a status carries
    /// no method name, so a generated client's call is classified with its method's policy
    /// this way).
    pub fn for_method(&self, path: &str) -> MethodClassifier {
        MethodClassifier(self.policy(path))
    }

    fn policy(&self, path: &str) -> Arc<MethodPolicy> {
        self.methods
            .get(path)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// The outcome of a gRPC status found in `headers` (response headers or trailers) of
    /// the method at `path`; `None` if they carry no `grpc-status`.
    pub fn headers_outcome(&self, path: &str, headers: &HeaderMap) -> Option<Outcome> {
        headers_outcome(&self.policy(path), headers)
    }
}

/// A [`GrpcClassifier`] bound to one method's policy, for `tonic::Status`. Made by
/// [`GrpcClassifier::for_method`].
///
/// # Example
///
/// ```
/// use rampart::grpc::{GrpcClassifier, MethodPolicy};
/// use rampart::{Classify, Outcome};
///
/// let c = GrpcClassifier::new().method("/a.B/C", MethodPolicy::new().idempotent(true)).for_method("/a.B/C");
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&tonic::Status::deadline_exceeded(""))), Outcome::TRANSIENT);
/// ```
#[derive(Debug, Clone)]
pub struct MethodClassifier(Arc<MethodPolicy>);

/// The outcome of a `tonic::Status` under `policy`, with its pushback metadata and
/// `RetryInfo` details as hints.
fn status_outcome(policy: &MethodPolicy, status: &tonic::Status) -> Outcome {
    let outcome = policy.outcome(status.code());
    let pushback = status
        .metadata()
        .get(GRPC_RETRY_PUSHBACK_MS)
        .map(|v| parse_pushback(v.as_bytes()));
    let retry_info = || status.get_details_retry_info().and_then(|r| r.retry_delay);
    with_hints(outcome, pushback, retry_info)
}

fn with_hints(
    outcome: Outcome,
    pushback: Option<Pushback>,
    retry_info: impl FnOnce() -> Option<Duration>,
) -> Outcome {
    if !outcome.is_retryable() {
        return outcome;
    }
    let hint = match pushback {
        Some(Pushback::DoNotRetry) => return Outcome::Permanent,
        Some(Pushback::After(d)) => Some(d),
        None => retry_info(),
    };
    match (outcome, hint) {
        (Outcome::Transient { .. }, Some(d)) => Outcome::Transient {
            retry_after: Some(d),
        },
        (Outcome::Throttled { .. }, Some(d)) => Outcome::Throttled {
            retry_after: Some(d),
        },
        (o, _) => o,
    }
}

const DETAILS_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn headers_outcome(policy: &MethodPolicy, headers: &HeaderMap) -> Option<Outcome> {
    let code = Code::from_bytes(headers.get(GRPC_STATUS)?.as_bytes());
    let outcome = policy.outcome(code);
    let pushback = headers
        .get(GRPC_RETRY_PUSHBACK_MS)
        .map(|v| parse_pushback(v.as_bytes()));
    let retry_info = || {
        // Not `Status::from_header_map`: it panics on details that are not base64.
        let details = DETAILS_B64
            .decode(headers.get(GRPC_STATUS_DETAILS)?.as_bytes())
            .ok()?;
        tonic::Status::with_details(code, "", Bytes::from(details))
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
    };
    Some(with_hints(outcome, pushback, retry_info))
}

/// gRPC's mapping of HTTP statuses from a proxy (a response without `grpc-status`).
fn http_status_code(status: http::StatusCode) -> Option<Code> {
    match status.as_u16() {
        200 => None,
        400 => Some(Code::Internal),
        401 => Some(Code::Unauthenticated),
        403 => Some(Code::PermissionDenied),
        404 => Some(Code::Unimplemented),
        429 | 502 | 503 | 504 => Some(Code::Unavailable),
        _ => Some(Code::Unknown),
    }
}

impl<Res> Classify<Res, tonic::Status> for GrpcClassifier {
    fn classify(&self, result: Result<&Res, &tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(s) => status_outcome(&self.default, s),
        }
    }
}

impl<Res> Classify<Res, tonic::Status> for MethodClassifier {
    fn classify(&self, result: Result<&Res, &tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(s) => status_outcome(&self.0, s),
        }
    }
}

impl<B> Classify<Response<B>, GrpcError> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &GrpcError>) -> Outcome {
        match result {
            // A transport failure before any message: gRPC reports it as UNAVAILABLE.
            Err(_) => Outcome::TRANSIENT,
            Ok(res) => {
                let path = res
                    .extensions()
                    .get::<GrpcMethod>()
                    .map_or("", |m| m.path());
                let policy = self.policy(path);
                if let Some(o) = headers_outcome(&policy, res.headers()) {
                    return o;
                }
                if let Some(code) = http_status_code(res.status()) {
                    return with_hints(policy.outcome(code), None, || None);
                }
                match res.extensions().get::<EndOfStream>() {
                    Some(EndOfStream(Some(trailers))) => {
                        headers_outcome(&policy, trailers).unwrap_or(Outcome::Success)
                    }
                    // Ended without a status: a broken server (gRPC says INTERNAL).
                    Some(EndOfStream(None)) => policy.outcome(Code::Internal),
                    // A message arrived: committed.
                    None => Outcome::Success,
                }
            }
        }
    }
}

/// The method a response answers (`/package.Service/Method`), put in its extensions by
/// [`GrpcLayer`] so the classifier applies the method's policy.
///
/// # Example
///
/// ```
/// use rampart::grpc::GrpcMethod;
/// assert_eq!(GrpcMethod::new("/a.B/C").path(), "/a.B/C");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethod(Arc<str>);

impl GrpcMethod {
    /// The method at `path`.
    pub fn new(path: &str) -> Self {
        GrpcMethod(Arc::from(path))
    }

    /// The path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        &self.0
    }
}

/// Put in a response's extensions by [`GrpcLayer`] when the stream ended before any message:
/// its trailers (`None` if it ended without any).
#[derive(Debug, Clone)]
pub struct EndOfStream(pub Option<HeaderMap>);

/// A gRPC call failed below the status level: the transport (connect, reset, a stream
/// error) failed before any message arrived.
#[derive(Debug)]
pub struct GrpcError {
    method: GrpcMethod,
    source: BoxError,
}

impl GrpcError {
    /// A failure of the call to `method`.
    pub fn new(method: GrpcMethod, source: impl Into<BoxError>) -> Self {
        GrpcError {
            method,
            source: source.into(),
        }
    }

    /// The method called.
    pub fn method(&self) -> &GrpcMethod {
        &self.method
    }
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gRPC call {} failed", self.method.path())
    }
}

impl std::error::Error for GrpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Makes a gRPC transport (a `tonic::transport::Channel`) classifiable and retryable: maps
/// its error to [`GrpcError`], tags each response with its [`GrpcMethod`], and reads each
/// response that has no status in its headers until its first message or its end (see the
/// [module docs](self)). Requests with a [`ReplayBody`] (from `BufferBodyLayer`) are
/// passed on as `tonic::body::Body`.
///
/// # Example
///
/// ```
/// use rampart::grpc::GrpcLayer;
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let svc = ServiceBuilder::new().layer(GrpcLayer::new()).service(channel);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct GrpcLayer;

impl GrpcLayer {
    /// The layer.
    pub const fn new() -> Self {
        GrpcLayer
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner }
    }
}

/// The service made by [`GrpcLayer`].
#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
}

impl<S> GrpcService<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        GrpcService { inner }
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S, B, ResBody> Service<Request<ReplayBody<B>>> for GrpcService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError> + Unpin + Send,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<tonic::body::Body>;
    type Error = rampart_core::Error<GrpcError>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| rampart_core::Error::from_inner(GrpcError::new(GrpcMethod::new(""), e)))
    }

    fn call(&mut self, req: Request<ReplayBody<B>>) -> Self::Future {
        let method = GrpcMethod::new(req.uri().path());
        let fut = self.inner.call(req.map(tonic::body::Body::new));
        Box::pin(async move {
            let fail = |m: &GrpcMethod, e: BoxError| {
                rampart_core::Error::from_inner(GrpcError::new(m.clone(), e))
            };
            let res = fut.await.map_err(|e| fail(&method, e.into()))?;
            let (mut parts, mut body) = res.into_parts();
            parts.extensions.insert(method.clone());
            if parts.headers.contains_key(GRPC_STATUS) || parts.status != http::StatusCode::OK {
                return Ok(Response::from_parts(parts, tonic::body::Body::new(body)));
            }
            // Read until the first message or the end of the stream.
            let mut first = None;
            let mut trailers = None;
            let mut ended = false;
            loop {
                match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    None => {
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => return Err(fail(&method, e.into())),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => {
                            first = Some(Frame::data(data));
                            break;
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                trailers = Some(t);
                            }
                            ended = true;
                            break;
                        }
                    },
                }
            }
            if ended {
                parts.extensions.insert(EndOfStream(trailers.clone()));
                first = trailers.map(Frame::trailers);
            }
            let body = Peeked {
                first,
                rest: (!ended).then_some(body),
            };
            Ok(Response::from_parts(parts, tonic::body::Body::new(body)))
        })
    }
}

/// A response body whose first frame was read ahead.
struct Peeked<B> {
    first: Option<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> Body for Peeked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match this.rest.as_mut() {
            Some(rest) => {
                let frame = ready!(Pin::new(rest).poll_frame(cx));
                if frame.is_none() {
                    this.rest = None;
                }
                Poll::Ready(frame)
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let Some(rest) = self.rest.as_ref() else {
            return SizeHint::with_exact(held);
        };
        let r = rest.size_hint();
        let mut hint = SizeHint::new();
        if let Some(u) = r.upper() {
            hint.set_upper(u.saturating_add(held));
        }
        hint.set_lower(r.lower().saturating_add(held));
        hint
    }
}

/// Replays a gRPC request buffered by `BufferBodyLayer` (like `HttpReplay`), counting the
/// attempts in `grpc-previous-rpc-attempts`: the first retry carries `1`, the next `2`, …
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use rampart::grpc::GrpcReplay;
/// use rampart::retry::{Replay, ReplayBody};
///
/// let req = http::Request::post("http://svc/a.B/C")
///     .body(ReplayBody::<http_body_util::Empty<Bytes>>::full(Bytes::from_static(b"\0\0\0\0\0")))?;
/// let retry = GrpcReplay.replay(&req)?;
/// assert_eq!(retry.headers()["grpc-previous-rpc-attempts"], "1");
/// assert_eq!(GrpcReplay.replay(&retry)?.headers()["grpc-previous-rpc-attempts"], "2");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcReplay;

impl<B: Body> Replay<Request<ReplayBody<B>>> for GrpcReplay {
    fn replay(
        &self,
        req: &Request<ReplayBody<B>>,
    ) -> Result<Request<ReplayBody<B>>, NotReplayable> {
        let mut copy = HttpReplay.replay(req)?;
        let before = req
            .headers()
            .get(GRPC_PREVIOUS_RPC_ATTEMPTS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        copy.headers_mut().insert(
            GRPC_PREVIOUS_RPC_ATTEMPTS,
            HeaderValue::from(before.saturating_add(1)),
        );
        Ok(copy)
    }

    /// The request as it was made (no attempt count), for a dead-letter record.
    fn keep(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        HttpReplay.keep(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        h
    }

    #[test]
    fn a6_mapping() {
        use Code::*;
        for (code, idem, want) in [
            (Ok, false, Outcome::Success),
            (Unavailable, false, Outcome::TRANSIENT),
            (ResourceExhausted, false, Outcome::THROTTLED),
            (DeadlineExceeded, false, Outcome::Permanent),
            (DeadlineExceeded, true, Outcome::TRANSIENT),
            (InvalidArgument, true, Outcome::Rejected),
            (NotFound, false, Outcome::Rejected),
            (PermissionDenied, false, Outcome::Rejected),
            (Unauthenticated, false, Outcome::Rejected),
            (Internal, true, Outcome::Permanent),
            (Aborted, true, Outcome::Permanent),
            (Unknown, false, Outcome::Permanent),
            (Unimplemented, false, Outcome::Permanent),
            (DataLoss, false, Outcome::Permanent),
        ] {
            assert_eq!(code_outcome(code, idem), want, "{code:?} idempotent={idem}");
        }
    }

    #[test]
    fn headers_and_hints() {
        let p = MethodPolicy::new();
        assert_eq!(headers_outcome(&p, &hm(&[])), None);
        assert_eq!(
            headers_outcome(
                &p,
                &hm(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "30")])
            ),
            Some(Outcome::Transient {
                retry_after: Some(Duration::from_millis(30))
            })
        );
        for bad in ["-1", "1.5", "", "9999999999999999999999", "ms"] {
            assert_eq!(
                headers_outcome(
                    &p,
                    &hm(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", bad)])
                ),
                Some(Outcome::Permanent),
                "{bad:?}"
            );
        }
        // Pushback does not make a non-retryable status retryable.
        assert_eq!(
            headers_outcome(
                &p,
                &hm(&[("grpc-status", "5"), ("grpc-retry-pushback-ms", "10")])
            ),
            Some(Outcome::Rejected)
        );
        // Not base64 details are ignored, never a panic.
        assert_eq!(
            headers_outcome(
                &p,
                &hm(&[("grpc-status", "8"), ("grpc-status-details-bin", "%%%")])
            ),
            Some(Outcome::THROTTLED)
        );
        // A code out of range is UNKNOWN: permanent.
        assert_eq!(
            headers_outcome(&p, &hm(&[("grpc-status", "99")])),
            Some(Outcome::Permanent)
        );
    }

    #[test]
    fn retry_info_in_details() {
        use tonic_types::{ErrorDetails, StatusExt};
        let status = tonic::Status::with_error_details(
            Code::Unavailable,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(700))),
        );
        let p = MethodPolicy::new();
        assert_eq!(
            status_outcome(&p, &status),
            Outcome::Transient {
                retry_after: Some(Duration::from_millis(700))
            }
        );
        // In headers, base64 with or without padding.
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            let b64 = engine.encode(status.details());
            assert_eq!(
                headers_outcome(
                    &p,
                    &hm(&[("grpc-status", "14"), ("grpc-status-details-bin", &b64)])
                ),
                Some(Outcome::Transient {
                    retry_after: Some(Duration::from_millis(700))
                })
            );
        }
    }

    #[tokio::test]
    async fn a_peeked_body_yields_its_first_frame_then_the_rest() {
        use http_body_util::BodyExt;
        let rest = http_body_util::Full::new(Bytes::from_static(b"-tail"));
        let body = Peeked {
            first: Some(Frame::data(Bytes::from_static(b"head"))),
            rest: Some(rest),
        };
        assert_eq!(body.size_hint().exact(), Some(9));
        assert!(!body.is_end_stream());
        let all = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(all.as_deref(), Some(&b"head-tail"[..]));
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("14"));
        let ended: Peeked<http_body_util::Full<Bytes>> = Peeked {
            first: Some(Frame::trailers(t)),
            rest: None,
        };
        assert_eq!(ended.size_hint().exact(), Some(0));
        let collected = ended.collect().await.ok();
        let trailers = collected.as_ref().and_then(|c| c.trailers());
        assert_eq!(
            trailers
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
    }

    proptest::proptest! {
        #[test]
        fn pushback_is_a_non_negative_integer_or_do_not_retry(n in proptest::num::i64::ANY) {
            let want = u64::try_from(n).map_or(Pushback::DoNotRetry, |ms| Pushback::After(Duration::from_millis(ms)));
            proptest::prop_assert_eq!(parse_pushback(n.to_string().as_bytes()), want);
        }

        #[test]
        fn pushback_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..32)) {
            let p = parse_pushback(&bytes);
            let as_u64 = std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<u64>().ok());
            proptest::prop_assert_eq!(p, as_u64.map_or(Pushback::DoNotRetry, |ms| Pushback::After(Duration::from_millis(ms))));
        }

        #[test]
        fn any_grpc_status_header_classifies_without_panicking(
            status in proptest::collection::vec(proptest::num::u8::ANY, 0..6),
            details in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&status) {
                h.insert(GRPC_STATUS, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&details) {
                h.insert(GRPC_STATUS_DETAILS, v);
            }
            let _ = headers_outcome(&MethodPolicy::new(), &h);
        }
    }

    #[test]
    fn overrides_per_method() {
        let c = GrpcClassifier::new()
            .default_policy(MethodPolicy::new().code(Code::Internal, Outcome::TRANSIENT))
            .method("/a.B/Get", MethodPolicy::new().idempotent(true));
        let internal = tonic::Status::internal("x");
        let late = tonic::Status::deadline_exceeded("x");
        assert_eq!(
            Classify::<(), _>::classify(&c, Err(&internal)),
            Outcome::TRANSIENT
        );
        let get = c.for_method("/a.B/Get");
        assert_eq!(
            Classify::<(), _>::classify(&get, Err(&internal)),
            Outcome::Permanent
        );
        assert_eq!(
            Classify::<(), _>::classify(&get, Err(&late)),
            Outcome::TRANSIENT
        );
        assert_eq!(
            Classify::<(), _>::classify(&c.for_method("/a.B/Other"), Err(&late)),
            Outcome::Permanent
        );
    }
}
