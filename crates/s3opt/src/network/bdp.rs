//! Bandwidth-delay product over requests: how many bytes, and so how many requests of a
//! given size, must be in flight to keep a path of bandwidth `B` busy when each request
//! takes `latency` (Little's law: in flight = throughput x time in system).

use std::time::Duration;

/// Bytes that should be in flight: `bandwidth` (bytes/s) x `latency`.
pub fn bdp_bytes(bandwidth: f64, latency: Duration) -> f64 {
    bandwidth.max(0.0) * latency.as_secs_f64()
}

/// Requests of `request_bytes` that should be in flight, at least 1.
pub fn window_for(bandwidth: f64, latency: Duration, request_bytes: u64) -> f64 {
    (bdp_bytes(bandwidth, latency) / request_bytes.max(1) as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_mb_per_s_over_four_second_requests_of_8_mb_needs_twenty() {
        let w = window_for(40e6, Duration::from_secs(4), 8_000_000);
        assert!((w - 20.0).abs() < 1e-9);
        assert_eq!(window_for(1.0, Duration::from_millis(1), 8_000_000), 1.0);
    }
}
