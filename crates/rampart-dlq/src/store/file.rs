//! The embedded default store: an append-only journal with group-committed `fsync`.
//!
//! # Journal format
//!
//! ```text
//! header  "RDLQ"                      4 bytes, MAGIC
//!         version                     1 byte,  VERSION (currently 1)
//! entry   length                      u32 little-endian: the payload's length in bytes
//!         kind                        1 byte:  PUT, DELETE, REQUEUE, TAKEN, REPLACE, EVICT, EVICTIONS
//!         payload                     `length` bytes: a record as JSON (PUT, REPLACE), a 16-byte
//!                                     record id (DELETE, REQUEUE, TAKEN, EVICT), or a u64 LE
//!                                     eviction count (EVICTIONS)
//!         checksum                    u32 little-endian: CRC-32 (IEEE) of kind and payload
//! ```
//!
//! Writes are appended by one writer thread, which gathers every write queued while it was
//! busy into one batch, writes it and calls `fsync` (`sync_data`) once for the batch — group
//! commit. A push is acknowledged only after its batch is on disk.
//!
//! On open the journal is replayed. The first entry that is short, longer than
//! [`MAX_ENTRY`], of an unknown kind or fails its checksum ends the journal: it and
//! everything after it is a torn or corrupt tail, which is dropped (the file is truncated
//! there) and never returned. Every entry acknowledged before a crash precedes the tail, so
//! it is read back. Deletes are tombstones; when tombstones outnumber live records (and
//! exceed 1,000) the journal is compacted: the live state is written to a new file, synced,
//! and renamed over the old one.
//!
//! Any change to this layout bumps [`VERSION`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    cutoff, DeadLetterStore, ListQuery, Page, Pushed, StoreError, StoreStats, Unreadable,
    DEFAULT_MAX_SIZE,
};
use crate::record::{DeadLetterRecord, RecordId};

/// The journal's magic bytes.
pub const MAGIC: &[u8; 4] = b"RDLQ";
/// The journal format's version.
pub const VERSION: u8 = 1;
/// A record was stored (payload: JSON).
pub const PUT: u8 = 1;
/// A record was deleted (payload: id).
pub const DELETE: u8 = 2;
/// A record moved to the retry queue (payload: id).
pub const REQUEUE: u8 = 3;
/// A record was taken off the retry queue (payload: id).
pub const TAKEN: u8 = 4;
/// A record was replaced by a new version (payload: JSON).
pub const REPLACE: u8 = 5;
/// A record was evicted because the store was full (payload: id).
pub const EVICT: u8 = 6;
/// The eviction count carried over by compaction (payload: u64 LE).
pub const EVICTIONS: u8 = 7;
/// The largest payload an entry may have; a longer length field is corruption.
pub const MAX_ENTRY: u32 = 16 * 1024 * 1024;

const HEADER_LEN: usize = 5;
const BATCH: usize = 1024;

/// Encodes one entry.
fn entry(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

/// What opening the journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entries replayed.
    pub entries: u64,
    /// Bytes of torn or corrupt tail dropped.
    pub dropped_bytes: u64,
}

enum Job {
    Append(Vec<u8>, Option<oneshot::Sender<io::Result<()>>>),
    Compact(Vec<u8>, oneshot::Sender<io::Result<()>>),
}

#[derive(Debug, Default)]
struct Index {
    records: BTreeMap<RecordId, DeadLetterRecord>,
    retry: VecDeque<DeadLetterRecord>,
    /// Records whose PUT is queued but not yet on disk (with their JSON, so that a
    /// compaction queued meanwhile keeps them).
    pending: HashMap<RecordId, Vec<u8>>,
    unreadable: Vec<Unreadable>,
    evictions: u64,
    /// Entries in the journal that no longer describe live state.
    dead: u64,
    /// A write failed: the index may be ahead of the disk, so the store refuses work.
    failed: bool,
}

struct Inner {
    path: PathBuf,
    max_size: usize,
    index: Mutex<Index>,
    tx: Mutex<mpsc::Sender<Job>>,
    recovery: Recovery,
}

/// The embedded, durable store: an append-only, checksummed journal (see the
/// [module docs](self) for the byte layout). Cloning shares it.
///
/// # Example
///
/// ```
/// use rampart_dlq::{DeadLetterReason, DeadLetterRecord, DeadLetterStore, FileStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("dlq.journal");
/// let id = {
///     let store = FileStore::open(&path, 1_000)?;
///     let r = DeadLetterRecord::new("gemini_api", DeadLetterReason::RetriesExhausted);
///     store.push(r.clone()).await?; // on disk when this returns
///     r.id
/// };
/// let reopened = FileStore::open(&path, 1_000)?;
/// assert!(reopened.get(id).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .field("max_size", &self.inner.max_size)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (or creates) the journal at `path`, replaying it, keeping at most `max_size`
    /// records (oldest evicted first). A torn or corrupt tail is dropped; see [`recovery`].
    ///
    /// This reads the whole journal and may block; call it at start-up.
    ///
    /// # Errors
    ///
    /// If the file cannot be opened, created or truncated, or does not start with the
    /// journal's magic bytes and a known version.
    ///
    /// [`recovery`]: Self::recovery
    pub fn open(path: impl AsRef<Path>, max_size: usize) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |op: &'static str| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, op, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err("create the journal's directory"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err("read"))?;

        let mut index = Index::default();
        let mut recovery = Recovery::default();
        if bytes.is_empty() {
            let mut header = MAGIC.to_vec();
            header.push(VERSION);
            file.write_all(&header)
                .map_err(io_err("write the header"))?;
            file.sync_all().map_err(io_err("sync"))?;
        } else {
            if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
                return Err(StoreError::Format {
                    path: path.display().to_string(),
                    reason: "it does not start with the RDLQ magic bytes".into(),
                });
            }
            if bytes[4] != VERSION {
                return Err(StoreError::Format {
                    path: path.display().to_string(),
                    reason: format!(
                        "journal version {} is not supported (this build reads {VERSION})",
                        bytes[4]
                    ),
                });
            }
            let good = replay(&bytes, &mut index, &mut recovery);
            if good < bytes.len() {
                recovery.dropped_bytes = (bytes.len() - good) as u64;
                tracing::warn!(
                    path = %path.display(),
                    dropped_bytes = recovery.dropped_bytes,
                    "dead-letter journal had a torn or corrupt tail; dropped it"
                );
                file.set_len(good as u64)
                    .map_err(io_err("truncate the torn tail"))?;
                file.sync_all().map_err(io_err("sync"))?;
            }
        }
        while index.records.len() > max_size.max(1) {
            index.records.pop_first();
            index.evictions += 1;
        }
        let (tx, rx) = mpsc::channel();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("rampart-dlq-journal".into())
            .spawn(move || writer(writer_path, file, rx))
            .map_err(io_err("start the journal writer thread"))?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                path,
                max_size: max_size.max(1),
                index: Mutex::new(index),
                tx: Mutex::new(tx),
                recovery,
            }),
        })
    }

    /// Opens the journal with the reference design's cap of 1,000 records.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_default(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        FileStore::open(path, DEFAULT_MAX_SIZE)
    }

    /// What opening the journal found.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, op: &'static str, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.inner.path.display().to_string(),
            op,
            source,
        }
    }

    fn check(&self, idx: &Index) -> Result<(), StoreError> {
        if idx.failed {
            return Err(self.err(
                "write",
                io::Error::other(
                    "an earlier write failed; reopen the store to recover from the journal",
                ),
            ));
        }
        Ok(())
    }

    /// Queues `bytes` behind every earlier write (call with the index locked, so that the
    /// journal's order is the index's order); the receiver resolves once they are on disk.
    fn send(
        &self,
        bytes: Vec<u8>,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<io::Result<()>>>, StoreError> {
        let (ack, rx) = if wait {
            let (a, r) = oneshot::channel();
            (Some(a), Some(r))
        } else {
            (None, None)
        };
        let tx = self.inner.tx.lock().unwrap_or_else(PoisonError::into_inner);
        tx.send(Job::Append(bytes, ack))
            .map_err(|_| StoreError::Closed { store: "file" })?;
        Ok(rx)
    }

    async fn wait(
        &self,
        rx: Option<oneshot::Receiver<io::Result<()>>>,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let Some(rx) = rx else { return Ok(()) };
        let res = match rx.await {
            Ok(r) => r.map_err(|e| self.err(op, e)),
            Err(_) => Err(StoreError::Closed { store: "file" }),
        };
        if res.is_err() {
            self.index().failed = true;
        }
        res
    }

    /// Evicts the oldest records over the cap (index locked), journaling each eviction.
    fn enforce_cap(&self, idx: &mut Index) -> Result<(), StoreError> {
        while idx.records.len() > self.inner.max_size {
            if let Some((id, _)) = idx.records.pop_first() {
                idx.evictions += 1;
                idx.dead += 2;
                self.send(entry(EVICT, id.as_bytes()), false)?;
            }
        }
        Ok(())
    }

    /// Compacts when tombstones outnumber live records (index locked).
    fn maybe_compact(
        &self,
        idx: &mut Index,
    ) -> Result<Option<oneshot::Receiver<io::Result<()>>>, StoreError> {
        let live = (idx.records.len() + 2 * idx.retry.len()) as u64;
        if idx.dead <= 1_000 || idx.dead <= live {
            return Ok(None);
        }
        let mut bytes = MAGIC.to_vec();
        bytes.push(VERSION);
        bytes.extend(entry(EVICTIONS, &idx.evictions.to_le_bytes()));
        for r in idx.records.values().chain(idx.retry.iter()) {
            let json = super::encode(r)?;
            bytes.extend(entry(PUT, &json));
        }
        for r in &idx.retry {
            bytes.extend(entry(REQUEUE, r.id.as_bytes()));
        }
        for json in idx.pending.values() {
            bytes.extend(entry(PUT, json));
        }
        idx.dead = 0;
        let (ack, rx) = oneshot::channel();
        let tx = self.inner.tx.lock().unwrap_or_else(PoisonError::into_inner);
        tx.send(Job::Compact(bytes, ack))
            .map_err(|_| StoreError::Closed { store: "file" })?;
        Ok(Some(rx))
    }
}

/// Replays entries into `idx`; returns the length of the good prefix.
fn replay(bytes: &[u8], idx: &mut Index, rec: &mut Recovery) -> usize {
    let mut pos = HEADER_LEN;
    loop {
        let Some(head) = bytes.get(pos..pos + 5) else {
            return pos;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let kind = head[4];
        if len > MAX_ENTRY || !(PUT..=EVICTIONS).contains(&kind) {
            return pos;
        }
        let start = pos + 5;
        let end = start + len as usize;
        let Some(payload) = bytes.get(start..end) else {
            return pos;
        };
        let Some(crc) = bytes.get(end..end + 4) else {
            return pos;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(payload);
        if h.finalize() != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return pos;
        }
        apply(kind, payload, idx);
        rec.entries += 1;
        pos = end + 4;
    }
}

fn id_of(payload: &[u8]) -> Option<RecordId> {
    <[u8; 16]>::try_from(payload).ok().map(RecordId::from_bytes)
}

fn apply(kind: u8, payload: &[u8], idx: &mut Index) {
    match kind {
        PUT | REPLACE => match DeadLetterRecord::from_json(payload) {
            Ok(r) => {
                if kind == REPLACE {
                    idx.dead += 1;
                }
                if kind == PUT || idx.records.contains_key(&r.id) {
                    idx.records.insert(r.id, r);
                }
            }
            Err(e) => idx.unreadable.push(Unreadable {
                key: format!("journal entry {}", idx.unreadable.len()),
                reason: e.to_string(),
            }),
        },
        DELETE | EVICT => {
            if let Some(id) = id_of(payload) {
                idx.records.remove(&id);
                idx.dead += 2;
                if kind == EVICT {
                    idx.evictions += 1;
                }
            }
        }
        REQUEUE => {
            if let Some(r) = id_of(payload).and_then(|id| idx.records.remove(&id)) {
                idx.retry.push_back(r);
            }
        }
        TAKEN => {
            if let Some(id) = id_of(payload) {
                idx.retry.retain(|r| r.id != id);
                idx.dead += 3;
            }
        }
        EVICTIONS => {
            if let Ok(b) = <[u8; 8]>::try_from(payload) {
                idx.evictions = u64::from_le_bytes(b);
            }
        }
        _ => {}
    }
}

/// The writer thread: appends batches, one `sync_data` per batch, acknowledges each write.
fn writer(path: PathBuf, mut file: File, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut acks = Vec::with_capacity(jobs.len());
        let mut result: io::Result<()> = Ok(());
        for job in jobs {
            match job {
                Job::Append(bytes, ack) => {
                    if result.is_ok() {
                        result = file.write_all(&bytes);
                    }
                    acks.extend(ack);
                }
                Job::Compact(bytes, ack) => {
                    if result.is_ok() {
                        result = file
                            .sync_data()
                            .and_then(|()| compact(&path, &bytes))
                            .map(|f| file = f);
                    }
                    acks.push(ack);
                }
            }
        }
        if result.is_ok() {
            result = file.sync_data();
        }
        for ack in acks {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            let _ = ack.send(r);
        }
    }
}

/// Writes `bytes` as the new journal: a temporary file, synced, renamed over the old one.
fn compact(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let tmp = path.with_extension("compacting");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    OpenOptions::new().append(true).open(path)
}

impl DeadLetterStore for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn push(&self, record: DeadLetterRecord) -> Result<Pushed, StoreError> {
        let id = record.id;
        let json = super::encode(&record)?;
        let rx = {
            let mut idx = self.index();
            self.check(&idx)?;
            if idx.records.contains_key(&id)
                || idx.pending.contains_key(&id)
                || idx.retry.iter().any(|r| r.id == id)
            {
                return Ok(Pushed::Duplicate);
            }
            let rx = self.send(entry(PUT, &json), true)?;
            idx.pending.insert(id, json);
            rx
        };
        let written = self.wait(rx, "append").await;
        let compaction = {
            let mut idx = self.index();
            idx.pending.remove(&id);
            written?;
            idx.records.insert(id, record);
            self.enforce_cap(&mut idx)?;
            self.maybe_compact(&mut idx)?
        };
        self.wait(compaction, "compact").await?;
        Ok(Pushed::Stored)
    }

    async fn get(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        Ok(self.index().records.get(&id).cloned())
    }

    async fn list(&self, q: ListQuery) -> Result<Page, StoreError> {
        let idx = self.index();
        let mut page = super::memory::page_of(idx.records.iter(), &q);
        if q.before.is_none() {
            page.unreadable = idx.unreadable.clone();
        }
        Ok(page)
    }

    async fn delete(&self, id: RecordId) -> Result<bool, StoreError> {
        let rx = {
            let mut idx = self.index();
            self.check(&idx)?;
            if idx.records.remove(&id).is_none() {
                return Ok(false);
            }
            idx.dead += 2;
            self.send(entry(DELETE, id.as_bytes()), true)?
        };
        self.wait(rx, "append").await?;
        Ok(true)
    }

    async fn replace(&self, record: DeadLetterRecord) -> Result<bool, StoreError> {
        let id = record.id;
        let json = super::encode(&record)?;
        let rx = {
            let mut idx = self.index();
            self.check(&idx)?;
            match idx.records.get_mut(&id) {
                Some(r) => *r = record,
                None => return Ok(false),
            }
            idx.dead += 1;
            self.send(entry(REPLACE, &json), true)?
        };
        self.wait(rx, "append").await?;
        Ok(true)
    }

    async fn requeue(&self, id: RecordId) -> Result<Option<DeadLetterRecord>, StoreError> {
        let (rx, r) = {
            let mut idx = self.index();
            self.check(&idx)?;
            let Some(r) = idx.records.remove(&id) else {
                return Ok(None);
            };
            idx.retry.push_back(r.clone());
            (self.send(entry(REQUEUE, id.as_bytes()), true)?, r)
        };
        self.wait(rx, "append").await?;
        Ok(Some(r))
    }

    async fn take_requeued(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StoreError> {
        let (rx, taken) = {
            let mut idx = self.index();
            self.check(&idx)?;
            let n = limit.min(idx.retry.len());
            let taken: Vec<DeadLetterRecord> = idx.retry.drain(..n).collect();
            let mut bytes = Vec::new();
            for r in &taken {
                bytes.extend(entry(TAKEN, r.id.as_bytes()));
                idx.dead += 3;
            }
            if bytes.is_empty() {
                return Ok(taken);
            }
            (self.send(bytes, true)?, taken)
        };
        self.wait(rx, "append").await?;
        Ok(taken)
    }

    async fn purge_older_than(&self, age: Duration) -> Result<usize, StoreError> {
        let cut = cutoff(age);
        let (rx, n) = {
            let mut idx = self.index();
            self.check(&idx)?;
            let keep = idx.records.split_off(&cut);
            let old = std::mem::replace(&mut idx.records, keep);
            let mut bytes = Vec::new();
            for id in old.keys() {
                bytes.extend(entry(DELETE, id.as_bytes()));
                idx.dead += 2;
            }
            if bytes.is_empty() {
                return Ok(0);
            }
            (self.send(bytes, true)?, old.len())
        };
        self.wait(rx, "append").await?;
        Ok(n)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let idx = self.index();
        Ok(StoreStats {
            records: idx.records.len(),
            requeued: idx.retry.len(),
            evictions: idx.evictions,
            max_size: self.inner.max_size,
        })
    }
}
