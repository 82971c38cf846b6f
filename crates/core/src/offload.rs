//! Background work detached from the caller: race losers, refills, revalidation.
//!
//! A cache often has work left after it has answered: the losing tier of a race still has a
//! write in flight, a value read from L2 should be copied into L1. That work must not make the
//! caller wait, must not be lost silently, and must be finished (or at least accounted for) when
//! the service shuts down. [`Offload`] is where it goes; [`TokioOffload`] is the implementation
//! for tokio that tracks its tasks, can be bounded, counts what it did, and drains at shutdown.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::BoxFuture;
use crate::error::Result;

/// A unit of background work.
pub struct OffloadTask {
    name: &'static str,
    future: BoxFuture<'static, Result<()>>,
}

impl OffloadTask {
    /// A task called `name` (used in logs and metrics) that runs `future`.
    pub fn new(
        name: &'static str,
        future: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Self {
        OffloadTask {
            name,
            future: Box::pin(future),
        }
    }

    /// The task's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The work itself, to run it in place (for instance after a rejection).
    #[must_use]
    pub fn into_future(self) -> BoxFuture<'static, Result<()>> {
        self.future
    }
}

impl fmt::Debug for OffloadTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadTask")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why an [`Offload`] refused a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The executor is at its bound of tasks in flight.
    Full,
    /// The executor is shut down.
    Closed,
    /// There is no runtime to run the task on.
    NoRuntime,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Full => "the offload executor is full",
            RejectReason::Closed => "the offload executor is shut down",
            RejectReason::NoRuntime => "no tokio runtime is running",
        })
    }
}

/// A task the [`Offload`] refused, handed back so the caller can run it in place or drop it.
#[derive(Debug)]
pub struct Rejected {
    /// Why it was refused.
    pub reason: RejectReason,
    /// The task, untouched.
    pub task: OffloadTask,
}

/// Runs background work detached from the caller.
///
/// Implementations must never run the task inline inside `spawn` (the caller may hold a lock or
/// be inside a latency-critical path); when they cannot take the task they hand it back.
pub trait Offload: Send + Sync + fmt::Debug + 'static {
    /// Starts `task` in the background.
    ///
    /// # Errors
    ///
    /// [`Rejected`], with the task, when it cannot be started.
    fn spawn(&self, task: OffloadTask) -> std::result::Result<(), Rejected>;
}

impl<O: Offload + ?Sized> Offload for Arc<O> {
    fn spawn(&self, task: OffloadTask) -> std::result::Result<(), Rejected> {
        (**self).spawn(task)
    }
}

/// Counters of a [`TokioOffload`], read with [`TokioOffload::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Tasks accepted.
    pub spawned: u64,
    /// Tasks that completed with `Ok`.
    pub finished: u64,
    /// Tasks that completed with `Err`, panicked, or were cancelled by runtime shutdown.
    pub failed: u64,
    /// Tasks refused (full, closed, or no runtime).
    pub rejected: u64,
    /// Tasks accepted and not yet completed.
    pub in_flight: usize,
}

/// The result of [`TokioOffload::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Tasks still running when the deadline passed (0 when drained).
    pub remaining: usize,
    /// Counters at the end of the drain.
    pub stats: OffloadStats,
}

impl DrainReport {
    /// Whether every task finished before the deadline.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

/// An [`Offload`] on tokio that tracks its tasks.
///
/// * **Bounded** ([`TokioOffload::bounded`]): at most `n` tasks in flight; more are handed back
///   with [`RejectReason::Full`] so the caller decides (run in place, or drop and count).
/// * **Counted**: spawned, finished, failed, rejected, in flight ([`TokioOffload::stats`]).
/// * **Drained**: [`TokioOffload::shutdown`] refuses new tasks and waits for the running ones
///   up to a deadline.
///
/// Clones share the same tasks and counters.
///
/// ```
/// use std::time::Duration;
/// use tierkit_core::{Offload, OffloadTask, TokioOffload};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let offload = TokioOffload::bounded(2);
/// offload.spawn(OffloadTask::new("refill", async { Ok(()) })).unwrap();
/// let report = offload.shutdown(Duration::from_secs(1)).await;
/// assert!(report.is_complete());
/// assert_eq!(report.stats.finished, 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TokioOffload {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: Option<usize>,
    handle: Option<tokio::runtime::Handle>,
    closed: AtomicBool,
    in_flight: AtomicUsize,
    spawned: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    idle: Notify,
}

impl Default for TokioOffload {
    fn default() -> Self {
        Self::unbounded()
    }
}

impl TokioOffload {
    /// No bound on tasks in flight; tasks run on the runtime current at each `spawn`.
    #[must_use]
    pub fn unbounded() -> Self {
        Self::build(None, None)
    }

    /// At most `max_in_flight` tasks at once.
    #[must_use]
    pub fn bounded(max_in_flight: usize) -> Self {
        Self::build(Some(max_in_flight), None)
    }

    /// Runs tasks on `handle` instead of the runtime current at each `spawn`.
    #[must_use]
    pub fn on_runtime(self, handle: tokio::runtime::Handle) -> Self {
        Self::build(self.inner.limit, Some(handle))
    }

    fn build(limit: Option<usize>, handle: Option<tokio::runtime::Handle>) -> Self {
        TokioOffload {
            inner: Arc::new(Inner {
                limit,
                handle,
                closed: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
                spawned: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> OffloadStats {
        let inner = &self.inner;
        OffloadStats {
            spawned: inner.spawned.load(Ordering::Acquire),
            finished: inner.finished.load(Ordering::Acquire),
            failed: inner.failed.load(Ordering::Acquire),
            rejected: inner.rejected.load(Ordering::Acquire),
            in_flight: inner.in_flight.load(Ordering::Acquire),
        }
    }

    /// Waits until no task is in flight or `deadline` has passed; new tasks are still accepted.
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        let stats = self.stats();
        DrainReport {
            remaining: stats.in_flight,
            stats,
        }
    }

    /// Refuses new tasks from now on, then drains the running ones up to `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> DrainReport {
        self.inner.closed.store(true, Ordering::Release);
        self.drain(deadline).await
    }

    fn reject(&self, reason: RejectReason, task: OffloadTask) -> Rejected {
        self.inner.rejected.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(task = task.name, %reason, "offload task rejected");
        Rejected { reason, task }
    }

    /// Reserves a slot under the bound.
    fn reserve(&self) -> bool {
        let inner = &self.inner;
        match inner.limit {
            None => {
                inner.in_flight.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(limit) => inner
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_ok(),
        }
    }
}

/// Releases the task's slot and records its end, also when the task panics or is dropped by a
/// runtime shutting down.
struct TaskGuard {
    inner: Arc<Inner>,
    name: &'static str,
    succeeded: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.succeeded {
            self.inner.finished.fetch_add(1, Ordering::AcqRel);
        } else {
            self.inner.failed.fetch_add(1, Ordering::AcqRel);
        }
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
        tracing::trace!(task = self.name, ok = self.succeeded, "offload task ended");
    }
}

impl Offload for TokioOffload {
    fn spawn(&self, task: OffloadTask) -> std::result::Result<(), Rejected> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(self.reject(RejectReason::Closed, task));
        }
        let handle = match &self.inner.handle {
            Some(handle) => handle.clone(),
            None => match tokio::runtime::Handle::try_current() {
                Ok(handle) => handle,
                Err(_) => return Err(self.reject(RejectReason::NoRuntime, task)),
            },
        };
        if !self.reserve() {
            return Err(self.reject(RejectReason::Full, task));
        }
        self.inner.spawned.fetch_add(1, Ordering::AcqRel);
        let mut guard = TaskGuard {
            inner: Arc::clone(&self.inner),
            name: task.name,
            succeeded: false,
        };
        handle.spawn(async move {
            match task.future.await {
                Ok(()) => guard.succeeded = true,
                Err(error) => {
                    tracing::debug!(
                        task = guard.name,
                        error = &error as &dyn std::error::Error,
                        "offload task failed"
                    );
                }
            }
            drop(guard);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BackendError, Op};

    #[tokio::test]
    async fn counts_success_failure_and_panic() {
        let offload = TokioOffload::unbounded();
        offload
            .spawn(OffloadTask::new("ok", async { Ok(()) }))
            .expect("accepted");
        offload
            .spawn(OffloadTask::new("err", async {
                Err(BackendError::internal("t", Op::Set, "no"))
            }))
            .expect("accepted");
        offload
            .spawn(OffloadTask::new("panic", async {
                if true {
                    panic!("task panics on purpose");
                }
                Ok(())
            }))
            .expect("accepted");
        let report = offload.drain(Duration::from_secs(10)).await;
        assert!(report.is_complete());
        assert_eq!(report.stats.spawned, 3);
        assert_eq!(report.stats.finished, 1);
        assert_eq!(report.stats.failed, 2);
        assert_eq!(report.stats.in_flight, 0);
    }

    #[tokio::test]
    async fn bound_rejects_and_hands_the_task_back() {
        let offload = TokioOffload::bounded(1);
        let gate = Arc::new(Notify::new());
        let g = Arc::clone(&gate);
        offload
            .spawn(OffloadTask::new("held", async move {
                g.notified().await;
                Ok(())
            }))
            .expect("first task fits");
        let rejected = offload
            .spawn(OffloadTask::new("extra", async { Ok(()) }))
            .expect_err("bound of one");
        assert_eq!(rejected.reason, RejectReason::Full);
        assert_eq!(rejected.task.name(), "extra");
        assert!(rejected.task.into_future().await.is_ok());
        gate.notify_one();
        let report = offload.shutdown(Duration::from_secs(10)).await;
        assert!(report.is_complete());
        assert_eq!(report.stats.rejected, 1);
        let closed = offload
            .spawn(OffloadTask::new("late", async { Ok(()) }))
            .expect_err("closed");
        assert_eq!(closed.reason, RejectReason::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let offload = TokioOffload::unbounded();
        offload
            .spawn(OffloadTask::new("hang", std::future::pending()))
            .expect("accepted");
        let report = offload.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.remaining, 1);
        assert!(!report.is_complete());
    }

    #[test]
    fn no_runtime_is_a_rejection() {
        let offload = TokioOffload::unbounded();
        let rejected = offload
            .spawn(OffloadTask::new("orphan", async { Ok(()) }))
            .expect_err("no runtime");
        assert_eq!(rejected.reason, RejectReason::NoRuntime);
        assert_eq!(offload.stats().in_flight, 0);
    }
}
