//! The byte format a remote tier stores: a small versioned header, the value's timestamps, an
//! echo of the key, a checksum, and the payload.
//!
//! Remote tiers (Redis, S3) store bytes, and bytes under a shared prefix may come from another
//! program, another version of tierkit, or a truncated write. [`decode`] accepts only what
//! [`encode`] produced, whole and unaltered: anything else is [`Malformed`], which tiers count
//! as a miss. It never panics and never returns another value.
//!
//! Every envelope echoes the key it was written for, and [`decode`] checks the echo against the
//! key it reads for: bytes copied under another key's name (by another program, or through a
//! hashed name that collided) are [`Malformed::KeyMismatch`], never that other key's value.
//!
//! # Layout (version 1, all integers big-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 3 | magic `TKV` |
//! | 1 | format version: 1 |
//! | 1 | flags: bit 0, always set: a key echo follows the header |
//! | 8 | `created_at`, Unix milliseconds |
//! | 8 | `stale_at`, Unix milliseconds |
//! | 8 | `expires_at`, Unix milliseconds |
//! | 4 | payload length |
//! | 4 | CRC-32 (IEEE) of every other byte: the header before this field, the key echo, the payload |
//! | 2 + n | key echo: its length, then the key's bytes |
//! | payload length | payload |
//!
//! Decoding borrows the payload from the input [`Bytes`]: no copy.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::key::CacheKey;
use crate::time::Timestamp;
use crate::value::CacheValue;

/// The magic bytes that open every envelope.
pub const MAGIC: [u8; 3] = *b"TKV";
/// The format version written by [`encode`].
pub const VERSION: u8 = 1;
/// Bytes of the fixed header (everything before the key echo and the payload).
pub const HEADER_LEN: usize = 3 + 1 + 1 + 8 + 8 + 8 + 4 + 4;
/// The largest payload an envelope can carry (the length field is 32 bits): 4 GiB - 1.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

const FLAG_KEY_ECHO: u8 = 1;

/// Why bytes are not a valid envelope. Tiers count each reason as a miss (and report it as
/// [`BackendError::Corrupt`](crate::BackendError::Corrupt) only to callers that asked to see
/// corrupt entries), so this is a reason, not an error type of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// Shorter than the fixed header.
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// Does not start with the magic bytes: not written by tierkit.
    BadMagic,
    /// Written by a format version this build does not read.
    UnsupportedVersion(u8),
    /// Flags this build does not know.
    UnknownFlags(u8),
    /// The lengths in the header do not match the input (a truncated or padded value).
    LengthMismatch {
        /// Length the header announces.
        expected: usize,
        /// Length of the input.
        found: usize,
    },
    /// The checksum does not match: bytes were altered.
    ChecksumMismatch,
    /// The timestamps are out of order.
    BadTimestamps,
    /// The envelope was written for another key (a hashed object name collided, or bytes were
    /// copied between keys), or echoes no key at all.
    KeyMismatch,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::TooShort { len } => {
                write!(f, "too short for an envelope header: {len} bytes")
            }
            Malformed::BadMagic => f.write_str("no tierkit envelope magic"),
            Malformed::UnsupportedVersion(v) => write!(f, "unsupported envelope version {v}"),
            Malformed::UnknownFlags(flags) => write!(f, "unknown envelope flags {flags:#04x}"),
            Malformed::LengthMismatch { expected, found } => {
                write!(
                    f,
                    "length mismatch: the header says {expected} bytes, found {found}"
                )
            }
            Malformed::ChecksumMismatch => f.write_str("checksum mismatch"),
            Malformed::BadTimestamps => f.write_str("timestamps out of order"),
            Malformed::KeyMismatch => f.write_str("the envelope belongs to another key"),
        }
    }
}

impl Malformed {
    /// A stable lower-case name, suitable as a metric label.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Malformed::TooShort { .. } => "too_short",
            Malformed::BadMagic => "bad_magic",
            Malformed::UnsupportedVersion(_) => "unsupported_version",
            Malformed::UnknownFlags(_) => "unknown_flags",
            Malformed::LengthMismatch { .. } => "length_mismatch",
            Malformed::ChecksumMismatch => "checksum_mismatch",
            Malformed::BadTimestamps => "bad_timestamps",
            Malformed::KeyMismatch => "key_mismatch",
        }
    }
}

/// The length of the envelope of `value` written for `key`: the header, the key echo, the
/// payload.
#[must_use]
pub fn encoded_len(value: &CacheValue, key: &CacheKey) -> usize {
    HEADER_LEN + 2 + key.len() + value.payload().len()
}

/// Encodes `value` for `key`, echoing the key inside the envelope (so that [`decode`] can check
/// that the bytes belong to the key they are read for).
///
/// Payloads over [`MAX_PAYLOAD`] and keys over 65,535 bytes cannot be encoded; tiers reject
/// such values before encoding (their own limits are far lower). Here they are clamped, and the
/// resulting envelope fails to decode rather than decoding to another value.
#[must_use]
pub fn encode(value: &CacheValue, key: &CacheKey) -> Bytes {
    let payload = value.payload();
    let mut out = BytesMut::with_capacity(encoded_len(value, key));
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(FLAG_KEY_ECHO);
    out.put_u64(value.created_at().as_unix_millis());
    out.put_u64(value.stale_at().as_unix_millis());
    out.put_u64(value.expires_at().as_unix_millis());
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    let echo_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    crc.update(&echo_len.to_be_bytes());
    crc.update(key.as_bytes());
    crc.update(payload);
    out.put_u32(crc.finalize());
    out.put_u16(echo_len);
    out.put_slice(key.as_bytes());
    out.put_slice(payload);
    out.freeze()
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(buf)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(buf)
}

/// Decodes an envelope read for `key`.
///
/// The envelope's key echo must equal `key`: an envelope of another key, or without an echo,
/// is [`Malformed::KeyMismatch`]. The payload of the returned value shares `bytes`' buffer.
///
/// # Errors
///
/// [`Malformed`] for anything that [`encode`] did not produce whole and unaltered.
pub fn decode(bytes: &Bytes, key: &CacheKey) -> Result<CacheValue, Malformed> {
    let len = bytes.len();
    if len < HEADER_LEN {
        return Err(Malformed::TooShort { len });
    }
    // From here on every fixed-offset read is within HEADER_LEN <= len.
    if bytes[..3] != MAGIC {
        return Err(Malformed::BadMagic);
    }
    if bytes[3] != VERSION {
        return Err(Malformed::UnsupportedVersion(bytes[3]));
    }
    let flags = bytes[4];
    if flags & !FLAG_KEY_ECHO != 0 {
        return Err(Malformed::UnknownFlags(flags));
    }
    let created_at = Timestamp::from_unix_millis(be_u64(bytes, 5));
    let stale_at = Timestamp::from_unix_millis(be_u64(bytes, 13));
    let expires_at = Timestamp::from_unix_millis(be_u64(bytes, 21));
    let payload_len = usize::try_from(be_u32(bytes, 29)).unwrap_or(usize::MAX);
    let checksum = be_u32(bytes, 33);

    let mut at = HEADER_LEN;
    let mut echo: Option<&[u8]> = None;
    if flags & FLAG_KEY_ECHO != 0 {
        if len < at + 2 {
            return Err(Malformed::LengthMismatch {
                expected: at + 2,
                found: len,
            });
        }
        let echo_len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        let end = at + 2 + echo_len;
        if len < end {
            return Err(Malformed::LengthMismatch {
                expected: end,
                found: len,
            });
        }
        echo = Some(&bytes[at + 2..end]);
        at = end;
    }
    let expected = at.saturating_add(payload_len);
    if len != expected {
        return Err(Malformed::LengthMismatch {
            expected,
            found: len,
        });
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..HEADER_LEN - 4]);
    crc.update(&bytes[HEADER_LEN..]);
    if crc.finalize() != checksum {
        return Err(Malformed::ChecksumMismatch);
    }
    if echo != Some(key.as_bytes()) {
        return Err(Malformed::KeyMismatch);
    }
    CacheValue::new(bytes.slice(at..), created_at, stale_at, expires_at)
        .map_err(|_| Malformed::BadTimestamps)
}

/// The reasons remote tiers count undecodable values under, in a stable order: the
/// [`Malformed::reason`] names, then `wrong_type` (a Redis key of another type than a string),
/// `too_large` (an object larger than any envelope the tier writes, not even read) and `other`
/// (a reason this build does not know).
pub const DECODE_ERROR_REASONS: [&str; 11] = [
    "too_short",
    "bad_magic",
    "unsupported_version",
    "unknown_flags",
    "length_mismatch",
    "checksum_mismatch",
    "bad_timestamps",
    "key_mismatch",
    "wrong_type",
    "too_large",
    "other",
];

const OTHER_REASON: usize = DECODE_ERROR_REASONS.len() - 1;

/// The position of `reason` in [`DECODE_ERROR_REASONS`] (`other` for an unknown name).
#[must_use]
pub fn decode_error_index(reason: &str) -> usize {
    DECODE_ERROR_REASONS
        .iter()
        .position(|known| *known == reason)
        .unwrap_or(OTHER_REASON)
}

/// How many values a tier read that could not be decoded, by reason (a snapshot). Each was
/// answered as a miss.
///
/// ```
/// use tierkit_core::envelope::{DecodeErrorCounters, DecodeErrors, Malformed};
///
/// let counters = DecodeErrorCounters::default();
/// counters.record(Malformed::BadMagic.reason());
/// counters.record("wrong_type");
/// let snapshot: DecodeErrors = counters.snapshot();
/// assert_eq!(snapshot.total(), 2);
/// assert_eq!(snapshot.get("bad_magic"), 1);
/// assert_eq!(snapshot.get("no such reason"), 0);
/// assert!(DecodeErrors::REASONS.contains(&"checksum_mismatch"));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DecodeErrors {
    counts: [u64; DECODE_ERROR_REASONS.len()],
}

impl DecodeErrors {
    /// Every reason counted, in a stable order: [`DECODE_ERROR_REASONS`].
    pub const REASONS: &'static [&'static str] = &DECODE_ERROR_REASONS;

    /// The count for `reason` (0 for a name not in [`REASONS`](Self::REASONS)).
    #[must_use]
    pub fn get(&self, reason: &str) -> u64 {
        DECODE_ERROR_REASONS
            .iter()
            .position(|known| *known == reason)
            .map_or(0, |i| self.counts[i])
    }

    /// The sum over every reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each reason with its count, in the order of [`REASONS`](Self::REASONS).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DECODE_ERROR_REASONS
            .iter()
            .copied()
            .zip(self.counts.iter().copied())
    }
}

impl fmt::Debug for DecodeErrors {
    /// Only the reasons with a non-zero count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().filter(|(_, n)| *n > 0))
            .finish()
    }
}

/// Live counters of undecodable values by reason, for a tier to keep and snapshot.
#[derive(Debug, Default)]
pub struct DecodeErrorCounters {
    counts: [std::sync::atomic::AtomicU64; DECODE_ERROR_REASONS.len()],
}

impl DecodeErrorCounters {
    /// Counts one value under `reason` and returns the reason's position in
    /// [`DECODE_ERROR_REASONS`] (for a tier's own per-reason metric handles).
    pub fn record(&self, reason: &str) -> usize {
        let index = decode_error_index(reason);
        self.counts[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        index
    }

    /// The counts now.
    #[must_use]
    pub fn snapshot(&self) -> DecodeErrors {
        DecodeErrors {
            counts: std::array::from_fn(|i| {
                self.counts[i].load(std::sync::atomic::Ordering::Relaxed)
            }),
        }
    }
}

/// The read counters every remote tier keeps: undecodable values by reason (mirrored to a
/// `metrics` counter labelled `reason`) and values found already expired; both were answered
/// as misses.
///
/// ```
/// use tierkit_core::envelope::{Malformed, ReadCounters};
///
/// let counters = ReadCounters::new("tierkit_example_decode_errors_total");
/// counters.malformed(&Malformed::BadMagic);
/// counters.expired_read();
/// assert_eq!(counters.decode_errors().get("bad_magic"), 1);
/// assert_eq!(counters.expired_reads(), 1);
/// ```
#[derive(Debug)]
pub struct ReadCounters {
    decode: DecodeErrorCounters,
    decode_metrics: [metrics::Counter; DECODE_ERROR_REASONS.len()],
    expired_reads: std::sync::atomic::AtomicU64,
}

impl ReadCounters {
    /// Fresh counters, mirroring undecodable values to the metric `metric{reason}`; the metric
    /// handles are resolved now (against the recorder installed at this moment, if any).
    #[must_use]
    pub fn new(metric: &'static str) -> Self {
        ReadCounters {
            decode: DecodeErrorCounters::default(),
            decode_metrics: DECODE_ERROR_REASONS
                .map(|reason| metrics::counter!(metric, "reason" => reason)),
            expired_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts a value that did not decode.
    pub fn malformed(&self, malformed: &Malformed) {
        self.decode_error(malformed.reason());
    }

    /// Counts an undecodable value under `reason` (`other` for a name not in
    /// [`DECODE_ERROR_REASONS`]).
    pub fn decode_error(&self, reason: &str) {
        let index = self.decode.record(reason);
        self.decode_metrics[index].increment(1);
    }

    /// Counts a value found already expired.
    pub fn expired_read(&self) {
        self.expired_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The undecodable values so far, by reason.
    #[must_use]
    pub fn decode_errors(&self) -> DecodeErrors {
        self.decode.snapshot()
    }

    /// The values found expired so far.
    #[must_use]
    pub fn expired_reads(&self) -> u64 {
        self.expired_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Seals `bytes` (an envelope without key echo or with its echo after the header) with a
    /// valid checksum again, after a test altered them.
    fn reseal(bytes: &mut [u8]) {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..HEADER_LEN - 4]);
        crc.update(&bytes[HEADER_LEN..]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.finalize().to_be_bytes());
    }

    fn sample() -> (CacheKey, CacheValue) {
        let key = CacheKey::new("user:42").unwrap();
        let value = CacheValue::with_ttl(
            &b"payload bytes"[..],
            Timestamp::from_unix_millis(1_700_000_000_123),
            Duration::from_secs(60),
        )
        .with_stale_for(Duration::from_secs(30));
        (key, value)
    }

    #[test]
    fn round_trips_with_the_key_echo() {
        let (key, value) = sample();
        let bytes = encode(&value, &key);
        assert_eq!(bytes.len(), encoded_len(&value, &key));
        assert_eq!(bytes[4], FLAG_KEY_ECHO);
        let decoded = decode(&bytes, &key).unwrap();
        assert_eq!(decoded, value);
        // The payload is a view into the input, not a copy.
        let start = bytes.len() - value.payload().len();
        assert_eq!(decoded.payload().as_ptr(), bytes[start..].as_ptr());
    }

    #[test]
    fn empty_payload_round_trips() {
        let key = CacheKey::new("k").unwrap();
        let value =
            CacheValue::with_ttl(Bytes::new(), Timestamp::UNIX_EPOCH, Duration::from_secs(1));
        assert_eq!(decode(&encode(&value, &key), &key).unwrap(), value);
    }

    #[test]
    fn rejects_every_truncation_and_every_single_bit_flip() {
        let (key, value) = sample();
        let bytes = encode(&value, &key);
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes.slice(..cut), &key).is_err(),
                "truncated at {cut}"
            );
        }
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut altered = bytes.to_vec();
                altered[index] ^= 1 << bit;
                let altered = Bytes::from(altered);
                assert!(decode(&altered, &key).is_err(), "bit {bit} of byte {index}");
            }
        }
        let mut padded = bytes.to_vec();
        padded.push(0);
        assert!(matches!(
            decode(&Bytes::from(padded), &key),
            Err(Malformed::LengthMismatch { .. })
        ));
    }

    #[test]
    fn every_malformed_reason_has_its_own_counter() {
        let reasons = [
            Malformed::TooShort { len: 0 },
            Malformed::BadMagic,
            Malformed::UnsupportedVersion(9),
            Malformed::UnknownFlags(2),
            Malformed::LengthMismatch {
                expected: 1,
                found: 2,
            },
            Malformed::ChecksumMismatch,
            Malformed::BadTimestamps,
            Malformed::KeyMismatch,
        ];
        let counters = DecodeErrorCounters::default();
        for (i, malformed) in reasons.iter().enumerate() {
            assert_eq!(counters.record(malformed.reason()), i, "{malformed:?}");
        }
        assert_eq!(
            counters.record("something new"),
            DECODE_ERROR_REASONS.len() - 1
        );
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.total(), 9);
        assert_eq!(snapshot.get("other"), 1);
        assert!(format!("{snapshot:?}").contains("\"bad_magic\": 1"));
    }

    #[test]
    fn foreign_bytes_are_rejected_with_a_reason() {
        let key = CacheKey::new("k").unwrap();
        assert_eq!(
            decode(&Bytes::from_static(b""), &key),
            Err(Malformed::TooShort { len: 0 })
        );
        let foreign = Bytes::from(vec![b'x'; 100]);
        assert_eq!(decode(&foreign, &key), Err(Malformed::BadMagic));
        let (_, value) = sample();
        let mut future = encode(&value, &key).to_vec();
        future[3] = 2;
        assert_eq!(
            decode(&Bytes::from(future), &key),
            Err(Malformed::UnsupportedVersion(2))
        );
        assert_eq!(Malformed::BadMagic.reason(), "bad_magic");
    }

    #[test]
    fn a_key_echo_must_match() {
        let (key, value) = sample();
        let other = CacheKey::new("user:43").unwrap();
        let bytes = encode(&value, &key);
        assert_eq!(decode(&bytes, &other), Err(Malformed::KeyMismatch));
    }

    #[test]
    fn an_envelope_without_a_key_echo_is_a_key_mismatch() {
        let (key, value) = sample();
        // The header of `encode` with the echo flag cleared and no echo, sealed again: what
        // this format wrote before every envelope echoed its key.
        let with_echo = encode(&value, &key);
        let mut bytes = with_echo[..HEADER_LEN].to_vec();
        bytes[4] = 0;
        bytes.extend_from_slice(value.payload());
        reseal(&mut bytes);
        assert_eq!(
            decode(&Bytes::from(bytes), &key),
            Err(Malformed::KeyMismatch)
        );
    }

    #[test]
    fn inconsistent_timestamps_are_rejected_even_with_a_valid_checksum() {
        let (key, value) = sample();
        let mut bytes = encode(&value, &key).to_vec();
        // Swap stale_at and expires_at, then seal the checksum again.
        let (stale, expires) = (bytes[13..21].to_vec(), bytes[21..29].to_vec());
        bytes[13..21].copy_from_slice(&expires);
        bytes[21..29].copy_from_slice(&stale);
        reseal(&mut bytes);
        assert_eq!(
            decode(&Bytes::from(bytes), &key),
            Err(Malformed::BadTimestamps)
        );
    }
}
