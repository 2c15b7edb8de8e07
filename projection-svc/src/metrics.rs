//! Counters of the projector and the consumer, rendered in the Prometheus text format together
//! with the watermark and the event store's head read at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::project::BatchOutcome;

#[derive(Debug, Default)]
pub struct Metrics {
    batches: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    refolds: AtomicU64,
    malformed: AtomicU64,
    batch_failures: AtomicU64,
    kafka_commit_failures: AtomicU64,
    unresolved_gaps: AtomicU64,
    repaired: AtomicU64,
    watermark: AtomicI64,
}

impl Metrics {
    pub fn record_batch(&self, outcome: &BatchOutcome) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.applied.fetch_add(outcome.applied as u64, Ordering::Relaxed);
        self.duplicates.fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
        self.gaps.fetch_add(outcome.gaps.len() as u64, Ordering::Relaxed);
        self.watermark.fetch_max(outcome.watermark, Ordering::Relaxed);
    }

    pub fn add_refolds(&self, n: u64) {
        self.refolds.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_batch_failure(&self) {
        self.batch_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_kafka_commit_failure(&self) {
        self.kafka_commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Events the repair pass applied from the event store (Kafka had not delivered them).
    pub fn add_repaired(&self, n: u64) {
        self.repaired.fetch_add(n, Ordering::Relaxed);
    }

    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    pub fn set_unresolved_gaps(&self, n: usize) {
        self.unresolved_gaps.store(n as u64, Ordering::Relaxed);
    }

    /// Events applied (not counting copies and gaps).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Gap detections (an event re-delivered while still early counts again).
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn unresolved_gaps(&self) -> u64 {
        self.unresolved_gaps.load(Ordering::Relaxed)
    }

    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition; `watermark` and `head` are read from PostgreSQL by the
    /// caller (`None` when the database did not answer).
    pub fn render(&self, watermark_and_head: Option<(i64, i64)>) -> String {
        let counter = |name: &str, help: &str, value: u64| {
            format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n")
        };
        let gauge =
            |name: &str, help: &str, value: i64| format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut text = String::new();
        text += &counter("dscm_projection_batches_total", "Batches applied.", load(&self.batches));
        text +=
            &counter("dscm_projection_events_applied_total", "Events applied to the read models.", load(&self.applied));
        text +=
            &counter("dscm_projection_duplicates_total", "Copies of applied events, dropped.", load(&self.duplicates));
        text +=
            &counter("dscm_projection_gaps_total", "Events that arrived before their predecessor.", load(&self.gaps));
        text += &counter("dscm_projection_refolds_total", "Aggregates refolded from rm_events.", load(&self.refolds));
        text += &counter(
            "dscm_projection_malformed_total",
            "Kafka messages that are not envelopes.",
            load(&self.malformed),
        );
        text += &counter(
            "dscm_projection_batch_failures_total",
            "Batches rolled back and retried.",
            load(&self.batch_failures),
        );
        text += &counter(
            "dscm_projection_kafka_commit_failures_total",
            "Offset commits to Kafka that failed (PostgreSQL holds the offsets).",
            load(&self.kafka_commit_failures),
        );
        text += &counter(
            "dscm_projection_repaired_total",
            "Events applied from the event store because Kafka had not delivered them in time.",
            load(&self.repaired),
        );
        text += &gauge(
            "dscm_projection_unresolved_gaps",
            "Gap events the consumer holds its offsets behind.",
            i64::try_from(load(&self.unresolved_gaps)).unwrap_or(i64::MAX),
        );
        if let Some((watermark, head)) = watermark_and_head {
            text += &gauge("dscm_projection_watermark", "Every position at or below this is applied.", watermark);
            text += &gauge("dscm_projection_head", "The event store's last position.", head);
            text += &gauge("dscm_projection_lag_events", "Head minus watermark.", (head - watermark).max(0));
        }
        text
    }
}
