//! The [`Composition`] over testkit tiers: the synchronous L1 hit, refill, freshness and
//! expiry across tiers, writes and removals reaching both tiers, timeouts, nesting, erasure,
//! labels and span paths.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use common::{expect_pending, expect_ready};
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, ManualClock, Op, Probe,
    SharedBackend, Timestamp,
};
use tierkit_policy::{
    AnyReadPolicy, AnyWritePolicy, Composition, CompositionError, Layer, RefillPolicy,
};
use tierkit_testkit::logs::capture;
use tierkit_testkit::{
    CallCounts, Fault, FaultyBackend, ManualOffload, MemoryBackend, injected_error, key, scripted,
};
use tracing::Level;

const READ_POLICIES: [&str; 4] = ["sequential", "race", "race-finish", "parallel"];
const WRITE_POLICIES: [&str; 3] = ["sequential", "optimistic-parallel", "race"];

fn read_policy(name: &str) -> AnyReadPolicy {
    name.parse().expect("known read policy")
}

fn write_policy(name: &str) -> AnyWritePolicy {
    name.parse().expect("known write policy")
}

fn manual_clock() -> ManualClock {
    ManualClock::new(Timestamp::from_unix_millis(common::NOW_MS))
}

/// An in-process tier (`memory`, answering synchronously) on `clock`.
fn near(clock: &ManualClock) -> MemoryBackend {
    MemoryBackend::new("memory").with_clock(Clock::from(clock.clone()))
}

/// A remote-like tier (`remote`, answering after a yield) on `clock`.
fn far(clock: &ManualClock) -> MemoryBackend {
    MemoryBackend::new("remote")
        .with_clock(Clock::from(clock.clone()))
        .remote()
}

/// A value created now, fresh for 60 s, then stale for 60 s more.
fn fresh_value(payload: &'static str, clock: &ManualClock) -> CacheValue {
    CacheValue::with_ttl(payload.as_bytes(), clock.now(), Duration::from_secs(60))
        .with_stale_for(Duration::from_secs(60))
}

/// A value created 90 s ago: stale now, expiring in 30 s.
fn stale_value(payload: &'static str, clock: &ManualClock) -> CacheValue {
    let created = clock.now().saturating_sub(Duration::from_secs(90));
    CacheValue::with_ttl(payload.as_bytes(), created, Duration::from_secs(60))
        .with_stale_for(Duration::from_secs(60))
}

// ---------------------------------------------------------------------------------------------
// The L1 hit

#[tokio::test]
async fn fresh_l1_hit_is_a_ready_future_without_l2_calls_for_sequential_and_race() {
    for read in ["sequential", "race", "race-finish"] {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("hit");
        let v = fresh_value("v", &clock);
        l1.insert_raw(k.clone(), v.clone());

        let answer = cache.get(&k);
        assert!(answer.is_ready(), "{read}: an L1 hit is answered at once");
        assert_eq!(answer.await.expect("hit"), Some(v.clone()), "{read}");
        assert_eq!(
            cache.probe(&k),
            Probe::Fresh(v),
            "{read}: the probe forwards it"
        );
        assert_eq!(l2.calls(), CallCounts::default(), "{read}: L2 never called");
        assert_eq!(l1.calls().get, 2, "{read}: one L1 probe per read");
    }
}

#[tokio::test]
async fn parallel_read_asks_l2_even_on_a_fresh_l1_hit() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let cache = Composition::builder(l1.clone(), l2.clone())
        .read_policy(read_policy("parallel"))
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("hit");
    let v = fresh_value("v", &clock);
    l1.insert_raw(k.clone(), v.clone());

    let answer = cache.get(&k);
    assert!(!answer.is_ready());
    assert_eq!(answer.await.expect("hit"), Some(v));
    assert_eq!(cache.probe(&k), Probe::Unknown);
    assert_eq!(l2.calls().get, 1);
    assert_eq!(l1.calls().set, 0, "L2 missed: nothing to refill");
}

#[tokio::test]
async fn l1_hit_through_arc_dyn_backend_is_ready() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let k = key("hit");
    let v = fresh_value("v", &clock);
    l1.insert_raw(k.clone(), v.clone());

    // The whole stack erased.
    let erased: SharedBackend = Arc::new(
        Composition::builder(l1.clone(), l2.clone())
            .clock(Clock::from(clock.clone()))
            .build(),
    );
    let answer = erased.get(&k);
    assert!(answer.is_ready());
    assert_eq!(answer.await.expect("hit"), Some(v.clone()));

    // Erased tiers inside a composition, itself erased.
    let tiers: (SharedBackend, SharedBackend) = (Arc::new(l1.clone()), Arc::new(l2.clone()));
    let erased_tiers: SharedBackend = Arc::new(
        Composition::builder(tiers.0, tiers.1)
            .clock(Clock::from(clock.clone()))
            .build(),
    );
    let answer = erased_tiers.get(&k);
    assert!(answer.is_ready());
    assert_eq!(answer.await.expect("hit"), Some(v));
    assert_eq!(l2.calls(), CallCounts::default());
}

#[tokio::test]
async fn probe_answers_only_fresh_l1_hits() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let cache = Composition::builder(l1.clone(), l2.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let (k_stale, k_l2) = (key("stale"), key("only-in-l2"));
    l1.insert_raw(k_stale.clone(), stale_value("s", &clock));
    l2.insert_raw(k_l2.clone(), fresh_value("v", &clock));
    // A stale value or a miss in L1 says nothing of L2.
    assert_eq!(cache.probe(&k_stale), Probe::Unknown);
    assert_eq!(cache.probe(&k_l2), Probe::Unknown);
    assert_eq!(l2.calls(), CallCounts::default());
}

// ---------------------------------------------------------------------------------------------
// Refill

#[tokio::test]
async fn l2_hit_refills_l1_with_identical_timestamps() {
    for read in READ_POLICIES {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .refill_policy(RefillPolicy::Always)
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        // Created earlier, so that a refill that restamped the value would show.
        clock.advance(Duration::from_secs(10));
        let v = stale_value("v", &clock);
        l2.insert_raw(k.clone(), v.clone());

        assert_eq!(
            cache.get(&k).await.expect("L2 hit"),
            Some(v.clone()),
            "{read}"
        );
        assert_eq!(l1.peek(&k), Some(v.clone()), "{read}: refilled unchanged");
        assert_eq!(l1.calls().set, 1, "{read}");
    }
}

#[tokio::test]
async fn refilled_fresh_value_makes_the_next_read_an_l1_hit() {
    for read in ["sequential", "race", "race-finish"] {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let v = fresh_value("v", &clock);
        l2.insert_raw(k.clone(), v.clone());
        assert_eq!(cache.get(&k).await.expect("L2 hit"), Some(v.clone()));
        let again = cache.get(&k);
        assert!(again.is_ready(), "{read}");
        assert_eq!(again.await.expect("L1 hit"), Some(v));
        assert_eq!(l2.calls().get, 1, "{read}");
    }
}

#[tokio::test]
async fn refill_never_leaves_l1_alone() {
    for read in READ_POLICIES {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .refill_policy(RefillPolicy::Never)
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let v = fresh_value("v", &clock);
        l2.insert_raw(k.clone(), v.clone());
        assert_eq!(cache.get(&k).await.expect("L2 hit"), Some(v), "{read}");
        assert_eq!(l1.peek(&k), None, "{read}");
        assert_eq!(l1.calls().set, 0, "{read}");
    }
}

#[tokio::test]
async fn refill_failure_does_not_fail_the_read() {
    for read in READ_POLICIES {
        let logs = capture(Level::WARN);
        let clock = manual_clock();
        let (memory1, l2) = (near(&clock), far(&clock));
        let l1 = FaultyBackend::new(memory1.clone());
        l1.push(Op::Set, Fault::Fail(ErrorKind::Internal));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let v = fresh_value("v", &clock);
        l2.insert_raw(k.clone(), v.clone());

        assert_eq!(cache.get(&k).await.expect("served"), Some(v), "{read}");
        assert_eq!(l1.calls().set, 1, "{read}: the refill was attempted");
        assert_eq!(memory1.peek(&k), None, "{read}");
        let error = injected_error("memory", Op::Set, ErrorKind::Internal);
        logs.assert_lines(
            1,
            &[
                "WARN",
                "refill failed",
                "tier=l1 (memory)",
                &error.to_string(),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Freshness and expiry across tiers

#[tokio::test]
async fn stale_l1_value_loses_to_fresh_l2_value() {
    for read in READ_POLICIES {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let (old, new) = (stale_value("old", &clock), fresh_value("new", &clock));
        l1.insert_raw(k.clone(), old);
        l2.insert_raw(k.clone(), new.clone());
        assert_eq!(
            cache.get(&k).await.expect("hit"),
            Some(new.clone()),
            "{read}"
        );
        assert_eq!(
            l1.peek(&k),
            Some(new),
            "{read}: the better value was refilled"
        );
    }
}

#[tokio::test]
async fn stale_l1_value_is_served_when_l2_misses() {
    for read in READ_POLICIES {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let old = stale_value("old", &clock);
        l1.insert_raw(k.clone(), old.clone());
        assert_eq!(cache.get(&k).await.expect("stale hit"), Some(old), "{read}");
        assert_eq!(l2.calls().get, 1, "{read}: a stale L1 value asks L2");
    }
}

#[tokio::test]
async fn expired_values_are_never_returned() {
    for read in READ_POLICIES {
        for (in_l1, in_l2) in [(true, false), (false, true), (true, true)] {
            let clock = manual_clock();
            let (l1, l2) = (near(&clock), far(&clock));
            let cache = Composition::builder(l1.clone(), l2.clone())
                .read_policy(read_policy(read))
                .clock(Clock::from(clock.clone()))
                .build();
            let k = key("k");
            let v = CacheValue::with_ttl(&b"v"[..], clock.now(), Duration::from_secs(10));
            if in_l1 {
                l1.insert_raw(k.clone(), v.clone());
            }
            if in_l2 {
                l2.insert_raw(k.clone(), v.clone());
            }
            // Exactly at `expires_at`: expired.
            clock.advance(Duration::from_secs(10));
            assert_eq!(cache.get(&k).await.expect("no error"), None, "{read}");
            assert_eq!(l1.calls().set, 0, "{read}: nothing refilled");
        }
    }
}

/// Tiers whose own clocks lag behind the composition's still return a value the composition
/// considers expired; the composition drops it, whichever tier returns it through `get`. The
/// one exception is documented: a fresh hit that L1 answers synchronously through its probe is
/// judged by L1's clock (the read L1 makes anyway), which is why every tier of a stack should
/// share the composition's clock.
#[tokio::test]
async fn expired_values_from_lagging_tiers_are_dropped_by_the_composition() {
    for read in READ_POLICIES {
        let tier_clock = manual_clock();
        let clock = manual_clock();
        let (l1, l2) = (near(&tier_clock), far(&tier_clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .read_policy(read_policy(read))
            .clock(Clock::from(clock.clone()))
            .build();
        let (k1, k2, k3) = (key("in-l1"), key("in-l2"), key("expired-l1-fresh-l2"));
        let short = CacheValue::with_ttl(&b"short"[..], clock.now(), Duration::from_secs(10));
        let long = CacheValue::with_ttl(&b"long"[..], clock.now(), Duration::from_secs(60));
        l1.insert_raw(k1.clone(), short.clone());
        l2.insert_raw(k2.clone(), short.clone());
        l1.insert_raw(k3.clone(), short.clone());
        l2.insert_raw(k3.clone(), long.clone());

        clock.advance(Duration::from_secs(10));
        assert_eq!(l1.peek(&k1), Some(short.clone()), "the tier still holds it");
        assert_eq!(cache.get(&k2).await.expect("no error"), None, "{read}");
        if read == "parallel" {
            // No synchronous fast path: every value is judged by the composition's clock.
            assert_eq!(cache.get(&k1).await.expect("no error"), None, "{read}");
            assert_eq!(
                cache.get(&k3).await.expect("no error"),
                Some(long.clone()),
                "{read}"
            );
            // Only the unexpired value was refilled.
            assert_eq!(l1.calls().set, 1, "{read}");
            assert_eq!(l1.peek(&k3), Some(long), "{read}");
        } else {
            // L1's probe, by L1's lagging clock, still calls these fresh.
            assert_eq!(
                cache.get(&k1).await.expect("no error"),
                Some(short.clone()),
                "{read}"
            );
            assert_eq!(
                cache.get(&k3).await.expect("no error"),
                Some(short),
                "{read}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writes and removals

#[tokio::test]
async fn set_reaches_both_tiers_with_identical_values() {
    for write in WRITE_POLICIES {
        let clock = manual_clock();
        let (l1, l2) = (near(&clock), far(&clock));
        let offload = ManualOffload::new();
        let cache = Composition::builder(l1.clone(), l2.clone())
            .write_policy(write_policy(write))
            .offload(offload.clone())
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let v = stale_value("v", &clock);
        cache.set(&k, v.clone()).await.expect("written");
        assert_eq!(l1.peek(&k), Some(v.clone()), "{write}");
        if write == "race" {
            // L1 answered first; L2's write completes on the offload.
            assert_eq!(offload.queued(), 1);
            assert_eq!(l2.peek(&k), None);
            assert!(offload.run_all().await.iter().all(Result::is_ok));
        }
        assert_eq!(l2.peek(&k), Some(v), "{write}");
        assert_eq!((l1.calls().set, l2.calls().set), (1, 1), "{write}");
    }
}

#[tokio::test]
async fn delete_and_clear_remove_from_both_tiers() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let cache = Composition::builder(l1.clone(), l2.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let (a, b) = (key("a"), key("b"));
    for k in [&a, &b] {
        cache.set(k, fresh_value("v", &clock)).await.expect("set");
    }
    cache.delete(&a).await.expect("deleted");
    assert_eq!((l1.peek(&a), l2.peek(&a)), (None, None));
    assert!(l1.peek(&b).is_some() && l2.peek(&b).is_some());
    // Deleting an absent key is Ok.
    cache.delete(&a).await.expect("absent key");
    cache.clear().await.expect("cleared");
    assert!(l1.is_empty() && l2.is_empty());
}

/// Removals go to L2 first, then L1, so that a concurrent reader cannot refill L1 from an L2
/// entry about to go.
#[tokio::test]
async fn removals_go_to_l2_then_l1() {
    let (l1, mut h1) = scripted("near");
    let (l2, mut h2) = scripted("far");
    let cache = Composition::new(l1, l2);
    let k = key("k");
    for op in [Op::Delete, Op::Clear] {
        let mut removal = pin!(if op == Op::Delete {
            cache.delete(&k)
        } else {
            cache.clear()
        });
        expect_pending(&mut removal).await;
        assert!(h1.try_next_call().is_none(), "L1 waits for L2");
        let call = h2.try_next_call().expect("L2 first");
        assert_eq!(call.op(), op);
        call.respond_ok();
        expect_pending(&mut removal).await;
        let call = h1.try_next_call().expect("then L1");
        assert_eq!(call.op(), op);
        call.respond_ok();
        expect_ready(&mut removal).await.expect("removed");
    }
}

#[tokio::test]
async fn removal_failures() {
    for op in [Op::Delete, Op::Clear] {
        let clock = manual_clock();
        let (memory1, memory2) = (near(&clock), far(&clock));
        let (l1, l2) = (
            FaultyBackend::new(memory1.clone()),
            FaultyBackend::new(memory2.clone()),
        );
        let cache = Composition::builder(l1.clone(), l2.clone())
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let remove = || async {
            if op == Op::Delete {
                cache.delete(&k).await
            } else {
                cache.clear().await
            }
        };

        // One tier fails: that tier's error; the other tier's removal still happens.
        for failing in [1, 2] {
            cache.set(&k, fresh_value("v", &clock)).await.expect("set");
            let (faulty, label, other) = if failing == 1 {
                (&l1, "memory", &memory2)
            } else {
                (&l2, "remote", &memory1)
            };
            faulty.push(op, Fault::Fail(ErrorKind::PermissionDenied));
            let err = remove().await.expect_err("one tier failed");
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{op}");
            assert_eq!(err.tier_label(), Some(label), "{op}");
            assert_eq!(other.peek(&k), None, "{op}: the other tier removed it");
        }

        // Both fail: BothLayersFailed with both causes.
        cache.set(&k, fresh_value("v", &clock)).await.expect("set");
        l1.push(op, Fault::Fail(ErrorKind::PermissionDenied));
        l2.push(op, Fault::Fail(ErrorKind::Connection));
        let err = remove().await.expect_err("both failed");
        match CompositionError::from_backend_error(&err) {
            Some(CompositionError::BothLayersFailed { l1, l2 }) => {
                let expected = injected_error("memory", op, ErrorKind::PermissionDenied);
                assert_eq!(l1.to_string(), expected.to_string());
                assert_eq!(l1.kind(), ErrorKind::PermissionDenied);
                assert_eq!(l1.tier_label(), Some("memory"));
                assert_eq!(l2.kind(), ErrorKind::Connection);
                assert_eq!(l2.tier_label(), Some("remote"));
            }
            other => panic!("expected BothLayersFailed, got {other:?}"),
        }
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert!(memory1.peek(&k).is_some() && memory2.peek(&k).is_some());
    }
}

/// A failure of both tiers is one chain: the composite says a composition failed, its source
/// (the `CompositionError`) names each tier's failure, and no message repeats the one below it.
#[tokio::test(start_paused = true)]
async fn a_failure_of_both_tiers_reports_each_message_once() {
    let clock = manual_clock();
    let (l1, l2) = (
        FaultyBackend::new(near(&clock)),
        FaultyBackend::new(far(&clock)),
    );
    let cache = Composition::builder(l1.clone(), l2.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    l1.push(Op::Delete, Fault::Fail(ErrorKind::PermissionDenied));
    l2.push(Op::Delete, Fault::Fail(ErrorKind::Connection));
    let err = cache.delete(&key("k")).await.expect_err("both failed");

    let chain: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |&e| {
            e.source()
        })
        .collect();
    let messages: Vec<String> = chain.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "a composition of tiers failed (connection)",
            "both tiers failed: l1: memory: delete failed (permission_denied); \
             l2: remote: delete failed: connection error",
        ]
    );
    assert!(chain[1].downcast_ref::<CompositionError>().is_some());
}

// ---------------------------------------------------------------------------------------------
// Timeouts (tokio's paused time: no real waiting)

#[tokio::test(start_paused = true)]
async fn l2_timeout_turns_a_hang_into_a_timeout() {
    let limit = Duration::from_millis(250);
    let clock = manual_clock();
    let (memory1, memory2) = (near(&clock), far(&clock));
    let (l1, l2) = (
        FaultyBackend::new(memory1.clone()),
        FaultyBackend::new(memory2.clone()),
    );
    let cache = Composition::builder(l1.clone(), l2.clone())
        .l1_timeout(limit)
        .l2_timeout(limit)
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");

    // A read that must ask L2.
    l2.always(Op::Get, Fault::Hang);
    let started = tokio::time::Instant::now();
    let err = cache.get(&k).await.expect_err("L2 hung, L1 missed");
    assert_eq!(started.elapsed(), limit);
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_transient());
    assert_eq!(err.tier_label(), Some("remote"));
    assert!(matches!(err, BackendError::Timeout { op: Op::Get, after, .. } if after == limit));

    // A write: L1 holds the value, L2's hang is a logged timeout.
    l2.always(Op::Set, Fault::Hang);
    let v = fresh_value("v", &clock);
    cache.set(&k, v.clone()).await.expect("L1 written");
    assert_eq!(memory1.peek(&k), Some(v.clone()));

    // Both tiers hang: both time out.
    l1.always(Op::Set, Fault::Hang);
    let err = cache.set(&k, v).await.expect_err("both hung");
    match CompositionError::from_backend_error(&err) {
        Some(CompositionError::BothLayersFailed { l1, l2 }) => {
            assert_eq!(
                (l1.kind(), l2.kind()),
                (ErrorKind::Timeout, ErrorKind::Timeout)
            );
            assert_eq!(
                (l1.tier_label(), l2.tier_label()),
                (Some("memory"), Some("remote"))
            );
        }
        other => panic!("expected BothLayersFailed, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

// ---------------------------------------------------------------------------------------------
// Nesting and erasure

/// The three tiers of a stack, and the clock they share.
struct ThreeTiers {
    clock: ManualClock,
    t1: MemoryBackend,
    t2: MemoryBackend,
    t3: MemoryBackend,
}

impl ThreeTiers {
    fn new() -> Self {
        let clock = manual_clock();
        ThreeTiers {
            t1: MemoryBackend::new("t1").with_clock(Clock::from(clock.clone())),
            t2: MemoryBackend::new("t2")
                .with_clock(Clock::from(clock.clone()))
                .remote(),
            t3: MemoryBackend::new("t3")
                .with_clock(Clock::from(clock.clone()))
                .remote(),
            clock,
        }
    }

    fn clock(&self) -> Clock {
        Clock::from(self.clock.clone())
    }

    /// What every tier holds for `keys`, and the calls each received.
    fn snapshot(&self, keys: &[CacheKey]) -> (Vec<Option<CacheValue>>, [CallCounts; 3]) {
        let tiers = [&self.t1, &self.t2, &self.t3];
        let held = tiers
            .iter()
            .flat_map(|tier| keys.iter().map(|k| tier.peek(k)))
            .collect();
        (held, tiers.map(MemoryBackend::calls))
    }
}

type Held = Vec<Option<CacheValue>>;

/// One step of the scenario: what the stack returned, and what every tier held after it.
#[derive(Debug, PartialEq)]
struct Step {
    what: &'static str,
    returned: Result<Option<CacheValue>, ErrorKind>,
    held: Held,
    calls: [CallCounts; 3],
}

/// The same scenario on any stack over `tiers`: writes, reads through to the third tier,
/// refills at two levels, staleness, expiry, removals.
async fn scenario(stack: &dyn Backend, tiers: &ThreeTiers) -> Vec<Step> {
    let (k1, k2, k3) = (key("k1"), key("k2"), key("k3"));
    let keys = [k1.clone(), k2.clone(), k3.clone()];
    let clock = &tiers.clock;
    let mut steps = Vec::new();
    let mut record = |what, returned: Result<Option<CacheValue>, BackendError>| {
        let (held, calls) = tiers.snapshot(&keys);
        steps.push(Step {
            what,
            returned: returned.map_err(|e| e.kind()),
            held,
            calls,
        });
    };

    let v1 = fresh_value("v1", clock);
    record("set k1", stack.set(&k1, v1.clone()).await.map(|()| None));
    record("get k1 (L1 hit)", stack.get(&k1).await);

    // Only the third tier keeps k1: the read goes through and refills both levels.
    tiers.t1.delete(&k1).await.expect("delete");
    tiers.t2.delete(&k1).await.expect("delete");
    clock.advance(Duration::from_secs(5));
    record("get k1 (from t3)", stack.get(&k1).await);

    // A stale value in t1, a fresh one in t3 only.
    tiers.t1.insert_raw(k2.clone(), stale_value("old", clock));
    tiers.t3.insert_raw(k2.clone(), fresh_value("new", clock));
    record("get k2 (stale t1, fresh t3)", stack.get(&k2).await);

    // Everything goes stale: the stale value is served.
    clock.advance(Duration::from_secs(70));
    record("get k1 (stale everywhere)", stack.get(&k1).await);

    // And then expires.
    clock.advance(Duration::from_secs(60));
    record("get k1 (expired)", stack.get(&k1).await);

    let v3 = fresh_value("v3", clock);
    record("set k3", stack.set(&k3, v3).await.map(|()| None));
    record("delete k3", stack.delete(&k3).await.map(|()| None));
    record("get k3 (deleted)", stack.get(&k3).await);
    record("clear", stack.clear().await.map(|()| None));
    record("get k2 (cleared)", stack.get(&k2).await);
    steps
}

#[tokio::test]
async fn nested_stack_behaves_the_same_erased() {
    // Concrete: Composition<MemoryBackend, Composition<MemoryBackend, MemoryBackend>>.
    let concrete_tiers = ThreeTiers::new();
    let concrete = Composition::builder(
        concrete_tiers.t1.clone(),
        Composition::builder(concrete_tiers.t2.clone(), concrete_tiers.t3.clone())
            .clock(concrete_tiers.clock())
            .build(),
    )
    .clock(concrete_tiers.clock())
    .build();
    assert_eq!(concrete.label(), "t1+t2+t3");
    let concrete_steps = scenario(&concrete, &concrete_tiers).await;

    // Erased at every level.
    let erased_tiers = ThreeTiers::new();
    let t1: SharedBackend = Arc::new(erased_tiers.t1.clone());
    let t2: SharedBackend = Arc::new(erased_tiers.t2.clone());
    let t3: SharedBackend = Arc::new(erased_tiers.t3.clone());
    let inner: SharedBackend = Arc::new(
        Composition::builder(t2, t3)
            .clock(erased_tiers.clock())
            .build(),
    );
    let erased: SharedBackend = Arc::new(
        Composition::builder(t1, inner)
            .clock(erased_tiers.clock())
            .build(),
    );
    assert_eq!(erased.label(), "t1+t2+t3");
    let erased_steps = scenario(&*erased, &erased_tiers).await;

    assert_eq!(concrete_steps, erased_steps);

    // And the scenario did what it says, so the comparison is not vacuous.
    let clock = manual_clock();
    let v1 = fresh_value("v1", &clock);
    let by_name = |what: &str| {
        concrete_steps
            .iter()
            .find(|s| s.what == what)
            .unwrap_or_else(|| panic!("no step {what}"))
    };
    // held = [t1 k1, t1 k2, t1 k3, t2 k1, t2 k2, t2 k3, t3 k1, t3 k2, t3 k3]
    let after_set = by_name("set k1");
    assert_eq!(
        [&after_set.held[0], &after_set.held[3], &after_set.held[6]],
        [&Some(v1.clone()); 3]
    );
    let through = by_name("get k1 (from t3)");
    assert_eq!(through.returned, Ok(Some(v1.clone())));
    assert_eq!(
        [&through.held[0], &through.held[3], &through.held[6]],
        [&Some(v1.clone()); 3],
        "refilled into t2 and t1 with its timestamps"
    );
    let better = by_name("get k2 (stale t1, fresh t3)");
    let new = better.returned.clone().expect("no error").expect("a value");
    assert_eq!(new.payload().as_ref(), b"new");
    assert_eq!(
        [&better.held[1], &better.held[4], &better.held[7]],
        [&Some(new.clone()); 3]
    );
    assert_eq!(by_name("get k1 (stale everywhere)").returned, Ok(Some(v1)));
    assert_eq!(by_name("get k1 (expired)").returned, Ok(None));
    assert_eq!(by_name("get k3 (deleted)").returned, Ok(None));
    let cleared = by_name("get k2 (cleared)");
    assert_eq!(cleared.returned, Ok(None));
    assert!(cleared.held.iter().all(Option::is_none));
}

// ---------------------------------------------------------------------------------------------
// Labels and span paths

#[test]
fn composition_labels() {
    let (a, b, c) = (
        MemoryBackend::new("a"),
        MemoryBackend::new("b"),
        MemoryBackend::new("c"),
    );
    assert_eq!(Composition::new(a.clone(), b.clone()).label(), "a+b");
    assert_eq!(
        Composition::new(a.clone(), Composition::new(b.clone(), c)).label(),
        "a+b+c"
    );
    assert_eq!(
        Composition::builder(a, b).label("edge").build().label(),
        "edge"
    );
}

#[tokio::test]
async fn nested_tiers_spans_carry_their_paths() {
    let logs = capture(Level::DEBUG);
    let clock = manual_clock();
    let memory = |label: &str| MemoryBackend::new(label).with_clock(Clock::from(clock.clone()));
    let (a, b, c) = (memory("a"), memory("b").remote(), memory("c").remote());
    let cache = Composition::builder(
        a.clone(),
        Composition::builder(b.clone(), c.clone())
            .clock(Clock::from(clock.clone()))
            .build(),
    )
    .clock(Clock::from(clock.clone()))
    .build();
    let k = key("k");

    cache.set(&k, fresh_value("v", &clock)).await.expect("set");
    for (path, backend) in [("l1", "a"), ("l2", "b+c"), ("l2.l1", "b"), ("l2.l2", "c")] {
        logs.assert_line(&[
            "tierkit.tier{",
            &format!("tier={path} backend={backend} op=set}}"),
        ]);
    }

    // A read through to the third tier, refilled at both levels.
    a.delete(&k).await.expect("delete");
    b.delete(&k).await.expect("delete");
    assert!(cache.get(&k).await.expect("read").is_some());
    for (path, backend, op) in [
        ("l2", "b+c", "get"),
        ("l2.l2", "c", "get"),
        ("l2.l1", "b", "refill"),
        ("l1", "a", "refill"),
    ] {
        logs.assert_line(&[
            "tierkit.tier{",
            &format!("tier={path} backend={backend} op={op}}}"),
        ]);
    }
}

// (A composition used on its own and nested later: crates/tierkit/tests/metrics.rs.)

// ---------------------------------------------------------------------------------------------
// Known issue, reported to the lead: the desired behaviour, ignored until decided.

/// A race write's loser, still on the offload, lands after a later `delete` of the same key:
/// the deleted value comes back from L2 (and is refilled into L1). Today the last read returns
/// `Some(v1)`.
#[tokio::test]
async fn race_write_loser_does_not_resurrect_a_deleted_key() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let offload = ManualOffload::new();
    let cache = Composition::builder(l1, l2)
        .write_policy(write_policy("race"))
        .offload(offload.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");
    cache.set(&k, fresh_value("v1", &clock)).await.expect("set");
    // L2's write of v1 runs while the delete waits for the key's operations on L2 to settle.
    let (deleted, ran) = tokio::join!(cache.delete(&k), async {
        tokio::task::yield_now().await;
        offload.run_all().await
    });
    deleted.expect("delete");
    assert!(ran.iter().all(Result::is_ok));
    assert_eq!(
        cache.get(&k).await.expect("read"),
        None,
        "deleted key came back"
    );
    assert_eq!(cache.keys_in_flight(), 0);
}

#[tokio::test]
async fn a_refill_racing_a_delete_does_not_bring_the_key_back() {
    let clock = manual_clock();
    let l1 = near(&clock);
    let (l2, mut l2_calls) = scripted("remote");
    let cache = Composition::builder(l1.clone(), l2)
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");

    // The read misses L1 and waits on L2.
    let mut read = pin!(cache.get(&k));
    expect_pending(&mut read).await;
    let l2_read = l2_calls.next_call().await;
    assert_eq!(l2_read.op(), Op::Get);

    // A delete overtakes it.
    let mut delete = pin!(cache.delete(&k));
    expect_pending(&mut delete).await;
    l2_calls.next_call().await.respond_ok();
    expect_ready(&mut delete).await.expect("delete");

    // L2 now answers the read with the value it held before the delete.
    l2_read.respond_hit(fresh_value("old", &clock));
    let served = expect_ready(&mut read).await.expect("read");
    assert_eq!(served.map(|v| v.into_payload()), Some("old".into()));
    assert_eq!(
        l1.peek(&k),
        None,
        "the refill must not resurrect a deleted key in L1"
    );
    assert_eq!(cache.keys_in_flight(), 0);
}

/// A read that starts while a delete (or clear) is running, and whose L2 answer was read
/// before the removal landed but arrives after it returned (another connection of a pool, a
/// slow body), must not copy the removed value into L1.
#[tokio::test]
async fn a_read_that_starts_during_a_removal_does_not_refill_the_removed_value() {
    for clear in [false, true] {
        let clock = manual_clock();
        let l1 = near(&clock);
        let (l2, mut l2_calls) = scripted("remote");
        let cache = Composition::builder(l1.clone(), l2)
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");

        // The removal starts: its L2 half is pending.
        let mut removal = pin!(async {
            if clear {
                cache.clear().await
            } else {
                cache.delete(&k).await
            }
        });
        expect_pending(&mut removal).await;
        let l2_removal = l2_calls.next_call().await;

        // A read starts meanwhile, misses L1 and asks L2.
        let mut read = pin!(cache.get(&k));
        expect_pending(&mut read).await;
        let l2_read = l2_calls.next_call().await;
        assert_eq!(l2_read.op(), Op::Get);

        // The removal lands and returns.
        l2_removal.respond_ok();
        expect_ready(&mut removal).await.expect("removal");

        // The read's answer, read before the removal landed, arrives now.
        l2_read.respond_hit(fresh_value("old", &clock));
        expect_ready(&mut read).await.expect("read");
        assert_eq!(
            l1.peek(&k),
            None,
            "clear={clear}: a value removed before the read returned was refilled into L1"
        );
        assert_eq!(cache.keys_in_flight(), 0);
    }
}

/// `clear` walks a whole tier (a Redis SCAN, an S3 listing): the per-operation bounds meant
/// for a single key do not apply to it; it has a bound of its own.
#[tokio::test(start_paused = true)]
async fn a_clear_is_bounded_by_its_own_timeout_not_the_per_operation_ones() {
    let clock = manual_clock();
    let l1 = near(&clock);
    let l2 = FaultyBackend::new(far(&clock));
    let cache = Composition::builder(l1, l2.clone())
        .clock(Clock::from(clock.clone()))
        .l1_timeout(Duration::from_millis(100))
        .l2_timeout(Duration::from_millis(100))
        .build();
    let k = key("k");
    cache.set(&k, fresh_value("v", &clock)).await.expect("set");
    // A clear of a large L2 takes 5 s: well within the default clear bound.
    l2.push(Op::Clear, Fault::Delay(Duration::from_secs(5)));
    cache.clear().await.expect("a long clear completes");
    assert_eq!(l2.inner().peek(&k), None);

    // A clear that takes longer than its own bound fails with a timeout.
    let cache = Composition::builder(near(&clock), l2.clone())
        .clock(Clock::from(clock.clone()))
        .clear_timeout(Duration::from_secs(1))
        .build();
    l2.push(Op::Clear, Fault::Hang);
    let error = cache.clear().await.expect_err("the clear hung");
    assert_eq!(error.kind(), ErrorKind::Timeout);
}

/// A clear that fails on one tier must not leave that tier serving what the other cleared:
/// until a clear succeeds on both tiers, values written before the failed clear began are
/// neither served nor refilled, from any tier.
#[tokio::test(start_paused = true)]
async fn a_failed_clear_leaves_no_tier_serving_what_the_other_cleared() {
    for failing in [Layer::L1, Layer::L2] {
        let clock = manual_clock();
        let l1 = FaultyBackend::new(near(&clock));
        let l2 = FaultyBackend::new(far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .clock(Clock::from(clock.clone()))
            .build();
        let (a, b) = (key("a"), key("b"));
        cache.set(&a, fresh_value("a1", &clock)).await.expect("set");
        cache.set(&b, fresh_value("b1", &clock)).await.expect("set");
        clock.advance(Duration::from_millis(1));

        let faulty = if failing == Layer::L1 { &l1 } else { &l2 };
        faulty.push(Op::Clear, Fault::Fail(ErrorKind::Connection));
        cache.clear().await.expect_err("one tier failed to clear");
        assert_eq!(
            cache.get(&a).await.expect("read"),
            None,
            "{failing:?}: a came back"
        );
        assert_eq!(
            cache.probe(&b),
            Probe::Unknown,
            "{failing:?}: b served by the probe"
        );
        assert_eq!(
            cache.get(&b).await.expect("read"),
            None,
            "{failing:?}: b came back"
        );
        if failing == Layer::L2 {
            assert_eq!(l1.inner().peek(&a), None, "a refilled into L1");
        }

        // Values written after the clear began are served as usual.
        clock.advance(Duration::from_millis(1));
        let a2 = fresh_value("a2", &clock);
        cache.set(&a, a2.clone()).await.expect("set");
        assert_eq!(cache.get(&a).await.expect("read"), Some(a2));

        // A clear that succeeds on both tiers ends it.
        cache.clear().await.expect("clear");
        clock.advance(Duration::from_millis(1));
        let b0 = CacheValue::with_ttl(
            &b"b0"[..],
            clock.now().saturating_sub(Duration::from_secs(1)),
            Duration::from_secs(60),
        );
        cache.set(&b, b0.clone()).await.expect("set");
        assert_eq!(cache.get(&b).await.expect("read"), Some(b0), "{failing:?}");
    }
}

/// Two compositions share one in-process L1 (two handles of one cache, or two stacks over one
/// moka): a refill by one must not replace the newer value the other wrote there meanwhile.
#[tokio::test]
async fn a_refill_never_replaces_a_newer_value_another_handle_wrote_to_l1() {
    let clock = manual_clock();
    let l1 = near(&clock);
    let (l2, mut l2_calls) = scripted("remote");
    let reader = Composition::builder(l1.clone(), l2)
        .clock(Clock::from(clock.clone()))
        .build();
    let writer = Composition::builder(l1.clone(), far(&clock))
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");
    let v1 = fresh_value("v1", &clock);
    clock.advance(Duration::from_secs(1));
    let v2 = fresh_value("v2", &clock);

    // The reader misses L1 and waits on its L2 read.
    let mut read = pin!(reader.get(&k));
    expect_pending(&mut read).await;
    let l2_read = l2_calls.next_call().await;
    assert_eq!(l2_read.op(), Op::Get);

    // The other stack writes the newer v2 into the shared L1.
    writer.set(&k, v2.clone()).await.expect("set v2");
    assert_eq!(l1.peek(&k), Some(v2.clone()));

    // The reader's L2 answers the older v1: served to this read, never refilled over v2.
    l2_read.respond_hit(v1.clone());
    let served = expect_ready(&mut read).await.expect("read");
    assert_eq!(served, Some(v1));
    assert_eq!(
        l1.peek(&k),
        Some(v2.clone()),
        "the refill replaced a newer value in L1"
    );
    assert_eq!(reader.get(&k).await.expect("read"), Some(v2));
    assert_eq!(l2_calls.waiting(), 0, "the L1 hit made no L2 call");
    assert_eq!((reader.keys_in_flight(), writer.keys_in_flight()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelled_operations_release_their_bookkeeping() {
    for policy in WRITE_POLICIES {
        let clock = manual_clock();
        let l1 = near(&clock);
        let l2 = FaultyBackend::new(far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .write_policy(write_policy(policy))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let (v1, v2) = (fresh_value("v1", &clock), fresh_value("v2", &clock));

        // A set whose L2 write hangs is dropped by its caller, and a delete likewise.
        l2.push(Op::Set, Fault::Hang);
        l2.push(Op::Delete, Fault::Hang);
        let cancelled = tokio::time::timeout(Duration::from_millis(10), cache.set(&k, v1)).await;
        if policy != "race" {
            assert!(
                cancelled.is_err(),
                "{policy}: the set waits for the hung L2"
            );
        }
        let cancelled = tokio::time::timeout(Duration::from_millis(10), cache.delete(&k)).await;
        assert!(
            cancelled.is_err(),
            "{policy}: the delete waits for the hung L2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // background follow-ups

        // Later operations on the key work and leave nothing behind.
        cache.set(&k, v2.clone()).await.expect("set");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(cache.get(&k).await.expect("read"), Some(v2), "{policy}");
        if policy != "race" {
            assert_eq!(cache.keys_in_flight(), 0, "{policy}");
        }
    }
}

/// Overlapping sets dropped by their callers leave a follow-up (the newest value applied
/// again) on the offload; when that task is dropped before it ever ran (a runtime shut down
/// with it queued), the key's bookkeeping is released all the same.
#[tokio::test(start_paused = true)]
async fn a_follow_up_dropped_before_it_ran_releases_the_key() {
    let clock = manual_clock();
    let l1 = near(&clock);
    let l2 = FaultyBackend::new(far(&clock));
    let offload = ManualOffload::new();
    let cache = Composition::builder(l1, l2.clone())
        .offload(offload.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");
    l2.always(Op::Set, Fault::Hang);
    let limit = Duration::from_millis(10);
    let (first, second) = tokio::join!(
        tokio::time::timeout(limit, cache.set(&k, fresh_value("v1", &clock))),
        tokio::time::timeout(limit, cache.set(&k, fresh_value("v2", &clock))),
    );
    assert!(first.is_err() && second.is_err(), "both sets wait on L2");
    assert_eq!(offload.queued(), 1, "the newest value's follow-up on L2");
    assert_eq!(offload.discard_all(), 1);
    assert_eq!(cache.keys_in_flight(), 0, "the key's bookkeeping leaked");

    // The key works as before.
    l2.clear_faults();
    let v3 = fresh_value("v3", &clock);
    cache.set(&k, v3.clone()).await.expect("set");
    assert_eq!(cache.get(&k).await.expect("read"), Some(v3));
    assert_eq!(cache.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn overlapping_sets_never_leave_the_older_value_in_a_tier() {
    for policy in WRITE_POLICIES {
        let clock = manual_clock();
        let l1 = near(&clock);
        let l2 = FaultyBackend::new(far(&clock));
        let cache = Composition::builder(l1.clone(), l2.clone())
            .write_policy(write_policy(policy))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let (v1, v2) = (fresh_value("v1", &clock), fresh_value("v2", &clock));

        // v1's L2 write is slow and lands after v2's.
        l2.push(Op::Set, Fault::Delay(Duration::from_millis(50)));
        let (first, second) = tokio::join!(cache.set(&k, v1.clone()), async {
            tokio::task::yield_now().await;
            cache.set(&k, v2.clone()).await
        });
        first.expect("first set");
        second.expect("second set");
        tokio::time::sleep(Duration::from_millis(100)).await; // let offloaded writes land

        for (tier, held) in [("l1", l1.peek(&k)), ("l2", l2.inner().peek(&k))] {
            assert_ne!(
                held,
                Some(v1.clone()),
                "{policy}: {tier} kept the older value"
            );
        }
        // The last of the overlapping writes applied the newest value again.
        assert_eq!(l2.inner().peek(&k), Some(v2.clone()), "{policy}");
        assert_eq!(cache.get(&k).await.expect("read"), Some(v2), "{policy}");
        assert_eq!(cache.keys_in_flight(), 0, "{policy}");
    }
}

/// A `set` of a newer value, then a `set_if_newer` of an older one overlapping it: the set's
/// L2 write starts after the conditional write began (its L1 write is slow), and every tier
/// must still end with the newer value, as if the two had run one after the other.
#[tokio::test(start_paused = true)]
async fn a_conditional_write_overlapping_a_newer_set_leaves_the_newer_value_in_every_tier() {
    let clock = manual_clock();
    let l1 = FaultyBackend::new(near(&clock));
    let l2 = far(&clock);
    let cache = Composition::builder(l1.clone(), l2.clone())
        .write_policy(write_policy("sequential"))
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");
    let older = fresh_value("older", &clock);
    clock.advance(Duration::from_secs(1));
    let newer = fresh_value("newer", &clock);

    l1.push(Op::Set, Fault::Delay(Duration::from_millis(50)));
    let (set, conditional) = tokio::join!(cache.set(&k, newer.clone()), async {
        tokio::task::yield_now().await;
        cache.set_if_newer(&k, older.clone()).await
    });
    set.expect("set");
    conditional.expect("set_if_newer");
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(l1.inner().peek(&k), Some(newer.clone()), "l1");
    assert_eq!(l2.peek(&k), Some(newer.clone()), "l2");
    assert_eq!(cache.get(&k).await.expect("read"), Some(newer));
    assert_eq!(cache.keys_in_flight(), 0);
}

#[tokio::test]
async fn a_tier_that_refuses_a_write_does_not_keep_serving_the_previous_value() {
    for policy in WRITE_POLICIES {
        let clock = manual_clock();
        let l1 = FaultyBackend::new(near(&clock));
        let l2 = far(&clock);
        let cache = Composition::builder(l1.clone(), l2.clone())
            .write_policy(write_policy(policy))
            .clock(Clock::from(clock.clone()))
            .build();
        let k = key("k");
        let (v1, v2) = (fresh_value("v1", &clock), fresh_value("v2", &clock));
        cache.set(&k, v1).await.expect("first set");

        l1.push(Op::Set, Fault::Fail(ErrorKind::InvalidValue));
        cache.set(&k, v2.clone()).await.expect("L2 took the value");
        tokio::task::yield_now().await; // a race write's L2 half may still be landing
        assert_eq!(
            l1.inner().peek(&k),
            None,
            "{policy}: L1 kept the previous value"
        );
        assert_eq!(cache.get(&k).await.expect("read"), Some(v2), "{policy}");
        assert_eq!(cache.keys_in_flight(), 0);
    }
}

#[tokio::test]
async fn a_race_write_loser_does_not_survive_a_later_clear() {
    let clock = manual_clock();
    let (l1, l2) = (near(&clock), far(&clock));
    let offload = ManualOffload::new();
    let cache = Composition::builder(l1.clone(), l2.clone())
        .write_policy(write_policy("race"))
        .offload(offload.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let k = key("k");
    cache.set(&k, fresh_value("v1", &clock)).await.expect("set");
    assert_eq!(
        offload.queued(),
        1,
        "L2's half of the write is still running"
    );
    // The loser runs while the clear waits for the writes it overlapped to settle.
    let (cleared, ran) = tokio::join!(cache.clear(), async {
        tokio::task::yield_now().await;
        offload.run_all().await
    });
    cleared.expect("clear");
    assert!(ran.iter().all(Result::is_ok));
    assert_eq!(l2.peek(&k), None, "the late write was removed again");
    assert_eq!(cache.get(&k).await.expect("read"), None);
    assert_eq!(cache.keys_in_flight(), 0);
}
