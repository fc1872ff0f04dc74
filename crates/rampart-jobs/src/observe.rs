//! Job metrics through the `metrics` facade (feature `metrics`), under the request path's
//! names and labels where they mean the same thing:
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `retry_attempts_total` | counter | `service`, `status` | every run after the first; `status` is `success` or `failed` |
//! | `retry_delay_seconds` | histogram | `service` | each countdown a retry was scheduled with |
//! | `dead_letters_total` | counter | `service`, `reason` | dead letters written (duplicates from racing workers not counted) |
//! | `jobs_total` | counter | `service`, `result` | runs by result: `done`, `retried`, `deferred`, `dead_lettered` |
//! | `jobs_scheduled_retries` | gauge | `service` | retries this process scheduled and has not seen run yet (approximate across processes) |

use crate::JobOutcome;

#[cfg(feature = "metrics")]
pub(crate) fn record(service: &str, attempt: u32, outcome: &JobOutcome) {
    let service = service.to_owned();
    if attempt > 0 {
        let status = match outcome {
            JobOutcome::Done { .. } => Some("success"),
            JobOutcome::Deferred { .. } => None,
            _ => Some("failed"),
        };
        if let Some(status) = status {
            metrics::counter!("retry_attempts_total", "service" => service.clone(), "status" => status).increment(1);
            metrics::gauge!("jobs_scheduled_retries", "service" => service.clone()).decrement(1.0);
        }
    }
    let result = match outcome {
        JobOutcome::Done { .. } => "done",
        JobOutcome::Retried { countdown, .. } => {
            metrics::histogram!("retry_delay_seconds", "service" => service.clone())
                .record(countdown.as_secs_f64());
            metrics::gauge!("jobs_scheduled_retries", "service" => service.clone()).increment(1.0);
            "retried"
        }
        JobOutcome::Deferred { .. } => "deferred",
        JobOutcome::DeadLettered {
            reason, duplicate, ..
        } => {
            if !duplicate {
                metrics::counter!("dead_letters_total", "service" => service.clone(), "reason" => reason.as_str()).increment(1);
            }
            "dead_lettered"
        }
    };
    metrics::counter!("jobs_total", "service" => service, "result" => result).increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn record(_service: &str, _attempt: u32, _outcome: &JobOutcome) {}
