//! Validated dead-letter settings.

use std::fmt;
use std::sync::Arc;

use rampart_core::classify::ErrorsAre;
use rampart_core::{ConfigError, Name, Outcome};

use crate::extract::JsonExtractor;
use crate::layer::{DeadLetterEvent, Observer};
use crate::record::DeadLetterReason;
use crate::redact::Redactor;

/// The largest [`background`](DeadLetterConfigBuilder::background) queue.
pub const MAX_BACKGROUND_CAPACITY: usize = 1 << 20;

pub(crate) fn reason_bit(r: DeadLetterReason) -> u16 {
    let i = DeadLetterReason::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or(0);
    1 << i
}

/// Everything about a [`DeadLetterLayer`](crate::DeadLetterLayer) but its store: how requests
/// are described (the extractor), which results are failures (the classifier), the service's
/// name, which reasons are recorded, redaction, and whether records are written in the
/// background. Built and validated once by [`DeadLetterConfig::builder`]; the layer is made
/// from it with [`DeadLetterLayer::new(config, store)`](crate::DeadLetterLayer::new).
///
/// # Example
///
/// ```
/// use rampart_core::classify::IoErrors;
/// use rampart_dlq::{DeadLetterConfig, DeadLetterReason};
///
/// let config = DeadLetterConfig::builder()
///     .name("orders")
///     .classifier(IoErrors)
///     .max_attempts(3)
///     .record(DeadLetterReason::Rejected, true)
///     .build()?;
/// assert_eq!(config.name().as_str(), "orders");
/// assert!(config.records(DeadLetterReason::Rejected));
///
/// let err = DeadLetterConfig::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_attempts");
/// # Ok::<(), rampart_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct DeadLetterConfig<X = JsonExtractor, C = ErrorsAre> {
    pub(crate) extractor: X,
    pub(crate) classifier: C,
    pub(crate) name: Name,
    pub(crate) max_attempts: u32,
    pub(crate) reasons: u16,
    pub(crate) redactor: Redactor,
    pub(crate) background: Option<usize>,
    pub(crate) queue_name: Name,
    pub(crate) observer: Option<Observer>,
}

impl Default for DeadLetterConfig {
    /// Requests described as JSON, every `Err` a transient failure, every reason but
    /// [`Rejected`](DeadLetterReason::Rejected) recorded, `max_attempts` 4 (the reference
    /// design's 3 retries), records durable before the caller sees the error.
    fn default() -> Self {
        let reasons = DeadLetterReason::ALL
            .iter()
            .filter(|r| **r != DeadLetterReason::Rejected)
            .fold(0, |acc, r| acc | reason_bit(*r));
        DeadLetterConfig {
            extractor: JsonExtractor::default(),
            classifier: ErrorsAre(Outcome::TRANSIENT),
            name: Name::default(),
            max_attempts: 4,
            reasons,
            redactor: Redactor::default(),
            background: None,
            queue_name: Name::from_static("dead_letter_queue"),
            observer: None,
        }
    }
}

impl DeadLetterConfig {
    /// A builder starting from [`DeadLetterConfig::default`].
    pub fn builder() -> DeadLetterConfigBuilder {
        DeadLetterConfigBuilder {
            inner: DeadLetterConfig::default(),
        }
    }
}

impl<X, C> DeadLetterConfig<X, C> {
    /// A builder starting from this configuration (to change a setting and validate again).
    pub fn to_builder(self) -> DeadLetterConfigBuilder<X, C> {
        DeadLetterConfigBuilder { inner: self }
    }

    /// This config describing requests with `extractor` instead (still valid: the extractor
    /// is not validated).
    pub fn with_extractor<X2>(self, extractor: X2) -> DeadLetterConfig<X2, C> {
        DeadLetterConfig {
            extractor,
            classifier: self.classifier,
            name: self.name,
            max_attempts: self.max_attempts,
            reasons: self.reasons,
            redactor: self.redactor,
            background: self.background,
            queue_name: self.queue_name,
            observer: self.observer,
        }
    }

    /// This config classifying results with `classifier` instead (still valid).
    pub fn with_classifier<C2>(self, classifier: C2) -> DeadLetterConfig<X, C2> {
        DeadLetterConfig {
            extractor: self.extractor,
            classifier,
            name: self.name,
            max_attempts: self.max_attempts,
            reasons: self.reasons,
            redactor: self.redactor,
            background: self.background,
            queue_name: self.queue_name,
            observer: self.observer,
        }
    }

    /// The downstream service's name, written into records.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The attempts a call is allowed, written into records as `max_attempts`.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether calls that failed for `reason` are recorded.
    pub fn records(&self, reason: DeadLetterReason) -> bool {
        self.reasons & reason_bit(reason) != 0
    }

    /// The background queue's capacity, if records are written in the background.
    pub fn background(&self) -> Option<usize> {
        self.background
    }
}

impl<X, C> fmt::Debug for DeadLetterConfig<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterConfig")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field(
                "reasons",
                &DeadLetterReason::ALL
                    .iter()
                    .filter(|r| self.reasons & reason_bit(**r) != 0)
                    .collect::<Vec<_>>(),
            )
            .field("background", &self.background)
            .field("queue_name", &self.queue_name)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a validated [`DeadLetterConfig`].
#[must_use]
pub struct DeadLetterConfigBuilder<X = JsonExtractor, C = ErrorsAre> {
    inner: DeadLetterConfig<X, C>,
}

impl<X, C> fmt::Debug for DeadLetterConfigBuilder<X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DeadLetterConfigBuilder")
            .field(&self.inner)
            .finish()
    }
}

impl<X, C> DeadLetterConfigBuilder<X, C> {
    /// Describes requests in records with `extractor`.
    ///
    /// Defaults to [`JsonExtractor::default`].
    pub fn extractor<X2>(self, extractor: X2) -> DeadLetterConfigBuilder<X2, C> {
        DeadLetterConfigBuilder {
            inner: self.inner.with_extractor(extractor),
        }
    }

    /// Classifies results with `classifier` (use the retry layer's).
    ///
    /// Defaults to [`ErrorsAre(Outcome::TRANSIENT)`](ErrorsAre): every `Err` is a failure,
    /// every `Ok` a success.
    pub fn classifier<C2>(self, classifier: C2) -> DeadLetterConfigBuilder<X, C2> {
        DeadLetterConfigBuilder {
            inner: self.inner.with_classifier(classifier),
        }
    }

    /// Names the downstream service in records.
    ///
    /// Defaults to `"default"`.
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.inner.name = name.into();
        self
    }

    /// The attempts a call is allowed (at least 1), written into records as `max_attempts`.
    ///
    /// Defaults to 4.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.inner.max_attempts = n;
        self
    }

    /// Whether calls that failed for `reason` are recorded.
    ///
    /// Defaults to every reason but `Rejected`.
    pub fn record(mut self, reason: DeadLetterReason, yes: bool) -> Self {
        if yes {
            self.inner.reasons |= reason_bit(reason);
        } else {
            self.inner.reasons &= !reason_bit(reason);
        }
        self
    }

    /// Records nothing: the layer passes calls through (a policy with dead-lettering off).
    pub fn record_nothing(mut self) -> Self {
        self.inner.reasons = 0;
        self
    }

    /// Redacts and truncates error text with `redactor`.
    ///
    /// Defaults to [`Redactor::default`].
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.inner.redactor = redactor;
        self
    }

    /// Hands records to a bounded queue of `capacity` (1 to [`MAX_BACKGROUND_CAPACITY`])
    /// drained by a background task, instead of writing them before the caller sees the
    /// error. When the queue is full the record is written inline, so nothing is dropped;
    /// what can be lost is the records still queued if the process dies (at most
    /// `capacity`).
    ///
    /// The writer task owns the queue: dropping the layer and its services does not drop
    /// queued records — the writer stores every one of them, then ends. Wait for that with
    /// [`DeadLetterLayer::flush`](crate::DeadLetterLayer::flush) or a
    /// [`FlushHandle`](crate::FlushHandle) (which outlives the layer), e.g. at shutdown
    /// before the runtime stops.
    ///
    /// Defaults to off (durable before the caller sees the error).
    pub fn background(mut self, capacity: usize) -> Self {
        self.inner.background = Some(capacity);
        self
    }

    /// Names the queue in the `dead_letter_queue_size{queue_name}` metric.
    ///
    /// Defaults to `"dead_letter_queue"` (the reference design's list).
    pub fn queue_name(mut self, name: impl Into<Name>) -> Self {
        self.inner.queue_name = name.into();
        self
    }

    /// Reports every dead letter, store failure and the store's size after each write to
    /// `observer` (for metrics).
    ///
    /// Defaults to none.
    pub fn observe(mut self, observer: impl Fn(&DeadLetterEvent) + Send + Sync + 'static) -> Self {
        self.inner.observer = Some(Arc::new(observer));
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field if `max_attempts` is zero or the background
    /// queue's capacity is zero or above [`MAX_BACKGROUND_CAPACITY`].
    pub fn build(self) -> Result<DeadLetterConfig<X, C>, ConfigError> {
        let c = self.inner;
        if c.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", 0, "must be at least 1"));
        }
        if let Some(n) = c.background {
            if n == 0 || n > MAX_BACKGROUND_CAPACITY {
                return Err(ConfigError::new(
                    "background",
                    n,
                    format!("must be between 1 and {MAX_BACKGROUND_CAPACITY}"),
                ));
            }
        }
        Ok(c)
    }
}
