//! Appending: one transaction writes the events of one or several aggregates, their outbox rows
//! and an optional idempotency record, all or nothing.
//!
//! Inside the transaction, in this order:
//! 1. the idempotency record, first, so a concurrent duplicate waits on its primary key and then
//!    fails with [`AppendError::DuplicateIdempotencyKey`];
//! 2. (only if a payload has non-integer numbers) a round trip through `jsonb`, so the hash covers
//!    exactly what is stored;
//! 3. one read of each aggregate's last event: its sequence must be the caller's
//!    `expected_sequence`, and its hash becomes the new events' `prev_hash`;
//! 4. one statement that takes positions from `event_log_head`, inserts the events (one multi-row
//!    insert) and their outbox rows. Taking positions is the last thing the transaction does
//!    before `COMMIT`: the head row stays locked until then, so positions are handed out in
//!    commit order and without gaps (docs/adr/0002-gap-safe-global-order.md).
//!
//! A writer that raced us to the same aggregate makes step 4 fail on the unique key
//! `events_aggregate_sequence_key`, which becomes [`AppendError::Conflict`]; no other unique
//! violation does.

use std::collections::HashSet;

use serde_json::Value;
use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::hash::{Hash, HashInput, ZERO_HASH, event_hash, normalize_for_jsonb};
use crate::model::{Commit, Committed, StoredEvent, StreamAppend};
use uuid::Uuid;

/// The most events one commit may carry; a bound on the statement and on the head lock's hold
/// time.
pub const COMMIT_EVENTS_MAX: usize = 10_000;

/// The most aggregates one commit may touch.
pub const COMMIT_STREAMS_MAX: usize = 1_000;

/// The latest `recorded_at` accepted, 2^53 microseconds (year 2255): up to there the SQL
/// conversion `TIMESTAMPTZ 'epoch' + micros * INTERVAL '1 microsecond'`, which goes through a
/// `float8`, is exact.
pub const RECORDED_AT_MAX_UNIX_MICROS: i64 = 1 << 53;

const EVENTS_SEQUENCE_KEY: &str = "events_aggregate_sequence_key";
const IDEMPOTENCY_KEY: &str = "idempotency_pkey";
const UNIQUE_VIOLATION: &str = "23505";

/// Why a commit wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another commit appended to this aggregate since the caller read it: reload and retry.
    #[error("conflict on {aggregate_type} {aggregate_id}: sequence {expected} is no longer its last event")]
    Conflict { aggregate_type: String, aggregate_id: String, expected: i64 },
    /// A commit with this idempotency key exists (or committed while this one waited): return
    /// the stored answer ([`crate::lookup_idempotency`]).
    #[error("idempotency key {key:?} in scope {scope:?} is already used")]
    DuplicateIdempotencyKey { scope: String, key: String },
    /// The commit breaks a rule of the API (empty, too large, an aggregate twice...).
    #[error("invalid commit: {0}")]
    InvalidCommit(String),
    #[error("event store database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for AppendError {
    fn from(error: sqlx::Error) -> Self {
        AppendError::Database(error)
    }
}

/// Appends `commit` in its own READ COMMITTED transaction and commits it.
pub async fn commit(pool: &PgPool, commit: Commit) -> Result<Committed, AppendError> {
    // Explicit, so a changed server default cannot make the head update fail with
    // serialization errors under REPEATABLE READ.
    let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
    let committed = append_in_tx(&mut tx, commit).await?;
    tx.commit().await?;
    Ok(committed)
}

/// Appends `commit` inside the caller's transaction, so the caller can add its own rows to it.
///
/// - Do your own writes *before* calling this, and commit right after it returns: from the
///   moment positions are taken, every other appender waits for this transaction to end.
/// - The transaction must be READ COMMITTED (PostgreSQL's default). Under REPEATABLE READ or
///   SERIALIZABLE, concurrent commits fail with serialization errors instead.
/// - On `Err`, roll the transaction back (drop it): some of the commit may already be written
///   in it, e.g. the idempotency record.
pub async fn append_in_tx(tx: &mut Transaction<'_, Postgres>, commit: Commit) -> Result<Committed, AppendError> {
    validate(&commit)?;
    let Commit { streams, metadata, recorded_at_unix_micros, idempotency } = commit;

    if let Some(record) = &idempotency {
        let inserted = sqlx::query(
            "INSERT INTO idempotency
                 (scope, key, request_hash, response_status, response_body, created_at)
             VALUES ($1, $2, $3, $4, $5, TIMESTAMPTZ 'epoch' + $6::bigint * INTERVAL '1 microsecond')",
        )
        .bind(&record.scope)
        .bind(&record.key)
        .bind(&record.request_hash)
        .bind(i32::from(record.response_status))
        .bind(&record.response_body)
        .bind(recorded_at_unix_micros)
        .execute(&mut **tx)
        .await;
        if let Err(error) = inserted {
            return Err(if is_unique_violation(&error, IDEMPOTENCY_KEY) {
                AppendError::DuplicateIdempotencyKey { scope: record.scope.clone(), key: record.key.clone() }
            } else {
                AppendError::Database(error)
            });
        }
    }

    let metadata_value = serde_json::to_value(&metadata)
        .map_err(|e| AppendError::InvalidCommit(format!("metadata is not JSON: {e}")))?;
    let (payloads, metadata_value) = as_stored_in_jsonb(tx, &streams, metadata_value).await?;
    let last_hashes = last_hashes(tx, &streams).await?;
    let stream_keys: Vec<(String, String, i64)> = streams
        .iter()
        .map(|s| {
            let (t, id) = (s.aggregate_type.clone(), s.aggregate_id.clone());
            (t, id, s.expected_sequence)
        })
        .collect();

    // Sequences and hashes, in position order; positions are filled in once taken.
    let mut events: Vec<StoredEvent> = Vec::with_capacity(payloads.len());
    let mut payloads = payloads.into_iter();
    for (stream, mut prev_hash) in streams.into_iter().zip(last_hashes) {
        for (offset, event) in (1_i64..).zip(stream.events) {
            let payload = payloads.next().unwrap_or(Value::Null);
            let sequence = stream.expected_sequence + offset;
            let hash = event_hash(&HashInput {
                aggregate_type: &stream.aggregate_type,
                aggregate_id: &stream.aggregate_id,
                sequence,
                event_id: event.event_id,
                event_type: &event.event_type,
                event_version: event.event_version,
                recorded_at_unix_micros,
                payload: &payload,
                metadata: &metadata_value,
                prev_hash: &prev_hash,
            });
            events.push(StoredEvent {
                position: 0,
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                sequence,
                event_id: event.event_id,
                event_type: event.event_type,
                event_version: event.event_version,
                payload,
                metadata: metadata.clone(),
                recorded_at_unix_micros,
                prev_hash,
                hash,
            });
            prev_hash = hash;
        }
    }

    let count = i64::try_from(events.len()).map_err(|_| AppendError::InvalidCommit("too many events".to_owned()))?;
    let column = |f: fn(&StoredEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    let appended = sqlx::query(
        "WITH head AS (
             UPDATE event_log_head SET position = position + $1::bigint WHERE id
             RETURNING position
         ), new_events AS (
             INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_id,
                                 event_type, event_version, payload, metadata, recorded_at,
                                 prev_hash, hash)
             SELECT head.position - $1::bigint + e.ord, e.aggregate_type, e.aggregate_id,
                    e.sequence, e.event_id, e.event_type, e.event_version, e.payload,
                    $11::jsonb, TIMESTAMPTZ 'epoch' + $12::bigint * INTERVAL '1 microsecond',
                    e.prev_hash, e.hash
             FROM head
             CROSS JOIN UNNEST($2::text[], $3::text[], $4::bigint[], $5::uuid[], $6::text[],
                               $7::int[], $8::jsonb[], $9::bytea[], $10::bytea[])
                  WITH ORDINALITY AS e(aggregate_type, aggregate_id, sequence, event_id,
                                       event_type, event_version, payload, prev_hash, hash, ord)
             RETURNING position, aggregate_type, aggregate_id
         ), new_outbox AS (
             INSERT INTO outbox (position, aggregate_type, aggregate_id)
             SELECT position, aggregate_type, aggregate_id FROM new_events
         )
         SELECT position FROM head",
    )
    .bind(count)
    .bind(column(|e| &e.aggregate_type))
    .bind(column(|e| &e.aggregate_id))
    .bind(events.iter().map(|e| e.sequence).collect::<Vec<i64>>())
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<Uuid>>())
    .bind(column(|e| &e.event_type))
    .bind(events.iter().map(|e| e.event_version).collect::<Vec<i32>>())
    .bind(events.iter().map(|e| &e.payload).collect::<Vec<&Value>>())
    .bind(events.iter().map(|e| &e.prev_hash[..]).collect::<Vec<&[u8]>>())
    .bind(events.iter().map(|e| &e.hash[..]).collect::<Vec<&[u8]>>())
    .bind(&metadata_value)
    .bind(recorded_at_unix_micros)
    .fetch_one(&mut **tx)
    .await;

    let last_position: i64 = match appended {
        Ok(row) => row.try_get(0)?,
        Err(error) if is_unique_violation(&error, EVENTS_SEQUENCE_KEY) => {
            return Err(conflict_for(&error, &stream_keys));
        }
        Err(error) => return Err(AppendError::Database(error)),
    };

    for (position, event) in (last_position - count + 1..).zip(&mut events) {
        event.position = position;
    }
    Ok(Committed { events, last_position })
}

fn validate(commit: &Commit) -> Result<(), AppendError> {
    let invalid = |reason: String| Err(AppendError::InvalidCommit(reason));
    if commit.streams.is_empty() {
        return invalid("no streams".to_owned());
    }
    if commit.streams.len() > COMMIT_STREAMS_MAX {
        return invalid(format!("{} streams, at most {COMMIT_STREAMS_MAX}", commit.streams.len()));
    }
    if commit.event_count() > COMMIT_EVENTS_MAX {
        return invalid(format!("{} events, at most {COMMIT_EVENTS_MAX}", commit.event_count()));
    }
    if !(0..=RECORDED_AT_MAX_UNIX_MICROS).contains(&commit.recorded_at_unix_micros) {
        return invalid(format!("recorded_at {} is out of range", commit.recorded_at_unix_micros));
    }
    let mut seen = HashSet::with_capacity(commit.streams.len());
    for stream in &commit.streams {
        let name = || format!("{} {}", stream.aggregate_type, stream.aggregate_id);
        if !seen.insert((&stream.aggregate_type, &stream.aggregate_id)) {
            return invalid(format!("{} appears twice", name()));
        }
        if stream.events.is_empty() {
            return invalid(format!("{} has no events", name()));
        }
        if stream.expected_sequence < 0 {
            return invalid(format!("{} expects a negative sequence", name()));
        }
        if stream.expected_sequence == 0 && stream.expected_last_hash.is_some_and(|h| h != ZERO_HASH) {
            return invalid(format!("{} is new but has an expected hash", name()));
        }
        if let Some(event) = stream.events.iter().find(|e| e.event_version < 1) {
            return invalid(format!("{} event {} has version {}", name(), event.event_id, event.event_version));
        }
    }
    Ok(())
}

/// The payloads (in position order) and the metadata as `jsonb` will store them.
async fn as_stored_in_jsonb(
    tx: &mut Transaction<'_, Postgres>,
    streams: &[StreamAppend],
    metadata: Value,
) -> Result<(Vec<Value>, Value), AppendError> {
    let mut values: Vec<Value> = streams.iter().flat_map(|s| s.events.iter().map(|e| e.payload.clone())).collect();
    if !normalize_for_jsonb(&metadata) && !values.iter().any(normalize_for_jsonb) {
        return Ok((values, metadata));
    }
    values.push(metadata);
    let mut stored: Vec<Value> =
        sqlx::query_scalar("SELECT v.value FROM UNNEST($1::jsonb[]) WITH ORDINALITY AS v(value, ord) ORDER BY v.ord")
            .bind(&values)
            .fetch_all(&mut **tx)
            .await?;
    if stored.len() != values.len() {
        return Err(AppendError::Database(sqlx::Error::Protocol(format!(
            "sent {} JSON values to normalise, got {} back",
            values.len(),
            stored.len()
        ))));
    }
    let metadata = stored.pop().unwrap_or(Value::Null);
    Ok((stored, metadata))
}

/// Each stream's last hash, after checking its last sequence is the expected one.
async fn last_hashes(tx: &mut Transaction<'_, Postgres>, streams: &[StreamAppend]) -> Result<Vec<Hash>, AppendError> {
    let types: Vec<&str> = streams.iter().map(|s| s.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = streams.iter().map(|s| s.aggregate_id.as_str()).collect();
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT last.sequence, last.hash
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS s(aggregate_type, aggregate_id, ord)
         LEFT JOIN LATERAL (
             SELECT e.sequence, e.hash FROM events e
             WHERE e.aggregate_type = s.aggregate_type AND e.aggregate_id = s.aggregate_id
             ORDER BY e.sequence DESC
             LIMIT 1
         ) AS last ON true
         ORDER BY s.ord",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;

    let mut hashes = Vec::with_capacity(streams.len());
    for (stream, row) in streams.iter().zip(&rows) {
        let sequence: Option<i64> = row.try_get(0)?;
        let hash: Option<Vec<u8>> = row.try_get(1)?;
        let last_hash = match hash {
            Some(bytes) => to_hash(bytes)?,
            None => ZERO_HASH,
        };
        let stale_hash = stream.expected_last_hash.is_some_and(|expected| expected != last_hash);
        if sequence.unwrap_or(0) != stream.expected_sequence || stale_hash {
            return Err(conflict(&stream.aggregate_type, &stream.aggregate_id, stream.expected_sequence));
        }
        hashes.push(last_hash);
    }
    if hashes.len() != streams.len() {
        return Err(AppendError::Database(sqlx::Error::Protocol(
            "last-event query returned fewer rows than streams".to_owned(),
        )));
    }
    Ok(hashes)
}

pub(crate) fn to_hash(bytes: Vec<u8>) -> Result<Hash, sqlx::Error> {
    Hash::try_from(bytes.as_slice())
        .map_err(|_| sqlx::Error::Decode(format!("a hash has {} bytes, not 32", bytes.len()).into()))
}

fn conflict(aggregate_type: &str, aggregate_id: &str, expected: i64) -> AppendError {
    AppendError::Conflict { aggregate_type: aggregate_type.to_owned(), aggregate_id: aggregate_id.to_owned(), expected }
}

/// The conflict for the stream named in PostgreSQL's message
/// `Key (aggregate_type, aggregate_id, sequence)=(job, 42, 7) already exists.`, or for the first
/// stream if the message names none of them.
fn conflict_for(error: &sqlx::Error, streams: &[(String, String, i64)]) -> AppendError {
    let detail = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<PgDatabaseError>())
        .and_then(PgDatabaseError::detail)
        .unwrap_or_default();
    let named = streams.iter().find(|(t, id, _)| detail.contains(&format!("=({t}, {id}, ")));
    match named.or(streams.first()) {
        Some((t, id, expected)) => conflict(t, id, *expected),
        None => AppendError::InvalidCommit("no streams".to_owned()),
    }
}

fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.code().as_deref() == Some(UNIQUE_VIOLATION) && e.constraint() == Some(constraint))
}
