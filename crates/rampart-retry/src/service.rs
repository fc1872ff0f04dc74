use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Backoff, Classify, Error, IntoError, Name};
use tower_service::Service;

use crate::budget::{BudgetRef, RetryBudget, DEPOSIT_BATCH};
use crate::future::ResponseFuture;
use crate::layer::RetryLayer;
use crate::observe::RetryObserver;
use crate::replay::{CloneReplay, Replay};

/// What a response future needs to know about its layer: small and `Copy`, so that futures
/// carry it by value instead of sharing it behind an `Arc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) name: Name,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) budget: Option<BudgetRef>,
}

/// Retries failed calls of the inner service. Made by [`RetryLayer`]; see the
/// [crate docs](crate) for semantics and an example.
///
/// # Clone
///
/// Clones share the retry budget. Each clone counts its own requests and deposits them into
/// the budget in batches, so the success path writes no memory that other clones share.
pub struct Retry<S, C, R = CloneReplay, O = ()> {
    inner: S,
    classifier: C,
    replay: R,
    observer: O,
    config: Config,
    deposits: Deposits,
}

/// Requests counted locally and deposited into the budget in batches (and on drop).
struct Deposits {
    budget: Option<RetryBudget>,
    pending: u32,
}

impl Deposits {
    #[inline]
    fn record(&mut self) {
        if let Some(budget) = &self.budget {
            self.pending += 1;
            if self.pending >= DEPOSIT_BATCH {
                budget.deposit(self.pending);
                self.pending = 0;
            }
        }
    }
}

impl Drop for Deposits {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.deposit(self.pending);
        }
    }
}

impl<S, C> Retry<S, C> {
    /// Wraps `inner` with [`RetryLayer::new(classifier)`](RetryLayer::new)'s defaults.
    pub fn new(inner: S, classifier: C) -> Self
    where
        C: Clone,
    {
        tower_layer::Layer::layer(&RetryLayer::new(classifier), inner)
    }
}

impl<S, C, R, O> Retry<S, C, R, O> {
    pub(crate) fn from_parts(
        inner: S,
        classifier: C,
        replay: R,
        observer: O,
        config: Config,
        budget: Option<RetryBudget>,
    ) -> Self {
        Retry {
            inner,
            classifier,
            replay,
            observer,
            config,
            deposits: Deposits { budget, pending: 0 },
        }
    }

    /// The downstream service's name.
    pub fn name(&self) -> Name {
        self.config.name
    }

    /// The budget this service draws on, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.deposits.budget.as_ref()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service (pending deposits are flushed).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, R: Clone, O: Clone> Clone for Retry<S, C, R, O> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            observer: self.observer.clone(),
            config: self.config,
            deposits: Deposits {
                budget: self.deposits.budget.clone(),
                pending: 0,
            },
        }
    }
}

impl<S: fmt::Debug, C, R, O> fmt::Debug for Retry<S, C, R, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.config.name)
            .field("backoff", &self.config.backoff)
            .field("deadline", &self.config.deadline)
            .field("attempt_timeout", &self.config.attempt_timeout)
            .field("budget", &self.deposits.budget)
            .finish()
    }
}

impl<S, C, R, O, Req> Service<Req> for Retry<S, C, R, O>
where
    S: Service<Req> + Clone,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Clone,
    R: Replay<Req> + Clone,
    O: RetryObserver + Clone,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S, Req, C, R, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.deposits.record();
        let copy = (self.config.backoff.max_retries() > 0).then(|| self.replay.replay(&req));
        let future = self.inner.call(req);
        ResponseFuture::new(
            future,
            self.inner.clone(),
            copy,
            self.classifier.clone(),
            self.replay.clone(),
            self.observer.clone(),
            self.config,
        )
    }
}
