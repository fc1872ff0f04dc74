//! The HTTP and Gemini classifiers against a real hyper server on loopback: every status row,
//! both `Retry-After` forms, Google error bodies, and the method-safety rule.
#![cfg(feature = "gemini")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rampart::client::{HttpClassifier, HttpClient, HttpError};
use rampart::gemini::GeminiClassifier;
use rampart::retry::observe::{RetryEvent, RetryObserver};
use rampart::{Backoff, Classify, Jitter, Outcome, RetryLayer};
use tower::{Layer, ServiceExt};

/// What the server answers on a path: status, headers, body, and whether to drop the
/// connection instead of answering.
#[derive(Clone)]
enum Reply {
    Status(u16, Vec<(&'static str, String)>, &'static str),
    Reset,
}

struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

async fn server(routes: HashMap<&'static str, Reply>) -> Server {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let routes = Arc::new(routes);
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (routes, hits) = (routes.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (routes, hits) = (routes.clone(), hits.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                        match routes.get(path.as_str()).cloned().unwrap_or(Reply::Status(
                            200,
                            vec![],
                            "ok",
                        )) {
                            Reply::Reset => Err(std::io::Error::other("reset")),
                            Reply::Status(code, headers, body) => {
                                let mut r = Response::builder().status(code);
                                for (k, v) in headers {
                                    r = r.header(k, v);
                                }
                                Ok(r.body(Full::new(Bytes::from(body))).unwrap())
                            }
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, hits }
}

#[derive(Clone, Default)]
struct Delays(Arc<Mutex<Vec<(Duration, bool)>>>);
impl RetryObserver for Delays {
    fn on_retry(&self, e: &RetryEvent) {
        self.0.lock().unwrap().push((e.delay, e.hinted));
    }
}

fn backoff() -> Backoff {
    Backoff::builder()
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(50))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// Calls `path` with `method` (and optional headers) through a RetryLayer with classifier `c`;
/// returns the server's hit count, the last status (or None for an error) and the delays.
async fn run<C>(
    s: &Server,
    c: C,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u32, Option<u16>, Vec<(Duration, bool)>)
where
    C: Classify<Response<Bytes>, HttpError> + Clone + Send + 'static,
{
    let delays = Delays::default();
    let svc = RetryLayer::new(c)
        .backoff(backoff())
        .no_budget()
        .observer(delays.clone())
        .layer(HttpClient::new());
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", s.addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = svc
        .oneshot(req.body(Bytes::from_static(b"{}")).unwrap())
        .await;
    let hits = s.hits.lock().unwrap().get(path).copied().unwrap_or(0);
    let d = delays.0.lock().unwrap().clone();
    (hits, res.ok().map(|r| r.status().as_u16()), d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_row_classifies_and_retries_as_specified() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    let mut routes = HashMap::new();
    for code in [
        408u16, 500, 502, 503, 504, 501, 505, 400, 401, 403, 404, 409, 422, 429, 200, 204, 301,
    ] {
        routes.insert(
            Box::leak(format!("/s{code}").into_boxed_str()) as &'static str,
            Reply::Status(code, vec![], ""),
        );
    }
    routes.insert(
        "/retry-after-seconds",
        Reply::Status(503, vec![("retry-after", "120".into())], ""),
    );
    routes.insert(
        "/retry-after-date",
        Reply::Status(429, vec![("retry-after", date.clone())], ""),
    );
    let s = server(routes).await;
    let c = HttpClassifier::default();
    for (code, calls) in [
        (408, 3),
        (500, 3),
        (502, 3),
        (503, 3),
        (504, 3), // transient: 1 + 2 retries
        (429, 3), // throttled: retried
        (501, 1),
        (505, 1), // permanent
        (400, 1),
        (401, 1),
        (403, 1),
        (404, 1),
        (409, 1),
        (422, 1), // rejected
        (200, 1),
        (204, 1),
        (301, 1), // success
    ] {
        let (hits, status, _) = run(&s, c, "GET", &format!("/s{code}"), &[]).await;
        assert_eq!(hits, calls, "status {code}");
        assert_eq!(
            status,
            Some(code),
            "the last response is handed back for {code}"
        );
    }
    // Retry-After as seconds: 120 s, beyond max_delay (50 ms): never retried early, the call
    // stops at once (throttled) with the response.
    let (hits, status, delays) = run(&s, c, "GET", "/retry-after-seconds", &[]).await;
    assert_eq!((hits, delays.len()), (1, 0));
    assert!(status.is_some(), "the throttled response is handed back");
    // Retry-After as an HTTP-date 30 s ahead: also a hint, also beyond max_delay.
    let (hits, _, delays) = run(&s, c, "GET", "/retry-after-date", &[]).await;
    assert_eq!((hits, delays.len()), (1, 0), "{delays:?}");
    // And the uncapped values the classifier reads.
    let res = Response::builder()
        .status(429)
        .header("retry-after", date)
        .body(Bytes::new())
        .unwrap();
    let hint = Classify::<_, HttpError>::classify(&c, Ok(&res))
        .retry_after()
        .unwrap();
    assert!(
        hint > Duration::from_secs(28) && hint <= Duration::from_secs(30),
        "{hint:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_safety_decides_what_a_reset_may_retry() {
    let mut routes = HashMap::new();
    routes.insert("/reset", Reply::Reset);
    let s = server(routes).await;
    let c = HttpClassifier::default();
    // A GET that may have reached the server is retried.
    let (hits, status, _) = run(&s, c, "GET", "/reset", &[]).await;
    assert_eq!((hits, status), (3, None));
    s.hits.lock().unwrap().clear();
    // A POST is not: it may have been processed.
    let (hits, _, _) = run(&s, c, "POST", "/reset", &[]).await;
    assert_eq!(hits, 1);
    s.hits.lock().unwrap().clear();
    // Unless it carries an Idempotency-Key...
    let (hits, _, _) = run(&s, c, "POST", "/reset", &[("idempotency-key", "k-1")]).await;
    assert_eq!(hits, 3);
    s.hits.lock().unwrap().clear();
    // ...or the policy says repeating it is safe.
    let (hits, _, _) = run(&s, c.retry_non_idempotent(true), "PATCH", "/reset", &[]).await;
    assert_eq!(hits, 3);

    // A request that never reached a server (connection refused) is retried, even a POST.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let a = attempts.clone();
    let counting = tower::service_fn(move |req: Request<Bytes>| {
        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HttpClient::new().oneshot(req)
    });
    let err = RetryLayer::new(c)
        .backoff(backoff())
        .no_budget()
        .layer(counting)
        .oneshot(
            Request::post(format!("http://{closed}/x"))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(!err.inner().unwrap().reached_server());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_error_bodies_decide_over_status_codes() {
    let exhausted = r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#;
    let body = |code: u16, status: &str| -> &'static str {
        Box::leak(
            format!(r#"{{"error":{{"code":{code},"message":"m","status":"{status}"}}}}"#)
                .into_boxed_str(),
        )
    };
    let mut routes = HashMap::new();
    routes.insert("/exhausted", Reply::Status(429, vec![], exhausted));
    routes.insert(
        "/unavailable",
        Reply::Status(503, vec![], body(503, "UNAVAILABLE")),
    );
    routes.insert(
        "/deadline",
        Reply::Status(504, vec![], body(504, "DEADLINE_EXCEEDED")),
    );
    routes.insert(
        "/internal",
        Reply::Status(500, vec![], body(500, "INTERNAL")),
    );
    routes.insert(
        "/invalid",
        Reply::Status(400, vec![], body(400, "INVALID_ARGUMENT")),
    );
    routes.insert(
        "/denied",
        Reply::Status(403, vec![], body(403, "PERMISSION_DENIED")),
    );
    routes.insert(
        "/unauth",
        Reply::Status(401, vec![], body(401, "UNAUTHENTICATED")),
    );
    routes.insert(
        "/notfound",
        Reply::Status(404, vec![], body(404, "NOT_FOUND")),
    );
    // The body says the request was bad although the status says 503: the body wins.
    routes.insert(
        "/body-wins",
        Reply::Status(503, vec![], body(503, "INVALID_ARGUMENT")),
    );
    routes.insert(
        "/malformed",
        Reply::Status(503, vec![], "<html>upstream error</html>"),
    );
    let s = server(routes).await;
    let g = GeminiClassifier::default();
    let (hits, _, delays) = run(&s, g, "POST", "/exhausted", &[]).await;
    // retryDelay 1.5 s is beyond max_delay (50 ms): never retried before it; stops throttled.
    assert_eq!((hits, delays.len()), (1, 0), "{delays:?}");
    for (path, calls) in [
        ("/unavailable", 3),
        ("/deadline", 3),
        ("/internal", 3),
        ("/invalid", 1),
        ("/denied", 1),
        ("/unauth", 1),
        ("/notfound", 1),
        ("/body-wins", 1),
        ("/malformed", 3),
    ] {
        let (hits, _, _) = run(&s, g, "POST", path, &[]).await;
        assert_eq!(hits, calls, "{path}");
    }
    let res = Response::builder()
        .status(429)
        .body(Bytes::from(exhausted))
        .unwrap();
    assert_eq!(
        Classify::<_, HttpError>::classify(&g, Ok(&res)),
        Outcome::Throttled {
            retry_after: Some(Duration::from_millis(1500))
        }
    );
}
