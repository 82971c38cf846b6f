//! Request counting in the s3s service layer: an [`S3Access`] hook that counts every
//! authenticated request by the S3 operation s3s resolved it to, and a wrapper of the HTTP
//! service that counts every request and records how each one ended.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use hyper::body::Incoming;
use s3s::access::{S3Access, S3AccessContext};
use s3s::service::S3Service;
use s3s::{HttpError, HttpResponse, S3Result};

/// Names of common S3 operations, as s3s names them (and AWS's API reference), for
/// [`RequestCounts::get`] and [`S3Server::count`](crate::S3Server::count).
pub mod ops {
    /// `GET /bucket/key`.
    pub const GET_OBJECT: &str = "GetObject";
    /// `PUT /bucket/key`.
    pub const PUT_OBJECT: &str = "PutObject";
    /// `HEAD /bucket/key`.
    pub const HEAD_OBJECT: &str = "HeadObject";
    /// `DELETE /bucket/key`.
    pub const DELETE_OBJECT: &str = "DeleteObject";
    /// `POST /bucket?delete`.
    pub const DELETE_OBJECTS: &str = "DeleteObjects";
    /// `GET /bucket?list-type=2`.
    pub const LIST_OBJECTS_V2: &str = "ListObjectsV2";
    /// `GET /bucket` (version 1 listing).
    pub const LIST_OBJECTS: &str = "ListObjects";
    /// `PUT /bucket/key` with `x-amz-copy-source`.
    pub const COPY_OBJECT: &str = "CopyObject";
    /// `PUT /bucket`.
    pub const CREATE_BUCKET: &str = "CreateBucket";
    /// `HEAD /bucket`.
    pub const HEAD_BUCKET: &str = "HeadBucket";
    /// `DELETE /bucket`.
    pub const DELETE_BUCKET: &str = "DeleteBucket";
    /// `GET /`.
    pub const LIST_BUCKETS: &str = "ListBuckets";
}

/// Counts of one S3 operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Requests that passed the signature check and were routed to this operation.
    pub requests: u64,
    /// Those of them answered with an error status (4xx or 5xx), for instance `NoSuchKey`.
    pub errors: u64,
}

/// A snapshot of the requests a server received, by S3 operation.
///
/// Counting happens in the s3s service layer, once per HTTP request (SDK retries count as
/// requests), so tests can assert exact numbers of GETs and PUTs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Per operation name (`GetObject`, `PutObject`, ...; see [`ops`]).
    by_op: BTreeMap<String, OpCounts>,
    /// Every HTTP request, routed or not.
    http: u64,
    /// Requests that reached no operation: bad signatures, unknown access keys, anonymous
    /// requests, malformed requests.
    rejected: u64,
}

impl RequestCounts {
    /// Requests routed to operation `op` (for instance [`ops::GET_OBJECT`]), whatever their
    /// outcome; 0 for an operation never requested (or a misspelled name).
    #[must_use]
    pub fn get(&self, op: &str) -> u64 {
        self.by_op.get(op).map_or(0, |counts| counts.requests)
    }

    /// Requests routed to operation `op` that were answered with an error status.
    #[must_use]
    pub fn errors(&self, op: &str) -> u64 {
        self.by_op.get(op).map_or(0, |counts| counts.errors)
    }

    /// The counts of operation `op`.
    #[must_use]
    pub fn op(&self, op: &str) -> OpCounts {
        self.by_op.get(op).copied().unwrap_or_default()
    }

    /// Every operation requested at least once, with its counts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, OpCounts)> {
        self.by_op
            .iter()
            .map(|(name, counts)| (name.as_str(), *counts))
    }

    /// Requests routed to an operation, all operations together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.by_op.values().map(|counts| counts.requests).sum()
    }

    /// Every HTTP request the server read, routed or rejected.
    #[must_use]
    pub fn http_requests(&self) -> u64 {
        self.http
    }

    /// HTTP requests refused before reaching an operation (for instance with
    /// `SignatureDoesNotMatch`, `InvalidAccessKeyId` or `AccessDenied`).
    #[must_use]
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

impl fmt::Display for RequestCounts {
    /// `GetObject=3 (1 error), PutObject=2; rejected=1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, counts) in &self.by_op {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{name}={}", counts.requests)?;
            match counts.errors {
                0 => {}
                1 => f.write_str(" (1 error)")?,
                n => write!(f, " ({n} errors)")?,
            }
        }
        if first {
            f.write_str("no operation")?;
        }
        write!(f, "; rejected={}", self.rejected)
    }
}

/// The live counters a server shares with its service.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// The counts so far.
    counts: Mutex<RequestCounts>,
}

impl Counters {
    /// Runs `f` on the counts.
    fn with<T>(&self, f: impl FnOnce(&mut RequestCounts) -> T) -> T {
        f(&mut self.counts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A copy of the counts so far.
    pub(crate) fn snapshot(&self) -> RequestCounts {
        self.with(|counts| counts.clone())
    }

    /// Sets every count back to zero.
    pub(crate) fn reset(&self) {
        self.with(|counts| *counts = RequestCounts::default());
    }
}

/// The operation an HTTP request was routed to: put in the request's extensions by
/// [`CountingService`], filled in by [`CountingAccess`] once s3s has resolved it.
#[derive(Debug, Clone, Default)]
struct OpSlot(Arc<Mutex<Option<String>>>);

/// The s3s access hook: denies anonymous requests (as s3s's default check does) and counts
/// every authenticated request under its operation.
pub(crate) struct CountingAccess {
    /// Where the counts go.
    pub(crate) counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl S3Access for CountingAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(
                AccessDenied,
                "Signature is required: this server checks SigV4 signatures"
            ));
        }
        let op = cx.s3_op().name().to_owned();
        self.counters.with(|counts| {
            counts.by_op.entry(op.clone()).or_default().requests += 1;
        });
        if let Some(slot) = cx.extensions_mut().get::<OpSlot>() {
            *slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(op);
        }
        Ok(())
    }
}

/// The HTTP service of a connection: s3s's service, counting requests and their outcomes.
#[derive(Clone)]
pub(crate) struct CountingService {
    /// The s3s service.
    pub(crate) inner: S3Service,
    /// Where the counts go.
    pub(crate) counters: Arc<Counters>,
    /// While `true`, requests are held unanswered (see `S3Server::pause`).
    pub(crate) paused: tokio::sync::watch::Receiver<bool>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for CountingService {
    type Response = HttpResponse;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        self.counters.with(|counts| counts.http += 1);
        let slot = OpSlot::default();
        req.extensions_mut().insert(slot.clone());
        let inner = self.inner.clone();
        let counters = Arc::clone(&self.counters);
        let mut paused = self.paused.clone();
        Box::pin(async move {
            // A closed sender means the server is gone: answer rather than hang.
            let _ = paused.wait_for(|paused| !*paused).await;
            let response = hyper::service::Service::call(&inner, req).await;
            let failed = match &response {
                Ok(response) => {
                    response.status().is_client_error() || response.status().is_server_error()
                }
                Err(_) => true,
            };
            let op = slot.0.lock().unwrap_or_else(PoisonError::into_inner).take();
            counters.with(|counts| match op {
                Some(op) if failed => counts.by_op.entry(op).or_default().errors += 1,
                Some(_) => {}
                None => counts.rejected += 1,
            });
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{OpCounts, RequestCounts, ops};

    #[test]
    fn reads_and_displays_counts() {
        let mut counts = RequestCounts::default();
        assert_eq!(counts.to_string(), "no operation; rejected=0");
        counts.by_op.insert(
            ops::GET_OBJECT.to_owned(),
            OpCounts {
                requests: 3,
                errors: 1,
            },
        );
        counts.by_op.insert(
            ops::PUT_OBJECT.to_owned(),
            OpCounts {
                requests: 2,
                errors: 0,
            },
        );
        counts.rejected = 1;
        counts.http = 6;
        assert_eq!(counts.get("GetObject"), 3);
        assert_eq!(counts.errors("GetObject"), 1);
        assert_eq!(counts.get("Nope"), 0);
        assert_eq!(counts.total(), 5);
        assert_eq!(counts.http_requests(), 6);
        assert_eq!(
            counts.to_string(),
            "GetObject=3 (1 error), PutObject=2; rejected=1"
        );
        assert_eq!(counts.iter().count(), 2);
    }
}
