//! The key layout: the namespace, escaped so that it contains no `:`, then `:`, then the key's
//! canonical bytes; and the `SCAN` pattern that matches exactly the keys of one namespace.
//!
//! In the namespace, `%` is written `%25` and `:` is written `%3A`; every other character stays
//! as it is. The first `:` of a Redis key therefore ends its namespace, and unescaping gives the
//! namespace back: two (namespace, key) pairs never share a Redis key (`app` with key `t1:x` is
//! `app:t1:x`, `app:t1` with key `x` is `app%3At1:x`), and `namespace:*` matches no key of
//! another namespace, nested (`app:t1`) or sibling (`app-2`).

use bytes::{BufMut, Bytes, BytesMut};
use tierkit_core::CacheKey;

use crate::error::RedisError;

/// A validated namespace with its key prefix and its `SCAN MATCH` pattern, computed once.
#[derive(Clone, Debug)]
pub(crate) struct Namespace {
    name: Box<str>,
    /// `name` escaped, followed by `:`.
    prefix: Bytes,
    /// `name` escaped, then with the glob characters escaped, followed by `:*`.
    pattern: Box<str>,
}

impl Namespace {
    /// Checks `name` and derives the prefix and the pattern.
    pub(crate) fn new(name: &str) -> Result<Self, RedisError> {
        validate(name)?;
        let mut escaped = escape_namespace(name);
        let mut pattern = escape_glob(&escaped);
        pattern.push_str(":*");
        escaped.push(':');
        Ok(Namespace {
            name: name.into(),
            prefix: Bytes::from(escaped.into_bytes()),
            pattern: pattern.into_boxed_str(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The `SCAN MATCH` pattern of every key of this namespace.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The Redis key of `key`: the prefix, then the key's canonical bytes.
    pub(crate) fn redis_key(&self, key: &CacheKey) -> Bytes {
        let mut out = BytesMut::with_capacity(self.prefix.len() + key.len());
        out.put_slice(&self.prefix);
        out.put_slice(key.as_bytes());
        out.freeze()
    }
}

/// A namespace must be non-empty (an empty one would make `clear` match every key of the
/// database) and free of `{` and `}` (they would make the namespace, or part of it, a cluster
/// hash tag, sending every key of the cache to one slot).
fn validate(name: &str) -> Result<(), RedisError> {
    let reason = if name.is_empty() {
        "it is empty; an empty namespace would make `clear` match every key of the database"
    } else if name.contains(['{', '}']) {
        "it contains `{` or `}`, which would make it a cluster hash tag and send every key of \
         the cache to one hash slot; put hash tags in the keys instead"
    } else {
        return Ok(());
    };
    Err(RedisError::InvalidNamespace {
        namespace: name.to_owned(),
        reason,
    })
}

/// Writes `%` as `%25` and `:` as `%3A`, so that the namespace contains no `:`.
fn escape_namespace(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            other => out.push(other),
        }
    }
    out
}

/// Escapes the characters Redis glob patterns treat specially: `*`, `?`, `[`, `]` and `\`.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefix_then_canonical_bytes() {
        let ns = Namespace::new("app").unwrap();
        let key = CacheKey::new("user:42\0\r\nключ").unwrap();
        let mut expected = b"app:".to_vec();
        expected.extend_from_slice(key.as_bytes());
        assert_eq!(&ns.redis_key(&key)[..], &expected[..]);
        assert_eq!(ns.pattern(), "app:*");
        assert_eq!(ns.name(), "app");
    }

    #[test]
    fn glob_characters_are_escaped_in_the_pattern() {
        let ns = Namespace::new(r"a*b?c[d]e\f").unwrap();
        assert_eq!(ns.pattern(), r"a\*b\?c\[d\]e\\f:*");
        // The prefix itself is not escaped.
        assert_eq!(
            &ns.redis_key(&CacheKey::new("k").unwrap())[..],
            br"a*b?c[d]e\f:k"
        );
    }

    #[test]
    fn colons_and_percents_of_a_namespace_are_escaped() {
        let ns = Namespace::new("app:t1%").unwrap();
        assert_eq!(
            &ns.redis_key(&CacheKey::new("x").unwrap())[..],
            b"app%3At1%25:x"
        );
        assert_eq!(ns.pattern(), "app%3At1%25:*");
        assert_eq!(ns.name(), "app:t1%");
        // The pairs that would share `app:t1:x` unescaped.
        let parent = Namespace::new("app").unwrap();
        assert_eq!(
            &parent.redis_key(&CacheKey::new("t1:x").unwrap())[..],
            b"app:t1:x"
        );
        let nested = Namespace::new("app:t1").unwrap();
        assert_eq!(
            &nested.redis_key(&CacheKey::new("x").unwrap())[..],
            b"app%3At1:x"
        );
        // `%` is escaped too: `a%3Ab` and `a:b` stay two namespaces.
        assert_ne!(
            Namespace::new("a%3Ab")
                .unwrap()
                .redis_key(&CacheKey::new("x").unwrap()),
            Namespace::new("a:b")
                .unwrap()
                .redis_key(&CacheKey::new("x").unwrap())
        );
    }

    #[test]
    fn braces_and_empty_namespaces_are_rejected() {
        for bad in ["", "{tag}", "a{b", "a}b"] {
            let err = Namespace::new(bad).unwrap_err();
            assert!(
                matches!(err, RedisError::InvalidNamespace { ref namespace, .. } if namespace == bad),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.kind(), tierkit_core::ErrorKind::Unsupported);
        }
        assert!(Namespace::new("tk-123-abc").is_ok());
        assert!(Namespace::new("ключ пространство").is_ok());
    }
}
