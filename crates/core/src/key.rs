//! Cache keys.

use std::borrow::Borrow;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::error::{BackendError, InvalidKeyReason, Result};

/// An immutable cache key with a canonical string form that every tier uses as is.
///
/// Cloning is O(1): the bytes live behind an [`Arc`] and are never copied. A key is between 1
/// and [`CacheKey::MAX_LEN`] bytes of UTF-8 text; any character is allowed, including control
/// characters and NUL. Tiers with stricter rules map the canonical form to what they accept
/// (S3 object names, for instance), never the other way round.
///
/// Keys come from a string, or from structured parts with [`CacheKey::builder`], which escapes
/// each part so that different part lists can never produce the same key.
///
/// ```
/// use tierkit_core::CacheKey;
///
/// let plain = CacheKey::new("user:42")?;
/// assert_eq!(plain.as_str(), "user:42");
///
/// let built = CacheKey::builder("user").part(42).version(3).build()?;
/// assert_eq!(built.as_str(), "user:42@v3");
///
/// // Separators inside a part are escaped: no collision with a two-part key.
/// let tricky = CacheKey::builder("user").part("4:2").build()?;
/// assert_eq!(tricky.as_str(), "user:4%3A2");
/// assert_ne!(tricky, CacheKey::builder("user").part(4).part(2).build()?);
///
/// assert!(CacheKey::new("").is_err());
/// # Ok::<(), tierkit_core::BackendError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The longest key accepted, in bytes of its canonical form: 4 KiB.
    ///
    /// Redis accepts much longer keys, but a cache key that long is almost always a bug, and
    /// every tier pays for the key's length on every operation.
    pub const MAX_LEN: usize = 4096;

    /// A key from its canonical string form.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidKey`] when the string is empty or longer than
    /// [`CacheKey::MAX_LEN`] bytes.
    pub fn new(key: impl AsRef<str>) -> Result<Self> {
        let key = key.as_ref();
        validate(key)?;
        Ok(CacheKey(Arc::from(key)))
    }

    /// Starts a key from structured parts: a namespace, then ordered parts, then an optional
    /// version.
    ///
    /// The canonical form is `namespace(:part)*(@vVERSION)?`, where `%`, `:` and `@` inside the
    /// namespace and parts are percent-escaped.
    pub fn builder(namespace: impl fmt::Display) -> CacheKeyBuilder {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = write!(Escaper(&mut text), "{namespace}");
        CacheKeyBuilder {
            text,
            version: None,
        }
    }

    /// The canonical string form.
    #[inline]
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical form as bytes.
    #[inline]
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length of the canonical form, in bytes (never zero).
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty key cannot be built. Present for API symmetry with `len`.
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn validate(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(BackendError::invalid_key(InvalidKeyReason::Empty));
    }
    if key.len() > CacheKey::MAX_LEN {
        return Err(BackendError::invalid_key(InvalidKeyReason::TooLong {
            len: key.len(),
            max: CacheKey::MAX_LEN,
        }));
    }
    Ok(())
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({:?})", &*self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `CacheKey` be queried with a `&str`. Sound because `Hash`, `Eq` and `Ord`
/// of `CacheKey` are those of its canonical string.
impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for CacheKey {
    type Error = BackendError;

    fn try_from(key: &str) -> Result<Self> {
        CacheKey::new(key)
    }
}

impl TryFrom<String> for CacheKey {
    type Error = BackendError;

    fn try_from(key: String) -> Result<Self> {
        validate(&key)?;
        Ok(CacheKey(Arc::from(key)))
    }
}

impl std::str::FromStr for CacheKey {
    type Err = BackendError;

    fn from_str(key: &str) -> Result<Self> {
        CacheKey::new(key)
    }
}

/// Builds a [`CacheKey`] from a namespace, ordered parts and a version. See
/// [`CacheKey::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct CacheKeyBuilder {
    text: String,
    version: Option<u64>,
}

impl CacheKeyBuilder {
    /// Appends a part, written with its `Display` form and escaped.
    pub fn part(mut self, part: impl fmt::Display) -> Self {
        self.text.push(':');
        let _ = write!(Escaper(&mut self.text), "{part}");
        self
    }

    /// Appends a part made of arbitrary bytes, written as `%x` followed by lower-case hex.
    ///
    /// Text parts never contain a bare `%x` (their `%` is escaped), so a bytes part cannot
    /// collide with a text part.
    pub fn part_bytes(mut self, part: impl AsRef<[u8]>) -> Self {
        self.text.push_str(":%x");
        for byte in part.as_ref() {
            let _ = write!(self.text, "{byte:02x}");
        }
        self
    }

    /// Sets the version, written last as `@v{version}`. Bumping it invalidates every key built
    /// with the previous version.
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// The key.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidKey`] when the canonical form is empty or too long.
    pub fn build(mut self) -> Result<CacheKey> {
        if let Some(version) = self.version {
            let _ = write!(self.text, "@v{version}");
        }
        CacheKey::try_from(self.text)
    }
}

/// Percent-escapes the separators of the canonical form.
struct Escaper<'a>(&'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '%' => self.0.push_str("%25"),
                ':' => self.0.push_str("%3A"),
                '@' => self.0.push_str("%40"),
                other => self.0.push(other),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rejects_empty_and_too_long() {
        assert!(matches!(
            CacheKey::new(""),
            Err(BackendError::InvalidKey {
                reason: InvalidKeyReason::Empty
            })
        ));
        let long = "k".repeat(CacheKey::MAX_LEN + 1);
        assert!(matches!(
            CacheKey::new(&long),
            Err(BackendError::InvalidKey {
                reason: InvalidKeyReason::TooLong { len, max }
            }) if len == CacheKey::MAX_LEN + 1 && max == CacheKey::MAX_LEN
        ));
        assert!(CacheKey::new("k".repeat(CacheKey::MAX_LEN)).is_ok());
        assert!(CacheKey::builder("").build().is_err());
    }

    #[test]
    fn clone_shares_bytes() {
        let key = CacheKey::new("shared").expect("valid key");
        let copy = key.clone();
        assert!(std::ptr::eq(key.as_str(), copy.as_str()));
    }

    #[test]
    fn any_text_is_a_key() {
        for text in ["\0", "\n\t\r", "ключ", "🔑 key", "a b", "\u{FFFF}"] {
            assert_eq!(CacheKey::new(text).expect("valid").as_str(), text);
        }
    }

    #[test]
    fn structured_keys_do_not_collide() {
        let keys = [
            CacheKey::builder("a").part("b:c").build(),
            CacheKey::builder("a").part("b").part("c").build(),
            CacheKey::builder("a:b").part("c").build(),
            CacheKey::builder("a").part("b@v1").build(),
            CacheKey::builder("a").part("b").version(1).build(),
            CacheKey::builder("a").part("%3A").build(),
            CacheKey::builder("a").part_bytes([0xff, 0x00]).build(),
            CacheKey::builder("a").part("ff00").build(),
            CacheKey::builder("a").part("%xff00").build(),
        ];
        let mut seen = HashSet::new();
        for key in keys {
            let key = key.expect("valid key");
            assert!(seen.insert(key.as_str().to_owned()), "collision: {key:?}");
        }
    }

    #[test]
    fn borrow_str_lookup() {
        let mut set = HashSet::new();
        set.insert(CacheKey::new("x").expect("valid"));
        assert!(set.contains("x"));
    }
}
