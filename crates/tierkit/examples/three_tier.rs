//! Three tiers, moka -> Redis -> S3, as composed `Backend`s, on real servers.
//!
//! `Composition::new(moka, Composition::new(redis, s3))` is one `Backend`: the outer
//! composition sees the inner one as its L2. The example shows:
//!
//! 1. a write reaching all three tiers;
//! 2. an L1 hit, answered without awaiting;
//! 3. an L1 miss served by Redis and refilled into moka;
//! 4. an L1 and Redis miss served by S3 and refilled into Redis and moka, timestamps unchanged;
//! 5. Redis stopped: L1 hits go on, other reads are served by S3 with a warning naming
//!    `l2.l1 (redis)`, writes succeed with a warning;
//! 6. Redis restarted (empty): the same `RedisBackend` reconnects and is written again.
//!
//! Redis: a private `redis-server` on a free loopback port, started and stopped by the
//! example (tierkit-services); it must be installed (`sudo apt-get install redis-server` on
//! Debian and Ubuntu; the error says so when it is missing). When `TIERKIT_REDIS_URL` is set
//! (as `cargo xtask services` prints it), that server is used instead and the outage acts are
//! skipped. S3: the in-process S3 protocol server (tierkit-s3-server) on a free loopback port.
//!
//! Run it with `cargo run -p tierkit --example three_tier --features redis,s3`.

use std::error::Error;
use std::time::{Duration, Instant};

use tierkit::moka::MokaBackend;
use tierkit::redis::RedisBackend;
use tierkit::s3::S3Backend;
use tierkit::{Backend, CacheKey, CacheValue, Clock, Composition};
use tierkit_s3_server::{S3Server, S3ServerOptions, ops};
use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions};

/// The Redis server the example talks to.
enum Redis {
    /// Started here; stopped when dropped.
    Private(RedisServer),
    /// Given by `TIERKIT_REDIS_URL`; never stopped.
    External(String),
}

impl Redis {
    fn start() -> Result<Self, Box<dyn Error>> {
        if let Ok(url) = std::env::var(tierkit_services::env::REDIS_URL)
            && !url.is_empty()
        {
            return Ok(Redis::External(url));
        }
        let binaries = match RedisBinaries::locate() {
            Ok(binaries) => binaries,
            Err(error) => {
                eprintln!("this example needs redis-server: {error}");
                return Err(error.into());
            }
        };
        Ok(Redis::Private(RedisServer::start(
            &binaries,
            RedisServerOptions::new(),
        )?))
    }

    fn url(&self) -> String {
        match self {
            Redis::Private(server) => server.url(),
            Redis::External(url) => url.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();

    let redis = tokio::task::block_in_place(Redis::start)?;
    let s3 = S3Server::start(S3ServerOptions::new()).await?;
    println!("redis: {}\ns3:    {}", redis.url(), s3.endpoint());

    let moka = MokaBackend::builder()
        .max_capacity(10_000)
        .label("moka")
        .build();
    let l2 = RedisBackend::builder(redis.url())
        .namespace("tierkit-example-three-tier")
        .command_timeout(Duration::from_millis(250))
        .build()
        .await?;
    let l3 = S3Backend::compatible(
        s3.endpoint(),
        s3.region(),
        s3.access_key(),
        s3.secret_key(),
        s3.bucket(),
    )
    .prefix("three-tier/")
    .operation_timeout(Duration::from_secs(2))
    .build()
    .await?;
    // Default policies at both levels: sequential read, optimistic parallel write, refill.
    let cache = Composition::new(moka.clone(), Composition::new(l2.clone(), l3.clone()));
    println!("stack: {}\n", cache.label());

    let key = CacheKey::builder("order").part(1001).build()?;
    let value = CacheValue::with_ttl(
        &b"3 items, shipped"[..],
        Clock::System.now(),
        Duration::from_secs(300),
    );

    step("1. write through all three tiers");
    cache.set(&key, value.clone()).await?;
    held(&moka, &l2, &l3, &key).await;

    step("2. read: an L1 hit");
    let read = cache.get(&key);
    println!("   answered without awaiting: {}", read.is_ready());
    show(read.await?);

    step("3. moka loses the entry: Redis answers, moka is refilled");
    moka.delete(&key).await?;
    show(cache.get(&key).await?);
    held(&moka, &l2, &l3, &key).await;

    step("4. moka and Redis lose the entry: S3 answers, both are refilled");
    moka.delete(&key).await?;
    l2.delete(&key).await?;
    let found = cache.get(&key).await?;
    if let Some(found) = &found {
        println!(
            "   same expiry as written: {}",
            found.expires_at() == value.expires_at()
        );
    }
    show(found);
    held(&moka, &l2, &l3, &key).await;

    if let Redis::Private(server) = &redis {
        step("5. Redis stops");
        tokio::task::block_in_place(|| server.stop())?;
        let read = cache.get(&key);
        println!(
            "   a key in moka: answered without awaiting: {}",
            read.is_ready()
        );
        show(read.await?);
        moka.delete(&key).await?;
        println!("   a key not in moka (warnings name the failed tier):");
        show(cache.get(&key).await?);
        let written = cache.set(&key, value.clone()).await;
        println!("   a write: {written:?}");

        step("6. Redis restarts, empty; the tier reconnects");
        tokio::task::block_in_place(|| server.restart())?;
        let began = Instant::now();
        let reconnected = loop {
            // fred reconnects in the background (backoff capped at 2 s); bounded wait.
            if l2.get(&key).await.is_ok() {
                break true;
            }
            if began.elapsed() > Duration::from_secs(15) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "   reconnected: {reconnected} after {} ms",
            began.elapsed().as_millis()
        );
        cache.set(&key, value.clone()).await?;
        held(&moka, &l2, &l3, &key).await;
    } else {
        println!("\n(TIERKIT_REDIS_URL is set: the outage acts, which stop Redis, are skipped)");
    }

    let requests = s3.requests();
    println!(
        "\nS3 requests: {} GetObject ({} answered 404), {} PutObject",
        requests.get(ops::GET_OBJECT),
        requests.errors(ops::GET_OBJECT),
        requests.get(ops::PUT_OBJECT)
    );
    cache.clear().await?; // the Redis namespace and the S3 prefix only
    l2.shutdown().await;
    s3.close().await?;
    drop(redis); // a private server is stopped here
    println!("\ndone.");
    Ok(())
}

/// Which tiers hold `key`, asked directly.
async fn held(moka: &MokaBackend, redis: &RedisBackend, s3: &S3Backend, key: &CacheKey) {
    let moka = moka.probe(key).value().is_some();
    let redis = matches!(redis.get(key).await, Ok(Some(_)));
    let s3 = matches!(s3.get(key).await, Ok(Some(_)));
    println!("   held by moka: {moka}, redis: {redis}, s3: {s3}");
}

fn show(value: Option<CacheValue>) {
    let value = value.map(|v| String::from_utf8_lossy(v.payload()).into_owned());
    println!("   value: {value:?}");
}

fn step(title: &str) {
    println!("\n{title}");
}
