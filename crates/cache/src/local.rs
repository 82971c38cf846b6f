//! The in-process tier of a [`Cache`](crate::Cache): a synchronous map of decoded values.

use std::fmt;
use std::sync::Arc;

use tierkit_core::{CacheKey, CacheValue, Timestamp};

/// The timestamps of a cached entry, the same in every tier: when it was written, when it stops
/// being fresh (`stale_at`) and when it expires for good (`expires_at`).
///
/// Invariant: `created_at <= stale_at <= expires_at` (every constructor keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryMeta {
    created_at: Timestamp,
    stale_at: Timestamp,
    expires_at: Timestamp,
}

impl EntryMeta {
    /// The timestamps of a stored value.
    pub fn of(value: &CacheValue) -> Self {
        Self {
            created_at: value.created_at(),
            stale_at: value.stale_at(),
            expires_at: value.expires_at(),
        }
    }

    /// Timestamps from their parts; `stale_at` and `expires_at` are raised where needed so that
    /// `created_at <= stale_at <= expires_at` holds.
    pub fn new(created_at: Timestamp, stale_at: Timestamp, expires_at: Timestamp) -> Self {
        let stale_at = stale_at.max(created_at);
        Self {
            created_at,
            stale_at,
            expires_at: expires_at.max(stale_at),
        }
    }

    /// When the entry was written (by the loader or by a `set`), anywhere.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// The end of freshness.
    pub fn stale_at(&self) -> Timestamp {
        self.stale_at
    }

    /// The hard expiry: no tier serves the entry at or after it.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Whether the entry is fresh at `now`.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.stale_at
    }

    /// Whether the entry has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

/// A decoded value in the in-process tier: the value behind an [`Arc`] (a hit clones the `Arc`,
/// never the value) or a tombstone (the key is known to have no value), its timestamps, and
/// the in-process state the cache keeps with it ([`LocalState`]).
pub struct LocalEntry<V> {
    value: Option<Arc<V>>,
    meta: EntryMeta,
    state: LocalState,
}

/// What the cache keeps with an L1 entry besides its timestamps: when L1 stops treating it as
/// fresh (its freshness plus jitter), until when a stale read returns it while refreshing
/// (stale-while-revalidate), when a read should start a background refresh (eager refresh,
/// or the back-off after a failed one), and the fail-safe throttle.
///
/// Every instant is at most the entry's `expires_at`. Opaque to a [`LocalTier`]: store it
/// with the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalState {
    pub(crate) fresh_until: Timestamp,
    pub(crate) revalidate_until: Timestamp,
    pub(crate) refresh_at: Timestamp,
    pub(crate) throttle_until: Timestamp,
    pub(crate) fail_safe: Option<crate::hit::FailSafeCause>,
}

impl LocalState {
    /// The plain state of an entry with timestamps `meta`: fresh until `stale_at`, no
    /// revalidation window, no refresh, no throttle.
    pub fn plain(meta: &EntryMeta) -> Self {
        LocalState {
            fresh_until: meta.stale_at,
            revalidate_until: meta.stale_at,
            refresh_at: Timestamp::MAX,
            throttle_until: Timestamp::UNIX_EPOCH,
            fail_safe: None,
        }
    }

    /// When L1 stops treating the entry as fresh (`stale_at` plus jitter).
    pub fn fresh_until(&self) -> Timestamp {
        self.fresh_until
    }
}

impl<V> LocalEntry<V> {
    /// An entry holding `value` with the timestamps `meta`.
    pub fn new(value: Arc<V>, meta: EntryMeta) -> Self {
        Self::with_state(Some(value), meta, LocalState::plain(&meta))
    }

    /// A tombstone: the key has no value until `meta`'s `expires_at`.
    pub fn absent(meta: EntryMeta) -> Self {
        Self::with_state(None, meta, LocalState::plain(&meta))
    }

    pub(crate) fn with_state(value: Option<Arc<V>>, meta: EntryMeta, state: LocalState) -> Self {
        Self { value, meta, state }
    }

    /// The value; `None` for a tombstone.
    pub fn value(&self) -> Option<&Arc<V>> {
        self.value.as_ref()
    }

    /// Whether the entry is a tombstone (the key is known to have no value).
    pub fn is_absent(&self) -> bool {
        self.value.is_none()
    }

    /// The timestamps.
    pub fn meta(&self) -> EntryMeta {
        self.meta
    }

    /// The cache's in-process state of the entry.
    pub fn state(&self) -> LocalState {
        self.state
    }

    pub(crate) fn into_value(self) -> Option<Arc<V>> {
        self.value
    }
}

impl<V> Clone for LocalEntry<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            meta: self.meta,
            state: self.state,
        }
    }
}

impl<V> fmt::Debug for LocalEntry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEntry")
            .field("absent", &self.value.is_none())
            .field("meta", &self.meta)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The in-process tier of a [`Cache`](crate::Cache): decoded values, answered synchronously.
///
/// Every method is a plain function: a hit is a map lookup and an [`Arc`] clone, with no await,
/// no decode and no copy of the value. `tierkit-moka` implements it over moka
/// (`tierkit_moka::MokaLocal`); implement it to put another map in front.
///
/// Contract, checked by the crate's tests for every implementation they cover:
/// * `get` never returns an entry that has expired at `now` (`now >= expires_at`);
/// * `insert` replaces whatever the key held; the entry should be evicted once `expires_at` is
///   reached (it must not be returned after it either way);
/// * the tier may evict any entry at any time (capacity): the cache treats that as a miss.
pub trait LocalTier<V>: Send + Sync + fmt::Debug + 'static {
    /// A short name for traces and metrics (`"moka"`).
    fn label(&self) -> &str;

    /// The entry for `key`, unless it is absent or expired at `now`.
    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<V>>;

    /// Whether `key` may have an entry, asked without counting as an access of the key:
    /// `false` only when the tier is sure it has none.
    ///
    /// The cache asks it before the reads of its slow path that repeat a caller's read (the
    /// second look of a miss, the check before a refill), so that a tier whose eviction or
    /// admission counts accesses (moka's TinyLFU) sees one access per caller's read, as it
    /// would without the cache in front. The default, `true`, is always correct: every such
    /// read then goes to [`get`](LocalTier::get).
    fn may_contain(&self, key: &CacheKey) -> bool {
        let _ = key;
        true
    }

    /// Stores `entry` under `key`, replacing any previous entry.
    fn insert(&self, key: &CacheKey, entry: LocalEntry<V>);

    /// Removes `key`.
    fn remove(&self, key: &CacheKey);

    /// Removes every entry.
    fn clear(&self);
}

impl<V, T: LocalTier<V> + ?Sized> LocalTier<V> for Arc<T> {
    fn label(&self) -> &str {
        (**self).label()
    }

    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<V>> {
        (**self).get(key, now)
    }

    fn may_contain(&self, key: &CacheKey) -> bool {
        (**self).may_contain(key)
    }

    fn insert(&self, key: &CacheKey, entry: LocalEntry<V>) {
        (**self).insert(key, entry);
    }

    fn remove(&self, key: &CacheKey) {
        (**self).remove(key);
    }

    fn clear(&self) {
        (**self).clear();
    }
}
