//! The HTTP client's builder against real servers on loopback: `tls_config` with a custom
//! root (a committed test CA, `tests/data/tls`), HTTP/2 by ALPN over TLS and h2c with
//! `http2_only` (feature `http2`), through a policy.
#![cfg(feature = "client")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::client::{HttpClient, HttpErrorKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tower::ServiceExt;

const CA: &[u8] = include_bytes!("data/tls/ca.der");
const CERT: &[u8] = include_bytes!("data/tls/localhost.der");
const KEY: &[u8] = include_bytes!("data/tls/localhost.key.der");

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server saw: connections accepted, and each request's version and path.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: Mutex<Vec<(Version, String)>>,
}

/// Answers `/down` with 503 and anything else with 200 and the request's version as body.
async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    seen.requests
        .lock()
        .unwrap()
        .push((req.version(), path.clone()));
    let status = if path == "/down" { 503 } else { 200 };
    let body = format!("{:?}", req.version());
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

/// A TLS server with the test certificate, offering `alpn`; it serves HTTP/2 when `h2` was
/// negotiated, HTTP/1.1 otherwise.
async fn tls_server(alpn: &[&[u8]]) -> (SocketAddr, Arc<Seen>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(KEY.to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(CERT.to_vec())], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust us
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (addr, seen)
}

/// The client's TLS configuration: the test CA as the only root.
fn trusting_the_test_ca() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(CA.to_vec())).unwrap();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn get(url: &str) -> Request<Bytes> {
    Request::get(url).body(Bytes::new()).unwrap()
}

#[tokio::test]
async fn tls_config_with_a_custom_root() {
    let (addr, seen) = tls_server(&[b"http/1.1"]).await;
    let client = HttpClient::builder()
        .tls_config(trusting_the_test_ca())
        .build();
    let port = addr.port();
    // By name and by IP address (both in the certificate).
    for url in [
        format!("https://localhost:{port}/a"),
        format!("https://127.0.0.1:{port}/b"),
    ] {
        let res = client.clone().oneshot(get(&url)).await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        assert_eq!(res.body(), "HTTP/1.1");
    }
    assert_eq!(seen.requests.lock().unwrap().len(), 2);

    // The default roots (webpki) do not know the test CA: a connect error, never sent.
    let err = HttpClient::new()
        .oneshot(get(&format!("https://localhost:{port}/c")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), HttpErrorKind::Connect);
    assert!(!err.reached_server());
    assert_eq!(seen.requests.lock().unwrap().len(), 2);

    // A configuration that already names ALPN protocols is taken (hyper-rustls would panic
    // on it): the client sets ALPN itself.
    let mut with_alpn = trusting_the_test_ca();
    with_alpn.alpn_protocols = vec![b"spdy/3".to_vec()];
    let res = HttpClient::builder()
        .tls_config(with_alpn)
        .build()
        .oneshot(get(&format!("https://localhost:{port}/d")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[cfg(feature = "http2")]
mod http2 {
    use super::*;
    use rampart::client::HttpClassifier;
    use rampart::dlq::{HttpExtractor, MemoryStore};
    use rampart::Policy;
    use std::time::Duration;
    use tower::ServiceBuilder;

    #[tokio::test]
    async fn https_negotiates_h2_by_alpn() {
        let (addr, seen) = tls_server(&[b"h2", b"http/1.1"]).await;
        let client = HttpClient::builder()
            .tls_config(trusting_the_test_ca())
            .build();
        let url = format!("https://localhost:{}/", addr.port());
        let res = client.clone().oneshot(get(&url)).await.unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        assert_eq!(res.body(), "HTTP/2.0");
        // A server that speaks only HTTP/1.1 still gets HTTP/1.1.
        let (addr1, _) = tls_server(&[b"http/1.1"]).await;
        let res = client
            .oneshot(get(&format!("https://localhost:{}/", addr1.port())))
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_11);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    /// A plain-TCP HTTP/2 server (h2c, prior knowledge).
    async fn h2c_server() -> (SocketAddr, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let seen = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn h2c_with_http2_only_multiplexes_retries_on_one_connection() {
        let (addr, seen) = h2c_server().await;
        let client = HttpClient::builder().http2_only(true).build();
        let res = client
            .clone()
            .oneshot(get(&format!("http://{addr}/a")))
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        assert_eq!(res.body(), "HTTP/2.0");
        // Concurrent calls and a policy's retries share the one connection.
        let policy = Policy::builder("h2")
            .max_retries(2)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5))
            .budget(None)
            .breaker(None)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(policy.layer(
                HttpClassifier::default(),
                MemoryStore::default(),
                HttpExtractor::default(),
            ))
            .service(client.clone());
        let calls = (0..8).map(|i| {
            let path = if i % 2 == 0 { "/down" } else { "/up" };
            svc.clone().oneshot(get(&format!("http://{addr}{path}")))
        });
        for res in futures_util::future::join_all(calls).await {
            assert!(res.is_ok());
        }
        let requests = seen.requests.lock().unwrap().clone();
        assert_eq!(requests.iter().filter(|(_, p)| p == "/down").count(), 4 * 3);
        assert_eq!(requests.iter().filter(|(_, p)| p == "/up").count(), 4);
        assert!(requests.iter().all(|(v, _)| *v == Version::HTTP_2));
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        // The streaming client speaks it too.
        let res = client
            .streaming()
            .oneshot(
                Request::get(format!("http://{addr}/s"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
    }

    #[tokio::test]
    async fn plain_http_without_http2_only_is_http1() {
        // An HTTP/1.1 server: the default client does not try h2c on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let res = HttpClient::new()
            .oneshot(get(&format!("http://{addr}/")))
            .await
            .unwrap();
        assert_eq!(res.version(), Version::HTTP_11);
        assert_eq!(res.body(), "HTTP/1.1");
    }
}
