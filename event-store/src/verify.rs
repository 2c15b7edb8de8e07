//! Verification: recompute every hash from the stored columns and walk the chains, reporting the
//! first broken link. [`verify_all`] also checks that positions run from 1 to the head without a
//! gap.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::append::to_hash;
use crate::hash::{Hash, HashInput, ZERO_HASH, event_hash};
use crate::read::{event_columns, head_position};

/// How many events [`verify_all`] reads per query.
pub const VERIFY_BATCH_SIZE: i64 = 1_000;

/// Where a break was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The stored hash is not the hash of the stored columns: the row was changed.
    HashMismatch { at: EventRef, stored: Hash, computed: Hash },
    /// `prev_hash` is not the stored hash of the aggregate's previous event (32 zero bytes for
    /// sequence 1).
    BrokenLink { at: EventRef },
    /// The aggregate's sequence skips or repeats: `expected` was due.
    SequenceGap { at: EventRef, expected: i64 },
    /// The global log skips a position: `expected` was due. `at` is the event found instead,
    /// `None` if the log ends before the head.
    PositionGap { expected: i64, at: Option<EventRef> },
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Events whose hash was recomputed, up to the first break.
    pub events_checked: u64,
    /// Aggregates seen, up to the first break.
    pub aggregates_checked: u64,
    /// The log's head when [`verify_all`] started; 0 for [`verify_aggregate`].
    pub head_position: i64,
    pub first_break: Option<Break>,
}

impl VerifyReport {
    /// No break found.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Verifies one aggregate's chain.
pub async fn verify_aggregate(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<VerifyReport, sqlx::Error> {
    let events: Vec<RawEvent> = sqlx::query(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .try_map(|row: PgRow| RawEvent::decode(&row))
    .fetch_all(pool)
    .await?;

    let mut report = VerifyReport { aggregates_checked: u64::from(!events.is_empty()), ..VerifyReport::default() };
    let mut last: Option<(i64, Hash)> = None;
    for event in &events {
        if let Some(found) = check(event, last) {
            report.first_break = Some(found);
            break;
        }
        report.events_checked += 1;
        last = Some((event.sequence, event.hash));
    }
    Ok(report)
}

/// Verifies every chain and the global order: positions 1, 2, ... up to the head, read at the
/// start (events committed later are not checked). Memory grows with the number of aggregates
/// (their last sequence and hash), not with the number of events.
pub async fn verify_all(pool: &PgPool) -> Result<VerifyReport, sqlx::Error> {
    let head = head_position(pool).await?;
    let mut report = VerifyReport { head_position: head, ..VerifyReport::default() };
    let mut last_of: HashMap<(String, String), (i64, Hash)> = HashMap::new();
    let mut expected_position = 1_i64;
    while expected_position <= head {
        let batch: Vec<RawEvent> = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE position >= $1 AND position <= $2 ORDER BY position LIMIT $3"
        ))
        .bind(expected_position)
        .bind(head)
        .bind(VERIFY_BATCH_SIZE)
        .try_map(|row: PgRow| RawEvent::decode(&row))
        .fetch_all(pool)
        .await?;
        if batch.is_empty() {
            break;
        }
        for event in batch {
            if event.position != expected_position {
                report.first_break = Some(Break::PositionGap { expected: expected_position, at: Some(event.at()) });
                return Ok(report);
            }
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let last = last_of.get(&key).copied();
            if let Some(found) = check(&event, last) {
                report.first_break = Some(found);
                return Ok(report);
            }
            if last.is_none() {
                report.aggregates_checked += 1;
            }
            last_of.insert(key, (event.sequence, event.hash));
            report.events_checked += 1;
            expected_position += 1;
        }
    }
    if expected_position <= head {
        report.first_break = Some(Break::PositionGap { expected: expected_position, at: None });
    }
    Ok(report)
}

/// Checks one event against the previous event of its aggregate (`None` for none).
fn check(event: &RawEvent, previous: Option<(i64, Hash)>) -> Option<Break> {
    let (previous_sequence, previous_hash) = previous.unwrap_or((0, ZERO_HASH));
    if event.sequence != previous_sequence + 1 {
        return Some(Break::SequenceGap { at: event.at(), expected: previous_sequence + 1 });
    }
    let computed = event_hash(&HashInput {
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence,
        event_id: event.event_id,
        event_type: &event.event_type,
        event_version: event.event_version,
        recorded_at_unix_micros: event.recorded_at_unix_micros,
        payload: &event.payload,
        metadata: &event.metadata,
        prev_hash: &event.prev_hash,
    });
    if computed != event.hash {
        return Some(Break::HashMismatch { at: event.at(), stored: event.hash, computed });
    }
    if event.prev_hash != previous_hash {
        return Some(Break::BrokenLink { at: event.at() });
    }
    None
}

/// A row as stored, metadata untyped: verification must not depend on today's metadata type.
struct RawEvent {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_id: Uuid,
    event_type: String,
    event_version: i32,
    payload: Value,
    metadata: Value,
    recorded_at_unix_micros: i64,
    prev_hash: Hash,
    hash: Hash,
}

impl RawEvent {
    fn decode(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(RawEvent {
            position: row.try_get(0)?,
            aggregate_type: row.try_get(1)?,
            aggregate_id: row.try_get(2)?,
            sequence: row.try_get(3)?,
            event_id: row.try_get(4)?,
            event_type: row.try_get(5)?,
            event_version: row.try_get(6)?,
            payload: row.try_get(7)?,
            metadata: row.try_get(8)?,
            recorded_at_unix_micros: row.try_get(9)?,
            prev_hash: to_hash(row.try_get(10)?)?,
            hash: to_hash(row.try_get(11)?)?,
        })
    }

    fn at(&self) -> EventRef {
        EventRef {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            position: self.position,
        }
    }
}
