//! Bookkeeping that keeps overlapping operations on one key from leaving an older value in a
//! tier.
//!
//! Two operations on one key can overlap: two `set`s whose writes land in opposite orders in a
//! tier, a race write's slower half finishing on the offload after a `delete`, a refill landing
//! after a `delete`. A tier then holds whatever landed last, which need not be the newest
//! operation's effect. The composition prevents that with two structures:
//!
//! * **Operations per key** ([`KeyOps::begin`], [`KeyOps::dispatch`], [`KeyOps::finish`]).
//!   While operations on a key run, the key has an entry recording the newest operation's
//!   effect (a value to store, or a removal) and, per tier, how many operations are registered
//!   and how many calls are in flight at the tier. Each operation's call to a tier applies the
//!   effect that is newest when the call is made (a slower half that starts after a newer
//!   operation began writes that operation's effect, never an older one). When calls were in
//!   flight together (they may land in any order), the last one to finish applies the newest
//!   effect once more, so the tier ends in the newest state. A `set` or `delete` returns only
//!   once no call on the key is in flight at the tier any more ([`KeyOps::settled`]): a write
//!   of an older value still in flight when it finished has then landed and been overwritten.
//!   A conditional store ([`KeyOps::begin_if_newer`]) does not simply become the newest
//!   effect: it is folded into the running operations' effect, as the two would end in
//!   order. Without overlap, nothing extra happens. Entries exist only while operations run,
//!   so memory follows concurrency, not the key space.
//! * **Generations** ([`KeyOps::generation`]): striped counters that every `set`, `delete` and
//!   `clear` advances when it begins and again when it ends. A refill (a copy of an L2 value
//!   into L1) is skipped when the key's generation moved since the read began, or while
//!   operations on the key (or a `clear`) still run, because the value read may predate them.
//!   Advancing at the end too matters for a read that begins while a removal runs: its L2
//!   answer may have been read before the removal landed and arrive after it returned; the
//!   end of the removal moves the generation, so that answer is served (the read overlapped the
//!   removal) but never copied into L1.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tierkit_core::{CacheKey, CacheValue, Timestamp};
use tokio::sync::oneshot;

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
    /// Operations that will call the tier or are calling it.
    registered: u32,
    /// Calls made to the tier and not answered yet.
    in_flight: u32,
    /// Calls were in flight together: the tier may hold the effect of whichever landed last.
    overlapped: bool,
    /// Operations waiting for the tier to settle ([`KeyOps::settled`]): dropped, which wakes
    /// them, when no call is in flight any more.
    settled: Vec<oneshot::Sender<()>>,
}

impl TierState {
    fn registered(registered: u32) -> Self {
        TierState {
            registered,
            ..TierState::default()
        }
    }
}

#[derive(Debug)]
struct KeyState {
    newest: Effect,
    tiers: [TierState; 2],
}

impl KeyState {
    fn idle(&self) -> bool {
        self.tiers.iter().all(|tier| tier.registered == 0)
    }
}

/// Per-key bookkeeping of a composition (see the module docs).
pub(crate) struct KeyOps {
    shards: Box<[Mutex<HashMap<CacheKey, KeyState>>]>,
    generations: Box<[AtomicU64]>,
    /// `clear`s running: no refill starts while one runs.
    clearing: AtomicUsize,
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
            clearing: AtomicUsize::new(0),
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
        self.counter(key).fetch_add(1, Ordering::SeqCst);
        match shard.entry(key.clone()) {
            Entry::Occupied(mut entry) => {
                let state = entry.get_mut();
                state.newest = newest(Some(std::mem::replace(&mut state.newest, Effect::Remove)));
                for tier in &mut state.tiers {
                    // A call in flight may land after this operation's own.
                    tier.overlapped |= tier.in_flight > 0;
                    tier.registered += 1;
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(KeyState {
                    newest: newest(None),
                    tiers: [TierState::registered(1), TierState::registered(1)],
                });
            }
        }
    }

    /// Starts a refill of L1 with `value`, read when the key's generation was `generation`.
    /// Returns false (and starts nothing) when the key changed since, has operations running,
    /// or a `clear` is running: the value read may then be older than the key's newest state.
    pub(crate) fn begin_refill(&self, key: &CacheKey, value: CacheValue, generation: u64) -> bool {
        let mut shard = self.shard(key);
        // `clearing` before the generation: a clear that ends advances every generation
        // before it stops counting as running (see `finish_clear`), so one of the two checks
        // sees it.
        if self.clearing.load(Ordering::SeqCst) > 0 || self.generation(key) != generation {
            return false;
        }
        match shard.entry(key.clone()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(KeyState {
                    newest: Effect::StoreIfNewer(value),
                    tiers: [TierState::registered(1), TierState::default()],
                });
                true
            }
        }
    }

    /// The newest effect on `key` while operations on it run (`None` when none runs).
    #[cfg(test)]
    fn newest(&self, key: &CacheKey) -> Option<Effect> {
        self.shard(key).get(key).map(|state| state.newest.clone())
    }

    /// Records that an operation is about to call `layer`, and returns the effect the call
    /// must apply: the newest on the key now (`None` if the operation was never begun). Made
    /// under the key's lock, so an operation that begins later sees this call in flight.
    pub(crate) fn dispatch(&self, key: &CacheKey, layer: Layer) -> Option<Effect> {
        let mut shard = self.shard(key);
        let state = shard.get_mut(key)?;
        state.tiers[index(layer)].in_flight += 1;
        Some(state.newest.clone())
    }

    /// Records that an operation on `layer` finished (`dispatched`: after its call, which it
    /// made through [`KeyOps::dispatch`]). Returns the effect to apply to that tier once more
    /// when this was the last call in flight after calls overlapped; the caller applies it
    /// and calls `finish` again with `dispatched` (the call counts as in flight meanwhile).
    pub(crate) fn finish(&self, key: &CacheKey, layer: Layer, dispatched: bool) -> Option<Effect> {
        let mut shard = self.shard(key);
        let Entry::Occupied(mut entry) = shard.entry(key.clone()) else {
            return None;
        };
        let state = entry.get_mut();
        let tier = &mut state.tiers[index(layer)];
        tier.registered = tier.registered.saturating_sub(1);
        if dispatched {
            tier.in_flight = tier.in_flight.saturating_sub(1);
        }
        if tier.in_flight == 0 && tier.overlapped {
            tier.overlapped = false;
            tier.registered += 1;
            tier.in_flight = 1;
            return Some(state.newest.clone());
        }
        if tier.in_flight == 0 {
            tier.settled.clear();
        }
        if state.idle() {
            entry.remove();
            // The operations on the key ended: a read that began while they ran must not
            // refill what it read (see the module docs).
            self.counter(key).fetch_add(1, Ordering::SeqCst);
        }
        None
    }

    /// Whether operations on `key` still use `layer` (registered and not finished).
    pub(crate) fn registered(&self, key: &CacheKey, layer: Layer) -> bool {
        self.shard(key)
            .get(key)
            .is_some_and(|state| state.tiers[index(layer)].registered > 0)
    }

    /// A receiver that completes when no call on `key` is in flight at `layer` any more (the
    /// last one applied the newest effect again if calls overlapped), or `None` when none is.
    pub(crate) fn settled(&self, key: &CacheKey, layer: Layer) -> Option<oneshot::Receiver<()>> {
        let mut shard = self.shard(key);
        let tier = &mut shard.get_mut(key)?.tiers[index(layer)];
        if tier.in_flight == 0 {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        tier.settled.push(sender);
        Some(receiver)
    }

    /// Starts a `clear`: a new generation of every key, and every key with operations still
    /// running (a race write's slower half, say) gets a removal as its newest effect: a call
    /// not made yet applies it, and calls in flight are followed by it once they finish, so
    /// that they cannot bring a key back after the clear.
    ///
    /// Every `begin_clear` must be followed by one [`KeyOps::finish_clear`] (see
    /// [`ClearGuard`]).
    pub(crate) fn begin_clear(&self) -> ClearGuard<'_> {
        self.clearing.fetch_add(1, Ordering::SeqCst);
        for counter in &*self.generations {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let mut settled = Vec::new();
        for shard in &*self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for state in shard.values_mut() {
                state.newest = Effect::Remove;
                for tier in &mut state.tiers {
                    if tier.in_flight > 0 {
                        tier.overlapped = true;
                        let (sender, receiver) = oneshot::channel();
                        tier.settled.push(sender);
                        settled.push(receiver);
                    }
                }
            }
        }
        ClearGuard { ops: self, settled }
    }

    /// Ends a `clear`: a new generation of every key (a read that began during the clear does
    /// not refill what it read), then refills may start again.
    fn finish_clear(&self) {
        for counter in &*self.generations {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        self.clearing.fetch_sub(1, Ordering::SeqCst);
    }

    /// Keys with operations running.
    pub(crate) fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map(|map| map.len()).unwrap_or(0))
            .sum()
    }
}

/// A running `clear`: ends it when dropped, however the clear's future ends (finished,
/// failed, or dropped by its caller).
#[must_use = "the clear ends when the guard is dropped"]
pub(crate) struct ClearGuard<'a> {
    ops: &'a KeyOps,
    /// One receiver per key and tier with calls in flight when the clear began.
    settled: Vec<oneshot::Receiver<()>>,
}

impl ClearGuard<'_> {
    /// Waits until every operation that ran when the clear began has finished (and the
    /// removal the clear made their newest effect has been applied again after them).
    pub(crate) async fn settled(&mut self) {
        for receiver in self.settled.drain(..) {
            // A dropped sender is the signal.
            let _ = receiver.await;
        }
    }
}

impl Drop for ClearGuard<'_> {
    fn drop(&mut self) {
        self.ops.finish_clear();
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
            Some(Effect::Store(v) | Effect::StoreIfNewer(v)) if v.payload().as_ref() == b"v1" => {
                Some("v1")
            }
            Some(Effect::Store(v) | Effect::StoreIfNewer(v)) if v.payload().as_ref() == b"v2" => {
                Some("v2")
            }
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
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("v1"));
        assert!(ops.settled(&k, Layer::L1).is_some(), "a call is in flight");
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        assert!(ops.settled(&k, Layer::L1).is_none());
        assert_eq!(stored(ops.dispatch(&k, Layer::L2)), Some("v1"));
        assert!(ops.finish(&k, Layer::L2, true).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn calls_in_flight_together_end_with_the_newest_effect_once_per_tier() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("v1"));
        ops.begin(&k, Effect::Store(value("v2")));
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("v2"));
        // v2 lands first on L1, v1 last: the last call in flight applies v2 again.
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        let waiting = ops.settled(&k, Layer::L1);
        assert!(waiting.is_some(), "v1's call is still in flight");
        assert_eq!(stored(ops.finish(&k, Layer::L1, true)), Some("v2"));
        assert!(
            ops.finish(&k, Layer::L1, true).is_none(),
            "the re-application finished"
        );
        assert!(ops.settled(&k, Layer::L1).is_none());
        // A delete begins while v1's L2 call is in flight; v2's L2 half starts after it and
        // applies the removal, the newest effect.
        assert_eq!(stored(ops.dispatch(&k, Layer::L2)), Some("v2"));
        ops.begin(&k, Effect::Remove);
        assert_eq!(stored(ops.dispatch(&k, Layer::L2)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2, true).is_none());
        assert_eq!(stored(ops.dispatch(&k, Layer::L2)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2, true).is_none());
        assert_eq!(stored(ops.finish(&k, Layer::L2, true)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2, true).is_none());
        // The delete's L1 half runs alone.
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("remove"));
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn an_operation_that_never_called_the_tier_needs_nothing_more() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        ops.begin(&k, Effect::Remove);
        // Neither called L1: no call can land late, nothing to apply again.
        assert!(ops.finish(&k, Layer::L1, false).is_none());
        assert!(ops.finish(&k, Layer::L1, false).is_none());
        assert!(ops.finish(&k, Layer::L2, false).is_none());
        assert!(ops.finish(&k, Layer::L2, false).is_none());
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn a_clear_wins_over_writes_still_running() {
        let ops = KeyOps::new();
        let k = CacheKey::new("k").unwrap();
        ops.begin(&k, Effect::Store(value("v1")));
        ops.dispatch(&k, Layer::L1);
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        ops.dispatch(&k, Layer::L2); // in flight when the clear begins
        let mut clear = ops.begin_clear();
        assert_eq!(clear.settled.len(), 1);
        assert_eq!(stored(ops.finish(&k, Layer::L2, true)), Some("remove"));
        assert!(ops.finish(&k, Layer::L2, true).is_none());
        futures_util::FutureExt::now_or_never(clear.settled()).expect("settled");
        drop(clear);
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
        assert!(ops.finish(&k, Layer::L1, false).is_none());
        assert!(ops.finish(&k, Layer::L2, false).is_none());
        assert!(
            !ops.begin_refill(&k, value("v1"), read_at),
            "the key changed since the read"
        );
        let read_at = ops.generation(&k);
        let clear = ops.begin_clear();
        assert!(
            !ops.begin_refill(&k, value("v1"), read_at),
            "a clear is running"
        );
        drop(clear);
        let read_at = ops.generation(&k);
        assert!(ops.begin_refill(&k, value("v1"), read_at));
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("v1"));
        // A set overlapping the refill's call wins on L1.
        ops.begin(&k, Effect::Store(value("v2")));
        assert_eq!(stored(ops.dispatch(&k, Layer::L1)), Some("v2"));
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        assert_eq!(stored(ops.finish(&k, Layer::L1, true)), Some("v2"));
        assert!(ops.finish(&k, Layer::L1, true).is_none());
        assert!(ops.finish(&k, Layer::L2, false).is_none());
        assert_eq!(ops.in_flight(), 0);
    }
}
