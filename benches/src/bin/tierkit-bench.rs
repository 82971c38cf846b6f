//! `cargo xtask bench`: the table of performance goals (see `docs/performance.md`).
//!
//! Usage: `tierkit-bench [--quick] [--json PATH]`. Exits 1 when a row fails its goal.

use std::future::Future;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use moka::Expiry;
use tierkit_benches::{Plan, Row, json, ratio, table};
use tierkit_cache::codec::Postcard;
use tierkit_cache::{Cache, FetchOptions};
use tierkit_core::{Backend, CacheKey, CacheValue, Clock, ManualClock, SharedBackend};
use tierkit_moka::{MokaBackend, MokaLocal};
use tierkit_policy::Composition;
use tierkit_testkit::{CountingAllocator, MemoryBackend, count_allocations};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Entries in every L1 of the table, and keys read.
const CAPACITY: u64 = 10_000;
const KEYS: usize = 1_000;

/// A raw moka cache configured like the tiers: per-entry expiry from the value.
struct ValueExpiry;

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

/// Polls `future` once; the hit paths measured here answer at the first poll.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn keys() -> Vec<CacheKey> {
    (0..KEYS)
        .map(|i| CacheKey::builder("bench").part(i).build())
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

/// Cycles through `keys`, one per call.
fn cycle<'a>(keys: &'a [CacheKey]) -> impl FnMut() -> &'a CacheKey {
    let mut i = 0;
    move || {
        i = (i + 1) % keys.len();
        &keys[i]
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

fn composed_rows(plan: Plan, keys: &[CacheKey], rows: &mut Vec<Row>) {
    let value = CacheValue::with_ttl(
        vec![7u8; 256],
        Clock::System.now(),
        Duration::from_secs(3600),
    );
    let raw: moka::sync::Cache<CacheKey, CacheValue> = moka::sync::Cache::builder()
        .max_capacity(CAPACITY)
        .expire_after(ValueExpiry)
        .build();
    let composed = Composition::builder(
        MokaBackend::builder().max_capacity(CAPACITY).build(),
        MemoryBackend::new("l2").remote(),
    )
    .build();
    let l1 = MokaBackend::builder().max_capacity(CAPACITY).build();
    let erased: SharedBackend =
        Arc::new(Composition::builder(l1.clone(), MemoryBackend::new("l2").remote()).build());
    for key in keys {
        raw.insert(key.clone(), value.clone());
        let _ = now_or_never(composed.set(key, value.clone()));
        let _ = now_or_never(erased.set(key, value.clone()));
    }
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1 = ratio(plan, || raw.get(a()), || now_or_never(composed.get(b())));
    rows.push(Row::ratio(
        "G1",
        "composed L1 hit (moka over a remote tier, static) vs raw moka get",
        g1,
        1.10,
        "<= 1.10x",
    ));
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1d = ratio(plan, || raw.get(a()), || now_or_never(erased.get(b())));
    rows.push(Row::ratio(
        "G1d",
        "the same through Arc<dyn Backend>",
        g1d,
        1.15,
        "<= 1.15x",
    ));
    // Not a goal: the cost of one system-clock read, which every L1 hit pays to check freshness,
    // next to a raw moka get (how much of the gap above it explains).
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let clock = ratio(
        plan,
        || raw.get(a()),
        || {
            let _ = b();
            Clock::System.now()
        },
    );
    rows.push(Row::ratio(
        "info",
        "one Clock::System read vs a raw moka get",
        clock,
        f64::INFINITY,
        "-",
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

fn unused_loader() -> impl Future<Output = Result<String, std::io::Error>> {
    std::future::ready(Ok(String::new()))
}

fn typed_rows(plan: Plan, keys: &[CacheKey], rows: &mut Vec<Row>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("no tokio runtime: {error}");
            return;
        }
    };
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
    for key in keys {
        raw.insert(key.clone(), Arc::new("value".to_owned()));
        runtime.block_on(async {
            let _ = local_only.set(key, "value".to_owned()).await;
            let _ = tiered.set(key, "value".to_owned()).await;
        });
    }
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let g1t = ratio(
        plan,
        || raw.get(a()),
        || now_or_never(local_only.get_or_fetch(b(), unused_loader)),
    );
    rows.push(Row::ratio(
        "G1t",
        "typed Cache<V> get_or_fetch L1 hit vs raw moka get of an Arc<V>",
        g1t,
        1.10,
        "<= 1.10x",
    ));
    let n = 10_000;
    let (mut a, mut b) = (cycle(keys), cycle(keys));
    let raw_allocs = allocations_per_op(n, || drop(raw.get(a())));
    let typed_allocs = allocations_per_op(n, || {
        drop(now_or_never(local_only.get_or_fetch(b(), unused_loader)));
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
        || now_or_never(local_only.get_or_fetch(a(), unused_loader)),
        || now_or_never(tiered.get_or_fetch(b(), unused_loader)),
    );
    rows.push(Row::ratio(
        "G9",
        "typed L1 hit with L2 and L3 configured vs an L1-only cache",
        g9,
        1.05,
        "<= 1.05x",
    ));
}

fn refresh_rows(plan: Plan, rows: &mut Vec<Row>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("no tokio runtime: {error}");
            return;
        }
    };
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
    let (Ok(window), Ok(fresh)) = (CacheKey::new("window"), CacheKey::new("fresh")) else {
        return;
    };
    runtime.block_on(async {
        let _ = cache.set(&window, "stale".to_owned()).await;
    });
    clock.advance(Duration::from_secs(61));
    runtime.block_on(async {
        let _ = cache.set(&fresh, "fresh".to_owned()).await;
    });
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
        "<= 1.10x",
    ));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = if args.iter().any(|arg| arg == "--quick") {
        Plan::QUICK
    } else {
        Plan::FULL
    };
    let json_path = args
        .iter()
        .position(|arg| arg == "--json")
        .and_then(|at| args.get(at + 1))
        .cloned();
    let keys = keys();
    let mut rows = Vec::new();
    composed_rows(plan, &keys, &mut rows);
    typed_rows(plan, &keys, &mut rows);
    refresh_rows(plan, &mut rows);
    println!(
        "tierkit bench: {} pairs of {} operations per ratio (median of tierkit/raw per pair)\n",
        plan.pairs, plan.batch
    );
    print!("{}", table(&rows));
    if let Some(path) = json_path {
        if let Err(error) = std::fs::write(&path, json(&rows, plan)) {
            eprintln!("could not write {path}: {error}");
            return ExitCode::FAILURE;
        }
        println!("\nwritten: {path}");
    }
    if rows.iter().all(|row| row.pass) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
