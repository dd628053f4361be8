//! [`TransferScheduler`]: picks the prefix for the next object among those that can take
//! it, by one of three strategies (`tcp_like`, `fair_share`, `adaptive`). Pure: it learns
//! from completions it is told about and sees the current load as [`Candidate`]s.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::config::Strategy;

/// Completions remembered per prefix and for the network profile (the seed's bound).
const HISTORY: usize = 20;
/// Objects at least this large count as "large" for the adaptive strategy's trend steering.
pub const LARGE_OBJECT: u64 = 64 << 20;

/// Direction of a throughput history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Increasing,
    Stable,
    Decreasing,
}

/// The seed's trend rule: recent (last 3) average against the whole history, +-10%.
pub fn trend_of(history: &VecDeque<f64>) -> Trend {
    if history.len() < 4 {
        return Trend::Stable;
    }
    let all = history.iter().sum::<f64>() / history.len() as f64;
    let recent = history.iter().rev().take(3).sum::<f64>() / 3.0;
    if all <= 0.0 {
        return Trend::Stable;
    }
    match (recent - all) / all {
        t if t > 0.1 => Trend::Increasing,
        t if t < -0.1 => Trend::Decreasing,
        _ => Trend::Stable,
    }
}

/// What the scheduler has learned about one prefix (the seed's `PrefixPerformanceMetrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefixPerformance {
    /// Per-object throughput, MB/s, newest last.
    pub throughput_history: VecDeque<f64>,
    /// Smoothed throughput, MB/s.
    pub throughput_mbps: f64,
    /// Smoothed object latency, ms.
    pub latency_ms: f64,
    /// Smoothed share of failed objects.
    pub error_rate: f64,
    pub completed: u64,
    pub failed: u64,
    pub bytes: u64,
}

impl PrefixPerformance {
    pub fn trend(&self) -> Trend {
        trend_of(&self.throughput_history)
    }
}

/// The network as learned from all completions (the seed's `NetworkProfile`).
#[derive(Debug, Clone, Serialize)]
pub struct NetworkProfile {
    /// Estimated aggregate bandwidth, MB/s.
    pub estimated_bandwidth_mbps: f64,
    /// 0..1, grows with the number of observations.
    pub confidence: f64,
    pub bandwidth_trend: Trend,
    pub observations: u64,
    history: VecDeque<f64>,
}

impl Default for NetworkProfile {
    fn default() -> Self {
        Self {
            estimated_bandwidth_mbps: 0.0,
            confidence: 0.0,
            bandwidth_trend: Trend::Stable,
            observations: 0,
            history: VecDeque::new(),
        }
    }
}

impl NetworkProfile {
    /// One aggregate throughput observation (MB/s): the estimate moves up by the learning
    /// rate when exceeded, down at half that rate otherwise.
    pub fn observe(&mut self, observed_mbps: f64, learning_rate: f64) {
        self.observations += 1;
        self.estimated_bandwidth_mbps = if self.observations == 1 {
            observed_mbps
        } else if observed_mbps > self.estimated_bandwidth_mbps {
            (1.0 - learning_rate) * self.estimated_bandwidth_mbps + learning_rate * observed_mbps
        } else {
            (1.0 - learning_rate / 2.0) * self.estimated_bandwidth_mbps + learning_rate / 2.0 * observed_mbps
        };
        self.confidence = 1.0 - 1.0 / (1.0 + self.observations as f64 / 10.0);
        self.history.push_back(observed_mbps);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.bandwidth_trend = trend_of(&self.history);
    }
}

/// The current state of one prefix that could take the next object.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub prefix: &'a str,
    /// Objects in flight under it.
    pub in_flight: usize,
    /// Objects it may have in flight now (its allocation).
    pub limit: usize,
    /// Objects waiting in its queue.
    pub queued: usize,
    /// Its queue's bound.
    pub queue_capacity: usize,
    /// Its congestion window and the global one (objects).
    pub congestion_window: f64,
    pub global_window: f64,
}

impl Candidate<'_> {
    /// Load over capacity: in flight plus queued over allocation plus queue bound.
    pub fn utilization(&self) -> f64 {
        (self.in_flight + self.queued) as f64 / (self.limit + self.queue_capacity).max(1) as f64
    }
}

/// The scheduler.
#[derive(Debug)]
pub struct TransferScheduler {
    strategy: Strategy,
    learning_rate: f64,
    metrics: HashMap<String, PrefixPerformance>,
    profile: NetworkProfile,
    rng: u64,
    decisions: u64,
}

impl TransferScheduler {
    /// A scheduler; `seed` makes its random tie-breaks reproducible.
    pub fn new(strategy: Strategy, learning_rate: f64, seed: u64) -> Self {
        Self {
            strategy,
            learning_rate,
            metrics: HashMap::new(),
            profile: NetworkProfile::default(),
            rng: seed | 1,
            decisions: 0,
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn profile(&self) -> &NetworkProfile {
        &self.profile
    }

    pub fn performance(&self, prefix: &str) -> Option<&PrefixPerformance> {
        self.metrics.get(prefix)
    }

    /// Decisions made so far.
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// Uniform in [0, 1) (xorshift64*).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An object finished under `prefix`: `bytes` in `secs`, or failed.
    pub fn record(&mut self, prefix: &str, bytes: u64, secs: f64, ok: bool) {
        let lr = self.learning_rate.max(0.05);
        let m = self.metrics.entry(prefix.to_owned()).or_default();
        let err = if ok { 0.0 } else { 1.0 };
        m.error_rate = if m.completed + m.failed == 0 { err } else { (1.0 - lr * 2.0) * m.error_rate + lr * 2.0 * err };
        if !ok {
            m.failed += 1;
            return;
        }
        m.completed += 1;
        m.bytes += bytes;
        let mbps = bytes as f64 / secs.max(1e-6) / 1e6;
        let ms = secs * 1e3;
        if m.completed == 1 {
            m.throughput_mbps = mbps;
            m.latency_ms = ms;
        } else {
            m.throughput_mbps = (1.0 - lr) * m.throughput_mbps + lr * mbps;
            m.latency_ms = (1.0 - lr) * m.latency_ms + lr * ms;
        }
        m.throughput_history.push_back(mbps);
        if m.throughput_history.len() > HISTORY {
            m.throughput_history.pop_front();
        }
    }

    /// An aggregate throughput observation (MB/s over an update interval).
    pub fn observe_aggregate(&mut self, mbps: f64) {
        self.profile.observe(mbps, self.learning_rate);
    }

    /// Index of the candidate that gets an object of `size` bytes (`None`: no candidates).
    pub fn select(&mut self, candidates: &[Candidate<'_>], size: u64) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        self.decisions += 1;
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            let score = match self.strategy {
                Strategy::TcpLike => self.tcp_like_score(c),
                Strategy::FairShare => self.fair_share_score(c),
                Strategy::Adaptive => self.adaptive_score(c, size),
            };
            // Randomized tie-break: a jitter far smaller than any real difference.
            let score = score + self.unit() * 1e-3;
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The seed's weighted score.
    fn tcp_like_score(&self, c: &Candidate<'_>) -> f64 {
        let m = self.metrics.get(c.prefix);
        let congestion = (c.congestion_window / c.global_window.max(1.0)).min(1.0);
        let peak = self.metrics.values().map(|m| m.throughput_mbps).fold(0.0, f64::max);
        let est = self.profile.estimated_bandwidth_mbps.max(peak);
        let throughput = match m {
            Some(m) if est > 0.0 => (m.throughput_mbps / est).min(1.0),
            // Unknown prefixes are assumed as good as the best, so they get explored.
            _ => 1.0,
        };
        let latency = m.map_or(1.0, |m| 1.0 / (1.0 + m.latency_ms / 100.0));
        let error = 1.0 - m.map_or(0.0, |m| m.error_rate);
        let load = 1.0 - c.utilization().min(1.0);
        congestion * 0.3 + throughput * 0.25 + latency * 0.2 + error * 0.15 + load * 0.1
    }

    /// Least utilized after taking the object: keeps utilization even across prefixes.
    fn fair_share_score(&self, c: &Candidate<'_>) -> f64 {
        let after = (c.in_flight + c.queued + 1) as f64 / (c.limit + c.queue_capacity).max(1) as f64;
        -after
    }

    /// Expected throughput from history, discounted by errors and load, steered by trend
    /// (more for large objects); unexplored prefixes get an optimistic estimate while the
    /// network profile's confidence is low.
    fn adaptive_score(&self, c: &Candidate<'_>, size: u64) -> f64 {
        let m = self.metrics.get(c.prefix);
        let known: Vec<f64> = self.metrics.values().map(|m| m.throughput_mbps).collect();
        let mean = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
        let expected = match m {
            Some(m) if m.completed > 0 => m.throughput_mbps,
            _ => mean.max(1e-3) * (1.0 + (1.0 - self.profile.confidence)),
        };
        let (up, down) = if size >= LARGE_OBJECT { (1.3, 0.5) } else { (1.1, 0.85) };
        let trend = match m.map(PrefixPerformance::trend) {
            Some(Trend::Increasing) => up,
            Some(Trend::Decreasing) => down,
            _ => 1.0,
        };
        let reliability = 1.0 - m.map_or(0.0, |m| m.error_rate).min(0.95);
        let load = 1.0 + c.utilization() * 2.0;
        expected / mean.max(1e-3) * trend * reliability / load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(prefix: &str, in_flight: usize, queued: usize) -> Candidate<'_> {
        Candidate {
            prefix,
            in_flight,
            limit: 4,
            queued,
            queue_capacity: 4,
            congestion_window: 4.0,
            global_window: 16.0,
        }
    }

    #[test]
    fn tcp_like_prefers_the_prefix_with_better_throughput_latency_and_errors() {
        let mut s = TransferScheduler::new(Strategy::TcpLike, 0.1, 7);
        for _ in 0..5 {
            s.record("fast/", 10_000_000, 0.1, true);
            s.record("slow/", 10_000_000, 1.0, true);
        }
        s.record("slow/", 0, 0.0, false);
        let c = [cand("slow/", 0, 0), cand("fast/", 0, 0)];
        for _ in 0..20 {
            assert_eq!(s.select(&c, 1 << 20), Some(1));
        }
    }

    #[test]
    fn tcp_like_breaks_ties_at_random() {
        let mut s = TransferScheduler::new(Strategy::TcpLike, 0.1, 42);
        let c = [cand("a/", 1, 0), cand("b/", 1, 0), cand("c/", 1, 0)];
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[s.select(&c, 1).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "every tied prefix is picked: {seen:?}");
    }

    #[test]
    fn tcp_like_weighs_the_congestion_window() {
        let mut s = TransferScheduler::new(Strategy::TcpLike, 0.1, 1);
        let mut narrow = cand("a/", 0, 0);
        narrow.congestion_window = 1.0;
        let c = [narrow, cand("b/", 0, 0)];
        assert_eq!(s.select(&c, 1), Some(1));
    }

    #[test]
    fn fair_share_evens_out_utilization() {
        let mut s = TransferScheduler::new(Strategy::FairShare, 0.1, 3);
        let mut load = [3usize, 0, 1];
        for _ in 0..8 {
            let c: Vec<_> = ["a/", "b/", "c/"].iter().zip(load).map(|(p, l)| cand(p, l, 0)).collect();
            let i = s.select(&c, 1).unwrap();
            load[i] += 1;
        }
        assert_eq!(load, [4, 4, 4], "each object went to the least utilized prefix");
    }

    #[test]
    fn fair_share_is_capacity_aware() {
        let mut s = TransferScheduler::new(Strategy::FairShare, 0.1, 3);
        let mut big = cand("big/", 2, 0);
        big.limit = 12;
        let c = [cand("small/", 1, 0), big];
        assert_eq!(s.select(&c, 1), Some(1), "2 of 16 is less utilized than 1 of 8");
    }

    #[test]
    fn adaptive_steers_large_uploads_away_from_a_degrading_prefix() {
        let mut s = TransferScheduler::new(Strategy::Adaptive, 0.1, 5);
        for (i, mbps) in [10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 3.0, 2.0, 2.0].iter().enumerate() {
            s.record("degrading/", (mbps * 1e6) as u64, 1.0, true);
            let rising = 4.0 + i as f64 * 0.8;
            s.record("rising/", (rising * 1e6) as u64, 1.0, true);
        }
        assert_eq!(s.performance("degrading/").unwrap().trend(), Trend::Decreasing);
        assert_eq!(s.performance("rising/").unwrap().trend(), Trend::Increasing);
        let c = [cand("degrading/", 0, 0), cand("rising/", 0, 0)];
        assert_eq!(s.select(&c, LARGE_OBJECT), Some(1));
    }

    #[test]
    fn adaptive_explores_unknown_prefixes_while_confidence_is_low() {
        let mut s = TransferScheduler::new(Strategy::Adaptive, 0.1, 5);
        s.record("known/", 5_000_000, 1.0, true);
        let c = [cand("known/", 0, 0), cand("new/", 0, 0)];
        assert_eq!(s.select(&c, 1 << 20), Some(1));
        for _ in 0..100 {
            s.observe_aggregate(5.0);
        }
        assert!(s.profile().confidence > 0.9);
    }

    #[test]
    fn the_network_profile_learns_upward_faster_and_tracks_trend() {
        let mut p = NetworkProfile::default();
        p.observe(10.0, 0.1);
        p.observe(20.0, 0.1);
        assert!((p.estimated_bandwidth_mbps - 11.0).abs() < 1e-9);
        p.observe(0.0, 0.1);
        assert!((p.estimated_bandwidth_mbps - 11.0 * 0.95).abs() < 1e-9);
        for v in [10.0, 10.0, 10.0, 30.0, 30.0, 30.0] {
            p.observe(v, 0.1);
        }
        assert_eq!(p.bandwidth_trend, Trend::Increasing);
        assert!(p.confidence > 0.4 && p.confidence < 1.0);
    }
}
