//! Metrics counted from real request events: every [`Sample`] the engine records lands
//! here. Nothing is estimated or constant; a snapshot is a reading of counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::network::{Op, Outcome, Sample};

const OPS: [Op; 9] = [
    Op::PutObject,
    Op::CreateMultipart,
    Op::UploadPart,
    Op::CompleteMultipart,
    Op::AbortMultipart,
    Op::GetObject,
    Op::HeadObject,
    Op::List,
    Op::Delete,
];

/// Latency histogram: buckets grow by 2^(1/4) from 50 µs; ~90 buckets reach 200 s.
const BUCKETS: usize = 90;
const FIRST_BOUND_US: f64 = 50.0;

fn bucket_of(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_BOUND_US {
        return 0;
    }
    let idx = ((us / FIRST_BOUND_US).log2() * 4.0).ceil() as usize;
    idx.min(BUCKETS - 1)
}

fn bucket_upper(idx: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_US * 2f64.powf(idx as f64 / 4.0) / 1e6)
}

/// Live counters of one client.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    retries: AtomicU64,
    by_op: [AtomicU64; OPS.len()],
    by_outcome: [AtomicU64; Outcome::ALL.len()],
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    data_requests: AtomicU64,
    data_started: AtomicU64,
    hedges: AtomicU64,
    splits: AtomicU64,
    concurrency: AtomicU64,
    part_size: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            by_op: std::array::from_fn(|_| AtomicU64::new(0)),
            by_outcome: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            data_requests: AtomicU64::new(0),
            data_started: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            concurrency: AtomicU64::new(0),
            part_size: AtomicU64::new(0),
        }
    }

    /// Records one finished request attempt.
    pub fn record(&self, s: &Sample) {
        let op = OPS.iter().position(|o| *o == s.op).expect("every op listed");
        self.by_op[op].fetch_add(1, Relaxed);
        self.by_outcome[s.outcome as usize].fetch_add(1, Relaxed);
        if s.retransmit {
            self.retries.fetch_add(1, Relaxed);
        }
        if matches!(s.op, Op::PutObject | Op::UploadPart | Op::GetObject) {
            self.data_requests.fetch_add(1, Relaxed);
        }
        if s.outcome == Outcome::Ok {
            let counter = match s.op {
                Op::GetObject => &self.bytes_received,
                _ => &self.bytes_sent,
            };
            counter.fetch_add(s.bytes, Relaxed);
            self.latency[bucket_of(s.latency())].fetch_add(1, Relaxed);
            self.latency_sum_us.fetch_add(s.latency().as_micros() as u64, Relaxed);
        }
    }

    /// Payload bytes confirmed sent so far (for progress displays).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Relaxed)
    }

    /// Payload bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Relaxed)
    }

    /// Data requests (PUT, UploadPart, GET) recorded so far.
    pub(crate) fn data_requests(&self) -> u64 {
        self.data_requests.load(Relaxed)
    }

    /// Counts one hedge if hedges stay within `budget` of the data requests started (and
    /// at least one: a stall in a client's first request is worth one duplicate).
    pub(crate) fn try_take_hedge(&self, budget: f64) -> bool {
        let allowed = ((self.data_started.load(Relaxed) as f64 * budget).floor() as u64).max(1);
        self.hedges.fetch_update(Relaxed, Relaxed, |h| (h < allowed).then_some(h + 1)).is_ok()
    }

    /// Counts one range of a download to a file split off to a GET of its own.
    pub(crate) fn count_split(&self) {
        self.splits.fetch_add(1, Relaxed);
    }

    /// Counts received bytes whose size was unknown when the request was recorded.
    pub(crate) fn add_bytes_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Relaxed);
    }

    pub(crate) fn request_started(&self, data: bool) {
        if data {
            self.data_started.fetch_add(1, Relaxed);
        }
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn set_concurrency(&self, n: usize) {
        self.concurrency.store(n as u64, Relaxed);
    }

    pub(crate) fn set_part_size(&self, n: u64) {
        self.part_size.store(n, Relaxed);
    }

    /// A consistent-enough reading of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let target = (q * total as f64).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= target {
                    return bucket_upper(i).as_secs_f64() * 1e3;
                }
            }
            bucket_upper(BUCKETS - 1).as_secs_f64() * 1e3
        };
        let requests_by_op = OPS
            .iter()
            .zip(&self.by_op)
            .map(|(op, c)| (op.name().to_owned(), c.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let outcomes: Vec<(String, u64)> =
            Outcome::ALL.iter().zip(&self.by_outcome).map(|(o, c)| (o.name().to_owned(), c.load(Relaxed))).collect();
        let errors = outcomes.iter().filter(|(n, v)| n != "ok" && *v > 0).cloned().collect();
        MetricsSnapshot {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            requests: self.by_op.iter().map(|c| c.load(Relaxed)).sum(),
            requests_by_op,
            retries: self.retries.load(Relaxed),
            errors,
            latency_ms: LatencySummary {
                count: total,
                mean: if total == 0 { 0.0 } else { self.latency_sum_us.load(Relaxed) as f64 / total as f64 / 1e3 },
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
                max: quantile(1.0),
            },
            in_flight: self.in_flight.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            hedges: self.hedges.load(Relaxed),
            splits: self.splits.load(Relaxed),
            concurrency: self.concurrency.load(Relaxed),
            part_size: self.part_size.load(Relaxed),
        }
    }
}

/// Latency distribution of successful requests, in milliseconds (histogram bucket upper
/// bounds, so within 19% of the true value).
#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A reading of [`Metrics`].
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    pub elapsed_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub requests: u64,
    pub requests_by_op: std::collections::BTreeMap<String, u64>,
    pub retries: u64,
    /// Failed attempts by class (throttled, server_error, timeout, reset, integrity, client_error).
    pub errors: std::collections::BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    pub in_flight: u64,
    /// Most requests in flight at once so far.
    pub peak_in_flight: u64,
    /// Stragglers re-issued (first response wins), at most 5% of data requests.
    pub hedges: u64,
    /// Ranges of downloads to a file whose unreceived bytes went to a GET of their own so
    /// the last ranges end together.
    pub splits: u64,
    pub concurrency: u64,
    pub part_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op, bytes: u64, ms: u64, outcome: Outcome, retransmit: bool) -> Sample {
        let s = Sample::alone(op, Instant::now(), Duration::from_millis(ms), bytes, outcome);
        Sample { retransmit, delivered_at_end: 0, ..s }
    }

    #[test]
    fn counts_bytes_only_for_successes_and_errors_by_class() {
        let m = Metrics::new();
        m.record(&sample(Op::UploadPart, 100, 10, Outcome::Ok, false));
        m.record(&sample(Op::UploadPart, 100, 10, Outcome::Throttled, false));
        m.record(&sample(Op::UploadPart, 100, 30, Outcome::Ok, true));
        m.record(&sample(Op::GetObject, 50, 20, Outcome::Ok, false));
        let s = m.snapshot();
        assert_eq!(s.bytes_sent, 200);
        assert_eq!(s.bytes_received, 50);
        assert_eq!(s.requests, 4);
        assert_eq!(s.retries, 1);
        assert_eq!(s.errors.get("throttled"), Some(&1));
        assert_eq!(s.requests_by_op.get("UploadPart"), Some(&3));
        assert_eq!(s.latency_ms.count, 3);
        assert!((s.latency_ms.mean - 20.0).abs() < 0.01);
        // Bucket bounds are within 2^(1/4) of the true value.
        assert!(s.latency_ms.p50 >= 20.0 && s.latency_ms.p50 < 20.0 * 1.19 + 0.01, "{}", s.latency_ms.p50);
        assert!(s.latency_ms.max >= 30.0 && s.latency_ms.max < 30.0 * 1.19 + 0.01);
    }

    #[test]
    fn hedges_stay_within_their_share_of_data_requests_started_and_one_is_always_allowed() {
        let m = Metrics::new();
        assert!(m.try_take_hedge(0.05), "a client's first request may be hedged");
        assert!(!m.try_take_hedge(0.05), "but only once");
        for _ in 0..52 {
            m.request_started(true);
        }
        m.request_started(false);
        // 52 parts in flight, none finished: 5% of them is 2 hedges.
        assert!(m.try_take_hedge(0.05));
        assert!(!m.try_take_hedge(0.05));
        assert_eq!(m.snapshot().hedges, 2);
    }
}
