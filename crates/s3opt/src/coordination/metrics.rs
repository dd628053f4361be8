//! [`CoordinationMetrics`] (every field of the seed's struct, computed from real events)
//! and [`PerformanceBaseline`] (what an uncoordinated run measured, to compare against).
//! The [`MetricsCollector`] is pure: events arrive with their times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// An uncoordinated run's measured performance (the seed's `PerformanceBaseline`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PerformanceBaseline {
    /// Aggregate throughput, MB/s.
    pub throughput_mbps: f64,
    /// Mean time per object, ms.
    pub latency_ms: f64,
    /// Failed request attempts over all request attempts.
    pub error_rate: f64,
    /// Share of request attempts that did useful work (1 - error rate), times the share of
    /// objects that arrived.
    pub efficiency_rating: f64,
}

impl PerformanceBaseline {
    /// From a run's totals.
    pub fn measured(
        bytes: u64,
        elapsed: Duration,
        objects: u64,
        object_secs_sum: f64,
        failed_objects: u64,
        requests: u64,
        failed_requests: u64,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let error_rate = if requests == 0 { 0.0 } else { failed_requests as f64 / requests as f64 };
        let arrived = if objects == 0 { 1.0 } else { (objects - failed_objects.min(objects)) as f64 / objects as f64 };
        Self {
            throughput_mbps: bytes as f64 / secs / 1e6,
            latency_ms: if objects == 0 { 0.0 } else { object_secs_sum / objects as f64 * 1e3 },
            error_rate,
            efficiency_rating: (1.0 - error_rate) * arrived,
        }
    }
}

/// The seed's coordination metrics, plus the raw counts they come from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CoordinationMetrics {
    /// Time spent making scheduling decisions (prefix choice, queue and lease bookkeeping,
    /// sample processing) as a percentage of wall time.
    pub coordination_overhead_percent: f64,
    /// 1 - coefficient of variation of bytes over healthy prefixes (1 = perfectly even).
    pub load_balance_efficiency: f64,
    /// Time-averaged objects in flight over objects allowed in flight.
    pub pipeline_utilization: f64,
    /// Bytes completed over time since the first object was scheduled, MB/s.
    pub global_throughput_mbps: f64,
    /// Percent throughput gained over the baseline (0 without a baseline).
    pub coordination_efficiency_gain: f64,
    /// Percent less time per object than the baseline (0 without a baseline).
    pub latency_reduction: f64,
    /// Prefixes healthy and in use.
    pub active_prefixes: usize,
    /// Congestion events (global cuts, per-prefix cuts, rate-cap cuts).
    pub congestion_events: u64,
    /// Window and rate changes per second.
    pub adaptation_rate: f64,
    /// Throughput over the baseline's (0 without a baseline).
    pub improvement_factor: f64,
    pub objects_completed: u64,
    pub objects_failed: u64,
    /// Objects moved to another prefix after a failure or a drain.
    pub objects_moved: u64,
    pub drained_prefixes: usize,
    pub bytes: u64,
    pub elapsed_secs: f64,
    pub scheduling_decisions: u64,
    /// Mean time of one scheduling decision, microseconds.
    pub scheduling_time_us_mean: f64,
    /// Mean wait from asking for a lease to getting it, ms (pacing and back-pressure included).
    pub grant_wait_ms_mean: f64,
    /// Mean time a queued object waited before it started, ms (pacing and back-pressure
    /// included).
    pub queue_wait_ms_mean: f64,
    /// Mean time per object, ms.
    pub object_latency_ms_mean: f64,
    pub baseline: Option<PerformanceBaseline>,
}

/// Collects coordination events.
#[derive(Debug, Default)]
pub struct MetricsCollector {
    started: Option<Instant>,
    last: Option<Instant>,
    bytes: u64,
    completed: u64,
    failed: u64,
    moved: u64,
    object_secs: f64,
    busy: Duration,
    decisions: u64,
    decision_time: Duration,
    waits: u64,
    wait_time: Duration,
    queue_waits: u64,
    queue_wait_time: Duration,
    in_flight: usize,
    capacity: usize,
    in_flight_integral: f64,
    capacity_integral: f64,
    per_prefix: HashMap<String, u64>,
    baseline: Option<PerformanceBaseline>,
}

impl MetricsCollector {
    pub fn set_baseline(&mut self, b: PerformanceBaseline) {
        self.baseline = Some(b);
    }

    fn advance(&mut self, now: Instant) {
        self.started.get_or_insert(now);
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.in_flight_integral += dt * self.in_flight as f64;
            self.capacity_integral += dt * self.capacity as f64;
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Objects in flight and allowed in flight changed.
    pub fn on_load(&mut self, now: Instant, in_flight: usize, capacity: usize) {
        self.advance(now);
        self.in_flight = in_flight;
        self.capacity = capacity;
    }

    /// A scheduling decision (or other coordinator work) took `took`.
    pub fn on_decision(&mut self, took: Duration) {
        self.decisions += 1;
        self.decision_time += took;
        self.busy += took;
    }

    /// Coordinator work that is not a decision (sample processing, releases).
    pub fn on_work(&mut self, took: Duration) {
        self.busy += took;
    }

    /// A slot was granted after waiting `waited`.
    pub fn on_grant(&mut self, waited: Duration) {
        self.waits += 1;
        self.wait_time += waited;
    }

    /// A queued object started after waiting `waited` in its queue.
    pub fn on_dequeue(&mut self, waited: Duration) {
        self.queue_waits += 1;
        self.queue_wait_time += waited;
    }

    /// An object finished under `prefix`.
    pub fn on_object(&mut self, now: Instant, prefix: &str, bytes: u64, secs: f64, ok: bool) {
        self.advance(now);
        if ok {
            self.completed += 1;
            self.bytes += bytes;
            self.object_secs += secs;
            *self.per_prefix.entry(prefix.to_owned()).or_default() += bytes;
        }
    }

    /// An object failed for good.
    pub fn on_failed(&mut self) {
        self.failed += 1;
    }

    /// An object was moved to another prefix.
    pub fn on_moved(&mut self) {
        self.moved += 1;
    }

    /// The metrics as of `now`, over the given healthy prefixes.
    pub fn snapshot(
        &self,
        now: Instant,
        healthy: &[&str],
        drained: usize,
        congestion_events: u64,
        adaptations: u64,
    ) -> CoordinationMetrics {
        let elapsed = self.started.map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        let extra = self.last.map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        let in_flight = self.in_flight_integral + extra * self.in_flight as f64;
        let capacity = self.capacity_integral + extra * self.capacity as f64;
        let loads: Vec<f64> = healthy.iter().map(|p| self.per_prefix.get(*p).copied().unwrap_or(0) as f64).collect();
        let balance = if loads.is_empty() {
            0.0
        } else {
            let mean = loads.iter().sum::<f64>() / loads.len() as f64;
            if mean <= 0.0 {
                0.0
            } else {
                let var = loads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / loads.len() as f64;
                (1.0 - var.sqrt() / mean).clamp(0.0, 1.0)
            }
        };
        let throughput = if elapsed > 0.0 { self.bytes as f64 / elapsed / 1e6 } else { 0.0 };
        let latency = if self.completed > 0 { self.object_secs / self.completed as f64 * 1e3 } else { 0.0 };
        let (gain, factor, lat_red) = match self.baseline {
            Some(b) if b.throughput_mbps > 0.0 => (
                (throughput / b.throughput_mbps - 1.0) * 100.0,
                throughput / b.throughput_mbps,
                if b.latency_ms > 0.0 && latency > 0.0 { (b.latency_ms - latency) / b.latency_ms * 100.0 } else { 0.0 },
            ),
            _ => (0.0, 0.0, 0.0),
        };
        CoordinationMetrics {
            coordination_overhead_percent: if elapsed > 0.0 { self.busy.as_secs_f64() / elapsed * 100.0 } else { 0.0 },
            load_balance_efficiency: balance,
            pipeline_utilization: if capacity > 0.0 { (in_flight / capacity).min(1.0) } else { 0.0 },
            global_throughput_mbps: throughput,
            coordination_efficiency_gain: gain,
            latency_reduction: lat_red,
            active_prefixes: healthy.len(),
            congestion_events,
            adaptation_rate: if elapsed > 0.0 { adaptations as f64 / elapsed } else { 0.0 },
            improvement_factor: factor,
            objects_completed: self.completed,
            objects_failed: self.failed,
            objects_moved: self.moved,
            drained_prefixes: drained,
            bytes: self.bytes,
            elapsed_secs: elapsed,
            scheduling_decisions: self.decisions,
            scheduling_time_us_mean: if self.decisions > 0 {
                self.decision_time.as_secs_f64() / self.decisions as f64 * 1e6
            } else {
                0.0
            },
            grant_wait_ms_mean: if self.waits > 0 {
                self.wait_time.as_secs_f64() / self.waits as f64 * 1e3
            } else {
                0.0
            },
            queue_wait_ms_mean: if self.queue_waits > 0 {
                self.queue_wait_time.as_secs_f64() / self.queue_waits as f64 * 1e3
            } else {
                0.0
            },
            object_latency_ms_mean: latency,
            baseline: self.baseline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_come_from_the_events_fed_in() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = MetricsCollector::default();
        m.set_baseline(PerformanceBaseline { throughput_mbps: 1.0, latency_ms: 1000.0, ..Default::default() });
        m.on_load(s(0), 2, 4);
        m.on_decision(Duration::from_millis(10));
        m.on_grant(Duration::from_millis(30));
        m.on_object(s(500), "a/", 1_000_000, 0.5, true);
        m.on_load(s(500), 4, 4);
        m.on_object(s(1000), "b/", 1_000_000, 0.5, true);
        m.on_failed();
        let snap = m.snapshot(s(1000), &["a/", "b/"], 1, 3, 6);
        assert!((snap.global_throughput_mbps - 2.0).abs() < 1e-9);
        assert!((snap.improvement_factor - 2.0).abs() < 1e-9);
        assert!((snap.coordination_efficiency_gain - 100.0).abs() < 1e-9);
        assert!((snap.latency_reduction - 50.0).abs() < 1e-9);
        assert!((snap.pipeline_utilization - 0.75).abs() < 1e-9, "{}", snap.pipeline_utilization);
        assert!((snap.coordination_overhead_percent - 1.0).abs() < 1e-9);
        assert_eq!(snap.load_balance_efficiency, 1.0);
        assert_eq!((snap.objects_completed, snap.objects_failed, snap.congestion_events), (2, 1, 3));
        assert!((snap.adaptation_rate - 6.0).abs() < 1e-9);
        assert!((snap.grant_wait_ms_mean - 30.0).abs() < 1e-9);
        let uneven = m.snapshot(s(1000), &["a/", "b/", "c/"], 0, 0, 0);
        assert!(uneven.load_balance_efficiency < 0.5);
    }

    #[test]
    fn a_baseline_is_measured_from_totals() {
        let b = PerformanceBaseline::measured(10_000_000, Duration::from_secs(2), 10, 5.0, 1, 100, 10);
        assert!((b.throughput_mbps - 5.0).abs() < 1e-9);
        assert!((b.latency_ms - 500.0).abs() < 1e-9);
        assert!((b.error_rate - 0.1).abs() < 1e-9);
        assert!((b.efficiency_rating - 0.81).abs() < 1e-9);
    }
}
