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

    /// `true` if recording needs the current second.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Outcomes::Time(_))
    }

    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now_s: u64) {
        match self {
            Outcomes::Count(w) => w.record(failure, slow),
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

/// The last `size` calls, as a ring of outcome bytes plus running totals.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        CountWindow {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) {
        let bits = OCCUPIED | (u8::from(failure) * FAILED) | (u8::from(slow) * SLOW);
        let len = self.slots.len() as u64;
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.head.fetch_add(1, Ordering::AcqRel) % len) as usize;
        let old = self.slots[i].swap(bits, Ordering::AcqRel);
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
