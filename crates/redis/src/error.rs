//! Errors: [`RedisError`] for building a tier, and the mapping of fred's errors to
//! [`BackendError`] kinds and transience for every operation.

use std::sync::Arc;
use std::time::Duration;

use fred::error::{Error as FredError, ErrorKind as FredKind};
use tierkit_core::{BackendError, ErrorKind, Op};

/// Why a [`RedisBackend`](crate::RedisBackend) could not be built.
///
/// Like every error of tierkit it has a [`kind`](RedisError::kind) and a
/// [transience](RedisError::is_transient), and converts into a [`BackendError`] with `?`.
/// Messages name the servers as `host:port` and never contain a password, token or secret: URLs
/// are shown through [`redact::url`](tierkit_core::redact::url), their user-info and secret
/// query parameters replaced by `***`.
///
/// ```
/// use tierkit_core::ErrorKind;
/// use tierkit_redis::{RedisBackend, RedisError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let err = RedisBackend::builder("redis://127.0.0.1:6379")
///     .namespace("{shop}")
///     .build()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, RedisError::InvalidNamespace { .. }));
/// assert_eq!(err.kind(), ErrorKind::Unsupported);
/// assert!(!err.is_transient());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The namespace cannot be used as a key prefix. Permanent.
    #[error("invalid redis namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The rejected namespace.
        namespace: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A setting of the builder is out of range. Permanent.
    #[error("invalid redis tier configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// The URL could not be parsed. Permanent.
    #[error("invalid redis URL {url}")]
    InvalidUrl {
        /// The URL, through [`redact::url`](tierkit_core::redact::url): its user-info and
        /// secret query parameters replaced by `***`.
        url: String,
        /// fred's parse error.
        #[source]
        source: FredError,
    },

    /// The URL asks for TLS (`rediss://`, `valkeys://`...) but this build has no TLS support.
    /// Permanent: enable the `tls` feature of `tierkit-redis`.
    #[error(
        "the redis URL {url} asks for TLS, but tierkit-redis was built without its `tls` feature"
    )]
    TlsNotEnabled {
        /// The URL, through [`redact::url`](tierkit_core::redact::url): its user-info and
        /// secret query parameters replaced by `***`.
        url: String,
    },

    /// Connecting failed: the servers refused or dropped the connection, rejected the
    /// credentials, or are not what the configuration says (a cluster URL for a standalone
    /// server, for instance). The [`kind`](RedisError::kind) says which.
    #[error("could not connect to redis at {servers} ({kind})")]
    Connect {
        /// The servers tried, as `host:port`, comma-separated.
        servers: String,
        /// The classification of `source`.
        kind: ErrorKind,
        /// Whether trying again later may succeed.
        transient: bool,
        /// fred's error.
        #[source]
        source: FredError,
    },

    /// The connection was not established within the connect timeout. Transient.
    #[error("could not connect to redis at {servers} within {after:?}")]
    ConnectTimeout {
        /// The servers tried, as `host:port`, comma-separated.
        servers: String,
        /// The connect timeout.
        after: Duration,
    },
}

impl RedisError {
    /// What went wrong, in the terms of [`ErrorKind`]: `Unsupported` for configuration errors,
    /// `Connection` for unreachable servers (including the connect timeout),
    /// `PermissionDenied` for rejected credentials.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            RedisError::InvalidNamespace { .. }
            | RedisError::InvalidConfig { .. }
            | RedisError::InvalidUrl { .. }
            | RedisError::TlsNotEnabled { .. } => ErrorKind::Unsupported,
            RedisError::Connect { kind, .. } => *kind,
            RedisError::ConnectTimeout { .. } => ErrorKind::Connection,
        }
    }

    /// Whether building again later may succeed: true for unreachable servers and timeouts,
    /// false for configuration and credential errors.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            RedisError::Connect { transient, .. } => *transient,
            RedisError::ConnectTimeout { .. } => true,
            _ => false,
        }
    }
}

/// A build failure as a [`BackendError`] of the tier `redis`.
///
/// A build failure is reported as a failed [`Op::Connect`]. The [`RedisError`] is kept as the
/// source, so its message (with the servers) and its kind are not lost.
impl From<RedisError> for BackendError {
    fn from(err: RedisError) -> Self {
        let (kind, transient) = (err.kind(), err.is_transient());
        if kind == ErrorKind::Connection && transient {
            BackendError::connection("redis", Op::Connect, err)
        } else {
            BackendError::tier("redis", Op::Connect, kind, transient, err)
        }
    }
}

/// Classifies one of fred's errors: the kind a caller can act on, and whether retrying may
/// succeed.
///
/// fred reports most server errors as `Unknown` with the server's message as details, so the
/// message's first word (Redis' error code) refines the classification.
pub(crate) fn classify(err: &FredError) -> (ErrorKind, bool) {
    match err.kind() {
        FredKind::IO | FredKind::Canceled => (ErrorKind::Connection, true),
        FredKind::Timeout => (ErrorKind::Timeout, true),
        FredKind::Auth => (ErrorKind::PermissionDenied, false),
        FredKind::Config | FredKind::Url => (ErrorKind::Unsupported, false),
        FredKind::InvalidArgument | FredKind::InvalidCommand | FredKind::Parse => {
            (ErrorKind::Internal, false)
        }
        // The cluster changed (MOVED/ASK beyond the redirection limit, CLUSTERDOWN), no server
        // owns the command, the sentinels could not name a primary, or too many commands are
        // queued: the tier cannot serve the request right now.
        FredKind::Cluster | FredKind::Routing | FredKind::Sentinel | FredKind::Backpressure => {
            (ErrorKind::Connection, true)
        }
        // An unexpected frame: fred drops the connection and reconnects.
        FredKind::Protocol => (ErrorKind::Internal, true),
        FredKind::Unknown => classify_server_error(err.details()),
        // `NotFound` (a nil where a value was required: not expected from our commands), and
        // kinds that exist only under some of fred's features (`Tls`, `Replica`, both failures
        // of a connection), matched by name so that this compiles whatever features another
        // crate enables on fred.
        other => match other.to_str() {
            "TLS Error" | "Replica" => (ErrorKind::Connection, true),
            _ => (ErrorKind::Internal, false),
        },
    }
}

/// Classifies a server error by its code, the first word of the message.
fn classify_server_error(details: &str) -> (ErrorKind, bool) {
    let code = details.split_whitespace().next().unwrap_or("");
    match code {
        "NOPERM" | "NOAUTH" | "WRONGPASS" => (ErrorKind::PermissionDenied, false),
        // `ERR AUTH <password> called without any password configured...`, `ERR invalid
        // password` (Redis before 6): credentials the server does not accept.
        "ERR" if details.contains("AUTH") || details.contains("password") => {
            (ErrorKind::PermissionDenied, false)
        }
        // The server is starting, busy with a script, failing over, or read-only for now.
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN"
        | "NOREPLICAS" => (ErrorKind::Connection, true),
        // `maxmemory` reached under `noeviction`: retrying soon will not help.
        "OOM" => (ErrorKind::Internal, false),
        _ if details.starts_with("Client is not initialized")
            || details.starts_with("Failed to send command to router") =>
        {
            // The client was shut down (`quit`): nothing will reconnect it.
            (ErrorKind::Connection, false)
        }
        _ => (ErrorKind::Internal, false),
    }
}

/// Maps one of fred's errors, raised during `op`, to a [`BackendError`] of the tier `tier`,
/// keeping fred's error as the source (timeouts excepted: they carry the bound instead).
pub(crate) fn map_error(tier: &Arc<str>, op: Op, after: Duration, err: FredError) -> BackendError {
    match classify(&err) {
        (ErrorKind::Timeout, _) => BackendError::timeout(Arc::clone(tier), op, after),
        (ErrorKind::Connection, true) => BackendError::connection(Arc::clone(tier), op, err),
        (kind, transient) => BackendError::tier(Arc::clone(tier), op, kind, transient, err),
    }
}

/// Whether the URL's scheme asks for TLS (`rediss`, `valkeys`, and their `-cluster` and
/// `-sentinel` forms), as fred decides it.
pub(crate) fn url_wants_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn fred_kinds_map_to_kinds_and_transience() {
        let cases = [
            (FredKind::IO, "x", ErrorKind::Connection, true),
            (FredKind::Canceled, "x", ErrorKind::Connection, true),
            (FredKind::Timeout, "x", ErrorKind::Timeout, true),
            (
                FredKind::Auth,
                "WRONGPASS",
                ErrorKind::PermissionDenied,
                false,
            ),
            (FredKind::Config, "x", ErrorKind::Unsupported, false),
            (FredKind::Url, "x", ErrorKind::Unsupported, false),
            (
                FredKind::InvalidArgument,
                "WRONGTYPE",
                ErrorKind::Internal,
                false,
            ),
            (FredKind::InvalidCommand, "x", ErrorKind::Internal, false),
            (
                FredKind::Cluster,
                "CLUSTERDOWN",
                ErrorKind::Connection,
                true,
            ),
            (FredKind::Backpressure, "x", ErrorKind::Connection, true),
            (FredKind::Routing, "x", ErrorKind::Connection, true),
            (FredKind::Protocol, "x", ErrorKind::Internal, true),
            (
                FredKind::Unknown,
                "NOPERM this user has no permissions",
                ErrorKind::PermissionDenied,
                false,
            ),
            (
                FredKind::Unknown,
                "LOADING Redis is loading",
                ErrorKind::Connection,
                true,
            ),
            (
                FredKind::Unknown,
                "BUSY Redis is busy running a script",
                ErrorKind::Connection,
                true,
            ),
            (
                FredKind::Unknown,
                "OOM command not allowed",
                ErrorKind::Internal,
                false,
            ),
            (
                FredKind::Unknown,
                "Client is not initialized.",
                ErrorKind::Connection,
                false,
            ),
            (
                FredKind::Unknown,
                "ERR something else",
                ErrorKind::Internal,
                false,
            ),
            (
                FredKind::Unknown,
                "ERR AUTH <password> called without any password configured for the default user.",
                ErrorKind::PermissionDenied,
                false,
            ),
        ];
        for (kind, details, expected, transient) in cases {
            let err = FredError::new(kind.clone(), details);
            assert_eq!(classify(&err), (expected, transient), "{kind:?} {details}");
        }
    }

    #[test]
    fn mapped_errors_keep_fred_as_source() {
        let tier: Arc<str> = Arc::from("redis");
        let err = map_error(
            &tier,
            Op::Set,
            Duration::from_secs(1),
            FredError::new(FredKind::IO, "connection reset"),
        );
        assert!(matches!(err, BackendError::Connection { op: Op::Set, .. }));
        let source = err.source().expect("a source");
        assert!(source.downcast_ref::<FredError>().is_some());

        let err = map_error(
            &tier,
            Op::Get,
            Duration::from_millis(250),
            FredError::new(FredKind::Timeout, "Request timed out."),
        );
        assert_eq!(err.to_string(), "redis: get timed out after 250ms");

        let err = map_error(
            &tier,
            Op::Clear,
            Duration::from_secs(1),
            FredError::new(FredKind::Auth, "NOAUTH"),
        );
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(!err.is_transient());
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<FredError>())
                .is_some()
        );
    }

    #[test]
    fn tls_schemes() {
        for url in [
            "rediss://h",
            "rediss-cluster://h:1",
            "valkeys://h",
            "rediss-sentinel://h",
        ] {
            assert!(url_wants_tls(url), "{url}");
        }
        for url in [
            "redis://h",
            "redis-cluster://h:1",
            "valkey://h",
            "redis-sentinel://h",
        ] {
            assert!(!url_wants_tls(url), "{url}");
        }
    }

    #[test]
    fn build_errors_convert_with_their_kind() {
        let err: BackendError = RedisError::ConnectTimeout {
            servers: "127.0.0.1:1".into(),
            after: Duration::from_secs(1),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(err.is_transient());
        let err: BackendError = RedisError::InvalidConfig { reason: "x".into() }.into();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_transient());
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<RedisError>())
                .is_some()
        );
    }
}
