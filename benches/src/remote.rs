//! The rows that need the remote services: a private `redis-server` (started through
//! `tierkit-services` on a free loopback port, never the machine's own Redis) and the
//! in-process S3 server (`tierkit-s3-server`). Both are started here and stopped at the end.
//!
//! * Time rows (`latency`): G2 and G2c (an L1 miss served by Redis, one caller or 100
//!   concurrent tasks on one client), G4 and G4s (writes through moka and Redis), G8 (reads
//!   and writes that reach S3), each a ratio against the raw clients (fred, aws-sdk-s3, moka)
//!   doing the same work: the same Redis key and value bytes, the same S3 object.
//! * Count rows (`counts`): G5 (1,000 concurrent `get_or_fetch` of one key, with exact
//!   numbers of Redis commands from `INFO commandstats`, S3 requests from the server's
//!   counters, loader calls and encodes) and the Redis commands per L1 hit of each read
//!   policy.
//!
//! Remote operations wait on the network, so these rows run fewer operations per batch than
//! the in-process ones (`redis_plan`, `s3_plan`).

mod counts;
mod hit_ratio;
mod latency;

use std::hint::black_box;
use std::time::Duration;

use tierkit_core::{CacheKey, CacheValue, Clock};
use tierkit_redis::RedisBackend;
use tierkit_s3::S3Backend;
use tierkit_s3_server::{S3Server, S3ServerOptions};
use tierkit_services::{CommandCalls, RedisBinaries, RedisServer, RedisServerOptions};
use tokio::runtime::Runtime;

use crate::{Plan, Row};

/// The payload size of every value written or read here.
const VALUE_BYTES: usize = 256;

/// The bound of every round trip of the tiers built here: far above any normal answer, so
/// that no measured operation times out.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Measures the remote rows and appends them to `rows`; `hit_ratio_reads` reads per G7
/// figure.
pub fn rows(plan: Plan, services: &Services, hit_ratio_reads: usize, rows: &mut Vec<Row>) {
    latency::rows(plan, services, rows);
    counts::rows(services, rows);
    hit_ratio::rows(services, hit_ratio_reads, rows);
}

/// The services and the runtimes the rows run on.
pub struct Services {
    /// The private `redis-server`; killed when dropped.
    redis: RedisServer,
    /// The in-process S3 server, on `server_runtime`.
    s3: Option<S3Server>,
    /// One worker thread serving S3 requests, as a separate server process would; shut down
    /// after the server in [`Services::stop`].
    server_runtime: Runtime,
    /// The runtime of most rows: one thread, the caller's.
    pub current: Runtime,
    /// A multi-thread runtime (2 workers), for the concurrent rows.
    pub multi: Runtime,
}

impl Services {
    /// Starts a private `redis-server` and the in-process S3 server, and builds the runtimes.
    ///
    /// # Errors
    ///
    /// Why a server could not be started (no `redis-server` found, a port refused).
    pub fn start() -> Result<Self, String> {
        let binaries = RedisBinaries::locate().map_err(|err| err.to_string())?;
        let redis = RedisServer::start(&binaries, RedisServerOptions::new())
            .map_err(|err| format!("starting a private redis-server failed: {err}"))?;
        let server_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-server")
            .enable_all()
            .build()
            .map_err(|err| format!("no tokio runtime: {err}"))?;
        let s3 = server_runtime
            .block_on(S3Server::start(S3ServerOptions::new()))
            .map_err(|err| format!("starting the in-process S3 server failed: {err}"))?;
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("no tokio runtime: {err}"))?;
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|err| format!("no tokio runtime: {err}"))?;
        Ok(Services {
            redis,
            s3: Some(s3),
            server_runtime,
            current,
            multi,
        })
    }

    /// Stops both servers (dropping does the same; this also reports a failed stop).
    pub fn stop(mut self) {
        drop(self.s3.take());
        self.server_runtime.shutdown_timeout(Duration::from_secs(5));
        if let Err(err) = self.redis.stop() {
            eprintln!("stopping the private redis-server failed: {err}");
        }
    }

    /// The private Redis server's URL.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// The S3 server (present until [`Services::stop`]).
    fn s3(&self) -> Result<&S3Server, String> {
        self.s3
            .as_ref()
            .ok_or_else(|| "the S3 server was stopped".to_owned())
    }

    /// A Redis tier on the private server under `namespace`, connected from `runtime` (its
    /// connection task runs there: use it only from that runtime).
    fn redis_tier(&self, runtime: &Runtime, namespace: &str) -> Result<RedisBackend, String> {
        runtime
            .block_on(
                RedisBackend::builder(self.redis.url().as_str())
                    .namespace(namespace)
                    .command_timeout(COMMAND_TIMEOUT)
                    .build(),
            )
            .map_err(|err| format!("the Redis tier does not connect: {err}"))
    }

    /// An S3 tier on the in-process server under `prefix`, built in `runtime`.
    fn s3_tier(&self, runtime: &Runtime, prefix: &str) -> Result<S3Backend, String> {
        let s3 = self.s3()?;
        runtime
            .block_on(
                S3Backend::compatible(
                    s3.endpoint(),
                    s3.region(),
                    s3.access_key(),
                    s3.secret_key(),
                    s3.bucket(),
                )
                .prefix(prefix)
                .operation_timeout(COMMAND_TIMEOUT)
                .build(),
            )
            .map_err(|err| format!("the S3 tier does not build: {err}"))
    }

    /// Calls per Redis command so far, without `INFO` itself.
    fn redis_commands(&self) -> Result<CommandCalls, String> {
        self.redis
            .command_calls()
            .map_err(|err| format!("INFO commandstats failed: {err}"))
    }
}

/// The `PXAT` expiry the Redis tier writes for `value`.
///
/// # Errors
///
/// An expiry past what Redis accepts (beyond `i64` milliseconds).
pub fn pxat(value: &CacheValue) -> Result<fred::types::Expiration, String> {
    i64::try_from(value.expires_at().as_unix_millis())
        .map(fred::types::Expiration::PXAT)
        .map_err(|err| err.to_string())
}

/// A key of these rows.
fn key(name: &str) -> Result<CacheKey, String> {
    CacheKey::new(format!("bench:{name}")).map_err(|err| err.to_string())
}

/// A value of [`VALUE_BYTES`], fresh for an hour.
fn value() -> CacheValue {
    CacheValue::with_ttl(
        vec![7u8; VALUE_BYTES],
        Clock::System.now(),
        Duration::from_secs(3600),
    )
}

/// A namespace (Redis) or prefix (S3) of its own for each row, so rows never see each
/// other's keys.
fn namespace(row: &str) -> String {
    format!("tk-bench-{}-{row}", std::process::id())
}

/// Redis rows: the pairs of `plan`, and calls of [`PER_CALL`] operations per batch (2,000
/// operations per batch in the quick plan, 10,000 in the full one).
fn redis_plan(plan: Plan) -> Plan {
    Plan {
        pairs: plan.pairs,
        batch: (plan.batch / (10 * PER_CALL)).max(4),
    }
}

/// S3 rows: the pairs of `plan`, and 200 operations per batch in the quick plan (1,000 in the
/// full one): an S3 request takes about a millisecond.
fn s3_plan(plan: Plan) -> Plan {
    Plan {
        pairs: plan.pairs,
        batch: (plan.batch / 100).max(4),
    }
}

/// Operations per timed call of the Redis rows: one `block_on` runs this many sequential
/// operations, so that entering the runtime is not part of each one.
const PER_CALL: usize = 10;

/// A timed call for [`crate::ratio`]: `per_call` sequential awaits of `op` in one
/// `block_on` of `runtime`.
fn on<'a, T>(
    runtime: &'a Runtime,
    per_call: usize,
    mut op: impl AsyncFnMut() -> T + 'a,
) -> impl FnMut() + 'a {
    move || {
        runtime.block_on(async {
            for _ in 0..per_call {
                black_box(op().await);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_plans_are_smaller() {
        assert_eq!(redis_plan(Plan::QUICK).batch * PER_CALL, 2_000);
        assert_eq!(redis_plan(Plan::FULL).batch * PER_CALL, 10_000);
        assert_eq!(s3_plan(Plan::QUICK).batch, 200);
        assert_eq!(s3_plan(Plan::QUICK).pairs, 15);
    }
}
