//! Metrics of a three-tier stack: every tier is counted under its own path, so two tiers of the
//! same kind never share a counter, and an L1 hit is counted although it never builds a future.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tierkit::moka::MokaBackend;
use tierkit::{Backend, CacheKey, CacheValue, Clock, Composition};

/// Counts every counter by its name and labels, rendered `name{k=v,...}`.
#[derive(Default)]
struct CountingRecorder {
    counters: Mutex<BTreeMap<String, Arc<Count>>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl CountingRecorder {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|(key, count)| (key.clone(), count.0.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let count = Arc::clone(self.counters.lock().unwrap().entry(name).or_default());
        Counter::from_arc(count)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn every_tier_is_counted_under_its_own_path() {
    let recorder = CountingRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let top = MokaBackend::new(100);
            let stack = Composition::new(
                top.clone(),
                Composition::new(MokaBackend::new(100), MokaBackend::new(100)),
            );
            let key = CacheKey::new("k").unwrap();
            let value =
                CacheValue::with_ttl(&b"v"[..], Clock::System.now(), Duration::from_secs(60));

            stack.set(&key, value.clone()).await.unwrap(); // l1, l2.l1, l2.l2 written
            assert!(stack.get(&key).is_ready()); // l1 hit, no future
            stack.get(&key).await.unwrap();
            top.delete(&key).await.unwrap();
            stack.get(&key).await.unwrap(); // l1 miss, l2 (l2.l1 hit), refill of l1
            stack.get(&CacheKey::new("absent").unwrap()).await.unwrap(); // misses everywhere
        });
    });

    let counts = recorder.snapshot();
    let expected: BTreeMap<String, u64> = [
        (
            "tierkit_tier_write_total{tier=l1,backend=moka,op=set,result=ok}",
            1,
        ),
        (
            "tierkit_tier_write_total{tier=l2,backend=moka+moka,op=set,result=ok}",
            1,
        ),
        (
            "tierkit_tier_write_total{tier=l2.l1,backend=moka,op=set,result=ok}",
            1,
        ),
        (
            "tierkit_tier_write_total{tier=l2.l2,backend=moka,op=set,result=ok}",
            1,
        ),
        ("tierkit_tier_get_total{tier=l1,backend=moka,result=hit}", 2),
        (
            "tierkit_tier_get_total{tier=l1,backend=moka,result=miss}",
            2,
        ),
        (
            "tierkit_tier_get_total{tier=l2,backend=moka+moka,result=hit}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2,backend=moka+moka,result=miss}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2.l1,backend=moka,result=hit}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2.l1,backend=moka,result=miss}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2.l2,backend=moka,result=miss}",
            1,
        ),
        (
            "tierkit_refill_total{tier=l1,backend=moka,op=set,result=ok}",
            1,
        ),
    ]
    .into_iter()
    .map(|(name, count)| (name.to_owned(), count))
    .collect();
    assert_eq!(counts, expected);
}

/// A composition used on its own first (bound as the root of its stack) and then nested under
/// another counts under its new paths from then on: its tiers never share a series with the
/// outer composition's.
#[test]
fn a_composition_used_before_nesting_counts_under_its_nested_paths() {
    let recorder = CountingRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let key = CacheKey::new("k").unwrap();
            let inner = Composition::new(MokaBackend::new(100), MokaBackend::new(100));
            inner.get(&key).await.unwrap(); // used alone: misses at l1 and l2
            let stack = Composition::new(MokaBackend::new(100), inner);
            stack.get(&key).await.unwrap(); // misses at l1, l2, l2.l1, l2.l2
        });
    });

    let counts = recorder.snapshot();
    let expected: BTreeMap<String, u64> = [
        // The inner composition alone, then the outer's L1 and its inner composition at l2.
        (
            "tierkit_tier_get_total{tier=l1,backend=moka,result=miss}",
            2,
        ),
        (
            "tierkit_tier_get_total{tier=l2,backend=moka,result=miss}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2,backend=moka+moka,result=miss}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2.l1,backend=moka,result=miss}",
            1,
        ),
        (
            "tierkit_tier_get_total{tier=l2.l2,backend=moka,result=miss}",
            1,
        ),
    ]
    .into_iter()
    .map(|(name, count)| (name.to_owned(), count))
    .collect();
    assert_eq!(counts, expected);
}
