//! Jitter: random extensions of L1 freshness, so that keys loaded together do not all go stale
//! (and reload) together.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Draws the jitter added to a value's freshness in L1 (see
/// [`FetchOptions::jitter_max`](crate::FetchOptions::jitter_max)).
///
/// The default, [`RandomJitter`], draws uniformly; tests inject a source of their own to make
/// expiry deterministic.
pub trait JitterSource: Send + Sync + fmt::Debug + 'static {
    /// A duration in `[0, max]`.
    fn jitter(&self, max: Duration) -> Duration;
}

/// Uniform jitter from a fast per-thread generator (xorshift64*, seeded from the standard
/// library's per-process random keys). Not for cryptography.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomJitter;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    // Never zero: xorshift stays at zero forever.
    hasher.finish() | 1
}

fn next() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl JitterSource for RandomJitter {
    fn jitter(&self, max: Duration) -> Duration {
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max_nanos == 0 {
            return Duration::ZERO;
        }
        // Modulo bias is at most max / 2^64: irrelevant for spreading expiries.
        Duration::from_nanos(next() % max_nanos.saturating_add(1).max(1))
    }
}

/// No jitter: freshness ends exactly at `stale_at` in every tier.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJitter;

impl JitterSource for NoJitter {
    fn jitter(&self, _max: Duration) -> Duration {
        Duration::ZERO
    }
}
