//! A BBR-style model over requests. Each completed request yields a delivery-rate sample
//! (bytes delivered by everyone between its start and its end, over its duration); the
//! bottleneck bandwidth is the windowed maximum of those over 10 rounds (at most 10 s), the propagation
//! latency the minimum request latency over 10 s. The window (requests in flight) is
//! `gain x bandwidth x min latency / request size`, with BBR's modes:
//!
//! - **Startup**: gain 2.89 until the bandwidth stops growing by 25% for 3 rounds, or
//!   (HyStart-like) until requests take 1.5x the minimum latency: a queue is building;
//! - **Drain**: the window falls to the BDP for one round while the queue Startup built
//!   empties (no new request starts until in-flight is below it);
//! - **ProbeBW**: gains cycling 1.25, 0.9, 1, 1, one phase per round; if the
//!   1.25 probe found 15% more bandwidth, the path got faster: back to Startup to grow
//!   exponentially instead of 25% per cycle;
//! - **ProbeRTT**: when the minimum is stale, half the BDP in flight until a request
//!   started in ProbeRTT completes; the least latency of those becomes the new minimum
//!   (an inflated latency is never adopted just because the old minimum aged out).
//!
//! Requests are long compared with packets (seconds on a slow path), so a round is one
//! minimum latency of time rather than one packet-timed round trip, and the minimum stays
//! valid for 10 s or 4 rounds, whichever is longer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Outcome, Sample};
use crate::network::rtt::MIN_RTT_WINDOW;

const STARTUP_GAIN: f64 = 2.89;
/// ProbeBW gains. Packet BBR drains its probe with 0.75; a request window drains by
/// itself as requests complete (no new ones start until below the window), so 0.9 is
/// enough and avoids a round of under-use.
/// Four phases rather than packet BBR's eight: a request round is long, and a shorter
/// cycle probes for new bandwidth twice as often.
const CYCLE: [f64; 4] = [1.25, 0.9, 1.0, 1.0];
const BW_WINDOW_ROUNDS: u64 = 10;
/// Rate samples also expire after this long, so a drop in bandwidth is tracked within
/// seconds even when a round (one request time) is long.
const BW_WINDOW_TIME: Duration = Duration::from_secs(10);

/// BBR's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// The model.
#[derive(Debug, Clone)]
pub struct Bbr {
    mode: Mode,
    initial: f64,
    max_window: f64,
    bw: VecDeque<(u64, Instant, f64)>,
    min_rtt: Option<(Instant, f64)>,
    /// Size of the request the minimum latency was seen on.
    min_rtt_bytes: u64,
    round: u64,
    round_start: Option<Instant>,
    full_bw: f64,
    full_bw_rounds: u32,
    filled: bool,
    mode_round: u64,
    cycle: usize,
    request_bytes: f64,
    /// ProbeRTT: when it began, and the least latency of requests started since.
    probe_rtt: Option<(Instant, Option<f64>)>,
    /// The minimum when the current ProbeRTT began.
    probe_rtt_from: f64,
    /// The last ProbeRTT found a minimum far below the old one: the old one was inflated
    /// (measured with a queue of the model's own making), and so may the new one be.
    reprobe: bool,
    /// Bandwidth estimate when the current 1.25 probe began.
    probe_start_bw: f64,
    /// When [`Bbr::path_slowed`] last lowered the bandwidth: requests that started before
    /// then moved part of their bytes at the old rate, and their rate samples would undo it.
    slowed_at: Option<Instant>,
}

impl Bbr {
    /// A model that starts with `initial` requests in flight and never asks for more than
    /// `max_window`.
    pub fn new(initial: f64, max_window: f64) -> Self {
        Self {
            mode: Mode::Startup,
            initial: initial.max(1.0),
            max_window,
            bw: VecDeque::new(),
            min_rtt: None,
            min_rtt_bytes: 0,
            round: 0,
            round_start: None,
            full_bw: 0.0,
            full_bw_rounds: 0,
            filled: false,
            mode_round: 0,
            cycle: 0,
            request_bytes: 0.0,
            probe_rtt: None,
            probe_rtt_from: 0.0,
            reprobe: false,
            probe_start_bw: 0.0,
            slowed_at: None,
        }
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bottleneck bandwidth estimate, bytes/s.
    pub fn bandwidth(&self) -> f64 {
        self.bw.iter().map(|&(_, _, r)| r).fold(0.0, f64::max)
    }

    /// Minimum request latency within the last 10 s.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(_, v)| Duration::from_secs_f64(v))
    }

    fn gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => STARTUP_GAIN,
            // The window drops to the BDP at once; in-flight requests drain down to it as
            // they complete (packet BBR paces at 1/2.89 instead).
            Mode::Drain => 1.0,
            Mode::ProbeBw => CYCLE[self.cycle],
            Mode::ProbeRtt => 0.5,
        }
    }

    /// The window the model asks for (requests in flight, fractional).
    pub fn window(&self) -> f64 {
        let Some(bdp) = self.bdp_window() else {
            return self.initial;
        };
        let w = self.gain() * bdp;
        // Startup never shrinks below where it started.
        let w = if self.mode == Mode::Startup { w.max(self.initial) } else { w };
        w.clamp(1.0, self.max_window)
    }

    /// The path is known to have slowed to `rate` (bytes moving while requests are in
    /// flight say so before any of them completes): bandwidth samples above `rate` are
    /// forgotten, so the windowed maximum does not keep the old rate's window for the rest
    /// of its 10 s (ProbeBW then probes up from `rate` as usual), and a Startup still under
    /// way ends, since the pipe is evidently full.
    pub fn path_slowed(&mut self, rate: f64, now: Instant) {
        for (_, _, r) in &mut self.bw {
            *r = r.min(rate);
        }
        self.slowed_at = Some(now);
        if self.mode == Mode::Startup {
            self.filled = true;
            self.enter(Mode::Drain, now);
        }
    }

    /// The mean size of recent requests (bytes; 0 before the first).
    pub fn request_bytes(&self) -> f64 {
        self.request_bytes
    }

    /// The steady-state window (gain 1): bandwidth x min latency / request size; `None`
    /// until a request has completed.
    pub fn bdp_window(&self) -> Option<f64> {
        match (self.typical_latency(), self.bandwidth()) {
            (Some(rtt), bw) if bw > 0.0 && self.request_bytes > 0.0 => {
                Some(super::bdp::window_for(bw, Duration::from_secs_f64(rtt), self.request_bytes as u64))
            }
            _ => None,
        }
    }

    /// The minimum latency (seconds), scaled to a typical request. The minimum may come from a
    /// request of half the typical size (the tail of a range), which on a path that limits
    /// each connection takes half as long: the window would come out half of what the path
    /// needs (a restore held at 20 of 40 MB/s). Scaled as if latency grew with size, it is
    /// at most twice too long where a round trip dominates instead, and the pool bounds
    /// what a larger window holds.
    pub fn typical_latency(&self) -> Option<f64> {
        let (_, rtt) = self.min_rtt?;
        let scale = if self.min_rtt_bytes > 0 { self.request_bytes / self.min_rtt_bytes as f64 } else { 1.0 };
        Some(rtt * scale.clamp(1.0, 2.0))
    }

    /// Feeds a finished request. Only successes carry rate and latency information.
    pub fn on_sample(&mut self, s: &Sample) {
        if s.outcome != Outcome::Ok || s.bytes == 0 {
            return;
        }
        let now = s.finished;
        let latency = s.latency().as_secs_f64().max(1e-6);
        self.request_bytes =
            if self.request_bytes == 0.0 { s.bytes as f64 } else { 0.9 * self.request_bytes + 0.1 * s.bytes as f64 };

        let round_len = self.min_rtt().unwrap_or(s.latency());
        let new_round = self.round_start.is_none_or(|t| now.duration_since(t) >= round_len);
        if new_round {
            self.round += 1;
            self.round_start = Some(now);
        }
        let interval = now.duration_since(s.delivered_time_at_start).as_secs_f64().max(latency);
        let mut rate = s.delivered_at_end.saturating_sub(s.delivered_at_start) as f64 / interval;
        if self.slowed_at.is_some_and(|t| s.started < t) {
            rate = rate.min(self.bandwidth());
        }
        self.bw.push_back((self.round, now, rate));
        while self
            .bw
            .front()
            .is_some_and(|&(r, t, _)| r + BW_WINDOW_ROUNDS < self.round || now.duration_since(t) > BW_WINDOW_TIME)
        {
            self.bw.pop_front();
        }
        let validity = MIN_RTT_WINDOW.max(round_len * 4);
        let stale = self.min_rtt.is_some_and(|(t, _)| now.duration_since(t) > validity);
        // The latency that matters is that of a typical request: a small one (a HEAD-sized
        // GET, the tail of a range) finishes sooner and would make the window far too
        // small for the typical size. Only requests of at least half the typical size set
        // the minimum, and a minimum seen on a request now atypically small is replaced.
        let typical = s.bytes as f64 >= 0.5 * self.request_bytes;
        let outdated = (self.min_rtt_bytes as f64) < 0.5 * self.request_bytes;
        if !s.retransmit && typical && (outdated || self.min_rtt.is_none_or(|(_, v)| latency <= v)) {
            self.min_rtt = Some((now, latency));
            self.min_rtt_bytes = s.bytes;
        }
        let mut probe_done = false;
        if let Some((began, best)) = &mut self.probe_rtt
            && s.started >= *began
            && !s.retransmit
            && typical
        {
            if best.is_none_or(|b: f64| latency <= b) {
                *best = Some(latency);
                self.min_rtt_bytes = s.bytes;
            }
            self.min_rtt = Some((now, best.expect("just set")));
            probe_done = true;
        }
        // A request started after Startup's first round that took 1.5x the minimum waited
        // in a queue: the pipe is full.
        if self.mode == Mode::Startup
            && self.round > 1
            && self.min_rtt.is_some_and(|(_, v)| latency > 1.5 * v)
            && !s.retransmit
        {
            self.filled = true;
        }

        if new_round && !self.filled {
            let bw = self.bandwidth();
            if bw >= self.full_bw * 1.25 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                self.filled = self.full_bw_rounds >= 3;
            }
        }
        self.advance(now, new_round, stale, probe_done);
    }

    fn enter(&mut self, mode: Mode, now: Instant) {
        self.mode = mode;
        self.mode_round = self.round;
        if mode == Mode::ProbeBw {
            self.cycle = 0;
            self.probe_start_bw = self.bandwidth();
        }
        if mode == Mode::ProbeRtt {
            self.probe_rtt = Some((now, None));
            self.probe_rtt_from = self.min_rtt.map_or(0.0, |(_, v)| v);
        }
    }

    fn advance(&mut self, now: Instant, new_round: bool, rtt_stale: bool, probe_done: bool) {
        match self.mode {
            Mode::Startup if self.filled => self.enter(Mode::Drain, now),
            Mode::Drain if new_round && self.round > self.mode_round => self.enter(Mode::ProbeBw, now),
            Mode::ProbeBw => {
                if new_round {
                    if self.cycle == 0 && self.bandwidth() >= 1.15 * self.probe_start_bw {
                        self.filled = false;
                        self.full_bw = self.bandwidth();
                        self.full_bw_rounds = 0;
                        self.enter(Mode::Startup, now);
                        return;
                    }
                    self.cycle = (self.cycle + 1) % CYCLE.len();
                    if self.cycle == 0 {
                        self.probe_start_bw = self.bandwidth();
                    }
                }
                if rtt_stale || (self.reprobe && new_round) {
                    self.reprobe = false;
                    self.enter(Mode::ProbeRtt, now);
                }
            }
            Mode::ProbeRtt if probe_done => {
                self.probe_rtt = None;
                // A minimum 25% lower than before: probe again at once rather than in 10 s,
                // until the minimum stops falling (each probe halves what is in flight).
                self.reprobe = self.min_rtt.is_some_and(|(_, v)| v < 0.75 * self.probe_rtt_from);
                let next = if self.filled { Mode::ProbeBw } else { Mode::Startup };
                self.enter(next, now);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Op;

    fn sample(t0: Instant, start_ms: u64, latency_ms: u64, bytes: u64) -> Sample {
        let started = t0 + Duration::from_millis(start_ms);
        Sample::alone(Op::GetObject, started, Duration::from_millis(latency_ms), bytes, Outcome::Ok)
    }

    #[test]
    fn the_minimum_latency_is_that_of_typical_requests_not_of_a_small_one() {
        let t0 = Instant::now();
        let mut bbr = Bbr::new(4.0, 64.0);
        // A small request first (an index, a HEAD-sized GET): fast.
        bbr.on_sample(&sample(t0, 0, 70, 4_000));
        assert_eq!(bbr.min_rtt(), Some(Duration::from_millis(70)));
        // Then 1 MiB requests taking 560 ms each: they define the latency of the workload.
        for i in 0..30 {
            bbr.on_sample(&sample(t0, 100 + i * 10, 560, 1 << 20));
        }
        assert_eq!(bbr.min_rtt(), Some(Duration::from_millis(560)));
        // A small request now does not pull the minimum down again.
        bbr.on_sample(&sample(t0, 500, 65, 4_000));
        assert_eq!(bbr.min_rtt(), Some(Duration::from_millis(560)));
    }

    #[test]
    fn the_window_is_sized_for_a_typical_request_when_the_minimum_came_from_a_shorter_one() {
        // A path that limits each connection to 2 MB/s: 2 MiB ranges take 1.05 s, and a
        // 1.1 MiB one (the tail of a chunk, still "typical") 0.6 s. 40 MB/s delivered.
        let t0 = Instant::now();
        let mut bbr = Bbr::new(64.0, 256.0);
        let mib = 1u64 << 20;
        let mut delivered = 0;
        for i in 0..40u64 {
            let (latency, bytes) = if i == 20 { (600, 11 * mib / 10) } else { (1050, 2 * mib) };
            let started = t0 + Duration::from_millis(i * 50);
            let finished = started + Duration::from_millis(latency);
            let mut s = Sample::alone(Op::GetObject, started, Duration::from_millis(latency), bytes, Outcome::Ok);
            // Delivered by everyone meanwhile: 40 MB/s.
            s.delivered_at_start = delivered;
            s.delivered_time_at_start = started;
            delivered += (40e6 * latency as f64 / 1000.0) as u64;
            s.delivered_at_end = delivered;
            s.finished = finished;
            bbr.on_sample(&s);
        }
        assert_eq!(bbr.min_rtt(), Some(Duration::from_millis(600)), "the raw minimum is the short request's");
        // The path needs 40 MB/s x 1.05 s / 2 MiB = 20 requests in flight, not 11.
        let w = bbr.bdp_window().unwrap();
        assert!((18.0..=24.0).contains(&w), "window {w}");
    }
}
