//! The measured peer, cqrs-es 0.5.0 + postgres-es 0.5.0, on the workload of the peer study
//! (`../shared/research/peer-cqrs-es-baseline.md`), re-implemented so that it runs in the same
//! session as DSCM's `bench` (command-svc/src/bin/bench.rs). Only two of the study's scenarios:
//!
//! - `escrow-commands`: 1 000 escrows opened with 1 000 000.00 EUR, then 9 500 pairs of (Hold,
//!   Release) of 2.50 EUR on the escrow `splitmix64(pair) % 1000`; one event per command, so
//!   n = 20 000. C tasks take work from a shared counter (opens first, then pairs; a pair runs in
//!   order in one task); the pool has C connections, all opened before the clock starts; each run
//!   starts on a fresh database after a `CHECKPOINT`. The plain event-sourced store
//!   (`postgres_cqrs`); an `AggregateConflict` is retried by this harness and its time counts in
//!   the command's latency.
//! - `replay-all`: `QueryReplay::replay_all` into an in-memory fold, after each run.
//!
//! Untimed checks after each run: the event rows, every escrow loaded through the store against a
//! plain fold of its rows (`state_mismatch`), and every escrow's holds released (`balances_ok`).
//!
//! ```text
//! peer-cqrs-es [all|escrow-commands] [--database-url URL] [--runs 3] [--n 20000]
//!              [--concurrency 1,8,32] [--synchronous-commit on|off]
//! ```

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventStore, QueryReplay};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, DomainEvent, EventEnvelope, EventStore, Query};
use postgres_es::{PostgresCqrs, PostgresEventRepository, postgres_cqrs};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

const ESCROWS: usize = 1_000;
/// 1 000 000.00 EUR.
const OPEN_MINOR_UNITS: u64 = 100_000_000;
/// 2.50 EUR.
const HOLD_MINOR_UNITS: u64 = 250;
/// Retries of one command on `AggregateConflict` before it counts as rejected.
const CONFLICT_RETRIES_MAX: usize = 1_000;

// ---------------------------------------------------------------------------------------------
// The aggregate, as in the peer study: Open / Hold / Release, one event each, applied in
// `handle` through the EventSink (cqrs-es 0.5.0).

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Escrow {
    opened: bool,
    balance: u64,
    held: u64,
    released: u64,
}

#[derive(Debug, Clone)]
enum EscrowCommand {
    Open { balance: u64 },
    Hold { amount: u64 },
    Release { amount: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum EscrowEvent {
    Opened { balance: u64 },
    Held { amount: u64 },
    Released { amount: u64 },
}

impl DomainEvent for EscrowEvent {
    fn event_type(&self) -> String {
        match self {
            EscrowEvent::Opened { .. } => "Opened",
            EscrowEvent::Held { .. } => "Held",
            EscrowEvent::Released { .. } => "Released",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EscrowError {
    AlreadyOpen,
    NotOpen,
    ZeroAmount,
    InsufficientFunds { available: u64, requested: u64 },
    ReleaseExceedsHeld { held: u64, requested: u64 },
}

impl std::fmt::Display for EscrowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EscrowError::AlreadyOpen => f.write_str("escrow already open"),
            EscrowError::NotOpen => f.write_str("escrow not open"),
            EscrowError::ZeroAmount => f.write_str("amount must be positive"),
            EscrowError::InsufficientFunds { available, requested } => {
                write!(f, "insufficient funds: available {available}, requested {requested}")
            }
            EscrowError::ReleaseExceedsHeld { held, requested } => {
                write!(f, "release exceeds held: held {held}, requested {requested}")
            }
        }
    }
}

impl std::error::Error for EscrowError {}

impl Escrow {
    fn outstanding(&self) -> u64 {
        self.held - self.released
    }
}

impl Aggregate for Escrow {
    const TYPE: &'static str = "escrow";
    type Command = EscrowCommand;
    type Event = EscrowEvent;
    type Error = EscrowError;
    type Services = ();

    async fn handle(&mut self, command: EscrowCommand, _: &(), sink: &EventSink<Self>) -> Result<(), EscrowError> {
        match command {
            EscrowCommand::Open { balance } => {
                if self.opened {
                    return Err(EscrowError::AlreadyOpen);
                }
                sink.write(EscrowEvent::Opened { balance }, self).await;
            }
            EscrowCommand::Hold { amount } => {
                if !self.opened {
                    return Err(EscrowError::NotOpen);
                }
                if amount == 0 {
                    return Err(EscrowError::ZeroAmount);
                }
                let available = self.balance - self.outstanding();
                if available < amount {
                    return Err(EscrowError::InsufficientFunds { available, requested: amount });
                }
                sink.write(EscrowEvent::Held { amount }, self).await;
            }
            EscrowCommand::Release { amount } => {
                if !self.opened {
                    return Err(EscrowError::NotOpen);
                }
                if amount > self.outstanding() {
                    return Err(EscrowError::ReleaseExceedsHeld { held: self.outstanding(), requested: amount });
                }
                sink.write(EscrowEvent::Released { amount }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: EscrowEvent) {
        match event {
            EscrowEvent::Opened { balance } => {
                self.opened = true;
                self.balance = balance;
            }
            EscrowEvent::Held { amount } => self.held += amount,
            EscrowEvent::Released { amount } => self.released += amount,
        }
    }
}

/// The replay target: every escrow folded in memory, behind a cloneable handle (`QueryReplay`
/// takes the query by value).
#[derive(Clone, Default)]
struct Fold {
    escrows: Arc<Mutex<HashMap<String, Escrow>>>,
    folded: Arc<AtomicU64>,
}

#[async_trait]
impl Query<Escrow> for Fold {
    async fn dispatch(&self, aggregate_id: &str, events: &[EventEnvelope<Escrow>]) {
        let mut escrows = self.escrows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let escrow = escrows.entry(aggregate_id.to_owned()).or_default();
        for event in events {
            escrow.apply(event.payload.clone());
            self.folded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.

#[derive(Debug, Clone)]
struct Config {
    url: String,
    runs: usize,
    n: usize,
    concurrency: Vec<usize>,
    synchronous_commit: String,
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        url: std::env::var("DATABASE_URL").unwrap_or_default(),
        runs: 3,
        n: 20_000,
        concurrency: vec![1, 8, 32],
        synchronous_commit: "on".to_owned(),
    };
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|first| first == "all" || first == "escrow-commands") {
        args.next();
    }
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database-url" => config.url = value()?,
            "--runs" => config.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--n" => config.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--concurrency" => {
                config.concurrency = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--concurrency: {e}"))?;
            }
            "--synchronous-commit" => config.synchronous_commit = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if config.url.is_empty() {
        return Err("set DATABASE_URL or pass --database-url".to_owned());
    }
    if config.runs == 0 || config.concurrency.is_empty() || config.concurrency.contains(&0) {
        return Err("--runs and --concurrency must be positive".to_owned());
    }
    if config.n < ESCROWS || !(config.n - ESCROWS).is_multiple_of(2) {
        return Err(format!("--n must be {ESCROWS} opens plus an even number of pair commands"));
    }
    if !matches!(config.synchronous_commit.as_str(), "on" | "off") {
        return Err("--synchronous-commit must be on or off".to_owned());
    }
    Ok(config)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let config = parse_args()?;
    let admin_options = PgConnectOptions::from_str(&config.url)?;
    let mut admin = admin_options.connect().await?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?;
    eprintln!("# {version}");
    eprintln!(
        "# cqrs-es 0.5.0, postgres-es 0.5.0, sqlx 0.8.6; n={} runs={} concurrency={:?} synchronous_commit={}",
        config.n, config.runs, config.concurrency, config.synchronous_commit
    );
    let mut replays = Vec::new();
    for &concurrency in &config.concurrency {
        let mut runs = Vec::new();
        for run in 1..=config.runs {
            let name = format!("peer_bench_{}_{}_{}", std::process::id(), concurrency, run);
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
            if config.synchronous_commit == "off" {
                sqlx::query(&format!("ALTER DATABASE {name} SET synchronous_commit = off")).execute(&mut admin).await?;
            }
            let options = admin_options.clone().database(&name);
            let outcome = one_run(&config, &options, &mut admin, concurrency).await;
            drop_database(&mut admin, &name).await?;
            let (timing, replay) = outcome?;
            eprintln!("  run {run}: {}", timing.line());
            eprintln!("  run {run}: {}", replay.line());
            runs.push(timing);
            replays.push(replay);
        }
        println!("{}", median(runs).line());
    }
    println!("{}", median(replays).line());
    admin.close().await?;
    Ok(())
}

/// Not `WITH (FORCE)`: that needs the right to signal every backend, autovacuum's included; a
/// plain `DROP` cancels autovacuum itself. A closed pool's sessions can take a moment to end.
async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<(), BoxError> {
    let mut attempt = 0;
    loop {
        match sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut *admin).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 10 => {
                attempt += 1;
                eprintln!("# DROP DATABASE {name} failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[derive(Debug, Clone)]
struct Timing {
    scenario: &'static str,
    n: usize,
    concurrency: usize,
    seconds: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    extra: String,
}

impl Timing {
    fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        format!(
            "scenario={} n={} concurrency={} seconds={:.3} ops_per_s={:.0} p50_ms={} p99_ms={}{}",
            self.scenario,
            self.n,
            self.concurrency,
            self.seconds,
            self.n as f64 / self.seconds.max(1e-9),
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.extra
        )
    }
}

/// The run with the median time; p50 and p99 are the medians of the runs' p50 and p99.
fn median(mut runs: Vec<Timing>) -> Timing {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let p50 = mid(runs.iter().filter_map(|r| r.p50_ms).collect());
    let p99 = mid(runs.iter().filter_map(|r| r.p99_ms).collect());
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut chosen = runs.swap_remove(runs.len() / 2);
    chosen.p50_ms = p50;
    chosen.p99_ms = p99;
    chosen
}

fn percentile_ms(sorted_micros: &[u64], p: f64) -> Option<f64> {
    if sorted_micros.is_empty() {
        return None;
    }
    let rank = ((p * sorted_micros.len() as f64).ceil() as usize).clamp(1, sorted_micros.len());
    Some(sorted_micros[rank - 1] as f64 / 1000.0)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn escrow_id(i: usize) -> String {
    format!("escrow-{i:04}")
}

/// postgres-es's `db/init.sql`: the events and snapshots tables, `IF NOT EXISTS`.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS events
     (
         aggregate_type text                         NOT NULL,
         aggregate_id   text                         NOT NULL,
         sequence       bigint CHECK (sequence >= 0) NOT NULL,
         event_type     text                         NOT NULL,
         event_version  text                         NOT NULL,
         payload        json                         NOT NULL,
         metadata       json                         NOT NULL,
         PRIMARY KEY (aggregate_type, aggregate_id, sequence)
     )",
    "CREATE TABLE IF NOT EXISTS snapshots
     (
         aggregate_type   text                                 NOT NULL,
         aggregate_id     text                                 NOT NULL,
         last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
         current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
         payload          json                                 NOT NULL,
         PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
     )",
];

struct Counters {
    next: AtomicUsize,
    conflicts: AtomicU64,
}

async fn one_run(
    config: &Config,
    options: &PgConnectOptions,
    admin: &mut PgConnection,
    concurrency: usize,
) -> Result<(Timing, Timing), BoxError> {
    let mut conn = options.connect().await?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    conn.close().await?;

    let size = u32::try_from(concurrency)?;
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await?;
    let mut held = Vec::new();
    for _ in 0..concurrency {
        held.push(pool.acquire().await?);
    }
    drop(held);
    let cqrs: Arc<PostgresCqrs<Escrow>> = Arc::new(postgres_cqrs(pool.clone(), vec![], ()));
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut *admin).await {
        eprintln!("# warning: CHECKPOINT failed: {e}");
    }

    let counters = Arc::new(Counters { next: AtomicUsize::new(0), conflicts: AtomicU64::new(0) });
    let pairs = (config.n - ESCROWS) / 2;
    let started = Instant::now();
    let mut results = phase(&cqrs, &counters, concurrency, ESCROWS, |i| {
        vec![(escrow_id(i), EscrowCommand::Open { balance: OPEN_MINOR_UNITS })]
    })
    .await?;
    counters.next.store(0, Ordering::SeqCst);
    results.extend(
        phase(&cqrs, &counters, concurrency, pairs, |pair| {
            let id = escrow_id((splitmix64(pair as u64) % ESCROWS as u64) as usize);
            vec![
                (id.clone(), EscrowCommand::Hold { amount: HOLD_MINOR_UNITS }),
                (id, EscrowCommand::Release { amount: HOLD_MINOR_UNITS }),
            ]
        })
        .await?,
    );
    let seconds = started.elapsed().as_secs_f64();

    let mut latencies: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    latencies.sort_unstable();
    let rejected: usize = results.iter().map(|r| r.1).sum();
    let event_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await?;

    // Every escrow loaded through the run's store against a plain fold of its rows.
    let store = PersistedEventStore::<_, Escrow>::new_event_store(PostgresEventRepository::new(pool.clone()));
    let mut state_mismatch = 0;
    let mut balances_ok = 0;
    for i in 0..ESCROWS {
        let id = escrow_id(i);
        let mut context = store.load_aggregate(&id).await.map_err(|e| format!("load {id}: {e}"))?;
        let loaded = context.aggregate().clone();
        let rows =
            sqlx::query("SELECT payload FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence")
                .bind(Escrow::TYPE)
                .bind(&id)
                .fetch_all(&pool)
                .await?;
        let mut folded = Escrow::default();
        for row in rows {
            let payload: serde_json::Value = row.try_get(0)?;
            folded.apply(serde_json::from_value(payload)?);
        }
        if loaded != folded {
            state_mismatch += 1;
        }
        if folded.opened && folded.balance == OPEN_MINOR_UNITS && folded.held == folded.released {
            balances_ok += 1;
        }
    }
    let timing = Timing {
        scenario: "escrow-commands",
        n: config.n,
        concurrency,
        seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        extra: format!(
            " conflicts_retried={} rejected={rejected} event_rows={event_rows} state_mismatch={state_mismatch}/{ESCROWS} \
             balances_ok={balances_ok}/{ESCROWS}",
            counters.conflicts.load(Ordering::Relaxed)
        ),
    };

    // replay-all: QueryReplay::replay_all into the in-memory fold.
    let fold = Fold::default();
    let replay = QueryReplay::new(PostgresEventRepository::new(pool.clone()), fold.clone());
    let started = Instant::now();
    replay.replay_all().await.map_err(|e| format!("replay_all: {e}"))?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let folded = fold.folded.load(Ordering::Relaxed);
    let aggregates = fold.escrows.lock().map(|m| m.len()).unwrap_or(0);
    let replay = Timing {
        scenario: "replay-all",
        n: usize::try_from(folded)?,
        concurrency: 1,
        seconds: replay_seconds,
        p50_ms: None,
        p99_ms: None,
        extra: format!(" unit=events aggregates={aggregates} folded={folded}"),
    };
    pool.close().await;
    Ok((timing, replay))
}

/// C tasks take items `0..count` from the shared counter; each item is a list of commands run
/// in order. Returns each task's latencies (µs) and its rejected commands.
async fn phase(
    cqrs: &Arc<PostgresCqrs<Escrow>>,
    counters: &Arc<Counters>,
    concurrency: usize,
    count: usize,
    commands: fn(usize) -> Vec<(String, EscrowCommand)>,
) -> Result<Vec<(Vec<u64>, usize)>, BoxError> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (cqrs, counters) = (cqrs.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rejected = 0;
            loop {
                let item = counters.next.fetch_add(1, Ordering::Relaxed);
                if item >= count {
                    break;
                }
                for (id, command) in commands(item) {
                    let started = Instant::now();
                    let mut ok = false;
                    for _ in 0..=CONFLICT_RETRIES_MAX {
                        match cqrs.execute(&id, command.clone()).await {
                            Ok(()) => {
                                ok = true;
                                break;
                            }
                            Err(AggregateError::AggregateConflict) => {
                                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("# rejected {id} {command:?}: {e}");
                                break;
                            }
                        }
                    }
                    if ok {
                        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                    } else {
                        rejected += 1;
                    }
                }
            }
            (latencies, rejected)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await?);
    }
    Ok(results)
}
