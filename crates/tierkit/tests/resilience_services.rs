#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests
//! Fail-safe and refresh of the read-through `Cache` against a real Redis: `MokaLocal` (L1)
//! over a private `redis-server` (L2) that `tierkit-services` starts for each test alone
//! (never a shared server, never a fixed port).
//!
//! * Redis stopped mid-run: keys in L1 keep being served (fresh ones as they are, stale ones
//!   flagged fail-safe, then throttled) without waiting on the dead server; a `set` during
//!   the outage reports Redis' error while L1 holds the value; once Redis is back on the same
//!   port, writes reach it again.
//! * Two handles (two "nodes", each with its own L1 and its own Redis connection) sharing one
//!   Redis namespace: a refresh of node A writes its new value to Redis, and node B's refresh
//!   adopts it from there instead of calling its loader.
//!
//! Entry ages come from one [`ManualClock`] given to the cache, to `MokaLocal` and to the
//! Redis tiers: nothing here waits for an entry to age. Real time passes for the network only;
//! every wait is a bounded poll (in count and in time), and the only time measurement is a
//! generous hang guard around each call, never a threshold a passing run gets near.
//!
//! Skips without `redis-server` unless `TIERKIT_REQUIRE_SERVICES` is set (`cargo xtask test`,
//! CI): then a missing server fails the test. Built only with the features `redis`, `moka`
//! and `postcard` (CI runs `cargo test --workspace --all-features`).
#![cfg(all(feature = "redis", feature = "moka", feature = "postcard"))]

use std::future::{Future, Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tierkit::cache::{FailSafeCause, StaleCause};
use tierkit::codec::Postcard;
use tierkit::moka::MokaLocal;
use tierkit::redis::RedisBackend;
use tierkit::{
    Backend, Cache, CacheError, CacheKey, Clock, FetchOptions, Hit, HitFreshness, ManualClock,
    Source,
};
use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions};

/// Freshness of every value written here.
const TTL: Duration = Duration::from_secs(60);

/// The command timeout of every Redis tier here: short, so that calls on a dead server fail
/// fast.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

/// The hang guard of every call and the bound of every poll (a stuck test fails instead of
/// hanging). Never a threshold a passing run gets near.
const PATIENCE: Duration = Duration::from_secs(30);

/// The pause between two rounds of a poll.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The most rounds of any poll (with [`POLL_EVERY`], well past [`PATIENCE`]).
const MAX_POLLS: usize = 2_000;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A private `redis-server`, or `None` (after printing `skipped: ...`) when it is missing and
/// `TIERKIT_REQUIRE_SERVICES` is not set.
async fn redis_server() -> Option<RedisServer> {
    let binaries = RedisBinaries::for_tests()
        .expect("redis-server and redis-cli (TIERKIT_REQUIRE_SERVICES is set)")?;
    let server = tokio::task::spawn_blocking(move || {
        RedisServer::start(&binaries, RedisServerOptions::new())
    })
    .await
    .expect("the start task")
    .expect("a private redis-server");
    Some(server)
}

/// A namespace no other test (or run) shares.
fn namespace(name: &str) -> String {
    format!("tk-res-{}-{name}", std::process::id())
}

/// A Redis tier on `server` under `namespace`, with the short command timeout, deciding expiry
/// with `clock`. Each call opens connections of its own (another "node").
async fn redis_tier(server: &RedisServer, namespace: &str, clock: &ManualClock) -> RedisBackend {
    RedisBackend::builder(server.url().as_str())
        .namespace(namespace)
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("the Redis tier connects")
}

/// A cache over its own `MokaLocal` (on `clock`) and `l2`, reading `clock`, with `options`.
fn cache_over(l2: RedisBackend, clock: &ManualClock, options: FetchOptions) -> Cache<String> {
    let l1 = MokaLocal::builder()
        .max_capacity(1_000)
        .clock(Clock::from(clock.clone()))
        .build();
    Cache::builder(l1, Postcard)
        .l2(l2)
        .clock(Clock::from(clock.clone()))
        .defaults(options)
        .build()
}

/// Awaits `call`, failing the test if it has not returned within [`PATIENCE`] (a hang guard,
/// not a timing assertion).
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {PATIENCE:?}"))
}

/// Waits until `cache` has no flight and no remote write left (a bounded poll).
async fn settle(what: &str, cache: &Cache<String>) {
    let started = Instant::now();
    for _ in 0..MAX_POLLS {
        if cache.keys_in_progress() == 0 {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: flights or writes still running after {PATIENCE:?}: {:?}",
            cache.stats()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("{what}: flights or writes still running after {MAX_POLLS} polls");
}

/// Runs a blocking call of the server (stop, restart) off the async workers.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// Counts loader calls; hands out loaders that count themselves when called.
#[derive(Clone, Debug, Default)]
struct Loads(Arc<AtomicUsize>);

type Loaded = Ready<Result<String, std::io::Error>>;

impl Loads {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// A loader answering `value`.
    fn ok(&self, value: &str) -> impl FnOnce() -> Loaded + Send + 'static {
        let calls = Arc::clone(&self.0);
        let value = value.to_owned();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(Ok(value))
        }
    }

    /// A loader failing: the origin is down too.
    fn failing(&self) -> impl FnOnce() -> Loaded + Send + 'static {
        let calls = Arc::clone(&self.0);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(Err(std::io::Error::other("the origin is down too")))
        }
    }
}

fn key(name: &str) -> CacheKey {
    CacheKey::new(name).unwrap()
}

/// Asserts a hit's value, source and freshness.
#[track_caller]
fn assert_answer(hit: &Hit<String>, value: &str, source: Source, freshness: HitFreshness) {
    assert_eq!(hit.as_str(), value);
    assert_eq!(hit.source(), source);
    assert_eq!(hit.freshness(), freshness);
}

/// What a fail-safe answer after a loader error reports.
fn fail_safe_on_loader_error(throttled: bool) -> HitFreshness {
    HitFreshness::Stale(StaleCause::FailSafe {
        cause: FailSafeCause::LoaderError,
        throttled,
    })
}

/// A read of `key` on `cache` inside its revalidation window, with `loader`: asserts that it
/// answers v1 from L1, `Revalidating`, and started a refresh.
async fn read_in_window(
    what: &str,
    cache: &Cache<String>,
    key: &CacheKey,
    loader: impl FnOnce() -> Loaded + Send + 'static,
) {
    let hit = bounded(what, cache.get_or_fetch(key, loader))
        .await
        .expect("served from L1");
    assert_answer(&hit, "v1", Source::L1, HitFreshness::Revalidating);
    assert!(hit.refresh_started());
}

/// `what`, a `set` of `key` to `value` during the outage: asserts that it answers Redis'
/// error, and returns that error.
async fn set_failing_on_l2(
    what: &str,
    cache: &Cache<String>,
    key: &CacheKey,
    value: &str,
) -> CacheError {
    let err = bounded(what, cache.set(key, value.to_owned()))
        .await
        .expect_err("the only remote tier failed");
    assert_l2_write_error(what.strip_prefix("a ").unwrap_or(what), &err);
    err
}

/// Asserts that `error` is Redis' own transient error of a failed write of L2.
fn assert_l2_write_error(what: &str, error: &CacheError) {
    match error {
        CacheError::Tier {
            tier: Source::L2,
            source,
        } => {
            assert!(source.is_transient(), "{what}: {source:?}");
            assert_eq!(source.tier_label(), Some("redis"), "{what}: {source:?}");
        }
        other => panic!("{what}: not an L2 tier error: {other:?}"),
    }
    assert!(error.is_retryable(), "{what}: {error:?}");
}

// ---------------------------------------------------------------------------------------------
// Redis stopped in the middle

/// Behaviours 31, 32 and 37 against a real Redis that is stopped mid-run (and 13: a failed L2
/// read is a counted miss). Fail-safe on, `MokaLocal` over Redis (command timeout 200 ms).
///
/// * Keys loaded before the outage are in Redis (the write-back reached it).
/// * Redis stopped: reads of keys fresh in L1 are served from L1 (`Fresh`), with no loader
///   call, no flight and no Redis read.
/// * Past `ttl` (ManualClock), with the origin down too (the loader fails): each key starts
///   one flight, whose Redis read fails (a counted miss) and whose loader fails; fail-safe
///   serves the L1 value flagged `Stale(FailSafe { LoaderError, throttled: false })` with the
///   loader's error as the suppressed error (31, 37). The next reads are served from the
///   throttle, `throttled: true`, with no loader call and no Redis read (32).
/// * A `set` during the outage returns Redis' transient error (`CacheError::Tier { L2 }`:
///   with a single remote tier, the default optimistic-parallel policy has no other tier to
///   fall back on, so the L2 error is the answer), counted in `write_errors[0]`; L1 holds the
///   value anyway (read fresh from L1, no loader call).
/// * Redis restarted on the same port (empty: no persistence): `set` succeeds again once the
///   tier has reconnected (a bounded poll), and the value is in Redis: a fresh Redis
///   connection finds it, and a second cache with its own L1 reads it from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b31_b32_b37_redis_stopped_mid_run_l1_serves_stale_flagged_and_writes_resume_after_restart()
{
    let Some(server) = redis_server().await else {
        return;
    };
    let clock = ManualClock::starting_now();
    let namespace = namespace("outage");
    let l2 = redis_tier(&server, &namespace, &clock).await;
    let options = FetchOptions::new()
        .ttl(TTL)
        .fail_safe(true)
        .fail_safe_max(Duration::from_secs(3_600))
        .fail_safe_throttle(Duration::from_secs(30))
        .jitter_max(Duration::ZERO);
    let cache = cache_over(l2.clone(), &clock, options);
    let loads = Loads::default();

    const KEYS: usize = 4;
    let keys: Vec<CacheKey> = (0..KEYS).map(|i| key(&format!("user:{i}"))).collect();
    let values: Vec<String> = (0..KEYS).map(|i| format!("value {i}")).collect();

    // Before: every key loaded once, and written back to Redis.
    for (key, value) in keys.iter().zip(&values) {
        let hit = bounded("a first load", cache.get_or_fetch(key, loads.ok(value)))
            .await
            .expect("loaded");
        assert_eq!(
            (hit.as_str(), hit.source()),
            (value.as_str(), Source::Loader)
        );
    }
    settle("the write-backs", &cache).await;
    assert_eq!(loads.get(), KEYS);
    for key in &keys {
        assert!(
            l2.get(key).await.expect("Redis answers").is_some(),
            "the write-back of {key:?} reached Redis"
        );
    }
    let before = cache.stats();
    assert_eq!(before.loader_calls, KEYS as u64);
    assert_eq!(before.write_errors, [0, 0]);
    assert_eq!(before.tier_errors, [0, 0]);

    // Redis goes away.
    blocking(|| server.stop()).expect("stop");
    assert!(!server.is_running());

    // Fresh keys: served from L1 as they are; no loader call, no flight, no Redis read.
    for _round in 0..3 {
        for (key, value) in keys.iter().zip(&values) {
            let hit = bounded("a fresh read", cache.get_or_fetch(key, loads.failing()))
                .await
                .expect("served from L1");
            assert_answer(&hit, value, Source::L1, HitFreshness::Fresh);
            assert!(hit.suppressed_error().is_none());
        }
    }
    assert_eq!(loads.get(), KEYS, "no loader call for fresh L1 keys");
    assert_eq!(cache.stats(), before, "no flight, no tier read, no write");

    // Past ttl, the origin down too: fail-safe serves the L1 values, flagged.
    clock.advance(TTL + Duration::from_secs(1));
    for (key, value) in keys.iter().zip(&values) {
        let hit = bounded("a stale read", cache.get_or_fetch(key, loads.failing()))
            .await
            .expect("fail-safe hides the loader's error");
        assert_answer(&hit, value, Source::L1, fail_safe_on_loader_error(false));
        assert!(
            matches!(hit.suppressed_error(), Some(CacheError::Loader(_))),
            "{:?}",
            hit.suppressed_error()
        );
    }
    assert_eq!(loads.get(), 2 * KEYS, "one loader call per stale key");
    let activated = cache.stats();
    assert_eq!(activated.flights, before.flights + KEYS as u64);
    assert_eq!(activated.loader_calls, 2 * KEYS as u64);
    assert_eq!(activated.loader_errors, KEYS as u64);
    assert_eq!(activated.fail_safe_activations, [KEYS as u64, 0, 0]);
    assert_eq!(
        activated.tier_errors[0] + activated.tier_timeouts[0],
        KEYS as u64,
        "each flight read Redis once and counted its failure as a miss: {activated:?}"
    );
    eprintln!(
        "redis outage: failed Redis reads counted as tier_errors {:?}, tier_timeouts {:?}",
        activated.tier_errors, activated.tier_timeouts
    );
    assert_eq!(
        activated.write_errors,
        [0, 0],
        "fail-safe values are not written"
    );

    // Within the throttle: served stale without the loader and without Redis.
    for (key, value) in keys.iter().zip(&values) {
        let hit = bounded("a throttled read", cache.get_or_fetch(key, loads.failing()))
            .await
            .expect("served from the throttle");
        assert_answer(&hit, value, Source::L1, fail_safe_on_loader_error(true));
    }
    assert_eq!(loads.get(), 2 * KEYS, "no loader call within the throttle");
    let throttled = cache.stats();
    assert_eq!(throttled.throttled_serves, KEYS as u64);
    assert_eq!(throttled.flights, activated.flights, "no flight");
    assert_eq!(
        throttled.tier_errors, activated.tier_errors,
        "no Redis read"
    );
    assert_eq!(throttled.tier_timeouts, activated.tier_timeouts);

    // Writes during the outage: Redis' error is the answer; L1 holds the value anyway.
    let overwritten = "value 0, written during the outage";
    let err = set_failing_on_l2("a set of a loaded key", &cache, &keys[0], overwritten).await;
    eprintln!("redis outage: a set answered {err}");
    let new_key = key("user:new");
    let new_value = "a new key, written during the outage";
    set_failing_on_l2("a set of a new key", &cache, &new_key, new_value).await;
    for (key, value) in [(&keys[0], overwritten), (&new_key, new_value)] {
        let hit = bounded(
            "a read of a key set",
            cache.get_or_fetch(key, loads.failing()),
        )
        .await
        .expect("L1 holds the value set");
        assert_answer(&hit, value, Source::L1, HitFreshness::Fresh);
    }
    assert_eq!(loads.get(), 2 * KEYS);
    let failed_writes = cache.stats();
    assert_eq!(failed_writes.write_errors, [2, 0]);
    assert_eq!(failed_writes.flights, activated.flights);
    settle("the failed writes", &cache).await;

    // Redis is back on the same port (empty). The same tier reconnects by itself: poll a
    // `set` until it succeeds.
    blocking(|| server.restart()).expect("restart on the same port");
    let resumed_key = key("user:after-restart");
    let resumed = "written after the restart";
    let started = Instant::now();
    let mut failed_attempts = 0_u64;
    let mut written = false;
    for _ in 0..MAX_POLLS {
        match bounded(
            "a set while reconnecting",
            cache.set(&resumed_key, resumed.to_owned()),
        )
        .await
        {
            Ok(()) => {
                written = true;
                break;
            }
            Err(err) => {
                assert_l2_write_error("set while reconnecting", &err);
                failed_attempts += 1;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "writes did not resume within {PATIENCE:?} of the restart"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(written, "writes did not resume within {MAX_POLLS} attempts");
    settle("the write after the restart", &cache).await;
    assert_eq!(cache.stats().write_errors, [2 + failed_attempts, 0]);
    eprintln!(
        "redis outage: writes resumed {:?} after the restart, {failed_attempts} attempt(s) failed",
        started.elapsed()
    );

    // The value is in Redis: through a fresh connection, and through a second cache with its
    // own L1 (from L2, no loader).
    let fresh_tier = redis_tier(&server, &namespace, &clock).await;
    let stored = bounded("a read through a fresh tier", fresh_tier.get(&resumed_key))
        .await
        .expect("Redis answers")
        .expect("the value written after the restart is in Redis");
    assert_eq!(stored.created_at(), clock.now());
    let other = cache_over(fresh_tier, &clock, options);
    let other_loads = Loads::default();
    let hit = bounded(
        "a read through a second cache",
        other.get_or_fetch(&resumed_key, other_loads.failing()),
    )
    .await
    .expect("read from Redis");
    assert_answer(&hit, resumed, Source::L2, HitFreshness::Fresh);
    assert_eq!(other_loads.get(), 0);

    // The first cache still serves its own L1 for everything else.
    let hit = bounded("a read after the restart", cache.get(&keys[1]))
        .await
        .expect("no error")
        .expect("in L1");
    assert_eq!(hit.as_str(), values[1]);
    assert_eq!(hit.source(), Source::L1);
    assert_eq!(loads.get(), 2 * KEYS, "no loader call after the restart");
}

// ---------------------------------------------------------------------------------------------
// Two nodes sharing one Redis

/// Behaviours 40 and 43 across two handles sharing one Redis namespace (two "nodes": each its
/// own `MokaLocal` and its own Redis connection, one ManualClock), with stale-while-revalidate.
///
/// Both hold v1 (A loaded it and wrote it back; B read it from Redis: same `created_at`).
/// Past `stale_at`, inside the window: A's read answers v1 `Revalidating` and starts a refresh;
/// Redis holds the same entry as A's L1 (not newer), so A's loader runs and answers v2, which
/// is written back to Redis. Then B's read answers v1 `Revalidating` and starts a refresh that
/// finds A's newer entry in Redis and adopts it (`refreshes_adopted == 1`): B's loader is never
/// called, and B's next read is v2, fresh, from L1, with A's timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b40_b43_a_refresh_on_node_a_reaches_redis_and_node_b_adopts_it_without_its_loader() {
    let Some(server) = redis_server().await else {
        return;
    };
    let clock = ManualClock::starting_now();
    let namespace = namespace("two-nodes");
    let options = FetchOptions::new()
        .ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(30))
        .jitter_max(Duration::ZERO);
    let a = cache_over(
        redis_tier(&server, &namespace, &clock).await,
        &clock,
        options,
    );
    let b = cache_over(
        redis_tier(&server, &namespace, &clock).await,
        &clock,
        options,
    );
    let probe = redis_tier(&server, &namespace, &clock).await;
    let (a_loads, b_loads) = (Loads::default(), Loads::default());
    let key = key("user:shared");

    // Both nodes hold v1: A loads it and writes it back, B reads it from Redis.
    let first_a = bounded("A's first load", a.get_or_fetch(&key, a_loads.ok("v1")))
        .await
        .expect("loaded");
    assert_eq!((first_a.as_str(), first_a.source()), ("v1", Source::Loader));
    settle("A's write-back of v1", &a).await;
    let first_b = bounded("B's first read", b.get_or_fetch(&key, b_loads.ok("from B")))
        .await
        .expect("read from Redis");
    assert_eq!((first_b.as_str(), first_b.source()), ("v1", Source::L2));
    assert_eq!(
        first_b.meta(),
        first_a.meta(),
        "the same entry on both nodes"
    );
    settle("B's first read", &b).await;
    let v1_created = first_a.meta().created_at();

    // Past stale_at, inside the revalidation window.
    clock.advance(TTL + Duration::from_secs(1));

    // A: v1 at once, and a refresh whose loader answers v2 (Redis has nothing newer).
    read_in_window("A's read in its window", &a, &key, a_loads.ok("v2")).await;
    settle("A's refresh and its write-back", &a).await;
    assert_eq!(a_loads.get(), 2, "A's loader ran for the refresh");
    let a_stats = a.stats();
    assert_eq!(a_stats.refreshes_started, 1);
    assert_eq!(
        a_stats.refreshes_adopted, 0,
        "Redis held nothing newer for A"
    );
    assert_eq!(a_stats.refreshes_failed, 0);
    assert_eq!(a_stats.write_errors, [0, 0]);
    let refreshed = bounded("a read of Redis", probe.get(&key))
        .await
        .expect("Redis answers")
        .expect("A's refresh is in Redis");
    assert_eq!(refreshed.created_at(), clock.now());
    assert!(refreshed.created_at() > v1_created);
    let hit = bounded("A's next read", a.get_or_fetch(&key, a_loads.failing()))
        .await
        .expect("served from L1");
    assert_eq!((hit.as_str(), hit.freshness()), ("v2", HitFreshness::Fresh));

    // B: v1 at once, and a refresh that adopts A's v2 from Redis; B's loader is not called.
    read_in_window("B's read in its window", &b, &key, b_loads.ok("from B")).await;
    settle("B's refresh", &b).await;
    let b_stats = b.stats();
    assert_eq!(b_stats.refreshes_started, 1);
    assert_eq!(
        b_stats.refreshes_adopted, 1,
        "B adopted A's entry: {b_stats:?}"
    );
    assert_eq!(b_stats.refreshes_failed, 0);
    assert_eq!(b_stats.loader_calls, 0);
    assert_eq!(b_loads.get(), 0, "B's loader was never called");
    assert_eq!(b_stats.decodes, [2, 0], "v1, then A's v2");
    assert_eq!(b_stats.write_errors, [0, 0]);

    // B's next read: v2, fresh, from L1, with A's timestamps.
    let hit = bounded("B's next read", b.get_or_fetch(&key, b_loads.failing()))
        .await
        .expect("served from L1");
    assert_answer(&hit, "v2", Source::L1, HitFreshness::Fresh);
    assert_eq!(hit.meta().created_at(), refreshed.created_at());
    assert_eq!(hit.meta().stale_at(), refreshed.stale_at());
    assert_eq!(b_loads.get(), 0);
    assert_eq!(a_loads.get(), 2);
}
