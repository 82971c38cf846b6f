//! A real S3 protocol server, in-process, for tierkit's tests and demo.
//!
//! [`S3Server::start`] runs [s3s] over [s3s-fs] (pinned to 0.14.1, the last release that
//! builds with rustc 1.95): a fresh data directory under [`default_base_dir`] (each bucket a
//! sub-directory, each object a file), served over HTTP/1.1 and HTTP/2 by hyper on a free
//! port of 127.0.0.1 (never a fixed port), with `TCP_NODELAY` on every connection and SigV4
//! signatures checked for one access key / secret key pair ([`S3ServerOptions`]).
//!
//! For tests it also:
//! - counts the requests it serves by S3 operation, in the s3s service layer
//!   ([`S3Server::requests`], [`S3Server::count`], names in [`ops`]);
//! - stops and restarts on the same port ([`S3Server::stop`], [`S3Server::restart`]): stopped,
//!   it closes its port and every connection, so clients get connection errors;
//! - reads and writes object files directly, to plant garbage or check what was stored
//!   ([`S3Server::put_raw`], [`S3Server::get_raw`], [`S3Server::object_path`]);
//! - answers `NoSuchBucket` for objects of a missing bucket, as Amazon S3 does (s3s-fs alone
//!   answers `NoSuchKey` for a GET and creates the bucket for a PUT).
//!
//! Dropping the server stops its tasks and removes its data directory.
//!
//! [`S3ClientConfig`] is what a client needs (endpoint, region, keys, bucket); with the
//! `client` feature, `S3Server::client` builds a ready `aws_sdk_s3::Client`.
//! [`S3ClientConfig::from_env`] reads the [`mod@env`] variables through which
//! `cargo xtask s3-compat` points tests at another S3 implementation.
//!
//! ```no_run
//! use tierkit_s3_server::{S3ClientConfig, S3Server, S3ServerOptions, ops};
//!
//! # async fn demo() -> Result<(), tierkit_s3_server::S3ServerError> {
//! // In a test: the endpoint of `cargo xtask s3-compat` if set, else a private server.
//! let server;
//! let config = match S3ClientConfig::from_env()? {
//!     Some(config) => config,
//!     None => {
//!         server = S3Server::start(S3ServerOptions::new()).await?;
//!         server.client_config()
//!     }
//! };
//! println!("S3 at {} (bucket {})", config.endpoint, config.bucket);
//! # Ok(())
//! # }
//! ```
//!
//! Limits: s3s-fs keeps no versions, ACLs, tags or lifecycle rules, and serves one region
//! (it verifies signatures for whatever region a request is signed for).
//!
//! [s3s]: https://docs.rs/s3s/0.14.1
//! [s3s-fs]: https://docs.rs/s3s-fs/0.14.1

#![warn(clippy::missing_docs_in_private_items)]

mod config;
mod counts;
mod dirs;
mod error;
mod server;
mod store;

pub use config::{
    DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY, S3ClientConfig, env,
};
pub use counts::{OpCounts, RequestCounts, ops};
pub use dirs::default_base_dir;
pub use error::S3ServerError;
pub use server::{S3Server, S3ServerOptions};
