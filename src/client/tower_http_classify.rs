//! tower-http's response classifiers as rampart classifiers, and rampart's as tower-http's.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;

use http::{Response, StatusCode};
use rampart_core::{BoxError, BoxedError, Classify, Error, Outcome};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, NeverClassifyEos, SharedClassifier,
};

use super::{retry_after, HttpError};

/// A tower-http [`ClassifyResponse`] (`ServerErrorsAsFailures`, `StatusInRangeAsFailures`,
/// `GrpcErrorsAsFailures`, your own) as a rampart [`Classify`], so that the classifier a
/// tower-http stack already uses for tracing and metrics also drives rampart's retries,
/// breaker and dead letters.
///
/// A response it calls a failure is [`failures_are`](Self::failures_are) (default: transient,
/// with the response's `Retry-After` as the hint); one it calls a success is a success; one it
/// can classify only at the end of the stream (gRPC trailers) is a success here — rampart has
/// handed the response on by then (for gRPC use `rampart::grpc`). An error is
/// [`errors_are`](Self::errors_are) (default: transient).
///
/// tower-http's classifiers know nothing of methods: a POST that got a 502 counts as a
/// failure, and is retried. For the method-safety rule use [`HttpClassifier`](super::HttpClassifier).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use rampart::client::{FromTowerHttp, HttpError};
/// use rampart::{Classify, Outcome};
/// use tower_http::classify::ServerErrorsAsFailures;
///
/// let c = FromTowerHttp::new(ServerErrorsAsFailures::new());
/// let res = |status: u16| http::Response::builder().status(status).body(Bytes::new()).unwrap();
/// assert_eq!(Classify::<_, HttpError>::classify(&c, Ok(&res(503))), Outcome::TRANSIENT);
/// assert_eq!(Classify::<_, HttpError>::classify(&c, Ok(&res(404))), Outcome::Success);
/// let c = c.failures_are(Outcome::Permanent);
/// assert_eq!(Classify::<_, HttpError>::classify(&c, Ok(&res(500))), Outcome::Permanent);
/// ```
#[derive(Debug, Clone)]
pub struct FromTowerHttp<C> {
    classifier: C,
    failures: Outcome,
    errors: Outcome,
}

impl<C> FromTowerHttp<C> {
    /// Wraps a tower-http classifier: failures and errors are transient.
    pub fn new(classifier: C) -> Self {
        FromTowerHttp {
            classifier,
            failures: Outcome::TRANSIENT,
            errors: Outcome::TRANSIENT,
        }
    }

    /// The outcome of a response the tower-http classifier calls a failure. A transient or
    /// throttled outcome without a hint takes the response's `Retry-After`.
    #[must_use]
    pub fn failures_are(mut self, outcome: Outcome) -> Self {
        self.failures = outcome;
        self
    }

    /// The outcome of an error (the service's `Err`). Defaults to transient.
    #[must_use]
    pub fn errors_are(mut self, outcome: Outcome) -> Self {
        self.errors = outcome;
        self
    }

    /// The wrapped classifier.
    pub fn get_ref(&self) -> &C {
        &self.classifier
    }
}

impl<C, B, E> Classify<Response<B>, E> for FromTowerHttp<C>
where
    C: ClassifyResponse + Clone,
{
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        let res = match result {
            Ok(res) => res,
            Err(_) => return self.errors,
        };
        match self.classifier.clone().classify_response(res) {
            ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                Outcome::Success
            }
            ClassifiedResponse::Ready(Err(_)) => match self.failures {
                Outcome::Transient { retry_after: None } => Outcome::Transient {
                    retry_after: retry_after(res.headers()),
                },
                Outcome::Throttled { retry_after: None } => Outcome::Throttled {
                    retry_after: retry_after(res.headers()),
                },
                other => other,
            },
        }
    }
}

/// A rampart [`Classify`] (such as [`HttpClassifier`](super::HttpClassifier)) as a tower-http
/// [`ClassifyResponse`], so that tower-http's `TraceLayer` (and anything else that takes a
/// tower-http classifier) calls a call failed exactly when rampart does: a POST's 502 is a
/// failure ([`Outcome::Permanent`] by the method-safety rule), a 503 a transient one, a 404
/// the caller's mistake.
///
/// A response is a failure unless the rampart classifier calls it a success — or
/// [`Outcome::Rejected`] (a 4xx other than 408/429: the caller's fault, not the dependency's,
/// as tower-http's `ServerErrorsAsFailures` sees it), unless
/// [`rejected_is_failure`](Self::rejected_is_failure). The failure class is an
/// [`OutcomeFailure`] holding the outcome. The rampart classifier sees the response's head
/// (status, version, headers, extensions) as a `Response<()>`, so it must implement
/// `Classify<Response<()>, E>`; `HttpClassifier` does.
///
/// Errors are classified by the rampart classifier when they are, or hold, its error type `E`
/// (default [`HttpError`]): an `E`, a `rampart::Error<E>` (above a policy), a `BoxError` or
/// [`BoxedError`] with an `E` in its chain (under a `Buffer`).
///
/// # Example
///
/// ```
/// use rampart::client::{HttpClassifier, IntoTowerHttp, OutcomeFailure, RequestMethod};
/// use rampart::Outcome;
/// use tower_http::classify::{ClassifiedResponse, ClassifyResponse};
///
/// let c = IntoTowerHttp::new(HttpClassifier::default());
/// let post = http::Request::post("/orders").body(()).unwrap();
/// let mut res = http::Response::builder().status(502).body(()).unwrap();
/// res.extensions_mut().insert(RequestMethod::of(&post));
/// match c.clone().classify_response(&res) {
///     ClassifiedResponse::Ready(Err(OutcomeFailure::Response { status, outcome })) => {
///         assert_eq!(status, 502);
///         assert_eq!(outcome, Outcome::Permanent); // a POST that may have been processed
///     }
///     _ => unreachable!(),
/// }
///
/// // As the classifier of tower-http's TraceLayer:
/// let trace = tower_http::trace::TraceLayer::new(IntoTowerHttp::make_classifier(HttpClassifier::default()));
/// # let _ = trace;
/// ```
pub struct IntoTowerHttp<C, E = HttpError> {
    classifier: C,
    rejected_is_failure: bool,
    _error: PhantomData<fn(&E)>,
}

impl<C: Clone, E> Clone for IntoTowerHttp<C, E> {
    fn clone(&self) -> Self {
        IntoTowerHttp {
            classifier: self.classifier.clone(),
            rejected_is_failure: self.rejected_is_failure,
            _error: PhantomData,
        }
    }
}

impl<C: fmt::Debug, E> fmt::Debug for IntoTowerHttp<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoTowerHttp")
            .field("classifier", &self.classifier)
            .field("rejected_is_failure", &self.rejected_is_failure)
            .finish()
    }
}

impl<C> IntoTowerHttp<C> {
    /// Wraps a rampart classifier of [`HttpError`]s (for another error type, follow with
    /// [`error_type`](Self::error_type)).
    pub fn new(classifier: C) -> Self {
        IntoTowerHttp {
            classifier,
            rejected_is_failure: false,
            _error: PhantomData,
        }
    }

    /// A tower-http `MakeClassifier` (what `TraceLayer::new` takes) handing out
    /// `IntoTowerHttp::new(classifier)` for every request.
    pub fn make_classifier(classifier: C) -> SharedClassifier<Self>
    where
        Self: ClassifyResponse + Clone,
    {
        SharedClassifier::new(IntoTowerHttp::new(classifier))
    }
}

impl<C, E> IntoTowerHttp<C, E> {
    /// The error type the rampart classifier classifies, looked for in the service's errors.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart::client::IntoTowerHttp;
    /// use rampart::Outcome;
    ///
    /// let by_io = |r: Result<&http::Response<()>, &std::io::Error>| match r {
    ///     Ok(res) if res.status().is_server_error() => Outcome::TRANSIENT,
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::TRANSIENT,
    /// };
    /// let c = IntoTowerHttp::new(by_io).error_type::<std::io::Error>();
    /// # let _ = c;
    /// ```
    pub fn error_type<E2>(self) -> IntoTowerHttp<C, E2> {
        IntoTowerHttp {
            classifier: self.classifier,
            rejected_is_failure: self.rejected_is_failure,
            _error: PhantomData,
        }
    }

    /// Also call [`Outcome::Rejected`] responses (4xx other than 408/429) failures. Defaults
    /// to `false`.
    #[must_use]
    pub fn rejected_is_failure(mut self, yes: bool) -> Self {
        self.rejected_is_failure = yes;
        self
    }

    /// The wrapped classifier.
    pub fn get_ref(&self) -> &C {
        &self.classifier
    }

    /// This classifier as a tower-http `MakeClassifier`, handed out for every request.
    pub fn into_make_classifier(self) -> SharedClassifier<Self>
    where
        Self: ClassifyResponse + Clone,
    {
        SharedClassifier::new(self)
    }

    fn is_failure(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Success => false,
            Outcome::Rejected => self.rejected_is_failure,
            _ => true,
        }
    }
}

impl<C, E> ClassifyResponse for IntoTowerHttp<C, E>
where
    C: Classify<Response<()>, E>,
    E: std::error::Error + 'static,
{
    type FailureClass = OutcomeFailure;
    type ClassifyEos = NeverClassifyEos<OutcomeFailure>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<OutcomeFailure, Self::ClassifyEos> {
        let mut head = Response::new(());
        *head.status_mut() = res.status();
        *head.version_mut() = res.version();
        *head.headers_mut() = res.headers().clone();
        *head.extensions_mut() = res.extensions().clone();
        let outcome = self.classifier.classify(Ok(&head));
        if self.is_failure(outcome) {
            ClassifiedResponse::Ready(Err(OutcomeFailure::Response {
                status: res.status(),
                outcome,
            }))
        } else {
            ClassifiedResponse::Ready(Ok(()))
        }
    }

    fn classify_error<T>(self, error: &T) -> OutcomeFailure
    where
        T: fmt::Display + 'static,
    {
        let any: &dyn Any = error;
        let typed: Option<&E> = any
            .downcast_ref::<E>()
            .or_else(|| any.downcast_ref::<Error<E>>().and_then(Error::inner))
            .or_else(|| {
                any.downcast_ref::<Error<BoxedError>>()
                    .and_then(Error::inner)
                    .and_then(BoxedError::find::<E>)
            })
            .or_else(|| {
                any.downcast_ref::<BoxedError>()
                    .and_then(BoxedError::find::<E>)
            })
            .or_else(|| {
                any.downcast_ref::<BoxError>()
                    .and_then(|b| rampart_core::error_chain_find::<E>(&**b))
            });
        OutcomeFailure::Error {
            outcome: typed.map(|e| self.classifier.classify(Err(e))),
            message: error.to_string(),
        }
    }
}

/// The failure class of [`IntoTowerHttp`]: what rampart's classifier said about a call that
/// failed. Its `Display` is what tower-http's `TraceLayer` logs.
///
/// # Example
///
/// ```
/// use rampart::client::OutcomeFailure;
/// use rampart::Outcome;
///
/// let f = OutcomeFailure::Response { status: http::StatusCode::BAD_GATEWAY, outcome: Outcome::Permanent };
/// assert_eq!(f.to_string(), "502 Bad Gateway (permanent)");
/// assert_eq!(f.outcome(), Some(Outcome::Permanent));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OutcomeFailure {
    /// A response that is not a success.
    Response {
        /// Its status.
        status: StatusCode,
        /// The rampart classifier's outcome.
        outcome: Outcome,
    },
    /// The service failed.
    Error {
        /// The rampart classifier's outcome, if the error was (or held) its error type.
        outcome: Option<Outcome>,
        /// The error's `Display`.
        message: String,
    },
}

impl OutcomeFailure {
    /// The rampart outcome, if the classifier saw the failure.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            OutcomeFailure::Response { outcome, .. } => Some(*outcome),
            OutcomeFailure::Error { outcome, .. } => *outcome,
        }
    }
}

impl fmt::Display for OutcomeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutcomeFailure::Response { status, outcome } => write!(f, "{status} ({outcome})"),
            OutcomeFailure::Error {
                outcome: Some(outcome),
                message,
            } => write!(f, "{message} ({outcome})"),
            OutcomeFailure::Error {
                outcome: None,
                message,
            } => f.write_str(message),
        }
    }
}
