//! The per-call record the layers of one stack share.
//!
//! A policy stack is dead-letter → retry → breaker → attempt timeout → service. Each layer
//! sees a different slice of one logical call: the breaker sees each attempt, the retry layer
//! sees every attempt and why it stopped, the dead-letter layer sees only the final result —
//! which, for a failure returned as a response (a 503 as `Ok`), carries no count at all. So
//! the outermost layer that wants the truth opens a [`CallRecord`] for the call with
//! [`in_scope`], and the layers below write into it with [`update`] while they are polled:
//! the breaker publishes each attempt's [`Outcome`] (so that the retry layer does not classify
//! it a second time), the retry layer counts the attempts that reached the service, the hint
//! and the reason it stopped.
//!
//! The record lives in the outer layer's response future, not on the heap; while that future
//! polls its inner future the record is lent to the current thread and taken back after the
//! poll (nested stacks each lend their own and restore the outer one). Outside a scope,
//! [`update`] does nothing, so every layer still works on its own.
//!
//! # Example
//!
//! ```
//! use rampart_core::record::{self, CallRecord, StopReason};
//! use rampart_core::Outcome;
//!
//! let mut rec = CallRecord::default();
//! record::in_scope(&mut rec, || {
//!     // What a retry layer does after its second attempt failed and it gave up.
//!     record::update(|r| {
//!         r.attempt(true, Outcome::TRANSIENT);
//!         r.attempt(false, Outcome::Rejected);
//!         r.stop = Some(StopReason::CircuitOpen);
//!     });
//! });
//! assert_eq!((rec.tries, rec.reached), (2, 1));
//! assert_eq!(rec.stop, Some(StopReason::CircuitOpen));
//! record::update(|r| r.tries = 99); // outside a scope: nothing happens
//! assert_eq!(rec.tries, 2);
//! ```

use std::cell::RefCell;
use std::time::Duration;

use crate::Outcome;

/// Why a call stopped without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The failure must not be retried (permanent, or the caller's fault).
    NotRetryable,
    /// Every retry was used.
    RetriesExhausted,
    /// The retry budget had no token for another attempt.
    BudgetExhausted,
    /// The overall deadline passed, or the next attempt could not finish before it.
    DeadlineExceeded,
    /// A circuit breaker was open and would not let a probe through in time.
    CircuitOpen,
    /// The service asked to wait (`Retry-After`) longer than the policy allows
    /// (`max_delay`, or the time left before the deadline).
    Throttled,
    /// The request could not be replayed for another attempt.
    NotReplayable,
}

impl StopReason {
    /// A stable lowercase name: `not_retryable`, `retries_exhausted`, `budget_exhausted`,
    /// `deadline_exceeded`, `circuit_open`, `throttled`, `not_replayable`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            StopReason::NotRetryable => "not_retryable",
            StopReason::RetriesExhausted => "retries_exhausted",
            StopReason::BudgetExhausted => "budget_exhausted",
            StopReason::DeadlineExceeded => "deadline_exceeded",
            StopReason::CircuitOpen => "circuit_open",
            StopReason::Throttled => "throttled",
            StopReason::NotReplayable => "not_replayable",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What happened to one logical call so far. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallRecord {
    /// Attempts made into the layers below the retry layer, including those a breaker
    /// rejected.
    pub tries: u32,
    /// Attempts that reached the inner service (`tries` less the breaker's rejections).
    pub reached: u32,
    /// The last attempt's outcome.
    pub last: Option<Outcome>,
    /// The last attempt's retry hint (`Retry-After`), if any.
    pub hint: Option<Duration>,
    /// Why the call stopped, if it stopped without success.
    pub stop: Option<StopReason>,
    /// How long the call has taken, as far as the retry layer measured it.
    pub elapsed: Duration,
    /// The outcome of the attempt that just finished, published by a breaker for the layer
    /// above so that each attempt is classified once. Taken with [`take_outcome`].
    pub pending: Option<Outcome>,
}

impl CallRecord {
    /// Counts one finished attempt: whether it reached the service, and its outcome.
    pub fn attempt(&mut self, reached: bool, outcome: Outcome) {
        self.tries = self.tries.saturating_add(1);
        if reached {
            self.reached = self.reached.saturating_add(1);
        }
        self.last = Some(outcome);
        self.hint = outcome.retry_after();
    }
}

thread_local! {
    static CURRENT: RefCell<Option<CallRecord>> = const { RefCell::new(None) };
}

/// Lends `record` to the layers polled inside `f` (see the [module docs](self)), and takes
/// it back, with their updates, when `f` returns or unwinds.
pub fn in_scope<R>(record: &mut CallRecord, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        record: &'a mut CallRecord,
        outer: Option<CallRecord>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let outer = self.outer.take();
            let mine = CURRENT.with(|c| match c.try_borrow_mut() {
                Ok(mut slot) => std::mem::replace(&mut *slot, outer),
                Err(_) => None,
            });
            if let Some(mine) = mine {
                *self.record = mine;
            }
        }
    }
    let lent = *record;
    let outer = CURRENT.with(|c| match c.try_borrow_mut() {
        Ok(mut slot) => slot.replace(lent),
        Err(_) => None,
    });
    let _restore = Restore { record, outer };
    f()
}

/// Updates the record of the call being polled; does nothing outside [`in_scope`].
pub fn update(f: impl FnOnce(&mut CallRecord)) {
    CURRENT.with(|c| {
        if let Ok(mut slot) = c.try_borrow_mut() {
            if let Some(r) = slot.as_mut() {
                f(r);
            }
        }
    });
}

/// `true` inside [`in_scope`]: a layer above keeps a record of this call.
pub fn is_recording() -> bool {
    CURRENT.with(|c| c.try_borrow().is_ok_and(|r| r.is_some()))
}

/// Publishes the outcome of the attempt that just finished (a breaker does, having
/// classified it) for the layer above.
pub fn publish_outcome(outcome: Outcome) {
    update(|r| r.pending = Some(outcome));
}

/// Takes the outcome a layer below published for the attempt that just finished, if any.
pub fn take_outcome() -> Option<Outcome> {
    let mut out = None;
    update(|r| out = r.pending.take());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_keep_their_own_records() {
        let mut outer = CallRecord::default();
        let mut inner = CallRecord::default();
        in_scope(&mut outer, || {
            update(|r| r.attempt(true, Outcome::Success));
            in_scope(&mut inner, || {
                update(|r| r.attempt(false, Outcome::Rejected));
                publish_outcome(Outcome::Permanent);
            });
            assert_eq!(take_outcome(), None, "the inner scope's outcome stays inside");
            update(|r| r.attempt(true, Outcome::TRANSIENT));
        });
        assert_eq!((outer.tries, outer.reached), (2, 2));
        assert_eq!((inner.tries, inner.reached), (1, 0));
        assert_eq!(inner.pending, Some(Outcome::Permanent));
        assert!(!is_recording());
    }

    #[test]
    fn a_panic_inside_the_scope_restores_the_outer_record() {
        let mut rec = CallRecord::default();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_scope(&mut rec, || {
                update(|r| r.tries = 3);
                panic!("boom");
            })
        }));
        assert!(r.is_err());
        assert_eq!(rec.tries, 3);
        assert!(!is_recording());
    }
}
