//! Where the read models live: a versioned PostgreSQL schema `rm_v<N>` holding every read-model
//! table, and two tables in `public` that survive a rebuild.
//!
//! - `rm_active` (one row): the name of the schema the API and the consumer use. A replay builds
//!   `rm_v<N+1>` beside it and switches this row in the transaction that applies its last events
//!   (see [`crate::replay`]).
//! - `rm_offsets`: the consumer's next Kafka offset per (group, topic, partition), written in the
//!   same transaction as the read models. Kafka offsets do not depend on the schema, so they stay
//!   meaningful across a switch.
//!
//! Nothing here uses sqlx migrations: the public tables are created idempotently (a foreign row in
//! `_sqlx_migrations` would make command-svc's migrator refuse to run), and a read-model schema is
//! created whole by [`create_read_models`], tagged with [`LAYOUT_VERSION`].

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// The layout of the read-model tables. Bump it when [`READ_MODEL_DDL`] changes: `serve` then
/// refuses to run on an older schema until `projection-svc replay` has built a new one.
pub const LAYOUT_VERSION: i32 = 1;

/// A fixed advisory lock key for creating the public tables ("dscmprjs").
const SETUP_LOCK_KEY: i64 = 0x6473_636d_7072_6a73;

/// The tables in `public`, created if missing.
const PUBLIC_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS rm_active (
    id             BOOLEAN     NOT NULL DEFAULT true CHECK (id),
    schema_name    TEXT        NOT NULL CHECK (schema_name ~ '^rm_v[0-9]{1,9}$'),
    layout_version INT         NOT NULL,
    activated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rm_active_pkey PRIMARY KEY (id)
);
CREATE TABLE IF NOT EXISTS rm_offsets (
    group_id    TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    partition   INT         NOT NULL CHECK (partition >= 0),
    -- The next offset to read: everything below it is applied (or was a duplicate).
    next_offset BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rm_offsets_pkey PRIMARY KEY (group_id, topic, partition)
);
"#;

/// Every read-model table, created in the schema first on the `search_path`.
pub const READ_MODEL_DDL: &str = r#"
-- Per stream: the last sequence applied. A copy (sequence <= last) is dropped; a jump is a gap.
CREATE TABLE rm_streams (
    aggregate_type TEXT   NOT NULL,
    aggregate_id   TEXT   NOT NULL,
    last_sequence  BIGINT NOT NULL CHECK (last_sequence > 0),
    last_position  BIGINT NOT NULL,
    CONSTRAINT rm_streams_pkey PRIMARY KEY (aggregate_type, aggregate_id)
);
-- Read-your-writes: every position <= this one is applied.
CREATE TABLE rm_watermark (
    id       BOOLEAN NOT NULL DEFAULT true CHECK (id),
    position BIGINT  NOT NULL CHECK (position >= 0),
    CONSTRAINT rm_watermark_pkey PRIMARY KEY (id)
);
INSERT INTO rm_watermark (id, position) VALUES (true, 0);
-- The event history (auditors), and the source aggregates are refolded from.
CREATE TABLE rm_events (
    position       BIGINT      NOT NULL,
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    sequence       BIGINT      NOT NULL,
    event_id       UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    event_version  INT         NOT NULL,
    payload        JSONB       NOT NULL,
    metadata       JSONB       NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    hash           TEXT        NOT NULL,
    prev_hash      TEXT        NOT NULL,
    CONSTRAINT rm_events_pkey PRIMARY KEY (position),
    CONSTRAINT rm_events_stream_key UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE rm_jobs (
    job_id              UUID    NOT NULL,
    client_id           UUID    NOT NULL,
    class               TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    currency            TEXT    NOT NULL,
    reward_minor_units  BIGINT  NOT NULL,
    budget_minor_units  BIGINT  NOT NULL,
    task_count          INT     NOT NULL,
    policy              JSONB   NOT NULL,
    workload_name       TEXT    NOT NULL,
    funded              BOOLEAN NOT NULL,
    posted_at_ms        BIGINT  NOT NULL,
    expires_at_ms       BIGINT  NOT NULL,
    window_closes_at_ms BIGINT  NULL,
    tasks_verified      INT     NOT NULL,
    open_challenges     INT     NOT NULL,
    open_disputes       INT     NOT NULL,
    workers             UUID[]  NOT NULL,
    tasks               JSONB   NOT NULL,
    posted_position     BIGINT  NOT NULL,
    updated_position    BIGINT  NOT NULL,
    CONSTRAINT rm_jobs_pkey PRIMARY KEY (job_id)
);
CREATE INDEX rm_jobs_posted_idx ON rm_jobs (posted_position);
CREATE INDEX rm_jobs_client_idx ON rm_jobs (client_id, posted_position);
CREATE INDEX rm_jobs_workers_idx ON rm_jobs USING gin (workers);
-- The task board: one row per round (original or re-execution) that has or will soon have a
-- claimable slot. Time-dependent rules (job expiry, slot cooldown) are applied when reading.
CREATE TABLE rm_open_tasks (
    job_id                 UUID    NOT NULL,
    task                   INT     NOT NULL,
    reexecution            BOOLEAN NOT NULL,
    client_id              UUID    NOT NULL,
    class                  TEXT    NOT NULL,
    currency               TEXT    NOT NULL,
    reward_minor_units     BIGINT  NOT NULL,
    collateral_minor_units BIGINT  NOT NULL,
    free_slots             INT     NOT NULL,
    cooling_slots          INT     NOT NULL,
    -- The earliest a cooling slot may be claimed again; NULL when none cools.
    cooling_until_ms       BIGINT  NULL,
    -- NULL for a re-execution round (it may run past the job's deadline).
    expires_at_ms          BIGINT  NULL,
    participants           UUID[]  NOT NULL,
    posted_position        BIGINT  NOT NULL,
    CONSTRAINT rm_open_tasks_pkey PRIMARY KEY (job_id, task, reexecution)
);
CREATE INDEX rm_open_tasks_order_idx ON rm_open_tasks (posted_position, task);
-- Ledger balances folded from every event's postings (domain::ledger).
CREATE TABLE rm_balances (
    account          TEXT   NOT NULL,
    currency         TEXT   NOT NULL,
    kind             TEXT   NOT NULL,
    party_id         UUID   NULL,
    job_id           UUID   NULL,
    balance          BIGINT NOT NULL,
    updated_position BIGINT NOT NULL,
    CONSTRAINT rm_balances_pkey PRIMARY KEY (account, currency)
);
CREATE INDEX rm_balances_party_idx ON rm_balances (party_id) WHERE party_id IS NOT NULL;
CREATE TABLE rm_challenges (
    challenge_id       UUID   NOT NULL,
    job_id             UUID   NOT NULL,
    task               INT    NOT NULL,
    challenger_id      UUID   NOT NULL,
    bond_minor_units   BIGINT NOT NULL,
    currency           TEXT   NOT NULL,
    reason             TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    dispute_id         UUID   NULL,
    opened_at_ms       BIGINT NOT NULL,
    opened_position    BIGINT NOT NULL,
    updated_position   BIGINT NOT NULL,
    CONSTRAINT rm_challenges_pkey PRIMARY KEY (challenge_id)
);
CREATE INDEX rm_challenges_order_idx ON rm_challenges (opened_position);
CREATE TABLE rm_disputes (
    dispute_id       UUID   NOT NULL,
    job_id           UUID   NOT NULL,
    task             INT    NOT NULL,
    client_id        UUID   NOT NULL,
    workers          UUID[] NOT NULL,
    reason           TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    deadline_ms      BIGINT NULL,
    arbiter_id       UUID   NULL,
    resolved_by      UUID   NULL,
    outcome          JSONB  NULL,
    appealed_by      UUID   NULL,
    opened_at_ms     BIGINT NOT NULL,
    opened_position  BIGINT NOT NULL,
    updated_position BIGINT NOT NULL,
    CONSTRAINT rm_disputes_pkey PRIMARY KEY (dispute_id)
);
CREATE INDEX rm_disputes_order_idx ON rm_disputes (opened_position);
CREATE TABLE rm_reputation (
    worker_id         UUID   NOT NULL,
    score             BIGINT NOT NULL,
    consecutive_valid BIGINT NOT NULL,
    results           BIGINT NOT NULL,
    updated_position  BIGINT NOT NULL,
    CONSTRAINT rm_reputation_pkey PRIMARY KEY (worker_id)
);
CREATE TABLE rm_payouts (
    payout_id          UUID   NOT NULL,
    party_id           UUID   NOT NULL,
    amount_minor_units BIGINT NOT NULL,
    currency           TEXT   NOT NULL,
    provider           TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    provider_ref       TEXT   NULL,
    failure_reason     TEXT   NULL,
    requested_at_ms    BIGINT NOT NULL,
    requested_position BIGINT NOT NULL,
    updated_position   BIGINT NOT NULL,
    CONSTRAINT rm_payouts_pkey PRIMARY KEY (payout_id)
);
CREATE INDEX rm_payouts_order_idx ON rm_payouts (requested_position);
CREATE INDEX rm_payouts_party_idx ON rm_payouts (party_id, requested_position);
"#;

/// Every table of a read-model schema with the columns that order its rows uniquely, for
/// [`dump`] (tests compare a live projection with a replay row for row).
pub const READ_MODEL_TABLES: [(&str, &str); 10] = [
    ("rm_streams", "aggregate_type, aggregate_id"),
    ("rm_watermark", "id"),
    ("rm_events", "position"),
    ("rm_jobs", "job_id"),
    ("rm_open_tasks", "job_id, task, reexecution"),
    ("rm_balances", "account, currency"),
    ("rm_challenges", "challenge_id"),
    ("rm_disputes", "dispute_id"),
    ("rm_reputation", "worker_id"),
    ("rm_payouts", "payout_id"),
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("no active read-model schema: run `projection-svc serve` once or `projection-svc replay`")]
    NoActiveSchema,
    #[error("read-model schema {schema} has layout {found}, this build needs {expected}: run `projection-svc replay`")]
    Layout { schema: String, found: i32, expected: i32 },
    #[error("invalid read-model schema name {0:?}")]
    BadName(String),
}

/// The active schema, as `rm_active` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub schema: String,
    pub layout_version: i32,
}

/// `rm_v<N>`: the only names this crate creates or drops.
pub fn schema_name(version: u32) -> String {
    format!("rm_v{version}")
}

/// The `N` of `rm_v<N>`.
pub fn schema_version(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("rm_v")?;
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checked(name: &str) -> Result<&str, SchemaError> {
    schema_version(name).map(|_| name).ok_or_else(|| SchemaError::BadName(name.to_owned()))
}

/// Creates the public tables if missing and, when no schema is active yet, an empty `rm_v1`
/// and activates it. Safe to call from several processes at once.
pub async fn ensure(pool: &PgPool) -> Result<Active, SchemaError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SETUP_LOCK_KEY).execute(&mut *tx).await?;
    sqlx::raw_sql(PUBLIC_DDL).execute(&mut *tx).await?;
    let active = match active_in(&mut tx).await? {
        Some(active) => active,
        None => {
            let schema = schema_name(1);
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))).execute(&mut *tx).await?;
            create_read_models(&mut tx, &schema).await?;
            sqlx::query("INSERT INTO rm_active (id, schema_name, layout_version) VALUES (true, $1, $2)")
                .bind(&schema)
                .bind(LAYOUT_VERSION)
                .execute(&mut *tx)
                .await?;
            Active { schema, layout_version: LAYOUT_VERSION }
        }
    };
    tx.commit().await?;
    Ok(active)
}

/// The active schema, checked against this build's layout.
pub async fn active(pool: &PgPool) -> Result<Active, SchemaError> {
    let mut conn = pool.acquire().await?;
    let active = active_in(&mut conn).await?.ok_or(SchemaError::NoActiveSchema)?;
    check_layout(&active)?;
    Ok(active)
}

pub fn check_layout(active: &Active) -> Result<(), SchemaError> {
    if active.layout_version != LAYOUT_VERSION {
        return Err(SchemaError::Layout {
            schema: active.schema.clone(),
            found: active.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

async fn active_in(conn: &mut PgConnection) -> Result<Option<Active>, SchemaError> {
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT schema_name, layout_version FROM rm_active WHERE id").fetch_optional(&mut *conn).await?;
    Ok(row.map(|(schema, layout_version)| Active { schema, layout_version }))
}

/// Creates `schema` with every read-model table. The caller's transaction keeps its
/// `search_path` pointing at the new schema afterwards.
pub async fn create_read_models(tx: &mut Transaction<'_, Postgres>, schema: &str) -> Result<(), SchemaError> {
    let schema = checked(schema)?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&mut **tx).await?;
    use_schema(tx, schema).await?;
    sqlx::raw_sql(READ_MODEL_DDL).execute(&mut **tx).await?;
    Ok(())
}

/// Points the rest of the transaction at `schema` (then `public`, for `rm_offsets` and the
/// event store).
pub async fn use_schema(conn: &mut PgConnection, schema: &str) -> Result<(), SchemaError> {
    let schema = checked(schema)?;
    sqlx::query(AssertSqlSafe(format!("SET LOCAL search_path TO {schema}, public"))).execute(conn).await?;
    Ok(())
}

/// In a transaction: share-locks the `rm_active` row (a replay's switch waits for this
/// transaction, and this one for a switch in progress), points the transaction at the active
/// schema and returns it.
pub async fn lock_active(tx: &mut Transaction<'_, Postgres>) -> Result<Active, SchemaError> {
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT schema_name, layout_version FROM public.rm_active WHERE id FOR SHARE")
            .fetch_optional(&mut **tx)
            .await?;
    let (schema, layout_version) = row.ok_or(SchemaError::NoActiveSchema)?;
    let active = Active { schema, layout_version };
    check_layout(&active)?;
    use_schema(tx, &active.schema).await?;
    Ok(active)
}

/// In a transaction: points it at the active schema without locking anything (readers).
pub async fn read_active(tx: &mut Transaction<'_, Postgres>) -> Result<Active, SchemaError> {
    let active = active_in(tx).await?.ok_or(SchemaError::NoActiveSchema)?;
    check_layout(&active)?;
    use_schema(tx, &active.schema).await?;
    Ok(active)
}

/// Every `rm_v<N>` schema that exists, by version.
pub async fn existing_versions(pool: &PgPool) -> Result<Vec<u32>, SchemaError> {
    let names: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rm\\_v%'")
        .fetch_all(pool)
        .await?;
    let mut versions: Vec<u32> = names.iter().filter_map(|n| schema_version(n)).collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Every row of every read-model table of `schema`, as JSON text in a stable order.
pub async fn dump(pool: &PgPool, schema: &str) -> Result<BTreeMap<&'static str, Vec<String>>, SchemaError> {
    let schema = checked(schema)?;
    let mut out = BTreeMap::new();
    for (table, order) in READ_MODEL_TABLES {
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT to_jsonb(t)::text FROM {schema}.{table} t ORDER BY {order}"
        )))
        .fetch_all(pool)
        .await?;
        out.insert(table, rows);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rm_v_names_are_schema_names() {
        assert_eq!(schema_version("rm_v1"), Some(1));
        assert_eq!(schema_version(&schema_name(42)), Some(42));
        for bad in ["rm_v", "rm_v1; DROP TABLE x", "public", "rm_v-1", "rm_v1234567890"] {
            assert_eq!(schema_version(bad), None, "{bad}");
        }
    }
}
