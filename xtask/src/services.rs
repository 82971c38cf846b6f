//! The private Redis services the test and demo steps start, through `tierkit-services`.

use std::path::Path;
use std::time::Instant;

use tierkit_services::{
    RedisBinaries, RedisCluster, RedisSentinel, RedisServer, RedisServerOptions, env,
};

use tierkit_services::error_chain;

use crate::runner::{Cmd, Failure, Workspace, format_duration, shell_quote};

/// Masters of the cluster started for the tests (no replicas).
pub const CLUSTER_MASTERS: usize = 3;

/// The Debian package that brings `redis-server` and `redis-cli`.
const REDIS_PACKAGE: &str = "redis-server";

/// The environment variables handed to the tests, with what each holds, for the usage text.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        env::REDIS_URL,
        "a standalone server: redis://127.0.0.1:PORT",
    ),
    (
        env::REDIS_CLUSTER_URL,
        "a 3-master cluster (fred's form: redis-cluster://127.0.0.1:P1?node=...&node=...)",
    ),
    (
        env::REDIS_SENTINEL_URL,
        "a primary, its replica and one sentinel \
         (redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster)",
    ),
    (
        env::REDIS_SERVER,
        "absolute path of redis-server, for tests that start private servers",
    ),
    (env::REDIS_CLI, "absolute path of redis-cli"),
    (
        env::REQUIRE_SERVICES,
        "1: a test whose service is missing fails instead of skipping",
    ),
];

/// The commands that install Redis, as root.
pub fn install_commands() -> [Cmd; 2] {
    [
        Cmd::new("apt-get", ["update"]),
        Cmd::new("apt-get", ["install", "-y", REDIS_PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    ]
}

/// Makes sure `valgrind` is installed for the instruction counts of `cargo xtask bench`:
/// installs it from Debian's packages when it is missing and this is root. Never fails: when
/// it cannot be installed, says why, and the bench skips the instruction rows with the reason.
pub fn ensure_valgrind(ws: &Workspace) {
    let probe = Cmd::new("valgrind", ["--version"]);
    if probe.succeeds_quietly(ws) {
        return;
    }
    if !running_as_root(ws) {
        println!(
            "valgrind is missing and this is not root: the instruction rows (G1i) are skipped; \
             install it with: sudo apt-get update && sudo apt-get install -y valgrind"
        );
        return;
    }
    println!("valgrind is missing: installing it from Debian's packages");
    let install = [
        Cmd::new("apt-get", ["update"]),
        Cmd::new("apt-get", ["install", "-y", "valgrind"]).env("DEBIAN_FRONTEND", "noninteractive"),
    ];
    for cmd in &install {
        println!("--> {}", cmd.display());
        if let Err(err) = cmd.run(ws) {
            println!(
                "installing valgrind failed ({}): the instruction rows (G1i) are skipped",
                err.reason
            );
            return;
        }
    }
}

/// Whether the xtask runs as root: `id -u` prints 0.
fn running_as_root(ws: &Workspace) -> bool {
    match Cmd::new("id", ["-u"]).output(ws) {
        Ok(uid) => uid.trim() == "0",
        Err(_) => tierkit_services::running_as_root(),
    }
}

/// Makes sure `redis-server` and `redis-cli` are installed: installs Debian's `redis-server`
/// package when they are missing and running as root, else fails with the command to run.
pub fn ensure_redis(ws: &Workspace) -> Result<RedisBinaries, Failure> {
    ensure_redis_with(
        ws,
        &RedisBinaries::locate,
        running_as_root(ws),
        &install_commands(),
    )
}

/// [`ensure_redis`] with its environment passed in, for tests.
fn ensure_redis_with(
    ws: &Workspace,
    locate: &dyn Fn() -> Result<RedisBinaries, tierkit_services::ServiceError>,
    root: bool,
    install: &[Cmd],
) -> Result<RedisBinaries, Failure> {
    let missing = match locate() {
        Ok(binaries) => {
            report_found(&binaries);
            return Ok(binaries);
        }
        Err(err @ tierkit_services::ServiceError::NotInstalled { .. }) => err,
        Err(err) => {
            return Err(Failure {
                command: format!("unset {} {}", env::REDIS_SERVER, env::REDIS_CLI),
                reason: error_chain(&err),
            });
        }
    };
    if !root {
        let command = tierkit_services::install_command(false);
        return Err(Failure {
            reason: format!(
                "{missing}\nthis is not root, so the xtask cannot install it: run\n    \
                 {command}\nthen rerun the suite"
            ),
            command,
        });
    }
    println!("{missing}");
    println!("installing Debian's {REDIS_PACKAGE} package (it brings redis-cli), as root:");
    for cmd in install {
        println!("running: {}", cmd.display());
        cmd.run(ws).map_err(|err| Failure {
            command: err.command.clone(),
            reason: format!(
                "{}\ninstalling Redis failed: run the command above by hand and fix what it \
                 reports (no apt-get? install Redis 7 with the system's package manager, or set \
                 {} and {} to its binaries), then rerun the suite",
                err.reason,
                env::REDIS_SERVER,
                env::REDIS_CLI
            ),
        })?;
    }
    let binaries = locate().map_err(|err| Failure {
        command: tierkit_services::install_command(true),
        reason: format!(
            "{REDIS_PACKAGE} was installed but Redis still cannot be found: {}",
            error_chain(&err)
        ),
    })?;
    println!("installed:");
    report_found(&binaries);
    Ok(binaries)
}

/// Prints where the binaries are.
fn report_found(binaries: &RedisBinaries) {
    println!(
        "found redis-server {} ({}) and redis-cli ({})",
        binaries.version(),
        binaries.server().display(),
        binaries.cli().display()
    );
}

/// Kills the Redis processes that earlier runs, killed before they could stop them, left
/// under `base_dir`, and says so.
fn cleanup_stale(base_dir: &Path) -> Result<(), Failure> {
    let report = tierkit_services::cleanup_stale(base_dir).map_err(|err| Failure {
        command: format!("ls {}", shell_quote(&base_dir.display().to_string())),
        reason: format!(
            "cleaning up stale Redis processes failed: {}",
            error_chain(&err)
        ),
    })?;
    if !report.killed.is_empty() {
        println!(
            "killed stale redis-server processes left by an earlier run: {:?}",
            report.killed
        );
    }
    if !report.removed.is_empty() {
        println!(
            "removed {} stale service directories under {}",
            report.removed.len(),
            base_dir.display()
        );
    }
    Ok(())
}

/// Private Redis processes, stopped when dropped (every [`RedisServer`] kills its process
/// on drop) or, with a check that none is left, by [`Services::shutdown`].
pub struct Services {
    /// The binaries the servers run.
    binaries: RedisBinaries,
    /// The standalone server.
    standalone: RedisServer,
    /// The sentinel deployment: a primary, its replica and one sentinel.
    sentinel: RedisSentinel,
    /// The cluster, if one was asked for.
    cluster: Option<RedisCluster>,
}

impl Services {
    /// Cleans up stale processes, then starts a standalone server, a sentinel deployment (a
    /// primary, its replica and one sentinel) and, if `with_cluster`, a 3-master cluster
    /// without replicas. Prints what it started and how long it took.
    pub fn start(binaries: RedisBinaries, with_cluster: bool) -> Result<Self, Failure> {
        let base_dir = tierkit_services::default_base_dir();
        cleanup_stale(&base_dir)?;
        let failure = |what: &str, err: tierkit_services::ServiceError| Failure {
            command: "cargo xtask services".to_owned(),
            reason: format!("starting {what} failed: {}", error_chain(&err)),
        };
        let started = Instant::now();
        let standalone = RedisServer::start(&binaries, RedisServerOptions::new())
            .map_err(|err| failure("a standalone Redis server", err))?;
        println!(
            "started redis-server {} (pid {}) in {}",
            standalone.url(),
            pid_text(&standalone),
            format_duration(started.elapsed())
        );
        let started = Instant::now();
        let sentinel = RedisSentinel::start(&binaries)
            .map_err(|err| failure("a Redis sentinel deployment", err))?;
        let pids: Vec<String> = sentinel
            .servers()
            .iter()
            .chain([sentinel.sentinel()])
            .map(pid_text)
            .collect();
        println!(
            "started a primary, its replica and a sentinel {} (pids {}) in {}",
            sentinel.url(),
            pids.join(", "),
            format_duration(started.elapsed())
        );
        let cluster = if with_cluster {
            let started = Instant::now();
            let cluster = RedisCluster::start(&binaries, CLUSTER_MASTERS, 0)
                .map_err(|err| failure("a Redis cluster", err))?;
            let pids: Vec<String> = cluster.nodes().iter().map(pid_text).collect();
            println!(
                "started a {CLUSTER_MASTERS}-master Redis cluster {} (pids {}) in {}",
                cluster.url(),
                pids.join(", "),
                format_duration(started.elapsed())
            );
            Some(cluster)
        } else {
            None
        };
        println!("service files (logs): {}", base_dir.display());
        Ok(Self {
            binaries,
            standalone,
            sentinel,
            cluster,
        })
    }

    /// The environment variables that hand these services to the tests.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (env::REDIS_URL, self.standalone.url()),
            (env::REDIS_SENTINEL_URL, self.sentinel.url()),
        ];
        if let Some(cluster) = &self.cluster {
            vars.push((env::REDIS_CLUSTER_URL, cluster.url()));
        }
        vars.extend([
            (
                env::REDIS_SERVER,
                self.binaries.server().display().to_string(),
            ),
            (env::REDIS_CLI, self.binaries.cli().display().to_string()),
            (env::REQUIRE_SERVICES, "1".to_owned()),
        ]);
        vars
    }

    /// `cmd` with [`Services::env`] set.
    pub fn apply(&self, mut cmd: Cmd) -> Cmd {
        for (key, value) in self.env() {
            cmd = cmd.env(key, &value);
        }
        cmd
    }

    /// The `export NAME=value` lines of [`Services::env`], for a shell.
    pub fn export_lines(&self) -> String {
        self.env()
            .iter()
            .map(|(key, value)| format!("export {key}={}\n", shell_quote(value)))
            .collect()
    }

    /// Stops every process, checks that none is left, and prints the pids stopped.
    pub fn shutdown(self) -> Result<(), Failure> {
        let mut servers = vec![&self.standalone];
        servers.extend(self.sentinel.servers());
        servers.push(self.sentinel.sentinel());
        if let Some(cluster) = &self.cluster {
            servers.extend(cluster.nodes());
        }
        let mut stopped = Vec::new();
        let mut problems = Vec::new();
        for server in servers {
            let pid = server.pid();
            if let Err(err) = server.stop() {
                problems.push(err.to_string());
            }
            if let Some(pid) = pid {
                if Path::new(&format!("/proc/{pid}")).exists() {
                    problems.push(format!("redis-server {pid} is still there after stop"));
                }
                stopped.push(pid);
            }
        }
        println!("stopped redis-server pids: {stopped:?}");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Failure {
                command: "pgrep -a redis-server".to_owned(),
                reason: format!(
                    "stopping the Redis services failed: {}",
                    problems.join("; ")
                ),
            })
        }
    }
}

/// The pid of `server` as text, `-` when stopped.
fn pid_text(server: &RedisServer) -> String {
    server
        .pid()
        .map_or_else(|| "-".to_owned(), |pid| pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::{ENV_VARS, ensure_redis_with, install_commands};
    use crate::runner::{Cmd, Workspace};
    use std::cell::Cell;
    use tierkit_services::{RedisBinaries, ServiceError};

    /// The error `RedisBinaries::locate` gives when Redis is not installed.
    fn not_installed(root: bool) -> ServiceError {
        ServiceError::NotInstalled {
            binary: "redis-server",
            env_var: "TIERKIT_REDIS_SERVER",
            searched: vec!["/nowhere".into()],
            install: tierkit_services::install_command(root),
        }
    }

    #[test]
    fn installs_with_apt_get_noninteractively() {
        let [update, install] = install_commands();
        assert_eq!(update.display(), "apt-get update");
        assert_eq!(
            install.display(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server"
        );
    }

    #[test]
    fn without_root_missing_redis_stops_with_the_sudo_command() {
        let ws = Workspace::locate();
        // `false` would fail the step with its own command if it were run.
        let failing = [Cmd::new("false", ["update"])];
        let err = ensure_redis_with(&ws, &|| Err(not_installed(false)), false, &failing)
            .err()
            .unwrap();
        assert_eq!(
            err.command,
            "sudo apt-get update && sudo apt-get install -y redis-server"
        );
        assert!(err.reason.contains("this is not root"), "{}", err.reason);
        assert!(
            err.reason
                .contains("sudo apt-get update && sudo apt-get install -y redis-server"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn as_root_missing_redis_is_installed_then_found_again() {
        let Some(real) = RedisBinaries::for_tests().unwrap() else {
            return;
        };
        let ws = Workspace::locate();
        let calls = Cell::new(0);
        let locate = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                Err(not_installed(true))
            } else {
                Ok(real.clone())
            }
        };
        // `true` stands in for apt-get.
        let fake_install = [Cmd::new("true", ["update"]), Cmd::new("true", ["install"])];
        let found = ensure_redis_with(&ws, &locate, true, &fake_install).unwrap();
        assert_eq!(found, real);
        assert_eq!(calls.get(), 2);

        // A failing installer stops the step with its command.
        calls.set(0);
        let failing = [Cmd::new("false", ["update"])];
        let err = ensure_redis_with(&ws, &locate, true, &failing)
            .err()
            .unwrap();
        assert_eq!(err.command, "false update");
        assert!(
            err.reason.contains("installing Redis failed"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn a_bad_binary_path_is_not_installed_over() {
        let ws = Workspace::locate();
        let bad = || {
            Err(ServiceError::BadBinary {
                env_var: "TIERKIT_REDIS_SERVER",
                path: "/nowhere/redis-server".into(),
                problem: "it cannot be read".to_owned(),
            })
        };
        let err = ensure_redis_with(&ws, &bad, true, &[Cmd::new("false", ["x"])])
            .err()
            .unwrap();
        assert!(
            err.reason.contains("TIERKIT_REDIS_SERVER names"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn every_variable_is_documented() {
        let names: Vec<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "TIERKIT_REDIS_URL",
                "TIERKIT_REDIS_CLUSTER_URL",
                "TIERKIT_REDIS_SENTINEL_URL",
                "TIERKIT_REDIS_SERVER",
                "TIERKIT_REDIS_CLI",
                "TIERKIT_REQUIRE_SERVICES"
            ]
        );
    }
}
