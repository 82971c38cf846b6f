//! The measuring harness of `cargo xtask bench`: paired, interleaved batches reported as
//! ratios (tierkit / raw library), and the table of goals they are judged by.
//!
//! Absolute times on shared machines swing by tens of percent from run to run; a ratio of two
//! batches run back to back in the same process does not. Every time figure here is therefore
//! the median, over at least 15 pairs, of `time(tierkit batch) / time(raw batch)`, with the
//! raw and tierkit batches interleaved (A B A B ...), each pair's order alternating so that
//! neither side always runs second.

pub mod chart;
pub mod instructions;
pub mod local;
pub mod remote;

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
    /// A time ratio (`tierkit / raw`), judged against a ceiling.
    Ratio(Ratio),
    /// A throughput ratio (`tierkit / raw`, the inverse of the time ratio it was measured
    /// as), judged against a floor.
    Throughput(Ratio),
    /// A ratio of instructions per operation counted under callgrind (deterministic).
    Instructions {
        /// `ours / raw`.
        ratio: f64,
        /// Instructions per raw operation.
        raw: f64,
        /// Instructions per tierkit operation.
        ours: f64,
    },
    /// An exact count, judged against an expected value.
    Count(f64),
    /// Two hit ratios in percent, tierkit's and the raw library's, judged by their distance.
    HitRatio {
        /// tierkit's hit ratio, in percent.
        ours: f64,
        /// The raw library's, in percent.
        raw: f64,
    },
    /// Not measured on this machine, for the reason given (a missing tool).
    Skipped(String),
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The goal's id (`G1`, `G1t`...), or `info` for a figure printed for scale.
    pub id: &'static str,
    /// What is measured.
    pub what: String,
    /// The figure.
    pub figure: Figure,
    /// The goal, as printed (`<= 1.10x`, `0 extra`).
    pub goal: String,
    /// The ratio goal as a number (a ceiling for time and instruction ratios, a floor for
    /// throughputs), for the chart.
    pub limit: Option<f64>,
    /// Whether the figure meets the goal.
    pub pass: bool,
}

impl Row {
    /// A time-ratio row that passes when the median is at most `ceiling`.
    pub fn ratio(id: &'static str, what: impl Into<String>, ratio: Ratio, ceiling: f64) -> Row {
        Row {
            id,
            what: what.into(),
            pass: ratio.median <= ceiling,
            figure: Figure::Ratio(ratio),
            goal: format!("<= {ceiling:.2}x"),
            limit: Some(ceiling),
        }
    }

    /// A throughput row, from the time ratio it was measured as: it passes when the median
    /// throughput ratio (`1 / time ratio`) is at least `floor`.
    pub fn throughput(id: &'static str, what: impl Into<String>, time: Ratio, floor: f64) -> Row {
        let throughput = Ratio {
            median: 1.0 / time.median,
            min: 1.0 / time.max,
            max: 1.0 / time.min,
            raw_ns: time.raw_ns,
        };
        Row {
            id,
            what: what.into(),
            pass: throughput.median >= floor,
            figure: Figure::Throughput(throughput),
            goal: format!(">= {floor:.2}x"),
            limit: Some(floor),
        }
    }

    /// A time ratio printed for scale, with no goal.
    pub fn info(id: &'static str, what: impl Into<String>, ratio: Ratio) -> Row {
        Row {
            id,
            what: what.into(),
            pass: true,
            figure: Figure::Ratio(ratio),
            goal: "-".to_owned(),
            limit: None,
        }
    }

    /// An instruction-ratio row that passes when `ours / raw` is at most `ceiling`.
    pub fn instructions(
        id: &'static str,
        what: impl Into<String>,
        ours: f64,
        raw: f64,
        ceiling: f64,
    ) -> Row {
        let ratio = ours / raw;
        Row {
            id,
            what: what.into(),
            pass: ratio <= ceiling,
            figure: Figure::Instructions { ratio, raw, ours },
            goal: format!("<= {ceiling:.2}x"),
            limit: Some(ceiling),
        }
    }

    /// A count row that passes when the count equals `expected`.
    pub fn count(
        id: &'static str,
        what: impl Into<String>,
        count: f64,
        expected: f64,
        goal: impl Into<String>,
    ) -> Row {
        Row {
            id,
            what: what.into(),
            pass: count == expected,
            figure: Figure::Count(count),
            goal: goal.into(),
            limit: None,
        }
    }

    /// A hit-ratio row that passes when tierkit's hit ratio is within `points` percentage
    /// points of the raw library's.
    pub fn hit_ratio(
        id: &'static str,
        what: impl Into<String>,
        ours: f64,
        raw: f64,
        points: f64,
    ) -> Row {
        Row {
            id,
            what: what.into(),
            pass: (ours - raw).abs() <= points,
            figure: Figure::HitRatio { ours, raw },
            goal: format!("within {points} pt"),
            limit: None,
        }
    }

    /// A row that could not be measured here for a reason outside tierkit (a missing tool);
    /// it does not fail the table, and the reason is printed.
    pub fn skipped(id: &'static str, what: impl Into<String>, reason: impl Into<String>) -> Row {
        Row {
            id,
            what: what.into(),
            pass: true,
            figure: Figure::Skipped(reason.into()),
            goal: "-".to_owned(),
            limit: None,
        }
    }

    /// A row whose measurement failed (a service that did not answer, a setup check): it
    /// fails the table and says why.
    pub fn not_measured(id: &'static str, reason: impl Into<String>) -> Row {
        let reason = reason.into();
        eprintln!("{id}: {reason}");
        Row {
            id,
            what: format!("not measured: {reason}"),
            pass: false,
            figure: Figure::Count(0.0),
            goal: "measured".to_owned(),
            limit: None,
        }
    }

    /// The figure as printed in the table.
    pub fn figure_text(&self) -> String {
        match &self.figure {
            Figure::Ratio(r) => format!("{:.3}x [{:.3}, {:.3}]", r.median, r.min, r.max),
            Figure::Throughput(r) => {
                format!("{:.3}x [{:.3}, {:.3}] tput", r.median, r.min, r.max)
            }
            Figure::Instructions { ratio, raw, ours } => {
                format!("{ratio:.3}x ({ours:.0}/{raw:.0} instr)")
            }
            Figure::Count(c) => format!("{c}"),
            Figure::HitRatio { ours, raw } => format!("{ours:.2}% vs {raw:.2}%"),
            Figure::Skipped(_) => "skipped".to_owned(),
        }
    }

    /// `PASS`, `FAIL`, or `SKIP`.
    pub fn result(&self) -> &'static str {
        match (&self.figure, self.pass) {
            (Figure::Skipped(_), _) => "SKIP",
            (_, true) => "PASS",
            (_, false) => "FAIL",
        }
    }
}

/// The table, as printed on the terminal; skipped rows are followed by their reason.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<74} {:>30} {:>10} {:>6}",
        "id", "measurement", "ratio median [min, max] / count", "goal", "result"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<5} {:<74} {:>30} {:>10} {:>6}",
            row.id,
            row.what,
            row.figure_text(),
            row.goal,
            row.result()
        );
        if let Figure::Skipped(reason) = &row.figure {
            let _ = writeln!(out, "      skipped: {reason}");
        }
    }
    out
}

/// The table as Markdown (for `docs/performance.md`), with the run's context above it.
pub fn markdown(rows: &[Row], plan: Plan, context: &[(&str, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} pairs of {} operations per in-process ratio  ",
        plan.pairs, plan.batch
    );
    for (name, value) in context {
        let _ = writeln!(out, "{name}: {value}  ");
    }
    out.push_str("\n| id | measurement | figure | goal | result |\n|---|---|---|---|---|\n");
    for row in rows {
        // `|` would end the cell, `<` would open an HTML tag (`Arc<dyn Backend>`).
        let mut what = row.what.replace('|', "\\|").replace('<', "&lt;");
        if let Figure::Skipped(reason) = &row.figure {
            let _ = write!(what, " (skipped: {})", reason.replace('|', "\\|"));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.id,
            what,
            row.figure_text().replace('|', "\\|").replace('<', "&lt;"),
            row.goal.replace('<', "&lt;"),
            row.result()
        );
    }
    out
}

/// A JSON string literal of `text`.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number for JSON: `null` where it is not finite.
fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "null".to_owned()
    }
}

/// The table as JSON (no dependency: the format is small and fixed), with the run's context.
pub fn json(rows: &[Row], plan: Plan, context: &[(&str, String)]) -> String {
    let mut out = format!(
        "{{\n  \"pairs\": {},\n  \"batch\": {},\n",
        plan.pairs, plan.batch
    );
    for (name, value) in context {
        let _ = writeln!(out, "  {}: {},", json_string(name), json_string(value));
    }
    out.push_str("  \"rows\": [\n");
    for (index, row) in rows.iter().enumerate() {
        let figure = match &row.figure {
            Figure::Ratio(r) | Figure::Throughput(r) => format!(
                "\"kind\": \"{}\", \"median\": {}, \"min\": {}, \"max\": {}, \"raw_ns\": {}",
                if matches!(row.figure, Figure::Ratio(_)) {
                    "time"
                } else {
                    "throughput"
                },
                json_number(r.median),
                json_number(r.min),
                json_number(r.max),
                json_number(r.raw_ns)
            ),
            Figure::Instructions { ratio, raw, ours } => format!(
                "\"kind\": \"instructions\", \"median\": {}, \"raw\": {}, \"ours\": {}",
                json_number(*ratio),
                json_number(*raw),
                json_number(*ours)
            ),
            Figure::Count(c) => format!("\"kind\": \"count\", \"count\": {}", json_number(*c)),
            Figure::HitRatio { ours, raw } => format!(
                "\"kind\": \"hit_ratio\", \"ours\": {}, \"raw\": {}",
                json_number(*ours),
                json_number(*raw)
            ),
            Figure::Skipped(reason) => {
                format!("\"kind\": \"skipped\", \"reason\": {}", json_string(reason))
            }
        };
        let _ = write!(
            out,
            "    {{\"id\": {}, \"measurement\": {}, {figure}, \"goal\": {}, \"result\": \"{}\"}}",
            json_string(row.id),
            json_string(&row.what),
            json_string(&row.goal),
            row.result()
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

    fn at(median: f64) -> Ratio {
        Ratio {
            median,
            min: median,
            max: median,
            raw_ns: 1.0,
        }
    }

    #[test]
    fn rows_pass_only_within_their_goal() {
        assert!(Row::ratio("G", "at the ceiling", at(1.10), 1.10).pass);
        assert!(!Row::ratio("G", "above it", at(1.11), 1.10).pass);
        assert!(!Row::ratio("G", "not measured", at(f64::NAN), 1.10).pass);
        assert!(Row::count("G", "exact", 1.0, 1.0, "exactly 1").pass);
        assert!(!Row::count("G", "one more", 2.0, 1.0, "exactly 1").pass);
        assert!(table(&[Row::count("G", "one more", 2.0, 1.0, "exactly 1")]).contains("FAIL"));
        assert!(Row::instructions("G", "fewer", 105.0, 100.0, 1.08).pass);
        assert!(!Row::instructions("G", "more", 109.0, 100.0, 1.08).pass);
        assert!(!Row::not_measured("G", "no server").pass);
        assert!(Row::hit_ratio("G7", "close", 74.0, 74.4, 0.5).pass);
        assert!(!Row::hit_ratio("G7", "apart", 73.0, 74.4, 0.5).pass);
    }

    #[test]
    fn throughput_is_the_inverse_of_the_time_ratio() {
        let time = Ratio {
            median: 1.25,
            min: 1.0,
            max: 2.0,
            raw_ns: 5.0,
        };
        let row = Row::throughput("G", "tput", time, 0.85);
        let Figure::Throughput(tput) = &row.figure else {
            panic!("not a throughput: {:?}", row.figure);
        };
        assert_eq!((tput.median, tput.min, tput.max), (0.8, 0.5, 1.0));
        assert!(!row.pass, "0.8x is below the 0.85x floor");
        assert!(Row::throughput("G", "tput", at(1.0 / 0.9), 0.85).pass);
    }

    #[test]
    fn skipped_rows_do_not_fail_and_say_why() {
        let row = Row::skipped("G1i", "instructions", "valgrind is not installed");
        assert!(row.pass);
        assert_eq!(row.result(), "SKIP");
        assert!(table(&[row]).contains("skipped: valgrind is not installed"));
    }

    #[test]
    fn json_lists_every_row_and_escapes_text() {
        let rows = [
            Row::count("G1a", "allocations", 0.0, 0.0, "0 extra"),
            Row::ratio("G1", "a \"quoted\" hit", at(1.0), 1.1),
            Row::instructions("G1i", "instructions", 110.0, 100.0, 1.08),
            Row::skipped("G1i", "instructions", "no valgrind"),
        ];
        let text = json(&rows, Plan::QUICK, &[("cpu", "AMD \\ EPYC".to_owned())]);
        assert!(text.contains("\"G1a\"") && text.contains("\"G1\""));
        assert!(text.contains("a \\\"quoted\\\" hit"), "{text}");
        assert!(text.contains("\"cpu\": \"AMD \\\\ EPYC\""), "{text}");
        assert!(text.contains("\"result\": \"FAIL\""));
        assert!(text.contains("\"reason\": \"no valgrind\""));
        assert_eq!(json_number(f64::NAN), "null");
        let md = markdown(&rows, Plan::QUICK, &[("cpu", "x".to_owned())]);
        assert_eq!(md.matches("\n| G1").count(), 4, "{md}");
        assert!(md.contains("(skipped: no valgrind)"));
        assert!(md.contains("&lt;= 1.10x") && !md.contains("| <="), "{md}");
        assert!(table(&rows).contains("PASS"));
    }
}
