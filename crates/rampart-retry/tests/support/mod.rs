//! Scripted services for the retry tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::{Backoff, Jitter, Outcome};

/// A response: a status code and an optional server hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// One scripted answer.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Status(u16),
    Hinted(u16, Duration),
    Io(io::ErrorKind),
    Hang,
}

/// A service answering from a script (the last step repeats), counting its calls.
#[derive(Clone)]
pub struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    pub calls: Arc<AtomicU32>,
}

impl Scripted {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<Req> tower::Service<Req> for Scripted {
    type Response = Resp;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = {
            let mut steps = self
                .steps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if steps.len() > 1 {
                steps.pop_front()
            } else {
                steps.front().copied()
            }
        };
        Box::pin(async move {
            match step.unwrap_or(Step::Status(200)) {
                Step::Status(status) => Ok(Resp {
                    status,
                    retry_after: None,
                }),
                Step::Hinted(status, d) => Ok(Resp {
                    status,
                    retry_after: Some(d),
                }),
                Step::Io(kind) => Err(io::Error::from(kind)),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

/// HTTP-like classification of `Resp`, io errors by kind.
pub fn classify(r: Result<&Resp, &io::Error>) -> Outcome {
    match r {
        Ok(Resp {
            status: 200..=299, ..
        }) => Outcome::Success,
        Ok(Resp {
            status: 429,
            retry_after,
        }) => Outcome::Throttled {
            retry_after: *retry_after,
        },
        Ok(Resp { status: 501, .. }) => Outcome::Permanent,
        Ok(Resp {
            status: 500..=599,
            retry_after,
        }) => Outcome::Transient {
            retry_after: *retry_after,
        },
        Ok(_) => Outcome::Rejected,
        Err(e) => rampart_core::classify::io_error(e),
    }
}

/// A backoff with no jitter, for exact timings.
pub fn exact(max_retries: u32, base_ms: u64) -> Backoff {
    Backoff::builder()
        .max_retries(max_retries)
        .base_delay(Duration::from_millis(base_ms))
        .max_delay(Duration::from_secs(60))
        .jitter(Jitter::None)
        .build()
        .unwrap_or_else(|e| panic!("test backoff: {e}"))
}
