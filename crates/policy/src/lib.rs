//! Read, write and refill policies of tierkit, and the [`Composition`] that stacks two tiers
//! into one.
//!
//! ```
//! use std::time::Duration;
//! use tierkit_core::{Backend, CacheKey, CacheValue, Clock};
//! use tierkit_policy::{Composition, RefillPolicy};
//! # use tierkit_testkit::MemoryBackend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tierkit_core::BackendError> {
//! # let (l1, l2) = (MemoryBackend::new("memory"), MemoryBackend::new("remote").remote());
//! # let (l1_handle, l2_handle) = (l1.clone(), l2.clone());
//! // Any two tiers: moka over Redis, Redis over S3, or compositions of those.
//! let cache = Composition::builder(l1, l2)
//!     .refill_policy(RefillPolicy::Always)
//!     .build();
//!
//! let key = CacheKey::new("greeting")?;
//! let value = CacheValue::with_ttl(&b"hello"[..], Clock::System.now(), Duration::from_secs(60));
//! cache.set(&key, value.clone()).await?; // both tiers, at once
//! # assert_eq!(l2_handle.peek(&key), Some(value.clone()));
//!
//! l1_handle.delete(&key).await?; // L1 loses it (eviction, restart...)
//! assert_eq!(cache.get(&key).await?, Some(value.clone())); // served by L2, refilled into L1
//! assert_eq!(l1_handle.peek(&key), Some(value)); // same timestamps: refill never extends life
//! # Ok(())
//! # }
//! ```
//!
//! # Policies
//!
//! Policies receive the two tier operations as closures that produce futures, plus a
//! [`PolicyContext`] (tier names, the time, the offload). They know nothing of backends and
//! are tested with plain futures. Each documents the full table of what every combination of
//! tier outcomes returns.
//!
//! | read | in short | cost of an L1 hit | cost of an L1 miss |
//! |---|---|---|---|
//! | [`SequentialReadPolicy`] (default) | L1, then L2 when L1 has no fresh value | L1 only | L1 + L2, in sequence |
//! | [`RaceReadPolicy`] | both at once, the first fresh hit wins | L1 only when L1 answers synchronously | max(L1, L2) at worst |
//! | [`ParallelReadPolicy`] | both at once, the better value wins | L1 + L2 (waits for both) | L1 + L2 (waits for both) |
//!
//! | write | in short | returns after |
//! |---|---|---|
//! | [`OptimisticParallelWritePolicy`] (default) | both at once; `Ok` unless both fail | the slower write |
//! | [`SequentialWritePolicy`] | L1, then L2 (always both); `Ok` unless both fail | both writes, added |
//! | [`RaceWritePolicy`] | both at once; `Ok` at the first success, the other finishes on the offload | the faster successful write |
//!
//! [`RefillPolicy::Always`] (default) copies L2 hits into L1 with their timestamps unchanged;
//! [`RefillPolicy::Never`] leaves L1 alone.
//!
//! Every policy has a runtime-chosen form ([`AnyReadPolicy`], [`AnyWritePolicy`],
//! [`RefillPolicy`], all parsed from strings), which is what a [`Composition`] uses unless
//! given a concrete policy type.
//!
//! # Errors
//!
//! A composition returns [`BackendError`](tierkit_core::BackendError) like any tier. A failure
//! of one tier is that tier's error; a failure of both is
//! [`CompositionError::BothLayersFailed`], inside
//! [`BackendError::Composite`](tierkit_core::BackendError::Composite), keeping both causes.
//!
//! # Observability
//!
//! * Spans: `tierkit.tier` at `debug` level around every tier call except an L1 hit answered
//!   synchronously, with fields `tier` (path: `l1`, `l2`, `l2.l1`...), `backend` (label) and
//!   `op`.
//! * Events: `trace` when a write succeeds on both tiers, `warn` when one tier fails and the
//!   operation is still served (naming the tier), `error` when both fail.
//! * Metrics (through the `metrics` facade; handles resolved once per composition):
//!   `tierkit_tier_get_total{tier, backend, result=hit|miss|error}`,
//!   `tierkit_tier_write_total{tier, backend, op=set|delete|clear, result=ok|error}`,
//!   `tierkit_refill_total{tier, backend, result=ok|error}`.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.95.

#![doc(test(attr(deny(warnings))))]

mod composition;
mod context;
mod error;
mod keyops;
mod read;
mod refill;
mod scope;
mod write;

pub use composition::{Composition, CompositionBuilder, DEFAULT_CLEAR_TIMEOUT};
pub use context::{Layer, PolicyContext, TierName, TierOp};
pub use error::CompositionError;
pub use read::{
    AnyReadPolicy, ParallelReadPolicy, RaceLoser, RaceReadPolicy, ReadOutcome, ReadPolicy,
    SequentialReadPolicy, TierRead,
};
pub use refill::RefillPolicy;
pub use write::{
    AnyWritePolicy, OptimisticParallelWritePolicy, RaceWritePolicy, SequentialWritePolicy,
    TierWrite, WriteOutcome, WritePolicy, WriteStatus,
};
