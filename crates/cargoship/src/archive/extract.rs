//! Streaming the selected files of one suitcase out of its frames: frames arrive in tar
//! order, each file's bytes are hashed (BLAKE3) and, when restoring, written to a
//! temporary file that is renamed into place only after its hash matched. Used by
//! `restore` (writing) and `verify --deep` (hashing only).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::StreamExt;

use super::inventory::{Entry, Kind};
use super::reader::ArchiveReader;
use super::{ArchiveError, Result};

/// Stored bytes fetched per ranged GET when extracting.
const CHUNK_STORED_BYTES: u64 = 16 << 20;
/// Chunks fetched ahead.
const CHUNKS_AHEAD: usize = 4;

/// Counters for a progress display.
#[derive(Debug, Default)]
pub struct ExtractProgress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

/// Where extracted bytes go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Write files under this (canonical) directory.
    Write(PathBuf),
    /// Only hash them.
    HashOnly,
}

struct Open {
    entry: usize,
    hasher: blake3::Hasher,
    written: u64,
    file: Option<(File, PathBuf)>,
}

/// Consumes frames in order and completes files as their last byte arrives.
struct Sink {
    files: Vec<(usize, Entry)>,
    next: usize,
    open: Vec<Open>,
    target: Target,
    mismatches: Vec<String>,
    progress: Arc<ExtractProgress>,
}

/// Temporary name of a file being restored.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.cargoship-partial"))
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Write { path: path.to_owned(), source }
}

/// Sets a restored entry's mode and mtime.
pub fn set_meta(path: &Path, e: &Entry) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let t = filetime::FileTime::from_unix_time(e.mtime, e.mtime_nsec);
    if e.kind == Kind::Symlink {
        return filetime::set_symlink_file_times(path, t, t).map_err(write_err(path));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode)).map_err(write_err(path))?;
    filetime::set_file_times(path, t, t).map_err(write_err(path))
}

impl Sink {
    fn feed(&mut self, tar_offset: u64, data: &[u8]) -> Result<()> {
        let end = tar_offset + data.len() as u64;
        // Open files whose data starts in this frame.
        while let Some((_, e)) = self.files.get(self.next) {
            if e.offset.expect("validated") >= end {
                break;
            }
            self.start(self.next)?;
            self.next += 1;
        }
        let mut i = 0;
        while i < self.open.len() {
            let entry = &self.files[self.open[i].entry].1;
            let start = entry.offset.expect("validated") + self.open[i].written;
            let stop = entry.offset.expect("validated") + entry.size;
            let lo = start.max(tar_offset);
            let hi = stop.min(end);
            if lo < hi {
                let slice = &data[(lo - tar_offset) as usize..(hi - tar_offset) as usize];
                let o = &mut self.open[i];
                o.hasher.update(slice);
                if let Some((f, p)) = &mut o.file {
                    f.write_all(slice).map_err(write_err(p))?;
                }
                o.written += slice.len() as u64;
                self.progress.bytes.fetch_add(slice.len() as u64, Relaxed);
            }
            if self.open[i].written == entry.size {
                let o = self.open.swap_remove(i);
                self.finish(o)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn start(&mut self, idx: usize) -> Result<()> {
        let file = match &self.target {
            Target::HashOnly => None,
            Target::Write(root) => {
                let path = root.join(&self.files[idx].1.path);
                let tmp = partial_path(&path);
                let f = File::create(&tmp).map_err(write_err(&tmp))?;
                Some((f, tmp))
            }
        };
        self.open.push(Open { entry: idx, hasher: blake3::Hasher::new(), written: 0, file });
        if self.files[idx].1.size == 0 {
            let o = self.open.pop().expect("just pushed");
            self.finish(o)?;
        }
        Ok(())
    }

    fn finish(&mut self, o: Open) -> Result<()> {
        let e = &self.files[o.entry].1;
        let ok = Some(o.hasher.finalize().to_hex().as_str()) == e.hash.as_deref();
        self.progress.files.fetch_add(1, Relaxed);
        let Some((f, tmp)) = o.file else {
            if !ok {
                self.mismatches.push(e.path.clone());
            }
            return Ok(());
        };
        let Target::Write(root) = &self.target else { unreachable!("files are only opened when writing") };
        let path = root.join(&e.path);
        let done = (|| {
            f.sync_all().map_err(write_err(&tmp))?;
            drop(f);
            if !ok {
                return Err(ArchiveError::HashMismatch { path: e.path.clone() });
            }
            set_meta(&tmp, e)?;
            std::fs::rename(&tmp, &path).map_err(write_err(&path))
        })();
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }

    /// Removes temporary files of files not finished (after an error).
    fn cleanup(&mut self) {
        for o in self.open.drain(..) {
            if let Some((f, tmp)) = o.file {
                drop(f);
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// Extracts `files` (entry index, entry; all in suitcase `s`) to `target`. Returns the
/// paths whose content did not match their hash (only with `Target::HashOnly`; when
/// writing, a mismatch is an error).
pub async fn extract_suitcase(
    reader: &ArchiveReader,
    s: usize,
    mut files: Vec<(usize, Entry)>,
    target: Target,
    progress: Arc<ExtractProgress>,
) -> Result<Vec<String>> {
    files.sort_by_key(|(_, e)| e.offset);
    let inv = reader.inventory();
    let frames = &inv.suitcases[s].frames;
    let mut needed = vec![false; frames.len()];
    for (_, e) in &files {
        for f in inv.frames_for(s, e.offset.expect("validated"), e.size) {
            needed[f] = true;
        }
    }
    // Runs of adjacent needed frames, each at most CHUNK_STORED_BYTES (or one frame).
    let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
    for (f, _) in needed.iter().enumerate().filter(|(_, n)| **n) {
        match chunks.last_mut() {
            Some(c)
                if c.end == f
                    && frames[f].stored_offset() + frames[f].stored_len() - frames[c.start].stored_offset()
                        <= CHUNK_STORED_BYTES =>
            {
                c.end = f + 1
            }
            _ => chunks.push(f..f + 1),
        }
    }
    let mut sink = Some(Sink { files, next: 0, open: Vec::new(), target, mismatches: Vec::new(), progress });
    // Each chunk's stored and decoded bytes count against the client's memory budget until
    // written (restore's own buffers would otherwise come on top of it). The shares are
    // taken in chunk order (`then` runs one at a time), so a chunk never waits on budget
    // held by later chunks that can only be written after it.
    let client = reader.client();
    let mut fetched = std::pin::pin!(
        futures::stream::iter(chunks.clone())
            .then(|c| async move {
                // Stored twice: the ranges as they arrive and the chunk they are joined into.
                let bytes: u64 = c.clone().map(|f| 2 * frames[f].stored_len() + frames[f].tar_len()).sum();
                (c, client.reserve_memory(bytes).await)
            })
            .map(|(c, held)| async move { reader.frames(s, c).await.map(|d| (d, held)) })
            .buffered(CHUNKS_AHEAD)
    );
    let mut chunk_iter = chunks.into_iter();
    let result: Result<()> = async {
        while let Some(decoded) = fetched.next().await {
            let range = chunk_iter.next().expect("one range per chunk");
            let (decoded, held) = decoded?;
            let offsets: Vec<u64> = range.map(|f| frames[f].tar_offset()).collect();
            let mut s = sink.take().expect("sink is back");
            let (back, res) = tokio::task::spawn_blocking(move || {
                let res = offsets.iter().zip(&decoded).try_for_each(|(off, data)| s.feed(*off, data));
                (s, res)
            })
            .await
            .expect("extract task");
            drop(held);
            sink = Some(back);
            res?;
        }
        let s = sink.as_mut().expect("sink is back");
        // Empty files at the very end of the stream have no frame of their own.
        while s.next < s.files.len() {
            s.start(s.next)?;
            s.next += 1;
        }
        if !s.open.is_empty() {
            return Err(ArchiveError::Inventory("suitcase ended before all files were complete".into()));
        }
        Ok(())
    }
    .await;
    let mut s = sink.expect("sink is back");
    if let Err(e) = result {
        s.cleanup();
        return Err(e);
    }
    Ok(s.mismatches)
}
