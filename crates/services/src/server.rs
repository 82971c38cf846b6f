//! [`RedisServer`]: one private `redis-server` child process.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::binaries::RedisBinaries;
use crate::dirs::{self, REDIS_PID_FILE, SERVER_PID_FILE};
use crate::error::ServiceError;
use crate::resp::{self, IO_TIMEOUT, Reply};

/// The log file Redis writes (`--logfile`), in the instance directory.
const LOG_FILE: &str = "redis.log";

/// Where the server's standard output and error go, in the instance directory: Redis writes
/// there only what it prints before it opens its log file (a bad option, for instance).
const STDIO_FILE: &str = "stdio.log";

/// How many times [`RedisServer::start`] picks new ports when the ones it picked were taken
/// by another process before the server could bind them.
const START_ATTEMPTS: usize = 5;

/// How many times [`RedisServer::restart`] retries when its port is briefly taken.
const RESTART_ATTEMPTS: usize = 3;

/// The configuration file of a sentinel, in the instance directory: Sentinel needs one it can
/// rewrite with what it learns (replicas, other sentinels, failovers).
const SENTINEL_CONFIG_FILE: &str = "sentinel.conf";

/// Lines of the log quoted in errors.
const LOG_TAIL_LINES: usize = 20;

/// How long [`RedisServer::pause`] waits for the kernel to report the process stopped.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The Redis cluster node timeout, in milliseconds, of cluster-mode servers.
pub const CLUSTER_NODE_TIMEOUT_MS: u32 = 2000;

/// How a [`RedisServer`] is started.
///
/// Every server listens on 127.0.0.1 only, on a free port, without persistence
/// (`--save '' --appendonly no`), with `DEBUG` allowed from loopback
/// (`--enable-debug-command local`, so tests can `DEBUG SLEEP`), and keeps its files in a
/// fresh directory under [`RedisServerOptions::base_dir`].
#[derive(Debug, Clone)]
pub struct RedisServerOptions {
    /// Whether to start in cluster mode.
    cluster: bool,
    /// The initial `sentinel.conf` when started as a Redis Sentinel.
    sentinel: Option<String>,
    /// Arguments appended to the command line.
    extra_args: Vec<String>,
    /// Where the instance directory is created; `None` for [`crate::default_base_dir`].
    base_dir: Option<PathBuf>,
    /// How long the server may take to answer `PING`.
    startup_timeout: Duration,
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        Self {
            cluster: false,
            sentinel: None,
            extra_args: Vec::new(),
            base_dir: None,
            startup_timeout: Duration::from_secs(10),
        }
    }
}

impl RedisServerOptions {
    /// A standalone server, in the default base directory, given 10 seconds to start.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Enables cluster mode: `--cluster-enabled yes --cluster-config-file nodes.conf
    /// --cluster-port <another free port> --cluster-node-timeout 2000`. Needs Redis 7.
    #[must_use]
    pub fn cluster(mut self, enabled: bool) -> Self {
        self.cluster = enabled;
        self
    }

    /// Starts a Redis Sentinel instead of a server (`redis-server sentinel.conf --sentinel`):
    /// `config` is the initial content of its configuration file, for instance
    /// `sentinel monitor NAME 127.0.0.1 PORT 1`. The file is written once, in the instance
    /// directory, and Sentinel rewrites it with what it learns, so a restarted sentinel keeps
    /// its state. A sentinel answers `PING`, `INFO` and `SENTINEL ...` commands.
    #[must_use]
    pub fn sentinel(mut self, config: impl Into<String>) -> Self {
        self.sentinel = Some(config.into());
        self
    }

    /// Appends one argument to the `redis-server` command line, for instance `--maxmemory`
    /// then `10mb` (a later option overrides an earlier one).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Appends arguments to the `redis-server` command line.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Creates the instance directory under `dir` instead of [`crate::default_base_dir`].
    #[must_use]
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// How long the server may take to answer `PING` (10 seconds by default).
    #[must_use]
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Whether cluster mode is enabled.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether the process is a Redis Sentinel (see [`RedisServerOptions::sentinel`]).
    #[must_use]
    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }
}

/// What a server is started as: everything but the process itself.
#[derive(Debug)]
struct Instance {
    /// Absolute path of `redis-server`.
    binary: PathBuf,
    /// How it was started (reused by [`RedisServer::restart`]).
    options: RedisServerOptions,
    /// The client port.
    port: u16,
    /// The cluster bus port, in cluster mode.
    bus_port: Option<u16>,
    /// The instance directory (`--dir`): log, pid files, `nodes.conf`.
    dir: PathBuf,
}

/// A private `redis-server` child process on 127.0.0.1 (not daemonized: this value owns the
/// process). Dropping it kills the process, waits for it and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    /// Its ports, options and directory.
    instance: Instance,
    /// The running process; `None` once stopped.
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits (up to the startup timeout of
    /// `options`, 10 seconds by default) until it answers `PING`. If another process takes
    /// the chosen port first, new ports are picked (up to 5 attempts).
    ///
    /// # Errors
    ///
    /// [`ServiceError::Exited`] or [`ServiceError::StartTimeout`] (both quote the end of the
    /// server's log; the instance directory is kept for inspection),
    /// [`ServiceError::BadBinary`] for cluster mode with Redis older than 7, or
    /// [`ServiceError::Io`] / [`ServiceError::NoFreePort`].
    pub fn start(
        binaries: &RedisBinaries,
        options: RedisServerOptions,
    ) -> Result<Self, ServiceError> {
        if options.cluster && binaries.major_version() < 7 {
            return Err(ServiceError::BadBinary {
                env_var: crate::env::REDIS_SERVER,
                path: binaries.server().to_path_buf(),
                problem: format!(
                    "it is Redis {}, and cluster mode with --cluster-port needs Redis 7 or newer",
                    binaries.version()
                ),
            });
        }
        if options.cluster && options.sentinel.is_some() {
            return Err(ServiceError::InvalidArgument {
                detail: "a process is either a cluster node or a sentinel, not both".to_owned(),
            });
        }
        let base = options
            .base_dir
            .clone()
            .unwrap_or_else(dirs::default_base_dir);
        let dir = dirs::create_instance_dir(&base)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = dirs::free_port()?;
            let bus_port = if options.cluster {
                Some(dirs::free_port()?)
            } else {
                None
            };
            let instance = Instance {
                binary: binaries.server().to_path_buf(),
                options: options.clone(),
                port,
                bus_port,
                dir: dir.clone(),
            };
            // On failure the directory is kept, with the log the error refers to.
            match instance.launch() {
                Ok(child) => {
                    return Ok(Self {
                        instance,
                        child: Mutex::new(Some(child)),
                    });
                }
                Err(err) if err.is_address_in_use() && attempt < START_ATTEMPTS => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// The client port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.instance.port
    }

    /// The cluster bus port, in cluster mode.
    #[must_use]
    pub fn bus_port(&self) -> Option<u16> {
        self.instance.bus_port
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.instance.port)
    }

    /// `127.0.0.1:PORT`.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.instance.addr()
    }

    /// The process id, or `None` when stopped (or dead).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        running_pid(&mut self.lock())
    }

    /// Whether the process is running (a process that died on its own counts as stopped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Kills the process (`SIGKILL`, like a crash: nothing is saved) and waits for it. Does
    /// nothing when already stopped. [`RedisServer::restart`] starts it again.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Io`] if waiting for the process fails.
    pub fn stop(&self) -> Result<(), ServiceError> {
        let mut child = self.lock();
        kill_and_wait(&mut child, self.instance.port)
    }

    /// Freezes the process (`SIGSTOP`): the kernel still accepts connections and data for it,
    /// but nothing is answered, like a Redis hung on a slow command or a stalled machine.
    /// [`RedisServer::resume`] lets it run again; [`RedisServer::stop`] and dropping the server
    /// work on a frozen process too. Returns once the kernel reports the process stopped, so
    /// that nothing sent after it is answered.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotRunning`] when stopped, [`ServiceError::Io`] when the signal cannot
    /// be sent.
    pub fn pause(&self) -> Result<(), ServiceError> {
        self.signal("-STOP")?;
        self.wait_until_stopped()
    }

    /// Waits until the kernel reports the process stopped: `kill` returns once the signal is
    /// sent, not once the process has stopped, and a command sent in between would still be
    /// answered. Without `/proc` (not Linux) there is nothing to wait on.
    fn wait_until_stopped(&self) -> Result<(), ServiceError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status_file = format!("/proc/{pid}/status");
        let deadline = Instant::now() + STOP_WAIT;
        loop {
            match std::fs::read_to_string(&status_file) {
                Ok(status) if is_stopped(&status) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::Io {
                    action: format!("waiting for redis-server {pid} to stop"),
                    source: std::io::Error::other(format!(
                        "still running {STOP_WAIT:?} after SIGSTOP"
                    )),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a process frozen by [`RedisServer::pause`] run again (`SIGCONT`); it then answers
    /// what it received meanwhile.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::pause`].
    pub fn resume(&self) -> Result<(), ServiceError> {
        self.signal("-CONT")
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the running process with `kill`.
    fn signal(&self, signal: &str) -> Result<(), ServiceError> {
        let pid = self.pid().ok_or(ServiceError::NotRunning {
            port: self.instance.port,
        })?;
        let action = format!("sending {signal} to redis-server {pid}");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|source| ServiceError::Io {
                action: action.clone(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(ServiceError::Io {
                action,
                source: std::io::Error::other(format!("kill exited with {status}")),
            })
        }
    }

    /// Stops the server if it runs, then starts it again on the same port, with the same
    /// options and directory (a cluster node keeps its `nodes.conf`, hence its identity), and
    /// waits until it answers `PING`. Clients that reconnect find it at the same address.
    ///
    /// # Errors
    ///
    /// [`ServiceError::PortInUse`] if another process took the port meanwhile, else as
    /// [`RedisServer::start`].
    pub fn restart(&self) -> Result<(), ServiceError> {
        let mut child = self.lock();
        kill_and_wait(&mut child, self.instance.port)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.instance.launch() {
                Ok(process) => {
                    *child = Some(process);
                    return Ok(());
                }
                Err(err) if err.is_address_in_use() => {
                    if attempt >= RESTART_ATTEMPTS {
                        return Err(ServiceError::PortInUse {
                            port: self.instance.port,
                            log: self.log_path(),
                            log_tail: self.log_tail(LOG_TAIL_LINES),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends one command and returns its reply as text (see [`Reply::to_text`]): arguments
    /// may be `&str` or raw bytes (`&[&[u8]]`), for instance
    /// `server.command(&["CLUSTER", "INFO"])` or `server.command(&[&b"SET"[..], b"k", b"\xff"])`.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotRunning`] when stopped, [`ServiceError::Redis`] for an error
    /// reply, [`ServiceError::Io`] or [`ServiceError::Protocol`] when the exchange fails.
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<String, ServiceError> {
        self.query(args).map(|reply| reply.to_text())
    }

    /// Calls per command since the server started (`INFO commandstats`), without `info`
    /// itself; [`calls_since`](crate::calls_since) gives what an operation sent.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::command`].
    pub fn command_calls(&self) -> Result<crate::CommandCalls, ServiceError> {
        self.command(&["INFO", "commandstats"])
            .map(|info| crate::parse_command_calls(&info))
    }

    /// Sends one command and returns its reply as a [`Reply`].
    ///
    /// # Errors
    ///
    /// As [`RedisServer::command`].
    pub fn query<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Reply, ServiceError> {
        if !self.is_running() {
            return Err(ServiceError::NotRunning {
                port: self.instance.port,
            });
        }
        resp::request(self.instance.addr(), args, IO_TIMEOUT)
    }

    /// The instance directory (`--dir`): log, pid files and, in cluster mode, `nodes.conf`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.instance.dir
    }

    /// The server's log file.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.instance.log_path()
    }

    /// The last `lines` lines of the server's log, then those of its standard output and
    /// error if any.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        self.instance.log_tail(lines)
    }

    /// Locks the child process slot (a poisoned lock is still usable: the slot is always
    /// consistent).
    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Instance {
    /// `127.0.0.1:PORT`.
    fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's log file.
    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// See [`RedisServer::log_tail`].
    fn log_tail(&self, lines: usize) -> String {
        let mut tail = last_lines(&self.log_path(), lines);
        let stdio = last_lines(&self.dir.join(STDIO_FILE), lines);
        if !stdio.trim().is_empty() {
            tail.push_str("\n(standard output and error:)\n");
            tail.push_str(&stdio);
        }
        tail
    }

    /// The `redis-server` command line.
    fn command_line(&self) -> Command {
        let mut command = Command::new(&self.binary);
        if self.options.sentinel.is_some() {
            // The configuration file must come first.
            command
                .arg(self.dir.join(SENTINEL_CONFIG_FILE))
                .arg("--sentinel");
        }
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            // Replicas sync at once instead of after the default 5 s wait for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--pidfile")
            .arg(self.dir.join(REDIS_PID_FILE));
        if let Some(bus_port) = self.bus_port {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args([
                    "--cluster-node-timeout",
                    &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ]);
        }
        command.args(&self.options.extra_args);
        command
    }

    /// Spawns the process and waits until it answers `PING`; kills it on failure.
    fn launch(&self) -> Result<Child, ServiceError> {
        if let Some(config) = &self.options.sentinel {
            let path = self.dir.join(SENTINEL_CONFIG_FILE);
            // Written once: a restarted sentinel keeps what it rewrote there.
            if !path.exists() {
                dirs::write_file(&path, config)?;
            }
        }
        let stdio_path = self.dir.join(STDIO_FILE);
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .map_err(|err| ServiceError::io(format!("opening {}", stdio_path.display()), err))?;
        let stderr = stdio
            .try_clone()
            .map_err(|err| ServiceError::io(format!("opening {}", stdio_path.display()), err))?;
        let mut command = self.command_line();
        command.stdin(Stdio::null()).stdout(stdio).stderr(stderr);
        let mut child = command
            .spawn()
            .map_err(|err| ServiceError::io(format!("starting {}", self.binary.display()), err))?;
        let ready = dirs::write_file(&self.dir.join(SERVER_PID_FILE), &child.id().to_string())
            .and_then(|()| self.wait_ready(&mut child));
        match ready {
            Ok(()) => Ok(child),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err)
            }
        }
    }

    /// Waits until `child` answers `PING` on our port, and checks with `INFO server` that the
    /// answer comes from `child` and not from another process that holds the port.
    fn wait_ready(&self, child: &mut Child) -> Result<(), ServiceError> {
        let started = Instant::now();
        let timeout = self.options.startup_timeout;
        let probe_timeout = Duration::from_millis(500);
        let expected_pid = format!("process_id:{}", child.id());
        loop {
            let status = child.try_wait().map_err(|err| {
                ServiceError::io(format!("checking redis-server {}", child.id()), err)
            })?;
            if let Some(status) = status {
                return Err(ServiceError::Exited {
                    port: self.port,
                    status: status.to_string(),
                    log: self.log_path(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            let pong = resp::request(self.addr(), &["PING"], probe_timeout);
            if matches!(&pong, Ok(Reply::Simple(text)) if text == "PONG") {
                let info = resp::request(self.addr(), &["INFO", "server"], probe_timeout)
                    .map(|reply| reply.to_text());
                if info.is_ok_and(|info| info.lines().any(|line| line.trim() == expected_pid)) {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                return Err(ServiceError::StartTimeout {
                    port: self.port,
                    waited: started.elapsed(),
                    log: self.log_path(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The pid of the process in `slot` if it still runs; a process that exited is reaped and
/// the slot emptied.
fn running_pid(slot: &mut Option<Child>) -> Option<u32> {
    let process = slot.as_mut()?;
    if matches!(process.try_wait(), Ok(None)) {
        Some(process.id())
    } else {
        *slot = None;
        None
    }
}

/// Kills the process in `slot`, if any, waits for it and empties the slot. The children it
/// forked (to send a snapshot to a replica, for instance) are killed too, so that none
/// outlives it.
fn kill_and_wait(slot: &mut Option<Child>, port: u16) -> Result<(), ServiceError> {
    if let Some(mut child) = slot.take() {
        let forks = dirs::forked_children(child.id());
        // Fails only if the process has already exited, which wait() then reaps.
        let _ = child.kill();
        child.wait().map_err(|err| {
            ServiceError::io(
                format!("waiting for redis-server {} (port {port})", child.id()),
                err,
            )
        })?;
        for fork in forks {
            fork.kill();
        }
    }
    Ok(())
}

/// The last `count` lines of the file at `path` (empty if it cannot be read).
fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = kill_and_wait(child, self.instance.port);
        let _ = std::fs::remove_dir_all(&self.instance.dir);
    }
}

/// Whether a `/proc/PID/status` text says the process is stopped (`T`) or traced (`t`).
fn is_stopped(status: &str) -> bool {
    status.lines().any(|line| {
        line.strip_prefix("State:")
            .and_then(|state| state.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}

#[cfg(test)]
mod tests {
    use super::is_stopped;

    #[test]
    fn stopped_states_are_read_from_proc_status() {
        assert!(is_stopped(
            "Name:\tredis-server\nState:\tT (stopped)\nPid:\t7\n"
        ));
        assert!(is_stopped("State:\tt (tracing stop)\n"));
        assert!(!is_stopped("Name:\tredis-server\nState:\tR (running)\n"));
        assert!(!is_stopped("State:\tS (sleeping)\nTgid:\t7\n"));
    }
}
