//! The response future of [`DeadLetter`](crate::DeadLetter).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rampart_core::record::{CallRecord, StopReason};
use rampart_core::{Classify, Error, ErrorKind, IntoError, Name, Outcome};
use tokio::sync::mpsc;

use crate::extract::Extract;
use crate::layer::{Counters, DeadLetterEvent, Link, Observer, Progress, Shared};
use crate::record::RecordId;
use crate::record::{DeadLetterReason, DeadLetterRecord, Timestamp, RECORD_VERSION};
use crate::source::RequestSource;
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
    pub struct ResponseFuture<F, Req, St, X, C, R>
    where
        F: Future,
        F::Output: Settle,
        R: RequestSource<Req, F>,
    {
        #[pin]
        state: State<F>,
        // What this call holds for its record (a copy of the request, or nothing when the
        // request is taken from the inner future after the call).
        request: R::Held,
        shared: Arc<Link<St, X, C>>,
        // The call's span, made when the future is first polled.
        span: CallSpan,
        // What the layers below saw of this call (see `rampart_core::record`).
        record: CallRecord,
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

impl<F: Future, Req, St, X, C, R> ResponseFuture<F, Req, St, X, C, R>
where
    F::Output: Settle,
    R: RequestSource<Req, F>,
{
    /// Inlined into `DeadLetter::call`, so that the inner future is built in place rather
    /// than copied into this one.
    #[inline(always)]
    pub(crate) fn new(
        future: F,
        request: R::Held,
        shared: Arc<Link<St, X, C>>,
        parent: Option<tracing::Span>,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            request,
            shared,
            span: CallSpan::Parent(parent),
            record: CallRecord::default(),
        }
    }
}

/// One span per logical call; the retry layer's `retry_attempt` spans nest inside it. Its
/// parent is the span current when the call was made (as if made in `call`), but it is made
/// when the future is first polled, so that nothing runs between the inner call and the move
/// of its future into this one.
pub(crate) enum CallSpan {
    /// Not made yet: the span current at `call`, captured only if debug spans are enabled.
    Parent(Option<tracing::Span>),
    /// Made.
    Made(tracing::Span),
}

impl CallSpan {
    /// The parent to capture in `call`: the current span, if a debug span could be enabled.
    #[inline]
    pub(crate) fn parent() -> Option<tracing::Span> {
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            Some(tracing::Span::current())
        } else {
            None
        }
    }

    /// The span, made now if it was not.
    #[inline]
    fn made(&mut self, service: &Name) -> &tracing::Span {
        loop {
            match self {
                CallSpan::Made(span) => return span,
                CallSpan::Parent(parent) => {
                    let parent = parent.take();
                    *self = CallSpan::Made(call_span(service, parent));
                }
            }
        }
    }
}

#[inline(never)]
fn call_span(service: &Name, parent: Option<tracing::Span>) -> tracing::Span {
    match parent {
        Some(parent) => tracing::debug_span!(
            parent: &parent,
            "rampart_call",
            service = %service,
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        ),
        None => tracing::debug_span!(
            "rampart_call",
            service = %service,
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        ),
    }
}

/// Why a finished call is a dead letter, if it is: the reason, the last failure's outcome,
/// the attempts that reached the service and the error text. The call's record (kept by the
/// retry layer below, if there is one) gives the true attempts, outcome and stop reason;
/// without one the result alone is judged, through rampart's one mapping of error kinds.
fn judge<Res, E, C>(
    result: &Result<Res, Error<E>>,
    classifier: &C,
    record: &CallRecord,
    service: &Name,
) -> Option<(DeadLetterReason, Outcome, u32, String)>
where
    C: Classify<Res, E>,
    E: fmt::Display,
{
    let last = match (record.last, result) {
        (Some(o), _) => o,
        (None, Ok(res)) => classifier.classify(Ok(res)),
        (None, Err(e)) => match e.last_failure() {
            Some(kind) => rampart_core::classify::outcome(classifier, Err(kind)),
            // The deadline cut the first attempt.
            None => Outcome::TRANSIENT,
        },
    };
    if result.is_ok() && last.is_success() {
        return None;
    }
    let by_outcome = |o: Outcome| match o {
        Outcome::Success => None,
        Outcome::Permanent => Some(DeadLetterReason::Permanent),
        Outcome::Rejected => Some(DeadLetterReason::Rejected),
        _ => Some(DeadLetterReason::RetriesExhausted),
    };
    let by_stop = |s: StopReason| match s {
        StopReason::RetriesExhausted => Some(DeadLetterReason::RetriesExhausted),
        StopReason::BudgetExhausted => Some(DeadLetterReason::BudgetExhausted),
        StopReason::DeadlineExceeded => Some(DeadLetterReason::DeadlineExceeded),
        StopReason::CircuitOpen => Some(DeadLetterReason::CircuitOpen),
        StopReason::Throttled => Some(DeadLetterReason::Throttled),
        StopReason::NotReplayable => Some(DeadLetterReason::NotReplayable),
        _ => by_outcome(last),
    };
    let (reason, attempts, mut text) = match result {
        Ok(_) => {
            let reason = match record.stop {
                Some(s) => by_stop(s),
                None => by_outcome(last),
            }?;
            let attempts = if record.tries > 0 { record.reached } else { 1 };
            (
                reason,
                attempts,
                format!("the response classified as {last}"),
            )
        }
        Err(e) => {
            let reason = match (record.stop, e.kind()) {
                (Some(s), _) => by_stop(s),
                (None, ErrorKind::BudgetExhausted(_)) => Some(DeadLetterReason::BudgetExhausted),
                (None, ErrorKind::DeadlineExceeded(_)) => Some(DeadLetterReason::DeadlineExceeded),
                (None, ErrorKind::NotReplayable { .. }) => Some(DeadLetterReason::NotReplayable),
                (None, ErrorKind::CircuitOpen(_)) => Some(DeadLetterReason::CircuitOpen),
                (None, ErrorKind::Timeout(_)) => Some(DeadLetterReason::RetriesExhausted),
                (None, _) => by_outcome(last),
            }?;
            let attempts = if record.tries > 0 {
                record.reached
            } else if matches!(e.kind(), ErrorKind::CircuitOpen(_)) {
                0
            } else {
                e.attempts()
            };
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
            (reason, attempts, text)
        }
    };
    if record.tries > 0 {
        let tries = record.tries;
        let reached = record.reached;
        text = match reason {
            DeadLetterReason::CircuitOpen => format!(
                "circuit open for {service}; {reached} of {tries} attempts reached it ({text})"
            ),
            DeadLetterReason::Throttled => format!(
                "throttled by {service} beyond the policy's limit (asked to wait {:?}); {reached} of {tries} attempts reached it ({text})",
                record.hint().unwrap_or_default()
            ),
            // A failed response carries no count of its own: say it.
            r if result.is_ok() => format!(
                "{text}; {} for {service} after {reached} of {tries} attempts reached it",
                r.as_str().replace('_', " ")
            ),
            // The error's own text already counts the attempts that reached the service.
            _ => text,
        };
    }
    Some((reason, last, attempts, text))
}

impl<F, Res, E, Req, St, X, C, R> Future for ResponseFuture<F, Req, St, X, C, R>
where
    F: Future<Output = Result<Res, E>>,
    R: RequestSource<Req, F>,
    E: IntoError,
    E::Inner: fmt::Display,
    St: DeadLetterStore + Clone,
    X: Extract<Req> + Send + Sync + 'static,
    C: Classify<Res, E::Inner> + Send + Sync + 'static,
{
    type Output = Result<Res, Error<E::Inner>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = this.span.made(&this.shared.name);
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { mut future } => {
                    let result = {
                        let _entered = span.enter();
                        let polled = rampart_core::record::in_scope(this.record, || {
                            future.as_mut().poll(cx)
                        });
                        ready!(polled).map_err(IntoError::into_error)
                    };
                    let shared = &**this.shared;
                    let judged = judge(&result, &shared.classifier, this.record, &shared.name);
                    if !span.is_disabled() {
                        let (outcome, attempts) = match (&judged, &result) {
                            (None, Ok(_)) => ("success", this.record.reached.max(1)),
                            (None, Err(e)) => ("success", e.attempts()),
                            (Some((r, _, a, _)), _) => (r.as_str(), *a),
                        };
                        span.record("outcome", outcome);
                        span.record("attempts", attempts);
                    }
                    let Some((reason, outcome, attempts, error)) = judged else {
                        return Poll::Ready(result);
                    };
                    if !shared.records(reason) {
                        return Poll::Ready(result);
                    }
                    // The copy held, or the one the inner future kept (taken before the
                    // inner future is dropped).
                    let held = std::mem::take(this.request);
                    let extracted = match R::after(held, future) {
                        Some(req) => shared.extractor.extract_whole(&req),
                        None => Default::default(),
                    };
                    // The clock is read only here, for a call being dead-lettered: the first
                    // attempt's time is derived from the elapsed time the retry layer
                    // reports (measured from the start with timers, from the first failure
                    // without), so a successful call reads no clock in this layer.
                    let now = Timestamp::now();
                    let elapsed = result.as_ref().err().map_or(Duration::ZERO, Error::elapsed);
                    let first = now.before(elapsed);
                    let record = DeadLetterRecord {
                        version: RECORD_VERSION,
                        id: RecordId::new(),
                        service: shared.name.as_str().to_owned(),
                        reason,
                        classification: outcome.as_str().to_owned(),
                        error: shared.redactor.text(&error),
                        attempts,
                        max_attempts: shared.max_attempts.max(attempts),
                        first_attempt_at: first,
                        last_attempt_at: now,
                        redrive_count: 0,
                        request: extracted.part,
                        truncated: extracted.truncated,
                        original_size: extracted.original_size,
                        request_redacted: extracted.redacted,
                    };
                    shared.count(reason);
                    let _entered = span.enter();
                    tracing::error!(
                        service = %shared.name,
                        record_id = %record.id,
                        reason = reason.as_str(),
                        attempts,
                        store = shared.store.kind(),
                        "request dead-lettered"
                    );
                    let write = write(this.shared.shared.clone(), record);
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
                let tx = shared.queue.get_or_init(|| {
                    spawn_writer(Sink::of(&shared), capacity, shared.progress.clone())
                });
                // Counted before it can be taken, so that a flush never misses it.
                shared.progress.accepted.fetch_add(1, Ordering::SeqCst);
                match tx.try_send(record) {
                    Ok(()) => return,
                    Err(
                        mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r),
                    ) => {
                        shared.progress.unaccept_one();
                        shared
                            .counters
                            .queued_inline
                            .fetch_add(1, Ordering::Relaxed);
                        r
                    }
                }
            }
        };
        Sink::of(&shared).push(record).await;
    })
}

/// What writing a record needs: the store and what is reported about the write. The
/// background writer owns one, so that it does not keep the layer (and the queue's sender)
/// alive, and the layer does not have to be alive for queued records to be written.
struct Sink<St> {
    store: St,
    name: Name,
    queue_name: Name,
    observer: Option<Observer>,
    counters: Arc<Counters>,
}

impl<St: DeadLetterStore + Clone> Sink<St> {
    fn of<X, C>(shared: &Shared<St, X, C>) -> Self {
        Sink {
            store: shared.store.clone(),
            name: shared.name.clone(),
            queue_name: shared.queue_name.clone(),
            observer: shared.observer.clone(),
            counters: shared.counters.clone(),
        }
    }

    fn emit(&self, e: &DeadLetterEvent) {
        if let Some(o) = &self.observer {
            o(e);
        }
    }

    async fn push(&self, record: DeadLetterRecord) {
        let id = record.id;
        match self.store.push(record).await {
            Ok(_) => {
                if self.observer.is_some() {
                    if let Ok(stats) = self.store.stats().await {
                        self.emit(&DeadLetterEvent::Size {
                            queue_name: self.queue_name.clone(),
                            size: stats.records,
                        });
                    }
                }
            }
            Err(e) => {
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                self.emit(&DeadLetterEvent::WriteFailed {
                    store: self.store.kind(),
                });
                tracing::error!(
                    service = %self.name,
                    record_id = %id,
                    store = self.store.kind(),
                    error = %e,
                    "dead letter could not be stored"
                );
            }
        }
    }
}

/// Spawns the background writer. It owns the receiver and a [`Sink`], never the layer: when
/// the layer, its services and their futures are gone, the last sender drops, the writer
/// stores what is still queued and then ends. Nothing aborts it.
fn spawn_writer<St: DeadLetterStore + Clone>(
    sink: Sink<St>,
    capacity: usize,
    progress: Arc<Progress>,
) -> mpsc::Sender<DeadLetterRecord> {
    let (tx, mut rx) = mpsc::channel::<DeadLetterRecord>(capacity);
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            sink.push(record).await;
            progress.finish_one();
        }
    });
    tx
}

impl<F: Future, Req, St, X, C, R> fmt::Debug for ResponseFuture<F, Req, St, X, C, R>
where
    F::Output: Settle,
    R: RequestSource<Req, F>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
