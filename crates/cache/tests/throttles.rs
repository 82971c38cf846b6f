//! Fail-safe throttles outlive L1 evictions: with an L1 much smaller than the key space, a
//! failing origin sees at most one call per key per throttle window, whatever L1 evicts, and
//! the table that remembers the throttles is bounded without reopening the origin to a key
//! within its window.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Calls, Stack};
use tierkit_cache::{
    Cache, CacheBuilder, FailSafeCause, FetchOptions, HitFreshness, LocalEntry, LocalTier, Source,
    StaleCause, codec::Postcard,
};
use tierkit_core::{CacheKey, Clock, Timestamp};

/// The entries of a [`SmallLocal`], and its keys in the order they were inserted.
type Entries = (HashMap<CacheKey, LocalEntry<String>>, VecDeque<CacheKey>);

/// An L1 of at most `capacity` keys that evicts the key inserted first.
#[derive(Debug)]
struct SmallLocal {
    capacity: usize,
    map: Mutex<Entries>,
}

impl SmallLocal {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(SmallLocal {
            capacity,
            map: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap().0.len()
    }
}

impl LocalTier<String> for SmallLocal {
    fn label(&self) -> &str {
        "small"
    }

    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<String>> {
        let map = self.map.lock().unwrap();
        map.0
            .get(key)
            .filter(|e| !e.meta().is_expired(now))
            .cloned()
    }

    fn may_contain(&self, key: &CacheKey) -> bool {
        self.map.lock().unwrap().0.contains_key(key)
    }

    fn insert(&self, key: &CacheKey, entry: LocalEntry<String>) {
        let mut map = self.map.lock().unwrap();
        let (entries, order) = &mut *map;
        if entries.insert(key.clone(), entry).is_none() {
            order.push_back(key.clone());
        }
        while entries.len() > self.capacity {
            let Some(first) = order.pop_front() else {
                break;
            };
            entries.remove(&first);
        }
    }

    fn remove(&self, key: &CacheKey) {
        let mut map = self.map.lock().unwrap();
        map.0.remove(key);
        map.1.retain(|k| k != key);
    }

    fn clear(&self) {
        let mut map = self.map.lock().unwrap();
        map.0.clear();
        map.1.clear();
    }
}

const KEYS: usize = 20;
const TTL: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(30);

fn name(i: usize) -> String {
    format!("k{i}")
}

/// A cache over an L1 of 4 keys and the stack's L2, with fail-safe on.
fn small_cache(stack: &Stack<String>, l1: &Arc<SmallLocal>) -> CacheBuilder<String> {
    Cache::builder(Arc::clone(l1), Postcard)
        .clock(Clock::from(stack.clock.clone()))
        .l2(stack.l2.clone())
        .defaults(
            FetchOptions::new()
                .jitter_max(Duration::ZERO)
                .ttl(TTL)
                .fail_safe(true)
                .fail_safe_throttle(WINDOW),
        )
}

/// Loads every key once (values in L2), then lets them all go stale.
async fn prime_then_go_stale(cache: &Cache<String>, stack: &Stack<String>) {
    for i in 0..KEYS {
        let value = name(i);
        cache
            .get_or_fetch(
                &name(i),
                move || async move { Ok::<_, std::io::Error>(value) },
            )
            .await
            .unwrap();
    }
    support::settle().await;
    assert_eq!(stack.l2.len(), KEYS);
    stack.clock.advance(TTL + Duration::from_secs(1));
}

/// Reads every key `passes` times, round robin, with a loader that fails and counts its calls;
/// every read answers the key's stale value.
async fn read_all(cache: &Cache<String>, origin: &Calls, passes: usize) {
    for _ in 0..passes {
        for i in 0..KEYS {
            let calls = origin.clone();
            let hit = cache
                .get_or_fetch(&name(i), move || async move {
                    calls.bump();
                    Err::<String, _>(std::io::Error::other("origin down"))
                })
                .await
                .unwrap();
            assert_eq!(hit.as_str(), name(i));
            assert!(matches!(
                hit.freshness(),
                HitFreshness::Stale(StaleCause::FailSafe { .. })
            ));
        }
    }
}

/// The demo's failure: 20 keys read round robin through an L1 of 4, the origin failing. Each
/// key's throttle must survive its eviction from L1: one origin call per key per window.
#[tokio::test(start_paused = true)]
async fn a_failing_origin_sees_one_call_per_key_per_window_whatever_l1_evicts() {
    let stack = Stack::<String>::new();
    let l1 = SmallLocal::new(4);
    let cache = small_cache(&stack, &l1).build();
    prime_then_go_stale(&cache, &stack).await;
    let origin = Calls::default();

    read_all(&cache, &origin, 3).await;
    assert_eq!(origin.get(), KEYS, "one call per key in the first window");
    assert_eq!(l1.len(), 4);
    stack.clock.advance(WINDOW - Duration::from_secs(1));
    read_all(&cache, &origin, 2).await;
    assert_eq!(origin.get(), KEYS, "still inside the window");

    stack.clock.advance(Duration::from_secs(1));
    read_all(&cache, &origin, 3).await;
    assert_eq!(
        origin.get(),
        2 * KEYS,
        "one more call per key in the next window"
    );
    let stats = cache.stats();
    assert_eq!(
        stats.loader_calls,
        (3 * KEYS) as u64,
        "the priming loads, then the origin calls"
    );
    assert_eq!(stats.fail_safe_activations[0], (2 * KEYS) as u64);
    assert_eq!(stats.throttled_serves, (6 * KEYS) as u64);
}

/// The table of throttles is bounded: with room for 4 keys (or none) and 20 keys failing at
/// once, the throttle it evicts holds through its floor, which also throttles every stale value
/// written no later (here all of them: they were loaded together). So the origin sees at most
/// one call per key per window: exactly the keys recorded until the table overflowed.
#[tokio::test(start_paused = true)]
async fn a_full_table_of_throttles_never_reopens_the_origin_within_a_window() {
    for capacity in [4, 0] {
        let stack = Stack::<String>::new();
        let l1 = SmallLocal::new(4);
        let cache = small_cache(&stack, &l1)
            .fail_safe_throttles(capacity)
            .build();
        prime_then_go_stale(&cache, &stack).await;
        let origin = Calls::default();

        read_all(&cache, &origin, 3).await;
        let first = capacity + 1;
        assert_eq!(
            origin.get(),
            first,
            "capacity {capacity}: until the table overflowed"
        );
        stack.clock.advance(WINDOW - Duration::from_secs(1));
        read_all(&cache, &origin, 1).await;
        assert_eq!(
            origin.get(),
            first,
            "capacity {capacity}: inside the window"
        );
        stack.clock.advance(Duration::from_secs(1));
        read_all(&cache, &origin, 2).await;
        assert_eq!(
            origin.get(),
            2 * first,
            "capacity {capacity}: the next window"
        );
        let stats = cache.stats();
        assert_eq!(stats.fail_safe_activations[0], (2 * first) as u64);
        assert_eq!(
            stats.throttled_serves,
            (6 * KEYS - 2 * first) as u64,
            "every other read was a throttled serve"
        );
    }
}

/// A throttle serves only the stale value it was set for: a value written after it (a `set`)
/// that goes stale calls the loader again, even within the window.
#[tokio::test(start_paused = true)]
async fn a_throttle_never_holds_back_a_newer_value() {
    let stack = Stack::<String>::new();
    let l1 = SmallLocal::new(4);
    let cache = small_cache(&stack, &l1)
        .defaults(FetchOptions::new().fail_safe_throttle(10 * TTL))
        .build();
    prime_then_go_stale(&cache, &stack).await;
    let origin = Calls::default();
    read_all(&cache, &origin, 1).await;
    assert_eq!(origin.get(), KEYS);

    cache.set("k0", "newer".to_owned()).await.unwrap();
    stack.clock.advance(TTL + Duration::from_secs(1));
    l1.clear();
    let calls = origin.clone();
    let hit = cache
        .get_or_fetch("k0", move || async move {
            calls.bump();
            Err::<String, _>(std::io::Error::other("origin down"))
        })
        .await
        .unwrap();
    assert_eq!((hit.as_str(), hit.source()), ("newer", Source::L2));
    assert_eq!(
        hit.freshness(),
        HitFreshness::Stale(StaleCause::FailSafe {
            cause: FailSafeCause::LoaderError,
            throttled: false,
        })
    );
    assert_eq!(origin.get(), KEYS + 1, "the newer value's own failure");
}
