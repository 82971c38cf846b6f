//! Helpers shared by the policy test binaries: a fixed context, values at known freshness,
//! controllable tier operations, and log capture.
//!
//! Every test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tierkit_core::{BackendError, BoxFuture, CacheValue, Offload, Op, Timestamp};
use tierkit_policy::{PolicyContext, TierName};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// Context

/// The instant every policy test runs at.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// L1 as the policy tests name it.
pub const L1: TierName<'static> = TierName {
    path: "l1",
    label: "moka",
};

/// L2 as the policy tests name it.
pub const L2: TierName<'static> = TierName {
    path: "l2",
    label: "redis",
};

/// [`NOW_MS`] as a timestamp.
#[must_use]
pub fn now() -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS)
}

/// `now() + offset_ms` (negative offsets go back in time).
#[must_use]
pub fn at(offset_ms: i64) -> Timestamp {
    let magnitude = Duration::from_millis(offset_ms.unsigned_abs());
    if offset_ms >= 0 {
        now().saturating_add(magnitude)
    } else {
        now().saturating_sub(magnitude)
    }
}

/// The context of one policy decision at [`now`], with tiers [`L1`] and [`L2`].
#[must_use]
pub fn cx(offload: &dyn Offload) -> PolicyContext<'_> {
    PolicyContext::new(L1, L2, now(), offload)
}

// ---------------------------------------------------------------------------------------------
// Values

/// A value whose instants are given relative to [`now`], in milliseconds.
///
/// # Panics
///
/// When the instants are out of order.
#[must_use]
pub fn val(payload: &'static str, created: i64, stale: i64, expires: i64) -> CacheValue {
    CacheValue::new(payload.as_bytes(), at(created), at(stale), at(expires))
        .expect("test value instants in order")
}

/// A value fresh at [`now`], created 10 s ago.
#[must_use]
pub fn fresh(payload: &'static str) -> CacheValue {
    fresh_created(payload, -10_000)
}

/// A value fresh at [`now`], created `created` ms from now (negative: in the past).
#[must_use]
pub fn fresh_created(payload: &'static str, created: i64) -> CacheValue {
    val(payload, created, 60_000, 120_000)
}

/// A value stale (but not expired) at [`now`], created 120 s ago.
#[must_use]
pub fn stale(payload: &'static str) -> CacheValue {
    stale_created(payload, -120_000)
}

/// A value stale at [`now`], created `created` ms from now (at most -60 000).
#[must_use]
pub fn stale_created(payload: &'static str, created: i64) -> CacheValue {
    val(payload, created, -60_000, 60_000)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// L1's error in policy tests: a permanent internal failure of `moka`, with a source.
#[must_use]
pub fn l1_error(op: Op) -> BackendError {
    BackendError::tier(
        "moka",
        op,
        tierkit_core::ErrorKind::Internal,
        false,
        io::Error::other("arena exhausted"),
    )
}

/// L2's error in policy tests: a transient connection failure of `redis`, with a source.
#[must_use]
pub fn l2_error(op: Op) -> BackendError {
    BackendError::connection("redis", op, io::Error::other("connection refused"))
}

/// Asserts that `actual` is `expected` itself, unchanged: same variant, message, kind,
/// transience, tier, and the very same shared source.
///
/// # Panics
///
/// When they differ.
pub fn assert_same_error(actual: &BackendError, expected: &BackendError) {
    use std::error::Error as _;
    assert_eq!(actual.to_string(), expected.to_string());
    assert_eq!(actual.kind(), expected.kind());
    assert_eq!(actual.is_transient(), expected.is_transient());
    assert_eq!(actual.tier_label(), expected.tier_label());
    assert_eq!(
        std::mem::discriminant(actual),
        std::mem::discriminant(expected)
    );
    match (actual.source(), expected.source()) {
        (Some(a), Some(b)) => assert!(
            std::ptr::addr_eq(a, b),
            "the error's source was replaced: {a:?} vs {b:?}"
        ),
        (None, None) => {}
        (a, b) => panic!("sources differ: {a:?} vs {b:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tier operations

/// A boxed tier operation future, as the policies receive them.
pub type OpFuture<T> = BoxFuture<'static, Result<T, BackendError>>;

/// A shared, ordered log of what the controlled operations did (`l1:call`, `l2:done`, ...).
#[derive(Clone, Debug, Default)]
pub struct EventLog(Arc<Mutex<Vec<String>>>);

impl EventLog {
    /// An empty log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event.
    pub fn push(&self, event: String) {
        self.lock().push(event);
    }

    /// The events so far, in order.
    #[must_use]
    pub fn events(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An operation that completes at once with `result`, counting calls of its closure in
/// `calls`: a plain future, as a policy sees an in-process tier.
pub fn immediate<T: Send + 'static>(
    calls: &Arc<AtomicUsize>,
    result: Result<T, BackendError>,
) -> impl FnOnce() -> std::future::Ready<Result<T, BackendError>> + Send + use<T> {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(result)
    }
}

#[derive(Debug)]
struct ControlState<T> {
    name: &'static str,
    log: EventLog,
    calls: AtomicUsize,
    completed: AtomicBool,
    dropped: AtomicBool,
    reply: Mutex<Option<oneshot::Sender<Result<T, BackendError>>>>,
}

/// The test's side of a [`controlled`] operation: answers it and observes it.
#[derive(Debug)]
pub struct Control<T> {
    state: Arc<ControlState<T>>,
}

impl<T> Control<T> {
    /// Completes the operation with `result` (its future returns it when next polled).
    ///
    /// # Panics
    ///
    /// When the operation was already answered.
    pub fn respond(&self, result: Result<T, BackendError>) {
        let reply = self
            .state
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let reply = reply.unwrap_or_else(|| panic!("{} answered twice", self.state.name));
        // A dropped future is observed through `dropped()`, not here.
        let _ = reply.send(result);
    }

    /// How many times the closure was called.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Whether the closure has been called (the operation started).
    #[must_use]
    pub fn started(&self) -> bool {
        self.calls() > 0
    }

    /// Whether the future returned its answer.
    #[must_use]
    pub fn completed(&self) -> bool {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Whether the future was dropped before returning its answer (a cancelled request).
    #[must_use]
    pub fn dropped(&self) -> bool {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

/// Marks its operation dropped unless it completed first.
struct DropWatch<T> {
    state: Arc<ControlState<T>>,
}

impl<T> DropWatch<T> {
    fn complete(&self) {
        self.state.completed.store(true, Ordering::SeqCst);
        self.state.log.push(format!("{}:done", self.state.name));
    }
}

impl<T> Drop for DropWatch<T> {
    fn drop(&mut self) {
        if !self.state.completed.load(Ordering::SeqCst) {
            self.state.dropped.store(true, Ordering::SeqCst);
            self.state.log.push(format!("{}:dropped", self.state.name));
        }
    }
}

/// An operation that completes only when the test answers it through the returned
/// [`Control`]. Calling the closure logs `{name}:call`; completion logs `{name}:done`; dropping
/// the future unanswered logs `{name}:dropped`.
pub fn controlled<T: Send + 'static>(
    name: &'static str,
    log: &EventLog,
) -> (Control<T>, impl FnOnce() -> OpFuture<T> + Send + use<T>) {
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(ControlState {
        name,
        log: log.clone(),
        calls: AtomicUsize::new(0),
        completed: AtomicBool::new(false),
        dropped: AtomicBool::new(false),
        reply: Mutex::new(Some(tx)),
    });
    let control = Control {
        state: Arc::clone(&state),
    };
    let op = move || -> OpFuture<T> {
        state.calls.fetch_add(1, Ordering::SeqCst);
        state.log.push(format!("{name}:call"));
        // Created outside the async block so that dropping a never-polled future counts too.
        let watch = DropWatch { state };
        Box::pin(async move {
            let result = rx.await.unwrap_or_else(|_| {
                Err(BackendError::internal(
                    name,
                    Op::Get,
                    "the test dropped its control",
                ))
            });
            watch.complete();
            result
        })
    };
    (control, op)
}

/// Polls `future` once, with the current task's waker.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

/// Polls `future` once and returns its output.
///
/// # Panics
///
/// When the future is still pending.
pub async fn expect_ready<F: Future + Unpin>(future: &mut F) -> F::Output {
    match poll_once(future).await {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("expected the future to be ready"),
    }
}

/// Polls `future` once and asserts that it is still pending.
///
/// # Panics
///
/// When the future completed.
pub async fn expect_pending<F: Future + Unpin>(future: &mut F)
where
    F::Output: std::fmt::Debug,
{
    if let Poll::Ready(output) = poll_once(future).await {
        panic!("expected the future to be pending, it returned {output:?}");
    }
}
