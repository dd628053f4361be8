//! Walking a source tree: every directory, regular file and symlink in a stable order
//! (sorted by name), symlinks recorded as links and never followed, and everything else
//! (sockets, devices, unreadable directories, non-UTF-8 names) listed as skipped; entries
//! matching `--exclude` patterns ([`Exclude`]) are left out.

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
    /// Entries left out by the exclude patterns (a directory counts once, with all it holds).
    pub excluded: u64,
}

/// `--exclude` patterns. A pattern without `/` matches an entry's name at any depth
/// (`*.tmp`, `.git`, `__pycache__`); one with a `/` inside or at its start matches the
/// path under the root (`logs/2026-*`, `data/**/*.bak`, `/build` or `./build`). A trailing `/` matches
/// directories only (`cache/`). `*` stays within a name, `**` crosses directories. An
/// excluded directory is left out with everything under it.
#[derive(Debug, Clone, Default)]
pub struct Exclude {
    patterns: Vec<String>,
    /// Patterns on an entry's name.
    names: Globs,
    /// Patterns on an entry's path under the root.
    paths: Globs,
}

/// Compiled globs, and which of them match directories only.
#[derive(Debug, Clone, Default)]
struct Globs {
    set: globset::GlobSet,
    dir_only: Vec<bool>,
}

impl Globs {
    fn hit(&self, text: &str, is_dir: bool) -> bool {
        self.set.is_match(text) && (is_dir || self.set.matches(text).into_iter().any(|i| !self.dir_only[i]))
    }
}

impl Exclude {
    /// Compiles `patterns`; a bad or empty one is a usage error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, ArchiveError> {
        let bad = |p: &str, why: String| ArchiveError::Usage(format!("bad --exclude pattern '{p}': {why}"));
        let (mut names, mut paths) = (globset::GlobSetBuilder::new(), globset::GlobSetBuilder::new());
        let (mut names_dir_only, mut paths_dir_only) = (Vec::new(), Vec::new());
        for p in patterns {
            let dir_only = p.ends_with('/');
            let body = p.trim_end_matches('/');
            // `./build` is written relative to the root, as `/build` is.
            let anchored = body.starts_with('/') || body.starts_with("./");
            let body = body.trim_start_matches("./").trim_start_matches('/');
            if body.is_empty() {
                return Err(bad(p, "it names nothing".into()));
            }
            let glob = globset::GlobBuilder::new(body)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(p, e.kind().to_string()))?;
            if anchored || body.contains('/') {
                paths.add(glob);
                paths_dir_only.push(dir_only);
            } else {
                names.add(glob);
                names_dir_only.push(dir_only);
            }
        }
        let set = |b: globset::GlobSetBuilder| b.build().map_err(|e| bad(&patterns.join(" "), e.to_string()));
        Ok(Self {
            patterns: patterns.to_vec(),
            names: Globs { set: set(names)?, dir_only: names_dir_only },
            paths: Globs { set: set(paths)?, dir_only: paths_dir_only },
        })
    }

    /// Whether the entry at `path` (relative, `/`-separated) is excluded.
    pub fn matches(&self, path: &str, is_dir: bool) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        self.names.hit(name, is_dir) || self.paths.hit(path, is_dir)
    }

    /// Whether `path` or a directory above it is excluded: for paths that do not come from
    /// a walk (which leaves out an excluded directory's contents by not entering it), such
    /// as the keys of a listing.
    pub fn matches_under(&self, path: &str, is_dir: bool) -> bool {
        path.match_indices('/').any(|(i, _)| self.matches(&path[..i], true)) || self.matches(path, is_dir)
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Walks `root` (which must be a directory), leaving out what `exclude` matches.
pub fn walk(root: &Path, exclude: &Exclude) -> Result<Walk, ArchiveError> {
    let meta = std::fs::metadata(root).map_err(|source| ArchiveError::Source { path: root.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(ArchiveError::Source {
            path: root.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut out = Walk::default();
    let excluded = std::cell::Cell::new(0u64);
    let walker = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().min_depth(1);
    let walker = walker.into_iter().filter_entry(|e| {
        let rel = e.path().strip_prefix(root).ok().and_then(Path::to_str);
        let skip = rel.is_some_and(|p| exclude.matches(p, e.file_type().is_dir()));
        excluded.set(excluded.get() + u64::from(skip));
        !skip
    });
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
    out.excluded = excluded.get();
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
        let w = walk(root, &Exclude::default()).unwrap();
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
        assert!(walk(&root.join("a.txt"), &Exclude::default()).is_err(), "a file is not a source directory");
    }

    #[test]
    fn excluded_names_paths_and_directories_are_left_out_with_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["src/.git/objects", "data/cache", "logs", "cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "src/main.rs",
            "src/main.rs.tmp",
            "src/.git/objects/ab",
            "data/cache/x.bin",
            "data/keep.bin",
            "data/old.bak",
            "logs/2026-01.log",
            "logs/2025-12.log",
            "top.bak",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::fs::write(root.join("src/cache"), b"a file named cache").unwrap();
        let patterns: Vec<String> =
            ["*.tmp", ".git", "cache/", "/logs/2026-*", "data/*.bak"].iter().map(|p| p.to_string()).collect();
        let w = walk(root, &Exclude::new(&patterns).unwrap()).unwrap();
        let paths: Vec<_> = w.items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            ["data", "data/keep.bin", "logs", "logs/2025-12.log", "src", "src/cache", "src/main.rs", "top.bak"],
            "a name pattern matches at any depth, a path pattern only there, a trailing / only directories"
        );
        // cache/, data/cache, data/old.bak, logs/2026-01.log, src/.git, src/main.rs.tmp
        assert_eq!(w.excluded, 6);
        let under = Exclude::new(&patterns).unwrap();
        assert!(under.matches_under("src/.git/objects/ab", false), "below an excluded directory");
        assert!(under.matches_under("x/cache/y", false) && !under.matches_under("x/cache", false));
        assert!(!under.matches_under("data/keep.bin", false));
        let relative = Exclude::new(&["./logs".into(), "**/cache".into()]).unwrap();
        assert!(relative.matches("logs", true) && !relative.matches("x/logs", true), "./ anchors at the root");
        assert!(relative.matches("cache", true) && relative.matches("a/b/cache", true), "**/ at any depth");
        for bad in ["/", "a[b"] {
            let err = Exclude::new(&[bad.to_string()]).unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }
}
