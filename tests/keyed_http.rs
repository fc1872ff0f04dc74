//! A keyed breaker chosen in a config file, over real HTTP on loopback: a service whose
//! `[circuit_breaker]` says `key = "header:x-voice"` gets one breaker per voice from
//! `Policy::http_layer`, in front of rampart's own `HttpClient`. One voice of three is down
//! on the server: its breaker opens, and every call of the two healthy voices succeeds.
#![cfg(all(feature = "client", feature = "config"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rampart::breaker::State;
use rampart::client::{HttpClassifier, HttpClient};
use rampart::config::Loader;
use rampart::dlq::{DeadLetterStore, HttpExtractor, ListQuery, MemoryStore};
use rampart::BreakerKey;
use tower::{Layer, ServiceExt};

/// A server that answers 503 to voice `down` and 200 to every other, counting requests per
/// voice.
async fn server(down: &'static str) -> (SocketAddr, Arc<Mutex<HashMap<String, u32>>>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let hits = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        let voice = req
                            .headers()
                            .get("x-voice")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        *hits.lock().unwrap().entry(voice.clone()).or_default() += 1;
                        let status = if voice == down { 503 } else { 200 };
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(b"{}")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "current_thread")]
async fn a_config_file_key_gives_each_voice_its_own_breaker_over_loopback_http() {
    let (addr, hits) = server("Puck").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.toml");
    // Short delays so the test takes milliseconds of real time; the breaker is the
    // policies' rate-based default (>= 50 % of >= 20 calls over 10 s), one per voice.
    std::fs::write(
        &path,
        "[services.voices]\n\
         max_retries = 1\n\
         base_delay = \"5ms\"\n\
         max_delay = \"10ms\"\n\
         [services.voices.circuit_breaker]\n\
         key = \"header:x-voice\"\n\
         max_keys = 8\n",
    )
    .unwrap();
    let policies = Loader::new().file(&path).env(|_| None).load().unwrap();
    let policy = policies.get("voices").unwrap();
    assert_eq!(
        policy.breaker_key(),
        Some(&BreakerKey::Header("x-voice".into()))
    );

    let store = MemoryStore::default();
    let layer = policy.http_layer(
        HttpClassifier::default(),
        store.clone(),
        HttpExtractor::default(),
    );
    assert!(layer.breaker().is_none(), "keyed, not one breaker");
    let voices = layer.keyed_breakers().unwrap();
    assert_eq!(voices.max_keys(), 8);
    let svc = layer.layer(HttpClient::new());

    let mut ok: HashMap<&str, u32> = HashMap::new();
    let mut refused = 0usize;
    for i in 0..60 {
        for voice in ["Kore", "Puck", "Charon"] {
            let req = Request::get(format!("http://{addr}/speak?i={i}"))
                .header("x-voice", voice)
                .body(Bytes::new())
                .unwrap();
            match svc.clone().oneshot(req).await {
                Ok(resp) if resp.status() == 200 => *ok.entry(voice).or_default() += 1,
                Ok(_) => {}
                Err(e) if e.circuit_open().is_some() => refused += 1,
                Err(e) => panic!("{voice}: {e}"),
            }
        }
    }
    // The healthy voices: every call, on its first attempt.
    assert_eq!((ok.get("Kore"), ok.get("Charon")), (Some(&60), Some(&60)));
    assert_eq!(ok.get("Puck"), None);
    let hits = hits.lock().unwrap().clone();
    assert_eq!((hits["Kore"], hits["Charon"]), (60, 60));
    // Puck's own breaker opened and kept most of its calls off the server.
    assert_eq!(
        voices.get(&"Puck".to_string()).map(|h| h.state()),
        Some(State::Open)
    );
    for healthy in ["Kore", "Charon"] {
        assert_eq!(
            voices.get(&healthy.to_string()).map(|h| h.state()),
            Some(State::Closed)
        );
    }
    assert!(refused > 0);
    assert!(
        hits["Puck"] < 60,
        "Puck reached the server {} times",
        hits["Puck"]
    );
    // Every failed call (Puck's 60) is one dead letter: retries exhausted until its breaker
    // opened, refused by the open circuit after.
    let records = store.list(ListQuery::newest(1000)).await.unwrap().records;
    assert_eq!(records.len(), 60);
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .all(|r| *r == "retries_exhausted" || *r == "circuit_open"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| **r == "circuit_open").count(),
        refused
    );
}
