//! Test support for tierkit: reference and fault-injecting tiers, a scripted tier, a manual
//! offload, and the conformance suite every backend runs.
//!
//! ```
//! use std::time::Duration;
//! use tierkit_core::{Backend, ErrorKind, Op};
//! use tierkit_testkit::{CallCounts, Clock, Fault, FaultyBackend, ManualClock, MemoryBackend, key, value};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tierkit_core::Result<()> {
//! let clock = ManualClock::starting_now();
//! let memory = MemoryBackend::new("l2").with_clock(Clock::from(clock.clone()));
//! let tier = FaultyBackend::new(memory.clone());
//!
//! tier.set(&key("a"), value("x", clock.now(), Duration::from_secs(60))).await?;
//! tier.push(Op::Get, Fault::Fail(ErrorKind::Timeout));
//! assert_eq!(tier.get(&key("a")).await.unwrap_err().kind(), ErrorKind::Timeout);
//! assert!(tier.get(&key("a")).await?.is_some());
//!
//! // The wrapper saw three calls; the memory tier only the two that passed through.
//! assert_eq!(tier.calls().total(), 3);
//! assert_eq!(memory.calls(), CallCounts { get: 1, set: 1, delete: 0, clear: 0 });
//! # Ok(()) }
//! ```
//!
//! # Test tiers
//!
//! * [`MemoryBackend`]: a reference in-memory tier that counts its calls, answering like an
//!   in-process tier or, with [`remote`](MemoryBackend::remote), like a remote one.
//! * [`FaultyBackend`]: wraps any tier and injects failures, delays, hangs and corrupt data on
//!   a per-operation schedule.
//! * [`GatedBackend`]: wraps any tier and holds its reads until the test opens a gate, to
//!   gather a burst of concurrent callers in front of a real server.
//! * [`ScriptedBackend`] with its [`ScriptHandle`] ([`scripted`]): every operation waits for the
//!   test to answer it, so a test decides exactly which tier answers first, and how.
//! * [`ManualOffload`]: an [`Offload`](tierkit_core::Offload) that queues background work until
//!   the test runs it.
//!
//! # Workloads
//!
//! [`workload`]: a seeded generator and a Zipf sampler of key ranks, the key popularity of the
//! demo and of the hit-ratio benchmarks.
//!
//! No test here sleeps in real time: move a [`ManualClock`] for expiry, and use tokio's paused
//! time (`#[tokio::test(start_paused = true)]`) for [`Fault::Delay`].
//!
//! # Conformance suite
//!
//! [`conformance!`] runs every case of the suite (listed in [`conformance::CASES`]) against a
//! backend made by a factory: a closure that receives a [`ConformanceContext`] and returns
//! `Result<B, BackendError>` for any `B: Backend`. Adding a backend is one line in its crate's
//! `tests/conformance.rs` (with `tierkit-testkit` as a dev-dependency):
//!
//! ```
//! # #![allow(unused_imports)] // the generated tests exist only under `cargo test`
//! use tierkit_testkit::{ConformanceContext, MemoryBackend};
//!
//! tierkit_testkit::conformance!(memory, |ctx: ConformanceContext| async move {
//!     Ok(MemoryBackend::new("memory").with_clock(ctx.clock()))
//! });
//! # fn main() {}
//! ```
//!
//! This generates a module `memory` with one `#[test]` per case, so `cargo test memory::overwrite`
//! runs one case. Each case runs on its own multi-threaded tokio runtime (two workers, every
//! driver this build of tokio has), so the test crate needs no tokio of its own. The factory:
//!
//! * must decide expiry with [`ctx.clock()`](ConformanceContext::clock), a [`ManualClock`]
//!   frozen at the real current time that cases move forward;
//! * must keep its keys under [`ctx.namespace()`](ConformanceContext::namespace) when the tier
//!   is shared (a Redis prefix, an S3 key prefix): a case may call the factory twice and
//!   expect `clear` on one backend to leave the other's keys alone;
//! * may fail (`Err`), which fails the case with the error, or return
//!   [`conformance::skip`]`(reason)` to skip the case (it then prints `skipped: reason`): for a
//!   server that is optional on a developer's machine. With `TIERKIT_REQUIRE_SERVICES` set (CI,
//!   `cargo xtask`), a skip fails the case instead.
//!
//! The cases are also `pub async fn`s in [`mod@conformance`], to call from a test of your own.
//! The suite covers: exact round trips (payload and timestamps), misses, overwrite, delete,
//! stale and expired values, setting expired values, empty, 1 MiB and 16 MiB payloads, binary
//! and Unicode keys up to [`CacheKey::MAX_LEN`](tierkit_core::CacheKey::MAX_LEN), 500 keys,
//! concurrent writers, `clear` per namespace, invalid input, and a [`probe`] that agrees with
//! `get`.
//!
//! [`probe`]: tierkit_core::Backend::probe

#![doc(test(attr(deny(warnings))))]
// This crate is test support: a failed expectation must fail the test that uses it, loudly and
// at once, so unwrap, expect and panic are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alloc;
pub mod conformance;
mod faulty;
mod gated;
pub mod logs;
mod memory;
mod offload;
mod scripted;
pub mod workload;

use std::time::Duration;

use bytes::Bytes;
use tierkit_core::{CacheKey, CacheValue};

pub use alloc::{Allocations, CountingAllocator, count_allocations, measure_allocations};
pub use conformance::ConformanceContext;
pub use faulty::{Fault, FaultyBackend, InjectedFault, injected_error};
pub use gated::GatedBackend;
pub use memory::{CallCounts, MemoryBackend};
pub use offload::ManualOffload;
pub use scripted::{Call, ScriptHandle, ScriptedBackend, scripted};
pub use tierkit_core::{Clock, ManualClock, Op, Timestamp};

/// A key from a string.
///
/// # Panics
///
/// When `s` is not a valid key (empty, or longer than
/// [`CacheKey::MAX_LEN`](tierkit_core::CacheKey::MAX_LEN)).
#[must_use]
pub fn key(s: &str) -> CacheKey {
    CacheKey::new(s).unwrap_or_else(|e| panic!("invalid test key {s:?}: {e}"))
}

/// A value created at `now` with `payload`, fresh for `ttl` and expiring when freshness ends
/// (shorthand for [`CacheValue::with_ttl`]).
#[must_use]
pub fn value(payload: impl Into<Bytes>, now: Timestamp, ttl: Duration) -> CacheValue {
    CacheValue::with_ttl(payload, now, ttl)
}
