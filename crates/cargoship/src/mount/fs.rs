//! The FUSE filesystem: a read-only view of `s3://bucket/prefix` through an
//! [`OptimizedS3Client`]. Metadata comes from delimited listings (cached with a TTL in
//! [`Tree`]) or from an archive's inventory; every open object gets its own prefetching
//! [`ObjectReader`], archive members are read through the [`ArchiveReader`] (only the
//! frames that hold the bytes), and reads are answered from tokio tasks so a slow GET never
//! holds a FUSE worker thread.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cargoship::archive::{ArchiveError, ArchiveReader};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use s3opt::{ObjectReader, OptimizedS3Client};

use super::tree::{Kind, Node, Tree};

/// How long the kernel may keep attributes and names before asking again.
const ATTR_TTL: Duration = Duration::from_secs(1);
const BLKSIZE: u32 = 128 * 1024;

/// An open file.
#[derive(Clone)]
enum Handle {
    Object(Arc<tokio::sync::Mutex<ObjectReader>>),
    /// Entry index in the archive's inventory.
    Member(usize),
}

/// The mounted filesystem.
pub struct ObjectFs {
    client: OptimizedS3Client,
    bucket: String,
    rt: tokio::runtime::Handle,
    tree: std::sync::Mutex<Tree>,
    handles: std::sync::Mutex<HashMap<u64, Handle>>,
    archive: Option<Arc<ArchiveReader>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    direct_io: bool,
}

impl ObjectFs {
    /// A filesystem over `bucket` with `tree` as its namespace; files and directories are
    /// shown as owned by `uid:gid`. GETs run on `rt`.
    pub fn new(
        client: OptimizedS3Client,
        bucket: String,
        tree: Tree,
        rt: tokio::runtime::Handle,
        uid: u32,
        gid: u32,
    ) -> Self {
        Self {
            client,
            bucket,
            rt,
            tree: std::sync::Mutex::new(tree),
            handles: std::sync::Mutex::new(HashMap::new()),
            archive: None,
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            direct_io: true,
        }
    }

    /// Files are opened with FOPEN_DIRECT_IO (the default): reads reach the reader exactly as
    /// the application makes them (no kernel readahead or page cache; the block cache serves
    /// re-reads), and mmap still works where the kernel allows it. Off: the page cache.
    pub fn with_direct_io(mut self, on: bool) -> Self {
        self.direct_io = on;
        self
    }

    fn open_flags(&self) -> FopenFlags {
        if self.direct_io { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::empty() }
    }

    /// Serves files of `archive` (whose inventory the tree was built from).
    pub fn with_archive(mut self, archive: ArchiveReader) -> Self {
        self.archive = Some(Arc::new(archive));
        self
    }

    fn tree(&self) -> std::sync::MutexGuard<'_, Tree> {
        self.tree.lock().expect("tree lock")
    }

    /// Lists `dir` if its listing is missing or stale (blocking this FUSE thread).
    fn ensure_listed(&self, dir: u64) -> Result<(), Errno> {
        let Some(prefix) = self.tree().needs_listing(dir, Instant::now()) else { return Ok(()) };
        let listing = self.rt.block_on(self.client.list(&self.bucket, &prefix, Some("/"))).map_err(|e| {
            tracing::warn!(bucket = %self.bucket, %prefix, error = %e, "listing failed");
            errno(&e)
        })?;
        self.tree().apply_listing(dir, &listing, Instant::now());
        Ok(())
    }

    fn attr(&self, node: &Node, mounted_at: std::time::SystemTime) -> FileAttr {
        let (kind, size, mut mtime, mut perm, nlink) = match &node.kind {
            Kind::Dir { .. } => (FileType::Directory, 0, mounted_at, 0o555, 2),
            Kind::File { size, mtime, .. } => (FileType::RegularFile, *size, *mtime, 0o444, 1),
            Kind::Member { size, .. } => (FileType::RegularFile, *size, mounted_at, 0o444, 1),
            Kind::Symlink { target } => (FileType::Symlink, target.len() as u64, mounted_at, 0o777, 1),
        };
        if let Some((mode, time)) = node.meta {
            perm = (mode & 0o7777) as u16;
            mtime = time;
        }
        FileAttr {
            ino: INodeNo(node.ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: BLKSIZE,
        }
    }

    fn node_attr(&self, ino: u64) -> Option<FileAttr> {
        let tree = self.tree();
        tree.get(ino).map(|n| self.attr(n, tree.mounted_at))
    }
}

/// The errno for a client error.
pub fn errno(e: &s3opt::Error) -> Errno {
    match e {
        s3opt::Error::NoSuchKey { .. } | s3opt::Error::NoSuchBucket { .. } => Errno::ENOENT,
        s3opt::Error::AccessDenied { .. } => Errno::EACCES,
        s3opt::Error::InvalidRange { .. } => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl Filesystem for ObjectFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Nothing is written, but the largest write sets the largest request: 1 MiB reads let
        // an unaligned 128 KiB read arrive as one request instead of two.
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        // Direct I/O files can be mmap'ed only where the kernel allows it (6.6+); elsewhere
        // the page cache is used so that mmap (and so executing files) keeps working.
        if self.direct_io && config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_err() {
            tracing::info!("this kernel cannot mmap direct-I/O files: reads go through the page cache");
            self.direct_io = false;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.ensure_listed(parent.0) {
            return reply.error(e);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        let tree = self.tree();
        match tree.lookup(parent.0, name) {
            Some(node) => reply.entry(&ATTR_TTL, &self.attr(node, tree.mounted_at), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node_attr(ino.0) {
            Some(attr) => reply.attr(&ATTR_TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let (key, size, mtime) = match self.tree().get(ino.0).map(|n| n.kind.clone()) {
            Some(Kind::File { key, size, mtime }) => (key, size, mtime),
            Some(Kind::Member { index, .. }) => {
                let fh = self.next_fh.fetch_add(1, Relaxed);
                self.handles.lock().expect("handles lock").insert(fh, Handle::Member(index));
                return reply.opened(FileHandle(fh), self.open_flags());
            }
            Some(Kind::Dir { .. }) => return reply.error(Errno::EISDIR),
            Some(Kind::Symlink { .. }) => return reply.error(Errno::ELOOP),
            None => return reply.error(Errno::ENOENT),
        };
        // The listing's modification time tells versions of the object apart in the cache.
        let version = format!("{:?}", mtime.duration_since(std::time::UNIX_EPOCH).unwrap_or_default());
        let reader = self.client.reader_with_version(&self.bucket, &key, size, &version);
        let fh = self.next_fh.fetch_add(1, Relaxed);
        self.handles
            .lock()
            .expect("handles lock")
            .insert(fh, Handle::Object(Arc::new(tokio::sync::Mutex::new(reader))));
        reply.opened(FileHandle(fh), self.open_flags());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(handle) = self.handles.lock().expect("handles lock").get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match handle {
            Handle::Object(reader) => {
                tracing::debug!(offset, size, "fuse read");
                self.rt.spawn(async move {
                    // The handle is locked only to start the read; the GETs run unlocked, so
                    // the kernel's concurrent reads of one file overlap.
                    let pending = reader.lock().await.start_read(offset, u64::from(size));
                    match pending.finish().await {
                        Ok(data) => reply.data(&data),
                        Err(e) => {
                            tracing::warn!(offset, size, error = %e, "read failed");
                            reply.error(errno(&e))
                        }
                    }
                });
            }
            Handle::Member(index) => {
                let Some(archive) = self.archive.clone() else { return reply.error(Errno::EIO) };
                self.rt.spawn(async move {
                    match archive.read(index, offset, u64::from(size)).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => {
                            tracing::warn!(index, offset, size, error = %e, "archive read failed");
                            reply.error(match &e {
                                ArchiveError::S3(e) => errno(e),
                                _ => Errno::EIO,
                            })
                        }
                    }
                });
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok(); // nothing is ever written
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().expect("handles lock").remove(&fh.0);
        reply.ok();
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().get(ino.0).map(|n| &n.kind) {
            Some(Kind::Symlink { target }) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().get(ino.0).map(|n| matches!(n.kind, Kind::Dir { .. })) {
            Some(true) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(false) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // List afresh only when a listing starts (offset 0), so one `ls` sees one listing.
        if offset == 0
            && let Err(e) = self.ensure_listed(ino.0)
        {
            return reply.error(e);
        }
        let tree = self.tree();
        let Some(node) = tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let mut entries: Vec<(u64, FileType, String)> =
            vec![(node.ino, FileType::Directory, ".".into()), (node.parent, FileType::Directory, "..".into())];
        for child in tree.children(ino.0) {
            let kind = match child.kind {
                Kind::Dir { .. } => FileType::Directory,
                Kind::File { .. } | Kind::Member { .. } => FileType::RegularFile,
                Kind::Symlink { .. } => FileType::Symlink,
            };
            entries.push((child.ino, kind, child.name.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
