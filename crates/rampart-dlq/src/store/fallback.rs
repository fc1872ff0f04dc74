//! A primary store backed by a local store: nothing is lost while the primary is down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::{DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats};
use crate::record::{DeadLetterRecord, RecordId};

/// Writes to `primary`; when the primary fails, writes to `journal` (typically a local
/// `SqliteStore`, feature `sqlite`) and drains the journal into the primary in the
/// background once it answers again. Ids are stable and pushes idempotent, so a record
/// drained twice (say the primary stored it but the answer was lost) is still stored once.
///
/// Reads see both: `get` tries the primary then the journal, `list` merges them newest first,
/// `stats().records` counts both. Cloning shares it.
///
/// # Requeue
///
/// A record is requeued where it lives: one in the primary goes to the primary's retry queue,
/// one still waiting in the journal goes to the journal's retry queue (so requeueing works
/// while the primary is down, and nothing is moved between stores half-way).
/// [`take_requeued`](DeadLetterStore::take_requeued) drains both queues, the primary's first,
/// and `stats().requeued` counts both: a requeued record behaves the same wherever it was.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "sqlite")] mod m {
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, Fallback, MemoryStore, Pushed, SqliteStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let local = SqliteStore::open(dir.path().join("fallback.sqlite"), 10_000)?;
/// let store = Fallback::new(MemoryStore::default(), local);
/// let pushed = store.push(DeadLetterRecord::new("db", DeadLetterReason::Permanent)).await?;
/// assert_eq!(pushed, Pushed::Stored); // the primary answered
/// # Ok(()) }
/// # }
/// # #[cfg(feature = "sqlite")] fn main() { m::main().unwrap() }
/// # #[cfg(not(feature = "sqlite"))] fn main() {}
/// ```
#[derive(Debug)]
pub struct Fallback<P, J> {
    inner: Arc<Inner<P, J>>,
}

#[derive(Debug)]
struct Inner<P, J> {
    primary: P,
    journal: J,
    interval: Duration,
    drainer: AtomicBool,
    wake: Arc<Notify>,
    primary_failures: AtomicU64,
}

impl<P, J> Clone for Fallback<P, J> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
        }
    }
}

/// How often the drainer retries a primary that is down.
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_millis(500);

impl<P: DeadLetterStore, J: DeadLetterStore> Fallback<P, J> {
    /// `primary`, backed by `journal`.
    pub fn new(primary: P, journal: J) -> Self {
        Fallback::with_interval(primary, journal, DEFAULT_DRAIN_INTERVAL)
    }

    /// As [`new`](Self::new), retrying the primary every `interval` while it is down.
    pub fn with_interval(primary: P, journal: J, interval: Duration) -> Self {
        Fallback {
            inner: Arc::new(Inner {
                primary,
                journal,
                interval,
                drainer: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                primary_failures: AtomicU64::new(0),
            }),
        }
    }

    /// The primary store.
    pub fn primary(&self) -> &P {
        &self.inner.primary
    }

    /// The journal.
    pub fn journal(&self) -> &J {
        &self.inner.journal
    }

    /// How often a write to the primary failed.
    pub fn primary_failures(&self) -> u64 {
        self.inner.primary_failures.load(Ordering::Relaxed)
    }

    /// Moves every journaled record to the primary; returns how many. Stops at the first
    /// failure of the primary (the rest stay journaled).
    ///
    /// # Errors
    ///
    /// If the journal fails, or the primary fails before anything was drained.
    pub async fn drain_once(&self) -> Result<usize, StoreError> {
        drain(&self.inner).await
    }

    fn ensure_drainer(&self) {
        if self.inner.drainer.swap(true, Ordering::AcqRel) {
            self.inner.wake.notify_one();
            return;
        }
        let weak: Weak<Inner<P, J>> = Arc::downgrade(&self.inner);
        let interval = self.inner.interval;
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                match drain(&inner).await {
                    Ok(_) if pending(&inner).await == 0 => {
                        // Nothing left: sleep until the next journaled write.
                        let wake = inner.wake.clone();
                        drop(inner);
                        wake.notified().await;
                    }
                    _ => {
                        drop(inner);
                        tokio::time::sleep(interval).await;
                    }
                }
            }
        });
    }
}

async fn pending<P: DeadLetterStore, J: DeadLetterStore>(inner: &Inner<P, J>) -> usize {
    inner.journal.stats().await.map_or(1, |s| s.records)
}

async fn drain<P: DeadLetterStore, J: DeadLetterStore>(
    inner: &Inner<P, J>,
) -> Result<usize, StoreError> {
    let mut drained = 0;
    loop {
        let page = inner.journal.list(ListQuery::newest(256)).await?;
        if page.records.is_empty() {
            return Ok(drained);
        }
        for record in page.records {
            let id = record.id;
            match inner.primary.push(record).await {
                Ok(_) => {
                    inner.journal.delete(id).await?;
                    drained += 1;
                }
                Err(e) if drained == 0 => return Err(e),
                Err(_) => return Ok(drained),
            }
        }
    }
}

impl<P: DeadLetterStore, J: DeadLetterStore> DeadLetterStore for Fallback<P, J> {
    fn kind(&self) -> &'static str {
        "fallback"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        match self.inner.primary.push(record.clone()).await {
            Ok(p) => Ok(p),
            Err(e) => {
                self.inner.primary_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    primary = self.inner.primary.kind(),
                    record_id = %record.id,
                    error = %e,
                    "primary dead-letter store failed; journaling the record locally"
                );
                let pushed = self.inner.journal.push(record).await?;
                self.ensure_drainer();
                Ok(match pushed {
                    Pushed::Duplicate => Pushed::Duplicate,
                    _ => Pushed::Journaled,
                })
            }
        }
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        match self.inner.primary.get(id).await {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) | Err(_) => self.inner.journal.get(id).await,
        }
    }

    /// Records in the primary and those still waiting in the journal, merged newest first
    /// (a record in both — drained but not yet deleted from the journal — appears once).
    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        let journal = self.inner.journal.list(q.clone()).await?;
        let primary = match self.inner.primary.list(q.clone()).await {
            Ok(p) => p,
            Err(_) => return Ok(journal),
        };
        let mut records: Vec<DeadLetterRecord> = primary.records;
        for r in journal.records {
            if !records.iter().any(|x| x.id == r.id) {
                records.push(r);
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.id));
        let more = records.len() > q.limit || primary.next.is_some() || journal.next.is_some();
        records.truncate(q.limit);
        let next = if more {
            records.last().map(|r| r.id)
        } else {
            None
        };
        let mut unreadable = primary.unreadable;
        unreadable.extend(journal.unreadable);
        Ok(Page {
            records,
            unreadable,
            next,
        })
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        let journaled = self.inner.journal.delete(id).await?;
        let primary = self.inner.primary.delete(id).await?;
        Ok(journaled || primary)
    }

    async fn replace(&self, record: DeadLetterRecord) -> Result<bool, StoreError> {
        if self.inner.journal.replace(record.clone()).await? {
            return Ok(true);
        }
        self.inner.primary.replace(record).await
    }

    /// Requeues the record where it is: in the primary, else in the journal (see
    /// [Requeue](Fallback#requeue)). Works while the primary is down for a journaled record;
    /// the primary's error is returned only if the journal does not have the record either.
    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let primary_err = match self.inner.primary.requeue(id).await {
            Ok(Some(r)) => return Ok(Some(r)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        match (self.inner.journal.requeue(id).await?, primary_err) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(None),
        }
    }

    /// The primary's retry queue first, then the journal's (records requeued while they were
    /// still journaled). If the primary fails, the journal's queue is still drained; the
    /// primary's error is returned only when the journal had nothing either.
    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let (mut taken, primary_err) = match self.inner.primary.take_requeued(limit).await {
            Ok(t) => (t, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let rest = limit.saturating_sub(taken.len());
        if rest > 0 {
            taken.extend(self.inner.journal.take_requeued(rest).await?);
        }
        match primary_err {
            Some(e) if taken.is_empty() => Err(e),
            _ => Ok(taken),
        }
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let j = self.inner.journal.purge_older_than(age).await?;
        Ok(j + self.inner.primary.purge_older_than(age).await?)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut s = self.inner.primary.stats().await?;
        let j = self.inner.journal.stats().await?;
        s.records = s.records.saturating_add(j.records);
        s.requeued = s.requeued.saturating_add(j.requeued);
        Ok(s)
    }
}
