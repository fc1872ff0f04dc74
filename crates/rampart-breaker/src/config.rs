//! Validated circuit-breaker settings.

use std::time::Duration;

use rampart_core::{ConfigError, Outcome};

/// The reference design's `failure_threshold`.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// The reference design's `recovery_timeout`.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// The reference design's `success_threshold`.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 3;
/// Probes allowed in flight at once while half-open.
pub const DEFAULT_PERMITTED_PROBES: u32 = 3;
/// Failure-rate threshold of the sliding window.
pub const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// Calls a window must hold before its rates are evaluated.
pub const DEFAULT_MINIMUM_CALLS: u32 = 10;

/// The sliding window over which failure and slow-call rates are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `n` calls. Each thread that completes calls keeps its own ring of its last
    /// `n` calls (up to 8 rings, no more than the machine's parallelism), so that threads
    /// never write the same memory; the window is their sum. Driven from one thread (or a
    /// current-thread runtime) this is exactly the last `n` calls; from `k` threads it holds
    /// up to `k · n`.
    Count(u32),
    /// The calls of the last `n` seconds, in one-second buckets.
    Time(u32),
}

/// Which outcomes count as failures against the dependency's health.
///
/// Defaults to transient and permanent failures; throttling (429) and the caller's own
/// mistakes (other 4xx) do not count.
///
/// # Example
///
/// ```
/// use rampart_breaker::FailureKinds;
/// use rampart_core::Outcome;
///
/// let k = FailureKinds::default().throttled(true);
/// assert!(k.counts(Outcome::THROTTLED));
/// assert!(!k.counts(Outcome::Rejected));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct FailureKinds {
    /// One bit per outcome kind, so that copies are a single byte.
    bits: u8,
}

const TRANSIENT: u8 = 1;
const THROTTLED: u8 = 2;
const PERMANENT: u8 = 4;
const REJECTED: u8 = 8;

impl Default for FailureKinds {
    fn default() -> Self {
        FailureKinds {
            bits: TRANSIENT | PERMANENT,
        }
    }
}

impl std::fmt::Debug for FailureKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureKinds")
            .field("transient", &(self.bits & TRANSIENT != 0))
            .field("throttled", &(self.bits & THROTTLED != 0))
            .field("permanent", &(self.bits & PERMANENT != 0))
            .field("rejected", &(self.bits & REJECTED != 0))
            .finish()
    }
}

impl FailureKinds {
    const fn set(mut self, bit: u8, yes: bool) -> Self {
        if yes {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
        self
    }

    /// Whether transient failures count. Defaults to `true`.
    pub const fn transient(self, yes: bool) -> Self {
        self.set(TRANSIENT, yes)
    }
    /// Whether throttling counts. Defaults to `false`.
    pub const fn throttled(self, yes: bool) -> Self {
        self.set(THROTTLED, yes)
    }
    /// Whether permanent failures count. Defaults to `true`.
    pub const fn permanent(self, yes: bool) -> Self {
        self.set(PERMANENT, yes)
    }
    /// Whether rejected calls (the caller's fault) count. Defaults to `false`.
    pub const fn rejected(self, yes: bool) -> Self {
        self.set(REJECTED, yes)
    }

    /// `true` if `outcome` counts as a failure.
    #[inline]
    pub fn counts(&self, outcome: Outcome) -> bool {
        let bit = match outcome {
            Outcome::Success => return false,
            Outcome::Transient { .. } => TRANSIENT,
            Outcome::Throttled { .. } => THROTTLED,
            Outcome::Permanent => PERMANENT,
            Outcome::Rejected => REJECTED,
            // An outcome this version does not know: count it, to fail safe.
            _ => return true,
        };
        self.bits & bit != 0
    }
}

/// Validated settings of a circuit breaker.
///
/// # Example
///
/// ```
/// use rampart_breaker::{CircuitBreakerConfig, Window};
/// use std::time::Duration;
///
/// let cfg = CircuitBreakerConfig::builder()
///     .consecutive_failures(Some(5))
///     .window(Some(Window::Count(100)))
///     .failure_rate(0.5)
///     .minimum_calls(20)
///     .slow_call(Duration::from_secs(2), 0.8)
///     .recovery_timeout(Duration::from_secs(60))
///     .max_recovery_timeout(Duration::from_secs(600))
///     .build()?;
/// assert_eq!(cfg.success_threshold(), 3);
///
/// let err = CircuitBreakerConfig::builder().failure_rate(1.5).build().unwrap_err();
/// assert_eq!(err.field(), "failure_rate");
/// # Ok::<(), rampart_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakerConfig {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) window: Option<Window>,
    pub(crate) failure_rate: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate: f64,
    pub(crate) recovery_timeout: Duration,
    pub(crate) max_recovery_timeout: Duration,
    pub(crate) permitted_probes: u32,
    pub(crate) success_threshold: u32,
    pub(crate) failure_kinds: FailureKinds,
    pub(crate) backpressure: bool,
}

impl Default for CircuitBreakerConfig {
    /// The reference design: open after 5 consecutive failures, stay open 60 s, close after
    /// 3 successful probes (3 in flight at most).
    fn default() -> Self {
        CircuitBreakerConfig {
            consecutive_failures: Some(DEFAULT_CONSECUTIVE_FAILURES),
            window: None,
            failure_rate: DEFAULT_FAILURE_RATE,
            minimum_calls: DEFAULT_MINIMUM_CALLS,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            max_recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            permitted_probes: DEFAULT_PERMITTED_PROBES,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_kinds: FailureKinds::default(),
            backpressure: false,
        }
    }
}

impl CircuitBreakerConfig {
    /// A builder starting from [`CircuitBreakerConfig::default`].
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder {
            inner: CircuitBreakerConfig::default(),
        }
    }

    /// Consecutive failures that open the circuit, if that condition is on.
    pub const fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }
    /// The sliding window, if rate conditions are on.
    pub const fn window(&self) -> Option<Window> {
        self.window
    }
    /// The failure rate (0–1] that opens the circuit.
    pub const fn failure_rate(&self) -> f64 {
        self.failure_rate
    }
    /// Calls the window must hold before rates count.
    pub const fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }
    /// Calls slower than this are slow.
    pub const fn slow_call_duration(&self) -> Option<Duration> {
        self.slow_call_duration
    }
    /// The slow-call rate (0–1] that opens the circuit.
    pub const fn slow_call_rate(&self) -> f64 {
        self.slow_call_rate
    }
    /// How long the circuit stays open after its first trip.
    pub const fn recovery_timeout(&self) -> Duration {
        self.recovery_timeout
    }
    /// The cap on the open duration, which doubles on every consecutive trip.
    pub const fn max_recovery_timeout(&self) -> Duration {
        self.max_recovery_timeout
    }
    /// Probes in flight at once while half-open.
    pub const fn permitted_probes(&self) -> u32 {
        self.permitted_probes
    }
    /// Successful probes that close the circuit.
    pub const fn success_threshold(&self) -> u32 {
        self.success_threshold
    }
    /// Which outcomes count as failures.
    pub const fn failure_kinds(&self) -> FailureKinds {
        self.failure_kinds
    }

    /// How many failed probes of a half-open round reopen the circuit. With a window (rate
    /// conditions) the round is judged by its failure rate like the window is: the circuit
    /// reopens once `ceil(failure_rate · success_threshold)` probes failed and closes once
    /// `success_threshold` succeeded — 3 probes at 50 % reopen on the second failure. Without
    /// a window the first failed probe reopens it (the reference design's rule).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_breaker::{CircuitBreakerConfig, Window};
    /// let reference = CircuitBreakerConfig::default();
    /// assert_eq!(reference.probe_fail_limit(), 1);
    /// let rate = CircuitBreakerConfig::builder().window(Some(Window::Time(10))).build()?;
    /// assert_eq!(rate.probe_fail_limit(), 2);
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    pub fn probe_fail_limit(&self) -> u16 {
        if self.window.is_none() {
            return 1;
        }
        let n = f64::from(self.success_threshold.min(u32::from(u16::MAX)));
        // `failure_rate` is validated to (0, 1], so this is within 1..=n.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let f = (self.failure_rate * n).ceil().max(1.0) as u16;
        f
    }

    /// What an open circuit tells a caller whose probe slots are all taken: come back after
    /// a tenth of the recovery timeout (at least 1 ms), never at once.
    pub fn probes_busy_retry_in(&self) -> Duration {
        (self.recovery_timeout / 10).max(Duration::from_millis(1))
    }

    /// The open duration after the `trip`-th consecutive trip (1-based): the recovery
    /// timeout, doubled per repeated trip, capped at the maximum.
    pub fn open_duration(&self, trip: u32) -> Duration {
        let doublings = trip.saturating_sub(1).min(32);
        self.recovery_timeout
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_recovery_timeout)
            .min(self.max_recovery_timeout)
    }
}

/// Builds a validated [`CircuitBreakerConfig`].
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct CircuitBreakerConfigBuilder {
    inner: CircuitBreakerConfig,
}

impl CircuitBreakerConfigBuilder {
    /// Opens the circuit after this many failures in a row (a success resets the count);
    /// `None` turns the condition off.
    ///
    /// Defaults to `Some(5)`.
    pub fn consecutive_failures(mut self, n: Option<u32>) -> Self {
        self.inner.consecutive_failures = n;
        self
    }

    /// Measures failure and slow-call rates over this window; `None` turns rate conditions
    /// off.
    ///
    /// Defaults to `None`.
    pub fn window(mut self, w: Option<Window>) -> Self {
        self.inner.window = w;
        self
    }

    /// Opens the circuit when the window's failure rate reaches this fraction.
    ///
    /// Defaults to 0.5.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.inner.failure_rate = rate;
        self
    }

    /// Rates are evaluated only once the window holds this many calls.
    ///
    /// Defaults to 10.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.inner.minimum_calls = n;
        self
    }

    /// Calls slower than `duration` are slow; the circuit opens when the window's slow-call
    /// rate reaches `rate`. Needs a window.
    ///
    /// Defaults to off.
    pub fn slow_call(mut self, duration: Duration, rate: f64) -> Self {
        self.inner.slow_call_duration = Some(duration);
        self.inner.slow_call_rate = rate;
        self
    }

    /// How long the circuit stays open before letting probes through.
    ///
    /// Defaults to 60 s.
    pub fn recovery_timeout(mut self, d: Duration) -> Self {
        self.inner.recovery_timeout = d;
        if self.inner.max_recovery_timeout < d {
            self.inner.max_recovery_timeout = d;
        }
        self
    }

    /// Doubles the open duration on every trip that follows a failed probe, up to `max`.
    ///
    /// Defaults to the recovery timeout (no growth).
    pub fn max_recovery_timeout(mut self, max: Duration) -> Self {
        self.inner.max_recovery_timeout = max;
        self
    }

    /// Probes allowed in flight at once while half-open; excess calls are rejected.
    ///
    /// Defaults to 3.
    pub fn permitted_probes(mut self, n: u32) -> Self {
        self.inner.permitted_probes = n;
        self
    }

    /// Successful probes that close the circuit again.
    ///
    /// Defaults to 3.
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.inner.success_threshold = n;
        self
    }

    /// Which outcomes count as failures.
    ///
    /// Defaults to [`FailureKinds::default`]: transient and permanent.
    pub fn failure_kinds(mut self, kinds: FailureKinds) -> Self {
        self.inner.failure_kinds = kinds;
        self
    }

    /// Holds `poll_ready` pending while the circuit is open instead of failing calls fast.
    /// Only for callers that want backpressure: a pending `poll_ready` starves `Buffer`
    /// workers and load balancers, which is why failing fast is the default.
    ///
    /// Defaults to `false`.
    pub fn backpressure(mut self, yes: bool) -> Self {
        self.inner.backpressure = yes;
        self
    }

    /// Validates and returns the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field if a count is zero, a rate is outside (0, 1], a
    /// slow-call rule has no window, no trip condition is on, the recovery timeout is zero or
    /// its maximum is below it, a duration exceeds
    /// [`MAX_DURATION`](rampart_core::MAX_DURATION) (365 days), or more than 65,535 probes or
    /// successes are asked for.
    pub fn build(self) -> Result<CircuitBreakerConfig, ConfigError> {
        let c = self.inner;
        if c.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                0,
                "must be at least 1",
            ));
        }
        match c.window {
            Some(Window::Count(0)) | Some(Window::Time(0)) => {
                return Err(ConfigError::new("window", c.window, "must span at least 1"));
            }
            Some(Window::Count(n)) if n > 1_000_000 => {
                return Err(ConfigError::new(
                    "window",
                    c.window,
                    "must be at most 1000000 calls",
                ));
            }
            Some(Window::Time(n)) if n > 3_600 => {
                return Err(ConfigError::new(
                    "window",
                    c.window,
                    "must be at most 3600 seconds",
                ));
            }
            _ => {}
        }
        if c.consecutive_failures.is_none() && c.window.is_none() {
            return Err(ConfigError::new(
                "consecutive_failures",
                "None",
                "a breaker needs a trip condition: consecutive_failures or a window",
            ));
        }
        for (field, rate) in [
            ("failure_rate", c.failure_rate),
            ("slow_call_rate", c.slow_call_rate),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(ConfigError::new(
                    field,
                    rate,
                    "must be a fraction in (0, 1]",
                ));
            }
        }
        if c.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", 0, "must be at least 1"));
        }
        if c.slow_call_duration.is_some() && c.window.is_none() {
            return Err(ConfigError::new(
                "slow_call_duration",
                c.slow_call_duration,
                "needs a window to measure the slow-call rate over",
            ));
        }
        rampart_core::time::check_duration("recovery_timeout", c.recovery_timeout)?;
        rampart_core::time::check_duration("max_recovery_timeout", c.max_recovery_timeout)?;
        rampart_core::time::check_duration_opt("slow_call_duration", c.slow_call_duration)?;
        if c.recovery_timeout.is_zero() {
            return Err(ConfigError::new(
                "recovery_timeout",
                c.recovery_timeout,
                "must be positive",
            ));
        }
        if c.max_recovery_timeout < c.recovery_timeout {
            return Err(ConfigError::new(
                "max_recovery_timeout",
                c.max_recovery_timeout,
                format!(
                    "must not be less than recovery_timeout ({:?})",
                    c.recovery_timeout
                ),
            ));
        }
        for (field, n) in [
            ("permitted_probes", c.permitted_probes),
            ("success_threshold", c.success_threshold),
        ] {
            if n == 0 || n > u32::from(u16::MAX) {
                return Err(ConfigError::new(field, n, "must be between 1 and 65535"));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_duration_doubles_up_to_the_cap() {
        let c = CircuitBreakerConfig::builder()
            .recovery_timeout(Duration::from_secs(10))
            .max_recovery_timeout(Duration::from_secs(70))
            .build()
            .unwrap();
        let got: Vec<u64> = (1..=6).map(|t| c.open_duration(t).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 70, 70, 70]);
        assert_eq!(c.open_duration(u32::MAX).as_secs(), 70);
    }

    #[test]
    fn every_invalid_field_is_named() {
        let b = CircuitBreakerConfig::builder;
        let cases: Vec<(CircuitBreakerConfigBuilder, &str)> = vec![
            (b().consecutive_failures(Some(0)), "consecutive_failures"),
            (b().consecutive_failures(None), "consecutive_failures"),
            (b().window(Some(Window::Count(0))), "window"),
            (b().window(Some(Window::Time(0))), "window"),
            (b().failure_rate(0.0), "failure_rate"),
            (b().failure_rate(f64::NAN), "failure_rate"),
            (b().minimum_calls(0), "minimum_calls"),
            (
                b().slow_call(Duration::from_secs(1), 0.5),
                "slow_call_duration",
            ),
            (
                b().window(Some(Window::Count(10)))
                    .slow_call(Duration::from_secs(1), 2.0),
                "slow_call_rate",
            ),
            (b().recovery_timeout(Duration::ZERO), "recovery_timeout"),
            (
                b().max_recovery_timeout(Duration::from_secs(1)),
                "max_recovery_timeout",
            ),
            (b().permitted_probes(0), "permitted_probes"),
            (b().success_threshold(70_000), "success_threshold"),
        ];
        for (builder, field) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e.field(), field, "{e}");
        }
    }

    #[test]
    fn absurd_durations_are_refused_at_build() {
        // Issue 11: a recovery timeout of 1e19 s built, and a retry layer above the open
        // breaker overflowed `Instant` adding the breaker's `retry_in`.
        let huge = Duration::from_secs(10_000_000_000_000_000_000);
        let b = CircuitBreakerConfig::builder;
        let cases: Vec<(CircuitBreakerConfigBuilder, &str)> = vec![
            (b().recovery_timeout(huge), "recovery_timeout"),
            (b().max_recovery_timeout(huge), "max_recovery_timeout"),
            (
                b().window(Some(Window::Count(10))).slow_call(huge, 0.5),
                "slow_call_duration",
            ),
        ];
        for (builder, field) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(e.reason().contains("365 days"), "{e}");
        }
        let max = rampart_core::MAX_DURATION;
        assert!(b().recovery_timeout(max).build().is_ok());
    }
}
