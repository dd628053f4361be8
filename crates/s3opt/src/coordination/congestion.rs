//! [`GlobalCongestionController`]: one global window of objects in flight, split into
//! per-prefix allocations, driven by the engine's own per-request [`Sample`]s.
//!
//! Global states (TCP-like): **SlowStart** (one slot more per success), **CongestionAvoidance**
//! (one slot per window of successes, plus a probing share while latency is flat),
//! **FastRecovery** (one cut per congestion episode; ends at the first success of a request
//! started after the cut), **Recovery** (sustained congestion or timeouts: deeper cut, growth
//! at `recovery_aggressiveness / 2` per success until the threshold is reached again).
//!
//! Per prefix: the seed's timeout-based (latency > 1 s: window / 4, bandwidth x 0.5) and
//! bandwidth-based (delivery < half the expected: window x 2/3, bandwidth x 0.8) detection, a
//! request-rate cap learned from throttling (cut to the measured success rate on a 503,
//! additive growth after), health (consecutive failures, share of throttling), and a BBR
//! model ([`Bbr`]: windowed-max delivery rate, min latency) plus an [`RttEstimator`] for the
//! latency trend. Pure: every input carries its time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{AdaptiveParameters, BandwidthStrategy, CoordinationConfig};
use crate::network::bbr::Bbr;
use crate::network::rtt::RttEstimator;
use crate::network::{Outcome, Sample};

/// Latency above which a request counts as a timeout-like congestion signal (the seed's 1 s).
pub const TIMEOUT_LATENCY: Duration = Duration::from_secs(1);
/// Bytes below which a request's delivery rate says more about latency than bandwidth.
const BANDWIDTH_SAMPLE_MIN: u64 = 1 << 20;
const HISTORY: usize = 20;

/// The global controller's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CongestionState {
    SlowStart,
    CongestionAvoidance,
    FastRecovery,
    Recovery,
}

/// Health of a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixHealth {
    Healthy,
    /// Failing or throttled beyond use: no new work until the cooldown ends.
    Drained,
    /// Cooldown over: one object may probe it; success makes it healthy again.
    Probation,
}

/// Everything the controller knows and decides about one prefix.
#[derive(Debug, Clone)]
pub struct PrefixAllocation {
    /// Objects this prefix may have in flight by its own congestion signals.
    pub congestion_window: f64,
    /// Its share of the global window.
    pub allocated_share: f64,
    /// Bandwidth the prefix is expected to deliver (smoothed, MB/s).
    pub allocated_bandwidth_mbps: f64,
    /// Requests per second allowed, learned from throttling; `None` until throttled.
    pub rate_cap: Option<f64>,
    pub health: PrefixHealth,
    pub drained_at: Option<Instant>,
    last_rate_cut: Option<Instant>,
    last_growth: Option<Instant>,
    consecutive_failures: u32,
    /// (finished, outcome) of the last [`HISTORY`] requests.
    recent: VecDeque<(Instant, Outcome)>,
    /// Finish times of successes within the last second (measured request rate).
    ok_times: VecDeque<Instant>,
    /// Finish times of all attempts within the last second (the rate we were sending at).
    attempt_times: VecDeque<Instant>,
    /// (time, cumulative bytes) of this prefix's deliveries within the BBR window, so a
    /// sample's delivered-at-start is this prefix's, not the whole client's.
    deliveries: VecDeque<(Instant, u64)>,
    /// The newest delivery that aged out of `deliveries`.
    evicted: Option<(Instant, u64)>,
    delivered: u64,
    bbr: Bbr,
    rtt: RttEstimator,
    pub requests: u64,
    pub throttled: u64,
    pub failures: u64,
    pub congestion_events: u64,
}

impl PrefixAllocation {
    fn new(cfg: &CoordinationConfig) -> Self {
        Self {
            congestion_window: cfg.per_prefix_concurrency as f64,
            allocated_share: cfg.per_prefix_concurrency as f64,
            allocated_bandwidth_mbps: 0.0,
            rate_cap: None,
            health: PrefixHealth::Healthy,
            drained_at: None,
            last_rate_cut: None,
            last_growth: None,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            ok_times: VecDeque::new(),
            attempt_times: VecDeque::new(),
            deliveries: VecDeque::new(),
            evicted: None,
            delivered: 0,
            bbr: Bbr::new(cfg.per_prefix_concurrency as f64, cfg.max_global_window as f64),
            rtt: RttEstimator::default(),
            requests: 0,
            throttled: 0,
            failures: 0,
            congestion_events: 0,
        }
    }

    /// Windowed-max delivery rate (bytes/s) of this prefix.
    pub fn bandwidth(&self) -> f64 {
        self.bbr.bandwidth()
    }

    /// Smoothed request latency.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Latency trend: smoothed over minimum latency, minus one (0 = no queueing).
    pub fn rtt_trend(&self) -> f64 {
        match (self.rtt.srtt(), self.rtt.min_rtt()) {
            (Some(s), Some(m)) if m > Duration::ZERO => s.as_secs_f64() / m.as_secs_f64() - 1.0,
            _ => 0.0,
        }
    }

    /// Share of failed (not throttled) requests among the recent ones.
    pub fn error_rate(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        let bad = self.recent.iter().filter(|(_, o)| !matches!(o, Outcome::Ok | Outcome::Throttled)).count();
        bad as f64 / self.recent.len() as f64
    }

    fn throttle_fraction(&self) -> f64 {
        if self.recent.len() < HISTORY {
            return 0.0;
        }
        self.recent.iter().filter(|(_, o)| *o == Outcome::Throttled).count() as f64 / self.recent.len() as f64
    }

    /// Requests per second over the last second (or since the first one) among `times`.
    fn rate_of(times: &VecDeque<Instant>, now: Instant) -> f64 {
        let Some(first) = times.front() else { return 0.0 };
        let span = now.duration_since(*first).as_secs_f64().clamp(0.25, 1.0);
        times.len() as f64 / span
    }

    /// What the prefix takes, judged when it throttles: the success rate, or half the rate
    /// we were sending at if that is more (a prefix throttled while lightly used is not
    /// capped at its light use).
    fn throttled_rate_estimate(&self, now: Instant) -> f64 {
        Self::rate_of(&self.ok_times, now).max(0.5 * Self::rate_of(&self.attempt_times, now))
    }

    /// Objects it may have in flight now: the least of its window, its share and the
    /// per-prefix limit; 0 when drained, 1 on probation.
    pub fn limit(&self, per_prefix: usize) -> usize {
        match self.health {
            PrefixHealth::Drained => 0,
            PrefixHealth::Probation => 1,
            PrefixHealth::Healthy => {
                (self.congestion_window.min(self.allocated_share).floor() as usize).clamp(1, per_prefix.max(1))
            }
        }
    }

    fn delivered_at(&self, t: Instant) -> (u64, Option<Instant>) {
        let i = self.deliveries.partition_point(|&(at, _)| at <= t);
        match i.checked_sub(1).map(|i| self.deliveries[i]).or(self.evicted) {
            Some((at, n)) => (n, Some(at)),
            None => (0, None),
        }
    }
}

/// What a sample changed, for the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleEffect {
    /// The prefix was just drained.
    pub drained: bool,
    /// A congestion event was counted (global or per prefix).
    pub congestion_event: bool,
}

/// A point-in-time view, for metrics and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct CongestionSnapshot {
    pub state: CongestionState,
    pub global_window: f64,
    pub slow_start_threshold: f64,
    pub bandwidth_mbps: f64,
    pub min_rtt_ms: Option<f64>,
    pub congestion_events: u64,
    pub adaptations: u64,
    pub prefixes: Vec<PrefixSnapshot>,
}

/// One prefix's allocation.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixSnapshot {
    pub prefix: String,
    pub health: PrefixHealth,
    pub congestion_window: f64,
    pub allocated_share: f64,
    pub allocated_bandwidth_mbps: f64,
    pub bandwidth_mbps: f64,
    pub rate_cap: Option<f64>,
    pub requests: u64,
    pub throttled: u64,
    pub failures: u64,
}

/// The controller.
#[derive(Debug)]
pub struct GlobalCongestionController {
    cfg: CoordinationConfig,
    params: AdaptiveParameters,
    window: f64,
    ssthresh: f64,
    state: CongestionState,
    /// Start of the current congestion episode: signals from requests started before it
    /// belong to it.
    epoch: Option<Instant>,
    prefixes: HashMap<String, PrefixAllocation>,
    order: Vec<String>,
    bbr: Bbr,
    rtt: RttEstimator,
    congestion_events: u64,
    adaptations: u64,
}

impl GlobalCongestionController {
    pub fn new(cfg: &CoordinationConfig) -> Self {
        Self {
            params: cfg.adaptive,
            window: cfg.global_congestion_window as f64,
            ssthresh: cfg.max_global_window as f64,
            state: CongestionState::SlowStart,
            epoch: None,
            prefixes: HashMap::new(),
            order: Vec::new(),
            bbr: Bbr::new(cfg.global_congestion_window as f64, cfg.max_global_window as f64),
            rtt: RttEstimator::default(),
            congestion_events: 0,
            adaptations: 0,
            cfg: cfg.clone(),
        }
    }

    /// Adds a prefix (no-op if known) and re-splits the window.
    pub fn add_prefix(&mut self, prefix: &str) {
        if !self.prefixes.contains_key(prefix) {
            self.prefixes.insert(prefix.to_owned(), PrefixAllocation::new(&self.cfg));
            self.order.push(prefix.to_owned());
            self.reallocate();
        }
    }

    pub fn state(&self) -> CongestionState {
        self.state
    }

    pub fn window(&self) -> f64 {
        self.window
    }

    pub fn slow_start_threshold(&self) -> f64 {
        self.ssthresh
    }

    pub fn prefix(&self, prefix: &str) -> Option<&PrefixAllocation> {
        self.prefixes.get(prefix)
    }

    pub fn congestion_events(&self) -> u64 {
        self.congestion_events
    }

    /// Window and rate changes so far.
    pub fn adaptations(&self) -> u64 {
        self.adaptations
    }

    /// Global bottleneck estimate, bytes/s (windowed max, BBR).
    pub fn bandwidth(&self) -> f64 {
        self.bbr.bandwidth()
    }

    /// Healthy prefixes, in registration order.
    pub fn healthy(&self) -> impl Iterator<Item = &str> {
        self.order.iter().filter(|p| self.prefixes[*p].health == PrefixHealth::Healthy).map(String::as_str)
    }

    /// Splits the global window among healthy prefixes (equally, or by measured bandwidth).
    pub fn reallocate(&mut self) {
        let healthy: Vec<String> = self.healthy().map(str::to_owned).collect();
        if healthy.is_empty() {
            return;
        }
        let weights: Vec<f64> = match self.cfg.bandwidth_strategy {
            BandwidthStrategy::FairShare => vec![1.0; healthy.len()],
            BandwidthStrategy::Adaptive => {
                let bws: Vec<f64> = healthy.iter().map(|p| self.prefixes[p].bandwidth()).collect();
                let mean = bws.iter().sum::<f64>() / bws.len() as f64;
                if mean <= 0.0 { vec![1.0; healthy.len()] } else { bws.iter().map(|b| (b / mean).max(0.25)).collect() }
            }
        };
        let total: f64 = weights.iter().sum();
        for (p, w) in healthy.iter().zip(weights) {
            let a = self.prefixes.get_mut(p).expect("known prefix");
            a.allocated_share = (self.window * w / total).max(1.0);
        }
    }

    /// Time passes: drained prefixes whose cooldown is over go on probation.
    pub fn tick(&mut self, now: Instant) {
        for a in self.prefixes.values_mut() {
            if a.health == PrefixHealth::Drained
                && a.drained_at.is_some_and(|t| now.duration_since(t) >= self.cfg.drain_cooldown)
            {
                a.health = PrefixHealth::Probation;
            }
        }
    }

    /// Feeds one request attempt that ran under `prefix` (unknown prefixes only feed the
    /// global model).
    pub fn on_sample(&mut self, prefix: Option<&str>, s: &Sample) -> SampleEffect {
        let mut effect = SampleEffect::default();
        if s.outcome == Outcome::Ok {
            self.rtt.on_sample(s.finished, s.bytes, s.latency(), s.retransmit);
        }
        self.bbr.on_sample(s);
        if self.on_global(s) {
            effect.congestion_event = true;
        }
        if let Some(p) = prefix
            && self.prefixes.contains_key(p)
        {
            let e = self.on_prefix(p, s);
            effect.drained = e.drained;
            effect.congestion_event |= e.congestion_event;
            if e.drained {
                self.reallocate();
            }
        }
        effect
    }

    /// The global state machine; true when a congestion event was counted.
    fn on_global(&mut self, s: &Sample) -> bool {
        let in_episode = self.epoch.is_some_and(|e| s.started < e);
        let timeout = s.outcome == Outcome::Timeout || s.latency() > TIMEOUT_LATENCY;
        let congestion = s.outcome.is_congestion();
        let before = self.window;
        let mut event = false;
        if timeout && !in_episode {
            // Timeout-based detection: sustained trouble, straight to Recovery.
            self.ssthresh = (self.window * self.params.decrease_factor()).max(2.0);
            self.window = (self.window / 4.0).max(1.0);
            self.enter(CongestionState::Recovery, s.finished);
            event = true;
        } else if congestion && !in_episode {
            match self.state {
                CongestionState::SlowStart | CongestionState::CongestionAvoidance => {
                    self.ssthresh = (self.window * self.params.decrease_factor()).max(2.0);
                    self.window = self.ssthresh;
                    self.enter(CongestionState::FastRecovery, s.finished);
                }
                CongestionState::FastRecovery | CongestionState::Recovery => {
                    // Congestion again after the cut took effect: it is sustained.
                    self.ssthresh = (self.window * self.params.decrease_factor()).max(2.0);
                    self.window = (self.window * 0.5).max(1.0);
                    self.enter(CongestionState::Recovery, s.finished);
                }
            }
            event = true;
        } else if s.outcome == Outcome::Ok && !in_episode {
            match self.state {
                CongestionState::SlowStart => {
                    self.window += 1.0;
                    if self.window >= self.ssthresh {
                        self.state = CongestionState::CongestionAvoidance;
                    }
                }
                CongestionState::CongestionAvoidance => {
                    // Probe for more while latency shows no queue.
                    let trend = self.rtt_trend();
                    let probe = if trend < 0.25 { self.params.bandwidth_probing_rate } else { 0.0 };
                    self.window += (1.0 + probe * self.window) / self.window;
                }
                CongestionState::FastRecovery => self.state = CongestionState::CongestionAvoidance,
                CongestionState::Recovery => {
                    self.window += self.params.recovery_aggressiveness * 0.5;
                    if self.window >= self.ssthresh {
                        self.state = CongestionState::CongestionAvoidance;
                    }
                }
            }
        }
        self.window = self.window.clamp(1.0, self.cfg.max_global_window as f64);
        if event {
            self.congestion_events += 1;
        }
        if before.floor() != self.window.floor() {
            self.adaptations += 1;
            self.reallocate();
        }
        event
    }

    fn enter(&mut self, state: CongestionState, at: Instant) {
        self.state = state;
        self.epoch = Some(at);
    }

    /// Global latency trend (smoothed over minimum, minus one).
    pub fn rtt_trend(&self) -> f64 {
        match (self.rtt.srtt(), self.rtt.min_rtt()) {
            (Some(s), Some(m)) if m > Duration::ZERO => s.as_secs_f64() / m.as_secs_f64() - 1.0,
            _ => 0.0,
        }
    }

    fn on_prefix(&mut self, prefix: &str, s: &Sample) -> SampleEffect {
        let flow = self.cfg.enable_advanced_flow_control;
        let (lr, probing, rate_keep) = (
            self.params.learning_rate,
            self.params.bandwidth_probing_rate,
            1.0 - 0.15 * self.params.congestion_sensitivity.clamp(0.0, 1.0),
        );
        let (threshold, drain_fraction, per_prefix) =
            (self.cfg.failure_threshold, self.cfg.throttle_drain_fraction, self.cfg.per_prefix_concurrency as f64);
        // The best learned cap of any prefix: a prefix far below it regrows fast.
        let reference = self.prefixes.values().filter_map(|p| p.rate_cap).fold(0.0, f64::max);
        let a = self.prefixes.get_mut(prefix).expect("known prefix");
        let mut effect = SampleEffect::default();
        let now = s.finished;
        a.requests += 1;
        a.recent.push_back((now, s.outcome));
        if a.recent.len() > HISTORY {
            a.recent.pop_front();
        }
        for times in [&mut a.ok_times, &mut a.attempt_times] {
            while times.front().is_some_and(|&t| now.duration_since(t) > Duration::from_secs(1)) {
                times.pop_front();
            }
        }
        a.attempt_times.push_back(now);
        let before = (a.congestion_window, a.rate_cap);
        match s.outcome {
            Outcome::Ok => {
                a.consecutive_failures = 0;
                a.ok_times.push_back(now);
                a.rtt.on_sample(now, s.bytes, s.latency(), s.retransmit);
                // Feed the BBR model with this prefix's own delivery accounting.
                let (at_start, time_at_start) = a.delivered_at(s.started);
                a.delivered += s.bytes;
                a.deliveries.push_back((now, a.delivered));
                while a.deliveries.front().is_some_and(|&(t, _)| now.duration_since(t) > Duration::from_secs(10)) {
                    a.evicted = a.deliveries.pop_front();
                }
                let own = Sample {
                    delivered_at_start: at_start,
                    delivered_time_at_start: time_at_start.unwrap_or(s.started),
                    delivered_at_end: a.delivered,
                    ..*s
                };
                a.bbr.on_sample(&own);
                if a.health == PrefixHealth::Probation {
                    a.health = PrefixHealth::Healthy;
                    a.drained_at = None;
                }
                if s.bytes > 0 {
                    let observed = s.bytes as f64 / s.latency().as_secs_f64().max(1e-6) / 1e6;
                    let expected = a.allocated_bandwidth_mbps;
                    if flow && s.latency() > TIMEOUT_LATENCY {
                        // Timeout-based detection.
                        a.congestion_window = (a.congestion_window / 4.0).max(1.0);
                        a.allocated_bandwidth_mbps *= 0.5;
                        a.congestion_events += 1;
                        effect.congestion_event = true;
                    } else if flow && s.bytes >= BANDWIDTH_SAMPLE_MIN && expected > 0.0 && observed < expected * 0.5 {
                        // Bandwidth-based detection.
                        a.congestion_window = (a.congestion_window * 2.0 / 3.0).max(1.0);
                        a.allocated_bandwidth_mbps *= 0.8;
                        a.congestion_events += 1;
                        effect.congestion_event = true;
                    } else {
                        a.congestion_window = (a.congestion_window + 1.0 / a.congestion_window).min(per_prefix);
                        a.allocated_bandwidth_mbps = if expected == 0.0 {
                            observed
                        } else if observed > expected {
                            (1.0 - lr) * expected + lr * observed
                        } else {
                            (1.0 - lr / 2.0) * expected + lr / 2.0 * observed
                        };
                    }
                }
                // Growth of a learned rate cap: doubling per second while under half the best
                // prefix's cap, then additive (`probing` x cap per second).
                if let Some(cap) = &mut a.rate_cap {
                    let since = a.last_growth.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
                    if *cap < 0.5 * reference {
                        *cap = (*cap * (1.0 + since)).min(0.5 * reference);
                    } else {
                        *cap += probing * *cap * since;
                    }
                    a.last_growth = Some(now);
                }
            }
            Outcome::Throttled => {
                a.throttled += 1;
                if flow && a.last_rate_cut.is_none_or(|t| s.started >= t) {
                    let measured = a.throttled_rate_estimate(now).max(1.0);
                    let cap = a.rate_cap.map_or(measured, |c| c.min(measured));
                    a.rate_cap = Some((cap * rate_keep).max(1.0));
                    a.last_rate_cut = Some(now);
                    a.last_growth = Some(now);
                    a.congestion_events += 1;
                    effect.congestion_event = true;
                }
            }
            _ => {
                a.failures += 1;
                a.consecutive_failures += 1;
                if s.outcome.is_congestion() && a.last_rate_cut.is_none_or(|t| s.started >= t) {
                    a.congestion_window = (a.congestion_window * 0.5).max(1.0);
                    a.last_rate_cut = Some(now);
                    a.congestion_events += 1;
                    effect.congestion_event = true;
                }
            }
        }
        let failing = a.consecutive_failures >= threshold || a.throttle_fraction() > drain_fraction;
        if failing && a.health != PrefixHealth::Drained {
            a.health = PrefixHealth::Drained;
            a.drained_at = Some(now);
            a.consecutive_failures = 0;
            a.recent.clear();
            effect.drained = true;
        }
        if before != (a.congestion_window, a.rate_cap) {
            self.adaptations += 1;
        }
        effect
    }

    /// Marks a prefix drained (e.g. its objects keep failing at the object level).
    pub fn drain(&mut self, prefix: &str, now: Instant) -> bool {
        let Some(a) = self.prefixes.get_mut(prefix) else { return false };
        if a.health == PrefixHealth::Drained {
            return false;
        }
        a.health = PrefixHealth::Drained;
        a.drained_at = Some(now);
        self.reallocate();
        true
    }

    pub fn snapshot(&self) -> CongestionSnapshot {
        CongestionSnapshot {
            state: self.state,
            global_window: self.window,
            slow_start_threshold: self.ssthresh,
            bandwidth_mbps: self.bbr.bandwidth() / 1e6,
            min_rtt_ms: self.bbr.min_rtt().map(|d| d.as_secs_f64() * 1e3),
            congestion_events: self.congestion_events,
            adaptations: self.adaptations,
            prefixes: self
                .order
                .iter()
                .map(|p| {
                    let a = &self.prefixes[p];
                    PrefixSnapshot {
                        prefix: p.clone(),
                        health: a.health,
                        congestion_window: a.congestion_window,
                        allocated_share: a.allocated_share,
                        allocated_bandwidth_mbps: a.allocated_bandwidth_mbps,
                        bandwidth_mbps: a.bandwidth() / 1e6,
                        rate_cap: a.rate_cap,
                        requests: a.requests,
                        throttled: a.throttled,
                        failures: a.failures,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Op;

    fn cfg() -> CoordinationConfig {
        CoordinationConfig { global_congestion_window: 8, max_global_window: 64, ..Default::default() }
    }

    fn sample(started: Instant, ms: u64, bytes: u64, outcome: Outcome) -> Sample {
        Sample::alone(Op::PutObject, started, Duration::from_millis(ms), bytes, outcome)
    }

    #[test]
    fn slow_start_grows_one_slot_per_success_until_the_threshold() {
        let mut c = GlobalCongestionController::new(&cfg());
        let t0 = Instant::now();
        assert_eq!(c.state(), CongestionState::SlowStart);
        for i in 0..4 {
            c.on_sample(None, &sample(t0 + Duration::from_millis(i), 20, 1000, Outcome::Ok));
        }
        assert_eq!(c.window(), 12.0);
        assert_eq!(c.state(), CongestionState::SlowStart);
    }

    #[test]
    fn a_congestion_signal_cuts_once_into_fast_recovery_then_avoidance() {
        let mut c = GlobalCongestionController::new(&cfg());
        let t0 = Instant::now();
        c.on_sample(None, &sample(t0, 20, 1000, Outcome::Throttled));
        assert_eq!(c.state(), CongestionState::FastRecovery);
        let cut = c.window();
        assert!((cut - 8.0 * 0.76).abs() < 1e-9, "{cut}");
        // Another signal from a request that started before the cut: same episode.
        c.on_sample(None, &sample(t0 + Duration::from_millis(1), 30, 1000, Outcome::Throttled));
        assert_eq!(c.window(), cut);
        assert_eq!(c.congestion_events(), 1);
        // A success of a request started after the cut ends fast recovery.
        c.on_sample(None, &sample(t0 + Duration::from_millis(40), 20, 1000, Outcome::Ok));
        assert_eq!(c.state(), CongestionState::CongestionAvoidance);
        let w = c.window();
        c.on_sample(None, &sample(t0 + Duration::from_millis(70), 20, 1000, Outcome::Ok));
        assert!(c.window() > w && c.window() < w + 1.0, "linear growth: {w} -> {}", c.window());
    }

    #[test]
    fn congestion_after_the_cut_is_sustained_and_enters_recovery() {
        let mut c = GlobalCongestionController::new(&cfg());
        let t0 = Instant::now();
        c.on_sample(None, &sample(t0, 20, 1000, Outcome::Reset));
        let w = c.window();
        c.on_sample(None, &sample(t0 + Duration::from_millis(30), 20, 1000, Outcome::Reset));
        assert_eq!(c.state(), CongestionState::Recovery);
        assert!((c.window() - w * 0.5).abs() < 1e-9);
        assert_eq!(c.congestion_events(), 2);
        // Recovery grows by recovery_aggressiveness / 2 per success back to the threshold.
        let mut t = t0 + Duration::from_millis(60);
        while c.state() == CongestionState::Recovery {
            c.on_sample(None, &sample(t, 20, 1000, Outcome::Ok));
            t += Duration::from_millis(1);
        }
        assert_eq!(c.state(), CongestionState::CongestionAvoidance);
        assert!(c.window() >= c.slow_start_threshold());
    }

    #[test]
    fn a_timeout_goes_straight_to_recovery_with_a_quarter_window() {
        let mut c = GlobalCongestionController::new(&cfg());
        let t0 = Instant::now();
        c.on_sample(None, &sample(t0, 1500, 1000, Outcome::Ok));
        assert_eq!(c.state(), CongestionState::Recovery);
        assert_eq!(c.window(), 2.0);
    }

    #[test]
    fn throttling_teaches_a_prefix_a_rate_cap_that_then_grows_additively() {
        let mut c = GlobalCongestionController::new(&cfg());
        c.add_prefix("a/");
        let t0 = Instant::now();
        // 40 successes in one second, then a 503.
        for i in 0..40 {
            c.on_sample(Some("a/"), &sample(t0 + Duration::from_millis(i * 25), 20, 1000, Outcome::Ok));
        }
        let t1 = t0 + Duration::from_millis(1000);
        let e = c.on_sample(Some("a/"), &sample(t1, 20, 1000, Outcome::Throttled));
        assert!(e.congestion_event && !e.drained);
        let cap = c.prefix("a/").unwrap().rate_cap.unwrap();
        assert!((30.0..40.0).contains(&cap), "cap {cap} near 0.88 x 40/s");
        // A 503 of a request started before the cut does not cut again.
        c.on_sample(Some("a/"), &sample(t1 - Duration::from_millis(5), 30, 1000, Outcome::Throttled));
        assert_eq!(c.prefix("a/").unwrap().rate_cap.unwrap(), cap);
        // One second of successes: +5% of the cap.
        for i in 1..=10 {
            c.on_sample(Some("a/"), &sample(t1 + Duration::from_millis(i * 100), 20, 1000, Outcome::Ok));
        }
        let grown = c.prefix("a/").unwrap().rate_cap.unwrap();
        assert!(grown > cap * 1.04 && grown < cap * 1.07, "{cap} -> {grown}");
    }

    #[test]
    fn a_prefix_capped_far_below_the_others_regrows_exponentially_then_additively() {
        let mut c = GlobalCongestionController::new(&cfg());
        c.add_prefix("busy/");
        c.add_prefix("idle/");
        let t0 = Instant::now();
        for i in 0..40 {
            c.on_sample(Some("busy/"), &sample(t0 + Duration::from_millis(i * 25), 20, 1000, Outcome::Ok));
        }
        c.on_sample(Some("busy/"), &sample(t0 + Duration::from_millis(1000), 20, 1000, Outcome::Throttled));
        // idle/ is throttled after two requests (someone else emptied its budget).
        c.on_sample(Some("idle/"), &sample(t0 + Duration::from_millis(900), 20, 1000, Outcome::Ok));
        c.on_sample(Some("idle/"), &sample(t0 + Duration::from_millis(1000), 20, 1000, Outcome::Throttled));
        let busy = c.prefix("busy/").unwrap().rate_cap.unwrap();
        let idle = c.prefix("idle/").unwrap().rate_cap.unwrap();
        assert!(idle < busy / 4.0, "{idle} vs {busy}");
        for i in 1..=20 {
            c.on_sample(Some("idle/"), &sample(t0 + Duration::from_millis(1000 + i * 100), 20, 1000, Outcome::Ok));
        }
        let regrown = c.prefix("idle/").unwrap().rate_cap.unwrap();
        assert!(regrown >= busy * 0.5 && regrown < busy * 0.6, "doubling up to half of {busy}, then +5%/s: {regrown}");
    }

    #[test]
    fn consecutive_failures_drain_a_prefix_and_the_cooldown_puts_it_on_probation() {
        let mut c = GlobalCongestionController::new(&cfg());
        c.add_prefix("a/");
        c.add_prefix("b/");
        let t0 = Instant::now();
        let mut drained = false;
        for i in 0..4 {
            drained |=
                c.on_sample(Some("a/"), &sample(t0 + Duration::from_millis(i), 5, 0, Outcome::ServerError)).drained;
        }
        assert!(drained);
        let a = c.prefix("a/").unwrap();
        assert_eq!((a.health, a.limit(3)), (PrefixHealth::Drained, 0));
        assert_eq!(c.healthy().collect::<Vec<_>>(), vec!["b/"]);
        assert_eq!(c.prefix("b/").unwrap().allocated_share, 8.0, "the whole window goes to b/");
        c.tick(t0 + Duration::from_secs(31));
        assert_eq!(c.prefix("a/").unwrap().health, PrefixHealth::Probation);
        c.on_sample(Some("a/"), &sample(t0 + Duration::from_secs(32), 5, 10, Outcome::Ok));
        assert_eq!(c.prefix("a/").unwrap().health, PrefixHealth::Healthy);
    }

    #[test]
    fn the_seeds_timeout_and_bandwidth_detection_shrink_a_prefix_window() {
        let mut c = GlobalCongestionController::new(&CoordinationConfig { per_prefix_concurrency: 8, ..cfg() });
        c.add_prefix("a/");
        let t0 = Instant::now();
        // 8 MiB in 100 ms: 84 MB/s expected.
        c.on_sample(Some("a/"), &sample(t0, 100, 8 << 20, Outcome::Ok));
        let w = c.prefix("a/").unwrap().congestion_window;
        // 8 MiB in 400 ms: a quarter of the expected bandwidth.
        c.on_sample(Some("a/"), &sample(t0 + Duration::from_millis(200), 400, 8 << 20, Outcome::Ok));
        let a = c.prefix("a/").unwrap();
        assert!((a.congestion_window - w * 2.0 / 3.0).abs() < 1e-9);
        let w = a.congestion_window;
        c.on_sample(Some("a/"), &sample(t0 + Duration::from_millis(700), 1200, 8 << 20, Outcome::Ok));
        assert!((c.prefix("a/").unwrap().congestion_window - (w / 4.0).max(1.0)).abs() < 1e-9);
    }

    #[test]
    fn a_prefix_bandwidth_is_its_own_windowed_max_delivery_rate() {
        let mut c = GlobalCongestionController::new(&cfg());
        c.add_prefix("a/");
        c.add_prefix("b/");
        let t0 = Instant::now();
        // a/ delivers 1 MB every 100 ms (10 MB/s); b/ 1 MB every 200 ms.
        for i in 0..20u64 {
            c.on_sample(Some("a/"), &sample(t0 + Duration::from_millis(i * 100), 100, 1_000_000, Outcome::Ok));
            if i % 2 == 0 {
                c.on_sample(Some("b/"), &sample(t0 + Duration::from_millis(i * 100), 200, 1_000_000, Outcome::Ok));
            }
        }
        let (a, b) = (c.prefix("a/").unwrap().bandwidth(), c.prefix("b/").unwrap().bandwidth());
        assert!((9e6..=11e6).contains(&a), "a {a}");
        assert!((4.5e6..=5.5e6).contains(&b), "b {b}");
    }
}
