//! A read on [`MokaBackend`] allocates nothing: the answer is a ready `TierFuture` (or a
//! `Probe`) and the value is a reference-counted clone. Counted with the testkit's
//! `CountingAllocator`.

use std::sync::Arc;
use std::time::Duration;

use tierkit_core::{Backend, CacheKey, CacheValue, Clock, Probe, SharedBackend};
use tierkit_moka::MokaBackend;
use tierkit_testkit::{CountingAllocator, count_allocations as allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Resolves a ready future without a runtime (and without allocating).
#[allow(clippy::expect_used)] // a test helper: a pending answer fails the test
fn ready<T>(fut: tierkit_core::TierFuture<'_, T>) -> tierkit_core::Result<T> {
    fut.into_ready().expect("moka answers synchronously")
}

#[test]
fn hits_and_misses_do_not_allocate() {
    let tier = MokaBackend::new(1_000);
    let shared: SharedBackend = Arc::new(tier.clone());
    let key = CacheKey::new("hot").unwrap();
    let absent = CacheKey::new("absent").unwrap();
    let value = CacheValue::with_ttl(
        vec![7u8; 256],
        Clock::System.now(),
        Duration::from_secs(600),
    );
    ready(tier.set(&key, value.clone())).unwrap();
    // Warm up: moka allocates a few internal structures lazily on its first reads (3
    // allocations on the first misses, measured with moka 0.12.16).
    for _ in 0..1_000 {
        assert!(ready(tier.get(&key)).unwrap().is_some());
        assert!(ready(tier.get(&absent)).unwrap().is_none());
    }
    tier.run_pending_tasks();

    let n = allocations(|| {
        for _ in 0..1_000 {
            let hit = ready(tier.get(&key)).unwrap();
            assert_eq!(hit.as_ref().map(|v| v.payload().len()), Some(256));
            let hit = ready(shared.get(&key)).unwrap();
            assert!(hit.is_some());
            assert!(ready(tier.get(&absent)).unwrap().is_none());
            assert!(matches!(shared.probe(&key), Probe::Fresh(_)));
        }
    });
    assert_eq!(n, 0, "allocations during 4,000 reads");
}
