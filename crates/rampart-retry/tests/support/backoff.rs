//! The backoff of the tests that count attempts and copies, not delays: rampart-retry's
//! `keep_request.rs` and rampart-dlq's `request_source.rs` and `layer.rs` include this file by
//! path.

use std::time::Duration;

use rampart_core::{Backoff, Jitter};

/// `retries` retries, 10 ms apart, without jitter.
pub(crate) fn backoff(retries: u32) -> Backoff {
    Backoff::builder()
        .max_retries(retries)
        .base_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}
