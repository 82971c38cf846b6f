//! tierkit: multi-tier async caching. A fast in-process cache in front of shared caches and
//! object storage, composed under explicit read, write and refill policies.
//!
//! Most services start with the typed read-through handle, [`Cache`]:
//!
//! ```
//! # #[cfg(all(feature = "moka", feature = "postcard"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tierkit::CacheError> {
//! use tierkit::moka::MokaLocal;
//! use tierkit::{Cache, Source, codec::Postcard};
//! # async fn load_user_from_db(id: u64) -> Result<String, std::io::Error> { Ok(format!("user {id}")) }
//!
//! // L1: decoded values in moka. In production, add `.l2(redis)` and `.l3(s3)`.
//! let users: Cache<String> = Cache::builder(MokaLocal::new(10_000), Postcard).build();
//!
//! // However many callers miss at once, the loader runs once per key.
//! let user = users.get_or_fetch("user:42", || load_user_from_db(42)).await?;
//! assert_eq!(user.source(), Source::Loader);
//! let again = users.get_or_fetch("user:42", || load_user_from_db(42)).await?;
//! assert_eq!(again.source(), Source::L1); // no await, no decode, no allocation
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "moka", feature = "postcard")))]
//! # fn main() {}
//! ```
//!
//! Underneath, tiers are [`Backend`]s, and two of them compose into one:
//!
//! ```
//! # #[cfg(feature = "moka")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tierkit::BackendError> {
//! use std::time::Duration;
//! use tierkit::moka::MokaBackend;
//! use tierkit::{Backend, CacheKey, CacheValue, Clock, Composition};
//!
//! // A small, hot L1 in front of a larger L2 (in production: moka in front of Redis or S3).
//! let cache = Composition::new(MokaBackend::new(1_000), MokaBackend::new(100_000));
//!
//! let key = CacheKey::builder("user").part(42).build()?;
//! let value = CacheValue::with_ttl(&b"Ada Lovelace"[..], Clock::System.now(), Duration::from_secs(300));
//! cache.set(&key, value.clone()).await?; // both tiers at once
//! assert_eq!(cache.get(&key).await?, Some(value)); // an L1 hit: no allocation, no await
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "moka"))]
//! # fn main() {}
//! ```
//!
//! # Crates
//!
//! | crate | what it holds |
//! |---|---|
//! | `tierkit-core` | [`CacheKey`], [`CacheValue`], the [`Backend`] trait, [`Offload`], [`Clock`], [`BackendError`] |
//! | `tierkit-policy` | read, write and refill policies and the [`Composition`] of two tiers |
//! | `tierkit-cache` | the typed read-through [`Cache`]: `get_or_fetch`, one flight per key, codecs, compression |
//! | `tierkit-moka` | the in-process tiers over moka (`moka::MokaBackend`, `moka::MokaLocal`, feature `moka`) |
//! | `tierkit-redis` | the Redis tier over fred (`redis::RedisBackend`, feature `redis`) |
//! | `tierkit-s3` | the S3 tier over aws-sdk-s3 (`s3::S3Backend`, feature `s3`) |
//!
//! This facade re-exports the core and policy crates flat, and each backend crate as a module
//! behind its own feature, so a service depends on exactly what it deploys.
//!
//! # Composing tiers
//!
//! A [`Composition`] is itself a [`Backend`]: compositions nest (`Composition<L1,
//! Composition<L2, L3>>` is a three-tier cache) and erase (`Arc<dyn Backend>`, see
//! [`SharedBackend`]) for stacks built from configuration. Its policies:
//!
//! | read | in short |
//! |---|---|
//! | [`SequentialReadPolicy`] (default) | L1; L2 only when L1 has no fresh value |
//! | [`RaceReadPolicy`] | both at once; the first fresh hit wins |
//! | [`ParallelReadPolicy`] | both at once; the better value wins |
//!
//! | write | in short |
//! |---|---|
//! | [`OptimisticParallelWritePolicy`] (default) | both at once; `Ok` unless both fail, a warning names a failed tier |
//! | [`SequentialWritePolicy`] | L1 then L2, always both |
//! | [`RaceWritePolicy`] | `Ok` at the first success; the other write finishes on the [`Offload`] |
//!
//! Each policy's documentation holds its full outcome table.
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `moka` | yes | `tierkit::moka`: the in-process tier over `moka::sync::Cache` |
//! | `redis` | no | `tierkit::redis`: the Redis tier over fred (standalone, cluster, sentinel) |
//! | `redis-tls` | no | `redis` with TLS (rustls, ring) for `rediss://` URLs |
//! | `s3` | no | `tierkit::s3`: the S3 tier over aws-sdk-s3, for AWS and S3-compatible stores |
//! | `postcard` | yes | `codec::Postcard`, the compact binary serde codec of [`Cache`] |
//! | `json` | no | `codec::Json`, a serde_json codec |
//! | `zstd` | no | zstd compression of large values ([`Compression::zstd`]) |
//! | `lz4` | no | lz4 compression of large values ([`Compression::lz4`]) |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tierkit_core::{
    Backend, BackendError, BoxFuture, CacheKey, CacheKeyBuilder, CacheValue, Clock, DrainReport,
    ErrorKind, ErrorSource, Freshness, GetFuture, InvalidKeyReason, ManualClock, Offload,
    OffloadStats, OffloadTask, Op, Probe, RejectReason, Rejected, SharedBackend, TierFuture,
    TierPath, TimeSource, Timestamp, TokioOffload, WriteFuture, bytes,
};
pub use tierkit_policy::{
    AnyReadPolicy, AnyWritePolicy, Composition, CompositionBuilder, CompositionError, Layer,
    OptimisticParallelWritePolicy, ParallelReadPolicy, PolicyContext, RaceLoser, RaceReadPolicy,
    RaceWritePolicy, ReadOutcome, ReadPolicy, RefillPolicy, SequentialReadPolicy,
    SequentialWritePolicy, TierName, TierRead, TierWrite, WriteOutcome, WritePolicy, WriteStatus,
};

pub use tierkit_cache::{
    AbandonPolicy, AsCacheKey, Cache, CacheBuilder, CacheError, CacheStats, CancellationToken,
    Compression, CompressionAlgorithm, EntryMeta, FailSafeCause, FetchContext, FetchFuture,
    FetchOptions, Fetched, Hit, HitFreshness, LoaderError, LocalEntry, LocalTier, Source,
    StaleCause, TimeoutKind, WriteMode, codec, frame,
};

/// The read-through crate, for items not re-exported at the top level.
pub use tierkit_cache as cache;
/// The core crate, for items not re-exported at the top level.
pub use tierkit_core as core;
/// The policy crate, for items not re-exported at the top level.
pub use tierkit_policy as policy;

/// The in-process tier over moka.
#[cfg(feature = "moka")]
#[cfg_attr(docsrs, doc(cfg(feature = "moka")))]
pub use tierkit_moka as moka;

/// The Redis tier over fred: standalone, cluster and sentinel.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tierkit_redis as redis;

/// The S3 tier over aws-sdk-s3: AWS and S3-compatible stores.
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use tierkit_s3 as s3;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
