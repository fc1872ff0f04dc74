//! The demo's test support: an embedded, Gemini-shaped HTTP server on loopback that answers
//! `generateContent` in the real format (a short tone as audio) and injects faults from a
//! seeded [`FaultMix`], WAV/tone helpers, and a per-key attempt counter. Not part of the
//! `rampart` library (`publish = false`); the `gemini_tts` binary of this crate is the
//! README's demo.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use rampart::gemini::{DEFAULT_MODEL, SAMPLE_RATE};
use serde_json::{json, Value};

/// Wraps 16-bit mono PCM at `rate` Hz in a WAV (RIFF) header.
///
/// # Example
///
/// ```
/// let wav = rampart_demo::wav(&[0u8; 480], 24_000);
/// assert_eq!(&wav[..4], b"RIFF");
/// assert_eq!(wav.len(), 44 + 480);
/// ```
pub fn wav(pcm: &[u8], rate: u32) -> Vec<u8> {
    let len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(pcm.len() + 44);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&len.saturating_add(36).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.saturating_mul(2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

/// A short tone as 16-bit PCM: the embedded server's "speech".
pub fn tone(ms: u32, hz: f64) -> Vec<u8> {
    // In u64: `SAMPLE_RATE * ms` overflows a u32 from about three minutes on.
    let n = u32::try_from(u64::from(SAMPLE_RATE) * u64::from(ms) / 1000).unwrap_or(u32::MAX);
    let mut pcm = Vec::with_capacity(usize::try_from(n).unwrap_or(0).saturating_mul(2));
    for i in 0..n {
        let t = f64::from(i) / f64::from(SAMPLE_RATE);
        #[allow(clippy::cast_possible_truncation)]
        let s = ((t * hz * std::f64::consts::TAU).sin() * 8_000.0) as i16;
        pcm.extend_from_slice(&s.to_le_bytes());
    }
    pcm
}

/// How often the embedded server misbehaves, per request; the rest succeed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// 429 `RESOURCE_EXHAUSTED` with a `RetryInfo` of `retry_delay`.
    pub throttled: f64,
    /// 503 `UNAVAILABLE` "The model is overloaded".
    pub unavailable: f64,
    /// 500 `INTERNAL`.
    pub internal: f64,
    /// A response slower than `slow_by`.
    pub slow: f64,
    /// The connection is dropped without a response.
    pub reset: f64,
    /// The delay a 429 asks for.
    pub retry_delay: Duration,
    /// How slow a slow response is.
    pub slow_by: Duration,
    /// Every request in this window (from the first request) gets a 503.
    pub outage: Option<(Duration, Duration)>,
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix {
            throttled: 0.05,
            unavailable: 0.08,
            internal: 0.03,
            slow: 0.02,
            reset: 0.03,
            retry_delay: Duration::from_millis(300),
            slow_by: Duration::from_secs(3),
            outage: None,
        }
    }
}

impl std::str::FromStr for FaultMix {
    type Err = String;
    /// `"429=0.05,503=0.08,500=0.03,slow=0.02,reset=0.03"`; unnamed kinds are 0.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = FaultMix {
            throttled: 0.0,
            unavailable: 0.0,
            internal: 0.0,
            slow: 0.0,
            reset: 0.0,
            ..FaultMix::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=fraction"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {v:?} is not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{part:?}: {v} is not a fraction in [0, 1]"));
            }
            match k.trim() {
                "429" => m.throttled = v,
                "503" => m.unavailable = v,
                "500" => m.internal = v,
                "slow" => m.slow = v,
                "reset" => m.reset = v,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; expected 429, 503, 500, slow, reset"
                    ))
                }
            }
        }
        if m.throttled + m.unavailable + m.internal + m.slow + m.reset > 1.0 {
            return Err("the fault fractions add up to more than 1".into());
        }
        Ok(m)
    }
}

/// What the embedded server saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Requests received.
    pub requests: u64,
    /// Answered with audio.
    pub ok: u64,
    /// Answered with an error or a dropped connection.
    pub faults: u64,
}

/// An embedded, Gemini-shaped HTTP server on loopback that answers `generateContent` in the
/// real format (a short tone as audio) and injects faults from a seeded [`FaultMix`].
#[derive(Debug, Clone)]
pub struct FakeGemini {
    addr: SocketAddr,
    stats: Arc<Mutex<ServerStats>>,
}

struct ServerState {
    mix: FaultMix,
    rng: Mutex<u64>,
    started: Mutex<Option<Instant>>,
    stats: Arc<Mutex<ServerStats>>,
    audio: String,
    counter: AtomicU64,
}

fn next_rand(state: &Mutex<u64>) -> f64 {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    // xorshift64*
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (v >> 11) as f64 / (1u64 << 53) as f64
}

fn google_error(
    code: u16,
    status: &str,
    message: &str,
    retry: Option<Duration>,
) -> Response<http_body_util::Full<Bytes>> {
    let mut details = Vec::new();
    if let Some(d) = retry {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", d.as_secs_f64()),
        }));
    }
    let body = json!({ "error": { "code": code, "message": message, "status": status, "details": details } });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

impl FakeGemini {
    /// Starts the server on a free loopback port.
    ///
    /// # Errors
    ///
    /// If no loopback port can be bound.
    pub async fn start(mix: FaultMix, seed: u64) -> std::io::Result<FakeGemini> {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let state = Arc::new(ServerState {
            mix,
            rng: Mutex::new(seed.max(1)),
            started: Mutex::new(None),
            stats: stats.clone(),
            audio: base64::engine::general_purpose::STANDARD.encode(tone(250, 440.0)),
            counter: AtomicU64::new(0),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { answer(&state, req).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Ok(FakeGemini { addr, stats })
    }

    /// The base URL to point a client at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server saw so far.
    pub fn stats(&self) -> ServerStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A dropped connection: the handler fails, hyper closes the connection without answering.
#[derive(Debug)]
struct Reset;
impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}
impl std::error::Error for Reset {}

/// What the embedded server does with one request.
enum Verdict {
    /// A Google API error: status code, status name, message, optional `retryDelay`.
    Error(u16, &'static str, &'static str, Option<Duration>),
    /// Drop the connection without answering.
    Reset,
    /// Answer with audio, first waiting `delay`.
    Audio { delay: Option<Duration> },
}

const OVERLOADED: &str = "The model is overloaded. Please try again later.";

/// Validates the request like the real API, then draws its fate from the fault mix.
fn judge(
    state: &ServerState,
    path: &str,
    has_key: bool,
    body: &[u8],
    since_start: Duration,
) -> Verdict {
    if !path.ends_with(":generateContent") || !path.starts_with("/v1beta/models/") {
        return Verdict::Error(404, "NOT_FOUND", "unknown method", None);
    }
    if !has_key {
        return Verdict::Error(401, "UNAUTHENTICATED", "API key not valid", None);
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Error(400, "INVALID_ARGUMENT", "Invalid JSON payload", None);
    };
    if v.pointer("/contents/0/parts/0/text")
        .and_then(Value::as_str)
        .is_none()
    {
        return Verdict::Error(
            400,
            "INVALID_ARGUMENT",
            "contents[0].parts[0].text is required",
            None,
        );
    }
    let m = state.mix;
    if let Some((from, len)) = m.outage {
        // `from + len` may not fit in a `Duration` (`--outage 1s+500000000000years`).
        if since_start.checked_sub(from).is_some_and(|into| into < len) {
            return Verdict::Error(503, "UNAVAILABLE", OVERLOADED, None);
        }
    }
    let faults = [
        (
            m.throttled,
            Verdict::Error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                Some(m.retry_delay),
            ),
        ),
        (
            m.unavailable,
            Verdict::Error(503, "UNAVAILABLE", OVERLOADED, None),
        ),
        (
            m.internal,
            Verdict::Error(500, "INTERNAL", "An internal error has occurred.", None),
        ),
        (m.reset, Verdict::Reset),
        (
            m.slow,
            Verdict::Audio {
                delay: Some(m.slow_by),
            },
        ),
    ];
    let r = next_rand(&state.rng);
    let mut edge = 0.0;
    for (share, verdict) in faults {
        edge += share;
        if r < edge {
            return verdict;
        }
    }
    Verdict::Audio { delay: None }
}

async fn answer(
    state: &ServerState,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<http_body_util::Full<Bytes>>, Reset> {
    use http_body_util::BodyExt;
    let now = Instant::now();
    let started = *state
        .started
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(now);
    let path = req.uri().path().to_owned();
    let has_key = req.headers().contains_key("x-goog-api-key");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let verdict = judge(state, &path, has_key, &body, now.duration_since(started));
    {
        let mut s = state.stats.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests += 1;
        if matches!(verdict, Verdict::Audio { .. }) {
            s.ok += 1;
        } else {
            s.faults += 1;
        }
    }
    match verdict {
        Verdict::Error(code, status, message, retry) => {
            return Ok(google_error(code, status, message, retry))
        }
        Verdict::Reset => return Err(Reset),
        Verdict::Audio { delay: Some(d) } => tokio::time::sleep(d).await,
        Verdict::Audio { delay: None } => {}
    }
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let body = json!({
        "candidates": [{ "content": { "role": "model", "parts": [{ "inlineData": {
            "mimeType": format!("audio/L16;codec=pcm;rate={SAMPLE_RATE}"),
            "data": state.audio,
        }}]}, "finishReason": "STOP", "index": 0 }],
        "usageMetadata": { "promptTokenCount": 9, "candidatesTokenCount": 42, "totalTokenCount": 51 },
        "modelVersion": DEFAULT_MODEL,
        "responseId": format!("fake-{n}"),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default())
}

/// Attempts per key, for demos that count retries on the client side.
#[derive(Debug, Clone, Default)]
pub struct AttemptCounter {
    inner: Arc<Mutex<HashMap<String, u32>>>,
}

impl AttemptCounter {
    /// Counts one attempt for `key`.
    pub fn hit(&self, key: &str) {
        *self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default() += 1;
    }

    /// Attempts made for `key`.
    pub fn get(&self, key: &str) -> u32 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}
