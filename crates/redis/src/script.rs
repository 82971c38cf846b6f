//! The conditional write of [`Backend::set_if_newer`](tierkit_core::Backend::set_if_newer):
//! one Lua script, run with `EVALSHA` (and `EVAL` when the server does not have it cached).
//!
//! The script reads the key, and unless it holds a live envelope created later than the new
//! value, stores the new envelope (or removes the key for an expired value), all inside Redis:
//! no other command runs between the comparison and the write. It touches one key, so it runs
//! unchanged on a cluster, on the primary of the key's slot. It checks the held envelope's
//! structure (magic, version, flags, lengths) and compares its big-endian `created_at` and
//! `expires_at` bytes (see [`tierkit_core::envelope`]); it does not verify the checksum,
//! which would cost a CRC over the payload on every write: bytes altered inside a well-formed
//! envelope are compared by their timestamps.

use bytes::Bytes;
use fred::types::{ClusterHash, CustomCommand, Value};
use tierkit_core::Timestamp;

/// The script's source.
pub(crate) const SOURCE: &str = include_str!("set_if_newer.lua");

/// The SHA-1 of [`SOURCE`], as `SCRIPT LOAD` answers it (checked against a live server by
/// the tests).
pub(crate) const SHA1: &str = "59298cc30476f08c7ff3c5e13bc412eec2084924";

/// `EVALSHA` of the script, routed to the slot of the key in a cluster.
pub(crate) fn evalsha(slot: u16) -> CustomCommand {
    CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false)
}

/// `EVAL` of the script, for a server that answers `NOSCRIPT` (restarted, or flushed); it
/// caches the script for the next `EVALSHA`.
pub(crate) fn eval(slot: u16) -> CustomCommand {
    CustomCommand::new_static("EVAL", ClusterHash::Custom(slot), false)
}

/// Whether a reply error says the server does not have the script cached.
pub(crate) fn is_noscript(details: &str) -> bool {
    details.starts_with("NOSCRIPT")
}

/// The arguments after the script (its SHA-1 or its source): one key, then the new envelope
/// (empty to remove), the new value's `created_at`, the tier's clock and the `PXAT` expiry
/// (empty for none).
pub(crate) fn arguments(
    redis_key: Bytes,
    envelope: Bytes,
    created_at: Timestamp,
    now: Timestamp,
    pxat: Option<i64>,
) -> [Value; 6] {
    [
        Value::Integer(1),
        Value::Bytes(redis_key),
        Value::Bytes(envelope),
        Value::Bytes(Bytes::copy_from_slice(
            &created_at.as_unix_millis().to_be_bytes(),
        )),
        Value::Bytes(Bytes::copy_from_slice(&now.as_unix_millis().to_be_bytes())),
        Value::Bytes(pxat.map_or_else(Bytes::new, |millis| Bytes::from(millis.to_string()))),
    ]
}

/// `script` (the SHA-1 or the source) followed by `arguments`: a command's whole argument list.
pub(crate) fn command(script: &'static str, arguments: &[Value]) -> Vec<Value> {
    let mut all = Vec::with_capacity(arguments.len() + 1);
    all.push(Value::from(script));
    all.extend(arguments.iter().cloned());
    all
}
