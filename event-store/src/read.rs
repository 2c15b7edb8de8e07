//! Reading: one aggregate's stream, the global log in position order, and the log's head.
//!
//! A reader that follows the log with `read_log(after = last position seen)` sees every event
//! exactly once and in order, even while appends commit concurrently: positions are handed out
//! in commit order (docs/adr/0002-gap-safe-global-order.md).

use sqlx::PgExecutor;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::append::to_hash;
use crate::model::{EventMetadata, StoredEvent};

/// The columns of `events` in the order [`stored_event`] decodes them, `recorded_at` as unix
/// microseconds (exact: `EXTRACT` returns `numeric`).
macro_rules! event_columns {
    () => {
        "events.position, events.aggregate_type, events.aggregate_id, events.sequence, \
         events.event_id, events.event_type, events.event_version, events.payload, \
         events.metadata, (EXTRACT(EPOCH FROM events.recorded_at) * 1000000)::bigint, \
         events.prev_hash, events.hash"
    };
}
pub(crate) use event_columns;

/// The events of one aggregate with a sequence above `after_sequence`, in sequence order.
pub async fn load_stream<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: &str,
    after_sequence: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
          ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after_sequence)
    .try_map(|row: PgRow| stored_event(&row))
    .fetch_all(executor)
    .await
}

/// At most `limit` events with a position above `after_position`, in position order.
pub async fn read_log<'e>(
    executor: impl PgExecutor<'e>,
    after_position: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query(concat!("SELECT ", event_columns!(), " FROM events WHERE position > $1 ORDER BY position LIMIT $2"))
        .bind(after_position)
        .bind(limit)
        .try_map(|row: PgRow| stored_event(&row))
        .fetch_all(executor)
        .await
}

/// The position of the last committed event; 0 for an empty log.
pub async fn head_position<'e>(executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM event_log_head WHERE id").fetch_one(executor).await
}

/// Decodes a row selected with [`event_columns`].
pub(crate) fn stored_event(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    let metadata: serde_json::Value = row.try_get(8)?;
    let metadata: EventMetadata = serde_json::from_value(metadata)
        .map_err(|e| sqlx::Error::ColumnDecode { index: "metadata".to_owned(), source: Box::new(e) })?;
    Ok(StoredEvent {
        position: row.try_get(0)?,
        aggregate_type: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        sequence: row.try_get(3)?,
        event_id: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        payload: row.try_get(7)?,
        metadata,
        recorded_at_unix_micros: row.try_get(9)?,
        prev_hash: to_hash(row.try_get(10)?)?,
        hash: to_hash(row.try_get(11)?)?,
    })
}
