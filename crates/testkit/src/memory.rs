//! [`MemoryBackend`]: the reference in-memory tier.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tierkit_core::{
    Backend, CacheKey, CacheValue, Clock, GetFuture, Probe, TierFuture, WriteFuture,
};

/// Calls a test tier received, per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CallCounts {
    /// Calls of [`Backend::get`].
    pub get: u64,
    /// Calls of [`Backend::set`] and of [`Backend::set_if_newer`].
    pub set: u64,
    /// Calls of [`Backend::delete`].
    pub delete: u64,
    /// Calls of [`Backend::clear`].
    pub clear: u64,
}

impl CallCounts {
    /// The sum over all operations.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.get + self.set + self.delete + self.clear
    }
}

/// Atomic counters behind [`CallCounts`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    get: AtomicU64,
    set: AtomicU64,
    delete: AtomicU64,
    clear: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, op: tierkit_core::Op) {
        let counter = match op {
            tierkit_core::Op::Get => &self.get,
            tierkit_core::Op::Set => &self.set,
            tierkit_core::Op::Delete => &self.delete,
            _ => &self.clear,
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn snapshot(&self) -> CallCounts {
        CallCounts {
            get: self.get.load(Ordering::Acquire),
            set: self.set.load(Ordering::Acquire),
            delete: self.delete.load(Ordering::Acquire),
            clear: self.clear.load(Ordering::Acquire),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    map: Mutex<HashMap<CacheKey, CacheValue>>,
    calls: Counters,
}

/// A reference in-memory tier: a `HashMap` behind a mutex (never held across an await), that
/// counts its calls.
///
/// * It never returns an expired value (by its [`Clock`]) and removes expired entries it finds;
///   setting an already expired value removes the key.
/// * By default it answers synchronously with [`TierFuture::ready`], like an in-process tier,
///   and [`probe`](Backend::probe) answers a hit or [`Probe::Miss`]; an answered probe
///   counts as a `get` in [`calls`](MemoryBackend::calls), since it has the same effect.
///   [`remote`](MemoryBackend::remote) makes every answer a [`TierFuture::pending`] future that
///   yields to the scheduler once before answering, like a remote tier, and `probe` answers
///   [`Probe::Unknown`] (not counted).
/// * Clones share the map and the counters, so a test can keep one handle and move a clone into
///   a composition. Configure it ([`with_clock`](MemoryBackend::with_clock),
///   [`remote`](MemoryBackend::remote)) before cloning: those settings belong to each handle.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::Backend;
/// use tierkit_testkit::{CallCounts, Clock, ManualClock, MemoryBackend, key, value};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tierkit_core::Result<()> {
/// let clock = ManualClock::starting_now();
/// let tier = MemoryBackend::new("l2").with_clock(Clock::from(clock.clone())).remote();
/// let handle = tier.clone();
///
/// tier.set(&key("a"), value("x", clock.now(), Duration::from_secs(5))).await?;
/// assert!(!tier.get(&key("a")).is_ready());
/// assert!(tier.get(&key("a")).await?.is_some());
///
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(tier.get(&key("a")).await?, None);
/// assert_eq!(handle.calls(), CallCounts { get: 3, set: 1, delete: 0, clear: 0 });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    label: Arc<str>,
    clock: Clock,
    remote: bool,
    shared: Arc<Shared>,
}

impl MemoryBackend {
    /// An empty, synchronous tier called `label`, on the system clock.
    #[must_use]
    pub fn new(label: &str) -> Self {
        MemoryBackend {
            label: Arc::from(label),
            clock: Clock::System,
            remote: false,
            shared: Arc::default(),
        }
    }

    /// This tier, deciding expiry with `clock` (default: [`Clock::System`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// This tier, answering like a remote tier: every operation returns a pending future that
    /// yields once (`tokio::task::yield_now`) before answering, and `probe` answers
    /// [`Probe::Unknown`]. Needs a tokio runtime.
    #[must_use]
    pub fn remote(mut self) -> Self {
        self.remote = true;
        self
    }

    /// Whether the tier answers like a remote tier.
    #[must_use]
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Calls received so far, per operation (shared by all clones).
    #[must_use]
    pub fn calls(&self) -> CallCounts {
        self.shared.calls.snapshot()
    }

    /// The value `get` would return for `key` now, without counting a call (and without
    /// removing an expired entry).
    #[must_use]
    pub fn peek(&self, key: &CacheKey) -> Option<CacheValue> {
        let now = self.clock.now();
        self.lock().get(key).filter(|v| !v.is_expired(now)).cloned()
    }

    /// Stores `value` under `key` as is (even if it has expired), without counting a call.
    /// Useful to set up a tier's contents, including expired leftovers.
    pub fn insert_raw(&self, key: CacheKey, value: CacheValue) {
        self.lock().insert(key, value);
    }

    /// Entries stored, including expired ones not yet removed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, CacheValue>> {
        // A panic while holding the lock (a failing assertion elsewhere) leaves the map
        // consistent: every critical section is a single map operation.
        self.shared
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get_at(&self, key: &CacheKey, now: tierkit_core::Timestamp) -> Option<CacheValue> {
        let mut map = self.lock();
        match map.get(key) {
            Some(value) if value.is_expired(now) => {
                map.remove(key);
                None
            }
            found => found.cloned(),
        }
    }

    fn set_now(&self, key: &CacheKey, value: CacheValue) {
        let mut map = self.lock();
        if value.is_expired(self.clock.now()) {
            map.remove(key);
        } else {
            map.insert(key.clone(), value);
        }
    }

    /// [`set_now`](Self::set_now), unless the map holds a live value created later: compared
    /// and stored under one lock.
    fn set_if_newer_now(&self, key: &CacheKey, value: CacheValue) {
        let now = self.clock.now();
        let mut map = self.lock();
        if map.get(key).is_some_and(|held| !value.replaces(held, now)) {
            return;
        }
        if value.is_expired(now) {
            map.remove(key);
        } else {
            map.insert(key.clone(), value);
        }
    }

    fn answer<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce(&'a Self) -> T + Send + 'a,
    ) -> TierFuture<'a, T> {
        if self.remote {
            TierFuture::pending(async move {
                tokio::task::yield_now().await;
                Ok(op(self))
            })
        } else {
            TierFuture::ready(Ok(op(self)))
        }
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("label", &self.label)
            .field("remote", &self.remote)
            .field("len", &self.len())
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl Backend for MemoryBackend {
    fn label(&self) -> &str {
        &self.label
    }

    fn probe(&self, key: &CacheKey) -> Probe {
        if self.remote {
            return Probe::Unknown;
        }
        self.shared.calls.count(tierkit_core::Op::Get);
        let now = self.clock.now();
        Probe::found(self.get_at(key, now), now)
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        self.shared.calls.count(tierkit_core::Op::Get);
        self.answer(move |this| this.get_at(key, this.clock.now()))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.shared.calls.count(tierkit_core::Op::Set);
        self.answer(move |this| this.set_now(key, value))
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.shared.calls.count(tierkit_core::Op::Set);
        self.answer(move |this| this.set_if_newer_now(key, value))
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        self.shared.calls.count(tierkit_core::Op::Delete);
        self.answer(move |this| {
            this.lock().remove(key);
        })
    }

    fn clear(&self) -> WriteFuture<'_> {
        self.shared.calls.count(tierkit_core::Op::Clear);
        self.answer(|this| this.lock().clear())
    }
}
