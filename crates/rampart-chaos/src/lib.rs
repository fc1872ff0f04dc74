//! `ChaosLayer`: seeded, deterministic fault injection for any tower service.
//!
//! Wrap a service in a [`ChaosLayer`] built from a [`ChaosSpec`] — error kinds with rates,
//! latency distributions, timed outages, 429 storms with a `Retry-After` hint, faults for
//! one key only — and it fails, delays or passes each call as the spec says. The draws come
//! from one seeded RNG in call order and the clock is tokio's, so on a paused clock a run
//! is the same every time: use it in tests, in `rampart simulate`, or in staging to
//! rehearse an incident (change the spec while it runs through a [`ChaosHandle`]).
//!
//! An injected fault never reaches the inner service: the call ends with
//! [`ChaosError::Injected`] carrying the [`Fault`], which [`ChaosClassifier`] (or
//! [`Fault::outcome`]) turns into the rampart [`Outcome`] the fault stands for. A server
//! that wants to answer with, say, an HTTP 429 renders the fault itself.
//!
//! # Example
//!
//! ```
//! use rampart_chaos::{ChaosError, ChaosLayer, FaultKind};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = ChaosLayer::new("transient=50%, outage=10s+5s".parse()?).seed(7);
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! for i in 0..100 {
//!     let _ = svc.clone().oneshot(i).await;
//! }
//! let s = handle.stats();
//! assert_eq!(s.calls, 100);
//! assert!((35..=65).contains(&s.transient), "{s:?}");
//!
//! tokio::time::advance(std::time::Duration::from_secs(11)).await;
//! match svc.clone().oneshot(1).await {
//!     Err(ChaosError::Injected(f)) => assert_eq!(f.kind, FaultKind::Outage),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod spec;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Classify, Outcome};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

pub use spec::{ChaosSpec, Latency, SpecError, Window};

use spec::Plan;

/// What kind of fault was injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// A transient failure drawn at the `transient` rate (a 503, a reset).
    Transient,
    /// Throttled at the `throttled` rate (a 429).
    Throttled,
    /// A permanent failure drawn at the `permanent` rate.
    Permanent,
    /// The caller's fault, drawn at the `rejected` rate (a 400).
    Rejected,
    /// Inside an `outage` window: transient.
    Outage,
    /// Inside a `storm` window: throttled with the storm's hint.
    Storm,
}

impl FaultKind {
    /// A stable lowercase name: `transient`, `throttled`, `permanent`, `rejected`, `outage`,
    /// `storm`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            FaultKind::Transient => "transient",
            FaultKind::Throttled => "throttled",
            FaultKind::Permanent => "permanent",
            FaultKind::Rejected => "rejected",
            FaultKind::Outage => "outage",
            FaultKind::Storm => "storm",
        }
    }
}

/// One injected fault.
///
/// # Example
///
/// ```
/// use rampart_chaos::{Fault, FaultKind};
/// use rampart_core::Outcome;
/// use std::time::Duration;
///
/// let f = Fault { kind: FaultKind::Storm, retry_after: Some(Duration::from_secs(5)) };
/// assert_eq!(f.outcome(), Outcome::Throttled { retry_after: Some(Duration::from_secs(5)) });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What kind.
    pub kind: FaultKind,
    /// The `Retry-After` hint it carries, if any.
    pub retry_after: Option<Duration>,
}

impl Fault {
    /// The rampart outcome this fault stands for.
    pub fn outcome(&self) -> Outcome {
        match self.kind {
            FaultKind::Transient | FaultKind::Outage => Outcome::Transient {
                retry_after: self.retry_after,
            },
            FaultKind::Throttled | FaultKind::Storm => Outcome::Throttled {
                retry_after: self.retry_after,
            },
            FaultKind::Permanent => Outcome::Permanent,
            FaultKind::Rejected => Outcome::Rejected,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected {} fault", self.kind.as_str())?;
        if let Some(d) = self.retry_after {
            write!(f, " (retry after {d:?})")?;
        }
        Ok(())
    }
}

/// The error of a [`ChaosService`]: an injected fault, or the inner service's own error.
///
/// # Example
///
/// ```
/// use rampart_chaos::{ChaosError, Fault, FaultKind};
///
/// let e: ChaosError<std::io::Error> = ChaosError::Injected(Fault { kind: FaultKind::Outage, retry_after: None });
/// assert_eq!(e.to_string(), "injected outage fault");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ChaosError<E> {
    /// The layer injected this fault; the inner service was not called.
    #[error("{0}")]
    Injected(Fault),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

/// A chaos service is a plain (non-rampart) service to the rampart layers around it: its
/// error is their inner error.
impl<E> rampart_core::IntoError for ChaosError<E> {
    type Inner = ChaosError<E>;
    #[inline]
    fn into_error(self) -> rampart_core::Error<ChaosError<E>> {
        rampart_core::Error::from_inner(self)
    }
}

/// Counts of what the layer did, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChaosStats {
    /// Calls seen.
    pub calls: u64,
    /// Calls passed to the inner service.
    pub passed: u64,
    /// Calls given extra latency.
    pub delayed: u64,
    /// Faults injected, by kind.
    pub transient: u64,
    /// See [`FaultKind::Throttled`].
    pub throttled: u64,
    /// See [`FaultKind::Permanent`].
    pub permanent: u64,
    /// See [`FaultKind::Rejected`].
    pub rejected: u64,
    /// See [`FaultKind::Outage`].
    pub outage: u64,
    /// See [`FaultKind::Storm`].
    pub storm: u64,
}

impl ChaosStats {
    fn count(&mut self, kind: FaultKind) {
        let c = match kind {
            FaultKind::Transient => &mut self.transient,
            FaultKind::Throttled => &mut self.throttled,
            FaultKind::Permanent => &mut self.permanent,
            FaultKind::Rejected => &mut self.rejected,
            FaultKind::Outage => &mut self.outage,
            FaultKind::Storm => &mut self.storm,
        };
        *c = c.saturating_add(1);
    }

    /// Faults injected, all kinds.
    pub fn faults(&self) -> u64 {
        self.transient
            .saturating_add(self.throttled)
            .saturating_add(self.permanent)
            .saturating_add(self.rejected)
            .saturating_add(self.outage)
            .saturating_add(self.storm)
    }
}

struct State {
    spec: ChaosSpec,
    rng: SmallRng,
    epoch: Option<Instant>,
    stats: ChaosStats,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws one call's fate: a fault, and extra latency.
    fn decide(&self, key: Option<&str>) -> (Option<Fault>, Option<Duration>) {
        let mut guard = self.lock();
        let State {
            spec,
            rng,
            epoch,
            stats,
        } = &mut *guard;
        let now = Instant::now();
        let t = now.saturating_duration_since(*epoch.get_or_insert(now));
        let keyed = key.and_then(|k| spec.keys.iter().find(|(n, _)| n == k).map(|(_, p)| p));
        let fault = match keyed.and_then(|p| p.draw(t, rng)) {
            Some(f) => Some(f),
            None => spec.all.draw(t, rng),
        };
        let latency = keyed
            .and_then(|p| p.latency)
            .or(spec.all.latency)
            .map(|l| l.sample(rng))
            .filter(|d| !d.is_zero());
        stats.calls = stats.calls.saturating_add(1);
        match fault {
            Some(f) => stats.count(f.kind),
            None => stats.passed = stats.passed.saturating_add(1),
        }
        if latency.is_some() {
            stats.delayed = stats.delayed.saturating_add(1);
        }
        (fault, latency)
    }
}

impl Plan {
    fn draw(&self, t: Duration, rng: &mut SmallRng) -> Option<Fault> {
        if self.outages.iter().any(|w| w.contains(t)) {
            return Some(Fault {
                kind: FaultKind::Outage,
                retry_after: None,
            });
        }
        if let Some((_, hint)) = self.storms.iter().find(|(w, _)| w.contains(t)) {
            return Some(Fault {
                kind: FaultKind::Storm,
                retry_after: Some(*hint),
            });
        }
        let total = self.transient + self.throttled + self.permanent + self.rejected;
        if total <= 0.0 {
            return None;
        }
        let r: f64 = rng.random();
        let mut edge = 0.0;
        for (rate, kind) in [
            (self.transient, FaultKind::Transient),
            (self.throttled, FaultKind::Throttled),
            (self.permanent, FaultKind::Permanent),
            (self.rejected, FaultKind::Rejected),
        ] {
            edge += rate;
            if r < edge {
                let retry_after = match kind {
                    FaultKind::Throttled => self.retry_after,
                    _ => None,
                };
                return Some(Fault { kind, retry_after });
            }
        }
        None
    }
}

impl Latency {
    /// Draws one delay.
    fn sample(&self, rng: &mut SmallRng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => {
                let u: f64 = rng.random();
                lo.saturating_add(hi.saturating_sub(lo).mul_f64(u))
            }
            Latency::Exp(mean) => {
                let u: f64 = rng.random();
                // u in [0, 1): -ln(1 - u) is finite and non-negative.
                let x = (-(1.0 - u).ln()).clamp(0.0, 100.0);
                mean.mul_f64(x)
            }
        }
    }
}

/// Which calls a key-specific clause applies to: [`NoKey`] (none), or a function of the
/// request set with [`ChaosLayer::key_by`].
pub trait ChaosKey<Req> {
    /// The request's key, if any.
    fn key<'a>(&self, req: &'a Req) -> Option<&'a str>;
}

/// No keys: key-specific clauses never apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<Req> ChaosKey<Req> for NoKey {
    fn key<'a>(&self, _: &'a Req) -> Option<&'a str> {
        None
    }
}

/// A key function set with [`ChaosLayer::key_by`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<Req, F> ChaosKey<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<&str>,
{
    fn key<'a>(&self, req: &'a Req) -> Option<&'a str> {
        (self.0)(req)
    }
}

/// Injects the faults of a [`ChaosSpec`] into the service it wraps (see the
/// [crate docs](crate)). Clones share the spec, the RNG, the clock and the counts.
///
/// # Example
///
/// ```
/// use rampart_chaos::{ChaosError, ChaosLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Only shard "b" is down.
/// let layer = ChaosLayer::new("key(b).transient=100%".parse()?)
///     .seed(1)
///     .key_by(|req: &(&'static str, u32)| Some(req.0));
/// let svc = layer.layer(service_fn(|req: (&'static str, u32)| async move { Ok::<_, std::io::Error>(req.1) }));
/// assert_eq!(svc.clone().oneshot(("a", 1)).await?, 1);
/// assert!(matches!(svc.clone().oneshot(("b", 2)).await, Err(ChaosError::Injected(_))));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChaosLayer<K = NoKey> {
    shared: Arc<Shared>,
    key: K,
}

impl<K> fmt::Debug for ChaosLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosLayer")
            .field("spec", &self.shared.lock().spec.to_string())
            .finish_non_exhaustive()
    }
}

impl ChaosLayer<NoKey> {
    /// A layer injecting `spec`'s faults, seeded by the spec's `seed` if it names one and
    /// from the OS otherwise (set one with [`seed`](Self::seed) for a repeatable run).
    pub fn new(spec: ChaosSpec) -> Self {
        let rng = match spec.seed() {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_rng(&mut rand::rng()),
        };
        ChaosLayer {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    spec,
                    rng,
                    epoch: None,
                    stats: ChaosStats::default(),
                }),
            }),
            key: NoKey,
        }
    }
}

impl<K> ChaosLayer<K> {
    /// Seeds the random draws: the same seed and the same calls on the same clock give the
    /// same faults.
    pub fn seed(self, seed: u64) -> Self {
        self.shared.lock().rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// Counts windows (`outage`, `storm`) from `epoch` instead of the first call.
    pub fn epoch(self, epoch: Instant) -> Self {
        self.shared.lock().epoch = Some(epoch);
        self
    }

    /// Reads each request's key with `f`, for `key(NAME).…` clauses.
    pub fn key_by<Req, F>(self, f: F) -> ChaosLayer<KeyFn<F>>
    where
        F: Fn(&Req) -> Option<&str>,
    {
        ChaosLayer {
            shared: self.shared,
            key: KeyFn(f),
        }
    }

    /// A handle to change the spec while the layer runs and to read its counts.
    pub fn handle(&self) -> ChaosHandle {
        ChaosHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, K: Clone> Layer<S> for ChaosLayer<K> {
    type Service = ChaosService<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ChaosService {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// Changes a running [`ChaosLayer`]'s spec and reads its counts.
///
/// # Example
///
/// ```
/// use rampart_chaos::{ChaosLayer, ChaosSpec};
///
/// let layer = ChaosLayer::new(ChaosSpec::none());
/// let handle = layer.handle();
/// handle.set_spec("outage=0s+1m".parse()?); // an incident, now
/// assert_eq!(handle.spec().to_string(), "outage=0s+1m");
/// assert_eq!(handle.stats().calls, 0);
/// # Ok::<(), rampart_chaos::SpecError>(())
/// ```
#[derive(Clone)]
pub struct ChaosHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosHandle").finish_non_exhaustive()
    }
}

impl ChaosHandle {
    /// Replaces the spec from the next call on (the RNG, the epoch and the counts stay).
    pub fn set_spec(&self, spec: ChaosSpec) {
        self.shared.lock().spec = spec;
    }

    /// The spec in force.
    pub fn spec(&self) -> ChaosSpec {
        self.shared.lock().spec.clone()
    }

    /// Restarts the clock: windows count from now.
    pub fn restart(&self) {
        self.shared.lock().epoch = Some(Instant::now());
    }

    /// What the layer has done so far.
    pub fn stats(&self) -> ChaosStats {
        self.shared.lock().stats
    }
}

/// The service a [`ChaosLayer`] makes.
#[derive(Clone)]
pub struct ChaosService<S, K = NoKey> {
    inner: S,
    shared: Arc<Shared>,
    key: K,
}

impl<S: fmt::Debug, K> fmt::Debug for ChaosService<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, Req> Service<Req> for ChaosService<S, K>
where
    S: Service<Req>,
    K: ChaosKey<Req>,
{
    type Response = S::Response;
    type Error = ChaosError<S::Error>;
    type Future = ResponseFuture<S::Future>;

    /// The inner service's readiness: a call that is then failed by the layer leaves the
    /// inner service unused (as a caller that drops a ready service would).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ChaosError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (fault, latency) = self.shared.decide(self.key.key(&req));
        let inner = match fault {
            None => Some(self.inner.call(req)),
            Some(_) => None,
        };
        ResponseFuture {
            sleep: latency.map(|d| Box::pin(tokio::time::sleep(d))),
            fault,
            inner,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`ChaosService`] call: waits out the injected latency, then fails with
    /// the injected fault or yields the inner service's result.
    pub struct ResponseFuture<F> {
        sleep: Option<Pin<Box<Sleep>>>,
        fault: Option<Fault>,
        #[pin]
        inner: Option<F>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, ChaosError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.sleep = None;
        }
        if let Some(f) = this.fault.take() {
            return Poll::Ready(Err(ChaosError::Injected(f)));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(ChaosError::Inner),
            // Polled again after yielding its fault.
            None => Poll::Pending,
        }
    }
}

/// Classifies a [`ChaosService`]'s results: an injected fault by [`Fault::outcome`],
/// everything else by the inner classifier.
///
/// # Example
///
/// ```
/// use rampart_chaos::{ChaosClassifier, ChaosError, Fault, FaultKind};
/// use rampart_core::{classify::IoErrors, Classify, Outcome};
///
/// let c = ChaosClassifier(IoErrors);
/// let storm: ChaosError<std::io::Error> = ChaosError::Injected(Fault { kind: FaultKind::Permanent, retry_after: None });
/// assert_eq!(Classify::<(), _>::classify(&c, Err(&storm)), Outcome::Permanent);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ChaosClassifier<C>(pub C);

impl<Res, E, C> Classify<Res, ChaosError<E>> for ChaosClassifier<C>
where
    C: Classify<Res, E>,
{
    fn classify(&self, result: Result<&Res, &ChaosError<E>>) -> Outcome {
        match result {
            Ok(r) => self.0.classify(Ok(r)),
            Err(ChaosError::Injected(f)) => f.outcome(),
            Err(ChaosError::Inner(e)) => self.0.classify(Err(e)),
        }
    }
}
