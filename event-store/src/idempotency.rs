//! Idempotency records: the stored answer to a command, written in the transaction of its events
//! (see [`crate::IdempotencyRecord`]). A service looks the key up before running a command and
//! replays the stored answer if it finds one.

use sqlx::PgExecutor;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::model::{IdempotencyRecord, StoredIdempotency};

/// The record stored under `(scope, key)`, if any.
pub async fn lookup_idempotency<'e>(
    executor: impl PgExecutor<'e>,
    scope: &str,
    key: &str,
) -> Result<Option<StoredIdempotency>, sqlx::Error> {
    sqlx::query(
        "SELECT scope, key, request_hash, response_status, response_body,
                (EXTRACT(EPOCH FROM created_at) * 1000000)::bigint
         FROM idempotency WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .try_map(|row: PgRow| {
        let status: i32 = row.try_get(3)?;
        let response_status = u16::try_from(status)
            .map_err(|e| sqlx::Error::ColumnDecode { index: "response_status".to_owned(), source: Box::new(e) })?;
        Ok(StoredIdempotency {
            record: IdempotencyRecord {
                scope: row.try_get(0)?,
                key: row.try_get(1)?,
                request_hash: row.try_get(2)?,
                response_status,
                response_body: row.try_get(4)?,
            },
            created_at_unix_micros: row.try_get(5)?,
        })
    })
    .fetch_optional(executor)
    .await
}
