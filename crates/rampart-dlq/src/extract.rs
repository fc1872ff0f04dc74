//! Turning a request into the part of a record that describes and replays it.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::record::RequestPart;
use crate::redact::{truncate, Redactor};

/// Produces a record's [`RequestPart`] from a request: a summary line and the payload needed
/// to replay it, with secrets redacted. Called only when a call is dead-lettered.
///
/// # Example
///
/// ```
/// use rampart_dlq::{Extract, RequestPart};
///
/// struct Sku;
/// impl Extract<u32> for Sku {
///     fn extract(&self, sku: &u32) -> RequestPart {
///         RequestPart { summary: format!("sku {sku}"), payload: serde_json::json!({ "sku": sku }) }
///     }
/// }
/// assert_eq!(Sku.extract(&7).summary, "sku 7");
/// ```
pub trait Extract<Req> {
    /// Describes `req`.
    fn extract(&self, req: &Req) -> RequestPart;
}

impl<F, Req> Extract<Req> for F
where
    F: Fn(&Req) -> RequestPart,
{
    fn extract(&self, req: &Req) -> RequestPart {
        self(req)
    }
}

/// Records any `serde::Serialize` request as its JSON, with secret-looking `name=value`
/// pairs in string fields redacted and the summary truncated.
///
/// # Example
///
/// ```
/// use rampart_dlq::{Extract, JsonExtractor};
///
/// #[derive(serde::Serialize)]
/// struct Charge { order: u64, url: String }
/// let part = JsonExtractor::default().extract(&Charge { order: 9, url: "https://pay?token=abc".into() });
/// assert_eq!(part.payload["order"], 9);
/// assert_eq!(part.payload["url"], "https://pay?token=[redacted]");
/// ```
#[derive(Debug, Clone, Default)]
pub struct JsonExtractor {
    redactor: Redactor,
}

impl JsonExtractor {
    /// With a custom redactor.
    pub fn new(redactor: Redactor) -> Self {
        JsonExtractor { redactor }
    }
}

fn redact_value(r: &Redactor, v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = r.url(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| redact_value(r, x)),
        serde_json::Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if r.is_secret_header(k) {
                    *x = serde_json::Value::String(crate::redact::REDACTED.to_owned());
                } else {
                    redact_value(r, x);
                }
            }
        }
        _ => {}
    }
}

impl<Req: Serialize> Extract<Req> for JsonExtractor {
    fn extract(&self, req: &Req) -> RequestPart {
        let mut payload = match serde_json::to_value(req) {
            Ok(v) => v,
            Err(e) => json!({ "unserialisable": e.to_string() }),
        };
        redact_value(&self.redactor, &mut payload);
        let summary = self.redactor.truncate(&payload.to_string());
        RequestPart {
            summary: truncate(&summary, 120),
            payload,
        }
    }
}

/// The reference design's TTS request.
///
/// The user's IP address and user agent are kept only when the extractor is told to
/// ([`TtsExtractor::keep_client_info`]); the reference design stored them verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtsRequest {
    /// The request's id.
    pub request_id: String,
    /// The user's id.
    pub user_id: String,
    /// The text to speak.
    pub text: String,
    /// The prebuilt voice (`Kore`, `Puck`, …).
    pub voice_name: String,
    /// The caller's user agent, if known.
    pub user_agent: Option<String>,
    /// The caller's IP address, if known.
    pub ip: Option<String>,
}

/// Records a [`TtsRequest`]: request id, user id, text truncated to 500 characters, voice;
/// client info only on opt-in.
///
/// # Example
///
/// ```
/// use rampart_dlq::{Extract, TtsExtractor, TtsRequest};
///
/// let req = TtsRequest {
///     request_id: "req-1".into(), user_id: "u-9".into(), text: "a".repeat(800),
///     voice_name: "Kore".into(), user_agent: Some("curl/8".into()), ip: Some("203.0.113.9".into()),
/// };
/// let part = TtsExtractor::default().extract(&req);
/// assert_eq!(part.payload["text"].as_str().unwrap().chars().count(), 501); // 500 + '…'
/// assert!(part.payload.get("ip").is_none());
/// assert_eq!(part.summary, "tts req-1 user=u-9 voice=Kore (800 chars)");
/// ```
#[derive(Debug, Clone)]
pub struct TtsExtractor {
    keep_client_info: bool,
    truncate: usize,
}

impl Default for TtsExtractor {
    fn default() -> Self {
        TtsExtractor {
            keep_client_info: false,
            truncate: crate::redact::DEFAULT_TRUNCATE,
        }
    }
}

impl TtsExtractor {
    /// Keeps the user agent and IP address. Defaults to `false`.
    #[must_use]
    pub fn keep_client_info(mut self, yes: bool) -> Self {
        self.keep_client_info = yes;
        self
    }
}

impl Extract<TtsRequest> for TtsExtractor {
    fn extract(&self, r: &TtsRequest) -> RequestPart {
        let mut payload = json!({
            "request_id": r.request_id,
            "user_id": r.user_id,
            "text": truncate(&r.text, self.truncate),
            "voice_name": r.voice_name,
        });
        if self.keep_client_info {
            payload["user_agent"] = json!(r.user_agent);
            payload["ip"] = json!(r.ip);
        }
        RequestPart {
            summary: format!(
                "tts {} user={} voice={} ({} chars)",
                r.request_id,
                r.user_id,
                r.voice_name,
                r.text.chars().count()
            ),
            payload,
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_impl::{BodyBytes, HttpExtractor};

#[cfg(feature = "http")]
mod http_impl {
    use super::*;

    /// Request bodies whose bytes can be read without consuming them.
    pub trait BodyBytes {
        /// The body's bytes, if they are in memory.
        fn body_bytes(&self) -> Option<&[u8]>;
    }

    impl BodyBytes for bytes::Bytes {
        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self)
        }
    }
    impl BodyBytes for Vec<u8> {
        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self)
        }
    }
    impl BodyBytes for String {
        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self.as_bytes())
        }
    }
    impl BodyBytes for &'static str {
        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self.as_bytes())
        }
    }
    impl BodyBytes for () {
        fn body_bytes(&self) -> Option<&[u8]> {
            None
        }
    }

    /// Records an `http::Request`: method, URI (password and secret parameters redacted),
    /// the headers you choose (secrets always redacted), and the body up to a limit (as UTF-8
    /// text when it is, base64-free hex otherwise), enough for `rampart dlq redrive` to
    /// replay it.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_dlq::{Extract, HttpExtractor};
    ///
    /// let req = http::Request::post("https://generativelanguage.googleapis.com/v1beta/models/tts:generateContent?key=AIza")
    ///     .header("x-goog-api-key", "AIza-secret")
    ///     .header("content-type", "application/json")
    ///     .body(String::from("{\"contents\":[]}"))
    ///     .unwrap();
    /// let part = HttpExtractor::default().keep_header("content-type").keep_header("x-goog-api-key").extract(&req);
    /// let stored = part.payload.to_string();
    /// assert!(!stored.contains("AIza"));
    /// assert_eq!(part.payload["headers"]["x-goog-api-key"], "[redacted]");
    /// assert_eq!(part.payload["body"], "{\"contents\":[]}");
    /// ```
    #[derive(Debug, Clone)]
    pub struct HttpExtractor {
        redactor: Redactor,
        headers: Vec<String>,
        body_limit: usize,
    }

    impl Default for HttpExtractor {
        fn default() -> Self {
            HttpExtractor {
                redactor: Redactor::default(),
                headers: Vec::new(),
                body_limit: 64 * 1024,
            }
        }
    }

    impl HttpExtractor {
        /// Keeps header `name` (its value redacted if it is a secret).
        #[must_use]
        pub fn keep_header(mut self, name: &str) -> Self {
            self.headers.push(name.to_ascii_lowercase());
            self
        }

        /// Keeps at most `bytes` of the body. Defaults to 64 KiB.
        #[must_use]
        pub fn body_limit(mut self, bytes: usize) -> Self {
            self.body_limit = bytes;
            self
        }

        /// Uses `redactor` instead of the default one.
        #[must_use]
        pub fn redactor(mut self, redactor: Redactor) -> Self {
            self.redactor = redactor;
            self
        }
    }

    impl<B: BodyBytes> Extract<http::Request<B>> for HttpExtractor {
        fn extract(&self, req: &http::Request<B>) -> RequestPart {
            let uri = self.redactor.url(&req.uri().to_string());
            let mut headers = serde_json::Map::new();
            for name in &self.headers {
                let values: Vec<String> = req
                    .headers()
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| {
                        if self.redactor.is_secret_header(name) {
                            crate::redact::REDACTED.to_owned()
                        } else {
                            self.redactor.url(&String::from_utf8_lossy(v.as_bytes()))
                        }
                    })
                    .collect();
                match values.len() {
                    0 => {}
                    1 => {
                        headers.insert(name.clone(), json!(values[0]));
                    }
                    _ => {
                        headers.insert(name.clone(), json!(values));
                    }
                }
            }
            let body = req.body().body_bytes().unwrap_or_default();
            let kept = &body[..body.len().min(self.body_limit)];
            let body_json = match std::str::from_utf8(kept) {
                Ok(text) => json!(self.redactor.url(text)),
                Err(_) => {
                    json!({ "hex": kept.iter().map(|b| format!("{b:02x}")).collect::<String>() })
                }
            };
            RequestPart {
                summary: format!(
                    "{} {} ({} bytes)",
                    req.method(),
                    truncate(&uri, 100),
                    body.len()
                ),
                payload: json!({
                    "method": req.method().as_str(),
                    "uri": uri,
                    "version": format!("{:?}", req.version()),
                    "headers": headers,
                    "body": body_json,
                    "body_truncated": body.len() > self.body_limit,
                }),
            }
        }
    }
}
