//! How a job's failures are retried: the backoff, the hints, the breaker's wait.

use std::time::Duration;

use rampart_breaker::{BreakerHandle, State};
use rampart_core::{Backoff, ConfigError, Jitter, Name, Outcome};
use rampart_dlq::Redactor;
use rand::Rng;

/// The retry policy of a job worker: the job type it handles, the backoff between attempts
/// (countdowns, not sleeps), an optional breaker, and the redactor for dead letters.
///
/// # Example
///
/// ```
/// use rampart_jobs::JobPolicy;
/// use std::time::Duration;
///
/// let p = JobPolicy::tts_task();
/// assert_eq!(p.backoff().max_retries(), 3);
/// assert_eq!(p.backoff().nominal_delay(0), Duration::from_secs(60));
/// assert_eq!(p.backoff().nominal_delay(10), Duration::from_secs(3600));
/// ```
#[derive(Clone, Debug)]
pub struct JobPolicy {
    pub(crate) kind: Name,
    pub(crate) backoff: Backoff,
    pub(crate) breaker: Option<BreakerHandle>,
    pub(crate) open_jitter: Duration,
    pub(crate) redactor: Redactor,
}

impl JobPolicy {
    /// A policy for jobs of type `kind` with `backoff`.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::Backoff;
    /// use rampart_jobs::JobPolicy;
    ///
    /// let p = JobPolicy::new("thumbnail", Backoff::builder().max_retries(5).build().unwrap());
    /// assert_eq!(p.kind(), "thumbnail");
    /// ```
    pub fn new(kind: impl Into<Name>, backoff: Backoff) -> JobPolicy {
        JobPolicy {
            kind: kind.into(),
            backoff,
            breaker: None,
            open_jitter: Duration::from_secs(5),
            redactor: Redactor::default(),
        }
    }

    /// The reference design's Celery task settings for `tts` jobs: 3 retries, countdown
    /// 60 s × 2ⁿ capped at 3,600 s, proportional jitter of ±20 %.
    ///
    /// # Panics
    ///
    /// Never: the numbers are constant and valid.
    pub fn tts_task() -> JobPolicy {
        JobPolicy::new(Name::from_static("tts"), tts_backoff())
    }

    /// The job type handled.
    pub fn kind(&self) -> &str {
        self.kind.as_ref()
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Another job type.
    #[must_use]
    pub fn with_kind(mut self, kind: impl Into<Name>) -> Self {
        self.kind = kind.into();
        self
    }

    /// While this breaker is open, jobs are not run: they are re-scheduled for when it
    /// half-opens, plus a random jitter of up to [`open_jitter`](Self::open_jitter), without
    /// using up an attempt.
    #[must_use]
    pub fn breaker(mut self, handle: BreakerHandle) -> Self {
        self.breaker = Some(handle);
        self
    }

    /// The most jitter added to "when the breaker half-opens" (default 5 s), so that a
    /// backlog does not stampede the probe.
    #[must_use]
    pub fn open_jitter(mut self, max: Duration) -> Self {
        self.open_jitter = max;
        self
    }

    /// The redactor applied to payloads and error text before they are dead-lettered.
    #[must_use]
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// The countdown before retry number `retry` (0-based) after `outcome`: the jittered
    /// backoff, or the server's hint when that is longer. `None` when retries are used up or
    /// the outcome is not retryable.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::Outcome;
    /// use rampart_jobs::JobPolicy;
    /// use std::time::Duration;
    ///
    /// let p = JobPolicy::tts_task();
    /// let d = p.countdown(1, Outcome::TRANSIENT, 7).unwrap();
    /// assert!(d >= Duration::from_secs(96) && d <= Duration::from_secs(144));
    /// let hinted = Outcome::Throttled { retry_after: Some(Duration::from_secs(900)) };
    /// assert_eq!(p.countdown(0, hinted, 7), Some(Duration::from_secs(900)));
    /// assert_eq!(p.countdown(3, Outcome::TRANSIENT, 7), None);
    /// assert_eq!(p.countdown(0, Outcome::Permanent, 7), None);
    /// ```
    pub fn countdown(&self, retry: u32, outcome: Outcome, stream: u64) -> Option<Duration> {
        let hint = match outcome {
            Outcome::Transient { retry_after } | Outcome::Throttled { retry_after } => retry_after,
            _ => return None,
        };
        // The schedule of this job's stream, advanced to this retry: the same job gets the same
        // jitter sequence on whichever worker runs it.
        let delay = self
            .backoff
            .schedule(stream)
            .nth(usize::try_from(retry).ok()?)?;
        Some(match hint {
            Some(h) if h > delay => h.min(rampart_core::MAX_DURATION),
            _ => delay,
        })
    }

    /// How long to wait before running a job now, if the breaker is open: its time to
    /// half-open plus jitter.
    pub(crate) fn breaker_wait(&self) -> Option<Duration> {
        let handle = self.breaker.as_ref()?;
        let snap = handle.snapshot();
        match snap.state {
            State::Open | State::ForcedOpen => {
                let base = snap.half_open_in.unwrap_or(self.open_jitter);
                Some(base.saturating_add(self.jitter()))
            }
            _ => None,
        }
    }

    pub(crate) fn jitter(&self) -> Duration {
        let max = u64::try_from(self.open_jitter.as_millis()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(0..=max))
    }
}

fn tts_backoff() -> Backoff {
    match Backoff::builder()
        .max_retries(3)
        .base_delay(Duration::from_secs(60))
        .factor(2.0)
        .max_delay(Duration::from_secs(3600))
        .jitter(Jitter::Proportional(0.2))
        .build()
    {
        Ok(b) => b,
        Err(e) => unreachable_config(e),
    }
}

#[cold]
fn unreachable_config(e: ConfigError) -> Backoff {
    // The constants above are valid; fall back to the default rather than panic.
    let _ = e;
    Backoff::default()
}
