//! Tests of the test tiers themselves.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tierkit_core::{
    Backend, BackendError, ErrorKind, Offload, OffloadTask, Op, Probe, RejectReason,
};
use tierkit_testkit::{
    CallCounts, Clock, Fault, FaultyBackend, InjectedFault, ManualClock, ManualOffload,
    MemoryBackend, Timestamp, key, scripted, value,
};

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

fn clock() -> (ManualClock, Clock) {
    let manual = ManualClock::new(Timestamp::from_unix_millis(1_700_000_000_000));
    (manual.clone(), Clock::from(manual))
}

fn counts(get: u64, set: u64, delete: u64, clear: u64) -> CallCounts {
    CallCounts {
        get,
        set,
        delete,
        clear,
    }
}

// ---------------------------------------------------------------------------------------------
// MemoryBackend

#[tokio::test]
async fn memory_counts_calls_and_clones_share_state() {
    let (manual, clock) = clock();
    let tier = MemoryBackend::new("mem").with_clock(clock);
    let handle = tier.clone();
    let v = value("v", manual.now(), Duration::from_secs(10));
    tier.set(&key("a"), v.clone()).await.unwrap();
    assert_eq!(handle.get(&key("a")).await.unwrap(), Some(v.clone()));
    handle.delete(&key("b")).await.unwrap();
    tier.clear().await.unwrap();
    assert_eq!(tier.calls(), counts(1, 1, 1, 1));
    assert_eq!(handle.calls().total(), 4);
    assert!(handle.is_empty());

    // insert_raw and peek do not count.
    handle.insert_raw(key("raw"), v.clone());
    assert_eq!(tier.peek(&key("raw")), Some(v));
    assert_eq!(tier.len(), 1);
    assert_eq!(tier.calls(), counts(1, 1, 1, 1));
    assert_eq!(tier.label(), "mem");
}

#[tokio::test]
async fn memory_hides_and_drops_expired_values() {
    let (manual, clock) = clock();
    let tier = MemoryBackend::new("mem").with_clock(clock);
    let now = manual.now();
    tier.set(&key("a"), value("v", now, Duration::from_secs(10)))
        .await
        .unwrap();
    // A raw expired leftover is never served either.
    let expired = value(
        "old",
        now.saturating_sub(Duration::from_secs(20)),
        Duration::from_secs(1),
    );
    tier.insert_raw(key("leftover"), expired.clone());
    assert_eq!(tier.len(), 2);
    assert_eq!(tier.peek(&key("leftover")), None);
    assert_eq!(tier.get(&key("leftover")).await.unwrap(), None);
    assert_eq!(tier.len(), 1, "get removed the expired entry");

    manual.advance(Duration::from_secs(10));
    assert_eq!(tier.peek(&key("a")), None);
    assert_eq!(tier.get(&key("a")).await.unwrap(), None);
    assert!(tier.is_empty());

    // Setting an expired value removes the key.
    tier.set(&key("b"), value("v", manual.now(), Duration::from_secs(10)))
        .await
        .unwrap();
    tier.set(&key("b"), expired).await.unwrap();
    assert!(tier.is_empty());
}

#[tokio::test]
async fn memory_ready_versus_remote() {
    let ready = MemoryBackend::new("mem");
    assert!(ready.get(&key("a")).is_ready());
    assert!(
        ready
            .set(
                &key("a"),
                value("v", Clock::System.now(), Duration::from_secs(9))
            )
            .is_ready()
    );
    assert!(!ready.is_remote());

    let remote = MemoryBackend::new("mem").remote();
    assert!(remote.is_remote());
    let k = key("a");
    let mut fut = remote.set(&k, value("v", Clock::System.now(), Duration::from_secs(9)));
    assert!(!fut.is_ready());
    // It yields once before answering.
    assert!(poll_once(&mut fut).await.is_pending());
    assert!(matches!(poll_once(&mut fut).await, Poll::Ready(Ok(()))));
    assert!(remote.peek(&k).is_some());
}

#[tokio::test]
async fn memory_probe_answers_when_ready_and_counts_as_a_get() {
    let (manual, clock) = clock();
    let tier = MemoryBackend::new("mem").with_clock(clock.clone());
    let k = key("a");
    assert_eq!(tier.probe(&k), Probe::Miss);
    let v = value("v", manual.now(), Duration::from_secs(10));
    tier.set(&k, v.clone()).await.unwrap();
    assert_eq!(tier.probe(&k), Probe::Fresh(v.clone()));
    assert_eq!(tier.calls(), counts(2, 1, 0, 0));

    let remote = MemoryBackend::new("mem").with_clock(clock).remote();
    remote.insert_raw(k.clone(), v);
    assert_eq!(remote.probe(&k), Probe::Unknown);
    assert_eq!(remote.calls(), counts(0, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// FaultyBackend

#[tokio::test]
async fn faulty_passes_through_without_faults_and_keeps_ready_answers() {
    let memory = MemoryBackend::new("mem");
    let tier = FaultyBackend::new(memory.clone());
    let v = value("v", Clock::System.now(), Duration::from_secs(60));
    let k = key("a");
    let fut = tier.set(&k, v.clone());
    assert!(fut.is_ready());
    fut.await.unwrap();
    assert!(tier.get(&key("a")).is_ready());
    assert_eq!(tier.get(&key("a")).await.unwrap(), Some(v));
    assert_eq!(tier.calls(), counts(2, 1, 0, 0));
    assert_eq!(tier.inner().calls(), counts(2, 1, 0, 0));
    assert_eq!(tier.label(), "mem");
}

#[tokio::test]
async fn faulty_one_shot_faults_are_fifo_and_per_op() {
    let memory = MemoryBackend::new("mem");
    let tier = FaultyBackend::new(memory.clone());
    tier.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    tier.push(Op::Get, Fault::Fail(ErrorKind::PermissionDenied));
    tier.push(Op::Set, Fault::Fail(ErrorKind::Timeout));
    assert_eq!(tier.queued(Op::Get), 2);
    assert_eq!(tier.queued(Op::Delete), 0);

    let k = key("a");
    let first = tier.get(&k);
    assert!(!first.is_ready(), "faulted calls are pending");
    let first = first.await.unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Connection);
    assert!(first.is_transient());
    assert_eq!(first.tier_label(), Some("mem"));
    let source = first
        .source()
        .and_then(|s| s.downcast_ref::<InjectedFault>());
    assert_eq!(
        source,
        Some(&InjectedFault {
            op: Op::Get,
            kind: ErrorKind::Connection
        })
    );

    let second = tier.get(&key("a")).await.unwrap_err();
    assert_eq!(second.kind(), ErrorKind::PermissionDenied);
    assert!(!second.is_transient());

    let set = tier
        .set(
            &key("a"),
            value("v", Clock::System.now(), Duration::from_secs(9)),
        )
        .await
        .unwrap_err();
    assert_eq!(set.kind(), ErrorKind::Timeout);
    assert!(set.is_transient());

    // Queues are spent: everything passes through now, and the inner tier saw only that.
    assert_eq!(tier.get(&key("a")).await.unwrap(), None);
    assert_eq!(tier.calls(), counts(3, 1, 0, 0));
    assert_eq!(memory.calls(), counts(1, 0, 0, 0));
}

#[tokio::test]
async fn faulty_always_applies_after_the_queue_until_cleared() {
    let tier = FaultyBackend::new(MemoryBackend::new("mem"));
    tier.always(Op::Delete, Fault::Fail(ErrorKind::Internal));
    tier.push(Op::Delete, Fault::Fail(ErrorKind::Connection));
    let k = key("a");
    assert_eq!(
        tier.delete(&k).await.unwrap_err().kind(),
        ErrorKind::Connection
    );
    for _ in 0..3 {
        assert_eq!(
            tier.delete(&k).await.unwrap_err().kind(),
            ErrorKind::Internal
        );
    }
    // A clone shares the schedule.
    let clone = tier.clone();
    clone.clear_faults();
    assert!(tier.delete(&k).await.is_ok());
    assert_eq!(clone.calls().delete, 5);
    assert_eq!(tier.inner().calls().delete, 1);
}

#[tokio::test]
async fn faulty_probe_is_unknown_while_a_get_fault_is_scheduled() {
    let memory = MemoryBackend::new("mem");
    let v = value("v", Clock::System.now(), Duration::from_secs(60));
    memory.insert_raw(key("a"), v.clone());
    let tier = FaultyBackend::new(memory.clone());
    let k = key("a");
    assert_eq!(tier.probe(&k), Probe::Fresh(v.clone()));
    assert_eq!(tier.calls().get, 1);

    tier.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    assert!(tier.has_fault(Op::Get));
    assert!(!tier.has_fault(Op::Set));
    // The probe does not consume the fault: the get that follows takes it.
    assert_eq!(tier.probe(&k), Probe::Unknown);
    assert_eq!(tier.queued(Op::Get), 1);
    assert!(tier.get(&k).await.is_err());
    assert_eq!(tier.probe(&k), Probe::Fresh(v));
    assert_eq!(tier.calls().get, 3);

    // Faults on other operations leave probes alone; a remote inner tier cannot tell.
    tier.always(Op::Set, Fault::Hang);
    assert_ne!(tier.probe(&k), Probe::Unknown);
    let remote = FaultyBackend::new(MemoryBackend::new("mem").remote());
    assert_eq!(remote.probe(&k), Probe::Unknown);
    assert_eq!(remote.calls().get, 0);
}

#[tokio::test]
async fn faulty_corrupt() {
    let tier = FaultyBackend::new(MemoryBackend::new("mem"));
    tier.push(Op::Get, Fault::Corrupt);
    tier.push(Op::Set, Fault::Corrupt);
    tier.push(Op::Clear, Fault::Corrupt);
    let k = key("a");
    let get = tier.get(&k).await.unwrap_err();
    assert!(matches!(get, BackendError::Corrupt { op: Op::Get, .. }));
    assert!(!get.is_transient());
    let set = tier
        .set(&k, value("v", Clock::System.now(), Duration::from_secs(9)))
        .await
        .unwrap_err();
    assert_eq!(set.kind(), ErrorKind::Corrupt);
    assert_eq!(tier.clear().await.unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(tier.inner().calls().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn faulty_delay_waits_on_tokio_time_then_passes_through() {
    let memory = MemoryBackend::new("mem");
    let tier = FaultyBackend::new(memory.clone());
    let v = value("v", Clock::System.now(), Duration::from_secs(60));
    memory.insert_raw(key("a"), v.clone());
    tier.push(Op::Get, Fault::Delay(Duration::from_secs(5)));

    let k = key("a");
    let mut fut = tier.get(&k);
    assert!(poll_once(&mut fut).await.is_pending());
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(poll_once(&mut fut).await.is_pending());
    assert_eq!(
        memory.calls().get,
        0,
        "the inner call starts after the delay"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(matches!(poll_once(&mut fut).await, Poll::Ready(Ok(Some(ref got))) if *got == v));
    assert_eq!(memory.calls().get, 1);
}

#[tokio::test(start_paused = true)]
async fn faulty_hang_never_completes() {
    let tier = FaultyBackend::new(MemoryBackend::new("mem"));
    tier.always(Op::Get, Fault::Hang);
    let k = key("a");
    let result = tokio::time::timeout(Duration::from_secs(3600), tier.get(&k)).await;
    assert!(result.is_err(), "a hung call never answers");
    assert_eq!(tier.inner().calls().get, 0);
}

// ---------------------------------------------------------------------------------------------
// ScriptedBackend

#[tokio::test]
async fn scripted_delivers_calls_in_order_with_their_arguments() {
    let (tier, mut handle) = scripted("l2");
    assert_eq!(tier.label(), "l2");
    let v = value("v", Clock::System.now(), Duration::from_secs(60));
    let (a, b) = (key("a"), key("b"));

    let get = tier.get(&a);
    let set = tier.set(&b, v.clone());
    let delete = tier.delete(&a);
    let clear = tier.clear();
    assert!(!get.is_ready());
    assert_eq!(handle.waiting(), 4);

    let call = handle.next_call().await;
    assert_eq!(
        (call.op(), call.key(), call.value()),
        (Op::Get, Some(&a), None)
    );
    call.respond_hit(v.clone());
    let call = handle.next_call().await;
    assert_eq!(
        (call.op(), call.key(), call.value()),
        (Op::Set, Some(&b), Some(&v))
    );
    call.respond_write(Err(BackendError::timeout(
        "l2",
        Op::Set,
        Duration::from_secs(1),
    )));
    let call = handle.next_call().await;
    assert_eq!(call.op(), Op::Delete);
    call.respond_ok();
    let call = handle.try_next_call().unwrap();
    assert_eq!((call.op(), call.key()), (Op::Clear, None));
    call.respond_err(BackendError::internal("l2", Op::Clear, "nope"));
    assert!(handle.try_next_call().is_none());

    assert_eq!(get.await.unwrap(), Some(v));
    assert_eq!(set.await.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(delete.await.is_ok());
    assert_eq!(clear.await.unwrap_err().kind(), ErrorKind::Internal);
}

#[tokio::test]
async fn scripted_answers_in_any_order() {
    let (tier, mut handle) = scripted("l2");
    let (a, b) = (key("a"), key("b"));
    let mut first = tier.get(&a);
    let mut second = tier.get(&b);
    let call_a = handle.next_call().await;
    let call_b = handle.next_call().await;
    call_b.respond_miss();
    assert!(poll_once(&mut first).await.is_pending());
    assert!(matches!(
        poll_once(&mut second).await,
        Poll::Ready(Ok(None))
    ));
    call_a.respond_get(Ok(None));
    assert!(matches!(poll_once(&mut first).await, Poll::Ready(Ok(None))));
}

#[tokio::test]
async fn scripted_unanswered_or_orphaned_calls_fail_with_internal() {
    let (tier, mut handle) = scripted("l2");
    let k = key("a");
    let fut = tier.get(&k);
    drop(handle.next_call().await);
    let err = fut.await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(err.tier_label(), Some("l2"));

    // The call notices when its operation was dropped.
    let fut = tier.get(&k);
    let call = handle.next_call().await;
    assert!(!call.is_abandoned());
    drop(fut);
    assert!(call.is_abandoned());
    call.respond_miss(); // harmless

    drop(handle);
    let err = tier
        .set(&k, value("v", Clock::System.now(), Duration::from_secs(1)))
        .await;
    assert_eq!(err.unwrap_err().kind(), ErrorKind::Internal);
}

#[tokio::test]
#[should_panic(expected = "respond_get called on a set call")]
async fn scripted_wrong_answer_type_panics() {
    let (tier, mut handle) = scripted("l2");
    let k = key("a");
    let _fut = tier.set(&k, value("v", Clock::System.now(), Duration::from_secs(1)));
    handle.next_call().await.respond_get(Ok(None));
}

#[tokio::test]
async fn scripted_from_another_task() {
    let (tier, mut handle) = scripted("l2");
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let call = handle.next_call().await;
            match call.op() {
                Op::Get => call.respond_miss(),
                _ => call.respond_ok(),
            }
        }
        handle
    });
    let k = key("a");
    assert!(
        tier.set(&k, value("v", Clock::System.now(), Duration::from_secs(1)))
            .await
            .is_ok()
    );
    assert_eq!(tier.get(&k).await.unwrap(), None);
    assert!(tier.clone().clear().await.is_ok());
    let mut handle = server.await.unwrap();
    assert!(handle.try_next_call().is_none());
}

// ---------------------------------------------------------------------------------------------
// ManualOffload

#[tokio::test]
async fn manual_offload_queues_until_run() {
    let offload = ManualOffload::new();
    let memory = MemoryBackend::new("mem");
    let m = memory.clone();
    offload
        .spawn(OffloadTask::new("refill", async move {
            m.set(
                &key("a"),
                value("v", Clock::System.now(), Duration::from_secs(9)),
            )
            .await
        }))
        .unwrap();
    offload
        .spawn(OffloadTask::new("fails", async {
            Err(BackendError::internal("mem", Op::Set, "boom"))
        }))
        .unwrap();
    assert_eq!(offload.queued(), 2);
    assert_eq!(offload.queued_names(), vec!["refill", "fails"]);
    assert_eq!(offload.spawned(), 2);
    assert_eq!(memory.calls().set, 0, "nothing ran yet");

    assert!(matches!(offload.run_next().await, Some(Ok(()))));
    assert_eq!(memory.calls().set, 1);
    let rest = offload.clone().run_all().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].as_ref().unwrap_err().kind(), ErrorKind::Internal);
    assert!(offload.run_next().await.is_none());
    assert_eq!(offload.queued(), 0);
}

#[tokio::test]
async fn manual_offload_runs_tasks_queued_while_running() {
    let offload = ManualOffload::new();
    let inner = offload.clone();
    offload
        .spawn(OffloadTask::new("parent", async move {
            inner
                .spawn(OffloadTask::new("child", async { Ok(()) }))
                .map_err(|r| BackendError::internal("offload", Op::Set, r.reason.to_string()))
        }))
        .unwrap();
    let results = offload.run_all().await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(offload.spawned(), 2);
}

#[tokio::test]
async fn manual_offload_rejects_on_demand() {
    let offload = ManualOffload::new();
    offload.reject_all(true);
    let rejected = offload
        .spawn(OffloadTask::new("refill", async { Ok(()) }))
        .unwrap_err();
    assert_eq!(rejected.reason, RejectReason::Full);
    assert_eq!(rejected.task.name(), "refill");
    assert_eq!(
        (offload.spawned(), offload.rejected(), offload.queued()),
        (0, 1, 0)
    );
    offload.reject_all(false);
    offload
        .spawn(OffloadTask::new("refill", async { Ok(()) }))
        .unwrap();
    assert_eq!(offload.discard_all(), 1);
    assert!(offload.run_all().await.is_empty());
}

#[test]
fn helpers() {
    assert_eq!(key("k").as_str(), "k");
    let now = Timestamp::from_unix_millis(1_000);
    let v = value(&b"p"[..], now, Duration::from_secs(1));
    assert_eq!(v.expires_at(), Timestamp::from_unix_millis(2_000));
}

#[test]
#[should_panic(expected = "invalid test key")]
fn key_helper_panics_on_invalid_keys() {
    let _ = key("");
}
