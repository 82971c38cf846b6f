#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests
//! [`MokaLocal`]: the in-process tier of a typed `Cache`, against the `LocalTier` contract
//! (get / insert / remove / clear, never an expired entry, replacement, capacity by weight),
//! and its hot path: a hit is the same `Arc` and allocates nothing, alone and through
//! `Cache::get_or_fetch`. Allocations are counted with the testkit's `CountingAllocator`.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierkit_cache::codec::{Counted, Postcard};
use tierkit_cache::{Cache, EntryMeta, LocalEntry, LocalTier, Source};
use tierkit_core::{CacheKey, Clock, ManualClock, Timestamp};
use tierkit_moka::MokaLocal;
use tierkit_testkit::{CountingAllocator, MemoryBackend, count_allocations};

#[global_allocator]
static A: CountingAllocator = CountingAllocator;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs `measure` in a fresh process of this test binary (running this one test, `name`),
/// unless this already is that process.
///
/// moka runs its maintenance on the reading thread every so often, and that maintenance
/// flushes crossbeam-epoch garbage to a process-wide queue. Once any other thread of the
/// process has used moka (the other tests of this file, on their own threads), that flush
/// allocates a 2 KiB queue node about once per maintenance cycle on every thread that reads,
/// indefinitely (8 allocations per 1,000 hits, measured with moka 0.12.16 and
/// crossbeam-epoch 0.9.21). The zero-allocation tests measure the hit path itself, in a
/// process where nothing else ever used moka.
fn in_fresh_process(name: &str, measure: impl FnOnce()) {
    const CHILD: &str = "TIERKIT_MOKA_LOCAL_MEASURE";
    if std::env::var_os(CHILD).is_some() {
        // The counting allocator is live in this process.
        assert_eq!(count_allocations(|| drop(Vec::<u8>::with_capacity(8))), 1);
        measure();
        println!("measured in process {}", std::process::id());
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the measurement process failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("measured in process"), "{stdout}");
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name).unwrap()
}

/// An entry created at `now`, fresh for `fresh` and expiring `expires` after `now`.
fn entry<V>(value: V, now: Timestamp, fresh: Duration, expires: Duration) -> LocalEntry<V> {
    LocalEntry::new(
        Arc::new(value),
        EntryMeta::new(now, now.saturating_add(fresh), now.saturating_add(expires)),
    )
}

/// A manual clock at the real current time, and a tier on it: moka's own expiry (measured on
/// its monotonic clock from the time left by this clock) is then real minutes away, so moving
/// the manual clock far ahead leaves moka holding entries that have expired by the tier's
/// clock.
fn tier<V: Send + Sync + 'static>() -> (MokaLocal<V>, ManualClock) {
    let clock = ManualClock::starting_now();
    let tier = MokaLocal::builder()
        .max_capacity(1_000)
        .clock(Clock::from(clock.clone()))
        .build();
    (tier, clock)
}

/// get / insert / remove / clear: an inserted entry is returned with its timestamps and the
/// very `Arc` inserted; `remove` removes one key, `clear` every key; a missing key is `None`.
#[test]
fn get_insert_remove_and_clear() {
    let (tier, clock) = tier::<String>();
    let now = clock.now();
    assert_eq!(tier.label(), "moka");
    assert!(tier.get(&key("a"), now).is_none());

    let a = entry("A".to_owned(), now, MINUTE, MINUTE);
    let b = entry("B".to_owned(), now, MINUTE, 2 * MINUTE);
    tier.insert(&key("a"), a.clone());
    tier.insert(&key("b"), b.clone());

    let got = tier.get(&key("a"), now).expect("a is held");
    assert!(Arc::ptr_eq(got.value().unwrap(), a.value().unwrap()));
    assert_eq!(got.meta(), a.meta());
    let got = tier.get(&key("b"), now).expect("b is held");
    assert_eq!(got.value().unwrap().as_str(), "B");
    assert_eq!(got.meta(), b.meta());
    tier.run_pending_tasks();
    assert_eq!(tier.entry_count(), 2);

    tier.remove(&key("a"));
    assert!(tier.get(&key("a"), now).is_none());
    assert!(
        tier.get(&key("b"), now).is_some(),
        "remove touches one key only"
    );
    tier.remove(&key("never-inserted"));

    tier.insert(&key("c"), entry("C".to_owned(), now, MINUTE, MINUTE));
    tier.clear();
    assert!(tier.get(&key("b"), now).is_none());
    assert!(tier.get(&key("c"), now).is_none());
    tier.run_pending_tasks();
    assert_eq!(tier.entry_count(), 0);

    // The tier is usable after clear, and clones share it.
    let clone = tier.clone();
    clone.insert(&key("d"), entry("D".to_owned(), now, MINUTE, MINUTE));
    assert_eq!(
        tier.get(&key("d"), now).unwrap().value().unwrap().as_str(),
        "D"
    );

    let labelled = MokaLocal::<String>::builder().label("users-l1").build();
    assert_eq!(labelled.label(), "users-l1");
}

/// `may_contain` answers from moka's `contains_key`: true for a held key, false for one never
/// inserted or removed.
#[test]
fn may_contain_tells_held_keys_from_absent_ones() {
    let (tier, clock) = tier::<String>();
    let now = clock.now();
    assert!(!tier.may_contain(&key("a")));
    tier.insert(&key("a"), entry("A".to_owned(), now, MINUTE, MINUTE));
    assert!(tier.may_contain(&key("a")));
    assert!(!tier.may_contain(&key("b")));
    tier.remove(&key("a"));
    assert!(!tier.may_contain(&key("a")));
}

/// `get(key, now)` never returns an entry expired at `now` (`now >= expires_at`), even though
/// moka has not evicted it (its own expiry is a real minute away); such a `get` removes the
/// entry from moka. A stale entry (past `stale_at`, before `expires_at`) is still returned.
#[test]
fn get_never_returns_an_entry_expired_at_now_and_removes_it() {
    let (tier, clock) = tier::<u64>();
    let created = clock.now();
    let k = key("expiring");
    let stored = entry(7_u64, created, MINUTE, 2 * MINUTE);
    tier.insert(&k, stored.clone());

    // Stale, not expired: returned as it is.
    let stale = created.saturating_add(MINUTE + Duration::from_secs(1));
    let got = tier
        .get(&k, stale)
        .expect("a stale entry is still returned");
    assert!(Arc::ptr_eq(got.value().unwrap(), stored.value().unwrap()));
    assert!(!got.meta().is_fresh(stale));

    // Expired by the time given (one millisecond before expiry, then exactly at it), while
    // moka, on its own clock, still holds the entry.
    let expires_at = created.saturating_add(2 * MINUTE);
    assert!(
        tier.get(&k, expires_at.saturating_sub(Duration::from_millis(1)))
            .is_some()
    );
    assert!(tier.cache().get(&k).is_some(), "moka has not evicted it");
    assert!(tier.get(&k, expires_at).is_none(), "expired at expires_at");
    assert!(
        tier.cache().get(&k).is_none(),
        "the expired entry was removed from moka"
    );

    // Far ahead of moka: the same, and the entry is gone for an earlier `now` too.
    tier.insert(&k, stored.clone());
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert!(tier.get(&k, clock.now()).is_none());
    assert!(tier.cache().get(&k).is_none());
    assert!(
        tier.get(&k, created).is_none(),
        "removed, not merely hidden from the later `now`"
    );
    tier.run_pending_tasks();
    assert_eq!(tier.entry_count(), 0);
}

/// An entry that has already expired by the tier's clock when it is inserted is never
/// returned (moka is given no time left for it).
#[test]
fn an_entry_inserted_already_expired_is_never_returned() {
    let (tier, clock) = tier::<u64>();
    let past = clock.now().saturating_sub(2 * MINUTE);
    let k = key("born-dead");
    tier.insert(&k, entry(1_u64, past, MINUTE, MINUTE));
    // Even asked with a `now` before its expiry, moka itself expired it on insertion.
    assert!(tier.get(&k, past).is_none());
    assert!(tier.get(&k, clock.now()).is_none());
}

/// An insert replaces the key's entry: the new value (its `Arc`) and timestamps are returned,
/// the key counts once, and the replacement's own expiry applies (a shorter-lived
/// replacement expires at its own `expires_at`; a longer-lived one outlives the old one).
#[test]
fn an_insert_replaces_the_entry() {
    let (tier, clock) = tier::<String>();
    let now = clock.now();
    let k = key("replaced");
    let old = entry("old".to_owned(), now, MINUTE, 10 * MINUTE);
    let new = entry("new".to_owned(), now, MINUTE, MINUTE);
    tier.insert(&k, old.clone());
    tier.insert(&k, new.clone());

    let got = tier.get(&k, now).expect("held");
    assert!(Arc::ptr_eq(got.value().unwrap(), new.value().unwrap()));
    assert!(!Arc::ptr_eq(got.value().unwrap(), old.value().unwrap()));
    assert_eq!(got.meta(), new.meta());
    tier.run_pending_tasks();
    assert_eq!(tier.entry_count(), 1);

    // The replacement's expiry: gone at its own expires_at, although the old entry's is later.
    assert!(tier.get(&k, now.saturating_add(MINUTE)).is_none());

    // A longer-lived replacement outlives the entry it replaced.
    let short = entry("short".to_owned(), now, MINUTE, MINUTE);
    let long = entry("long".to_owned(), now, MINUTE, 10 * MINUTE);
    tier.insert(&k, short);
    tier.insert(&k, long.clone());
    let later = now.saturating_add(5 * MINUTE);
    let got = tier.get(&k, later).expect("the replacement lives on");
    assert!(Arc::ptr_eq(got.value().unwrap(), long.value().unwrap()));
}

/// With a weigher, the capacity is a total weight: once moka has run its pending tasks, the
/// weight held never exceeds it, and an entry heavier than the whole capacity is never kept.
#[test]
fn the_weigher_bounds_the_capacity() {
    let clock = ManualClock::starting_now();
    let weighed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&weighed);
    let tier: MokaLocal<Vec<u8>> = MokaLocal::builder()
        .max_capacity(100)
        .weigher(move |_key: &CacheKey, value: &Vec<u8>| {
            counter.fetch_add(1, Ordering::SeqCst);
            u32::try_from(value.len()).unwrap()
        })
        .clock(Clock::from(clock.clone()))
        .build();
    let now = clock.now();

    for i in 0..20 {
        tier.insert(
            &key(&format!("k{i}")),
            entry(vec![0_u8; 30], now, MINUTE, MINUTE),
        );
        tier.run_pending_tasks();
    }
    tier.run_pending_tasks();
    assert!(weighed.load(Ordering::SeqCst) >= 20, "the weigher was used");
    let weight = tier.cache().weighted_size();
    assert!(weight <= 100, "held weight {weight} > capacity 100");
    assert!(
        tier.entry_count() <= 3,
        "at most three 30-byte entries fit in 100: {}",
        tier.entry_count()
    );
    let held = (0..20)
        .filter(|i| tier.get(&key(&format!("k{i}")), now).is_some())
        .count();
    assert!((1..=3).contains(&held), "{held} entries held");

    // Heavier than the whole capacity: never kept.
    let huge = key("huge");
    tier.insert(&huge, entry(vec![0_u8; 101], now, MINUTE, MINUTE));
    tier.run_pending_tasks();
    assert!(tier.get(&huge, now).is_none());
    assert!(tier.cache().weighted_size() <= 100);
}

/// A hit returns the very `Arc` inserted (`Arc::ptr_eq`: the value is never cloned) and
/// makes zero heap allocations (after a warm-up: moka builds some internal structures lazily
/// on its first reads). A miss allocates nothing either.
#[test]
fn a_hit_is_the_same_arc_and_allocates_nothing() {
    in_fresh_process("a_hit_is_the_same_arc_and_allocates_nothing", measure_hits);
}

fn measure_hits() {
    let (tier, clock) = tier::<Vec<u8>>();
    let now = clock.now();
    let k = key("hot");
    let absent = key("absent");
    let stored = entry(vec![7_u8; 256], now, MINUTE, MINUTE);
    tier.insert(&k, stored.clone());
    for _ in 0..1_000 {
        assert!(tier.get(&k, now).is_some());
        assert!(tier.get(&absent, now).is_none());
    }
    tier.run_pending_tasks();

    let mut same = 0;
    let hits = count_allocations(|| {
        for _ in 0..1_000 {
            let hit = tier.get(&k, now).expect("a hit");
            if Arc::ptr_eq(hit.value().unwrap(), stored.value().unwrap()) {
                same += 1;
            }
        }
    });
    assert_eq!(same, 1_000, "every hit is the inserted Arc");
    assert_eq!(hits, 0, "allocations during 1,000 hits");

    let misses = count_allocations(|| {
        for _ in 0..1_000 {
            assert!(tier.get(&absent, now).is_none());
        }
    });
    assert_eq!(misses, 0, "allocations during 1,000 misses");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// The loader of calls that hit L1 (it never runs): a placeholder user.
fn unused_loader() -> std::future::Ready<Result<User, std::io::Error>> {
    std::future::ready(Ok(User {
        id: 0,
        name: String::new(),
    }))
}

/// Postcard, counting encodes and decodes. Clones share the counts.
type CountingCodec = Counted<Postcard>;

/// Polls `future` once with a no-op waker (allocates nothing itself); it must be ready.
fn poll_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an L1 hit must answer without awaiting"),
    }
}

/// A `Cache<V>` over `MokaLocal` (with a remote L2 and a counting codec): once loaded, an L1
/// hit through `get_or_fetch` answers without awaiting, with zero heap allocations, zero
/// decodes, no loader call and no remote read, and returns the same `Arc` every time.
#[test]
fn an_l1_hit_through_get_or_fetch_allocates_and_decodes_nothing() {
    in_fresh_process(
        "an_l1_hit_through_get_or_fetch_allocates_and_decodes_nothing",
        || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(l1_hit_through_get_or_fetch());
        },
    );
}

async fn l1_hit_through_get_or_fetch() {
    let clock = ManualClock::starting_now();
    let l1: MokaLocal<User> = MokaLocal::builder()
        .max_capacity(1_000)
        .clock(Clock::from(clock.clone()))
        .build();
    let l2 = MemoryBackend::new("l2")
        .remote()
        .with_clock(Clock::from(clock.clone()));
    let codec = CountingCodec::default();
    let cache: Cache<User> = Cache::builder(l1.clone(), codec.clone())
        .l2(l2.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("user:42");
    let loads = Arc::new(AtomicUsize::new(0));

    let counter = Arc::clone(&loads);
    let first = cache
        .get_or_fetch(&k, move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(User {
                id: 42,
                name: "Ada".to_owned(),
            })
        })
        .await
        .unwrap();
    assert_eq!(first.source(), Source::Loader);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(codec.encodes(), 1, "encoded once for L2");
    assert_eq!(l2.calls().get, 1, "the miss read L2 once");

    // Warm up moka's read path and the cache's.
    for _ in 0..1_000 {
        let hit = poll_ready(cache.get_or_fetch(&k, unused_loader)).unwrap();
        assert_eq!(hit.source(), Source::L1);
    }
    l1.run_pending_tasks();

    let mut same = 0;
    let allocations = count_allocations(|| {
        for _ in 0..1_000 {
            let hit = poll_ready(cache.get_or_fetch(&k, unused_loader)).unwrap();
            if hit.source() == Source::L1 && Arc::ptr_eq(hit.value(), first.value()) {
                same += 1;
            }
        }
    });
    assert_eq!(
        same, 1_000,
        "every hit is L1's Arc, the one the loader produced"
    );
    assert_eq!(
        allocations, 0,
        "allocations during 1,000 L1 hits through get_or_fetch"
    );
    assert_eq!(codec.decodes(), 0, "an L1 hit never decodes");
    assert_eq!(cache.stats().decodes, [0, 0]);
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the loader ran once");
    assert_eq!(l2.calls().get, 1, "no remote read after the first miss");
    assert_eq!(codec.encodes(), 1);
    assert_eq!(cache.stats().flights, 1);
}

/// Every capacity and idle time is accepted, from zero to the largest: the tier builds and a
/// `Cache` over it answers `get_or_fetch`, `set` and `remove` (a zero capacity or idle time
/// holds nothing, which is a miss), and a `MokaBackend` answers its calls.
#[tokio::test]
async fn every_capacity_and_idle_time_is_accepted() {
    use tierkit_core::{Backend, CacheValue};
    use tierkit_moka::MokaBackend;
    let idles = [None, Some(Duration::ZERO), Some(Duration::MAX)];
    for capacity in [0, 1, u64::MAX] {
        for idle in idles {
            let mut builder = MokaLocal::<String>::builder().max_capacity(capacity);
            if let Some(idle) = idle {
                builder = builder.time_to_idle(idle);
            }
            let cache: Cache<String> = Cache::builder(builder.build(), Postcard).build();
            let hit = cache
                .get_or_fetch("k", || async { Ok::<_, std::io::Error>("v".to_owned()) })
                .await
                .unwrap();
            assert_eq!(hit.as_str(), "v", "capacity {capacity}, idle {idle:?}");
            cache.set("k", "w".to_owned()).await.unwrap();
            cache.remove("k").await.unwrap();

            let weighed = MokaLocal::<String>::builder()
                .max_capacity(capacity)
                .weigher(|_, value: &String| u32::try_from(value.len()).unwrap_or(u32::MAX))
                .build();
            weighed.insert(
                &key("k"),
                entry("v".to_owned(), Clock::System.now(), MINUTE, MINUTE),
            );

            for bytes in [false, true] {
                let mut builder = MokaBackend::builder();
                builder = if bytes {
                    builder.max_bytes(capacity)
                } else {
                    builder.max_capacity(capacity)
                };
                if let Some(idle) = idle {
                    builder = builder.time_to_idle(idle);
                }
                let tier = builder.build();
                let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), MINUTE);
                let _ = tier.set(&key("k"), value).await;
                let _ = tier.get(&key("k")).await.unwrap();
                tier.delete(&key("k")).await.unwrap();
            }
        }
    }
}

/// Fail-safe over a `MokaLocal` ten times smaller than the key space: whatever moka evicts or
/// refuses to admit, a failing origin sees exactly one call per key per throttle window (the
/// stale values come back from L2, the throttles from the cache's own table).
#[tokio::test]
async fn a_failing_origin_behind_a_small_moka_l1_sees_one_call_per_key_per_window() {
    use tierkit_cache::{FetchOptions, HitFreshness, StaleCause};
    const KEYS: usize = 100;
    let ttl = MINUTE;
    let window = Duration::from_secs(30);
    let clock = ManualClock::starting_now();
    let l1: MokaLocal<String> = MokaLocal::builder()
        .max_capacity(10)
        .clock(Clock::from(clock.clone()))
        .build();
    let l2 = MemoryBackend::new("l2")
        .remote()
        .with_clock(Clock::from(clock.clone()));
    let cache: Cache<String> = Cache::builder(l1.clone(), Postcard)
        .l2(l2.clone())
        .clock(Clock::from(clock.clone()))
        .defaults(
            FetchOptions::new()
                .ttl(ttl)
                .jitter_max(Duration::ZERO)
                .fail_safe(true)
                .fail_safe_throttle(window)
                .write_mode(tierkit_cache::WriteMode::AwaitBeforeReturn),
        )
        .build();
    for i in 0..KEYS {
        let value = format!("v{i}");
        cache
            .get_or_fetch(&format!("k{i}"), move || async move {
                Ok::<_, std::io::Error>(value)
            })
            .await
            .unwrap();
    }
    assert_eq!(l2.len(), KEYS);
    clock.advance(ttl + Duration::from_secs(1));

    let origin = Arc::new(AtomicUsize::new(0));
    let read_all = |passes: usize| {
        let (cache, origin, l1) = (cache.clone(), Arc::clone(&origin), l1.clone());
        async move {
            for _ in 0..passes {
                for i in 0..KEYS {
                    let calls = Arc::clone(&origin);
                    let hit = cache
                        .get_or_fetch(&format!("k{i}"), move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Err::<String, _>(std::io::Error::other("origin down"))
                        })
                        .await
                        .unwrap();
                    assert_eq!(*hit, format!("v{i}"));
                    assert!(matches!(
                        hit.freshness(),
                        HitFreshness::Stale(StaleCause::FailSafe { .. })
                    ));
                }
                l1.run_pending_tasks();
            }
        }
    };
    read_all(3).await;
    assert_eq!(origin.load(Ordering::SeqCst), KEYS);
    assert!(l1.entry_count() <= 10, "moka evicted");
    clock.advance(window - Duration::from_secs(1));
    read_all(2).await;
    assert_eq!(origin.load(Ordering::SeqCst), KEYS, "inside the window");
    clock.advance(Duration::from_secs(1));
    read_all(2).await;
    assert_eq!(origin.load(Ordering::SeqCst), 2 * KEYS, "the next window");
}
