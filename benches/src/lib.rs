//! The measuring harness of `cargo xtask bench`: paired, interleaved batches reported as
//! ratios (tierkit / raw library), and the table of goals they are judged by.
//!
//! Absolute times on shared machines swing by tens of percent from run to run; a ratio of two
//! batches run back to back in the same process does not. Every time figure here is therefore
//! the median, over at least 15 pairs, of `time(tierkit batch) / time(raw batch)`, with the
//! raw and tierkit batches interleaved (A B A B ...), each pair's order alternating so that
//! neither side always runs second.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

/// How long the run is: `--quick` (15 pairs, small batches) or full (31 pairs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Pairs of batches per figure.
    pub pairs: usize,
    /// Operations per batch.
    pub batch: usize,
}

impl Plan {
    /// The quick plan: 15 pairs of 20,000 operations.
    pub const QUICK: Plan = Plan {
        pairs: 15,
        batch: 20_000,
    };
    /// The full plan: 31 pairs of 100,000 operations.
    pub const FULL: Plan = Plan {
        pairs: 31,
        batch: 100_000,
    };
}

/// A ratio figure: the median of per-pair ratios, with the extremes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio {
    /// The median per-pair ratio.
    pub median: f64,
    /// The smallest per-pair ratio.
    pub min: f64,
    /// The largest per-pair ratio.
    pub max: f64,
    /// Nanoseconds per raw operation (median over the pairs), for scale only.
    pub raw_ns: f64,
}

/// Times `plan.pairs` pairs of batches of `raw` and `ours`, interleaved, and returns the ratio
/// `ours / raw`. Each closure runs one operation; its result goes through [`black_box`].
pub fn ratio<A, B, RA, RB>(plan: Plan, mut raw: A, mut ours: B) -> Ratio
where
    A: FnMut() -> RA,
    B: FnMut() -> RB,
{
    // Warm up both sides (caches, branch predictors, lazily built state).
    batch(plan.batch / 4, &mut raw);
    batch(plan.batch / 4, &mut ours);
    let mut ratios = Vec::with_capacity(plan.pairs);
    let mut raw_ns = Vec::with_capacity(plan.pairs);
    for pair in 0..plan.pairs {
        let (a, b) = if pair % 2 == 0 {
            let a = batch(plan.batch, &mut raw);
            (a, batch(plan.batch, &mut ours))
        } else {
            let b = batch(plan.batch, &mut ours);
            (batch(plan.batch, &mut raw), b)
        };
        ratios.push(b / a);
        raw_ns.push(a * 1e9 / plan.batch as f64);
    }
    Ratio {
        median: median(&mut ratios),
        min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        max: ratios.iter().copied().fold(0.0, f64::max),
        raw_ns: median(&mut raw_ns),
    }
}

/// Seconds taken by `n` runs of `op`.
fn batch<R>(n: usize, op: &mut impl FnMut() -> R) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        black_box(op());
    }
    start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// What a row measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Figure {
    /// A time ratio, judged against a ceiling.
    Ratio(Ratio),
    /// An exact count, judged against an expected value.
    Count(f64),
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The goal's id (`G1`, `G1t`...).
    pub id: &'static str,
    /// What is measured.
    pub what: String,
    /// The figure.
    pub figure: Figure,
    /// The goal, as printed (`<= 1.10x`, `0 extra`).
    pub goal: &'static str,
    /// Whether the figure meets the goal.
    pub pass: bool,
}

impl Row {
    /// A ratio row that passes when the median is at most `ceiling`.
    pub fn ratio(
        id: &'static str,
        what: impl Into<String>,
        ratio: Ratio,
        ceiling: f64,
        goal: &'static str,
    ) -> Row {
        Row {
            id,
            what: what.into(),
            pass: ratio.median <= ceiling,
            figure: Figure::Ratio(ratio),
            goal,
        }
    }

    /// A count row that passes when the count equals `expected`.
    pub fn count(
        id: &'static str,
        what: impl Into<String>,
        count: f64,
        expected: f64,
        goal: &'static str,
    ) -> Row {
        Row {
            id,
            what: what.into(),
            pass: count == expected,
            figure: Figure::Count(count),
            goal,
        }
    }
}

/// The table, as printed on the terminal.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<62} {:>26} {:>10} {:>6}",
        "id", "measurement", "ratio median [min, max] / count", "goal", "result"
    );
    for row in rows {
        let figure = match &row.figure {
            Figure::Ratio(r) => format!("{:.3}x [{:.3}, {:.3}]", r.median, r.min, r.max),
            Figure::Count(c) => format!("{c}"),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<62} {:>26} {:>10} {:>6}",
            row.id,
            row.what,
            figure,
            row.goal,
            if row.pass { "PASS" } else { "FAIL" }
        );
    }
    out
}

/// The table as JSON (no dependency: the format is small and fixed).
pub fn json(rows: &[Row], plan: Plan) -> String {
    let mut out = format!(
        "{{\n  \"pairs\": {},\n  \"batch\": {},\n  \"rows\": [\n",
        plan.pairs, plan.batch
    );
    for (index, row) in rows.iter().enumerate() {
        let figure = match &row.figure {
            Figure::Ratio(r) => format!(
                "\"median\": {:.4}, \"min\": {:.4}, \"max\": {:.4}, \"raw_ns\": {:.1}",
                r.median, r.min, r.max, r.raw_ns
            ),
            Figure::Count(c) => format!("\"count\": {c}"),
        };
        let _ = write!(
            out,
            "    {{\"id\": \"{}\", \"measurement\": \"{}\", {figure}, \"goal\": \"{}\", \"pass\": {}}}",
            row.id,
            row.what.replace('"', "'"),
            row.goal,
            row.pass
        );
        out.push_str(if index + 1 < rows.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn rows_pass_only_within_their_goal() {
        let at = |median| Ratio {
            median,
            min: median,
            max: median,
            raw_ns: 1.0,
        };
        assert!(Row::ratio("G", "at the ceiling", at(1.10), 1.10, "<= 1.10x").pass);
        assert!(!Row::ratio("G", "above it", at(1.11), 1.10, "<= 1.10x").pass);
        assert!(!Row::ratio("G", "not measured", at(f64::NAN), 1.10, "<= 1.10x").pass);
        assert!(Row::count("G", "exact", 1.0, 1.0, "exactly 1").pass);
        assert!(!Row::count("G", "one more", 2.0, 1.0, "exactly 1").pass);
        assert!(table(&[Row::count("G", "one more", 2.0, 1.0, "exactly 1")]).contains("FAIL"));
    }

    #[test]
    fn json_lists_every_row() {
        let rows = [
            Row::count("G1a", "allocations", 0.0, 0.0, "0 extra"),
            Row::ratio(
                "G1",
                "hit",
                Ratio {
                    median: 1.0,
                    min: 0.9,
                    max: 1.1,
                    raw_ns: 10.0,
                },
                1.1,
                "<= 1.10x",
            ),
        ];
        let text = json(&rows, Plan::QUICK);
        assert!(text.contains("\"G1a\"") && text.contains("\"G1\""));
        assert!(table(&rows).contains("PASS"));
    }
}
