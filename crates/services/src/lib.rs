//! Private Redis processes for tierkit's tests, demo and CI.
//!
//! - [`RedisBinaries::locate`] finds `redis-server` and `redis-cli` (from
//!   [`env::REDIS_SERVER`] / [`env::REDIS_CLI`], else `PATH`); when they are missing, the
//!   error gives the `apt-get` command that installs them.
//! - [`RedisServer::start`] runs a `redis-server` child process on a free port of
//!   127.0.0.1, without persistence, in a fresh directory under [`default_base_dir`], and
//!   waits until it answers `PING`. It can be stopped and restarted on the same port, and
//!   answers simple commands through [`RedisServer::command`]. Dropping it kills the process.
//! - [`RedisCluster::start`] runs a Redis Cluster of such servers.
//! - [`RedisSentinel::start`] runs a primary, its replica and a Redis Sentinel watching them.
//! - [`cleanup_stale`] kills the servers a killed run left behind (only those, only ours).
//! - [`service_for_tests`] and [`RedisBinaries::for_tests`] decide, for a test, whether it
//!   runs, skips or fails for lack of a service, and record each test that runs against one
//!   ([`record_use`]), for `cargo xtask` to count ([`count_uses`]).
//!
//! The machine may run a Redis of its own on the default port 6379: this crate never uses a
//! fixed port and never talks to a server it did not start.
//!
//! ```no_run
//! use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions};
//!
//! # fn main() -> Result<(), tierkit_services::ServiceError> {
//! // In a test: skip (printing why) when Redis is not installed, unless
//! // TIERKIT_REQUIRE_SERVICES is set, as in `cargo xtask test` and CI.
//! let Some(binaries) = RedisBinaries::for_tests()? else {
//!     return Ok(());
//! };
//! let server = RedisServer::start(&binaries, RedisServerOptions::new())?;
//! assert_eq!(server.command(&["PING"])?, "PONG");
//! println!("connect to {}", server.url()); // redis://127.0.0.1:PORT
//! server.stop()?;
//! server.restart()?; // same port
//! # Ok(())
//! # }
//! ```
//!
//! Everything is blocking and uses only the standard library.

#![warn(clippy::missing_docs_in_private_items)]

mod binaries;
mod cluster;
mod commandstats;
mod dirs;
mod error;
mod resp;
mod sentinel;
mod server;
mod uses;

pub use binaries::{RedisBinaries, install_command, running_as_root, services_required};
pub use cluster::{RedisCluster, SLOT_COUNT, key_slot};
pub use commandstats::{CommandCalls, calls_since, parse_command_calls};
pub use dirs::{CleanupReport, cleanup_stale, default_base_dir, target_dir};
pub use error::{ServiceError, error_chain};
pub use resp::Reply;
pub use sentinel::{
    RedisSentinel, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS, SENTINEL_SERVICE_NAME,
};
pub use server::{CLUSTER_NODE_TIMEOUT_MS, RedisServer, RedisServerOptions};
pub use uses::{count_uses, record_use, service_for_tests, service_name};

/// The environment variables through which `cargo xtask` hands the services it started to
/// the tests (see `cargo xtask --help`).
pub mod env {
    /// URL of a standalone Redis server for tests: `redis://127.0.0.1:PORT`.
    pub const REDIS_URL: &str = "TIERKIT_REDIS_URL";
    /// URL of a Redis Cluster for tests, in fred's form:
    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`.
    pub const REDIS_CLUSTER_URL: &str = "TIERKIT_REDIS_CLUSTER_URL";
    /// URL of a sentinel deployment for tests (a primary, its replica, one sentinel; see
    /// [`RedisSentinel`](crate::RedisSentinel)), in fred's form:
    /// `redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster`.
    pub const REDIS_SENTINEL_URL: &str = "TIERKIT_REDIS_SENTINEL_URL";
    /// Absolute path of `redis-server`, for tests that start private servers.
    pub const REDIS_SERVER: &str = "TIERKIT_REDIS_SERVER";
    /// Absolute path of `redis-cli`.
    pub const REDIS_CLI: &str = "TIERKIT_REDIS_CLI";
    /// When set (to anything but an empty string or `0`), tests must fail, not skip, when a
    /// service is missing.
    pub const REQUIRE_SERVICES: &str = "TIERKIT_REQUIRE_SERVICES";
    /// Path of a file to which every test that runs against a service appends a line (see
    /// [`record_use`](crate::record_use)); `cargo xtask` counts them after the run.
    pub const SERVICE_USES: &str = "TIERKIT_SERVICE_USES";
}
