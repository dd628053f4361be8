//! Request latency estimation: RFC 6298 SRTT/RTTVAR/RTO (Karn's rule: retried requests give
//! no sample), a windowed minimum (about 10 s), and a least-squares fit of latency against
//! request size (`latency = fixed + bytes / rate`) so part-size decisions know what each
//! request costs regardless of its size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a minimum stays valid.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const FIT_SAMPLES: usize = 64;

/// Latency estimator over request samples.
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    srtt: Option<f64>,
    rttvar: f64,
    /// (time, latency) candidates for the windowed minimum, increasing latencies.
    mins: VecDeque<(Instant, f64)>,
    /// (bytes, seconds) of recent successful requests.
    fit: VecDeque<(f64, f64)>,
}

impl RttEstimator {
    /// Feeds one successful request of `bytes` that took `latency`, finished at `now`.
    /// Retransmitted requests are ignored (Karn's rule).
    pub fn on_sample(&mut self, now: Instant, bytes: u64, latency: Duration, retransmit: bool) {
        if retransmit {
            return;
        }
        let r = latency.as_secs_f64();
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(srtt) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (srtt - r).abs();
                self.srtt = Some(0.875 * srtt + 0.125 * r);
            }
        }
        while self.mins.back().is_some_and(|&(_, v)| v >= r) {
            self.mins.pop_back();
        }
        self.mins.push_back((now, r));
        while self.mins.front().is_some_and(|&(t, _)| now.duration_since(t) > MIN_RTT_WINDOW) {
            self.mins.pop_front();
        }
        self.fit.push_back((bytes as f64, r));
        if self.fit.len() > FIT_SAMPLES {
            self.fit.pop_front();
        }
    }

    /// Smoothed latency.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_secs_f64)
    }

    /// Retransmission timeout: SRTT + 4 RTTVAR, at least 200 ms, at most 60 s.
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => Duration::from_secs(1),
            Some(s) => Duration::from_secs_f64((s + 4.0 * self.rttvar).clamp(0.2, 60.0)),
        }
    }

    /// Smallest latency seen within the last [`MIN_RTT_WINDOW`] (as of the last sample).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.mins.front().map(|&(_, v)| Duration::from_secs_f64(v))
    }

    /// What one request moves per second: the median of `bytes / latency` over recent
    /// requests of at least 256 KiB (smaller ones are mostly fixed cost). `None` until
    /// three such requests were seen.
    pub fn request_rate(&self) -> Option<f64> {
        let mut rates: Vec<f64> =
            self.fit.iter().filter(|&&(b, t)| b >= 256.0 * 1024.0 && t > 0.0).map(|&(b, t)| b / t).collect();
        if rates.len() < 3 {
            return None;
        }
        rates.sort_by(f64::total_cmp);
        Some(rates[rates.len() / 2])
    }

    /// Fit of `latency = fixed + bytes / rate` over recent requests: `(fixed seconds,
    /// bytes per second)`. `None` until requests of at least two sizes were seen.
    pub fn size_fit(&self) -> Option<(f64, f64)> {
        let n = self.fit.len() as f64;
        if n < 2.0 {
            return None;
        }
        let (sx, sy) = self.fit.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let (sxx, sxy) =
            self.fit.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + (x - mx).powi(2), b + (x - mx) * (y - my)));
        if sxx <= f64::EPSILON || sxy <= 0.0 {
            return None;
        }
        let slope = sxy / sxx;
        Some(((my - slope * mx).max(0.0), 1.0 / slope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn srtt_and_rto_follow_rfc6298_and_retransmits_are_ignored() {
        let t = Instant::now();
        let mut e = RttEstimator::default();
        e.on_sample(t, 100, ms(100), false);
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rto(), ms(300)); // 100 + 4 * 50
        e.on_sample(t, 100, ms(5000), true);
        assert_eq!(e.srtt(), Some(ms(100)), "Karn: no sample from a retransmission");
        e.on_sample(t, 100, ms(200), false);
        // rttvar = 0.75*50 + 0.25*100 = 62.5; srtt = 0.875*100 + 0.125*200 = 112.5
        assert!((e.srtt().unwrap().as_secs_f64() - 0.1125).abs() < 1e-9);
        assert!((e.rto().as_secs_f64() - (0.1125 + 0.25)).abs() < 1e-9);
    }

    #[test]
    fn min_rtt_is_windowed() {
        let t = Instant::now();
        let mut e = RttEstimator::default();
        e.on_sample(t, 1, ms(50), false);
        e.on_sample(t + ms(1000), 1, ms(80), false);
        assert_eq!(e.min_rtt(), Some(ms(50)));
        e.on_sample(t + ms(10_500), 1, ms(90), false);
        assert_eq!(e.min_rtt(), Some(ms(80)), "the 50 ms sample aged out");
    }

    #[test]
    fn size_fit_recovers_fixed_cost_and_rate() {
        let t = Instant::now();
        let mut e = RttEstimator::default();
        for i in 1..=20u64 {
            let bytes = i * 1_000_000;
            let secs = 0.06 + bytes as f64 / 2e6;
            e.on_sample(t, bytes, Duration::from_secs_f64(secs), false);
        }
        let (fixed, rate) = e.size_fit().unwrap();
        assert!((fixed - 0.06).abs() < 1e-3, "{fixed}");
        assert!((rate - 2e6).abs() / 2e6 < 1e-3, "{rate}");
    }

    #[test]
    fn the_request_rate_is_the_median_over_large_requests() {
        let t = Instant::now();
        let mut e = RttEstimator::default();
        e.on_sample(t, 4096, ms(50), false);
        e.on_sample(t, 2_000_000, ms(1000), false);
        e.on_sample(t, 2_000_000, ms(2000), false);
        assert_eq!(e.request_rate(), None, "two large requests are not enough");
        e.on_sample(t, 4_000_000, ms(1000), false);
        assert_eq!(e.request_rate(), Some(2e6), "median of 1, 2 and 4 MB/s; the 4 KiB request left out");
    }
}
