//! Per-handle object reads with prefetch: the ObjectFS path (`read(offset, len)` on an open
//! file) on top of ranged GETs and the shared
//! [`BlockCache`](crate::performance::block_cache::BlockCache).
//!
//! [`ReadAhead`] is the pure policy: it classifies each read as first, sequential (within a
//! small forward or backward jump of the last one) or random, and says which ranges to fetch
//! ahead. The first read of a handle fetches only the blocks it touches (a 4 KiB read is one
//! 16 KiB GET); once a sequential run spans 256 KiB, prefetching starts, and while reads
//! stay sequential the read-ahead window doubles, up to a cap set by the cache (half of it),
//! cut into ranges sized from the client's live concurrency and part size so they run in
//! parallel; a random read resets the window.
//!
//! [`ObjectReader`] does the I/O: every GET goes through the client's engine (a window
//! slot, retries, hedging, a counted sample), GETs run as background tasks
//! that fill the cache, and a read waits only for the blocks it needs. The reader's GETs do
//! not steer the controllers: how many are in flight is the reader's choice (app-limited),
//! not a measure of the network. [`ObjectReader::start_read`] splits a read so that a
//! caller sharing one reader between concurrent reads holds it only while planning.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Serialize;

use crate::client::{Engine, OptimizedS3Client};
use crate::error::Result;
use crate::performance::block_cache::ObjectId;
use crate::performance::download;

const MIB: u64 = 1024 * 1024;

pub use crate::performance::block_cache::BLOCK_SIZE;

/// Prefetch ranges are never cut smaller than this (a request costs a round trip).
const MIN_CHUNK: u64 = MIB;

/// How a read relates to the ones before it on the same handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Access {
    /// The first read of the handle.
    First,
    /// Continues the last read (exactly, or after a tolerated small jump).
    Sequential,
    /// Anywhere else: the read-ahead window resets.
    Random,
}

/// Settings of the read-ahead policy (all in bytes).
#[derive(Debug, Clone, Copy)]
pub struct ReadAheadConfig {
    /// Block size: the demand and prefetch ranges are aligned to it.
    pub block: u64,
    /// Window after the first sequential read. Default 1 MiB.
    pub initial_window: u64,
    /// Largest window (the memory cap). Default 64 MiB.
    pub max_window: u64,
    /// A forward jump of up to this much past the last read (or anywhere inside what is
    /// already being fetched ahead) still counts as sequential. Default 1 MiB.
    pub forward_tolerance: u64,
    /// A backward jump of up to this much (reordered or re-read data) still counts as
    /// sequential. Default 1 MiB.
    pub backward_tolerance: u64,
    /// A run of sequential reads is prefetched only once it spans this much, so a single
    /// read that the kernel splits in two does not start a prefetch. Default 256 KiB.
    pub trigger: u64,
}

impl Default for ReadAheadConfig {
    fn default() -> Self {
        Self {
            block: BLOCK_SIZE,
            initial_window: MIB,
            max_window: 64 * MIB,
            forward_tolerance: MIB,
            backward_tolerance: MIB,
            trigger: 256 * 1024,
        }
    }
}

/// What to do for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub access: Access,
    /// Ranges `(offset, len)` to fetch ahead of the read, in order.
    pub prefetch: Vec<(u64, u64)>,
}

/// The read-ahead policy of one handle. Pure: no I/O, no clock.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    cfg: ReadAheadConfig,
    /// End of the furthest read of the current sequential run.
    last_end: Option<u64>,
    /// Where the current run started.
    run_start: u64,
    /// Current window; 0 until reads turn out sequential.
    window: u64,
    /// Everything before this offset has been fetched or asked for.
    ahead_end: u64,
}

impl ReadAhead {
    pub fn new(cfg: ReadAheadConfig) -> Self {
        Self { cfg, last_end: None, run_start: 0, window: 0, ahead_end: 0 }
    }

    /// Current read-ahead window in bytes (0: no prefetching).
    pub fn window(&self) -> u64 {
        self.window
    }

    fn align_up(&self, n: u64) -> u64 {
        n.div_ceil(self.cfg.block) * self.cfg.block
    }

    /// Classifies a read of `[offset, offset + len)` of an object of `size` bytes and plans
    /// the prefetch: ranges of `chunk` bytes (a multiple of the block size) covering the
    /// window ahead of the read, issued only in whole chunks unless they reach the end.
    /// Each time a sequential read issues a prefetch, the window doubles (up to the cap).
    pub fn on_read(&mut self, offset: u64, len: u64, size: u64, chunk: u64) -> Plan {
        let end = offset.saturating_add(len).min(size);
        let access = match self.last_end {
            None => Access::First,
            Some(last) => {
                let ahead = self.ahead_end.saturating_sub(last);
                let forward_ok = offset >= last && offset - last <= self.cfg.forward_tolerance.max(ahead);
                let backward_ok = offset < last && last - offset <= self.cfg.backward_tolerance;
                if forward_ok || backward_ok { Access::Sequential } else { Access::Random }
            }
        };
        let demand_end = self.align_up(end).min(size);
        if access != Access::Sequential {
            self.window = 0;
            self.last_end = Some(end);
            self.run_start = offset;
            self.ahead_end = demand_end;
            return Plan { access, prefetch: Vec::new() };
        }
        let last = self.last_end.unwrap_or(end).max(end);
        self.last_end = Some(last);
        if last.saturating_sub(self.run_start) < self.cfg.trigger {
            self.ahead_end = self.ahead_end.max(demand_end);
            return Plan { access, prefetch: Vec::new() };
        }
        if self.window == 0 {
            self.window = self.cfg.initial_window.min(self.cfg.max_window);
        }
        let chunk = chunk.max(self.cfg.block);
        let target = last.saturating_add(self.window).min(size);
        let mut from = self.ahead_end.max(demand_end);
        let mut prefetch = Vec::new();
        while from < target {
            let len = chunk.min(size - from);
            if from + len > target && from + len < size {
                break; // not a whole chunk yet
            }
            prefetch.push((from, len));
            from += len;
        }
        self.ahead_end = from;
        if !prefetch.is_empty() {
            self.window = self.window.saturating_mul(2).min(self.cfg.max_window);
        }
        Plan { access, prefetch }
    }

    /// Takes back the part of a plan that could not be issued (from `offset` on), so a
    /// later read plans it again.
    pub fn not_issued_from(&mut self, offset: u64) {
        self.ahead_end = self.ahead_end.min(offset);
    }
}

/// What one reader did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReaderStats {
    pub reads: u64,
    pub bytes_read: u64,
    /// GETs for blocks a read needed and nobody had fetched.
    pub demand_requests: u64,
    /// GETs issued ahead of the reads.
    pub prefetch_requests: u64,
    /// Reads classified random (the window was reset).
    pub random_reads: u64,
    /// Current read-ahead window.
    pub window: u64,
}

type ChunkFuture = Shared<BoxFuture<'static, Option<Bytes>>>;

/// A prefetch in flight: blocks `[first, end)` arrive together.
struct InFlight {
    first: u64,
    end: u64,
    data: ChunkFuture,
}

/// Reads of one object through the shared cache, with read-ahead. One per open file.
pub struct ObjectReader {
    engine: Arc<Engine>,
    bucket: Arc<str>,
    key: Arc<str>,
    size: u64,
    object: ObjectId,
    policy: ReadAhead,
    in_flight: Vec<InFlight>,
    stats: ReaderStats,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .field("size", &self.size)
            .field("stats", &self.stats)
            .finish()
    }
}

impl ObjectReader {
    pub(crate) fn new(client: &OptimizedS3Client, bucket: &str, key: &str, size: u64, version: Option<&str>) -> Self {
        let engine = client.engine.clone();
        let cache = &engine.block_cache;
        let cfg = ReadAheadConfig {
            block: cache.block_size(),
            max_window: (cache.capacity() / 2).max(cache.block_size()),
            ..ReadAheadConfig::default()
        };
        Self {
            object: ObjectId::new(bucket, key, size, version),
            bucket: bucket.into(),
            key: key.into(),
            size,
            policy: ReadAhead::new(cfg),
            in_flight: Vec::new(),
            stats: ReaderStats::default(),
            engine,
        }
    }

    /// Size of the object as given when the reader was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What this reader did so far.
    pub fn stats(&self) -> ReaderStats {
        ReaderStats { window: self.policy.window(), ..self.stats }
    }

    /// Prefetch range size: the window spread over the requests the client may have in
    /// flight, between 1 MiB and the live part size, in whole blocks.
    fn chunk_size(&self) -> u64 {
        let block = self.engine.block_cache.block_size();
        let spread = self.policy.window().max(MIN_CHUNK) / self.engine.window.limit().max(1) as u64;
        let chunk = spread.clamp(MIN_CHUNK, self.engine.part_size().max(MIN_CHUNK));
        (chunk / block).max(1) * block
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object; none past it).
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        self.start_read(offset, len).finish().await
    }

    /// The first half of [`ObjectReader::read`]: updates the read-ahead state, takes what
    /// the cache has, and starts the GETs (demand and prefetch) in the background. Awaiting
    /// the returned [`PendingRead`] needs no access to the reader, so a caller that shares
    /// the reader between concurrent reads (a filesystem) holds its lock only for this part.
    pub fn start_read(&mut self, offset: u64, len: u64) -> PendingRead {
        let block = self.engine.block_cache.block_size();
        let mut pending = PendingRead {
            engine: self.engine.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            object: self.object.clone(),
            size: self.size,
            offset,
            end: offset,
            first: 0,
            blocks: Vec::new(),
            waits: Vec::new(),
        };
        if offset >= self.size || len == 0 {
            return pending;
        }
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = (offset / block, (end - 1) / block);
        pending.end = end;
        pending.first = first;
        let chunk = self.chunk_size();
        let plan = self.policy.on_read(offset, end - offset, self.size, chunk);
        self.stats.reads += 1;
        self.stats.bytes_read += end - offset;
        if plan.access == Access::Random {
            self.stats.random_reads += 1;
            // Whatever was being fetched for the old position still lands in the cache.
            self.in_flight.clear();
        }
        // Forget fetches that finished or that the reader has left behind.
        self.in_flight.retain(|p| p.data.peek().is_none() && p.end > first);

        pending.blocks = (first..=last).map(|i| self.engine.block_cache.get(&self.object, i)).collect();
        // Blocks nobody is fetching yet, as runs of consecutive blocks.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, idx) in (first..=last).enumerate() {
            if pending.blocks[i].is_some() || self.in_flight.iter().any(|p| (p.first..p.end).contains(&idx)) {
                continue;
            }
            match runs.last_mut() {
                Some((_, e)) if *e == idx => *e = idx + 1,
                _ => runs.push((idx, idx + 1)),
            }
        }
        self.fetch_runs(&runs);
        self.issue_prefetch(&plan.prefetch);
        // Every fetch in flight that brings a block this read lacks.
        for (i, idx) in (first..=last).enumerate() {
            if pending.blocks[i].is_some() {
                continue;
            }
            if let Some(p) = self.in_flight.iter().find(|p| (p.first..p.end).contains(&idx))
                && !pending.waits.iter().any(|(f, _)| *f == p.first)
            {
                pending.waits.push((p.first, p.data.clone()));
            }
        }
        pending
    }

    /// Starts GETs for runs of blocks a read needs (one per run, split at the part size);
    /// they fill the cache and are tracked in flight like prefetches.
    fn fetch_runs(&mut self, runs: &[(u64, u64)]) {
        let block = self.engine.block_cache.block_size();
        let max_blocks = (self.engine.part_size() / block).max(1);
        for &(s, e) in runs {
            let mut i = s;
            while i < e {
                let j = (i + max_blocks).min(e);
                let (off, end) = (i * block, (j * block).min(self.size));
                self.stats.demand_requests += 1;
                let (engine, bucket, key, object) =
                    (self.engine.clone(), self.bucket.clone(), self.key.clone(), self.object.clone());
                let task = tokio::spawn(async move {
                    match download::get_exact(&engine, &bucket, &key, off, end - off).await {
                        Ok(data) => {
                            store(&engine, &object, off / block, &data, block);
                            Some(data)
                        }
                        // The read fetches again and reports the error.
                        Err(_) => None,
                    }
                });
                let data = task.map(|r| r.ok().flatten()).boxed().shared();
                self.in_flight.push(InFlight { first: i, end: j, data });
                i = j;
            }
        }
    }

    /// Starts background GETs for the planned ranges, each holding a reservation in the
    /// cache; what cannot be reserved is handed back to the policy.
    fn issue_prefetch(&mut self, ranges: &[(u64, u64)]) {
        let cache = &self.engine.block_cache;
        let block = cache.block_size();
        let limit = cache.capacity() / 2;
        for &(off, len) in ranges {
            if !cache.try_reserve(len, limit) {
                tracing::debug!(key = %self.key, off, "prefetch deferred: read cache full");
                self.policy.not_issued_from(off);
                return;
            }
            self.stats.prefetch_requests += 1;
            let (engine, bucket, key, object) =
                (self.engine.clone(), self.bucket.clone(), self.key.clone(), self.object.clone());
            let task = tokio::spawn(async move {
                let result = download::get_exact(&engine, &bucket, &key, off, len).await;
                engine.block_cache.release(len);
                match result {
                    Ok(data) => {
                        store(&engine, &object, off / block, &data, block);
                        Some(data)
                    }
                    Err(err) => {
                        tracing::debug!(%key, off, len, error = %err, "prefetch failed; the read will fetch on demand");
                        None
                    }
                }
            });
            let data = task.map(|r| r.ok().flatten()).boxed().shared();
            self.in_flight.push(InFlight { first: off / block, end: (off + len).div_ceil(block), data });
        }
    }
}

/// A read started by [`ObjectReader::start_read`]; await [`PendingRead::finish`] for the
/// bytes.
pub struct PendingRead {
    engine: Arc<Engine>,
    bucket: Arc<str>,
    key: Arc<str>,
    object: ObjectId,
    size: u64,
    offset: u64,
    end: u64,
    /// Index of the first block of the read.
    first: u64,
    blocks: Vec<Option<Bytes>>,
    waits: Vec<(u64, ChunkFuture)>,
}

impl PendingRead {
    /// Waits for the blocks, fetching again (and reporting the error of) any that a failed
    /// fetch should have brought.
    pub async fn finish(mut self) -> Result<Bytes> {
        if self.end <= self.offset {
            return Ok(Bytes::new());
        }
        let block = self.engine.block_cache.block_size();
        let waits = std::mem::take(&mut self.waits);
        let arrivals = futures::future::join_all(waits.into_iter().map(|(f, fut)| fut.map(move |d| (f, d)))).await;
        for (start, data) in arrivals {
            if let Some(data) = data {
                fill(&mut self.blocks, self.first, start, &data, block);
            }
        }
        let mut retry: Vec<(u64, u64)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let idx = self.first + i as u64;
            if b.is_none() {
                match retry.last_mut() {
                    Some((_, e)) if *e == idx => *e = idx + 1,
                    _ => retry.push((idx, idx + 1)),
                }
            }
        }
        let fetches = retry.iter().map(|&(s, e)| {
            let this = &self;
            async move {
                let (off, end) = (s * block, (e * block).min(this.size));
                let data = download::get_exact(&this.engine, &this.bucket, &this.key, off, end - off).await?;
                store(&this.engine, &this.object, s, &data, block);
                Ok::<_, crate::Error>((s, data))
            }
        });
        for (s, data) in futures::future::try_join_all(fetches).await? {
            fill(&mut self.blocks, self.first, s, &data, block);
        }
        Ok(assemble(&self.blocks, self.first * block, self.offset, self.end))
    }
}

/// The block `idx` out of a range that starts at block `first`.
fn slice_block(data: &Bytes, first: u64, idx: u64, block: u64) -> Bytes {
    let start = ((idx - first) * block) as usize;
    let end = (start + block as usize).min(data.len());
    data.slice(start.min(end)..end)
}

fn store(engine: &Engine, object: &ObjectId, first: u64, data: &Bytes, block: u64) {
    let n = (data.len() as u64).div_ceil(block);
    for i in 0..n {
        engine.block_cache.insert(object, first + i, slice_block(data, first, first + i, block));
    }
}

fn fill(blocks: &mut [Option<Bytes>], first: u64, start: u64, data: &Bytes, block: u64) {
    let n = (data.len() as u64).div_ceil(block);
    for idx in (start..start + n).filter(|&idx| idx >= first) {
        if let Some(slot @ None) = blocks.get_mut((idx - first) as usize) {
            *slot = Some(slice_block(data, start, idx, block));
        }
    }
}

/// Cuts `[offset, end)` out of consecutive blocks starting at byte `base`.
fn assemble(blocks: &[Option<Bytes>], base: u64, offset: u64, end: u64) -> Bytes {
    let mut pos = base;
    let mut pieces = Vec::with_capacity(blocks.len());
    for b in blocks.iter().flatten() {
        let (b_start, b_end) = (pos, pos + b.len() as u64);
        pos = b_end;
        let (s, e) = (offset.max(b_start), end.min(b_end));
        if s < e {
            pieces.push(b.slice((s - b_start) as usize..(e - b_start) as usize));
        }
    }
    if pieces.len() == 1 {
        return pieces.pop().expect("one piece");
    }
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    for p in pieces {
        out.extend_from_slice(&p);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const SIZE: u64 = 1024 * MIB;

    fn policy() -> ReadAhead {
        ReadAhead::new(ReadAheadConfig { max_window: 16 * MIB, ..ReadAheadConfig::default() })
    }

    #[test]
    fn a_read_split_in_two_does_not_start_a_prefetch() {
        let mut p = policy();
        assert!(p.on_read(5 * MIB + 100, 124 * KIB, SIZE, MIB).prefetch.is_empty());
        let second = p.on_read(5 * MIB + 100 + 124 * KIB, 4 * KIB, SIZE, MIB);
        assert_eq!(second, Plan { access: Access::Sequential, prefetch: vec![] });
        assert_eq!(p.window(), 0);
    }

    #[test]
    fn first_read_prefetches_nothing() {
        let mut p = policy();
        let plan = p.on_read(10 * MIB, 4 * KIB, SIZE, MIB);
        assert_eq!(plan, Plan { access: Access::First, prefetch: vec![] });
        assert_eq!(p.window(), 0);
    }

    #[test]
    fn sequential_reads_double_the_window_up_to_the_cap() {
        let mut p = policy();
        p.on_read(0, 128 * KIB, SIZE, MIB);
        let mut off = 128 * KIB;
        let mut windows = Vec::new();
        let mut fetched_to = 128 * KIB;
        for _ in 0..200 {
            let plan = p.on_read(off, 128 * KIB, SIZE, MIB);
            assert_eq!(plan.access, Access::Sequential);
            for (o, l) in plan.prefetch {
                assert!(o >= fetched_to, "prefetch ranges never overlap");
                assert_eq!(l, MIB);
                fetched_to = o + l;
            }
            windows.push(p.window());
            off += 128 * KIB;
        }
        assert!(windows.windows(2).all(|w| w[1] == w[0] || w[1] == 2 * w[0] || w[1] == 16 * MIB));
        assert_eq!(*windows.last().unwrap(), 16 * MIB, "capped");
        assert!(fetched_to >= off + 8 * MIB, "keeps data ahead of the reader");
    }

    #[test]
    fn a_random_seek_resets_the_window() {
        let mut p = policy();
        for i in 0..20 {
            p.on_read(i * 128 * KIB, 128 * KIB, SIZE, MIB);
        }
        assert!(p.window() > MIB);
        let plan = p.on_read(700 * MIB, 128 * KIB, SIZE, MIB);
        assert_eq!(plan, Plan { access: Access::Random, prefetch: vec![] });
        assert_eq!(p.window(), 0);
        // The next read after the seek continues from there.
        let plan = p.on_read(700 * MIB + 128 * KIB, 128 * KIB, SIZE, MIB);
        assert_eq!(plan.access, Access::Sequential);
        assert_eq!(plan.prefetch.first().map(|r| r.0), Some(700 * MIB + 256 * KIB));
    }

    #[test]
    fn small_jumps_backward_and_forward_stay_sequential() {
        let mut p = policy();
        p.on_read(0, 128 * KIB, SIZE, MIB);
        p.on_read(128 * KIB, 128 * KIB, SIZE, MIB);
        let w = p.window();
        // Reordered read, a bit behind.
        assert_eq!(p.on_read(64 * KIB, 64 * KIB, SIZE, MIB).access, Access::Sequential);
        // Skips 512 KiB ahead.
        assert_eq!(p.on_read(768 * KIB, 128 * KIB, SIZE, MIB).access, Access::Sequential);
        assert!(p.window() >= w);
        // A jump far past the window is random.
        assert_eq!(p.on_read(900 * MIB, 4 * KIB, SIZE, MIB).access, Access::Random);
    }

    #[test]
    fn prefetch_stops_at_the_end_of_the_object() {
        let mut p = policy();
        let size = 3 * MIB + 100;
        p.on_read(0, 128 * KIB, size, MIB);
        let mut all = Vec::new();
        let mut off = 128 * KIB;
        while off < size {
            all.extend(p.on_read(off, 128 * KIB, size, MIB).prefetch);
            off += 128 * KIB;
        }
        let end = all.last().map(|(o, l)| o + l).unwrap();
        assert_eq!(end, size);
        assert!(all.iter().all(|(o, l)| o + l <= size && *l > 0));
    }

    #[test]
    fn a_deferred_prefetch_is_planned_again() {
        let mut p = policy();
        p.on_read(0, 128 * KIB, SIZE, MIB);
        let plan = p.on_read(128 * KIB, 128 * KIB, SIZE, MIB);
        let (first, _) = plan.prefetch[0];
        p.not_issued_from(first);
        // The next read covers [256 KiB, 384 KiB) on demand; the prefetch resumes right
        // after it, not after the range that was never issued.
        assert_eq!(first, 256 * KIB);
        let again = p.on_read(256 * KIB, 128 * KIB, SIZE, MIB);
        assert_eq!(again.prefetch.first().map(|r| r.0), Some(384 * KIB));
    }

    #[test]
    fn assembles_reads_across_blocks() {
        let blocks =
            vec![Some(Bytes::from_static(b"abcd")), Some(Bytes::from_static(b"efgh")), Some(Bytes::from_static(b"ij"))];
        assert_eq!(&assemble(&blocks, 100, 102, 109)[..], b"cdefghi");
        assert_eq!(&assemble(&blocks, 100, 105, 107)[..], b"fg");
    }
}
