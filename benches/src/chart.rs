//! The chart of the table's ratios, as a standalone SVG: one horizontal bar per ratio row
//! (its median), a whisker from the smallest to the largest pair, and the row's goal as a
//! tick; green where the goal is met, red where it is not.

use std::fmt::Write as _;

use crate::{Figure, Row};

/// Height of one bar's line, in pixels.
const LINE: f64 = 22.0;
/// Width of the label column.
const LABEL: f64 = 420.0;
/// Width of the plotting area.
const PLOT: f64 = 440.0;
/// Top margin (title and axis labels).
const TOP: f64 = 44.0;

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The bars: (label, median, min, max, goal, pass) of every ratio, throughput and instruction
/// row with a goal.
fn bars(rows: &[Row]) -> Vec<(String, f64, f64, f64, f64, bool)> {
    rows.iter()
        .filter_map(|row| {
            let limit = row.limit?;
            let (median, min, max, unit) = match &row.figure {
                Figure::Ratio(r) => (r.median, r.min, r.max, "time"),
                Figure::Throughput(r) => (r.median, r.min, r.max, "throughput"),
                Figure::Instructions { ratio, .. } => (*ratio, *ratio, *ratio, "instructions"),
                Figure::Count(_) | Figure::HitRatio { .. } | Figure::Skipped(_) => return None,
            };
            let mut what: String = row.what.chars().take(52).collect();
            if row.what.chars().count() > 52 {
                what.push('…');
            }
            let label = format!("{} ({unit}) {what}", row.id);
            Some((label, median, min, max, limit, row.pass))
        })
        .collect()
}

/// The SVG document of `rows`' ratios, titled `title`.
pub fn svg(rows: &[Row], title: &str) -> String {
    let bars = bars(rows);
    // The scale: at least 0..2x, more when a figure goes past it.
    let top = bars
        .iter()
        .flat_map(|(_, median, _, max, goal, _)| [*median, *max, *goal])
        .filter(|value| value.is_finite())
        .fold(2.0_f64, f64::max)
        .ceil();
    let x = |value: f64| LABEL + PLOT * (value.clamp(0.0, top) / top);
    let width = LABEL + PLOT + 20.0;
    let height = TOP + LINE * bars.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        out,
        "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"8\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    // Axis ticks every 0.5x, the 1.0x line dashed.
    let mut tick = 0.0;
    while tick <= top + 1e-9 {
        let at = x(tick);
        let dash = if (tick - 1.0).abs() < 1e-9 {
            " stroke-dasharray=\"4 3\" stroke=\"#555\""
        } else {
            " stroke=\"#ddd\""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{at:.1}\" y1=\"{:.1}\" x2=\"{at:.1}\" y2=\"{:.1}\"{dash}/>\n\
             <text x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{tick:.1}x</text>",
            TOP - 6.0,
            TOP + LINE * bars.len() as f64,
            TOP - 10.0
        );
        tick += 0.5;
    }
    for (index, (label, median, min, max, goal, pass)) in bars.iter().enumerate() {
        let y = TOP + LINE * index as f64;
        let colour = if *pass { "#3a8d4f" } else { "#c0392b" };
        let _ = writeln!(
            out,
            "<text x=\"8\" y=\"{:.1}\">{}</text>\n\
             <rect x=\"{LABEL}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" \
             fill-opacity=\"0.75\"/>\n\
             <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#222\"/>\n\
             <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\" \
             stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{median:.2}x</text>",
            y + 15.0,
            escape(label),
            y + 4.0,
            x(*median) - LABEL,
            LINE - 8.0,
            x(*min),
            y + LINE / 2.0,
            x(*max),
            y + LINE / 2.0,
            x(*goal),
            y + 1.0,
            x(*goal),
            y + LINE - 1.0,
            x(max.max(*goal)) + 4.0,
            y + 15.0,
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"8\" y=\"{:.1}\" fill=\"#555\">bar: median of the per-pair ratios \
         (tierkit / raw); whisker: smallest to largest pair; black tick: the goal</text>\n</svg>",
        height - 10.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ratio;

    #[test]
    fn every_ratio_row_with_a_goal_is_drawn() {
        let ratio = Ratio {
            median: 1.05,
            min: 1.0,
            max: 1.2,
            raw_ns: 10.0,
        };
        let rows = [
            Row::ratio("G1", "hit <fast> & cheap", ratio, 1.10),
            Row::ratio(
                "G2",
                "miss",
                Ratio {
                    median: 3.5,
                    ..ratio
                },
                1.05,
            ),
            Row::info("info", "scale only", ratio),
            Row::count("G5", "calls", 1.0, 1.0, "exactly 1"),
            Row::instructions("G1i", "instructions", 104.0, 100.0, 1.08),
        ];
        let svg = svg(&rows, "tierkit bench");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 3, "G1, G2, G1i");
        assert!(svg.contains("hit &lt;fast&gt; &amp; cheap"));
        assert!(svg.contains("#c0392b"), "the failing G2 is red");
        assert!(
            svg.contains("4.0x"),
            "the scale grows to the largest figure"
        );
    }
}
