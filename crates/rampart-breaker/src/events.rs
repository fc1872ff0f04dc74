//! Breaker states, transitions and who hears about them.

use std::fmt;
use std::sync::Arc;

use rampart_core::Name;
use tokio::sync::broadcast;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are rejected at once until the recovery timeout has passed.
    Open,
    /// A limited number of probe calls pass; their outcomes close or reopen the circuit.
    HalfOpen,
    /// Opened by an operator: every call is rejected until the breaker is reset.
    ForcedOpen,
    /// Switched off by an operator: every call passes and is still counted, but the breaker
    /// never trips.
    Disabled,
}

impl State {
    /// Every state, in a fixed order (for metrics that export one series per state).
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// A stable lowercase name: `closed`, `open`, `half_open`, `forced_open`, `disabled`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a breaker changed state, with the measured values that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// `count` failures in a row reached the `threshold`.
    ConsecutiveFailures {
        /// Failures in a row.
        count: u32,
        /// The configured threshold.
        threshold: u32,
    },
    /// The window's failure rate reached the threshold.
    FailureRate {
        /// The measured rate.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
        /// Calls in the window.
        calls: u32,
    },
    /// The window's slow-call rate reached the threshold.
    SlowCallRate {
        /// The measured rate.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
        /// Calls in the window.
        calls: u32,
    },
    /// The recovery timeout passed; probes may go through.
    RecoveryTimeoutElapsed,
    /// A probe failed while half-open.
    ProbeFailed,
    /// Enough probes succeeded.
    ProbesSucceeded {
        /// Successful probes.
        successes: u32,
    },
    /// An operator forced the state through a [`BreakerHandle`](crate::BreakerHandle).
    Admin,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ConsecutiveFailures { count, threshold } => {
                write!(f, "{count} consecutive failures (threshold {threshold})")
            }
            Reason::FailureRate {
                rate,
                threshold,
                calls,
            } => write!(
                f,
                "failure rate {:.1}% over {calls} calls (threshold {:.1}%)",
                rate * 100.0,
                threshold * 100.0
            ),
            Reason::SlowCallRate {
                rate,
                threshold,
                calls,
            } => write!(
                f,
                "slow-call rate {:.1}% over {calls} calls (threshold {:.1}%)",
                rate * 100.0,
                threshold * 100.0
            ),
            Reason::RecoveryTimeoutElapsed => f.pad("recovery timeout elapsed"),
            Reason::ProbeFailed => f.pad("a probe failed"),
            Reason::ProbesSucceeded { successes } => write!(f, "{successes} probes succeeded"),
            Reason::Admin => f.pad("operator action"),
        }
    }
}

/// One state change of one breaker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// The downstream service.
    pub service: Name,
    /// The key of a keyed breaker (host, model, …), if any.
    pub key: Option<Arc<str>>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker {}", self.service)?;
        if let Some(k) = &self.key {
            write!(f, "[{k}]")?;
        }
        write!(f, ": {} -> {} ({})", self.from, self.to, self.reason)
    }
}

/// A callback that hears every transition.
pub type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// How one call through a breaker ended, for metrics
/// (`circuit_breaker_calls_total{service,outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallOutcome {
    /// Admitted and not a failure.
    Success,
    /// Admitted and counted as a failure.
    Failure,
    /// Admitted, not a failure, but slower than the slow-call threshold.
    Slow,
    /// Rejected without calling the service.
    Rejected,
}

impl CallOutcome {
    /// A stable lowercase name: `success`, `failure`, `slow`, `rejected`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            CallOutcome::Success => "success",
            CallOutcome::Failure => "failure",
            CallOutcome::Slow => "slow",
            CallOutcome::Rejected => "rejected",
        }
    }
}

/// Hears every call's outcome: the service's name, the key of a keyed breaker, and the
/// outcome. Setting one moves the breaker's calls off the read-only fast path, so it is for
/// metrics, not for free.
pub type CallObserver = Arc<dyn Fn(&rampart_core::Name, Option<&str>, CallOutcome) + Send + Sync>;

/// Where transitions go: tracing, callbacks and a broadcast channel; and who hears calls.
#[derive(Clone)]
pub(crate) struct Events {
    listeners: Vec<Listener>,
    tx: broadcast::Sender<Transition>,
    pub(crate) calls: Option<CallObserver>,
}

impl Events {
    /// A breaker's (or a keyed layer's) events: the config's hooks and a broadcast channel
    /// of its own.
    pub(crate) fn new(cfg: &crate::config::CircuitBreakerConfig) -> Self {
        Events {
            listeners: cfg.hooks.listeners.clone(),
            tx: broadcast::channel(64).0,
            calls: cfg.hooks.calls.clone(),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.tx.subscribe()
    }

    pub(crate) fn emit(&self, t: Transition) {
        match t.to {
            State::Open | State::ForcedOpen => tracing::warn!(
                service = %t.service,
                key = t.key.as_deref(),
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                service = %t.service,
                key = t.key.as_deref(),
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                "circuit breaker changed state"
            ),
        }
        for l in &self.listeners {
            l(&t);
        }
        // No receivers is fine: nobody subscribed.
        let _ = self.tx.send(t);
    }
}

impl fmt::Debug for Events {
    // (the call observer is a closure: shown as present or not)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("listeners", &self.listeners.len())
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}
