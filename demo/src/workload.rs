//! The clients: tasks that read Zipf-distributed keys through `get_or_fetch`, and now and
//! then write one with `set`, each at its share of the request rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tierkit::Cache;
use tierkit_testkit::workload::{XorShift, Zipf};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::origin::{Origin, Product};
use crate::stats::{Recorder, Served, StaleKind};

/// One request in this many is a write (`set`): the application updating a product. Updates
/// fall on any product alike (not on the popular ones more), so hot keys still go stale.
const WRITE_ONE_IN: u64 = 50;
/// Clients pace themselves in ticks of this length.
const TICK: Duration = Duration::from_millis(10);

/// What every client shares.
#[derive(Clone)]
pub struct Workload {
    /// The cache under test.
    pub cache: Cache<Product>,
    /// The origin behind it.
    pub origin: Origin,
    /// What the run records.
    pub recorder: Arc<Recorder>,
    /// The keys, by popularity rank.
    pub keys: Arc<[String]>,
    /// Set to stop every client.
    pub stop: Arc<AtomicBool>,
    /// Versions of written values.
    pub writes: Arc<AtomicU64>,
    /// The keys read since an act cleared them.
    pub read_keys: Arc<ReadKeys>,
}

impl Workload {
    /// The key of rank `rank`.
    pub fn key(&self, rank: usize) -> &str {
        &self.keys[rank]
    }

    /// Starts `clients` clients sharing `rate` requests per second.
    pub fn start(&self, clients: u64, rate: u64, seed: u64) -> JoinSet<()> {
        let zipf = Arc::new(Zipf::new(self.keys.len(), 1.0));
        let per_client = rate as f64 / clients as f64;
        let mut set = JoinSet::new();
        for client in 0..clients {
            let workload = self.clone();
            let zipf = Arc::clone(&zipf);
            let rng = XorShift::new(seed.wrapping_add(client));
            set.spawn(async move { workload.client(zipf, rng, per_client).await });
        }
        set
    }

    /// One client: every tick, the requests it owes at its rate; a tick it missed because
    /// its requests were slow is skipped, not made up (a slow cache lowers the throughput,
    /// as it would in a service).
    async fn client(self, zipf: Arc<Zipf>, mut rng: XorShift, per_second: f64) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let per_tick = per_second * TICK.as_secs_f64();
        let mut owed = 0.0;
        while !self.stop.load(Relaxed) {
            ticks.tick().await;
            owed += per_tick;
            while owed >= 1.0 && !self.stop.load(Relaxed) {
                owed -= 1.0;
                if rng.next_u64().is_multiple_of(WRITE_ONE_IN) {
                    let rank = (rng.next_u64() % self.keys.len() as u64) as usize;
                    self.write(rank).await;
                } else {
                    self.read(zipf.sample(&mut rng)).await;
                }
            }
        }
    }

    /// Reads rank `rank` through the cache and records the answer.
    pub async fn read(&self, rank: usize) {
        let origin = self.origin.clone();
        let id = rank as u64;
        let began = Instant::now();
        let result = self
            .cache
            .get_or_fetch(self.key(rank), move || async move {
                origin.load(id, Duration::ZERO).await
            })
            .await;
        let elapsed = began.elapsed();
        self.read_keys.mark(rank);
        match result {
            Ok(hit) => self.recorder.read(
                Served::from_source(hit.source()),
                StaleKind::of(hit.freshness()),
                elapsed,
            ),
            Err(_) => self.recorder.read_failed(elapsed),
        }
    }

    /// Writes a new version of rank `rank` (the application updated the product).
    async fn write(&self, rank: usize) {
        let version = 1_000_000_000 + self.writes.fetch_add(1, Relaxed);
        let written = self
            .cache
            .set(self.key(rank), Product::new(rank as u64, version))
            .await;
        self.recorder.write(written.is_ok());
    }
}

/// Which keys were read since the last [`take`](ReadKeys::take): one bit per key.
pub struct ReadKeys {
    bits: Box<[AtomicU64]>,
}

impl ReadKeys {
    /// No key of `count` read yet.
    pub fn new(count: usize) -> Self {
        ReadKeys {
            bits: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Key `rank` was read.
    pub fn mark(&self, rank: usize) {
        if let Some(word) = self.bits.get(rank / 64) {
            word.fetch_or(1 << (rank % 64), Relaxed);
        }
    }

    /// How many keys were read since the last call; none from now on.
    pub fn take(&self) -> u64 {
        self.bits
            .iter()
            .map(|word| u64::from(word.swap(0, Relaxed).count_ones()))
            .sum()
    }
}

/// The keys of `count` products.
pub fn keys(count: u64) -> Arc<[String]> {
    (0..count).map(|rank| format!("product:{rank}")).collect()
}
