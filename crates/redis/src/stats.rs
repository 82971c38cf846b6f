//! Counters of the tier: undecodable values (by reason) and values found expired, kept in
//! atomics and mirrored to `metrics` counters resolved once, at build time.

use std::sync::atomic::{AtomicU64, Ordering};

use tierkit_core::envelope::{DECODE_ERROR_REASONS, DecodeErrorCounters, DecodeErrors, Malformed};

/// The reason name under which a type error (`WRONGTYPE`) is counted.
pub(crate) const WRONG_TYPE: &str = "wrong_type";

/// The name of the metric counting undecodable values, labelled `reason`.
pub(crate) const DECODE_ERRORS_METRIC: &str = "tierkit_redis_decode_errors_total";

/// A snapshot of a tier's counters, from [`RedisBackend::stats`](crate::RedisBackend::stats).
///
/// Counters start at zero when the tier is built and are shared by its clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RedisStats {
    /// Values read that could not be decoded, by reason; each was answered as a miss. Also
    /// exported as the `metrics` counter `tierkit_redis_decode_errors_total{reason}`.
    pub decode_errors: DecodeErrors,
    /// Values read that had already expired by the tier's clock (Redis had not removed them
    /// yet, or its clock is behind the tier's); each was answered as a miss.
    pub expired_reads: u64,
}

/// The live counters.
pub(crate) struct Counters {
    decode: DecodeErrorCounters,
    decode_metrics: [metrics::Counter; DECODE_ERROR_REASONS.len()],
    expired_reads: AtomicU64,
}

impl Counters {
    /// Fresh counters, with the metric handles resolved now (against the recorder installed at
    /// this moment, if any).
    pub(crate) fn new() -> Self {
        Counters {
            decode: DecodeErrorCounters::default(),
            decode_metrics: DECODE_ERROR_REASONS
                .map(|reason| metrics::counter!(DECODE_ERRORS_METRIC, "reason" => reason)),
            expired_reads: AtomicU64::new(0),
        }
    }

    /// Counts a value that did not decode.
    pub(crate) fn malformed(&self, malformed: &Malformed) {
        self.decode_error(malformed.reason());
    }

    /// Counts an undecodable value under `reason`.
    pub(crate) fn decode_error(&self, reason: &str) {
        let i = self.decode.record(reason);
        self.decode_metrics[i].increment(1);
    }

    /// Counts a value found expired.
    pub(crate) fn expired_read(&self) {
        self.expired_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RedisStats {
        RedisStats {
            decode_errors: self.decode.snapshot(),
            expired_reads: self.expired_reads.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The mapping of every reason is tested with the shared counters in tierkit-core's
    // envelope module; here, the tier's own reasons and the snapshot.
    #[test]
    fn the_tiers_reasons_and_snapshot_are_counted() {
        let counters = Counters::new();
        counters.decode_error(WRONG_TYPE);
        counters.decode_error("something new");
        counters.malformed(&Malformed::BadMagic);
        counters.malformed(&Malformed::BadMagic);
        let stats = counters.snapshot();
        assert_eq!(stats.decode_errors.total(), 4);
        assert_eq!(stats.decode_errors.get("bad_magic"), 2);
        assert_eq!(stats.decode_errors.get("wrong_type"), 1);
        assert_eq!(stats.decode_errors.get("other"), 1);
        assert_eq!(stats.decode_errors.get("no such reason"), 0);
        assert_eq!(stats.expired_reads, 0);
        assert!(format!("{:?}", stats.decode_errors).contains("\"bad_magic\": 2"));
    }
}
