//! Smoke checks of fail-safe and refresh (the full behaviour tests are in resilience files).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::time::Duration;

use support::{Calls, Stack};
use tierkit_cache::{FetchOptions, HitFreshness, Source, StaleCause};

#[tokio::test(start_paused = true)]
async fn smoke_fail_safe_serves_stale_then_throttles() {
    let stack = Stack::<String>::new();
    let opts = FetchOptions::new()
        .ttl(Duration::from_secs(60))
        .fail_safe(true)
        .fail_safe_max(Duration::from_secs(600))
        .fail_safe_throttle(Duration::from_secs(30));
    let cache = stack.builder().l2(stack.l2.clone()).defaults(opts).build();
    let calls = Calls::default();
    let c = calls.clone();
    cache
        .get_or_fetch("k", move || {
            c.bump();
            async { Ok::<_, std::io::Error>("v1".to_owned()) }
        })
        .await
        .unwrap();
    stack.clock.advance(Duration::from_secs(61));
    let c = calls.clone();
    let hit = cache
        .get_or_fetch("k", move || {
            c.bump();
            async { Err::<String, _>(std::io::Error::other("down")) }
        })
        .await
        .unwrap();
    assert_eq!(hit.as_str(), "v1");
    assert!(
        matches!(
            hit.freshness(),
            HitFreshness::Stale(StaleCause::FailSafe {
                throttled: false,
                ..
            })
        ),
        "{:?}",
        hit.freshness()
    );
    assert!(hit.suppressed_error().is_some());
    assert_eq!(calls.get(), 2);
    // Throttled: no loader call.
    let c = calls.clone();
    let hit = cache
        .get_or_fetch("k", move || {
            c.bump();
            async { Err::<String, _>(std::io::Error::other("down")) }
        })
        .await
        .unwrap();
    assert!(
        matches!(
            hit.freshness(),
            HitFreshness::Stale(StaleCause::FailSafe {
                throttled: true,
                ..
            })
        ),
        "{:?}",
        hit.freshness()
    );
    assert_eq!(calls.get(), 2);
    assert_eq!(hit.source(), Source::L1);
    // After the throttle: the loader again; recovering stores a fresh value.
    stack.clock.advance(Duration::from_secs(31));
    let c = calls.clone();
    let hit = cache
        .get_or_fetch("k", move || {
            c.bump();
            async { Ok::<_, std::io::Error>("v2".to_owned()) }
        })
        .await
        .unwrap();
    assert_eq!((hit.as_str(), hit.freshness()), ("v2", HitFreshness::Fresh));
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn smoke_swr_returns_stale_and_refreshes_once() {
    let stack = Stack::<String>::new();
    let opts = FetchOptions::new()
        .ttl(Duration::from_secs(60))
        .stale_while_revalidate(Duration::from_secs(30));
    let cache = stack.builder().l2(stack.l2.clone()).defaults(opts).build();
    let calls = Calls::default();
    let c = calls.clone();
    cache
        .get_or_fetch("k", move || {
            c.bump();
            async { Ok::<_, std::io::Error>("v1".to_owned()) }
        })
        .await
        .unwrap();
    stack.clock.advance(Duration::from_secs(70));
    let mut started = 0;
    for _ in 0..100 {
        let c = calls.clone();
        let hit = cache
            .get_or_fetch("k", move || {
                c.bump();
                async { Ok::<_, std::io::Error>("v2".to_owned()) }
            })
            .await
            .unwrap();
        if hit.refresh_started() {
            started += 1;
        }
        if hit.as_str() == "v1" {
            assert_eq!(hit.freshness(), HitFreshness::Revalidating);
        }
    }
    support::settle().await;
    assert_eq!(started, 1);
    assert_eq!(calls.get(), 2);
    let hit = cache
        .get_or_fetch("k", || async { Ok::<_, std::io::Error>("x".to_owned()) })
        .await
        .unwrap();
    assert_eq!((hit.as_str(), hit.freshness()), ("v2", HitFreshness::Fresh));
    assert_eq!(cache.keys_in_progress(), 0);
}
