//! [`ServiceError`], the one error type of this crate.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while locating, starting, talking to or stopping a private
/// Redis process. Each message says what is wrong and what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceError {
    /// A Redis binary is neither named by its environment variable nor installed.
    NotInstalled {
        /// The binary looked for: `redis-server` or `redis-cli`.
        binary: &'static str,
        /// The environment variable that can name it.
        env_var: &'static str,
        /// The directories searched.
        searched: Vec<PathBuf>,
        /// The command that installs it (with `sudo` unless running as root).
        install: String,
    },
    /// An environment variable names a Redis binary that cannot be used.
    BadBinary {
        /// The environment variable, or `PATH` when the binary was found there.
        env_var: &'static str,
        /// The path it names.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An operating-system call failed.
    Io {
        /// What was being done, for instance `creating directory /x/y`.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// No free loopback port could be reserved.
    NoFreePort {
        /// Why the last attempt failed.
        reason: String,
    },
    /// `redis-server` exited while starting.
    Exited {
        /// The port it was to listen on.
        port: u16,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log and of its standard error.
        log_tail: String,
    },
    /// `redis-server` did not answer `PING` in time.
    StartTimeout {
        /// The port it was to listen on.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log and of its standard error.
        log_tail: String,
    },
    /// The port of a server being restarted is taken by another process.
    PortInUse {
        /// The port.
        port: u16,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A command was sent to a server that is stopped.
    NotRunning {
        /// The port the server listened on.
        port: u16,
    },
    /// Redis answered a command with an error reply.
    Redis {
        /// The server.
        addr: SocketAddr,
        /// The command, as text.
        command: String,
        /// The error reply, without the leading `-`.
        message: String,
    },
    /// Redis answered something this crate cannot read, or closed the connection.
    Protocol {
        /// The server.
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
    /// An argument is out of range (a cluster size, a node index).
    InvalidArgument {
        /// What is wrong and what is accepted.
        detail: String,
    },
    /// `redis-cli --cluster create` failed.
    ClusterCreate {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard output and error.
        output: String,
    },
    /// The cluster did not become healthy in time.
    ClusterTimeout {
        /// How long we waited.
        waited: Duration,
        /// What was still wrong at the end.
        problem: String,
    },
    /// A sentinel deployment did not reach the state waited for in time.
    SentinelTimeout {
        /// What was waited for.
        waited_for: String,
        /// How long we waited.
        waited: Duration,
        /// What was still wrong at the end.
        problem: String,
    },
    /// A test needs a service that the environment variable `var` should name, but it is not
    /// set, and [`env::REQUIRE_SERVICES`](crate::env::REQUIRE_SERVICES) is.
    NotConfigured {
        /// The environment variable.
        var: &'static str,
    },
    /// A stale `redis-server` of ours did not exit after `SIGKILL`.
    StaleProcess {
        /// Its process id.
        pid: u32,
        /// Its directory.
        dir: PathBuf,
    },
}

impl ServiceError {
    /// An [`ServiceError::Io`] error for `action`.
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }

    /// Whether the server could not listen because its port (or cluster bus port) is taken.
    pub(crate) fn is_address_in_use(&self) -> bool {
        match self {
            Self::Exited { log_tail, .. } | Self::StartTimeout { log_tail, .. } => {
                log_tail.contains("Address already in use")
            }
            Self::PortInUse { .. } => true,
            _ => false,
        }
    }
}

/// Indents every line of `text` by four spaces, for multi-line details in a message.
fn indented(text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        return "    (empty)".to_owned();
    }
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled {
                binary,
                env_var,
                searched,
                install,
            } => {
                let searched: Vec<String> =
                    searched.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "{binary} is not installed: {env_var} is not set and no executable \
                     {binary} is in {}. Install it with: {install} \
                     (or set {env_var} to the absolute path of a {binary} binary)",
                    searched.join(":")
                )
            }
            Self::BadBinary {
                env_var,
                path,
                problem,
            } => write!(
                f,
                "{env_var} names {}, which cannot be used: {problem}. Point {env_var} at an \
                 executable Redis 7 binary, or unset it to search PATH",
                path.display()
            ),
            Self::Io { action, .. } => write!(f, "{action} failed"),
            Self::NoFreePort { reason } => write!(
                f,
                "could not reserve a free port on 127.0.0.1: {reason}. Check that the \
                 loopback interface is up and that ephemeral ports are not exhausted \
                 (`ss -tan | wc -l`)"
            ),
            Self::Exited {
                port,
                status,
                log,
                log_tail,
            } => write!(
                f,
                "redis-server for 127.0.0.1:{port} exited while starting ({status}). \
                 Its log ({}) ends with:\n{}",
                log.display(),
                indented(log_tail)
            ),
            Self::StartTimeout {
                port,
                waited,
                log,
                log_tail,
            } => write!(
                f,
                "redis-server for 127.0.0.1:{port} did not answer PING within {waited:?}; it \
                 was killed. Check that the machine is not overloaded. Its log ({}) ends \
                 with:\n{}",
                log.display(),
                indented(log_tail)
            ),
            Self::PortInUse {
                port,
                log,
                log_tail,
            } => write!(
                f,
                "cannot restart redis-server on 127.0.0.1:{port}: another process took the \
                 port while it was stopped (see `ss -ltnp sport = :{port}`). Start a new \
                 server instead of restarting this one. Its log ({}) ends with:\n{}",
                log.display(),
                indented(log_tail)
            ),
            Self::NotRunning { port } => write!(
                f,
                "the redis-server of 127.0.0.1:{port} is stopped: call restart() before \
                 sending it commands"
            ),
            Self::Redis {
                addr,
                command,
                message,
            } => write!(f, "Redis at {addr} rejected `{command}`: {message}"),
            Self::Protocol { addr, detail } => {
                write!(f, "unexpected answer from Redis at {addr}: {detail}")
            }
            Self::InvalidArgument { detail } => write!(f, "invalid argument: {detail}"),
            Self::ClusterCreate {
                command,
                status,
                output,
            } => write!(
                f,
                "`{command}` failed ({status}); the nodes were stopped. Its output:\n{}",
                indented(output)
            ),
            Self::ClusterTimeout { waited, problem } => write!(
                f,
                "the Redis cluster was not healthy after {waited:?}: {problem}\nCheck that \
                 the machine is not overloaded; the nodes' logs (RedisServer::log_tail) tell \
                 why they do not agree"
            ),
            Self::SentinelTimeout {
                waited_for,
                waited,
                problem,
            } => write!(
                f,
                "the sentinel deployment was not {waited_for} after {waited:?}: {problem}\nThe \
                 sentinel's log (RedisSentinel::sentinel, RedisServer::log_tail) tells what it did"
            ),
            Self::NotConfigured { var } => write!(
                f,
                "{var} is not set, but {} is: a test that needs this service may not skip. \
                 Run the tests through `cargo xtask test` (or paste the export lines of \
                 `cargo xtask services`)",
                crate::env::REQUIRE_SERVICES
            ),
            Self::StaleProcess { pid, dir } => write!(
                f,
                "stale redis-server {pid} (directory {}) did not exit after SIGKILL; check \
                 it with `ps -o pid,stat,cmd -p {pid}`",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `err` and every cause of its [`source()`](std::error::Error::source) chain, joined by `: `,
/// for a one-line message (each error's own message says only what failed at its level).
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    for cause in std::iter::successors(err.source(), |&e| e.source()) {
        line.push_str(": ");
        line.push_str(&cause.to_string());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::ServiceError;
    use crate::error_chain;

    #[test]
    fn a_report_chain_prints_each_message_once() {
        let err = ServiceError::io(
            "creating directory /x",
            std::io::Error::other("no space left"),
        );
        assert_eq!(
            error_chain(&err),
            "creating directory /x failed: no space left"
        );
    }
}
