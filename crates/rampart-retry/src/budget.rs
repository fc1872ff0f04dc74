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
//! success path only *reads* the budget's main balance: no cache line is written on every
//! success, and clones on different threads do not contend.
//!
//! While the budget is below its cap (retries are eating into it), every request deposits.
//! Deposits do not go to the main balance but to one of a few *stripes*, counters on cache
//! lines of their own: a call deposits into its thread's stripe
//! ([`rampart_core::record::thread_slot`]), so calls on different threads write different
//! cache lines, whichever service or clone they go through. A stripe is folded into the main balance when it holds a
//! 32nd of the cap (at least one token) or enough to fill the budget, so the shared line is
//! written once per `max_tokens / (32 · ratio)` requests of a service rather than on every
//! request (and never, by deposits, while the budget is far from its cap). A retry first takes from the main balance and, only when that is
//! short, drains every stripe into it before deciding. Deposits are moved, never copied or
//! dropped below the cap, so the bound above holds unchanged; [`RetryBudget::balance`]
//! counts the stripes too.
//!
//! The cap is applied when tokens reach the main balance (a fold, a drain, a refill), and a
//! main balance that reaches it discards what the stripes hold, so the burst a budget allows
//! after a healthy period (one that filled it) is `max_tokens`, as without stripes. While it
//! is being refilled, the stripes may hold deposits that a single counter would already have
//! capped: then a burst can exceed `max_tokens` by what the other stripes hold, less than
//! `max(max_tokens / 32, 1)` tokens each for at most [`STRIPES`] − 1 of them — never the
//! bound above.
//!
//! # Ownership
//!
//! The budget is one `Arc`, shared by its clones: the layer, every service the layer makes
//! and every call in flight (through its service's shared settings) hold it, so a
//! call's retries are budgeted even when every other handle is gone (as with `oneshot`), and
//! the budget is freed with the last of them. Nothing is registered anywhere else.

// loom's atomics only in this crate's own unit tests: loom is a dev-dependency, and the
// breaker's loom run builds this crate as a plain dependency with the same `--cfg`.
#[cfg(all(test, rampart_loom))]
use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use rampart_core::ConfigError;
use std::fmt;
#[cfg(not(all(test, rampart_loom)))]
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Milli-tokens per token: balances are kept in integers.
const MILLI: i64 = 1_000;

/// Deposit stripes per budget (a power of two). A call deposits into its thread's
/// ([`rampart_core::record::thread_slot`]), so calls on this many threads deposit without
/// sharing a cache line, however the services were cloned.
pub const STRIPES: usize = 16;

/// A stripe is folded into the main balance once it holds this share of the cap
/// (`cap / FOLD_SHARE`), and at least one token.
const FOLD_SHARE: i64 = 2 * STRIPES as i64;

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

/// A value alone on its cache line (128 bytes: two 64-byte lines, which some CPUs fetch in
/// pairs), so that writing it does not slow down readers of its neighbours.
#[repr(align(128))]
struct Line<T>(T);

struct BudgetInner {
    // Read-only after construction: on lines no one writes.
    deposit_milli: i64,
    cap_milli: i64,
    /// A stripe holding this much is folded into `balance`.
    fold_milli: i64,
    min_per_sec: u32,
    epoch: Instant,
    ratio: f64,
    /// The withdrawable balance, in milli-tokens, at most `cap_milli` (but for an instant
    /// while a concurrent add is clamped). Written by folds, drains, refills and retries.
    balance: Line<AtomicI64>,
    /// The floor's clock: written only by refills (on the retry path).
    last_refill_nanos: Line<AtomicU64>,
    /// Deposits not yet folded into `balance`, in milli-tokens, each `>= 0`.
    stripes: [Line<AtomicI64>; STRIPES],
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
        RetryBudget::with_fold(
            ratio,
            min_per_sec,
            max_tokens,
            (cap_milli / FOLD_SHARE).max(MILLI),
        )
    }

    fn with_fold(ratio: f64, min_per_sec: u32, max_tokens: u32, fold_milli: i64) -> Self {
        let cap_milli = i64::from(max_tokens) * MILLI;
        // `ratio` is validated to [0, 1000], so this fits comfortably.
        #[allow(clippy::cast_possible_truncation)]
        let deposit_milli = (ratio * MILLI as f64).round() as i64;
        let inner = Arc::new(BudgetInner {
            deposit_milli,
            cap_milli,
            fold_milli,
            min_per_sec,
            epoch: Instant::now(),
            ratio,
            balance: Line(AtomicI64::new(
                (i64::from(min_per_sec) * MILLI).min(cap_milli),
            )),
            last_refill_nanos: Line(AtomicU64::new(0)),
            stripes: std::array::from_fn(|_| Line(AtomicI64::new(0))),
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

    /// Tokens currently available (one token is one retry): the main balance and the
    /// deposits not yet folded into it, at most `max_tokens`.
    pub fn balance(&self) -> f64 {
        let inner = &*self.inner;
        let pending = inner.stripes.iter().fold(0i64, |sum, s| {
            sum.saturating_add(s.0.load(Ordering::Acquire))
        });
        let milli = inner
            .balance
            .0
            .load(Ordering::Acquire)
            .saturating_add(pending)
            .min(inner.cap_milli);
        milli as f64 / MILLI as f64
    }

    /// Records one request: adds `ratio` tokens unless the budget is full. A full budget is
    /// only read.
    ///
    /// The deposit goes to a stripe picked at random (by `fastrand`'s per-thread generator);
    /// the services a [`RetryLayer`](crate::RetryLayer) makes each use their own stripe
    /// instead, which keeps a service's deposits on one cache line.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_retry::RetryBudget;
    ///
    /// let budget = RetryBudget::builder().ratio(0.5).min_per_sec(0).build()?;
    /// budget.deposit_one();
    /// budget.deposit_one();
    /// assert_eq!(budget.balance(), 1.0);
    /// assert!(budget.try_withdraw());
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    #[inline]
    pub fn deposit_one(&self) {
        self.deposit_in(fastrand::usize(..STRIPES));
    }

    /// Records one request in stripe `stripe` (taken modulo [`STRIPES`]): adds `ratio`
    /// tokens unless the budget is full. A full budget is only read.
    #[inline]
    pub(crate) fn deposit_in(&self, stripe: usize) {
        let inner = &*self.inner;
        let milli = inner.deposit_milli;
        let main = inner.balance.0.load(Ordering::Relaxed);
        if milli == 0 || main >= inner.cap_milli {
            return;
        }
        let cell = &inner.stripes[stripe % STRIPES].0;
        // Only atomic read-modify-writes touch a stripe, so no deposit is lost whatever the
        // ordering; the fold's swap and add carry the tokens over.
        let held = cell
            .fetch_add(milli, Ordering::Relaxed)
            .saturating_add(milli);
        // Fold a stripe that holds its share, or enough to fill the budget (so that a
        // budget filling up is seen full, and only read, as soon as one stripe can tell).
        if held >= inner.fold_milli || held.saturating_add(main) >= inner.cap_milli {
            self.fold(cell);
        }
    }

    /// Moves one stripe's tokens into the main balance (up to the cap).
    #[cold]
    #[inline(never)]
    fn fold(&self, cell: &AtomicI64) {
        let milli = cell.swap(0, Ordering::AcqRel);
        if milli > 0 {
            self.add(milli);
        }
    }

    /// Records `requests` requests, straight into the main balance.
    pub fn deposit(&self, requests: u32) {
        if requests == 0 || self.inner.deposit_milli == 0 {
            return;
        }
        self.add(i64::from(requests).saturating_mul(self.inner.deposit_milli));
    }

    /// Takes one token for a retry; `false` if the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.refill();
        if self.take() {
            return true;
        }
        // The main balance is short: bring in the deposits still in the stripes.
        self.drain();
        self.take()
    }

    /// Takes one token from the main balance, if it has one.
    fn take(&self) -> bool {
        self.inner
            .balance
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }

    /// Moves every stripe's tokens into the main balance (up to the cap). Empty stripes are
    /// only read.
    fn drain(&self) {
        let mut milli = 0i64;
        for stripe in &self.inner.stripes {
            if stripe.0.load(Ordering::Relaxed) > 0 {
                milli = milli.saturating_add(stripe.0.swap(0, Ordering::AcqRel));
            }
        }
        if milli > 0 {
            self.add(milli);
        }
    }

    /// Discards what the stripes hold: the main balance has reached the cap, so it is all
    /// beyond it. Empty stripes are only read.
    fn discard_stripes(&self) {
        for stripe in &self.inner.stripes {
            if stripe.0.load(Ordering::Relaxed) > 0 {
                stripe.0.swap(0, Ordering::AcqRel);
            }
        }
    }

    /// Adds `milli` milli-tokens to the main balance, up to the cap. A full budget is only
    /// read, never written, so that a healthy service's clones do not contend for its cache
    /// line; a balance that reaches the cap discards the stripes' tokens.
    fn add(&self, milli: i64) {
        let cap = self.inner.cap_milli;
        let balance = &self.inner.balance.0;
        if balance.load(Ordering::Relaxed) >= cap {
            return;
        }
        let before = balance.fetch_add(milli, Ordering::AcqRel);
        if before.saturating_add(milli) >= cap {
            // Concurrent deposits may overshoot for an instant; clamp back to the cap.
            balance.fetch_min(cap, Ordering::AcqRel);
            self.discard_stripes();
        }
    }

    /// Adds the floor's tokens for the time since the last refill.
    fn refill(&self) {
        let per_sec = u128::from(self.inner.min_per_sec);
        if per_sec == 0 {
            return;
        }
        let now = u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let clock = &self.inner.last_refill_nanos.0;
        let last = clock.load(Ordering::Acquire);
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
        if clock
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

#[cfg(all(test, not(rampart_loom)))]
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

    /// Withdraws until the budget says no; the number of retries it allowed.
    fn burst(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        n
    }

    #[test]
    fn striped_deposits_are_all_withdrawable() {
        let b = RetryBudget::builder()
            .ratio(0.3)
            .min_per_sec(0)
            .max_tokens(u32::MAX)
            .build()
            .unwrap_or_default();
        // 0.3 tokens into each of three stripes: no stripe reaches a token, so nothing is
        // folded, yet the balance and the retries count all of it.
        for stripe in 0..3 {
            b.deposit_in(stripe);
        }
        assert_eq!(b.inner.balance.0.load(Ordering::Relaxed), 0);
        assert_eq!(b.balance(), 0.9);
        assert!(!b.try_withdraw(), "0.9 tokens are not a retry");
        b.deposit_in(7);
        assert_eq!(b.balance(), 1.2);
        assert!(b.try_withdraw(), "the drain brings the stripes in");
        assert_eq!(b.balance(), 0.2);
        assert!(!b.try_withdraw());
    }

    #[test]
    fn a_full_budget_discards_the_stripes_and_is_only_read() {
        let b = RetryBudget::builder()
            .ratio(0.5)
            .min_per_sec(0)
            .max_tokens(2)
            .build()
            .unwrap_or_default();
        b.deposit_in(1); // 0.5 pending in stripe 1
        for _ in 0..4 {
            b.deposit_in(0); // stripe 0 folds at 1 token: main 1, then 2 = the cap
        }
        assert_eq!(b.inner.balance.0.load(Ordering::Relaxed), 2 * MILLI);
        assert!(
            b.inner
                .stripes
                .iter()
                .all(|s| s.0.load(Ordering::Relaxed) == 0),
            "reaching the cap discards what the stripes held beyond it"
        );
        for stripe in 0..STRIPES {
            b.deposit_in(stripe);
        }
        assert!(
            b.inner
                .stripes
                .iter()
                .all(|s| s.0.load(Ordering::Relaxed) == 0),
            "a full budget takes no deposit"
        );
        assert_eq!(burst(&b), 2, "the burst after a healthy period is the cap");
    }

    /// Several threads deposit at once, each into its own stripe and at random: after they
    /// are done, every deposit is there (below the cap) or the budget is exactly full.
    #[test]
    fn concurrent_deposits_are_neither_lost_nor_doubled() {
        const THREADS: usize = 4;
        const EACH: u64 = 25_000;
        for max_tokens in [u32::MAX, 1_000, 7] {
            let b = RetryBudget::builder()
                .ratio(0.1)
                .min_per_sec(0)
                .max_tokens(max_tokens)
                .build()
                .unwrap_or_default();
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let b = b.clone();
                    scope.spawn(move || {
                        for i in 0..EACH {
                            if i % 3 == 0 {
                                b.deposit_one();
                            } else {
                                b.deposit_in(t);
                            }
                        }
                    });
                }
            });
            // 4 × 25,000 × 0.1 = 10,000 tokens deposited.
            let expected = 10_000u64.min(u64::from(max_tokens));
            assert_eq!(b.balance(), expected as f64, "max_tokens {max_tokens}");
            assert_eq!(burst(&b), expected, "max_tokens {max_tokens}");
        }
    }

    /// Deposits and retries from several threads at once never allow more retries than were
    /// deposited, and whatever is left afterwards is still there.
    #[test]
    fn concurrent_deposits_and_retries_conserve_tokens() {
        const THREADS: usize = 4;
        const EACH: u64 = 20_000;
        let b = RetryBudget::builder()
            .ratio(0.25)
            .min_per_sec(0)
            .max_tokens(u32::MAX)
            .build()
            .unwrap_or_default();
        let taken: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let b = b.clone();
                    scope.spawn(move || {
                        let mut taken = 0u64;
                        for i in 0..EACH {
                            b.deposit_in(t);
                            if i % 5 == 0 && b.try_withdraw() {
                                taken += 1;
                            }
                        }
                        taken
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(u64::MAX))
                .sum()
        });
        // 4 × 20,000 × 0.25 = 20,000 tokens deposited.
        assert!(taken <= 20_000, "{taken} retries allowed");
        assert_eq!(
            taken + burst(&b),
            20_000,
            "every token is taken exactly once"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit(usize),
        DepositOne,
        DepositMany(u32),
        Withdraw,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..STRIPES + 3).prop_map(Op::Deposit),
            1 => Just(Op::DepositOne),
            1 => (0u32..5).prop_map(Op::DepositMany),
            3 => Just(Op::Withdraw),
        ]
    }

    proptest::proptest! {
        /// Against an unstriped model: with a cap never reached, a retry is allowed exactly
        /// when the deposits made so far, less the retries taken, are worth a token.
        #[test]
        fn stripes_behave_like_one_counter_below_the_cap(
            ratio in proptest::sample::select(vec![0.0, 0.1, 0.3, 0.5, 1.0, 2.5]),
            fold in proptest::sample::select(vec![1_000, 1_700, 4_000, i64::MAX]),
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            let b = RetryBudget::with_fold(ratio, 0, u32::MAX, fold);
            let d = b.inner.deposit_milli;
            let mut model = 0i64;
            for op in ops {
                match op {
                    Op::Deposit(s) => { b.deposit_in(s); model += d; }
                    Op::DepositOne => { b.deposit_one(); model += d; }
                    Op::DepositMany(n) => { b.deposit(n); model += i64::from(n) * d; }
                    Op::Withdraw => {
                        let allowed = model >= MILLI;
                        proptest::prop_assert_eq!(b.try_withdraw(), allowed);
                        if allowed { model -= MILLI; }
                    }
                }
                proptest::prop_assert_eq!(b.balance(), model as f64 / MILLI as f64);
            }
        }

        /// With a cap: never more retries than deposited (the bound), never a balance above
        /// the cap, and after enough deposits with no retries the burst is exactly the cap.
        #[test]
        fn the_cap_only_lowers_the_bound(
            ratio in proptest::sample::select(vec![0.1, 0.3, 0.5, 1.0, 2.5]),
            max_tokens in 1u32..12,
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            let b = RetryBudget::builder()
                .ratio(ratio)
                .min_per_sec(0)
                .max_tokens(max_tokens)
                .build()
                .unwrap_or_default();
            let d = b.inner.deposit_milli;
            let mut deposited = 0i64;
            let mut taken = 0i64;
            for op in ops {
                match op {
                    Op::Deposit(s) => { b.deposit_in(s); deposited += d; }
                    Op::DepositOne => { b.deposit_one(); deposited += d; }
                    Op::DepositMany(n) => { b.deposit(n); deposited += i64::from(n) * d; }
                    Op::Withdraw => { if b.try_withdraw() { taken += 1; } }
                }
                proptest::prop_assert!(taken * MILLI <= deposited, "{} retries for {} milli-tokens", taken, deposited);
                proptest::prop_assert!(b.balance() <= f64::from(max_tokens));
            }
            // A healthy period: every service deposits until the budget is full.
            for _ in 0..(i64::from(max_tokens) * MILLI / d + 2) {
                for s in 0..STRIPES {
                    b.deposit_in(s);
                }
            }
            proptest::prop_assert_eq!(b.balance(), f64::from(max_tokens));
            proptest::prop_assert_eq!(burst(&b), u64::from(max_tokens));
        }
    }

    #[test]
    fn invalid_ratio_is_rejected() {
        for r in [f64::NAN, -0.1, 1000.5, f64::INFINITY] {
            let e = RetryBudget::builder().ratio(r).build().unwrap_err();
            assert_eq!(e.field(), "retry_budget.ratio");
        }
    }
}

/// Every interleaving of deposits folding into the main balance, a retry draining the
/// stripes, and the cap's discard (run by `.ci/run` with `--cfg rampart_loom`).
#[cfg(all(test, rampart_loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    fn budget(max_tokens: u32) -> RetryBudget {
        RetryBudget::builder()
            .ratio(0.5)
            .min_per_sec(0)
            .max_tokens(max_tokens)
            .build()
            .unwrap_or_default()
    }

    fn burst(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        n
    }

    /// Runs `f` in every interleaving up to three preemptions.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(f);
    }

    /// Two threads, each depositing twice into a stripe of its own.
    fn deposit_twice_on_two_threads(b: &RetryBudget) -> Vec<thread::JoinHandle<()>> {
        (0..2)
            .map(|stripe| {
                let b = b.clone();
                thread::spawn(move || {
                    b.deposit_in(stripe);
                    b.deposit_in(stripe);
                })
            })
            .collect()
    }

    /// Two threads deposit a token each (two half-token deposits, one fold) into their own
    /// stripes while a retry is decided: the token is taken at most once, and whatever the
    /// retry did not take is still there afterwards.
    #[test]
    fn deposits_racing_a_retry_are_taken_exactly_once() {
        model(|| {
            // A cap of 10 folds a stripe at one token, and two tokens never reach it.
            let b = budget(10);
            let depositors = deposit_twice_on_two_threads(&b);
            let retry = {
                let b = b.clone();
                thread::spawn(move || u64::from(b.try_withdraw()))
            };
            let mut taken = retry.join().unwrap_or(u64::MAX);
            for d in depositors {
                d.join().unwrap_or(());
            }
            taken += burst(&b);
            assert_eq!(taken, 2, "two tokens deposited, {taken} taken");
        });
    }

    /// Two threads filling a one-token budget at once: the burst afterwards is the cap,
    /// never more.
    #[test]
    fn concurrent_folds_never_overfill_the_cap() {
        model(|| {
            let b = budget(1);
            for d in deposit_twice_on_two_threads(&b) {
                d.join().unwrap_or(());
            }
            assert_eq!(burst(&b), 1);
        });
    }
}
