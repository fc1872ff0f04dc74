use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Classify, Error, IntoError};
use tokio::time::{sleep, Instant, Sleep};
use tower_service::Service;

use crate::breaker::{Breaker, BreakerHandle};
use crate::config::CircuitBreakerConfig;
use crate::future::{Guard, ResponseFuture};
use crate::word::Admit;

/// A link to the shared breaker: what a response future clones, keeping the breaker alive
/// while the call runs. A layer makes a few of them ([`Links`]), one per count-window stripe,
/// and a call takes its thread's, so that calls on different threads take and drop their
/// reference counts in different cache lines (the type's alignment keeps each link on lines
/// of its own) and record into different stripes — never in the breaker that every call
/// shares, and whichever service or clone they go through.
#[repr(align(128))]
pub(crate) struct Local {
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) needs_clock: bool,
    /// This link's stripe of a count window.
    pub(crate) stripe: usize,
}

impl Local {
    /// A link with the next count-window stripe (a keyed breaker's one link).
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        let stripe = breaker.assign_stripe();
        Local::with_stripe(breaker, stripe)
    }

    pub(crate) fn with_stripe(breaker: Arc<Breaker>, stripe: usize) -> Self {
        Local {
            needs_clock: breaker.needs_clock(),
            stripe,
            breaker,
        }
    }
}

/// The links of a layer's breaker, shared by the layer, the services it makes and their
/// clones (a clone takes one reference count: this set's). A call takes its thread's link
/// ([`rampart_core::record::thread_slot`]).
pub(crate) struct Links {
    pub(crate) breaker: Arc<Breaker>,
    /// A power of two of links, at least as many as the count window's stripes (link `i`
    /// records into stripe `i % stripes`).
    locals: Box<[Arc<Local>]>,
    needs_clock: bool,
}

impl Links {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Arc<Links> {
        let stripes = breaker.stripes().max(1);
        let locals = (0..breaker.links_wanted().max(stripes).next_power_of_two())
            .map(|i| Arc::new(Local::with_stripe(breaker.clone(), i % stripes)))
            .collect();
        Arc::new(Links {
            needs_clock: breaker.needs_clock(),
            breaker,
            locals,
        })
    }

    /// The current thread's link.
    #[inline]
    pub(crate) fn here(&self) -> &Arc<Local> {
        let i = rampart_core::record::thread_slot() & (self.locals.len().wrapping_sub(1));
        match self.locals.get(i) {
            Some(local) => local,
            None => &self.locals[0],
        }
    }
}

impl fmt::Debug for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Links")
            .field("breaker", &self.breaker)
            .field("links", &self.locals.len())
            .finish()
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
    links: Arc<Links>,
    /// Admitted, or rejected with this `retry_in` (16 bytes; the `CircuitOpen` error is made
    /// in `call`, for a rejected call only).
    admission: Option<Result<Admit, Duration>>,
    /// Backpressure mode: when to look at an open breaker again.
    wake: Option<Pin<Box<Sleep>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(Ok(admit)) = self.admission.take() {
            self.links.breaker.release(admit);
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
pub struct CircuitBreaker<S, C = rampart_core::classify::ErrorsAre> {
    inner: S,
    classifier: C,
    slot: Slot,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` in a new breaker built from `config`, counting every `Err` as a
    /// transient failure: [`CircuitBreakerLayer::new(config)`](crate::CircuitBreakerLayer::new)
    /// applied to `inner`. Use the layer to set a classifier or to share the breaker.
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_breaker::{CircuitBreaker, CircuitBreakerConfig, State};
    /// use tower::service_fn;
    ///
    /// let svc = CircuitBreaker::new(
    ///     service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }),
    ///     CircuitBreakerConfig::default(),
    /// );
    /// assert_eq!(svc.handle().state(), State::Closed);
    /// ```
    pub fn new(inner: S, config: CircuitBreakerConfig) -> Self {
        tower_layer::Layer::layer(&crate::CircuitBreakerLayer::new(config), inner)
    }
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_parts(inner: S, classifier: C, links: Arc<Links>) -> Self {
        CircuitBreaker {
            inner,
            classifier,
            slot: Slot {
                links,
                admission: None,
                wake: None,
            },
        }
    }

    /// The operator's handle on this service's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.slot.links.breaker.clone(),
        }
    }

    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// Shares the breaker and its links: cloning never allocates and takes one reference
    /// count. Calls through any clone take their thread's link, so a clone per request (as
    /// axum's router makes) or per worker costs the same.
    #[inline]
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            slot: Slot {
                links: self.slot.links.clone(),
                admission: None,
                wake: None,
            },
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.slot.links.breaker)
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
                None => self.slot.admission.insert(self.slot.links.breaker.admit()),
            };
            match admission {
                Ok(_) => return self.inner.poll_ready(cx).map_err(IntoError::into_error),
                Err(retry_in) if self.slot.links.breaker.cfg.backpressure => {
                    let wait = if *retry_in == Duration::MAX {
                        FORCED_RECHECK
                    } else {
                        (*retry_in).max(Duration::from_millis(1))
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
            None => self.slot.links.breaker.admit(),
        };
        match admission {
            Err(retry_in) => ResponseFuture::rejected(
                self.slot.links.breaker.open(retry_in),
                self.classifier.clone(),
            ),
            Ok(admit) => {
                let started = self.slot.links.needs_clock.then(Instant::now);
                let future = self.inner.call(req);
                ResponseFuture::called(
                    future,
                    Guard::new(self.slot.links.here(), admit),
                    self.classifier.clone(),
                    started,
                )
            }
        }
    }
}

use std::future::Future as _;

#[cfg(all(test, not(rampart_loom)))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_admission_a_service_keeps_is_small() {
        // Was `Option<Result<Admit, CircuitOpen>>`: 40 bytes on x86_64.
        assert!(std::mem::size_of::<Option<Result<Admit, Duration>>>() <= 16);
    }
    use crate::events::Events;
    use rampart_core::Name;
    use std::collections::HashSet;

    fn breaker() -> Arc<Breaker> {
        let config = CircuitBreakerConfig::builder()
            .window(Some(crate::Window::Count(100)))
            .build()
            .unwrap();
        Breaker::new(
            Name::from_static("db"),
            None,
            config.clone(),
            Events::new(&config),
        )
    }

    #[test]
    fn calls_on_different_threads_take_different_links_whichever_clone_they_use() {
        let links = Links::new(breaker());
        let n = links.locals.len();
        assert!(n.is_power_of_two() && n >= links.breaker.stripes());
        let here = Arc::as_ptr(links.here());
        assert_eq!(here, Arc::as_ptr(links.here()), "one thread, one link");
        // Threads are numbered in the order they are made (other tests make threads too, so
        // not necessarily consecutively here): threads made one after another take every
        // link.
        let taken: HashSet<usize> = (0..64)
            .map(|_| {
                std::thread::scope(|s| s.spawn(|| Arc::as_ptr(links.here()) as usize).join())
                    .unwrap()
            })
            .collect();
        assert_eq!(taken.len(), n, "64 threads made in turn take all {n} links");
    }

    #[test]
    fn the_last_service_call_or_handle_frees_the_breaker() {
        let b = breaker();
        let weak = Arc::downgrade(&b);
        let svc = CircuitBreaker::from_parts((), (), Links::new(b));
        let clones: Vec<_> = (0..8).map(|_| svc.clone()).collect();
        assert!(clones
            .iter()
            .all(|c| Arc::ptr_eq(&c.slot.links, &svc.slot.links)));
        let handle = svc.handle();
        drop((svc, clones));
        assert!(weak.upgrade().is_some(), "the handle keeps the breaker");
        drop(handle);
        assert!(weak.upgrade().is_none(), "nothing else does");
    }
}
