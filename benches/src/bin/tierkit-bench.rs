//! `cargo xtask bench`: the table of performance goals (see `docs/performance.md`).
//!
//! Usage: `tierkit-bench [--quick] [--json PATH] [--svg PATH] [--markdown PATH]`. Starts a private
//! `redis-server` (the binary named by `TIERKIT_REDIS_SERVER`, else the one on `PATH`) and the
//! in-process S3 server, measures every row, prints the table, and exits 1 when a row fails
//! its goal. `tierkit-bench --instructions SCENARIO N` is the child process the instruction
//! counts run under callgrind.

use std::process::ExitCode;

use tierkit_benches::instructions::{self, REDIS_URL_ENV};
use tierkit_benches::local::{self, ComposedFixture, RedisL2, Scenario, TypedFixture};
use tierkit_benches::remote::{self, Services};
use tierkit_benches::{Plan, Row, chart, json, markdown, table};
use tierkit_testkit::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What the command line asks for.
struct Args {
    plan: Plan,
    json: Option<String>,
    svg: Option<String>,
    markdown: Option<String>,
    /// Child mode: run one scenario's reads (under callgrind) and exit.
    instructions: Option<(String, usize)>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let value_of = |flag: &str| -> Result<Option<String>, String> {
            match args.iter().position(|arg| arg == flag) {
                None => Ok(None),
                Some(at) => args
                    .get(at + 1)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        let instructions = match args.iter().position(|arg| arg == "--instructions") {
            None => None,
            Some(at) => {
                let (Some(name), Some(reads)) = (args.get(at + 1), args.get(at + 2)) else {
                    return Err("--instructions needs a scenario and a number of reads".into());
                };
                let reads = reads
                    .parse()
                    .map_err(|err| format!("--instructions {name} {reads}: {err}"))?;
                Some((name.clone(), reads))
            }
        };
        for arg in args {
            let known = ["--quick", "--json", "--svg", "--markdown", "--instructions"];
            if arg.starts_with("--") && !known.contains(&arg.as_str()) {
                return Err(format!("unknown flag {arg} (known: {})", known.join(", ")));
            }
        }
        Ok(Args {
            plan: if args.iter().any(|arg| arg == "--quick") {
                Plan::QUICK
            } else {
                Plan::FULL
            },
            json: value_of("--json")?,
            svg: value_of("--svg")?,
            markdown: value_of("--markdown")?,
            instructions,
        })
    }
}

/// Child mode: `reads` reads of `scenario` against the Redis named by [`REDIS_URL_ENV`].
fn run_scenario(name: &str, reads: usize) -> ExitCode {
    let Some(scenario) = Scenario::parse(name) else {
        eprintln!("unknown scenario {name}");
        return ExitCode::FAILURE;
    };
    let Ok(url) = std::env::var(REDIS_URL_ENV) else {
        eprintln!("{REDIS_URL_ENV} is not set");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("no tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match scenario.run(
        reads,
        &RedisL2 {
            runtime: &runtime,
            url,
        },
    ) {
        Ok(hits) if hits == reads => ExitCode::SUCCESS,
        Ok(hits) => {
            eprintln!("{name}: {hits} of {reads} reads hit");
            ExitCode::FAILURE
        }
        Err(reason) => {
            eprintln!("{name}: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Where and with what the table was measured, for the JSON and the docs.
fn context() -> Vec<(&'static str, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let versions = ["moka", "fred", "aws-sdk-s3", "tokio"]
        .iter()
        .map(|name| format!("{name} {}", locked_version(&lock, name)))
        .collect::<Vec<_>>()
        .join(", ");
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vec![
        ("date", civil_date(seconds)),
        ("cpu", format!("{cpu} ({cores} cores)")),
        ("rustc", rustc),
        ("crates", versions),
        (
            "runtimes",
            "L1 hits: polled once, no runtime; one caller: tokio current_thread; G2c, G5: \
             multi_thread (2 workers); G6: 2 OS threads"
                .to_owned(),
        ),
    ]
}

/// The version of `name` in a `Cargo.lock`.
fn locked_version(lock: &str, name: &str) -> String {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == wanted
            && let Some(version) = lines
                .next()
                .and_then(|next| next.strip_prefix("version = \""))
                .and_then(|rest| rest.strip_suffix('"'))
        {
            return version.to_owned();
        }
    }
    "?".to_owned()
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds (days to civil date, proleptic Gregorian).
fn civil_date(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Every row of the table, measured against `services`.
fn measure(plan: Plan, services: &Services) -> Vec<Row> {
    let mut rows = Vec::new();
    let l2 = RedisL2 {
        runtime: &services.current,
        url: services.redis_url(),
    };
    eprintln!("measuring L1 hits ...");
    match ComposedFixture::new(&l2) {
        Ok(fixture) => local::composed_rows(plan, &fixture, &mut rows),
        Err(reason) => rows.push(Row::not_measured("G1", reason)),
    }
    match TypedFixture::new() {
        Ok(fixture) => local::typed_rows(plan, &fixture, &mut rows),
        Err(reason) => rows.push(Row::not_measured("G1t", reason)),
    }
    if let Err(reason) = local::refresh_rows(plan, &mut rows) {
        rows.push(Row::not_measured("G10", reason));
    }
    eprintln!("measuring two threads ...");
    if let Err(reason) = local::threads_rows(plan, &l2, &mut rows) {
        rows.push(Row::not_measured("G6", reason));
    }
    eprintln!("counting instructions under callgrind ...");
    instructions::rows(&services.redis_url(), &mut rows);
    eprintln!("measuring Redis and S3 ...");
    let hit_ratio_reads = if plan == Plan::QUICK {
        250_000
    } else {
        1_000_000
    };
    remote::rows(plan, services, hit_ratio_reads, &mut rows);
    rows
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match Args::parse(&args) {
        Ok(args) => args,
        Err(reason) => {
            eprintln!("tierkit-bench: {reason}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((name, reads)) = &args.instructions {
        return run_scenario(name, *reads);
    }
    let services = match Services::start() {
        Ok(services) => services,
        Err(reason) => {
            eprintln!(
                "tierkit-bench: the services could not be started: {reason}\n\
                 `cargo xtask bench` installs redis-server when it is missing (as root)"
            );
            return ExitCode::FAILURE;
        }
    };
    let plan = args.plan;
    let rows = measure(plan, &services);
    services.stop();
    let context = context();
    println!(
        "tierkit bench: {} pairs of {} operations per in-process ratio (median of tierkit/raw \
         per pair)",
        plan.pairs, plan.batch
    );
    for (name, value) in &context {
        println!("{name}: {value}");
    }
    println!();
    print!("{}", table(&rows));
    let date = context
        .iter()
        .find(|(name, _)| *name == "date")
        .map_or("", |(_, date)| date.as_str());
    let outputs = [
        (args.json.as_ref(), json(&rows, plan, &context)),
        (
            args.svg.as_ref(),
            chart::svg(&rows, &format!("tierkit / raw library, {date}")),
        ),
        (args.markdown.as_ref(), markdown(&rows, plan, &context)),
    ];
    for (path, text) in outputs {
        let Some(path) = path else { continue };
        if let Err(err) = std::fs::write(path, text) {
            eprintln!("could not write {path}: {err}");
            return ExitCode::FAILURE;
        }
        println!("written: {path}");
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| !row.pass)
        .map(|row| row.id)
        .collect();
    if failed.is_empty() {
        println!("every goal met");
        ExitCode::SUCCESS
    } else {
        println!("goals missed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(1_796_601_600), "2026-12-07");
    }

    #[test]
    fn locked_versions_are_found() {
        let lock = "[[package]]\nname = \"moka\"\nversion = \"0.12.16\"\n";
        assert_eq!(locked_version(lock, "moka"), "0.12.16");
        assert_eq!(locked_version(lock, "fred"), "?");
    }

    #[test]
    fn flags_are_parsed() {
        let args =
            |list: &[&str]| -> Vec<String> { list.iter().map(|a| (*a).to_owned()).collect() };
        let parsed = Args::parse(&args(&["--quick", "--json", "out.json"])).unwrap();
        assert_eq!(parsed.plan, Plan::QUICK);
        assert_eq!(parsed.json.as_deref(), Some("out.json"));
        let child = Args::parse(&args(&["--instructions", "typed", "20"])).unwrap();
        assert_eq!(child.instructions, Some(("typed".to_owned(), 20)));
        assert!(Args::parse(&args(&["--json"])).is_err());
        assert!(Args::parse(&args(&["--fast"])).is_err());
    }
}
