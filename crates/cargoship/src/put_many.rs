//! `cargoship put DIR s3://bucket/prefix`: every file under DIR as its own object, spread
//! over `--prefixes N` key prefixes by the cross-prefix coordinator (`--strategy`), or by a
//! plain distribution with `--strategy none`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use s3opt::coordination::{
    CoordinationConfig, Distribution, ParallelConfig, ParallelUploader, PerformanceBaseline, PrefixPattern, Strategy,
    UploadItem, UploadSummary,
};
use serde::Serialize;

use cargoship::archive::walk::Exclude;

use crate::cli::{GlobalOpts, PutArgs};
use crate::exit::LocalFileError;
use crate::progress::{Direction, Progress, human};
use crate::s3url::S3Url;
use crate::setup;

/// Options of `put` that apply when the source is a directory.
#[derive(Debug, Args)]
pub struct ManyArgs {
    /// Directory uploads: key prefixes to spread objects over.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub prefixes: u64,
    /// Directory uploads: how the coordinator picks a prefix: tcp_like, fair_share, adaptive,
    /// or none (no coordinator: --distribution decides).
    #[arg(long, default_value = "adaptive", value_name = "NAME")]
    pub strategy: String,
    /// Directory uploads with --strategy none: round_robin, hash_based or least_loaded.
    #[arg(long, default_value = "round_robin", value_name = "NAME", value_parser = parse_distribution)]
    pub distribution: Distribution,
    /// Directory uploads: prefix names: hash (ROOT/3f/), sequential (ROOT/batch-0001/),
    /// date[:YYYY-MM-DD] (ROOT/DATE/part-01/), or custom:a/,b/,c/.
    #[arg(long, default_value = "hash", value_name = "PATTERN", value_parser = parse_pattern)]
    pub pattern: PrefixPattern,
    /// Directory uploads: the ROOT of the prefix pattern ('' for none).
    #[arg(long, default_value = "archives", value_name = "ROOT")]
    pub prefix_root: String,
    /// Directory uploads: most objects in flight per prefix (the coordinator lowers it where
    /// a prefix answers 503 SlowDown). 8 x 8 prefixes = the client's starting window; the
    /// seed's 3 held 1,000 files of 64 KiB on a 60 ms, 2 MB/s-per-connection path to half
    /// its bandwidth.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub per_prefix: u64,
    /// Directory uploads: coordination preset (default, high_bandwidth, variable_network,
    /// many_small_files, advanced); --strategy still applies.
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub preset: String,
    /// Directory uploads: how objects reach the coordinator: queues (bounded per-prefix
    /// queues drained by its dispatcher) or leases (one lease per object, as `ship` does).
    #[arg(long, default_value = "queues", value_name = "HOW", value_parser = ["queues", "leases"])]
    pub via: String,
    /// Directory uploads: the --json output of an earlier run to compare against (its
    /// measured throughput and latency become the baseline of the coordination metrics).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    #[command(flatten)]
    pub filter: crate::cli::ExcludeArgs,
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    s.parse()
}

fn parse_pattern(s: &str) -> Result<PrefixPattern, String> {
    s.parse()
}

/// What `--json` prints for a directory upload.
#[derive(Serialize)]
struct ManySummary<'a> {
    command: &'static str,
    source: String,
    destination: String,
    strategy: &'a str,
    via: &'a str,
    prefixes: Vec<String>,
    /// Entries left out by `--exclude` (a directory counts once).
    excluded: u64,
    /// Entries passed over: symlinks, special files, names that are not UTF-8.
    skipped: usize,
    requests: u64,
    retries: u64,
    errors: std::collections::BTreeMap<String, u64>,
    #[serde(flatten)]
    upload: &'a UploadSummary,
}

/// What a walk of the source directory found.
#[derive(Default)]
struct Found {
    /// Regular files, with their keys relative to the directory (`/`-separated), by name.
    items: Vec<UploadItem>,
    /// Entries `--exclude` left out (a directory counts once).
    excluded: u64,
    /// Entries that cannot be uploaded as objects, and why.
    passed_over: Vec<(PathBuf, &'static str)>,
}

/// Walks `dir`: every regular file `exclude` leaves in becomes an item. Symlinks are not
/// followed and, like special files and names that are not UTF-8 (their key would not be
/// their name), passed over, each with its reason, so the caller can say what was not sent.
fn walk(dir: &Path, exclude: &Exclude) -> anyhow::Result<Found> {
    let mut found = Found::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| LocalFileError::read(&d, e))? {
            let entry = entry.map_err(|e| LocalFileError::read(&d, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| LocalFileError::read(&path, e))?;
            let rel = path.strip_prefix(dir).expect("under dir");
            let Some(name) = rel.to_str().map(str::to_owned) else {
                found.passed_over.push((path, "its name is not UTF-8"));
                continue;
            };
            if exclude.matches(&name, ft.is_dir()) {
                found.excluded += 1;
                continue;
            }
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let size = entry.metadata().map_err(|e| LocalFileError::read(&path, e))?.len();
                found.items.push(UploadItem { path, name, size, priority: 0 });
            } else if ft.is_symlink() {
                found.passed_over.push((path, "a symlink (put sends regular files and does not follow links)"));
            } else {
                found.passed_over.push((path, "not a regular file"));
            }
        }
    }
    found.items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Uploads a directory (the `put` command when its source is a directory).
pub async fn run(g: &GlobalOpts, args: &PutArgs) -> anyhow::Result<()> {
    let m = &args.many;
    let dest = S3Url::parse(&args.destination)?;
    let dir = PathBuf::from(&args.source);
    let mut base = dest.key.clone();
    if !base.is_empty() && !base.ends_with('/') {
        base.push('/');
    }
    let coordinated = m.strategy != "none";
    let mut coordination = CoordinationConfig::preset(&m.preset).with_context(|| {
        format!("unknown preset '{}' (one of {})", m.preset, s3opt::coordination::PRESETS.join(", "))
    })?;
    if coordinated {
        coordination.strategy = m.strategy.parse::<Strategy>().map_err(anyhow::Error::msg)?;
    }
    let baseline = match &m.baseline {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| LocalFileError::read(p, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
            let b: PerformanceBaseline = serde_json::from_value(v["as_baseline"].clone())
                .with_context(|| format!("{} has no as_baseline (not a put --json output)", p.display()))?;
            Some(b)
        }
    };
    let Found { items, excluded, passed_over } = walk(&dir, &m.filter.compile()?)?;
    for (path, why) in &passed_over {
        eprintln!("skipped {}: {why}", path.display());
    }
    let skipped = passed_over.len();
    if items.is_empty() {
        let why =
            if m.filter.exclude.is_empty() { "contains no files" } else { "contains no files --exclude leaves in" };
        bail!(LocalFileError::read(&dir, std::io::Error::other(why)));
    }
    let total: u64 = items.iter().map(|i| i.size).sum();
    let session = setup::connect(g).await?;
    session.ensure_embedded_bucket(&dest.bucket)?;
    let client = &session.client;
    let cfg = ParallelConfig {
        max_prefixes: m.prefixes as usize,
        max_concurrent_uploads: m.per_prefix as usize,
        pattern: m.pattern.clone().with_root(&m.prefix_root),
        distribution: m.distribution,
        enable_coordination: coordinated,
        use_leases: m.via == "leases",
        coordination,
        baseline,
    };
    let uploader = ParallelUploader::new(client.clone(), &dest.bucket, &base, cfg);
    let prefixes = uploader.prefixes();
    let started = Instant::now();
    let progress = Progress::start(client, Direction::Up, "put", Some(total), g.quiet);
    let summary = tokio::select! {
        s = uploader.upload_all(items) => s,
        _ = tokio::signal::ctrl_c() => {
            progress.finish();
            client.finish_cleanup().await;
            bail!("interrupted; partial multipart uploads were aborted");
        }
    };
    progress.finish();
    client.finish_cleanup().await;
    let metrics = client.metrics();
    if g.json {
        let out = ManySummary {
            command: "put",
            source: dir.display().to_string(),
            destination: dest.to_string(),
            strategy: if coordinated { &m.strategy } else { "none" },
            via: if coordinated { &m.via } else { "none" },
            prefixes,
            excluded,
            skipped,
            requests: metrics.requests,
            retries: metrics.retries,
            errors: metrics.errors.clone(),
            upload: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&out).expect("summary serializes"));
    } else if !g.quiet {
        println!(
            "uploaded {} objects from {} to {} over {} prefixes ({}): {} in {:.2} s ({:.1} MB/s), {} requests, {} retries{}{}",
            summary.objects - summary.failed,
            dir.display(),
            dest,
            prefixes.len(),
            if coordinated { m.strategy.clone() } else { format!("uncoordinated, {:?}", m.distribution) },
            human(summary.bytes),
            started.elapsed().as_secs_f64(),
            summary.mb_per_s,
            metrics.requests,
            metrics.retries,
            if skipped == 0 { String::new() } else { format!(", {skipped} skipped") },
            if m.filter.exclude.is_empty() { String::new() } else { format!(", {excluded} excluded") }
        );
        if let Some(c) = &summary.coordination {
            println!(
                "coordination: {} prefixes active, {} drained, {} objects moved, load balance {:.2}, \
                 overhead {:.3}% ({:.1} us/decision), {} congestion events",
                c.active_prefixes,
                c.drained_prefixes,
                c.objects_moved,
                c.load_balance_efficiency,
                c.coordination_overhead_percent,
                c.scheduling_time_us_mean,
                c.congestion_events
            );
        }
    }
    if summary.failed > 0 {
        let first = summary.results.iter().find_map(|r| r.error.clone()).unwrap_or_default();
        bail!("{} of {} objects failed (first error: {first})", summary.failed, summary.objects);
    }
    Ok(())
}
