//! Outcome classification and recovery policy.
//!
//! Every request attempt ends in one [`Outcome`]. Throttling (`503 SlowDown`,
//! `RequestLimitExceeded`) is kept apart from other server errors because it is a congestion
//! signal the controllers react to; timeouts and resets are loss-like signals. The
//! [`RetryPolicy`] decides whether and when to try again (exponential backoff, full jitter).
//! [`LossFilter`] tells random loss (an odd reset on a lossy path) from congestion.

use std::collections::VecDeque;
use std::time::Duration;

/// How a request attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Success.
    Ok,
    /// The service asked us to slow down: 503 SlowDown, RequestLimitExceeded, 429.
    Throttled,
    /// Any other 5xx.
    ServerError,
    /// No answer in time (connect, first byte, or a stalled body).
    Timeout,
    /// The connection broke (reset, truncated body, refused).
    Reset,
    /// The data did not match its checksum (e.g. `BadDigest`).
    Integrity,
    /// A 4xx that retrying cannot fix (not found, denied, bad request).
    ClientError,
}

impl Outcome {
    /// All outcomes, in a fixed order (index = `self as usize`).
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Throttled,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Reset,
        Outcome::Integrity,
        Outcome::ClientError,
    ];

    /// Whether a fresh attempt of the same request may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::ClientError)
    }

    /// Whether this is a congestion signal (controllers decrease their window on it).
    pub fn is_congestion(self) -> bool {
        self == Outcome::Throttled || self.is_loss()
    }

    /// Whether the path lost the request (a timeout or a reset), rather than the service
    /// turning it away.
    pub fn is_loss(self) -> bool {
        matches!(self, Outcome::Timeout | Outcome::Reset)
    }

    /// snake_case name, as in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Throttled => "throttled",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::Integrity => "integrity",
            Outcome::ClientError => "client_error",
        }
    }
}

/// Classifies an HTTP status and S3 error code.
pub fn classify_status(status: u16, code: Option<&str>) -> Outcome {
    match (status, code) {
        (_, Some("SlowDown" | "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "TooManyRequests")) => {
            Outcome::Throttled
        }
        (429, _) => Outcome::Throttled,
        (_, Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch")) => Outcome::Integrity,
        (_, Some("RequestTimeout")) => Outcome::Timeout,
        (503, _) => Outcome::Throttled,
        (500..=599, _) => Outcome::ServerError,
        (200..=299, _) => Outcome::Ok,
        _ => Outcome::ClientError,
    }
}

/// When to retry and how long to wait: exponential backoff with full jitter
/// (`sleep = random(0, min(cap, base * 2^attempt))`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. Default 8.
    pub max_attempts: u32,
    /// Backoff base. Default 100 ms.
    pub base: Duration,
    /// Longest single wait. Default 10 s.
    pub cap: Duration,
    /// Attempts when the endpoint cannot be reached at all. Default 3.
    pub max_unreachable_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_unreachable_attempts: 3,
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the wait before attempt `attempt + 1` (0-based failed attempt).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        exp.min(self.cap)
    }

    /// Wait before the next attempt, drawn with full jitter from `unit` in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        self.backoff_ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Tells congestion from random loss, as BBR tolerates a little loss: throttling is always
/// congestion (the service says so); a timeout or reset is congestion only when such
/// failures are frequent, more than `threshold` of the last `span` attempts. A path that
/// drops one request in 200 at random then keeps its window, while a path that breaks
/// because it is overloaded still sees its window cut.
#[derive(Debug, Clone)]
pub struct LossFilter {
    recent: VecDeque<bool>,
    failures: usize,
    span: usize,
    threshold: f64,
}

impl Default for LossFilter {
    /// One loss in 50 attempts is tolerated; two are congestion.
    fn default() -> Self {
        Self::new(50, 0.02)
    }
}

impl LossFilter {
    /// Judges losses over the last `span` attempts against `threshold` (a fraction).
    pub fn new(span: usize, threshold: f64) -> Self {
        Self { recent: VecDeque::with_capacity(span), failures: 0, span: span.max(1), threshold }
    }

    /// Records one attempt's outcome; `true` when the controller should treat it as a
    /// congestion signal. Fewer than `span` attempts so far count as `span` (an early
    /// single reset is not a 100% loss rate).
    pub fn on_outcome(&mut self, outcome: Outcome) -> bool {
        let lossy = outcome.is_loss();
        if self.recent.len() == self.span && self.recent.pop_front() == Some(true) {
            self.failures -= 1;
        }
        self.recent.push_back(lossy);
        self.failures += usize::from(lossy);
        match outcome {
            Outcome::Throttled => true,
            _ if lossy => self.failures as f64 / self.span as f64 > self.threshold,
            _ => false,
        }
    }
}

/// How long a data request may run before it is hedged (sent again; the first answer
/// wins), given the smoothed latency and RFC 6298 timeout of data requests and how full the
/// window is. While the window is busy: past both twice the latency and the timeout (a
/// duplicate takes a share of the link from the others). Once at most an eighth of it is in
/// use, the end of a run: past 1.25 times the latency, since a duplicate then takes no
/// one's share, while a stalled request holds back the whole transfer (a small tree's last
/// piece, stalled, waited 2.1 s for its hedge, twice the latency, with the link idle).
pub fn hedge_after(srtt: Duration, rto: Duration, in_use: usize, limit: usize) -> Duration {
    if in_use * 8 <= limit { srtt.mul_f64(1.25) } else { (srtt * 2).max(rto) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stragglers_are_hedged_sooner_once_the_window_is_nearly_empty() {
        let (srtt, rto) = (Duration::from_millis(1000), Duration::from_millis(1500));
        assert_eq!(hedge_after(srtt, rto, 40, 64), Duration::from_millis(2000), "busy: twice the latency");
        assert_eq!(
            hedge_after(Duration::from_millis(50), Duration::from_millis(200), 40, 64),
            Duration::from_millis(200),
            "busy: at least the timeout"
        );
        assert_eq!(hedge_after(srtt, rto, 8, 64), Duration::from_millis(1250), "an eighth in use: the tail");
        assert_eq!(hedge_after(srtt, rto, 1, 64), Duration::from_millis(1250));
        assert_eq!(hedge_after(srtt, rto, 1, 4), Duration::from_millis(2000), "a small window alone is not a tail");
    }

    #[test]
    fn slowdown_is_throttling_not_a_server_error() {
        assert_eq!(classify_status(503, Some("SlowDown")), Outcome::Throttled);
        assert_eq!(classify_status(503, None), Outcome::Throttled);
        assert_eq!(classify_status(400, Some("RequestLimitExceeded")), Outcome::Throttled);
        assert_eq!(classify_status(500, Some("InternalError")), Outcome::ServerError);
        assert_eq!(classify_status(400, Some("BadDigest")), Outcome::Integrity);
        assert_eq!(classify_status(404, Some("NoSuchKey")), Outcome::ClientError);
        assert!(Outcome::Throttled.is_congestion() && !Outcome::ServerError.is_congestion());
        assert!(!Outcome::ClientError.is_retryable());
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ceiling(0), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(800));
        assert_eq!(p.backoff_ceiling(30), Duration::from_secs(10));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(400));
    }

    #[test]
    fn an_odd_reset_is_random_loss_but_frequent_ones_and_throttling_are_congestion() {
        let mut f = LossFilter::default();
        assert!(!f.on_outcome(Outcome::Reset), "the first reset of a transfer is not congestion");
        for _ in 0..60 {
            assert!(!f.on_outcome(Outcome::Ok));
        }
        assert!(!f.on_outcome(Outcome::Timeout), "one loss in 50 attempts is tolerated");
        assert!(f.on_outcome(Outcome::Reset), "a second within 50 attempts is congestion");
        assert!(f.on_outcome(Outcome::Throttled), "503 SlowDown always is");
        for _ in 0..50 {
            f.on_outcome(Outcome::Ok);
        }
        assert!(!f.on_outcome(Outcome::Reset), "old losses age out");
        assert!(!f.on_outcome(Outcome::ServerError));
    }
}
