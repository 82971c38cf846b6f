//! A Redis tier for tierkit over [fred]: standalone, cluster and sentinel deployments, every
//! operation bounded in time, values stored in a checksummed envelope that Redis expires by
//! itself.
//!
//! ```
//! use std::time::Duration;
//! use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
//! use tierkit_redis::RedisBackend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // This example needs a server: it does nothing unless TIERKIT_REDIS_URL is set.
//! # let Ok(url) = std::env::var("TIERKIT_REDIS_URL") else { return Ok(()) };
//! // `url` is for instance "redis://127.0.0.1:6379".
//! let l2 = RedisBackend::builder(url.as_str())
//!     .namespace("doc-crate")
//!     .command_timeout(Duration::from_millis(500))
//!     .build()
//!     .await?;
//!
//! let key = CacheKey::builder("user").part(42).build()?;
//! let value = CacheValue::with_ttl(&b"Ada"[..], Clock::System.now(), Duration::from_secs(60));
//! l2.set(&key, value.clone()).await?; // SET doc-crate:user:42 <envelope> PXAT <expires_at>
//! assert_eq!(l2.get(&key).await?, Some(value));
//!
//! l2.delete(&key).await?;
//! assert_eq!(l2.get(&key).await?, None);
//! # Ok(())
//! # }
//! ```
//!
//! Put it under an in-process tier with `tierkit_policy::Composition` (moka over Redis) and
//! reads that miss L1 are served from Redis and refilled into L1 with their timestamps
//! unchanged.
//!
//! # Connecting
//!
//! [`RedisBackend::builder`] takes a URL, a fred [`Config`](fred::types::config::Config), or a
//! fred [`Client`](fred::clients::Client) or [`Pool`](fred::clients::Pool) your application
//! already runs (see [`RedisSource`]). URLs follow fred's grammar
//! ([`Config::from_url`](fred::types::config::Config::from_url)):
//!
//! ```text
//! redis://[[username:]password@]host[:port][/database]
//! rediss://[[username:]password@]host[:port][/database]                       (feature `tls`)
//! redis-cluster://[[username:]password@]host:port[?node=host:port[&node=host:port...]]
//! redis-sentinel://[[username:]password@]host[:port][/database]?sentinelServiceName=NAME[&node=host:port...]
//! ```
//!
//! The port defaults to 6379 (26379 for sentinels). A cluster URL names one or more seed nodes;
//! the tier discovers the others. A sentinel URL names the sentinels; the tier asks them for
//! the current primary whenever it connects, moves to the new primary when one of them
//! announces a failover (`+switch-master`), and confirms each write by a replica
//! ([`replica_acks`](RedisBackendBuilder::replica_acks), `WAIT`), so that a primary the
//! sentinels replaced cannot acknowledge a write that the failover then loses (see
//! [`RedisBackend`], "Sentinel failovers"). `valkey` works in place of `redis` in every
//! scheme. A `rediss` URL without the `tls` feature is refused
//! ([`RedisError::TlsNotEnabled`]) rather than silently connecting in clear text.
//!
//! [`build`](RedisBackendBuilder::build) connects and waits for the connection, within the
//! [connect timeout](RedisBackendBuilder::connect_timeout) (5 s by default); its errors name the
//! servers as `host:port`, never a password. Reconnection afterwards is automatic.
//!
//! # Keys, values and expiry
//!
//! * The Redis key of a cache key is the namespace (with `%` and `:` escaped as `%25` and
//!   `%3A`), `:`, then the key's canonical bytes (namespace `tierkit` by default): no two
//!   (namespace, key) pairs share a Redis key. In a cluster, co-locate keys with a hash tag in the key,
//!   `{user42}:profile`; see [`RedisBackend`], "Key layout and hash tags".
//! * The stored bytes are the value's [envelope](tierkit_core::envelope): its timestamps, a
//!   CRC-32, an echo of the cache key (checked on every read) and the payload. Payloads above [`max_value_bytes`](RedisBackendBuilder::max_value_bytes)
//!   (16 MiB by default) are rejected.
//! * `SET ... PXAT expires_at`: Redis removes each key when its value expires; reads check
//!   `expires_at` against the tier's [`Clock`](tierkit_core::Clock) too.
//! * Bytes that do not decode, and keys of another Redis type, are misses, counted in
//!   [`RedisBackend::stats`].
//! * `clear` scans every primary for `namespace:*` (escaped) and unlinks what it finds: exactly
//!   the namespace's keys, none of a nested or sibling namespace; never `KEYS`, never
//!   `FLUSHDB`.
//!
//! # Timeouts
//!
//! Every round trip is bounded by the [command timeout](RedisBackendBuilder::command_timeout)
//! (1 s by default) and fails with a transient `Timeout` past it; while the connection is down,
//! operations fail at once with a transient `Connection` error and fred reconnects in the
//! background. Details in [`RedisBackend`], "Timeouts and reconnection".
//!
//! # Observability
//!
//! * A `debug` span `tierkit.redis` around every operation, with fields `op` and `namespace`.
//! * A `debug` event for each undecodable value, with the key's length and the reason (never
//!   the payload).
//! * The `metrics` counter `tierkit_redis_decode_errors_total{reason}`; its handles are
//!   resolved once, when the tier is built, so install your recorder before building.
//! * [`RedisBackend::stats`]: the same counts, plus values found expired, without a recorder.
//!
//! # Conformance
//!
//! The tier passes the backend conformance suite of `tierkit-testkit`, standalone and in a
//! cluster, alone and under moka:
//!
//! ```
//! # #![allow(unused_imports)] // the generated tests exist only under `cargo test`
//! use tierkit_redis::RedisBackend;
//! use tierkit_testkit::ConformanceContext;
//!
//! tierkit_testkit::conformance!(redis, |ctx: ConformanceContext| async move {
//!     let Ok(url) = std::env::var("TIERKIT_REDIS_URL") else {
//!         return Err(tierkit_testkit::conformance::skip("TIERKIT_REDIS_URL is not set"));
//!     };
//!     Ok(RedisBackend::builder(url)
//!         .namespace(ctx.namespace())
//!         .clock(ctx.clock())
//!         .build()
//!         .await?)
//! });
//! # fn main() {}
//! ```
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `tls` | no | `rediss://` (and `rediss-cluster://`, `rediss-sentinel://`) URLs: TLS through rustls with the *ring* provider and the platform's root certificates (fred's `enable-rustls-ring`) |
//!
//! The tier enables only the fred interfaces it uses (`i-keys`, `i-cluster`, `i-pubsub`);
//! fred itself is re-exported as [`fred`] so that your `Config`, `Client` and `Pool` come from
//! the same version.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.
//!
//! [fred]: https://docs.rs/fred

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod cluster;
mod config;
mod error;
mod keys;
mod replication;
mod script;
mod sentinel;
mod stats;

pub use backend::RedisBackend;
pub use config::{RedisBackendBuilder, RedisSource};
pub use error::RedisError;
pub use stats::RedisStats;
pub use tierkit_core::envelope::DecodeErrors;

/// The fred crate this tier is built on, for its `Config`, `Client`, `Pool` and
/// `ReconnectPolicy` types.
pub use fred;
