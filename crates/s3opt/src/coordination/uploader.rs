//! [`ParallelUploader`]: uploads many local files as objects spread over N key prefixes,
//! either through the [`PipelineCoordinator`]'s queues or, with coordination off (or after
//! the coordinator failed), by a plain distribution (round robin, FNV-1a hash, least loaded)
//! with a per-prefix concurrency limit. Reports per-object, per-prefix and aggregate results.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::config::CoordinationConfig;
use super::coordinator::{LeaseOutcome, PipelineCoordinator, ScheduledUpload, UploadExecutor};
use super::metrics::{CoordinationMetrics, PerformanceBaseline};
use crate::client::OptimizedS3Client;
use crate::performance::upload::PutOptions;

/// How prefix names are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixPattern {
    /// `<root>/<hex><hex>/` (spread evenly over S3's key space); root may be empty.
    Hash { root: String },
    /// `<root>/batch-NNNN/`.
    Sequential { root: String },
    /// `<root>/<date>/part-NN/` (date as given, e.g. `2026-11-21`).
    Date { root: String, date: String },
    /// These prefixes, as given (a `/` is appended when missing).
    Custom(Vec<String>),
}

fn rooted(root: &str, rest: &str) -> String {
    let root = root.trim_matches('/');
    if root.is_empty() { format!("{rest}/") } else { format!("{root}/{rest}/") }
}

impl PrefixPattern {
    /// The first `n` prefixes of the pattern (all of a custom list).
    pub fn prefixes(&self, n: usize) -> Vec<String> {
        match self {
            PrefixPattern::Hash { root } => {
                // Spread over the 256 two-hex-digit values.
                (0..n).map(|i| rooted(root, &format!("{:02x}", (i * 256 / n.max(1)) % 256))).collect()
            }
            PrefixPattern::Sequential { root } => (0..n).map(|i| rooted(root, &format!("batch-{i:04}"))).collect(),
            PrefixPattern::Date { root, date } => {
                (0..n).map(|i| rooted(root, &format!("{date}/part-{i:02}"))).collect()
            }
            PrefixPattern::Custom(list) => list
                .iter()
                .map(|p| if p.ends_with('/') || p.is_empty() { p.clone() } else { format!("{p}/") })
                .collect(),
        }
    }
}

impl FromStr for PrefixPattern {
    type Err = String;
    /// `hash`, `sequential`, `date`, `date:YYYY-MM-DD`, or `custom:a/,b/,c/`; the root is
    /// `archives` (set it with [`PrefixPattern::with_root`]).
    fn from_str(s: &str) -> Result<Self, String> {
        let root = "archives".to_owned();
        match s.split_once(':') {
            None if s == "hash" => Ok(PrefixPattern::Hash { root }),
            None if s == "sequential" => Ok(PrefixPattern::Sequential { root }),
            None if s == "date" => Ok(PrefixPattern::Date { root, date: today() }),
            Some(("date", d)) => Ok(PrefixPattern::Date { root, date: d.to_owned() }),
            Some(("custom", list)) => Ok(PrefixPattern::Custom(list.split(',').map(str::to_owned).collect())),
            _ => Err(format!("unknown prefix pattern '{s}' (hash, sequential, date[:YYYY-MM-DD], custom:a/,b/)")),
        }
    }
}

impl PrefixPattern {
    /// The same pattern under another root (`""`: at the top).
    pub fn with_root(self, new_root: &str) -> Self {
        let root = new_root.to_owned();
        match self {
            PrefixPattern::Hash { .. } => PrefixPattern::Hash { root },
            PrefixPattern::Sequential { .. } => PrefixPattern::Sequential { root },
            PrefixPattern::Date { date, .. } => PrefixPattern::Date { root, date },
            c @ PrefixPattern::Custom(_) => c,
        }
    }
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_owned()
}

/// How objects are spread when the coordinator is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    RoundRobin,
    /// FNV-1a of the object name, modulo the prefix count.
    HashBased,
    /// The prefix with the fewest objects in flight.
    LeastLoaded,
}

impl FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" | "round-robin" => Ok(Distribution::RoundRobin),
            "hash_based" | "hash-based" | "hash" => Ok(Distribution::HashBased),
            "least_loaded" | "least-loaded" => Ok(Distribution::LeastLoaded),
            other => Err(format!("unknown distribution '{other}' (round_robin, hash_based, least_loaded)")),
        }
    }
}

fn lease_prefix<'a>(key: &'a str, name: &str) -> &'a str {
    key.strip_suffix(name).unwrap_or(key)
}

/// 64-bit FNV-1a.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Configuration (the seed's `ParallelConfig`).
#[derive(Debug, Clone)]
pub struct ParallelConfig {
    /// Prefixes to spread over. Default 8.
    pub max_prefixes: usize,
    /// Objects in flight per prefix (without coordination; with it, the coordinator's
    /// `per_prefix_concurrency` is set to this). Default 3.
    pub max_concurrent_uploads: usize,
    pub pattern: PrefixPattern,
    /// Used without coordination. Default round robin.
    pub distribution: Distribution,
    /// Use the coordinator. Default on.
    pub enable_coordination: bool,
    /// With coordination: take a lease per object (the streaming API `ship` uses) instead
    /// of going through the coordinator's queues. Default off (queues).
    pub use_leases: bool,
    pub coordination: CoordinationConfig,
    /// Compared against in the coordination metrics.
    pub baseline: Option<PerformanceBaseline>,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            max_prefixes: 8,
            max_concurrent_uploads: 3,
            pattern: PrefixPattern::Hash { root: "archives".into() },
            distribution: Distribution::RoundRobin,
            enable_coordination: true,
            use_leases: false,
            coordination: CoordinationConfig::default(),
            baseline: None,
        }
    }
}

/// One file to upload.
#[derive(Debug, Clone)]
pub struct UploadItem {
    pub path: PathBuf,
    /// Key below the prefix (e.g. the file's path relative to the uploaded directory).
    pub name: String,
    pub size: u64,
    pub priority: u8,
}

/// What became of one file.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectResult {
    pub name: String,
    /// The key it was stored under (empty if it failed).
    pub key: String,
    pub bytes: u64,
    pub moves: u32,
    /// Time from its start to stored (last attempt), seconds.
    pub secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Per-prefix totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefixResult {
    pub prefix: String,
    pub objects: u64,
    pub bytes: u64,
}

/// The run's results.
#[derive(Debug, Clone, Serialize)]
pub struct UploadSummary {
    pub objects: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Whether the coordinator was used / failed so the rest went uncoordinated.
    pub coordinated: bool,
    pub fell_back: bool,
    pub per_prefix: Vec<PrefixResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub congestion: Option<super::congestion::CongestionSnapshot>,
    /// The baseline this run gives, for comparing a later coordinated run against.
    pub as_baseline: PerformanceBaseline,
    pub results: Vec<ObjectResult>,
}

/// Uploads files to `bucket` under `base` + prefix + name.
pub struct ParallelUploader {
    client: OptimizedS3Client,
    bucket: String,
    base: String,
    cfg: ParallelConfig,
    /// Test hook: fail the coordinator after this many objects were scheduled.
    fail_coordinator_after: Option<usize>,
}

struct FileExecutor {
    client: OptimizedS3Client,
    bucket: String,
}

impl UploadExecutor for FileExecutor {
    fn upload(&self, item: &ScheduledUpload, prefix: &str) -> BoxFuture<'static, crate::Result<u64>> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let (path, key) = (item.source.clone(), format!("{prefix}{}", item.name));
        Box::pin(async move { put_file(&client, &bucket, &key, &path).await })
    }
}

async fn put_file(client: &OptimizedS3Client, bucket: &str, key: &str, path: &std::path::Path) -> crate::Result<u64> {
    Ok(client.put_file(bucket, key, path, PutOptions::default()).await?.bytes)
}

impl ParallelUploader {
    /// `base` is prepended to every key (e.g. `backups/` or empty).
    pub fn new(client: OptimizedS3Client, bucket: &str, base: &str, cfg: ParallelConfig) -> Self {
        Self { client, bucket: bucket.to_owned(), base: base.to_owned(), cfg, fail_coordinator_after: None }
    }

    /// Test and drill hook: the coordinator fails after `n` objects were scheduled, so the
    /// fallback to uncoordinated uploads runs.
    pub fn fail_coordinator_after(mut self, n: usize) -> Self {
        self.fail_coordinator_after = Some(n);
        self
    }

    /// The full key prefixes used.
    pub fn prefixes(&self) -> Vec<String> {
        self.cfg
            .pattern
            .prefixes(self.cfg.max_prefixes.max(1))
            .into_iter()
            .map(|p| format!("{}{p}", self.base))
            .collect()
    }

    /// Uploads every item; never returns early: failed objects are in the summary.
    pub async fn upload_all(&self, items: Vec<UploadItem>) -> UploadSummary {
        let started = Instant::now();
        let requests_before = self.client.metrics();
        let prefixes = self.prefixes();
        let mut results: Vec<ObjectResult> = Vec::with_capacity(items.len());
        let mut coordination = None;
        let mut congestion = None;
        let mut fell_back = false;
        let mut leftovers = items;
        if self.cfg.enable_coordination {
            let (done, rest, metrics, snap, failed) = self.coordinated(leftovers, &prefixes).await;
            results = done;
            leftovers = rest;
            coordination = metrics;
            congestion = snap;
            fell_back = failed;
        }
        if !leftovers.is_empty() {
            results.extend(self.uncoordinated(leftovers, &prefixes).await);
        }
        let seconds = started.elapsed().as_secs_f64();
        let bytes: u64 = results.iter().filter(|r| r.error.is_none()).map(|r| r.bytes).sum();
        let failed = results.iter().filter(|r| r.error.is_some()).count() as u64;
        let mut per: HashMap<&str, PrefixResult> =
            prefixes.iter().map(|p| (p.as_str(), PrefixResult { prefix: p.clone(), ..Default::default() })).collect();
        for r in results.iter().filter(|r| r.error.is_none()) {
            if let Some(p) = prefixes.iter().filter(|p| r.key.starts_with(p.as_str())).max_by_key(|p| p.len())
                && let Some(e) = per.get_mut(p.as_str())
            {
                e.objects += 1;
                e.bytes += r.bytes;
            }
        }
        let m = self.client.metrics();
        let requests = m.requests - requests_before.requests;
        let errors = m.errors.values().sum::<u64>() - requests_before.errors.values().sum::<u64>();
        let objects = results.len() as u64;
        let as_baseline = PerformanceBaseline::measured(
            bytes,
            started.elapsed(),
            objects,
            results.iter().map(|r| r.secs).sum(),
            failed,
            requests,
            errors,
        );
        UploadSummary {
            objects,
            failed,
            bytes,
            seconds,
            mb_per_s: if seconds > 0.0 { bytes as f64 / seconds / 1e6 } else { 0.0 },
            coordinated: self.cfg.enable_coordination,
            fell_back,
            per_prefix: prefixes.iter().map(|p| per[p.as_str()].clone()).collect(),
            coordination,
            congestion,
            as_baseline,
            results,
        }
    }

    #[allow(clippy::type_complexity)]
    async fn coordinated(
        &self,
        items: Vec<UploadItem>,
        prefixes: &[String],
    ) -> (
        Vec<ObjectResult>,
        Vec<UploadItem>,
        Option<CoordinationMetrics>,
        Option<super::congestion::CongestionSnapshot>,
        bool,
    ) {
        let cfg = CoordinationConfig {
            per_prefix_concurrency: self.cfg.max_concurrent_uploads,
            max_active_prefixes: self.cfg.coordination.max_active_prefixes.max(prefixes.len()),
            ..self.cfg.coordination.clone()
        };
        let coord = match PipelineCoordinator::new(cfg) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%e, "coordinator could not be built; uploading uncoordinated");
                return (Vec::new(), items, None, None, true);
            }
        };
        for p in prefixes {
            coord.register_prefix(p, 0.0);
        }
        if let Some(b) = self.cfg.baseline {
            coord.set_baseline(b);
        }
        coord.attach(&self.client);
        let exec: Arc<dyn UploadExecutor> =
            Arc::new(FileExecutor { client: self.client.clone(), bucket: self.bucket.clone() });
        if let Err(e) = coord.start((!self.cfg.use_leases).then_some(exec)) {
            tracing::warn!(%e, "coordinator did not start; uploading uncoordinated");
            return (Vec::new(), items, None, None, true);
        }
        if self.cfg.use_leases {
            let (done, rest) = self.with_leases(&coord, items).await;
            let failed = coord.is_failed();
            if failed {
                coord.cancel().await;
            } else {
                coord.stop().await;
            }
            return (done, rest, Some(coord.metrics()), Some(coord.congestion()), failed);
        }
        let by_name: HashMap<String, UploadItem> = items.iter().map(|i| (i.name.clone(), i.clone())).collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut rest = Vec::new();
        let mut scheduled = 0usize;
        for item in items {
            if self.fail_coordinator_after.is_some_and(|n| scheduled == n) {
                coord.fail("failure injected by fail_coordinator_after");
            }
            let s = ScheduledUpload {
                source: item.path.clone(),
                name: item.name.clone(),
                priority: item.priority,
                estimated_size: item.size,
            };
            match coord.schedule_upload(s).await {
                Ok(ticket) => {
                    scheduled += 1;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(ticket.wait().await);
                    });
                }
                Err(_) => rest.push(item),
            }
        }
        drop(tx);
        let mut done = Vec::new();
        while let Some(r) = rx.recv().await {
            match r {
                Ok(d) => done.push(ObjectResult {
                    name: d.name,
                    key: d.key,
                    bytes: d.bytes,
                    moves: d.moves,
                    secs: d.secs,
                    error: None,
                }),
                Err(rej) => match by_name.get(&rej.item.name) {
                    // Handed back by a failed or stopped coordinator: goes uncoordinated.
                    Some(item) if !matches!(rej.error, super::CoordinationError::Upload(_)) => rest.push(item.clone()),
                    _ => done.push(ObjectResult {
                        name: rej.item.name,
                        key: String::new(),
                        bytes: 0,
                        moves: 0,
                        secs: 0.0,
                        error: Some(rej.error.to_string()),
                    }),
                },
            }
        }
        let failed = coord.is_failed();
        if failed {
            coord.cancel().await;
        } else {
            coord.stop().await;
        }
        (done, rest, Some(coord.metrics()), Some(coord.congestion()), failed)
    }

    /// One lease per object: acquire, upload under the lease's prefix (given up if the
    /// prefix is drained meanwhile), finish; a failed object takes a new lease, up to
    /// `max_moves` times. Objects the coordinator refuses (it failed) are handed back.
    async fn with_leases(
        &self,
        coord: &PipelineCoordinator,
        items: Vec<UploadItem>,
    ) -> (Vec<ObjectResult>, Vec<UploadItem>) {
        let max_moves = self.cfg.coordination.max_moves;
        // Enough tasks waiting for leases to keep every prefix busy, not one per file.
        let waiting = Arc::new(Semaphore::new(2 * self.cfg.max_prefixes * self.cfg.max_concurrent_uploads));
        let mut tasks = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for (n, item) in items.into_iter().enumerate() {
            if self.fail_coordinator_after.is_some_and(|k| n == k) {
                coord.fail("failure injected by fail_coordinator_after");
            }
            let permit = waiting.clone().acquire_owned().await.expect("semaphore open");
            let (coord, client, bucket) = (coord.clone(), self.client.clone(), self.bucket.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let mut last_err = String::new();
                for moves in 0..=max_moves {
                    let Ok(mut lease) = coord.acquire(item.size).await else { return Err(item) };
                    let key = lease.key(&item.name);
                    let t0 = Instant::now();
                    let r = tokio::select! {
                        r = put_file(&client, &bucket, &key, &item.path) => Some(r),
                        () = lease.drained() => None,
                    };
                    match r {
                        Some(Ok(bytes)) => {
                            lease.finish(LeaseOutcome::Uploaded { bytes });
                            let secs = t0.elapsed().as_secs_f64();
                            return Ok(ObjectResult { name: item.name, key, bytes, moves, secs, error: None });
                        }
                        Some(Err(e)) => {
                            lease.finish(LeaseOutcome::Failed);
                            last_err = e.to_string();
                        }
                        None => {
                            lease.finish(LeaseOutcome::Cancelled);
                            last_err = format!("prefix {} was drained", lease_prefix(&key, &item.name));
                        }
                    }
                }
                Ok(ObjectResult {
                    name: item.name,
                    key: String::new(),
                    bytes: 0,
                    moves: max_moves,
                    secs: 0.0,
                    error: Some(last_err),
                })
            });
            while let Some(r) = tasks.try_join_next() {
                match r {
                    Ok(Ok(o)) => out.push(o),
                    Ok(Err(item)) => rest.push(item),
                    Err(e) => tracing::warn!(%e, "upload task failed"),
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(o)) => out.push(o),
                Ok(Err(item)) => rest.push(item),
                Err(e) => tracing::warn!(%e, "upload task failed"),
            }
        }
        (out, rest)
    }

    /// Without the coordinator: a distribution picks the prefix, a semaphore per prefix
    /// limits concurrency; a failed object is tried on the next prefix (up to 3 moves).
    async fn uncoordinated(&self, items: Vec<UploadItem>, prefixes: &[String]) -> Vec<ObjectResult> {
        let n = prefixes.len().max(1);
        let sems: Vec<Arc<Semaphore>> =
            (0..n).map(|_| Arc::new(Semaphore::new(self.cfg.max_concurrent_uploads))).collect();
        let loads: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let rr = AtomicUsize::new(0);
        let dist = self.cfg.distribution;
        let pick = |name: &str| -> usize {
            match dist {
                Distribution::RoundRobin => rr.fetch_add(1, Ordering::Relaxed) % n,
                Distribution::HashBased => (fnv1a(name.as_bytes()) % n as u64) as usize,
                Distribution::LeastLoaded => {
                    (0..n).min_by_key(|&i| loads[i].load(Ordering::Relaxed)).expect("at least one prefix")
                }
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut out = Vec::new();
        // All prefixes' slots: least-loaded waits for any slot, so a stuck prefix does not
        // hold back the others.
        let any = Arc::new(Semaphore::new(n * self.cfg.max_concurrent_uploads));
        for item in items {
            let any_permit = any.clone().acquire_owned().await.expect("semaphore open");
            let first = pick(&item.name);
            // Waiting here bounds the tasks alive at once.
            let permit = sems[first].clone().acquire_owned().await.expect("semaphore open");
            loads[first].fetch_add(1, Ordering::Relaxed);
            let (client, bucket, prefixes, sems, loads) =
                (self.client.clone(), self.bucket.clone(), prefixes.to_vec(), sems.clone(), loads.clone());
            tasks.spawn(async move {
                let mut at = first;
                let mut permit = Some(permit);
                let mut last_err = String::new();
                let t0 = Instant::now();
                for moves in 0..=3u32 {
                    let p = match permit.take() {
                        Some(p) => p,
                        None => {
                            let p = sems[at].clone().acquire_owned().await.expect("semaphore open");
                            loads[at].fetch_add(1, Ordering::Relaxed);
                            p
                        }
                    };
                    let key = format!("{}{}", prefixes[at], item.name);
                    let r = put_file(&client, &bucket, &key, &item.path).await;
                    loads[at].fetch_sub(1, Ordering::Relaxed);
                    drop(p);
                    match r {
                        Ok(bytes) => {
                            drop(any_permit);
                            let secs = t0.elapsed().as_secs_f64();
                            return ObjectResult { name: item.name, key, bytes, moves, secs, error: None };
                        }
                        Err(e) => last_err = e.to_string(),
                    }
                    at = (at + 1) % prefixes.len();
                }
                let secs = t0.elapsed().as_secs_f64();
                drop(any_permit);
                ObjectResult { name: item.name, key: String::new(), bytes: 0, moves: 3, secs, error: Some(last_err) }
            });
            while let Some(r) = tasks.try_join_next() {
                out.extend(r.ok());
            }
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_make_the_documented_prefixes() {
        let h = PrefixPattern::Hash { root: "archives".into() }.prefixes(4);
        assert_eq!(h, ["archives/00/", "archives/40/", "archives/80/", "archives/c0/"]);
        assert_eq!(PrefixPattern::Hash { root: String::new() }.prefixes(2), ["00/", "80/"]);
        assert_eq!(PrefixPattern::Sequential { root: "archives".into() }.prefixes(2)[1], "archives/batch-0001/");
        let d: PrefixPattern = "date:2026-11-21".parse().unwrap();
        assert_eq!(d.prefixes(1), ["archives/2026-11-21/part-00/"]);
        let c: PrefixPattern = "custom:a,b/".parse().unwrap();
        assert_eq!(c.prefixes(8), ["a/", "b/"]);
        assert!("zigzag".parse::<PrefixPattern>().is_err());
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }
}
