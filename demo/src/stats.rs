//! What the workload records: per-second buckets for the timeline and the live line, and
//! latency histograms per source tier for the summary. Every counter is an atomic, so the
//! clients record without a lock and the display reads while they run.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tierkit::{HitFreshness, Source, StaleCause};

/// Sub-buckets per power of two of the latency histograms: a percentile is known within
/// 1/16 (about 6%).
const SUB_BUCKETS: usize = 16;
/// Powers of two covered, from 1 µs: up to about 2^26 µs (67 s); longer calls land in the
/// last bucket.
const POWERS: usize = 27;
const BUCKETS: usize = SUB_BUCKETS * POWERS;

/// A latency histogram in microseconds, log-linear, lock-free.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_micros: AtomicU64::new(0),
        }
    }

    /// The bucket of `micros`.
    fn bucket(micros: u64) -> usize {
        if micros < SUB_BUCKETS as u64 {
            return micros as usize;
        }
        // micros >= 16: its top bit is at position `power` >= 4; the next 4 bits pick the
        // sub-bucket.
        let power = 63 - micros.leading_zeros() as usize;
        let sub = ((micros >> (power - 4)) & (SUB_BUCKETS as u64 - 1)) as usize;
        ((power - 3) * SUB_BUCKETS + sub).min(BUCKETS - 1)
    }

    /// The largest value that falls in bucket `index`.
    fn upper_bound(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let power = index / SUB_BUCKETS + 3;
        let sub = (index % SUB_BUCKETS) as u64;
        ((SUB_BUCKETS as u64 + sub + 1) << (power - 4)) - 1
    }

    /// Records one call.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(micros)].fetch_add(1, Relaxed);
        self.max_micros.fetch_max(micros, Relaxed);
    }

    /// Calls recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|count| count.load(Relaxed)).sum()
    }

    /// The latency under which a fraction `q` (0..=1) of the calls fell, or `None` when
    /// nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count.load(Relaxed);
            if seen >= rank {
                let bound = Self::upper_bound(index).min(self.max_micros.load(Relaxed));
                return Some(Duration::from_micros(bound));
            }
        }
        Some(self.max())
    }

    /// The slowest call recorded.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Relaxed))
    }
}

/// Where an answer came from, as the summary groups them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// moka.
    L1,
    /// Redis (or the Redis + S3 composition).
    L2,
    /// S3.
    L3,
    /// The origin, through the loader (including callers that joined its flight).
    Origin,
    /// A value written by a `set` while the caller waited.
    Set,
}

impl Served {
    /// Every source, in report order.
    pub const ALL: [Served; 5] = [
        Served::L1,
        Served::L2,
        Served::L3,
        Served::Origin,
        Served::Set,
    ];

    /// From a hit's source (a fallback is never configured by the demo: counted as origin).
    pub fn from_source(source: Source) -> Self {
        match source {
            Source::L1 => Served::L1,
            Source::L2 => Served::L2,
            Source::L3 => Served::L3,
            Source::Set => Served::Set,
            _ => Served::Origin,
        }
    }

    /// Index in per-source arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a stale value was served, as the summary groups them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleKind {
    /// Inside the stale-while-revalidate window, while a refresh ran in the background.
    Revalidating,
    /// Fail-safe: the origin failed, the previous value was served.
    FailSafe,
    /// Fail-safe, from the throttle window of an earlier failure (no origin call).
    FailSafeThrottled,
    /// The caller's soft or hard timeout passed before the origin answered.
    Timeout,
}

impl StaleKind {
    /// Every kind, in report order.
    pub const ALL: [StaleKind; 4] = [
        StaleKind::Revalidating,
        StaleKind::FailSafe,
        StaleKind::FailSafeThrottled,
        StaleKind::Timeout,
    ];

    /// The kind of a hit's freshness, or `None` for a fresh hit.
    pub fn of(freshness: HitFreshness) -> Option<Self> {
        match freshness {
            HitFreshness::Fresh => None,
            HitFreshness::Revalidating => Some(StaleKind::Revalidating),
            HitFreshness::Stale(StaleCause::FailSafe {
                throttled: true, ..
            }) => Some(StaleKind::FailSafeThrottled),
            HitFreshness::Stale(StaleCause::FailSafe { .. }) => Some(StaleKind::FailSafe),
            HitFreshness::Stale(_) => Some(StaleKind::Timeout),
            // Kinds of freshness added in later versions are counted with the timeouts.
            _ => Some(StaleKind::Timeout),
        }
    }

    /// Index in per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in the summary and its JSON.
    pub fn key(self) -> &'static str {
        match self {
            StaleKind::Revalidating => "revalidating",
            StaleKind::FailSafe => "fail_safe",
            StaleKind::FailSafeThrottled => "fail_safe_throttled",
            StaleKind::Timeout => "timeout",
        }
    }
}

/// One second of the run.
pub struct Second {
    /// Reads answered with a value.
    pub served: [AtomicU64; Served::ALL.len()],
    /// Reads that returned an error.
    pub errors: AtomicU64,
    /// Stale answers (any kind).
    pub stale: AtomicU64,
    /// Origin calls started.
    pub origin_calls: AtomicU64,
    /// Writes (`set`) that returned `Ok`.
    pub writes: AtomicU64,
    /// Writes that returned an error.
    pub write_errors: AtomicU64,
    /// Latency of every read.
    pub latency: Histogram,
}

impl Second {
    fn new() -> Self {
        Second {
            served: Default::default(),
            errors: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            origin_calls: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            latency: Histogram::new(),
        }
    }

    /// Reads, answered or failed.
    pub fn requests(&self) -> u64 {
        self.served.iter().map(|n| n.load(Relaxed)).sum::<u64>() + self.errors.load(Relaxed)
    }

    /// Reads served by `source`.
    pub fn served(&self, source: Served) -> u64 {
        self.served[source.index()].load(Relaxed)
    }
}

/// Everything the run records.
pub struct Recorder {
    started: Instant,
    seconds: Box<[Second]>,
    /// Latency per source tier, whole run.
    pub by_source: [Histogram; Served::ALL.len()],
    /// Latency of reads that failed, whole run.
    pub failed: Histogram,
    /// Stale answers per kind, whole run.
    pub stale: [AtomicU64; StaleKind::ALL.len()],
}

impl Recorder {
    /// A recorder for a run of `duration`, starting now (a few spare seconds absorb the
    /// stragglers of the last second and the cleanup).
    pub fn new(duration: Duration) -> Self {
        let seconds = duration.as_secs() as usize + 5;
        Recorder {
            started: Instant::now(),
            seconds: (0..seconds).map(|_| Second::new()).collect(),
            by_source: std::array::from_fn(|_| Histogram::new()),
            failed: Histogram::new(),
            stale: Default::default(),
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The bucket of the current second.
    pub fn now(&self) -> &Second {
        let index = (self.elapsed().as_secs() as usize).min(self.seconds.len() - 1);
        &self.seconds[index]
    }

    /// Bucket `index` (clamped to the last one).
    pub fn second(&self, index: usize) -> &Second {
        &self.seconds[index.min(self.seconds.len() - 1)]
    }

    /// Records a read answered by `served` after `elapsed`.
    pub fn read(&self, served: Served, stale: Option<StaleKind>, elapsed: Duration) {
        let second = self.now();
        second.served[served.index()].fetch_add(1, Relaxed);
        second.latency.record(elapsed);
        self.by_source[served.index()].record(elapsed);
        if let Some(kind) = stale {
            second.stale.fetch_add(1, Relaxed);
            self.stale[kind.index()].fetch_add(1, Relaxed);
        }
    }

    /// Records a read that failed after `elapsed`.
    pub fn read_failed(&self, elapsed: Duration) {
        let second = self.now();
        second.errors.fetch_add(1, Relaxed);
        second.latency.record(elapsed);
        self.failed.record(elapsed);
    }

    /// Records a write.
    pub fn write(&self, ok: bool) {
        let second = self.now();
        if ok {
            second.writes.fetch_add(1, Relaxed);
        } else {
            second.write_errors.fetch_add(1, Relaxed);
        }
    }

    /// Records an origin call.
    pub fn origin_call(&self) {
        self.now().origin_calls.fetch_add(1, Relaxed);
    }

    /// Sums a counter over the seconds `from..to`.
    pub fn sum(&self, from: usize, to: usize, counter: impl Fn(&Second) -> u64) -> u64 {
        (from..to.min(self.seconds.len()))
            .map(|index| counter(&self.seconds[index]))
            .sum()
    }

    /// Stale answers of `kind`, whole run.
    pub fn stale(&self, kind: StaleKind) -> u64 {
        self.stale[kind.index()].load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut previous = 0;
        for micros in [0, 1, 15, 16, 17, 31, 32, 33, 100, 1_000, 65_535, 1_000_000] {
            let bucket = Histogram::bucket(micros);
            assert!(bucket >= previous, "{micros}");
            assert!(Histogram::upper_bound(bucket) >= micros, "{micros}");
            if bucket > 0 {
                assert!(Histogram::upper_bound(bucket - 1) < micros, "{micros}");
            }
            previous = bucket;
        }
        assert_eq!(Histogram::bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_sixteenth() {
        let histogram = Histogram::new();
        for micros in 1..=1_000 {
            histogram.record(Duration::from_micros(micros));
        }
        let p50 = histogram.quantile(0.5).map(|d| d.as_micros()).unwrap_or(0);
        let p99 = histogram.quantile(0.99).map(|d| d.as_micros()).unwrap_or(0);
        assert!((500..=532).contains(&p50), "{p50}");
        assert!((990..=1_000).contains(&p99), "{p99}");
        assert_eq!(histogram.max(), Duration::from_micros(1_000));
        assert_eq!(Histogram::new().quantile(0.5), None);
    }
}
