//! What the conformance suite cannot see: the Redis side of the tier. Refill from Redis into
//! moka with unchanged timestamps, the physical TTL (`PTTL`) set from `expires_at`, undecodable
//! values counted as misses, the key layout, value limits, namespace isolation of `clear` (in a
//! cluster too, across every primary), typed connection errors without credentials, and the
//! ownership of connections. (A server that stops answering is in `faults.rs`.)
//!
//! Servers come from the environment (see `tests/common/mod.rs`); tests that need one skip
//! without it, unless `TIERKIT_REQUIRE_SERVICES` is set. Raw commands go through a fred client
//! of the test's own. Nothing sleeps.

// Helpers outside `#[test]` functions fail the test that calls them with expect and panic,
// as the tests themselves may (see clippy.toml).
#![allow(clippy::expect_used, clippy::panic)]

mod common;

use std::error::Error as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    CLUSTER, STANDALONE, builder, count_keys_per_primary, free_port, k, raw_client,
    unique_namespace,
};
use tierkit_core::{
    Backend, BackendError, CacheKey, CacheValue, Clock, ErrorKind, ManualClock, Probe, Timestamp,
    envelope,
};
use tierkit_moka::MokaBackend;
use tierkit_policy::Composition;
use tierkit_redis::fred::interfaces::{ClientLike, KeysInterface};
use tierkit_redis::fred::types::{ClusterHash, CustomCommand, Value};
use tierkit_redis::{DecodeErrors, RedisBackend, RedisError};
use tierkit_services::{CommandCalls, RedisBinaries, RedisServer, RedisServerOptions, calls_since};

const HOUR: Duration = Duration::from_secs(3_600);

fn now_millis() -> i64 {
    i64::try_from(Clock::System.now().as_unix_millis()).expect("a time in range")
}

async fn exists(raw: &tierkit_redis::fred::clients::Client, key: Bytes) -> bool {
    let n: i64 = raw.exists(key).await.expect("EXISTS");
    n == 1
}

async fn pttl(raw: &tierkit_redis::fred::clients::Client, key: Bytes) -> i64 {
    raw.pttl(key).await.expect("PTTL")
}

// ---------------------------------------------------------------------------------------------
// Refill and physical expiry

/// A value written through moka → Redis, then removed from moka, is served from Redis and
/// refilled into moka with the same timestamps; Redis' `PTTL` agrees with `expires_at - now`.
#[tokio::test]
async fn refill_from_redis_keeps_the_timestamps_and_redis_expires_the_key() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let clock = ManualClock::starting_now();
    let l1 = MokaBackend::builder()
        .clock(Clock::from(clock.clone()))
        .build();
    let l2 = builder(&url, &unique_namespace("refill"))
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("the tier connects");
    let cache = Composition::builder(l1.clone(), l2.clone())
        .clock(Clock::from(clock.clone()))
        .build();

    let key = k("user:42");
    let value = CacheValue::with_ttl(&b"Ada"[..], clock.now(), Duration::from_secs(90))
        .with_stale_for(Duration::from_secs(30));
    cache.set(&key, value.clone()).await.expect("set");
    l1.delete(&key).await.expect("L1 delete");
    assert_eq!(l1.probe(&key), Probe::Miss, "L1 lost the entry");

    // Served from Redis (L1 is empty), and refilled.
    assert_eq!(cache.get(&key).await.expect("get"), Some(value.clone()));
    match l1.probe(&key) {
        Probe::Fresh(refilled) => {
            assert_eq!(refilled, value);
            assert_eq!(refilled.expires_at(), value.expires_at());
            assert_eq!(refilled.stale_at(), value.stale_at());
            assert_eq!(refilled.created_at(), value.created_at());
        }
        other => panic!("L1 was not refilled: {other:?}"),
    }

    let expected =
        i64::try_from(value.expires_at().as_unix_millis()).expect("in range") - now_millis();
    let ttl = pttl(&raw, l2.redis_key(&key)).await;
    assert!(
        (ttl - expected).abs() <= 1_000,
        "PTTL {ttl} ms, expires_at - now {expected} ms"
    );
    cache.clear().await.expect("clear");
}

/// `set_if_newer` is one script run atomically by the server: an absent key stores, an older
/// value loses to a newer one, a newer or equal one replaces it, and bytes that are not an
/// envelope (or a key of another type) are replaced. Each call is one `EVALSHA`; a server
/// without the script cached (new, restarted, `SCRIPT FLUSH`) answers `NOSCRIPT` once and
/// gets one `EVAL`, which caches it. The stored key expires at `expires_at`, as after `set`.
#[tokio::test]
async fn set_if_newer_is_one_script_that_never_replaces_a_newer_value() {
    let Some(binaries) =
        RedisBinaries::for_tests().expect("redis-server and redis-cli (TIERKIT_REQUIRE_SERVICES)")
    else {
        return;
    };
    let server = RedisServer::start(&binaries, RedisServerOptions::new()).expect("a server");
    let raw = raw_client(&server.url()).await;
    let tier = builder(&server.url(), &unique_namespace("if-newer"))
        .build()
        .await
        .expect("the tier connects");
    let key = k("if-newer");
    let redis_key = tier.redis_key(&key);
    let now = Clock::System.now();
    let older = CacheValue::with_ttl(
        &b"older"[..],
        now.saturating_sub(Duration::from_secs(1)),
        HOUR,
    );
    let newer = CacheValue::with_ttl(&b"newer"[..], now, HOUR);
    let same_instant = CacheValue::with_ttl(&b"same instant"[..], now, HOUR);

    let before = server.command_calls().expect("INFO commandstats");
    tier.set_if_newer(&key, newer.clone())
        .await
        .expect("on an absent key");
    let first = calls_since(&before, &server.command_calls().expect("INFO commandstats"));
    tier.set_if_newer(&key, older.clone())
        .await
        .expect("an older value");
    assert_eq!(tier.get(&key).await.expect("get"), Some(newer.clone()));
    tier.set_if_newer(&key, same_instant.clone())
        .await
        .expect("an equal created_at");
    assert_eq!(tier.get(&key).await.expect("get"), Some(same_instant));
    let all = calls_since(&before, &server.command_calls().expect("INFO commandstats"));
    assert_eq!(
        first,
        commands(&[("evalsha", 1), ("eval", 1), ("getrange", 1), ("set", 1)]),
        "the first call: NOSCRIPT, then EVAL; the script's own commands are counted too: \
         GETRANGE of the header (nothing there) and SET"
    );
    assert_eq!(
        all,
        commands(&[
            ("evalsha", 3),
            ("eval", 1),
            ("getrange", 3),
            ("strlen", 2),
            ("set", 2),
            ("get", 2)
        ]),
        "three calls (one EVALSHA each; each reads the header, and the length of an envelope \
         found; the older value writes nothing) and the two reads of the test"
    );
    let ttl = pttl(&raw, redis_key.clone()).await;
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "PTTL {ttl} ms follows expires_at"
    );

    // Bytes that are not an envelope, and a key of another type, are replaced.
    let _: () = raw
        .set(redis_key.clone(), "not an envelope", None, None, false)
        .await
        .expect("SET");
    tier.set_if_newer(&key, older.clone())
        .await
        .expect("over foreign bytes");
    assert_eq!(tier.get(&key).await.expect("get"), Some(older.clone()));
    let _: () = raw.del(redis_key.clone()).await.expect("DEL");
    let _: () = raw
        .custom(
            CustomCommand::new_static("HSET", ClusterHash::FirstKey, false),
            vec![Value::Bytes(redis_key.clone()), "f".into(), "v".into()],
        )
        .await
        .expect("HSET");
    tier.set_if_newer(&key, older.clone())
        .await
        .expect("over a hash");
    assert_eq!(tier.get(&key).await.expect("get"), Some(older));
}

fn commands(pairs: &[(&str, u64)]) -> CommandCalls {
    pairs
        .iter()
        .map(|(name, calls)| ((*name).to_owned(), *calls))
        .collect()
}

/// `SET ... PXAT expires_at`: the key's `PTTL` follows the value's `expires_at` (replaced on
/// overwrite), no expiry past the year 9999, and an expired value removes the key.
#[tokio::test]
async fn the_physical_ttl_follows_expires_at() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let tier = builder(&url, &unique_namespace("pttl"))
        .build()
        .await
        .expect("the tier connects");
    let key = k("ttl");
    let redis_key = tier.redis_key(&key);
    let now = Clock::System.now();

    let long = CacheValue::with_ttl(&b"long"[..], now, Duration::from_secs(600))
        .with_stale_for(Duration::from_secs(60));
    tier.set(&key, long.clone()).await.expect("set");
    let expected =
        i64::try_from(long.expires_at().as_unix_millis()).expect("in range") - now_millis();
    let ttl = pttl(&raw, redis_key.clone()).await;
    assert!(
        (ttl - expected).abs() <= 1_000,
        "PTTL {ttl}, expected {expected}"
    );

    // An overwrite replaces the expiry, shorter or longer.
    let short = CacheValue::with_ttl(&b"short"[..], now, Duration::from_secs(20));
    tier.set(&key, short).await.expect("set");
    let ttl = pttl(&raw, redis_key.clone()).await;
    assert!((19_000..=20_000).contains(&ttl), "PTTL {ttl}");

    // The last instant PXAT can carry (9999-12-31T23:59:59.999Z) is set as is...
    let year_9999 = Timestamp::from_unix_millis(253_402_300_799_999);
    let far = CacheValue::new(&b"far"[..], now, now, year_9999).expect("ordered");
    tier.set(&key, far.clone()).await.expect("set");
    let ttl = pttl(&raw, redis_key.clone()).await;
    assert!(ttl > 200_000_000_000_000, "PTTL {ttl}");
    assert_eq!(tier.get(&key).await.expect("get"), Some(far));

    // ... later than that, the key has no expiry at all.
    let never = CacheValue::with_ttl(&b"never"[..], now, Duration::MAX);
    assert_eq!(never.expires_at(), Timestamp::MAX);
    tier.set(&key, never.clone()).await.expect("set");
    assert_eq!(pttl(&raw, redis_key.clone()).await, -1, "no expiry");
    assert_eq!(tier.get(&key).await.expect("get"), Some(never));

    // An expired value removes the key.
    let expired = CacheValue::with_ttl(&b"gone"[..], now, Duration::ZERO);
    tier.set(&key, expired).await.expect("set");
    assert!(
        !exists(&raw, redis_key.clone()).await,
        "the key was removed"
    );
    assert_eq!(pttl(&raw, redis_key).await, -2, "no such key");
    assert_eq!(tier.get(&key).await.expect("get"), None);
}

/// A value still in Redis but expired by the tier's clock is a miss, counted.
#[tokio::test]
async fn values_expired_by_the_tier_clock_are_misses() {
    let url = require_server!(STANDALONE);
    let clock = ManualClock::starting_now();
    let tier = builder(&url, &unique_namespace("clock"))
        .clock(Clock::from(clock.clone()))
        .build()
        .await
        .expect("the tier connects");
    let key = k("k");
    let value = CacheValue::with_ttl(&b"v"[..], clock.now(), Duration::from_secs(30));
    tier.set(&key, value.clone()).await.expect("set");
    clock.advance(Duration::from_millis(29_999));
    assert_eq!(tier.get(&key).await.expect("get"), Some(value));
    assert_eq!(tier.stats().expired_reads, 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(tier.get(&key).await.expect("get"), None);
    assert_eq!(tier.stats().expired_reads, 1);
    tier.delete(&key).await.expect("delete");
}

// ---------------------------------------------------------------------------------------------
// Undecodable values

/// Bytes that are not an envelope (foreign text, a truncated or altered envelope, too short,
/// another Redis type) are misses, each counted exactly under its reason; a composition over
/// the tier answers a miss, not an error.
#[tokio::test]
async fn undecodable_values_are_counted_misses() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let tier = builder(&url, &unique_namespace("corrupt"))
        .build()
        .await
        .expect("the tier connects");
    let now = Clock::System.now();
    let good = CacheValue::with_ttl(vec![7u8; 64], now, HOUR);
    let envelope = envelope::encode(&good, &k("garbage"));

    let truncated = envelope.slice(..envelope.len() - 5);
    let mut flipped = envelope.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let cases: [(&str, Bytes, &str); 4] = [
        (
            "garbage",
            Bytes::from_static(b"this is plain text written by someone else, not an envelope"),
            "bad_magic",
        ),
        ("truncated", truncated, "length_mismatch"),
        ("flipped", Bytes::from(flipped), "checksum_mismatch"),
        ("short", Bytes::from_static(b"x"), "too_short"),
    ];
    for (name, bytes, _) in &cases {
        let _: () = raw
            .set(tier.redis_key(&k(name)), bytes.clone(), None, None, false)
            .await
            .expect("raw SET");
    }
    // A list under the tier's key.
    let list_key = k("a list");
    let _: i64 = raw
        .custom(
            CustomCommand::new_static("RPUSH", ClusterHash::FirstKey, false),
            vec![Value::Bytes(tier.redis_key(&list_key)), Value::from("item")],
        )
        .await
        .expect("raw RPUSH");

    for (name, _, _) in &cases {
        assert_eq!(
            tier.get(&k(name)).await.expect("a miss, not an error"),
            None,
            "{name}"
        );
    }
    assert_eq!(
        tier.get(&list_key).await.expect("a miss, not an error"),
        None
    );

    let decode_errors = tier.stats().decode_errors;
    assert_eq!(decode_errors.total(), 5, "{decode_errors:?}");
    for (name, _, reason) in &cases {
        assert_eq!(decode_errors.get(reason), 1, "{name}: {decode_errors:?}");
    }
    assert_eq!(decode_errors.get("wrong_type"), 1);
    for reason in DecodeErrors::REASONS {
        let expected =
            u64::from(cases.iter().any(|(_, _, r)| r == reason) || *reason == "wrong_type");
        assert_eq!(decode_errors.get(reason), expected, "{reason}");
    }

    // Through a composition: a miss, not an error, and counted once more.
    let cache = Composition::new(MokaBackend::new(100), tier.clone());
    assert_eq!(cache.get(&k("garbage")).await.expect("not an error"), None);
    assert_eq!(tier.stats().decode_errors.get("bad_magic"), 2);

    // A set overwrites the bad bytes (and the list).
    tier.set(&k("garbage"), good.clone()).await.expect("set");
    tier.set(&list_key, good.clone())
        .await
        .expect("set over a list");
    assert_eq!(
        tier.get(&k("garbage")).await.expect("get"),
        Some(good.clone())
    );
    assert_eq!(tier.get(&list_key).await.expect("get"), Some(good));
    assert_eq!(tier.stats().decode_errors.total(), 6);
    tier.clear().await.expect("clear");
}

// ---------------------------------------------------------------------------------------------
// Keys and values

/// Keys of 1 byte, with NUL and CR LF, Unicode, and exactly `CacheKey::MAX_LEN` bytes round
/// trip, stored under exactly `namespace:` + the key's bytes; a longer key is refused when it is
/// built.
#[tokio::test]
async fn keys_of_every_shape_are_stored_under_the_namespace() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let namespace = unique_namespace("keys");
    let tier = builder(&url, &namespace)
        .build()
        .await
        .expect("the tier connects");
    let now = Clock::System.now();
    let texts = [
        "k".to_owned(),
        "nul\0inside\r\nand crlf".to_owned(),
        "ключ 🔑 鍵".to_owned(),
        "{tag}:suffix".to_owned(),
        "x".repeat(CacheKey::MAX_LEN),
    ];
    for (i, text) in texts.iter().enumerate() {
        let key = k(text);
        let value = CacheValue::with_ttl(format!("value {i}").into_bytes(), now, HOUR);
        tier.set(&key, value.clone()).await.expect("set");
        assert_eq!(tier.get(&key).await.expect("get"), Some(value.clone()));

        let mut expected_key = format!("{namespace}:").into_bytes();
        expected_key.extend_from_slice(text.as_bytes());
        assert_eq!(&tier.redis_key(&key)[..], &expected_key[..]);
        let stored: Option<Bytes> = raw.get(Bytes::from(expected_key)).await.expect("raw GET");
        assert_eq!(stored, Some(envelope::encode(&value, &key)), "key {i}");
    }
    let too_long = CacheKey::new("x".repeat(CacheKey::MAX_LEN + 1)).expect_err("too long");
    assert_eq!(too_long.kind(), ErrorKind::InvalidKey);
    assert_eq!(
        count_keys_per_primary(&raw, &format!("{namespace}:*")).await,
        vec![texts.len()]
    );
    tier.clear().await.expect("clear");
}

/// Empty, 1-byte and 1 MiB payloads round trip; a payload over `max_value_bytes` is refused as
/// invalid and nothing is written (an absent key stays absent, a present one keeps its value).
#[tokio::test]
async fn values_round_trip_up_to_the_size_limit() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let namespace = unique_namespace("values");
    let tier = builder(&url, &namespace)
        .max_value_bytes(1 << 20)
        .build()
        .await
        .expect("the tier connects");
    assert_eq!(tier.max_value_bytes(), 1 << 20);
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

    let too_big = CacheValue::with_ttl(vec![1u8; (1 << 20) + 1], now, HOUR);
    let absent = k("too big");
    let err = tier
        .set(&absent, too_big.clone())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert!(!err.is_transient());
    assert_eq!(err.tier_label(), Some("redis"));
    assert!(
        !exists(&raw, tier.redis_key(&absent)).await,
        "nothing written"
    );

    let present = k("one");
    let err = tier.set(&present, too_big).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert_eq!(
        tier.get(&present)
            .await
            .expect("get")
            .map(|v| v.payload().clone()),
        Some(Bytes::from_static(&[0xff])),
        "the previous value stays"
    );
    tier.clear().await.expect("clear");
}

// ---------------------------------------------------------------------------------------------
// clear

/// Two namespaces on one server, one with glob characters: `clear` of one removes all its keys
/// and nothing else, not the other namespace's keys (same key names), not raw keys outside any
/// namespace, not keys its namespace would match if it were not escaped.
#[tokio::test]
async fn clear_stays_inside_its_namespace() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let base = unique_namespace("clear");
    let globby = format!("{base}-g*?[ab]\\");
    let other = format!("{base}-other");
    let a = builder(&url, &globby).build().await.expect("connects");
    let b = builder(&url, &other).build().await.expect("connects");
    let now = Clock::System.now();
    let value =
        |side: &str, i: usize| CacheValue::with_ttl(format!("{side} {i}").into_bytes(), now, HOUR);
    let keys: Vec<CacheKey> = (0..1_200).map(|i| k(&format!("item:{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        a.set(key, value("a", i)).await.expect("set a");
        if i < 50 {
            b.set(key, value("b", i)).await.expect("set b");
        }
    }
    // Raw keys the unescaped pattern `<base>-g*?[ab]\:*` would match, and near misses of the
    // prefix.
    let outside: Vec<Bytes> = [
        format!("{base}-gXYZ?a\\:item:0"),
        format!("{base}-g*?a\\:item:0"),
        format!("{base}-g*?[ab]\\"),
        format!("{base}-g*?[ab]\\-suffix:item:0"),
        format!("{base}-g*?[ab]:item:0"),
        format!("{base}-other:raw but in b"),
    ]
    .into_iter()
    .map(Bytes::from)
    .collect();
    for key in &outside {
        let _: () = raw
            .set(key.clone(), "raw", None, None, false)
            .await
            .expect("raw SET");
    }
    assert_eq!(
        count_keys_per_primary(&raw, &format!("{base}*")).await,
        vec![1_200 + 50 + 6]
    );

    a.clear().await.expect("clear");

    for key in &keys {
        assert_eq!(a.get(key).await.expect("get"), None, "{key}");
    }
    for (i, key) in keys.iter().take(50).enumerate() {
        assert_eq!(b.get(key).await.expect("get"), Some(value("b", i)), "{key}");
    }
    for key in &outside {
        assert!(exists(&raw, key.clone()).await, "{key:?} survived");
    }
    assert_eq!(
        count_keys_per_primary(&raw, &format!("{base}*")).await,
        vec![50 + 6]
    );

    // The cleared tier is still usable; clearing an empty namespace is fine.
    a.clear().await.expect("clear again");
    a.set(&keys[0], value("a2", 0))
        .await
        .expect("set after clear");
    assert_eq!(a.get(&keys[0]).await.expect("get"), Some(value("a2", 0)));

    a.clear().await.expect("clear");
    b.clear().await.expect("clear");
    let _: i64 = raw.del(outside).await.expect("raw DEL");
    assert_eq!(
        count_keys_per_primary(&raw, &format!("{base}*")).await,
        vec![0]
    );
}

/// In a cluster, `clear` removes the namespace's keys from every primary (hundreds of keys
/// over many slots, hash-tagged keys included) and leaves another namespace alone.
#[tokio::test]
async fn clear_in_a_cluster_reaches_every_primary() {
    let url = require_server!(CLUSTER);
    let raw = raw_client(&url).await;
    assert!(raw.is_clustered());
    let base = unique_namespace("cluster-clear");
    let (ns_a, ns_b) = (format!("{base}-a"), format!("{base}-b"));
    let a = builder(&url, &ns_a).build().await.expect("connects");
    let b = builder(&url, &ns_b).build().await.expect("connects");
    assert!(a.is_clustered());
    let now = Clock::System.now();
    let value = CacheValue::with_ttl(&b"v"[..], now, HOUR);
    let mut keys: Vec<CacheKey> = (0..600).map(|i| k(&format!("key:{i}"))).collect();
    keys.extend((0..20).map(|i| k(&format!("{{user{}}}:field:{i}", i % 3))));
    let sets = keys.iter().map(|key| a.set(key, value.clone()));
    for result in futures_util::future::join_all(sets).await {
        result.expect("set a");
    }
    for key in keys.iter().take(20) {
        b.set(key, value.clone()).await.expect("set b");
    }

    let before = count_keys_per_primary(&raw, &format!("{ns_a}:*")).await;
    assert_eq!(before.len(), 3, "three primaries: {before:?}");
    assert_eq!(before.iter().sum::<usize>(), keys.len());
    assert!(
        before.iter().all(|n| *n > 0),
        "keys on every primary: {before:?}"
    );

    a.clear().await.expect("clear");

    assert_eq!(
        count_keys_per_primary(&raw, &format!("{ns_a}:*")).await,
        vec![0, 0, 0]
    );
    for key in &keys {
        assert_eq!(a.get(key).await.expect("get"), None, "{key}");
    }
    let kept = count_keys_per_primary(&raw, &format!("{ns_b}:*")).await;
    assert_eq!(kept.iter().sum::<usize>(), 20, "{kept:?}");
    b.clear().await.expect("clear");
    assert_eq!(
        count_keys_per_primary(&raw, &format!("{ns_b}:*")).await,
        vec![0, 0, 0]
    );
}

/// A namespace and a namespace nested under it (`base` and `base:t1`) never share a Redis key:
/// `t1:x` of the first and `x` of the second are two keys, each reading its own value.
#[tokio::test]
async fn a_nested_namespace_never_shares_a_redis_key_with_its_parent() {
    let url = require_server!(STANDALONE);
    let base = unique_namespace("alias");
    let parent = builder(&url, &base).build().await.expect("connects");
    let nested = builder(&url, &format!("{base}:t1"))
        .build()
        .await
        .expect("connects");
    let now = Clock::System.now();
    let of_parent = CacheValue::with_ttl(&b"parent"[..], now, HOUR);
    let of_nested = CacheValue::with_ttl(&b"nested"[..], now, HOUR);
    let (parent_key, nested_key) = (k("t1:x"), k("x"));
    assert_ne!(parent.redis_key(&parent_key), nested.redis_key(&nested_key));

    parent
        .set(&parent_key, of_parent.clone())
        .await
        .expect("set");
    nested
        .set(&nested_key, of_nested.clone())
        .await
        .expect("set");
    assert_eq!(parent.get(&parent_key).await.expect("get"), Some(of_parent));
    assert_eq!(nested.get(&nested_key).await.expect("get"), Some(of_nested));
    assert_eq!(parent.stats().decode_errors.total(), 0);
    assert_eq!(nested.stats().decode_errors.total(), 0);
    parent.clear().await.expect("clear");
    nested.clear().await.expect("clear");
}

/// A value a composition wrote for one key, copied byte for byte under another key's Redis
/// name, is a miss counted as `key_mismatch`, never the first key's value.
#[tokio::test]
async fn a_value_copied_under_another_keys_name_is_a_counted_miss() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let tier = builder(&url, &unique_namespace("copied"))
        .build()
        .await
        .expect("connects");
    let cache = Composition::new(MokaBackend::new(100), tier.clone());
    let (written, copied) = (k("user:1"), k("user:2"));
    let value = CacheValue::with_ttl(&b"user one"[..], Clock::System.now(), HOUR);
    cache.set(&written, value.clone()).await.expect("set");

    let bytes: Bytes = raw.get(tier.redis_key(&written)).await.expect("raw GET");
    let _: () = raw
        .set(tier.redis_key(&copied), bytes, None, None, false)
        .await
        .expect("raw SET");

    assert_eq!(tier.get(&copied).await.expect("a miss, not an error"), None);
    assert_eq!(
        cache.get(&copied).await.expect("a miss, not an error"),
        None
    );
    let decode_errors = tier.stats().decode_errors;
    assert_eq!(decode_errors.get("key_mismatch"), 2, "{decode_errors:?}");
    assert_eq!(decode_errors.total(), 2, "{decode_errors:?}");
    assert_eq!(tier.get(&written).await.expect("get"), Some(value));
    tier.clear().await.expect("clear");
}

/// Seeds a namespace, a sibling whose name extends it (`base-sibling`) and a namespace nested
/// under it (`base:nested`), each with its own number of keys; `clear` of the first removes
/// exactly its keys: the count of keys under `base*` drops by that many and every key of the
/// other two still reads its value.
async fn clear_removes_exactly_its_own_namespace_on(url: &str) {
    let raw = raw_client(url).await;
    let base = unique_namespace("exact-clear");
    let own = builder(url, &base).build().await.expect("connects");
    let sibling = builder(url, &format!("{base}-sibling"))
        .build()
        .await
        .expect("connects");
    let nested = builder(url, &format!("{base}:nested"))
        .build()
        .await
        .expect("connects");
    let now = Clock::System.now();
    let value =
        |name: &str, i: usize| CacheValue::with_ttl(format!("{name} {i}").into_bytes(), now, HOUR);
    let keys = |n: usize| -> Vec<CacheKey> { (0..n).map(|i| k(&format!("nested:{i}"))).collect() };
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
    let count = || async {
        count_keys_per_primary(&raw, &format!("{base}*"))
            .await
            .iter()
            .sum::<usize>()
    };
    assert_eq!(count().await, 60 + 25 + 15);

    own.clear().await.expect("clear");

    assert_eq!(count().await, 25 + 15);
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
    assert_eq!(count().await, 0);
}

#[tokio::test]
async fn clear_removes_exactly_its_own_namespace() {
    let url = require_server!(STANDALONE);
    clear_removes_exactly_its_own_namespace_on(&url).await;
}

#[tokio::test]
async fn clear_in_a_cluster_removes_exactly_its_own_namespace() {
    let url = require_server!(CLUSTER);
    clear_removes_exactly_its_own_namespace_on(&url).await;
}

// ---------------------------------------------------------------------------------------------
// Connecting

/// A free port: `build` fails within the connect timeout with a typed, transient `Connection`
/// error naming the address, and no password anywhere (message, `Debug`, sources).
#[tokio::test]
async fn an_unreachable_server_is_a_typed_error_without_the_password() {
    let port = free_port().await;
    let password = "hunter2-do-not-print";
    let connect_timeout = Duration::from_secs(2);
    let urls = [
        format!("redis://tierkit:{password}@127.0.0.1:{port}/0"),
        format!("redis-cluster://:{password}@127.0.0.1:{port}?node=127.0.0.1:{port}"),
    ];
    for url in urls {
        let started = Instant::now();
        let err = RedisBackend::builder(url.as_str())
            .connect_timeout(connect_timeout)
            .build()
            .await
            .expect_err("nothing listens there");
        assert!(
            started.elapsed() <= connect_timeout + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
        assert!(err.is_transient());
        assert!(
            matches!(
                err,
                RedisError::Connect { .. } | RedisError::ConnectTimeout { .. }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        let mut everything = format!("{message} {err:?}");
        let mut source = err.source();
        while let Some(s) = source {
            everything.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(!everything.contains(password), "{everything}");

        let backend_error = BackendError::from(err);
        assert_eq!(backend_error.kind(), ErrorKind::Connection);
        assert!(backend_error.is_transient());
        assert!(!format!("{backend_error} {backend_error:?}").contains(password));
    }
}

/// Credentials the server refuses: a permanent `PermissionDenied` at build, without the
/// password in the message.
#[tokio::test]
async fn refused_credentials_are_permission_denied() {
    let url = require_server!(STANDALONE);
    let Some(address) = common::plain_address(&url) else {
        return;
    };
    let password = "wrong-secret-do-not-print";
    let err = RedisBackend::builder(format!("redis://nobody:{password}@{address}"))
        .build()
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err:?}");
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(password), "{shown}");
    assert!(shown.contains(address.trim_end_matches('/')), "{shown}");
}

/// Settings that cannot work are refused before connecting.
#[tokio::test]
async fn invalid_settings_are_refused_before_connecting() {
    let unreachable = "redis://127.0.0.1:1";
    for namespace in ["{tenant}", "a}b", ""] {
        let err = RedisBackend::builder(unreachable)
            .namespace(namespace)
            .build()
            .await
            .expect_err("refused");
        assert!(
            matches!(err, RedisError::InvalidNamespace { .. }),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
    let zero = [
        RedisBackend::builder(unreachable).command_timeout(Duration::ZERO),
        RedisBackend::builder(unreachable).connect_timeout(Duration::ZERO),
        RedisBackend::builder(unreachable).pool_size(0),
    ];
    for builder in zero {
        let err = builder.build().await.expect_err("refused");
        assert!(matches!(err, RedisError::InvalidConfig { .. }), "{err:?}");
    }
    let err = RedisBackend::builder("redis://:pw-xyz@127.0.0.1:99999")
        .build()
        .await
        .expect_err("bad port");
    assert!(matches!(err, RedisError::InvalidUrl { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("pw-xyz"));

    #[cfg(not(feature = "tls"))]
    {
        let err = RedisBackend::builder("rediss://:pw-xyz@127.0.0.1:6380")
            .build()
            .await
            .expect_err("no TLS in this build");
        assert!(matches!(err, RedisError::TlsNotEnabled { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(!format!("{err} {err:?}").contains("pw-xyz"));
    }
}

/// With the `tls` feature, a `rediss://` URL speaks TLS: against a server that does not (the
/// plaintext standalone server), the handshake fails with a typed error within the connect
/// timeout (and rustls finds its crypto provider: no panic).
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_urls_speak_tls() {
    let url = require_server!(STANDALONE);
    let Some(address) = common::plain_address(&url) else {
        return;
    };
    let connect_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = RedisBackend::builder(format!("rediss://{address}"))
        .connect_timeout(connect_timeout)
        .build()
        .await
        .expect_err("the server does not speak TLS");
    assert!(
        started.elapsed() <= connect_timeout + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
    assert!(
        matches!(
            err,
            RedisError::Connect { .. } | RedisError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A tier built on the application's client uses it and never closes it; a tier that owns its
/// connections closes them on `shutdown`, after which operations fail permanently.
#[tokio::test]
async fn connections_are_closed_only_by_their_owner() {
    let url = require_server!(STANDALONE);
    let raw = raw_client(&url).await;
    let namespace = unique_namespace("owner");
    let borrowed = RedisBackend::builder(raw.clone())
        .namespace(&namespace)
        .build()
        .await
        .expect("uses the connected client");
    let key = k("k");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    borrowed.set(&key, value.clone()).await.expect("set");
    borrowed.shutdown().await;
    drop(borrowed);
    assert!(raw.is_connected(), "the application's client stays open");
    assert!(exists(&raw, Bytes::from(format!("{namespace}:k"))).await);

    let owned = builder(&url, &namespace)
        .pool_size(3)
        .build()
        .await
        .expect("connects");
    assert_eq!(owned.clients().len(), 3);
    for _ in 0..6 {
        assert_eq!(owned.get(&key).await.expect("get"), Some(value.clone()));
    }
    let client = owned.clients()[0].clone();
    let clone = owned.clone();
    owned.shutdown().await;
    assert!(
        !client.is_connected(),
        "shutdown closed the tier's connections"
    );
    let err = clone.get(&key).await.expect_err("shut down");
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(!err.is_transient());
    owned.shutdown().await; // again: nothing happens

    let _: i64 = raw.del(format!("{namespace}:k")).await.expect("raw DEL");
}

/// The `Debug` form of a built tier names its servers and settings and never its password.
#[tokio::test]
async fn debug_shows_the_servers_not_the_credentials() {
    let url = require_server!(STANDALONE);
    let tier = builder(&url, &unique_namespace("debug"))
        .label("l2")
        .build()
        .await
        .expect("connects");
    let shown = format!("{tier:?}");
    let address = url
        .rsplit('@')
        .next()
        .unwrap_or(&url)
        .trim_start_matches("redis://");
    assert!(shown.contains(address.trim_end_matches('/')), "{shown}");
    assert!(shown.contains("\"l2\""), "{shown}");
    assert_eq!(tier.label(), "l2");
}

/// The longest timeouts are accepted: with `Duration::MAX` as the command and connect
/// timeouts (and the unresponsive-connection check derived from them), the tier connects and
/// answers, without a panic.
#[tokio::test]
async fn the_longest_timeouts_are_accepted() {
    let url = require_server!(STANDALONE);
    let namespace = unique_namespace("longest-timeouts");
    let tier = RedisBackend::builder(&url)
        .namespace(&namespace)
        .command_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .build()
        .await
        .expect("the tier connects");
    let value = CacheValue::with_ttl(&b"v"[..], Clock::System.now(), HOUR);
    tier.set(&k("k"), value.clone()).await.expect("set");
    assert_eq!(tier.get(&k("k")).await.expect("get"), Some(value));
    tier.delete(&k("k")).await.expect("delete");
}
