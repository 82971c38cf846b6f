//! Every row of the read policies' outcome tables, proved by calling each policy directly with
//! plain futures: which value wins, whether L1 is refilled, which error is returned, what is
//! logged, which tiers are asked, and what becomes of a race's loser. Also the policy names
//! accepted in configuration.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{
    EventLog, assert_same_error, controlled, cx, expect_pending, expect_ready, fresh,
    fresh_created, immediate, l1_error, l2_error, stale, stale_created, val,
};
use tierkit_core::{BackendError, CacheValue, ErrorKind, Op};
use tierkit_policy::{
    AnyReadPolicy, AnyWritePolicy, CompositionError, Layer, ParallelReadPolicy, RaceLoser,
    RaceReadPolicy, ReadOutcome, ReadPolicy, RefillPolicy, SequentialReadPolicy, TierRead,
};
use tierkit_testkit::ManualOffload;
use tierkit_testkit::logs::{Capture, capture};
use tracing::Level;

/// What a tier answers in a row.
#[derive(Clone, Debug)]
enum Answer {
    Hit(CacheValue),
    Miss,
    /// Fails with the row's error for that tier ([`l1_error`] or [`l2_error`]).
    Fail,
}
use Answer::{Fail, Hit, Miss};

/// What a row must return.
#[derive(Clone, Debug)]
enum Expect {
    /// `Ok(Some(value))` from `from`, with this refill flag.
    Value {
        from: Layer,
        value: CacheValue,
        refill: bool,
    },
    /// `Ok(None)`.
    Nothing,
    /// That tier's own error, unchanged.
    ErrorOf(Layer),
    /// `BothLayersFailed { l1, l2 }` with both errors unchanged.
    Both,
}

fn from_l1(value: CacheValue) -> Expect {
    Expect::Value {
        from: Layer::L1,
        value,
        refill: false,
    }
}

fn from_l2(value: CacheValue, refill: bool) -> Expect {
    Expect::Value {
        from: Layer::L2,
        value,
        refill,
    }
}

/// The errors of one run, kept so that the returned ones can be checked to be these very
/// errors.
struct Errors {
    l1: BackendError,
    l2: BackendError,
}

impl Errors {
    fn new() -> Self {
        Errors {
            l1: l1_error(Op::Get),
            l2: l2_error(Op::Get),
        }
    }

    fn of(&self, layer: Layer) -> &BackendError {
        match layer {
            Layer::L1 => &self.l1,
            Layer::L2 => &self.l2,
        }
    }

    fn answer(&self, layer: Layer, answer: &Answer) -> TierRead {
        match answer {
            Hit(value) => Ok(Some(value.clone())),
            Miss => Ok(None),
            Fail => Err(self.of(layer).clone()),
        }
    }
}

fn other(layer: Layer) -> Layer {
    match layer {
        Layer::L1 => Layer::L2,
        Layer::L2 => Layer::L1,
    }
}

fn tier_name(layer: Layer) -> &'static str {
    match layer {
        Layer::L1 => "tier=l1 (moka)",
        Layer::L2 => "tier=l2 (redis)",
    }
}

/// Checks a result against `expect`, and the log against what the shared rules say: a
/// warning naming the failed tier when a value is served despite a failure, an error line
/// with both causes when both failed, and nothing when nothing failed. `failed` lists the
/// tiers whose failure the policy saw.
fn check(
    result: &Result<ReadOutcome, BackendError>,
    expect: &Expect,
    errors: &Errors,
    failed: &[Layer],
    logs: &Capture,
) {
    match (expect, result) {
        (
            Expect::Value {
                from,
                value,
                refill,
            },
            Ok(outcome),
        ) => {
            assert_eq!(outcome.value.as_ref(), Some(value), "value");
            assert_eq!(outcome.source, Some(*from), "source");
            assert_eq!(outcome.refill_l1, *refill, "refill_l1");
            match failed {
                [] => logs.assert_no_line("WARN"),
                [layer] => {
                    assert_eq!(*layer, other(*from));
                    logs.assert_lines(1, &["WARN"]);
                    logs.assert_lines(
                        1,
                        &["WARN", tier_name(*layer), &errors.of(*layer).to_string()],
                    );
                }
                _ => unreachable!("a value is never served when both tiers failed"),
            }
            logs.assert_no_line("ERROR");
        }
        (Expect::Nothing, Ok(outcome)) => {
            assert_eq!(outcome, &ReadOutcome::miss());
            logs.assert_no_line("WARN");
            logs.assert_no_line("ERROR");
        }
        (Expect::ErrorOf(layer), Err(err)) => {
            assert_same_error(err, errors.of(*layer));
            logs.assert_no_line("ERROR");
        }
        (Expect::Both, Err(err)) => {
            match CompositionError::from_backend_error(err) {
                Some(CompositionError::BothLayersFailed { l1, l2 }) => {
                    assert_same_error(l1, &errors.l1);
                    assert_same_error(l2, &errors.l2);
                }
                other => panic!("expected BothLayersFailed, got {other:?}"),
            }
            assert_eq!(err.kind(), ErrorKind::Connection, "kinds differ: L2's kind");
            logs.assert_lines(
                1,
                &["ERROR", &errors.l1.to_string(), &errors.l2.to_string()],
            );
        }
        (expect, result) => panic!("expected {expect:?}, got {result:?}"),
    }
}

/// Runs a row through `policy` and through its runtime-chosen form, and checks whether L2 was
/// asked.
async fn row<R>(policy: R, l1: Answer, l2: Answer, expect: Expect, l2_asked: bool)
where
    R: ReadPolicy + Copy + Into<AnyReadPolicy>,
{
    for any in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        // Count L2's calls with a wrapper around the row's answer.
        let counted = CountingPolicy {
            inner: policy,
            any,
            l2_calls: Arc::clone(&calls),
        };
        counted.run(&l1, &l2, &expect).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            usize::from(l2_asked),
            "L2 asked (any = {any})"
        );
    }
}

/// Runs a row through a policy (or its `AnyReadPolicy` form), counting L2's calls.
struct CountingPolicy<R> {
    inner: R,
    any: bool,
    l2_calls: Arc<AtomicUsize>,
}

impl<R: ReadPolicy + Copy + Into<AnyReadPolicy>> CountingPolicy<R> {
    async fn run(&self, l1: &Answer, l2: &Answer, expect: &Expect) {
        let logs = capture(Level::TRACE);
        let errors = Errors::new();
        let offload = ManualOffload::new();
        let c1 = Arc::new(AtomicUsize::new(0));
        let cx = cx(&offload);
        let (op1, op2) = (
            immediate(&c1, errors.answer(Layer::L1, l1)),
            immediate(&self.l2_calls, errors.answer(Layer::L2, l2)),
        );
        let result = if self.any {
            let any: AnyReadPolicy = self.inner.into();
            any.read(&cx, op1, op2).await
        } else {
            self.inner.read(&cx, op1, op2).await
        };
        let l2_asked = self.l2_calls.load(Ordering::SeqCst) == 1;
        let mut failed = Vec::new();
        if matches!(l1, Fail) {
            failed.push(Layer::L1);
        }
        if l2_asked && matches!(l2, Fail) {
            failed.push(Layer::L2);
        }
        check(&result, expect, &errors, &failed, &logs);
        assert_eq!(c1.load(Ordering::SeqCst), 1, "L1 is read exactly once");
        assert_eq!(offload.spawned(), 0, "no background work");
    }
}

/// One `#[tokio::test]` per row: `name: l1, l2 => expected, l2_asked;`.
macro_rules! rows {
    ($policy:expr; $($name:ident: $l1:expr, $l2:expr => $expect:expr, asks_l2 = $asked:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                row($policy, $l1, $l2, $expect, $asked).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// SequentialReadPolicy
//
// | L1 | L2 | returns | refills L1 |
// |---|---|---|---|
// | fresh hit | not asked | L1's value | no |
// | stale hit | hit | the better value (fresh beats stale, then newer write) | if L2's won |
// | stale hit | miss | L1's stale value | no |
// | stale hit | error | L1's stale value, warning names L2 | no |
// | miss | hit | L2's value | yes |
// | miss | miss | `Ok(None)` | no |
// | miss | error | L2's error | no |
// | error | hit | L2's value, warning names L1 | yes |
// | error | miss | L1's error | no |
// | error | error | `BothLayersFailed { l1, l2 }` | no |

mod sequential {
    use super::*;

    rows! { SequentialReadPolicy;
        fresh_hit_does_not_ask_l2:
            Hit(fresh("l1")), Hit(fresh_created("l2", -1)) => from_l1(fresh("l1")), asks_l2 = false;
        fresh_hit_does_not_ask_a_failing_l2:
            Hit(fresh("l1")), Fail => from_l1(fresh("l1")), asks_l2 = false;
        value_at_its_stale_instant_is_stale_and_asks_l2:
            Hit(val("l1", -10_000, 0, 60_000)), Miss => from_l1(val("l1", -10_000, 0, 60_000)), asks_l2 = true;
        stale_hit_then_fresh_l2_hit_l2_wins:
            Hit(stale("l1")), Hit(fresh("l2")) => from_l2(fresh("l2"), true), asks_l2 = true;
        stale_hit_then_older_fresh_l2_hit_l2_wins:
            Hit(val("l1", -5_000, -1_000, 60_000)), Hit(fresh_created("l2", -30_000))
                => from_l2(fresh_created("l2", -30_000), true), asks_l2 = true;
        stale_hit_then_newer_stale_l2_hit_l2_wins:
            Hit(stale_created("l1", -200_000)), Hit(stale_created("l2", -100_000))
                => from_l2(stale_created("l2", -100_000), true), asks_l2 = true;
        stale_hit_then_older_stale_l2_hit_l1_wins:
            Hit(stale_created("l1", -100_000)), Hit(stale_created("l2", -200_000))
                => from_l1(stale_created("l1", -100_000)), asks_l2 = true;
        stale_hit_tie_goes_to_l1:
            Hit(stale("l1")), Hit(stale("l2")) => from_l1(stale("l1")), asks_l2 = true;
        stale_hit_then_miss:
            Hit(stale("l1")), Miss => from_l1(stale("l1")), asks_l2 = true;
        stale_hit_then_error_warns_about_l2:
            Hit(stale("l1")), Fail => from_l1(stale("l1")), asks_l2 = true;
        miss_then_fresh_hit_refills:
            Miss, Hit(fresh("l2")) => from_l2(fresh("l2"), true), asks_l2 = true;
        miss_then_stale_hit_refills:
            Miss, Hit(stale("l2")) => from_l2(stale("l2"), true), asks_l2 = true;
        miss_then_miss:
            Miss, Miss => Expect::Nothing, asks_l2 = true;
        miss_then_error_is_l2s_error:
            Miss, Fail => Expect::ErrorOf(Layer::L2), asks_l2 = true;
        error_then_fresh_hit_refills_and_warns_about_l1:
            Fail, Hit(fresh("l2")) => from_l2(fresh("l2"), true), asks_l2 = true;
        error_then_stale_hit_refills_and_warns_about_l1:
            Fail, Hit(stale("l2")) => from_l2(stale("l2"), true), asks_l2 = true;
        error_then_miss_is_l1s_error:
            Fail, Miss => Expect::ErrorOf(Layer::L1), asks_l2 = true;
        error_then_error_is_both_layers_failed:
            Fail, Fail => Expect::Both, asks_l2 = true;
    }

    #[test]
    fn a_fresh_l1_hit_is_final() {
        assert!(SequentialReadPolicy.l1_fresh_hit_is_final());
        assert!(AnyReadPolicy::default().l1_fresh_hit_is_final());
    }

    /// L2 is asked only once L1 has answered, and only because L1 had no fresh value.
    #[tokio::test]
    async fn l2_is_asked_after_l1_answered() {
        let log = EventLog::new();
        let (c1, op1) = controlled::<Option<CacheValue>>("l1", &log);
        let (c2, op2) = controlled::<Option<CacheValue>>("l2", &log);
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut read = pin!(SequentialReadPolicy.read(&cx, op1, op2));
        expect_pending(&mut read).await;
        assert!(c1.started() && !c2.started());
        c1.respond(Ok(Some(stale("l1"))));
        expect_pending(&mut read).await;
        assert!(c2.started());
        c2.respond(Ok(None));
        let outcome = expect_ready(&mut read).await.expect("stale L1 value");
        assert_eq!(outcome.value, Some(stale("l1")));
        assert_eq!(log.events(), ["l1:call", "l1:done", "l2:call", "l2:done"]);
    }
}

// ---------------------------------------------------------------------------------------------
// ParallelReadPolicy
//
// | L1 | L2 | returns | refills L1 |
// |---|---|---|---|
// | hit | hit | the better value (fresh beats stale, then newer write, tie to L1) | if L2's won |
// | hit | miss | L1's value | no |
// | hit | error | L1's value, warning names L2 | no |
// | miss | hit | L2's value | yes |
// | miss | miss | `Ok(None)` | no |
// | miss | error | L2's error | no |
// | error | hit | L2's value, warning names L1 | yes |
// | error | miss | L1's error | no |
// | error | error | `BothLayersFailed { l1, l2 }` | no |

mod parallel {
    use super::*;

    rows! { ParallelReadPolicy;
        fresh_hit_and_newer_fresh_hit_l2_wins:
            Hit(fresh_created("l1", -20_000)), Hit(fresh_created("l2", -10_000))
                => from_l2(fresh_created("l2", -10_000), true), asks_l2 = true;
        newer_fresh_hit_and_fresh_hit_l1_wins:
            Hit(fresh_created("l1", -10_000)), Hit(fresh_created("l2", -20_000))
                => from_l1(fresh_created("l1", -10_000)), asks_l2 = true;
        fresh_hits_tie_goes_to_l1:
            Hit(fresh("l1")), Hit(fresh("l2")) => from_l1(fresh("l1")), asks_l2 = true;
        fresh_hit_beats_newer_stale_hit:
            Hit(fresh_created("l1", -10_000)), Hit(val("l2", -5_000, -1_000, 60_000))
                => from_l1(fresh_created("l1", -10_000)), asks_l2 = true;
        newer_stale_hit_loses_to_fresh_hit:
            Hit(val("l1", -5_000, -1_000, 60_000)), Hit(fresh_created("l2", -10_000))
                => from_l2(fresh_created("l2", -10_000), true), asks_l2 = true;
        stale_hit_and_newer_stale_hit_l2_wins:
            Hit(stale_created("l1", -200_000)), Hit(stale_created("l2", -100_000))
                => from_l2(stale_created("l2", -100_000), true), asks_l2 = true;
        newer_stale_hit_and_stale_hit_l1_wins:
            Hit(stale_created("l1", -100_000)), Hit(stale_created("l2", -200_000))
                => from_l1(stale_created("l1", -100_000)), asks_l2 = true;
        stale_hits_tie_goes_to_l1:
            Hit(stale("l1")), Hit(stale("l2")) => from_l1(stale("l1")), asks_l2 = true;
        fresh_hit_then_miss:
            Hit(fresh("l1")), Miss => from_l1(fresh("l1")), asks_l2 = true;
        stale_hit_then_miss:
            Hit(stale("l1")), Miss => from_l1(stale("l1")), asks_l2 = true;
        fresh_hit_then_error_warns_about_l2:
            Hit(fresh("l1")), Fail => from_l1(fresh("l1")), asks_l2 = true;
        stale_hit_then_error_warns_about_l2:
            Hit(stale("l1")), Fail => from_l1(stale("l1")), asks_l2 = true;
        miss_then_fresh_hit_refills:
            Miss, Hit(fresh("l2")) => from_l2(fresh("l2"), true), asks_l2 = true;
        miss_then_stale_hit_refills:
            Miss, Hit(stale("l2")) => from_l2(stale("l2"), true), asks_l2 = true;
        miss_then_miss:
            Miss, Miss => Expect::Nothing, asks_l2 = true;
        miss_then_error_is_l2s_error:
            Miss, Fail => Expect::ErrorOf(Layer::L2), asks_l2 = true;
        error_then_fresh_hit_refills_and_warns_about_l1:
            Fail, Hit(fresh("l2")) => from_l2(fresh("l2"), true), asks_l2 = true;
        error_then_stale_hit_refills_and_warns_about_l1:
            Fail, Hit(stale("l2")) => from_l2(stale("l2"), true), asks_l2 = true;
        error_then_miss_is_l1s_error:
            Fail, Miss => Expect::ErrorOf(Layer::L1), asks_l2 = true;
        error_then_error_is_both_layers_failed:
            Fail, Fail => Expect::Both, asks_l2 = true;
    }

    #[test]
    fn a_fresh_l1_hit_is_not_final() {
        assert!(!ParallelReadPolicy.l1_fresh_hit_is_final());
        assert!(!AnyReadPolicy::from(ParallelReadPolicy).l1_fresh_hit_is_final());
    }

    /// Both reads start at once, and the read waits for both, even after a fresh L1 hit.
    #[tokio::test]
    async fn starts_both_and_waits_for_both() {
        let log = EventLog::new();
        let (c1, op1) = controlled::<Option<CacheValue>>("l1", &log);
        let (c2, op2) = controlled::<Option<CacheValue>>("l2", &log);
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut read = pin!(ParallelReadPolicy.read(&cx, op1, op2));
        expect_pending(&mut read).await;
        assert!(c1.started() && c2.started());
        c1.respond(Ok(Some(fresh_created("l1", -20_000))));
        expect_pending(&mut read).await;
        c2.respond(Ok(Some(fresh_created("l2", -10_000))));
        let outcome = expect_ready(&mut read).await.expect("a value");
        assert_eq!(outcome.value, Some(fresh_created("l2", -10_000)));
        assert!(outcome.refill_l1);
        assert_eq!(log.events(), ["l1:call", "l2:call", "l1:done", "l2:done"]);
    }
}

// ---------------------------------------------------------------------------------------------
// RaceReadPolicy
//
// | first to answer | then | returns | refills L1 |
// |---|---|---|---|
// | L1 fresh hit | L2 is the loser | L1's value | no |
// | L2 fresh hit | L1 is the loser | L2's value | no (L1's state is unknown) |
// | anything else | wait for the other | the shared combination (see ParallelReadPolicy) | as there |

mod race {
    use super::*;

    const DROP: RaceReadPolicy = RaceReadPolicy {
        loser: RaceLoser::Drop,
    };
    const FINISH: RaceReadPolicy = RaceReadPolicy {
        loser: RaceLoser::Finish,
    };

    /// Runs a race in which `first` answers at once with `first_answer` and the other tier
    /// is held until the race has been polled (and must then be waited for), then answers
    /// `second_answer`.
    async fn waits_then<R: ReadPolicy>(
        policy: R,
        first: Layer,
        first_answer: &Answer,
        second_answer: &Answer,
        expect: &Expect,
    ) {
        let logs = capture(Level::TRACE);
        let errors = Errors::new();
        let log = EventLog::new();
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let calls = Arc::new(AtomicUsize::new(0));
        let second = other(first);
        let (held, held_op) = controlled::<Option<CacheValue>>("held", &log);
        let ready_op = immediate(&calls, errors.answer(first, first_answer));
        let result = match first {
            Layer::L1 => {
                let mut read = pin!(policy.read(&cx, ready_op, held_op));
                expect_pending(&mut read).await;
                assert!(held.started());
                held.respond(errors.answer(second, second_answer));
                expect_ready(&mut read).await
            }
            Layer::L2 => {
                let mut read = pin!(policy.read(&cx, held_op, ready_op));
                expect_pending(&mut read).await;
                assert!(held.started());
                held.respond(errors.answer(second, second_answer));
                expect_ready(&mut read).await
            }
        };
        let mut failed = Vec::new();
        for (layer, answer) in [(first, first_answer), (second, second_answer)] {
            if matches!(answer, Fail) {
                failed.push(layer);
            }
        }
        failed.sort_by_key(|layer| *layer == Layer::L2);
        check(&result, expect, &errors, &failed, &logs);
        assert_eq!((calls.load(Ordering::SeqCst), held.calls()), (1, 1));
        assert!(held.completed());
        assert_eq!(
            offload.spawned(),
            0,
            "no loser when the race waits for both"
        );
    }

    /// One test per row: the first answer is not a fresh hit, so the race waits for the
    /// other tier and combines; run with both loser modes and through `AnyReadPolicy`.
    macro_rules! waiting_rows {
        ($($name:ident: first $first:expr => $a:expr, then $b:expr => $expect:expr;)*) => {
            $(
                #[tokio::test]
                async fn $name() {
                    for policy in [DROP, FINISH] {
                        waits_then(policy, $first, &$a, &$b, &$expect).await;
                        waits_then(AnyReadPolicy::from(policy), $first, &$a, &$b, &$expect).await;
                    }
                }
            )*
        };
    }

    waiting_rows! {
        l1_stale_first_then_l2_fresh:
            first Layer::L1 => Hit(stale("l1")), then Hit(fresh("l2")) => from_l2(fresh("l2"), true);
        l1_stale_first_then_l2_newer_stale:
            first Layer::L1 => Hit(stale_created("l1", -200_000)), then Hit(stale_created("l2", -100_000))
                => from_l2(stale_created("l2", -100_000), true);
        l1_stale_first_then_l2_older_stale:
            first Layer::L1 => Hit(stale_created("l1", -100_000)), then Hit(stale_created("l2", -200_000))
                => from_l1(stale_created("l1", -100_000));
        l1_stale_first_then_l2_stale_tie_goes_to_l1:
            first Layer::L1 => Hit(stale("l1")), then Hit(stale("l2")) => from_l1(stale("l1"));
        l1_stale_first_then_l2_miss:
            first Layer::L1 => Hit(stale("l1")), then Miss => from_l1(stale("l1"));
        l1_stale_first_then_l2_error:
            first Layer::L1 => Hit(stale("l1")), then Fail => from_l1(stale("l1"));
        l1_miss_first_then_l2_fresh:
            first Layer::L1 => Miss, then Hit(fresh("l2")) => from_l2(fresh("l2"), true);
        l1_miss_first_then_l2_stale:
            first Layer::L1 => Miss, then Hit(stale("l2")) => from_l2(stale("l2"), true);
        l1_miss_first_then_l2_miss:
            first Layer::L1 => Miss, then Miss => Expect::Nothing;
        l1_miss_first_then_l2_error:
            first Layer::L1 => Miss, then Fail => Expect::ErrorOf(Layer::L2);
        l1_error_first_then_l2_fresh:
            first Layer::L1 => Fail, then Hit(fresh("l2")) => from_l2(fresh("l2"), true);
        l1_error_first_then_l2_stale:
            first Layer::L1 => Fail, then Hit(stale("l2")) => from_l2(stale("l2"), true);
        l1_error_first_then_l2_miss:
            first Layer::L1 => Fail, then Miss => Expect::ErrorOf(Layer::L1);
        l1_error_first_then_l2_error:
            first Layer::L1 => Fail, then Fail => Expect::Both;

        l2_stale_first_then_l1_fresh:
            first Layer::L2 => Hit(stale("l2")), then Hit(fresh("l1")) => from_l1(fresh("l1"));
        l2_stale_first_then_l1_newer_stale:
            first Layer::L2 => Hit(stale_created("l2", -200_000)), then Hit(stale_created("l1", -100_000))
                => from_l1(stale_created("l1", -100_000));
        l2_stale_first_then_l1_older_stale:
            first Layer::L2 => Hit(stale_created("l2", -100_000)), then Hit(stale_created("l1", -200_000))
                => from_l2(stale_created("l2", -100_000), true);
        l2_stale_first_then_l1_stale_tie_goes_to_l1:
            first Layer::L2 => Hit(stale("l2")), then Hit(stale("l1")) => from_l1(stale("l1"));
        l2_stale_first_then_l1_miss:
            first Layer::L2 => Hit(stale("l2")), then Miss => from_l2(stale("l2"), true);
        l2_stale_first_then_l1_error:
            first Layer::L2 => Hit(stale("l2")), then Fail => from_l2(stale("l2"), true);
        l2_miss_first_then_l1_fresh:
            first Layer::L2 => Miss, then Hit(fresh("l1")) => from_l1(fresh("l1"));
        l2_miss_first_then_l1_stale:
            first Layer::L2 => Miss, then Hit(stale("l1")) => from_l1(stale("l1"));
        l2_miss_first_then_l1_miss:
            first Layer::L2 => Miss, then Miss => Expect::Nothing;
        l2_miss_first_then_l1_error:
            first Layer::L2 => Miss, then Fail => Expect::ErrorOf(Layer::L1);
        l2_error_first_then_l1_fresh:
            first Layer::L2 => Fail, then Hit(fresh("l1")) => from_l1(fresh("l1"));
        l2_error_first_then_l1_stale:
            first Layer::L2 => Fail, then Hit(stale("l1")) => from_l1(stale("l1"));
        l2_error_first_then_l1_miss:
            first Layer::L2 => Fail, then Miss => Expect::ErrorOf(Layer::L2);
        l2_error_first_then_l1_error:
            first Layer::L2 => Fail, then Fail => Expect::Both;
    }

    /// A fresh hit decides the race at once; the other read is the loser.
    async fn fresh_first(
        policy: RaceReadPolicy,
        winner: Layer,
        offload: &ManualOffload,
    ) -> (
        Result<ReadOutcome, BackendError>,
        common::Control<Option<CacheValue>>,
    ) {
        let log = EventLog::new();
        let cx = cx(offload);
        let calls = Arc::new(AtomicUsize::new(0));
        let (loser, loser_op) = controlled::<Option<CacheValue>>("loser", &log);
        let result = match winner {
            Layer::L1 => {
                let win = immediate(&calls, Ok(Some(fresh("l1"))));
                let mut read = pin!(policy.read(&cx, win, loser_op));
                expect_ready(&mut read).await
            }
            Layer::L2 => {
                let win = immediate(&calls, Ok(Some(fresh("l2"))));
                let mut read = pin!(policy.read(&cx, loser_op, win));
                expect_ready(&mut read).await
            }
        };
        assert_eq!((calls.load(Ordering::SeqCst), loser.calls()), (1, 1));
        (result, loser)
    }

    #[tokio::test]
    async fn l1_fresh_first_drops_the_l2_loser() {
        let offload = ManualOffload::new();
        let (result, loser) = fresh_first(DROP, Layer::L1, &offload).await;
        let outcome = result.expect("L1's value");
        assert_eq!(outcome.value, Some(fresh("l1")));
        assert_eq!(outcome.source, Some(Layer::L1));
        assert!(!outcome.refill_l1);
        assert!(loser.dropped(), "the loser future was dropped");
        assert_eq!(offload.spawned(), 0);
    }

    #[tokio::test]
    async fn l1_fresh_first_finishes_the_l2_loser_on_the_offload() {
        let offload = ManualOffload::new();
        let (result, loser) = fresh_first(FINISH, Layer::L1, &offload).await;
        let outcome = result.expect("L1's value");
        assert_eq!(outcome.value, Some(fresh("l1")));
        assert_eq!(outcome.source, Some(Layer::L1));
        assert!(!outcome.refill_l1);
        assert_eq!(offload.queued_names(), ["race-read-loser"]);
        assert!(!loser.dropped() && !loser.completed());
        // The loser's answer, even an error, is discarded.
        loser.respond(Err(l2_error(Op::Get)));
        let results = offload.run_all().await;
        assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
        assert!(loser.completed());
    }

    #[tokio::test]
    async fn l2_fresh_first_drops_the_l1_loser_and_does_not_refill() {
        let offload = ManualOffload::new();
        let (result, loser) = fresh_first(DROP, Layer::L2, &offload).await;
        let outcome = result.expect("L2's value");
        assert_eq!(outcome.value, Some(fresh("l2")));
        assert_eq!(outcome.source, Some(Layer::L2));
        assert!(!outcome.refill_l1, "L1's state is unknown");
        assert!(loser.dropped());
        assert_eq!(offload.spawned(), 0);
    }

    #[tokio::test]
    async fn l2_fresh_first_finishes_the_l1_loser_on_the_offload() {
        let offload = ManualOffload::new();
        let (result, loser) = fresh_first(FINISH, Layer::L2, &offload).await;
        let outcome = result.expect("L2's value");
        assert_eq!(outcome.value, Some(fresh("l2")));
        assert!(!outcome.refill_l1);
        assert_eq!(offload.queued(), 1);
        assert!(!loser.dropped());
        loser.respond(Ok(None));
        let results = offload.run_all().await;
        assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
        assert!(loser.completed());
    }

    #[tokio::test]
    async fn a_loser_the_offload_refuses_is_dropped() {
        let offload = ManualOffload::new();
        offload.reject_all(true);
        let (result, loser) = fresh_first(FINISH, Layer::L1, &offload).await;
        assert_eq!(result.expect("L1's value").value, Some(fresh("l1")));
        assert_eq!((offload.rejected(), offload.queued()), (1, 0));
        assert!(loser.dropped());
    }

    /// Two answers ready at once: L1 is polled first, so its fresh hit wins even against a
    /// newer L2 value, and L2's failure is never seen.
    #[tokio::test]
    async fn l1_is_polled_first() {
        for l2 in [Ok(Some(fresh_created("l2", -1))), Err(l2_error(Op::Get))] {
            let logs = capture(Level::TRACE);
            let offload = ManualOffload::new();
            let cx = cx(&offload);
            let (c1, c2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let outcome = DROP
                .read(
                    &cx,
                    immediate(&c1, Ok(Some(fresh("l1")))),
                    immediate(&c2, l2),
                )
                .await
                .expect("L1's value");
            assert_eq!(outcome.value, Some(fresh("l1")));
            assert_eq!(outcome.source, Some(Layer::L1));
            assert_eq!(
                (c1.load(Ordering::SeqCst), c2.load(Ordering::SeqCst)),
                (1, 1)
            );
            logs.assert_no_line("WARN");
        }
    }

    #[test]
    fn a_fresh_l1_hit_is_final() {
        assert!(DROP.l1_fresh_hit_is_final());
        assert!(FINISH.l1_fresh_hit_is_final());
        assert!(AnyReadPolicy::from(FINISH).l1_fresh_hit_is_final());
        assert_eq!(RaceReadPolicy::default(), DROP);
        assert_eq!(RaceReadPolicy::new(RaceLoser::Finish), FINISH);
    }
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn read_policy_names_round_trip() {
    for (name, policy) in [
        (
            "sequential",
            AnyReadPolicy::Sequential(SequentialReadPolicy),
        ),
        (
            "race",
            AnyReadPolicy::Race(RaceReadPolicy::new(RaceLoser::Drop)),
        ),
        (
            "race-finish",
            AnyReadPolicy::Race(RaceReadPolicy::new(RaceLoser::Finish)),
        ),
        ("parallel", AnyReadPolicy::Parallel(ParallelReadPolicy)),
    ] {
        assert_eq!(name.parse::<AnyReadPolicy>().expect("known name"), policy);
        assert_eq!(policy.to_string(), name);
        assert_eq!(policy.name(), name);
        assert_eq!(
            policy
                .to_string()
                .parse::<AnyReadPolicy>()
                .expect("round trip"),
            policy
        );
        // Case and surrounding blanks do not matter.
        let loud = format!("  {}\t", name.to_ascii_uppercase());
        assert_eq!(loud.parse::<AnyReadPolicy>().expect("any case"), policy);
    }
    assert_eq!(AnyReadPolicy::default().to_string(), "sequential");
}

#[test]
fn write_policy_names_round_trip() {
    for policy in [
        AnyWritePolicy::Sequential(tierkit_policy::SequentialWritePolicy),
        AnyWritePolicy::OptimisticParallel(tierkit_policy::OptimisticParallelWritePolicy),
        AnyWritePolicy::Race(tierkit_policy::RaceWritePolicy),
    ] {
        assert_eq!(policy.to_string(), policy.name());
        assert_eq!(
            policy
                .to_string()
                .parse::<AnyWritePolicy>()
                .expect("round trip"),
            policy
        );
        let loud = format!(" {} ", policy.name().to_ascii_uppercase());
        assert_eq!(loud.parse::<AnyWritePolicy>().expect("any case"), policy);
    }
    // `parallel` is an alias; the canonical name is displayed.
    let alias: AnyWritePolicy = "parallel".parse().expect("alias");
    assert_eq!(alias, AnyWritePolicy::default());
    assert_eq!(alias.to_string(), "optimistic-parallel");
    assert_eq!(AnyWritePolicy::default().to_string(), "optimistic-parallel");
}

#[test]
fn refill_policy_names_round_trip() {
    for policy in [RefillPolicy::Never, RefillPolicy::Always] {
        assert_eq!(policy.to_string(), policy.name());
        assert_eq!(
            policy
                .to_string()
                .parse::<RefillPolicy>()
                .expect("round trip"),
            policy
        );
        assert_eq!(
            policy
                .name()
                .to_ascii_uppercase()
                .parse::<RefillPolicy>()
                .expect("any case"),
            policy
        );
    }
    assert_eq!(RefillPolicy::default().to_string(), "always");
}

#[test]
fn unknown_policy_names_are_typed_errors() {
    fn check_unknown(
        err: CompositionError,
        expected_family: &str,
        expected_name: &str,
        expected_list: &str,
    ) {
        match &err {
            CompositionError::UnknownPolicy {
                family,
                name,
                expected,
            } => {
                assert_eq!(*family, expected_family);
                assert_eq!(name, expected_name);
                assert_eq!(*expected, expected_list);
            }
            other => panic!("expected UnknownPolicy, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "unknown {expected_family} policy {expected_name:?}; expected one of: {expected_list}"
            )
        );
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!err.is_transient());
        let backend: BackendError = err.into();
        assert_eq!(backend.kind(), ErrorKind::Unsupported);
        assert!(matches!(
            CompositionError::from_backend_error(&backend),
            Some(CompositionError::UnknownPolicy { .. })
        ));
    }

    check_unknown(
        "fastest".parse::<AnyReadPolicy>().expect_err("unknown"),
        "read",
        "fastest",
        "sequential, race, race-finish, parallel",
    );
    check_unknown(
        "write-behind"
            .parse::<AnyWritePolicy>()
            .expect_err("unknown"),
        "write",
        "write-behind",
        "sequential, optimistic-parallel, race",
    );
    check_unknown(
        "sometimes".parse::<RefillPolicy>().expect_err("unknown"),
        "refill",
        "sometimes",
        "never, always",
    );
    // The name is reported as given, blanks included.
    check_unknown(
        "".parse::<AnyReadPolicy>().expect_err("empty"),
        "read",
        "",
        "sequential, race, race-finish, parallel",
    );
}
