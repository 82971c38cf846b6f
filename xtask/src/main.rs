//! `cargo xtask`: developer and CI tasks for the tierkit workspace.
//!
//! Run `cargo xtask --help` for the subcommands. The alias lives in `.cargo/config.toml`; CI runs
//! `bash .ci/run`, which runs `cargo xtask ci`.
//!
//! To add a subcommand: add a variant to [`Task`], parse it in [`Task::parse`], describe it in
//! [`usage`], and build its [`Suite`] of [`runner::Step`]s in [`Task::suite`] (new steps go in
//! `steps.rs`; a step is either one command or a closure that runs several).

#![warn(clippy::missing_docs_in_private_items)]

mod json;
mod runner;
mod s3compat;
mod services;
mod steps;
mod uses;

use std::process::ExitCode;

use runner::{Suite, Workspace};

/// A subcommand of the xtask.
#[derive(Debug, PartialEq)]
enum Task {
    /// The whole CI suite.
    Ci,
    /// Formatting, clippy and dependency hygiene.
    Lint,
    /// The test step, with extra arguments for `cargo test`.
    Test(Vec<String>),
    /// The demo, with the arguments for the demo binary.
    Demo(Vec<String>),
    /// Private Redis services for running tests by hand.
    Services,
    /// The S3 tests against moto, with extra arguments for each `cargo test`.
    S3Compat(Vec<String>),
    /// The table of performance goals, with arguments for the bench binary (`--quick`).
    Bench(Vec<String>),
    /// Print the usage text.
    Help,
}

impl Task {
    /// Parses the command line (without the program name).
    fn parse(args: &[String]) -> Result<Self, String> {
        let Some((first, rest)) = args.split_first() else {
            return Ok(Task::Help);
        };
        let task = match first.as_str() {
            "ci" => Task::Ci,
            "lint" => Task::Lint,
            "demo" => return Ok(Task::Demo(rest.to_vec())),
            "services" => Task::Services,
            "test" => return Ok(Task::Test(rest.to_vec())),
            "s3-compat" => return Ok(Task::S3Compat(rest.to_vec())),
            "bench" => return Ok(Task::Bench(rest.to_vec())),
            "help" | "-h" | "--help" => Task::Help,
            other => return Err(format!("unknown subcommand `{other}`")),
        };
        match rest.first() {
            Some(extra) => Err(format!("`{first}` takes no arguments, got `{extra}`")),
            None => Ok(task),
        }
    }

    /// The steps this task runs, or `None` for [`Task::Help`].
    fn suite(&self) -> Option<Suite> {
        let (name, steps) = match self {
            Task::Ci => ("ci", ci_steps()),
            Task::Lint => ("lint", vec![steps::fmt(), steps::clippy(), steps::deps()]),
            Task::Test(extra) => ("test", vec![steps::test(extra)]),
            Task::Demo(extra) => ("demo", vec![steps::demo(extra)]),
            Task::Services => ("services", vec![steps::services()]),
            Task::S3Compat(extra) => ("s3-compat", vec![s3compat::moto(), s3compat::compat(extra)]),
            Task::Bench(extra) => ("bench", vec![steps::bench(extra)]),
            Task::Help => return None,
        };
        Some(Suite { name, steps })
    }
}

/// The steps of `cargo xtask ci`, in order.
fn ci_steps() -> Vec<runner::Step> {
    vec![
        steps::tools(),
        steps::fmt(),
        steps::clippy(),
        steps::build(),
        steps::deps(),
        steps::test(&[]),
        steps::demo_ci(),
        steps::doc(),
        steps::deny(),
    ]
}

/// The usage text, listing what each step of `ci` runs and the variables the tests get.
fn usage() -> String {
    let mut text = String::from(
        "cargo xtask: developer and CI tasks for the tierkit workspace

USAGE:
    cargo xtask <SUBCOMMAND> [ARGS...]

SUBCOMMANDS:
    ci        Run the whole check suite, as CI does (`bash .ci/run`). Steps run in this
              order; the first failure stops the suite and names the command to rerun:
",
    );
    for (index, step) in ci_steps().iter().enumerate() {
        text.push_str(&format!(
            "                {}. {:<7} {}\n",
            index + 1,
            step.name,
            step.summary
        ));
    }
    text.push_str(
        "              A summary table of the steps, their results and durations ends the run.

    lint      Only the fmt, clippy and deps steps of `ci` (fast: no build, tests or docs).

    test      Only the test step of `ci`: cargo test --workspace --all-features [ARGS...],
              with the Redis services below running; then how many tests ran against each
              service. Extra arguments go to `cargo test`; with -p/--package, --workspace is
              dropped.
              Example: cargo xtask test -p tierkit-core -- --nocapture

    demo [ARGS...]
              Run the demo (tierkit-demo, built in release): a read-through cache over moka,
              Redis and S3 in front of a slow origin, through a cold start, a stampede, a
              Redis outage and an origin outage, with a live line, a summary and a timeline.
              It starts a private redis-server (installed first when missing, as root) and
              the in-process S3 server, and removes both when it ends (Ctrl-C too).
              ARGS go to the demo: --duration SECS (default 30), --clients, --keys, --rate,
              --redis-url, --s3-endpoint/--bucket, --read-policy, --write-policy, --json;
              `cargo xtask demo --help` explains each. In `ci`: a debug build, 10 seconds.

    services  Start the Redis services of the test step, print `export` lines for the
              variables below, then wait: press Enter or Ctrl-D (Ctrl-C works too) to stop
              them. Paste the lines into another shell to run one test by hand, for instance:
                cargo test -p tierkit-services --test server -- --nocapture

    s3-compat Run the S3 tests once more against moto, an independent S3 implementation.
              Not part of `ci`: it needs PyPI the first time and takes a few minutes.
                1. moto    reuse moto[server] {MOTO} in target/s3-compat-venv, else create
                           that virtual environment (python3 -m venv) and pip install it
                           (about a minute)
                2. compat  build the tests, start the Redis services below (for the
                           three-tier tests) and moto_server -H 127.0.0.1 -p <free port>,
                           create bucket `tierkit` (an unsigned PUT /tierkit), then run,
                           with the TIERKIT_S3_* variables below and the Redis ones set:
                             cargo test -p tierkit-s3-server --all-features --test compat
                             cargo test -p tierkit-s3 --all-features --test NAME
                               (for each crates/s3/tests/NAME.rs)
                           then stop moto and Redis (pass or fail) and print a summary:
                           each command's result and time, the requests moto served,
                           and how many tests ran against each service.
              Extra arguments go to each `cargo test`, for instance: -- --nocapture.
              moto's log: target/s3-compat/moto-PORT.log, kept until the next run (which
              also kills a moto_server that a killed run left behind). Tests that need the
              in-process server (request counts, stop/restart, corrupted files) must skip
              themselves when TIERKIT_S3_ENDPOINT is set.

    bench     Run the table of performance goals in release (docs/performance.md): each time
              figure the median of tierkit/raw ratios over interleaved pairs of batches, each
              count exact, instructions counted under callgrind; starts a private
              redis-server and the in-process S3 server; prints the table and writes
              target/tierkit-bench.json, the chart target/tierkit-bench.svg and the
              Markdown table target/tierkit-bench.md. Installs redis-server and valgrind
              when missing (as root; without valgrind the instruction rows are skipped,
              with the reason). Fails when a row misses its goal. --quick: 15 pairs of
              small batches, about two minutes. Not part of `ci` (the bench crate is only
              built there).

    help      Print this text (also -h, --help, or no subcommand).

REDIS SERVICES:
    The test step (of `ci` and `test`), `s3-compat` and `services` start private
    redis-server processes with the tierkit-services crate: a standalone server, a 3-master
    cluster without replicas, and (test step and `services`) a sentinel deployment (a
    primary, its replica and one `redis-server --sentinel`, from the same package), on free
    ports of 127.0.0.1 (never a fixed port,
    never the default 6379), without persistence. They are stopped when the step ends, pass
    or fail, and the pids stopped are printed; processes a killed run left behind are killed
    before the next start. Logs: <cargo target dir>/tierkit-services/. When redis-server or
    redis-cli is missing, these steps and `tools` install Debian's redis-server package if
    running as root, and otherwise stop with the sudo command to run.

    Environment variables given to `cargo test`:
",
    );
    for (name, meaning) in services::ENV_VARS {
        text.push_str(&format!("      {name:<26} {meaning}\n"));
    }
    text.push_str(
        "    Wherever the xtask starts the services, it sets TIERKIT_REQUIRE_SERVICES: a test whose
    service is missing then fails. Without it (a plain `cargo test`), such a test prints
    `skipped: <reason>` and passes. Every test that runs against a service appends a line to
    the file TIERKIT_SERVICE_USES names; the xtask names a fresh one per run and prints, after
    the tests, how many ran against each service (redis, redis-cluster, redis-server for the
    private servers tests start, s3 for the endpoint of TIERKIT_S3_ENDPOINT). TIERKIT_REDIS_SERVER and TIERKIT_REDIS_CLI,
    when set, also choose the binaries the xtask runs.

S3 ENDPOINT:
    Without the variables below, the S3 tests start in-process S3 servers (tierkit-s3-server:
    s3s over a temporary directory, on free ports of 127.0.0.1). `s3-compat` sets them to
    point the tests at moto; set them by hand to use another endpoint:
{S3_VARS}
The exit status is 0 when every step passed, 1 when one failed, 2 for a usage error.
",
    );
    let s3_vars: String = s3compat::ENV_VARS
        .iter()
        .map(|(name, meaning)| format!("      {name:<26} {meaning}\n"))
        .collect();
    text.replace("{MOTO}", s3compat::MOTO_VERSION)
        .replace("{S3_VARS}", &s3_vars)
}

/// Runs the subcommand named on the command line.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = match Task::parse(&args) {
        Ok(task) => task,
        Err(err) => {
            eprintln!("error: {err}\n");
            eprint!("{}", usage());
            return ExitCode::from(2);
        }
    };
    let Some(suite) = task.suite() else {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    };
    let ws = Workspace::locate();
    if suite.run(&ws) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::Task;

    /// Parses a command line given as string slices.
    fn parse(args: &[&str]) -> Result<Task, String> {
        Task::parse(&args.iter().map(|arg| arg.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_subcommands() {
        assert_eq!(parse(&[]), Ok(Task::Help));
        assert_eq!(parse(&["--help"]), Ok(Task::Help));
        assert_eq!(parse(&["ci"]), Ok(Task::Ci));
        assert_eq!(parse(&["lint"]), Ok(Task::Lint));
        assert_eq!(parse(&["services"]), Ok(Task::Services));
        assert!(parse(&["services", "--cluster"]).is_err());
        assert_eq!(
            parse(&["test", "-p", "tierkit-core"]),
            Ok(Task::Test(vec!["-p".into(), "tierkit-core".into()]))
        );
        assert_eq!(
            parse(&["s3-compat", "--", "--nocapture"]),
            Ok(Task::S3Compat(vec!["--".into(), "--nocapture".into()]))
        );
        assert_eq!(parse(&["s3-compat"]), Ok(Task::S3Compat(vec![])));
        assert_eq!(
            parse(&["bench", "--quick"]),
            Ok(Task::Bench(vec!["--quick".into()]))
        );
        assert_eq!(
            parse(&["demo", "--duration", "20"]),
            Ok(Task::Demo(vec!["--duration".into(), "20".into()]))
        );
        assert!(parse(&["ci", "--fast"]).is_err());
        assert!(parse(&["deploy"]).is_err());
    }

    #[test]
    fn ci_suite_runs_every_step_in_order() {
        let suite = Task::Ci.suite().unwrap();
        let names: Vec<_> = suite.steps.iter().map(|step| step.name).collect();
        assert_eq!(
            names,
            [
                "tools", "fmt", "clippy", "build", "deps", "test", "demo", "doc", "deny"
            ]
        );
        // Redis is installed by `tools`, and runs around the test and demo steps.
        let summary = |name: &str| {
            suite
                .steps
                .iter()
                .find(|step| step.name == name)
                .map(|step| step.summary.clone())
                .unwrap()
        };
        assert!(summary("tools").contains("apt-get install -y redis-server"));
        assert!(summary("test").contains("private Redis server and 3-master cluster"));
        assert!(summary("demo").contains("-p tierkit-demo -- --duration 10"));
    }

    #[test]
    fn usage_documents_the_services_and_their_variables() {
        let text = super::usage();
        assert!(text.contains("\n    services  Start the Redis services"));
        for name in [
            "TIERKIT_REDIS_URL",
            "TIERKIT_REDIS_CLUSTER_URL",
            "TIERKIT_REDIS_SENTINEL_URL",
            "TIERKIT_REDIS_SERVER",
            "TIERKIT_REDIS_CLI",
            "TIERKIT_REQUIRE_SERVICES",
        ] {
            assert!(
                text.contains(&format!("      {name} ")),
                "{name} is not documented"
            );
        }
        assert!(text.contains("apt-get install -y redis-server"));
    }

    #[test]
    fn s3_compat_is_documented_and_not_part_of_ci() {
        let text = super::usage();
        assert!(text.contains("\n    s3-compat Run the S3 tests once more against moto"));
        assert!(text.contains("Not part of `ci`"));
        assert!(text.contains(&format!("moto[server] {}", super::s3compat::MOTO_VERSION)));
        for name in [
            "TIERKIT_S3_ENDPOINT",
            "TIERKIT_S3_REGION",
            "TIERKIT_S3_ACCESS_KEY",
            "TIERKIT_S3_SECRET_KEY",
            "TIERKIT_S3_BUCKET",
        ] {
            assert!(
                text.contains(&format!("      {name} ")),
                "{name} is not documented"
            );
        }
        assert!(
            !text.contains('{'),
            "a placeholder is left in the usage text"
        );
        let suite = Task::S3Compat(Vec::new()).suite().unwrap();
        let names: Vec<_> = suite.steps.iter().map(|step| step.name).collect();
        assert_eq!(names, ["moto", "compat"]);
        let ci = Task::Ci.suite().unwrap();
        assert!(ci.steps.iter().all(|step| !step.summary.contains("moto")));
    }
}
