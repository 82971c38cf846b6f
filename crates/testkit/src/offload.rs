//! [`ManualOffload`]: background work that runs only when the test says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tierkit_core::{Offload, OffloadTask, RejectReason, Rejected, Result};

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<VecDeque<OffloadTask>>,
    spawned: AtomicU64,
    rejected: AtomicU64,
    reject_all: AtomicBool,
}

/// An [`Offload`] that queues tasks instead of running them, so a test decides when background
/// work (race losers, refills) happens and sees its results.
///
/// Clones share the queue and the counters.
///
/// ```
/// use tierkit_core::{Offload, OffloadTask, RejectReason};
/// use tierkit_testkit::ManualOffload;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let offload = ManualOffload::new();
/// offload.spawn(OffloadTask::new("refill", async { Ok(()) })).unwrap();
/// assert_eq!(offload.queued(), 1);
/// assert_eq!(offload.run_all().await.len(), 1);
/// assert_eq!(offload.queued(), 0);
///
/// offload.reject_all(true);
/// let rejected = offload.spawn(OffloadTask::new("refill", async { Ok(()) })).unwrap_err();
/// assert_eq!(rejected.reason, RejectReason::Full);
/// assert_eq!(offload.spawned(), 1);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualOffload {
    inner: Arc<Inner>,
}

impl ManualOffload {
    /// An empty queue that accepts tasks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Tasks waiting to run.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Names of the tasks waiting to run, oldest first.
    #[must_use]
    pub fn queued_names(&self) -> Vec<&'static str> {
        self.queue().iter().map(OffloadTask::name).collect()
    }

    /// Tasks accepted so far (run or not).
    #[must_use]
    pub fn spawned(&self) -> u64 {
        self.inner.spawned.load(Ordering::Acquire)
    }

    /// Tasks refused so far.
    #[must_use]
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Acquire)
    }

    /// From now on, refuses every task with [`RejectReason::Full`] (`true`) or accepts them
    /// again (`false`). Tasks already queued stay queued.
    pub fn reject_all(&self, reject: bool) {
        self.inner.reject_all.store(reject, Ordering::Release);
    }

    /// Runs the oldest queued task to completion and returns its result, or `None` when the
    /// queue is empty. The queue is not locked while the task runs, so it may queue more.
    pub async fn run_next(&self) -> Option<Result<()>> {
        let task = self.queue().pop_front()?;
        Some(task.into_future().await)
    }

    /// Runs queued tasks, oldest first, until the queue is empty, including tasks queued by the
    /// tasks it runs; returns their results in the order they ran.
    pub async fn run_all(&self) -> Vec<Result<()>> {
        let mut results = Vec::new();
        while let Some(result) = self.run_next().await {
            results.push(result);
        }
        results
    }

    /// Drops every queued task without running it; returns how many there were.
    pub fn discard_all(&self) -> usize {
        let mut queue = self.queue();
        let n = queue.len();
        queue.clear();
        n
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<OffloadTask>> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Offload for ManualOffload {
    fn spawn(&self, task: OffloadTask) -> std::result::Result<(), Rejected> {
        if self.inner.reject_all.load(Ordering::Acquire) {
            self.inner.rejected.fetch_add(1, Ordering::AcqRel);
            return Err(Rejected {
                reason: RejectReason::Full,
                task,
            });
        }
        self.inner.spawned.fetch_add(1, Ordering::AcqRel);
        self.queue().push_back(task);
        Ok(())
    }
}
