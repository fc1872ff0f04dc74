//! The response future of [`CircuitBreaker`](crate::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use rampart_core::{CircuitOpen, Classify, Error, IntoError, Outcome};
use tokio::time::Instant;

use crate::service::Local;
use crate::word::Admit;

/// An admitted call's claim on the breaker: it records the outcome, or gives a probe slot
/// back if the call is dropped before it completes. It holds its thread's link to the
/// breaker, so the breaker outlives every call in flight.
pub(crate) struct Guard {
    local: Arc<Local>,
    admit: Option<Admit>,
}

impl Guard {
    #[inline(always)]
    pub(crate) fn new(local: &Arc<Local>, admit: Admit) -> Self {
        Guard {
            local: local.clone(),
            admit: Some(admit),
        }
    }

    #[inline(always)]
    fn record(&mut self, outcome: Outcome, started: Option<Instant>) {
        if let Some(admit) = self.admit.take() {
            let local = &*self.local;
            let breaker = &local.breaker;
            let failure = breaker.cfg.failure_kinds.counts(outcome);
            breaker.record(admit, failure, started.map(|s| s.elapsed()), local.stripe);
        }
    }
}

impl Drop for Guard {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(admit) = self.admit.take() {
            self.local.breaker.release(admit);
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker): the inner call, or an
    /// immediate [`CircuitOpen`] rejection.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        guard: Option<Guard>,
        classifier: C,
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { open: Option<CircuitOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(future: F, guard: Guard, classifier: C, started: Option<Instant>) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            guard: Some(guard),
            classifier,
            started,
        }
    }

    /// A call let through with no breaker to record its outcome in.
    #[inline]
    pub(crate) fn unguarded(future: F, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            guard: None,
            classifier,
            started: None,
        }
    }

    pub(crate) fn rejected(open: CircuitOpen, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { open: Some(open) },
            guard: None,
            classifier,
            started: None,
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: IntoError,
    C: Classify<Res, E::Inner>,
{
    type Output = Result<Res, Error<E::Inner>>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { open } => match open.take() {
                Some(open) => Poll::Ready(Err(Error::from(open))),
                // Polled again after completion: `Future` allows anything but UB.
                None => Poll::Pending,
            },
            KindProj::Called { future } => {
                // Whatever the service's own layers do, they write nothing into the call's
                // record (see `rampart_core::record`).
                let (polled, publish) =
                    rampart_core::record::poll_breaker_publishing(|| future.poll(cx));
                let result = ready!(polled).map_err(IntoError::into_error);
                // rampart's one mapping (another breaker's rejection is no news about this
                // dependency: rejected, not counted).
                let outcome = rampart_core::classify::outcome(
                    &*this.classifier,
                    result.as_ref().map_err(Error::kind),
                );
                if let Some(guard) = this.guard.as_mut() {
                    guard.record(outcome, *this.started);
                }
                // The layer above (a policy's retry) takes this instead of classifying again.
                // A breaker inside the service that refused the call is, to that layer, the
                // dependency's answer "not now, try in `retry_in`": this breaker admitted the
                // call and it reached the service. (Only this breaker's own refusals, which
                // publish nothing, are calls that never reached it.)
                if publish.allowed() {
                    let published = match result.as_ref().map_err(Error::kind) {
                        Err(rampart_core::ErrorKind::CircuitOpen(open)) => Outcome::Transient {
                            retry_after: Some(open.retry_in),
                        },
                        _ => outcome,
                    };
                    publish.publish(published);
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
