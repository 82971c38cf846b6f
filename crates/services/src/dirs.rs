//! Ports, instance directories and the cleanup of processes left behind by a killed run.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::error::ServiceError;

/// Name of the directory, under the target directory, that holds the instance directories.
const SERVICES_DIR: &str = "tierkit-services";

/// The file, in an instance directory, naming the process that owns the instance.
pub(crate) const OWNER_FILE: &str = "owner";

/// The file, in an instance directory, where this crate writes the server's pid.
pub(crate) const SERVER_PID_FILE: &str = "server.pid";

/// The file, in an instance directory, where Redis writes its pid (`--pidfile`).
pub(crate) const REDIS_PID_FILE: &str = "redis.pid";

/// The port of the Redis server this crate must never be mistaken for.
const DEFAULT_REDIS_PORT: u16 = 6379;

/// An instance directory without an owner file is left alone for this long after its last
/// change (it may be in the middle of being created by another process).
const UNOWNED_GRACE: Duration = Duration::from_secs(60);

/// How long a killed stale process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Ports this process has handed out; never handed out twice, so that a client still
/// pointing at a stopped server cannot reach a newer server by mistake.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Sequence number of instance directories created by this process.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A free port on 127.0.0.1 that this process has not handed out before: the operating system
/// picks it (by binding port 0), and it is released before the server binds it.
pub(crate) fn free_port() -> Result<u16, ServiceError> {
    let mut last_problem = "every port offered had been handed out already".to_owned();
    for _ in 0..256 {
        let port = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
        {
            Ok(addr) => addr.port(),
            Err(err) => {
                last_problem = format!("binding 127.0.0.1:0 failed: {err}");
                continue;
            }
        };
        if port == DEFAULT_REDIS_PORT || port < 1024 {
            continue;
        }
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(ServiceError::NoFreePort {
        reason: last_problem,
    })
}

/// Where instance directories go by default: `<target dir>/tierkit-services`.
///
/// The target directory is `$CARGO_TARGET_DIR` when it is an absolute path, else the nearest
/// ancestor of the running executable that holds cargo's `CACHEDIR.TAG` (test binaries and
/// the xtask live under the target directory), else the `target` directory of the workspace
/// this crate was built in, else [`std::env::temp_dir`]. The directory may not exist yet.
#[must_use]
pub fn default_base_dir() -> PathBuf {
    target_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(SERVICES_DIR)
}

/// The cargo target directory this process belongs to, if it can be found:
/// `$CARGO_TARGET_DIR` when it is an absolute path, else the nearest ancestor of the running
/// executable that holds cargo's `CACHEDIR.TAG` (test binaries, examples and the xtask live
/// under the target directory), else the `target` directory of the workspace this crate was
/// built in. Test services keep their files there, so that `cargo clean` removes them.
#[must_use]
pub fn target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return Some(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        return Some(dir.to_path_buf());
    }
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    workspace_target.is_dir().then_some(workspace_target)
}

/// Creates `base` (falling back to `<temp dir>/tierkit-services` when it cannot be created) and
/// a fresh instance directory in it, with the owner file written. Returns its absolute path.
pub(crate) fn create_instance_dir(base: &Path) -> Result<PathBuf, ServiceError> {
    let base = match std::fs::create_dir_all(base) {
        Ok(()) => base.to_path_buf(),
        Err(first) => {
            let fallback = std::env::temp_dir().join(SERVICES_DIR);
            std::fs::create_dir_all(&fallback).map_err(|err| {
                ServiceError::io(
                    format!(
                        "creating {} (after creating {} failed: {first})",
                        fallback.display(),
                        base.display()
                    ),
                    err,
                )
            })?;
            fallback
        }
    };
    let base = std::fs::canonicalize(&base)
        .map_err(|err| ServiceError::io(format!("resolving {}", base.display()), err))?;
    let owner = std::process::id();
    let marker = format!(
        "pid={owner}\nstart={}\n",
        process_start_time(owner).unwrap_or(0)
    );
    loop {
        let seq = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{owner}-{seq}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                write_file(&dir.join(OWNER_FILE), &marker)?;
                return Ok(dir);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(ServiceError::io(
                    format!("creating directory {}", dir.display()),
                    err,
                ));
            }
        }
    }
}

/// Writes `text` to `path`.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), ServiceError> {
    std::fs::write(path, text)
        .map_err(|err| ServiceError::io(format!("writing {}", path.display()), err))
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`, in clock ticks since
/// boot), which tells a process apart from a later one that reuses its pid.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    state != Some("Z")
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Process ids of the stale `redis-server` processes that were killed.
    pub killed: Vec<u32>,
    /// The stale instance directories that were removed.
    pub removed: Vec<PathBuf>,
}

/// Kills the `redis-server` processes left behind under `base_dir` by runs that died without
/// stopping them (a test binary killed by a signal, for instance), then removes their
/// directories.
///
/// Only instance directories whose owning process is gone are touched (a concurrent run's
/// servers are left alone), and a pid from one of their pid files is killed only when
/// `/proc/<pid>/cmdline` names `redis-server` and `/proc/<pid>/cwd` is that very directory
/// (Redis changes into its `--dir`), so no other process, and no other Redis, is ever killed.
/// On a system without `/proc`, nothing is done.
///
/// # Errors
///
/// [`ServiceError::Io`] when `base_dir` or an instance directory cannot be read or removed;
/// [`ServiceError::StaleProcess`] when a killed process does not exit within 5 seconds.
pub fn cleanup_stale(base_dir: &Path) -> Result<CleanupReport, ServiceError> {
    let mut report = CleanupReport::default();
    if !Path::new("/proc/self/stat").exists() {
        return Ok(report);
    }
    let entries = match std::fs::read_dir(base_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(err) => {
            return Err(ServiceError::io(
                format!("listing {}", base_dir.display()),
                err,
            ));
        }
    };
    for entry in entries {
        let entry = entry
            .map_err(|err| ServiceError::io(format!("listing {}", base_dir.display()), err))?;
        let dir = entry.path();
        if !dir.is_dir() || !is_stale(&dir) {
            continue;
        }
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        for pid in recorded_pids(&dir) {
            if !is_our_redis(pid, &dir) {
                continue;
            }
            kill(pid);
            let deadline = Instant::now() + KILL_WAIT;
            while process_alive(pid) {
                if Instant::now() > deadline {
                    return Err(ServiceError::StaleProcess { pid, dir });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            report.killed.push(pid);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.removed.push(dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(ServiceError::io(
                    format!("removing stale directory {}", dir.display()),
                    err,
                ));
            }
        }
    }
    Ok(report)
}

/// Whether the process that created instance directory `dir` is gone.
fn is_stale(dir: &Path) -> bool {
    let Ok(marker) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
        // Being created right now, or damaged: only stale once old enough.
        let age = std::fs::metadata(dir)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        return age.is_some_and(|age| age > UNOWNED_GRACE);
    };
    let field = |name: &str| {
        marker
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let (Some(pid), Some(start)) = (field("pid"), field("start")) else {
        return true;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return true;
    };
    !(process_alive(pid) && process_start_time(pid) == Some(start))
}

/// The pids recorded in the pid files of instance directory `dir`.
fn recorded_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for file in [SERVER_PID_FILE, REDIS_PID_FILE] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file))
            && let Ok(pid) = text.trim().parse::<u32>()
            && pid > 1
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is a `redis-server` running in directory `dir`.
fn is_our_redis(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let program = cmdline
        .split(|byte| *byte == 0 || *byte == b' ')
        .next()
        .map(|first| String::from_utf8_lossy(first).into_owned())
        .unwrap_or_default();
    let is_redis = Path::new(&program)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("redis-server"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    is_redis && cwd.is_ok_and(|cwd| cwd == dir)
}

/// A process identified by pid and start time, so that a later process reusing its pid is not
/// taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessId {
    /// The process id.
    pid: u32,
    /// Its start time, in clock ticks since boot.
    start: u64,
}

impl ProcessId {
    /// Kills the process with `SIGKILL` if it is still the same process.
    pub(crate) fn kill(self) {
        if process_start_time(self.pid) == Some(self.start) {
            kill(self.pid);
        }
    }
}

/// The children of `pid`, identified so that [`ProcessId::kill`] is safe later on: the
/// processes a `redis-server` forks to send a snapshot to a replica, for instance.
pub(crate) fn forked_children(pid: u32) -> Vec<ProcessId> {
    children_of(pid)
        .into_iter()
        .filter_map(|child| {
            Some(ProcessId {
                pid: child,
                start: process_start_time(child)?,
            })
        })
        .collect()
}

/// The processes whose parent is `pid` (on Linux, from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_name = stat.get(stat.rfind(')')? + 1..)?;
                    after_name.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Sends `SIGKILL` to `pid` with the `kill` command (this crate has no libc binding).
fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::{
        OWNER_FILE, REDIS_PID_FILE, SERVER_PID_FILE, children_of, cleanup_stale,
        create_instance_dir, free_port, process_alive, process_start_time,
    };
    use std::process::{Command, Stdio};

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(!ports.contains(&6379));
    }

    #[test]
    fn reads_process_start_times_and_children() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(u32::MAX), None);

        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(children_of(me).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children_of(me).contains(&child.id()));
    }

    /// A base directory of its own for one test.
    fn test_base(name: &str) -> std::path::PathBuf {
        let base = std::env::temp_dir().join(format!(
            "tierkit-services-unit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        base
    }

    #[test]
    fn cleanup_kills_only_redis_servers_of_dead_owners() {
        let Some(binaries) = crate::RedisBinaries::for_tests().unwrap() else {
            return;
        };
        let base = test_base("cleanup");

        // A dead owner: a process that has exited and been reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        let dead_pid = gone.id();
        gone.wait().unwrap();

        // A redis-server "left behind" by that dead owner.
        let stale = create_instance_dir(&base).unwrap();
        std::fs::write(stale.join(OWNER_FILE), format!("pid={dead_pid}\nstart=1\n")).unwrap();
        let port = free_port().unwrap();
        let mut child = Command::new(binaries.server())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir"])
            .arg(&stale)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::fs::write(stale.join(SERVER_PID_FILE), child.id().to_string()).unwrap();

        // A live owner's directory (ours), naming a process that is not a redis-server (us):
        // neither the directory nor the process may be touched.
        let live = create_instance_dir(&base).unwrap();
        std::fs::write(live.join(REDIS_PID_FILE), std::process::id().to_string()).unwrap();
        // A dead owner's directory naming a process that is not a redis-server (us).
        let foreign = create_instance_dir(&base).unwrap();
        std::fs::write(
            foreign.join(OWNER_FILE),
            format!("pid={dead_pid}\nstart=1\n"),
        )
        .unwrap();
        std::fs::write(foreign.join(REDIS_PID_FILE), std::process::id().to_string()).unwrap();

        // Give redis-server time to change into its directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/cwd", child.id()))
            .ok()
            .as_ref()
            != Some(&stale)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        let report = cleanup_stale(&base).unwrap();
        assert_eq!(report.killed, [child.id()]);
        assert!(child.wait().is_ok());
        let mut removed = report.removed.clone();
        removed.sort();
        let mut expected = vec![stale.clone(), foreign.clone()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(live.is_dir());
        assert!(process_alive(std::process::id()));

        assert_eq!(cleanup_stale(&base).unwrap().killed, Vec::<u32>::new());
        std::fs::remove_dir_all(&base).unwrap();
        assert!(cleanup_stale(&base).unwrap().removed.is_empty());
    }
}
