//! One circuit breaker's shared state: the atomic state word, the failure counters and the
//! window, and the operator's handle on them.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_core::{CircuitOpen, Name};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::CircuitBreakerConfig;
use crate::events::{CallOutcome, Events, Reason, State, Transition};

use crate::window::{CountWindow, Outcomes, Totals};
use crate::word::{Admit, Control, Deny};

/// The state shared by every clone of one breaker: owned by the layer, its services, their
/// handles and their in-flight calls (each through an `Arc`), and freed with the last of them.
pub(crate) struct Breaker {
    pub(crate) name: Name,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) cfg: CircuitBreakerConfig,
    control: Control,
    /// Failures in a row. A success only reads it, unless it must reset a streak.
    consecutive: AtomicU32,
    trips: AtomicU32,
    window: Option<Outcomes>,
    epoch: Instant,
    events: Events,
}

impl Breaker {
    pub(crate) fn new(
        name: Name,
        key: Option<Arc<str>>,
        cfg: CircuitBreakerConfig,
        events: Events,
    ) -> Arc<Self> {
        let window = cfg.window.map(Outcomes::new);
        Arc::new(Breaker {
            name,
            key,
            cfg,
            control: Control::new(),
            consecutive: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            window,
            epoch: Instant::now(),
            events,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn until_ms(&self, open_for: Duration) -> u64 {
        let at = self.epoch.elapsed().saturating_add(open_for);
        // Round up so that the breaker never half-opens before the full recovery timeout.
        let ms = at.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn retry_in(&self, until_ms: u64) -> Duration {
        Duration::from_millis(until_ms).saturating_sub(self.epoch.elapsed())
    }

    /// The count-window stripe a keyed breaker's one link records into (0 without one).
    pub(crate) fn assign_stripe(&self) -> usize {
        self.window
            .as_ref()
            .and_then(Outcomes::count_window)
            .map_or(0, CountWindow::assign)
    }

    /// How many stripes the count window has (1 without one): link `i` of a layer's
    /// [`Links`](crate::service::Links) records into stripe `i mod stripes`.
    pub(crate) fn stripes(&self) -> usize {
        self.window
            .as_ref()
            .and_then(Outcomes::count_window)
            .map_or(1, CountWindow::stripes)
    }

    /// How many links a layer makes for its calls' reference counts: one per count-window
    /// stripe, or as many as the machine runs threads at once (at most 8) without a window.
    pub(crate) fn links_wanted(&self) -> usize {
        self.window
            .as_ref()
            .and_then(Outcomes::count_window)
            .map_or_else(crate::window::stripes_for_machine, CountWindow::stripes)
    }

    /// `true` if recording an outcome needs the time: slow-call detection or a time window.
    pub(crate) fn needs_clock(&self) -> bool {
        self.cfg.slow_call_duration.is_some()
            || self.window.as_ref().is_some_and(Outcomes::needs_clock)
    }

    /// Asks to make a call.
    #[inline(always)]
    pub(crate) fn acquire(&self) -> Result<Admit, CircuitOpen> {
        self.admit().map_err(|retry_in| self.open(retry_in))
    }

    /// [`acquire`](Self::acquire) with the rejection as its `retry_in` alone: a 16-byte
    /// value that a service keeps between `poll_ready` and `call` (the `CircuitOpen`, with
    /// the service's name, is made only for a rejected call).
    #[inline(always)]
    pub(crate) fn admit(&self) -> Result<Admit, Duration> {
        if let Some(admit) = self.control.closed() {
            return Ok(admit);
        }
        self.acquire_slow()
    }

    /// The error of a call rejected with `retry_in`.
    #[cold]
    pub(crate) fn open(&self, retry_in: Duration) -> CircuitOpen {
        CircuitOpen::new(self.name.clone(), retry_in)
    }

    #[inline(never)]
    fn acquire_slow(&self) -> Result<Admit, Duration> {
        #[allow(clippy::cast_possible_truncation)]
        let permitted = self.cfg.permitted_probes as u16;
        match self.control.acquire(|| self.now_ms(), permitted) {
            Ok((admit, change)) => {
                if let Some((from, to)) = change {
                    self.emit(from, to, Reason::RecoveryTimeoutElapsed);
                }
                Ok(admit)
            }
            Err(deny) => {
                if let Some(calls) = &self.events.calls {
                    calls(&self.name, self.key.as_deref(), CallOutcome::Rejected);
                }
                Err(match deny {
                    Deny::Open(until) => self.retry_in(until),
                    // Never "now": the probes in flight decide within about one
                    // attempt, so come back after a fraction of the recovery timeout.
                    Deny::ProbesBusy => self.cfg.probes_busy_retry_in(),
                    Deny::Forced => Duration::MAX,
                })
            }
        }
    }

    /// Whether a call that will record no outcome may go through, without taking a probe
    /// slot nor moving the state: refused only while the breaker is open (before its recovery
    /// timeout) or forced open. Used for a keyed breaker's first call of a key (see the
    /// `keyed` module).
    pub(crate) fn peek(&self) -> Result<(), CircuitOpen> {
        let (state, until) = self.control.state();
        let retry_in = match state {
            State::Open if self.now_ms() < until => self.retry_in(until),
            State::ForcedOpen => Duration::MAX,
            _ => return Ok(()),
        };
        if let Some(calls) = &self.events.calls {
            calls(&self.name, self.key.as_deref(), CallOutcome::Rejected);
        }
        Err(CircuitOpen::new(self.name.clone(), retry_in))
    }

    /// Records the outcome of an admitted call. `elapsed` is known only when
    /// [`needs_clock`](Self::needs_clock) said so; `stripe` is the count-window stripe of
    /// the call's link.
    #[inline(always)]
    pub(crate) fn record(
        &self,
        admit: Admit,
        failure: bool,
        elapsed: Option<Duration>,
        stripe: usize,
    ) {
        // The hot path: a closed-state success that needs no clock and no observer. It only
        // reads the streak (writing it only to end one) and feeds a count window.
        if !failure
            && elapsed.is_none()
            && self.events.calls.is_none()
            && matches!(admit, Admit::Normal(_))
        {
            match &self.window {
                None => {
                    self.end_streak();
                    return;
                }
                Some(Outcomes::Count(w)) => {
                    self.end_streak();
                    w.record(stripe, false, false);
                    return;
                }
                Some(Outcomes::Time(_)) => {}
            }
        }
        self.record_slow(admit, failure, elapsed, stripe);
    }

    /// A success ends the failure streak; the steady success path only reads it.
    #[inline(always)]
    fn end_streak(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Release);
        }
    }

    #[inline(never)]
    fn record_slow(&self, admit: Admit, failure: bool, elapsed: Option<Duration>, stripe: usize) {
        let slow = match (self.cfg.slow_call_duration, elapsed) {
            (Some(limit), Some(took)) => took > limit,
            _ => false,
        };
        if let Some(calls) = &self.events.calls {
            let outcome = match (failure, slow) {
                (true, _) => CallOutcome::Failure,
                (false, true) => CallOutcome::Slow,
                (false, false) => CallOutcome::Success,
            };
            calls(&self.name, self.key.as_deref(), outcome);
        }
        match admit {
            Admit::Normal(gen) => {
                self.count(failure, slow, stripe);
                if (failure || slow) && self.control.is_closed(gen) {
                    self.maybe_trip(gen);
                }
            }
            Admit::Bypass => self.count(failure, slow, stripe),
            Admit::Probe(gen) => {
                let failed = failure || (slow && self.window.is_some());
                #[allow(clippy::cast_possible_truncation)]
                let threshold = self.cfg.success_threshold as u16;
                let fail_limit = self.cfg.probe_fail_limit();
                let change =
                    self.control
                        .probe_done_ratio(gen, !failed, threshold, fail_limit, || {
                            let trip = self.trips.load(Ordering::Acquire).saturating_add(1);
                            self.until_ms(self.cfg.open_duration(trip))
                        });
                match change {
                    Some((from, State::Open)) => {
                        self.trips.fetch_add(1, Ordering::AcqRel);
                        self.emit(from, State::Open, Reason::ProbeFailed);
                    }
                    Some((from, State::Closed)) => {
                        self.reset_counts();
                        self.trips.store(0, Ordering::Release);
                        self.emit(
                            from,
                            State::Closed,
                            Reason::ProbesSucceeded {
                                successes: self.cfg.success_threshold,
                            },
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    /// Gives back a probe slot whose call was dropped.
    pub(crate) fn release(&self, admit: Admit) {
        if let Admit::Probe(gen) = admit {
            self.control.release(gen);
        }
    }

    #[inline]
    fn count(&self, failure: bool, slow: bool, stripe: usize) {
        if failure {
            self.consecutive.fetch_add(1, Ordering::AcqRel);
        } else {
            self.end_streak();
        }
        if let Some(w) = &self.window {
            let now_s = if w.needs_clock() {
                self.epoch.elapsed().as_secs()
            } else {
                0
            };
            w.record(stripe, failure, slow, now_s);
        }
    }

    fn totals(&self) -> Totals {
        match &self.window {
            Some(w) => w.totals(self.epoch.elapsed().as_secs()),
            None => Totals::default(),
        }
    }

    fn maybe_trip(&self, gen: u16) {
        let reason = self.trip_reason();
        let Some(reason) = reason else { return };
        let trip = self.trips.load(Ordering::Acquire).saturating_add(1);
        let until = self.until_ms(self.cfg.open_duration(trip));
        if self.control.trip(gen, until) {
            self.trips.fetch_add(1, Ordering::AcqRel);
            self.consecutive.store(0, Ordering::Release);
            self.emit(State::Closed, State::Open, reason);
        }
    }

    fn trip_reason(&self) -> Option<Reason> {
        let cfg = &self.cfg;
        if let Some(threshold) = cfg.consecutive_failures {
            let count = self.consecutive.load(Ordering::Acquire);
            if count >= threshold {
                return Some(Reason::ConsecutiveFailures { count, threshold });
            }
        }
        if self.window.is_some() {
            let t = self.totals();
            if t.calls >= cfg.minimum_calls {
                if let Some(rate) = t.failure_rate().filter(|r| *r >= cfg.failure_rate) {
                    return Some(Reason::FailureRate {
                        rate,
                        threshold: cfg.failure_rate,
                        calls: t.calls,
                    });
                }
                if cfg.slow_call_duration.is_some() {
                    if let Some(rate) = t.slow_rate().filter(|r| *r >= cfg.slow_call_rate) {
                        return Some(Reason::SlowCallRate {
                            rate,
                            threshold: cfg.slow_call_rate,
                            calls: t.calls,
                        });
                    }
                }
            }
        }
        None
    }

    fn reset_counts(&self) {
        self.consecutive.store(0, Ordering::Release);
        if let Some(w) = &self.window {
            w.reset();
        }
    }

    fn emit(&self, from: State, to: State, reason: Reason) {
        self.events.emit(Transition {
            service: self.name.clone(),
            key: self.key.clone(),
            from,
            to,
            reason,
        });
    }

    pub(crate) fn force(&self, to: State) {
        let until = self.until_ms(self.cfg.recovery_timeout);
        let from = self.control.force(to, until);
        if to == State::Closed {
            self.reset_counts();
            self.trips.store(0, Ordering::Release);
        }
        if from != to {
            self.emit(from, to, Reason::Admin);
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let (state, until) = self.control.state();
        let t = self.totals();
        let (probes_in_flight, probe_successes) = self.control.half_open_counts();
        Snapshot {
            service: self.name.clone(),
            key: self.key.clone(),
            state,
            failure_rate: self.window.as_ref().and(t.failure_rate()),
            slow_call_rate: self.cfg.slow_call_duration.and(t.slow_rate()),
            calls_in_window: t.calls,
            consecutive_failures: self.consecutive.load(Ordering::Acquire),
            half_open_in: (state == State::Open).then(|| self.retry_in(until)),
            probes_in_flight,
            probe_successes,
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("state", &self.control.state().0)
            .finish_non_exhaustive()
    }
}

/// A read-only picture of a breaker, for status pages and metrics.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The downstream service.
    pub service: Name,
    /// The key of a keyed breaker.
    pub key: Option<Arc<str>>,
    /// The current state.
    pub state: State,
    /// The window's failure rate, if a window is configured and holds calls.
    pub failure_rate: Option<f64>,
    /// The window's slow-call rate, if slow-call detection is on and the window holds calls.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window.
    pub calls_in_window: u32,
    /// Failures in a row so far.
    pub consecutive_failures: u32,
    /// Time until the open circuit lets probes through.
    pub half_open_in: Option<Duration>,
    /// Probes in flight (half-open only).
    pub probes_in_flight: u32,
    /// Successful probes so far (half-open only).
    pub probe_successes: u32,
}

/// An operator's handle on a breaker: read its state, force it open, switch it off, reset
/// it, or subscribe to its transitions. Cloning it shares the breaker.
///
/// # Example
///
/// ```
/// use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
/// use rampart_core::classify::IoErrors;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rampart_core::ConfigError> {
/// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().name("db").build()?)
///     .classifier(IoErrors);
/// let handle = layer.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.snapshot().state, State::Closed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl BreakerHandle {
    /// The current state.
    pub fn state(&self) -> State {
        self.breaker.control.state().0
    }

    /// A read-only picture of the breaker.
    pub fn snapshot(&self) -> Snapshot {
        self.breaker.snapshot()
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.breaker.force(State::ForcedOpen);
    }

    /// Lets every call through, still counting outcomes, until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.breaker.force(State::Disabled);
    }

    /// Closes the circuit and clears its counts.
    pub fn reset(&self) {
        self.breaker.force(State::Closed);
    }

    /// Receives every transition from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.breaker.subscribe()
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.breaker, f)
    }
}
