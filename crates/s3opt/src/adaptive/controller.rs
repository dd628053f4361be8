//! Concurrency controllers: pure state machines fed with request [`Sample`]s that answer
//! with a window (requests in flight). The transfer engine resizes its permits from the
//! answer after every sample.
//!
//! - `auto` (default): the BBR model probes for bandwidth and sets the window from
//!   bandwidth x min latency; a congestion signal (503 SlowDown, or timeouts and resets
//!   more often than 1 in 50 requests: an odd one is random loss) cuts the window
//!   CUBIC-style (x0.7), and CUBIC growth caps it until it is back at the model's. When
//!   the path slows down (the delivered rate from [`Predictor`], fed with the bytes
//!   requests move as they stream, is under half the model's bandwidth while requests
//!   queue), the model forgets the faster samples at once instead of holding the old
//!   rate's window for up to 10 s. Completions alone would say so too late: where every
//!   request takes 25 s, they are 25 s apart.
//! - `bbr`, `cubic`: one algorithm alone. `fixed:N`: N, always.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adaptive::predictor::Predictor;
use crate::network::bbr::Bbr;
use crate::network::cubic::Cubic;
use crate::network::loss::LossFilter;
use crate::network::rtt::RttEstimator;
use crate::network::{Outcome, Sample};

/// What a controller reports about itself (for `--json` and the bench's charts).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ControllerState {
    pub controller: &'static str,
    pub mode: &'static str,
    pub window: usize,
    pub bandwidth_mbps: f64,
    pub min_rtt_ms: f64,
    /// The delivered rate the forecast sees now (`auto` only; 0 until it has a few seconds).
    pub forecast_mbps: f64,
}

/// A concurrency controller.
pub trait Controller: Send + std::fmt::Debug {
    /// Feeds one finished request attempt.
    fn on_sample(&mut self, s: &Sample);
    /// Bytes moved so far by all requests, counted as they stream (`moved`), with
    /// `in_flight` requests under way at `now`; called a few times a second while requests
    /// run. Only `auto` uses it.
    fn on_progress(&mut self, _now: Instant, _moved: u64, _in_flight: usize) {}
    /// Requests that should be in flight now (at least 1).
    fn window(&self) -> usize;
    /// Current state.
    fn state(&self) -> ControllerState;
}

/// Which controller to use (`--controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControllerKind {
    #[default]
    Auto,
    Bbr,
    Cubic,
    Fixed(usize),
}

impl FromStr for ControllerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "bbr" => Ok(Self::Bbr),
            "cubic" => Ok(Self::Cubic),
            _ => match s.strip_prefix("fixed:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Ok(Self::Fixed(n)),
                _ => Err(format!("unknown controller '{s}' (use auto, bbr, cubic or fixed:N with N >= 1)")),
            },
        }
    }
}

impl ControllerKind {
    /// A controller starting at `initial` requests, never above `max`.
    pub fn build(self, initial: usize, max: usize) -> Box<dyn Controller> {
        let (initial, max) = (initial.max(1) as f64, max.max(1) as f64);
        match self {
            Self::Auto => Box::new(Auto {
                bbr: Bbr::new(initial, max),
                cap: None,
                predictor: Predictor::default(),
                rtt: RttEstimator::default(),
                loss: LossFilter::default(),
                max,
                moved: 0,
                slow_since: None,
            }),
            Self::Bbr => Box::new(BbrOnly(Bbr::new(initial, max))),
            Self::Cubic => Box::new(CubicOnly { cubic: Cubic::new(initial, max), rtt: RttEstimator::default() }),
            Self::Fixed(n) => Box::new(Fixed(n)),
        }
    }
}

/// Rounds up: a window one short of the BDP leaves the link under-used, and the
/// bandwidth measured then confirms the shortfall.
fn to_window(w: f64) -> usize {
    (w - 1e-9).ceil().max(1.0) as usize
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn mode_name(m: crate::network::bbr::Mode) -> &'static str {
    use crate::network::bbr::Mode::*;
    match m {
        Startup => "startup",
        Drain => "drain",
        ProbeBw => "probe_bw",
        ProbeRtt => "probe_rtt",
    }
}

/// BBR probing with CUBIC decrease on congestion.
#[derive(Debug)]
struct Auto {
    bbr: Bbr,
    /// Set by a congestion signal; lifted once CUBIC growth reaches the model's window.
    cap: Option<Cubic>,
    predictor: Predictor,
    rtt: RttEstimator,
    loss: LossFilter,
    max: f64,
    /// Bytes moved as of the last [`Controller::on_progress`].
    moved: u64,
    /// Since when the progress has said "slowed" without a break.
    slow_since: Option<Instant>,
}

impl Controller for Auto {
    fn on_sample(&mut self, s: &Sample) {
        if s.outcome == Outcome::Ok {
            self.rtt.on_sample(s.finished, s.bytes, s.latency(), s.retransmit);
        }
        self.bbr.on_sample(s);
        let rtt = self.rtt.srtt().unwrap_or(Duration::from_millis(100));
        if self.loss.on_outcome(s.outcome) {
            let current = self.cap.as_ref().map_or(self.bbr.window(), |c| c.window().min(self.bbr.window()));
            let max = self.max;
            self.cap.get_or_insert_with(|| Cubic::new(current, max)).on_congestion(s.finished, rtt);
        } else if s.outcome == Outcome::Ok
            && let Some(cap) = &mut self.cap
        {
            cap.on_ack(s.finished, rtt);
            if cap.window() >= self.bbr.window() {
                self.cap = None;
            }
        }
    }

    /// The path has slowed when the delivered rate (the forecast's level, not its trend:
    /// a falling trend extrapolated would feed on the cut it causes) has been under half
    /// the model's bandwidth for [`SLOW_FOR`] while requests queue: by Little's law, the
    /// mean time a request spends in flight at that rate is over 1.5x the minimum latency.
    /// The model then comes down to the rate, but by at most half per step: a flow that
    /// has just joined the link may take more than half of it for a while, and must not be
    /// given more than half for good. A drop to a quarter takes two steps.
    fn on_progress(&mut self, now: Instant, moved: u64, in_flight: usize) {
        self.predictor.on_bytes(now, moved.saturating_sub(self.moved));
        self.moved = moved;
        let (Some(rate), Some(min)) = (self.predictor.forecast(0.0), self.bbr.typical_latency()) else {
            return;
        };
        let time_in_flight = in_flight as f64 * self.bbr.request_bytes() / rate.max(1.0);
        let bandwidth = self.bbr.bandwidth();
        // In any mode: where ProbeRTT's smaller window lowers the rate, requests stop
        // queueing, and the time in flight says so. A rate of nothing at all is a stall,
        // which hedging and range splitting answer; the window is left alone.
        let slowed = rate > 0.0 && rate < SLOWDOWN * bandwidth && time_in_flight > 1.5 * min;
        if !slowed {
            self.slow_since = None;
            return;
        }
        let since = *self.slow_since.get_or_insert(now);
        if now.duration_since(since) >= SLOW_FOR {
            self.bbr.path_slowed(rate.max(SLOWDOWN * bandwidth), now);
            self.slow_since = None;
        }
    }

    fn window(&self) -> usize {
        let model = self.bbr.window();
        to_window(self.cap.as_ref().map_or(model, |c| c.window().min(model)))
    }

    fn state(&self) -> ControllerState {
        ControllerState {
            controller: "auto",
            mode: if self.cap.is_some() { "recovery" } else { mode_name(self.bbr.mode()) },
            window: self.window(),
            bandwidth_mbps: self.bbr.bandwidth() / 1e6,
            min_rtt_ms: ms(self.bbr.min_rtt()),
            forecast_mbps: self.predictor.forecast(0.0).unwrap_or(0.0) / 1e6,
        }
    }
}

/// A delivered rate under this share of the model's bandwidth, with requests queueing,
/// means the path slowed (see [`Auto::on_progress`]); the model then comes down by at
/// most this factor per step.
const SLOWDOWN: f64 = 0.5;

/// How long the rate must say "slowed" before the model believes it (a burst of new
/// requests waiting on their first bytes dents the rate for a moment).
const SLOW_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct BbrOnly(Bbr);

impl Controller for BbrOnly {
    fn on_sample(&mut self, s: &Sample) {
        self.0.on_sample(s);
    }
    fn window(&self) -> usize {
        to_window(self.0.window())
    }
    fn state(&self) -> ControllerState {
        ControllerState {
            controller: "bbr",
            mode: mode_name(self.0.mode()),
            window: self.window(),
            bandwidth_mbps: self.0.bandwidth() / 1e6,
            min_rtt_ms: ms(self.0.min_rtt()),
            forecast_mbps: 0.0,
        }
    }
}

#[derive(Debug)]
struct CubicOnly {
    cubic: Cubic,
    rtt: RttEstimator,
}

impl Controller for CubicOnly {
    fn on_sample(&mut self, s: &Sample) {
        let rtt = self.rtt.srtt().unwrap_or(Duration::from_millis(100));
        if s.outcome == Outcome::Ok {
            self.rtt.on_sample(s.finished, s.bytes, s.latency(), s.retransmit);
            self.cubic.on_ack(s.finished, rtt);
        } else if s.outcome.is_congestion() {
            self.cubic.on_congestion(s.finished, rtt);
        }
    }
    fn window(&self) -> usize {
        to_window(self.cubic.window())
    }
    fn state(&self) -> ControllerState {
        ControllerState {
            controller: "cubic",
            mode: "cubic",
            window: self.window(),
            bandwidth_mbps: 0.0,
            min_rtt_ms: ms(self.rtt.min_rtt()),
            forecast_mbps: 0.0,
        }
    }
}

#[derive(Debug)]
struct Fixed(usize);

impl Controller for Fixed {
    fn on_sample(&mut self, _: &Sample) {}
    fn window(&self) -> usize {
        self.0
    }
    fn state(&self) -> ControllerState {
        ControllerState {
            controller: "fixed",
            mode: "fixed",
            window: self.0,
            bandwidth_mbps: 0.0,
            min_rtt_ms: 0.0,
            forecast_mbps: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::sim::{Link, Sim};

    const MB: f64 = 1e6;

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn controller_names_parse() {
        assert_eq!("auto".parse(), Ok(ControllerKind::Auto));
        assert_eq!("fixed:8".parse(), Ok(ControllerKind::Fixed(8)));
        assert!("fixed:0".parse::<ControllerKind>().is_err());
        assert!("reno".parse::<ControllerKind>().unwrap_err().contains("unknown controller"));
    }

    #[test]
    fn auto_converges_to_the_bdp_of_a_wan_link() {
        // 40 MB/s shared, 2 MB/s per connection, 60 ms: 8 MiB parts take 4.25 s,
        // so 40 MB/s x 4.25 s / 8.39 MB = 20.3 requests fill the link.
        let link = Link { bandwidth: 40.0 * MB, per_conn: 2.0 * MB, rtt: Duration::from_millis(60), ..Link::default() };
        let part = 8 << 20;
        let ideal = link.bandwidth * (0.06 + part as f64 / link.per_conn) / part as f64;
        let mut sim = Sim::new(link, 1);
        let f = sim.add_flow(ControllerKind::Auto.build(16, 256), part, Duration::ZERO);
        sim.run(Duration::from_secs(90));
        let windows = sim.windows(f, 50, 90);
        let w = mean(&windows);
        assert!((w - ideal).abs() <= 0.1 * ideal, "mean window {w:.1}, BDP {ideal:.1}");
        let rate = sim.throughput(f, 50, 90);
        assert!(rate >= 0.9 * 40.0 * MB, "throughput {:.1} MB/s", rate / MB);
    }

    #[test]
    fn a_window_started_far_above_the_bdp_comes_down_to_it() {
        // The default start (64) on wan with 2 MiB requests, where 21 fill the link: the
        // first round queues behind itself, so the first minimum latency is inflated about
        // 3x. ProbeRTT finds the lower one and, as long as each probe finds a much lower
        // minimum, probes again at once (one probe per 10 s left the window at 1.5x the
        // BDP after a minute).
        let link = Link { bandwidth: 40.0 * MB, per_conn: 2.0 * MB, rtt: Duration::from_millis(60), ..Link::default() };
        let part = 2 << 20;
        let ideal = link.bandwidth * (0.06 + part as f64 / link.per_conn) / part as f64;
        let mut sim = Sim::new(link, 4);
        let f = sim.add_flow(ControllerKind::Auto.build(64, 128), part, Duration::ZERO);
        sim.run(Duration::from_secs(60));
        let w = mean(&sim.windows(f, 30, 60));
        assert!((w - ideal).abs() <= 0.1 * ideal, "mean window {w:.1} from 30 s, BDP {ideal:.1}");
        let rate = sim.throughput(f, 0, 60);
        assert!(rate >= 0.9 * 40.0 * MB, "throughput {:.1} MB/s", rate / MB);
    }

    #[test]
    fn throttling_cuts_the_window_by_about_half_and_it_recovers() {
        // 1 MB parts take 0.56 s: 22 in flight would send 40 req/s; the limit is 20 req/s.
        let link = Link { bandwidth: 40.0 * MB, per_conn: 2.0 * MB, rtt: Duration::from_millis(60), ..Link::default() };
        let mut sim = Sim::new(link, 2);
        let f = sim.add_flow(ControllerKind::Auto.build(16, 256), 1_000_000, Duration::ZERO);
        sim.run(Duration::from_secs(20));
        let before = mean(&sim.windows(f, 15, 20));
        sim.link_mut().request_limit = Some(20.0);
        sim.run(Duration::from_secs(3));
        let after = sim.windows(f, 20, 23).into_iter().fold(f64::MAX, f64::min);
        assert!(after <= 0.75 * before, "window {before:.1} -> {after:.1} after throttling began");
        sim.run(Duration::from_secs(37));
        let rate = sim.throughput(f, 40, 60);
        assert!(rate >= 0.85 * 20.0 * MB, "recovered to {:.1} MB/s of the 20 MB/s the limit allows", rate / MB);
        let throttled = sim.throttled_fraction(f, 40, 60);
        assert!(throttled <= 0.1, "{:.1}% of requests throttled once settled", throttled * 100.0);
    }

    #[test]
    fn two_competing_flows_share_fairly() {
        let link = Link { bandwidth: 40.0 * MB, per_conn: 4.0 * MB, rtt: Duration::from_millis(40), ..Link::default() };
        let mut sim = Sim::new(link, 3);
        let a = sim.add_flow(ControllerKind::Auto.build(8, 256), 2_000_000, Duration::ZERO);
        let b = sim.add_flow(ControllerKind::Auto.build(8, 256), 2_000_000, Duration::from_secs(15));
        sim.run(Duration::from_secs(120));
        let (x, y) = (sim.throughput(a, 80, 120), sim.throughput(b, 80, 120));
        let jain = (x + y).powi(2) / (2.0 * (x * x + y * y));
        assert!(jain >= 0.95, "Jain {jain:.3}: {:.1} vs {:.1} MB/s", x / MB, y / MB);
        assert!(x + y >= 0.9 * 40.0 * MB, "together they fill the link: {:.1}", (x + y) / MB);
    }

    #[test]
    fn a_step_change_in_bandwidth_is_tracked_within_seconds() {
        let link = Link { bandwidth: 40.0 * MB, per_conn: 2.0 * MB, rtt: Duration::from_millis(60), ..Link::default() };
        let part = 1_000_000u64;
        let ideal = |b: f64| b * (0.06 + part as f64 / 2e6) / part as f64;
        let mut sim = Sim::new(link, 4);
        let f = sim.add_flow(ControllerKind::Auto.build(16, 256), part, Duration::ZERO);
        sim.run(Duration::from_secs(30));
        sim.link_mut().bandwidth = 10.0 * MB;
        sim.run(Duration::from_secs(30));
        // The slowdown is seen within seconds: the model alone kept the old window (21-26
        // requests, 4x the new BDP) until 40 s.
        let soon = mean(&sim.windows(f, 34, 38));
        assert!(
            soon <= 2.0 * ideal(10.0 * MB),
            "window {soon:.1} 4-8 s after the drop, BDP now {:.1}",
            ideal(10.0 * MB)
        );
        let late = mean(&sim.windows(f, 45, 60));
        assert!(late <= 1.3 * ideal(10.0 * MB), "window {late:.1} after the drop, BDP now {:.1}", ideal(10.0 * MB));
        assert!(sim.throughput(f, 35, 60) >= 0.9 * 10.0 * MB);
        sim.link_mut().bandwidth = 40.0 * MB;
        sim.run(Duration::from_secs(30));
        let back = mean(&sim.windows(f, 75, 90));
        assert!(back >= 0.8 * ideal(40.0 * MB), "window {back:.1} after recovery, BDP {:.1}", ideal(40.0 * MB));
        // Known gap: after a rise, the estimate settles about 10% under the new rate.
        assert!(sim.throughput(f, 70, 90) >= 0.85 * 40.0 * MB, "{:.1}", sim.throughput(f, 70, 90) / MB);
    }

    #[test]
    fn a_drop_is_seen_in_the_bytes_moving_before_any_request_finishes() {
        // The emulated shifting upload: 5 MiB parts, as many in flight as the memory budget
        // holds (51), 40 MB/s shared and 2 MB/s per connection, 10 MB/s from 20 s. At
        // 10 MB/s the 51 parts under way take 27 s each: no completion says anything until
        // about 45 s, but the bytes they move do.
        let link = Link { bandwidth: 40.0 * MB, per_conn: 2.0 * MB, rtt: Duration::from_millis(60), ..Link::default() };
        let mut sim = Sim::new(link, 6);
        let f = sim.add_flow(ControllerKind::Auto.build(64, 51), 5 << 20, Duration::ZERO);
        // The drop comes just after a round of parts has finished (as at 20.2 s in the
        // emulated run), so the next round is all under way at the slower rate.
        sim.run(Duration::from_secs(15));
        let mut finished = sim.finished(f);
        while sim.finished(f) == finished {
            sim.run(Duration::from_millis(100));
        }
        sim.run(Duration::from_millis(500));
        finished = sim.finished(f);
        let before = sim.state(f).window;
        sim.link_mut().bandwidth = 10.0 * MB;
        sim.run(Duration::from_secs(6));
        let after = sim.state(f);
        assert_eq!(sim.finished(f), finished, "a request finished after the drop: {after:?}");
        assert!(after.window * 2 <= before, "window {before} before the drop, 6 s after {after:?}");
        assert!(after.bandwidth_mbps <= 20.0, "{after:?}");
    }

    #[test]
    fn random_resets_keep_the_window_and_frequent_ones_cut_it() {
        // lossy: 80 ms, 40 MB/s shared, 1 MB/s per connection, 0.5% of requests reset.
        // 1 MB requests take 1.08 s, so about 43 in flight fill the link.
        let link = Link {
            bandwidth: 40.0 * MB,
            per_conn: 1.0 * MB,
            rtt: Duration::from_millis(80),
            reset_rate: 0.005,
            ..Link::default()
        };
        let part = 1_000_000u64;
        let ideal = link.bandwidth * (0.08 + part as f64 / link.per_conn) / part as f64;
        let mut sim = Sim::new(link, 5);
        let f = sim.add_flow(ControllerKind::Auto.build(16, 256), part, Duration::ZERO);
        sim.run(Duration::from_secs(60));
        let w = mean(&sim.windows(f, 30, 60));
        assert!(w >= 0.9 * ideal, "mean window {w:.1} with 0.5% resets, BDP {ideal:.1}");
        let rate = sim.throughput(f, 30, 60);
        assert!(rate >= 0.9 * 40.0 * MB, "throughput {:.1} MB/s with 0.5% resets", rate / MB);
        sim.link_mut().reset_rate = 0.1;
        sim.run(Duration::from_secs(20));
        let low = sim.windows(f, 60, 80).into_iter().fold(f64::MAX, f64::min);
        assert!(low <= 0.75 * w, "window {w:.1} -> {low:.1} with 10% of requests reset");
    }
}
