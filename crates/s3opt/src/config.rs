//! Client configuration: a plain struct with documented defaults. The CLI fills it from
//! flags and AWS environment conventions; library users build it directly.

use std::time::Duration;

use crate::network::loss::RetryPolicy;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's most parts in one upload.
pub const MAX_PARTS: u32 = 10_000;

/// How to build an [`OptimizedS3Client`](crate::OptimizedS3Client).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Custom endpoint (S3-compatible store). `None`: the SDK's resolution, which honours
    /// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` and the profile.
    pub endpoint_url: Option<String>,
    /// Region; `None`: from the environment/profile, else `us-east-1`.
    pub region: Option<String>,
    /// Named profile from `~/.aws/config`; `None`: `AWS_PROFILE` or `default`.
    pub profile: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); needed by most S3-compatible stores.
    /// `None`: on when an endpoint is set, off for AWS.
    pub force_path_style: Option<bool>,
    /// Static credentials (access key, secret); `None`: the standard AWS credential chain.
    pub credentials: Option<(String, String)>,
    /// How the number of requests in flight is decided. Default `auto`.
    pub controller: crate::adaptive::controller::ControllerKind,
    /// Requests in flight at the start (the whole time with `fixed:N`). Default 64: on a
    /// fast path a few too many cost only memory (the buffer pool holds large parts back
    /// within the budget); on a slow, stream-capped path too few cost a whole request time
    /// before the first correction (64 small objects of ~600 KiB fill lossy's 40 MB/s of
    /// 1 MB/s connections in one round; 32 took two).
    pub concurrency: usize,
    /// Requests in flight at the start instead of `concurrency` when the client's first
    /// round trip (a HEAD, a CreateMultipartUpload, a listing, before any data request has
    /// begun) took under [`SHORT_ROUND_TRIP`]: on such a path (a LAN, loopback) the
    /// controller's Startup doubles in milliseconds, while 64 requests at once cost memory
    /// and CPU for nothing (a 256 MiB download on loopback: 75-103 MiB peak RSS against
    /// 36-58, and 10% more CPU than starting at 8: medians of 15 interleaved runs, 382 and
    /// 347 ms). `None`: always start at `concurrency`. Default 8.
    pub short_path_concurrency: Option<usize>,
    /// Most requests in flight any controller may ask for. Default 128.
    pub max_concurrency: usize,
    /// Part size for multipart uploads and ranged downloads. Default 8 MiB.
    pub part_size: u64,
    /// Most bytes of object data held in memory by all transfers together. Default 256 MiB.
    pub memory_budget: u64,
    /// Cap on payload bytes per second, all transfers together: upload bodies leave in
    /// 64 KiB chunks at the cap's rate, downloads start each ranged GET when its share of
    /// the link begins, and parts shrink to about one second's worth (within 5% over 10 s
    /// windows in `bench/bwlimit.py`). `None` (default): no cap.
    pub bandwidth_limit: Option<u64>,
    /// TCP congestion control for the client's connections (Linux `TCP_CONGESTION`, e.g.
    /// `bbr`, `cubic`, `reno`: `/proc/sys/net/ipv4/tcp_available_congestion_control` lists
    /// them). `None` (default): the system's default.
    pub tcp_congestion: Option<String>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Longest wait for a TCP connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a response or inside a response body before the
    /// request is abandoned as stalled and retried. Default 30 s.
    pub idle_timeout: Duration,
}

/// A first round trip shorter than this marks a short path (see
/// [`ClientConfig::short_path_concurrency`]): loopback and LAN endpoints answer a HEAD in
/// 1-10 ms, AWS S3 from inside its region in 10-30 ms (where starting small costs a few
/// 100 ms rounds of Startup), and across a WAN it is longer still.
pub const SHORT_ROUND_TRIP: Duration = Duration::from_millis(20);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            profile: None,
            force_path_style: None,
            credentials: None,
            controller: crate::adaptive::controller::ControllerKind::Auto,
            concurrency: 64,
            short_path_concurrency: Some(8),
            max_concurrency: 128,
            part_size: 8 * 1024 * 1024,
            memory_budget: 256 * 1024 * 1024,
            bandwidth_limit: None,
            tcp_congestion: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl ClientConfig {
    /// Checks the settings against S3's limits and each other.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::Config;
        if self.concurrency == 0 {
            return Err(Config("concurrency must be at least 1".into()));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Config(format!("part size {} is outside S3's limits (5 MiB to 5 GiB)", self.part_size)));
        }
        if self.bandwidth_limit == Some(0) {
            return Err(Config("bandwidth limit must be above 0 bytes/s".into()));
        }
        if self.memory_budget < 2 * self.part_size {
            return Err(Config(format!(
                "memory budget {} must hold at least two parts of {} bytes",
                self.memory_budget, self.part_size
            )));
        }
        Ok(())
    }
}
