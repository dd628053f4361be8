//! `restore`: all of an archive, or only the paths/globs asked for, fetched by ranged
//! GETs of just the frames that hold them, hashes verified, mode and mtime restored.
//! Never writes outside the destination and never overwrites without `--overwrite`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::extract::{ExtractProgress, Target, extract_suitcase, set_meta};
use super::inventory::{Entry, Inventory, Kind};
use super::reader::ArchiveReader;
use super::{ArchiveError, Result};

/// What to restore, where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dest: PathBuf,
    /// Paths (a directory selects what is under it) or globs (`*` stays within a
    /// directory, `**` crosses them); empty = everything.
    pub patterns: Vec<String>,
    pub overwrite: bool,
    /// Suitcases extracted at once (at least; more when they are small, see
    /// [`suitcases_at_once`]).
    pub parallel: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Bytes of the archive's suitcases (what a full download would fetch).
    pub archive_stored_bytes: u64,
}

/// Entries matching the patterns (all when there are none), by index.
pub fn select(entries: &[Entry], patterns: &[String]) -> Result<Vec<usize>> {
    if patterns.is_empty() {
        return Ok((0..entries.len()).collect());
    }
    let mut chosen = vec![false; entries.len()];
    for p in patterns {
        let p = p.trim_matches('/');
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| ArchiveError::Usage(format!("bad pattern '{p}': {e}")))?
            .compile_matcher();
        let mut hit = false;
        for (i, e) in entries.iter().enumerate() {
            let under = e.path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if under || glob.is_match(&e.path) {
                chosen[i] = true;
                hit = true;
            }
        }
        if !hit {
            return Err(ArchiveError::Usage(format!("'{p}' matches nothing in the archive")));
        }
    }
    Ok((0..entries.len()).filter(|i| chosen[*i]).collect())
}

/// Creates `dir` (and parents) under `root` and checks it is really inside `root` (an
/// existing symlink on the way could point elsewhere).
fn ensure_dir_inside(root: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Write { path: dir.to_owned(), source })?;
    let real = std::fs::canonicalize(dir).map_err(|source| ArchiveError::Write { path: dir.to_owned(), source })?;
    if !real.starts_with(root) {
        return Err(ArchiveError::Inventory(format!("{} leads outside {}", dir.display(), root.display())));
    }
    Ok(())
}

/// Restores from an opened archive.
pub async fn restore(
    reader: &ArchiveReader,
    o: &RestoreOptions,
    progress: Arc<ExtractProgress>,
) -> Result<RestoreReport> {
    let inv = reader.inventory();
    let selected = select(&inv.entries, &o.patterns)?;
    std::fs::create_dir_all(&o.dest).map_err(|source| ArchiveError::Write { path: o.dest.clone(), source })?;
    let root = std::fs::canonicalize(&o.dest).map_err(|source| ArchiveError::Write { path: o.dest.clone(), source })?;

    // Refuse before writing anything.
    if !o.overwrite {
        for &i in &selected {
            let e = &inv.entries[i];
            let path = root.join(&e.path);
            if e.kind != Kind::Dir && std::fs::symlink_metadata(&path).is_ok() {
                return Err(ArchiveError::WouldOverwrite(path));
            }
        }
    }
    let mut report =
        RestoreReport { files: 0, dirs: 0, symlinks: 0, bytes: 0, archive_stored_bytes: inv.totals.stored_bytes };
    let mut by_suitcase: BTreeMap<usize, Vec<(usize, Entry)>> = BTreeMap::new();
    for &i in &selected {
        let e = &inv.entries[i];
        let path = root.join(&e.path);
        match e.kind {
            Kind::Dir => ensure_dir_inside(&root, &path)?,
            Kind::File => {
                ensure_dir_inside(&root, path.parent().expect("entry paths have a parent"))?;
                by_suitcase.entry(e.suitcase.expect("validated") as usize).or_default().push((i, e.clone()));
                report.files += 1;
                report.bytes += e.size;
            }
            Kind::Symlink => ensure_dir_inside(&root, path.parent().expect("entry paths have a parent"))?,
        }
    }
    let target = Target::Write(root.clone());
    let jobs =
        by_suitcase.into_iter().map(|(s, files)| extract_suitcase(reader, s, files, target.clone(), progress.clone()));
    let mut running = futures::stream::iter(jobs).buffer_unordered(suitcases_at_once(inv, o.parallel));
    while let Some(r) = running.next().await {
        r?;
    }
    drop(running);
    // Symlinks last, so no file is ever written through one; then directory times,
    // deepest first (writing into a directory changes its mtime).
    for &i in &selected {
        let e = &inv.entries[i];
        if e.kind == Kind::Symlink {
            let path = root.join(&e.path);
            if o.overwrite {
                let _ = std::fs::remove_file(&path);
            }
            let target = e.target.as_deref().unwrap_or_default();
            std::os::unix::fs::symlink(target, &path)
                .map_err(|source| ArchiveError::Write { path: path.clone(), source })?;
            set_meta(&path, e)?;
            report.symlinks += 1;
        }
    }
    let mut dirs: Vec<&Entry> = selected.iter().map(|&i| &inv.entries[i]).filter(|e| e.kind == Kind::Dir).collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for e in dirs {
        set_meta(&root.join(&e.path), e)?;
        report.dirs += 1;
    }
    Ok(report)
}

/// Suitcases fetched side by side: `parallel`, or as many as make about 64 MiB in flight
/// when they are small (a small tree's pieces, see `plan::effective_cap`), up to 64
/// unless `parallel` asks for more.
fn suitcases_at_once(inv: &Inventory, parallel: usize) -> usize {
    at_once(inv.suitcases.len(), inv.totals.stored_bytes, parallel)
}

fn at_once(suitcases: usize, stored_bytes: u64, parallel: usize) -> usize {
    let average = (stored_bytes / suitcases.max(1) as u64).max(1);
    ((64u64 << 20) / average).min(64).max(parallel.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_suitcases_are_fetched_side_by_side_large_ones_parallel_at_a_time() {
        const MIB: u64 = 1 << 20;
        assert_eq!(at_once(4, 4 << 30, 2), 2, "1 GiB suitcases: --parallel");
        assert_eq!(at_once(67, 67 * MIB, 2), 64, "1 MiB pieces: 64 MiB in flight");
        assert_eq!(at_once(20, 80 * MIB, 2), 16);
        assert_eq!(at_once(67, 67 * MIB, 100), 100, "a larger parallel wins");
        assert_eq!(at_once(0, 0, 0), 64, "an empty archive does not divide by zero");
    }

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            hash: None,
            suitcase: None,
            offset: None,
            frame: None,
            target: None,
        }
    }

    #[test]
    fn patterns_select_paths_directories_and_globs() {
        let entries = vec![
            entry("data", Kind::Dir),
            entry("data/a.csv", Kind::File),
            entry("data/sub/b.csv", Kind::File),
            entry("database.txt", Kind::File),
            entry("notes.md", Kind::File),
        ];
        let pick = |p: &[&str]| select(&entries, &p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        assert_eq!(pick(&["data"]), [0, 1, 2], "a directory selects what is under it, not 'database.txt'");
        assert_eq!(pick(&["data/*.csv"]), [1], "* stays within a directory");
        assert_eq!(pick(&["**/*.csv"]), [1, 2]);
        assert_eq!(pick(&["notes.md", "data/a.csv"]), [1, 4]);
        assert_eq!(pick(&[]), [0, 1, 2, 3, 4]);
        assert!(select(&entries, &["nope".into()]).is_err());
    }
}
