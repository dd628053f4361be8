//! Downloads to a file: every ranged GET writes its response's chunks at their offsets as
//! they arrive (no reassembly buffer, no copy) and checksums them; the ranges' checksums
//! are combined in offset order and must equal the one S3 stored. Once every byte has a
//! range, the slowest ranges are **split**: while the window has room, the range with the
//! most bytes left gives its second half to a new GET, so that the last ranges end
//! together instead of one trailing alone at what one connection carries (on a path that
//! caps each connection, a range that started late or lost its connection to a reset
//! otherwise finishes seconds after the rest). A range that has received nothing for
//! [`STALL_AFTER`] (a stalled response, a retry waiting out its backoff) hands everything
//! it has not received to a new GET at once.
//!
//! A range's progress is shared by all of its attempts (a retry, a hedge): an attempt
//! claims the bytes it has *written* past what is already done, in order, under the
//! range's lock, and with them the checksum it computed as they arrived. So attempts
//! cooperate instead of starting afresh, no byte is missed, and a split only has to lower
//! the range's end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use aws_sdk_s3::types::ChecksumMode;
use bytes::BytesMut;

use crate::client::{Engine, Failure, Steering, check_length, next_chunk, read_body};
use crate::error::{Error, Result};
use crate::integrity::{StoredChecksum, StreamHasher};
use crate::network::{Op, Outcome};
use crate::performance::download::{GetResult, get, in_order, verify};

/// Bytes of a response collected before they are written to the file; an attempt has at
/// most one batch being written and one filling.
const WRITE_BATCH: u64 = 1 << 20;

/// A range is split only if each half gets at least this much, and at least
/// [`SPLIT_SECS`] of what one request moves: where a request is over in milliseconds (a
/// LAN), a new GET costs more than it saves.
const MIN_SPLIT: u64 = 512 * 1024;
const SPLIT_SECS: f64 = 0.5;

/// How often the window is checked for room to split into.
const SPLIT_CHECK: Duration = Duration::from_millis(20);

/// Splits started per check at most.
const SPLITS_PER_CHECK: usize = 8;

/// A range whose attempts received nothing for this long is stalled: the rest of it goes
/// to a new GET (far below the seconds a stalled response is held; far above the gaps
/// between the chunks of a response that flows).
const STALL_AFTER: Duration = Duration::from_secs(1);

/// One range of the file and how far it has got.
struct RangeState {
    /// First byte (absolute offset in the object).
    offset: u64,
    /// Everything before this is written to the file and hashed.
    done: u64,
    /// Furthest byte any attempt has received (so a split leaves those bytes alone).
    read: u64,
    /// One past the last byte; lowered when the range's tail is split off.
    end: u64,
    /// Checksum of `[offset, done)`.
    hasher: Option<StreamHasher>,
    /// When an attempt last started or received bytes (`None` before the first attempt).
    progressed: Option<Instant>,
    /// Wakes attempts waiting on their response when `end` was moved to where they are.
    cut: Arc<tokio::sync::Notify>,
}

type Range = Arc<Mutex<RangeState>>;

fn lock(range: &Range) -> std::sync::MutexGuard<'_, RangeState> {
    range.lock().expect("range lock")
}

fn new_range(offset: u64, end: u64, hasher: Option<StreamHasher>) -> Range {
    let cut = Arc::new(tokio::sync::Notify::new());
    Arc::new(Mutex::new(RangeState { offset, done: offset, read: offset, end, hasher, progressed: None, cut }))
}

/// The ranges of one download that may still be split.
#[derive(Default)]
struct Ranges {
    open: Mutex<Vec<Range>>,
}

impl Ranges {
    fn add(&self, range: Range) {
        self.open.lock().expect("ranges lock").push(range);
    }

    /// Cuts the range with the most bytes not yet received in two, if each half gets at
    /// least `min_half`: the range now ends halfway through what it has left, and the
    /// returned new range (hashed with `fresh`) covers the rest.
    fn split_largest(&self, fresh: &Option<StreamHasher>, min_half: u64) -> Option<Range> {
        let mut open = self.open.lock().expect("ranges lock");
        open.retain(|r| {
            let r = lock(r);
            r.done < r.end
        });
        let largest = open.iter().max_by_key(|r| {
            let r = lock(r);
            r.end.saturating_sub(r.read)
        })?;
        let piece = {
            let mut r = lock(largest);
            let left = r.end.saturating_sub(r.read);
            if left < 2 * min_half {
                return None;
            }
            let mid = r.read + left / 2;
            let piece = new_range(mid, r.end, fresh.clone());
            r.end = mid;
            piece
        };
        open.push(piece.clone());
        Some(piece)
    }

    /// Up to `max` ranges stalled at `now` (see [`STALL_AFTER`]) end where they are;
    /// returns new ranges (hashed with `fresh`) for what they had left.
    fn cut_stalled(&self, now: Instant, fresh: &Option<StreamHasher>, max: usize) -> Vec<Range> {
        let mut open = self.open.lock().expect("ranges lock");
        let mut pieces = Vec::new();
        for range in open.iter() {
            if pieces.len() >= max {
                break;
            }
            let mut r = lock(range);
            if r.end > r.read && r.progressed.is_some_and(|t| now.duration_since(t) >= STALL_AFTER) {
                pieces.push(new_range(r.read, r.end, fresh.clone()));
                r.end = r.read;
                r.cut.notify_one();
            }
        }
        open.extend(pieces.iter().cloned());
        pieces
    }
}

/// The destination file, written by one batch at a time. Writes into one file serialize on
/// its inode lock anyway (tmpfs, ext4), and writers waiting for it spin in the kernel: on
/// loopback that was 8% of a 256 MiB download's CPU samples; taking turns in user space
/// instead, the download used 4-10% less CPU (medians of three interleaved sets of 8-14 runs).
type Output = Arc<std::sync::Mutex<std::fs::File>>;

/// A batch being written: where it starts, and the attempt's checksum as of its end.
type Writing = (u64, Option<StreamHasher>, tokio::task::JoinHandle<std::io::Result<Vec<Bytes>>>);

/// Writes one attempt's chunks at their offsets, a batch at a time on the blocking pool,
/// straight from the response's own buffers, and checksums them as they arrive (while
/// they are in the cache); after each batch is written, claims what it adds to the range
/// (see the module doc).
struct PositionalWriter<'a> {
    file: &'a Output,
    path: &'a Path,
    range: &'a Range,
    /// File offset of the first pending byte.
    pos: u64,
    pending: Vec<Bytes>,
    pending_len: u64,
    /// Checksum of `[range offset, pos + pending_len)`: the range's as the attempt began,
    /// then this attempt's bytes. All attempts receive the same bytes (one version, pinned
    /// by ETag), so it is the range's checksum up to there whoever claimed the middle.
    hasher: Option<StreamHasher>,
    writing: Option<Writing>,
}

impl<'a> PositionalWriter<'a> {
    /// Starts at `pos`, the range's `done` when `hasher` (its checksum then) was taken.
    fn new(file: &'a Output, path: &'a Path, range: &'a Range, pos: u64, hasher: Option<StreamHasher>) -> Self {
        Self { file, path, range, pos, pending: Vec::new(), pending_len: 0, hasher, writing: None }
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), Failure> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        self.pending_len += chunk.len() as u64;
        self.pending.push(chunk);
        if self.pending_len >= WRITE_BATCH { self.submit().await } else { Ok(()) }
    }

    /// Waits for the write in flight, then starts writing what is pending.
    async fn submit(&mut self) -> Result<(), Failure> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let (file, chunks, at) = (self.file.clone(), std::mem::take(&mut self.pending), self.pos);
        self.pos += std::mem::take(&mut self.pending_len);
        let write = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut pos = at;
            for chunk in &chunks {
                file.write_all_at(chunk, pos)?;
                pos += chunk.len() as u64;
            }
            Ok(chunks)
        });
        self.writing = Some((at, self.hasher.clone(), write));
        Ok(())
    }

    /// Waits for the write in flight and claims its bytes past what the range has done:
    /// the attempt's checksum becomes the range's, unless the range now ends inside the
    /// batch (split meanwhile), when the bytes up to the end are hashed onto the range's.
    async fn settle(&mut self) -> Result<(), Failure> {
        let Some((mut at, snapshot, writing)) = self.writing.take() else { return Ok(()) };
        let chunks = writing.await.expect("file writer task").map_err(|source| {
            let error = Error::Io { context: "cannot write destination", path: self.path.to_owned(), source };
            Failure::new(Outcome::ClientError, error)
        })?;
        let batch_end = at + chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        let mut r = lock(self.range);
        if r.done >= batch_end {
            return Ok(());
        }
        if batch_end <= r.end {
            r.hasher = snapshot;
            r.done = batch_end;
            return Ok(());
        }
        for chunk in &chunks {
            let (from, to) = (at.max(r.done), (at + chunk.len() as u64).min(r.end));
            if from < to {
                if let Some(h) = r.hasher.as_mut() {
                    h.update(&chunk[(from - at) as usize..(to - at) as usize]);
                }
                r.done = to;
            }
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Everything pushed is written and claimed.
    async fn flush(&mut self) -> Result<(), Failure> {
        self.submit().await?;
        self.settle().await
    }
}

/// Fetches `range` into `file` at its offsets, with retries (and hedges) continuing from
/// what is done. Every GET is pinned with `If-Match` to the ETag HEAD reported, so all
/// attempts and split-off pieces write the same version's bytes. `counted`: the bytes the
/// request counts in its sample (a piece split off counts none: its range was counted
/// whole, so the client's byte totals and the controller's delivery count stay exact).
#[allow(clippy::too_many_arguments)]
async fn fetch_range(
    engine: &Engine,
    bucket: &str,
    key: &str,
    etag: Option<&str>,
    range: Range,
    counted: u64,
    file: &Output,
    path: &Path,
) -> Result<(u64, u64, Option<StreamHasher>)> {
    let len = {
        let r = lock(&range);
        r.end - r.offset
    };
    // The chunks this range may hold on their way to the file count against the budget.
    let _reserved = engine.pool.reserve(len.min(2 * WRITE_BATCH)).await;
    let range = &range;
    engine
        .run_steering(key, Op::GetObject, counted, Steering::Steers, move || async move {
            let (from, to, cut, hasher) = {
                let mut r = lock(range);
                r.progressed = Some(Instant::now());
                (r.done, r.end, r.cut.clone(), r.hasher.clone())
            };
            if from >= to {
                return Ok(());
            }
            let mut out = PositionalWriter::new(file, path, range, from, hasher);
            let received = async {
                let response = get(engine, bucket, key, from, to - from, etag).await?;
                let mut body = response.body;
                let mut at = from;
                loop {
                    let next = tokio::select! {
                        next = next_chunk(engine, &mut body) => next?,
                        // Cut while waiting: done if the range now ends where this attempt is.
                        () = cut.notified() => {
                            if at >= lock(range).end {
                                return Ok(());
                            }
                            continue;
                        }
                    };
                    let Some(mut chunk) = next else { break };
                    let end = {
                        let mut r = lock(range);
                        r.read = r.read.max(at + chunk.len() as u64);
                        r.progressed = Some(Instant::now());
                        r.end
                    };
                    if at + chunk.len() as u64 >= end {
                        // The end came (or was moved) within this chunk: what lies past it
                        // belongs to a piece split off, if anything.
                        chunk.truncate(end.saturating_sub(at) as usize);
                        out.push(chunk).await?;
                        return Ok(());
                    }
                    at += chunk.len() as u64;
                    out.push(chunk).await?;
                }
                check_length(Some(to - from), at - from)
            }
            .await;
            // What was received is written and claimed before anyone resumes after it.
            out.flush().await?;
            received
        })
        .await
        .map_err(|e| e.with_downloaded_object(bucket, key))?;
    let mut r = lock(range);
    if r.done != r.end {
        return Err(Error::Config(format!("range at byte {} stopped at {} of {}", r.offset, r.done, r.end)));
    }
    Ok((r.offset, r.end - r.offset, r.hasher.take()))
}

pub(crate) async fn get_object_to_file(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    path: &Path,
) -> Result<GetResult> {
    let tmp = Partial::beside(path);
    let file = Arc::new(std::sync::Mutex::new(
        tokio::fs::File::create(&tmp.0).await.map_err(cannot_write(path))?.into_std().await,
    ));
    async {
        let info = engine.head(bucket, key).await?;
        let fresh = info.checksum.as_ref().map(|c| c.hasher());
        let etag = info.e_tag.as_deref();
        let open = Ranges::default();
        let issued = std::sync::atomic::AtomicU64::new(0);
        let (open, issued, fresh_ref) = (&open, &issued, &fresh);
        let mut ranges = std::pin::pin!(in_order(engine, 0, info.size, |off, len| {
            let range = new_range(off, off + len, fresh_ref.clone());
            open.add(range.clone());
            issued.store(off + len, std::sync::atomic::Ordering::Relaxed);
            fetch_range(engine, bucket, key, etag, range, len, &file, path)
        }));
        let mut pieces = FuturesUnordered::new();
        let mut check = tokio::time::interval(SPLIT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut done, mut ranges_left, mut count, mut splits) = (Vec::new(), true, 0u32, 0u32);
        while ranges_left || !pieces.is_empty() {
            tokio::select! {
                next = ranges.next(), if ranges_left => match next {
                    Some(range) => {
                        done.push(range?);
                        count += 1;
                    }
                    None => ranges_left = false,
                },
                Some(piece) = pieces.next() => done.push(piece?),
                // Checked on every tick (a precondition would be read only when a range
                // is handed on, and ranges are handed on in order: not while the oldest
                // one is stalled).
                _ = check.tick() => {
                    if issued.load(std::sync::atomic::Ordering::Relaxed) < info.size {
                        continue;
                    }
                    // New GETs only into free window slots: stalled ranges first.
                    let room = engine.window.limit().saturating_sub(engine.window.in_use()).min(SPLITS_PER_CHECK);
                    let mut new = open.cut_stalled(Instant::now(), fresh_ref, room);
                    // Splits once the client knows what a request moves (see SPLIT_SECS).
                    let min_half = engine.request_rate().map(|r| MIN_SPLIT.max((r * SPLIT_SECS) as u64));
                    while new.len() < room
                        && let Some(min_half) = min_half
                        && let Some(piece) = open.split_largest(fresh_ref, min_half)
                    {
                        new.push(piece);
                    }
                    for piece in new {
                        splits += 1;
                        engine.metrics.count_split();
                        pieces.push(fetch_range(engine, bucket, key, etag, piece, 0, &file, path));
                    }
                }
            }
        }
        // The pieces of the object, in order, must cover it exactly once.
        done.sort_by_key(|&(offset, _, _)| offset);
        let mut whole = info.checksum.as_ref().map(|c| c.combiner());
        let mut next = 0;
        for (offset, len, hasher) in &done {
            if *offset != next {
                return Err(Error::Config(format!("download ranges do not line up at byte {next} (next at {offset})")));
            }
            next += len;
            if let (Some(whole), Some(h)) = (whole.as_mut(), hasher) {
                whole.append(h);
            }
        }
        if next != info.size {
            return Err(Error::Config(format!("download ranges end at byte {next} of {}", info.size)));
        }
        verify(bucket, key, info.checksum.as_ref(), whole.map(|w| w.b64()))?;
        tmp.keep_as(path).await?;
        Ok(GetResult {
            bytes: info.size,
            ranges: count,
            splits,
            verified_with: info.checksum.as_ref().map(|c| c.algorithm_name()),
        })
    }
    .await
}

/// The error of a destination that cannot be written.
fn cannot_write(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { context: "cannot write destination", path: path.to_owned(), source }
}

/// A download's temporary file beside its destination (`.NAME.cargoship-partial`): removed
/// unless it is renamed into place, also when the download is dropped (Ctrl-C).
struct Partial(PathBuf);

impl Partial {
    fn beside(dest: &Path) -> Self {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "download".into());
        Self(dest.with_file_name(format!(".{name}.cargoship-partial")))
    }

    async fn keep_as(self, dest: &Path) -> Result<()> {
        tokio::fs::rename(&self.0, dest).await.map_err(cannot_write(dest))?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Downloads an object of `size` bytes (as listed, with its `e_tag`) that fits one
/// download range as a single GET of the whole object: its full-object checksum comes
/// with the response, so no HEAD is needed (a listing of many small objects costs one
/// request per object). The body is held in memory (counted against the budget), checked
/// and written beside `path`, then renamed into place.
pub(crate) async fn get_whole_to_file(
    engine: &Arc<Engine>,
    bucket: &str,
    key: &str,
    e_tag: Option<&str>,
    size: u64,
    path: &Path,
) -> Result<GetResult> {
    let _held = engine.pool.reserve(size).await;
    let (data, checksum) = engine
        .run_keyed(key, Op::GetObject, size, move || async move {
            let out = engine
                .s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .set_if_match(e_tag.map(str::to_owned))
                .send()
                .await
                .map_err(|e| engine.sdk_failure(e))?;
            let checksum =
                StoredChecksum::pick(out.checksum_crc64_nvme(), out.checksum_crc32_c(), out.checksum_crc32());
            let expected = out.content_length().map(|n| n.max(0) as u64);
            let mut buf = BytesMut::with_capacity(expected.unwrap_or(size) as usize);
            read_body(engine, out.body, expected, &mut buf).await?;
            Ok((buf.freeze(), checksum))
        })
        .await
        .map_err(|e| e.with_downloaded_object(bucket, key))?;
    let actual = checksum.as_ref().map(|c| {
        let mut h = c.hasher();
        h.update(&data);
        h.finish_b64()
    });
    verify(bucket, key, checksum.as_ref(), actual)?;
    let tmp = Partial::beside(path);
    tokio::fs::write(&tmp.0, &data).await.map_err(cannot_write(path))?;
    tmp.keep_as(path).await?;
    Ok(GetResult {
        bytes: data.len() as u64,
        ranges: 1,
        splits: 0,
        verified_with: checksum.as_ref().map(|c| c.algorithm_name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_range_with_most_left_gives_away_half_of_what_it_has_not_received() {
        let open = Ranges::default();
        let (a, b) = (new_range(0, 4 * MIB, None), new_range(4 * MIB, 8 * MIB, None));
        open.add(a.clone());
        open.add(b.clone());
        lock(&a).read = 3 * MIB; // 1 MiB left
        lock(&b).read = 5 * MIB; // 3 MiB left
        let piece = open.split_largest(&None, MIN_SPLIT).expect("a split");
        assert_eq!(lock(&b).end, 6 * MIB + MIB / 2);
        let p = lock(&piece);
        assert_eq!((p.offset, p.done, p.end), (6 * MIB + MIB / 2, 6 * MIB + MIB / 2, 8 * MIB));
        drop(p);
        // Each half would get under 512 KiB: no split.
        lock(&a).read = 4 * MIB - 1000;
        lock(&b).read = 6 * MIB + MIB / 2 - 1000;
        lock(&piece).read = 8 * MIB - 1000;
        assert!(open.split_largest(&None, MIN_SPLIT).is_none());
        // Finished ranges are forgotten.
        lock(&a).done = 4 * MIB;
        assert!(open.split_largest(&None, MIN_SPLIT).is_none());
        assert_eq!(open.open.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_range_that_received_nothing_for_a_second_hands_on_all_it_has_left() {
        let open = Ranges::default();
        let t0 = Instant::now();
        let (idle, flowing, queued) =
            (new_range(0, 4 * MIB, None), new_range(4 * MIB, 8 * MIB, None), new_range(8 * MIB, 9 * MIB, None));
        for r in [&idle, &flowing, &queued] {
            open.add(r.clone());
        }
        lock(&idle).read = MIB;
        lock(&idle).progressed = Some(t0);
        lock(&flowing).progressed = Some(t0 + Duration::from_millis(900));
        // Not yet started (waiting for a window slot): not stalled.
        assert!(open.cut_stalled(t0 + Duration::from_millis(999), &None, 8).is_empty());
        assert!(open.cut_stalled(t0 + STALL_AFTER, &None, 0).is_empty(), "no window slot free");
        let pieces = open.cut_stalled(t0 + STALL_AFTER, &None, 8);
        assert_eq!(pieces.len(), 1);
        let p = lock(&pieces[0]);
        assert_eq!((p.offset, p.end, p.progressed), (MIB, 4 * MIB, None));
        assert_eq!(lock(&idle).end, MIB, "the stalled range ends at what it received");
        assert_eq!(lock(&flowing).end, 8 * MIB);
    }
}
