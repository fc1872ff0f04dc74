//! rampart in real tower and HTTP stacks (issue 14): errors through `Buffer`, tower `Timeout`
//! and boxed services; foreign error types; the method-safety rule for responses. Real HTTP
//! over loopback against a hyper server started by the test.
#![cfg(feature = "client")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::ParseIntError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rampart::client::{HttpClassifier, HttpClient, HttpError, HttpErrorKind};
use rampart::dlq::{HttpExtractor, MemoryStore};
use rampart::{BoxError, BoxedError, Error, LeafLayer, Outcome, Policy};
use tower::buffer::BufferLayer;
use tower::util::{BoxCloneService, BoxService};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A loopback server: each path answers with a status and headers; it counts hits per path.
struct Server {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

type Routes = HashMap<&'static str, (u16, Vec<(&'static str, &'static str)>)>;

async fn server(routes: Routes) -> Server {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let routes = Arc::new(routes);
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (routes, hits) = (routes.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (routes, hits) = (routes.clone(), hits.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                        let (code, headers) =
                            routes.get(path.as_str()).cloned().unwrap_or((200, vec![]));
                        let mut r = Response::builder().status(code);
                        for (k, v) in headers {
                            r = r.header(k, v);
                        }
                        Ok::<_, Infallible>(r.body(Full::new(Bytes::from_static(b"body"))).unwrap())
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Server { addr, hits }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn policy() -> Policy {
    Policy::builder("api")
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .budget(None)
        .breaker(None)
        .build()
        .unwrap()
}

fn req(method: &str, url: &str) -> Request<Bytes> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Bytes::from_static(b"{}"))
        .unwrap()
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// ===== method safety (failure 7) =====

#[tokio::test]
async fn post_is_not_retried_on_responses_that_may_have_been_processed() {
    let routes: Routes = [
        ("/500", (500, vec![])),
        ("/502", (502, vec![])),
        ("/503", (503, vec![])),
        ("/504", (504, vec![])),
        ("/408", (408, vec![])),
    ]
    .into();
    let s = server(routes).await;
    let svc = ServiceBuilder::new()
        .layer(policy().layer(
            HttpClassifier::default(),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .service(HttpClient::new());
    for path in ["/500", "/502", "/503", "/504", "/408"] {
        let res = svc.clone().oneshot(req("POST", &s.url(path))).await;
        // Given back as it came (a response) or as an error: either way, sent once.
        let _ = res;
        assert_eq!(s.hits(path), 1, "POST {path} must be sent once");
        let _ = svc
            .clone()
            .oneshot(req("PATCH", &s.url(&format!("{path}?patch"))))
            .await;
        assert_eq!(s.hits(path), 2, "PATCH {path} must be sent once");
    }
    // The same statuses are retried for GET and for a POST with an Idempotency-Key.
    for path in ["/500", "/502", "/503", "/504", "/408"] {
        let before = s.hits(path);
        let _ = svc.clone().oneshot(req("GET", &s.url(path))).await;
        assert_eq!(s.hits(path) - before, 3, "GET {path}: 1 + 2 retries");
        let mut keyed = req("POST", &s.url(path));
        keyed
            .headers_mut()
            .insert("idempotency-key", "order-7".parse().unwrap());
        let _ = svc.clone().oneshot(keyed).await;
        assert_eq!(s.hits(path) - before, 6, "keyed POST {path}: 1 + 2 retries");
    }
}

#[tokio::test]
async fn post_is_retried_where_the_server_said_it_did_not_process_it() {
    let routes: Routes = [
        ("/429", (429, vec![("retry-after", "0")])),
        ("/503ra", (503, vec![("retry-after", "0")])),
    ]
    .into();
    let s = server(routes).await;
    let svc = ServiceBuilder::new()
        .layer(policy().layer(
            HttpClassifier::default(),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .service(HttpClient::new());
    for path in ["/429", "/503ra"] {
        let _ = svc.clone().oneshot(req("POST", &s.url(path))).await;
        assert_eq!(
            s.hits(path),
            3,
            "POST {path}: the server said it did not process it"
        );
    }
    // Connection refused: the request never left, so a POST is retried.
    let dead = closed_port().await;
    let err = svc
        .clone()
        .oneshot(req("POST", &format!("http://{dead}/x")))
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(
        err.inner().map(HttpError::kind),
        Some(HttpErrorKind::Connect)
    );
}

#[tokio::test]
async fn method_safety_is_configurable() {
    let routes: Routes = [("/500", (500, vec![])), ("/502", (502, vec![]))].into();
    let s = server(routes).await;
    let lenient = ServiceBuilder::new()
        .layer(policy().layer(
            HttpClassifier::default().retry_non_idempotent(true),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .service(HttpClient::new());
    let _ = lenient.oneshot(req("POST", &s.url("/500"))).await;
    assert_eq!(s.hits("/500"), 3);
    let gateway = ServiceBuilder::new()
        .layer(policy().layer(
            HttpClassifier::default().not_processed(|status, _| status == 502),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .service(HttpClient::new());
    let _ = gateway.clone().oneshot(req("POST", &s.url("/502"))).await;
    assert_eq!(s.hits("/502"), 3);
    let _ = gateway.oneshot(req("POST", &s.url("/500"))).await;
    assert_eq!(s.hits("/500"), 4, "500 is still not retried for POST");
}

#[test]
fn classifier_rule_without_a_server() {
    use rampart::client::{MethodSafetyLayer, RequestMethod};
    use rampart::Classify;
    let c = HttpClassifier::default();
    let res = |status: u16, post: bool| {
        let r = Request::builder()
            .method(if post { "POST" } else { "GET" })
            .body(())
            .unwrap();
        let mut res = Response::builder().status(status).body(()).unwrap();
        res.extensions_mut().insert(RequestMethod::of(&r));
        res
    };
    for status in [500, 502, 503, 504, 408] {
        assert_eq!(
            Classify::<_, HttpError>::classify(&c, Ok(&res(status, true))),
            Outcome::Permanent,
            "{status}"
        );
        assert!(Classify::<_, HttpError>::classify(&c, Ok(&res(status, false))).is_retryable());
    }
    assert_eq!(
        Classify::<_, HttpError>::classify(&c, Ok(&res(429, true))),
        Outcome::THROTTLED
    );
    // 4xx stay rejected, 2xx success, for either method.
    assert_eq!(
        Classify::<_, HttpError>::classify(&c, Ok(&res(404, true))),
        Outcome::Rejected
    );
    // A response without the stamp is classified by status alone.
    let bare = Response::builder().status(500).body(()).unwrap();
    assert!(Classify::<_, HttpError>::classify(&c, Ok(&bare)).is_retryable());
    let _ = MethodSafetyLayer;
}

// ===== errors and classification through Buffer / Timeout / boxed services (1, 2, 6) =====

#[tokio::test]
async fn buffer_under_and_over_the_policy_boxed() {
    let routes: Routes = [("/503", (503, vec![]))].into();
    let s = server(routes).await;
    // Buffer + ConcurrencyLimit + Timeout above the policy, Buffer + Timeout below it,
    // the whole thing boxed as a BoxCloneService.
    let svc: BoxCloneService<Request<Bytes>, Response<Bytes>, BoxError> = ServiceBuilder::new()
        .boxed_clone()
        .layer(BufferLayer::new(16))
        .concurrency_limit(8)
        .timeout(Duration::from_secs(10))
        .layer(policy().layer(
            HttpClassifier::default(),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .layer(BufferLayer::new(16))
        .timeout(Duration::from_secs(5))
        .service(HttpClient::new());

    // A 503 under a Buffer is still classified (downcast to HttpError) and retried.
    let res = svc
        .clone()
        .oneshot(req("GET", &s.url("/503")))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(s.hits("/503"), 3);

    // A connect error comes back through both Buffers, and downcasts at every level.
    let dead = closed_port().await;
    let err: BoxError = svc
        .oneshot(req("GET", &format!("http://{dead}/")))
        .await
        .unwrap_err();
    let rampart_err = err
        .downcast_ref::<Error<BoxedError>>()
        .expect("the policy's error, through the upper Buffer");
    assert_eq!(rampart_err.attempts(), 3);
    let http = rampart_err
        .inner()
        .and_then(BoxedError::find::<HttpError>)
        .expect("the client's error, through the lower Buffer");
    assert_eq!(http.kind(), HttpErrorKind::Connect);
    assert!(rampart::error_chain_find::<HttpError>(&*err).is_some());
}

#[tokio::test(start_paused = true)]
async fn tower_timeout_under_the_policy_is_transient() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let slow = tower::service_fn(move |_: ()| {
        *c.lock().unwrap() += 1;
        async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(())
        }
    });
    let svc = ServiceBuilder::new()
        .layer(policy().layer(
            rampart::classify::Downcast::<_, std::io::Error>::new(rampart::classify::IoErrors),
            MemoryStore::default(),
            rampart::dlq::JsonExtractor::default(),
        ))
        .timeout(Duration::from_millis(100))
        .service(slow);
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 3, "Elapsed is transient: retried");
    assert!(err
        .inner()
        .is_some_and(|b| b.is::<tower::timeout::error::Elapsed>()));
    let _boxed: BoxError = err.into();
}

#[tokio::test]
async fn boxed_services_under_the_policy() {
    let routes: Routes = [("/503", (503, vec![]))].into();
    let s = server(routes).await;
    let layer = policy().layer(
        HttpClassifier::default(),
        MemoryStore::default(),
        HttpExtractor::default(),
    );
    // A BoxCloneService is Clone: straight under the policy.
    let erased: BoxCloneService<Request<Bytes>, Response<Bytes>, BoxError> = BoxCloneService::new(
        ServiceExt::<Request<Bytes>>::map_err(HttpClient::new(), BoxError::from),
    );
    let svc = ServiceBuilder::new().layer(layer.clone()).service(erased);
    let _ = svc.oneshot(req("GET", &s.url("/503"))).await.unwrap();
    assert_eq!(s.hits("/503"), 3);
    // A BoxService is not Clone (retries need a second handle): put it in a Buffer.
    let unique = BoxService::new(HttpClient::new());
    let mut svc = ServiceBuilder::new().layer(layer).buffer(4).service(unique);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req("GET", &s.url("/503")))
        .await;
    assert_eq!(res.unwrap().status(), 503);
    assert_eq!(s.hits("/503"), 6);
}

// ===== foreign error types (3) =====

#[tokio::test(start_paused = true)]
async fn a_foreign_error_type_needs_no_macro() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let parse = tower::service_fn(move |s: String| {
        *c.lock().unwrap() += 1;
        async move { s.parse::<u32>() }
    });
    let classify = |r: Result<&u32, &ParseIntError>| match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::TRANSIENT,
    };
    let svc = ServiceBuilder::new()
        .layer(policy().layer(
            classify,
            MemoryStore::default(),
            rampart::dlq::JsonExtractor::default(),
        ))
        .layer(LeafLayer)
        .service(parse);
    assert_eq!(svc.clone().oneshot("42".into()).await.unwrap(), 42);
    let err: Error<ParseIntError> = svc.oneshot("x".into()).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 4);
    assert_eq!(err.attempts(), 3);
    assert!(err.inner().is_some());
    let boxed: BoxError = err.into();
    assert!(rampart::error_chain_find::<ParseIntError>(&*boxed).is_some());
}

#[test]
fn every_rampart_error_boxes() {
    fn boxes<E: Into<BoxError> + std::error::Error + Send + Sync + 'static>() {}
    boxes::<Error<BoxedError>>();
    boxes::<Error<HttpError>>();
    boxes::<Error<std::io::Error>>();
    boxes::<Error<ParseIntError>>();
    boxes::<Error<Infallible>>();
    // String and &str services give BoxedError too.
    use rampart::IntoError;
    let e: Error<BoxedError> = String::from("nope").into_error();
    let _: BoxError = e.into();
    let e: Error<BoxedError> = "nope".into_error();
    let _: BoxError = e.into();
}

// ===== the client's builder: size limit, request timeout (9) =====

#[tokio::test]
async fn response_size_limit_is_a_typed_permanent_error() {
    let s = server(Routes::new()).await;
    let small = HttpClient::builder().max_response_bytes(3).build();
    let err = small
        .clone()
        .oneshot(req("GET", &s.url("/big")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::TooLarge);
    let src = std::error::Error::source(&err).unwrap();
    assert_eq!(
        src.downcast_ref::<rampart::client::ResponseTooLarge>(),
        Some(&rampart::client::ResponseTooLarge { limit: 3 })
    );
    // Permanent: the policy does not repeat it.
    let svc = ServiceBuilder::new()
        .layer(policy().layer(
            HttpClassifier::default(),
            MemoryStore::default(),
            HttpExtractor::default(),
        ))
        .service(small);
    let err = svc.oneshot(req("GET", &s.url("/big2"))).await.unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(s.hits("/big2"), 1);
    // At the limit it is read whole.
    let exact = HttpClient::builder().max_response_bytes(4).build();
    let res = exact.oneshot(req("GET", &s.url("/ok"))).await.unwrap();
    assert_eq!(res.body().as_ref(), b"body");
}

#[tokio::test]
async fn request_timeout_is_typed() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let client = HttpClient::builder()
        .request_timeout(Some(Duration::from_millis(100)))
        .build();
    let err = client
        .oneshot(req("GET", &format!("http://{addr}/")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Timeout);
    assert!(err.reached_server());
    held.abort();
}

// ===== tower-http TraceLayer above and below the policy (4) =====

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Debug-level `tracing` output of this thread, into a buffer, until the guard drops.
fn capture_debug() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logged = Captured::default();
    let writer = logged.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    (logged, tracing::subscriber::set_default(sub))
}

#[tokio::test]
async fn trace_layer_spans_show_the_policys_attempts() {
    use tower_http::trace::TraceLayer;
    let routes: Routes = [("/503", (503, vec![]))].into();
    let s = server(routes).await;
    // Both TraceLayers log to one buffer; their span names say which is which.
    let (logged, _guard) = capture_debug();
    let svc = ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|_: &Request<Full<Bytes>>| tracing::debug_span!("logical_call")),
        )
        .layer(policy().layer(
            HttpClassifier::default(),
            MemoryStore::default(),
            // `HttpExtractor` reads byte bodies; a `Full` body is described by its URI.
            |r: &Request<Full<Bytes>>| rampart::dlq::RequestPart {
                summary: r.uri().to_string(),
                ..Default::default()
            },
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|_: &Request<Full<Bytes>>| tracing::debug_span!("attempt")),
        )
        .map_response(|r: Response<Bytes>| r.map(Full::new))
        .service(HttpClient::new());
    let res = svc
        .oneshot(req("GET", &s.url("/503")).map(Full::new))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(s.hits("/503"), 3);
    let log = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    // One span per attempt below the policy, one for the logical call above it.
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("attempt: ") && l.contains("finished processing request"))
            .count(),
        3,
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("logical_call: ") && l.contains("finished processing request"))
            .count(),
        1,
        "{log}"
    );
}

/// The policy's `rampart_call` span is a child of the span current when the call was made,
/// not of whatever polls the future (here: nothing, the test's own task).
#[tokio::test]
async fn the_call_span_is_a_child_of_the_span_current_at_call() {
    use tower::Layer;
    let (logged, _guard) = capture_debug();
    let mut svc = policy()
        .layer(
            rampart::classify::IoErrors,
            MemoryStore::default(),
            |_: &u32| rampart::dlq::RequestPart::default(),
        )
        .layer(tower::service_fn(|_: u32| async {
            Err::<u32, _>(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }));
    let calls: Vec<_> = [1, 2]
        .into_iter()
        .map(|item| {
            let _entered = tracing::info_span!("caller", item).entered();
            svc.call(item)
        })
        .collect();
    for call in calls {
        call.await.unwrap_err();
    }
    let log = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    for item in [1, 2] {
        assert!(
            log.lines().any(|l| l.contains("request dead-lettered")
                && l.contains(&format!("caller{{item={item}}}:rampart_call{{"))),
            "{log}"
        );
    }
}
