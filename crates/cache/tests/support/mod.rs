//! Test support shared by the read-through tests: an instrumented in-process tier, a counting
//! codec, counting loaders, a gate loaders wait on, a probe of a loader's token, stack builders
//! (with fault injectors, or for another node), caller spawners and common option sets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tierkit_cache::codec::{Codec, Counted, Postcard};
use tierkit_cache::{
    AbandonPolicy, Cache, CacheBuilder, CacheError, CancellationToken, FetchContext, FetchOptions,
    Hit, LocalEntry, LocalTier,
};
use tierkit_core::{CacheKey, Clock, ManualClock, Timestamp};
use tierkit_testkit::{FaultyBackend, MemoryBackend};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An in-process tier over a map that counts its calls (`may_contain` is not counted: it is
/// not an access).
pub struct MapLocal<V> {
    map: Mutex<HashMap<CacheKey, LocalEntry<V>>>,
    pub gets: AtomicUsize,
    pub inserts: AtomicUsize,
    pub removes: AtomicUsize,
}

impl<V: Send + Sync + 'static> MapLocal<V> {
    pub fn new() -> Arc<Self> {
        Arc::new(MapLocal {
            map: Mutex::new(HashMap::new()),
            gets: AtomicUsize::new(0),
            inserts: AtomicUsize::new(0),
            removes: AtomicUsize::new(0),
        })
    }

    pub fn peek(&self, key: &CacheKey) -> Option<LocalEntry<V>> {
        self.map.lock().unwrap().get(key).cloned()
    }

    pub fn inserts(&self) -> usize {
        self.inserts.load(Ordering::SeqCst)
    }

    pub fn removes(&self) -> usize {
        self.removes.load(Ordering::SeqCst)
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl<V> std::fmt::Debug for MapLocal<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapLocal").finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> LocalTier<V> for MapLocal<V> {
    fn label(&self) -> &str {
        "map"
    }

    fn get(&self, key: &CacheKey, now: Timestamp) -> Option<LocalEntry<V>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let map = self.map.lock().unwrap();
        map.get(key).filter(|e| !e.meta().is_expired(now)).cloned()
    }

    fn may_contain(&self, key: &CacheKey) -> bool {
        self.map.lock().unwrap().contains_key(key)
    }

    fn insert(&self, key: &CacheKey, entry: LocalEntry<V>) {
        self.inserts.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().insert(key.clone(), entry);
    }

    fn remove(&self, key: &CacheKey) {
        self.removes.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().remove(key);
    }

    fn clear(&self) {
        self.map.lock().unwrap().clear();
    }
}

/// Postcard, counting encodes and decodes. Clones share the counts.
pub type CountingCodec = Counted<Postcard>;

/// Counts loader calls.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A test stack: map L1, memory L2 and L3 (answering like remote tiers), counting codec,
/// manual clock.
pub struct Stack<V> {
    pub l1: Arc<MapLocal<V>>,
    pub l2: MemoryBackend,
    pub l3: MemoryBackend,
    pub codec: CountingCodec,
    pub clock: ManualClock,
}

impl<V: Send + Sync + 'static> Stack<V>
where
    Postcard: Codec<V>,
{
    pub fn new() -> Self {
        let clock = ManualClock::new(Timestamp::from_unix_millis(1_700_000_000_000));
        Stack {
            l1: MapLocal::new(),
            l2: MemoryBackend::new("l2")
                .remote()
                .with_clock(Clock::from(clock.clone())),
            l3: MemoryBackend::new("l3")
                .remote()
                .with_clock(Clock::from(clock.clone())),
            codec: CountingCodec::default(),
            clock,
        }
    }

    /// Another node over this stack's remote tiers and clock, with an L1 and a counting codec
    /// of its own, for values of type `W`.
    pub fn other_node<W: Send + Sync + 'static>(&self) -> Stack<W>
    where
        Postcard: Codec<W>,
    {
        Stack {
            l1: MapLocal::new(),
            l2: self.l2.clone(),
            l3: self.l3.clone(),
            codec: CountingCodec::default(),
            clock: self.clock.clone(),
        }
    }

    /// A builder over the stack's L1 and codec, with its clock, without remote tiers.
    pub fn builder(&self) -> CacheBuilder<V> {
        self.builder_with_codec(self.codec.clone())
    }

    /// A builder over the stack's L1 with `codec`, with its clock, without remote tiers.
    pub fn builder_with_codec(&self, codec: impl Codec<V>) -> CacheBuilder<V> {
        // No L1 jitter by default in these tests: entries expire exactly at `stale_at` unless
        // a test asks for a reserve.
        Cache::builder(Arc::clone(&self.l1), codec)
            .clock(Clock::from(self.clock.clone()))
            .defaults(FetchOptions::new().jitter_max(Duration::ZERO))
    }

    /// A builder over some of the stack's tiers only (the stack's L1 when `l1`, else an L1 of
    /// its own), with its clock and codec: a cache that writes those tiers alone, for a test
    /// that sets up tiers holding different values (a write that skips a tier removes the
    /// key's older value from it, so skip flags cannot).
    pub fn builder_over(&self, l1: bool, l2: bool, l3: bool) -> CacheBuilder<V> {
        let local = if l1 {
            Arc::clone(&self.l1)
        } else {
            MapLocal::new()
        };
        let mut builder = Cache::builder(local, self.codec.clone())
            .clock(Clock::from(self.clock.clone()))
            .defaults(FetchOptions::new().jitter_max(Duration::ZERO));
        if l2 {
            builder = builder.l2(self.l2.clone());
        }
        if l3 {
            builder = builder.l3(self.l3.clone());
        }
        builder
    }

    /// A builder over all three tiers, to configure before building.
    pub fn tiered_builder(&self) -> CacheBuilder<V> {
        self.builder().l2(self.l2.clone()).l3(self.l3.clone())
    }

    /// The cache over all three tiers.
    pub fn cache(&self) -> Cache<V> {
        self.tiered_builder().build()
    }

    /// The cache over all three tiers, encoding with `codec` instead of the counting codec.
    pub fn cache_with_codec(&self, codec: impl Codec<V>) -> Cache<V> {
        self.builder_with_codec(codec)
            .l2(self.l2.clone())
            .l3(self.l3.clone())
            .build()
    }

    /// The cache over all three tiers with a fault injector in front of L2, and the injector.
    pub fn cache_with_faulty_l2(&self) -> (Cache<V>, FaultyBackend<MemoryBackend>) {
        let l2 = FaultyBackend::new(self.l2.clone());
        let cache = self.builder().l2(l2.clone()).l3(self.l3.clone()).build();
        (cache, l2)
    }
}

impl Stack<String> {
    /// The value L1 holds for `name`, if any (expired or not).
    pub fn l1_value(&self, name: &str) -> Option<String> {
        self.l1
            .peek(&key(name))
            .and_then(|e| e.value().map(|v| v.as_str().to_owned()))
    }
}

/// A stack whose remote tiers are behind fault injectors.
pub struct FaultyStack<V> {
    pub stack: Stack<V>,
    pub l2: FaultyBackend<MemoryBackend>,
    pub l3: FaultyBackend<MemoryBackend>,
}

impl<V: Send + Sync + 'static> FaultyStack<V>
where
    Postcard: Codec<V>,
{
    pub fn new() -> Self {
        let stack = Stack::new();
        let l2 = FaultyBackend::new(stack.l2.clone());
        let l3 = FaultyBackend::new(stack.l3.clone());
        FaultyStack { stack, l2, l3 }
    }

    /// A builder over the stack's L1 and the two fault injectors.
    pub fn builder(&self) -> CacheBuilder<V> {
        self.stack.builder().l2(self.l2.clone()).l3(self.l3.clone())
    }

    /// The cache over the stack's L1 and the two fault injectors.
    pub fn cache(&self) -> Cache<V> {
        self.builder().build()
    }
}

pub fn key(name: &str) -> CacheKey {
    CacheKey::new(name).unwrap()
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// `t0 + offset`.
pub fn at(t0: Timestamp, offset: Duration) -> Timestamp {
    t0.saturating_add(offset)
}

/// Lets spawned tasks run until they are all blocked (paused-clock tests).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// A gate loaders wait on until the test opens it, so that callers queue on a flight before
/// it ends. Dropping the gate lets its waiters through too.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn closed() -> Self {
        Gate(watch::channel(false).0)
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// A future that is ready once the gate is open (or dropped).
    pub fn opened(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut gate = self.0.subscribe();
        async move {
            let _ = gate.wait_for(|open| *open).await;
        }
    }
}

/// A loader for `get_or_fetch` that counts its call and answers `value` at once.
pub fn counting<V: Send + 'static>(
    calls: &Calls,
    value: V,
) -> impl FnOnce() -> std::future::Ready<Result<V, std::io::Error>> + Send + 'static + use<V> {
    let calls = calls.clone();
    move || {
        calls.bump();
        std::future::ready(Ok(value))
    }
}

/// A loader for `get_or_fetch_with` that counts its call and answers `value` at once.
pub fn instant(
    calls: &Calls,
    value: &'static str,
) -> impl FnOnce(FetchContext<String>) -> std::future::Ready<Result<String, std::io::Error>>
+ Send
+ 'static
+ use<> {
    let calls = calls.clone();
    move |_| {
        calls.bump();
        std::future::ready(Ok(value.to_owned()))
    }
}

/// A loader for `get_or_fetch` that counts its call, waits for `gate` to open and answers
/// `value`.
pub fn gated<V: Send + 'static>(
    calls: &Calls,
    gate: &Gate,
    value: V,
) -> impl FnOnce() -> BoxFuture<'static, Result<V, std::io::Error>> + Send + 'static + use<V> {
    let (calls, opened) = (calls.clone(), gate.opened());
    move || {
        Box::pin(async move {
            calls.bump();
            opened.await;
            Ok(value)
        })
    }
}

/// What a read-through call answers.
pub type Answer<V> = Result<Hit<V>, CacheError>;

/// Spawns a caller of `get_or_fetch(k, loader)`.
pub fn spawn_fetch<V, F, Fut, E>(
    cache: &Cache<V>,
    k: &'static str,
    loader: F,
) -> JoinHandle<Answer<V>>
where
    V: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
{
    let cache = cache.clone();
    tokio::spawn(async move { cache.get_or_fetch(k, loader).await })
}

/// Spawns `n` callers of `get_or_fetch(k)` at once, each with a loader from `loader` (only the
/// flight's starter's loader runs), and returns their tasks.
pub fn spawn_fetches<V, F, Fut, E>(
    cache: &Cache<V>,
    k: &'static str,
    n: usize,
    mut loader: impl FnMut() -> F,
) -> Vec<JoinHandle<Answer<V>>>
where
    V: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>> + 'static,
{
    (0..n).map(|_| spawn_fetch(cache, k, loader())).collect()
}

/// Awaits every caller in turn: their hits (panics if one failed).
pub async fn hits<V>(tasks: Vec<JoinHandle<Answer<V>>>) -> Vec<Hit<V>> {
    let mut hits = Vec::new();
    for task in tasks {
        hits.push(task.await.unwrap().unwrap());
    }
    hits
}

/// Asserts that every hit holds the same `Arc` as the first.
pub fn assert_one_shared_value<V>(hits: &[Hit<V>]) {
    assert!(
        hits.iter()
            .all(|hit| Arc::ptr_eq(hit.value(), hits[0].value()))
    );
}

/// Spawns a `set(k, value)`.
pub fn spawn_set<V: Send + Sync + 'static>(
    cache: &Cache<V>,
    k: &'static str,
    value: V,
) -> JoinHandle<Result<(), CacheError>> {
    let cache = cache.clone();
    tokio::spawn(async move { cache.set(k, value).await })
}

/// Spawns a `remove(k)`.
pub fn spawn_remove<V: Send + Sync + 'static>(
    cache: &Cache<V>,
    k: &'static str,
) -> JoinHandle<Result<(), CacheError>> {
    let cache = cache.clone();
    tokio::spawn(async move { cache.remove(k).await })
}

/// Sets its flag when dropped, unless disarmed first: put one inside a loader future to see
/// the future dropped.
pub struct DropFlag {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl DropFlag {
    pub fn new(flag: &Arc<AtomicBool>) -> Self {
        DropFlag {
            flag: Arc::clone(flag),
            armed: true,
        }
    }

    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

/// What a loader leaves behind for the test: its calls, its cancellation token and whether its
/// future was dropped.
#[derive(Clone, Default)]
pub struct TokenProbe {
    pub calls: Calls,
    token: Arc<Mutex<Option<CancellationToken>>>,
    dropped: Arc<AtomicBool>,
}

impl TokenProbe {
    /// A loader that counts its call, records its token, waits for `until` and then answers
    /// `value`; its future holds a drop flag.
    pub fn loader<U: Future<Output = ()> + Send + 'static>(
        &self,
        until: U,
        value: &str,
    ) -> impl FnOnce(FetchContext<String>) -> BoxFuture<'static, Result<String, std::io::Error>>
    + Send
    + 'static
    + use<U> {
        let (probe, value) = (self.clone(), value.to_owned());
        move |ctx: FetchContext<String>| {
            probe.calls.bump();
            *probe.token.lock().unwrap() = Some(ctx.cancellation().clone());
            let flag = DropFlag::new(&probe.dropped);
            Box::pin(async move {
                let _flag = flag;
                until.await;
                Ok(value)
            })
        }
    }

    /// Whether the loader's token fired.
    pub fn cancelled(&self) -> bool {
        self.token
            .lock()
            .unwrap()
            .as_ref()
            .expect("the loader ran")
            .is_cancelled()
    }

    /// Whether the loader's future was dropped (at its end, or before).
    pub fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Asserts that no tier holds `name`.
pub fn assert_stored_in_no_tier<V: Send + Sync + 'static>(stack: &Stack<V>, name: &str) {
    assert!(stack.l1.peek(&key(name)).is_none(), "not stored in L1");
    assert!(stack.l2.peek(&key(name)).is_none(), "not stored in L2");
    assert!(stack.l3.peek(&key(name)).is_none(), "not stored in L3");
}

/// Options writing L3 only: a value only L3 holds.
pub fn write_l3_only() -> FetchOptions {
    FetchOptions::new().skip_l1_write(true).skip_l2_write(true)
}

/// Options writing L1 only: a value only L1 holds.
pub fn write_l1_only() -> FetchOptions {
    FetchOptions::new().skip_l2_write(true).skip_l3_write(true)
}

/// Options writing the remote tiers only: a value L1 does not hold.
pub fn write_remote_only() -> FetchOptions {
    FetchOptions::new().skip_l1_write(true)
}

/// Options skipping every tier read: the flight goes straight to the loader.
pub fn skip_every_read() -> FetchOptions {
    FetchOptions::new()
        .skip_l1_read(true)
        .skip_l2_read(true)
        .skip_l3_read(true)
}

/// Options cancelling a flight once no caller waits on it.
pub fn cancel_when_unobserved() -> FetchOptions {
    FetchOptions::new().abandon(AbandonPolicy::CancelWhenUnobserved)
}
