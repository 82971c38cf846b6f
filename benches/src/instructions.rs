//! Instruction counts under `valgrind --tool=callgrind` (G1i, and G1d and G1t in
//! instructions): deterministic where times are not.
//!
//! Each [`Scenario`] runs in a child process (this same binary, `--instructions NAME N`) under
//! callgrind, twice: with `N` reads and with `3N`. Building the fixture costs the same in both
//! runs, so the difference of the two totals divided by `2N` is the cost of one read, setup
//! excluded. The ratio of two scenarios' per-read counts is the figure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Row;
use crate::local::Scenario;

/// Reads in the shorter of a scenario's two runs (the longer one has three times as many).
pub const READS: usize = 20_000;

/// The environment variable that hands the child the private Redis server's URL.
pub const REDIS_URL_ENV: &str = "TIERKIT_BENCH_REDIS_URL";

/// Why instruction counts cannot be taken here, or `None` when `valgrind` runs.
pub fn unavailable() -> Option<String> {
    match Command::new("valgrind").arg("--version").output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "`valgrind --version` failed ({}); install it with `apt-get install valgrind`",
            output.status
        )),
        Err(err) => Some(format!(
            "valgrind is not installed ({err}); install it with `apt-get install valgrind` \
             (cargo xtask bench does so when run as root)"
        )),
    }
}

/// The total instruction count (`Ir`) of a callgrind output file: its `totals:` line (or
/// `summary:` in older formats).
pub fn total_instructions(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let rest = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Runs `exe --instructions SCENARIO reads` under callgrind and returns its instruction
/// total.
fn count(
    exe: &Path,
    scenario: Scenario,
    reads: usize,
    redis_url: &str,
    dir: &Path,
) -> Result<u64, String> {
    let out = dir.join(format!("callgrind.{}.{reads}.out", scenario.name()));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--quiet")
        .arg(exe)
        .arg("--instructions")
        .arg(scenario.name())
        .arg(reads.to_string())
        .env(REDIS_URL_ENV, redis_url)
        .status()
        .map_err(|err| format!("running valgrind failed: {err}"))?;
    if !status.success() {
        return Err(format!(
            "valgrind --tool=callgrind {} --instructions {} {reads} failed ({status})",
            exe.display(),
            scenario.name()
        ));
    }
    let text = std::fs::read_to_string(&out)
        .map_err(|err| format!("reading {} failed: {err}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    total_instructions(&text).ok_or_else(|| format!("no totals line in {}", out.display()))
}

/// Instructions per read of `scenario`: the difference of a run of `3 * READS` reads and a
/// run of `READS` reads, over `2 * READS`.
pub fn per_read(
    exe: &Path,
    scenario: Scenario,
    redis_url: &str,
    dir: &Path,
) -> Result<f64, String> {
    let short = count(exe, scenario, READS, redis_url, dir)?;
    let long = count(exe, scenario, 3 * READS, redis_url, dir)?;
    if long <= short {
        return Err(format!(
            "{}: {long} instructions for {} reads, not more than {short} for {READS}",
            scenario.name(),
            3 * READS
        ));
    }
    Ok((long - short) as f64 / (2 * READS) as f64)
}

/// The instruction rows: G1i (static stack), G1d (dyn stack) and G1t (typed), each against
/// its raw moka get; one skipped row when valgrind is missing.
pub fn rows(redis_url: &str, rows: &mut Vec<Row>) {
    if let Some(reason) = unavailable() {
        eprintln!("G1i: {reason}");
        rows.push(Row::skipped(
            "G1i",
            "L1 hits in instructions (callgrind)",
            reason,
        ));
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            rows.push(Row::not_measured(
                "G1i",
                format!("no path to this binary: {err}"),
            ));
            return;
        }
    };
    let dir = scratch_dir();
    if let Err(err) = std::fs::create_dir_all(&dir) {
        rows.push(Row::not_measured(
            "G1i",
            format!("cannot create {}: {err}", dir.display()),
        ));
        return;
    }
    let mut counts = Vec::new();
    for scenario in Scenario::ALL {
        match per_read(&exe, scenario, redis_url, &dir) {
            Ok(count) => counts.push((scenario, count)),
            Err(reason) => {
                rows.push(Row::not_measured("G1i", reason));
                return;
            }
        }
    }
    let of = |wanted: Scenario| {
        counts
            .iter()
            .find(|(scenario, _)| *scenario == wanted)
            .map_or(f64::NAN, |(_, count)| *count)
    };
    rows.push(Row::instructions(
        "G1i",
        "composed L1 hit (static) vs raw moka get, instructions",
        of(Scenario::Composed),
        of(Scenario::RawMoka),
        1.08,
    ));
    rows.push(Row::instructions(
        "G1d",
        "composed L1 hit (dyn) vs raw moka get, instructions",
        of(Scenario::Erased),
        of(Scenario::RawMoka),
        1.15,
    ));
    rows.push(Row::instructions(
        "G1t",
        "typed get_or_fetch L1 hit vs raw moka get of an Arc<V>, instructions",
        of(Scenario::Typed),
        of(Scenario::RawArc),
        1.10,
    ));
    rows.push(Row::instructions(
        "G2",
        "L1 miss + Redis hit vs raw fred GET, instructions (current_thread)",
        of(Scenario::L2Hit),
        of(Scenario::RawRedisGet),
        1.05,
    ));
}

/// Where the callgrind output files go while they are read: `target/callgrind` beside the
/// binary's `target` directory, else the system's temporary directory.
fn scratch_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("callgrind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_callgrind_output() {
        let output = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=main\n3 5\n\
                      totals: 123456\n";
        assert_eq!(total_instructions(output), Some(123_456));
        assert_eq!(total_instructions("summary: 42 7\n"), Some(42));
        assert_eq!(total_instructions("events: Ir\n"), None);
    }

    #[test]
    fn scenarios_round_trip_their_names() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::parse(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::parse("nothing"), None);
    }
}
