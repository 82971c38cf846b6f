//! Data directories, and the rules that map bucket names and object keys to their files.
//!
//! s3s-fs serves one directory: each bucket is a sub-directory, each object a file at
//! `<bucket>/<key>` (a key with `/` makes nested directories), and each object's stored
//! checksums, ETag and attributes are hidden files at the top of the directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::S3ServerError;

/// Name of the directory, under the target directory, that holds the data directories.
const BASE_DIR_NAME: &str = "tierkit-s3";

/// Sequence number of data directories created by this process.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Where data directories go by default: `<cargo target dir>/tierkit-s3` (the target
/// directory as [`tierkit_services::target_dir`] finds it), else under
/// [`std::env::temp_dir`]. The directory may not exist yet.
#[must_use]
pub fn default_base_dir() -> PathBuf {
    tierkit_services::target_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(BASE_DIR_NAME)
}

/// Creates `base` and a fresh, empty data directory `<base>/<pid>-<seq>` in it, after removing
/// the data directories of processes that are gone. Returns its canonical path.
pub(crate) fn create_data_dir(base: &Path) -> Result<PathBuf, S3ServerError> {
    std::fs::create_dir_all(base)
        .map_err(|err| S3ServerError::io(format!("creating directory {}", base.display()), err))?;
    let base = std::fs::canonicalize(base)
        .map_err(|err| S3ServerError::io(format!("resolving {}", base.display()), err))?;
    remove_stale(&base);
    let owner = std::process::id();
    loop {
        let seq = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{owner}-{seq}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(S3ServerError::io(
                    format!("creating directory {}", dir.display()),
                    err,
                ));
            }
        }
    }
}

/// Removes, best effort, the data directories under `base` whose owning process is gone (a
/// test process that was killed cannot remove its own). Only on systems with `/proc`, where
/// that can be told; elsewhere nothing is removed.
fn remove_stale(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.split_once('-'))
            .and_then(|(pid, seq)| seq.parse::<u32>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        if pid != own && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Checks `name` against S3's bucket naming rules (those that matter for a path-style local
/// server; s3s refuses requests for names that break them).
pub(crate) fn validate_bucket_name(name: &str) -> Result<(), S3ServerError> {
    let invalid = |reason| {
        Err(S3ServerError::InvalidBucketName {
            name: name.to_owned(),
            reason,
        })
    };
    if !(3..=63).contains(&name.len()) {
        return invalid("it must have 3 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return invalid("it may only contain lowercase letters, digits, `-` and `.`");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return invalid("it must begin and end with a lowercase letter or a digit");
    }
    if name.contains("..") {
        return invalid("it must not contain two adjacent periods");
    }
    Ok(())
}

/// Checks that `key` names a plain file under its bucket's directory, as s3s-fs stores it.
pub(crate) fn validate_key(key: &str) -> Result<(), S3ServerError> {
    let invalid = |reason| {
        Err(S3ServerError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.starts_with('/') {
        return invalid("it begins with `/`");
    }
    if key.ends_with('/') {
        return invalid("it ends with `/` (s3s-fs stores such keys as directories)");
    }
    if key.contains('\0') || key.contains('\\') {
        return invalid("it contains a NUL or a backslash");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("it has an empty segment (`//`)"),
            "." | ".." => return invalid("it has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// The hidden files where s3s-fs keeps an object's ETag and checksums (`.internal.json`) and
/// its attributes (`.metadata.json`), at the top of the data directory.
pub(crate) fn side_files(data_dir: &Path, bucket: &str, key: &str) -> [PathBuf; 2] {
    let stem = format!(
        ".bucket-{}.object-{}",
        base64_url(bucket.as_bytes()),
        base64_url(key.as_bytes())
    );
    [
        data_dir.join(format!("{stem}.internal.json")),
        data_dir.join(format!("{stem}.metadata.json")),
    ]
}

/// URL-safe base64 without padding, as s3s-fs names its side files.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for sextet in &sextets[..=chunk.len()] {
            out.push(char::from(ALPHABET[*sextet as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{base64_url, validate_bucket_name, validate_key};

    #[test]
    fn encodes_base64_url_without_padding() {
        assert_eq!(base64_url(b""), "");
        assert_eq!(base64_url(b"f"), "Zg");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(b"foo"), "Zm9v");
        assert_eq!(base64_url(b"foob"), "Zm9vYg");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn checks_bucket_names() {
        for good in ["tierkit", "a-b.c", "abc", "0ab", &"a".repeat(63)] {
            assert!(validate_bucket_name(good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "Upper",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            &"a".repeat(64),
            "a/b",
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_keys() {
        for good in ["k", "a/b/c", "tierkit/v1/user:42", "ü.bin"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "../x", "a/./b", "a\\b"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
