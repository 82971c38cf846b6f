//! Read-through behaviours 51-57 through the cache: L1 holds decoded values, one encode per
//! flight, undecodable entries are counted misses (garbage, truncation, another codec, another
//! key, a changed struct), encode failures, compression and the payload cap. The frame format
//! itself is covered by `frame.rs`; these tests go through `Cache` and its tiers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use support::{
    Calls, Gate, MINUTE, Stack, assert_one_shared_value, counting, gated, instant, key, settle,
    spawn_fetches,
};
use tierkit_cache::codec::{Codec, CodecError, Postcard};
use tierkit_cache::frame::{HEADER_LEN, decode_frame, encode_frame};
use tierkit_cache::{CacheError, Compression, FetchOptions, FrameErrorReason, LocalTier, Source};
use tierkit_core::{CacheKey, CacheValue, Op};
use tierkit_testkit::{Fault, FaultyBackend, MemoryBackend};

const L2: usize = 0;
const L3: usize = 1;

/// Byte offsets in a frame (see the layout in `frame.rs`).
const CODEC_BYTE: usize = 4;
const COMPRESSION_BYTE: usize = 5;

fn stored_len(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[6..10].try_into().unwrap()) as usize
}

fn decoded_len(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[10..14].try_into().unwrap()) as usize
}

/// A postcard frame of `value` for `k`, uncompressed.
fn frame_of<V: Serialize + serde::de::DeserializeOwned + 'static>(
    k: &CacheKey,
    value: &V,
) -> Bytes {
    encode_frame(k, &Postcard, &Compression::none(), value).unwrap()
}

/// `payload` as a remote tier stores it: created now, fresh for a minute.
fn stored<V>(stack: &Stack<V>, payload: impl Into<Bytes>) -> CacheValue {
    CacheValue::with_ttl(payload, stack.clock.now(), MINUTE)
}

/// The payload a remote tier holds for `k` (panics when it holds nothing).
fn payload(tier: &MemoryBackend, k: &CacheKey) -> Bytes {
    tier.peek(k)
        .expect("the tier holds the key")
        .payload()
        .clone()
}

/// Decodes what `tier` holds for `k` with postcard.
fn decoded<V: Serialize + serde::de::DeserializeOwned + 'static>(
    tier: &MemoryBackend,
    k: &CacheKey,
) -> V {
    decode_frame(k, &Postcard, &Compression::none(), &payload(tier, k)).unwrap()
}

/// Asserts that `error` is a decode error of `tier` for `reason`.
fn assert_decode_error(error: CacheError, tier: Source, reason: FrameErrorReason) {
    match error {
        CacheError::Decode { tier: got, source } => {
            assert_eq!((got, source.reason()), (tier, reason));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// A compressible text of `len` bytes.
fn text(len: usize) -> String {
    "the quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

/// `len` bytes of deterministic noise (xorshift), which no algorithm compresses.
#[cfg(feature = "zstd")]
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    id: u64,
    name: String,
}

/// UserV1 with fields added: postcard cannot read a v1 frame as v2 (it runs out of bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    id: u64,
    name: String,
    email: String,
    age: u32,
}

fn ada_v1() -> UserV1 {
    UserV1 {
        id: 42,
        name: "Ada".to_owned(),
    }
}

fn ada_v2() -> UserV2 {
    UserV2 {
        id: 42,
        name: "Ada".to_owned(),
        email: "ada@example.com".to_owned(),
        age: 36,
    }
}

// ---------------------------------------------------------------------------------------------
// 51. L1 holds decoded values.
// ---------------------------------------------------------------------------------------------

/// Behaviour 51: L1 holds decoded values: once an L2 hit filled L1, every further hit (get
/// and get_or_fetch) performs zero decode calls.
#[tokio::test(start_paused = true)]
async fn b51_an_l1_hit_performs_no_decode() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let k = key("user:1");
    stack
        .l2
        .insert_raw(k.clone(), stored(&stack, frame_of(&k, &"Ada".to_owned())));

    let first = cache.get(&k).await.unwrap().unwrap();
    assert_eq!((first.source(), first.as_str()), (Source::L2, "Ada"));
    assert_eq!(stack.codec.decodes(), 1);

    let calls = Calls::default();
    for _ in 0..100 {
        let hit = cache.get(&k).await.unwrap().unwrap();
        assert_eq!(hit.source(), Source::L1);
        assert!(
            Arc::ptr_eq(hit.value(), first.value()),
            "L1 hands out the decoded Arc"
        );
        let hit = cache
            .get_or_fetch(&k, counting(&calls, "loader".to_owned()))
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::L1);
        assert!(cache.try_get_local(&k).is_some());
    }
    assert_eq!(stack.codec.decodes(), 1, "no decode on the L1 hit path");
    assert_eq!(cache.stats().decodes, [1, 0]);
    assert_eq!(calls.get(), 0);
    // A value stored by the loader or by `set` is never decoded either.
    cache.set("user:2", "Bob".to_owned()).await.unwrap();
    cache
        .get_or_fetch("user:3", counting(&calls, "Eve".to_owned()))
        .await
        .unwrap();
    for name in ["user:2", "user:3"] {
        assert_eq!(cache.get(name).await.unwrap().unwrap().source(), Source::L1);
    }
    assert_eq!(stack.codec.decodes(), 1);
}

/// Behaviour 51: an L3 hit is decoded exactly once for its flight, however many callers wait
/// on it, and the L2 refill reuses L3's bytes (no encode).
#[tokio::test(start_paused = true)]
async fn b51_an_l3_hit_decodes_once_per_flight_not_once_per_waiter() {
    let stack = Stack::<String>::new();
    let l3 = FaultyBackend::new(stack.l3.clone());
    // Hold the flight's L3 read until every caller has joined it.
    l3.push(Op::Get, Fault::Delay(Duration::from_millis(100)));
    let cache = stack.builder().l2(stack.l2.clone()).l3(l3).build();
    let k = key("user:1");
    let bytes = frame_of(&k, &"Ada".to_owned());
    stack
        .l3
        .insert_raw(k.clone(), stored(&stack, bytes.clone()));

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("user:1").await })
        })
        .collect();
    let mut hits = Vec::new();
    for task in tasks {
        hits.push(task.await.unwrap().unwrap().unwrap());
    }
    settle().await;

    let stats = cache.stats();
    assert_eq!(
        (stats.flights, stats.coalesced),
        (1, 49),
        "every caller waited on one flight"
    );
    assert_eq!(stack.codec.decodes(), 1, "one decode for 50 waiters");
    assert_eq!(stats.decodes, [0, 1]);
    assert!(hits.iter().all(|hit| hit.source() == Source::L3));
    assert_one_shared_value(&hits);
    assert_eq!(
        stack.codec.encodes(),
        0,
        "the refill reuses the stored bytes"
    );
    assert_eq!(payload(&stack.l2, &k), bytes, "L2 refilled with L3's bytes");
    assert_eq!(stack.l1.inserts(), 1);
}

// ---------------------------------------------------------------------------------------------
// 52. Encode once.
// ---------------------------------------------------------------------------------------------

/// Behaviour 52: a loaded value is encoded exactly once per flight (20 waiters), and L2 and L3
/// receive the same bytes and timestamps; a `set` also encodes once for both tiers.
#[tokio::test(start_paused = true)]
async fn b52_a_loaded_value_is_encoded_once_and_the_same_bytes_reach_l2_and_l3() {
    let stack = Stack::<UserV1>::new();
    let cache = stack.cache();
    let calls = Calls::default();
    let gate = Gate::closed();
    let tasks = spawn_fetches(&cache, "user:42", 20, || gated(&calls, &gate, ada_v1()));
    settle().await;
    gate.open();
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap(), ada_v1());
    }
    settle().await;

    let k = key("user:42");
    assert_eq!(calls.get(), 1);
    assert_eq!(stack.codec.encodes(), 1, "one encode per flight");
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    let (in_l2, in_l3) = (stack.l2.peek(&k).unwrap(), stack.l3.peek(&k).unwrap());
    assert_eq!(
        in_l2.payload(),
        in_l3.payload(),
        "the same bytes in both tiers"
    );
    assert_eq!(in_l2.payload(), &frame_of(&k, &ada_v1()));
    // A postcard frame, uncompressed by default, laid out as `frame.rs` documents.
    let frame = in_l2.payload();
    assert_eq!(
        (frame[CODEC_BYTE], frame[COMPRESSION_BYTE]),
        (Postcard::ID, 0)
    );
    assert_eq!(stored_len(frame), decoded_len(frame));
    assert_eq!(
        frame.len(),
        HEADER_LEN + k.as_bytes().len() + 4 + stored_len(frame)
    );
    assert_eq!(
        (in_l2.created_at(), in_l2.stale_at(), in_l2.expires_at()),
        (in_l3.created_at(), in_l3.stale_at(), in_l3.expires_at())
    );

    let bob = UserV1 {
        id: 7,
        name: "Bob".to_owned(),
    };
    cache.set("user:7", bob.clone()).await.unwrap();
    assert_eq!(
        stack.codec.encodes(),
        2,
        "a set encodes once for both tiers"
    );
    let k = key("user:7");
    assert_eq!(payload(&stack.l2, &k), payload(&stack.l3, &k));
    assert_eq!(decoded::<UserV1>(&stack.l3, &k), bob);
}

// ---------------------------------------------------------------------------------------------
// 53. A decode failure is a counted miss.
// ---------------------------------------------------------------------------------------------

/// Entries that cannot be decoded, with the reason each is counted under.
fn bad_entries(k: &CacheKey) -> Vec<(&'static str, Bytes, FrameErrorReason)> {
    let good = frame_of(k, &"old value".to_owned());
    let truncated = good.slice(..good.len() - 3);
    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    vec![
        (
            "garbage",
            Bytes::from_static(b"this is not a frame at all"),
            FrameErrorReason::BadMagic,
        ),
        ("truncated frame", truncated, FrameErrorReason::Truncated),
        (
            "altered body",
            Bytes::from(flipped),
            FrameErrorReason::Checksum,
        ),
    ]
}

/// Behaviour 53: garbage bytes, a truncated frame and an altered body in L2 are each a miss
/// counted under their reason (never an error): the loader runs, its value is returned, and it
/// overwrites the bad bytes in L2. A `get` without a loader answers `None`.
#[tokio::test(start_paused = true)]
async fn b53_undecodable_entries_are_counted_misses_and_the_loaded_value_overwrites_them() {
    let k = key("user:1");
    for (what, bytes, reason) in bad_entries(&k) {
        let stack = Stack::<String>::new();
        let cache = stack.cache();
        stack
            .l2
            .insert_raw(k.clone(), stored(&stack, bytes.clone()));

        assert!(
            cache.get(&k).await.unwrap().is_none(),
            "{what}: a get finds nothing"
        );
        assert_eq!(cache.stats().decode_errors_for(L2, reason), 1, "{what}");

        let calls = Calls::default();
        let hit = cache
            .get_or_fetch(&k, counting(&calls, "new value".to_owned()))
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        assert_eq!(
            (hit.source(), hit.as_str()),
            (Source::Loader, "new value"),
            "{what}"
        );
        assert_eq!(calls.get(), 1, "{what}");
        let stats = cache.stats();
        assert_eq!(stats.decode_errors_for(L2, reason), 2, "{what}");
        assert_eq!(
            stats.decode_errors_total(L2),
            2,
            "{what}: only under {reason:?}"
        );
        assert_eq!(stats.decode_errors_total(L3), 0, "{what}");
        assert_eq!(stats.decodes, [0, 0], "{what}");

        settle().await;
        assert_ne!(payload(&stack.l2, &k), bytes, "{what}");
        assert_eq!(
            decoded::<String>(&stack.l2, &k),
            "new value",
            "{what}: overwritten"
        );
        assert_eq!(decoded::<String>(&stack.l3, &k), "new value", "{what}");
        assert_eq!(cache.keys_in_progress(), 0);
    }
}

/// Behaviour 53: a bad L2 entry falls through to L3; the L3 hit answers without the loader and
/// refills L2 over the bad bytes.
#[tokio::test(start_paused = true)]
async fn b53_a_bad_l2_entry_falls_through_to_l3_which_overwrites_it() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let k = key("user:1");
    let good = frame_of(&k, &"from-l3".to_owned());
    stack
        .l2
        .insert_raw(k.clone(), stored(&stack, &b"garbage"[..]));
    stack.l3.insert_raw(k.clone(), stored(&stack, good.clone()));

    let calls = Calls::default();
    let hit = cache
        .get_or_fetch(&k, counting(&calls, "loader".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L3, "from-l3"));
    assert_eq!(calls.get(), 0);
    let stats = cache.stats();
    assert_eq!(stats.decode_errors_for(L2, FrameErrorReason::BadMagic), 1);
    assert_eq!(stats.decode_errors_total(L3), 0);
    assert_eq!(stats.decodes, [0, 1]);
    settle().await;
    assert_eq!(
        payload(&stack.l2, &k),
        good,
        "the L3 refill replaced the garbage"
    );
}

/// Behaviour 53: with `strict_decode` an undecodable entry is `CacheError::Decode` naming the
/// tier and the reason; the loader does not run, nothing is overwritten, and the error is
/// still counted. The default (off) on the same entry is a miss.
#[tokio::test(start_paused = true)]
async fn b53_strict_decode_turns_a_bad_entry_into_a_decode_error() {
    let k = key("user:1");
    let strict = FetchOptions::new().strict_decode(true);
    for (what, bytes, reason) in bad_entries(&k) {
        let stack = Stack::<String>::new();
        let cache = stack.cache();
        // In L3 only: the error names L3.
        stack
            .l3
            .insert_raw(k.clone(), stored(&stack, bytes.clone()));
        let calls = Calls::default();
        let error = cache
            .get_or_fetch_with(&k, &strict, instant(&calls, "loader"))
            .await
            .unwrap_err();
        match &error {
            CacheError::Decode { tier, source } => {
                assert_eq!((*tier, source.reason()), (Source::L3, reason), "{what}");
            }
            other => panic!("{what}: expected a decode error, got {other:?}"),
        }
        assert!(!error.is_retryable());
        let error = cache.get_with(&k, &strict).await.unwrap_err();
        assert!(
            matches!(
                error,
                CacheError::Decode {
                    tier: Source::L3,
                    ..
                }
            ),
            "{what}"
        );
        assert_eq!(calls.get(), 0, "{what}");
        assert_eq!(cache.stats().decode_errors_for(L3, reason), 2, "{what}");
        settle().await;
        assert_eq!(payload(&stack.l3, &k), bytes, "{what}: nothing overwritten");
        assert!(stack.l2.peek(&k).is_none(), "{what}");

        // Strictness is per call: the default is a counted miss.
        let hit = cache
            .get_or_fetch(&k, counting(&calls, "loader".to_owned()))
            .await
            .unwrap();
        assert_eq!(hit.source(), Source::Loader, "{what}");
        assert_eq!(cache.stats().decode_errors_for(L3, reason), 3, "{what}");
    }
}

/// Behaviour 53: a frame written by another codec (a JSON cache) and read by a postcard cache
/// is a miss counted as `codec_mismatch` in both tiers; the loaded value replaces it with a
/// postcard frame. With `strict_decode` it is a decode error.
#[cfg(feature = "json")]
#[tokio::test(start_paused = true)]
async fn b53_a_frame_of_another_codec_is_a_counted_codec_mismatch_miss() {
    use tierkit_cache::codec::Json;

    let stack = Stack::<UserV1>::new();
    let json_cache = stack.other_node::<UserV1>().cache_with_codec(Json);
    json_cache.set("user:42", ada_v1()).await.unwrap();
    let k = key("user:42");
    assert_eq!(payload(&stack.l2, &k)[CODEC_BYTE], Json::ID);

    let cache = stack.cache();
    let error = cache
        .get_with(&k, &FetchOptions::new().strict_decode(true))
        .await
        .unwrap_err();
    assert_decode_error(error, Source::L2, FrameErrorReason::CodecMismatch);

    let calls = Calls::default();
    let fresh = UserV1 {
        id: 42,
        name: "Ada (reloaded)".to_owned(),
    };
    let hit = cache
        .get_or_fetch(&k, counting(&calls, fresh.clone()))
        .await
        .unwrap();
    assert_eq!((hit.source(), &*hit), (Source::Loader, &fresh));
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        stats.decode_errors_for(L2, FrameErrorReason::CodecMismatch),
        2
    );
    assert_eq!(
        stats.decode_errors_for(L3, FrameErrorReason::CodecMismatch),
        1
    );
    assert_eq!(
        stack.codec.decodes(),
        0,
        "the body is never handed to the wrong codec"
    );
    settle().await;
    for tier in [&stack.l2, &stack.l3] {
        assert_eq!(payload(tier, &k)[CODEC_BYTE], Postcard::ID);
        assert_eq!(decoded::<UserV1>(tier, &k), fresh);
    }
}

/// Behaviour 53 (the required case): struct v1 written, read by a handle typed with
/// struct v2: a counted miss (`deserialize`, in L2 then L3), the loader is called, both tiers
/// are overwritten with the v2 value, and no error reaches the caller.
#[tokio::test(start_paused = true)]
async fn b53_struct_v1_read_as_v2_is_a_counted_miss_and_the_tiers_are_overwritten() {
    let stack = Stack::<UserV1>::new();
    let v1 = stack.cache();
    v1.set("user:42", ada_v1()).await.unwrap();

    let v2_node = stack.other_node::<UserV2>();
    let v2 = v2_node.cache();
    let calls = Calls::default();
    let hit = v2
        .get_or_fetch("user:42", counting(&calls, ada_v2()))
        .await
        .expect("no error: a changed type is a miss");
    assert_eq!((hit.source(), &*hit), (Source::Loader, &ada_v2()));
    assert_eq!(calls.get(), 1);
    let stats = v2.stats();
    assert_eq!(
        stats.decode_errors_for(L2, FrameErrorReason::Deserialize),
        1
    );
    assert_eq!(
        stats.decode_errors_for(L3, FrameErrorReason::Deserialize),
        1
    );
    assert_eq!(
        (stats.decode_errors_total(L2), stats.decode_errors_total(L3)),
        (1, 1)
    );
    assert_eq!(
        v2_node.codec.decodes(),
        2,
        "the codec tried each tier's body once"
    );

    settle().await;
    let k = key("user:42");
    assert_eq!(decoded::<UserV2>(&stack.l2, &k), ada_v2(), "L2 overwritten");
    assert_eq!(decoded::<UserV2>(&stack.l3, &k), ada_v2(), "L3 overwritten");
    // Another v2 reader now hits L2.
    let reader = stack.other_node::<UserV2>().cache();
    let hit = reader.get("user:42").await.unwrap().unwrap();
    assert_eq!((hit.source(), &*hit), (Source::L2, &ada_v2()));
    assert_eq!(reader.stats().decode_errors_total(L2), 0);
}

/// Behaviour 53: the v1/v2 case with `strict_decode` is `CacheError::Decode` with reason
/// `deserialize`, and the v1 entries stay.
#[tokio::test(start_paused = true)]
async fn b53_struct_v1_read_as_v2_with_strict_decode_is_a_decode_error() {
    let stack = Stack::<UserV1>::new();
    stack.cache().set("user:42", ada_v1()).await.unwrap();
    let v2 = stack
        .other_node::<UserV2>()
        .tiered_builder()
        .defaults(FetchOptions::new().strict_decode(true))
        .build();
    let calls = Calls::default();
    let error = v2
        .get_or_fetch("user:42", counting(&calls, ada_v2()))
        .await
        .unwrap_err();
    assert_decode_error(error, Source::L2, FrameErrorReason::Deserialize);
    assert_eq!(calls.get(), 0);
    settle().await;
    assert_eq!(decoded::<UserV1>(&stack.l2, &key("user:42")), ada_v1());
}

// ---------------------------------------------------------------------------------------------
// 54. The key is verified on read.
// ---------------------------------------------------------------------------------------------

/// Behaviours 53 and 54: key A's stored entry copied under key B (as a hashed or truncated
/// object name would) is a miss counted as `key_mismatch` in both tiers, never A's value; the
/// loader's value for B overwrites it, and A is untouched. Strict: a decode error.
#[tokio::test(start_paused = true)]
async fn b54_a_frame_echoing_another_key_is_a_counted_key_mismatch_miss() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let (a, b) = (key("user:a"), key("user:b"));
    cache.set(&a, "value of a".to_owned()).await.unwrap();
    for tier in [&stack.l2, &stack.l3] {
        tier.insert_raw(b.clone(), tier.peek(&a).unwrap());
    }

    let error = cache
        .get_with(&b, &FetchOptions::new().strict_decode(true))
        .await
        .unwrap_err();
    assert_decode_error(error, Source::L2, FrameErrorReason::KeyMismatch);
    assert!(
        cache.get(&b).await.unwrap().is_none(),
        "never A's value under B"
    );

    let calls = Calls::default();
    let hit = cache
        .get_or_fetch(&b, counting(&calls, "value of b".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "value of b"));
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        stats.decode_errors_for(L2, FrameErrorReason::KeyMismatch),
        3
    );
    assert_eq!(
        stats.decode_errors_for(L3, FrameErrorReason::KeyMismatch),
        2
    );
    assert_eq!(
        stack.codec.decodes(),
        0,
        "turned away before the body is decoded"
    );
    settle().await;
    for tier in [&stack.l2, &stack.l3] {
        assert_eq!(decoded::<String>(tier, &b), "value of b");
        assert_eq!(decoded::<String>(tier, &a), "value of a");
    }
}

// ---------------------------------------------------------------------------------------------
// 55. Encode failure on write.
// ---------------------------------------------------------------------------------------------

/// Stores strings as their bytes, but refuses to encode those starting with "unencodable".
#[derive(Clone, Debug, Default)]
struct PickyCodec {
    encodes: Arc<AtomicUsize>,
}

impl Codec<String> for PickyCodec {
    fn id(&self) -> u8 {
        200
    }

    fn name(&self) -> &'static str {
        "picky"
    }

    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        if value.starts_with("unencodable") {
            return Err(CodecError::new("picky", "this value cannot be encoded"));
        }
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|error| CodecError::new("picky", error))
    }
}

/// Behaviour 55: a loaded value that cannot be encoded still reaches every waiter (the same
/// Arc) and L1; the remote writes are skipped and counted once (`encode_errors`), and later
/// calls hit L1.
#[tokio::test(start_paused = true)]
async fn b55_an_unencodable_loaded_value_is_returned_and_kept_in_l1_only() {
    let stack = Stack::<String>::new();
    let codec = PickyCodec::default();
    let cache = stack.cache_with_codec(codec.clone());
    let calls = Calls::default();
    let gate = Gate::closed();
    let tasks = spawn_fetches(&cache, "k", 10, || {
        gated(&calls, &gate, "unencodable value".to_owned())
    });
    settle().await;
    gate.open();
    let mut hits = Vec::new();
    for task in tasks {
        hits.push(
            task.await
                .unwrap()
                .expect("an encode failure is not the caller's error"),
        );
    }
    settle().await;

    assert_eq!(calls.get(), 1);
    assert!(hits.iter().all(|hit| hit.as_str() == "unencodable value"));
    assert_one_shared_value(&hits);
    assert_eq!(
        codec.encodes.load(Ordering::SeqCst),
        1,
        "tried once per flight"
    );
    assert_eq!(cache.stats().encode_errors, 1);
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (0, 0),
        "remote writes skipped"
    );
    assert!(stack.l2.is_empty() && stack.l3.is_empty());
    let k = key("k");
    assert_eq!(
        stack.l1.peek(&k).unwrap().value().unwrap().as_str(),
        "unencodable value"
    );
    let again = cache
        .get_or_fetch("k", counting(&calls, "other".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (again.source(), again.as_str()),
        (Source::L1, "unencodable value")
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.keys_in_progress(), 0);

    // An encodable value goes through the same codec to both tiers.
    cache
        .get_or_fetch("k2", counting(&calls, "fine".to_owned()))
        .await
        .unwrap();
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (1, 1));
    assert_eq!(cache.stats().encode_errors, 1);
}

/// Behaviour 55: `set` of a value that cannot be encoded returns `CacheError::Encode`, is
/// counted, writes no remote tier, and L1 holds the value (as `set` documents: "it is then in
/// L1 only").
#[tokio::test(start_paused = true)]
async fn b55_set_of_an_unencodable_value_is_an_encode_error_and_l1_holds_it() {
    let stack = Stack::<String>::new();
    let codec = PickyCodec::default();
    let cache = stack.cache_with_codec(codec.clone());
    let error = cache
        .set("k", "unencodable value".to_owned())
        .await
        .unwrap_err();
    match &error {
        CacheError::Encode(source) => assert_eq!(source.codec(), "picky"),
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert!(!error.is_retryable());
    assert_eq!(cache.stats().encode_errors, 1);
    settle().await;
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    let local = cache.try_get_local("k").expect("L1 holds the value");
    assert_eq!(local.as_str(), "unencodable value");
    let hit = cache.get("k").await.unwrap().unwrap();
    assert_eq!(
        (hit.source(), hit.as_str()),
        (Source::L1, "unencodable value")
    );
}

// ---------------------------------------------------------------------------------------------
// 56. Compression threshold.
// ---------------------------------------------------------------------------------------------

/// Writes a large compressible value and a small one through a cache compressing with
/// `compression`, and checks what each tier holds: the large one compressed with `id`, the
/// small one raw, both decodable by the cache.
#[cfg(any(feature = "zstd", feature = "lz4"))]
async fn large_compressed_small_raw(compression: Compression, id: u8) {
    let stack = Stack::<String>::new();
    let cache = stack.tiered_builder().compression(compression).build();
    let large = text(32 * 1024);
    let calls = Calls::default();
    // One through the loader, one through `set`.
    cache
        .get_or_fetch("large", counting(&calls, large.clone()))
        .await
        .unwrap();
    cache.set("small", "tiny".to_owned()).await.unwrap();
    settle().await;

    let (lk, sk) = (key("large"), key("small"));
    for tier in [&stack.l2, &stack.l3] {
        let frame = payload(tier, &lk);
        assert_eq!(
            frame[COMPRESSION_BYTE], id,
            "{compression:?}: the large value is compressed"
        );
        assert_eq!(
            decoded_len(&frame),
            large.len() + 3,
            "postcard's length prefix + the text"
        );
        assert!(
            stored_len(&frame) < decoded_len(&frame) / 4,
            "{compression:?}"
        );
        assert_eq!(
            frame.len(),
            HEADER_LEN + lk.as_bytes().len() + 4 + stored_len(&frame)
        );
        let frame = payload(tier, &sk);
        assert_eq!(
            frame[COMPRESSION_BYTE], 0,
            "{compression:?}: the small value is raw"
        );
        assert_eq!(stored_len(&frame), decoded_len(&frame));
    }
    // The cache reads back what it wrote (through a fresh L1).
    let reader = stack
        .other_node::<String>()
        .tiered_builder()
        .compression(compression)
        .build();
    assert_eq!(reader.get(&lk).await.unwrap().unwrap().as_str(), large);
    assert_eq!(reader.get(&sk).await.unwrap().unwrap().as_str(), "tiny");
    assert_eq!(reader.stats().decode_errors_total(L2), 0);
}

/// Behaviour 56: with zstd(3), a large compressible value is stored compressed (compression
/// byte 1) and a value below the threshold raw (0).
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn b56_zstd_stores_large_values_compressed_and_small_ones_raw() {
    large_compressed_small_raw(Compression::zstd(3), 1).await;
}

/// Behaviour 56: the same with lz4 (compression byte 2).
#[cfg(feature = "lz4")]
#[tokio::test(start_paused = true)]
async fn b56_lz4_stores_large_values_compressed_and_small_ones_raw() {
    large_compressed_small_raw(Compression::lz4(), 2).await;
}

/// Behaviour 56: the threshold is the encoded size: a value one byte below `min_size` is raw,
/// one at `min_size` is compressed; a large value that does not compress is stored raw.
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn b56_the_threshold_is_the_encoded_size_and_compression_must_help() {
    let stack = Stack::<Vec<u8>>::new();
    let cache = stack
        .builder()
        .l2(stack.l2.clone())
        .compression(Compression::zstd(3).min_size(2000))
        .build();
    // postcard writes a Vec<u8> as a varint length (2 bytes here) and the bytes.
    let below = text(1997).into_bytes();
    let at = text(1998).into_bytes();
    cache.set("below", below).await.unwrap();
    cache.set("at", at).await.unwrap();
    cache.set("noise", noise(64 * 1024)).await.unwrap();
    let below = payload(&stack.l2, &key("below"));
    assert_eq!((decoded_len(&below), below[COMPRESSION_BYTE]), (1999, 0));
    let at = payload(&stack.l2, &key("at"));
    assert_eq!((decoded_len(&at), at[COMPRESSION_BYTE]), (2000, 1));
    let noisy = payload(&stack.l2, &key("noise"));
    assert_eq!(
        noisy[COMPRESSION_BYTE], 0,
        "compression that does not help is skipped"
    );
    assert_eq!(stored_len(&noisy), decoded_len(&noisy));
    let reader = stack.other_node::<Vec<u8>>().cache();
    assert_eq!(
        *reader.get("noise").await.unwrap().unwrap(),
        noise(64 * 1024)
    );
}

/// Behaviour 56: the algorithm id lives in the frame, so a cache configured with another
/// algorithm (or none) reads zstd and lz4 frames alike.
#[cfg(all(feature = "zstd", feature = "lz4"))]
#[tokio::test(start_paused = true)]
async fn b56_a_cache_configured_with_another_algorithm_still_reads_the_frame() {
    let large = text(16 * 1024);
    for (writer, id) in [(Compression::zstd(3), 1), (Compression::lz4(), 2)] {
        let stack = Stack::<String>::new();
        let cache = stack.tiered_builder().compression(writer).build();
        cache.set("k", large.clone()).await.unwrap();
        assert_eq!(payload(&stack.l2, &key("k"))[COMPRESSION_BYTE], id);
        for reader_compression in [
            Compression::none(),
            Compression::zstd(9),
            Compression::lz4(),
        ] {
            let node = stack.other_node::<String>();
            let reader = node
                .tiered_builder()
                .compression(reader_compression)
                .build();
            let calls = Calls::default();
            let hit = reader
                .get_or_fetch("k", counting(&calls, String::new()))
                .await
                .unwrap();
            assert_eq!(
                hit.source(),
                Source::L2,
                "{writer:?} read by {reader_compression:?}"
            );
            assert_eq!(hit.as_str(), large);
            assert_eq!((calls.get(), node.codec.decodes()), (0, 1));
        }
    }
}

/// Behaviour 56: a reader's `max_decoded` bounds the decoded size it accepts: a compressed
/// frame announcing more is a miss counted as `too_large` (an error with `strict_decode`),
/// decided before decompressing.
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn b56_max_decoded_is_enforced_through_the_cache() {
    let stack = Stack::<String>::new();
    let writer = stack
        .tiered_builder()
        .compression(Compression::zstd(3))
        .build();
    let large = text(32 * 1024);
    writer.set("k", large.clone()).await.unwrap();
    let frame = payload(&stack.l2, &key("k"));
    assert_eq!(frame[COMPRESSION_BYTE], 1);
    assert!(frame.len() < 4096, "small on the wire, large decoded");

    // A reader with the default bound reads it.
    let unbounded = stack.other_node::<String>().cache();
    let hit = unbounded.get("k").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::L2, large.as_str()));

    let bounded = Compression::zstd(3).max_decoded(16 * 1024);
    let node = stack.other_node::<String>();
    let reader = node.tiered_builder().compression(bounded).build();
    let error = reader
        .get_with("k", &FetchOptions::new().strict_decode(true))
        .await
        .unwrap_err();
    assert_decode_error(error, Source::L2, FrameErrorReason::TooLarge);
    let calls = Calls::default();
    let hit = reader
        .get_or_fetch("k", counting(&calls, "short".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, "short"));
    let stats = reader.stats();
    assert_eq!(stats.decode_errors_for(L2, FrameErrorReason::TooLarge), 2);
    assert_eq!(stats.decode_errors_for(L3, FrameErrorReason::TooLarge), 1);
    assert_eq!(
        node.codec.decodes(),
        0,
        "rejected before decompressing or decoding"
    );
    settle().await;
    assert_eq!(
        decoded::<String>(&stack.l2, &key("k")),
        "short",
        "the loaded value replaced it"
    );
}

/// Behaviour 56: by default a reader accepts a decoded body of at most four `max_payload`s
/// (4 MiB): a frame of a few KB announcing more is refused before any decompression, counted
/// as `too_large`, and the loader answers instead. Without this bound every read of such a key
/// would allocate the whole announced size.
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn a_small_frame_decoding_past_four_max_payloads_is_refused_and_counted() {
    let stack = Stack::<String>::new();
    let huge = text(5 << 20);
    // Another program's writer, with no bound of its own.
    let frame = encode_frame(
        &key("k"),
        &Postcard,
        &Compression::zstd(3).max_decoded(usize::MAX),
        &huge,
    )
    .unwrap();
    assert!(frame.len() < 4096 && decoded_len(&frame) > 4 << 20);
    stack.l2.insert_raw(key("k"), stored(&stack, frame));

    let node = stack.other_node::<String>();
    let reader = node
        .builder()
        .l2(stack.l2.clone())
        .compression(Compression::zstd(3))
        .build();
    let calls = Calls::default();
    let hit = reader
        .get_or_fetch("k", counting(&calls, "small".to_owned()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.len()), (Source::Loader, 5));
    assert_eq!(calls.get(), 1);
    assert_eq!(
        reader
            .stats()
            .decode_errors_for(L2, FrameErrorReason::TooLarge),
        1
    );
    assert_eq!(node.codec.decodes(), 0, "refused before decompressing");

    // The bound follows `max_payload`: a reader allowing 2 MiB payloads reads the same frame.
    let node = stack.other_node::<String>();
    stack.l2.insert_raw(
        key("k2"),
        stored(
            &stack,
            encode_frame(
                &key("k2"),
                &Postcard,
                &Compression::zstd(3).max_decoded(usize::MAX),
                &huge,
            )
            .unwrap(),
        ),
    );
    let roomy = node
        .builder()
        .l2(stack.l2.clone())
        .compression(Compression::zstd(3))
        .defaults(FetchOptions::new().max_payload(2 << 20))
        .build();
    let hit = roomy.get("k2").await.unwrap().unwrap();
    assert_eq!((hit.source(), hit.len()), (Source::L2, huge.len()));
}

/// Behaviour 56 with 57: the cache never writes a frame its own readers refuse: a value whose
/// compressed frame fits `max_payload` but whose decoded body is above the readers' bound is
/// kept in L1 only and counted as `oversize`, like a frame above `max_payload`.
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn a_value_decoding_past_the_readers_bound_is_kept_in_l1_only() {
    let stack = Stack::<String>::new();
    let cache = stack
        .builder()
        .l2(stack.l2.clone())
        .compression(Compression::zstd(3))
        .build();
    let huge = text(5 << 20);
    let calls = Calls::default();
    let hit = cache
        .get_or_fetch("k", counting(&calls, huge.clone()))
        .await
        .unwrap();
    assert_eq!(hit.source(), Source::Loader);
    settle().await;
    assert_eq!(cache.stats().oversize, 1);
    assert_eq!(stack.l2.calls().set, 0, "no remote write");
    assert!(stack.l2.peek(&key("k")).is_none());
    assert_eq!(cache.try_get_local("k").unwrap().len(), huge.len());
}

// ---------------------------------------------------------------------------------------------
// 57. Payload cap.
// ---------------------------------------------------------------------------------------------

/// Behaviour 57: an encoded value (the frame) above `max_payload` is kept in L1 only and
/// counted (`oversize`): the caller gets it, later calls hit L1, and no remote tier is written.
/// A frame of exactly `max_payload` bytes is written.
#[tokio::test(start_paused = true)]
async fn b57_an_encoded_value_above_max_payload_is_kept_in_l1_only_and_counted() {
    let stack = Stack::<String>::new();
    let at_cap = text(400);
    let cap = frame_of(&key("big"), &at_cap).len();
    assert_eq!(frame_of(&key("big"), &text(401)).len(), cap + 1);
    let cache = stack
        .tiered_builder()
        .defaults(FetchOptions::new().max_payload(cap))
        .build();
    let calls = Calls::default();

    let big = text(401);
    let hit = cache
        .get_or_fetch("big", counting(&calls, big.clone()))
        .await
        .unwrap();
    assert_eq!((hit.source(), hit.as_str()), (Source::Loader, big.as_str()));
    settle().await;
    assert_eq!(cache.stats().oversize, 1);
    assert_eq!(
        (stack.l2.calls().set, stack.l3.calls().set),
        (0, 0),
        "no remote write"
    );
    assert_eq!(
        stack
            .l1
            .peek(&key("big"))
            .unwrap()
            .value()
            .unwrap()
            .as_str(),
        big
    );
    let again = cache
        .get_or_fetch("big", counting(&calls, String::new()))
        .await
        .unwrap();
    assert_eq!(again.source(), Source::L1);
    assert_eq!(calls.get(), 1);

    cache
        .get_or_fetch("cap", counting(&calls, at_cap.clone()))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        cache.stats().oversize,
        1,
        "a frame of exactly max_payload is written"
    );
    assert_eq!(decoded::<String>(&stack.l2, &key("cap")), at_cap);
    assert_eq!(decoded::<String>(&stack.l3, &key("cap")), at_cap);
    assert_eq!(cache.keys_in_progress(), 0);
}

/// Behaviour 57: `set` of an oversized value succeeds with the value in L1 only, counted; a
/// per-call `max_payload` overrides the default.
#[tokio::test(start_paused = true)]
async fn b57_set_of_an_oversized_value_keeps_it_in_l1_only() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    let big = text(2000);
    cache
        .set_with("big", big.clone(), &FetchOptions::new().max_payload(1024))
        .await
        .unwrap();
    settle().await;
    assert_eq!(cache.stats().oversize, 1);
    assert_eq!((stack.l2.calls().set, stack.l3.calls().set), (0, 0));
    assert_eq!(cache.try_get_local("big").unwrap().as_str(), big);
    // The default cap (1 MiB) lets the same value through.
    cache.set("big", big.clone()).await.unwrap();
    assert_eq!(cache.stats().oversize, 1);
    assert_eq!(decoded::<String>(&stack.l2, &key("big")), big);
}

/// Behaviour 57: an acknowledged `set` whose value is too large for the remote tiers must not
/// leave the value it replaced there: once L1 loses the key (a capacity eviction) or another
/// node reads it, the older value must not come back.
#[tokio::test(start_paused = true)]
async fn b57_an_oversized_set_leaves_no_older_value_in_the_remote_tiers() {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    cache.set("k", "v1".to_owned()).await.unwrap();
    cache
        .set_with("k", text(2000), &FetchOptions::new().max_payload(1024))
        .await
        .expect("acknowledged");
    settle().await;
    assert_eq!(cache.stats().oversize, 1);

    // Another node, with an L1 of its own.
    let other = stack.other_node::<String>().cache();
    let seen = other.get("k").await.unwrap();
    assert!(
        seen.as_ref().is_none_or(|hit| hit.as_str() != "v1"),
        "another node reads the replaced value from {:?}",
        seen.map(|hit| hit.source())
    );
    // This node, after L1 evicted the key.
    stack.l1.remove(&key("k"));
    let seen = cache.get("k").await.unwrap();
    assert!(
        seen.as_ref().is_none_or(|hit| hit.as_str() != "v1"),
        "the replaced value comes back from {:?} after an eviction",
        seen.map(|hit| hit.source())
    );
}

/// Behaviour 57 with 56: the cap applies to the stored frame, after compression: a value
/// whose encoding is over the cap but compresses under it is written (while it decodes within
/// the readers' bound, four times the cap).
#[cfg(feature = "zstd")]
#[tokio::test(start_paused = true)]
async fn b57_the_cap_applies_to_the_compressed_frame() {
    let stack = Stack::<String>::new();
    let cache = stack
        .builder()
        .l2(stack.l2.clone())
        .compression(Compression::zstd(3))
        .defaults(FetchOptions::new().max_payload(1024))
        .build();
    let compressible = text(3 * 1024);
    cache.set("k", compressible.clone()).await.unwrap();
    let frame = payload(&stack.l2, &key("k"));
    assert!(frame.len() <= 1024 && decoded_len(&frame) > 1024);
    assert_eq!(cache.stats().oversize, 0);
    // Noise does not compress: over the cap, L1 only.
    let noisy: String = noise(4096)
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    let mut with_noise = noisy.clone();
    with_noise.push_str(&noisy);
    cache.set("noise", with_noise).await.unwrap();
    assert_eq!(cache.stats().oversize, 1);
    assert!(stack.l2.peek(&key("noise")).is_none());
}
