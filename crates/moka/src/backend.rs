//! [`MokaBackend`]: the tier itself.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute;
use moka::sync::Cache;
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, GetFuture, Probe, TierFuture, WriteFuture,
};

use crate::config::MokaBackendBuilder;

/// Per-entry expiry longer than this is treated as "never" (moka's own bound on durations is
/// 1000 years; an `expires_at` of [`Timestamp::MAX`](tierkit_core::Timestamp::MAX) lands here).
const NEVER: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// An in-process tier over [`moka::sync::Cache`].
///
/// * **Hits allocate nothing.** `moka::sync::Cache::get` is a plain function, so every
///   operation answers with [`TierFuture::ready`], and [`probe`](Backend::probe) always answers
///   [`Probe::Fresh`], [`Probe::Stale`] or [`Probe::Miss`], exactly as `get` would; a hit clones the
///   [`CacheValue`], which bumps the payload's reference count and copies no bytes.
/// * **Expiry follows the value.** moka evicts each entry when its value's `expires_at` is
///   reached (computed against the tier's [`Clock`] when the entry is written), and `get`
///   re-checks `expires_at` against the clock, so the tier never returns an expired value even
///   when the clock is a [`ManualClock`](tierkit_core::ManualClock) that moka knows nothing
///   about. An expired entry found by `get` is a miss and is removed.
/// * **Capacity** is counted in entries ([`max_capacity`](MokaBackendBuilder::max_capacity)) or
///   in bytes ([`max_bytes`](MokaBackendBuilder::max_bytes), see [`MokaBackend::weigh`]).
///   moka evicts with TinyLFU when the tier is full.
/// * **Conditional writes are atomic.** [`set_if_newer`](Backend::set_if_newer) compares the
///   held value's `created_at` and stores inside one moka compute closure, under the key's
///   lock: a concurrent `set` of the key (from this handle, a clone, or a composition sharing
///   the tier) lands either before the comparison or after the store, never in between.
/// * **Private.** The cache belongs to this tier (and its clones), so [`clear`](Backend::clear)
///   removes everything it holds.
///
/// Clones share the same cache.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Backend, CacheKey, CacheValue, Clock, ManualClock};
/// use tierkit_moka::MokaBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_core::BackendError> {
/// let clock = ManualClock::starting_now();
/// let tier = MokaBackend::builder().max_capacity(1_000).clock(Clock::from(clock.clone())).build();
/// let key = CacheKey::new("greeting")?;
///
/// tier.set(&key, CacheValue::with_ttl(&b"hello"[..], clock.now(), Duration::from_secs(30))).await?;
/// // The answer is ready at once: no await point, no allocation.
/// assert!(tier.get(&key).is_ready());
/// assert!(tier.get(&key).await?.is_some());
///
/// clock.advance(Duration::from_secs(31));
/// assert_eq!(tier.get(&key).await?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MokaBackend {
    cache: Cache<CacheKey, CacheValue>,
    clock: Clock,
    label: Arc<str>,
    max_bytes: Option<u64>,
}

impl MokaBackend {
    /// The default bound on entries when neither
    /// [`max_capacity`](MokaBackendBuilder::max_capacity) nor
    /// [`max_bytes`](MokaBackendBuilder::max_bytes) is set.
    pub const DEFAULT_MAX_CAPACITY: u64 = 10_000;

    /// The bytes added to every entry's weight under
    /// [`max_bytes`](MokaBackendBuilder::max_bytes): the inline size of a key and a value (the
    /// key's pointer and length, the payload's handle, three timestamps) and the reference-count
    /// headers of their shared buffers, rounded up. moka's own bookkeeping per entry is not
    /// counted, so the tier's real footprint is somewhat larger than its byte capacity.
    pub const ENTRY_OVERHEAD: u64 = 96;

    /// A builder with every setting at its default.
    pub fn builder() -> MokaBackendBuilder {
        MokaBackendBuilder::default()
    }

    /// A tier holding at most `max_capacity` entries, with every other setting at its default
    /// (system clock, label `moka`, no idle eviction).
    #[must_use]
    pub fn new(max_capacity: u64) -> Self {
        Self::builder().max_capacity(max_capacity).build()
    }

    pub(crate) fn from_parts(
        cache: Cache<CacheKey, CacheValue>,
        clock: Clock,
        label: Arc<str>,
        max_bytes: Option<u64>,
    ) -> Self {
        MokaBackend {
            cache,
            clock,
            label,
            max_bytes,
        }
    }

    /// The weight of an entry under [`max_bytes`](MokaBackendBuilder::max_bytes): key length
    /// plus payload length plus [`MokaBackend::ENTRY_OVERHEAD`], in bytes.
    ///
    /// moka weighs entries in `u32`, so inside the cache a weight saturates at `u32::MAX`
    /// (4 GiB); the capacity check of `set` uses the exact figure.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierkit_core::{CacheKey, CacheValue, Timestamp};
    /// use tierkit_moka::MokaBackend;
    ///
    /// let key = CacheKey::new("k")?;
    /// let value = CacheValue::with_ttl(vec![0u8; 1000], Timestamp::UNIX_EPOCH, Duration::from_secs(1));
    /// assert_eq!(MokaBackend::weigh(&key, &value), 1 + 1000 + MokaBackend::ENTRY_OVERHEAD);
    /// # Ok::<(), tierkit_core::BackendError>(())
    /// ```
    #[must_use]
    pub fn weigh(key: &CacheKey, value: &CacheValue) -> u64 {
        weight_of(key, value)
    }

    /// The byte capacity, when the tier is bounded by bytes.
    #[must_use]
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// The number of entries, as moka counts them: approximate until
    /// [`run_pending_tasks`](Self::run_pending_tasks) has run, and it may include expired
    /// entries not yet removed.
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The total weight of the entries (bytes under `max_bytes`, entries otherwise); approximate
    /// like [`entry_count`](Self::entry_count).
    #[must_use]
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Runs moka's pending maintenance (evictions, expirations, counters) now. moka does this
    /// on its own as the cache is used; tests call it before reading
    /// [`entry_count`](Self::entry_count).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The clock the tier reads.
    #[must_use]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The underlying moka cache, for inspection.
    #[must_use]
    pub fn cache(&self) -> &Cache<CacheKey, CacheValue> {
        &self.cache
    }

    #[inline(always)]
    fn lookup_at(&self, key: &CacheKey, now: tierkit_core::Timestamp) -> Option<CacheValue> {
        let value = self.cache.get(key)?;
        if !value.is_expired(now) {
            return Some(value);
        }
        self.remove_expired(key, now);
        None
    }

    /// Removes `key`'s entry if it is still expired at `now`: the cold half of a lookup.
    #[cold]
    fn remove_expired(&self, key: &CacheKey, now: tierkit_core::Timestamp) {
        // Remove it, unless a concurrent `set` has just replaced it with a live value: the
        // compute closure runs under moka's per-key lock.
        let _ = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(entry) if entry.value().is_expired(now) => compute::Op::Remove,
                _ => compute::Op::Nop,
            });
    }

    fn store(&self, key: &CacheKey, value: CacheValue) -> Result<(), BackendError> {
        if value.is_expired(self.clock.now()) {
            // The newest write says "nothing valid here": drop any older value.
            self.cache.invalidate(key);
            return Ok(());
        }
        self.check_weight(key, &value)?;
        self.cache.insert(key.clone(), value);
        Ok(())
    }

    /// [`store`](Self::store), unless the entry holds a live value created later: the
    /// comparison and the write run in one compute closure, under moka's per-key lock, so no
    /// other write of the key lands in between.
    fn store_if_newer(&self, key: &CacheKey, value: CacheValue) -> Result<(), BackendError> {
        let now = self.clock.now();
        let expired = value.is_expired(now);
        if !expired {
            self.check_weight(key, &value)?;
        }
        let _ = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|held| match held {
                Some(held) if !value.replaces(held.value(), now) => compute::Op::Nop,
                Some(_) if expired => compute::Op::Remove,
                None if expired => compute::Op::Nop,
                _ => compute::Op::Put(value),
            });
        Ok(())
    }

    /// Refuses a value heavier than the whole tier (under [`max_bytes`](MokaBackendBuilder::max_bytes)).
    fn check_weight(&self, key: &CacheKey, value: &CacheValue) -> Result<(), BackendError> {
        if let Some(max) = self.max_bytes {
            let weight = weight_of(key, value);
            if weight > max {
                return Err(BackendError::invalid_value(
                    Arc::clone(&self.label),
                    format!(
                        "an entry of {weight} bytes (key {} + payload {} + overhead {}) exceeds \
                         the tier's capacity of {max} bytes",
                        key.len(),
                        value.payload().len(),
                        Self::ENTRY_OVERHEAD
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for MokaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaBackend")
            .field("label", &self.label)
            .field("clock", &self.clock)
            .field("max_bytes", &self.max_bytes)
            .field("entry_count", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Backend for MokaBackend {
    fn label(&self) -> &str {
        &self.label
    }

    #[inline(always)]
    fn probe(&self, key: &CacheKey) -> Probe {
        let now = self.clock.now();
        Probe::found(self.lookup_at(key, now), now)
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        TierFuture::ready(Ok(self.lookup_at(key, self.clock.now())))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::ready(self.store(key, value))
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::ready(self.store_if_newer(key, value))
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        self.cache.invalidate(key);
        TierFuture::ready(Ok(()))
    }

    fn clear(&self) -> WriteFuture<'_> {
        self.cache.invalidate_all();
        TierFuture::ready(Ok(()))
    }
}

/// The weight of an entry, in bytes, before saturation to moka's `u32`.
pub(crate) fn weight_of(key: &CacheKey, value: &CacheValue) -> u64 {
    let key_len = u64::try_from(key.len()).unwrap_or(u64::MAX);
    let payload_len = u64::try_from(value.payload().len()).unwrap_or(u64::MAX);
    key_len
        .saturating_add(payload_len)
        .saturating_add(MokaBackend::ENTRY_OVERHEAD)
}

/// moka's per-entry expiry: the time left until the value's `expires_at`, by the tier's clock,
/// whenever an entry is created or replaced. Reads leave it unchanged.
pub(crate) struct ValueExpiry {
    pub(crate) clock: Clock,
}

impl ValueExpiry {
    fn remaining(&self, value: &CacheValue) -> Option<Duration> {
        let ttl = value.time_to_live(self.clock.now());
        (ttl < NEVER).then_some(ttl)
    }
}

impl Expiry<CacheKey, CacheValue> for ValueExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &CacheValue,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.remaining(value)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &CacheValue,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tierkit_core::{ErrorKind, ManualClock, Timestamp};

    fn key(s: &str) -> CacheKey {
        CacheKey::new(s).unwrap()
    }

    fn manual() -> (ManualClock, Clock) {
        let manual = ManualClock::new(Timestamp::from_unix_millis(1_700_000_000_000));
        let clock = Clock::from(manual.clone());
        (manual, clock)
    }

    fn ready<T: fmt::Debug>(fut: TierFuture<'_, T>) -> Result<T, BackendError> {
        fut.into_ready().expect("moka answers synchronously")
    }

    #[test]
    fn every_operation_is_ready() {
        let tier = MokaBackend::new(10);
        let k = key("k");
        let v = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), Duration::from_secs(60));
        assert!(tier.set(&k, v.clone()).is_ready());
        assert!(tier.set_if_newer(&k, v.clone()).is_ready());
        assert!(tier.get(&k).is_ready());
        assert!(tier.delete(&k).is_ready());
        assert!(tier.clear().is_ready());
    }

    #[test]
    fn probe_answers_like_get() {
        let (manual, clock) = manual();
        let tier = MokaBackend::builder().clock(clock).build();
        let k = key("k");
        assert_eq!(tier.probe(&k), Probe::Miss);
        let v = CacheValue::with_ttl(&b"v"[..], manual.now(), Duration::from_secs(10));
        ready(tier.set(&k, v.clone())).unwrap();
        assert_eq!(tier.probe(&k), Probe::Fresh(v));
        manual.advance(Duration::from_secs(10));
        assert_eq!(tier.probe(&k), Probe::Miss);
        assert!(
            !tier.cache().contains_key(&k),
            "the expired entry was removed"
        );
    }

    #[test]
    fn expiry_follows_the_manual_clock() {
        let (manual, clock) = manual();
        let tier = MokaBackend::builder().clock(clock).build();
        let k = key("k");
        let v = CacheValue::with_ttl(&b"v"[..], manual.now(), Duration::from_secs(10));
        ready(tier.set(&k, v.clone())).unwrap();
        manual.advance(Duration::from_millis(9_999));
        assert_eq!(ready(tier.get(&k)).unwrap(), Some(v));
        manual.advance(Duration::from_millis(1));
        assert_eq!(ready(tier.get(&k)).unwrap(), None);
        // The expired entry was removed, not just hidden.
        tier.run_pending_tasks();
        assert_eq!(tier.entry_count(), 0);
        assert!(!tier.cache().contains_key(&k));
    }

    #[test]
    fn setting_an_expired_value_removes_the_old_one() {
        let (manual, clock) = manual();
        let tier = MokaBackend::builder().clock(clock).build();
        let k = key("k");
        let now = manual.now();
        ready(tier.set(
            &k,
            CacheValue::with_ttl(&b"old"[..], now, Duration::from_secs(60)),
        ))
        .unwrap();
        let expired = CacheValue::new(
            &b"new"[..],
            now.saturating_sub(Duration::from_secs(2)),
            now.saturating_sub(Duration::from_secs(2)),
            now,
        )
        .unwrap();
        ready(tier.set(&k, expired)).unwrap();
        assert_eq!(ready(tier.get(&k)).unwrap(), None);
        assert!(!tier.cache().contains_key(&k));
    }

    #[test]
    fn expiry_policy_computes_the_remaining_time() {
        let (manual, clock) = manual();
        let expiry = ValueExpiry { clock };
        let k = key("k");
        let v = CacheValue::with_ttl(&b"v"[..], manual.now(), Duration::from_secs(10));
        manual.advance(Duration::from_secs(4));
        assert_eq!(
            expiry.expire_after_create(&k, &v, Instant::now()),
            Some(Duration::from_secs(6))
        );
        let later = CacheValue::with_ttl(&b"v"[..], manual.now(), Duration::from_secs(90));
        assert_eq!(
            expiry.expire_after_update(&k, &later, Instant::now(), Some(Duration::from_secs(6))),
            Some(Duration::from_secs(90))
        );
        let forever = CacheValue::with_ttl(&b"v"[..], manual.now(), Duration::MAX);
        assert_eq!(
            expiry.expire_after_create(&k, &forever, Instant::now()),
            None
        );
    }

    #[test]
    fn overweight_value_is_rejected_and_changes_nothing() {
        let tier = MokaBackend::builder().max_bytes(1_000).build();
        let k = key("k");
        let now = Clock::System.now();
        let small = CacheValue::with_ttl(vec![1u8; 100], now, Duration::from_secs(60));
        ready(tier.set(&k, small.clone())).unwrap();

        // Exactly at capacity fits.
        let limit = 1_000 - 1 - MokaBackend::ENTRY_OVERHEAD;
        let exact = CacheValue::with_ttl(
            vec![2u8; usize::try_from(limit).unwrap()],
            now,
            Duration::from_secs(60),
        );
        assert_eq!(MokaBackend::weigh(&k, &exact), 1_000);
        let other = MokaBackend::builder().max_bytes(1_000).build();
        ready(other.set(&k, exact.clone())).unwrap();
        assert_eq!(ready(other.get(&k)).unwrap(), Some(exact));

        let big = CacheValue::with_ttl(
            vec![3u8; usize::try_from(limit + 1).unwrap()],
            now,
            Duration::from_secs(60),
        );
        let err = ready(tier.set(&k, big)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert_eq!(err.tier_label(), Some("moka"));
        assert_eq!(ready(tier.get(&k)).unwrap(), Some(small));
    }

    #[test]
    fn byte_capacity_evicts_by_weight() {
        let tier = MokaBackend::builder().max_bytes(10_000).build();
        let now = Clock::System.now();
        for i in 0..50 {
            let v = CacheValue::with_ttl(vec![0u8; 1_000], now, Duration::from_secs(60));
            ready(tier.set(&key(&format!("k{i}")), v)).unwrap();
        }
        tier.run_pending_tasks();
        assert!(tier.weighted_size() <= 10_000, "{}", tier.weighted_size());
        assert!(tier.entry_count() <= 9);
    }

    #[test]
    fn overwrite_replaces_value_and_expiry() {
        let (manual, clock) = manual();
        let tier = MokaBackend::builder().clock(clock).build();
        let k = key("k");
        let first = CacheValue::with_ttl(&b"one"[..], manual.now(), Duration::from_secs(100));
        let second = CacheValue::with_ttl(&b"two"[..], manual.now(), Duration::from_secs(5));
        ready(tier.set(&k, first)).unwrap();
        ready(tier.set(&k, second.clone())).unwrap();
        assert_eq!(ready(tier.get(&k)).unwrap(), Some(second));
        manual.advance(Duration::from_secs(5));
        assert_eq!(ready(tier.get(&k)).unwrap(), None);
    }

    #[test]
    fn clear_and_delete() {
        let tier = MokaBackend::new(100);
        let now = Clock::System.now();
        for i in 0..10 {
            let v = CacheValue::with_ttl(vec![i; 4], now, Duration::from_secs(60));
            ready(tier.set(&key(&format!("k{i}")), v)).unwrap();
        }
        ready(tier.delete(&key("k3"))).unwrap();
        ready(tier.delete(&key("absent"))).unwrap();
        assert_eq!(ready(tier.get(&key("k3"))).unwrap(), None);
        assert!(ready(tier.get(&key("k4"))).unwrap().is_some());
        ready(tier.clear()).unwrap();
        tier.run_pending_tasks();
        assert_eq!(tier.entry_count(), 0);
        for i in 0..10 {
            assert_eq!(ready(tier.get(&key(&format!("k{i}")))).unwrap(), None);
        }
    }

    #[test]
    fn hits_share_the_payload() {
        let tier = MokaBackend::new(10);
        let k = key("k");
        let v = CacheValue::with_ttl(
            vec![7u8; 4096],
            Clock::System.now(),
            Duration::from_secs(60),
        );
        ready(tier.set(&k, v.clone())).unwrap();
        let hit = ready(tier.get(&k)).unwrap().unwrap();
        assert_eq!(hit.payload().as_ptr(), v.payload().as_ptr());
    }

    /// Threads racing conditional writes of one key, each with its own `created_at`s: the
    /// entry ends with the latest of them all, which only holds when each comparison and its
    /// store are one step.
    #[test]
    fn racing_conditional_writes_end_with_the_latest_created_at() {
        let (manual, clock) = manual();
        let tier = MokaBackend::builder().clock(clock).build();
        let k = key("k");
        let base = manual.now();
        let created =
            |thread: u64, i: u64| base.saturating_add(Duration::from_millis(i * 4 + thread));
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (tier, k) = (&tier, &k);
                scope.spawn(move || {
                    // Every thread writes its latest value last but one, then an older one.
                    for i in (0..500).chain([0]) {
                        let v = CacheValue::with_ttl(
                            &b"v"[..],
                            created(thread, i),
                            Duration::from_secs(60),
                        );
                        ready(tier.set_if_newer(k, v)).unwrap();
                    }
                });
            }
        });
        let held = ready(tier.get(&k)).unwrap().unwrap();
        assert_eq!(held.created_at(), created(3, 499));
    }

    #[test]
    fn clones_share_the_cache() {
        let tier = MokaBackend::builder().label("l1").build();
        let other = tier.clone();
        let k = key("k");
        let v = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), Duration::from_secs(60));
        ready(tier.set(&k, v.clone())).unwrap();
        assert_eq!(ready(other.get(&k)).unwrap(), Some(v));
        assert_eq!(other.label(), "l1");
        assert!(format!("{other:?}").contains("l1"));
    }
}
