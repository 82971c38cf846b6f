//! The count of tests that ran against each service: the tests record each use of a service in
//! a file the xtask names (`TIERKIT_SERVICE_USES`, see `tierkit_services::record_use`), and the
//! xtask prints how many distinct tests ran against each after the run.

use std::fmt::Write as _;
use std::path::PathBuf;

use tierkit_services::{count_uses, env};

use crate::runner::{Cmd, Failure};

/// A fresh record file for one run, removed when dropped.
pub struct UseRecord {
    /// The file the tests append to.
    path: PathBuf,
}

impl UseRecord {
    /// An empty record for a run of the suite `suite`, in the cargo target directory.
    pub fn fresh(suite: &str) -> Result<Self, Failure> {
        let dir = tierkit_services::target_dir().unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!(
            "tierkit-service-uses-{suite}-{}.tsv",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, ""))
            .map_err(|err| Failure {
                command: format!("touch {}", path.display()),
                reason: format!("creating the record of service uses failed: {err}"),
            })?;
        Ok(Self { path })
    }

    /// `cmd` with the variable that makes the tests record their uses here.
    pub fn apply(&self, cmd: Cmd) -> Cmd {
        cmd.env(env::SERVICE_USES, &self.path.display().to_string())
    }

    /// How many tests ran against each service, as lines for the end of the run.
    pub fn summary(&self, expected: &[&str]) -> String {
        summary(
            &std::fs::read_to_string(&self.path).unwrap_or_default(),
            expected,
        )
    }
}

impl Drop for UseRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The summary of `record`: one line per service, the `expected` ones first (with 0 when no
/// test ran against one), then any other service a test recorded.
fn summary(record: &str, expected: &[&str]) -> String {
    let mut counts = count_uses(record);
    let mut text = String::from("tests that ran against each service:");
    let mut line = |service: &str, count: usize| {
        let _ = write!(text, "\n  {service:<14} {count:>5}");
    };
    for service in expected {
        line(service, counts.remove(*service).unwrap_or(0));
    }
    for (service, count) in counts {
        line(&service, count);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn every_expected_service_is_listed_even_when_no_test_used_it() {
        let record = "\
redis\tconformance-1\tredis_standalone::round_trip
redis\tconformance-1\tredis_standalone::round_trip
redis\tbehaviour-2\tmoka_over_redis_over_s3_behaviour
s3\tconformance-3\ts3_alone::round_trip
redis-server\tfaults-4\ta_restart_reconnects
";
        assert_eq!(
            summary(record, &["redis", "redis-cluster", "s3"]),
            "tests that ran against each service:\n  \
             redis              2\n  \
             redis-cluster      0\n  \
             s3                 1\n  \
             redis-server       1"
        );
        assert_eq!(
            summary("", &["redis"]),
            "tests that ran against each service:\n  redis              0"
        );
    }
}
