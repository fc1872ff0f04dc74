use std::fmt;
use std::sync::Arc;

use rampart_core::classify::ErrorsAre;
use rampart_core::Outcome;
use tower_layer::Layer;

use crate::breaker::{Breaker, BreakerHandle};
use crate::config::CircuitBreakerConfig;
use crate::events::Events;
use crate::service::{CircuitBreaker, Links};

/// Fails calls fast while the wrapped service is unhealthy, and probes it back.
///
/// See the [crate docs](crate) for an example and the exact semantics.
///
/// # Sharing
///
/// [`new`](Self::new) builds the breaker once, from a validated [`CircuitBreakerConfig`]
/// that holds everything about it (name, thresholds, listeners, call observer). The layer
/// owns it: every service it makes with [`Layer::layer`], every clone of those services and
/// of the layer, and every [`handle`](Self::handle) share that one breaker. No setter on the
/// layer starts another: to change a setting, build a new config (e.g. with
/// [`CircuitBreakerConfig::to_builder`]) and a new layer.
#[must_use]
pub struct CircuitBreakerLayer<C = ErrorsAre> {
    links: Arc<Links>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A breaker built from `config`. Every `Err` of the inner service counts as a
    /// transient failure and every `Ok` as a success until a [`classifier`](Self::classifier)
    /// is set.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
    /// use rampart_core::classify::IoErrors;
    ///
    /// let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::builder().name("db").build()?)
    ///     .classifier(IoErrors);
    /// assert_eq!(layer.handle().state(), State::Closed);
    /// assert_eq!(layer.handle().snapshot().service.as_str(), "db");
    /// # Ok::<(), rampart_core::ConfigError>(())
    /// ```
    pub fn new(config: CircuitBreakerConfig) -> Self {
        let events = Events::new(&config);
        CircuitBreakerLayer {
            links: Links::new(Breaker::new(config.name.clone(), None, config, events)),
            classifier: ErrorsAre(Outcome::TRANSIENT),
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies outcomes with `classifier` (which results count as failures is then set by
    /// the config's [`FailureKinds`](crate::FailureKinds)).
    ///
    /// The classifier belongs to the layer, not to the breaker: the returned layer shares
    /// this layer's breaker, so handles taken before stay valid.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            links: self.links,
            classifier,
        }
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.links.breaker.cfg
    }

    /// The operator's handle on this layer's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.links.breaker.clone(),
        }
    }
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            links: self.links.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.links.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.classifier.clone(), self.links.clone())
    }
}
