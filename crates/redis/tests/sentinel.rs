//! Sentinel deployments failing over with their old primary alive, and writes confirmed by
//! replicas, on private processes of `tierkit-services` (a primary, its replica, one sentinel;
//! never the shared test services, never a fixed port).
//!
//! * A write loop through a tier built from the sentinel's URL records every write the tier
//!   acknowledged; `SENTINEL FAILOVER` promotes the replica while the old primary keeps running
//!   (it is demoted 10 to 20 seconds later, when the sentinel reads its role again, and then
//!   drops everything it holds for a copy of the new primary). Afterwards, every acknowledged
//!   write must be on the new primary.
//! * Once the failover is announced, the tier reads the new primary, before the old one is
//!   demoted.
//! * A write that no replica confirms (no replica, a frozen replica) is not acknowledged, a
//!   delete that removes nothing included; the commands sent are counted. Confirmation on an
//!   application's cluster client, which routes commands itself, is refused.
//!
//! The only waits are bounded polls of the servers' state and of the write loop's progress,
//! each with a deadline. The tests need `redis-server` (its sentinel mode too): they skip
//! without it, unless `TIERKIT_REQUIRE_SERVICES` is set (`cargo xtask test` sets it): then
//! they fail.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{CLUSTER, raw_client, unique_namespace};
use tierkit_core::{Backend, CacheKey, CacheValue, Clock, ErrorKind};
use tierkit_redis::fred::prelude::*;
use tierkit_redis::{RedisBackend, RedisError};
use tierkit_services::{
    RedisBinaries, RedisSentinel, RedisServer, RedisServerOptions, calls_since,
};

/// The command timeout of the tier: small, so that a write the tier cannot confirm fails fast.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(400);

/// The most writes the loop makes, whatever happens.
const MAX_WRITES: usize = 1_000_000;

/// How long the loop may run, whatever happens.
const MAX_RUN: Duration = Duration::from_secs(90);

/// Acknowledged writes before the failover, and again once the deployment has settled.
const WRITES_BEFORE_AND_AFTER: usize = 200;

/// How long the failover (promotion, then demotion of the old primary) may take.
const SETTLE_DEADLINE: Duration = Duration::from_secs(45);

/// Keys checked per `EXISTS`.
const EXISTS_BATCH: usize = 500;

const HOUR: Duration = Duration::from_secs(3_600);

/// The Redis binaries, or `None` (after printing `skipped: ...`) when they are missing and not
/// required.
fn binaries() -> Option<RedisBinaries> {
    RedisBinaries::for_tests().expect("redis-server and redis-cli (TIERKIT_REQUIRE_SERVICES)")
}

fn key(index: usize) -> CacheKey {
    CacheKey::new(format!("write-{index}")).expect("a valid key")
}

/// What the write loop saw.
struct Written {
    /// The indices of the writes the tier acknowledged.
    acknowledged: Vec<usize>,
    /// Writes that failed (each a transient error of the tier).
    failed: usize,
}

/// Writes keys `write-0`, `write-1`... one after the other until `stop` (or a bound), counting
/// acknowledged writes in `progress`.
async fn write_loop(
    tier: RedisBackend,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Written {
    let started = Instant::now();
    let mut written = Written {
        acknowledged: Vec::new(),
        failed: 0,
    };
    for index in 0..MAX_WRITES {
        if stop.load(Ordering::Acquire) || started.elapsed() > MAX_RUN {
            break;
        }
        let value = CacheValue::with_ttl(index.to_string().into_bytes(), Clock::System.now(), HOUR);
        match tier.set(&key(index), value).await {
            Ok(()) => {
                written.acknowledged.push(index);
                progress.fetch_add(1, Ordering::Release);
            }
            Err(err) => {
                assert!(
                    matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout)
                        && err.is_transient(),
                    "write {index}: {err:?}"
                );
                written.failed += 1;
            }
        }
    }
    written
}

/// Polls until the loop has acknowledged `target` writes, failing the test after `deadline`.
async fn wait_for_progress(progress: &AtomicUsize, target: usize, deadline: Duration) {
    let started = Instant::now();
    while progress.load(Ordering::Acquire) < target {
        assert!(
            started.elapsed() <= deadline,
            "the tier acknowledged {} writes of {target} within {deadline:?}",
            progress.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_loses_no_acknowledged_write() {
    let Some(binaries) = binaries() else {
        return;
    };
    let deployment = Arc::new(
        tokio::task::spawn_blocking(move || RedisSentinel::start(&binaries))
            .await
            .expect("the start does not panic")
            .expect("the sentinel deployment starts"),
    );
    assert_eq!(deployment.primary().expect("the primary"), 0);
    let tier = RedisBackend::builder(deployment.url())
        .namespace(&unique_namespace("failover"))
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("the tier connects through the sentinel");
    assert_eq!(
        tier.replica_acks(),
        1,
        "a sentinel tier confirms writes by default"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_loop(
        tier.clone(),
        Arc::clone(&stop),
        Arc::clone(&progress),
    ));
    wait_for_progress(&progress, WRITES_BEFORE_AND_AFTER, Duration::from_secs(10)).await;

    // The replica is promoted while the old primary keeps running and keeps its clients until
    // the sentinel demotes it.
    deployment.failover().expect("SENTINEL FAILOVER");
    let settling = Arc::clone(&deployment);
    tokio::task::spawn_blocking(move || settling.wait_until_settled(SETTLE_DEADLINE))
        .await
        .expect("the wait does not panic")
        .expect("the failover completes and the old primary becomes a replica");
    let new_primary = deployment.primary().expect("the primary");
    assert_eq!(new_primary, 1, "the replica was promoted");
    let settled_at = progress.load(Ordering::Acquire);
    wait_for_progress(
        &progress,
        settled_at + WRITES_BEFORE_AND_AFTER,
        Duration::from_secs(10),
    )
    .await;
    stop.store(true, Ordering::Release);
    let written = writer.await.expect("the write loop does not panic");

    // Every acknowledged write must be on the new primary.
    let primary = &deployment.servers()[new_primary];
    let raw = raw_client(&primary.url()).await;
    let mut missing = Vec::new();
    for batch in written.acknowledged.chunks(EXISTS_BATCH) {
        let keys: Vec<Key> = batch
            .iter()
            .map(|index| Key::from(tier.redis_key(&key(*index))))
            .collect();
        let present: usize = raw.exists(keys.clone()).await.expect("EXISTS");
        if present == batch.len() {
            continue;
        }
        for (index, redis_key) in batch.iter().zip(keys) {
            let present: usize = raw.exists(redis_key).await.expect("EXISTS");
            if present == 0 {
                missing.push(*index);
            }
        }
    }
    eprintln!(
        "{} writes acknowledged, {} failed, {} acknowledged writes missing from the new primary",
        written.acknowledged.len(),
        written.failed,
        missing.len()
    );
    assert_eq!(
        missing.len(),
        0,
        "acknowledged writes lost in the failover (of {} acknowledged): first {:?}, last {:?}",
        written.acknowledged.len(),
        missing.first(),
        missing.last()
    );
    raw.quit().await.expect("QUIT");
    tier.shutdown().await;
}

#[tokio::test]
async fn a_write_no_replica_confirms_is_not_acknowledged() {
    let Some(binaries) = binaries() else {
        return;
    };
    // A primary without replicas: no write can be confirmed.
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).expect("redis-server");
    let builder = |acks: Option<u32>| {
        let builder = RedisBackend::builder(server.url())
            .namespace(&unique_namespace("unconfirmed"))
            .command_timeout(COMMAND_TIMEOUT);
        match acks {
            Some(acks) => builder.replica_acks(acks),
            None => builder,
        }
    };
    let plain = builder(None).build().await.expect("the tier connects");
    assert_eq!(
        plain.replica_acks(),
        0,
        "a standalone tier does not confirm by default"
    );
    let confirmed = builder(Some(1)).build().await.expect("the tier connects");
    assert_eq!(confirmed.replica_acks(), 1);
    let value = || CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);

    let before = server.command_calls().expect("INFO commandstats");
    let err = confirmed
        .set(&key(1), value())
        .await
        .expect_err("no replica confirms the write");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        source
            .as_deref()
            .is_some_and(|source| source.contains("NOREPLICAS")
                && source.contains("reached 0 of the 1 replicas")),
        "{source:?}"
    );
    let err = confirmed
        .delete(&key(1))
        .await
        .expect_err("no replica confirms the delete");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    let sent = calls_since(&before, &server.command_calls().expect("INFO commandstats"));
    assert_eq!(sent.get("set"), Some(&1), "{sent:?}");
    assert_eq!(sent.get("unlink"), Some(&1), "{sent:?}");
    assert_eq!(sent.get("wait"), Some(&2), "one WAIT per write: {sent:?}");

    // Without confirmation: one command per write, no WAIT.
    let before = server.command_calls().expect("INFO commandstats");
    plain
        .set(&key(2), value())
        .await
        .expect("an unconfirmed write");
    plain.delete(&key(2)).await.expect("an unconfirmed delete");
    let sent = calls_since(&before, &server.command_calls().expect("INFO commandstats"));
    assert_eq!(sent.get("set"), Some(&1), "{sent:?}");
    assert_eq!(sent.get("unlink"), Some(&1), "{sent:?}");
    assert_eq!(sent.get("wait"), None, "{sent:?}");
    confirmed.shutdown().await;
    plain.shutdown().await;
}

/// `ROLE` of `server`: `master` or `slave`.
fn role(server: &RedisServer) -> String {
    server
        .command(&["ROLE"])
        .expect("ROLE")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_reads_the_new_primary_once_the_failover_is_announced() {
    let Some(binaries) = binaries() else {
        return;
    };
    let deployment = Arc::new(
        tokio::task::spawn_blocking(move || RedisSentinel::start(&binaries))
            .await
            .expect("the start does not panic")
            .expect("the sentinel deployment starts"),
    );
    let tier = RedisBackend::builder(deployment.url())
        .namespace(&unique_namespace("moves"))
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("the tier connects through the sentinel");
    let value = |payload: &str| {
        CacheValue::with_ttl(payload.as_bytes().to_vec(), Clock::System.now(), HOUR)
    };
    tier.set(&key(0), value("old"))
        .await
        .expect("a write before the failover");
    let [old, new] = deployment.servers() else {
        panic!("two servers");
    };

    deployment.failover().expect("SENTINEL FAILOVER");
    let started = Instant::now();
    while deployment.primary().expect("the primary") != 1 {
        assert!(
            started.elapsed() <= SETTLE_DEADLINE,
            "no failover within {SETTLE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another process writes a newer value on the new primary.
    let newer = value("new");
    let redis_key = tier.redis_key(&key(0));
    let envelope = tierkit_core::envelope::encode(&newer, &key(0));
    assert_eq!(
        new.command(&[&b"SET"[..], &redis_key[..], &envelope[..]])
            .expect("SET on the new primary"),
        "OK"
    );

    // From the announcement on, the tier must read the new primary, long before the old one
    // is demoted (10 to 20 s later): until then, the old primary answers with what it held.
    let mut reads = 0;
    loop {
        assert!(
            started.elapsed() <= SETTLE_DEADLINE,
            "the tier did not move within {SETTLE_DEADLINE:?}"
        );
        assert_eq!(
            role(old),
            "master",
            "the old primary was demoted before the tier read the new one ({reads} reads since \
             the failover was announced)"
        );
        reads += 1;
        if let Ok(Some(read)) = tier.get(&key(0)).await {
            if read.payload() == newer.payload() {
                break;
            }
            assert_eq!(&read.payload()[..], b"old", "a value never written");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "read the new primary {:?} after the failover was asked for, after {reads} reads",
        started.elapsed()
    );
    tier.shutdown().await;
}

#[tokio::test]
async fn a_delete_that_removes_nothing_is_confirmed_like_any_write() {
    let Some(binaries) = binaries() else {
        return;
    };
    let deployment = tokio::task::spawn_blocking(move || RedisSentinel::start(&binaries))
        .await
        .expect("the start does not panic")
        .expect("the sentinel deployment starts");
    let [primary, replica] = deployment.servers() else {
        panic!("two servers");
    };
    // Straight to the primary: the sentinel plays no part here.
    let tier = RedisBackend::builder(primary.url())
        .namespace(&unique_namespace("noop-delete"))
        .command_timeout(COMMAND_TIMEOUT)
        .replica_acks(1)
        .build()
        .await
        .expect("the tier connects");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    tier.set(&key(1), value.clone())
        .await
        .expect("the replica confirms a write");

    // A new connection (after a reconnection) has written nothing yet.
    tier.clients()[0]
        .force_reconnection()
        .await
        .expect("the tier reconnects");

    // The replica stops answering (frozen, or cut off by a partition): the primary still
    // counts it as connected, with the last offset it acknowledged.
    replica.pause().expect("SIGSTOP the replica");
    // The delete goes first: a failed write before it would make the offset to confirm newer.
    let delete = tier.delete(&key(3)).await;
    let set = tier.set(&key(2), value).await;
    replica.resume().expect("SIGCONT the replica");
    let err = set.expect_err("a write the replica cannot confirm is not acknowledged");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    // `key(3)` does not exist: the UNLINK changes nothing, and is still not acknowledged on
    // the strength of what the replica acknowledged before it stopped answering.
    let err = delete.expect_err("a delete the replica cannot confirm is not acknowledged");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    tier.shutdown().await;
}

#[tokio::test]
async fn replica_acks_on_an_application_cluster_client_is_refused() {
    let url = require_server!(CLUSTER);
    let client = raw_client(&url).await;
    assert!(client.is_clustered());
    let err = RedisBackend::builder(client.clone())
        .namespace(&unique_namespace("cluster-acks"))
        .replica_acks(1)
        .build()
        .await
        .expect_err("fred routes an application's cluster client: WAIT could reach another node");
    assert!(matches!(err, RedisError::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("replica_acks"), "{err}");
    // Without confirmation (the default for a cluster), the same client is accepted.
    let tier = RedisBackend::builder(client.clone())
        .namespace(&unique_namespace("cluster-acks"))
        .build()
        .await
        .expect("the tier attaches");
    assert_eq!(tier.replica_acks(), 0);
    drop(tier);
    client.quit().await.expect("QUIT");
}
