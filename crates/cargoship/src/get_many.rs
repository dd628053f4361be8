//! `cargoship get s3://bucket/prefix/ DIR`: every object under the prefix becomes a file
//! under DIR (its key after the prefix is the relative path), many at once through one
//! client, while the listing goes on. A page of keys that cannot all be paths under DIR
//! stops the run before any of that page is written; each file appears only once complete
//! and verified, so a failed or interrupted run leaves whole files and no partial one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use cargoship::archive::walk::Exclude;
use futures::StreamExt;
use s3opt::ListEntry;

use crate::cli::{GetArgs, GlobalOpts};
use crate::commands::Summary;
use crate::exit::LocalFileError;
use crate::progress::{Direction, Progress};
use crate::s3url::S3Url;
use crate::setup;

/// Objects downloading at once at most: the client's window decides how many requests are
/// in flight, and its memory budget how many bodies are held; this only bounds the queue.
const OBJECTS_AT_ONCE: usize = 512;

/// What stops a prefix download before it starts.
#[derive(Debug, thiserror::Error)]
pub enum GetManyError {
    /// Options that do not apply to a prefix.
    #[error("{0}")]
    Usage(String),
    /// The prefix holds no objects.
    #[error("no objects under {0}")]
    Empty(String),
    /// A key that cannot be a file under the destination.
    #[error("cannot download s3://{bucket}/{key} under the destination: {reason}")]
    BadKey { bucket: String, key: String, reason: &'static str },
}

/// What one page of the listing asks for: objects to files, and the directories (markers,
/// `key/`) to create.
#[derive(Debug, Default)]
struct Plan {
    files: Vec<(ListEntry, PathBuf)>,
    dirs: Vec<PathBuf>,
    /// Keys `--exclude` left out.
    excluded: u64,
}

/// Maps listed keys to paths relative to the destination, page by page, remembering what
/// earlier pages made files and directories.
#[derive(Debug, Default)]
struct Planner {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Keys (after the prefix) left out, before they are checked as paths.
    exclude: Exclude,
}

impl Planner {
    /// The plan for one page of `objects` listed under `prefix` in `bucket`. A key's part
    /// after the prefix must be a relative path of non-empty components other than `.` and
    /// `..`, and no key may be a file where another needs a directory. The whole page is
    /// checked before any of it is fetched (a conflict with an earlier page's file is found
    /// when the later key is listed).
    fn page(&mut self, bucket: &str, prefix: &str, objects: Vec<ListEntry>) -> Result<Plan, GetManyError> {
        let bad = |key: &str, reason| GetManyError::BadKey { bucket: bucket.into(), key: key.into(), reason };
        let mut plan = Plan::default();
        for o in objects {
            let Some(rel) = o.key.strip_prefix(prefix) else { continue };
            let (rel, is_dir) = match rel.strip_suffix('/') {
                Some(dir) => (dir, true),
                None => (rel, false),
            };
            if rel.is_empty() {
                // The prefix's own directory marker.
                continue;
            }
            if self.exclude.matches_under(rel, is_dir) {
                plan.excluded += 1;
                continue;
            }
            let mut path = PathBuf::new();
            for part in rel.split('/') {
                match part {
                    "" => return Err(bad(&o.key, "it has an empty path component ('//')")),
                    "." | ".." => return Err(bad(&o.key, "it has a '.' or '..' path component")),
                    p => path.push(p),
                }
            }
            let needs_dirs: Vec<PathBuf> = path
                .ancestors()
                .skip(usize::from(!is_dir))
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_owned)
                .collect();
            if let Some(file) = needs_dirs.iter().find(|d| self.files.contains(*d)) {
                let key = format!("{prefix}{}", file.to_string_lossy());
                return Err(bad(&key, "another key needs it to be a directory"));
            }
            if !is_dir && self.dirs.contains(&path) {
                return Err(bad(&o.key, "another key needs it to be a directory"));
            }
            self.dirs.extend(needs_dirs);
            if is_dir {
                plan.dirs.push(path);
            } else {
                self.files.insert(path.clone());
                plan.files.push((o, path));
            }
        }
        Ok(plan)
    }
}

/// Pages of the listing read ahead of the downloads at most.
const PAGES_AHEAD: usize = 4;

/// Downloads every object under `src` (a prefix: empty or ending in `/`) into the directory
/// `args.destination`. The listing goes on beside the downloads: each page's objects start
/// as soon as the page is in (a prefix of a million keys is a thousand pages).
pub async fn get_prefix(g: &GlobalOpts, args: &GetArgs, src: S3Url) -> anyhow::Result<()> {
    if args.range.is_some() {
        return Err(GetManyError::Usage(format!("--range applies to one object; {src} is a prefix")).into());
    }
    let planner = Planner { exclude: args.filter.compile()?, ..Planner::default() };
    if args.destination == "-" {
        return Err(GetManyError::Usage(format!(
            "{src} is a prefix: its objects go to a directory, not to standard output"
        ))
        .into());
    }
    let dest = PathBuf::from(&args.destination);
    if dest.exists() && !dest.is_dir() {
        return Err(LocalFileError::write(&dest, std::io::Error::other("it is not a directory")).into());
    }
    let session = setup::connect(g).await?;
    let client = &session.client;
    let started = Instant::now();
    // A prefix is most often many objects: a window's worth of connections is dialled
    // while its first page is listed (on a long path, each GET would otherwise wait for a
    // handshake).
    client.expect_requests(OBJECTS_AT_ONCE);
    let (pages_tx, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let lister = tokio::spawn({
        let (client, bucket, prefix) = (client.clone(), src.bucket.clone(), src.key.clone());
        async move {
            let mut pages = std::pin::pin!(client.list_pages(&bucket, &prefix, None));
            while let Some(page) = pages.next().await {
                if pages_tx.send(page.map(|listing| listing.objects)).await.is_err() {
                    return;
                }
            }
        }
    });
    let progress = Progress::start(client, Direction::Down, "get", None, g.quiet);
    let bucket = src.bucket.as_str();
    let (prefix, dest_ref) = (src.key.as_str(), &dest);
    // Directory markers found (with no file, they are what the prefix holds).
    let markers = std::sync::atomic::AtomicU64::new(0);
    let markers_ref = &markers;
    let excluded = std::sync::atomic::AtomicU64::new(0);
    let excluded_ref = &excluded;
    // Each page becomes its files (or the error that stops the run), in listing order.
    let files = futures::stream::unfold((pages, planner), move |(mut pages, mut planner)| async move {
        let page = pages.recv().await?;
        let planned = page.map_err(anyhow::Error::from).and_then(|objects| {
            let plan = planner.page(bucket, prefix, objects)?;
            markers_ref.fetch_add(plan.dirs.len() as u64, std::sync::atomic::Ordering::Relaxed);
            excluded_ref.fetch_add(plan.excluded, std::sync::atomic::Ordering::Relaxed);
            for dir in plan.dirs.iter().map(|d| dest_ref.join(d)) {
                std::fs::create_dir_all(&dir).map_err(|e| LocalFileError::write(&dir, e))?;
            }
            Ok(plan.files)
        });
        let items: Vec<anyhow::Result<(ListEntry, PathBuf)>> = match planned {
            Ok(files) => files.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        Some((futures::stream::iter(items), (pages, planner)))
    })
    .flatten();
    let downloads = files
        .map(|item| async move {
            let (entry, rel) = item?;
            let path = dest_ref.join(&rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| LocalFileError::write(dir, e))?;
            }
            anyhow::Ok(client.get_listed_to_file(bucket, &entry, &path).await?)
        })
        .buffer_unordered(OBJECTS_AT_ONCE);
    let outcome = async {
        let mut downloads = std::pin::pin!(downloads);
        let (mut count, mut bytes, mut verified, mut algorithms) = (0u64, 0u64, 0u64, BTreeSet::new());
        while let Some(done) = downloads.next().await {
            let done = done?;
            count += 1;
            bytes += done.bytes;
            if let Some(alg) = done.verified_with {
                verified += 1;
                algorithms.insert(alg);
            }
        }
        anyhow::Ok((count, bytes, verified, algorithms))
    };
    let result = tokio::select! {
        r = outcome => r,
        _ = tokio::signal::ctrl_c() => {
            Err(anyhow::anyhow!("interrupted; the files downloaded so far are complete, and no partial file was kept"))
        }
    };
    lister.abort();
    progress.finish();
    let (count, bytes, verified, algorithms) =
        result.with_context(|| format!("downloading {src} to {}", dest.display()))?;
    if count == 0 && markers.into_inner() == 0 {
        let what =
            if args.filter.exclude.is_empty() { src.to_string() } else { format!("{src} that --exclude leaves in") };
        return Err(GetManyError::Empty(what).into());
    }
    let mut summary = Summary::new("get", src.to_string(), dest.display().to_string(), bytes, started, client);
    summary.objects = Some(count);
    summary.verified_objects = Some(verified);
    summary.excluded = (!args.filter.exclude.is_empty()).then(|| excluded.into_inner());
    if algorithms.len() == 1 && verified == count {
        summary.verified_with = algorithms.into_iter().next();
    }
    summary.print(g, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> ListEntry {
        ListEntry { key: key.into(), size: 1, last_modified: None, e_tag: None }
    }

    fn keys(list: &[&str]) -> Vec<ListEntry> {
        list.iter().map(|k| entry(k)).collect()
    }

    fn plan(bucket: &str, prefix: &str, objects: Vec<ListEntry>) -> Result<Plan, GetManyError> {
        Planner::default().page(bucket, prefix, objects)
    }

    #[test]
    fn keys_become_paths_under_the_destination() {
        let p = plan("b", "data/", keys(&["data/", "data/a.txt", "data/sub/b.bin", "data/empty/"])).unwrap();
        let files: Vec<&Path> = p.files.iter().map(|(_, p)| p.as_path()).collect();
        assert_eq!(files, [Path::new("a.txt"), Path::new("sub/b.bin")]);
        assert_eq!(p.dirs, [PathBuf::from("empty")], "the prefix's own marker is skipped");
        // The whole bucket.
        assert_eq!(plan("b", "", keys(&["x/y"])).unwrap().files[0].1, PathBuf::from("x/y"));
    }

    #[test]
    fn keys_that_cannot_be_paths_are_refused_naming_the_key() {
        for (key, why) in [("p/../etc/passwd", "'..'"), ("p/a//b", "empty"), ("p/./a", "'.'")] {
            let err = plan("b", "p/", keys(&[key])).unwrap_err().to_string();
            assert!(err.contains(&format!("s3://b/{key}")) && err.contains(why), "{key}: {err}");
        }
        // A file that another key needs as its directory, whichever comes first.
        for list in [["p/a", "p/a/b"], ["p/a/b", "p/a"]] {
            let err = plan("b", "p/", keys(&list)).unwrap_err().to_string();
            assert!(err.contains("s3://b/p/a under") && err.contains("needs it to be a directory"), "{err}");
        }
        let err = plan("b", "p/", keys(&["p/a", "p/a/"])).unwrap_err().to_string();
        assert!(err.contains("needs it to be a directory"), "{err}");
        // Across pages too: the planner remembers what earlier pages made files.
        let mut planner = Planner::default();
        planner.page("b", "p/", keys(&["p/x/y", "p/a"])).unwrap();
        let err = planner.page("b", "p/", keys(&["p/a/b"])).unwrap_err().to_string();
        assert!(err.contains("s3://b/p/a under") && err.contains("needs it to be a directory"), "{err}");
        assert!(planner.page("b", "p/", keys(&["p/x/z"])).is_ok(), "a directory is shared by its files");
        let err = planner.page("b", "p/", keys(&["p/x"])).unwrap_err().to_string();
        assert!(err.contains("s3://b/p/x under"), "{err}");
    }

    #[test]
    fn excluded_keys_are_left_out_before_they_are_checked_as_paths() {
        let exclude = Exclude::new(&["*.tmp".into(), "cache/".into(), "/raw/2025-*".into()]).unwrap();
        let mut planner = Planner { exclude, ..Planner::default() };
        let listed =
            ["p/a.txt", "p/a.tmp", "p/x/cache/y", "p/x/cache/", "p/raw/2025-01/z", "p/raw/2026-01/z", "p/odd/../k.tmp"];
        let plan = planner.page("b", "p/", keys(&listed)).unwrap();
        let files: Vec<&Path> = plan.files.iter().map(|(_, p)| p.as_path()).collect();
        assert_eq!(files, [Path::new("a.txt"), Path::new("raw/2026-01/z")]);
        assert!(plan.dirs.is_empty(), "the excluded directory's marker is left out too");
        assert_eq!(plan.excluded, 5);
    }
}
