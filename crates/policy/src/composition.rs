//! Two tiers stacked into one [`Backend`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, GetFuture, Offload, OffloadTask, Op, Probe,
    TierFuture, TierPath, TokioOffload, WriteFuture,
};
use tracing::Instrument as _;

use crate::context::{Layer, PolicyContext};
use crate::error::CompositionError;
use crate::keyops::{Effect, KeyOps};
use crate::read::{AnyReadPolicy, ReadPolicy, TierRead};
use crate::refill::RefillPolicy;
use crate::scope::{Bindings, Scope, TierScope};
use crate::write::{AnyWritePolicy, TierWrite, WritePolicy};

/// Two tiers read, written and refilled under explicit policies, usable wherever a single
/// tier is: a `Composition` is itself a [`Backend`], so compositions nest
/// (`Composition<Moka, Composition<Redis, S3>>` is a three-tier cache) and erase
/// (`Arc<dyn Backend>`).
///
/// * **get**: L1's probe first. With a read policy that accepts it (sequential, race), a fresh
///   L1 hit answered synchronously returns at once: no allocation, no await, no L2 request, no
///   span, and no clock read beyond the one L1 makes (freshness there is judged by L1's clock,
///   so give every tier of a stack the composition's clock). Otherwise the read policy decides ([`ReadPolicy`]), and an L2 value is refilled into
///   L1 according to the [`RefillPolicy`]. Expired values are dropped whichever tier returns
///   them; stale values are returned as stale.
/// * **set**: the write policy decides ([`WritePolicy`]); the value and its timestamps reach
///   both tiers unchanged.
/// * **delete** and **clear**: both tiers, L2 first and then L1 (so a concurrent reader cannot
///   refill L1 from an L2 entry that is about to go). `Ok` only when both succeeded; one failure
///   is that tier's error; two are [`CompositionError::BothLayersFailed`]. A clear is bounded by
///   its own [`clear_timeout`](CompositionBuilder::clear_timeout), not the per-key bounds; one
///   that fails on a tier leaves no tier serving what the other cleared: until a clear succeeds
///   on both, values created before it began are treated as absent wherever they are.
///
/// # Overlapping operations on one key
///
/// Operations on the same key can overlap: two `set`s whose writes land in opposite orders in
/// a tier, a race write's slower half finishing on the offload after a `delete`, a refill
/// landing after a `delete`. None of these leaves an older value in a tier, and none is served
/// after a newer operation returned. While operations on a key run, the composition remembers
/// the newest one's effect (a value, or a removal); each call to a tier applies the effect that
/// is newest when the call is made, and when calls to a tier were in flight together, the last
/// to finish applies the newest effect once more, so the tier ends in the newest state whatever
/// order they landed in. A `set` or `delete` returns once no call on its key is in flight at
/// either tier (and a `clear` once the calls in flight when it began have finished): a write of
/// an older value still travelling has then landed and been overwritten. A refill is skipped
/// when the key changed since its read began, while operations on the key run, and while a
/// `clear` runs; a read that overlapped a removal may return what it read, but never copies it
/// into L1. Without overlap, nothing extra happens (no wait, no extra call); the bookkeeping
/// lives only while operations run ([`Composition::keys_in_flight`]).
///
/// A refill is also a conditional write ([`Backend::set_if_newer`]): L1 keeps a value created
/// later than the one read from L2, whoever wrote it (another composition sharing the
/// in-process tier, another handle of it), so a slow L2 read never puts an older value over a
/// newer one. [`Backend::set_if_newer`] on the composition itself is the write policy's write,
/// conditional on each tier.
///
/// An operation whose future is dropped before it finishes (a caller's timeout, `select!`)
/// counts as finished when dropped; a follow-up it owed runs on the offload. A request the tier
/// had already received may still land afterwards: the outcome of a cancelled write is unknown,
/// as it is for any cancelled request.
///
/// When a tier refuses a write that the other tier accepted (the write returns `Ok` with a
/// warning), the refusing tier must not keep serving the previous value: an in-process tier
/// (one that answers synchronously) has the key removed at once. A remote tier that failed is
/// most likely unreachable and is left alone; its previous value, if any, expires on its own.
///
/// Policies are values, not type parameters you must spell out: the defaults,
/// [`AnyReadPolicy`] and [`AnyWritePolicy`], are chosen at run time (for example parsed from
/// configuration). Name a concrete policy type instead to have it compiled in.
///
/// Every operation that is not an L1 hit runs each tier call inside a `debug` span
/// `tierkit.tier` with fields `tier` (its path: `l1`, `l2.l1`, ...), `backend` (its label) and
/// `op`, and counts it (see the crate docs for metric names). A composition learns its path
/// the first time it is used or bound into a larger stack ([`Backend::bind`]); one used on its
/// own and nested later moves to its new path when the outer composition binds it, so two
/// tiers of a stack never count into one series.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tierkit_core::{Backend, CacheKey, CacheValue, Clock, SharedBackend};
/// use tierkit_policy::{AnyReadPolicy, Composition, RaceWritePolicy};
/// # use tierkit_testkit::MemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (l1, l2) = (MemoryBackend::new("memory"), MemoryBackend::new("remote").remote());
/// // `l1` and `l2` are any two tiers, for instance moka and Redis.
/// let cache = Composition::builder(l1, l2)
///     .read_policy("sequential".parse::<AnyReadPolicy>()?)
///     .write_policy(RaceWritePolicy)
///     .build();
///
/// let key = CacheKey::new("user:42")?;
/// let value = CacheValue::with_ttl(&b"Ada"[..], Clock::System.now(), Duration::from_secs(60));
/// cache.set(&key, value.clone()).await?;
/// assert_eq!(cache.get(&key).await?, Some(value));
///
/// // The same stack, type-erased, behaves the same.
/// let erased: SharedBackend = Arc::new(cache);
/// assert!(erased.get(&key).await?.is_some());
/// # Ok(())
/// # }
/// ```
pub struct Composition<L1, L2, R = AnyReadPolicy, W = AnyWritePolicy> {
    shared: Arc<Shared<L1, L2, R, W>>,
}

struct Shared<L1, L2, R, W> {
    l1: L1,
    l2: L2,
    read: R,
    write: W,
    refill: RefillPolicy,
    offload: Arc<dyn Offload>,
    clock: Clock,
    label: Arc<str>,
    timeouts: [Option<Duration>; 2],
    clear_timeout: Duration,
    /// While a clear runs, or after one failed on a tier, until a clear succeeds on both: the
    /// clear's start (Unix milliseconds; 0 when none). Values created before it are treated as
    /// absent, whichever tier holds them, so no tier serves what another cleared.
    cleared_before: AtomicU64,
    scope: Bindings,
    ops: KeyOps,
}

impl<L1, L2, R, W> Clone for Composition<L1, L2, R, W> {
    /// Another handle to the same composition.
    fn clone(&self) -> Self {
        Composition {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<L1: Backend, L2: Backend> Composition<L1, L2> {
    /// `l1` over `l2` with the default policies: sequential read, optimistic parallel write,
    /// refill always.
    #[must_use]
    pub fn new(l1: L1, l2: L2) -> Self {
        Self::builder(l1, l2).build()
    }

    /// A builder for `l1` over `l2`.
    pub fn builder(l1: L1, l2: L2) -> CompositionBuilder<L1, L2> {
        CompositionBuilder {
            l1,
            l2,
            read: AnyReadPolicy::default(),
            write: AnyWritePolicy::default(),
            refill: RefillPolicy::default(),
            offload: None,
            clock: Clock::System,
            label: None,
            timeouts: [None, None],
            clear_timeout: DEFAULT_CLEAR_TIMEOUT,
        }
    }
}

impl<L1, L2, R, W> Composition<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    /// The first tier.
    pub fn l1(&self) -> &L1 {
        &self.shared.l1
    }

    /// The second tier.
    pub fn l2(&self) -> &L2 {
        &self.shared.l2
    }

    /// The read policy.
    pub fn read_policy(&self) -> &R {
        &self.shared.read
    }

    /// The write policy.
    pub fn write_policy(&self) -> &W {
        &self.shared.write
    }

    /// The refill policy.
    #[must_use]
    pub fn refill_policy(&self) -> RefillPolicy {
        self.shared.refill
    }

    /// The number of keys with writes, removals or refills running through this composition
    /// (not counting nested compositions). Zero whenever the composition is idle: a non-zero
    /// value on an idle cache means a tier operation is stuck.
    #[must_use]
    pub fn keys_in_flight(&self) -> usize {
        self.shared.ops.in_flight()
    }
}

impl<L1, L2, R, W> Shared<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    /// The scope where the composition is bound now: the root of a stack on first use if no
    /// outer composition bound it.
    #[inline]
    fn scope(&self) -> &Scope {
        self.scope.current(|path| self.make_scope(path))
    }

    fn make_scope(&self, path: &TierPath) -> Scope {
        let (p1, p2) = (path.child(1), path.child(2));
        self.l1.bind(&p1);
        self.l2.bind(&p2);
        Scope {
            l1: TierScope::new(&p1, self.l1.label()),
            l2: TierScope::new(&p2, self.l2.label()),
        }
    }

    fn tier(&self, layer: Layer) -> &TierScope {
        let scope = self.scope();
        match layer {
            Layer::L1 => &scope.l1,
            Layer::L2 => &scope.l2,
        }
    }

    fn context(&self) -> PolicyContext<'_> {
        let scope = self.scope();
        PolicyContext::new(
            scope.l1.name(),
            scope.l2.name(),
            self.clock.now(),
            &*self.offload,
        )
    }

    /// Whether `value` predates a clear that is running or failed (see `cleared_before`).
    #[inline(always)]
    fn cleared(&self, value: &CacheValue) -> bool {
        let cleared_before = self.cleared_before.load(Ordering::Relaxed);
        cleared_before != 0 && value.created_at().as_unix_millis() < cleared_before
    }

    /// A fresh L1 hit answered without awaiting, or what L1's probe told.
    #[inline(always)]
    fn probe_l1(&self, key: &CacheKey) -> L1Probe {
        if !self.read.l1_fresh_hit_is_final() {
            return L1Probe::Unknown;
        }
        match self.l1.probe(key) {
            Probe::Fresh(value) if !self.cleared(&value) => {
                self.scope().l1.get_hit.increment(1);
                L1Probe::FreshHit(value)
            }
            // A value a failed clear should have removed: L2 may hold a newer one.
            Probe::Fresh(_) => L1Probe::Known(Ok(None)),
            Probe::Stale(value) => L1Probe::Known(Ok(Some(value))),
            Probe::Miss => L1Probe::Known(Ok(None)),
            Probe::Unknown => L1Probe::Unknown,
        }
    }

    /// One tier's read, as a policy sees it: in a span, bounded by the tier's timeout, with
    /// expired values dropped and the outcome counted. `known` is an answer L1's probe already
    /// gave.
    async fn tier_get(&self, layer: Layer, key: &CacheKey, known: Option<TierRead>) -> TierRead {
        let tier = self.tier(layer);
        let result = match known {
            Some(result) => result,
            None => {
                let span = tracing::debug_span!(
                    "tierkit.tier",
                    tier = %tier.path,
                    backend = %tier.label,
                    op = %Op::Get
                );
                let call = match layer {
                    Layer::L1 => self.l1.get(key),
                    Layer::L2 => self.l2.get(key),
                };
                bounded(self.timeouts[index(layer)], &tier.label, Op::Get, call)
                    .instrument(span)
                    .await
            }
        };
        let now = self.clock.now();
        let result = result
            .map(|found| found.filter(|value| !value.is_expired(now) && !self.cleared(value)));
        match &result {
            Ok(Some(_)) => tier.get_hit.increment(1),
            Ok(None) => tier.get_miss.increment(1),
            Err(_) => tier.get_error.increment(1),
        }
        result
    }

    /// Starts `write` on one tier (the tier's own future, without span, bound or count).
    fn start<'a>(&'a self, layer: Layer, write: Write<'a>) -> WriteFuture<'a> {
        match (layer, write) {
            (Layer::L1, Write::Set(key, value)) => self.l1.set(key, value),
            (Layer::L2, Write::Set(key, value)) => self.l2.set(key, value),
            (Layer::L1, Write::SetIfNewer(key, value) | Write::Refill(key, value)) => {
                self.l1.set_if_newer(key, value)
            }
            (Layer::L2, Write::SetIfNewer(key, value) | Write::Refill(key, value)) => {
                self.l2.set_if_newer(key, value)
            }
            (Layer::L1, Write::Delete(key)) => self.l1.delete(key),
            (Layer::L2, Write::Delete(key)) => self.l2.delete(key),
            (Layer::L1, Write::Clear) => self.l1.clear(),
            (Layer::L2, Write::Clear) => self.l2.clear(),
        }
    }

    /// One tier's write, in a span, bounded and counted.
    async fn tier_write(&self, layer: Layer, write: Write<'_>) -> TierWrite {
        let tier = self.tier(layer);
        let (op, refill) = (write.op(), matches!(write, Write::Refill(..)));
        let span = tracing::debug_span!(
            "tierkit.tier",
            tier = %tier.path,
            backend = %tier.label,
            op = %write.name()
        );
        // A clear walks the whole tier: it has a bound of its own.
        let limit = if op == Op::Clear {
            Some(self.clear_timeout)
        } else {
            self.timeouts[index(layer)]
        };
        let result = bounded(limit, &tier.label, op, self.start(layer, write))
            .instrument(span)
            .await;
        if refill {
            tier.refill.record(&result);
        } else {
            tier.writes(op).record(&result);
        }
        result
    }

    /// Copies `value`, read from L2 when the key's generation was `generation`, into L1,
    /// unless the key changed since the read began or has operations running.
    async fn refill(self: &Arc<Self>, key: &CacheKey, value: CacheValue, generation: u64) {
        let tier = &self.scope().l1;
        if !self.ops.begin_refill(key, value, generation) {
            tracing::debug!(tier = %tier.name(), "refill skipped: the key changed during the read");
            return;
        }
        let mut finish = Finish::new(self, Layer::L1, key);
        // The value refilled, unless an operation that began since made another effect newer.
        let result = match finish.dispatch() {
            Some(Effect::Store(value) | Effect::StoreIfNewer(value)) => {
                self.tier_write(Layer::L1, Write::Refill(key, value)).await
            }
            Some(Effect::Remove) => self.tier_write(Layer::L1, Write::Delete(key)).await,
            None => Ok(()),
        };
        // A refill promises nothing to its read: it does not wait for the tier to settle.
        finish.run().await;
        if let Err(error) = result {
            tracing::warn!(tier = %tier.name(), error = &error as &dyn std::error::Error, "refill failed; the read is served anyway");
        }
    }

    /// Applies the key's newest effect to one tier as part of a `set` or `delete` (begun with
    /// [`KeyOps::begin`]): a half that starts late (a race write's slower half, run on the
    /// offload) after a newer operation on the key began applies that operation's effect, so
    /// the tier never holds, even briefly, a value older than an acknowledged write or delete.
    /// Then makes sure the tier does not keep an older value: after calls overlapped, the
    /// newest effect is applied again by whichever finishes last, and the operation returns
    /// once no call on the key is in flight at the tier; after a failed write, the key is
    /// removed if the tier can do so synchronously (an in-process tier that refused the value
    /// would otherwise keep serving the previous one).
    async fn apply_tier(
        &self,
        layer: Layer,
        key: &CacheKey,
        mut finish: Finish<L1, L2, R, W>,
    ) -> TierWrite {
        let (result, stored) = match finish.dispatch() {
            Some(Effect::Store(newest)) => {
                (self.tier_write(layer, Write::Set(key, newest)).await, true)
            }
            Some(Effect::StoreIfNewer(newest)) => (
                self.tier_write(layer, Write::SetIfNewer(key, newest)).await,
                true,
            ),
            Some(Effect::Remove) => (self.tier_write(layer, Write::Delete(key)).await, false),
            None => (Ok(()), false),
        };
        let reapplied = finish.run().await;
        // Only when no other operation on the key uses the tier: one that does applies a newer
        // effect, which a removal now could undo.
        if stored && result.is_err() && !reapplied && !self.ops.registered(key, layer) {
            self.remove_if_synchronous(layer, key);
        }
        if let Some(settled) = self.ops.settled(key, layer) {
            // A dropped sender is the signal.
            let _ = settled.await;
        }
        result
    }

    /// Removes `key` from a tier whose write just failed, when the tier answers the removal
    /// without awaiting. A remote tier is left alone: it is most likely unreachable, and a
    /// removal in the background could land after a newer write. Its older value, if any,
    /// stays until it expires; the write's warning is the signal.
    fn remove_if_synchronous(&self, layer: Layer, key: &CacheKey) {
        let tier = self.tier(layer);
        match self.start(layer, Write::Delete(key)).into_ready() {
            Ok(result) => {
                tier.delete.record(&result);
                if let Err(error) = result {
                    tracing::warn!(
                        tier = %tier.name(),
                        error = &error as &dyn std::error::Error,
                        "could not remove the previous value after a failed write"
                    );
                }
            }
            Err(_pending) => tracing::debug!(
                tier = %tier.name(),
                "failed write on a tier that answers asynchronously: its previous value, if any, \
                 stays until it expires"
            ),
        }
    }

    /// Applies the newest effect on `key` to one tier again, after overlapping operations.
    async fn reapply(&self, layer: Layer, key: &CacheKey, effect: Effect) {
        let tier = self.tier(layer);
        tracing::debug!(tier = %tier.name(), "overlapping operations on a key: applying the newest again");
        let result = match effect {
            Effect::Store(value) => self.tier_write(layer, Write::Set(key, value)).await,
            Effect::StoreIfNewer(value) => {
                self.tier_write(layer, Write::SetIfNewer(key, value)).await
            }
            Effect::Remove => self.tier_write(layer, Write::Delete(key)).await,
        };
        if let Err(error) = result {
            tracing::warn!(
                tier = %tier.name(),
                error = &error as &dyn std::error::Error,
                "could not apply the newest operation again after overlapping operations"
            );
        }
    }

    /// Finishes, in the background, an operation whose future was dropped before it finished:
    /// applies `effect` (the newest on the key) to the tier again, then finishes as usual.
    fn reapply_in_background(self: &Arc<Self>, layer: Layer, key: CacheKey, effect: Effect) {
        // The follow-up counts as running (`KeyOps::finish` said so). Its guard exists before
        // the task does: a task dropped before it ran (an offload that refused it, a runtime
        // shut down with it queued) still releases the bookkeeping when dropped.
        let mut finish = Finish::new(self, layer, &key);
        finish.dispatched = true;
        let task = OffloadTask::new("reapply-newest", async move {
            finish.shared.reapply(layer, &finish.key, effect).await;
            finish.run().await;
            Ok(())
        });
        if let Err(rejected) = self.offload.spawn(task) {
            tracing::warn!(
                tier = %self.tier(layer).name(),
                reason = %rejected.reason,
                "an operation was cancelled during overlapping operations and the offload refused \
                 its follow-up: the tier may keep an older value until it expires"
            );
        }
    }
}

/// Records the end of one tier operation in the key's bookkeeping, applying the newest effect
/// again when this was the last of overlapping operations; if the operation's future is dropped
/// before it finishes, the follow-up runs on the offload.
///
/// Create it right after the operation is registered, before any await, and move it with the
/// work: however the work ends, the bookkeeping is released.
struct Finish<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    shared: Arc<Shared<L1, L2, R, W>>,
    layer: Layer,
    key: CacheKey,
    /// The operation called the tier ([`Finish::dispatch`]).
    dispatched: bool,
    armed: bool,
}

impl<L1, L2, R, W> Finish<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    fn new(shared: &Arc<Shared<L1, L2, R, W>>, layer: Layer, key: &CacheKey) -> Self {
        Finish {
            shared: Arc::clone(shared),
            layer,
            key: key.clone(),
            dispatched: false,
            armed: true,
        }
    }

    /// Records that the operation calls the tier now; the effect the call must apply.
    fn dispatch(&mut self) -> Option<Effect> {
        self.dispatched = true;
        self.shared.ops.dispatch(&self.key, self.layer)
    }

    /// Finishes the operation; returns whether the newest effect had to be applied again.
    async fn run(mut self) -> bool {
        let mut reapplied = false;
        loop {
            match self
                .shared
                .ops
                .finish(&self.key, self.layer, self.dispatched)
            {
                None => {
                    self.armed = false;
                    return reapplied;
                }
                Some(effect) => {
                    // The re-application is a call in flight of its own.
                    (reapplied, self.dispatched) = (true, true);
                    self.shared.reapply(self.layer, &self.key, effect).await;
                }
            }
        }
    }
}

impl<L1, L2, R, W> Drop for Finish<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    fn drop(&mut self) {
        if self.armed
            && let Some(effect) = self
                .shared
                .ops
                .finish(&self.key, self.layer, self.dispatched)
        {
            self.shared
                .reapply_in_background(self.layer, self.key.clone(), effect);
        }
    }
}

/// A write operation on one tier of a composition.
enum Write<'a> {
    /// Store a value written through the composition.
    Set(&'a CacheKey, CacheValue),
    /// Store a value written through the composition, unless the tier holds a newer one.
    SetIfNewer(&'a CacheKey, CacheValue),
    /// Store a value read from L2, unless the tier holds a newer one (counted as a refill).
    Refill(&'a CacheKey, CacheValue),
    /// Remove a key.
    Delete(&'a CacheKey),
    /// Remove every key.
    Clear,
}

impl Write<'_> {
    /// The operation, for errors and write counts.
    fn op(&self) -> Op {
        match self {
            Write::Set(..) | Write::SetIfNewer(..) | Write::Refill(..) => Op::Set,
            Write::Delete(_) => Op::Delete,
            Write::Clear => Op::Clear,
        }
    }

    /// The name in spans: the operation, `set_if_newer` or `refill`.
    fn name(&self) -> &'static str {
        match self {
            Write::SetIfNewer(..) => "set_if_newer",
            Write::Refill(..) => "refill",
            other => other.op().as_str(),
        }
    }
}

/// What L1's probe told the composition.
enum L1Probe {
    FreshHit(CacheValue),
    Known(TierRead),
    Unknown,
}

fn index(layer: Layer) -> usize {
    match layer {
        Layer::L1 => 0,
        Layer::L2 => 1,
    }
}

/// Awaits `call`, within `limit` when one is set.
async fn bounded<T>(
    limit: Option<Duration>,
    label: &Arc<str>,
    op: Op,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match limit {
        None => call.await,
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::timeout(Arc::clone(label), op, limit)),
        },
    }
}

impl<L1, L2, R, W> Composition<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    async fn read_through(&self, key: &CacheKey, known: Option<TierRead>) -> TierRead {
        let shared = &self.shared;
        let generation = shared.ops.generation(key);
        let cx = shared.context();
        let (s1, k1) = (Arc::clone(shared), key.clone());
        let (s2, k2) = (Arc::clone(shared), key.clone());
        let outcome = shared
            .read
            .read(
                &cx,
                move || async move { s1.tier_get(Layer::L1, &k1, known).await },
                move || async move { s2.tier_get(Layer::L2, &k2, None).await },
            )
            .await?;
        if let Some(value) = &outcome.value
            && outcome.refill_l1
            && shared.refill == RefillPolicy::Always
        {
            shared.refill(key, value.clone(), generation).await;
        }
        Ok(outcome.value)
    }

    /// Writes `effect` (a value to store, conditionally or not) to both tiers under the write
    /// policy.
    async fn write_both(&self, key: &CacheKey, effect: Effect) -> TierWrite {
        let shared = &self.shared;
        match &effect {
            Effect::StoreIfNewer(value) => {
                shared
                    .ops
                    .begin_if_newer(key, value.clone(), shared.clock.now());
            }
            other => shared.ops.begin(key, other.clone()),
        }
        let (f1, f2) = (
            Finish::new(shared, Layer::L1, key),
            Finish::new(shared, Layer::L2, key),
        );
        let cx = shared.context();
        let (s1, k1) = (Arc::clone(shared), key.clone());
        let (s2, k2) = (Arc::clone(shared), key.clone());
        shared
            .write
            .write(
                &cx,
                move || async move { s1.apply_tier(Layer::L1, &k1, f1).await },
                move || async move { s2.apply_tier(Layer::L2, &k2, f2).await },
            )
            .await
            .map(|_| ())
    }

    /// Deletes or clears L2, then L1, and combines the results.
    async fn remove_both(&self, op: Op, key: Option<&CacheKey>) -> TierWrite {
        let shared = &self.shared;
        let (r1, r2) = match key {
            Some(key) => {
                shared.ops.begin(key, Effect::Remove);
                let (f1, f2) = (
                    Finish::new(shared, Layer::L1, key),
                    Finish::new(shared, Layer::L2, key),
                );
                let r2 = shared.apply_tier(Layer::L2, key, f2).await;
                let r1 = shared.apply_tier(Layer::L1, key, f1).await;
                (r1, r2)
            }
            None => {
                let mut clearing = shared.ops.begin_clear();
                // From now on, what the clear removes is not served from any tier; if it fails
                // on a tier (or is cancelled), that lasts until a clear succeeds on both.
                let started = shared.clock.now().as_unix_millis().max(1);
                let before = shared.cleared_before.fetch_max(started, Ordering::Relaxed);
                let r2 = shared.tier_write(Layer::L2, Write::Clear).await;
                let r1 = shared.tier_write(Layer::L1, Write::Clear).await;
                // Writes that ran when the clear began remove their key again when they end.
                clearing.settled().await;
                if r1.is_ok() && r2.is_ok() {
                    // Every value created before this clear's start is gone from both tiers;
                    // a mark of an earlier failed clear is settled too.
                    let _ = shared.cleared_before.compare_exchange(
                        started.max(before),
                        0,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                (r1, r2)
            }
        };
        let scope = shared.scope();
        match (r1, r2) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(error), Ok(())) => {
                tracing::warn!(tier = %scope.l1.name(), error = &error as &dyn std::error::Error, %op, "removal failed on one tier");
                Err(error)
            }
            (Ok(()), Err(error)) => {
                tracing::warn!(tier = %scope.l2.name(), error = &error as &dyn std::error::Error, %op, "removal failed on one tier");
                Err(error)
            }
            (Err(l1), Err(l2)) => {
                tracing::error!(
                    l1 = %scope.l1.name(),
                    l1_error = &l1 as &dyn std::error::Error,
                    l2 = %scope.l2.name(),
                    l2_error = &l2 as &dyn std::error::Error,
                    %op,
                    "removal failed on both tiers"
                );
                Err(CompositionError::BothLayersFailed { l1, l2 }.into())
            }
        }
    }
}

impl<L1, L2, R, W> Backend for Composition<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    fn label(&self) -> &str {
        &self.shared.label
    }

    #[inline]
    fn probe(&self, key: &CacheKey) -> Probe {
        match self.shared.probe_l1(key) {
            L1Probe::FreshHit(value) => Probe::Fresh(value),
            // A miss or a stale value in L1 says nothing of L2.
            L1Probe::Known(_) | L1Probe::Unknown => Probe::Unknown,
        }
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        match self.shared.probe_l1(key) {
            L1Probe::FreshHit(value) => TierFuture::ready(Ok(Some(value))),
            L1Probe::Known(known) => TierFuture::pending(self.read_through(key, Some(known))),
            L1Probe::Unknown => TierFuture::pending(self.read_through(key, None)),
        }
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(self.write_both(key, Effect::Store(value)))
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        TierFuture::pending(self.write_both(key, Effect::StoreIfNewer(value)))
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        TierFuture::pending(self.remove_both(Op::Delete, Some(key)))
    }

    fn clear(&self) -> WriteFuture<'_> {
        TierFuture::pending(self.remove_both(Op::Clear, None))
    }

    fn bind(&self, path: &TierPath) {
        self.shared
            .scope
            .bind(path, |path| self.shared.make_scope(path));
    }
}

impl<L1, L2, R, W> fmt::Debug for Composition<L1, L2, R, W>
where
    L1: fmt::Debug,
    L2: fmt::Debug,
    R: fmt::Debug,
    W: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("Composition")
            .field("label", &s.label)
            .field("l1", &s.l1)
            .field("l2", &s.l2)
            .field("read", &s.read)
            .field("write", &s.write)
            .field("refill", &s.refill)
            .field("timeouts", &s.timeouts)
            .field("clear_timeout", &s.clear_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Composition`]. Start with [`Composition::builder`].
#[must_use]
pub struct CompositionBuilder<L1, L2, R = AnyReadPolicy, W = AnyWritePolicy> {
    l1: L1,
    l2: L2,
    read: R,
    write: W,
    refill: RefillPolicy,
    offload: Option<Arc<dyn Offload>>,
    clock: Clock,
    label: Option<String>,
    timeouts: [Option<Duration>; 2],
    clear_timeout: Duration,
}

/// The default bound on a `clear` ([`CompositionBuilder::clear_timeout`]).
pub const DEFAULT_CLEAR_TIMEOUT: Duration = Duration::from_secs(60);

impl<L1, L2, R, W> CompositionBuilder<L1, L2, R, W>
where
    L1: Backend,
    L2: Backend,
    R: ReadPolicy,
    W: WritePolicy,
{
    /// The read policy. Default: [`AnyReadPolicy::Sequential`].
    pub fn read_policy<R2: ReadPolicy>(self, read: R2) -> CompositionBuilder<L1, L2, R2, W> {
        CompositionBuilder {
            l1: self.l1,
            l2: self.l2,
            read,
            write: self.write,
            refill: self.refill,
            offload: self.offload,
            clock: self.clock,
            label: self.label,
            timeouts: self.timeouts,
            clear_timeout: self.clear_timeout,
        }
    }

    /// The write policy. Default: [`AnyWritePolicy::OptimisticParallel`].
    pub fn write_policy<W2: WritePolicy>(self, write: W2) -> CompositionBuilder<L1, L2, R, W2> {
        CompositionBuilder {
            l1: self.l1,
            l2: self.l2,
            read: self.read,
            write,
            refill: self.refill,
            offload: self.offload,
            clock: self.clock,
            label: self.label,
            timeouts: self.timeouts,
            clear_timeout: self.clear_timeout,
        }
    }

    /// The refill policy. Default: [`RefillPolicy::Always`].
    pub fn refill_policy(mut self, refill: RefillPolicy) -> Self {
        self.refill = refill;
        self
    }

    /// Where background work (race losers) runs. Default: a fresh, unbounded
    /// [`TokioOffload`]. Pass your own (and keep a clone) to bound it and to drain it at
    /// shutdown.
    pub fn offload(mut self, offload: impl Offload) -> Self {
        self.offload = Some(Arc::new(offload));
        self
    }

    /// The clock that judges freshness and expiry. Default: [`Clock::System`]. Give every tier
    /// of a stack the same clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The label of the composition in logs and in an outer composition's metrics. Default:
    /// the tiers' labels joined by `+` (`moka+redis`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// A bound on every call to L1 (the synchronous probe excepted); a call that takes longer
    /// fails with [`BackendError::Timeout`]. Default: none (the tier's own bounds apply).
    pub fn l1_timeout(mut self, limit: Duration) -> Self {
        self.timeouts[0] = Some(limit);
        self
    }

    /// A bound on every call to L2; a call that takes longer fails with
    /// [`BackendError::Timeout`]. Default: none (the tier's own bounds apply).
    pub fn l2_timeout(mut self, limit: Duration) -> Self {
        self.timeouts[1] = Some(limit);
        self
    }

    /// A bound on each tier's part of a `clear` (it walks the whole tier: a Redis `SCAN`, an
    /// S3 listing), in place of [`l1_timeout`](Self::l1_timeout) and
    /// [`l2_timeout`](Self::l2_timeout), which are meant for one key. A clear that takes longer
    /// fails with [`BackendError::Timeout`]. Default: [`DEFAULT_CLEAR_TIMEOUT`] (60 s).
    ///
    /// A clear that fails on either tier (or is cancelled) does not leave a tier serving what
    /// the other cleared: until a clear succeeds on both tiers, values created before the
    /// failed clear began are treated as absent, whichever tier holds them.
    pub fn clear_timeout(mut self, limit: Duration) -> Self {
        self.clear_timeout = limit;
        self
    }

    /// The composition.
    pub fn build(self) -> Composition<L1, L2, R, W> {
        let label = self
            .label
            .unwrap_or_else(|| format!("{}+{}", self.l1.label(), self.l2.label()));
        let offload = self
            .offload
            .unwrap_or_else(|| Arc::new(TokioOffload::unbounded()));
        Composition {
            shared: Arc::new(Shared {
                l1: self.l1,
                l2: self.l2,
                read: self.read,
                write: self.write,
                refill: self.refill,
                offload,
                clock: self.clock,
                label: Arc::from(label),
                timeouts: self.timeouts,
                clear_timeout: self.clear_timeout,
                cleared_before: AtomicU64::new(0),
                scope: Bindings::default(),
                ops: KeyOps::new(),
            }),
        }
    }
}

impl<L1, L2, R, W> fmt::Debug for CompositionBuilder<L1, L2, R, W>
where
    L1: fmt::Debug,
    L2: fmt::Debug,
    R: fmt::Debug,
    W: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositionBuilder")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("read", &self.read)
            .field("write", &self.write)
            .field("refill", &self.refill)
            .finish_non_exhaustive()
    }
}
