//! Sliding windows of call outcomes: the last N calls, or the last N seconds.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};

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

#[derive(Debug)]
pub(crate) enum Outcomes {
    /// A pooled count window and the generation this breaker holds it under.
    Count(&'static CountWindow, u64),
    Time(TimeWindow),
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        if let Outcomes::Count(w, _) = self {
            w.give_back();
        }
    }
}

impl Outcomes {
    pub(crate) fn new(w: Window) -> Self {
        match w {
            Window::Count(n) => {
                let (w, gen) = CountWindow::take(n);
                Outcomes::Count(w, gen)
            }
            Window::Time(secs) => Outcomes::Time(TimeWindow::new(secs)),
        }
    }

    /// The pooled count window, for response futures that record without a refcount.
    pub(crate) fn count_window(&self) -> Option<(&'static CountWindow, u64)> {
        match self {
            Outcomes::Count(w, gen) => Some((*w, *gen)),
            Outcomes::Time(_) => None,
        }
    }

    /// `true` if recording needs the current second.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Outcomes::Time(_))
    }

    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now_s: u64) {
        match self {
            Outcomes::Count(w, _) => w.record(failure, slow),
            Outcomes::Time(w) => w.record(failure, slow, now_s),
        }
    }

    pub(crate) fn totals(&self, now_s: u64) -> Totals {
        match self {
            Outcomes::Count(w, _) => w.totals(),
            Outcomes::Time(w) => w.totals(now_s),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Outcomes::Count(w, _) => w.reset(),
            Outcomes::Time(w) => w.reset(),
        }
    }
}

const OCCUPIED: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// The most stripes a count window is split into.
const MAX_STRIPES: usize = 8;

/// The stripe of the calling thread: threads are numbered as they first record.
fn stripe_of_thread(stripes: usize) -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static ID: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    ID.with(|id| {
        let mut v = id.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Ordering::Relaxed);
            id.set(v);
        }
        v % stripes
    })
}

/// The last `size` calls, as a ring of outcome bytes plus running totals, striped by thread.
///
/// Each thread records into its own stripe, a ring of the last `size` calls *it* completed,
/// so threads never write the same cache line; the window's totals are the sum over the
/// stripes. With one thread driving the breaker (or with a current-thread runtime) this is
/// exactly "the last `size` calls"; with `k` threads it covers the last `size` calls of each,
/// up to `k · size` calls (`k` ≤ 8, and ≤ the machine's parallelism).
///
/// Count windows live for the whole process and are pooled by size: a breaker takes one when
/// it is made and gives it back when it is dropped (bumping its generation), so that response
/// futures can record into it without holding a reference count. A future that outlives its
/// breaker records nothing once the generation has moved on; one that races the window's
/// reuse between its generation check and its store may add one call to the new owner's
/// window.
#[derive(Debug)]
pub(crate) struct CountWindow {
    gen: AtomicU64,
    size: u32,
    stripes: Box<[Stripe]>,
}

type Pool = std::sync::Mutex<std::collections::HashMap<u32, Vec<&'static CountWindow>>>;

fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// One thread's ring, padded to its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    /// A cleared window of `size` calls from the pool, and its generation.
    pub(crate) fn take(size: u32) -> (&'static CountWindow, u64) {
        let reused = pool()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&size)
            .and_then(Vec::pop);
        let w: &'static CountWindow = match reused {
            Some(w) => {
                w.reset();
                w
            }
            None => Box::leak(Box::new(CountWindow::new(size))),
        };
        (w, w.gen.load(Ordering::Acquire))
    }

    fn give_back(&'static self) {
        self.gen.fetch_add(1, Ordering::AcqRel);
        pool()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(self.size)
            .or_default()
            .push(self);
    }

    /// Records a success for a future admitted under generation `gen`, if the window still
    /// belongs to that breaker.
    #[inline(always)]
    pub(crate) fn record_success(&self, gen: u64) {
        if self.gen.load(Ordering::Acquire) == gen {
            self.record(false, false);
        }
    }

    fn new(size: u32) -> Self {
        let n = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, MAX_STRIPES);
        CountWindow {
            gen: AtomicU64::new(0),
            size,
            stripes: (0..n)
                .map(|_| Stripe {
                    slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
                    head: AtomicU64::new(0),
                    failures: AtomicI64::new(0),
                    slow: AtomicI64::new(0),
                })
                .collect(),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let stripe = if self.stripes.len() == 1 {
            &self.stripes[0]
        } else {
            &self.stripes[stripe_of_thread(self.stripes.len())]
        };
        stripe.record(failure, slow);
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
    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let bits = OCCUPIED | (u8::from(failure) * FAILED) | (u8::from(slow) * SLOW);
        let len = self.slots.len() as u64;
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.head.fetch_add(1, Ordering::AcqRel) % len) as usize;
        // Each slot index is handed out once per lap of the ring, so a plain load and store
        // suffice; in the steady state (a success replacing a success) nothing is written.
        let old = self.slots[i].load(Ordering::Acquire);
        if old == bits {
            return;
        }
        self.slots[i].store(bits, Ordering::Release);
        let df = i64::from(bits & FAILED) - i64::from(old & FAILED);
        if df != 0 {
            self.failures.fetch_add(df, Ordering::AcqRel);
        }
        let ds = i64::from((bits & SLOW) >> 1) - i64::from((old & SLOW) >> 1);
        if ds != 0 {
            self.slow.fetch_add(ds, Ordering::AcqRel);
        }
    }

    fn totals(&self) -> Totals {
        let len = self.slots.len() as u64;
        let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Totals {
            calls: u32::try_from(self.head.load(Ordering::Acquire).min(len)).unwrap_or(u32::MAX),
            failures: clamp(self.failures.load(Ordering::Acquire)),
            slow: clamp(self.slow.load(Ordering::Acquire)),
        }
    }

    fn reset(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Release);
        }
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
        self.head.store(0, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(4);
        for f in [true, true, false, false] {
            w.record(f, false);
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        w.record(false, true);
        w.record(false, true);
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
