//! What the conformance suite cannot see: the S3 side of the tier. Refill from S3 through Redis
//! into moka with the remaining lifetime, the object key layout for keys of any bytes, value
//! limits checked on the bucket itself, `clear` across pages, undecodable objects counted as
//! misses, expired objects deleted in the background, and typed errors for a stopped or
//! silent server, a missing bucket and wrong credentials (one request each: no retry storm).
//!
//! The endpoint is the one of `TIERKIT_S3_ENDPOINT` if set, else a private in-process
//! `tierkit-s3-server` per test; tests that stop the server or count its requests always start
//! their own (see `tests/common/mod.rs`). Nothing sleeps but bounded polling.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{S3Env, exists, get_raw, k, list, put_raw, unique_prefix};
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, ManualClock, Probe, envelope,
};
use tierkit_moka::MokaBackend;
use tierkit_policy::Composition;
use tierkit_redis::RedisBackend;
use tierkit_redis::fred::prelude::{
    Builder as FredBuilder, ClientLike, Config as FredConfig, KeysInterface,
};
use tierkit_s3::{DecodeErrors, S3Backend, S3Error};
use tierkit_s3_server::ops;
use tierkit_testkit::ManualOffload;

const HOUR: Duration = Duration::from_secs(3_600);

/// Every message of `err` and its sources, `Display` and `Debug`.
fn everything(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(" | {s} {s:?}"));
        source = s.source();
    }
    text
}

/// The [`S3Error`] an operation's error carries.
fn s3_error(err: &BackendError) -> &S3Error {
    err.source()
        .and_then(|s| s.downcast_ref::<S3Error>())
        .unwrap_or_else(|| panic!("no S3Error in {err:?}"))
}

// ---------------------------------------------------------------------------------------------
// Three tiers

/// A value written through moka → Redis → S3, then dropped from moka and (raw) from Redis, is
/// read back from S3 with one `GetObject` and refilled into Redis and moka with the same
/// timestamps: the remaining lifetime, never extended. Redis' `PTTL` agrees with `expires_at`.
#[tokio::test]
async fn a_value_lost_by_l1_and_redis_is_refilled_from_s3_with_its_expiry() {
    let url = require_redis!();
    let env = S3Env::new().await;
    let clock = ManualClock::starting_now();
    let prefix = unique_prefix("refill");
    let l1 = MokaBackend::builder()
        .clock(Clock::from(clock.clone()))
        .build();
    let redis = RedisBackend::builder(url.as_str())
        .namespace(prefix.trim_end_matches('/'))
        .clock(Clock::from(clock.clone()))
        .command_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("redis connects");
    let s3 = env
        .builder(&prefix)
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("builds");
    let lower = Composition::builder(redis.clone(), s3.clone())
        .clock(Clock::from(clock.clone()))
        .build();
    let cache = Composition::builder(l1.clone(), lower)
        .clock(Clock::from(clock.clone()))
        .build();

    let key = k("user:42");
    let value = CacheValue::with_ttl(&b"Ada Lovelace"[..], clock.now(), Duration::from_secs(120))
        .with_stale_for(Duration::from_secs(60));
    cache.set(&key, value.clone()).await.expect("set");
    assert_eq!(s3.get(&key).await.expect("s3 get"), Some(value.clone()));
    assert_eq!(
        redis.get(&key).await.expect("redis get"),
        Some(value.clone())
    );

    l1.delete(&key).await.expect("L1 delete");
    redis
        .delete(&key)
        .await
        .expect("raw delete on the Redis tier");
    assert_eq!(l1.probe(&key), Probe::Miss);
    assert_eq!(redis.get(&key).await.expect("redis get"), None);

    clock.advance(Duration::from_secs(45));
    if let Some(server) = env.server() {
        server.reset_requests();
    }
    assert_eq!(cache.get(&key).await.expect("get"), Some(value.clone()));
    if let Some(server) = env.server() {
        let requests = server.requests();
        assert_eq!(requests.get(ops::GET_OBJECT), 1, "{requests}");
        assert_eq!(requests.total(), 1, "only one GetObject: {requests}");
    }

    // Refilled upwards, timestamps unchanged.
    match l1.probe(&key) {
        Probe::Fresh(refilled) => {
            assert_eq!(refilled, value);
            assert_eq!(refilled.created_at(), value.created_at());
            assert_eq!(refilled.stale_at(), value.stale_at());
            assert_eq!(refilled.expires_at(), value.expires_at());
        }
        other => panic!("L1 was not refilled: {other:?}"),
    }
    let in_redis = redis.get(&key).await.expect("redis get");
    assert_eq!(in_redis.as_ref(), Some(&value), "Redis was refilled");
    assert_eq!(
        in_redis.map(|v| v.expires_at()),
        Some(value.expires_at()),
        "never extended"
    );

    // Redis expires the refilled key at `expires_at` (PXAT, by Redis' own clock).
    let raw = FredBuilder::from_config(FredConfig::from_url(&url).expect("a valid URL"))
        .build()
        .expect("a fred client");
    raw.init().await.expect("the raw client connects");
    let pttl: i64 = raw.pttl(redis.redis_key(&key)).await.expect("PTTL");
    let now = i64::try_from(Clock::System.now().as_unix_millis()).expect("in range");
    let expected = i64::try_from(value.expires_at().as_unix_millis()).expect("in range") - now;
    assert!(
        (pttl - expected).abs() <= 1_000,
        "PTTL {pttl} ms, expires_at - now {expected} ms"
    );
    raw.quit().await.expect("quit");

    // The next read is an L1 hit: no request reaches S3.
    if let Some(server) = env.server() {
        server.reset_requests();
    }
    assert_eq!(cache.get(&key).await.expect("get"), Some(value));
    if let Some(server) = env.server() {
        assert_eq!(server.requests().total(), 0);
    }
    cache.clear().await.expect("clear");
}

// ---------------------------------------------------------------------------------------------
// Keys and values

/// The longest object key the in-process server (s3s-fs) stores, for the bucket `tierkit`:
/// s3s-fs names a side file of every object `.bucket-<base64 bucket>.object-<base64 key>
/// .metadata.json`, in one directory, and file names are limited to 255 bytes.
const S3S_FS_MAX_OBJECT_KEY: usize = 161;

/// Keys of any bytes (dots, slashes, percent signs, `+`, spaces, NUL, control characters,
/// Unicode, long keys in the segmented form, 4096-byte keys in the hashed form) round-trip,
/// are stored exactly under `tier.object_key(key)` and nowhere else, and do not interfere with
/// each other; with `max_plain_object_key(0)` every key is hashed.
#[tokio::test]
async fn keys_of_any_bytes_round_trip_under_their_own_objects() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    // The in-process server cannot hold long object keys (see S3S_FS_MAX_OBJECT_KEY): there,
    // the segmented form is left to the unit tests and to `cargo xtask s3-compat`.
    let plain_limit = match env.server() {
        Some(_) => S3S_FS_MAX_OBJECT_KEY,
        None => S3Backend::DEFAULT_MAX_PLAIN_OBJECT_KEY,
    };
    let now = Clock::System.now();
    let texts: Vec<String> = vec![
        "..".into(),
        ".".into(),
        "./a".into(),
        "/".into(),
        "//".into(),
        "a/../b".into(),
        "a/".into(),
        "/a".into(),
        "a".into(),
        "A".into(),
        "%2F".into(),
        "a%2Fb".into(),
        "a%252Fb".into(),
        "%".into(),
        "+".into(),
        "a+b".into(),
        " ".into(),
        "a b".into(),
        "\0".into(),
        "nul\0inside".into(),
        "\r\n\t\x7f".into(),
        "ключ 🔑 鍵".into(),
        "k/x".into(),
        "h/x".into(),
        "~!*'()&$@=;:,?#[]{}<>|\\^`\"".into(),
        "ü".repeat(100), // 600 escaped bytes: three segments, or hashed
        "x".repeat(CacheKey::MAX_LEN),
        format!("{}y", "x".repeat(CacheKey::MAX_LEN - 1)),
    ];
    let keys: Vec<CacheKey> = texts.iter().map(|t| k(t)).collect();
    let value = |i: usize| CacheValue::with_ttl(format!("value {i}").into_bytes(), now, HOUR);

    for (limit, name) in [(plain_limit, "keys"), (0, "hashed-keys")] {
        let prefix = unique_prefix(name);
        let tier = env
            .builder(&prefix)
            .max_plain_object_key(limit)
            .build()
            .await
            .expect("builds");
        for (i, key) in keys.iter().enumerate() {
            tier.set(key, value(i)).await.expect("set");
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(tier.get(key).await.expect("get"), Some(value(i)), "{key:?}");
        }
        for near in ["...", "a/..", "%2", "+ ", "nul", "ключ"] {
            assert_eq!(tier.get(&k(near)).await.expect("get"), None, "{near:?}");
        }

        let mut expected: Vec<String> = keys.iter().map(|key| tier.object_key(key)).collect();
        expected.sort();
        expected.dedup();
        assert_eq!(expected.len(), keys.len(), "one object per key");
        assert_eq!(list(&raw, env.bucket(), &prefix).await, expected);
        let hashed = expected
            .iter()
            .filter(|o| o.starts_with(&format!("{prefix}.tk/h/")))
            .count();
        if limit == 0 {
            assert_eq!(hashed, keys.len());
        } else {
            assert!(hashed >= 2, "the 4096-byte keys are hashed");
            assert!(hashed < keys.len() - 20, "short keys stay readable");
        }
        for object in &expected {
            assert!(
                object.len() <= limit.max(prefix.len() + ".tk/h/".len() + 64 + ".tkv".len()),
                "{object}"
            );
            assert!(object.ends_with(".tkv"), "{object}");
        }
        // The stored bytes are the envelope, with the key echoed.
        let stored = get_raw(&raw, env.bucket(), &tier.object_key(&keys[0])).await;
        assert_eq!(stored, envelope::encode(&value(0), &keys[0]));

        tier.clear().await.expect("clear");
        assert!(list(&raw, env.bucket(), &prefix).await.is_empty());
    }
}

/// Empty, 1-byte and 1 MiB payloads round-trip; a payload over `max_object_bytes` is refused
/// as invalid and nothing is written (an absent key stays absent, a present one keeps its
/// value); an expired value deletes the object.
#[tokio::test]
async fn values_round_trip_up_to_the_limit_and_nothing_is_written_past_it() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    let prefix = unique_prefix("values");
    let tier = env
        .builder(&prefix)
        .max_object_bytes(1 << 20)
        .build()
        .await
        .expect("builds");
    assert_eq!(tier.max_object_bytes(), 1 << 20);
    let now = Clock::System.now();
    let payloads: [(&str, Vec<u8>); 3] = [
        ("empty", Vec::new()),
        ("one", vec![0xff]),
        ("mib", (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()),
    ];
    for (name, payload) in payloads {
        let value = CacheValue::with_ttl(payload, now, HOUR);
        tier.set(&k(name), value.clone()).await.expect("set");
        assert_eq!(
            tier.get(&k(name)).await.expect("get"),
            Some(value),
            "{name}"
        );
    }

    if let Some(server) = env.server() {
        server.reset_requests();
    }
    let too_big = CacheValue::with_ttl(vec![1u8; (1 << 20) + 1], now, HOUR);
    let absent = k("too big");
    let err = tier
        .set(&absent, too_big.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert!(!err.is_transient());
    assert_eq!(err.tier_label(), Some("s3"));
    let present = k("one");
    let err = tier.set(&present, too_big).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    if let Some(server) = env.server() {
        assert_eq!(
            server.requests().total(),
            0,
            "no request for a refused value"
        );
    }
    assert!(!exists(&raw, env.bucket(), &tier.object_key(&absent)).await);
    assert_eq!(
        tier.get(&present)
            .await
            .expect("get")
            .map(|v| v.payload().clone()),
        Some(Bytes::from_static(&[0xff])),
        "the previous value stays"
    );
    let objects = list(&raw, env.bucket(), &prefix).await;
    assert_eq!(objects.len(), 3, "{objects:?}");

    // An expired value deletes the object (one DeleteObject, no PutObject).
    if let Some(server) = env.server() {
        server.reset_requests();
    }
    let expired = CacheValue::with_ttl(&b"gone"[..], now, Duration::ZERO);
    tier.set(&present, expired).await.expect("set");
    if let Some(server) = env.server() {
        let requests = server.requests();
        assert_eq!(requests.get(ops::DELETE_OBJECT), 1, "{requests}");
        assert_eq!(requests.total(), 1, "{requests}");
    }
    assert!(!exists(&raw, env.bucket(), &tier.object_key(&present)).await);
    assert_eq!(tier.get(&present).await.expect("get"), None);
    tier.clear().await.expect("clear");
}

/// `clear` deletes every object in the tier's directory (1,100 of them: two list pages, two
/// batch deletes), objects of other writers included, and nothing outside it: not another tier's
/// objects under the same key names, not a prefix that only starts like it.
#[tokio::test]
async fn clear_pages_through_the_prefix_and_leaves_everything_else() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    let base = unique_prefix("clear");
    let base = base.trim_end_matches('/');
    let (prefix_a, prefix_b) = (format!("{base}-a/"), format!("{base}-ab/"));
    let a = env.builder(&prefix_a).build().await.expect("builds");
    let b = env.builder(&prefix_b).build().await.expect("builds");
    let now = Clock::System.now();
    let value = CacheValue::with_ttl(&b"v"[..], now, HOUR);
    let keys: Vec<CacheKey> = (0..1_100).map(|i| k(&format!("item:{i}"))).collect();
    let mut writers = tokio::task::JoinSet::new();
    for chunk in keys.chunks(70) {
        let (tier, chunk, value) = (a.clone(), chunk.to_vec(), value.clone());
        writers.spawn(async move {
            for key in &chunk {
                tier.set(key, value.clone()).await.expect("set a");
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("a writer");
    }
    for key in keys.iter().take(10) {
        b.set(key, value.clone()).await.expect("set b");
    }
    // Another writer's object in a's directory, and one next to it.
    put_raw(
        &raw,
        env.bucket(),
        &format!("{prefix_a}.tk/foreign"),
        Bytes::from_static(b"x"),
    )
    .await;
    let outside = format!("{base}-a-outside");
    put_raw(&raw, env.bucket(), &outside, Bytes::from_static(b"x")).await;
    assert_eq!(list(&raw, env.bucket(), &prefix_a).await.len(), 1_101);

    if let Some(server) = env.server() {
        server.reset_requests();
    }
    a.clear().await.expect("clear");
    if let Some(server) = env.server() {
        let requests = server.requests();
        assert_eq!(requests.get(ops::LIST_OBJECTS_V2), 2, "{requests}");
        assert_eq!(requests.get(ops::DELETE_OBJECTS), 2, "{requests}");
        assert_eq!(requests.total(), 4, "{requests}");
    }
    assert!(list(&raw, env.bucket(), &prefix_a).await.is_empty());
    assert_eq!(list(&raw, env.bucket(), &prefix_b).await.len(), 10);
    assert!(exists(&raw, env.bucket(), &outside).await);
    for key in keys.iter().take(10) {
        assert_eq!(a.get(key).await.expect("get"), None);
        assert_eq!(b.get(key).await.expect("get"), Some(value.clone()));
    }
    a.clear().await.expect("clearing an empty prefix");
    b.clear().await.expect("clear");
    raw.delete_object()
        .bucket(env.bucket())
        .key(&outside)
        .send()
        .await
        .expect("raw delete");
}

/// Seeds a prefix, a sibling whose name extends it (`base-sibling/`) and a prefix nested under
/// it (`base/staging/`), each with its own number of keys: `clear` of the first deletes exactly
/// its objects, so the count of objects under `base` drops by that many and every key of the
/// other two still reads its value.
#[tokio::test]
async fn clear_removes_exactly_its_own_prefix() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    let base = unique_prefix("exact-clear");
    let base = base.trim_end_matches('/');
    let own = env.builder(base).build().await.expect("builds");
    let sibling = env
        .builder(&format!("{base}-sibling"))
        .build()
        .await
        .expect("builds");
    let nested = env
        .builder(&format!("{base}/staging"))
        .build()
        .await
        .expect("builds");
    let now = Clock::System.now();
    let value =
        |name: &str, i: usize| CacheValue::with_ttl(format!("{name} {i}").into_bytes(), now, HOUR);
    let keys = |n: usize| -> Vec<CacheKey> { (0..n).map(|i| k(&format!("item:{i}"))).collect() };
    let (own_keys, sibling_keys, nested_keys) = (keys(60), keys(25), keys(15));
    for (i, key) in own_keys.iter().enumerate() {
        own.set(key, value("own", i)).await.expect("set");
    }
    for (i, key) in sibling_keys.iter().enumerate() {
        sibling.set(key, value("sibling", i)).await.expect("set");
    }
    for (i, key) in nested_keys.iter().enumerate() {
        nested.set(key, value("nested", i)).await.expect("set");
    }
    assert_eq!(list(&raw, env.bucket(), base).await.len(), 60 + 25 + 15);

    own.clear().await.expect("clear");

    assert_eq!(list(&raw, env.bucket(), base).await.len(), 25 + 15);
    for key in &own_keys {
        assert_eq!(own.get(key).await.expect("get"), None, "{key}");
    }
    for (i, key) in sibling_keys.iter().enumerate() {
        assert_eq!(
            sibling.get(key).await.expect("get"),
            Some(value("sibling", i))
        );
    }
    for (i, key) in nested_keys.iter().enumerate() {
        assert_eq!(
            nested.get(key).await.expect("get"),
            Some(value("nested", i))
        );
    }
    sibling.clear().await.expect("clear");
    nested.clear().await.expect("clear");
    assert!(list(&raw, env.bucket(), base).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Undecodable and expired objects

/// Objects that are not an envelope for the key read (garbage replacing a value, truncated,
/// altered, too short, empty, written for another key, larger than any envelope of the tier)
/// are misses, each counted exactly under its reason; a composition over the tier answers a
/// miss, not an error; the next `set` overwrites them.
#[tokio::test]
async fn undecodable_objects_are_counted_misses() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    let prefix = unique_prefix("corrupt");
    let tier = env
        .builder(&prefix)
        .max_object_bytes(4_096)
        .build()
        .await
        .expect("builds");
    let now = Clock::System.now();
    let good = CacheValue::with_ttl(vec![7u8; 64], now, HOUR);

    // A value replaced by garbage.
    let replaced = k("replaced");
    tier.set(&replaced, good.clone()).await.expect("set");
    assert_eq!(tier.get(&replaced).await.expect("get"), Some(good.clone()));

    let envelope_of = |key: &str| envelope::encode(&good, &k(key));
    let truncated = envelope_of("truncated");
    let mut flipped = envelope_of("flipped").to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let cases: Vec<(&str, Bytes, &str)> = vec![
        (
            "replaced",
            Bytes::from_static(b"plain text written by someone else, not an envelope"),
            "bad_magic",
        ),
        (
            "truncated",
            truncated.slice(..truncated.len() - 5),
            "length_mismatch",
        ),
        ("flipped", Bytes::from(flipped), "checksum_mismatch"),
        ("short", Bytes::from_static(b"x"), "too_short"),
        ("empty", Bytes::new(), "too_short"),
        ("copied", envelope_of("another key"), "key_mismatch"),
        ("huge", Bytes::from(vec![0u8; 8_192]), "too_large"),
    ];
    for (name, bytes, _) in &cases {
        let object = tier.object_key(&k(name));
        match env.server() {
            Some(server) => {
                server
                    .put_raw(env.bucket(), &object, bytes)
                    .expect("put_raw");
            }
            None => put_raw(&raw, env.bucket(), &object, bytes.clone()).await,
        }
    }
    for (name, _, _) in &cases {
        assert_eq!(
            tier.get(&k(name)).await.expect("a miss, not an error"),
            None,
            "{name}"
        );
    }
    let decode_errors = tier.stats().decode_errors;
    assert_eq!(decode_errors.total(), 7, "{decode_errors:?}");
    for reason in DecodeErrors::REASONS {
        let expected = cases.iter().filter(|(_, _, r)| r == reason).count() as u64;
        assert_eq!(
            decode_errors.get(reason),
            expected,
            "{reason}: {decode_errors:?}"
        );
    }
    assert_eq!(tier.stats().expired_reads, 0);

    // Through a composition: a miss, not an error, counted once more.
    let cache = Composition::new(MokaBackend::new(100), tier.clone());
    assert_eq!(cache.get(&replaced).await.expect("not an error"), None);
    assert_eq!(tier.stats().decode_errors.get("bad_magic"), 2);

    // A set overwrites the bad bytes.
    tier.set(&replaced, good.clone()).await.expect("set");
    assert_eq!(tier.get(&replaced).await.expect("get"), Some(good));
    assert_eq!(tier.stats().decode_errors.total(), 8);
    tier.clear().await.expect("clear");
}

/// An expired object is a miss. Without an offload it stays in the bucket; with one, the read
/// queues one background `DeleteObject` (run by the test: exactly one DELETE reaches the
/// server), counted; a refusing offload is counted as a failure. With a `TokioOffload`, the
/// object disappears on its own (bounded polling).
#[tokio::test]
async fn expired_objects_are_misses_and_deleted_in_the_background() {
    let env = S3Env::local().await;
    let server = env.server().expect("a local server");
    let raw = env.raw().await;
    let clock = ManualClock::starting_now();
    let prefix = unique_prefix("expired");
    let offload = ManualOffload::new();
    let with_offload = env
        .builder(&prefix)
        .clock(Clock::from(clock.clone()))
        .offload(offload.clone())
        .build()
        .await
        .expect("builds");
    let without = env
        .builder(&prefix)
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("builds");
    let key = k("session");
    let object = with_offload.object_key(&key);
    let value = CacheValue::with_ttl(&b"token"[..], clock.now(), Duration::from_secs(30));
    with_offload.set(&key, value.clone()).await.expect("set");
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(with_offload.get(&key).await.expect("get"), Some(value));
    clock.advance(Duration::from_millis(1));

    // Without an offload: a miss, and the object stays.
    server.reset_requests();
    assert_eq!(without.get(&key).await.expect("get"), None);
    assert_eq!(without.stats().expired_reads, 1);
    assert_eq!(server.requests().total(), 1, "{}", server.requests());
    assert!(exists(&raw, env.bucket(), &object).await);

    // With one: a miss at once, and one background delete.
    server.reset_requests();
    assert_eq!(with_offload.get(&key).await.expect("get"), None);
    assert_eq!(offload.queued(), 1);
    assert_eq!(offload.queued_names(), vec!["tierkit.s3.delete_expired"]);
    assert_eq!(
        server.count(ops::DELETE_OBJECT),
        0,
        "not before the offload runs it"
    );
    let results = offload.run_all().await;
    assert_eq!(results.len(), 1);
    assert!(results[0].is_ok(), "{results:?}");
    let requests = server.requests();
    assert_eq!(requests.get(ops::GET_OBJECT), 1, "{requests}");
    assert_eq!(requests.get(ops::DELETE_OBJECT), 1, "{requests}");
    assert_eq!(requests.total(), 2, "{requests}");
    assert!(!exists(&raw, env.bucket(), &object).await);
    let stats = with_offload.stats();
    assert_eq!(
        (
            stats.expired_reads,
            stats.expired_deletes,
            stats.expired_delete_failures
        ),
        (1, 1, 0)
    );
    assert_eq!(with_offload.get(&key).await.expect("get"), None);
    assert_eq!(offload.queued(), 0, "a missing object queues nothing");

    // A refusing offload: counted, nothing deleted.
    let expired =
        CacheValue::new(&b"old"[..], clock.now(), clock.now(), clock.now()).expect("ordered");
    put_raw(
        &raw,
        env.bucket(),
        &object,
        envelope::encode(&expired, &key),
    )
    .await;
    offload.reject_all(true);
    assert_eq!(with_offload.get(&key).await.expect("get"), None);
    assert_eq!(with_offload.stats().expired_delete_failures, 1);
    assert!(exists(&raw, env.bucket(), &object).await);

    // A tokio offload deletes it on its own.
    let tokio_offload = tierkit_core::TokioOffload::unbounded();
    let background = env
        .builder(&prefix)
        .clock(Clock::from(clock.clone()))
        .offload(tokio_offload.clone())
        .build()
        .await
        .expect("builds");
    server.reset_requests();
    assert_eq!(background.get(&key).await.expect("get"), None);
    let started = Instant::now();
    while exists(&raw, env.bucket(), &object).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the background delete did not happen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.count(ops::DELETE_OBJECT), 1);
    assert_eq!(background.stats().expired_deletes, 1);
    let report = tokio_offload.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete());
}

/// The background delete of an expired object is conditional on the ETag read (`If-Match`): a
/// newer object written before the delete runs survives it.
#[tokio::test]
async fn a_newer_object_survives_the_background_delete_of_an_expired_one() {
    let env = S3Env::new().await;
    let raw = env.raw().await;
    let clock = ManualClock::starting_now();
    let offload = ManualOffload::new();
    let tier = env
        .builder(&unique_prefix("if-match"))
        .clock(Clock::from(clock.clone()))
        .offload(offload.clone())
        .build()
        .await
        .expect("builds");
    let (key, other) = (k("session"), k("other"));
    let old = CacheValue::with_ttl(&b"old"[..], clock.now(), Duration::from_secs(10));
    tier.set(&key, old.clone()).await.expect("set");
    tier.set(&other, old).await.expect("set");
    clock.advance(Duration::from_secs(10));

    // Unchanged since the read: deleted.
    assert_eq!(tier.get(&other).await.expect("get"), None);
    assert!(offload.run_all().await.iter().all(Result::is_ok));
    assert!(!exists(&raw, env.bucket(), &tier.object_key(&other)).await);

    // Rewritten between the read and the delete: kept.
    assert_eq!(tier.get(&key).await.expect("get"), None);
    assert_eq!(offload.queued(), 1);
    let new = CacheValue::with_ttl(&b"new"[..], clock.now(), HOUR);
    tier.set(&key, new.clone()).await.expect("set");
    let results = offload.run_all().await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(tier.get(&key).await.expect("get"), Some(new));
    let stats = tier.stats();
    assert_eq!(
        (
            stats.expired_reads,
            stats.expired_deletes,
            stats.expired_delete_failures
        ),
        (2, 2, 0)
    );
    tier.clear().await.expect("clear");
}

/// `set_if_newer` reads the object and writes on condition that it is still the one read: one
/// `GetObject`, then one `PutObject` unless the object holds a live value created later. An
/// absent key, an older or equal value and bytes that are not an envelope are replaced; a newer
/// value is kept without a write.
#[tokio::test]
async fn set_if_newer_reads_once_and_writes_only_over_an_older_object() {
    let env = S3Env::local().await;
    let server = env.server().expect("a local server");
    let raw = env.raw().await;
    let clock = ManualClock::starting_now();
    let tier = env
        .builder(&unique_prefix("if-newer"))
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("builds");
    let key = k("if-newer");
    let object = tier.object_key(&key);
    let now = clock.now();
    let older = CacheValue::with_ttl(
        &b"older"[..],
        now.saturating_sub(Duration::from_secs(1)),
        HOUR,
    );
    let newer = CacheValue::with_ttl(&b"newer"[..], now, HOUR);
    let counts = |what: &str, get: u64, put: u64| {
        let requests = server.requests();
        assert_eq!(
            (
                requests.get(ops::GET_OBJECT),
                requests.get(ops::PUT_OBJECT),
                requests.total()
            ),
            (get, put, get + put),
            "{what}: {requests}"
        );
        server.reset_requests();
    };

    server.reset_requests();
    tier.set_if_newer(&key, newer.clone())
        .await
        .expect("absent");
    counts("on an absent key", 1, 1);
    tier.set_if_newer(&key, older.clone()).await.expect("older");
    counts("an older value", 1, 0);
    assert_eq!(tier.get(&key).await.expect("get"), Some(newer.clone()));
    server.reset_requests();
    let same_instant = CacheValue::with_ttl(&b"same instant"[..], now, HOUR);
    tier.set_if_newer(&key, same_instant.clone())
        .await
        .expect("equal");
    counts("an equal created_at", 1, 1);
    assert_eq!(tier.get(&key).await.expect("get"), Some(same_instant));

    put_raw(
        &raw,
        env.bucket(),
        &object,
        Bytes::from_static(b"not an envelope"),
    )
    .await;
    server.reset_requests();
    tier.set_if_newer(&key, older.clone())
        .await
        .expect("over foreign bytes");
    counts("over foreign bytes", 1, 1);
    assert_eq!(tier.get(&key).await.expect("get"), Some(older));
    tier.clear().await.expect("clear");
}

// ---------------------------------------------------------------------------------------------
// Faults

/// A stopped server (connections refused): every operation fails with a transient
/// `Connection` error within the operation timeout (+ 1 s); once restarted, the tier works
/// again.
#[tokio::test]
async fn a_stopped_server_is_a_transient_connection_error() {
    let env = S3Env::local().await;
    let server = env.server().expect("a local server");
    let timeout = Duration::from_secs(2);
    let tier = env
        .builder(&unique_prefix("stopped"))
        .operation_timeout(timeout)
        .build()
        .await
        .expect("builds");
    let key = k("k");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    tier.set(&key, value.clone()).await.expect("set");

    server.stop().await;
    for op in ["get", "set", "delete", "clear"] {
        let started = Instant::now();
        let result = match op {
            "get" => tier.get(&key).await.map(drop),
            "set" => tier.set(&key, value.clone()).await,
            "delete" => tier.delete(&key).await,
            _ => tier.clear().await,
        };
        let elapsed = started.elapsed();
        let err = result.expect_err("the server is stopped");
        assert!(
            elapsed <= timeout + Duration::from_secs(1),
            "{op}: {elapsed:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Connection, "{op}: {err:?}");
        assert!(err.is_transient(), "{op}");
        assert!(
            matches!(s3_error(&err), S3Error::Unreachable { .. }),
            "{op}: {err:?}"
        );
        assert!(
            everything(&err).contains(server.endpoint()),
            "{op}: the message names the endpoint"
        );
    }
    server.restart().await.expect("restarts");
    assert_eq!(tier.get(&key).await.expect("get"), Some(value));
}

/// The in-process server paused: it accepts connections and requests and answers none. Every
/// operation fails with a `Timeout` naming the bound, within the operation timeout (+ 1 s),
/// never hangs; resumed, the same tier works again.
#[tokio::test]
async fn a_silent_server_times_out() {
    let env = S3Env::local().await;
    let server = env.server().expect("a local server");
    let timeout = Duration::from_millis(500);
    let tier = env
        .builder(&unique_prefix("silent"))
        .operation_timeout(timeout)
        .build()
        .await
        .expect("builds");
    server.pause();
    let key = k("k");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    for op in ["get", "set", "delete", "clear"] {
        let started = Instant::now();
        let result = match op {
            "get" => tier.get(&key).await.map(drop),
            "set" => tier.set(&key, value.clone()).await,
            "delete" => tier.delete(&key).await,
            _ => tier.clear().await,
        };
        let elapsed = started.elapsed();
        let err = result.expect_err("no answer");
        assert!(
            elapsed <= timeout + Duration::from_secs(1),
            "{op}: {elapsed:?}"
        );
        assert!(
            matches!(err, BackendError::Timeout { after, .. } if after == timeout),
            "{op}: {err:?}"
        );
        assert!(err.is_transient());
    }
    let err = tier.get(&key).await.expect_err("no answer");
    assert_eq!(err.to_string(), "s3: get timed out after 500ms");

    // Running again, the same tier works.
    server.resume();
    tier.set(&key, value.clone()).await.expect("set");
    assert_eq!(tier.get(&key).await.expect("get"), Some(value));
    tier.clear().await.expect("clear");
}

/// A missing bucket: `check_bucket` fails the build with `NoSuchBucket` naming it; without the
/// check, every operation fails with a permanent `Unsupported` error whose source names it.
#[tokio::test]
async fn a_missing_bucket_is_a_typed_error_naming_it() {
    let env = S3Env::new().await;
    let bucket = "tierkit-no-such-bucket-4711";
    let err = env
        .builder_for(bucket, "p/")
        .check_bucket(true)
        .build()
        .await
        .expect_err("no such bucket");
    assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&format!("the S3 bucket {bucket:?} does not exist")),
        "{message}"
    );
    assert!(message.contains(&env.config().endpoint), "{message}");
    let as_backend = BackendError::from(err);
    assert_eq!(as_backend.kind(), ErrorKind::Unsupported);

    let tier = env
        .builder_for(bucket, "p/")
        .build()
        .await
        .expect("no check");
    let key = k("k");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    for op in ["get", "set", "delete", "clear"] {
        let result = match op {
            "get" => tier.get(&key).await.map(drop),
            "set" => tier.set(&key, value.clone()).await,
            "delete" => tier.delete(&key).await,
            _ => tier.clear().await,
        };
        let err = result.expect_err("no such bucket");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{op}: {err:?}");
        assert!(!err.is_transient(), "{op}");
        assert!(
            matches!(s3_error(&err), S3Error::NoSuchBucket { bucket: b, .. } if b == bucket),
            "{op}: {err:?}"
        );
        assert!(
            s3_error(&err).to_string().contains(bucket),
            "{op}: {}",
            s3_error(&err)
        );
    }
}

/// Wrong credentials (an unknown access key, a wrong secret): every operation, and the bucket
/// check, fails with a permanent `PermissionDenied`, after exactly one request (the SDK does
/// not retry a 403), and the secret shows nowhere.
#[tokio::test]
async fn wrong_credentials_are_permission_denied_after_one_request() {
    let env = S3Env::local().await;
    let server = env.server().expect("a local server");
    let secret = "wrong-secret-do-not-print";
    let c = env.config();
    let cases = [
        ("unknown access key", "AKIDUNKNOWN", secret),
        ("wrong secret", c.access_key.as_str(), secret),
    ];
    for (case, access_key, secret_key) in cases {
        server.reset_requests();
        let err = S3Backend::compatible(&c.endpoint, &c.region, access_key, secret_key, &c.bucket)
            .check_bucket(true)
            .build()
            .await
            .expect_err("refused");
        assert!(
            matches!(err, S3Error::PermissionDenied { .. }),
            "{case}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(!err.is_transient());
        assert_eq!(
            server.requests().http_requests(),
            1,
            "{case}: one HeadBucket"
        );
        assert!(!everything(&err).contains(secret), "{case}");

        let tier = S3Backend::compatible(&c.endpoint, &c.region, access_key, secret_key, &c.bucket)
            .prefix(&unique_prefix("denied"))
            .build()
            .await
            .expect("no check");
        assert!(!format!("{tier:?}").contains(secret));
        let key = k("k");
        let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
        for op in ["get", "set", "delete", "clear"] {
            server.reset_requests();
            let result = match op {
                "get" => tier.get(&key).await.map(drop),
                "set" => tier.set(&key, value.clone()).await,
                "delete" => tier.delete(&key).await,
                _ => tier.clear().await,
            };
            let err = result.expect_err("refused");
            assert_eq!(
                err.kind(),
                ErrorKind::PermissionDenied,
                "{case} {op}: {err:?}"
            );
            assert!(!err.is_transient(), "{case} {op}");
            assert!(
                matches!(s3_error(&err), S3Error::PermissionDenied { .. }),
                "{case} {op}: {err:?}"
            );
            let requests = server.requests();
            assert_eq!(requests.http_requests(), 1, "{case} {op}: {requests}");
            assert_eq!(requests.rejected(), 1, "{case} {op}: {requests}");
            assert!(!everything(&err).contains(secret), "{case} {op}");
        }
    }
}

/// The `Debug` forms name the bucket, the endpoint and the settings, never the secret.
#[tokio::test]
async fn debug_shows_the_bucket_not_the_credentials() {
    let secret = "s3cret-do-not-print";
    let builder =
        S3Backend::compatible("http://127.0.0.1:9", "eu-west-1", "AKID", secret, "b").label("l3");
    assert!(!format!("{builder:?}").contains(secret));
    let tier = builder.build().await.expect("no request");
    let shown = format!("{tier:?}");
    assert!(!shown.contains(secret), "{shown}");
    for part in [
        "\"l3\"",
        "\"b\"",
        "http://127.0.0.1:9",
        "eu-west-1",
        "tierkit/",
    ] {
        assert!(shown.contains(part), "{part}: {shown}");
    }
    assert_eq!(tier.label(), "l3");
    assert!(!format!("{:?}", tier.client().config()).contains(secret));
}

/// The longest operation timeout is accepted: with `Duration::MAX` (the SDK's operation and
/// connect timeouts and its largest retry back-off follow it), the tier builds and answers,
/// without a panic.
#[tokio::test]
async fn the_longest_operation_timeout_is_accepted() {
    let env = S3Env::new().await;
    let prefix = unique_prefix("longest-timeout");
    let tier = env
        .builder(&prefix)
        .operation_timeout(Duration::MAX)
        .build()
        .await
        .expect("builds");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    tier.set(&k("k"), value.clone()).await.expect("set");
    assert_eq!(tier.get(&k("k")).await.expect("get"), Some(value));
    tier.delete(&k("k")).await.expect("delete");
}
