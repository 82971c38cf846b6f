//! The stored value and its timestamps.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{BackendError, Result};
use crate::time::Timestamp;

/// Where a value stands in its life at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// Before `stale_at`: serve it.
    Fresh,
    /// From `stale_at` up to `expires_at`: usable as a fallback while a fresher value is
    /// fetched, at the caller's choice.
    Stale,
    /// From `expires_at` on: never served.
    Expired,
}

/// A cached payload with the three instants that govern its life.
///
/// * `created_at`: when the value was produced.
/// * `stale_at`: end of freshness. From here on the value is stale.
/// * `expires_at`: hard expiry. From here on no tier returns it.
///
/// The invariant `created_at <= stale_at <= expires_at` is checked at construction, so every
/// `CacheValue` in existence satisfies it. The instants are wall-clock milliseconds, so tiers on
/// different machines agree on them; copying a value from one tier to another keeps them, which
/// is how a refill never extends a value's life.
///
/// Cloning is cheap: the payload is a [`Bytes`], whose clone is a reference-count increment.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{CacheValue, Freshness, Timestamp};
///
/// let now = Timestamp::from_unix_millis(1_000_000);
/// // Fresh for 60 s, then servable as stale for 5 more minutes.
/// let value = CacheValue::with_ttl(&b"hello"[..], now, Duration::from_secs(60))
///     .with_stale_for(Duration::from_secs(300));
/// assert_eq!(value.freshness(now), Freshness::Fresh);
/// assert_eq!(value.freshness(now.saturating_add(Duration::from_secs(61))), Freshness::Stale);
/// assert_eq!(value.freshness(now.saturating_add(Duration::from_secs(360))), Freshness::Expired);
/// assert_eq!(value.time_to_live(now), Duration::from_secs(360));
///
/// // Inconsistent instants are rejected.
/// assert!(CacheValue::new(&b"x"[..], now, now.saturating_sub(Duration::from_secs(1)), now).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheValue {
    payload: Bytes,
    created_at: Timestamp,
    stale_at: Timestamp,
    expires_at: Timestamp,
}

impl CacheValue {
    /// A value with explicit instants.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidValue`] unless `created_at <= stale_at <= expires_at`.
    pub fn new(
        payload: impl Into<Bytes>,
        created_at: Timestamp,
        stale_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Self> {
        if created_at > stale_at || stale_at > expires_at {
            return Err(BackendError::invalid_value(
                "value",
                format!(
                    "timestamps out of order: created_at {created_at}, stale_at {stale_at}, \
                     expires_at {expires_at} (need created_at <= stale_at <= expires_at)"
                ),
            ));
        }
        Ok(CacheValue {
            payload: payload.into(),
            created_at,
            stale_at,
            expires_at,
        })
    }

    /// A value created at `now`, fresh for `ttl`, expiring when freshness ends.
    ///
    /// Durations are truncated to the millisecond and saturate: a huge `ttl` means the value
    /// practically never expires.
    #[must_use]
    pub fn with_ttl(payload: impl Into<Bytes>, now: Timestamp, ttl: Duration) -> Self {
        let end = now.saturating_add(ttl);
        CacheValue {
            payload: payload.into(),
            created_at: now,
            stale_at: end,
            expires_at: end,
        }
    }

    /// This value, kept (as stale) for `stale_for` beyond the end of its freshness.
    #[must_use]
    pub fn with_stale_for(mut self, stale_for: Duration) -> Self {
        self.expires_at = self.stale_at.saturating_add(stale_for);
        self
    }

    /// The payload.
    #[inline]
    #[must_use]
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload, consuming the value.
    #[inline]
    #[must_use]
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// When the value was produced.
    #[inline]
    #[must_use]
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// End of freshness.
    #[inline]
    #[must_use]
    pub fn stale_at(&self) -> Timestamp {
        self.stale_at
    }

    /// Hard expiry.
    #[inline]
    #[must_use]
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Where the value stands at `now`.
    #[inline]
    #[must_use]
    pub fn freshness(&self, now: Timestamp) -> Freshness {
        if now < self.stale_at {
            Freshness::Fresh
        } else if now < self.expires_at {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// `now < stale_at`.
    #[inline]
    #[must_use]
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.stale_at
    }

    /// `stale_at <= now < expires_at`.
    #[inline]
    #[must_use]
    pub fn is_stale(&self, now: Timestamp) -> bool {
        self.stale_at <= now && now < self.expires_at
    }

    /// `now >= expires_at`.
    #[inline]
    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }

    /// Whether this value may replace `held` in a conditional write
    /// ([`Backend::set_if_newer`](crate::Backend::set_if_newer)): unless `held` is still live
    /// at `now` and was created later. An equal `created_at` replaces.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tierkit_core::{CacheValue, Timestamp};
    ///
    /// let t0 = Timestamp::from_unix_millis(1_000_000);
    /// let t1 = t0.saturating_add(Duration::from_secs(1));
    /// let older = CacheValue::with_ttl(&b"v1"[..], t0, Duration::from_secs(60));
    /// let newer = CacheValue::with_ttl(&b"v2"[..], t1, Duration::from_secs(60));
    /// assert!(!older.replaces(&newer, t1));
    /// assert!(newer.replaces(&older, t1));
    /// assert!(older.replaces(&older, t1));
    /// // An expired value is replaced whatever its age.
    /// assert!(older.replaces(&newer, t1.saturating_add(Duration::from_secs(60))));
    /// ```
    #[inline]
    #[must_use]
    pub fn replaces(&self, held: &CacheValue, now: Timestamp) -> bool {
        held.is_expired(now) || held.created_at <= self.created_at
    }

    /// Time left until hard expiry (zero once expired). This is the physical TTL a tier sets.
    #[must_use]
    pub fn time_to_live(&self, now: Timestamp) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// Time left until the value turns stale (zero once stale).
    #[must_use]
    pub fn time_to_stale(&self, now: Timestamp) -> Duration {
        self.stale_at.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn invariant_is_enforced() {
        assert!(CacheValue::new(Bytes::new(), ts(1), ts(1), ts(1)).is_ok());
        assert!(CacheValue::new(Bytes::new(), ts(2), ts(1), ts(3)).is_err());
        assert!(CacheValue::new(Bytes::new(), ts(1), ts(3), ts(2)).is_err());
        let err = CacheValue::new(Bytes::new(), ts(2), ts(1), ts(3)).expect_err("out of order");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidValue);
    }

    #[test]
    fn boundaries() {
        let v = CacheValue::new(Bytes::from_static(b"p"), ts(10), ts(20), ts(30)).expect("valid");
        assert_eq!(v.freshness(ts(5)), Freshness::Fresh);
        assert_eq!(v.freshness(ts(19)), Freshness::Fresh);
        assert_eq!(v.freshness(ts(20)), Freshness::Stale);
        assert_eq!(v.freshness(ts(29)), Freshness::Stale);
        assert_eq!(v.freshness(ts(30)), Freshness::Expired);
        assert!(v.is_fresh(ts(19)) && !v.is_stale(ts(19)) && !v.is_expired(ts(19)));
        assert!(!v.is_fresh(ts(20)) && v.is_stale(ts(20)) && !v.is_expired(ts(20)));
        assert!(v.is_expired(ts(30)));
        assert_eq!(v.time_to_live(ts(25)), Duration::from_millis(5));
        assert_eq!(v.time_to_live(ts(35)), Duration::ZERO);
        assert_eq!(v.time_to_stale(ts(15)), Duration::from_millis(5));
        assert_eq!(v.time_to_stale(ts(25)), Duration::ZERO);
    }

    #[test]
    fn zero_ttl_is_expired_at_once() {
        let v = CacheValue::with_ttl(Bytes::new(), ts(10), Duration::ZERO);
        assert!(v.is_expired(ts(10)));
    }

    #[test]
    fn clone_does_not_copy_the_payload() {
        let v = CacheValue::with_ttl(vec![1u8; 1024], ts(0), Duration::from_secs(1));
        let c = v.clone();
        assert_eq!(v.payload().as_ptr(), c.payload().as_ptr());
    }
}
