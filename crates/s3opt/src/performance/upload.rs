//! The upload pipeline: a stream of unknown length becomes one PUT or a multipart upload.
//!
//! A stream's parts are read in order into buffers borrowed from the pool (so reading stops
//! when the memory budget is spent); a file's parts are ranges of it, read while they are
//! sent: they hold no memory but count against the budget, which bounds the queue. Once no
//! more parts are left than are in flight, the rest start together (a file's past the
//! budget; up to twice the window: see `Steering::Tail`). Each part is sent by its own task
//! with its CRC64NVME, parts complete in any order, and `CompleteMultipartUpload` lists
//! them in ascending order with the whole object's CRC64NVME combined from the parts. Any
//! failure aborts the upload; a dropped (cancelled) upload is aborted in the background, see
//! [`OptimizedS3Client::finish_cleanup`](crate::OptimizedS3Client::finish_cleanup).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::client::{Engine, Failure, Steering};
use crate::config::{MAX_PARTS, MIN_PART_SIZE};
use crate::error::{Error, Result};
use crate::integrity::{Algorithm, CombinedCrc, crc64nvme_b64, crc64nvme_of_file_range};
use crate::network::{Op, Outcome};
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
    /// Makes a multipart upload resumable: where it starts from and where completed parts
    /// are recorded. With a journal, a failed or cancelled upload is left in place (not
    /// aborted) so that a later run can continue it.
    pub journal: Option<Arc<dyn UploadJournal>>,
    /// Holds the upload's completion until [`Commit::commit`] is called: its bytes go up
    /// now, and the object appears only then (an object smaller than one part still goes
    /// as a multipart upload of one part). If the [`Commit`] is dropped instead, the
    /// upload is aborted and `put_object` returns [`Error::Cancelled`]. A commit point that
    /// must follow other uploads (an archive's inventory) so costs one round trip at the
    /// end instead of its bytes' time on one connection.
    pub commit: Option<CommitGate>,
}

/// The side of a held upload ([`PutOptions::commit`]) that waits for the word to complete.
#[derive(Debug, Clone)]
pub struct CommitGate(tokio::sync::watch::Receiver<bool>);

/// Completes a held upload ([`PutOptions::commit`]) when committed; aborts it when dropped.
#[derive(Debug)]
pub struct Commit(tokio::sync::watch::Sender<bool>);

impl Commit {
    /// A commit and the gate to pass in [`PutOptions::commit`].
    pub fn new() -> (Commit, CommitGate) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Commit(tx), CommitGate(rx))
    }

    /// Lets the held upload complete.
    pub fn commit(self) {
        let _ = self.0.send(true);
    }
}

impl CommitGate {
    /// Waits for [`Commit::commit`]; an error if the commit was dropped instead.
    async fn opened(&self) -> Result<()> {
        let mut rx = self.0.clone();
        rx.wait_for(|open| *open).await.map(drop).map_err(|_| Error::Cancelled)
    }
}

/// A part that S3 has acknowledged, as a resume journal records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct JournaledPart {
    /// Part number (1-based).
    pub number: u32,
    /// Offset of the part's first byte in the object.
    pub offset: u64,
    /// Part length in bytes.
    pub size: u64,
    /// The part's CRC64NVME (raw value), compared with the re-read source on resume.
    pub crc64nvme: u64,
    /// ETag S3 returned for the part.
    pub e_tag: String,
}

/// Where a resumable multipart upload continues from.
#[derive(Debug, Clone, Default)]
pub struct ResumePoint {
    /// The multipart upload to continue.
    pub upload_id: String,
    /// Parts already acknowledged, in any order.
    pub parts: Vec<JournaledPart>,
}

/// Records the progress of a resumable upload, and says where a resumed one starts.
///
/// Calls happen on the upload's tasks; implementations persist them (e.g. append to a
/// file) before returning so that a `kill -9` after the call loses nothing.
pub trait UploadJournal: Send + Sync + std::fmt::Debug {
    /// An earlier attempt to continue, if any.
    fn resume_point(&self) -> Option<ResumePoint>;
    /// A new multipart upload was created (before any part is sent).
    fn upload_started(&self, upload_id: &str);
    /// S3 acknowledged a part.
    fn part_done(&self, part: &JournaledPart);
    /// Whether a failed or cancelled upload is left in place for a later run to continue
    /// (else it is aborted, and the journal only records that it was started).
    fn keeps_failed_uploads(&self) -> bool {
        true
    }
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
    /// Parts not sent because an earlier, interrupted run had sent them.
    pub resumed_parts: u32,
    /// Bytes in those parts.
    pub resumed_bytes: u64,
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

/// Where an upload's parts come from.
pub(crate) enum Source<R> {
    /// A stream, read part by part into buffers from the pool.
    Stream(R),
    /// A file of known length: each part is a range of it, read only while it is sent.
    File { path: Arc<Path>, len: u64, pos: u64 },
}

impl<R: AsyncRead + Unpin> Source<R> {
    /// The next `size` bytes (fewer at the end, none past it). A stream's are read into a
    /// buffer of the budget's. A file's are not read yet, but count against the budget
    /// as if they were, unless `tail` (see `Steering::Tail`): the budget also bounds how
    /// much one upload queues on the path, where a window grown on queued latency would
    /// otherwise keep each request waiting so long that it times out.
    async fn next(&mut self, engine: &Engine, size: u64, tail: bool) -> Result<PartData> {
        match self {
            Source::Stream(reader) => {
                let buf = read_part(reader, engine.pool.acquire(size).await, size).await?;
                let buf = if (buf.len() as u64) < size { buf.shrink_to_fit() } else { buf };
                Ok(PartData::Mem(buf.freeze()))
            }
            Source::File { path, len, pos } => {
                let n = size.min(*len - *pos);
                let held = if tail { None } else { Some(engine.pool.reserve(n).await) };
                let part = PartData::File { path: path.clone(), offset: *pos, len: n, _held: held };
                *pos += n;
                Ok(part)
            }
        }
    }

    /// Whether anything is left after the bytes taken so far.
    async fn has_more(&mut self) -> Result<bool> {
        match self {
            Source::Stream(reader) => {
                let mut probe = [0u8; 1];
                let n = reader
                    .read(&mut probe)
                    .await
                    .map_err(|source| Error::Stream { context: "reading upload source", source })?;
                Ok(n > 0)
            }
            Source::File { len, pos, .. } => Ok(pos < len),
        }
    }
}

/// One part's bytes.
enum PartData {
    /// Read from a stream; holds its share of the memory budget until sent.
    Mem(FrozenBuf),
    /// A range of a file, with the budget it counts against while in flight.
    File { path: Arc<Path>, offset: u64, len: u64, _held: Option<OwnedSemaphorePermit> },
}

impl PartData {
    fn len(&self) -> u64 {
        match self {
            PartData::Mem(buf) => buf.bytes().len() as u64,
            PartData::File { len, .. } => *len,
        }
    }

    /// CRC64NVME, raw and base64 (a file range is read once for it).
    async fn crc(&self) -> Result<(u64, String)> {
        match self {
            PartData::Mem(buf) => Ok(crc64nvme_b64(buf.bytes())),
            PartData::File { path, offset, len, .. } => {
                let (path, offset, len) = (path.clone(), *offset, *len);
                tokio::task::spawn_blocking(move || {
                    crc64nvme_of_file_range(&path, offset, len).map_err(|source| Error::Io {
                        context: "cannot read",
                        path: path.to_path_buf(),
                        source,
                    })
                })
                .await
                .map_err(|e| Error::Config(format!("checksum task failed: {e}")))?
            }
        }
    }

    /// A fresh request body with the part's bytes (one per attempt).
    async fn body(&self) -> Result<ByteStream> {
        match self {
            PartData::Mem(buf) => Ok(ByteStream::from(buf.bytes().clone())),
            PartData::File { path, offset, len, .. } => ByteStream::read_from()
                .path(&**path)
                .offset(*offset)
                .length(aws_smithy_types::byte_stream::Length::Exact(*len))
                .build()
                .await
                .map_err(|e| Error::Io { context: "cannot read", path: path.to_path_buf(), source: e.into() }),
        }
    }

    /// [`PartData::body`] inside a request attempt: a source that cannot be read is not
    /// worth retrying.
    async fn attempt_body(&self, engine: &Engine) -> std::result::Result<ByteStream, Failure> {
        Ok(engine.upload_body(self.body().await.map_err(|e| Failure::new(Outcome::ClientError, e))?))
    }
}

pub(crate) async fn put_object<R>(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    mut src: Source<R>,
    opts: PutOptions,
) -> Result<PutResult>
where
    R: AsyncRead + Unpin + Send,
{
    let resume = opts.journal.as_ref().and_then(|j| j.resume_point());
    let (upload_id, first, resumed) = match resume {
        Some(point) => (point.upload_id, None, point.parts),
        None => {
            let size = engine.next_part_size(1, 0, opts.content_length);
            let first = src.next(engine, size, false).await?;
            if first.len() < size && opts.commit.is_none() {
                return put_single(engine, bucket, key, first, &opts).await;
            }
            // The parts' connections are dialled while CreateMultipartUpload is out.
            if let Some(total) = opts.content_length {
                engine.expect_requests(usize::try_from(total.div_ceil(size.max(1))).unwrap_or(usize::MAX));
            }
            let upload_id = create_multipart(engine, bucket, key, &opts).await?;
            if let Some(journal) = &opts.journal {
                journal.upload_started(&upload_id);
            }
            (upload_id, Some((first, size, false)), Vec::new())
        }
    };
    let keep_for_resume = opts.journal.as_ref().is_some_and(|j| j.keeps_failed_uploads());
    let mut guard = AbortGuard {
        engine: engine.clone(),
        bucket: bucket.into(),
        key: key.into(),
        upload_id: upload_id.clone(),
        armed: !keep_for_resume,
    };
    let result = async {
        let parts = send_parts(engine, bucket, key, &upload_id, &mut src, first, resumed, &opts).await?;
        if let Some(gate) = &opts.commit {
            gate.opened().await?;
        }
        complete(engine, bucket, key, &upload_id, parts).await
    }
    .await;
    guard.armed = false;
    match result {
        Ok(res) => Ok(res),
        Err(err) => {
            if !keep_for_resume && let Err(abort_err) = engine.abort_multipart(bucket, key, &upload_id).await {
                tracing::warn!(%abort_err, upload_id, "could not abort multipart upload");
            }
            Err(err.with_object(bucket, key))
        }
    }
}

async fn create_multipart(engine: &Engine, bucket: &str, key: &str, o: &PutOptions) -> Result<String> {
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
    Ok(created
        .upload_id()
        .ok_or_else(|| Error::Config("CreateMultipartUpload returned no upload id".into()))?
        .to_owned())
}

async fn put_single(engine: &Engine, bucket: &str, key: &str, data: PartData, opts: &PutOptions) -> Result<PutResult> {
    let len = data.len();
    let (_, crc_b64) = data.crc().await?;
    let (data, crc) = (&data, &crc_b64);
    let out = engine
        .run_keyed(key, Op::PutObject, len, move || async move {
            engine
                .s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(data.attempt_body(engine).await?)
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
        bytes: len,
        parts: 1,
        multipart: false,
        e_tag: out.e_tag().map(str::to_owned),
        checksum_crc64nvme: crc_b64,
        resumed_parts: 0,
        resumed_bytes: 0,
    })
}

struct PartDone {
    number: u32,
    e_tag: String,
    crc: u64,
    crc_b64: String,
    len: u64,
    /// Sent by an earlier run, not this one.
    resumed: bool,
}

/// What the next part of a (possibly resumed) upload is.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Sent by an earlier run: re-read it, check it, do not send it.
    Known(JournaledPart),
    /// Fill a gap left between sent parts: exactly this size, this number.
    Exact { number: u32, size: u64 },
    /// Beyond everything sent before: size chosen now.
    Fresh { number: u32 },
}

/// Plans the part at offset `sent` with number `number` next, given the parts an earlier
/// run completed (sorted by offset; `next` indexes the first not yet passed). A gap
/// between completed parts keeps their numbering: the missing numbers share the gap
/// evenly, so each is at least as large as S3's minimum (the parts that filled it were).
fn plan_step(done: &[JournaledPart], next: usize, sent: u64, number: u32) -> std::result::Result<Step, String> {
    let Some(p) = done.get(next) else { return Ok(Step::Fresh { number }) };
    if p.offset < sent || p.number < number || (p.number == number && p.offset != sent) {
        return Err(format!("journal is inconsistent at part {} (offset {}, expected {sent})", p.number, p.offset));
    }
    if p.offset == sent {
        return Ok(Step::Known(p.clone()));
    }
    let slots = u64::from(p.number - number);
    let gap = p.offset - sent;
    let size = if slots == 1 { gap } else { gap / slots };
    Ok(Step::Exact { number, size })
}

#[allow(clippy::too_many_arguments)]
async fn send_parts<R: AsyncRead + Unpin>(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    src: &mut Source<R>,
    first: Option<(PartData, u64, bool)>,
    mut resumed: Vec<JournaledPart>,
    opts: &PutOptions,
) -> Result<Vec<PartDone>> {
    resumed.sort_by_key(|p| p.offset);
    let ids: Arc<(String, String, String)> = Arc::new((bucket.into(), key.into(), upload_id.into()));
    let mut tasks: JoinSet<Result<PartDone>> = JoinSet::new();
    let mut done = Vec::new();
    let mut number: u32 = 1;
    let mut sent: u64 = 0;
    let mut next_known = 0;
    let mut next = first;
    let mismatch = |detail: String| Error::ResumeMismatch { bucket: bucket.into(), key: key.into(), detail };
    loop {
        let (data, size, tail) = match next.take() {
            Some(b) => b,
            None => {
                let step = plan_step(&resumed, next_known, sent, number).map_err(mismatch)?;
                let size = match &step {
                    Step::Known(p) => p.size,
                    Step::Exact { size, .. } => *size,
                    Step::Fresh { number } => engine.next_part_size(*number, sent, opts.content_length),
                };
                let tail = is_tail(engine, opts, sent, size);
                let data = src.next(engine, size, tail).await?;
                if let Step::Known(p) = step {
                    let (crc, crc_b64) = data.crc().await?;
                    if data.len() != p.size || crc != p.crc64nvme {
                        return Err(mismatch(format!(
                            "part {} (bytes {}..{}) differs from what the interrupted run sent; the source changed",
                            p.number,
                            p.offset,
                            p.offset + p.size
                        )));
                    }
                    done.push(PartDone { number: p.number, e_tag: p.e_tag, crc, crc_b64, len: p.size, resumed: true });
                    sent += p.size;
                    number = p.number + 1;
                    next_known += 1;
                    continue;
                }
                (data, size, tail)
            }
        };
        let len = data.len();
        if len == 0 {
            break;
        }
        let steering = if tail { Steering::Tail } else { Steering::Steers };
        // A part is started only when the window has room for it, so that `sent` is what
        // has started (a file's parts are not held back by reading them).
        while tasks.len() >= engine.window.limit() * engine.room(steering) {
            match tasks.join_next().await {
                Some(res) => done.push(joined(res)?),
                None => break,
            }
        }
        tasks.spawn(send_part(engine.clone(), ids.clone(), number, sent, data, steering, opts.journal.clone()));
        sent += len;
        while let Some(res) = tasks.try_join_next() {
            done.push(joined(res)?);
        }
        if len < size {
            if next_known < resumed.len() {
                return Err(mismatch(format!(
                    "the source ended at byte {sent}, before parts the interrupted run sent"
                )));
            }
            break;
        }
        if number == MAX_PARTS {
            // The source may hold more; S3 cannot take another part.
            if src.has_more().await? {
                return Err(Error::TooLarge(format!(
                    "more than {MAX_PARTS} parts of up to {size} bytes; raise --memory-budget to allow larger parts"
                )));
            }
            break;
        }
        number += 1;
    }
    while let Some(res) = tasks.join_next().await {
        done.push(joined(res)?);
    }
    done.sort_by_key(|p| p.number);
    Ok(done)
}

/// A part task's result (a panicked task is an error, not a crash).
fn joined(res: std::result::Result<Result<PartDone>, tokio::task::JoinError>) -> Result<PartDone> {
    res.map_err(|e| Error::Config(format!("part task failed: {e}")))?
}

/// Whether the part starting at `sent` is one of the last: no more parts are left to
/// start than are in flight, so they start together now rather than one by one as those
/// finish (see `Steering::Tail`).
fn is_tail(engine: &Engine, opts: &PutOptions, sent: u64, size: u64) -> bool {
    opts.content_length.is_some_and(|total| total.saturating_sub(sent) <= engine.window.in_use() as u64 * size)
}

async fn send_part(
    engine: Arc<Engine>,
    ids: Arc<(String, String, String)>,
    number: u32,
    offset: u64,
    data: PartData,
    steering: Steering,
    journal: Option<Arc<dyn UploadJournal>>,
) -> Result<PartDone> {
    let (bucket, key, upload_id) = (&ids.0, &ids.1, &ids.2);
    let len = data.len();
    let (crc, crc_b64) = data.crc().await?;
    let (e, data_ref, crc_ref) = (&*engine, &data, &crc_b64);
    let out = e
        .run_steering(key, Op::UploadPart, len, steering, move || async move {
            e.s3.upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number as i32)
                .body(data_ref.attempt_body(e).await?)
                .checksum_crc64_nvme(crc_ref)
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|err| e.sdk_failure(err))
        })
        .await?;
    drop(data);
    let e_tag = out.e_tag().unwrap_or_default().to_owned();
    if let Some(journal) = journal {
        journal.part_done(&JournaledPart { number, offset, size: len, crc64nvme: crc, e_tag: e_tag.clone() });
    }
    Ok(PartDone { number, e_tag, crc, crc_b64, len, resumed: false })
}

async fn complete(
    engine: &Engine,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<PartDone>,
) -> Result<PutResult> {
    let mut combined = CombinedCrc::new(Algorithm::Crc64Nvme);
    let mut total = 0;
    for p in &parts {
        combined.push(p.crc, p.len);
        total += p.len;
    }
    let full_b64 = combined.b64();
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
        resumed_parts: parts.iter().filter(|p| p.resumed).count() as u32,
        resumed_bytes: parts.iter().filter(|p| p.resumed).map(|p| p.len).sum(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, offset: u64, size: u64) -> JournaledPart {
        JournaledPart { number, offset, size, crc64nvme: 0, e_tag: String::new() }
    }

    #[test]
    fn resume_skips_parts_already_sent_and_fills_gaps_with_their_numbers() {
        let mb = 1 << 20;
        // Parts 1, 2 and 5 were acknowledged; 3 and 4 were in flight when the run died.
        let done = [part(1, 0, 8 * mb), part(2, 8 * mb, 8 * mb), part(5, 32 * mb, 8 * mb)];
        assert_eq!(plan_step(&done, 0, 0, 1), Ok(Step::Known(done[0].clone())));
        assert_eq!(plan_step(&done, 2, 16 * mb, 3), Ok(Step::Exact { number: 3, size: 8 * mb }));
        assert_eq!(plan_step(&done, 2, 24 * mb, 4), Ok(Step::Exact { number: 4, size: 8 * mb }));
        assert_eq!(plan_step(&done, 2, 32 * mb, 5), Ok(Step::Known(done[2].clone())));
        assert_eq!(plan_step(&done, 3, 40 * mb, 6), Ok(Step::Fresh { number: 6 }));
    }

    #[test]
    fn resume_rejects_a_journal_whose_offsets_do_not_line_up() {
        let done = [part(2, 100, 10)];
        assert!(plan_step(&done, 0, 200, 1).is_err());
        let done = [part(1, 50, 10)];
        assert!(plan_step(&done, 0, 0, 1).is_err());
        let done = [part(1, 0, 10)];
        assert!(plan_step(&done, 0, 0, 2).is_err());
    }
}
