//! Finding `redis-server` and `redis-cli`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::env;
use crate::error::ServiceError;

/// Directories searched after `PATH`, since `PATH` may lack the system directories.
const SYSTEM_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin"];

/// The Debian package that brings both `redis-server` and `redis-cli`.
const PACKAGE: &str = "redis-server";

/// The `redis-server` and `redis-cli` executables to run, with the server's version.
///
/// The paths are absolute and are used as found, symbolic links included: Debian's
/// `redis-server` is a link to `redis-check-rdb`, and Redis picks its mode from the name it is
/// started by, so they must not be canonicalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBinaries {
    /// Absolute path of `redis-server`.
    server: PathBuf,
    /// Absolute path of `redis-cli`.
    cli: PathBuf,
    /// The server's version, for instance `7.0.15`.
    version: String,
}

impl RedisBinaries {
    /// Finds `redis-server` and `redis-cli`: from the environment variables
    /// [`env::REDIS_SERVER`] and [`env::REDIS_CLI`] when set, else from `PATH`, then
    /// `/usr/bin`, `/usr/sbin` and `/usr/local/bin` (`redis-cli` is first looked for next to
    /// the server). Runs `redis-server --version` to check that the server works.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotInstalled`] when a binary is nowhere to be found (its message gives
    /// the `apt-get` command to run, with `sudo` unless running as root);
    /// [`ServiceError::BadBinary`] when a binary is found but cannot be run.
    pub fn locate() -> Result<Self, ServiceError> {
        locate_with(&Search {
            server_env: std::env::var_os(env::REDIS_SERVER),
            cli_env: std::env::var_os(env::REDIS_CLI),
            path: std::env::var_os("PATH"),
            system_dirs: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
            root: running_as_root(),
        })
    }

    /// Uses the given binaries (relative paths are taken from the current directory), after
    /// checking that they are executable files and that the server reports its version.
    ///
    /// # Errors
    ///
    /// [`ServiceError::BadBinary`] when either cannot be used.
    pub fn from_paths(server: &Path, cli: &Path) -> Result<Self, ServiceError> {
        let server = checked_binary(env::REDIS_SERVER, server)?;
        let cli = checked_binary(env::REDIS_CLI, cli)?;
        let version = server_version(&server)?;
        Ok(Self {
            server,
            cli,
            version,
        })
    }

    /// For tests: the binaries, or `Ok(None)` after printing `skipped: <reason>` when they
    /// are missing and [`env::REQUIRE_SERVICES`] is not set. With [`env::REQUIRE_SERVICES`]
    /// set (as `cargo xtask test` and CI do), a missing binary is an error, so the test fails
    /// instead of passing silently. A test that gets them is recorded as running against the
    /// service `redis-server` ([`record_use`](crate::record_use)).
    ///
    /// # Errors
    ///
    /// The error of [`RedisBinaries::locate`], when services are required; the error of
    /// [`record_use`](crate::record_use).
    pub fn for_tests() -> Result<Option<Self>, ServiceError> {
        match Self::locate() {
            Ok(binaries) => {
                crate::record_use("redis-server")?;
                Ok(Some(binaries))
            }
            Err(err) if !services_required() => {
                eprintln!("skipped: {err}");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Absolute path of `redis-server`.
    #[must_use]
    pub fn server(&self) -> &Path {
        &self.server
    }

    /// Absolute path of `redis-cli`.
    #[must_use]
    pub fn cli(&self) -> &Path {
        &self.cli
    }

    /// The server's version, as `redis-server --version` reports it (for instance `7.0.15`).
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The major version of the server (`7` for `7.0.15`), or 0 if it cannot be read.
    #[must_use]
    pub fn major_version(&self) -> u32 {
        self.version
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0)
    }
}

/// Whether the environment asks for services to be required: [`env::REQUIRE_SERVICES`] is set
/// to anything but an empty string or `0`.
#[must_use]
pub fn services_required() -> bool {
    std::env::var_os(env::REQUIRE_SERVICES).is_some_and(|value| !value.is_empty() && value != "0")
}

/// Whether this process runs as root (effective user id 0), from `/proc/self/status`, else from
/// `id -u`.
#[must_use]
pub fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1));
        if let Some(euid) = euid {
            return euid == "0";
        }
    }
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The shell command that installs `redis-server` and `redis-cli` on Debian or Ubuntu:
/// prefixed with `sudo` unless `root`.
#[must_use]
pub fn install_command(root: bool) -> String {
    if root {
        format!("apt-get update && apt-get install -y {PACKAGE}")
    } else {
        format!("sudo apt-get update && sudo apt-get install -y {PACKAGE}")
    }
}

/// Where to look, separated from the process environment for tests.
pub(crate) struct Search {
    /// Value of [`env::REDIS_SERVER`].
    pub(crate) server_env: Option<OsString>,
    /// Value of [`env::REDIS_CLI`].
    pub(crate) cli_env: Option<OsString>,
    /// Value of `PATH`.
    pub(crate) path: Option<OsString>,
    /// Directories searched after `PATH`.
    pub(crate) system_dirs: Vec<PathBuf>,
    /// Whether running as root (chooses the install advice).
    pub(crate) root: bool,
}

impl Search {
    /// `PATH`'s directories, then the system directories, without duplicates.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let from_path = self
            .path
            .as_ref()
            .map(|path| std::env::split_paths(path).collect::<Vec<_>>())
            .unwrap_or_default();
        for dir in from_path
            .into_iter()
            .chain(self.system_dirs.iter().cloned())
        {
            if dir.is_absolute() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

/// [`RedisBinaries::locate`] over an explicit search.
pub(crate) fn locate_with(search: &Search) -> Result<RedisBinaries, ServiceError> {
    let dirs = search.dirs();
    let server = find(
        "redis-server",
        env::REDIS_SERVER,
        search.server_env.as_ref(),
        &dirs,
        search.root,
    )?;
    let mut cli_dirs = Vec::new();
    if let Some(dir) = server.parent() {
        cli_dirs.push(dir.to_path_buf());
    }
    cli_dirs.extend(
        dirs.into_iter()
            .filter(|dir| Some(dir.as_path()) != server.parent()),
    );
    let cli = find(
        "redis-cli",
        env::REDIS_CLI,
        search.cli_env.as_ref(),
        &cli_dirs,
        search.root,
    )?;
    let version = server_version(&server)?;
    Ok(RedisBinaries {
        server,
        cli,
        version,
    })
}

/// Finds one binary: from `env_value` when set and not empty, else in `dirs`.
fn find(
    binary: &'static str,
    env_var: &'static str,
    env_value: Option<&OsString>,
    dirs: &[PathBuf],
    root: bool,
) -> Result<PathBuf, ServiceError> {
    if let Some(value) = env_value.filter(|value| !value.is_empty()) {
        return checked_binary(env_var, Path::new(value));
    }
    for dir in dirs {
        let candidate = dir.join(binary);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ServiceError::NotInstalled {
        binary,
        env_var,
        searched: dirs.to_vec(),
        install: install_command(root),
    })
}

/// `path` made absolute, if it is an executable file.
fn checked_binary(env_var: &'static str, path: &Path) -> Result<PathBuf, ServiceError> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|err| ServiceError::io("reading the current directory", err))?
            .join(path)
    };
    let problem = match std::fs::metadata(&absolute) {
        Err(err) => Some(format!("it cannot be read ({err})")),
        Ok(meta) if !meta.is_file() => Some("it is not a file".to_owned()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Some("it is not executable".to_owned())
        }
        Ok(_) => None,
    };
    match problem {
        None => Ok(absolute),
        Some(problem) => Err(ServiceError::BadBinary {
            env_var,
            path: absolute,
            problem,
        }),
    }
}

/// Whether `path` is an executable regular file (following links).
fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs `server --version` and reads the `v=` field of its output.
fn server_version(server: &Path) -> Result<String, ServiceError> {
    let bad = |problem: String| ServiceError::BadBinary {
        env_var: env::REDIS_SERVER,
        path: server.to_path_buf(),
        problem,
    };
    let output = Command::new(server)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|err| {
            bad(format!(
                "`{} --version` could not start: {err}",
                server.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .filter(|version| version.chars().next().is_some_and(|c| c.is_ascii_digit()));
    match version {
        Some(version) if output.status.success() => Ok(version.to_owned()),
        _ => Err(bad(format!(
            "`{} --version` did not report a Redis version ({}; output: {:?})",
            server.display(),
            output.status,
            text.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::{Search, install_command, locate_with};
    use crate::error::ServiceError;
    use std::path::PathBuf;

    /// A search that finds nothing: no environment variables and an empty directory.
    fn empty_search(root: bool) -> Search {
        Search {
            server_env: None,
            cli_env: None,
            path: Some(
                std::env::temp_dir()
                    .join("tierkit-no-such-dir")
                    .into_os_string(),
            ),
            system_dirs: Vec::new(),
            root,
        }
    }

    #[test]
    fn missing_binaries_give_the_install_command() {
        let err = locate_with(&empty_search(true)).unwrap_err();
        assert!(matches!(
            err,
            ServiceError::NotInstalled {
                binary: "redis-server",
                ..
            }
        ));
        let message = err.to_string();
        assert!(
            message.contains("Install it with: apt-get update && apt-get install -y redis-server"),
            "{message}"
        );
        assert!(message.contains("TIERKIT_REDIS_SERVER"), "{message}");

        let message = locate_with(&empty_search(false)).unwrap_err().to_string();
        assert!(
            message.contains(
                "Install it with: sudo apt-get update && sudo apt-get install -y redis-server"
            ),
            "{message}"
        );
        assert_eq!(
            install_command(false),
            "sudo apt-get update && sudo apt-get install -y redis-server"
        );
    }

    #[test]
    fn a_bad_environment_variable_is_reported_as_such() {
        let mut search = empty_search(true);
        search.server_env = Some("/nonexistent/redis-server".into());
        let err = locate_with(&search).unwrap_err();
        match &err {
            ServiceError::BadBinary { env_var, path, .. } => {
                assert_eq!(*env_var, "TIERKIT_REDIS_SERVER");
                assert_eq!(path, &PathBuf::from("/nonexistent/redis-server"));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("cannot be read"), "{err}");

        search.server_env = Some(std::env::temp_dir().into_os_string());
        let err = locate_with(&search).unwrap_err();
        assert!(err.to_string().contains("it is not a file"), "{err}");
    }
}
