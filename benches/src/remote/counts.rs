//! Count rows against the services: G5 (1,000 concurrent `get_or_fetch` of one key, with the
//! Redis commands counted by the server's `INFO commandstats` and the S3 requests by the
//! in-process server) and G3 (Redis commands per L1 hit of each read policy, and the refill
//! that makes the second read of an L2 hit an L1 hit).
//!
//! To make the 1,000 callers of G5 really concurrent, the Redis tier's first read waits at a
//! gate until the cache reports one flight and 999 coalesced callers; the gate sits in front
//! of the tier in this process, so the server still sees exactly the commands the cache
//! issues.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tierkit_cache::codec::{Counted, Postcard};
use tierkit_cache::{Cache, FetchOptions, Source};
use tierkit_core::{Backend, TokioOffload};
use tierkit_moka::{MokaBackend, MokaLocal};
use tierkit_policy::{
    AnyReadPolicy, Composition, ParallelReadPolicy, RaceLoser, RaceReadPolicy, RefillPolicy,
    SequentialReadPolicy,
};
use tierkit_s3_server::{RequestCounts, ops};
use tierkit_services::{CommandCalls, calls_since};
use tierkit_testkit::GatedBackend;
use tokio::sync::watch;

use super::{Services, key, namespace, value};
use crate::Row;

/// Concurrent callers of each G5 burst.
const CALLERS: usize = 1_000;

/// The bound of every wait here: far above what a working run needs.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads per read policy in the G3 rows.
const READS: usize = 1_000;

/// Measures the count rows; a scenario whose setup fails is reported as a failing row.
pub(super) fn rows(services: &Services, rows: &mut Vec<Row>) {
    for seed in [Seed::L2, Seed::L3, Seed::Nowhere] {
        match burst(services, seed) {
            Ok(outcome) => outcome.push_rows(seed, rows),
            Err(reason) => rows.push(Row::not_measured("G5", reason)),
        }
    }
    if let Err(reason) = policy_rows(services, rows) {
        rows.push(Row::not_measured("G3", reason));
    }
}

/// Where the key is before a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seed {
    L2,
    L3,
    Nowhere,
}

impl Seed {
    fn name(self) -> &'static str {
        match self {
            Seed::L2 => "only in Redis",
            Seed::L3 => "only in S3",
            Seed::Nowhere => "nowhere",
        }
    }

    /// Where every caller's value must come from.
    fn source(self) -> Source {
        match self {
            Seed::L2 => Source::L2,
            Seed::L3 => Source::L3,
            Seed::Nowhere => Source::Loader,
        }
    }
}

/// What a burst observed.
struct Outcome {
    /// Callers that got the one shared value from the expected source.
    served: usize,
    redis: CommandCalls,
    s3: RequestCounts,
    loads: usize,
    encodes: u64,
}

impl Outcome {
    /// One row per count, each with the exact number expected for `seed`.
    fn push_rows(&self, seed: Seed, rows: &mut Vec<Row>) {
        let at = |l2: u64, l3: u64, nowhere: u64| match seed {
            Seed::L2 => l2,
            Seed::L3 => l3,
            Seed::Nowhere => nowhere,
        };
        let name = seed.name();
        let redis = |command: &str| self.redis.get(command).copied().unwrap_or(0);
        // The conditional refill of L2 is a script: its `GETRANGE` and `STRLEN` run inside it,
        // and a server that has not cached it yet gets one `EVAL` after the `EVALSHA`.
        let redis_other: u64 = self
            .redis
            .iter()
            .filter(|(command, _)| {
                !matches!(
                    command.as_str(),
                    "get" | "set" | "evalsha" | "eval" | "getrange" | "strlen"
                )
            })
            .map(|(_, calls)| calls)
            .sum();
        let s3_other =
            self.s3.total() - self.s3.get(ops::GET_OBJECT) - self.s3.get(ops::PUT_OBJECT)
                + self.s3.rejected();
        let counts: [(String, u64, u64); 9] = [
            (
                format!("1,000 callers, {name}: served by one flight"),
                self.served as u64,
                CALLERS as u64,
            ),
            (format!("{name}: Redis GET"), redis("get"), 1),
            (
                format!("{name}: S3 GetObject"),
                self.s3.get(ops::GET_OBJECT),
                at(0, 1, 1),
            ),
            (
                format!("{name}: loader calls"),
                self.loads as u64,
                at(0, 0, 1),
            ),
            (format!("{name}: encodes"), self.encodes, at(0, 0, 1)),
            (format!("{name}: Redis SET"), redis("set"), at(0, 1, 1)),
            (
                format!("{name}: Redis EVALSHA (the conditional refill of L2)"),
                redis("evalsha"),
                at(0, 1, 0),
            ),
            (
                format!("{name}: S3 PutObject"),
                self.s3.get(ops::PUT_OBJECT),
                at(0, 0, 1),
            ),
            (
                format!("{name}: other Redis commands and S3 requests"),
                redis_other + s3_other,
                0,
            ),
        ];
        for (what, count, expected) in counts {
            let goal = match expected {
                0 => "exactly 0",
                1 => "exactly 1",
                _ => "all 1,000",
            };
            rows.push(Row::count("G5", what, count as f64, expected as f64, goal));
        }
    }
}

/// Builds L1 (moka) / L2 (the private Redis, behind a gate) / L3 (the in-process S3 server),
/// seeds the key where `seed` says (through a cache of its own, with plain postcard, so that
/// nothing is counted), runs [`CALLERS`] concurrent `get_or_fetch` of it, and returns what the
/// servers, the codec and the loader counted once every background write has finished.
fn burst(services: &Services, seed: Seed) -> Result<Outcome, String> {
    let runtime = &services.multi;
    let name = namespace(&format!("g5-{seed:?}").to_lowercase());
    let redis_tier = services.redis_tier(runtime, &name)?;
    let s3_tier = services.s3_tier(runtime, &format!("{name}/"))?;
    let s3 = services.s3()?;
    let key = key("g5")?;
    let outcome = runtime.block_on(async {
        let seeder = Cache::builder(MokaLocal::<String>::new(10), Postcard);
        let seeder = match seed {
            Seed::L2 => Some(seeder.l2(redis_tier.clone()).build()),
            Seed::L3 => Some(seeder.l3(s3_tier.clone()).build()),
            Seed::Nowhere => None,
        };
        if let Some(seeder) = seeder {
            seeder
                .set(&key, "Ada Lovelace".to_owned())
                .await
                .map_err(|err| format!("seeding failed: {err}"))?;
        }

        let (open, gate) = watch::channel(false);
        let codec = Counted::new(Postcard);
        let offload = TokioOffload::unbounded();
        let cache: Cache<String> = Cache::builder(MokaLocal::new(10_000), codec.clone())
            .l2(GatedBackend::new(redis_tier.clone(), gate))
            .l3(s3_tier.clone())
            .offload(offload.clone())
            // The gated read is under the tier timeout: keep it far away.
            .defaults(FetchOptions::new().tier_timeout(PATIENCE))
            .build();
        let loads = Arc::new(AtomicUsize::new(0));

        let redis_before = services.redis_commands()?;
        s3.reset_requests();

        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (cache, key, loads) = (cache.clone(), key.clone(), Arc::clone(&loads));
                tokio::spawn(async move {
                    cache
                        .get_or_fetch(&key, move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, std::io::Error>("Ada Lovelace".to_owned())
                        })
                        .await
                })
            })
            .collect();

        // Every caller is on the one flight, held at the Redis read: open the gate.
        let started = Instant::now();
        loop {
            let stats = cache.stats();
            if stats.flights == 1 && stats.coalesced == (CALLERS - 1) as u64 {
                break;
            }
            if stats.flights > 1 || started.elapsed() > PATIENCE {
                open.send_replace(true);
                return Err(format!(
                    "the {CALLERS} callers did not all join one flight: {} flights, {} coalesced",
                    stats.flights, stats.coalesced
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        open.send_replace(true);

        let mut hits = Vec::with_capacity(CALLERS);
        for task in tasks {
            match task.await {
                Ok(Ok(hit)) => hits.push(hit),
                Ok(Err(err)) => return Err(format!("a caller failed: {err}")),
                Err(err) => return Err(format!("a caller task failed: {err}")),
            }
        }
        let drained = offload.drain(PATIENCE).await;
        if !drained.is_complete() {
            return Err(format!("background writes still running: {drained:?}"));
        }
        let redis = calls_since(&redis_before, &services.redis_commands()?);
        let served = match hits.first() {
            Some(first) => hits
                .iter()
                .filter(|hit| {
                    Arc::ptr_eq(hit.value(), first.value()) && hit.source() == seed.source()
                })
                .count(),
            None => 0,
        };
        Ok(Outcome {
            served,
            redis,
            s3: s3.requests(),
            loads: loads.load(Ordering::SeqCst),
            encodes: codec.encodes(),
        })
    });
    runtime.block_on(redis_tier.shutdown());
    outcome
}

/// G3: Redis commands per read that hits L1 (moka over Redis), for each read policy, and the
/// Redis GETs of an L2 hit refilled into L1 followed by a second read.
fn policy_rows(services: &Services, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = &services.current;
    let tier = services.redis_tier(runtime, &namespace("g3"))?;
    let (key, value) = (key("g3")?, value());
    // What the read policies promise for an L1 hit (moka answers through its probe):
    // sequential and race never ask L2 (whatever becomes of a race's loser); parallel always
    // reads both tiers, so one GET per read.
    let policies: [(&str, AnyReadPolicy, f64); 4] = [
        ("sequential read", SequentialReadPolicy.into(), 0.0),
        (
            "race read, loser dropped",
            RaceReadPolicy::new(RaceLoser::Drop).into(),
            0.0,
        ),
        (
            "race read, loser finished",
            RaceReadPolicy::new(RaceLoser::Finish).into(),
            0.0,
        ),
        (
            "parallel read (always asks L2)",
            ParallelReadPolicy.into(),
            1.0,
        ),
    ];
    for (name, policy, expected) in policies {
        let offload = TokioOffload::unbounded();
        let composed = Composition::builder(MokaBackend::new(100), tier.clone())
            .read_policy(policy)
            .offload(offload.clone())
            .build();
        runtime
            .block_on(composed.set(&key, value.clone()))
            .map_err(|err| err.to_string())?;
        let before = services.redis_commands()?;
        let hits = runtime.block_on(async {
            let mut hits = 0;
            for _ in 0..READS {
                if matches!(composed.get(&key).await, Ok(Some(_))) {
                    hits += 1;
                }
            }
            hits
        });
        // A race loser finished on the offload counts too: wait until none is left.
        let drained = runtime.block_on(offload.drain(PATIENCE));
        if !drained.is_complete() {
            return Err(format!(
                "{name}: background reads still running: {drained:?}"
            ));
        }
        let commands: u64 = calls_since(&before, &services.redis_commands()?)
            .values()
            .sum();
        if hits != READS {
            return Err(format!("{name}: {hits} of {READS} reads found the value"));
        }
        rows.push(Row::count(
            "G3",
            format!("Redis commands per L1 hit, {name}"),
            commands as f64 / READS as f64,
            expected,
            if expected == 0.0 {
                "exactly 0"
            } else {
                "exactly 1"
            },
        ));
    }

    // An L2 hit with refill on, then a second read of the key: one GET in all.
    let refill_key = key.clone();
    let l1 = MokaBackend::new(100);
    let composed = Composition::builder(l1.clone(), tier.clone())
        .refill_policy(RefillPolicy::Always)
        .build();
    runtime
        .block_on(tier.set(&refill_key, value.clone()))
        .map_err(|err| err.to_string())?;
    let before = services.redis_commands()?;
    let (first, second) = runtime.block_on(async {
        (
            composed.get(&refill_key).await,
            composed.get(&refill_key).await,
        )
    });
    let gets = calls_since(&before, &services.redis_commands()?)
        .get("get")
        .copied()
        .unwrap_or(0);
    if !matches!((&first, &second), (Ok(Some(a)), Ok(Some(b))) if *a == value && *b == value) {
        return Err("the refill reads did not find the value".to_owned());
    }
    rows.push(Row::count(
        "G3",
        "Redis GETs: an L2 hit refilled into L1, then a second read",
        gets as f64,
        1.0,
        "exactly 1",
    ));
    runtime.block_on(tier.shutdown());
    Ok(())
}
