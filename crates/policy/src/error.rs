//! The error of a composition of tiers.

use tierkit_core::{BackendError, ErrorKind};

/// An error raised by a composition of two tiers.
///
/// A composition is itself a [`Backend`](tierkit_core::Backend), so its operations return
/// [`BackendError`]. A failure of a single tier is returned as that tier's own
/// `BackendError`, unchanged. A failure that involves both tiers is a `CompositionError` carried
/// inside [`BackendError::Composite`]; reach it with [`CompositionError::from_backend_error`].
///
/// ```
/// use tierkit_core::{BackendError, ErrorKind, Op};
/// use tierkit_policy::CompositionError;
///
/// let l1 = BackendError::internal("moka", Op::Set, "full");
/// let l2 = BackendError::connection("redis", Op::Set, std::io::Error::other("refused"));
/// let err: BackendError = CompositionError::BothLayersFailed { l1, l2 }.into();
///
/// match CompositionError::from_backend_error(&err) {
///     Some(CompositionError::BothLayersFailed { l1, l2 }) => {
///         assert_eq!(l1.tier_label(), Some("moka"));
///         assert_eq!(l2.kind(), ErrorKind::Connection);
///     }
///     _ => unreachable!(),
/// }
/// assert!(err.is_transient()); // one cause is transient: a retry may help
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompositionError {
    /// Both tiers failed the operation. Both causes are kept.
    #[error("both tiers failed: l1: {l1}; l2: {l2}")]
    BothLayersFailed {
        /// The first tier's error.
        l1: BackendError,
        /// The second tier's error.
        l2: BackendError,
    },

    /// A policy name from configuration that names no policy.
    #[error("unknown {family} policy {name:?}; expected one of: {expected}")]
    UnknownPolicy {
        /// `read`, `write` or `refill`.
        family: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
}

impl CompositionError {
    /// The `CompositionError` inside a [`BackendError::Composite`], if that is what `error` is.
    #[must_use]
    pub fn from_backend_error(error: &BackendError) -> Option<&CompositionError> {
        error.composite_source::<CompositionError>()
    }

    /// The classification: the common kind when both causes agree, else the second tier's
    /// (usually the remote one, whose failure says more about the system's state).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            CompositionError::BothLayersFailed { l1, l2 } => {
                if l1.kind() == l2.kind() {
                    l1.kind()
                } else {
                    l2.kind()
                }
            }
            CompositionError::UnknownPolicy { .. } => ErrorKind::Unsupported,
        }
    }

    /// Transient when at least one cause is: a retry may then succeed on that tier.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            CompositionError::BothLayersFailed { l1, l2 } => l1.is_transient() || l2.is_transient(),
            CompositionError::UnknownPolicy { .. } => false,
        }
    }
}

impl From<CompositionError> for BackendError {
    fn from(error: CompositionError) -> Self {
        BackendError::composite(error.kind(), error.is_transient(), error)
    }
}
