//! [`Hit`]: a value with the story of how the call got it.

use std::fmt;
use std::num::NonZeroU64;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::local::EntryMeta;

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The in-process tier.
    L1,
    /// The first remote tier.
    L2,
    /// The second remote tier.
    L3,
    /// The loader (the origin).
    Loader,
    /// A `set` that superseded the flight the caller was waiting on: the caller gets the value
    /// that was set.
    Set,
    /// The call's own fallback value (fail-safe with no stale value to serve).
    Fallback,
}

impl Source {
    /// The name used in metrics and traces: `l1`, `l2`, `l3`, `loader`, `set`, `fallback`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::L3 => "l3",
            Source::Loader => "loader",
            Source::Set => "set",
            Source::Fallback => "fallback",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fresh a returned value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HitFreshness {
    /// Inside its freshness (`now < stale_at`, plus L1 jitter), or just produced.
    Fresh,
    /// Past its freshness but inside the stale-while-revalidate window: returned at once while
    /// a background refresh of the key runs.
    Revalidating,
    /// Past its freshness, served because a fresh value could not be had (see the cause).
    Stale(StaleCause),
}

impl HitFreshness {
    /// Whether the value is past its freshness.
    pub fn is_stale(&self) -> bool {
        !matches!(self, HitFreshness::Fresh)
    }
}

/// Why a stale value was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleCause {
    /// Fail-safe: the loader failed (`cause`); `throttled` when the value was served from the
    /// throttle window of an earlier activation, without calling the loader.
    FailSafe {
        /// What failed.
        cause: FailSafeCause,
        /// Served within the throttle window, without a loader call.
        throttled: bool,
    },
    /// The caller's soft timeout passed; the flight goes on and stores its result.
    SoftTimeout,
    /// The caller's hard timeout passed; the flight may go on.
    HardTimeout,
    /// A read that allowed stale values ([`FetchOptions::allow_stale`]).
    ///
    /// [`FetchOptions::allow_stale`]: crate::FetchOptions::allow_stale
    Allowed,
}

/// What made fail-safe serve a stale value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailSafeCause {
    /// The loader returned an error (or [`Fetched::fail`](crate::Fetched::fail)).
    LoaderError,
    /// The loader panicked.
    LoaderPanic,
    /// The flight ran out of time.
    Timeout,
}

impl FailSafeCause {
    /// The name used in metrics and logs: `loader_error`, `loader_panic`, `timeout`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailSafeCause::LoaderError => "loader_error",
            FailSafeCause::LoaderPanic => "loader_panic",
            FailSafeCause::Timeout => "timeout",
        }
    }
}

/// A successful read: the value, shared ([`Arc`]), and how the call got it.
///
/// Dereferences to the value.
pub struct Hit<V> {
    pub(crate) value: Arc<V>,
    pub(crate) meta: EntryMeta,
    pub(crate) source: Source,
    pub(crate) freshness: HitFreshness,
    pub(crate) coalesced: bool,
    pub(crate) refresh_started: bool,
    pub(crate) elapsed: Duration,
    pub(crate) flight_id: Option<NonZeroU64>,
    /// Out of line (rare, and an L1 hit moves its `Hit` a few times).
    pub(crate) suppressed: Option<Arc<crate::CacheError>>,
}

impl<V> Hit<V> {
    /// The error fail-safe hid by serving this stale value (the loader's error, panic or
    /// timeout), for logging. `None` for a value that is not a fail-safe answer, and for a
    /// throttled serve.
    pub fn suppressed_error(&self) -> Option<&crate::CacheError> {
        self.suppressed.as_deref()
    }

    /// The value. Every caller of one flight gets the same allocation (`Arc::ptr_eq`).
    pub fn value(&self) -> &Arc<V> {
        &self.value
    }

    /// The value, without the outcome.
    pub fn into_value(self) -> Arc<V> {
        self.value
    }

    /// The entry's timestamps (`created_at`, `stale_at`, `expires_at`).
    pub fn meta(&self) -> EntryMeta {
        self.meta
    }

    /// Which tier (or the loader) produced the value.
    pub fn source(&self) -> Source {
        self.source
    }

    /// How fresh the value is.
    pub fn freshness(&self) -> HitFreshness {
        self.freshness
    }

    /// Whether this caller joined a flight another caller started (it did not lead it).
    pub fn is_coalesced(&self) -> bool {
        self.coalesced
    }

    /// Whether this call started a background refresh (eager refresh, or a read inside the
    /// stale-while-revalidate window).
    pub fn refresh_started(&self) -> bool {
        self.refresh_started
    }

    /// How long the call took, from its start to its answer (zero for an L1 hit: the clock is
    /// not read on that path).
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The id of the flight the caller waited on (`None` for an L1 hit). The same id appears in
    /// the flight's `tierkit.flight` span.
    pub fn flight_id(&self) -> Option<u64> {
        self.flight_id.map(NonZeroU64::get)
    }
}

impl<V> Deref for Hit<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

impl<V> Clone for Hit<V> {
    fn clone(&self) -> Self {
        Hit {
            value: Arc::clone(&self.value),
            suppressed: self.suppressed.clone(),
            ..*self
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for Hit<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hit")
            .field("value", &self.value)
            .field("source", &self.source)
            .field("freshness", &self.freshness)
            .field("coalesced", &self.coalesced)
            .field("meta", &self.meta)
            .field("elapsed", &self.elapsed)
            .field("flight_id", &self.flight_id)
            .finish()
    }
}
