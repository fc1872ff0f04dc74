//! An axum app exposing `/metrics` through metrics-exporter-prometheus runs a scripted
//! workload through one policy — known failures, a trip, dead letters — and the test scrapes
//! `/metrics` over HTTP and checks exact values.
#![cfg(feature = "prometheus")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use rampart::breaker::CircuitBreakerConfig;
use rampart::dlq::{JsonExtractor, MemoryStore};
use rampart::{Outcome, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

fn classify(r: Result<&String, &io::Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Outcome::Permanent,
        Err(_) => Outcome::TRANSIENT,
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `name{sorted labels}` → value, from the Prometheus text format.
fn parse(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut l: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                l.sort_unstable();
                format!("{name}{{{}}}", l.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().unwrap_or(f64::NAN));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_exactly_what_happened() {
    let handle = rampart::observe::prometheus_builder()
        .unwrap()
        .install_recorder()
        .unwrap();
    rampart::observe::describe();

    let policy = Policy::builder("gemini_api")
        .max_retries(2)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(10))
        .breaker(Some(
            CircuitBreakerConfig::builder()
                .consecutive_failures(Some(3))
                .recovery_timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    let failed_once: Arc<Mutex<HashSet<String>>> = Arc::default();
    let inner = tower::service_fn(move |kind: String| {
        let failed_once = failed_once.clone();
        async move {
            match kind.as_str() {
                "ok" => Ok(kind),
                "permanent" => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
                "transient" => Err(io::Error::from(io::ErrorKind::ConnectionReset)),
                _ => {
                    if failed_once.lock().unwrap().insert(kind.clone()) {
                        Err(io::Error::from(io::ErrorKind::ConnectionReset))
                    } else {
                        Ok(kind)
                    }
                }
            }
        }
    });
    let store = MemoryStore::default();
    let svc = policy
        .layer(
            classify as fn(Result<&String, &io::Error>) -> Outcome,
            store.clone(),
            JsonExtractor::default(),
        )
        .layer(inner);

    let metrics_handle = handle.clone();
    let app = Router::new()
        .route(
            "/call/{kind}",
            get(move |Path(kind): Path<String>| {
                let svc = svc.clone();
                async move {
                    match svc.oneshot(kind).await {
                        Ok(v) => v,
                        Err(e) => format!("error: {e}"),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move { metrics_handle.render() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The script.
    for (path, expect) in [
        ("/call/flaky-1", "flaky-1"), // fails once, retried, succeeds
        ("/call/ok", "ok"),           // plain success
        ("/call/permanent", "error: inner service failed"), // dead letter: permanent
        (
            "/call/transient",
            "error: circuit breaker is open for gemini_api",
        ), // 2 failures trip, 3rd attempt rejected
        ("/call/ok", "error: circuit breaker is open for gemini_api"), // rejected while open
    ] {
        let (status, body) = http_get(addr, path).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(expect), "{path}: {body}");
    }

    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let m = parse(&body);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{body}"))
    };
    let s = "service=\"gemini_api\"";

    assert_eq!(
        get(&format!("retry_attempts_total{{{s},status=\"success\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!("retry_attempts_total{{{s},status=\"failed\"}}")),
        2.0
    );
    assert_eq!(get(&format!("retry_delay_seconds_count{{{s}}}")), 3.0);
    assert!(get(&format!("retry_delay_seconds_bucket{{le=\"0.1\",{s}}}")) >= 3.0);
    assert_eq!(
        get(&format!(
            "circuit_breaker_calls_total{{outcome=\"success\",{s}}}"
        )),
        2.0
    );
    assert_eq!(
        get(&format!(
            "circuit_breaker_calls_total{{outcome=\"failure\",{s}}}"
        )),
        4.0
    );
    assert_eq!(
        get(&format!(
            "circuit_breaker_calls_total{{outcome=\"rejected\",{s}}}"
        )),
        2.0
    );
    assert_eq!(
        get(&format!(
            "circuit_breaker_transitions_total{{from=\"closed\",{s},to=\"open\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!("circuit_breaker_state{{{s},state=\"open\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!("circuit_breaker_state{{{s},state=\"closed\"}}")),
        0.0
    );
    assert_eq!(
        get(&format!("circuit_breaker_state{{{s},state=\"half_open\"}}")),
        0.0
    );
    assert_eq!(
        get(&format!("dead_letters_total{{reason=\"permanent\",{s}}}")),
        1.0
    );
    assert_eq!(
        get(&format!(
            "dead_letters_total{{reason=\"circuit_open\",{s}}}"
        )),
        2.0
    );
    assert_eq!(
        get("dead_letter_queue_size{queue_name=\"dead_letter_queue\"}"),
        3.0
    );
    assert!(!m
        .keys()
        .any(|k| k.starts_with("dead_letter_write_failures_total")));
    assert!(!m
        .keys()
        .any(|k| k.starts_with("retry_budget_exhausted_total")));
    assert!(body.contains("# HELP retry_attempts_total"));
    // No label carries anything unbounded.
    assert!(!body.contains("flaky-1"));
}
