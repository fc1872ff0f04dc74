//! The response future of [`Retry`](crate::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rampart_core::instant_after;
use rampart_core::replay::KeepsRequest;
use rampart_core::{Classify, Error, ErrorKind, IntoError, NotReplayable, Outcome, Schedule};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::budget::RetryBudget;
use crate::observe::{AttemptEvent, FinishEvent, GiveUp, RetryEvent, RetryObserver};
use crate::replay::Replay;
use crate::service::{Config, Shared};

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
    #[project = ResponseFutureProj]
    /// The response future of [`Retry`](crate::Retry).
    ///
    /// What the success path needs is kept inline and small; what only failures, timers and
    /// retries need lives in a `Cold` part that is allocated on first use.
    pub struct ResponseFuture<S, Req, C, R, O>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // This call's handle on the service for its retries: cloned from the layer's (in
        // `shared`) when the first retry is due, so that a call that succeeds first time
        // clones no service (made at the call, from the calling instance, once that
        // instance's `get_mut` was used).
        service: Option<S>,
        // The copy of the request this call holds: for the next attempt when `replayable`,
        // otherwise only for the layer above (`KeepsRequest`).
        request: Option<Req>,
        replayable: bool,
        classifier: C,
        replay: R,
        observer: O,
        // The settings, the budget and the service, kept alive by this call.
        shared: Arc<Shared<S>>,
        attempts: u32,
        // The call's timer, inline and pinned with the future: an attempt timeout or a
        // deadline arms it on every call, so it must not cost an allocation.
        #[pin]
        timer: Timer,
        cold: Option<Box<Cold>>,
    }
}

/// The failure-path state of one logical call, allocated on its first failure.
struct Cold {
    schedule: Option<Schedule>,
    span: Option<tracing::Span>,
    not_replayable: Option<NotReplayable>,
    // Attempts a circuit breaker rejected: they never reached the service.
    rejected: u32,
    // This call's jitter stream, numbered when it first plans a retry.
    stream: Option<u64>,
}

impl Cold {
    fn new() -> Box<Cold> {
        Box::new(Cold {
            schedule: None,
            span: None,
            not_replayable: None,
            rejected: 0,
            stream: None,
        })
    }
}

pin_project! {
    /// One timer per call (attempt timeout, deadline or backoff wait) and when the call
    /// started. Without timers the clock is read only on the first failure.
    struct Timer {
        // When the call started (with timers) or first failed (without).
        started: Option<Instant>,
        #[pin]
        sleep: Option<Sleep>,
        role: TimerRole,
    }
}

impl Timer {
    /// No timer; the clock is not read. A function rather than a constant: a constant
    /// `Timer` (its `Option<Sleep>` is over 100 bytes) is copied whole into every new
    /// future, where this writes only the fields' tags.
    #[inline(always)]
    fn idle(started: Option<Instant>) -> Timer {
        Timer {
            started,
            sleep: None,
            role: TimerRole::AttemptTimeout,
        }
    }

    /// The first attempt's timer, armed now if a timeout or a deadline is set.
    #[inline(always)]
    fn first(config: &Config, timed: bool) -> Timer {
        if !timed {
            return Timer::idle(None);
        }
        Timer::first_timed(config)
    }

    #[inline(never)]
    fn first_timed(config: &Config) -> Timer {
        let now = Instant::now();
        match attempt_bound(config, now, now) {
            Some((at, role)) => Timer {
                started: Some(now),
                sleep: Some(sleep_until(at)),
                role,
            },
            None => Timer::idle(Some(now)),
        }
    }

    fn armed(&self) -> bool {
        self.sleep.is_some()
    }

    /// Sets the timer to fire at `at`, reusing its registration when there is one.
    fn set(self: Pin<&mut Self>, at: Instant, role: TimerRole) {
        let mut this = self.project();
        *this.role = role;
        match this.sleep.as_mut().as_pin_mut() {
            Some(timer) => timer.reset(at),
            None => this.sleep.set(Some(sleep_until(at))),
        }
    }

    /// Arms the timer that bounds one attempt: the per-attempt timeout or the overall
    /// deadline, whichever comes first. Disarms it if neither is configured.
    fn arm_attempt(mut self: Pin<&mut Self>, config: &Config, now: Instant) {
        let started = *self.as_mut().project().started.get_or_insert(now);
        match attempt_bound(config, now, started) {
            Some((at, role)) => self.set(at, role),
            None => self.project().sleep.set(None),
        }
    }

    /// `true` once the armed timer has fired.
    fn fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        match self.project().sleep.as_pin_mut() {
            Some(timer) => timer.poll(cx).is_ready(),
            None => false,
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.map(|s| s.elapsed()).unwrap_or_default()
    }
}

/// When an attempt starting at `now` of a call that started at `started` must end, and why.
fn attempt_bound(config: &Config, now: Instant, started: Instant) -> Option<(Instant, TimerRole)> {
    let by_timeout = config.attempt_timeout.map(|t| instant_after(now, t));
    let by_deadline = config.deadline.map(|d| instant_after(started, d));
    match (by_timeout, by_deadline) {
        (Some(t), Some(d)) if d <= t => Some((d, TimerRole::Deadline)),
        (Some(t), _) => Some((t, TimerRole::AttemptTimeout)),
        (None, Some(d)) => Some((d, TimerRole::Deadline)),
        (None, None) => None,
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

/// The copy of a request a call starts with.
pub(crate) struct Copied<Req> {
    request: Option<Req>,
    replayable: bool,
    not_replayable: Option<NotReplayable>,
}

impl<Req> Copied<Req> {
    /// No copy: no retries, and nothing kept for the layer above.
    pub(crate) const NONE: Copied<Req> = Copied {
        request: None,
        replayable: false,
        not_replayable: None,
    };

    /// The copy made before the first attempt: one to replay (with retries), else — when
    /// `keep` — the copy `Replay::keep` makes for the layer above.
    #[inline(always)]
    pub(crate) fn of<R: Replay<Req>>(replay: &R, req: &Req, retries: bool, keep: bool) -> Self {
        if retries {
            match replay.replay(req) {
                Ok(copy) => Copied {
                    request: Some(copy),
                    replayable: true,
                    not_replayable: None,
                },
                Err(reason) => Self::not_replayable(replay, req, keep, reason),
            }
        } else {
            Copied {
                request: replay.keep(req),
                replayable: false,
                not_replayable: None,
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn not_replayable<R: Replay<Req>>(
        replay: &R,
        req: &Req,
        keep: bool,
        reason: NotReplayable,
    ) -> Self {
        Copied {
            request: if keep { replay.keep(req) } else { None },
            replayable: false,
            not_replayable: Some(reason),
        }
    }
}

impl<S, Req, C, R, O> ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        copy: Copied<Req>,
        classifier: C,
        replay: R,
        observer: O,
        shared: Arc<Shared<S>>,
        timed: bool,
    ) -> Self {
        let Copied {
            request,
            replayable,
            not_replayable,
        } = copy;
        let cold = not_replayable.map(Self::not_replayable);
        let timer = Timer::first(&shared.config, timed);
        ResponseFuture {
            state: State::Called { future },
            service,
            request,
            replayable,
            classifier,
            replay,
            observer,
            shared,
            attempts: 1,
            timer,
            cold,
        }
    }
}

impl<S, Req, C, R, O> ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    /// The cold part of a call whose request could not be copied.
    #[cold]
    #[inline(never)]
    fn not_replayable(reason: NotReplayable) -> Box<Cold> {
        let mut cold = Cold::new();
        cold.not_replayable = Some(reason);
        cold
    }
}

/// What to do after a failed attempt.
struct Retrying {
    delay: Duration,
    hinted: bool,
}

impl<S, Req, C, R, O> Future for ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req> + Clone,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner>,
    R: Replay<Req>,
    O: RetryObserver,
{
    type Output = Result<S::Response, Error<<S::Error as IntoError>::Inner>>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The hot path: a first attempt without timers that succeeds.
        if this.cold.is_none() && !this.timer.armed() {
            if let StateProj::Called { future } = this.state.as_mut().project() {
                let breaker_below = this.shared.config.breaker_below;
                let (polled, published) =
                    rampart_core::record::poll_retry_taking(breaker_below, || future.poll(cx));
                return match polled {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => {
                        // Each attempt is classified once: by the breaker below, if there is
                        // one in this call's record, or here.
                        let outcome = match published {
                            Some(o) => o,
                            None => match &r {
                                Ok(res) => this.classifier.classify(Ok(res)),
                                Err(_) => Outcome::Permanent, // classified in poll_slow
                            },
                        };
                        match r {
                            Ok(res) if outcome.is_success() => {
                                this.state.set(State::Done);
                                Poll::Ready(Ok(res))
                            }
                            r => {
                                let known = r.is_ok() || outcome != Outcome::Permanent;
                                Self::poll_slow(this, cx, Some((r, known.then_some(outcome))))
                            }
                        }
                    }
                };
            }
        }
        Self::poll_slow(this, cx, None)
    }
}

impl<S, Req, C, R, O> ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req> + Clone,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner>,
    R: Replay<Req>,
    O: RetryObserver,
{
    /// Everything but the hot path: failures, timers, waits and retries.
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn poll_slow(
        mut this: ResponseFutureProj<'_, S, Req, C, R, O>,
        cx: &mut Context<'_>,
        mut first: Option<(Result<S::Response, S::Error>, Option<Outcome>)>,
    ) -> Poll<<Self as Future>::Output> {
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let (polled, known) = if let Some((r, o)) = first.take() {
                        (Poll::Ready(r), o)
                    } else {
                        let breaker_below = this.shared.config.breaker_below;
                        let poll = || {
                            rampart_core::record::poll_retry_taking(breaker_below, || {
                                future.poll(cx)
                            })
                        };
                        match this.cold.as_ref().and_then(|c| c.span.as_ref()) {
                            Some(span) => span.in_scope(poll),
                            None => poll(),
                        }
                    };
                    let result = match polled {
                        Poll::Ready(r) => r.map_err(|e| e.into_error().into_kind()),
                        Poll::Pending => {
                            if !this.timer.as_mut().fired(cx) {
                                return Poll::Pending;
                            }
                            // The attempt ran out of time: cancel it.
                            this.state.set(State::Done);
                            if this.timer.role == TimerRole::AttemptTimeout {
                                let after = this.shared.config.attempt_timeout.unwrap_or_default();
                                Err(ErrorKind::Timeout(rampart_core::Timeout::new(after)))
                            } else {
                                let attempts = *this.attempts;
                                let rejected = this.cold.as_ref().map_or(0, |c| c.rejected);
                                let reached = attempts.saturating_sub(rejected);
                                let elapsed = this.timer.elapsed();
                                rampart_core::record::update(|r| {
                                    r.attempt(true, Outcome::TRANSIENT);
                                    r.stop =
                                        Some(rampart_core::record::StopReason::DeadlineExceeded);
                                    r.elapsed = elapsed;
                                });
                                notify_finish(
                                    this.observer,
                                    &this.shared.config,
                                    attempts,
                                    Some(GiveUp::DeadlineExceeded),
                                );
                                tracing::debug!(
                                    service = %this.shared.config.name,
                                    attempts,
                                    "deadline exceeded during an attempt; giving up"
                                );
                                let err = Error::new(ErrorKind::DeadlineExceeded(None))
                                    .with_attempts(reached)
                                    .with_elapsed(elapsed);
                                return Poll::Ready(Err(err));
                            }
                        }
                    };
                    this.state.set(State::Done);

                    let attempts = *this.attempts;
                    // rampart's one mapping (a nested retry's give-up is permanent; an open
                    // circuit is rejected, and waited for below).
                    let open_in = match (&result, known) {
                        // A breaker inside the service refused the call after the breaker
                        // below admitted it: that breaker published the dependency's answer
                        // (transient, with `retry_in` as its hint), and the call reached the
                        // service.
                        (Err(ErrorKind::CircuitOpen(_)), Some(o)) if o != Outcome::Rejected => None,
                        // The breaker below refused it (or no breaker publishes here).
                        (Err(ErrorKind::CircuitOpen(open)), _) => Some(open.retry_in),
                        _ => None,
                    };
                    let outcome = known.unwrap_or_else(|| {
                        rampart_core::classify::outcome(&*this.classifier, result.as_ref())
                    });
                    if attempts > 1 {
                        this.observer.on_attempt(&AttemptEvent {
                            service: this.shared.config.name.clone(),
                            attempt: attempts,
                            outcome,
                        });
                    }
                    let rejected_now = open_in.is_some();
                    rampart_core::record::update(|r| r.attempt(!rejected_now, outcome));
                    if outcome.is_success() {
                        if attempts > 1 {
                            notify_finish(this.observer, &this.shared.config, attempts, None);
                        }
                        return Poll::Ready(result.map_err(|kind| {
                            let elapsed = this.timer.elapsed();
                            let rejected = this.cold.as_ref().map_or(0, |c| c.rejected);
                            Error::new(kind)
                                .with_attempts(attempts.saturating_sub(rejected))
                                .with_elapsed(elapsed)
                        }));
                    }

                    // The failure path: from here on the cold part exists.
                    let cold = this.cold.get_or_insert_with(Cold::new);
                    if rejected_now {
                        cold.rejected += 1;
                    }
                    let reached = attempts.saturating_sub(cold.rejected);
                    let plan = if open_in.is_none() && !outcome.is_retryable() {
                        Err(GiveUp::NotRetryable)
                    } else {
                        plan_retry(
                            &this.shared.config,
                            this.shared.budget.as_ref(),
                            &this.shared.streams,
                            attempts,
                            cold,
                            this.timer.as_mut().project().started,
                            *this.replayable && this.request.is_some(),
                            outcome,
                            open_in,
                        )
                    };
                    let Retrying { delay, hinted } = match plan {
                        Ok(r) => r,
                        Err(why) => {
                            tracing::debug!(
                                service = %this.shared.config.name,
                                attempts,
                                outcome = %outcome,
                                reason = why.as_str(),
                                "giving up"
                            );
                            notify_finish(this.observer, &this.shared.config, attempts, Some(why));
                            let elapsed = this.timer.elapsed();
                            rampart_core::record::update(|r| {
                                r.stop = Some(why.stop_reason());
                                r.elapsed = elapsed;
                            });
                            let reason = cold.not_replayable.take();
                            return Poll::Ready(give_up(result, why, reached, elapsed, reason));
                        }
                    };

                    tracing::debug!(
                        service = %this.shared.config.name,
                        attempt = attempts,
                        outcome = %outcome,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        hinted,
                        "attempt failed; retrying"
                    );
                    this.observer.on_retry(&RetryEvent {
                        service: this.shared.config.name.clone(),
                        attempt: attempts,
                        outcome,
                        delay,
                        hinted,
                    });
                    if delay.is_zero() {
                        this.state.set(State::Readying);
                    } else {
                        this.timer
                            .as_mut()
                            .set(instant_after(Instant::now(), delay), TimerRole::Backoff);
                        this.state.set(State::Waiting);
                    }
                }
                StateProj::Waiting => {
                    if !this.timer.as_mut().fired(cx) {
                        return Poll::Pending;
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    // The service's own layers, polled or called here, write nothing into
                    // this call's record (see `rampart_core::record`).
                    let service = this.service.get_or_insert_with(|| {
                        rampart_core::record::poll_retry(false, || this.shared.service())
                    });
                    if let Err(e) =
                        ready!(rampart_core::record::poll_retry(false, || service.poll_ready(cx)))
                    {
                        let rejected = this.cold.as_ref().map_or(0, |c| c.rejected);
                        let attempts = this.attempts.saturating_sub(rejected);
                        this.state.set(State::Done);
                        let elapsed = this.timer.elapsed();
                        let err = e.into_error().with_attempts(attempts).with_elapsed(elapsed);
                        return Poll::Ready(Err(err));
                    }
                    let Some(request) = this.request.take() else {
                        // plan_retry() schedules a retry only with a request in hand.
                        unreachable!("retry scheduled without a replayable request");
                    };
                    // The copy held is sent; a new one is held for the next attempt, and —
                    // when the layer above takes the request after the call — for it, so
                    // with `keep_request` the last attempt is a copy too.
                    let keep = this.shared.config.keep_request;
                    if keep || *this.attempts < this.shared.config.backoff.max_retries() {
                        match this.replay.replay(&request) {
                            Ok(copy) => *this.request = Some(copy),
                            Err(reason) => {
                                if keep {
                                    *this.request = this.replay.keep(&request);
                                    *this.replayable = false;
                                }
                                if let Some(cold) = this.cold.as_mut() {
                                    cold.not_replayable = Some(reason);
                                }
                            }
                        }
                    }
                    let future = rampart_core::record::poll_retry(false, || service.call(request));
                    *this.attempts += 1;
                    let cold = this.cold.get_or_insert_with(Cold::new);
                    this.timer
                        .as_mut()
                        .arm_attempt(&this.shared.config, Instant::now());
                    cold.span = Some(tracing::debug_span!(
                        "retry_attempt",
                        service = %this.shared.config.name,
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

impl<S, Req, C, R, O> KeepsRequest<Req> for ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    /// The copy of the request this call held, once the call has ended: a copy the
    /// replayer made, or for a request that could not be replayed the partial copy of
    /// [`Replay::keep`] (with [`RetryLayer::keep_request`](crate::RetryLayer::keep_request)).
    /// `None` while the call is in progress (the copy is the next attempt's), once taken, or
    /// when the call held none: without `keep_request`, a call with no retries configured
    /// holds none, and the last attempt is sent the copy held.
    fn take_request(self: Pin<&mut Self>) -> Option<Req> {
        let this = self.project();
        match &*this.state {
            State::Done => this.request.take(),
            _ => None,
        }
    }
}

fn notify_finish<O: RetryObserver>(
    observer: &O,
    config: &Config,
    attempts: u32,
    gave_up: Option<GiveUp>,
) {
    observer.on_finish(&FinishEvent {
        service: config.name.clone(),
        attempts,
        gave_up,
    });
}

/// Decides whether and when to retry a retryable failure (or an open circuit).
#[allow(clippy::too_many_arguments)]
fn plan_retry(
    config: &Config,
    budget: Option<&RetryBudget>,
    streams: &AtomicU64,
    attempts: u32,
    cold: &mut Cold,
    started: &mut Option<Instant>,
    have_request: bool,
    outcome: Outcome,
    open_in: Option<Duration>,
) -> Result<Retrying, GiveUp> {
    let backoff = &config.backoff;
    if attempts > backoff.max_retries() {
        // The last try met an open circuit: that, not the retry count, is what stopped the
        // call (the dependency never saw it), and the dead letter says so.
        return Err(if open_in.is_some() {
            GiveUp::CircuitOpen
        } else {
            GiveUp::Exhausted
        });
    }
    if !have_request {
        return Err(if cold.not_replayable.is_some() {
            GiveUp::NotReplayable
        } else {
            GiveUp::Exhausted
        });
    }
    let now = Instant::now();
    let started = *started.get_or_insert(now);
    let deadline_at = config.deadline.map(|d| instant_after(started, d));
    let stream = *cold
        .stream
        .get_or_insert_with(|| streams.fetch_add(1, Ordering::Relaxed));
    let schedule = cold
        .schedule
        .get_or_insert_with(|| backoff.schedule(stream));

    let (delay, hinted) = if let Some(retry_in) = open_in {
        // Wait for the breaker only if its probe window opens before the deadline. Never at
        // once: at least the base delay, and spread with jitter over a quarter of the wait
        // so that the callers waiting on one circuit do not all wake at the same instant.
        let wait = retry_in
            .max(backoff.base_delay())
            .max(Duration::from_millis(1));
        let spread = (wait / 4).max(backoff.base_delay());
        let delay = wait.saturating_add(spread.mul_f64(unit(stream, attempts)));
        match deadline_at {
            Some(at) if instant_after(now, delay) < at => {
                schedule.skip_with(delay);
                // Waiting on the circuit spends no retry-budget token: nothing reaches the
                // dependency while it is open, and the budget is for the retries that do.
                return Ok(Retrying {
                    delay,
                    hinted: true,
                });
            }
            _ => return Err(GiveUp::CircuitOpen),
        }
    } else if let Some(hint) = outcome.retry_after() {
        // Never before the server's hint; a hint past `max_delay` or the deadline stops
        // the call as throttled instead of retrying early.
        if hint > backoff.max_delay() {
            return Err(GiveUp::Throttled);
        }
        if let Some(at) = deadline_at {
            if instant_after(now, hint) >= at {
                return Err(GiveUp::Throttled);
            }
        }
        let delay = match schedule.next() {
            Some(d) => d.max(hint),
            None => return Err(GiveUp::Exhausted),
        };
        (delay, true)
    } else {
        match schedule.next() {
            Some(d) => (d, false),
            None => return Err(GiveUp::Exhausted),
        }
    };
    if let Some(at) = deadline_at {
        if instant_after(now, delay) >= at {
            return Err(GiveUp::DeadlineExceeded);
        }
    }
    if let Some(budget) = budget {
        if !budget.try_withdraw() {
            return Err(GiveUp::BudgetExhausted);
        }
    }
    Ok(Retrying { delay, hinted })
}

/// A reproducible draw in [0, 1) for call `stream`'s `attempt` (splitmix64).
fn unit(stream: u64, attempt: u32) -> f64 {
    let mut z = stream
        .rotate_left(17)
        .wrapping_add(u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss)]
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    u
}

/// The final result when the layer stops retrying.
fn give_up<Res, E>(
    result: Result<Res, ErrorKind<E>>,
    why: GiveUp,
    attempts: u32,
    elapsed: Duration,
    not_replayable: Option<NotReplayable>,
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
        GiveUp::NotReplayable => match not_replayable {
            Some(reason) => ErrorKind::NotReplayable {
                reason,
                last: Box::new(kind),
            },
            None => kind,
        },
        GiveUp::NotRetryable | GiveUp::Exhausted | GiveUp::CircuitOpen | GiveUp::Throttled => kind,
    };
    Err(Error::new(kind)
        .with_attempts(attempts)
        .with_elapsed(elapsed))
}

impl<S, Req, C, R, O> fmt::Debug for ResponseFuture<S, Req, C, R, O>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("service", &self.shared.config.name)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
