//! The in-process rows: L1 hits of a composition (G1, G1d) and of the typed `Cache<V>` (G1t,
//! G9), their allocations (G1a), reads inside the stale-while-revalidate window (G10), and two
//! threads of L1 hits on Zipf keys (G6).
//!
//! Every L1-hit figure polls each read once with a no-op waker: an L1 hit answers at its first
//! poll, so no runtime takes part on either side. The composed stacks have a real Redis tier
//! (on the private server) as L2, which an L1 hit never reaches; the typed ones have in-memory
//! L2 and L3 tiers, for the same reason.
//!
//! The fixtures here are also what the instruction counts ([`crate::instructions`]) run under
//! callgrind: [`Scenario`] names one side of one figure.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use fred::interfaces::KeysInterface as _;
use moka::Expiry;
use tierkit_cache::codec::Postcard;
use tierkit_cache::{Cache, FetchOptions};
use tierkit_core::{Backend, CacheKey, CacheValue, Clock, ManualClock, SharedBackend};
use tierkit_moka::{MokaBackend, MokaLocal};
use tierkit_policy::{AnyReadPolicy, AnyWritePolicy, Composition, SequentialReadPolicy};
use tierkit_redis::RedisBackend;
use tierkit_testkit::workload::{XorShift, Zipf};
use tierkit_testkit::{MemoryBackend, count_allocations};
use tokio::runtime::Runtime;

use crate::{Plan, Row, ratio};

/// Entries in every L1 of these rows.
pub const CAPACITY: u64 = 10_000;
/// Keys the single-thread L1-hit rows cycle through.
pub const KEYS: usize = 1_000;
/// Keys of the two-thread row (G6), drawn with a Zipf distribution.
const ZIPF_KEYS: usize = 10_000;
/// Reads per thread in one G6 burst.
const READS_PER_THREAD: usize = 10_000;

/// The payload of every value here.
fn value() -> CacheValue {
    CacheValue::with_ttl(
        vec![7u8; 256],
        Clock::System.now(),
        Duration::from_secs(3600),
    )
}

/// `n` keys, `bench:0` to `bench:{n-1}`.
pub fn keys(n: usize) -> Result<Vec<CacheKey>, String> {
    (0..n)
        .map(|i| CacheKey::builder("bench").part(i).build())
        .collect::<Result<_, _>>()
        .map_err(|err| err.to_string())
}

/// Polls `future` once; the hit paths measured here answer at the first poll.
pub fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Cycles through `keys`, one per call.
pub fn cycle<'a>(keys: &'a [CacheKey]) -> impl FnMut() -> &'a CacheKey {
    let mut i = 0;
    move || {
        i = (i + 1) % keys.len();
        &keys[i]
    }
}

/// A raw moka cache configured like `MokaBackend`: per-entry expiry from the value.
pub struct ValueExpiry;

impl Expiry<CacheKey, CacheValue> for ValueExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &CacheValue,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.time_to_live(Clock::System.now()))
    }
}

/// A raw moka cache of `Arc<V>` with a per-entry expiry, like `MokaLocal`.
struct FixedExpiry;

impl<V> Expiry<CacheKey, Arc<V>> for FixedExpiry {
    fn expire_after_create(&self, _: &CacheKey, _: &Arc<V>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// moka's `sync::Cache` of `capacity` entries with [`ValueExpiry`]: the raw side of every
/// composed figure.
pub fn raw_moka(capacity: u64) -> moka::sync::Cache<CacheKey, CacheValue> {
    moka::sync::Cache::builder()
        .max_capacity(capacity)
        .expire_after(ValueExpiry)
        .build()
}

/// The statically typed stack of G1: moka over Redis, sequential reads.
pub type StaticStack = Composition<MokaBackend, RedisBackend, SequentialReadPolicy, AnyWritePolicy>;

/// Where a composed stack's L2 is: the private Redis server, connected from a runtime that
/// outlives the fixture.
pub struct RedisL2<'a> {
    /// The runtime the tier's connection runs on.
    pub runtime: &'a Runtime,
    /// The server's URL.
    pub url: String,
}

impl RedisL2<'_> {
    fn tier(&self, namespace: &str) -> Result<RedisBackend, String> {
        self.runtime
            .block_on(
                RedisBackend::builder(self.url.as_str())
                    .namespace(namespace)
                    .build(),
            )
            .map_err(|err| format!("the Redis tier does not connect: {err}"))
    }
}

/// moka of `capacity` entries over `redis`, sequential reads, every type static.
fn static_stack(capacity: u64, redis: RedisBackend) -> StaticStack {
    Composition::builder(MokaBackend::builder().max_capacity(capacity).build(), redis)
        .read_policy(SequentialReadPolicy)
        .build()
}

/// Writes the same value under every key to `raw` and through each of `stacks`.
fn fill(
    runtime: &Runtime,
    keys: &[CacheKey],
    raw: &moka::sync::Cache<CacheKey, CacheValue>,
    stacks: &[&dyn Backend],
) -> Result<(), String> {
    let value = value();
    runtime.block_on(async {
        for key in keys {
            raw.insert(key.clone(), value.clone());
            for stack in stacks {
                stack
                    .set(key, value.clone())
                    .await
                    .map_err(|err| err.to_string())?;
            }
        }
        Ok(())
    })
}

/// The composed stacks of G1 and G1d, and the raw moka cache they are measured against, each
/// holding [`KEYS`] values.
pub struct ComposedFixture {
    /// moka, configured like the stacks' L1.
    pub raw: moka::sync::Cache<CacheKey, CacheValue>,
    /// moka over Redis, every type static.
    pub composed: StaticStack,
    /// moka over Redis built from configuration (policies parsed from their names), behind
    /// `Arc<dyn Backend>` at every level.
    pub erased: SharedBackend,
    /// The keys read.
    pub keys: Vec<CacheKey>,
}

impl ComposedFixture {
    /// Builds the three caches and writes every key to each.
    pub fn new(l2: &RedisL2<'_>) -> Result<Self, String> {
        let keys = keys(KEYS)?;
        let namespace = format!("tk-bench-{}-g1", std::process::id());
        let redis = l2.tier(&namespace)?;
        let raw = raw_moka(CAPACITY);
        let composed = static_stack(CAPACITY, redis.clone());
        let read: AnyReadPolicy = "sequential".parse().map_err(|err| format!("{err}"))?;
        let write: AnyWritePolicy = "optimistic-parallel"
            .parse()
            .map_err(|err| format!("{err}"))?;
        let l1: SharedBackend = Arc::new(MokaBackend::builder().max_capacity(CAPACITY).build());
        let remote: SharedBackend = Arc::new(redis);
        let erased: SharedBackend = Arc::new(
            Composition::builder(l1, remote)
                .read_policy(read)
                .write_policy(write)
                .build(),
        );
        fill(l2.runtime, &keys, &raw, &[&composed, &*erased])?;
        Ok(ComposedFixture {
            raw,
            composed,
            erased,
            keys,
        })
    }
}

/// A loader that is never called: every read of these figures hits L1.
fn unused_loader() -> impl Future<Output = Result<String, std::io::Error>> {
    std::future::ready(Ok(String::new()))
}

/// The typed caches of G1t and G9, and the raw moka cache of `Arc<String>` they are measured
/// against, each holding [`KEYS`] values. Holds the current-thread runtime the caches were
/// built in (their background work would run there; a hit starts none).
pub struct TypedFixture {
    /// moka of `Arc<String>`, configured like `MokaLocal`.
    pub raw: moka::sync::Cache<CacheKey, Arc<String>>,
    /// A `Cache<String>` with an L1 only.
    pub local_only: Cache<String>,
    /// A `Cache<String>` with L1, L2 and L3.
    pub tiered: Cache<String>,
    /// The keys read.
    pub keys: Vec<CacheKey>,
    /// The runtime the caches belong to.
    pub runtime: Runtime,
}

impl TypedFixture {
    /// Builds the three caches and writes every key to each.
    pub fn new() -> Result<Self, String> {
        let keys = keys(KEYS)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("no tokio runtime: {err}"))?;
        let _entered = runtime.enter();
        let raw: moka::sync::Cache<CacheKey, Arc<String>> = moka::sync::Cache::builder()
            .max_capacity(CAPACITY)
            .expire_after(FixedExpiry)
            .build();
        let defaults = FetchOptions::new().ttl(Duration::from_secs(3600));
        let local_only: Cache<String> = Cache::builder(MokaLocal::new(CAPACITY), Postcard)
            .defaults(defaults)
            .build();
        let tiered: Cache<String> = Cache::builder(MokaLocal::new(CAPACITY), Postcard)
            .l2(MemoryBackend::new("l2").remote())
            .l3(MemoryBackend::new("l3").remote())
            .defaults(defaults)
            .build();
        runtime.block_on(async {
            for key in &keys {
                raw.insert(key.clone(), Arc::new("value".to_owned()));
                local_only
                    .set(key, "value".to_owned())
                    .await
                    .map_err(|err| err.to_string())?;
                tiered
                    .set(key, "value".to_owned())
                    .await
                    .map_err(|err| err.to_string())?;
            }
            Ok::<_, String>(())
        })?;
        drop(_entered);
        Ok(TypedFixture {
            raw,
            local_only,
            tiered,
            keys,
            runtime,
        })
    }

    /// One typed L1 hit of `key` through `cache`.
    pub fn hit(cache: &Cache<String>, key: &CacheKey) -> bool {
        matches!(
            now_or_never(cache.get_or_fetch(key, unused_loader)),
            Some(Ok(_))
        )
    }
}

/// One side of one L1-hit figure: what an instruction count runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A raw moka get of a `CacheValue` (the raw side of G1 and G1d).
    RawMoka,
    /// A read of the static stack (G1).
    Composed,
    /// A read of the `Arc<dyn Backend>` stack (G1d).
    Erased,
    /// A raw moka get of an `Arc<String>` (the raw side of G1t).
    RawArc,
    /// A typed `get_or_fetch` that hits L1 (G1t).
    Typed,
    /// A raw fred `GET` of a key the Redis tier holds (the raw side of G2), awaited on a
    /// current-thread runtime.
    RawRedisGet,
    /// A read of moka over Redis that misses L1 and hits Redis, refill off (G2).
    L2Hit,
}

impl Scenario {
    /// Every scenario, in the order the instruction rows name them.
    pub const ALL: [Scenario; 7] = [
        Scenario::RawMoka,
        Scenario::Composed,
        Scenario::Erased,
        Scenario::RawArc,
        Scenario::Typed,
        Scenario::RawRedisGet,
        Scenario::L2Hit,
    ];

    /// The name on the command line (`--instructions NAME N`).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::RawMoka => "raw-moka",
            Scenario::Composed => "composed",
            Scenario::Erased => "erased",
            Scenario::RawArc => "raw-arc",
            Scenario::Typed => "typed",
            Scenario::RawRedisGet => "raw-redis-get",
            Scenario::L2Hit => "l2-hit",
        }
    }

    /// The scenario named `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Builds the scenario's fixture and runs `n` reads of it (the body of an instruction
    /// count). Returns the reads that hit, so a count of a broken fixture is caught.
    pub fn run(self, n: usize, l2: &RedisL2<'_>) -> Result<usize, String> {
        let mut hits = 0;
        match self {
            Scenario::RawMoka | Scenario::Composed | Scenario::Erased => {
                let fixture = ComposedFixture::new(l2)?;
                let mut next = cycle(&fixture.keys);
                for _ in 0..n {
                    let key = next();
                    let hit = match self {
                        Scenario::RawMoka => fixture.raw.get(key).is_some(),
                        Scenario::Composed => {
                            matches!(now_or_never(fixture.composed.get(key)), Some(Ok(Some(_))))
                        }
                        _ => matches!(now_or_never(fixture.erased.get(key)), Some(Ok(Some(_)))),
                    };
                    hits += usize::from(hit);
                }
            }
            Scenario::RawArc | Scenario::Typed => {
                let fixture = TypedFixture::new()?;
                let _entered = fixture.runtime.enter();
                let mut next = cycle(&fixture.keys);
                for _ in 0..n {
                    let key = next();
                    let hit = match self {
                        Scenario::RawArc => fixture.raw.get(key).is_some(),
                        _ => TypedFixture::hit(&fixture.local_only, key),
                    };
                    hits += usize::from(hit);
                }
            }
            Scenario::RawRedisGet | Scenario::L2Hit => {
                let redis = l2.tier(&format!("tk-bench-{}-l2hit", std::process::id()))?;
                let fixture = L2HitFixture::new(l2.runtime, redis)?;
                let L2HitFixture {
                    composed,
                    key,
                    client,
                    redis_key,
                    ..
                } = &fixture;
                hits = l2.runtime.block_on(async {
                    let mut hits = 0;
                    for _ in 0..n {
                        let hit = if self == Scenario::RawRedisGet {
                            matches!(
                                client
                                    .get::<Option<bytes::Bytes>, _>(redis_key.clone())
                                    .await,
                                Ok(Some(_))
                            )
                        } else {
                            matches!(composed.get(key).await, Ok(Some(_)))
                        };
                        hits += usize::from(hit);
                    }
                    hits
                });
                fixture.shutdown(l2.runtime);
            }
        }
        Ok(hits)
    }
}

/// The first fred client of a Redis tier: the raw side of a figure sends its commands through
/// it, so both sides share one connection.
///
/// # Errors
///
/// A tier without a client.
pub fn first_client(tier: &RedisBackend) -> Result<fred::clients::Client, String> {
    tier.clients()
        .into_iter()
        .next()
        .ok_or_else(|| "the Redis tier has no client".to_owned())
}

/// moka over Redis with refill off, and a key that only Redis holds: every read misses L1 and
/// hits Redis (G2, G2c and their instruction count). The raw side reads the same Redis key
/// through the tier's own client.
pub struct L2HitFixture {
    /// moka over the Redis tier, refill off.
    pub composed: Composition<MokaBackend, RedisBackend>,
    /// The key read.
    pub key: CacheKey,
    /// The value Redis holds under it.
    pub value: CacheValue,
    /// The tier's client, for the raw side.
    pub client: fred::clients::Client,
    /// The Redis key the tier stores `key` under.
    pub redis_key: bytes::Bytes,
}

impl L2HitFixture {
    /// Writes the value to `redis` (and only there) and builds the composition over it.
    ///
    /// # Errors
    ///
    /// A write that fails, or a tier without a client.
    pub fn new(runtime: &Runtime, redis: RedisBackend) -> Result<Self, String> {
        let key = CacheKey::new("bench:l2-hit").map_err(|err| err.to_string())?;
        let value = value();
        runtime
            .block_on(redis.set(&key, value.clone()))
            .map_err(|err| err.to_string())?;
        let client = first_client(&redis)?;
        let redis_key = redis.redis_key(&key);
        let composed = Composition::builder(MokaBackend::new(CAPACITY), redis)
            .refill_policy(tierkit_policy::RefillPolicy::Never)
            .build();
        Ok(L2HitFixture {
            composed,
            key,
            value,
            client,
            redis_key,
        })
    }

    /// Closes the Redis tier's connection.
    pub fn shutdown(&self, runtime: &Runtime) {
        runtime.block_on(self.composed.l2().shutdown());
    }
}

/// Allocations per operation of `op`, run `n` times (the least of three runs, so that moka's
/// occasional housekeeping on either side does not decide the figure).
fn allocations_per_op(n: usize, mut op: impl FnMut()) -> f64 {
    let runs = (0..3).map(|_| {
        count_allocations(|| {
            for _ in 0..n {
                op();
            }
        })
    });
    runs.min().unwrap_or(u64::MAX) as f64 / n as f64
}

/// G1, G1d and their allocation rows.
pub fn composed_rows(plan: Plan, fixture: &ComposedFixture, rows: &mut Vec<Row>) {
    let ComposedFixture {
        raw,
        composed,
        erased,
        keys,
    } = fixture;
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1 = ratio(plan, || raw.get(a()), || now_or_never(composed.get(b())));
    rows.push(Row::ratio(
        "G1",
        "composed L1 hit (moka over Redis, sequential, static) vs raw moka get",
        g1,
        1.10,
    ));
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1d = ratio(plan, || raw.get(a()), || now_or_never(erased.get(b())));
    rows.push(Row::ratio(
        "G1d",
        "the same, Arc<dyn Backend> stack built from configuration",
        g1d,
        1.15,
    ));
    let n = 10_000;
    let (mut a, mut b, mut c) = (cycle(keys), cycle(keys), cycle(keys));
    let raw_allocs = allocations_per_op(n, || drop(raw.get(a())));
    let static_allocs = allocations_per_op(n, || drop(now_or_never(composed.get(b()))));
    let dyn_allocs = allocations_per_op(n, || drop(now_or_never(erased.get(c()))));
    rows.push(Row::count(
        "G1a",
        "extra allocations per composed L1 hit (static) vs raw moka",
        (static_allocs - raw_allocs).max(0.0),
        0.0,
        "0 extra",
    ));
    rows.push(Row::count(
        "G1a",
        "extra allocations per composed L1 hit (dyn) vs raw moka",
        (dyn_allocs - raw_allocs).max(0.0),
        0.0,
        "0 extra",
    ));
}

/// G1t, its allocation row, and G9.
pub fn typed_rows(plan: Plan, fixture: &TypedFixture, rows: &mut Vec<Row>) {
    let _entered = fixture.runtime.enter();
    let TypedFixture {
        raw,
        local_only,
        tiered,
        keys,
        ..
    } = fixture;
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1t = ratio(plan, || raw.get(a()), || TypedFixture::hit(local_only, b()));
    rows.push(Row::ratio(
        "G1t",
        "typed Cache<V> get_or_fetch L1 hit vs raw moka get of an Arc<V>",
        g1t,
        1.10,
    ));
    let n = 10_000;
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let raw_allocs = allocations_per_op(n, || drop(raw.get(a())));
    let typed_allocs = allocations_per_op(n, || {
        TypedFixture::hit(local_only, b());
    });
    rows.push(Row::count(
        "G1a",
        "extra allocations per typed L1 hit vs raw moka",
        (typed_allocs - raw_allocs).max(0.0),
        0.0,
        "0 extra",
    ));
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g9 = ratio(
        plan,
        || TypedFixture::hit(local_only, a()),
        || TypedFixture::hit(tiered, b()),
    );
    rows.push(Row::ratio(
        "G9",
        "typed L1 hit with L2 and L3 configured vs an L1-only cache",
        g9,
        1.05,
    ));
}

/// G10: loader calls of 1,000 reads inside the stale-while-revalidate window (the refresh
/// never answers), then the time of such a read against a fresh L1 hit.
pub fn refresh_rows(plan: Plan, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("no tokio runtime: {err}"))?;
    let _entered = runtime.enter();
    let clock = ManualClock::starting_now();
    let cache: Cache<String> = Cache::builder(
        MokaLocal::builder()
            .clock(Clock::from(clock.clone()))
            .build(),
        Postcard,
    )
    .clock(Clock::from(clock.clone()))
    .defaults(
        FetchOptions::new()
            .ttl(Duration::from_secs(60))
            .stale_while_revalidate(Duration::from_secs(3600))
            .jitter_max(Duration::ZERO),
    )
    .build();
    let window = CacheKey::new("window").map_err(|err| err.to_string())?;
    let fresh = CacheKey::new("fresh").map_err(|err| err.to_string())?;
    runtime
        .block_on(cache.set(&window, "stale".to_owned()))
        .map_err(|err| err.to_string())?;
    clock.advance(Duration::from_secs(61));
    runtime
        .block_on(cache.set(&fresh, "fresh".to_owned()))
        .map_err(|err| err.to_string())?;
    // The refresh's loader never answers: every read below stays inside the window.
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: &Arc<AtomicUsize>| {
        let calls = Arc::clone(calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<String, std::io::Error>>()
        }
    };
    for _ in 0..1_000 {
        let _ = now_or_never(cache.get_or_fetch(&window, loader(&calls)));
        runtime.block_on(tokio::task::yield_now());
    }
    rows.push(Row::count(
        "G10",
        "loader calls for 1,000 reads inside the stale-while-revalidate window",
        calls.load(Ordering::SeqCst) as f64,
        1.0,
        "exactly 1",
    ));
    let g10 = ratio(
        plan,
        || now_or_never(cache.get_or_fetch(&fresh, unused_loader)),
        || now_or_never(cache.get_or_fetch(&window, loader(&calls))),
    );
    rows.push(Row::ratio(
        "G10",
        "read inside the SWR window (refresh running) vs a fresh L1 hit",
        g10,
        1.10,
    ));
    Ok(())
}

/// Ranks of [`ZIPF_KEYS`] keys, Zipf(s = 1.0), from a fixed seed: each thread of G6 reads its
/// own stretch of them.
fn zipf_ranks(n: usize) -> Vec<usize> {
    let zipf = Zipf::new(ZIPF_KEYS, 1.0);
    let mut rng = XorShift::new(6);
    (0..n).map(|_| zipf.sample(&mut rng)).collect()
}

/// Runs `per_thread` reads on each of two threads, thread `t` reading `ranks` from offset
/// `t * ranks.len() / 2`; returns when both finished.
fn two_threads(ranks: &[usize], per_thread: usize, read: &(impl Fn(usize) -> bool + Sync)) {
    std::thread::scope(|scope| {
        for thread in 0..2 {
            let start = thread * ranks.len() / 2;
            scope.spawn(move || {
                let mut hits = 0usize;
                for i in 0..per_thread {
                    hits += usize::from(read(ranks[(start + i) % ranks.len()]));
                }
                std::hint::black_box(hits);
            });
        }
    });
}

/// G6: two threads of L1 hits on Zipf keys, the static stack vs raw moka, with the spread of
/// raw against raw printed beside it (two-thread runs are noisy on shared machines).
pub fn threads_rows(plan: Plan, l2: &RedisL2<'_>, rows: &mut Vec<Row>) -> Result<(), String> {
    let keys = keys(ZIPF_KEYS)?;
    let capacity = 2 * ZIPF_KEYS as u64;
    let raw = raw_moka(capacity);
    let redis = l2.tier(&format!("tk-bench-{}-g6", std::process::id()))?;
    let composed = static_stack(capacity, redis);
    fill(l2.runtime, &keys, &raw, &[&composed])?;
    let ranks = zipf_ranks(1 << 16);
    let raw_read = |rank: usize| raw.get(&keys[rank]).is_some();
    let composed_read =
        |rank: usize| matches!(now_or_never(composed.get(&keys[rank])), Some(Ok(Some(_))));
    // Bursts of 2 x 10,000 reads: 2 per batch in the quick plan, 10 in the full one.
    let bursts = Plan {
        pairs: plan.pairs,
        batch: (plan.batch / READS_PER_THREAD).max(2),
    };
    let spread = ratio(
        bursts,
        || two_threads(&ranks, READS_PER_THREAD, &raw_read),
        || two_threads(&ranks, READS_PER_THREAD, &raw_read),
    );
    let g6 = ratio(
        bursts,
        || two_threads(&ranks, READS_PER_THREAD, &raw_read),
        || two_threads(&ranks, READS_PER_THREAD, &composed_read),
    );
    rows.push(Row::info(
        "info",
        "G6's noise: 2 threads, raw moka vs raw moka (time ratio)",
        spread,
    ));
    rows.push(Row::throughput(
        "G6",
        "2 threads, Zipf keys: composed L1-hit throughput vs raw moka",
        g6,
        0.85,
    ));
    Ok(())
}
