//! An axum service with `POST /tts` (JSON `{"text": …, "voice": …}` in, a WAV file out) that
//! calls Gemini through the `gemini_api` policy, and `GET /metrics` for Prometheus.
//! Without `GEMINI_API_KEY` it talks to the embedded fault-injecting Gemini server.
//!
//! Run with `cargo run -p rampart-demo --example axum_server --features prometheus`, then
//! `curl -s -X POST localhost:3000/tts -H 'content-type: application/json' -d '{"text":"hello"}' -o hello.wav`
//! and `curl -s localhost:3000/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use rampart::client::HttpClient;
use rampart::dlq::{HttpExtractor, SqliteStore};
use rampart::gemini::{decode_audio, tts_request, GeminiClassifier, SAMPLE_RATE};
use rampart::Policy;
use rampart_demo::{wav, FakeGemini};
use tower::{Layer, ServiceExt};

#[derive(serde::Deserialize)]
struct Tts {
    text: String,
    #[serde(default = "kore")]
    voice: String,
}

fn kore() -> String {
    "Kore".into()
}

type Svc = rampart::PolicyService<HttpClient, GeminiClassifier, SqliteStore, HttpExtractor>;

struct App {
    svc: Svc,
    base: String,
    key: String,
}

async fn tts(State(app): State<Arc<App>>, Json(body): Json<Tts>) -> Response {
    let req = match tts_request(
        &app.base,
        rampart::gemini::DEFAULT_MODEL,
        &app.key,
        &body.text,
        &body.voice,
    ) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match app.svc.clone().oneshot(req).await {
        Ok(res) if res.status().is_success() => match decode_audio(res.body()) {
            Ok(pcm) => (
                [("content-type", "audio/wav")],
                Bytes::from(wav(&pcm, SAMPLE_RATE)),
            )
                .into_response(),
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        },
        Ok(res) => (
            StatusCode::BAD_GATEWAY,
            format!("Gemini answered {}", res.status()),
        )
            .into_response(),
        Err(e) if e.circuit_open().is_some() => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = rampart::observe::prometheus_builder()?.install_recorder()?;
    rampart::observe::describe();
    let (base, key) = match std::env::var("GEMINI_API_KEY") {
        Ok(k) if !k.is_empty() => ("https://generativelanguage.googleapis.com".to_owned(), k),
        _ => (
            FakeGemini::start(Default::default(), 1).await?.base_url(),
            "demo".to_owned(),
        ),
    };
    std::fs::create_dir_all("target/axum_server")?;
    let store = SqliteStore::open("target/axum_server/dlq.sqlite", 10_000)?;
    let policy = Policy::preset("gemini_api")
        .ok_or("no preset")?
        .attempt_timeout(Some(std::time::Duration::from_secs(30)))
        .build()?;
    let svc = policy
        .layer(
            GeminiClassifier::default().retry_non_idempotent(true),
            store,
            HttpExtractor::default(),
        )
        .layer(HttpClient::new());
    let app = Arc::new(App { svc, base, key });
    let router = Router::new()
        .route("/tts", post(tts))
        .with_state(app)
        .route("/metrics", get(move || async move { metrics.render() }));
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr} (POST /tts, GET /metrics)");
    axum::serve(listener, router).await?;
    Ok(())
}
