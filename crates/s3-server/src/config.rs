//! [`S3ClientConfig`]: what a client needs to talk to an S3 endpoint, from a server or from the
//! environment.

use std::fmt;

use crate::error::S3ServerError;

/// The environment variables that point tests at an S3 endpoint other than the in-process
/// server (`cargo xtask s3-compat` sets them to a moto server). Read by
/// [`S3ClientConfig::from_env`].
pub mod env {
    /// Base URL of the endpoint, for instance `http://127.0.0.1:PORT`. When it is unset or
    /// empty, tests use an in-process [`S3Server`](crate::S3Server).
    pub const ENDPOINT: &str = "TIERKIT_S3_ENDPOINT";
    /// Region to sign requests for (default `us-east-1`).
    pub const REGION: &str = "TIERKIT_S3_REGION";
    /// Access key id (default [`DEFAULT_ACCESS_KEY`](crate::DEFAULT_ACCESS_KEY)).
    pub const ACCESS_KEY: &str = "TIERKIT_S3_ACCESS_KEY";
    /// Secret access key (default [`DEFAULT_SECRET_KEY`](crate::DEFAULT_SECRET_KEY)).
    pub const SECRET_KEY: &str = "TIERKIT_S3_SECRET_KEY";
    /// A bucket that exists on the endpoint (default [`DEFAULT_BUCKET`](crate::DEFAULT_BUCKET)).
    pub const BUCKET: &str = "TIERKIT_S3_BUCKET";
}

/// Access key id of a server started with default options.
pub const DEFAULT_ACCESS_KEY: &str = "tierkit-test";
/// Secret access key of a server started with default options (a test secret, not a secret).
pub const DEFAULT_SECRET_KEY: &str = "tierkit-test-secret-key";
/// Region of a server started with default options.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The bucket a server started with default options creates.
pub const DEFAULT_BUCKET: &str = "tierkit";

/// What an S3 client needs to reach an endpoint: its URL (path-style addressing), region,
/// static credentials and a bucket that exists there.
#[derive(Clone, PartialEq, Eq)]
pub struct S3ClientConfig {
    /// Base URL, for instance `http://127.0.0.1:PORT`, without a trailing `/`.
    pub endpoint: String,
    /// Region to sign requests for.
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// A bucket that exists on the endpoint.
    pub bucket: String,
}

impl fmt::Debug for S3ClientConfig {
    /// Shows everything but the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl S3ClientConfig {
    /// The endpoint named by the [`mod@env`] variables, or `None` when [`env::ENDPOINT`] is unset
    /// or empty (then tests start an in-process [`S3Server`](crate::S3Server)). Variables left
    /// unset take the defaults of [`S3ServerOptions`](crate::S3ServerOptions). The calling test
    /// is recorded as running against the endpoint (service `s3`, see
    /// [`tierkit_services::record_use`]), for `cargo xtask` to count.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::BadEnv`] when a variable is not UTF-8, the endpoint is not an
    /// `http://` or `https://` URL, or another variable is set but empty;
    /// [`S3ServerError::RecordUse`] when the use cannot be recorded.
    pub fn from_env() -> Result<Option<Self>, S3ServerError> {
        let config = Self::from_lookup(|name| std::env::var_os(name))?;
        if config.is_some() {
            tierkit_services::record_use(tierkit_services::service_name(env::ENDPOINT))
                .map_err(|source| S3ServerError::RecordUse { source })?;
        }
        Ok(config)
    }

    /// [`S3ClientConfig::from_env`] over any source of variables, for tests.
    fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, S3ServerError> {
        let read = |var: &'static str| -> Result<Option<String>, S3ServerError> {
            match lookup(var) {
                None => Ok(None),
                Some(value) => value
                    .into_string()
                    .map(Some)
                    .map_err(|_| S3ServerError::BadEnv {
                        var,
                        problem: "not valid UTF-8".to_owned(),
                        advice: "set it to plain text or unset it",
                    }),
            }
        };
        let Some(endpoint) = read(env::ENDPOINT)?.filter(|value| !value.is_empty()) else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(S3ServerError::BadEnv {
                var: env::ENDPOINT,
                problem: format!("{endpoint:?}, not an http:// or https:// URL"),
                advice: "set it to a base URL such as http://127.0.0.1:9000, or unset it to \
                         use an in-process server",
            });
        }
        let or_default = |var: &'static str, default: &str| -> Result<String, S3ServerError> {
            match read(var)? {
                None => Ok(default.to_owned()),
                Some(value) if value.is_empty() => Err(S3ServerError::BadEnv {
                    var,
                    problem: "set but empty".to_owned(),
                    advice: "give it a value, or unset it to use the default",
                }),
                Some(value) => Ok(value),
            }
        };
        Ok(Some(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region: or_default(env::REGION, DEFAULT_REGION)?,
            access_key: or_default(env::ACCESS_KEY, DEFAULT_ACCESS_KEY)?,
            secret_key: or_default(env::SECRET_KEY, DEFAULT_SECRET_KEY)?,
            bucket: or_default(env::BUCKET, DEFAULT_BUCKET)?,
        }))
    }

    /// The `export NAME=value` lines that hand this endpoint to tests through [`mod@env`].
    #[must_use]
    pub fn export_lines(&self) -> String {
        [
            (env::ENDPOINT, &self.endpoint),
            (env::REGION, &self.region),
            (env::ACCESS_KEY, &self.access_key),
            (env::SECRET_KEY, &self.secret_key),
            (env::BUCKET, &self.bucket),
        ]
        .iter()
        .map(|(name, value)| format!("export {name}='{}'\n", value.replace('\'', r"'\''")))
        .collect()
    }
}

#[cfg(feature = "client")]
impl S3ClientConfig {
    /// An aws-sdk-s3 configuration builder for this endpoint: the endpoint URL, path-style
    /// addressing, the region and static credentials; everything else is the SDK's default
    /// (retries included), to adjust before `build()`.
    #[must_use]
    pub fn sdk_config_builder(&self) -> aws_sdk_s3::config::Builder {
        use aws_sdk_s3::config::{Credentials, Region};
        aws_sdk_s3::Config::builder()
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "tierkit-s3-server",
            ))
    }

    /// A ready aws-sdk-s3 client for this endpoint, for tests: as
    /// [`S3ClientConfig::sdk_config_builder`], with one attempt per call (no retries: a test
    /// sees every failure at once and the server's request counts stay exact), a 2-second
    /// connect timeout and a 30-second timeout per call.
    #[must_use]
    pub fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::retry::RetryConfig;
        use aws_sdk_s3::config::timeout::TimeoutConfig;
        use std::time::Duration;
        let config = self
            .sdk_config_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[cfg(test)]
mod tests {
    use super::{S3ClientConfig, env};
    use std::collections::HashMap;
    use std::ffi::OsString;

    /// [`S3ClientConfig::from_lookup`] over `vars`.
    fn from(vars: &[(&str, &str)]) -> Result<Option<S3ClientConfig>, crate::S3ServerError> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), OsString::from(value)))
            .collect();
        S3ClientConfig::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn reads_the_environment() {
        assert_eq!(from(&[]).unwrap(), None);
        assert_eq!(from(&[(env::ENDPOINT, "")]).unwrap(), None);
        let config = from(&[(env::ENDPOINT, "http://127.0.0.1:5000/")])
            .unwrap()
            .unwrap();
        assert_eq!(config.endpoint, "http://127.0.0.1:5000");
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.bucket, "tierkit");
        let config = from(&[
            (env::ENDPOINT, "http://127.0.0.1:5000"),
            (env::REGION, "eu-west-1"),
            (env::ACCESS_KEY, "ak"),
            (env::SECRET_KEY, "sk"),
            (env::BUCKET, "other"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                config.region.as_str(),
                config.access_key.as_str(),
                config.secret_key.as_str(),
                config.bucket.as_str()
            ),
            ("eu-west-1", "ak", "sk", "other")
        );
        assert!(!format!("{config:?}").contains("sk\""));
        assert!(
            config
                .export_lines()
                .contains("export TIERKIT_S3_BUCKET='other'\n")
        );

        let err = from(&[(env::ENDPOINT, "127.0.0.1:5000")]).unwrap_err();
        assert!(err.to_string().contains("TIERKIT_S3_ENDPOINT"), "{err}");
        let err = from(&[(env::ENDPOINT, "http://x"), (env::BUCKET, "")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("TIERKIT_S3_BUCKET is set but empty"),
            "{err}"
        );
    }
}
