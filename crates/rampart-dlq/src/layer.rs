use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rampart_core::replay::CloneReplay;
use rampart_core::Name;
use tokio::sync::{mpsc, Notify};
use tower_layer::Layer;

use crate::config::{reason_bit, DeadLetterConfig};
use crate::record::{DeadLetterReason, DeadLetterRecord};
use crate::redact::Redactor;
use crate::service::DeadLetter;
use crate::source::{CopyWith, FromInner};

/// Records a request that finally failed — once, after the last attempt, with its true
/// attempt count — in a [`DeadLetterStore`](crate::DeadLetterStore). The caller still gets
/// the original result, unchanged.
///
/// See the [crate docs](crate) for an example and what is recorded when.
///
/// # Sharing
///
/// The layer's store, counters and background queue are made once, by
/// [`new`](Self::new), and shared by every service it makes, their clones and the layer's
/// clones.
///
/// # Requests
///
/// Each call keeps a copy of its request for the record, made by the layer's replayer
/// (`rampart_core::replay::Replay::keep`): [`CloneReplay`] by default, for `Clone`
/// requests; [`replay`](Self::replay) swaps it (`HttpReplay` for requests whose streaming
/// body `BufferBodyLayer` buffered, so that the record and the retries share one buffer).
/// Right above a retry layer that keeps its copy to the end of the call
/// (`RetryLayer::keep_request(true)`), [`request_from_inner`](Self::request_from_inner)
/// copies nothing and records that copy instead: one copy per call, not two.
#[must_use]
pub struct DeadLetterLayer<St, X, C, R = CloneReplay> {
    shared: Arc<Shared<St, X, C>>,
    links: Arc<Links<St, X, C>>,
    replay: R,
}

/// Links per layer: a call takes its thread's, so that calls on up to this many threads
/// never write one shared reference count, whichever service or clone they go through.
const LINKS: usize = 4;

/// A layer's links.
pub(crate) struct Links<St, X, C> {
    links: [Arc<Link<St, X, C>>; LINKS],
}

impl<St, X, C> Links<St, X, C> {
    fn new(shared: &Arc<Shared<St, X, C>>) -> Self {
        Links {
            links: std::array::from_fn(|_| {
                Arc::new(Link {
                    shared: shared.clone(),
                })
            }),
        }
    }

    /// The current thread's link ([`rampart_core::record::thread_slot`]).
    #[inline]
    pub(crate) fn here(&self) -> &Arc<Link<St, X, C>> {
        &self.links[rampart_core::record::thread_slot() % LINKS]
    }

    /// Any link: they all lead to the same state.
    #[inline]
    pub(crate) fn any(&self) -> &Link<St, X, C> {
        &self.links[0]
    }
}

/// A handle on a layer's [`Shared`] state: what a service holds and each of its calls
/// clones, keeping the state alive while the call runs. The alignment keeps each link's
/// reference count on cache lines of its own, so that calls of services holding different
/// links do not write one shared line.
#[repr(align(128))]
pub(crate) struct Link<St, X, C> {
    pub(crate) shared: Arc<Shared<St, X, C>>,
}

impl<St, X, C> Deref for Link<St, X, C> {
    type Target = Shared<St, X, C>;

    fn deref(&self) -> &Shared<St, X, C> {
        &self.shared
    }
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
    pub(crate) progress: Arc<Progress>,
    pub(crate) counters: Arc<Counters>,
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
    pub(crate) recorded: [AtomicU64; DeadLetterReason::ALL.len()],
    pub(crate) write_failures: AtomicU64,
    pub(crate) queued_inline: AtomicU64,
}

/// How far the background writer is: records handed to the queue and records it finished
/// (stored or counted as a write failure). Shared by the layer, its writer task and every
/// [`FlushHandle`], so that it outlives the layer.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) accepted: AtomicU64,
    pub(crate) finished: AtomicU64,
    pub(crate) changed: Notify,
}

impl Progress {
    pub(crate) fn finish_one(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// A record was counted as accepted but did not enter the queue.
    pub(crate) fn unaccept_one(&self) {
        self.accepted.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn pending(&self) -> u64 {
        // `finished` first: a record accepted and finished in between only lowers the result.
        let finished = self.finished.load(Ordering::SeqCst);
        self.accepted
            .load(Ordering::SeqCst)
            .saturating_sub(finished)
    }
}

/// Waits for a [`background`](crate::DeadLetterConfigBuilder::background) queue to be written out; it stays usable after
/// the layer and every service made by it are dropped. Cloning shares it.
///
/// The background writer owns its queue: dropping the layer and its services does not drop
/// queued records, the writer stores them all and then ends. Await [`flush`](Self::flush)
/// before the runtime shuts down (the writer is a task on it) to know they are stored.
///
/// # Example
///
/// ```
/// use rampart_core::classify::IoErrors;
/// use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, DeadLetterStore, MemoryStore};
/// use std::io;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::default();
/// let config = DeadLetterConfig::builder().classifier(IoErrors).background(64).build().unwrap();
/// let layer = DeadLetterLayer::new(config, store.clone());
/// let flush = layer.flush_handle();
/// let svc = layer.layer(service_fn(|_: u64| async { Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied)) }));
/// let _ = svc.oneshot(7).await; // queued, not yet stored
/// drop(layer); // the queue is not dropped with the layer
/// flush.flush().await;
/// assert_eq!(store.stats().await.unwrap().records, 1);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FlushHandle {
    progress: Arc<Progress>,
}

impl FlushHandle {
    /// Resolves once the background queue is empty: every record queued so far (including
    /// those queued while waiting) is stored, or counted in
    /// [`DeadLetterStats::write_failures`] if the store refused it. Resolves at once when
    /// nothing is queued (or the layer is not in background mode).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops waiting; the writer goes on.
    pub async fn flush(&self) {
        loop {
            let changed = self.progress.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.progress.pending() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Records queued and not yet finished by the writer (including the one being written).
    pub fn pending(&self) -> u64 {
        self.progress.pending()
    }
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
    /// Dead-letters into `store` as `config` says. The layer's state — its counters, its
    /// background queue (if any) and its flush progress — is made here, once, and shared by
    /// every service the layer makes, their clones and the layer's clones. The layer has no
    /// setters: to change a setting, build a new config (e.g. with
    /// [`DeadLetterConfig::to_builder`]) and a new layer.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::classify::IoErrors;
    /// use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, MemoryStore};
    ///
    /// let layer = DeadLetterLayer::new(
    ///     DeadLetterConfig::builder().name("orders").classifier(IoErrors).build()?,
    ///     MemoryStore::default(),
    /// );
    /// assert_eq!(layer.config_name().as_str(), "orders");
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    pub fn new(config: DeadLetterConfig<X, C>, store: St) -> Self {
        let shared = Arc::new(Shared {
            store,
            extractor: config.extractor,
            classifier: config.classifier,
            name: config.name,
            max_attempts: config.max_attempts,
            reasons: config.reasons,
            redactor: config.redactor,
            background: config.background,
            queue: OnceLock::new(),
            progress: Arc::default(),
            counters: Arc::default(),
            queue_name: config.queue_name,
            observer: config.observer,
        });
        DeadLetterLayer {
            replay: CloneReplay,
            links: Arc::new(Links::new(&shared)),
            shared,
        }
    }
}

impl<St, X, C, R> DeadLetterLayer<St, X, C, R> {
    /// Copies each request for its record with `replay` ([`Replay::keep`]), before the call,
    /// instead of the current way ([`CopyWith`]). The layer's store, counters and queue are
    /// kept: this is the same layer.
    ///
    /// [`Replay::keep`]: rampart_core::replay::Replay::keep
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::classify::IoErrors;
    /// use rampart_core::NotReplayable;
    /// use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, MemoryStore};
    ///
    /// // A replayer for a request that is not `Clone`: copy what can be copied.
    /// struct Upload { name: String, chunks: std::vec::IntoIter<Vec<u8>> }
    /// let layer = DeadLetterLayer::new(DeadLetterConfig::builder().classifier(IoErrors).build()?, MemoryStore::default())
    ///     .replay(|u: &Upload| -> Result<Upload, NotReplayable> {
    ///         Ok(Upload { name: u.name.clone(), chunks: Vec::new().into_iter() })
    ///     });
    /// # let _ = layer;
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    pub fn replay<R2>(self, replay: R2) -> DeadLetterLayer<St, X, C, CopyWith<R2>> {
        DeadLetterLayer {
            shared: self.shared,
            links: self.links,
            replay: CopyWith(replay),
        }
    }

    /// Copies no request: a call being recorded takes the request from the service right
    /// below once the call has ended ([`FromInner`]), which must be a retry layer (its
    /// response future implements `rampart_core::replay::KeepsRequest`) made with
    /// `RetryLayer::keep_request(true)`, so that it keeps a copy to the end of every call.
    /// The call is then copied once — by the retry layer, for its attempts — and a
    /// successful call is never copied for the record. What a `rampart::Policy` builds.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::classify::IoErrors;
    /// use rampart_dlq::{DeadLetterConfig, DeadLetterLayer, MemoryStore};
    /// use rampart_retry::RetryLayer;
    /// use tower::ServiceBuilder;
    ///
    /// let stack = ServiceBuilder::new()
    ///     .layer(DeadLetterLayer::new(DeadLetterConfig::builder().classifier(IoErrors).build()?, MemoryStore::default())
    ///         .request_from_inner())
    ///     .layer(RetryLayer::new(IoErrors).keep_request(true));
    /// # let _ = stack;
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    pub fn request_from_inner(self) -> DeadLetterLayer<St, X, C, FromInner> {
        DeadLetterLayer {
            shared: self.shared,
            links: self.links,
            replay: FromInner,
        }
    }

    /// The downstream service's name, as written into records.
    pub fn config_name(&self) -> &Name {
        &self.shared.name
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> DeadLetterStats {
        stats(&self.shared)
    }

    /// A handle that waits for the background queue to be written out, usable after the
    /// layer and its services are dropped.
    pub fn flush_handle(&self) -> FlushHandle {
        FlushHandle {
            progress: self.shared.progress.clone(),
        }
    }

    /// Resolves once every record queued so far is stored (or counted as a write failure);
    /// see [`FlushHandle::flush`].
    pub async fn flush(&self) {
        self.flush_handle().flush().await;
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

impl<St, X, C, R: Clone> Clone for DeadLetterLayer<St, X, C, R> {
    fn clone(&self) -> Self {
        DeadLetterLayer {
            shared: self.shared.clone(),
            links: self.links.clone(),
            replay: self.replay.clone(),
        }
    }
}

impl<St, X, C, R> fmt::Debug for DeadLetterLayer<St, X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .field("background", &self.shared.background)
            .finish_non_exhaustive()
    }
}

impl<S, St, X, C, R: Clone> Layer<S> for DeadLetterLayer<St, X, C, R> {
    type Service = DeadLetter<S, St, X, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter::from_parts(inner, self.links.clone(), self.replay.clone())
    }
}
