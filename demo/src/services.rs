//! The servers behind the tiers: started by the demo (a private `redis-server`, the
//! in-process S3 server) or given on the command line, and the tiers built on them.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tierkit::Backend;
use tierkit::redis::RedisBackend;
use tierkit::s3::S3Backend;
use tierkit_s3_server::{S3Server, S3ServerOptions};
use tierkit_services::{RedisBinaries, RedisServer, RedisServerOptions, error_chain};

use crate::args::Args;

/// Bound of one Redis command: a stopped Redis costs a read at most this much.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Bound of one S3 operation (with its retries).
pub const S3_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis server of the run.
pub enum Redis {
    /// Started by the demo, stopped and removed when dropped.
    Private(RedisServer),
    /// Given with `--redis-url`; never stopped.
    External(String),
}

impl Redis {
    /// Starts a private server, or names the one given.
    pub fn start(args: &Args) -> Result<Self, Box<dyn Error>> {
        if let Some(url) = &args.redis_url {
            return Ok(Redis::External(url.clone()));
        }
        let binaries = RedisBinaries::locate().map_err(|error| {
            format!(
                "the demo starts a private redis-server and cannot find one: {}\n\
                 (`cargo xtask demo` installs it when missing; or pass --redis-url)",
                error_chain(&error)
            )
        })?;
        let server = RedisServer::start(&binaries, RedisServerOptions::new()).map_err(|error| {
            format!(
                "cannot start a private redis-server: {}",
                error_chain(&error)
            )
        })?;
        Ok(Redis::Private(server))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        match self {
            Redis::Private(server) => server.url(),
            Redis::External(url) => url.clone(),
        }
    }

    /// The private server, which the demo may stop and start.
    pub fn private(&self) -> Option<&RedisServer> {
        match self {
            Redis::Private(server) => Some(server),
            Redis::External(_) => None,
        }
    }

    /// What the report calls it.
    pub fn describe(&self) -> String {
        match self {
            Redis::Private(server) => format!("private redis-server at {}", server.url()),
            Redis::External(url) => format!("{url} (given)"),
        }
    }
}

/// The S3 store of the run.
pub enum S3 {
    /// The in-process server, started by the demo; its data goes with it.
    Private(S3Server),
    /// Given with `--s3-endpoint` and `--bucket`.
    External {
        /// The endpoint URL.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// The region.
        region: String,
    },
}

impl S3 {
    /// Starts the in-process server, or names the store given.
    pub async fn start(args: &Args) -> Result<Self, Box<dyn Error>> {
        if let (Some(endpoint), Some(bucket)) = (&args.s3_endpoint, &args.bucket) {
            return Ok(S3::External {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                region: args.s3_region.clone(),
            });
        }
        let server = S3Server::start(S3ServerOptions::new())
            .await
            .map_err(|error| {
                format!(
                    "cannot start the in-process S3 server: {}",
                    error_chain(&error)
                )
            })?;
        Ok(S3::Private(server))
    }

    /// What the report calls it.
    pub fn describe(&self) -> String {
        match self {
            S3::Private(server) => format!(
                "in-process S3 server at {}, bucket {}",
                server.endpoint(),
                server.bucket()
            ),
            S3::External {
                endpoint, bucket, ..
            } => format!("{endpoint}, bucket {bucket} (given)"),
        }
    }

    /// S3 requests served, when the server is the demo's own.
    pub fn requests(&self) -> Option<u64> {
        match self {
            S3::Private(server) => Some(server.requests().total()),
            S3::External { .. } => None,
        }
    }

    /// Stops the in-process server and removes its data.
    pub async fn close(self) -> Result<(), Box<dyn Error>> {
        if let S3::Private(server) = self {
            server.close().await?;
        }
        Ok(())
    }
}

/// The remote tiers of the run.
pub struct Tiers {
    /// L2.
    pub redis: RedisBackend,
    /// L3.
    pub s3: S3Backend,
}

impl Tiers {
    /// Connects both tiers, under a namespace (Redis) and prefix (S3) of this run only.
    pub async fn connect(redis: &Redis, s3: &S3) -> Result<Self, Box<dyn Error>> {
        let run = run_id();
        let redis = RedisBackend::builder(redis.url())
            .namespace(&format!("tierkit-demo:{run}"))
            .command_timeout(REDIS_TIMEOUT)
            .label("redis")
            .build()
            .await
            .map_err(|error| {
                format!(
                    "cannot connect to Redis at {}: {}",
                    redis.url(),
                    error_chain(&error)
                )
            })?;
        let prefix = format!("tierkit-demo/{run}/");
        let builder = match s3 {
            S3::Private(server) => S3Backend::compatible(
                server.endpoint(),
                server.region(),
                server.access_key(),
                server.secret_key(),
                server.bucket(),
            ),
            S3::External {
                endpoint,
                bucket,
                region,
            } => {
                let access_key = std::env::var("AWS_ACCESS_KEY_ID").map_err(
                    |_| "--s3-endpoint needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )?;
                let secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(
                    |_| "--s3-endpoint needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )?;
                S3Backend::compatible(endpoint, region, &access_key, &secret_key, bucket)
            }
        };
        let s3 = builder
            .prefix(&prefix)
            .operation_timeout(S3_TIMEOUT)
            .label("s3")
            .build()
            .await
            .map_err(|error| format!("cannot use the S3 bucket: {}", error_chain(&error)))?;
        Ok(Tiers { redis, s3 })
    }

    /// Removes what the run stored on the servers it was given (its Redis namespace, its S3
    /// prefix; the demo's own servers go away whole), then closes the Redis connections.
    /// Failures are reported, not fatal: a server may be gone.
    pub async fn clean_up(self, clear_redis: bool, clear_s3: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if clear_redis && let Err(error) = self.redis.clear().await {
            problems.push(format!(
                "removing the run's Redis keys: {}",
                error_chain(&error)
            ));
        }
        if clear_s3 && let Err(error) = self.s3.clear().await {
            problems.push(format!(
                "removing the run's S3 objects: {}",
                error_chain(&error)
            ));
        }
        self.redis.shutdown().await;
        problems
    }
}

/// A name for this run's keys: process id and start time.
fn run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    format!("{}-{secs}", std::process::id())
}
