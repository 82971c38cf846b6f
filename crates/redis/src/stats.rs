//! Counters of the tier: undecodable values (by reason) and values found expired, kept in
//! atomics and mirrored to `metrics` counters resolved once, at build time.

use tierkit_core::envelope::{DecodeErrors, Malformed, ReadCounters};

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

/// The live counters: the read counters every remote tier keeps.
pub(crate) struct Counters {
    reads: ReadCounters,
}

impl Counters {
    /// Fresh counters, with the metric handles resolved now (against the recorder installed at
    /// this moment, if any).
    pub(crate) fn new() -> Self {
        Counters {
            reads: ReadCounters::new(DECODE_ERRORS_METRIC),
        }
    }

    /// Counts a value that did not decode.
    pub(crate) fn malformed(&self, malformed: &Malformed) {
        self.reads.malformed(malformed);
    }

    /// Counts an undecodable value under `reason`.
    pub(crate) fn decode_error(&self, reason: &str) {
        self.reads.decode_error(reason);
    }

    /// Counts a value found expired.
    pub(crate) fn expired_read(&self) {
        self.reads.expired_read();
    }

    pub(crate) fn snapshot(&self) -> RedisStats {
        RedisStats {
            decode_errors: self.reads.decode_errors(),
            expired_reads: self.reads.expired_reads(),
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
