//! A trend forecast of the delivered rate: Holt's linear exponential smoothing (a level and
//! a trend) over one-second totals of the bytes requests move as they stream. Time comes from the samples, so it
//! runs the same in virtual time. The `auto` controller compares its level (the smoothed
//! delivered rate) with the BBR model's bandwidth to see that the path has slowed (see
//! [`super::controller`]); `forecast_mbps` in the controller state shows it.

use std::time::Instant;

/// Weight of the newest second in the level: about a 3 s memory, enough to smooth the
/// dips and bursts of bytes in flight (new requests waiting on their first bytes, socket
/// buffers filling) yet follow a drop in a few seconds.
const ALPHA: f64 = 0.35;
/// Weight of the newest change in the trend.
const BETA: f64 = 0.2;
/// Seconds of data before the forecast is trusted.
const MIN_SECONDS: u64 = 4;
/// A gap longer than this (an idle client) starts the forecast over.
const MAX_GAP_SECONDS: u64 = 30;

/// The forecast.
#[derive(Debug, Clone, Default)]
pub struct Predictor {
    start: Option<Instant>,
    /// The second being summed (since `start`) and its bytes so far.
    second: u64,
    bytes: u64,
    level: Option<f64>,
    trend: f64,
    seconds: u64,
}

impl Predictor {
    /// Records `bytes` moved by `at`.
    pub fn on_bytes(&mut self, at: Instant, bytes: u64) {
        let start = *self.start.get_or_insert(at);
        let second = at.saturating_duration_since(start).as_secs();
        if second > self.second + MAX_GAP_SECONDS {
            *self = Self { start: Some(at), ..Self::default() };
        } else {
            // Seconds in which nothing completed count as zero.
            while self.second < second {
                self.close_second();
            }
        }
        self.bytes += bytes;
    }

    fn close_second(&mut self) {
        let x = std::mem::take(&mut self.bytes) as f64;
        self.second += 1;
        self.seconds += 1;
        self.level = Some(match self.level {
            None => x,
            Some(level) => {
                let next = ALPHA * x + (1.0 - ALPHA) * (level + self.trend);
                self.trend = BETA * (next - level) + (1.0 - BETA) * self.trend;
                next
            }
        });
    }

    /// Bytes per second expected `ahead` seconds after the last whole second; `None`
    /// until a few seconds have been seen.
    pub fn forecast(&self, ahead: f64) -> Option<f64> {
        let level = self.level.filter(|_| self.seconds >= MIN_SECONDS)?;
        Some((level + self.trend * ahead).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed(p: &mut Predictor, t0: Instant, from_ms: u64, to_ms: u64, every_ms: u64, bytes: u64) {
        for ms in (from_ms..to_ms).step_by(every_ms as usize) {
            p.on_bytes(t0 + Duration::from_millis(ms), bytes);
        }
    }

    #[test]
    fn a_steady_bursty_rate_is_forecast_flat() {
        // 5 MB completing every 125 ms: 40 MB/s in bursts.
        let (t0, mut p) = (Instant::now(), Predictor::default());
        assert_eq!(p.forecast(1.0), None);
        feed(&mut p, t0, 0, 12_000, 125, 5_000_000);
        let f = p.forecast(2.0).unwrap();
        assert!((f - 40e6).abs() < 2e6, "forecast {:.1} MB/s", f / 1e6);
    }

    #[test]
    fn a_drop_is_followed_within_seconds_and_a_ramp_is_extrapolated() {
        let (t0, mut p) = (Instant::now(), Predictor::default());
        feed(&mut p, t0, 0, 20_000, 125, 5_000_000);
        // 40 -> 10 MB/s at 20 s.
        feed(&mut p, t0, 20_000, 24_000, 500, 5_000_000);
        p.on_bytes(t0 + Duration::from_millis(24_000), 0);
        let f = p.forecast(2.0).unwrap();
        assert!(f < 20e6, "4 s after the drop the forecast is {:.1} MB/s", f / 1e6);
        // A ramp: +2 MB/s every second; the forecast looks ahead of the last second.
        let mut ramp = Predictor::default();
        for s in 0..15u64 {
            ramp.on_bytes(t0 + Duration::from_secs(s), (10 + 2 * s) * 1_000_000);
        }
        ramp.on_bytes(t0 + Duration::from_secs(15), 0);
        let (now, ahead) = (ramp.forecast(0.0).unwrap(), ramp.forecast(3.0).unwrap());
        assert!(ahead > now + 4e6, "trend carried forward: {:.1} -> {:.1} MB/s", now / 1e6, ahead / 1e6);
    }

    #[test]
    fn seconds_without_completions_count_and_a_long_idle_starts_over() {
        let (t0, mut p) = (Instant::now(), Predictor::default());
        feed(&mut p, t0, 0, 6_000, 100, 1_000_000);
        assert!(p.forecast(0.0).unwrap() > 8e6);
        p.on_bytes(t0 + Duration::from_secs(10), 0);
        assert!(p.forecast(0.0).unwrap() < 5e6, "four silent seconds pull the level down");
        p.on_bytes(t0 + Duration::from_secs(100), 1_000_000);
        assert_eq!(p.forecast(0.0), None, "after a long idle nothing is assumed");
    }
}
