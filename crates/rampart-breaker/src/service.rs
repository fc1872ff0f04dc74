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

/// A link to the shared breaker: what a service holds and what a response future clones,
/// keeping the breaker alive while the call runs. Each breaker hands out a few of them, one
/// per count-window stripe ([`Breaker::link`]), to the services its layer makes and to
/// clones in turn, so that clones on different threads take and drop their per-call
/// reference counts in different cache lines (the type's alignment keeps each link on lines
/// of its own), never in the breaker that every clone shares.
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
    /// Whose link `local` is: this service's own, or (a fresh clone's) its original's.
    link: LinkState,
    /// Admitted, or rejected with this `retry_in` (16 bytes; the `CircuitOpen` error is made
    /// in `call`, for a rejected call only).
    admission: Option<Result<Admit, Duration>>,
    /// Backpressure mode: when to look at an open breaker again.
    wake: Option<Pin<Box<Sleep>>>,
}

/// Whose link a service holds. A clone shares its original's link for its first call and
/// takes the breaker's next link before its second: a clone made for one request (axum
/// clones a route's service per request) never touches the breaker's links, and clones kept
/// by workers on different threads spread over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Its own: made by the layer, or taken by [`CircuitBreaker::relink`].
    Own,
    /// Its original's, not yet called through.
    Borrowed,
    /// Its original's, called through once: the next `poll_ready` relinks.
    BorrowedUsed,
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
    pub(crate) fn from_parts(inner: S, classifier: C, local: Arc<Local>) -> Self {
        CircuitBreaker {
            inner,
            classifier,
            slot: Slot {
                local,
                link: LinkState::Own,
                admission: None,
                wake: None,
            },
        }
    }

    /// A clone's `poll_ready` after its first call: takes the breaker's next link.
    #[cold]
    #[inline(never)]
    fn relink(&mut self) {
        self.slot.local = self.slot.local.breaker.link();
        self.slot.link = LinkState::Own;
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
    /// Shares this service's link for its first call; before its second, takes the
    /// breaker's next link (one of the live links, or a new one). Cloning never allocates
    /// and writes only this service's own link, and a clone used for one request only (axum
    /// clones a route's service per request) never touches the breaker's links.
    #[inline]
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            slot: Slot {
                local: self.slot.local.clone(),
                link: LinkState::Borrowed,
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
        if self.slot.link == LinkState::BorrowedUsed {
            self.relink();
        }
        loop {
            let admission = match &self.slot.admission {
                Some(a) => a,
                None => self.slot.admission.insert(self.slot.local.breaker.admit()),
            };
            match admission {
                Ok(_) => return self.inner.poll_ready(cx).map_err(IntoError::into_error),
                Err(retry_in) if self.slot.local.breaker.cfg.backpressure => {
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
        if self.slot.link == LinkState::Borrowed {
            self.slot.link = LinkState::BorrowedUsed;
        }
        let admission = match self.slot.admission.take() {
            Some(a) => a,
            // `call` without `poll_ready` breaks tower's contract; decide now rather than panic.
            None => self.slot.local.breaker.admit(),
        };
        match admission {
            Err(retry_in) => ResponseFuture::rejected(
                self.slot.local.breaker.open(retry_in),
                self.classifier.clone(),
            ),
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

#[cfg(all(test, not(rampart_loom)))]
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

    #[tokio::test]
    async fn a_clone_takes_a_link_of_its_own_only_before_its_second_call() {
        use tower::{Service as _, ServiceExt as _};
        let config = CircuitBreakerConfig::default();
        let breaker = Breaker::new(
            Name::from_static("db"),
            None,
            config.clone(),
            Events::new(&config),
        );
        let upstream = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
        let classifier = rampart_core::classify::IoErrors;
        let svc = CircuitBreaker::from_parts(upstream, classifier, breaker.link());
        // A clone per request, as axum makes: one call on its original's link, no relinking.
        for x in 0..3 {
            let mut clone = svc.clone();
            assert_eq!(clone.ready().await.unwrap().call(x).await.unwrap(), x);
            assert!(Arc::ptr_eq(&clone.slot.local, &svc.slot.local));
            assert_eq!(clone.slot.link, LinkState::BorrowedUsed);
        }
        // A clone kept for many calls takes a link of its own before its second.
        let mut kept = svc.clone();
        for x in 0..3 {
            assert_eq!(kept.ready().await.unwrap().call(x).await.unwrap(), x);
        }
        assert_eq!(kept.slot.link, LinkState::Own);
        if breaker.stripes() > 1 {
            assert!(!Arc::ptr_eq(&kept.slot.local, &svc.slot.local));
        }
    }

    #[test]
    fn clones_take_the_links_in_turn_and_the_last_one_frees_the_breaker() {
        let breaker = Breaker::new(
            Name::from_static("db"),
            None,
            CircuitBreakerConfig::default(),
            Events::new(&CircuitBreakerConfig::default()),
        );
        let weak = Arc::downgrade(&breaker);
        let n = breaker.stripes();
        let svc = CircuitBreaker::from_parts((), (), breaker.link());
        drop(breaker);
        let mut clones: Vec<_> = (0..2 * n).map(|_| svc.clone()).collect();
        // Until it has been called through once a clone shares its original's link.
        assert!(clones
            .iter()
            .all(|c| Arc::ptr_eq(&c.slot.local, &svc.slot.local) && c.slot.link != LinkState::Own));
        for c in &mut clones {
            c.relink();
        }
        let links: HashSet<*const Local> =
            clones.iter().map(|c| Arc::as_ptr(&c.slot.local)).collect();
        assert_eq!(links.len(), n, "every link is used, none is made twice");
        // Consecutive clones (one per thread, say) never share a link when there are two.
        if n > 1 {
            assert!(!Arc::ptr_eq(&clones[0].slot.local, &clones[1].slot.local));
        }
        let handle = svc.handle();
        drop((svc, clones));
        assert!(weak.upgrade().is_some(), "the handle keeps the breaker");
        drop(handle);
        assert!(weak.upgrade().is_none(), "nothing else does");
    }
}
