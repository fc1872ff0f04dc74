//! gRPC for real: a tonic server on loopback (a small hand-written proto: `rampart.test.Echo`
//! with a unary and a server-streaming method) answering each status, pushback, `RetryInfo`,
//! Trailers-Only responses, a status in trailers after headers, and a stream that fails
//! mid-stream; a tonic client over a `Channel` wrapped in rampart's layers.
#![cfg(feature = "grpc")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http_body_util::StreamBody;
use prost::Message as _;
use rampart::grpc::{GrpcClassifier, GrpcError, GrpcLayer, GrpcReplay, MethodPolicy};
use rampart::retry::BufferBodyLayer;
use rampart::{Backoff, Jitter, RetryLayer};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower::ServiceBuilder;

/// `message Msg { string text = 1; uint32 n = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

const UNARY: &str = "/rampart.test.Echo/Unary";
const STREAM: &str = "/rampart.test.Echo/Stream";
const RAW: &str = "/rampart.test.Echo/Raw";

#[derive(Default)]
struct State {
    calls: Mutex<HashMap<String, u32>>,
    previous: Mutex<HashMap<String, Vec<Option<String>>>>,
}

impl State {
    /// Counts a call of `key`, recording its `grpc-previous-rpc-attempts`; the call's number.
    fn call(&self, key: &str, previous: Option<String>) -> u32 {
        self.previous
            .lock()
            .unwrap()
            .entry(key.into())
            .or_default()
            .push(previous);
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(key.into()).or_default();
        *n += 1;
        *n
    }
    fn calls(&self, key: &str) -> u32 {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    fn previous(&self, key: &str) -> Vec<Option<String>> {
        self.previous
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

/// The failure a script names: `unavailable`, `exhausted`, `deadline`, `invalid`, `notfound`,
/// `denied`, `unauth`, `internal`, `pushback:<value>` (UNAVAILABLE with that pushback),
/// `retryinfo:<ms>` (UNAVAILABLE with a RetryInfo).
fn failure(how: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    if let Some(v) = how.strip_prefix("pushback:") {
        let mut s = Status::unavailable("pushed back");
        s.metadata_mut()
            .insert("grpc-retry-pushback-ms", v.parse().unwrap());
        return s;
    }
    if let Some(ms) = how.strip_prefix("retryinfo:") {
        let d = Duration::from_millis(ms.parse().unwrap());
        return Status::with_error_details(
            Code::Unavailable,
            "busy",
            ErrorDetails::with_retry_info(Some(d)),
        );
    }
    let code = match how {
        "unavailable" => Code::Unavailable,
        "exhausted" => Code::ResourceExhausted,
        "deadline" => Code::DeadlineExceeded,
        "invalid" => Code::InvalidArgument,
        "notfound" => Code::NotFound,
        "denied" => Code::PermissionDenied,
        "unauth" => Code::Unauthenticated,
        "internal" => Code::Internal,
        other => panic!("unknown script {other}"),
    };
    Status::new(code, how.to_string())
}

/// Parses `key|fail_times|how`.
fn script(text: &str) -> (String, u32, String) {
    let mut it = text.splitn(3, '|');
    let key = it.next().unwrap().to_string();
    let times = it.next().unwrap_or("0").parse().unwrap();
    let how = it.next().unwrap_or("unavailable").to_string();
    (key, times, how)
}

fn previous_of(md: &tonic::metadata::MetadataMap) -> Option<String> {
    md.get("grpc-previous-rpc-attempts")
        .map(|v| v.to_str().unwrap().to_string())
}

#[derive(Clone)]
struct UnarySvc(Arc<State>);

impl tower::Service<tonic::Request<Msg>> for UnarySvc {
    type Response = tonic::Response<Msg>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<Msg>, Status>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (key, times, how) = script(&req.get_ref().text);
            let n = state.call(&key, previous_of(req.metadata()));
            if n <= times {
                return Err(failure(&how));
            }
            Ok(tonic::Response::new(Msg { text: key, n }))
        })
    }
}

type MsgStream = Pin<Box<dyn futures_util::Stream<Item = Result<Msg, Status>> + Send>>;

#[derive(Clone)]
struct StreamSvc(Arc<State>);

impl tower::Service<tonic::Request<Msg>> for StreamSvc {
    type Response = tonic::Response<MsgStream>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<MsgStream>, Status>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: tonic::Request<Msg>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            // `key|fail_times|mid`: fail after one message; `key|fail_times|first`: the
            // stream's first item is the error.
            let (key, times, how) = script(&req.get_ref().text);
            let n = state.call(&key, previous_of(req.metadata()));
            let one = Msg {
                text: key.clone(),
                n: 1,
            };
            let two = Msg { text: key, n: 2 };
            let items: Vec<Result<Msg, Status>> = if n > times {
                vec![Ok(one), Ok(two)]
            } else if how == "mid" {
                vec![Ok(one), Err(Status::unavailable("broke mid-stream"))]
            } else {
                vec![Err(Status::unavailable("broke before any message"))]
            };
            let stream: MsgStream = Box::pin(futures_util::stream::iter(items));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// `rampart.test.Echo`, routed by hand (what generated code does).
#[derive(Clone, Default)]
struct Echo(Arc<State>);

impl NamedService for Echo {
    const NAME: &'static str = "rampart.test.Echo";
}

fn frame(msg: &Msg) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut b).unwrap();
    b.freeze()
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let res = match req.uri().path() {
                UNARY => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                    grpc.unary(UnarySvc(state), req).await
                }
                STREAM => {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                    grpc.server_streaming(StreamSvc(state), req).await
                }
                RAW => {
                    // Headers first, the status only in the trailers (no message) for the
                    // first `x-fail` calls; then a unary success.
                    let key = req.headers()["x-key"].to_str().unwrap().to_string();
                    let times: u32 = req.headers()["x-fail"].to_str().unwrap().parse().unwrap();
                    let code = req.headers()["x-code"].to_str().unwrap().to_string();
                    let n = state.call(
                        &key,
                        previous_of(&tonic::metadata::MetadataMap::from_headers(
                            req.headers().clone(),
                        )),
                    );
                    let mut trailers = http::HeaderMap::new();
                    let mut frames: Vec<Result<http_body::Frame<Bytes>, Status>> = Vec::new();
                    if n <= times {
                        trailers.insert("grpc-status", code.parse().unwrap());
                    } else {
                        frames.push(Ok(http_body::Frame::data(frame(&Msg { text: key, n }))));
                        trailers.insert("grpc-status", "0".parse().unwrap());
                    }
                    frames.push(Ok(http_body::Frame::trailers(trailers)));
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(Body::new(StreamBody::new(futures_util::stream::iter(
                            frames,
                        ))))
                        .unwrap()
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(res)
        })
    }
}

async fn serve() -> (SocketAddr, Arc<State>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Echo::default();
    let state = echo.0.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo)
            .serve_with_incoming(tokio_stream_listener(listener)),
    );
    (addr, state)
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

fn backoff(retries: u32) -> Backoff {
    Backoff::builder()
        .max_retries(retries)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_secs(5))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

type Stack<C> = rampart::retry::BufferBody<
    rampart::Retry<rampart::grpc::GrpcService<tonic::transport::Channel>, C, GrpcReplay>,
>;
type Client<C = GrpcClassifier> = tonic::client::Grpc<Stack<C>>;

async fn client(addr: SocketAddr, classifier: GrpcClassifier) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    stack(channel, classifier, 3)
}

fn stack<C>(channel: tonic::transport::Channel, classifier: C, retries: u32) -> Client<C>
where
    C: rampart::Classify<http::Response<Body>, GrpcError> + Clone,
{
    let svc = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(64 * 1024))
        .layer(
            RetryLayer::new(classifier)
                .replay(GrpcReplay)
                .backoff(backoff(retries))
                .no_budget(),
        )
        .layer(GrpcLayer::new())
        .service(channel);
    tonic::client::Grpc::new(svc)
}

async fn unary<C>(c: &mut Client<C>, text: &str) -> Result<Msg, Status>
where
    Stack<C>: tonic::client::GrpcService<Body, ResponseBody = Body>,
{
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    c.unary(
        tonic::Request::new(Msg {
            text: text.into(),
            n: 0,
        }),
        PathAndQuery::from_static(UNARY),
        ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn unavailable_is_retried_and_each_retry_counts_its_previous_attempts() {
    let (addr, state) = serve().await;
    let mut c = client(addr, GrpcClassifier::new()).await;
    let msg = unary(&mut c, "a|2|unavailable").await.unwrap();
    assert_eq!(
        msg,
        Msg {
            text: "a".into(),
            n: 3
        }
    );
    assert_eq!(
        state.previous("a"),
        vec![None, Some("1".into()), Some("2".into())]
    );
    // Resource exhausted: throttled, retried.
    assert_eq!(unary(&mut c, "b|1|exhausted").await.unwrap().n, 2);
    // Out of retries: the caller sees the server's last status.
    let err = unary(&mut c, "c|10|unavailable").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(state.calls("c"), 4, "one call and three retries");
}

#[tokio::test]
async fn rejected_and_permanent_codes_are_not_retried() {
    let (addr, state) = serve().await;
    let mut c = client(addr, GrpcClassifier::new()).await;
    for (i, (how, code)) in [
        ("invalid", Code::InvalidArgument),
        ("notfound", Code::NotFound),
        ("denied", Code::PermissionDenied),
        ("unauth", Code::Unauthenticated),
        ("internal", Code::Internal),
        ("deadline", Code::DeadlineExceeded),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("k{i}");
        let err = unary(&mut c, &format!("{key}|1|{how}")).await.unwrap_err();
        assert_eq!(err.code(), code, "{how}");
        assert_eq!(state.calls(&key), 1, "{how} is not retried");
    }
}

#[tokio::test]
async fn deadline_exceeded_is_retried_for_idempotent_methods_only() {
    let (addr, state) = serve().await;
    let idempotent = GrpcClassifier::new().method(UNARY, MethodPolicy::new().idempotent(true));
    let mut c = client(addr, idempotent).await;
    assert_eq!(unary(&mut c, "d|1|deadline").await.unwrap().n, 2);
    assert_eq!(state.calls("d"), 2);
    // A per-method override: INTERNAL retried for this method.
    let custom = GrpcClassifier::new().method(
        UNARY,
        MethodPolicy::new().code(Code::Internal, rampart::Outcome::TRANSIENT),
    );
    let mut c = client(addr, custom).await;
    assert_eq!(unary(&mut c, "e|1|internal").await.unwrap().n, 2);
}

#[tokio::test]
async fn pushback_and_retry_info_set_the_delay_and_negative_pushback_stops() {
    let (addr, state) = serve().await;
    let mut c = client(addr, GrpcClassifier::new()).await;
    // The backoff alone waits 1 ms; the server's hints make it wait longer.
    let t = Instant::now();
    assert_eq!(unary(&mut c, "p|1|pushback:150").await.unwrap().n, 2);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(unary(&mut c, "r|1|retryinfo:120").await.unwrap().n, 2);
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );
    for (key, v) in [("neg", "-1"), ("bad", "soon")] {
        let err = unary(&mut c, &format!("{key}|1|pushback:{v}"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(state.calls(key), 1, "pushback {v} means do not retry");
    }
}

#[tokio::test]
async fn a_status_in_trailers_after_headers_is_classified_at_end_of_stream() {
    let (addr, state) = serve().await;
    let mut c = client(addr, GrpcClassifier::new()).await;
    let raw = |key: &str, fail: u32, code: &str| {
        let mut req = tonic::Request::new(Msg::default());
        let md = req.metadata_mut();
        md.insert("x-key", key.parse().unwrap());
        md.insert("x-fail", fail.to_string().parse().unwrap());
        md.insert("x-code", code.parse().unwrap());
        req
    };
    c.ready().await.unwrap();
    let msg = c
        .unary(
            raw("t", 2, "14"),
            PathAndQuery::from_static(RAW),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(msg.n, 3, "two UNAVAILABLE trailers retried");
    assert_eq!(state.previous("t")[2].as_deref(), Some("2"));
    c.ready().await.unwrap();
    let err = c
        .unary(
            raw("u", 2, "5"),
            PathAndQuery::from_static(RAW),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(state.calls("u"), 1, "NOT_FOUND in trailers is not retried");
}

async fn stream(c: &mut Client, text: &str) -> Result<Vec<Result<Msg, Status>>, Status> {
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let s = c
        .server_streaming(
            tonic::Request::new(Msg {
                text: text.into(),
                n: 0,
            }),
            PathAndQuery::from_static(STREAM),
            ProstCodec::default(),
        )
        .await?
        .into_inner();
    Ok(s.collect().await)
}

#[tokio::test]
async fn a_stream_failing_mid_stream_is_not_retried_once_a_message_arrived() {
    let (addr, state) = serve().await;
    let mut c = client(addr, GrpcClassifier::new()).await;
    let items = stream(&mut c, "m|5|mid").await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap().n, 1);
    assert_eq!(items[1].as_ref().unwrap_err().code(), Code::Unavailable);
    assert_eq!(state.calls("m"), 1, "committed after the first message");

    // A stream that fails before its first message is retried.
    let items = stream(&mut c, "f|2|first").await.unwrap();
    let ns: Vec<u32> = items.into_iter().map(|r| r.unwrap().n).collect();
    assert_eq!(ns, vec![1, 2]);
    assert_eq!(state.calls("f"), 3);
}

/// Counts the transport errors it classifies.
#[derive(Clone)]
struct Counting(GrpcClassifier, Arc<AtomicU32>);

impl rampart::Classify<http::Response<Body>, GrpcError> for Counting {
    fn classify(&self, r: Result<&http::Response<Body>, &GrpcError>) -> rampart::Outcome {
        if r.is_err() {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        self.0.classify(r)
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_retried() {
    // Reserve a port, close it: connecting there is refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let errors = Arc::new(AtomicU32::new(0));
    let mut c = stack(channel, Counting(GrpcClassifier::new(), errors.clone()), 2);
    let err = unary(&mut c, "z|0|unavailable").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        errors.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
}
