use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rampart_core::Name;
use tokio::sync::mpsc;
use tower_layer::Layer;

use crate::record::{DeadLetterReason, DeadLetterRecord};
use crate::redact::Redactor;
use crate::service::DeadLetter;

/// Records a request that finally failed — once, after the last attempt, with its true
/// attempt count — in a [`DeadLetterStore`](crate::DeadLetterStore). The caller still gets
/// the original result, unchanged.
///
/// See the [crate docs](crate) for an example and what is recorded when.
///
/// # Sharing
///
/// The layer's store, counters and background queue are shared by every service it makes
/// and by their clones.
#[must_use]
pub struct DeadLetterLayer<St, X, C> {
    shared: Arc<Shared<St, X, C>>,
}

/// What every service and response future of one layer share.
pub(crate) struct Shared<St, X, C> {
    pub(crate) store: St,
    pub(crate) extractor: X,
    pub(crate) classifier: C,
    pub(crate) name: Name,
    pub(crate) max_attempts: u32,
    pub(crate) reasons: u16,
    pub(crate) redactor: Redactor,
    pub(crate) background: Option<usize>,
    pub(crate) queue: OnceLock<mpsc::Sender<DeadLetterRecord>>,
    pub(crate) counters: Counters,
    pub(crate) queue_name: Name,
    pub(crate) observer: Option<Observer>,
}

/// What a dead-letter layer reports to its observer (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterEvent {
    /// A call was dead-lettered for `reason` (`dead_letters_total{service,reason}`).
    Recorded {
        /// The downstream service.
        service: Name,
        /// Why.
        reason: DeadLetterReason,
    },
    /// The store refused a record (`dead_letter_write_failures_total{store}`).
    WriteFailed {
        /// The store's kind.
        store: &'static str,
    },
    /// The store holds `size` records after a write (`dead_letter_queue_size{queue_name}`).
    Size {
        /// The queue's name.
        queue_name: Name,
        /// Records held.
        size: usize,
    },
}

/// A callback that hears a dead-letter layer's events.
pub type Observer = Arc<dyn Fn(&DeadLetterEvent) + Send + Sync>;

/// What a dead-letter layer has done.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) recorded: [AtomicU64; 7],
    pub(crate) write_failures: AtomicU64,
    pub(crate) queued_inline: AtomicU64,
}

/// A dead-letter layer's counters, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterStats {
    /// Records written, by reason.
    pub recorded: Vec<(DeadLetterReason, u64)>,
    /// Records the store refused (after its own fallback, if any): lost, and logged at error.
    pub write_failures: u64,
    /// Records waiting in the background queue (background mode).
    pub queued: usize,
}

fn reason_bit(r: DeadLetterReason) -> u16 {
    let i = DeadLetterReason::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or(0);
    1 << i
}

impl<St, X, C> Shared<St, X, C> {
    pub(crate) fn records(&self, r: DeadLetterReason) -> bool {
        self.reasons & reason_bit(r) != 0
    }

    pub(crate) fn count(&self, r: DeadLetterReason) {
        if let Some(i) = DeadLetterReason::ALL.iter().position(|x| *x == r) {
            self.counters.recorded[i].fetch_add(1, Ordering::Relaxed);
        }
        if self.observer.is_some() {
            self.emit(&DeadLetterEvent::Recorded {
                service: self.name.clone(),
                reason: r,
            });
        }
    }

    pub(crate) fn emit(&self, e: &DeadLetterEvent) {
        if let Some(o) = &self.observer {
            o(e);
        }
    }
}

impl<St, X, C> DeadLetterLayer<St, X, C> {
    /// Dead-letters into `store`, describing requests with `extractor` and classifying
    /// results with `classifier` (the same classifier as the retry layer's).
    ///
    /// By default every reason but [`Rejected`](DeadLetterReason::Rejected) is recorded, the
    /// record is durable before the caller sees the error, and `max_attempts` is 4 (the
    /// reference design's 3 retries).
    pub fn new(store: St, extractor: X, classifier: C) -> Self {
        let reasons = DeadLetterReason::ALL
            .iter()
            .filter(|r| **r != DeadLetterReason::Rejected)
            .fold(0, |acc, r| acc | reason_bit(*r));
        DeadLetterLayer {
            shared: Arc::new(Shared {
                store,
                extractor,
                classifier,
                name: Name::default(),
                max_attempts: 4,
                reasons,
                redactor: Redactor::default(),
                background: None,
                queue: OnceLock::new(),
                counters: Counters::default(),
                queue_name: Name::from_static("dead_letter_queue"),
                observer: None,
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Shared<St, X, C>)) -> Self {
        match Arc::try_unwrap(self.shared) {
            Ok(mut s) => {
                f(&mut s);
                DeadLetterLayer {
                    shared: Arc::new(s),
                }
            }
            // Already shared with services: configuration is fixed from then on.
            Err(shared) => DeadLetterLayer { shared },
        }
    }

    /// Names the downstream service in records.
    ///
    /// Defaults to `"default"`.
    pub fn name(self, name: impl Into<Name>) -> Self {
        let name = name.into();
        self.edit(|s| s.name = name)
    }

    /// The attempts a call is allowed, written into records as `max_attempts`.
    ///
    /// Defaults to 4.
    pub fn max_attempts(self, n: u32) -> Self {
        self.edit(|s| s.max_attempts = n)
    }

    /// Whether calls that failed for `reason` are recorded.
    ///
    /// Defaults to every reason but `Rejected`.
    pub fn record(self, reason: DeadLetterReason, yes: bool) -> Self {
        self.edit(|s| {
            if yes {
                s.reasons |= reason_bit(reason);
            } else {
                s.reasons &= !reason_bit(reason);
            }
        })
    }

    /// Redacts and truncates error text with `redactor`.
    ///
    /// Defaults to [`Redactor::default`].
    pub fn redactor(self, redactor: Redactor) -> Self {
        self.edit(|s| s.redactor = redactor)
    }

    /// Hands records to a bounded queue of `capacity` drained by a background task, instead
    /// of writing them before the caller sees the error. When the queue is full the record is
    /// written inline, so nothing is dropped; what can be lost is the records still queued if
    /// the process dies (at most `capacity`).
    ///
    /// Defaults to off (durable before the caller sees the error).
    pub fn background(self, capacity: usize) -> Self {
        self.edit(|s| s.background = Some(capacity.max(1)))
    }

    /// Names the queue in the `dead_letter_queue_size{queue_name}` metric.
    ///
    /// Defaults to `"dead_letter_queue"` (the reference design's list).
    pub fn queue_name(self, name: impl Into<Name>) -> Self {
        let name = name.into();
        self.edit(|s| s.queue_name = name)
    }

    /// Reports every dead letter, store failure and the store's size after each write to
    /// `observer` (for metrics).
    ///
    /// Defaults to none.
    pub fn observe(self, observer: impl Fn(&DeadLetterEvent) + Send + Sync + 'static) -> Self {
        let o: Observer = Arc::new(observer);
        self.edit(|s| s.observer = Some(o))
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> DeadLetterStats {
        stats(&self.shared)
    }
}

pub(crate) fn stats<St, X, C>(s: &Shared<St, X, C>) -> DeadLetterStats {
    DeadLetterStats {
        recorded: DeadLetterReason::ALL
            .iter()
            .zip(s.counters.recorded.iter())
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect(),
        write_failures: s.counters.write_failures.load(Ordering::Relaxed),
        queued: s
            .queue
            .get()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity()),
    }
}

impl<St, X, C> Clone for DeadLetterLayer<St, X, C> {
    fn clone(&self) -> Self {
        DeadLetterLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<St, X, C> fmt::Debug for DeadLetterLayer<St, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .field("background", &self.shared.background)
            .finish_non_exhaustive()
    }
}

impl<S, St, X, C> Layer<S> for DeadLetterLayer<St, X, C> {
    type Service = DeadLetter<S, St, X, C>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter::from_parts(inner, self.shared.clone())
    }
}
