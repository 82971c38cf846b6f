//! Read policies: how the two tiers of a composition are read.
//!
//! All read policies share one rule for choosing between two answers and one rule for errors:
//!
//! * **Choosing.** Expired values never reach a policy (the composition drops them). Between two
//!   hits, a fresh value beats a stale one; between two values equally fresh, the newer write
//!   (later `created_at`) wins; a tie goes to L1.
//! * **Errors.** A read fails only when no tier produced a value and at least one failed: with
//!   one failure the error is that tier's own [`BackendError`]; with two it is
//!   [`CompositionError::BothLayersFailed`]. A miss everywhere is `Ok(None)`. When one tier
//!   fails and the other produces a value, the value is returned and a warning names the failed
//!   tier.
//! * **Refill.** The outcome says whether L1 should be refilled: only when the value came from
//!   L2 and L1 is known to have missed, failed, or held a worse value.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures_util::future::{self, Either};
use tierkit_core::{BackendError, CacheValue, OffloadTask, Timestamp};

use crate::context::{Layer, PolicyContext, TierOp};
use crate::error::CompositionError;

/// The result of one tier's read.
pub type TierRead = Result<Option<CacheValue>, BackendError>;

/// What a read policy decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOutcome {
    /// The value to return, if any.
    pub value: Option<CacheValue>,
    /// The tier it came from.
    pub source: Option<Layer>,
    /// Whether L1 should receive a copy of the value (it came from L2, and L1 is known to have
    /// missed, failed, or held a worse value).
    pub refill_l1: bool,
}

impl ReadOutcome {
    /// Nothing found, nothing failed.
    #[must_use]
    pub fn miss() -> Self {
        ReadOutcome {
            value: None,
            source: None,
            refill_l1: false,
        }
    }

    /// `value`, found in tier `source`; `refill_l1` asks the composition to copy it into L1
    /// (only meaningful for an L2 value that L1 is known to have missed, failed or held worse).
    #[must_use]
    pub fn found(source: Layer, value: CacheValue, refill_l1: bool) -> Self {
        ReadOutcome {
            value: Some(value),
            source: Some(source),
            refill_l1,
        }
    }

    /// Combines two known answers by the rules every built-in policy shares, for policies of
    /// your own: fresh beats stale, then the newer write (`created_at`) wins, a tie goes to
    /// L1; an L2 value that wins is refilled into L1. A read fails only when no tier produced
    /// a value and at least one failed (both failed: [`CompositionError::BothLayersFailed`]).
    /// A failure beside a value is logged as a warning naming the tier, as the built-in
    /// policies do.
    ///
    /// # Errors
    ///
    /// The failed tier's error when the other missed; `BothLayersFailed` when both failed.
    pub fn combine(
        cx: &PolicyContext<'_>,
        l1: TierRead,
        l2: TierRead,
    ) -> Result<ReadOutcome, BackendError> {
        let now = cx.now();
        match (l1, l2) {
            (Ok(Some(v1)), Ok(Some(v2))) => {
                if better(&v2, &v1, now) {
                    Ok(ReadOutcome::found(Layer::L2, v2, true))
                } else {
                    Ok(ReadOutcome::found(Layer::L1, v1, false))
                }
            }
            (Ok(Some(v1)), Ok(None)) => Ok(ReadOutcome::found(Layer::L1, v1, false)),
            (Ok(None), Ok(Some(v2))) => Ok(ReadOutcome::found(Layer::L2, v2, true)),
            (Ok(None), Ok(None)) => Ok(ReadOutcome::miss()),
            (Ok(Some(v1)), Err(e2)) => {
                warn_partial(cx, Layer::L2, &e2);
                Ok(ReadOutcome::found(Layer::L1, v1, false))
            }
            (Err(e1), Ok(Some(v2))) => {
                warn_partial(cx, Layer::L1, &e1);
                Ok(ReadOutcome::found(Layer::L2, v2, true))
            }
            (Ok(None), Err(e2)) => {
                tracing::warn!(tier = %cx.l2(), error = &e2 as &dyn std::error::Error, "read failed on one tier and the other missed");
                Err(e2)
            }
            (Err(e1), Ok(None)) => {
                tracing::warn!(tier = %cx.l1(), error = &e1 as &dyn std::error::Error, "read failed on one tier and the other missed");
                Err(e1)
            }
            (Err(l1), Err(l2)) => {
                tracing::error!(
                    l1 = &l1 as &dyn std::error::Error,
                    l2 = &l2 as &dyn std::error::Error,
                    "read failed on both tiers"
                );
                Err(CompositionError::BothLayersFailed { l1, l2 }.into())
            }
        }
    }
}

/// Decides how a composition reads its two tiers.
///
/// Implementations receive each tier's read as a closure that produces a future, and must
/// call each closure at most once. Futures are `'static` so that a policy can hand a loser
/// to the [`Offload`](tierkit_core::Offload).
pub trait ReadPolicy: Send + Sync + fmt::Debug + 'static {
    /// Whether a fresh L1 hit answered synchronously (through
    /// [`Backend::probe`](tierkit_core::Backend::probe)) ends the read without asking L2. True
    /// for sequential and race reads: this is what makes an L1 hit cost no allocation and no
    /// L2 request.
    fn l1_fresh_hit_is_final(&self) -> bool;

    /// Reads through both tiers.
    fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> impl Future<Output = Result<ReadOutcome, BackendError>> + Send
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>;
}

/// Whether `candidate` is strictly better than `incumbent` at `now`: fresh beats stale, then
/// the newer write wins.
fn better(candidate: &CacheValue, incumbent: &CacheValue, now: Timestamp) -> bool {
    let rank = |v: &CacheValue| (v.is_fresh(now), v.created_at());
    rank(candidate) > rank(incumbent)
}

fn warn_partial(cx: &PolicyContext<'_>, failed: Layer, error: &BackendError) {
    tracing::warn!(
        tier = %cx.name(failed),
        error = error as &dyn std::error::Error,
        "read failed on one tier; served from the other"
    );
}

/// Reads L1; asks L2 only when L1 has no fresh value. **The default.**
///
/// | L1 | L2 | returns | refills L1 |
/// |---|---|---|---|
/// | fresh hit | not asked | L1's value | no |
/// | stale hit | hit | the better value (fresh beats stale, then newer write) | if L2's won |
/// | stale hit | miss | L1's stale value | no |
/// | stale hit | error | L1's stale value, warning names L2 | no |
/// | miss | hit | L2's value | yes |
/// | miss | miss | `Ok(None)` | no |
/// | miss | error | L2's error | no |
/// | error | hit | L2's value, warning names L1 | yes |
/// | error | miss | L1's error | no |
/// | error | error | `BothLayersFailed { l1, l2 }` | no |
///
/// Cost: an L1 fresh hit costs one L1 lookup; anything else costs one L1 lookup plus one L2
/// request, one after the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SequentialReadPolicy;

impl ReadPolicy for SequentialReadPolicy {
    fn l1_fresh_hit_is_final(&self) -> bool {
        true
    }

    async fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<ReadOutcome, BackendError>
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>,
    {
        match l1.start().await {
            Ok(Some(v1)) if v1.is_fresh(cx.now()) => Ok(ReadOutcome::found(Layer::L1, v1, false)),
            r1 => ReadOutcome::combine(cx, r1, l2.start().await),
        }
    }
}

/// What happens to the slower tier's read once a race is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RaceLoser {
    /// Dropped: its request is cancelled where the tier allows it. Cheapest. **The default.**
    #[default]
    Drop,
    /// Finished on the [`Offload`](tierkit_core::Offload), its answer discarded: for tiers
    /// where cancelling a request mid-flight is costly. If the offload refuses it, it is dropped.
    Finish,
}

/// Reads both tiers at once; the first fresh hit wins.
///
/// Both reads start together (L1 is polled first). As soon as one returns a fresh hit, it is
/// returned and the other read is the loser, dropped or finished on the offload
/// ([`RaceLoser`]). Anything else (a stale hit, a miss, an error) waits for the other tier and
/// the two answers are combined by the shared rules, as in the parallel read.
///
/// | first to answer | then | returns | refills L1 |
/// |---|---|---|---|
/// | L1 fresh hit | L2 is the loser | L1's value | no |
/// | L2 fresh hit | L1 is the loser | L2's value | no (L1's state is unknown) |
/// | anything else | wait for the other | the shared combination (see [`ParallelReadPolicy`]) | as there |
///
/// Cost: an L1 answered synchronously through its probe (an in-process tier) decides the race
/// before L2 is asked, so such a fresh L1 hit costs no L2 request. When L1 must be awaited,
/// every read costs an L2 request, even an L1 hit, unless the loser is dropped before its
/// request is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaceReadPolicy {
    /// What happens to the loser.
    pub loser: RaceLoser,
}

impl RaceReadPolicy {
    /// A race whose loser is handled as `loser` says.
    #[must_use]
    pub fn new(loser: RaceLoser) -> Self {
        RaceReadPolicy { loser }
    }
}

impl RaceReadPolicy {
    fn dispose<F>(&self, cx: &PolicyContext<'_>, loser: F)
    where
        F: Future<Output = TierRead> + Send + 'static,
    {
        if self.loser == RaceLoser::Finish {
            let task = OffloadTask::new("race-read-loser", async move {
                // The answer is discarded; only the request is finished.
                let _ = loser.await;
                Ok(())
            });
            if let Err(rejected) = cx.offload().spawn(task) {
                tracing::debug!(reason = %rejected.reason, "race loser dropped: offload refused it");
            }
        }
    }
}

impl ReadPolicy for RaceReadPolicy {
    fn l1_fresh_hit_is_final(&self) -> bool {
        true
    }

    async fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<ReadOutcome, BackendError>
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>,
    {
        let now = cx.now();
        let f1 = Box::pin(l1.start());
        let f2 = Box::pin(l2.start());
        match future::select(f1, f2).await {
            Either::Left((r1, f2)) => match r1 {
                Ok(Some(v1)) if v1.is_fresh(now) => {
                    self.dispose(cx, f2);
                    Ok(ReadOutcome::found(Layer::L1, v1, false))
                }
                r1 => ReadOutcome::combine(cx, r1, f2.await),
            },
            Either::Right((r2, f1)) => match r2 {
                Ok(Some(v2)) if v2.is_fresh(now) => {
                    self.dispose(cx, f1);
                    Ok(ReadOutcome::found(Layer::L2, v2, false))
                }
                r2 => ReadOutcome::combine(cx, f1.await, r2),
            },
        }
    }
}

/// Reads both tiers at once, waits for both, and returns the better value.
///
/// | L1 | L2 | returns | refills L1 |
/// |---|---|---|---|
/// | hit | hit | the better value (fresh beats stale, then newer write, tie to L1) | if L2's won |
/// | hit | miss | L1's value | no |
/// | hit | error | L1's value, warning names L2 | no |
/// | miss | hit | L2's value | yes |
/// | miss | miss | `Ok(None)` | no |
/// | miss | error | L2's error | no |
/// | error | hit | L2's value, warning names L1 | yes |
/// | error | miss | L1's error | no |
/// | error | error | `BothLayersFailed { l1, l2 }` | no |
///
/// Cost: every read, L1 hits included, costs an L2 request and waits for the slower tier. It
/// buys consistency: a value another node wrote to L2 is seen at once, not when L1's copy
/// goes stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParallelReadPolicy;

impl ReadPolicy for ParallelReadPolicy {
    fn l1_fresh_hit_is_final(&self) -> bool {
        false
    }

    async fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<ReadOutcome, BackendError>
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>,
    {
        let (r1, r2) = future::join(l1.start(), l2.start()).await;
        ReadOutcome::combine(cx, r1, r2)
    }
}

/// A read policy chosen at run time, for instance from configuration.
///
/// ```
/// use tierkit_policy::{AnyReadPolicy, RaceLoser};
///
/// let policy: AnyReadPolicy = "race-finish".parse()?;
/// assert_eq!(policy, AnyReadPolicy::Race(tierkit_policy::RaceReadPolicy::new(RaceLoser::Finish)));
/// assert_eq!(AnyReadPolicy::default(), "sequential".parse()?);
/// assert!("fastest".parse::<AnyReadPolicy>().is_err());
/// # Ok::<(), tierkit_policy::CompositionError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyReadPolicy {
    /// [`SequentialReadPolicy`]: `sequential`. The default.
    Sequential(SequentialReadPolicy),
    /// [`RaceReadPolicy`]: `race` (loser dropped) or `race-finish` (loser finished).
    Race(RaceReadPolicy),
    /// [`ParallelReadPolicy`]: `parallel`.
    Parallel(ParallelReadPolicy),
}

impl Default for AnyReadPolicy {
    fn default() -> Self {
        AnyReadPolicy::Sequential(SequentialReadPolicy)
    }
}

impl AnyReadPolicy {
    /// The name accepted by [`FromStr`].
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            AnyReadPolicy::Sequential(_) => "sequential",
            AnyReadPolicy::Race(RaceReadPolicy {
                loser: RaceLoser::Drop,
            }) => "race",
            AnyReadPolicy::Race(RaceReadPolicy {
                loser: RaceLoser::Finish,
            }) => "race-finish",
            AnyReadPolicy::Parallel(_) => "parallel",
        }
    }
}

impl fmt::Display for AnyReadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AnyReadPolicy {
    type Err = CompositionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sequential" => Ok(AnyReadPolicy::Sequential(SequentialReadPolicy)),
            "race" => Ok(AnyReadPolicy::Race(RaceReadPolicy::new(RaceLoser::Drop))),
            "race-finish" => Ok(AnyReadPolicy::Race(RaceReadPolicy::new(RaceLoser::Finish))),
            "parallel" => Ok(AnyReadPolicy::Parallel(ParallelReadPolicy)),
            _ => Err(CompositionError::UnknownPolicy {
                family: "read",
                name: name.to_owned(),
                expected: "sequential, race, race-finish, parallel",
            }),
        }
    }
}

impl From<SequentialReadPolicy> for AnyReadPolicy {
    fn from(policy: SequentialReadPolicy) -> Self {
        AnyReadPolicy::Sequential(policy)
    }
}

impl From<RaceReadPolicy> for AnyReadPolicy {
    fn from(policy: RaceReadPolicy) -> Self {
        AnyReadPolicy::Race(policy)
    }
}

impl From<ParallelReadPolicy> for AnyReadPolicy {
    fn from(policy: ParallelReadPolicy) -> Self {
        AnyReadPolicy::Parallel(policy)
    }
}

impl ReadPolicy for AnyReadPolicy {
    fn l1_fresh_hit_is_final(&self) -> bool {
        match self {
            AnyReadPolicy::Sequential(p) => p.l1_fresh_hit_is_final(),
            AnyReadPolicy::Race(p) => p.l1_fresh_hit_is_final(),
            AnyReadPolicy::Parallel(p) => p.l1_fresh_hit_is_final(),
        }
    }

    async fn read<F1, F2>(
        &self,
        cx: &PolicyContext<'_>,
        l1: F1,
        l2: F2,
    ) -> Result<ReadOutcome, BackendError>
    where
        F1: TierOp<TierRead>,
        F2: TierOp<TierRead>,
    {
        match self {
            AnyReadPolicy::Sequential(p) => p.read(cx, l1, l2).await,
            AnyReadPolicy::Race(p) => p.read(cx, l1, l2).await,
            AnyReadPolicy::Parallel(p) => p.read(cx, l1, l2).await,
        }
    }
}
