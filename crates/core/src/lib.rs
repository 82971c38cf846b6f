//! Core types of tierkit, the multi-tier async cache: keys, stored values, the [`Backend`]
//! trait every tier implements, background work, clocks and errors.
//!
//! Most users reach these types through the `tierkit` facade. Depend on this crate directly to
//! implement a tier of your own:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use std::time::Duration;
//! use tierkit_core::{
//!     Backend, BackendError, CacheKey, CacheValue, Clock, GetFuture, Op, TierFuture, WriteFuture,
//! };
//!
//! /// A toy in-process tier: a map behind a mutex, answering synchronously.
//! #[derive(Debug, Default)]
//! struct MapTier {
//!     map: Mutex<HashMap<CacheKey, CacheValue>>,
//!     clock: Clock,
//! }
//!
//! impl MapTier {
//!     fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<CacheKey, CacheValue>>, BackendError> {
//!         self.map.lock().map_err(|_| BackendError::internal("map", Op::Get, "poisoned"))
//!     }
//! }
//!
//! impl Backend for MapTier {
//!     fn label(&self) -> &str {
//!         "map"
//!     }
//!
//!     fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
//!         let now = self.clock.now();
//!         // Never return a value past its hard expiry.
//!         TierFuture::ready(self.lock().map(|map| map.get(key).filter(|v| !v.is_expired(now)).cloned()))
//!     }
//!
//!     fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
//!         TierFuture::ready(self.lock().map(|mut map| {
//!             map.insert(key.clone(), value);
//!         }))
//!     }
//!
//!     fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
//!         let now = self.clock.now();
//!         // Compare and store under one lock: atomic for this tier.
//!         TierFuture::ready(self.lock().map(|mut map| {
//!             if map.get(key).is_none_or(|held| value.replaces(held, now)) {
//!                 map.insert(key.clone(), value);
//!             }
//!         }))
//!     }
//!
//!     fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
//!         TierFuture::ready(self.lock().map(|mut map| {
//!             map.remove(key);
//!         }))
//!     }
//!
//!     fn clear(&self) -> WriteFuture<'_> {
//!         TierFuture::ready(self.lock().map(|mut map| map.clear()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BackendError> {
//! let tier = MapTier::default();
//! let key = CacheKey::builder("user").part(42).build()?;
//! let value = CacheValue::with_ttl(&b"Ada"[..], Clock::System.now(), Duration::from_secs(60));
//! tier.set(&key, value.clone()).await?;
//! assert_eq!(tier.get(&key).await?, Some(value));
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! * [`CacheKey`]: an immutable key with a canonical string form, O(1) to clone.
//! * [`CacheValue`]: a [`bytes::Bytes`] payload with `created_at`, `stale_at` (end of
//!   freshness) and `expires_at` (hard expiry), as wall-clock [`Timestamp`]s so that tiers on
//!   different machines agree.
//! * [`Backend`]: the object-safe trait of a tier. Its futures ([`TierFuture`]) are either ready
//!   (an in-process hit, no allocation) or pending behind one box (a remote call).
//! * [`Offload`]: background work (race losers, refills) with a tracked, bounded, drainable tokio
//!   implementation, [`TokioOffload`].
//! * [`Clock`]: every TTL decision reads one; [`ManualClock`] drives time in tests.
//! * [`BackendError`]: one error type, cheap to clone, with a [`ErrorKind`] and a transient flag.
//! * [`envelope`]: the versioned, checksummed byte format remote tiers store, echoing its key.
//! * [`redact`]: URLs fit to show, without user-info or secret query parameters; every tier
//!   shows URLs only through it.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
pub mod envelope;
mod error;
mod key;
mod offload;
pub mod redact;
mod time;
mod value;

pub use backend::{
    Backend, BoxFuture, GetFuture, Probe, SharedBackend, TierFuture, TierPath, WriteFuture,
};
pub use error::{BackendError, ErrorKind, ErrorSource, InvalidKeyReason, Op, Result};
pub use key::{CacheKey, CacheKeyBuilder};
pub use offload::{
    DrainReport, Offload, OffloadStats, OffloadTask, RejectReason, Rejected, TokioOffload,
};
pub use time::{Clock, ManualClock, TimeSource, Timestamp};
pub use value::{CacheValue, Freshness};

pub use bytes;
