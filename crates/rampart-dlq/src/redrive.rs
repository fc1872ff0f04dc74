//! Replaying dead letters through a service.

use std::time::Duration;

use tower_service::Service;

use crate::record::{DeadLetterRecord, NotKeptWhole, RecordId};
use crate::store::{DeadLetterStore, StoreError};

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Replayed successfully and removed from the store.
    pub redriven: usize,
    /// Failed again; their redrive count was bumped and they stay.
    pub failed_again: usize,
    /// Not replayed (they stay untouched): `skips.len()`.
    pub skipped: usize,
    /// Each record skipped, and why.
    pub skips: Vec<Skip>,
}

/// A record a redrive did not replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    /// The record.
    pub id: RecordId,
    /// Why it was not replayed.
    pub reason: SkipReason,
}

/// Why a redrive did not replay a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SkipReason {
    /// No record has the id.
    #[error("not found")]
    NotFound,
    /// The record's request was not kept whole (truncated, or changed by redaction):
    /// replaying it would send a different request.
    #[error("{0}")]
    NotKeptWhole(NotKeptWhole),
    /// `to_request` could not rebuild a request from it.
    #[error("no request can be rebuilt from it")]
    NoRequest,
}

impl RedriveReport {
    fn skip(&mut self, id: RecordId, reason: SkipReason) {
        self.skipped += 1;
        self.skips.push(Skip { id, reason });
    }
}

/// Replays the records `ids` through `service` (typically the same policy stack that
/// dead-lettered them), at most `per_second` calls a second if given. Records that succeed
/// are deleted; those that fail again get their `redrive_count` bumped and stay.
///
/// `to_request` rebuilds a request from a record's payload; `None` skips the record. A
/// record whose request was not kept whole ([`DeadLetterRecord::kept_whole`]: truncated, or
/// its URI, body or payload changed by redaction) is skipped without calling it, since
/// replaying it would send a different request. Skipped records stay in the store; the
/// report says why each was skipped.
///
/// # Errors
///
/// If the store fails; the report up to that point is lost, but every record already
/// handled was handled completely (deleted or bumped).
///
/// # Example
///
/// ```
/// use rampart_dlq::{redrive, DeadLetterReason, DeadLetterRecord, DeadLetterStore, MemoryStore, RequestPart};
/// use tower::service_fn;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rampart_dlq::StoreError> {
/// let store = MemoryStore::default();
/// let r = DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted)
///     .request(RequestPart { summary: "order 7".into(), payload: serde_json::json!(7) });
/// store.push(r.clone()).await?;
/// let ok = service_fn(|_: u64| async { Ok::<_, std::io::Error>(()) });
/// let report = redrive(&store, &[r.id], ok, |r| r.request.payload.as_u64(), None).await?;
/// assert_eq!(report.redriven, 1);
/// assert_eq!(store.stats().await?.records, 0);
/// # Ok(()) }
/// ```
pub async fn redrive<St, S, Req, F>(
    store: &St,
    ids: &[RecordId],
    mut service: S,
    to_request: F,
    per_second: Option<u32>,
) -> Result<RedriveReport, StoreError>
where
    St: DeadLetterStore,
    S: Service<Req>,
    F: Fn(&DeadLetterRecord) -> Option<Req>,
{
    let mut report = RedriveReport::default();
    let mut pace = per_second
        .filter(|n| *n > 0)
        // Above 10⁹ a second the period rounds to zero, which `interval` panics on.
        .map(|n| tokio::time::interval((Duration::from_secs(1) / n).max(Duration::from_nanos(1))));
    for id in ids {
        let Some(record) = store.get(*id).await? else {
            report.skip(*id, SkipReason::NotFound);
            continue;
        };
        if let Err(why) = record.kept_whole() {
            report.skip(*id, SkipReason::NotKeptWhole(why));
            continue;
        }
        let Some(req) = to_request(&record) else {
            report.skip(*id, SkipReason::NoRequest);
            continue;
        };
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let ok = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
            Ok(()) => service.call(req).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            store.delete(record.id).await?;
            report.redriven += 1;
        } else {
            let mut again = record;
            again.redrive_count += 1;
            again.last_attempt_at = crate::record::Timestamp::now();
            store.replace(again).await?;
            report.failed_again += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{DeadLetterReason, MemoryStore, RequestPart};

    #[tokio::test(start_paused = true)]
    async fn a_rate_whose_period_rounds_to_zero_does_not_panic() {
        // Issue 11: `per_second = 2_000_000_000` made `interval(1 s / n)` = `interval(0)`,
        // which panics with "`period` must be non-zero".
        let store = MemoryStore::default();
        let r = DeadLetterRecord::new("orders", DeadLetterReason::RetriesExhausted).request(
            RequestPart {
                summary: "order 7".into(),
                payload: serde_json::json!(7),
            },
        );
        store.push(r.clone()).await.unwrap();
        let ok = tower::service_fn(|_: u64| async { Ok::<_, std::io::Error>(()) });
        for rate in [2_000_000_000, u32::MAX] {
            let report = redrive(
                &store,
                &[r.id],
                ok,
                |r| r.request.payload.as_u64(),
                Some(rate),
            )
            .await
            .unwrap();
            assert_eq!(report.redriven + report.skipped, 1);
        }
    }
}
