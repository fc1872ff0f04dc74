//! The observation seam: what a retry layer reports, for metrics and tests.
//!
//! Nothing here runs on the success path of a first attempt: observers hear about failed
//! attempts, retries, and calls that were retried or gave up.

use std::time::Duration;

use rampart_core::{Name, Outcome};

/// Why a retry layer stopped and returned a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// The classifier said the failure must not be retried (permanent or rejected).
    NotRetryable,
    /// `max_retries` retries were made.
    Exhausted,
    /// The retry budget had no tokens.
    BudgetExhausted,
    /// The next attempt could not finish before the deadline, or the deadline cut an attempt.
    DeadlineExceeded,
    /// The request could not be replayed.
    NotReplayable,
    /// A circuit breaker is open and will not admit a probe before the deadline.
    CircuitOpen,
    /// The service asked to wait (`Retry-After`) longer than `max_delay` or the time left
    /// before the deadline.
    Throttled,
}

impl GiveUp {
    /// A stable lowercase name, suitable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::Exhausted => "exhausted",
            GiveUp::BudgetExhausted => "budget_exhausted",
            GiveUp::DeadlineExceeded => "deadline_exceeded",
            GiveUp::NotReplayable => "not_replayable",
            GiveUp::CircuitOpen => "circuit_open",
            GiveUp::Throttled => "throttled",
        }
    }

    /// The same reason, as the per-call record names it.
    pub const fn stop_reason(&self) -> rampart_core::record::StopReason {
        use rampart_core::record::StopReason;
        match self {
            GiveUp::NotRetryable => StopReason::NotRetryable,
            GiveUp::Exhausted => StopReason::RetriesExhausted,
            GiveUp::BudgetExhausted => StopReason::BudgetExhausted,
            GiveUp::DeadlineExceeded => StopReason::DeadlineExceeded,
            GiveUp::NotReplayable => StopReason::NotReplayable,
            GiveUp::CircuitOpen => StopReason::CircuitOpen,
            GiveUp::Throttled => StopReason::Throttled,
        }
    }
}

/// A retry was scheduled.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The downstream service.
    pub service: Name,
    /// The attempt that failed (1 for the first call).
    pub attempt: u32,
    /// How it failed.
    pub outcome: Outcome,
    /// How long the layer waits before the next attempt.
    pub delay: Duration,
    /// `true` if the delay came from the server (`Retry-After`) or an open breaker rather
    /// than from the backoff schedule.
    pub hinted: bool,
}

/// A retry attempt (attempt 2 or later) finished.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AttemptEvent {
    /// The downstream service.
    pub service: Name,
    /// The attempt's number (2 for the first retry).
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// A logical call that was retried, or that failed, has finished.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FinishEvent {
    /// The downstream service.
    pub service: Name,
    /// Attempts made.
    pub attempts: u32,
    /// `None` if the call succeeded; otherwise why the layer stopped.
    pub gave_up: Option<GiveUp>,
}

/// Hears what a retry layer does. Every method defaults to doing nothing; `()` is the
/// observer that does nothing at all.
///
/// # Example
///
/// ```
/// use rampart_retry::observe::{RetryEvent, RetryObserver};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Clone, Default)]
/// struct CountRetries(Arc<AtomicU32>);
/// impl RetryObserver for CountRetries {
///     fn on_retry(&self, _: &RetryEvent) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
pub trait RetryObserver {
    /// A retry was scheduled after a failed attempt.
    fn on_retry(&self, event: &RetryEvent) {
        let _ = event;
    }
    /// A retry attempt finished.
    fn on_attempt(&self, event: &AttemptEvent) {
        let _ = event;
    }
    /// A call that was retried or that failed has finished.
    fn on_finish(&self, event: &FinishEvent) {
        let _ = event;
    }
}

impl RetryObserver for () {}

impl<T: RetryObserver + ?Sized> RetryObserver for std::sync::Arc<T> {
    fn on_retry(&self, event: &RetryEvent) {
        (**self).on_retry(event);
    }
    fn on_attempt(&self, event: &AttemptEvent) {
        (**self).on_attempt(event);
    }
    fn on_finish(&self, event: &FinishEvent) {
        (**self).on_finish(event);
    }
}
