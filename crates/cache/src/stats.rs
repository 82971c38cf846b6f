//! [`CacheStats`]: counters of what a cache did off its L1-hit path.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

use crate::frame::{FRAME_ERROR_REASONS, FrameErrorReason};

/// Counters of a [`Cache`](crate::Cache), read with [`Cache::stats`](crate::Cache::stats).
///
/// L1 hits are not counted here: counting them would put a shared atomic on the hot path;
/// every [`Hit`](crate::Hit) says where it came from instead. Per remote tier, index 0 is L2
/// and index 1 is L3.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Flights started (one per key per burst of misses).
    pub flights: u64,
    /// Callers that joined a flight another caller started.
    pub coalesced: u64,
    /// Loader calls.
    pub loader_calls: u64,
    /// Loader calls that returned an error.
    pub loader_errors: u64,
    /// Loader calls that panicked.
    pub loader_panics: u64,
    /// Loader calls that waited for a slot: the cache-wide bound on concurrent loader calls
    /// was reached when their flight was ready to call the loader.
    pub loader_queued: u64,
    /// Flights that waited their hard timeout for a loader slot and ended without calling the
    /// loader ([`TimeoutKind::LoaderSlot`](crate::TimeoutKind::LoaderSlot)).
    pub loader_slot_timeouts: u64,
    /// Flights stopped at their background cap (or at the hard timeout without background
    /// completion).
    pub flights_capped: u64,
    /// Flights stopped because all their callers went away
    /// ([`AbandonPolicy::CancelWhenUnobserved`](crate::AbandonPolicy::CancelWhenUnobserved)).
    pub flights_abandoned: u64,
    /// Flights whose task ended without a result (aborted).
    pub flights_aborted: u64,
    /// Flights a `set` or `remove` superseded (their results are never stored).
    pub superseded: u64,
    /// Entries decoded, per remote tier.
    pub decodes: [u64; 2],
    /// Entries that could not be decoded, per remote tier and reason (indexed like
    /// [`FRAME_ERROR_REASONS`]).
    pub decode_errors: [[u64; FRAME_ERROR_REASONS.len()]; 2],
    /// Remote reads that failed, per remote tier.
    pub tier_errors: [u64; 2],
    /// Remote reads that timed out, per remote tier.
    pub tier_timeouts: [u64; 2],
    /// Values that could not be encoded (kept in L1 only).
    pub encode_errors: u64,
    /// Values larger than `max_payload` once encoded (kept in L1 only).
    pub oversize: u64,
    /// Remote writes that failed, per remote tier.
    pub write_errors: [u64; 2],
    /// Remote writes the offload refused, per remote tier.
    pub writes_rejected: [u64; 2],
    /// Fail-safe activations (a stale value served instead of a failure), per cause, indexed
    /// like [`FailSafeCause`](crate::FailSafeCause): loader error, loader panic, timeout.
    pub fail_safe_activations: [u64; 3],
    /// Reads answered from a fail-safe throttle (no loader call).
    pub throttled_serves: u64,
    /// Callers answered with a stale value at their soft timeout.
    pub soft_timeouts: u64,
    /// Background refreshes started (eager refresh, stale-while-revalidate).
    pub refreshes_started: u64,
    /// Refreshes that adopted a newer entry from a remote tier instead of calling the loader.
    pub refreshes_adopted: u64,
    /// Refreshes whose loader failed (the value was kept, with a back-off).
    pub refreshes_failed: u64,
    /// Refreshes whose result was not stored: a `set` or `remove` superseded them.
    pub refreshes_discarded: u64,
}

impl CacheStats {
    /// Undecodable entries of remote tier `tier` (0 = L2, 1 = L3) for `reason`.
    pub fn decode_errors_for(&self, tier: usize, reason: FrameErrorReason) -> u64 {
        self.decode_errors
            .get(tier)
            .map_or(0, |reasons| reasons[reason.index()])
    }

    /// Undecodable entries of remote tier `tier`, all reasons.
    pub fn decode_errors_total(&self, tier: usize) -> u64 {
        self.decode_errors
            .get(tier)
            .map_or(0, |reasons| reasons.iter().sum())
    }
}

/// The same events as [`Stats`], through the `metrics` facade (no-ops without a recorder);
/// handles resolved once per cache.
#[derive(Debug)]
struct Metrics {
    flights: Counter,
    refreshes: [Counter; 4],
    coalesced: Counter,
    loader_calls: Counter,
    loader_failures: [Counter; 2],
    loader_queued: Counter,
    loader_slot_timeouts: Counter,
    fail_safe: [Counter; 3],
    throttled_serves: Counter,
    soft_timeouts: Counter,
    decode_errors: [[Counter; FRAME_ERROR_REASONS.len()]; 2],
    write_errors: [Counter; 2],
}

impl Metrics {
    fn new(cache: &str) -> Self {
        let cache = cache.to_owned();
        let counter = |name: &'static str| metrics::counter!(name, "cache" => cache.clone());
        let labelled = |name: &'static str, key: &'static str, value: &'static str| metrics::counter!(name, "cache" => cache.clone(), key => value);
        Metrics {
            flights: counter("tierkit_cache_flights_total"),
            refreshes: ["started", "adopted", "failed", "discarded"]
                .map(|result| labelled("tierkit_cache_refreshes_total", "result", result)),
            coalesced: counter("tierkit_cache_coalesced_total"),
            loader_calls: counter("tierkit_cache_loader_calls_total"),
            loader_failures: ["error", "panic"]
                .map(|kind| labelled("tierkit_cache_loader_failures_total", "kind", kind)),
            loader_queued: counter("tierkit_cache_loader_queued_total"),
            loader_slot_timeouts: counter("tierkit_cache_loader_slot_timeouts_total"),
            fail_safe: ["loader_error", "loader_panic", "timeout"]
                .map(|cause| labelled("tierkit_cache_fail_safe_total", "cause", cause)),
            throttled_serves: counter("tierkit_cache_throttled_serves_total"),
            soft_timeouts: counter("tierkit_cache_soft_timeouts_total"),
            decode_errors: ["l2", "l3"].map(|tier| {
                FRAME_ERROR_REASONS.map(|reason| {
                    metrics::counter!(
                        "tierkit_cache_decode_errors_total",
                        "cache" => cache.clone(),
                        "tier" => tier,
                        "reason" => reason
                    )
                })
            }),
            write_errors: ["l2", "l3"]
                .map(|tier| labelled("tierkit_cache_write_errors_total", "tier", tier)),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Stats {
    metrics: Metrics,
    flights: AtomicU64,
    coalesced: AtomicU64,
    loader_calls: AtomicU64,
    loader_errors: AtomicU64,
    loader_panics: AtomicU64,
    loader_queued: AtomicU64,
    loader_slot_timeouts: AtomicU64,
    flights_capped: AtomicU64,
    flights_abandoned: AtomicU64,
    flights_aborted: AtomicU64,
    superseded: AtomicU64,
    decodes: [AtomicU64; 2],
    decode_errors: [[AtomicU64; FRAME_ERROR_REASONS.len()]; 2],
    tier_errors: [AtomicU64; 2],
    tier_timeouts: [AtomicU64; 2],
    encode_errors: AtomicU64,
    oversize: AtomicU64,
    write_errors: [AtomicU64; 2],
    writes_rejected: [AtomicU64; 2],
    fail_safe_activations: [AtomicU64; 3],
    throttled_serves: AtomicU64,
    soft_timeouts: AtomicU64,
    refreshes_started: AtomicU64,
    refreshes_adopted: AtomicU64,
    refreshes_failed: AtomicU64,
    refreshes_discarded: AtomicU64,
}

impl Stats {
    /// Counters of the cache labelled `cache`.
    pub(crate) fn new(cache: &str) -> Self {
        Stats {
            metrics: Metrics::new(cache),
            flights: AtomicU64::default(),
            coalesced: AtomicU64::default(),
            loader_calls: AtomicU64::default(),
            loader_errors: AtomicU64::default(),
            loader_panics: AtomicU64::default(),
            loader_queued: AtomicU64::default(),
            loader_slot_timeouts: AtomicU64::default(),
            flights_capped: AtomicU64::default(),
            flights_abandoned: AtomicU64::default(),
            flights_aborted: AtomicU64::default(),
            superseded: AtomicU64::default(),
            decodes: Default::default(),
            decode_errors: Default::default(),
            tier_errors: Default::default(),
            tier_timeouts: Default::default(),
            encode_errors: AtomicU64::default(),
            oversize: AtomicU64::default(),
            write_errors: Default::default(),
            writes_rejected: Default::default(),
            fail_safe_activations: Default::default(),
            throttled_serves: AtomicU64::default(),
            soft_timeouts: AtomicU64::default(),
            refreshes_started: AtomicU64::default(),
            refreshes_adopted: AtomicU64::default(),
            refreshes_failed: AtomicU64::default(),
            refreshes_discarded: AtomicU64::default(),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Stats {
    pub(crate) fn record_flight(&self) {
        bump(&self.flights);
        self.metrics.flights.increment(1);
    }
    pub(crate) fn record_coalesced(&self) {
        bump(&self.coalesced);
        self.metrics.coalesced.increment(1);
    }
    pub(crate) fn record_loader_call(&self) {
        bump(&self.loader_calls);
        self.metrics.loader_calls.increment(1);
    }
    pub(crate) fn record_loader_error(&self) {
        bump(&self.loader_errors);
        self.metrics.loader_failures[0].increment(1);
    }
    pub(crate) fn record_loader_panic(&self) {
        bump(&self.loader_panics);
        self.metrics.loader_failures[1].increment(1);
    }
    pub(crate) fn record_loader_queued(&self) {
        bump(&self.loader_queued);
        self.metrics.loader_queued.increment(1);
    }
    pub(crate) fn record_loader_slot_timeout(&self) {
        bump(&self.loader_slot_timeouts);
        self.metrics.loader_slot_timeouts.increment(1);
    }
    pub(crate) fn record_capped(&self) {
        bump(&self.flights_capped);
    }
    pub(crate) fn record_abandoned(&self) {
        bump(&self.flights_abandoned);
    }
    pub(crate) fn record_aborted(&self) {
        bump(&self.flights_aborted);
    }
    pub(crate) fn record_superseded(&self) {
        bump(&self.superseded);
    }
    pub(crate) fn record_decode(&self, tier: usize) {
        bump(&self.decodes[tier]);
    }
    pub(crate) fn record_decode_error(&self, tier: usize, reason: FrameErrorReason) {
        bump(&self.decode_errors[tier][reason.index()]);
        self.metrics.decode_errors[tier][reason.index()].increment(1);
    }
    pub(crate) fn record_tier_error(&self, tier: usize) {
        bump(&self.tier_errors[tier]);
    }
    pub(crate) fn record_tier_timeout(&self, tier: usize) {
        bump(&self.tier_timeouts[tier]);
    }
    pub(crate) fn record_encode_error(&self) {
        bump(&self.encode_errors);
    }
    pub(crate) fn record_oversize(&self) {
        bump(&self.oversize);
    }
    pub(crate) fn record_write_error(&self, tier: usize) {
        bump(&self.write_errors[tier]);
        self.metrics.write_errors[tier].increment(1);
    }
    pub(crate) fn record_write_rejected(&self, tier: usize) {
        bump(&self.writes_rejected[tier]);
    }

    pub(crate) fn record_fail_safe(&self, cause: crate::FailSafeCause) {
        let index = match cause {
            crate::FailSafeCause::LoaderError => 0,
            crate::FailSafeCause::LoaderPanic => 1,
            crate::FailSafeCause::Timeout => 2,
        };
        bump(&self.fail_safe_activations[index]);
        self.metrics.fail_safe[index].increment(1);
    }
    pub(crate) fn record_throttled(&self) {
        bump(&self.throttled_serves);
        self.metrics.throttled_serves.increment(1);
    }
    pub(crate) fn record_soft_timeout(&self) {
        bump(&self.soft_timeouts);
        self.metrics.soft_timeouts.increment(1);
    }
    pub(crate) fn record_refresh_started(&self) {
        bump(&self.refreshes_started);
        self.metrics.refreshes[0].increment(1);
    }
    pub(crate) fn record_refresh_adopted(&self) {
        bump(&self.refreshes_adopted);
        self.metrics.refreshes[1].increment(1);
    }
    pub(crate) fn record_refresh_failed(&self) {
        bump(&self.refreshes_failed);
        self.metrics.refreshes[2].increment(1);
    }
    pub(crate) fn record_refresh_discarded(&self) {
        bump(&self.refreshes_discarded);
        self.metrics.refreshes[3].increment(1);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            flights: read(&self.flights),
            coalesced: read(&self.coalesced),
            loader_calls: read(&self.loader_calls),
            loader_errors: read(&self.loader_errors),
            loader_panics: read(&self.loader_panics),
            loader_queued: read(&self.loader_queued),
            loader_slot_timeouts: read(&self.loader_slot_timeouts),
            flights_capped: read(&self.flights_capped),
            flights_abandoned: read(&self.flights_abandoned),
            flights_aborted: read(&self.flights_aborted),
            superseded: read(&self.superseded),
            decodes: self.decodes.each_ref().map(read),
            decode_errors: self
                .decode_errors
                .each_ref()
                .map(|reasons| reasons.each_ref().map(read)),
            tier_errors: self.tier_errors.each_ref().map(read),
            tier_timeouts: self.tier_timeouts.each_ref().map(read),
            encode_errors: read(&self.encode_errors),
            oversize: read(&self.oversize),
            write_errors: self.write_errors.each_ref().map(read),
            writes_rejected: self.writes_rejected.each_ref().map(read),
            fail_safe_activations: self.fail_safe_activations.each_ref().map(read),
            throttled_serves: read(&self.throttled_serves),
            soft_timeouts: read(&self.soft_timeouts),
            refreshes_started: read(&self.refreshes_started),
            refreshes_adopted: read(&self.refreshes_adopted),
            refreshes_failed: read(&self.refreshes_failed),
            refreshes_discarded: read(&self.refreshes_discarded),
        }
    }
}
