//! The backend conformance suite of `tierkit-testkit`, against real servers named by the
//! environment (see `tests/common/mod.rs`):
//!
//! * `redis_standalone`: a [`RedisBackend`] on `TIERKIT_REDIS_URL`;
//! * `redis_cluster`: a [`RedisBackend`] on the cluster of `TIERKIT_REDIS_CLUSTER_URL`;
//! * `redis_sentinel`: a [`RedisBackend`] through the sentinel of `TIERKIT_REDIS_SENTINEL_URL`,
//!   every write confirmed by the replica (`WAIT`);
//! * `moka_over_redis`: a composition of a moka L1 over the standalone tier.
//!
//! Each case uses the context's namespace and clock. Without the variables the cases are
//! skipped (printing `skipped: ...`), unless `TIERKIT_REQUIRE_SERVICES` is set: then they fail.

#![allow(clippy::expect_used, clippy::panic)]

mod common;

use common::{CLUSTER, SENTINEL, STANDALONE, conformance_tier};
use tierkit_core::BackendError;
use tierkit_moka::MokaBackend;
use tierkit_policy::Composition;
use tierkit_redis::RedisBackend;
use tierkit_testkit::ConformanceContext;

async fn standalone(ctx: ConformanceContext) -> Result<RedisBackend, BackendError> {
    conformance_tier(STANDALONE, &ctx).await
}

async fn cluster(ctx: ConformanceContext) -> Result<RedisBackend, BackendError> {
    let tier = conformance_tier(CLUSTER, &ctx).await?;
    assert!(tier.is_clustered(), "{CLUSTER} must name a cluster");
    Ok(tier)
}

async fn sentinel(ctx: ConformanceContext) -> Result<RedisBackend, BackendError> {
    let tier = conformance_tier(SENTINEL, &ctx).await?;
    assert_eq!(
        tier.replica_acks(),
        1,
        "a sentinel tier confirms its writes"
    );
    Ok(tier)
}

async fn composed(
    ctx: ConformanceContext,
) -> Result<Composition<MokaBackend, RedisBackend>, BackendError> {
    let l2 = conformance_tier(STANDALONE, &ctx).await?;
    let l1 = MokaBackend::builder().clock(ctx.clock()).build();
    Ok(Composition::builder(l1, l2).clock(ctx.clock()).build())
}

tierkit_testkit::conformance!(redis_standalone, standalone);
tierkit_testkit::conformance!(redis_cluster, cluster);
tierkit_testkit::conformance!(redis_sentinel, sentinel);
tierkit_testkit::conformance!(moka_over_redis, composed);
