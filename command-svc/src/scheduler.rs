//! The durable scheduler and the process managers that follow the event log.
//!
//! - **Deadline projection**: reads the log in position order (gap-safe, ADR 0002) and applies
//!   [`domain::deadlines::deadline_changes`] to the `deadlines` table, advancing its position in
//!   the same transaction — a crash replays nothing twice and skips nothing.
//! - **Firing**: due deadlines are taken with `FOR UPDATE SKIP LOCKED` (several instances share
//!   the work) and issued through the [`Executor`] with the idempotency key
//!   `<deadline id>@<position that armed it>`. A crash between the command's commit and the
//!   deadline's deletion only replays the stored answer: each deadline's command is applied once.
//!   The domain still decides: a deadline that became moot is refused and dropped; one that is
//!   blocked (a window with an open challenge) is parked until an event releases it.
//! - **Payout process manager**: every release of pending money to a worker becomes a payout
//!   request for the net amount (the payout queue that payment adapters serve), with a payout
//!   id derived from the releasing event, so a replay requests nothing twice.
//!
//! Everything time-related reads the injected clock; in tests time is moved, never slept.

use std::sync::Arc;
use std::time::Duration;

use domain::deadlines::{DeadlineChange, deadline_changes};
use domain::errors::ErrorKind;
use domain::escrow::EscrowEvent;
use domain::funds::PayoutCommand;
use domain::ids::{PayoutId, name_uuid};
use domain::job::JobError;
use domain::ledger::Provider;
use domain::{Actor, Command, Currency, Event, MarketError, Money, Role, StreamId};
use event_store::StoredEvent;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::uow::{Answer, ExecError, Executor, IdempotencyKey, RequestMeta};

pub const DEADLINES: &str = "deadlines";
pub const PAYOUTS: &str = "payout-pm";

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often to look for new events and due deadlines.
    pub tick: Duration,
    /// Events per projection batch, deadlines per firing batch.
    pub batch_max: i64,
    /// Turn released earnings into payout requests.
    pub auto_payout: bool,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { tick: Duration::from_millis(500), batch_max: 500, auto_payout: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("cannot read event at position {position}: {reason}")]
    Unreadable { position: i64, reason: String },
    #[error("command failed: {0}")]
    Command(#[from] ExecError),
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub executor: Arc<Executor>,
    pub settings: SchedulerSettings,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub projected: usize,
    pub fired: usize,
    pub payouts: usize,
}

/// A stored event as a domain event.
pub fn decode(stored: &StoredEvent) -> Result<Event, SchedulerError> {
    let unreadable = |reason: String| SchedulerError::Unreadable { position: stored.position, reason };
    let stream = StreamId::from_parts(&stored.aggregate_type, &stored.aggregate_id)
        .ok_or_else(|| unreadable(format!("unknown stream {}/{}", stored.aggregate_type, stored.aggregate_id)))?;
    Event::from_stored(stream, stored.payload.clone()).map_err(|e| unreadable(e.to_string()))
}

/// Lock a follower's position row (creating it at 0) for the rest of the transaction: one
/// instance follows at a time, the others wait or skip.
async fn follower_position(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query("INSERT INTO log_followers (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    sqlx::query_scalar("SELECT position FROM log_followers WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
}

async fn set_follower_position(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE log_followers SET position = $2 WHERE name = $1")
        .bind(name)
        .bind(position)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Where each follower is, how far behind the log it is, and how many deadlines wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    pub head: i64,
    pub followers: Vec<(String, i64)>,
    pub deadlines_pending: i64,
    pub deadlines_parked: i64,
    pub deadlines_overdue: i64,
}

pub async fn lag(pool: &PgPool, now_ms: i64) -> Result<Lag, sqlx::Error> {
    let head = event_store::head_position(pool).await?;
    let followers = sqlx::query("SELECT name, position FROM log_followers ORDER BY name")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("position")?)))
        .collect::<Result<Vec<(String, i64)>, sqlx::Error>>()?;
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE NOT parked) AS pending,
                count(*) FILTER (WHERE parked) AS parked,
                count(*) FILTER (WHERE NOT parked AND due_at_ms <= $1) AS overdue
         FROM deadlines",
    )
    .bind(now_ms)
    .fetch_one(pool)
    .await?;
    Ok(Lag {
        head,
        followers,
        deadlines_pending: row.try_get("pending")?,
        deadlines_parked: row.try_get("parked")?,
        deadlines_overdue: row.try_get("overdue")?,
    })
}

/// The provider a region's payouts go through, by currency.
pub fn payout_provider(currency: Currency) -> Provider {
    match currency {
        Currency::Eur | Currency::Usd => Provider::Stripe,
        Currency::Rub => Provider::Yookassa,
        Currency::Cny => Provider::Adyen,
    }
}

/// Deadlines refused because their time has not come yet (a clock a little behind another
/// instance's): try again shortly.
fn not_yet(e: &MarketError) -> bool {
    matches!(
        e,
        MarketError::Job(
            JobError::WindowStillOpen { .. }
                | JobError::ClaimStillLive { .. }
                | JobError::JobDeadlineNotReached { .. }
                | JobError::ReexecutionStillRunning { .. }
        ) | MarketError::Dispute(domain::dispute::DisputeError::DeadlineNotReached { .. })
    )
}

/// Deadlines that cannot fire while something else is open: park until an event releases them.
fn blocked(e: &MarketError) -> bool {
    matches!(e, MarketError::Job(JobError::OpenChallengesOrDisputes))
}

impl Scheduler {
    fn pool(&self) -> &PgPool {
        &self.executor.pool
    }

    fn request_hash(command: &serde_json::Value) -> Vec<u8> {
        Sha256::digest(command.to_string().as_bytes()).to_vec()
    }

    /// Apply one batch of the log to the deadlines table. Returns the events consumed.
    pub async fn project_once(&self) -> Result<usize, SchedulerError> {
        let mut tx = self.pool().begin().await?;
        let position = follower_position(&mut tx, DEADLINES).await?;
        let events = event_store::read_log(&mut *tx, position, self.settings.batch_max).await?;
        let Some(last) = events.last().map(|e| e.position) else { return Ok(0) };
        for stored in &events {
            for change in deadline_changes(&decode(stored)?) {
                apply_change(&mut tx, &change, stored.position).await?;
            }
        }
        set_follower_position(&mut tx, DEADLINES, last).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Issue the commands of every due deadline. Returns how many were applied (or found
    /// already applied).
    pub async fn fire_due(&self) -> Result<usize, SchedulerError> {
        let now = self.executor.clock.now().0;
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT deadline_id, command, armed_at_position, attempts FROM deadlines
             WHERE NOT parked AND due_at_ms <= $1 AND (retry_at_ms IS NULL OR retry_at_ms <= $1)
             ORDER BY due_at_ms, deadline_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(self.settings.batch_max)
        .fetch_all(&mut *tx)
        .await?;
        let mut fired = 0;
        for row in rows {
            let id: String = row.try_get("deadline_id")?;
            let command_json: serde_json::Value = row.try_get("command")?;
            let armed_at: i64 = row.try_get("armed_at_position")?;
            let attempts: i32 = row.try_get("attempts")?;
            let command: Command = match serde_json::from_value(command_json.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(deadline = %id, error = %e, "unreadable deadline command; dropped");
                    delete(&mut tx, &id, armed_at).await?;
                    continue;
                }
            };
            let key = IdempotencyKey {
                scope: "system:scheduler".into(),
                key: format!("{id}@{armed_at}"),
                request_hash: Self::request_hash(&command_json),
            };
            let meta = RequestMeta {
                command_id: Uuid::new_v4(),
                correlation_id: Uuid::new_v4(),
                recorded_actor: "system:scheduler".into(),
            };
            let respond = |c: &event_store::Committed| Answer {
                status: 200,
                body: serde_json::to_vec(&serde_json::json!({ "last_position": c.last_position })).unwrap_or_default(),
            };
            match self.executor.execute(command, Actor::SYSTEM, &meta, Some(&key), &respond).await {
                Ok(_) => {
                    delete(&mut tx, &id, armed_at).await?;
                    fired += 1;
                }
                Err(ExecError::Domain(e)) if blocked(&e) => {
                    sqlx::query("UPDATE deadlines SET parked = true WHERE deadline_id = $1")
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                }
                Err(ExecError::Domain(e)) if not_yet(&e) => {
                    retry_later(&mut tx, &id, attempts, now, &e.to_string()).await?;
                }
                Err(ExecError::Domain(e)) => {
                    // Moot: the aggregate moved on (a claim revealed, a dispute closed by hand).
                    tracing::debug!(deadline = %id, code = e.code(), "deadline no longer applies; dropped");
                    debug_assert!(e.kind() != ErrorKind::Forbidden, "the system may issue every deadline command");
                    delete(&mut tx, &id, armed_at).await?;
                }
                Err(e) => {
                    tracing::warn!(deadline = %id, error = %e, "deadline failed; will retry");
                    retry_later(&mut tx, &id, attempts, now, &e.to_string()).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(fired)
    }

    /// The payout process manager: one batch of the log.
    pub async fn payouts_once(&self) -> Result<usize, SchedulerError> {
        let mut tx = self.pool().begin().await?;
        let position = follower_position(&mut tx, PAYOUTS).await?;
        let events = event_store::read_log(&mut *tx, position, self.settings.batch_max).await?;
        let Some(last) = events.last().map(|e| e.position) else { return Ok(0) };
        let mut requested = 0;
        for stored in &events {
            let Event::Escrow(_, EscrowEvent::PendingReleased { worker, gross, commission, .. }) = decode(stored)?
            else {
                continue;
            };
            let net = Money {
                minor_units: gross.minor_units.saturating_sub(commission.minor_units),
                currency: gross.currency,
            };
            if net.is_zero() {
                continue;
            }
            let payout = PayoutId(name_uuid(&["payout", "auto", &stored.event_id.to_string()]));
            let command = Command::Payout(
                payout,
                PayoutCommand::Request { amount: net, provider: payout_provider(net.currency) },
            );
            let command_json = serde_json::to_value(&command).unwrap_or_default();
            let key = IdempotencyKey {
                scope: "system:payout-pm".into(),
                key: stored.event_id.to_string(),
                request_hash: Self::request_hash(&command_json),
            };
            let meta = RequestMeta {
                command_id: Uuid::new_v4(),
                correlation_id: stored.metadata.correlation_id,
                recorded_actor: "system:payout-pm".into(),
            };
            let respond = |_: &event_store::Committed| Answer { status: 201, body: Vec::new() };
            let actor = Actor { party: worker, role: Role::Worker };
            match self.executor.execute(command, actor, &meta, Some(&key), &respond).await {
                Ok(_) => requested += 1,
                // The worker spent it already (a manual payout, new collateral): nothing to send.
                Err(ExecError::Domain(e)) => tracing::info!(%worker, code = e.code(), "auto-payout skipped"),
                Err(e) => return Err(e.into()),
            }
        }
        set_follower_position(&mut tx, PAYOUTS, last).await?;
        tx.commit().await?;
        Ok(requested)
    }

    /// Catch up with the log, fire what is due, request payouts.
    pub async fn run_once(&self) -> Result<Pass, SchedulerError> {
        let mut pass = Pass::default();
        loop {
            let n = self.project_once().await?;
            pass.projected += n;
            if n == 0 {
                break;
            }
        }
        pass.fired = self.fire_due().await?;
        if self.settings.auto_payout {
            loop {
                let n = self.payouts_once().await?;
                pass.payouts += n;
                if n == 0 || pass.payouts > 10_000 {
                    break;
                }
            }
        }
        Ok(pass)
    }

    /// Run until `shutdown` turns true. Errors are logged and retried after a tick; the loop
    /// only ends on shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut consecutive_errors = 0u32;
        loop {
            match self.run_once().await {
                Ok(_) => consecutive_errors = 0,
                Err(e) => {
                    consecutive_errors = consecutive_errors.saturating_add(1);
                    tracing::error!(error = %e, consecutive_errors, "scheduler pass failed");
                }
            }
            let pause = self.settings.tick * (1 + consecutive_errors.min(20));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

async fn apply_change(
    tx: &mut Transaction<'_, Postgres>,
    change: &DeadlineChange,
    position: i64,
) -> Result<(), sqlx::Error> {
    match change {
        DeadlineChange::Arm { id, due, command } => {
            let command = serde_json::to_value(command).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(
                "INSERT INTO deadlines (deadline_id, due_at_ms, parked, command, armed_at_position)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (deadline_id) DO UPDATE SET due_at_ms = EXCLUDED.due_at_ms, parked = EXCLUDED.parked,
                     command = EXCLUDED.command, armed_at_position = EXCLUDED.armed_at_position,
                     attempts = 0, retry_at_ms = NULL, last_error = NULL",
            )
            .bind(id)
            .bind(due.map(|t| t.0))
            .bind(due.is_none())
            .bind(command)
            .bind(position)
            .execute(&mut **tx)
            .await?;
        }
        DeadlineChange::Cancel { id } => {
            sqlx::query("DELETE FROM deadlines WHERE deadline_id = $1").bind(id).execute(&mut **tx).await?;
        }
        DeadlineChange::Release { prefix, due } => {
            sqlx::query(
                "UPDATE deadlines SET parked = false, due_at_ms = COALESCE($2, due_at_ms)
                 WHERE left(deadline_id, length($1)) = $1 AND parked AND COALESCE($2, due_at_ms) IS NOT NULL",
            )
            .bind(prefix)
            .bind(due.map(|t| t.0))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn delete(tx: &mut Transaction<'_, Postgres>, id: &str, armed_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM deadlines WHERE deadline_id = $1 AND armed_at_position = $2")
        .bind(id)
        .bind(armed_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Bounded exponential backoff: 1 s, 2 s, 4 s … at most 5 minutes.
async fn retry_later(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    attempts: i32,
    now_ms: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    let backoff_ms = 1_000i64.saturating_mul(1 << attempts.clamp(0, 8)).min(300_000);
    sqlx::query(
        "UPDATE deadlines SET attempts = attempts + 1, retry_at_ms = $2, last_error = $3 WHERE deadline_id = $1",
    )
    .bind(id)
    .bind(now_ms + backoff_ms)
    .bind(error.chars().take(500).collect::<String>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
