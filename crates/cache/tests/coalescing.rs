//! Read-through behaviours 1-9: the L1 hit path, one flight per key, coalescing across tiers,
//! write-back once per flight, no residue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{
    Calls, Gate, MINUTE, Stack, assert_one_shared_value, counting, gated, hits, key, settle,
    spawn_fetches,
};
use tierkit_cache::{FetchOptions, Source};
use tierkit_core::{Backend, CacheValue};

/// Behaviour 1: a fresh L1 hit answers without awaiting a remote tier, without decoding, and
/// without calling the loader closure at all.
#[tokio::test(start_paused = true)]
async fn b01_l1_hit_path_does_no_remote_work_and_never_calls_the_loader() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let k = key("user:1");
    cache.set(&k, "Ada".to_owned()).await.unwrap();
    let (l2, l3) = (stack.l2.calls(), stack.l3.calls());
    let decodes = stack.codec.decodes();

    let calls = Calls::default();
    for _ in 0..10 {
        let hit = cache
            .get_or_fetch(&k, {
                let calls = calls.clone();
                move || {
                    calls.bump();
                    async { Ok::<_, std::io::Error>("loader".to_owned()) }
                }
            })
            .await
            .unwrap();
        assert_eq!((hit.source(), hit.as_str()), (Source::L1, "Ada"));
        assert!(!hit.is_coalesced());
        assert_eq!(hit.flight_id(), None);
    }
    assert_eq!(
        calls.get(),
        0,
        "the loader closure is never called on a hit"
    );
    assert_eq!((stack.l2.calls(), stack.l3.calls()), (l2, l3));
    assert_eq!(stack.codec.decodes(), decodes);
    assert_eq!(cache.stats().flights, 0);

    // The hit path never needs a runtime's help: polled once, it is ready.
    let fut = cache.get(&k);
    let mut fut = std::pin::pin!(fut);
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_ready());
}

/// A miss is one access of L1, as it would be without the cache in front: the second look
/// under the key's lock and the check before the refill ask `may_contain` first, and read
/// only when L1 may hold the key. (A tier that counts accesses for its admission policy, as
/// moka does, would otherwise favour missed keys over the ones it holds.)
#[tokio::test(start_paused = true)]
async fn a_miss_reads_l1_once() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let loaded = cache
        .get_or_fetch(&key("cold"), counting(&calls, "loaded".to_owned()))
        .await
        .unwrap();
    assert_eq!(loaded.source(), Source::Loader);
    assert_eq!(stack.l1.gets.load(Ordering::SeqCst), 1, "one read of L1");
    assert_eq!(stack.l1.inserts(), 1);

    // A value another node wrote, found in L2 and refilled into L1: one read of L1 too.
    let other = stack.other_node::<String>();
    other
        .cache()
        .set(&key("warm"), "from l2".to_owned())
        .await
        .unwrap();
    let found = cache
        .get_or_fetch(&key("warm"), counting(&calls, "unused".to_owned()))
        .await
        .unwrap();
    assert_eq!((found.source(), found.as_str()), (Source::L2, "from l2"));
    assert_eq!(stack.l1.gets.load(Ordering::SeqCst), 2);
    assert_eq!(stack.l1.inserts(), 2);
    assert_eq!(calls.get(), 1, "only the cold key was loaded");
}

/// Behaviour 2: 1,000 concurrent misses on a key that no tier holds: one L2 read, one L3
/// read, one loader call, one encode, one write per remote tier, and every caller gets the
/// same `Arc`.
#[tokio::test(start_paused = true)]
async fn b02_one_flight_per_key_for_a_thousand_concurrent_misses() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let gate = Gate::closed();
    let tasks = spawn_fetches(&cache, "cold", 1_000, || {
        gated(&calls, &gate, "value".to_owned())
    });
    settle().await;
    gate.open();
    let hits = hits(tasks).await;
    settle().await;

    assert_eq!(calls.get(), 1);
    assert_eq!(stack.l2.calls().get, 1);
    assert_eq!(stack.l3.calls().get, 1);
    assert_eq!(stack.codec.encodes(), 1);
    assert_eq!(stack.l2.calls().set, 1);
    assert_eq!(stack.l3.calls().set, 1);
    assert_eq!(stack.l1.inserts(), 1);
    assert_one_shared_value(&hits);
    assert!(hits.iter().all(|hit| hit.source() == Source::Loader));
    assert_eq!(hits.iter().filter(|hit| !hit.is_coalesced()).count(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.flights, stats.coalesced, stats.loader_calls),
        (1, 999, 1)
    );
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 3: 1,000 concurrent misses on a key that only L2 holds: one L2 read, one decode,
/// no loader call, one L1 insert, no remote write.
#[tokio::test(start_paused = true)]
async fn b03_coalescing_on_an_l2_hit() {
    let stack = Stack::<String>::new();
    let writer = stack.cache();
    writer.set("warm", "from-l2".to_owned()).await.unwrap();
    // A second cache with a fresh L1 over the same remote tiers: the key is only in L2/L3.
    let other = stack.other_node::<String>();
    let cache = other.cache();
    let before = (stack.l2.calls(), stack.l3.calls());
    let calls = Calls::default();
    let tasks = spawn_fetches(&cache, "warm", 1_000, || {
        counting(&calls, "loader".to_owned())
    });
    let hits = hits(tasks).await;
    settle().await;
    assert_eq!(calls.get(), 0);
    assert_eq!(stack.l2.calls().get - before.0.get, 1);
    assert_eq!(stack.l3.calls().get - before.1.get, 0);
    assert_eq!(
        stack.l2.calls().set,
        before.0.set,
        "an L2 hit writes nothing remote"
    );
    assert_eq!(
        other.codec.decodes(),
        1,
        "one decode per flight, not per waiter"
    );
    assert_eq!(other.l1.inserts(), 1);
    assert_one_shared_value(&hits);
    assert!(
        hits.iter()
            .all(|hit| hit.source() == Source::L2 || hit.source() == Source::L1)
    );
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 4: a `get_or_fetch` joins a running `get` (no loader) and hands it its loader;
/// the `get` caller gets the loader's value, with `Source::Loader`.
#[tokio::test(start_paused = true)]
async fn b04_a_loader_joins_a_get() {
    let stack = Stack::<String>::new();
    // Hold L2's read so the `get` flight is still reading when the loader joins.
    let (gated, handle) = tierkit_testkit::scripted("l2");
    let cache = stack.builder().l2(gated).build();
    let mut handle = handle;
    let getter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get("k").await }
    });
    let call = handle.next_call().await;
    let fetcher = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_fetch("k", || async {
                    Ok::<_, std::io::Error>("loaded".to_owned())
                })
                .await
        }
    });
    settle().await;
    call.respond_miss();
    // The write-back of the loaded value.
    let write = handle.next_call().await;
    write.respond_ok();
    let got = getter
        .await
        .unwrap()
        .unwrap()
        .expect("the get gets the loader's value");
    assert_eq!((got.source(), got.as_str()), (Source::Loader, "loaded"));
    let fetched = fetcher.await.unwrap().unwrap();
    assert!(fetched.is_coalesced());
    assert!(Arc::ptr_eq(got.value(), fetched.value()));
    let _ = stack;
}

/// Behaviour 5: a burst straddling a flight's completion does not start a second flight: a
/// caller that finds no flight re-checks L1 under the table lock.
#[tokio::test(start_paused = true)]
async fn b05_double_check_after_a_flight_finished() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let load = |calls: Calls| {
        move || async move {
            calls.bump();
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, std::io::Error>("v".to_owned())
        }
    };
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i / 2)).await;
            cache.get_or_fetch("k", load(calls)).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().flights, 1);
}

/// Behaviour 6: the flight key is the cache key only: callers with different options
/// coalesce, and the flight runs with the options of the caller that started it (here its
/// TTL).
#[tokio::test(start_paused = true)]
async fn b06_callers_with_different_options_coalesce() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let gate = Gate::closed();
    let first = tokio::spawn({
        let (cache, load) = (cache.clone(), gated(&calls, &gate, "v".to_owned()));
        async move {
            cache
                .get_or_fetch_with("k", &FetchOptions::new().ttl(MINUTE), |_| load())
                .await
        }
    });
    settle().await;
    let second = tokio::spawn({
        let (cache, calls) = (cache.clone(), calls.clone());
        async move {
            cache
                .get_or_fetch_with(
                    "k",
                    &FetchOptions::new().ttl(10 * MINUTE),
                    move |_| async move {
                        calls.bump();
                        Ok::<_, std::io::Error>("other".to_owned())
                    },
                )
                .await
        }
    });
    settle().await;
    gate.open();
    let (a, b) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(calls.get(), 1);
    assert!(b.is_coalesced());
    assert_eq!(a.meta(), b.meta());
    let ttl = a
        .meta()
        .stale_at()
        .saturating_duration_since(a.meta().created_at());
    assert_eq!(ttl, MINUTE, "the starter's options");
}

/// Behaviour 8: 32 waiters on one flight produce one write per remote tier, and the
/// write-back happens even when every waiter has been dropped.
#[tokio::test(start_paused = true)]
async fn b08_write_back_once_per_flight_even_with_every_waiter_dropped() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let gate = Gate::closed();
    let tasks = spawn_fetches(&cache, "k", 32, || {
        gated(&Calls::default(), &gate, "v".to_owned())
    });
    settle().await;
    for task in &tasks {
        task.abort();
    }
    settle().await;
    gate.open();
    settle().await;
    assert_eq!(stack.l2.calls().set, 1);
    assert_eq!(stack.l3.calls().set, 1);
    assert!(stack.l2.peek(&key("k")).is_some());
    assert_eq!(stack.l1_value("k"), Some("v".to_owned()));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 9: after a mix of outcomes (values, errors, panics, not-found, timeouts,
/// abandoned callers) the table is empty.
#[tokio::test(start_paused = true)]
async fn b09_no_residue_after_any_mix_of_outcomes() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let opts = FetchOptions::new().hard_timeout(Duration::from_millis(50));
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{}", i % 17);
            let _ = match i % 6 {
                0 => cache
                    .get_or_fetch_with(&key, &opts, |_| async {
                        Ok::<_, std::io::Error>("v".to_owned())
                    })
                    .await
                    .map(|_| ()),
                1 => cache
                    .get_or_fetch_with(&key, &opts, |_| async {
                        Err::<String, _>(std::io::Error::other("down"))
                    })
                    .await
                    .map(|_| ()),
                2 => cache
                    .get_or_fetch_with(&key, &opts, |_| async {
                        if true {
                            panic!("loader bug");
                        }
                        Ok::<String, std::io::Error>(String::new())
                    })
                    .await
                    .map(|_| ()),
                3 => cache.get(&key).await.map(|_| ()),
                4 => cache
                    .get_or_fetch_with(&key, &opts, |_| async {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok::<_, std::io::Error>("slow".to_owned())
                    })
                    .await
                    .map(|_| ()),
                _ => cache.remove(&key).await,
            };
        }));
    }
    for (i, task) in tasks.iter().enumerate() {
        if i % 7 == 0 {
            task.abort();
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// A value written straight into L2 by another writer is served through the cache (sanity for
/// the frame written by `set`).
#[tokio::test(start_paused = true)]
async fn l2_holds_frames_not_raw_values() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    cache.set("k", "v".to_owned()).await.unwrap();
    let stored: CacheValue = stack.l2.get(&key("k")).await.unwrap().unwrap();
    assert!(stored.payload().starts_with(b"TKF"));
}
