//! Cross-prefix pipeline coordination (seed 004): spreading many objects over several key
//! prefixes so per-prefix request limits and one shared path are both used well.
//!
//! - [`config`]: [`CoordinationConfig`] with documented defaults and the seed's presets;
//! - [`scheduler`]: [`TransferScheduler`], the prefix choice (`tcp_like`, `fair_share`,
//!   `adaptive`);
//! - [`congestion`]: [`GlobalCongestionController`], the global window and per-prefix
//!   allocations, request-rate caps and health, fed with the engine's own samples;
//! - [`coordinator`]: [`PipelineCoordinator`], leases and bounded per-prefix queues;
//! - [`uploader`]: [`ParallelUploader`], many local files over N prefixes, coordinated or by
//!   a plain distribution;
//! - [`metrics`]: [`CoordinationMetrics`] and [`PerformanceBaseline`].
//!
//! Lifecycle: `new`, `register_prefix`, `attach(&client)` (its request samples feed the
//! congestion controller), `start`, then leases or `schedule_upload`, and always `stop()`
//! (graceful) or `cancel()` at the end: they end the coordinator's tasks and detach it. When
//! `acquire` fails with [`CoordinationError::Failed`], upload uncoordinated under
//! [`PipelineCoordinator::fallback_prefix`].
//!
//! ```no_run
//! # async fn demo(client: s3opt::OptimizedS3Client) -> Result<(), Box<dyn std::error::Error>> {
//! use s3opt::coordination::{CoordinationConfig, LeaseOutcome, PipelineCoordinator};
//! let coord = PipelineCoordinator::new(CoordinationConfig::default())?;
//! for p in ["archives/00/", "archives/80/"] {
//!     coord.register_prefix(p, 0.0);
//! }
//! coord.attach(&client);
//! coord.start(None)?;
//! let lease = coord.acquire(64 << 20).await?;
//! let key = lease.key("suitcase-0001.tar.zst");
//! let r = client.put_object("bucket", &key, &b"..."[..], Default::default()).await;
//! lease.finish(match r {
//!     Ok(r) => LeaseOutcome::Uploaded { bytes: r.bytes },
//!     Err(_) => LeaseOutcome::Failed,
//! });
//! coord.stop().await;
//! println!("{:?}", coord.metrics());
//! # Ok(()) }
//! ```

pub mod config;
pub mod congestion;
pub mod coordinator;
pub mod metrics;
pub mod scheduler;
pub mod uploader;

pub use config::{AdaptiveParameters, BandwidthStrategy, CoordinationConfig, PRESETS, Strategy};
pub use congestion::{CongestionSnapshot, CongestionState, GlobalCongestionController, PrefixHealth};
pub use coordinator::{
    CoordinationError, LeaseOutcome, PipelineCoordinator, PrefixLease, ScheduledUpload, UploadDone, UploadExecutor,
    UploadRejected, UploadTicket,
};
pub use metrics::{CoordinationMetrics, PerformanceBaseline};
pub use scheduler::{TransferScheduler, Trend};
pub use uploader::{
    Distribution, ObjectResult, ParallelConfig, ParallelUploader, PrefixPattern, PrefixResult, UploadItem,
    UploadSummary,
};
