//! The steps the subcommands are made of, in the order `cargo xtask ci` runs them.

use crate::json;
use crate::runner::{Cmd, Failure, Step};
use crate::services::{self, CLUSTER_MASTERS, Services};
use crate::uses::UseRecord;

/// The cargo-deny release that is installed when it is missing; `deny.toml` uses its format.
/// (0.20.2 builds with rustc 1.95; its MSRV is 1.88.)
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// Crates whose dependency graphs (dev-dependencies and every feature included) must stay
/// free of some backend clients, with the name prefixes they must not depend on.
const HYGIENE: &[(&str, &[&str])] = &[
    ("tierkit-policy", FORBIDDEN_IN_POLICY),
    ("tierkit-core", FORBIDDEN_IN_POLICY),
    ("tierkit-cache", FORBIDDEN_IN_POLICY),
    ("tierkit-moka", &["fred", "aws-", "aws_"]),
    ("tierkit-redis", &["aws-", "aws_"]),
    ("tierkit-testkit", &["moka", "fred", "aws-", "aws_"]),
];

/// Name prefixes of crates `tierkit-policy` must not depend on, even as a dev-dependency.
const FORBIDDEN_IN_POLICY: &[&str] = &["moka", "fred", "aws-", "aws_"];

/// The workspace package that is not a library crate and is not build-checked.
const XTASK_PACKAGE: &str = "xtask";

/// The command that installs the pinned cargo-deny.
fn install_cargo_deny() -> Cmd {
    Cmd::cargo([
        "install",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
        "--locked",
    ])
}

/// Makes sure the external tools the suite needs are installed: cargo-deny, and
/// `redis-server` and `redis-cli` for the tests.
pub fn tools() -> Step {
    let install = install_cargo_deny();
    let [apt_update, apt_install] = services::install_commands();
    Step::custom(
        "tools",
        format!(
            "cargo deny --version, else {}; redis-server and redis-cli, else (as root) {} \
             && {}",
            install.display(),
            apt_update.display(),
            apt_install.display()
        ),
        move |ws| {
            services::ensure_redis(ws)?;
            let probe = Cmd::cargo(["deny", "--version"]);
            if probe.succeeds_quietly(ws) {
                let found = probe.output(ws)?;
                let found = found.trim();
                println!("found {found}");
                if !found.ends_with(CARGO_DENY_VERSION) {
                    println!(
                        "note: deny.toml is written for cargo-deny {CARGO_DENY_VERSION}; \
                         if `cargo deny` rejects it, run: {} --force",
                        install.display()
                    );
                }
                return Ok(());
            }
            println!(
                "cargo-deny is not installed: installing cargo-deny {CARGO_DENY_VERSION} from \
                 crates.io (builds from source, about 2 to 4 minutes)"
            );
            println!("running: {}", install.display());
            install.run(ws).map_err(|err| Failure {
                command: err.command.clone(),
                reason: format!(
                    "{}\ninstalling cargo-deny failed: run the command below by hand, fix what it \
                     reports, then rerun the suite",
                    err.reason
                ),
            })?;
            if probe.succeeds_quietly(ws) {
                println!("installed {}", probe.output(ws)?.trim());
                Ok(())
            } else {
                Err(probe.failure(
                    "cargo-deny was installed but `cargo deny --version` still fails; \
                     is $CARGO_HOME/bin (usually ~/.cargo/bin) on PATH?"
                        .to_owned(),
                ))
            }
        },
    )
}

/// Checks formatting.
pub fn fmt() -> Step {
    Step::command("fmt", Cmd::cargo(["fmt", "--all", "--", "--check"]))
}

/// Lints every target of every crate, with every feature, warnings denied.
pub fn clippy() -> Step {
    Step::command(
        "clippy",
        Cmd::cargo([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )
}

/// Builds each workspace crate on its own (so a crate that only compiles thanks to features
/// another crate enables is caught), then `tierkit` without default features.
pub fn build() -> Step {
    Step::custom(
        "build",
        "cargo build -p <each workspace crate but xtask>; \
         cargo build -p tierkit --no-default-features; \
         cargo build -p tierkit --features redis; cargo build -p tierkit --features s3",
        |ws| {
            let metadata = Cmd::cargo(["metadata", "--no-deps", "--format-version", "1"]);
            let packages = member_packages(&metadata.output(ws)?)
                .map_err(|err| metadata.failure(format!("cannot read its output: {err}")))?;
            let mut commands: Vec<Cmd> = packages
                .iter()
                .filter(|name| *name != XTASK_PACKAGE)
                .map(|name| Cmd::cargo(["build", "-p", name]))
                .collect();
            commands.push(Cmd::cargo([
                "build",
                "-p",
                "tierkit",
                "--no-default-features",
            ]));
            commands.push(Cmd::cargo([
                "build",
                "-p",
                "tierkit",
                "--features",
                "redis",
            ]));
            commands.push(Cmd::cargo(["build", "-p", "tierkit", "--features", "s3"]));
            for cmd in &commands {
                println!("--> {}", cmd.display());
                cmd.run(ws)?;
            }
            Ok(())
        },
    )
}

/// Checks that each crate of [`HYGIENE`] depends on none of its forbidden backend clients
/// (moka, fred, the AWS SDK), through normal, build or dev dependencies, with every feature.
pub fn deps() -> Step {
    let summary = HYGIENE
        .iter()
        .map(|(krate, forbidden)| format!("{krate}: no {}*", forbidden.join("*, ")))
        .collect::<Vec<_>>()
        .join("; ");
    Step::custom(
        "deps",
        format!("cargo tree -p <crate> --all-features -e normal,build,dev: {summary}"),
        |ws| {
            for (krate, forbidden) in HYGIENE {
                let tree = Cmd::cargo([
                    "tree",
                    "-p",
                    krate,
                    "--all-features",
                    "-e",
                    "normal,build,dev",
                    "--prefix",
                    "none",
                ]);
                let output = tree.output(ws)?;
                let offending = forbidden_lines(&output, forbidden);
                if offending.is_empty() {
                    println!("{krate} depends on none of {}*", forbidden.join("*, "));
                    continue;
                }
                let mut reason = format!(
                    "{krate} must not depend on {}*, but its tree has:",
                    forbidden.join("*, ")
                );
                for line in offending {
                    reason.push_str("\n    ");
                    reason.push_str(line);
                }
                reason.push_str(&format!(
                    "\nsee which crate pulls one in with: cargo tree -p {krate} \
                     -e normal,build,dev -i <crate>"
                ));
                return Err(tree.failure(reason));
            }
            Ok(())
        },
    )
}

/// The `cargo test` command of the test step; `extra` goes to `cargo test`.
pub fn test_command(extra: &[String]) -> Cmd {
    let selects_packages = extra.iter().take_while(|arg| *arg != "--").any(|arg| {
        arg == "-p" || arg.starts_with("--package") || (arg.starts_with("-p") && arg.len() > 2)
    });
    let mut args = vec!["test".to_owned()];
    if !selects_packages {
        args.push("--workspace".to_owned());
    }
    args.push("--all-features".to_owned());
    args.extend(extra.iter().cloned());
    Cmd::cargo(args)
}

/// The services the tests of the test step run against, as their uses are recorded: the
/// standalone server, the cluster, the sentinel deployment, and the private servers tests
/// start themselves.
const TEST_SERVICES: &[&str] = &["redis", "redis-cluster", "redis-sentinel", "redis-server"];

/// Runs unit, integration and doc tests of the whole workspace; `extra` goes to `cargo test`.
/// A private standalone Redis server, a 3-master cluster and a sentinel deployment run
/// meanwhile, handed to the tests through the `TIERKIT_*` environment variables (with
/// `TIERKIT_REQUIRE_SERVICES`, so a test that needs a service runs or fails), and are stopped
/// afterwards, pass or fail. Then it prints how many tests ran against each service.
pub fn test(extra: &[String]) -> Step {
    let cmd = test_command(extra);
    let rerun = format!("cargo xtask test {}", extra.join(" "))
        .trim_end()
        .to_owned();
    Step::custom(
        "test",
        format!(
            "{}, with a private Redis server and {CLUSTER_MASTERS}-master cluster, and a \
             sentinel deployment (TIERKIT_* env)",
            cmd.display()
        ),
        move |ws| {
            let binaries = services::ensure_redis(ws)?;
            let running = Services::start(binaries, true)?;
            let uses = UseRecord::fresh("test")?;
            println!(
                "test environment (to reproduce one test by hand, keep `cargo xtask services`"
            );
            println!("running in another terminal and paste the lines it prints instead):");
            print!("{}", running.export_lines());
            let with_env = uses.apply(running.apply(cmd.clone()));
            println!("--> {}", with_env.display());
            let tested = with_env.run(ws);
            println!("{}", uses.summary(TEST_SERVICES));
            let stopped = running.shutdown();
            match tested {
                Err(err) => Err(Failure {
                    command: rerun.clone(),
                    reason: format!(
                        "{}\nthe Redis services were stopped; to rerun one test by hand, run \
                         `cargo xtask services` in another terminal, paste its export lines, \
                         then: {} <TEST NAME>",
                        err.reason.replace(&with_env.display(), &cmd.display()),
                        test_command(&[]).display()
                    ),
                }),
                Ok(()) => stopped,
            }
        },
    )
}

/// The demo binary's flags in CI: short, and a rate a debug build sustains on two cores.
pub const CI_DEMO_ARGS: [&str; 4] = ["--duration", "10", "--rate", "1000"];

/// Runs the demo (`tierkit-demo`, in release: the workload is CPU-bound), `extra` going to
/// the binary (`--duration 20`, `--help`...). Redis is installed first when missing; the demo
/// starts its own private `redis-server` from the binaries named by `TIERKIT_REDIS_SERVER`
/// and `TIERKIT_REDIS_CLI`, and the in-process S3 server, and removes both when it ends.
pub fn demo(extra: &[String]) -> Step {
    let mut args: Vec<String> = ["run", "--release", "-p", DEMO_PACKAGE, "--"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    args.extend(extra.iter().cloned());
    demo_step(Cmd::cargo(args))
}

/// The demo as a step of `ci`: a debug build (the test step has built its dependencies) and
/// [`CI_DEMO_ARGS`]. It fails when the demo does: a setup error, or a failed check (a
/// stampede making more than one origin call, a read waiting past its timeouts).
pub fn demo_ci() -> Step {
    let mut args: Vec<String> = ["run", "-p", DEMO_PACKAGE, "--"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    args.extend(CI_DEMO_ARGS.iter().map(|arg| (*arg).to_owned()));
    demo_step(Cmd::cargo(args))
}

/// The package of the demo binary.
const DEMO_PACKAGE: &str = "tierkit-demo";

/// `cmd` with `TIERKIT_REDIS_SERVER` and `TIERKIT_REDIS_CLI` naming `binaries`, for a
/// program that starts its own private servers.
fn naming_redis(cmd: Cmd, binaries: &tierkit_services::RedisBinaries) -> Cmd {
    cmd.env(
        tierkit_services::env::REDIS_SERVER,
        &binaries.server().display().to_string(),
    )
    .env(
        tierkit_services::env::REDIS_CLI,
        &binaries.cli().display().to_string(),
    )
}

/// The demo step running `cmd`, with the Redis binaries installed and named.
fn demo_step(cmd: Cmd) -> Step {
    Step::custom(
        "demo",
        format!(
            "{}, with {} and {} naming redis-server and redis-cli (it starts its own \
             private server and the in-process S3 server)",
            cmd.display(),
            tierkit_services::env::REDIS_SERVER,
            tierkit_services::env::REDIS_CLI
        ),
        move |ws| {
            let binaries = services::ensure_redis(ws)?;
            let cmd = naming_redis(cmd.clone(), &binaries);
            println!("--> {}", cmd.display());
            cmd.run(ws)
        },
    )
}

/// The table of performance goals: the bench binary in release, writing
/// `target/tierkit-bench.json`, the chart `target/tierkit-bench.svg` and the Markdown table
/// `target/tierkit-bench.md`; `extra` goes to the
/// binary (`--quick`). Redis is installed first when missing (as for the tests): the binary
/// starts private `redis-server` processes from the binaries named by `TIERKIT_REDIS_SERVER`
/// and `TIERKIT_REDIS_CLI`. valgrind is installed when missing and this is root; without it
/// the binary skips the instruction rows and says why.
pub fn bench(extra: &[String]) -> Step {
    let mut args: Vec<String> = [
        "run",
        "--release",
        "-p",
        "tierkit-benches",
        "--bin",
        "tierkit-bench",
        "--",
        "--json",
        "target/tierkit-bench.json",
        "--svg",
        "target/tierkit-bench.svg",
        "--markdown",
        "target/tierkit-bench.md",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(extra.iter().cloned());
    let cmd = Cmd::cargo(args);
    Step::custom(
        "bench",
        format!(
            "{}, with {} and {} naming redis-server and redis-cli",
            cmd.display(),
            tierkit_services::env::REDIS_SERVER,
            tierkit_services::env::REDIS_CLI
        ),
        move |ws| {
            let binaries = services::ensure_redis(ws)?;
            services::ensure_valgrind(ws);
            let cmd = naming_redis(cmd.clone(), &binaries);
            println!("--> {}", cmd.display());
            cmd.run(ws)
        },
    )
}

/// Starts a standalone Redis server and a 3-master cluster, prints their `export` lines and
/// waits for Enter or the end of standard input, then stops them.
pub fn services() -> Step {
    Step::custom(
        "services",
        format!(
            "start a Redis server, a {CLUSTER_MASTERS}-master cluster and a sentinel \
             deployment, print their TIERKIT_* exports, stop them on Enter or end of input"
        ),
        |ws| {
            let binaries = services::ensure_redis(ws)?;
            let running = Services::start(binaries, true)?;
            println!();
            println!("# paste into a shell, then run tests by hand, for instance:");
            println!("#   {} <TEST NAME>", test_command(&[]).display());
            print!("{}", running.export_lines());
            println!();
            println!("press Enter (or Ctrl-D) to stop the services");
            let mut line = String::new();
            let read = std::io::stdin().read_line(&mut line);
            let stopped = running.shutdown();
            read.map_err(|err| Failure {
                command: "cargo xtask services".to_owned(),
                reason: format!("reading standard input failed: {err}"),
            })?;
            stopped
        },
    )
}

/// Builds the API documentation with rustdoc warnings denied.
pub fn doc() -> Step {
    Step::command(
        "doc",
        Cmd::cargo(["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )
}

/// Checks bans, licenses and sources with cargo-deny (`advisories` needs a network).
pub fn deny() -> Step {
    Step::command(
        "deny",
        Cmd::cargo(["deny", "check", "bans", "licenses", "sources"]),
    )
}

/// The names of the workspace member packages, from `cargo metadata --format-version 1`.
pub(crate) fn member_packages(metadata: &str) -> Result<Vec<String>, String> {
    let doc = json::parse(metadata)?;
    let members: Vec<&str> = doc
        .get("workspace_members")
        .and_then(json::Value::as_array)
        .ok_or("no `workspace_members` array")?
        .iter()
        .filter_map(json::Value::as_str)
        .collect();
    let packages = doc
        .get("packages")
        .and_then(json::Value::as_array)
        .ok_or("no `packages` array")?;
    let mut names = Vec::new();
    for package in packages {
        let id = package.get("id").and_then(json::Value::as_str);
        if id.is_some_and(|id| members.contains(&id)) {
            let name = package
                .get("name")
                .and_then(json::Value::as_str)
                .ok_or("a package has no `name`")?;
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        return Err("no workspace member found".to_owned());
    }
    Ok(names)
}

/// The distinct lines of `cargo tree --prefix none` output that name a forbidden crate
/// (a `(*)` mark for an already listed crate is dropped).
fn forbidden_lines<'a>(tree: &'a str, forbidden: &[&str]) -> Vec<&'a str> {
    let mut offending: Vec<&str> = Vec::new();
    for line in tree
        .lines()
        .map(|line| line.trim().trim_end_matches("(*)").trim_end())
    {
        let name = line.split_whitespace().next().unwrap_or("");
        let is_forbidden = forbidden.iter().any(|prefix| name.starts_with(prefix));
        if is_forbidden && !offending.contains(&line) {
            offending.push(line);
        }
    }
    offending
}

#[cfg(test)]
mod tests {
    use super::{forbidden_lines, member_packages, test, test_command};

    #[test]
    fn reads_member_names_from_metadata() {
        let metadata = r#"{
            "packages": [
                {"name": "tierkit-core", "id": "path+file:///w/crates/core#tierkit-core@0.1.0",
                 "dependencies": [{"name": "bytes"}]},
                {"name": "xtask", "id": "path+file:///w/xtask#0.0.0", "dependencies": []}
            ],
            "workspace_members": [
                "path+file:///w/crates/core#tierkit-core@0.1.0",
                "path+file:///w/xtask#0.0.0"
            ],
            "version": 1
        }"#;
        assert_eq!(
            member_packages(metadata).unwrap(),
            ["tierkit-core", "xtask"]
        );
        assert!(member_packages(r#"{"packages": [], "workspace_members": []}"#).is_err());
        assert!(member_packages("{}").is_err());
    }

    #[test]
    fn finds_forbidden_crates_in_a_tree() {
        let tree = "tierkit-policy v0.1.0 (/w/crates/policy)\n\
                    tierkit-moka v0.1.0 (/w/crates/moka)\n\
                    moka v0.12.16\n\
                    fred v10.1.0\n\
                    aws-sdk-s3 v1.157.0\n\
                    aws_lc_rs v1.0.0\n\
                    moka v0.12.16 (*)\n\
                    bytes v1.11.0\n\
                    awsome v1.0.0\n";
        assert_eq!(
            forbidden_lines(tree, super::FORBIDDEN_IN_POLICY),
            [
                "moka v0.12.16",
                "fred v10.1.0",
                "aws-sdk-s3 v1.157.0",
                "aws_lc_rs v1.0.0",
            ]
        );
        assert!(
            forbidden_lines(
                "tierkit-policy v0.1.0\nbytes v1.11.0\n",
                super::FORBIDDEN_IN_POLICY
            )
            .is_empty()
        );
    }

    #[test]
    fn test_step_keeps_workspace_unless_packages_are_chosen() {
        assert_eq!(
            test_command(&[]).display(),
            "cargo test --workspace --all-features"
        );
        let extra = ["-p", "tierkit-core", "--", "--nocapture"].map(String::from);
        assert_eq!(
            test_command(&extra).display(),
            "cargo test --all-features -p tierkit-core -- --nocapture"
        );
        let extra = ["--", "-p"].map(String::from);
        assert_eq!(
            test_command(&extra).display(),
            "cargo test --workspace --all-features -- -p"
        );
        assert_eq!(
            test(&[]).summary,
            "cargo test --workspace --all-features, with a private Redis server and \
             3-master cluster, and a sentinel deployment (TIERKIT_* env)"
        );
    }
}
