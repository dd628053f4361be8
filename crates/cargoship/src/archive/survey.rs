//! `survey`: what a `ship` of a directory would do: counts, sizes, a size histogram, the
//! largest files, what would be skipped, how many suitcases, and the monthly storage cost
//! per storage class from a dated price table (shipped with the tool, overridable).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::inventory::{Kind, Skipped};
use super::{ArchiveError, Result, plan, walk};

/// Storage classes in the order they are shown.
pub const CLASSES: [&str; 6] =
    ["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"];

/// A price table (see `prices.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub as_of: String,
    pub region: String,
    pub currency: String,
    pub classes: BTreeMap<String, ClassPrice>,
}

/// Prices of one storage class.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPrice {
    /// Per GiB-month stored.
    pub gb_month: f64,
    /// Per 1,000 PUT/POST requests.
    pub put_per_1000: f64,
}

impl Prices {
    /// The table shipped with this build.
    pub fn embedded() -> Self {
        toml::from_str(include_str!("prices.toml")).expect("embedded price table parses")
    }

    /// A table from a file (same format as the embedded one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ArchiveError::Source { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| ArchiveError::Usage(format!("price table {}: {e}", path.display())))
    }
}

/// One histogram bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub label: &'static str,
    pub files: u64,
    pub bytes: u64,
}

/// Cost estimate for one storage class.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub class: String,
    /// Storing the data (uncompressed size: an upper bound) for a month.
    pub monthly: f64,
    /// The upload requests of a `ship` (one-time).
    pub ship_requests: f64,
    /// The upload requests of uploading file by file (one-time), for comparison.
    pub file_by_file_requests: f64,
}

/// What a survey found.
#[derive(Debug, Clone, Serialize)]
pub struct Survey {
    pub root: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub histogram: Vec<Bucket>,
    pub largest: Vec<(String, u64)>,
    pub skipped: Vec<Skipped>,
    /// Entries left out by `--exclude` (a directory counts once).
    pub excluded: u64,
    pub suitcases: usize,
    /// PUT-class requests a `ship` would make (multipart: create + parts + complete).
    pub ship_requests: u64,
    pub prices_as_of: String,
    pub currency: String,
    pub costs: Vec<Cost>,
}

const LIMITS: [(u64, &str); 8] = [
    (1, "empty"),
    (4 << 10, "< 4 KiB"),
    (64 << 10, "4-64 KiB"),
    (1 << 20, "64 KiB-1 MiB"),
    (16 << 20, "1-16 MiB"),
    (256 << 20, "16-256 MiB"),
    (1 << 30, "256 MiB-1 GiB"),
    (u64::MAX, ">= 1 GiB"),
];

/// Surveys `root` as `ship` with suitcases of `suitcase_size`, parts of `part_size` and
/// `exclude` would.
pub fn survey(
    root: &Path,
    suitcase_size: u64,
    part_size: u64,
    exclude: &walk::Exclude,
    prices: &Prices,
) -> Result<Survey> {
    let w = walk::walk(root, exclude)?;
    let mut histogram: Vec<Bucket> = LIMITS.iter().map(|(_, label)| Bucket { label, files: 0, bytes: 0 }).collect();
    let mut largest: Vec<(String, u64)> = Vec::new();
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0, 0, 0, 0);
    for i in &w.items {
        match i.kind {
            Kind::Dir => dirs += 1,
            Kind::Symlink => symlinks += 1,
            Kind::File => {
                files += 1;
                bytes += i.size;
                let b = LIMITS.iter().position(|(lim, _)| i.size < *lim).unwrap_or(LIMITS.len() - 1);
                histogram[b].files += 1;
                histogram[b].bytes += i.size;
                largest.push((i.path.clone(), i.size));
            }
        }
    }
    largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    largest.truncate(10);
    let cap = plan::effective_cap(&w.items, suitcase_size, 2);
    let plan = plan::plan(w.items, cap);
    let ship_requests: u64 = plan
        .iter()
        .map(|s| {
            let tar: u64 = s.iter().map(plan::tar_size).sum::<u64>() + 1024;
            // One PUT below a part; else create + parts + complete.
            if tar < part_size { 1 } else { tar.div_ceil(part_size.max(1)) + 2 }
        })
        .sum::<u64>()
        + 1;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let costs = CLASSES
        .iter()
        .filter_map(|c| prices.classes.get(*c).map(|p| (c, p)))
        .map(|(c, p)| Cost {
            class: (*c).to_owned(),
            monthly: gib * p.gb_month,
            ship_requests: ship_requests as f64 / 1000.0 * p.put_per_1000,
            file_by_file_requests: files as f64 / 1000.0 * p.put_per_1000,
        })
        .collect();
    Ok(Survey {
        root: root.display().to_string(),
        files,
        dirs,
        symlinks,
        bytes,
        histogram,
        largest,
        skipped: w.skipped,
        excluded: w.excluded,
        suitcases: plan.len(),
        ship_requests,
        prices_as_of: format!("{} ({})", prices.as_of, prices.region),
        currency: prices.currency.clone(),
        costs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_survey_counts_buckets_and_prices_every_class() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::write(dir.path().join("small"), vec![1u8; 100]).unwrap();
        std::fs::write(dir.path().join("mid"), vec![1u8; 100_000]).unwrap();
        let prices = Prices::embedded();
        let s = survey(dir.path(), 1 << 30, 8 << 20, &walk::Exclude::default(), &prices).unwrap();
        assert_eq!((s.files, s.bytes), (3, 100_100));
        assert_eq!(s.histogram[0].files, 1);
        assert_eq!(s.histogram[1].files, 1);
        assert_eq!(s.histogram[3].files, 1);
        assert_eq!(s.largest[0], ("mid".to_string(), 100_000));
        assert_eq!(s.suitcases, 1);
        assert_eq!(s.costs.len(), 6);
        let std = &s.costs[0];
        assert!((std.monthly - 100_100.0 / (1u64 << 30) as f64 * 0.023).abs() < 1e-12);
        assert!(s.costs[5].monthly < s.costs[0].monthly, "deep archive is the cheapest to keep");
    }
}
