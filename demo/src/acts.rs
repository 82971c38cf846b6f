//! The acts of the run, placed in proportion to its duration, and what each one shows.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tierkit::CacheStats;
use tierkit_services::error_chain;
use tokio::sync::Barrier;

use crate::display::{Display, format_latency, percent, thousands};
use crate::services::{REDIS_TIMEOUT, Redis, S3_TIMEOUT};
use crate::stats::Served;
use crate::warnings::Warnings;
use crate::workload::Workload;

/// Callers of the stampede act.
pub const STAMPEDE_CALLERS: usize = 500;
/// Latency of the stampede key's origin query (an expensive one).
const STAMPEDE_QUERY: Duration = Duration::from_millis(50);

/// What an act does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Every tier empty; the workload starts.
    ColdStart,
    /// Many callers ask for one cold key at once.
    Stampede,
    /// Redis is stopped (killed, as in a crash).
    RedisDown,
    /// Redis is started again, empty.
    RedisBack,
    /// Every origin call fails.
    OriginFailing,
    /// The origin answers again.
    OriginBack,
}

impl ActKind {
    /// The act's title.
    pub fn title(self) -> &'static str {
        match self {
            ActKind::ColdStart => "cold start",
            ActKind::Stampede => "stampede",
            ActKind::RedisDown => "Redis down",
            ActKind::RedisBack => "Redis back",
            ActKind::OriginFailing => "origin failing",
            ActKind::OriginBack => "origin back",
        }
    }

    /// Where the act starts, as a fraction of the run.
    fn at(self) -> f64 {
        match self {
            ActKind::ColdStart => 0.0,
            ActKind::Stampede => 0.2,
            ActKind::RedisDown => 0.3,
            ActKind::RedisBack => 0.55,
            ActKind::OriginFailing => 0.7,
            ActKind::OriginBack => 0.9,
        }
    }

    const ALL: [ActKind; 6] = [
        ActKind::ColdStart,
        ActKind::Stampede,
        ActKind::RedisDown,
        ActKind::RedisBack,
        ActKind::OriginFailing,
        ActKind::OriginBack,
    ];
}

/// The second each act starts at, in a run of `duration_s` seconds.
fn starts(duration_s: u64) -> Vec<u64> {
    ActKind::ALL
        .iter()
        .map(|act| (act.at() * duration_s as f64).round() as u64)
        .collect()
}

/// One act as it was played.
#[derive(Clone, Debug, Serialize)]
pub struct ActReport {
    /// 1-based.
    pub number: usize,
    /// Its title.
    pub title: &'static str,
    /// First second of the act.
    pub start_s: u64,
    /// Second after its last one.
    pub end_s: u64,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
    /// What it showed.
    pub lines: Vec<String>,
}

/// A check of something the demo guarantees, reported with the acts.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it held.
    pub passed: bool,
}

/// Plays the acts.
pub struct Director<'a> {
    /// The workload the acts act upon.
    pub workload: &'a Workload,
    /// The Redis server (the outage acts need a private one).
    pub redis: &'a Redis,
    /// Where the narrative goes.
    pub display: &'a Display,
    /// The warnings logged.
    pub warnings: &'a Warnings,
    /// The current act's title, for the live line.
    pub current: Arc<Mutex<String>>,
    /// The run's length, in seconds.
    pub duration_s: u64,
    /// Fail-safe's throttle window.
    pub throttle: Duration,
    /// The cache's hard timeout: no read waits longer.
    pub hard_timeout: Duration,
    /// The acts played so far.
    pub played: Vec<ActReport>,
    /// The checks made.
    pub checks: Vec<Check>,
}

/// What an act's end needs from its start.
struct Before {
    stats: CacheStats,
    warnings: u64,
    origin_calls: u64,
}

impl Director<'_> {
    /// Plays every act, then waits for the end of the run.
    pub async fn play(&mut self) {
        let starts = starts(self.duration_s);
        for (index, act) in ActKind::ALL.into_iter().enumerate() {
            let start = starts[index];
            let end = starts.get(index + 1).copied().unwrap_or(self.duration_s);
            tokio::time::sleep_until(self.at(start)).await;
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                format!("act {}: {}", index + 1, act.title());
            let mut report = ActReport {
                number: index + 1,
                title: act.title(),
                start_s: start,
                end_s: end,
                skipped: None,
                lines: Vec::new(),
            };
            self.display.say(format!(
                "\n[{start:>3} s] act {}: {}: {}",
                index + 1,
                act.title(),
                self.announcement(act)
            ));
            let before = self.before();
            if let Err(skipped) = self.begin(act, &mut report).await {
                self.display.say(format!("        skipped: {skipped}"));
                report.skipped = Some(skipped);
            }
            tokio::time::sleep_until(self.at(end)).await;
            if report.skipped.is_none() {
                self.end(act, start, end, &before, &mut report);
            }
            for line in &report.lines {
                self.display.say(format!("        {line}"));
            }
            self.played.push(report);
        }
    }

    /// The instant `second` seconds into the run.
    fn at(&self, second: u64) -> tokio::time::Instant {
        (self.workload.recorder.started() + Duration::from_secs(second)).into()
    }

    fn announcement(&self, act: ActKind) -> &'static str {
        match act {
            ActKind::ColdStart => {
                "every tier is empty; first reads call the origin, hot keys settle in L1"
            }
            ActKind::Stampede => "500 callers ask for one cold key at the same instant",
            ActKind::RedisDown => {
                "Redis is killed; reads go on from L1 and S3, writes go on with warnings"
            }
            ActKind::RedisBack => {
                "Redis restarts empty; the tier reconnects, reads refill it from S3"
            }
            ActKind::OriginFailing => {
                "every origin call fails; fail-safe serves the last values, flagged stale"
            }
            ActKind::OriginBack => "the origin answers again; stale values are refreshed",
        }
    }

    fn before(&self) -> Before {
        Before {
            stats: self.workload.cache.stats(),
            warnings: self.warnings.warnings() + self.warnings.errors(),
            origin_calls: self.workload.origin.calls(),
        }
    }

    /// Starts an act; `Err` with the reason when it cannot be played.
    async fn begin(&mut self, act: ActKind, report: &mut ActReport) -> Result<(), String> {
        match act {
            ActKind::ColdStart | ActKind::OriginBack => {
                self.workload.origin.set_failing(false);
                Ok(())
            }
            ActKind::Stampede => {
                self.stampede(report).await;
                Ok(())
            }
            ActKind::RedisDown => {
                let server = self.private_redis()?;
                tokio::task::block_in_place(|| server.stop())
                    .map_err(|error| format!("cannot stop Redis: {}", error_chain(&error)))
            }
            ActKind::RedisBack => {
                let server = self.private_redis()?;
                tokio::task::block_in_place(|| server.restart())
                    .map_err(|error| format!("cannot restart Redis: {}", error_chain(&error)))
            }
            ActKind::OriginFailing => {
                self.workload.read_keys.take();
                self.workload.origin.set_failing(true);
                Ok(())
            }
        }
    }

    fn private_redis(&self) -> Result<&tierkit_services::RedisServer, String> {
        self.redis.private().ok_or_else(|| {
            "Redis was given with --redis-url: the demo never stops a server it did not start"
                .to_owned()
        })
    }

    /// The stampede: every caller waits at a barrier, then all ask for the same cold key.
    async fn stampede(&mut self, report: &mut ActReport) {
        let rank_id = self.workload.keys.len() as u64; // outside the workload's keys
        let key: Arc<str> = Arc::from(format!("product:{rank_id}"));
        let barrier = Arc::new(Barrier::new(STAMPEDE_CALLERS));
        let began = Instant::now();
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..STAMPEDE_CALLERS {
            let cache = self.workload.cache.clone();
            let origin = self.workload.origin.clone();
            let barrier = Arc::clone(&barrier);
            let key = Arc::clone(&key);
            callers.spawn(async move {
                barrier.wait().await;
                let hit = cache
                    .get_or_fetch(&*key, move || async move {
                        origin.load(rank_id, STAMPEDE_QUERY).await
                    })
                    .await;
                hit.map(|hit| (hit.is_coalesced(), hit.source()))
            });
        }
        let (mut answered, mut coalesced, mut from_l1, mut failed) = (0, 0, 0, 0);
        while let Some(joined) = callers.join_next().await {
            match joined {
                Ok(Ok((joined_flight, source))) => {
                    answered += 1;
                    coalesced += usize::from(joined_flight);
                    from_l1 += usize::from(source == tierkit::Source::L1);
                }
                _ => failed += 1,
            }
        }
        let calls = self.workload.origin.calls_for(rank_id);
        report.lines.push(format!(
            "{STAMPEDE_CALLERS} callers of {key} (a {} ms query): {calls} origin call; \
             {answered} answered ({coalesced} by joining the one flight, {from_l1} from L1 \
             once it was stored), {failed} failed, all within {}",
            STAMPEDE_QUERY.as_millis(),
            format_latency(began.elapsed())
        ));
        self.checks.push(Check {
            what: format!("a stampede of {STAMPEDE_CALLERS} callers makes one origin call"),
            passed: calls == 1 && failed == 0,
        });
    }

    /// What an act showed, from the seconds it covered.
    fn end(&mut self, act: ActKind, start: u64, end: u64, before: &Before, report: &mut ActReport) {
        let recorder = &self.workload.recorder;
        let (from, to) = (start as usize, end as usize);
        let reads = recorder.sum(from, to, |s| s.requests());
        let served = |source: Served| recorder.sum(from, to, |s| s.served(source));
        let errors = recorder.sum(from, to, |s| s.errors.load(Relaxed));
        let stats = self.workload.cache.stats();
        let origin_calls = self.workload.origin.calls() - before.origin_calls;
        let warnings = self.warnings.warnings() + self.warnings.errors() - before.warnings;
        let shares = format!(
            "{} reads: L1 {}, L2 {}, L3 {}, origin {}; {} failed",
            thousands(reads),
            percent(served(Served::L1), reads),
            percent(served(Served::L2), reads),
            percent(served(Served::L3), reads),
            percent(served(Served::Origin), reads),
            thousands(errors)
        );
        match act {
            ActKind::ColdStart => {
                let first = recorder.second(from);
                let last = recorder.second(to.saturating_sub(1));
                report.lines.push(shares);
                report.lines.push(format!(
                    "{} origin calls; L1 served {} of the first second's reads, {} of the last second's",
                    thousands(origin_calls),
                    percent(first.served(Served::L1), first.requests()),
                    percent(last.served(Served::L1), last.requests()),
                ));
            }
            ActKind::Stampede => {}
            ActKind::RedisDown => {
                let slowest = (from..to)
                    .map(|s| recorder.second(s).latency.max())
                    .max()
                    .unwrap_or_default();
                let writes = recorder.sum(from, to, |s| s.writes.load(Relaxed));
                let write_errors = recorder.sum(from, to, |s| s.write_errors.load(Relaxed));
                let redis_write_errors = stats.write_errors[0] - before.stats.write_errors[0];
                // A read waits at most for Redis's timeout, then S3's, and never past the
                // hard timeout; a second more for a loaded machine's scheduling.
                let bound =
                    (REDIS_TIMEOUT + S3_TIMEOUT).min(self.hard_timeout) + Duration::from_secs(1);
                report.lines.push(shares);
                report.lines.push(format!(
                    "slowest read {} (each Redis call fails within {}, each S3 call within {}, \
                     and no read waits past {})",
                    format_latency(slowest),
                    format_latency(REDIS_TIMEOUT),
                    format_latency(S3_TIMEOUT),
                    format_latency(self.hard_timeout)
                ));
                self.checks.push(Check {
                    what: "no read waits past its timeouts while Redis is down".to_owned(),
                    passed: slowest <= bound,
                });
                report.lines.push(format!(
                    "writes: {} Ok, {} failed; {} Redis writes failed (of sets and of loaded \
                     values), each logged as a warning ({} warnings in all)",
                    thousands(writes),
                    thousands(write_errors),
                    thousands(redis_write_errors),
                    thousands(warnings)
                ));
                if let Some(latest) = self.warnings.latest() {
                    report.lines.push(format!("latest warning: {latest}"));
                }
            }
            ActKind::RedisBack => {
                let first_l2 = (from..to).find(|&s| recorder.second(s).served(Served::L2) > 0);
                report.lines.push(shares);
                report.lines.push(match first_l2 {
                    Some(second) => format!(
                        "L2 served reads again {}; S3 served {} reads, each refilling Redis",
                        if second == from {
                            "within a second of the restart".to_owned()
                        } else {
                            format!("{} s after the restart", second - from)
                        },
                        thousands(served(Served::L3))
                    ),
                    None => "L2 served no read yet: the tier is still reconnecting".to_owned(),
                });
            }
            ActKind::OriginFailing => {
                let keys = self.workload.origin.keys_called_while_failing();
                let hottest = self.workload.origin.failing_calls_for(0);
                let fail_safe = stats.fail_safe_activations.iter().sum::<u64>()
                    - before.stats.fail_safe_activations.iter().sum::<u64>();
                report.lines.push(shares);
                report.lines.push(format!(
                    "fail-safe: {} failed origin calls were answered with the previous value, \
                     and {} reads more from the throttle window, without a call; {} background \
                     refreshes failed and kept their value",
                    thousands(fail_safe),
                    thousands(stats.throttled_serves - before.stats.throttled_serves),
                    thousands(stats.refreshes_failed - before.stats.refreshes_failed),
                ));
                // A key calls the origin at most once per throttle window it is read in (its
                // throttle outlives an L1 eviction); the act spans at most this many windows.
                let read = self.workload.read_keys.take();
                let act = Duration::from_secs(end - start);
                let windows = act
                    .as_nanos()
                    .div_ceil(self.throttle.as_nanos().max(1))
                    .saturating_add(1);
                let windows = u64::try_from(windows).unwrap_or(u64::MAX);
                let bound = read.saturating_mul(windows);
                report.lines.push(format!(
                    "{} origin calls for {} keys read ({} called it), at most {} keys x {windows} \
                     throttle windows of {:.1} s = {}, whatever L1 (a tenth of the keys) evicted",
                    thousands(origin_calls),
                    thousands(read),
                    thousands(keys as u64),
                    thousands(read),
                    self.throttle.as_secs_f64(),
                    thousands(bound)
                ));
                self.checks.push(Check {
                    what: "a failing origin sees at most one call per key read per throttle window"
                        .to_owned(),
                    passed: origin_calls <= bound,
                });
                report.lines.push(format!(
                    "the hottest key, {}, read all the time, called it {hottest} times in {} s \
                     (once its value went stale: at most once per throttle window, plus one \
                     background refresh); the reads that failed were of keys never loaded: no \
                     value to serve",
                    self.workload.key(0),
                    end - start,
                ));
            }
            ActKind::OriginBack => {
                let last = recorder.second(to.saturating_sub(1));
                report.lines.push(shares);
                report.lines.push(format!(
                    "stale answers in the last second: {} of {}",
                    thousands(last.stale.load(Relaxed)),
                    thousands(last.requests())
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_act_gets_at_least_a_second_in_every_run_the_flags_allow() {
        for duration_s in 10..=3600 {
            let starts = starts(duration_s);
            assert_eq!(starts[0], 0);
            assert!(
                starts.windows(2).all(|pair| pair[0] < pair[1]),
                "{duration_s}: {starts:?}"
            );
            assert!(starts[starts.len() - 1] < duration_s, "{duration_s}");
        }
    }
}
