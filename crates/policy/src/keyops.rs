//! Bookkeeping that keeps overlapping operations on one key from leaving an older value in a
//! tier.
//!
//! Two operations on one key can overlap: two `set`s whose writes land in opposite orders in a
//! tier, a race write's slower half finishing on the offload after a `delete`, a refill landing
//! after a `delete`. A tier then holds whatever landed last, which need not be the newest
//! operation's effect. The composition prevents that with two structures:
//!
//! * **In-flight operations** ([`KeyOps::begin`], [`KeyOps::finish`]). While operations on a
//!   key are running, the key has an entry recording the newest operation's effect (a value to
//!   store, or a removal) and, per tier, how many operations are running and whether two ever
//!   overlapped. When the last running operation on a tier finishes after an overlap, the newest
//!   effect is applied to that tier once more, so the tier ends in the newest state whatever the
//!   order in which the overlapping operations landed. A conditional store
//!   ([`KeyOps::begin_if_newer`]) does not simply become the newest effect: it is folded into the
//!   running operations' effect, as the two would end in order. Without overlap, nothing extra
//!   happens.
//!   Entries exist only while operations run, so memory follows concurrency, not the key space.
//! * **Generations** ([`KeyOps::generation`]): striped counters that every `set`, `delete` and
//!   `clear` advances. A refill (a copy of an L2 value into L1) is skipped when the key's
//!   generation moved since the read began, because the value read may predate the newer
//!   operation.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tierkit_core::{CacheKey, CacheValue, Timestamp};

use crate::context::Layer;

/// The effect of an operation on one tier.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// The tier should hold this value.
    Store(CacheValue),
    /// The tier should hold this value unless it holds one created later (a conditional
    /// write: [`Backend::set_if_newer`](tierkit_core::Backend::set_if_newer)).
    StoreIfNewer(CacheValue),
    /// The tier should not hold the key.
    Remove,
}

impl Effect {
    /// The effect of `self` followed by a conditional store of `value` decided at `now`: the
    /// overlapping operations' effect in order, so that applying it to a tier whose writes
    /// landed out of order still ends where the operations in order would.
    fn then_if_newer(self, value: CacheValue, now: Timestamp) -> Effect {
        match self {
            Effect::Remove => Effect::Store(value),
            Effect::Store(held) if !value.replaces(&held, now) => Effect::Store(held),
            Effect::Store(_) => Effect::Store(value),
            Effect::StoreIfNewer(held) if !value.replaces(&held, now) => Effect::StoreIfNewer(held),
            Effect::StoreIfNewer(_) => Effect::StoreIfNewer(value),
        }
    }
}

#[derive(Debug, Default)]
struct TierState {
    running: u32,
    overlapped: bool,
}

#[derive(Debug)]
struct KeyState {
    newest: Effect,
    tiers: [TierState; 2],
}

impl KeyState {
    fn idle(&self) -> bool {
        self.tiers.iter().all(|tier| tier.running == 0)
    }
}

/// Per-key bookkeeping of a composition (see the module docs).
pub(crate) struct KeyOps {
    shards: Box<[Mutex<HashMap<CacheKey, KeyState>>]>,
    generations: Box<[AtomicU64]>,
}

/// Shards of the in-flight table: a power of two.
const SHARDS: usize = 64;
/// Generation counters: a power of two. 4 KiB per composition.
const GENERATIONS: usize = 512;

fn index(layer: Layer) -> usize {
    match layer {
        Layer::L1 => 0,
        Layer::L2 => 1,
    }
}

/// FNV-1a: fast on short keys, and enough to spread keys over shards and counters.
fn hash(key: &CacheKey) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `hash` reduced below `len`, a power of two.
fn slot(hash: u64, len: usize) -> usize {
    // The mask keeps the value below `len`, which fits in usize.
    usize::try_from(hash & (len as u64 - 1)).unwrap_or(0)
}

impl KeyOps {
    pub(crate) fn new() -> Self {
        KeyOps {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, KeyState>> {
        // No code panics while holding the lock; recover the map if that ever changes.
        self.shards[slot(hash(key), SHARDS)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn counter(&self, key: &CacheKey) -> &AtomicU64 {
        &self.generations[slot(hash(key), GENERATIONS)]
    }

    /// The key's generation (shared with the other keys of its counter).
    pub(crate) fn generation(&self, key: &CacheKey) -> u64 {
        self.counter(key).load(Ordering::Acquire)
    }

    /// The newest effect on `key` while operations on it run (`None` when none runs).
    pub(crate) fn newest(&self, key: &CacheKey) -> Option<Effect> {
        self.shard(key).get(key).map(|state| state.newest.clone())
    }

    /// Starts an operation whose effect is `effect` on both tiers.
    pub(crate) fn begin(&self, key: &CacheKey, effect: Effect) {
        self.start(key, |_| effect);
    }

    /// Starts a conditional store of `value` on both tiers ([`Effect::StoreIfNewer`]); over
    /// overlapping operations on the key, the newest effect becomes theirs followed by this
    /// store, decided at `now`.
    pub(crate) fn begin_if_newer(&self, key: &CacheKey, value: CacheValue, now: Timestamp) {
        self.start(key, |running| match running {
            Some(effect) => effect.then_if_newer(value, now),
            None => Effect::StoreIfNewer(value),
        });
    }

    /// Starts an operation whose newest effect `newest` makes from the running operations'
    /// effect, if any.
    fn start(&self, key: &CacheKey, newest: impl FnOnce(Option<Effect>) -> Effect) {
        let mut shard = self.shard(key);
        self.counter(key).fetch_add(1, Ordering::AcqRel);
        match shard.entry(key.clone()) {
            Entry::Occupied(mut entry) => {
                let state = entry.get_mut();
                state.newest = newest(Some(std::mem::replace(&mut state.newest, Effect::Remove)));
                for tier in &mut state.tiers {
                    tier.overlapped |= tier.running > 0;
                    tier.running += 1;
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(KeyState {
                    newest: newest(None),
                    tiers: [
                        TierState {
                            running: 1,
                            overlapped: false,
                        },
                        TierState {
                            running: 1,
                            overlapped: false,
                        },
                    ],
                });
            }
        }
    }

    /// Starts a refill of L1 with `value`, read when the key's generation was `generation`.
    /// Returns false (and starts nothing) when the key changed since, or has operations
    /// running: the value read may then be older than the key's newest state.
    pub(crate) fn begin_refill(&self, key: &CacheKey, value: CacheValue, generation: u64) -> bool {
        let mut shard = self.shard(key);
        if self.generation(key) != generation {
            return false;
        }
        match shard.entry(key.clone()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(KeyState {
                    newest: Effect::StoreIfNewer(value),
                    tiers: [
                        TierState {
                            running: 1,
                            overlapped: false,
                        },
                        TierState::default(),
                    ],
                });
                true
            }
        }
    }

    /// Records that an operation on `layer` finished. Returns the effect to apply to that tier
    /// once more when this was the last running operation there and operations overlapped; the
    /// caller applies it and calls `finish` again (it is counted as running meanwhile).
    pub(crate) fn finish(&self, key: &CacheKey, layer: Layer) -> Option<Effect> {
        let mut shard = self.shard(key);
        let Entry::Occupied(mut entry) = shard.entry(key.clone()) else {
            return None;
        };
        let state = entry.get_mut();
        let tier = &mut state.tiers[index(layer)];
        tier.running = tier.running.saturating_sub(1);
        if tier.running == 0 && tier.overlapped {
            tier.overlapped = false;
            tier.running = 1;
            return Some(state.newest.clone());
        }
        if state.idle() {
            entry.remove();
        }
        None
    }

    /// Starts a `clear`: a new generation of every key, and every key with operations still
    /// running (a race write's slower half, say) gets a removal as its newest effect, applied
    /// again when those operations finish, so that they cannot bring a key back after the
    /// clear.
    pub(crate) fn begin_clear(&self) {
        for counter in &*self.generations {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        for shard in &*self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for state in shard.values_mut() {
                state.newest = Effect::Remove;
                for tier in &mut state.tiers {
                    tier.overlapped |= tier.running > 0;
                }
            }
        }
    }

    /// Keys with operations running.
    pub(crate) fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|map| map.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tierkit_core::Timestamp;

    fn value(payload: &'static str) -> CacheValue {
        CacheValue::with_ttl(
            payload.as_bytes(),
            Timestamp::UNIX_EPOCH,
            Duration::from_secs(1),
        )
    }

    /// A conditional store overlapping another operation is folded into the effect the two
    /// have in order: the later `created_at` wins unless the earlier value has expired, and
    /// after a removal the value is stored.
    #[test]
    fn a_conditional_store_folds_into_the_newest_effect() {
        let at = |ms: u64, payload: &'static str| {
            CacheValue::with_ttl(
                payload.as_bytes(),
                Timestamp::from_unix_millis(ms),
                Duration::from_secs(1),
            )
        };
        let describe = |effect: Effect| match effect {
            Effect::Store(v) => format!("store {:?}", v.payload()),
            Effect::StoreIfNewer(v) => format!("if-newer {:?}", v.payload()),
            Effect::Remove => "remove".to_owned(),
        };
        let now = Timestamp::from_unix_millis(500);
        let later = Timestamp::from_unix_millis(1_500);
        let (old, new) = (at(1, "old"), at(2, "new"));
        let cases = [
            (Effect::Store(new.clone()), now, "store b\"new\""),
            (Effect::Store(new.clone()), later, "store b\"old\""),
            (Effect::Store(at(0, "older")), now, "store b\"old\""),
            (Effect::Remove, now, "store b\"old\""),
            (Effect::StoreIfNewer(new.clone()), now, "if-newer b\"new\""),
            (
                Effect::StoreIfNewer(new.clone()),
                later,
                "if-newer b\"old\"",
            ),
        ];
        for (running, at_time, expected) in cases {
            let folded = running.then_if_newer(old.clone(), at_time);
            assert_eq!(describe(folded), expected, "at {at_time}");
        }
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin_if_newer(&k, new.clone(), now);
        assert_eq!(
            ops.newest(&k).map(describe).as_deref(),
            Some("if-newer b\"new\"")
        );
        ops.begin(&k, Effect::Store(new));
        ops.begin_if_newer(&k, old, now);
        assert_eq!(
            ops.newest(&k).map(describe).as_deref(),
            Some("store b\"new\"")
        );
    }

    fn stored(effect: Option<Effect>) -> Option<&'static str> {
        match effect {
            Some(Effect::Store(v)) if v.payload().as_ref() == b"v1" => Some("v1"),
            Some(Effect::Store(v)) if v.payload().as_ref() == b"v2" => Some("v2"),
            Some(Effect::Store(_) | Effect::StoreIfNewer(_)) => Some("other"),
            Some(Effect::Remove) => Some("remove"),
            None => None,
        }
    }

    #[test]
    fn a_lone_operation_needs_nothing_more_and_leaves_no_entry() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        assert_eq!(ops.in_flight(), 1);
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn overlapping_operations_reapply_the_newest_effect_once_per_tier() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        ops.begin(&k, Effect::Store(value("v2")));
        // v2 lands first on L1, v1 last: the last finisher re-applies v2.
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert_eq!(stored(ops.finish(&k, Layer::L1)), Some("v2"));
        assert!(
            ops.finish(&k, Layer::L1).is_none(),
            "the re-application finished"
        );
        // A delete overtakes both on L2.
        ops.begin(&k, Effect::Remove);
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert_eq!(stored(ops.finish(&k, Layer::L2)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2).is_none());
        // The delete's L1 half runs alone.
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn a_clear_wins_over_writes_still_running() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        assert!(ops.finish(&k, Layer::L1).is_none()); // L1 done; L2 still running
        ops.begin_clear();
        assert_eq!(stored(ops.finish(&k, Layer::L2)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn refills_yield_to_newer_operations() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        let read_at = ops.generation(&k);
        ops.begin(&k, Effect::Remove);
        assert!(
            !ops.begin_refill(&k, value("v1"), read_at),
            "an operation is running"
        );
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert!(
            !ops.begin_refill(&k, value("v1"), read_at),
            "the key changed since the read"
        );
        let read_at = ops.generation(&k);
        assert!(ops.begin_refill(&k, value("v1"), read_at));
        // A set overlapping the refill wins on L1.
        ops.begin(&k, Effect::Store(value("v2")));
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert_eq!(stored(ops.finish(&k, Layer::L1)), Some("v2"));
        assert!(ops.finish(&k, Layer::L1).is_none());
        assert!(ops.finish(&k, Layer::L2).is_none());
        assert_eq!(ops.in_flight(), 0);
    }
}
