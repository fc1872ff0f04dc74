//! A retry budget shared by every clone of a [`RetryLayer`](crate::RetryLayer).
//!
//! In the spirit of Finagle's and linkerd's retry budgets and gRPC's retry throttling:
//! every request deposits a fraction (`ratio`) of a token, every retry withdraws one whole
//! token, and a small floor (`min_per_sec` tokens per second) lets a quiet service still
//! retry. When a dependency is down and every call fails, retries therefore add at most
//! `ratio` to the traffic instead of multiplying it by `max_retries + 1`.
//!
//! # The bound
//!
//! Over any interval of `T` seconds from the budget's creation in which `N` requests were
//! made, the number of retries the budget allows is at most
//!
//! ```text
//! min(min_per_sec, max_tokens) + ratio · N + min_per_sec · T
//! ```
//!
//! (the first term is the budget's initial balance: one second of the floor). The cap
//! (`max_tokens`) only ever lowers this.
//!
//! # Hot path
//!
//! A request's deposit is dropped when the budget is already full, so a healthy service's
//! success path only *reads* the budget's balance: no cache line is written on every success,
//! and clones on different threads do not contend. Only while the budget is below its cap
//! (retries are eating into it) does each request add its fraction with one atomic add.
//!
//! # Ownership
//!
//! The budget is one `Arc`, shared by its clones: the layer, every service the layer makes
//! and every call in flight (through its service instance's shared settings) hold it, so a
//! call's retries are budgeted even when every other handle is gone (as with `oneshot`), and
//! the budget is freed with the last of them. Nothing is registered anywhere else.

use rampart_core::ConfigError;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Milli-tokens per token: balances are kept in integers.
const MILLI: i64 = 1_000;

/// Default share of requests that may be retries: 10 %.
pub const DEFAULT_RATIO: f64 = 0.1;
/// Default floor: 10 retries per second are always allowed.
pub const DEFAULT_MIN_PER_SEC: u32 = 10;
/// Default cap on saved-up tokens.
pub const DEFAULT_MAX_TOKENS: u32 = 100;

/// A token-bucket retry budget. Cloning it shares it.
///
/// # Example
///
/// ```
/// use rampart_retry::RetryBudget;
///
/// let budget = RetryBudget::builder()
///     .ratio(0.2)          // retries may add 20 % to traffic
///     .min_per_sec(5)      // plus 5 retries per second
///     .max_tokens(50)      // saved up to 50 retries at most
///     .build()?;
/// assert_eq!(budget.balance(), 5.0); // starts with one second of the floor
/// assert!(budget.try_withdraw());
/// assert_eq!(budget.balance(), 4.0);
///
/// let err = RetryBudget::builder().ratio(-1.0).build().unwrap_err();
/// assert_eq!(err.field(), "retry_budget.ratio");
/// # Ok::<(), rampart_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    deposit_milli: i64,
    cap_milli: i64,
    min_per_sec: u32,
    epoch: Instant,
    last_refill_nanos: AtomicU64,
    balance: AtomicI64,
    ratio: f64,
}

impl Default for RetryBudget {
    /// `ratio` 0.1, `min_per_sec` 10, `max_tokens` 100.
    fn default() -> Self {
        RetryBudget::from_parts(DEFAULT_RATIO, DEFAULT_MIN_PER_SEC, DEFAULT_MAX_TOKENS)
    }
}

impl RetryBudget {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: DEFAULT_RATIO,
            min_per_sec: DEFAULT_MIN_PER_SEC,
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    fn from_parts(ratio: f64, min_per_sec: u32, max_tokens: u32) -> Self {
        let cap_milli = i64::from(max_tokens) * MILLI;
        // `ratio` is validated to [0, 1000], so this fits comfortably.
        #[allow(clippy::cast_possible_truncation)]
        let deposit_milli = (ratio * MILLI as f64).round() as i64;
        let inner = Arc::new(BudgetInner {
            deposit_milli,
            cap_milli,
            min_per_sec,
            epoch: Instant::now(),
            last_refill_nanos: AtomicU64::new(0),
            balance: AtomicI64::new((i64::from(min_per_sec) * MILLI).min(cap_milli)),
            ratio,
        });
        RetryBudget { inner }
    }

    /// The share of requests that may be retries.
    pub fn ratio(&self) -> f64 {
        self.inner.ratio
    }

    /// Retries per second that are always allowed.
    pub fn min_per_sec(&self) -> u32 {
        self.inner.min_per_sec
    }

    /// Tokens currently available (one token is one retry).
    pub fn balance(&self) -> f64 {
        self.inner.balance.load(Ordering::Acquire) as f64 / MILLI as f64
    }

    /// Records one request: adds `ratio` tokens unless the budget is full. A full budget is
    /// only read.
    #[inline]
    pub fn deposit_one(&self) {
        if self.inner.balance.load(Ordering::Relaxed) < self.inner.cap_milli {
            self.add(self.inner.deposit_milli);
        }
    }

    /// Records `requests` requests.
    pub fn deposit(&self, requests: u32) {
        if requests == 0 || self.inner.deposit_milli == 0 {
            return;
        }
        self.add(i64::from(requests).saturating_mul(self.inner.deposit_milli));
    }

    /// Takes one token for a retry; `false` if the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.refill();
        self.inner
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }

    /// Adds `milli` milli-tokens, up to the cap. A full budget is only read, never written,
    /// so that a healthy service's clones do not contend for its cache line.
    fn add(&self, milli: i64) {
        let cap = self.inner.cap_milli;
        let balance = &self.inner.balance;
        if balance.load(Ordering::Relaxed) >= cap {
            return;
        }
        let before = balance.fetch_add(milli, Ordering::AcqRel);
        if before.saturating_add(milli) > cap {
            // Concurrent deposits may overshoot for an instant; clamp back to the cap.
            balance.fetch_min(cap, Ordering::AcqRel);
        }
    }

    /// Adds the floor's tokens for the time since the last refill.
    fn refill(&self) {
        let per_sec = u128::from(self.inner.min_per_sec);
        if per_sec == 0 {
            return;
        }
        let now = u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.inner.last_refill_nanos.load(Ordering::Acquire);
        if now <= last {
            return;
        }
        let milli = u128::from(now - last) * per_sec * (MILLI as u128) / 1_000_000_000;
        if milli == 0 {
            return;
        }
        // Advance the clock by exactly the time those milli-tokens are worth, so that
        // fractions are carried over rather than lost.
        let worth = milli * 1_000_000_000 / (per_sec * MILLI as u128);
        let next = last.saturating_add(u64::try_from(worth).unwrap_or(u64::MAX));
        if self
            .inner
            .last_refill_nanos
            .compare_exchange(last, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.add(i64::try_from(milli).unwrap_or(i64::MAX));
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.inner.ratio)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("max_tokens", &(self.inner.cap_milli / MILLI))
            .field("balance", &self.balance())
            .finish()
    }
}

/// Builds a validated [`RetryBudget`].
///
/// # Example
///
/// ```
/// use rampart_retry::RetryBudget;
///
/// let err = RetryBudget::builder().max_tokens(0).build().unwrap_err();
/// assert_eq!(err.to_string(), "invalid retry_budget.max_tokens = 0: must be at least 1");
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct RetryBudgetBuilder {
    ratio: f64,
    min_per_sec: u32,
    max_tokens: u32,
}

impl RetryBudgetBuilder {
    /// The share of requests that may be retries (0.1 means retries may add 10 % to the
    /// traffic). At most 1000.
    ///
    /// Defaults to 0.1.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries per second that are always allowed, however little traffic there is.
    ///
    /// Defaults to 10.
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// The most tokens the budget saves up: the largest burst of retries it allows after a
    /// quiet, healthy period.
    ///
    /// Defaults to 100.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Validates and returns the budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if `ratio` is NaN, negative or above 1000, or `max_tokens` is 0.
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "retry_budget.ratio",
                self.ratio,
                "must be a number in [0, 1000]",
            ));
        }
        if self.max_tokens == 0 {
            return Err(ConfigError::new(
                "retry_budget.max_tokens",
                self.max_tokens,
                "must be at least 1",
            ));
        }
        Ok(RetryBudget::from_parts(
            self.ratio,
            self.min_per_sec,
            self.max_tokens,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn deposits_withdrawals_and_cap() {
        let b = RetryBudget::builder()
            .ratio(0.5)
            .min_per_sec(0)
            .max_tokens(3)
            .build()
            .unwrap_or_default();
        assert_eq!(b.balance(), 0.0);
        assert!(!b.try_withdraw());
        b.deposit(2);
        assert_eq!(b.balance(), 1.0);
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        b.deposit(100);
        assert_eq!(b.balance(), 3.0, "capped at max_tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn floor_refills_with_time_without_losing_fractions() {
        let b = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(4)
            .max_tokens(100)
            .build()
            .unwrap_or_default();
        for _ in 0..4 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        // 0.1 s is worth 0.4 tokens: three such steps make 1.2.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(100)).await;
            b.refill();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..40 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
    }

    #[test]
    fn clones_share_one_budget_freed_with_the_last() {
        let b = RetryBudget::builder()
            .ratio(0.0)
            .min_per_sec(0)
            .max_tokens(5)
            .build()
            .unwrap_or_default();
        let weak = Arc::downgrade(&b.inner);
        let c = b.clone();
        c.deposit(1);
        b.deposit(0);
        assert_eq!(b.balance(), c.balance());
        drop((b, c));
        assert!(
            weak.upgrade().is_none(),
            "nothing keeps a dropped budget alive"
        );
    }

    #[test]
    fn invalid_ratio_is_rejected() {
        for r in [f64::NAN, -0.1, 1000.5, f64::INFINITY] {
            let e = RetryBudget::builder().ratio(r).build().unwrap_err();
            assert_eq!(e.field(), "retry_budget.ratio");
        }
    }
}
