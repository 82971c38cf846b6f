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
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cache::Shared;
use crate::error::{CacheError, LoaderError, TimeoutKind};
use crate::frame::decode_frame;
use crate::hit::Source;
use crate::local::EntryMeta;
use crate::options::{AbandonPolicy, Resolved, WriteMode};
use crate::table::Effect;

/// What a loader gets: the key, a cancellation token and the flight's id.
///
/// The token fires when the flight gives the loader up: at its background cap, when its
/// callers all went away under [`AbandonPolicy::CancelWhenUnobserved`], or when a `set` or
/// `remove` superseded it under that policy. The loader's future is dropped at the same time;
/// the token is for work it started elsewhere (a spawned task, a remote query to cancel).
#[derive(Clone, Debug)]
pub struct FetchContext {
    key: CacheKey,
    cancel: CancellationToken,
    flight_id: u64,
}

impl FetchContext {
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
}

/// A loader, boxed once it is handed to a flight.
pub(crate) type BoxLoader<V> =
    Box<dyn FnOnce(FetchContext) -> BoxFuture<'static, Result<V, LoaderError>> + Send>;

/// Boxes a caller's loader (on a miss only: an L1 hit never builds it).
pub(crate) fn box_loader<V, F, Fut, E>(loader: F) -> BoxLoader<V>
where
    F: FnOnce(FetchContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
{
    Box::new(move |cx| Box::pin(async move { loader(cx).await.map_err(LoaderError::new) }))
}

/// A value a flight published.
pub(crate) struct Published<V> {
    pub(crate) value: Arc<V>,
    pub(crate) meta: EntryMeta,
    pub(crate) source: Source,
}

impl<V> Clone for Published<V> {
    fn clone(&self) -> Self {
        Published {
            value: Arc::clone(&self.value),
            meta: self.meta,
            source: self.source,
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
        }
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

/// Waits for `flight`'s result, within the caller's `deadline`.
pub(crate) async fn wait<V: Send + Sync + 'static>(
    flight: &Flight<V>,
    deadline: tokio::time::Instant,
    hard_timeout: Duration,
) -> FlightResult<V> {
    let mut receiver = flight.subscribe();
    match tokio::time::timeout_at(deadline, receiver.wait_for(Option::is_some)).await {
        Ok(Ok(result)) => match &*result {
            Some(result) => result.clone(),
            None => Err(CacheError::FlightAborted),
        },
        // The flight's task ended without publishing (only possible if its guard could not run).
        Ok(Err(_closed)) => Err(CacheError::FlightAborted),
        Err(_elapsed) => Err(CacheError::Timeout {
            kind: TimeoutKind::Hard,
            after: hard_timeout,
        }),
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
        if slot.waiters == 0 && self.flight.options.abandon == AbandonPolicy::CancelWhenUnobserved {
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
    /// A value from a remote tier or the loader, with the write-back to queue.
    Found {
        published: Published<V>,
        writes: [Option<Effect>; 2],
    },
    /// No tier has the key and no loader was handed to the flight.
    NotFound,
    /// Shared with every waiter; nothing is stored.
    Failed(CacheError),
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
                Ending::Failed(CacheError::Timeout { kind, after: limit })
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
                tracing::debug!(tier = remote.source.as_str(), %error, "a remote tier read failed; counted as a miss");
                if options.strict_tiers {
                    return Ending::Failed(CacheError::Tier {
                        tier: remote.source,
                        source: error,
                    });
                }
                continue;
            }
            Err(_elapsed) => {
                shared.stats.record_tier_timeout(tier);
                tracing::debug!(tier = remote.source.as_str(), after = ?options.tier_timeout, "a remote tier read timed out; counted as a miss");
                if options.strict_tiers {
                    return Ending::Failed(CacheError::Tier {
                        tier: remote.source,
                        source: BackendError::timeout(
                            remote.backend.label().to_owned(),
                            Op::Get,
                            options.tier_timeout,
                        ),
                    });
                }
                continue;
            }
        };
        let now = shared.clock.now();
        let Some(stored) = found.filter(|stored| stored.is_fresh(now)) else {
            continue;
        };
        match decode_frame(key, &*shared.codec, &shared.compression, stored.payload()) {
            Ok(value) => {
                shared.stats.record_decode(tier);
                let mut writes = [None, None];
                // An L3 hit refills L2 with the same bytes and timestamps (never a longer life).
                if tier == 1 && shared.remote[0].is_some() && !options.skip_l2_write {
                    writes[0] = Some(Effect::Store(stored.clone()));
                }
                return Ending::Found {
                    published: Published {
                        value: Arc::new(value),
                        meta: EntryMeta::of(&stored),
                        source: remote.source,
                    },
                    writes,
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
                    return Ending::Failed(CacheError::Decode {
                        tier: remote.source,
                        source: error,
                    });
                }
            }
        }
    }
    load(shared, key, flight).await
}

/// Runs the loader handed to the flight, if any.
async fn load<V: Send + Sync + 'static>(
    shared: &Shared<V>,
    key: &CacheKey,
    flight: &Arc<Flight<V>>,
) -> Ending<V> {
    // Decide under the table lock: a caller that joins later hands its loader to a flight
    // still registered, and a flight without a loader unregisters in the same critical
    // section, so no caller with a loader can join a flight that already gave up.
    let loader = {
        let mut locked = shared.table.lock(key);
        let loader = flight.take_loader();
        if loader.is_none()
            && let Some(state) = locked.existing()
        {
            state.remove_flight(flight);
        }
        loader
    };
    let Some(loader) = loader else {
        return Ending::NotFound;
    };
    shared.stats.record_loader_call();
    let context = FetchContext {
        key: key.clone(),
        cancel: flight.cancel.clone(),
        flight_id: flight.id,
    };
    let loaded = match std::panic::catch_unwind(AssertUnwindSafe(move || loader(context))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };
    let value = match loaded {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => {
            shared.stats.record_loader_error();
            tracing::debug!(flight_id = flight.id, %error, "the loader failed");
            return Ending::Failed(CacheError::Loader(error));
        }
        Err(panic) => {
            shared.stats.record_loader_panic();
            let message = panic_message(panic.as_ref());
            tracing::error!(flight_id = flight.id, panic = %message, "the loader panicked");
            return Ending::Failed(CacheError::LoaderPanicked {
                message: message.into(),
            });
        }
    };
    let now = shared.clock.now();
    let options = &flight.options;
    let meta = fresh_meta(now, options.ttl);
    let (writes, _kept_in_l1_only) = shared.remote_writes(key, &value, meta, options);
    Ending::Found {
        published: Published {
            value: Arc::new(value),
            meta,
            source: Source::Loader,
        },
        writes,
    }
}

/// Stores (if the flight is still the key's flight) and publishes the ending.
async fn finish<V: Send + Sync + 'static>(
    shared: &Arc<Shared<V>>,
    key: &CacheKey,
    flight: &Arc<Flight<V>>,
    ending: Ending<V>,
) {
    match ending {
        Ending::Found { published, writes } => {
            let mut waits = Vec::new();
            let mut start = [false, false];
            let stored = {
                let mut locked = shared.table.lock(key);
                let state = locked.state();
                let current = state.remove_flight(flight).is_some();
                if current {
                    if !flight.options.skip_l1_write {
                        shared.insert_local_if_newer(key, &published);
                    }
                    let await_writes = flight.options.write_mode == WriteMode::AwaitBeforeReturn;
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
            if !stored {
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
            tracing::Span::current().record("source", published.source.as_str());
            flight.publish(Ok(Some(published)));
        }
        Ending::NotFound => {
            remove(shared, key, flight);
            flight.publish(Ok(None));
        }
        Ending::Failed(error) => {
            remove(shared, key, flight);
            flight.publish(Err(error));
        }
    }
}

fn remove<V: Send + Sync + 'static>(shared: &Shared<V>, key: &CacheKey, flight: &Arc<Flight<V>>) {
    let mut locked = shared.table.lock(key);
    if let Some(state) = locked.existing() {
        state.remove_flight(flight);
    }
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

/// A stored value's timestamps for a fresh write at `now`.
pub(crate) fn fresh_meta(now: Timestamp, ttl: Duration) -> EntryMeta {
    let stale_at = now.saturating_add(ttl);
    EntryMeta::new(now, stale_at, stale_at)
}

/// A stored value from an encoded frame and its timestamps.
pub(crate) fn stored_value(frame: bytes::Bytes, meta: EntryMeta) -> CacheValue {
    // EntryMeta keeps created_at <= stale_at <= expires_at, which is all CacheValue checks.
    CacheValue::new(frame, meta.created_at(), meta.stale_at(), meta.expires_at())
        .unwrap_or_else(|_| unreachable!("EntryMeta keeps its timestamps ordered"))
}
