//! Read-through behaviours 63-65: writes racing flights (the generation guard): a `set`
//! during a flight wins, a `remove` during a flight keeps the flight's result out of every
//! tier, a refill never overwrites a newer L1 entry; and overlapping remote writes on one key
//! end in the newest state in every tier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    Answer, Calls, Gate, MapLocal, Stack, TokenProbe, assert_stored_in_no_tier,
    cancel_when_unobserved, counting, instant, key, settle, skip_every_read, spawn_remove,
    spawn_set, write_l3_only, write_remote_only,
};
use tierkit_cache::codec::Postcard;
use tierkit_cache::frame::decode_frame;
use tierkit_cache::{
    Cache, CacheError, Compression, EntryMeta, FetchContext, FetchOptions, Hit, LocalEntry,
    LocalTier, Source,
};
use tierkit_core::{Backend, CacheKey, Clock, Op, Timestamp};
use tierkit_testkit::{Fault, FaultyBackend, MemoryBackend};
use tokio::task::JoinHandle;

/// The value a remote tier holds for `name`, decoded.
fn remote_value(tier: &MemoryBackend, name: &str) -> Option<String> {
    let k = key(name);
    tier.peek(&k).map(|stored| {
        decode_frame::<String>(&k, &Postcard, &Compression::default(), stored.payload()).unwrap()
    })
}

/// A loader that answers `value` at once.
fn answers(
    value: &'static str,
) -> impl FnOnce(FetchContext<String>) -> std::future::Ready<Result<String, std::io::Error>>
+ Send
+ 'static {
    instant(&Calls::default(), value)
}

/// Holds the next write to `l2` for a second.
fn hold_next_write(l2: &FaultyBackend<MemoryBackend>) {
    l2.push(Op::Set, Fault::Delay(Duration::from_secs(1)));
}

/// A stack, the cache over it with a fault injector in front of L2, and the injector, which
/// holds the next write for a second.
fn with_a_held_l2_write() -> (Stack<String>, Cache<String>, FaultyBackend<MemoryBackend>) {
    let stack = Stack::<String>::new();
    let (cache, l2) = stack.cache_with_faulty_l2();
    hold_next_write(&l2);
    (stack, cache, l2)
}

/// As [`with_a_held_l2_write`], with a `set` of "v1" on "k" in a task of its own, held on its
/// L2 write.
async fn with_a_held_set_of_v1() -> (
    Stack<String>,
    Cache<String>,
    FaultyBackend<MemoryBackend>,
    JoinHandle<Result<(), CacheError>>,
) {
    let (stack, cache, l2) = with_a_held_l2_write();
    let held = spawn_set(&cache, "k", "v1".to_owned());
    settle().await;
    (stack, cache, l2, held)
}

/// Asserts that L1, L2 and L3 each hold `value` for "k".
fn assert_every_tier_holds(stack: &Stack<String>, value: &str) {
    assert_eq!(stack.l1_value("k").as_deref(), Some(value));
    assert_eq!(remote_value(&stack.l2, "k").as_deref(), Some(value));
    assert_eq!(remote_value(&stack.l3, "k").as_deref(), Some(value));
}

/// A stack, the cache over it, a probe for the flight's loader and the gate it waits on.
fn setup() -> (Stack<String>, Cache<String>, TokenProbe, Gate) {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    (stack, cache, TokenProbe::default(), Gate::closed())
}

/// Starts a flight on "k" whose loader (`loader`'s) waits for `gate` and answers "loaded",
/// then a joiner of it (whose own loader never runs), each in a task of its own; returns both
/// once they wait on the flight.
async fn start_and_join(
    cache: &Cache<String>,
    options: FetchOptions,
    loader: &TokenProbe,
    gate: &Gate,
) -> (JoinHandle<Answer<String>>, JoinHandle<Answer<String>>) {
    let starter = tokio::spawn({
        let (cache, loader) = (cache.clone(), loader.loader(gate.opened(), "loaded"));
        async move { cache.get_or_fetch_with("k", &options, loader).await }
    });
    settle().await;
    let joiner = tokio::spawn({
        let (cache, loader) = (cache.clone(), answers("joiner"));
        async move { cache.get_or_fetch_with("k", &options, loader).await }
    });
    settle().await;
    (starter, joiner)
}

/// Awaits the starter and the joiner of [`start_and_join`]: their hits.
async fn both_hits(
    (starter, joiner): (JoinHandle<Answer<String>>, JoinHandle<Answer<String>>),
) -> (Hit<String>, Hit<String>) {
    (
        starter.await.unwrap().unwrap(),
        joiner.await.unwrap().unwrap(),
    )
}

/// Behaviour 63: a `set(key, v2)` during a loader flight wins: the flight's waiters (its
/// starter and a joiner) get v2 with `Source::Set`; the loader, which keeps running under the
/// default `Continue` policy (its token does not fire), has its result discarded: L1, L2 and
/// L3 hold v2 afterwards and the discard is counted as superseded.
#[tokio::test(start_paused = true)]
async fn b63_a_set_during_a_flight_wins() {
    let (stack, cache, loader, gate) = setup();

    let waiters = start_and_join(&cache, FetchOptions::new(), &loader, &gate).await;
    assert_eq!(loader.calls.get(), 1);
    assert_eq!(cache.flights_in_progress(), 1);

    cache.set("k", "v2".to_owned()).await.unwrap();
    let (a, b) = both_hits(waiters).await;
    assert_eq!((a.source(), a.as_str()), (Source::Set, "v2"));
    assert_eq!((b.source(), b.as_str()), (Source::Set, "v2"));
    assert!(!a.is_coalesced() && b.is_coalesced());
    assert_eq!(a.flight_id(), b.flight_id());
    assert!(Arc::ptr_eq(a.value(), b.value()));
    assert_eq!(
        cache.flights_in_progress(),
        0,
        "the superseded flight no longer holds the key"
    );
    assert!(
        !loader.cancelled(),
        "under Continue the loader keeps running"
    );

    // The loader answers late: its value goes nowhere.
    gate.open();
    settle().await;
    assert!(loader.dropped(), "the loader ran to its end");
    assert_eq!(cache.stats().superseded, 1);
    assert_every_tier_holds(&stack, "v2");
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (1, 1),
        "only the set's writes"
    );
    assert_eq!(
        EntryMeta::of(&stack.l2.peek(&key("k")).unwrap()),
        a.meta(),
        "L2 holds the set's entry"
    );
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v2"));
    assert_eq!(loader.calls.get(), 1);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 63 with `AbandonPolicy::CancelWhenUnobserved`: the `set` also cancels the
/// flight: the loader's token fires and its future is dropped; the waiters still get v2 and
/// every tier holds v2.
#[tokio::test(start_paused = true)]
async fn b63_a_set_cancels_the_loader_under_cancel_when_unobserved() {
    let (stack, cache, loader, gate) = setup();

    let waiters = start_and_join(&cache, cancel_when_unobserved(), &loader, &gate).await;

    cache.set("k", "v2".to_owned()).await.unwrap();
    let (a, b) = both_hits(waiters).await;
    assert_eq!((a.source(), a.as_str()), (Source::Set, "v2"));
    assert_eq!((b.source(), b.as_str()), (Source::Set, "v2"));
    settle().await;
    assert!(loader.cancelled(), "the set fired the loader's token");
    assert!(loader.dropped(), "the loader's future was dropped");
    assert_eq!(cache.flights_in_progress(), 0);
    assert_every_tier_holds(&stack, "v2");
    assert_eq!(loader.calls.get(), 1);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 64: a `remove` during a flight: the loader's result still reaches the flight's
/// current waiters, but is stored in no tier; the next call loads again.
#[tokio::test(start_paused = true)]
async fn b64_a_remove_during_a_flight_keeps_its_result_out_of_every_tier() {
    let (stack, cache, loader, gate) = setup();

    let (starter, joiner) = start_and_join(&cache, FetchOptions::new(), &loader, &gate).await;

    cache.remove("k").await.unwrap();
    assert_eq!(
        cache.flights_in_progress(),
        0,
        "the flight no longer holds the key"
    );
    assert!(
        !starter.is_finished() && !joiner.is_finished(),
        "the waiters keep waiting"
    );
    gate.open();
    let (a, b) = both_hits((starter, joiner)).await;
    assert_eq!((a.source(), a.as_str()), (Source::Loader, "loaded"));
    assert_eq!((b.source(), b.as_str()), (Source::Loader, "loaded"));
    assert!(Arc::ptr_eq(a.value(), b.value()));
    settle().await;

    assert_eq!(cache.stats().superseded, 1);
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(cache.keys_in_progress(), 0);

    let next = TokenProbe::default();
    let hit = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new(),
            next.loader(gate.opened(), "reloaded"),
        )
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "reloaded"));
    assert_eq!(next.calls.get(), 1, "the next call loads again");
}

/// Behaviour 65: a refill never overwrites a newer L1 entry. L2 holds an older entry, L1 a
/// newer fresh one; a call with `skip_l1_read` makes the flight read L2, and L1 keeps the
/// newer entry. Control: when L1's entry is the older one, the refill replaces it.
#[tokio::test(start_paused = true)]
async fn b65_a_refill_never_overwrites_a_newer_l1_entry() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    // A read skipping L1, so that its flight reads L2.
    let read_past_l1 = async || {
        let skip_l1 = FetchOptions::new().skip_l1_read(true);
        cache
            .get_or_fetch_with("k", &skip_l1, instant(&calls, "loader"))
            .await
            .unwrap()
    };

    // L2 and L3: "old" at t0. L1: "new" at t0 + 1 s.
    cache.set("k", "old".to_owned()).await.unwrap();
    stack.clock.advance(Duration::from_secs(1));
    let l1_writer = stack.builder_over(true, false, false).build();
    l1_writer.set("k", "new".to_owned()).await.unwrap();
    let newer = stack.l1.peek(&key("k")).unwrap().meta();
    let inserts = stack.l1.inserts();

    let hit = read_past_l1().await;
    assert_eq!(
        (hit.source(), hit.as_str()),
        (Source::L2, "old"),
        "the flight read L2"
    );
    assert!(hit.meta().created_at() < newer.created_at());
    assert_eq!(
        stack.l1.inserts(),
        inserts,
        "the older L2 entry was not written to L1"
    );
    assert_eq!(stack.l1_value("k").as_deref(), Some("new"));
    assert_eq!(stack.l1.peek(&key("k")).unwrap().meta(), newer);
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "new"));

    // Control: L2 and L3 get a newer entry than L1's; the refill replaces L1's.
    stack.clock.advance(Duration::from_secs(1));
    let remote_writer = stack.builder_over(false, true, true).build();
    remote_writer.set("k", "newest".to_owned()).await.unwrap();
    assert_eq!(stack.l1_value("k").as_deref(), Some("new"));
    let hit = read_past_l1().await;
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "newest"));
    assert_eq!(stack.l1_value("k").as_deref(), Some("newest"));
    assert_eq!(stack.l1.peek(&key("k")).unwrap().meta(), hit.meta());
    assert_eq!(calls.get(), 0);
}

/// An L3 hit refills L2 in the background, as a copy between tiers: it never replaces a newer
/// entry that another node wrote to L2 while this node's flight was reading L3.
#[tokio::test(start_paused = true)]
async fn an_l3_refill_never_replaces_a_newer_l2_entry_another_node_wrote() {
    let stack = Stack::<String>::new();
    // This node reads L3 through a script, to hold the read; the other node writes the shared
    // L2 and L3 directly.
    let (l3, mut l3_calls) = tierkit_testkit::scripted("l3");
    let cache = stack.builder().l2(stack.l2.clone()).l3(l3).build();
    let other = stack.other_node::<String>();
    let other_cache = other.cache();

    // L3 holds v1; L2 does not hold the key.
    other_cache
        .set_with("k", "v1".to_owned(), &write_l3_only())
        .await
        .unwrap();
    let v1 = stack.l3.peek(&key("k")).unwrap();
    assert_eq!(stack.l2.peek(&key("k")), None);

    // This node's read misses L1 and L2, and waits on L3.
    let read = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get("k").await }
    });
    let l3_read = l3_calls.next_call().await;
    assert_eq!(l3_read.op(), Op::Get);

    // The other node writes v2 (newer) to L2 and L3.
    stack.clock.advance(Duration::from_secs(1));
    other_cache.set("k", "v2".to_owned()).await.unwrap();
    let v2 = stack.l2.peek(&key("k")).unwrap();
    assert!(v2.created_at() > v1.created_at());
    let l2_sets = stack.l2.calls().set;

    // L3 answers the older v1: served to this read, and refilled into L2 only conditionally.
    l3_read.respond_hit(v1);
    let hit = read.await.unwrap().unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "v1"));
    settle().await;
    assert_eq!(
        stack.l2.calls().set,
        l2_sets + 1,
        "one refill write reached L2"
    );
    assert_eq!(
        stack.l2.peek(&key("k")),
        Some(v2),
        "the refill replaced another node's newer L2 entry"
    );
    assert_eq!(remote_value(&stack.l2, "k").as_deref(), Some("v2"));
    assert_eq!(l3_calls.waiting(), 0, "an L3 hit writes nothing to L3");
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 65: L1 holds a newer entry that is stale but not expired; a read misses it, the
/// flight finds an older but fresh entry in L2, and L1 is not overwritten with the older
/// entry (L1 is written only when its entry's `created_at` <= the refilled entry's).
#[tokio::test(start_paused = true)]
async fn b65_a_refill_does_not_overwrite_a_newer_stale_l1_entry() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let t0 = stack.clock.now();
    // L2 and L3: "old", written at t0, fresh for the default 5 minutes.
    cache
        .set_with("k", "old".to_owned(), &write_remote_only())
        .await
        .unwrap();
    // L1: "new", written at t0 + 1 s, stale at t0 + 2 s, expiring at t0 + 1 h.
    let newer = EntryMeta::new(
        t0.saturating_add(Duration::from_secs(1)),
        t0.saturating_add(Duration::from_secs(2)),
        t0.saturating_add(Duration::from_secs(3600)),
    );
    stack.l1.insert(
        &key("k"),
        LocalEntry::new(Arc::new("new".to_owned()), newer),
    );
    stack.clock.advance(Duration::from_secs(3));

    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "old"));
    let entry = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(
        (entry.value().unwrap().as_str(), entry.meta()),
        ("new", newer)
    );
}

/// Behaviours 63-65 (remote side): several `set`s queued on one key while its L2 write is
/// held end with the last set's value in every tier; the queued writes are coalesced (L2
/// sees the held write and then the newest one only), and every `set` returns `Ok`.
#[tokio::test(start_paused = true)]
async fn b63_overlapping_sets_end_with_the_last_value_in_every_tier() {
    let (stack, cache, l2) = with_a_held_l2_write();

    let mut sets = Vec::new();
    for value in ["v1", "v2", "v3", "v4"] {
        sets.push(spawn_set(&cache, "k", value.to_owned()));
        settle().await;
    }
    assert_eq!(
        l2.calls().set,
        1,
        "the first write is held; the others queue"
    );
    for set in sets {
        set.await.unwrap().unwrap();
    }
    settle().await;
    assert_every_tier_holds(&stack, "v4");
    assert_eq!(l2.calls().set, 2, "v1, then only the newest queued write");
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Overlapping writes of every kind on one key (a held `set`, a `remove`, a flight's
/// write-back, another `set`) end with the newest state, the last `set`, in every tier.
#[tokio::test(start_paused = true)]
async fn b63_overlapping_set_remove_and_write_back_end_with_the_newest_state() {
    let (stack, cache, l2, first) = with_a_held_set_of_v1().await;
    let removed = spawn_remove(&cache, "k");
    settle().await;
    // L1 and L3 are empty, and the held v1 has not reached L2: the flight loads.
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), answers("loaded"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "loaded"));
    let last = spawn_set(&cache, "k", "v3".to_owned());
    settle().await;
    first.await.unwrap().unwrap();
    removed.await.unwrap().unwrap();
    last.await.unwrap().unwrap();
    settle().await;

    assert_every_tier_holds(&stack, "v3");
    assert_eq!(cache.keys_in_progress(), 0);

    // And when the newest state is a removal, every tier ends empty.
    hold_next_write(&l2);
    let held = spawn_set(&cache, "k", "v4".to_owned());
    settle().await;
    let queued = spawn_set(&cache, "k", "v5".to_owned());
    settle().await;
    cache.remove("k").await.unwrap();
    held.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Overlapping writes where the newest is a flight's write-back: a held `set` of v1, then a
/// flight that skips every read and loads: every tier ends with the loaded value.
#[tokio::test(start_paused = true)]
async fn b63_a_later_write_back_wins_over_a_held_set() {
    let (stack, cache, _l2, held) = with_a_held_set_of_v1().await;
    stack.clock.advance(Duration::from_secs(1));
    let hit = cache
        .get_or_fetch_with("k", &skip_every_read(), answers("loaded"))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    held.await.unwrap().unwrap();
    settle().await;
    assert_every_tier_holds(&stack, "loaded");
    assert_eq!(
        EntryMeta::of(&stack.l2.get(&key("k")).await.unwrap().unwrap()),
        hit.meta()
    );
}

/// An L1 over a [`MapLocal`] that runs a hook once, on the first read after it is armed, after
/// reading: to put another thread's operation between that read and what the reader does next.
struct HookedLocal {
    inner: Arc<MapLocal<String>>,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for HookedLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedLocal").finish_non_exhaustive()
    }
}

impl LocalTier<String> for HookedLocal {
    fn label(&self) -> &str {
        "hooked"
    }

    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<String>> {
        let entry = self.inner.get(key, now);
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        entry
    }

    fn may_contain(&self, key: &CacheKey) -> bool {
        self.inner.may_contain(key)
    }

    fn insert(&self, key: &CacheKey, entry: LocalEntry<String>) {
        self.inner.insert(key, entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.inner.remove(key);
    }

    fn clear(&self) {
        self.inner.clear();
    }
}

/// A background refresh that ends without a new value (no loader and nothing newer in the
/// tiers; or its loader failed) backs off the L1 entry it refreshed. A `remove` of the key that
/// runs to its end, on another thread, right after the refresh read that entry: once the remove
/// returned, nothing puts the removed value back into L1 (nor into any other tier).
#[tokio::test(start_paused = true)]
async fn a_refresh_backing_off_never_puts_back_a_value_removed_meanwhile() {
    for with_loader in [false, true] {
        let stack = Stack::<String>::new();
        let l1 = Arc::new(HookedLocal {
            inner: Arc::clone(&stack.l1),
            hook: Mutex::new(None),
        });
        let cache = Cache::builder(Arc::clone(&l1), stack.codec.clone())
            .clock(Clock::from(stack.clock.clone()))
            .defaults(
                FetchOptions::new()
                    .jitter_max(Duration::ZERO)
                    .ttl(Duration::from_secs(100))
                    .eager_refresh(0.5),
            )
            .l2(stack.l2.clone())
            .l3(stack.l3.clone())
            .build();
        let calls = Calls::default();
        cache
            .get_or_fetch("k", counting(&calls, "v1".to_owned()))
            .await
            .unwrap();
        settle().await;
        stack.clock.advance(Duration::from_secs(60));

        // A read in the eager window starts a refresh, queued on this runtime.
        let hit = if with_loader {
            cache
                .get_or_fetch("k", || async {
                    Err::<String, _>(std::io::Error::other("origin down"))
                })
                .await
                .unwrap()
        } else {
            cache.get("k").await.unwrap().unwrap()
        };
        assert!(hit.refresh_started(), "with a loader: {with_loader}");
        // The refresh's next L1 read: then a remove, to its end, on a runtime of its own.
        let removed = Arc::new(AtomicBool::new(false));
        *l1.hook.lock().unwrap() = Some(Box::new({
            let (cache, removed) = (cache.clone(), Arc::clone(&removed));
            move || {
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    runtime.block_on(cache.remove("k")).unwrap();
                    removed.store(true, Ordering::SeqCst);
                })
                .join()
                .unwrap();
            }
        }));
        settle().await;
        assert!(removed.load(Ordering::SeqCst), "the remove ran");

        assert_eq!(
            stack.l1_value("k"),
            None,
            "the removed value is back in L1 (with a loader: {with_loader})"
        );
        assert_stored_in_no_tier(&stack, "k");
        assert!(cache.get("k").await.unwrap().is_none());
        assert_eq!(cache.keys_in_progress(), 0);
    }
}
