//! `verify`: checks an archive against S3 (every suitcase present, size and stored
//! CRC64NVME as the inventory says), optionally re-reads and re-hashes every file
//! (`--deep`), and optionally compares it with a local tree (`--against`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::extract::{ExtractProgress, Target, extract_suitcase};
use super::inventory::{Entry, Kind};
use super::reader::ArchiveReader;
use super::{Result, join_key, walk};

/// What was checked and what was wrong.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub suitcases: usize,
    pub files_hashed: u64,
    pub files_compared: u64,
    /// One line per problem; empty means the archive is sound.
    pub problems: Vec<String>,
}

/// Verifies the archive `reader` opened, at the given depth.
pub async fn verify(
    reader: &ArchiveReader,
    prefix: &str,
    bucket: &str,
    deep: bool,
    against: Option<&Path>,
    progress: Arc<ExtractProgress>,
) -> Result<VerifyReport> {
    let inv = reader.inventory();
    let client = reader.client();
    let mut report = VerifyReport { suitcases: inv.suitcases.len(), ..Default::default() };
    for s in &inv.suitcases {
        let key = join_key(prefix, &s.key);
        match client.head(bucket, &key).await {
            Ok(info) => {
                if info.size != s.size {
                    report.problems.push(format!("{}: {} bytes in S3, inventory says {}", s.key, info.size, s.size));
                }
                match &info.checksum {
                    Some(c) if c.algorithm_name() == "CRC64NVME" && c.value != s.crc64nvme => report.problems.push(
                        format!("{}: stored CRC64NVME {} differs from the inventory's {}", s.key, c.value, s.crc64nvme),
                    ),
                    _ => {}
                }
            }
            Err(s3opt::Error::NoSuchKey { .. }) => report.problems.push(format!("{}: missing", s.key)),
            Err(e) => return Err(e.into()),
        }
    }
    if deep && report.problems.is_empty() {
        let mut by_suitcase: BTreeMap<usize, Vec<(usize, Entry)>> = BTreeMap::new();
        for (i, e) in inv.entries.iter().enumerate().filter(|(_, e)| e.kind == Kind::File) {
            by_suitcase.entry(e.suitcase.expect("validated") as usize).or_default().push((i, e.clone()));
        }
        for (s, files) in by_suitcase {
            report.files_hashed += files.len() as u64;
            for path in extract_suitcase(reader, s, files, Target::HashOnly, progress.clone()).await? {
                report.problems.push(format!("{path}: content in the archive does not match its hash"));
            }
        }
    }
    if let Some(dir) = against {
        let exclude = walk::Exclude::new(&inv.exclude)?;
        compare_tree(inv.entries.as_slice(), dir, &exclude, deep, &mut report)?;
    }
    Ok(report)
}

/// Compares the archive's entries with `dir` walked as the ship walked it (`exclude`: the
/// patterns it was shipped with).
fn compare_tree(
    entries: &[Entry],
    dir: &Path,
    exclude: &walk::Exclude,
    deep: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    let local = walk::walk(dir, exclude)?;
    let archived: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for item in &local.items {
        if !archived.contains(item.path.as_str()) {
            report.problems.push(format!("{}: only in {}", item.path, dir.display()));
        }
    }
    let by_path: std::collections::HashMap<&str, &walk::Item> =
        local.items.iter().map(|i| (i.path.as_str(), i)).collect();
    for e in entries {
        report.files_compared += u64::from(e.kind == Kind::File);
        let Some(item) = by_path.get(e.path.as_str()) else {
            report.problems.push(format!("{}: only in the archive", e.path));
            continue;
        };
        if item.kind != e.kind {
            report.problems.push(format!("{}: {:?} locally, {:?} in the archive", e.path, item.kind, e.kind));
        } else if e.kind == Kind::File && item.size != e.size {
            report.problems.push(format!("{}: {} bytes locally, {} in the archive", e.path, item.size, e.size));
        } else if e.kind == Kind::Symlink && item.target != e.target {
            report.problems.push(format!("{}: link target differs", e.path));
        } else if e.kind == Kind::File && deep {
            let path = dir.join(&e.path);
            let mut hasher = blake3::Hasher::new();
            match std::fs::File::open(&path).and_then(|mut f| std::io::copy(&mut f, &mut hasher)) {
                Ok(_) if Some(hasher.finalize().to_hex().as_str()) == e.hash.as_deref() => {}
                Ok(_) => report.problems.push(format!("{}: content differs from the archive", e.path)),
                Err(err) => report.problems.push(format!("{}: cannot be read ({err})", e.path)),
            }
        }
    }
    Ok(())
}
