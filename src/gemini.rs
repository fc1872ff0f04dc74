//! Gemini: classifying Google API errors (`RESOURCE_EXHAUSTED`, `retryDelay`), building
//! text-to-speech requests and decoding their audio. (The demo's fault-injecting Gemini-shaped
//! server and its WAV helpers live in the `rampart-demo` workspace member, not here.)

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use rampart_core::{Classify, Outcome};
use serde_json::{json, Value};

use crate::client::{status_outcome, HttpClassifier, HttpError};

/// The default text-to-speech model.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash-preview-tts";
/// The audio Gemini TTS returns: 16-bit little-endian PCM, mono, 24 kHz.
pub const SAMPLE_RATE: u32 = 24_000;

/// Classifies Gemini / Google API responses by their error body
/// (`{"error":{"code","message","status","details"}}`): `RESOURCE_EXHAUSTED` is throttled,
/// with `google.rpc.RetryInfo.retryDelay` (`"37s"`, `"1.5s"`) as the hint; `UNAVAILABLE`,
/// `DEADLINE_EXCEEDED` and `INTERNAL` are transient; `INVALID_ARGUMENT`,
/// `PERMISSION_DENIED`, `UNAUTHENTICATED` and `NOT_FOUND` are rejected. A body that is not a
/// Google error falls back to the status code ([`HttpClassifier`]); so do transport errors.
///
/// # Example
///
/// ```
/// use rampart::gemini::GeminiClassifier;
/// use rampart::{Classify, Outcome};
/// use std::time::Duration;
///
/// let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED",
///   "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#;
/// let res = http::Response::builder().status(429).body(bytes::Bytes::from(body)).unwrap();
/// let o = Classify::<_, rampart::client::HttpError>::classify(&GeminiClassifier::default(), Ok(&res));
/// assert_eq!(o, Outcome::Throttled { retry_after: Some(Duration::from_secs(37)) });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GeminiClassifier {
    http: HttpClassifier,
}

impl GeminiClassifier {
    /// Also retries POSTs after errors where they may have reached the server
    /// (`generateContent` has no side effects, so this is safe for it).
    #[must_use]
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.http = self.http.retry_non_idempotent(yes);
        self
    }
}

/// Parses a protobuf JSON duration (`"37s"`, `"1.5s"`).
pub fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The outcome of a Google API error body, if it is one.
pub fn google_error_outcome(body: &[u8]) -> Option<Outcome> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error")?;
    let status = err.get("status")?.as_str()?;
    let hint = err
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|d| {
            d.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/google.rpc.RetryInfo")
        })
        .and_then(|d| d.get("retryDelay")?.as_str().and_then(parse_proto_duration));
    Some(match status {
        "RESOURCE_EXHAUSTED" => Outcome::Throttled { retry_after: hint },
        "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" => {
            Outcome::Transient { retry_after: hint }
        }
        "INVALID_ARGUMENT"
        | "PERMISSION_DENIED"
        | "UNAUTHENTICATED"
        | "NOT_FOUND"
        | "FAILED_PRECONDITION" => Outcome::Rejected,
        _ => return None,
    })
}

impl Classify<Response<Bytes>, HttpError> for GeminiClassifier {
    fn classify(&self, result: Result<&Response<Bytes>, &HttpError>) -> Outcome {
        match result {
            Ok(res) if res.status().is_client_error() || res.status().is_server_error() => {
                google_error_outcome(res.body()).unwrap_or_else(|| {
                    status_outcome(res.status(), crate::client::retry_after(res.headers()))
                })
            }
            other => self.http.classify(other),
        }
    }
}

/// A `generateContent` request for speech: `POST {base}/v1beta/models/{model}:generateContent`
/// with `x-goog-api-key`, the text, `responseModalities = ["AUDIO"]` and the prebuilt voice.
///
/// # Errors
///
/// If `base` or `model` do not make a valid URI.
pub fn tts_request(
    base: &str,
    model: &str,
    api_key: &str,
    text: &str,
    voice: &str,
) -> Result<Request<Bytes>, http::Error> {
    let body = json!({
        "contents": [{ "parts": [{ "text": text }] }],
        "generationConfig": {
            "responseModalities": ["AUDIO"],
            "speechConfig": { "voiceConfig": { "prebuiltVoiceConfig": { "voiceName": voice } } }
        }
    });
    Request::post(format!(
        "{}/v1beta/models/{model}:generateContent",
        base.trim_end_matches('/')
    ))
    .header("content-type", "application/json")
    .header("x-goog-api-key", api_key)
    .body(Bytes::from(body.to_string()))
}

/// Why a response did not hold audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAudio(pub String);

impl std::fmt::Display for NoAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the response holds no audio: {}", self.0)
    }
}

impl std::error::Error for NoAudio {}

/// Decodes `candidates[0].content.parts[0].inlineData.data` (base64 PCM).
///
/// # Errors
///
/// [`NoAudio`] if the body is not JSON, has no such field, or it is not base64.
pub fn decode_audio(body: &[u8]) -> Result<Vec<u8>, NoAudio> {
    let v: Value = serde_json::from_slice(body).map_err(|e| NoAudio(format!("not JSON ({e})")))?;
    let data = v
        .pointer("/candidates/0/content/parts/0/inlineData/data")
        .and_then(Value::as_str)
        .ok_or_else(|| NoAudio("no candidates[0].content.parts[0].inlineData.data".into()))?;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| NoAudio(format!("not base64 ({e})")))
}
