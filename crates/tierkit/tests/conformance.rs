//! The backend conformance suite, run against compositions of moka tiers: two tiers under the
//! default policies, two tiers under the racing policies, and a three-tier stack erased to
//! `Arc<dyn Backend>`, which must behave exactly like a single tier.

use std::sync::Arc;

use tierkit::moka::MokaBackend;
use tierkit::{
    Composition, ParallelReadPolicy, RaceReadPolicy, RaceWritePolicy, SequentialWritePolicy,
    SharedBackend,
};
use tierkit_testkit::conformance::ConformanceContext;

fn moka(ctx: &ConformanceContext) -> MokaBackend {
    MokaBackend::builder().clock(ctx.clock()).build()
}

tierkit_testkit::conformance!(moka_over_moka, |ctx: ConformanceContext| async move {
    Ok(Composition::builder(moka(&ctx), moka(&ctx))
        .clock(ctx.clock())
        .build())
});

tierkit_testkit::conformance!(
    moka_over_moka_racing,
    |ctx: ConformanceContext| async move {
        Ok(Composition::builder(moka(&ctx), moka(&ctx))
            .read_policy(RaceReadPolicy::default())
            .write_policy(RaceWritePolicy)
            .clock(ctx.clock())
            .build())
    }
);

tierkit_testkit::conformance!(three_tiers_erased, |ctx: ConformanceContext| async move {
    let lower = Composition::builder(moka(&ctx), moka(&ctx))
        .read_policy(ParallelReadPolicy)
        .write_policy(SequentialWritePolicy)
        .clock(ctx.clock())
        .build();
    let stack: SharedBackend = Arc::new(
        Composition::builder(moka(&ctx), lower)
            .clock(ctx.clock())
            .build(),
    );
    Ok(stack)
});
