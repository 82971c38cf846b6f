//! Counters of the tier: undecodable objects (by reason), objects found expired and the
//! background deletes of expired objects, kept in atomics; undecodable objects are mirrored to
//! `metrics` counters resolved once, at build time.

use std::sync::atomic::{AtomicU64, Ordering};

use tierkit_core::envelope::{DecodeErrors, Malformed, ReadCounters};

/// The reason name under which an object too large to be an envelope of the tier is counted (it
/// is not read).
pub(crate) const TOO_LARGE: &str = "too_large";

/// The name of the metric counting undecodable values, labelled `reason`.
pub(crate) const DECODE_ERRORS_METRIC: &str = "tierkit_s3_decode_errors_total";

/// A snapshot of a tier's counters, from [`S3Backend::stats`](crate::S3Backend::stats).
///
/// Counters start at zero when the tier is built and are shared by its clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct S3Stats {
    /// Objects read that could not be decoded (or were too large to be read), by reason; each
    /// was answered as a miss. Also exported as the `metrics` counter
    /// `tierkit_s3_decode_errors_total{reason}`.
    pub decode_errors: DecodeErrors,
    /// Objects read that had already expired by the tier's clock; each was answered as a miss.
    pub expired_reads: u64,
    /// Background deletes of expired objects that completed (the object is gone, or was
    /// replaced by a newer one in the meantime and left alone). Only with an
    /// [offload](crate::S3BackendBuilder::offload).
    pub expired_deletes: u64,
    /// Background deletes of expired objects that failed, or that the offload refused to run.
    pub expired_delete_failures: u64,
}

/// The live counters: the read counters every remote tier keeps, and the background deletes.
pub(crate) struct Counters {
    reads: ReadCounters,
    expired_deletes: AtomicU64,
    expired_delete_failures: AtomicU64,
}

impl Counters {
    /// Fresh counters, with the metric handles resolved now (against the recorder installed at
    /// this moment, if any).
    pub(crate) fn new() -> Self {
        Counters {
            reads: ReadCounters::new(DECODE_ERRORS_METRIC),
            expired_deletes: AtomicU64::new(0),
            expired_delete_failures: AtomicU64::new(0),
        }
    }

    /// Counts an object that did not decode.
    pub(crate) fn malformed(&self, malformed: &Malformed) {
        self.reads.malformed(malformed);
    }

    /// Counts an undecodable object under `reason`.
    pub(crate) fn decode_error(&self, reason: &str) {
        self.reads.decode_error(reason);
    }

    /// Counts an object found expired.
    pub(crate) fn expired_read(&self) {
        self.reads.expired_read();
    }

    /// Counts a completed background delete of an expired object.
    pub(crate) fn expired_deleted(&self) {
        self.expired_deletes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed (or refused) background delete of an expired object.
    pub(crate) fn expired_delete_failed(&self) {
        self.expired_delete_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> S3Stats {
        S3Stats {
            decode_errors: self.reads.decode_errors(),
            expired_reads: self.reads.expired_reads(),
            expired_deletes: self.expired_deletes.load(Ordering::Relaxed),
            expired_delete_failures: self.expired_delete_failures.load(Ordering::Relaxed),
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
        counters.decode_error(TOO_LARGE);
        counters.decode_error("something new");
        counters.malformed(&Malformed::BadMagic);
        counters.malformed(&Malformed::BadMagic);
        let stats = counters.snapshot();
        assert_eq!(stats.decode_errors.total(), 4);
        assert_eq!(stats.decode_errors.get("bad_magic"), 2);
        assert_eq!(stats.decode_errors.get("too_large"), 1);
        assert_eq!(stats.decode_errors.get("other"), 1);
        assert_eq!(stats.decode_errors.get("no such reason"), 0);
        assert_eq!(stats.expired_reads, 0);
        counters.expired_read();
        counters.expired_deleted();
        counters.expired_delete_failed();
        counters.expired_delete_failed();
        let stats = counters.snapshot();
        assert_eq!(
            (
                stats.expired_reads,
                stats.expired_deletes,
                stats.expired_delete_failures
            ),
            (1, 1, 2)
        );
        assert!(format!("{:?}", stats.decode_errors).contains("\"bad_magic\": 2"));
    }
}
