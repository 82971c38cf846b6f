//! The backend conformance suite of `tierkit-testkit`, run against [`MokaBackend`] bounded by
//! entries and by bytes (8 MiB: the 16 MiB case then checks the rejection path).

use tierkit_moka::MokaBackend;
use tierkit_testkit::ConformanceContext;

tierkit_testkit::conformance!(moka_entries, |ctx: ConformanceContext| async move {
    Ok(MokaBackend::builder().clock(ctx.clock()).build())
});
tierkit_testkit::conformance!(moka_bytes, |ctx: ConformanceContext| async move {
    Ok(MokaBackend::builder()
        .max_bytes(8 << 20)
        .clock(ctx.clock())
        .build())
});
