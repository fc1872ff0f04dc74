//! The dead-letter record: what failed, why, how often it was tried, and what to replay.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The version of the record format written by this crate.
pub const RECORD_VERSION: u32 = 1;

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
}

impl DeadLetterReason {
    /// Every reason.
    pub const ALL: [DeadLetterReason; 7] = [
        DeadLetterReason::Permanent,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::BudgetExhausted,
        DeadLetterReason::DeadlineExceeded,
        DeadLetterReason::CircuitOpen,
        DeadLetterReason::NotReplayable,
        DeadLetterReason::Rejected,
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
    /// When the first attempt started.
    pub first_attempt_at: Timestamp,
    /// When the last attempt ended.
    pub last_attempt_at: Timestamp,
    /// How often the record was redriven and failed again.
    pub redrive_count: u32,
    /// The request.
    pub request: RequestPart,
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
