//! [`S3ServerError`], the one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while starting, driving or inspecting an [`S3Server`].
/// Each message says what is wrong and, where it helps, what to do about it.
///
/// [`S3Server`]: crate::S3Server
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3ServerError {
    /// The server was started (or restarted) outside a tokio runtime.
    #[error(
        "the S3 server must be started from inside a tokio runtime (for instance in a \
         #[tokio::test] or under Runtime::block_on): it runs as tasks of that runtime"
    )]
    NoRuntime,

    /// An operating-system call failed.
    #[error("{action} failed")]
    Io {
        /// What was being done, for instance `creating directory /x/y`.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// s3s-fs refused the data directory.
    #[error("s3s-fs cannot serve the data directory {dir}: {detail}")]
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// What s3s-fs reported.
        detail: String,
    },

    /// The port of a server being restarted was taken by another socket while it was stopped.
    #[error(
        "cannot restart the S3 server on 127.0.0.1:{port}: another socket took the port while \
         the server was stopped (see `ss -ltnp sport = :{port}`). Start a new server instead of \
         restarting this one"
    )]
    PortInUse {
        /// The port.
        port: u16,
    },

    /// A bucket name that S3 (and so s3s) would refuse.
    #[error(
        "invalid bucket name {name:?}: {reason} (S3 bucket names have 3 to 63 characters: \
         lowercase letters, digits, `-` and `.`, beginning and ending with a letter or digit)"
    )]
    InvalidBucketName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An object key that cannot be mapped to a file of the data directory.
    #[error(
        "invalid object key {key:?} for a file-system backed bucket: {reason} (keys must be \
         non-empty, relative, without `.` or `..` segments or empty segments, and not end with `/`)"
    )]
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A helper that writes or reads objects directly was given a bucket that does not exist.
    #[error(
        "bucket {bucket:?} does not exist in {dir}; create it first with \
         S3Server::create_bucket or S3ServerOptions::bucket"
    )]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The data directory of the server.
        dir: PathBuf,
    },

    /// The use of the S3 endpoint of the environment could not be recorded for the count of
    /// `cargo xtask` ([`tierkit_services::record_use`]).
    #[error("recording a test's use of the S3 endpoint failed")]
    RecordUse {
        /// Why.
        #[source]
        source: tierkit_services::ServiceError,
    },

    /// An environment variable of [`crate::env`] is set but unusable.
    #[error("environment variable {var} is {problem}; {advice}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        problem: String,
        /// What to do about it.
        advice: &'static str,
    },
}

impl S3ServerError {
    /// An [`S3ServerError::Io`] error for `action`.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::S3ServerError;
    use tierkit_services::error_chain;

    #[test]
    fn a_report_chain_prints_each_message_once() {
        let err = S3ServerError::io(
            "creating directory /x",
            std::io::Error::other("no space left"),
        );
        assert_eq!(
            error_chain(&err),
            "creating directory /x failed: no space left"
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let err = S3ServerError::PortInUse { port: 4242 };
        assert!(err.to_string().contains("127.0.0.1:4242"));
        assert!(err.to_string().contains("Start a new server"));
        let err = S3ServerError::io(
            "creating directory /x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(err.to_string(), "creating directory /x failed");
        assert!(
            S3ServerError::NoRuntime
                .to_string()
                .contains("tokio runtime")
        );
    }
}
