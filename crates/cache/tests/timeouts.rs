//! Read-through behaviours 24-29: the hard timeout, background completion and its cap,
//! background completion turned off, tier read timeouts, per-waiter deadlines.
//!
//! Behaviour 23 (the soft timeout) is not covered here: it needs fail-safe, which does not
//! exist yet. Every test runs on tokio's paused clock, so a timeout fires at exactly its
//! deadline and the elapsed virtual time is compared with `==`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Calls, Stack, key, settle};
use tierkit_cache::{
    CacheError, CancellationToken, DEFAULT_HARD_TIMEOUT, DEFAULT_TIER_TIMEOUT, FetchContext,
    FetchOptions, Source, TimeoutKind,
};
use tierkit_core::{ErrorKind, Op};
use tierkit_testkit::{Fault, FaultyBackend};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Sets its flag when dropped: put one inside a loader future to see the future dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What a loader leaves behind for the test: its cancellation token and whether its future
/// was dropped.
#[derive(Clone, Default)]
struct Probe {
    token: Arc<Mutex<Option<CancellationToken>>>,
    dropped: Arc<AtomicBool>,
}

impl Probe {
    fn cancelled(&self) -> bool {
        self.token
            .lock()
            .unwrap()
            .as_ref()
            .expect("the loader ran")
            .is_cancelled()
    }

    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    /// A loader that records its token, counts its call, sleeps `delay` and then returns
    /// `value` (never, for `None`); its future holds a drop flag.
    fn loader(
        &self,
        calls: &Calls,
        delay: Option<Duration>,
        value: &str,
    ) -> impl FnOnce(
        FetchContext,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<String, std::io::Error>> + Send>,
    > + Send
    + 'static {
        let (probe, calls, value) = (self.clone(), calls.clone(), value.to_owned());
        move |ctx: FetchContext| {
            calls.bump();
            *probe.token.lock().unwrap() = Some(ctx.cancellation().clone());
            let flag = DropFlag(Arc::clone(&probe.dropped));
            Box::pin(async move {
                let _flag = flag;
                match delay {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending::<()>().await,
                }
                Ok(value)
            })
        }
    }
}

/// A loader that counts its call and answers `value` at once.
fn instant(
    calls: &Calls,
    value: &'static str,
) -> impl FnOnce(FetchContext) -> std::future::Ready<Result<String, std::io::Error>> + Send + 'static
{
    let calls = calls.clone();
    move |_| {
        calls.bump();
        std::future::ready(Ok(value.to_owned()))
    }
}

fn is_timeout(error: &CacheError, want: TimeoutKind, after: Duration) -> bool {
    matches!(error, CacheError::Timeout { kind, after: got } if *kind == want && *got == after)
}

/// Behaviour 24: without a fallback, a waiter whose loader does not answer gets
/// `Err(Timeout{Hard})` at exactly its hard timeout (virtual time), both with a per-call
/// hard timeout and with the built-in one.
#[tokio::test(start_paused = true)]
async fn b24_hard_timeout_always_applies() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let probe = Probe::default();

    let start = Instant::now();
    let error = cache
        .get_or_fetch_with(
            "slow",
            &FetchOptions::new().hard_timeout(100 * MS),
            probe.loader(&calls, None, "never"),
        )
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 100 * MS), "{error:?}");
    assert_eq!(
        start.elapsed(),
        100 * MS,
        "the waiter is released at its hard timeout"
    );
    assert_eq!(calls.get(), 1);

    // No per-call option: the built-in hard timeout.
    let start = Instant::now();
    let error = cache
        .get_or_fetch("slow-default", || {
            std::future::pending::<Result<String, std::io::Error>>()
        })
        .await
        .unwrap_err();
    assert!(
        is_timeout(&error, TimeoutKind::Hard, DEFAULT_HARD_TIMEOUT),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), DEFAULT_HARD_TIMEOUT);
}

/// Behaviour 25: background completion is on by default: after the waiter's hard timeout the
/// loader keeps running, its value is stored in every tier, and a later call hits L1 with one
/// loader call in total.
#[tokio::test(start_paused = true)]
async fn b25_background_completion_stores_the_late_value() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let probe = Probe::default();
    // The default background cap is 4 x 100 ms: the loader's 300 ms fit in it.
    let options = FetchOptions::new().hard_timeout(100 * MS);

    let start = Instant::now();
    let error = cache
        .get_or_fetch_with("k", &options, probe.loader(&calls, Some(300 * MS), "late"))
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 100 * MS), "{error:?}");
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
    assert_eq!(
        stack
            .l1
            .peek(&key("k"))
            .map(|e| e.value().as_str().to_owned()),
        Some("late".to_owned())
    );
    assert!(stack.l2.peek(&key("k")).is_some());
    assert!(stack.l3.peek(&key("k")).is_some());

    let hit = cache
        .get_or_fetch_with("k", &options, instant(&calls, "again"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L1, "late"));
    assert_eq!(calls.get(), 1, "one loader call in total");
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

    let error = cache
        .get_or_fetch_with("k", &options, {
            let calls = calls.clone();
            move |_| async move {
                calls.bump();
                tokio::time::sleep(200 * MS).await;
                Err::<String, _>(std::io::Error::other("origin down"))
            }
        })
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 100 * MS), "{error:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let stats = cache.stats();
    assert_eq!((stats.loader_calls, stats.loader_errors), (1, 1));
    assert_eq!(cache.flights_in_progress(), 0);
    assert!(stack.l1.peek(&key("k")).is_none());
    assert!(stack.l2.peek(&key("k")).is_none());
    assert!(stack.l3.peek(&key("k")).is_none());

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
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let probe = Probe::default();
    let t0 = Instant::now();

    // The starter: hard timeout 100 ms, cap 300 ms, a loader that never answers.
    let error = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new()
                .hard_timeout(100 * MS)
                .background_cap(300 * MS),
            probe.loader(&calls, None, "never"),
        )
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 100 * MS), "{error:?}");
    assert_eq!(t0.elapsed(), 100 * MS);
    assert_eq!(cache.flights_in_progress(), 1);
    assert!(!probe.cancelled() && !probe.dropped());

    // A caller joining at 200 ms with a 50 ms hard timeout leaves at 250 ms, before the cap.
    tokio::time::sleep_until(t0 + 200 * MS).await;
    let joined = Instant::now();
    let error = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().hard_timeout(50 * MS),
            instant(&calls, "joiner"),
        )
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 50 * MS), "{error:?}");
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
    let error = cache
        .get_or_fetch_with(
            "k",
            &FetchOptions::new().hard_timeout(Duration::from_secs(10)),
            instant(&calls, "joiner"),
        )
        .await
        .unwrap_err();
    assert!(
        is_timeout(&error, TimeoutKind::BackgroundCap, 300 * MS),
        "{error:?}"
    );
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
    assert!(stack.l1.peek(&key("k")).is_none(), "nothing stored");
    assert!(stack.l2.peek(&key("k")).is_none());
    assert!(stack.l3.peek(&key("k")).is_none());

    // The key is free: the next call starts a new flight.
    let hit = cache
        .get_or_fetch_with("k", &FetchOptions::new(), instant(&calls, "fresh"))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "fresh"));
    assert_eq!(cache.stats().flights, 2);
}

/// Behaviour 27: with `background_completion(false)`, the loader's token fires at the hard
/// timeout, its future is dropped, and nothing is stored.
#[tokio::test(start_paused = true)]
async fn b27_without_background_completion_the_loader_is_cancelled_at_the_hard_timeout() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let probe = Probe::default();
    let options = FetchOptions::new()
        .hard_timeout(100 * MS)
        .background_completion(false);

    let start = Instant::now();
    // The loader would answer at 200 ms, after the hard timeout.
    let error = cache
        .get_or_fetch_with("k", &options, probe.loader(&calls, Some(200 * MS), "late"))
        .await
        .unwrap_err();
    assert!(is_timeout(&error, TimeoutKind::Hard, 100 * MS), "{error:?}");
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
    assert!(stack.l1.peek(&key("k")).is_none(), "nothing stored");
    assert!(stack.l2.peek(&key("k")).is_none());
    assert!(stack.l3.peek(&key("k")).is_none());
    let hit = cache
        .get_or_fetch_with("k", &options, instant(&calls, "v"))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    assert_eq!(calls.get(), 2);
}

/// A stack whose L2 is a [`FaultyBackend`] over the stack's memory L2.
fn faulty_l2(
    stack: &Stack<String>,
) -> (
    tierkit_cache::Cache<String>,
    FaultyBackend<tierkit_testkit::MemoryBackend>,
) {
    let l2 = FaultyBackend::new(stack.l2.clone());
    let cache = stack.builder().l2(l2.clone()).l3(stack.l3.clone()).build();
    (cache, l2)
}

/// Behaviour 28 (hard tier timeout only: tiers have no soft timeout yet): an L2 read that
/// hangs past `tier_timeout` counts as a miss, and the flight goes on to L3.
#[tokio::test(start_paused = true)]
async fn b28_a_timed_out_tier_read_is_a_miss_and_the_flight_continues_to_l3() {
    let stack = Stack::<String>::new();
    let (cache, l2) = faulty_l2(&stack);
    // The value is in L3 only.
    cache
        .set_with(
            "k",
            "from-l3".to_owned(),
            &FetchOptions::new().skip_l1_write(true).skip_l2_write(true),
        )
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
    let stack = Stack::<String>::new();
    let l2 = FaultyBackend::new(stack.l2.clone());
    let l3 = FaultyBackend::new(stack.l3.clone());
    let cache = stack.builder().l2(l2.clone()).l3(l3.clone()).build();
    l2.push(Op::Get, Fault::Hang);
    l3.push(Op::Get, Fault::Delay(Duration::from_secs(60)));
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
    let (cache, l2) = faulty_l2(&stack);
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
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let probe = Probe::default();
    let options = FetchOptions::new().hard_timeout(100 * MS);
    let t0 = Instant::now();

    // The flight's loader answers at 250 ms (within the default cap of 400 ms).
    let first = tokio::spawn({
        let (cache, loader) = (cache.clone(), probe.loader(&calls, Some(250 * MS), "v"));
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
    assert!(is_timeout(
        &result.unwrap_err(),
        TimeoutKind::Hard,
        100 * MS
    ));
    assert_eq!(at, t0 + 100 * MS);

    // Arrived at 80 ms: released at 180 ms, not at the flight's 100 ms.
    let (result, at) = second.await.unwrap();
    assert!(is_timeout(
        &result.unwrap_err(),
        TimeoutKind::Hard,
        100 * MS
    ));
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
