//! The command line.

use std::time::Duration;

use clap::Parser;
use tierkit::{AnyReadPolicy, AnyWritePolicy};

/// A read-through cache over moka, Redis and S3 at work, in front of a slow origin.
///
/// Clients read Zipf-distributed keys through `Cache::get_or_fetch` (and now and then write
/// one with `set`), with fail-safe and stale-while-revalidate on, while the demo plays its
/// acts: a cold start, a stampede on one cold key, Redis stopped and started again, and the
/// origin failing for a while. A live line shows what is happening; a summary and a
/// per-second timeline end the run.
///
/// By default it starts everything it needs and removes it afterwards: a private
/// `redis-server` on a free loopback port (it must be installed: `apt-get install
/// redis-server`; `cargo xtask demo` installs it when missing) and an in-process S3 server.
/// With `--redis-url` or `--s3-endpoint`, the same workload runs against your own servers,
/// under a key prefix of its own that is removed at the end; acts that would stop a server
/// the demo did not start are skipped.
#[derive(Debug, Parser)]
#[command(name = "tierkit-demo", version)]
pub struct Args {
    /// How long the workload runs, in seconds (at least 10; the acts are placed in
    /// proportion).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub duration: u64,

    /// Concurrent clients, each a task reading and writing through the one cache.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,

    /// Distinct keys, read with Zipf popularity (exponent 1): a few hot keys, a long tail.
    /// L1 holds a tenth of them, so L2 and L3 serve the tail.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub keys: u64,

    /// Requests per second, all clients together (each client paces itself; a client whose
    /// requests are slow falls behind, as a service would).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub rate: u64,

    /// Latency of one origin call (the simulated database query), in milliseconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub origin_ms: u64,

    /// Use this Redis (`redis://host:port`, `rediss://...`) instead of a private server.
    /// The Redis outage act is then skipped.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Use this S3-compatible endpoint (`http://host:port`) instead of the in-process S3
    /// server; needs `--bucket`. Credentials come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`, the region from `--s3-region`.
    #[arg(long, value_name = "URL", requires = "bucket")]
    pub s3_endpoint: Option<String>,

    /// The bucket on `--s3-endpoint` (it must exist).
    #[arg(long, value_name = "NAME", requires = "s3_endpoint")]
    pub bucket: Option<String>,

    /// The region of `--s3-endpoint`.
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// How L2 (Redis) and L3 (S3) are read: `sequential` (Redis, then S3 when Redis has no
    /// fresh value), `race` or `race-finish` (both at once, the first fresh hit wins),
    /// `parallel` (both at once, the better value wins). With a policy other than
    /// `sequential`, Redis and S3 are one `Composition` under that policy, so their hits are
    /// reported together as L2.
    #[arg(long, value_name = "POLICY", default_value = "sequential")]
    pub read_policy: AnyReadPolicy,

    /// How a write reaches Redis and S3: `optimistic-parallel` (both at once; an error only
    /// when both fail), `sequential` (Redis, then S3), `race` (the first success answers, the
    /// other write finishes in the background).
    #[arg(long, value_name = "POLICY", default_value = "optimistic-parallel")]
    pub write_policy: AnyWritePolicy,

    /// Print the summary and the timeline as one JSON document on standard output (the live
    /// display and the acts go to standard error).
    #[arg(long)]
    pub json: bool,

    /// Seed of the key draws: the same seed gives the same sequence of keys.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl Args {
    /// The run's duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }

    /// Latency of one origin call.
    pub fn origin_latency(&self) -> Duration {
        Duration::from_millis(self.origin_ms)
    }

    /// Whether Redis and S3 are composed into one tier (any read policy but sequential).
    pub fn composed(&self) -> bool {
        !matches!(self.read_policy, AnyReadPolicy::Sequential(_))
    }
}
