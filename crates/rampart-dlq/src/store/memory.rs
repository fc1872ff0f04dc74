//! A bounded in-memory store, for tests and small apps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, DEFAULT_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId, DEFAULT_MAX_RECORD_BYTES};

/// A bounded in-memory store. Cloning shares it. Nothing survives the process.
///
/// # Example
///
/// ```
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, ListQuery, MemoryStore, Pushed};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rampart_dlq::StoreError> {
/// let store = MemoryStore::new(2);
/// for _ in 0..3 {
///     store.push(DeadLetterRecord::new("db", DeadLetterReason::Permanent)).await?;
/// }
/// let stats = store.stats().await?;
/// assert_eq!((stats.records, stats.evictions), (2, 1));
/// let page = store.list(ListQuery::newest(10)).await?;
/// assert_eq!(store.push(page.records[0].clone()).await?, Pushed::Duplicate);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    max_size: usize,
    max_record_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<RecordId, DeadLetterRecord>,
    retry: VecDeque<DeadLetterRecord>,
    evictions: u64,
}

impl Default for MemoryStore {
    /// Holds up to 1,000 records.
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_SIZE)
    }
}

impl MemoryStore {
    /// A store of at most `max_size` records (at least 1).
    pub fn new(max_size: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Mutex::new(State::default())),
            max_size: max_size.max(1),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Cuts a record whose JSON is larger than `bytes` before storing it (see
    /// [`DeadLetterRecord::fit`]), like every store.
    ///
    /// Defaults to [`DEFAULT_MAX_RECORD_BYTES`] (1 MiB).
    #[must_use]
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn page_of<'a>(
    records: impl DoubleEndedIterator<Item = (&'a RecordId, &'a DeadLetterRecord)>,
    q: &ListQuery,
) -> Page {
    let mut out: Vec<DeadLetterRecord> = records
        .rev()
        .filter(|(_, r)| q.matches(r))
        .take(q.limit.saturating_add(1))
        .map(|(_, r)| r.clone())
        .collect();
    let next = if out.len() > q.limit {
        out.truncate(q.limit);
        out.last().map(|r| r.id)
    } else {
        None
    };
    Page {
        records: out,
        unreadable: Vec::new(),
        next,
    }
}

impl DeadLetterStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn push(&self, mut record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let id = record.id;
        record
            .fit(self.max_record_bytes)
            .map_err(|source| StoreError::Encode { id, source })?;
        let mut s = self.state();
        if s.records.contains_key(&record.id) {
            return Ok(Pushed::Duplicate);
        }
        s.records.insert(record.id, record);
        while s.records.len() > self.max_size {
            s.records.pop_first();
            s.evictions += 1;
        }
        Ok(Pushed::Stored)
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        Ok(self.state().records.get(&id).cloned())
    }

    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        Ok(page_of(self.state().records.iter(), &q))
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        Ok(self.state().records.remove(&id).is_some())
    }

    async fn replace(&self, mut record: DeadLetterRecord) -> Result<bool, StoreError> {
        let id = record.id;
        record
            .fit(self.max_record_bytes)
            .map_err(|source| StoreError::Encode { id, source })?;
        let mut s = self.state();
        match s.records.get_mut(&record.id) {
            Some(r) => {
                *r = record;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let mut s = self.state();
        let r = s.records.remove(&id);
        if let Some(r) = &r {
            s.retry.push_back(r.clone());
        }
        Ok(r)
    }

    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let mut s = self.state();
        let n = limit.min(s.retry.len());
        Ok(s.retry.drain(..n).collect())
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let cut = cutoff(age);
        let mut s = self.state();
        let keep = s.records.split_off(&cut);
        let removed = s.records.len();
        s.records = keep;
        Ok(removed)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let s = self.state();
        Ok(StoreStats {
            records: s.records.len(),
            requeued: s.retry.len(),
            evictions: s.evictions,
            max_size: self.max_size,
        })
    }
}
