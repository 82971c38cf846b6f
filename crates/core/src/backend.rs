//! The [`Backend`] trait every tier implements, and the futures it returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{BackendError, Op, Result};
use crate::key::CacheKey;
use crate::value::CacheValue;

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future of a tier operation: either already answered, or pending behind one box.
///
/// An in-process tier answers synchronously with [`TierFuture::ready`], which allocates
/// nothing; a remote tier returns [`TierFuture::pending`], which boxes its future once. A
/// composition looks at [`TierFuture::into_ready`] to answer an L1 hit without ever building a
/// future of its own, which is how an L1 hit costs no allocation even behind
/// `Arc<dyn Backend>`.
///
/// ```
/// use tierkit_core::{GetFuture, TierFuture};
///
/// # tokio_test_block_on(async {
/// let ready: GetFuture<'_> = TierFuture::ready(Ok(None));
/// assert!(ready.is_ready());
/// assert_eq!(ready.await?, None);
///
/// let pending: GetFuture<'_> = TierFuture::pending(async { Ok(None) });
/// assert!(!pending.is_ready());
/// assert_eq!(pending.await?, None);
/// # Ok::<(), tierkit_core::BackendError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct TierFuture<'a, T> {
    state: State<'a, T>,
}

enum State<'a, T> {
    Ready(Option<Result<T>>),
    Pending(BoxFuture<'a, Result<T>>),
}

/// The future of [`Backend::get`]: `Ok(Some(value))` on a hit, `Ok(None)` on a miss.
pub type GetFuture<'a> = TierFuture<'a, Option<CacheValue>>;

/// The future of [`Backend::set`], [`Backend::set_if_newer`], [`Backend::delete`] and
/// [`Backend::clear`].
pub type WriteFuture<'a> = TierFuture<'a, ()>;

impl<'a, T> TierFuture<'a, T> {
    /// An answer available now. Allocates nothing.
    #[inline]
    pub fn ready(result: Result<T>) -> Self {
        TierFuture {
            state: State::Ready(Some(result)),
        }
    }

    /// An answer that needs awaiting; boxes `future` once.
    pub fn pending(future: impl Future<Output = Result<T>> + Send + 'a) -> Self {
        TierFuture {
            state: State::Pending(Box::pin(future)),
        }
    }

    /// An answer that needs awaiting, from a future that is already boxed.
    pub fn from_boxed(future: BoxFuture<'a, Result<T>>) -> Self {
        TierFuture {
            state: State::Pending(future),
        }
    }

    /// Whether the answer is available without awaiting.
    #[inline]
    #[must_use]
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready(Some(_)))
    }

    /// The answer if it is available now, or the future back if it needs awaiting.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` when the future is pending; this is not a failure of the operation.
    #[inline]
    pub fn into_ready(self) -> std::result::Result<Result<T>, Self> {
        match self.state {
            State::Ready(Some(result)) => Ok(result),
            state => Err(TierFuture { state }),
        }
    }
}

// Sound: the ready state is moved out by value and the pending state is already pinned in its
// box; nothing is ever pinned structurally.
impl<T> Unpin for TierFuture<'_, T> {}

impl<T> Future for TierFuture<'_, T> {
    type Output = Result<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(answer) => Poll::Ready(answer.take().unwrap_or_else(|| {
                Err(BackendError::internal(
                    "tierkit",
                    Op::Get,
                    "a TierFuture was polled after it completed",
                ))
            })),
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for TierFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Ready(Some(_)) => f.write_str("TierFuture::Ready"),
            State::Ready(None) => f.write_str("TierFuture::Done"),
            State::Pending(_) => f.write_str("TierFuture::Pending"),
        }
    }
}

/// Where a tier sits in a stack of compositions: `l1`, `l2`, `l2.l1`, ...
///
/// A composition tells each of its tiers its path through [`Backend::bind`], so labels in spans
/// and metrics stay unique even when two tiers are of the same kind.
///
/// ```
/// use tierkit_core::TierPath;
///
/// let root = TierPath::root();
/// assert_eq!(root.child(2).child(1).as_str(), "l2.l1");
/// assert!(root.is_root());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TierPath(Arc<str>);

impl TierPath {
    /// The path of a stack's outermost composition (the empty path).
    #[must_use]
    pub fn root() -> Self {
        TierPath(Arc::from(""))
    }

    /// The path of tier number `index` (1-based) below this one.
    #[must_use]
    pub fn child(&self, index: usize) -> Self {
        if self.0.is_empty() {
            TierPath(Arc::from(format!("l{index}")))
        } else {
            TierPath(Arc::from(format!("{}.l{index}", self.0)))
        }
    }

    /// Whether this is the root path.
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The dotted form (`""` for the root).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TierPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TierPath({:?})", &*self.0)
    }
}

impl fmt::Display for TierPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("root")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// The synchronous answer of [`Backend::probe`].
///
/// A hit says whether the value is fresh or stale at the instant the tier judged it (by its
/// clock, which it reads anyway to drop expired values), so a caller holding a fresh hit needs
/// no clock read of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The tier holds this value, fresh (`now < stale_at`).
    Fresh(CacheValue),
    /// The tier holds this value, stale (`stale_at <= now < expires_at`).
    Stale(CacheValue),
    /// The tier does not hold the key (or holds it expired).
    Miss,
    /// The tier cannot tell without awaiting (a remote tier), or chose not to.
    Unknown,
}

impl Probe {
    /// Classifies what a tier found at `now`: fresh, stale, or (absent or expired) a miss.
    #[inline]
    #[must_use]
    pub fn found(value: Option<CacheValue>, now: crate::Timestamp) -> Self {
        match value {
            Some(value) if value.is_fresh(now) => Probe::Fresh(value),
            Some(value) if !value.is_expired(now) => Probe::Stale(value),
            _ => Probe::Miss,
        }
    }

    /// The value of a hit, fresh or stale.
    #[must_use]
    pub fn value(&self) -> Option<&CacheValue> {
        match self {
            Probe::Fresh(value) | Probe::Stale(value) => Some(value),
            Probe::Miss | Probe::Unknown => None,
        }
    }

    /// The value of a hit, fresh or stale, consuming the answer.
    #[must_use]
    pub fn into_value(self) -> Option<CacheValue> {
        match self {
            Probe::Fresh(value) | Probe::Stale(value) => Some(value),
            Probe::Miss | Probe::Unknown => None,
        }
    }
}

/// A cache tier: an in-process cache, a shared cache, object storage, or a composition of
/// tiers.
///
/// The trait is object-safe: `Arc<dyn Backend>` is itself a `Backend` (see [`SharedBackend`]),
/// so stacks can be assembled from configuration at run time.
///
/// # Contract
///
/// * `get` returns `Ok(Some(v))` on a hit and `Ok(None)` on a miss. It **never** returns a
///   value whose `expires_at` has passed by the tier's clock; a stale (but unexpired) value is
///   returned as is, and the caller decides. A missing entry is a miss, not an error.
/// * `set` stores the value with its timestamps unchanged, replacing any previous value; a tier
///   with physical expiry sets it from `expires_at`. After `Ok(())`, a `get` of the same key on
///   this tier returns this value (or a later one) until it expires or is evicted.
/// * `set_if_newer` is `set` unless the tier holds a value of the key whose `created_at` is
///   later than the new value's, decided atomically: no write of another process or node can
///   land between the comparison and the store. An equal `created_at` replaces; an expired or
///   undecodable stored value is replaced. Refills and every other copy of a value from one
///   tier into another use it, so a copy never replaces a newer value whoever wrote it.
/// * `delete` removes the key; deleting an absent key is `Ok(())`.
/// * `clear` removes every key this tier holds for this cache (its namespace or prefix), and
///   nothing else.
/// * Bad input (an unacceptable key or value) is a typed error, never a panic.
/// * An in-process tier answers with [`TierFuture::ready`] so that a hit allocates nothing and
///   never awaits; a remote tier bounds every operation in time.
///
/// ```
/// use std::sync::Arc;
/// use tierkit_core::{Backend, SharedBackend};
///
/// fn erase<B: Backend>(tier: B) -> SharedBackend {
///     Arc::new(tier)
/// }
/// # let _ = erase::<SharedBackend>;
/// ```
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name of the kind of tier (`moka`, `redis`, `s3`), used in errors, spans and
    /// metrics. Compositions combine their tiers' labels.
    fn label(&self) -> &str;

    /// Answers a read without awaiting, when the tier can.
    ///
    /// In-process tiers answer a hit ([`Probe::Fresh`], [`Probe::Stale`]) or [`Probe::Miss`] exactly as [`Backend::get`]
    /// would (implement `get` on top of `probe` so the two cannot disagree); compositions
    /// forward their first tier's fresh hits. The default, [`Probe::Unknown`], is always
    /// correct, only slower: the caller then awaits `get`. A probe has the same effects on the
    /// tier as a `get` (recency, hit counters) and never blocks on I/O.
    fn probe(&self, key: &CacheKey) -> Probe {
        let _ = key;
        Probe::Unknown
    }

    /// Reads `key`.
    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a>;

    /// Stores `value` under `key`.
    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a>;

    /// Stores `value` unless the tier holds a value of `key` with a later `created_at`; the
    /// comparison and the store are one atomic step of the tier.
    ///
    /// A stored value with an equal `created_at` is replaced (the same value copied twice, or
    /// a rewrite of it, ends the same), and so is an expired or undecodable one. An already
    /// expired `value` removes the stored value under the same condition. Whether the value
    /// was stored or skipped, the answer is `Ok(())`: skipping is the success of a copy that
    /// lost to a newer write. Implement it without a default: a tier that cannot compare
    /// atomically documents the race it leaves.
    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a>;

    /// Removes `key`.
    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a>;

    /// Removes every key this tier holds for this cache.
    fn clear(&self) -> WriteFuture<'_>;

    /// Tells the tier where it sits in a stack; called by compositions before their first
    /// operation. Leaves may ignore it (the default); compositions use it to label their own
    /// tiers' spans and metrics with full paths and pass it on.
    fn bind(&self, path: &TierPath) {
        let _ = path;
    }
}

/// A type-erased tier, for stacks built at run time.
pub type SharedBackend = Arc<dyn Backend>;

macro_rules! forward_backend {
    ($($ty:ty),*) => {$(
        impl<B: Backend + ?Sized> Backend for $ty {
            #[inline]
            fn label(&self) -> &str {
                (**self).label()
            }

            #[inline]
            fn probe(&self, key: &CacheKey) -> Probe {
                (**self).probe(key)
            }

            #[inline]
            fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
                (**self).get(key)
            }

            #[inline]
            fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
                (**self).set(key, value)
            }

            #[inline]
            fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
                (**self).set_if_newer(key, value)
            }

            #[inline]
            fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
                (**self).delete(key)
            }

            #[inline]
            fn clear(&self) -> WriteFuture<'_> {
                (**self).clear()
            }

            #[inline]
            fn bind(&self, path: &TierPath) {
                (**self).bind(path);
            }
        }
    )*};
}

forward_backend!(Arc<B>, Box<B>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_future_answers_once_then_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut fut: WriteFuture<'_> = TierFuture::ready(Ok(()));
            assert!((&mut fut).await.is_ok());
            let again = (&mut fut).await;
            assert!(matches!(again, Err(BackendError::Tier { .. })));
        });
    }

    #[test]
    fn into_ready_hands_back_pending() {
        let fut: WriteFuture<'_> = TierFuture::pending(async { Ok(()) });
        let back = fut.into_ready().expect_err("pending stays pending");
        assert!(!back.is_ready());
        let ready: WriteFuture<'_> = TierFuture::ready(Ok(()));
        assert!(ready.into_ready().is_ok());
    }

    #[test]
    fn paths_nest() {
        let root = TierPath::root();
        assert_eq!(root.to_string(), "root");
        assert_eq!(root.child(1).as_str(), "l1");
        assert_eq!(root.child(2).child(2).child(1).to_string(), "l2.l2.l1");
    }
}
