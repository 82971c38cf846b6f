//! Behaviour of real moka tiers stacked in a composition.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tierkit::moka::MokaBackend;
use tierkit::{Backend, CacheKey, CacheValue, Clock, Composition};

#[tokio::test]
async fn a_value_too_large_for_l1_is_served_from_l2_never_the_older_one() {
    // L1 holds at most 4 KiB; L2 is unbounded by bytes.
    let l1 = MokaBackend::builder().max_bytes(4 << 10).build();
    let cache = Composition::new(l1.clone(), MokaBackend::new(1_000));
    let key = CacheKey::new("report").unwrap();
    let now = Clock::System.now();

    let small = CacheValue::with_ttl(vec![1u8; 100], now, Duration::from_secs(60));
    cache.set(&key, small).await.unwrap();

    let large = CacheValue::with_ttl(vec![2u8; 64 << 10], now, Duration::from_secs(60));
    cache.set(&key, large.clone()).await.unwrap(); // L1 refuses it, L2 takes it: Ok

    assert_eq!(
        l1.get(&key).await.unwrap(),
        None,
        "L1 dropped the previous value"
    );
    assert_eq!(cache.get(&key).await.unwrap(), Some(large));
}
