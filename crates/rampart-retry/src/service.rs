use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Backoff, Classify, Error, IntoError, Jitter, Name};
use tower_service::Service;

use crate::budget::{BudgetRef, RetryBudget};
use crate::future::ResponseFuture;
use crate::layer::RetryLayer;
use crate::observe::RetryObserver;
use crate::replay::{CloneReplay, Replay};

/// A layer's settings. Services and response futures refer to them as an interned
/// `&'static Config`, so that the success path copies one pointer instead of the settings
/// and touches no reference count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) name: Name,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
}

impl Config {
    /// Everything that makes two configurations differ, as hashable bits.
    fn key(&self) -> impl Hash + Eq {
        let b = &self.backoff;
        let jitter = match b.jitter() {
            Jitter::None => (0u8, 0u64),
            Jitter::Proportional(p) => (1, p.to_bits()),
            Jitter::Full => (2, 0),
            Jitter::Equal => (3, 0),
            Jitter::Decorrelated => (4, 0),
            _ => (5, 0),
        };
        (
            self.name,
            (
                b.max_retries(),
                b.base_delay(),
                b.max_delay(),
                b.factor().to_bits(),
                jitter,
                b.seed(),
            ),
            self.deadline,
            self.attempt_timeout,
        )
    }

    /// The process-wide copy of these settings: one per distinct value, kept for the life of
    /// the process (like service [`Name`]s), so configurations are meant to be few.
    pub(crate) fn intern(self) -> &'static Config {
        type Interned = Mutex<HashMap<u64, Vec<&'static Config>>>;
        static CONFIGS: OnceLock<Interned> = OnceLock::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.key().hash(&mut hasher);
        let hash = hasher.finish();
        let mut map = CONFIGS
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = map.entry(hash).or_default();
        let key = self.key();
        if let Some(found) = bucket.iter().find(|c| c.key() == key) {
            return found;
        }
        let leaked: &'static Config = Box::leak(Box::new(self));
        bucket.push(leaked);
        leaked
    }
}

/// Retries failed calls of the inner service. Made by [`RetryLayer`]; see the
/// [crate docs](crate) for semantics and an example.
///
/// # Clone
///
/// Clones share the retry budget. A healthy service's success path only reads the budget (a
/// full budget takes no deposits), so clones on different threads do not contend.
pub struct Retry<S, C, R = CloneReplay, O = ()> {
    inner: S,
    classifier: C,
    replay: R,
    observer: O,
    config: &'static Config,
    /// `config.backoff.max_retries() > 0`, cached off the hot path's pointer chase.
    retries: bool,
    /// A deadline or an attempt timeout is set, cached likewise.
    timed: bool,
    deposits: Deposits,
    streams: Streams,
}

/// Numbers each call's jitter stream: `(clone id << 32) | call index`, so that a seeded
/// backoff gives the same delays for the same sequence of calls, while different calls and
/// different clones never move in lock step.
struct Streams {
    clones: Arc<AtomicU32>,
    base: u64,
    next: u32,
}

impl Streams {
    fn new(clones: Arc<AtomicU32>) -> Self {
        let id = clones.fetch_add(1, Ordering::Relaxed);
        Streams {
            clones,
            base: u64::from(id) << 32,
            next: 0,
        }
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let stream = self.base | u64::from(self.next);
        self.next = self.next.wrapping_add(1);
        stream
    }
}

/// The budget a service deposits into, with its handle precomputed so that `call` need not
/// look inside the `Arc`.
struct Deposits {
    budget: Option<RetryBudget>,
    handle: Option<BudgetRef>,
}

impl Deposits {
    fn new(budget: Option<RetryBudget>) -> Self {
        let handle = budget.as_ref().map(RetryBudget::handle);
        Deposits { budget, handle }
    }

    #[inline]
    fn record(&self) {
        if let Some(budget) = &self.budget {
            budget.deposit_one();
        }
    }
}

impl<S, C> Retry<S, C> {
    /// Wraps `inner` with [`RetryLayer::new(classifier)`](RetryLayer::new)'s defaults.
    pub fn new(inner: S, classifier: C) -> Self
    where
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
        config: &'static Config,
        budget: Option<RetryBudget>,
        clones: Arc<AtomicU32>,
    ) -> Self {
        Retry {
            inner,
            classifier,
            replay,
            observer,
            config,
            retries: config.backoff.max_retries() > 0,
            timed: config.deadline.is_some() || config.attempt_timeout.is_some(),
            deposits: Deposits::new(budget),
            streams: Streams::new(clones),
        }
    }

    /// The downstream service's name.
    pub fn name(&self) -> Name {
        self.config.name
    }

    /// The budget this service draws on, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.deposits.budget.as_ref()
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, C: Clone, R: Clone, O: Clone> Clone for Retry<S, C, R, O> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            observer: self.observer.clone(),
            config: self.config,
            retries: self.retries,
            timed: self.timed,
            deposits: Deposits::new(self.deposits.budget.clone()),
            streams: Streams::new(self.streams.clones.clone()),
        }
    }
}

impl<S: fmt::Debug, C, R, O> fmt::Debug for Retry<S, C, R, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.config.name)
            .field("backoff", &self.config.backoff)
            .field("deadline", &self.config.deadline)
            .field("attempt_timeout", &self.config.attempt_timeout)
            .field("budget", &self.deposits.budget)
            .finish()
    }
}

impl<S, C, R, O, Req> Service<Req> for Retry<S, C, R, O>
where
    S: Service<Req> + Clone,
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
        self.deposits.record();
        let copy = self.retries.then(|| self.replay.replay(&req));
        let future = self.inner.call(req);
        ResponseFuture::new(
            future,
            self.inner.clone(),
            copy,
            self.classifier.clone(),
            self.replay.clone(),
            self.observer.clone(),
            self.config,
            self.timed,
            self.deposits.handle,
            self.streams.next(),
        )
    }
}
