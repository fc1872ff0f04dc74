//! Exponential backoff with jitter.
//!
//! The nominal (un-jittered) delay before retry `n` (0-based) is
//! `min(base · factor^n, max)`, the reference design's formula. [`Jitter`] then spreads it
//! so that many clients failing together do not retry together. Every jittered delay stays
//! within the bounds documented on its [`Jitter`] variant and never exceeds `max`.

use std::time::Duration;

use crate::ConfigError;

/// How a nominal delay `d` is spread. Every variant's result is capped at `max_delay`.
///
/// # Example
///
/// ```
/// use rampart_core::{Backoff, Jitter};
/// use std::time::Duration;
///
/// let b = Backoff::builder().jitter(Jitter::Full).seed(7).build()?;
/// let mut s = b.schedule(0);
/// let first = s.next().expect("three retries by default");
/// assert!(first <= Duration::from_secs(1));
/// # Ok::<(), rampart_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[d·(1−p), d·(1+p)]`: the reference design's ±10 % is `Proportional(0.1)`.
    /// `p` must lie in `[0, 1]`.
    Proportional(f64),
    /// Uniform in `[0, d]` ("full jitter").
    Full,
    /// Uniform in `[d/2, d]` ("equal jitter").
    Equal,
    /// AWS's "decorrelated jitter": uniform in `[base, 3·previous]`, starting from
    /// `previous = base`; it ignores `factor` and stays within `[base, max]`.
    Decorrelated,
}

impl Default for Jitter {
    /// `Proportional(0.1)`, the reference design's ±10 %.
    fn default() -> Self {
        Jitter::Proportional(DEFAULT_JITTER)
    }
}

/// The reference design's jitter fraction, ±10 %.
pub const DEFAULT_JITTER: f64 = 0.10;
/// The reference design's `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// The reference design's `base_delay`.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(1);
/// The reference design's `max_delay`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);
/// The reference design's `backoff_factor`.
pub const DEFAULT_FACTOR: f64 = 2.0;
/// The most retries a backoff accepts: more is a retry loop that never ends in practice
/// (and `u32::MAX` retries would overflow the attempt count).
pub const RETRIES_LIMIT: u32 = 1_000;

/// A validated backoff policy: how many retries, and how long to wait before each.
///
/// Build one with [`Backoff::builder`]; [`Backoff::default`] gives the reference design's
/// numbers (3 retries, 1 s base, 60 s cap, factor 2, ±10 % jitter).
///
/// # Example
///
/// ```
/// use rampart_core::{Backoff, Jitter};
/// use std::time::Duration;
///
/// let b = Backoff::builder()
///     .max_retries(5)
///     .base_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(10))
///     .jitter(Jitter::None)
///     .build()?;
/// let delays: Vec<_> = b.schedule(0).collect();
/// assert_eq!(delays, [500, 1000, 2000, 4000, 8000].map(Duration::from_millis));
///
/// let bad = Backoff::builder().factor(0.5).build().unwrap_err();
/// assert_eq!(bad.to_string(), "invalid backoff_factor = 0.5: must be a finite number >= 1");
/// # Ok::<(), rampart_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    max_retries: u32,
    base: Duration,
    max: Duration,
    factor: f64,
    jitter: Jitter,
    seed: Option<u64>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            max_retries: DEFAULT_MAX_RETRIES,
            base: DEFAULT_BASE_DELAY,
            max: DEFAULT_MAX_DELAY,
            factor: DEFAULT_FACTOR,
            jitter: Jitter::default(),
            seed: None,
        }
    }
}

impl Backoff {
    /// A builder starting from the reference design's defaults.
    pub fn builder() -> BackoffBuilder {
        BackoffBuilder {
            inner: Backoff::default(),
        }
    }

    /// No retries at all.
    pub const fn none() -> Self {
        Backoff {
            max_retries: 0,
            base: Duration::ZERO,
            max: Duration::ZERO,
            factor: 1.0,
            jitter: Jitter::None,
            seed: None,
        }
    }

    /// The number of retries after the first attempt.
    pub const fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The nominal delay before the first retry.
    pub const fn base_delay(&self) -> Duration {
        self.base
    }

    /// The cap on every delay.
    pub const fn max_delay(&self) -> Duration {
        self.max
    }

    /// The growth factor.
    pub const fn factor(&self) -> f64 {
        self.factor
    }

    /// The jitter.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The RNG seed, if the schedule is deterministic.
    pub const fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The nominal, un-jittered delay before retry `n` (0-based): `min(base · factor^n, max)`.
    /// Non-decreasing in `n`.
    pub fn nominal_delay(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if d <= self.max => d,
            _ => self.max,
        }
    }

    /// The jittered delays of one logical call, one per retry.
    ///
    /// With a [`seed`](BackoffBuilder::seed), the schedule depends only on the seed and
    /// `stream` (use a different `stream` per call so that calls do not move in lock step);
    /// without one, it is drawn from `fastrand`'s thread-local generator (wyrand, seeded once
    /// per thread from the clock and the thread's id: jitter needs spread, not secrecy; no
    /// system call per schedule).
    pub fn schedule(&self, stream: u64) -> Schedule {
        let rng = match self.seed {
            Some(seed) => {
                fastrand::Rng::with_seed(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }
            None => fastrand::Rng::new(),
        };
        Schedule {
            backoff: *self,
            next: 0,
            prev: self.base,
            rng,
        }
    }

    /// Applies the jitter to the nominal delay of retry `n`, given the previous delay (used by
    /// [`Jitter::Decorrelated`]).
    fn jittered(&self, n: u32, prev: Duration, rng: &mut fastrand::Rng) -> Duration {
        let d = self.nominal_delay(n).as_secs_f64();
        let (lo, hi) = match self.jitter {
            Jitter::None => (d, d),
            Jitter::Proportional(p) => (d * (1.0 - p), d * (1.0 + p)),
            Jitter::Full => (0.0, d),
            Jitter::Equal => (d / 2.0, d),
            Jitter::Decorrelated => {
                let base = self.base.as_secs_f64();
                (base, (prev.as_secs_f64() * 3.0).max(base))
            }
        };
        let secs = if hi > lo {
            lo + (hi - lo) * rng.f64()
        } else {
            lo
        };
        match Duration::try_from_secs_f64(secs) {
            Ok(v) => v.min(self.max),
            Err(_) => self.max,
        }
    }
}

/// Builds a validated [`Backoff`].
///
/// # Example
///
/// ```
/// use rampart_core::Backoff;
/// use std::time::Duration;
///
/// let err = Backoff::builder()
///     .base_delay(Duration::from_secs(10))
///     .max_delay(Duration::from_secs(1))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "max_delay");
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct BackoffBuilder {
    inner: Backoff,
}

impl BackoffBuilder {
    /// Retries after the first attempt.
    ///
    /// Defaults to 3.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.inner.max_retries = n;
        self
    }

    /// Nominal delay before the first retry.
    ///
    /// Defaults to 1 s.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.inner.base = d;
        self
    }

    /// Cap on every delay, jittered or not.
    ///
    /// Defaults to 60 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.inner.max = d;
        self
    }

    /// Growth factor between consecutive nominal delays; at least 1.
    ///
    /// Defaults to 2.
    pub fn factor(mut self, f: f64) -> Self {
        self.inner.factor = f;
        self
    }

    /// How delays are spread.
    ///
    /// Defaults to [`Jitter::Proportional(0.1)`](Jitter::Proportional).
    pub fn jitter(mut self, j: Jitter) -> Self {
        self.inner.jitter = j;
        self
    }

    /// Seeds the jitter RNG so that schedules are reproducible.
    ///
    /// Defaults to none: each schedule is seeded from a thread-local generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.inner.seed = Some(seed);
        self
    }

    /// Validates and returns the backoff.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field if `max_retries` exceeds [`RETRIES_LIMIT`] (1000),
    /// `factor` is NaN, infinite or below 1,
    /// `base_delay` or `max_delay` exceeds [`MAX_DURATION`](crate::MAX_DURATION) (365 days),
    /// `max_delay < base_delay`, or a `Proportional` jitter fraction is outside `[0, 1]`.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let b = self.inner;
        if !b.factor.is_finite() || b.factor < 1.0 {
            return Err(ConfigError::new(
                "backoff_factor",
                b.factor,
                "must be a finite number >= 1",
            ));
        }
        if b.max_retries > RETRIES_LIMIT {
            return Err(ConfigError::new(
                "max_retries",
                b.max_retries,
                format!("must be at most {RETRIES_LIMIT}"),
            ));
        }
        crate::time::check_duration("base_delay", b.base)?;
        crate::time::check_duration("max_delay", b.max)?;
        if b.max < b.base {
            return Err(ConfigError::new(
                "max_delay",
                b.max,
                format!("must not be less than base_delay ({:?})", b.base),
            ));
        }
        if let Jitter::Proportional(p) = b.jitter {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::new(
                    "jitter",
                    p,
                    "must be a fraction in [0, 1]",
                ));
            }
        }
        Ok(b)
    }
}

/// The jittered delays of one logical call; an iterator that yields one delay per retry and
/// ends after `max_retries`.
#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: Backoff,
    next: u32,
    prev: Duration,
    /// wyrand, 8 bytes (was `rand`'s `SmallRng`, 32 bytes).
    rng: fastrand::Rng,
}

impl Schedule {
    /// How many delays have been handed out so far (the number of retries scheduled).
    pub const fn retries(&self) -> u32 {
        self.next
    }

    /// The backoff this schedule follows.
    pub const fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Records that a retry happened after an externally chosen delay (a server's
    /// `Retry-After` hint), so that the retry counts and decorrelated jitter continues
    /// from there.
    pub fn skip_with(&mut self, delay: Duration) {
        self.next = self.next.saturating_add(1);
        self.prev = delay.max(self.backoff.base);
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next >= self.backoff.max_retries {
            return None;
        }
        let d = self.backoff.jittered(self.next, self.prev, &mut self.rng);
        self.next += 1;
        self.prev = d;
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jitter_strategy() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            (0.0f64..=1.0).prop_map(Jitter::Proportional),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    fn backoff_strategy() -> impl Strategy<Value = Backoff> {
        (
            0u32..40,
            0u64..5_000,
            0u64..120_000,
            1.0f64..10.0,
            jitter_strategy(),
            any::<u64>(),
        )
            .prop_map(|(retries, base_ms, extra_ms, factor, jitter, seed)| {
                Backoff::builder()
                    .max_retries(retries)
                    .base_delay(Duration::from_millis(base_ms))
                    .max_delay(Duration::from_millis(base_ms + extra_ms))
                    .factor(factor)
                    .jitter(jitter)
                    .seed(seed)
                    .build()
                    .unwrap_or_else(|e| panic!("strategy built an invalid backoff: {e}"))
            })
    }

    proptest! {
        #[test]
        fn every_jitter_stays_within_its_documented_bounds(b in backoff_strategy(), stream in any::<u64>()) {
            let mut prev = b.base_delay();
            let delays: Vec<Duration> = b.schedule(stream).collect();
            prop_assert_eq!(delays.len() as u32, b.max_retries());
            for (n, d) in delays.iter().copied().enumerate() {
                let nominal = b.nominal_delay(n as u32).as_secs_f64();
                let secs = d.as_secs_f64();
                let eps = 1e-9;
                prop_assert!(d <= b.max_delay(), "delay {:?} exceeds max {:?}", d, b.max_delay());
                match b.jitter() {
                    Jitter::None => prop_assert!((secs - nominal).abs() < eps),
                    Jitter::Proportional(p) => {
                        prop_assert!(secs >= nominal * (1.0 - p) - eps);
                        prop_assert!(secs <= nominal * (1.0 + p) + eps);
                    }
                    Jitter::Full => prop_assert!(secs <= nominal + eps),
                    Jitter::Equal => {
                        prop_assert!(secs >= nominal / 2.0 - eps);
                        prop_assert!(secs <= nominal + eps);
                    }
                    Jitter::Decorrelated => {
                        prop_assert!(d >= b.base_delay().min(b.max_delay()));
                        prop_assert!(secs <= (prev.as_secs_f64() * 3.0).max(b.base_delay().as_secs_f64()) + eps);
                    }
                }
                prev = d;
            }
        }

        #[test]
        fn same_seed_same_delays(b in backoff_strategy(), stream in any::<u64>()) {
            let a: Vec<_> = b.schedule(stream).collect();
            let c: Vec<_> = b.schedule(stream).collect();
            prop_assert_eq!(a, c);
        }

        #[test]
        fn nominal_schedule_is_non_decreasing_and_capped(b in backoff_strategy()) {
            let mut last = Duration::ZERO;
            for n in 0..b.max_retries() + 70 {
                let d = b.nominal_delay(n);
                prop_assert!(d >= last, "nominal delay decreased at {}: {:?} < {:?}", n, d, last);
                prop_assert!(d <= b.max_delay());
                last = d;
            }
        }

        #[test]
        fn invalid_factor_is_rejected(f in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -10.0f64..0.999]) {
            let e = Backoff::builder().factor(f).build().unwrap_err();
            prop_assert_eq!(e.field(), "backoff_factor");
        }

        #[test]
        fn arbitrary_delays_build_within_bounds_or_name_the_field(
            base in (any::<u64>(), 0u32..1_000_000_000),
            max in (any::<u64>(), 0u32..1_000_000_000),
            n in any::<u32>(),
        ) {
            let (base, max) = (Duration::new(base.0, base.1), Duration::new(max.0, max.1));
            match Backoff::builder().base_delay(base).max_delay(max).build() {
                Ok(b) => {
                    prop_assert!(b.max_delay() <= crate::MAX_DURATION);
                    prop_assert!(b.nominal_delay(n) <= b.max_delay());
                    for d in b.schedule(0) {
                        prop_assert!(d <= crate::MAX_DURATION);
                    }
                }
                Err(e) => prop_assert!(
                    e.field() == "base_delay" || e.field() == "max_delay",
                    "unexpected field {}", e.field()
                ),
            }
        }

        #[test]
        fn invalid_proportion_is_rejected(p in prop_oneof![Just(f64::NAN), -5.0f64..-0.001, 1.001f64..5.0]) {
            let e = Backoff::builder().jitter(Jitter::Proportional(p)).build().unwrap_err();
            prop_assert_eq!(e.field(), "jitter");
        }
    }

    #[test]
    fn reference_defaults() {
        let b = Backoff::default();
        assert_eq!(b.max_retries(), 3);
        assert_eq!(b.base_delay(), Duration::from_secs(1));
        assert_eq!(b.max_delay(), Duration::from_secs(60));
        assert_eq!(b.factor(), 2.0);
        assert_eq!(b.jitter(), Jitter::Proportional(0.1));
        assert_eq!(
            (0..8)
                .map(|n| b.nominal_delay(n).as_secs())
                .collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60, 60]
        );
    }

    #[test]
    fn different_streams_differ() {
        let b = Backoff::builder()
            .jitter(Jitter::Full)
            .seed(1)
            .build()
            .unwrap_or_default();
        let a: Vec<_> = b.schedule(1).collect();
        let c: Vec<_> = b.schedule(2).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn huge_exponents_saturate_at_max() {
        let b = Backoff::builder()
            .factor(10.0)
            .max_retries(RETRIES_LIMIT)
            .build()
            .unwrap();
        assert_eq!(b.nominal_delay(u32::MAX), b.max_delay());
        assert_eq!(b.nominal_delay(400), b.max_delay());
    }

    #[test]
    fn endless_retries_are_refused_at_build() {
        // `max_retries = 4294967295` built, and a call against a dead service never ended
        // (and the attempt count overflowed after u32::MAX attempts).
        let e = Backoff::builder()
            .max_retries(u32::MAX)
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid max_retries = 4294967295: must be at most 1000"
        );
        assert!(Backoff::builder()
            .max_retries(RETRIES_LIMIT)
            .build()
            .is_ok());
    }

    #[test]
    fn absurd_delays_are_refused_at_build() {
        // Issue 11: `base_delay = max_delay = 1e19 s` built fine and the first retry
        // panicked with "overflow when adding duration to instant".
        let huge = Duration::from_secs(10_000_000_000_000_000_000);
        let e = Backoff::builder()
            .base_delay(huge)
            .max_delay(huge)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "base_delay");
        assert_eq!(
            e.to_string(),
            "invalid base_delay = 10000000000000000000s: must be at most 365 days (31536000s)"
        );
        let e = Backoff::builder().max_delay(huge).build().unwrap_err();
        assert_eq!(e.field(), "max_delay");
        assert!(Backoff::builder()
            .base_delay(crate::MAX_DURATION)
            .max_delay(crate::MAX_DURATION)
            .build()
            .is_ok());
    }

    #[test]
    fn error_messages_name_field_and_value() {
        let e = Backoff::builder()
            .jitter(Jitter::Proportional(1.5))
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid jitter = 1.5: must be a fraction in [0, 1]"
        );
        let e = Backoff::builder()
            .base_delay(Duration::from_secs(2))
            .max_delay(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid max_delay = 1s: must not be less than base_delay (2s)"
        );
    }
}
