//! The builder of [`S3Backend`], and the SDK settings the tier applies to its client.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, ResponseChecksumValidation};
use tierkit_core::{Clock, Offload, envelope, redact};

use crate::backend::{Parts, S3Backend};
use crate::error::{Context, Failure, S3Error, describe_place};
use crate::keys::{Prefix, S3_MAX_OBJECT_KEY};

/// Builds an [`S3Backend`]; start with [`S3Backend::builder`] (an SDK client you configured) or
/// [`S3Backend::compatible`] (an S3-compatible endpoint with static credentials).
///
/// Every setter consumes the builder and returns it, and says its default;
/// [`build`](S3BackendBuilder::build) is the only exit. Nothing here panics: out-of-range
/// settings are reported by `build` as [`S3Error::InvalidConfig`] or
/// [`S3Error::InvalidPrefix`].
///
/// ```
/// use std::time::Duration;
/// use tierkit_s3::S3Backend;
///
/// let builder = S3Backend::compatible("http://127.0.0.1:9000", "us-east-1", "AKID", "s3cret", "cache")
///     .prefix("shop/")
///     .operation_timeout(Duration::from_secs(2))
///     .max_object_bytes(8 << 20)
///     .label("l3-s3");
/// // Credentials never show in `Debug`.
/// assert!(!format!("{builder:?}").contains("s3cret"));
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct S3BackendBuilder {
    client: Client,
    bucket: String,
    endpoint: Option<String>,
    prefix: String,
    max_plain_object_key: usize,
    operation_timeout: Duration,
    max_object_bytes: usize,
    max_attempts: u32,
    clock: Clock,
    label: Arc<str>,
    offload: Option<Arc<dyn Offload>>,
    check_bucket: bool,
}

impl fmt::Debug for S3BackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BackendBuilder")
            .field("bucket", &self.bucket)
            .field("place", &self.place())
            .field("prefix", &self.prefix)
            .field("max_plain_object_key", &self.max_plain_object_key)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_object_bytes", &self.max_object_bytes)
            .field("max_attempts", &self.max_attempts)
            .field("clock", &self.clock)
            .field("label", &self.label)
            .field("offload", &self.offload)
            .field("check_bucket", &self.check_bucket)
            .finish_non_exhaustive()
    }
}

impl S3BackendBuilder {
    pub(crate) fn new(client: Client, bucket: String, endpoint: Option<String>) -> Self {
        S3BackendBuilder {
            client,
            bucket,
            endpoint,
            prefix: S3Backend::DEFAULT_PREFIX.to_owned(),
            max_plain_object_key: S3Backend::DEFAULT_MAX_PLAIN_OBJECT_KEY,
            operation_timeout: S3Backend::DEFAULT_OPERATION_TIMEOUT,
            max_object_bytes: S3Backend::DEFAULT_MAX_OBJECT_BYTES,
            max_attempts: S3Backend::DEFAULT_MAX_ATTEMPTS,
            clock: Clock::System,
            label: Arc::from("s3"),
            offload: None,
            check_bucket: false,
        }
    }

    /// A client for an S3-compatible endpoint: path-style addressing, static credentials, the
    /// SDK's latest behavior version. No environment, profile or instance metadata is read.
    pub(crate) fn compatible(
        endpoint_url: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        bucket: &str,
    ) -> Self {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(Region::new(region.to_owned()))
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "tierkit-s3-static",
            ))
            .force_path_style(true)
            .build();
        Self::new(
            Client::from_conf(config),
            bucket.to_owned(),
            Some(endpoint_url.to_owned()),
        )
    }

    fn place(&self) -> String {
        describe_place(
            self.endpoint.as_deref(),
            self.client.config().region().map(Region::as_ref),
        )
    }

    /// The key prefix: every object the tier writes is under `prefix` + `.tk/`, the tier's own
    /// directory, and [`clear`](tierkit_core::Backend::clear) deletes exactly the objects
    /// there. A `/` is appended when it does not end with one (`shop` stores under
    /// `shop/.tk/`). Tiers sharing a bucket may use any distinct prefixes, nested ones
    /// included: `a/` and `a/b/` never share an object, and `clear` of `a/` leaves `a/b/`
    /// alone.
    ///
    /// It must not be empty (an empty prefix would make `clear` empty the bucket), start with
    /// `/`, contain empty, `.`, `..` or `.tk` segments or control characters, or be longer
    /// than 512 bytes; `build` rejects such a prefix with [`S3Error::InvalidPrefix`].
    ///
    /// Default: [`S3Backend::DEFAULT_PREFIX`] (`tierkit/`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The longest object key kept in the readable, escaped form (`prefix` + `k/` + the key
    /// escaped + `.tkv`); a key whose object key would be longer is stored under the SHA-256
    /// of the key (`prefix` + `h/` + 64 hex digits + `.tkv`). See [`S3Backend`], "Object keys".
    ///
    /// `0` hashes every key, so that object names reveal nothing about the keys. Lower it for
    /// servers with shorter limits than S3's 1,024 bytes (the in-process test server of
    /// tierkit, over s3s-fs, fails on object keys over about 160 bytes). At most 1,024; `build`
    /// rejects a larger value with [`S3Error::InvalidConfig`].
    ///
    /// Changing it changes where keys are stored: objects written under the former layout are
    /// no longer found (misses), until the lifecycle rule or `clear` removes them.
    ///
    /// Default: [`S3Backend::DEFAULT_MAX_PLAIN_OBJECT_KEY`] (900 bytes).
    pub fn max_plain_object_key(mut self, bytes: usize) -> Self {
        self.max_plain_object_key = bytes;
        self
    }

    /// The time bound of every call to S3: `get` (the request and reading the whole body),
    /// `set`, `delete`, and each step (one list page, one batch delete) of `clear`. Past it, an
    /// operation fails with [`BackendError::Timeout`](tierkit_core::BackendError::Timeout),
    /// which is transient.
    ///
    /// The bound is enforced twice: as the SDK's operation timeout (retries included; the
    /// connect timeout is lowered to it when the client's is longer), and around each call by
    /// the tier itself, which also covers reading the body of a `GetObject`.
    ///
    /// Default: [`S3Backend::DEFAULT_OPERATION_TIMEOUT`] (5 s). Must not be zero; a value above
    /// [`S3Backend::MAX_OPERATION_TIMEOUT`] (one day), up to `Duration::MAX`, is lowered to it.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The largest payload `set` accepts, in bytes. A larger one is rejected with
    /// [`ErrorKind::InvalidValue`](tierkit_core::ErrorKind::InvalidValue) and nothing is
    /// written (the key keeps whatever it held). The stored object is its envelope: the
    /// payload, the key (echoed) and 39 bytes.
    ///
    /// `get` refuses to read an object larger than the largest envelope this limit allows (a
    /// counted miss, reason `too_large`), so set the same limit on every tier sharing a
    /// prefix. Values above the envelope's own limit (4 GiB - 1) are clamped to it; a single
    /// `PutObject` also caps objects at 5 GiB.
    ///
    /// Default: [`S3Backend::DEFAULT_MAX_OBJECT_BYTES`] (64 MiB).
    pub fn max_object_bytes(mut self, max: usize) -> Self {
        self.max_object_bytes = max;
        self
    }

    /// How many attempts the SDK makes per call, in its `standard` retry mode: retries only
    /// for transient failures (connection errors, timeouts of one attempt, throttling, `5xx`),
    /// never for `403` or `404`, after a backoff from 100 ms, and all within the
    /// [operation timeout](Self::operation_timeout). `1` disables retries.
    ///
    /// Default: [`S3Backend::DEFAULT_MAX_ATTEMPTS`] (2). Must not be zero.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The clock that decides whether an object read has expired, and whether a value being
    /// written already has.
    ///
    /// Default: [`Clock::System`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The tier's label, used in errors (and by compositions in spans and metrics).
    ///
    /// Default: `"s3"`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Arc::from(label);
        self
    }

    /// Where the tier deletes expired objects it reads: with an offload, a `get` that finds an
    /// expired object answers a miss at once and deletes the object in the background (a
    /// `DeleteObject` conditional on the ETag it read, so a newer object written meanwhile
    /// stays, on servers that support conditional deletes). Best effort: a refused or failed
    /// delete is counted in [`S3Stats`](crate::S3Stats) and otherwise ignored.
    ///
    /// Default: none; expired objects are misses, removed by the bucket's lifecycle rule (see
    /// [`S3Backend`], "Expiry and lifecycle rules") or overwritten by the next `set`.
    pub fn offload(mut self, offload: impl Offload) -> Self {
        self.offload = Some(Arc::new(offload));
        self
    }

    /// Whether `build` checks the bucket with a `HeadBucket` request, failing with
    /// [`S3Error::NoSuchBucket`] when it does not exist and [`S3Error::PermissionDenied`] when
    /// the credentials are refused, instead of at the first operation. `HeadBucket` needs the
    /// `s3:ListBucket` permission.
    ///
    /// Default: `false` (`build` makes no request).
    pub fn check_bucket(mut self, check: bool) -> Self {
        self.check_bucket = check;
        self
    }

    /// Builds the tier.
    ///
    /// The tier calls S3 through a client of its own, made from the given client's
    /// configuration (the same HTTP client, credentials, region and endpoint) with the tier's
    /// [operation timeout](Self::operation_timeout) and [retry settings](Self::max_attempts),
    /// and with the SDK's response checksum validation off (`WhenRequired`: the tier never
    /// requires it): the envelope's own CRC-32 covers every byte read, and a mismatch is a
    /// counted miss rather than an error. Uploads keep the SDK's request checksums, which S3
    /// verifies. The given client is not changed.
    ///
    /// # Errors
    ///
    /// * [`S3Error::InvalidPrefix`], [`S3Error::InvalidConfig`] (a zero timeout or attempt
    ///   count, an empty bucket name, `max_plain_object_key` over 1,024): before any request.
    /// * With [`check_bucket`](Self::check_bucket): [`S3Error::NoSuchBucket`],
    ///   [`S3Error::PermissionDenied`], [`S3Error::Unreachable`], [`S3Error::Timeout`],
    ///   [`S3Error::Service`].
    ///
    /// Messages name the bucket and the endpoint or region, never credentials.
    pub async fn build(self) -> Result<S3Backend, S3Error> {
        let prefix = Prefix::new(&self.prefix)?.with_plain_limit(self.max_plain_object_key);
        if self.max_plain_object_key > S3_MAX_OBJECT_KEY {
            return Err(invalid_config(
                "max_plain_object_key must be at most 1024 bytes, S3's limit on object keys",
            ));
        }
        if self.bucket.is_empty() {
            return Err(invalid_config("the bucket name is empty"));
        }
        if self.operation_timeout.is_zero() {
            return Err(invalid_config("operation_timeout must not be zero"));
        }
        if self.max_attempts == 0 {
            return Err(invalid_config("max_attempts must not be zero"));
        }
        if self.client.config().region().is_none() {
            return Err(invalid_config(
                "the client has no region; S3 needs one to route and sign requests (S3-compatible \
                 servers usually accept us-east-1)",
            ));
        }
        if let Some(endpoint) = &self.endpoint
            && let Some(problem) = endpoint_problem(endpoint)
        {
            return Err(S3Error::InvalidConfig {
                reason: format!("the endpoint {} {problem}", redact::url(endpoint)),
            });
        }
        let place = self.place();
        let timeout = self.operation_timeout.min(S3Backend::MAX_OPERATION_TIMEOUT);
        let client = tier_client(&self.client, timeout, self.max_attempts);
        let context = Context {
            label: self.label,
            bucket: Arc::from(self.bucket.as_str()),
            place: Arc::from(place.as_str()),
            timeout,
        };
        if self.check_bucket {
            check_bucket(&client, &context).await?;
        }
        Ok(S3Backend::from_parts(Parts {
            client,
            context,
            prefix,
            clock: self.clock,
            max_object_bytes: self.max_object_bytes.min(envelope::MAX_PAYLOAD),
            max_attempts: self.max_attempts,
            offload: self.offload,
        }))
    }
}

fn invalid_config(reason: &str) -> S3Error {
    S3Error::InvalidConfig {
        reason: reason.to_owned(),
    }
}

/// Why `url` is not an endpoint the tier uses, if it is not: it must be `http://` or
/// `https://` with a host, without whitespace, and without user-info, query or fragment (S3
/// takes none; they could only carry credentials, which the SDK would then show in its own
/// errors and logs).
fn endpoint_problem(url: &str) -> Option<&'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Some("is not an http:// or https:// URL with a host");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("is not an http:// or https:// URL with a host")
    } else if authority.contains('@') {
        Some(
            "carries user-info (`user:password@`); give the credentials to the client (the \
             access and secret keys of `S3Backend::compatible`)",
        )
    } else if url.contains(['?', '#']) {
        Some("has a query or a fragment, which an S3 endpoint does not take")
    } else {
        None
    }
}

/// The initial backoff of the SDK's retries.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The tier's own client: `client`'s configuration with the tier's timeouts and retries, and
/// without response checksum validation (the envelope's CRC-32 covers every byte read, and a
/// mismatch is then a counted miss instead of a broken body).
fn tier_client(client: &Client, timeout: Duration, max_attempts: u32) -> Client {
    let config = client.config();
    let current = config
        .timeout_config()
        .cloned()
        .unwrap_or_else(TimeoutConfig::disabled);
    let mut timeouts = current.to_builder().operation_timeout(timeout);
    if current.connect_timeout().is_none_or(|t| t > timeout) {
        timeouts = timeouts.connect_timeout(timeout);
    }
    let retry = RetryConfig::standard()
        .with_max_attempts(max_attempts)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(timeout);
    Client::from_conf(
        config
            .to_builder()
            .timeout_config(timeouts.build())
            .retry_config(retry)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build(),
    )
}

/// `HeadBucket`, bounded by the operation timeout.
async fn check_bucket(client: &Client, context: &Context) -> Result<(), S3Error> {
    let request = client.head_bucket().bucket(&*context.bucket).send();
    let failure = match tokio::time::timeout(context.timeout, request).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(err)) => context.failure(err),
        Err(_elapsed) => Failure::Timeout,
    };
    Err(match failure {
        Failure::Timeout => S3Error::Timeout {
            bucket: context.bucket.to_string(),
            place: context.place.to_string(),
            after: context.timeout,
        },
        // `HEAD` answers have no body, hence no error code: a 404 is the bucket's absence.
        Failure::Error(S3Error::Service {
            status: Some(404),
            source: Some(source),
            ..
        }) => S3Error::NoSuchBucket {
            bucket: context.bucket.to_string(),
            place: context.place.to_string(),
            source,
        },
        Failure::Error(err) => err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> S3BackendBuilder {
        S3BackendBuilder::compatible("http://127.0.0.1:9", "us-east-1", "AKID", "SECRET", "b")
    }

    #[test]
    fn defaults() {
        let builder = builder();
        assert_eq!(builder.prefix, "tierkit/");
        assert_eq!(builder.max_plain_object_key, 900);
        assert_eq!(builder.operation_timeout, Duration::from_secs(5));
        assert_eq!(builder.max_object_bytes, 64 << 20);
        assert_eq!(builder.max_attempts, 2);
        assert_eq!(&*builder.label, "s3");
        assert!(builder.offload.is_none());
        assert!(!builder.check_bucket);
        assert_eq!(
            builder.place(),
            "endpoint http://127.0.0.1:9, region us-east-1"
        );
    }

    #[test]
    fn the_tier_client_has_the_tier_timeouts_and_retries() {
        let original = builder().client;
        let client = tier_client(&original, Duration::from_millis(1500), 3);
        let timeouts = client.config().timeout_config().expect("timeouts");
        assert_eq!(
            timeouts.operation_timeout(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            timeouts.connect_timeout(),
            Some(Duration::from_millis(1500))
        );
        let retry = client.config().retry_config().expect("retries");
        assert_eq!(retry.max_attempts(), 3);
        assert_eq!(retry.initial_backoff(), INITIAL_BACKOFF);
        assert_eq!(
            client.config().response_checksum_validation(),
            Some(&ResponseChecksumValidation::WhenRequired)
        );
        // Everything else is the original's.
        assert_eq!(
            client.config().region().map(Region::as_ref),
            Some("us-east-1")
        );
        assert_eq!(
            original
                .config()
                .timeout_config()
                .and_then(TimeoutConfig::operation_timeout),
            None,
            "the given client is unchanged"
        );

        // A shorter connect timeout of the client's is kept.
        let short = Client::from_conf(
            original
                .config()
                .to_builder()
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_millis(100))
                        .build(),
                )
                .build(),
        );
        let client = tier_client(&short, Duration::from_secs(5), 2);
        let timeouts = client.config().timeout_config().expect("timeouts");
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_millis(100)));
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn an_unusable_endpoint_or_region_is_a_configuration_error() {
        use tierkit_core::{Backend, CacheKey, ErrorKind};
        for endpoint in [
            "not a url",
            "ftp://h",
            "http://",
            "http://h /x",
            "http://u:pw@h:9000",
            "https://h/?X-Amz-Security-Token=t",
            "https://h/#x",
        ] {
            let err = S3BackendBuilder::compatible(endpoint, "us-east-1", "a", "s", "b")
                .build()
                .await
                .expect_err("refused");
            assert!(
                matches!(err, S3Error::InvalidConfig { .. }),
                "{endpoint}: {err:?}"
            );
        }
        assert_eq!(endpoint_problem("https://s3.eu-west-1.amazonaws.com"), None);
        assert_eq!(endpoint_problem("http://127.0.0.1:9000/"), None);
        assert_eq!(endpoint_problem("http://127.0.0.1:9000/path"), None);

        let no_region = Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .build(),
        );
        let err = S3BackendBuilder::new(no_region, "b".into(), None)
            .build()
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("no region"), "{err}");

        // An endpoint the SDK cannot resolve at request time is a permanent `Unsupported`
        // error (a `ResolveEndpointError` in the SDK's error chain), not a connection failure.
        let unresolvable = Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url("not a url")
                .credentials_provider(Credentials::new("a", "s", None, None, "test"))
                .build(),
        );
        let tier = S3BackendBuilder::new(unresolvable, "b".into(), None)
            .build()
            .await
            .expect("no request at build");
        let err = tier
            .get(&CacheKey::new("k").unwrap())
            .await
            .expect_err("no usable endpoint");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err:?}");
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn invalid_settings_are_refused_before_any_request() {
        let cases = [
            builder().operation_timeout(Duration::ZERO),
            builder().max_attempts(0),
            builder().max_plain_object_key(1_025),
            S3BackendBuilder::compatible("http://127.0.0.1:9", "us-east-1", "a", "s", ""),
        ];
        for builder in cases {
            let err = builder.build().await.expect_err("refused");
            assert!(matches!(err, S3Error::InvalidConfig { .. }), "{err:?}");
        }
        for prefix in ["", "/", "a//b", "../x"] {
            let err = builder().prefix(prefix).build().await.expect_err("refused");
            assert!(matches!(err, S3Error::InvalidPrefix { .. }), "{err:?}");
        }
    }
}
