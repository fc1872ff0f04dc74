//! The response future of [`Retry`](crate::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rampart_core::{
    Classify, Error, ErrorKind, IntoError, NotReplayable, Outcome, Schedule,
};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use crate::observe::{AttemptEvent, FinishEvent, GiveUp, RetryEvent, RetryObserver};
use crate::replay::Replay;
use crate::service::Config;

/// Distinguishes the jitter streams of concurrent calls that share a seed.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerRole {
    /// The per-attempt timeout bounds the current attempt.
    AttemptTimeout,
    /// The overall deadline bounds the current attempt.
    Deadline,
    /// Waiting out a backoff delay.
    Backoff,
}

pin_project! {
    /// The response future of [`Retry`](crate::Retry).
    pub struct ResponseFuture<S, Req, C, R, O>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Option<Result<Req, NotReplayable>>,
        classifier: C,
        replay: R,
        observer: O,
        config: Config,
        attempts: u32,
        started: Option<Instant>,
        timer: Option<Pin<Box<Sleep>>>,
        timer_role: TimerRole,
        schedule: Option<Schedule>,
        span: Option<tracing::Span>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Waiting,
        Readying,
        Done,
    }
}

impl<S, Req, C, R, O> ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn new(
        future: S::Future,
        service: S,
        request: Option<Result<Req, NotReplayable>>,
        classifier: C,
        replay: R,
        observer: O,
        config: Config,
    ) -> Self {
        let mut this = ResponseFuture {
            state: State::Called { future },
            service,
            request,
            classifier,
            replay,
            observer,
            config,
            attempts: 1,
            started: None,
            timer: None,
            timer_role: TimerRole::AttemptTimeout,
            schedule: None,
            span: None,
        };
        if config.deadline.is_some() || config.attempt_timeout.is_some() {
            let now = Instant::now();
            this.started = Some(now);
            arm_attempt_timer(&mut this.timer, &mut this.timer_role, &config, now, now);
        }
        this
    }
}

/// Arms the timer that bounds one attempt: the per-attempt timeout or the overall deadline,
/// whichever comes first. Does nothing if neither is configured.
fn arm_attempt_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    role: &mut TimerRole,
    config: &Config,
    started: Instant,
    now: Instant,
) {
    let by_timeout = config.attempt_timeout.map(|t| now + t);
    let by_deadline = config.deadline.map(|d| started + d);
    let (at, r) = match (by_timeout, by_deadline) {
        (Some(t), Some(d)) if d <= t => (d, TimerRole::Deadline),
        (Some(t), _) => (t, TimerRole::AttemptTimeout),
        (None, Some(d)) => (d, TimerRole::Deadline),
        (None, None) => {
            *timer = None;
            return;
        }
    };
    set_timer(timer, at);
    *role = r;
}

fn set_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(sleep_until(at))),
    }
}

/// What to do after a failed attempt.
struct Retrying {
    delay: Duration,
    hinted: bool,
}

impl<S, Req, C, R, O> Future for ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner>,
    R: Replay<Req>,
    O: RetryObserver,
{
    type Output = Result<S::Response, Error<<S::Error as IntoError>::Inner>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let polled = {
                        let _entered = this.span.as_ref().map(tracing::Span::enter);
                        future.poll(cx)
                    };
                    let result = match polled {
                        Poll::Ready(r) => r.map_err(|e| e.into_error().into_kind()),
                        Poll::Pending => {
                            let Some(timer) = this.timer.as_mut() else {
                                return Poll::Pending;
                            };
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            // The attempt ran out of time: cancel it.
                            this.state.set(State::Done);
                            match *this.timer_role {
                                TimerRole::AttemptTimeout => {
                                    let after = this.config.attempt_timeout.unwrap_or_default();
                                    Err(ErrorKind::Timeout(rampart_core::Timeout::new(after)))
                                }
                                TimerRole::Deadline | TimerRole::Backoff => {
                                    let attempts = *this.attempts;
                                    notify_finish(this.observer, this.config, attempts, Some(GiveUp::DeadlineExceeded));
                                    tracing::debug!(
                                        service = %this.config.name,
                                        attempts,
                                        "deadline exceeded during an attempt; giving up"
                                    );
                                    let err = Error::new(ErrorKind::DeadlineExceeded(None))
                                        .with_attempts(attempts)
                                        .with_elapsed(elapsed(*this.started));
                                    return Poll::Ready(Err(err));
                                }
                            }
                        }
                    };
                    this.state.set(State::Done);

                    let attempts = *this.attempts;
                    let (outcome, open_in) = match &result {
                        Ok(res) => (this.classifier.classify(Ok(res)), None),
                        Err(ErrorKind::Inner(e)) => (this.classifier.classify(Err(e)), None),
                        Err(ErrorKind::Timeout(_)) => (Outcome::TRANSIENT, None),
                        Err(ErrorKind::CircuitOpen(open)) => (Outcome::Rejected, Some(open.retry_in)),
                        // Another layer already gave up (a nested retry): never retry that.
                        Err(_) => (Outcome::Permanent, None),
                    };
                    if attempts > 1 {
                        this.observer.on_attempt(&AttemptEvent {
                            service: this.config.name,
                            attempt: attempts,
                            outcome,
                        });
                    }
                    if outcome.is_success() {
                        if attempts > 1 {
                            notify_finish(this.observer, this.config, attempts, None);
                        }
                        return Poll::Ready(result.map_err(|kind| Error::new(kind).with_attempts(attempts)));
                    }

                    let plan = if open_in.is_none() && !outcome.is_retryable() {
                        Err(GiveUp::NotRetryable)
                    } else {
                        plan_retry(
                            this.config,
                            attempts,
                            this.started,
                            this.schedule,
                            this.request,
                            outcome,
                            open_in,
                        )
                    };
                    let Retrying { delay, hinted } = match plan {
                        Ok(r) => r,
                        Err(why) => {
                            tracing::debug!(
                                service = %this.config.name,
                                attempts,
                                outcome = %outcome,
                                reason = why.as_str(),
                                "giving up"
                            );
                            notify_finish(this.observer, this.config, attempts, Some(why));
                            let elapsed = elapsed(*this.started);
                            return Poll::Ready(give_up(result, why, attempts, elapsed, this.request.take()));
                        }
                    };

                    tracing::debug!(
                        service = %this.config.name,
                        attempt = attempts,
                        outcome = %outcome,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        hinted,
                        "attempt failed; retrying"
                    );
                    this.observer.on_retry(&RetryEvent {
                        service: this.config.name,
                        attempt: attempts,
                        outcome,
                        delay,
                        hinted,
                    });
                    if delay.is_zero() {
                        this.state.set(State::Readying);
                    } else {
                        set_timer(this.timer, Instant::now() + delay);
                        *this.timer_role = TimerRole::Backoff;
                        this.state.set(State::Waiting);
                    }
                }
                StateProj::Waiting => {
                    if let Some(timer) = this.timer.as_mut() {
                        ready!(timer.as_mut().poll(cx));
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        let attempts = *this.attempts;
                        this.state.set(State::Done);
                        let err = e.into_error().with_attempts(attempts).with_elapsed(elapsed(*this.started));
                        return Poll::Ready(Err(err));
                    }
                    let request = match this.request.take() {
                        Some(Ok(request)) => request,
                        // plan_retry() schedules a retry only with a replayable request in hand.
                        _ => unreachable!("retry scheduled without a replayable request"),
                    };
                    if *this.attempts < this.config.backoff.max_retries() {
                        *this.request = Some(this.replay.replay(&request));
                    }
                    let future = this.service.call(request);
                    *this.attempts += 1;
                    let now = Instant::now();
                    let started = *this.started.get_or_insert(now);
                    arm_attempt_timer(this.timer, this.timer_role, this.config, started, now);
                    *this.span = Some(tracing::debug_span!(
                        "retry_attempt",
                        service = %this.config.name,
                        attempt = *this.attempts,
                    ));
                    this.state.set(State::Called { future });
                }
                StateProj::Done => {
                    // Polled after completion: the contract of `Future` allows anything but UB.
                    return Poll::Pending;
                }
            }
        }
    }
}

fn elapsed(started: Option<Instant>) -> Duration {
    started.map(|s| s.elapsed()).unwrap_or_default()
}

fn notify_finish<O: RetryObserver>(observer: &O, config: &Config, attempts: u32, gave_up: Option<GiveUp>) {
    observer.on_finish(&FinishEvent {
        service: config.name,
        attempts,
        gave_up,
    });
}

/// Decides whether and when to retry a retryable failure (or an open circuit).
fn plan_retry<Req>(
    config: &Config,
    attempts: u32,
    started: &mut Option<Instant>,
    schedule: &mut Option<Schedule>,
    request: &Option<Result<Req, NotReplayable>>,
    outcome: Outcome,
    open_in: Option<Duration>,
) -> Result<Retrying, GiveUp> {
    let backoff = &config.backoff;
    if attempts > backoff.max_retries() {
        return Err(GiveUp::Exhausted);
    }
    match request {
        Some(Ok(_)) => {}
        Some(Err(_)) => return Err(GiveUp::NotReplayable),
        None => return Err(GiveUp::Exhausted),
    }
    let now = Instant::now();
    let started = *started.get_or_insert(now);
    let deadline_at = config.deadline.map(|d| started + d);
    let schedule = schedule
        .get_or_insert_with(|| backoff.schedule(NEXT_STREAM.fetch_add(1, Ordering::Relaxed)));

    let (delay, hinted) = if let Some(retry_in) = open_in {
        // Wait for the breaker only if its probe window opens before the deadline.
        match deadline_at {
            Some(at) if now + retry_in < at => {
                schedule.skip_with(retry_in);
                (retry_in, true)
            }
            _ => return Err(GiveUp::CircuitOpen),
        }
    } else if let Some(hint) = outcome.retry_after() {
        let delay = hint.min(backoff.max_delay());
        schedule.skip_with(delay);
        (delay, true)
    } else {
        match schedule.next() {
            Some(d) => (d, false),
            None => return Err(GiveUp::Exhausted),
        }
    };
    if let Some(at) = deadline_at {
        if now + delay >= at {
            return Err(GiveUp::DeadlineExceeded);
        }
    }
    if let Some(budget) = config.budget.and_then(|b| b.get()) {
        if !budget.try_withdraw() {
            return Err(GiveUp::BudgetExhausted);
        }
    }
    Ok(Retrying { delay, hinted })
}

/// The final result when the layer stops retrying.
fn give_up<Res, E, Req>(
    result: Result<Res, ErrorKind<E>>,
    why: GiveUp,
    attempts: u32,
    elapsed: Duration,
    request: Option<Result<Req, NotReplayable>>,
) -> Result<Res, Error<E>> {
    let kind = match result {
        // A response that classified as a failure is handed back as it is: the caller can
        // read its status and body.
        Ok(res) => return Ok(res),
        Err(kind) => kind,
    };
    let kind = match why {
        GiveUp::BudgetExhausted => ErrorKind::BudgetExhausted(Box::new(kind)),
        GiveUp::DeadlineExceeded => ErrorKind::DeadlineExceeded(Some(Box::new(kind))),
        GiveUp::NotReplayable => match request {
            Some(Err(reason)) => ErrorKind::NotReplayable {
                reason,
                last: Box::new(kind),
            },
            _ => kind,
        },
        GiveUp::NotRetryable | GiveUp::Exhausted | GiveUp::CircuitOpen => kind,
    };
    Err(Error::new(kind).with_attempts(attempts).with_elapsed(elapsed))
}

impl<S, Req, C, R, O> fmt::Debug for ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("service", &self.config.name)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
