//! Helpers shared by the integration tests: building commits, counting rows, and waiting (with a
//! deadline) until a transaction is blocked on a lock.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::{Duration, Instant};

use event_store::{Commit, EventMetadata, NewEvent, StreamAppend};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// 2025-11-26T10:00:34.567891Z: odd microseconds, to catch any loss of precision.
pub(crate) const RECORDED_AT_UNIX_MICROS: i64 = 1_764_151_234_567_891;

/// How long a test waits for a state before it fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn metadata() -> EventMetadata {
    EventMetadata {
        actor: "user:alice".to_owned(),
        command_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    }
}

pub(crate) fn event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent { event_id: Uuid::new_v4(), event_type: event_type.to_owned(), event_version: 1, payload }
}

/// `count` events `Noted { n }` for one aggregate of type `job`.
pub(crate) fn stream(aggregate_id: &str, expected_sequence: i64, count: usize) -> StreamAppend {
    StreamAppend {
        aggregate_type: "job".to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        expected_sequence,
        expected_last_hash: None,
        events: (0..count).map(|n| event("Noted", json!({ "n": n }))).collect(),
    }
}

pub(crate) fn commit_of(streams: Vec<StreamAppend>) -> Commit {
    Commit { streams, metadata: metadata(), recorded_at_unix_micros: RECORDED_AT_UNIX_MICROS, idempotency: None }
}

/// Row counts of the store's tables.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) events: i64,
    pub(crate) outbox: i64,
    pub(crate) idempotency: i64,
    pub(crate) head: i64,
}

pub(crate) async fn counts(pool: &PgPool) -> Counts {
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM outbox),
                (SELECT count(*) FROM idempotency), (SELECT position FROM event_log_head)",
    )
    .fetch_one(pool)
    .await
    .expect("count rows");
    Counts { events: row.0, outbox: row.1, idempotency: row.2, head: row.3 }
}

/// Waits until `waiters` sessions of this database are blocked on a lock.
pub(crate) async fn wait_for_lock_waiters(pool: &PgPool, waiters: i64) {
    let started = Instant::now();
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("read pg_stat_activity");
        if blocked >= waiters {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "no {waiters} blocked session(s) after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
