//! Memory, pipelines and measurement: the bounded buffer pool every transfer borrows from,
//! the upload and download pipelines, and metrics counted from real request events.

pub mod buffer;
pub mod download;
pub mod metrics;
pub mod upload;
