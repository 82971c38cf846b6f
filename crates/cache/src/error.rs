//! [`CacheError`]: every failure of a [`Cache`](crate::Cache) call, cheap to clone.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tierkit_core::BackendError;

use crate::frame::FrameError;
use crate::hit::Source;

/// The error a loader returned, shared by every caller of the flight that ran it.
///
/// Cloning shares one allocation, so a failure reaching a thousand waiters is one error
/// ([`LoaderError::ptr_eq`]). The original type is recovered with
/// [`downcast_ref`](LoaderError::downcast_ref), whatever error type each caller's loader had.
///
/// It is one link of the error chain: its [`Display`](fmt::Display) says only that the loader
/// failed, and [`source()`](StdError::source) is the loader's own error, so a report that walks
/// the chain prints the loader's message once and a downcast along the chain finds its type:
///
/// ```
/// use std::error::Error;
///
/// use tierkit_cache::{CacheError, LoaderError};
///
/// #[derive(Debug)]
/// struct OriginDown;
///
/// impl std::fmt::Display for OriginDown {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("the origin is down")
///     }
/// }
///
/// impl Error for OriginDown {}
///
/// let err = CacheError::Loader(LoaderError::new(OriginDown));
/// let chain: Vec<String> = std::iter::successors(Some(&err as &dyn Error), |&e| e.source())
///     .map(ToString::to_string)
///     .collect();
/// assert_eq!(
///     chain,
///     [
///         "the cache could not load the value",
///         "the loader returned an error",
///         "the origin is down",
///     ]
/// );
/// let origin = std::iter::successors(Some(&err as &dyn Error), |&e| e.source())
///     .find_map(|e| e.downcast_ref::<OriginDown>());
/// assert!(origin.is_some());
/// ```
#[derive(Clone)]
pub struct LoaderError(Arc<dyn StdError + Send + Sync + 'static>);

impl LoaderError {
    /// Wraps a loader's error.
    pub fn new(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        LoaderError(Arc::from(error.into()))
    }

    /// The loader's error as `E`, if it is one.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// Whether two handles share the same error (the same flight's failure).
    pub fn ptr_eq(a: &LoaderError, b: &LoaderError) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The loader's own error (also the [`source()`](StdError::source) of this one).
    pub fn get(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the loader returned an error")
    }
}

impl StdError for LoaderError {
    /// The loader's own error.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Which deadline a [`CacheError::Timeout`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// The caller's hard timeout ([`FetchOptions::hard_timeout`](crate::FetchOptions::hard_timeout)),
    /// counted from the caller's own arrival. The flight may still complete in the background.
    Hard,
    /// The flight's background cap
    /// ([`FetchOptions::background_cap`](crate::FetchOptions::background_cap)): the loader was
    /// cancelled and nothing was stored.
    BackgroundCap,
    /// The flight waited its hard timeout for a loader slot (the cache-wide bound,
    /// [`CacheBuilder::max_concurrent_loads`](crate::CacheBuilder::max_concurrent_loads), was
    /// reached): the loader was never called and nothing was stored.
    LoaderSlot,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Hard => "hard timeout",
            TimeoutKind::BackgroundCap => "background cap",
            TimeoutKind::LoaderSlot => "wait for a loader slot",
        })
    }
}

/// Every failure of a [`Cache`](crate::Cache) call.
///
/// Cheap to clone (every variant holds shared data), because one flight's failure is delivered
/// to every caller waiting on it.
///
/// The [`Display`](fmt::Display) form says what failed at the level of the cache and never
/// repeats the cause: the cause (a tier's [`BackendError`], a [`FrameError`], a
/// [`CodecError`](crate::codec::CodecError), a [`LoaderError`] and the loader's own error below
/// it) is the [`source()`](StdError::source), so walk the chain to report it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The key cannot be a cache key (empty, or longer than
    /// [`CacheKey::MAX_LEN`](tierkit_core::CacheKey::MAX_LEN)). Never a silent bypass of the
    /// cache.
    #[error("invalid cache key")]
    InvalidKey(#[source] BackendError),
    /// The loader returned an error. Shared by every waiter of the flight; nothing was stored.
    #[error("the cache could not load the value")]
    Loader(#[source] LoaderError),
    /// The loader panicked (while building its future or while running it). The panic was
    /// caught in the flight: no caller's task unwinds. Nothing was stored.
    #[error("the loader panicked: {message}")]
    LoaderPanicked {
        /// The panic's message, when it was a string.
        message: Arc<str>,
    },
    /// No result within a deadline.
    #[error("no result within the {kind} of {after:?}")]
    Timeout {
        /// Which deadline.
        kind: TimeoutKind,
        /// Its length.
        after: Duration,
    },
    /// The flight ended without publishing a result: its task was aborted (runtime shutdown)
    /// or failed outside the loader. The key is free again; the next call starts a new flight.
    #[error("the flight for this key was aborted before it produced a result")]
    FlightAborted,
    /// The value is in no tier and the call may not run a loader
    /// ([`FetchOptions::no_loader`](crate::FetchOptions::no_loader)).
    #[error("not found in any tier, and the call may not load it")]
    NotFound,
    /// A remote tier failed while [`strict_tiers`](crate::FetchOptions::strict_tiers) was on
    /// (otherwise a tier failure is a counted miss), or a write the caller waited for failed.
    #[error("the {tier} tier failed")]
    Tier {
        /// The tier.
        tier: Source,
        /// Its error.
        #[source]
        source: BackendError,
    },
    /// An entry could not be decoded while [`strict_decode`](crate::FetchOptions::strict_decode)
    /// was on (otherwise it is a counted miss).
    #[error("the {tier} tier holds an entry that cannot be decoded")]
    Decode {
        /// The tier.
        tier: Source,
        /// Why.
        #[source]
        source: FrameError,
    },
    /// A value given to `set` could not be encoded for the remote tiers (it is in L1 only).
    #[error("the value could not be encoded")]
    Encode(#[source] crate::codec::CodecError),
    /// The background executor refused the work (it is full or shutting down).
    #[error("the background executor refused the write: {0}")]
    Rejected(Arc<str>),
}

impl CacheError {
    /// The loader's error, if this is one.
    pub fn loader_error(&self) -> Option<&LoaderError> {
        match self {
            CacheError::Loader(error) => Some(error),
            _ => None,
        }
    }

    /// Whether retrying the call later may succeed (timeouts, aborted flights, transient tier
    /// failures, a full executor); loader errors and panics count as retryable, since the next
    /// call runs the loader again.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::InvalidKey(_)
            | CacheError::NotFound
            | CacheError::Decode { .. }
            | CacheError::Encode(_) => false,
            CacheError::Tier { source, .. } => source.is_transient(),
            _ => true,
        }
    }
}
