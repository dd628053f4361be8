//! [`OptimizedS3Client`]: the one entry point. `put_object`, `get_object`, `get_range`,
//! `head`, `list`, `delete` and `metrics`, on the official AWS SDK for Rust.
//!
//! Every request goes through [`Engine::run`]: it takes a slot of the live concurrency
//! [`Window`], times the attempt, classifies how it ended, records a [`Sample`] (metrics
//! now, controllers later), and retries retryable outcomes with full-jitter backoff. SDK
//! retries are off so that every attempt is seen and counted here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::adaptive::controller::{Controller, ControllerKind, ControllerState};
use crate::adaptive::monitor::{Monitor, TimelinePoint};
use crate::adaptive::optimizer::part_size_for;
use crate::adaptive::window::Window;
use crate::config::{ClientConfig, MAX_PART_SIZE, MIN_PART_SIZE, SHORT_ROUND_TRIP};
use crate::connection::wire::StallWatch;
use crate::connection::{Attempt, Warm, WireMeter};
use crate::error::{Error, Result};
use crate::integrity::StoredChecksum;
use crate::network::loss::{Outcome, classify_status};
use crate::network::rtt::RttEstimator;
use crate::network::{Op, Sample};
use crate::performance::block_cache::{BLOCK_SIZE, BlockCache, CacheStats};
use crate::performance::buffer::BufferPool;
use crate::performance::download::{self, GetResult};
use crate::performance::metrics::{Metrics, MetricsSnapshot};
use crate::performance::paced::{PacedBody, Pacer};
use crate::performance::reader::ObjectReader;
use crate::performance::upload::{self, PutOptions, PutResult};

/// The optimized client. Cheap to clone; clones share the window, pool and metrics.
#[derive(Clone)]
pub struct OptimizedS3Client {
    pub(crate) engine: Arc<Engine>,
}

/// Shared state of a client: SDK handle, live parameters, pool, metrics.
pub(crate) struct Engine {
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) cfg: ClientConfig,
    pub(crate) endpoint: String,
    pub(crate) window: Window,
    pub(crate) pool: BufferPool,
    pub(crate) metrics: Metrics,
    /// Blocks read through [`ObjectReader`]s, shared by all of them.
    pub(crate) block_cache: BlockCache,
    part_size: AtomicU64,
    /// Length of a download's ranged GETs (see [`Engine::range_size`]).
    pub(crate) range_size: AtomicU64,
    /// Controller, delivery accounting and monitor, updated on every data request.
    control: std::sync::Mutex<Control>,
    /// `--bwlimit`: the client's share of the link.
    pacer: Option<Arc<Pacer>>,
    /// When the engine was created, and the start (nanoseconds since then) of the newest
    /// data request that has succeeded: a request older than that and still running is
    /// behind its peers (see [`Engine::is_straggler`]).
    epoch: Instant,
    newest_done: AtomicU64,
    /// Bytes acknowledged and received on the client's connections, read from the kernel
    /// (`None` for an SDK client built elsewhere), and when (nanoseconds since `epoch`) the
    /// controller last heard of them: see [`Engine::progress`].
    wire: Option<Arc<WireMeter>>,
    progress_at: AtomicU64,
    /// Background aborts of cancelled multipart uploads, awaited by `finish_cleanup`.
    pub(crate) cleanup: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Who else sees every request's [`Sample`] (e.g. the cross-prefix coordinator).
    observers: std::sync::RwLock<Vec<(u64, Arc<dyn SampleObserver>)>>,
    /// Connections dialled ahead of data requests (see [`OptimizedS3Client::expect_requests`]).
    warm: Option<Arc<Warm>>,
}

/// Sees every finished request attempt of a client, with the object key it was for (empty
/// for requests that name no object). Called on the request's task: keep it cheap.
pub trait SampleObserver: Send + Sync {
    /// One attempt ended; `sample` is exactly what the client's own controller consumed.
    fn on_sample(&self, key: &str, sample: &Sample);
}

/// Handle of a registered [`SampleObserver`], for [`OptimizedS3Client::remove_sample_observer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObserverId(u64);

/// The control loop's state.
struct Control {
    controller: Box<dyn Controller>,
    /// Whether the optimizer picks the part size (not with a fixed controller, which keeps
    /// the configured size).
    adaptive_parts: bool,
    delivered: u64,
    delivered_time: Instant,
    monitor: Monitor,
    /// Latency of data requests, for hedging.
    rtt: RttEstimator,
    /// No request has finished and no data request has begun, so the start may still be
    /// changed (see [`ClientConfig::short_path_concurrency`]).
    pristine: bool,
    /// A data request has begun (connections dialled ahead would now duplicate pooled ones).
    data_begun: bool,
    /// The first round trip took under [`SHORT_ROUND_TRIP`] (see [`Engine::first_round_trip`]).
    short_path: bool,
}

/// A failed attempt: how it ended (for retry and controllers) and what to report.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) outcome: Outcome,
    pub(crate) error: Error,
}

impl Failure {
    pub(crate) fn new(outcome: Outcome, error: Error) -> Self {
        Self { outcome, error }
    }
}

/// A share of the memory budget ([`OptimizedS3Client::reserve_memory`]), returned on drop.
#[derive(Debug)]
pub struct MemoryReservation {
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl MemoryReservation {
    /// Gives back what is reserved beyond `keep` bytes (never takes more): for a holder
    /// whose data drains, so the budget it no longer needs goes to others at once.
    pub fn shrink_to(&mut self, keep: u64) {
        let (held, keep) = (self.permit.num_permits(), crate::performance::buffer::units(keep) as usize);
        if held > keep {
            drop(self.permit.split(held - keep));
        }
    }
}

/// How a data request takes part in the window and the controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Steering {
    /// Takes a window slot; its samples steer the controllers.
    Steers,
    /// Takes a window slot but does not steer: a reader's read-ahead, where the reader,
    /// not the network, decides how many are in flight. Steering would teach the
    /// controllers the reader's pace as the network's rate (BBR leaves app-limited
    /// samples out of its bandwidth estimate for the same reason).
    AppLimited,
    /// One of the last parts of an upload: steers, and, unless the window is fixed, may
    /// start while up to twice the window is in flight. On a path that caps each
    /// connection, parts that start at different times end at different times, and the
    /// link idles while the last few finish alone at one connection's rate; the parts left
    /// once no more remain than are in flight start together instead, and share the link
    /// until they end together.
    Tail,
}

/// What HEAD says about an object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectInfo {
    pub size: u64,
    pub e_tag: Option<String>,
    #[serde(skip)]
    pub last_modified: Option<SystemTime>,
    /// The full-object checksum S3 stored, if any (used to verify downloads).
    #[serde(skip)]
    pub checksum: Option<StoredChecksum>,
    pub metadata: std::collections::HashMap<String, String>,
}

/// One object in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    #[serde(skip)]
    pub last_modified: Option<SystemTime>,
    /// The object's ETag, as listed (pins a download to the version listed).
    #[serde(skip)]
    pub e_tag: Option<String>,
}

/// A listing: objects and, with a delimiter, the common prefixes ("directories").
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    pub objects: Vec<ListEntry>,
    pub common_prefixes: Vec<String>,
    /// Pages fetched.
    pub pages: u32,
}

/// An open multipart upload.
#[derive(Debug, Clone, Serialize)]
pub struct MultipartUploadInfo {
    pub key: String,
    pub upload_id: String,
}

impl OptimizedS3Client {
    /// Builds a client: the SDK's standard configuration chain (environment, profile,
    /// credentials) overridden by whatever `cfg` sets.
    pub async fn new(cfg: ClientConfig) -> Result<Self> {
        cfg.validate()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder().connect_timeout(cfg.connect_timeout).read_timeout(cfg.idle_timeout).build(),
            );
        if let Some(algorithm) = &cfg.tcp_congestion {
            crate::connection::tcp::check(algorithm).map_err(Error::Config)?;
        }
        let (http, warm, wire) = crate::connection::tuned_http_client(
            cfg.tcp_congestion.as_deref(),
            cfg.max_concurrency,
            cfg.connect_timeout,
            cfg.idle_timeout,
        )
        .map_err(Error::Config)?;
        if let Some(profile) = &cfg.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((ak, sk)) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "cargoship"));
        }
        let shared = loader.load().await;
        let endpoint_url = cfg.endpoint_url.clone().or_else(|| shared.endpoint_url().map(str::to_owned));
        let region = shared.region().cloned().unwrap_or_else(|| Region::new("us-east-1"));
        let path_style = cfg.force_path_style.unwrap_or(endpoint_url.is_some());
        // Only S3's requests go through it (credential providers keep the SDK's client), so
        // the endpoint it dials ahead to is S3's.
        let s3_conf = aws_sdk_s3::config::Builder::from(&shared)
            .http_client(http)
            .region(region.clone())
            .force_path_style(path_style)
            // The SDK's stalled-upload check fails a part's body that the connection has not
            // taken from for its grace period (20 s in aws-smithy-runtime-api 1.20), which is
            // what a full socket send buffer does on a slow path (52 parts sharing 10 MB/s
            // take 27 s each: 5 retries in a shifting upload). The client's own checks cover
            // uploads: the connector's limit (while nothing moves on any connection) and
            // hedging of stalled connections and stragglers.
            .stalled_stream_protection(
                aws_sdk_s3::config::StalledStreamProtectionConfig::enabled().upload_enabled(false).build(),
            )
            // We compute and verify checksums ourselves (CRC64NVME per part and per object).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let endpoint = endpoint_url.unwrap_or_else(|| format!("AWS S3 ({region})"));
        Ok(Self::build(aws_sdk_s3::Client::from_conf(s3_conf), cfg, endpoint, Some((warm, wire))))
    }

    /// Wraps an SDK client built elsewhere (its connections are not dialled ahead).
    pub fn from_sdk(s3: aws_sdk_s3::Client, cfg: ClientConfig, endpoint: String) -> Self {
        Self::build(s3, cfg, endpoint, None)
    }

    fn build(
        s3: aws_sdk_s3::Client,
        cfg: ClientConfig,
        endpoint: String,
        connections: Option<(Arc<Warm>, Arc<WireMeter>)>,
    ) -> Self {
        let (warm, wire) = connections.unzip();
        let metrics = Metrics::new();
        // The buffer pool bounds memory: large parts queue on it, while small objects (a
        // few hundred KiB each) may use the whole window.
        let max = cfg.max_concurrency;
        let controller = cfg.controller.build(cfg.concurrency.min(max), max);
        let initial = controller.window();
        metrics.set_concurrency(initial);
        metrics.set_part_size(cfg.part_size);
        let now = Instant::now();
        let adaptive = !matches!(cfg.controller, ControllerKind::Fixed(_));
        let control = Control {
            adaptive_parts: adaptive,
            controller,
            delivered: 0,
            delivered_time: now,
            monitor: Monitor::new(now),
            rtt: RttEstimator::default(),
            pristine: true,
            data_begun: false,
            short_path: false,
        };
        let pacer = cfg.bandwidth_limit.map(|r| Arc::new(Pacer::new(r as f64)));
        let engine = Engine {
            s3,
            control: std::sync::Mutex::new(control),
            window: Window::new(initial),
            pool: BufferPool::new(cfg.memory_budget),
            block_cache: BlockCache::new(cfg.memory_budget / 2, BLOCK_SIZE),
            part_size: AtomicU64::new(cfg.part_size),
            range_size: AtomicU64::new(if adaptive { FIRST_RANGE.min(cfg.part_size) } else { cfg.part_size }),
            metrics,
            endpoint,
            cfg,
            pacer,
            epoch: now,
            newest_done: AtomicU64::new(0),
            wire,
            progress_at: AtomicU64::new(0),
            cleanup: std::sync::Mutex::new(Vec::new()),
            observers: std::sync::RwLock::new(Vec::new()),
            warm,
        };
        if adaptive {
            engine.size_first_parts(initial);
        }
        Self { engine: Arc::new(engine) }
    }

    /// Where requests go (endpoint URL, or "AWS S3 (region)").
    pub fn endpoint(&self) -> &str {
        &self.engine.endpoint
    }

    /// The underlying SDK client, for calls this crate does not wrap.
    pub fn sdk(&self) -> &aws_sdk_s3::Client {
        &self.engine.s3
    }

    /// Tells the client that up to `n` data requests are about to start (a ship's pieces,
    /// an upload's parts): before its first data request, it dials their connections (no
    /// more than the window) while the first round trip is out. Afterwards, or on a short
    /// path, it does nothing.
    pub fn expect_requests(&self, n: usize) {
        self.engine.expect_requests(n);
    }

    /// Connections dialled ahead so far (see [`OptimizedS3Client::expect_requests`]).
    pub fn connections_dialled_ahead(&self) -> usize {
        self.engine.warm.as_ref().map_or(0, |w| w.dialled())
    }

    /// Fixes how many requests may be in flight from now on (the controller becomes
    /// `fixed:n`); takes effect for the next request.
    pub fn set_concurrency(&self, n: usize) {
        let mut c = self.engine.control.lock().expect("control lock");
        c.controller = ControllerKind::Fixed(n.max(1)).build(n, n);
        c.adaptive_parts = false;
        c.pristine = false;
        self.engine.range_size.store(self.engine.part_size(), Relaxed);
        self.engine.window.set_limit(n);
        self.engine.metrics.set_concurrency(n.max(1));
    }

    /// The controller's current state.
    pub fn controller_state(&self) -> ControllerState {
        self.engine.control.lock().expect("control lock").controller.state()
    }

    /// Every controller decision so far, one point per 250 ms at most.
    pub fn timeline(&self) -> Vec<TimelinePoint> {
        self.engine.control.lock().expect("control lock").monitor.timeline()
    }

    /// Current concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.engine.window.limit()
    }

    /// Changes the part size used for the next part or range (clamped to S3's limits and
    /// half the memory budget).
    pub fn set_part_size(&self, n: u64) {
        let n = self.engine.clamp_part_size(n);
        self.engine.part_size.store(n, Relaxed);
        self.engine.range_size.store(n, Relaxed);
        self.engine.metrics.set_part_size(n);
    }

    /// Current part size.
    pub fn part_size(&self) -> u64 {
        self.engine.part_size()
    }

    /// Waits for the background aborts of uploads that were cancelled (their futures
    /// dropped, e.g. on Ctrl-C), so no multipart upload is left behind. Call before exit.
    pub async fn finish_cleanup(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.engine.cleanup.lock().expect("cleanup lock"));
        for h in handles {
            let _ = h.await;
        }
    }

    /// Registers `observer` to see every request's sample from now on.
    pub fn add_sample_observer(&self, observer: Arc<dyn SampleObserver>) -> ObserverId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Relaxed);
        self.engine.observers.write().expect("observers lock").push((id, observer));
        ObserverId(id)
    }

    /// Stops calling the observer registered under `id`.
    pub fn remove_sample_observer(&self, id: ObserverId) {
        self.engine.observers.write().expect("observers lock").retain(|(i, _)| *i != id.0);
    }

    /// Live counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.engine.metrics.snapshot()
    }

    /// Takes `bytes` of the memory budget (clamped to it) for object data the caller holds
    /// outside the client (an archive's decoded frames on their way to files), waiting
    /// while the budget is spent; it comes back when the reservation is dropped.
    pub async fn reserve_memory(&self, bytes: u64) -> MemoryReservation {
        MemoryReservation { permit: self.engine.pool.reserve(bytes).await }
    }

    /// The memory budget in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.engine.pool.budget()
    }

    /// Bytes of the memory budget in use right now (never above it): object data held in
    /// memory, and the parts of files in flight, which count against it as if held.
    pub fn memory_in_use(&self) -> u64 {
        self.engine.pool.in_use()
    }

    /// Bytes sent so far, cheap to call often (progress bars).
    pub fn bytes_sent(&self) -> u64 {
        self.engine.metrics.bytes_sent()
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.engine.metrics.bytes_received()
    }

    /// Uploads everything `reader` yields to `bucket/key`: one PUT if it fits in one part,
    /// else a multipart upload with parts read and sent concurrently within the memory
    /// budget, completed in part order, aborted on failure.
    pub async fn put_object<R>(&self, bucket: &str, key: &str, reader: R, opts: PutOptions) -> Result<PutResult>
    where
        R: AsyncRead + Unpin + Send,
    {
        upload::put_object(&self.engine, bucket, key, upload::Source::Stream(reader), opts).await
    }

    /// Uploads the file at `path` to `bucket/key`, as [`OptimizedS3Client::put_object`]
    /// does a stream, except that its parts are read from the file while they are sent:
    /// parts in flight hold no memory (they count against the budget all the same, which
    /// bounds how much is queued, except the last ones, which start together). The file
    /// must not change meanwhile; if it does, its parts' checksums no longer match and the
    /// upload fails.
    pub async fn put_file(
        &self,
        bucket: &str,
        key: &str,
        path: &std::path::Path,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        let io = |source| Error::Io { context: "cannot read", path: path.to_owned(), source };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        opts.content_length = Some(len);
        if len < MIN_PART_SIZE {
            // One PUT: reading it once into memory costs less than opening it per attempt.
            return upload::put_object(&self.engine, bucket, key, upload::Source::Stream(file), opts).await;
        }
        let src = upload::Source::<tokio::fs::File>::File { path: path.into(), len, pos: 0 };
        upload::put_object(&self.engine, bucket, key, src, opts).await
    }

    /// Downloads `bucket/key` into `writer` by parallel ranged GETs written in order, and
    /// verifies it against the checksum S3 stored. On a mismatch nothing more is written
    /// and [`Error::Integrity`] is returned.
    pub async fn get_object<W>(&self, bucket: &str, key: &str, writer: W) -> Result<GetResult>
    where
        W: AsyncWrite + Unpin + Send,
    {
        download::get_object(&self.engine, bucket, key, writer).await
    }

    /// Downloads to a file: written beside it under a temporary name and renamed into
    /// place only once complete and verified, so a failed download leaves no partial file.
    pub async fn get_object_to_file(&self, bucket: &str, key: &str, path: &std::path::Path) -> Result<GetResult> {
        crate::performance::to_file::get_object_to_file(&self.engine, bucket, key, path).await
    }

    /// Downloads a listed object to a file, as [`OptimizedS3Client::get_object_to_file`]
    /// does. One that fits a download range (about a second of one request's rate, at most
    /// a part) is a single GET of the whole object, pinned to the listed ETag and verified
    /// against the checksum that comes with it: no HEAD first, one request per object.
    pub async fn get_listed_to_file(
        &self,
        bucket: &str,
        entry: &ListEntry,
        path: &std::path::Path,
    ) -> Result<GetResult> {
        use crate::performance::to_file;
        if entry.size <= self.engine.range_size() {
            to_file::get_whole_to_file(&self.engine, bucket, &entry.key, entry.e_tag.as_deref(), entry.size, path).await
        } else {
            to_file::get_object_to_file(&self.engine, bucket, &entry.key, path).await
        }
    }

    /// Reads `len` bytes at `offset` (`len` 0: to the end). A read up to one download range
    /// (about a second of one request's rate, 2 MiB before any is measured, at most a
    /// part) costs one ranged GET of exactly that size; longer reads are split into
    /// parallel GETs.
    pub async fn get_range(&self, bucket: &str, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        download::get_range(&self.engine, bucket, key, offset, len).await
    }

    /// A reader of `bucket/key` (of `size` bytes, from a HEAD or a listing) for many small
    /// reads at any offsets, as a filesystem makes them: the first read costs one small GET,
    /// sequential reads are prefetched with a growing window, and blocks are kept in a cache
    /// shared by all readers of this client (half the memory budget).
    pub fn reader(&self, bucket: &str, key: &str, size: u64) -> ObjectReader {
        ObjectReader::new(self, bucket, key, size, None)
    }

    /// Like [`OptimizedS3Client::reader`], with a version tag (the ETag, or anything else
    /// that changes when the object does, such as its last-modified time) so that cached
    /// blocks of an older version of the object are never served.
    pub fn reader_with_version(&self, bucket: &str, key: &str, size: u64, version: &str) -> ObjectReader {
        ObjectReader::new(self, bucket, key, size, Some(version))
    }

    /// Hits, misses and size of the readers' shared block cache.
    pub fn read_cache_stats(&self) -> CacheStats {
        self.engine.block_cache.stats()
    }

    /// HEAD: size, ETag, stored checksum, user metadata.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        self.engine.head(bucket, key).await
    }

    /// Lists every object under `prefix` (all pages). With a delimiter (usually `/`), keys
    /// below the next delimiter are folded into `common_prefixes`.
    pub async fn list(&self, bucket: &str, prefix: &str, delimiter: Option<&str>) -> Result<Listing> {
        use futures::TryStreamExt;
        let mut listing = Listing::default();
        let mut pages = std::pin::pin!(self.list_pages(bucket, prefix, delimiter));
        while let Some(page) = pages.try_next().await? {
            listing.pages += 1;
            listing.objects.extend(page.objects);
            listing.common_prefixes.extend(page.common_prefixes);
        }
        Ok(listing)
    }

    /// [`OptimizedS3Client::list`] page by page (up to 1,000 keys each), each page fetched
    /// when the stream is polled: for a caller that works on each page as it comes (a
    /// listing of millions of keys in one page of memory). The stream ends after an error.
    pub fn list_pages<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
        delimiter: Option<&'a str>,
    ) -> impl futures::Stream<Item = Result<Listing>> + 'a {
        // `Some(token)`: a page is left to fetch (`None` token: the first); `None`: done.
        futures::stream::try_unfold(Some(None::<String>), move |state| async move {
            let Some(token) = state else { return Ok(None) };
            let (page, next) = self.list_page(bucket, prefix, delimiter, token.as_deref()).await?;
            Ok(Some((page, next.map(Some))))
        })
    }

    /// One page of [`OptimizedS3Client::list`] (up to 1,000 keys), from the continuation
    /// `token` of the page before (`None`: the first), with the token of the next page
    /// (`None`: this was the last). For a caller that works on each page as it comes.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
    ) -> Result<(Listing, Option<String>)> {
        let e = &self.engine;
        let page = e
            .run(Op::List, 0, move || async move {
                e.s3.list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .set_continuation_token(token.map(str::to_owned))
                    .send()
                    .await
                    .map_err(|err| e.sdk_failure(err))
            })
            .await
            .map_err(|err| err.with_object(bucket, prefix))?;
        let objects = page
            .contents()
            .iter()
            .map(|obj| ListEntry {
                key: obj.key().unwrap_or_default().to_owned(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                last_modified: obj.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                e_tag: obj.e_tag().map(str::to_owned),
            })
            .collect();
        let common_prefixes = page.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)).collect();
        let next = page.next_continuation_token().filter(|_| page.is_truncated() == Some(true)).map(str::to_owned);
        Ok((Listing { objects, common_prefixes, pages: 1 }, next))
    }

    /// Deletes an object (no error if it was already gone, as in S3).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let e = &self.engine;
        e.run(Op::Delete, 0, move || async move {
            e.s3.delete_object().bucket(bucket).key(key).send().await.map_err(|err| e.sdk_failure(err))
        })
        .await
        .map_err(|err| err.with_object(bucket, key))?;
        Ok(())
    }

    /// Open multipart uploads under `prefix` (what an interrupted upload may leave).
    pub async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<MultipartUploadInfo>> {
        let e = &self.engine;
        let out = e
            .run(Op::List, 0, move || async move {
                e.s3.list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(prefix)
                    .send()
                    .await
                    .map_err(|err| e.sdk_failure(err))
            })
            .await
            .map_err(|err| err.with_object(bucket, prefix))?;
        Ok(out
            .uploads()
            .iter()
            .map(|u| MultipartUploadInfo {
                key: u.key().unwrap_or_default().to_owned(),
                upload_id: u.upload_id().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    /// Aborts an open multipart upload.
    pub async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.engine.abort_multipart(bucket, key, upload_id).await
    }
}

impl Engine {
    pub(crate) fn part_size(&self) -> u64 {
        self.part_size.load(Relaxed)
    }

    /// Length of a download's ranged GETs: about [`RANGE_SECS`] of what one request moves
    /// (so that on a path with a slow per-connection rate the controller hears back often
    /// and the last ranges do not trail for many seconds), between 1 MiB and the part size.
    /// Uploads cannot do this: S3 parts are at least 5 MiB.
    pub(crate) fn range_size(&self) -> u64 {
        self.range_size.load(Relaxed).min(self.part_size())
    }

    /// What one data request moves per second (see [`RttEstimator::request_rate`]).
    pub(crate) fn request_rate(&self) -> Option<f64> {
        self.control.lock().expect("control lock").rtt.request_rate()
    }

    /// Parts sized from the start so the initial window fits the budget, as every later
    /// decision sizes them: larger ones would leave the window short of parts until the
    /// first request completes (32 of 8 MiB where a 1 MB/s-per-connection path needs 40 to
    /// fill).
    fn size_first_parts(&self, window: usize) {
        let part = self.clamp_part_size(part_size_for(window, self.pool.budget(), self.cfg.part_size));
        self.part_size.store(part, Relaxed);
        self.metrics.set_part_size(part);
    }

    /// Up to `n` data requests are about to start, the first ones of this client: their
    /// connections (no more than the window) are dialled now, beside whatever round trip
    /// comes first, instead of each request waiting its own handshake when it starts. On a
    /// short path (a first round trip under [`SHORT_ROUND_TRIP`]) there is nothing to gain.
    pub(crate) fn expect_requests(&self, n: usize) {
        let Some(warm) = &self.warm else { return };
        let c = self.control.lock().expect("control lock");
        if c.data_begun || c.short_path {
            return;
        }
        let n = n.min(c.controller.window());
        drop(c);
        warm.want(n);
    }

    /// The first request to finish, if it is not a data request and no data request has
    /// begun, tells how far away the endpoint is: a short path starts at
    /// [`ClientConfig::short_path_concurrency`] requests instead of `concurrency` (see
    /// there). Requests already under way are left alone (a ship's first pieces go up while
    /// the destination is checked).
    fn first_round_trip(&self, latency: std::time::Duration) {
        let mut c = self.control.lock().expect("control lock");
        if !std::mem::replace(&mut c.pristine, false) {
            return;
        }
        c.short_path = latency < SHORT_ROUND_TRIP;
        if !c.short_path || !c.adaptive_parts {
            return;
        }
        let Some(n) = self.cfg.short_path_concurrency.filter(|&n| n < c.controller.window()) else { return };
        c.controller = self.cfg.controller.build(n, self.cfg.max_concurrency);
        let window = c.controller.window();
        self.window.set_limit(window);
        self.metrics.set_concurrency(window);
        self.size_first_parts(window);
        tracing::debug!(?latency, window, "short round trip: starting small");
    }

    pub(crate) fn clamp_part_size(&self, n: u64) -> u64 {
        // Under a bandwidth cap, about one second's worth per request keeps pacing smooth.
        let paced = self.pacer.as_ref().map_or(MAX_PART_SIZE, |p| p.rate() as u64);
        n.clamp(MIN_PART_SIZE, MAX_PART_SIZE.min(self.pool.budget() / 2).min(paced).max(MIN_PART_SIZE))
    }

    /// With a bandwidth cap, waits until this download request's share of the link begins.
    /// (Uploads are paced byte by byte instead: see [`Engine::upload_body`]. A download's
    /// bytes cannot be: the socket buffers of many connections would let the sender run
    /// far ahead of a paced reader.)
    async fn pace(&self, bytes: u64) {
        let Some(pacer) = &self.pacer else { return };
        tokio::time::sleep_until(pacer.slot(bytes).into()).await;
    }

    /// The body of an upload request: as it is, or, under a bandwidth cap, released chunk
    /// by chunk at the cap's rate.
    pub(crate) fn upload_body(&self, body: ByteStream) -> ByteStream {
        match &self.pacer {
            None => body,
            Some(pacer) => ByteStream::new(SdkBody::from_body_1_x(PacedBody::new(body.into_inner(), pacer.clone()))),
        }
    }

    /// Tells the controller, at most every [`PROGRESS_EVERY`], how many bytes the
    /// connections have moved so far, and applies its answer. Called by requests in flight
    /// as they wait (so a path on which every request takes 25 s is heard from between
    /// completions). The count is the kernel's (bytes the far end acknowledged, bytes
    /// received), not what the client handed to its sockets: an upload's bodies go into
    /// socket buffers of up to 4 MiB each, most of a round of parts at once.
    fn progress(&self, op: Op) {
        let Some(wire) = &self.wire else { return };
        let now = Instant::now();
        let at = now.duration_since(self.epoch).as_nanos() as u64;
        let last = self.progress_at.load(Relaxed);
        if at < last + PROGRESS_EVERY.as_nanos() as u64
            || self.progress_at.compare_exchange(last, at, Relaxed, Relaxed).is_err()
        {
            return;
        }
        let mut c = self.control.lock().expect("control lock");
        c.controller.on_progress(now, wire.total(), self.window.in_use());
        self.apply(&mut c, op, now);
    }

    /// Runs one request with retries. Data requests (`bytes > 0` or GET/PUT ops) take a
    /// window slot per attempt; the slot is released while backing off.
    pub(crate) async fn run<T, F, Fut>(&self, op: Op, bytes: u64, attempt_fn: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        self.run_keyed("", op, bytes, attempt_fn).await
    }

    /// [`Engine::run`] for a request on object `key`: sample observers see the key.
    pub(crate) async fn run_keyed<T, F, Fut>(&self, key: &str, op: Op, bytes: u64, attempt_fn: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        self.run_steering(key, op, bytes, Steering::Steers, attempt_fn).await
    }

    /// How many times the window requests of this kind may fill: 2 for an upload's last
    /// parts, except under a fixed window, which means exactly that many in flight (the
    /// bench's sweep relies on it).
    pub(crate) fn room(&self, steering: Steering) -> usize {
        let fixed = matches!(self.cfg.controller, ControllerKind::Fixed(_));
        if steering == Steering::Tail && !fixed { 2 } else { 1 }
    }

    /// [`Engine::run_keyed`] with a choice of [`Steering`].
    pub(crate) async fn run_steering<T, F, Fut>(
        &self,
        key: &str,
        op: Op,
        bytes: u64,
        steering: Steering,
        mut attempt_fn: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let windowed = matches!(op, Op::PutObject | Op::UploadPart | Op::GetObject);
        let steers = steering != Steering::AppLimited;
        let room = self.room(steering);
        let mut attempt: u32 = 0;
        // A retry after a reset or a timeout keeps its request's place in the window: the
        // path lost it, and it is the same request again, not a new one. Queued behind a
        // window its own reset had just cut (and that a first round of long requests
        // drains to a few as they end), a 5 MiB part reset at 1.6 s into a lossy upload
        // started again only at 6.8 s, when the other 46 parts had finished, and then ran
        // alone for 5.3 s.
        let mut permit = None;
        loop {
            if windowed && permit.is_none() {
                permit = Some(self.window.acquire_within(room).await);
            }
            if op == Op::GetObject && bytes > 0 {
                self.pace(bytes).await;
            }
            self.metrics.request_started(windowed);
            let (delivered_at_start, delivered_time_at_start) = {
                let mut c = self.control.lock().expect("control lock");
                c.pristine &= !windowed;
                c.data_begun |= windowed;
                (c.delivered, c.delivered_time)
            };
            let started = Instant::now();
            let result = if !windowed {
                attempt_fn().await
            } else {
                let attempt = Arc::new(Attempt::default());
                let first = attempt.clone().scope(attempt_fn());
                tokio::pin!(first);
                let mut watch = StallWatch::default();
                loop {
                    // `Ok`: hedge now, for this reason. `Err`: look again after this long.
                    let hedge = if self.stalled(&attempt, &mut watch) {
                        // Its connection holds bytes the server has not taken for a while.
                        // Nothing else tells a stall in the first round of a lossy upload
                        // (52 parts of 5 MiB in flight, 6.8 s each) from the others until
                        // they end; then the stalled part starts again alone, 5 s behind.
                        Ok("its connection stalled")
                    } else {
                        // The request is late past the hedge threshold. Until the client
                        // has latency samples there is none: the first round of a run (60
                        // pieces of a small tree all start at once) is checked again as
                        // they arrive, so a stalled first-round request is hedged too.
                        match self.hedge_after() {
                            None => Err(HEDGE_RECHECK),
                            // Checked again at least every recheck: the window may empty
                            // meanwhile, and then the threshold drops.
                            Some(after) if started.elapsed() < after => {
                                Err((after - started.elapsed()).min(HEDGE_RECHECK))
                            }
                            // Late, but so is everyone: the path is slower, not this request.
                            Some(after) if !self.is_straggler(started) => Err((after / 4).min(HEDGE_RECHECK)),
                            Some(_) => Ok("a straggler"),
                        }
                    };
                    let wait = match hedge {
                        Ok(why) if self.take_hedge() => {
                            tracing::debug!(op = op.name(), why, "hedging");
                            break self.reporting(op, Box::pin(race(first, attempt_fn()))).await;
                        }
                        // No hedge left in the budget now; more requests starting add some.
                        Ok(_) => HEDGE_RECHECK,
                        Err(wait) => wait,
                    };
                    tokio::select! {
                        r = &mut first => break r,
                        () = tokio::time::sleep(wait) => self.progress(op),
                    }
                }
            };
            let finished = Instant::now();
            tracing::debug!(
                op = op.name(),
                key,
                bytes,
                ms = finished.duration_since(started).as_millis() as u64,
                ok = result.is_ok(),
                "request finished"
            );
            if windowed && result.is_ok() {
                self.newest_done.fetch_max(started.duration_since(self.epoch).as_nanos() as u64, Relaxed);
            }
            self.metrics.request_finished();
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(f) => f.outcome,
            };
            let mut sample = Sample {
                op,
                bytes,
                started,
                finished,
                outcome,
                retransmit: attempt > 0,
                delivered_at_start,
                delivered_time_at_start,
                delivered_at_end: delivered_at_start,
            };
            if !windowed && sample.outcome == Outcome::Ok {
                self.first_round_trip(sample.latency());
            }
            if windowed && steers {
                self.steer(&mut sample);
            } else if windowed && sample.outcome == Outcome::Ok {
                // Still learn the latency, which hedging needs.
                let mut c = self.control.lock().expect("control lock");
                c.rtt.on_sample(sample.finished, sample.bytes, sample.latency(), sample.retransmit);
            }
            self.metrics.record(&sample);
            for (_, o) in self.observers.read().expect("observers lock").iter() {
                o.on_sample(key, &sample);
            }
            let failure = match result {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            attempt += 1;
            let unreachable = matches!(failure.error, Error::Unreachable { .. });
            let limit = if unreachable { self.cfg.retry.max_unreachable_attempts } else { self.cfg.retry.max_attempts };
            if !failure.outcome.is_retryable() || attempt >= limit {
                if !failure.outcome.is_retryable() || unreachable {
                    return Err(failure.error);
                }
                return Err(Error::RetriesExhausted {
                    op: op.name(),
                    attempts: attempt,
                    outcome: failure.outcome,
                    detail: failure.error.to_string(),
                });
            }
            if !failure.outcome.is_loss() {
                // The service turned it away (throttled, failing): the retry queues behind
                // the window like any request, and its backoff holds no slot (with one of 8
                // prefixes failing outright, retries waiting out their backoff in the
                // window's slots took an uncoordinated upload from 15.1 to 9.9 MB/s).
                permit = None;
            }
            tracing::debug!(op = op.name(), attempt, outcome = failure.outcome.name(), error = %failure.error, "retrying");
            tokio::time::sleep(self.cfg.retry.backoff(attempt - 1, rand::random::<f64>())).await;
        }
    }

    /// How long a data request may run before a duplicate is sent (`None`: too few samples
    /// yet for a latency estimate; see [`crate::network::loss::hedge_after`]). A request
    /// past it is hedged if it is also behind its peers ([`Engine::is_straggler`]).
    fn hedge_after(&self) -> Option<std::time::Duration> {
        if self.metrics.data_requests() < HEDGE_MIN_SAMPLES {
            return None;
        }
        let c = self.control.lock().expect("control lock");
        Some(crate::network::loss::hedge_after(c.rtt.srtt()?, c.rtt.rto(), self.window.in_use(), self.window.limit()))
    }

    /// Whether a late request started at `started` is a straggler rather than a sign that
    /// the whole path slowed down (a window that just grew, a bottleneck that just
    /// narrowed): a request started after it has already succeeded, or it runs alone.
    fn is_straggler(&self, started: Instant) -> bool {
        let newest_done = self.newest_done.load(Relaxed);
        newest_done > started.duration_since(self.epoch).as_nanos() as u64 || self.window.in_use() <= 1
    }

    /// Awaits `request` (a hedged request's race), reporting progress meanwhile as the
    /// hedge checks do: the tail of an upload may be two such races for seconds. (The
    /// race of two SDK calls is boxed by the caller: held inline here, the debug build's
    /// futures overflowed a test's stack.)
    async fn reporting<F: std::future::Future>(&self, op: Op, request: F) -> F::Output {
        tokio::pin!(request);
        loop {
            tokio::select! {
                r = &mut request => return r,
                () = tokio::time::sleep(HEDGE_RECHECK) => self.progress(op),
            }
        }
    }

    /// Whether the connection under `attempt` has stalled for [`STALLED`] (never for a
    /// client on the SDK's own HTTP client, whose sockets it cannot see).
    fn stalled(&self, attempt: &Attempt, watch: &mut StallWatch) -> bool {
        let Some(wire) = &self.wire else { return false };
        let socket = attempt.socket().and_then(|id| wire.socket(id).map(|count| (id, count)));
        watch.still_for(Instant::now(), socket) >= STALLED
    }

    /// Takes one hedge from the budget (5% of data requests, at least one).
    fn take_hedge(&self) -> bool {
        self.metrics.try_take_hedge(HEDGE_BUDGET)
    }

    /// Feeds a data request's sample to the controller and applies its answer: the window
    /// (permits) and, unless fixed, the part size that fits that window in memory.
    fn steer(&self, sample: &mut Sample) {
        let mut c = self.control.lock().expect("control lock");
        if sample.outcome == Outcome::Ok {
            c.rtt.on_sample(sample.finished, sample.bytes, sample.latency(), sample.retransmit);
            c.delivered += sample.bytes;
            c.delivered_time = sample.finished;
            c.monitor.on_completion(sample.finished, sample.bytes);
        }
        sample.delivered_at_end = c.delivered;
        c.controller.on_sample(sample);
        self.apply(&mut c, sample.op, sample.finished);
    }

    /// Applies the controller's answer: the window (permits) and, unless fixed, the part
    /// and range sizes that fit it; and records a timeline point.
    fn apply(&self, c: &mut Control, op: Op, now: Instant) {
        let mut window = c.controller.window();
        if let (Some(pacer), Some(latency)) = (&self.pacer, c.rtt.srtt()) {
            // Under a bandwidth cap the pacer sets the rate: the window must never be what
            // holds it back (a BBR drain or probe would otherwise dent the capped rate).
            let request = if op == Op::GetObject { self.range_size() } else { self.part_size() }.max(1) as f64;
            let need = (1.5 * pacer.rate() * latency.as_secs_f64() / request).ceil() as usize;
            window = window.max(need.min(self.cfg.max_concurrency));
        }
        self.window.set_limit(window);
        self.metrics.set_concurrency(window);
        if c.adaptive_parts {
            let part = self.clamp_part_size(part_size_for(window, self.pool.budget(), self.cfg.part_size));
            self.part_size.store(part, Relaxed);
            self.metrics.set_part_size(part);
            if let Some(rate) = c.rtt.request_rate() {
                let range = ((rate * RANGE_SECS) as u64).clamp(download::MIN_RANGE, part.max(download::MIN_RANGE));
                let range = range / download::MIN_RANGE * download::MIN_RANGE;
                self.range_size.store(range, Relaxed);
            }
        }
        let (in_flight, part) = (self.window.in_use() as u64, self.part_size());
        let Control { monitor, controller, .. } = c;
        monitor.maybe_record(now, in_flight, part, || controller.state());
    }

    /// Maps an SDK error to an outcome and a typed error.
    pub(crate) fn sdk_failure<E>(&self, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let detail = DisplayErrorContext(&err).to_string();
        match &err {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().map(str::to_owned);
                let message = se.err().message().unwrap_or_default().to_owned();
                let outcome = classify_status(status, code.as_deref());
                let error = match (status, code.as_deref()) {
                    (_, Some("NoSuchBucket")) => Error::NoSuchBucket { bucket: String::new() },
                    (_, Some("NoSuchKey")) | (404, Some("NotFound") | None) => {
                        Error::NoSuchKey { bucket: String::new(), key: String::new() }
                    }
                    (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied")) | (403, _) => {
                        let code = code.clone().unwrap_or_else(|| "Forbidden".into());
                        Error::AccessDenied { endpoint: self.endpoint.clone(), detail: format!("{code}: {message}") }
                    }
                    (_, Some("BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest")) => {
                        Error::Integrity { bucket: String::new(), key: String::new(), detail: message.clone() }
                    }
                    _ => Error::Service {
                        op: "request",
                        status,
                        code: code.clone().unwrap_or_else(|| "Unknown".into()),
                        message: if message.is_empty() { detail.clone() } else { message.clone() },
                    },
                };
                Failure::new(outcome, error)
            }
            SdkError::TimeoutError(_) => {
                Failure::new(Outcome::Timeout, Error::Unreachable { endpoint: self.endpoint.clone(), detail })
            }
            SdkError::DispatchFailure(df) => {
                if let Some(cause) = credentials_error(&err) {
                    // No request was sent: there is nothing to sign it with. Retrying will
                    // not find credentials that are not there.
                    return Failure::new(
                        Outcome::ClientError,
                        Error::AccessDenied {
                            endpoint: self.endpoint.clone(),
                            detail: format!("no usable AWS credentials ({cause})"),
                        },
                    );
                }
                if df.is_timeout() {
                    return Failure::new(
                        Outcome::Timeout,
                        Error::Unreachable { endpoint: self.endpoint.clone(), detail },
                    );
                }
                // Connect failures (refused, DNS, no route) mean the endpoint is unreachable;
                // anything else is a connection that broke mid-request.
                let lower = detail.to_ascii_lowercase();
                let connect_failed = lower.contains("client error (connect)")
                    || lower.contains("connection refused")
                    || lower.contains("dns error")
                    || lower.contains("failed to lookup");
                if connect_failed {
                    Failure::new(Outcome::Reset, Error::Unreachable { endpoint: self.endpoint.clone(), detail })
                } else {
                    Failure::new(
                        Outcome::Reset,
                        Error::Service { op: "request", status: 0, code: "ConnectionReset".into(), message: detail },
                    )
                }
            }
            SdkError::ResponseError(_) => Failure::new(
                Outcome::Reset,
                Error::Service { op: "request", status: 0, code: "ResponseError".into(), message: detail },
            ),
            _ => Failure::new(Outcome::ClientError, Error::Config(detail)),
        }
    }

    pub(crate) async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo> {
        let out = self
            .run(Op::HeadObject, 0, move || async move {
                self.s3
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|err| self.sdk_failure(err))
            })
            .await;
        let out = match out {
            Ok(o) => o,
            // HEAD has no body, so a 404 does not say whether the bucket or the key is missing.
            Err(Error::NoSuchKey { .. }) => return Err(self.missing_bucket_or_key(bucket, key).await),
            Err(other) => return Err(other.with_object(bucket, key)),
        };
        Ok(ObjectInfo {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            e_tag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            checksum: StoredChecksum::pick(out.checksum_crc64_nvme(), out.checksum_crc32_c(), out.checksum_crc32()),
            metadata: out.metadata().cloned().unwrap_or_default(),
        })
    }

    /// After a bare 404, tells a missing bucket from a missing key.
    pub(crate) async fn missing_bucket_or_key(&self, bucket: &str, key: &str) -> Error {
        let res = self
            .run(Op::HeadObject, 0, move || async move {
                self.s3.head_bucket().bucket(bucket).send().await.map_err(|err| self.sdk_failure(err))
            })
            .await;
        match res {
            Err(Error::NoSuchKey { .. } | Error::NoSuchBucket { .. }) => Error::NoSuchBucket { bucket: bucket.into() },
            _ => Error::NoSuchKey { bucket: bucket.into(), key: key.into() },
        }
    }

    pub(crate) async fn abort_multipart(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.run_keyed(key, Op::AbortMultipart, 0, move || async move {
            self.s3
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
                .map_err(|err| self.sdk_failure(err))
        })
        .await
        .map(|_| ())
    }
}

/// Hedged requests may be at most this fraction of data requests.
const HEDGE_BUDGET: f64 = 0.05;
/// Data requests finished before any is hedged (the latency estimate needs them).
const HEDGE_MIN_SAMPLES: u64 = 20;
/// How often a request started before the latency estimate existed checks for it.
const HEDGE_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a request's connection may hold unacknowledged bytes with nothing moving
/// before the request is hedged: several of TCP's retransmission timeouts on a path of
/// 100 ms, far beyond the gaps of a connection sharing a busy bottleneck.
const STALLED: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the controller hears of the bytes moving (see [`Engine::progress`]).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Target duration of one ranged GET of a download (see [`Engine::range_size`]).
const RANGE_SECS: f64 = 1.0;
/// Ranged GETs of a download before any request has been measured.
const FIRST_RANGE: u64 = 2 * 1024 * 1024;

/// Runs a straggler and its duplicate; the first success wins (the other is cancelled),
/// and a failure waits for the other.
async fn race<T, A, B>(first: A, second: B) -> Result<T, Failure>
where
    A: std::future::Future<Output = Result<T, Failure>> + Unpin,
    B: std::future::Future<Output = Result<T, Failure>>,
{
    tokio::pin!(second);
    match futures::future::select(first, second).await {
        futures::future::Either::Left((Ok(v), _)) | futures::future::Either::Right((Ok(v), _)) => Ok(v),
        futures::future::Either::Left((Err(_), other)) => other.await,
        futures::future::Either::Right((Err(_), other)) => other.await,
    }
}

/// The next chunk of a GET body (`None` at its end), with an idle timeout: a stall or a
/// broken connection is a retryable failure.
pub(crate) async fn next_chunk(
    engine: &Engine,
    body: &mut aws_sdk_s3::primitives::ByteStream,
) -> Result<Option<Bytes>, Failure> {
    let failure = |outcome, code: &str, message: String| {
        Failure::new(outcome, Error::Service { op: "GetObject", status: 0, code: code.into(), message })
    };
    match tokio::time::timeout(engine.cfg.idle_timeout, body.try_next()).await {
        Err(_) => Err(failure(Outcome::Timeout, "Stalled", "response body stalled".into())),
        Ok(Err(e)) => Err(failure(Outcome::Reset, "ConnectionReset", e.to_string())),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

/// A body that ended after `got` of the `expected` bytes is a retryable failure.
pub(crate) fn check_length(expected: Option<u64>, got: u64) -> Result<(), Failure> {
    match expected {
        Some(n) if got != n => Err(Failure::new(
            Outcome::Reset,
            Error::Service {
                op: "GetObject",
                status: 0,
                code: "ShortBody".into(),
                message: format!("expected {n} bytes, got {got}"),
            },
        )),
        _ => Ok(()),
    }
}

/// The credential provider's error, if that is why a request could not be sent, as one
/// short line (the chain's last provider's message, not the whole nested report).
fn credentials_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cause = err.source();
    while let Some(e) = cause {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(match c {
                // What the default chain says when its last provider (instance metadata)
                // found nothing either.
                CredentialsError::CredentialsNotLoaded(_) | CredentialsError::ProviderError(_) => {
                    "none found: the environment, ~/.aws, SSO, container and instance metadata were tried".to_owned()
                }
                other => other.to_string(),
            });
        }
        cause = e.source();
    }
    None
}

/// Appends a GET body to `buf` (see [`next_chunk`]); what arrived before a failure stays in
/// `buf` so the retry can ask for the rest only.
pub(crate) async fn read_body(
    engine: &Engine,
    mut body: aws_sdk_s3::primitives::ByteStream,
    expected: Option<u64>,
    buf: &mut BytesMut,
) -> Result<(), Failure> {
    let had = buf.len();
    while let Some(chunk) = next_chunk(engine, &mut body).await? {
        buf.extend_from_slice(&chunk);
    }
    check_length(expected, (buf.len() - had) as u64)
}
