//! `cargoship get s3://bucket/prefix/ DIR`: every object under the prefix becomes a file
//! under DIR (its key after the prefix is the relative path), many at once through one
//! client. Keys that cannot be a path under DIR are refused before anything is written;
//! each file appears only once complete and verified, so a failed or interrupted run
//! leaves whole files and no partial one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
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

/// What to fetch: objects to files, and the directories (markers, `key/`) to create.
#[derive(Debug, Default)]
struct Plan {
    files: Vec<(ListEntry, PathBuf)>,
    dirs: Vec<PathBuf>,
}

/// Maps the `objects` listed under `prefix` in `bucket` to paths relative to the
/// destination. A key's part after the prefix must be a relative path of non-empty
/// components other than `.` and `..`, and no object may be both a file and the directory
/// of another.
fn plan(bucket: &str, prefix: &str, objects: Vec<ListEntry>) -> Result<Plan, GetManyError> {
    let mut plan = Plan::default();
    let bad = |key: &str, reason| GetManyError::BadKey { bucket: bucket.into(), key: key.into(), reason };
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
        let mut path = PathBuf::new();
        for part in rel.split('/') {
            match part {
                "" => return Err(bad(&o.key, "it has an empty path component ('//')")),
                "." | ".." => return Err(bad(&o.key, "it has a '.' or '..' path component")),
                p => path.push(p),
            }
        }
        if is_dir {
            plan.dirs.push(path);
        } else {
            plan.files.push((o, path));
        }
    }
    let files: BTreeSet<&Path> = plan.files.iter().map(|(_, p)| p.as_path()).collect();
    let needed_as_dirs =
        plan.files.iter().flat_map(|(_, p)| p.ancestors().skip(1)).chain(plan.dirs.iter().flat_map(|d| d.ancestors()));
    for dir in needed_as_dirs {
        if files.contains(dir) {
            let (entry, _) = plan.files.iter().find(|(_, p)| p == dir).expect("a planned file");
            return Err(bad(&entry.key, "another key needs it to be a directory"));
        }
    }
    Ok(plan)
}

/// Downloads every object under `src` (a prefix: empty or ending in `/`) into the directory
/// `args.destination`.
pub async fn get_prefix(g: &GlobalOpts, args: &GetArgs, src: S3Url) -> anyhow::Result<()> {
    if args.range.is_some() {
        return Err(GetManyError::Usage(format!("--range applies to one object; {src} is a prefix")).into());
    }
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
    // while it is listed (on a long path, each GET would otherwise wait for a handshake).
    client.expect_requests(OBJECTS_AT_ONCE);
    let listing = client.list(&src.bucket, &src.key, None).await?;
    let plan = plan(&src.bucket, &src.key, listing.objects)?;
    if plan.files.is_empty() && plan.dirs.is_empty() {
        return Err(GetManyError::Empty(src.to_string()).into());
    }
    let parents = plan.files.iter().filter_map(|(_, p)| dest.join(p).parent().map(Path::to_owned));
    let dirs: BTreeSet<PathBuf> = plan.dirs.iter().map(|d| dest.join(d)).chain(parents).collect();
    for dir in std::iter::once(&dest).chain(&dirs) {
        std::fs::create_dir_all(dir).map_err(|e| LocalFileError::write(dir, e))?;
    }
    let total: u64 = plan.files.iter().map(|(e, _)| e.size).sum();
    let count = plan.files.len() as u64;
    let progress = Progress::start(client, Direction::Down, "get", Some(total), g.quiet);
    let bucket = src.bucket.as_str();
    let downloads = futures::stream::iter(&plan.files)
        .map(|(entry, rel)| {
            let path = dest.join(rel);
            async move { client.get_listed_to_file(bucket, entry, &path).await }
        })
        .buffer_unordered(OBJECTS_AT_ONCE);
    let outcome = async {
        let mut downloads = std::pin::pin!(downloads);
        let (mut verified, mut algorithms) = (0u64, BTreeSet::new());
        while let Some(done) = downloads.next().await {
            let done = done?;
            if let Some(alg) = done.verified_with {
                verified += 1;
                algorithms.insert(alg);
            }
        }
        anyhow::Ok((verified, algorithms))
    };
    let result = tokio::select! {
        r = outcome => r,
        _ = tokio::signal::ctrl_c() => {
            Err(anyhow::anyhow!("interrupted; the files downloaded so far are complete, and no partial file was kept"))
        }
    };
    progress.finish();
    let (verified, algorithms) = result.with_context(|| format!("downloading {src} to {}", dest.display()))?;
    let mut summary = Summary::new("get", src.to_string(), dest.display().to_string(), total, started, client);
    summary.objects = Some(count);
    summary.verified_objects = Some(verified);
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
    }
}
