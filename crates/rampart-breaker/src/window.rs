//! Sliding windows of call outcomes: the last N calls, or the last N seconds.

#[cfg(rampart_loom)]
use loom::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
#[cfg(not(rampart_loom))]
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::config::Window;

/// Totals of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    pub(crate) fn failure_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| f64::from(self.failures) / f64::from(self.calls))
    }
    pub(crate) fn slow_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| f64::from(self.slow) / f64::from(self.calls))
    }
}

/// The outcomes a breaker with a window keeps: owned by the breaker, freed with it.
#[derive(Debug)]
pub(crate) enum Outcomes {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Outcomes {
    pub(crate) fn new(w: Window) -> Self {
        match w {
            Window::Count(n) => Outcomes::Count(CountWindow::new(n)),
            Window::Time(secs) => Outcomes::Time(TimeWindow::new(secs)),
        }
    }

    /// The count window, if this is one.
    pub(crate) fn count_window(&self) -> Option<&CountWindow> {
        match self {
            Outcomes::Count(w) => Some(w),
            Outcomes::Time(_) => None,
        }
    }

    /// `true` if recording needs the current second.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Outcomes::Time(_))
    }

    /// Records one call; `stripe` picks a count window's stripe (see [`CountWindow`]).
    #[inline]
    pub(crate) fn record(&self, stripe: usize, failure: bool, slow: bool, now_s: u64) {
        match self {
            Outcomes::Count(w) => w.record(stripe, failure, slow),
            Outcomes::Time(w) => w.record(failure, slow, now_s),
        }
    }

    pub(crate) fn totals(&self, now_s: u64) -> Totals {
        match self {
            Outcomes::Count(w) => w.totals(),
            Outcomes::Time(w) => w.totals(now_s),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Outcomes::Count(w) => w.reset(),
            Outcomes::Time(w) => w.reset(),
        }
    }
}

const OCCUPIED: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// The most stripes a count window is split into.
const MAX_STRIPES: usize = 8;

/// How many stripes a count window gets here: the machine's parallelism, at most 8.
pub(crate) fn stripes_for_machine() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, MAX_STRIPES)
}

/// The last `size` calls, as rings of outcome bytes plus running totals, split into stripes.
///
/// A call records into its thread's stripe (the layer's link of its thread, see
/// `service::Links`; a keyed breaker's one link has one stripe), so that calls on different
/// threads do not write the same cache lines; the window's totals are the sum over the
/// stripes. With one thread (or one stripe) this is exactly "the last `size` calls"; with
/// `k` stripes in use
/// it covers the last `size` calls of each, up to `k · size` calls (`k` ≤ 8, and ≤ the
/// machine's parallelism).
///
/// Any number of threads may record into one stripe at once: a slot changes only by an
/// atomic swap, and the running totals move by exactly the difference between the outcome
/// swapped in and the one swapped out, so they always add up to what the slots hold once
/// the writers are done — they cannot drift. (Two writers handed the same slot one lap
/// apart keep only one of their two outcomes; the totals stay consistent.)
#[derive(Debug)]
pub(crate) struct CountWindow {
    stripes: Box<[Stripe]>,
    /// The stripe the next keyed breaker's link records into.
    next: AtomicUsize,
}

/// One stripe's ring, padded to its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self::with_stripes(size, stripes_for_machine())
    }

    /// How many stripes this window has.
    pub(crate) fn stripes(&self) -> usize {
        self.stripes.len()
    }

    fn with_stripes(size: u32, stripes: usize) -> Self {
        CountWindow {
            stripes: (0..stripes.max(1)).map(|_| Stripe::new(size)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The stripe a keyed breaker's one link records into (taken in turn).
    pub(crate) fn assign(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.stripes.len()
    }

    #[inline]
    pub(crate) fn record(&self, stripe: usize, failure: bool, slow: bool) {
        // `stripe` comes from `assign`, so it is in range; fall back to the first rather
        // than index out of bounds.
        if let Some(s) = self.stripes.get(stripe).or_else(|| self.stripes.first()) {
            s.record(failure, slow);
        }
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.stripes.iter() {
            let st = s.totals();
            t.calls = t.calls.saturating_add(st.calls);
            t.failures = t.failures.saturating_add(st.failures);
            t.slow = t.slow.saturating_add(st.slow);
        }
        t
    }

    fn reset(&self) {
        for s in self.stripes.iter() {
            s.reset();
        }
    }
}

impl Stripe {
    fn new(size: u32) -> Self {
        Stripe {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let bits = OCCUPIED | (u8::from(failure) * FAILED) | (u8::from(slow) * SLOW);
        let len = self.slots.len() as u64;
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.head.fetch_add(1, Ordering::Relaxed) % len) as usize;
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        // The steady state (a success replacing a success) writes nothing.
        if slot.load(Ordering::Relaxed) == bits {
            return;
        }
        let old = slot.swap(bits, Ordering::AcqRel);
        self.moved(old, bits);
    }

    /// Moves the totals by the difference between the outcome `new` that replaced `old`.
    #[inline]
    fn moved(&self, old: u8, new: u8) {
        let delta = |mask: u8| i64::from(new & mask != 0) - i64::from(old & mask != 0);
        for (total, mask) in [
            (&self.calls, OCCUPIED),
            (&self.failures, FAILED),
            (&self.slow, SLOW),
        ] {
            let d = delta(mask);
            if d != 0 {
                total.fetch_add(d, Ordering::AcqRel);
            }
        }
    }

    fn totals(&self) -> Totals {
        // A reader racing writers may catch a total between a slot's swap and its update:
        // clamp into range rather than report a negative count.
        let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        let calls = clamp(self.calls.load(Ordering::Acquire));
        Totals {
            calls,
            failures: clamp(self.failures.load(Ordering::Acquire)).min(calls),
            slow: clamp(self.slow.load(Ordering::Acquire)).min(calls),
        }
    }

    /// Empties every slot, moving the totals with each swap, so that a reset racing
    /// writers leaves them consistent too.
    fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            self.moved(old, 0);
        }
    }
}

/// One second of a time window.
#[derive(Debug)]
struct Bucket {
    /// The second this bucket holds (`u64::MAX`: empty), packed with nothing else so that a
    /// stale bucket is recognised by one load.
    second: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The calls of the last `secs` seconds in one-second buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
}

const EMPTY: u64 = u64::MAX;

impl TimeWindow {
    fn new(secs: u32) -> Self {
        TimeWindow {
            buckets: (0..secs.max(1))
                .map(|_| Bucket {
                    second: AtomicU64::new(EMPTY),
                    calls: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    fn record(&self, failure: bool, slow: bool, now_s: u64) {
        let len = self.buckets.len() as u64;
        #[allow(clippy::cast_possible_truncation)]
        let b = &self.buckets[(now_s % len) as usize];
        let held = b.second.load(Ordering::Acquire);
        if held != now_s
            && b.second
                .compare_exchange(held, now_s, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread turned the bucket over to the new second; counts recorded by
            // others between the exchange and these stores may be lost (a few calls at a
            // second's boundary), never invented.
            b.calls.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
            b.slow.store(0, Ordering::Release);
        }
        b.calls.fetch_add(1, Ordering::AcqRel);
        if failure {
            b.failures.fetch_add(1, Ordering::AcqRel);
        }
        if slow {
            b.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn totals(&self, now_s: u64) -> Totals {
        let len = self.buckets.len() as u64;
        let mut t = (0u64, 0u64, 0u64);
        for b in self.buckets.iter() {
            let s = b.second.load(Ordering::Acquire);
            if s != EMPTY && s <= now_s && now_s - s < len {
                t.0 += b.calls.load(Ordering::Acquire);
                t.1 += b.failures.load(Ordering::Acquire);
                t.2 += b.slow.load(Ordering::Acquire);
            }
        }
        let c = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Totals {
            calls: c(t.0),
            failures: c(t.1).min(c(t.0)),
            slow: c(t.2).min(c(t.0)),
        }
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.second.store(EMPTY, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(rampart_loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Stripe {
        /// The running totals as stored, unclamped.
        fn raw(&self) -> (i64, i64, i64) {
            (
                self.calls.load(Ordering::SeqCst),
                self.failures.load(Ordering::SeqCst),
                self.slow.load(Ordering::SeqCst),
            )
        }

        /// The totals recounted from the slots.
        fn recount(&self) -> (i64, i64, i64) {
            let mut t = (0, 0, 0);
            for s in self.slots.iter() {
                let v = s.load(Ordering::SeqCst);
                t.0 += i64::from(v & OCCUPIED != 0);
                t.1 += i64::from(v & FAILED != 0);
                t.2 += i64::from(v & SLOW != 0);
            }
            t
        }
    }

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::with_stripes(4, 1);
        for f in [true, true, false, false] {
            w.record(0, f, false);
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(0, false, true);
        w.record(0, false, true);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 0,
                slow: 2
            }
        );
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn instances_get_stripes_in_turn_and_totals_add_up() {
        let w = CountWindow::with_stripes(2, 3);
        let stripes: Vec<usize> = (0..4).map(|_| w.assign()).collect();
        assert_eq!(stripes, [0, 1, 2, 0]);
        w.record(0, true, false);
        w.record(1, true, false);
        w.record(2, false, false);
        // An out-of-range stripe (never handed out) lands in the first one, never panics.
        w.record(7, false, true);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
    }

    /// Regression: stripes used a plain load and store per slot, assuming one writer per
    /// stripe. Threads sharing a stripe (tokio workers polling clones of one service) raced
    /// on a slot and moved `failures` twice for one change, so the totals drifted from the
    /// slots for good. With swaps they always add up once the writers are done.
    #[test]
    fn threads_sharing_a_stripe_never_make_the_totals_drift() {
        for size in [1u32, 2, 3] {
            let w = std::sync::Arc::new(CountWindow::with_stripes(size, 1));
            std::thread::scope(|s| {
                for t in 0..4u32 {
                    let w = &w;
                    s.spawn(move || {
                        for i in 0..20_000u32 {
                            let x = i.wrapping_mul(2_654_435_761).wrapping_add(t * 97);
                            w.record(0, x % 3 == 0, x % 5 == 0);
                            if i % 4_999 == 0 {
                                w.reset();
                            }
                        }
                    });
                }
            });
            let stripe = &w.stripes[0];
            assert_eq!(stripe.raw(), stripe.recount(), "size {size}");
        }
    }

    proptest! {
        /// One writer: the window is exactly the last `size` outcomes.
        #[test]
        fn one_writer_sees_exactly_the_last_n(
            size in 1u32..8,
            calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..40),
            reset_at in proptest::option::of(0usize..40),
        ) {
            let w = CountWindow::with_stripes(size, 1);
            let mut model: Vec<(bool, bool)> = Vec::new();
            for (i, &(failure, slow)) in calls.iter().enumerate() {
                if reset_at == Some(i) {
                    w.reset();
                    model.clear();
                }
                w.record(0, failure, slow);
                model.push((failure, slow));
            }
            // After a reset the ring goes on from where it was: the model keeps the calls
            // since the reset, of which the window holds the last `size`.
            let n = size as usize;
            let last = &model[model.len().saturating_sub(n)..];
            let count = |f: fn(&(bool, bool)) -> bool| {
                u32::try_from(last.iter().filter(|c| f(c)).count()).unwrap()
            };
            prop_assert_eq!(
                w.totals(),
                Totals {
                    calls: u32::try_from(last.len()).unwrap(),
                    failures: count(|c| c.0),
                    slow: count(|c| c.1),
                }
            );
            prop_assert_eq!(w.stripes[0].raw(), w.stripes[0].recount());
        }
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(3);
        w.record(true, false, 10);
        w.record(false, false, 11);
        w.record(false, true, 12);
        assert_eq!(
            w.totals(12),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            w.totals(13),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        w.record(true, false, 13);
        assert_eq!(
            w.totals(13),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.totals(20), Totals::default());
    }
}

#[cfg(all(test, rampart_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two writers share a one-slot stripe while a third resets it: whatever the
    /// interleaving, the running totals equal what the slot holds afterwards.
    #[test]
    fn concurrent_writers_and_a_reset_keep_totals_consistent() {
        loom::model(|| {
            let w = Arc::new(CountWindow::with_stripes(1, 1));
            w.record(0, false, false);
            let writers: Vec<_> = [(true, false), (false, true)]
                .into_iter()
                .map(|(failure, slow)| {
                    let w = w.clone();
                    thread::spawn(move || w.record(0, failure, slow))
                })
                .collect();
            w.reset();
            for h in writers {
                h.join().unwrap();
            }
            let s = &w.stripes[0];
            let v = s.slots[0].load(Ordering::SeqCst);
            assert_eq!(s.calls.load(Ordering::SeqCst), i64::from(v & OCCUPIED != 0));
            assert_eq!(
                s.failures.load(Ordering::SeqCst),
                i64::from(v & FAILED != 0)
            );
            assert_eq!(s.slow.load(Ordering::SeqCst), i64::from(v & SLOW != 0));
        });
    }
}
