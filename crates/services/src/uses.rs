//! Which tests ran against which service: the one place a test decides between running,
//! skipping and failing for lack of a service, and the record `cargo xtask` counts.
//!
//! A test that needs a service asks for it here ([`service_for_tests`], or
//! [`RedisBinaries::for_tests`](crate::RedisBinaries::for_tests) for private servers). When the
//! service is there, the test's use of it is appended to the file named by
//! [`env::SERVICE_USES`] (when set), one line per use: `service`, the test binary and the
//! test's name, separated by tabs. The xtask names a fresh file, runs the tests, and prints how
//! many distinct tests ran against each service ([`count_uses`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use crate::binaries::services_required;
use crate::env;
use crate::error::ServiceError;

/// For tests: the value of the environment variable `var` that hands a test a service (a URL,
/// an endpoint), recorded as a use of that service by the calling test ([`record_use`], under
/// the name [`service_name`] gives). `Ok(None)` when `var` is unset (or empty) and
/// [`env::REQUIRE_SERVICES`] is not set: the test then skips (printing `skipped: <reason>`, or
/// through `tierkit_testkit::conformance::skip`). With [`env::REQUIRE_SERVICES`] set (as
/// `cargo xtask` sets it wherever it starts the services), an unset `var` is an error, so the
/// test fails instead of passing without running.
///
/// # Errors
///
/// [`ServiceError::NotConfigured`] when `var` is unset and services are required;
/// [`ServiceError::Io`] when the use cannot be recorded.
pub fn service_for_tests(var: &'static str) -> Result<Option<String>, ServiceError> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => {
            record_use(service_name(var))?;
            Ok(Some(value))
        }
        _ if services_required() => Err(ServiceError::NotConfigured { var }),
        _ => Ok(None),
    }
}

/// The name a use of the service handed over by `var` is recorded under: `redis` for
/// [`env::REDIS_URL`], `redis-cluster` for [`env::REDIS_CLUSTER_URL`], `s3` for
/// `TIERKIT_S3_ENDPOINT`, else `var` itself.
#[must_use]
pub fn service_name(var: &str) -> &str {
    match var {
        env::REDIS_URL => "redis",
        env::REDIS_CLUSTER_URL => "redis-cluster",
        env::REDIS_SENTINEL_URL => "redis-sentinel",
        "TIERKIT_S3_ENDPOINT" => "s3",
        other => other,
    }
}

/// Records that the calling test runs against `service`: appends a line to the file named by
/// [`env::SERVICE_USES`], if it is set. The test is named by its thread (the test harness names
/// each test's thread after the test) and its binary.
///
/// # Errors
///
/// [`ServiceError::Io`] when the file cannot be appended to.
pub fn record_use(service: &str) -> Result<(), ServiceError> {
    let Some(path) = std::env::var_os(env::SERVICE_USES).filter(|path| !path.is_empty()) else {
        return Ok(());
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{}\t{}\t{}\n", clean(service), clean(&binary), clean(test));
    let path = Path::new(&path);
    let action = || format!("recording a service use in {}", path.display());
    // One `write` of one short line to a file opened for appending: lines from tests running in
    // parallel (threads, processes) do not interleave.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|err| ServiceError::io(action(), err))
}

/// `text` without the tabs and line breaks that separate the fields and lines of the record.
fn clean(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// How many distinct tests (test binary and name) ran against each service, from the lines
/// [`record_use`] wrote. Lines that are not three fields are ignored.
#[must_use]
pub fn count_uses(record: &str) -> BTreeMap<String, usize> {
    let mut tests: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for line in record.lines() {
        let mut fields = line.split('\t');
        if let (Some(service), Some(binary), Some(test), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        {
            tests.entry(service).or_default().insert((binary, test));
        }
    }
    tests
        .into_iter()
        .map(|(service, tests)| (service.to_owned(), tests.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::count_uses;

    #[test]
    fn counts_each_test_once_per_service() {
        let record = "\
redis\tconformance-1a2b\tredis_standalone::round_trip
redis\tconformance-1a2b\tredis_standalone::round_trip
redis\tconformance-1a2b\tredis_standalone::overwrite
redis\tbehaviour-3c4d\tredis_standalone::round_trip
redis-cluster\tconformance-1a2b\tredis_cluster::round_trip
s3\tconformance-5e6f\ts3_alone::round_trip
not a record line
";
        let counts = count_uses(record);
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("redis".to_owned(), 3),
                ("redis-cluster".to_owned(), 1),
                ("s3".to_owned(), 1),
            ]
        );
        assert!(count_uses("").is_empty());
    }
}
