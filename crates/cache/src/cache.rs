//! [`Cache`]: the typed read-through handle, and its builder.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, Offload, OffloadTask, Op, SharedBackend,
    Timestamp, TokioOffload,
};
use tierkit_policy::{AnyWritePolicy, PolicyContext, TierName, WritePolicy};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument as _;

use crate::codec::Codec;
use crate::error::CacheError;
use crate::fetched::Fetched;
use crate::flight::{
    self, BoxLoader, Candidate, Fallbacks, FetchContext, Flight, Published, Waiter, box_loader,
};
use crate::frame::{Compression, announced_decoded_len, encode_absent_frame, encode_frame};
use crate::future::FetchFuture;
use crate::hit::{FailSafeCause, Hit, HitFreshness, Source, StaleCause};
use crate::jitter::{JitterSource, RandomJitter};
use crate::local::{EntryMeta, LocalEntry, LocalState, LocalTier};
use crate::options::{AbandonPolicy, Adjustment, FetchOptions, Resolved};
use crate::stats::{CacheStats, Stats};
use crate::table::{Effect, FlightSlot, KeyTable};
use crate::throttle::Throttles;

/// The options of the calls that take none: every option inherits the cache's defaults.
static NO_OPTIONS: FetchOptions = FetchOptions::new();

/// Anything a [`Cache`] accepts as a key: a [`CacheKey`] (used as is, no copy), or a string
/// (checked: an empty or oversized string is [`CacheError::InvalidKey`]).
pub trait AsCacheKey {
    /// The key, borrowed when it already is a [`CacheKey`].
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidKey`] when the string cannot be a key.
    fn as_cache_key(&self) -> Result<Cow<'_, CacheKey>, BackendError>;
}

impl AsCacheKey for CacheKey {
    fn as_cache_key(&self) -> Result<Cow<'_, CacheKey>, BackendError> {
        Ok(Cow::Borrowed(self))
    }
}

impl AsCacheKey for str {
    fn as_cache_key(&self) -> Result<Cow<'_, CacheKey>, BackendError> {
        CacheKey::new(self).map(Cow::Owned)
    }
}

impl AsCacheKey for String {
    fn as_cache_key(&self) -> Result<Cow<'_, CacheKey>, BackendError> {
        CacheKey::new(self).map(Cow::Owned)
    }
}

/// What the L1 probe found.
enum Local<V> {
    /// An answer: fresh, a fail-safe throttle, or inside the revalidation window while a
    /// refresh is backing off.
    Hit(Hit<V>),
    /// An answer, and a refresh of the key is due (eager refresh, or revalidation).
    Refresh(Hit<V>),
    /// A fresh tombstone: the key has no value.
    Absent,
    /// A value past its freshness and its windows: a fallback for fail-safe.
    Stale(Candidate<V>),
    /// Nothing.
    Miss,
}

/// A remote tier of the cache.
pub(crate) struct RemoteTier {
    pub(crate) backend: SharedBackend,
    pub(crate) source: Source,
}

/// What every clone of a [`Cache`] shares.
pub(crate) struct Shared<V> {
    pub(crate) label: Arc<str>,
    pub(crate) l1: Box<dyn LocalTier<V>>,
    pub(crate) remote: [Option<RemoteTier>; 2],
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) compression: Compression,
    defaults: FetchOptions,
    resolved_defaults: Resolved,
    pub(crate) clock: Clock,
    offload: Arc<dyn Offload>,
    runtime: Option<tokio::runtime::Handle>,
    write_policy: AnyWritePolicy,
    pub(crate) table: KeyTable<V>,
    pub(crate) stats: Stats,
    next_flight: AtomicU64,
    warned: Mutex<HashSet<Adjustment>>,
    pub(crate) jitter: Arc<dyn JitterSource>,
    /// The fail-safe throttles, apart from L1 (which may evict them).
    pub(crate) throttles: Throttles,
    /// One permit per loader call that may run at once, all keys together.
    pub(crate) loader_slots: Semaphore,
    /// The number of permits of `loader_slots`.
    loader_slot_count: usize,
}

/// A typed read-through cache over an in-process tier of decoded values (L1) and up to two
/// remote tiers of encoded bytes (L2, L3): [`get_or_fetch`](Cache::get_or_fetch) answers from
/// the first tier that has a fresh value, or runs the loader once however many callers ask at
/// once, and stores what it found in the tiers above.
///
/// Cheap to clone: clones share the tiers, the flights and the counters.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tierkit_cache::{Cache, LocalEntry, LocalTier, Source, codec::Postcard};
/// # use std::collections::HashMap;
/// # use std::sync::Mutex;
/// # use tierkit_core::{CacheKey, Timestamp};
/// # #[derive(Debug, Default)]
/// # struct MapTier(Mutex<HashMap<CacheKey, LocalEntry<String>>>);
/// # impl LocalTier<String> for MapTier {
/// #     fn label(&self) -> &str { "map" }
/// #     fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<String>> {
/// #         self.0.lock().ok()?.get(key).filter(|e| !e.meta().is_expired(now)).cloned()
/// #     }
/// #     fn insert(&self, key: &CacheKey, entry: LocalEntry<String>) {
/// #         if let Ok(mut map) = self.0.lock() { map.insert(key.clone(), entry); }
/// #     }
/// #     fn remove(&self, key: &CacheKey) { if let Ok(mut map) = self.0.lock() { map.remove(key); } }
/// #     fn clear(&self) { if let Ok(mut map) = self.0.lock() { map.clear(); } }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_cache::CacheError> {
/// // In a service: `MokaLocal` from tierkit-moka as L1, Redis and S3 tiers as L2 and L3.
/// let cache: Cache<String> = Cache::builder(MapTier::default(), Postcard).build();
/// let origin_calls = Arc::new(AtomicUsize::new(0));
///
/// let calls = origin_calls.clone();
/// let first = cache
///     .get_or_fetch("user:42", move || async move {
///         calls.fetch_add(1, Ordering::SeqCst);
///         Ok::<_, std::io::Error>("Ada".to_owned())
///     })
///     .await?;
/// assert_eq!(first.source(), Source::Loader);
///
/// // The loader is not called again while the value is fresh.
/// let again = cache.get_or_fetch("user:42", || async { Ok::<_, std::io::Error>(String::new()) }).await?;
/// assert_eq!((again.source(), again.as_str()), (Source::L1, "Ada"));
/// assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
/// # Ok(())
/// # }
/// ```
pub struct Cache<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<V: 'static> fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        let remote = |tier: usize| {
            shared.remote[tier]
                .as_ref()
                .map(|remote| remote.backend.label().to_owned())
        };
        f.debug_struct("Cache")
            .field("label", &shared.label)
            .field("l1", &shared.l1.label())
            .field("l2", &remote(0))
            .field("l3", &remote(1))
            .field("codec", &shared.codec.name())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Cache`]: see [`Cache::builder`].
pub struct CacheBuilder<V> {
    label: Arc<str>,
    l1: Box<dyn LocalTier<V>>,
    remote: [Option<SharedBackend>; 2],
    codec: Arc<dyn Codec<V>>,
    compression: Compression,
    defaults: FetchOptions,
    clock: Clock,
    offload: Option<Arc<dyn Offload>>,
    runtime: Option<tokio::runtime::Handle>,
    write_policy: AnyWritePolicy,
    jitter: Arc<dyn JitterSource>,
    max_concurrent_loads: usize,
    throttle_capacity: usize,
}

impl<V> fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("label", &self.label)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> CacheBuilder<V> {
    /// The name of the cache in traces and logs. Default `"cache"`.
    #[must_use]
    pub fn label(mut self, label: impl Into<Arc<str>>) -> Self {
        self.label = label.into();
        self
    }

    /// The first remote tier (read after L1; usually Redis, or a composition).
    #[must_use]
    pub fn l2(mut self, tier: impl Backend) -> Self {
        self.remote[0] = Some(Arc::new(tier));
        self
    }

    /// The second remote tier (read after L2; usually S3). An L3 hit refills L2.
    #[must_use]
    pub fn l3(mut self, tier: impl Backend) -> Self {
        self.remote[1] = Some(Arc::new(tier));
        self
    }

    /// Compression of encoded values above a size threshold. Default: none.
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The options of every call that does not override them. Called again, the fields set
    /// in the later call win, the others stay.
    #[must_use]
    pub fn defaults(mut self, defaults: FetchOptions) -> Self {
        self.defaults = defaults.or(&self.defaults);
        self
    }

    /// The clock every freshness decision reads. Default [`Clock::System`].
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Where remote writes run (write-backs, refills, and the writes of `set` and `remove`).
    /// Default: an unbounded [`TokioOffload`].
    #[must_use]
    pub fn offload(mut self, offload: impl Offload) -> Self {
        self.offload = Some(Arc::new(offload));
        self
    }

    /// The runtime flights are spawned on. Default: the runtime of the call that starts each
    /// flight.
    #[must_use]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// How a write reaches L2 and L3 when both exist, and what a `set` or `remove` returns
    /// when one of them fails. Default: optimistic parallel (both at once; an error only when
    /// both fail).
    #[must_use]
    pub fn write_policy(mut self, policy: impl Into<AnyWritePolicy>) -> Self {
        self.write_policy = policy.into();
        self
    }

    /// Where L1 jitter is drawn from. Default [`RandomJitter`]; tests inject a deterministic
    /// source ([`NoJitter`](crate::NoJitter), or their own).
    #[must_use]
    pub fn jitter(mut self, source: impl JitterSource) -> Self {
        self.jitter = Arc::new(source);
        self
    }

    /// The most loader calls the cache runs at once, all keys together (refreshes included).
    /// Default [`DEFAULT_MAX_CONCURRENT_LOADS`](crate::DEFAULT_MAX_CONCURRENT_LOADS) (512);
    /// 0 counts as 1, and values above tokio's semaphore limit (`usize::MAX >> 3`) as that
    /// limit.
    ///
    /// A flight that is ready to call its loader while the bound is reached waits for a slot
    /// (first come, first served), at most its hard timeout from the moment it starts waiting;
    /// then it ends with [`CacheError::Timeout`] of kind
    /// [`LoaderSlot`](crate::TimeoutKind::LoaderSlot) without calling the loader (fail-safe
    /// serves a stale value instead, as for any timeout). Counted: `stats().loader_queued`,
    /// `stats().loader_slot_timeouts`. So an origin that hangs sees at most this many calls
    /// from the cache, however many distinct keys miss.
    #[must_use]
    pub fn max_concurrent_loads(mut self, loads: usize) -> Self {
        self.max_concurrent_loads = loads;
        self
    }

    /// How many keys' fail-safe throttles the cache remembers apart from L1. Default
    /// [`DEFAULT_THROTTLE_CAPACITY`](crate::DEFAULT_THROTTLE_CAPACITY) (4,096).
    ///
    /// After a fail-safe activation a key is served its stale value without calling the loader
    /// for [`fail_safe_throttle`](FetchOptions::fail_safe_throttle). L1 holds the throttle in
    /// the key's entry, and this table holds it too, so a key L1 evicted meanwhile is still
    /// served its stale value (read again from L2 or L3) instead of calling a failing origin:
    /// the origin sees at most one call per key per window, whatever L1 evicts. When more keys
    /// are throttled at once than the table holds, the throttle ending first is evicted and its
    /// end becomes a floor: until then, every stale value written no later than the evicted one
    /// is throttled too (so no eviction reopens the origin to a key within its window, and a
    /// stale key that did not fail may be served stale for up to one window). 0 keeps only the
    /// floor.
    #[must_use]
    pub fn fail_safe_throttles(mut self, capacity: usize) -> Self {
        self.throttle_capacity = capacity;
        self
    }

    /// The cache.
    pub fn build(self) -> Cache<V> {
        let (resolved_defaults, adjustments) = self.defaults.resolve();
        let label = self.label;
        let loader_slot_count = self.max_concurrent_loads.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Shared {
            label: Arc::clone(&label),
            l1: self.l1,
            remote: [
                self.remote[0].clone().map(|backend| RemoteTier {
                    backend,
                    source: Source::L2,
                }),
                self.remote[1].clone().map(|backend| RemoteTier {
                    backend,
                    source: Source::L3,
                }),
            ],
            codec: self.codec,
            compression: self.compression,
            defaults: self.defaults,
            resolved_defaults,
            clock: self.clock,
            offload: self
                .offload
                .unwrap_or_else(|| Arc::new(TokioOffload::unbounded())),
            runtime: self.runtime,
            write_policy: self.write_policy,
            table: KeyTable::new(),
            stats: Stats::new(&label),
            next_flight: AtomicU64::new(1),
            warned: Mutex::new(HashSet::new()),
            jitter: self.jitter,
            throttles: Throttles::new(self.throttle_capacity),
            loader_slots: Semaphore::new(loader_slot_count),
            loader_slot_count,
        };
        shared.warn_once(&adjustments);
        Cache {
            shared: Arc::new(shared),
        }
    }
}

impl<V: Send + Sync + 'static> Cache<V> {
    /// A builder over the in-process tier `l1` and the codec of the remote tiers.
    pub fn builder(l1: impl LocalTier<V>, codec: impl Codec<V>) -> CacheBuilder<V> {
        CacheBuilder {
            label: Arc::from("cache"),
            l1: Box::new(l1),
            remote: [None, None],
            codec: Arc::new(codec),
            compression: Compression::default(),
            defaults: FetchOptions::new(),
            clock: Clock::System,
            offload: None,
            runtime: None,
            write_policy: AnyWritePolicy::default(),
            jitter: Arc::new(RandomJitter),
            max_concurrent_loads: crate::options::DEFAULT_MAX_CONCURRENT_LOADS,
            throttle_capacity: crate::options::DEFAULT_THROTTLE_CAPACITY,
        }
    }

    /// The value of `key`: from the first tier holding it fresh, else from `loader`, which runs
    /// at most once per key however many callers miss at once (they all get the same
    /// [`Arc`]). The loader is called only on a miss, and runs detached from the caller: if
    /// the caller goes away, the flight still completes and stores its result.
    ///
    /// The loader returns the value (`Ok(v)`), or a [`Fetched`] to say more: its own TTL, no
    /// storing, "absent", "not modified", a failure without an error type.
    ///
    /// # Errors
    ///
    /// [`CacheError`]: the loader's error or panic (shared by every caller of the flight),
    /// the hard timeout, an invalid key, an aborted flight; [`CacheError::NotFound`] when the
    /// loader answered [`Fetched::absent`].
    pub fn get_or_fetch<'a, K, F, Fut, R, E>(&'a self, key: &'a K, loader: F) -> FetchFuture<'a, V>
    where
        K: AsCacheKey + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Fetched<V>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        self.read_through(key, &NO_OPTIONS, None, move |_| loader())
    }

    /// [`get_or_fetch`](Cache::get_or_fetch) with per-call options and a loader that receives
    /// a [`FetchContext`] (the key, a cancellation token, the flight's id, the stale value).
    ///
    /// # Errors
    ///
    /// As [`get_or_fetch`](Cache::get_or_fetch); also [`CacheError::NotFound`] with
    /// [`no_loader`](FetchOptions::no_loader) when no tier has the value.
    pub fn get_or_fetch_with<'a, K, F, Fut, R, E>(
        &'a self,
        key: &'a K,
        options: &'a FetchOptions,
        loader: F,
    ) -> FetchFuture<'a, V>
    where
        K: AsCacheKey + ?Sized,
        F: FnOnce(FetchContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Fetched<V>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        self.read_through(key, options, None, loader)
    }

    /// [`get_or_fetch_with`](Cache::get_or_fetch_with) with a fallback value: with
    /// [`fail_safe`](FetchOptions::fail_safe) on, when the loader fails (or a timeout passes)
    /// and no stale value exists, the caller gets `fallback` (`Source::Fallback`, flagged
    /// stale) instead of the error. The fallback is never stored.
    ///
    /// # Errors
    ///
    /// As [`get_or_fetch_with`](Cache::get_or_fetch_with), when fail-safe is off or the error
    /// is not one fail-safe hides.
    pub fn get_or_fetch_with_fallback<'a, K, F, Fut, R, E>(
        &'a self,
        key: &'a K,
        options: &'a FetchOptions,
        fallback: impl Into<Arc<V>>,
        loader: F,
    ) -> FetchFuture<'a, V>
    where
        K: AsCacheKey + ?Sized,
        F: FnOnce(FetchContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Fetched<V>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        self.read_through(key, options, Some(fallback.into()), loader)
    }

    /// The read-through path: L1 is read here, synchronously; only what L1 cannot answer
    /// continues on the (boxed) slow path.
    #[inline(always)]
    fn read_through<'a, K, F, Fut, R, E>(
        &'a self,
        key: &'a K,
        options: &'a FetchOptions,
        fallback: Option<Arc<V>>,
        loader: F,
    ) -> FetchFuture<'a, V>
    where
        K: AsCacheKey + ?Sized,
        F: FnOnce(FetchContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: Into<Fetched<V>>,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
    {
        let key = match key.as_cache_key() {
            Ok(key) => key,
            Err(err) => return FetchFuture::ready(Err(CacheError::InvalidKey(err))),
        };
        let no_loader = options
            .get_no_loader()
            .or(self.shared.defaults.get_no_loader())
            .unwrap_or(false);
        let mut loader = Some(loader);
        let mut own = None;
        if !self.skips_l1_read(options) {
            match self.probe_local(&key) {
                Local::Hit(hit) => return FetchFuture::ready(Ok(hit)),
                Local::Refresh(mut hit) => {
                    // The refresh starts at the first poll, in the runtime that polls (a
                    // caller may build the future outside one and block on it inside one).
                    // Only the read that starts a refresh comes here: it marks the entry,
                    // and the reads after it are plain hits.
                    return FetchFuture::pending(async move {
                        hit.refresh_started = !no_loader
                            && self.start_refresh(&key, options, &hit, || {
                                loader.take().map(box_loader)
                            });
                        Ok(hit)
                    });
                }
                Local::Absent => return FetchFuture::ready(Err(CacheError::NotFound)),
                Local::Stale(stale) => own = Some(stale),
                Local::Miss => {}
            }
        }
        let loader = loader.filter(|_| !no_loader).map(box_loader);
        FetchFuture::pending(async move {
            match self.fetch(key, options, loader, own, fallback).await? {
                Some(hit) => Ok(hit),
                None => Err(CacheError::NotFound),
            }
        })
    }

    /// The value of `key` from the first tier holding it fresh, without a loader: `None` when
    /// no tier has it. Joins a flight already running for the key (and gets its loader's
    /// result, if a caller with a loader joined it too).
    ///
    /// # Errors
    ///
    /// An invalid key; with [`strict_tiers`](FetchOptions::strict_tiers) or
    /// [`strict_decode`](FetchOptions::strict_decode), a tier's failure; when joined to a
    /// flight with a loader, that loader's failure.
    pub async fn get<K: AsCacheKey + ?Sized>(&self, key: &K) -> Result<Option<Hit<V>>, CacheError> {
        self.get_with(key, &FetchOptions::new()).await
    }

    /// [`get`](Cache::get) with per-call options; with
    /// [`allow_stale`](FetchOptions::allow_stale), a value past its freshness (before its
    /// `expires_at`) is returned flagged stale rather than `None`.
    ///
    /// # Errors
    ///
    /// As [`get`](Cache::get).
    pub async fn get_with<K: AsCacheKey + ?Sized>(
        &self,
        key: &K,
        options: &FetchOptions,
    ) -> Result<Option<Hit<V>>, CacheError> {
        let key = key.as_cache_key().map_err(CacheError::InvalidKey)?;
        let mut own = None;
        if !self.skips_l1_read(options) {
            match self.probe_local(&key) {
                Local::Hit(hit) => return Ok(Some(hit)),
                Local::Refresh(mut hit) => {
                    // No loader: a refresh can only adopt a newer value from the tiers below.
                    hit.refresh_started = self.start_refresh(&key, options, &hit, || None);
                    return Ok(Some(hit));
                }
                Local::Absent => return Ok(None),
                Local::Stale(stale) => {
                    let allow_stale = options
                        .get_allow_stale()
                        .or(self.shared.defaults.get_allow_stale())
                        .unwrap_or(false);
                    if allow_stale {
                        return Ok(Some(self.hit_of(
                            stale.serve(HitFreshness::Stale(StaleCause::Allowed), None),
                        )));
                    }
                    own = Some(stale);
                }
                Local::Miss => {}
            }
        }
        Box::pin(self.fetch(key, options, None, own, None)).await
    }

    /// The value of `key` if L1 holds it fresh (or serves it from a fail-safe throttle, or
    /// inside its stale-while-revalidate window, without starting a refresh): synchronous,
    /// never awaits, never reads a remote tier. `None` for an invalid key.
    pub fn try_get_local<K: AsCacheKey + ?Sized>(&self, key: &K) -> Option<Hit<V>> {
        let key = key.as_cache_key().ok()?;
        match self.probe_local(&key) {
            Local::Hit(hit) | Local::Refresh(hit) => Some(hit),
            Local::Absent | Local::Stale(_) | Local::Miss => None,
        }
    }

    /// Stores `value` under `key` in every tier, fresh for the `ttl` of the cache's defaults.
    /// A flight running for the key is superseded: its callers get this value, and its own
    /// result is never stored over it.
    ///
    /// L1 holds the value when this returns, whatever happens remotely.
    ///
    /// # Errors
    ///
    /// [`CacheError::Tier`] when the remote write fails (both tiers, under the default
    /// optimistic parallel write policy); [`CacheError::Encode`] when the value cannot be
    /// encoded (it is then in L1 only, and removed from the remote tiers so that no older value
    /// survives there).
    pub async fn set<K: AsCacheKey + ?Sized>(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
    ) -> Result<(), CacheError> {
        self.set_with(key, value, &FetchOptions::new()).await
    }

    /// [`set`](Cache::set) with per-call options (`ttl`, the `skip_*_write` flags,
    /// `max_payload`). A tier the value skips loses the key instead: no older value of it stays
    /// there for a read to find (after an L1 eviction, for instance).
    ///
    /// # Errors
    ///
    /// As [`set`](Cache::set).
    pub async fn set_with<K: AsCacheKey + ?Sized>(
        &self,
        key: &K,
        value: impl Into<Arc<V>>,
        options: &FetchOptions,
    ) -> Result<(), CacheError> {
        let key = key.as_cache_key().map_err(CacheError::InvalidKey)?;
        let key = key.as_ref();
        let value = value.into();
        let options = self.resolve(options);
        let meta = self
            .shared
            .write_meta(self.shared.clock.now(), options.ttl, &options);
        // An unencodable value still goes to L1 (and to a superseded flight's callers); the
        // error is returned once that is done.
        let (writes, encode_error) = self.shared.remote_writes(key, &value, meta, &options);
        let published = Published::fresh(value, meta, Source::Set);
        // Skipping L1 removes the older value L1 may hold, as skipping a remote tier does there.
        let local = (!options.skip_l1_write).then(|| {
            self.shared
                .local_entry(Some(Arc::clone(&published.value)), meta, &options)
        });
        let waits = self.write(key, local, writes, Some(published));
        if let Some(error) = encode_error {
            return Err(error);
        }
        self.await_writes(waits).await
    }

    /// Removes `key` from every tier. A flight running for the key is superseded: its callers
    /// still get its result, but it is not stored. Once this returns, nothing that started
    /// before it (a flight, a background refresh and its back-off, a write-back) puts a value
    /// of the key back in any tier.
    ///
    /// # Errors
    ///
    /// [`CacheError::Tier`] when the remote delete fails (both tiers, under the default
    /// optimistic parallel write policy). L1 no longer holds the key either way.
    #[doc(alias = "invalidate")]
    pub async fn remove<K: AsCacheKey + ?Sized>(&self, key: &K) -> Result<(), CacheError> {
        let key = key.as_cache_key().map_err(CacheError::InvalidKey)?;
        let key = key.as_ref();
        let removals =
            std::array::from_fn(|tier| self.shared.remote[tier].as_ref().map(|_| Effect::Remove));
        let waits = self.write(key, None, removals, None);
        self.await_writes(waits).await
    }

    /// The synchronous part of a `set` or `remove`, in one critical section of the key:
    /// supersedes the running flight, applies `local` to L1 (`Some(entry)` stores, `None`
    /// removes), and queues `writes` on the remote lanes. Returns what to wait on for the
    /// remote writes.
    fn write(
        &self,
        key: &CacheKey,
        local: Option<LocalEntry<V>>,
        writes: [Option<Effect>; 2],
        value: Option<Published<V>>,
    ) -> [Option<oneshot::Receiver<Result<(), BackendError>>>; 2] {
        let mut waits = [None, None];
        let mut start = [false, false];
        let superseded = {
            let mut locked = self.shared.table.lock(key);
            let state = locked.state();
            let superseded = state.flight.take();
            match local {
                Some(entry) => self.shared.l1.insert(key, entry),
                None => self.shared.l1.remove(key),
            }
            for (tier, write) in writes.into_iter().enumerate() {
                if let Some(effect) = write {
                    let (sender, receiver) = oneshot::channel();
                    waits[tier] = Some(receiver);
                    start[tier] = state.queue_write(tier, effect, Some(sender));
                }
            }
            superseded
        };
        if let Some(slot) = superseded {
            self.supersede(slot, value);
        }
        self.start_lanes(key, start);
        waits
    }

    /// Counters of what the cache did off its L1-hit path.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats.snapshot()
    }

    /// Keys with a flight running. Zero once every flight finished: the table keeps no
    /// residue.
    pub fn flights_in_progress(&self) -> usize {
        self.shared.table.flights()
    }

    /// Loader calls running now, all keys together: at most the bound set with
    /// [`CacheBuilder::max_concurrent_loads`]. Zero once every flight finished.
    pub fn loads_in_progress(&self) -> usize {
        self.shared
            .loader_slot_count
            .saturating_sub(self.shared.loader_slots.available_permits())
    }

    /// Keys with a flight or a remote write in progress. Zero once everything finished, also
    /// when tasks were dropped: a flight or a remote write whose task is dropped, even before
    /// its first poll (an offload that discards it, a runtime shut down with it queued), leaves
    /// nothing of its key behind.
    pub fn keys_in_progress(&self) -> usize {
        self.shared.table.len()
    }

    /// The cache's label.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// The hot path: what L1 says of `key`, with one clock read and no allocation of its own.
    #[inline(always)]
    fn probe_local(&self, key: &CacheKey) -> Local<V> {
        let now = self.shared.clock.now();
        let Some(entry) = self.shared.l1.get(key, now) else {
            return Local::Miss;
        };
        let state = entry.state();
        let meta = entry.meta();
        let Some(value) = entry.into_value() else {
            return if now < state.fresh_until {
                Local::Absent
            } else {
                Local::Miss
            };
        };
        let hit = |freshness| Hit {
            value,
            meta,
            source: Source::L1,
            freshness,
            coalesced: false,
            refresh_started: false,
            elapsed: Duration::ZERO,
            flight_id: None,
            suppressed: None,
        };
        if now < state.fresh_until {
            if now >= state.refresh_at {
                return Local::Refresh(hit(HitFreshness::Fresh));
            }
            return Local::Hit(hit(HitFreshness::Fresh));
        }
        if now < state.throttle_until
            && let Some(cause) = state.fail_safe
        {
            self.shared.stats.record_throttled();
            return Local::Hit(hit(HitFreshness::Stale(StaleCause::FailSafe {
                cause,
                throttled: true,
            })));
        }
        if now < state.revalidate_until {
            if now >= state.refresh_at {
                return Local::Refresh(hit(HitFreshness::Revalidating));
            }
            return Local::Hit(hit(HitFreshness::Revalidating));
        }
        Local::Stale(Candidate {
            value: hit(HitFreshness::Fresh).value,
            meta,
            source: Source::L1,
        })
    }

    /// Starts a background refresh of `key` (whose L1 entry is `current`) unless a flight
    /// already runs for it; whether it started one. `loader` is built only when it does.
    fn start_refresh(
        &self,
        key: &CacheKey,
        call: &FetchOptions,
        current: &Hit<V>,
        loader: impl FnOnce() -> Option<BoxLoader<V>>,
    ) -> bool {
        let options = self.resolve(call);
        let flight = {
            let mut locked = self.shared.table.lock(key);
            let state = locked.state();
            if let Some(slot) = state.joinable() {
                // A refresh started by a read without a loader can still use this one.
                if slot.flight.lacks_loader() {
                    slot.flight.offer_loader(loader());
                }
                return false;
            }
            self.mark_refreshing(key, current, &options);
            let id = self.shared.next_flight.fetch_add(1, Ordering::Relaxed);
            let flight = Arc::new(Flight::refresh(
                id,
                options,
                loader(),
                current.meta.created_at(),
            ));
            flight.offer_candidate(Some(Candidate {
                value: Arc::clone(&current.value),
                meta: current.meta,
                source: Source::L1,
            }));
            state.flight = Some(FlightSlot::new(Arc::clone(&flight), 0));
            flight
        };
        self.shared.stats.record_refresh_started();
        let span = tracing::debug_span!("tierkit.refresh", cache = %self.shared.label, flight_id = flight.id);
        if let Err(error) = self.spawn_flight(key, &flight, &span) {
            let mut locked = self.shared.table.lock(key);
            if let Some(state) = locked.existing() {
                state.remove_flight(&flight);
            }
            drop(locked);
            flight.publish(Err(error));
            return false;
        }
        true
    }

    /// Marks the L1 entry a refresh starts from as being refreshed, by moving its refresh
    /// time to the end of the refresh back-off: the reads that follow inside the window are
    /// plain hits that never look for the running refresh in the key's table. The refresh
    /// replaces the entry when it ends (with the new value, or the same one backed off); if
    /// it is still running when the back-off passes, the next read finds it in the table as
    /// before. Called under the key's table lock, which every L1 write of a `set` or `remove`
    /// also holds, so the entry marked is the one the refresh starts from or none.
    fn mark_refreshing(&self, key: &CacheKey, current: &Hit<V>, options: &Resolved) {
        let now = self.shared.clock.now();
        if let Some(entry) = self.shared.l1.get(key, now)
            && entry.meta().created_at() == current.meta.created_at()
            && !entry.is_absent()
        {
            self.shared
                .l1
                .insert(key, self.shared.backed_off(entry, options, now));
        }
    }

    /// A caller's `Hit` of a value a flight published (or a stale value it fell back on).
    fn hit_of(&self, published: Published<V>) -> Hit<V> {
        Hit {
            value: published.value,
            meta: published.meta,
            source: published.source,
            freshness: published.freshness,
            coalesced: false,
            refresh_started: false,
            elapsed: Duration::ZERO,
            flight_id: None,
            suppressed: published.suppressed,
        }
    }

    fn skips_l1_read(&self, options: &FetchOptions) -> bool {
        options
            .get_skip_l1_read()
            .or(self.shared.defaults.get_skip_l1_read())
            .unwrap_or(false)
    }

    fn resolve(&self, call: &FetchOptions) -> Resolved {
        if *call == FetchOptions::new() {
            return self.shared.resolved_defaults;
        }
        let (resolved, adjustments) = call.or(&self.shared.defaults).resolve();
        self.shared.warn_once(&adjustments);
        resolved
    }

    /// The slow path: join the key's flight or start one, then wait for it. `own` is the
    /// caller's stale L1 entry, `fallback` its fallback value (both for fail-safe).
    async fn fetch(
        &self,
        key: Cow<'_, CacheKey>,
        call: &FetchOptions,
        loader: Option<BoxLoader<V>>,
        own: Option<Candidate<V>>,
        fallback: Option<Arc<V>>,
    ) -> Result<Option<Hit<V>>, CacheError> {
        let arrival = tokio::time::Instant::now();
        let options = self.resolve(call);
        let key = key.as_ref();
        let span = tracing::debug_span!(
            "tierkit.fetch",
            cache = %self.shared.label,
            flight_id = tracing::field::Empty,
            coalesced = tracing::field::Empty,
        );
        let mut own = own;
        let (flight, coalesced) = {
            let mut locked = self.shared.table.lock(key);
            // A flight may have stored the value since the caller's L1 probe. Asking L1 first
            // whether it may hold the key keeps this second look from counting as a second
            // access of a missed key (moka's admission would then favour it over what L1
            // holds, and L1's hit ratio would drop).
            if !options.skip_l1_read && self.shared.l1.may_contain(key) {
                match self.probe_local(key) {
                    Local::Hit(hit) | Local::Refresh(hit) => return Ok(Some(hit)),
                    Local::Absent => return Ok(None),
                    Local::Stale(stale) => own = Candidate::newest(own, Some(stale)),
                    Local::Miss => {}
                }
            }
            let state = locked.state();
            match state.joinable() {
                Some(slot) => {
                    slot.waiters += 1;
                    slot.flight.offer_loader(loader);
                    slot.flight.offer_candidate(own.clone());
                    (Arc::clone(&slot.flight), true)
                }
                None => {
                    let id = self.shared.next_flight.fetch_add(1, Ordering::Relaxed);
                    let flight = Arc::new(Flight::new(id, options, loader));
                    flight.offer_candidate(own.clone());
                    state.flight = Some(FlightSlot::new(Arc::clone(&flight), 1));
                    (flight, false)
                }
            }
        };
        span.record("flight_id", flight.id);
        span.record("coalesced", coalesced);
        let waiter = Waiter {
            shared: &self.shared,
            key,
            flight: Arc::clone(&flight),
        };
        if coalesced {
            self.shared.stats.record_coalesced();
        } else {
            self.shared.stats.record_flight();
            if let Err(error) = self.spawn_flight(key, &flight, &span) {
                drop(waiter);
                let mut locked = self.shared.table.lock(key);
                if let Some(state) = locked.existing() {
                    state.remove_flight(&flight);
                }
                drop(locked);
                flight.publish(Err(error.clone()));
                return Err(error);
            }
        }
        let fallbacks = Fallbacks {
            own,
            value: fallback,
        };
        let result = flight::wait(&self.shared, &flight, arrival, &options, &fallbacks)
            .instrument(span)
            .await;
        drop(waiter);
        let elapsed = arrival.elapsed();
        result.map(|published| {
            published.map(|published| Hit {
                coalesced,
                elapsed,
                flight_id: NonZeroU64::new(flight.id),
                ..self.hit_of(published)
            })
        })
    }

    fn spawn_flight(
        &self,
        key: &CacheKey,
        flight: &Arc<Flight<V>>,
        caller: &tracing::Span,
    ) -> Result<(), CacheError> {
        let handle = match &self.shared.runtime {
            Some(handle) => handle.clone(),
            None => tokio::runtime::Handle::try_current().map_err(|_| {
                CacheError::Rejected(Arc::from(
                    "no tokio runtime to run the flight on (call from a tokio runtime or set \
                     CacheBuilder::runtime)",
                ))
            })?,
        };
        let task = handle.spawn(flight::run(
            Arc::clone(&self.shared),
            key.clone(),
            Arc::clone(flight),
            caller,
        ));
        flight.set_abort_handle(task.abort_handle());
        Ok(())
    }

    /// Hands a superseded flight's callers the newer value (a `set`), or leaves them the
    /// flight's own result (a `remove`). Under [`AbandonPolicy::CancelWhenUnobserved`], a
    /// flight whose callers got the newer value has nobody left to serve: it is cancelled.
    fn supersede(&self, slot: FlightSlot<V>, value: Option<Published<V>>) {
        self.shared.stats.record_superseded();
        let Some(value) = value else {
            return;
        };
        slot.flight.publish(Ok(Some(value)));
        if slot.flight.options.abandon == AbandonPolicy::CancelWhenUnobserved {
            slot.flight.cancel();
        }
    }

    fn start_lanes(&self, key: &CacheKey, start: [bool; 2]) {
        for (tier, start) in start.into_iter().enumerate() {
            if start {
                self.shared.start_lane(key.clone(), tier);
            }
        }
    }

    /// Waits for the remote writes of a `set` or `remove`, combined by the write policy.
    async fn await_writes(
        &self,
        waits: [Option<oneshot::Receiver<Result<(), BackendError>>>; 2],
    ) -> Result<(), CacheError> {
        fn answer(
            receiver: oneshot::Receiver<Result<(), BackendError>>,
            tier: &str,
        ) -> impl Future<Output = Result<(), BackendError>> + Send + 'static {
            let tier: Arc<str> = Arc::from(tier);
            async move {
                receiver.await.unwrap_or_else(|_| {
                    Err(BackendError::internal(
                        tier,
                        Op::Set,
                        "the write was dropped before it ran",
                    ))
                })
            }
        }
        let [l2, l3] = waits;
        let label = |tier: usize| {
            self.shared.remote[tier]
                .as_ref()
                .map_or("", |remote| remote.backend.label())
        };
        match (l2, l3) {
            (None, None) => Ok(()),
            (Some(l2), None) => answer(l2, label(0))
                .await
                .map_err(|source| CacheError::Tier {
                    tier: Source::L2,
                    source,
                }),
            (None, Some(l3)) => answer(l3, label(1))
                .await
                .map_err(|source| CacheError::Tier {
                    tier: Source::L3,
                    source,
                }),
            (Some(l2), Some(l3)) => {
                let context = PolicyContext::new(
                    TierName {
                        path: "l2",
                        label: label(0),
                    },
                    TierName {
                        path: "l3",
                        label: label(1),
                    },
                    self.shared.clock.now(),
                    &*self.shared.offload,
                );
                let (l2, l3) = (answer(l2, label(0)), answer(l3, label(1)));
                self.shared
                    .write_policy
                    .write(&context, move || l2, move || l3)
                    .await
                    .map(|_| ())
                    .map_err(|source| CacheError::Tier {
                        tier: Source::L2,
                        source,
                    })
            }
        }
    }
}

impl<V: Send + Sync + 'static> Shared<V> {
    fn warn_once(&self, adjustments: &[Adjustment]) {
        if adjustments.is_empty() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        for adjustment in adjustments {
            if warned.insert(adjustment.clone()) {
                tracing::warn!(
                    cache = %self.label,
                    option = adjustment.field,
                    configured = %adjustment.from,
                    used = %adjustment.to,
                    "incoherent cache option normalised"
                );
            }
        }
    }

    /// Stores `entry` in L1 unless L1 holds a newer one (a refill never overwrites a newer
    /// value; an equal one is replaced, for instance by its fail-safe or back-off state).
    pub(crate) fn insert_local_if_newer(&self, key: &CacheKey, entry: LocalEntry<V>) {
        let now = self.clock.now();
        if entry.meta().is_expired(now) {
            return;
        }
        // `may_contain` first: the usual refill of a missed key reads nothing, so it is not
        // counted as one more access by L1's admission policy.
        if self.l1.may_contain(key)
            && let Some(current) = self.l1.get(key, now)
            && current.meta().created_at() > entry.meta().created_at()
        {
            return;
        }
        self.l1.insert(key, entry);
    }

    /// Removes the key's L1 entry if it is older than a value written at `created_at` (a
    /// write that skips L1 leaves no older value there). Call under the key's table lock.
    pub(crate) fn remove_local_if_older(&self, key: &CacheKey, created_at: Timestamp) {
        if !self.l1.may_contain(key) {
            return;
        }
        let as_new = self
            .l1
            .get(key, self.clock.now())
            .is_some_and(|current| current.meta().created_at() >= created_at);
        if !as_new {
            self.l1.remove(key);
        }
    }

    /// The timestamps of a write at `now` fresh for `ttl`: it expires (in every tier) once
    /// its reserve after freshness is over (fail-safe's horizon, or the stale-while-revalidate
    /// window, and at least the L1 jitter's room).
    pub(crate) fn write_meta(
        &self,
        now: Timestamp,
        ttl: Duration,
        options: &Resolved,
    ) -> EntryMeta {
        let stale_at = now.saturating_add(ttl);
        // The reserve after freshness, for this write's own TTL (a loader may set it).
        // Fail-safe's horizon is exact; otherwise the reserve also leaves L1's jitter room.
        let reserve = if options.fail_safe {
            options.fail_safe_max.saturating_sub(ttl)
        } else {
            options.stale_while_revalidate.max(options.jitter_max)
        };
        let expires_at = stale_at.saturating_add(reserve);
        let stale_at = if options.jitter_remote {
            stale_at.saturating_add(self.jitter.jitter(options.jitter_max))
        } else {
            stale_at
        };
        EntryMeta::new(now, stale_at.min(expires_at), expires_at)
    }

    /// The L1 entry of `value` (`None`: a tombstone) with timestamps `meta`: its freshness
    /// extended by jitter, its stale-while-revalidate window and its eager-refresh time, all
    /// within `expires_at`.
    pub(crate) fn local_entry(
        &self,
        value: Option<Arc<V>>,
        meta: EntryMeta,
        options: &Resolved,
    ) -> LocalEntry<V> {
        let jitter = if options.jitter_remote {
            Duration::ZERO
        } else {
            self.jitter.jitter(options.jitter_max)
        };
        let fresh_until = meta
            .stale_at()
            .saturating_add(jitter)
            .min(meta.expires_at());
        let revalidate_until = fresh_until
            .saturating_add(options.stale_while_revalidate)
            .min(meta.expires_at());
        let eager = options.eager_refresh.map(|threshold| {
            let ttl = meta.stale_at().saturating_duration_since(meta.created_at());
            // `threshold` is in (0, 1): the product is at most `ttl` (saturating on rounding).
            let after = Duration::try_from_secs_f64(ttl.as_secs_f64() * threshold).unwrap_or(ttl);
            meta.created_at().saturating_add(after)
        });
        let refresh_at = match eager {
            Some(at) => at,
            None if revalidate_until > fresh_until => fresh_until,
            None => Timestamp::MAX,
        };
        LocalEntry::with_state(
            value,
            meta,
            LocalState {
                fresh_until,
                revalidate_until,
                refresh_at,
                throttle_until: Timestamp::UNIX_EPOCH,
                fail_safe: None,
            },
        )
    }

    /// The end of a throttle starting at `now` for a stale value: after the throttle window,
    /// never past the value's `expires_at`.
    pub(crate) fn throttle_end(
        &self,
        stale: &Candidate<V>,
        options: &Resolved,
        now: Timestamp,
    ) -> Timestamp {
        now.saturating_add(options.fail_safe_throttle)
            .min(stale.meta.expires_at())
    }

    /// The L1 entry of a fail-safe throttle: the stale value, timestamps unchanged, served
    /// without the loader until `until`.
    pub(crate) fn throttled_entry(
        &self,
        stale: &Candidate<V>,
        cause: FailSafeCause,
        until: Timestamp,
    ) -> LocalEntry<V> {
        let meta = stale.meta;
        LocalEntry::with_state(
            Some(Arc::clone(&stale.value)),
            meta,
            LocalState {
                fresh_until: meta.stale_at(),
                revalidate_until: meta.stale_at(),
                refresh_at: Timestamp::MAX,
                throttle_until: until,
                fail_safe: Some(cause),
            },
        )
    }

    /// `current` again with a refresh back-off: no read starts another refresh before
    /// `now + refresh_backoff`.
    pub(crate) fn backed_off(
        &self,
        current: LocalEntry<V>,
        options: &Resolved,
        now: Timestamp,
    ) -> LocalEntry<V> {
        let mut state = current.state();
        state.refresh_at = now.saturating_add(options.refresh_backoff);
        let meta = current.meta();
        LocalEntry::with_state(current.into_value(), meta, state)
    }

    /// Which remote tiers a write stores in (`Some(true)`) and which it skips (`Some(false)`):
    /// a skipped tier gets a removal instead, so that no older value of the key outlives the
    /// newer one there (an L1 eviction would otherwise let a read find it).
    fn remote_targets(&self, options: &Resolved) -> [Option<bool>; 2] {
        [
            self.remote[0].as_ref().map(|_| !options.skip_l2_write),
            self.remote[1].as_ref().map(|_| !options.skip_l3_write),
        ]
    }

    /// Tombstones for the remote tiers the options write, removals for those they skip.
    pub(crate) fn remote_absent_writes(
        &self,
        key: &CacheKey,
        meta: EntryMeta,
        options: &Resolved,
    ) -> [Option<Effect>; 2] {
        let targets = self.remote_targets(options);
        let removals = targets.map(|target| target.map(|_| Effect::Remove));
        if !targets.contains(&Some(true)) {
            return removals;
        }
        match encode_absent_frame(key) {
            Ok(frame) => {
                let stored = flight::stored_value(frame, meta);
                store_or_remove(targets, &stored)
            }
            Err(_) => removals,
        }
    }

    /// The remote writes of a value: encoded once, the same bytes for every tier it is stored
    /// in, and a removal for every tier the options skip. A value that cannot be encoded, or is
    /// larger than `max_payload` once encoded, is kept in L1 only (counted), and the remote
    /// tiers get a removal instead. Either way no older value of the key outlives this newer
    /// one in any tier. The encode error is returned alongside, for `set`.
    pub(crate) fn remote_writes(
        &self,
        key: &CacheKey,
        value: &V,
        meta: EntryMeta,
        options: &Resolved,
    ) -> ([Option<Effect>; 2], Option<CacheError>) {
        let targets = self.remote_targets(options);
        let removals = targets.map(|target| target.map(|_| Effect::Remove));
        if !targets.contains(&Some(true)) {
            return (removals, None);
        }
        let frame = match encode_frame(key, &*self.codec, &self.compression, value) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.record_encode_error();
                tracing::warn!(cache = %self.label, %error, "a value could not be encoded; it is kept in L1 only");
                return (removals, Some(CacheError::Encode(error)));
            }
        };
        if frame.len() > options.max_payload {
            self.stats.record_oversize();
            tracing::debug!(
                cache = %self.label,
                size = frame.len(),
                max_payload = options.max_payload,
                "a value is larger than max_payload; it is kept in L1 only"
            );
            return (removals, None);
        }
        // Never write what the readers refuse: a frame that decodes past their bound.
        let decoded = announced_decoded_len(&frame);
        let bound = self.compression.decoded_bound(options.max_payload);
        if decoded > bound {
            self.stats.record_oversize();
            tracing::debug!(
                cache = %self.label,
                decoded,
                max_decoded = bound,
                "a value decodes to more than readers accept; it is kept in L1 only"
            );
            return (removals, None);
        }
        let stored = flight::stored_value(frame, meta);
        (store_or_remove(targets, &stored), None)
    }

    /// Starts the runner of the write lane of `key` on remote tier `tier`.
    ///
    /// The guard that frees the lane if the runner never finishes is built here, before the
    /// task exists, and moved into it: dropping the task, even before its first poll (an
    /// offload that discards it, a runtime shut down with it still queued), drops the guard,
    /// which releases the lane and fails the writes waiting on it.
    pub(crate) fn start_lane(self: &Arc<Self>, key: CacheKey, tier: usize) {
        let guard = LaneGuard {
            shared: Arc::clone(self),
            key,
            tier,
            armed: true,
        };
        let task = OffloadTask::new("tierkit.cache.write", async move {
            let mut guard = guard;
            guard.shared.run_lane(&guard.key, guard.tier).await;
            guard.armed = false;
            Ok(())
        });
        if let Err(rejected) = self.offload.spawn(task) {
            self.stats.record_write_rejected(tier);
            tracing::warn!(cache = %self.label, reason = %rejected.reason, "a remote write was refused by the offload");
            // Its guard frees the lane, which is still this runner's alone.
            drop(rejected.task);
        }
    }

    /// Frees a lane that cannot run, failing every write waiting on it.
    fn fail_lane(&self, key: &CacheKey, tier: usize, why: &str) {
        let lane = {
            let mut locked = self.table.lock(key);
            locked.existing().and_then(|state| state.lanes[tier].take())
        };
        let label = self.remote[tier]
            .as_ref()
            .map_or("", |remote| remote.backend.label());
        for pending in lane.into_iter().filter_map(|lane| lane.pending) {
            for notify in pending.notify {
                let _ = notify.send(Err(BackendError::internal(
                    label.to_owned(),
                    Op::Set,
                    format!("the write could not run: {why}"),
                )));
            }
        }
    }

    /// Applies the writes of one key's lane, one at a time, until none is waiting. Its caller's
    /// [`LaneGuard`] frees the lane if this never returns.
    async fn run_lane(&self, key: &CacheKey, tier: usize) {
        let Some(remote) = self.remote[tier].as_ref() else {
            self.fail_lane(key, tier, "no such tier");
            return;
        };
        loop {
            let next = {
                let mut locked = self.table.lock(key);
                let Some(state) = locked.existing() else {
                    break;
                };
                match state.lanes[tier]
                    .as_mut()
                    .and_then(|lane| lane.pending.take())
                {
                    Some(next) => next,
                    None => {
                        // Dropping the lane wakes the flights waiting for it to finish.
                        state.lanes[tier] = None;
                        break;
                    }
                }
            };
            let result = match next.effect {
                Effect::Store(value) => remote.backend.set(key, value).await,
                Effect::Remove => remote.backend.delete(key).await,
                Effect::Refill(value) => remote.backend.set_if_newer(key, value).await,
            };
            if let Err(error) = &result {
                self.stats.record_write_error(tier);
                tracing::warn!(
                    cache = %self.label,
                    tier = remote.source.as_str(),
                    error = error as &dyn std::error::Error,
                    "a remote write failed"
                );
            }
            for notify in next.notify {
                let _ = notify.send(result.clone());
            }
        }
    }
}

/// The writes of `stored` for [`Shared::remote_targets`]: a store in the tiers it is stored in,
/// a removal in those it skips.
fn store_or_remove(targets: [Option<bool>; 2], stored: &CacheValue) -> [Option<Effect>; 2] {
    targets.map(|target| {
        target.map(|store| {
            if store {
                Effect::Store(stored.clone())
            } else {
                Effect::Remove
            }
        })
    })
}

/// Frees a lane whose runner did not finish: dropped before it ran (refused by the offload,
/// discarded, its runtime shut down with it queued) or while it ran. The waiting writes fail,
/// and the flights waiting for the lane to drain are woken.
struct LaneGuard<V: Send + Sync + 'static> {
    shared: Arc<Shared<V>>,
    key: CacheKey,
    tier: usize,
    armed: bool,
}

impl<V: Send + Sync + 'static> Drop for LaneGuard<V> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.fail_lane(
                &self.key,
                self.tier,
                "its task was dropped before it finished",
            );
        }
    }
}
