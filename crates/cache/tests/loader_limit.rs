//! The cache-wide bound on concurrent loader calls: flights of distinct keys beyond it wait for
//! a slot, each at most its hard timeout, so a hanging origin never sees more calls at once
//! than the bound, however many distinct keys miss.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::time::Duration;

use support::{Calls, Gate, MINUTE, Stack, counting, gated, instant, key, settle, spawn_fetch};
use tierkit_cache::{
    CacheError, DEFAULT_MAX_CONCURRENT_LOADS, FailSafeCause, FetchOptions, HitFreshness, Source,
    StaleCause, TimeoutKind,
};

/// Keys named once, for callers spawned in a loop.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// With the default bound, an origin that never answers sees exactly that many loader calls
/// at once however many distinct keys miss; the flights beyond it wait, and call the loader as
/// slots free up.
#[tokio::test(start_paused = true)]
async fn a_hanging_origin_sees_at_most_the_default_bound_of_loader_calls_at_once() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let bound = DEFAULT_MAX_CONCURRENT_LOADS;
    let (calls, gate) = (Calls::default(), Gate::closed());
    let callers: Vec<_> = (0..bound + 10)
        .map(|i| {
            spawn_fetch(
                &cache,
                leak(format!("k{i}")),
                gated(&calls, &gate, format!("v{i}")),
            )
        })
        .collect();
    settle().await;
    assert_eq!(calls.get(), bound, "loader calls running at once");
    assert_eq!(cache.flights_in_progress(), bound + 10);
    let stats = cache.stats();
    assert_eq!(
        (stats.loader_calls, stats.loader_queued),
        (bound as u64, 10)
    );
    assert_eq!(cache.loads_in_progress(), bound);

    gate.open();
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    assert_eq!(
        calls.get(),
        bound + 10,
        "the queued flights called the loader"
    );
    assert_eq!(cache.stats().loader_slot_timeouts, 0);
    assert_eq!(cache.loads_in_progress(), 0);
}

/// A flight that finds every slot taken waits at most its hard timeout, then ends without
/// calling its loader: a caller still waiting on it gets `Timeout { kind: LoaderSlot }`, the
/// key is free, and the next call runs the loader once a slot is free. A bound of 0 counts as 1.
#[tokio::test(start_paused = true)]
async fn a_flight_waiting_for_a_loader_slot_gives_up_at_its_hard_timeout() {
    let stack = Stack::<String>::new();
    let cache = stack.tiered_builder().max_concurrent_loads(0).build();
    let (hanging, gate) = (Calls::default(), Gate::closed());
    let a = spawn_fetch(&cache, "a", gated(&hanging, &gate, "va".to_owned()));
    settle().await;
    assert_eq!((hanging.get(), cache.loads_in_progress()), (1, 1));

    let calls = Calls::default();
    let starter = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            let options = FetchOptions::new().hard_timeout(Duration::from_secs(1));
            cache
                .get_or_fetch_with(&key("b"), &options, instant(&calls, "vb"))
                .await
        })
    };
    settle().await;
    // A caller joining with a longer hard timeout gets the flight's own answer.
    let joiner = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            let options = FetchOptions::new().hard_timeout(MINUTE);
            cache
                .get_or_fetch_with(&key("b"), &options, instant(&calls, "vb"))
                .await
        })
    };
    settle().await;
    assert_eq!(cache.stats().loader_queued, 1);
    let error = joiner.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            CacheError::Timeout {
                kind: TimeoutKind::LoaderSlot,
                after,
            } if after == Duration::from_secs(1)
        ),
        "{error:?}"
    );
    assert!(matches!(
        starter.await.unwrap().unwrap_err(),
        CacheError::Timeout { .. }
    ));
    let stats = cache.stats();
    assert_eq!((stats.loader_slot_timeouts, stats.loader_calls), (1, 1));
    assert_eq!(calls.get(), 0, "the queued loader was never called");
    assert_eq!(
        cache.flights_in_progress(),
        1,
        "only the hanging flight is left"
    );

    gate.open();
    a.await.unwrap().unwrap();
    let hit = cache
        .get_or_fetch("b", counting(&calls, "vb".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), calls.get()),
        (Source::Loader, "vb", 1)
    );
    assert_eq!(cache.loads_in_progress(), 0);
}

/// With fail-safe, a flight that waited in vain for a loader slot is a timeout like any other:
/// its callers get the stale value, and the key is throttled.
#[tokio::test(start_paused = true)]
async fn fail_safe_serves_the_stale_value_when_no_loader_slot_frees_up() {
    let stack = Stack::<String>::new();
    let cache = stack
        .tiered_builder()
        .max_concurrent_loads(1)
        .defaults(
            FetchOptions::new()
                .fail_safe(true)
                .hard_timeout(Duration::from_secs(1)),
        )
        .build();
    cache.set("b", "old".to_owned()).await.unwrap();
    stack.clock.advance(Duration::from_secs(301));
    let (hanging, gate) = (Calls::default(), Gate::closed());
    let _a = spawn_fetch(&cache, "a", gated(&hanging, &gate, "va".to_owned()));
    settle().await;

    let calls = Calls::default();
    let hit = cache
        .get_or_fetch("b", counting(&calls, "new".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), calls.get()),
        (Source::L1, "old", 0)
    );
    // The caller's hard timeout and the flight's wait end together: either answers stale.
    assert!(matches!(hit.freshness(), HitFreshness::Stale(_)));
    settle().await;
    assert_eq!(cache.stats().loader_slot_timeouts, 1);
    let again = cache
        .get_or_fetch("b", counting(&calls, "new".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        again.freshness(),
        HitFreshness::Stale(StaleCause::FailSafe {
            cause: FailSafeCause::Timeout,
            throttled: true,
        })
    );
    assert_eq!(calls.get(), 0);
}
