//! The job envelope every rampart job travels in, and the codec that never refuses one.

use std::time::{SystemTime, UNIX_EPOCH};

use apalis_core::backend::codec::Codec;
use serde::{Deserialize, Serialize};

/// A job as it sits in the backend: its type, its arguments, and rampart's bookkeeping
/// (the attempt this run is, how often it was redriven, the id of the job it started as).
///
/// The attempt count lives in the job itself, not in the backend's own counters, so it is
/// the same on SQLite, Redis and PostgreSQL and survives the re-scheduling of a retry as a
/// new backend task.
///
/// # Example
///
/// ```
/// use rampart_jobs::Job;
///
/// let job = Job::new("tts", &serde_json::json!({ "text": "hello" })).unwrap();
/// assert_eq!(job.kind, "tts");
/// assert_eq!(job.attempt, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job type (`tts`); a worker dead-letters types it does not handle.
    pub kind: String,
    /// The arguments, decoded by the handler into its own type.
    pub args: serde_json::Value,
    /// Attempts made before this run (0 on the first run).
    #[serde(default)]
    pub attempt: u32,
    /// How often the job was redriven from the dead-letter store.
    #[serde(default)]
    pub redrives: u32,
    /// The backend id of the first run of this job (set on its first run and kept by every
    /// retry); the dead-letter record's id is derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When the job was first enqueued, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub enqueued_at_ms: u64,
    /// Set by [`JobCodec`] when the stored bytes were not a job at all: the decode error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undecodable: Option<String>,
}

impl Job {
    /// A new job of type `kind` with `args`.
    ///
    /// # Errors
    ///
    /// If `args` cannot be represented as JSON.
    pub fn new<A: Serialize>(kind: impl Into<String>, args: &A) -> Result<Job, serde_json::Error> {
        Ok(Job {
            kind: kind.into(),
            args: serde_json::to_value(args)?,
            attempt: 0,
            redrives: 0,
            origin: None,
            enqueued_at_ms: now_ms(),
            undecodable: None,
        })
    }

    /// The job to run after this one failed: the next attempt, same origin.
    #[must_use]
    pub fn next_attempt(&self, origin: &str) -> Job {
        Job {
            kind: self.kind.clone(),
            args: self.args.clone(),
            attempt: self.attempt.saturating_add(1),
            redrives: self.redrives,
            origin: Some(self.origin.clone().unwrap_or_else(|| origin.to_owned())),
            enqueued_at_ms: self.enqueued_at_ms,
            undecodable: None,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A JSON codec for [`Job`] whose decoding never fails: bytes that are not a job become a
/// job marked [`undecodable`](Job::undecodable), which the worker dead-letters with the bytes
/// (redacted) instead of stopping on a backend error. Use it with apalis'
/// `WithCodec::new(backend, JobCodec)`.
///
/// # Example
///
/// ```
/// use apalis_core::backend::codec::Codec;
/// use rampart_jobs::{Job, JobCodec};
///
/// let job: Job = JobCodec.decode(&b"not json".to_vec()).unwrap();
/// assert!(job.undecodable.is_some());
/// assert_eq!(job.args, serde_json::Value::String("not json".into()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JobCodec;

impl Codec<Job> for JobCodec {
    type Error = serde_json::Error;
    type Compact = Vec<u8>;

    fn encode(&self, val: &Job) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(val)
    }

    fn decode(&self, val: &Vec<u8>) -> Result<Job, serde_json::Error> {
        Ok(serde_json::from_slice::<Job>(val).unwrap_or_else(|e| Job {
            kind: String::new(),
            args: serde_json::Value::String(String::from_utf8_lossy(val).into_owned()),
            attempt: 0,
            redrives: 0,
            origin: None,
            enqueued_at_ms: now_ms(),
            undecodable: Some(e.to_string()),
        }))
    }
}
