//! Model-based test: random sequences of calls, outcomes, durations and clock advances drive
//! the breaker and a small reference model side by side; their states must agree at every
//! step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use proptest::prelude::*;
use rampart_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State, Window};
use rampart_core::Outcome;
use tower::{Layer, Service, ServiceExt};

const CONSECUTIVE: u32 = 3;
const WINDOW: usize = 5;
const MIN_CALLS: usize = 4;
const RATE: f64 = 0.6;
const SLOW_MS: u64 = 100;
const RECOVERY_MS: u64 = 1_000;
const MAX_RECOVERY_MS: u64 = 4_000;
const SUCCESSES: u32 = 2;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// A call that fails (or not) after `ms` milliseconds.
    Call {
        fail: bool,
        throttled: bool,
        ms: u64,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), prop::bool::weighted(0.1), prop_oneof![Just(0u64), Just(10), Just(150), Just(400)])
            .prop_map(|(fail, throttled, ms)| Op::Call { fail, throttled, ms }),
        1 => prop_oneof![Just(200u64), Just(999), Just(1_000), Just(2_500), Just(5_000)].prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MState {
    Closed,
    Open { until: u64 },
    HalfOpen { successes: u32, failures: u32 },
}

/// The reference: the rules of the crate docs, written as plainly as possible.
#[derive(Debug)]
struct Model {
    state: MState,
    consecutive: u32,
    window: VecDeque<(bool, bool)>,
    trips: u32,
}

impl Model {
    fn open_for(&self) -> u64 {
        let doublings = self.trips; // trips so far; the next trip is number trips + 1
        (RECOVERY_MS << doublings.min(20)).min(MAX_RECOVERY_MS)
    }

    fn trip_due(&self) -> bool {
        if self.consecutive >= CONSECUTIVE {
            return true;
        }
        let calls = self.window.len();
        if calls >= MIN_CALLS {
            let fails = self.window.iter().filter(|w| w.0).count();
            let slow = self.window.iter().filter(|w| w.1).count();
            if fails as f64 / calls as f64 >= RATE || slow as f64 / calls as f64 >= RATE {
                return true;
            }
        }
        false
    }

    /// Admission at `now`: `Err(retry_in_ms)` if rejected, `Ok(is_probe)` otherwise.
    fn admit(&mut self, now: u64) -> Result<bool, u64> {
        match self.state {
            MState::Closed => Ok(false),
            MState::Open { until } if now < until => Err(until - now),
            MState::Open { .. } => {
                self.state = MState::HalfOpen {
                    successes: 0,
                    failures: 0,
                };
                Ok(true)
            }
            MState::HalfOpen { .. } => Ok(true),
        }
    }

    /// The outcome of an admitted call, completing at `now`.
    fn complete(&mut self, probe: bool, fail: bool, slow: bool, now: u64) {
        if probe {
            let MState::HalfOpen {
                successes,
                failures,
            } = self.state
            else {
                return;
            };
            // With a window, the round is judged by its failure rate: ceil(RATE · SUCCESSES)
            // failed probes reopen the circuit.
            let fail_limit = (RATE * f64::from(SUCCESSES)).ceil().max(1.0) as u32;
            if (fail || slow) && failures + 1 >= fail_limit {
                let until = now + self.open_for();
                self.trips += 1;
                self.state = MState::Open { until };
            } else if fail || slow {
                self.state = MState::HalfOpen {
                    successes,
                    failures: failures + 1,
                };
            } else if successes + 1 >= SUCCESSES {
                self.state = MState::Closed;
                self.consecutive = 0;
                self.window.clear();
                self.trips = 0;
            } else {
                self.state = MState::HalfOpen {
                    successes: successes + 1,
                    failures,
                };
            }
            return;
        }
        if fail {
            self.consecutive += 1;
        } else {
            self.consecutive = 0;
        }
        self.window.push_back((fail, slow));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if (fail || slow) && self.state == MState::Closed && self.trip_due() {
            let until = now + self.open_for();
            self.trips += 1;
            self.consecutive = 0;
            self.state = MState::Open { until };
        }
    }

    fn state(&self) -> State {
        match self.state {
            MState::Closed => State::Closed,
            MState::Open { .. } => State::Open,
            MState::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

fn classify(r: Result<&u16, &io::Error>) -> Outcome {
    match r {
        Ok(200) => Outcome::Success,
        Ok(429) => Outcome::THROTTLED,
        Ok(_) => Outcome::TRANSIENT,
        Err(_) => Outcome::TRANSIENT,
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = CircuitBreakerConfig::builder()
            .consecutive_failures(Some(CONSECUTIVE))
            .window(Some(Window::Count(WINDOW as u32)))
            .minimum_calls(MIN_CALLS as u32)
            .failure_rate(RATE)
            .slow_call(Duration::from_millis(SLOW_MS), RATE)
            .recovery_timeout(Duration::from_millis(RECOVERY_MS))
            .max_recovery_timeout(Duration::from_millis(MAX_RECOVERY_MS))
            .permitted_probes(1)
            .success_threshold(SUCCESSES)
            .build()
            .unwrap();
        let layer =
            CircuitBreakerLayer::new(cfg, classify as fn(Result<&u16, &io::Error>) -> Outcome);
        let handle = layer.handle();
        let mut svc = layer.layer(tower::service_fn(|(status, ms): (u16, u64)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<u16, io::Error>(status)
        }));
        let mut model = Model {
            state: MState::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            trips: 0,
        };
        let start = tokio::time::Instant::now();
        let now = || u64::try_from(start.elapsed().as_millis()).unwrap();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Call {
                    fail,
                    throttled,
                    ms,
                } => {
                    let status = if throttled {
                        429
                    } else if fail {
                        503
                    } else {
                        200
                    };
                    let expected = model.admit(now());
                    let got = svc.ready().await.unwrap().call((status, ms)).await;
                    match (expected, &got) {
                        (Err(retry_ms), Err(e)) => {
                            let open = e.circuit_open().expect("a rejection");
                            prop_assert_eq!(
                                open.retry_in,
                                Duration::from_millis(retry_ms),
                                "step {}",
                                i
                            );
                        }
                        (Ok(probe), Ok(_)) => {
                            let counted_fail = fail && !throttled;
                            model.complete(probe, counted_fail, ms > SLOW_MS, now());
                        }
                        (e, g) => prop_assert!(false, "step {}: model {:?}, breaker {:?}", i, e, g),
                    }
                }
            }
            prop_assert_eq!(
                handle.state(),
                model.state(),
                "step {}: {:?} model {:?}",
                i,
                op,
                model
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn breaker_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
