//! G7: the L1 hit ratio of a read-through `Cache<V>` (moka over the private Redis) against a
//! raw moka read-through (get, and insert on a miss), on the same sequence of Zipf(s = 1.0)
//! keys over 10,000 keys from a fixed seed, at capacities of 1% and 10% of the keys.
//!
//! A composition must not change what L1 keeps: the two ratios must be within half a point.

use std::sync::Arc;
use std::time::Duration;

use tierkit_cache::codec::Postcard;
use tierkit_cache::{Cache, FetchOptions, Source};
use tierkit_core::CacheKey;
use tierkit_moka::MokaLocal;
use tierkit_testkit::workload::{XorShift, Zipf};

use super::{Services, namespace};
use crate::Row;
use crate::local::keys;

/// Distinct keys.
const KEYS: usize = 10_000;

/// The seed of the key sequence.
const SEED: u64 = 7;

/// A raw moka cache of `Arc<String>` with a per-entry expiry, like `MokaLocal`.
struct FixedExpiry;

impl moka::Expiry<CacheKey, Arc<String>> for FixedExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        _: &Arc<String>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// The key ranks of the run: `requests` draws of Zipf(1.0) over [`KEYS`] from [`SEED`].
fn ranks(requests: usize) -> Vec<usize> {
    let zipf = Zipf::new(KEYS, 1.0);
    let mut rng = XorShift::new(SEED);
    (0..requests).map(|_| zipf.sample(&mut rng)).collect()
}

/// Raw moka read-through: hits in percent of `ranks`.
fn raw_hit_ratio(keys: &[CacheKey], ranks: &[usize], capacity: u64) -> f64 {
    let raw: moka::sync::Cache<CacheKey, Arc<String>> = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .expire_after(FixedExpiry)
        .build();
    let mut hits = 0usize;
    for &rank in ranks {
        let key = &keys[rank];
        if raw.get(key).is_some() {
            hits += 1;
        } else {
            raw.insert(key.clone(), Arc::new(format!("value {rank}")));
        }
    }
    100.0 * hits as f64 / ranks.len() as f64
}

/// tierkit read-through (moka over Redis): L1 hits in percent of `ranks`.
fn tierkit_hit_ratio(
    services: &Services,
    keys: &[CacheKey],
    ranks: &[usize],
    capacity: u64,
) -> Result<f64, String> {
    let runtime = &services.current;
    let redis = services.redis_tier(runtime, &namespace(&format!("g7-{capacity}")))?;
    let _entered = runtime.enter();
    let cache: Cache<String> = Cache::builder(MokaLocal::new(capacity), Postcard)
        .l2(redis.clone())
        .defaults(FetchOptions::new().ttl(Duration::from_secs(3600)))
        .build();
    let hits = runtime.block_on(async {
        let mut hits = 0usize;
        for &rank in ranks {
            let hit = cache
                .get_or_fetch(&keys[rank], move || async move {
                    Ok::<_, std::io::Error>(format!("value {rank}"))
                })
                .await
                .map_err(|err| format!("a read failed: {err}"))?;
            if hit.source() == Source::L1 {
                hits += 1;
            }
        }
        Ok::<_, String>(hits)
    })?;
    runtime.block_on(redis.shutdown());
    Ok(100.0 * hits as f64 / ranks.len() as f64)
}

/// The G7 rows, `requests` reads each.
pub(super) fn rows(services: &Services, requests: usize, rows: &mut Vec<Row>) {
    let keys = match keys(KEYS) {
        Ok(keys) => keys,
        Err(reason) => {
            rows.push(Row::not_measured("G7", reason));
            return;
        }
    };
    let ranks = ranks(requests);
    for percent in [1, 10] {
        let capacity = (KEYS * percent / 100) as u64;
        let raw = raw_hit_ratio(&keys, &ranks, capacity);
        match tierkit_hit_ratio(services, &keys, &ranks, capacity) {
            Ok(ours) => rows.push(Row::hit_ratio(
                "G7",
                format!(
                    "L1 hit ratio, read-through over Redis vs raw moka, Zipf 1.0, \
                     {requests} reads, capacity {percent}%"
                ),
                ours,
                raw,
                0.5,
            )),
            Err(reason) => rows.push(Row::not_measured("G7", reason)),
        }
    }
}
