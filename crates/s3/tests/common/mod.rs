//! Helpers shared by the test binaries: the S3 endpoint (the one named by the environment, or
//! a private in-process server), tiers with unique prefixes, raw object requests, and the
//! Redis server named by the environment (skipping, or failing loudly in CI, when missing).
//!
//! * `TIERKIT_S3_ENDPOINT` (+ `TIERKIT_S3_REGION`, `TIERKIT_S3_ACCESS_KEY`,
//!   `TIERKIT_S3_SECRET_KEY`, `TIERKIT_S3_BUCKET`): run against that endpoint (`cargo xtask
//!   s3-compat` points it at moto). Unset: each test starts its own `tierkit-s3-server`.
//!   Tests that need to control the server (stop it, count its requests, plant files) always
//!   start their own.
//! * `TIERKIT_REDIS_URL`: the Redis server of the three-tier tests, which skip without it
//!   unless `TIERKIT_REQUIRE_SERVICES` is set (then they fail), as
//!   `tierkit_services::service_for_tests` decides.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, GetFuture, Probe, TierPath, WriteFuture,
};
use tierkit_s3::aws_sdk_s3::Client;
use tierkit_s3::aws_sdk_s3::primitives::ByteStream;
use tierkit_s3::{S3Backend, S3BackendBuilder};
use tierkit_s3_server::{S3ClientConfig, S3Server, S3ServerOptions};
use tierkit_testkit::conformance::skip;

/// The Redis server of the three-tier tests.
pub const REDIS: &str = "TIERKIT_REDIS_URL";

/// An operation timeout generous enough for 16 MiB values on a loaded two-core machine; the
/// default (5 s) is checked by the unit tests, short ones by the fault tests.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// An S3 endpoint for one test: a private in-process server, or the one of the environment.
pub struct S3Env {
    server: Option<Arc<S3Server>>,
    config: S3ClientConfig,
}

impl S3Env {
    /// The endpoint of the environment if `TIERKIT_S3_ENDPOINT` is set, else a new in-process
    /// server.
    pub async fn new() -> Self {
        match S3ClientConfig::from_env().expect("valid TIERKIT_S3_* variables") {
            Some(config) => S3Env {
                server: None,
                config,
            },
            None => Self::local().await,
        }
    }

    /// A new in-process server, whatever the environment says.
    pub async fn local() -> Self {
        Self::with_server(Arc::new(
            S3Server::start(S3ServerOptions::new())
                .await
                .expect("the in-process S3 server starts"),
        ))
    }

    fn with_server(server: Arc<S3Server>) -> Self {
        S3Env {
            config: server.client_config(),
            server: Some(server),
        }
    }

    /// The in-process server shared by every call on this thread while one is alive, else a
    /// new one (for the conformance suite, whose cases make several tiers).
    pub async fn shared() -> Self {
        thread_local! {
            static SHARED: RefCell<Weak<S3Server>> = const { RefCell::new(Weak::new()) };
        }
        if let Some(config) = S3ClientConfig::from_env().expect("valid TIERKIT_S3_* variables") {
            return S3Env {
                server: None,
                config,
            };
        }
        if let Some(server) = SHARED.with(|shared| shared.borrow().upgrade()) {
            return Self::with_server(server);
        }
        let env = Self::local().await;
        let server = env.server.clone().expect("a local server");
        SHARED.with(|shared| *shared.borrow_mut() = Arc::downgrade(&server));
        env
    }

    /// The in-process server, if the test runs on one.
    pub fn server(&self) -> Option<&S3Server> {
        self.server.as_deref()
    }

    /// A handle that keeps the in-process server alive.
    pub fn keep_alive(&self) -> Option<Arc<S3Server>> {
        self.server.clone()
    }

    pub fn config(&self) -> &S3ClientConfig {
        &self.config
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// A builder for a tier on this endpoint under `prefix`, with the test timeout.
    pub fn builder(&self, prefix: &str) -> S3BackendBuilder {
        self.builder_for(&self.config.bucket, prefix)
    }

    /// A builder for a tier on this endpoint, in `bucket`, under `prefix`.
    pub fn builder_for(&self, bucket: &str, prefix: &str) -> S3BackendBuilder {
        let c = &self.config;
        S3Backend::compatible(&c.endpoint, &c.region, &c.access_key, &c.secret_key, bucket)
            .prefix(prefix)
            .operation_timeout(TEST_TIMEOUT)
    }

    /// A client of the test's own, for raw requests: one attempt per call.
    pub async fn raw(&self) -> Client {
        let tier = self
            .builder("raw/")
            .max_attempts(1)
            .build()
            .await
            .expect("a raw client");
        tier.client().clone()
    }
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("tks-{}-{millis}-{n}-{name}/", std::process::id())
}

/// A key from a string.
pub fn k(s: &str) -> CacheKey {
    CacheKey::new(s).expect("a valid key")
}

/// Every object key under `prefix`, sorted, through `ListObjectsV2`.
pub async fn list(raw: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = raw
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("ListObjectsV2");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    keys.sort();
    keys
}

/// Whether `object` exists, through `HeadObject`.
pub async fn exists(raw: &Client, bucket: &str, object: &str) -> bool {
    match raw.head_object().bucket(bucket).key(object).send().await {
        Ok(_) => true,
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404) =>
        {
            false
        }
        Err(err) => panic!("HeadObject {object}: {err:?}"),
    }
}

/// Stores `bytes` under `object` as another writer would: through `PutObject`.
pub async fn put_raw(raw: &Client, bucket: &str, object: &str, bytes: Bytes) {
    raw.put_object()
        .bucket(bucket)
        .key(object)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .expect("PutObject");
}

/// The bytes of `object`, through `GetObject`.
pub async fn get_raw(raw: &Client, bucket: &str, object: &str) -> Bytes {
    let output = raw
        .get_object()
        .bucket(bucket)
        .key(object)
        .send()
        .await
        .expect("GetObject");
    output.body.collect().await.expect("the body").into_bytes()
}

/// A tier that keeps an in-process S3 server alive as long as it lives.
#[derive(Debug)]
pub struct Served<B> {
    pub inner: B,
    server: Option<Arc<S3Server>>,
}

impl<B> Served<B> {
    pub fn new(inner: B, env: &S3Env) -> Self {
        Served {
            inner,
            server: env.keep_alive(),
        }
    }
}

impl<B: Backend> Backend for Served<B> {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn probe(&self, key: &CacheKey) -> Probe {
        self.inner.probe(key)
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> GetFuture<'a> {
        self.inner.get(key)
    }

    fn set<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.inner.set(key, value)
    }

    fn set_if_newer<'a>(&'a self, key: &'a CacheKey, value: CacheValue) -> WriteFuture<'a> {
        self.inner.set_if_newer(key, value)
    }

    fn delete<'a>(&'a self, key: &'a CacheKey) -> WriteFuture<'a> {
        self.inner.delete(key)
    }

    fn clear(&self) -> WriteFuture<'_> {
        self.inner.clear()
    }

    fn bind(&self, path: &TierPath) {
        self.inner.bind(path);
    }
}

/// The Redis URL, or the error that skips a conformance case when it is unset (and the
/// services are not required). The test is recorded as running against the server.
///
/// # Panics
///
/// When the variable is unset and `TIERKIT_REQUIRE_SERVICES` is set.
pub fn redis_url() -> Result<String, BackendError> {
    match tierkit_services::service_for_tests(REDIS) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Err(skip(format!(
            "{REDIS} is not set; run the tests through `cargo xtask test` to start Redis"
        ))),
        Err(err) => panic!("{err}"),
    }
}

/// The Redis URL, or returns from the calling test after printing `skipped: ...`.
#[macro_export]
macro_rules! require_redis {
    () => {
        match common::redis_url() {
            Ok(url) => url,
            Err(_) => {
                eprintln!("skipped: {} is not set", common::REDIS);
                return;
            }
        }
    };
}
