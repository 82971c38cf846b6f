//! Property tests of the composition, for each of the 9 read × write policy pairs: random
//! sequences of sets, gets, deletes, clock moves and injected faults (failures, delays, hangs,
//! corrupt data) over a small key space, checked against a reference model after every step.
//!
//! Invariants:
//!
//! * a get returns only a value (payload and timestamps) that was written for that very key,
//!   and never one whose `expires_at` has passed;
//! * every tier only ever holds values written for that key;
//! * after an `Ok` set, at least one tier holds exactly that value;
//! * an error only comes with a fault applied during that operation, to the tier it names;
//!   `BothLayersFailed` only when both tiers had a fault applied during that operation;
//! * without race writes (whose losers land in the background), an `Ok` delete leaves the key
//!   in neither tier.
//!
//! Each case runs on its own current-thread runtime with paused time, so delays, hangs and
//! timeouts cost no real time.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, ManualClock, Op, Timestamp,
    TokioOffload,
};
use tierkit_policy::{AnyReadPolicy, AnyWritePolicy, Composition, CompositionError};
use tierkit_testkit::{Fault, FaultyBackend, MemoryBackend, key};

/// Keys `k0`..`k3`.
const KEYS: u8 = 4;
/// The bound on every tier call; delays are drawn on both sides of it.
const TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug)]
enum Tier {
    L1,
    L2,
}

#[derive(Clone, Debug)]
enum Action {
    /// Writes a new, unique payload created now, fresh for `ttl_ms`, then stale for
    /// `stale_ms`.
    Set {
        key: u8,
        ttl_ms: u64,
        stale_ms: u64,
    },
    Get {
        key: u8,
    },
    Delete {
        key: u8,
    },
    /// Moves the (manual) wall clock.
    Advance {
        ms: u64,
    },
    /// Queues `fault` for the next `op` call on `tier`.
    Inject {
        tier: Tier,
        op: Op,
        fault: Fault,
    },
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        prop_oneof![
            Just(ErrorKind::Connection),
            Just(ErrorKind::Timeout),
            Just(ErrorKind::Internal),
            Just(ErrorKind::PermissionDenied),
        ]
        .prop_map(Fault::Fail),
        (1u64..100).prop_map(|ms| Fault::Delay(Duration::from_millis(ms))),
        Just(Fault::Hang),
        Just(Fault::Corrupt),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..KEYS, 1u64..5_000, prop_oneof![Just(0u64), 1u64..3_000])
            .prop_map(|(key, ttl_ms, stale_ms)| Action::Set { key, ttl_ms, stale_ms }),
        4 => (0..KEYS).prop_map(|key| Action::Get { key }),
        1 => (0..KEYS).prop_map(|key| Action::Delete { key }),
        2 => (0u64..4_000).prop_map(|ms| Action::Advance { ms }),
        3 => (
            prop_oneof![Just(Tier::L1), Just(Tier::L2)],
            prop_oneof![Just(Op::Get), Just(Op::Set), Just(Op::Delete)],
            fault(),
        )
            .prop_map(|(tier, op, fault)| Action::Inject { tier, op, fault }),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    proptest::collection::vec(action(), 1..40)
}

/// One tier: the fault injector the composition uses, and the memory behind it.
struct TestTier {
    faulty: FaultyBackend<MemoryBackend>,
    memory: MemoryBackend,
}

impl TestTier {
    fn new(label: &str, clock: &ManualClock, remote: bool) -> Self {
        let memory = MemoryBackend::new(label).with_clock(Clock::from(clock.clone()));
        let memory = if remote { memory.remote() } else { memory };
        TestTier {
            faulty: FaultyBackend::new(memory.clone()),
            memory,
        }
    }

    /// One-shot faults still queued, over every operation.
    fn queued(&self) -> usize {
        [Op::Get, Op::Set, Op::Delete, Op::Clear]
            .into_iter()
            .map(|op| self.faulty.queued(op))
            .sum()
    }
}

/// Every value ever written (or attempted) per key.
#[derive(Default)]
struct Model {
    attempted: HashMap<CacheKey, HashSet<CacheValue>>,
}

impl Model {
    fn was_written(&self, key: &CacheKey, value: &CacheValue) -> bool {
        self.attempted
            .get(key)
            .is_some_and(|values| values.contains(value))
    }
}

fn check_error(what: &str, error: &BackendError, faulted: [bool; 2]) -> Result<(), TestCaseError> {
    prop_assert!(
        faulted[0] || faulted[1],
        "{what} failed without any fault: {error:?}"
    );
    match CompositionError::from_backend_error(error) {
        Some(CompositionError::BothLayersFailed { .. }) => prop_assert!(
            faulted[0] && faulted[1],
            "{what}: BothLayersFailed, but faults applied only to {faulted:?}: {error:?}"
        ),
        Some(other) => prop_assert!(false, "{what}: unexpected composition error {other:?}"),
        None => match error.tier_label() {
            Some("l1") => prop_assert!(faulted[0], "{what}: L1's error without an L1 fault"),
            Some("l2") => prop_assert!(faulted[1], "{what}: L2's error without an L2 fault"),
            other => prop_assert!(
                false,
                "{what}: error from unknown tier {other:?}: {error:?}"
            ),
        },
    }
    Ok(())
}

async fn run_actions(
    read: AnyReadPolicy,
    write: AnyWritePolicy,
    actions: &[Action],
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(Timestamp::from_unix_millis(common::NOW_MS));
    let l1 = TestTier::new("l1", &clock, false);
    let l2 = TestTier::new("l2", &clock, true);
    let offload = TokioOffload::unbounded();
    let cache = Composition::builder(l1.faulty.clone(), l2.faulty.clone())
        .read_policy(read)
        .write_policy(write)
        .offload(offload.clone())
        .clock(Clock::from(clock.clone()))
        .l1_timeout(TIMEOUT)
        .l2_timeout(TIMEOUT)
        .build();
    let background_writes = matches!(write, AnyWritePolicy::Race(_));
    let keys: Vec<CacheKey> = (0..KEYS).map(|i| key(&format!("k{i}"))).collect();
    let mut model = Model::default();
    let mut serial = 0u64;

    for (step, action) in actions.iter().enumerate() {
        let before = [l1.queued(), l2.queued()];
        let faults_applied =
            |l1_now: usize, l2_now: usize| [l1_now < before[0], l2_now < before[1]];
        let what = format!("step {step} {action:?}");
        match action {
            Action::Set {
                key,
                ttl_ms,
                stale_ms,
            } => {
                let k = &keys[usize::from(*key)];
                serial += 1;
                let payload = format!("{k}#{serial}");
                let value = CacheValue::with_ttl(
                    payload.into_bytes(),
                    clock.now(),
                    Duration::from_millis(*ttl_ms),
                )
                .with_stale_for(Duration::from_millis(*stale_ms));
                model
                    .attempted
                    .entry(k.clone())
                    .or_default()
                    .insert(value.clone());
                let result = cache.set(k, value.clone()).await;
                let faulted = faults_applied(l1.queued(), l2.queued());
                match result {
                    Ok(()) => prop_assert!(
                        l1.memory.peek(k).as_ref() == Some(&value)
                            || l2.memory.peek(k).as_ref() == Some(&value),
                        "{what}: Ok, but no tier holds the value"
                    ),
                    Err(error) => check_error(&what, &error, faulted)?,
                }
            }
            Action::Get { key } => {
                let k = &keys[usize::from(*key)];
                let result = cache.get(k).await;
                let faulted = faults_applied(l1.queued(), l2.queued());
                match result {
                    Ok(Some(value)) => {
                        prop_assert!(
                            model.was_written(k, &value),
                            "{what}: returned a value never written for {k}: {value:?}"
                        );
                        prop_assert!(
                            !value.is_expired(clock.now()),
                            "{what}: returned an expired value {value:?} at {}",
                            clock.now()
                        );
                    }
                    Ok(None) => {}
                    Err(error) => check_error(&what, &error, faulted)?,
                }
            }
            Action::Delete { key } => {
                let k = &keys[usize::from(*key)];
                let result = cache.delete(k).await;
                let faulted = faults_applied(l1.queued(), l2.queued());
                match result {
                    Ok(()) if !background_writes => prop_assert!(
                        l1.memory.peek(k).is_none() && l2.memory.peek(k).is_none(),
                        "{what}: Ok, but a tier still holds the key"
                    ),
                    Ok(()) => {}
                    Err(error) => check_error(&what, &error, faulted)?,
                }
            }
            Action::Advance { ms } => clock.advance(Duration::from_millis(*ms)),
            Action::Inject { tier, op, fault } => {
                let tier = match tier {
                    Tier::L1 => &l1,
                    Tier::L2 => &l2,
                };
                tier.faulty.push(*op, *fault);
            }
        }
        for k in &keys {
            for (name, tier) in [("l1", &l1), ("l2", &l2)] {
                if let Some(held) = tier.memory.peek(k) {
                    prop_assert!(
                        model.was_written(k, &held),
                        "{what}: {name} holds a value never written for {k}: {held:?}"
                    );
                }
            }
        }
    }

    // Race losers (reads and writes) finish in the background; every one is bounded by a
    // timeout, so the drain completes.
    let report = offload.drain(Duration::from_secs(3_600)).await;
    prop_assert!(report.is_complete(), "background work left: {report:?}");
    for k in &keys {
        for tier in [&l1, &l2] {
            if let Some(held) = tier.memory.peek(k) {
                prop_assert!(model.was_written(k, &held), "after drain: {held:?}");
            }
        }
    }
    Ok(())
}

fn run_case(read: &str, write: &str, actions: &[Action]) -> Result<(), TestCaseError> {
    let read: AnyReadPolicy = read.parse().expect("read policy");
    let write: AnyWritePolicy = write.parse().expect("write policy");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run_actions(read, write, actions))
}

/// One property test per read, write pair, each with 1000 cases.
macro_rules! pairs {
    ($($name:ident: $read:literal, $write:literal;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(actions in actions()) {
                    run_case($read, $write, &actions)?;
                }
            )*
        }
    };
}

pairs! {
    sequential_read_sequential_write: "sequential", "sequential";
    sequential_read_optimistic_parallel_write: "sequential", "optimistic-parallel";
    sequential_read_race_write: "sequential", "race";
    race_read_sequential_write: "race-finish", "sequential";
    race_read_optimistic_parallel_write: "race-finish", "optimistic-parallel";
    race_read_race_write: "race-finish", "race";
    parallel_read_sequential_write: "parallel", "sequential";
    parallel_read_optimistic_parallel_write: "parallel", "optimistic-parallel";
    parallel_read_race_write: "parallel", "race";
}
