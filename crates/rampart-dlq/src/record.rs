//! The dead-letter record: what failed, why, how often it was tried, and what to replay.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The version of the record format written by this crate.
pub const RECORD_VERSION: u32 = 1;

/// The default cap on a record's size, in bytes of its JSON (1 MiB): extractors and stores
/// cut anything larger to fit (see [`DeadLetterRecord::fit`]).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The smallest cap a record is cut to (4 KiB); smaller caps are raised to it, so that a
/// record always keeps its id, reason, counts and times.
pub const MIN_RECORD_BYTES: usize = 4096;

/// A record's stable, unique, time-ordered id (a UUID v7): sorting ids sorts records by the
/// time they were made, and every store is idempotent on it.
///
/// # Example
///
/// ```
/// use rampart_dlq::RecordId;
///
/// let a = RecordId::new();
/// let b = RecordId::new();
/// assert!(a < b);
/// assert_eq!(a.to_string().parse::<RecordId>().unwrap(), a);
/// assert!("not-an-id".parse::<RecordId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(Uuid);

impl RecordId {
    /// A new id, ordered after every id made before it in this process.
    pub fn new() -> Self {
        RecordId(Uuid::now_v7())
    }

    /// The smallest id of any record made at or after `t`.
    pub fn lower_bound(t: SystemTime) -> Self {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        RecordId(Uuid::from_bytes(bytes))
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        RecordId(Uuid::from_bytes(bytes))
    }
}

impl Default for RecordId {
    fn default() -> Self {
        RecordId::new()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

/// An id that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record id {0:?}: expected a UUID such as 0192c3a4-5b6c-7d8e-9f01-23456789abcd")]
pub struct ParseIdError(String);

impl FromStr for RecordId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(RecordId)
            .map_err(|_| ParseIdError(s.to_owned()))
    }
}

/// Why a call was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The failure was permanent: retrying could not help.
    Permanent,
    /// A transient failure outlasted every retry.
    RetriesExhausted,
    /// Retries stopped because the retry budget was spent.
    BudgetExhausted,
    /// The overall deadline passed.
    DeadlineExceeded,
    /// A circuit breaker rejected the call.
    CircuitOpen,
    /// The request could not be replayed for a retry.
    NotReplayable,
    /// The caller's own mistake (not recorded unless asked for).
    Rejected,
    /// The service asked to wait (`Retry-After`) longer than the policy allows.
    Throttled,
}

impl DeadLetterReason {
    /// Every reason.
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::Permanent,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::BudgetExhausted,
        DeadLetterReason::DeadlineExceeded,
        DeadLetterReason::CircuitOpen,
        DeadLetterReason::NotReplayable,
        DeadLetterReason::Rejected,
        DeadLetterReason::Throttled,
    ];

    /// A stable lowercase name, the one serialised: `permanent`, `retries_exhausted`, …
    pub const fn as_str(&self) -> &'static str {
        match self {
            DeadLetterReason::Permanent => "permanent",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
            DeadLetterReason::BudgetExhausted => "budget_exhausted",
            DeadLetterReason::DeadlineExceeded => "deadline_exceeded",
            DeadLetterReason::CircuitOpen => "circuit_open",
            DeadLetterReason::NotReplayable => "not_replayable",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Throttled => "throttled",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for DeadLetterReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeadLetterReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = DeadLetterReason::ALL
                    .iter()
                    .map(DeadLetterReason::as_str)
                    .collect();
                format!("unknown reason {s:?}; expected one of {}", all.join(", "))
            })
    }
}

/// What a record keeps of the request: a line for humans and the payload to replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RequestPart {
    /// One human line, e.g. `POST https://api/v1/… (412 bytes)` or `tts req-7 voice=Kore`.
    pub summary: String,
    /// Everything needed to replay the request, secrets redacted.
    pub payload: serde_json::Value,
}

/// A UTC instant, serialised as RFC 3339 with milliseconds (`2026-11-28T13:35:48.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// Now, to the millisecond (the precision records are stored with, so that a record
    /// reads back equal to what was written).
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = Duration::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        Timestamp(SystemTime::UNIX_EPOCH + ms)
    }

    /// `elapsed` before this time, to the millisecond (this time if that would be before
    /// the epoch).
    ///
    /// ```
    /// use rampart_dlq::Timestamp;
    /// use std::time::{Duration, SystemTime};
    ///
    /// let t = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(5_000));
    /// assert_eq!(t.before(Duration::from_micros(1_500_400)).0, SystemTime::UNIX_EPOCH + Duration::from_millis(3_499));
    /// assert_eq!(t.before(Duration::from_secs(9)), t);
    /// ```
    pub fn before(self, elapsed: Duration) -> Timestamp {
        let since = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        match since.checked_sub(elapsed) {
            Some(d) => Timestamp(
                SystemTime::UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            None => self,
        }
    }

    /// How long ago this was (zero if in the future).
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_millis(self.0), f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map(Timestamp)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}: {e}")))
    }
}

/// One dead letter. Versioned and serde-serialisable; stores keep it as JSON.
///
/// # Example
///
/// ```
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, RequestPart};
///
/// let r = DeadLetterRecord::new("gemini_api", DeadLetterReason::RetriesExhausted)
///     .error("503 model is overloaded")
///     .attempts(4, 4)
///     .request(RequestPart { summary: "tts req-1".into(), payload: serde_json::json!({"text": "hi"}) });
/// let json = serde_json::to_string(&r)?;
/// assert!(json.contains("\"reason\":\"retries_exhausted\""));
/// let back: DeadLetterRecord = serde_json::from_str(&json)?;
/// assert_eq!(back, r);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The record format's version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Stable, unique, time-ordered id.
    pub id: RecordId,
    /// The downstream service.
    pub service: String,
    /// Why the call was dead-lettered.
    pub reason: DeadLetterReason,
    /// How the last failure classified (`transient`, `permanent`, …).
    pub classification: String,
    /// The error, as text (secrets redacted, truncated).
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// When the first attempt started, as far as the layers below tell: the dead-letter
    /// layer reads no clock on a successful call, so this is derived from the error's
    /// elapsed time — from the call's start when the retry layer has a deadline or an
    /// attempt timeout, from the first failure otherwise — and equals `last_attempt_at` for
    /// a failure without one (a failed response, a single attempt).
    pub first_attempt_at: Timestamp,
    /// When the last attempt ended.
    pub last_attempt_at: Timestamp,
    /// How often the record was redriven and failed again.
    pub redrive_count: u32,
    /// The request.
    pub request: RequestPart,
    /// `true` if something was cut to respect a size limit (the request's body or payload by
    /// its extractor, or any part of the record by [`fit`](Self::fit)): such a request is
    /// never redriven.
    #[serde(default)]
    pub truncated: bool,
    /// When [`truncated`](Self::truncated), how many bytes the cut part had before: the
    /// request body or payload when an extractor cut it, the record's JSON when
    /// [`fit`](Self::fit) did (the larger of the two when both did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<u64>,
    /// `true` if redaction changed the request's replayable part (its URI, body or payload,
    /// not only its headers): such a request is never redriven.
    #[serde(default)]
    pub request_redacted: bool,
}

/// Why a record's request cannot be replayed as it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotKeptWhole {
    /// The request (or the record) was cut to respect a size limit.
    #[error("request truncated (originally {original} bytes)")]
    Truncated {
        /// The size before the cut, if known (0 if not).
        original: u64,
    },
    /// Redaction changed the request's URI, body or payload.
    #[error("request changed by redaction ({part})")]
    Redacted {
        /// What was changed: `uri`, `body`, `uri and body` or `payload`.
        part: &'static str,
    },
}

/// A writer that only counts bytes.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `v`'s JSON, without building it.
pub(crate) fn json_len<T: Serialize + ?Sized>(v: &T) -> Result<usize, serde_json::Error> {
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v)?;
    Ok(c.0)
}

/// Cuts `s` to at most `keep` bytes on a character boundary (to a multiple of 4 when it is
/// base64, so that it still decodes).
pub(crate) fn cut_string(s: &mut String, keep: usize, base64: bool) {
    let keep = if base64 { keep - keep % 4 } else { keep };
    let len = crate::redact::floor_boundary(s, keep).len();
    s.truncate(len);
}

/// The longest string anywhere in `v`.
fn largest_string(v: &mut serde_json::Value) -> Option<&mut String> {
    use serde_json::Value;
    match v {
        Value::String(s) => Some(s),
        Value::Array(a) => a
            .iter_mut()
            .filter_map(largest_string)
            .max_by_key(|s| s.len()),
        Value::Object(o) => o
            .values_mut()
            .filter_map(largest_string)
            .max_by_key(|s| s.len()),
        _ => None,
    }
}

/// Shrinks `v` until its JSON is at most `target` bytes: cuts its largest strings, and
/// replaces it with a short note if that is not enough. Returns the final size.
pub(crate) fn shrink_json(
    v: &mut serde_json::Value,
    target: usize,
    known_len: Option<usize>,
) -> Result<usize, serde_json::Error> {
    let mut size = match known_len {
        Some(n) => n,
        None => json_len(v)?,
    };
    let mut rounds = 0;
    while size > target && rounds < 64 {
        rounds += 1;
        let excess = size - target;
        let Some(s) = largest_string(v) else {
            break;
        };
        if s.len() <= 16 {
            break;
        }
        // Every byte cut saves at least one byte of JSON (escapes only make it more).
        let keep = s.len().saturating_sub(excess.saturating_add(16));
        cut_string(s, keep, false);
        size = json_len(v)?;
    }
    if size > target {
        *v = serde_json::Value::String(format!(
            "[payload of {size} bytes dropped to fit the record cap]"
        ));
        size = json_len(v)?;
    }
    Ok(size)
}

impl DeadLetterRecord {
    /// A record made now, with one attempt and an empty request.
    pub fn new(service: impl Into<String>, reason: DeadLetterReason) -> Self {
        let now = Timestamp::now();
        DeadLetterRecord {
            version: RECORD_VERSION,
            id: RecordId::new(),
            service: service.into(),
            reason,
            classification: String::new(),
            error: String::new(),
            attempts: 1,
            max_attempts: 1,
            first_attempt_at: now,
            last_attempt_at: now,
            redrive_count: 0,
            request: RequestPart::default(),
            truncated: false,
            original_size: None,
            request_redacted: false,
        }
    }

    /// Cuts this record down until its JSON is at most `max_bytes` (at least
    /// [`MIN_RECORD_BYTES`]) and returns that JSON. A record that fits is left alone;
    /// otherwise it gets [`truncated`](Self::truncated) and its
    /// [`original_size`](Self::original_size), and is cut in this order until it fits: the
    /// payload's `body` (kept valid base64 when `body_encoding` is `base64`, marked
    /// `body_truncated`), the payload's longest strings, the whole payload (replaced by a
    /// note), then the error, summary, classification and service text. Stores call this on
    /// every push, so a record is never acknowledged and then lost for being too large.
    ///
    /// # Errors
    ///
    /// Only if the payload holds something JSON cannot represent.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, RequestPart};
    ///
    /// let mut r = DeadLetterRecord::new("tts", DeadLetterReason::Permanent).request(RequestPart {
    ///     summary: "big".into(),
    ///     payload: serde_json::json!({ "text": "x".repeat(5 << 20) }),
    /// });
    /// let json = r.fit(1 << 20)?;
    /// assert!(json.len() <= 1 << 20);
    /// assert!(r.truncated && r.original_size.unwrap() > 5 << 20);
    /// assert_eq!(DeadLetterRecord::from_json(&json)?, r);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn fit(&mut self, max_bytes: usize) -> Result<Vec<u8>, serde_json::Error> {
        use serde_json::Value;
        let cap = max_bytes.max(MIN_RECORD_BYTES);
        let json = self.to_json()?;
        if json.len() <= cap {
            return Ok(json);
        }
        let size64 = u64::try_from(json.len()).unwrap_or(u64::MAX);
        self.truncated = true;
        self.original_size = Some(self.original_size.map_or(size64, |o| o.max(size64)));
        // What the two fields just set can add: `true` for `false`, and the size.
        let mut size = json.len().saturating_add(48);
        drop(json);
        if let Some(obj) = self.request.payload.as_object_mut() {
            let base64 = obj.get("body_encoding").and_then(Value::as_str) == Some("base64");
            if let Some(Value::String(body)) = obj.get_mut("body") {
                let keep = body.len().saturating_sub((size - cap).saturating_add(64));
                cut_string(body, keep, base64);
                obj.insert("body_truncated".to_owned(), Value::Bool(true));
            }
        }
        size = json_len(self)?;
        if size > cap {
            let payload = json_len(&self.request.payload)?;
            let target = cap.saturating_sub(size.saturating_sub(payload));
            shrink_json(&mut self.request.payload, target, Some(payload))?;
            size = json_len(self)?;
        }
        for field in 0..4 {
            while size > cap {
                let text = match field {
                    0 => &mut self.error,
                    1 => &mut self.request.summary,
                    2 => &mut self.classification,
                    _ => &mut self.service,
                };
                if text.is_empty() {
                    break;
                }
                let half = text.chars().count() / 2;
                *text = text.chars().take(half).collect();
                size = json_len(self)?;
            }
        }
        self.to_json()
    }

    /// `Ok` if the record's request was kept whole, so that replaying it sends the request
    /// that was made; otherwise why not (it was truncated, or redaction changed its URI,
    /// body or payload). Redacted headers do not count: a replay sends the others.
    ///
    /// # Errors
    ///
    /// [`NotKeptWhole`] says what was lost.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_dlq::{DeadLetterReason, DeadLetterRecord};
    ///
    /// let mut r = DeadLetterRecord::new("db", DeadLetterReason::Permanent);
    /// assert!(r.kept_whole().is_ok());
    /// r.truncated = true;
    /// assert!(r.kept_whole().is_err());
    /// ```
    pub fn kept_whole(&self) -> Result<(), NotKeptWhole> {
        let p = &self.request.payload;
        let flag = |k: &str| p.get(k).and_then(serde_json::Value::as_bool) == Some(true);
        if self.truncated || flag("body_truncated") {
            return Err(NotKeptWhole::Truncated {
                original: self
                    .original_size
                    .or_else(|| p.get("body_size").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0),
            });
        }
        let part = match (flag("uri_redacted"), flag("body_redacted")) {
            (true, true) => Some("uri and body"),
            (true, false) => Some("uri"),
            (false, true) => Some("body"),
            (false, false) if self.request_redacted => Some("payload"),
            (false, false) => None,
        };
        match part {
            Some(part) => Err(NotKeptWhole::Redacted { part }),
            None => Ok(()),
        }
    }

    /// Sets the error text.
    #[must_use]
    pub fn error(mut self, e: impl Into<String>) -> Self {
        self.error = e.into();
        self
    }

    /// Sets attempts made and allowed.
    #[must_use]
    pub fn attempts(mut self, made: u32, allowed: u32) -> Self {
        self.attempts = made;
        self.max_attempts = allowed;
        self
    }

    /// Sets the request part.
    #[must_use]
    pub fn request(mut self, r: RequestPart) -> Self {
        self.request = r;
        self
    }

    /// Serialises to JSON.
    ///
    /// # Errors
    ///
    /// Only if the payload holds something JSON cannot represent (it never does when built
    /// by this crate's extractors).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses JSON written by [`to_json`](Self::to_json).
    ///
    /// # Errors
    ///
    /// If the bytes are not a record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
