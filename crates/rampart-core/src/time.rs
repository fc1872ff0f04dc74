//! Bounds on configured durations, and instant arithmetic that cannot overflow.
//!
//! Every duration a layer, policy or config file accepts is checked against
//! [`MAX_DURATION`] when it is built ([`check_duration`]), so that an absurd value
//! (`deadline = 1e19`, `"500000000000 years"`) is refused with an error naming the field
//! instead of panicking on the first call. Timers are still computed with
//! [`instant_after`], which never panics, so that a value that reaches a timer by another
//! road (a server's `Retry-After` hint, a setter without validation) cannot crash a call.
//!
//! # Example
//!
//! ```
//! use rampart_core::time::{check_duration, duration_from_secs_f64, instant_after, MAX_DURATION};
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! assert!(check_duration("deadline", Duration::from_secs(30)).is_ok());
//! let err = check_duration("deadline", Duration::from_secs(u64::MAX)).unwrap_err();
//! assert_eq!(err.field(), "deadline");
//! assert!(err.to_string().contains("at most 365 days"), "{err}");
//!
//! assert_eq!(duration_from_secs_f64("base_delay", 1.5)?, Duration::from_millis(1500));
//! assert!(duration_from_secs_f64("base_delay", f64::NAN).is_err());
//! assert!(duration_from_secs_f64("base_delay", 1e19).is_err());
//!
//! let now = Instant::now();
//! assert!(instant_after(now, Duration::MAX) > now); // far in the future, no panic
//! assert_eq!(instant_after(now, MAX_DURATION), now + MAX_DURATION);
//! # Ok::<(), rampart_core::ConfigError>(())
//! ```

use std::time::Duration;

use tokio::time::Instant;

use crate::ConfigError;

/// The longest duration any rampart setting accepts: 365 days.
///
/// Longer deadlines, timeouts, delays, recovery timeouts, retention periods and intervals
/// are refused at build time; no resilience setting needs more than a year, and a year
/// added to any clock reading stays far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest [`instant_after`] adds: about 30 years (what tokio uses for a sleep that never
/// fires). Longer durations — even ones an `Instant` could hold — are cut to it, because a
/// tokio timer that far out makes the timer wheel turn once per ~2.2 years to reach it
/// (a 10¹⁸-second timeout spun a paused-clock runtime for good).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Checks that `value`, the setting `field`, is at most [`MAX_DURATION`].
///
/// # Errors
///
/// A [`ConfigError`] naming `field`, the value and the bound if `value > MAX_DURATION`.
///
/// # Example
///
/// ```
/// use rampart_core::time::check_duration;
/// use std::time::Duration;
///
/// let err = check_duration("attempt_timeout", Duration::from_secs(10_000_000_000)).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "invalid attempt_timeout = 10000000000s: must be at most 365 days (31536000s)"
/// );
/// ```
pub fn check_duration(
    field: impl Into<std::borrow::Cow<'static, str>>,
    value: Duration,
) -> Result<Duration, ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::new(field, value, too_long()));
    }
    Ok(value)
}

/// [`check_duration`] for an optional setting: `None` passes.
///
/// # Errors
///
/// As [`check_duration`].
pub fn check_duration_opt(
    field: impl Into<std::borrow::Cow<'static, str>>,
    value: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(d) => check_duration(field, d).map(Some),
        None => Ok(None),
    }
}

fn too_long() -> String {
    format!("must be at most 365 days ({}s)", MAX_DURATION.as_secs())
}

/// Converts a number of seconds read from input (a config value, an environment variable,
/// a header) into a duration, refusing what is not one.
///
/// # Errors
///
/// A [`ConfigError`] naming `field` and the value if `secs` is negative, NaN, infinite or
/// more than [`MAX_DURATION`].
pub fn duration_from_secs_f64(
    field: impl Into<std::borrow::Cow<'static, str>>,
    secs: f64,
) -> Result<Duration, ConfigError> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(ConfigError::new(field, secs, too_long())),
        Err(_) => Err(ConfigError::new(
            field,
            secs,
            "must be a finite, non-negative number of seconds",
        )),
    }
}

/// `now + d`, with `d` cut to about 30 years: a timer set there never fires in practice,
/// which is what an unbounded duration means, and the sum always fits in an [`Instant`] and
/// in tokio's timer wheel. Never panics.
///
/// Use it for every deadline and timer computed from a duration: `Instant + Duration`
/// panics on overflow.
///
/// # Example
///
/// ```
/// use rampart_core::time::instant_after;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// assert_eq!(instant_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
/// assert!(instant_after(now, Duration::from_secs(u64::MAX)) > now + Duration::from_secs(86_400));
/// ```
pub fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR_FUTURE))
        // Unreachable on every supported platform (an `Instant` holds far more than 30
        // years); staying at `now` is the only value left that needs no arithmetic.
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bound_is_inclusive() {
        assert_eq!(check_duration("x", MAX_DURATION), Ok(MAX_DURATION));
        let over = MAX_DURATION + Duration::from_nanos(1);
        let err = check_duration("x", over).unwrap_err();
        assert_eq!(err.field(), "x");
        assert!(err.reason().contains("365 days"));
        assert_eq!(check_duration_opt("x", None), Ok(None));
    }

    #[test]
    fn instant_after_saturates() {
        let now = Instant::now();
        assert_eq!(instant_after(now, Duration::MAX), now + FAR_FUTURE);
        // Representable, but a timer there would spin tokio's wheel for good.
        let huge = Duration::from_secs(7_215_731_246_554_196_323);
        assert_eq!(instant_after(now, huge), now + FAR_FUTURE);
        assert_eq!(instant_after(now, Duration::ZERO), now);
    }

    proptest! {
        #[test]
        fn instant_after_never_panics_and_is_monotonic(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let now = Instant::now();
            let d = Duration::new(secs, nanos);
            let at = instant_after(now, d);
            prop_assert!(at >= now);
            if d <= MAX_DURATION {
                prop_assert_eq!(at, now + d);
            }
        }

        #[test]
        fn secs_f64_is_a_duration_or_an_error(secs in any::<f64>()) {
            match duration_from_secs_f64("f", secs) {
                Ok(d) => {
                    prop_assert!(secs >= 0.0);
                    prop_assert!(d <= MAX_DURATION);
                }
                Err(e) => {
                    prop_assert_eq!(e.field(), "f");
                    prop_assert!(!(0.0..=MAX_DURATION.as_secs_f64()).contains(&secs) || secs.is_nan());
                }
            }
        }
    }
}
