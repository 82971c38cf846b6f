//! `cargo xtask s3-compat`: the S3 tests once more, against moto, an independent S3
//! implementation (from PyPI, in a virtual environment under `target/`), with private Redis
//! servers for the three-tier tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::{Cmd, Failure, Step, Workspace, format_duration, shell_quote};
use crate::services::{self, CLUSTER_MASTERS, Services};
use crate::steps;
use crate::uses::UseRecord;

/// The moto release installed (`moto[server]`, which brings `moto_server`).
pub const MOTO_VERSION: &str = "5.2.5";

/// The virtual environment moto is installed into, under the workspace root.
const VENV_DIR: &str = "target/s3-compat-venv";

/// Where moto's logs go, under the workspace root.
const LOG_DIR: &str = "target/s3-compat";

/// The bucket created on moto for the tests.
const BUCKET: &str = "tierkit";

/// The region given to the tests.
const REGION: &str = "us-east-1";

/// How long moto may take to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The package of the S3 tier, whose integration tests are run against moto.
const TIER_PACKAGE: &str = "tierkit-s3";

/// The tier's integration tests, relative to the workspace root.
const TIER_TESTS_DIR: &str = "crates/s3/tests";

/// The package and test target of the server crate's portable S3 checks.
const COMPAT_TEST: (&str, &str) = ("tierkit-s3-server", "compat");

/// The environment variables handed to the tests (the names `tierkit-s3-server` reads in
/// `S3ClientConfig::from_env`), with what each holds, for the usage text.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "TIERKIT_S3_ENDPOINT",
        "moto's base URL: http://127.0.0.1:PORT",
    ),
    ("TIERKIT_S3_REGION", "us-east-1"),
    (
        "TIERKIT_S3_ACCESS_KEY",
        "any key (moto does not check signatures)",
    ),
    ("TIERKIT_S3_SECRET_KEY", "any secret"),
    ("TIERKIT_S3_BUCKET", "tierkit, created before the tests run"),
];

/// The virtual environment's directory.
fn venv_dir(ws: &Workspace) -> PathBuf {
    ws.root.join(VENV_DIR)
}

/// A program of the virtual environment.
fn venv_bin(ws: &Workspace, program: &str) -> String {
    venv_dir(ws).join("bin").join(program).display().to_string()
}

/// The command that installs moto into the virtual environment.
fn pip_install(ws: &Workspace) -> Cmd {
    Cmd::new(
        &venv_bin(ws, "python"),
        [
            "-m".to_owned(),
            "pip".to_owned(),
            "install".to_owned(),
            "--disable-pip-version-check".to_owned(),
            "--quiet".to_owned(),
            format!("moto[server]=={MOTO_VERSION}"),
        ],
    )
}

/// The moto version installed in the virtual environment, if any.
fn installed_moto(ws: &Workspace) -> Option<String> {
    if !Path::new(&venv_bin(ws, "moto_server")).is_file() {
        return None;
    }
    let probe = Cmd::new(
        &venv_bin(ws, "python"),
        ["-c", "import sys, moto; sys.stdout.write(moto.__version__)"],
    );
    probe.succeeds_quietly(ws).then(|| probe.output(ws).ok())?
}

/// Makes sure moto is installed in the virtual environment: reuses it when the pinned version
/// is there, else creates the environment (`python3 -m venv`) and installs it with pip.
pub fn moto() -> Step {
    Step::custom(
        "moto",
        format!(
            "reuse moto {MOTO_VERSION} in {VENV_DIR}, else python3 -m venv {VENV_DIR} && \
             {VENV_DIR}/bin/python -m pip install 'moto[server]=={MOTO_VERSION}'"
        ),
        |ws| {
            if installed_moto(ws).as_deref() == Some(MOTO_VERSION) {
                println!("found moto {MOTO_VERSION} in {VENV_DIR}");
                return Ok(());
            }
            let python = Cmd::new("python3", ["--version"]);
            if !python.succeeds_quietly(ws) {
                return Err(python.failure(
                    "python3 is not installed (or not on PATH); install it with: \
                     apt-get install -y python3 python3-venv (with sudo unless root)"
                        .to_owned(),
                ));
            }
            let venv = venv_dir(ws);
            if !Path::new(&venv_bin(ws, "python")).is_file() {
                let create = Cmd::new(
                    "python3",
                    [
                        "-m".to_owned(),
                        "venv".to_owned(),
                        venv.display().to_string(),
                    ],
                );
                println!("creating a virtual environment: {}", create.display());
                if let Err(err) = create.run(ws) {
                    let _ = std::fs::remove_dir_all(&venv);
                    return Err(Failure {
                        command: err.command,
                        reason: format!(
                            "{}\npython3 cannot create a virtual environment; on Debian, \
                             install its venv module with: apt-get install -y python3-venv \
                             (with sudo unless root)",
                            err.reason
                        ),
                    });
                }
            }
            let install = pip_install(ws);
            println!(
                "installing moto {MOTO_VERSION} from PyPI (about a minute): {}",
                install.display()
            );
            let started = Instant::now();
            install.run(ws).map_err(|err| Failure {
                command: err.command.clone(),
                reason: format!(
                    "{}\ninstalling moto failed: check that PyPI is reachable, or remove {} \
                     and rerun",
                    err.reason,
                    venv.display()
                ),
            })?;
            match installed_moto(ws) {
                Some(version) if version == MOTO_VERSION => {
                    println!(
                        "installed moto {version} in {}",
                        format_duration(started.elapsed())
                    );
                    Ok(())
                }
                other => Err(install.failure(format!(
                    "pip finished but moto_server {MOTO_VERSION} is not in {} (found {other:?})",
                    venv.join("bin").display()
                ))),
            }
        },
    )
}

/// A running `moto_server`, killed when dropped.
struct Moto {
    /// The process.
    child: Child,
    /// Its port on 127.0.0.1.
    port: u16,
    /// Its log (standard output and error).
    log: PathBuf,
    /// The file naming its pid and ours, so that a later run can kill it if this xtask is
    /// killed before it can.
    pid_file: PathBuf,
}

impl Moto {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free port and waits until it answers.
    fn start(ws: &Workspace) -> Result<Self, Failure> {
        let port = free_port().map_err(|reason| Failure {
            command: "ss -tan".to_owned(),
            reason,
        })?;
        let log_dir = ws.root.join(LOG_DIR);
        kill_stale(&log_dir);
        let log = log_dir.join(format!("moto-{port}.log"));
        let pid_file = log_dir.join(format!("moto-{port}.pid"));
        let program = venv_bin(ws, "moto_server");
        let port_text = port.to_string();
        let display = Cmd::new(&program, ["-H", "127.0.0.1", "-p", &port_text]).display();
        let failure = |reason: String| Failure {
            command: display.clone(),
            reason,
        };
        std::fs::create_dir_all(&log_dir)
            .map_err(|err| failure(format!("creating {} failed: {err}", log_dir.display())))?;
        let out = File::create(&log)
            .map_err(|err| failure(format!("creating {} failed: {err}", log.display())))?;
        let err_out = out
            .try_clone()
            .map_err(|err| failure(format!("opening {} failed: {err}", log.display())))?;
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port_text])
            .current_dir(&ws.root)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .map_err(|err| failure(format!("could not start {program}: {err}")))?;
        let _ = std::fs::write(
            &pid_file,
            format!("moto={}\nowner={}\n", child.id(), std::process::id()),
        );
        let mut moto = Self {
            child,
            port,
            log,
            pid_file,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(failure(format!(
                    "moto_server exited while starting ({status}); its log ({}) ends with:\n{}",
                    moto.log.display(),
                    log_tail(&moto.log)
                )));
            }
            if http(port, "GET", "/").is_ok() {
                break;
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(failure(format!(
                    "moto_server did not answer within {READY_TIMEOUT:?}; it was killed. Its \
                     log ({}) ends with:\n{}",
                    moto.log.display(),
                    log_tail(&moto.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "started moto_server (pid {}) on 127.0.0.1:{port} in {}; log: {}",
            moto.child.id(),
            format_duration(started.elapsed()),
            moto.log.display()
        );
        Ok(moto)
    }

    /// The base URL.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment variables that point the tests at this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.endpoint(),
            REGION.to_owned(),
            "tierkit-compat".to_owned(),
            "tierkit-compat-secret".to_owned(),
            BUCKET.to_owned(),
        ];
        ENV_VARS.iter().map(|(name, _)| *name).zip(values).collect()
    }

    /// Kills the process and waits for it; fails if it is still there.
    fn stop(mut self) -> Result<u32, Failure> {
        let pid = self.child.id();
        let _ = self.child.kill();
        let waited = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
        let gone = !Path::new(&format!("/proc/{pid}")).exists();
        match waited {
            Ok(_) if gone => Ok(pid),
            Ok(_) => Err(Failure {
                command: format!("ps -p {pid}"),
                reason: format!("moto_server {pid} is still there after it was killed"),
            }),
            Err(err) => Err(Failure {
                command: format!("kill {pid}"),
                reason: format!("waiting for moto_server {pid} failed: {err}"),
            }),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Kills the `moto_server` processes that earlier runs started and could not stop (the xtask
/// was killed): those named by a `moto-PORT.pid` file in `log_dir` whose owner is gone (only
/// where `/proc` tells). Then removes the logs of earlier runs that are over. Best effort.
fn kill_stale(log_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return;
    };
    let paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    for path in &paths {
        if path.extension().is_none_or(|ext| ext != "pid") {
            continue;
        }
        let Some((moto, owner)) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| parse_pid_file(&text))
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue; // another run, still going
        }
        let cmdline = std::fs::read(format!("/proc/{moto}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("moto_server") {
            let killed = Command::new("kill")
                .args(["-9", &moto.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if killed {
                println!("killed moto_server {moto}, left behind by an earlier run");
            }
        }
        let _ = std::fs::remove_file(path);
    }
    for log in &paths {
        let is_log = log.extension().is_some_and(|ext| ext == "log");
        if is_log && !log.with_extension("pid").exists() {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// The moto pid and owner pid of a pid file: `moto=PID\nowner=PID\n`.
fn parse_pid_file(text: &str) -> Option<(u32, u32)> {
    let mut moto = None;
    let mut owner = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("moto", pid)) => moto = pid.trim().parse().ok(),
            Some(("owner", pid)) => owner = pid.trim().parse().ok(),
            _ => {}
        }
    }
    Some((moto?, owner?))
}

/// A free port of 127.0.0.1, chosen by the operating system (by binding port 0) and released
/// before moto binds it.
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| format!("could not reserve a free port on 127.0.0.1: {err}"))
}

/// Sends an unsigned, bodiless HTTP/1.1 request to 127.0.0.1:`port` and returns the status
/// code and the whole response. moto does not check signatures.
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| format!("connecting to {addr} failed: {err}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("sending to {addr} failed: {err}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|err| format!("reading from {addr} failed: {err}"))?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = status_code(&response)
        .ok_or_else(|| format!("{addr} answered something that is not HTTP: {response:?}"))?;
    Ok((status, response))
}

/// The status code of an HTTP/1.x response.
fn status_code(response: &str) -> Option<u16> {
    let mut words = response.lines().next()?.split_whitespace();
    words
        .next()
        .filter(|version| version.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

/// The last lines of `log`, indented, for a message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        return "    (empty)".to_owned();
    }
    tail.iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `line` without its ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// What moto's access log says it served: requests by method, and how many were answered
/// with a 4xx or 5xx status.
#[derive(Debug, Default, PartialEq)]
struct Served {
    /// Requests by HTTP method.
    by_method: BTreeMap<String, u64>,
    /// Requests answered with a 4xx or 5xx status.
    errors: u64,
}

impl Served {
    /// Reads werkzeug's access log lines: `127.0.0.1 - - [date] "GET /b/k HTTP/1.1" 200 -`
    /// (it colours some with ANSI escape sequences, even in a file).
    fn parse(log: &str) -> Self {
        let mut served = Self::default();
        for line in log.lines().map(strip_ansi) {
            let mut quoted = line.splitn(3, '"');
            let (Some(_), Some(request), Some(rest)) =
                (quoted.next(), quoted.next(), quoted.next())
            else {
                continue;
            };
            let Some(method) = request.split_whitespace().next() else {
                continue;
            };
            let Some(status) = rest
                .split_whitespace()
                .next()
                .and_then(|status| status.parse::<u16>().ok())
            else {
                continue;
            };
            if !request.ends_with("HTTP/1.1") && !request.ends_with("HTTP/1.0") {
                continue;
            }
            *served.by_method.entry(method.to_owned()).or_default() += 1;
            if status >= 400 {
                served.errors += 1;
            }
        }
        served
    }

    /// `412 requests: DELETE 30, GET 200, ...; 12 answered 4xx/5xx`.
    fn summary(&self) -> String {
        let total: u64 = self.by_method.values().sum();
        let methods: Vec<String> = self
            .by_method
            .iter()
            .map(|(method, count)| format!("{method} {count}"))
            .collect();
        format!(
            "{total} requests ({}); {} answered with 4xx/5xx",
            methods.join(", "),
            self.errors
        )
    }
}

/// Tests skipped against moto, each for a difference found in moto itself: (test file of the
/// tier crate, test name filter, reason).
const MOTO_SKIPS: &[(&str, &str, &str)] = &[(
    "conformance",
    "s3_alone::concurrent_writers_same_key",
    "moto 5.2.5 answers some concurrent PUTs of one key with a 500 (a race in its ETag code, \
     moto/s3/models.py); the tier reports them as transient errors, as it should",
)];

/// The `cargo test` commands run against moto: the server crate's portable checks, then each
/// integration test file of the tier crate (when it is a workspace member). `extra` goes to
/// each (with `build_only`, only its cargo arguments, and the tests are only built: `--no-run`).
fn test_commands(tier_tests: &[String], extra: &[String], build_only: bool) -> Vec<Cmd> {
    let mut targets = vec![(COMPAT_TEST.0, COMPAT_TEST.1.to_owned())];
    targets.extend(tier_tests.iter().map(|name| (TIER_PACKAGE, name.clone())));
    targets
        .into_iter()
        .map(|(package, test)| {
            let mut args = vec![
                "test".to_owned(),
                "-p".to_owned(),
                package.to_owned(),
                "--all-features".to_owned(),
                "--test".to_owned(),
                test,
            ];
            if build_only {
                // The cargo arguments only: those after `--` go to the test binaries.
                args.extend(extra.iter().take_while(|arg| *arg != "--").cloned());
                args.push("--no-run".to_owned());
            } else {
                args.extend(extra.iter().cloned());
                for (file, filter, reason) in MOTO_SKIPS {
                    if package == TIER_PACKAGE && args.iter().any(|arg| arg == file) {
                        println!("note: skipping {filter} against moto: {reason}");
                        if !args.iter().any(|arg| arg == "--") {
                            args.push("--".to_owned());
                        }
                        args.push("--skip".to_owned());
                        args.push((*filter).to_owned());
                    }
                }
            }
            Cmd::cargo(args)
        })
        .collect()
}

/// The integration test files of the tier crate (the stems of `crates/s3/tests/*.rs`), sorted;
/// empty when the tier crate is not a workspace member.
fn tier_tests(ws: &Workspace) -> Result<Vec<String>, Failure> {
    let metadata = Cmd::cargo(["metadata", "--no-deps", "--format-version", "1"]);
    let members = steps::member_packages(&metadata.output(ws)?)
        .map_err(|err| metadata.failure(format!("cannot read its output: {err}")))?;
    if !members.iter().any(|name| name == TIER_PACKAGE) {
        println!(
            "note: {TIER_PACKAGE} is not a workspace member yet: only the portable checks run"
        );
        return Ok(Vec::new());
    }
    let dir = ws.root.join(TIER_TESTS_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let path = entry.path();
                    let is_rs = path.extension().is_some_and(|ext| ext == "rs");
                    (is_rs && path.is_file())
                        .then(|| path.file_stem()?.to_str().map(str::to_owned))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        println!("note: {TIER_PACKAGE} has no integration tests in {TIER_TESTS_DIR} yet");
    }
    Ok(names)
}

/// The services the tests run against here, as their uses are recorded: moto, and the Redis
/// servers of the three-tier tests.
const COMPAT_SERVICES: &[&str] = &["s3", "redis", "redis-cluster"];

/// Starts a private Redis server and cluster (as the test step does) and moto, creates the
/// bucket, runs the S3 tests against moto with the `TIERKIT_S3_*` variables and the Redis
/// variables set (`TIERKIT_REQUIRE_SERVICES` included, so no test skips), stops the services
/// (pass or fail) and prints a summary, with how many tests ran against each service. `extra`
/// goes to each `cargo test`.
pub fn compat(extra: &[String]) -> Step {
    let extra = extra.to_vec();
    let shown = test_commands(
        &["<each of crates/s3/tests/*.rs>".to_owned()],
        &extra,
        false,
    );
    Step::custom(
        "compat",
        format!(
            "start a private Redis server and {CLUSTER_MASTERS}-master cluster and \
             moto_server -H 127.0.0.1 -p <free port>, PUT /{BUCKET}, then with TIERKIT_S3_* \
             and the Redis TIERKIT_* set: {}; stop them",
            shown
                .iter()
                .map(Cmd::display)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        move |ws| {
            let tier_tests = tier_tests(ws)?;
            let commands = test_commands(&tier_tests, &extra, false);
            // Build first, so that the timings below are the tests' and moto waits less.
            for build in test_commands(&tier_tests, &extra, true) {
                println!("--> {}", build.display());
                build.run(ws)?;
            }
            // The three-tier tests (moka over Redis over S3) need Redis: the same private
            // servers as the test step, with TIERKIT_REQUIRE_SERVICES, so none skips.
            let running = Services::start(services::ensure_redis(ws)?, true)?;
            let uses = UseRecord::fresh("s3-compat")?;
            let started = Instant::now();
            let moto = Moto::start(ws)?;
            let moto_start = started.elapsed();
            let (status, response) =
                http(moto.port, "PUT", &format!("/{BUCKET}")).map_err(|reason| Failure {
                    command: format!("curl -X PUT {}/{BUCKET}", moto.endpoint()),
                    reason: format!("creating the bucket failed: {reason}"),
                })?;
            if status != 200 {
                return Err(Failure {
                    command: format!("curl -X PUT {}/{BUCKET}", moto.endpoint()),
                    reason: format!("creating the bucket failed: moto answered {response}"),
                });
            }
            println!("created bucket {BUCKET} on {}", moto.endpoint());
            let env = moto.env();
            for (name, value) in &env {
                println!("export {name}={}", shell_quote(value));
            }
            print!("{}", running.export_lines());
            let mut results = Vec::new();
            for cmd in &commands {
                let with_env = env
                    .iter()
                    .fold(cmd.clone(), |cmd, (name, value)| cmd.env(name, value));
                let with_env = uses.apply(running.apply(with_env));
                println!("--> {}", cmd.display());
                let started = Instant::now();
                let result = with_env.run(ws);
                results.push((cmd.display(), result.is_ok(), started.elapsed()));
            }
            let log = moto.log.clone();
            let port = moto.port;
            let stopped = moto.stop();
            let redis_stopped = running.shutdown();
            let served = Served::parse(&std::fs::read_to_string(&log).unwrap_or_default());

            println!();
            println!("s3-compat summary (moto {MOTO_VERSION} on 127.0.0.1:{port}):");
            println!("  moto started in {}", format_duration(moto_start));
            for (command, passed, elapsed) in &results {
                println!(
                    "  {} {:>7}  {command}",
                    if *passed { "PASS" } else { "FAIL" },
                    format_duration(*elapsed)
                );
            }
            println!("  moto served {}", served.summary());
            match &stopped {
                Ok(pid) => println!("  moto_server (pid {pid}) stopped; log: {}", log.display()),
                Err(err) => println!("  {}", err.reason),
            }
            for line in uses.summary(COMPAT_SERVICES).lines() {
                println!("  {line}");
            }
            let failed: Vec<&String> = results
                .iter()
                .filter(|(_, passed, _)| !passed)
                .map(|(command, _, _)| command)
                .collect();
            if let Some(first) = failed.first() {
                return Err(Failure {
                    command: "cargo xtask s3-compat".to_owned(),
                    reason: format!(
                        "{} of {} test commands failed against moto (first: {first}); moto's \
                         log: {}",
                        failed.len(),
                        results.len(),
                        log.display()
                    ),
                });
            }
            stopped?;
            redis_stopped
        },
    )
}

#[cfg(test)]
mod tests {
    use super::{ENV_VARS, Served, parse_pid_file, status_code, test_commands};

    #[test]
    fn reads_pid_files() {
        assert_eq!(parse_pid_file("moto=12\nowner=34\n"), Some((12, 34)));
        assert_eq!(parse_pid_file("owner=34\n"), None);
        assert_eq!(parse_pid_file("moto=x\nowner=34\n"), None);
    }

    #[test]
    fn reads_status_lines() {
        assert_eq!(
            status_code("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"),
            Some(200)
        );
        assert_eq!(status_code("HTTP/1.0 404 NOT FOUND\r\n"), Some(404));
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(""), None);
    }

    #[test]
    fn counts_what_moto_served() {
        let log = "\
 * Running on http://127.0.0.1:5000
127.0.0.1 - - [25/Nov/2025 14:30:00] \"PUT /tierkit HTTP/1.1\" 200 -
127.0.0.1 - - [25/Nov/2025 14:30:01] \"PUT /tierkit/a%20b HTTP/1.1\" 200 -
127.0.0.1 - - [25/Nov/2025 14:30:01] \"\u{1b}[33mGET /tierkit/missing HTTP/1.1\u{1b}[0m\" 404 -
127.0.0.1 - - [25/Nov/2025 14:30:01] \"GET /tierkit?list-type=2 HTTP/1.1\" 200 -
Press CTRL+C to quit
";
        let served = Served::parse(log);
        assert_eq!(served.by_method.get("PUT"), Some(&2));
        assert_eq!(served.by_method.get("GET"), Some(&2));
        assert_eq!(served.errors, 1);
        assert_eq!(
            served.summary(),
            "4 requests (GET 2, PUT 2); 1 answered with 4xx/5xx"
        );
    }

    #[test]
    fn runs_the_portable_checks_then_each_tier_test_file() {
        let tests = ["conformance".to_owned(), "faults".to_owned()];
        let commands = test_commands(&tests, &[], false);
        let shown: Vec<String> = commands.iter().map(|cmd| cmd.display()).collect();
        assert_eq!(
            shown,
            [
                "cargo test -p tierkit-s3-server --all-features --test compat",
                "cargo test -p tierkit-s3 --all-features --test conformance -- --skip s3_alone::concurrent_writers_same_key",
                "cargo test -p tierkit-s3 --all-features --test faults",
            ]
        );
        let extra = ["--".to_owned(), "--nocapture".to_owned()];
        assert!(
            test_commands(&[], &extra, false)[0]
                .display()
                .ends_with("--test compat -- --nocapture")
        );
        assert!(
            test_commands(&[], &extra, true)[0]
                .display()
                .ends_with("--test compat --no-run")
        );
        let extra = [
            "--release".to_owned(),
            "--".to_owned(),
            "--nocapture".to_owned(),
        ];
        assert!(
            test_commands(&[], &extra, true)[0]
                .display()
                .ends_with("--test compat --release --no-run")
        );
    }

    #[test]
    fn hands_the_variables_the_server_crate_reads() {
        let names: Vec<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "TIERKIT_S3_ENDPOINT",
                "TIERKIT_S3_REGION",
                "TIERKIT_S3_ACCESS_KEY",
                "TIERKIT_S3_SECRET_KEY",
                "TIERKIT_S3_BUCKET"
            ]
        );
    }
}
