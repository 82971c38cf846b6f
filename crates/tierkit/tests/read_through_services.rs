#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests
//! The read-through `Cache` against real services: `MokaLocal` (L1) over a private
//! `redis-server` (L2, started by `tierkit-services` for this test alone, so that its
//! `INFO commandstats` counts only this test's commands) and the in-process S3 server (L3,
//! `tierkit-s3-server`, which counts every request it receives).
//!
//! 1,000 concurrent `get_or_fetch` calls on one key, for a key only in L2, a key only in L3
//! and a key that is nowhere, with exact counts: one read per remote tier reached, at most
//! one loader call, at most one encode, one write per remote tier written, and the same `Arc`
//! for every caller.
//!
//! To make all 1,000 callers really concurrent, the flight's first L2 read waits at a gate
//! until the cache reports one flight and 999 coalesced callers; the gate sits in front of
//! the Redis tier in this process, so the server still sees exactly the commands the cache
//! issues. Waiting for that is a bounded poll, not a timing assertion.
//!
//! Skips without `redis-server` unless `TIERKIT_REQUIRE_SERVICES` is set (`cargo xtask test`,
//! CI): then a missing server fails the test. Built only with the features `redis`, `s3`,
//! `moka` and `postcard` (CI runs `cargo test --workspace --all-features`).
#![cfg(all(
    feature = "redis",
    feature = "s3",
    feature = "moka",
    feature = "postcard"
))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tierkit::codec::{Counted, Postcard};
use tierkit::moka::MokaLocal;
use tierkit::redis::RedisBackend;
use tierkit::s3::S3Backend;
use tierkit::{Backend, Cache, CacheKey, FetchOptions, Hit, Source, TokioOffload};
use tierkit_s3_server::{S3Server, S3ServerOptions, ops};
use tierkit_services::{CommandCalls, RedisBinaries, RedisServer, RedisServerOptions, calls_since};
use tierkit_testkit::GatedBackend;
use tokio::sync::watch;

/// Concurrent callers per scenario.
const CALLERS: usize = 1_000;

/// The bound of every wait here (a stuck test fails instead of hanging). Never a threshold a
/// passing run gets near.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn ada() -> User {
    User {
        id: 42,
        name: "Ada Lovelace".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Services

/// A private `redis-server` and an in-process S3 server, for one test.
struct Services {
    redis: RedisServer,
    s3: S3Server,
}

/// The services, or `None` (after printing `skipped: ...`) when `redis-server` is missing and
/// `TIERKIT_REQUIRE_SERVICES` is not set.
async fn services() -> Option<Services> {
    let binaries = RedisBinaries::for_tests()
        .expect("redis-server and redis-cli (TIERKIT_REQUIRE_SERVICES is set)")?;
    let redis = tokio::task::spawn_blocking(move || {
        RedisServer::start(&binaries, RedisServerOptions::new())
    })
    .await
    .expect("the start task")
    .expect("a private redis-server");
    let s3 = S3Server::start(S3ServerOptions::new())
        .await
        .expect("the in-process S3 server");
    Some(Services { redis, s3 })
}

impl Services {
    /// The L2 tier on the private Redis, under `namespace`.
    async fn redis_tier(&self, namespace: &str) -> RedisBackend {
        RedisBackend::builder(self.redis.url().as_str())
            .namespace(namespace)
            .command_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("the Redis tier connects")
    }

    /// The L3 tier on the in-process S3 server, under `prefix`.
    async fn s3_tier(&self, prefix: &str) -> S3Backend {
        let s3 = &self.s3;
        S3Backend::compatible(
            s3.endpoint(),
            s3.region(),
            s3.access_key(),
            s3.secret_key(),
            s3.bucket(),
        )
        .prefix(prefix)
        .operation_timeout(Duration::from_secs(20))
        .build()
        .await
        .expect("the S3 tier builds")
    }

    /// Calls per Redis command so far, without `INFO` itself.
    fn redis_commands(&self) -> CommandCalls {
        self.redis.command_calls().expect("INFO commandstats")
    }
}

fn commands(pairs: &[(&str, u64)]) -> CommandCalls {
    pairs
        .iter()
        .map(|(name, calls)| ((*name).to_owned(), *calls))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Test doubles in this process

/// Postcard, counting encodes and decodes. Clones share the counts.
type CountingCodec = Counted<Postcard>;

/// Counts loader calls.
#[derive(Clone, Debug, Default)]
struct Loads(Arc<AtomicUsize>);

impl Loads {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// The stack and the burst

/// Where the key is before the burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seed {
    L2,
    L3,
    Nowhere,
}

/// What a scenario observed.
struct Outcome {
    hits: Vec<Hit<User>>,
    redis: CommandCalls,
    s3: tierkit_s3_server::RequestCounts,
    loads: usize,
    encodes: u64,
    decodes: u64,
    stats: tierkit::CacheStats,
    redis_tier: RedisBackend,
    s3_tier: S3Backend,
    key: CacheKey,
}

/// Builds L1 (moka) / L2 (the private Redis, behind a gate) / L3 (the in-process S3 server),
/// seeds the key where `seed` says (through a cache of its own, with plain postcard, so that
/// nothing here is counted), then runs `CALLERS` concurrent `get_or_fetch` on it and returns
/// what the servers, the codec, the loader and the cache counted, once every background write
/// has finished.
async fn burst(services: &Services, name: &str, seed: Seed) -> Outcome {
    let namespace = format!("tk-rts-{}-{name}", std::process::id());
    let redis_tier = services.redis_tier(&namespace).await;
    let s3_tier = services.s3_tier(&format!("{namespace}/")).await;
    let key = CacheKey::new(format!("user:{name}")).unwrap();

    // Seed through a separate cache with one remote tier only.
    let seeder = Cache::builder(MokaLocal::<User>::new(10), Postcard);
    let seeder = match seed {
        Seed::L2 => Some(seeder.l2(redis_tier.clone()).build()),
        Seed::L3 => Some(seeder.l3(s3_tier.clone()).build()),
        Seed::Nowhere => None,
    };
    if let Some(seeder) = seeder {
        seeder.set(&key, ada()).await.expect("seeded");
    }
    assert_eq!(
        redis_tier.get(&key).await.expect("Redis answers").is_some(),
        seed == Seed::L2,
        "seeded in L2 only if asked"
    );
    assert_eq!(
        s3_tier.get(&key).await.expect("S3 answers").is_some(),
        seed == Seed::L3,
        "seeded in L3 only if asked"
    );

    let (open, gate) = watch::channel(false);
    let codec = CountingCodec::default();
    let offload = TokioOffload::unbounded();
    let cache: Cache<User> = Cache::builder(MokaLocal::new(10_000), codec.clone())
        .l2(GatedBackend::new(redis_tier.clone(), gate))
        .l3(s3_tier.clone())
        .offload(offload.clone())
        // The gated L2 read is under the tier timeout: keep it far away.
        .defaults(FetchOptions::new().tier_timeout(PATIENCE))
        .build();
    let loads = Loads::default();

    // Counts before the burst (the seeding and the checks above are not counted).
    let redis_before = services.redis_commands();
    services.s3.reset_requests();

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let cache = cache.clone();
            let key = key.clone();
            let loads = loads.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&key, move || async move {
                        loads.0.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(ada())
                    })
                    .await
            })
        })
        .collect();

    // Every caller is on the one flight, held at the L2 read: open the gate.
    let started = Instant::now();
    loop {
        let stats = cache.stats();
        if stats.flights == 1 && stats.coalesced == (CALLERS - 1) as u64 {
            break;
        }
        assert!(
            stats.flights <= 1,
            "a second flight started while the first was held: {stats:?}"
        );
        assert!(
            started.elapsed() < PATIENCE,
            "the callers did not all join the flight: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    open.send_replace(true);

    let mut hits = Vec::with_capacity(CALLERS);
    for task in tasks {
        hits.push(task.await.expect("a caller task").expect("a value"));
    }
    let drained = offload.drain(PATIENCE).await;
    assert!(
        drained.is_complete(),
        "background writes still running: {drained:?}"
    );
    assert_eq!(cache.keys_in_progress(), 0, "the key table is empty");

    let redis = calls_since(&redis_before, &services.redis_commands());
    let s3 = services.s3.requests();
    Outcome {
        hits,
        redis,
        s3,
        loads: loads.get(),
        encodes: codec.encodes(),
        decodes: codec.decodes(),
        stats: cache.stats(),
        redis_tier,
        s3_tier,
        key,
    }
}

/// Every caller got the value, the same `Arc`, from `source`; one of them started the flight
/// and the 999 others joined it.
fn assert_one_shared_value(outcome: &Outcome, source: Source) {
    let first = outcome.hits[0].value();
    assert_eq!(**first, ada());
    let same = outcome
        .hits
        .iter()
        .filter(|hit| Arc::ptr_eq(hit.value(), first))
        .count();
    assert_eq!(same, CALLERS, "every caller got the same Arc");
    let from_source = outcome
        .hits
        .iter()
        .filter(|hit| hit.source() == source)
        .count();
    assert_eq!(
        from_source, CALLERS,
        "every caller's value came from {source:?}"
    );
    let coalesced = outcome.hits.iter().filter(|hit| hit.is_coalesced()).count();
    assert_eq!(coalesced, CALLERS - 1, "one leader, the others coalesced");
    let flight = outcome.hits[0].flight_id();
    assert!(flight.is_some());
    assert!(
        outcome.hits.iter().all(|hit| hit.flight_id() == flight),
        "one flight"
    );
    assert_eq!(outcome.stats.flights, 1);
    assert_eq!(outcome.stats.coalesced, (CALLERS - 1) as u64);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// A key only in L2 (Redis): 1,000 concurrent `get_or_fetch` make exactly one Redis `GET`,
/// no other Redis command, no S3 request, no loader call, no encode, one decode and no write
/// anywhere; every caller gets the same `Arc`, from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_only_in_l2_is_read_once_from_redis_for_1000_callers() {
    let Some(services) = services().await else {
        return;
    };
    let outcome = burst(&services, "only-l2", Seed::L2).await;

    assert_one_shared_value(&outcome, Source::L2);
    assert_eq!(
        outcome.redis,
        commands(&[("get", 1)]),
        "Redis commands during the burst"
    );
    assert_eq!(outcome.s3.total(), 0, "S3 requests: {}", outcome.s3);
    assert_eq!(outcome.s3.http_requests(), 0, "S3 requests: {}", outcome.s3);
    assert_eq!(outcome.loads, 0, "loader calls");
    assert_eq!(outcome.stats.loader_calls, 0);
    assert_eq!(outcome.encodes, 0, "encodes");
    assert_eq!(outcome.decodes, 1, "decodes");
    assert_eq!(outcome.stats.decodes, [1, 0]);
    assert_eq!(outcome.stats.write_errors, [0, 0]);

    // Nothing was written to S3.
    assert!(outcome.s3_tier.get(&outcome.key).await.unwrap().is_none());
    eprintln!(
        "only in L2: redis {:?}, s3 {}, loads {}, encodes {}, decodes {}",
        outcome.redis, outcome.s3, outcome.loads, outcome.encodes, outcome.decodes
    );
}

/// A key only in L3 (S3): 1,000 concurrent `get_or_fetch` make one Redis `GET` (a miss), one
/// S3 `GetObject`, no loader call, no encode (the refill writes the same bytes), one decode,
/// one refill of L2 and no S3 `PutObject`; every caller gets the same `Arc`, from L3, and
/// Redis then holds exactly what S3 holds. The refill is the conditional write's script: one
/// `EVALSHA`, answered `NOSCRIPT` by this new server, then one `EVAL`, whose `GETRANGE` finds
/// no value and whose `SET` stores the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_only_in_l3_is_read_once_from_s3_and_refills_redis_once() {
    let Some(services) = services().await else {
        return;
    };
    let outcome = burst(&services, "only-l3", Seed::L3).await;

    assert_one_shared_value(&outcome, Source::L3);
    assert_eq!(
        outcome.redis,
        commands(&[
            ("get", 1),
            ("evalsha", 1),
            ("eval", 1),
            ("getrange", 1),
            ("set", 1)
        ]),
        "Redis commands during the burst"
    );
    assert_eq!(outcome.s3.get(ops::GET_OBJECT), 1, "{}", outcome.s3);
    assert_eq!(outcome.s3.errors(ops::GET_OBJECT), 0, "{}", outcome.s3);
    assert_eq!(outcome.s3.get(ops::PUT_OBJECT), 0, "{}", outcome.s3);
    assert_eq!(outcome.s3.total(), 1, "only one S3 request: {}", outcome.s3);
    assert_eq!(outcome.loads, 0, "loader calls");
    assert_eq!(outcome.stats.loader_calls, 0);
    assert_eq!(outcome.encodes, 0, "encodes");
    assert_eq!(outcome.decodes, 1, "decodes");
    assert_eq!(outcome.stats.decodes, [0, 1]);
    assert_eq!(outcome.stats.write_errors, [0, 0]);

    // The refill: Redis holds the same bytes and timestamps as S3.
    let in_s3 = outcome.s3_tier.get(&outcome.key).await.unwrap();
    let in_redis = outcome.redis_tier.get(&outcome.key).await.unwrap();
    assert!(in_s3.is_some());
    assert_eq!(in_redis, in_s3, "L2 was refilled with L3's value");
    eprintln!(
        "only in L3: redis {:?}, s3 {}, loads {}, encodes {}, decodes {}",
        outcome.redis, outcome.s3, outcome.loads, outcome.encodes, outcome.decodes
    );
}

/// A key that is nowhere: 1,000 concurrent `get_or_fetch` make one Redis `GET` (a miss), one
/// S3 `GetObject` (a miss: `NoSuchKey`), one loader call, one encode, no decode, then one
/// Redis `SET` and one S3 `PutObject` of the same bytes; every caller gets the same `Arc`,
/// from the loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_that_is_nowhere_is_loaded_once_and_written_once_per_tier() {
    let Some(services) = services().await else {
        return;
    };
    let outcome = burst(&services, "nowhere", Seed::Nowhere).await;

    assert_one_shared_value(&outcome, Source::Loader);
    assert_eq!(
        outcome.redis,
        commands(&[("get", 1), ("set", 1)]),
        "Redis commands during the burst"
    );
    assert_eq!(outcome.s3.get(ops::GET_OBJECT), 1, "{}", outcome.s3);
    assert_eq!(
        outcome.s3.errors(ops::GET_OBJECT),
        1,
        "the GET was a NoSuchKey miss: {}",
        outcome.s3
    );
    assert_eq!(outcome.s3.get(ops::PUT_OBJECT), 1, "{}", outcome.s3);
    assert_eq!(outcome.s3.errors(ops::PUT_OBJECT), 0, "{}", outcome.s3);
    assert_eq!(outcome.s3.total(), 2, "one GET and one PUT: {}", outcome.s3);
    assert_eq!(outcome.loads, 1, "loader calls");
    assert_eq!(outcome.stats.loader_calls, 1);
    assert_eq!(outcome.encodes, 1, "encodes");
    assert_eq!(outcome.decodes, 0, "decodes");
    assert_eq!(outcome.stats.decodes, [0, 0]);
    assert_eq!(outcome.stats.write_errors, [0, 0]);

    // Both tiers hold the one encoding, with the same timestamps.
    let in_s3 = outcome.s3_tier.get(&outcome.key).await.unwrap();
    let in_redis = outcome.redis_tier.get(&outcome.key).await.unwrap();
    assert!(in_redis.is_some());
    assert_eq!(in_redis, in_s3, "the same bytes in both tiers");
    eprintln!(
        "nowhere: redis {:?}, s3 {}, loads {}, encodes {}, decodes {}",
        outcome.redis, outcome.s3, outcome.loads, outcome.encodes, outcome.decodes
    );
}
