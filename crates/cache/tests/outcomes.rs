//! Read-through behaviour 66: what every successful call reports (`Hit`). Behaviour 67 (trace
//! propagation) is in `spans.rs`, a test binary of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{MINUTE, Stack, key, settle, write_l3_only};
use tierkit_cache::{EntryMeta, FetchContext, FetchOptions, HitFreshness, Source};
use tierkit_core::Op;
use tierkit_testkit::{Fault, FaultyBackend};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Behaviour 66: a loader flight's callers each get a `Hit` with `Source::Loader`, `Fresh`,
/// no refresh started, the entry's timestamps, their own elapsed virtual time, the
/// `coalesced` flag (false for the starter only) and the same flight id (the one the loader
/// saw); a later L1 hit reports `Source::L1`, no flight, zero elapsed and the same
/// timestamps.
#[tokio::test(start_paused = true)]
async fn b66_loader_and_l1_hits_report_their_outcome() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let seen_id = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    let now = stack.clock.now();

    let starter = tokio::spawn({
        let (cache, seen_id) = (cache.clone(), Arc::clone(&seen_id));
        async move {
            cache
                .get_or_fetch_with(
                    "k",
                    &FetchOptions::new().ttl(MINUTE),
                    move |ctx: FetchContext<String>| {
                        *seen_id.lock().unwrap() = Some(ctx.flight_id());
                        async move {
                            tokio::time::sleep(250 * MS).await;
                            Ok::<_, std::io::Error>("v".to_owned())
                        }
                    },
                )
                .await
        }
    });
    let joiner = tokio::spawn({
        let cache = cache.clone();
        async move {
            tokio::time::sleep_until(t0 + 100 * MS).await;
            cache
                .get_or_fetch("k", || async {
                    Ok::<_, std::io::Error>("other".to_owned())
                })
                .await
        }
    });
    let (a, b) = (
        starter.await.unwrap().unwrap(),
        joiner.await.unwrap().unwrap(),
    );

    assert_eq!((a.source(), a.as_str()), (Source::Loader, "v"));
    assert_eq!((b.source(), b.as_str()), (Source::Loader, "v"));
    assert!(Arc::ptr_eq(a.value(), b.value()));
    assert_eq!(a.freshness(), HitFreshness::Fresh);
    assert_eq!(b.freshness(), HitFreshness::Fresh);
    assert!(!a.refresh_started() && !b.refresh_started());
    assert!(!a.is_coalesced(), "the starter led the flight");
    assert!(b.is_coalesced(), "the joiner waited on it");
    assert!(a.flight_id().is_some());
    assert_eq!(a.flight_id(), b.flight_id());
    assert_eq!(
        a.flight_id(),
        *seen_id.lock().unwrap(),
        "the loader's context has the same id"
    );
    assert_eq!(a.elapsed(), 250 * MS, "the starter waited the whole flight");
    assert_eq!(b.elapsed(), 150 * MS, "the joiner arrived 100 ms later");
    let meta = a.meta();
    assert_eq!(meta, b.meta());
    assert_eq!(meta.created_at(), now);
    assert_eq!(meta.stale_at(), now.saturating_add(MINUTE));
    assert_eq!(meta.expires_at(), meta.stale_at());

    settle().await;
    let c = cache.get("k").await.unwrap().unwrap();
    assert_eq!((c.source(), c.as_str()), (Source::L1, "v"));
    assert!(Arc::ptr_eq(c.value(), a.value()));
    assert!(!c.is_coalesced());
    assert_eq!(c.flight_id(), None);
    assert_eq!(c.elapsed(), Duration::ZERO);
    assert_eq!(c.meta(), meta);
    assert_eq!(c.freshness(), HitFreshness::Fresh);
    let stats = cache.stats();
    assert_eq!((stats.flights, stats.coalesced), (1, 1));
}

/// Behaviour 66: an L2 hit reports `Source::L2`, the stored entry's timestamps, a flight id
/// and the virtual time the L2 read took.
#[tokio::test(start_paused = true)]
async fn b66_an_l2_hit_reports_its_outcome() {
    let stack = Stack::<String>::new();
    let writer = stack.cache();
    writer.set("k", "v".to_owned()).await.unwrap();
    let stored = EntryMeta::of(&stack.l2.peek(&key("k")).unwrap());
    stack.clock.advance(Duration::from_secs(10));

    // Another node: its own L1, the same L2 answering in 30 ms.
    let other = stack.other_node::<String>();
    let l2 = FaultyBackend::new(stack.l2.clone());
    l2.push(Op::Get, Fault::Delay(30 * MS));
    let reader = other.builder().l2(l2).build();
    let hit = reader.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, "v"));
    assert_eq!(hit.meta(), stored, "the entry's own timestamps");
    assert_eq!(hit.elapsed(), 30 * MS);
    assert!(!hit.is_coalesced());
    assert!(hit.flight_id().is_some());
    assert_eq!(hit.freshness(), HitFreshness::Fresh);
    assert_eq!(
        other.l1.peek(&key("k")).unwrap().meta(),
        stored,
        "L1 refilled as is"
    );
}

/// Behaviour 66: an L3 hit reports `Source::L3` and refills L2 (and L1) with the same
/// timestamps, never a longer life: the refilled L2 copy expires when the L3 copy does.
#[tokio::test(start_paused = true)]
async fn b66_an_l3_hit_refills_l2_with_the_same_timestamps() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    cache
        .set_with("k", "deep".to_owned(), &write_l3_only().ttl(MINUTE))
        .await
        .unwrap();
    let stored = EntryMeta::of(&stack.l3.peek(&key("k")).unwrap());
    assert!(stack.l2.peek(&key("k")).is_none());
    stack.clock.advance(Duration::from_secs(20));

    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "deep"));
    assert_eq!(hit.meta(), stored);
    settle().await;
    let refilled = stack.l2.peek(&key("k")).expect("L2 refilled");
    assert_eq!(EntryMeta::of(&refilled), stored, "same timestamps in L2");
    assert_eq!(
        stack.l1.peek(&key("k")).unwrap().meta(),
        stored,
        "same timestamps in L1"
    );

    // 41 s later the L3 entry's minute is over: the L2 copy is gone too.
    stack.clock.advance(Duration::from_secs(41));
    assert!(stack.l3.peek(&key("k")).is_none());
    assert!(
        stack.l2.peek(&key("k")).is_none(),
        "the refill did not extend the life"
    );
}
