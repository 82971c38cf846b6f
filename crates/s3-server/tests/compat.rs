//! The S3 behaviour tierkit relies on, checked against whichever S3 endpoint is at hand: the
//! endpoint named by `TIERKIT_S3_ENDPOINT` (and the other `TIERKIT_S3_*` variables) when set,
//! as `cargo xtask s3-compat` does with a moto server, else an in-process [`S3Server`].
//!
//! Only what every S3 implementation must do is asserted here; nothing counts requests,
//! stops the server or touches its files.

// Test helpers may fail the test the short way.
#![allow(clippy::unwrap_used, clippy::panic)]

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use tierkit_s3_server::{S3ClientConfig, S3Server, S3ServerOptions};

/// An endpoint, a client for it, and the server when it is in-process (kept alive).
struct Target {
    /// The in-process server, when no endpoint is named by the environment.
    _server: Option<S3Server>,
    /// The endpoint.
    config: S3ClientConfig,
    /// A client (no retries).
    client: aws_sdk_s3::Client,
    /// A prefix of keys of its own, so that tests sharing an external bucket do not collide.
    prefix: String,
}

impl Target {
    /// The environment's endpoint, or a fresh in-process server.
    async fn new(test: &str) -> Self {
        let (server, config) = match S3ClientConfig::from_env().unwrap() {
            Some(config) => (None, config),
            None => {
                let server = S3Server::start(S3ServerOptions::new()).await.unwrap();
                let config = server.client_config();
                (Some(server), config)
            }
        };
        let client = config.client();
        let prefix = format!("compat-{}-{test}/", std::process::id());
        Self {
            _server: server,
            config,
            client,
            prefix,
        }
    }

    /// The bucket.
    fn bucket(&self) -> &str {
        &self.config.bucket
    }

    /// `key` under this test's prefix.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Stores `body` at `key` (under the prefix).
    async fn put(&self, key: &str, body: Vec<u8>) {
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(self.key(key))
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }

    /// The body at `key` (under the prefix).
    async fn get(&self, key: &str) -> Vec<u8> {
        let object = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(self.key(key))
            .send()
            .await
            .unwrap();
        object.body.collect().await.unwrap().into_bytes().to_vec()
    }

    /// Every key under the prefix, through `ListObjectsV2` pages of `page` keys.
    async fn list(&self, page: i32) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let listed = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(&self.prefix)
                .max_keys(page)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(
                listed
                    .contents()
                    .iter()
                    .filter_map(|object| object.key())
                    .map(|key| key.trim_start_matches(&self.prefix).to_owned()),
            );
            token = listed.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                return keys;
            }
        }
    }
}

#[tokio::test]
async fn objects_round_trip_whatever_their_size() {
    let target = Target::new("sizes").await;
    println!("S3 endpoint: {}", target.config.endpoint);
    for size in [0usize, 1, 1024, 64 * 1024 + 3, 1 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let key = format!("size-{size}");
        target.put(&key, body.clone()).await;
        assert_eq!(target.get(&key).await, body, "size {size}");
    }
    // Overwrite.
    target.put("size-1", b"new".to_vec()).await;
    assert_eq!(target.get("size-1").await, b"new");
}

#[tokio::test]
async fn keys_with_special_characters_round_trip() {
    let target = Target::new("chars").await;
    let keys = [
        "plain",
        "with space",
        "colon:and;semi",
        "plus+equals=amp&",
        "percent%25",
        "unicode-é-✓",
        "nested/deeper/key",
        "tilde~star*paren(1)",
    ];
    for key in keys {
        target.put(key, key.as_bytes().to_vec()).await;
    }
    for key in keys {
        assert_eq!(target.get(key).await, key.as_bytes(), "{key}");
    }
    let mut expected: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
    expected.sort();
    assert_eq!(target.list(1000).await, expected);
}

#[tokio::test]
async fn missing_keys_and_buckets_are_reported_as_such() {
    let target = Target::new("missing").await;
    let err = target
        .client
        .get_object()
        .bucket(target.bucket())
        .key(target.key("absent"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_no_such_key());
    let err = target
        .client
        .head_object()
        .bucket(target.bucket())
        .key(target.key("absent"))
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_not_found());
    // Deleting an absent key succeeds.
    target
        .client
        .delete_object()
        .bucket(target.bucket())
        .key(target.key("absent"))
        .send()
        .await
        .unwrap();

    let missing = "tierkit-compat-no-such-bucket";
    let err = target
        .client
        .get_object()
        .bucket(missing)
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    let err = target
        .client
        .put_object()
        .bucket(missing)
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    let err = target
        .client
        .list_objects_v2()
        .bucket(missing)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
}

#[tokio::test]
async fn listing_pages_and_batch_deletes() {
    let target = Target::new("listing").await;
    let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    for key in &keys {
        target.put(key, key.as_bytes().to_vec()).await;
    }
    assert_eq!(target.list(10).await, keys);
    assert_eq!(target.list(1000).await, keys);

    let objects: Vec<ObjectIdentifier> = keys[..20]
        .iter()
        .map(|key| {
            ObjectIdentifier::builder()
                .key(target.key(key))
                .build()
                .unwrap()
        })
        .collect();
    let deleted = target
        .client
        .delete_objects()
        .bucket(target.bucket())
        .delete(
            Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(deleted.errors().is_empty(), "{:?}", deleted.errors());
    assert_eq!(target.list(1000).await, &keys[20..]);

    for key in &keys[20..] {
        target
            .client
            .delete_object()
            .bucket(target.bucket())
            .key(target.key(key))
            .send()
            .await
            .unwrap();
    }
    assert!(target.list(1000).await.is_empty());
}

#[tokio::test]
async fn metadata_and_etags_come_back() {
    let target = Target::new("metadata").await;
    let put = target
        .client
        .put_object()
        .bucket(target.bucket())
        .key(target.key("m"))
        .metadata("tierkit-format", "1")
        .content_type("application/octet-stream")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    let head = target
        .client
        .head_object()
        .bucket(target.bucket())
        .key(target.key("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(5));
    assert_eq!(
        head.metadata().and_then(|m| m.get("tierkit-format")),
        Some(&"1".to_owned())
    );
    // The ETag of a single-part upload is the quoted MD5 of the body.
    assert_eq!(put.e_tag(), Some("\"5d41402abc4b2a76b9719d911017c592\""));
    assert_eq!(head.e_tag(), put.e_tag());
}
