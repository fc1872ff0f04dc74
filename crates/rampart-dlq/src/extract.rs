//! Turning a request into the part of a record that describes and replays it.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::record::{json_len, shrink_json, RequestPart, DEFAULT_MAX_RECORD_BYTES};
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
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot describe a `{Req}` for a dead-letter record",
    label = "this extractor does not implement `Extract<{Req}>`",
    note = "`JsonExtractor` describes `serde::Serialize` requests; `HttpExtractor` (feature `http`) describes `http::Request`s whose body it can read without consuming it (`Bytes`, `String`, `Vec<u8>`, or the buffered body `Policy::layer_streaming` hands on for a streaming body)",
    note = "a closure `|req: &{Req}| -> RequestPart` is an extractor too, or `impl Extract<{Req}> for YourExtractor`"
)]
pub trait Extract<Req> {
    /// Describes `req`.
    fn extract(&self, req: &Req) -> RequestPart;

    /// Describes `req` and says whether the part is the whole request: whether anything was
    /// cut to a size limit or changed by redaction. The layer calls this one; by default it
    /// calls [`extract`](Self::extract) and reports the request kept whole.
    fn extract_whole(&self, req: &Req) -> Extracted {
        Extracted::whole(self.extract(req))
    }
}

/// What an extractor made of a request, and what it had to leave out.
///
/// # Example
///
/// ```
/// use rampart_dlq::{Extracted, RequestPart};
///
/// let e = Extracted::whole(RequestPart::default()).truncated(5 << 20).redacted();
/// assert!(e.truncated && e.redacted);
/// assert_eq!(e.original_size, Some(5 << 20));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extracted {
    /// The record's request part.
    pub part: RequestPart,
    /// `true` if something was cut to a size limit.
    pub truncated: bool,
    /// The size in bytes of what was cut, before the cut.
    pub original_size: Option<u64>,
    /// `true` if redaction changed the replayable part (URI, body, payload).
    pub redacted: bool,
}

impl Extracted {
    /// A part that is the whole request.
    pub fn whole(part: RequestPart) -> Self {
        Extracted {
            part,
            ..Extracted::default()
        }
    }

    /// Marks it cut from `original_size` bytes.
    #[must_use]
    pub fn truncated(mut self, original_size: u64) -> Self {
        self.truncated = true;
        self.original_size = Some(original_size);
        self
    }

    /// Marks it changed by redaction.
    #[must_use]
    pub fn redacted(mut self) -> Self {
        self.redacted = true;
        self
    }
}

fn size64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

// Not recommended to the compiler (nor is `JsonExtractor`'s `Serialize` impl): a request
// the extractor cannot describe is reported with the notes on `Extract`.
#[diagnostic::do_not_recommend]
impl<F, Req> Extract<Req> for F
where
    F: Fn(&Req) -> RequestPart,
{
    fn extract(&self, req: &Req) -> RequestPart {
        self(req)
    }
}

/// Records any `serde::Serialize` request as its JSON, redacted (every field with a secret
/// name at any depth, every secret-looking value in strings; see [`Redactor`]) and bounded
/// (its longest strings cut until it fits [`max_bytes`](JsonExtractor::max_bytes)).
///
/// # Example
///
/// ```
/// use rampart_dlq::{Extract, JsonExtractor};
///
/// #[derive(serde::Serialize)]
/// struct Charge { order: u64, url: String, api_key: String }
/// let charge = Charge { order: 9, url: "https://pay?token=abc".into(), api_key: "k-123".into() };
/// let part = JsonExtractor::default().extract(&charge);
/// assert_eq!(part.payload["order"], 9);
/// assert_eq!(part.payload["url"], "https://pay?token=[redacted]");
/// assert_eq!(part.payload["api_key"], "[redacted]");
/// assert!(JsonExtractor::default().extract_whole(&charge).redacted);
/// ```
#[derive(Debug, Clone)]
pub struct JsonExtractor {
    redactor: Redactor,
    max_bytes: usize,
}

impl Default for JsonExtractor {
    fn default() -> Self {
        JsonExtractor {
            redactor: Redactor::default(),
            max_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl JsonExtractor {
    /// With a custom redactor.
    pub fn new(redactor: Redactor) -> Self {
        JsonExtractor {
            redactor,
            ..JsonExtractor::default()
        }
    }

    /// Cuts a payload whose JSON is larger than `bytes` (marking the record truncated).
    ///
    /// Defaults to [`DEFAULT_MAX_RECORD_BYTES`] (1 MiB).
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }
}

#[diagnostic::do_not_recommend]
impl<Req: Serialize> Extract<Req> for JsonExtractor {
    fn extract(&self, req: &Req) -> RequestPart {
        self.extract_whole(req).part
    }

    fn extract_whole(&self, req: &Req) -> Extracted {
        let mut payload = match serde_json::to_value(req) {
            Ok(v) => v,
            Err(e) => json!({ "unserialisable": self.redactor.text(&e.to_string()) }),
        };
        let redacted = self.redactor.json(&mut payload);
        let size = json_len(&payload).unwrap_or(usize::MAX);
        let truncated = size > self.max_bytes;
        if truncated {
            let _ = shrink_json(&mut payload, self.max_bytes, Some(size));
        }
        let mut summary = String::new();
        if let serde_json::Value::String(s) = &payload {
            summary.push_str(crate::redact::floor_boundary(s, 480));
        } else {
            let text = payload.to_string();
            summary.push_str(crate::redact::floor_boundary(&text, 480));
        }
        let mut out = Extracted::whole(RequestPart {
            summary: truncate(&summary, 120),
            payload,
        });
        if truncated {
            out = out.truncated(size64(size));
        }
        if redacted {
            out = out.redacted();
        }
        out
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
/// client info only on opt-in. Every field is redacted (see [`Redactor`]) before it is cut.
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
/// assert!(TtsExtractor::default().extract_whole(&req).truncated);
/// ```
#[derive(Debug, Clone)]
pub struct TtsExtractor {
    keep_client_info: bool,
    truncate: usize,
    redactor: Redactor,
}

impl Default for TtsExtractor {
    fn default() -> Self {
        TtsExtractor {
            keep_client_info: false,
            truncate: crate::redact::DEFAULT_TRUNCATE,
            redactor: Redactor::default(),
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

    /// Keeps at most `chars` characters of the text (the record is then marked truncated).
    ///
    /// Defaults to 500.
    #[must_use]
    pub fn text_limit(mut self, chars: usize) -> Self {
        self.truncate = chars;
        self
    }

    /// Uses `redactor` instead of the default one.
    ///
    /// Defaults to [`Redactor::default`].
    #[must_use]
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }
}

impl Extract<TtsRequest> for TtsExtractor {
    fn extract(&self, r: &TtsRequest) -> RequestPart {
        self.extract_whole(r).part
    }

    fn extract_whole(&self, r: &TtsRequest) -> Extracted {
        let mut redacted = false;
        let mut field = |s: &str, limit: usize| {
            let clean = self.redactor.redact_str(s);
            redacted |= matches!(clean, std::borrow::Cow::Owned(_));
            truncate(&clean, limit)
        };
        let request_id = field(&r.request_id, 200);
        let user_id = field(&r.user_id, 200);
        let voice_name = field(&r.voice_name, 200);
        let text = field(&r.text, self.truncate);
        let client = self.keep_client_info.then(|| {
            (
                r.user_agent.as_deref().map(|s| field(s, 500)),
                r.ip.as_deref().map(|s| field(s, 100)),
            )
        });
        let mut payload = json!({
            "request_id": request_id,
            "user_id": user_id,
            "text": text,
            "voice_name": voice_name,
        });
        if let Some((user_agent, ip)) = client {
            payload["user_agent"] = json!(user_agent);
            payload["ip"] = json!(ip);
        }
        let chars = r.text.chars().count();
        let mut out = Extracted::whole(RequestPart {
            summary: format!(
                "tts {} user={} voice={} ({} chars)",
                truncate(&request_id, 60),
                truncate(&user_id, 60),
                truncate(&voice_name, 60),
                chars
            ),
            payload,
        });
        if chars > self.truncate {
            out = out.truncated(size64(r.text.len()));
        }
        if redacted {
            out = out.redacted();
        }
        out
    }
}

#[cfg(feature = "http")]
pub use self::http_impl::{BodyBytes, HttpExtractor};

#[cfg(feature = "http")]
mod http_impl {
    use super::*;

    /// Request bodies whose bytes can be read without consuming them.
    #[diagnostic::on_unimplemented(
        message = "`HttpExtractor` cannot read a `{Self}` body without consuming it",
        label = "not a body held in memory",
        note = "a streaming body (hyper `Incoming`, axum `Body`, `StreamBody`) is read once: use `Policy::layer_streaming` (feature `http`), whose `BufferBodyLayer` buffers it once for the retries and the record, or implement `rampart::dlq::BodyBytes` for a body you hold in memory"
    )]
    pub trait BodyBytes {
        /// The body's bytes, if they are in memory.
        fn body_bytes(&self) -> Option<&[u8]>;

        /// `None` (the default) when [`body_bytes`](Self::body_bytes) is the whole body;
        /// `Some(size)` when it is only the body's start (a streaming body over the replay
        /// buffer's limit): the body has at least `size` bytes. [`HttpExtractor`] then
        /// marks the record truncated, so that it is never redriven.
        fn cut_from(&self) -> Option<u64> {
            None
        }
    }

    /// A body `rampart-retry`'s `BufferBodyLayer` buffered: its bytes when it was held
    /// whole, otherwise the start it kept, marked cut.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use rampart_dlq::{BodyBytes, Extract, HttpExtractor};
    /// use rampart_retry::ReplayBody;
    ///
    /// let body: ReplayBody<String> = ReplayBody::full(Bytes::from_static(b"{\"n\":1}"));
    /// assert_eq!(body.body_bytes(), Some(&b"{\"n\":1}"[..]));
    /// let req = http::Request::post("http://orders.local/v1").body(body)?;
    /// assert_eq!(HttpExtractor::default().extract(&req).payload["body"], "{\"n\":1}");
    /// # Ok::<(), http::Error>(())
    /// ```
    impl<B: http_body::Body> BodyBytes for rampart_retry::ReplayBody<B> {
        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self.buffered())
        }

        fn cut_from(&self) -> Option<u64> {
            self.cut()
        }
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

    /// How far past the body limit a non-JSON body is redacted before it is cut, so that a
    /// secret straddling the limit is seen whole.
    const SCAN_MARGIN: usize = 8 * 1024;

    /// Records an `http::Request`: method, URI, the headers you choose, and the body up to a
    /// limit, enough for `rampart dlq redrive` to replay it byte for byte.
    ///
    /// Everything is redacted before it is encoded (see [`Redactor`]): the URI's password and
    /// secret parameters, secret headers (always, even when kept) and secret values in the
    /// others, and the body (JSON field by field at any depth; forms, text and binary bodies
    /// by name and pattern on their bytes). The payload holds:
    ///
    /// | field | |
    /// |---|---|
    /// | `method`, `uri`, `version`, `headers` | the request line and kept headers |
    /// | `body` | the body: its text when it is UTF-8, else base64 |
    /// | `body_encoding` | `utf8` or `base64` |
    /// | `body_size` | the body's size in bytes before redaction and cut (at least this many when only its start was at hand) |
    /// | `body_truncated` | `true` if the body was cut to [`body_limit`](HttpExtractor::body_limit) (never inside a UTF-8 character), or only its start was at hand ([`BodyBytes::cut_from`]: a streaming body over the replay buffer's limit) |
    /// | `uri_redacted`, `body_redacted` | `true` if redaction changed them |
    ///
    /// A request that was cut or whose URI or body redaction changed is never redriven.
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
    /// assert_eq!(part.payload["body_encoding"], "utf8");
    /// assert_eq!(part.payload["uri_redacted"], true);
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
            self.extract_whole(req).part
        }

        fn extract_whole(&self, req: &http::Request<B>) -> Extracted {
            let raw_uri = req.uri().to_string();
            let uri = self.redactor.url(&raw_uri);
            let uri_redacted = uri != raw_uri;
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
                            String::from_utf8_lossy(&self.redactor.bytes(v.as_bytes())).into_owned()
                        }
                    })
                    .collect();
                match values.as_slice() {
                    [] => {}
                    [one] => {
                        headers.insert(name.clone(), json!(one));
                    }
                    _ => {
                        headers.insert(name.clone(), json!(values));
                    }
                }
            }
            let body = req.body().body_bytes().unwrap_or_default();
            // Only the body's start is at hand (a streaming body over the replay limit).
            let cut_from = req.body().cut_from();
            // A JSON body is redacted whole (field by field); any other body only as far as
            // it is kept, plus a margin, so that a huge body costs no more than its limit.
            let scan = if crate::redact::looks_like_json(body) {
                body
            } else {
                body.get(..self.body_limit.saturating_add(SCAN_MARGIN))
                    .unwrap_or(body)
            };
            let clean = self.redactor.body(scan);
            let body_redacted = matches!(clean, std::borrow::Cow::Owned(_));
            let text = match std::str::from_utf8(&clean) {
                Ok(text) => Some(text),
                // Our own cut landed inside a character: the text before it.
                Err(e) if e.error_len().is_none() && scan.len() < body.len() => clean
                    .get(..e.valid_up_to())
                    .and_then(|t| std::str::from_utf8(t).ok()),
                Err(_) => None,
            };
            let (body_json, encoding, cut) = match text {
                Some(text) => {
                    let kept = crate::redact::floor_boundary(text, self.body_limit);
                    (
                        json!(kept),
                        "utf8",
                        kept.len() < text.len() || scan.len() < body.len(),
                    )
                }
                None => {
                    use base64::Engine as _;
                    let kept = clean.get(..self.body_limit).unwrap_or(&clean);
                    (
                        json!(base64::engine::general_purpose::STANDARD.encode(kept)),
                        "base64",
                        kept.len() < clean.len() || scan.len() < body.len(),
                    )
                }
            };
            let truncated = cut || cut_from.is_some();
            let size = cut_from.unwrap_or_else(|| size64(body.len()));
            let mut out = Extracted::whole(RequestPart {
                summary: format!(
                    "{} {} ({}{} bytes)",
                    req.method(),
                    truncate(&uri, 100),
                    if cut_from.is_some() { ">= " } else { "" },
                    size
                ),
                payload: json!({
                    "method": req.method().as_str(),
                    "uri": uri,
                    "version": format!("{:?}", req.version()),
                    "headers": headers,
                    "body": body_json,
                    "body_encoding": encoding,
                    "body_size": size,
                    "body_truncated": truncated,
                    "uri_redacted": uri_redacted,
                    "body_redacted": body_redacted,
                }),
            });
            if truncated {
                out = out.truncated(size);
            }
            if uri_redacted || body_redacted {
                out = out.redacted();
            }
            out
        }
    }
}
