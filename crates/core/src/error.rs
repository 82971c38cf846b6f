//! The error every tier operation returns.
//!
//! [`BackendError`] is cheap to clone (sources are kept behind an [`Arc`]), so a single failure
//! can be handed to every caller waiting on the same operation. Each error has a [`kind`]
//! callers can act on and a [transient] flag that says whether retrying may help.
//!
//! [`kind`]: BackendError::kind
//! [transient]: BackendError::is_transient

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A shared, type-erased error source: cheap to clone, so one failure can reach many callers.
///
/// It dereferences to the original error, which is also what
/// [`source()`](std::error::Error::source) of a [`BackendError`] returns, so
/// `err.source().and_then(|s| s.downcast_ref::<YourError>())` finds it.
#[derive(Clone)]
pub struct ErrorSource(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl ErrorSource {
    /// Wraps `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ErrorSource(Arc::new(error))
    }

    /// Whether two sources are the same shared error.
    #[must_use]
    pub fn ptr_eq(a: &ErrorSource, b: &ErrorSource) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl std::ops::Deref for ErrorSource {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ErrorSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

/// `Result` with [`BackendError`] as the default error.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// The operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// A read.
    Get,
    /// A write.
    Set,
    /// A removal of one key.
    Delete,
    /// A removal of every key the tier holds for this cache.
    Clear,
    /// Establishing the tier's connection (building a remote tier).
    Connect,
}

impl Op {
    /// A stable lower-case name, suitable as a metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Clear => "clear",
            Op::Connect => "connect",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The tier could not be reached, or the connection broke.
    Connection,
    /// The operation did not finish within its time bound.
    Timeout,
    /// The key was rejected (empty, too long, or unacceptable to the tier).
    InvalidKey,
    /// The value was rejected (too large, inconsistent timestamps).
    InvalidValue,
    /// Stored bytes could not be decoded.
    Corrupt,
    /// The tier refused the request for lack of permission or credentials.
    PermissionDenied,
    /// The tier or its configuration cannot serve this request.
    Unsupported,
    /// A failure inside the tier or the library.
    Internal,
}

impl ErrorKind {
    /// A stable lower-case name, suitable as a metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidKeyReason {
    /// The key has no bytes.
    Empty,
    /// The key is longer than allowed.
    TooLong {
        /// Length of the rejected key, in bytes.
        len: usize,
        /// The maximum accepted length, in bytes.
        max: usize,
    },
}

impl fmt::Display for InvalidKeyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidKeyReason::Empty => f.write_str("the key is empty"),
            InvalidKeyReason::TooLong { len, max } => {
                write!(
                    f,
                    "the key is {len} bytes long, more than the maximum of {max}"
                )
            }
        }
    }
}

/// The error of every tier operation.
///
/// Errors raised by a tier name it by its label (`tier`) and say which operation failed. The
/// [`Display`](fmt::Display) form is one line and does not repeat the source; walk
/// [`source()`](std::error::Error::source) for the chain.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{BackendError, ErrorKind, Op};
///
/// let err = BackendError::timeout("redis", Op::Get, Duration::from_millis(250));
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// assert!(err.is_transient());
/// assert_eq!(err.to_string(), "redis: get timed out after 250ms");
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The tier could not be reached, or the connection broke. Transient.
    #[error("{tier}: {op} failed: connection error")]
    Connection {
        /// Label of the tier.
        tier: Arc<str>,
        /// The operation.
        op: Op,
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },

    /// The operation did not finish within `after`. Transient.
    #[error("{tier}: {op} timed out after {after:?}")]
    Timeout {
        /// Label of the tier.
        tier: Arc<str>,
        /// The operation.
        op: Op,
        /// The time bound that was exceeded.
        after: Duration,
    },

    /// The key was rejected. Permanent.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why.
        reason: InvalidKeyReason,
    },

    /// The value was rejected by a tier or at construction. Permanent.
    #[error("{tier}: invalid value: {reason}")]
    InvalidValue {
        /// Label of the tier, or `value` when raised while building a value.
        tier: Arc<str>,
        /// What is wrong with it.
        reason: Arc<str>,
    },

    /// Stored bytes could not be decoded. Permanent for these bytes.
    ///
    /// Tiers normally count corrupt entries as misses; this error is for callers that asked to
    /// see them.
    #[error("{tier}: {op}: corrupt data: {reason}")]
    Corrupt {
        /// Label of the tier.
        tier: Arc<str>,
        /// The operation.
        op: Op,
        /// What could not be decoded.
        reason: Arc<str>,
    },

    /// Any other failure of a tier, classified by `kind`.
    #[error("{tier}: {op} failed ({kind})")]
    Tier {
        /// Label of the tier.
        tier: Arc<str>,
        /// The operation.
        op: Op,
        /// The classification.
        kind: ErrorKind,
        /// Whether retrying may succeed.
        transient: bool,
        /// The underlying error.
        #[source]
        source: ErrorSource,
    },

    /// A failure that combines the failures of several tiers, raised by a composition of tiers.
    /// The source is the composing crate's own error (for `tierkit-policy`, a
    /// `CompositionError`, which names each tier's failure), reachable with
    /// [`BackendError::composite_source`] or by walking the chain.
    #[error("a composition of tiers failed ({kind})")]
    Composite {
        /// The classification, derived from the combined failures.
        kind: ErrorKind,
        /// Whether retrying may succeed.
        transient: bool,
        /// The composing crate's error.
        #[source]
        source: ErrorSource,
    },
}

impl BackendError {
    /// A connection failure of `tier` during `op`.
    pub fn connection(
        tier: impl Into<Arc<str>>,
        op: Op,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Connection {
            tier: tier.into(),
            op,
            source: ErrorSource::new(source),
        }
    }

    /// A timeout of `tier` during `op` after `after`.
    pub fn timeout(tier: impl Into<Arc<str>>, op: Op, after: Duration) -> Self {
        BackendError::Timeout {
            tier: tier.into(),
            op,
            after,
        }
    }

    /// A rejected key.
    #[must_use]
    pub fn invalid_key(reason: InvalidKeyReason) -> Self {
        BackendError::InvalidKey { reason }
    }

    /// A rejected value.
    pub fn invalid_value(tier: impl Into<Arc<str>>, reason: impl Into<Arc<str>>) -> Self {
        BackendError::InvalidValue {
            tier: tier.into(),
            reason: reason.into(),
        }
    }

    /// Stored bytes that could not be decoded.
    pub fn corrupt(tier: impl Into<Arc<str>>, op: Op, reason: impl Into<Arc<str>>) -> Self {
        BackendError::Corrupt {
            tier: tier.into(),
            op,
            reason: reason.into(),
        }
    }

    /// Any other tier failure.
    pub fn tier(
        tier: impl Into<Arc<str>>,
        op: Op,
        kind: ErrorKind,
        transient: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Tier {
            tier: tier.into(),
            op,
            kind,
            transient,
            source: ErrorSource::new(source),
        }
    }

    /// An internal, permanent failure described by a message.
    pub fn internal(tier: impl Into<Arc<str>>, op: Op, message: impl Into<String>) -> Self {
        Self::tier(
            tier,
            op,
            ErrorKind::Internal,
            false,
            Message(message.into()),
        )
    }

    /// A failure combining several tiers' failures; `source` is the composing crate's error.
    pub fn composite(
        kind: ErrorKind,
        transient: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Composite {
            kind,
            transient,
            source: ErrorSource::new(source),
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Connection { .. } => ErrorKind::Connection,
            BackendError::Timeout { .. } => ErrorKind::Timeout,
            BackendError::InvalidKey { .. } => ErrorKind::InvalidKey,
            BackendError::InvalidValue { .. } => ErrorKind::InvalidValue,
            BackendError::Corrupt { .. } => ErrorKind::Corrupt,
            BackendError::Tier { kind, .. } | BackendError::Composite { kind, .. } => *kind,
        }
    }

    /// Whether retrying the same operation may succeed: true for connection failures and
    /// timeouts, false for invalid input and corrupt data, as classified for the others.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Connection { .. } | BackendError::Timeout { .. } => true,
            BackendError::InvalidKey { .. }
            | BackendError::InvalidValue { .. }
            | BackendError::Corrupt { .. } => false,
            BackendError::Tier { transient, .. } | BackendError::Composite { transient, .. } => {
                *transient
            }
        }
    }

    /// The label of the tier that raised the error, when a single tier did.
    #[must_use]
    pub fn tier_label(&self) -> Option<&str> {
        match self {
            BackendError::Connection { tier, .. }
            | BackendError::Timeout { tier, .. }
            | BackendError::InvalidValue { tier, .. }
            | BackendError::Corrupt { tier, .. }
            | BackendError::Tier { tier, .. } => Some(tier),
            BackendError::InvalidKey { .. } | BackendError::Composite { .. } => None,
        }
    }

    /// The composing crate's error of a [`BackendError::Composite`], downcast to `E`.
    #[must_use]
    pub fn composite_source<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            BackendError::Composite { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A plain message used as an error source.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn kinds_and_transience() {
        let conn = BackendError::connection("redis", Op::Set, Inner);
        assert_eq!(conn.kind(), ErrorKind::Connection);
        assert!(conn.is_transient());
        assert_eq!(conn.tier_label(), Some("redis"));
        let source = conn.source().expect("connection errors keep their source");
        assert!(source.downcast_ref::<Inner>().is_some());

        let key = BackendError::invalid_key(InvalidKeyReason::Empty);
        assert_eq!(key.kind(), ErrorKind::InvalidKey);
        assert!(!key.is_transient());
        assert_eq!(key.to_string(), "invalid key: the key is empty");

        let internal = BackendError::internal("moka", Op::Get, "boom");
        assert_eq!(internal.kind(), ErrorKind::Internal);
        assert!(!internal.is_transient());
        assert_eq!(internal.to_string(), "moka: get failed (internal)");
        assert_eq!(
            internal.source().map(ToString::to_string).as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn composite_source_downcasts() {
        let err = BackendError::composite(ErrorKind::Connection, true, Inner);
        assert!(err.composite_source::<Inner>().is_some());
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("inner")
        );
        assert!(err.is_transient());
        assert_eq!(err.tier_label(), None);
    }

    /// The messages of `error` and of every error of its source chain, outermost first.
    fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(error), |&e| e.source())
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_report_chain_prints_each_message_once() {
        let cases = [
            (
                BackendError::connection("redis", Op::Get, Inner),
                ["redis: get failed: connection error", "inner"],
            ),
            (
                BackendError::tier("s3", Op::Set, ErrorKind::PermissionDenied, false, Inner),
                ["s3: set failed (permission_denied)", "inner"],
            ),
            (
                BackendError::composite(ErrorKind::Connection, true, Inner),
                ["a composition of tiers failed (connection)", "inner"],
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(chain(&err), expected);
        }
    }

    #[test]
    fn errors_are_cheap_to_clone_and_share_their_source() {
        let err = BackendError::connection("redis", Op::Get, Inner);
        let copy = err.clone();
        match (&err, &copy) {
            (
                BackendError::Connection { source: a, .. },
                BackendError::Connection { source: b, .. },
            ) => assert!(ErrorSource::ptr_eq(a, b)),
            _ => unreachable!("clone keeps the variant"),
        }
    }
}
