//! An S3 backend on a local directory: s3s-fs plus full-object checksums and
//! `ListMultipartUploads`, so the embedded endpoint behaves like S3 where CargoShip looks.
//!
//! s3s-fs stores each object as a plain file under `ROOT/bucket/key` and keeps per-object
//! facts in `ROOT/.bucket-<b64>.object-<b64>.internal.json`. On `CompleteMultipartUpload` with a
//! full-object `x-amz-checksum-crc64nvme`, this wrapper re-reads the assembled object,
//! rejects it with `BadDigest` (and deletes it) when the checksum differs, and otherwise
//! records the checksum there so `HEAD`/`GET` return it, as S3 does.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The embedded S3 backend.
pub struct Store {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

/// What we remember about an open multipart upload (s3s-fs keeps only its id).
#[derive(Serialize, Deserialize)]
struct UploadRecord {
    bucket: String,
    key: String,
    initiated_unix_ms: u64,
}

impl Store {
    /// Opens (and creates if needed) a store rooted at `root`.
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.as_ref())?;
        let root = root.as_ref().canonicalize()?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(Self { fs, root })
    }

    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    fn internal_info_path(&self, bucket: &str, key: &str) -> PathBuf {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        self.root.join(format!(".bucket-{}.object-{}.internal.json", enc(bucket), enc(key)))
    }

    fn upload_record_path(&self, upload_id: &str) -> PathBuf {
        self.root.join(format!(".cargoship-mpu-{upload_id}.json"))
    }

    /// s3s-fs's own marker of an open upload; gone once completed or aborted.
    fn upload_alive(&self, upload_id: &str) -> bool {
        self.root.join(format!(".upload-{upload_id}.json")).exists()
    }

    fn record_checksum(&self, bucket: &str, key: &str, crc64: &str) -> std::io::Result<()> {
        let path = self.internal_info_path(bucket, key);
        let mut info: serde_json::Map<String, serde_json::Value> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => serde_json::Map::new(),
        };
        info.insert("checksum_crc64nvme".into(), serde_json::Value::String(crc64.to_owned()));
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&info)?)?;
        std::fs::rename(tmp, path)
    }
}

/// Reads a body whole and checks it against its `x-amz-checksum-crc64nvme`; on a match,
/// hands the bytes on as a new body, else fails with `BadDigest` as S3 does.
async fn verified_body(mut body: StreamingBlob, expected: &str) -> S3Result<StreamingBlob> {
    let mut data = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        data.extend_from_slice(&chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
    }
    let data = data.freeze();
    let actual = STANDARD.encode(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data).to_be_bytes());
    if actual != expected {
        return Err(s3_error!(BadDigest, "checksum_crc64nvme mismatch: expected `{expected}`, got `{actual}`"));
    }
    Ok(StreamingBlob::wrap(futures::stream::once(async move { Ok::<_, std::convert::Infallible>(data) })))
}

/// CRC64NVME of a whole file, base64 of its big-endian bytes (S3's header format).
pub fn file_crc64nvme(path: &Path) -> std::io::Result<String> {
    let crc = crc_fast::checksum_file(crc_fast::CrcAlgorithm::Crc64Nvme, &path.to_string_lossy(), None)?;
    Ok(STANDARD.encode(crc.to_be_bytes()))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }
    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }
    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }
    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let info = self.internal_info_path(&req.input.bucket, &req.input.key);
        let out = self.fs.delete_object(req).await?;
        let _ = std::fs::remove_file(info);
        Ok(out)
    }
    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        if !self.root.join(&req.input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let path = self.object_path(&req.input.bucket, &req.input.key);
        if path.is_dir() {
            return Err(s3_error!(NoSuchKey));
        }
        let if_match = req.input.if_match.clone();
        let mut resp = self.fs.get_object(req).await?;
        // s3s-fs ignores If-Match on GET; S3 answers 412 when the object is another version.
        if let Some(ETagCondition::ETag(expected)) = &if_match
            && !resp.output.e_tag.as_ref().is_some_and(|tag| tag.strong_cmp(expected))
        {
            return Err(s3_error!(PreconditionFailed, "the object's ETag is no longer {}", expected.value()));
        }
        // s3s-fs streams in 4 KiB reads; serve the same bytes in large reads instead.
        let out = &mut resp.output;
        let len = out.content_length.unwrap_or(0).max(0) as u64;
        let start = match &out.content_range {
            Some(r) => r
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| s3_error!(InternalError, "unparsable content range {r}"))?,
            None => 0,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| s3_error!(e, NoSuchKey))?;
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| s3_error!(e, InternalError))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
        out.body = Some(StreamingBlob::wrap(stream));
        Ok(resp)
    }
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }
    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        // A key that is a directory on disk (the parent of other keys) is no object: s3s-fs
        // answers 500 for it, S3 answers 404.
        if self.object_path(&req.input.bucket, &req.input.key).is_dir() {
            return Err(s3_error!(NoSuchKey));
        }
        self.fs.head_object(req).await
    }
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }
    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }
    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }
    async fn put_object(&self, mut req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        if !self.root.join(&req.input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        // s3s-fs renames the new file into place before it compares checksums, so a
        // corrupted PUT would replace the object and then fail. Check first.
        if let Some(expected) = req.input.checksum_crc64nvme.clone()
            && let Some(body) = req.input.body.take()
        {
            req.input.body = Some(verified_body(body, &expected).await?);
        }
        self.fs.put_object(req).await
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        if !self.root.join(&bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let out = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &out.output.upload_id {
            let record = UploadRecord { bucket, key, initiated_unix_ms: unix_ms(SystemTime::now()) };
            let bytes = serde_json::to_vec(&record).map_err(|e| s3_error!(e, InternalError))?;
            std::fs::write(self.upload_record_path(id), bytes).map_err(|e| s3_error!(e, InternalError))?;
        }
        Ok(out)
    }
    async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        // s3s-fs stores parts without checking their checksum header; S3 checks it.
        let Some(expected) = req.input.checksum_crc64nvme.clone() else {
            return self.fs.upload_part(req).await;
        };
        let body = req.input.body.take().ok_or_else(|| s3_error!(IncompleteBody))?;
        req.input.body = Some(verified_body(body, &expected).await?);
        let mut out = self.fs.upload_part(req).await?;
        out.output.checksum_crc64nvme = Some(expected);
        Ok(out)
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.fs.upload_part_copy(req).await
    }
    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        let upload_id = req.input.upload_id.clone();
        let expected = req.input.checksum_crc64nvme.clone();
        let mut resp = self.fs.complete_multipart_upload(req).await?;
        let _ = std::fs::remove_file(self.upload_record_path(&upload_id));
        let mut out = match resp.output.future.take() {
            Some(fut) => fut.await?,
            None => std::mem::take(&mut resp.output),
        };
        if let Some(expected) = expected {
            let path = self.object_path(&bucket, &key);
            let actual = tokio::task::spawn_blocking(move || file_crc64nvme(&path))
                .await
                .map_err(|e| s3_error!(e, InternalError))?
                .map_err(|e| s3_error!(e, InternalError))?;
            if actual != expected {
                let _ = std::fs::remove_file(self.object_path(&bucket, &key));
                let _ = std::fs::remove_file(self.internal_info_path(&bucket, &key));
                return Err(s3_error!(
                    BadDigest,
                    "full-object checksum_crc64nvme mismatch: expected `{expected}`, got `{actual}`"
                ));
            }
            self.record_checksum(&bucket, &key, &actual).map_err(|e| s3_error!(e, InternalError))?;
            out.checksum_crc64nvme = Some(actual);
            out.checksum_type = Some(ChecksumType::from_static(ChecksumType::FULL_OBJECT));
        }
        resp.output = out;
        Ok(resp)
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id.clone();
        let out = self.fs.abort_multipart_upload(req).await?;
        let _ = std::fs::remove_file(self.upload_record_path(&upload_id));
        Ok(out)
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        let dir = std::fs::read_dir(&self.root).map_err(|e| s3_error!(e, InternalError))?;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(".cargoship-mpu-").and_then(|s| s.strip_suffix(".json")) else {
                continue;
            };
            if !self.upload_alive(id) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            let Ok(rec) = serde_json::from_slice::<UploadRecord>(&bytes) else { continue };
            if rec.bucket != input.bucket || !rec.key.starts_with(&prefix) {
                continue;
            }
            let initiated = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(rec.initiated_unix_ms);
            uploads.push(MultipartUpload {
                key: Some(rec.key),
                upload_id: Some(id.to_owned()),
                initiated: Some(Timestamp::from(initiated)),
                ..Default::default()
            });
        }
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}
