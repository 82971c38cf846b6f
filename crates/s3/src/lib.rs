//! An S3 tier for tierkit over the [AWS SDK for Rust][aws-sdk-s3]: values stored as checksummed
//! objects under a key prefix, every call bounded in time, S3's answers mapped to tierkit's
//! error kinds.
//!
//! ```
//! use std::time::Duration;
//! use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
//! use tierkit_s3::S3Backend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A private S3 protocol server in this process (tierkit-s3-server, a dev-dependency).
//! # let server = tierkit_s3_server::S3Server::start(Default::default()).await?;
//! # let (endpoint, region, access_key, secret_key, bucket) = (
//! #     server.endpoint(), server.region(), server.access_key(), server.secret_key(), server.bucket(),
//! # );
//! // `endpoint` is for instance "http://127.0.0.1:9000".
//! let l3 = S3Backend::compatible(endpoint, region, access_key, secret_key, bucket)
//!     .prefix("doc-crate/")
//!     .operation_timeout(Duration::from_secs(2))
//!     .build()
//!     .await?;
//!
//! let key = CacheKey::builder("user").part(42).build()?;
//! let value = CacheValue::with_ttl(&b"Ada"[..], Clock::System.now(), Duration::from_secs(60));
//! l3.set(&key, value.clone()).await?; // PutObject doc-crate/.tk/k/user%3A42.tkv <envelope>
//! assert_eq!(l3.get(&key).await?, Some(value));
//!
//! l3.delete(&key).await?;
//! assert_eq!(l3.get(&key).await?, None);
//! # Ok(())
//! # }
//! ```
//!
//! Put it under faster tiers with `tierkit_policy::Composition` (moka over Redis over S3):
//! reads that miss them are served from S3 and refilled upwards with their timestamps
//! unchanged.
//!
//! # Building
//!
//! [`S3Backend::builder`] takes the [`aws_sdk_s3::Client`] your application configured (with
//! `aws-config`, or by hand) and a bucket; [`S3Backend::compatible`] makes the client for an
//! S3-compatible endpoint from a URL, a region and static credentials (path-style, nothing
//! read from the environment). [`build`](S3BackendBuilder::build) makes no request unless
//! asked to [check the bucket](S3BackendBuilder::check_bucket).
//!
//! # Objects, expiry and costs
//!
//! * The object of a cache key is `prefix` (`tierkit/` by default) + `.tk/k/` + the key
//!   escaped (letters, digits, `-`, `_` kept, every other byte `%XX`) + `.tkv`, or `prefix` +
//!   `.tk/h/` + its SHA-256 + `.tkv` when that would exceed 900 bytes; see [`S3Backend`],
//!   "Object keys". No two (prefix, key) pairs share an object.
//! * The object is the value's [envelope](tierkit_core::envelope): its timestamps, the full
//!   key (checked on every read), a CRC-32 and the payload. Payloads above
//!   [`max_object_bytes`](S3BackendBuilder::max_object_bytes) (64 MiB by default) are rejected.
//! * S3 has no per-object TTL: `get` checks `expires_at` against the tier's
//!   [`Clock`](tierkit_core::Clock) and answers a miss for an expired object (deleting it in
//!   the background when given an [offload](S3BackendBuilder::offload)); a **lifecycle rule**
//!   on the prefix removes the rest. See [`S3Backend`], "Expiry and lifecycle rules".
//! * Objects that do not decode are misses, counted in [`S3Backend::stats`].
//! * `clear` lists `prefix.tk/`, the tier's own directory (`ListObjectsV2`, 1,000 keys a
//!   page), and deletes each page with one `DeleteObjects`: exactly the tier's objects, none
//!   of a nested (`prefix/sub/`) or sibling prefix.
//! * Costs: one `GetObject` per read reaching this tier, one `PutObject` per write.
//!
//! # Timeouts and retries
//!
//! Every call is bounded by the [operation timeout](S3BackendBuilder::operation_timeout) (5 s
//! by default): as the SDK's operation timeout, and by the tier around the call, reading the
//! body included. The SDK retries transient failures in its standard mode, with at most
//! [2 attempts](S3BackendBuilder::max_attempts) by default; a `403` is never retried. Details,
//! and how S3's answers map to error kinds, in [`S3Backend`], "Timeouts, retries and errors".
//!
//! # Observability
//!
//! * A `debug` span `tierkit.s3` around every operation, with fields `op` and `bucket`.
//! * A `debug` event for each undecodable object, with the key's length and the reason (never
//!   the payload).
//! * The `metrics` counter `tierkit_s3_decode_errors_total{reason}`; its handles are resolved
//!   once, when the tier is built, so install your recorder before building.
//! * [`S3Backend::stats`]: the same counts, plus expired reads and background deletes, without
//!   a recorder.
//!
//! # Conformance
//!
//! The tier passes the backend conformance suite of `tierkit-testkit`, alone and as the third
//! tier under moka and Redis:
//!
//! ```
//! # #![allow(unused_imports)] // the generated tests exist only under `cargo test`
//! use tierkit_s3::S3Backend;
//! use tierkit_testkit::ConformanceContext;
//!
//! tierkit_testkit::conformance!(s3, |ctx: ConformanceContext| async move {
//!     let Ok(endpoint) = std::env::var("TIERKIT_S3_ENDPOINT") else {
//!         return Err(tierkit_testkit::conformance::skip("TIERKIT_S3_ENDPOINT is not set"));
//!     };
//!     Ok(S3Backend::compatible(&endpoint, "us-east-1", "key", "secret", "tierkit")
//!         .prefix(ctx.namespace())
//!         .clock(ctx.clock())
//!         .build()
//!         .await?)
//! });
//! # fn main() {}
//! ```
//!
//! # Feature flags
//!
//! None. The SDK is used without its default features, with `rt-tokio`,
//! `default-https-client` (rustls) and `behavior-version-latest`; it is re-exported as
//! [`aws_sdk_s3`] so that your `Client` and `Config` come from the same version.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.
//!
//! [aws-sdk-s3]: https://docs.rs/aws-sdk-s3

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod error;
mod keys;
mod stats;

pub use backend::S3Backend;
pub use config::S3BackendBuilder;
pub use error::S3Error;
pub use stats::S3Stats;
pub use tierkit_core::envelope::DecodeErrors;

/// The AWS SDK for S3 this tier is built on, for its `Client`, `Config` and credentials types.
pub use aws_sdk_s3;
