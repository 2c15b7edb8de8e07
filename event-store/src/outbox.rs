//! The outbox: one row per event, written in the event's transaction, marked once a relay has
//! published the event (to Kafka, later). At-least-once: a relay that crashes between publishing
//! and marking publishes again, so consumers dedupe by `event_id`.

use sqlx::PgExecutor;
use sqlx::postgres::PgRow;

use crate::model::StoredEvent;
use crate::read::{event_columns, stored_event};

/// At most `limit` events not yet published, in position order.
pub async fn read_unpublished<'e>(executor: impl PgExecutor<'e>, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query(concat!(
        "SELECT ",
        event_columns!(),
        " FROM outbox JOIN events ON events.position = outbox.position
          WHERE outbox.published_at IS NULL
          ORDER BY outbox.position
          LIMIT $1"
    ))
    .bind(limit)
    .try_map(|row: PgRow| stored_event(&row))
    .fetch_all(executor)
    .await
}

/// Marks these positions published now; returns how many were not marked before.
pub async fn mark_published<'e>(executor: impl PgExecutor<'e>, positions: &[i64]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET published_at = now()
         WHERE position = ANY($1::bigint[]) AND published_at IS NULL",
    )
    .bind(positions)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}
