//! Every cell of the write policies' outcome tables, proved by calling each policy directly with
//! plain futures, plus the orderings each policy promises.
//!
//! | L1 write | L2 write | returns | logged |
//! |---|---|---|---|
//! | Ok | Ok | `Ok` | trace |
//! | Err | Ok | `Ok` | warning naming L1 and its error |
//! | Ok | Err | `Ok` | warning naming L2 and its error |
//! | Err | Err | `Err(BothLayersFailed { l1, l2 })` | error with both causes |

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{
    EventLog, assert_same_error, controlled, cx, expect_pending, expect_ready, immediate, l1_error,
    l2_error,
};
use tierkit_core::{BackendError, ErrorKind, Op};
use tierkit_policy::{
    AnyWritePolicy, CompositionError, OptimisticParallelWritePolicy, RaceWritePolicy,
    SequentialWritePolicy, TierWrite, WriteOutcome, WritePolicy, WriteStatus,
};
use tierkit_testkit::ManualOffload;
use tierkit_testkit::logs::{Capture, capture};
use tracing::Level;

/// What one cell run produced.
struct CellRun {
    result: Result<WriteOutcome, BackendError>,
    l1_calls: usize,
    l2_calls: usize,
}

/// Runs `policy` with two plain futures answering `r1` and `r2`.
async fn run_cell<W: WritePolicy>(
    policy: &W,
    offload: &ManualOffload,
    r1: TierWrite,
    r2: TierWrite,
) -> CellRun {
    let (c1, c2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let cx = cx(offload);
    let result = policy
        .write(&cx, immediate(&c1, r1), immediate(&c2, r2))
        .await;
    CellRun {
        result,
        l1_calls: c1.load(Ordering::SeqCst),
        l2_calls: c2.load(Ordering::SeqCst),
    }
}

fn assert_written(status: &WriteStatus) {
    assert!(
        matches!(status, WriteStatus::Written),
        "expected Written, got {status:?}"
    );
}

fn assert_offloaded(status: &WriteStatus) {
    assert!(
        matches!(status, WriteStatus::Offloaded),
        "expected Offloaded, got {status:?}"
    );
}

fn assert_failed_with(status: &WriteStatus, expected: &BackendError) {
    match status {
        WriteStatus::Failed(error) => assert_same_error(error, expected),
        other => panic!("expected Failed({expected}), got {other:?}"),
    }
}

/// The `WARN` line of a write that failed on one tier, naming that tier and its error.
fn assert_warns_about(logs: &Capture, tier: &str, error: &BackendError) {
    let tier = format!("tier={tier}");
    logs.assert_lines(1, &["WARN", &tier, &error.to_string()]);
    logs.assert_lines(1, &["WARN"]);
    logs.assert_no_line("ERROR");
}

/// Err/Err: `BothLayersFailed` keeping both causes (kind and tier label included), and one
/// `ERROR` line naming both tiers and both causes.
fn assert_both_failed(
    logs: &Capture,
    result: &Result<WriteOutcome, BackendError>,
    e1: &BackendError,
    e2: &BackendError,
) {
    let err = match result {
        Err(err) => err,
        Ok(outcome) => panic!("expected BothLayersFailed, got {outcome:?}"),
    };
    match CompositionError::from_backend_error(err) {
        Some(CompositionError::BothLayersFailed { l1, l2 }) => {
            assert_same_error(l1, e1);
            assert_same_error(l2, e2);
            assert_eq!(l1.kind(), ErrorKind::Internal);
            assert_eq!(l1.tier_label(), Some("moka"));
            assert_eq!(l2.kind(), ErrorKind::Connection);
            assert_eq!(l2.tier_label(), Some("redis"));
        }
        other => panic!("expected BothLayersFailed, got {other:?} from {err:?}"),
    }
    // Kinds differ: the composite takes L2's; one cause is transient, so the whole is.
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(err.is_transient());
    logs.assert_lines(
        1,
        &[
            "ERROR",
            "l1 (moka)",
            "l2 (redis)",
            &e1.to_string(),
            &e2.to_string(),
        ],
    );
    logs.assert_no_line("WARN");
}

// ---------------------------------------------------------------------------------------------
// The four cells of the policies that wait for both writes (sequential, optimistic parallel)

async fn settled_ok_ok<W: WritePolicy>(policy: W) {
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Ok(()), Ok(())).await;
    let outcome = run.result.expect("Ok/Ok is Ok");
    assert_written(&outcome.l1);
    assert_written(&outcome.l2);
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.spawned(), 0);
    logs.assert_lines(
        1,
        &[
            "TRACE",
            "write succeeded on both tiers",
            "l1 (moka)",
            "l2 (redis)",
        ],
    );
    logs.assert_no_line("WARN");
    logs.assert_no_line("ERROR");
}

async fn settled_err_ok<W: WritePolicy>(policy: W) {
    let e1 = l1_error(Op::Set);
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Err(e1.clone()), Ok(())).await;
    let outcome = run.result.expect("Err/Ok is Ok");
    assert_failed_with(&outcome.l1, &e1);
    assert_written(&outcome.l2);
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.spawned(), 0);
    assert_warns_about(&logs, "l1 (moka)", &e1);
}

async fn settled_ok_err<W: WritePolicy>(policy: W) {
    let e2 = l2_error(Op::Set);
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Ok(()), Err(e2.clone())).await;
    let outcome = run.result.expect("Ok/Err is Ok");
    assert_written(&outcome.l1);
    assert_failed_with(&outcome.l2, &e2);
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.spawned(), 0);
    assert_warns_about(&logs, "l2 (redis)", &e2);
}

async fn settled_err_err<W: WritePolicy>(policy: W) {
    let (e1, e2) = (l1_error(Op::Set), l2_error(Op::Set));
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Err(e1.clone()), Err(e2.clone())).await;
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.spawned(), 0);
    assert_both_failed(&logs, &run.result, &e1, &e2);
}

#[tokio::test]
async fn sequential_ok_ok() {
    settled_ok_ok(SequentialWritePolicy).await;
    settled_ok_ok(AnyWritePolicy::from(SequentialWritePolicy)).await;
}

#[tokio::test]
async fn sequential_err_ok() {
    settled_err_ok(SequentialWritePolicy).await;
    settled_err_ok(AnyWritePolicy::from(SequentialWritePolicy)).await;
}

#[tokio::test]
async fn sequential_ok_err() {
    settled_ok_err(SequentialWritePolicy).await;
    settled_ok_err(AnyWritePolicy::from(SequentialWritePolicy)).await;
}

#[tokio::test]
async fn sequential_err_err() {
    settled_err_err(SequentialWritePolicy).await;
    settled_err_err(AnyWritePolicy::from(SequentialWritePolicy)).await;
}

#[tokio::test]
async fn optimistic_parallel_ok_ok() {
    settled_ok_ok(OptimisticParallelWritePolicy).await;
    settled_ok_ok(AnyWritePolicy::default()).await;
}

#[tokio::test]
async fn optimistic_parallel_err_ok() {
    settled_err_ok(OptimisticParallelWritePolicy).await;
    settled_err_ok(AnyWritePolicy::default()).await;
}

#[tokio::test]
async fn optimistic_parallel_ok_err() {
    settled_ok_err(OptimisticParallelWritePolicy).await;
    settled_ok_err(AnyWritePolicy::default()).await;
}

#[tokio::test]
async fn optimistic_parallel_err_err() {
    settled_err_err(OptimisticParallelWritePolicy).await;
    settled_err_err(AnyWritePolicy::default()).await;
}

// ---------------------------------------------------------------------------------------------
// The four cells of the race write, with plain futures (L1 is polled first, so with two ready
// futures L1 finishes first)

async fn race_ok_ok_cell<W: WritePolicy>(policy: W) {
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Ok(()), Ok(())).await;
    let outcome = run.result.expect("Ok/Ok is Ok");
    assert_written(&outcome.l1);
    assert_offloaded(&outcome.l2);
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.queued_names(), ["race-write-loser"]);
    let results = offload.run_all().await;
    assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
    logs.assert_no_line("WARN");
    logs.assert_no_line("ERROR");
}

async fn race_ok_err_cell<W: WritePolicy>(policy: W) {
    let e2 = l2_error(Op::Set);
    let logs = capture(Level::TRACE);
    let offload = ManualOffload::new();
    let run = run_cell(&policy, &offload, Ok(()), Err(e2.clone())).await;
    let outcome = run.result.expect("Ok/Err is Ok");
    assert_written(&outcome.l1);
    assert_offloaded(&outcome.l2);
    assert_eq!((run.l1_calls, run.l2_calls), (1, 1));
    assert_eq!(offload.queued(), 1);
    // The failure is seen, and logged, when the loser completes in the background.
    logs.assert_no_line("WARN");
    let results = offload.run_all().await;
    match results.as_slice() {
        [Err(error)] => assert_same_error(error, &e2),
        other => panic!("expected the loser's error, got {other:?}"),
    }
    assert_warns_about(&logs, "l2 (redis)", &e2);
}

#[tokio::test]
async fn race_ok_ok() {
    race_ok_ok_cell(RaceWritePolicy).await;
    race_ok_ok_cell(AnyWritePolicy::from(RaceWritePolicy)).await;
}

#[tokio::test]
async fn race_err_ok() {
    settled_err_ok(RaceWritePolicy).await;
    settled_err_ok(AnyWritePolicy::from(RaceWritePolicy)).await;
}

#[tokio::test]
async fn race_ok_err() {
    race_ok_err_cell(RaceWritePolicy).await;
    race_ok_err_cell(AnyWritePolicy::from(RaceWritePolicy)).await;
}

#[tokio::test]
async fn race_err_err() {
    settled_err_err(RaceWritePolicy).await;
    settled_err_err(AnyWritePolicy::from(RaceWritePolicy)).await;
}

// ---------------------------------------------------------------------------------------------
// Orderings

#[tokio::test]
async fn sequential_starts_l2_only_after_l1_finished() {
    let e1 = l1_error(Op::Set);
    for l1_result in [Ok(()), Err(e1.clone())] {
        let l1_fails = l1_result.is_err();
        let log = EventLog::new();
        let (c1, op1) = controlled::<()>("l1", &log);
        let (c2, op2) = controlled::<()>("l2", &log);
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut write = pin!(SequentialWritePolicy.write(&cx, op1, op2));

        expect_pending(&mut write).await;
        assert!(c1.started());
        assert!(!c2.started(), "L2 started before L1 finished");

        c1.respond(l1_result);
        expect_pending(&mut write).await;
        assert!(c1.completed());
        assert!(c2.started(), "L2 is written whatever became of L1's write");

        c2.respond(Ok(()));
        let outcome = expect_ready(&mut write).await.expect("L2 succeeded");
        assert_eq!(outcome.l1.is_failed(), l1_fails);
        assert_written(&outcome.l2);
        assert_eq!(log.events(), ["l1:call", "l1:done", "l2:call", "l2:done"]);
        assert_eq!((c1.calls(), c2.calls()), (1, 1));
    }
}

#[tokio::test]
async fn optimistic_parallel_starts_both_before_either_finishes() {
    let log = EventLog::new();
    let (c1, op1) = controlled::<()>("l1", &log);
    let (c2, op2) = controlled::<()>("l2", &log);
    let offload = ManualOffload::new();
    let cx = cx(&offload);
    let mut write = pin!(OptimisticParallelWritePolicy.write(&cx, op1, op2));

    expect_pending(&mut write).await;
    assert!(c1.started() && c2.started());
    assert!(!c1.completed() && !c2.completed());

    // It returns after the slower write, whichever that is.
    c2.respond(Ok(()));
    expect_pending(&mut write).await;
    c1.respond(Ok(()));
    let outcome = expect_ready(&mut write).await.expect("both succeeded");
    assert_written(&outcome.l1);
    assert_written(&outcome.l2);
    assert_eq!(log.events(), ["l1:call", "l2:call", "l2:done", "l1:done"]);
    assert_eq!((c1.calls(), c2.calls()), (1, 1));
}

#[tokio::test]
async fn race_l1_wins_and_l2_finishes_on_the_offload() {
    let logs = capture(Level::TRACE);
    let log = EventLog::new();
    let calls1 = Arc::new(AtomicUsize::new(0));
    let (c2, op2) = controlled::<()>("l2", &log);
    let offload = ManualOffload::new();
    let cx = cx(&offload);
    let mut write = pin!(RaceWritePolicy.write(&cx, immediate(&calls1, Ok(())), op2));

    let outcome = expect_ready(&mut write).await.expect("L1 won");
    assert_written(&outcome.l1);
    assert_offloaded(&outcome.l2);
    assert_eq!(offload.queued(), 1);
    assert!(c2.started() && !c2.completed() && !c2.dropped());

    c2.respond(Ok(()));
    let results = offload.run_all().await;
    assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
    assert!(c2.completed());
    assert_eq!((calls1.load(Ordering::SeqCst), c2.calls()), (1, 1));
    logs.assert_no_line("WARN");
}

#[tokio::test]
async fn race_l1_wins_and_a_failing_l2_loser_is_logged() {
    let e2 = l2_error(Op::Set);
    let logs = capture(Level::TRACE);
    let log = EventLog::new();
    let calls1 = Arc::new(AtomicUsize::new(0));
    let (c2, op2) = controlled::<()>("l2", &log);
    let offload = ManualOffload::new();
    let cx = cx(&offload);
    let mut write = pin!(RaceWritePolicy.write(&cx, immediate(&calls1, Ok(())), op2));

    let outcome = expect_ready(&mut write).await.expect("L1 won");
    assert_offloaded(&outcome.l2);
    c2.respond(Err(e2.clone()));
    let results = offload.run_all().await;
    assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
    logs.assert_lines(
        1,
        &[
            "WARN",
            "after the race was decided",
            "tier=l2 (redis)",
            &e2.to_string(),
        ],
    );
    logs.assert_no_line("ERROR");
}

#[tokio::test]
async fn race_l2_wins_and_l1_finishes_on_the_offload() {
    let e1 = l1_error(Op::Set);
    let logs = capture(Level::TRACE);
    let log = EventLog::new();
    let (c1, op1) = controlled::<()>("l1", &log);
    let calls2 = Arc::new(AtomicUsize::new(0));
    let offload = ManualOffload::new();
    let cx = cx(&offload);
    let mut write = pin!(RaceWritePolicy.write(&cx, op1, immediate(&calls2, Ok(()))));

    let outcome = expect_ready(&mut write).await.expect("L2 won");
    assert_offloaded(&outcome.l1);
    assert_written(&outcome.l2);
    assert_eq!(offload.queued(), 1);
    assert!(c1.started() && !c1.completed() && !c1.dropped());

    c1.respond(Err(e1.clone()));
    let results = offload.run_all().await;
    assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
    assert!(c1.completed());
    assert_eq!((c1.calls(), calls2.load(Ordering::SeqCst)), (1, 1));
    logs.assert_lines(1, &["WARN", "tier=l1 (moka)", &e1.to_string()]);
}

/// The first write to finish fails: the race waits for the other, and its success is `Ok`
/// with a warning naming the failed tier. Both orders.
#[tokio::test]
async fn race_first_fails_then_second_succeeds() {
    let (e1, e2) = (l1_error(Op::Set), l2_error(Op::Set));
    // L1 fails first.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let calls1 = Arc::new(AtomicUsize::new(0));
        let (c2, op2) = controlled::<()>("l2", &log);
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, immediate(&calls1, Err(e1.clone())), op2));
        expect_pending(&mut write).await;
        c2.respond(Ok(()));
        let outcome = expect_ready(&mut write).await.expect("L2 succeeded");
        assert_failed_with(&outcome.l1, &e1);
        assert_written(&outcome.l2);
        assert_eq!(offload.spawned(), 0);
        assert_warns_about(&logs, "l1 (moka)", &e1);
    }
    // L2 fails first.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let (c1, op1) = controlled::<()>("l1", &log);
        let calls2 = Arc::new(AtomicUsize::new(0));
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, op1, immediate(&calls2, Err(e2.clone()))));
        expect_pending(&mut write).await;
        c1.respond(Ok(()));
        let outcome = expect_ready(&mut write).await.expect("L1 succeeded");
        assert_written(&outcome.l1);
        assert_failed_with(&outcome.l2, &e2);
        assert_eq!(offload.spawned(), 0);
        assert_warns_about(&logs, "l2 (redis)", &e2);
    }
}

#[tokio::test]
async fn race_first_fails_then_second_fails() {
    let (e1, e2) = (l1_error(Op::Set), l2_error(Op::Set));
    // L1 fails first.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let calls1 = Arc::new(AtomicUsize::new(0));
        let (c2, op2) = controlled::<()>("l2", &log);
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, immediate(&calls1, Err(e1.clone())), op2));
        expect_pending(&mut write).await;
        c2.respond(Err(e2.clone()));
        let result = expect_ready(&mut write).await;
        assert_both_failed(&logs, &result, &e1, &e2);
        assert_eq!(offload.spawned(), 0);
    }
    // L2 fails first.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let (c1, op1) = controlled::<()>("l1", &log);
        let calls2 = Arc::new(AtomicUsize::new(0));
        let offload = ManualOffload::new();
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, op1, immediate(&calls2, Err(e2.clone()))));
        expect_pending(&mut write).await;
        c1.respond(Err(e1.clone()));
        let result = expect_ready(&mut write).await;
        assert_both_failed(&logs, &result, &e1, &e2);
        assert_eq!(offload.spawned(), 0);
    }
}

/// When the offload refuses the loser, the loser is completed in place before the write
/// returns, and its status says how it ended.
#[tokio::test]
async fn race_loser_refused_by_the_offload_is_completed_in_place() {
    let e1 = l1_error(Op::Set);
    // L1 wins; L2 then succeeds in place.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let calls1 = Arc::new(AtomicUsize::new(0));
        let (c2, op2) = controlled::<()>("l2", &log);
        let offload = ManualOffload::new();
        offload.reject_all(true);
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, immediate(&calls1, Ok(())), op2));

        expect_pending(&mut write).await;
        assert!(c2.started() && !c2.completed());
        c2.respond(Ok(()));
        let outcome = expect_ready(&mut write).await.expect("L1 won");
        assert_written(&outcome.l1);
        assert_written(&outcome.l2);
        assert!(c2.completed() && !c2.dropped());
        assert_eq!((offload.rejected(), offload.queued()), (1, 0));
        logs.assert_no_line("WARN");
    }
    // L2 wins; L1 then fails in place.
    {
        let logs = capture(Level::TRACE);
        let log = EventLog::new();
        let (c1, op1) = controlled::<()>("l1", &log);
        let calls2 = Arc::new(AtomicUsize::new(0));
        let offload = ManualOffload::new();
        offload.reject_all(true);
        let cx = cx(&offload);
        let mut write = pin!(RaceWritePolicy.write(&cx, op1, immediate(&calls2, Ok(()))));

        expect_pending(&mut write).await;
        c1.respond(Err(e1.clone()));
        let outcome = expect_ready(&mut write).await.expect("L2 won");
        assert_failed_with(&outcome.l1, &e1);
        assert_written(&outcome.l2);
        assert_eq!((offload.rejected(), offload.queued()), (1, 0));
        logs.assert_line(&["WARN", "tier=l1 (moka)", &e1.to_string()]);
        logs.assert_no_line("ERROR");
    }
}

#[tokio::test]
async fn race_starts_both_writes_before_either_finishes() {
    let log = EventLog::new();
    let (c1, op1) = controlled::<()>("l1", &log);
    let (c2, op2) = controlled::<()>("l2", &log);
    let offload = ManualOffload::new();
    let cx = cx(&offload);
    let mut write = pin!(RaceWritePolicy.write(&cx, op1, op2));
    expect_pending(&mut write).await;
    assert!(c1.started() && c2.started());
    c2.respond(Ok(()));
    let outcome = expect_ready(&mut write).await.expect("L2 won");
    assert_offloaded(&outcome.l1);
    assert_written(&outcome.l2);
    assert_eq!(log.events(), ["l1:call", "l2:call", "l2:done"]);
    c1.respond(Ok(()));
    assert!(matches!(offload.run_all().await.as_slice(), [Ok(())]));
    assert_eq!(log.events(), ["l1:call", "l2:call", "l2:done", "l1:done"]);
}
