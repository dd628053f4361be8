//! Memory, pipelines and measurement: the bounded buffer pool every transfer borrows from,
//! the upload and download pipelines, the prefetching reader with its shared block cache,
//! and metrics counted from real request events.

pub mod block_cache;
pub mod buffer;
pub mod download;
pub mod metrics;
pub(crate) mod paced;
pub mod reader;
pub(crate) mod to_file;
pub mod upload;
