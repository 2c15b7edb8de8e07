//! The projector core: [`Projector::apply_batch`] applies a batch of events to the read models
//! of the schema the transaction points at. The Kafka consumer and the replay both use it.
//!
//! Per event, in the caller's transaction:
//! 1. Dedupe against `rm_streams`: `sequence <= last` is a copy (counted, dropped);
//!    `sequence > last + 1` is a **gap**: not applied, the stream not advanced, reported in
//!    [`BatchOutcome::gaps`] (and logged and counted) so that the caller does not move its
//!    position past it. The missing event is re-delivered, or a replay rebuilds the models.
//! 2. Append to `rm_events` (the event history, and what aggregates are refolded from).
//! 3. Add the event's ledger postings (`HasPostings`) to `rm_balances`.
//! 4. Fold job, challenge, dispute, payout and worker streams with the domain's `apply`
//!    (from a cache keyed by stream and last sequence, else from `rm_events`) and upsert their
//!    denormalised rows ([`crate::fold`]).
//! 5. Advance `rm_watermark` to the highest position below which nothing is missing.
//!
//! Rows are written with one statement per table per batch (`jsonb_populate_recordset`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use domain::ledger::HasPostings;
use domain::{Event, StreamId};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgConnection, Row};

use crate::event::{ProjectedEvent, rfc3339_micros};
use crate::fold::{At, Folded, account_parts};
use crate::metrics::Metrics;

/// Folded aggregates kept between batches, at most this many (then the oldest entries go).
pub const CACHE_ENTRIES_MAX: usize = 4_096;

/// An event that arrived before its predecessor in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Index of the event in the batch.
    pub index: usize,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// What the stream needs next.
    pub expected_sequence: i64,
    pub sequence: i64,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub gaps: Vec<Gap>,
    /// The watermark after the batch (every position at or below it is applied).
    pub watermark: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("event at position {position} ({aggregate_type} {event_type}) cannot be read by this version: {reason}")]
    Unreadable { position: i64, aggregate_type: String, event_type: String, reason: String },
    #[error("balance of {account} in {currency} leaves the 64-bit range")]
    BalanceOverflow { account: String, currency: String },
}

#[derive(Debug, Clone)]
struct Cached {
    sequence: i64,
    view: Folded,
    /// For eviction: when it was last used (a counter of batches).
    used: u64,
}

/// Applies batches; holds the fold cache and the metrics. One per consumer or replay.
#[derive(Debug)]
pub struct Projector {
    cache: HashMap<(String, String), Cached>,
    cache_entries_max: usize,
    batches: u64,
    metrics: Arc<Metrics>,
}

impl Default for Projector {
    fn default() -> Self {
        Projector::new(Arc::default())
    }
}

struct Accepted<'a> {
    event: &'a ProjectedEvent,
    /// `None` for an aggregate type this version does not know (kept in `rm_events` only).
    domain: Option<(StreamId, Event)>,
}

impl Projector {
    pub fn new(metrics: Arc<Metrics>) -> Projector {
        Projector { cache: HashMap::new(), cache_entries_max: CACHE_ENTRIES_MAX, batches: 0, metrics }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Applies `events` (any order across streams; each stream's in sequence order) to the
    /// read models of the schema on the transaction's `search_path`. Copies are dropped, gaps
    /// reported and not applied; see the module documentation.
    pub async fn apply_batch(
        &mut self,
        conn: &mut PgConnection,
        events: &[ProjectedEvent],
    ) -> Result<BatchOutcome, ProjectError> {
        self.batches += 1;
        let mut outcome = BatchOutcome::default();
        let before = lock_streams(conn, events).await?;
        let mut last: BTreeMap<(String, String), i64> = before.clone();
        let mut accepted = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let current = last.get(&key).copied().unwrap_or(0);
            if event.sequence <= current {
                outcome.duplicates += 1;
                continue;
            }
            if event.sequence > current + 1 {
                tracing::error!(
                    position = event.position,
                    aggregate_type = %event.aggregate_type,
                    aggregate_id = %event.aggregate_id,
                    expected_sequence = current + 1,
                    sequence = event.sequence,
                    "gap in a stream: event not applied until its predecessors are"
                );
                outcome.gaps.push(Gap {
                    index,
                    position: event.position,
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    expected_sequence: current + 1,
                    sequence: event.sequence,
                });
                continue;
            }
            last.insert(key, event.sequence);
            accepted.push(Accepted { event, domain: to_domain(event)? });
        }
        outcome.applied = accepted.len();
        if !accepted.is_empty() {
            insert_events(conn, &accepted).await?;
            apply_postings(conn, &accepted).await?;
            self.fold_and_write(conn, &accepted, &before).await?;
            upsert_streams(conn, &accepted).await?;
        }
        outcome.watermark = advance_watermark(conn).await?;
        self.metrics.record_batch(&outcome);
        Ok(outcome)
    }

    async fn fold_and_write(
        &mut self,
        conn: &mut PgConnection,
        accepted: &[Accepted<'_>],
        before: &BTreeMap<(String, String), i64>,
    ) -> Result<(), ProjectError> {
        // The streams with folded rows, in first-seen order.
        let mut order: Vec<(String, String)> = Vec::new();
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        for a in accepted {
            if let Some((stream, _)) = &a.domain
                && Folded::for_stream(stream).is_some()
            {
                let key = (a.event.aggregate_type.clone(), a.event.aggregate_id.clone());
                if touched.insert(key.clone()) {
                    order.push(key);
                }
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        // States as of the start of the batch: from the cache when it is at the same sequence,
        // else refolded from `rm_events`.
        let mut states: HashMap<(String, String), Folded> = HashMap::new();
        let mut refold: Vec<(String, String)> = Vec::new();
        for key in &order {
            let at = before.get(key).copied().unwrap_or(0);
            // Taken out of the cache: put back with its new sequence once the batch is written.
            match self.cache.remove(key) {
                Some(cached) if cached.sequence == at => {
                    states.insert(key.clone(), cached.view);
                }
                _ if at == 0 => {
                    if let Some(stream) = stream_of(key)
                        && let Some(view) = Folded::for_stream(&stream)
                    {
                        states.insert(key.clone(), view);
                    }
                }
                _ => refold.push(key.clone()),
            }
        }
        if !refold.is_empty() {
            self.metrics.add_refolds(refold.len() as u64);
            for (key, view) in refold_from_events(conn, &refold).await? {
                states.insert(key, view);
            }
        }
        for a in accepted {
            let Some((_, event)) = &a.domain else { continue };
            let key = (a.event.aggregate_type.clone(), a.event.aggregate_id.clone());
            if let Some(view) = states.get_mut(&key) {
                view.apply(event, at(a.event));
            }
        }
        // Rows per table, and the jobs whose board rows are replaced.
        let mut rows: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        let mut board_jobs: Vec<uuid::Uuid> = Vec::new();
        let mut board_rows: Vec<Value> = Vec::new();
        for key in &order {
            let (Some(stream), Some(view)) = (stream_of(key), states.get(key)) else { continue };
            let view_rows = view.rows(&stream);
            if let Some((table, row)) = view_rows.main {
                rows.entry(table).or_default().push(row);
            }
            if let Some(open) = view_rows.open_tasks {
                board_jobs.push(stream.aggregate_id());
                board_rows.extend(open);
            }
        }
        for (table, rows) in rows {
            upsert_rows(conn, table, rows).await?;
        }
        if !board_jobs.is_empty() {
            sqlx::query("DELETE FROM rm_open_tasks WHERE job_id = ANY($1)")
                .bind(&board_jobs)
                .execute(&mut *conn)
                .await?;
            if !board_rows.is_empty() {
                sqlx::query(
                    "INSERT INTO rm_open_tasks SELECT * FROM jsonb_populate_recordset(NULL::rm_open_tasks, $1)",
                )
                .bind(Value::Array(board_rows))
                .execute(&mut *conn)
                .await?;
            }
        }
        // Remember the states at their new sequences. If the transaction rolls back, the cache
        // is ahead of `rm_streams` and is not used (the sequences differ).
        for a in accepted.iter().rev() {
            let key = (a.event.aggregate_type.clone(), a.event.aggregate_id.clone());
            if let Some(view) = states.remove(&key) {
                self.cache.insert(key, Cached { sequence: a.event.sequence, view, used: self.batches });
            }
        }
        self.evict();
        Ok(())
    }

    /// Bounds the cache: drops the least recently used half when it is over its limit.
    fn evict(&mut self) {
        if self.cache.len() <= self.cache_entries_max {
            return;
        }
        let mut used: Vec<u64> = self.cache.values().map(|c| c.used).collect();
        used.sort_unstable();
        let cutoff = used[used.len() / 2];
        self.cache.retain(|_, c| c.used > cutoff);
    }
}

fn at(e: &ProjectedEvent) -> At {
    At { position: e.position, recorded_at_ms: e.recorded_at_unix_micros.div_euclid(1000) }
}

fn stream_of(key: &(String, String)) -> Option<StreamId> {
    StreamId::from_parts(&key.0, &key.1)
}

/// The domain event, or `None` for an aggregate type this version does not project.
fn to_domain(e: &ProjectedEvent) -> Result<Option<(StreamId, Event)>, ProjectError> {
    let Some(stream) = StreamId::from_parts(&e.aggregate_type, &e.aggregate_id) else {
        tracing::warn!(position = e.position, aggregate_type = %e.aggregate_type, "unknown aggregate type: history only");
        return Ok(None);
    };
    let event = Event::from_stored(stream, e.payload.clone()).map_err(|err| ProjectError::Unreadable {
        position: e.position,
        aggregate_type: e.aggregate_type.clone(),
        event_type: e.event_type.clone(),
        reason: err.to_string(),
    })?;
    Ok(Some((stream, event)))
}

/// The last applied sequence of every stream of the batch, with their rows locked (in key
/// order, so two projectors never deadlock).
async fn lock_streams(
    conn: &mut PgConnection,
    events: &[ProjectedEvent],
) -> Result<BTreeMap<(String, String), i64>, sqlx::Error> {
    let keys: BTreeSet<(&str, &str)> =
        events.iter().map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str())).collect();
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let rows = sqlx::query(
        "SELECT s.aggregate_type, s.aggregate_id, s.last_sequence
           FROM rm_streams s
           JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON s.aggregate_type = k.t AND s.aggregate_id = k.i
          ORDER BY s.aggregate_type, s.aggregate_id
            FOR UPDATE OF s",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        out.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    Ok(out)
}

async fn insert_events(conn: &mut PgConnection, accepted: &[Accepted<'_>]) -> Result<(), sqlx::Error> {
    let rows: Vec<Value> = accepted
        .iter()
        .map(|a| {
            let e = a.event;
            json!({
                "position": e.position,
                "aggregate_type": e.aggregate_type,
                "aggregate_id": e.aggregate_id,
                "sequence": e.sequence,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "payload": e.payload,
                "metadata": e.metadata,
                "recorded_at": rfc3339_micros(e.recorded_at_unix_micros),
                "hash": e.hash,
                "prev_hash": e.prev_hash,
            })
        })
        .collect();
    sqlx::query("INSERT INTO rm_events SELECT * FROM jsonb_populate_recordset(NULL::rm_events, $1)")
        .bind(Value::Array(rows))
        .execute(conn)
        .await?;
    Ok(())
}

async fn apply_postings(conn: &mut PgConnection, accepted: &[Accepted<'_>]) -> Result<(), ProjectError> {
    // (account, currency) → (delta, last position, the account itself).
    let mut deltas: BTreeMap<(String, &'static str), (i128, i64, domain::ledger::LedgerAccount)> = BTreeMap::new();
    for a in accepted {
        let Some((_, event)) = &a.domain else { continue };
        for posting in event.postings() {
            let amount = i128::from(posting.amount.minor_units);
            let currency = posting.amount.currency.code();
            for (account, delta) in [(posting.from, -amount), (posting.to, amount)] {
                let entry = deltas.entry((account.to_string(), currency)).or_insert((0, 0, account));
                entry.0 += delta;
                // The latest posting's position: order-independent (Kafka interleaves streams).
                entry.1 = entry.1.max(a.event.position);
            }
        }
    }
    if deltas.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(deltas.len());
    for ((account, currency), (delta, position, parts)) in deltas {
        let delta = i64::try_from(delta)
            .map_err(|_| ProjectError::BalanceOverflow { account: account.clone(), currency: currency.to_owned() })?;
        let (kind, party, job) = account_parts(&parts);
        rows.push(json!({
            "account": account, "currency": currency, "kind": kind, "party_id": party, "job_id": job,
            "balance": delta, "updated_position": position,
        }));
    }
    sqlx::query(
        "INSERT INTO rm_balances SELECT * FROM jsonb_populate_recordset(NULL::rm_balances, $1)
         ON CONFLICT (account, currency) DO UPDATE
            SET balance = rm_balances.balance + EXCLUDED.balance,
                updated_position = GREATEST(rm_balances.updated_position, EXCLUDED.updated_position)",
    )
    .bind(Value::Array(rows))
    .execute(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22003") => {
            ProjectError::BalanceOverflow { account: "(batch)".to_owned(), currency: "(batch)".to_owned() }
        }
        _ => ProjectError::Database(e),
    })?;
    Ok(())
}

/// The key columns of each folded table, for its upsert.
fn key_of(table: &str) -> &'static str {
    match table {
        "rm_jobs" => "job_id",
        "rm_challenges" => "challenge_id",
        "rm_disputes" => "dispute_id",
        "rm_payouts" => "payout_id",
        "rm_reputation" => "worker_id",
        _ => "",
    }
}

async fn upsert_rows(conn: &mut PgConnection, table: &'static str, rows: Vec<Value>) -> Result<(), sqlx::Error> {
    let key = key_of(table);
    let Some(first) = rows.first().and_then(Value::as_object) else { return Ok(()) };
    let columns: Vec<&str> = first.keys().map(String::as_str).filter(|c| *c != key).collect();
    let set = columns.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ");
    // Table and column names come from this crate's own constants, never from input.
    let sql = format!(
        "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)
         ON CONFLICT ({key}) DO UPDATE SET {set}"
    );
    sqlx::query(AssertSqlSafe(sql)).bind(Value::Array(rows)).execute(conn).await?;
    Ok(())
}

async fn upsert_streams(conn: &mut PgConnection, accepted: &[Accepted<'_>]) -> Result<(), sqlx::Error> {
    let mut last: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for a in accepted {
        last.insert((&a.event.aggregate_type, &a.event.aggregate_id), (a.event.sequence, a.event.position));
    }
    let rows: Vec<Value> = last
        .into_iter()
        .map(|((t, i), (s, p))| json!({"aggregate_type": t, "aggregate_id": i, "last_sequence": s, "last_position": p}))
        .collect();
    sqlx::query(
        "INSERT INTO rm_streams SELECT * FROM jsonb_populate_recordset(NULL::rm_streams, $1)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence, last_position = EXCLUDED.last_position",
    )
    .bind(Value::Array(rows))
    .execute(conn)
    .await?;
    Ok(())
}

/// Folds `keys` from their `rm_events` rows (as of the start of the batch).
async fn refold_from_events(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<Vec<((String, String), Folded)>, ProjectError> {
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
    let rows = sqlx::query(
        "SELECT e.aggregate_type, e.aggregate_id, e.payload, e.position,
                (EXTRACT(EPOCH FROM e.recorded_at) * 1000)::bigint, e.event_type
           FROM rm_events e
           JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON e.aggregate_type = k.t AND e.aggregate_id = k.i
          ORDER BY e.aggregate_type, e.aggregate_id, e.sequence",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<((String, String), Folded)> = Vec::new();
    for row in rows {
        let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let payload: Value = row.try_get(2)?;
        let position: i64 = row.try_get(3)?;
        let recorded_at_ms: i64 = row.try_get(4)?;
        let Some(stream) = StreamId::from_parts(&key.0, &key.1) else { continue };
        let event = Event::from_stored(stream, payload).map_err(|err| ProjectError::Unreadable {
            position,
            aggregate_type: key.0.clone(),
            event_type: row.try_get::<String, _>(5).unwrap_or_default(),
            reason: err.to_string(),
        })?;
        if out.last().is_none_or(|(k, _)| *k != key) {
            let Some(view) = Folded::for_stream(&stream) else { continue };
            out.push((key.clone(), view));
        }
        if let Some((_, view)) = out.last_mut() {
            view.apply(&event, At { position, recorded_at_ms });
        }
    }
    Ok(out)
}

/// Moves `rm_watermark` to the end of the run of consecutive positions above it (positions in
/// the log are gapless, ADR 0002). The row is locked first, so concurrent projectors take turns.
async fn advance_watermark(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let current: i64 =
        sqlx::query_scalar("SELECT position FROM rm_watermark WHERE id FOR UPDATE").fetch_one(&mut *conn).await?;
    let next: i64 = sqlx::query_scalar(
        "SELECT COALESCE(max(position), $1) FROM (
             SELECT position, position - row_number() OVER (ORDER BY position) AS g
               FROM rm_events WHERE position > $1) t
          WHERE g = $1",
    )
    .bind(current)
    .fetch_one(&mut *conn)
    .await?;
    if next > current {
        sqlx::query("UPDATE rm_watermark SET position = $1 WHERE id").bind(next).execute(&mut *conn).await?;
    }
    Ok(next)
}

/// The watermark of the schema on the connection's `search_path`.
pub async fn watermark(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM rm_watermark WHERE id").fetch_one(conn).await
}
