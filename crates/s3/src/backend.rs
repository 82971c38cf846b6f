//! [`S3Backend`]: the tier itself.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, GetFuture, Offload, OffloadTask,
    Op, Result, TierFuture, WriteFuture, envelope,
};
use tracing::Instrument;

use crate::config::S3BackendBuilder;
use crate::error::{Context, Message, S3Error, classify_answer};
use crate::keys::{MAX_PLAIN_OBJECT_KEY, Prefix};
use crate::stats::{Counters, S3Stats, TOO_LARGE};

/// A tier over S3 (or any S3-compatible object store), through the AWS SDK for Rust.
///
/// # Contents
///
/// * [Building](#building): from an SDK client you configured, or an S3-compatible endpoint
/// * [Object keys](#object-keys)
/// * [Expiry and lifecycle rules](#expiry-and-lifecycle-rules)
/// * [Corrupt and foreign objects](#corrupt-and-foreign-objects)
/// * [Timeouts, retries and errors](#timeouts-retries-and-errors)
/// * [Costs](#costs)
/// * [Permissions](#permissions)
///
/// Clones share the client and the counters. The tier is remote: every operation returns a
/// pending [`TierFuture`] (one allocation, next to a network round trip), and
/// [`probe`](Backend::probe) keeps its default, [`Probe::Unknown`](tierkit_core::Probe).
///
/// # Building
///
/// From an [`aws_sdk_s3::Client`] the application configured (with `aws-config`, or by hand),
/// a bucket, and settings ([`S3BackendBuilder`] lists each with its default):
///
/// ```no_run
/// use std::time::Duration;
/// use tierkit_s3::S3Backend;
/// use tierkit_s3::aws_sdk_s3;
///
/// # async fn app_client() -> aws_sdk_s3::Client { unimplemented!() }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_s3::S3Error> {
/// // For instance `aws_sdk_s3::Client::new(&aws_config::load_from_env().await)`.
/// let client: aws_sdk_s3::Client = app_client().await;
/// let l3 = S3Backend::builder(client, "my-cache-bucket")
///     .prefix("shop/")
///     .operation_timeout(Duration::from_secs(2))
///     .check_bucket(true) // fail now, not at the first get, if the bucket is wrong
///     .build()
///     .await?;
/// assert_eq!(l3.bucket(), "my-cache-bucket");
/// # Ok(()) }
/// ```
///
/// For an S3-compatible server (MinIO, Ceph, moto, ...), [`S3Backend::compatible`] makes the
/// client: path-style addressing and static credentials, nothing read from the environment.
///
/// ```no_run
/// use tierkit_s3::S3Backend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tierkit_s3::S3Error> {
/// let l3 = S3Backend::compatible("http://10.0.0.5:9000", "us-east-1", "AKID", "secret", "cache")
///     .build()
///     .await?;
/// # drop(l3);
/// # Ok(()) }
/// ```
///
/// # Object keys
///
/// Every [`CacheKey`] maps to exactly one object key, and two cache keys never to the same
/// one ([`object_key`](Self::object_key) shows it):
///
/// * `prefix` + `.tk/k/` + the key escaped + `.tkv`: ASCII letters, digits, `-` and `_` stay as
///   they are; every other byte (of the key's UTF-8) is written `%XX` (two upper-case hex
///   digits). The escaped form is cut into `/`-separated segments of at most 200 characters
///   (never inside a `%XX`), for servers that keep objects as files. So `user:42` is
///   `tierkit/.tk/k/user%3A42.tkv` and `a/../b` is `tierkit/.tk/k/a%2F%2E%2E%2Fb.tkv`: no `/`, `.` or
///   `..` of a key ever reaches a path.
/// * When that would be longer than 900 bytes (S3 allows 1,024; see
///   [`max_plain_object_key`](S3BackendBuilder::max_plain_object_key)): `prefix` + `.tk/h/` + the
///   SHA-256 of the key's bytes in lower-case hex (64 characters) + `.tkv`.
///
/// `.tk/` is the tier's own directory, and no prefix may contain a `.tk` segment: the first
/// one ends the prefix, so no two (prefix, key) pairs share an object, and no object of a
/// nested prefix (`shop/eu/` under `shop/`) is in another tier's directory.
///
/// An escaped key never contains a `.`, so the `.tkv` ending also keeps any object key from
/// being a "directory" of another (`k/aaa.tkv`, `k/aaa/bbb.tkv`), which servers that keep
/// objects as files could not hold together.
///
/// Every object also carries its full key (the [envelope](tierkit_core::envelope)'s key
/// echo), checked on every read, so even a hash collision could never return another key's
/// value: a mismatch is a counted miss (reason `key_mismatch`).
///
/// ```
/// use tierkit_core::CacheKey;
/// use tierkit_s3::S3Backend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tier = S3Backend::compatible("http://127.0.0.1:9000", "us-east-1", "a", "s", "cache")
///     .prefix("shop")
///     .build()
///     .await?; // no request is made
/// assert_eq!(tier.prefix(), "shop/");
/// assert_eq!(tier.object_key(&CacheKey::new("user:42")?), "shop/.tk/k/user%3A42.tkv");
/// assert_eq!(tier.object_key(&CacheKey::new("a b/é")?), "shop/.tk/k/a%20b%2F%C3%A9.tkv");
/// let long = tier.object_key(&CacheKey::new("x".repeat(1000))?);
/// assert!(long.starts_with("shop/.tk/h/") && long.len() == 11 + 64 + 4);
/// # Ok(()) }
/// ```
///
/// # Expiry and lifecycle rules
///
/// S3 has no per-object TTL, so tierkit cannot have S3 remove an object when its value
/// expires. The object holds the value's `created_at`, `stale_at` and `expires_at`, and:
///
/// * `get` checks `expires_at` against the tier's [`Clock`] and answers a miss for an expired
///   object (counted in [`S3Stats::expired_reads`]); with an
///   [offload](S3BackendBuilder::offload) it also deletes the object in the background;
/// * `set` of a value that has already expired stores nothing and deletes the object, so an
///   older value cannot outlive the newer write;
/// * everything else stays in the bucket until overwritten or deleted.
///
/// [`set_if_newer`](Backend::set_if_newer) (the write of refills) reads the object, and unless
/// it holds a live value created later, writes with `If-Match` on the ETag it read
/// (`If-None-Match: *` when there was none): on Amazon S3 no other write lands between the
/// comparison and the write. A store that ignores these headers leaves that window open
/// (`docs/s3.md`, "Conditional writes").
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
/// use tierkit_s3::S3Backend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = tierkit_s3_server::S3Server::start(Default::default()).await?; // a test server
/// # let (endpoint, region, access_key, secret_key, bucket) = (
/// #     server.endpoint(), server.region(), server.access_key(), server.secret_key(), server.bucket(),
/// # );
/// let tier = S3Backend::compatible(endpoint, region, access_key, secret_key, bucket)
///     .prefix("doc-expiry/")
///     .build()
///     .await?;
/// let key = CacheKey::new("session:9")?;
/// let now = Clock::System.now();
///
/// // Fresh for 30 s, then stale (still served, the caller decides) for 5 minutes.
/// let value = CacheValue::with_ttl(&b"token"[..], now, Duration::from_secs(30))
///     .with_stale_for(Duration::from_secs(300));
/// tier.set(&key, value.clone()).await?; // the object holds the three timestamps
/// assert_eq!(tier.get(&key).await?, Some(value));
///
/// // Writing an expired value deletes the object.
/// let expired = CacheValue::with_ttl(&b"old"[..], now, Duration::ZERO);
/// tier.set(&key, expired).await?;
/// assert_eq!(tier.get(&key).await?, None);
/// # Ok(())
/// # }
/// ```
///
/// To have expired objects physically removed, give the bucket a **lifecycle rule** that
/// expires objects under the tier's prefix some days after their creation, at least the
/// longest lifetime (`expires_at - created_at`) your application gives values. S3 counts
/// lifecycle expiry in whole days from the object's last write; a value rewritten before then
/// restarts its object's count. For instance, with values living at most 3 days:
///
/// ```json
/// {
///   "Rules": [{
///     "ID": "tierkit-expiry",
///     "Filter": { "Prefix": "tierkit/" },
///     "Status": "Enabled",
///     "Expiration": { "Days": 4 },
///     "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 }
///   }]
/// }
/// ```
///
/// (`aws s3api put-bucket-lifecycle-configuration --bucket my-cache-bucket
/// --lifecycle-configuration file://rule.json`). Until the rule removes them, expired objects
/// cost storage only: they are never returned. On a versioned bucket, add
/// `NoncurrentVersionExpiration` too, or overwritten and deleted values stay as old versions.
///
/// # Corrupt and foreign objects
///
/// Objects under the prefix that are not a whole, unaltered envelope written for the key read
/// (written by another program, truncated, altered, copied from another key) are answered as
/// a **miss**, never as an error and never as another value; so is an object larger than the
/// largest envelope the tier writes (it is not even read: reason `too_large`). Each is counted
/// by reason in [`stats`](Self::stats) (`decode_errors`) and in the `metrics` counter
/// `tierkit_s3_decode_errors_total{reason}`, and traced at `debug` level with the key's length
/// and the reason (never the payload). A composition then refills the key from another tier;
/// the next `set` overwrites the object.
///
/// ```
/// use tierkit_core::{Backend, CacheKey};
/// use tierkit_s3::S3Backend;
/// use tierkit_s3::aws_sdk_s3::primitives::ByteStream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = tierkit_s3_server::S3Server::start(Default::default()).await?; // a test server
/// # let (endpoint, region, access_key, secret_key, bucket) = (
/// #     server.endpoint(), server.region(), server.access_key(), server.secret_key(), server.bucket(),
/// # );
/// let tier = S3Backend::compatible(endpoint, region, access_key, secret_key, bucket)
///     .prefix("doc-corrupt/")
///     .build()
///     .await?;
/// let key = CacheKey::new("config")?;
///
/// // Another program writes plain text under the tier's object key.
/// tier.client()
///     .put_object()
///     .bucket(tier.bucket())
///     .key(tier.object_key(&key))
///     .body(ByteStream::from_static(b"plain text written by another program"))
///     .send()
///     .await?;
///
/// assert_eq!(tier.get(&key).await?, None); // a miss, not an error
/// assert_eq!(tier.stats().decode_errors.get("bad_magic"), 1);
/// # Ok(())
/// # }
/// ```
///
/// The envelope's CRC-32 covers every byte read, so the tier's client does not ask the SDK to
/// validate response checksums (`ResponseChecksumValidation::WhenRequired`): altered bytes are
/// a counted miss, not a failed read. Uploads still carry the SDK's request checksum, which S3
/// verifies before storing.
///
/// # Timeouts, retries and errors
///
/// Every call is bounded by the [operation timeout](S3BackendBuilder::operation_timeout) (5 s
/// by default), as the SDK's operation timeout and around the call (body included), and fails
/// with a transient [`BackendError::Timeout`] past it. The SDK retries transient failures
/// once (the [attempts](S3BackendBuilder::max_attempts) are 2 by default), within that bound;
/// it never retries a `403`, so wrong credentials cost one request per operation, not a
/// storm.
///
/// Errors keep the SDK's error as the source of an [`S3Error`], itself the source of the
/// [`BackendError`]:
///
/// | S3 answers | kind | transient |
/// |---|---|---|
/// | `404 NoSuchKey` (get) | a miss, not an error | |
/// | `404 NoSuchBucket` | [`Unsupported`](ErrorKind::Unsupported) ([`S3Error::NoSuchBucket`], naming the bucket) | no |
/// | `403` (`AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`, ...) | [`PermissionDenied`](ErrorKind::PermissionDenied) | no |
/// | `429`, `503 SlowDown`, other `5xx` | [`Connection`](ErrorKind::Connection) ([`S3Error::Service`]) | yes |
/// | no answer: refused, reset, DNS, TLS, a broken body | [`Connection`](ErrorKind::Connection) ([`S3Error::Unreachable`]) | yes |
/// | no answer in time | [`Timeout`](ErrorKind::Timeout) | yes |
/// | wrong region or endpoint (`301`, `AuthorizationHeaderMalformed`) | [`Unsupported`](ErrorKind::Unsupported) | no |
/// | anything else | [`Internal`](ErrorKind::Internal) | no |
///
/// # Costs
///
/// * `get`: one `GetObject` per call, so one per read that misses the tiers above this one.
/// * `set`: one `PutObject` (a `DeleteObject` for an already expired value).
/// * `delete`: one `DeleteObject`.
/// * `clear`: one `ListObjectsV2` per 1,000 objects under `prefix.tk/`, and one `DeleteObjects`
///   per page listed (batches of at most 1,000 keys).
/// * An expired object read with an offload: one background `DeleteObject`.
///
/// Put a tier with a cheaper hit (moka, Redis) above it; a composition refills those tiers
/// from S3 with the value's timestamps unchanged, so the remaining lifetime carries over and
/// is never extended.
///
/// # Permissions
///
/// The tier needs `s3:GetObject`, `s3:PutObject` and `s3:DeleteObject` on
/// `arn:aws:s3:::BUCKET/PREFIX*`, and `s3:ListBucket` on the bucket (for `clear`, for
/// [`check_bucket`](S3BackendBuilder::check_bucket), and so that S3 answers a missing object
/// with `404`, a miss, rather than `403`, an error).
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
}

/// What `build` hands over.
pub(crate) struct Parts {
    pub(crate) client: Client,
    pub(crate) context: Context,
    pub(crate) prefix: Prefix,
    pub(crate) clock: Clock,
    pub(crate) max_object_bytes: usize,
    pub(crate) max_attempts: u32,
    pub(crate) offload: Option<Arc<dyn Offload>>,
}

struct Inner {
    client: Client,
    context: Context,
    prefix: Prefix,
    clock: Clock,
    max_object_bytes: usize,
    max_attempts: u32,
    offload: Option<Arc<dyn Offload>>,
    counters: Counters,
}

impl S3Backend {
    /// The key prefix when none is set: `tierkit/`.
    pub const DEFAULT_PREFIX: &'static str = "tierkit/";
    /// The operation timeout when none is set: 5 s.
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest operation timeout: one day. A longer one is lowered to it (the SDK turns
    /// its timeouts into float seconds, and overflows on a much longer one).
    pub const MAX_OPERATION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// The largest payload accepted when no limit is set: 64 MiB.
    pub const DEFAULT_MAX_OBJECT_BYTES: usize = 64 << 20;
    /// The SDK's attempts per call when none is set: 2 (one retry of a transient failure).
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;
    /// The most keys listed per `ListObjectsV2` page and deleted per `DeleteObjects` batch in
    /// [`clear`](Backend::clear) (S3's own limit).
    pub const CLEAR_BATCH: usize = 1_000;
    /// The longest object key kept in the escaped form when no limit is set: 900 bytes;
    /// longer ones are hashed (see [Object keys](#object-keys) and
    /// [`max_plain_object_key`](S3BackendBuilder::max_plain_object_key)).
    pub const DEFAULT_MAX_PLAIN_OBJECT_KEY: usize = MAX_PLAIN_OBJECT_KEY;

    /// A builder for a tier calling S3 through `client`, in `bucket`.
    ///
    /// The tier calls S3 through a client of its own, made in
    /// [`build`](S3BackendBuilder::build) from `client`'s configuration with the tier's
    /// timeout and retry settings; `client` itself is not changed.
    pub fn builder(client: Client, bucket: impl Into<String>) -> S3BackendBuilder {
        S3BackendBuilder::new(client, bucket.into(), None)
    }

    /// A builder for a tier on an S3-compatible endpoint (MinIO, Ceph, moto, a local test
    /// server...): a client with `endpoint_url`, `region`, static credentials and path-style
    /// addressing (`http://host:port/bucket/key`), made without reading the environment,
    /// profiles or instance metadata (no `aws-config` needed).
    ///
    /// Credentials never show in the builder's or the tier's `Debug`, nor in errors: the
    /// endpoint is shown through [`redact::url`](tierkit_core::redact::url), and `build` refuses
    /// an endpoint with user-info, a query or a fragment
    /// ([`S3Error::InvalidConfig`](crate::S3Error::InvalidConfig)).
    pub fn compatible(
        endpoint_url: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
        bucket: &str,
    ) -> S3BackendBuilder {
        S3BackendBuilder::compatible(endpoint_url, region, access_key, secret_key, bucket)
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        S3Backend {
            inner: Arc::new(Inner {
                client: parts.client,
                context: parts.context,
                prefix: parts.prefix,
                clock: parts.clock,
                max_object_bytes: parts.max_object_bytes,
                max_attempts: parts.max_attempts,
                offload: parts.offload,
                counters: Counters::new(),
            }),
        }
    }

    /// The bucket.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.inner.context.bucket
    }

    /// The key prefix, ending with `/`.
    #[must_use]
    pub fn prefix(&self) -> &str {
        self.inner.prefix.as_str()
    }

    /// The object key `key` is stored under (see [Object keys](#object-keys)).
    #[must_use]
    pub fn object_key(&self, key: &CacheKey) -> String {
        self.inner.prefix.object_key(key)
    }

    /// The client the tier calls S3 through: the given client's configuration with the tier's
    /// timeout and retry settings, and without response checksum validation (see
    /// [`S3BackendBuilder::build`]). Use it for requests of your own on the same bucket.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The operation timeout.
    #[must_use]
    pub fn operation_timeout(&self) -> Duration {
        self.inner.context.timeout
    }

    /// The largest payload `set` accepts, in bytes.
    #[must_use]
    pub fn max_object_bytes(&self) -> usize {
        self.inner.max_object_bytes
    }

    /// A snapshot of the tier's counters: undecodable objects by reason, expired reads, and the
    /// background deletes of expired objects.
    #[must_use]
    pub fn stats(&self) -> S3Stats {
        self.inner.counters.snapshot()
    }

    fn span(&self, op: Op) -> tracing::Span {
        tracing::debug_span!("tierkit.s3", op = %op, bucket = %self.inner.context.bucket)
    }
}

/// [`S3Backend::CLEAR_BATCH`] as the SDK's type.
const CLEAR_BATCH_I32: i32 = 1_000;
const _: () = assert!(CLEAR_BATCH_I32 as usize == S3Backend::CLEAR_BATCH);

/// How many times [`Backend::set_if_newer`] reads, compares and writes on condition before it
/// gives up on an object that other writers keep changing.
const CONDITIONAL_ATTEMPTS: u32 = 3;

/// What a `GetObject` found.
enum Read {
    Found { bytes: Bytes, etag: Option<String> },
    Missing,
    TooLarge { len: u64, etag: Option<String> },
}

impl Inner {
    /// Runs one call to S3, bounded by the operation timeout.
    async fn bounded<T>(&self, op: Op, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.context.timeout, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(self.context.timeout(op)),
        }
    }

    /// The largest object `get` reads for `key`: the envelope of the largest payload accepted.
    fn read_limit(&self, key: &CacheKey) -> u64 {
        let limit = self
            .max_object_bytes
            .saturating_add(envelope::HEADER_LEN + 2 + key.len());
        u64::try_from(limit).unwrap_or(u64::MAX)
    }

    async fn get(self: &Arc<Self>, key: &CacheKey) -> Result<Option<CacheValue>> {
        let object = self.prefix.object_key(key);
        let limit = self.read_limit(key);
        let read = self
            .bounded(Op::Get, self.read_object(&object, limit))
            .await?;
        let (bytes, etag) = match read {
            Read::Found { bytes, etag } => (bytes, etag),
            Read::Missing => return Ok(None),
            Read::TooLarge { len, .. } => {
                self.counters.decode_error(TOO_LARGE);
                tracing::debug!(
                    key_len = key.len(),
                    object_len = len,
                    limit,
                    reason = TOO_LARGE,
                    "an object larger than any envelope of this tier; not read, answered as a miss"
                );
                return Ok(None);
            }
        };
        match envelope::decode(&bytes, key) {
            Ok(value) if value.is_expired(self.clock.now()) => {
                self.counters.expired_read();
                self.delete_expired(object, etag);
                Ok(None)
            }
            Ok(value) => Ok(Some(value)),
            Err(malformed) => {
                self.counters.malformed(&malformed);
                tracing::debug!(
                    key_len = key.len(),
                    object_len = bytes.len(),
                    reason = malformed.reason(),
                    detail = %malformed,
                    "undecodable object in S3; answered as a miss"
                );
                Ok(None)
            }
        }
    }

    /// `GetObject`, and the whole body, refusing one longer than `limit`.
    async fn read_object(&self, object: &str, limit: u64) -> Result<Read> {
        let request = self
            .client
            .get_object()
            .bucket(&*self.context.bucket)
            .key(object);
        let output = match request.send().await {
            Ok(output) => output,
            Err(err) => {
                let missing = err
                    .as_service_error()
                    .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key)
                    || (err
                        .raw_response()
                        .is_some_and(|r| r.status().as_u16() == 404)
                        && err.code() != Some("NoSuchBucket"));
                if missing {
                    return Ok(Read::Missing);
                }
                return Err(self.context.map(Op::Get, err));
            }
        };
        let announced = output
            .content_length()
            .and_then(|len| u64::try_from(len).ok());
        let etag = output.e_tag().map(str::to_owned);
        if let Some(len) = announced
            && len > limit
        {
            return Ok(Read::TooLarge { len, etag });
        }
        let mut body = output.body;
        let mut first: Option<Bytes> = None;
        let mut rest: Option<BytesMut> = None;
        let mut read: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| self.context.broken_body(Op::Get, err))?;
            read = read.saturating_add(chunk.len() as u64);
            if read > limit {
                return Ok(Read::TooLarge { len: read, etag });
            }
            match (&mut first, &mut rest) {
                (None, _) => first = Some(chunk),
                (Some(head), None) => {
                    let capacity = announced
                        .and_then(|len| usize::try_from(len).ok())
                        .unwrap_or(head.len() + chunk.len());
                    let mut buffer = BytesMut::with_capacity(capacity);
                    buffer.extend_from_slice(head);
                    buffer.extend_from_slice(&chunk);
                    rest = Some(buffer);
                }
                (Some(_), Some(buffer)) => buffer.extend_from_slice(&chunk),
            }
        }
        let bytes = match (rest, first) {
            (Some(buffer), _) => buffer.freeze(),
            (None, Some(only)) => only,
            (None, None) => Bytes::new(),
        };
        Ok(Read::Found { bytes, etag })
    }

    /// Deletes an expired object in the background, when the tier has an offload.
    fn delete_expired(self: &Arc<Self>, object: String, etag: Option<String>) {
        let Some(offload) = &self.offload else {
            return;
        };
        let inner = Arc::clone(self);
        let span = tracing::debug_span!(
            "tierkit.s3",
            op = %Op::Delete,
            bucket = %self.context.bucket,
            background = true
        );
        let task = OffloadTask::new(
            "tierkit.s3.delete_expired",
            async move {
                let result = inner
                    .bounded(Op::Delete, inner.delete_if_unchanged(&object, etag))
                    .await;
                match &result {
                    Ok(()) => inner.counters.expired_deleted(),
                    Err(err) => {
                        inner.counters.expired_delete_failed();
                        tracing::debug!(
                            error = err as &dyn std::error::Error,
                            "the background delete of an expired object failed"
                        );
                    }
                }
                result
            }
            .instrument(span),
        );
        if let Err(rejected) = offload.spawn(task) {
            self.counters.expired_delete_failed();
            tracing::debug!(
                reason = %rejected.reason,
                "the offload refused the background delete of an expired object"
            );
        }
    }

    /// `DeleteObject` conditional on `etag` (when known): a newer object is left alone.
    async fn delete_if_unchanged(&self, object: &str, etag: Option<String>) -> Result<()> {
        let mut request = self
            .client
            .delete_object()
            .bucket(&*self.context.bucket)
            .key(object);
        if let Some(etag) = etag {
            request = request.if_match(etag);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // Replaced since it was read (412), or already gone (404 from servers that check
            // the condition against a missing object): nothing to delete.
            Err(err)
                if err
                    .raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 404 | 412))
                    && err.code() != Some("NoSuchBucket") =>
            {
                Ok(())
            }
            Err(err) => Err(self.context.map(Op::Delete, err)),
        }
    }

    /// Refuses a payload larger than `max_object_bytes`.
    fn check_size(&self, value: &CacheValue) -> Result<()> {
        let len = value.payload().len();
        if len > self.max_object_bytes {
            return Err(BackendError::invalid_value(
                Arc::clone(&self.context.label),
                format!(
                    "a payload of {len} bytes is larger than the tier's max_object_bytes ({})",
                    self.max_object_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn set(&self, key: &CacheKey, value: CacheValue) -> Result<()> {
        self.check_size(&value)?;
        let object = self.prefix.object_key(key);
        if value.is_expired(self.clock.now()) {
            // The newest write says "nothing valid here": drop any older value.
            return self
                .bounded(Op::Set, self.delete_object(Op::Set, &object))
                .await;
        }
        let bytes = envelope::encode(&value, key);
        self.bounded(Op::Set, async {
            self.client
                .put_object()
                .bucket(&*self.context.bucket)
                .key(&object)
                .content_type("application/octet-stream")
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(drop)
                .map_err(|err| self.context.map(Op::Set, err))
        })
        .await
    }

    /// `set`, unless the object holds a live value created later. Reads the object, compares,
    /// then writes on condition that the object is still what was read (`If-Match` its ETag,
    /// or `If-None-Match: *` when there was none), so a write landing in between makes the
    /// write fail with `412` instead of being replaced; the comparison then starts again, up
    /// to [`CONDITIONAL_ATTEMPTS`] times.
    async fn set_if_newer(&self, key: &CacheKey, value: CacheValue) -> Result<()> {
        self.check_size(&value)?;
        let object = self.prefix.object_key(key);
        let limit = self.read_limit(key);
        let mut attempt = 1;
        loop {
            let now = self.clock.now();
            let etag = match self.read_object(&object, limit).await? {
                Read::Found { bytes, etag } => match envelope::decode(&bytes, key) {
                    Ok(held) if !value.replaces(&held, now) => return Ok(()),
                    _ => etag,
                },
                Read::TooLarge { etag, .. } => etag,
                // Nothing to remove.
                Read::Missing if value.is_expired(now) => return Ok(()),
                Read::Missing => None,
            };
            let written = if value.is_expired(now) {
                self.delete_if_unchanged(&object, etag).await.map(|()| true)
            } else {
                self.put_if_unchanged(&object, key, &value, etag).await
            };
            match written {
                Ok(true) => return Ok(()),
                Ok(false) if attempt < CONDITIONAL_ATTEMPTS => attempt += 1,
                Ok(false) => {
                    return Err(BackendError::tier(
                        Arc::clone(&self.context.label),
                        Op::Set,
                        ErrorKind::Internal,
                        true,
                        Message(format!(
                            "the object changed during each of {CONDITIONAL_ATTEMPTS} conditional \
                             writes"
                        )),
                    ));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// `PutObject` of `value` on condition that the object is still the one read: its `etag`,
    /// or absent. `Ok(false)` when the condition failed (another write landed in between).
    async fn put_if_unchanged(
        &self,
        object: &str,
        key: &CacheKey,
        value: &CacheValue,
        etag: Option<String>,
    ) -> Result<bool> {
        let request = self
            .client
            .put_object()
            .bucket(&*self.context.bucket)
            .key(object)
            .content_type("application/octet-stream")
            .body(ByteStream::from(envelope::encode(value, key)));
        let request = match etag {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            // 412: the condition failed; 409: a concurrent conditional write of the object.
            Err(err)
                if err
                    .raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(false)
            }
            Err(err) => Err(self.context.map(Op::Set, err)),
        }
    }

    async fn delete_object(&self, op: Op, object: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&*self.context.bucket)
            .key(object)
            .send()
            .await
            .map(drop)
            .map_err(|err| self.context.map(op, err))
    }

    async fn delete(&self, key: &CacheKey) -> Result<()> {
        let object = self.prefix.object_key(key);
        self.bounded(Op::Delete, self.delete_object(Op::Delete, &object))
            .await
    }

    async fn clear(&self) -> Result<()> {
        let mut token: Option<String> = None;
        loop {
            let page = self
                .bounded(Op::Clear, async {
                    self.client
                        .list_objects_v2()
                        .bucket(&*self.context.bucket)
                        .prefix(self.prefix.data_dir())
                        .max_keys(CLEAR_BATCH_I32)
                        .set_continuation_token(token.take())
                        .send()
                        .await
                        .map_err(|err| self.context.map(Op::Clear, err))
                })
                .await?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|object| object.key().map(str::to_owned))
                .collect();
            for batch in keys.chunks(S3Backend::CLEAR_BATCH) {
                self.bounded(Op::Clear, self.delete_batch(batch)).await?;
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(()),
            }
        }
    }

    /// `DeleteObjects` of up to 1,000 keys; fails when any of them could not be deleted.
    async fn delete_batch(&self, keys: &[String]) -> Result<()> {
        let objects = keys
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| self.internal(Op::Clear, err))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|err| self.internal(Op::Clear, err))?;
        let output = self
            .client
            .delete_objects()
            .bucket(&*self.context.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|err| self.context.map(Op::Clear, err))?;
        let errors = output.errors();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let code = first.code().unwrap_or("-");
        let (kind, transient) = match classify_answer(None, Some(code)) {
            crate::error::Answer::Denied => (ErrorKind::PermissionDenied, false),
            crate::error::Answer::NoSuchBucket => (ErrorKind::Unsupported, false),
            crate::error::Answer::Other(kind, transient) => (kind, transient),
        };
        Err(self.context.backend_error(
            Op::Clear,
            S3Error::Service {
                bucket: self.context.bucket.to_string(),
                place: self.context.place.to_string(),
                status: None,
                code: code.to_owned(),
                message: Some(format!(
                    "{} of {} objects could not be deleted; the first, {:?}: {}",
                    errors.len(),
                    keys.len(),
                    first.key().unwrap_or("?"),
                    first.message().unwrap_or("no message")
                )),
                kind,
                transient,
                source: None,
            },
        ))
    }

    fn internal(&self, op: Op, err: impl fmt::Display) -> BackendError {
        BackendError::tier(
            Arc::clone(&self.context.label),
            op,
            ErrorKind::Internal,
            false,
            Message(err.to_string()),
        )
    }
}

impl fmt::Debug for S3Backend {
    /// The label, the bucket, the endpoint or region, the prefix and the settings; never
    /// credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("S3Backend")
            .field("label", &inner.context.label)
            .field("bucket", &inner.context.bucket)
            .field("place", &inner.context.place)
            .field("prefix", &inner.prefix.as_str())
            .field("max_plain_object_key", &inner.prefix.plain_limit())
            .field("operation_timeout", &inner.context.timeout)
            .field("max_attempts", &inner.max_attempts)
            .field("max_object_bytes", &inner.max_object_bytes)
            .field("clock", &inner.clock)
            .field("offload", &inner.offload)
            .finish_non_exhaustive()
    }
}

impl Backend for S3Backend {
    fn label(&self) -> &str {
        &self.inner.context.label
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        TierFuture::pending(self.inner.get(key).instrument(self.span(Op::Get)))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(self.inner.set(key, value).instrument(self.span(Op::Set)))
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(
            self.inner
                .bounded(Op::Set, self.inner.set_if_newer(key, value))
                .instrument(self.span(Op::Set)),
        )
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        TierFuture::pending(self.inner.delete(key).instrument(self.span(Op::Delete)))
    }

    fn clear(&self) -> WriteFuture<'_> {
        TierFuture::pending(self.inner.clear().instrument(self.span(Op::Clear)))
    }
}
