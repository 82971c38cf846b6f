//! The conformance suite against the reference tier, answering synchronously and like a remote
//! tier.
#![allow(clippy::unwrap_used)] // tests

use tierkit_testkit::{ConformanceContext, MemoryBackend};

tierkit_testkit::conformance!(memory_ready, |ctx: ConformanceContext| async move {
    Ok(MemoryBackend::new("memory").with_clock(ctx.clock()))
});

tierkit_testkit::conformance!(memory_remote, |ctx: ConformanceContext| async move {
    Ok(MemoryBackend::new("memory")
        .with_clock(ctx.clock())
        .remote())
});

/// The cases can be called directly, from a test with its own runtime.
#[tokio::test]
async fn a_case_called_directly() {
    tierkit_testkit::conformance::overwrite(|ctx: ConformanceContext| async move {
        Ok(MemoryBackend::new("memory").with_clock(ctx.clock()))
    })
    .await;
}

#[test]
fn contexts_get_distinct_namespaces_and_share_a_clock_with_siblings() {
    let a = ConformanceContext::new();
    let b = ConformanceContext::new();
    let sibling = a.sibling();
    assert_ne!(a.namespace(), b.namespace());
    assert_ne!(a.namespace(), sibling.namespace());
    assert!(
        a.namespace()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    );
    a.manual_clock().advance(std::time::Duration::from_secs(5));
    assert_eq!(a.clock().now(), sibling.clock().now());
}

#[test]
fn the_case_list_is_complete() {
    assert_eq!(tierkit_testkit::conformance::CASES.len(), 22);
}

/// A tier that forgets to honour the clock must fail the suite.
#[test]
#[should_panic(expected = "at expires_at")]
fn a_tier_ignoring_the_clock_fails() {
    tierkit_testkit::conformance::run(
        |_ctx: ConformanceContext| async move { Ok(MemoryBackend::new("memory")) },
        tierkit_testkit::conformance::expired_value_is_never_returned,
    );
}

/// A factory error fails the case with the error.
#[test]
#[should_panic(expected = "the factory failed")]
fn a_failing_factory_fails_the_case() {
    tierkit_testkit::conformance::run(
        |_ctx: ConformanceContext| async move {
            Err::<MemoryBackend, _>(tierkit_core::BackendError::internal(
                "memory",
                tierkit_core::Op::Get,
                "no server",
            ))
        },
        tierkit_testkit::conformance::miss_on_absent_key,
    );
}

/// A tier whose probe always says "miss" (wrong once a value is stored).
#[derive(Debug)]
struct LyingProbe(MemoryBackend);

impl tierkit_core::Backend for LyingProbe {
    fn label(&self) -> &str {
        "lying"
    }
    fn probe(&self, _key: &tierkit_core::CacheKey) -> tierkit_core::Probe {
        tierkit_core::Probe::Miss
    }
    fn get<'a>(&'a self, key: &'a tierkit_core::CacheKey) -> tierkit_core::GetFuture<'a> {
        self.0.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a tierkit_core::CacheKey,
        value: tierkit_core::CacheValue,
    ) -> tierkit_core::WriteFuture<'a> {
        self.0.set(key, value)
    }
    fn set_if_newer<'a>(
        &'a self,
        key: &'a tierkit_core::CacheKey,
        value: tierkit_core::CacheValue,
    ) -> tierkit_core::WriteFuture<'a> {
        self.0.set_if_newer(key, value)
    }
    fn delete<'a>(&'a self, key: &'a tierkit_core::CacheKey) -> tierkit_core::WriteFuture<'a> {
        self.0.delete(key)
    }
    fn clear(&self) -> tierkit_core::WriteFuture<'_> {
        self.0.clear()
    }
}

/// A tier whose conditional write is a plain `set` (wrong once the tier holds a newer value).
#[derive(Debug)]
struct Unconditional(MemoryBackend);

impl tierkit_core::Backend for Unconditional {
    fn label(&self) -> &str {
        "unconditional"
    }
    fn get<'a>(&'a self, key: &'a tierkit_core::CacheKey) -> tierkit_core::GetFuture<'a> {
        self.0.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a tierkit_core::CacheKey,
        value: tierkit_core::CacheValue,
    ) -> tierkit_core::WriteFuture<'a> {
        self.0.set(key, value)
    }
    fn set_if_newer<'a>(
        &'a self,
        key: &'a tierkit_core::CacheKey,
        value: tierkit_core::CacheValue,
    ) -> tierkit_core::WriteFuture<'a> {
        self.0.set(key, value)
    }
    fn delete<'a>(&'a self, key: &'a tierkit_core::CacheKey) -> tierkit_core::WriteFuture<'a> {
        self.0.delete(key)
    }
    fn clear(&self) -> tierkit_core::WriteFuture<'_> {
        self.0.clear()
    }
}

#[test]
#[should_panic(expected = "after an older value: wrong value")]
fn an_unconditional_set_if_newer_fails() {
    tierkit_testkit::conformance::run(
        |ctx: ConformanceContext| async move {
            Ok(Unconditional(
                MemoryBackend::new("memory").with_clock(ctx.clock()),
            ))
        },
        tierkit_testkit::conformance::set_if_newer_keeps_a_newer_value,
    );
}

#[test]
#[should_panic(expected = "probe of a fresh value answered Miss")]
fn a_probe_disagreeing_with_get_fails() {
    tierkit_testkit::conformance::run(
        |ctx: ConformanceContext| async move {
            Ok(LyingProbe(
                MemoryBackend::new("memory").with_clock(ctx.clock()),
            ))
        },
        tierkit_testkit::conformance::probe_agrees_with_get,
    );
}

#[test]
#[should_panic(expected = "answered a miss but get a hit")]
fn every_read_is_checked_against_a_probe() {
    tierkit_testkit::conformance::run(
        |ctx: ConformanceContext| async move {
            Ok(LyingProbe(
                MemoryBackend::new("memory").with_clock(ctx.clock()),
            ))
        },
        tierkit_testkit::conformance::round_trip,
    );
}

/// A case whose factory always skips. It runs only in a child process of the two tests below,
/// which choose its environment.
#[test]
#[ignore = "run in a child process, with a chosen environment, by the skip tests"]
fn a_case_whose_service_is_never_there() {
    tierkit_testkit::conformance::run(
        |_ctx: ConformanceContext| async move {
            Err::<MemoryBackend, _>(tierkit_testkit::conformance::skip(
                "this backend is never available",
            ))
        },
        tierkit_testkit::conformance::round_trip,
    );
}

/// Runs [`a_case_whose_service_is_never_there`] in a child process of this test binary, with
/// `TIERKIT_REQUIRE_SERVICES` set to `require` (or unset).
fn run_the_skipping_case(require: Option<&str>) -> std::process::Output {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([
        "--ignored",
        "--exact",
        "a_case_whose_service_is_never_there",
        "--nocapture",
    ]);
    child.env_remove("TIERKIT_REQUIRE_SERVICES");
    if let Some(require) = require {
        child.env("TIERKIT_REQUIRE_SERVICES", require);
    }
    child.output().unwrap()
}

#[test]
fn a_case_skips_when_services_are_optional() {
    for require in [None, Some("0"), Some("")] {
        let output = run_the_skipping_case(require);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{require:?}: {stderr}");
        assert!(
            stderr.contains("skipped: this backend is never available"),
            "{require:?}: {stderr}"
        );
    }
}

#[test]
fn a_case_fails_instead_of_skipping_when_services_are_required() {
    let output = run_the_skipping_case(Some("1"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the case passed: {stderr}");
    assert!(
        stderr.contains(
            "the case cannot run (this backend is never available), and \
             TIERKIT_REQUIRE_SERVICES is set"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("skipped:"), "{stderr}");
}
