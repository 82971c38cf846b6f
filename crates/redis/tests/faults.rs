//! Faults of real servers, on private `redis-server` processes of `tierkit-services` (never the
//! shared test services, never a fixed port): a standalone server stopped mid-run and
//! restarted, garbage bytes under a key, a cluster master killed with and without a replica to
//! take over.
//!
//! What every test checks:
//!
//! * **No hang**: each call returns within the command timeout (400 ms) + 1 s, measured with
//!   [`Instant`]. That is the only timing assertion; the only waits are bounded polls for a
//!   server, a failover or a reconnection, each with a deadline.
//! * **Typed errors**: a failed call is a transient `Connection` or `Timeout` error of the
//!   `redis` tier; a value read is never a wrong one.
//! * **Recovery**: the same tier (no new backend) works again once the servers are back.
//! * **Process hygiene**: once a test's servers are dropped, none of their processes remains.
//!
//! Tests that need `redis-server` skip without it, unless `TIERKIT_REQUIRE_SERVICES` is set
//! (`cargo xtask test` sets it): then they fail.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{k, unique_namespace};
use tierkit_core::{Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, Probe};
use tierkit_moka::MokaBackend;
use tierkit_policy::Composition;
use tierkit_redis::RedisBackend;
use tierkit_services::{RedisBinaries, RedisCluster, RedisServer, RedisServerOptions};
use tierkit_testkit::logs::capture;
use tracing::Level;

/// The command timeout of every tier here: small, so that the tests are fast.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(400);

/// The bound every call must return within: the command timeout + 1 s.
const BOUND: Duration = COMMAND_TIMEOUT.saturating_add(Duration::from_secs(1));

const HOUR: Duration = Duration::from_secs(3_600);

// ---------------------------------------------------------------------------------------------
// Helpers

/// The Redis binaries, or `None` (after printing `skipped: ...`) when they are missing and not
/// required.
fn binaries() -> Option<RedisBinaries> {
    RedisBinaries::for_tests().expect("redis-server and redis-cli (TIERKIT_REQUIRE_SERVICES)")
}

/// A tier on `url` with the small command timeout and a namespace of its own.
async fn tier(url: &str, name: &str) -> RedisBackend {
    RedisBackend::builder(url)
        .namespace(&unique_namespace(name))
        .command_timeout(COMMAND_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("the tier connects")
}

/// A value fresh for an hour.
fn value(payload: &str) -> CacheValue {
    CacheValue::with_ttl(payload.as_bytes().to_vec(), Clock::System.now(), HOUR)
}

/// Awaits `call`, asserting that it returned within [`BOUND`].
async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    let took = started.elapsed();
    assert!(
        took <= BOUND,
        "{what} returned after {took:?}, past the command timeout + 1 s ({BOUND:?})"
    );
    out
}

/// Asserts that `err` is a transient `Connection` or `Timeout` error of the `redis` tier.
fn assert_transient(what: &str, err: &BackendError) {
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{what}: {err:?}"
    );
    assert!(err.is_transient(), "{what}: {err:?}");
    assert_eq!(err.tier_label(), Some("redis"), "{what}: {err:?}");
}

/// The value of `field` in an `INFO`-style text.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// `cluster_state` (`ok` or `fail`) as `node` reports it.
fn cluster_state(node: &RedisServer) -> String {
    let info = node.command(&["CLUSTER", "INFO"]).expect("CLUSTER INFO");
    info_field(&info, "cluster_state").unwrap_or_default()
}

/// Polls `ready` every 50 ms until it holds, failing the test after `deadline`.
async fn poll_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if ready() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() <= deadline,
            "{what}: not done within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Process hygiene

/// The processes of a test's servers: every pid they ever had and their ports. Once the
/// servers are dropped, [`Processes::assert_gone`] checks that none of them remains.
#[derive(Default)]
struct Processes {
    pids: Vec<u32>,
    ports: Vec<u16>,
}

impl Processes {
    /// Records the current process of each running server.
    fn record<'a>(&mut self, servers: impl IntoIterator<Item = &'a RedisServer>) {
        for server in servers {
            if let Some(pid) = server.pid()
                && !self.pids.contains(&pid)
            {
                self.pids.push(pid);
            }
            if !self.ports.contains(&server.port()) {
                self.ports.push(server.port());
            }
        }
    }

    /// Asserts that no recorded pid is a `redis-server` any more, and that no `redis-server`
    /// process (a fork included) serves one of the recorded ports.
    fn assert_gone(&self) {
        assert!(!self.pids.is_empty(), "no process was recorded");
        for pid in &self.pids {
            if let Some(cmdline) = cmdline(*pid) {
                assert!(
                    !cmdline.contains("redis-server"),
                    "redis-server {pid} survived its test: {cmdline}"
                );
            }
        }
        let entries = std::fs::read_dir("/proc").expect("/proc");
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(cmdline) = cmdline(pid) else {
                continue;
            };
            if !cmdline.contains("redis-server") {
                continue;
            }
            for port in &self.ports {
                assert!(
                    !cmdline.contains(&format!("127.0.0.1:{port}")),
                    "a redis-server on port {port} survived its test: pid {pid}, {cmdline}"
                );
            }
        }
    }
}

/// The command line of `pid` (Redis rewrites its own as `redis-server 127.0.0.1:PORT`), or
/// `None` when there is no such process.
fn cmdline(pid: u32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&bytes).replace('\0', " "))
}

// ---------------------------------------------------------------------------------------------
// A standalone server stopped mid-run

/// The warning of the optimistic parallel write when Redis failed and moka holds the value.
const WRITE_WARNING: [&str; 3] = [
    "WARN",
    "write failed on one tier; the other tier holds the value",
    "tier=l2 (redis)",
];

/// The warning of a composition read that missed L1 and failed on Redis.
const READ_WARNING: [&str; 3] = [
    "WARN",
    "read failed on one tier and the other missed",
    "tier=l2 (redis)",
];

/// The warning of a composition delete that failed on Redis.
const DELETE_WARNING: [&str; 3] = ["WARN", "removal failed on one tier", "tier=l2 (redis)"];

/// Moka over Redis (default policies: sequential read, optimistic parallel write), and the
/// Redis tier alone. The server is killed mid-run: every call returns within the bound; keys
/// in moka are still served; keys only in Redis fail with Redis' own typed, transient error
/// (read table: L1 miss + L2 error → L2's error); writes through the composition succeed on
/// moka and warn naming `l2 (redis)`; deletes fail with Redis' error after removing the key
/// from moka; the bare tier fails fast with typed transient errors. Restarted on the same port
/// (empty: no persistence), the same tier and composition work again within a few seconds.
#[tokio::test]
async fn a_stopped_server_fails_fast_and_the_same_tier_recovers_after_restart() {
    let Some(binaries) = binaries() else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).expect("a server");
    let mut processes = Processes::default();
    processes.record([&server]);
    let logs = capture(Level::WARN);

    let l2 = tier(&server.url(), "stopped").await;
    let l1 = MokaBackend::new(1_000);
    let cache = Composition::new(l1.clone(), l2.clone());

    // Before: N keys through the composition; half of them then leave moka, so that they live
    // only in Redis. Keys to delete later, and one key to probe the bare tier with.
    const N: usize = 8;
    const ROUNDS: usize = 3;
    let keys: Vec<CacheKey> = (0..N).map(|i| k(&format!("user:{i}"))).collect();
    let values: Vec<CacheValue> = (0..N).map(|i| value(&format!("value {i}"))).collect();
    let doomed: Vec<CacheKey> = (0..ROUNDS).map(|i| k(&format!("doomed:{i}"))).collect();
    for (key, value) in keys.iter().zip(&values) {
        cache.set(key, value.clone()).await.expect("set");
    }
    for key in &doomed {
        cache.set(key, value("doomed")).await.expect("set");
    }
    let (in_l1, only_in_redis): (Vec<usize>, Vec<usize>) = (0..N).partition(|i| i % 2 == 0);
    for i in &only_in_redis {
        l1.delete(&keys[*i]).await.expect("moka delete");
        assert_eq!(
            l2.get(&keys[*i]).await.expect("redis get"),
            Some(values[*i].clone())
        );
    }
    logs.assert_lines(0, &["WARN"]);

    server.stop().expect("stop");
    assert!(!server.is_running());

    let mut transient_errors = 0;
    for (round, doomed_key) in doomed.iter().enumerate() {
        for i in &in_l1 {
            let got = bounded("get of a key in moka", cache.get(&keys[*i])).await;
            assert_eq!(got.expect("served by moka"), Some(values[*i].clone()));
        }
        for i in &only_in_redis {
            let err = bounded("get of a key only in redis", cache.get(&keys[*i]))
                .await
                .expect_err("moka misses and redis is down: redis' error");
            assert_transient("composition get", &err);
            transient_errors += 1;
        }

        let key = k(&format!("written while down:{round}"));
        let written = value(&format!("written while down {round}"));
        bounded("set", cache.set(&key, written.clone()))
            .await
            .expect("optimistic parallel write: moka holds the value");
        assert_eq!(
            bounded("get", cache.get(&key)).await.expect("moka"),
            Some(written.clone())
        );

        let err = bounded("delete", cache.delete(doomed_key))
            .await
            .expect_err("the delete failed on redis");
        assert_transient("composition delete", &err);
        assert_eq!(l1.probe(doomed_key), Probe::Miss, "removed from moka");

        // The Redis tier alone.
        let err = bounded("bare get", l2.get(&keys[0]))
            .await
            .expect_err("redis is down");
        assert_transient("bare get", &err);
        let err = bounded("bare set", l2.set(&key, written))
            .await
            .expect_err("redis is down");
        assert_transient("bare set", &err);
        let err = bounded("bare delete", l2.delete(&keys[0]))
            .await
            .expect_err("redis is down");
        assert_transient("bare delete", &err);
        transient_errors += 4;
    }
    assert_eq!(transient_errors, ROUNDS * (only_in_redis.len() + 4));
    logs.assert_lines(ROUNDS, &WRITE_WARNING);
    logs.assert_lines(ROUNDS * only_in_redis.len(), &READ_WARNING);
    logs.assert_lines(ROUNDS, &DELETE_WARNING);
    logs.assert_lines(0, &["l1 (moka)"]);

    // Back on the same port, empty. The same tier reconnects by itself (fred's backoff is
    // capped at 2 s): poll a set + get round trip through the bare tier.
    server.restart().expect("restart on the same port");
    processes.record([&server]);
    let probe_key = k("after restart");
    let probe_value = value("after restart");
    let deadline = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let set = bounded(
            "set while reconnecting",
            l2.set(&probe_key, probe_value.clone()),
        )
        .await;
        let get = bounded("get while reconnecting", l2.get(&probe_key)).await;
        match (set, get) {
            (Ok(()), Ok(Some(read))) => {
                assert_eq!(read, probe_value);
                break;
            }
            (set, get) => {
                for err in [set.err(), get.err()].into_iter().flatten() {
                    assert_transient("while reconnecting", &err);
                }
            }
        }
        assert!(
            started.elapsed() <= deadline,
            "the tier did not reconnect within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "standalone: the same tier worked again {:?} after the restart",
        started.elapsed()
    );

    // The data is gone (no persistence); moka still has its keys; the composition works.
    for i in &only_in_redis {
        assert_eq!(l2.get(&keys[*i]).await.expect("get"), None);
        assert_eq!(cache.get(&keys[*i]).await.expect("get"), None);
    }
    for i in &in_l1 {
        assert_eq!(
            cache.get(&keys[*i]).await.expect("get"),
            Some(values[*i].clone())
        );
    }
    let key = k("after restart:composed");
    let written = value("after restart, composed");
    cache.set(&key, written.clone()).await.expect("set");
    l1.delete(&key).await.expect("moka delete");
    assert_eq!(cache.get(&key).await.expect("get"), Some(written.clone()));
    assert_eq!(l2.get(&key).await.expect("get"), Some(written));
    cache.delete(&key).await.expect("delete");
    assert_eq!(l2.get(&key).await.expect("get"), None);
    // No warning after the restart.
    logs.assert_lines(ROUNDS, &WRITE_WARNING);
    logs.assert_lines(ROUNDS, &DELETE_WARNING);

    drop((cache, l1, l2));
    drop(server);
    processes.assert_gone();
}

// ---------------------------------------------------------------------------------------------
// A server that stops answering

/// The `total_connections_received` counter of `server`'s `INFO stats`.
fn connections_received(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "stats"]).expect("INFO stats");
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

/// A real server frozen (`SIGSTOP`) after the tier connected: it accepts bytes but answers
/// nothing. Every operation fails with a transient error within the command timeout (+ 1 s),
/// the first one a `Timeout` naming the bound; though commands keep coming (so fred's own
/// unresponsive check, which needs a pause in writes, never fires), the tier has the silent
/// connection replaced, and once the server runs again the same tier works.
#[tokio::test]
async fn operations_on_a_server_that_stops_answering_time_out() {
    let Some(binaries) = binaries() else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).expect("a server");
    let mut processes = Processes::default();
    processes.record([&server]);
    let command_timeout = Duration::from_millis(300);
    let redis = RedisBackend::builder(server.url())
        .namespace(&unique_namespace("silent"))
        .command_timeout(command_timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("the tier connects");
    let key = k("k");
    let value = value("v");
    redis.set(&key, value.clone()).await.expect("set");
    let before = connections_received(&server);
    let bound = command_timeout + Duration::from_secs(1);

    server.pause().expect("SIGSTOP");
    let started = Instant::now();
    let err = redis.get(&key).await.expect_err("no answer");
    assert!(started.elapsed() <= bound, "{:?}", started.elapsed());
    assert!(
        matches!(err, BackendError::Timeout { after, .. } if after == command_timeout),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "redis: get timed out after 300ms");

    // Back-to-back operations of every kind: the second timeout, 600 ms after the last answer,
    // has the watchdog replace the connection (fred reconnects once the server answers).
    for operation in 0..6 {
        let started = Instant::now();
        let result = match operation % 4 {
            0 => redis.get(&key).await.map(drop),
            1 => redis.set(&key, value.clone()).await,
            2 => redis.delete(&key).await,
            _ => redis.clear().await,
        };
        assert!(started.elapsed() <= bound, "{:?}", started.elapsed());
        let err = result.expect_err("no answer");
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Connection),
            "{err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
    }

    server.resume().expect("SIGCONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = k("after");
        let works = redis.set(&probe, value.clone()).await.is_ok()
            && redis.get(&probe).await.ok().flatten() == Some(value.clone());
        if works {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tier did not recover after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        connections_received(&server) > before + 1,
        "the silent connection was not replaced (only the test's own INFO connections arrived)"
    );

    drop(redis);
    drop(server);
    processes.assert_gone();
}

// ---------------------------------------------------------------------------------------------
// Garbage bytes

/// Another program writes bytes that are not an envelope under a key of the tier: the
/// composition (moka empty) answers a miss, counted once as a decode error, with no error, no
/// warning and no refill; a set through the composition overwrites the garbage and reads work.
#[tokio::test]
async fn garbage_under_a_key_is_a_counted_miss_through_the_composition() {
    let Some(binaries) = binaries() else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).expect("a server");
    let mut processes = Processes::default();
    processes.record([&server]);
    let logs = capture(Level::WARN);

    let l2 = tier(&server.url(), "garbage").await;
    let l1 = MokaBackend::new(100);
    let cache = Composition::new(l1.clone(), l2.clone());
    let key = k("config");
    let garbage: &[u8] = b"\x00\xffnot an envelope: written by another program\r\n";
    let redis_key = l2.redis_key(&key);
    let set = server
        .command(&[&b"SET"[..], &redis_key[..], garbage])
        .expect("raw SET");
    assert_eq!(set, "OK");

    let before = l2.stats().decode_errors;
    assert_eq!(before.total(), 0);
    assert_eq!(cache.get(&key).await.expect("a miss, not an error"), None);
    let after = l2.stats().decode_errors;
    assert_eq!(after.total(), before.total() + 1, "{after:?}");
    assert_eq!(after.get("bad_magic"), 1, "{after:?}");
    assert_eq!(l1.probe(&key), Probe::Miss, "nothing to refill");

    // A set through the composition replaces the garbage.
    let good = value("good");
    cache.set(&key, good.clone()).await.expect("set");
    assert_eq!(cache.get(&key).await.expect("get"), Some(good.clone()));
    l1.delete(&key).await.expect("moka delete");
    assert_eq!(
        cache.get(&key).await.expect("get from redis"),
        Some(good.clone())
    );
    assert_eq!(l2.get(&key).await.expect("get"), Some(good));
    assert_eq!(l2.stats().decode_errors.total(), 1);
    logs.assert_lines(0, &["WARN"]);
    logs.assert_lines(0, &["ERROR"]);

    drop((cache, l1, l2));
    drop(server);
    processes.assert_gone();
}

// ---------------------------------------------------------------------------------------------
// A cluster master killed

/// Keys placed on the masters of `cluster`: at least `per_master` on each, each with the index
/// of the node that serves its slot and a value.
struct Placed {
    keys: Vec<CacheKey>,
    owners: Vec<usize>,
    values: Vec<CacheValue>,
}

impl Placed {
    fn new(cluster: &RedisCluster, tier: &RedisBackend, per_master: usize) -> Self {
        let masters = cluster.masters().expect("ROLE");
        let mut placed = Placed {
            keys: Vec::new(),
            owners: Vec::new(),
            values: Vec::new(),
        };
        let on =
            |placed: &Placed, master: usize| placed.owners.iter().filter(|o| **o == master).count();
        let mut i = 0;
        while masters.iter().any(|m| on(&placed, *m) < per_master) {
            assert!(i < 10_000, "could not spread keys over {masters:?}");
            let key = k(&format!("item:{i}"));
            i += 1;
            let slot = RedisCluster::slot_of(&tier.redis_key(&key));
            let owner = cluster
                .master_for_slot(slot)
                .expect("CLUSTER NODES")
                .expect("every slot is served");
            if on(&placed, owner) < per_master {
                placed.values.push(value(&format!("value of {key}")));
                placed.keys.push(key);
                placed.owners.push(owner);
            }
        }
        placed
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// How the calls on one group of keys went during an outage.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: usize,
    kinds: Vec<String>,
    first_failure: Option<Duration>,
    last_failure: Option<Duration>,
}

impl Tally {
    fn record<T>(&mut self, what: &str, result: &Result<T, BackendError>, since_kill: Duration) {
        match result {
            Ok(_) => self.ok += 1,
            Err(err) => {
                assert_transient(what, err);
                self.failed += 1;
                self.first_failure.get_or_insert(since_kill);
                self.last_failure = Some(since_kill);
                let kind = format!("{:?}: {}", err.kind(), fred_details(err));
                if !self.kinds.contains(&kind) {
                    self.kinds.push(kind);
                }
            }
        }
    }
}

/// The details of the fred error behind `err`, if any.
fn fred_details(err: &BackendError) -> String {
    use std::error::Error as _;
    err.source()
        .and_then(|source| source.downcast_ref::<tierkit_redis::fred::error::Error>())
        .map_or_else(
            || err.to_string(),
            |fred| format!("{:?} {:?}", fred.kind(), fred.details()),
        )
}

/// One pass over every key: a get (which must answer the key's value when it succeeds, never
/// another value nor a miss) and a set of the same value, each within the bound; outcomes go to
/// the victim's tally or to the others'.
async fn pass(
    tier: &RedisBackend,
    placed: &Placed,
    victim: usize,
    killed_at: Instant,
    on_victim: &mut Tally,
    elsewhere: &mut Tally,
) {
    for i in 0..placed.len() {
        let (key, expected) = (&placed.keys[i], &placed.values[i]);
        let tally = if placed.owners[i] == victim {
            &mut *on_victim
        } else {
            &mut *elsewhere
        };
        let got = bounded("cluster get", tier.get(key)).await;
        if let Ok(value) = &got {
            assert_eq!(value.as_ref(), Some(expected), "{key}: a wrong value");
        }
        tally.record("cluster get", &got, killed_at.elapsed());
        let set = bounded("cluster set", tier.set(key, expected.clone())).await;
        tally.record("cluster set", &set, killed_at.elapsed());
    }
}

/// The index of the replica of master `master`, from the replicas' `INFO replication`.
fn replica_of(cluster: &RedisCluster, master: usize) -> usize {
    let port = cluster.node(master).expect("node").port().to_string();
    (0..cluster.nodes().len())
        .find(|index| {
            let info = cluster.nodes()[*index]
                .command(&["INFO", "replication"])
                .expect("INFO replication");
            info_field(&info, "role").as_deref() == Some("slave")
                && info_field(&info, "master_port").as_deref() == Some(port.as_str())
        })
        .expect("a replica of the victim")
}

/// Options of cluster nodes with `cluster-require-full-coverage` set as `full_coverage` says.
fn coverage(full_coverage: bool) -> RedisServerOptions {
    RedisServerOptions::new().args([
        "--cluster-require-full-coverage",
        if full_coverage { "yes" } else { "no" },
    ])
}

/// Whether the failures of `tally` all come from the cluster being down, not from the tier's
/// connection to a healthy master: the first is Redis' own `CLUSTERDOWN` (a surviving master
/// refusing keys), and every later one is either `CLUSTERDOWN` again or fred's fail-fast
/// `Canceled` for a call made while that connection reconnects (fred reconnects a connection
/// that answered `CLUSTERDOWN`).
fn only_cluster_down(tally: &Tally) -> bool {
    let cluster_down = |kind: &String| kind.contains("CLUSTERDOWN");
    tally.kinds.first().is_none_or(cluster_down)
        && tally
            .kinds
            .iter()
            .all(|kind| cluster_down(kind) || kind.starts_with("Connection: Canceled"))
}

/// Whether `node` flags the node on `port` as failed (`fail`, not only `fail?`).
fn flagged_failed(node: &RedisServer, port: u16) -> bool {
    let nodes = node.command(&["CLUSTER", "NODES"]).expect("CLUSTER NODES");
    let addr = format!("127.0.0.1:{port}@");
    nodes.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1).is_some_and(|a| a.starts_with(&addr))
            && fields
                .get(2)
                .is_some_and(|flags| flags.split(',').any(|flag| flag == "fail"))
    })
}

/// `DBSIZE` of `node`.
fn dbsize(node: &RedisServer) -> String {
    node.command(&["DBSIZE"]).expect("DBSIZE")
}

/// What a master's death did to a tier on a 3-master cluster with one replica each.
struct FailoverReport {
    /// Calls on the keys of the other two masters, from the kill until the failover ended.
    elsewhere: Tally,
    /// Calls on the keys of the killed master, from the kill until the failover ended.
    on_victim: Tally,
    /// From the kill until the replica was promoted and `cluster_state:ok`.
    failover_after: Duration,
    /// From the kill until every key was served again.
    recovered_after: Duration,
}

/// Kills a master of a 3 × (1 + 1) cluster and hammers a tier built before the kill until the
/// failover is over and every key is served again. Asserts, all along: every call within the
/// bound, typed transient errors only, never a wrong value or a lost one; then that the same
/// tier serves reads and writes on every slot (and `clear` reaches the new primary).
///
/// `full_coverage` is the cluster's `cluster-require-full-coverage`: with `yes` (Redis'
/// default), the surviving masters themselves answer `CLUSTERDOWN` for every key from the
/// moment the dead master is flagged `FAIL` until its replica is promoted (about half a
/// second here).
async fn kill_a_master_with_a_replica(full_coverage: bool) -> FailoverReport {
    let binaries = binaries().expect("checked by the caller");
    let cluster = RedisCluster::start_with(&binaries, 3, 1, coverage(full_coverage))
        .expect("a 3 x (1 + 1) cluster");
    let mut processes = Processes::default();
    processes.record(cluster.nodes());

    let tier = tier(&cluster.url(), "failover").await;
    assert!(tier.is_clustered());
    let placed = Placed::new(&cluster, &tier, 4);
    for (key, value) in placed.keys.iter().zip(&placed.values) {
        tier.set(key, value.clone()).await.expect("set");
    }
    let victim = placed.owners[0];
    let replica = replica_of(&cluster, victim);
    let survivor = cluster
        .masters()
        .expect("ROLE")
        .into_iter()
        .find(|m| *m != victim)
        .expect("another master");
    // The replica has every write before the kill, so a failover loses nothing.
    let master_node = cluster.node(victim).expect("victim");
    let replica_node = cluster.node(replica).expect("replica");
    poll_until("the replica caught up", Duration::from_secs(5), || {
        dbsize(master_node) == dbsize(replica_node)
    })
    .await;
    let victim_slot = RedisCluster::slot_of(&tier.redis_key(&placed.keys[0]));

    cluster.kill_node(victim).expect("kill the master");
    let killed_at = Instant::now();

    // The outage: until the replica serves the victim's slots and the cluster says ok.
    let (mut on_victim, mut elsewhere) = (Tally::default(), Tally::default());
    let deadline = Duration::from_secs(15);
    let failover_after = loop {
        pass(
            &tier,
            &placed,
            victim,
            killed_at,
            &mut on_victim,
            &mut elsewhere,
        )
        .await;
        let promoted =
            cluster.master_for_slot(victim_slot).expect("CLUSTER NODES") == Some(replica);
        if promoted && cluster_state(cluster.node(survivor).expect("survivor")) == "ok" {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() <= deadline,
            "no failover within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The tier refreshes its routing table on the next error on the victim's slots (at most
    // every 250 ms): allow a bounded window.
    let deadline = Duration::from_secs(10);
    let (mut after_victim, mut after_elsewhere) = (Tally::default(), Tally::default());
    let recovered_after = loop {
        let (mut v, mut e) = (Tally::default(), Tally::default());
        pass(&tier, &placed, victim, killed_at, &mut v, &mut e).await;
        if v.failed == 0 && e.failed == 0 {
            break killed_at.elapsed();
        }
        after_victim.failed += v.failed;
        after_elsewhere.failed += e.failed;
        assert!(
            killed_at.elapsed() <= failover_after + deadline,
            "the tier did not serve every slot within {deadline:?} of the failover: \
             {v:?} {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The same tier, on every slot: new values written and read back, and `clear` reaches the
    // promoted replica.
    for (i, key) in placed.keys.iter().enumerate() {
        let new = value(&format!("new value {i}"));
        bounded("set", tier.set(key, new.clone()))
            .await
            .expect("set");
        assert_eq!(bounded("get", tier.get(key)).await.expect("get"), Some(new));
    }
    bounded("clear", tier.clear()).await.expect("clear");
    for key in &placed.keys {
        assert_eq!(tier.get(key).await.expect("get"), None, "{key}");
    }

    eprintln!(
        "cluster with replicas, master {victim} killed: failover (replica {replica} promoted, \
         cluster_state:ok) after {failover_after:?}, every key served again after \
         {recovered_after:?}\n  during the failover, keys of the killed master: {on_victim:?}\n  \
         keys of the other masters: {elsewhere:?}\n  after the failover, failures on the \
         victim's keys: {}, on the others: {}",
        after_victim.failed, after_elsewhere.failed
    );

    drop(tier);
    drop(cluster);
    processes.assert_gone();
    FailoverReport {
        elsewhere,
        on_victim,
        failover_after,
        recovered_after,
    }
}

/// A master of a cluster with replicas is killed (`SIGKILL`); its replica takes over after the
/// node timeout (2 s) plus the election.
///
/// Asserted: every call returns within the command timeout + 1 s; failures are typed transient
/// `Connection`/`Timeout` errors; a value read is never wrong nor lost; once the replica is
/// promoted, the same tier serves reads and writes on every slot again within a bounded window
/// (its next topology refresh, triggered by the errors on the victim's slots, at most every
/// 250 ms).
///
/// The tier routes by slot over one fred client per primary: only the dead master's client
/// fails (fast, while it reconnects in the background), so the keys of the two surviving
/// masters keep working throughout (asserted by
/// `a_killed_master_does_not_disturb_the_other_masters`). Run with `--nocapture` for the
/// report.
#[tokio::test]
async fn a_killed_master_fails_over_and_the_same_tier_recovers() {
    if binaries().is_none() {
        return;
    }
    let report = kill_a_master_with_a_replica(true).await;
    assert!(report.recovered_after >= report.failover_after);
    // Calls on the other masters' keys were made all along the outage, and failed only while
    // Redis itself refused them (cluster_state:fail until the promotion).
    assert!(report.elsewhere.ok > 0, "{:?}", report.elsewhere);
    assert!(
        only_cluster_down(&report.elsewhere),
        "{:?}",
        report.elsewhere
    );
}

/// The requirement: while a master is down and until its replica takes over, keys in
/// the other masters' slots keep working (the tier routes by slot over one connection per
/// primary), and keys in the dead master's slots fail with typed transient errors within the
/// bound (asserted by every call of the run), then work again after the failover.
///
/// The cluster runs with `cluster-require-full-coverage no`, so that Redis itself keeps
/// serving the other slots while the dead master is flagged `FAIL` and not yet replaced; with
/// the default `yes`, the surviving masters answer `CLUSTERDOWN` for that half second (see
/// `a_killed_master_fails_over_and_the_same_tier_recovers`).
#[tokio::test]
async fn a_killed_master_does_not_disturb_the_other_masters() {
    if binaries().is_none() {
        return;
    }
    let report = kill_a_master_with_a_replica(false).await;
    assert_eq!(
        report.elsewhere.failed, 0,
        "calls on the surviving masters' keys failed during the failover: {:?}",
        report.elsewhere
    );
    assert!(report.elsewhere.ok > 0, "{:?}", report.elsewhere);
    assert!(report.on_victim.failed > 0, "{:?}", report.on_victim);
}

/// A master of a cluster without replicas is killed: its slots have no owner any more. After
/// the node timeout the cluster reports `cluster_state:fail`, and with Redis' default
/// `cluster-require-full-coverage yes` the surviving masters refuse every key (`CLUSTERDOWN`).
///
/// Asserted: before `cluster_state:fail` (the first 2-4 s after the kill), the surviving
/// masters' keys keep working (the tier routes by slot, one connection per primary) while the
/// dead master's fail, typed and within the bound; once the cluster is down, every call on
/// every slot fails with a typed transient error (Redis' own `CLUSTERDOWN` on the surviving
/// masters), never a value. Then the master is restarted (same port, same identity, empty):
/// the same tier serves every slot again.
#[tokio::test]
async fn a_killed_master_without_replica_loses_its_slots() {
    let Some(binaries) = binaries() else {
        return;
    };
    kill_a_master_without_replica(&binaries, true).await;
}

/// As `a_killed_master_without_replica_loses_its_slots`, on a cluster started with
/// `cluster-require-full-coverage no`: the surviving masters keep serving their slots even once
/// the cluster reports `cluster_state:fail`, and so does the tier; only the dead master's keys
/// fail.
#[tokio::test]
async fn without_full_coverage_the_other_masters_keep_working() {
    let Some(binaries) = binaries() else {
        return;
    };
    kill_a_master_without_replica(&binaries, false).await;
}

/// Kills a master of a 3-master cluster without replicas (`full_coverage`: the cluster's
/// `cluster-require-full-coverage`), checks the calls until and after `cluster_state:fail`,
/// then restarts it and checks that the same tier recovers.
async fn kill_a_master_without_replica(binaries: &RedisBinaries, full_coverage: bool) {
    let cluster = RedisCluster::start_with(binaries, 3, 0, coverage(full_coverage))
        .expect("a 3-master cluster");
    let mut processes = Processes::default();
    processes.record(cluster.nodes());

    let tier = tier(&cluster.url(), "no-replica").await;
    let placed = Placed::new(&cluster, &tier, 4);
    for (key, value) in placed.keys.iter().zip(&placed.values) {
        tier.set(key, value.clone()).await.expect("set");
    }
    let victim = placed.owners[0];
    let survivor = (0..3).find(|m| *m != victim).expect("another master");

    cluster.kill_node(victim).expect("kill the master");
    let killed_at = Instant::now();

    // Until the cluster notices (node timeout 2 s, then the failure report spreads).
    let (mut on_victim, mut elsewhere) = (Tally::default(), Tally::default());
    let deadline = Duration::from_secs(10);
    let failed_after = loop {
        pass(
            &tier,
            &placed,
            victim,
            killed_at,
            &mut on_victim,
            &mut elsewhere,
        )
        .await;
        let survivor_node = cluster.node(survivor).expect("survivor");
        let noticed = if full_coverage {
            cluster_state(survivor_node) == "fail"
        } else {
            flagged_failed(survivor_node, cluster.node(victim).expect("victim").port())
        };
        if noticed {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() <= deadline,
            "the cluster did not notice the dead master within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(on_victim.ok, 0, "the killed master answered: {on_victim:?}");
    assert!(on_victim.failed > 0, "{on_victim:?}");
    // Until the cluster notices, the surviving masters' keys work; in the last pass a
    // surviving master that noticed first may already refuse keys (Redis' own CLUSTERDOWN).
    assert!(elsewhere.ok > 0, "{elsewhere:?}");
    assert!(
        only_cluster_down(&elsewhere),
        "the surviving masters' keys failed before the cluster noticed: {elsewhere:?}"
    );
    if !full_coverage {
        assert_eq!(elsewhere.failed, 0, "{elsewhere:?}");
    }

    // The slots are lost: every call on them fails, typed, within the bound, for as long as we
    // look (2 s here); the other slots fail too (CLUSTERDOWN) with full coverage required, and
    // keep working without.
    let (mut lost, mut others) = (Tally::default(), Tally::default());
    let window = Instant::now();
    let mut passes = 0;
    while window.elapsed() < Duration::from_secs(2) {
        pass(&tier, &placed, victim, killed_at, &mut lost, &mut others).await;
        passes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_victim_keys = placed.owners.iter().filter(|o| **o == victim).count();
    assert_eq!(lost.ok, 0, "{lost:?}");
    assert_eq!(lost.failed, passes * on_victim_keys * 2);
    let other_calls = passes * (placed.len() - on_victim_keys) * 2;
    if full_coverage {
        assert_eq!(
            others.ok, 0,
            "CLUSTERDOWN on the surviving masters: {others:?}"
        );
        assert_eq!(others.failed, other_calls);
    } else {
        assert_eq!(others.failed, 0, "{others:?}");
        assert_eq!(others.ok, other_calls);
    }
    if full_coverage {
        assert_eq!(
            cluster_state(cluster.node(survivor).expect("survivor")),
            "fail"
        );
    }

    eprintln!(
        "cluster without replicas (full coverage required: {full_coverage}), master {victim} \
         killed: cluster_state:fail after \
         {failed_after:?}\n  before that, keys of the killed master: {on_victim:?}\n  keys of \
         the other masters: {elsewhere:?}\n  after that ({passes} passes over 2 s), killed \
         master: {lost:?}\n  other masters: {others:?}"
    );

    // The master comes back (same port, same identity, no data): the same tier recovers.
    cluster.restart_node(victim).expect("restart the master");
    processes.record(cluster.nodes());
    poll_until("cluster_state:ok", Duration::from_secs(10), || {
        cluster_state(cluster.node(survivor).expect("survivor")) == "ok"
            && cluster_state(cluster.node(victim).expect("victim")) == "ok"
    })
    .await;
    let restarted_at = Instant::now();
    let deadline = Duration::from_secs(10);
    loop {
        let mut all = true;
        for (i, key) in placed.keys.iter().enumerate() {
            let set = bounded("set", tier.set(key, placed.values[i].clone())).await;
            let get = bounded("get", tier.get(key)).await;
            match (&set, &get) {
                (Ok(()), Ok(got)) => assert_eq!(got.as_ref(), Some(&placed.values[i])),
                _ => {
                    all = false;
                    for err in [set.err(), get.err()].into_iter().flatten() {
                        assert_transient("while recovering", &err);
                    }
                }
            }
        }
        if all {
            break;
        }
        assert!(
            restarted_at.elapsed() <= deadline,
            "the tier did not recover within {deadline:?} of the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "  the master restarted: every slot served again {:?} later",
        restarted_at.elapsed()
    );

    drop(tier);
    drop(cluster);
    processes.assert_gone();
}
