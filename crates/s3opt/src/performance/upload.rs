//! The upload pipeline: a stream of unknown length becomes one PUT or a multipart upload.
//!
//! Parts are read in order into buffers borrowed from the pool (so reading stops when the
//! memory budget is spent), each part is sent by its own task with its CRC64NVME, parts
//! complete in any order, and `CompleteMultipartUpload` lists them in ascending order with
//! the whole object's CRC64NVME combined from the parts. Any failure aborts the upload;
//! a dropped (cancelled) upload is aborted in the background, see
//! [`OptimizedS3Client::finish_cleanup`](crate::OptimizedS3Client::finish_cleanup).

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use crate::client::Engine;
use crate::config::{MAX_PARTS, MIN_PART_SIZE};
use crate::error::{Error, Result};
use crate::integrity::{CombinedCrc64, b64_u64, crc64nvme_b64};
use crate::network::Op;
use crate::performance::buffer::{FrozenBuf, PooledBuf};

/// Per-upload options.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Total length when known (a file): lets part sizes be planned to fit 10,000 parts.
    pub content_length: Option<u64>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: HashMap<String, String>,
    /// Storage class (`STANDARD`, `GLACIER`, ...).
    pub storage_class: Option<String>,
    /// Server-side encryption (`AES256`, `aws:kms`).
    pub sse: Option<String>,
    /// KMS key for `aws:kms` server-side encryption.
    pub sse_kms_key_id: Option<String>,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct PutResult {
    /// Bytes uploaded.
    pub bytes: u64,
    /// Parts (1 for a single PUT).
    pub parts: u32,
    /// Whether a multipart upload was used.
    pub multipart: bool,
    /// ETag S3 returned.
    pub e_tag: Option<String>,
    /// Whole-object CRC64NVME (base64), checked by S3.
    pub checksum_crc64nvme: String,
}

impl Engine {
    /// Size of part `number` (1-based) given what was sent so far. Starts from the live
    /// part size; when the total is known and small, shrinks (to S3's 5 MiB minimum) so
    /// the rest spreads over the whole window; grows when needed so the object fits in
    /// 10,000 parts: planned from the total when known, else doubling every 1,000 parts
    /// (enough for S3's 5 TiB limit).
    pub(crate) fn next_part_size(&self, number: u32, sent: u64, total: Option<u64>) -> u64 {
        let (floor, spread) = match total {
            Some(total) => {
                let left = total.saturating_sub(sent);
                let floor = left.div_ceil(u64::from(MAX_PARTS - number.min(MAX_PARTS) + 1));
                (floor, left / self.window.limit() as u64)
            }
            None => (MIN_PART_SIZE << ((number.saturating_sub(1)) / 1000).min(10), u64::MAX),
        };
        self.clamp_part_size(self.part_size().min(spread.max(MIN_PART_SIZE)).max(floor))
    }
}

async fn read_part<R: AsyncRead + Unpin>(reader: &mut R, mut buf: PooledBuf, size: u64) -> Result<PooledBuf> {
    while (buf.len() as u64) < size {
        let want = size - buf.len() as u64;
        let n = (&mut *reader)
            .take(want)
            .read_buf(buf.buf_mut())
            .await
            .map_err(|source| Error::Stream { context: "reading upload source", source })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

pub(crate) async fn put_object<R>(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    mut reader: R,
    opts: PutOptions,
) -> Result<PutResult>
where
    R: AsyncRead + Unpin + Send,
{
    let size = engine.next_part_size(1, 0, opts.content_length);
    let first = read_part(&mut reader, engine.pool.acquire(size).await, size).await?;
    if (first.len() as u64) < size {
        return put_single(engine, bucket, key, first.freeze(), &opts).await;
    }
    let o = &opts;
    let created = engine
        .run_keyed(key, Op::CreateMultipart, 0, move || async move {
            engine
                .s3
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject)
                .set_content_type(o.content_type.clone())
                .set_metadata(Some(o.metadata.clone()).filter(|m| !m.is_empty()))
                .set_storage_class(o.storage_class.as_deref().map(StorageClass::from))
                .set_server_side_encryption(o.sse.as_deref().map(ServerSideEncryption::from))
                .set_ssekms_key_id(o.sse_kms_key_id.clone())
                .send()
                .await
                .map_err(|e| engine.sdk_failure(e))
        })
        .await
        .map_err(|e| e.with_object(bucket, key))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| Error::Config("CreateMultipartUpload returned no upload id".into()))?
        .to_owned();
    let mut guard = AbortGuard {
        engine: engine.clone(),
        bucket: bucket.into(),
        key: key.into(),
        upload_id: upload_id.clone(),
        armed: true,
    };
    let result = async {
        let parts = send_parts(engine, bucket, key, &upload_id, &mut reader, first, size, &opts).await?;
        complete(engine, bucket, key, &upload_id, parts).await
    }
    .await;
    match result {
        Ok(res) => {
            guard.armed = false;
            Ok(res)
        }
        Err(err) => {
            guard.armed = false;
            if let Err(abort_err) = engine.abort_multipart(bucket, key, &upload_id).await {
                tracing::warn!(%abort_err, upload_id, "could not abort multipart upload");
            }
            Err(err.with_object(bucket, key))
        }
    }
}

async fn put_single(engine: &Engine, bucket: &str, key: &str, data: FrozenBuf, opts: &PutOptions) -> Result<PutResult> {
    let bytes = data.bytes().clone();
    let (_, crc_b64) = crc64nvme_b64(&bytes);
    let (body, crc) = (&bytes, &crc_b64);
    let out = engine
        .run_keyed(key, Op::PutObject, bytes.len() as u64, move || async move {
            engine
                .s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .checksum_crc64_nvme(crc)
                .set_content_type(opts.content_type.clone())
                .set_metadata(Some(opts.metadata.clone()).filter(|m| !m.is_empty()))
                .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
                .set_server_side_encryption(opts.sse.as_deref().map(ServerSideEncryption::from))
                .set_ssekms_key_id(opts.sse_kms_key_id.clone())
                // Integrity is the CRC64NVME's job; hashing every byte again for SigV4 would
                // double the client's CPU per byte.
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| engine.sdk_failure(e))
        })
        .await
        .map_err(|e| e.with_object(bucket, key))?;
    Ok(PutResult {
        bytes: bytes.len() as u64,
        parts: 1,
        multipart: false,
        e_tag: out.e_tag().map(str::to_owned),
        checksum_crc64nvme: crc_b64,
    })
}

struct PartDone {
    number: u32,
    e_tag: String,
    crc: u64,
    crc_b64: String,
    len: u64,
}

#[allow(clippy::too_many_arguments)]
async fn send_parts<R: AsyncRead + Unpin>(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    reader: &mut R,
    first: PooledBuf,
    first_size: u64,
    opts: &PutOptions,
) -> Result<Vec<PartDone>> {
    let ids: Arc<(String, String, String)> = Arc::new((bucket.into(), key.into(), upload_id.into()));
    let mut tasks: JoinSet<Result<PartDone>> = JoinSet::new();
    let mut done = Vec::new();
    let mut number: u32 = 1;
    let mut sent: u64 = 0;
    let mut next = Some((first, first_size));
    loop {
        let (buf, size) = match next.take() {
            Some(b) => b,
            None => {
                let size = engine.next_part_size(number, sent, opts.content_length);
                let buf = engine.pool.acquire(size).await;
                (read_part(reader, buf, size).await?, size)
            }
        };
        if buf.is_empty() {
            break;
        }
        let len = buf.len() as u64;
        tasks.spawn(send_part(engine.clone(), ids.clone(), number, buf.freeze()));
        sent += len;
        while let Some(res) = tasks.try_join_next() {
            done.push(res.map_err(|e| Error::Config(format!("part task failed: {e}")))??);
        }
        if len < size {
            break;
        }
        if number == MAX_PARTS {
            // The reader may still hold data; S3 cannot take another part.
            let mut probe = [0u8; 1];
            let more = reader
                .read(&mut probe)
                .await
                .map_err(|source| Error::Stream { context: "reading upload source", source })?;
            if more > 0 {
                return Err(Error::TooLarge(format!(
                    "more than {MAX_PARTS} parts of up to {size} bytes; raise --memory-budget to allow larger parts"
                )));
            }
            break;
        }
        number += 1;
    }
    while let Some(res) = tasks.join_next().await {
        done.push(res.map_err(|e| Error::Config(format!("part task failed: {e}")))??);
    }
    done.sort_by_key(|p| p.number);
    Ok(done)
}

async fn send_part(
    engine: Arc<Engine>,
    ids: Arc<(String, String, String)>,
    number: u32,
    data: FrozenBuf,
) -> Result<PartDone> {
    let (bucket, key, upload_id) = (&ids.0, &ids.1, &ids.2);
    let bytes = data.bytes().clone();
    let len = bytes.len() as u64;
    let (crc, crc_b64) = crc64nvme_b64(&bytes);
    let (e, body, crc_ref) = (&*engine, &bytes, &crc_b64);
    let out = e
        .run_keyed(key, Op::UploadPart, len, move || async move {
            e.s3.upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number as i32)
                .body(ByteStream::from(body.clone()))
                .checksum_crc64_nvme(crc_ref)
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|err| e.sdk_failure(err))
        })
        .await?;
    drop(bytes);
    drop(data);
    let e_tag = out.e_tag().unwrap_or_default().to_owned();
    Ok(PartDone { number, e_tag, crc, crc_b64, len })
}

async fn complete(
    engine: &Engine,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<PartDone>,
) -> Result<PutResult> {
    let mut combined = CombinedCrc64::default();
    let mut total = 0;
    for p in &parts {
        combined.push(p.crc, p.len);
        total += p.len;
    }
    let full_b64 = b64_u64(combined.value());
    let completed: Vec<CompletedPart> = parts
        .iter()
        .map(|p| {
            CompletedPart::builder()
                .part_number(p.number as i32)
                .e_tag(&p.e_tag)
                .checksum_crc64_nvme(&p.crc_b64)
                .build()
        })
        .collect();
    let (completed, full) = (&completed, &full_b64);
    let out = engine
        .run_keyed(key, Op::CompleteMultipart, 0, move || async move {
            engine
                .s3
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed.clone())).build())
                .checksum_crc64_nvme(full)
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await
                .map_err(|e| engine.sdk_failure(e))
        })
        .await?;
    Ok(PutResult {
        bytes: total,
        parts: parts.len() as u32,
        multipart: true,
        e_tag: out.e_tag().map(str::to_owned),
        checksum_crc64nvme: full_b64,
    })
}

/// Aborts the multipart upload if the upload future is dropped before it finished.
struct AbortGuard {
    engine: Arc<Engine>,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let engine = self.engine.clone();
        let (bucket, key, upload_id) = (self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let handle = rt.spawn(async move {
                if let Err(err) = engine.abort_multipart(&bucket, &key, &upload_id).await {
                    tracing::warn!(%err, upload_id, "could not abort cancelled multipart upload");
                }
            });
            self.engine.cleanup.lock().expect("cleanup lock").push(handle);
        }
    }
}
