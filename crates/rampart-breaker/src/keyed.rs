//! One breaker per key (host, model, voice), so one bad upstream does not open the circuit
//! for the others.
//!
//! # Keys may be chosen by an attacker
//!
//! The key usually comes from the request (a host name, a tenant, a model), so a client can
//! send a fresh key on every call. The registry is built so that this costs every other
//! caller nothing and cannot re-admit traffic to a dead key:
//!
//! - **Known keys take no lock.** Breakers live in a [`papaya::HashMap`], a lock-free
//!   concurrent map whose reads are a hash, a probe and an epoch pin: callers of known keys
//!   never wait for each other nor for a caller with a new key (an admitted call does hold a
//!   reference count on its key's breaker until it completes, see below). papaya was chosen over
//!   `dashmap` (a read still takes a shard's `RwLock`, a write to a shared cache line on
//!   every call) and over caches with their own eviction (`quick_cache`, `moka`): their
//!   policies can pin an entry, but they walk past pinned entries on every eviction, so a
//!   map full of open breakers would cost `O(max_keys)` per new key again, and they let the
//!   map grow past its bound instead of saying so. The map's default hasher (SipHash with a
//!   random key) keeps attacker-chosen keys from colliding on purpose.
//! - **A key's first call does no work beyond a filter bucket** (see below): no lock, no
//!   breaker, no eviction.
//! - **New keys do `O(1)` work under a short lock.** Eviction is a CLOCK (second-chance)
//!   ring of keys behind a mutex that only a call with a key not yet held, but seen before,
//!   takes. Each new key past [`max_keys`](KeyedCircuitBreakerLayer::max_keys) looks at no more than
//!   [`EVICTION_STEPS`] keys of the ring plus two parked keys; there is no scan of the map.
//! - **Open, half-open and forced breakers are never evicted,** nor breakers with a call in
//!   flight. Evicting one would forget that its key is down (or lose the outcome of the call
//!   that would have opened it) and let the next call through a fresh, closed breaker. When the
//!   hand meets such a breaker it *parks* the key outside the ring, so it is not looked at
//!   again on every eviction; parked keys are looked at again two per eviction, and go back
//!   to the ring once their breaker has closed (or been [`reset`](BreakerHandle::reset)).
//! - **When every held breaker is pinned, new keys share one overflow breaker.** A call
//!   whose key is not held and for which nothing can be evicted goes through a single breaker
//!   shared by all such keys (its key in events and snapshots is [`OVERFLOW_KEY`]). The call
//!   never blocks, never fails for lack of room and never panics; it is only protected less
//!   precisely. [`KeyedHandle::overflow`] is that breaker's handle and
//!   [`KeyedHandle::overflowed`] counts the calls routed to it: alert on it, or raise
//!   `max_keys`. A client that can make `max_keys` keys fail can fill the registry with open
//!   breakers; while they stay open every new key shares the overflow breaker.
//!
//! # A key's first call gets no breaker of its own
//!
//! Most fresh keys a client makes up are never seen again, and building a breaker for each
//! (an allocation, a label, a map insertion and an eviction) is what made a fresh-key call
//! cost tens of times a known key's. So a key is given its own breaker only on its
//! **second** call (the "doorkeeper" of TinyLFU):
//!
//! - The registry keeps a fixed-size, lock-free filter of key fingerprints (a boxed slice
//!   of `AtomicU64`, two slots per `max_keys` rounded up to a power of two, at least 64 and
//!   at most [`MAX_FILTER_SLOTS`], allocated once with the registry). A fingerprint is a
//!   64-bit SipHash of the key under a random key drawn per registry, so a client cannot
//!   aim two keys at one bucket. A key's fingerprint goes into its bucket of four slots
//!   (an empty one, or over one of the others when all four are taken), so up to four
//!   keys waiting for their second call in one bucket keep their sightings.
//! - A call whose key is not held and whose fingerprint is not in the filter writes the
//!   fingerprint and goes through **without a breaker of its own**: it is admitted by the
//!   shared overflow breaker's state — refused like an overflow call while that breaker is
//!   open (before its recovery timeout) or forced open, let through otherwise (closed,
//!   disabled, half-open, or open past its timeout) — and **its outcome is recorded
//!   nowhere**: it takes no probe slot and moves no state. [`KeyedHandle::first_calls`]
//!   counts these calls.
//! - A call whose key is not held but whose fingerprint is found is admitted into the map
//!   as described below (its own breaker, or the overflow breaker when nothing can go).
//!
//! What this means:
//!
//! - A fresh-key flood creates no breaker, evicts nothing and takes no lock: each call is
//!   two hashes, one filter bucket (four slots) read and one slot written, and a read of the overflow breaker's
//!   state. Since its outcomes are recorded nowhere, it cannot open any breaker, the overflow
//!   breaker included, so it cannot turn away traffic of legitimate keys.
//! - A key's first failure does not count towards its own breaker: with
//!   `consecutive_failures(n)`, a key that fails on every call is refused after `n + 1` calls,
//!   not `n`. One unprotected call per key is the price; a key that is down is protected from
//!   its second call on.
//! - Why the overflow breaker's state rather than letting first calls through
//!   unconditionally: when the registry is full of pinned breakers and keys that overflow
//!   keep failing, the overflow breaker opens, and a client that never repeats a key would
//!   otherwise bypass it entirely. The cost: while the overflow breaker is open, the first
//!   call of every new key is refused, as its second would be. Only overflow calls (second
//!   and later calls of keys that found no room) can open the overflow breaker, so a client
//!   that wants to do this must first fill the registry with open breakers, as before.
//! - The filter is lossy. A fingerprint is overwritten when more keys land in its bucket
//!   than it has slots, and then the key's next call is a first call again (recorded
//!   nowhere): a flood of `F` fresh keys between two calls of a legitimate new key overwrites
//!   its sighting with a probability that grows like `1 - e^(-F / slots)`, which delays (never prevents: the flood must
//!   keep pace with every call) its getting a breaker of its own. A false positive (two keys
//!   with the same 64-bit fingerprint, or a key whose sighting predates its eviction from the
//!   map) only admits a key on its first call, as every call was before this filter: no
//!   breaker is ever lost or replaced by it. Keys held in the map never consult the filter.
//!
//! # Which key goes first
//!
//! Every call sets its key's *used* mark. At the bound, the hand evicts the first closed
//! breaker whose key has not been used since the hand last passed it, clearing the marks of
//! the used ones it passes (their second chance). So keys not used again after getting their
//! breaker — a client cycling through keys it sends twice — go before keys in steady use: an
//! approximation of least-recently-used that needs no clock on the call path. (A key seen
//! only once never gets this far: it has no breaker.) If the hand has cleared
//! `EVICTION_STEPS / 2` marks and found nothing, it evicts the next closed breaker anyway,
//! which keeps the work per new key bounded.
//!
//! Before that, each new key lets the hand look at up to two keys and drop those that have
//! gone unused for at least [`idle_ttl`](KeyedCircuitBreakerLayer::idle_ttl) (and are
//! closed), so idle keys go first and a registry that saw a burst of keys shrinks back as
//! traffic moves on.
//!
//! A breaker's key label (in transitions, snapshots and call observers) is the key's
//! `Display`, cut to [`MAX_LABEL_BYTES`].

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_core::{Classify, Error, IntoError, Name};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{Breaker, BreakerHandle, Snapshot};
use crate::config::CircuitBreakerConfig;
use crate::events::{Events, State, Transition};
use crate::future::{Guard, ResponseFuture};
use crate::service::Local;

/// Default bound on the number of keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000;
/// Default idle time after which a key's (closed) breaker may be dropped.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(600);
/// The key that the shared overflow breaker reports in transitions and snapshots.
pub const OVERFLOW_KEY: &str = "(overflow)";
/// The most ring keys one new key makes the eviction hand look at (parked keys aside).
pub const EVICTION_STEPS: usize = 64;
/// The most slots (8 bytes each) of the first-call filter: 32 MiB.
pub const MAX_FILTER_SLOTS: usize = 1 << 22;

/// How many parked keys each eviction looks at again.
const PARKED_RECHECKS: usize = 2;
/// How many keys each new key below the bound lets the hand look at for idleness.
const IDLE_CHECKS: usize = 2;
/// The most bytes of a key's `Display` kept as its breaker's label (cut at a character
/// boundary), so that a huge key cannot make a huge label.
pub const MAX_LABEL_BYTES: usize = 256;

/// A held key's breaker and its eviction marks.
struct Slot {
    local: Arc<Local>,
    /// The same breaker, for reading its state without touching a reference count.
    handle: BreakerHandle,
    /// Set by every call, cleared by the eviction hand: the key's second chance.
    used: AtomicBool,
    /// When the key arrived or the hand last cleared `used`, in ms since the registry's
    /// epoch. Written only under the clock lock; if `used` is clear, the key has not been
    /// used since then.
    seen_ms: AtomicU64,
}

impl Slot {
    /// `true` if the breaker must not be evicted: it is open, half-open, or forced open or
    /// disabled by an operator, or a call is in flight (its outcome would be lost: a slow
    /// upstream that fails after 30 s must still open its key's breaker, however many new
    /// keys arrived meanwhile). Every admitted call's guard holds a clone of `local`.
    fn pinned(&self) -> bool {
        self.handle.state() != State::Closed || Arc::strong_count(&self.local) > 1
    }
}

/// The eviction order: keys in the ring in hand order, and the keys parked because their
/// breaker was pinned when the hand met it. Every held key is in exactly one of the two.
struct Clock<K> {
    ring: VecDeque<K>,
    parked: VecDeque<K>,
    /// Reused for formatting new keys' labels.
    label: String,
}

impl<K> Clock<K> {
    fn len(&self) -> usize {
        self.ring.len().saturating_add(self.parked.len())
    }
}

/// A `fmt::Write` that keeps the first [`MAX_LABEL_BYTES`] bytes (whole characters) and
/// then stops the formatting.
struct Bounded<'a>(&'a mut String);

impl fmt::Write for Bounded<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MAX_LABEL_BYTES.saturating_sub(self.0.len());
        if s.len() <= room {
            self.0.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut = cut.saturating_sub(1);
        }
        self.0.push_str(s.get(..cut).unwrap_or_default());
        Err(fmt::Error)
    }
}

/// The doorkeeper: the fingerprints of keys seen recently, one per slot, 0 for none.
struct Filter {
    slots: Box<[AtomicU64]>,
    /// Buckets less one: a key's bucket is `BUCKET` consecutive slots.
    mask: usize,
    hasher: RandomState,
}

/// Slots per bucket (32 contiguous bytes, read together). A key's sighting is
/// kept in any slot of its bucket, so keys that share a bucket do not wipe each other's
/// sightings until more than `BUCKET` of them are waiting there at once. (With one slot per
/// key, two keys that landed in the same slot and were called in turn overwrote each other
/// on every call and never got a breaker: a 64-slot filter did that to one pair of three
/// steady keys in about 5 % of registries.)
const BUCKET: usize = 4;

impl Filter {
    fn new(max_keys: usize) -> Self {
        let n = max_keys
            .saturating_mul(2)
            .clamp(64, MAX_FILTER_SLOTS)
            .next_power_of_two();
        Filter {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n / BUCKET - 1,
            hasher: RandomState::new(),
        }
    }

    /// The key's bucket and fingerprint (never 0).
    #[inline]
    fn locate<K: Hash>(&self, key: &K) -> (&[AtomicU64], u64) {
        let hash = self.hasher.hash_one(key);
        // The bucket from the high half, so that a fingerprint that differs only in bit 0
        // (set below) still had to land in the same bucket by a 64-bit match.
        let start = (usize::try_from(hash >> 32).unwrap_or_default() & self.mask) * BUCKET;
        let bucket = self
            .slots
            .get(start..start + BUCKET)
            .unwrap_or_else(|| unreachable!("masked index"));
        (bucket, hash | 1)
    }

    /// `true` if `key` was seen before (its fingerprint is in its bucket); otherwise records
    /// it in an empty slot of the bucket, or over one of the others when none is empty.
    #[inline]
    fn seen<K: Hash>(&self, key: &K) -> bool {
        let (bucket, fp) = self.locate(key);
        let mut empty = None;
        for slot in bucket {
            let held = slot.load(Ordering::Relaxed);
            if held == fp {
                return true;
            }
            if held == 0 && empty.is_none() {
                empty = Some(slot);
            }
        }
        let victim = empty.unwrap_or_else(|| {
            // Full: overwrite a slot chosen by the key and by what the bucket holds now, so
            // two keys waiting in a full bucket do not keep taking the same slot from
            // each other.
            let first = bucket.first().map_or(0, |s| s.load(Ordering::Relaxed));
            let i = usize::try_from((fp >> 8) ^ (first >> 8)).unwrap_or_default() % BUCKET;
            bucket
                .get(i)
                .unwrap_or_else(|| unreachable!("index below BUCKET"))
        });
        victim.store(fp, Ordering::Relaxed);
        false
    }
}

/// Picks a request's key for a [`KeyedCircuitBreakerLayer`]: any `Fn(&Req) -> K` closure
/// or function, or a type of its own (the `rampart` facade's `BreakerKey` names the usual
/// keys of an `http::Request`: host, authority, method, path, a header), so that a key
/// chosen in a config file is a value rather than code.
///
/// # Example
///
/// ```
/// use rampart_breaker::KeyOf;
///
/// /// The tenant of a request, as a type of its own.
/// #[derive(Clone)]
/// struct Tenant;
/// impl KeyOf<(String, u32)> for Tenant {
///     type Key = String;
///     fn key_of(&self, req: &(String, u32)) -> String {
///         req.0.clone()
///     }
/// }
/// assert_eq!(Tenant.key_of(&("acme".to_string(), 7)), "acme");
/// // Any closure over a reference to the request is one too.
/// let by_id = |req: &(String, u32)| req.1;
/// assert_eq!(by_id.key_of(&("acme".to_string(), 7)), 7);
/// ```
pub trait KeyOf<Req> {
    /// The key type.
    type Key;
    /// The key of `req`.
    fn key_of(&self, req: &Req) -> Self::Key;
}

impl<Req, K, F> KeyOf<Req> for F
where
    F: Fn(&Req) -> K,
{
    type Key = K;

    #[inline]
    fn key_of(&self, req: &Req) -> K {
        self(req)
    }
}

/// Which breaker a call goes through.
enum Route<'a> {
    /// The key's own breaker, or the overflow breaker: admission and outcome both counted.
    Breaker(&'a Arc<Local>),
    /// A key's first call: admitted by the overflow breaker's state, outcome recorded nowhere.
    First(&'a Arc<Local>),
}

/// What every service and clone made by one layer shares. The two limits are atomics so that
/// the layer's setters change them in place, for every clone, service and handle at once.
struct Settings {
    name: Name,
    cfg: CircuitBreakerConfig,
    events: Events,
    max_keys: AtomicUsize,
    /// Milliseconds.
    idle_ttl: AtomicU64,
}

impl Settings {
    fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Registry<K> {
    settings: Settings,
    map: papaya::HashMap<K, Slot>,
    /// Taken only by calls whose key is not held, and by nothing else on the call path.
    clock: Mutex<Clock<K>>,
    overflow: Arc<Local>,
    overflowed: AtomicU64,
    /// Keys whose first call has been seen.
    filter: Filter,
    first_calls: AtomicU64,
    epoch: Instant,
}

impl<K> Registry<K> {
    fn new(settings: Settings) -> Self {
        let overflow = Breaker::new(
            settings.name.clone(),
            Some(Arc::from(OVERFLOW_KEY)),
            settings.cfg.clone(),
            settings.events.clone(),
        );
        let filter = Filter::new(settings.max_keys());
        Registry {
            settings,
            map: papaya::HashMap::new(),
            clock: Mutex::new(Clock {
                ring: VecDeque::new(),
                parked: VecDeque::new(),
                label: String::new(),
            }),
            overflow: Arc::new(Local::new(overflow)),
            overflowed: AtomicU64::new(0),
            filter,
            first_calls: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl<K: Hash + Eq + Clone + fmt::Display> Registry<K> {
    /// Runs `f` on the route for `key`: the held breaker (no lock); else, for a key not seen
    /// before, a first call (no lock, no breaker made); else a new breaker, else the overflow
    /// breaker.
    #[inline]
    fn with<R>(&self, key: &K, f: impl FnOnce(Route<'_>) -> R) -> R {
        let guard = self.map.guard();
        if let Some(slot) = self.map.get(key, &guard) {
            // Read first: a key in steady use does not write the shared line on every call.
            if !slot.used.load(Ordering::Relaxed) {
                slot.used.store(true, Ordering::Relaxed);
            }
            return f(Route::Breaker(&slot.local));
        }
        drop(guard);
        if !self.filter.seen(key) {
            self.first_calls.fetch_add(1, Ordering::Relaxed);
            return f(Route::First(&self.overflow));
        }
        self.with_new(key, f)
    }

    #[inline(never)]
    fn with_new<R>(&self, key: &K, f: impl FnOnce(Route<'_>) -> R) -> R {
        let guard = self.map.guard();
        let mut clock = self.clock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = self.map.get(key, &guard) {
            // Another caller added it meanwhile.
            drop(clock);
            return f(Route::Breaker(&slot.local));
        }
        let now = self.now_ms();
        self.drop_idle(&mut clock, &guard, now);
        if clock.len() >= self.settings.max_keys() && !self.evict_one(&mut clock, &guard, now) {
            drop(clock);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return f(Route::Breaker(&self.overflow));
        }
        // The caller's code (`Clone`, `Display`) runs before anything is changed, so a panic
        // in it leaves the map and the ring in step.
        let (k_map, k_ring) = (key.clone(), key.clone());
        clock.label.clear();
        // An error only means the label was cut.
        let _ = fmt::write(&mut Bounded(&mut clock.label), format_args!("{key}"));
        let label: Arc<str> = Arc::from(clock.label.as_str());
        if clock.label.capacity() > 4 * MAX_LABEL_BYTES {
            clock.label = String::new();
        }
        let breaker = Breaker::new(
            self.settings.name.clone(),
            Some(label),
            self.settings.cfg.clone(),
            self.settings.events.clone(),
        );
        // Each admitted call holds a clone of `local`, so the hand can tell a breaker with
        // calls in flight (see `Slot::pinned`).
        let local = Local::new(breaker.clone());
        let slot = Slot {
            handle: BreakerHandle { breaker },
            local: Arc::new(local),
            used: AtomicBool::new(false),
            seen_ms: AtomicU64::new(now),
        };
        let local = slot.local.clone();
        self.map.insert(k_map, slot, &guard);
        clock.ring.push_back(k_ring);
        drop(clock);
        f(Route::Breaker(&local))
    }

    /// Evicts one closed breaker, looking at a bounded number of keys. `false` if none
    /// could be found.
    fn evict_one(&self, clock: &mut Clock<K>, guard: &impl papaya::Guard, now: u64) -> bool {
        for _ in 0..PARKED_RECHECKS {
            let Some(k) = clock.parked.pop_front() else {
                break;
            };
            match self.map.get(&k, guard) {
                Some(slot) if slot.pinned() => clock.parked.push_back(k),
                Some(_) => clock.ring.push_back(k),
                None => {}
            }
        }
        let mut second_chances = 0;
        for _ in 0..EVICTION_STEPS {
            let Some(k) = clock.ring.pop_front() else {
                return false;
            };
            let Some(slot) = self.map.get(&k, guard) else {
                continue;
            };
            if slot.pinned() {
                clock.parked.push_back(k);
            } else if slot.used.load(Ordering::Relaxed) && second_chances < EVICTION_STEPS / 2 {
                second_chances += 1;
                slot.used.store(false, Ordering::Relaxed);
                slot.seen_ms.store(now, Ordering::Relaxed);
                clock.ring.push_back(k);
            } else {
                self.map.remove(&k, guard);
                return true;
            }
        }
        false
    }

    /// Lets the hand look at a few keys, dropping closed breakers whose key has gone unused
    /// for `idle_ttl`.
    fn drop_idle(&self, clock: &mut Clock<K>, guard: &impl papaya::Guard, now: u64) {
        let ttl = self.settings.idle_ttl.load(Ordering::Relaxed);
        for _ in 0..IDLE_CHECKS {
            let Some(k) = clock.ring.front() else {
                return;
            };
            let Some(slot) = self.map.get(k, guard) else {
                clock.ring.pop_front();
                continue;
            };
            let seen = slot.seen_ms.load(Ordering::Relaxed);
            if slot.used.load(Ordering::Relaxed) {
                slot.used.store(false, Ordering::Relaxed);
                slot.seen_ms.store(now, Ordering::Relaxed);
                clock.ring.rotate_left(1);
                continue;
            }
            if now.saturating_sub(seen) < ttl {
                return;
            }
            if slot.pinned() {
                if let Some(k) = clock.ring.pop_front() {
                    clock.parked.push_back(k);
                }
            } else if let Some(k) = clock.ring.pop_front() {
                self.map.remove(&k, guard);
            }
        }
    }
}

/// One circuit breaker per key, chosen from the request by a closure or any other
/// [`KeyOf`].
///
/// Every service made by this layer, and every clone, shares one registry of breakers,
/// bounded by [`max_keys`](Self::max_keys).
///
/// # Keys chosen by clients
///
/// A client may send a new key on every call; the registry is built for it:
///
/// - **A key's first call gets no breaker of its own.** A key neither held nor seen before
///   only has its fingerprint written into a fixed-size filter (per-registry random SipHash,
///   two slots per `max_keys`, at most [`MAX_FILTER_SLOTS`]); the call is admitted by the
///   shared [overflow breaker](KeyedHandle::overflow)'s state (refused while it is open or
///   forced open, let through otherwise) and **its outcome is recorded nowhere**, so a flood
///   of fresh keys makes no breaker, evicts nothing, takes no lock and can open nothing.
///   The key's second call gives it its own breaker. So a key's first failure does not count
///   towards its breaker (with `consecutive_failures(n)` a key failing every call is refused
///   from call `n + 2` on). First calls are counted by [`KeyedHandle::first_calls`]. The
///   filter is lossy: a flood can overwrite a key's sighting, which delays its getting a
///   breaker; a false positive only gives a key its breaker on its first call.
/// - A call with a key already held takes no lock (a lock-free `papaya` map). A call with a
///   new key takes a short lock and does a bounded amount of work to make room: it looks at
///   no more than two parked keys and [`EVICTION_STEPS`] others, never at every key.
/// - Open, half-open, forced-open and disabled breakers, and breakers with a call in flight,
///   are never evicted, so churn cannot re-admit traffic to a key that is down.
/// - When every held breaker is one of those, a new key's calls go through one breaker
///   shared by all such keys ([`KeyedHandle::overflow`], key [`OVERFLOW_KEY`]), counted by
///   [`KeyedHandle::overflowed`]: such a call never blocks and never panics, and is only
///   protected less precisely. A client that can make `max_keys` keys fail can fill the
///   registry with open breakers; alert on `overflowed`, or raise `max_keys`.
/// - Eviction order: keys unused for [`idle_ttl`](Self::idle_ttl) first, then keys not used
///   since the eviction hand last passed them (a CLOCK approximation of least recently used:
///   keys not used since they got their breaker go before keys in steady use).
/// - A breaker's key label is the key's `Display`, cut to [`MAX_LABEL_BYTES`].
///
/// # Example
///
/// ```
/// use rampart_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, State};
/// use rampart_core::classify::IoErrors;
/// use std::io;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = CircuitBreakerConfig::builder().consecutive_failures(Some(1)).build()?;
/// let layer = KeyedCircuitBreakerLayer::new(cfg, IoErrors, |host: &&'static str| host.to_string());
/// let handle = layer.handle();
/// let svc = layer.layer(service_fn(|host: &'static str| async move {
///     if host == "bad.example" { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) } else { Ok(()) }
/// }));
/// // A key's first call makes no breaker and its outcome is recorded nowhere.
/// let _ = svc.clone().oneshot("bad.example").await;
/// assert!(handle.get(&"bad.example".to_string()).is_none());
/// assert_eq!(handle.first_calls(), 1);
/// // Its second call gets the key its own breaker, which this failure opens.
/// let _ = svc.clone().oneshot("bad.example").await;
/// svc.clone().oneshot("good.example").await?;
/// svc.clone().oneshot("good.example").await?;
/// assert_eq!(handle.get(&"bad.example".to_string()).map(|h| h.state()), Some(State::Open));
/// assert_eq!(handle.get(&"good.example".to_string()).map(|h| h.state()), Some(State::Closed));
/// # Ok(()) }
/// ```
#[must_use]
pub struct KeyedCircuitBreakerLayer<C, F, K> {
    registry: Arc<Registry<K>>,
    classifier: C,
    key: F,
}

impl<C, F, K> KeyedCircuitBreakerLayer<C, F, K> {
    /// One breaker with `config` per key that `key` picks from a request. The config's
    /// name, transition listeners and call observer apply to every key's breaker.
    pub fn new(config: CircuitBreakerConfig, classifier: C, key: F) -> Self {
        KeyedCircuitBreakerLayer {
            registry: Arc::new(Registry::new(Settings {
                name: config.name.clone(),
                events: Events::new(&config),
                cfg: config,
                max_keys: AtomicUsize::new(DEFAULT_MAX_KEYS),
                idle_ttl: AtomicU64::new(millis(DEFAULT_IDLE_TTL)),
            })),
            classifier,
            key,
        }
    }

    /// The most keys held at once (at least 1). Past it, a new key evicts a closed breaker,
    /// or shares the overflow breaker if every held breaker is open, half-open or forced.
    ///
    /// Like [`idle_ttl`](Self::idle_ttl), it changes the one registry that this layer, its
    /// clones, the services it made and every [`handle`](Self::handle) share: nothing taken
    /// earlier is left on an old registry. Lowering it below the keys held evicts as new keys
    /// arrive. The first-call filter is sized from it (two slots per key) while the registry
    /// has no other owner yet, so set it right after [`new`](Self::new) to size the filter.
    ///
    /// Defaults to 1,000.
    pub fn max_keys(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.registry.settings.max_keys.store(n, Ordering::Relaxed);
        if let Some(registry) = Arc::get_mut(&mut self.registry) {
            registry.filter = Filter::new(n);
        }
        self
    }

    /// How long a key must go unused before its closed breaker is dropped as new keys arrive,
    /// even below [`max_keys`](Self::max_keys). Changes the registry shared by every clone,
    /// service and handle of this layer.
    ///
    /// Defaults to 10 minutes.
    pub fn idle_ttl(self, ttl: Duration) -> Self {
        self.registry
            .settings
            .idle_ttl
            .store(millis(ttl), Ordering::Relaxed);
        self
    }

    /// The operator's handle on every key's breaker.
    pub fn handle(&self) -> KeyedHandle<K> {
        KeyedHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<C: Clone, F: Clone, K> Clone for KeyedCircuitBreakerLayer<C, F, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

impl<C, F, K> fmt::Debug for KeyedCircuitBreakerLayer<C, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.registry.settings.name)
            .field("max_keys", &self.registry.settings.max_keys())
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone, F: Clone, K> Layer<S> for KeyedCircuitBreakerLayer<C, F, K> {
    type Service = KeyedCircuitBreaker<S, C, F, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

/// A circuit breaker per key. Made by [`KeyedCircuitBreakerLayer`].
///
/// Unlike [`CircuitBreaker`](crate::CircuitBreaker), the key is known only in `call`, so
/// `poll_ready` passes the inner service's readiness through and the decision is made in
/// `call`: a rejected call returns an immediately ready `CircuitOpen` error.
pub struct KeyedCircuitBreaker<S, C, F, K> {
    inner: S,
    registry: Arc<Registry<K>>,
    classifier: C,
    key: F,
}

impl<S, C, F, K> KeyedCircuitBreaker<S, C, F, K> {
    rampart_core::inner_service_accessors!(S);
}

impl<S: Clone, C: Clone, F: Clone, K> Clone for KeyedCircuitBreaker<S, C, F, K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, C, F, K> fmt::Debug for KeyedCircuitBreaker<S, C, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.registry.settings.name)
            .finish_non_exhaustive()
    }
}

impl<S, C, F, K, Req> Service<Req> for KeyedCircuitBreaker<S, C, F, K>
where
    S: Service<Req>,
    S::Error: IntoError,
    C: Classify<S::Response, <S::Error as IntoError>::Inner> + Clone,
    F: KeyOf<Req, Key = K>,
    K: Hash + Eq + Clone + fmt::Display,
{
    type Response = S::Response;
    type Error = Error<<S::Error as IntoError>::Inner>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(IntoError::into_error)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key.key_of(&req);
        let admitted = self.registry.with(&key, |route| match route {
            Route::Breaker(local) => local
                .breaker
                .acquire()
                .map(|admit| Some((Guard::new(local, admit), local.needs_clock))),
            Route::First(overflow) => overflow.breaker.peek().map(|()| None),
        });
        match admitted {
            Err(open) => ResponseFuture::rejected(open, self.classifier.clone()),
            Ok(None) => ResponseFuture::unguarded(self.inner.call(req), self.classifier.clone()),
            Ok(Some((guard, needs_clock))) => {
                let started = needs_clock.then(Instant::now);
                let future = self.inner.call(req);
                ResponseFuture::called(future, guard, self.classifier.clone(), started)
            }
        }
    }
}

/// The operator's handle on a keyed breaker's registry.
pub struct KeyedHandle<K> {
    registry: Arc<Registry<K>>,
}

impl<K> Clone for KeyedHandle<K> {
    fn clone(&self) -> Self {
        KeyedHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedHandle")
            .field("name", &self.registry.settings.name)
            .field("overflowed", &self.overflowed())
            .finish_non_exhaustive()
    }
}

impl<K> KeyedHandle<K> {
    /// The breaker shared by new keys while every held breaker is open, half-open or forced
    /// (its snapshots and transitions carry the key [`OVERFLOW_KEY`]).
    ///
    /// # Example
    ///
    /// ```
    /// use rampart_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, State, OVERFLOW_KEY};
    /// use rampart_core::classify::IoErrors;
    /// use std::io;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cfg = CircuitBreakerConfig::builder().consecutive_failures(Some(1)).build()?;
    /// let layer = KeyedCircuitBreakerLayer::new(cfg, IoErrors, |k: &u32| *k).max_keys(1);
    /// let handle = layer.handle();
    /// let svc = layer.layer(service_fn(|k: u32| async move {
    ///     if k == 0 { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) } else { Ok(()) }
    /// }));
    /// svc.clone().oneshot(1).await?; // a first call: no breaker made
    /// let _ = svc.clone().oneshot(0).await; // a first call too
    /// let _ = svc.clone().oneshot(0).await; // key 0's breaker opens and fills the registry
    /// svc.clone().oneshot(1).await?; // an open breaker is never evicted: key 1 overflows
    /// assert_eq!(handle.get(&0).map(|h| h.state()), Some(State::Open));
    /// assert!(handle.get(&1).is_none());
    /// assert_eq!(handle.overflowed(), 1);
    /// assert_eq!(handle.overflow().snapshot().key.as_deref(), Some(OVERFLOW_KEY));
    /// # Ok(()) }
    /// ```
    pub fn overflow(&self) -> BreakerHandle {
        BreakerHandle {
            breaker: self.registry.overflow.breaker.clone(),
        }
    }

    /// How many calls went through the [`overflow`](Self::overflow) breaker because no key
    /// could be evicted for theirs.
    pub fn overflowed(&self) -> u64 {
        self.registry.overflowed.load(Ordering::Relaxed)
    }

    /// How many calls went through without a breaker of their own because their key was
    /// neither held nor seen before (a key's first call, see
    /// [`KeyedCircuitBreakerLayer`]): admitted by the [`overflow`](Self::overflow) breaker's
    /// state, outcome recorded nowhere. A steep rise means a client is sending fresh keys.
    pub fn first_calls(&self) -> u64 {
        self.registry.first_calls.load(Ordering::Relaxed)
    }

    /// The most keys held at once.
    pub fn max_keys(&self) -> usize {
        self.registry.settings.max_keys()
    }
}

impl<K: Hash + Eq> KeyedHandle<K> {
    /// The handle on `key`'s breaker, if the key is held.
    pub fn get(&self, key: &K) -> Option<BreakerHandle> {
        let map = &self.registry.map;
        let guard = map.guard();
        map.get(key, &guard).map(|slot| BreakerHandle {
            breaker: slot.local.breaker.clone(),
        })
    }

    /// How many keys are held (not counting the overflow breaker). Exact: it takes the lock
    /// that calls with a new key take, briefly.
    pub fn len(&self) -> usize {
        self.registry
            .clock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// `true` if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every held key's breaker (not the overflow breaker's: see
    /// [`overflow`](Self::overflow)).
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let map = &self.registry.map;
        let guard = map.guard();
        map.values(&guard)
            .map(|slot| slot.local.breaker.snapshot())
            .collect()
    }

    /// Receives every transition of every key's breaker from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Transition> {
        self.registry.settings.events.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rampart_core::classify::IoErrors;
    use std::io;
    use tower::{service_fn, ServiceExt};

    fn cfg() -> CircuitBreakerConfig {
        CircuitBreakerConfig::builder()
            .consecutive_failures(Some(1))
            .recovery_timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    type Svc = KeyedCircuitBreaker<
        tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<(), io::Error>>>,
        IoErrors,
        fn(&u64) -> u64,
        u64,
    >;

    fn fails_on_odd(k: u64) -> std::future::Ready<Result<(), io::Error>> {
        std::future::ready(if k % 2 == 1 {
            Err(io::Error::from(io::ErrorKind::ConnectionRefused))
        } else {
            Ok(())
        })
    }

    fn keyed(max_keys: usize) -> (Svc, KeyedHandle<u64>) {
        let layer =
            KeyedCircuitBreakerLayer::new(cfg(), IoErrors, (|k: &u64| *k) as fn(&u64) -> u64)
                .max_keys(max_keys);
        let handle = layer.handle();
        let inner = service_fn(fails_on_odd as fn(u64) -> _);
        (layer.layer(inner), handle)
    }

    #[test]
    fn the_filter_is_sized_from_max_keys_and_bounded() {
        assert_eq!(Filter::new(1).slots.len(), 64);
        assert_eq!(Filter::new(1_000).slots.len(), 2_048);
        assert_eq!(Filter::new(1_000_000).slots.len(), 1 << 21);
        assert_eq!(Filter::new(usize::MAX).slots.len(), MAX_FILTER_SLOTS);
        // Two registries hash the same key differently.
        let (a, b) = (Filter::new(64), Filter::new(64));
        assert_ne!(a.hasher.hash_one(7u64), b.hasher.hash_one(7u64));
    }

    /// Keys that share a bucket and are called in turn all get their breakers on their
    /// second call (with one slot per key, two keys in one slot wiped each other's sighting
    /// on every call and stayed without a breaker for good).
    #[tokio::test(start_paused = true)]
    async fn keys_sharing_a_bucket_called_in_turn_get_their_breakers() {
        let (svc, handle) = keyed(8);
        let filter = &handle.registry.filter;
        // Four keys that land in the bucket of key 0 (a registry's hashing is random, so
        // look for them).
        let home = filter.locate(&0u64).0.as_ptr();
        let same: Vec<u64> = (0u64..)
            .filter(|k| std::ptr::eq(filter.locate(k).0.as_ptr(), home))
            .take(BUCKET)
            .collect();
        for round in 0..2 {
            for &k in &same {
                let _ = svc.clone().oneshot(k).await;
            }
            if round == 0 {
                assert_eq!(handle.len(), 0, "first calls only");
            }
        }
        assert_eq!(handle.first_calls(), BUCKET as u64);
        for k in &same {
            assert!(handle.get(k).is_some(), "key {k} has its breaker");
        }
    }

    /// A false positive (the key's fingerprint already in its slot, as after a 64-bit
    /// collision) only gives the key its breaker on its first call.
    #[tokio::test(start_paused = true)]
    async fn a_false_positive_only_admits_early() {
        let (svc, handle) = keyed(8);
        assert!(!handle.registry.filter.seen(&3u64), "not seen yet");
        // Key 3 (fails) has never been called, but its slot now holds its fingerprint.
        assert!(svc.clone().oneshot(3).await.unwrap_err().inner().is_some());
        assert_eq!(handle.first_calls(), 0);
        assert_eq!(handle.get(&3).unwrap().state(), State::Open);
        assert!(svc
            .clone()
            .oneshot(3)
            .await
            .unwrap_err()
            .circuit_open()
            .is_some());
    }

    /// A lost sighting (another key overwrote the slot) only delays a key's breaker; a held
    /// key's breaker does not depend on the filter at all.
    #[tokio::test(start_paused = true)]
    async fn a_lost_sighting_delays_and_a_wiped_filter_loses_no_breaker() {
        let (svc, handle) = keyed(8);
        // Key 1 fails: its breaker opens on its second call.
        let _ = svc.clone().oneshot(1).await;
        let _ = svc.clone().oneshot(1).await;
        assert_eq!(handle.get(&1).unwrap().state(), State::Open);
        // Key 2: seen once, then its slot is overwritten.
        svc.clone().oneshot(2).await.unwrap();
        let (bucket, fp) = handle.registry.filter.locate(&2u64);
        for slot in bucket.iter().filter(|s| s.load(Ordering::Relaxed) == fp) {
            slot.store(12_345, Ordering::Relaxed);
        }
        svc.clone().oneshot(2).await.unwrap();
        assert!(
            handle.get(&2).is_none(),
            "the sighting was lost: a first call again"
        );
        assert_eq!(handle.first_calls(), 3);
        svc.clone().oneshot(2).await.unwrap();
        assert!(handle.get(&2).is_some());
        // Wipe the filter, then fill it with garbage: held breakers are untouched.
        for value in [0, u64::MAX] {
            for slot in handle.registry.filter.slots.iter() {
                slot.store(value, Ordering::Relaxed);
            }
            assert!(svc
                .clone()
                .oneshot(1)
                .await
                .unwrap_err()
                .circuit_open()
                .is_some());
            assert_eq!(handle.get(&1).unwrap().state(), State::Open);
            svc.clone().oneshot(2).await.unwrap();
            assert_eq!(handle.len(), 2);
        }
        assert_eq!(handle.first_calls(), 3);
    }
}
