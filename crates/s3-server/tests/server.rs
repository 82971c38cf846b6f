//! The in-process S3 server, driven through aws-sdk-s3 (the `client` feature).

// Test helpers may fail the test the short way.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::future::Future as _;
use std::time::{Duration, Instant};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use tierkit_s3_server::{S3Server, S3ServerError, S3ServerOptions, ops};

/// Starts a server with default options.
async fn start() -> S3Server {
    S3Server::start(S3ServerOptions::new()).await.unwrap()
}

/// The body of object `key` of `bucket`, read through `client`.
async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    object.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test]
async fn puts_gets_lists_and_deletes_with_exact_counts() {
    let started = Instant::now();
    let server = start().await;
    let start_time = started.elapsed();
    assert!(server.is_running());
    assert_eq!(
        server.endpoint(),
        format!("http://127.0.0.1:{}", server.port())
    );
    assert_ne!(server.port(), 0);
    assert_eq!(server.bucket(), "tierkit");
    assert_eq!(server.region(), "us-east-1");
    assert!(server.data_dir().join("tierkit").is_dir());
    let client = server.client();
    let bucket = server.bucket();

    let value = vec![7u8; 1024];
    client
        .put_object()
        .bucket(bucket)
        .key("a/b")
        .body(ByteStream::from(value.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&client, bucket, "a/b").await, value);
    assert_eq!(server.get_raw(bucket, "a/b").unwrap(), Some(value.clone()));
    assert_eq!(server.object_keys(bucket).unwrap(), ["a/b"]);

    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix("a/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["a/b"]);

    client
        .delete_object()
        .bucket(bucket)
        .key("a/b")
        .send()
        .await
        .unwrap();
    assert_eq!(server.get_raw(bucket, "a/b").unwrap(), None);

    let counts = server.requests();
    assert_eq!(counts.get(ops::PUT_OBJECT), 1, "{counts}");
    assert_eq!(counts.get(ops::GET_OBJECT), 1, "{counts}");
    assert_eq!(counts.get(ops::LIST_OBJECTS_V2), 1, "{counts}");
    assert_eq!(counts.get(ops::DELETE_OBJECT), 1, "{counts}");
    assert_eq!(counts.total(), 4, "{counts}");
    assert_eq!(counts.http_requests(), 4, "{counts}");
    assert_eq!(counts.rejected(), 0, "{counts}");
    assert_eq!(counts.errors(ops::GET_OBJECT), 0, "{counts}");

    // Round trips of 1 KiB (the first ones above warmed the connection up).
    const ROUNDS: u32 = 50;
    let mut put_total = Duration::ZERO;
    let mut get_total = Duration::ZERO;
    for round in 0..ROUNDS {
        let key = format!("timing/{round}");
        let started = Instant::now();
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(ByteStream::from(value.clone()))
            .send()
            .await
            .unwrap();
        put_total += started.elapsed();
        let started = Instant::now();
        assert_eq!(get(&client, bucket, &key).await.len(), 1024);
        get_total += started.elapsed();
    }
    assert_eq!(server.count(ops::PUT_OBJECT), 1 + u64::from(ROUNDS));
    server.reset_requests();
    assert_eq!(server.requests().total(), 0);
    println!(
        "start: {start_time:?}; 1 KiB PUT: {:?}, GET: {:?} (mean of {ROUNDS}, {} build)",
        put_total / ROUNDS,
        get_total / ROUNDS,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

#[tokio::test]
async fn creates_buckets_through_the_api_and_directly() {
    let server = S3Server::start(S3ServerOptions::new().bucket("main").extra_bucket("second"))
        .await
        .unwrap();
    let client = server.client();
    client
        .create_bucket()
        .bucket("made-by-api")
        .send()
        .await
        .unwrap();
    assert!(server.create_bucket("made-directly").unwrap());
    assert!(!server.create_bucket("made-directly").unwrap());
    assert!(matches!(
        server.create_bucket("Bad_Name"),
        Err(S3ServerError::InvalidBucketName { .. })
    ));

    let listed = client.list_buckets().send().await.unwrap();
    let mut names: Vec<&str> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["made-by-api", "made-directly", "main", "second"]);

    client
        .put_object()
        .bucket("made-directly")
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&client, "made-directly", "k").await, b"v");
    client.head_bucket().bucket("second").send().await.unwrap();
    let counts = server.requests();
    assert_eq!(counts.get(ops::CREATE_BUCKET), 1, "{counts}");
    assert_eq!(counts.get(ops::LIST_BUCKETS), 1, "{counts}");
    assert_eq!(counts.get(ops::HEAD_BUCKET), 1, "{counts}");
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_with_signature_does_not_match() {
    let server = start().await;
    let mut config = server.client_config();
    config.secret_key = "not-the-secret".to_owned();
    let err = config
        .client()
        .get_object()
        .bucket(server.bucket())
        .key("k")
        .send()
        .await
        .unwrap_err();
    let SdkError::ServiceError(service_err) = &err else {
        panic!("expected a service error, got {err:?}");
    };
    assert_eq!(service_err.raw().status().as_u16(), 403);
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err:?}");

    // A PUT with a wrong secret stores nothing.
    let err = config
        .client()
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err:?}");
    assert_eq!(server.get_raw(server.bucket(), "k").unwrap(), None);

    // An unknown access key is refused too.
    config.access_key = "somebody-else".to_owned();
    let err = config.client().list_buckets().send().await.unwrap_err();
    assert!(matches!(err, SdkError::ServiceError(_)), "{err:?}");

    let counts = server.requests();
    assert_eq!(counts.total(), 0, "{counts}");
    assert_eq!(counts.rejected(), 3, "{counts}");
    assert_eq!(counts.http_requests(), 3, "{counts}");
}

#[tokio::test]
async fn an_unsigned_request_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"GET /tierkit/k HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("<Code>AccessDenied</Code>"), "{response}");
    assert_eq!(server.requests().rejected(), 1);
    assert_eq!(server.requests().total(), 0);
}

#[tokio::test]
async fn a_missing_key_is_no_such_key() {
    let server = start().await;
    let client = server.client();
    let err = client
        .get_object()
        .bucket(server.bucket())
        .key("missing")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_no_such_key());
    let err = client
        .head_object()
        .bucket(server.bucket())
        .key("missing")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_not_found());
    // Deleting a missing key succeeds, as on S3.
    client
        .delete_object()
        .bucket(server.bucket())
        .key("missing")
        .send()
        .await
        .unwrap();
    let counts = server.requests();
    assert_eq!(counts.get(ops::GET_OBJECT), 1, "{counts}");
    assert_eq!(counts.errors(ops::GET_OBJECT), 1, "{counts}");
    assert_eq!(counts.errors(ops::HEAD_OBJECT), 1, "{counts}");
    assert_eq!(counts.errors(ops::DELETE_OBJECT), 0, "{counts}");
}

#[tokio::test]
async fn a_missing_bucket_is_no_such_bucket() {
    let server = start().await;
    let client = server.client();
    let err = client
        .get_object()
        .bucket("no-such-bucket")
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");

    // A PUT does not create the bucket (s3s-fs alone would).
    let err = client
        .put_object()
        .bucket("no-such-bucket")
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    assert!(!server.data_dir().join("no-such-bucket").exists());

    let err = client
        .list_objects_v2()
        .bucket("no-such-bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    let err = client
        .head_bucket()
        .bucket("no-such-bucket")
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_not_found());

    // A bucket removed under a running client.
    assert!(server.remove_bucket(server.bucket()).unwrap());
    let err = client
        .get_object()
        .bucket(server.bucket())
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    assert!(matches!(
        server.put_raw(server.bucket(), "k", b"v"),
        Err(S3ServerError::NoSuchBucket { .. })
    ));
}

#[tokio::test]
async fn a_stopped_server_gives_connection_errors_and_restarts_on_its_port() {
    let server = start().await;
    let client = server.client();
    let bucket = server.bucket();
    client
        .put_object()
        .bucket(bucket)
        .key("k")
        .body(ByteStream::from_static(b"kept"))
        .send()
        .await
        .unwrap();
    let port = server.port();

    server.stop().await;
    assert!(!server.is_running());
    let started = Instant::now();
    let err = client
        .get_object()
        .bucket(bucket)
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SdkError::DispatchFailure(_)),
        "expected a connection error, got {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(server.addr()).is_err());
    server.stop().await; // stopping twice is fine

    server.restart().await.unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(get(&client, bucket, "k").await, b"kept");
    assert_eq!(server.count(ops::GET_OBJECT), 1);
    assert_eq!(server.count(ops::PUT_OBJECT), 1);
    server.restart().await.unwrap(); // restarting a running server works too
    assert_eq!(get(&client, bucket, "k").await, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cuts_off_requests_in_flight() {
    let server = start().await;
    let client = server.client();
    // Far more than the socket buffers of both ends can hold (a few MiB each).
    let big = vec![1u8; 32 << 20];
    server.put_raw(server.bucket(), "big", &big).unwrap();
    let object = client
        .get_object()
        .bucket(server.bucket())
        .key("big")
        .send()
        .await
        .unwrap();
    // The headers arrived; the body is still being streamed when the server stops.
    server.stop().await;
    let body = object.body.collect().await;
    assert!(
        body.as_ref()
            .map_or(true, |b| b.remaining_len() < big.len()),
        "the whole body arrived after stop"
    );
}

/// `remaining` of aggregated bytes, without naming the `bytes` crate.
trait RemainingLen {
    /// How many bytes were received.
    fn remaining_len(&self) -> usize;
}

impl RemainingLen for aws_sdk_s3::primitives::AggregatedBytes {
    fn remaining_len(&self) -> usize {
        self.clone().into_bytes().len()
    }
}

#[tokio::test]
async fn raw_objects_are_served_as_stored() {
    let server = start().await;
    let client = server.client();
    let bucket = server.bucket();
    client
        .put_object()
        .bucket(bucket)
        .key("k")
        .body(ByteStream::from_static(b"original"))
        .send()
        .await
        .unwrap();

    // put_raw replaces the object consistently: a GET serves the new bytes.
    let path = server.put_raw(bucket, "k", b"garbage!").unwrap();
    assert_eq!(path, server.object_path(bucket, "k").unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"garbage!");
    assert_eq!(get(&client, bucket, "k").await, b"garbage!");
    let head = client
        .head_object()
        .bucket(bucket)
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(8));

    // Objects planted in place of nothing, in nested "directories".
    server.put_raw(bucket, "x/y/z", b"deep").unwrap();
    assert_eq!(get(&client, bucket, "x/y/z").await, b"deep");
    assert_eq!(server.object_keys(bucket).unwrap(), ["k", "x/y/z"]);

    // Overwriting the file alone keeps the stored checksum: the SDK notices.
    client
        .put_object()
        .bucket(bucket)
        .key("c")
        .body(ByteStream::from_static(b"checksummed"))
        .send()
        .await
        .unwrap();
    std::fs::write(server.object_path(bucket, "c").unwrap(), b"tampered!!!").unwrap();
    let read = async {
        let object = client.get_object().bucket(bucket).key("c").send().await?;
        Ok::<_, Box<dyn std::error::Error>>(object.body.collect().await?.into_bytes())
    }
    .await;
    assert!(read.is_err(), "the tampered object was read: {read:?}");

    assert!(server.delete_raw(bucket, "k").unwrap());
    assert!(!server.delete_raw(bucket, "k").unwrap());
    let err = client.get_object().bucket(bucket).key("k").send().await;
    assert!(err.unwrap_err().into_service_error().is_no_such_key());
    assert!(matches!(
        server.put_raw(bucket, "../escape", b"x"),
        Err(S3ServerError::InvalidKey { .. })
    ));
    // None of this was a request but the client's.
    assert_eq!(server.count(ops::PUT_OBJECT), 2);
}

#[tokio::test]
async fn drop_and_close_remove_the_data_directory() {
    let server = start().await;
    let dir = server.data_dir().to_path_buf();
    server.put_raw(server.bucket(), "k", b"v").unwrap();
    assert!(dir.join("tierkit/k").is_file());
    drop(server);
    assert!(!dir.exists(), "{} is left", dir.display());

    let server = start().await;
    let dir = server.data_dir().to_path_buf();
    let addr = server.addr();
    server.close().await.unwrap();
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn options_choose_credentials_region_and_base_dir() {
    let base = std::env::temp_dir().join(format!("tierkit-s3-test-{}", std::process::id()));
    let server = S3Server::start(
        S3ServerOptions::new()
            .credentials("ak", "a-long-secret")
            .region("eu-west-3")
            .base_dir(&base),
    )
    .await
    .unwrap();
    assert!(
        server
            .data_dir()
            .starts_with(std::fs::canonicalize(&base).unwrap())
    );
    assert_eq!(server.access_key(), "ak");
    assert_eq!(server.secret_key(), "a-long-secret");
    let config = server.client_config();
    assert_eq!(config.region, "eu-west-3");
    assert!(!format!("{config:?}").contains("a-long-secret"));
    server
        .client()
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap();
    drop(server);
    std::fs::remove_dir(&base).unwrap(); // empty: the data directory is gone

    let err = S3Server::start(S3ServerOptions::new().extra_bucket("UPPER"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, S3ServerError::InvalidBucketName { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_clients() {
    let server = start().await;
    let client = server.client();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let client = client.clone();
        let bucket = server.bucket().to_owned();
        tasks.spawn(async move {
            for round in 0..8 {
                let key = format!("t{task}/r{round}");
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .body(ByteStream::from(key.clone().into_bytes()))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(get(&client, &bucket, &key).await, key.as_bytes());
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(server.count(ops::PUT_OBJECT), 128);
    assert_eq!(server.count(ops::GET_OBJECT), 128);
}

#[test]
fn start_needs_a_tokio_runtime() {
    let mut start = std::pin::pin!(S3Server::start(S3ServerOptions::new()));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match start.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(S3ServerError::NoRuntime)) => {}
        other => panic!("expected NoRuntime, got {:?}", other.map(|r| r.map(|_| ()))),
    }
}

#[test]
fn the_server_can_be_shared_between_tasks() {
    /// Compiles only for types that can be shared between threads.
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<S3Server>();
    assert_send_sync::<tierkit_s3_server::RequestCounts>();
    assert_send_sync::<S3ServerError>();
}

#[tokio::test]
async fn a_paused_server_holds_requests_until_resumed() {
    let server = S3Server::start(S3ServerOptions::new()).await.unwrap();
    let client = server.client();
    server.pause();
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        client.head_bucket().bucket(server.bucket()).send(),
    )
    .await;
    assert!(held.is_err(), "a paused server answered");
    server.resume();
    client
        .head_bucket()
        .bucket(server.bucket())
        .send()
        .await
        .expect("answered once resumed");
}
