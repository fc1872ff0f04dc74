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
//! # Whose record it is
//!
//! Only the stack that opened the record writes into it: the first retry layer polled
//! inside the scope ([`poll_retry`]) and, if that retry layer asked for it, the first
//! breaker polled inside that retry layer — in a `Policy`, its own breaker, which sits right
//! below it. Each of them closes the record to everything it polls below itself, so the
//! layers of the *service* (a bare `CircuitBreakerLayer` or `RetryLayer` inside a client
//! that the policy calls) never count their attempts or publish their outcomes into this
//! call's record: the dead letter says what this stack did.
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

use std::cell::Cell;
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
    /// Why the call stopped, if it stopped without success.
    pub stop: Option<StopReason>,
    /// How long the call has taken, as far as the retry layer measured it.
    pub elapsed: Duration,
    /// The outcome of the attempt that just finished, published by a breaker for the layer
    /// above so that each attempt is classified once. Taken with [`take_outcome`].
    pub pending: Option<Outcome>,
}

impl CallRecord {
    /// A record of nothing yet (what `Default` gives), usable in constants.
    const EMPTY: CallRecord = CallRecord {
        tries: 0,
        reached: 0,
        last: None,
        stop: None,
        elapsed: Duration::ZERO,
        pending: None,
    };

    /// Counts one finished attempt: whether it reached the service, and its outcome.
    pub fn attempt(&mut self, reached: bool, outcome: Outcome) {
        self.tries = self.tries.saturating_add(1);
        if reached {
            self.reached = self.reached.saturating_add(1);
        }
        self.last = Some(outcome);
    }

    /// The last attempt's retry hint (`Retry-After`), if any.
    pub fn hint(&self) -> Option<Duration> {
        self.last.and_then(|o| o.retry_after())
    }
}

/// Which layer polled right now may write into the record in scope.
///
/// A record belongs to one stack: the dead-letter layer that opened it, the first retry
/// layer polled below it, and the breaker that retry layer put right below itself. A
/// service further down may well hold layers of its own (a bare `CircuitBreakerLayer` in a
/// client, another retry); their counts and outcomes are theirs, not this call's, so every
/// participating layer closes the record to everything it polls below itself, except that
/// the record's retry opens it to its own breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No record in scope: every layer works alone.
    Off,
    /// Lent by [`in_scope`]: the first retry layer polled takes it ([`poll_retry`]).
    Retry,
    /// Inside the record's retry, which asked for its breaker's outcomes: the first breaker
    /// polled publishes into it ([`poll_breaker`], [`publish_outcome`]).
    Breaker,
    /// Below the record's layers: nothing polled here writes into it.
    Closed,
}

/// What the current thread is lent while a dead-letter future polls the layers below: the
/// record and who may write into it. Plain cells: lending and taking back copy the record
/// (a few dozen bytes) and nothing else — no borrow flag, no `Option` to unwrap.
struct Scope {
    record: Cell<CallRecord>,
    stage: Cell<Stage>,
    /// The thread's number ([`thread_slot`]), once asked for: a cache of the thread's
    /// identity, not state.
    slot: Cell<usize>,
}

thread_local! {
    static CURRENT: Scope = const {
        Scope {
            record: Cell::new(CallRecord::EMPTY),
            stage: Cell::new(Stage::Off),
            slot: Cell::new(usize::MAX),
        }
    };
}

/// The current thread's number (std's `ThreadId`, which numbers threads in the order they
/// were made), read once per thread and cached here.
///
/// The layers keep a few copies of the state their calls reference-count, each on cache
/// lines of its own, and a call takes the copy `thread_slot() % copies`: calls on different
/// threads (tokio's workers, made one after another, have consecutive numbers) write
/// different lines, however the services were cloned — one clone per worker, or one per
/// request as axum's router makes.
///
/// # Example
///
/// ```
/// let here = rampart_core::record::thread_slot();
/// assert_eq!(here, rampart_core::record::thread_slot());
/// let there = std::thread::spawn(rampart_core::record::thread_slot).join().unwrap();
/// assert_ne!(here, there);
/// ```
#[inline]
pub fn thread_slot() -> usize {
    CURRENT.with(|c| match c.slot.get() {
        usize::MAX => {
            let n = thread_number();
            c.slot.set(n);
            n
        }
        n => n,
    })
}

/// The number in std's `ThreadId` (what its `Hash` writes), without `unsafe` or unstable API.
#[cold]
#[inline(never)]
fn thread_number() -> usize {
    use std::hash::{Hash, Hasher};
    /// Keeps the last `u64` written.
    struct Number(u64);
    impl Hasher for Number {
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut n = Number(0);
    std::thread::current().id().hash(&mut n);
    // Only its low bits are used (modulo a handful of copies); never `usize::MAX`.
    (n.0 as usize) & (usize::MAX >> 1)
}

#[inline]
fn stage() -> Stage {
    CURRENT.with(|c| c.stage.get())
}

/// Puts the stage back when dropped (also on unwind).
struct RestoreStage(Stage);

impl Drop for RestoreStage {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.stage.set(self.0));
    }
}

/// Runs `f` with the stage set to `during`, then restores the current one.
#[inline(always)]
fn with_stage<R>(during: Stage, f: impl FnOnce() -> R) -> R {
    let _restore = RestoreStage(CURRENT.with(|c| c.stage.replace(during)));
    f()
}

/// Lends `record` to the layers polled inside `f` (see the [module docs](self)), and takes
/// it back, with their updates, when `f` returns or unwinds. The first retry layer polled
/// inside `f` is the record's (see [`poll_retry`]).
#[inline]
pub fn in_scope<R>(record: &mut CallRecord, f: impl FnOnce() -> R) -> R {
    /// Takes the record back and restores the outer scope's (a nested stack lends its own
    /// inside this one), also on unwind.
    struct Restore<'a> {
        record: &'a mut CallRecord,
        outer: CallRecord,
        stage: Stage,
    }
    impl Drop for Restore<'_> {
        #[inline]
        fn drop(&mut self) {
            CURRENT.with(|c| {
                *self.record = c.record.replace(self.outer);
                c.stage.set(self.stage);
            });
        }
    }
    let (outer, stage) =
        CURRENT.with(|c| (c.record.replace(*record), c.stage.replace(Stage::Retry)));
    let _restore = Restore {
        record,
        outer,
        stage,
    };
    f()
}

/// Polls the inner future of a retry layer (`f`). If the record in scope is open to a retry
/// layer, this one takes it: while `f` runs, the record is open only to the first breaker
/// polled (when `breaker_below` is set: the retry layer's own breaker, placed right below
/// it, as a `rampart::Policy` does) and closed to everything else; after `f`,
/// [`update`] and [`take_outcome`] reach it again. A retry layer polled anywhere else
/// (nested in the service of another stack) closes the record to everything below it.
#[inline]
pub fn poll_retry<R>(breaker_below: bool, f: impl FnOnce() -> R) -> R {
    match stage() {
        Stage::Off => f(),
        Stage::Retry if breaker_below => with_stage(Stage::Breaker, f),
        _ => with_stage(Stage::Closed, f),
    }
}

/// [`poll_retry`] followed by [`take_outcome`], with one look at the thread's scope: also
/// returns the outcome the retry layer's own breaker published while `f` ran, if this retry
/// layer is the record's. A retry layer outside any record (a bare `RetryLayer`) reads the
/// thread-local once per poll instead of twice.
///
/// # Example
///
/// ```
/// use rampart_core::record::{self, CallRecord};
/// use rampart_core::Outcome;
///
/// // Outside any record nothing is published.
/// assert_eq!(record::poll_retry_taking(true, || 7), (7, None));
///
/// // Inside one, the first retry layer takes what its breaker published.
/// let mut rec = CallRecord::default();
/// record::in_scope(&mut rec, || {
///     let (_, published) = record::poll_retry_taking(true, || {
///         record::poll_breaker_publishing(|| ()).1.publish(Outcome::Success);
///     });
///     assert_eq!(published, Some(Outcome::Success));
/// });
/// ```
#[inline(always)]
pub fn poll_retry_taking<R>(breaker_below: bool, f: impl FnOnce() -> R) -> (R, Option<Outcome>) {
    match stage() {
        Stage::Off => (f(), None),
        Stage::Retry => {
            let during = if breaker_below {
                Stage::Breaker
            } else {
                Stage::Closed
            };
            let r = with_stage(during, f);
            // The stage is `Retry` again: this layer is the record's.
            (r, take_pending())
        }
        _ => (with_stage(Stage::Closed, f), None),
    }
}

/// Polls the inner future of a circuit breaker (`f`), closing the record to everything
/// below: a breaker, retry or other layer inside the service writes nothing into this
/// call's record. After `f`, a breaker polled where the record is open to it may
/// [`publish_outcome`].
#[inline]
pub fn poll_breaker<R>(f: impl FnOnce() -> R) -> R {
    poll_breaker_publishing(f).0
}

/// [`poll_breaker`] for a breaker that publishes its attempt's outcome: also returns whether
/// the record in scope is open to this breaker ([`Publish`]), read with the same look at the
/// thread's scope, so that a breaker outside any record (the common case of a bare breaker)
/// reads the thread-local once per poll instead of twice.
#[inline(always)]
pub fn poll_breaker_publishing<R>(f: impl FnOnce() -> R) -> (R, Publish) {
    match stage() {
        Stage::Off => (f(), Publish(false)),
        before => (
            with_stage(Stage::Closed, f),
            Publish(before == Stage::Breaker),
        ),
    }
}

/// Whether a breaker polled with [`poll_breaker_publishing`] may publish its attempt's
/// outcome into the record in scope.
///
/// # Example
///
/// ```
/// use rampart_core::record::{self, CallRecord};
/// use rampart_core::Outcome;
///
/// // Outside any record a breaker publishes nothing.
/// let (answer, publish) = record::poll_breaker_publishing(|| 42);
/// assert_eq!(answer, 42);
/// assert!(!publish.allowed());
/// publish.publish(Outcome::Success); // does nothing
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Publish(bool);

impl Publish {
    /// `true` if the record in scope is open to this breaker.
    pub fn allowed(self) -> bool {
        self.0
    }

    /// Publishes `outcome` for the retry layer above, if allowed (see [`publish_outcome`]).
    #[inline]
    pub fn publish(self, outcome: Outcome) {
        if self.0 {
            // The stage was `Breaker` when this breaker polled, and polling restored it.
            set_pending(outcome);
        }
    }
}

/// Updates the record of the call being polled; does nothing outside [`in_scope`], and
/// nothing for a layer the record is not open to (see [`poll_retry`]).
#[inline]
pub fn update(f: impl FnOnce(&mut CallRecord)) {
    CURRENT.with(|c| {
        if c.stage.get() == Stage::Retry {
            let mut r = c.record.get();
            f(&mut r);
            c.record.set(r);
        }
    });
}

/// `true` inside [`in_scope`] where the layer polled may write into the record: a layer
/// above keeps a record of this call.
pub fn is_recording() -> bool {
    matches!(stage(), Stage::Retry | Stage::Breaker)
}

/// Publishes the outcome of the attempt that just finished (a breaker does, having
/// classified it) for the retry layer above. Only the breaker the record's retry layer
/// opened it to can: anywhere else this does nothing (see [`poll_retry`]).
pub fn publish_outcome(outcome: Outcome) {
    if stage() != Stage::Breaker {
        return;
    }
    set_pending(outcome);
}

/// Sets the pending outcome of the record in scope (the caller knows one is lent).
#[inline]
fn set_pending(outcome: Outcome) {
    CURRENT.with(|c| {
        let mut r = c.record.get();
        r.pending = Some(outcome);
        c.record.set(r);
    });
}

/// Takes the pending outcome of the record in scope (the caller knows the stage is `Retry`).
#[inline]
fn take_pending() -> Option<Outcome> {
    CURRENT.with(|c| {
        let mut r = c.record.get();
        let pending = r.pending.take();
        if pending.is_some() {
            c.record.set(r);
        }
        pending
    })
}

/// Takes the outcome the retry layer's own breaker published for the attempt that just
/// finished, if any.
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
                poll_retry(true, || publish_outcome(Outcome::Permanent));
            });
            assert_eq!(
                take_outcome(),
                None,
                "the inner scope's outcome stays inside"
            );
            update(|r| r.attempt(true, Outcome::TRANSIENT));
        });
        assert_eq!((outer.tries, outer.reached), (2, 2));
        assert_eq!((inner.tries, inner.reached), (1, 0));
        assert_eq!(inner.pending, Some(Outcome::Permanent));
        assert!(!is_recording());
    }

    /// Only the record's retry layer counts, and only its own breaker (the first one polled
    /// inside it, when it asked for one) publishes: the layers of the service below write
    /// nothing.
    #[test]
    fn only_the_records_own_layers_write_into_it() {
        let mut rec = CallRecord::default();
        in_scope(&mut rec, || {
            // The record's retry layer, with its breaker right below.
            poll_retry(true, || {
                // Its breaker polls the service...
                poll_breaker(|| {
                    // ...in which a bare breaker and a bare retry layer of the service run.
                    publish_outcome(Outcome::Rejected);
                    poll_retry(true, || publish_outcome(Outcome::Permanent));
                    update(|r| r.attempt(true, Outcome::Permanent));
                    assert!(!is_recording());
                    assert_eq!(take_outcome(), None);
                });
                // ...and, the attempt over, publishes its own classification.
                publish_outcome(Outcome::TRANSIENT);
                update(|r| r.tries = 99); // not the retry layer's stage: ignored
            });
            assert_eq!(take_outcome(), Some(Outcome::TRANSIENT));
            update(|r| r.attempt(true, Outcome::TRANSIENT));

            // A retry layer that did not ask for its breaker's outcomes: none is published,
            // not even by the first breaker below it.
            poll_retry(false, || {
                poll_breaker(|| ());
                publish_outcome(Outcome::Success);
            });
            assert_eq!(take_outcome(), None);
        });
        assert_eq!((rec.tries, rec.reached), (1, 1));
        assert_eq!(rec.last, Some(Outcome::TRANSIENT));
        assert_eq!(stage(), Stage::Off);
    }

    /// A retry layer polled inside the record's breaker (a client's own retry, say) takes
    /// nothing and leaves the outcome the record's breaker publishes for the record's retry.
    #[test]
    fn a_retry_inside_the_records_breaker_takes_nothing() {
        let mut rec = CallRecord::default();
        in_scope(&mut rec, || {
            let (_, mine) = poll_retry_taking(true, || {
                let ((), publish) = poll_breaker_publishing(|| {
                    let (_, inner) = poll_retry_taking(true, || {
                        poll_breaker_publishing(|| ()).1.publish(Outcome::Permanent);
                    });
                    assert_eq!(inner, None, "closed below the record's breaker");
                });
                publish.publish(Outcome::TRANSIENT);
            });
            assert_eq!(mine, Some(Outcome::TRANSIENT));
            assert_eq!(stage(), Stage::Retry);
        });
        assert_eq!(rec.pending, None, "taken once");
    }

    /// A panic in a nested scope entered below the record's breaker restores every layer
    /// of both.
    #[test]
    fn a_panic_in_a_nested_scope_restores_both() {
        let mut outer = CallRecord::default();
        let mut inner = CallRecord::default();
        in_scope(&mut outer, || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                poll_retry_taking(true, || {
                    poll_breaker(|| {
                        in_scope(&mut inner, || {
                            update(|r| r.tries = 5);
                            panic!("boom");
                        })
                    })
                })
            }));
            assert!(r.is_err());
            assert_eq!(stage(), Stage::Retry, "the outer record's stage is back");
            update(|r| r.tries = 1);
        });
        assert_eq!((outer.tries, inner.tries), (1, 5));
        assert_eq!(stage(), Stage::Off);
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
        assert_eq!(stage(), Stage::Off);
    }
}
