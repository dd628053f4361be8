//! Real-time rates from real completions, and the record of every controller decision
//! over time (the timeline `--json` carries and the bench plots).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::controller::ControllerState;

/// Timeline points are taken at most this often.
pub const TIMELINE_EVERY: Duration = Duration::from_millis(250);
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the client was created.
    pub t: f64,
    /// MB/s completed over the last second.
    pub mbps: f64,
    pub in_flight: u64,
    pub part_size: u64,
    #[serde(flatten)]
    pub state: ControllerState,
}

/// Completed bytes over a sliding 1 s window, and the timeline.
#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    completions: VecDeque<(Instant, u64)>,
    in_window: u64,
    timeline: Vec<TimelinePoint>,
    last_point: Option<Instant>,
}

impl Monitor {
    pub fn new(started: Instant) -> Self {
        Self { started, completions: VecDeque::new(), in_window: 0, timeline: Vec::new(), last_point: None }
    }

    /// Records `bytes` completed at `now`.
    pub fn on_completion(&mut self, now: Instant, bytes: u64) {
        self.completions.push_back((now, bytes));
        self.in_window += bytes;
        self.forget_before(now);
    }

    /// Drops completions more than [`RATE_WINDOW`] before `now`.
    fn forget_before(&mut self, now: Instant) {
        while let Some(&(t, b)) = self.completions.front() {
            if now.duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.in_window -= b;
            self.completions.pop_front();
        }
    }

    /// Bytes per second completed over the last second (as of the last completion or
    /// timeline point).
    pub fn rate(&self) -> f64 {
        self.in_window as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Appends a timeline point if the last one is old enough.
    pub fn maybe_record(
        &mut self,
        now: Instant,
        in_flight: u64,
        part_size: u64,
        state: impl FnOnce() -> ControllerState,
    ) {
        if self.last_point.is_some_and(|t| now.duration_since(t) < TIMELINE_EVERY) {
            return;
        }
        self.last_point = Some(now);
        self.forget_before(now);
        self.timeline.push(TimelinePoint {
            t: now.duration_since(self.started).as_secs_f64(),
            mbps: self.rate() / 1e6,
            in_flight,
            part_size,
            state: state(),
        });
    }

    /// The timeline so far.
    pub fn timeline(&self) -> Vec<TimelinePoint> {
        self.timeline.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_covers_the_last_second_only() {
        let fixed = crate::adaptive::controller::ControllerKind::Fixed(1).build(1, 1);
        let t0 = Instant::now();
        let mut m = Monitor::new(t0);
        m.on_completion(t0, 5_000_000);
        m.on_completion(t0 + Duration::from_millis(500), 5_000_000);
        assert_eq!(m.rate(), 10e6);
        m.on_completion(t0 + Duration::from_millis(1400), 1_000_000);
        assert_eq!(m.rate(), 6e6, "the first completion left the window");
        // A point taken between completions (the controller hears of progress) sees the
        // window as of its own time.
        m.maybe_record(t0 + Duration::from_millis(2000), 1, 1, || fixed.state());
        assert_eq!(m.rate(), 1e6);
        m.maybe_record(t0 + Duration::from_millis(2500), 1, 1, || fixed.state());
        assert_eq!(m.rate(), 0.0);
        assert_eq!(m.timeline().iter().map(|p| p.mbps).collect::<Vec<_>>(), [1.0, 0.0]);
    }
}
