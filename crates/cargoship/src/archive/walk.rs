//! Walking a source tree: every directory, regular file and symlink in a stable order
//! (sorted by name), symlinks recorded as links and never followed, and everything else
//! (sockets, devices, unreadable directories, non-UTF-8 names) listed as skipped.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ArchiveError;
use super::inventory::{Kind, Skipped};

/// One entry found by the walk, with the metadata it had then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Relative, `/`-separated path.
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub items: Vec<Item>,
    pub skipped: Vec<Skipped>,
}

/// Walks `root` (which must be a directory).
pub fn walk(root: &Path) -> Result<Walk, ArchiveError> {
    let meta = std::fs::metadata(root).map_err(|source| ArchiveError::Source { path: root.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(ArchiveError::Source {
            path: root.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut out = Walk::default();
    let walker = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().min_depth(1);
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = err.path().and_then(|p| p.strip_prefix(root).ok()).map(|p| p.display().to_string());
                let reason = err.io_error().map(|e| e.to_string()).unwrap_or_else(|| err.to_string());
                out.skipped.push(Skipped { path: path.unwrap_or_default(), reason });
                continue;
            }
        };
        let rel = entry.path().strip_prefix(root).expect("walk stays under root");
        let Some(path) = rel.to_str().map(str::to_owned) else {
            out.skipped.push(Skipped { path: rel.to_string_lossy().into_owned(), reason: "name is not UTF-8".into() });
            continue;
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(err) => {
                out.skipped.push(Skipped { path, reason: err.to_string() });
                continue;
            }
        };
        let ft = meta.file_type();
        let (kind, size, target) = if ft.is_dir() {
            (Kind::Dir, 0, None)
        } else if ft.is_file() {
            (Kind::File, meta.len(), None)
        } else if ft.is_symlink() {
            match std::fs::read_link(entry.path()).map(|t| t.to_str().map(str::to_owned)) {
                Ok(Some(t)) => (Kind::Symlink, 0, Some(t)),
                Ok(None) => {
                    out.skipped.push(Skipped { path, reason: "symlink target is not UTF-8".into() });
                    continue;
                }
                Err(err) => {
                    out.skipped.push(Skipped { path, reason: err.to_string() });
                    continue;
                }
            }
        } else {
            out.skipped.push(Skipped { path, reason: "special file (device, socket or fifo)".into() });
            continue;
        };
        out.items.push(Item {
            path,
            kind,
            size,
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
            mode: meta.permissions().mode() & 0o7777,
            target,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_lists_dirs_files_and_links_in_name_order_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/inner")).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("b/inner/c.bin"), vec![7u8; 10]).unwrap();
        std::os::unix::fs::symlink("..", root.join("b/loop")).unwrap();
        let w = walk(root).unwrap();
        let paths: Vec<_> = w.items.iter().map(|i| (i.path.as_str(), i.kind)).collect();
        assert_eq!(
            paths,
            [
                ("a.txt", Kind::File),
                ("b", Kind::Dir),
                ("b/inner", Kind::Dir),
                ("b/inner/c.bin", Kind::File),
                ("b/loop", Kind::Symlink)
            ]
        );
        assert_eq!(w.items[0].size, 5);
        assert_eq!(w.items[4].target.as_deref(), Some(".."));
        assert!(w.skipped.is_empty());
        assert!(walk(&root.join("a.txt")).is_err(), "a file is not a source directory");
    }
}
