//! Codecs: how a typed value becomes the bytes the remote tiers store, and back.

use std::fmt;
use std::sync::Arc;

/// Turns values of type `V` into bytes and back, for the remote tiers.
///
/// The codec's [`id`](Codec::id) is stored in every frame it writes: a reader whose codec has
/// another id treats the frame as a counted miss (reason `codec_mismatch`) instead of feeding
/// bytes to the wrong decoder. Ids 1 to 127 are reserved for the codecs of this crate; use 128
/// to 255 for your own.
pub trait Codec<V>: Send + Sync + fmt::Debug + 'static {
    /// The id stored in every frame this codec writes.
    fn id(&self) -> u8;

    /// A short name for traces, metrics and errors (`"postcard"`).
    fn name(&self) -> &'static str;

    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes a value from the whole of `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError>;
}

/// A codec failed to encode or decode a value.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{codec}: {message}")]
pub struct CodecError {
    codec: &'static str,
    message: Arc<str>,
}

impl CodecError {
    /// An error of the codec named `codec`.
    pub fn new(codec: &'static str, message: impl fmt::Display) -> Self {
        Self {
            codec,
            message: message.to_string().into(),
        }
    }

    /// The codec's name.
    pub fn codec(&self) -> &'static str {
        self.codec
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact binary format over serde.
///
/// Available with the `postcard` feature (on by default). Postcard is not self-describing: a
/// reader must decode with the same type the writer encoded. A type that changed shape (a field
/// added, removed or retyped) fails to decode, and the frame is counted as a miss with reason
/// `deserialize`; bump the key's version when a cached type changes. Decoding rejects trailing
/// bytes.
#[cfg(feature = "postcard")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Postcard {
    /// The id stored in every frame this codec writes: 1.
    pub const ID: u8 = 1;
    /// The codec's name: `"postcard"`.
    pub const NAME: &'static str = "postcard";
}

#[cfg(feature = "postcard")]
impl<V> Codec<V> for Postcard
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        postcard::to_io(value, out)
            .map(|_| ())
            .map_err(|error| CodecError::new(Self::NAME, error))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        let (value, rest) = postcard::take_from_bytes::<V>(bytes)
            .map_err(|error| CodecError::new(Self::NAME, error))?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(CodecError::new(
                Self::NAME,
                format_args!("{} trailing bytes after the value", rest.len()),
            ))
        }
    }
}

/// A JSON codec over [serde_json](https://docs.rs/serde_json), for values that people or other
/// programs read.
///
/// Available with the `json` feature. Larger and slower than [`Postcard`], but self-describing:
/// adding a field with `#[serde(default)]` keeps old frames readable. Values serde_json cannot
/// represent (a map with non-string keys, a non-finite float in strict mode) fail to encode.
#[cfg(feature = "json")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Json;

#[cfg(feature = "json")]
impl Json {
    /// The id stored in every frame this codec writes: 2.
    pub const ID: u8 = 2;
    /// The codec's name: `"json"`.
    pub const NAME: &'static str = "json";
}

#[cfg(feature = "json")]
impl<V> Codec<V> for Json
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, value).map_err(|error| CodecError::new(Self::NAME, error))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|error| CodecError::new(Self::NAME, error))
    }
}

/// The identity codec for values that already are bytes: [`bytes::Bytes`], `Vec<u8>` and
/// `String`. No serde, always available.
///
/// The bytes are stored as they are. Decoding a `String` checks that the bytes are UTF-8 and
/// fails otherwise; decoding `Bytes` or `Vec<u8>` cannot fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawBytes;

impl RawBytes {
    /// The id stored in every frame this codec writes: 3.
    pub const ID: u8 = 3;
    /// The codec's name: `"bytes"`.
    pub const NAME: &'static str = "bytes";
}

impl Codec<bytes::Bytes> for RawBytes {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, value: &bytes::Bytes, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<bytes::Bytes, CodecError> {
        Ok(bytes::Bytes::copy_from_slice(bytes))
    }
}

impl Codec<Vec<u8>> for RawBytes {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

impl Codec<String> for RawBytes {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|error| CodecError::new(Self::NAME, error))
    }
}

/// A codec that counts the work of another: how many values it encoded and decoded. It keeps
/// the inner codec's id and name, so its frames are the inner codec's frames.
///
/// Clones share the counts: keep a clone to read them while the cache owns the other.
///
/// ```
/// use tierkit_cache::codec::{Codec, Counted, RawBytes};
///
/// let codec = Counted::new(RawBytes);
/// let mut out = Vec::new();
/// Codec::<String>::encode(&codec, &"hello".to_owned(), &mut out)?;
/// let _: String = codec.decode(&out)?;
/// assert_eq!((codec.encodes(), codec.decodes()), (1, 1));
/// # Ok::<(), tierkit_cache::codec::CodecError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Counted<C> {
    inner: C,
    counts: Arc<CodecCounts>,
}

#[derive(Debug, Default)]
struct CodecCounts {
    encodes: std::sync::atomic::AtomicU64,
    decodes: std::sync::atomic::AtomicU64,
}

impl<C> Counted<C> {
    /// Counts the work of `inner`.
    pub fn new(inner: C) -> Self {
        Counted {
            inner,
            counts: Arc::default(),
        }
    }

    /// Values encoded so far (failed attempts included).
    pub fn encodes(&self) -> u64 {
        self.counts
            .encodes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Values decoded so far (failed attempts included).
    pub fn decodes(&self) -> u64 {
        self.counts
            .decodes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The codec whose work is counted.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<V, C: Codec<V>> Codec<V> for Counted<C> {
    fn id(&self) -> u8 {
        self.inner.id()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn encode(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.counts
            .encodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.encode(value, out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, CodecError> {
        self.counts
            .decodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.decode(bytes)
    }
}
