//! The typed read-through `Cache<V>` serving through an origin outage with fail-safe.
//!
//! One price is loaded from an origin (a stand-in for a database or a service that can be
//! switched up, down or slow), then time moves on by hand (a `ManualClock`, so the example
//! takes a second rather than minutes) and the origin fails:
//!
//! 1. a miss runs the loader; the next read is an L1 hit;
//! 2. past the value's freshness, the origin fails: fail-safe serves the previous value,
//!    flagged `Stale(FailSafe { .. })`, with the hidden error;
//! 3. within the fail-safe throttle, reads are served stale without calling the origin;
//! 4. after the throttle, the origin is slow: the caller gets the stale value at its soft
//!    timeout, and the flight stores the new value when the origin answers;
//! 5. past the value's `expires_at` (the fail-safe horizon), there is nothing left to serve
//!    and the origin's error reaches the caller.
//!
//! Only the in-process tier is used: no server is needed.
//!
//! Run it with `cargo run -p tierkit --example read_through`.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tierkit::cache::NoJitter;
use tierkit::moka::MokaLocal;
use tierkit::{
    Cache, CacheError, Clock, FetchOptions, Hit, ManualClock, Timestamp, codec::Postcard,
};

/// The cached value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Price {
    sku: String,
    cents: u64,
}

/// How the origin behaves.
const UP: u8 = 0;
const DOWN: u8 = 1;
const SLOW: u8 = 2;

/// A stand-in for the origin: answers, fails, or answers after a second.
#[derive(Clone, Default)]
struct Origin {
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct OriginDown;

impl fmt::Display for OriginDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the price service refused the connection")
    }
}

impl Error for OriginDown {}

impl Origin {
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn load(&self, sku: &str) -> Result<Price, OriginDown> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode.load(Ordering::SeqCst) {
            UP => Ok(price(sku, call)),
            DOWN => Err(OriginDown),
            _ => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(price(sku, call))
            }
        }
    }
}

/// Each origin call answers a new price, so the output shows which load a value came from.
fn price(sku: &str, call: usize) -> Price {
    Price {
        sku: sku.to_owned(),
        cents: 1_000 + 100 * call as u64,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let clock = ManualClock::starting_now();
    let start = clock.now();
    let origin = Origin::default();

    let ttl = Duration::from_secs(60);
    let options = FetchOptions::new()
        .ttl(ttl)
        .fail_safe(true) // serve the previous value when the origin fails...
        .fail_safe_max(Duration::from_secs(600)) // ...up to 10 minutes after it was loaded,
        .fail_safe_throttle(Duration::from_secs(30)) // calling the origin at most every 30 s
        .soft_timeout(Duration::from_millis(100)) // a slow origin: answer stale at 100 ms
        .hard_timeout(Duration::from_secs(5));
    let l1 = MokaLocal::<Price>::builder()
        .max_capacity(10_000)
        .clock(Clock::from(clock.clone()))
        .build();
    let prices: Cache<Price> = Cache::builder(l1, Postcard)
        .label("prices")
        .clock(Clock::from(clock.clone()))
        .jitter(NoJitter) // exact freshness, so the timeline below is exact
        .defaults(options)
        .build();
    println!(
        "cache `prices`: ttl 60 s, fail-safe for 10 min, throttle 30 s, soft timeout 100 ms\n"
    );

    step("1. a miss runs the loader; the next read is an L1 hit");
    report(&read(&prices, &origin).await, start, &origin);
    report(&read(&prices, &origin).await, start, &origin);

    step("2. 90 s later the value is stale and the origin is down: fail-safe");
    clock.advance(Duration::from_secs(90));
    origin.set(DOWN);
    let served = read(&prices, &origin).await;
    report(&served, start, &origin);
    if let Ok(hit) = &served
        && let Some(error) = hit.suppressed_error()
    {
        println!("   hidden error: {}", chain(error));
    }

    step("3. 10 s later, within the throttle: served stale without calling the origin");
    clock.advance(Duration::from_secs(10));
    report(&read(&prices, &origin).await, start, &origin);

    step("4. 30 s later the throttle is over and the origin is slow (1 s)");
    clock.advance(Duration::from_secs(30));
    origin.set(SLOW);
    let began = Instant::now();
    let served = read(&prices, &origin).await;
    println!("   answered after {} ms", began.elapsed().as_millis());
    report(&served, start, &origin);
    // The flight goes on after the soft timeout and stores the origin's answer.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    println!("   once the origin has answered:");
    report(&read(&prices, &origin).await, start, &origin);

    step("5. 11 minutes later the origin is down and the value is past its horizon");
    clock.advance(Duration::from_secs(660));
    origin.set(DOWN);
    report(&read(&prices, &origin).await, start, &origin);

    let stats = prices.stats();
    println!(
        "\nstats: {} loader calls ({} failed), fail-safe activations by cause \
         [loader error, loader panic, timeout] = {:?}, {} throttled serves, {} soft timeouts",
        stats.loader_calls,
        stats.loader_errors,
        stats.fail_safe_activations,
        stats.throttled_serves,
        stats.soft_timeouts
    );
    println!("\ndone.");
    Ok(())
}

/// One read of the example's key through the cache.
async fn read(prices: &Cache<Price>, origin: &Origin) -> Result<Hit<Price>, CacheError> {
    let origin = origin.clone();
    prices
        .get_or_fetch(
            "price:sku-1",
            move || async move { origin.load("sku-1").await },
        )
        .await
}

/// Prints what a read got: the value, where it came from, how fresh it is, and its life.
fn report(result: &Result<Hit<Price>, CacheError>, start: Timestamp, origin: &Origin) {
    let since = |t: Timestamp| t.saturating_duration_since(start).as_secs();
    match result {
        Ok(hit) => {
            let meta = hit.meta();
            println!(
                "   {} = {} cents from {}, {:?} (loaded at +{} s, stale at +{} s, expires at +{} s); origin calls so far: {}",
                hit.sku,
                hit.cents,
                hit.source(),
                hit.freshness(),
                since(meta.created_at()),
                since(meta.stale_at()),
                since(meta.expires_at()),
                origin.calls()
            );
        }
        Err(error) => println!(
            "   error: {}; origin calls so far: {}",
            chain(error),
            origin.calls()
        ),
    }
}

/// An error and its causes on one line: each error of the chain says what failed at its own
/// level, and the causes are its sources.
fn chain(error: &CacheError) -> String {
    std::iter::successors(Some(error as &dyn Error), |&e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn step(title: &str) {
    println!("\n{title}");
}
