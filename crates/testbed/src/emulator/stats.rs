//! What the emulator did, so a bench can check that a scenario really happened.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Counters since start or the last reset.
#[derive(Debug)]
pub struct Stats {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    totals: Totals,
    per_second: Vec<Second>,
    uploads: u64,
}

/// Totals, as reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub status_503: u64,
    pub status_5xx_other: u64,
    pub resets_injected: u64,
    pub stalls_injected: u64,
    pub errors_injected: u64,
    pub corruptions_injected: u64,
    /// Seconds from the start (or the last reset) to the first request, and to the last
    /// payload byte carried each way: a transfer's data phase, to the millisecond, without
    /// the client's start-up before it or an upload's assembly at the server after it.
    pub first_request_s: Option<f64>,
    pub last_byte_up_s: Option<f64>,
    pub last_byte_down_s: Option<f64>,
}

/// One second of traffic.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub requests: u64,
    pub status_503: u64,
}

/// The report served at `/__emulator/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub elapsed_s: f64,
    #[serde(flatten)]
    pub totals: Totals,
    pub per_second: Vec<Second>,
}

/// Which counter an event bumps.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Request,
    Connection,
    BytesUp(u64),
    BytesDown(u64),
    Status(u16),
    Reset,
    Stall,
    Error,
    Corruption,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                started: Instant::now(),
                totals: Totals::default(),
                per_second: Vec::new(),
                uploads: 0,
            }),
        }
    }

    /// Zeroes everything and restarts the clock.
    pub fn reset(&self) -> Instant {
        let mut g = self.inner.lock().expect("stats lock");
        *g = Inner { started: Instant::now(), totals: Totals::default(), per_second: Vec::new(), uploads: 0 };
        g.started
    }

    /// Records a request and returns its number since the last reset (0, 1, 2, ...).
    pub fn next_request(&self) -> u64 {
        let mut g = self.inner.lock().expect("stats lock");
        Self::count(&mut g, Event::Request);
        g.totals.requests - 1
    }

    /// Numbers request bodies since the last reset (0, 1, 2, ...).
    pub fn take_upload_number(&self) -> u64 {
        let mut g = self.inner.lock().expect("stats lock");
        g.uploads += 1;
        g.uploads - 1
    }

    /// When the current run started.
    pub fn started(&self) -> Instant {
        self.inner.lock().expect("stats lock").started
    }

    pub fn record(&self, e: Event) {
        Self::count(&mut self.inner.lock().expect("stats lock"), e);
    }

    fn count(g: &mut Inner, e: Event) {
        let elapsed = g.started.elapsed().as_secs_f64();
        let t = elapsed as u64;
        while g.per_second.len() as u64 <= t {
            let next = g.per_second.len() as u64;
            g.per_second.push(Second { t: next, ..Second::default() });
        }
        let Inner { totals, per_second, .. } = g;
        let sec = &mut per_second[t as usize];
        match e {
            Event::Request => {
                totals.first_request_s.get_or_insert(elapsed);
                totals.requests += 1;
                sec.requests += 1;
            }
            Event::Connection => totals.connections += 1,
            Event::BytesUp(n) => {
                if n > 0 {
                    totals.last_byte_up_s = Some(elapsed);
                }
                totals.bytes_up += n;
                sec.bytes_up += n;
            }
            Event::BytesDown(n) => {
                if n > 0 {
                    totals.last_byte_down_s = Some(elapsed);
                }
                totals.bytes_down += n;
                sec.bytes_down += n;
            }
            Event::Status(503) => {
                totals.status_503 += 1;
                sec.status_503 += 1;
            }
            Event::Status(s) if s >= 500 => totals.status_5xx_other += 1,
            Event::Status(_) => {}
            Event::Reset => totals.resets_injected += 1,
            Event::Stall => totals.stalls_injected += 1,
            Event::Error => totals.errors_injected += 1,
            Event::Corruption => totals.corruptions_injected += 1,
        }
    }

    pub fn report(&self, scenario: &str) -> Report {
        let g = self.inner.lock().expect("stats lock");
        Report {
            scenario: scenario.to_owned(),
            elapsed_s: g.started.elapsed().as_secs_f64(),
            totals: g.totals.clone(),
            per_second: g.per_second.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_phase_runs_from_the_first_request_to_the_last_payload_byte_and_a_reset_clears_it() {
        let stats = Stats::new();
        assert!(stats.report("t").totals.first_request_s.is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        stats.next_request();
        stats.record(Event::BytesUp(10));
        std::thread::sleep(std::time::Duration::from_millis(30));
        stats.record(Event::BytesUp(10));
        stats.record(Event::BytesUp(0));
        stats.record(Event::BytesDown(5));
        let t = stats.report("t").totals;
        let (first, up, down) = (t.first_request_s.unwrap(), t.last_byte_up_s.unwrap(), t.last_byte_down_s.unwrap());
        assert!(first >= 0.02, "first request at {first}");
        assert!(up - first >= 0.03, "data phase {first}..{up}");
        assert!(down >= up);
        stats.next_request();
        assert_eq!(stats.report("t").totals.first_request_s, Some(first), "the first request stays the first");
        stats.reset();
        let t = stats.report("t").totals;
        assert!(t.first_request_s.is_none() && t.last_byte_up_s.is_none() && t.last_byte_down_s.is_none());
    }
}
