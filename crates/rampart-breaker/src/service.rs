use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{CircuitOpen, Classify, Error, IntoError};
use tokio::time::{sleep, Instant, Sleep};
use tower_service::Service;

use crate::breaker::{Breaker, BreakerHandle};
use crate::future::{Guard, ResponseFuture};
use crate::word::Admit;

/// One service instance's link to the shared breaker, made once per service by the layer
/// and shared by that service's clones (so cloning a service does not allocate). Response
/// futures hold a clone of it, which keeps the breaker alive while they run; the reference
/// count they touch on every call lives here, in memory that only this instance's calls
/// write, not in the breaker that every instance shares.
pub(crate) struct Local {
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) needs_clock: bool,
    /// This instance's stripe of a count window.
    pub(crate) stripe: usize,
}

impl Local {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        Local {
            needs_clock: breaker.needs_clock(),
            stripe: breaker.assign_stripe(),
            breaker,
        }
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// A call's admission, decided in `poll_ready` and consumed by `call`; a probe slot held
/// here is given back if the service is dropped before calling.
struct Slot {
    local: Arc<Local>,
    admission: Option<Result<Admit, CircuitOpen>>,
    /// Backpressure mode: when to look at an open breaker again.
    wake: Option<Pin<Box<Sleep>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(Ok(admit)) = self.admission.take() {
            self.local.breaker.release(admit);
        }
    }
}

/// Fails calls fast while the inner service is unhealthy. Made by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer); see the [crate docs](crate).
///
/// # Clone
///
/// Clones share the breaker; a clone starts without an admission, so it must be made ready
/// before it is called, like any tower service.
pub struct CircuitBreaker<S, C> {
    inner: S,
    classifier: C,
    slot: Slot,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_parts(inner: S, classifier: C, breaker: Arc<Breaker>) -> Self {
        Self::with_local(inner, classifier, Arc::new(Local::new(breaker)))
    }

    pub(crate) fn with_local(inner: S, classifier: C, local: Arc<Local>) -> Self {
        CircuitBreaker {
            inner,
            classifier,
            slot: Slot {
                local,
                admission: None,
                wake: None,
            },
        }
    }

    /// The operator's handle on this service's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.slot.local.breaker.clone(),
        }
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // Shares this instance's link: no allocation.
        CircuitBreaker::with_local(
            self.inner.clone(),
            self.classifier.clone(),
            self.slot.local.clone(),
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.slot.local.breaker)
            .finish()
    }
}

/// How long backpressure mode waits before looking at a forced-open breaker again.
const FORCED_RECHECK: Duration = Duration::from_secs(1);

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Clone,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S::Future, C>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            let admission = match &self.slot.admission {
                Some(a) => a,
                None => self
                    .slot
                    .admission
                    .insert(self.slot.local.breaker.acquire()),
            };
            match admission {
                Ok(_) => return self.inner.poll_ready(cx).map_err(IntoError::into_error),
                Err(open) if self.slot.local.breaker.cfg.backpressure => {
                    let wait = if open.retry_in == Duration::MAX {
                        FORCED_RECHECK
                    } else {
                        open.retry_in.max(Duration::from_millis(1))
                    };
                    let wake = self.slot.wake.get_or_insert_with(|| Box::pin(sleep(wait)));
                    if wake.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Time to look again.
                    self.slot.wake = None;
                    self.slot.admission = None;
                }
                // Fail fast: the call is rejected without touching the inner service.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let admission = match self.slot.admission.take() {
            Some(a) => a,
            // `call` without `poll_ready` breaks tower's contract; decide now rather than panic.
            None => self.slot.local.breaker.acquire(),
        };
        match admission {
            Err(open) => ResponseFuture::rejected(open, self.classifier.clone()),
            Ok(admit) => {
                let started = self.slot.local.needs_clock.then(Instant::now);
                let future = self.inner.call(req);
                ResponseFuture::called(
                    future,
                    Guard::new(&self.slot.local, admit),
                    self.classifier.clone(),
                    started,
                )
            }
        }
    }
}

use std::future::Future as _;
