//! Errors: [`S3Error`] for building a tier and as the source of failed operations, and the
//! mapping of the SDK's errors to [`BackendError`] kinds and transience.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tierkit_core::{BackendError, ErrorKind, ErrorSource, Op, redact};

/// Why an [`S3Backend`](crate::S3Backend) could not be built, or why S3 refused an operation.
///
/// Build errors are returned by [`build`](crate::S3BackendBuilder::build) as they are;
/// operation errors are the [`source`](std::error::Error::source) of the [`BackendError`] an
/// operation returns (except timeouts, which are [`BackendError::Timeout`]), and keep the SDK's
/// error as their own source. Like every error of tierkit each has a
/// [`kind`](S3Error::kind) and a [transience](S3Error::is_transient).
///
/// Messages name the bucket and where it was looked for (the endpoint URL, or the region), and
/// never contain credentials.
///
/// ```
/// use tierkit_core::ErrorKind;
/// use tierkit_s3::{S3Backend, S3Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let err = S3Backend::compatible("http://127.0.0.1:9000", "us-east-1", "key", "secret", "cache")
///     .prefix("/absolute")
///     .build()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, S3Error::InvalidPrefix { .. }));
/// assert_eq!(err.kind(), ErrorKind::Unsupported);
/// assert!(!err.is_transient());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The prefix cannot be used. Permanent.
    #[error("invalid S3 key prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A setting of the builder is out of range. Permanent.
    #[error("invalid S3 tier configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// The bucket does not exist (S3 answered `404 NoSuchBucket`, or `404` to `HeadBucket`).
    /// Permanent: create the bucket, or fix its name, region or endpoint.
    #[error("the S3 bucket {bucket:?} does not exist ({place})")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// Where it was looked for: the endpoint URL, or the region.
        place: String,
        /// The SDK's error.
        #[source]
        source: ErrorSource,
    },

    /// S3 refused the request: `403` (`AccessDenied`, `InvalidAccessKeyId`,
    /// `SignatureDoesNotMatch`, expired or invalid tokens, a clock too far off). Permanent: fix
    /// the credentials or the bucket's policy. The SDK does not retry these.
    #[error(
        "S3 refused access to the bucket {bucket:?} ({place}): {status} {code}{}; check the \
         credentials, the region and the policy (the tier needs s3:GetObject, s3:PutObject, \
         s3:DeleteObject and s3:ListBucket on its prefix)",
        message_suffix(.message)
    )]
    PermissionDenied {
        /// The bucket.
        bucket: String,
        /// Where the bucket was looked for: the endpoint URL, or the region.
        place: String,
        /// The HTTP status, when there was a response (`403`, or `401` from some servers).
        status: u16,
        /// S3's error code, or `-` when the response had none (answers to `HEAD`).
        code: String,
        /// S3's error message, if any.
        message: Option<String>,
        /// The SDK's error.
        #[source]
        source: ErrorSource,
    },

    /// S3 answered with another error. The [`kind`](S3Error::kind) says which: throttling
    /// (`429`, `SlowDown`) and server errors (`5xx`) are transient
    /// [`Connection`](ErrorKind::Connection) errors; a wrong region or endpoint (`301`,
    /// `AuthorizationHeaderMalformed`) is a permanent [`Unsupported`](ErrorKind::Unsupported);
    /// anything else is a permanent [`Internal`](ErrorKind::Internal).
    #[error(
        "S3 answered {} {code} for the bucket {bucket:?} ({place}){}",
        status_text(*.status),
        message_suffix(.message)
    )]
    Service {
        /// The bucket.
        bucket: String,
        /// Where the bucket was looked for: the endpoint URL, or the region.
        place: String,
        /// The HTTP status (`None` for the failure of one key of a batch delete).
        status: Option<u16>,
        /// S3's error code, or `-` when the response had none.
        code: String,
        /// S3's error message, if any.
        message: Option<String>,
        /// The classification.
        kind: ErrorKind,
        /// Whether retrying may succeed.
        transient: bool,
        /// The SDK's error, if the failure came from one.
        #[source]
        source: Option<ErrorSource>,
    },

    /// The request did not reach S3, or no complete answer came back (connection refused or
    /// reset, DNS, TLS, a truncated body). Transient (and already retried by the SDK).
    #[error("could not reach S3 for the bucket {bucket:?} ({place})")]
    Unreachable {
        /// The bucket.
        bucket: String,
        /// Where the bucket was looked for: the endpoint URL, or the region.
        place: String,
        /// The SDK's (or the body stream's) error.
        #[source]
        source: ErrorSource,
    },

    /// The request could not be made at all (an invalid endpoint URL, a credentials provider
    /// that failed, a request the SDK refused to build). Permanent.
    #[error("the S3 request for the bucket {bucket:?} ({place}) could not be made")]
    Request {
        /// The bucket.
        bucket: String,
        /// Where the bucket was looked for: the endpoint URL, or the region.
        place: String,
        /// The SDK's error.
        #[source]
        source: ErrorSource,
    },

    /// S3 did not answer the bucket check within the operation timeout. Transient.
    #[error("S3 did not answer within {after:?} for the bucket {bucket:?} ({place})")]
    Timeout {
        /// The bucket.
        bucket: String,
        /// Where the bucket was looked for: the endpoint URL, or the region.
        place: String,
        /// The operation timeout.
        after: Duration,
    },
}

fn message_suffix(message: &Option<String>) -> String {
    match message {
        Some(message) if !message.is_empty() => {
            // Server messages are short; cap them anyway, on a character boundary.
            let cut = (0..=message.len().min(300))
                .rev()
                .find(|&i| message.is_char_boundary(i))
                .unwrap_or(0);
            let ellipsis = if cut < message.len() { "..." } else { "" };
            format!(": {}{ellipsis}", &message[..cut])
        }
        _ => String::new(),
    }
}

fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "an error".to_owned(), |s| s.to_string())
}

impl S3Error {
    /// What went wrong, in the terms of [`ErrorKind`]: `Unsupported` for configuration errors
    /// and a missing bucket, `PermissionDenied` for refused credentials, `Connection` for an
    /// unreachable, throttling or failing server, `Timeout`, or as classified for other
    /// answers.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            S3Error::InvalidPrefix { .. }
            | S3Error::InvalidConfig { .. }
            | S3Error::NoSuchBucket { .. }
            | S3Error::Request { .. } => ErrorKind::Unsupported,
            S3Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            S3Error::Service { kind, .. } => *kind,
            S3Error::Unreachable { .. } => ErrorKind::Connection,
            S3Error::Timeout { .. } => ErrorKind::Timeout,
        }
    }

    /// Whether trying again later may succeed: true for an unreachable, throttling or failing
    /// server and for timeouts, false for configuration, a missing bucket and refused
    /// credentials.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Service { transient, .. } => *transient,
            S3Error::Unreachable { .. } | S3Error::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// A build failure as a [`BackendError`] of the tier `s3`.
///
/// A build failure is reported as a failed [`Op::Connect`]. The [`S3Error`] is kept as the
/// source, so its message (with the bucket) and its kind are not lost.
impl From<S3Error> for BackendError {
    fn from(err: S3Error) -> Self {
        match (err.kind(), err.is_transient()) {
            (ErrorKind::Timeout, _) => {
                let after = match &err {
                    S3Error::Timeout { after, .. } => *after,
                    _ => Duration::ZERO,
                };
                BackendError::timeout("s3", Op::Connect, after)
            }
            (ErrorKind::Connection, true) => BackendError::connection("s3", Op::Connect, err),
            (kind, transient) => BackendError::tier("s3", Op::Connect, kind, transient, err),
        }
    }
}

/// How an error answer of S3 is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `NoSuchBucket`.
    NoSuchBucket,
    /// Refused credentials or policy.
    Denied,
    /// Anything else, with its kind and transience.
    Other(ErrorKind, bool),
}

/// S3 error codes that mean the credentials or the policy refused the request.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "Forbidden",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "InvalidToken",
    "NotSignedUp",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "UnauthorizedAccess",
];

/// S3 error codes that mean "slow down": retry later.
const THROTTLED: &[&str] = &[
    "BandwidthLimitExceeded",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
];

/// S3 error codes that mean the server failed: retry later.
const UNAVAILABLE: &[&str] = &["InternalError", "ServiceUnavailable", "ServerBusy"];

/// S3 error codes that mean the tier is pointed at the wrong region or endpoint.
const MISPLACED: &[&str] = &[
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "InvalidBucketName",
    "PermanentRedirect",
    "Redirect",
    "TemporaryRedirect",
];

/// Classifies an error answer by its code (when there is one) and its HTTP status.
pub(crate) fn classify_answer(status: Option<u16>, code: Option<&str>) -> Answer {
    let code = code.unwrap_or("");
    let status = status.unwrap_or(0);
    if code == "NoSuchBucket" {
        Answer::NoSuchBucket
    } else if DENIED.contains(&code) || (code.is_empty() && matches!(status, 401 | 403)) {
        Answer::Denied
    } else if THROTTLED.contains(&code)
        || status == 429
        || UNAVAILABLE.contains(&code)
        || (500..600).contains(&status)
    {
        // Slow down, or the server failed: retry later.
        Answer::Other(ErrorKind::Connection, true)
    } else if code == "RequestTimeout" {
        // The server gave up waiting for the request's body.
        Answer::Other(ErrorKind::Timeout, true)
    } else if code == "EntityTooLarge" {
        Answer::Other(ErrorKind::InvalidValue, false)
    } else if code == "KeyTooLongError" {
        Answer::Other(ErrorKind::InvalidKey, false)
    } else if MISPLACED.contains(&code) || matches!(status, 301 | 307) {
        Answer::Other(ErrorKind::Unsupported, false)
    } else if matches!(status, 401 | 403) {
        Answer::Denied
    } else {
        Answer::Other(ErrorKind::Internal, false)
    }
}

/// What an operation's error is reported against: the tier, the bucket, where the bucket is.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub(crate) label: Arc<str>,
    pub(crate) bucket: Arc<str>,
    pub(crate) place: Arc<str>,
    pub(crate) timeout: Duration,
}

/// A failure of one SDK call, classified, before it becomes a [`BackendError`] (operations) or
/// an [`S3Error`] (the bucket check).
pub(crate) enum Failure {
    /// The SDK or the tier gave up waiting.
    Timeout,
    /// Everything else, as an [`S3Error`].
    Error(S3Error),
}

impl Context {
    /// Classifies one of the SDK's errors.
    pub(crate) fn failure<E>(&self, err: SdkError<E>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let bucket = self.bucket.to_string();
        let place = self.place.to_string();
        match &err {
            SdkError::TimeoutError(_) => return Failure::Timeout,
            SdkError::DispatchFailure(dispatch) if dispatch.is_timeout() => {
                return Failure::Timeout;
            }
            SdkError::DispatchFailure(dispatch)
                if dispatch.is_user() || resolving_the_endpoint_failed(&err) =>
            {
                return Failure::Error(S3Error::Request {
                    bucket,
                    place,
                    source: ErrorSource::new(err),
                });
            }
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                return Failure::Error(S3Error::Unreachable {
                    bucket,
                    place,
                    source: ErrorSource::new(err),
                });
            }
            SdkError::ConstructionFailure(_) => {
                return Failure::Error(S3Error::Request {
                    bucket,
                    place,
                    source: ErrorSource::new(err),
                });
            }
            // `SdkError` is non-exhaustive: service errors and anything newer are classified
            // by their answer below.
            _ => {}
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let message = err.message().map(str::to_owned);
        let answer = classify_answer(status, code.as_deref());
        let code = code.unwrap_or_else(|| "-".to_owned());
        Failure::Error(match answer {
            Answer::NoSuchBucket => S3Error::NoSuchBucket {
                bucket,
                place,
                source: ErrorSource::new(err),
            },
            Answer::Denied => S3Error::PermissionDenied {
                bucket,
                place,
                status: status.unwrap_or(403),
                code,
                message,
                source: ErrorSource::new(err),
            },
            Answer::Other(kind, transient) => S3Error::Service {
                bucket,
                place,
                status,
                code,
                message,
                kind,
                transient,
                source: Some(ErrorSource::new(err)),
            },
        })
    }

    /// Maps one of the SDK's errors, raised during `op`, to a [`BackendError`] of the tier.
    pub(crate) fn map<E>(&self, op: Op, err: SdkError<E>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match self.failure(err) {
            Failure::Timeout => self.timeout(op),
            Failure::Error(err) => self.backend_error(op, err),
        }
    }

    /// An [`S3Error`] raised during `op` as a [`BackendError`] of the tier.
    pub(crate) fn backend_error(&self, op: Op, err: S3Error) -> BackendError {
        match (err.kind(), err.is_transient()) {
            (ErrorKind::Connection, true) if matches!(err, S3Error::Unreachable { .. }) => {
                BackendError::connection(Arc::clone(&self.label), op, err)
            }
            (kind, transient) => {
                BackendError::tier(Arc::clone(&self.label), op, kind, transient, err)
            }
        }
    }

    /// The timeout of `op`.
    pub(crate) fn timeout(&self, op: Op) -> BackendError {
        BackendError::timeout(Arc::clone(&self.label), op, self.timeout)
    }

    /// A body stream that broke while reading (a transient connection failure).
    pub(crate) fn broken_body(
        &self,
        op: Op,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        self.backend_error(
            op,
            S3Error::Unreachable {
                bucket: self.bucket.to_string(),
                place: self.place.to_string(),
                source: ErrorSource::new(err),
            },
        )
    }
}

/// Whether the request failed before reaching the network because the SDK could not resolve
/// the endpoint (an invalid endpoint URL, no region, options that do not go together): a
/// configuration error, not a connection failure.
///
/// The SDK reports it as a dispatch failure of kind "other" whose source is a
/// `ResolveEndpointError` (of `aws-smithy-http` or `aws-smithy-runtime-api`, neither re-exported
/// by `aws-sdk-s3`), so the source chain is searched by type name, through `Debug`; a unit test
/// pins this.
fn resolving_the_endpoint_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(s) = source {
        if format!("{s:?}").starts_with("ResolveEndpointError") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Where a bucket is looked for: the endpoint URL (without credentials) or the region.
pub(crate) fn describe_place(endpoint: Option<&str>, region: Option<&str>) -> String {
    match (endpoint, region) {
        (Some(endpoint), Some(region)) => {
            format!("endpoint {}, region {region}", redact::url(endpoint))
        }
        (Some(endpoint), None) => format!("endpoint {}", redact::url(endpoint)),
        (None, Some(region)) => format!("region {region}"),
        (None, None) => "no region configured".to_owned(),
    }
}

/// A plain message used as an error source.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) String);

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

    #[test]
    fn answers_are_classified_by_code_then_status() {
        use Answer::{Denied, NoSuchBucket, Other};
        use ErrorKind::{Connection, Internal, InvalidKey, InvalidValue, Timeout, Unsupported};
        let cases: &[(Option<u16>, Option<&str>, Answer)] = &[
            (Some(404), Some("NoSuchBucket"), NoSuchBucket),
            (Some(403), Some("AccessDenied"), Denied),
            (Some(403), Some("InvalidAccessKeyId"), Denied),
            (Some(403), Some("SignatureDoesNotMatch"), Denied),
            (Some(400), Some("ExpiredToken"), Denied),
            (Some(403), Some("RequestTimeTooSkewed"), Denied),
            (Some(403), None, Denied),
            (Some(401), None, Denied),
            (Some(403), Some("SomethingNew"), Denied),
            (Some(503), Some("SlowDown"), Other(Connection, true)),
            (Some(429), None, Other(Connection, true)),
            (Some(429), Some("TooManyRequests"), Other(Connection, true)),
            (Some(500), Some("InternalError"), Other(Connection, true)),
            (Some(502), None, Other(Connection, true)),
            (
                Some(503),
                Some("ServiceUnavailable"),
                Other(Connection, true),
            ),
            (Some(400), Some("RequestTimeout"), Other(Timeout, true)),
            (
                Some(400),
                Some("EntityTooLarge"),
                Other(InvalidValue, false),
            ),
            (Some(400), Some("KeyTooLongError"), Other(InvalidKey, false)),
            (
                Some(301),
                Some("PermanentRedirect"),
                Other(Unsupported, false),
            ),
            (
                Some(400),
                Some("AuthorizationHeaderMalformed"),
                Other(Unsupported, false),
            ),
            (Some(301), None, Other(Unsupported, false)),
            (Some(404), Some("NoSuchKey"), Other(Internal, false)),
            (
                Some(412),
                Some("PreconditionFailed"),
                Other(Internal, false),
            ),
            (Some(400), Some("InvalidArgument"), Other(Internal, false)),
            (None, Some("AccessDenied"), Denied),
            (None, Some("InternalError"), Other(Connection, true)),
            (None, None, Other(Internal, false)),
        ];
        for (status, code, expected) in cases {
            assert_eq!(
                classify_answer(*status, *code),
                *expected,
                "{status:?} {code:?}"
            );
        }
    }

    fn context() -> Context {
        Context {
            label: Arc::from("s3"),
            bucket: Arc::from("cache"),
            place: Arc::from("endpoint http://127.0.0.1:9000"),
            timeout: Duration::from_millis(250),
        }
    }

    #[test]
    fn sdk_timeouts_and_dispatch_failures_are_typed() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        let ctx = context();
        let timeout: SdkError<GetObjectError> = SdkError::timeout_error(Message("slow".into()));
        let err = ctx.map(Op::Get, timeout);
        assert!(
            matches!(err, BackendError::Timeout { op: Op::Get, after, .. } if after == Duration::from_millis(250))
        );
        assert_eq!(err.to_string(), "s3: get timed out after 250ms");

        let construction: SdkError<GetObjectError> =
            SdkError::construction_failure(Message("no credentials".into()));
        let err = ctx.map(Op::Set, construction);
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_transient());
        let source = err.source().and_then(|s| s.downcast_ref::<S3Error>());
        assert!(
            matches!(source, Some(S3Error::Request { .. })),
            "{source:?}"
        );
    }

    #[test]
    fn service_errors_keep_the_bucket_and_the_sdk_error() {
        let ctx = context();
        let err = ctx.backend_error(
            Op::Get,
            S3Error::NoSuchBucket {
                bucket: "cache".into(),
                place: "endpoint http://127.0.0.1:9000".into(),
                source: ErrorSource::new(Message("404".into())),
            },
        );
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_transient());
        let s3 = err.source().and_then(|s| s.downcast_ref::<S3Error>());
        let message = s3.map(ToString::to_string).unwrap_or_default();
        assert_eq!(
            message,
            "the S3 bucket \"cache\" does not exist (endpoint http://127.0.0.1:9000)"
        );

        let denied = S3Error::PermissionDenied {
            bucket: "cache".into(),
            place: "region eu-west-1".into(),
            status: 403,
            code: "InvalidAccessKeyId".into(),
            message: Some("The AWS Access Key Id you provided does not exist.".into()),
            source: ErrorSource::new(Message("403".into())),
        };
        assert!(denied.to_string().starts_with(
            "S3 refused access to the bucket \"cache\" (region eu-west-1): 403 InvalidAccessKeyId: \
             The AWS Access Key Id you provided does not exist.; check the credentials"
        ));
        let err = ctx.backend_error(Op::Set, denied);
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(!err.is_transient());

        let unreachable = ctx.broken_body(Op::Get, Message("reset".into()));
        assert!(matches!(unreachable, BackendError::Connection { .. }));
        assert!(unreachable.is_transient());
        assert_eq!(unreachable.to_string(), "s3: get failed: connection error");
    }

    #[test]
    fn build_errors_convert_with_their_kind() {
        let err: BackendError = S3Error::Timeout {
            bucket: "b".into(),
            place: "p".into(),
            after: Duration::from_secs(1),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_transient());
        let err: BackendError = S3Error::InvalidConfig { reason: "x".into() }.into();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_transient());
        assert!(
            err.source()
                .and_then(|s| s.downcast_ref::<S3Error>())
                .is_some()
        );
        let err: BackendError = S3Error::Unreachable {
            bucket: "b".into(),
            place: "p".into(),
            source: ErrorSource::new(Message("refused".into())),
        }
        .into();
        assert!(matches!(
            err,
            BackendError::Connection {
                op: Op::Connect,
                ..
            }
        ));
    }

    #[test]
    fn places_never_show_credentials() {
        assert_eq!(
            describe_place(Some("http://user:pw@h:9000/x"), Some("us-east-1")),
            "endpoint http://***@h:9000/x, region us-east-1"
        );
        assert_eq!(
            describe_place(Some("http://h:9000"), None),
            "endpoint http://h:9000"
        );
        assert_eq!(describe_place(None, Some("eu-west-1")), "region eu-west-1");
        assert_eq!(describe_place(None, None), "no region configured");
        assert_eq!(
            describe_place(Some("user:pw@host"), None),
            "endpoint (not a URL)"
        );
        assert_eq!(
            describe_place(Some("https://h/?X-Amz-Security-Token=t0k"), None),
            "endpoint https://h/?X-Amz-Security-Token=***"
        );
    }

    #[test]
    fn long_messages_are_capped() {
        let long = Some("é".repeat(400));
        let suffix = message_suffix(&long);
        assert!(suffix.len() <= 2 + 300 + 3 && suffix.ends_with("..."));
        assert_eq!(message_suffix(&None), "");
        assert_eq!(message_suffix(&Some(String::new())), "");
    }
}
