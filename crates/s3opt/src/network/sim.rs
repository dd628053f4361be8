//! A simulated link in virtual time, for controller tests: a shared bottleneck divided
//! equally among transferring requests (processor sharing), each also capped at a
//! per-connection rate, a round-trip delay before each request's data flows, an optional
//! request-rate limit answered with throttling, and random resets. Controllers hear of
//! every finished request and, every [`PROGRESS_EVERY`], of the bytes moved so far, as the
//! client tells them.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Op, Outcome, Sample};
use crate::adaptive::controller::Controller;

/// How often flows report their progress (the client's cadence).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The link. Rates in bytes/s; `per_conn` 0 means uncapped.
#[derive(Debug, Clone)]
pub struct Link {
    pub bandwidth: f64,
    pub per_conn: f64,
    pub rtt: Duration,
    /// Requests per second admitted (one prefix); above it requests are throttled.
    pub request_limit: Option<f64>,
    pub reset_rate: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self { bandwidth: 40e6, per_conn: 0.0, rtt: Duration::from_millis(50), request_limit: None, reset_rate: 0.0 }
    }
}

struct Req {
    started: Instant,
    delivered_at_start: u64,
    delivered_time_at_start: Instant,
    remaining: f64,
    transfer_from: Instant,
    fail: Option<(Instant, Outcome)>,
}

#[derive(Default, Clone, Copy)]
struct Second {
    bytes: f64,
    window_sum: f64,
    steps: u64,
    requests: u64,
    throttled: u64,
}

struct Flow {
    ctl: Box<dyn Controller>,
    part: u64,
    start_after: Duration,
    active: Vec<Req>,
    delivered: u64,
    delivered_time: Instant,
    /// Bytes moved by all requests so far, finished or not.
    moved: f64,
    finished: u64,
    seconds: Vec<Second>,
}

/// The simulation.
pub struct Sim {
    link: Link,
    t0: Instant,
    now: Instant,
    dt: Duration,
    flows: Vec<Flow>,
    rng: StdRng,
    tokens: f64,
}

impl Sim {
    /// A simulation of `link`, random choices seeded with `seed`.
    pub fn new(link: Link, seed: u64) -> Self {
        let t0 = Instant::now();
        Self {
            link,
            t0,
            now: t0,
            dt: Duration::from_millis(5),
            flows: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            tokens: 0.0,
        }
    }

    /// Changes the link from now on.
    pub fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    /// Adds a flow of `part`-byte requests steered by `ctl`, starting after `start_after`.
    pub fn add_flow(&mut self, ctl: Box<dyn Controller>, part: u64, start_after: Duration) -> usize {
        let delivered_time = self.t0 + start_after;
        self.flows.push(Flow {
            ctl,
            part,
            start_after,
            active: Vec::new(),
            delivered: 0,
            delivered_time,
            moved: 0.0,
            finished: 0,
            seconds: Vec::new(),
        });
        self.flows.len() - 1
    }

    /// Advances virtual time by `d`.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn second(&mut self, f: usize) -> &mut Second {
        let s = self.now.duration_since(self.t0).as_secs() as usize;
        let secs = &mut self.flows[f].seconds;
        if secs.len() <= s {
            secs.resize(s + 1, Second::default());
        }
        &mut secs[s]
    }

    fn step(&mut self) {
        let (now, dt) = (self.now, self.dt.as_secs_f64());
        let elapsed = now.duration_since(self.t0);
        if let Some(limit) = self.link.request_limit {
            self.tokens = (self.tokens + limit * dt).min(limit);
        }
        for f in 0..self.flows.len() {
            if elapsed < self.flows[f].start_after {
                continue;
            }
            while self.flows[f].active.len() < self.flows[f].ctl.window() {
                let part = self.flows[f].part as f64;
                let mut fail = None;
                if self.link.request_limit.is_some() {
                    if self.tokens >= 1.0 {
                        self.tokens -= 1.0;
                    } else {
                        fail = Some((now + self.link.rtt, Outcome::Throttled));
                    }
                }
                if fail.is_none() && self.rng.random::<f64>() < self.link.reset_rate {
                    fail = Some((now + self.link.rtt + self.link.rtt, Outcome::Reset));
                }
                let req = Req {
                    started: now,
                    delivered_at_start: self.flows[f].delivered,
                    delivered_time_at_start: self.flows[f].delivered_time,
                    remaining: part,
                    transfer_from: now + self.link.rtt,
                    fail,
                };
                self.flows[f].active.push(req);
                let sec = self.second(f);
                sec.requests += 1;
                if matches!(fail, Some((_, Outcome::Throttled))) {
                    sec.throttled += 1;
                }
            }
        }
        let transferring =
            self.flows.iter().flat_map(|f| &f.active).filter(|r| r.fail.is_none() && now >= r.transfer_from).count();
        let rate = if transferring == 0 {
            0.0
        } else {
            let share = self.link.bandwidth / transferring as f64;
            if self.link.per_conn > 0.0 { share.min(self.link.per_conn) } else { share }
        };
        for f in 0..self.flows.len() {
            let mut moved = 0.0;
            let mut done = Vec::new();
            let flow = &mut self.flows[f];
            flow.active.retain_mut(|r| match r.fail {
                Some((t, outcome)) if now >= t => {
                    done.push((r.started, r.delivered_at_start, r.delivered_time_at_start, outcome));
                    false
                }
                Some(_) => true,
                None if now >= r.transfer_from => {
                    let step = (rate * dt).min(r.remaining);
                    r.remaining -= step;
                    moved += step;
                    if r.remaining <= 0.0 {
                        done.push((r.started, r.delivered_at_start, r.delivered_time_at_start, Outcome::Ok));
                        false
                    } else {
                        true
                    }
                }
                None => true,
            });
            flow.finished += done.len() as u64;
            for (started, delivered_at_start, delivered_time_at_start, outcome) in done {
                if outcome == Outcome::Ok {
                    flow.delivered += flow.part;
                    flow.delivered_time = now;
                }
                let sample = Sample {
                    op: Op::UploadPart,
                    bytes: flow.part,
                    started,
                    finished: now,
                    outcome,
                    retransmit: false,
                    delivered_at_start,
                    delivered_time_at_start,
                    delivered_at_end: flow.delivered,
                };
                flow.ctl.on_sample(&sample);
            }
            flow.moved += moved;
            let ticks = |t: Instant| t.duration_since(self.t0).as_nanos() / PROGRESS_EVERY.as_nanos();
            if ticks(now + self.dt) > ticks(now) {
                let (total, in_flight) = (flow.moved as u64, flow.active.len());
                flow.ctl.on_progress(now, total, in_flight);
            }
            let window = self.flows[f].ctl.window() as f64;
            let sec = self.second(f);
            sec.bytes += moved;
            sec.window_sum += window;
            sec.steps += 1;
        }
        self.now += self.dt;
    }

    fn span(&self, f: usize, from: u64, to: u64) -> &[Second] {
        let secs = &self.flows[f].seconds;
        &secs[(from as usize).min(secs.len())..(to as usize).min(secs.len())]
    }

    /// The controller's state of flow `f` now.
    pub fn state(&self, f: usize) -> crate::adaptive::controller::ControllerState {
        self.flows[f].ctl.state()
    }

    /// Requests of flow `f` that have finished, successfully or not.
    pub fn finished(&self, f: usize) -> u64 {
        self.flows[f].finished
    }

    /// Mean window of each second in `[from, to)`.
    pub fn windows(&self, f: usize, from: u64, to: u64) -> Vec<f64> {
        self.span(f, from, to).iter().filter(|s| s.steps > 0).map(|s| s.window_sum / s.steps as f64).collect()
    }

    /// Bytes per second moved by flow `f` over `[from, to)` seconds.
    pub fn throughput(&self, f: usize, from: u64, to: u64) -> f64 {
        self.span(f, from, to).iter().map(|s| s.bytes).sum::<f64>() / (to - from) as f64
    }

    /// Fraction of requests started in `[from, to)` that were throttled.
    pub fn throttled_fraction(&self, f: usize, from: u64, to: u64) -> f64 {
        let span = self.span(f, from, to);
        let (t, n) = span.iter().fold((0, 0), |(t, n), s| (t + s.throttled, n + s.requests));
        if n == 0 { 0.0 } else { t as f64 / n as f64 }
    }
}
