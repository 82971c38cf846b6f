//! [`Store`]: s3s-fs's [`FileSystem`], answering `NoSuchBucket` where Amazon S3 does.
//!
//! s3s-fs, on its own, answers a GET in a missing bucket with `NoSuchKey` and lets a PUT
//! create the bucket's directory on the fly. A test of a misconfigured bucket must see
//! `NoSuchBucket`, so the object operations that write or read an object check the bucket
//! first. s3s-fs also ignores `If-Match` on `DeleteObject`; Amazon S3 honors it (a conditional
//! delete answers `412 PreconditionFailed` when the object changed), so the store checks it.
//! Everything else goes straight to s3s-fs.

use std::path::{Path, PathBuf};

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CreateBucketInput,
    CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput,
    DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput,
    DeleteObjectsOutput, ETagCondition, GetBucketLocationInput, GetBucketLocationOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, PutObjectInput,
    PutObjectOutput, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result};
use s3s_fs::FileSystem;

/// The S3 implementation the server runs: s3s-fs over the data directory.
pub(crate) struct Store {
    /// s3s-fs.
    fs: FileSystem,
    /// The data directory s3s-fs serves (canonical).
    root: PathBuf,
}

impl Store {
    /// s3s-fs over `root`.
    pub(crate) fn new(fs: FileSystem, root: &Path) -> Self {
        Self {
            fs,
            root: root.to_path_buf(),
        }
    }

    /// `NoSuchBucket` unless `bucket` is a directory of the data directory.
    fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        // s3s has validated the name (no `/`, no `..`) before any operation runs.
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3s::s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ))
        }
    }
}

/// The `S3` impl of [`Store`]: `check` methods check the bucket named by their input's
/// `bucket` field, then go to s3s-fs; `delegate` methods go to s3s-fs as they are. (One macro
/// emits the whole impl, so that `async_trait` sees the expanded methods.)
macro_rules! impl_s3 {
    (
        check { $($checked:ident($c_in:ty) -> $c_out:ty;)* }
        delegate { $($method:ident($d_in:ty) -> $d_out:ty;)* }
        own { $($own:item)* }
    ) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $($own)*
            $(
                async fn $checked(&self, req: S3Request<$c_in>) -> S3Result<S3Response<$c_out>> {
                    self.require_bucket(&req.input.bucket)?;
                    self.fs.$checked(req).await
                }
            )*
            $(
                async fn $method(&self, req: S3Request<$d_in>) -> S3Result<S3Response<$d_out>> {
                    self.fs.$method(req).await
                }
            )*
        }
    };
}

impl_s3! {
    check {
        get_object(GetObjectInput) -> GetObjectOutput;
        put_object(PutObjectInput) -> PutObjectOutput;
        copy_object(CopyObjectInput) -> CopyObjectOutput;
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    }
    delegate {
        create_bucket(CreateBucketInput) -> CreateBucketOutput;
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        head_object(HeadObjectInput) -> HeadObjectOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        list_objects(ListObjectsInput) -> ListObjectsOutput;
        list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
        list_parts(ListPartsInput) -> ListPartsOutput;
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }
    own {
        /// A delete, conditional on `If-Match` as in Amazon S3: `412 PreconditionFailed` when
        /// the object's ETag no longer matches (or the object is gone).
        async fn delete_object(
            &self,
            req: S3Request<DeleteObjectInput>,
        ) -> S3Result<S3Response<DeleteObjectOutput>> {
            if let Some(condition) = req.input.if_match.clone() {
                let head = req.clone().map_input(|input| HeadObjectInput {
                    bucket: input.bucket,
                    key: input.key,
                    ..HeadObjectInput::default()
                });
                let current = match self.fs.head_object(head).await {
                    Ok(found) => found.output.e_tag,
                    Err(err) if *err.code() == s3s::S3ErrorCode::NoSuchKey => None,
                    Err(err) => return Err(err),
                };
                let matches = match (&condition, &current) {
                    (ETagCondition::Any, current) => current.is_some(),
                    (ETagCondition::ETag(wanted), Some(current)) => current.strong_cmp(wanted),
                    (ETagCondition::ETag(_), None) => false,
                };
                if !matches {
                    return Err(s3s::s3_error!(
                        PreconditionFailed,
                        "At least one of the pre-conditions you specified did not hold"
                    ));
                }
            }
            self.fs.delete_object(req).await
        }
    }
}
