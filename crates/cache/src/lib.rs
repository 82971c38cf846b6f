//! The typed read-through handle of tierkit: [`Cache::get_or_fetch`] answers from the first
//! tier holding a fresh value, or runs the loader once per key however many callers miss at
//! once, and stores the result in every tier.
//!
//! ```
//! use tierkit_cache::{Cache, Source, codec::Postcard};
//! # use std::collections::HashMap;
//! # use std::sync::Mutex;
//! # use tierkit_cache::{LocalEntry, LocalTier};
//! # use tierkit_core::{CacheKey, Timestamp};
//! # #[derive(Debug, Default)]
//! # struct MapTier(Mutex<HashMap<CacheKey, LocalEntry<User>>>);
//! # impl LocalTier<User> for MapTier {
//! #     fn label(&self) -> &str { "map" }
//! #     fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<User>> {
//! #         self.0.lock().ok()?.get(key).filter(|e| !e.meta().is_expired(now)).cloned()
//! #     }
//! #     fn insert(&self, key: &CacheKey, entry: LocalEntry<User>) {
//! #         if let Ok(mut map) = self.0.lock() { map.insert(key.clone(), entry); }
//! #     }
//! #     fn remove(&self, key: &CacheKey) { if let Ok(mut map) = self.0.lock() { map.remove(key); } }
//! #     fn clear(&self) { if let Ok(mut map) = self.0.lock() { map.clear(); } }
//! # }
//! # #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! # struct User { name: String }
//! # async fn load_user(_id: u64) -> Result<User, std::io::Error> { Ok(User { name: "Ada".into() }) }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tierkit_cache::CacheError> {
//! // L1: `tierkit_moka::MokaLocal` in a service; L2/L3: any tier (`.l2(redis).l3(s3)`).
//! let users: Cache<User> = Cache::builder(MapTier::default(), Postcard).build();
//!
//! let user = users.get_or_fetch("user:42", || load_user(42)).await?;
//! assert_eq!(user.name, "Ada");
//! assert_eq!(user.source(), Source::Loader);
//! # Ok(())
//! # }
//! ```
//!
//! # What a call does
//!
//! 1. **L1 probe** (synchronous): a fresh entry returns at once, with no await, no decode and
//!    no allocation of its own. The loader closure is not even called.
//! 2. **Join or lead** the key's flight: one per key, shared by `get` and `get_or_fetch`.
//! 3. The **flight** (a task detached from every caller) reads L2, then L3 (refilling L2 on an
//!    L3 hit), then runs the loader, stores the result in L1, publishes it to every waiter,
//!    and writes the remote tiers once (in the background by default).
//! 4. Each **waiter** waits for the result within its own hard timeout; a waiter that goes
//!    away changes nothing for the others.
//!
//! `docs/read-through.md` in the repository has the full decision order, every option with its
//! default, and what happens to a flight when its callers go away.
//!
//! # Tiers
//!
//! * L1 is a [`LocalTier`] of decoded values (`Arc<V>` with the entry's timestamps);
//!   `tierkit-moka` implements it over moka.
//! * L2 and L3 are any [`Backend`](tierkit_core::Backend): Redis, S3, a composition. They
//!   hold the value encoded by a [`Codec`](codec::Codec), optionally compressed, in a
//!   [`frame`] that echoes the key and carries a checksum; an entry that cannot be decoded is
//!   a counted miss and is overwritten by the next value.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.

#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
pub mod codec;
mod error;
mod fetched;
mod flight;
pub mod frame;
mod future;
mod hit;
mod jitter;
mod local;
mod options;
mod stats;
mod table;
mod throttle;

pub use cache::{AsCacheKey, Cache, CacheBuilder};
pub use error::{CacheError, LoaderError, TimeoutKind};
pub use fetched::Fetched;
pub use flight::FetchContext;
pub use frame::{
    Compression, CompressionAlgorithm, FRAME_ERROR_REASONS, FrameError, FrameErrorReason,
};
pub use future::FetchFuture;
pub use hit::{FailSafeCause, Hit, HitFreshness, Source, StaleCause};
pub use jitter::{JitterSource, NoJitter, RandomJitter};
pub use local::{EntryMeta, LocalEntry, LocalState, LocalTier};
pub use options::{
    AbandonPolicy, DEFAULT_CAP_FACTOR, DEFAULT_FAIL_SAFE_MAX, DEFAULT_FAIL_SAFE_THROTTLE,
    DEFAULT_HARD_TIMEOUT, DEFAULT_JITTER_DIVISOR, DEFAULT_MAX_CONCURRENT_LOADS,
    DEFAULT_MAX_PAYLOAD, DEFAULT_REFRESH_BACKOFF, DEFAULT_THROTTLE_CAPACITY, DEFAULT_TIER_TIMEOUT,
    DEFAULT_TTL, FetchOptions, WriteMode,
};
pub use stats::CacheStats;
pub use tokio_util::sync::CancellationToken;
