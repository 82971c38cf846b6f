#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests
//! No password, token or secret key reaches any `Debug` or `Display` output, error message or
//! log line of the remote tiers.
//!
//! A secret is planted in every place a configuration can carry one: the user-info of a Redis
//! URL, the sentinel password and other query parameters named `*password*`, `*token*` or
//! `*secret*`, a fred `Config`, the S3 secret key and session token, and an S3 endpoint URL.
//! Then every configuration, builder and error type is shown both ways (errors with their whole
//! source chain, including those of bad URLs, TLS without the `tls` feature, refused
//! credentials, unreachable servers), while every log line at every level is captured.
//!
//! The Redis server comes from `TIERKIT_REDIS_URL` (the cases that need one skip without it,
//! unless `TIERKIT_REQUIRE_SERVICES` is set); S3 is the in-process server. Built only with the
//! features `redis` and `s3`.
#![cfg(all(feature = "redis", feature = "s3"))]

use std::time::Duration;

use tierkit::redis::fred::types::config::{Config, ServerConfig};
use tierkit::redis::{RedisBackend, RedisBackendBuilder, RedisSource};
use tierkit::s3::S3Backend;
use tierkit::s3::aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use tierkit::{Backend, BackendError, CacheKey};
use tierkit_s3_server::{S3Server, S3ServerOptions};
use tierkit_testkit::logs::capture;

/// Every planted secret contains this, and no other text does.
const MARK: &str = "hunter2";

/// `Display` and `Debug` of `err` and of every error in its source chain.
fn everything(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{err}\n{err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!("\n{s}\n{s:?}"));
        source = s.source();
    }
    text
}

/// Every output that showed a secret, reported together at the end of the test.
static LEAKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn assert_clean(what: &str, text: &str) {
    if text.to_lowercase().contains(MARK) {
        LEAKS
            .lock()
            .unwrap()
            .push(format!("{what} shows a secret:\n{text}"));
    }
}

/// A loopback port nothing listens on.
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// The Redis URLs with a secret in each place a URL carries one, for servers at `address`.
fn redis_urls(address: &str) -> Vec<String> {
    vec![
        format!("redis://cache:{MARK}-userinfo@{address}/0"),
        format!("redis://:{MARK}-password-only@{address}"),
        format!(
            "redis-sentinel://{address}?sentinelServiceName=primary&sentinelPassword={MARK}-sentinel"
        ),
        format!(
            "redis-sentinel://u:{MARK}-both@{address}?sentinelServiceName=x&sentinelUsername=u&sentinelPassword={MARK}-sp"
        ),
        format!("redis-cluster://:{MARK}-cluster@{address}?node={address}"),
        format!("redis://{address}?password={MARK}-query&x=1"),
        format!("redis://{address}?authToken={MARK}-token"),
        format!("redis://{address}?client_secret={MARK}-secret#frag"),
        format!("redis://{address}?Sentinel%50assword={MARK}-escaped-name"),
        format!("rediss://:{MARK}-tls@{address}?sentinelPassword={MARK}-tls-query"),
        format!("valkeys-cluster://:{MARK}-valkey@{address}?node={address}"),
        // Unparsable: a port that is not a number, an unknown scheme, no scheme at all.
        format!("redis://:{MARK}-bad-port@{address}:notaport?password={MARK}-bad"),
        format!("redis-nope://:{MARK}-scheme@{address}"),
        format!("u:{MARK}-no-scheme@{address}?token={MARK}-no-scheme-token"),
    ]
}

/// The standalone server of `TIERKIT_REDIS_URL`; its absence fails the test when
/// `TIERKIT_REQUIRE_SERVICES` is set.
fn redis_url() -> Option<String> {
    let url = std::env::var("TIERKIT_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let required =
        std::env::var("TIERKIT_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        url.is_some() || !required,
        "TIERKIT_REDIS_URL is not set, but TIERKIT_REQUIRE_SERVICES is"
    );
    url
}

fn redis_builder(source: impl Into<RedisSource>) -> RedisBackendBuilder {
    RedisBackend::builder(source)
        .namespace("tk-secrets")
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
}

/// Builds from `source`, checking the source's and the builder's `Debug` first, then the error
/// (or the built tier's `Debug`).
async fn check_redis_build(source: RedisSource) {
    let shown_source = format!("{source:?}");
    assert_clean("RedisSource", &shown_source);
    let builder = redis_builder(source);
    assert_clean("RedisBackendBuilder", &format!("{builder:?}"));
    match builder.build().await {
        Ok(tier) => {
            assert_clean("RedisBackend", &format!("{tier:?}"));
            tier.shutdown().await;
        }
        Err(err) => {
            assert_clean(&format!("RedisError of {shown_source}"), &everything(&err));
            let err = BackendError::from(err);
            assert_clean("BackendError", &everything(&err));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_secret_reaches_debug_display_errors_or_logs() {
    let logs = capture(tracing::Level::TRACE);

    // Redis: nothing listening, so every URL fails to parse, is refused or times out.
    let unreachable = format!("127.0.0.1:{}", free_port().await);
    for url in redis_urls(&unreachable) {
        check_redis_build(RedisSource::from(url.as_str())).await;
        check_redis_build(RedisSource::from(url)).await;
    }
    // A fred `Config` with a password and a sentinel password.
    let mut config = Config::from_url(&format!("redis://{unreachable}")).unwrap();
    config.password = Some(format!("{MARK}-config"));
    config.username = Some("cache".to_owned());
    check_redis_build(RedisSource::from(config)).await;
    let sentinel = Config {
        server: ServerConfig::new_sentinel(vec![("127.0.0.1", 1)], "primary"),
        password: Some(format!("{MARK}-sentinel-config")),
        ..Config::default()
    };
    check_redis_build(RedisSource::from(sentinel)).await;

    // A real server that has no password: the credentials are refused; a tier built without
    // them shows no secret either.
    if let Some(url) = redis_url() {
        let address = url.trim_start_matches("redis://").trim_end_matches('/');
        for url in redis_urls(address) {
            check_redis_build(RedisSource::from(url)).await;
        }
    }

    // S3: the in-process server, a wrong secret key, a session token, an endpoint with
    // credentials in its user-info and query.
    let server = S3Server::start(S3ServerOptions::new()).await.unwrap();
    let endpoints = [
        server.endpoint().to_owned(),
        format!(
            "http://key:{MARK}-endpoint@127.0.0.1:{}/?X-Amz-Security-Token={MARK}-endpoint-token",
            server.port()
        ),
        format!("not a url {MARK}-in-garbage"),
        format!("ftp://u:{MARK}-ftp@h/?secret={MARK}-ftp-query"),
    ];
    for endpoint in &endpoints {
        let builder = S3Backend::compatible(
            endpoint,
            server.region(),
            server.access_key(),
            &format!("{MARK}-secret-key"),
            server.bucket(),
        )
        .operation_timeout(Duration::from_secs(2))
        .check_bucket(true);
        assert_clean("S3BackendBuilder", &format!("{builder:?}"));
        match builder.build().await {
            Ok(tier) => panic!("a wrong secret key was accepted: {tier:?}"),
            Err(err) => {
                assert_clean(&format!("S3Error of {endpoint}"), &everything(&err));
                assert_clean("BackendError", &everything(&BackendError::from(err)));
            }
        }
        // Without the bucket check, the tier builds, and its operations fail.
        let tier = S3Backend::compatible(
            endpoint,
            server.region(),
            server.access_key(),
            &format!("{MARK}-secret-key"),
            server.bucket(),
        )
        .operation_timeout(Duration::from_secs(2))
        .build()
        .await;
        if let Ok(tier) = tier {
            assert_clean("S3Backend", &format!("{tier:?}"));
            let err = tier
                .get(&CacheKey::new("k").unwrap())
                .await
                .expect_err("refused");
            assert_clean("a get's BackendError", &everything(&err));
        }
    }
    let session = tierkit::s3::aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(server.endpoint())
        .region(Region::new(server.region().to_owned()))
        .credentials_provider(Credentials::new(
            server.access_key(),
            format!("{MARK}-session-secret"),
            Some(format!("{MARK}-session-token")),
            None,
            "secrets-test",
        ))
        .force_path_style(true)
        .build();
    let builder = S3Backend::builder(
        tierkit::s3::aws_sdk_s3::Client::from_conf(session),
        server.bucket(),
    )
    .operation_timeout(Duration::from_secs(2));
    assert_clean("S3BackendBuilder", &format!("{builder:?}"));
    let tier = builder.build().await.expect("builds without a request");
    assert_clean("S3Backend", &format!("{tier:?}"));
    let err = tier
        .get(&CacheKey::new("k").unwrap())
        .await
        .expect_err("refused");
    assert_clean("a get's BackendError", &everything(&err));

    // Not the in-process server's own request log (server side: it logs the headers it
    // receives, the session token among them).
    let text = logs.text();
    let tiers_log: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains(" s3s::"))
        .collect();
    assert_clean("the log", &tiers_log.join("\n"));
    server.close().await.unwrap();
    let leaks = LEAKS.lock().unwrap();
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n\n")
    );
}
