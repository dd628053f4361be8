//! Packing a suitcase: the planned entries become a tar stream cut into frames (a new
//! frame starts before a file that would not fit in the current one, and every
//! `frame_size` bytes inside large files), each file hashed (BLAKE3) as it is read. Runs on
//! a blocking thread and hands frames to the compressor through a bounded channel.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::mpsc::Sender;

use super::ArchiveError;
use super::inventory::{Entry, Kind, Skipped};
use super::walk::Item;

/// An uncompressed frame: its place in the tar stream and its bytes.
pub struct RawFrame {
    pub tar_offset: u64,
    pub data: Vec<u8>,
}

/// Counters the progress display reads while packing runs.
#[derive(Debug, Default)]
pub struct PackProgress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

/// What packing one suitcase produced.
#[derive(Debug, Default)]
pub struct Packed {
    /// Entries in tar order; files carry `offset` and `hash` (suitcase/frame are set later).
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
    pub tar_size: u64,
}

/// A `Write` that cuts the stream into frames and sends each one on.
struct FrameWriter {
    cur: Vec<u8>,
    cur_start: u64,
    pos: u64,
    frame_size: usize,
    tx: Sender<RawFrame>,
}

impl FrameWriter {
    fn cut(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.cur, Vec::with_capacity(self.frame_size));
        self.tx
            .blocking_send(RawFrame { tar_offset: self.cur_start, data })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload of this suitcase stopped"))?;
        self.cur_start = self.pos;
        Ok(())
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(self.frame_size - self.cur.len());
        self.cur.extend_from_slice(&buf[..take]);
        self.pos += take as u64;
        if self.cur.len() >= self.frame_size {
            self.cut()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `remaining` bytes of a file, hashing them; pads with zeros if the file
/// got shorter (and says so), so the tar header's size stays true.
struct HashingReader<'a> {
    file: &'a mut File,
    remaining: u64,
    hasher: blake3::Hasher,
    short: bool,
    progress: &'a PackProgress,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let mut n = if self.short { 0 } else { self.file.read(&mut buf[..want])? };
        if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            n = want;
        } else {
            self.hasher.update(&buf[..n]);
        }
        self.remaining -= n as u64;
        self.progress.bytes.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime.max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn io_err(path: &str, source: io::Error) -> ArchiveError {
    ArchiveError::Source { path: path.into(), source }
}

/// Packs `items` (relative to `root`) into one tar stream, sending frames to `tx`.
/// Files that vanish, cannot be read or change while being read are skipped (listed in
/// [`Packed::skipped`]), or fail the suitcase when `strict`.
pub fn pack(
    root: &Path,
    items: &[Item],
    frame_size: usize,
    strict: bool,
    progress: &PackProgress,
    tx: Sender<RawFrame>,
) -> Result<Packed, ArchiveError> {
    let writer = FrameWriter { cur: Vec::with_capacity(frame_size), cur_start: 0, pos: 0, frame_size, tx };
    let mut tar = tar::Builder::new(writer);
    let mut out = Packed::default();
    let write_err = |e: io::Error| ArchiveError::Pack(e.to_string());
    for item in items {
        let entry = Entry {
            path: item.path.clone(),
            kind: item.kind,
            size: 0,
            mtime: item.mtime,
            mtime_nsec: item.mtime_nsec,
            mode: item.mode,
            hash: None,
            suitcase: None,
            offset: None,
            frame: None,
            target: item.target.clone(),
        };
        match item.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, 0, item.mode, item.mtime);
                tar.append_data(&mut h, format!("{}/", item.path), io::empty()).map_err(write_err)?;
                out.entries.push(entry);
            }
            Kind::Symlink => {
                let mut h = header(tar::EntryType::Symlink, 0, item.mode, item.mtime);
                let target = item.target.as_deref().unwrap_or_default();
                tar.append_link(&mut h, &item.path, target).map_err(write_err)?;
                out.entries.push(entry);
            }
            Kind::File => match pack_file(root, item, entry, &mut tar, frame_size, progress)? {
                Ok(entry) => out.entries.push(entry),
                Err(reason) if strict => {
                    return Err(ArchiveError::Changed { path: root.join(&item.path), reason });
                }
                Err(reason) => {
                    tracing::warn!(path = item.path, reason, "skipped");
                    out.skipped.push(Skipped { path: item.path.clone(), reason });
                }
            },
        }
    }
    let mut writer = tar.into_inner().map_err(write_err)?;
    writer.cut().map_err(write_err)?;
    out.tar_size = writer.pos;
    Ok(out)
}

/// Packs one file. The outer error stops the suitcase; the inner one skips the file.
fn pack_file(
    root: &Path,
    item: &Item,
    mut entry: Entry,
    tar: &mut tar::Builder<FrameWriter>,
    frame_size: usize,
    progress: &PackProgress,
) -> Result<Result<Entry, String>, ArchiveError> {
    let full = root.join(&item.path);
    let mut file = match File::open(&full) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err("vanished before it was read".into())),
        Err(e) => return Ok(Err(format!("cannot be read: {e}"))),
    };
    let before = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(Err("is no longer a regular file".into())),
        Err(e) => return Ok(Err(format!("cannot be read: {e}"))),
    };
    let size = before.len();
    let w = tar.get_mut();
    // Small files share frames; a file that would overflow the current frame starts a new one.
    if !w.cur.is_empty() && w.cur.len() as u64 + size + 1024 > frame_size as u64 {
        w.cut().map_err(|e| ArchiveError::Pack(e.to_string()))?;
    }
    let mode = before.permissions().mode() & 0o7777;
    let mut h = header(tar::EntryType::Regular, size, mode, before.mtime());
    let mut reader =
        HashingReader { file: &mut file, remaining: size, hasher: blake3::Hasher::new(), short: false, progress };
    if let Err(e) = tar.append_data(&mut h, &item.path, &mut reader) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Err(ArchiveError::Pack(e.to_string()));
        }
        // A read error inside the file: the tar stream is now broken, so this suitcase fails.
        return Err(io_err(&full.display().to_string(), e));
    }
    let (short, hash) = (reader.short, reader.hasher.finalize());
    progress.files.fetch_add(1, Relaxed);
    let data_start = tar.get_ref().pos - size.div_ceil(512) * 512;
    let grew = file.read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(false);
    let after = file.metadata().ok();
    let changed = short
        || grew
        || after
            .is_none_or(|a| a.len() != size || a.mtime() != before.mtime() || a.mtime_nsec() != before.mtime_nsec());
    if changed {
        return Ok(Err("changed while being read".into()));
    }
    entry.size = size;
    entry.mode = mode;
    entry.mtime = before.mtime();
    entry.mtime_nsec = before.mtime_nsec() as u32;
    entry.offset = Some(data_start);
    entry.hash = Some(hash.to_hex().to_string());
    Ok(Ok(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::walk::walk;

    #[test]
    fn a_packed_suitcase_is_a_tar_whose_index_points_at_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/small.txt"), b"tiny").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("d/big.bin"), &big).unwrap();
        std::os::unix::fs::symlink("small.txt", root.join("d/link")).unwrap();
        let long = format!("d/{}", "n".repeat(150));
        std::fs::write(root.join(&long), b"a name longer than tar's 100 bytes").unwrap();
        let items = walk(root, &Default::default()).unwrap().items;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1000);
        let progress = PackProgress::default();
        let packed = pack(root, &items, 64 * 1024, false, &progress, tx).unwrap();
        let mut frames = Vec::new();
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
        assert_eq!(stream.len() as u64, packed.tar_size);
        assert!(frames.iter().all(|f| f.data.len() <= 64 * 1024));
        assert!(frames.len() >= 5, "a 300 kB file spans several 64 KiB frames");
        // Every file's recorded offset and hash match the bytes in the stream.
        for e in packed.entries.iter().filter(|e| e.kind == Kind::File) {
            let off = e.offset.unwrap() as usize;
            let data = &stream[off..off + e.size as usize];
            assert_eq!(data, std::fs::read(root.join(&e.path)).unwrap());
            assert_eq!(blake3::hash(data).to_hex().as_str(), e.hash.as_deref().unwrap());
        }
        // And the stream is an ordinary tar.
        let mut names = Vec::new();
        for entry in tar::Archive::new(&stream[..]).entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["d/", "d/big.bin", "d/link", long.as_str(), "d/small.txt"]);
        assert_eq!(progress.files.load(Relaxed), 3);
    }

    #[test]
    fn a_file_that_vanishes_is_skipped_or_fails_when_strict() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gone"), b"x").unwrap();
        let items = walk(dir.path(), &Default::default()).unwrap().items;
        std::fs::remove_file(dir.path().join("gone")).unwrap();
        let progress = PackProgress::default();
        let (tx, _rx) = tokio::sync::mpsc::channel(10);
        let packed = pack(dir.path(), &items, 4096, false, &progress, tx).unwrap();
        assert_eq!(packed.skipped[0].reason, "vanished before it was read");
        assert!(packed.entries.is_empty());
        let (tx, _rx) = tokio::sync::mpsc::channel(10);
        assert!(matches!(pack(dir.path(), &items, 4096, true, &progress, tx), Err(ArchiveError::Changed { .. })));
    }
}
