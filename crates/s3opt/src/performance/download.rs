//! The download pipeline: parallel ranged GETs reassembled in order and verified.
//!
//! Ranges (one part size each, read live so a controller can change it) are fetched
//! concurrently. To a stream, they land in pool buffers and are written strictly in order,
//! feeding a running checksum that must equal the full-object checksum S3 stored (to a
//! file, see [`to_file`](super::to_file)). `get_range` is the ObjectFS path: a small read
//! is one small GET.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{Engine, Failure, Steering, read_body};
use crate::error::{Error, Result};
use crate::integrity::StoredChecksum;
use crate::network::Op;
use crate::performance::buffer::PooledBuf;

/// Ranged GETs queued ahead of the writer at most (the window, up to this; memory is
/// bounded by the pool anyway).
const LOOKAHEAD: usize = 256;

/// What a download did.
#[derive(Debug, Clone, Serialize)]
pub struct GetResult {
    /// Bytes written.
    pub bytes: u64,
    /// Ranged GETs issued (not counting retries, hedges or splits).
    pub ranges: u32,
    /// Ranges whose second half went to a GET of its own so the last ranges end together
    /// (downloads to a file).
    pub splits: u32,
    /// Checksum algorithm the data was verified with; `None` when S3 stored no full-object
    /// checksum for it (e.g. objects uploaded by other tools as composite multipart).
    pub verified_with: Option<&'static str>,
}

fn range_header(offset: u64, len: u64) -> String {
    if len == 0 { format!("bytes={offset}-") } else { format!("bytes={offset}-{}", offset + len - 1) }
}

/// One attempt of a ranged GET (`len` 0: to the end), only of the version with `etag`
/// when given.
pub(super) async fn get(
    engine: &Engine,
    bucket: &str,
    key: &str,
    offset: u64,
    len: u64,
    etag: Option<&str>,
) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, Failure> {
    engine
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(range_header(offset, len))
        .set_if_match(etag.map(str::to_owned))
        .send()
        .await
        .map_err(|e| engine.sdk_failure(e))
}

/// One ranged GET of `len` bytes (0: to the end) at `offset`, with retries, into `buf`
/// (reused across attempts). Returns the filled buffer.
async fn fetch(engine: &Engine, bucket: &str, key: &str, offset: u64, len: u64, buf: BytesMut) -> Result<BytesMut> {
    fetch_steering(engine, bucket, key, offset, len, buf, Steering::Steers).await
}

/// What a failed attempt leaves for the next: the bytes that arrived and the ETag they
/// came from.
#[derive(Default)]
struct Partial {
    buf: BytesMut,
    etag: Option<String>,
}

/// [`fetch`], choosing whether the GET steers the controllers (see [`Steering`]).
/// A body cut off mid-way (reset, stall) is resumed: the retry asks only for the bytes not
/// yet received, pinned with `If-Match` to the ETag of the first part so that two versions
/// of an object are never spliced (a changed object fails with 412 instead).
async fn fetch_steering(
    engine: &Engine,
    bucket: &str,
    key: &str,
    offset: u64,
    len: u64,
    buf: BytesMut,
    steering: Steering,
) -> Result<BytesMut> {
    let slot = &std::sync::Mutex::new(Some(Partial { buf, etag: None }));
    engine
        .run_steering(key, Op::GetObject, len, steering, move || async move {
            // A hedge running beside an attempt finds the slot empty and starts afresh.
            let Partial { mut buf, mut etag } = slot.lock().expect("slot").take().unwrap_or_default();
            if etag.is_none() {
                buf.clear();
            }
            let have = buf.len() as u64;
            if len > 0 && have >= len {
                // Everything arrived before the failure (a body without a length).
                buf.truncate(len as usize);
                return Ok(buf);
            }
            let result = async {
                let out =
                    get(engine, bucket, key, offset + have, if len == 0 { 0 } else { len - have }, etag.as_deref())
                        .await?;
                if etag.is_none() {
                    etag = out.e_tag().map(str::to_owned);
                }
                let expected = out.content_length().map(|n| n.max(0) as u64);
                buf.reserve(expected.unwrap_or(0) as usize);
                read_body(engine, out.body, expected, &mut buf).await
            }
            .await;
            match result {
                Ok(()) => Ok(buf),
                Err(failure) => {
                    *slot.lock().expect("slot") = Some(Partial { buf, etag });
                    Err(failure)
                }
            }
        })
        .await
}

async fn fetch_pooled(engine: &Engine, bucket: &str, key: &str, offset: u64, len: u64) -> Result<PooledBuf> {
    let mut buf = engine.pool.acquire(len).await;
    let data =
        fetch(engine, bucket, key, offset, len, buf.take()).await.map_err(|e| e.with_downloaded_object(bucket, key))?;
    buf.put(data);
    Ok(buf)
}

/// Ranges are never cut smaller than this (to spread a small object over the window, or to
/// keep requests short on a slow path).
pub(crate) const MIN_RANGE: u64 = 1024 * 1024;

/// Fetches `[start, end)` as consecutive ranges and yields them in order. A range's length
/// (the live range size, or less, down to 1 MiB, when what is left would not otherwise
/// keep the whole window busy) is decided only when it can start: no more ranges run than
/// the window admits, and a new one is queued as soon as any finishes (not only the
/// oldest). So a large object's ranges follow the controller's latest range size instead
/// of all taking the first guess.
pub(super) fn in_order<'a, T: 'a, Fut>(
    engine: &'a Engine,
    start: u64,
    end: u64,
    fetch: impl Fn(u64, u64) -> Fut + 'a,
) -> impl futures::Stream<Item = Result<T>> + 'a
where
    Fut: std::future::Future<Output = Result<T>> + 'a,
{
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::task::Poll;
    async fn counted<F: std::future::Future>(f: F, finished: Arc<AtomicUsize>) -> F::Output {
        let out = f.await;
        finished.fetch_add(1, Relaxed);
        out
    }
    // Finished but not yet handed on (they wait behind an older range).
    let finished = Arc::new(AtomicUsize::new(0));
    let mut queue = futures::stream::FuturesOrdered::new();
    let mut off = start;
    futures::stream::poll_fn(move |cx| {
        loop {
            let ahead = engine.window.limit().clamp(1, LOOKAHEAD);
            while off < end && queue.len() - finished.load(Relaxed) < ahead {
                let left = end - off;
                // Whole MiB, so that the pool's buffers come back in a few sizes and are reused.
                let spread = (left / engine.window.limit() as u64 / MIN_RANGE).max(1) * MIN_RANGE;
                let len = engine.range_size().min(spread).min(left);
                queue.push_back(counted(fetch(off, len), finished.clone()));
                off += len;
            }
            match queue.poll_next_unpin(cx) {
                Poll::Ready(Some(out)) => {
                    finished.fetch_sub(1, Relaxed);
                    return Poll::Ready(Some(out));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                // A younger range finished while the oldest runs on: start the next one.
                Poll::Pending if off < end && queue.len() - finished.load(Relaxed) < ahead => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
}

pub(crate) async fn get_object<W>(engine: &Arc<Engine>, bucket: &str, key: &str, mut writer: W) -> Result<GetResult>
where
    W: AsyncWrite + Unpin + Send,
{
    let writing_failed = |source| Error::Stream { context: "writing download", source };
    let info = engine.head(bucket, key).await?;
    let mut hasher = info.checksum.as_ref().map(|c| c.hasher());
    let mut fetches =
        std::pin::pin!(in_order(engine, 0, info.size, |off, len| fetch_pooled(engine, bucket, key, off, len)));
    let (mut written, mut count) = (0u64, 0u32);
    while let Some(buf) = fetches.next().await {
        let buf = buf?;
        if let Some(h) = hasher.as_mut() {
            h.update(buf.as_slice());
        }
        written += buf.len() as u64;
        count += 1;
        writer.write_all(buf.as_slice()).await.map_err(writing_failed)?;
    }
    writer.flush().await.map_err(writing_failed)?;
    verify(bucket, key, info.checksum.as_ref(), hasher.map(|h| h.finish_b64()))?;
    Ok(GetResult {
        bytes: written,
        ranges: count,
        splits: 0,
        verified_with: info.checksum.as_ref().map(|c| c.algorithm_name()),
    })
}

/// Checks what was downloaded against the full-object checksum S3 stored (if any).
pub(super) fn verify(bucket: &str, key: &str, stored: Option<&StoredChecksum>, actual: Option<String>) -> Result<()> {
    if let (Some(actual), Some(expected)) = (actual, stored)
        && actual != expected.value
    {
        return Err(Error::Integrity {
            bucket: bucket.into(),
            key: key.into(),
            detail: format!("downloaded data has {} {actual}, S3 stored {}", expected.algorithm_name(), expected.value),
        });
    }
    Ok(())
}

/// See [`OptimizedS3Client::get_range`](crate::OptimizedS3Client::get_range). A read is
/// split once it is longer than one ranged GET of a download (the range size, about a
/// second of one request's rate), not one part: on a path that caps each connection, a
/// 6 MiB read as one GET at 2 MB/s took 3.2 s at the end of a restore that the link would
/// have carried in a fraction of that.
pub(crate) async fn get_range(engine: &Arc<Engine>, bucket: &str, key: &str, offset: u64, len: u64) -> Result<Bytes> {
    if len == 0 || len <= engine.range_size() {
        let buf = match fetch(engine, bucket, key, offset, len, BytesMut::new()).await {
            Ok(buf) => buf,
            Err(err) => return Err(range_error(engine, bucket, key, offset, err).await),
        };
        if len == 0 {
            engine.metrics.add_bytes_received(buf.len() as u64);
        }
        return Ok(buf.freeze());
    }
    // A long read: one HEAD for the size, then parallel ranges.
    let size = engine.head(bucket, key).await?.size;
    if offset >= size {
        return Err(Error::InvalidRange { bucket: bucket.into(), key: key.into(), offset, size });
    }
    let end = offset.saturating_add(len).min(size);
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    let mut fetches =
        std::pin::pin!(in_order(engine, offset, end, |off, len| fetch(engine, bucket, key, off, len, BytesMut::new())));
    while let Some(piece) = fetches.next().await {
        out.extend_from_slice(&piece.map_err(|e| e.with_downloaded_object(bucket, key))?);
    }
    Ok(out.freeze())
}

/// Exactly one ranged GET of `len` (> 0) bytes at `offset`, whatever the part size: the
/// reader sizes its own ranges and must not trigger a HEAD or a split. The reader's GETs
/// are app-limited, so they take window slots but do not steer the controllers.
pub(crate) async fn get_exact(engine: &Engine, bucket: &str, key: &str, offset: u64, len: u64) -> Result<Bytes> {
    match fetch_steering(engine, bucket, key, offset, len, BytesMut::new(), Steering::AppLimited).await {
        Ok(buf) => Ok(buf.freeze()),
        Err(err) => Err(range_error(engine, bucket, key, offset, err).await),
    }
}

/// Turns S3's `InvalidRange` into an error that says how long the object is.
async fn range_error(engine: &Engine, bucket: &str, key: &str, offset: u64, err: Error) -> Error {
    match err {
        Error::Service { ref code, .. } if code == "InvalidRange" => match engine.head(bucket, key).await {
            Ok(info) => Error::InvalidRange { bucket: bucket.into(), key: key.into(), offset, size: info.size },
            Err(e) => e,
        },
        Error::NoSuchKey { .. } => engine.missing_bucket_or_key(bucket, key).await,
        other => other.with_downloaded_object(bucket, key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientConfig, ControllerKind, OptimizedS3Client};
    use std::sync::Mutex;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::sync::oneshot;

    const MIB: u64 = 1 << 20;

    /// A client that never sends anything: enough for the engine's window and range size.
    fn offline(window: usize) -> OptimizedS3Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        let cfg = ClientConfig { controller: ControllerKind::Fixed(window), concurrency: window, ..Default::default() };
        OptimizedS3Client::from_sdk(aws_sdk_s3::Client::from_conf(conf), cfg, "offline".into())
    }

    #[tokio::test]
    async fn ranges_are_sized_when_they_start_and_any_finished_one_makes_room() {
        let client = offline(2);
        let engine = &client.engine;
        engine.range_size.store(2 * MIB, Relaxed);
        let started = Mutex::new(Vec::new());
        let mut stream = std::pin::pin!(in_order(engine, 0, 40 * MIB, |off, len| {
            let (tx, rx) = oneshot::channel::<()>();
            started.lock().unwrap().push((off, len, Some(tx)));
            async move {
                rx.await.map_err(|_| Error::Config("dropped".into()))?;
                Ok((off, len))
            }
        }));
        let release = |i: usize| started.lock().unwrap()[i].2.take().unwrap().send(()).unwrap();
        let lens = || started.lock().unwrap().iter().map(|s| (s.0 / MIB, s.1 / MIB)).collect::<Vec<_>>();

        assert!(futures::poll!(stream.next()).is_pending());
        assert_eq!(lens(), [(0, 2), (2, 2)], "a window of 2: two ranges of the first size");
        // The controller measures the path and asks for longer ranges.
        engine.range_size.store(8 * MIB, Relaxed);
        // The younger range finishes first: the next one starts at once, at the new size,
        // while the oldest is still running.
        release(1);
        assert!(futures::poll!(stream.next()).is_pending());
        assert_eq!(lens(), [(0, 2), (2, 2), (4, 8)]);
        release(0);
        let first = futures::poll!(stream.next());
        assert!(matches!(first, std::task::Poll::Ready(Some(Ok((0, n)))) if n == 2 * MIB), "in order: {first:?}");
        let second = futures::poll!(stream.next());
        assert!(matches!(second, std::task::Poll::Ready(Some(Ok((o, _)))) if o == 2 * MIB), "{second:?}");
        assert!(futures::poll!(stream.next()).is_pending());
        assert_eq!(lens(), [(0, 2), (2, 2), (4, 8), (12, 8)], "two handed on, one running: one more starts");
    }
}
