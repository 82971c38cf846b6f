//! The builder of [`MokaBackend`].

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use tierkit_core::{CacheKey, CacheValue, Clock};

use crate::backend::{MokaBackend, ValueExpiry, weight_of};

/// moka refuses (by panicking in `build`) idle times longer than 1000 years; longer settings are
/// clamped to this.
const MAX_IDLE: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// How the capacity of a [`MokaBackend`] is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capacity {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes, as weighed by [`MokaBackend::weigh`].
    Bytes(u64),
}

/// Builds a [`MokaBackend`]; start with [`MokaBackend::builder`].
///
/// Every setter consumes the builder and returns it; [`build`](MokaBackendBuilder::build) is
/// the only exit and cannot fail or panic.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::Backend;
/// use tierkit_moka::MokaBackend;
///
/// let l1 = MokaBackend::builder()
///     .max_bytes(64 * 1024 * 1024)
///     .time_to_idle(Duration::from_secs(300))
///     .label("l1-moka")
///     .build();
/// assert_eq!(l1.label(), "l1-moka");
/// assert_eq!(l1.max_bytes(), Some(64 * 1024 * 1024));
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct MokaBackendBuilder {
    capacity: Capacity,
    clock: Clock,
    label: Arc<str>,
    time_to_idle: Option<Duration>,
}

impl Default for MokaBackendBuilder {
    fn default() -> Self {
        MokaBackendBuilder {
            capacity: Capacity::Entries(MokaBackend::DEFAULT_MAX_CAPACITY),
            clock: Clock::System,
            label: Arc::from("moka"),
            time_to_idle: None,
        }
    }
}

impl MokaBackendBuilder {
    /// Bounds the tier to `max_capacity` entries, whatever their size.
    ///
    /// Default: [`MokaBackend::DEFAULT_MAX_CAPACITY`] (10,000) entries. Replaces an earlier
    /// [`max_bytes`](Self::max_bytes): the last of the two calls wins.
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.capacity = Capacity::Entries(max_capacity);
        self
    }

    /// Bounds the tier to `max_bytes` bytes, each entry weighing its key length plus its payload
    /// length plus [`MokaBackend::ENTRY_OVERHEAD`] (see [`MokaBackend::weigh`]).
    ///
    /// A value whose entry alone weighs more than `max_bytes` could never be held: `set`
    /// rejects it with [`ErrorKind::InvalidValue`](tierkit_core::ErrorKind::InvalidValue) and
    /// changes nothing.
    ///
    /// Default: not set; the tier is bounded by entry count
    /// ([`max_capacity`](Self::max_capacity)). Replaces an earlier `max_capacity`: the last of
    /// the two calls wins.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.capacity = Capacity::Bytes(max_bytes);
        self
    }

    /// The clock that decides whether a value has expired.
    ///
    /// Default: [`Clock::System`]. Tests pass a [`ManualClock`](tierkit_core::ManualClock)
    /// (`Clock::from(manual)`) to move time by hand.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The tier's label, used in errors (and by compositions in spans and metrics).
    ///
    /// Default: `"moka"`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Arc::from(label);
        self
    }

    /// Evicts an entry that has been neither read nor written for `idle`, even if its value has
    /// not expired yet. Idle time is measured by moka on the monotonic clock, not by the tier's
    /// [`Clock`]. Durations above 1000 years are clamped to 1000 years (moka's limit).
    ///
    /// Default: none; entries live until their value's `expires_at` or until evicted for
    /// capacity.
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle.min(MAX_IDLE));
        self
    }

    /// Builds the tier.
    #[must_use]
    pub fn build(self) -> MokaBackend {
        let mut builder = Cache::<CacheKey, CacheValue>::builder()
            .name(&self.label)
            .expire_after(ValueExpiry {
                clock: self.clock.clone(),
            });
        let max_bytes = match self.capacity {
            Capacity::Entries(n) => {
                builder = builder.max_capacity(n);
                None
            }
            Capacity::Bytes(n) => {
                builder = builder
                    .max_capacity(n)
                    .weigher(|key, value| u32::try_from(weight_of(key, value)).unwrap_or(u32::MAX));
                Some(n)
            }
        };
        if let Some(idle) = self.time_to_idle {
            builder = builder.time_to_idle(idle);
        }
        MokaBackend::from_parts(builder.build(), self.clock, self.label, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_capacity_setter_wins() {
        let b = MokaBackendBuilder::default().max_bytes(10).max_capacity(5);
        assert_eq!(b.capacity, Capacity::Entries(5));
        let b = MokaBackendBuilder::default().max_capacity(5).max_bytes(10);
        assert_eq!(b.capacity, Capacity::Bytes(10));
    }

    #[test]
    fn huge_idle_time_is_clamped_and_builds() {
        let tier = MokaBackendBuilder::default()
            .time_to_idle(Duration::MAX)
            .build();
        assert_eq!(tier.max_bytes(), None);
    }
}
