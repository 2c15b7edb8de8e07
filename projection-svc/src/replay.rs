//! Rebuilding every read model from the event store (not Kafka) into a fresh schema, then
//! switching to it atomically.
//!
//! 1. One replay at a time (a session advisory lock on a connection of its own). Leftover
//!    schemas of an interrupted replay are dropped; the new one is `rm_v<max + 1>`.
//! 2. Pages of [`event_store::read_log`] are applied with the same
//!    [`Projector::apply_batch`] as the consumer, one transaction per page, while the old schema
//!    keeps answering. A progress bar (position / head, events/s) goes to stderr.
//! 3. The switch, in one transaction: lock the `rm_active` row `FOR UPDATE` (it waits for the
//!    consumer's batch in flight, and holds the next one), apply the rest of the log up to the
//!    head as it is now, point `rm_active` at the new schema, commit. Every event the consumer
//!    had applied to the old schema came from the store before that head, so the new schema has
//!    it too; after the switch the consumer keeps its Kafka offsets (`public.rm_offsets`), and
//!    what it receives again is dropped by the per-stream sequence dedupe.
//! 4. After a grace period for reads still running on the old schema, the old schema is dropped.

use std::io::Write as _;
use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::event::ProjectedEvent;
use crate::project::{BatchOutcome, ProjectError, Projector};
use crate::schema::{self, SchemaError};
use crate::settings::ReplaySettings;

/// Session advisory lock: one replay per database ("dscmrply").
const REPLAY_LOCK_KEY: i64 = 0x6473_636d_7270_6c79;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("another replay is running on this database")]
    AlreadyRunning,
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("the event store has a gap in stream {aggregate_type} {aggregate_id} at position {position}")]
    StoreGap { aggregate_type: String, aggregate_id: String, position: i64 },
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    pub schema: String,
    pub previous: String,
    /// Events applied (the whole log up to `head`).
    pub events: u64,
    /// The log's head when the switch happened: the new schema's watermark.
    pub head: i64,
    pub elapsed: Duration,
    pub events_per_sec: f64,
    /// Whether the previous schema was dropped after the grace period.
    pub dropped_previous: bool,
}

/// Rebuilds every read model from the event store and switches to it; see the module doc.
pub async fn replay(pool: &PgPool, settings: &ReplaySettings) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let page_size = settings.page_size.clamp(1, 100_000);
    schema::ensure(pool).await?;
    // A connection of its own: the session lock goes when it closes, whatever happens.
    let mut lock_conn = pool.connect_options().connect().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(REPLAY_LOCK_KEY).fetch_one(&mut lock_conn).await?;
    if !locked {
        return Err(ReplayError::AlreadyRunning);
    }
    let result = rebuild(pool, settings, page_size, started).await;
    let _ = lock_conn.close().await;
    result
}

async fn rebuild(
    pool: &PgPool,
    settings: &ReplaySettings,
    page_size: i64,
    started: Instant,
) -> Result<ReplayReport, ReplayError> {
    let previous = schema::active(pool).await.or_else(|e| match e {
        // An old layout is exactly what a replay is for.
        SchemaError::Layout { schema, found, .. } => Ok(schema::Active { schema, layout_version: found }),
        other => Err(other),
    })?;
    for version in schema::existing_versions(pool).await? {
        let name = schema::schema_name(version);
        if name != previous.schema {
            tracing::warn!(schema = %name, "dropping a read-model schema left by an interrupted replay");
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))).execute(pool).await?;
        }
    }
    let next_version = schema::schema_version(&previous.schema).unwrap_or(0).saturating_add(1);
    let target = schema::schema_name(next_version);
    let mut tx = pool.begin().await?;
    schema::create_read_models(&mut tx, &target).await?;
    tx.commit().await?;

    let mut projector = Projector::default();
    let mut progress = Progress::new(settings.progress, &target, started);
    let mut after = 0_i64;
    let mut events = 0_u64;
    let mut head = event_store::head_position(pool).await?;
    // Bulk: one transaction per page, the old schema answering meanwhile.
    loop {
        let page = event_store::read_log(pool, after, page_size).await?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        let batch: Vec<ProjectedEvent> = page.iter().map(ProjectedEvent::from).collect();
        let mut tx = pool.begin().await?;
        schema::use_schema(&mut tx, &target).await?;
        let outcome = projector.apply_batch(&mut tx, &batch).await?;
        tx.commit().await?;
        check(&outcome, &batch)?;
        events += outcome.applied as u64;
        after = last;
        if after >= head {
            head = event_store::head_position(pool).await?;
        }
        progress.show(after, head, events);
        if (page.len() as i64) < page_size {
            break;
        }
    }
    // The switch: hold the consumer, apply the tail up to the head, activate, commit.
    let mut tx = pool.begin().await?;
    let _: String =
        sqlx::query_scalar("SELECT schema_name FROM public.rm_active WHERE id FOR UPDATE").fetch_one(&mut *tx).await?;
    schema::use_schema(&mut tx, &target).await?;
    head = event_store::head_position(&mut *tx).await?;
    while after < head {
        let page = event_store::read_log(&mut *tx, after, page_size.min(head - after)).await?;
        let Some(last) = page.last().map(|e| e.position) else { break };
        let batch: Vec<ProjectedEvent> = page.iter().map(ProjectedEvent::from).collect();
        let outcome = projector.apply_batch(&mut tx, &batch).await?;
        check(&outcome, &batch)?;
        events += outcome.applied as u64;
        after = last;
        progress.show(after, head, events);
    }
    sqlx::query("UPDATE public.rm_active SET schema_name = $1, layout_version = $2, activated_at = now() WHERE id")
        .bind(&target)
        .bind(schema::LAYOUT_VERSION)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    progress.finish(after, head, events);
    let elapsed = started.elapsed();
    tracing::info!(schema = %target, previous = %previous.schema, events, head, "read models switched");

    tokio::time::sleep(Duration::from_millis(settings.drop_grace_ms)).await;
    let dropped_previous = drop_schema(pool, &previous.schema).await;
    Ok(ReplayReport {
        schema: target,
        previous: previous.schema,
        events,
        head,
        elapsed,
        events_per_sec: events as f64 / elapsed.as_secs_f64().max(1e-9),
        dropped_previous,
    })
}

/// A replay reads each stream in order from a gapless log: a gap means the store is broken.
fn check(outcome: &BatchOutcome, batch: &[ProjectedEvent]) -> Result<(), ReplayError> {
    match outcome.gaps.first() {
        None => Ok(()),
        Some(gap) => Err(ReplayError::StoreGap {
            aggregate_type: gap.aggregate_type.clone(),
            aggregate_id: gap.aggregate_id.clone(),
            position: batch.get(gap.index).map_or(gap.position, |e| e.position),
        }),
    }
}

/// Drops a read-model schema, waiting at most 10 s for readers' locks; reports whether it went.
async fn drop_schema(pool: &PgPool, name: &str) -> bool {
    let Some(_) = schema::schema_version(name) else { return false };
    let result = async {
        let mut conn: sqlx::pool::PoolConnection<sqlx::Postgres> = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *tx).await?;
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE"))).execute(&mut *tx).await?;
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(schema = %name, error = %e, "could not drop the old read-model schema; the next replay will");
            false
        }
    }
}

/// The progress bar: `replay rm_v2: 12000/50000 (24.0 %), 8500 events/s`, redrawn at most
/// five times a second.
struct Progress<'a> {
    enabled: bool,
    schema: &'a str,
    started: Instant,
    drawn: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(enabled: bool, schema: &'a str, started: Instant) -> Progress<'a> {
        Progress { enabled, schema, started, drawn: None }
    }

    fn line(&self, position: i64, head: i64, events: u64) -> String {
        let pct = if head > 0 { position as f64 * 100.0 / head as f64 } else { 100.0 };
        let rate = events as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        format!("replay {}: {position}/{head} ({pct:.1} %), {rate:.0} events/s", self.schema)
    }

    fn show(&mut self, position: i64, head: i64, events: u64) {
        if !self.enabled || self.drawn.is_some_and(|at| at.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{}\x1b[K", self.line(position, head, events));
        let _ = err.flush();
    }

    fn finish(&mut self, position: i64, head: i64, events: u64) {
        if self.enabled {
            let _ = writeln!(std::io::stderr().lock(), "\r{}, switched\x1b[K", self.line(position, head, events));
        }
    }
}

/// Reads the watermark of a schema (for reports and tests).
pub async fn schema_watermark(conn: &mut PgConnection, schema_name: &str) -> Result<i64, ReplayError> {
    let mut tx = conn.begin().await?;
    schema::use_schema(&mut tx, schema_name).await?;
    let w = crate::project::watermark(&mut tx).await?;
    tx.commit().await?;
    Ok(w)
}
