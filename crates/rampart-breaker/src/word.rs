//! The breaker's state machine in one atomic word, so that admission, tripping, probing and
//! closing are lock-free and never lose a transition.
//!
//! ```text
//! bit 63..61  state   (Closed, Open, HalfOpen, ForcedOpen, Disabled)
//! bit 60..48  generation, bumped on every transition (mod 2^13); outcomes of calls admitted
//!             under another generation are stale and ignored
//! bit 47..0   payload: Open     -> the instant (ms since the breaker's epoch) it may half-open
//!                      HalfOpen -> probes in flight (bits 0..16), successes (bits 16..32),
//!                                  failed probes (bits 32..48)
//! ```

#[cfg(rampart_loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(rampart_loom))]
use std::sync::atomic::{AtomicU64, Ordering};

use crate::events::State;

const STATE_SHIFT: u32 = 61;
const GEN_SHIFT: u32 = 48;
const GEN_MASK: u64 = (1 << 13) - 1;
const PAYLOAD_MASK: u64 = (1 << 48) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;

/// A call's right to proceed, tagged with the generation it was granted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: an ordinary call.
    Normal(u16),
    /// Half-open: a probe, holding one of the permitted slots until it completes or is
    /// dropped.
    Probe(u16),
    /// Disabled: passes, counted, never trips.
    Bypass,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deny {
    /// Open until this instant (ms since epoch).
    Open(u64),
    /// Half-open and every probe slot is taken.
    ProbesBusy,
    /// Forced open by an operator.
    Forced,
}

/// A transition made by the caller of a `Control` method, for the caller to report.
pub(crate) type Change = (State, State);

#[inline]
const fn pack(state: u64, gen: u64, payload: u64) -> u64 {
    (state << STATE_SHIFT) | ((gen & GEN_MASK) << GEN_SHIFT) | (payload & PAYLOAD_MASK)
}
#[inline]
const fn state_of(w: u64) -> u64 {
    w >> STATE_SHIFT
}
#[inline]
const fn gen_of(w: u64) -> u64 {
    (w >> GEN_SHIFT) & GEN_MASK
}
#[inline]
const fn payload_of(w: u64) -> u64 {
    w & PAYLOAD_MASK
}
#[inline]
const fn half_open(gen: u64, in_flight: u64, successes: u64) -> u64 {
    pack(HALF_OPEN, gen, (successes << 16) | in_flight)
}
#[inline]
const fn half_open_with(gen: u64, in_flight: u64, successes: u64, failures: u64) -> u64 {
    pack(
        HALF_OPEN,
        gen,
        ((failures & 0xFFFF) << 32) | (successes << 16) | in_flight,
    )
}
#[inline]
const fn failures_of(w: u64) -> u64 {
    (payload_of(w) >> 32) & 0xFFFF
}
#[inline]
const fn in_flight_of(w: u64) -> u64 {
    payload_of(w) & 0xFFFF
}
#[inline]
const fn successes_of(w: u64) -> u64 {
    (payload_of(w) >> 16) & 0xFFFF
}

fn to_state(s: u64) -> State {
    match s {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        FORCED_OPEN => State::ForcedOpen,
        _ => State::Disabled,
    }
}

fn from_state(s: State) -> u64 {
    match s {
        State::Closed => CLOSED,
        State::Open => OPEN,
        State::HalfOpen => HALF_OPEN,
        State::ForcedOpen => FORCED_OPEN,
        State::Disabled => DISABLED,
    }
}

#[allow(clippy::cast_possible_truncation)]
const fn gen16(g: u64) -> u16 {
    g as u16
}

/// The atomic state word.
#[derive(Debug)]
pub(crate) struct Control {
    word: AtomicU64,
}

impl Control {
    pub(crate) fn new() -> Self {
        Control {
            word: AtomicU64::new(pack(CLOSED, 0, 0)),
        }
    }

    /// The current state, and for `Open` the instant it may half-open.
    pub(crate) fn state(&self) -> (State, u64) {
        let w = self.word.load(Ordering::Acquire);
        (to_state(state_of(w)), payload_of(w))
    }

    /// `true` if the word is in `Closed` under generation `gen`.
    pub(crate) fn is_closed(&self, gen: u16) -> bool {
        let w = self.word.load(Ordering::Acquire);
        state_of(w) == CLOSED && gen_of(w) == u64::from(gen)
    }

    /// The fast path of [`acquire`](Self::acquire): an admission if the circuit is closed.
    #[inline(always)]
    pub(crate) fn closed(&self) -> Option<Admit> {
        let w = self.word.load(Ordering::Acquire);
        (state_of(w) == CLOSED).then(|| Admit::Normal(gen16(gen_of(w))))
    }

    /// Asks to make a call. `now_ms` is read only when the circuit is open.
    #[inline]
    pub(crate) fn acquire(
        &self,
        now_ms: impl Fn() -> u64,
        permitted: u16,
    ) -> Result<(Admit, Option<Change>), Deny> {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let gen = gen_of(w);
            match state_of(w) {
                CLOSED => return Ok((Admit::Normal(gen16(gen)), None)),
                DISABLED => return Ok((Admit::Bypass, None)),
                FORCED_OPEN => return Err(Deny::Forced),
                OPEN => {
                    let until = payload_of(w);
                    if now_ms() < until {
                        return Err(Deny::Open(until));
                    }
                    let next_gen = (gen + 1) & GEN_MASK;
                    match self.word.compare_exchange_weak(
                        w,
                        half_open(next_gen, 1, 0),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            return Ok((
                                Admit::Probe(gen16(next_gen)),
                                Some((State::Open, State::HalfOpen)),
                            ))
                        }
                        Err(actual) => w = actual,
                    }
                }
                _ => {
                    let in_flight = in_flight_of(w);
                    if in_flight >= u64::from(permitted) {
                        return Err(Deny::ProbesBusy);
                    }
                    let next = half_open_with(gen, in_flight + 1, successes_of(w), failures_of(w));
                    match self.word.compare_exchange_weak(
                        w,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok((Admit::Probe(gen16(gen)), None)),
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    /// Closed(gen) → Open(until). `false` if the word had moved on.
    pub(crate) fn trip(&self, gen: u16, until_ms: u64) -> bool {
        let from = pack(CLOSED, u64::from(gen), 0);
        let to = pack(OPEN, u64::from(gen) + 1, until_ms);
        self.word
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records a probe's result. A failure reopens the circuit until `until_ms()`; a success
    /// that reaches `threshold` closes it.
    /// Records a probe's result under the reference design's rule: the first failure
    /// reopens (see [`probe_done_ratio`](Self::probe_done_ratio)).
    #[cfg(test)]
    pub(crate) fn probe_done(
        &self,
        gen: u16,
        success: bool,
        threshold: u16,
        until_ms: impl Fn() -> u64,
    ) -> Option<Change> {
        self.probe_done_ratio(gen, success, threshold, 1, until_ms)
    }

    /// Records a probe's result. The round closes the circuit once `threshold` probes
    /// succeeded, and reopens it once `fail_limit` probes failed (1: the first failure
    /// reopens, the reference design's rule).
    pub(crate) fn probe_done_ratio(
        &self,
        gen: u16,
        success: bool,
        threshold: u16,
        fail_limit: u16,
        until_ms: impl Fn() -> u64,
    ) -> Option<Change> {
        let gen = u64::from(gen);
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if state_of(w) != HALF_OPEN || gen_of(w) != gen {
                return None; // stale: another probe already decided
            }
            let in_flight = in_flight_of(w).saturating_sub(1);
            let failures = failures_of(w) + u64::from(!success);
            let (next, change) = if !success && failures >= u64::from(fail_limit.max(1)) {
                (
                    pack(OPEN, gen + 1, until_ms()),
                    (State::HalfOpen, State::Open),
                )
            } else if !success {
                (
                    half_open_with(gen, in_flight, successes_of(w), failures),
                    (State::HalfOpen, State::HalfOpen),
                )
            } else if successes_of(w) + 1 >= u64::from(threshold) {
                (pack(CLOSED, gen + 1, 0), (State::HalfOpen, State::Closed))
            } else {
                (
                    half_open_with(gen, in_flight, successes_of(w) + 1, failures_of(w)),
                    (State::HalfOpen, State::HalfOpen),
                )
            };
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (change.0 != change.1).then_some(change),
                Err(actual) => w = actual,
            }
        }
    }

    /// Gives back the slot of a probe that was dropped before it completed.
    pub(crate) fn release(&self, gen: u16) {
        let gen = u64::from(gen);
        let mut w = self.word.load(Ordering::Acquire);
        while state_of(w) == HALF_OPEN && gen_of(w) == gen && in_flight_of(w) > 0 {
            let next = half_open_with(gen, in_flight_of(w) - 1, successes_of(w), failures_of(w));
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }

    /// Moves to `to` unconditionally (an operator's action); returns the state before.
    pub(crate) fn force(&self, to: State, until_ms: u64) -> State {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let payload = if to == State::Open { until_ms } else { 0 };
            let next = pack(from_state(to), gen_of(w) + 1, payload);
            match self
                .word
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return to_state(state_of(w)),
                Err(actual) => w = actual,
            }
        }
    }

    /// Probes in flight and successes so far, when half-open.
    pub(crate) fn half_open_counts(&self) -> (u32, u32) {
        let w = self.word.load(Ordering::Acquire);
        if state_of(w) == HALF_OPEN {
            #[allow(clippy::cast_possible_truncation)]
            return (in_flight_of(w) as u32, successes_of(w) as u32);
        }
        (0, 0)
    }
}

#[cfg(all(test, not(rampart_loom)))]
mod tests {
    use super::*;

    #[test]
    fn closed_admits_normal_calls_and_trip_opens() {
        let c = Control::new();
        assert_eq!(c.acquire(|| 0, 1), Ok((Admit::Normal(0), None)));
        assert!(c.trip(0, 100));
        assert!(
            !c.trip(0, 100),
            "a second trip of the same generation is a no-op"
        );
        assert_eq!(c.acquire(|| 99, 1), Err(Deny::Open(100)));
        assert_eq!(
            c.acquire(|| 100, 1),
            Ok((Admit::Probe(2), Some((State::Open, State::HalfOpen))))
        );
        assert_eq!(c.acquire(|| 100, 1), Err(Deny::ProbesBusy));
        c.release(2);
        assert_eq!(c.acquire(|| 100, 1), Ok((Admit::Probe(2), None)));
        assert_eq!(c.probe_done(2, true, 2, || 0), None);
        assert_eq!(c.acquire(|| 100, 1), Ok((Admit::Probe(2), None)));
        assert_eq!(
            c.probe_done(2, true, 2, || 0),
            Some((State::HalfOpen, State::Closed))
        );
        assert_eq!(c.state().0, State::Closed);
        assert!(c.is_closed(3));
    }

    #[test]
    fn a_failed_probe_reopens_and_stale_results_are_ignored() {
        let c = Control::new();
        assert!(c.trip(0, 10));
        let Ok((Admit::Probe(g), _)) = c.acquire(|| 10, 2) else {
            panic!("probe")
        };
        let Ok((Admit::Probe(g2), _)) = c.acquire(|| 10, 2) else {
            panic!("probe")
        };
        assert_eq!(g, g2);
        assert_eq!(
            c.probe_done(g, false, 3, || 500),
            Some((State::HalfOpen, State::Open))
        );
        assert_eq!(c.probe_done(g2, true, 1, || 0), None, "stale");
        assert_eq!(c.state(), (State::Open, 500));
    }

    #[test]
    fn generation_wraps_without_panicking() {
        let c = Control::new();
        for _ in 0..20_000 {
            c.force(State::Closed, 0);
        }
        let Ok((Admit::Normal(g), _)) = c.acquire(|| 0, 1) else {
            panic!("closed")
        };
        assert!(u64::from(g) <= GEN_MASK);
        assert!(c.trip(g, 1));
    }
}

#[cfg(all(test, rampart_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    /// Two callers race for one probe slot: never more than the permitted number in flight.
    #[test]
    fn half_open_never_admits_more_probes_than_permitted() {
        loom::model(|| {
            let c = Arc::new(Control::new());
            assert!(c.trip(0, 0));
            let admitted = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (c, admitted) = (c.clone(), admitted.clone());
                    thread::spawn(move || {
                        if let Ok((Admit::Probe(_), _)) = c.acquire(|| 0, 1) {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(admitted.load(Ordering::SeqCst), 1);
            assert_eq!(c.half_open_counts(), (1, 0));
        });
    }

    /// A trip racing a probe's success: exactly one transition wins, and the word ends in a
    /// state one of them explains.
    #[test]
    fn concurrent_probe_results_never_lose_a_transition() {
        loom::model(|| {
            let c = Arc::new(Control::new());
            assert!(c.trip(0, 0));
            let Ok((Admit::Probe(g1), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 1")
            };
            let Ok((Admit::Probe(g2), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 2")
            };
            let a = {
                let c = c.clone();
                thread::spawn(move || c.probe_done(g1, true, 2, || 9))
            };
            let b = {
                let c = c.clone();
                thread::spawn(move || c.probe_done(g2, false, 2, || 9))
            };
            let (ra, rb) = (a.join().unwrap(), b.join().unwrap());
            let (state, _) = c.state();
            match state {
                // b failed first: reopened, a's success is stale.
                State::Open => assert_eq!((ra, rb), (None, Some((State::HalfOpen, State::Open)))),
                // a counted one success (no change), then b reopened.
                _ => panic!("unexpected final state {state:?} after {ra:?} {rb:?}"),
            }
        });
    }

    /// Two probes succeed at once with a threshold of two: exactly one of them closes the
    /// circuit, and the close is never lost.
    #[test]
    fn concurrent_successes_close_exactly_once() {
        loom::model(|| {
            let c = Arc::new(Control::new());
            assert!(c.trip(0, 0));
            let Ok((Admit::Probe(g1), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 1")
            };
            let Ok((Admit::Probe(g2), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 2")
            };
            let t: Vec<_> = [g1, g2]
                .into_iter()
                .map(|g| {
                    let c = c.clone();
                    thread::spawn(move || c.probe_done(g, true, 2, || 9))
                })
                .collect();
            let results: Vec<_> = t.into_iter().map(|h| h.join().unwrap()).collect();
            let closes = results
                .iter()
                .filter(|r| **r == Some((State::HalfOpen, State::Closed)))
                .count();
            assert_eq!(closes, 1, "{results:?}");
            assert_eq!(c.state().0, State::Closed);
        });
    }

    /// A trip racing an admission: the admission sees either the closed generation (and its
    /// outcome will be stale) or the open circuit; the trip is never lost.
    #[test]
    fn trip_racing_admission() {
        loom::model(|| {
            let c = Arc::new(Control::new());
            let a = {
                let c = c.clone();
                thread::spawn(move || c.trip(0, 50))
            };
            let b = {
                let c = c.clone();
                thread::spawn(move || c.acquire(|| 10, 1))
            };
            assert!(a.join().unwrap());
            match b.join().unwrap() {
                Ok((Admit::Normal(0), None)) | Err(Deny::Open(50)) => {}
                other => panic!("unexpected admission {other:?}"),
            }
            assert_eq!(c.state(), (State::Open, 50));
        });
    }

    /// Closing and a concurrent release of a dropped probe: the release never resurrects
    /// a half-open state or underflows the slot count.
    #[test]
    fn release_after_close_is_harmless() {
        loom::model(|| {
            let c = Arc::new(Control::new());
            assert!(c.trip(0, 0));
            let Ok((Admit::Probe(g1), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 1")
            };
            let Ok((Admit::Probe(g2), _)) = c.acquire(|| 0, 2) else {
                panic!("probe 2")
            };
            let a = {
                let c = c.clone();
                thread::spawn(move || c.probe_done(g1, true, 1, || 9))
            };
            let b = {
                let c = c.clone();
                thread::spawn(move || c.release(g2))
            };
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(c.state().0, State::Closed);
            assert_eq!(c.half_open_counts(), (0, 0));
        });
    }
}
