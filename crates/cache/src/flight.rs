//! Flights: the one task per key that reads the remote tiers, runs the loader and stores the
//! result, while any number of callers wait on it.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use tierkit_core::{BackendError, BoxFuture, CacheKey, CacheValue, Op, Timestamp};
use tokio::sync::{SemaphorePermit, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cache::Shared;
use crate::error::{CacheError, LoaderError, TimeoutKind};
use crate::fetched::{Fetched, FetchedKind};
use crate::frame::decode_frame_entry;
use crate::hit::{FailSafeCause, HitFreshness, Source, StaleCause};
use crate::local::EntryMeta;
use crate::options::{AbandonPolicy, Resolved, WriteMode};
use crate::table::Effect;
use crate::throttle::Throttle;

/// What a loader gets: the key, a cancellation token, the flight's id, and the stale value
/// the cache still holds for the key, if any.
///
/// The token fires when the flight gives the loader up: at its background cap, when its
/// callers all went away under [`AbandonPolicy::CancelWhenUnobserved`], or when a `set`
/// superseded it under that policy. The loader's future is dropped at the same time; the token
/// is for work it started elsewhere (a spawned task, a remote query to cancel).
pub struct FetchContext<V> {
    key: CacheKey,
    cancel: CancellationToken,
    flight_id: u64,
    stale: Option<Candidate<V>>,
}

impl<V> FetchContext<V> {
    /// The key being loaded.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Fires when the flight gives the loader up.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The flight's id (as in [`Hit::flight_id`](crate::Hit::flight_id) and the
    /// `tierkit.flight` span).
    pub fn flight_id(&self) -> u64 {
        self.flight_id
    }

    /// The newest value the tiers still hold for the key past its freshness (and before its
    /// `expires_at`), with its timestamps: for a conditional refresh, answer
    /// [`Fetched::not_modified`] when the origin says it has not changed since `created_at`.
    pub fn stale(&self) -> Option<(&Arc<V>, EntryMeta)> {
        self.stale
            .as_ref()
            .map(|candidate| (&candidate.value, candidate.meta))
    }

    /// A failure without an error value, to return from the loader (`Ok(ctx.fail(..))`):
    /// exactly like returning `Err`, fail-safe included.
    pub fn fail(&self, reason: impl fmt::Display) -> Fetched<V> {
        Fetched::fail(reason)
    }
}

impl<V> Clone for FetchContext<V> {
    fn clone(&self) -> Self {
        FetchContext {
            key: self.key.clone(),
            cancel: self.cancel.clone(),
            flight_id: self.flight_id,
            stale: self.stale.clone(),
        }
    }
}

impl<V> fmt::Debug for FetchContext<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchContext")
            .field("key", &self.key)
            .field("flight_id", &self.flight_id)
            .field("stale", &self.stale.as_ref().map(|c| c.meta))
            .finish_non_exhaustive()
    }
}

/// A loader, boxed once it is handed to a flight.
pub(crate) type BoxLoader<V> =
    Box<dyn FnOnce(FetchContext<V>) -> BoxFuture<'static, Result<Fetched<V>, LoaderError>> + Send>;

/// Boxes a caller's loader (on a miss only: an L1 hit never builds it).
pub(crate) fn box_loader<V, F, Fut, R, E>(loader: F) -> BoxLoader<V>
where
    V: Send + Sync + 'static,
    F: FnOnce(FetchContext<V>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Into<Fetched<V>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
{
    Box::new(move |cx| {
        Box::pin(async move { loader(cx).await.map(Into::into).map_err(LoaderError::new) })
    })
}

/// A value past its freshness and before its `expires_at`: what fail-safe can serve.
pub(crate) struct Candidate<V> {
    pub(crate) value: Arc<V>,
    pub(crate) meta: EntryMeta,
    pub(crate) source: Source,
}

impl<V> Clone for Candidate<V> {
    fn clone(&self) -> Self {
        Candidate {
            value: Arc::clone(&self.value),
            meta: self.meta,
            source: self.source,
        }
    }
}

impl<V> Candidate<V> {
    /// The newest of two candidates (by `created_at`; `a` on a tie).
    pub(crate) fn newest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) if b.meta.created_at() > a.meta.created_at() => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }

    /// This candidate served stale, for `freshness`.
    pub(crate) fn serve(
        self,
        freshness: HitFreshness,
        suppressed: Option<CacheError>,
    ) -> Published<V> {
        Published {
            value: self.value,
            meta: self.meta,
            source: self.source,
            freshness,
            suppressed: suppressed.map(Arc::new),
        }
    }
}

/// A value a flight published.
pub(crate) struct Published<V> {
    pub(crate) value: Arc<V>,
    pub(crate) meta: EntryMeta,
    pub(crate) source: Source,
    pub(crate) freshness: HitFreshness,
    /// The error fail-safe hid, shared by every waiter (and kept out of line: it is rare, and
    /// a `Hit` stays small).
    pub(crate) suppressed: Option<Arc<CacheError>>,
}

impl<V> Published<V> {
    /// A fresh value from `source`.
    pub(crate) fn fresh(value: Arc<V>, meta: EntryMeta, source: Source) -> Self {
        Published {
            value,
            meta,
            source,
            freshness: HitFreshness::Fresh,
            suppressed: None,
        }
    }
}

impl<V> Clone for Published<V> {
    fn clone(&self) -> Self {
        Published {
            value: Arc::clone(&self.value),
            meta: self.meta,
            source: self.source,
            freshness: self.freshness,
            suppressed: self.suppressed.clone(),
        }
    }
}

/// What a flight ends with: a value, nothing found, or an error, shared by every waiter.
pub(crate) type FlightResult<V> = Result<Option<Published<V>>, CacheError>;

/// A running flight, shared by its task and its waiters.
pub(crate) struct Flight<V> {
    pub(crate) id: u64,
    pub(crate) options: Resolved,
    /// The loader the flight will run if every tier misses: the first one a caller handed
    /// over. Handed over and taken under the key's table lock (see [`load`]).
    loader: Mutex<Option<BoxLoader<V>>>,
    result: watch::Sender<Option<FlightResult<V>>>,
    pub(crate) cancel: CancellationToken,
    abort: OnceLock<AbortHandle>,
    /// The newest stale value seen so far (the starter's L1 entry, then the tiers'), for
    /// fail-safe and the loader's context.
    candidate: Mutex<Option<Candidate<V>>>,
    /// Bumped whenever `candidate` changes, for waiters past their soft timeout.
    pub(crate) candidates: watch::Sender<u64>,
    /// For a background refresh: the `created_at` of the L1 entry it refreshes. A tier entry
    /// is adopted only when newer.
    pub(crate) refreshing: Option<Timestamp>,
}

impl<V> fmt::Debug for Flight<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flight")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> Flight<V> {
    pub(crate) fn new(id: u64, options: Resolved, loader: Option<BoxLoader<V>>) -> Self {
        Flight {
            id,
            options,
            loader: Mutex::new(loader),
            result: watch::Sender::new(None),
            cancel: CancellationToken::new(),
            abort: OnceLock::new(),
            candidate: Mutex::new(None),
            candidates: watch::Sender::new(0),
            refreshing: None,
        }
    }

    /// A background refresh of an L1 entry written at `baseline`.
    pub(crate) fn refresh(
        id: u64,
        options: Resolved,
        loader: Option<BoxLoader<V>>,
        baseline: Timestamp,
    ) -> Self {
        Flight {
            refreshing: Some(baseline),
            ..Self::new(id, options, loader)
        }
    }

    /// Keeps `candidate` if it is newer than the one the flight has.
    pub(crate) fn offer_candidate(&self, candidate: Option<Candidate<V>>) {
        if candidate.is_none() {
            return;
        }
        let mut slot = self
            .candidate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *slot = Candidate::newest(slot.take(), candidate);
        drop(slot);
        self.candidates.send_modify(|seen| *seen += 1);
    }

    /// The newest stale value seen so far.
    pub(crate) fn candidate(&self) -> Option<Candidate<V>> {
        self.candidate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes `result` unless a result was already published; whether it was.
    pub(crate) fn publish(&self, result: FlightResult<V>) -> bool {
        self.result.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(result);
                true
            } else {
                false
            }
        })
    }

    /// Hands `loader` to the flight if it has none yet. Call under the key's table lock.
    pub(crate) fn offer_loader(&self, loader: Option<BoxLoader<V>>) {
        let mut slot = self.loader.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = loader;
        }
    }

    /// Whether no caller handed the flight a loader yet. Call under the key's table lock.
    pub(crate) fn lacks_loader(&self) -> bool {
        self.loader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    fn take_loader(&self) -> Option<BoxLoader<V>> {
        self.loader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// A receiver of the result.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<FlightResult<V>>> {
        self.result.subscribe()
    }

    /// Stops the flight: fires the loader's token and aborts its task.
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
        if let Some(abort) = self.abort.get() {
            abort.abort();
        }
    }

    pub(crate) fn set_abort_handle(&self, handle: AbortHandle) {
        let _ = self.abort.set(handle);
    }
}

/// What a waiting caller can fall back on: its own stale L1 entry, the flight's newest stale
/// value, its own fallback value.
pub(crate) struct Fallbacks<V> {
    pub(crate) own: Option<Candidate<V>>,
    pub(crate) value: Option<Arc<V>>,
}

impl<V> Fallbacks<V> {
    /// The newest stale value still before its `expires_at`, else the caller's fallback value.
    fn best(&self, flight: &Flight<V>, now: Timestamp) -> Option<Candidate<V>>
    where
        V: Send + Sync + 'static,
    {
        Candidate::newest(self.own.clone(), flight.candidate())
            .filter(|candidate| !candidate.meta.is_expired(now))
            .or_else(|| {
                self.value.as_ref().map(|value| Candidate {
                    value: Arc::clone(value),
                    meta: EntryMeta::new(now, now, now),
                    source: Source::Fallback,
                })
            })
    }
}

/// Waits for `flight`'s result as a caller that arrived at `arrival` with `options`: until its
/// soft timeout when it can fall back on a stale value (fail-safe), then until its hard
/// timeout; a fail-safe caller falls back on a stale value when the flight fails.
pub(crate) async fn wait<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    flight: &Flight<V>,
    arrival: tokio::time::Instant,
    options: &Resolved,
    fallbacks: &Fallbacks<V>,
) -> FlightResult<V> {
    let mut receiver = flight.subscribe();
    let mut candidates = flight.candidates.subscribe();
    if let Some(soft) = options.soft_timeout.filter(|_| options.fail_safe)
        && soft < options.hard_timeout
    {
        let serve_stale = |stale: Candidate<V>| {
            shared.stats.record_soft_timeout();
            Ok(Some(
                stale.serve(HitFreshness::Stale(StaleCause::SoftTimeout), None),
            ))
        };
        tokio::select! {
            biased;
            result = receiver.wait_for(Option::is_some) => {
                return settle(shared, flight, options, fallbacks, result);
            }
            () = sleep_until(deadline(arrival, soft)) => {
                if let Some(stale) = fallbacks.best(flight, shared.clock.now()) {
                    return serve_stale(stale);
                }
            }
        }
        // Past the soft deadline with nothing stale yet: the first stale value the flight
        // finds is served as soon as it is found, unless the result comes first.
        let deadline = sleep_until(deadline(arrival, options.hard_timeout));
        tokio::pin!(deadline);
        let mut watching = true;
        loop {
            tokio::select! {
                result = receiver.wait_for(Option::is_some) => {
                    return settle(shared, flight, options, fallbacks, result);
                }
                changed = candidates.changed(), if watching => {
                    watching = changed.is_ok();
                    if let Some(stale) = fallbacks.best(flight, shared.clock.now()) {
                        return serve_stale(stale);
                    }
                }
                () = &mut deadline => break,
            }
        }
    }
    let result = tokio::select! {
        biased;
        result = receiver.wait_for(Option::is_some) => Some(result),
        () = sleep_until(deadline(arrival, options.hard_timeout)) => None,
    };
    match result {
        Some(result) => settle(shared, flight, options, fallbacks, result),
        None => {
            let error = CacheError::Timeout {
                kind: TimeoutKind::Hard,
                after: options.hard_timeout,
            };
            match fallbacks
                .best(flight, shared.clock.now())
                .filter(|_| options.fail_safe)
            {
                Some(stale) => Ok(Some(
                    stale.serve(HitFreshness::Stale(StaleCause::HardTimeout), Some(error)),
                )),
                None => Err(error),
            }
        }
    }
}

/// The longest wait that has a deadline: a longer one (up to `Duration::MAX`) never ends, as
/// it would not in practice, and `arrival + after` never overflows the clock.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The deadline `after` a caller's `arrival`, or none for a wait of [`FOREVER`] or more.
fn deadline(arrival: tokio::time::Instant, after: Duration) -> Option<tokio::time::Instant> {
    if after >= FOREVER {
        return None;
    }
    arrival.checked_add(after)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The caller's answer from the flight's published result.
fn settle<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    flight: &Flight<V>,
    options: &Resolved,
    fallbacks: &Fallbacks<V>,
    result: Result<watch::Ref<'_, Option<FlightResult<V>>>, watch::error::RecvError>,
) -> FlightResult<V> {
    let result = match result {
        Ok(result) => match &*result {
            Some(result) => result.clone(),
            None => Err(CacheError::FlightAborted),
        },
        // The flight's task ended without publishing (only possible if its guard could not run).
        Err(_closed) => Err(CacheError::FlightAborted),
    };
    match result {
        Err(error) if options.fail_safe => match (
            fail_safe_cause(&error),
            fallbacks.best(flight, shared.clock.now()),
        ) {
            (Some(cause), Some(stale)) => Ok(Some(stale.serve(
                HitFreshness::Stale(StaleCause::FailSafe {
                    cause,
                    throttled: false,
                }),
                Some(error),
            ))),
            _ => Err(error),
        },
        result => result,
    }
}

/// The fail-safe cause of a flight's error, if fail-safe may hide it.
pub(crate) fn fail_safe_cause(error: &CacheError) -> Option<FailSafeCause> {
    match error {
        CacheError::Loader(_) => Some(FailSafeCause::LoaderError),
        CacheError::LoaderPanicked { .. } => Some(FailSafeCause::LoaderPanic),
        CacheError::Timeout { .. } => Some(FailSafeCause::Timeout),
        _ => None,
    }
}

/// A caller's place on a flight: leaving (returning, timing out or being dropped) decrements
/// the flight's waiter count and, under [`AbandonPolicy::CancelWhenUnobserved`], stops the
/// flight when nobody is left.
pub(crate) struct Waiter<'a, V: Send + Sync + 'static> {
    pub(crate) shared: &'a Shared<V>,
    pub(crate) key: &'a CacheKey,
    pub(crate) flight: Arc<Flight<V>>,
}

impl<V: Send + Sync + 'static> Drop for Waiter<'_, V> {
    fn drop(&mut self) {
        let mut locked = self.shared.table.lock(self.key);
        let Some(state) = locked.existing() else {
            return;
        };
        let Some(slot) = state.slot_of(&self.flight) else {
            return;
        };
        slot.waiters = slot.waiters.saturating_sub(1);
        if slot.waiters == 0
            && self.flight.refreshing.is_none()
            && self.flight.options.abandon == AbandonPolicy::CancelWhenUnobserved
        {
            // Nobody is left: unregister first, so a caller arriving now starts a new flight.
            state.flight = None;
            drop(locked);
            self.shared.stats.record_abandoned();
            tracing::debug!(
                flight_id = self.flight.id,
                "flight abandoned by its callers"
            );
            self.flight.cancel();
            self.flight.publish(Err(CacheError::FlightAborted));
        }
    }
}

/// How a flight's work ended, before it is stored and published.
enum Ending<V> {
    /// A value from a remote tier or the loader: stored in L1 when `store_local`, with the
    /// remote writes to queue.
    Found {
        published: Published<V>,
        store_local: bool,
        writes: [Option<Effect>; 2],
    },
    /// The key has no value: a tombstone to store (`tombstone`, negative caching), or none.
    Absent {
        tombstone: Option<EntryMeta>,
        writes: [Option<Effect>; 2],
    },
    /// No tier has the key (a refresh: no newer entry) and no loader was handed to the flight.
    /// `current`, for a refresh: the value it refreshes, which a tier still holds fresh (what
    /// the callers that joined the refresh get).
    NotFound { current: Option<Published<V>> },
    /// The key is inside a fail-safe throttle: its stale value, served without the loader
    /// until `until` (stored in L1 again, as throttled).
    Throttled {
        stale: Candidate<V>,
        cause: FailSafeCause,
        until: Timestamp,
    },
    /// Shared with every waiter (or hidden by fail-safe when it has a `cause`); nothing is
    /// stored.
    Failed {
        error: CacheError,
        cause: Option<FailSafeCause>,
    },
}

impl<V> Ending<V> {
    fn failed(error: CacheError) -> Self {
        Ending::Failed {
            cause: fail_safe_cause(&error),
            error,
        }
    }
}

/// The task of a flight: runs it to its end. Spawned detached from every caller.
///
/// The guard that frees the key if the task never finishes is built here, before the future
/// exists, and moved into it: dropping the task, even before its first poll (a runtime shut
/// down with the task still queued), drops the guard.
pub(crate) fn run<V: Send + Sync + 'static>(
    shared: Arc<Shared<V>>,
    key: CacheKey,
    flight: Arc<Flight<V>>,
    caller: &tracing::Span,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::debug_span!(
        "tierkit.flight",
        cache = %shared.label,
        flight_id = flight.id,
        source = tracing::field::Empty,
    );
    span.follows_from(caller);
    let guard = Unfinished {
        shared,
        key,
        flight,
        armed: true,
    };
    async move {
        let mut guard = guard;
        let (shared, key, flight) = (&guard.shared, &guard.key, &guard.flight);
        let limit = flight.options.flight_limit();
        let ending = match tokio::time::timeout(limit, work(shared, key, flight)).await {
            Ok(ending) => ending,
            Err(_elapsed) => {
                flight.cancel.cancel();
                shared.stats.record_capped();
                let kind = if flight.options.background_completion {
                    TimeoutKind::BackgroundCap
                } else {
                    TimeoutKind::Hard
                };
                tracing::warn!(
                    cache = %shared.label,
                    flight_id = flight.id,
                    after = ?limit,
                    "a flight ran out of time: its loader was cancelled and nothing was stored"
                );
                Ending::failed(CacheError::Timeout { kind, after: limit })
            }
        };
        finish(shared, key, flight, ending).await;
        guard.armed = false;
    }
    .instrument(span)
}

/// Publishes [`CacheError::FlightAborted`] and frees the key when a flight's task ends without
/// finishing (aborted, dropped before it ran, or a panic outside the loader).
struct Unfinished<V: Send + Sync + 'static> {
    shared: Arc<Shared<V>>,
    key: CacheKey,
    flight: Arc<Flight<V>>,
    armed: bool,
}

impl<V: Send + Sync + 'static> Drop for Unfinished<V> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut locked = self.shared.table.lock(&self.key);
            if let Some(state) = locked.existing() {
                state.remove_flight(&self.flight);
            }
        }
        self.flight.cancel.cancel();
        if self.flight.publish(Err(CacheError::FlightAborted)) {
            self.shared.stats.record_aborted();
        }
    }
}

/// The flight's work: the remote tiers in order, then the loader.
async fn work<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    key: &CacheKey,
    flight: &Arc<Flight<V>>,
) -> Ending<V> {
    let options = &flight.options;
    // For a refresh: the first tier that holds the very entry it refreshes, still fresh.
    let mut unchanged = None;
    for tier in 0..2 {
        let skip = if tier == 0 {
            options.skip_l2_read
        } else {
            options.skip_l3_read
        };
        let Some(remote) = shared.remote[tier].as_ref() else {
            continue;
        };
        if skip {
            continue;
        }
        // Read after the key's running writes on this tier: a `set` or `remove` that is still
        // writing it would otherwise let the flight bring the value it replaces back into L1.
        let drained = {
            let mut locked = shared.table.lock(key);
            locked.existing().and_then(|state| state.lane_drained(tier))
        };
        let read = tokio::time::timeout(options.tier_timeout, async {
            if let Some(drained) = drained {
                let _ = drained.await;
            }
            remote.backend.get(key).await
        })
        .await;
        let found = match read {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                shared.stats.record_tier_error(tier);
                tracing::debug!(
                    tier = remote.source.as_str(),
                    error = &error as &dyn std::error::Error,
                    "a remote tier read failed; counted as a miss"
                );
                if options.strict_tiers {
                    return Ending::Failed {
                        error: CacheError::Tier {
                            tier: remote.source,
                            source: error,
                        },
                        cause: None,
                    };
                }
                continue;
            }
            Err(_elapsed) => {
                shared.stats.record_tier_timeout(tier);
                tracing::debug!(tier = remote.source.as_str(), after = ?options.tier_timeout, "a remote tier read timed out; counted as a miss");
                if options.strict_tiers {
                    return Ending::Failed {
                        error: CacheError::Tier {
                            tier: remote.source,
                            source: BackendError::timeout(
                                remote.backend.label().to_owned(),
                                Op::Get,
                                options.tier_timeout,
                            ),
                        },
                        cause: None,
                    };
                }
                continue;
            }
        };
        let now = shared.clock.now();
        let Some(stored) = found.filter(|stored| !stored.is_expired(now)) else {
            continue;
        };
        // A refresh adopts only an entry newer than the one it refreshes (another node's
        // write); the same entry again means the loader must run, and, without a loader, is
        // what the callers that joined the refresh get.
        if let Some(baseline) = flight.refreshing
            && stored.created_at() <= baseline
        {
            if stored.created_at() == baseline && stored.is_fresh(now) {
                unchanged = unchanged.or(Some(remote.source));
            }
            continue;
        }
        let fresh = stored.is_fresh(now);
        // A stale entry is decoded only when it can be served (fail-safe, stale reads).
        if !(fresh || options.fail_safe || options.allow_stale) {
            continue;
        }
        // The readers' bound follows the payload cap of this read.
        let compression = shared
            .compression
            .max_decoded(shared.compression.decoded_bound(options.max_payload));
        match decode_frame_entry(key, &*shared.codec, &compression, stored.payload()) {
            Ok(value) => {
                shared.stats.record_decode(tier);
                let meta = EntryMeta::of(&stored);
                if !fresh {
                    if let Some(value) = value {
                        flight.offer_candidate(Some(Candidate {
                            value: Arc::new(value),
                            meta,
                            source: remote.source,
                        }));
                    }
                    continue;
                }
                if flight.refreshing.is_some() {
                    shared.stats.record_refresh_adopted();
                }
                let mut writes = [None, None];
                // An L3 hit refills L2 with the same bytes and timestamps (never a longer life),
                // unless L2 holds a newer value by then (another node's write).
                if tier == 1 && shared.remote[0].is_some() && !options.skip_l2_write {
                    writes[0] = Some(Effect::Refill(stored.clone()));
                }
                return match value {
                    Some(value) => Ending::Found {
                        published: Published::fresh(Arc::new(value), meta, remote.source),
                        store_local: true,
                        writes,
                    },
                    None => Ending::Absent {
                        tombstone: Some(meta),
                        writes,
                    },
                };
            }
            Err(error) => {
                shared.stats.record_decode_error(tier, error.reason());
                tracing::warn!(
                    cache = %shared.label,
                    tier = remote.source.as_str(),
                    reason = error.reason().as_str(),
                    %error,
                    "an entry could not be decoded; counted as a miss"
                );
                if options.strict_decode {
                    return Ending::Failed {
                        error: CacheError::Decode {
                            tier: remote.source,
                            source: error,
                        },
                        cause: None,
                    };
                }
            }
        }
    }
    load(shared, key, flight, unchanged).await
}

/// Runs the loader handed to the flight, if any, and turns its answer into an ending.
/// `unchanged`, for a refresh: the tier that holds the entry it refreshes, still fresh.
async fn load<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    key: &CacheKey,
    flight: &Arc<Flight<V>>,
    unchanged: Option<Source>,
) -> Ending<V> {
    // Decide under the table lock: a caller that joins later hands its loader to a flight
    // still open, and a flight without a loader closes in the same critical section, so no
    // caller with a loader can join a flight that already gave up. A closed flight stays
    // registered until it finishes: a `set` or `remove` still supersedes it.
    let loader = {
        let mut locked = shared.table.lock(key);
        let loader = flight.take_loader();
        if loader.is_none()
            && let Some(slot) = locked.existing().and_then(|state| state.slot_of(flight))
        {
            slot.open = false;
        }
        loader
    };
    let options = &flight.options;
    let Some(loader) = loader else {
        // A refresh without a loader that found its own entry still fresh in a tier: that
        // entry, the flight's first candidate (the L1 entry it started from).
        if let (Some(source), Some(baseline)) = (unchanged, flight.refreshing)
            && let Some(current) = flight
                .candidate()
                .filter(|candidate| candidate.meta.created_at() == baseline)
        {
            return Ending::NotFound {
                current: Some(Published::fresh(current.value, current.meta, source)),
            };
        }
        // A read without a loader: a stale value if the read allows it, else nothing.
        return match flight.candidate().filter(|_| options.allow_stale) {
            Some(stale) => Ending::Found {
                published: stale.serve(HitFreshness::Stale(StaleCause::Allowed), None),
                store_local: false,
                writes: [None, None],
            },
            None => Ending::NotFound { current: None },
        };
    };
    // A key inside a fail-safe throttle is served its stale value, whatever L1 evicted.
    if options.fail_safe
        && flight.refreshing.is_none()
        && let Some(stale) = flight.candidate()
    {
        let now = shared.clock.now();
        if !stale.meta.is_expired(now)
            && let Some((cause, until)) = shared.throttles.get(key, stale.meta.created_at(), now)
        {
            shared.stats.record_throttled();
            return Ending::Throttled {
                until: until.min(stale.meta.expires_at()),
                stale,
                cause,
            };
        }
    }
    // The cache-wide bound on loader calls: the slot is held until the loader's answer.
    let Some(_slot) = loader_slot(shared, options).await else {
        return Ending::failed(CacheError::Timeout {
            kind: TimeoutKind::LoaderSlot,
            after: options.hard_timeout,
        });
    };
    shared.stats.record_loader_call();
    let stale = flight.candidate();
    let context = FetchContext {
        key: key.clone(),
        cancel: flight.cancel.clone(),
        flight_id: flight.id,
        stale: stale.clone(),
    };
    let loaded = match std::panic::catch_unwind(AssertUnwindSafe(move || loader(context))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    let fetched = match loaded {
        Ok(Ok(fetched)) => fetched,
        Ok(Err(error)) => {
            shared.stats.record_loader_error();
            tracing::debug!(
                flight_id = flight.id,
                error = &error as &dyn std::error::Error,
                "the loader failed"
            );
            return Ending::failed(CacheError::Loader(error));
        }
        Err(panic) => {
            shared.stats.record_loader_panic();
            let message = panic_message(panic.as_ref());
            tracing::error!(flight_id = flight.id, panic = %message, "the loader panicked");
            return Ending::failed(CacheError::LoaderPanicked {
                message: message.into(),
            });
        }
    };
    let mut options = *options;
    options.skip_l2_write |= fetched.skip_l2_write;
    options.skip_l3_write |= fetched.skip_l3_write;
    let ttl = fetched.ttl.unwrap_or(options.ttl);
    let now = shared.clock.now();
    let (value, store) = match fetched.kind {
        FetchedKind::Value(value) => (Arc::new(value), !ttl.is_zero()),
        FetchedKind::NoStore(value) => (Arc::new(value), false),
        FetchedKind::NotModified => match stale {
            Some(stale) => (stale.value, !ttl.is_zero()),
            None => {
                shared.stats.record_loader_error();
                return Ending::failed(CacheError::Loader(LoaderError::new(
                    "the loader answered NotModified, but the cache holds no stale value",
                )));
            }
        },
        FetchedKind::Fail(reason) => {
            shared.stats.record_loader_error();
            return Ending::failed(CacheError::Loader(LoaderError::new(reason.to_string())));
        }
        FetchedKind::Absent => {
            if options.negative_ttl.is_zero() {
                return Ending::Absent {
                    tombstone: None,
                    writes: [None, None],
                };
            }
            let expires = now.saturating_add(options.negative_ttl);
            let meta = EntryMeta::new(now, expires, expires);
            return Ending::Absent {
                tombstone: Some(meta),
                writes: shared.remote_absent_writes(key, meta, &options),
            };
        }
    };
    let meta = shared.write_meta(now, ttl, &options);
    let writes = if store {
        shared.remote_writes(key, &value, meta, &options).0
    } else {
        [None, None]
    };
    Ending::Found {
        published: Published::fresh(value, meta, Source::Loader),
        store_local: store,
        writes,
    }
}

/// A slot to call the loader in: at once when one is free, else the first one freed within the
/// hard timeout (counted); `None` when none was.
async fn loader_slot<'a, V: Send + Sync + 'static>(
    shared: &'a Shared<V>,
    options: &Resolved,
) -> Option<SemaphorePermit<'a>> {
    if let Ok(slot) = shared.loader_slots.try_acquire() {
        return Some(slot);
    }
    shared.stats.record_loader_queued();
    tracing::debug!(
        cache = %shared.label,
        "every loader slot is taken; the flight waits for one"
    );
    let acquire = shared.loader_slots.acquire();
    let slot = match deadline(tokio::time::Instant::now(), options.hard_timeout) {
        Some(at) => tokio::time::timeout_at(at, acquire).await.ok(),
        None => Some(acquire.await),
    };
    // The semaphore is never closed: an error cannot happen.
    let slot = slot.and_then(Result::ok);
    if slot.is_none() {
        shared.stats.record_loader_slot_timeout();
        tracing::warn!(
            cache = %shared.label,
            after = ?options.hard_timeout,
            "no loader slot freed within the hard timeout: the loader was not called"
        );
    }
    slot
}

/// Stores (if the flight is still the key's flight) and publishes the ending.
async fn finish<V: Send + Sync + 'static>(
    shared: &Arc<Shared<V>>,
    key: &CacheKey,
    flight: &Arc<Flight<V>>,
    ending: Ending<V>,
) {
    let options = &flight.options;
    // `back_off`: `local` is a refresh back-off of the entry the refresh started from.
    // `l1_skipped`: the `created_at` of a result stored in every tier but L1, whose older
    // value is removed from L1 instead.
    let mut l1_skipped = None;
    let (local, writes, result, back_off) = match ending {
        Ending::Found {
            published,
            store_local,
            writes,
        } => {
            let local = if !store_local {
                None
            } else if options.skip_l1_write {
                l1_skipped = Some(published.meta.created_at());
                None
            } else {
                Some(shared.local_entry(
                    Some(Arc::clone(&published.value)),
                    published.meta,
                    options,
                ))
            };
            (local, writes, Ok(Some(published)), false)
        }
        Ending::Absent { tombstone, writes } => {
            let local = match tombstone {
                Some(meta) if options.skip_l1_write => {
                    l1_skipped = Some(meta.created_at());
                    None
                }
                tombstone => tombstone.map(|meta| shared.local_entry(None, meta, options)),
            };
            (local, writes, Ok(None), false)
        }
        Ending::Throttled {
            stale,
            cause,
            until,
        } => {
            let local = shared.throttled_entry(&stale, cause, until);
            let published = stale.serve(
                HitFreshness::Stale(StaleCause::FailSafe {
                    cause,
                    throttled: true,
                }),
                None,
            );
            (Some(local), [None, None], Ok(Some(published)), false)
        }
        Ending::NotFound { current } => (
            backed_off(shared, key, flight),
            [None, None],
            Ok(current),
            true,
        ),
        Ending::Failed { error, .. } if flight.refreshing.is_some() => {
            // A failed refresh keeps the value and backs off; callers that joined it fall
            // back on the value themselves (fail-safe), or get the error.
            shared.stats.record_refresh_failed();
            tracing::debug!(
                flight_id = flight.id,
                error = &error as &dyn std::error::Error,
                "a background refresh failed"
            );
            (
                backed_off(shared, key, flight),
                [None, None],
                Err(error),
                true,
            )
        }
        Ending::Failed { error, cause } => {
            let now = shared.clock.now();
            let stale = flight
                .candidate()
                .filter(|candidate| options.fail_safe && !candidate.meta.is_expired(now));
            match (cause, stale) {
                (Some(cause), Some(stale)) => {
                    // Fail-safe: the stale value, in L1 only, served without the loader until
                    // the throttle ends (never past its own expiry, which never moves).
                    shared.stats.record_fail_safe(cause);
                    tracing::warn!(
                        cache = %shared.label,
                        flight_id = flight.id,
                        cause = cause.as_str(),
                        error = &error as &dyn std::error::Error,
                        "fail-safe: serving a stale value"
                    );
                    let until = shared.throttle_end(&stale, options, now);
                    shared.throttles.record(
                        key,
                        Throttle {
                            until,
                            cause,
                            reserve: stale.meta.created_at(),
                        },
                        now,
                    );
                    let local = shared.throttled_entry(&stale, cause, until);
                    let published = stale.serve(
                        HitFreshness::Stale(StaleCause::FailSafe {
                            cause,
                            throttled: false,
                        }),
                        Some(error),
                    );
                    (Some(local), [None, None], Ok(Some(published)), false)
                }
                _ => (None, [None, None], Err(error), false),
            }
        }
    };
    let mut waits = Vec::new();
    let mut start = [false, false];
    // Whatever the ending, L1 and the remote tiers are written only while the flight is still
    // the key's flight: a `set` or `remove` since (or a flight that took a closed one's place)
    // supersedes it, a refresh's back-off included (`backed_off` read L1 before the lock; a
    // write in between unregistered the flight).
    let has_result =
        local.is_some() && !back_off || l1_skipped.is_some() || writes.iter().any(Option::is_some);
    let stored = {
        let mut locked = shared.table.lock(key);
        let state = locked.state();
        let current = state.remove_flight(flight).is_some();
        if current {
            if let Some(local) = local {
                shared.insert_local_if_newer(key, local);
            }
            if let Some(created_at) = l1_skipped {
                shared.remove_local_if_older(key, created_at);
            }
            let await_writes = options.write_mode == WriteMode::AwaitBeforeReturn;
            for (tier, write) in writes.into_iter().enumerate() {
                if let Some(effect) = write {
                    let notify = if await_writes {
                        let (sender, receiver) = oneshot::channel();
                        waits.push(receiver);
                        Some(sender)
                    } else {
                        None
                    };
                    start[tier] = state.queue_write(tier, effect, notify);
                }
            }
        }
        current
    };
    if !stored && has_result {
        if flight.refreshing.is_some() {
            shared.stats.record_refresh_discarded();
        }
        tracing::debug!(
            flight_id = flight.id,
            "a set or remove superseded the flight: its result is not stored"
        );
    }
    for (tier, start) in start.into_iter().enumerate() {
        if start {
            shared.start_lane(key.clone(), tier);
        }
    }
    for wait in waits {
        // Failures are counted by the lane; waiting only orders the answer after them.
        let _ = wait.await;
    }
    if let Ok(Some(published)) = &result {
        tracing::Span::current().record("source", published.source.as_str());
    }
    flight.publish(result);
}

/// For a refresh that found nothing new: the L1 entry it refreshed, with a refresh back-off
/// (`None` for a foreground flight, or when L1 holds another entry now).
fn backed_off<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    key: &CacheKey,
    flight: &Flight<V>,
) -> Option<crate::local::LocalEntry<V>> {
    let baseline = flight.refreshing?;
    let now = shared.clock.now();
    let current = shared
        .l1
        .get(key, now)
        .filter(|entry| entry.meta().created_at() == baseline && !entry.is_absent())?;
    Some(shared.backed_off(current, &flight.options, now))
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// A stored value from an encoded frame and its timestamps.
pub(crate) fn stored_value(frame: bytes::Bytes, meta: EntryMeta) -> CacheValue {
    // EntryMeta keeps created_at <= stale_at <= expires_at, which is all CacheValue checks.
    CacheValue::new(frame, meta.created_at(), meta.stale_at(), meta.expires_at())
        .unwrap_or_else(|_| unreachable!("EntryMeta keeps its timestamps ordered"))
}
