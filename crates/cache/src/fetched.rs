//! [`Fetched`]: what a loader answers, when it wants more than "here is the value".

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A loader's answer: a value to store (optionally with its own TTL, or kept out of some
/// tiers), a value not to store, "there is no such value", "the stale value is still right",
/// or a failure without an error type.
///
/// A loader may return a plain `V` instead: it means [`Fetched::value`].
///
/// ```
/// use std::time::Duration;
/// use tierkit_cache::Fetched;
///
/// let short: Fetched<String> = Fetched::value("rate".to_owned()).ttl(Duration::from_secs(5));
/// let private: Fetched<String> = Fetched::value("per-user".to_owned()).skip_l2_write().skip_l3_write();
/// let gone: Fetched<String> = Fetched::absent();
/// # let _ = (short, private, gone);
/// ```
pub struct Fetched<V> {
    pub(crate) kind: FetchedKind<V>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) skip_l2_write: bool,
    pub(crate) skip_l3_write: bool,
}

/// The kinds of [`Fetched`].
pub(crate) enum FetchedKind<V> {
    Value(V),
    NoStore(V),
    Absent,
    NotModified,
    Fail(Arc<str>),
}

impl<V> Fetched<V> {
    fn of(kind: FetchedKind<V>) -> Self {
        Fetched {
            kind,
            ttl: None,
            skip_l2_write: false,
            skip_l3_write: false,
        }
    }

    /// A value to return and store in every tier (what a plain `V` means).
    pub fn value(value: V) -> Self {
        Self::of(FetchedKind::Value(value))
    }

    /// A value for the callers of this flight only: nothing is stored, so the next call runs
    /// the loader again. (Callers arriving after the flight ended do not get it.)
    pub fn no_store(value: V) -> Self {
        Self::of(FetchedKind::NoStore(value))
    }

    /// There is no such value: callers get "not found" ([`CacheError::NotFound`] from
    /// `get_or_fetch`, `None` from `get`). With
    /// [`negative_ttl`](crate::FetchOptions::negative_ttl) the answer is remembered (a
    /// tombstone in every tier) and later reads answer "not found" without the loader.
    ///
    /// [`CacheError::NotFound`]: crate::CacheError::NotFound
    pub fn absent() -> Self {
        Self::of(FetchedKind::Absent)
    }

    /// The stale value the loader was given ([`FetchContext::stale`]) is still right: it is
    /// returned and stored again with fresh timestamps, as if just loaded. Without a stale
    /// value this is a loader failure.
    ///
    /// [`FetchContext::stale`]: crate::FetchContext::stale
    pub fn not_modified() -> Self {
        Self::of(FetchedKind::NotModified)
    }

    /// The loader failed, without an error value: exactly like returning `Err`, fail-safe
    /// included. [`FetchContext::fail`](crate::FetchContext::fail) says the same.
    pub fn fail(reason: impl fmt::Display) -> Self {
        Self::of(FetchedKind::Fail(reason.to_string().into()))
    }

    /// How long this value stays fresh, instead of the call's `ttl`. Zero means the value is
    /// returned but not stored.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keep this value out of L2 (for instance a value only this instance should cache): the
    /// key is deleted from L2 instead, so that no older value of it stays there.
    #[must_use]
    pub fn skip_l2_write(mut self) -> Self {
        self.skip_l2_write = true;
        self
    }

    /// Keep this value out of L3 (for instance a value too large or too short-lived for it):
    /// the key is deleted from L3 instead, so that no older value of it stays there.
    #[must_use]
    pub fn skip_l3_write(mut self) -> Self {
        self.skip_l3_write = true;
        self
    }
}

impl<V> From<V> for Fetched<V> {
    fn from(value: V) -> Self {
        Fetched::value(value)
    }
}

impl<V> fmt::Debug for Fetched<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            FetchedKind::Value(_) => "value",
            FetchedKind::NoStore(_) => "no_store",
            FetchedKind::Absent => "absent",
            FetchedKind::NotModified => "not_modified",
            FetchedKind::Fail(_) => "fail",
        };
        f.debug_struct("Fetched")
            .field("kind", &kind)
            .field("ttl", &self.ttl)
            .field("skip_l2_write", &self.skip_l2_write)
            .field("skip_l3_write", &self.skip_l3_write)
            .finish()
    }
}
