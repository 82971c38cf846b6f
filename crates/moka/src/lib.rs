//! An in-process tier for tierkit over [moka]'s synchronous cache: a hit answers at once and
//! allocates nothing of its own.
//!
//! ```
//! use std::time::Duration;
//! use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
//! use tierkit_moka::MokaBackend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tierkit_core::BackendError> {
//! let l1 = MokaBackend::builder()
//!     .max_capacity(100_000)
//!     .time_to_idle(Duration::from_secs(600))
//!     .build();
//!
//! let key = CacheKey::builder("user").part(42).build()?;
//! let value = CacheValue::with_ttl(&b"Ada"[..], Clock::System.now(), Duration::from_secs(60));
//! l1.set(&key, value.clone()).await?;
//! assert_eq!(l1.get(&key).await?, Some(value));
//!
//! l1.delete(&key).await?;
//! assert_eq!(l1.get(&key).await?, None);
//! # Ok(())
//! # }
//! ```
//!
//! # Why `moka::sync` and not `moka::future`
//!
//! `moka::future::Cache::get` is an `async fn`: answering through it means building (and, behind
//! `Arc<dyn Backend>`, boxing) a future on every hit. `moka::sync::Cache::get` is a plain
//! function, so [`MokaBackend`] answers every operation with
//! [`TierFuture::ready`](tierkit_core::TierFuture::ready): no await point and no allocation on
//! the hit path (moka's own housekeeping, run on some reads, may allocate now and then). The sync cache never blocks on I/O, and its writes are short, so calling it
//! from async code is fine.
//!
//! # Expiry
//!
//! Each entry expires when its value's `expires_at` is reached: the tier gives moka a per-entry
//! expiry ([`moka::Expiry`]) equal to the time left by the tier's [`Clock`](tierkit_core::Clock)
//! when the entry is created or replaced. Because moka measures that time on its own monotonic
//! clock, `get` also checks `expires_at` against the tier's clock, so a value is never returned
//! after it has expired, whichever clock runs ahead. Setting a value that has already expired
//! stores nothing and removes any older value of the key. An optional
//! [`time_to_idle`](MokaBackendBuilder::time_to_idle) evicts entries nobody touches.
//!
//! Stale values (past `stale_at`, before `expires_at`) are returned as they are: the caller
//! decides what to do with them.
//!
//! # Capacity
//!
//! Either a number of entries ([`max_capacity`](MokaBackendBuilder::max_capacity), the default
//! with [10,000](MokaBackend::DEFAULT_MAX_CAPACITY) entries) or a number of bytes
//! ([`max_bytes`](MokaBackendBuilder::max_bytes)), where an entry weighs its key length plus its
//! payload length plus [`MokaBackend::ENTRY_OVERHEAD`]. Under `max_bytes`, a value that could
//! never fit (heavier than the whole capacity) is rejected with
//! [`ErrorKind::InvalidValue`](tierkit_core::ErrorKind::InvalidValue), and the key keeps
//! whatever it held before. moka evicts with TinyLFU when the tier is full.
//!
//! # Conformance
//!
//! The tier passes the backend conformance suite of `tierkit-testkit`; its test file is one
//! line per configuration:
//!
//! ```
//! # #![allow(unused_imports)] // the generated tests exist only under `cargo test`
//! use tierkit_moka::MokaBackend;
//! use tierkit_testkit::ConformanceContext;
//!
//! tierkit_testkit::conformance!(moka_entries, |ctx: ConformanceContext| async move {
//!     Ok(MokaBackend::builder().clock(ctx.clock()).build())
//! });
//! # fn main() {}
//! ```
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.
//!
//! [moka]: https://docs.rs/moka

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod config;
mod local;

pub use backend::MokaBackend;
pub use config::MokaBackendBuilder;
pub use local::{MokaLocal, MokaLocalBuilder, Weigher};
