#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benches
//! Criterion benches of each tier against the raw library it wraps, side by side in one group
//! per tier: `MokaBackend` vs moka's `sync::Cache`, `RedisBackend` vs fred (on a private
//! `redis-server` started here), `S3Backend` vs aws-sdk-s3 (on the in-process S3 server).
//! Both sides use the same key and value bytes; the raw Redis and S3 calls go through the
//! tier's own client.
//!
//! `cargo bench -p tierkit-benches --bench tiers`; HTML reports under `target/criterion`.
//! Without `redis-server`, the Redis group is skipped with a message.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use fred::interfaces::KeysInterface;
use tierkit_benches::local::{cycle, keys, raw_moka};
use tierkit_benches::remote::pxat;
use tierkit_core::{Backend, CacheKey, CacheValue, Clock, envelope};
use tierkit_moka::MokaBackend;
use tierkit_redis::RedisBackend;
use tierkit_s3::S3Backend;
use tierkit_s3_server::{S3Server, S3ServerOptions};
use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions};
use tokio::runtime::Runtime;

/// Entries of the moka caches, and keys cycled through in the moka group.
const CAPACITY: u64 = 10_000;
const KEYS: usize = 1_000;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

fn value() -> CacheValue {
    CacheValue::with_ttl(
        vec![7u8; 256],
        Clock::System.now(),
        Duration::from_secs(3600),
    )
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn moka(c: &mut Criterion) {
    let keys = keys(KEYS).unwrap();
    let value = value();
    let raw = raw_moka(CAPACITY);
    let tier = MokaBackend::new(CAPACITY);
    for key in &keys {
        raw.insert(key.clone(), value.clone());
        tier.set(key, value.clone()).into_ready().unwrap().unwrap();
    }
    let cycle = || cycle(&keys);
    let mut group = c.benchmark_group("moka");
    let mut next = cycle();
    group.bench_function("get/raw", |b| b.iter(|| raw.get(next())));
    let mut next = cycle();
    group.bench_function("get/tierkit", |b| {
        b.iter(|| tier.get(next()).into_ready().unwrap())
    });
    let mut next = cycle();
    group.bench_function("set/raw", |b| {
        b.iter(|| raw.insert(next().clone(), value.clone()))
    });
    let mut next = cycle();
    group.bench_function("set/tierkit", |b| {
        b.iter(|| tier.set(next(), value.clone()).into_ready().unwrap())
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let binaries = match RedisBinaries::locate() {
        Ok(binaries) => binaries,
        Err(err) => {
            eprintln!("skipped the redis group: {err}");
            return;
        }
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).unwrap();
    let runtime = current_thread();
    let tier = runtime
        .block_on(
            RedisBackend::builder(server.url().as_str())
                .namespace("tk-criterion")
                .build(),
        )
        .unwrap();
    let client = tier.clients().remove(0);
    let (key, value) = (CacheKey::new("bench:redis").unwrap(), value());
    let redis_key = tier.redis_key(&key);
    let bytes = envelope::encode(&value, &key);
    let expiry = pxat(&value).unwrap();
    runtime.block_on(tier.set(&key, value.clone())).unwrap();

    let mut group = c.benchmark_group("redis");
    group.bench_function("get/raw", |b| {
        b.to_async(&runtime)
            .iter(|| client.get::<Option<Bytes>, _>(redis_key.clone()))
    });
    group.bench_function("get/tierkit", |b| {
        b.to_async(&runtime).iter(|| tier.get(&key))
    });
    group.bench_function("set/raw", |b| {
        b.to_async(&runtime).iter(|| {
            client.set::<(), _, _>(
                redis_key.clone(),
                bytes.clone(),
                Some(expiry.clone()),
                None,
                false,
            )
        })
    });
    group.bench_function("set/tierkit", |b| {
        b.to_async(&runtime).iter(|| tier.set(&key, value.clone()))
    });
    group.finish();
    runtime.block_on(tier.shutdown());
}

fn s3(c: &mut Criterion) {
    // The server answers on a thread of its own, as a separate process would.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime
        .block_on(S3Server::start(S3ServerOptions::new()))
        .unwrap();
    let runtime = current_thread();
    let tier = runtime
        .block_on(
            S3Backend::compatible(
                server.endpoint(),
                server.region(),
                server.access_key(),
                server.secret_key(),
                server.bucket(),
            )
            .prefix("tk-criterion/")
            .build(),
        )
        .unwrap();
    let client = tier.client().clone();
    let (key, value) = (CacheKey::new("bench:s3").unwrap(), value());
    let (bucket, object) = (tier.bucket().to_owned(), tier.object_key(&key));
    let bytes = envelope::encode(&value, &key);
    runtime.block_on(tier.set(&key, value.clone())).unwrap();

    let mut group = c.benchmark_group("s3");
    group.bench_function("get/raw", |b| {
        b.to_async(&runtime).iter(|| async {
            let output = client
                .get_object()
                .bucket(&bucket)
                .key(&object)
                .send()
                .await
                .unwrap();
            output.body.collect().await.unwrap().into_bytes()
        })
    });
    group.bench_function("get/tierkit", |b| {
        b.to_async(&runtime).iter(|| tier.get(&key))
    });
    group.bench_function("put/raw", |b| {
        b.to_async(&runtime).iter(|| async {
            client
                .put_object()
                .bucket(&bucket)
                .key(&object)
                .content_type("application/octet-stream")
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await
                .unwrap()
        })
    });
    group.bench_function("put/tierkit", |b| {
        b.to_async(&runtime).iter(|| tier.set(&key, value.clone()))
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = tiers;
    config = config();
    targets = moka, redis, s3
}
criterion_main!(tiers);
