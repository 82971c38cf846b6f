//! The origin: a simulated database that takes a few milliseconds per query, and that the
//! demo can make fail.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::Recorder;

/// The cached value: a product as the database returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Product {
    /// The product's id (its key rank).
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its price.
    pub price_cents: u64,
    /// Which origin call produced it (or which write, for values written with `set`).
    pub version: u64,
    /// A description, so that values have a realistic size (about 300 bytes encoded).
    pub description: String,
}

impl Product {
    /// Product `id`, at `version`.
    pub fn new(id: u64, version: u64) -> Self {
        Product {
            id,
            name: format!("product {id}"),
            price_cents: 100 + (id * 37 + version) % 10_000,
            version,
            description: format!("{:-<280}", format!("the description of product {id} ")),
        }
    }
}

/// The error of a failing origin.
#[derive(Debug)]
pub struct OriginDown;

impl fmt::Display for OriginDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the product database refused the connection")
    }
}

impl std::error::Error for OriginDown {}

/// The simulated database, shared by every loader.
#[derive(Clone)]
pub struct Origin {
    inner: Arc<Inner>,
}

struct Inner {
    latency: Duration,
    failing: AtomicBool,
    calls: AtomicU64,
    failed_calls: AtomicU64,
    /// Calls per key while failing: how often fail-safe let the origin be tried.
    calls_while_failing: Mutex<HashMap<u64, u32>>,
    /// Calls per key, whole run.
    calls_by_key: Mutex<HashMap<u64, u32>>,
    recorder: Arc<Recorder>,
}

impl Origin {
    /// An origin answering after `latency`, recording its calls in `recorder`.
    pub fn new(latency: Duration, recorder: Arc<Recorder>) -> Self {
        Origin {
            inner: Arc::new(Inner {
                latency,
                failing: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                failed_calls: AtomicU64::new(0),
                calls_while_failing: Mutex::new(HashMap::new()),
                calls_by_key: Mutex::new(HashMap::new()),
                recorder,
            }),
        }
    }

    /// Makes every call fail (`true`) or answer again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Relaxed);
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Relaxed)
    }

    /// Calls that failed so far.
    pub fn failed_calls(&self) -> u64 {
        self.inner.failed_calls.load(Relaxed)
    }

    /// Calls made for `id` so far.
    pub fn calls_for(&self, id: u64) -> u32 {
        lock(&self.inner.calls_by_key)
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// Calls made for `id` while the origin was failing.
    pub fn failing_calls_for(&self, id: u64) -> u32 {
        lock(&self.inner.calls_while_failing)
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// Keys the origin was called for while it was failing.
    pub fn keys_called_while_failing(&self) -> usize {
        lock(&self.inner.calls_while_failing).len()
    }

    /// Loads product `id`, taking the origin's latency plus `extra` (an expensive query).
    pub async fn load(&self, id: u64, extra: Duration) -> Result<Product, OriginDown> {
        let inner = &self.inner;
        let call = inner.calls.fetch_add(1, Relaxed) + 1;
        inner.recorder.origin_call();
        *lock(&inner.calls_by_key).entry(id).or_default() += 1;
        tokio::time::sleep(inner.latency + extra).await;
        if inner.failing.load(Relaxed) {
            inner.failed_calls.fetch_add(1, Relaxed);
            *lock(&inner.calls_while_failing).entry(id).or_default() += 1;
            return Err(OriginDown);
        }
        Ok(Product::new(id, call))
    }
}

/// Locks a map of counters (a poisoned lock still holds valid counts).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
