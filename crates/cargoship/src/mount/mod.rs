//! `cargoship mount` and `cargoship unmount`: a read-only FUSE view of `s3://bucket/prefix`
//! (objects as files, `/` in keys as directories), read through s3opt's prefetching reader;
//! with `--archive`, the tree of a shipped archive's inventory, read frame by frame.
//!
//! [`tree`] is the namespace (listings cached with a TTL), [`fs`] the FUSE callbacks. The
//! mount runs in the foreground until Ctrl-C, SIGTERM or `cargoship unmount MOUNTPOINT`.

mod fs;
pub mod tree;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use cargoship::archive::ArchiveReader;
use cargoship::archive::inventory::{Inventory, Kind};
use fuser::MountOption;

use crate::cli::GlobalOpts;
use crate::s3url::S3Url;
use crate::setup;

/// Arguments of `cargoship mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// What to mount: s3://bucket or s3://bucket/prefix.
    pub source: String,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
    /// Mount a shipped archive (its inventory becomes the tree) instead of plain objects.
    #[arg(long)]
    pub archive: bool,
    /// Seconds a directory listing is reused before S3 is listed again.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub list_ttl: f64,
    /// Let the kernel's page cache and readahead serve reads. By default reads bypass it
    /// (FOPEN_DIRECT_IO) and reach cargoship's reader exactly as the application made them:
    /// a random 128 KiB read is then one ranged GET instead of two serial ones plus a kernel
    /// readahead, and the reader's own block cache serves re-reads. The page cache keeps
    /// data across opens in kernel memory, outside cargoship's memory budget.
    #[arg(long)]
    pub page_cache: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

/// Arguments of `cargoship unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// Where a cargoship mount is mounted.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (the mount goes once they are closed).
    #[arg(long)]
    pub lazy: bool,
}

/// Why a mount or unmount cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("FUSE is not available: {0}")]
    Unavailable(String),
    #[error("mountpoint {0} does not exist (create the directory first)")]
    Missing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mountpoint {0} is busy: something is already mounted there (cargoship unmount {0})")]
    Busy(PathBuf),
    #[error("{0} is not mounted")]
    NotMounted(PathBuf),
    #[error("cannot unmount {path}: {detail}")]
    Unmount { path: PathBuf, detail: String },
}

/// `cargoship mount`.
pub async fn run(g: &GlobalOpts, args: &MountArgs) -> anyhow::Result<()> {
    let src = S3Url::parse(&args.source)?;
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    check_fuse()?;
    let session = setup::connect(g).await?;
    let client = session.client.clone();
    let prefix = if src.key.is_empty() || src.key.ends_with('/') { src.key.clone() } else { format!("{}/", src.key) };
    let (uid, gid) = owner();
    let rt = tokio::runtime::Handle::current();
    let fs = if args.archive {
        // Fetching the inventory checks the bucket, the credentials and the archive.
        let archive = ArchiveReader::open(client.clone(), &src.bucket, &prefix).await?;
        let tree = tree::Tree::from_archive(archive_entries(archive.inventory()), SystemTime::now());
        fs::ObjectFs::new(client, src.bucket.clone(), tree, rt, uid, gid).with_archive(archive)
    } else {
        // The first listing checks the bucket and the credentials before anything is mounted.
        let listing = client.list(&src.bucket, &prefix, Some("/")).await?;
        let ttl = Duration::try_from_secs_f64(args.list_ttl.max(0.0)).context("--list-ttl is not a duration")?;
        let mut tree = tree::Tree::new(&prefix, ttl, SystemTime::now());
        tree.apply_listing(tree::ROOT, &listing, Instant::now());
        fs::ObjectFs::new(client, src.bucket.clone(), tree, rt, uid, gid)
    };
    let fs = fs.with_direct_io(!args.page_cache);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::FSName(format!("s3://{}/{}", src.bucket, prefix)),
        MountOption::Subtype("cargoship".into()),
    ];
    config.n_threads = Some(usize::from(args.threads));
    let mp = mountpoint.clone();
    let mut fuse = tokio::task::spawn_blocking(move || fuser::Session::new(fs, &mp, &config))
        .await?
        .map_err(|e| MountError::Unavailable(format!("cannot mount on {}: {e}", mountpoint.display())))?;
    let mut unmounter = fuse.unmount_callable();
    let mut running = tokio::task::spawn_blocking(move || fuse.run());
    if !g.quiet {
        eprintln!(
            "mounted {}s3://{}/{prefix} at {} (read-only); Ctrl-C, SIGTERM or `cargoship unmount {}` to unmount",
            if args.archive { "the archive at " } else { "" },
            src.bucket,
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let ended = tokio::select! {
        r = &mut running => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            unmounter.unmount().with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
            running.await
        }
    };
    result?.with_context(|| format!("the FUSE session on {} failed", mountpoint.display()))?;
    if !g.quiet {
        eprintln!("unmounted {}", mountpoint.display());
    }
    drop(session);
    Ok(())
}

/// An inventory's entries as the tree takes them.
fn archive_entries(inv: &Inventory) -> impl Iterator<Item = tree::ArchiveEntry> + '_ {
    inv.entries.iter().enumerate().map(|(index, e)| {
        let since_epoch = Duration::new(e.mtime.unsigned_abs(), e.mtime_nsec.min(999_999_999));
        let mtime = if e.mtime >= 0 {
            SystemTime::UNIX_EPOCH + since_epoch
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(since_epoch).unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let kind = match e.kind {
            Kind::Dir => tree::ArchiveKind::Dir,
            Kind::File => tree::ArchiveKind::File { index, size: e.size },
            Kind::Symlink => tree::ArchiveKind::Symlink { target: e.target.clone().unwrap_or_default() },
        };
        tree::ArchiveEntry { path: e.path.clone(), kind, mtime, mode: e.mode }
    })
}

/// `cargoship unmount`.
pub async fn unmount(args: &UnmountArgs) -> anyhow::Result<()> {
    let path = &args.mountpoint;
    if !is_mountpoint(path) {
        return Err(MountError::NotMounted(path.clone()).into());
    }
    let lazy = if args.lazy { "z" } else { "" };
    let out =
        match std::process::Command::new("fusermount3").arg(format!("-u{lazy}")).arg(path).output() {
            Ok(out) => out,
            // Without fusermount3 (root only): umount(8).
            Err(_) => std::process::Command::new("umount").args(args.lazy.then_some("-l")).arg(path).output().map_err(
                |e| MountError::Unmount { path: path.clone(), detail: format!("no fusermount3 or umount: {e}") },
            )?,
        };
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ");
        let detail = if detail.contains("busy") { format!("{detail} (files are open; use --lazy)") } else { detail };
        return Err(MountError::Unmount { path: path.clone(), detail }.into());
    }
    Ok(())
}

/// The mountpoint, made absolute, if it is an existing directory with nothing mounted on it.
fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    if is_mountpoint(path) {
        return Err(MountError::Busy(path.to_owned()));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::NotADirectory(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MountError::Missing(path.to_owned())),
        // A dead FUSE mount answers ENOTCONN.
        Err(_) => return Err(MountError::Busy(path.to_owned())),
    }
    path.canonicalize().map_err(|_| MountError::Missing(path.to_owned()))
}

/// Whether FUSE can be used: the device is there and can be opened, and without root the
/// fusermount3 helper is installed.
fn check_fuse() -> Result<(), MountError> {
    let dev = Path::new("/dev/fuse");
    if !dev.exists() {
        return Err(MountError::Unavailable(
            "/dev/fuse does not exist (load the fuse kernel module, or give the container --device /dev/fuse)".into(),
        ));
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Err(MountError::Unavailable(format!("cannot open /dev/fuse: {e}")));
    }
    let root = owner().0 == 0;
    if !root && std::process::Command::new("fusermount3").arg("-V").output().is_err() {
        return Err(MountError::Unavailable(
            "fusermount3 is not installed (apt-get install fuse3), and mounting without it needs root".into(),
        ));
    }
    Ok(())
}

/// User and group of this process (owner of the mounted files).
fn owner() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| (m.uid(), m.gid())).unwrap_or((0, 0))
}

/// Whether something is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_owned())
    };
    // Canonicalize the parent only: the mountpoint itself may be a dead mount.
    let abs = match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().map(|p| p.join(name)).unwrap_or(abs.clone()),
        _ => abs,
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| Path::new(&unescape(mp)) == abs)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn the_root_is_a_mountpoint_and_a_fresh_directory_is_not() {
        assert!(is_mountpoint(Path::new("/")) || !Path::new("/proc/self/mountinfo").exists());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(dir.path()));
        assert!(matches!(check_mountpoint(&dir.path().join("nope")), Err(MountError::Missing(_))));
    }
}
