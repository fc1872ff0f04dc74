use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Backoff, Classify, Error, IntoError, Name};
use tower_service::Service;

use crate::budget::RetryBudget;
use crate::future::{Copied, ResponseFuture};
use crate::layer::RetryLayer;
use crate::observe::RetryObserver;
use crate::replay::{CloneReplay, Replay};

/// A service the retry layer can call again: any `Clone` service.
///
/// A call that retries holds its own handle on the service below the retry layer, polls it
/// for readiness before every retry and calls it, so that service must be `Clone` (as under
/// tower's own `Retry`). The handle is cloned when the call's first retry is due, from the
/// copy the layer made when it wrapped the service (after [`Retry::get_mut`], from the
/// calling instance): clones are expected to share what matters (a connection pool, a
/// breaker, a `Buffer`'s worker), as they do for every tower client; a service whose
/// instances keep state of their own that retries must see (a per-instance cursor) is not
/// handled the way tower's `Retry` handles it, which clones the calling instance on every
/// call. A service that is not — a `tower::util::BoxService`,
/// say — can be boxed as a `BoxCloneService` / `BoxCloneSyncService` instead, or put in a
/// `tower::buffer::Buffer`, whose handles are `Clone` and share one worker that owns the
/// service. (Holding one service behind a lock instead would break tower's readiness
/// contract between clones, which is what `Buffer` exists to keep.)
///
/// This trait only names the requirement, so that the compiler's message says what to do;
/// it is implemented for every `Clone` type.
///
/// # Example
///
/// ```
/// fn retryable<S: rampart_retry::CloneService>(_: &S) {}
/// retryable(&tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `Clone`, and the service under a retry layer or a `Policy` must be",
    label = "not `Clone`: each retry calls the service again through its own handle",
    note = "a `tower::util::BoxService` is not `Clone`: box with `BoxCloneService` or `BoxCloneSyncService` instead (`ServiceBuilder::boxed_clone`), or put it in a `tower::buffer::Buffer` under the policy (`ServiceBuilder::new().layer(policy_layer).buffer(1024).service(svc)`)"
)]
pub trait CloneService: Clone {}

#[diagnostic::do_not_recommend]
impl<S: Clone> CloneService for S {}

/// A layer's settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: Name,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    /// Take each attempt's outcome from the breaker right below (`RetryLayer::breaker_below`).
    pub(crate) breaker_below: bool,
    /// Keep a copy of each request to the end of its call (`RetryLayer::keep_request`).
    pub(crate) keep_request: bool,
}

/// What a service's calls share: the settings, the budget and the service the retries go
/// to. The layer makes [`LINKS`] copies per service (its links); a call takes the copy of
/// its thread ([`rampart_core::record::thread_slot`]) and holds a clone of it, so the
/// settings and the budget live exactly as long as a service or a call in flight uses them
/// (a `oneshot` call is budgeted to the end). The reference count a call touches is its
/// link's: calls on different threads take theirs in different cache lines (the alignment
/// keeps each link's count on lines of its own), however the service was cloned.
#[repr(align(128))]
pub(crate) struct Shared<S> {
    pub(crate) config: Config,
    pub(crate) budget: Option<RetryBudget>,
    /// A clone of the inner service, made when the layer wrapped it. A call that needs a
    /// retry clones its own handle from this one (under the lock, once per call that
    /// retries); a call that succeeds first time clones no service at all.
    pub(crate) service: Mutex<S>,
    /// Numbers the calls that fail, for their jitter streams (one counter per layer, shared
    /// by its links and services): a seeded backoff gives the same delays for the same
    /// sequence of calls, and no two calls move in lock step.
    pub(crate) streams: Arc<AtomicU64>,
}

impl<S: Clone> Shared<S> {
    /// A handle on the inner service for a call's retries.
    pub(crate) fn service(&self) -> S {
        // A clone that panicked poisons the lock but leaves the service as it was.
        self.service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Links (copies of [`Shared`]) per service made by a layer: calls on up to this many
/// threads never share a reference count.
pub(crate) const LINKS: usize = 4;

/// A service's links, shared by the service and its clones: a clone takes one reference
/// count (this set's), a call one more (its thread's link).
pub(crate) struct LinkSet<S> {
    pub(crate) links: [Arc<Shared<S>>; LINKS],
}

impl<S> LinkSet<S> {
    /// Any link: they all hold the same settings and budget.
    #[inline]
    fn any(&self) -> &Shared<S> {
        &self.links[0]
    }
}

/// A service's [`LinkSet`].
pub(crate) type Links<S> = Arc<LinkSet<S>>;

/// Retries failed calls of the inner service. Made by [`RetryLayer`]; see the
/// [crate docs](crate) for semantics and an example.
///
/// # Clone
///
/// Clones share the retry budget and the settings (cloning does not allocate; it takes one
/// reference count, besides cloning the inner service). A healthy service's success path
/// only reads the budget (a full budget takes no deposits); each call takes one reference
/// count on its thread's copy of the settings (the layer makes a few per service, so that
/// calls on different threads do not write one shared count, whichever clone they use) and
/// clones nothing else.
pub struct Retry<S, C, R = CloneReplay, O = ()> {
    inner: S,
    classifier: C,
    replay: R,
    observer: O,
    links: Links<S>,
    /// `config.backoff.max_retries() > 0`, cached off the hot path's pointer chase.
    retries: bool,
    /// `config.keep_request`, cached likewise.
    keep: bool,
    /// A budget is set, cached likewise.
    budgeted: bool,
    /// A deadline or an attempt timeout is set, cached likewise.
    timed: bool,
    /// [`get_mut`](Retry::get_mut) was called: this instance's inner service may differ from
    /// the layer's copy, so its calls' retries clone this instance's (as tower's `Retry`
    /// does, for every call).
    detached: bool,
}

impl<S, C> Retry<S, C> {
    /// Wraps `inner` with [`RetryLayer::new(classifier)`](RetryLayer::new)'s defaults.
    pub fn new(inner: S, classifier: C) -> Self
    where
        S: CloneService,
        C: Clone,
    {
        tower_layer::Layer::layer(&RetryLayer::new(classifier), inner)
    }
}

impl<S, C, R, O> Retry<S, C, R, O> {
    pub(crate) fn from_parts(
        inner: S,
        classifier: C,
        replay: R,
        observer: O,
        links: Links<S>,
    ) -> Self {
        let shared = links.any();
        let config = &shared.config;
        Retry {
            inner,
            classifier,
            replay,
            observer,
            retries: config.backoff.max_retries() > 0,
            keep: config.keep_request,
            budgeted: shared.budget.is_some(),
            timed: config.deadline.is_some() || config.attempt_timeout.is_some(),
            detached: false,
            links,
        }
    }

    /// The downstream service's name.
    pub fn name(&self) -> &Name {
        &self.links.any().config.name
    }

    /// The budget this service draws on, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.links.any().budget.as_ref()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    ///
    /// A call that retries normally takes its handle for the retries from the copy of the
    /// inner service the layer kept when it wrapped it (so that a call that succeeds first
    /// time clones nothing). Once this is called, this instance's calls clone its own inner
    /// service instead, so that what is changed here reaches the retries too. (The layer's
    /// copy lives on as long as the layer's services and calls do.)
    pub fn get_mut(&mut self) -> &mut S {
        self.detached = true;
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, R: Clone, O: Clone> Clone for Retry<S, C, R, O> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            observer: self.observer.clone(),
            links: self.links.clone(),
            retries: self.retries,
            keep: self.keep,
            budgeted: self.budgeted,
            timed: self.timed,
            detached: self.detached,
        }
    }
}

impl<S: fmt::Debug, C, R, O> fmt::Debug for Retry<S, C, R, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.links.any().config.name)
            .field("backoff", &self.links.any().config.backoff)
            .field("deadline", &self.links.any().config.deadline)
            .field("attempt_timeout", &self.links.any().config.attempt_timeout)
            .field("budget", &self.links.any().budget)
            .finish()
    }
}

impl<S, C, R, O, Req> Service<Req> for Retry<S, C, R, O>
where
    S: Service<Req> + CloneService,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Clone,
    R: Replay<Req> + Clone,
    O: RetryObserver + Clone,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S, Req, C, R, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let slot = rampart_core::record::thread_slot();
        let shared = &self.links.links[slot % LINKS];
        if let (true, Some(budget)) = (self.budgeted, &shared.budget) {
            // Each thread deposits into its own stripe: no cache line shared with calls on
            // other threads (see `budget`'s "Hot path").
            budget.deposit_in(slot);
        }
        let copy = if self.retries | self.keep {
            Copied::of(&self.replay, &req, self.retries, self.keep)
        } else {
            Copied::NONE
        };
        let shared = shared.clone();
        // After `get_mut`, the handle for the retries is this instance (cloned before the
        // call, so that nothing runs between the inner call and the response future being
        // made: the compiler then builds the inner future in place).
        let own = if self.detached {
            Some(self.inner.clone())
        } else {
            None
        };
        ResponseFuture::new(
            self.inner.call(req),
            own,
            copy,
            self.classifier.clone(),
            self.replay.clone(),
            self.observer.clone(),
            shared,
            self.timed,
        )
    }
}
