//! [`CoordinationConfig`]: the seed's knobs with documented defaults, plus its tuning
//! presets by name (`default`, `high_bandwidth`, `variable_network`, `many_small_files`,
//! `advanced`).

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// How the scheduler picks a prefix for the next object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The seed's weighted score over congestion window, throughput, latency, error rate and
    /// queue load, with randomized tie-breaks.
    TcpLike,
    /// Least utilized prefix (queue- and capacity-aware): minimizes utilization variance.
    FairShare,
    /// Learns per-prefix performance; steers large objects to prefixes trending up.
    Adaptive,
}

impl Strategy {
    /// Name as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::TcpLike => "tcp_like",
            Strategy::FairShare => "fair_share",
            Strategy::Adaptive => "adaptive",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp_like" | "tcp-like" => Ok(Strategy::TcpLike),
            "fair_share" | "fair-share" => Ok(Strategy::FairShare),
            "adaptive" => Ok(Strategy::Adaptive),
            other => Err(format!("unknown strategy '{other}' (tcp_like, fair_share, adaptive)")),
        }
    }
}

/// How the global congestion window is split among prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BandwidthStrategy {
    /// Equal shares.
    FairShare,
    /// Shares proportional to each prefix's measured bandwidth (every prefix keeps one slot).
    Adaptive,
}

impl FromStr for BandwidthStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fair_share" | "fair-share" => Ok(BandwidthStrategy::FairShare),
            "adaptive" => Ok(BandwidthStrategy::Adaptive),
            other => Err(format!("unknown bandwidth strategy '{other}' (fair_share, adaptive)")),
        }
    }
}

/// The congestion controller's learning knobs (the seed's `AdaptiveParameters`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptiveParameters {
    /// Weight of a new observation in smoothed estimates (bandwidth, per-prefix throughput).
    /// Default 0.1.
    pub learning_rate: f64,
    /// How fast a request-rate cap grows back after throttling, as a fraction of the cap per
    /// second; also the extra window tried when probing. Default 0.05.
    pub bandwidth_probing_rate: f64,
    /// 0..1: how hard a congestion signal cuts (a cut keeps `1 - 0.3 x sensitivity` of the
    /// window or rate). Default 0.8.
    pub congestion_sensitivity: f64,
    /// Speed of growth back out of `Recovery` (1 = TCP's one slot per round). Default 1.0.
    pub recovery_aggressiveness: f64,
}

impl Default for AdaptiveParameters {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            bandwidth_probing_rate: 0.05,
            congestion_sensitivity: 0.8,
            recovery_aggressiveness: 1.0,
        }
    }
}

impl AdaptiveParameters {
    /// Fraction of a window or rate kept on a congestion signal.
    pub fn decrease_factor(&self) -> f64 {
        (1.0 - 0.3 * self.congestion_sensitivity.clamp(0.0, 1.0)).clamp(0.5, 1.0)
    }
}

/// Configuration of the coordinator (the seed's `CoordinationConfig`, plus the per-prefix
/// limits and failure thresholds the seed left implicit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinationConfig {
    /// Most objects queued per prefix (`schedule_upload` waits when the queue is full).
    /// Default 16.
    pub pipeline_depth: usize,
    /// Objects in flight over all prefixes at the start (the global congestion window).
    /// Default 32.
    pub global_congestion_window: usize,
    /// Largest the global window may grow. Default 4 x the initial window.
    pub max_global_window: usize,
    /// Prefix choice. Default `adaptive`.
    pub strategy: Strategy,
    /// Most prefixes used at once. Default 16.
    pub max_active_prefixes: usize,
    /// Split of the global window. Default `fair_share`.
    pub bandwidth_strategy: BandwidthStrategy,
    /// How often allocations are recomputed and metrics sampled. Default 2 s.
    #[serde(with = "secs")]
    pub update_interval: Duration,
    /// Per-prefix request pacing learned from throttling (503 SlowDown) and the seed's
    /// timeout/bandwidth congestion detection. Default on.
    pub enable_advanced_flow_control: bool,
    /// Learning knobs.
    pub adaptive: AdaptiveParameters,
    /// Most objects in flight under one prefix (the seed's `MaxConcurrentUploads`). Default 3.
    pub per_prefix_concurrency: usize,
    /// Consecutive failed requests (5xx, timeouts, resets; not throttling) after which a
    /// prefix is drained. Default 4.
    pub failure_threshold: u32,
    /// Share of throttled requests among a prefix's last 20 above which it is drained.
    /// Default 0.8.
    pub throttle_drain_fraction: f64,
    /// How long a drained prefix rests before one probe object may try it again. Default 30 s.
    #[serde(with = "secs")]
    pub drain_cooldown: Duration,
    /// Times an object may be moved to another prefix after failing. Default 3.
    pub max_moves: u32,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self {
            pipeline_depth: 16,
            global_congestion_window: 32,
            max_global_window: 128,
            strategy: Strategy::Adaptive,
            max_active_prefixes: 16,
            bandwidth_strategy: BandwidthStrategy::FairShare,
            update_interval: Duration::from_secs(2),
            enable_advanced_flow_control: true,
            adaptive: AdaptiveParameters::default(),
            per_prefix_concurrency: 3,
            failure_threshold: 4,
            throttle_drain_fraction: 0.8,
            drain_cooldown: Duration::from_secs(30),
            max_moves: 3,
        }
    }
}

/// Names accepted by [`CoordinationConfig::preset`].
pub const PRESETS: [&str; 5] = ["default", "high_bandwidth", "variable_network", "many_small_files", "advanced"];

impl CoordinationConfig {
    /// The seed's tuning presets:
    /// - `high_bandwidth`: window 128, pipeline depth 64, `tcp_like`;
    /// - `variable_network`: `adaptive`, advanced flow control, sensitivity 0.9;
    /// - `many_small_files`: pipeline depth 32, 16 active prefixes, updates every 500 ms;
    /// - `advanced`: depth 32, window 64, `tcp_like`, 8 prefixes, adaptive bandwidth split,
    ///   1 s updates, learning 0.15, probing 0.08, sensitivity 0.9, recovery 1.5.
    pub fn preset(name: &str) -> Option<Self> {
        let d = Self::default();
        Some(match name.replace('-', "_").as_str() {
            "default" => d,
            "high_bandwidth" => Self {
                global_congestion_window: 128,
                max_global_window: 512,
                pipeline_depth: 64,
                strategy: Strategy::TcpLike,
                ..d
            },
            "variable_network" => Self {
                strategy: Strategy::Adaptive,
                enable_advanced_flow_control: true,
                adaptive: AdaptiveParameters { congestion_sensitivity: 0.9, ..d.adaptive },
                ..d
            },
            "many_small_files" => {
                Self { pipeline_depth: 32, max_active_prefixes: 16, update_interval: Duration::from_millis(500), ..d }
            }
            "advanced" => Self {
                pipeline_depth: 32,
                global_congestion_window: 64,
                max_global_window: 256,
                strategy: Strategy::TcpLike,
                max_active_prefixes: 8,
                bandwidth_strategy: BandwidthStrategy::Adaptive,
                update_interval: Duration::from_secs(1),
                adaptive: AdaptiveParameters {
                    learning_rate: 0.15,
                    bandwidth_probing_rate: 0.08,
                    congestion_sensitivity: 0.9,
                    recovery_aggressiveness: 1.5,
                },
                ..d
            },
            _ => return None,
        })
    }

    /// Checks the knobs against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.pipeline_depth == 0 || self.global_congestion_window == 0 || self.per_prefix_concurrency == 0 {
            return Err("pipeline depth, global window and per-prefix concurrency must be at least 1".into());
        }
        if self.max_active_prefixes == 0 {
            return Err("max_active_prefixes must be at least 1".into());
        }
        if self.max_global_window < self.global_congestion_window {
            return Err("max_global_window must be at least the initial global window".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_preset_exists_and_is_valid() {
        for name in PRESETS {
            let c = CoordinationConfig::preset(name).unwrap_or_else(|| panic!("preset {name}"));
            c.validate().unwrap();
        }
        let hb = CoordinationConfig::preset("high-bandwidth").unwrap();
        assert_eq!((hb.global_congestion_window, hb.pipeline_depth, hb.strategy), (128, 64, Strategy::TcpLike));
        let adv = CoordinationConfig::preset("advanced").unwrap();
        assert_eq!(adv.adaptive.recovery_aggressiveness, 1.5);
        assert_eq!(adv.max_active_prefixes, 8);
        assert!(CoordinationConfig::preset("turbo").is_none());
    }

    #[test]
    fn strategies_parse_by_their_cli_names() {
        for s in [Strategy::TcpLike, Strategy::FairShare, Strategy::Adaptive] {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
        }
        assert!("fastest".parse::<Strategy>().is_err());
    }
}
