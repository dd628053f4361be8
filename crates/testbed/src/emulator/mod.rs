//! The S3-aware WAN/fault emulator: an HTTP proxy in front of any S3 endpoint that imposes
//! a [`Scenario`]: delay, bandwidth, per-connection caps, per-prefix 503 SlowDown, resets,
//! stalls, 5xx and corrupted bytes, changing on a schedule, and reports what it did.

pub mod proxy;
pub mod scenario;
pub mod stats;

pub use proxy::Emulator;
pub use scenario::Scenario;
pub use stats::Report;
