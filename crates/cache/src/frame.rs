//! The value frame: the bytes a typed cache stores for one value in the remote tiers.
//!
//! A typed cache turns a value into bytes with a [`Codec`], optionally compresses them, and wraps
//! them in a frame: a small header that says which codec and which compression wrote the body,
//! how long it is before and after compression, which key it was written for, and a checksum.
//! The frame is the payload of the [`CacheValue`](tierkit_core::CacheValue) that a remote tier
//! stores; the tier wraps it in its own envelope, with the timestamps.
//!
//! Remote tiers hold bytes that may come from another program, another version of the value's
//! type, another codec or a truncated write. [`decode_frame`] returns a value only from a frame
//! that [`encode_frame`] wrote for the same key with a codec of the same id, whole and unaltered;
//! anything else is a [`FrameError`] whose [`FrameErrorReason`] a cache counts as a miss. It never
//! panics, whatever the input.
//!
//! Most users never call these functions: the typed cache does. They are public for tools that
//! read or write a cache's remote entries themselves.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 3 | magic `TKF` |
//! | 3 | 1 | frame version: 1 |
//! | 4 | 1 | codec id ([`Codec::id`]) |
//! | 5 | 1 | compression id: 0 none, 1 zstd, 2 lz4 ([`CompressionAlgorithm::id`]) |
//! | 6 | 4 | body length as stored (`u32`) |
//! | 10 | 4 | decoded body length: the codec's output before compression (`u32`) |
//! | 14 | 2 | key length, `k` (`u16`) |
//! | 16 | `k` | the key's bytes ([`CacheKey::as_bytes`]), echoed |
//! | 16 + `k` | 4 | CRC-32 (IEEE, as `crc32fast` computes it) of bytes `0 .. 16 + k`, then of the body |
//! | 20 + `k` | stored length | body: the codec's output, compressed or not |
//!
//! A frame is exactly `20 + k + stored length` bytes. The checksum sits before the body so that
//! the header is complete before the first body byte (a reader of a stream can check it as the
//! body goes by); it covers every other byte of the frame. An uncompressed body has both lengths
//! equal. The fixed part of the header is [`HEADER_LEN`] bytes.
//!
//! # Compression
//!
//! [`Compression`] says how a writer compresses and how much a reader accepts. A writer
//! compresses only when the encoded value is at least [`Compression::min_size_bytes`] long, the
//! algorithm is compiled in ([`CompressionAlgorithm::is_available`]) and the compressed body is
//! strictly smaller; otherwise it stores the body raw (compression id 0). Writing never fails
//! because of compression.
//!
//! A reader decodes every algorithm it has compiled in, whatever algorithm its own
//! [`Compression`] writes with: only its bound on the decoded size applies
//! ([`decoded_bound`](Compression::decoded_bound): by default [`DEFAULT_DECODED_FACTOR`] times the
//! payload cap). A frame compressed with an algorithm this build lacks is
//! [`FrameErrorReason::CompressionUnavailable`].
//!
//! # What decoding checks, in order
//!
//! Decoding reads the frame left to right and reports the first fault it finds:
//!
//! 1. the input starts like the magic, else [`BadMagic`](FrameErrorReason::BadMagic);
//! 2. the fixed header is there, else [`Truncated`](FrameErrorReason::Truncated);
//! 3. the version is 1, else [`UnknownVersion`](FrameErrorReason::UnknownVersion);
//! 4. the input is exactly as long as the header says, else
//!    [`Truncated`](FrameErrorReason::Truncated) (shorter or longer);
//! 5. the codec id is the reader's, else [`CodecMismatch`](FrameErrorReason::CodecMismatch);
//! 6. the compression id is one this format defines, else
//!    [`UnknownCompression`](FrameErrorReason::UnknownCompression);
//! 7. the decoded length is at most the reader's `max_decoded`, else
//!    [`TooLarge`](FrameErrorReason::TooLarge), before any decompression;
//! 8. the key echo is the key asked for, else [`KeyMismatch`](FrameErrorReason::KeyMismatch);
//! 9. the checksum matches, else [`Checksum`](FrameErrorReason::Checksum);
//! 10. the compression is compiled in, else
//!     [`CompressionUnavailable`](FrameErrorReason::CompressionUnavailable);
//! 11. the body decompresses to exactly the decoded length, else
//!     [`Decompress`](FrameErrorReason::Decompress): decompression writes into a buffer of the
//!     decoded length and fails as soon as the output would outgrow it, so a frame whose header
//!     lies about its size (a decompression bomb) never allocates more than `max_decoded` bytes;
//! 12. the codec decodes the body, else [`Deserialize`](FrameErrorReason::Deserialize).
//!
//! Checks 1 to 8 cost no more than reading the header and comparing the key, so frames of another
//! codec, of another key, or too large are turned away without hashing the body.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tierkit_core::CacheKey;

use crate::codec::{Codec, CodecError};

/// The magic bytes that open every frame.
pub const MAGIC: [u8; 3] = *b"TKF";
/// The frame version written by [`encode_frame`], the only one [`decode_frame`] reads.
pub const VERSION: u8 = 1;
/// Bytes of the fixed part of the header, before the key echo: magic, version, codec id,
/// compression id, both lengths and the key length.
pub const HEADER_LEN: usize = 3 + 1 + 1 + 1 + 4 + 4 + 2;
/// Bytes of the checksum, between the key echo and the body.
const CRC_LEN: usize = 4;
/// The longest body a frame holds (its length fields are 32 bits): 4 GiB - 1.
pub const MAX_BODY_LEN: usize = u32::MAX as usize;
/// The longest key a frame echoes (its length field is 16 bits). Every [`CacheKey`] is shorter.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// The default of [`Compression::min_size`]: 1 KiB.
pub const DEFAULT_MIN_SIZE: usize = 1024;
/// A reader's default bound on a decoded body is this many times the largest payload it writes
/// ([`FetchOptions::max_payload`](crate::FetchOptions::max_payload)): see
/// [`Compression::decoded_bound`].
pub const DEFAULT_DECODED_FACTOR: usize = 4;
/// The bound of [`Compression::max_decoded_bytes`] when [`Compression::max_decoded`] is not
/// set: [`DEFAULT_DECODED_FACTOR`] times the default `max_payload` (1 MiB), 4 MiB.
pub const DEFAULT_MAX_DECODED: usize = DEFAULT_DECODED_FACTOR * crate::options::DEFAULT_MAX_PAYLOAD;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
const COMPRESSION_LZ4: u8 = 2;

/// A compression algorithm for frame bodies.
///
/// Every variant exists whatever the crate's features; an algorithm works only when its feature
/// (`zstd`, `lz4`) is compiled in, which [`is_available`](Self::is_available) tells. A writer
/// configured with an unavailable algorithm stores its bodies raw; a reader turns away frames
/// compressed with it ([`FrameErrorReason::CompressionUnavailable`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompressionAlgorithm {
    /// No compression: bodies are stored as the codec wrote them. Id 0.
    #[default]
    None,
    /// [zstd](https://facebook.github.io/zstd/) at a level: `1` (fast) to `19` (small), `0` for
    /// zstd's default (3), negative levels for faster still. zstd clamps levels outside its
    /// range. Id 1; needs the `zstd` feature.
    Zstd {
        /// The compression level.
        level: i32,
    },
    /// [LZ4](https://lz4.org/) block compression (lz4_flex, pure Rust): fast, and larger than
    /// zstd. Id 2; needs the `lz4` feature.
    Lz4,
}

impl CompressionAlgorithm {
    /// The id stored in the frames this algorithm compresses: 0 none, 1 zstd, 2 lz4.
    #[must_use]
    pub const fn id(&self) -> u8 {
        match self {
            Self::None => COMPRESSION_NONE,
            Self::Zstd { .. } => COMPRESSION_ZSTD,
            Self::Lz4 => COMPRESSION_LZ4,
        }
    }

    /// A short name for traces and metrics: `"none"`, `"zstd"` or `"lz4"`.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd { .. } => "zstd",
            Self::Lz4 => "lz4",
        }
    }

    /// Whether this build can compress and decompress with the algorithm: `None` always, the
    /// others when their feature is compiled in.
    #[must_use]
    pub const fn is_available(&self) -> bool {
        match self {
            Self::None => true,
            Self::Zstd { .. } => cfg!(feature = "zstd"),
            Self::Lz4 => cfg!(feature = "lz4"),
        }
    }
}

impl fmt::Display for CompressionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zstd { level } => write!(f, "zstd (level {level})"),
            other => f.write_str(other.name()),
        }
    }
}

/// How a cache compresses the bodies it writes, and how large a body it accepts to read.
///
/// ```
/// # use tierkit_cache::Compression;
/// let compression = Compression::zstd(3).min_size(4096);
/// assert_eq!(compression.min_size_bytes(), 4096);
/// // By default the decoded bound follows the payload cap: four times it.
/// assert_eq!(compression.decoded_bound(1 << 20), 4 << 20);
/// assert_eq!(compression.max_decoded(8 << 20).decoded_bound(1 << 20), 8 << 20);
/// assert_eq!(Compression::default(), Compression::none());
/// ```
///
/// A writer compresses a body only when it is at least [`min_size_bytes`](Self::min_size_bytes)
/// long, the algorithm is available, and the result is strictly smaller; otherwise it stores the
/// body raw. A reader decodes any algorithm it has compiled in, and rejects a frame whose decoded
/// body would be longer than its [`decoded_bound`](Self::decoded_bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compression {
    algorithm: CompressionAlgorithm,
    min_size: usize,
    /// `None`: [`DEFAULT_DECODED_FACTOR`] times the read's `max_payload`.
    max_decoded: Option<usize>,
}

impl Default for Compression {
    fn default() -> Self {
        Self::none()
    }
}

impl Compression {
    /// Compression with `algorithm`, a minimum size of [`DEFAULT_MIN_SIZE`] and a maximum
    /// decoded size of [`DEFAULT_DECODED_FACTOR`] times the payload cap (see
    /// [`decoded_bound`](Self::decoded_bound)).
    #[must_use]
    pub const fn new(algorithm: CompressionAlgorithm) -> Self {
        Self {
            algorithm,
            min_size: DEFAULT_MIN_SIZE,
            max_decoded: None,
        }
    }

    /// No compression (the default): bodies are stored raw.
    #[must_use]
    pub const fn none() -> Self {
        Self::new(CompressionAlgorithm::None)
    }

    /// zstd at `level` (see [`CompressionAlgorithm::Zstd`]). Without the `zstd` feature, bodies
    /// are stored raw.
    #[must_use]
    pub const fn zstd(level: i32) -> Self {
        Self::new(CompressionAlgorithm::Zstd { level })
    }

    /// LZ4. Without the `lz4` feature, bodies are stored raw.
    #[must_use]
    pub const fn lz4() -> Self {
        Self::new(CompressionAlgorithm::Lz4)
    }

    /// Compresses only bodies of at least `bytes` bytes (default [`DEFAULT_MIN_SIZE`]): small
    /// values gain little and cost a compression each.
    #[must_use]
    pub const fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }

    /// Rejects frames whose decoded body is longer than `bytes`, before decompressing them,
    /// with reason [`TooLarge`](FrameErrorReason::TooLarge), whatever the payload cap. Default:
    /// [`DEFAULT_DECODED_FACTOR`] times the cap (see [`decoded_bound`](Self::decoded_bound)).
    /// Decompression never writes more than the decoded length the header announces, so this
    /// also bounds what a reader allocates for one frame. A [`Cache`](crate::Cache) does not
    /// write what its own readers would reject: a value whose decoded body is above the bound
    /// is kept in L1 only and counted as `oversize`, like a frame above `max_payload`.
    #[must_use]
    pub const fn max_decoded(mut self, bytes: usize) -> Self {
        self.max_decoded = Some(bytes);
        self
    }

    /// The algorithm writers use.
    #[must_use]
    pub const fn algorithm(&self) -> CompressionAlgorithm {
        self.algorithm
    }

    /// The smallest body that writers compress.
    #[must_use]
    pub const fn min_size_bytes(&self) -> usize {
        self.min_size
    }

    /// The longest decoded body that readers accept with the default payload cap: the bound set
    /// with [`max_decoded`](Self::max_decoded), else [`DEFAULT_MAX_DECODED`]. This is the bound
    /// of [`decode_frame`] and [`decode_frame_entry`].
    #[must_use]
    pub const fn max_decoded_bytes(&self) -> usize {
        self.decoded_bound(crate::options::DEFAULT_MAX_PAYLOAD)
    }

    /// The longest decoded body that a reader whose payload cap is `max_payload` accepts: the
    /// bound set with [`max_decoded`](Self::max_decoded), else `max_payload` times
    /// [`DEFAULT_DECODED_FACTOR`] (saturating). A [`Cache`](crate::Cache) reads and writes with
    /// the bound of the call's `max_payload`, so a ~2 KB compressed frame cannot make a read
    /// allocate more than a few payloads.
    #[must_use]
    pub const fn decoded_bound(&self, max_payload: usize) -> usize {
        match self.max_decoded {
            Some(bytes) => bytes,
            None => max_payload.saturating_mul(DEFAULT_DECODED_FACTOR),
        }
    }
}

/// Why bytes are not a frame of the value asked for. Caches count each reason as a miss.
///
/// [`index`](Self::index) numbers the reasons in the order of [`FRAME_ERROR_REASONS`], for
/// arrays of counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameErrorReason {
    /// The input is shorter or longer than its header says (a truncated or padded write).
    Truncated,
    /// The input does not start with the magic bytes: not a frame.
    BadMagic,
    /// A frame version this build does not read.
    UnknownVersion,
    /// The frame was written by a codec with another id than the reader's.
    CodecMismatch,
    /// A compression id this format does not define.
    UnknownCompression,
    /// The body is compressed with an algorithm this build lacks (its feature is off).
    CompressionUnavailable,
    /// The decoded body would be longer than the reader's `max_decoded`.
    TooLarge,
    /// The body does not decompress to exactly the decoded length the header announces.
    Decompress,
    /// The checksum does not match: bytes were altered.
    Checksum,
    /// The frame was written for another key.
    KeyMismatch,
    /// The codec failed to decode the body: typically a value type that changed shape.
    Deserialize,
}

/// The names of every [`FrameErrorReason`], at their [`index`](FrameErrorReason::index).
pub const FRAME_ERROR_REASONS: [&str; 11] = [
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
];

impl FrameErrorReason {
    /// Every reason, at its [`index`](Self::index).
    pub const ALL: [FrameErrorReason; 11] = [
        Self::Truncated,
        Self::BadMagic,
        Self::UnknownVersion,
        Self::CodecMismatch,
        Self::UnknownCompression,
        Self::CompressionUnavailable,
        Self::TooLarge,
        Self::Decompress,
        Self::Checksum,
        Self::KeyMismatch,
        Self::Deserialize,
    ];

    /// The reason's position in [`FRAME_ERROR_REASONS`] (and [`ALL`](Self::ALL)).
    #[must_use]
    pub const fn index(&self) -> usize {
        match self {
            Self::Truncated => 0,
            Self::BadMagic => 1,
            Self::UnknownVersion => 2,
            Self::CodecMismatch => 3,
            Self::UnknownCompression => 4,
            Self::CompressionUnavailable => 5,
            Self::TooLarge => 6,
            Self::Decompress => 7,
            Self::Checksum => 8,
            Self::KeyMismatch => 9,
            Self::Deserialize => 10,
        }
    }

    /// The reason's name, in snake case (`"key_mismatch"`), for metrics labels and traces.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        FRAME_ERROR_REASONS[self.index()]
    }
}

impl fmt::Display for FrameErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes are not a frame of the value asked for: a [`FrameErrorReason`] and a detail for humans.
///
/// Cheap to clone.
#[derive(Clone, Debug, thiserror::Error)]
#[error("invalid value frame ({reason}): {detail}")]
pub struct FrameError {
    reason: FrameErrorReason,
    detail: Arc<str>,
}

impl FrameError {
    /// An error for `reason`, with a detail for humans.
    pub fn new(reason: FrameErrorReason, detail: impl fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string().into(),
        }
    }

    /// Why the bytes were turned away.
    #[must_use]
    pub fn reason(&self) -> FrameErrorReason {
        self.reason
    }

    /// What exactly was wrong, for humans.
    #[must_use]
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Encodes `value` with `codec` into a frame for `key`, compressed as `compression` says.
///
/// The value is encoded once; the frame is one allocation of exactly its length (the codec
/// writes into a reused per-thread buffer first).
///
/// # Errors
///
/// The codec's error when it fails to encode the value, and a [`CodecError`] of the codec's
/// name when the encoded value is longer than [`MAX_BODY_LEN`] or the key longer than
/// [`MAX_KEY_LEN`]. Compression never fails: when it cannot help, the body is stored raw.
pub fn encode_frame<V: 'static>(
    key: &CacheKey,
    codec: &dyn Codec<V>,
    compression: &Compression,
    value: &V,
) -> Result<Bytes, CodecError> {
    let key = key.as_bytes();
    let key_len = u16::try_from(key.len()).map_err(|_| {
        CodecError::new(
            codec.name(),
            format_args!(
                "the key is {} bytes, longer than a value frame holds ({MAX_KEY_LEN})",
                key.len()
            ),
        )
    })?;
    with_scratch(|scratch| {
        let Scratch { body, packed } = scratch;
        body.clear();
        codec.encode(value, body)?;
        let decoded_len = u32::try_from(body.len()).map_err(|_| {
            CodecError::new(
                codec.name(),
                format_args!(
                    "the value encodes to {} bytes, longer than a value frame holds ({MAX_BODY_LEN})",
                    body.len()
                ),
            )
        })?;
        let algorithm = compression.algorithm();
        let compressed = !body.is_empty()
            && body.len() >= compression.min_size_bytes()
            && compress(algorithm, body, packed);
        let (compression_id, stored): (u8, &[u8]) = if compressed {
            (algorithm.id(), packed)
        } else {
            (COMPRESSION_NONE, body)
        };
        // Strictly smaller than the body, whose length fits.
        let stored_len = u32::try_from(stored.len()).unwrap_or(decoded_len);
        Ok(write_frame(
            key,
            key_len,
            codec.id(),
            compression_id,
            decoded_len,
            stored_len,
            stored,
        ))
    })
}

/// The codec id of a tombstone frame: "this key has no value", with an empty body.
pub const ABSENT_CODEC_ID: u8 = 0;

/// A tombstone frame for `key`: the key is known to have no value (negative caching). Every
/// reader, whatever its codec, reads it as absent ([`decode_frame_entry`]).
///
/// # Errors
///
/// A [`CodecError`] when the key is longer than [`MAX_KEY_LEN`].
pub fn encode_absent_frame(key: &CacheKey) -> Result<Bytes, CodecError> {
    let key = key.as_bytes();
    let key_len = u16::try_from(key.len()).map_err(|_| {
        CodecError::new(
            "absent",
            format_args!(
                "the key is {} bytes, longer than a value frame holds ({MAX_KEY_LEN})",
                key.len()
            ),
        )
    })?;
    Ok(write_frame(
        key,
        key_len,
        ABSENT_CODEC_ID,
        COMPRESSION_NONE,
        0,
        0,
        &[],
    ))
}

/// The decoded body length a frame announces (0 for bytes that are not a frame): what a
/// reader's bound is checked against.
pub(crate) fn announced_decoded_len(frame: &[u8]) -> usize {
    Header::parse(frame).map_or(0, |header| header.decoded_len)
}

/// Lays out a frame: the header, the key, the CRC of both and of the body, the body.
fn write_frame(
    key: &[u8],
    key_len: u16,
    codec_id: u8,
    compression_id: u8,
    decoded_len: u32,
    stored_len: u32,
    stored: &[u8],
) -> Bytes {
    let mut frame = Vec::with_capacity(HEADER_LEN + key.len() + CRC_LEN + stored.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(codec_id);
    frame.push(compression_id);
    frame.extend_from_slice(&stored_len.to_le_bytes());
    frame.extend_from_slice(&decoded_len.to_le_bytes());
    frame.extend_from_slice(&key_len.to_le_bytes());
    frame.extend_from_slice(key);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame);
    crc.update(stored);
    frame.extend_from_slice(&crc.finalize().to_le_bytes());
    frame.extend_from_slice(stored);
    Bytes::from(frame)
}

/// Decodes the entry of `key` from `frame`: `Some(value)`, or `None` for a tombstone
/// ([`encode_absent_frame`]).
///
/// # Errors
///
/// As [`decode_frame`]; a tombstone is checked for its key and checksum too.
pub fn decode_frame_entry<V: 'static>(
    key: &CacheKey,
    codec: &dyn Codec<V>,
    compression: &Compression,
    frame: &[u8],
) -> Result<Option<V>, FrameError> {
    let header = Header::parse(frame)?;
    if header.codec_id != ABSENT_CODEC_ID {
        return decode_frame(key, codec, compression, frame).map(Some);
    }
    if header.key != key.as_bytes() {
        return Err(FrameError::new(
            FrameErrorReason::KeyMismatch,
            format_args!(
                "a tombstone written for {:?}, read for {:?}",
                String::from_utf8_lossy(header.key),
                key.as_str()
            ),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(header.checked);
    crc.update(header.body);
    if crc.finalize() != header.crc {
        return Err(FrameError::new(
            FrameErrorReason::Checksum,
            "a tombstone whose checksum does not match",
        ));
    }
    if !header.body.is_empty() || header.decoded_len != 0 {
        return Err(FrameError::new(
            FrameErrorReason::Deserialize,
            "a tombstone with a body",
        ));
    }
    Ok(None)
}

/// Decodes the value of `key` from `frame` with `codec`.
///
/// `compression` gives only the bound on the decoded size
/// ([`max_decoded_bytes`](Compression::max_decoded_bytes); a cache passes the bound of the
/// read's payload cap, [`decoded_bound`](Compression::decoded_bound)): a frame compressed with
/// any algorithm compiled in is read, whatever algorithm `compression` writes with.
///
/// # Errors
///
/// A [`FrameError`] when `frame` is not, whole and unaltered, a frame that [`encode_frame`]
/// wrote for `key` with a codec of `codec`'s id, or when the body is too large or does not
/// decode; the [module docs](self) list the checks in order. Never panics.
pub fn decode_frame<V: 'static>(
    key: &CacheKey,
    codec: &dyn Codec<V>,
    compression: &Compression,
    frame: &[u8],
) -> Result<V, FrameError> {
    let header = Header::parse(frame)?;

    if header.codec_id != codec.id() {
        return Err(FrameError::new(
            FrameErrorReason::CodecMismatch,
            format_args!(
                "written by codec id {}, read with {} (id {})",
                header.codec_id,
                codec.name(),
                codec.id()
            ),
        ));
    }
    let algorithm = match header.compression_id {
        COMPRESSION_NONE => CompressionAlgorithm::None,
        COMPRESSION_ZSTD => CompressionAlgorithm::Zstd { level: 0 },
        COMPRESSION_LZ4 => CompressionAlgorithm::Lz4,
        other => {
            return Err(FrameError::new(
                FrameErrorReason::UnknownCompression,
                format_args!("compression id {other}"),
            ));
        }
    };
    let max_decoded = compression.max_decoded_bytes();
    if header.decoded_len > max_decoded {
        return Err(FrameError::new(
            FrameErrorReason::TooLarge,
            format_args!(
                "the body decodes to {} bytes, more than the {max_decoded} accepted",
                header.decoded_len
            ),
        ));
    }
    if header.key != key.as_bytes() {
        return Err(FrameError::new(
            FrameErrorReason::KeyMismatch,
            format_args!(
                "written for {:?}, read for {:?}",
                String::from_utf8_lossy(header.key),
                key.as_str()
            ),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(header.checked);
    crc.update(header.body);
    let computed = crc.finalize();
    if computed != header.crc {
        return Err(FrameError::new(
            FrameErrorReason::Checksum,
            format_args!(
                "checksum {computed:#010x}, the frame says {:#010x}",
                header.crc
            ),
        ));
    }
    if !algorithm.is_available() {
        return Err(FrameError::new(
            FrameErrorReason::CompressionUnavailable,
            format_args!(
                "the body is compressed with {}, and this build lacks the `{}` feature",
                algorithm.name(),
                algorithm.name()
            ),
        ));
    }

    let deserialize = |body: &[u8]| {
        codec
            .decode(body)
            .map_err(|error| FrameError::new(FrameErrorReason::Deserialize, error))
    };
    if algorithm == CompressionAlgorithm::None {
        if header.body.len() != header.decoded_len {
            return Err(FrameError::new(
                FrameErrorReason::Decompress,
                format_args!(
                    "the raw body is {} bytes, the header says it decodes to {}",
                    header.body.len(),
                    header.decoded_len
                ),
            ));
        }
        return deserialize(header.body);
    }
    with_scratch(|scratch| {
        let out = &mut scratch.body;
        out.clear();
        out.resize(header.decoded_len, 0);
        let written = decompress(algorithm, header.body, out).map_err(|error| {
            FrameError::new(
                FrameErrorReason::Decompress,
                format_args!(
                    "{} body of {} bytes does not decompress into {} bytes: {error}",
                    algorithm.name(),
                    header.body.len(),
                    header.decoded_len
                ),
            )
        })?;
        if written != header.decoded_len {
            return Err(FrameError::new(
                FrameErrorReason::Decompress,
                format_args!(
                    "{} body decompresses to {written} bytes, the header says {}",
                    algorithm.name(),
                    header.decoded_len
                ),
            ));
        }
        deserialize(out)
    })
}

/// The fields of a frame whose structure (magic, version, lengths) is valid.
struct Header<'a> {
    codec_id: u8,
    compression_id: u8,
    decoded_len: usize,
    key: &'a [u8],
    crc: u32,
    /// Every byte before the checksum.
    checked: &'a [u8],
    body: &'a [u8],
}

impl<'a> Header<'a> {
    fn parse(frame: &'a [u8]) -> Result<Self, FrameError> {
        let truncated = |needed: usize| {
            FrameError::new(
                FrameErrorReason::Truncated,
                format_args!("{} bytes, a frame needs {needed}", frame.len()),
            )
        };
        let magic_len = frame.len().min(MAGIC.len());
        if frame.get(..magic_len) != MAGIC.get(..magic_len) {
            return Err(FrameError::new(
                FrameErrorReason::BadMagic,
                "the bytes do not start with `TKF`",
            ));
        }
        let Some((fixed, _)) = frame.split_first_chunk::<HEADER_LEN>() else {
            return Err(truncated(HEADER_LEN));
        };
        let [
            _,
            _,
            _,
            version,
            codec_id,
            compression_id,
            s0,
            s1,
            s2,
            s3,
            d0,
            d1,
            d2,
            d3,
            k0,
            k1,
        ] = *fixed;
        if version != VERSION {
            return Err(FrameError::new(
                FrameErrorReason::UnknownVersion,
                format_args!("frame version {version}, this build reads {VERSION}"),
            ));
        }
        let stored_len = to_usize(u32::from_le_bytes([s0, s1, s2, s3]));
        let decoded_len = to_usize(u32::from_le_bytes([d0, d1, d2, d3]));
        let key_len = usize::from(u16::from_le_bytes([k0, k1]));

        let crc_at = HEADER_LEN + key_len;
        let body_at = crc_at + CRC_LEN;
        let expected = body_at.saturating_add(stored_len);
        if frame.len() != expected {
            return Err(truncated(expected));
        }
        let (Some(checked), Some(key), Some(crc), Some(body)) = (
            frame.get(..crc_at),
            frame.get(HEADER_LEN..crc_at),
            frame.get(crc_at..body_at),
            frame.get(body_at..),
        ) else {
            return Err(truncated(expected));
        };
        let Ok(crc) = <[u8; CRC_LEN]>::try_from(crc) else {
            return Err(truncated(expected));
        };
        Ok(Self {
            codec_id,
            compression_id,
            decoded_len,
            key,
            crc: u32::from_le_bytes(crc),
            checked,
            body,
        })
    }
}

/// A `u32` length as a `usize`, saturating on (hypothetical) 16-bit targets.
fn to_usize(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

/// Compresses `body` into `packed` with `algorithm`; true when the result is available and
/// strictly smaller than `body`.
fn compress(algorithm: CompressionAlgorithm, body: &[u8], packed: &mut Vec<u8>) -> bool {
    #[cfg(not(any(feature = "zstd", feature = "lz4")))]
    let _ = body;
    packed.clear();
    match algorithm {
        CompressionAlgorithm::None => false,
        #[cfg(feature = "zstd")]
        CompressionAlgorithm::Zstd { level } => {
            // zstd fails when the output would not fit: a body it cannot shrink stays raw.
            packed.reserve_exact(body.len().saturating_sub(1));
            zstd::bulk::Compressor::new(level)
                .and_then(|mut compressor| compressor.compress_to_buffer(body, packed))
                .is_ok_and(|written| written == packed.len() && written < body.len())
        }
        #[cfg(feature = "lz4")]
        CompressionAlgorithm::Lz4 => {
            packed.resize(lz4_flex::block::get_maximum_output_size(body.len()), 0);
            match lz4_flex::block::compress_into(body, packed) {
                Ok(written) if written < body.len() => {
                    packed.truncate(written);
                    true
                }
                _ => false,
            }
        }
        #[allow(unreachable_patterns)] // Reached only when a compression feature is off.
        _ => false,
    }
}

/// Decompresses `body` with `algorithm` into `out`, whose length is the decoded length: the
/// decompressor fails rather than write past it. Returns the bytes written.
fn decompress(
    algorithm: CompressionAlgorithm,
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, String> {
    match algorithm {
        CompressionAlgorithm::None if body.len() == out.len() => {
            out.copy_from_slice(body);
            Ok(body.len())
        }
        CompressionAlgorithm::None => Err("a raw body of another length".to_owned()),
        #[cfg(feature = "zstd")]
        CompressionAlgorithm::Zstd { .. } => {
            zstd::bulk::decompress_to_buffer(body, out).map_err(|error| error.to_string())
        }
        #[cfg(feature = "lz4")]
        CompressionAlgorithm::Lz4 => {
            lz4_flex::block::decompress_into(body, out).map_err(|error| error.to_string())
        }
        #[allow(unreachable_patterns)] // Reached only when a compression feature is off.
        other => Err(format!("{} is not compiled in", other.name())),
    }
}

/// Per-thread buffers reused across frames, so that encoding allocates only the frame and
/// decoding a compressed body usually allocates nothing.
#[derive(Default)]
struct Scratch {
    /// The codec's output when encoding; the decompressed body when decoding.
    body: Vec<u8>,
    /// The compressed body when encoding.
    packed: Vec<u8>,
}

/// Buffers larger than this are freed after use rather than kept for the next frame.
const SCRATCH_KEEP: usize = 256 << 10;

thread_local! {
    static SCRATCH: Cell<Scratch> = const {
        Cell::new(Scratch {
            body: Vec::new(),
            packed: Vec::new(),
        })
    };
}

/// Runs `f` with this thread's scratch buffers. The buffers are taken out of the thread-local
/// for the call, so a codec that encodes or decodes frames itself (re-entrancy) gets fresh ones
/// instead of a panic.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let result = f(&mut scratch);
    for buffer in [&mut scratch.body, &mut scratch.packed] {
        if buffer.capacity() > SCRATCH_KEEP {
            *buffer = Vec::new();
        } else {
            buffer.clear();
        }
    }
    // Fails only while the thread is being torn down: the buffers are then dropped.
    let _ = SCRATCH.try_with(|cell| cell.set(scratch));
    result
}
