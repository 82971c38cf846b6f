//! What a policy knows of the operation it decides: the tiers' names, the time, and where
//! background work goes.

use std::fmt;
use std::future::Future;

use tierkit_core::{Offload, Timestamp};

/// One of the two tiers of a composition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The first tier (usually in-process).
    L1,
    /// The second tier (usually shared or remote).
    L2,
}

impl Layer {
    /// `l1` or `l2`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::L1 => "l1",
            Layer::L2 => "l2",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier's name as it appears in logs: its path in the stack and its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierName<'a> {
    /// Path in the stack: `l1`, `l2`, `l2.l1`, ...
    pub path: &'a str,
    /// The backend's label: `moka`, `redis`, ...
    pub label: &'a str,
}

impl fmt::Display for TierName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.label)
    }
}

/// The context of one policy decision.
///
/// Policies receive the two tier operations as closures and this context; they know nothing
/// else of the tiers, so they can be tested with plain futures.
///
/// ```
/// use tierkit_core::{Timestamp, TokioOffload};
/// use tierkit_policy::{PolicyContext, TierName};
///
/// let offload = TokioOffload::unbounded();
/// let cx = PolicyContext::new(
///     TierName { path: "l1", label: "moka" },
///     TierName { path: "l2", label: "redis" },
///     Timestamp::from_unix_millis(0),
///     &offload,
/// );
/// assert_eq!(cx.l2().to_string(), "l2 (redis)");
/// ```
#[derive(Clone, Copy)]
pub struct PolicyContext<'a> {
    l1: TierName<'a>,
    l2: TierName<'a>,
    now: Timestamp,
    offload: &'a dyn Offload,
}

impl<'a> PolicyContext<'a> {
    /// A context for one operation at `now`.
    #[must_use]
    pub fn new(
        l1: TierName<'a>,
        l2: TierName<'a>,
        now: Timestamp,
        offload: &'a dyn Offload,
    ) -> Self {
        PolicyContext {
            l1,
            l2,
            now,
            offload,
        }
    }

    /// The first tier's name.
    #[must_use]
    pub fn l1(&self) -> TierName<'a> {
        self.l1
    }

    /// The second tier's name.
    #[must_use]
    pub fn l2(&self) -> TierName<'a> {
        self.l2
    }

    /// The name of `layer`.
    #[must_use]
    pub fn name(&self, layer: Layer) -> TierName<'a> {
        match layer {
            Layer::L1 => self.l1,
            Layer::L2 => self.l2,
        }
    }

    /// The instant the operation started; freshness is judged against it.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Where background work (race losers) goes.
    #[must_use]
    pub fn offload(&self) -> &'a dyn Offload {
        self.offload
    }
}

impl fmt::Debug for PolicyContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyContext")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// One tier's operation as a policy receives it: a closure that starts the operation and
/// returns its `'static` future (so a policy can hand it to the
/// [`Offload`](tierkit_core::Offload)).
///
/// Every `FnOnce() -> impl Future<Output = T> + Send + 'static` that is `Send` is a
/// `TierOp<T>`, so policies are called with plain closures:
///
/// ```
/// use tierkit_policy::{TierOp, TierWrite};
///
/// fn takes_op(op: impl TierOp<TierWrite>) -> impl std::future::Future<Output = TierWrite> {
///     op.start()
/// }
/// let _ = takes_op(|| async { Ok(()) });
/// ```
pub trait TierOp<T>: Send {
    /// The operation's future.
    type Future: Future<Output = T> + Send + 'static;

    /// Starts the operation.
    fn start(self) -> Self::Future;
}

impl<F, Fut, T> TierOp<T> for F
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T> + Send + 'static,
{
    type Future = Fut;

    fn start(self) -> Fut {
        self()
    }
}
