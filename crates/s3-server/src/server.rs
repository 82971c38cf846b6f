//! [`S3Server`]: s3s over s3s-fs, served by hyper on a free port of 127.0.0.1.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{
    DEFAULT_ACCESS_KEY, DEFAULT_BUCKET, DEFAULT_REGION, DEFAULT_SECRET_KEY, S3ClientConfig,
};
use crate::counts::{Counters, CountingAccess, CountingService, RequestCounts};
use crate::dirs;
use crate::error::S3ServerError;
use crate::store::Store;

/// How long the accept loop pauses after a failed `accept` (for instance when the process is
/// out of file descriptors), instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// How an [`S3Server`] is set up: its buckets, credentials, region and where its data goes.
///
/// ```
/// use tierkit_s3_server::S3ServerOptions;
///
/// let options = S3ServerOptions::new()
///     .bucket("cache")
///     .extra_bucket("other")
///     .credentials("my-key", "my-secret")
///     .region("eu-west-1");
/// ```
#[derive(Debug, Clone)]
pub struct S3ServerOptions {
    /// The main bucket, created at start.
    bucket: String,
    /// More buckets created at start.
    extra_buckets: Vec<String>,
    /// The one access key id the server accepts.
    access_key: String,
    /// Its secret key.
    secret_key: String,
    /// The region clients are told to sign for.
    region: String,
    /// Where the data directory is created, if not under [`crate::default_base_dir`].
    base_dir: Option<PathBuf>,
}

impl Default for S3ServerOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl S3ServerOptions {
    /// The defaults: one bucket [`DEFAULT_BUCKET`] (`tierkit`), the credentials
    /// [`DEFAULT_ACCESS_KEY`] / [`DEFAULT_SECRET_KEY`], region [`DEFAULT_REGION`], data under
    /// [`crate::default_base_dir`].
    #[must_use]
    pub fn new() -> Self {
        Self {
            bucket: DEFAULT_BUCKET.to_owned(),
            extra_buckets: Vec::new(),
            access_key: DEFAULT_ACCESS_KEY.to_owned(),
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            region: DEFAULT_REGION.to_owned(),
            base_dir: None,
        }
    }

    /// The main bucket, created at start and returned by [`S3Server::bucket`] (instead of
    /// `tierkit`).
    #[must_use]
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.bucket = name.into();
        self
    }

    /// One more bucket to create at start.
    #[must_use]
    pub fn extra_bucket(mut self, name: impl Into<String>) -> Self {
        self.extra_buckets.push(name.into());
        self
    }

    /// The one access key id / secret key pair the server accepts; every request must be
    /// signed (SigV4, or SigV2) with it.
    #[must_use]
    pub fn credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.access_key = access_key.into();
        self.secret_key = secret_key.into();
        self
    }

    /// The region given to clients by [`S3Server::client_config`]. The server verifies
    /// signatures for whatever region a request is signed for, like most S3 servers but
    /// Amazon's.
    #[must_use]
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Creates the data directory under `dir` instead of [`crate::default_base_dir`].
    #[must_use]
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }
}

/// The tasks of a running server.
struct Running {
    /// Set to `true` (or dropped) to stop the accept loop and every connection.
    shutdown: watch::Sender<bool>,
    /// The accept loop, which waits for its connections before it ends.
    task: JoinHandle<()>,
}

/// A real S3 protocol server in this process: [s3s] over [s3s-fs], serving a fresh temporary
/// directory over HTTP on a free port of 127.0.0.1, checking SigV4 signatures for one key pair.
///
/// It runs as tasks of the tokio runtime it is started from, and stops when dropped (or when
/// that runtime shuts down); dropping it also removes its data directory. It counts the
/// requests it serves by S3 operation ([`S3Server::requests`]), can be stopped and restarted
/// on the same port with its objects kept ([`S3Server::stop`], [`S3Server::restart`]), and
/// lets tests read and write object files directly ([`S3Server::put_raw`]).
///
/// ```no_run
/// use tierkit_s3_server::{S3Server, S3ServerOptions, ops};
///
/// # async fn demo() -> Result<(), tierkit_s3_server::S3ServerError> {
/// let server = S3Server::start(S3ServerOptions::new()).await?;
/// println!("S3 at {} (bucket {})", server.endpoint(), server.bucket());
/// let config = server.client_config(); // endpoint, region, keys, bucket
/// // ... run a client against it ...
/// assert_eq!(server.count(ops::GET_OBJECT), 0);
/// server.stop().await; // clients now get connection errors
/// server.restart().await?; // same port, same objects
/// # Ok(())
/// # }
/// ```
///
/// [s3s]: https://docs.rs/s3s/0.14.1
/// [s3s-fs]: https://docs.rs/s3s-fs/0.14.1
pub struct S3Server {
    /// The port it listens on, kept across restarts.
    port: u16,
    /// `http://127.0.0.1:PORT`.
    endpoint: String,
    /// The options it was started with.
    options: S3ServerOptions,
    /// The directory s3s-fs serves (canonical).
    data_dir: PathBuf,
    /// The HTTP service every connection runs.
    service: CountingService,
    /// The request counts, shared with the service.
    counters: Arc<Counters>,
    /// Holds requests unanswered while `true` ([`S3Server::pause`]).
    paused: tokio::sync::watch::Sender<bool>,
    /// The accept loop and its shutdown switch, while running.
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.options.bucket)
            .field("data_dir", &self.data_dir)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Removes a data directory when dropped, unless disarmed: cleans up after a failed start.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl S3Server {
    /// Starts a server: creates its data directory and buckets, binds a free port of
    /// 127.0.0.1 and serves it on the current tokio runtime. It accepts connections as soon as
    /// this returns.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::NoRuntime`] outside a tokio runtime, [`S3ServerError::InvalidBucketName`]
    /// for a bucket of the options that S3 would refuse, [`S3ServerError::Io`] when the data
    /// directory cannot be created or no port can be bound, [`S3ServerError::DataDir`] when
    /// s3s-fs refuses the directory.
    pub async fn start(options: S3ServerOptions) -> Result<Self, S3ServerError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| S3ServerError::NoRuntime)?;
        dirs::validate_bucket_name(&options.bucket)?;
        for bucket in &options.extra_buckets {
            dirs::validate_bucket_name(bucket)?;
        }
        let base = options
            .base_dir
            .clone()
            .unwrap_or_else(crate::dirs::default_base_dir);
        let data_dir = dirs::create_data_dir(&base)?;
        let mut guard = DirGuard(Some(data_dir.clone()));
        for bucket in std::iter::once(&options.bucket).chain(&options.extra_buckets) {
            create_bucket_dir(&data_dir, bucket)?;
        }
        let fs = s3s_fs::FileSystem::new(&data_dir).map_err(|err| S3ServerError::DataDir {
            dir: data_dir.clone(),
            detail: format!("{err:?}"),
        })?;

        let counters = Arc::new(Counters::default());
        let mut builder = S3ServiceBuilder::new(Store::new(fs, &data_dir));
        builder.set_auth(SimpleAuth::from_single(
            options.access_key.clone(),
            options.secret_key.clone(),
        ));
        builder.set_access(CountingAccess {
            counters: Arc::clone(&counters),
        });
        let (paused, paused_rx) = tokio::sync::watch::channel(false);
        let service = CountingService {
            inner: builder.build(),
            counters: Arc::clone(&counters),
            paused: paused_rx,
        };

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|err| S3ServerError::io("binding 127.0.0.1:0", err))?;
        let port = listener
            .local_addr()
            .map_err(|err| S3ServerError::io("reading the bound address", err))?
            .port();
        let running = spawn(&runtime, listener, service.clone());
        guard.0 = None;
        Ok(Self {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            options,
            data_dir,
            service,
            counters,
            paused,
            running: Mutex::new(Some(running)),
        })
    }

    /// The base URL: `http://127.0.0.1:PORT` (use path-style addressing).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port it listens on, the same across restarts.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The access key id it accepts.
    #[must_use]
    pub fn access_key(&self) -> &str {
        &self.options.access_key
    }

    /// The secret key of that access key.
    #[must_use]
    pub fn secret_key(&self) -> &str {
        &self.options.secret_key
    }

    /// The region of [`S3ServerOptions::region`].
    #[must_use]
    pub fn region(&self) -> &str {
        &self.options.region
    }

    /// The main bucket (`tierkit` by default), created at start.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.options.bucket
    }

    /// The directory s3s-fs serves: one sub-directory per bucket, one file per object at
    /// `<bucket>/<key>`, and hidden files with each object's ETag, checksums and attributes.
    /// It is removed when the server is dropped.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What a client needs: endpoint, region, keys and the main bucket.
    #[must_use]
    pub fn client_config(&self) -> S3ClientConfig {
        S3ClientConfig {
            endpoint: self.endpoint.clone(),
            region: self.options.region.clone(),
            access_key: self.options.access_key.clone(),
            secret_key: self.options.secret_key.clone(),
            bucket: self.options.bucket.clone(),
        }
    }

    /// A ready aws-sdk-s3 client for this server (see [`S3ClientConfig::client`]: no retries,
    /// so request counts are exact).
    #[cfg(feature = "client")]
    #[must_use]
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_config().client()
    }

    /// Whether it is accepting connections (not stopped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The requests served so far (since start or the last [`S3Server::reset_requests`]),
    /// by S3 operation.
    #[must_use]
    pub fn requests(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Requests served so far for operation `op` (for instance [`crate::ops::GET_OBJECT`],
    /// `"GetObject"`), whatever their outcome.
    #[must_use]
    pub fn count(&self, op: &str) -> u64 {
        self.counters.snapshot().get(op)
    }

    /// Sets every request count back to zero (for instance after a test's setup).
    pub fn reset_requests(&self) {
        self.counters.reset();
    }

    /// Keeps accepting connections and reading requests, but answers none of them until
    /// [`S3Server::resume`]: a server that hangs (overloaded, or a stalled network path).
    /// Held requests are answered on resume, unless their client gave up first.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Answers the requests held since [`S3Server::pause`], and every later one.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Stops accepting connections and closes every open one (requests in flight are cut
    /// off), so that clients get connection errors; returns once the port is closed and every
    /// connection task has ended. The data directory is kept: [`S3Server::restart`] serves it
    /// again. Stopping a stopped server does nothing.
    pub async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            let _ = running.shutdown.send(true);
            let _ = running.task.await;
        }
    }

    /// Serves again, on the same port and with the same objects and counts, after
    /// [`S3Server::stop`] (a running server is stopped first). It runs on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::NoRuntime`] outside a tokio runtime, [`S3ServerError::PortInUse`] when
    /// another socket took the port meanwhile, [`S3ServerError::Io`] when binding fails
    /// otherwise.
    pub async fn restart(&self) -> Result<(), S3ServerError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| S3ServerError::NoRuntime)?;
        self.stop().await;
        let listener = TcpListener::bind(self.addr()).await.map_err(|err| {
            if err.kind() == std::io::ErrorKind::AddrInUse {
                S3ServerError::PortInUse { port: self.port }
            } else {
                S3ServerError::io(format!("binding {}", self.addr()), err)
            }
        })?;
        let running = spawn(&runtime, listener, self.service.clone());
        let previous = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(running);
        // Another `restart` raced this one: keep ours, stop theirs.
        if let Some(previous) = previous {
            let _ = previous.shutdown.send(true);
            previous.task.abort();
        }
        Ok(())
    }

    /// Stops the server (as [`S3Server::stop`]) and removes its data directory, reporting a
    /// failure to remove it (dropping the server does the same, silently).
    ///
    /// # Errors
    ///
    /// [`S3ServerError::Io`] when the data directory cannot be removed.
    pub async fn close(self) -> Result<(), S3ServerError> {
        self.stop().await;
        let result = remove_dir(&self.data_dir);
        // Drop finds nothing left to do.
        drop(self);
        result
    }

    /// Creates bucket `name` directly in the data directory (as a `CreateBucket` request
    /// would, without counting as one). Returns `false` if it already existed.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] for a name S3 would refuse,
    /// [`S3ServerError::Io`] when the directory cannot be created.
    pub fn create_bucket(&self, name: &str) -> Result<bool, S3ServerError> {
        dirs::validate_bucket_name(name)?;
        create_bucket_dir(&self.data_dir, name)
    }

    /// Removes bucket `name` and its objects directly from the data directory, so that
    /// requests for it fail with `NoSuchBucket`. Returns `false` if it did not exist.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] for a name S3 would refuse,
    /// [`S3ServerError::Io`] when a file cannot be removed.
    pub fn remove_bucket(&self, name: &str) -> Result<bool, S3ServerError> {
        dirs::validate_bucket_name(name)?;
        let dir = self.data_dir.join(name);
        if !dir.is_dir() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&dir)
            .map_err(|err| S3ServerError::io(format!("removing {}", dir.display()), err))?;
        Ok(true)
    }

    /// The file that holds object `key` of `bucket` (which may not exist yet). Overwriting it
    /// keeps the ETag and checksums stored at upload, so a GET then serves the new bytes with
    /// the old checksum headers and the SDK reports a checksum mismatch: use
    /// [`S3Server::put_raw`] to store different bytes consistently.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] or [`S3ServerError::InvalidKey`] for a bucket or
    /// key that does not map to a file.
    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, S3ServerError> {
        dirs::validate_bucket_name(bucket)?;
        dirs::validate_key(key)?;
        Ok(self.data_dir.join(bucket).join(key))
    }

    /// Stores `bytes` as object `key` of `bucket`, directly in the data directory, replacing
    /// any object there and forgetting its stored ETag, checksums and attributes: a GET then
    /// serves exactly these bytes with an ETag computed from them, as if a client had
    /// uploaded them. For tests that plant garbage or objects of another writer. Not counted
    /// as a request. Returns the object's file.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] or [`S3ServerError::InvalidKey`] for a bucket or
    /// key that does not map to a file, [`S3ServerError::NoSuchBucket`] when the bucket does
    /// not exist, [`S3ServerError::Io`] when a file cannot be written or removed.
    pub fn put_raw(&self, bucket: &str, key: &str, bytes: &[u8]) -> Result<PathBuf, S3ServerError> {
        let path = self.object_path(bucket, key)?;
        self.require_bucket(bucket)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|err| {
                S3ServerError::io(format!("creating directory {}", parent.display()), err)
            })?;
        }
        std::fs::write(&path, bytes)
            .map_err(|err| S3ServerError::io(format!("writing {}", path.display()), err))?;
        self.remove_side_files(bucket, key)?;
        Ok(path)
    }

    /// The bytes of object `key` of `bucket`, read directly from the data directory (not
    /// counted as a request), or `None` when there is no such object.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] or [`S3ServerError::InvalidKey`] for a bucket or
    /// key that does not map to a file, [`S3ServerError::Io`] when the file cannot be read.
    pub fn get_raw(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, S3ServerError> {
        let path = self.object_path(bucket, key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(S3ServerError::io(
                format!("reading {}", path.display()),
                err,
            )),
        }
    }

    /// Removes object `key` of `bucket` directly from the data directory (not counted as a
    /// request). Returns `false` if there was no such object.
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] or [`S3ServerError::InvalidKey`] for a bucket or
    /// key that does not map to a file, [`S3ServerError::Io`] when a file cannot be removed.
    pub fn delete_raw(&self, bucket: &str, key: &str) -> Result<bool, S3ServerError> {
        let path = self.object_path(bucket, key)?;
        let existed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => {
                return Err(S3ServerError::io(
                    format!("removing {}", path.display()),
                    err,
                ));
            }
        };
        self.remove_side_files(bucket, key)?;
        Ok(existed)
    }

    /// The keys of the objects stored in `bucket`, sorted, read directly from the data
    /// directory (not counted as a request).
    ///
    /// # Errors
    ///
    /// [`S3ServerError::InvalidBucketName`] for a name S3 would refuse,
    /// [`S3ServerError::NoSuchBucket`] when the bucket does not exist, [`S3ServerError::Io`]
    /// when a directory cannot be read.
    pub fn object_keys(&self, bucket: &str) -> Result<Vec<String>, S3ServerError> {
        dirs::validate_bucket_name(bucket)?;
        self.require_bucket(bucket)?;
        let mut keys = Vec::new();
        let mut pending = vec![(self.data_dir.join(bucket), String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|err| S3ServerError::io(format!("listing {}", dir.display()), err))?;
            for entry in entries {
                let entry = entry
                    .map_err(|err| S3ServerError::io(format!("listing {}", dir.display()), err))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let key = format!("{prefix}{name}");
                let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
                if is_dir {
                    pending.push((entry.path(), format!("{key}/")));
                } else {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// [`S3ServerError::NoSuchBucket`] unless `bucket` exists.
    fn require_bucket(&self, bucket: &str) -> Result<(), S3ServerError> {
        if self.data_dir.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(S3ServerError::NoSuchBucket {
                bucket: bucket.to_owned(),
                dir: self.data_dir.clone(),
            })
        }
    }

    /// Removes the files where s3s-fs keeps the ETag, checksums and attributes of an object.
    fn remove_side_files(&self, bucket: &str, key: &str) -> Result<(), S3ServerError> {
        for file in dirs::side_files(&self.data_dir, bucket, key) {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(S3ServerError::io(
                        format!("removing {}", file.display()),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Drop for S3Server {
    /// Stops every task of the server (they end at their next poll) and removes the data
    /// directory, best effort.
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            let _ = running.shutdown.send(true);
            running.task.abort();
        }
        let _ = remove_dir(&self.data_dir);
    }
}

/// Removes `dir` and everything in it; a missing directory is not an error.
fn remove_dir(dir: &Path) -> Result<(), S3ServerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(S3ServerError::io(
            format!("removing {}", dir.display()),
            err,
        )),
    }
}

/// Creates the directory of bucket `name`; `false` if it already existed.
fn create_bucket_dir(data_dir: &Path, name: &str) -> Result<bool, S3ServerError> {
    let dir = data_dir.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(err) => Err(S3ServerError::io(
            format!("creating directory {}", dir.display()),
            err,
        )),
    }
}

/// Spawns the accept loop of `listener` on `runtime`.
fn spawn(
    runtime: &tokio::runtime::Handle,
    listener: TcpListener,
    service: CountingService,
) -> Running {
    let (shutdown, stopped) = watch::channel(false);
    let task = runtime.spawn(serve(listener, service, stopped));
    Running { shutdown, task }
}

/// Waits until `stopped` turns `true` or its sender is dropped.
async fn wait_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// The accept loop: serves each connection (HTTP/1.1 or HTTP/2) in a task of its own, with
/// `TCP_NODELAY` set, until `stopped`; then closes the listener and every connection, and
/// returns once their tasks have ended.
async fn serve(listener: TcpListener, service: CountingService, stopped: watch::Receiver<bool>) {
    let builder = Arc::new(auto::Builder::new(Executor {
        stopped: stopped.clone(),
    }));
    let mut connections = JoinSet::new();
    let shutdown = wait_stopped(stopped.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Without it, small responses wait for delayed ACKs (about 40 ms each).
                    let _ = stream.set_nodelay(true);
                    let builder = Arc::clone(&builder);
                    let service = service.clone();
                    let stopped = stopped.clone();
                    connections.spawn(async move {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::select! {
                            _ = connection => {}
                            () = wait_stopped(stopped) => {}
                        }
                    });
                }
                Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Every connection task sees the shutdown too; aborting makes sure none lingers.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// The executor hyper runs HTTP/2 stream tasks on: tokio tasks that end when the server stops.
#[derive(Clone)]
struct Executor {
    /// Turns `true` (or is closed) when the server stops.
    stopped: watch::Receiver<bool>,
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                () = wait_stopped(stopped) => {}
            }
        });
    }
}
