//! A two-tier cache at work: writes reach both tiers, L1 hits answer without awaiting, an L2
//! hit is refilled into L1 with its timestamps unchanged, and tier failures are reported the
//! way the write policy promises.
//!
//! L2 is a second moka cache wrapped in a fault injector, standing in for a shared tier such as
//! Redis so that the example needs no server. Run it with `cargo xtask demo` or
//! `cargo run -p tierkit --example two_tier`.

use std::error::Error;
use std::time::Duration;

use tierkit::moka::MokaBackend;
use tierkit::{Backend, CacheKey, CacheValue, Clock, Composition, CompositionError, ErrorKind, Op};
use tierkit_testkit::{Fault, FaultyBackend};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();

    let l1 = FaultyBackend::new(
        MokaBackend::builder()
            .max_capacity(1_000)
            .label("moka-l1")
            .build(),
    );
    let l2 = FaultyBackend::new(
        MokaBackend::builder()
            .max_bytes(64 << 20)
            .label("moka-l2")
            .build(),
    );
    let cache = Composition::builder(l1.clone(), l2.clone()).build();
    println!(
        "tierkit demo: {} (sequential read, optimistic parallel write, refill always)\n",
        cache.label()
    );

    let now = Clock::System.now();
    let key = CacheKey::builder("user").part(1).build()?;
    let value = CacheValue::with_ttl(&b"Ada Lovelace"[..], now, Duration::from_secs(60))
        .with_stale_for(Duration::from_secs(600));

    step("1. write through both tiers");
    cache.set(&key, value.clone()).await?;
    println!(
        "   l1 holds it: {}, l2 holds it: {}",
        held(&l1, &key),
        held(&l2, &key)
    );

    step("2. read: an L1 hit");
    let read = cache.get(&key);
    println!("   answered without awaiting: {}", read.is_ready());
    println!("   value: {:?}", payload(read.await?));

    step("3. L1 loses the entry (eviction, restart); the next read goes to L2");
    l1.delete(&key).await?;
    let read = cache.get(&key);
    println!("   answered without awaiting: {}", read.is_ready());
    println!("   value: {:?}", payload(read.await?));
    if let Some(refilled) = l1.probe(&key).into_value() {
        println!(
            "   refilled into L1 with the same expiry: {}",
            refilled.expires_at() == value.expires_at()
        );
    }

    step("4. L2 is down: a write still succeeds, with a warning naming L2");
    l2.always(Op::Set, Fault::Fail(ErrorKind::Connection));
    let result = cache.set(&key, value.clone()).await;
    println!("   write result: {result:?}");

    step("5. both tiers down: the write fails and keeps both causes");
    l1.always(Op::Set, Fault::Fail(ErrorKind::Internal));
    let result = cache.set(&key, value.clone()).await;
    if let Err(error) = &result
        && let Some(CompositionError::BothLayersFailed { l1, l2 }) =
            CompositionError::from_backend_error(error)
    {
        println!("   l1 cause: {l1}\n   l2 cause: {l2}");
    }
    l1.clear_faults();
    l2.clear_faults();

    step("6. a stale value is returned as stale, and the caller decides");
    let stale = CacheValue::new(
        &b"yesterday's news"[..],
        now.saturating_sub(Duration::from_secs(120)),
        now.saturating_sub(Duration::from_secs(60)),
        now.saturating_add(Duration::from_secs(600)),
    )?;
    let stale_key = CacheKey::new("news:front-page")?;
    cache.set(&stale_key, stale).await?;
    if let Some(found) = cache.get(&stale_key).await? {
        println!(
            "   freshness now: {:?} (servable until {})",
            found.freshness(Clock::System.now()),
            found.expires_at()
        );
    }

    println!("\ndone.");
    Ok(())
}

fn step(title: &str) {
    println!("\n{title}");
}

fn held(tier: &impl Backend, key: &CacheKey) -> bool {
    tier.probe(key).value().is_some()
}

fn payload(value: Option<CacheValue>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v.payload()).into_owned())
}
