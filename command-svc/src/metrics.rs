//! Prometheus metrics, hand-written (a few atomics; no registry crate needed).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the command latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub replayed: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub events_appended: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    pub fn observe_latency_micros(&self, micros: u64) {
        let secs = micros as f64 / 1e6;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let _ = writeln!(out, "# HELP dscm_commands_total Commands by outcome.");
        let _ = writeln!(out, "# TYPE dscm_commands_total counter");
        for (outcome, c) in [
            ("accepted", &self.accepted),
            ("refused", &self.refused),
            ("replayed", &self.replayed),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(out, "dscm_commands_total{{outcome=\"{outcome}\"}} {}", get(c));
        }
        let _ = writeln!(out, "# HELP dscm_command_retries_total Units of work retried after a concurrency conflict.");
        let _ = writeln!(out, "# TYPE dscm_command_retries_total counter");
        let _ = writeln!(out, "dscm_command_retries_total {}", get(&self.retries));
        let _ = writeln!(out, "# HELP dscm_events_appended_total Events committed to the log.");
        let _ = writeln!(out, "# TYPE dscm_events_appended_total counter");
        let _ = writeln!(out, "dscm_events_appended_total {}", get(&self.events_appended));
        let _ = writeln!(out, "# HELP dscm_command_duration_seconds Time to decide and commit a command.");
        let _ = writeln!(out, "# TYPE dscm_command_duration_seconds histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "dscm_command_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                get(&self.latency_buckets[i])
            );
        }
        let count = get(&self.latency_count);
        let _ = writeln!(out, "dscm_command_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "dscm_command_duration_seconds_sum {}", get(&self.latency_sum_micros) as f64 / 1e6);
        let _ = writeln!(out, "dscm_command_duration_seconds_count {count}");
        out
    }
}
