//! A `Policy` over streaming request bodies (issue 14, item 5): `Policy::layer_streaming`
//! buffers each body once, up to a limit; the retries and the dead-letter record share that
//! buffer; a body over the limit is sent once, never retried, and dead-lettered marked
//! truncated so that redrive skips it. Real HTTP over loopback: a hyper upstream that reads
//! every attempt's body, an axum proxy handler and a hyper proxy that forward their
//! `Request<Body>` / `Request<Incoming>` through the policy, and hyper-util's client below it.
#![cfg(all(feature = "policy", feature = "http"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::classify::Downcast;
use rampart::dlq::{
    redrive, DeadLetterReason, DeadLetterRecord, DeadLetterStore, HttpExtractor, ListQuery,
    MemoryStore, NotKeptWhole, SkipReason,
};
use rampart::retry::ReplayBody;
use rampart::{BoxError, ErrorKind, Leaf, LeafLayer, Outcome, Policy, StreamingPolicyService};
use tower::util::BoxService;
use tower::{Service, ServiceBuilder, ServiceExt};

type ClientError = hyper_util::client::legacy::Error;
type Classifier = fn(Result<&Response<Incoming>, &ClientError>) -> Outcome;

/// A 5xx response or a transport error is transient.
fn classify(r: Result<&Response<Incoming>, &ClientError>) -> Outcome {
    match r {
        Ok(res) if res.status().is_server_error() => Outcome::TRANSIENT,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::TRANSIENT,
    }
}

fn policy() -> Policy {
    Policy::builder("uploads")
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .budget(None)
        .breaker(None)
        .build()
        .unwrap()
}

fn client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

// ===== the upstream =====

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Read the whole body, then close the connection without answering.
    Drop,
}

/// A hyper server that reads every request's body whole, keeps it, and answers with the
/// next planned reply (then `then`).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Bytes>>>,
    plan: Arc<Mutex<VecDeque<Reply>>>,
    then: Arc<Mutex<Reply>>,
}

async fn upstream(plan: Vec<Reply>, then: Reply) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let plan = Arc::new(Mutex::new(VecDeque::from(plan)));
    let then = Arc::new(Mutex::new(then));
    let (s, p, t) = (seen.clone(), plan.clone(), then.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, plan, then) = (s.clone(), p.clone(), t.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, plan, then) = (seen.clone(), plan.clone(), then.clone());
                    async move {
                        let body = req.into_body().collect().await;
                        let body = body.map_err(std::io::Error::other)?.to_bytes();
                        seen.lock().unwrap().push(body);
                        let next = plan.lock().unwrap().pop_front();
                        match next.unwrap_or(*then.lock().unwrap()) {
                            Reply::Status(code) => Ok::<_, std::io::Error>(
                                Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from_static(b"upstream")))
                                    .unwrap(),
                            ),
                            Reply::Drop => Err(std::io::Error::other("closing without an answer")),
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        plan,
        then,
    }
}

impl Upstream {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn seen(&self) -> Vec<Bytes> {
        self.seen.lock().unwrap().clone()
    }
    /// Answers the next requests with `first`, then always with `then`.
    fn answer(&self, first: &[Reply], then: Reply) {
        self.plan.lock().unwrap().extend(first);
        *self.then.lock().unwrap() = then;
    }
}

// ===== bodies and records =====

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// `n` chunks of `size` bytes each, chunk `i` filled with `'a' + i % 26`.
fn chunks(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let letter = b'a' + u8::try_from(i % 26).unwrap();
            Bytes::from(vec![letter; size])
        })
        .collect()
}

fn whole(chunks: &[Bytes]) -> Bytes {
    chunks.concat().into()
}

/// A body that streams `chunks` one frame at a time, with no length announced.
fn stream(chunks: &[Bytes]) -> Chunks {
    let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

async fn records(store: &MemoryStore) -> Vec<DeadLetterRecord> {
    store.list(ListQuery::newest(100)).await.unwrap().records
}

/// The request a record describes, rebuilt for redrive (method, URI, UTF-8 body).
fn rebuild(r: &DeadLetterRecord) -> Option<Request<Full<Bytes>>> {
    let p = &r.request.payload;
    let body = p["body"].as_str()?.to_owned();
    Request::builder()
        .method(p["method"].as_str()?)
        .uri(p["uri"].as_str()?)
        .body(Full::new(Bytes::from(body)))
        .ok()
}

// ===== the tests =====

/// The service the axum proxy's state holds: the whole policy over hyper-util's client,
/// named by the crate's alias (so the alias is pinned too).
type AxumUpstream = StreamingPolicyService<
    Leaf<Client<HttpConnector, ReplayBody<axum::body::Body>>>,
    Classifier,
    MemoryStore,
    HttpExtractor,
>;

async fn forward(
    axum::extract::State((svc, to)): axum::extract::State<(AxumUpstream, SocketAddr)>,
    req: axum::extract::Request,
) -> StatusCode {
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{to}{}", parts.uri.path()).parse().unwrap();
    match svc.oneshot(Request::from_parts(parts, body)).await {
        Ok(res) => res.status(),
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

#[tokio::test]
async fn a_streaming_body_through_an_axum_proxy_is_retried_with_the_same_bytes() {
    let up = upstream(
        vec![Reply::Status(503), Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let store = MemoryStore::default();
    let layer = policy()
        .layer_streaming(
            classify as Classifier,
            store.clone(),
            HttpExtractor::default(),
        )
        .body_limit(64 * 1024);
    assert_eq!(layer.limit(), 64 * 1024);
    let svc: AxumUpstream = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(LeafLayer)
        .service(client());

    let app = axum::Router::new()
        .route("/upload", axum::routing::post(forward))
        .with_state((svc, up.addr));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The caller streams the body in 8 frames, with no length: the proxy's `Body` streams.
    let parts = chunks(8, 1000);
    let req = Request::post(format!("http://{proxy}/upload"))
        .body(stream(&parts))
        .unwrap();
    let res = client::<Chunks>().request(req).await.unwrap();
    assert_eq!(res.status(), 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 3, "two 503s, then 200");
    for (attempt, body) in seen.iter().enumerate() {
        assert_eq!(
            *body,
            whole(&parts),
            "attempt {} sent the whole body",
            attempt + 1
        );
    }
    assert!(records(&store).await.is_empty());
    assert!(layer.policy().dead_letters().recorded.is_empty());
}

#[tokio::test]
async fn an_exhausted_streaming_call_is_dead_lettered_once_with_the_whole_body() {
    let up = upstream(vec![], Reply::Status(503)).await;
    let store = MemoryStore::default();
    let layer = policy().layer_streaming(
        classify as Classifier,
        store.clone(),
        HttpExtractor::default().keep_header("content-type"),
    );
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(LeafLayer)
        .service(client::<ReplayBody<Chunks>>());

    let parts = chunks(5, 700);
    let req = Request::post(up.url("/v1/blobs"))
        .header("content-type", "text/plain")
        .body(stream(&parts))
        .unwrap();
    // A failed response is handed back as it is, after every attempt.
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(up.seen(), vec![whole(&parts); 3]);

    let all = records(&store).await;
    assert_eq!(all.len(), 1, "dead-lettered exactly once");
    let r = &all[0];
    assert_eq!(r.reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(r.attempts, 3);
    assert!(!r.truncated);
    let p = &r.request.payload;
    assert_eq!(p["method"], "POST");
    assert_eq!(p["uri"], up.url("/v1/blobs"));
    assert_eq!(p["headers"]["content-type"], "text/plain");
    assert_eq!(
        p["body"].as_str().unwrap().as_bytes(),
        &whole(&parts)[..],
        "the record holds the whole body"
    );
    assert_eq!(p["body_size"], 3500);
    assert_eq!(p["body_truncated"], false);
    assert!(r.kept_whole().is_ok());
    assert_eq!(
        layer.policy().dead_letters().recorded,
        vec![(DeadLetterReason::RetriesExhausted, 1)]
    );

    // Redrive sends the same bytes again.
    up.answer(&[], Reply::Status(200));
    let report = redrive(&store, &[r.id], client::<Full<Bytes>>(), rebuild, None)
        .await
        .unwrap();
    assert_eq!(report.redriven, 1);
    assert_eq!(up.seen().len(), 4);
    assert_eq!(up.seen()[3], whole(&parts));
    assert!(records(&store).await.is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_sent_once_and_not_replayable() {
    let up = upstream(vec![], Reply::Drop).await;
    let store = MemoryStore::default();
    let layer = policy()
        .layer_streaming(
            classify as Classifier,
            store.clone(),
            HttpExtractor::default(),
        )
        .body_limit(1024);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(LeafLayer)
        .service(client::<ReplayBody<Chunks>>());

    let parts = chunks(16, 1024);
    let req = Request::put(up.url("/big")).body(stream(&parts)).unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    match err.kind() {
        ErrorKind::NotReplayable { reason, last } => {
            assert!(
                reason.reason().contains("limit of 1024 bytes"),
                "{}",
                reason.reason()
            );
            assert!(matches!(**last, ErrorKind::Inner(_)), "the transport error");
        }
        other => panic!("expected NotReplayable, got {other:?}"),
    }
    assert_eq!(err.attempts(), 1);
    // The one attempt streamed the whole body, not only the buffered start.
    assert_eq!(up.seen(), vec![whole(&parts)]);

    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    let r = &all[0];
    assert_eq!(r.reason, DeadLetterReason::NotReplayable);
    assert_eq!(r.attempts, 1);
    assert!(r.truncated);
    assert_eq!(r.request.payload["body_truncated"], true);
    assert_eq!(r.request.payload["method"], "PUT");
    assert!(matches!(
        r.kept_whole(),
        Err(NotKeptWhole::Truncated { .. })
    ));
    // Redrive skips it without sending anything.
    let report = redrive(&store, &[r.id], client::<Full<Bytes>>(), rebuild, None)
        .await
        .unwrap();
    assert_eq!((report.redriven, report.skipped), (0, 1));
    assert!(matches!(
        report.skips[0].reason,
        SkipReason::NotKeptWhole(NotKeptWhole::Truncated { .. })
    ));
    assert_eq!(up.seen().len(), 1);
    assert_eq!(records(&store).await.len(), 1);
}

/// A hyper proxy: forwards each `Request<Incoming>` through `svc` to `to`, answers with the
/// upstream's status (502 on an error, with `x-not-replayable` when it was that).
async fn hyper_proxy<S>(svc: S, to: SocketAddr) -> SocketAddr
where
    S: Service<
            Request<Incoming>,
            Response = Response<Incoming>,
            Error = rampart::Error<ClientError>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let svc = svc.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        parts.uri = format!("http://{to}{}", parts.uri.path()).parse().unwrap();
                        let res = match svc.oneshot(Request::from_parts(parts, body)).await {
                            Ok(res) => Response::builder().status(res.status()),
                            Err(e) => Response::builder().status(502).header(
                                "x-not-replayable",
                                matches!(e.kind(), ErrorKind::NotReplayable { .. }).to_string(),
                            ),
                        };
                        Ok::<_, Infallible>(res.body(Empty::<Bytes>::new()).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_incoming_body_over_the_limit_through_a_hyper_proxy() {
    let up = upstream(vec![], Reply::Status(503)).await;
    let store = MemoryStore::default();
    let layer = policy()
        .layer_streaming(
            classify as Classifier,
            store.clone(),
            HttpExtractor::default(),
        )
        .body_limit(1024);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(LeafLayer)
        .service(client::<ReplayBody<Incoming>>());
    let proxy = hyper_proxy(svc.clone(), up.addr).await;

    // 16 KiB with a Content-Length: the proxy's `Incoming` announces its size.
    let big = Bytes::from(vec![b'z'; 16 * 1024]);
    let req = Request::post(format!("http://{proxy}/big"))
        .body(Full::new(big.clone()))
        .unwrap();
    let res = client::<Full<Bytes>>().request(req).await.unwrap();
    // The 503 is handed back; no retry: the body could not be replayed.
    assert_eq!(res.status(), 503);
    assert_eq!(up.seen(), vec![big.clone()]);
    let all = records(&store).await;
    assert_eq!(all.len(), 1);
    let r = &all[0];
    assert_eq!(r.reason, DeadLetterReason::NotReplayable);
    assert!(r.truncated);
    assert_eq!(r.original_size, Some(16 * 1024), "the announced size");
    assert_eq!(r.request.payload["body_size"], 16 * 1024);
    assert_eq!(r.request.payload["body_truncated"], true);

    // A small body through the same proxy is buffered and retried, with the same bytes.
    up.answer(&[Reply::Status(503)], Reply::Status(200));
    let small = Bytes::from_static(b"{\"order\":7}");
    let req = Request::post(format!("http://{proxy}/small"))
        .body(Full::new(small.clone()))
        .unwrap();
    let res = client::<Full<Bytes>>().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.seen()[1..], [small.clone(), small]);
    assert_eq!(records(&store).await.len(), 1);
}

/// Item 6, decided: a `BoxService` is not `Clone`, so it cannot sit directly under a
/// policy (the compiler says so, naming `Buffer` and `BoxCloneService`); in a `Buffer` it
/// can, and a streaming body is still retried with the same bytes.
#[tokio::test]
async fn a_box_service_in_a_buffer_under_the_streaming_policy() {
    let up = upstream(vec![Reply::Status(503)], Reply::Status(200)).await;
    let store = MemoryStore::default();
    let unique: BoxService<Request<ReplayBody<Chunks>>, Response<Incoming>, BoxError> =
        BoxService::new(ServiceExt::<Request<ReplayBody<Chunks>>>::map_err(
            client(),
            BoxError::from,
        ));
    // Under a Buffer the error is a `BoxError`: classify it by downcasting.
    let typed = Downcast::<_, ClientError>::new(classify as Classifier);
    let svc = ServiceBuilder::new()
        .layer(policy().layer_streaming(typed, store.clone(), HttpExtractor::default()))
        .buffer(8)
        .service(unique);
    let parts = chunks(3, 100);
    let req = Request::post(up.url("/boxed"))
        .body(stream(&parts))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(up.seen(), vec![whole(&parts); 2]);
    assert!(records(&store).await.is_empty());
}
