//! The object key layout: a validated prefix, the tier's own directory [`DATA_DIR`] (`.tk/`),
//! then `k/` and the escaped cache key, or `h/` and the SHA-256 of the cache key when the
//! escaped form would be too long; then `.tkv`.
//!
//! No prefix contains a `.tk` segment, so the first `.tk` segment of an object key ends its
//! prefix: two (prefix, key) pairs never share an object, and the listing of `prefix/.tk/`
//! (what `clear` deletes) holds no object of another prefix, nested (`a/b/` under `a/`) or
//! sibling (`a-2/`).
//!
//! The escaped form keeps ASCII letters, digits, `-` and `_`, and writes every other byte of
//! the key as `%` and two upper-case hex digits. It is cut into `/`-separated segments of at
//! most [`SEGMENT_LEN`] characters (never inside a `%XX` triple), so that servers that store
//! objects as files (one file name per segment, 255 bytes at most on most file systems) accept
//! it. An escaped form never contains a literal `/`, so removing the segment separators gives
//! it back, and unescaping gives the key back: two keys never share an object name.
//!
//! The [`SUFFIX`] `.tkv` ends every object key. An escaped form never contains a literal `.`,
//! so an object key is never a "directory" of another (`k/aaa.tkv` and `k/aaa/bbb.tkv`, not
//! `k/aaa` and `k/aaa/bbb`), which servers that keep objects as files could not store both.

use sha2::{Digest, Sha256};
use tierkit_core::CacheKey;

use crate::error::S3Error;

/// The longest object key stored in the escaped form by default, prefix included; a longer one
/// is hashed.
pub(crate) const MAX_PLAIN_OBJECT_KEY: usize = 900;
/// The longest object key S3 accepts, in bytes.
pub(crate) const S3_MAX_OBJECT_KEY: usize = 1_024;
/// The longest prefix accepted, in bytes (a `/` appended included).
pub(crate) const MAX_PREFIX_LEN: usize = 512;
/// The longest segment of an escaped key, in bytes.
pub(crate) const SEGMENT_LEN: usize = 200;
/// The end of every object key.
pub(crate) const SUFFIX: &str = ".tkv";
/// The directory, right under the prefix, that holds every object of the tier; no prefix may
/// contain a segment of this name.
pub(crate) const DATA_DIR: &str = ".tk";

const HEX: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// A validated prefix, ending with `/`, its data directory, and the longest object key kept in
/// the escaped form.
#[derive(Clone, Debug)]
pub(crate) struct Prefix {
    prefix: Box<str>,
    /// `prefix`, then [`DATA_DIR`] and `/`: where every object of the tier is.
    data: Box<str>,
    plain_limit: usize,
}

impl Prefix {
    /// Checks `prefix`, appending a `/` when it does not end with one.
    pub(crate) fn new(prefix: &str) -> Result<Self, S3Error> {
        let mut normalized = prefix.to_owned();
        if !normalized.ends_with('/') {
            normalized.push('/');
        }
        let reason = if prefix.is_empty() || prefix == "/" {
            Some(
                "it is empty; an empty prefix would make `clear` delete every object of the \
                 bucket",
            )
        } else if normalized.len() > MAX_PREFIX_LEN {
            Some("it is longer than 512 bytes")
        } else if normalized.starts_with('/') {
            Some("it starts with `/`")
        } else if normalized.chars().any(char::is_control) {
            Some("it contains control characters")
        } else if normalized[..normalized.len() - 1]
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            Some("it contains an empty, `.` or `..` segment (`//`, `/./`, `/../`)")
        } else if normalized.split('/').any(|segment| segment == DATA_DIR) {
            Some("it contains a `.tk` segment, the name of the tier's own directory")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(S3Error::InvalidPrefix {
                prefix: prefix.to_owned(),
                reason,
            }),
            None => {
                let data = format!("{normalized}{DATA_DIR}/");
                Ok(Prefix {
                    prefix: normalized.into_boxed_str(),
                    data: data.into_boxed_str(),
                    plain_limit: MAX_PLAIN_OBJECT_KEY,
                })
            }
        }
    }

    /// Keeps object keys of at most `limit` bytes in the escaped form (0: hash every key).
    pub(crate) fn with_plain_limit(mut self, limit: usize) -> Self {
        self.plain_limit = limit;
        self
    }

    /// The longest object key kept in the escaped form.
    pub(crate) fn plain_limit(&self) -> usize {
        self.plain_limit
    }

    /// The prefix, ending with `/`.
    pub(crate) fn as_str(&self) -> &str {
        &self.prefix
    }

    /// The prefix followed by `.tk/`: every object of the tier, and only those, is under it.
    pub(crate) fn data_dir(&self) -> &str {
        &self.data
    }

    /// The object key of `key`.
    pub(crate) fn object_key(&self, key: &CacheKey) -> String {
        let bytes = key.as_bytes();
        let escaped_len: usize = bytes.iter().map(|b| token_len(*b)).sum();
        // Without its segment separators, the plain form is this long: when even that is too
        // long, hash without escaping.
        if self.data.len() + 2 + escaped_len + SUFFIX.len() <= self.plain_limit {
            let mut out = String::with_capacity(self.plain_limit);
            out.push_str(&self.data);
            out.push_str("k/");
            escape_into(bytes, &mut out);
            out.push_str(SUFFIX);
            if out.len() <= self.plain_limit {
                return out;
            }
        }
        let digest = Sha256::digest(bytes);
        let mut out = String::with_capacity(self.data.len() + 2 + 64 + SUFFIX.len());
        out.push_str(&self.data);
        out.push_str("h/");
        for byte in digest {
            out.push(char::from(HEX_LOWER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_LOWER[usize::from(byte & 0x0f)]));
        }
        out.push_str(SUFFIX);
        out
    }
}

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

fn token_len(byte: u8) -> usize {
    if is_plain(byte) { 1 } else { 3 }
}

/// Appends the escaped, segmented form of `bytes` to `out`.
fn escape_into(bytes: &[u8], out: &mut String) {
    let mut segment = 0;
    for &byte in bytes {
        let len = token_len(byte);
        if segment + len > SEGMENT_LEN {
            out.push('/');
            segment = 0;
        }
        if len == 1 {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        segment += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn k(s: &str) -> CacheKey {
        CacheKey::new(s).unwrap()
    }

    /// Undoes the escaped form (for the tests: the tier never needs it).
    fn unescape(escaped: &str) -> Vec<u8> {
        let bytes: Vec<u8> = escaped.bytes().filter(|b| *b != b'/').collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                assert!(is_plain(bytes[i]), "{escaped}");
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn plain_keys_are_escaped_under_k() {
        let prefix = Prefix::new("tierkit/").unwrap();
        let cases = [
            ("user:42", "tierkit/.tk/k/user%3A42.tkv"),
            ("a/../b", "tierkit/.tk/k/a%2F%2E%2E%2Fb.tkv"),
            ("..", "tierkit/.tk/k/%2E%2E.tkv"),
            ("%2F", "tierkit/.tk/k/%252F.tkv"),
            ("a+b c", "tierkit/.tk/k/a%2Bb%20c.tkv"),
            ("nul\0", "tierkit/.tk/k/nul%00.tkv"),
            ("Ab-_9", "tierkit/.tk/k/Ab-_9.tkv"),
            ("é", "tierkit/.tk/k/%C3%A9.tkv"),
        ];
        for (key, object) in cases {
            assert_eq!(prefix.object_key(&k(key)), object, "{key:?}");
        }
    }

    fn escaped_part<'a>(object: &'a str, prefix: &str) -> &'a str {
        object
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("k/"))
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .unwrap_or_else(|| panic!("not a plain object key: {object}"))
    }

    #[test]
    fn escaping_round_trips_and_segments_stay_short() {
        let prefix = Prefix::new("p").unwrap();
        let keys = [
            "x".repeat(199),
            "x".repeat(200),
            "x".repeat(201),
            "/".repeat(67),
            format!("{}/", "x".repeat(198)),
            "ключ".repeat(30),
            "\u{1F511}".repeat(20),
        ];
        for key in &keys {
            let object = prefix.object_key(&k(key));
            let escaped = escaped_part(&object, "p/.tk/");
            assert_eq!(unescape(escaped), key.as_bytes(), "{key:?}");
            for segment in escaped.split('/') {
                assert!(
                    !segment.is_empty() && segment.len() <= SEGMENT_LEN,
                    "{object}"
                );
                // A segment never splits a `%XX` triple.
                let tail = segment.rfind('%').map_or(3, |at| segment.len() - at);
                assert!(tail >= 3, "{object}");
            }
        }
    }

    #[test]
    fn no_object_key_is_a_directory_of_another() {
        // "x" * 200 fills one segment: the longer key continues in a second one.
        let prefix = Prefix::new("p").unwrap();
        let short = prefix.object_key(&k(&"x".repeat(200)));
        let long = prefix.object_key(&k(&"x".repeat(201)));
        assert_eq!(short, format!("p/.tk/k/{}.tkv", "x".repeat(200)));
        assert_eq!(long, format!("p/.tk/k/{}/x.tkv", "x".repeat(200)));
        assert!(!long.starts_with(&format!("{short}/")));
        let objects: Vec<String> = (1..=600)
            .map(|n| prefix.object_key(&k(&"y".repeat(n))))
            .collect();
        for a in &objects {
            for b in &objects {
                assert!(
                    !b.starts_with(&format!("{a}/")),
                    "{a} is a directory of {b}"
                );
            }
        }
    }

    #[test]
    fn no_object_of_a_nested_or_sibling_prefix_is_in_the_data_dir() {
        let own = Prefix::new("t").unwrap();
        assert_eq!(own.data_dir(), "t/.tk/");
        let others = ["t/staging", "t/k", "t/h", "t-2", "t/.tkv", "t/x/.tk2"];
        let keys = [k("x"), k("t1:x"), k(&"y".repeat(1_000))];
        for other in others {
            let other = Prefix::new(other).unwrap();
            for key in &keys {
                let object = other.object_key(key);
                assert!(!object.starts_with(own.data_dir()), "{object}");
                for own_key in &keys {
                    assert_ne!(own.object_key(own_key), object);
                }
            }
        }
        for key in &keys {
            assert!(own.object_key(key).starts_with(own.data_dir()));
        }
    }

    #[test]
    fn long_keys_are_hashed_under_h() {
        let prefix = Prefix::new("tierkit/").unwrap();
        let long = k(&"a".repeat(CacheKey::MAX_LEN));
        let object = prefix.object_key(&long);
        assert_eq!(object.len(), "tierkit/.tk/h/".len() + 64 + SUFFIX.len());
        let hex = object
            .strip_prefix("tierkit/.tk/h/")
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .expect("hashed form");
        // The SHA-256 of the key's bytes, in lower-case hex.
        let expected: String = Sha256::digest(b"a".repeat(CacheKey::MAX_LEN))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
        let digest: String = Sha256::digest(b"abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        // The boundary: the longest plain object key is MAX_PLAIN_OBJECT_KEY bytes, and one
        // more byte of key is hashed.
        let mut last_plain = None;
        for len in 800..=900 {
            let object = prefix.object_key(&k(&"z".repeat(len)));
            if object.contains("/k/") {
                assert!(object.len() <= MAX_PLAIN_OBJECT_KEY, "{}", object.len());
                last_plain = Some((len, object.len()));
            } else {
                assert!(object.starts_with("tierkit/.tk/h/"));
            }
        }
        let (len, object_len) = last_plain.expect("some lengths stay plain");
        assert!(object_len > MAX_PLAIN_OBJECT_KEY - 2, "{len}: {object_len}");
        assert!(
            prefix
                .object_key(&k(&"z".repeat(len + 1)))
                .starts_with("tierkit/.tk/h/")
        );
        let escaped_heavy = k(&"/".repeat(400)); // 1,200 bytes escaped
        assert!(
            prefix
                .object_key(&escaped_heavy)
                .starts_with("tierkit/.tk/h/")
        );
    }

    #[test]
    fn every_object_key_fits_s3s_limit_and_keys_never_collide() {
        let prefix = Prefix::new(&"p".repeat(MAX_PREFIX_LEN - 1)).unwrap();
        let mut seen = HashSet::new();
        let mut keys: Vec<String> = (0..300).map(|n| "é".repeat(n)).collect();
        keys.retain(|k| !k.is_empty());
        keys.extend((1..=CacheKey::MAX_LEN).step_by(97).map(|n| "%".repeat(n)));
        keys.extend(["a", "A", "a/", "a%2F", "a%252F", "a.", "a_", "a-"].map(str::to_owned));
        for key in &keys {
            let object = prefix.object_key(&k(key));
            assert!(object.len() <= 1024, "{}", object.len());
            assert!(seen.insert(object), "collision for {key:?}");
        }
    }

    #[test]
    fn the_plain_limit_is_adjustable() {
        let prefix = Prefix::new("p").unwrap().with_plain_limit(20);
        assert_eq!(prefix.plain_limit(), 20);
        // "p/.tk/k/" + 8 + ".tkv" = 20 bytes: plain; one more byte: hashed.
        assert_eq!(
            prefix.object_key(&k(&"a".repeat(8))),
            format!("p/.tk/k/{}.tkv", "a".repeat(8))
        );
        assert!(
            prefix
                .object_key(&k(&"a".repeat(9)))
                .starts_with("p/.tk/h/")
        );
        let all = Prefix::new("p").unwrap().with_plain_limit(0);
        assert!(all.object_key(&k("a")).starts_with("p/.tk/h/"));
    }

    #[test]
    fn prefixes_are_validated_and_normalized() {
        assert_eq!(Prefix::new("tierkit").unwrap().as_str(), "tierkit/");
        assert_eq!(Prefix::new("a/b/").unwrap().as_str(), "a/b/");
        assert_eq!(Prefix::new("tk-1-2-3").unwrap().as_str(), "tk-1-2-3/");
        assert_eq!(Prefix::new("ключ").unwrap().as_str(), "ключ/");
        assert_eq!(Prefix::new("a/.tkx").unwrap().data_dir(), "a/.tkx/.tk/");
        for bad in [
            "", "/", "/a", "a//b", "a/./b", "../a", "a/..", "a\0", "a\nb", ".tk", "a/.tk",
            "a/.tk/b",
        ] {
            let err = Prefix::new(bad).unwrap_err();
            assert!(
                matches!(err, S3Error::InvalidPrefix { ref prefix, .. } if prefix == bad),
                "{bad:?}: {err:?}"
            );
        }
        assert!(Prefix::new(&"a".repeat(MAX_PREFIX_LEN - 1)).is_ok());
        assert!(Prefix::new(&"a".repeat(MAX_PREFIX_LEN)).is_err());
    }
}
