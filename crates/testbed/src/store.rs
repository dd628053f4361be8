//! An S3 backend on a local directory: s3s-fs plus full-object checksums and
//! `ListMultipartUploads`, so the embedded endpoint behaves like S3 where CargoShip looks.
//!
//! s3s-fs stores each object as a plain file under `ROOT/bucket/key` and keeps per-object
//! facts in `ROOT/.bucket-<b64>.object-<b64>.internal.json`. `UploadPart` checks the part's
//! `x-amz-checksum-crc64nvme` (S3 does; s3s-fs does not) and records the part's MD5 ETag,
//! size and CRC64NVME beside it. `CompleteMultipartUpload` is done here rather than by s3s-fs
//! (which copies every part through a 64 KiB async loop, hashing it, about 3.5 s per GiB
//! where S3 takes well under a second): the parts are joined with the kernel's
//! `copy_file_range`, the ETag is the MD5 of the parts' MD5s (as S3's), and the full-object
//! CRC64NVME is combined from the parts' CRCs, checked against the request's (`BadDigest`
//! on a mismatch, nothing assembled) and recorded so `HEAD`/`GET` return it, as S3 does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The embedded S3 backend.
pub struct Store {
    fs: s3s_fs::FileSystem,
    files: Layout,
}

/// Where s3s-fs and this wrapper keep things under the store's root.
#[derive(Clone)]
struct Layout {
    root: PathBuf,
}

/// What UploadPart saw of a part: its ETag (MD5, hex), length and CRC64NVME.
#[derive(Serialize, Deserialize)]
struct PartRecord {
    e_tag: String,
    size: u64,
    crc64nvme: u64,
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
        Ok(Self { fs, files: Layout { root } })
    }
}

impl Layout {
    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    fn internal_info_path(&self, bucket: &str, key: &str) -> PathBuf {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        self.root.join(format!(".bucket-{}.object-{}.internal.json", enc(bucket), enc(key)))
    }

    /// s3s-fs's object attributes (content type, user metadata...), of an upload or an object.
    fn metadata_path(&self, bucket: &str, key: &str, upload_id: Option<&str>) -> PathBuf {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let upload = upload_id.map(|u| format!(".upload-{u}")).unwrap_or_default();
        self.root.join(format!(".bucket-{}.object-{}{upload}.metadata.json", enc(bucket), enc(key)))
    }

    fn upload_record_path(&self, upload_id: &str) -> PathBuf {
        self.root.join(format!(".cargoship-mpu-{upload_id}.json"))
    }

    /// What [`Store::upload_part`] recorded about a part.
    fn part_record_path(&self, upload_id: &str, part: i32) -> PathBuf {
        self.root.join(format!(".cargoship-part-{upload_id}-{part}.json"))
    }

    /// s3s-fs's file of a part's bytes.
    fn part_path(&self, upload_id: &str, part: i32) -> PathBuf {
        self.root.join(format!(".upload_id-{upload_id}.part-{part}"))
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

    /// Joins a completed upload's `parts` into its object (the kernel copies: `std::io::copy`
    /// between files is `copy_file_range`), records its ETag, checksum and attributes, and
    /// removes the upload.
    fn assemble(
        &self,
        upload_id: &str,
        parts: i32,
        bucket: &str,
        key: &str,
        e_tag: &str,
        crc64: &str,
    ) -> std::io::Result<()> {
        let tmp = self.root.join(format!(".tmp.cargoship-{upload_id}"));
        {
            let mut out = std::fs::File::create(&tmp)?;
            for part in 1..=parts {
                std::io::copy(&mut std::fs::File::open(self.part_path(upload_id, part))?, &mut out)?;
            }
        }
        let dest = self.object_path(bucket, key);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&tmp, &dest)?;
        let mut info = serde_json::Map::new();
        info.insert("e_tag".into(), serde_json::Value::String(e_tag.to_owned()));
        std::fs::write(self.internal_info_path(bucket, key), serde_json::to_vec(&info)?)?;
        self.record_checksum(bucket, key, crc64)?;
        let attributes = self.metadata_path(bucket, key, Some(upload_id));
        if attributes.exists() {
            std::fs::rename(attributes, self.metadata_path(bucket, key, None))?;
        }
        self.forget_upload(upload_id);
        Ok(())
    }

    /// Removes everything of an upload: its parts and what s3s-fs and this wrapper kept about it.
    fn forget_upload(&self, upload_id: &str) {
        let _ = std::fs::remove_file(self.root.join(format!(".upload-{upload_id}.json")));
        let _ = std::fs::remove_file(self.upload_record_path(upload_id));
        let parts = [format!(".upload_id-{upload_id}.part-"), format!(".cargoship-part-{upload_id}-")];
        for entry in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            if parts.iter().any(|p| entry.file_name().to_string_lossy().starts_with(p.as_str())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    text.len().is_multiple_of(2).then_some(())?;
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What a [`checked_body`] saw by the time it ended: its length, its CRC64NVME, and how it
/// differed from the request's `x-amz-checksum-crc64nvme`, if it did.
#[derive(Default)]
struct Seen {
    len: u64,
    crc: u64,
    mismatch: Option<String>,
}

/// Passes `body` on chunk by chunk while computing its CRC64NVME, so that the hashing is
/// spread over the transfer (a part is acknowledged as soon as its last byte is stored,
/// as by S3, instead of after being read whole and hashed). A body whose CRC differs from
/// `expected` ends with an error instead of its end: s3s-fs writes to a temporary file and
/// renames it into place only after a clean end, so nothing is stored, and the caller
/// answers `BadDigest` from [`Seen`], as S3 does.
fn checked_body(body: StreamingBlob, expected: Option<String>) -> (StreamingBlob, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = (body, crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme), 0u64, expected, seen.clone(), false);
    let stream = futures::stream::unfold(state, |(mut body, mut digest, mut len, expected, seen, ended)| async move {
        if ended {
            return None;
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                digest.update(&chunk);
                len += chunk.len() as u64;
                Some((Ok(chunk), (body, digest, len, expected, seen, false)))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e)), (body, digest, len, expected, seen, true))),
            None => {
                let crc = digest.finalize();
                let actual = STANDARD.encode(crc.to_be_bytes());
                let mismatch = expected
                    .filter(|e| *e != actual)
                    .map(|e| format!("checksum_crc64nvme mismatch: expected `{e}`, got `{actual}`"));
                let failed = mismatch.is_some();
                *seen.lock().expect("seen lock") = Seen { len, crc, mismatch };
                failed.then(|| {
                    let err = std::io::Error::other("checksum mismatch");
                    (Err(err), (body, digest, len, None, seen, true))
                })
            }
        }
    });
    (StreamingBlob::wrap(stream), seen)
}

/// `BadDigest` if the checked body did not match its checksum header.
fn bad_digest(seen: &Mutex<Seen>) -> S3Result<()> {
    match seen.lock().expect("seen lock").mismatch.take() {
        Some(detail) => Err(s3_error!(BadDigest, "{detail}")),
        None => Ok(()),
    }
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
        let info = self.files.internal_info_path(&req.input.bucket, &req.input.key);
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
        if !self.files.root.join(&req.input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let path = self.files.object_path(&req.input.bucket, &req.input.key);
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
        if self.files.object_path(&req.input.bucket, &req.input.key).is_dir() {
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
        if !self.files.root.join(&req.input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        // s3s-fs renames the new file into place before it compares checksums, so a
        // corrupted PUT would replace the object and then fail: the checked body fails
        // the write itself, before the rename.
        let Some(expected) = req.input.checksum_crc64nvme.clone() else { return self.fs.put_object(req).await };
        let Some(body) = req.input.body.take() else { return self.fs.put_object(req).await };
        let (body, seen) = checked_body(body, Some(expected));
        req.input.body = Some(body);
        let out = self.fs.put_object(req).await;
        bad_digest(&seen)?;
        out
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        if !self.files.root.join(&bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let out = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &out.output.upload_id {
            let record = UploadRecord { bucket, key, initiated_unix_ms: unix_ms(SystemTime::now()) };
            let bytes = serde_json::to_vec(&record).map_err(|e| s3_error!(e, InternalError))?;
            std::fs::write(self.files.upload_record_path(id), bytes).map_err(|e| s3_error!(e, InternalError))?;
        }
        Ok(out)
    }
    async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        // s3s-fs stores parts without checking their checksum header; S3 checks it.
        let expected = req.input.checksum_crc64nvme.clone();
        let (upload_id, part) = (req.input.upload_id.clone(), req.input.part_number);
        let body = req.input.body.take().ok_or_else(|| s3_error!(IncompleteBody))?;
        let (body, seen) = checked_body(body, expected.clone());
        req.input.body = Some(body);
        let out = self.fs.upload_part(req).await;
        bad_digest(&seen)?;
        let mut out = out?;
        let (size, crc64nvme) = {
            let seen = seen.lock().expect("seen lock");
            (seen.len, seen.crc)
        };
        let e_tag = out.output.e_tag.as_ref().and_then(|t| t.as_strong()).unwrap_or_default().to_owned();
        let record =
            serde_json::to_vec(&PartRecord { e_tag, size, crc64nvme }).map_err(|e| s3_error!(e, InternalError))?;
        std::fs::write(self.files.part_record_path(&upload_id, part), record)
            .map_err(|e| s3_error!(e, InternalError))?;
        out.output.checksum_crc64nvme = expected;
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
        if req.input.if_match.is_some() || req.input.if_none_match.is_some() {
            return Err(s3_error!(NotImplemented, "conditional CompleteMultipartUpload"));
        }
        let input = req.input;
        let upload_id = input.upload_id.clone();
        // The object is written here, not by s3s-fs, so the key must not climb out of the
        // bucket (s3s-fs resolves its paths inside the root the same way).
        let inside = |p: &str| Path::new(p).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside(&input.bucket) || !inside(&input.key) || !inside(&upload_id) {
            return Err(s3_error!(InvalidArgument, "key, bucket or upload id names a path outside the bucket"));
        }
        if !self.files.upload_alive(&upload_id) || !self.files.root.join(&input.bucket).is_dir() {
            return Err(s3_error!(NoSuchUpload));
        }
        let parts: Vec<CompletedPart> = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(InvalidPart, "You must specify at least one part"));
        }
        let mut records = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let number = part.part_number.ok_or_else(|| s3_error!(InvalidRequest, "missing part number"))?;
            if number != i as i32 + 1 {
                return Err(s3_error!(InvalidPartOrder, "parts must be listed as 1, 2, 3, ..."));
            }
            let record: PartRecord = std::fs::read(self.files.part_record_path(&upload_id, number))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
            if let Some(given) = part.e_tag.as_ref().and_then(|t| t.as_strong())
                && given.trim_matches('"') != record.e_tag
            {
                return Err(s3_error!(InvalidPart, "part {number}: ETag {given} is not the uploaded part's"));
            }
            if number as usize != parts.len() && record.size < 5 << 20 {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is {} bytes; all but the last need 5 MiB",
                    record.size
                ));
            }
            records.push(record);
        }
        let mut crc = s3opt::integrity::CombinedCrc::new(s3opt::integrity::Algorithm::Crc64Nvme);
        let mut md5s = Vec::with_capacity(records.len() * 16);
        for r in &records {
            crc.push(r.crc64nvme, r.size);
            md5s.extend(hex_bytes(&r.e_tag).ok_or_else(|| s3_error!(InternalError, "bad recorded ETag"))?);
        }
        let actual = crc.b64();
        if let Some(expected) = &input.checksum_crc64nvme
            && *expected != actual
        {
            return Err(s3_error!(
                BadDigest,
                "full-object checksum_crc64nvme mismatch: expected `{expected}`, got `{actual}`"
            ));
        }
        let e_tag = format!("{}-{}", hex(&Md5::digest(&md5s)), records.len());
        let (bucket, key) = (input.bucket, input.key);
        let files = self.files.clone();
        let (id, n, b, k, tag, sum) =
            (upload_id.clone(), records.len() as i32, bucket.clone(), key.clone(), e_tag.clone(), actual.clone());
        tokio::task::spawn_blocking(move || files.assemble(&id, n, &b, &k, &tag, &sum))
            .await
            .map_err(|e| s3_error!(e, InternalError))?
            .map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            e_tag: Some(ETag::Strong(e_tag)),
            checksum_crc64nvme: Some(actual),
            checksum_type: Some(ChecksumType::from_static(ChecksumType::FULL_OBJECT)),
            ..Default::default()
        }))
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id.clone();
        let out = self.fs.abort_multipart_upload(req).await?;
        self.files.forget_upload(&upload_id);
        Ok(out)
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = Vec::new();
        let dir = std::fs::read_dir(&self.files.root).map_err(|e| s3_error!(e, InternalError))?;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(".cargoship-mpu-").and_then(|s| s.strip_suffix(".json")) else {
                continue;
            };
            if !self.files.upload_alive(id) {
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
