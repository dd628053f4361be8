//! CUBIC (RFC 9438) over a concurrency window instead of a byte window: `C = 0.4`,
//! `beta = 0.7`, with the TCP-friendly (Reno-estimate) region. Congestion signals are
//! `503 SlowDown`, timeouts and resets; at most one decrease per RTT.

use std::time::{Duration, Instant};

/// CUBIC's scaling constant (windows per second cubed).
pub const C: f64 = 0.4;
/// Multiplicative decrease factor.
pub const BETA: f64 = 0.7;

/// The CUBIC window.
#[derive(Debug, Clone)]
pub struct Cubic {
    w: f64,
    w_max: f64,
    k: f64,
    epoch: Option<Instant>,
    last_decrease: Option<Instant>,
    max_window: f64,
}

impl Cubic {
    /// Starts at `initial` requests, never above `max_window`.
    pub fn new(initial: f64, max_window: f64) -> Self {
        Self { w: initial.max(1.0), w_max: initial.max(1.0), k: 0.0, epoch: None, last_decrease: None, max_window }
    }

    /// Current window (requests).
    pub fn window(&self) -> f64 {
        self.w
    }

    /// A congestion signal at `now`; `rtt` is the current request latency estimate.
    /// Returns whether the window was decreased (not within one RTT of the last decrease).
    pub fn on_congestion(&mut self, now: Instant, rtt: Duration) -> bool {
        if self.last_decrease.is_some_and(|t| now.duration_since(t) < rtt) {
            return false;
        }
        self.w_max = self.w;
        self.w = (self.w * BETA).max(1.0);
        self.k = (self.w_max * (1.0 - BETA) / C).cbrt();
        self.epoch = Some(now);
        self.last_decrease = Some(now);
        true
    }

    /// A successful request finished at `now`.
    pub fn on_ack(&mut self, now: Instant, rtt: Duration) {
        let epoch = *self.epoch.get_or_insert(now);
        let t = now.duration_since(epoch).as_secs_f64();
        let rtt = rtt.as_secs_f64().max(1e-3);
        let cubic = C * (t + rtt - self.k).powi(3) + self.w_max;
        let reno = self.w_max * BETA + 3.0 * (1.0 - BETA) / (1.0 + BETA) * (t / rtt);
        let target = cubic.max(reno).min(self.w * 1.5);
        if target > self.w {
            self.w += (target - self.w) / self.w;
        }
        self.w = self.w.min(self.max_window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrease_is_multiplicative_once_per_rtt_and_growth_returns_to_w_max() {
        let t0 = Instant::now();
        // Request latency 1 s, so growth is in CUBIC's region, not the Reno-friendly one.
        let rtt = Duration::from_secs(1);
        let mut c = Cubic::new(20.0, 1000.0);
        assert!(c.on_congestion(t0, rtt));
        assert!((c.window() - 14.0).abs() < 1e-9);
        assert!(!c.on_congestion(t0 + Duration::from_millis(500), rtt), "one decrease per RTT");
        // K = cbrt(20 * 0.3 / 0.4) = 2.47 s: by then the window is back near 20.
        let mut now = t0;
        while now < t0 + Duration::from_millis(2600) {
            now += Duration::from_millis(50);
            c.on_ack(now, rtt);
        }
        assert!((c.window() - 20.0).abs() < 1.5, "{}", c.window());
        // And beyond W_max it keeps probing upward.
        while now < t0 + Duration::from_secs(5) {
            now += Duration::from_millis(50);
            c.on_ack(now, rtt);
        }
        assert!(c.window() > 22.0, "{}", c.window());
    }
}
