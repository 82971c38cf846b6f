//! The backend conformance suite of `tierkit-testkit`, against a real S3 protocol server (see
//! `tests/common/mod.rs`):
//!
//! * `s3`: an [`S3Backend`] alone, on the endpoint of `TIERKIT_S3_ENDPOINT` or an in-process
//!   `tierkit-s3-server` (one per case, shared by the case's tiers);
//! * `moka_over_redis_over_s3`: `Composition<MokaBackend, Composition<RedisBackend,
//!   S3Backend>>`, with Redis from `TIERKIT_REDIS_URL` (skipped without it, unless
//!   `TIERKIT_REQUIRE_SERVICES` is set).
//!
//! Each case uses the context's namespace as the prefix and the context's clock everywhere.

#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{S3Env, Served, redis_url};
use tierkit_core::BackendError;
use tierkit_moka::MokaBackend;
use tierkit_policy::Composition;
use tierkit_redis::RedisBackend;
use tierkit_s3::S3Backend;
use tierkit_testkit::ConformanceContext;

async fn s3_tier(env: &S3Env, ctx: &ConformanceContext) -> Result<S3Backend, BackendError> {
    Ok(env
        .builder(ctx.namespace())
        .clock(ctx.clock())
        .build()
        .await?)
}

async fn s3(ctx: ConformanceContext) -> Result<Served<S3Backend>, BackendError> {
    let env = S3Env::shared().await;
    Ok(Served::new(s3_tier(&env, &ctx).await?, &env))
}

type ThreeTiers = Composition<MokaBackend, Composition<RedisBackend, S3Backend>>;

async fn three_tiers(ctx: ConformanceContext) -> Result<Served<ThreeTiers>, BackendError> {
    let url = redis_url()?;
    let env = S3Env::shared().await;
    let redis = RedisBackend::builder(url)
        .namespace(ctx.namespace())
        .clock(ctx.clock())
        .command_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let s3 = s3_tier(&env, &ctx).await?;
    let lower = Composition::builder(redis, s3).clock(ctx.clock()).build();
    let l1 = MokaBackend::builder().clock(ctx.clock()).build();
    let stack = Composition::builder(l1, lower).clock(ctx.clock()).build();
    Ok(Served::new(stack, &env))
}

tierkit_testkit::conformance!(s3_alone, s3);
tierkit_testkit::conformance!(moka_over_redis_over_s3, three_tiers);
