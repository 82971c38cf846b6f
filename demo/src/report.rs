//! The end of the run: the summary, the per-second timeline, and both as JSON.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{Value, json};
use tierkit::CacheStats;

use crate::acts::{ActReport, Check};
use crate::display::{format_latency, percent, thousands};
use crate::stats::{Histogram, Recorder, Second, Served, StaleKind};

/// Columns of the timeline at most: longer runs put several seconds in one column.
const MAX_COLUMNS: usize = 60;

/// Everything the report is made of.
pub struct Report<'a> {
    /// The run's settings, as printed at its start.
    pub settings: Vec<(&'static str, String)>,
    /// Seconds the workload ran.
    pub seconds: usize,
    /// What was recorded.
    pub recorder: &'a Recorder,
    /// The cache's counters at the end.
    pub stats: CacheStats,
    /// Origin calls in all.
    pub origin_calls: u64,
    /// Origin calls that failed.
    pub origin_failures: u64,
    /// Warnings and errors logged.
    pub logged: (u64, u64),
    /// S3 requests, when the server was the demo's own.
    pub s3_requests: Option<u64>,
    /// The acts.
    pub acts: &'a [ActReport],
    /// The checks.
    pub checks: &'a [Check],
    /// Whether L2 is Redis alone (else the Redis + S3 composition).
    pub composed: bool,
}

/// The name of a source in the report.
fn source_name(source: Served, composed: bool) -> &'static str {
    match (source, composed) {
        (Served::L1, _) => "L1 (moka)",
        (Served::L2, false) => "L2 (Redis)",
        (Served::L2, true) => "L2 (Redis+S3)",
        (Served::L3, _) => "L3 (S3)",
        (Served::Origin, _) => "origin",
        (Served::Set, _) => "a concurrent set",
    }
}

impl Report<'_> {
    fn reads(&self) -> u64 {
        self.recorder.sum(0, self.seconds, Second::requests)
    }

    fn served(&self, source: Served) -> u64 {
        self.recorder.sum(0, self.seconds, |s| s.served(source))
    }

    fn errors(&self) -> u64 {
        self.recorder
            .sum(0, self.seconds, |s| s.errors.load(Relaxed))
    }

    /// The summary, as text.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let reads = self.reads();
        let errors = self.errors();
        let _ = writeln!(out, "\nsummary");
        let _ = writeln!(
            out,
            "  reads          {} in {} s ({}/s), {} failed ({})",
            thousands(reads),
            self.seconds,
            thousands(reads / self.seconds.max(1) as u64),
            thousands(errors),
            percent(errors, reads)
        );
        let _ = writeln!(
            out,
            "  {:<22}{:>10} {:>6} {:>9} {:>9} {:>9}",
            "served by", "reads", "share", "p50", "p99", "max"
        );
        let row = |out: &mut String, name: &str, count: u64, histogram: &Histogram| {
            let quantile = |q: f64| histogram.quantile(q).map_or("-".to_owned(), format_latency);
            let _ = writeln!(
                out,
                "    {:<20}{:>10} {:>6} {:>9} {:>9} {:>9}",
                name,
                thousands(count),
                percent(count, reads),
                quantile(0.5),
                quantile(0.99),
                if count == 0 {
                    "-".to_owned()
                } else {
                    format_latency(histogram.max())
                }
            );
        };
        for source in Served::ALL {
            if source == Served::L3 && self.composed {
                continue;
            }
            row(
                &mut out,
                source_name(source, self.composed),
                self.served(source),
                &self.recorder.by_source[source.index()],
            );
        }
        row(&mut out, "failed", errors, &self.recorder.failed);
        let stats = &self.stats;
        let _ = writeln!(
            out,
            "  origin calls   {} made ({} failed; {} background refreshes started)",
            thousands(self.origin_calls),
            thousands(self.origin_failures),
            thousands(stats.refreshes_started)
        );
        let tier_hits = self.served(Served::L1) + self.served(Served::L2) + self.served(Served::L3);
        let _ = writeln!(
            out,
            "                 avoided: {} reads answered by a tier, {} callers joined a flight \
             already running, {} stale values served while a refresh ran, {} fail-safe \
             serves without a call",
            thousands(tier_hits),
            thousands(stats.coalesced),
            thousands(self.recorder.stale(StaleKind::Revalidating)),
            thousands(stats.throttled_serves)
        );
        let _ = write!(out, "  stale answers ");
        for (index, kind) in StaleKind::ALL.into_iter().enumerate() {
            let separator = if index == 0 { " " } else { ", " };
            let _ = write!(
                out,
                "{separator}{} {}",
                kind.key(),
                thousands(self.recorder.stale(kind))
            );
        }
        let _ = writeln!(out);
        let writes = self
            .recorder
            .sum(0, self.seconds, |s| s.writes.load(Relaxed));
        let write_errors = self
            .recorder
            .sum(0, self.seconds, |s| s.write_errors.load(Relaxed));
        let _ = writeln!(
            out,
            "  writes (set)   {} Ok, {} failed; remote writes that failed: Redis {}, S3 {}",
            thousands(writes),
            thousands(write_errors),
            thousands(stats.write_errors[0]),
            thousands(stats.write_errors[1])
        );
        let _ = writeln!(
            out,
            "  tier errors    reads: Redis {} ({} timed out), S3 {} ({} timed out); \
             undecodable entries {}",
            thousands(stats.tier_errors[0]),
            thousands(stats.tier_timeouts[0]),
            thousands(stats.tier_errors[1]),
            thousands(stats.tier_timeouts[1]),
            thousands(stats.decode_errors_total(0) + stats.decode_errors_total(1))
        );
        let _ = writeln!(
            out,
            "  logged         {} warnings, {} errors (counted, not printed)",
            thousands(self.logged.0),
            thousands(self.logged.1)
        );
        if let Some(requests) = self.s3_requests {
            let _ = writeln!(out, "  S3 requests    {}", thousands(requests));
        }
        for check in self.checks {
            let mark = if check.passed { "ok" } else { "FAILED" };
            let _ = writeln!(out, "  check          {}: {mark}", check.what);
        }
        out
    }

    /// The columns of the timeline: (first second, seconds) each.
    fn columns(&self) -> Vec<(usize, usize)> {
        let width = self.seconds.div_ceil(MAX_COLUMNS).max(1);
        (0..self.seconds)
            .step_by(width)
            .map(|start| (start, width.min(self.seconds - start)))
            .collect()
    }

    /// The per-second timeline, as text: one column per second (or per few seconds), the
    /// acts marked above.
    pub fn timeline(&self) -> String {
        let columns = self.columns();
        let width = columns.first().map_or(1, |c| c.1);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\ntimeline: one column per {}, each row scaled to its own maximum",
            if width == 1 {
                "second".to_owned()
            } else {
                format!("{width} seconds")
            }
        );
        let mut acts_row = vec![' '; columns.len()];
        for act in self.acts {
            if let Some(column) = columns
                .iter()
                .position(|&(start, len)| (start..start + len).contains(&(act.start_s as usize)))
            {
                acts_row[column] = char::from_digit(act.number as u32, 10).unwrap_or('?');
            }
        }
        let _ = writeln!(
            out,
            "  {:<14}{}",
            "act",
            acts_row.iter().collect::<String>()
        );
        let series: [Series; 8] = [
            ("reads/s", Second::requests, false),
            ("L1 hits", |s| s.served(Served::L1), false),
            ("L2 hits", |s| s.served(Served::L2), false),
            ("L3 hits", |s| s.served(Served::L3), false),
            ("origin calls", |s| s.origin_calls.load(Relaxed), false),
            ("stale", |s| s.stale.load(Relaxed), false),
            ("errors", |s| s.errors.load(Relaxed), false),
            ("p99 (µs)", p99_micros, true),
        ];
        for (name, value, worst) in series {
            if self.composed && name == "L3 hits" {
                continue;
            }
            let values: Vec<u64> = columns
                .iter()
                .map(|&(start, len)| {
                    if worst {
                        (start..start + len)
                            .map(|s| value(self.recorder.second(s)))
                            .max()
                            .unwrap_or(0)
                    } else {
                        self.recorder.sum(start, start + len, value) / len as u64
                    }
                })
                .collect();
            let max = values.iter().copied().max().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:<14}{}  max {}",
                name,
                sparkline(&values),
                thousands(max)
            );
        }
        let _ = writeln!(out, "  acts:");
        for act in self.acts {
            let _ = writeln!(
                out,
                "    {} {:<15} {:>3}-{:<3} s{}",
                act.number,
                act.title,
                act.start_s,
                act.end_s,
                if act.skipped.is_some() {
                    " (skipped)"
                } else {
                    ""
                }
            );
        }
        out
    }

    /// The summary and the timeline as one JSON document.
    pub fn json(&self) -> Value {
        let latency = |histogram: &Histogram| {
            let micros = |q: f64| histogram.quantile(q).map(|d| d.as_micros() as u64);
            json!({
                "p50_us": micros(0.5),
                "p99_us": micros(0.99),
                "max_us": histogram.max().as_micros() as u64,
            })
        };
        let sources: Vec<Value> = Served::ALL
            .iter()
            .map(|&source| {
                json!({
                    "source": source_name(source, self.composed),
                    "reads": self.served(source),
                    "latency": latency(&self.recorder.by_source[source.index()]),
                })
            })
            .collect();
        let stale: serde_json::Map<String, Value> = StaleKind::ALL
            .iter()
            .map(|&kind| (kind.key().to_owned(), json!(self.recorder.stale(kind))))
            .collect();
        let seconds: Vec<Value> = (0..self.seconds)
            .map(|index| {
                let s = self.recorder.second(index);
                json!({
                    "second": index,
                    "reads": s.requests(),
                    "l1": s.served(Served::L1),
                    "l2": s.served(Served::L2),
                    "l3": s.served(Served::L3),
                    "origin": s.served(Served::Origin),
                    "origin_calls": s.origin_calls.load(Relaxed),
                    "stale": s.stale.load(Relaxed),
                    "errors": s.errors.load(Relaxed),
                    "writes": s.writes.load(Relaxed),
                    "write_errors": s.write_errors.load(Relaxed),
                    "p99_us": p99_micros(s),
                })
            })
            .collect();
        let settings: serde_json::Map<String, Value> = self
            .settings
            .iter()
            .map(|(name, value)| ((*name).to_owned(), json!(value)))
            .collect();
        let stats = &self.stats;
        json!({
            "settings": settings,
            "seconds": self.seconds,
            "reads": self.reads(),
            "read_errors": self.errors(),
            "failed_read_latency": latency(&self.recorder.failed),
            "served": sources,
            "origin": {
                "calls": self.origin_calls,
                "failed": self.origin_failures,
                "coalesced_callers": stats.coalesced,
                "refreshes_started": stats.refreshes_started,
                "refreshes_failed": stats.refreshes_failed,
                "throttled_serves": stats.throttled_serves,
                "fail_safe_activations": stats.fail_safe_activations.iter().sum::<u64>(),
            },
            "stale": stale,
            "writes": {
                "ok": self.recorder.sum(0, self.seconds, |s| s.writes.load(Relaxed)),
                "failed": self.recorder.sum(0, self.seconds, |s| s.write_errors.load(Relaxed)),
                "remote_write_errors": stats.write_errors,
            },
            "tier_errors": stats.tier_errors,
            "tier_timeouts": stats.tier_timeouts,
            "logged": { "warnings": self.logged.0, "errors": self.logged.1 },
            "s3_requests": self.s3_requests,
            "acts": self.acts,
            "checks": self.checks,
            "timeline": seconds,
        })
    }
}

/// A row of the timeline: its name, the value of one second, and whether a column of
/// several seconds shows their worst (else their mean).
type Series = (&'static str, fn(&Second) -> u64, bool);

/// The p99 latency of one second, in microseconds (0 when it saw no read).
fn p99_micros(second: &Second) -> u64 {
    second
        .latency
        .quantile(0.99)
        .map_or(0, |d: Duration| d.as_micros() as u64)
}

/// Values as a row of block characters, scaled to their maximum (a blank for zero).
pub fn sparkline(values: &[u64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&value| {
            if value == 0 || max == 0 {
                ' '
            } else {
                let level = (value as f64 / max as f64 * (BLOCKS.len() - 1) as f64).round();
                BLOCKS[(level as usize).min(BLOCKS.len() - 1)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_maximum() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), " ▂▅█");
        assert_eq!(sparkline(&[0, 0]), "  ");
        assert_eq!(sparkline(&[]), "");
    }
}
