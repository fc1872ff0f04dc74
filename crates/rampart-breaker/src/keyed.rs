//! One breaker per key (host, model, voice), so one bad upstream does not open the circuit
//! for the others.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Classify, Error, IntoError, Name};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{Breaker, BreakerHandle, Snapshot};
use crate::config::CircuitBreakerConfig;
use crate::events::{Events, Transition};
use crate::future::{Guard, ResponseFuture};
use crate::service::Local;

/// Default bound on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000;
/// Default idle time after which a key's breaker may be evicted.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(600);

struct Entry {
    local: Arc<Local>,
    last_used: Instant,
}

struct Registry<K> {
    name: Name,
    cfg: CircuitBreakerConfig,
    events: Events,
    max_keys: usize,
    idle_ttl: Duration,
    map: Mutex<HashMap<K, Entry>>,
}

impl<K: Hash + Eq + Clone + fmt::Display> Registry<K> {
    /// The breaker for `key`, made on first use. At the bound, idle breakers are evicted
    /// first, then the least recently used one.
    fn get(&self, key: &K) -> Arc<Local> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get_mut(key) {
            e.last_used = now;
            return e.local.clone();
        }
        if map.len() >= self.max_keys {
            let ttl = self.idle_ttl;
            map.retain(|_, e| now.saturating_duration_since(e.last_used) < ttl);
            if map.len() >= self.max_keys {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        let breaker = Breaker::new(
            self.name.clone(),
            Some(Arc::from(key.to_string())),
            self.cfg,
            self.events.clone(),
        );
        let local = Arc::new(Local::new(breaker));
        map.insert(
            key.clone(),
            Entry {
                local: local.clone(),
                last_used: now,
            },
        );
        local
    }
}

/// One circuit breaker per key, chosen by a closure over the request.
///
/// Every service made by this layer, and every clone, shares one registry of breakers,
/// bounded by [`max_keys`](Self::max_keys); idle breakers are evicted first. The registry is
/// looked up under a lock on every call, so a keyed breaker costs more than a plain one.
///
/// # Example
///
/// ```
/// use rampart_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, State};
/// use rampart_core::classify::IoErrors;
/// use std::io;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = CircuitBreakerConfig::builder().consecutive_failures(Some(1)).build()?;
/// let layer = KeyedCircuitBreakerLayer::new(cfg, IoErrors, |host: &&'static str| host.to_string());
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|host: &'static str| async move {
///     if host == "bad.example" { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) } else { Ok(()) }
/// }));
/// let _ = svc.clone().oneshot("bad.example").await;
/// svc.clone().oneshot("good.example").await?;
/// assert_eq!(handle.get(&"bad.example".to_string()).map(|h| h.state()), Some(State::Open));
/// assert_eq!(handle.get(&"good.example".to_string()).map(|h| h.state()), Some(State::Closed));
/// # Ok(()) }
/// ```
#[must_use]
pub struct KeyedCircuitBreakerLayer<C, F, K> {
    registry: Arc<Registry<K>>,
    classifier: C,
    key: F,
}

impl<C, F, K> KeyedCircuitBreakerLayer<C, F, K> {
    /// One breaker with `config` per key that `key` picks from a request.
    pub fn new(config: CircuitBreakerConfig, classifier: C, key: F) -> Self {
        KeyedCircuitBreakerLayer {
            registry: Arc::new(Registry {
                name: Name::default(),
                cfg: config,
                events: Events::default(),
                max_keys: DEFAULT_MAX_KEYS,
                idle_ttl: DEFAULT_IDLE_TTL,
                map: Mutex::new(HashMap::new()),
            }),
            classifier,
            key,
        }
    }

    fn with_registry(mut self, f: impl FnOnce(&mut Registry<K>)) -> Self {
        let old = &self.registry;
        let mut r = Registry {
            name: old.name.clone(),
            cfg: old.cfg,
            events: old.events.clone(),
            max_keys: old.max_keys,
            idle_ttl: old.idle_ttl,
            map: Mutex::new(HashMap::new()),
        };
        f(&mut r);
        self.registry = Arc::new(r);
        self
    }

    /// Names the downstream service.
    ///
    /// Defaults to `"default"`.
    pub fn name(self, name: impl Into<Name>) -> Self {
        let name = name.into();
        self.with_registry(|r| r.name = name)
    }

    /// The most keys held at once.
    ///
    /// Defaults to 1,000.
    pub fn max_keys(self, n: usize) -> Self {
        self.with_registry(|r| r.max_keys = n.max(1))
    }

    /// How long a key must go unused before its breaker may be evicted.
    ///
    /// Defaults to 10 minutes.
    pub fn idle_ttl(self, ttl: Duration) -> Self {
        self.with_registry(|r| r.idle_ttl = ttl)
    }

    /// Calls `listener` on every transition of every key's breaker.
    ///
    /// Defaults to no listener.
    pub fn on_transition(self, listener: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        let l: crate::events::Listener = Arc::new(listener);
        self.with_registry(|r| r.events.add(l))
    }

    /// Reports every call's outcome to `observer` (for metrics).
    ///
    /// Defaults to none.
    pub fn observe_calls(
        self,
        observer: impl Fn(&Name, Option<&str>, crate::events::CallOutcome) + Send + Sync + 'static,
    ) -> Self {
        let o: crate::events::CallObserver = Arc::new(observer);
        self.with_registry(|r| r.events.calls = Some(o))
    }

    /// The operator's handle on every key's breaker.
    pub fn handle(&self) -> KeyedHandle<K> {
        KeyedHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<C: Clone, F: Clone, K> Clone for KeyedCircuitBreakerLayer<C, F, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

impl<C, F, K> fmt::Debug for KeyedCircuitBreakerLayer<C, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.registry.name)
            .field("max_keys", &self.registry.max_keys)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, F: Clone, K> Layer<S> for KeyedCircuitBreakerLayer<C, F, K> {
    type Service = KeyedCircuitBreaker<S, C, F, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

/// A circuit breaker per key. Made by [`KeyedCircuitBreakerLayer`].
///
/// Unlike [`CircuitBreaker`](crate::CircuitBreaker), the key is known only in `call`, so
/// `poll_ready` passes the inner service's readiness through and the decision is made in
/// `call`: a rejected call returns an immediately ready `CircuitOpen` error.
pub struct KeyedCircuitBreaker<S, C, F, K> {
    inner: S,
    registry: Arc<Registry<K>>,
    classifier: C,
    key: F,
}

impl<S, C, F, K> KeyedCircuitBreaker<S, C, F, K> {
    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, C: Clone, F: Clone, K> Clone for KeyedCircuitBreaker<S, C, F, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, C, F, K> fmt::Debug for KeyedCircuitBreaker<S, C, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.registry.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, F, K, Req> Service<Req> for KeyedCircuitBreaker<S, C, F, K>
where
    S: Service<Req>,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Clone,
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + fmt::Display,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        let local = self.registry.get(&key);
        match local.breaker.acquire() {
            Err(open) => ResponseFuture::rejected(open, self.classifier.clone()),
            Ok(admit) => {
                let started = local.needs_clock.then(Instant::now);
                let future = self.inner.call(req);
                ResponseFuture::called(
                    future,
                    Guard::new(&local, admit),
                    self.classifier.clone(),
                    started,
                )
            }
        }
    }
}

/// The operator's handle on a keyed breaker's registry.
pub struct KeyedHandle<K> {
    registry: Arc<Registry<K>>,
}

impl<K> Clone for KeyedHandle<K> {
    fn clone(&self) -> Self {
        KeyedHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("name", &self.registry.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> KeyedHandle<K> {
    /// The handle on `key`'s breaker, if the key is held.
    pub fn get(&self, key: &K) -> Option<BreakerHandle> {
        let map = self
            .registry
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|e| BreakerHandle {
            breaker: e.local.breaker.clone(),
        })
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.registry
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// `true` if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every key's breaker.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let map = self
            .registry
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().map(|e| e.local.breaker.snapshot()).collect()
    }

    /// Receives every transition of every key's breaker from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Transition> {
        self.registry.events.subscribe()
    }
}
