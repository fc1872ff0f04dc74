//! reqwest for real: a `reqwest::Client` through rampart's retry layer against an axum server
//! on loopback — statuses, both forms of `Retry-After`, a refused connection, a
//! non-idempotent POST whose connection drops, and a streaming body that cannot be replayed;
//! with feature `http`, streaming bodies (axum's `Body`, a `StreamBody`) under
//! `Policy::layer_streaming` against a hyper upstream that keeps every attempt's body; and a
//! whole policy through a loopback forward proxy (`reqwest::Proxy::http`).
#![cfg(feature = "reqwest")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use axum::Router;
use rampart::client::{HttpClassifier, HttpError, HttpErrorKind};
use rampart::reqwest::{ReqwestReplay, ReqwestService};
use rampart::{Backoff, Classify, ErrorKind, Jitter, Outcome, RetryLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

type Calls = Arc<Mutex<HashMap<String, u32>>>;

/// `/s/{key}/{fail}/{status}`: the first `fail` calls of `key` answer `status` (with
/// `Retry-After` set to the request's `x-ra`, where `date+N` is an HTTP-date N seconds
/// ahead); then 200.
async fn scripted(
    State(calls): State<Calls>,
    Path((key, fail, status)): Path<(String, u32, u16)>,
    req_headers: HeaderMap,
) -> (StatusCode, HeaderMap, String) {
    let n = {
        let mut c = calls.lock().unwrap();
        let n = c.entry(key).or_default();
        *n += 1;
        *n
    };
    let mut headers = HeaderMap::new();
    if n > fail {
        return (StatusCode::OK, headers, format!("ok after {n}"));
    }
    if let Some(ra) = req_headers.get("x-ra").and_then(|v| v.to_str().ok()) {
        let value = match ra.strip_prefix("date+") {
            Some(secs) => httpdate::fmt_http_date(
                SystemTime::now() + Duration::from_secs(secs.parse().unwrap()),
            ),
            None => ra.to_string(),
        };
        headers.insert("retry-after", value.parse().unwrap());
    }
    (StatusCode::from_u16(status).unwrap(), headers, "no".into())
}

async fn serve() -> (SocketAddr, Calls) {
    let calls = Calls::default();
    let app = Router::new()
        .route("/s/{key}/{fail}/{status}", any(scripted))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

fn calls(c: &Calls, key: &str) -> u32 {
    c.lock().unwrap().get(key).copied().unwrap_or(0)
}

fn backoff(retries: u32) -> Backoff {
    Backoff::builder()
        .max_retries(retries)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(200))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn api(
    client: &reqwest::Client,
    retries: u32,
) -> rampart::Retry<ReqwestService, HttpClassifier, ReqwestReplay> {
    RetryLayer::new(HttpClassifier::default())
        .replay(ReqwestReplay)
        .backoff(backoff(retries))
        .no_budget()
        .layer(ReqwestService::new(client.clone()))
}

#[tokio::test]
async fn statuses_are_retried_or_returned_as_the_http_classifier_says() {
    let (addr, counts) = serve().await;
    let client = reqwest::Client::new();
    for (i, (status, retried)) in [
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (408, true),
        (429, true),
        (400, false),
        (404, false),
        (501, false),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("k{i}");
        let req = client
            .get(format!("http://{addr}/s/{key}/2/{status}"))
            .build()
            .unwrap();
        let res = api(&client, 3).oneshot(req).await.unwrap();
        if retried {
            assert_eq!(res.status(), 200, "{status}");
            assert_eq!(res.text().await.unwrap(), "ok after 3");
            assert_eq!(calls(&counts, &key), 3, "{status}");
        } else {
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(calls(&counts, &key), 1, "{status} is not retried");
        }
    }
    // Out of retries: the last response comes back for the caller to read.
    let req = client
        .get(format!("http://{addr}/s/gone/9/503"))
        .build()
        .unwrap();
    let res = api(&client, 2).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls(&counts, "gone"), 3);
}

#[tokio::test]
async fn a_post_answered_5xx_is_not_retried_without_an_idempotency_key() {
    let (addr, counts) = serve().await;
    let client = reqwest::Client::new();
    for status in [500, 502, 503, 504] {
        // No key: the server may have processed it; the 5xx comes back after one attempt.
        let key = format!("post{status}");
        let req = client
            .post(format!("http://{addr}/s/{key}/2/{status}"))
            .body("order")
            .build()
            .unwrap();
        let res = api(&client, 3).oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(calls(&counts, &key), 1, "POST on {status} is sent once");
        // With an Idempotency-Key it is retried to success.
        let key = format!("keyed{status}");
        let req = client
            .post(format!("http://{addr}/s/{key}/2/{status}"))
            .header("idempotency-key", "k-1")
            .body("order")
            .build()
            .unwrap();
        let res = api(&client, 3).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(calls(&counts, &key), 3, "keyed POST on {status} is retried");
    }
    // 429 says it was not processed: retried even without a key.
    let req = client
        .post(format!("http://{addr}/s/busy/2/429"))
        .body("order")
        .build()
        .unwrap();
    let res = api(&client, 3).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls(&counts, "busy"), 3);
}

#[tokio::test]
async fn retry_after_in_both_forms_sets_the_delay() {
    let (addr, counts) = serve().await;
    let client = reqwest::Client::new();
    // The backoff alone would wait 1 ms; a Retry-After (either form) longer than max_delay
    // (200 ms) is never undercut: the call stops at once, throttled, with the response.
    for (key, ra) in [("secs", "5"), ("date", "date+5")] {
        let req = client
            .get(format!("http://{addr}/s/{key}/1/503"))
            .header("x-ra", ra)
            .build()
            .unwrap();
        let t = Instant::now();
        let res = api(&client, 2).oneshot(req).await.unwrap();
        assert_eq!(res.status(), 503, "{ra}");
        assert!(t.elapsed() < Duration::from_secs(2), "{ra}: did not wait");
        assert_eq!(calls(&counts, key), 1, "{ra}: no retry before the hint");
    }
    // The date form, read off a real response.
    let res = client
        .get(format!("http://{addr}/s/direct-date/1/503"))
        .header("x-ra", "date+30")
        .send()
        .await
        .unwrap();
    match Classify::<_, HttpError>::classify(&HttpClassifier::default(), Ok(&res)) {
        Outcome::Transient {
            retry_after: Some(d),
        }
        | Outcome::Throttled {
            retry_after: Some(d),
        } => assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        ),
        other => panic!("date form not read: {other:?}"),
    }
    // The classifier reads both forms off a real response.
    let res = client
        .get(format!("http://{addr}/s/direct/1/429"))
        .header("x-ra", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        Classify::<_, HttpError>::classify(&HttpClassifier::default(), Ok(&res)),
        Outcome::Throttled {
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

/// Counts the errors it classifies.
#[derive(Clone)]
struct Counting(HttpClassifier, Arc<AtomicU32>);

impl Classify<reqwest::Response, HttpError> for Counting {
    fn classify(&self, r: Result<&reqwest::Response, &HttpError>) -> Outcome {
        if r.is_err() {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        self.0.classify(r)
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = reqwest::Client::new();
    let errors = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(Counting(HttpClassifier::default(), errors.clone()))
        .replay(ReqwestReplay)
        .backoff(backoff(2))
        .no_budget()
        .layer(ReqwestService::new(client.clone()));
    // Even a POST: a refused connection never reached the server.
    let req = client
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .build()
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(errors.load(Ordering::SeqCst), 3);
    assert_eq!(
        err.inner().unwrap().kind(),
        HttpErrorKind::Connect,
        "{err:?}"
    );
}

/// A server that reads a request and closes the connection without answering.
async fn hang_up_server() -> (SocketAddr, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_post_that_may_have_reached_the_server_is_not_retried_without_an_idempotency_key() {
    let (addr, seen) = hang_up_server().await;
    let client = reqwest::Client::new();
    let post = client
        .post(format!("http://{addr}/charge"))
        .body("{\"cents\":100}")
        .build()
        .unwrap();
    let err = api(&client, 3).oneshot(post).await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.inner().unwrap().kind(),
        HttpErrorKind::Request,
        "{err:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the POST is sent once");

    // The same POST with an Idempotency-Key, and a PUT, are retried.
    for req in [
        client
            .post(format!("http://{addr}/charge"))
            .header("idempotency-key", "c-1")
            .body("{\"cents\":100}")
            .build()
            .unwrap(),
        client
            .put(format!("http://{addr}/item/1"))
            .body("{}")
            .build()
            .unwrap(),
    ] {
        let before = seen.load(Ordering::SeqCst);
        let err = api(&client, 3).oneshot(req).await.unwrap_err();
        assert_eq!(err.attempts(), 4);
        assert_eq!(seen.load(Ordering::SeqCst) - before, 4);
    }
}

fn stream_body() -> reqwest::Body {
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1024]))),
    );
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test]
async fn a_streaming_body_gets_one_attempt() {
    // A 503 that would be retried: the response comes back after the one attempt.
    let (addr, counts) = serve().await;
    let client = reqwest::Client::new();
    let req = client
        .put(format!("http://{addr}/s/upload/1/503"))
        .body(stream_body())
        .build()
        .unwrap();
    let res = api(&client, 3).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls(&counts, "upload"), 1, "sent once, not replayed");

    // A dropped connection that would be retried (PUT is idempotent): the error says why not.
    let (addr, seen) = hang_up_server().await;
    let req = client
        .put(format!("http://{addr}/upload"))
        .body(stream_body())
        .build()
        .unwrap();
    let err = api(&client, 3).oneshot(req).await.unwrap_err();
    match err.kind() {
        ErrorKind::NotReplayable { reason, .. } => {
            assert!(reason.reason().contains("stream"), "{reason}")
        }
        other => panic!("expected NotReplayable, got {other:?}"),
    }
    assert_eq!(err.attempts(), 1);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_whole_policy_over_reqwest_dead_letters_with_redaction() {
    use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    let (addr, counts) = serve().await;
    let policy = quick_policy("payments").build().unwrap();
    let store = MemoryStore::default();
    let extractor = HttpExtractor::default()
        .keep_header("authorization")
        .keep_header("content-type");
    let svc = ServiceBuilder::new()
        .layer(policy.layer(HttpClassifier::default(), store.clone(), extractor))
        .service(ReqwestService::new(reqwest::Client::new()));

    // Succeeds after a retry: nothing dead-lettered.
    let ok = http::Request::get(format!("http://{addr}/s/fine/1/503"))
        .body(bytes::Bytes::new())
        .unwrap();
    assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), 200);
    assert!(store
        .list(ListQuery::newest(10))
        .await
        .unwrap()
        .records
        .is_empty());

    // Fails every attempt: one record, its secrets redacted.
    let req = http::Request::post(format!("http://{addr}/s/pay/99/503?api_key=sekret-key"))
        .header("authorization", "Bearer sekret-token")
        .header("content-type", "application/json")
        .header("idempotency-key", "pay-1")
        .body(bytes::Bytes::from_static(
            br#"{"order":7,"password":"hunter2"}"#,
        ))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(
        res.status(),
        503,
        "the last response comes back to the caller"
    );
    assert_eq!(calls(&counts, "pay"), 3);
    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.service, "payments");
    let stored = serde_json::to_string(r).unwrap();
    for secret in ["sekret-key", "sekret-token", "hunter2"] {
        assert!(!stored.contains(secret), "{secret} leaked: {stored}");
    }
    assert!(
        stored.contains("\"order\":7") || stored.contains("\\\"order\\\":7"),
        "{stored}"
    );

    // An invalid URL for reqwest is rejected at once, never retried.
    let bad = http::Request::get("/relative/only")
        .body(bytes::Bytes::new())
        .unwrap();
    let err = svc.oneshot(bad).await.unwrap_err();
    assert_eq!(err.attempts(), 1, "{err:?}");
}

// ===== streaming bodies under `Policy::layer_streaming` =====

/// A hyper upstream that reads every request's body whole, keeps it, and answers 503 to the
/// first `fail` requests, then 200.
#[cfg(feature = "http")]
async fn body_upstream(fail: usize) -> (SocketAddr, Arc<Mutex<Vec<bytes::Bytes>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<bytes::Bytes>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await;
                            let body = body.map_err(std::io::Error::other)?.to_bytes();
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(body);
                                seen.len()
                            };
                            let status = if n <= fail { 503 } else { 200 };
                            Ok::<_, std::io::Error>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(bytes::Bytes::from(format!("attempt {n}"))))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// `n` chunks of 700 bytes, chunk `i` filled with `'a' + i`, and the whole they make.
#[cfg(feature = "http")]
fn upload(n: u8) -> (Vec<bytes::Bytes>, bytes::Bytes) {
    let chunks: Vec<_> = (0..n)
        .map(|i| bytes::Bytes::from(vec![b'a' + i; 700]))
        .collect();
    let whole = chunks.concat().into();
    (chunks, whole)
}

/// axum's `Body` (not `Sync`) streaming `chunks`, with no length announced.
#[cfg(feature = "http")]
fn axum_stream(chunks: Vec<bytes::Bytes>) -> axum::body::Body {
    axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

/// Two retries, millisecond delays without jitter, no budget: a whole policy whose retries a
/// test can count.
fn quick_policy(name: &'static str) -> rampart::PolicyBuilder {
    rampart::Policy::builder(name)
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
        .budget(None)
}

#[cfg(feature = "http")]
fn streaming_policy() -> rampart::Policy {
    quick_policy("uploads")
        .max_delay(Duration::from_millis(5))
        .breaker(None)
        .build()
        .unwrap()
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_streaming_body_under_layer_streaming_is_retried_with_the_same_bytes() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    // A `StreamBody` of frames: a 503, then a 200; both attempts carry the whole body.
    let (addr, seen) = body_upstream(1).await;
    let store = MemoryStore::default();
    let svc = ServiceBuilder::new()
        .layer(streaming_policy().layer_streaming(
            HttpClassifier::default(),
            store.clone(),
            HttpExtractor::default(),
        ))
        .service(ReqwestService::new(reqwest::Client::new()));
    let (chunks, whole) = upload(5);
    let frames: Vec<_> = chunks
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(Frame::data(c)))
        .collect();
    let req = http::Request::put(format!("http://{addr}/blobs/1"))
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "attempt 2");
    assert_eq!(*seen.lock().unwrap(), vec![whole.clone(); 2]);
    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert!(records.is_empty(), "succeeded: nothing dead-lettered");

    // An axum `Body` (not `Sync`) to a POST with an Idempotency-Key: the method stamp on
    // each response lets the classifier retry the 503s.
    let (addr, seen) = body_upstream(2).await;
    let svc = ServiceBuilder::new()
        .layer(streaming_policy().layer_streaming(
            HttpClassifier::default(),
            store.clone(),
            HttpExtractor::default(),
        ))
        .service(ReqwestService::new(reqwest::Client::new()));
    let (chunks, whole) = upload(3);
    let req = http::Request::post(format!("http://{addr}/blobs"))
        .header("idempotency-key", "up-1")
        .body(axum_stream(chunks.clone()))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*seen.lock().unwrap(), vec![whole.clone(); 3]);

    // Without the key, a 503 to a POST may have been processed: sent once, handed back.
    let (addr, seen) = body_upstream(2).await;
    let req = http::Request::post(format!("http://{addr}/blobs"))
        .body(axum_stream(chunks))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*seen.lock().unwrap(), vec![whole]);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn an_exhausted_streaming_call_over_reqwest_is_dead_lettered_once_with_the_whole_body() {
    use rampart::dlq::{DeadLetterReason, DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    let (addr, seen) = body_upstream(usize::MAX).await;
    let store = MemoryStore::default();
    let layer = streaming_policy().layer_streaming(
        HttpClassifier::default(),
        store.clone(),
        HttpExtractor::default().keep_header("content-type"),
    );
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ReqwestService::new(reqwest::Client::new()));
    let (chunks, whole) = upload(5);
    let req = http::Request::put(format!("http://{addr}/v1/blobs"))
        .header("content-type", "text/plain")
        .body(axum_stream(chunks))
        .unwrap();
    // A failed response is handed back as it is, after every attempt.
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*seen.lock().unwrap(), vec![whole.clone(); 3]);

    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert_eq!(records.len(), 1, "dead-lettered exactly once");
    let r = &records[0];
    assert_eq!(r.service, "uploads");
    assert_eq!(r.reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(r.attempts, 3);
    assert!(!r.truncated);
    let p = &r.request.payload;
    assert_eq!(p["method"], "PUT");
    assert_eq!(p["uri"], format!("http://{addr}/v1/blobs"));
    assert_eq!(p["headers"]["content-type"], "text/plain");
    assert_eq!(
        p["body"].as_str().unwrap().as_bytes(),
        &whole[..],
        "the record holds the whole body"
    );
    assert_eq!(p["body_size"], 3500);
    assert_eq!(p["body_truncated"], false);
    assert_eq!(
        layer.policy().dead_letters().recorded,
        vec![(DeadLetterReason::RetriesExhausted, 1)]
    );
}

// ===== through a forward proxy =====

/// A forward proxy on loopback: takes absolute-form requests (`GET http://host/path`), keeps
/// their targets, and forwards each to `upstream` whatever its host says.
async fn forward_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let targets: Arc<Mutex<Vec<String>>> = Arc::default();
    let t = targets.clone();
    let client: Client<_, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (targets, client) = (t.clone(), client.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let (targets, client) = (targets.clone(), client.clone());
                        async move {
                            targets.lock().unwrap().push(req.uri().to_string());
                            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                            *req.uri_mut() = format!("http://{upstream}{path}").parse().unwrap();
                            client.request(req).await.map_err(std::io::Error::other)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, targets)
}

#[tokio::test]
async fn a_whole_policy_over_a_proxied_reqwest_client_retries_through_the_proxy() {
    use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    let (upstream, counts) = serve().await;
    let (proxy, targets) = forward_proxy(upstream).await;
    // The host exists only behind the proxy: a direct connection could not resolve it.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap();
    let policy = quick_policy("inventory").build().unwrap();
    let store = MemoryStore::default();
    let svc = ServiceBuilder::new()
        .layer(policy.layer(
            HttpClassifier::default(),
            store.clone(),
            HttpExtractor::default(),
        ))
        .service(ReqwestService::new(client));

    // Two 503s, then a 200: every attempt went through the proxy, in absolute form.
    let url = "http://inventory.internal/s/items/2/503";
    let ok = http::Request::get(url).body(bytes::Bytes::new()).unwrap();
    let res = svc.clone().oneshot(ok).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok after 3");
    assert_eq!(calls(&counts, "items"), 3);
    assert_eq!(*targets.lock().unwrap(), vec![url.to_string(); 3]);
    assert!(store
        .list(ListQuery::newest(10))
        .await
        .unwrap()
        .records
        .is_empty());

    // Out of retries through the proxy: the last 503 comes back, dead-lettered once.
    let url = "http://inventory.internal/s/gone/99/503";
    let req = http::Request::get(url).body(bytes::Bytes::new()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls(&counts, "gone"), 3);
    assert_eq!(targets.lock().unwrap().len(), 6);
    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].request.payload["uri"], url);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_streaming_body_over_the_limit_goes_through_reqwest_once_whole() {
    use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    let (addr, seen) = body_upstream(usize::MAX).await;
    let store = MemoryStore::default();
    let svc = ServiceBuilder::new()
        .layer(
            streaming_policy()
                .layer_streaming(
                    HttpClassifier::default(),
                    store.clone(),
                    HttpExtractor::default(),
                )
                .body_limit(1024),
        )
        .service(ReqwestService::new(reqwest::Client::new()));
    let (chunks, whole) = upload(5);
    let req = http::Request::put(format!("http://{addr}/big"))
        .body(axum_stream(chunks))
        .unwrap();
    // A 503 that would be retried: handed back after the one attempt, which streamed the
    // whole body (the buffered start, then the rest), not only the first 1024 bytes.
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(*seen.lock().unwrap(), vec![whole]);

    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert_eq!(records.len(), 1, "dead-lettered once");
    let r = &records[0];
    assert_eq!(r.reason, rampart::dlq::DeadLetterReason::NotReplayable);
    assert_eq!(r.attempts, 1);
    assert!(r.truncated, "only the body's start is kept");
    assert_eq!(r.request.payload["body_truncated"], true);
    assert_eq!(r.request.payload["method"], "PUT");
}

#[cfg(feature = "http")]
#[tokio::test]
async fn a_streaming_body_is_retried_through_the_proxy_with_the_same_bytes() {
    use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
    use tower::ServiceBuilder;

    let (upstream, seen) = body_upstream(2).await;
    let (proxy, targets) = forward_proxy(upstream).await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap();
    let store = MemoryStore::default();
    let svc = ServiceBuilder::new()
        .layer(streaming_policy().layer_streaming(
            HttpClassifier::default(),
            store.clone(),
            HttpExtractor::default(),
        ))
        .service(ReqwestService::new(client));
    let (chunks, whole) = upload(4);
    let url = "http://blobs.internal/v1/blobs/7";
    let req = http::Request::put(url).body(axum_stream(chunks)).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "attempt 3");
    assert_eq!(*targets.lock().unwrap(), vec![url.to_string(); 3]);
    assert_eq!(*seen.lock().unwrap(), vec![whole; 3]);
    let records = store.list(ListQuery::newest(10)).await.unwrap().records;
    assert!(records.is_empty());
}
