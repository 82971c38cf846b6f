//! Every option value is accepted: durations from zero to `Duration::MAX`, sizes from zero to
//! `usize::MAX`, thresholds that are not numbers. `get_or_fetch`, `get`, `set` and `remove`
//! answer (a value or a typed error) and never panic, neither in the caller nor in a flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::{Calls, Stack, counting, key};
use tierkit_cache::{AbandonPolicy, Cache, Compression, FetchOptions, Fetched, Source, WriteMode};

/// A loader that fails at once.
fn failing() -> std::future::Ready<Result<String, std::io::Error>> {
    std::future::ready(Err(std::io::Error::other("origin down")))
}

/// A paused current-thread runtime, as in the `start_paused` tests.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The failure the issue reported: a hard timeout of `Duration::MAX` on an L1 miss.
#[tokio::test(start_paused = true)]
async fn a_hard_timeout_of_duration_max_waits_as_long_as_the_flight_takes() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let options = FetchOptions::new().hard_timeout(Duration::MAX);
    let hit = cache
        .get_or_fetch_with(&key("k"), &options, {
            let calls = calls.clone();
            move |_| {
                calls.bump();
                std::future::ready(Ok::<_, std::io::Error>("v".to_owned()))
            }
        })
        .await
        .unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), calls.get()),
        (Source::Loader, "v", 1)
    );
}

/// A soft timeout of `Duration::MAX` (lowered to the hard timeout, itself `Duration::MAX`) with
/// fail-safe and a stale value to serve.
#[tokio::test(start_paused = true)]
async fn a_soft_timeout_of_duration_max_waits_as_long_as_the_flight_takes() {
    let stack = Stack::<String>::new();
    let options = FetchOptions::new()
        .fail_safe(true)
        .hard_timeout(Duration::MAX)
        .soft_timeout(Duration::MAX);
    let cache = stack.tiered_builder().defaults(options).build();
    cache.set("k", "old".to_owned()).await.unwrap();
    stack.clock.advance(Duration::from_secs(301));
    let calls = Calls::default();
    let hit = cache
        .get_or_fetch("k", counting(&calls, "new".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (hit.source(), hit.as_str(), calls.get()),
        (Source::Loader, "new", 1)
    );
}

/// A duration option's value: the edges, and anything in between.
/// (Strategies are boxed: their value trees would otherwise not fit a test thread's stack.)
fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::from_millis(u64::MAX)),
        (0..=u64::MAX).prop_map(Duration::from_millis),
        (0..=3_600_000_u64).prop_map(Duration::from_millis),
        any::<(u64, u32)>().prop_map(|(secs, nanos)| Duration::new(secs, nanos % 1_000_000_000)),
    ]
    .boxed()
}

/// A size option's value.
fn size() -> BoxedStrategy<usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(usize::MAX),
        Just(1 << 20),
        any::<usize>(),
    ]
    .boxed()
}

/// An eager-refresh threshold: valid ones, edges, and values that are not numbers.
fn threshold() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(1.0 - f64::EPSILON),
        any::<f64>(),
        0.0..1.0,
    ]
    .boxed()
}

/// Options with any subset of fields set, to any value.
fn options() -> BoxedStrategy<FetchOptions> {
    let durations = (
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
    );
    let rest = (
        proptest::option::of(size()),
        proptest::option::of(threshold()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    );
    (durations, rest)
        .prop_map(
            |(
                (
                    ttl,
                    hard,
                    cap,
                    tier,
                    fail_safe_max,
                    throttle,
                    soft,
                    swr,
                    backoff,
                    negative,
                    jitter,
                ),
                (
                    max_payload,
                    eager,
                    fail_safe,
                    background,
                    jitter_remote,
                    allow_stale,
                    await_writes,
                    cancel,
                ),
            )| {
                let mut options = FetchOptions::new();
                macro_rules! set {
                ($($value:ident => $setter:ident),* $(,)?) => {
                    $(if let Some(value) = $value {
                        options = options.$setter(value);
                    })*
                };
            }
                set!(
                    ttl => ttl,
                    hard => hard_timeout,
                    cap => background_cap,
                    tier => tier_timeout,
                    fail_safe_max => fail_safe_max,
                    throttle => fail_safe_throttle,
                    soft => soft_timeout,
                    swr => stale_while_revalidate,
                    backoff => refresh_backoff,
                    negative => negative_ttl,
                    jitter => jitter_max,
                    max_payload => max_payload,
                    eager => eager_refresh,
                    fail_safe => fail_safe,
                    background => background_completion,
                    jitter_remote => jitter_remote,
                    allow_stale => allow_stale,
                );
                if let Some(await_writes) = await_writes {
                    options = options.write_mode(if await_writes {
                        WriteMode::AwaitBeforeReturn
                    } else {
                        WriteMode::Background
                    });
                }
                if let Some(cancel) = cancel {
                    options = options.abandon(if cancel {
                        AbandonPolicy::CancelWhenUnobserved
                    } else {
                        AbandonPolicy::Continue
                    });
                }
                options
            },
        )
        .boxed()
}

/// One round of every call, with `call` as the per-call options.
async fn every_call(
    cache: &Cache<String>,
    stack: &Stack<String>,
    call: &FetchOptions,
    advance: Duration,
    loader_ttl: Duration,
) {
    let k = key("k");
    let _ = cache
        .get_or_fetch_with(&k, call, |_| {
            std::future::ready(Ok::<_, std::io::Error>("v1".to_owned()))
        })
        .await;
    let _ = cache.get_with(&k, call).await;
    let _ = cache.set_with(&k, "v2".to_owned(), call).await;
    let _ = cache
        .get_or_fetch("k", || {
            std::future::ready(Ok::<_, std::io::Error>("v3".to_owned()))
        })
        .await;
    // Past freshness: the fail-safe, revalidation, refresh and throttle paths.
    stack.clock.advance(advance);
    let _ = cache.get_or_fetch_with(&k, call, |_| failing()).await;
    let _ = cache.get_or_fetch_with(&k, call, |_| failing()).await;
    let _ = cache.get_with(&k, call).await;
    let _ = cache.try_get_local(&k);
    let _ = cache.remove(&k).await;
    // A loader's own TTL.
    let _ = cache
        .get_or_fetch_with(&k, call, move |_| {
            std::future::ready(Ok::<_, std::io::Error>(
                Fetched::value("v5".to_owned()).ttl(loader_ttl),
            ))
        })
        .await;
    stack.clock.advance(advance);
    let _ = cache.get_or_fetch("k", failing).await;
    let _ = cache
        .get_or_fetch_with(&k, call, |_| {
            std::future::ready(Ok::<_, std::io::Error>("v4".to_owned()))
        })
        .await;
    // Let background refreshes and write-backs run to their end.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the options (the cache's defaults, a call's own, a loader's TTL, the compression
/// bounds, the bounds on concurrent loads and on remembered throttles), every
    /// call answers without a panic, and no flight's task dies of one (a flight that panicked
    /// outside its loader would be counted as aborted).
    #[test]
    fn no_option_value_makes_a_call_panic(
        defaults in options(),
        call in options(),
        min_size in size(),
        max_decoded in proptest::option::of(size()),
        loads in size(),
        throttles in size(),
        advance in duration(),
        loader_ttl in duration(),
    ) {
        let runtime = paused_runtime();
        runtime.block_on(async {
            let stack = Stack::<String>::new();
            let mut compression = Compression::zstd(3).min_size(min_size);
            if let Some(max_decoded) = max_decoded {
                compression = compression.max_decoded(max_decoded);
            }
            let cache = stack
                .tiered_builder()
                .compression(compression)
                .defaults(defaults)
                .max_concurrent_loads(loads)
                .fail_safe_throttles(throttles)
                .build();
            Box::pin(every_call(&cache, &stack, &call, advance, loader_ttl)).await;
            prop_assert_eq!(cache.stats().flights_aborted, 0);
            Ok(())
        })?;
    }
}
