//! `s3opt`: CargoShip's S3 optimization stack as a library.
//!
//! One type, [`OptimizedS3Client`], does the transfers: uploads from streams of any length
//! within a fixed memory budget, parallel ranged downloads verified against S3's stored
//! checksum, `get_range` for filesystem-style reads, and metrics counted from real
//! requests. Its concurrency and part size can be changed while transfers run; the
//! controllers in [`network`] and [`adaptive`] are what change them.
//!
//! ```no_run
//! # async fn demo() -> s3opt::Result<()> {
//! use s3opt::{ClientConfig, OptimizedS3Client, PutOptions};
//! let client = OptimizedS3Client::new(ClientConfig {
//!     endpoint_url: Some("http://127.0.0.1:9000".into()),
//!     ..Default::default()
//! })
//! .await?;
//! let file = tokio::fs::File::open("data.bin").await.expect("open");
//! client.put_object("bucket", "data.bin", file, PutOptions::default()).await?;
//! let head = client.get_range("bucket", "data.bin", 0, 4096).await?;
//! println!("{} bytes, {} requests", head.len(), client.metrics().requests);
//! # Ok(()) }
//! ```
//!
//! Modules mirror the design note CargoShip comes from: `network` (estimators and
//! controllers), `adaptive` (the control loop), `performance` (buffer pool, pipelines,
//! metrics), and `client`.

pub mod adaptive;
pub mod client;
pub mod config;
pub mod connection;
pub mod coordination;
pub mod error;
pub mod integrity;
pub mod network;
pub mod performance;

pub use adaptive::controller::{ControllerKind, ControllerState};
pub use adaptive::monitor::TimelinePoint;
pub use client::{
    ListEntry, Listing, MemoryReservation, MultipartUploadInfo, ObjectInfo, ObserverId, OptimizedS3Client,
    SampleObserver,
};
pub use config::ClientConfig;
pub use error::{Error, Result};
pub use performance::block_cache::CacheStats;
pub use performance::download::GetResult;
pub use performance::metrics::MetricsSnapshot;
pub use performance::reader::{ObjectReader, PendingRead, ReaderStats};
pub use performance::upload::{Commit, CommitGate, JournaledPart, PutOptions, PutResult, ResumePoint, UploadJournal};
