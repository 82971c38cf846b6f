//! [`FaultyBackend`]: fault injection around any tier.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, ErrorKind, GetFuture, Op, Probe, TierFuture,
    TierPath, WriteFuture,
};

use crate::memory::{CallCounts, Counters};

/// A fault [`FaultyBackend`] injects into one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Fails with an error of this kind naming the tier's label, whose source is an
    /// [`InjectedFault`]. Transient for [`ErrorKind::Connection`] and [`ErrorKind::Timeout`],
    /// permanent otherwise. `Connection` and `Corrupt` use the matching [`BackendError`]
    /// variants; the other kinds use [`BackendError::Tier`].
    Fail(ErrorKind),
    /// Sleeps (`tokio::time::sleep`, so paused test time applies) and then passes the call
    /// through to the inner tier.
    Delay(Duration),
    /// Passes the call through to the inner tier at once, then sleeps before answering: the
    /// operation has taken effect (a read has read, a write has landed) while its answer is
    /// still on the way, as with a slow response body or a busy connection.
    SlowAnswer(Duration),
    /// Never completes.
    Hang,
    /// Reports corrupt stored data: [`BackendError::Corrupt`] for every operation (the same as
    /// `Fail(ErrorKind::Corrupt)`).
    Corrupt,
}

/// The source of every error a [`Fault::Fail`] produces, so a test can tell an injected
/// failure from a real one with `err.source()` and a downcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    /// The operation that failed.
    pub op: Op,
    /// The kind of error injected.
    pub kind: ErrorKind,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected {} fault on {}", self.kind, self.op)
    }
}

impl std::error::Error for InjectedFault {}

/// The error [`FaultyBackend`] returns for `Fail(kind)` on `op` of the tier labelled `tier`.
#[must_use]
pub fn injected_error(tier: &str, op: Op, kind: ErrorKind) -> BackendError {
    let source = InjectedFault { op, kind };
    match kind {
        ErrorKind::Connection => BackendError::connection(tier, op, source),
        ErrorKind::Corrupt => BackendError::corrupt(tier, op, source.to_string()),
        ErrorKind::Timeout => BackendError::tier(tier, op, kind, true, source),
        _ => BackendError::tier(tier, op, kind, false, source),
    }
}

#[derive(Debug, Default)]
struct OpSchedule {
    once: VecDeque<Fault>,
    always: Option<Fault>,
}

#[derive(Debug, Default)]
struct State {
    schedule: Mutex<HashMap<Op, OpSchedule>>,
    calls: Counters,
}

/// Wraps any [`Backend`] and injects [`Fault`]s on a schedule.
///
/// Per operation ([`Op`]; [`set_if_newer`](Backend::set_if_newer) is an [`Op::Set`]: it takes
/// the faults scheduled for `set` and is counted as one):
///
/// * [`push`](FaultyBackend::push) queues a one-shot fault; queued faults apply first, in FIFO
///   order, one per call;
/// * [`always`](FaultyBackend::always) applies a fault to every call once the queue is empty,
///   until [`clear_faults`](FaultyBackend::clear_faults) (or another `always` for that op);
/// * when no fault applies, the call passes through: the inner tier's future is returned
///   unchanged, so a ready answer stays ready.
///
/// A faulted call always returns a [`TierFuture::pending`] future. Every call is counted, faulted
/// or not ([`calls`](FaultyBackend::calls)). Clones share the schedule and the counters.
///
/// [`probe`](Backend::probe) answers [`Probe::Unknown`] while any fault is scheduled for
/// [`Op::Get`] (without consuming it: the `get` that follows takes it), and otherwise forwards
/// to the inner tier; a forwarded probe that answers counts as a `get`.
///
/// ```
/// use tierkit_core::{Backend, ErrorKind, Op};
/// use tierkit_testkit::{Fault, FaultyBackend, MemoryBackend, key};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tier = FaultyBackend::new(MemoryBackend::new("l2"));
/// tier.push(Op::Get, Fault::Fail(ErrorKind::Connection));
///
/// let err = tier.get(&key("a")).await.unwrap_err();
/// assert!(err.is_transient());
/// assert_eq!(err.tier_label(), Some("l2"));
/// // The one-shot fault is spent: the next call passes through.
/// assert!(tier.get(&key("a")).is_ready());
/// assert_eq!(tier.calls().get, 2);
/// # }
/// ```
pub struct FaultyBackend<B> {
    inner: Arc<B>,
    state: Arc<State>,
}

impl<B> Clone for FaultyBackend<B> {
    fn clone(&self) -> Self {
        FaultyBackend {
            inner: Arc::clone(&self.inner),
            state: Arc::clone(&self.state),
        }
    }
}

impl<B: Backend> FaultyBackend<B> {
    /// Wraps `inner`, with no fault scheduled.
    #[must_use]
    pub fn new(inner: B) -> Self {
        FaultyBackend {
            inner: Arc::new(inner),
            state: Arc::default(),
        }
    }

    /// The wrapped tier.
    #[must_use]
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Queues a one-shot `fault` for the next call of `op` not already claimed by a queued
    /// fault.
    pub fn push(&self, op: Op, fault: Fault) {
        self.schedule().entry(op).or_default().once.push_back(fault);
    }

    /// Applies `fault` to every call of `op` (once its one-shot queue is empty), replacing an
    /// earlier `always` for `op`.
    pub fn always(&self, op: Op, fault: Fault) {
        self.schedule().entry(op).or_default().always = Some(fault);
    }

    /// Removes every queued and permanent fault, for every operation.
    pub fn clear_faults(&self) {
        self.schedule().clear();
    }

    /// One-shot faults still queued for `op`.
    #[must_use]
    pub fn queued(&self, op: Op) -> usize {
        self.schedule().get(&op).map_or(0, |s| s.once.len())
    }

    /// Calls received so far, per operation, faulted ones included.
    #[must_use]
    pub fn calls(&self) -> CallCounts {
        self.state.calls.snapshot()
    }

    fn schedule(&self) -> MutexGuard<'_, HashMap<Op, OpSchedule>> {
        self.state
            .schedule
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a call of `op` would be faulted now.
    #[must_use]
    pub fn has_fault(&self, op: Op) -> bool {
        self.schedule()
            .get(&op)
            .is_some_and(|s| !s.once.is_empty() || s.always.is_some())
    }

    /// Counts the call and takes the fault that applies to it, if any.
    fn next_fault(&self, op: Op) -> Option<Fault> {
        self.state.calls.count(op);
        let mut schedule = self.schedule();
        let ops = schedule.get_mut(&op)?;
        ops.once.pop_front().or(ops.always)
    }

    fn faulted<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        fault: Fault,
        pass: impl FnOnce() -> TierFuture<'a, T> + Send + 'a,
    ) -> TierFuture<'a, T> {
        match fault {
            Fault::Fail(kind) => {
                let err = injected_error(self.inner.label(), op, kind);
                TierFuture::pending(async move { Err(err) })
            }
            Fault::Corrupt => {
                let err = injected_error(self.inner.label(), op, ErrorKind::Corrupt);
                TierFuture::pending(async move { Err(err) })
            }
            Fault::Delay(delay) => TierFuture::pending(async move {
                tokio::time::sleep(delay).await;
                pass().await
            }),
            Fault::SlowAnswer(delay) => TierFuture::pending(async move {
                let answer = pass().await;
                tokio::time::sleep(delay).await;
                answer
            }),
            Fault::Hang => TierFuture::pending(std::future::pending()),
        }
    }
}

impl<B: Backend> fmt::Debug for FaultyBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .field("schedule", &*self.schedule())
            .field("calls", &self.calls())
            .finish()
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn probe(&self, key: &CacheKey) -> Probe {
        if self.has_fault(Op::Get) {
            return Probe::Unknown;
        }
        let probe = self.inner.probe(key);
        if probe != Probe::Unknown {
            self.state.calls.count(Op::Get);
        }
        probe
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        match self.next_fault(Op::Get) {
            None => self.inner.get(key),
            Some(fault) => self.faulted(Op::Get, fault, move || self.inner.get(key)),
        }
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        match self.next_fault(Op::Set) {
            None => self.inner.set(key, value),
            Some(fault) => self.faulted(Op::Set, fault, move || self.inner.set(key, value)),
        }
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        match self.next_fault(Op::Set) {
            None => self.inner.set_if_newer(key, value),
            Some(fault) => {
                self.faulted(Op::Set, fault, move || self.inner.set_if_newer(key, value))
            }
        }
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        match self.next_fault(Op::Delete) {
            None => self.inner.delete(key),
            Some(fault) => self.faulted(Op::Delete, fault, move || self.inner.delete(key)),
        }
    }

    fn clear(&self) -> WriteFuture<'_> {
        match self.next_fault(Op::Clear) {
            None => self.inner.clear(),
            Some(fault) => self.faulted(Op::Clear, fault, move || self.inner.clear()),
        }
    }

    fn bind(&self, path: &TierPath) {
        self.inner.bind(path);
    }
}
