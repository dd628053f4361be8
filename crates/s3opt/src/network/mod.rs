//! Network estimators and controllers: pure logic over per-request samples.
//!
//! Nothing here does I/O or reads a clock; time comes in as an argument, so the same code
//! runs in virtual time in tests and steers real transfers in the client.

pub mod bbr;
pub mod bdp;
pub mod cubic;
pub mod loss;
pub mod pacing;
pub mod rtt;
#[cfg(test)]
pub(crate) mod sim;

use std::time::{Duration, Instant};

pub use loss::Outcome;

/// One finished request attempt, as seen by the transfer engine: the unit every estimator
/// and controller consumes.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which kind of request it was.
    pub op: Op,
    /// Payload bytes moved (sent for uploads, received for downloads).
    pub bytes: u64,
    /// When the attempt started.
    pub started: Instant,
    /// When it finished (successfully or not).
    pub finished: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// `true` for a retry of an earlier failed attempt (Karn's rule: no RTT sample).
    pub retransmit: bool,
    /// Bytes delivered by all requests of the client when this one started.
    pub delivered_at_start: u64,
    /// When that count was last reached (the completion before this request started).
    /// A delivery rate is measured from here, not from `started`, so bytes of requests
    /// that were already under way are not credited to a shorter interval (BBR's
    /// `delivered_time`).
    pub delivered_time_at_start: Instant,
    /// Bytes delivered by all requests when this one finished (its own bytes included).
    pub delivered_at_end: u64,
}

impl Sample {
    /// Time from start to finish.
    pub fn latency(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
impl Sample {
    /// A request alone on the link (only its own bytes delivered meanwhile), for tests.
    pub(crate) fn alone(op: Op, started: Instant, latency: Duration, bytes: u64, outcome: Outcome) -> Self {
        Self {
            op,
            bytes,
            started,
            finished: started + latency,
            outcome,
            retransmit: false,
            delivered_at_start: 0,
            delivered_time_at_start: started,
            delivered_at_end: bytes,
        }
    }
}

/// Kind of S3 request, for metrics and for controllers that treat them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    PutObject,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    GetObject,
    HeadObject,
    List,
    Delete,
}

impl Op {
    /// Name as in the S3 API.
    pub fn name(self) -> &'static str {
        match self {
            Op::PutObject => "PutObject",
            Op::CreateMultipart => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::CompleteMultipart => "CompleteMultipartUpload",
            Op::AbortMultipart => "AbortMultipartUpload",
            Op::GetObject => "GetObject",
            Op::HeadObject => "HeadObject",
            Op::List => "ListObjectsV2",
            Op::Delete => "DeleteObject",
        }
    }
}
