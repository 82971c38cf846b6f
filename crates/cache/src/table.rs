//! The per-key table: the running flight of each key and its remote write lanes.
//!
//! One sharded map holds, per key, what is in progress: the flight (with its waiter count and
//! the loader it will run) and, per remote tier, a write lane (a runner applying the key's
//! writes one at a time, newest last). Entries exist only while something runs, so memory
//! follows concurrency, not the key space; after every flight and write finished the table is
//! empty.
//!
//! Every decision that must be atomic per key is made under the key's shard lock: joining or
//! creating a flight, a flight storing its result (it stores only while it is still the key's
//! flight: a `set` or `remove` unregisters it, which is the generation guard), queueing a
//! write behind a running one. The lock is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tierkit_core::{BackendError, CacheKey, CacheValue};
use tokio::sync::oneshot;

use crate::flight::Flight;

/// Shards of the table: a power of two.
const SHARDS: usize = 64;

/// A write for a remote tier.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// The tier should hold this value.
    Store(CacheValue),
    /// The tier should hold this value unless it holds one created later: a copy from another
    /// tier (an L3 hit refilling L2), written with
    /// [`Backend::set_if_newer`](tierkit_core::Backend::set_if_newer) so that it never
    /// replaces what another node wrote meanwhile.
    Refill(CacheValue),
    /// The tier should not hold the key.
    Remove,
}

/// A write waiting for its lane's runner, with everyone waiting on it.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) effect: Effect,
    pub(crate) notify: Vec<oneshot::Sender<Result<(), BackendError>>>,
}

/// A running lane: its runner takes `pending` until it is empty.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    pub(crate) pending: Option<PendingWrite>,
    /// Flights waiting for the lane to finish before they read the tier; dropped (which wakes
    /// them) when the lane ends.
    pub(crate) drained: Vec<oneshot::Sender<()>>,
}

/// A key's registered flight and how many callers wait on it.
///
/// A flight stays registered until it finishes, so that a `set` or `remove` before then
/// supersedes it (it then stores nothing, not even a refresh's back-off). Once it gave up
/// waiting for a loader (no caller handed one), it is closed: callers no longer join it, a new
/// flight may take its place (and the closed one then stores nothing either).
pub(crate) struct FlightSlot<V> {
    pub(crate) flight: Arc<Flight<V>>,
    pub(crate) waiters: usize,
    /// Whether callers may still join the flight (and hand it their loader).
    pub(crate) open: bool,
}

impl<V> FlightSlot<V> {
    /// The slot of a new flight, open, with `waiters` callers.
    pub(crate) fn new(flight: Arc<Flight<V>>, waiters: usize) -> Self {
        FlightSlot {
            flight,
            waiters,
            open: true,
        }
    }
}

/// What is in progress for one key.
pub(crate) struct KeyState<V> {
    pub(crate) flight: Option<FlightSlot<V>>,
    pub(crate) lanes: [Option<Lane>; 2],
}

impl<V> Default for KeyState<V> {
    fn default() -> Self {
        KeyState {
            flight: None,
            lanes: [None, None],
        }
    }
}

impl<V> KeyState<V> {
    fn is_idle(&self) -> bool {
        self.flight.is_none() && self.lanes.iter().all(Option::is_none)
    }

    /// The key's flight, if callers may still join it.
    pub(crate) fn joinable(&mut self) -> Option<&mut FlightSlot<V>> {
        self.flight.as_mut().filter(|slot| slot.open)
    }

    /// The slot of `flight`, if it is still this key's flight.
    pub(crate) fn slot_of(&mut self, flight: &Arc<Flight<V>>) -> Option<&mut FlightSlot<V>> {
        self.flight
            .as_mut()
            .filter(|slot| Arc::ptr_eq(&slot.flight, flight))
    }

    /// Unregisters `flight` if it is still this key's flight; whether it was.
    pub(crate) fn remove_flight(&mut self, flight: &Arc<Flight<V>>) -> Option<FlightSlot<V>> {
        if self.slot_of(flight).is_some() {
            self.flight.take()
        } else {
            None
        }
    }

    /// Queues `effect` on the lane of remote tier `tier` (0 or 1). Returns whether the lane was
    /// idle, in which case the caller must start its runner. A write already waiting in the
    /// lane is replaced (its waiters wait on the newer one instead: the tier ends in the newer
    /// state either way).
    pub(crate) fn queue_write(
        &mut self,
        tier: usize,
        effect: Effect,
        notify: Option<oneshot::Sender<Result<(), BackendError>>>,
    ) -> bool {
        let lane = &mut self.lanes[tier];
        let start = lane.is_none();
        let lane = lane.get_or_insert_with(Lane::default);
        let mut waiting = lane
            .pending
            .take()
            .map(|pending| pending.notify)
            .unwrap_or_default();
        waiting.extend(notify);
        lane.pending = Some(PendingWrite {
            effect,
            notify: waiting,
        });
        start
    }

    /// A receiver that completes when the write lane of remote tier `tier` has finished, if
    /// one is running: a read of the tier before that may return what the running writes are
    /// replacing.
    pub(crate) fn lane_drained(&mut self, tier: usize) -> Option<oneshot::Receiver<()>> {
        let lane = self.lanes[tier].as_mut()?;
        let (sender, receiver) = oneshot::channel();
        lane.drained.push(sender);
        Some(receiver)
    }
}

/// One shard: the keys whose hash lands in it.
type Shard<V> = Mutex<HashMap<CacheKey, KeyState<V>>>;

/// The sharded table (see the module docs).
pub(crate) struct KeyTable<V> {
    shards: Box<[Shard<V>]>,
}

/// A locked shard, with the key's state created on demand and dropped again when idle.
pub(crate) struct Locked<'a, V> {
    guard: MutexGuard<'a, HashMap<CacheKey, KeyState<V>>>,
    key: &'a CacheKey,
}

impl<V> Locked<'_, V> {
    /// The key's state, created if absent.
    pub(crate) fn state(&mut self) -> &mut KeyState<V> {
        self.guard.entry(self.key.clone()).or_default()
    }

    /// The key's state, if anything is in progress for it.
    pub(crate) fn existing(&mut self) -> Option<&mut KeyState<V>> {
        self.guard.get_mut(self.key)
    }
}

impl<V> Drop for Locked<'_, V> {
    fn drop(&mut self) {
        if self.guard.get(self.key).is_some_and(KeyState::is_idle) {
            self.guard.remove(self.key);
        }
    }
}

impl<V> KeyTable<V> {
    pub(crate) fn new() -> Self {
        KeyTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Locks the shard of `key`.
    pub(crate) fn lock<'a>(&'a self, key: &'a CacheKey) -> Locked<'a, V> {
        let shard = &self.shards[shard_of(key)];
        Locked {
            // A panic while the lock was held cannot leave a state that later calls would
            // misread (every update is a single assignment), so poisoning is ignored.
            guard: shard.lock().unwrap_or_else(PoisonError::into_inner),
            key,
        }
    }

    /// Keys with a flight or a write in progress.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Keys with a flight in progress.
    pub(crate) fn flights(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .filter(|state| state.flight.is_some())
                    .count()
            })
            .sum()
    }
}

/// FNV-1a over the key: fast on short keys, and enough to spread keys over shards.
fn shard_of(key: &CacheKey) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // SHARDS is a power of two; the mask keeps the index in range.
    (hash as usize) & (SHARDS - 1)
}
