//! Metrics and tracing: the reference design's Prometheus series, through the `metrics`
//! facade (the application picks the exporter).
//!
//! With the `metrics` feature, layers built by a [`Policy`](crate::Policy) report:
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `retry_attempts_total` | counter | `service`, `status` | every attempt after the first; `status` is `success` or `failed` |
//! | `retry_delay_seconds` | histogram | `service` | each backoff wait (buckets 0.1 0.5 1 2 5 10 30 60 with `prometheus_builder`, feature `prometheus`) |
//! | `retry_budget_exhausted_total` | counter | `service` | calls whose retries the budget stopped |
//! | `circuit_breaker_state` | gauge | `service`, `state` | 1 for the current state, 0 for the others |
//! | `circuit_breaker_calls_total` | counter | `service`, `outcome` | `success`, `failure`, `slow`, `rejected` |
//! | `circuit_breaker_transitions_total` | counter | `service`, `from`, `to` | every state change |
//! | `dead_letters_total` | counter | `service`, `reason` | records written, by reason |
//! | `dead_letter_queue_size` | gauge | `queue_name` | records in the store after each write |
//! | `dead_letter_write_failures_total` | counter | `store` | records the store refused |
//!
//! Labels are bounded: service names, queue names and fixed enums, never a request id or a
//! URL. Tracing: the retry layer wraps each retry attempt in a `retry_attempt` span (service,
//! attempt) and logs failed attempts at debug (outcome, delay); breaker transitions are
//! logged at warn when opening (with the reason and the measured value); dead-lettering is
//! logged at error with the record id. No field carries a secret.

#[cfg(feature = "metrics")]
mod imp {
    use rampart_breaker::{
        BreakerHandle, CallOutcome, CircuitBreakerConfigBuilder, State, Transition,
    };
    use rampart_core::Name;
    use rampart_dlq::{DeadLetterConfigBuilder, DeadLetterEvent};
    use rampart_retry::observe::{AttemptEvent, FinishEvent, GiveUp, RetryEvent, RetryObserver};

    /// A service name as a metric label, without copying the string.
    fn label(name: &Name) -> metrics::SharedString {
        match name.as_static() {
            Some(s) => metrics::SharedString::const_str(s),
            None => metrics::SharedString::from(name.to_arc()),
        }
    }

    /// Reports a retry layer's events as `retry_*` series.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct MetricsObserver;

    impl RetryObserver for MetricsObserver {
        fn on_retry(&self, e: &RetryEvent) {
            metrics::histogram!("retry_delay_seconds", "service" => label(&e.service))
                .record(e.delay.as_secs_f64());
        }
        fn on_attempt(&self, e: &AttemptEvent) {
            let status = if e.outcome.is_success() {
                "success"
            } else {
                "failed"
            };
            metrics::counter!("retry_attempts_total", "service" => label(&e.service), "status" => status).increment(1);
        }
        fn on_finish(&self, e: &FinishEvent) {
            if e.gave_up == Some(GiveUp::BudgetExhausted) {
                metrics::counter!("retry_budget_exhausted_total", "service" => label(&e.service))
                    .increment(1);
            }
        }
    }

    /// Sets `circuit_breaker_state{service,state}` to 1 for `current` and 0 for the others.
    pub fn set_state(service: &Name, current: State) {
        for s in State::ALL {
            let v = if s == current { 1.0 } else { 0.0 };
            metrics::gauge!("circuit_breaker_state", "service" => label(service), "state" => s.as_str()).set(v);
        }
    }

    /// Wires a breaker's config to the `circuit_breaker_*` series; call
    /// [`breaker_built`] with the layer's handle to set the state gauge.
    /// [`Policy::layer`](crate::Policy::layer) does this for you.
    pub fn breaker(config: CircuitBreakerConfigBuilder) -> CircuitBreakerConfigBuilder {
        config
            .on_transition(|t: &Transition| {
                metrics::counter!(
                    "circuit_breaker_transitions_total",
                    "service" => label(&t.service),
                    "from" => t.from.as_str(),
                    "to" => t.to.as_str()
                )
                .increment(1);
                set_state(&t.service, t.to);
            })
            .observe_calls(|service: &Name, _key: Option<&str>, o: CallOutcome| {
                metrics::counter!("circuit_breaker_calls_total", "service" => label(service), "outcome" => o.as_str())
                    .increment(1);
            })
    }

    /// Sets the `circuit_breaker_state` gauge for a breaker just built.
    pub fn breaker_built(handle: &BreakerHandle) {
        set_state(&handle.snapshot().service, handle.state());
    }

    /// Wires a dead-letter config to the `dead_letter*` series.
    /// [`Policy::layer`](crate::Policy::layer) does this for you.
    pub fn dead_letter<X, C>(
        config: DeadLetterConfigBuilder<X, C>,
    ) -> DeadLetterConfigBuilder<X, C> {
        config.observe(|e: &DeadLetterEvent| match e {
            DeadLetterEvent::Recorded { service, reason } => {
                metrics::counter!("dead_letters_total", "service" => label(service), "reason" => reason.as_str()).increment(1);
            }
            DeadLetterEvent::WriteFailed { store } => {
                metrics::counter!("dead_letter_write_failures_total", "store" => *store).increment(1);
            }
            DeadLetterEvent::Size { queue_name, size } => {
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("dead_letter_queue_size", "queue_name" => label(queue_name)).set(*size as f64);
            }
            _ => {}
        })
    }

    /// Registers a description for every series.
    pub fn describe() {
        metrics::describe_counter!(
            "retry_attempts_total",
            "Attempts after the first, by status (success, failed)"
        );
        metrics::describe_histogram!(
            "retry_delay_seconds",
            metrics::Unit::Seconds,
            "Backoff waits before retries"
        );
        metrics::describe_counter!(
            "retry_budget_exhausted_total",
            "Calls whose retries the retry budget stopped"
        );
        metrics::describe_gauge!(
            "circuit_breaker_state",
            "1 for the breaker's current state, 0 for the others"
        );
        metrics::describe_counter!(
            "circuit_breaker_calls_total",
            "Calls through the breaker by outcome"
        );
        metrics::describe_counter!("circuit_breaker_transitions_total", "Breaker state changes");
        metrics::describe_counter!("dead_letters_total", "Requests dead-lettered, by reason");
        metrics::describe_gauge!("dead_letter_queue_size", "Records in the dead-letter store");
        metrics::describe_counter!(
            "dead_letter_write_failures_total",
            "Dead letters the store refused"
        );
    }
}

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use imp::{describe, set_state, MetricsObserver};

/// The retry observer a [`Policy`](crate::Policy) layer uses: [`MetricsObserver`] with the
/// `metrics` feature, nothing otherwise.
#[cfg(feature = "metrics")]
pub type PolicyObserver = MetricsObserver;
/// The retry observer a [`Policy`](crate::Policy) layer uses: nothing without the `metrics`
/// feature.
#[cfg(not(feature = "metrics"))]
pub type PolicyObserver = ();

#[cfg(feature = "metrics")]
pub use imp::{breaker, breaker_built, dead_letter};

/// Wires a breaker's config to the `circuit_breaker_*` series (a no-op without the
/// `metrics` feature). [`Policy::layer`](crate::Policy::layer) does this for you.
#[cfg(not(feature = "metrics"))]
pub fn breaker(
    config: rampart_breaker::CircuitBreakerConfigBuilder,
) -> rampart_breaker::CircuitBreakerConfigBuilder {
    config
}

/// Sets the `circuit_breaker_state` gauge for a breaker just built (a no-op without the
/// `metrics` feature).
#[cfg(not(feature = "metrics"))]
pub fn breaker_built(_handle: &rampart_breaker::BreakerHandle) {}

/// Wires a dead-letter config to the `dead_letter*` series (a no-op without the `metrics`
/// feature). [`Policy::layer`](crate::Policy::layer) does this for you.
#[cfg(not(feature = "metrics"))]
pub fn dead_letter<X, C>(
    config: rampart_dlq::DeadLetterConfigBuilder<X, C>,
) -> rampart_dlq::DeadLetterConfigBuilder<X, C> {
    config
}

/// The reference design's buckets for `retry_delay_seconds`.
pub const DELAY_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus exporter builder with the reference buckets for `retry_delay_seconds`.
///
/// # Errors
///
/// Never in practice: only if the bucket list were empty.
///
/// # Example
///
/// ```
/// let handle = rampart::observe::prometheus_builder()?.install_recorder()?;
/// rampart::observe::describe();
/// assert!(handle.render().is_empty() || handle.render().contains("# HELP"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub fn prometheus_builder(
) -> Result<metrics_exporter_prometheus::PrometheusBuilder, metrics_exporter_prometheus::BuildError>
{
    metrics_exporter_prometheus::PrometheusBuilder::new().set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full("retry_delay_seconds".into()),
        &DELAY_BUCKETS,
    )
}
