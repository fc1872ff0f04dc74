use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::{Backoff, Name};
use tower_layer::Layer;

use crate::budget::RetryBudget;
use crate::replay::CloneReplay;
use crate::service::{CloneService, Config, LinkSet, Links, Retry, Shared};

/// Retries failed calls of the wrapped service: only what the classifier calls transient or
/// throttled, with exponential backoff and jitter, a shared retry budget, server hints
/// (`Retry-After`), an optional overall deadline and an optional per-attempt timeout.
///
/// See the [crate docs](crate) for an example and the exact semantics.
///
/// # Sharing
///
/// The layer owns the [`RetryBudget`]: every service it makes with [`Layer::layer`], and
/// every clone of those services, draws on that one budget. Cloning the layer shares it too;
/// give a layer its own budget with [`budget`](RetryLayer::budget).
///
/// Everything the layer holds is owned: [`Layer::layer`] copies the settings, and clones the
/// service, into a few small allocations per service made (shared by that service's clones
/// and its calls in flight: a call takes the one of its thread, so that calls on different
/// threads touch different reference counts), and all of it is freed when the last layer,
/// service and call using it is dropped.
#[derive(Debug, Clone)]
#[must_use]
pub struct RetryLayer<C, R = CloneReplay, O = ()> {
    classifier: C,
    replay: R,
    observer: O,
    config: Config,
    budget: Option<RetryBudget>,
    /// Numbers the failing calls of every service this layer makes (their jitter streams).
    streams: Arc<AtomicU64>,
}

impl<C> RetryLayer<C> {
    /// A retry layer with the reference design's backoff (3 retries, 1 s, ×2, 60 s cap,
    /// ±10 % jitter), a default [`RetryBudget`], no deadline and no per-attempt timeout.
    ///
    /// `classifier` decides which results are retried; see
    /// [`Classify`](rampart_core::Classify).
    pub fn new(classifier: C) -> Self {
        let budget = RetryBudget::default();
        RetryLayer {
            classifier,
            replay: CloneReplay,
            observer: (),
            config: Config {
                name: Name::default(),
                backoff: Backoff::default(),
                deadline: None,
                attempt_timeout: None,
                breaker_below: false,
                keep_request: false,
            },
            budget: Some(budget),
            streams: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<C, R, O> RetryLayer<C, R, O> {
    /// Names the downstream service, for errors, traces and metrics.
    ///
    /// Defaults to `"default"`.
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Sets the number of retries and the delays between them.
    ///
    /// Defaults to [`Backoff::default`]: 3 retries, 1 s base, factor 2, 60 s cap, ±10 % jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Bounds the whole logical call, retries and waits included. No attempt starts if the
    /// wait before it would cross the deadline, and an attempt in flight when it passes is
    /// cancelled; either way the error is
    /// [`DeadlineExceeded`](rampart_core::ErrorKind::DeadlineExceeded).
    ///
    /// A zero deadline fails every call. Defaults to none.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// Sets or clears the overall deadline (see [`deadline`](Self::deadline)).
    pub fn deadline_opt(mut self, deadline: Option<Duration>) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// Bounds each attempt; an attempt that runs past it fails with
    /// [`Timeout`](rampart_core::ErrorKind::Timeout), which is retried like a transient
    /// failure. Setting it arms a timer on every call, so leave it off when an inner
    /// timeout layer already bounds attempts.
    ///
    /// Defaults to none.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// Takes each attempt's outcome from the circuit breaker placed right below this layer
    /// instead of classifying it a second time, when a dead-letter layer above keeps a
    /// record of the call (see `rampart_core::record`). That breaker must use the same
    /// classifier; a `rampart::Policy` sets this for its own breaker. Only the first breaker
    /// polled below may publish: breakers and retry layers inside the service write nothing
    /// into the call's record either way.
    ///
    /// With it, a `CircuitOpen` error from inside the service (a breaker of the service's
    /// own, which the breaker below admitted the call past) is, to this layer, an attempt
    /// that reached the service and was told to wait `retry_in`: a transient failure with
    /// that hint, retried like a `Retry-After`. Only the breaker below's own refusals are
    /// waited for as an open circuit and are not counted as attempts.
    ///
    /// Defaults to off: every attempt is classified here.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::classify::IoErrors;
    /// use rampart_retry::RetryLayer;
    ///
    /// let layer = RetryLayer::new(IoErrors).breaker_below(true);
    /// # let _ = layer;
    /// ```
    pub fn breaker_below(mut self, on: bool) -> Self {
        self.config.breaker_below = on;
        self
    }

    /// Keeps a copy of each call's request to the end of the call, for the layer above to
    /// take once the call has ended ([`KeepsRequest`](rampart_core::replay::KeepsRequest),
    /// which the [response future](crate::future::ResponseFuture) implements): a dead-letter
    /// layer in `FromInner` mode right above records it instead of copying the request
    /// itself. A `rampart::Policy` sets this when it records dead letters.
    ///
    /// With it, a call holds a copy even with no retries configured, and the last attempt
    /// is sent a copy rather than the copy held (one more copy on a call that uses its last
    /// retry); for a request that cannot be replayed, it holds the partial copy
    /// [`Replay::keep`](crate::Replay::keep) makes (never sent). Without it (the default),
    /// the copy is made only for retries and moved into the last attempt, so the future
    /// hands back a request only when it still holds one.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_core::classify::IoErrors;
    /// use rampart_retry::RetryLayer;
    ///
    /// let layer = RetryLayer::new(IoErrors).keep_request(true);
    /// # let _ = layer;
    /// ```
    pub fn keep_request(mut self, on: bool) -> Self {
        self.config.keep_request = on;
        self
    }

    /// Draws retries from `budget`, which may be shared with other layers.
    ///
    /// Defaults to a new [`RetryBudget::default`] owned by this layer.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retries without a budget: every retryable failure is retried up to `max_retries`
    /// times, however many calls are failing.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Sets how requests are copied for retries.
    ///
    /// Defaults to [`CloneReplay`].
    pub fn replay<R2>(self, replay: R2) -> RetryLayer<C, R2, O> {
        RetryLayer {
            classifier: self.classifier,
            replay,
            observer: self.observer,
            config: self.config,
            budget: self.budget,
            streams: self.streams,
        }
    }

    /// Reports retries, retry attempts and give-ups to `observer`.
    ///
    /// Defaults to `()`, which reports nothing.
    pub fn observer<O2>(self, observer: O2) -> RetryLayer<C, R, O2> {
        RetryLayer {
            classifier: self.classifier,
            replay: self.replay,
            observer,
            config: self.config,
            budget: self.budget,
            streams: self.streams,
        }
    }

    /// The budget this layer draws on, if any.
    pub fn get_budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }
}

impl<C: Clone, R: Clone, O: Clone> RetryLayer<C, R, O> {
    /// Wraps `inner`, with the handles for the calls' retries cloned from services made by
    /// `proto` (one per link, made now) instead of from clones of `inner`: for a stack that
    /// can make its service again but cannot name its type's `Clone` bound (a `Policy` builds
    /// the layers below its retry once more). `proto` must make services equivalent to
    /// `inner` (sharing its state, as clones would).
    #[doc(hidden)]
    pub fn layer_with<S>(&self, inner: S, proto: impl FnMut() -> S) -> Retry<S, C, R, O> {
        let links = self.links(proto);
        self.wrap(inner, links)
    }

    /// The links of one service: the settings, the budget and a service from `proto` each.
    fn links<S>(&self, mut proto: impl FnMut() -> S) -> Links<S> {
        Arc::new(LinkSet {
            links: std::array::from_fn(|_| {
                Arc::new(Shared {
                    config: self.config.clone(),
                    budget: self.budget.clone(),
                    service: Mutex::new(proto()),
                    streams: self.streams.clone(),
                })
            }),
        })
    }

    fn wrap<S>(&self, inner: S, links: Links<S>) -> Retry<S, C, R, O> {
        Retry::from_parts(
            inner,
            self.classifier.clone(),
            self.replay.clone(),
            self.observer.clone(),
            links,
        )
    }
}

impl<S, C, R, O> Layer<S> for RetryLayer<C, R, O>
where
    S: CloneService,
    C: Clone,
    R: Clone,
    O: Clone,
{
    type Service = Retry<S, C, R, O>;

    fn layer(&self, inner: S) -> Self::Service {
        // The links' copies are clones of `inner` itself, made before it moves in.
        let links = self.links(|| inner.clone());
        self.wrap(inner, links)
    }
}
