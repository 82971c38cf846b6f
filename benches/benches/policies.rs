#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benches
//! Criterion benches of the composition's policies over `MokaBackend` (L1) and an in-memory
//! remote tier (L2, answering through a pending future like a network tier, without the
//! network): every read policy on an L1 hit and on an L2 hit (refill off, so every read
//! misses L1), every write policy, and the typed `Cache<V>::get_or_fetch` hit.
//!
//! `cargo bench -p tierkit-benches --bench policies`; HTML reports under `target/criterion`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tierkit_cache::codec::Postcard;
use tierkit_cache::{Cache, FetchOptions};
use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
use tierkit_moka::{MokaBackend, MokaLocal};
use tierkit_policy::{
    AnyReadPolicy, AnyWritePolicy, Composition, OptimisticParallelWritePolicy, ParallelReadPolicy,
    RaceLoser, RaceReadPolicy, RaceWritePolicy, RefillPolicy, SequentialReadPolicy,
    SequentialWritePolicy,
};
use tierkit_testkit::MemoryBackend;
use tokio::runtime::Runtime;

const CAPACITY: u64 = 10_000;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn value() -> CacheValue {
    CacheValue::with_ttl(
        vec![7u8; 256],
        Clock::System.now(),
        Duration::from_secs(3600),
    )
}

fn read_policies() -> [(&'static str, AnyReadPolicy); 4] {
    [
        ("sequential", SequentialReadPolicy.into()),
        ("race", RaceReadPolicy::new(RaceLoser::Drop).into()),
        ("race-finish", RaceReadPolicy::new(RaceLoser::Finish).into()),
        ("parallel", ParallelReadPolicy.into()),
    ]
}

fn reads(c: &mut Criterion) {
    let runtime = runtime();
    let (key, value) = (CacheKey::new("bench:read").unwrap(), value());
    let mut group = c.benchmark_group("read-l1-hit");
    for (name, policy) in read_policies() {
        let composed = Composition::builder(
            MokaBackend::new(CAPACITY),
            MemoryBackend::new("l2").remote(),
        )
        .read_policy(policy)
        .build();
        runtime.block_on(composed.set(&key, value.clone())).unwrap();
        group.bench_function(name, |b| b.to_async(&runtime).iter(|| composed.get(&key)));
    }
    group.finish();

    let mut group = c.benchmark_group("read-l2-hit");
    for (name, policy) in read_policies() {
        let l2 = MemoryBackend::new("l2").remote();
        runtime.block_on(l2.set(&key, value.clone())).unwrap();
        let composed = Composition::builder(MokaBackend::new(CAPACITY), l2)
            .read_policy(policy)
            .refill_policy(RefillPolicy::Never)
            .build();
        group.bench_function(name, |b| b.to_async(&runtime).iter(|| composed.get(&key)));
    }
    group.finish();
}

fn writes(c: &mut Criterion) {
    let runtime = runtime();
    let (key, value) = (CacheKey::new("bench:write").unwrap(), value());
    let policies: [(&str, AnyWritePolicy); 3] = [
        ("optimistic-parallel", OptimisticParallelWritePolicy.into()),
        ("sequential", SequentialWritePolicy.into()),
        ("race", RaceWritePolicy.into()),
    ];
    let mut group = c.benchmark_group("write");
    for (name, policy) in policies {
        let composed = Composition::builder(
            MokaBackend::new(CAPACITY),
            MemoryBackend::new("l2").remote(),
        )
        .write_policy(policy)
        .build();
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter(|| composed.set(&key, value.clone()))
        });
    }
    group.finish();
}

fn typed(c: &mut Criterion) {
    let runtime = runtime();
    let _entered = runtime.enter();
    let key = CacheKey::new("bench:typed").unwrap();
    let cache: Cache<String> = Cache::builder(MokaLocal::new(CAPACITY), Postcard)
        .l2(MemoryBackend::new("l2").remote())
        .defaults(FetchOptions::new().ttl(Duration::from_secs(3600)))
        .build();
    runtime
        .block_on(cache.set(&key, "value".to_owned()))
        .unwrap();
    let mut group = c.benchmark_group("cache");
    group.bench_function("get_or_fetch-l1-hit", |b| {
        b.to_async(&runtime)
            .iter(|| cache.get_or_fetch(&key, || async { Ok::<_, std::io::Error>(String::new()) }))
    });
    group.finish();
}

criterion_group! {
    name = policies;
    config = config();
    targets = reads, writes, typed
}
criterion_main!(policies);
