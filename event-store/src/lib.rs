//! event-store: a generic event store on PostgreSQL.
//!
//! It stores JSON events and knows nothing of the business domain. The major components:
//!
//! - [`append`]: [`commit`] and [`append_in_tx`] write events for one or several aggregates in
//!   one transaction, together with their outbox rows and an optional idempotency record.
//! - [`read`]: [`load_stream`] (one aggregate), [`read_log`] (the global log) and
//!   [`head_position`].
//! - [`hash`]: the per-aggregate hash chain and its exact byte layout, for auditors.
//! - [`verify`]: [`verify_aggregate`] and [`verify_all`] recompute every hash.
//! - [`outbox`]: what a relay still has to publish.
//! - [`idempotency`]: stored answers to commands already run.
//!
//! Invariants, written as absences:
//! - No gap in `events.position`, and no event becomes visible after an event with a higher
//!   position: a reader following `position > last_seen` never skips one
//!   (docs/adr/0002-gap-safe-global-order.md).
//! - No gap in an aggregate's `sequence`, and no two events with the same one.
//! - No event without its outbox row, and no idempotency record without the events of its
//!   command: they commit together or not at all.
//! - No `UPDATE` or `DELETE` of events here, apart from tests that prove tampering is detected.

pub mod append;
pub mod hash;
pub mod idempotency;
pub mod model;
pub mod outbox;
pub mod read;
pub mod verify;

pub use append::{AppendError, append_in_tx, commit};
pub use hash::{Hash, ZERO_HASH};
pub use idempotency::lookup_idempotency;
pub use model::{
    Commit, Committed, EventMetadata, IdempotencyRecord, NewEvent, StoredEvent, StoredIdempotency, StreamAppend,
};
pub use outbox::{mark_published, read_unpublished};
pub use read::{head_position, load_stream, read_log};
pub use verify::{Break, EventRef, VerifyReport, verify_aggregate, verify_all};

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

/// The schema, embedded from `event-store/migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Brings the database schema up to date.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
