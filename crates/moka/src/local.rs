//! [`MokaLocal`]: the in-process tier of a typed [`Cache`](tierkit_cache::Cache) over moka.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute;
use moka::sync::Cache;
use tierkit_cache::{LocalEntry, LocalTier};
use tierkit_core::{CacheKey, Clock, Timestamp};

/// Per-entry expiry longer than this is treated as "never" (moka bounds durations at 1000
/// years).
const NEVER: Duration = Duration::from_secs(1_000 * 365 * 24 * 3600);

/// How a [`MokaLocal`] weighs an entry when its capacity is a total weight.
pub type Weigher<V> = Arc<dyn Fn(&CacheKey, &V) -> u32 + Send + Sync + 'static>;

/// The in-process tier of a typed [`Cache`](tierkit_cache::Cache): decoded values
/// (`Arc<V>` with their timestamps) in a [`moka::sync::Cache`].
///
/// A hit is a moka lookup and an [`Arc`] clone: no await, no decode, and no allocation of its
/// own (moka's housekeeping, which it runs on some reads, may allocate now and then: about 8
/// small allocations per 1,000 reads measured with moka 0.12, in a busy process). Entries
/// expire when their `expires_at` is reached (a per-entry moka expiry, computed with the
/// tier's [`Clock`] when the entry is written), and `get` re-checks `expires_at` against the
/// time it is given, so an expired entry is never returned, whichever clock runs ahead.
///
/// Clones share the same cache.
///
/// ```
/// use tierkit_cache::{Cache, codec::Postcard};
/// use tierkit_moka::MokaLocal;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_cache::CacheError> {
/// let cache: Cache<String> = Cache::builder(MokaLocal::new(10_000), Postcard).build();
/// let hello = cache.get_or_fetch("greeting", || async { Ok::<_, std::io::Error>("hello".to_owned()) }).await?;
/// assert_eq!(hello.as_str(), "hello");
/// # Ok(())
/// # }
/// ```
pub struct MokaLocal<V> {
    cache: Cache<CacheKey, LocalEntry<V>>,
    label: Arc<str>,
}

impl<V> Clone for MokaLocal<V> {
    fn clone(&self) -> Self {
        MokaLocal {
            cache: self.cache.clone(),
            label: Arc::clone(&self.label),
        }
    }
}

impl<V: Send + Sync + 'static> MokaLocal<V> {
    /// The default bound on entries.
    pub const DEFAULT_MAX_CAPACITY: u64 = 10_000;

    /// A tier of at most `max_capacity` entries, on the system clock.
    #[must_use]
    pub fn new(max_capacity: u64) -> Self {
        Self::builder().max_capacity(max_capacity).build()
    }

    /// A builder with every setting at its default.
    #[must_use]
    pub fn builder() -> MokaLocalBuilder<V> {
        MokaLocalBuilder {
            max_capacity: Self::DEFAULT_MAX_CAPACITY,
            weigher: None,
            clock: Clock::System,
            label: Arc::from("moka"),
            time_to_idle: None,
        }
    }

    /// The number of entries, as moka counts them (approximate until
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The underlying moka cache, for inspection.
    #[must_use]
    pub fn cache(&self) -> &Cache<CacheKey, LocalEntry<V>> {
        &self.cache
    }
}

impl<V> fmt::Debug for MokaLocal<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaLocal")
            .field("label", &self.label)
            .field("entry_count", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> MokaLocal<V> {
    /// Removes `key`'s entry if it is still expired at `now` (the cold half of a lookup),
    /// unless a concurrent insert has just replaced it with a live entry: the compute closure
    /// runs under moka's per-key lock.
    #[cold]
    fn remove_expired(&self, key: &CacheKey, now: Timestamp) {
        let _ = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(entry) if entry.value().meta().is_expired(now) => compute::Op::Remove,
                _ => compute::Op::Nop,
            });
    }
}

impl<V: Send + Sync + 'static> LocalTier<V> for MokaLocal<V> {
    fn label(&self) -> &str {
        &self.label
    }

    #[inline]
    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<V>> {
        let entry = self.cache.get(key)?;
        if !entry.meta().is_expired(now) {
            return Some(entry);
        }
        self.remove_expired(key, now);
        None
    }

    /// moka's `contains_key`, which is not a read: it leaves the key's popularity (and so
    /// moka's admission decisions) alone.
    fn may_contain(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    fn insert(&self, key: &CacheKey, entry: LocalEntry<V>) {
        self.cache.insert(key.clone(), entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }
}

/// Builds a [`MokaLocal`].
pub struct MokaLocalBuilder<V> {
    max_capacity: u64,
    weigher: Option<Weigher<V>>,
    clock: Clock,
    label: Arc<str>,
    time_to_idle: Option<Duration>,
}

impl<V> fmt::Debug for MokaLocalBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaLocalBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("weighted", &self.weigher.is_some())
            .field("clock", &self.clock)
            .field("label", &self.label)
            .field("time_to_idle", &self.time_to_idle)
            .finish()
    }
}

impl<V: Send + Sync + 'static> MokaLocalBuilder<V> {
    /// The capacity: a number of entries, or a total weight with
    /// [`weigher`](Self::weigher). Default [`MokaLocal::DEFAULT_MAX_CAPACITY`].
    #[must_use]
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Weighs each entry (for instance its size in bytes); the capacity is then a total
    /// weight. A tombstone (negative caching) weighs 1.
    #[must_use]
    pub fn weigher(
        mut self,
        weigher: impl Fn(&CacheKey, &V) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// The clock expiry is computed with. Default [`Clock::System`]; give the cache's clock.
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The label in traces. Default `moka`.
    #[must_use]
    pub fn label(mut self, label: &str) -> Self {
        self.label = Arc::from(label);
        self
    }

    /// Evicts entries nobody read or wrote for this long (clamped to moka's bound).
    #[must_use]
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.time_to_idle = Some(idle.min(NEVER));
        self
    }

    /// The tier.
    #[must_use]
    pub fn build(self) -> MokaLocal<V> {
        let mut builder = Cache::builder()
            .max_capacity(self.max_capacity)
            .expire_after(EntryExpiry { clock: self.clock });
        if let Some(weigher) = self.weigher {
            builder = builder.weigher(move |key: &CacheKey, entry: &LocalEntry<V>| {
                // A tombstone weighs 1: it holds no value.
                entry.value().map_or(1, |value| weigher(key, value))
            });
        }
        if let Some(idle) = self.time_to_idle {
            builder = builder.time_to_idle(idle);
        }
        MokaLocal {
            cache: builder.build(),
            label: self.label,
        }
    }
}

/// moka's per-entry expiry: the time left until the entry's `expires_at` by the tier's clock,
/// whenever an entry is created or replaced.
struct EntryExpiry {
    clock: Clock,
}

impl EntryExpiry {
    fn remaining<V>(&self, entry: &LocalEntry<V>) -> Option<Duration> {
        let ttl = entry
            .meta()
            .expires_at()
            .saturating_duration_since(self.clock.now());
        (ttl < NEVER).then_some(ttl)
    }
}

impl<V> Expiry<CacheKey, LocalEntry<V>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &LocalEntry<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.remaining(entry)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        entry: &LocalEntry<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(entry)
    }
}
