//! `ship`: walk, plan, and for each suitcase run three stages at once — pack (tar + hash,
//! blocking thread) -> compress frames (blocking pool, in order) -> multipart upload
//! (the adaptive client) — and the inventory, the commit point, goes up once every suitcase
//! is packed and is completed once every one is in (see [`super::commit`]). A journal makes
//! every step resumable; nothing touches local disk but the journal.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use s3opt::coordination::{CoordinationConfig, LeaseOutcome, PipelineCoordinator};
use s3opt::{OptimizedS3Client, PutOptions, ResumePoint};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::codec::Codec;
use super::commit;
use super::inventory::{
    self, Entry, Frame, INVENTORY_NAME, Inventory, Kind, PLAIN_INVENTORY_NAME, Skipped, Suitcase, Totals,
};
use super::journal::{self, Journal, Settings, SuitcaseRecord};
use super::pack::{PackProgress, Packed, RawFrame, pack};
use super::{ArchiveError, Result, join_key, plan, walk};

/// What to ship and how.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub source: PathBuf,
    pub bucket: String,
    /// Archive prefix (may be empty).
    pub prefix: String,
    pub codec: Codec,
    pub level: i32,
    /// Cap on a suitcase's tar bytes.
    pub suitcase_size: u64,
    /// Uncompressed bytes per frame (the unit of a ranged read).
    pub frame_size: u64,
    /// Storage class, encryption (applied to suitcases; the inventory is always STANDARD).
    pub put: PutOptions,
    /// Fail instead of skipping files that vanish, change or cannot be read.
    pub strict: bool,
    /// Continue an interrupted run (false: discard it and start over).
    pub resume: bool,
    /// Where journals live.
    pub state_dir: PathBuf,
    /// Suitcases packed and uploaded at once.
    pub parallel: usize,
    /// Key prefixes to spread suitcases over through the cross-prefix coordinator;
    /// 0 = automatic (8 when there are at least 8 suitcases, else none).
    pub prefixes: usize,
    /// The coordinator's scheduling strategy.
    pub strategy: s3opt::coordination::Strategy,
    /// Entries left out of the walk.
    pub exclude: walk::Exclude,
}

/// Memory one packing suitcase holds outside the client's buffer pool, in frames: the one
/// being filled, one queued, one per compression worker (in and out), two compressed ones
/// queued for the upload and the one it is reading. It is reserved from the client's
/// memory budget while the suitcase packs (see [`pipeline_reservation`]).
pub const PIPELINE_FRAMES: u64 = 12;

/// How many suitcases pack at once under a memory budget of `budget` bytes: `parallel`,
/// but no more than fit their [`PIPELINE_FRAMES`] in half the budget (at least one). A
/// 16 MiB budget with 3 packers of 2 MiB frames peaked at 88 MiB RSS.
pub fn packers_within(budget: u64, parallel: usize, frame_size: u64) -> usize {
    let fit = budget / (2 * PIPELINE_FRAMES * frame_size.max(1));
    parallel.clamp(1, usize::try_from(fit).unwrap_or(usize::MAX).max(1))
}

/// What one packing suitcase reserves of a client's memory budget of `budget` bytes:
/// [`PIPELINE_FRAMES`] frames, but never more than a quarter of the budget between all
/// `packers`, so that the rest always holds parts in flight, whose completion frees the
/// memory a packer waiting for its reservation needs (a smaller reservation under a tiny
/// budget means fewer frames accounted than may be held, not a deadlock).
pub fn pipeline_reservation(budget: u64, packers: usize, frame_size: u64) -> u64 {
    (PIPELINE_FRAMES * frame_size).min(budget / (4 * packers.max(1) as u64))
}

/// The packing slots of one ship and what each takes of the client's memory budget.
struct Packers {
    slots: tokio::sync::Semaphore,
    share: u64,
}

impl Packers {
    fn new(client: &OptimizedS3Client, o: &ShipOptions) -> Self {
        let budget = client.memory_budget();
        let n = packers_within(budget, o.parallel, o.frame_size);
        Self { slots: tokio::sync::Semaphore::new(n), share: pipeline_reservation(budget, n, o.frame_size) }
    }

    /// Waits for a slot, then for its share of the budget; both are held until dropped.
    async fn enter(&self, client: &OptimizedS3Client) -> (tokio::sync::SemaphorePermit<'_>, s3opt::MemoryReservation) {
        let slot = self.slots.acquire().await.expect("the semaphore is never closed");
        (slot, client.reserve_memory(self.share).await)
    }
}

/// Prefix spreading used when `prefixes` is automatic.
const AUTO_PREFIXES: usize = 8;

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct ShipProgress {
    pub pack: PackProgress,
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
}

/// What a ship did.
#[derive(Debug, Clone, Serialize)]
pub struct ShipReport {
    pub archive: String,
    pub inventory_key: String,
    /// The archive already held exactly this tree; nothing was sent.
    pub up_to_date: bool,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub suitcases: usize,
    pub skipped: Vec<Skipped>,
    /// Entries left out by `--exclude` (a directory counts once).
    pub excluded: u64,
    /// Suitcases an interrupted run had finished.
    pub resumed_suitcases: usize,
    /// Parts of unfinished suitcases an interrupted run had sent (not sent again).
    pub resumed_parts: u32,
    pub resumed_bytes: u64,
    /// Key prefixes the suitcases were spread over (empty: not spread).
    pub prefixes: Vec<String>,
    /// The coordinator's measurements, when suitcases were spread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<s3opt::coordination::CoordinationMetrics>,
}

fn destination(o: &ShipOptions) -> String {
    format!("s3://{}/{}", o.bucket, o.prefix.trim_end_matches('/'))
}

fn source_of(o: &ShipOptions) -> Result<(PathBuf, String)> {
    let source =
        std::fs::canonicalize(&o.source).map_err(|e| ArchiveError::Source { path: o.source.clone(), source: e })?;
    let text = source.to_str().ok_or_else(|| ArchiveError::Usage("source path is not UTF-8".into()))?.to_owned();
    Ok((source, text))
}

/// A suitcase's name: `s-RUN-NNNNNN.ext` (`s-NNNNNN.ext` for a journal from before run ids).
/// The run id keeps a run from ever overwriting another run's suitcases.
fn suitcase_name(codec: Codec, run: &str, index: usize) -> String {
    format!("{}{index:06}.{}", suitcase_stem(run), codec.extension())
}

/// What every suitcase name of run `run` begins with.
fn suitcase_stem(run: &str) -> String {
    if run.is_empty() { "s-".into() } else { format!("s-{run}-") }
}

fn suitcase_key(codec: Codec, run: &str, index: usize) -> String {
    format!("suitcases/{}", suitcase_name(codec, run, index))
}

/// `full` (an object key) relative to the archive prefix.
fn relative_key(prefix: &str, full: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() { full.to_owned() } else { full.strip_prefix(&format!("{p}/")).unwrap_or(full).to_owned() }
}

/// How many key prefixes a plan's suitcases are spread over (`None`: not spread). A small
/// tree's pieces are too few and too small for prefix limits to matter, and the
/// coordinator's per-prefix slow start held 40 pieces on lossy to 5-7 in flight (4.0 s
/// instead of 2.8 s): they are spread only when asked (--prefixes). Small suitcases the
/// user asked for (--suitcase-size) are not pieces.
fn spread_over(o: &ShipOptions, plan: &[Vec<walk::Item>]) -> Option<usize> {
    let auto_pieces = plan::is_pieces(plan) && o.suitcase_size > plan::MAX_PIECE;
    let n = match o.prefixes {
        0 if !auto_pieces && plan.len() >= AUTO_PREFIXES => AUTO_PREFIXES,
        0 => return None,
        n => n.min(256),
    };
    (n >= 2).then_some(n)
}

/// The coordinator that spreads a plan's suitcases over key prefixes, if spreading applies:
/// `suitcases/00/` .. `suitcases/e0/` (hex, evenly over the first byte) under the archive.
fn coordinator_for(
    client: &OptimizedS3Client,
    o: &ShipOptions,
    plan: &[Vec<walk::Item>],
) -> Option<PipelineCoordinator> {
    let n = spread_over(o, plan)?;
    let cfg = CoordinationConfig { strategy: o.strategy, ..CoordinationConfig::default() };
    let coordinator = match PipelineCoordinator::new(cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the coordinator; suitcases go under one prefix");
            return None;
        }
    };
    for i in 0..n {
        coordinator.register_prefix(&join_key(&o.prefix, &format!("suitcases/{:02x}/", i * 256 / n)), 0.0);
    }
    coordinator.attach(client);
    coordinator.start(None).ok()?;
    Some(coordinator)
}

/// Ships `o.source` to `s3://o.bucket/o.prefix`.
pub async fn ship(client: &OptimizedS3Client, o: &ShipOptions, progress: Arc<ShipProgress>) -> Result<ShipReport> {
    let (source, source_text) = source_of(o)?;
    let dest = destination(o);
    let dir = journal::dir_for(&o.state_dir, &source_text, &dest);
    let settings = Settings {
        source: source_text,
        destination: dest.clone(),
        codec: o.codec,
        level: o.level,
        suitcase_size: o.suitcase_size,
        frame_size: o.frame_size,
        exclude: o.exclude.patterns().to_vec(),
    };
    // Whether the destination already holds an archive is asked at once. The answer is
    // awaited before anything is sent, except for a tree shipped from here for the first
    // time and not spread over prefixes: its suitcases go up while the answer comes (it
    // costs a round trip and a connection before the first PUT: a tenth of a small tree's
    // ship on a 60 ms path, 0.13 s of a 10,000-file one), and the run id in their names
    // keeps them off any other archive's suitcases. If an archive is found, what the run
    // sent meanwhile is removed (`discard_journal`).
    let look = tokio::spawn(inventory_at(client.clone(), o.bucket.clone(), o.prefix.clone()));
    let (journal, racing) = match Journal::open(&dir)? {
        Some(j) if o.resume => {
            if j.settings != settings {
                return Err(ArchiveError::Usage(format!(
                    "an interrupted ship of {} to {dest} used different settings ({:?} level {}, suitcases of {} bytes, frames of {}, {}); rerun with those, or add --no-resume to start over",
                    settings.source,
                    j.settings.codec,
                    j.settings.level,
                    j.settings.suitcase_size,
                    j.settings.frame_size,
                    if j.settings.exclude.is_empty() {
                        "no --exclude".to_owned()
                    } else {
                        format!("--exclude {}", j.settings.exclude.join(" --exclude "))
                    }
                )));
            }
            if let Some(key) = settled(look.await)? {
                return found_on_resume(client, o, dest, key, j).await;
            }
            tracing::info!(dir = %dir.display(), "resuming an interrupted ship");
            (j, None)
        }
        other => {
            if let Some(j) = other {
                discard_journal(client, o, j).await?;
            }
            let (root, exclude) = (source.clone(), o.exclude.clone());
            let walked = tokio::task::spawn_blocking(move || walk::walk(&root, &exclude)).await.expect("walk task")?;
            let cap = plan::effective_cap(&walked.items, o.suitcase_size, o.parallel);
            let plan = plan::plan(walked.items, cap);
            let shipped_before = journal::shipped_marker(&o.state_dir, &settings.source, &dest).exists();
            let race = spread_over(o, &plan).is_none() && !shipped_before;
            let racing = if race {
                Some(look)
            } else {
                if let Some(key) = settled(look.await)? {
                    return archive_found(client, o, dest, key, &plan.concat()).await;
                }
                None
            };
            (Journal::create(&dir, settings, plan, walked.skipped, walked.excluded)?, racing)
        }
    };
    let journal = Arc::new(journal);
    for (items, state) in journal.plan.iter().zip(&journal.state) {
        let files = items.iter().filter(|i| i.kind == Kind::File);
        progress.total_files.fetch_add(files.clone().count() as u64, Relaxed);
        progress.total_bytes.fetch_add(files.clone().map(|i| i.size).sum(), Relaxed);
        if state.done.is_some() {
            progress.pack.files.fetch_add(files.clone().count() as u64, Relaxed);
            progress.pack.bytes.fetch_add(files.map(|i| i.size).sum(), Relaxed);
        }
    }

    let n = journal.plan.len();
    let pieces = plan::is_pieces(&journal.plan);
    // Their connections are dialled while the destination is checked: each piece goes up as
    // one PUT, a suitcase as parts.
    let to_send = journal.plan.iter().zip(&journal.state).filter(|(_, s)| s.done.is_none());
    client.expect_requests(if pieces {
        to_send.count()
    } else {
        let bytes: u64 = to_send.flat_map(|(items, _)| items).map(|i| i.size).sum();
        usize::try_from(bytes.div_ceil(client.part_size().max(1))).unwrap_or(usize::MAX)
    });
    let coordinator = coordinator_for(client, o, &journal.plan);
    let coord = coordinator.as_ref();
    // `parallel` suitcases are packed at once (fewer under a small budget); a suitcase
    // whose data is all handed to the uploader frees its packing slot, so the next one
    // starts while its last parts and its completion are still under way (the link never
    // idles between suitcases).
    let packers = Arc::new(Packers::new(client, o));
    // A small tree's pieces are single PUTs of a few MiB: they go up side by side.
    let uploads_at_once =
        if pieces { (2 * plan::SMALL_TREE_PIECES as usize).max(2 * o.parallel.max(1)) } else { 2 * o.parallel.max(1) };
    // The inventory is staged as soon as every suitcase is packed, and committed last.
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let inv_key = join_key(&o.prefix, INVENTORY_NAME);
    let (early, early_rx) = mpsc::unbounded_channel();
    let build: commit::Build = {
        let (o, source, skipped, excluded, created) =
            (o.clone(), journal.settings.source.clone(), journal.skipped.clone(), journal.excluded, created.clone());
        Box::new(move |records| {
            let mut inv = inventory_of(&o, source, skipped, excluded, created, records);
            (inv.to_stored(), inventory_options(&o, &inv))
        })
    };
    let stager =
        commit::start(client.clone(), (o.bucket.clone(), inv_key.clone()), build, journal.clone(), n, early_rx);
    let uploading = futures::stream::iter(0..n)
        .map(|i| {
            let (journal, progress, source) = (journal.clone(), progress.clone(), source.clone());
            let (packers, early) = (packers.clone(), early.clone());
            async move {
                ship_suitcase(client, o, &source, &journal, i, progress, &packers, coord, &early)
                    .await
                    .map(|(r, x)| (i, r, x))
            }
        })
        .buffer_unordered(uploads_at_once)
        .collect::<Vec<Result<(usize, SuitcaseRecord, Resumed)>>>();
    let results = match racing {
        None => uploading.await,
        Some(look) => match race(uploading, look).await {
            Ok(results) => results,
            Err(found) => {
                // The destination holds an archive (or could not be checked): what this run
                // sent meanwhile goes, and the journal with it (read back from disk: a task
                // of a dropped upload may still hold the shared one for a moment).
                stager.discard().await;
                let items = journal.plan.concat();
                drop(journal);
                let discarded = match Journal::open(&dir) {
                    Ok(Some(j)) => discard_journal(client, o, j).await.map(drop),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                let key = found?;
                discarded?;
                return archive_found(client, o, dest, key, &items).await;
            }
        },
    };
    if let Some(pos) = results.iter().position(|r| matches!(r, Err(ArchiveError::Changed { .. }))) {
        // --strict stopped the run: leave nothing behind (no uploads, no suitcases, no journal).
        let err = results.into_iter().nth(pos).expect("position is valid").expect_err("an error");
        stager.discard().await;
        let journal = Arc::try_unwrap(journal).expect("no suitcase task holds the journal");
        let reopened = Journal::open(&dir)?.unwrap_or(journal);
        discard_journal(client, o, reopened).await?;
        return Err(err);
    }
    let mut records: Vec<Option<SuitcaseRecord>> = vec![None; n];
    let mut resumed = Resumed::default();
    for r in results {
        let (i, record, x) = match r {
            Ok(done) => done,
            Err(e) => {
                stager.discard().await;
                return Err(e);
            }
        };
        records[i] = Some(record);
        resumed.suitcases += x.suitcases;
        resumed.parts += x.parts;
        resumed.bytes += x.bytes;
    }
    let records: Vec<SuitcaseRecord> = records.into_iter().map(|r| r.expect("every suitcase finished")).collect();

    let mut inv =
        inventory_of(o, journal.settings.source.clone(), journal.skipped.clone(), journal.excluded, created, records);
    stager.commit(client, (&o.bucket, &inv_key), || (inv.to_stored(), inventory_options(o, &inv))).await?;
    let journal = Arc::try_unwrap(journal).expect("no suitcase task holds the journal");
    let shipped = journal.settings.source.clone();
    journal.remove()?;
    journal::mark_shipped(&o.state_dir, &shipped, &dest);
    let mut report = report_of(&inv, dest, inv_key, false, resumed);
    if let Some(c) = coordinator {
        report.coordination = Some(c.metrics());
        c.stop().await;
    }
    let mut prefixes: Vec<String> =
        inv.suitcases.iter().filter_map(|s| s.key.rsplit_once('/').map(|(p, _)| format!("{p}/"))).collect();
    prefixes.sort();
    prefixes.dedup();
    report.prefixes = prefixes;
    Ok(report)
}

/// The inventory of a ship whose suitcases are `records` (in plan order).
fn inventory_of(
    o: &ShipOptions,
    source: String,
    mut skipped: Vec<Skipped>,
    excluded: u64,
    created: String,
    records: Vec<SuitcaseRecord>,
) -> Inventory {
    let mut entries: Vec<Entry> = Vec::new();
    let mut suitcases: Vec<Suitcase> = Vec::new();
    for r in records {
        entries.extend(r.entries);
        skipped.extend(r.skipped);
        suitcases.push(r.suitcase);
    }
    Inventory {
        format: inventory::FORMAT.into(),
        version: inventory::VERSION,
        digest: String::new(),
        created,
        tool: format!("cargoship {}", env!("CARGO_PKG_VERSION")),
        source,
        codec: o.codec,
        level: o.level,
        hash: "blake3".into(),
        totals: Totals::of(&entries, &suitcases),
        suitcases,
        entries,
        skipped,
        exclude: o.exclude.patterns().to_vec(),
        excluded,
    }
}

/// How the inventory goes up: STANDARD, encrypted as the suitcases are, with the restore hint.
fn inventory_options(o: &ShipOptions, inv: &Inventory) -> PutOptions {
    PutOptions {
        content_type: Some("application/zstd".into()),
        sse: o.put.sse.clone(),
        sse_kms_key_id: o.put.sse_kms_key_id.clone(),
        metadata: restore_hint(inv),
        ..Default::default()
    }
}

/// What a restore reads from the inventory's HEAD to dial its suitcases' connections while
/// the inventory itself comes down (see [`super::reader::ArchiveReader::open_to_restore_all`]).
fn restore_hint(inv: &Inventory) -> std::collections::HashMap<String, String> {
    [
        (super::reader::SUITCASES_META.to_owned(), inv.suitcases.len().to_string()),
        (super::reader::STORED_BYTES_META.to_owned(), inv.totals.stored_bytes.to_string()),
    ]
    .into()
}

fn report_of(inv: &Inventory, archive: String, inventory_key: String, up_to_date: bool, r: Resumed) -> ShipReport {
    let t = &inv.totals;
    ShipReport {
        archive,
        inventory_key,
        up_to_date,
        files: t.files,
        dirs: t.dirs,
        symlinks: t.symlinks,
        bytes: t.bytes,
        stored_bytes: t.stored_bytes,
        suitcases: inv.suitcases.len(),
        skipped: inv.skipped.clone(),
        excluded: inv.excluded,
        resumed_suitcases: r.suitcases,
        resumed_parts: r.parts,
        resumed_bytes: r.bytes,
        prefixes: Vec::new(),
        coordination: None,
    }
}

/// The key of the inventory at `prefix`, if there is one. One listing finds either name
/// (the plain one is a prefix of the compressed one).
async fn inventory_at(client: OptimizedS3Client, bucket: String, prefix: String) -> Result<Option<String>> {
    let plain = join_key(&prefix, PLAIN_INVENTORY_NAME);
    let names = [plain.clone(), join_key(&prefix, INVENTORY_NAME)];
    let listing = client.list(&bucket, &plain, None).await?;
    Ok(listing.objects.into_iter().map(|e| e.key).find(|k| names.contains(k)))
}

/// The answer of [`inventory_at`]'s task.
fn settled(joined: std::result::Result<Result<Option<String>>, tokio::task::JoinError>) -> Result<Option<String>> {
    joined.expect("the destination check does not panic")
}

/// Runs `uploads` while the destination is checked; stops them (by dropping them) as soon
/// as the check finds an inventory at `Err(Ok(key))` or fails (`Err(Err(e))`).
async fn race<T>(
    uploads: impl std::future::Future<Output = T>,
    mut look: JoinHandle<Result<Option<String>>>,
) -> std::result::Result<T, Result<String>> {
    let mut uploads = std::pin::pin!(uploads);
    let (done, found) = tokio::select! {
        found = &mut look => (None, settled(found)),
        done = &mut uploads => (Some(done), settled(look.await)),
    };
    match found {
        Ok(None) => Ok(match done {
            Some(done) => done,
            None => uploads.await,
        }),
        Ok(Some(key)) => Err(Ok(key)),
        Err(e) => Err(Err(e)),
    }
}

/// An archive is at the destination: shipping the same tree again has nothing to do; any
/// other tree is refused.
async fn archive_found(
    client: &OptimizedS3Client,
    o: &ShipOptions,
    dest: String,
    key: String,
    items: &[walk::Item],
) -> Result<ShipReport> {
    let existing = super::reader::fetch_inventory(client, &o.bucket, &o.prefix).await?;
    if !same_tree(&existing, items) {
        return Err(ArchiveError::Exists(dest));
    }
    let (_, source) = source_of(o)?;
    journal::mark_shipped(&o.state_dir, &source, &dest);
    Ok(report_of(&existing, dest, key, true, Resumed::default()))
}

/// An inventory turned up at the destination of an interrupted run: its own (committed just
/// before the run was stopped: nothing left to do) or another run's (refused; the journal
/// stays for `--no-resume` to discard).
async fn found_on_resume(
    client: &OptimizedS3Client,
    o: &ShipOptions,
    dest: String,
    key: String,
    j: Journal,
) -> Result<ShipReport> {
    let existing = super::reader::fetch_inventory(client, &o.bucket, &o.prefix).await?;
    let ours = j
        .state
        .iter()
        .filter_map(|s| s.done.as_ref())
        .any(|d| existing.suitcases.iter().any(|s| s.key == d.suitcase.key));
    if !ours {
        return Err(ArchiveError::Usage(format!(
            "another archive was written at {dest} since this ship was interrupted; ship to another prefix, or add --no-resume to discard the interrupted run"
        )));
    }
    let source = j.settings.source.clone();
    j.remove()?;
    journal::mark_shipped(&o.state_dir, &source, &dest);
    Ok(report_of(&existing, dest, key, true, Resumed::default()))
}

/// Whether an archive holds exactly the tree as walked now (names, kinds, sizes, times,
/// modes, link targets): then shipping it again has nothing to do.
fn same_tree(inv: &Inventory, items: &[walk::Item]) -> bool {
    inv.skipped.is_empty()
        && inv.entries.len() == items.len()
        && inv.entries.iter().zip(items).all(|(e, i)| {
            (e.path.as_str(), e.kind, e.size, e.mtime, e.mtime_nsec, e.mode, e.target.as_deref())
                == (i.path.as_str(), i.kind, i.size, i.mtime, i.mtime_nsec, i.mode, i.target.as_deref())
        })
}

/// Where each suitcase's record goes as soon as it is known, for the inventory's stager
/// (see [`super::commit`]).
type Early = mpsc::UnboundedSender<(usize, SuitcaseRecord)>;

#[derive(Debug, Default)]
struct Resumed {
    suitcases: usize,
    parts: u32,
    bytes: u64,
}

#[allow(clippy::too_many_arguments)]
async fn ship_suitcase(
    client: &OptimizedS3Client,
    o: &ShipOptions,
    source: &Path,
    journal: &Arc<Journal>,
    index: usize,
    progress: Arc<ShipProgress>,
    packers: &Packers,
    coordinator: Option<&PipelineCoordinator>,
    early: &Early,
) -> Result<(SuitcaseRecord, Resumed)> {
    let state = &journal.state[index];
    if let Some(done) = &state.done {
        let _ = early.send((index, done.clone()));
        return Ok((done.clone(), Resumed { suitcases: 1, ..Default::default() }));
    }
    // A resumed upload keeps its key; a new one asks the coordinator for a prefix.
    let mut lease = None;
    let key = match (&state.key, coordinator) {
        (Some(k), _) => k.clone(),
        (None, Some(c)) => {
            let estimate = journal.plan[index].iter().map(|i| i.size).sum();
            match c.acquire(estimate).await {
                Ok(l) => {
                    let full = l.key(&suitcase_name(o.codec, &journal.run, index));
                    lease = Some(l);
                    relative_key(&o.prefix, &full)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "coordinator unavailable; suitcase goes under the plain prefix");
                    suitcase_key(o.codec, &journal.run, index)
                }
            }
        }
        (None, None) => suitcase_key(o.codec, &journal.run, index),
    };
    let resume = state.upload_id.clone().map(|upload_id| ResumePoint { upload_id, parts: state.parts.clone() });
    let first =
        upload_suitcase(client, o, source, journal, index, &key, resume, progress.clone(), packers, early).await;
    let (record, put) = match first {
        Err(ArchiveError::S3(e)) if state.upload_id.is_some() && restartable(&e) => {
            tracing::warn!(suitcase = index, error = %e, "cannot continue the interrupted upload; sending this suitcase again");
            let old = state.upload_id.as_deref().unwrap_or_default();
            let _ = client.abort_multipart_upload(&o.bucket, &join_key(&o.prefix, &key), old).await;
            journal.restart(index as u32);
            upload_suitcase(client, o, source, journal, index, &key, None, progress, packers, early).await?
        }
        Err(e) => {
            if let Some(l) = lease {
                l.finish(LeaseOutcome::Failed);
            }
            return Err(e);
        }
        Ok(done) => done,
    };
    journal.suitcase_done(index as u32, &record);
    if let Some(l) = lease {
        l.finish(LeaseOutcome::Uploaded { bytes: record.suitcase.size });
    }
    Ok((record, Resumed { suitcases: 0, parts: put.resumed_parts, bytes: put.resumed_bytes }))
}

/// Errors after which an interrupted upload is abandoned and the suitcase sent afresh.
/// s3s-fs (the embedded store) answers AccessDenied, not NoSuchUpload, for an upload that
/// no longer exists (one completed just before the run was killed): sending the suitcase
/// again is always safe, and a real permission problem fails again on the fresh upload.
fn restartable(e: &s3opt::Error) -> bool {
    matches!(e, s3opt::Error::ResumeMismatch { .. } | s3opt::Error::AccessDenied { .. })
        || matches!(e, s3opt::Error::Service { code, .. } if code == "NoSuchUpload")
}

#[allow(clippy::too_many_arguments)]
async fn upload_suitcase(
    client: &OptimizedS3Client,
    o: &ShipOptions,
    source: &Path,
    journal: &Arc<Journal>,
    index: usize,
    key: &str,
    resume: Option<ResumePoint>,
    progress: Arc<ShipProgress>,
    packers: &Packers,
    early: &Early,
) -> Result<(SuitcaseRecord, s3opt::PutResult)> {
    // The pipeline's frames count against the memory budget only while it packs: once a
    // suitcase's data is all handed to the upload, its share goes to the parts in flight.
    let (slot, mut reserved) = packers.enter(client).await;
    let items = journal.plan[index].clone();
    let raw_bytes: u64 = items.iter().map(|i| i.size).sum();
    let (raw_tx, raw_rx) = mpsc::channel::<RawFrame>(2);
    let (body_tx, mut body_rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let (root, frame_size, strict) = (source.to_owned(), o.frame_size as usize, o.strict);
    let packer = tokio::task::spawn_blocking(move || pack(&root, &items, frame_size, strict, &progress.pack, raw_tx));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let compress = async move {
        let r =
            compress_stage(raw_rx, packer, o.codec, o.level, workers, body_tx, &mut reserved, frame_size as u64).await;
        drop((slot, reserved));
        r
    };
    let reader = tokio_util::io::StreamReader::new(futures::stream::poll_fn(move |cx| body_rx.poll_recv(cx)));
    let mut opts = o.put.clone();
    opts.content_length = None;
    opts.content_type = Some(
        match o.codec {
            Codec::Zstd => "application/zstd",
            Codec::Gzip => "application/gzip",
            Codec::None => "application/x-tar",
        }
        .into(),
    );
    opts.metadata.insert("cargoship-original-size".into(), raw_bytes.to_string());
    opts.metadata.insert("cargoship-compression".into(), format!("{:?}:{}", o.codec, o.level).to_lowercase());
    opts.metadata.insert("cargoship-format".into(), format!("suitcase-v{}", inventory::VERSION));
    opts.journal = Some(journal.for_suitcase(index as u32, key, resume));
    let full_key = join_key(&o.prefix, key);
    let upload = client.put_object(&o.bucket, &full_key, reader, opts);
    // The suitcase's record is complete once it is packed: it goes to the inventory's
    // stager then, while the upload's last parts are still out.
    let record = async {
        let (frames, packed, crc) = compress.await?;
        let record = record_of(index, key, frames, packed, crc);
        let _ = early.send((index, record.clone()));
        Ok(record)
    };
    let (up, rec) = tokio::join!(upload, record);
    let (record, put) = match (rec, up) {
        // Compression stopped because the upload did: the upload's error says why (and
        // decides whether the suitcase is sent afresh).
        (Err(ArchiveError::Pack(m)), Err(e)) if m == UPLOAD_STOPPED => return Err(e.into()),
        (rec, up) => (rec?, up?),
    };
    if put.checksum_crc64nvme != record.suitcase.crc64nvme {
        return Err(ArchiveError::Pack(format!(
            "suitcase {key}: the upload's CRC64NVME {} is not the packed bytes' {}",
            put.checksum_crc64nvme, record.suitcase.crc64nvme
        )));
    }
    Ok((record, put))
}

/// What the inventory holds for suitcase `index` at `key`, packed into `frames` with CRC64NVME `crc`.
fn record_of(index: usize, key: &str, frames: Vec<Frame>, packed: Packed, crc: String) -> SuitcaseRecord {
    let files = packed.entries.iter().filter(|e| e.kind == Kind::File).count() as u64;
    let stored = frames.last().map(|f| f.stored_offset() + f.stored_len()).unwrap_or(0);
    let mut entries = packed.entries;
    for e in entries.iter_mut().filter(|e| e.kind == Kind::File) {
        let off = e.offset.expect("packed files have offsets");
        e.suitcase = Some(index as u32);
        e.frame = Some(frames.partition_point(|f| f.tar_offset() + f.tar_len() <= off) as u32);
    }
    let suitcase =
        Suitcase { key: key.to_owned(), size: stored, tar_size: packed.tar_size, crc64nvme: crc, files, frames };
    SuitcaseRecord { suitcase, entries, skipped: packed.skipped }
}

/// How the compression stage fails when the upload stops taking its output.
const UPLOAD_STOPPED: &str = "the upload stopped";

/// Frames of a suitcase the upload may hold once they are passed on: two queued, one it is
/// reading.
const BODY_FRAMES: u64 = 3;

/// Compresses frames on the blocking pool (`workers` at once), passing them on in order
/// and building the frame index. A packing failure reaches the upload as a stream error,
/// so a suitcase is never completed short. Once every file is read, the pipeline's
/// reservation of the memory budget shrinks with each frame passed on to what it can still
/// hold: the suitcase's last parts need that memory, and while it stayed reserved they
/// waited for the round of parts in flight to end and then went alone (a 10,000-file ship
/// on lossy, 41 parts in flight: 3 parts of 5 MiB started 4.5 s after the rest; 7 runs took
/// 18.6-24.5 s, median 20.7, before, and 18.5-22.6 s, median 18.6, after).
#[allow(clippy::too_many_arguments)]
async fn compress_stage(
    mut raw: mpsc::Receiver<RawFrame>,
    packer: JoinHandle<Result<Packed>>,
    codec: Codec,
    level: i32,
    workers: usize,
    body: mpsc::Sender<io::Result<Bytes>>,
    reserved: &mut s3opt::MemoryReservation,
    frame_size: u64,
) -> Result<(Vec<Frame>, Packed, String)> {
    let mut pending = FuturesOrdered::new();
    let mut frames = Vec::new();
    // The suitcase's CRC64NVME as packed: the inventory is made (and staged) from it before
    // the upload, which computes its own from the parts, ends.
    let mut crc = s3opt::integrity::CombinedCrc::new(s3opt::integrity::Algorithm::Crc64Nvme);
    let mut stored = 0u64;
    let mut open = true;
    let stopped = || ArchiveError::Pack(UPLOAD_STOPPED.into());
    loop {
        while open && pending.len() < workers {
            match raw.recv().await {
                Some(f) => pending.push_back(tokio::task::spawn_blocking(move || {
                    let len = f.data.len() as u64;
                    codec.compress(level, &f.data).map(|c| (f.tar_offset, len, c))
                })),
                None => open = false,
            }
        }
        let Some(done) = pending.next().await else { break };
        let (tar_offset, tar_len, data) =
            done.expect("compress task").map_err(|e| ArchiveError::Pack(e.to_string()))?;
        frames.push(Frame(stored, data.len() as u64, tar_offset, tar_len));
        stored += data.len() as u64;
        crc.push(s3opt::integrity::crc64nvme_b64(&data).0, data.len() as u64);
        body.send(Ok(Bytes::from(data))).await.map_err(|_| stopped())?;
        if !open {
            reserved.shrink_to((pending.len() as u64 + BODY_FRAMES) * frame_size);
        }
    }
    match packer.await.expect("packer task") {
        Ok(packed) => Ok((frames, packed, crc.b64())),
        Err(err) => {
            let _ = body.send(Err(io::Error::other(err.to_string()))).await;
            Err(err)
        }
    }
}

/// What discarding an interrupted ship removed.
#[derive(Debug, Default, Serialize)]
pub struct Discarded {
    pub aborted_uploads: usize,
    pub deleted_suitcases: usize,
}

/// Discards the interrupted ship of `o.source` to `o`'s destination: aborts its multipart
/// uploads, deletes the suitcases it finished (nothing references them: no inventory was
/// written) and removes its journal.
pub async fn discard(client: &OptimizedS3Client, o: &ShipOptions) -> Result<Discarded> {
    let (_, source_text) = source_of(o)?;
    let dest = destination(o);
    let dir = journal::dir_for(&o.state_dir, &source_text, &dest);
    let Some(j) = Journal::open(&dir)? else {
        return Err(ArchiveError::Usage(format!("nothing to discard: no interrupted ship of {source_text} to {dest}")));
    };
    discard_journal(client, o, j).await
}

/// Removes what a run sent (its finished suitcases, its open uploads) and its journal. A
/// single PUT or a CreateMultipartUpload cut off mid-flight may still have landed
/// unrecorded, so every suitcase key the run planned is deleted too, and every multipart
/// upload open under its names aborted (when its keys carry a run id: plain names could be
/// another run's).
async fn discard_journal(client: &OptimizedS3Client, o: &ShipOptions, j: Journal) -> Result<Discarded> {
    let (bucket, prefix) = (&o.bucket, &o.prefix);
    let mut out = Discarded::default();
    let mut deletes: Vec<String> = Vec::new();
    for state in &j.state {
        let key = match (&state.done, &state.key) {
            (Some(done), _) => join_key(prefix, &done.suitcase.key),
            (None, Some(key)) => join_key(prefix, key),
            (None, None) => continue,
        };
        if state.done.is_some() {
            deletes.push(key);
            out.deleted_suitcases += 1;
        } else if let Some(id) = &state.upload_id {
            match client.abort_multipart_upload(bucket, &key, id).await {
                Ok(()) => out.aborted_uploads += 1,
                Err(s3opt::Error::Service { code, .. }) if code == "NoSuchUpload" => {}
                Err(s3opt::Error::NoSuchKey { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    // A staged inventory that was never committed (one that was is gone: any error is fine).
    let inv_key = join_key(prefix, INVENTORY_NAME);
    for id in &j.inventory_uploads {
        if client.abort_multipart_upload(bucket, &inv_key, id).await.is_ok() {
            out.aborted_uploads += 1;
        }
    }
    if !j.run.is_empty() {
        let mine = join_key(prefix, &format!("suitcases/{}", suitcase_stem(&j.run)));
        let open = match client.list_multipart_uploads(bucket, &mine).await {
            Ok(open) => open,
            Err(s3opt::Error::NoSuchBucket { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for u in open {
            match client.abort_multipart_upload(bucket, &u.key, &u.upload_id).await {
                Ok(()) => out.aborted_uploads += 1,
                Err(s3opt::Error::Service { code, .. }) if code == "NoSuchUpload" => {}
                Err(e) => return Err(e.into()),
            }
        }
        let recorded: std::collections::HashSet<String> = deletes.iter().cloned().collect();
        let planned = (0..j.plan.len()).map(|i| join_key(prefix, &suitcase_key(j.settings.codec, &j.run, i)));
        deletes.extend(planned.filter(|k| !recorded.contains(k)));
    }
    let deleted: Vec<s3opt::Result<()>> =
        futures::stream::iter(&deletes).map(|key| client.delete(bucket, key)).buffer_unordered(16).collect().await;
    for d in deleted {
        match d {
            // No bucket: nothing of the run's is there to delete.
            Ok(()) | Err(s3opt::Error::NoSuchBucket { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    j.remove()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_gives_back_its_reservation_as_its_last_frames_go() {
        let mib = 1u64 << 20;
        let client = OptimizedS3Client::new(s3opt::ClientConfig {
            endpoint_url: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            credentials: Some(("k".into(), "s".into())),
            memory_budget: 64 * mib,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut reserved = client.reserve_memory(PIPELINE_FRAMES * 2 * mib).await;
        let (raw_tx, raw_rx) = mpsc::channel::<RawFrame>(2);
        let (body_tx, mut body_rx) = mpsc::channel::<io::Result<Bytes>>(2);
        let frames = 10u64;
        let packer = tokio::task::spawn_blocking(move || {
            for i in 0..frames {
                let frame = RawFrame { tar_offset: i * 2 * mib, data: vec![i as u8; 2 * mib as usize] };
                raw_tx.blocking_send(frame).expect("the stage reads every frame");
            }
            Ok(Packed { tar_size: frames * 2 * mib, ..Default::default() })
        });
        // The upload's side: each frame as it arrives, with what the budget holds then.
        let upload = {
            let client = client.clone();
            async move {
                let mut held = Vec::new();
                while let Some(frame) = body_rx.recv().await {
                    frame.unwrap();
                    held.push(client.memory_in_use());
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                held
            }
        };
        let stage = compress_stage(raw_rx, packer, Codec::None, 0, 2, body_tx, &mut reserved, 2 * mib);
        let (done, held) = tokio::join!(stage, upload);
        let (index, _, _) = done.unwrap();
        assert_eq!(index.len(), frames as usize);
        assert_eq!(held[0], 24 * mib, "while files are read, all 12 frames stay reserved");
        // Only the reservation holds the budget here.
        assert_eq!(client.memory_in_use(), BODY_FRAMES * 2 * mib, "at the end, what the upload may still hold");
        drop(reserved);
        assert!(held.windows(2).all(|w| w[1] <= w[0]), "it only ever shrinks: {held:?}");
    }

    #[test]
    fn packers_reserve_their_frames_but_leave_most_of_a_small_budget_to_parts() {
        let mib = 1 << 20;
        // Packers of 12 x 2 MiB: 5 fit in half of 256 MiB; under 96 MiB only one does.
        assert_eq!(packers_within(256 * mib, 2, 2 * mib), 2);
        assert_eq!(packers_within(256 * mib, 8, 2 * mib), 5);
        assert_eq!(packers_within(64 * mib, 2, 2 * mib), 1);
        assert_eq!(packers_within(16 * mib, 3, 2 * mib), 1);
        assert_eq!(packers_within(16 * mib, 0, 2 * mib), 1);
        assert_eq!(pipeline_reservation(256 * mib, 2, 2 * mib), PIPELINE_FRAMES * 2 * mib);
        // 64 MiB between 2 packers: a quarter of it, 8 MiB each.
        assert_eq!(pipeline_reservation(64 * mib, 2, 2 * mib), 8 * mib);
        assert_eq!(pipeline_reservation(64 * mib, 0, 2 * mib), 16 * mib);
    }
}
