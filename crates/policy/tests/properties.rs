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
//! A second family of properties runs operations concurrently (each on its own task, slowed
//! before or after the tier call takes effect, with L1 evicting keys on its own) and checks,
//! from the history of when each operation began and returned:
//!
//! * **no resurrection**: once a `delete` of a key or a `clear` returned, no read that begins
//!   afterwards returns a value whose `set` had returned before the removal began, and no tier
//!   holds one once everything finished (a refill in particular never copies it into L1);
//! * **no older value after a newer set** (write policies that wait for both tiers): once a
//!   `set` returned, no later read returns, and no tier keeps, a value whose `set` returned
//!   before that one began;
//! * no operation fails without a fault, and the composition's per-key bookkeeping is empty
//!   once nothing runs.
//!
//! Each case runs on its own current-thread runtime with paused time, so delays, hangs and
//! timeouts cost no real time.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
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

/// A composition of two test tiers on a manual clock, every tier call bounded by `timeout`.
struct Stack {
    clock: ManualClock,
    l1: TestTier,
    l2: TestTier,
    offload: TokioOffload,
    cache: Composition<FaultyBackend<MemoryBackend>, FaultyBackend<MemoryBackend>>,
}

impl Stack {
    fn new(read: AnyReadPolicy, write: AnyWritePolicy, timeout: Duration) -> Self {
        let clock = ManualClock::new(Timestamp::from_unix_millis(common::NOW_MS));
        let l1 = TestTier::new("l1", &clock, false);
        let l2 = TestTier::new("l2", &clock, true);
        let offload = TokioOffload::unbounded();
        let cache = Composition::builder(l1.faulty.clone(), l2.faulty.clone())
            .read_policy(read)
            .write_policy(write)
            .offload(offload.clone())
            .clock(Clock::from(clock.clone()))
            .l1_timeout(timeout)
            .l2_timeout(timeout)
            .build();
        Stack {
            clock,
            l1,
            l2,
            offload,
            cache,
        }
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
    let Stack {
        clock,
        l1,
        l2,
        offload,
        cache,
    } = Stack::new(read, write, TIMEOUT);
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

/// Runs one case of `read` and `write` on its own current-thread runtime with paused time.
fn run_case<F, Fut>(read: &str, write: &str, run: F) -> Result<(), TestCaseError>
where
    F: FnOnce(AnyReadPolicy, AnyWritePolicy) -> Fut,
    Fut: std::future::Future<Output = Result<(), TestCaseError>>,
{
    let read: AnyReadPolicy = read.parse().expect("read policy");
    let write: AnyWritePolicy = write.parse().expect("write policy");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run(read, write))
}

/// One property test per read, write pair, each with 1000 cases of `$strategy` run by
/// `$run`.
macro_rules! pairs {
    ($strategy:ident, $run:ident; $($name:ident: $read:literal, $write:literal;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
            $(
                #[test]
                fn $name(actions in $strategy()) {
                    run_case($read, $write, |read, write| $run(read, write, &actions))?;
                }
            )*
        }
    };
}

pairs! {
    actions, run_actions;
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

// ---------------------------------------------------------------------------------------------
// Concurrent operations

/// The bound on every tier call in the concurrent cases: longer than any delay drawn, so no
/// operation fails.
const CONCURRENT_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
enum Concurrent {
    /// Starts a `set` of a new, unique payload created now (the clock first moves 1 ms, so
    /// later sets are newer).
    Set { key: u8 },
    /// Starts a `get`.
    Get { key: u8 },
    /// Starts a `delete`.
    Delete { key: u8 },
    /// Starts a `clear`.
    Clear,
    /// L1 drops the key on its own, as a capacity-bound tier evicts.
    Evict { key: u8 },
    /// Slows the next `op` call on `tier` by `ms`: before the call (`answer` false) or after it
    /// took effect (`answer` true: a read has read, a write has landed, the answer is late).
    Slow {
        tier: Tier,
        op: Op,
        ms: u64,
        answer: bool,
    },
    /// Lets the running operations progress for `ms` of paused time.
    Wait { ms: u64 },
}

fn concurrent_action() -> impl Strategy<Value = Concurrent> {
    prop_oneof![
        3 => (0..2u8).prop_map(|key| Concurrent::Set { key }),
        4 => (0..2u8).prop_map(|key| Concurrent::Get { key }),
        2 => (0..2u8).prop_map(|key| Concurrent::Delete { key }),
        1 => Just(Concurrent::Clear),
        2 => (0..2u8).prop_map(|key| Concurrent::Evict { key }),
        4 => (
            prop_oneof![Just(Tier::L1), Just(Tier::L2)],
            prop_oneof![Just(Op::Get), Just(Op::Set), Just(Op::Delete), Just(Op::Clear)],
            1u64..40,
            any::<bool>(),
        )
            .prop_map(|(tier, op, ms, answer)| Concurrent::Slow { tier, op, ms, answer }),
        3 => (0u64..30).prop_map(|ms| Concurrent::Wait { ms }),
    ]
}

fn concurrent_actions() -> impl Strategy<Value = Vec<Concurrent>> {
    proptest::collection::vec(concurrent_action(), 1..40)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Set,
    Get,
    Delete,
    Clear,
}

/// One operation of a concurrent case: when it began and returned (on one logical clock), and
/// what it wrote or read.
#[derive(Clone, Debug)]
struct Record {
    kind: Kind,
    /// `None` for a clear (every key).
    key: Option<u8>,
    began: u64,
    returned: Option<u64>,
    ok: bool,
    /// The payload a set wrote, or a get returned.
    payload: Option<Vec<u8>>,
}

#[derive(Default)]
struct History {
    tick: u64,
    records: Vec<Record>,
}

impl History {
    fn begin(&mut self, kind: Kind, key: Option<u8>, payload: Option<Vec<u8>>) -> usize {
        self.tick += 1;
        self.records.push(Record {
            kind,
            key,
            began: self.tick,
            returned: None,
            ok: false,
            payload,
        });
        self.records.len() - 1
    }

    fn end(&mut self, id: usize, ok: bool, read: Option<Vec<u8>>) {
        self.tick += 1;
        let record = &mut self.records[id];
        record.returned = Some(self.tick);
        record.ok = ok;
        if record.kind == Kind::Get {
            record.payload = read;
        }
    }

    /// The set that wrote `payload`.
    fn writer(&self, payload: &[u8]) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.kind == Kind::Set && r.payload.as_deref() == Some(payload))
    }

    /// Operations on `key` that returned `Ok` before `tick` and make a value whose set had
    /// returned before they began unservable: removals, and (when `sets_supersede`) sets.
    fn superseding(&self, key: u8, tick: u64, sets_supersede: bool) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.ok && r.returned.is_some_and(|returned| returned < tick))
            .filter(|r| match r.kind {
                Kind::Delete => r.key == Some(key),
                Kind::Clear => true,
                Kind::Set => sets_supersede && r.key == Some(key),
                Kind::Get => false,
            })
            .collect()
    }

    /// Checks that `payload`, seen for `key` at `tick`, was not superseded: no operation that
    /// returned before `tick` began after the payload's set returned.
    fn check_servable(
        &self,
        what: &str,
        key: u8,
        payload: &[u8],
        tick: u64,
        sets_supersede: bool,
    ) -> Result<(), TestCaseError> {
        let writer = self.writer(payload);
        prop_assert!(writer.is_some(), "{what}: a payload never written");
        let writer = writer.expect("checked");
        prop_assert_eq!(writer.key, Some(key), "{}: another key's payload", what);
        let Some(written) = writer.returned else {
            return Ok(()); // its set never returned: concurrent with everything after it
        };
        for later in self.superseding(key, tick, sets_supersede) {
            prop_assert!(
                written >= later.began || std::ptr::eq(later, writer),
                "{what}: {:?} of {} (set returned at {written}) after {later:?} returned",
                String::from_utf8_lossy(payload),
                key
            );
        }
        Ok(())
    }
}

async fn run_concurrent(
    read: AnyReadPolicy,
    write: AnyWritePolicy,
    actions: &[Concurrent],
) -> Result<(), TestCaseError> {
    let Stack {
        clock,
        l1,
        l2,
        offload,
        cache,
    } = Stack::new(read, write, CONCURRENT_TIMEOUT);
    // A race write returns after its first tier; the other lands later.
    let sets_supersede = !matches!(write, AnyWritePolicy::Race(_));
    let keys: Vec<CacheKey> = (0..2).map(|i| key(&format!("k{i}"))).collect();
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks = Vec::new();
    let mut serial = 0u64;

    for action in actions {
        let (cache, history) = (cache.clone(), Arc::clone(&history));
        match *action {
            Concurrent::Set { key } => {
                clock.advance(Duration::from_millis(1));
                serial += 1;
                let payload = format!("k{key}#{serial}").into_bytes();
                let value =
                    CacheValue::with_ttl(payload.clone(), clock.now(), Duration::from_secs(3_600));
                let k = keys[usize::from(key)].clone();
                tasks.push(tokio::spawn(async move {
                    let id =
                        history
                            .lock()
                            .expect("history")
                            .begin(Kind::Set, Some(key), Some(payload));
                    let ok = cache.set(&k, value).await.is_ok();
                    history.lock().expect("history").end(id, ok, None);
                }));
            }
            Concurrent::Get { key } => {
                let k = keys[usize::from(key)].clone();
                tasks.push(tokio::spawn(async move {
                    let id = history
                        .lock()
                        .expect("history")
                        .begin(Kind::Get, Some(key), None);
                    let result = cache.get(&k).await;
                    let read = result
                        .as_ref()
                        .ok()
                        .and_then(|found| found.as_ref().map(|value| value.payload().to_vec()));
                    history
                        .lock()
                        .expect("history")
                        .end(id, result.is_ok(), read);
                }));
            }
            Concurrent::Delete { key } => {
                let k = keys[usize::from(key)].clone();
                tasks.push(tokio::spawn(async move {
                    let id = history
                        .lock()
                        .expect("history")
                        .begin(Kind::Delete, Some(key), None);
                    let ok = cache.delete(&k).await.is_ok();
                    history.lock().expect("history").end(id, ok, None);
                }));
            }
            Concurrent::Clear => {
                tasks.push(tokio::spawn(async move {
                    let id = history
                        .lock()
                        .expect("history")
                        .begin(Kind::Clear, None, None);
                    let ok = cache.clear().await.is_ok();
                    history.lock().expect("history").end(id, ok, None);
                }));
            }
            Concurrent::Evict { key } => {
                let _ = l1.memory.delete(&keys[usize::from(key)]).await;
            }
            Concurrent::Slow {
                tier,
                op,
                ms,
                answer,
            } => {
                let tier = match tier {
                    Tier::L1 => &l1,
                    Tier::L2 => &l2,
                };
                let delay = Duration::from_millis(ms);
                tier.faulty.push(
                    op,
                    if answer {
                        Fault::SlowAnswer(delay)
                    } else {
                        Fault::Delay(delay)
                    },
                );
            }
            Concurrent::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
        // Every task started gets to begin its operation before the next action.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.expect("operation task");
    }
    let report = offload.drain(Duration::from_secs(3_600)).await;
    prop_assert!(report.is_complete(), "background work left: {report:?}");
    prop_assert_eq!(
        cache.keys_in_flight(),
        0,
        "bookkeeping left once nothing runs"
    );

    let history = history.lock().expect("history");
    let end = history.tick + 1;
    for record in &history.records {
        prop_assert!(record.ok, "{record:?} failed without a fault");
        if let (Kind::Get, Some(key), Some(payload)) = (record.kind, record.key, &record.payload) {
            history.check_servable(
                &format!("read {record:?}"),
                key,
                payload,
                record.began,
                sets_supersede,
            )?;
        }
    }
    for (i, k) in keys.iter().enumerate() {
        let key = u8::try_from(i).expect("two keys");
        for (name, tier) in [("l1", &l1), ("l2", &l2)] {
            if let Some(held) = tier.memory.peek(k) {
                history.check_servable(
                    &format!("{name} at the end"),
                    key,
                    held.payload(),
                    end,
                    sets_supersede,
                )?;
            }
        }
    }
    Ok(())
}

pairs! {
    concurrent_actions, run_concurrent;
    concurrent_sequential_read_sequential_write: "sequential", "sequential";
    concurrent_sequential_read_optimistic_parallel_write: "sequential", "optimistic-parallel";
    concurrent_sequential_read_race_write: "sequential", "race";
    concurrent_race_read_sequential_write: "race-finish", "sequential";
    concurrent_race_read_optimistic_parallel_write: "race-finish", "optimistic-parallel";
    concurrent_race_read_race_write: "race-finish", "race";
    concurrent_parallel_read_sequential_write: "parallel", "sequential";
    concurrent_parallel_read_optimistic_parallel_write: "parallel", "optimistic-parallel";
    concurrent_parallel_read_race_write: "parallel", "race";
}
