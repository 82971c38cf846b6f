//! An L1 hit through a composition allocates nothing: not through a static stack, not through
//! an `Arc<dyn Backend>` stack, not through nested compositions. Counted with the testkit's
//! `CountingAllocator`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tierkit::moka::MokaBackend;
use tierkit::{
    AnyReadPolicy, Backend, CacheKey, CacheValue, Clock, Composition, Probe, RaceReadPolicy,
    SharedBackend, TierFuture,
};
use tierkit_testkit::{CountingAllocator, MemoryBackend, count_allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn ready<T>(future: TierFuture<'_, T>) -> T {
    future
        .into_ready()
        .expect("an L1 hit answers synchronously")
        .expect("an L1 hit succeeds")
}

/// Reads `key` 1,000 times through `stack` and returns the allocations made.
fn allocations_per_1000_hits(stack: &dyn Backend, key: &CacheKey) -> u64 {
    // Warm up: moka allocates a few structures lazily, and a composition resolves its names
    // and metric handles on first use.
    for _ in 0..1_000 {
        assert!(ready(stack.get(key)).is_some());
    }
    count_allocations(|| {
        for _ in 0..1_000 {
            let hit = ready(stack.get(key));
            assert!(hit.is_some());
            assert!(matches!(stack.probe(key), Probe::Fresh(_)));
        }
    })
}

#[tokio::test]
async fn l1_hits_through_every_kind_of_stack_allocate_nothing() {
    let key = CacheKey::new("hot").unwrap();
    let value = CacheValue::with_ttl(
        vec![1u8; 512],
        Clock::System.now(),
        Duration::from_secs(600),
    );

    let two = Composition::new(
        MokaBackend::new(1_000),
        MemoryBackend::new("remote").remote(),
    );
    two.set(&key, value.clone()).await.unwrap();
    assert_eq!(
        allocations_per_1000_hits(&two, &key),
        0,
        "static two-tier stack"
    );

    let erased: SharedBackend = Arc::new(two.clone());
    assert_eq!(
        allocations_per_1000_hits(&*erased, &key),
        0,
        "erased two-tier stack"
    );

    let three: SharedBackend = Arc::new(
        Composition::builder(
            MokaBackend::new(1_000),
            Composition::new(
                MemoryBackend::new("l2").remote(),
                MemoryBackend::new("l3").remote(),
            ),
        )
        .read_policy(AnyReadPolicy::Race(RaceReadPolicy::default()))
        .build(),
    );
    three.set(&key, value.clone()).await.unwrap();
    assert_eq!(
        allocations_per_1000_hits(&*three, &key),
        0,
        "erased three-tier racing stack"
    );

    // A composition nested as the L1 of another forwards its own L1's hits.
    let nested_l1: SharedBackend = Arc::new(Composition::new(
        Composition::new(MokaBackend::new(1_000), MemoryBackend::new("l2").remote()),
        MemoryBackend::new("l3").remote(),
    ));
    nested_l1.set(&key, value).await.unwrap();
    assert_eq!(
        allocations_per_1000_hits(&*nested_l1, &key),
        0,
        "composition as L1"
    );
}
