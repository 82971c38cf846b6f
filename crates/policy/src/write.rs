//! Write policies: how a value reaches the two tiers of a composition.
//!
//! Every write policy answers the same four cases, and differs in ordering and latency:
//!
//! | L1 write | L2 write | returns | logged |
//! |---|---|---|---|
//! | Ok | Ok | `Ok` | trace |
//! | Err | Ok | `Ok` | warning naming L1 and its error |
//! | Ok | Err | `Ok` | warning naming L2 and its error |
//! | Err | Err | `Err(BothLayersFailed { l1, l2 })` | error with both causes |
//!
//! After `Ok`, at least one tier holds the value. What a [`Composition`](crate::Composition)
//! does about the tier whose write failed (so that it does not serve the previous value) is
//! described there.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::{self, Either};
use tierkit_core::{BackendError, OffloadTask};

use crate::context::{Layer, PolicyContext, TierOp};
use crate::error::CompositionError;

/// The result of one tier's write.
pub type TierWrite = Result<(), BackendError>;

/// What became of each tier's write.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum WriteStatus {
    /// The tier acknowledged the write.
    Written,
    /// The tier's write failed.
    Failed(BackendError),
    /// The write was still running when the policy returned; it completes on the offload (or
    /// was completed in place when the offload refused it).
    Offloaded,
}

impl WriteStatus {
    /// Whether the write failed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        matches!(self, WriteStatus::Failed(_))
    }
}

/// What a write policy did, when the write as a whole succeeded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WriteOutcome {
    /// L1's write.
    pub l1: WriteStatus,
    /// L2's write.
    pub l2: WriteStatus,
}

/// Decides how a composition writes its two tiers.
///
/// Implementations receive each tier's write as a closure that produces a future, and must
/// call each closure exactly once (a write is never skipped). Futures are `'static` so that a
/// policy can finish one on the [`Offload`](tierkit_core::Offload).
pub trait WritePolicy: Send + Sync + fmt::Debug + 'static {
    /// Writes both tiers.
    fn write<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> impl Future<Output = Result<WriteOutcome, BackendError>> + Send
    where
        F1: TierOp<TierWrite>,
        F2: TierOp<TierWrite>;
}

/// Applies the shared outcome table to two completed writes.
fn settle(
    cx: &PolicyContext<'_>,
    r1: TierWrite,
    r2: TierWrite,
) -> Result<WriteOutcome, BackendError> {
    match (r1, r2) {
        (Ok(()), Ok(())) => {
            tracing::trace!(l1 = %cx.l1(), l2 = %cx.l2(), "write succeeded on both tiers");
            Ok(WriteOutcome {
                l1: WriteStatus::Written,
                l2: WriteStatus::Written,
            })
        }
        (Err(e1), Ok(())) => {
            warn_partial(cx, Layer::L1, &e1);
            Ok(WriteOutcome {
                l1: WriteStatus::Failed(e1),
                l2: WriteStatus::Written,
            })
        }
        (Ok(()), Err(e2)) => {
            warn_partial(cx, Layer::L2, &e2);
            Ok(WriteOutcome {
                l1: WriteStatus::Written,
                l2: WriteStatus::Failed(e2),
            })
        }
        (Err(l1), Err(l2)) => Err(both_failed(cx, l1, l2)),
    }
}

fn warn_partial(cx: &PolicyContext<'_>, failed: Layer, error: &BackendError) {
    tracing::warn!(
        tier = %cx.name(failed),
        error = error as &dyn std::error::Error,
        "write failed on one tier; the other tier holds the value"
    );
}

fn both_failed(cx: &PolicyContext<'_>, l1: BackendError, l2: BackendError) -> BackendError {
    tracing::error!(
        l1 = %cx.l1(),
        l1_error = &l1 as &dyn std::error::Error,
        l2 = %cx.l2(),
        l2_error = &l2 as &dyn std::error::Error,
        "write failed on both tiers"
    );
    CompositionError::BothLayersFailed { l1, l2 }.into()
}

/// Writes L1, then L2.
///
/// L2 is written whatever became of L1's write: skipping it would leave other nodes reading
/// an older value from the shared tier. The outcome table is the shared one (see the module
/// docs). What ordering buys: L2 is never written before L1 has answered, so a reader on this
/// node never sees the value in L2 and an older one in L1 because of this write.
///
/// Cost: the latency of both writes added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SequentialWritePolicy;

impl WritePolicy for SequentialWritePolicy {
    async fn write<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<WriteOutcome, BackendError>
    where
        F1: TierOp<TierWrite>,
        F2: TierOp<TierWrite>,
    {
        let r1 = l1.start().await;
        let r2 = l2.start().await;
        settle(cx, r1, r2)
    }
}

/// Writes both tiers at once and waits for both. **The default.**
///
/// | L1 write | L2 write | returns | logged |
/// |---|---|---|---|
/// | Ok | Ok | `Ok` | trace |
/// | Err | Ok | `Ok` | warning naming L1 and its error |
/// | Ok | Err | `Ok` | warning naming L2 and its error |
/// | Err | Err | `Err(BothLayersFailed { l1, l2 })` | error with both causes |
///
/// Cost: the latency of the slower write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptimisticParallelWritePolicy;

impl WritePolicy for OptimisticParallelWritePolicy {
    async fn write<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<WriteOutcome, BackendError>
    where
        F1: TierOp<TierWrite>,
        F2: TierOp<TierWrite>,
    {
        let (r1, r2) = future::join(l1.start(), l2.start()).await;
        settle(cx, r1, r2)
    }
}

/// Writes both tiers at once and returns as soon as one succeeds; the other write completes on
/// the [`Offload`](tierkit_core::Offload).
///
/// | first to finish | then | returns |
/// |---|---|---|
/// | Ok | the other completes in the background; a failure there is logged as a warning naming its tier | `Ok` |
/// | Err | wait for the other: Ok | `Ok`, warning naming the failed tier |
/// | Err | wait for the other: Err | `Err(BothLayersFailed { l1, l2 })` |
///
/// A write is never dropped: when the offload refuses the remaining write (full or shut
/// down), it is completed in place before returning.
///
/// Cost: the latency of the faster successful write. The price is that a caller that reads
/// the slower tier right after `Ok` may not see the value yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaceWritePolicy;

impl RaceWritePolicy {
    /// Hands the unfinished write to the offload, or finishes it here if the offload refuses.
    async fn finish<F>(cx: &PolicyContext<'_>, pending: Layer, write: F) -> WriteStatus
    where
        F: Future<Output = TierWrite> + Send + 'static,
    {
        let tier: Arc<str> = Arc::from(cx.name(pending).to_string());
        let task = OffloadTask::new("race-write-loser", async move {
            let result = write.await;
            if let Err(error) = &result {
                tracing::warn!(
                    tier = %tier,
                    error = error as &dyn std::error::Error,
                    "write failed on one tier after the race was decided; the other tier holds the value"
                );
            }
            result
        });
        match cx.offload().spawn(task) {
            Ok(()) => WriteStatus::Offloaded,
            Err(rejected) => {
                tracing::debug!(reason = %rejected.reason, "offload refused a race loser; finishing it in place");
                // The task logs its own failure.
                match rejected.task.into_future().await {
                    Ok(()) => WriteStatus::Written,
                    Err(error) => WriteStatus::Failed(error),
                }
            }
        }
    }
}

impl WritePolicy for RaceWritePolicy {
    async fn write<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<WriteOutcome, BackendError>
    where
        F1: TierOp<TierWrite>,
        F2: TierOp<TierWrite>,
    {
        let f1 = Box::pin(l1.start());
        let f2 = Box::pin(l2.start());
        match future::select(f1, f2).await {
            Either::Left((Ok(()), f2)) => {
                tracing::trace!(tier = %cx.l1(), "race write won by one tier; the other finishes in the background");
                let l2 = Self::finish(cx, Layer::L2, f2).await;
                Ok(WriteOutcome {
                    l1: WriteStatus::Written,
                    l2,
                })
            }
            Either::Right((Ok(()), f1)) => {
                tracing::trace!(tier = %cx.l2(), "race write won by one tier; the other finishes in the background");
                let l1 = Self::finish(cx, Layer::L1, f1).await;
                Ok(WriteOutcome {
                    l1,
                    l2: WriteStatus::Written,
                })
            }
            Either::Left((Err(e1), f2)) => settle(cx, Err(e1), f2.await),
            Either::Right((Err(e2), f1)) => settle(cx, f1.await, Err(e2)),
        }
    }
}

/// A write policy chosen at run time, for instance from configuration.
///
/// ```
/// use tierkit_policy::AnyWritePolicy;
///
/// assert_eq!(AnyWritePolicy::default().name(), "optimistic-parallel");
/// let policy: AnyWritePolicy = "race".parse()?;
/// assert_eq!(policy.name(), "race");
/// # Ok::<(), tierkit_policy::CompositionError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyWritePolicy {
    /// [`SequentialWritePolicy`]: `sequential`.
    Sequential(SequentialWritePolicy),
    /// [`OptimisticParallelWritePolicy`]: `optimistic-parallel` (or `parallel`). The default.
    OptimisticParallel(OptimisticParallelWritePolicy),
    /// [`RaceWritePolicy`]: `race`.
    Race(RaceWritePolicy),
}

impl Default for AnyWritePolicy {
    fn default() -> Self {
        AnyWritePolicy::OptimisticParallel(OptimisticParallelWritePolicy)
    }
}

impl AnyWritePolicy {
    /// The name accepted by [`FromStr`].
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            AnyWritePolicy::Sequential(_) => "sequential",
            AnyWritePolicy::OptimisticParallel(_) => "optimistic-parallel",
            AnyWritePolicy::Race(_) => "race",
        }
    }
}

impl fmt::Display for AnyWritePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AnyWritePolicy {
    type Err = CompositionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sequential" => Ok(AnyWritePolicy::Sequential(SequentialWritePolicy)),
            "optimistic-parallel" | "parallel" => Ok(AnyWritePolicy::OptimisticParallel(
                OptimisticParallelWritePolicy,
            )),
            "race" => Ok(AnyWritePolicy::Race(RaceWritePolicy)),
            _ => Err(CompositionError::UnknownPolicy {
                family: "write",
                name: name.to_owned(),
                expected: "sequential, optimistic-parallel, race",
            }),
        }
    }
}

impl From<SequentialWritePolicy> for AnyWritePolicy {
    fn from(policy: SequentialWritePolicy) -> Self {
        AnyWritePolicy::Sequential(policy)
    }
}

impl From<OptimisticParallelWritePolicy> for AnyWritePolicy {
    fn from(policy: OptimisticParallelWritePolicy) -> Self {
        AnyWritePolicy::OptimisticParallel(policy)
    }
}

impl From<RaceWritePolicy> for AnyWritePolicy {
    fn from(policy: RaceWritePolicy) -> Self {
        AnyWritePolicy::Race(policy)
    }
}

impl WritePolicy for AnyWritePolicy {
    async fn write<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<WriteOutcome, BackendError>
    where
        F1: TierOp<TierWrite>,
        F2: TierOp<TierWrite>,
    {
        match self {
            AnyWritePolicy::Sequential(p) => p.write(cx, l1, l2).await,
            AnyWritePolicy::OptimisticParallel(p) => p.write(cx, l1, l2).await,
            AnyWritePolicy::Race(p) => p.write(cx, l1, l2).await,
        }
    }
}
