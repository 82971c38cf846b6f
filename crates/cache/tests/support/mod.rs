//! Test support shared by the read-through tests: an instrumented in-process tier, a counting
//! codec, a counting loader and a stack builder.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tierkit_cache::codec::{Codec, Counted, Postcard};
use tierkit_cache::{Cache, CacheBuilder, LocalEntry, LocalTier};
use tierkit_core::{CacheKey, Clock, ManualClock, Timestamp};
use tierkit_testkit::MemoryBackend;

/// An in-process tier over a map that counts its calls.
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

    /// A builder over the stack's L1 and codec, with its clock, without remote tiers.
    pub fn builder(&self) -> CacheBuilder<V> {
        Cache::builder(Arc::clone(&self.l1), self.codec.clone())
            .clock(Clock::from(self.clock.clone()))
    }

    /// The cache over all three tiers.
    pub fn cache(&self) -> Cache<V> {
        self.builder()
            .l2(self.l2.clone())
            .l3(self.l3.clone())
            .build()
    }
}

pub fn key(name: &str) -> CacheKey {
    CacheKey::new(name).unwrap()
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// Lets spawned tasks run until they are all blocked (paused-clock tests).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
