//! tower-http layers around and under rampart's client and policy (issue 14): decompression,
//! redirects, request headers and tracing above and below the policy; the streaming client's
//! limits; the adapters between tower-http's classifiers and rampart's. Real HTTP over
//! loopback against a hyper server started by the test.
#![cfg(feature = "client")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use rampart::client::{
    CollectBodyLayer, HttpClassifier, HttpClient, HttpError, HttpErrorKind, MethodSafetyLayer,
    ResponseTooLarge,
};
use rampart::dlq::{MemoryStore, RequestPart};
use rampart::{Policy, PolicyLayer};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_http::decompression::DecompressionLayer;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

/// `{"items":["a","b"]}`, gzipped.
const ITEMS_GZ: &[u8] = include_bytes!("data/items.json.gz");
const ITEMS: &str = r#"{"items":["a","b"]}"#;
/// 1 MiB of zeros, gzipped (1 KiB on the wire).
const ZEROS_GZ: &[u8] = include_bytes!("data/zeros-1mib.gz");

#[derive(Clone)]
struct Route {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [u8],
    /// Sent in 10-byte chunks without a `Content-Length`.
    chunked: bool,
}

fn route(status: u16) -> Route {
    Route {
        status,
        headers: vec![],
        body: b"body",
        chunked: false,
    }
}

impl Route {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn body(mut self, body: &'static [u8]) -> Self {
        self.body = body;
        self
    }
    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    headers: http::HeaderMap,
}

/// A loopback server: each path answers with its route (200 "body" by default); it records
/// every request per path.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
}

async fn server(routes: Vec<(&'static str, Route)>) -> Server {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    let routes: Arc<HashMap<&'static str, Route>> = Arc::new(routes.into_iter().collect());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (routes, seen) = (routes.clone(), s.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (routes, seen) = (routes.clone(), seen.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        seen.lock()
                            .unwrap()
                            .entry(path.clone())
                            .or_default()
                            .push(Seen {
                                method: req.method().to_string(),
                                headers: req.headers().clone(),
                            });
                        let r = routes.get(path.as_str()).cloned().unwrap_or(route(200));
                        let mut res = Response::builder().status(r.status);
                        for (k, v) in r.headers {
                            res = res.header(k, v);
                        }
                        let body: BoxBody<Bytes, Infallible> = if r.chunked {
                            let chunks = r
                                .body
                                .chunks(10)
                                .map(|c| Ok(hyper::body::Frame::data(Bytes::from_static(c))))
                                .collect::<Vec<_>>();
                            StreamBody::new(futures_util::stream::iter(chunks)).boxed()
                        } else {
                            Full::new(Bytes::from_static(r.body)).boxed()
                        };
                        Ok::<_, Infallible>(res.body(body).unwrap())
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Server { addr, seen }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
    fn hits(&self, path: &str) -> usize {
        self.seen(path).len()
    }
    /// The values of `header` in each request to `path`.
    fn header(&self, path: &str, header: &str) -> Vec<Option<String>> {
        self.seen(path)
            .iter()
            .map(|s| {
                s.headers
                    .get(header)
                    .map(|v| v.to_str().unwrap().to_owned())
            })
            .collect()
    }
}

type Extractor = fn(&Request<Full<Bytes>>) -> RequestPart;

/// `HttpExtractor` reads byte bodies; a `Full` body is described by its URI.
fn by_uri(r: &Request<Full<Bytes>>) -> RequestPart {
    RequestPart {
        summary: r.uri().to_string(),
        ..Default::default()
    }
}

fn policy<C: Clone>(classifier: C) -> PolicyLayer<C, MemoryStore, Extractor> {
    Policy::builder("api")
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .budget(None)
        .breaker(None)
        .build()
        .unwrap()
        .layer(classifier, MemoryStore::default(), by_uri as Extractor)
}

fn req(method: &str, url: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// A GET without a body (tower-http's `FollowRedirect` re-sends only empty bodies, unless its
/// policy can clone them).
fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

fn gzip_routes() -> Vec<(&'static str, Route)> {
    vec![
        (
            "/items",
            route(200)
                .header("content-encoding", "gzip")
                .header("content-type", "application/json")
                .body(ITEMS_GZ),
        ),
        (
            "/down",
            route(503).header("content-encoding", "gzip").body(ITEMS_GZ),
        ),
        (
            "/corrupt",
            route(200)
                .header("content-encoding", "gzip")
                .body(b"this is not gzip"),
        ),
        (
            "/zeros",
            route(200).header("content-encoding", "gzip").body(ZEROS_GZ),
        ),
    ]
}

// ===== the streaming client: any request body, limits while streaming =====

#[tokio::test]
async fn streaming_client_takes_any_body_and_limits_while_streaming() {
    let s = server(vec![
        ("/chunked", route(200).body(&[b'x'; 100]).chunked()),
        ("/sized", route(200).body(&[b'x'; 100])),
    ])
    .await;
    // Bodies of several types, through one client.
    let client = HttpClient::builder().max_response_bytes(64).build();
    let streaming = client.streaming();
    let res = streaming.clone().oneshot(get(&s.url("/a"))).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "body");
    let empty = Request::get(s.url("/b"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = streaming.clone().oneshot(empty).await.unwrap();
    assert_eq!(res.status(), 200);
    let frames = futures_util::stream::iter(
        ["up", "load"].map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(c)))),
    );
    let res = streaming
        .clone()
        .oneshot(
            Request::put(s.url("/c"))
                .body(StreamBody::new(frames))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        s.header("/c", "transfer-encoding"),
        [Some("chunked".to_owned())]
    );

    // A Content-Length over the limit fails the call itself, before the body is read.
    let err = streaming
        .clone()
        .oneshot(get(&s.url("/sized")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::TooLarge);
    // A body without one fails while it streams, once 64 bytes are passed.
    let res = streaming
        .clone()
        .oneshot(get(&s.url("/chunked")))
        .await
        .unwrap();
    let mut body = std::pin::pin!(res.into_body());
    let mut got = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => got += frame.into_data().unwrap().len(),
            Some(Err(e)) => break e,
            None => panic!("the body must fail"),
        }
    };
    assert_eq!(err.kind(), HttpErrorKind::TooLarge);
    assert!(got <= 64, "{got}");
    let src = std::error::Error::source(&err).unwrap();
    assert_eq!(
        src.downcast_ref::<ResponseTooLarge>(),
        Some(&ResponseTooLarge { limit: 64 })
    );
    // After the error it ends.
    assert!(body.frame().await.is_none());
    // The collected client reports the same.
    let err = client
        .oneshot(Request::get(s.url("/chunked")).body(Bytes::new()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::TooLarge);
}

#[tokio::test]
async fn streaming_body_is_bounded_by_the_request_timeout() {
    let addr = hanging_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
    let client = HttpClient::builder()
        .request_timeout(Some(Duration::from_millis(200)))
        .build()
        .streaming();
    let res = client
        .clone()
        .oneshot(get(&format!("http://{addr}/")))
        .await
        .unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Timeout);
    // Through a decoder and `CollectBodyLayer`, the kind survives.
    let mut gz_head =
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 100\r\n\r\n".to_vec();
    gz_head.extend_from_slice(&ITEMS_GZ[..12]);
    let addr = hanging_server(Box::leak(gz_head.into_boxed_slice())).await;
    let collected = ServiceBuilder::new()
        .layer(CollectBodyLayer::default())
        .layer(DecompressionLayer::new())
        .service(client);
    let err = collected
        .oneshot(get(&format!("http://{addr}/")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Timeout, "{err:?}");
}

/// A server that reads a request head, writes `reply` (a head and part of its body) and
/// holds the connection open.
async fn hanging_server(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((mut c, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // Read the request head, answer with a head and 7 of the 100 bytes promised.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(reply).await;
            conns.push(c);
        }
    });
    addr
}

// ===== DecompressionLayer above and below the policy =====

#[tokio::test]
async fn decompression_below_the_policy() {
    let s = server(gzip_routes()).await;
    let svc = ServiceBuilder::new()
        .layer(policy(HttpClassifier::default()))
        .layer(DecompressionLayer::new())
        .service(HttpClient::new().streaming());
    let res = svc.clone().oneshot(get(&s.url("/items"))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-encoding").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ITEMS);
    let accepted = s.header("/items", "accept-encoding");
    assert!(
        accepted[0].as_deref().unwrap().contains("gzip"),
        "{accepted:?}"
    );
    // A 503 is classified (and retried) through the decompressing layer.
    let res = svc.oneshot(get(&s.url("/down"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(s.hits("/down"), 3);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        ITEMS,
        "the last attempt's body, decompressed"
    );
}

#[tokio::test]
async fn decompression_above_the_policy() {
    let s = server(gzip_routes()).await;
    let svc = ServiceBuilder::new()
        .layer(DecompressionLayer::new())
        .layer(policy(HttpClassifier::default()))
        .service(HttpClient::new().streaming());
    let res = svc.clone().oneshot(get(&s.url("/items"))).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ITEMS);
    let res = svc.oneshot(get(&s.url("/down"))).await.unwrap();
    assert_eq!(res.status(), 503);
    // Every retry carries the header the layer above added once.
    let accepted = s.header("/down", "accept-encoding");
    assert_eq!(accepted.len(), 3);
    assert!(
        accepted
            .iter()
            .all(|a| a.as_deref().unwrap().contains("gzip")),
        "{accepted:?}"
    );
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), ITEMS);
}

#[tokio::test]
async fn collect_above_decompression_limits_the_decompressed_size() {
    let s = server(gzip_routes()).await;
    // 1 KiB on the wire is within the client's limit; 1 MiB decompressed is not within 64 KiB.
    let collected = ServiceBuilder::new()
        .layer(CollectBodyLayer::new(64 * 1024))
        .layer(DecompressionLayer::new())
        .service(HttpClient::new().streaming());
    let res: Response<Bytes> = collected
        .clone()
        .oneshot(get(&s.url("/items")))
        .await
        .unwrap();
    assert_eq!(res.body(), ITEMS);
    let err = collected
        .clone()
        .oneshot(get(&s.url("/zeros")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::TooLarge);
    assert!(err.reached_server());
    // A body the layer below cannot decode is a typed body error.
    let err = collected
        .clone()
        .oneshot(get(&s.url("/corrupt")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Body);
    // Under a policy: permanent, sent once.
    let svc = policy(HttpClassifier::default()).layer(collected);
    let err = svc.oneshot(get(&s.url("/zeros"))).await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.inner().map(HttpError::kind),
        Some(HttpErrorKind::TooLarge)
    );
    assert_eq!(s.hits("/zeros"), 2);
}

// ===== FollowRedirectLayer above and below the policy =====

fn redirect_routes() -> Vec<(&'static str, Route)> {
    vec![
        ("/old", route(302).header("location", "/new")),
        ("/new", route(200).body(b"moved")),
        ("/old-down", route(302).header("location", "/down")),
        ("/down", route(503)),
        ("/form", route(302).header("location", "/down")),
    ]
}

#[tokio::test]
async fn follow_redirect_above_the_policy_retries_each_hop() {
    let s = server(redirect_routes()).await;
    let svc = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(policy(HttpClassifier::default()))
        .service(HttpClient::new());
    let res = svc.clone().oneshot(get(&s.url("/old"))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body(), "moved");
    assert_eq!((s.hits("/old"), s.hits("/new")), (1, 1));
    // The redirect is one call; the 503 after it is retried on its own.
    let res = svc.clone().oneshot(get(&s.url("/old-down"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!((s.hits("/old-down"), s.hits("/down")), (1, 3));
    // A POST answered 302 becomes a GET (as browsers do): that GET is retried, the POST was
    // sent once.
    let res = svc.oneshot(req("POST", &s.url("/form"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(s.hits("/form"), 1);
    let after = s.seen("/down");
    assert_eq!(after.len(), 6);
    assert!(after[3..].iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn follow_redirect_below_the_policy_retries_the_chain() {
    let s = server(redirect_routes()).await;
    // Below the policy, each attempt follows the whole chain. `MethodSafetyLayer` above the
    // redirects stamps the method the caller used: without it the classifier would see the
    // last hop's (a GET) and retry a POST that a 302 already answered.
    let svc = ServiceBuilder::new()
        .layer(policy(HttpClassifier::default()))
        .layer(MethodSafetyLayer)
        .layer(FollowRedirectLayer::new())
        .service(HttpClient::new());
    let res = svc.clone().oneshot(get(&s.url("/old-down"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!((s.hits("/old-down"), s.hits("/down")), (3, 3));
    let res = svc
        .clone()
        .oneshot(req("POST", &s.url("/form")))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        (s.hits("/form"), s.hits("/down")),
        (1, 4),
        "the POST is sent once"
    );
    // An idempotent chain that ends well is one attempt.
    let res = svc.oneshot(get(&s.url("/old"))).await.unwrap();
    assert_eq!(res.body(), "moved");
    assert_eq!((s.hits("/old"), s.hits("/new")), (1, 1));
}

// ===== SetRequestHeaderLayer above and below the policy =====

#[tokio::test]
async fn set_request_header_above_and_below_the_policy() {
    use http::header::{HeaderName, HeaderValue, USER_AGENT};
    let s = server(vec![("/down", route(503))]).await;
    let attempt = HeaderName::from_static("x-attempt");
    let counter = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = counter.clone();
    let svc = ServiceBuilder::new()
        .layer(SetRequestHeaderLayer::overriding(
            USER_AGENT,
            HeaderValue::from_static("shop/1.0"),
        ))
        .layer(policy(HttpClassifier::default()))
        .layer(SetRequestHeaderLayer::overriding(
            attempt,
            move |_: &Request<Full<Bytes>>| {
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                HeaderValue::from_str(&n.to_string()).ok()
            },
        ))
        .service(HttpClient::new().streaming());
    let res = svc.oneshot(get(&s.url("/down"))).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        s.header("/down", "user-agent"),
        vec![Some("shop/1.0".to_owned()); 3]
    );
    assert_eq!(
        s.header("/down", "x-attempt"),
        [
            Some("1".to_owned()),
            Some("2".to_owned()),
            Some("3".to_owned())
        ],
        "the layer below the policy runs once per attempt"
    );
}

// ===== TraceLayer straight over the streaming client =====

#[tokio::test]
async fn trace_layer_over_the_streaming_client() {
    use tower_http::trace::TraceLayer;
    let s = server(vec![("/down", route(503))]).await;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = (spans.clone(), spans.clone());
    // No body mapping: the client's responses are tower-http's to wrap.
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().on_response(
            move |r: &Response<_>, _: Duration, _: &tracing::Span| {
                a.lock().unwrap().push(format!("call {}", r.status()));
            },
        ))
        .layer(policy(HttpClassifier::default()))
        .layer(TraceLayer::new_for_http().on_response(
            move |r: &Response<_>, _: Duration, _: &tracing::Span| {
                b.lock().unwrap().push(format!("attempt {}", r.status()));
            },
        ))
        .service(HttpClient::new().streaming());
    let res = svc.oneshot(get(&s.url("/down"))).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
    assert_eq!(
        *spans.lock().unwrap(),
        [
            "attempt 503 Service Unavailable",
            "attempt 503 Service Unavailable",
            "attempt 503 Service Unavailable",
            "call 503 Service Unavailable"
        ]
    );
}

// ===== tower-http classifiers <-> rampart classifiers =====

#[cfg(feature = "tower-http")]
mod adapters {
    use super::*;
    use rampart::client::{FromTowerHttp, IntoTowerHttp, OutcomeFailure};
    use rampart::{Outcome, RetryLayer};
    use tower_http::classify::{ServerErrorsAsFailures, StatusInRangeAsFailures};
    use tower_http::trace::TraceLayer;

    fn backoff() -> rampart::Backoff {
        rampart::Backoff::builder()
            .max_retries(2)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn server_errors_as_failures_drives_a_rampart_retry() {
        let s = server(vec![
            ("/down", route(503)),
            ("/missing", route(404)),
            ("/teapot", route(418)),
        ])
        .await;
        let retry = RetryLayer::new(FromTowerHttp::new(ServerErrorsAsFailures::new()))
            .backoff(backoff())
            .no_budget();
        let svc = retry.layer(HttpClient::new());
        let res = svc.clone().oneshot(get(&s.url("/down"))).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(s.hits("/down"), 3);
        let res = svc.clone().oneshot(get(&s.url("/missing"))).await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(s.hits("/missing"), 1);
        // Errors are transient: a refused connection is retried.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = svc
            .oneshot(get(&format!("http://{dead}/")))
            .await
            .unwrap_err();
        assert_eq!(err.attempts(), 3);
        // Another tower-http classifier, in a whole policy: 4xx are failures here, permanent.
        let svc = ServiceBuilder::new()
            .layer(policy(
                FromTowerHttp::new(StatusInRangeAsFailures::new(400..=599))
                    .failures_are(Outcome::Permanent),
            ))
            .service(HttpClient::new());
        // A permanent response: one attempt.
        let _ = svc.oneshot(get(&s.url("/teapot"))).await;
        assert_eq!(s.hits("/teapot"), 1);
    }

    #[tokio::test]
    async fn http_classifier_drives_trace_layer_failures() {
        let s = server(vec![("/bad-gateway", route(502)), ("/missing", route(404))]).await;
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = failures.clone();
        let trace = TraceLayer::new(IntoTowerHttp::make_classifier(HttpClassifier::default()))
            .on_failure(
                move |class: OutcomeFailure, _: Duration, _: &tracing::Span| {
                    f.lock().unwrap().push(class);
                },
            );
        let svc = ServiceBuilder::new()
            .layer(trace.clone())
            .service(HttpClient::new().streaming());
        for (method, path) in [
            ("POST", "/bad-gateway"),
            ("GET", "/bad-gateway"),
            ("GET", "/missing"),
            ("GET", "/fine"),
        ] {
            let _ = svc
                .clone()
                .oneshot(req(method, &s.url(path)))
                .await
                .unwrap();
        }
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let _ = svc
            .oneshot(get(&format!("http://{dead}/")))
            .await
            .err()
            .expect("a connect error");
        let got = failures.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            OutcomeFailure::Response {
                status: http::StatusCode::BAD_GATEWAY,
                outcome: Outcome::Permanent
            },
            "a POST that may have been processed"
        );
        assert_eq!(got[1].outcome(), Some(Outcome::TRANSIENT));
        assert!(
            matches!(&got[2], OutcomeFailure::Error { outcome: Some(o), .. } if *o == Outcome::TRANSIENT),
            "{:?}",
            got[2]
        );

        // Above a policy, the error is rampart's `Error<HttpError>`: still classified.
        failures.lock().unwrap().clear();
        let svc = ServiceBuilder::new()
            .layer(trace)
            .layer(policy(HttpClassifier::default()))
            .service(HttpClient::new().streaming());
        let _ = svc
            .oneshot(get(&format!("http://{dead}/")))
            .await
            .err()
            .expect("a connect error");
        let got = failures.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].outcome(), Some(Outcome::TRANSIENT));
        assert!(
            got[0].to_string().contains("after 3 attempts"),
            "{}",
            got[0]
        );
    }
}
