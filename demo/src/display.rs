//! What the run prints while it runs: the acts as they start and end, and a live line
//! (on a terminal) with the last second's traffic.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::{Recorder, Served};

/// Where the narrative goes: standard output, or standard error when the summary is JSON
/// (standard output then holds the JSON document only). The live line is on standard error,
/// and only on a terminal.
#[derive(Clone)]
pub struct Display {
    bar: ProgressBar,
    json: bool,
}

impl Display {
    /// A display for a run of `duration`.
    pub fn new(duration: Duration, json: bool) -> Self {
        let bar = ProgressBar::new(duration.as_millis() as u64);
        if let Ok(style) = ProgressStyle::with_template("{elapsed:>3} [{bar:12.cyan/blue}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Display { bar, json }
    }

    /// Prints one line of the narrative, above the live line.
    pub fn say(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if !self.bar.is_hidden() {
            self.bar.suspend(|| self.print(line));
        } else {
            self.print(line);
        }
    }

    fn print(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// Removes the live line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Refreshes the live line four times a second until `stop` is set.
    pub async fn live(self, recorder: Arc<Recorder>, act: Arc<std::sync::Mutex<String>>) {
        if self.bar.is_hidden() {
            return;
        }
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticks.tick().await;
            let elapsed = recorder.elapsed();
            self.bar.set_position(elapsed.as_millis() as u64);
            let last = elapsed.as_secs().saturating_sub(1) as usize;
            let second = recorder.second(last);
            let reads = second.requests();
            let share = |source: Served| percent(second.served(source), reads);
            let p99 = second
                .latency
                .quantile(0.99)
                .map_or_else(|| "-".to_owned(), format_latency);
            let act = act
                .lock()
                .map(|act| act.clone())
                .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
            self.bar.set_message(format!(
                "{act} | {}/s: L1 {} L2 {} L3 {} origin {} ({} calls) | stale {} err {} | p99 {p99}",
                thousands(reads),
                share(Served::L1),
                share(Served::L2),
                share(Served::L3),
                share(Served::Origin),
                second.origin_calls.load(std::sync::atomic::Ordering::Relaxed),
                second.stale.load(std::sync::atomic::Ordering::Relaxed),
                second.errors.load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
    }
}

/// `part` of `whole` as a whole percentage (`-` when `whole` is zero).
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

/// A latency in the unit that suits it.
pub fn format_latency(latency: Duration) -> String {
    let micros = latency.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 10_000 {
        format!("{:.1} ms", micros as f64 / 1_000.0)
    } else {
        format!("{} ms", micros / 1_000)
    }
}

/// A count with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(percent(1, 3), "33%");
        assert_eq!(percent(1, 0), "-");
        assert_eq!(format_latency(Duration::from_micros(250)), "250 µs");
        assert_eq!(format_latency(Duration::from_micros(2_500)), "2.5 ms");
        assert_eq!(format_latency(Duration::from_millis(120)), "120 ms");
    }
}
