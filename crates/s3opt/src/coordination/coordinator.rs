//! [`PipelineCoordinator`]: spreads objects over registered key prefixes with the
//! [`TransferScheduler`], the [`GlobalCongestionController`] and per-prefix request pacing.
//!
//! Two ways in, sharing one in-flight accounting:
//! - **leases** ([`PipelineCoordinator::acquire`]): for objects produced one after another
//!   as streams. A lease names the prefix to put the object under and holds one slot of it
//!   until [`PrefixLease::finish`] (or drop: failure/cancel).
//! - **queues** ([`PipelineCoordinator::schedule_upload`]): bounded per-prefix queues that
//!   a dispatcher drains through an [`UploadExecutor`], moving work off failing prefixes.
//!
//! The decisions live in [`CoordinatorCore`], which is pure (time comes in as arguments);
//! this file's async wrapper only adds locking, waiting and tasks.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{Notify, oneshot, watch};

use super::config::CoordinationConfig;
use super::congestion::{CongestionSnapshot, GlobalCongestionController, PrefixHealth, SampleEffect};
use super::metrics::{CoordinationMetrics, MetricsCollector, PerformanceBaseline};
use super::scheduler::{Candidate, TransferScheduler};
use crate::client::{ObserverId, OptimizedS3Client, SampleObserver};
use crate::network::Sample;

/// Pacing tolerance: how far ahead of its paced time a request may start.
const PACING_BURST: Duration = Duration::from_millis(50);

/// One object to upload through the queues (the seed's `ScheduledUpload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledUpload {
    /// Where the data comes from (a local file for [`ParallelUploader`](super::ParallelUploader)).
    pub source: PathBuf,
    /// Key below the prefix.
    pub name: String,
    /// Higher goes first within a prefix's queue.
    pub priority: u8,
    /// Size in bytes (for scheduling and pacing).
    pub estimated_size: u64,
}

/// Errors of the coordinator.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoordinationError {
    #[error("coordinator is not running")]
    NotRunning,
    #[error("coordinator failed: {0}")]
    Failed(String),
    #[error("every prefix queue is full")]
    QueueFull,
    #[error("no prefix is registered")]
    NoPrefixes,
    #[error("upload cancelled")]
    Cancelled,
    #[error("upload failed on every prefix tried: {0}")]
    Upload(String),
    #[error("invalid coordination config: {0}")]
    Config(String),
}

/// Uploads one queued object under a prefix; returns the bytes stored.
pub trait UploadExecutor: Send + Sync + 'static {
    fn upload(&self, item: &ScheduledUpload, prefix: &str) -> BoxFuture<'static, crate::Result<u64>>;
}

/// A queued object that arrived.
#[derive(Debug, Clone, Serialize)]
pub struct UploadDone {
    pub name: String,
    pub prefix: String,
    pub key: String,
    pub bytes: u64,
    /// Times it was moved to another prefix.
    pub moves: u32,
    /// Time of the last (successful) attempt, seconds.
    pub secs: f64,
}

/// A queued object that did not arrive, handed back so the caller can fall back.
#[derive(Debug)]
pub struct UploadRejected {
    pub item: ScheduledUpload,
    pub error: CoordinationError,
}

/// Resolves when a scheduled upload is done or given back.
#[derive(Debug)]
pub struct UploadTicket {
    rx: oneshot::Receiver<Result<UploadDone, UploadRejected>>,
    item: ScheduledUpload,
}

impl UploadTicket {
    /// Waits for the outcome; an upload whose task was cancelled comes back as
    /// [`CoordinationError::Cancelled`].
    pub async fn wait(self) -> Result<UploadDone, UploadRejected> {
        let item = self.item;
        self.rx.await.unwrap_or(Err(UploadRejected { item, error: CoordinationError::Cancelled }))
    }
}

// ----------------------------------------------------------------------------------------
// The pure core

/// A queue entry: scheduling facts plus the caller's payload.
#[derive(Debug)]
pub struct Entry<T> {
    pub priority: u8,
    pub size: u64,
    /// A prefix this entry must not go back to (it failed there), if others exist.
    pub avoid: Option<usize>,
    pub enqueued: Instant,
    pub payload: T,
}

#[derive(Debug)]
struct Slot<T> {
    name: String,
    capacity_mbps: f64,
    in_flight: usize,
    queue: VecDeque<Entry<T>>,
    /// GCRA theoretical arrival time of the next request.
    tat: Option<Instant>,
    object_failures: u32,
}

/// Whether a slot can be had now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Slot granted under this prefix index.
    Now(usize),
    /// Nothing free: try again at this time (pacing), or when a slot is released (`None`).
    Later(Option<Instant>),
}

/// All decisions of the coordinator, without I/O or clock reads.
#[derive(Debug)]
pub struct CoordinatorCore<T> {
    cfg: CoordinationConfig,
    scheduler: TransferScheduler,
    congestion: GlobalCongestionController,
    metrics: MetricsCollector,
    slots: Vec<Slot<T>>,
    index: HashMap<String, usize>,
    part_size: u64,
    last_tick: Option<(Instant, u64)>,
}

impl<T> CoordinatorCore<T> {
    pub fn new(cfg: CoordinationConfig, seed: u64) -> Self {
        Self {
            scheduler: TransferScheduler::new(cfg.strategy, cfg.adaptive.learning_rate, seed),
            congestion: GlobalCongestionController::new(&cfg),
            metrics: MetricsCollector::default(),
            slots: Vec::new(),
            index: HashMap::new(),
            part_size: 8 << 20,
            last_tick: None,
            cfg,
        }
    }

    /// Part size of the client, for estimating requests per object.
    pub fn set_part_size(&mut self, n: u64) {
        self.part_size = n.max(1);
    }

    pub fn metrics_mut(&mut self) -> &mut MetricsCollector {
        &mut self.metrics
    }

    pub fn congestion(&self) -> &GlobalCongestionController {
        &self.congestion
    }

    pub fn scheduler(&self) -> &TransferScheduler {
        &self.scheduler
    }

    /// Registers a prefix (a key prefix such as `archives/3f/`); returns its index.
    pub fn register_prefix(&mut self, name: &str, capacity_mbps: f64) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.slots.push(Slot {
            name: name.to_owned(),
            capacity_mbps,
            in_flight: 0,
            queue: VecDeque::new(),
            tat: None,
            object_failures: 0,
        });
        self.index.insert(name.to_owned(), self.slots.len() - 1);
        self.congestion.add_prefix(name);
        self.slots.len() - 1
    }

    pub fn prefix_count(&self) -> usize {
        self.slots.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.slots[i].name
    }

    pub fn registered_capacity(&self, i: usize) -> f64 {
        self.slots[i].capacity_mbps
    }

    /// The registered prefix `key` falls under (longest match).
    pub fn prefix_of_key(&self, key: &str) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| key.starts_with(&s.name))
            .max_by_key(|(_, s)| s.name.len())
            .map(|(i, _)| i)
    }

    fn health(&self, i: usize) -> PrefixHealth {
        self.congestion.prefix(&self.slots[i].name).map_or(PrefixHealth::Drained, |a| a.health)
    }

    /// Prefixes in use: the first `max_active_prefixes` not drained, in registration order.
    fn active(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.health(i) != PrefixHealth::Drained)
            .take(self.cfg.max_active_prefixes)
            .collect()
    }

    /// Objects `i` may have in flight now.
    pub fn limit(&self, i: usize) -> usize {
        self.congestion.prefix(&self.slots[i].name).map_or(0, |a| a.limit(self.cfg.per_prefix_concurrency))
    }

    pub fn in_flight(&self, i: usize) -> usize {
        self.slots[i].in_flight
    }

    pub fn queued(&self, i: usize) -> usize {
        self.slots[i].queue.len()
    }

    /// Nothing queued or in flight anywhere.
    pub fn idle(&self) -> bool {
        self.slots.iter().all(|s| s.in_flight == 0 && s.queue.is_empty())
    }

    fn requests_for(&self, size: u64) -> f64 {
        if size <= self.part_size { 1.0 } else { size.div_ceil(self.part_size) as f64 + 2.0 }
    }

    /// When `i`'s pacer lets the next request start (`None`: now, or not paced).
    fn paced_until(&self, i: usize, now: Instant) -> Option<Instant> {
        let tat = self.slots[i].tat?;
        let at = tat.checked_sub(PACING_BURST).unwrap_or(tat);
        (at > now).then_some(at)
    }

    fn has_room(&self, i: usize) -> bool {
        self.slots[i].in_flight < self.limit(i)
    }

    fn total_capacity(&self) -> usize {
        self.active().iter().map(|&i| self.limit(i)).sum()
    }

    fn total_in_flight(&self) -> usize {
        self.slots.iter().map(|s| s.in_flight).sum()
    }

    fn reserve(&mut self, i: usize, now: Instant, size: u64) {
        self.slots[i].in_flight += 1;
        if self.cfg.enable_advanced_flow_control
            && let Some(cap) = self.congestion.prefix(&self.slots[i].name).and_then(|a| a.rate_cap)
        {
            let step = Duration::from_secs_f64(self.requests_for(size) / cap.max(0.1));
            let base = self.slots[i].tat.map_or(now, |t| t.max(now));
            self.slots[i].tat = Some(base + step);
        } else {
            self.slots[i].tat = None;
        }
        let (f, c) = (self.total_in_flight(), self.total_capacity());
        self.metrics.on_load(now, f, c);
    }

    /// Lease path: a slot for an object of `size` bytes on the prefix the strategy picks
    /// among those with room and a pacer that allows a request now.
    pub fn try_acquire(&mut self, now: Instant, size: u64) -> Grant {
        let active = self.active();
        let mut ready = Vec::new();
        let mut soonest: Option<Instant> = None;
        for &i in &active {
            if !self.has_room(i) {
                continue;
            }
            match self.paced_until(i, now) {
                None => ready.push(i),
                Some(t) => soonest = Some(soonest.map_or(t, |s: Instant| s.min(t))),
            }
        }
        let (slots, cong, cfg) = (&self.slots, &self.congestion, &self.cfg);
        let cands: Vec<Candidate<'_>> = ready.iter().map(|&i| candidate(slots, cong, cfg, i)).collect();
        let picked = self.scheduler.select(&cands, size).map(|k| ready[k]);
        match picked {
            Some(i) => {
                self.reserve(i, now, size);
                Grant::Now(i)
            }
            None => Grant::Later(soonest),
        }
    }

    /// Queue path: puts `entry` on the queue of the prefix the strategy picks among those
    /// with queue space (avoiding `entry.avoid` when another exists); gives it back when
    /// every queue is full. `force` ignores the bound (work moved off a drained prefix).
    pub fn enqueue(&mut self, entry: Entry<T>, force: bool) -> Result<usize, Entry<T>> {
        let active = self.active();
        let mut open: Vec<usize> =
            active.iter().copied().filter(|&i| force || self.slots[i].queue.len() < self.cfg.pipeline_depth).collect();
        if open.len() > 1
            && let Some(a) = entry.avoid
        {
            open.retain(|&i| i != a);
        }
        let (slots, cong, cfg) = (&self.slots, &self.congestion, &self.cfg);
        let cands: Vec<Candidate<'_>> = open.iter().map(|&i| candidate(slots, cong, cfg, i)).collect();
        let Some(k) = self.scheduler.select(&cands, entry.size) else { return Err(entry) };
        let i = open[k];
        let q = &mut self.slots[i].queue;
        let at = q.iter().position(|e| e.priority < entry.priority).unwrap_or(q.len());
        q.insert(at, entry);
        Ok(i)
    }

    /// Queue path: the next entry to start (highest priority, then oldest, among prefixes
    /// with room and pacing allowing it), with its slot reserved; or when to look again.
    pub fn next_dispatch(&mut self, now: Instant) -> Result<(usize, Entry<T>), Option<Instant>> {
        let mut best: Option<(usize, u8, Instant)> = None;
        let mut soonest: Option<Instant> = None;
        for i in self.active() {
            let Some(head) = self.slots[i].queue.front() else { continue };
            if !self.has_room(i) {
                continue;
            }
            if let Some(t) = self.paced_until(i, now) {
                soonest = Some(soonest.map_or(t, |s: Instant| s.min(t)));
                continue;
            }
            let better = best.is_none_or(|(_, p, e)| head.priority > p || (head.priority == p && head.enqueued < e));
            if better {
                best = Some((i, head.priority, head.enqueued));
            }
        }
        let Some((i, ..)) = best else { return Err(soonest) };
        let entry = self.slots[i].queue.pop_front().expect("head exists");
        self.metrics.on_dequeue(now.saturating_duration_since(entry.enqueued));
        self.reserve(i, now, entry.size);
        Ok((i, entry))
    }

    /// Entries waiting on prefixes that are drained (to move elsewhere).
    pub fn take_stranded(&mut self) -> Vec<Entry<T>> {
        let mut out = Vec::new();
        let active = self.active();
        for i in 0..self.slots.len() {
            if !active.contains(&i) {
                for mut e in self.slots[i].queue.drain(..) {
                    e.avoid = Some(i);
                    out.push(e);
                }
            }
        }
        out
    }

    /// Every queued entry, for cancellation or failure.
    pub fn take_all_queued(&mut self) -> Vec<Entry<T>> {
        self.slots.iter_mut().flat_map(|s| s.queue.drain(..).collect::<Vec<_>>()).collect()
    }

    /// A slot on `i` is given back: the object stored `bytes` in `secs`, or failed.
    /// Two failed objects in a row drain the prefix.
    pub fn release(&mut self, now: Instant, i: usize, bytes: u64, secs: f64, ok: bool) -> bool {
        let slot = &mut self.slots[i];
        slot.in_flight = slot.in_flight.saturating_sub(1);
        slot.object_failures = if ok { 0 } else { slot.object_failures + 1 };
        let name = slot.name.clone();
        let drain = slot.object_failures >= 2;
        self.scheduler.record(&name, bytes, secs, ok);
        self.metrics.on_object(now, &name, bytes, secs, ok);
        let drained = drain && self.congestion.drain(&name, now);
        let (f, c) = (self.total_in_flight(), self.total_capacity());
        self.metrics.on_load(now, f, c);
        drained
    }

    /// A slot on `i` is given back unused (cancelled): no verdict on the prefix.
    pub fn cancel(&mut self, now: Instant, i: usize) {
        self.slots[i].in_flight = self.slots[i].in_flight.saturating_sub(1);
        let (f, c) = (self.total_in_flight(), self.total_capacity());
        self.metrics.on_load(now, f, c);
    }

    /// One request attempt under prefix `i` (or none) finished.
    pub fn on_sample(&mut self, i: Option<usize>, s: &Sample) -> SampleEffect {
        let name = i.map(|i| self.slots[i].name.clone());
        self.congestion.on_sample(name.as_deref(), s)
    }

    /// Periodic work: cooldowns, allocations, the network profile.
    pub fn tick(&mut self, now: Instant, bytes_sent: u64) {
        self.congestion.tick(now);
        self.congestion.reallocate();
        if let Some((t, b)) = self.last_tick {
            let secs = now.saturating_duration_since(t).as_secs_f64();
            if secs > 0.0 {
                self.scheduler.observe_aggregate(bytes_sent.saturating_sub(b) as f64 / secs / 1e6);
            }
        }
        self.last_tick = Some((now, bytes_sent));
    }

    /// Metrics as of `now`.
    pub fn metrics(&self, now: Instant) -> CoordinationMetrics {
        let healthy: Vec<&str> =
            (0..self.slots.len()).filter(|&i| self.health(i) == PrefixHealth::Healthy).map(|i| self.name(i)).collect();
        let drained = (0..self.slots.len()).filter(|&i| self.health(i) == PrefixHealth::Drained).count();
        let mut m = self.metrics.snapshot(
            now,
            &healthy,
            drained,
            self.congestion.congestion_events() + self.prefix_events(),
            self.congestion.adaptations(),
        );
        m.active_prefixes = self.active().len();
        m
    }

    fn prefix_events(&self) -> u64 {
        self.slots.iter().filter_map(|s| self.congestion.prefix(&s.name)).map(|a| a.congestion_events).sum()
    }
}

/// The scheduler's view of prefix `i` (a free function so the scheduler can be borrowed
/// mutably beside it).
fn candidate<'a, T>(
    slots: &'a [Slot<T>],
    congestion: &GlobalCongestionController,
    cfg: &CoordinationConfig,
    i: usize,
) -> Candidate<'a> {
    let a = congestion.prefix(&slots[i].name);
    Candidate {
        prefix: &slots[i].name,
        in_flight: slots[i].in_flight,
        limit: a.map_or(0, |a| a.limit(cfg.per_prefix_concurrency)),
        queued: slots[i].queue.len(),
        queue_capacity: cfg.pipeline_depth,
        congestion_window: a.map_or(1.0, |a| a.congestion_window.min(a.allocated_share)),
        global_window: congestion.window(),
    }
}

// ----------------------------------------------------------------------------------------
// The async wrapper

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lifecycle {
    Created,
    Running,
    Stopping,
    Stopped,
    Failed(String),
}

struct Job {
    item: ScheduledUpload,
    moves: u32,
    reply: oneshot::Sender<Result<UploadDone, UploadRejected>>,
}

struct Shared {
    core: Mutex<CoordinatorCore<Job>>,
    changed: Notify,
    drains: Mutex<Vec<watch::Sender<u64>>>,
    state: Mutex<Lifecycle>,
    executor: Mutex<Option<Arc<dyn UploadExecutor>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    client: Mutex<Option<(OptimizedS3Client, ObserverId)>>,
}

/// The coordinator. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct PipelineCoordinator {
    shared: Arc<Shared>,
}

struct Observer(Weak<Shared>);

impl SampleObserver for Observer {
    fn on_sample(&self, key: &str, sample: &Sample) {
        let Some(shared) = self.0.upgrade() else { return };
        let t = Instant::now();
        let mut core = shared.core.lock().expect("core lock");
        let i = core.prefix_of_key(key);
        let effect = core.on_sample(i, sample);
        if effect.drained
            && let Some(i) = i
        {
            tracing::warn!(prefix = core.name(i), "prefix keeps failing; draining it");
            shared.drains.lock().expect("drains lock")[i].send_modify(|g| *g += 1);
            move_stranded(&mut core);
        }
        core.metrics_mut().on_work(t.elapsed());
        drop(core);
        if effect.drained || effect.congestion_event {
            shared.changed.notify_waiters();
        }
    }
}

fn move_stranded(core: &mut CoordinatorCore<Job>) {
    for e in core.take_stranded() {
        core.metrics_mut().on_moved();
        if let Err(e) = core.enqueue(e, true) {
            let _ = e
                .payload
                .reply
                .send(Err(UploadRejected { item: e.payload.item, error: CoordinationError::NoPrefixes }));
        }
    }
}

impl PipelineCoordinator {
    /// A coordinator with no prefixes, not yet started.
    pub fn new(config: CoordinationConfig) -> Result<Self, CoordinationError> {
        config.validate().map_err(CoordinationError::Config)?;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
        Ok(Self {
            shared: Arc::new(Shared {
                core: Mutex::new(CoordinatorCore::new(config, seed)),
                changed: Notify::new(),
                drains: Mutex::new(Vec::new()),
                state: Mutex::new(Lifecycle::Created),
                executor: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
                client: Mutex::new(None),
            }),
        })
    }

    /// Registers a prefix with a capacity hint (MB/s, informational).
    pub fn register_prefix(&self, name: &str, capacity_mbps: f64) {
        let mut core = self.shared.core.lock().expect("core lock");
        let i = core.register_prefix(name, capacity_mbps);
        let mut drains = self.shared.drains.lock().expect("drains lock");
        while drains.len() <= i {
            drains.push(watch::channel(0).0);
        }
        drop(drains);
        drop(core);
        self.shared.changed.notify_waiters();
    }

    /// Feeds the coordinator every request sample of `client` (keys map to prefixes).
    pub fn attach(&self, client: &OptimizedS3Client) {
        self.shared.core.lock().expect("core lock").set_part_size(client.part_size());
        let id = client.add_sample_observer(Arc::new(Observer(Arc::downgrade(&self.shared))));
        if let Some((old, old_id)) = self.shared.client.lock().expect("client lock").replace((client.clone(), id)) {
            old.remove_sample_observer(old_id);
        }
    }

    /// Sets the uncoordinated baseline the metrics compare against.
    pub fn set_baseline(&self, baseline: PerformanceBaseline) {
        self.shared.core.lock().expect("core lock").metrics_mut().set_baseline(baseline);
    }

    /// Starts coordinating: leases may be taken; with an executor, queued uploads are
    /// dispatched.
    pub fn start(&self, executor: Option<Arc<dyn UploadExecutor>>) -> Result<(), CoordinationError> {
        {
            let mut st = self.shared.state.lock().expect("state lock");
            match &*st {
                Lifecycle::Created => *st = Lifecycle::Running,
                Lifecycle::Running => return Ok(()),
                Lifecycle::Failed(r) => return Err(CoordinationError::Failed(r.clone())),
                _ => return Err(CoordinationError::NotRunning),
            }
        }
        *self.shared.executor.lock().expect("executor lock") = executor.clone();
        let weak = Arc::downgrade(&self.shared);
        let ticker = tokio::spawn(tick_loop(weak.clone()));
        let mut tasks = self.shared.tasks.lock().expect("tasks lock");
        tasks.push(ticker);
        if executor.is_some() {
            let dispatcher = tokio::spawn(dispatch_loop(weak));
            let me = self.clone();
            // A dispatcher that dies (panics) fails the coordinator: callers fall back.
            tasks.push(tokio::spawn(async move {
                if let Err(e) = dispatcher.await
                    && e.is_panic()
                {
                    me.fail("dispatcher panicked");
                }
            }));
        }
        Ok(())
    }

    fn check_running(&self) -> Result<(), CoordinationError> {
        match &*self.shared.state.lock().expect("state lock") {
            Lifecycle::Running => Ok(()),
            Lifecycle::Failed(r) => Err(CoordinationError::Failed(r.clone())),
            _ => Err(CoordinationError::NotRunning),
        }
    }

    /// Waits for a slot for an object of `estimated_size` bytes; the lease names the prefix.
    pub async fn acquire(&self, estimated_size: u64) -> Result<PrefixLease, CoordinationError> {
        let asked = Instant::now();
        loop {
            self.check_running()?;
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let t = Instant::now();
            let grant = {
                let mut core = self.shared.core.lock().expect("core lock");
                if core.prefix_count() == 0 {
                    return Err(CoordinationError::NoPrefixes);
                }
                let g = core.try_acquire(t, estimated_size);
                core.metrics_mut().on_decision(t.elapsed());
                if let Grant::Now(i) = g {
                    core.metrics_mut().on_grant(asked.elapsed());
                    let prefix = core.name(i).to_owned();
                    let drain = self.shared.drains.lock().expect("drains lock")[i].subscribe();
                    return Ok(PrefixLease {
                        shared: self.shared.clone(),
                        index: i,
                        prefix,
                        granted: Instant::now(),
                        drain,
                        finished: false,
                    });
                }
                g
            };
            let wait = match grant {
                Grant::Later(Some(at)) => at.saturating_duration_since(Instant::now()),
                _ => Duration::from_millis(250),
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Puts an object on a prefix queue, waiting while every queue is full.
    pub async fn schedule_upload(&self, item: ScheduledUpload) -> Result<UploadTicket, CoordinationError> {
        let (tx, rx) = oneshot::channel();
        let ticket_item = item.clone();
        let mut job = Job { item, moves: 0, reply: tx };
        loop {
            self.check_running()?;
            if self.shared.executor.lock().expect("executor lock").is_none() {
                return Err(CoordinationError::NotRunning);
            }
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_enqueue(job) {
                Ok(()) => {
                    self.shared.changed.notify_waiters();
                    return Ok(UploadTicket { rx, item: ticket_item });
                }
                Err(back) => job = back,
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    fn try_enqueue(&self, job: Job) -> Result<(), Job> {
        let t = Instant::now();
        let mut core = self.shared.core.lock().expect("core lock");
        let entry = Entry {
            priority: job.item.priority,
            size: job.item.estimated_size,
            avoid: None,
            enqueued: t,
            payload: job,
        };
        let r = core.enqueue(entry, false).map(|_| ()).map_err(|e| e.payload);
        core.metrics_mut().on_decision(t.elapsed());
        r
    }

    /// Metrics at this moment.
    pub fn metrics(&self) -> CoordinationMetrics {
        self.shared.core.lock().expect("core lock").metrics(Instant::now())
    }

    /// The congestion controller's state.
    pub fn congestion(&self) -> CongestionSnapshot {
        self.shared.core.lock().expect("core lock").congestion().snapshot()
    }

    /// Graceful stop: no new work; waits until every queued and leased object is done.
    pub async fn stop(&self) {
        {
            let mut st = self.shared.state.lock().expect("state lock");
            if *st == Lifecycle::Running {
                *st = Lifecycle::Stopping;
            }
        }
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.core.lock().expect("core lock").idle() {
                break;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        self.shutdown(Lifecycle::Stopped).await;
    }

    /// Cancels: queued uploads are handed back as cancelled, in-flight ones are dropped
    /// (their multipart uploads aborted), and the client's cleanup is awaited.
    pub async fn cancel(&self) {
        self.reject_queued(CoordinationError::Cancelled, Lifecycle::Stopped);
        self.shutdown(Lifecycle::Stopped).await;
    }

    /// Marks the coordinator failed: queued uploads are handed back (callers fall back to
    /// uncoordinated uploads); new leases and schedules are refused.
    pub fn fail(&self, reason: &str) {
        tracing::warn!(reason, "coordinator failed; falling back to uncoordinated uploads");
        self.reject_queued(CoordinationError::Failed(reason.into()), Lifecycle::Failed(reason.into()));
    }

    /// Where `name` goes when the coordinator cannot be used (failed, or never started):
    /// the registered prefixes by FNV-1a of the name, so retries land in the same place.
    pub fn fallback_prefix(&self, name: &str) -> Option<String> {
        let core = self.shared.core.lock().expect("core lock");
        let n = core.prefix_count();
        (n > 0).then(|| core.name((super::uploader::fnv1a(name.as_bytes()) % n as u64) as usize).to_owned())
    }

    /// Whether [`fail`](Self::fail) happened.
    pub fn is_failed(&self) -> bool {
        matches!(*self.shared.state.lock().expect("state lock"), Lifecycle::Failed(_))
    }

    fn reject_queued(&self, error: CoordinationError, state: Lifecycle) {
        *self.shared.state.lock().expect("state lock") = state;
        let queued = self.shared.core.lock().expect("core lock").take_all_queued();
        for e in queued {
            let _ = e.payload.reply.send(Err(UploadRejected { item: e.payload.item, error: error.clone() }));
        }
        self.shared.changed.notify_waiters();
    }

    async fn shutdown(&self, state: Lifecycle) {
        {
            let mut st = self.shared.state.lock().expect("state lock");
            if !matches!(*st, Lifecycle::Failed(_)) {
                *st = state;
            }
        }
        self.shared.changed.notify_waiters();
        let tasks: Vec<_> = std::mem::take(&mut *self.shared.tasks.lock().expect("tasks lock"));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let client = self.shared.client.lock().expect("client lock").take();
        if let Some((client, id)) = client {
            client.remove_sample_observer(id);
            client.finish_cleanup().await;
        }
    }
}

/// Periodic work every `update_interval`.
async fn tick_loop(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let interval = shared.core.lock().expect("core lock").cfg.update_interval;
        let sent = shared.client.lock().expect("client lock").as_ref().map_or(0, |(c, _)| c.bytes_sent());
        {
            let t = Instant::now();
            let mut core = shared.core.lock().expect("core lock");
            core.tick(t, sent);
            move_stranded(&mut core);
            core.metrics_mut().on_work(t.elapsed());
        }
        shared.changed.notify_waiters();
        drop(shared);
        tokio::time::sleep(interval).await;
    }
}

/// Drains the queues: starts every entry that may start, then waits for a change.
async fn dispatch_loop(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if matches!(*shared.state.lock().expect("state lock"), Lifecycle::Stopped | Lifecycle::Failed(_)) {
            return;
        }
        let wake;
        loop {
            let t = Instant::now();
            let next = {
                let mut core = shared.core.lock().expect("core lock");
                let n = core.next_dispatch(t);
                core.metrics_mut().on_decision(t.elapsed());
                n.map(|(i, e)| (i, core.name(i).to_owned(), e))
            };
            match next {
                Ok((i, prefix, entry)) => {
                    let handle = tokio::spawn(run_job(shared.clone(), i, prefix, entry));
                    let mut tasks = shared.tasks.lock().expect("tasks lock");
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(handle);
                }
                Err(at) => {
                    wake = at;
                    break;
                }
            }
        }
        let wait = wake.map_or(Duration::from_millis(500), |at| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs one queued object; on failure (or its prefix being drained) moves it to another
/// prefix, up to `max_moves` times.
async fn run_job(shared: Arc<Shared>, i: usize, prefix: String, entry: Entry<Job>) {
    let Some(executor) = shared.executor.lock().expect("executor lock").clone() else { return };
    let mut drain = shared.drains.lock().expect("drains lock")[i].subscribe();
    let started = Instant::now();
    let upload = executor.upload(&entry.payload.item, &prefix);
    let result = tokio::select! {
        r = upload => r.map_err(|e| e.to_string()),
        _ = drain.changed() => Err(format!("prefix {prefix} was drained")),
    };
    let secs = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut core = shared.core.lock().expect("core lock");
    let max_moves = core.cfg.max_moves;
    let ok = result.is_ok();
    let drained = core.release(t, i, *result.as_ref().unwrap_or(&0), secs, ok);
    if drained {
        shared.drains.lock().expect("drains lock")[i].send_modify(|g| *g += 1);
        move_stranded(&mut core);
    }
    let Entry { priority, size, payload, .. } = entry;
    match result {
        Ok(bytes) => {
            let key = format!("{prefix}{}", payload.item.name);
            let _ = payload.reply.send(Ok(UploadDone {
                name: payload.item.name,
                prefix,
                key,
                bytes,
                moves: payload.moves,
                secs,
            }));
        }
        Err(err) if payload.moves < max_moves => {
            tracing::info!(prefix, name = payload.item.name, %err, "moving the upload to another prefix");
            core.metrics_mut().on_moved();
            let job = Job { moves: payload.moves + 1, ..payload };
            let entry = Entry { priority, size, avoid: Some(i), enqueued: t, payload: job };
            if let Err(e) = core.enqueue(entry, true) {
                let _ = e
                    .payload
                    .reply
                    .send(Err(UploadRejected { item: e.payload.item, error: CoordinationError::NoPrefixes }));
            }
        }
        Err(err) => {
            core.metrics_mut().on_failed();
            let _ =
                payload.reply.send(Err(UploadRejected { item: payload.item, error: CoordinationError::Upload(err) }));
        }
    }
    core.metrics_mut().on_work(t.elapsed());
    drop(core);
    shared.changed.notify_waiters();
}

/// One slot under one prefix, held while an object is uploaded there.
pub struct PrefixLease {
    shared: Arc<Shared>,
    index: usize,
    prefix: String,
    granted: Instant,
    drain: watch::Receiver<u64>,
    finished: bool,
}

/// How a leased upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Stored: this many bytes.
    Uploaded { bytes: u64 },
    /// Failed (the object must be retried, usually under a new lease). Two in a row drain
    /// the prefix.
    Failed,
    /// Given up without a verdict on the prefix (cancellation; what dropping a lease does).
    Cancelled,
}

impl std::fmt::Debug for PrefixLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixLease").field("prefix", &self.prefix).finish()
    }
}

impl PrefixLease {
    /// The key prefix to put the object under (e.g. `archives/3f/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix + name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Whether the prefix was drained since the lease was granted (the upload should be
    /// given up and retried under a new lease).
    pub fn is_drained(&self) -> bool {
        self.drain.has_changed().unwrap_or(false)
    }

    /// Resolves when the prefix is drained; race it against the upload.
    pub async fn drained(&mut self) {
        if self.drain.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Gives the slot back and reports the outcome.
    pub fn finish(mut self, outcome: LeaseOutcome) {
        self.release(outcome);
    }

    fn release(&mut self, outcome: LeaseOutcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        let t = Instant::now();
        let secs = t.duration_since(self.granted).as_secs_f64();
        let (bytes, ok) = match outcome {
            LeaseOutcome::Uploaded { bytes } => (bytes, true),
            LeaseOutcome::Failed => (0, false),
            LeaseOutcome::Cancelled => {
                let mut core = self.shared.core.lock().expect("core lock");
                core.cancel(t, self.index);
                drop(core);
                self.shared.changed.notify_waiters();
                return;
            }
        };
        let mut core = self.shared.core.lock().expect("core lock");
        if core.release(t, self.index, bytes, secs, ok) {
            self.shared.drains.lock().expect("drains lock")[self.index].send_modify(|g| *g += 1);
            move_stranded(&mut core);
        }
        core.metrics_mut().on_work(t.elapsed());
        drop(core);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for PrefixLease {
    fn drop(&mut self) {
        self.release(LeaseOutcome::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Op, Outcome};

    fn core(n: usize) -> CoordinatorCore<u32> {
        let cfg = CoordinationConfig { per_prefix_concurrency: 2, pipeline_depth: 2, ..Default::default() };
        let mut c = CoordinatorCore::new(cfg, 9);
        for i in 0..n {
            c.register_prefix(&format!("p{i}/"), 100.0);
        }
        c
    }

    fn entry(now: Instant, payload: u32, priority: u8) -> Entry<u32> {
        Entry { priority, size: 1000, avoid: None, enqueued: now, payload }
    }

    fn sample(started: Instant, outcome: Outcome) -> Sample {
        let s = Sample::alone(Op::PutObject, started, Duration::from_millis(20), 1000, outcome);
        Sample { delivered_at_end: 0, ..s }
    }

    #[test]
    fn leases_respect_per_prefix_limits_and_are_released() {
        let mut c = core(2);
        let now = Instant::now();
        let grants: Vec<_> = (0..4).map(|_| c.try_acquire(now, 1000)).collect();
        assert!(grants.iter().all(|g| matches!(g, Grant::Now(_))));
        assert_eq!((c.in_flight(0), c.in_flight(1)), (2, 2));
        assert_eq!(c.try_acquire(now, 1000), Grant::Later(None));
        c.release(now, 0, 1000, 0.1, true);
        assert_eq!(c.try_acquire(now, 1000), Grant::Now(0));
    }

    #[test]
    fn queues_are_bounded_drained_by_priority_and_refuse_when_full() {
        let mut c = core(2);
        let now = Instant::now();
        for n in 0..4 {
            c.enqueue(entry(now, n, if n == 3 { 9 } else { 1 }), false).unwrap();
        }
        assert_eq!((c.queued(0), c.queued(1)), (2, 2));
        assert!(c.enqueue(entry(now, 99, 1), false).is_err(), "every queue is full");
        let mut order = Vec::new();
        while let Ok((_, e)) = c.next_dispatch(now) {
            order.push(e.payload);
        }
        assert_eq!(order[0], 3, "the high-priority entry starts first");
        assert_eq!(order.len(), 4, "room for 2 x 2 in flight: every queued entry started");
        assert!(!c.idle() && c.queued(0) + c.queued(1) == 0);
    }

    #[test]
    fn a_drained_prefix_strands_its_queue_which_moves_to_healthy_ones() {
        let mut c = core(3);
        let now = Instant::now();
        for n in 0..6 {
            c.enqueue(entry(now, n, 1), false).unwrap();
        }
        let on_p0 = c.queued(0);
        assert!(on_p0 > 0);
        let mut drained = false;
        for k in 0..4 {
            drained |= c.on_sample(Some(0), &sample(now + Duration::from_millis(k), Outcome::ServerError)).drained;
        }
        assert!(drained);
        let stranded = c.take_stranded();
        assert_eq!(stranded.len(), on_p0);
        for e in stranded {
            assert!(matches!(c.enqueue(e, true), Ok(i) if i != 0));
        }
        assert_eq!(c.queued(0), 0);
        for _ in 0..4 {
            assert!(matches!(c.try_acquire(now, 1), Grant::Now(i) if i != 0));
        }
    }

    #[test]
    fn two_failed_objects_in_a_row_drain_a_prefix() {
        let mut c = core(2);
        let now = Instant::now();
        let Grant::Now(bad) = c.try_acquire(now, 1) else { panic!("a slot is free") };
        assert!(!c.release(now, bad, 0, 0.1, false), "one failure is not enough");
        assert_eq!(c.limit(bad), 2, "still healthy");
        assert!(c.release(now, bad, 0, 0.1, false), "the second failure in a row drains it");
        for _ in 0..2 {
            assert!(matches!(c.try_acquire(now, 1), Grant::Now(i) if i != bad));
        }
    }

    #[test]
    fn throttling_paces_a_prefix_and_the_pacer_says_when_to_come_back() {
        let cfg = CoordinationConfig { per_prefix_concurrency: 50, ..Default::default() };
        let mut c: CoordinatorCore<u32> = CoordinatorCore::new(cfg, 1);
        c.register_prefix("a/", 1.0);
        let t0 = Instant::now();
        for k in 0..20 {
            c.on_sample(Some(0), &sample(t0 + Duration::from_millis(k * 50), Outcome::Ok));
        }
        c.on_sample(Some(0), &sample(t0 + Duration::from_millis(1000), Outcome::Throttled));
        let cap = c.congestion().prefix("a/").unwrap().rate_cap.expect("a cap was learned");
        let now = t0 + Duration::from_millis(1100);
        let mut granted = 0;
        let later = loop {
            match c.try_acquire(now, 1) {
                Grant::Now(_) => granted += 1,
                Grant::Later(t) => break t,
            }
        };
        assert!(granted >= 1 && granted <= 2 + (cap * 0.05) as usize, "{granted} granted at once at {cap}/s");
        let at = later.expect("pacing, not capacity, holds the next one back");
        assert!(at > now && at <= now + Duration::from_secs_f64(2.0 / cap));
        assert!(matches!(c.try_acquire(at, 1), Grant::Now(0)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_leases_never_exceed_a_prefix_limit_and_all_are_released() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cfg = CoordinationConfig { per_prefix_concurrency: 3, ..Default::default() };
        let coord = PipelineCoordinator::new(cfg).unwrap();
        let names = ["a/", "b/", "c/", "d/"];
        for p in names {
            coord.register_prefix(p, 0.0);
        }
        coord.start(None).unwrap();
        let live: Arc<Vec<AtomicUsize>> = Arc::new(names.iter().map(|_| AtomicUsize::new(0)).collect());
        let peak: Arc<Vec<AtomicUsize>> = Arc::new(names.iter().map(|_| AtomicUsize::new(0)).collect());
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let (coord, live, peak) = (coord.clone(), live.clone(), peak.clone());
                tokio::spawn(async move {
                    for k in 0..40u64 {
                        let lease = coord.acquire(1000).await.unwrap();
                        let i = names.iter().position(|p| *p == lease.prefix()).unwrap();
                        let now = live[i].fetch_add(1, Ordering::SeqCst) + 1;
                        peak[i].fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        live[i].fetch_sub(1, Ordering::SeqCst);
                        if (t + k) % 7 == 0 {
                            drop(lease);
                        } else {
                            lease.finish(LeaseOutcome::Uploaded { bytes: 1000 });
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        for (i, p) in peak.iter().enumerate() {
            assert!(p.load(Ordering::SeqCst) <= 3, "prefix {} had {} in flight", names[i], p.load(Ordering::SeqCst));
        }
        assert!(coord.shared.core.lock().unwrap().idle(), "every lease was released");
        let m = coord.metrics();
        let not_stored = (0..16u64).flat_map(|t| (0..40).map(move |k| (t + k) % 7 == 0));
        assert_eq!(m.objects_completed + not_stored.filter(|d| *d).count() as u64, 640);
        coord.stop().await;
    }

    #[test]
    fn keys_map_to_the_longest_registered_prefix() {
        let mut c = core(0);
        c.register_prefix("a/", 1.0);
        c.register_prefix("a/b/", 1.0);
        assert_eq!(c.prefix_of_key("a/b/c"), Some(1));
        assert_eq!(c.prefix_of_key("a/c"), Some(0));
        assert_eq!(c.prefix_of_key("z"), None);
    }
}
