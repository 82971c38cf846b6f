//! The tierkit demo: a read-through cache over moka, Redis and S3 in front of a slow origin,
//! through a cold start, a stampede, a Redis outage and an origin outage.
//!
//! `cargo xtask demo` runs it (installing `redis-server` first when it is missing);
//! `cargo run -p tierkit-demo -- --help` lists its flags.

mod acts;
mod args;
mod display;
mod origin;
mod report;
mod services;
mod stats;
mod warnings;
mod workload;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tierkit::codec::Postcard;
use tierkit::moka::MokaLocal;
use tierkit::{Cache, Composition, FetchOptions};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt;

use crate::acts::Director;
use crate::args::Args;
use crate::display::{Display, format_latency, thousands};
use crate::origin::{Origin, Product};
use crate::report::Report;
use crate::services::{REDIS_TIMEOUT, Redis, S3, S3_TIMEOUT, Tiers};
use crate::stats::Recorder;
use crate::warnings::{CountingLayer, Warnings};
use crate::workload::Workload;

/// How long stopping clients may take before they are aborted (each request is bounded by
/// the cache's timeouts well below this).
const STOP_CLIENTS: Duration = Duration::from_secs(5);
/// The longest a read may wait: past it, the caller gets the stale value or an error.
pub const HARD_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    let warnings = Arc::new(Warnings::default());
    let subscriber = tracing_subscriber::registry().with(CountingLayer(Arc::clone(&warnings)));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!("tierkit-demo: a tracing subscriber was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tierkit-demo: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, warnings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tierkit-demo: {}", tierkit_services::error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// The whole run. Everything it starts is stopped and removed on every way out: the private
/// servers by their drops (also on an early error), the data stored on given servers by
/// [`Tiers::clean_up`].
async fn run(args: Args, warnings: Arc<Warnings>) -> Result<ExitCode, Box<dyn Error>> {
    // Registered first, so that Ctrl-C (or a SIGTERM) during the run cleans up.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let display = Display::new(args.duration(), args.json);

    let redis = tokio::task::block_in_place(|| Redis::start(&args))?;
    let s3 = S3::start(&args).await?;
    let tiers = Tiers::connect(&redis, &s3).await?;

    // Freshness in proportion to the run: every key goes stale about once during the origin
    // outage (a fifth of the run), so fail-safe has work to do.
    let ttl = Duration::from_secs((args.duration / 5).max(1));
    let throttle = ttl / 4;
    let options = FetchOptions::new()
        .ttl(ttl)
        .fail_safe(true)
        .fail_safe_max(Duration::from_secs(args.duration * 3))
        .fail_safe_throttle(throttle)
        .stale_while_revalidate(ttl / 4)
        .hard_timeout(HARD_TIMEOUT);
    let l1_capacity = (args.keys / 10).max(10);
    let builder = Cache::builder(MokaLocal::<Product>::new(l1_capacity), Postcard)
        .label("products")
        .defaults(options)
        .write_policy(args.write_policy);
    let cache = if args.composed() {
        let remote = Composition::builder(tiers.redis.clone(), tiers.s3.clone())
            .read_policy(args.read_policy)
            .write_policy(args.write_policy)
            .label("redis+s3")
            .build();
        builder.l2(remote).build()
    } else {
        builder.l2(tiers.redis.clone()).l3(tiers.s3.clone()).build()
    };

    let settings = vec![
        ("redis", redis.describe()),
        ("s3", s3.describe()),
        (
            "tiers",
            if args.composed() {
                format!(
                    "L1 moka ({} entries) -> L2 Composition(Redis, S3) read {}, write {}",
                    thousands(l1_capacity),
                    args.read_policy,
                    args.write_policy
                )
            } else {
                format!(
                    "L1 moka ({} entries) -> L2 Redis -> L3 S3; writes {}",
                    thousands(l1_capacity),
                    args.write_policy
                )
            },
        ),
        (
            "timeouts",
            format!(
                "Redis command {}, S3 operation {}, a read in all {}",
                format_latency(REDIS_TIMEOUT),
                format_latency(S3_TIMEOUT),
                format_latency(HARD_TIMEOUT)
            ),
        ),
        (
            "freshness",
            format!(
                "ttl {} s, stale-while-revalidate {:.1} s, fail-safe for {} s with a {:.1} s throttle",
                ttl.as_secs(),
                (ttl / 4).as_secs_f64(),
                args.duration * 3,
                throttle.as_secs_f64()
            ),
        ),
        (
            "workload",
            format!(
                "{} clients, {} reads/s in all (1 in 50 a write, of any key alike), {} keys (Zipf 1.0), origin {} ms, {} s",
                args.clients,
                thousands(args.rate),
                thousands(args.keys),
                args.origin_ms,
                args.duration
            ),
        ),
    ];
    display.say("tierkit demo: a read-through Cache<Product> in front of a slow origin");
    for (name, value) in &settings {
        display.say(format!("  {name:<10} {value}"));
    }

    let recorder = Arc::new(Recorder::new(args.duration()));
    let origin = Origin::new(args.origin_latency(), Arc::clone(&recorder));
    let workload = Workload {
        cache,
        origin: origin.clone(),
        recorder: Arc::clone(&recorder),
        keys: workload::keys(args.keys),
        stop: Arc::new(AtomicBool::new(false)),
        writes: Arc::new(AtomicU64::new(0)),
        read_keys: Arc::new(workload::ReadKeys::new(args.keys as usize)),
    };
    let current = Arc::new(Mutex::new(String::from("starting")));
    let live = tokio::spawn(
        display
            .clone()
            .live(Arc::clone(&recorder), Arc::clone(&current)),
    );
    let mut clients = workload.start(args.clients, args.rate, args.seed);
    let mut director = Director {
        workload: &workload,
        redis: &redis,
        display: &display,
        warnings: &warnings,
        current,
        duration_s: args.duration,
        throttle,
        hard_timeout: HARD_TIMEOUT,
        played: Vec::new(),
        checks: Vec::new(),
    };
    let interrupted = tokio::select! {
        () = director.play() => false,
        _ = interrupt.recv() => true,
        _ = terminate.recv() => true,
    };
    let (acts, checks) = (director.played, director.checks);

    workload.stop.store(true, Relaxed);
    let stopped = tokio::time::timeout(STOP_CLIENTS, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        clients.abort_all();
    }
    live.abort();
    display.finish();
    let seconds = (recorder.elapsed().as_secs() as usize).clamp(1, args.duration as usize);
    if interrupted {
        display.say(format!("\ninterrupted after {seconds} s: cleaning up"));
    }

    let report = Report {
        settings,
        seconds,
        recorder: &recorder,
        stats: workload.cache.stats(),
        origin_calls: origin.calls(),
        origin_failures: origin.failed_calls(),
        logged: (warnings.warnings(), warnings.errors()),
        s3_requests: s3.requests(),
        acts: &acts,
        checks: &checks,
        composed: args.composed(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        display.say(report.summary());
        display.say(report.timeline());
    }
    drop(workload);

    // Clean up: the data stored on given servers, then the servers the demo started.
    let problems = tiers
        .clean_up(redis.private().is_none(), matches!(s3, S3::External { .. }))
        .await;
    for problem in &problems {
        display.say(format!("cleanup: {problem}"));
    }
    let private_redis = redis.private().is_some();
    let private_s3 = matches!(s3, S3::Private(_));
    s3.close().await?;
    tokio::task::block_in_place(|| drop(redis));
    display.say(format!(
        "cleaned up: {}{}{}",
        if private_redis {
            "private redis-server stopped and its directory removed"
        } else {
            "the run's Redis keys removed"
        },
        if private_s3 {
            "; in-process S3 server stopped and its data removed"
        } else {
            "; the run's S3 objects removed"
        },
        if problems.is_empty() {
            ""
        } else {
            " (with the problems above)"
        }
    ));

    Ok(if interrupted {
        ExitCode::from(130)
    } else if checks.iter().any(|check| !check.passed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
