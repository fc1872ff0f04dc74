//! One policy per downstream service: retry, circuit breaker, per-attempt timeout, overall
//! deadline and dead-lettering, built into one layer in the order of the repository's docs/architecture.md.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rampart_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, KeyedCircuitBreaker,
    KeyedCircuitBreakerLayer, KeyedHandle,
};
use rampart_core::{Backoff, ConfigError, Jitter, Name};
use rampart_dlq::{DeadLetter, DeadLetterConfig, DeadLetterLayer, FromInner};
use rampart_retry::{
    AttemptTimeout, AttemptTimeoutLayer, CloneReplay, CloneService, Retry, RetryBudget, RetryLayer,
};
#[cfg(feature = "http")]
use rampart_retry::{BufferBody, BufferBodyLayer, HttpReplay};
use tower_layer::Layer;

use crate::breaker_key::BreakerKey;
use crate::observe::PolicyObserver;

/// The retry budget's settings (see [`RetryBudget`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Share of requests that may be retries.
    pub ratio: f64,
    /// Retries per second always allowed.
    pub min_per_sec: u32,
    /// Saved-up retries at most.
    pub max_tokens: u32,
}

impl Default for BudgetSettings {
    /// A policy's budget: retries may add 30 % to the traffic, plus 10 per second, at most
    /// 100 saved up. 30 % funds every retry of a 20 % independent transient failure rate
    /// (0.2 + 0.04 + 0.008 ≈ 0.25 retries per call) at any request rate, and still bounds a
    /// breaker-less outage to 1.3 attempts per call. (The bare retry layer's
    /// [`RetryBudget`] default is Finagle's 10 %.)
    fn default() -> Self {
        BudgetSettings {
            ratio: POLICY_BUDGET_RATIO,
            min_per_sec: rampart_retry::budget::DEFAULT_MIN_PER_SEC,
            max_tokens: rampart_retry::budget::DEFAULT_MAX_TOKENS,
        }
    }
}

/// A policy's default budget ratio (see [`BudgetSettings::default`]).
const POLICY_BUDGET_RATIO: f64 = 0.3;

/// The dead-letter settings of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterSettings {
    /// The store's cap (`DLQ_MAX_SIZE`).
    pub max_size: usize,
    /// How long records are kept (`DLQ_RETENTION_DAYS`).
    pub retention: Duration,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        DeadLetterSettings {
            max_size: rampart_dlq::store::DEFAULT_MAX_SIZE,
            retention: rampart_dlq::store::DEFAULT_RETENTION,
        }
    }
}

/// A validated policy for one downstream service. Build one with [`Policy::builder`], take a
/// preset with [`Policy::preset`], or load many with [`Policies`](crate::Policies).
///
/// # Example
///
/// ```
/// use rampart::{Policy, classify::IoErrors};
/// use rampart::dlq::{JsonExtractor, MemoryStore};
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let policy = Policy::preset("database")
///     .expect("a preset")
///     .attempt_timeout(Some(Duration::from_millis(500)))
///     .deadline(Some(Duration::from_secs(3)))
///     .build()?;
/// assert_eq!(policy.backoff().max_retries(), 3);
///
/// let svc = ServiceBuilder::new()
///     .layer(policy.layer(IoErrors, MemoryStore::default(), JsonExtractor::default()))
///     .service(service_fn(|q: &'static str| async move { Ok::<_, std::io::Error>(q.len()) }));
/// assert_eq!(svc.oneshot("select 1").await?, 8);
///
/// let bad = Policy::builder("db").attempt_timeout(Some(Duration::from_secs(5))).deadline(Some(Duration::from_secs(1))).build();
/// assert_eq!(bad.unwrap_err().field(), "db.deadline");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    name: Name,
    backoff: Backoff,
    retry: bool,
    budget: Option<BudgetSettings>,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    breaker: Option<CircuitBreakerConfig>,
    keys: KeySettings,
    dead_letter: Option<DeadLetterSettings>,
}

/// A policy's per-key breakers: which key, how many held, how long an idle one is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySettings {
    key: Option<BreakerKey>,
    max_keys: usize,
    idle_ttl: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        KeySettings {
            key: None,
            max_keys: rampart_breaker::DEFAULT_MAX_KEYS,
            idle_ttl: rampart_breaker::DEFAULT_IDLE_TTL,
        }
    }
}

/// The most keys a policy's keyed breaker may be set to hold
/// ([`PolicyBuilder::breaker_max_keys`]): 1,000,000.
pub const MAX_BREAKER_KEYS: usize = 1_000_000;

/// Builds a [`Policy`]; every setter's default is the reference design's.
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder {
    name: Name,
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    factor: f64,
    jitter: Jitter,
    seed: Option<u64>,
    retry: bool,
    budget: Option<BudgetSettings>,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    breaker: Option<CircuitBreakerConfig>,
    keys: KeySettings,
    dead_letter: Option<DeadLetterSettings>,
}

impl Policy {
    /// A builder for service `name`, starting from the reference design's defaults: 3
    /// retries, 1 s, ×2, 60 s cap, ±10 % jitter, a default retry budget, the rate-based
    /// breaker of [`default_breaker`] (the reference's 5 failures / 60 s / 3 successes mapped
    /// onto a failure-rate window), dead-lettering on, no timeouts.
    pub fn builder(name: impl Into<Name>) -> PolicyBuilder {
        let b = Backoff::default();
        PolicyBuilder {
            name: name.into(),
            max_retries: b.max_retries(),
            base_delay: b.base_delay(),
            max_delay: b.max_delay(),
            factor: b.factor(),
            jitter: b.jitter(),
            seed: None,
            retry: true,
            budget: Some(BudgetSettings::default()),
            deadline: None,
            attempt_timeout: None,
            breaker: Some(default_breaker()),
            keys: KeySettings::default(),
            dead_letter: Some(DeadLetterSettings::default()),
        }
    }

    /// The reference design's preset for `name`: `tts` (3 / 1 s / 30 s / ×2), `gemini_api`
    /// (5 / 0.5 s / 10 s / ×2), `database` (3 / 0.1 s / 2 s / ×2), `redis` (3 / 0.1 s / 1 s /
    /// ×2); each with the rate-based breaker of [`default_breaker`] (the reference's 5 /
    /// 60 s / 3 mapped onto a failure-rate window). `None` for other names.
    ///
    /// How each preset behaves under 20 % transient failures, an outage, an outage and
    /// recovery, a `Retry-After` storm, a latency spike, one key down and a flapping
    /// dependency, beside the reference design's plain retry: the `rampart simulate` tables
    /// in the repository's docs/simulate.md.
    pub fn preset(name: &str) -> Option<PolicyBuilder> {
        let (retries, base_ms, max_ms) = match name {
            "tts" => (3, 1_000, 30_000),
            "gemini_api" => (5, 500, 10_000),
            "database" => (3, 100, 2_000),
            "redis" => (3, 100, 1_000),
            _ => return None,
        };
        Some(
            Policy::builder(name)
                .max_retries(retries)
                .base_delay(Duration::from_millis(base_ms))
                .max_delay(Duration::from_millis(max_ms))
                .backoff_factor(2.0),
        )
    }

    /// A builder holding this policy's settings, to derive a changed copy.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::Policy;
    /// let p = Policy::preset("redis").expect("a preset").build()?;
    /// let q = p.to_builder().max_retries(1).build()?;
    /// assert_eq!((q.backoff().max_retries(), q.backoff().max_delay()), (1, p.backoff().max_delay()));
    /// # Ok::<(), rampart::ConfigError>(())
    /// ```
    pub fn to_builder(&self) -> PolicyBuilder {
        let b = &self.backoff;
        PolicyBuilder {
            name: self.name.clone(),
            max_retries: b.max_retries(),
            base_delay: b.base_delay(),
            max_delay: b.max_delay(),
            factor: b.factor(),
            jitter: b.jitter(),
            seed: b.seed(),
            retry: self.retry,
            budget: self.budget,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            breaker: self.breaker.clone(),
            keys: self.keys.clone(),
            dead_letter: self.dead_letter,
        }
    }

    /// The service's name.
    pub fn name(&self) -> Name {
        self.name.clone()
    }
    /// The backoff (and so `max_retries`).
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
    /// Whether retries are on.
    pub fn retry_enabled(&self) -> bool {
        self.retry
    }
    /// The retry budget, if any.
    pub fn budget(&self) -> Option<BudgetSettings> {
        self.budget
    }
    /// The overall deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }
    /// The breaker, if on.
    pub fn breaker(&self) -> Option<&CircuitBreakerConfig> {
        self.breaker.as_ref()
    }
    /// Dead-lettering, if on.
    pub fn dead_letter(&self) -> Option<DeadLetterSettings> {
        self.dead_letter
    }
    /// The named key of the per-key breakers [`http_layer`](Self::http_layer) builds, if
    /// any (see [`PolicyBuilder::breaker_key`]).
    pub fn breaker_key(&self) -> Option<&BreakerKey> {
        self.keys.key.as_ref()
    }
    /// The most keys a keyed breaker of this policy holds at once.
    pub fn breaker_max_keys(&self) -> usize {
        self.keys.max_keys
    }
    /// How long a key's closed breaker may go unused before it is dropped.
    pub fn breaker_idle_ttl(&self) -> Duration {
        self.keys.idle_ttl
    }

    /// The same policy with its backoff jitter seeded, so that a run on a paused clock is
    /// repeatable (`rampart simulate` seeds every policy it runs).
    ///
    /// ```
    /// let p = rampart::Policy::preset("redis").expect("a preset").build()?.with_seed(7);
    /// assert_eq!(p.backoff().seed(), Some(7));
    /// # Ok::<(), rampart::ConfigError>(())
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Policy {
        let b = self.backoff;
        if let Ok(seeded) = Backoff::builder()
            .max_retries(b.max_retries())
            .base_delay(b.base_delay())
            .max_delay(b.max_delay())
            .factor(b.factor())
            .jitter(b.jitter())
            .seed(seed)
            .build()
        {
            self.backoff = seeded;
        }
        self
    }

    /// The whole stack as one layer, outermost first: dead-lettering, retry (attempts,
    /// backoff, budget, deadline), circuit breaker, per-attempt timeout. A part that is
    /// switched off passes calls through (retry with no retries, a disabled breaker that
    /// still counts, a dead-letter layer that records nothing).
    ///
    /// One breaker for the whole service: a [`breaker_key`](PolicyBuilder::breaker_key) is
    /// not applied here, since a request of any type has no host or header to read. For
    /// HTTP requests use [`http_layer`](Self::http_layer), which applies it; for any key
    /// of your own, [`keyed_layer`](Self::keyed_layer).
    ///
    /// With the `metrics` feature every part reports the reference design's series through
    /// the `metrics` facade (see [`observe`](crate::observe)).
    ///
    /// Requests are copied by cloning (`CloneReplay`), so `Req` must be `Clone`: once per
    /// call, by the retry layer, which keeps its copy to the end of the call for its
    /// attempts and — if the call is dead-lettered — for the record (the dead-letter layer
    /// copies nothing itself, `rampart_dlq::FromInner`). For `http::Request`s whose body streams
    /// use `Policy::layer_streaming` (feature `http`), for other requests
    /// [`PolicyLayer::replay`]. The service under the layer must be `Clone` too (see
    /// [`CloneService`]).
    pub fn layer<C, St, X>(&self, classifier: C, store: St, extractor: X) -> PolicyLayer<C, St, X>
    where
        C: Clone,
    {
        let breaker = self.single_breaker(classifier.clone());
        self.assemble(classifier, store, extractor, breaker)
    }

    /// Like [`layer`](Self::layer), for `http::Request`s whose body streams (hyper's
    /// `Incoming`, axum's `Body`, a `StreamBody`, any `http_body::Body<Data = Bytes> +
    /// Unpin`): a `BufferBodyLayer` above the policy reads each body once, up to a limit
    /// (1 MiB; [`StreamingPolicyLayer::body_limit`] changes it), and the retry layer copies
    /// the request with `HttpReplay` and hands its copy to the dead-letter layer for a
    /// record, so every attempt and the dead-letter record share that one buffer (one copy
    /// of the body per call).
    ///
    /// A body over the limit is not held back: the call is made once, streaming the body
    /// whole. If that attempt fails in a retryable way, the error is
    /// [`ErrorKind::NotReplayable`](crate::ErrorKind::NotReplayable) naming the limit (a
    /// failed *response* is handed back as it is), and the dead-letter record, reason
    /// `not_replayable`, keeps the body's start marked `body_truncated`, so that redrive
    /// skips it. The services below see `Request<ReplayBody<B>>`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use hyper::body::Frame;
    /// use rampart::dlq::{HttpExtractor, MemoryStore};
    /// use rampart::retry::ReplayBody;
    /// use rampart::{Outcome, Policy};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// type Upload = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;
    ///
    /// // The first attempt gets a 503, the retry a 200; both read the whole body.
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let blobs = service_fn(move |req: http::Request<ReplayBody<Upload>>| {
    ///     let s = s.clone();
    ///     async move {
    ///         let body = req.into_body().collect().await?.to_bytes();
    ///         let mut seen = s.lock().unwrap();
    ///         seen.push(body);
    ///         let mut res = http::Response::new(());
    ///         if seen.len() == 1 {
    ///             *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    ///         }
    ///         Ok::<_, std::io::Error>(res)
    ///     }
    /// });
    /// let classify = |r: Result<&http::Response<()>, &std::io::Error>| match r {
    ///     Ok(res) if res.status().is_server_error() => Outcome::TRANSIENT,
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::TRANSIENT,
    /// };
    /// let policy = Policy::builder("blobs").base_delay(Duration::from_millis(10)).build()?;
    /// let svc = ServiceBuilder::new()
    ///     .layer(policy.layer_streaming(classify, MemoryStore::default(), HttpExtractor::default()).body_limit(64 * 1024))
    ///     .service(blobs);
    ///
    /// let chunks = vec![Ok(Frame::data(Bytes::from("part 1, "))), Ok(Frame::data(Bytes::from("part 2")))];
    /// let req = http::Request::put("http://blobs.internal/k").body(StreamBody::new(futures_util::stream::iter(chunks)))?;
    /// assert_eq!(svc.oneshot(req).await?.status(), 200);
    /// assert_eq!(*seen.lock().unwrap(), ["part 1, part 2", "part 1, part 2"]);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn layer_streaming<C, St, X>(
        &self,
        classifier: C,
        store: St,
        extractor: X,
    ) -> StreamingPolicyLayer<C, St, X>
    where
        C: Clone,
    {
        self.layer(classifier, store, extractor)
            .streaming(rampart_retry::http::DEFAULT_BUFFER_LIMIT)
    }

    /// Like [`layer`](Self::layer), with one breaker per key instead of one for the whole
    /// service: `key` picks the key (voice, host, tenant) from a request — a closure
    /// `Fn(&Req) -> K`, a [`BreakerKey`], or any [`KeyOf`](rampart_breaker::KeyOf) — so that
    /// one failing key trips only its own circuit. The breakers sit below the retry layer and
    /// above the per-attempt timeout, so they see every attempt and its timeouts; at most
    /// [`breaker_max_keys`](PolicyBuilder::breaker_max_keys) keys (1,000 by default) are held
    /// at once, and a closed breaker unused for
    /// [`breaker_idle_ttl`](PolicyBuilder::breaker_idle_ttl) (10 minutes) is dropped (see
    /// [`KeyedCircuitBreakerLayer`]).
    ///
    /// With no breaker configured, the keyed breakers count but never trip.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::Policy;
    /// use rampart::dlq::{JsonExtractor, MemoryStore};
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policy = Policy::preset("tts").expect("a preset").breaker_max_keys(64).build()?;
    /// let layer = policy.keyed_layer(
    ///     |r: Result<&u16, &std::io::Error>| match r {
    ///         Ok(200) => rampart::Outcome::Success,
    ///         _ => rampart::Outcome::TRANSIENT,
    ///     },
    ///     MemoryStore::default(),
    ///     JsonExtractor::default(),
    ///     |voice: &&'static str| voice.to_string(),
    /// );
    /// let breakers = layer.keyed_breakers();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service(service_fn(|_voice: &'static str| async { Ok::<u16, std::io::Error>(200) }));
    /// assert_eq!(svc.clone().oneshot("Kore").await?, 200);
    /// assert_eq!(svc.oneshot("Kore").await?, 200);
    /// assert_eq!((breakers.len(), breakers.max_keys()), (1, 64));
    /// # Ok(()) }
    /// ```
    pub fn keyed_layer<C, St, X, F, K>(
        &self,
        classifier: C,
        store: St,
        extractor: X,
        key: F,
    ) -> PolicyLayer<C, St, X, KeyedCircuitBreakerLayer<C, F, K>>
    where
        C: Clone,
    {
        let breaker = self.keyed_breaker(classifier.clone(), key);
        self.assemble(classifier, store, extractor, breaker)
    }

    /// The stack for `http::Request`s as this policy describes it: per-key breakers as in
    /// [`keyed_layer`](Self::keyed_layer), keyed by the policy's
    /// [`breaker_key`](PolicyBuilder::breaker_key) when it has one (and a breaker), else
    /// [`layer`](Self::layer)'s single breaker. This is how a key chosen in a config file
    /// (`key = "host"` under a service's `[circuit_breaker]`) takes effect.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::{BreakerKey, Policy};
    /// use rampart::dlq::{MemoryStore, RequestPart};
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policy = Policy::preset("gemini_api")
    ///     .expect("a preset")
    ///     .breaker_key(Some(BreakerKey::header("x-voice")?))
    ///     .build()?;
    /// let classify = |r: Result<&Response<()>, &std::io::Error>| match r {
    ///     Ok(resp) if resp.status().is_success() => rampart::Outcome::Success,
    ///     _ => rampart::Outcome::TRANSIENT,
    /// };
    /// let extract = |req: &Request<()>| RequestPart {
    ///     summary: req.uri().to_string(),
    ///     payload: Default::default(),
    /// };
    /// let layer = policy.http_layer(classify, MemoryStore::default(), extract);
    /// let breakers = layer.keyed_breakers().expect("keyed by x-voice");
    /// let svc = layer.layer(service_fn(|_req: Request<()>| async {
    ///     Ok::<_, std::io::Error>(Response::new(()))
    /// }));
    /// for _ in 0..2 {
    ///     let req = Request::post("http://tts.local/speak").header("x-voice", "Kore").body(())?;
    ///     svc.clone().oneshot(req).await?;
    /// }
    /// assert!(breakers.get(&"Kore".to_string()).is_some());
    /// # Ok(()) }
    /// ```
    #[cfg(any(feature = "http", feature = "client", feature = "grpc"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "http", feature = "client", feature = "grpc")))
    )]
    pub fn http_layer<C, St, X>(
        &self,
        classifier: C,
        store: St,
        extractor: X,
    ) -> PolicyLayer<C, St, X, PolicyBreakerLayer<C>>
    where
        C: Clone,
    {
        let breaker = match (&self.keys.key, &self.breaker) {
            (Some(key), Some(_)) => {
                PolicyBreakerLayer::Keyed(self.keyed_breaker(classifier.clone(), key.clone()))
            }
            _ => PolicyBreakerLayer::Single(self.single_breaker(classifier.clone())),
        };
        self.assemble(classifier, store, extractor, breaker)
    }

    /// The policy's one breaker, named and observed.
    fn single_breaker<C>(&self, classifier: C) -> CircuitBreakerLayer<C> {
        // The breaker's config was validated when the policy was built, and naming it or
        // adding observers cannot make it invalid: the fallback (unobserved) is unreachable.
        let breaker_cfg = self.breaker.clone().unwrap_or_default();
        let breaker_cfg = crate::observe::breaker(breaker_cfg.to_builder().name(self.name.clone()))
            .build()
            .unwrap_or(breaker_cfg);
        let breaker = CircuitBreakerLayer::new(breaker_cfg).classifier(classifier);
        if self.breaker.is_none() {
            breaker.handle().disable();
        }
        crate::observe::breaker_built(&breaker.handle());
        breaker
    }

    /// The policy's per-key breakers, keyed by `key`.
    fn keyed_breaker<C, F, K>(&self, classifier: C, key: F) -> KeyedCircuitBreakerLayer<C, F, K> {
        // Switched off: breakers that count but, needing 2^32 - 1 failures in a row, never
        // trip.
        let cfg = self.breaker.clone().unwrap_or_else(|| {
            CircuitBreakerConfig::builder()
                .consecutive_failures(Some(u32::MAX))
                .window(None)
                .build()
                .unwrap_or_default()
        });
        // Named and observed like the single breaker (valid as validated: see above).
        let cfg = crate::observe::breaker(cfg.to_builder().name(self.name.clone()))
            .build()
            .unwrap_or(cfg);
        // `max_keys` and `idle_ttl` each start a fresh registry: set right after `new`.
        KeyedCircuitBreakerLayer::new(cfg, classifier, key)
            .max_keys(self.keys.max_keys)
            .idle_ttl(self.keys.idle_ttl)
    }

    #[allow(clippy::unit_arg)] // the observer is `()` without the `metrics` feature
    fn assemble<C, St, X, B>(
        &self,
        classifier: C,
        store: St,
        extractor: X,
        breaker: B,
    ) -> PolicyLayer<C, St, X, B>
    where
        C: Clone,
    {
        // The breaker right below classifies each attempt once and hands the outcome up;
        // nothing inside the service writes into the call's record.
        let mut retry = RetryLayer::new(classifier.clone())
            .name(self.name.clone())
            .deadline_opt(self.deadline)
            .breaker_below(true)
            // The dead-letter layer right above takes the retry layer's copy of a request it
            // records (`FromInner`): one copy per call, shared by the retries and the record.
            .keep_request(self.dead_letter.is_some());
        retry = if self.retry {
            retry.backoff(self.backoff)
        } else {
            retry.backoff(Backoff::none())
        };
        retry = match (self.retry, self.budget) {
            (true, Some(b)) => match RetryBudget::builder()
                .ratio(b.ratio)
                .min_per_sec(b.min_per_sec)
                .max_tokens(b.max_tokens)
                .build()
            {
                Ok(budget) => retry.budget(budget),
                // Validated when the policy was built.
                Err(_) => retry.no_budget(),
            },
            _ => retry.no_budget(),
        };
        let retry = retry.observer(PolicyObserver::default());

        let mut dlq = DeadLetterConfig::builder()
            .name(self.name.clone())
            .max_attempts(self.backoff.max_retries().saturating_add(1));
        if self.dead_letter.is_none() {
            dlq = dlq.record_nothing();
        }
        // Valid (at least one attempt, no background queue); the default is the fallback.
        let dlq = crate::observe::dead_letter(dlq).build().unwrap_or_default();
        let dlq = DeadLetterLayer::new(
            dlq.with_extractor(extractor).with_classifier(classifier),
            store,
        )
        .request_from_inner();

        PolicyLayer {
            dlq,
            retry,
            breaker,
            timeout: AttemptTimeoutLayer::new(self.attempt_timeout),
        }
    }
}

impl PolicyBuilder {
    /// Retries after the first attempt. Defaults to 3.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Delay before the first retry. Defaults to 1 s.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }
    /// Cap on every delay. Defaults to 60 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Growth factor. Defaults to 2.
    pub fn backoff_factor(mut self, f: f64) -> Self {
        self.factor = f;
        self
    }
    /// Jitter. Defaults to ±10 %.
    pub fn jitter(mut self, j: Jitter) -> Self {
        self.jitter = j;
        self
    }
    /// Seeds the jitter. Defaults to none.
    pub fn seed(mut self, seed: Option<u64>) -> Self {
        self.seed = seed;
        self
    }
    /// Switches retries on or off. Defaults to on.
    pub fn retry(mut self, on: bool) -> Self {
        self.retry = on;
        self
    }
    /// The retry budget; `None` retries without one. Defaults to the default budget.
    pub fn budget(mut self, b: Option<BudgetSettings>) -> Self {
        self.budget = b;
        self
    }
    /// The overall deadline. Defaults to none.
    pub fn deadline(mut self, d: Option<Duration>) -> Self {
        self.deadline = d;
        self
    }
    /// The per-attempt timeout. Defaults to none.
    pub fn attempt_timeout(mut self, d: Option<Duration>) -> Self {
        self.attempt_timeout = d;
        self
    }
    /// The breaker; `None` switches it off. Defaults to the reference breaker.
    pub fn breaker(mut self, b: Option<CircuitBreakerConfig>) -> Self {
        self.breaker = b;
        self
    }
    /// Dead-lettering; `None` switches it off. Defaults to on (cap 1,000, 30 days).
    pub fn dead_letter(mut self, d: Option<DeadLetterSettings>) -> Self {
        self.dead_letter = d;
        self
    }
    /// One breaker per value of this part of an HTTP request (host, authority, method, path,
    /// a header), applied by [`Policy::http_layer`]; `None` keeps one breaker for the
    /// service. (A key function of your own, being code, goes to [`Policy::keyed_layer`].)
    /// The config file's `key` under a service's `[circuit_breaker]`. Defaults to none.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::{BreakerKey, Policy};
    /// use std::time::Duration;
    ///
    /// let p = Policy::preset("gemini_api")
    ///     .expect("a preset")
    ///     .breaker_key(Some(BreakerKey::Path)) // one breaker per model endpoint
    ///     .breaker_max_keys(100)
    ///     .breaker_idle_ttl(Duration::from_secs(300))
    ///     .build()?;
    /// assert_eq!(p.breaker_key(), Some(&BreakerKey::Path));
    /// let bad = Policy::builder("tts").breaker_max_keys(0).build().unwrap_err();
    /// assert_eq!(bad.field(), "tts.circuit_breaker.max_keys");
    /// # Ok::<(), rampart::ConfigError>(())
    /// ```
    pub fn breaker_key(mut self, key: Option<BreakerKey>) -> Self {
        self.keys.key = key;
        self
    }
    /// The most keys held at once by a keyed breaker (1 to [`MAX_BREAKER_KEYS`]); past it a
    /// new key evicts an idle closed breaker or shares the overflow breaker (see
    /// [`KeyedCircuitBreakerLayer`]). Defaults to 1,000.
    pub fn breaker_max_keys(mut self, n: usize) -> Self {
        self.keys.max_keys = n;
        self
    }
    /// How long a key's closed breaker may go unused before it is dropped. Defaults to 10
    /// minutes.
    pub fn breaker_idle_ttl(mut self, ttl: Duration) -> Self {
        self.keys.idle_ttl = ttl;
        self
    }

    /// Validates and returns the policy.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] whose field is `<service>.<field>`: invalid backoff values, an
    /// invalid budget, a zero timeout or deadline, a deadline shorter than the per-attempt
    /// timeout, `breaker_max_keys` outside 1 to [`MAX_BREAKER_KEYS`], a zero
    /// `breaker_idle_ttl`, or a duration (delay, deadline, timeout, retention, idle TTL)
    /// longer than [`MAX_DURATION`](rampart_core::MAX_DURATION), 365 days.
    pub fn build(self) -> Result<Policy, ConfigError> {
        let svc = self.name.as_str();
        let at = |e: ConfigError| {
            let field = format!("{svc}.{}", e.field());
            e.with_field(field)
        };
        let mut b = Backoff::builder()
            .max_retries(self.max_retries)
            .base_delay(self.base_delay)
            .max_delay(self.max_delay)
            .factor(self.factor)
            .jitter(self.jitter);
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        let backoff = b.build().map_err(at)?;
        if let Some(b) = self.budget {
            RetryBudget::builder()
                .ratio(b.ratio)
                .min_per_sec(b.min_per_sec)
                .max_tokens(b.max_tokens)
                .build()
                .map_err(at)?;
        }
        for (field, d) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    format!("{svc}.{field}"),
                    Duration::ZERO,
                    "must be positive",
                ));
            }
        }
        for (field, d) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
            (
                "dead_letter.retention",
                self.dead_letter.map(|d| d.retention),
            ),
        ] {
            rampart_core::time::check_duration_opt(format!("{svc}.{field}"), d)?;
        }
        if let (Some(deadline), Some(timeout)) = (self.deadline, self.attempt_timeout) {
            if deadline < timeout {
                return Err(ConfigError::new(
                    format!("{svc}.deadline"),
                    deadline,
                    format!("must not be shorter than attempt_timeout ({timeout:?}): no attempt could use its full timeout"),
                ));
            }
        }
        if self.keys.max_keys == 0 || self.keys.max_keys > MAX_BREAKER_KEYS {
            return Err(ConfigError::new(
                format!("{svc}.circuit_breaker.max_keys"),
                self.keys.max_keys,
                format!("must be between 1 and {MAX_BREAKER_KEYS}"),
            ));
        }
        if self.keys.idle_ttl == Duration::ZERO {
            return Err(ConfigError::new(
                format!("{svc}.circuit_breaker.idle_ttl"),
                Duration::ZERO,
                "must be positive",
            ));
        }
        rampart_core::time::check_duration(
            format!("{svc}.circuit_breaker.idle_ttl"),
            self.keys.idle_ttl,
        )?;
        if let Some(d) = self.dead_letter {
            if d.max_size == 0 {
                return Err(ConfigError::new(
                    format!("{svc}.dead_letter.max_size"),
                    0,
                    "must be at least 1",
                ));
            }
        }
        Ok(Policy {
            name: self.name,
            backoff,
            retry: self.retry,
            budget: self.budget,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            breaker: self.breaker,
            keys: self.keys,
            dead_letter: self.dead_letter,
        })
    }
}

/// The layer a [`Policy`] builds: dead-letter → retry → breaker → per-attempt timeout. The
/// breaker is one for the service ([`Policy::layer`]) or one per key
/// ([`Policy::keyed_layer`]).
///
/// `R` copies each request for the retries and for the dead-letter record: `CloneReplay`
/// (the default, for `Clone` requests), or any `Replay` set with
/// [`replay`](Self::replay). The retry layer makes the one copy per call and keeps it to the
/// end of the call; the dead-letter layer right above takes it only for a call it records
/// (`rampart_dlq::FromInner`). For requests with streaming bodies see
/// `Policy::layer_streaming` / `PolicyLayer::streaming` (feature `http`).
///
/// The service under it must be `Clone` (see [`CloneService`]): each retry calls it again
/// through its own handle.
#[derive(Clone)]
pub struct PolicyLayer<C, St, X, B = CircuitBreakerLayer<C>, R = CloneReplay> {
    dlq: DeadLetterLayer<St, X, C, FromInner>,
    retry: RetryLayer<C, R, PolicyObserver>,
    breaker: B,
    timeout: AttemptTimeoutLayer,
}

impl<C, St, X, R> PolicyLayer<C, St, X, CircuitBreakerLayer<C>, R> {
    /// The breaker's operator handle.
    pub fn breaker(&self) -> rampart_breaker::BreakerHandle {
        self.breaker.handle()
    }
}

impl<C, St, X, F, K, R> PolicyLayer<C, St, X, KeyedCircuitBreakerLayer<C, F, K>, R> {
    /// The keyed breakers' operator handle.
    pub fn keyed_breakers(&self) -> KeyedHandle<K> {
        self.breaker.handle()
    }
}

impl<C, St, X, B, R> PolicyLayer<C, St, X, B, R> {
    /// The dead-letter layer's counters.
    pub fn dead_letters(&self) -> rampart_dlq::DeadLetterStats {
        self.dlq.stats()
    }

    /// Copies requests with `replay` — for the retries' attempts and for the dead-letter
    /// record alike (`Replay::replay`; `Replay::keep` for a request it cannot replay) —
    /// instead of cloning them; still one copy per call, made by the retry layer.
    /// The layer's breaker, budget and dead-letter counters are kept.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::classify::IoErrors;
    /// use rampart::dlq::{JsonExtractor, MemoryStore};
    /// use rampart::{NotReplayable, Policy};
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A request that is not `Clone`, copied by hand.
    /// #[derive(serde::Serialize)]
    /// struct Job { id: u64 }
    /// let layer = Policy::builder("jobs").build()?
    ///     .layer(IoErrors, MemoryStore::default(), JsonExtractor::default())
    ///     .replay(|j: &Job| -> Result<Job, NotReplayable> { Ok(Job { id: j.id }) });
    /// let svc = ServiceBuilder::new().layer(layer).service(service_fn(|j: Job| async move { Ok::<_, std::io::Error>(j.id) }));
    /// assert_eq!(svc.oneshot(Job { id: 7 }).await?, 7);
    /// # Ok(()) }
    /// ```
    pub fn replay<R2: Clone>(self, replay: R2) -> PolicyLayer<C, St, X, B, R2> {
        PolicyLayer {
            dlq: self.dlq,
            retry: self.retry.replay(replay),
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// This policy for `http::Request`s whose body streams, buffering up to `body_limit`
    /// bytes of each body once for the retries and the dead-letter record (see
    /// [`Policy::layer_streaming`]; this form also serves [`Policy::keyed_layer`]).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn streaming(self, body_limit: usize) -> StreamingPolicyLayer<C, St, X, B> {
        StreamingPolicyLayer {
            buffer: BufferBodyLayer::new(body_limit),
            policy: self.replay(HttpReplay),
        }
    }
}

impl<C, St, X, B, R> fmt::Debug for PolicyLayer<C, St, X, B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyLayer")
            .field("dlq", &self.dlq)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The service a [`PolicyLayer`] makes.
///
/// (With another replayer, [`PolicyLayer::replay`], the `R` of `Retry` is that replayer;
/// the dead-letter layer takes the retry layer's copy, `FromInner`.)
pub type PolicyService<S, C, St, X> = DeadLetter<
    Retry<CircuitBreaker<AttemptTimeout<S>, C>, C, CloneReplay, PolicyObserver>,
    St,
    X,
    C,
    FromInner,
>;

/// The service a [`PolicyLayer`] with keyed breakers makes ([`Policy::keyed_layer`]).
pub type KeyedPolicyService<S, C, St, X, F, K> = DeadLetter<
    Retry<KeyedCircuitBreaker<AttemptTimeout<S>, C, F, K>, C, CloneReplay, PolicyObserver>,
    St,
    X,
    C,
    FromInner,
>;

/// The service a [`PolicyLayer`] from [`Policy::http_layer`] makes.
pub type HttpPolicyService<S, C, St, X> = DeadLetter<
    Retry<PolicyBreaker<AttemptTimeout<S>, C>, C, CloneReplay, PolicyObserver>,
    St,
    X,
    C,
    FromInner,
>;

impl<C, St, X, R> PolicyLayer<C, St, X, PolicyBreakerLayer<C>, R> {
    /// The single breaker's handle, if the policy has no [`BreakerKey`].
    pub fn breaker(&self) -> Option<rampart_breaker::BreakerHandle> {
        match &self.breaker {
            PolicyBreakerLayer::Single(b) => Some(b.handle()),
            PolicyBreakerLayer::Keyed(_) => None,
        }
    }

    /// The keyed breakers' handle, if the policy has a [`BreakerKey`].
    pub fn keyed_breakers(&self) -> Option<KeyedHandle<String>> {
        match &self.breaker {
            PolicyBreakerLayer::Single(_) => None,
            PolicyBreakerLayer::Keyed(b) => Some(b.handle()),
        }
    }
}

/// The breaker of a [`Policy::http_layer`]: one for the service, or one per value of the
/// policy's [`BreakerKey`].
#[derive(Clone, Debug)]
pub enum PolicyBreakerLayer<C> {
    /// One breaker for the whole service.
    Single(CircuitBreakerLayer<C>),
    /// One breaker per key.
    Keyed(KeyedCircuitBreakerLayer<C, BreakerKey, String>),
}

impl<S, C: Clone> Layer<S> for PolicyBreakerLayer<C> {
    type Service = PolicyBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        match self {
            PolicyBreakerLayer::Single(b) => PolicyBreaker::Single(b.layer(inner)),
            PolicyBreakerLayer::Keyed(b) => PolicyBreaker::Keyed(b.layer(inner)),
        }
    }
}

/// The service a [`PolicyBreakerLayer`] makes. It serves the requests a [`BreakerKey`] can
/// read (`http::Request<B>` with the `http`, `client` or `grpc` feature).
#[derive(Clone, Debug)]
pub enum PolicyBreaker<S, C> {
    /// One breaker for the whole service.
    Single(CircuitBreaker<S, C>),
    /// One breaker per key.
    Keyed(KeyedCircuitBreaker<S, C, BreakerKey, String>),
}

impl<S, C, Req> tower_service::Service<Req> for PolicyBreaker<S, C>
where
    S: tower_service::Service<Req>,
    S::Error: rampart_core::IntoError,
    C: rampart_core::Classify<S::Response, <S::Error as rampart_core::IntoError>::Inner> + Clone,
    BreakerKey: rampart_breaker::KeyOf<Req, Key = String>,
{
    type Response = S::Response;
    type Error = rampart_core::Error<<S::Error as rampart_core::IntoError>::Inner>;
    type Future = rampart_breaker::future::ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            PolicyBreaker::Single(s) => tower_service::Service::poll_ready(s, cx),
            PolicyBreaker::Keyed(s) => tower_service::Service::poll_ready(s, cx),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            PolicyBreaker::Single(s) => tower_service::Service::call(s, req),
            PolicyBreaker::Keyed(s) => tower_service::Service::call(s, req),
        }
    }
}

impl<S, C: Clone, St, X, B, R: Clone> Layer<S> for PolicyLayer<C, St, X, B, R>
where
    S: CloneService,
    B: Layer<AttemptTimeout<S>>,
{
    type Service = DeadLetter<Retry<B::Service, C, R, PolicyObserver>, St, X, C, FromInner>;

    fn layer(&self, inner: S) -> Self::Service {
        // The retry layer's handles for retries are the layers below built again over clones
        // of `inner` (the same breaker and timeout, as clones would share), so that only
        // `S: Clone` is asked of the caller.
        let seed = inner.clone();
        let below = |s: S| self.breaker.layer(self.timeout.layer(s));
        let s = self.retry.layer_with(below(inner), || below(seed.clone()));
        self.dlq.layer(s)
    }
}

/// A [`PolicyLayer`] for `http::Request`s whose body streams: a `BufferBodyLayer` above the
/// policy, whose retry layer copies requests with `HttpReplay` (and hands its copy to the
/// dead-letter layer for a record). Made by
/// [`Policy::layer_streaming`] or [`PolicyLayer::streaming`].
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
#[derive(Clone)]
pub struct StreamingPolicyLayer<C, St, X, B = CircuitBreakerLayer<C>> {
    buffer: BufferBodyLayer,
    policy: PolicyLayer<C, St, X, B, HttpReplay>,
}

#[cfg(feature = "http")]
impl<C, St, X, B> StreamingPolicyLayer<C, St, X, B> {
    /// Buffers at most `bytes` of each body (1 MiB by default); a larger body is sent once
    /// and never retried.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.buffer = BufferBodyLayer::new(bytes);
        self
    }

    /// The buffer's limit, in bytes.
    pub fn limit(&self) -> usize {
        self.buffer.limit()
    }

    /// The policy under the buffer (its breaker handle, its dead-letter counters).
    pub fn policy(&self) -> &PolicyLayer<C, St, X, B, HttpReplay> {
        &self.policy
    }
}

#[cfg(feature = "http")]
impl<C, St, X, B> fmt::Debug for StreamingPolicyLayer<C, St, X, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingPolicyLayer")
            .field("buffer", &self.buffer)
            .field("policy", &self.policy)
            .finish()
    }
}

#[cfg(feature = "http")]
impl<S, C, St, X, B> Layer<S> for StreamingPolicyLayer<C, St, X, B>
where
    PolicyLayer<C, St, X, B, HttpReplay>: Layer<S>,
{
    type Service = BufferBody<<PolicyLayer<C, St, X, B, HttpReplay> as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        self.buffer.layer(self.policy.layer(inner))
    }
}

/// The service a [`StreamingPolicyLayer`] made by [`Policy::layer_streaming`] makes; it
/// serves `http::Request<B>` and calls `S` with `http::Request<ReplayBody<B>>`.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub type StreamingPolicyService<S, C, St, X> = BufferBody<
    DeadLetter<
        Retry<CircuitBreaker<AttemptTimeout<S>, C>, C, HttpReplay, PolicyObserver>,
        St,
        X,
        C,
        FromInner,
    >,
>;

/// The reference design's `failure_threshold`, mapped: at least this many failures (at the
/// failure rate over twice as many calls) open a policy's circuit.
const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// A policy breaker's `minimum_calls` per failure of the reference's `failure_threshold`
/// (see [`breaker_for`]).
const MINIMUM_CALLS_PER_FAILURE: u32 = 4;
/// The failure rate over the window that opens a policy's circuit.
const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// The window a policy's failure rate is measured over, in seconds.
const DEFAULT_WINDOW_SECONDS: u32 = 10;
/// How long a policy's circuit first stays open; it doubles after each failed probe round up
/// to the reference design's `recovery_timeout` (60 s).
const DEFAULT_FIRST_OPEN: Duration = Duration::from_secs(5);

/// The breaker every policy starts with: the reference design's numbers (`failure_threshold`
/// 5, `recovery_timeout` 60 s, `success_threshold` 3) mapped onto a failure-rate breaker, as
/// Resilience4j and Polly users expect:
///
/// | reference | here |
/// |---|---|
/// | 5 failures in a row | 50 % failures over the last 10 s, with at least 10 calls (so at least 5 failures) |
/// | open 60 s | open 5 s, doubled after every failed probe round, capped at 60 s |
/// | 3 successes close | a round of 3 probes: 2 failures reopen, 3 successes close |
///
/// A bare count of consecutive failures trips by chance under load: at 100 calls/s with
/// 20 % independent failures, 5 in a row happen every ~30 s.
///
/// # Example
///
/// ```
/// use rampart::default_breaker;
/// use rampart::breaker::Window;
/// use std::time::Duration;
///
/// let b = default_breaker();
/// assert_eq!(b.consecutive_failures(), None);
/// assert_eq!(b.window(), Some(Window::Time(10)));
/// assert_eq!((b.failure_rate(), b.minimum_calls()), (0.5, 20));
/// assert_eq!(b.recovery_timeout(), Duration::from_secs(5));
/// assert_eq!(b.max_recovery_timeout(), Duration::from_secs(60));
/// assert_eq!((b.success_threshold(), b.probe_fail_limit()), (3, 2));
/// ```
pub fn default_breaker() -> CircuitBreakerConfig {
    breaker_for(
        DEFAULT_FAILURE_THRESHOLD,
        rampart_breaker::config::DEFAULT_RECOVERY_TIMEOUT,
        rampart_breaker::config::DEFAULT_SUCCESS_THRESHOLD,
    )
}

/// The rate-based breaker for the reference design's `failure_threshold`,
/// `recovery_timeout` and `success_threshold` (see [`default_breaker`]): at least
/// `failures` failures at 50 % over 10 s, open from 5 s (or `recovery` if shorter) growing
/// to `recovery`, `successes` probes.
///
/// # Example
///
/// ```
/// use rampart::breaker_for;
/// use std::time::Duration;
///
/// // The production profile: 10 failures / 120 s.
/// let b = breaker_for(10, Duration::from_secs(120), 3);
/// assert_eq!(b.minimum_calls(), 40);
/// assert_eq!(b.max_recovery_timeout(), Duration::from_secs(120));
/// ```
pub fn breaker_for(failures: u32, recovery: Duration, successes: u32) -> CircuitBreakerConfig {
    // `minimum_calls` = 4 x the reference's `failure_threshold`: with 2 x (10 calls) the
    // window tripped by chance in its first second at 100 calls/s under 20 % independent
    // failures (P(>= 5 of the first 10 fail) ~ 3 %; `rampart simulate --scenario
    // 'transient=20%'`, seed 1: 507 calls rejected, 98.3 % success); with 4 x (20 calls)
    // ~ 0.3 %, and every seed tried succeeded >= 99.99 %.
    let built = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(rampart_breaker::Window::Time(DEFAULT_WINDOW_SECONDS)))
        .failure_rate(DEFAULT_FAILURE_RATE)
        .minimum_calls(failures.max(1).saturating_mul(MINIMUM_CALLS_PER_FAILURE))
        .recovery_timeout(DEFAULT_FIRST_OPEN.min(recovery))
        .max_recovery_timeout(recovery)
        .permitted_probes(successes)
        .success_threshold(successes)
        .build();
    // Out-of-range inputs (zero, a recovery past 365 days) fall back to the mapped defaults.
    built.unwrap_or_else(|_| {
        let mut c = CircuitBreakerConfig::default();
        if let Ok(d) = CircuitBreakerConfig::builder()
            .consecutive_failures(None)
            .window(Some(rampart_breaker::Window::Time(DEFAULT_WINDOW_SECONDS)))
            .minimum_calls(DEFAULT_FAILURE_THRESHOLD * MINIMUM_CALLS_PER_FAILURE)
            .recovery_timeout(DEFAULT_FIRST_OPEN)
            .max_recovery_timeout(rampart_breaker::config::DEFAULT_RECOVERY_TIMEOUT)
            .build()
        {
            c = d;
        }
        c
    })
}

/// Named policies: one per downstream service.
///
/// # Example
///
/// ```
/// use rampart::Policies;
///
/// let p = Policies::presets();
/// assert_eq!(p.get("gemini_api").map(|p| p.backoff().max_retries()), Some(5));
/// let prod = Policies::production();
/// assert_eq!(prod.get("tts").map(|p| p.backoff().max_retries()), Some(5));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    map: BTreeMap<String, Policy>,
}

impl Policies {
    /// The reference design's presets: `tts`, `gemini_api`, `database`, `redis`.
    pub fn presets() -> Self {
        let mut p = Policies::default();
        for name in ["tts", "gemini_api", "database", "redis"] {
            if let Some(Ok(policy)) = Policy::preset(name).map(PolicyBuilder::build) {
                p.insert(policy);
            }
        }
        p
    }

    /// The presets with the reference design's production profile: TTS 5 retries, 2 s base,
    /// 60 s max, breaker 10 failures / 120 s; Gemini 3 / 1 s / 30 s.
    pub fn production() -> Self {
        let mut p = Policies::presets();
        for (name, builder) in production_overrides() {
            if let Ok(policy) = builder.build() {
                p.insert(policy);
            }
            let _ = name;
        }
        p
    }

    /// Adds or replaces a policy.
    pub fn insert(&mut self, p: Policy) {
        self.map.insert(p.name().as_str().to_owned(), p);
    }

    /// The policy named `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.map.get(name)
    }

    /// Every policy, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// The production profile's changes to the presets.
pub(crate) fn production_overrides() -> Vec<(&'static str, PolicyBuilder)> {
    let breaker = Some(breaker_for(10, Duration::from_secs(120), 3));
    let mut out = Vec::new();
    if let Some(tts) = Policy::preset("tts") {
        out.push((
            "tts",
            tts.max_retries(5)
                .base_delay(Duration::from_secs(2))
                .max_delay(Duration::from_secs(60))
                .breaker(breaker),
        ));
    }
    if let Some(g) = Policy::preset("gemini_api") {
        out.push((
            "gemini_api",
            g.max_retries(3)
                .base_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(30)),
        ));
    }
    out
}
