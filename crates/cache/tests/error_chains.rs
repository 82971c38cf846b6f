//! Error chains: every error of a cache call says what failed at its own level, and its cause
//! is reachable through `source()` down to the loader's (or the tier's) own error, so a report
//! that walks the chain prints each message once and a caller can downcast to its own type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod support;

use std::error::Error;
use std::fmt;
use std::time::Duration;

use support::{FaultyStack, Stack};
use tierkit_cache::codec::CodecError;
use tierkit_cache::frame::{FrameError, FrameErrorReason};
use tierkit_cache::{CacheError, FetchOptions, LoaderError, Source};
use tierkit_core::{BackendError, CacheKey, ErrorKind, Op};
use tierkit_testkit::logs::capture;
use tierkit_testkit::{Fault, InjectedFault};
use tracing::Level;

/// A loader's own error, with a cause of its own.
#[derive(Debug)]
struct OriginDown {
    status: u16,
    source: std::io::Error,
}

impl fmt::Display for OriginDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the origin answered {}", self.status)
    }
}

impl Error for OriginDown {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// `error` and every error of its source chain, outermost first.
fn links<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The messages of `error` and of every error of its source chain, outermost first.
fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
    links(error).map(ToString::to_string).collect()
}

/// The first error of the chain of `error` that is an `E`: what a caller looking for its own
/// type writes.
fn find<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    links(error).find_map(|e| e.downcast_ref::<E>())
}

/// Asserts that no message of the chain repeats a message below it, as a report printing
/// every level (`error: ...`, `caused by: ...`) would then show it twice.
fn assert_each_message_once(messages: &[String]) {
    for (i, outer) in messages.iter().enumerate() {
        for inner in &messages[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?}; the chain: {messages:#?}"
            );
        }
    }
}

/// The error of a `get_or_fetch` whose loader fails with an [`OriginDown`].
async fn failed_load() -> CacheError {
    let stack = Stack::<String>::new();
    let cache = stack.cache();
    cache
        .get_or_fetch("k", || async {
            Err::<String, _>(OriginDown {
                status: 503,
                source: std::io::Error::other("connection refused"),
            })
        })
        .await
        .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn a_loader_failure_reports_each_message_once() {
    let error = failed_load().await;
    let messages = chain(&error);
    assert_eq!(
        messages,
        [
            "the cache could not load the value",
            "the loader returned an error",
            "the origin answered 503",
            "connection refused",
        ]
    );
    assert_each_message_once(&messages);
}

#[tokio::test(start_paused = true)]
async fn the_loaders_own_error_is_reachable_by_downcast_along_the_source_chain() {
    let error = failed_load().await;

    // CacheError -> LoaderError -> the loader's own error, each a link of the chain.
    let loader = error.source().unwrap();
    let shared = loader.downcast_ref::<LoaderError>().unwrap();
    assert!(LoaderError::ptr_eq(shared, error.loader_error().unwrap()));
    let own = loader
        .source()
        .unwrap()
        .downcast_ref::<OriginDown>()
        .unwrap();
    assert_eq!(own.status, 503);

    assert_eq!(find::<OriginDown>(&error).map(|e| e.status), Some(503));
    let io = find::<std::io::Error>(&error);
    assert_eq!(
        io.map(ToString::to_string).as_deref(),
        Some("connection refused")
    );
}

/// The cache's log of a failed load records the error with its chain, so the loader's own
/// message (which no message of the cache repeats) is in the log line once.
#[tokio::test(start_paused = true)]
async fn the_log_of_a_failed_load_carries_the_loaders_own_message() {
    let logs = capture(Level::DEBUG);
    failed_load().await;
    logs.assert_lines(
        1,
        &[
            "the loader failed",
            "error=the loader returned an error",
            "the origin answered 503",
            "connection refused",
        ],
    );
}

#[tokio::test(start_paused = true)]
async fn a_strict_tier_failure_reports_each_message_once() {
    let t = FaultyStack::<String>::new();
    let cache = t.cache();
    t.l2.push(Op::Get, Fault::Fail(ErrorKind::Connection));
    let error = cache
        .get_with("k", &FetchOptions::new().strict_tiers(true))
        .await
        .unwrap_err();

    let messages = chain(&error);
    assert_eq!(
        messages,
        [
            "the l2 tier failed",
            "l2: get failed: connection error",
            "injected connection fault on get",
        ]
    );
    assert_each_message_once(&messages);
    assert_eq!(find::<InjectedFault>(&error).map(|f| f.op), Some(Op::Get));
}

#[test]
fn every_cache_error_with_a_cause_leaves_it_to_the_chain() {
    let invalid_key = CacheError::InvalidKey(CacheKey::new("").unwrap_err());
    let decode = CacheError::Decode {
        tier: Source::L3,
        source: FrameError::new(FrameErrorReason::Checksum, "crc mismatch"),
    };
    let encode = CacheError::Encode(CodecError::new("postcard", "the value is too deep"));
    let tier = CacheError::Tier {
        tier: Source::L2,
        source: BackendError::timeout("redis", Op::Set, Duration::from_millis(250)),
    };
    let loader = CacheError::Loader(LoaderError::new("boxed message"));

    for (error, expected) in [
        (
            &invalid_key,
            &["invalid cache key", "invalid key: the key is empty"][..],
        ),
        (
            &decode,
            &[
                "the l3 tier holds an entry that cannot be decoded",
                "invalid value frame (checksum): crc mismatch",
            ],
        ),
        (
            &encode,
            &[
                "the value could not be encoded",
                "postcard: the value is too deep",
            ],
        ),
        (
            &tier,
            &["the l2 tier failed", "redis: set timed out after 250ms"],
        ),
        (
            &loader,
            &[
                "the cache could not load the value",
                "the loader returned an error",
                "boxed message",
            ],
        ),
    ] {
        let messages = chain(error);
        assert_eq!(messages, expected);
        assert_each_message_once(&messages);
    }
}
