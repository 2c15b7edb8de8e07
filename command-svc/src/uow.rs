//! The unit of work on PostgreSQL: one command and its reactions, decided by the domain and
//! committed in one transaction.
//!
//! Per attempt, in one READ COMMITTED transaction:
//! 1. the idempotency key is claimed with a try-lock (another request holding it → 409) and
//!    looked up (a stored answer is replayed, a different request under the key is refused);
//! 2. the domain runs on a partial marketplace; whatever it asks for (streams, balances,
//!    monthly volumes) is loaded inside the transaction — balances `FOR UPDATE` — and it runs
//!    again, until it decides;
//! 3. the postings of the decided events update `ledger_balances` (whose CHECK refuses any
//!    negative balance: the backstop of ADR 0004) and the monthly volumes;
//! 4. the events are appended (optimistic concurrency per stream, gap-safe positions, outbox)
//!    with the idempotency record, and the answer is stored under the key before COMMIT.
//!
//! A conflict (another writer got to a stream first), a deadlock, or a CHECK violation rolls
//! the attempt back and starts again with fresh state, at most `retries_max` times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::ctx::CommissionSchedule;
use domain::escrow::EscrowEvent;
use domain::ledger::HasPostings;
use domain::market::Need;
use domain::{Actor, Command, Event, MarketError, Marketplace, StreamId};
use event_store::{AppendError, Commit, Committed, EventMetadata, IdempotencyRecord, NewEvent, StreamAppend};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::clock::Clock;
use crate::metrics::Metrics;

/// How many load-and-decide rounds one attempt may take (each round loads what the previous
/// one asked for; a unit of work touches a handful of streams).
const LOAD_ROUNDS_MAX: usize = 64;

/// Who, and as part of what, a command runs.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub command_id: Uuid,
    pub correlation_id: Uuid,
    /// Recorded in the events' metadata: `"<role>:<party>"`, e.g. `"admin:…"` for a system
    /// command an admin triggered.
    pub recorded_actor: String,
}

/// The client's idempotency key, scoped, with a hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
    pub request_hash: Vec<u8>,
}

impl IdempotencyKey {
    pub fn lock_id(&self) -> i64 {
        let digest = Sha256::new()
            .chain_update(self.scope.as_bytes())
            .chain_update([0])
            .chain_update(self.key.as_bytes())
            .finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

/// The answer to a command, as stored under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Executed {
    /// Decided and committed now.
    Committed { committed: Committed, answer: Answer },
    /// Committed earlier under the same idempotency key: the stored answer.
    Replayed(Answer),
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Domain(#[from] MarketError),
    #[error("too much concurrent activity on the same records; retried {attempts} times")]
    Contention { attempts: u32 },
    #[error("a request with this idempotency key is still being processed")]
    InFlight,
    #[error("this idempotency key was used with a different request")]
    KeyReused,
    #[error("the event log holds an event this version cannot read: {0}")]
    Unreadable(String),
    #[error("internal invariant broken: {0}")]
    Internal(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ExecError {
    fn from(e: sqlx::Error) -> Self {
        ExecError::Database(e)
    }
}

enum Attempt {
    Done(Result<Executed, ExecError>),
    Retry,
}

/// Runs units of work against one database.
#[derive(Debug)]
pub struct Executor {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub schedule: CommissionSchedule,
    pub retries_max: u32,
    pub metrics: Arc<Metrics>,
}

impl Executor {
    /// Execute `cmd` as `actor`. `respond` builds the answer from what was committed; it is
    /// stored under the idempotency key in the same transaction.
    pub async fn execute(
        &self,
        cmd: Command,
        actor: Actor,
        meta: &RequestMeta,
        idempotency: Option<&IdempotencyKey>,
        respond: &(dyn Fn(&Committed) -> Answer + Send + Sync),
    ) -> Result<Executed, ExecError> {
        let started = Instant::now();
        let mut result = Err(ExecError::Contention { attempts: self.retries_max + 1 });
        for attempt in 0..=self.retries_max {
            let outcome = match self.attempt(&cmd, actor, meta, idempotency, respond).await {
                // A deadlock or serialization failure anywhere in the attempt (loading balances
                // FOR UPDATE in another unit's order, say) is a conflict like any other.
                Err(ExecError::Database(e)) if is_retryable(&e) => Ok(Attempt::Retry),
                other => other,
            };
            match outcome {
                Ok(Attempt::Done(r)) => {
                    result = r;
                    break;
                }
                Ok(Attempt::Retry) => {
                    self.metrics.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Jittered backoff, bounded: 0..2^attempt ms, at most 64 ms.
                    let cap_ms = 1u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_micros(rand::random_range(0..cap_ms * 1000))).await;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let counter = match &result {
            Ok(Executed::Committed { committed, .. }) => {
                self.metrics
                    .events_appended
                    .fetch_add(committed.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                &self.metrics.accepted
            }
            Ok(Executed::Replayed(_)) => &self.metrics.replayed,
            Err(ExecError::Domain(_) | ExecError::KeyReused | ExecError::InFlight) => &self.metrics.refused,
            Err(_) => &self.metrics.failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.observe_latency_micros(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        result
    }

    async fn attempt(
        &self,
        cmd: &Command,
        actor: Actor,
        meta: &RequestMeta,
        idempotency: Option<&IdempotencyKey>,
        respond: &(dyn Fn(&Committed) -> Answer + Send + Sync),
    ) -> Result<Attempt, ExecError> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        if let Some(key) = idempotency {
            let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
                .bind(key.lock_id())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if !locked {
                return Ok(Attempt::Done(Err(ExecError::InFlight)));
            }
            if let Some(stored) = event_store::lookup_idempotency(&mut *tx, &key.scope, &key.key).await? {
                return Ok(Attempt::Done(if stored.record.request_hash == key.request_hash {
                    Ok(Executed::Replayed(Answer {
                        status: stored.record.response_status,
                        body: stored.record.response_body,
                    }))
                } else {
                    Err(ExecError::KeyReused)
                }));
            }
        }

        let now = self.clock.now();
        let recorded_at_unix_micros = self.clock.now_micros();
        let mut market = Marketplace::partial(rand::random(), self.schedule.clone());
        let mut versions: BTreeMap<StreamId, (i64, event_store::Hash)> = BTreeMap::new();
        let mut rounds = 0;
        let decided = loop {
            match market.execute_loaded(cmd.clone(), actor, now) {
                Ok(decided) => break decided,
                Err(needs) => {
                    rounds += 1;
                    if rounds > LOAD_ROUNDS_MAX {
                        return Err(ExecError::Internal(format!("unit of work still asks for {needs:?}")));
                    }
                    for need in needs {
                        load(&mut tx, &mut market, &mut versions, need).await?;
                    }
                }
            }
        };
        let events = match decided {
            Ok(events) => events,
            Err(refusal) => return Ok(Attempt::Done(Err(ExecError::Domain(refusal)))),
        };

        if let Err(e) = apply_postings(&mut tx, &events).await {
            return if is_retryable(&e) { Ok(Attempt::Retry) } else { Err(e.into()) };
        }

        let metadata = EventMetadata {
            actor: meta.recorded_actor.clone(),
            command_id: meta.command_id,
            correlation_id: meta.correlation_id,
            causation_id: meta.command_id,
        };
        let placeholder = idempotency.map(|k| IdempotencyRecord {
            scope: k.scope.clone(),
            key: k.key.clone(),
            request_hash: k.request_hash.clone(),
            response_status: 0,
            response_body: Vec::new(),
        });
        let committed = if events.is_empty() {
            // Accepted, nothing to write (e.g. a deposit recorded again): only the answer.
            if let Some(record) = &placeholder {
                insert_idempotency(&mut tx, record, recorded_at_unix_micros).await?;
            }
            let head = event_store::head_position(&mut *tx).await?;
            Committed { events: Vec::new(), last_position: head }
        } else {
            let streams = group_into_streams(&events, &versions)?;
            let commit = Commit { streams, metadata, recorded_at_unix_micros, idempotency: placeholder };
            match event_store::append_in_tx(&mut tx, commit).await {
                Ok(c) => c,
                Err(AppendError::Conflict { .. }) => return Ok(Attempt::Retry),
                Err(AppendError::DuplicateIdempotencyKey { .. }) => return Ok(Attempt::Done(Err(ExecError::InFlight))),
                Err(AppendError::Database(e)) if is_retryable(&e) => return Ok(Attempt::Retry),
                Err(AppendError::Database(e)) => return Err(e.into()),
                Err(AppendError::InvalidCommit(why)) => return Err(ExecError::Internal(why)),
            }
        };
        let answer = respond(&committed);
        if let Some(key) = idempotency {
            sqlx::query(
                "UPDATE idempotency SET response_status = $1, response_body = $2 WHERE scope = $3 AND key = $4",
            )
            .bind(i32::from(answer.status))
            .bind(&answer.body)
            .bind(&key.scope)
            .bind(&key.key)
            .execute(&mut *tx)
            .await?;
        }
        match tx.commit().await {
            Ok(()) => Ok(Attempt::Done(Ok(Executed::Committed { committed, answer }))),
            Err(e) if is_retryable(&e) => Ok(Attempt::Retry),
            Err(e) => Err(e.into()),
        }
    }
}

async fn load(
    tx: &mut Transaction<'_, Postgres>,
    market: &mut Marketplace,
    versions: &mut BTreeMap<StreamId, (i64, event_store::Hash)>,
    need: Need,
) -> Result<(), ExecError> {
    match need {
        Need::Stream(stream) => {
            let stored =
                event_store::load_stream(&mut **tx, stream.aggregate_type(), &stream.aggregate_id().to_string(), 0)
                    .await?;
            let mut history = Vec::with_capacity(stored.len());
            for e in &stored {
                if e.event_version != 1 {
                    return Err(ExecError::Unreadable(format!(
                        "{} version {} at {}",
                        e.event_type, e.event_version, e.position
                    )));
                }
                history.push(
                    Event::from_stored(stream, e.payload.clone())
                        .map_err(|err| ExecError::Unreadable(format!("{} at {}: {err}", e.event_type, e.position)))?,
                );
            }
            let version = stored.last().map_or((0, event_store::ZERO_HASH), |e| (e.sequence, e.hash));
            market.load_stream(stream, &history);
            versions.insert(stream, version);
        }
        Need::Balance(party, currency) => {
            let account = domain::ledger::LedgerAccount::Available { party }.to_string();
            let balance: Option<i64> =
                sqlx::query("SELECT balance FROM ledger_balances WHERE account = $1 AND currency = $2 FOR UPDATE")
                    .bind(&account)
                    .bind(currency.code())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
            market.load_balance(party, currency, u64::try_from(balance.unwrap_or(0)).unwrap_or(0));
        }
        Need::MonthVolume(client, currency, month_index) => {
            let volume: Option<i64> = sqlx::query(
                "SELECT volume FROM client_month_volume WHERE client_id = $1 AND currency = $2 AND month_index = $3",
            )
            .bind(client.0)
            .bind(currency.code())
            .bind(month_index)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            market.load_month_volume(client, currency, month_index, u64::try_from(volume.unwrap_or(0)).unwrap_or(0));
        }
    }
    Ok(())
}

/// Does a decision read this account's balance as a fact? Only those live in `ledger_balances`
/// (ADR 0004): the others (escrow, collateral, pending, bonds, fees, clearing, in flight) are
/// guarded by their aggregates and folded by the read side. Keeping shared accounts such as
/// `provider_clearing` out of this table keeps every command from queueing on one row lock.
fn is_fact(account: &domain::ledger::LedgerAccount) -> bool {
    matches!(account, domain::ledger::LedgerAccount::Available { .. })
}

/// Net balance changes of the unit of work, applied in a fixed order (no deadlock between two
/// units touching the same accounts).
async fn apply_postings(tx: &mut Transaction<'_, Postgres>, events: &[Event]) -> Result<(), sqlx::Error> {
    let mut deltas: BTreeMap<(String, &'static str), i128> = BTreeMap::new();
    let mut volumes: BTreeMap<(Uuid, &'static str, i64), i64> = BTreeMap::new();
    for event in events {
        for p in event.postings() {
            let amount = i128::from(p.amount.minor_units);
            for (account, delta) in [(p.from, -amount), (p.to, amount)] {
                if is_fact(&account) {
                    *deltas.entry((account.to_string(), p.amount.currency.code())).or_default() += delta;
                }
            }
        }
        if let Event::Escrow(_, EscrowEvent::PendingReleased { client, gross, month_index, .. }) = event {
            *volumes.entry((client.0, gross.currency.code(), *month_index)).or_default() +=
                i64::try_from(gross.minor_units).unwrap_or(i64::MAX);
        }
    }
    for ((account, currency), delta) in deltas {
        if delta == 0 {
            continue;
        }
        let delta = i64::try_from(delta).map_err(|_| sqlx::Error::Protocol("balance delta overflows i64".into()))?;
        // PostgreSQL checks an INSERT's CHECK constraints on the proposed row before ON
        // CONFLICT, so a debit must be an UPDATE of the existing row.
        let debit_of_guarded_account = delta < 0 && !account.starts_with("provider_clearing:");
        if debit_of_guarded_account {
            let updated =
                sqlx::query("UPDATE ledger_balances SET balance = balance + $3 WHERE account = $1 AND currency = $2")
                    .bind(&account)
                    .bind(currency)
                    .bind(delta)
                    .execute(&mut **tx)
                    .await?;
            if updated.rows_affected() == 0 {
                // No row means a zero balance: the debit would make it negative.
                return Err(sqlx::Error::Protocol(format!(
                    "{CHECK_RACE}: debit of {account} {currency} with no balance"
                )));
            }
        } else {
            sqlx::query(
                "INSERT INTO ledger_balances (account, currency, balance) VALUES ($1, $2, $3)
                 ON CONFLICT (account, currency) DO UPDATE SET balance = ledger_balances.balance + EXCLUDED.balance",
            )
            .bind(&account)
            .bind(currency)
            .bind(delta)
            .execute(&mut **tx)
            .await?;
        }
    }
    for ((client, currency, month_index), gross) in volumes {
        sqlx::query(
            "INSERT INTO client_month_volume (client_id, currency, month_index, volume) VALUES ($1, $2, $3, $4)
             ON CONFLICT (client_id, currency, month_index) DO UPDATE SET volume = client_month_volume.volume + EXCLUDED.volume",
        )
        .bind(client)
        .bind(currency)
        .bind(month_index)
        .bind(gross)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn group_into_streams(
    events: &[Event],
    versions: &BTreeMap<StreamId, (i64, event_store::Hash)>,
) -> Result<Vec<StreamAppend>, ExecError> {
    let mut order: Vec<StreamId> = Vec::new();
    let mut by_stream: BTreeMap<StreamId, Vec<NewEvent>> = BTreeMap::new();
    for event in events {
        let stream = event.stream();
        let payload = event.payload().map_err(|e| ExecError::Internal(format!("event does not serialize: {e}")))?;
        let new = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            event_version: i32::try_from(event.event_version()).unwrap_or(1),
            payload,
        };
        by_stream
            .entry(stream)
            .or_insert_with(|| {
                order.push(stream);
                Vec::new()
            })
            .push(new);
    }
    order
        .into_iter()
        .map(|stream| {
            let (expected_sequence, last_hash) = versions
                .get(&stream)
                .copied()
                .ok_or_else(|| ExecError::Internal(format!("{stream:?} written but never loaded")))?;
            Ok(StreamAppend {
                aggregate_type: stream.aggregate_type().to_owned(),
                aggregate_id: stream.aggregate_id().to_string(),
                expected_sequence,
                expected_last_hash: Some(last_hash),
                events: by_stream.remove(&stream).unwrap_or_default(),
            })
        })
        .collect()
}

async fn insert_idempotency(
    tx: &mut Transaction<'_, Postgres>,
    record: &IdempotencyRecord,
    recorded_at_unix_micros: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency (scope, key, request_hash, response_status, response_body, created_at)
         VALUES ($1, $2, $3, $4, $5, TIMESTAMPTZ 'epoch' + $6::bigint * INTERVAL '1 microsecond')",
    )
    .bind(&record.scope)
    .bind(&record.key)
    .bind(&record.request_hash)
    .bind(i32::from(record.response_status))
    .bind(&record.response_body)
    .bind(recorded_at_unix_micros)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

const CHECK_RACE: &str = "balance check race";

/// Conflicts worth another attempt: a CHECK the facts should have prevented (a race),
/// a deadlock, a serialization failure.
fn is_retryable(e: &sqlx::Error) -> bool {
    if let sqlx::Error::Protocol(message) = e {
        return message.starts_with(CHECK_RACE);
    }
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|pg| matches!(pg.code(), "23514" | "40P01" | "40001"))
}
