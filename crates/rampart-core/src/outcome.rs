//! What happened to one attempt: the answer every rampart layer asks for.

use std::time::Duration;

/// The classification of one finished call (one attempt).
///
/// Every rampart layer asks the same question of a finished call through
/// [`Classify`](crate::Classify), so one classifier serves retry, circuit breaker and
/// dead-lettering alike. The four failure behaviours are:
///
/// | outcome | retried | counts against health | dead-lettered |
/// |---|---|---|---|
/// | [`Transient`](Outcome::Transient) | yes | yes | when retries run out |
/// | [`Throttled`](Outcome::Throttled) | yes (later) | no | when retries run out |
/// | [`Permanent`](Outcome::Permanent) | never | yes | yes |
/// | [`Rejected`](Outcome::Rejected) | never | no | not by default |
///
/// # Example
///
/// ```
/// use rampart_core::Outcome;
/// use std::time::Duration;
///
/// let o = Outcome::Throttled { retry_after: Some(Duration::from_secs(2)) };
/// assert!(o.is_retryable());
/// assert!(!o.is_health_failure());
/// assert_eq!(o.retry_after(), Some(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The call did what was asked.
    Success,
    /// A failure that may go away on its own (connection reset, 503, timeout): retry it,
    /// and count it against the dependency's health.
    Transient {
        /// The server's hint of when to try again (`Retry-After`, `retryDelay`), if any.
        retry_after: Option<Duration>,
    },
    /// The dependency asked us to slow down (429, `RESOURCE_EXHAUSTED`): retry later, but do
    /// not count it against the dependency's health.
    Throttled {
        /// The server's hint of when to try again, if any.
        retry_after: Option<Duration>,
    },
    /// A failure that will happen again however often the call is repeated (bad credentials
    /// on the server side, a missing model, a broken invariant): never retry.
    Permanent,
    /// The caller's fault (a 4xx other than 408/429): never retry, not the dependency's
    /// fault, not dead-lettered by default.
    Rejected,
}

impl Outcome {
    /// A [`Transient`](Outcome::Transient) outcome without a hint.
    pub const TRANSIENT: Outcome = Outcome::Transient { retry_after: None };
    /// A [`Throttled`](Outcome::Throttled) outcome without a hint.
    pub const THROTTLED: Outcome = Outcome::Throttled { retry_after: None };

    /// `true` for [`Success`](Outcome::Success).
    #[inline]
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// `true` for the outcomes a retry layer may retry: transient and throttled.
    #[inline]
    pub const fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Transient { .. } | Outcome::Throttled { .. })
    }

    /// `true` for the outcomes that, by default, count against a dependency's health:
    /// transient and permanent failures (not throttling, not the caller's own mistakes).
    #[inline]
    pub const fn is_health_failure(&self) -> bool {
        matches!(self, Outcome::Transient { .. } | Outcome::Permanent)
    }

    /// The server's retry hint, if the outcome carries one.
    #[inline]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Transient { retry_after } | Outcome::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable, lowercase name: `success`, `transient`, `throttled`, `permanent`,
    /// `rejected`. Suitable as a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Transient { .. } => "transient",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Permanent => "permanent",
            Outcome::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
