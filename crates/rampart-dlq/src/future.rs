//! The response future of [`DeadLetter`](crate::DeadLetter).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use rampart_core::{Classify, Error, ErrorKind, IntoError, Outcome};
use tokio::sync::mpsc;

use crate::extract::Extract;
use crate::layer::Shared;
use crate::record::RecordId;
use crate::record::{DeadLetterReason, DeadLetterRecord, Timestamp, RECORD_VERSION};
use crate::store::DeadLetterStore;

type Write = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The output of an inner call, turned into a rampart result. An implementation detail of
/// [`ResponseFuture`]'s type, public only because the type names it.
#[doc(hidden)]
pub trait Settle {
    /// The rampart result.
    type Settled;
}

impl<Res, E: IntoError> Settle for Result<Res, E> {
    type Settled = Result<Res, Error<E::Inner>>;
}

pin_project! {
    /// The response future of [`DeadLetter`](crate::DeadLetter): the inner call, then — if
    /// the call is dead-lettered — the store write, then the original result.
    pub struct ResponseFuture<F, Req, St, X, C>
    where
        F: Future,
        F::Output: Settle,
    {
        #[pin]
        state: State<F>,
        request: Option<Req>,
        started: Timestamp,
        shared: Arc<Shared<St, X, C>>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F>
    where
        F: Future,
        F::Output: Settle,
    {
        Called { #[pin] future: F },
        Writing { write: Write, result: Option<<F::Output as Settle>::Settled> },
    }
}

impl<F: Future, Req, St, X, C> ResponseFuture<F, Req, St, X, C>
where
    F::Output: Settle,
{
    pub(crate) fn new(
        future: F,
        request: Req,
        started: Timestamp,
        shared: Arc<Shared<St, X, C>>,
    ) -> Self {
        // One span per logical call; the retry layer's `retry_attempt` spans nest inside it.
        let span = tracing::debug_span!(
            "rampart_call",
            service = %shared.name,
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        ResponseFuture {
            state: State::Called { future },
            request: Some(request),
            started,
            shared,
            span,
        }
    }
}

/// Why a finished call is a dead letter, if it is: the reason, the last failure's outcome,
/// the attempts made and the error text.
fn judge<Res, E, C>(
    result: &Result<Res, Error<E>>,
    classifier: &C,
) -> Option<(DeadLetterReason, Outcome, u32, String)>
where
    C: Classify<Res, E>,
    E: fmt::Display,
{
    let by_outcome = |o: Outcome| match o {
        Outcome::Success => None,
        Outcome::Permanent => Some(DeadLetterReason::Permanent),
        Outcome::Rejected => Some(DeadLetterReason::Rejected),
        _ => Some(DeadLetterReason::RetriesExhausted),
    };
    match result {
        Ok(res) => {
            let o = classifier.classify(Ok(res));
            by_outcome(o).map(|r| (r, o, 1, format!("the response classified as {o}")))
        }
        Err(e) => {
            let last = match e.last_failure() {
                Some(ErrorKind::Inner(inner)) => classifier.classify(Err(inner)),
                Some(ErrorKind::CircuitOpen(_)) => Outcome::Rejected,
                _ => Outcome::TRANSIENT,
            };
            let reason = match e.kind() {
                ErrorKind::BudgetExhausted(_) => Some(DeadLetterReason::BudgetExhausted),
                ErrorKind::DeadlineExceeded(_) => Some(DeadLetterReason::DeadlineExceeded),
                ErrorKind::NotReplayable { .. } => Some(DeadLetterReason::NotReplayable),
                ErrorKind::CircuitOpen(_) => Some(DeadLetterReason::CircuitOpen),
                ErrorKind::Timeout(_) => Some(DeadLetterReason::RetriesExhausted),
                _ => by_outcome(last),
            }?;
            let mut text = e.to_string();
            match e.last_failure() {
                Some(ErrorKind::Inner(inner)) => text = format!("{text}: {inner}"),
                Some(k)
                    if !matches!(
                        e.kind(),
                        ErrorKind::Inner(_) | ErrorKind::CircuitOpen(_) | ErrorKind::Timeout(_)
                    ) =>
                {
                    text = format!("{text}: {k}");
                }
                _ => {}
            }
            Some((reason, last, e.attempts(), text))
        }
    }
}

impl<F, Res, E, Req, St, X, C> Future for ResponseFuture<F, Req, St, X, C>
where
    F: Future<Output = Result<Res, E>>,
    E: IntoError,
    E::Inner: fmt::Display,
    St: DeadLetterStore + Clone,
    X: Extract<Req> + Send + Sync + 'static,
    C: Classify<Res, E::Inner> + Send + Sync + 'static,
{
    type Output = Result<Res, Error<E::Inner>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = {
                        let _entered = this.span.enter();
                        ready!(future.poll(cx)).map_err(IntoError::into_error)
                    };
                    let shared = &**this.shared;
                    let judged = judge(&result, &shared.classifier);
                    if !this.span.is_disabled() {
                        let (outcome, attempts) = match (&judged, &result) {
                            (None, Ok(_)) => ("success", 1),
                            (None, Err(e)) => ("success", e.attempts()),
                            (Some((r, _, a, _)), _) => (r.as_str(), *a),
                        };
                        this.span.record("outcome", outcome);
                        this.span.record("attempts", attempts);
                    }
                    let Some((reason, outcome, attempts, error)) = judged else {
                        return Poll::Ready(result);
                    };
                    if !shared.records(reason) {
                        return Poll::Ready(result);
                    }
                    let request = match this.request.take() {
                        Some(req) => shared.extractor.extract(&req),
                        None => Default::default(),
                    };
                    let record = DeadLetterRecord {
                        version: RECORD_VERSION,
                        id: RecordId::new(),
                        service: shared.name.as_str().to_owned(),
                        reason,
                        classification: outcome.as_str().to_owned(),
                        error: shared.redactor.text(&error),
                        attempts,
                        max_attempts: shared.max_attempts.max(attempts),
                        first_attempt_at: *this.started,
                        last_attempt_at: Timestamp::now(),
                        redrive_count: 0,
                        request,
                    };
                    shared.count(reason);
                    let _entered = this.span.enter();
                    tracing::error!(
                        service = %shared.name,
                        record_id = %record.id,
                        reason = reason.as_str(),
                        attempts,
                        store = shared.store.kind(),
                        "request dead-lettered"
                    );
                    let write = write(this.shared.clone(), record);
                    this.state.set(State::Writing {
                        write,
                        result: Some(result),
                    });
                }
                StateProj::Writing { write, result } => {
                    ready!(write.as_mut().poll(cx));
                    if let Some(r) = result.take() {
                        return Poll::Ready(r);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Writes `record` durably — or, in background mode, queues it (inline when the queue is
/// full, so that nothing is dropped).
fn write<St, X, C>(shared: Arc<Shared<St, X, C>>, record: DeadLetterRecord) -> Write
where
    St: DeadLetterStore + Clone,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    Box::pin(async move {
        let record = match shared.background {
            None => record,
            Some(capacity) => {
                let tx = shared
                    .queue
                    .get_or_init(|| spawn_writer(shared.store.clone(), capacity, shared.clone()));
                match tx.try_send(record) {
                    Ok(()) => return,
                    Err(
                        mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r),
                    ) => {
                        shared
                            .counters
                            .queued_inline
                            .fetch_add(1, Ordering::Relaxed);
                        r
                    }
                }
            }
        };
        push(&shared, record).await;
    })
}

async fn push<St: DeadLetterStore, X, C>(shared: &Shared<St, X, C>, record: DeadLetterRecord) {
    let id = record.id;
    match shared.store.push(record).await {
        Ok(_) => {
            if shared.observer.is_some() {
                if let Ok(stats) = shared.store.stats().await {
                    shared.emit(&crate::layer::DeadLetterEvent::Size {
                        queue_name: shared.queue_name.clone(),
                        size: stats.records,
                    });
                }
            }
        }
        Err(e) => {
            shared
                .counters
                .write_failures
                .fetch_add(1, Ordering::Relaxed);
            shared.emit(&crate::layer::DeadLetterEvent::WriteFailed {
                store: shared.store.kind(),
            });
            tracing::error!(
                service = %shared.name,
                record_id = %id,
                store = shared.store.kind(),
                error = %e,
                "dead letter could not be stored"
            );
        }
    }
}

fn spawn_writer<St, X, C>(
    store: St,
    capacity: usize,
    shared: Arc<Shared<St, X, C>>,
) -> mpsc::Sender<DeadLetterRecord>
where
    St: DeadLetterStore + Clone,
    X: Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::channel::<DeadLetterRecord>(capacity);
    let weak = Arc::downgrade(&shared);
    drop(shared);
    drop(store);
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            match weak.upgrade() {
                Some(shared) => push(&shared, record).await,
                None => break,
            }
        }
    });
    tx
}

impl<F: Future, Req, St, X, C> fmt::Debug for ResponseFuture<F, Req, St, X, C>
where
    F::Output: Settle,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
