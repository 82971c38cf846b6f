//! [`Throttles`]: the fail-safe throttles of a cache, kept apart from L1 so that an eviction
//! from L1 never lets a key call a failing origin again within its throttle window.
//!
//! L1 carries each throttle in its entry too, so reads of a throttled key that L1 still holds
//! are plain L1 hits that never look here. Only a flight about to call its loader with a stale
//! value in hand asks this table, and serves that value instead while the key is throttled.
//!
//! The table is bounded. When it is full of running throttles, the one ending first is evicted
//! and its end raises a *floor*: until then, every stale value written no later than the
//! evicted one's is throttled too. An eviction therefore never reopens the origin to a key
//! within its window; the price is that, while more keys fail at once than the table holds, a
//! stale key that did not fail itself may be served its stale value for up to one window.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tierkit_core::{CacheKey, Timestamp};

use crate::hit::FailSafeCause;

/// One key's throttle: the stale value (by its `created_at`) served without the loader until
/// `until`, and why fail-safe stepped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Throttle {
    pub(crate) until: Timestamp,
    pub(crate) cause: FailSafeCause,
    /// The `created_at` of the stale value the throttle serves: a newer value is not
    /// throttled.
    pub(crate) reserve: Timestamp,
}

/// The fail-safe throttles of a cache: at most `capacity` keys, and a floor for the keys
/// evicted before their throttle ended.
#[derive(Debug)]
pub(crate) struct Throttles {
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<CacheKey, Throttle>,
    /// Raised by evictions: throttles every reserve written at or before its `reserve`, until
    /// its `until`.
    floor: Option<Throttle>,
}

impl Throttles {
    /// An empty table of at most `capacity` keys (0: every throttle goes to the floor).
    pub(crate) fn new(capacity: usize) -> Self {
        Throttles {
            capacity,
            table: Mutex::new(Table::default()),
        }
    }

    /// Throttles `key` as `throttle` says, replacing its earlier throttle. A full table first
    /// drops the throttles over at `now`, then evicts the one ending first into the floor.
    pub(crate) fn record(&self, key: &CacheKey, throttle: Throttle, now: Timestamp) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.by_key.insert(key.clone(), throttle);
        if table.by_key.len() <= self.capacity {
            return;
        }
        table.by_key.retain(|_, kept| kept.until > now);
        while table.by_key.len() > self.capacity {
            let Some(first) = table
                .by_key
                .iter()
                .min_by_key(|(_, kept)| kept.until)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(evicted) = table.by_key.remove(&first) {
                table.floor = Some(match table.floor {
                    Some(floor) if floor.until > now => Throttle {
                        until: floor.until.max(evicted.until),
                        cause: evicted.cause,
                        reserve: floor.reserve.max(evicted.reserve),
                    },
                    _ => evicted,
                });
            }
        }
    }

    /// Whether `key`'s stale value written at `reserve` is throttled at `now`: the throttle's
    /// cause and end.
    pub(crate) fn get(
        &self,
        key: &CacheKey,
        reserve: Timestamp,
        now: Timestamp,
    ) -> Option<(FailSafeCause, Timestamp)> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let own = table
            .by_key
            .get(key)
            .filter(|throttle| throttle.reserve == reserve)
            .copied();
        let floor = table.floor.filter(|floor| reserve <= floor.reserve);
        own.into_iter()
            .chain(floor)
            .filter(|throttle| now < throttle.until)
            .max_by_key(|throttle| throttle.until)
            .map(|throttle| (throttle.cause, throttle.until))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(name: &str) -> CacheKey {
        CacheKey::new(name).unwrap_or_else(|_| unreachable!("a valid key"))
    }

    fn at(seconds: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH.saturating_add(Duration::from_secs(seconds))
    }

    fn throttle(until: u64, reserve: u64) -> Throttle {
        Throttle {
            until: at(until),
            cause: FailSafeCause::LoaderError,
            reserve: at(reserve),
        }
    }

    #[test]
    fn a_throttle_holds_for_its_own_reserve_until_it_ends() {
        let throttles = Throttles::new(4);
        throttles.record(&key("a"), throttle(30, 5), at(0));
        let cause = FailSafeCause::LoaderError;
        assert_eq!(
            throttles.get(&key("a"), at(5), at(29)),
            Some((cause, at(30)))
        );
        assert_eq!(throttles.get(&key("a"), at(5), at(30)), None, "ended");
        assert_eq!(
            throttles.get(&key("a"), at(6), at(1)),
            None,
            "a newer value"
        );
        assert_eq!(throttles.get(&key("b"), at(5), at(1)), None, "another key");
    }

    #[test]
    fn an_eviction_keeps_the_evicted_key_throttled_through_the_floor() {
        let throttles = Throttles::new(2);
        throttles.record(&key("a"), throttle(10, 1), at(0));
        throttles.record(&key("b"), throttle(20, 2), at(0));
        throttles.record(&key("c"), throttle(30, 3), at(0));
        // `a` ended first: evicted, still throttled by the floor until its end.
        let floor = Some((FailSafeCause::LoaderError, at(10)));
        assert_eq!(throttles.get(&key("a"), at(1), at(9)), floor);
        assert_eq!(throttles.get(&key("a"), at(1), at(10)), None);
        // The floor covers older reserves of other keys, not newer ones.
        assert_eq!(throttles.get(&key("z"), at(0), at(9)), floor);
        assert_eq!(throttles.get(&key("z"), at(2), at(9)), None);
        assert_eq!(
            throttles.get(&key("c"), at(3), at(9)),
            Some((FailSafeCause::LoaderError, at(30)))
        );
    }

    #[test]
    fn a_full_table_drops_ended_throttles_before_evicting() {
        let throttles = Throttles::new(1);
        throttles.record(&key("a"), throttle(10, 1), at(0));
        throttles.record(&key("b"), throttle(30, 2), at(15));
        assert_eq!(throttles.get(&key("a"), at(1), at(16)), None, "no floor");
        assert_eq!(
            throttles.get(&key("b"), at(2), at(16)),
            Some((FailSafeCause::LoaderError, at(30)))
        );
    }
}
