//! Read-through behaviours 24-29: the hard timeout, background completion and its cap,
//! background completion turned off, tier read timeouts, per-waiter deadlines.
//!
//! Behaviour 23 (the soft timeout) is not covered here: it needs fail-safe, which does not
//! exist yet. Every test runs on tokio's paused clock, so a timeout fires at exactly its
//! deadline and the elapsed virtual time is compared with `==`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::time::Duration;

use support::{
    Answer, Calls, FaultyStack, Stack, TokenProbe, assert_stored_in_no_tier, instant, key, settle,
    write_l3_only,
};
use tierkit_cache::{
    Cache, CacheError, DEFAULT_HARD_TIMEOUT, DEFAULT_TIER_TIMEOUT, FetchOptions, Source,
    TimeoutKind,
};
use tierkit_core::{ErrorKind, Op};
use tierkit_testkit::Fault;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// A stack, the cache over it and a probe for its loaders (whose calls count every loader's).
fn setup() -> (Stack<String>, Cache<String>, TokenProbe) {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    (stack, cache, TokenProbe::default())
}

/// Sleeps `delay`, counted from the first poll: what a probe loader waits for before answering.
async fn after(delay: Duration) {
    tokio::time::sleep(delay).await;
}

fn is_timeout(error: &CacheError, want: TimeoutKind, after: Duration) -> bool {
    matches!(error, CacheError::Timeout { kind, after: got } if *kind == want && *got == after)
}

/// Asserts that `result` is a `Timeout` of `kind` after `after`.
fn assert_timeout(result: Answer<String>, kind: TimeoutKind, after: Duration) {
    let error = result.unwrap_err();
    assert!(is_timeout(&error, kind, after), "{error:?}");
}

/// Behaviour 24: without a fallback, a waiter whose loader does not answer gets
/// `Err(Timeout{Hard})` at exactly its hard timeout (virtual time), both with a per-call
/// hard timeout and with the built-in one.
#[tokio::test(start_paused = true)]
async fn b24_hard_timeout_always_applies() {
    let (_stack, cache, probe) = setup();

    let start = Instant::now();
    let result = cache
        .get_or_fetch_with(
            "slow",
            &FetchOptions::new().hard_timeout(100 * MS),
            probe.loader(std::future::pending(), "never"),
        )
        .await;
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(
        start.elapsed(),
        100 * MS,
        "the waiter is released at its hard timeout"
    );
    assert_eq!(probe.calls.get(), 1);

    // No per-call option: the built-in hard timeout.
    let start = Instant::now();
    let result = cache
        .get_or_fetch("slow-default", || {
            std::future::pending::<Result<String, std::io::Error>>()
        })
        .await;
    assert_timeout(result, TimeoutKind::Hard, DEFAULT_HARD_TIMEOUT);
    assert_eq!(start.elapsed(), DEFAULT_HARD_TIMEOUT);
}

/// Behaviour 25: background completion is on by default: after the waiter's hard timeout the
/// loader keeps running, its value is stored in every tier, and a later call hits L1 with one
/// loader call in total.
#[tokio::test(start_paused = true)]
async fn b25_background_completion_stores_the_late_value() {
    let (stack, cache, probe) = setup();
    // The default background cap is 4 x 100 ms: the loader's 300 ms fit in it.
    let options = FetchOptions::new().hard_timeout(100 * MS);

    let start = Instant::now();
    let result = cache
        .get_or_fetch_with("k", &options, probe.loader(after(300 * MS), "late"))
        .await;
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(
        cache.flights_in_progress(),
        1,
        "the flight goes on after the timeout"
    );
    assert!(!probe.cancelled());

    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert!(probe.dropped(), "the loader future ran to its end");
    assert!(!probe.cancelled(), "a completed loader is never cancelled");
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(stack.l1_value("k"), Some("late".to_owned()));
    assert!(stack.l2.peek(&key("k")).is_some());
    assert!(stack.l3.peek(&key("k")).is_some());

    let hit = cache
        .get_or_fetch_with("k", &options, instant(&probe.calls, "again"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "late"));
    assert_eq!(probe.calls.get(), 1, "one loader call in total");
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.flights_capped), (1, 0));
}

/// Behaviour 25 (failure side): a loader that fails after its waiter timed out is only
/// counted; nothing is stored and the next call runs the loader again.
#[tokio::test(start_paused = true)]
async fn b25_a_late_loader_failure_is_only_counted() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let options = FetchOptions::new().hard_timeout(100 * MS);

    let result = cache
        .get_or_fetch_with("k", &options, {
            let calls = calls.clone();
            move |_| async move {
                calls.bump();
                tokio::time::sleep(200 * MS).await;
                Err::<String, _>(std::io::Error::other("origin down"))
            }
        })
        .await;
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.loader_errors), (1, 1));
    assert_eq!(cache.flights_in_progress(), 0);
    assert_stored_in_no_tier(&stack, "k");

    let hit = cache
        .get_or_fetch_with("k", &options, instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v"));
    assert_eq!(calls.get(), 2);
}

/// Behaviour 26: a loader running past the background cap is cancelled (its token fires and
/// its future is dropped), nothing is stored, the flight is removed and counted as capped.
/// Callers that join the still-running flight obey their own hard deadline; one still
/// waiting at the cap gets `Timeout{BackgroundCap}`.
#[tokio::test(start_paused = true)]
async fn b26_background_cap_cancels_the_loader_and_frees_the_key() {
    let (stack, cache, probe) = setup();
    let calls = &probe.calls;
    let t0 = Instant::now();

    // The starter: hard timeout 100 ms, cap 300 ms, a loader that never answers.
    let result = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new()
                .hard_timeout(100 * MS)
                .background_cap(300 * MS),
            probe.loader(std::future::pending(), "never"),
        )
        .await;
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(t0.elapsed(), 100 * MS);
    assert_eq!(cache.flights_in_progress(), 1);
    assert!(!probe.cancelled() && !probe.dropped());

    // A caller joining at 200 ms with a 50 ms hard timeout leaves at 250 ms, before the cap.
    tokio::time::sleep_until(t0 + 200 * MS).await;
    let joined = Instant::now();
    let result = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().hard_timeout(50 * MS),
            instant(calls, "joiner"),
        )
        .await;
    assert_timeout(result, TimeoutKind::Hard, 50 * MS);
    assert_eq!(
        joined.elapsed(),
        50 * MS,
        "its own hard deadline, from its own arrival"
    );
    assert_eq!(cache.stats().coalesced, 1, "it joined the running flight");
    assert_eq!(cache.flights_in_progress(), 1);
    assert!(!probe.cancelled());

    // A caller joining at 260 ms with a long hard timeout is answered by the cap at 300 ms.
    tokio::time::sleep_until(t0 + 260 * MS).await;
    let joined = Instant::now();
    let result = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().hard_timeout(Duration::from_secs(10)),
            instant(calls, "joiner"),
        )
        .await;
    assert_timeout(result, TimeoutKind::BackgroundCap, 300 * MS);
    assert_eq!(joined.elapsed(), 40 * MS);
    assert_eq!(t0.elapsed(), 300 * MS);

    settle().await;
    assert!(probe.cancelled(), "the loader's token fired at the cap");
    assert!(
        probe.dropped(),
        "the loader's future was dropped at the cap"
    );
    assert_eq!(cache.flights_in_progress(), 0, "the flight was removed");
    assert_eq!(cache.keys_in_progress(), 0);
    let stats = cache.stats();
    assert_eq!(stats.flights_capped, 1);
    assert_eq!(calls.get(), 1, "the joiners' loaders never ran");
    assert_stored_in_no_tier(&stack, "k");

    // The key is free: the next call starts a new flight.
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), instant(calls, "fresh"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "fresh"));
    assert_eq!(cache.stats().flights, 2);
}

/// Behaviour 27: with `background_completion(false)`, the loader's token fires at the hard
/// timeout, its future is dropped, and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b27_without_background_completion_the_loader_is_cancelled_at_the_hard_timeout() {
    let (stack, cache, probe) = setup();
    let options = FetchOptions::new()
        .hard_timeout(100 * MS)
        .background_completion(false);

    let start = Instant::now();
    // The loader would answer at 200 ms, after the hard timeout.
    let result = cache
        .get_or_fetch_with("k", &options, probe.loader(after(200 * MS), "late"))
        .await;
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(start.elapsed(), 100 * MS);
    settle().await;
    assert!(probe.cancelled(), "the token fires at the hard timeout");
    assert!(probe.dropped(), "the loader's future is dropped");
    assert_eq!(
        Instant::now(),
        start + 100 * MS,
        "no virtual time passed meanwhile"
    );
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!(cache.stats().flights_capped, 1);

    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    let hit = cache
        .get_or_fetch_with("k", &options, instant(&probe.calls, "v"))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(probe.calls.get(), 2);
}

/// Behaviour 28 (hard tier timeout only: tiers have no soft timeout yet): an L2 read that
/// hangs past `tier_timeout` counts as a miss, and the flight goes on to L3.
#[tokio::test(start_paused = true)]
async fn b28_a_timed_out_tier_read_is_a_miss_and_the_flight_continues_to_l3() {
    let stack = Stack::<String>::new();
    let (cache, l2) = stack.cache_with_faulty_l2();
    // The value is in L3 only.
    cache
        .set_with("k", "from-l3".to_owned(), &write_l3_only())
        .await
        .unwrap();
    l2.push(Op::Get, Fault::Hang);
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().tier_timeout(Duration::from_secs(1)),
            instant(&calls, "loader"),
        )
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "from-l3"));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "L2 was given exactly its tier timeout"
    );
    assert_eq!(hit.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.get(), 0);
    let stats = cache.stats();
    assert_eq!(stats.tier_timeouts, [1, 0]);
    assert_eq!(stats.tier_errors, [0, 0]);
    assert_eq!(l2.calls().get, 1);
}

/// Behaviour 28: when every tier read times out (here with the built-in tier timeout), the
/// flight goes on to the loader.
#[tokio::test(start_paused = true)]
async fn b28_timed_out_reads_on_every_tier_fall_through_to_the_loader() {
    let t = FaultyStack::<String>::new();
    let cache = t.cache();
    t.l2.push(Op::Get, Fault::Hang);
    t.l3.push(Op::Get, Fault::Delay(Duration::from_secs(60)));
    let calls = Calls::default();

    let start = Instant::now();
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), instant(&calls, "loaded"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "loaded"));
    assert_eq!(start.elapsed(), 2 * DEFAULT_TIER_TIMEOUT);
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().tier_timeouts, [1, 1]);
}

/// Behaviour 28: with `strict_tiers`, a timed-out tier read is an error (a `Tier` error of
/// kind `Timeout` naming L2), and the flight stops there: no L3 read, no loader call.
#[tokio::test(start_paused = true)]
async fn b28_a_timed_out_tier_read_is_an_error_with_strict_tiers() {
    let stack = Stack::<String>::new();
    let (cache, l2) = stack.cache_with_faulty_l2();
    l2.push(Op::Get, Fault::Hang);
    let calls = Calls::default();

    let start = Instant::now();
    let error = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new()
                .tier_timeout(Duration::from_secs(1))
                .strict_tiers(true),
            instant(&calls, "loader"),
        )
        .await
        .unwrap_err();
    match &error {
        CacheError::Tier { tier, source } => {
            assert_eq!(*tier, Source::L2);
            assert_eq!(source.kind(), ErrorKind::Timeout);
        }
        other => panic!("expected a tier error, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.get(), 0);
    assert_eq!(stack.l3.calls().get, 0);
    assert_eq!(cache.stats().tier_timeouts, [1, 0]);
    assert_eq!(cache.flights_in_progress(), 0);
}

/// Behaviour 29: a waiter that joins a flight late measures its hard timeout from its own
/// arrival, not from the flight's start.
#[tokio::test(start_paused = true)]
async fn b29_per_waiter_deadlines_count_from_each_arrival() {
    let (_stack, cache, probe) = setup();
    let calls = &probe.calls;
    let options = FetchOptions::new().hard_timeout(100 * MS);
    let t0 = Instant::now();

    // The flight's loader answers at 250 ms (within the default cap of 400 ms).
    let first = tokio::spawn({
        let (cache, loader) = (cache.clone(), probe.loader(after(250 * MS), "v"));
        async move {
            let result = cache.get_or_fetch_with("k", &options, loader).await;
            (result, Instant::now())
        }
    });
    let joiner = |at: Duration| {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            let result = cache
                .get_or_fetch_with("k", &options, instant(&calls, "other"))
                .await;
            (result, Instant::now())
        })
    };
    let second = joiner(80 * MS);
    let third = joiner(200 * MS);

    let (result, at) = first.await.unwrap();
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(at, t0 + 100 * MS);

    // Arrived at 80 ms: released at 180 ms, not at the flight's 100 ms.
    let (result, at) = second.await.unwrap();
    assert_timeout(result, TimeoutKind::Hard, 100 * MS);
    assert_eq!(at, t0 + 180 * MS);

    // Arrived at 200 ms: still waiting at 250 ms, when the loader answers.
    let (result, at) = third.await.unwrap();
    let hit = result.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v"));
    assert!(hit.is_coalesced());
    assert_eq!(hit.elapsed(), 50 * MS);
    assert_eq!(at, t0 + 250 * MS);
    assert_eq!(calls.get(), 1);
}
