//! Read-through behaviours 7, 20, 38-44, 58 and 59: background refreshes (eager refresh and
//! stale-while-revalidate) share the flight table with foreground misses, are detached from
//! the request that triggered them, are started by reads only, adopt newer entries from the
//! remote tiers, back off after a failure, are discarded when a write raced them and never
//! extend service past `expires_at`; jitter of the L1 freshness (and, opted in, of the remote
//! tiers' `stale_at`).
//!
//! Entry ages come from the stack's manual clock; tokio's paused clock only drives hard
//! timeouts, so a refresh that is "stuck" stays stuck for as long as the test needs. Gates order
//! a refresh's loader against the reads, writes and clock steps around it; everything else is
//! counted (loader calls, remote tier calls, `CacheStats`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    Answer, Calls, Gate, Stack, TokenProbe, assert_stored_in_no_tier, at, cancel_when_unobserved,
    counting, gated, hits, instant, key, settle, spawn_fetch, spawn_fetches,
};
use tierkit_cache::{
    Cache, CacheError, FailSafeCause, FetchOptions, Hit, HitFreshness, JitterSource, LocalTier,
    RandomJitter, Source, StaleCause, TimeoutKind,
};
use tierkit_core::Timestamp;
use tierkit_testkit::logs::capture;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// The warning logged when an incoherent option is normalised.
const NORMALISED: &str = "incoherent cache option normalised";

/// Fresh for 60 s, then 30 s of stale-while-revalidate (no fail-safe: `expires_at` is the end
/// of the window).
fn swr() -> FetchOptions {
    FetchOptions::new()
        .ttl(60 * SEC)
        .stale_while_revalidate(30 * SEC)
}

/// Fresh for 100 s, refreshed eagerly from 50 s on.
fn eager() -> FetchOptions {
    FetchOptions::new().ttl(100 * SEC).eager_refresh(0.5)
}

/// The cache over all three tiers of `stack` with `defaults`.
fn cache_with(stack: &Stack<String>, defaults: FetchOptions) -> Cache<String> {
    stack.tiered_builder().defaults(defaults).build()
}

/// Loads `value` under `k` (a miss in every tier) and lets the write-back finish.
async fn load(cache: &Cache<String>, k: &str, value: &str) {
    let calls = Calls::default();
    let hit = cache
        .get_or_fetch(k, counting(&calls, value.to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, value));
    settle().await;
}

/// A stack and its cache with `defaults`, holding "v1" under "k" (loaded through a miss).
async fn loaded(defaults: FetchOptions) -> (Stack<String>, Cache<String>) {
    let stack = Stack::<String>::new();
    let cache = cache_with(&stack, defaults);
    load(&cache, "k", "v1").await;
    (stack, cache)
}

/// [`loaded`], with the manual clock then advanced by `after`.
async fn loaded_then(defaults: FetchOptions, after: Duration) -> (Stack<String>, Cache<String>) {
    let (stack, cache) = loaded(defaults).await;
    stack.clock.advance(after);
    (stack, cache)
}

/// `get_or_fetch(k)` with a counting loader answering `value`.
async fn fetch(cache: &Cache<String>, k: &str, calls: &Calls, value: &str) -> Answer<String> {
    cache
        .get_or_fetch(k, counting(calls, value.to_owned()))
        .await
}

/// Reads `k` with `loader`, checks that the read started a refresh, and lets the refresh run
/// (into its loader, or to its end).
async fn start_refresh<F, Fut>(cache: &Cache<String>, k: &str, loader: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, std::io::Error>> + Send + 'static,
{
    let hit = cache.get_or_fetch(k, loader).await.unwrap();
    assert!(hit.refresh_started());
    settle().await;
}

/// What a read answered: its value, its freshness and whether it started a refresh.
fn answered(hit: &Hit<String>) -> (&str, HitFreshness, bool) {
    (hit.as_str(), hit.freshness(), hit.refresh_started())
}

/// [`answered`], with the source of the value.
fn answered_from(hit: &Hit<String>) -> (&str, Source, HitFreshness, bool) {
    (
        hit.as_str(),
        hit.source(),
        hit.freshness(),
        hit.refresh_started(),
    )
}

/// Asserts that `error` is a caller's hard timeout.
#[track_caller]
fn assert_hard_timeout(error: &CacheError) {
    assert!(
        matches!(
            error,
            CacheError::Timeout {
                kind: TimeoutKind::Hard,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A loader for `get_or_fetch` that counts its call and fails at once.
fn failing(
    calls: &Calls,
) -> impl FnOnce() -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static + use<> {
    let calls = calls.clone();
    move || {
        calls.bump();
        std::future::ready(Err(std::io::Error::other("origin down")))
    }
}

/// `get_or_fetch(k)` with a loader that must not run (it would answer "unexpected").
async fn read(cache: &Cache<String>, k: &str, calls: &Calls) -> tierkit_cache::Hit<String> {
    fetch(cache, k, calls, "unexpected").await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Behaviour 7: refresh and foreground miss share the table.
// ---------------------------------------------------------------------------------------------

/// Behaviour 7: while a background refresh runs (an SWR refresh held inside its loader), a
/// foreground miss on the same key (a read skipping L1) joins the refresh's flight: it gets the
/// refresh's value, its own loader is never called, and no remote tier is read again (loader
/// count 1 in total).
#[tokio::test(start_paused = true)]
async fn b07_a_read_skipping_l1_joins_the_running_refresh() {
    let (stack, cache) = loaded_then(swr(), 70 * SEC).await;

    let (calls, gate) = (Calls::default(), Gate::closed());
    let hit = cache
        .get_or_fetch("k", gated(&calls, &gate, "v2".to_owned()))
        .await
        .unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Revalidating, true));
    settle().await;
    assert_eq!(calls.get(), 1, "the refresh is inside its loader");
    assert_eq!(cache.flights_in_progress(), 1);
    let reads = (stack.l2.calls().get, stack.l3.calls().get);

    let foreground = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_fetch_with(
                    "k",
                    &FetchOptions::new().skip_l1_read(true),
                    instant(&calls, "foreground"),
                )
                .await
        })
    };
    settle().await;
    assert!(!foreground.is_finished(), "it waits on the refresh");
    gate.open();
    let hit = foreground.await.unwrap().unwrap();
    assert_eq!(
        (hit.as_str(), hit.source(), hit.is_coalesced()),
        ("v2", Source::Loader, true)
    );
    assert_eq!(calls.get(), 1, "one loader call in total");
    assert_eq!((stack.l2.calls().get, stack.l3.calls().get), reads);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.refreshes_started,
            stats.coalesced,
            stats.flights,
            stats.loader_calls
        ),
        (1, 1, 1, 2),
        "the first load and the refresh: {stats:?}"
    );
    settle().await;
    assert_eq!(stack.l1_value("k").as_deref(), Some("v2"));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 7: a plain read that misses L1 because the entry expired (past the SWR window)
/// while the refresh it triggered is still inside its loader joins that refresh instead of
/// starting a flight of its own: loader count 1.
#[tokio::test(start_paused = true)]
async fn b07_a_miss_after_the_window_joins_the_refresh_still_running() {
    let (stack, cache) = loaded_then(swr(), 70 * SEC).await;
    let (calls, gate) = (Calls::default(), Gate::closed());
    start_refresh(&cache, "k", gated(&calls, &gate, "v2".to_owned())).await;
    assert_eq!(calls.get(), 1);

    // Past the window: the entry expired (no fail-safe reserve), L1 misses.
    stack.clock.advance(25 * SEC);
    assert!(cache.try_get_local("k").is_none());
    let foreground = spawn_fetch(&cache, "k", counting(&calls, "foreground".to_owned()));
    settle().await;
    assert!(!foreground.is_finished());
    gate.open();
    let hit = foreground.await.unwrap().unwrap();
    assert_eq!(
        (hit.as_str(), hit.source(), hit.is_coalesced()),
        ("v2", Source::Loader, true)
    );
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_started, stats.flights),
        (1, 1),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour 20: refresh is detached.
// ---------------------------------------------------------------------------------------------

/// Behaviour 20: the request that triggered a refresh is aborted (its task is cancelled after
/// the read returned, while the refresh is inside its loader): the refresh is not cancelled
/// (its token does not fire, its future is not dropped), completes and stores its value in
/// every tier.
#[tokio::test(start_paused = true)]
async fn b20_aborting_the_triggering_request_does_not_cancel_the_refresh() {
    let (stack, cache) = loaded_then(swr(), 70 * SEC).await;

    let (probe, gate) = (TokenProbe::default(), Gate::closed());
    let (started, started_rx) = tokio::sync::oneshot::channel();
    let request = {
        let (cache, loader) = (cache.clone(), probe.loader(gate.opened(), "v2"));
        tokio::spawn(async move {
            let hit = cache
                .get_or_fetch_with("k", &FetchOptions::new(), loader)
                .await
                .unwrap();
            started.send(hit.refresh_started()).unwrap();
            // The request goes on with other work, and is aborted there.
            std::future::pending::<()>().await;
        })
    };
    assert!(started_rx.await.unwrap(), "the request started the refresh");
    settle().await;
    assert_eq!(probe.calls.get(), 1);
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    settle().await;
    assert!(!probe.cancelled(), "the refresh's token did not fire");
    assert!(!probe.dropped(), "the refresh's loader is still running");
    assert_eq!(cache.flights_in_progress(), 1);

    gate.open();
    settle().await;
    assert!(!probe.cancelled());
    assert_eq!(stack.l1_value("k").as_deref(), Some("v2"));
    let other = stack.other_node::<String>();
    let calls = Calls::default();
    let hit = read(&other.cache(), "k", &calls).await;
    assert_eq!(
        (hit.source(), hit.as_str()),
        (Source::L2, "v2"),
        "written back to L2 too"
    );
    let stats = cache.stats();
    assert_eq!(
        (
            stats.flights_abandoned,
            stats.flights_aborted,
            stats.flights_capped
        ),
        (0, 0, 0)
    );
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 20: under `AbandonPolicy::CancelWhenUnobserved` (for the refresh, from the call
/// that triggered it, and for a caller that joins it), the joined caller leaving (aborted) takes
/// the flight's waiter count to zero but does not cancel the refresh: it completes and stores.
#[tokio::test(start_paused = true)]
async fn b20_a_joined_caller_leaving_never_cancels_the_refresh_even_when_unobserved() {
    let (stack, cache) = loaded_then(swr(), 70 * SEC).await;

    let (probe, gate) = (TokenProbe::default(), Gate::closed());
    let hit = cache
        .get_or_fetch_with(
            "k",
            &cancel_when_unobserved(),
            probe.loader(gate.opened(), "v2"),
        )
        .await
        .unwrap();
    assert!(hit.refresh_started());
    settle().await;
    assert_eq!(probe.calls.get(), 1);

    let joined_calls = Calls::default();
    let joined = {
        let (cache, loader) = (cache.clone(), instant(&joined_calls, "joined"));
        tokio::spawn(async move {
            cache
                .get_or_fetch_with("k", &cancel_when_unobserved().skip_l1_read(true), loader)
                .await
        })
    };
    settle().await;
    assert!(!joined.is_finished());
    assert_eq!(cache.stats().coalesced, 1, "it joined the refresh");
    joined.abort();
    assert!(joined.await.unwrap_err().is_cancelled());
    settle().await;
    assert!(!probe.cancelled(), "the refresh's token did not fire");
    assert!(!probe.dropped(), "the refresh's loader is still running");
    assert_eq!(cache.flights_in_progress(), 1);
    assert_eq!(cache.stats().flights_abandoned, 0);

    gate.open();
    settle().await;
    assert_eq!(stack.l1_value("k").as_deref(), Some("v2"));
    assert_eq!(joined_calls.get(), 0);
    assert_eq!(cache.stats().flights_abandoned, 0);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 20: a refresh whose loader hangs never holds a caller that joined it past that
/// caller's own hard deadline: the caller gets `Timeout{Hard}` at exactly its deadline.
#[tokio::test(start_paused = true)]
async fn b20_a_hung_refresh_never_holds_a_joined_caller_past_its_hard_deadline() {
    let (_, cache) = loaded_then(swr().background_cap(Duration::from_secs(3600)), 70 * SEC).await;
    let (calls, gate) = (Calls::default(), Gate::closed());
    start_refresh(&cache, "k", gated(&calls, &gate, "v2".to_owned())).await;

    let start = Instant::now();
    let error = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().skip_l1_read(true).hard_timeout(2 * SEC),
            instant(&calls, "foreground"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, CacheError::Timeout { kind: TimeoutKind::Hard, after } if after == 2 * SEC),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), 2 * SEC);
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.flights_in_progress(), 1, "the refresh goes on");
    drop(gate);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 38: eager refresh.
// ---------------------------------------------------------------------------------------------

/// Behaviour 38: `refresh_at = created_at + ttl x threshold` (100 s x 0.5 = 50 s). A read 1 ms
/// before it starts nothing; a read at it returns the current value `Fresh` from L1 at once and
/// starts a refresh, which stores the new value; the next read gets it without a refresh.
#[tokio::test(start_paused = true)]
async fn b38_eager_refresh_starts_at_ttl_times_threshold() {
    let (stack, cache) = loaded(eager()).await;
    let calls = Calls::default();

    stack.clock.advance(50 * SEC - MS);
    let hit = fetch(&cache, "k", &calls, "v2").await.unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Fresh, false));
    settle().await;
    assert_eq!((calls.get(), cache.stats().refreshes_started), (0, 0));

    stack.clock.advance(MS);
    let hit = fetch(&cache, "k", &calls, "v2").await.unwrap();
    assert_eq!(
        answered_from(&hit),
        ("v1", Source::L1, HitFreshness::Fresh, true)
    );
    settle().await;
    assert_eq!((calls.get(), cache.stats().refreshes_started), (1, 1));

    let hit = read(&cache, "k", &calls).await;
    assert_eq!(
        answered_from(&hit),
        ("v2", Source::L1, HitFreshness::Fresh, false)
    );
    assert_eq!(calls.get(), 1);
}

/// Behaviour 38: 100 concurrent reads inside the eager-refresh window (the refresh held in its
/// loader) are all answered from L1 with the current value, `Fresh`; exactly one of them
/// started the refresh; the loader runs once, and only the refresh reads the remote tiers.
#[tokio::test(start_paused = true)]
async fn b38_a_hundred_concurrent_reads_in_the_window_start_one_refresh() {
    let (stack, cache) = loaded_then(eager(), 60 * SEC).await;
    let (l2, l3, decodes) = (stack.l2.calls(), stack.l3.calls(), stack.codec.decodes());

    let (calls, gate) = (Calls::default(), Gate::closed());
    let tasks = spawn_fetches(&cache, "k", 100, || gated(&calls, &gate, "v2".to_owned()));
    let hits = hits(tasks).await;
    settle().await;

    assert!(
        hits.iter()
            .all(|hit| (hit.as_str(), hit.source(), hit.freshness())
                == ("v1", Source::L1, HitFreshness::Fresh))
    );
    assert!(hits.iter().all(|hit| hit.flight_id().is_none()));
    assert_eq!(hits.iter().filter(|hit| hit.refresh_started()).count(), 1);
    assert_eq!(calls.get(), 1);
    assert_eq!(
        (stack.l2.calls().get - l2.get, stack.l3.calls().get - l3.get),
        (1, 1),
        "the refresh's own reads only"
    );
    assert_eq!(
        stack.codec.decodes(),
        decodes,
        "the entry it refreshes is not decoded again"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_started, stats.flights, stats.coalesced),
        (1, 1, 0)
    );

    gate.open();
    settle().await;
    assert_eq!(calls.get(), 1);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!((hit.as_str(), hit.refresh_started()), ("v2", false));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 38 (and its normalisation, 61): an eager-refresh threshold outside (0, 1) turns
/// eager refresh off, with one warning per cache: a read at 99% of the TTL starts no refresh.
#[tokio::test(start_paused = true)]
async fn b38_a_threshold_outside_the_open_unit_interval_disables_eager_refresh() {
    let logs = capture(tracing::Level::WARN);
    for (i, (threshold, shown)) in [(0.0, "0"), (1.0, "1"), (1.5, "1.5"), (-0.25, "0")]
        .into_iter()
        .enumerate()
    {
        let stack = Stack::<String>::new();
        let cache = cache_with(
            &stack,
            FetchOptions::new().ttl(100 * SEC).eager_refresh(threshold),
        );
        logs.assert_lines(i + 1, &[NORMALISED, "eager_refresh", "used=off"]);
        logs.assert_line(&[NORMALISED, "eager_refresh", &format!("configured={shown} ")]);
        load(&cache, "k", "v1").await;
        stack.clock.advance(99 * SEC);
        let calls = Calls::default();
        let hit = read(&cache, "k", &calls).await;
        assert_eq!(
            answered(&hit),
            ("v1", HitFreshness::Fresh, false),
            "threshold {threshold}"
        );
        settle().await;
        assert_eq!(calls.get(), 0);
        assert_eq!(cache.stats().refreshes_started, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour 39: triggered by reads only.
// ---------------------------------------------------------------------------------------------

/// Behaviour 39: with eager refresh and SWR configured, a key nobody reads is never refreshed:
/// through its refresh time, its staleness, its SWR window and its expiry (manual clock and
/// tokio's clock both advanced), no flight starts and no tier is read; the key just expires,
/// and the next read is a foreground miss.
#[tokio::test(start_paused = true)]
async fn b39_an_unread_key_is_never_refreshed_and_expires() {
    let (stack, cache) = loaded(swr().eager_refresh(0.5)).await;
    let (l2, l3) = (stack.l2.calls(), stack.l3.calls());
    let loads = cache.stats().loader_calls;

    for step in [31, 30, 28, 1] {
        stack.clock.advance(Duration::from_secs(step));
        tokio::time::advance(Duration::from_secs(step)).await;
        settle().await;
    }
    assert_eq!(cache.stats().refreshes_started, 0);
    assert_eq!(cache.stats().loader_calls, loads);
    assert_eq!(cache.flights_in_progress(), 0);
    assert_eq!((stack.l2.calls(), stack.l3.calls()), (l2, l3));
    assert!(cache.try_get_local("k").is_none(), "expired in L1");
    assert!(stack.l2.peek(&key("k")).is_none(), "expired in L2");

    let calls = Calls::default();
    let hit = fetch(&cache, "k", &calls, "v2").await.unwrap();
    assert_eq!(
        (hit.as_str(), hit.source(), hit.refresh_started()),
        ("v2", Source::Loader, false)
    );
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.flights), (0, 2));
}

// ---------------------------------------------------------------------------------------------
// Behaviour 40: refresh consults the lower tiers first.
// ---------------------------------------------------------------------------------------------

/// Two nodes over the same remote tiers, each with its own L1, with the same defaults.
fn two_nodes(
    defaults: FetchOptions,
) -> (Stack<String>, Cache<String>, Stack<String>, Cache<String>) {
    let a = Stack::<String>::new();
    let b = a.other_node::<String>();
    let (node_a, node_b) = (cache_with(&a, defaults), cache_with(&b, defaults));
    (a, node_a, b, node_b)
}

/// Behaviour 40: node A refreshes the key and writes the new value to L2/L3; node B, in its
/// own eager-refresh window, refreshes by reading L2 first, finds the newer entry and adopts
/// it: B's loader is not called, `refreshes_adopted == 1`, B's L1 holds A's value.
#[tokio::test(start_paused = true)]
async fn b40_a_refresh_adopts_a_newer_entry_another_node_wrote() {
    let (a, node_a, b, node_b) = two_nodes(eager());
    load(&node_a, "k", "v1").await;
    let (calls_a, calls_b) = (Calls::default(), Calls::default());
    let hit = read(&node_b, "k", &calls_b).await;
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "v1"));

    a.clock.advance(60 * SEC);
    start_refresh(&node_a, "k", counting(&calls_a, "v2".to_owned())).await;
    assert_eq!(calls_a.get(), 1);
    let written = a.l2.peek(&key("k")).unwrap();
    assert_eq!(written.created_at(), a.clock.now(), "A wrote L2");
    assert_eq!(node_a.stats().refreshes_adopted, 0);

    let decodes = b.codec.decodes();
    let hit = fetch(&node_b, "k", &calls_b, "b-loader").await.unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Fresh, true));
    settle().await;
    assert_eq!(calls_b.get(), 0, "B's loader is not called");
    let stats = node_b.stats();
    assert_eq!(
        (
            stats.refreshes_started,
            stats.refreshes_adopted,
            stats.loader_calls
        ),
        (1, 1, 0)
    );
    assert_eq!(
        b.codec.decodes() - decodes,
        1,
        "the adopted entry is decoded"
    );
    assert_eq!(b.l1_value("k").as_deref(), Some("v2"));
    let hit = read(&node_b, "k", &calls_b).await;
    assert_eq!(
        (hit.as_str(), hit.source(), hit.meta().created_at()),
        ("v2", Source::L1, written.created_at())
    );
    assert_eq!(calls_b.get(), 0);
}

/// Behaviour 40: an entry newer than L1's that only L3 holds (a node without L2 wrote it) is
/// adopted too, after L2's older copy is passed over; the adoption refills L2.
#[tokio::test(start_paused = true)]
async fn b40_a_refresh_adopts_a_newer_entry_from_l3_and_refills_l2() {
    let (a, node_a, b, node_b) = two_nodes(eager());
    load(&node_a, "k", "v1").await;
    let calls = Calls::default();
    read(&node_b, "k", &calls).await;

    a.clock.advance(60 * SEC);
    let l3_writer = a.builder_over(false, false, true).defaults(eager()).build();
    l3_writer.set("k", "v2".to_owned()).await.unwrap();
    let now = a.clock.now();
    assert_eq!(a.l3.peek(&key("k")).unwrap().created_at(), now);
    assert!(
        a.l2.peek(&key("k")).unwrap().created_at() < now,
        "L2 kept v1"
    );

    start_refresh(&node_b, "k", counting(&calls, "b-loader".to_owned())).await;
    assert_eq!(calls.get(), 0, "B's loader is not called");
    assert_eq!(node_b.stats().refreshes_adopted, 1);
    assert_eq!(b.l1_value("k").as_deref(), Some("v2"));
    assert_eq!(
        a.l2.peek(&key("k")).unwrap().created_at(),
        now,
        "the L3 hit refilled L2"
    );
}

/// A refresh started by `get` (no loader) finds in L2 only the very entry it refreshes, still
/// fresh, while L1 evicted the key: a `get` that joined the refresh meanwhile gets that value
/// from L2, as it would have without the refresh, not `None`.
#[tokio::test(start_paused = true)]
async fn a_get_joining_a_refresh_without_a_loader_gets_the_value_l2_holds_fresh() {
    let (stack, cache) = loaded_then(eager(), 60 * SEC).await;
    let (l2, l3) = (stack.l2.calls().get, stack.l3.calls().get);
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Fresh, true));
    // The refresh is queued, not run yet; L1 evicts the key.
    assert_eq!(cache.flights_in_progress(), 1);
    stack.l1.remove(&key("k"));

    let joined = cache.get("k").await.unwrap();
    let joined = joined.expect("L2 holds the value fresh");
    assert_eq!(
        (joined.as_str(), joined.source(), joined.freshness()),
        ("v1", Source::L2, HitFreshness::Fresh)
    );
    assert!(joined.is_coalesced(), "it joined the refresh");
    assert_eq!(
        (stack.l2.calls().get - l2, stack.l3.calls().get - l3),
        (1, 1),
        "the refresh's reads only"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_started, stats.coalesced, stats.loader_calls),
        (1, 1, 1),
        "the first load only: {stats:?}"
    );
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 40: an entry that is not newer than L1's (the very entry L1 holds, still in L2 and
/// L3) is not adopted: the refresh reads both tiers once and calls the loader.
#[tokio::test(start_paused = true)]
async fn b40_the_same_entry_is_not_adopted_and_the_loader_runs() {
    let (a, node_a, b, node_b) = two_nodes(eager());
    load(&node_a, "k", "v1").await;
    let calls = Calls::default();
    read(&node_b, "k", &calls).await;
    a.clock.advance(60 * SEC);
    let (l2, l3) = (a.l2.calls(), a.l3.calls());

    start_refresh(&node_b, "k", counting(&calls, "v2".to_owned())).await;
    assert_eq!(calls.get(), 1, "B's loader runs");
    assert_eq!(
        (a.l2.calls().get - l2.get, a.l3.calls().get - l3.get),
        (1, 1)
    );
    let stats = node_b.stats();
    assert_eq!((stats.refreshes_adopted, stats.loader_calls), (0, 1));
    assert_eq!(b.l1_value("k").as_deref(), Some("v2"));
    assert_eq!(
        a.l2.peek(&key("k")).unwrap().created_at(),
        a.clock.now(),
        "B's value is written back"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour 41: a failed refresh keeps the value, is counted and backs off.
// ---------------------------------------------------------------------------------------------

/// Behaviour 41 (eager refresh): the refresh's loader fails: the current value stays (fresh),
/// the failure is counted (`refreshes_failed`), and reads during `refresh_backoff` (10 s) start
/// no refresh; at its end, exactly one more starts however many reads come.
#[tokio::test(start_paused = true)]
async fn b41_a_failed_eager_refresh_keeps_the_value_and_backs_off() {
    let (stack, cache) = loaded_then(eager().refresh_backoff(10 * SEC), 60 * SEC).await;

    let calls = Calls::default();
    let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
    assert_eq!((hit.as_str(), hit.refresh_started()), ("v1", true));
    settle().await;
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_failed, stats.loader_errors),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stack.l1_value("k").as_deref(), Some("v1"));
    assert_eq!(cache.flights_in_progress(), 0);

    for step in [Duration::ZERO, 5 * SEC, 5 * SEC - MS] {
        stack.clock.advance(step);
        let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
        assert_eq!(answered(&hit), ("v1", HitFreshness::Fresh, false));
        settle().await;
        assert_eq!(calls.get(), 1, "backing off");
    }

    stack.clock.advance(MS);
    let mut started = 0;
    for _ in 0..5 {
        let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
        assert_eq!(hit.as_str(), "v1");
        started += usize::from(hit.refresh_started());
    }
    settle().await;
    assert_eq!((started, calls.get()), (1, 2));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (2, 2));
    assert_eq!(stack.l1_value("k").as_deref(), Some("v1"));
}

/// Behaviour 41 (stale-while-revalidate): a failed revalidation keeps serving the stale value
/// `Revalidating` within the window, backs off (no refresh for 10 s), then retries once, and a
/// successful retry stores the new value.
#[tokio::test(start_paused = true)]
async fn b41_a_failed_revalidation_keeps_the_stale_value_and_backs_off() {
    let (stack, cache) = loaded_then(swr().refresh_backoff(10 * SEC), 65 * SEC).await;

    let calls = Calls::default();
    let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Revalidating, true));
    settle().await;
    assert_eq!((calls.get(), cache.stats().refreshes_failed), (1, 1));

    stack.clock.advance(10 * SEC - MS);
    let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Revalidating, false));
    settle().await;
    assert_eq!(calls.get(), 1);

    stack.clock.advance(MS);
    let hit = fetch(&cache, "k", &calls, "v2").await.unwrap();
    assert_eq!(answered(&hit), ("v1", HitFreshness::Revalidating, true));
    settle().await;
    assert_eq!(calls.get(), 2);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!((hit.as_str(), hit.freshness()), ("v2", HitFreshness::Fresh));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_failed), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// Behaviour 42: a refresh result is discarded when the entry changed meanwhile.
// ---------------------------------------------------------------------------------------------

/// Starts a refresh of `k` (L1 must be in its eager window) held in its loader on `gate`,
/// whose answer is "refreshed", and lets it reach the loader.
async fn held_refresh(cache: &Cache<String>, k: &str, calls: &Calls, gate: &Gate) {
    start_refresh(cache, k, gated(calls, gate, "refreshed".to_owned())).await;
    assert_eq!(calls.get(), 1);
}

/// Behaviour 42: a `set(v2)` while a refresh is inside its loader wins: once the refresh's
/// loader answers, its value is stored nowhere; L1, L2 and L3 hold v2 (one remote write each,
/// the set's).
#[tokio::test(start_paused = true)]
async fn b42_a_set_during_a_refresh_discards_the_refresh_result() {
    let (stack, cache) = loaded_then(eager(), 60 * SEC).await;
    let (calls, gate) = (Calls::default(), Gate::closed());
    held_refresh(&cache, "k", &calls, &gate).await;

    stack.clock.advance(SEC);
    let set_at = stack.clock.now();
    cache.set("k", "v2".to_owned()).await.unwrap();
    settle().await;
    let writes = (stack.l2.calls().set, stack.l3.calls().set);
    assert_eq!(writes, (2, 2), "the load's and the set's");

    stack.clock.advance(SEC);
    gate.open();
    settle().await;
    assert_eq!(stack.l1_value("k").as_deref(), Some("v2"));
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), writes);
    assert_eq!(stack.l2.peek(&key("k")).unwrap().created_at(), set_at);
    assert_eq!(stack.l3.peek(&key("k")).unwrap().created_at(), set_at);
    let other = stack.other_node::<String>();
    let hit = read(&other.cache(), "k", &calls).await;
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "v2"));
    let hit = read(&cache, "k", &calls).await;
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "v2"));
    let stats = cache.stats();
    assert_eq!((stats.superseded, stats.refreshes_discarded), (1, 1));
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 42: a `remove` while a refresh is inside its loader wins: the refresh's value is
/// stored nowhere, and the next read is a foreground miss.
#[tokio::test(start_paused = true)]
async fn b42_a_remove_during_a_refresh_discards_the_refresh_result() {
    let (stack, cache) = loaded_then(eager(), 60 * SEC).await;
    let (calls, gate) = (Calls::default(), Gate::closed());
    held_refresh(&cache, "k", &calls, &gate).await;

    cache.remove("k").await.unwrap();
    gate.open();
    settle().await;
    assert_stored_in_no_tier(&stack, "k");
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (1, 1),
        "the load's only"
    );
    assert_eq!(cache.stats().refreshes_discarded, 1);
    let hit = fetch(&cache, "k", &calls, "v3").await.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v3"));
    assert_eq!(calls.get(), 2);
}

/// Behaviour 42, as tierkit decides it for evictions: L1 evicts the entry while its refresh is
/// inside the loader; no `set` or `remove` happened, so nothing newer than the refresh's value
/// exists anywhere, and the refresh stores it (L1 and both remote tiers). Only a `set` or
/// `remove` discards a refresh (the two tests above); the read-through docs say why.
#[tokio::test(start_paused = true)]
async fn b42_an_eviction_during_a_refresh_does_not_discard_its_fresh_result() {
    let (stack, cache) = loaded_then(eager(), 60 * SEC).await;
    let (calls, gate) = (Calls::default(), Gate::closed());
    held_refresh(&cache, "k", &calls, &gate).await;

    stack.l1.remove(&key("k"));
    gate.open();
    settle().await;
    assert_eq!(
        stack.l1_value("k").as_deref(),
        Some("refreshed"),
        "stored in L1"
    );
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (2, 2),
        "written back to both remote tiers"
    );
    assert_eq!(cache.stats().refreshes_discarded, 0);
}

// ---------------------------------------------------------------------------------------------
// Behaviour 43: the SWR window.
// ---------------------------------------------------------------------------------------------

/// Behaviour 43: within the SWR window (from `stale_at`, 60 s, to 90 s), a read returns the
/// stale value at once (no virtual time passes, though the loader is held), flagged
/// `Revalidating`, and starts one refresh; further reads in the window, up to its last
/// millisecond, get the same answer and start none; once the refresh lands, reads are fresh.
#[tokio::test(start_paused = true)]
async fn b43_within_the_window_a_read_returns_stale_at_once_and_starts_one_refresh() {
    let (stack, cache) = loaded(swr()).await;
    let (calls, gate) = (Calls::default(), Gate::closed());

    stack.clock.advance(60 * SEC - MS);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!(
        (hit.freshness(), hit.refresh_started()),
        (HitFreshness::Fresh, false)
    );

    stack.clock.advance(MS);
    let start = Instant::now();
    let hit = cache
        .get_or_fetch("k", gated(&calls, &gate, "v2".to_owned()))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        answered_from(&hit),
        ("v1", Source::L1, HitFreshness::Revalidating, true)
    );
    settle().await;
    assert_eq!(calls.get(), 1);

    for step in [Duration::ZERO, 15 * SEC, 15 * SEC - MS] {
        stack.clock.advance(step);
        let hit = cache
            .get_or_fetch("k", gated(&calls, &gate, "other".to_owned()))
            .await
            .unwrap();
        assert_eq!(answered(&hit), ("v1", HitFreshness::Revalidating, false));
    }
    settle().await;
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().refreshes_started, 1);

    gate.open();
    settle().await;
    let hit = read(&cache, "k", &calls).await;
    assert_eq!(answered(&hit), ("v2", HitFreshness::Fresh, false));
    assert_eq!(calls.get(), 1);
}

/// Fresh for 60 s, SWR window to 90 s, fail-safe reserve to 600 s.
fn swr_with_fail_safe() -> FetchOptions {
    swr()
        .fail_safe(true)
        .fail_safe_max(Duration::from_secs(600))
}

/// Behaviour 43: past the SWR window but before `expires_at` (fail-safe keeps the entry), a
/// read does not get the stale value at once: it waits for a foreground flight's loader and
/// gets the new value; no refresh is started.
#[tokio::test(start_paused = true)]
async fn b43_past_the_window_a_read_waits_for_the_loader() {
    let (_, cache) = loaded_then(swr_with_fail_safe(), 90 * SEC).await;

    let (calls, gate) = (Calls::default(), Gate::closed());
    let task = spawn_fetch(&cache, "k", gated(&calls, &gate, "v2".to_owned()));
    settle().await;
    assert!(!task.is_finished(), "it waits for the loader");
    assert_eq!(calls.get(), 1);
    gate.open();
    let hit = task.await.unwrap().unwrap();
    assert_eq!(
        answered_from(&hit),
        ("v2", Source::Loader, HitFreshness::Fresh, false)
    );
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.flights), (0, 2));
}

/// Behaviour 43: past the SWR window, when the loader the read waits for fails, fail-safe is
/// the backstop: the read gets the stale value flagged `Stale(FailSafe{LoaderError})`, with the
/// error it hid.
#[tokio::test(start_paused = true)]
async fn b43_past_the_window_fail_safe_is_the_backstop() {
    let (_, cache) = loaded_then(swr_with_fail_safe(), 95 * SEC).await;

    let calls = Calls::default();
    let hit = cache.get_or_fetch("k", failing(&calls)).await.unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(hit.as_str(), "v1");
    assert_eq!(
        hit.freshness(),
        HitFreshness::Stale(StaleCause::FailSafe {
            cause: FailSafeCause::LoaderError,
            throttled: false
        })
    );
    assert!(matches!(
        hit.suppressed_error(),
        Some(CacheError::Loader(_))
    ));
    assert!(!hit.refresh_started());
    let stats = cache.stats();
    assert_eq!(
        (stats.fail_safe_activations[0], stats.refreshes_started),
        (1, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour 44: a stuck refresh never extends service past expires_at.
// ---------------------------------------------------------------------------------------------

/// Behaviour 44 (SWR alone: `expires_at` is the end of the window, 90 s): the refresh's loader
/// hangs. Reads up to the window's last millisecond get the stale value `Revalidating`; from
/// `expires_at` on, no read gets it: L1 has nothing, and a read joins the stuck refresh and
/// gets its own hard timeout, never the old value.
#[tokio::test(start_paused = true)]
async fn b44_a_stuck_refresh_never_extends_service_past_expires_at() {
    let (stack, cache) = loaded(
        swr()
            .hard_timeout(SEC)
            .background_cap(Duration::from_secs(3600)),
    )
    .await;
    let expires_at = stack.l1.peek(&key("k")).unwrap().meta().expires_at();
    assert_eq!(expires_at, at(stack.clock.now(), 90 * SEC));

    stack.clock.advance(70 * SEC);
    let (calls, gate) = (Calls::default(), Gate::closed());
    start_refresh(&cache, "k", gated(&calls, &gate, "v2".to_owned())).await;

    stack.clock.advance(20 * SEC - MS);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!(
        (hit.as_str(), hit.freshness()),
        ("v1", HitFreshness::Revalidating)
    );

    stack.clock.advance(MS);
    assert_eq!(stack.clock.now(), expires_at);
    assert!(cache.try_get_local("k").is_none());
    let error = fetch(&cache, "k", &calls, "foreground").await.unwrap_err();
    assert_hard_timeout(&error);
    let stale_read = cache
        .get_with("k", &FetchOptions::new().allow_stale(true))
        .await;
    assert!(
        matches!(stale_read, Err(CacheError::Timeout { .. })),
        "{stale_read:?}"
    );
    assert_eq!(calls.get(), 1, "only the stuck refresh's loader ran");
    assert_eq!(cache.flights_in_progress(), 1, "still stuck");
    drop(gate);
}

/// Behaviour 44 (with fail-safe, `expires_at` at 120 s): while the refresh is stuck, a read past
/// the SWR window but before `expires_at` may still get the old value as fail-safe (at its hard
/// timeout); from `expires_at` on it gets the timeout error, never the old value.
#[tokio::test(start_paused = true)]
async fn b44_a_stuck_refresh_with_fail_safe_stops_serving_at_expires_at() {
    let (stack, cache) = loaded(
        swr()
            .fail_safe(true)
            .fail_safe_max(120 * SEC)
            .hard_timeout(SEC)
            .background_cap(Duration::from_secs(3600)),
    )
    .await;
    let t0 = stack.clock.now();
    stack.clock.advance(70 * SEC);
    let (calls, gate) = (Calls::default(), Gate::closed());
    start_refresh(&cache, "k", gated(&calls, &gate, "v2".to_owned())).await;

    stack.clock.advance(49 * SEC);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!(hit.as_str(), "v1");
    assert_eq!(
        hit.freshness(),
        HitFreshness::Stale(StaleCause::HardTimeout)
    );

    stack.clock.advance(SEC);
    assert_eq!(stack.clock.now(), at(t0, 120 * SEC));
    let error = fetch(&cache, "k", &calls, "foreground").await.unwrap_err();
    assert_hard_timeout(&error);
    assert_eq!(calls.get(), 1);
    drop(gate);
}

// ---------------------------------------------------------------------------------------------
// Behaviours 58 and 59: jitter.
// ---------------------------------------------------------------------------------------------

/// A jitter source answering a fixed duration (even above `max`, to test the clamping), and
/// recording the `max` of every draw.
#[derive(Clone, Debug)]
struct FixedJitter {
    value: Duration,
    maxes: Arc<Mutex<Vec<Duration>>>,
}

impl FixedJitter {
    fn new(value: Duration) -> Self {
        FixedJitter {
            value,
            maxes: Arc::default(),
        }
    }

    fn maxes(&self) -> Vec<Duration> {
        self.maxes.lock().unwrap().clone()
    }
}

impl JitterSource for FixedJitter {
    fn jitter(&self, max: Duration) -> Duration {
        self.maxes.lock().unwrap().push(max);
        self.value
    }
}

/// The cache over all three tiers of `stack` with `defaults`, drawing its jitter from `source`.
fn jittered_cache(
    stack: &Stack<String>,
    defaults: FetchOptions,
    source: FixedJitter,
) -> Cache<String> {
    stack
        .tiered_builder()
        .defaults(defaults)
        .jitter(source)
        .build()
}

/// Asserts that L2 and L3 hold "k" with `(stale_at, expires_at)`.
#[track_caller]
fn assert_remote_stale_and_expiry(stack: &Stack<String>, want: (Timestamp, Timestamp)) {
    for tier in [&stack.l2, &stack.l3] {
        let stored = tier.peek(&key("k")).unwrap();
        assert_eq!((stored.stale_at(), stored.expires_at()), want);
    }
}

/// Fresh for 60 s, up to 10 s of jitter.
fn jittered() -> FetchOptions {
    FetchOptions::new().ttl(60 * SEC).jitter_max(10 * SEC)
}

/// Behaviour 58: the jitter (7 s, drawn once from the injected source with `max = jitter_max`)
/// extends the freshness of the L1 entry only: L1 treats the value as fresh until
/// `stale_at + 7 s`, while L1's timestamps and L2/L3's `stale_at` stay exactly
/// `created_at + ttl`; another node refilling from L2 keeps that exact `stale_at` and draws
/// its own L1 jitter.
#[tokio::test(start_paused = true)]
async fn b58_jitter_applies_to_l1_freshness_only() {
    let stack = Stack::<String>::new();
    let source = FixedJitter::new(7 * SEC);
    let cache = jittered_cache(&stack, jittered(), source.clone());
    let t0 = stack.clock.now();
    load(&cache, "k", "v1").await;
    assert_eq!(source.maxes(), [10 * SEC]);

    let entry = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(entry.meta().stale_at(), at(t0, 60 * SEC));
    assert_eq!(entry.meta().expires_at(), at(t0, 70 * SEC));
    assert_eq!(entry.state().fresh_until(), at(t0, 67 * SEC));
    assert_remote_stale_and_expiry(&stack, (at(t0, 60 * SEC), at(t0, 70 * SEC)));

    // Another node refills from L2 with the exact remaining freshness, plus its own jitter.
    stack.clock.advance(30 * SEC);
    let other = stack.other_node::<String>();
    let other_source = FixedJitter::new(2 * SEC);
    let node_b = jittered_cache(&other, jittered(), other_source.clone());
    let calls = Calls::default();
    assert_eq!(read(&node_b, "k", &calls).await.source(), Source::L2);
    let refilled = other.l1.peek(&key("k")).unwrap();
    assert_eq!(refilled.meta().stale_at(), at(t0, 60 * SEC));
    assert_eq!(refilled.state().fresh_until(), at(t0, 62 * SEC));
    assert_eq!(other_source.maxes(), [10 * SEC]);

    // L1 answers fresh through the jitter, and only until its end.
    stack.clock.advance(37 * SEC - MS);
    let hit = read(&cache, "k", &calls).await;
    assert_eq!(
        (hit.source(), hit.freshness()),
        (Source::L1, HitFreshness::Fresh)
    );
    assert_eq!(calls.get(), 0);
    stack.clock.advance(MS);
    assert!(cache.try_get_local("k").is_none());
    let hit = fetch(&cache, "k", &calls, "v2").await.unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "v2"));
    assert_eq!(calls.get(), 1, "L2 and L3 were stale at 60 s: no refill");
}

/// Behaviour 58: jitter never pushes the L1 freshness past `expires_at`: a draw of exactly
/// `jitter_max` ends freshness at `expires_at`, and a source answering more than `max` (1 h) is
/// clamped to it; at `expires_at` L1 has nothing.
#[tokio::test(start_paused = true)]
async fn b58_jitter_never_extends_freshness_past_expires_at() {
    for drawn in [10 * SEC, Duration::from_secs(3600)] {
        let stack = Stack::<String>::new();
        let cache = jittered_cache(&stack, jittered(), FixedJitter::new(drawn));
        let t0 = stack.clock.now();
        load(&cache, "k", "v1").await;
        let entry = stack.l1.peek(&key("k")).unwrap();
        assert_eq!(entry.meta().expires_at(), at(t0, 70 * SEC));
        assert_eq!(entry.state().fresh_until(), at(t0, 70 * SEC), "{drawn:?}");

        stack.clock.advance(70 * SEC - MS);
        let calls = Calls::default();
        let hit = read(&cache, "k", &calls).await;
        assert_eq!(
            (hit.source(), hit.freshness()),
            (Source::L1, HitFreshness::Fresh)
        );
        stack.clock.advance(MS);
        assert!(cache.try_get_local("k").is_none(), "{drawn:?}");
    }
}

/// Behaviour 58: the jitter is drawn within [0, `jitter_max`], `jitter_max` defaulting to 5% of
/// the TTL (the source is asked with `max = 5 s` for a 100 s TTL); the default source,
/// `RandomJitter`, draws uniformly within [0, max] (20,000 draws in 10 buckets, each within
/// +-30% of its expected count, i.e. more than 14 standard deviations) and answers zero for a
/// zero max.
#[tokio::test(start_paused = true)]
async fn b58_jitter_is_drawn_uniformly_within_zero_and_jitter_max() {
    let stack = Stack::<String>::new();
    let source = FixedJitter::new(Duration::ZERO);
    let cache = Cache::builder(Arc::clone(&stack.l1), stack.codec.clone())
        .clock(tierkit_core::Clock::from(stack.clock.clone()))
        .defaults(FetchOptions::new().ttl(100 * SEC))
        .jitter(source.clone())
        .build();
    load(&cache, "k", "v1").await;
    assert_eq!(source.maxes(), [5 * SEC]);

    assert_eq!(RandomJitter.jitter(Duration::ZERO), Duration::ZERO);
    let max = Duration::from_millis(999);
    let mut buckets = [0_u32; 10];
    for _ in 0..20_000 {
        let drawn = RandomJitter.jitter(max);
        assert!(drawn <= max, "{drawn:?}");
        buckets[usize::try_from(drawn.as_millis() / 100).unwrap()] += 1;
    }
    assert!(
        buckets.iter().all(|&n| (1_400..=2_600).contains(&n)),
        "{buckets:?}"
    );
}

/// Behaviour 59: with `jitter_remote(true)`, the jitter (7 s, drawn once) moves the `stale_at`
/// written to every tier: L2, L3 and L1's timestamps say `created_at + ttl + 7 s` (L1 does not
/// add it a second time), `expires_at` does not move, and another node refilling from L2 gets
/// the jittered freshness.
#[tokio::test(start_paused = true)]
async fn b59_jitter_remote_moves_the_stale_at_of_the_remote_tiers_too() {
    let stack = Stack::<String>::new();
    let source = FixedJitter::new(7 * SEC);
    let cache = jittered_cache(&stack, jittered().jitter_remote(true), source.clone());
    let t0 = stack.clock.now();
    load(&cache, "k", "v1").await;
    assert_eq!(source.maxes(), [10 * SEC], "drawn once");

    assert_remote_stale_and_expiry(&stack, (at(t0, 67 * SEC), at(t0, 70 * SEC)));
    let entry = stack.l1.peek(&key("k")).unwrap();
    assert_eq!(entry.meta().stale_at(), at(t0, 67 * SEC));
    assert_eq!(entry.state().fresh_until(), at(t0, 67 * SEC));

    stack.clock.advance(66 * SEC);
    let other = stack.other_node::<String>();
    let node_b = jittered_cache(
        &other,
        jittered().jitter_remote(true),
        FixedJitter::new(SEC),
    );
    let calls = Calls::default();
    let hit = read(&node_b, "k", &calls).await;
    assert_eq!(
        (hit.source(), hit.freshness(), hit.as_str()),
        (Source::L2, HitFreshness::Fresh, "v1"),
        "L2 is fresh past created_at + ttl"
    );
    assert_eq!(
        other.l1.peek(&key("k")).unwrap().state().fresh_until(),
        at(t0, 67 * SEC)
    );
    assert_eq!(calls.get(), 0);
}

/// A `get_or_fetch` built outside any runtime (as `runtime.block_on(cache.get_or_fetch(..))`
/// does) starts its refresh when the runtime polls it: the hit is served at once, flagged, and
/// the refresh runs on that runtime.
#[test]
fn a_refresh_starts_in_the_runtime_that_polls_the_read() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = Stack::<String>::new();
    let cache = runtime.block_on(async {
        let cache = cache_with(&stack, swr());
        load(&cache, "k", "v1").await;
        cache
    });
    stack.clock.advance(61 * SEC);
    let calls = Calls::default();
    // Built here, outside the runtime; polled inside it.
    let read = cache.get_or_fetch("k", counting(&calls, "v2".to_owned()));
    let hit = runtime.block_on(read).unwrap();
    assert_eq!(hit.as_str(), "v1");
    assert_eq!(hit.freshness(), HitFreshness::Revalidating);
    assert!(hit.refresh_started(), "the refresh started");
    runtime.block_on(settle());
    assert_eq!(calls.get(), 1, "the refresh loaded once");
    let hit = runtime
        .block_on(cache.get_or_fetch("k", counting(&calls, "unused".to_owned())))
        .unwrap();
    assert_eq!((hit.as_str(), hit.source()), ("v2", Source::L1));
}
