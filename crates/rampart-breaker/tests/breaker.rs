//! The circuit breaker's contract, on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, FailureKinds,
    KeyedCircuitBreakerLayer, Reason, State, Transition, Window,
};
use rampart_core::{Error, Outcome};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the scripted service answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Throttle,
    Reject,
    Slow(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resp(u16);

fn classify(r: Result<&Resp, &io::Error>) -> Outcome {
    match r {
        Ok(Resp(200)) => Outcome::Success,
        Ok(Resp(429)) => Outcome::THROTTLED,
        Ok(Resp(400)) => Outcome::Rejected,
        Ok(_) => Outcome::TRANSIENT,
        Err(e) => rampart_core::classify::io_error(e),
    }
}

type Classifier = fn(Result<&Resp, &io::Error>) -> Outcome;

/// A service that answers as told by the request and counts calls reaching it.
#[derive(Clone, Default)]
struct Dep {
    calls: Arc<AtomicU32>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Service<Answer> for Dep {
    type Response = Resp;
    type Error = io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resp, io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, a: Answer) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let r = match a {
                Answer::Ok => Ok(Resp(200)),
                Answer::Fail => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
                Answer::Throttle => Ok(Resp(429)),
                Answer::Reject => Ok(Resp(400)),
                Answer::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(Resp(200))
                }
            };
            in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        })
    }
}

impl Dep {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn breaker(
    cfg: CircuitBreakerConfig,
) -> (
    CircuitBreaker<Dep, Classifier>,
    Dep,
    rampart_breaker::BreakerHandle,
) {
    let layer = CircuitBreakerLayer::new(cfg, classify as Classifier).name("gemini_api");
    let handle = layer.handle();
    let dep = Dep::default();
    (layer.layer(dep.clone()), dep, handle)
}

async fn send(
    svc: &mut CircuitBreaker<Dep, Classifier>,
    a: Answer,
) -> Result<Resp, Error<io::Error>> {
    svc.ready().await?.call(a).await
}

fn consecutive(n: u32) -> rampart_breaker::CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder().consecutive_failures(Some(n))
}

#[tokio::test(start_paused = true)]
async fn reference_design_threshold_two_then_probe_and_close() {
    let cfg = consecutive(2)
        .recovery_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut svc, dep, handle) = breaker(cfg);
    assert!(send(&mut svc, Answer::Fail).await.is_err());
    assert!(send(&mut svc, Answer::Fail).await.is_err());
    assert_eq!(handle.state(), State::Open);

    let err = send(&mut svc, Answer::Ok).await.expect_err("rejected");
    let open = err.circuit_open().expect("CircuitOpen");
    assert_eq!(open.service.as_str(), "gemini_api");
    assert_eq!(open.retry_in, Duration::from_secs(60));
    assert_eq!(
        err.to_string(),
        "circuit breaker is open for gemini_api (half-open in 60s)"
    );
    assert_eq!(
        dep.calls(),
        2,
        "the rejected call never reached the service"
    );

    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(
        send(&mut svc, Answer::Ok).await.is_err(),
        "still open at 59 s"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    for i in 0..3 {
        send(&mut svc, Answer::Ok).await.expect("probe passes");
        let expect = if i < 2 {
            State::HalfOpen
        } else {
            State::Closed
        };
        assert_eq!(handle.state(), expect, "after probe {}", i + 1);
    }
    assert_eq!(dep.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_count() {
    let (mut svc, _, handle) = breaker(consecutive(3).build().unwrap());
    for _ in 0..10 {
        let _ = send(&mut svc, Answer::Fail).await;
        let _ = send(&mut svc, Answer::Fail).await;
        send(&mut svc, Answer::Ok).await.unwrap();
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "20 failures, never 3 in a row"
    );
    assert_eq!(handle.snapshot().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window_after_minimum_calls() {
    let cfg = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(10)))
        .failure_rate(0.5)
        .minimum_calls(6)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    // 4 failures in 4 calls: 100 %, but below the minimum of 6 calls.
    for _ in 0..4 {
        let _ = send(&mut svc, Answer::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
    send(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    // The 6th call: 5 failures of 6.
    let _ = send(&mut svc, Answer::Fail).await;
    assert_eq!(handle.state(), State::Open);
    let s = handle.snapshot();
    assert_eq!(s.calls_in_window, 6);
    assert!((s.failure_rate.unwrap() - 5.0 / 6.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn count_window_forgets_calls_beyond_its_size() {
    let cfg = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(4)))
        .failure_rate(0.75)
        .minimum_calls(4)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    for a in [
        Answer::Fail,
        Answer::Fail,
        Answer::Ok,
        Answer::Ok,
        Answer::Ok,
        Answer::Fail,
        Answer::Fail,
    ] {
        let _ = send(&mut svc, a).await;
    }
    // The last 4 calls: ok, ok, fail, fail → 50 %: stays closed.
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Answer::Fail).await; // ok, fail, fail, fail → 75 %
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_counts_only_recent_seconds() {
    let cfg = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Time(10)))
        .failure_rate(0.5)
        .minimum_calls(4)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    for _ in 0..3 {
        let _ = send(&mut svc, Answer::Fail).await;
    }
    // Eleven seconds later those failures have left the window.
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..3 {
        send(&mut svc, Answer::Ok).await.unwrap();
    }
    let _ = send(&mut svc, Answer::Fail).await;
    assert_eq!(handle.state(), State::Closed, "1 failure in 4 recent calls");
    assert_eq!(handle.snapshot().calls_in_window, 4);
    for _ in 0..2 {
        let _ = send(&mut svc, Answer::Fail).await;
    }
    assert_eq!(handle.state(), State::Open, "3 failures in 6 recent calls");
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips() {
    let cfg = CircuitBreakerConfig::builder()
        .consecutive_failures(None)
        .window(Some(Window::Count(10)))
        .minimum_calls(4)
        .slow_call(Duration::from_millis(500), 0.5)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    send(&mut svc, Answer::Slow(100)).await.unwrap();
    send(&mut svc, Answer::Slow(100)).await.unwrap();
    send(&mut svc, Answer::Slow(900)).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    send(&mut svc, Answer::Slow(900)).await.unwrap();
    assert_eq!(
        handle.state(),
        State::Open,
        "2 of 4 calls slower than 500 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn throttling_and_rejections_do_not_count_unless_configured() {
    let (mut svc, _, handle) = breaker(consecutive(2).build().unwrap());
    for _ in 0..5 {
        send(&mut svc, Answer::Throttle).await.unwrap();
        send(&mut svc, Answer::Reject).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);

    let cfg = consecutive(2)
        .failure_kinds(FailureKinds::default().throttled(true))
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    send(&mut svc, Answer::Throttle).await.unwrap();
    send(&mut svc, Answer::Throttle).await.unwrap();
    assert_eq!(handle.state(), State::Open);

    let cfg = consecutive(1)
        .failure_kinds(FailureKinds::default().transient(false))
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    let _ = send(&mut svc, Answer::Fail).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "transient failures switched off"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_and_reset() {
    let (mut svc, dep, handle) = breaker(consecutive(1).build().unwrap());
    handle.force_open();
    let err = send(&mut svc, Answer::Ok).await.unwrap_err();
    assert_eq!(err.circuit_open().map(|o| o.retry_in), Some(Duration::MAX));
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        send(&mut svc, Answer::Ok).await.is_err(),
        "forced open does not time out"
    );
    assert_eq!(dep.calls(), 0);

    handle.disable();
    for _ in 0..5 {
        let _ = send(&mut svc, Answer::Fail).await;
    }
    assert_eq!(
        handle.state(),
        State::Disabled,
        "never trips while disabled"
    );
    assert_eq!(dep.calls(), 5);
    assert_eq!(handle.snapshot().consecutive_failures, 5, "still counts");

    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 0);
    let _ = send(&mut svc, Answer::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_longer_each_time() {
    let cfg = consecutive(1)
        .recovery_timeout(Duration::from_secs(10))
        .max_recovery_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    let _ = send(&mut svc, Answer::Fail).await;
    let mut waits = Vec::new();
    for _ in 0..4 {
        let open = send(&mut svc, Answer::Ok).await.unwrap_err();
        let wait = open.circuit_open().unwrap().retry_in;
        waits.push(wait.as_secs());
        tokio::time::advance(wait).await;
        let _ = send(&mut svc, Answer::Fail).await; // the probe fails
        assert_eq!(handle.state(), State::Open);
    }
    assert_eq!(waits, [10, 20, 30, 30]);
    // Closing resets the growth.
    tokio::time::advance(Duration::from_secs(30)).await;
    for _ in 0..3 {
        send(&mut svc, Answer::Ok).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Answer::Fail).await;
    let open = send(&mut svc, Answer::Ok).await.unwrap_err();
    assert_eq!(
        open.circuit_open().unwrap().retry_in,
        Duration::from_secs(10)
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_the_permitted_probes_among_fifty_callers() {
    let cfg = consecutive(1)
        .recovery_timeout(Duration::from_secs(1))
        .permitted_probes(2)
        .success_threshold(3)
        .build()
        .unwrap();
    let (mut svc, dep, handle) = breaker(cfg);
    let _ = send(&mut svc, Answer::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let calls_before = dep.calls();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut s = svc.clone();
        tasks.push(tokio::spawn(
            async move { send(&mut s, Answer::Slow(50)).await },
        ));
    }
    let mut rejected = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            // Busy probe slots never say "now": a tenth of the recovery timeout.
            assert_eq!(
                e.circuit_open().map(|o| o.retry_in),
                Some(Duration::from_millis(100))
            );
            rejected += 1;
        }
    }
    assert_eq!(
        dep.max_in_flight.load(Ordering::SeqCst),
        2,
        "never more than 2 probes in flight"
    );
    assert_eq!(dep.calls() - calls_before, 2);
    assert_eq!(rejected, 48);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probe_successes, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let cfg = consecutive(1)
        .recovery_timeout(Duration::from_secs(1))
        .permitted_probes(1)
        .success_threshold(1)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    let _ = send(&mut svc, Answer::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    {
        let fut = svc.ready().await.unwrap().call(Answer::Slow(10_000));
        assert_eq!(handle.snapshot().probes_in_flight, 1);
        // Another caller is turned away while the probe is out.
        let mut other = svc.clone();
        assert!(send(&mut other, Answer::Ok).await.is_err());
        drop(fut);
    }
    assert_eq!(handle.snapshot().probes_in_flight, 0);
    send(&mut svc, Answer::Ok)
        .await
        .expect("the slot is free again");
    assert_eq!(handle.state(), State::Closed);

    // A probe admitted in poll_ready but never called is given back when the service drops.
    handle.force_open();
    handle.reset();
    let _ = send(&mut svc, Answer::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut s = svc.clone();
    s.ready().await.unwrap();
    assert_eq!(handle.snapshot().probes_in_flight, 1);
    drop(s);
    assert_eq!(handle.snapshot().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_ready_while_open_without_polling_the_inner_service() {
    let (mock, mut h) = tower_test::mock::pair::<Answer, Resp>();
    let mock = mock.map_err(|e| io::Error::other(e.to_string()));
    let layer = CircuitBreakerLayer::new(consecutive(1).build().unwrap(), classify as Classifier);
    let handle = layer.handle();
    let mut svc = layer.layer(mock);
    handle.force_open();
    h.allow(0);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(matches!(
        svc.poll_ready(&mut cx),
        std::task::Poll::Ready(Ok(()))
    ));
    let err = svc.call(Answer::Ok).await.unwrap_err();
    assert!(err.circuit_open().is_some());
    assert!(
        h.poll_request().is_pending(),
        "nothing reached the inner service"
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_holds_poll_ready_until_the_circuit_may_half_open() {
    let cfg = consecutive(1)
        .recovery_timeout(Duration::from_secs(5))
        .backpressure(true)
        .build()
        .unwrap();
    let (mut svc, _, handle) = breaker(cfg);
    let _ = send(&mut svc, Answer::Fail).await;
    assert_eq!(handle.state(), State::Open);
    let start = Instant::now();
    svc.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    svc.call(Answer::Ok).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transitions_reach_tracing_listeners_and_subscribers() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let layer = CircuitBreakerLayer::new(
        consecutive(2)
            .recovery_timeout(Duration::from_secs(1))
            .success_threshold(1)
            .build()
            .unwrap(),
        classify as Classifier,
    )
    .name("db")
    .on_transition(move |t: &Transition| log.lock().unwrap().push(t.to_string()));
    let handle = layer.handle();
    let mut rx = handle.subscribe();
    let mut svc = layer.layer(Dep::default());
    let _ = send(&mut svc, Answer::Fail).await;
    let _ = send(&mut svc, Answer::Fail).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut svc, Answer::Ok).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "circuit breaker db: closed -> open (2 consecutive failures (threshold 2))",
            "circuit breaker db: open -> half_open (recovery timeout elapsed)",
            "circuit breaker db: half_open -> closed (1 probes succeeded)",
        ]
    );
    let first = rx.recv().await.unwrap();
    assert_eq!((first.from, first.to), (State::Closed, State::Open));
    assert_eq!(
        first.reason,
        Reason::ConsecutiveFailures {
            count: 2,
            threshold: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_keys_and_stay_bounded() {
    let cfg = consecutive(1).build().unwrap();
    let layer =
        KeyedCircuitBreakerLayer::new(cfg, classify as Classifier, |a: &(&'static str, Answer)| {
            a.0
        })
        .name("tts")
        .max_keys(2);
    let handle = layer.handle();
    let inner = tower::service_fn(|(_, a): (&'static str, Answer)| {
        let mut d = Dep::default();
        d.call(a)
    });
    let svc = layer.layer(inner);
    // A key's first call makes no breaker (its outcome is recorded nowhere); its second does.
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("bad", Answer::Fail)).await;
        svc.clone().oneshot(("good", Answer::Ok)).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(("bad", Answer::Ok)).await.unwrap_err();
    assert!(err.circuit_open().is_some());
    assert_eq!(handle.get(&"bad").unwrap().state(), State::Open);
    assert_eq!(handle.get(&"good").unwrap().state(), State::Closed);
    assert_eq!(
        handle.get(&"bad").unwrap().snapshot().key.as_deref(),
        Some("bad")
    );
    // A third key evicts the least recently used one ("bad" was used last, so "good" goes).
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.clone().oneshot(("third", Answer::Ok)).await.unwrap();
    assert!(handle.get(&"third").is_none());
    svc.clone().oneshot(("third", Answer::Ok)).await.unwrap();
    assert_eq!(handle.len(), 2);
    assert!(handle.get(&"good").is_none());
    assert!(handle.get(&"bad").is_some());
}

#[tokio::test(start_paused = true)]
async fn retry_over_breaker_does_not_hammer_an_open_circuit() {
    use rampart_retry::RetryLayer;
    let breaker = CircuitBreakerLayer::new(consecutive(2).build().unwrap(), classify as Classifier);
    let handle = breaker.handle();
    let dep = Dep::default();
    let svc = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new(classify as Classifier)
                .backoff(
                    rampart_core::Backoff::builder()
                        .max_retries(5)
                        .base_delay(Duration::from_millis(10))
                        .build()
                        .unwrap(),
                )
                .no_budget(),
        )
        .layer(breaker)
        .service(dep.clone());
    let err = svc.clone().oneshot(Answer::Fail).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        dep.calls(),
        2,
        "two failures opened the circuit; the retry stopped there"
    );
    // Attempts count calls that reached the service: the breaker's rejection is not one.
    assert_eq!(err.attempts(), 2);
    assert!(err.circuit_open().is_some());
    let err = svc.oneshot(Answer::Ok).await.unwrap_err();
    assert_eq!(err.attempts(), 0);
    assert_eq!(dep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_future_that_outlives_its_breaker_does_not_touch_the_next_one() {
    // A call still in flight when its layer and service are dropped must not count against a
    // breaker made afterwards. (Breakers once lent their success-path counters from a
    // recycled, process-lived pool; now each owns its counters and the call keeps them.)
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let inner = tower::service_fn(move |_: ()| {
        let rx = rx.lock().unwrap().take();
        async move {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
            Err::<Resp, _>(io::Error::from(io::ErrorKind::ConnectionRefused))
        }
    });
    let cfg = consecutive(1).build().unwrap();
    let layer = CircuitBreakerLayer::new(cfg, classify as Classifier);
    let mut old = layer.layer(inner.clone());
    let in_flight = tokio::spawn(old.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    drop(old);
    drop(layer);
    // New breakers made while the old call is in flight.
    let handles: Vec<_> = (0..4)
        .map(|_| CircuitBreakerLayer::new(cfg, classify as Classifier).handle())
        .collect();
    tx.send(()).unwrap();
    assert!(in_flight.await.unwrap().is_err());
    for h in &handles {
        assert_eq!(
            h.state(),
            State::Closed,
            "the old call's failure reached no new breaker"
        );
        assert_eq!(h.snapshot().consecutive_failures, 0);
    }
}
