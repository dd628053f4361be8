//! Pacing by virtual scheduling: each chunk reserves the link from the moment the previous
//! chunk finished (or now, if idle) for `bytes / rate`, and may pass once its reservation
//! ends. Pure: time is passed in. The client's `--bwlimit` paces requests with it; the
//! testbed's emulator shapes its links with it.

use std::time::{Duration, Instant};

/// Idle time banked at most, so timer granularity (about 1 ms) does not cost throughput.
const SLACK: Duration = Duration::from_millis(10);

/// One direction of one link (a connection, the shared bottleneck, a client's cap).
#[derive(Debug)]
pub struct RateLimiter {
    next_free: Instant,
}

impl RateLimiter {
    /// A limiter idle since `now`.
    pub fn new(now: Instant) -> Self {
        Self { next_free: now }
    }

    /// Reserves the link for `bytes` at `mbps` MB/s (0 = unlimited) and returns when the
    /// transmission ends. At most [`SLACK`] of idle time is banked, so bursts above the rate
    /// are at most `SLACK x rate` bytes.
    pub fn reserve(&mut self, now: Instant, bytes: usize, mbps: f64) -> Instant {
        if mbps <= 0.0 {
            self.next_free = now;
            return now;
        }
        let start = self.next_free.max(now.checked_sub(SLACK).unwrap_or(now));
        self.next_free = start + Duration::from_secs_f64(bytes as f64 / (mbps * 1e6));
        self.next_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_to_back_chunks_are_spaced_at_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        let mut done = t0;
        for _ in 0..100 {
            done = l.reserve(t0, 10_000, 2.0);
        }
        // 1 MB at 2 MB/s = 0.5 s.
        assert!((done - t0).as_secs_f64() - 0.5 < 1e-6);
    }

    #[test]
    fn idle_time_is_banked_only_up_to_the_slack_and_unlimited_is_immediate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        let later = t0 + Duration::from_secs(10);
        let done = l.reserve(later, 1_000_000, 1.0);
        assert_eq!(done + SLACK - later, Duration::from_secs(1));
        assert_eq!(l.reserve(later, 1_000_000, 0.0), later);
    }
}
