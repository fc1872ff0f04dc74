use std::fmt;
use std::sync::Arc;

use rampart_core::Name;
use tower_layer::Layer;

use crate::breaker::{Breaker, BreakerHandle};
use crate::config::CircuitBreakerConfig;
use crate::events::{Events, Transition};
use crate::service::{CircuitBreaker, Lanes};

/// Fails calls fast while the wrapped service is unhealthy, and probes it back.
///
/// See the [crate docs](crate) for an example and the exact semantics.
///
/// # Sharing
///
/// The layer owns the breaker's state: every service it makes with [`Layer::layer`], and every
/// clone of those services, shares one breaker. Configure the layer (name, listeners) before
/// taking a [`handle`](Self::handle) or making services: each setter starts a fresh breaker.
#[must_use]
pub struct CircuitBreakerLayer<C> {
    breaker: Arc<Lanes>,
    events: Events,
    classifier: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A breaker with `config`, classifying outcomes with `classifier`.
    pub fn new(config: CircuitBreakerConfig, classifier: C) -> Self {
        let events = Events::default();
        CircuitBreakerLayer {
            breaker: Lanes::new(Breaker::new(Name::default(), None, config, events.clone())),
            events,
            classifier,
        }
    }

    fn rebuild(mut self, name: Name) -> Self {
        let cfg = self.breaker.breaker().cfg;
        self.breaker = Lanes::new(Breaker::new(name, None, cfg, self.events.clone()));
        self
    }

    /// Names the downstream service, for errors, events and metrics.
    ///
    /// Defaults to `"default"`.
    pub fn name(self, name: impl Into<Name>) -> Self {
        self.rebuild(name.into())
    }

    /// Calls `listener` on every transition (after the `tracing` event).
    ///
    /// Defaults to no listener.
    pub fn on_transition(mut self, listener: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.events.add(Arc::new(listener));
        let name = self.breaker.breaker().name.clone();
        self.rebuild(name)
    }

    /// Reports every call's outcome to `observer` (for metrics). This moves calls off the
    /// read-only fast path.
    ///
    /// Defaults to none.
    pub fn observe_calls(
        mut self,
        observer: impl Fn(&Name, Option<&str>, crate::events::CallOutcome) + Send + Sync + 'static,
    ) -> Self {
        self.events.calls = Some(Arc::new(observer));
        let name = self.breaker.breaker().name.clone();
        self.rebuild(name)
    }

    /// The operator's handle on this layer's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.breaker.breaker().clone(),
        }
    }
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            breaker: self.breaker.clone(),
            events: self.events.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.classifier.clone(), self.breaker.clone())
    }
}
