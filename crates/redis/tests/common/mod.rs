//! Helpers shared by the test binaries: the Redis servers named by the environment (skipping,
//! or failing loudly in CI, when they are missing), tiers with unique namespaces, raw fred
//! clients, and a fake server that stops answering after the handshake.
//!
//! The servers come only from environment variables, set by `cargo xtask test` / `ci`:
//! `TIERKIT_REDIS_URL` (standalone), `TIERKIT_REDIS_CLUSTER_URL` (cluster),
//! `TIERKIT_REDIS_SENTINEL_URL` (a primary, its replica and a sentinel), and
//! `TIERKIT_REQUIRE_SERVICES=1` to make a missing variable a failure instead of a skip
//! (decided by `tierkit_services::service_for_tests`, which also records each test that runs
//! against a server, for `cargo xtask` to count).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tierkit_core::{BackendError, CacheKey};
use tierkit_redis::RedisBackendBuilder;
use tierkit_redis::fred::prelude::*;
use tierkit_redis::{RedisBackend, fred};
use tierkit_testkit::ConformanceContext;
use tierkit_testkit::conformance::skip;
use tokio::net::TcpListener;

/// The standalone server.
pub const STANDALONE: &str = "TIERKIT_REDIS_URL";
/// The cluster.
pub const CLUSTER: &str = "TIERKIT_REDIS_CLUSTER_URL";
/// The sentinel deployment.
pub const SENTINEL: &str = "TIERKIT_REDIS_SENTINEL_URL";

/// A command timeout generous enough for 16 MiB values on a loaded two-core CI machine; the
/// default (1 s) is checked by the unit tests and by the timeout tests below.
pub const TEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL in `var`, or the error that skips a conformance case when it is unset (and the
/// services are not required). The test is recorded as running against the server.
///
/// # Panics
///
/// When `var` is unset and `TIERKIT_REQUIRE_SERVICES` is set.
pub fn server_url(var: &'static str) -> Result<String, BackendError> {
    match tierkit_services::service_for_tests(var) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Err(skip(format!(
            "{var} is not set; run the tests through `cargo xtask test` to start Redis"
        ))),
        Err(err) => panic!("{err}"),
    }
}

/// The URL in `var`, or returns from the calling test after printing `skipped: ...`.
#[macro_export]
macro_rules! require_server {
    ($var:expr) => {
        match common::server_url($var) {
            Ok(url) => url,
            Err(_) => {
                eprintln!("skipped: {} is not set", $var);
                return;
            }
        }
    };
}

/// The `host:port` of `url` when it is a plain `redis://host:port` URL without credentials,
/// for a test that builds URLs of its own (with credentials, with TLS). For another form, the
/// test skips (`None`, after printing `skipped: ...`), unless `TIERKIT_REQUIRE_SERVICES` is
/// set: `cargo xtask` hands out plain URLs, so the test then fails instead.
///
/// # Panics
///
/// When `url` is not plain and `TIERKIT_REQUIRE_SERVICES` is set.
pub fn plain_address(url: &str) -> Option<&str> {
    let problem = match url.strip_prefix("redis://") {
        Some(address) if !address.contains('@') => return Some(address),
        Some(_) => "already carries credentials",
        None => "is not a plain redis:// URL",
    };
    assert!(
        !tierkit_services::services_required(),
        "{STANDALONE} {problem}, and TIERKIT_REQUIRE_SERVICES is set: this test cannot run"
    );
    eprintln!("skipped: {STANDALONE} {problem}");
    None
}

/// A namespace no other test (or run) uses.
pub fn unique_namespace(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("tkr-{}-{millis}-{n}-{name}", std::process::id())
}

/// A builder for the server at `url`, with the test command timeout.
pub fn builder(url: &str, namespace: &str) -> RedisBackendBuilder {
    RedisBackend::builder(url)
        .namespace(namespace)
        .command_timeout(TEST_COMMAND_TIMEOUT)
}

/// The tier a conformance case asks for: the context's namespace and clock.
pub async fn conformance_tier(
    var: &'static str,
    ctx: &ConformanceContext,
) -> Result<RedisBackend, BackendError> {
    let url = server_url(var)?;
    Ok(builder(&url, ctx.namespace())
        .clock(ctx.clock())
        .build()
        .await?)
}

/// A fred client of the test's own, connected to `url`, for raw commands.
pub async fn raw_client(url: &str) -> Client {
    let config = Config::from_url(url).expect("a valid server URL");
    let client = Builder::from_config(config)
        .with_performance_config(|perf| perf.default_command_timeout = TEST_COMMAND_TIMEOUT)
        .build()
        .expect("a fred client");
    client.init().await.expect("the raw client connects");
    client
}

/// A key from a string.
pub fn k(s: &str) -> CacheKey {
    CacheKey::new(s).expect("a valid key")
}

/// The number of keys matching `pattern` on each primary (one entry for a standalone server),
/// counted with `SCAN` on each node.
pub async fn count_keys_per_primary(raw: &Client, pattern: &str) -> Vec<usize> {
    let nodes: Vec<Option<fred::types::config::Server>> = if raw.is_clustered() {
        raw.cached_cluster_state()
            .expect("a cluster routing table")
            .unique_primary_nodes()
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    let mut counts = Vec::new();
    for node in nodes {
        let client = match node {
            Some(node) => raw.with_cluster_node(node),
            None => raw.with_options(&fred::types::config::Options::default()),
        };
        let mut cursor = String::from("0");
        let mut count = 0;
        loop {
            let (next, keys): (String, Vec<Value>) = client
                .scan_page(cursor, pattern, Some(1_000), None)
                .await
                .expect("SCAN");
            count += keys.len();
            if next == "0" {
                break;
            }
            cursor = next;
        }
        counts.push(count);
    }
    counts
}

/// A free local port with nothing listening on it (bound, then released).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("an address").port()
}
