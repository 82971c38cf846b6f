#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests
//! The value frame: round trips through every codec and compression, and every way a frame can be
//! wrong turned into its reason, never into a panic or another value.

use std::collections::BTreeSet;
#[cfg(feature = "json")]
use std::collections::HashMap;

use bytes::Bytes;
#[cfg(any(feature = "postcard", feature = "json"))]
use serde::{Deserialize, Serialize};
#[cfg(feature = "json")]
use tierkit_cache::codec::Json;
#[cfg(feature = "postcard")]
use tierkit_cache::codec::Postcard;
use tierkit_cache::codec::{Codec, CodecError, RawBytes};
use tierkit_cache::frame::{self, decode_frame, encode_frame};
use tierkit_cache::{
    Compression, CompressionAlgorithm, FRAME_ERROR_REASONS, FrameError, FrameErrorReason,
};
use tierkit_core::CacheKey;

#[global_allocator]
static ALLOCATOR: tierkit_testkit::CountingAllocator = tierkit_testkit::CountingAllocator;

/// Runs `f` and returns its result with the number of allocations (and reallocations) this
/// thread made meanwhile, and the largest of them in bytes.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    let (result, seen) = tierkit_testkit::measure_allocations(f);
    (result, usize::try_from(seen.count).unwrap(), seen.largest)
}

fn key(text: &str) -> CacheKey {
    CacheKey::new(text).unwrap()
}

/// Every compression this build can test, none first.
fn compressions() -> Vec<Compression> {
    let mut all = vec![Compression::none()];
    if (CompressionAlgorithm::Zstd { level: 3 }).is_available() {
        all.push(Compression::zstd(3));
        all.push(Compression::zstd(19));
        all.push(Compression::zstd(-5));
    }
    if CompressionAlgorithm::Lz4.is_available() {
        all.push(Compression::lz4());
    }
    all
}

/// Bytes that no algorithm shrinks: xorshift output.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes that compress well.
fn text(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Offsets of the documented layout.
const COMPRESSION_AT: usize = 5;

fn stored_len(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[6..10].try_into().unwrap()) as usize
}

fn decoded_len(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[10..14].try_into().unwrap()) as usize
}

/// A frame assembled by hand from the documented layout, with a correct checksum.
fn build_frame(
    codec_id: u8,
    compression_id: u8,
    decoded_len: u32,
    key: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(b"TKF");
    frame.push(1);
    frame.push(codec_id);
    frame.push(compression_id);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(&decoded_len.to_le_bytes());
    frame.extend_from_slice(&u16::try_from(key.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(key);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame);
    crc.update(body);
    frame.extend_from_slice(&crc.finalize().to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Recomputes the checksum of a frame whose header was altered on purpose.
fn reseal(frame: &mut [u8]) {
    let key_len = usize::from(u16::from_le_bytes([frame[14], frame[15]]));
    let crc_at = frame::HEADER_LEN + key_len;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..crc_at]);
    crc.update(&frame[crc_at + 4..]);
    frame[crc_at..crc_at + 4].copy_from_slice(&crc.finalize().to_le_bytes());
}

fn reason<V: std::fmt::Debug>(result: Result<V, FrameError>) -> FrameErrorReason {
    match result {
        Ok(value) => panic!("decoded {value:?} from an invalid frame"),
        Err(error) => error.reason(),
    }
}

#[cfg(any(feature = "postcard", feature = "json"))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    id: u64,
    name: String,
    tags: Vec<String>,
}

#[cfg(any(feature = "postcard", feature = "json"))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    id: u64,
    name: String,
    tags: Vec<String>,
    email: String,
    age: u32,
}

#[cfg(any(feature = "postcard", feature = "json"))]
fn user(tags: usize) -> UserV1 {
    UserV1 {
        id: 42,
        name: "Ada Lovelace".to_owned(),
        tags: (0..tags).map(|i| format!("tag number {i}")).collect(),
    }
}

fn round_trip<V: PartialEq + std::fmt::Debug + 'static>(
    codec: &dyn Codec<V>,
    compression: &Compression,
    value: &V,
) -> Bytes {
    let key = key("user:42");
    let frame = encode_frame(&key, codec, compression, value).unwrap();
    assert_eq!(&frame[..3], b"TKF");
    assert_eq!(frame[3], frame::VERSION);
    assert_eq!(frame[4], codec.id());
    let decoded = decode_frame(&key, codec, compression, &frame).unwrap();
    assert_eq!(&decoded, value, "{} with {compression:?}", codec.name());
    frame
}

#[cfg(feature = "postcard")]
#[test]
fn postcard_round_trips_with_every_compression() {
    for compression in compressions() {
        for tags in [0, 1, 10, 500] {
            round_trip(&Postcard, &compression, &user(tags));
        }
        round_trip(&Postcard, &compression, &());
        round_trip(&Postcard, &compression, &Vec::<u64>::new());
        round_trip(&Postcard, &compression, &Some(String::new()));
        round_trip(&Postcard, &compression, &(0..10_000u32).collect::<Vec<_>>());
    }
    assert_eq!(<Postcard as Codec<u8>>::id(&Postcard), Postcard::ID);
    assert_eq!(<Postcard as Codec<u8>>::name(&Postcard), "postcard");
}

#[cfg(feature = "json")]
#[test]
fn json_round_trips_with_every_compression() {
    for compression in compressions() {
        for tags in [0, 1, 10, 500] {
            round_trip(&Json, &compression, &user(tags));
        }
        round_trip(&Json, &compression, &String::new());
        round_trip(&Json, &compression, &HashMap::from([("a".to_owned(), 1u8)]));
    }
    assert_eq!(<Json as Codec<u8>>::id(&Json), Json::ID);
    assert_eq!(<Json as Codec<u8>>::name(&Json), "json");
}

#[test]
fn raw_bytes_round_trips_bytes_vec_and_string() {
    for compression in compressions() {
        for len in [0, 1, 100, 1023, 1024, 5000, 100_000] {
            round_trip(&RawBytes, &compression, &Bytes::from(text(len)));
            round_trip(&RawBytes, &compression, &noise(len, 7));
            round_trip(
                &RawBytes,
                &compression,
                &String::from_utf8(text(len)).unwrap(),
            );
        }
        round_trip(&RawBytes, &compression, &"héllo wörld ✓".to_owned());
    }
    assert_eq!(<RawBytes as Codec<String>>::id(&RawBytes), RawBytes::ID);
    assert_eq!(<RawBytes as Codec<Bytes>>::name(&RawBytes), "bytes");
}

#[test]
fn raw_bytes_body_is_the_value_itself() {
    let value = Bytes::from_static(b"exactly these bytes");
    let frame = round_trip(&RawBytes, &Compression::none(), &value);
    assert!(frame.ends_with(b"exactly these bytes"));
    assert_eq!(
        frame.len(),
        frame::HEADER_LEN + "user:42".len() + 4 + value.len()
    );
}

#[test]
fn raw_bytes_string_rejects_invalid_utf8() {
    let key = key("k");
    let frame = encode_frame(
        &key,
        &RawBytes,
        &Compression::none(),
        &vec![0x66, 0xff, 0x6f],
    )
    .unwrap();
    let error = decode_frame::<String>(&key, &RawBytes, &Compression::none(), &frame).unwrap_err();
    assert_eq!(error.reason(), FrameErrorReason::Deserialize);
    // The same frame is fine as bytes.
    let bytes: Vec<u8> = decode_frame(&key, &RawBytes, &Compression::none(), &frame).unwrap();
    assert_eq!(bytes, [0x66, 0xff, 0x6f]);
}

#[test]
fn the_header_follows_the_documented_layout() {
    let key = key("user:42");
    let value = Bytes::from(text(3000));
    for compression in compressions() {
        let frame = encode_frame(&key, &RawBytes, &compression, &value).unwrap();
        let key_len = u16::from_le_bytes([frame[14], frame[15]]);
        assert_eq!(usize::from(key_len), key.as_bytes().len());
        assert_eq!(&frame[16..16 + usize::from(key_len)], key.as_bytes());
        assert_eq!(decoded_len(&frame), 3000);
        assert_eq!(frame.len(), 20 + usize::from(key_len) + stored_len(&frame));
        assert_eq!(frame[COMPRESSION_AT], compression.algorithm().id());
        let body = &frame[frame.len() - stored_len(&frame)..];
        let rebuilt = build_frame(
            RawBytes::ID,
            frame[COMPRESSION_AT],
            3000,
            key.as_bytes(),
            body,
        );
        assert_eq!(&frame[..], &rebuilt[..], "{compression:?}");
    }
}

#[test]
fn compression_applies_only_from_min_size_and_when_smaller() {
    let key = key("k");
    for compression in compressions().into_iter().skip(1) {
        let id = compression.algorithm().id();
        // Below the minimum: raw.
        let small = Bytes::from(text(1023));
        let frame = encode_frame(&key, &RawBytes, &compression, &small).unwrap();
        assert_eq!(frame[COMPRESSION_AT], 0, "{compression:?}");
        assert_eq!(stored_len(&frame), 1023);
        // At the minimum, compressible: compressed and smaller.
        let large = Bytes::from(text(1024));
        let frame = encode_frame(&key, &RawBytes, &compression, &large).unwrap();
        assert_eq!(frame[COMPRESSION_AT], id, "{compression:?}");
        assert!(stored_len(&frame) < 1024);
        assert_eq!(decoded_len(&frame), 1024);
        // A lower minimum compresses the small one too.
        let lower = compression.min_size(100);
        let frame = encode_frame(&key, &RawBytes, &lower, &small).unwrap();
        assert_eq!(frame[COMPRESSION_AT], id, "{compression:?}");
        // Incompressible: raw, whatever the size.
        for len in [1024, 4096, 100_000] {
            let frame = encode_frame(&key, &RawBytes, &compression, &noise(len, 3)).unwrap();
            assert_eq!(frame[COMPRESSION_AT], 0, "{compression:?} {len}");
            assert_eq!(stored_len(&frame), len);
        }
        // Empty, and tiny values that cannot shrink, stay raw even with no minimum.
        let eager = compression.min_size(0);
        for value in [&b""[..], b"a", b"aaaa"] {
            let frame = encode_frame(&key, &RawBytes, &eager, &value.to_vec()).unwrap();
            assert_eq!(frame[COMPRESSION_AT], 0, "{compression:?} {value:?}");
            let back: Vec<u8> = decode_frame(&key, &RawBytes, &eager, &frame).unwrap();
            assert_eq!(back, value);
        }
    }
}

#[test]
fn out_of_range_zstd_levels_still_write_valid_frames() {
    let key = key("k");
    let value = Bytes::from(text(10_000));
    for level in [i32::MIN, -1_000_000, 0, 22, 100, i32::MAX] {
        let compression = Compression::zstd(level);
        let frame = encode_frame(&key, &RawBytes, &compression, &value).unwrap();
        let back: Bytes = decode_frame(&key, &RawBytes, &Compression::none(), &frame).unwrap();
        assert_eq!(back, value, "level {level}");
    }
}

#[test]
fn any_reader_decodes_any_compiled_algorithm() {
    let key = key("k");
    let value = Bytes::from(text(50_000));
    let all = compressions();
    for writer in &all {
        let frame = encode_frame(&key, &RawBytes, writer, &value).unwrap();
        for reader in &all {
            let back: Bytes = decode_frame(&key, &RawBytes, reader, &frame).unwrap();
            assert_eq!(back, value, "written with {writer:?}, read with {reader:?}");
        }
    }
}

#[test]
fn configuration_defaults_and_getters() {
    let default = Compression::default();
    assert_eq!(default, Compression::none());
    assert_eq!(default.algorithm(), CompressionAlgorithm::None);
    assert_eq!(default.min_size_bytes(), 1024);
    assert_eq!(default.max_decoded_bytes(), 4 << 20);
    assert_eq!(frame::DEFAULT_MIN_SIZE, 1024);
    assert_eq!(frame::DEFAULT_MAX_DECODED, 4 << 20);
    assert_eq!(default.decoded_bound(1000), 4000);
    assert_eq!(default.decoded_bound(usize::MAX), usize::MAX);

    let zstd = Compression::zstd(7).min_size(10).max_decoded(20);
    assert_eq!(zstd.algorithm(), CompressionAlgorithm::Zstd { level: 7 });
    assert_eq!(zstd.min_size_bytes(), 10);
    assert_eq!(zstd.max_decoded_bytes(), 20);
    assert_eq!(
        zstd.decoded_bound(1000),
        20,
        "a bound set wins over the cap"
    );
    assert_eq!(Compression::lz4().algorithm(), CompressionAlgorithm::Lz4);
    assert_eq!(
        Compression::new(CompressionAlgorithm::Lz4),
        Compression::lz4()
    );

    assert_eq!(CompressionAlgorithm::default(), CompressionAlgorithm::None);
    let ids: Vec<_> = [
        CompressionAlgorithm::None,
        CompressionAlgorithm::Zstd { level: 1 },
        CompressionAlgorithm::Lz4,
    ]
    .iter()
    .map(|a| (a.id(), a.name()))
    .collect();
    assert_eq!(ids, [(0, "none"), (1, "zstd"), (2, "lz4")]);
    assert!(CompressionAlgorithm::None.is_available());
    assert_eq!(
        CompressionAlgorithm::Zstd { level: 1 }.is_available(),
        cfg!(feature = "zstd")
    );
    assert_eq!(
        CompressionAlgorithm::Lz4.is_available(),
        cfg!(feature = "lz4")
    );
}

#[test]
fn unavailable_algorithms_are_stored_raw() {
    let key = key("k");
    let value = Bytes::from(text(10_000));
    for algorithm in [
        CompressionAlgorithm::Zstd { level: 3 },
        CompressionAlgorithm::Lz4,
    ] {
        let frame = encode_frame(&key, &RawBytes, &Compression::new(algorithm), &value).unwrap();
        let expected = if algorithm.is_available() {
            algorithm.id()
        } else {
            0
        };
        assert_eq!(frame[COMPRESSION_AT], expected);
    }
}

/// A small frame of every compression, to mutate.
fn small_frames() -> Vec<(Compression, Bytes)> {
    let key = key("user:42");
    compressions()
        .into_iter()
        .map(|compression| {
            let compression = compression.min_size(0);
            let frame =
                encode_frame(&key, &RawBytes, &compression, &Bytes::from(text(90))).unwrap();
            // Fast zstd levels do not shrink so small a value; the others do.
            let fast_zstd = matches!(compression.algorithm(), CompressionAlgorithm::Zstd { level } if level < 0);
            if !fast_zstd {
                assert_eq!(frame[COMPRESSION_AT], compression.algorithm().id(), "{compression:?}");
            }
            (compression, frame)
        })
        .collect()
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    let key = key("user:42");
    for (compression, frame) in small_frames() {
        for len in 0..frame.len() {
            let result = decode_frame::<Bytes>(&key, &RawBytes, &compression, &frame[..len]);
            assert_eq!(
                reason(result),
                FrameErrorReason::Truncated,
                "{compression:?}, {len} of {} bytes",
                frame.len()
            );
        }
        let mut longer = frame.to_vec();
        longer.push(0);
        let result = decode_frame::<Bytes>(&key, &RawBytes, &compression, &longer);
        assert_eq!(reason(result), FrameErrorReason::Truncated);
    }
}

#[test]
fn every_single_bit_flip_is_an_error() {
    let key = key("user:42");
    for (compression, frame) in small_frames() {
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut flipped = frame.to_vec();
                flipped[byte] ^= 1 << bit;
                let result = decode_frame::<Bytes>(&key, &RawBytes, &compression, &flipped);
                // `reason` panics on Ok: a flip never yields a value.
                let _ = reason(result);
            }
        }
    }
}

#[test]
fn garbage_never_panics() {
    let key = key("user:42");
    let compression = Compression::none();
    let (_, base) = small_frames().swap_remove(0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut input = if round % 2 == 0 {
            noise((seed % 64) as usize, seed)
        } else {
            base.to_vec()
        };
        // Keep a valid prefix now and then, so that later checks are reached.
        if round % 3 == 0 && input.len() >= 4 {
            input[..4].copy_from_slice(b"TKF\x01");
        }
        let mutations = noise(8, seed ^ 0xabcd);
        for pair in mutations.chunks(2) {
            if !input.is_empty() {
                let at = usize::from(pair[0]) % input.len();
                input[at] = pair[1];
            }
        }
        if round % 5 == 0 {
            reseal_if_possible(&mut input);
        }
        let _ = decode_frame::<Bytes>(&key, &RawBytes, &compression, &input);
        let _ = decode_frame::<String>(&key, &RawBytes, &Compression::lz4(), &input);
    }
}

fn reseal_if_possible(frame: &mut [u8]) {
    if frame.len() >= frame::HEADER_LEN {
        let key_len = usize::from(u16::from_le_bytes([frame[14], frame[15]]));
        if frame.len() >= frame::HEADER_LEN + key_len + 4 {
            reseal(frame);
        }
    }
}

#[test]
fn every_reason_is_produced_and_named() {
    let key = key("user:42");
    let none = Compression::none();
    let value = Bytes::from(text(100));
    let frame = encode_frame(&key, &RawBytes, &none, &value).unwrap();
    let decode = |input: &[u8]| decode_frame::<Bytes>(&key, &RawBytes, &none, input);
    let mut produced = BTreeSet::new();
    let mut expect = |result: Result<Bytes, FrameError>, expected: FrameErrorReason| {
        let error = result.unwrap_err();
        assert_eq!(error.reason(), expected, "{error}");
        assert!(error.to_string().contains(expected.as_str()), "{error}");
        assert!(!error.detail().is_empty());
        let cloned = error.clone();
        assert_eq!(cloned.reason(), expected);
        produced.insert(expected.index());
    };

    expect(
        decode(&frame[..frame.len() - 1]),
        FrameErrorReason::Truncated,
    );
    expect(decode(b""), FrameErrorReason::Truncated);
    expect(decode(b"TK"), FrameErrorReason::Truncated);
    expect(decode(b"hello, world"), FrameErrorReason::BadMagic);
    expect(decode(b"{\"id\":1}"), FrameErrorReason::BadMagic);

    let mut version = frame.to_vec();
    version[3] = 2;
    reseal(&mut version);
    expect(decode(&version), FrameErrorReason::UnknownVersion);

    let mut codec = frame.to_vec();
    codec[4] = 200;
    reseal(&mut codec);
    expect(decode(&codec), FrameErrorReason::CodecMismatch);

    let mut unknown = frame.to_vec();
    unknown[COMPRESSION_AT] = 3;
    reseal(&mut unknown);
    expect(decode(&unknown), FrameErrorReason::UnknownCompression);

    let strict = none.max_decoded(99);
    expect(
        decode_frame::<Bytes>(&key, &RawBytes, &strict, &frame),
        FrameErrorReason::TooLarge,
    );
    // Exactly at the bound is fine.
    let at_bound = none.max_decoded(100);
    assert_eq!(
        decode_frame::<Bytes>(&key, &RawBytes, &at_bound, &frame).unwrap(),
        value
    );

    // A raw body whose decoded length disagrees with its stored length.
    let lying = build_frame(RawBytes::ID, 0, 99, key.as_bytes(), &value);
    expect(decode(&lying), FrameErrorReason::Decompress);

    let mut altered = frame.to_vec();
    let last = altered.len() - 1;
    altered[last] ^= 0x20;
    expect(decode(&altered), FrameErrorReason::Checksum);

    let other = self::key("user:43");
    expect(
        decode_frame::<Bytes>(&other, &RawBytes, &none, &frame),
        FrameErrorReason::KeyMismatch,
    );

    let not_utf8 = encode_frame(&key, &RawBytes, &none, &vec![0xc3, 0x28]).unwrap();
    let error = decode_frame::<String>(&key, &RawBytes, &none, &not_utf8).unwrap_err();
    assert_eq!(error.reason(), FrameErrorReason::Deserialize);
    produced.insert(FrameErrorReason::Deserialize.index());

    // A frame compressed with an algorithm this build lacks; with every algorithm compiled in,
    // garbage in a compressed body is a decompression error instead.
    for algorithm in [
        CompressionAlgorithm::Zstd { level: 1 },
        CompressionAlgorithm::Lz4,
    ] {
        let garbage = build_frame(
            RawBytes::ID,
            algorithm.id(),
            100,
            key.as_bytes(),
            b"\xff\xfe",
        );
        let error = decode(&garbage).unwrap_err();
        if algorithm.is_available() {
            assert_eq!(error.reason(), FrameErrorReason::Decompress, "{error}");
            produced.insert(FrameErrorReason::Decompress.index());
        } else {
            assert_eq!(error.reason(), FrameErrorReason::CompressionUnavailable);
            produced.insert(FrameErrorReason::CompressionUnavailable.index());
        }
    }

    let all_available = CompressionAlgorithm::Zstd { level: 1 }.is_available()
        && CompressionAlgorithm::Lz4.is_available();
    for reason in FrameErrorReason::ALL {
        assert_eq!(FRAME_ERROR_REASONS[reason.index()], reason.as_str());
        assert_eq!(reason.to_string(), reason.as_str());
        let unproducible = all_available && reason == FrameErrorReason::CompressionUnavailable;
        assert!(
            produced.contains(&reason.index()) || unproducible,
            "{reason} was not produced"
        );
    }
    assert_eq!(
        FRAME_ERROR_REASONS,
        [
            "truncated",
            "bad_magic",
            "unknown_version",
            "codec_mismatch",
            "unknown_compression",
            "compression_unavailable",
            "too_large",
            "decompress",
            "checksum",
            "key_mismatch",
            "deserialize",
        ]
    );
    let unique: BTreeSet<_> = FRAME_ERROR_REASONS.iter().collect();
    assert_eq!(unique.len(), FRAME_ERROR_REASONS.len());
}

#[test]
fn frame_error_is_a_std_error() {
    let error =
        decode_frame::<Bytes>(&key("k"), &RawBytes, &Compression::none(), b"nope").unwrap_err();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error.clone());
    assert!(boxed.to_string().contains("bad_magic"));
    assert!(format!("{error:?}").contains("BadMagic"));
    let built = FrameError::new(FrameErrorReason::Checksum, "by hand");
    assert_eq!(built.reason(), FrameErrorReason::Checksum);
    assert_eq!(built.detail(), "by hand");
}

#[test]
fn key_echo_mismatch_is_detected_and_long_keys_round_trip() {
    let long = "k".repeat(CacheKey::MAX_LEN);
    let long = key(&long);
    let value = Bytes::from_static(b"v");
    let frame = encode_frame(&long, &RawBytes, &Compression::none(), &value).unwrap();
    let back: Bytes = decode_frame(&long, &RawBytes, &Compression::none(), &frame).unwrap();
    assert_eq!(back, value);

    let prefix = key(&"k".repeat(CacheKey::MAX_LEN - 1));
    let error =
        decode_frame::<Bytes>(&prefix, &RawBytes, &Compression::none(), &frame).unwrap_err();
    assert_eq!(error.reason(), FrameErrorReason::KeyMismatch);
}

#[cfg(all(feature = "json", feature = "postcard"))]
#[test]
fn a_json_frame_read_by_postcard_is_a_codec_mismatch() {
    let key = key("user:42");
    let frame = encode_frame(&key, &Json, &Compression::none(), &user(2)).unwrap();
    let error = decode_frame::<UserV1>(&key, &Postcard, &Compression::none(), &frame).unwrap_err();
    assert_eq!(error.reason(), FrameErrorReason::CodecMismatch);
    assert_eq!(error.reason().as_str(), "codec_mismatch");
    let frame = encode_frame(&key, &Postcard, &Compression::none(), &user(2)).unwrap();
    let error = decode_frame::<UserV1>(&key, &Json, &Compression::none(), &frame).unwrap_err();
    assert_eq!(error.reason(), FrameErrorReason::CodecMismatch);
}

#[cfg(feature = "postcard")]
#[test]
fn postcard_changed_shapes_are_deserialize_errors() {
    let key = key("user:42");
    for compression in compressions() {
        let v1 = encode_frame(&key, &Postcard, &compression, &user(3)).unwrap();
        let error = decode_frame::<UserV2>(&key, &Postcard, &compression, &v1).unwrap_err();
        assert_eq!(error.reason(), FrameErrorReason::Deserialize, "{error}");

        // The other way round, postcard reads v1's fields and finds bytes left over.
        let v2 = UserV2 {
            id: 1,
            name: "Ada".to_owned(),
            tags: vec![],
            email: "ada@example.com".to_owned(),
            age: 36,
        };
        let v2 = encode_frame(&key, &Postcard, &compression, &v2).unwrap();
        let error = decode_frame::<UserV1>(&key, &Postcard, &compression, &v2).unwrap_err();
        assert_eq!(error.reason(), FrameErrorReason::Deserialize, "{error}");
        assert!(error.detail().contains("trailing"), "{error}");
    }
}

#[cfg(feature = "postcard")]
#[test]
fn postcard_rejects_trailing_bytes() {
    let mut bytes = Vec::new();
    Codec::<u32>::encode(&Postcard, &7, &mut bytes).unwrap();
    assert_eq!(Codec::<u32>::decode(&Postcard, &bytes).unwrap(), 7);
    bytes.push(0);
    let error = Codec::<u32>::decode(&Postcard, &bytes).unwrap_err();
    assert_eq!(error.codec(), "postcard");
    assert!(error.message().contains("trailing"));
}

#[cfg(feature = "json")]
#[test]
fn json_changed_shapes_are_deserialize_errors() {
    let key = key("user:42");
    for compression in compressions() {
        let v1 = encode_frame(&key, &Json, &compression, &user(3)).unwrap();
        let error = decode_frame::<UserV2>(&key, &Json, &compression, &v1).unwrap_err();
        assert_eq!(error.reason(), FrameErrorReason::Deserialize, "{error}");
        let error = decode_frame::<u64>(&key, &Json, &compression, &v1).unwrap_err();
        assert_eq!(error.reason(), FrameErrorReason::Deserialize, "{error}");
    }
}

#[cfg(feature = "json")]
#[test]
fn json_encode_failures_are_the_codecs_error() {
    let value = HashMap::from([((1u8, 2u8), 3u8)]);
    let error = encode_frame(&key("k"), &Json, &Compression::none(), &value).unwrap_err();
    assert_eq!(error.codec(), "json");
}

/// A codec that encodes frames itself while encoding, to show the per-thread buffers are not
/// shared with a nested call.
#[derive(Debug)]
struct Nested;

impl Codec<Bytes> for Nested {
    fn id(&self) -> u8 {
        200
    }

    fn name(&self) -> &'static str {
        "nested"
    }

    fn encode(&self, value: &Bytes, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let inner = encode_frame(&key("inner"), &RawBytes, &Compression::zstd(1), value)?;
        out.extend_from_slice(&inner);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Bytes, CodecError> {
        decode_frame(&key("inner"), &RawBytes, &Compression::none(), bytes)
            .map_err(|error| CodecError::new("nested", error))
    }
}

#[test]
fn codecs_may_use_frames_themselves() {
    for compression in compressions() {
        round_trip(&Nested, &compression, &Bytes::from(text(5000)));
    }
}

/// A frame whose body is `body`, compressed with `algorithm`, claiming `claimed` decoded bytes.
#[cfg(any(feature = "zstd", feature = "lz4"))]
fn bomb_frame(algorithm: CompressionAlgorithm, body: &[u8], claimed: u32) -> Vec<u8> {
    build_frame(RawBytes::ID, algorithm.id(), claimed, b"bomb", body)
}

/// Decodes a bomb and checks the reason and that nothing close to its real size was allocated.
#[cfg(any(feature = "zstd", feature = "lz4"))]
fn defuse(
    frame: &[u8],
    compression: &Compression,
    expected: FrameErrorReason,
    bound: usize,
) -> usize {
    let key = key("bomb");
    let (result, _, largest) = allocations(|| {
        decode_frame::<Bytes>(&key, &RawBytes, compression, frame).map(|bytes| bytes.len())
    });
    let error = result.unwrap_err();
    assert_eq!(error.reason(), expected, "{error}");
    assert!(largest <= bound, "allocated {largest} bytes, bound {bound}");
    largest
}

#[cfg(feature = "zstd")]
const BOMB: usize = 256 << 20;

#[cfg(feature = "zstd")]
#[test]
fn zstd_bombs_are_rejected_without_allocating_their_size() {
    use std::io::Write;

    // 256 MiB of zeros, streamed into a few KiB.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..BOMB / chunk.len() {
        encoder.write_all(&chunk).unwrap();
    }
    let body = encoder.finish().unwrap();
    assert!(body.len() < BOMB / 1000, "{} bytes", body.len());
    bombs(CompressionAlgorithm::Zstd { level: 1 }, &body);
}

#[cfg(feature = "lz4")]
#[test]
fn lz4_bombs_are_rejected_without_allocating_their_size() {
    // LZ4 blocks expand at most about 255 times: 16 MiB of zeros.
    let body = lz4_flex::block::compress(&vec![0u8; 16 << 20]);
    bombs(CompressionAlgorithm::Lz4, &body);
}

#[cfg(any(feature = "zstd", feature = "lz4"))]
fn bombs(algorithm: CompressionAlgorithm, body: &[u8]) {
    let default = Compression::none();
    // Claims a small size, expands to much more: stops at the claimed size.
    defuse(
        &bomb_frame(algorithm, body, 1000),
        &default,
        FrameErrorReason::Decompress,
        64 << 10,
    );
    // Claims the reader's whole bound, still expands past it: at most the bound is allocated.
    let bounded = Compression::none().max_decoded(4 << 20);
    let largest = defuse(
        &bomb_frame(algorithm, body, 4 << 20),
        &bounded,
        FrameErrorReason::Decompress,
        (4 << 20) + (64 << 10),
    );
    // The counter does see the output buffer: the bounds above are not vacuous.
    assert!(largest >= 4 << 20, "{largest}");
    // Claims more than the reader accepts: rejected before decompressing.
    defuse(
        &bomb_frame(algorithm, body, (64 << 20) + 1),
        &default,
        FrameErrorReason::TooLarge,
        64 << 10,
    );
    defuse(
        &bomb_frame(algorithm, body, u32::MAX),
        &default,
        FrameErrorReason::TooLarge,
        64 << 10,
    );
    // Claims more than it expands to: a decompression error, not a short value.
    let honest = Compression::none();
    let small = match algorithm {
        #[cfg(feature = "zstd")]
        CompressionAlgorithm::Zstd { .. } => zstd::bulk::compress(&text(1000), 1).unwrap(),
        #[cfg(feature = "lz4")]
        CompressionAlgorithm::Lz4 => lz4_flex::block::compress(&text(1000)),
        _ => unreachable!(),
    };
    defuse(
        &bomb_frame(algorithm, &small, 1001),
        &honest,
        FrameErrorReason::Decompress,
        64 << 10,
    );
    let frame = bomb_frame(algorithm, &small, 1000);
    let back: Bytes = decode_frame(&key("bomb"), &RawBytes, &honest, &frame).unwrap();
    assert_eq!(back, text(1000));
}

#[test]
fn encoding_allocates_only_the_frame() {
    let key = key("user:42");
    let value = Bytes::from(text(5000));
    for compression in compressions() {
        // The first call on this thread sets up its reusable buffers.
        encode_frame(&key, &RawBytes, &compression, &value).unwrap();
        let (frame, count, largest) =
            allocations(|| encode_frame(&key, &RawBytes, &compression, &value).unwrap());
        if compression.algorithm() == CompressionAlgorithm::Lz4 {
            // lz4_flex allocates its hash table on each call (zstd's contexts live in C memory).
            assert_eq!(count, 2, "{compression:?}");
        } else {
            assert_eq!(count, 1, "{compression:?}");
            assert_eq!(largest, frame.len(), "{compression:?}");
        }
    }
}
