//! The write-side benchmark (issue 3): the peer study's workload
//! (`../shared/research/peer-cqrs-es-baseline.md`) driven through [`Executor::execute`], no HTTP.
//!
//! One run, on a fresh database migrated with [`command_svc::migrate`]:
//! - `parties` deposits of 1 000 000.00 EUR (`Command::Deposit`, as finance): the peer's `Open`;
//! - then `pairs` pairs, each (hold, release) of 2.50 EUR on the party `splitmix64(pair) % parties`:
//!   hold = `PayoutCommand::Request` as that party (a client; it debits `Available` into
//!   `PayoutsInFlight`, the balance read `FOR UPDATE`), release = `PayoutCommand::Fail` on the same
//!   payout as finance (the money comes back).
//!
//! C tasks take deposits, then pairs, from a shared counter; a pair runs in order in one task,
//! and every command is committed before the next. Each command writes exactly one event, so
//! n = parties + 2 × pairs (20 000 by default, like the peer). The C connections are opened
//! before the clock starts; the run starts after a `CHECKPOINT`. The checks after each run are
//! untimed: event rows, every party's balance back where it started, the balance table equal to
//! the fold of the log, the hash chains intact. Loading everything back (`read_log` in pages,
//! folded with `Marketplace::apply`) and `verify_all` are timed after each run.
//!
//! Also `raw-insert-1row-txn`: `BEGIN; INSERT one row; COMMIT`, n times at each concurrency, the
//! normalisation baseline of the peer study.
//!
//! Output: one `scenario=… n=… concurrency=… seconds=… ops_per_s=… p50_ms=… p99_ms=…` line per
//! configuration on stdout (the run with the median time; p50 and p99 are medians over the
//! runs, as in the peer study), every run on stderr. `bench/run.sh` turns both sides into a table.
//!
//! ```text
//! DATABASE_URL=postgres://…/dscm cargo run --release -p command-svc --bin bench -- \
//!     [--runs 3] [--parties 1000] [--pairs 9500] [--concurrency 1,8,32] [--idempotency both|off|on]
//!     [--scenarios commands,raw] [--retries-max N] [--profile] [--synchronous-commit on|off]
//! ```
//! `DATABASE_URL` names any database its role can connect to; the role needs CREATEDB (each run
//! creates and drops its own database) and, for `CHECKPOINT`, `pg_checkpoint` (else it is
//! skipped with a warning). `--profile` samples `pg_stat_activity` during each run and prints
//! `pg_stat_statements` (if the cluster loads it) afterwards; it perturbs the timings.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use command_svc::clock::SystemClock;
use command_svc::metrics::Metrics;
use command_svc::settings::CommandSettings;
use command_svc::uow::{Answer, Executed, Executor, IdempotencyKey, RequestMeta};
use domain::ctx::CommissionSchedule;
use domain::funds::{Deposit, DepositCommand, Payout, PayoutCommand};
use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId, PayoutId};
use domain::ledger::{LedgerAccount, Provider};
use domain::{Actor, Aggregate, Command, Currency, Event, Marketplace, Money, Role, StreamId};
use event_store::Committed;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

/// 1 000 000.00 EUR: each party's opening deposit (the peer's `Open`).
const DEPOSIT_MINOR_UNITS: u64 = 100_000_000;
/// 2.50 EUR: each hold and release.
const HOLD_MINOR_UNITS: u64 = 250;
/// Events per `read_log` page when loading everything back.
const REPLAY_PAGE_SIZE: i64 = 1_000;
/// How many times a run's database is dropped before giving up.
const DROP_DATABASE_ATTEMPTS_MAX: u32 = 10;
/// How often `--profile` samples `pg_stat_activity`.
const PROFILE_SAMPLE_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
struct Config {
    url: String,
    runs: usize,
    parties: usize,
    pairs: usize,
    concurrency: Vec<usize>,
    idempotency: Vec<bool>,
    commands: bool,
    raw: bool,
    retries_max: u32,
    profile: bool,
    /// `on` (PostgreSQL's default, durable) or `off`, set on every database the benchmark creates.
    synchronous_commit: String,
}

impl Config {
    fn n(&self) -> usize {
        self.parties + 2 * self.pairs
    }

    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Config> {
        let mut config = Config {
            url: std::env::var("DATABASE_URL").unwrap_or_default(),
            runs: 3,
            parties: 1_000,
            pairs: 9_500,
            concurrency: vec![1, 8, 32],
            idempotency: vec![false, true],
            commands: true,
            raw: true,
            retries_max: CommandSettings::default().retries_max,
            profile: false,
            synchronous_commit: "on".to_owned(),
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--database-url" => config.url = value()?,
                "--runs" => config.runs = value()?.parse().context("--runs")?,
                "--parties" => config.parties = value()?.parse().context("--parties")?,
                "--pairs" => config.pairs = value()?.parse().context("--pairs")?,
                "--retries-max" => config.retries_max = value()?.parse().context("--retries-max")?,
                "--concurrency" => {
                    config.concurrency =
                        value()?.split(',').map(str::parse).collect::<Result<_, _>>().context("--concurrency")?;
                }
                "--idempotency" => {
                    config.idempotency = match value()?.as_str() {
                        "both" => vec![false, true],
                        "off" => vec![false],
                        "on" => vec![true],
                        other => bail!("--idempotency {other:?}: expected both, off or on"),
                    };
                }
                "--scenarios" => {
                    let list = value()?;
                    let names: Vec<&str> = list.split(',').collect();
                    if let Some(unknown) = names.iter().find(|s| !matches!(**s, "commands" | "raw")) {
                        bail!("--scenarios: unknown {unknown:?} (commands, raw)");
                    }
                    config.commands = names.contains(&"commands");
                    config.raw = names.contains(&"raw");
                }
                "--profile" => config.profile = true,
                "--synchronous-commit" => {
                    config.synchronous_commit = value()?;
                    ensure!(
                        matches!(config.synchronous_commit.as_str(), "on" | "off"),
                        "--synchronous-commit must be on or off"
                    );
                }
                "-h" | "--help" => {
                    println!(
                        "bench [--database-url URL] [--runs 3] [--parties 1000] [--pairs 9500] [--concurrency 1,8,32] \
                         [--idempotency both|off|on] [--scenarios commands,raw] [--retries-max N] [--profile] \
                         [--synchronous-commit on|off]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(!config.url.is_empty(), "set DATABASE_URL or pass --database-url");
        ensure!(config.runs >= 1, "--runs must be at least 1");
        ensure!(config.parties >= 1, "--parties must be at least 1");
        ensure!(!config.concurrency.is_empty() && !config.concurrency.contains(&0), "--concurrency must be positive");
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse(std::env::args().skip(1))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(run_all(config))
}

async fn run_all(config: Config) -> anyhow::Result<()> {
    let admin_options = PgConnectOptions::from_str(&config.url).context("DATABASE_URL")?;
    let mut admin = admin_options.connect().await.context("connecting with DATABASE_URL")?;
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?;
    let settings: String = sqlx::query_scalar(
        "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings
         WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'wal_sync_method')",
    )
    .fetch_one(&mut admin)
    .await?;
    eprintln!("# {version}");
    eprintln!("# {settings}");
    eprintln!(
        "# n={} ({} deposits + {} hold/release pairs), runs={}, concurrency={:?}, retries_max={}, \
         synchronous_commit={} on the benchmark's databases",
        config.n(),
        config.parties,
        config.pairs,
        config.runs,
        config.concurrency,
        config.retries_max,
        config.synchronous_commit
    );
    let mut bench = Bench { config: config.clone(), admin, admin_options, next_db: 0 };

    let mut replays = Vec::new();
    let mut verifies = Vec::new();
    if config.commands {
        for &idempotency in &config.idempotency {
            for &concurrency in &config.concurrency {
                let mut runs = Vec::new();
                for run in 1..=config.runs {
                    let outcome = bench.commands_run(concurrency, idempotency).await?;
                    eprintln!("  run {run}: {}", outcome.line());
                    replays.push(outcome.replay.clone());
                    verifies.push(outcome.verify.clone());
                    runs.push(outcome);
                }
                println!("{}", median_of(runs).line());
            }
        }
        println!("{}", median_by_seconds(replays).line());
        println!("{}", median_by_seconds(verifies).line());
    }
    if config.raw {
        bench.raw_inserts().await?;
    }
    Ok(())
}

struct Bench {
    config: Config,
    admin: PgConnection,
    admin_options: PgConnectOptions,
    next_db: usize,
}

/// One timed run's figures.
#[derive(Debug, Clone)]
struct Timing {
    scenario: String,
    labels: String,
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
        let ops = if self.seconds > 0.0 { self.n as f64 / self.seconds } else { 0.0 };
        format!(
            "scenario={}{} n={} concurrency={} seconds={:.3} ops_per_s={ops:.0} p50_ms={} p99_ms={}{}",
            self.scenario,
            self.labels,
            self.n,
            self.concurrency,
            self.seconds,
            ms(self.p50_ms),
            ms(self.p99_ms),
            self.extra
        )
    }
}

/// The run with the median time, with p50 and p99 replaced by the medians over the runs.
fn median_of(runs: Vec<CommandsRun>) -> Timing {
    let timings: Vec<Timing> = runs.into_iter().map(|r| r.timing).collect();
    median_by_seconds(timings)
}

fn median_by_seconds(mut timings: Vec<Timing>) -> Timing {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let p50 = median(timings.iter().filter_map(|t| t.p50_ms).collect());
    let p99 = median(timings.iter().filter_map(|t| t.p99_ms).collect());
    timings.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let mut chosen = timings.swap_remove(timings.len() / 2);
    chosen.p50_ms = p50;
    chosen.p99_ms = p99;
    chosen
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted_micros: &[u64], p: f64) -> Option<f64> {
    if sorted_micros.is_empty() {
        return None;
    }
    let rank = ((p * sorted_micros.len() as f64).ceil() as usize).clamp(1, sorted_micros.len());
    Some(sorted_micros[rank - 1] as f64 / 1000.0)
}

/// The peer's pseudo-random pick: splitmix64 of the pair index.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct CommandsRun {
    timing: Timing,
    replay: Timing,
    verify: Timing,
}

impl CommandsRun {
    fn line(&self) -> String {
        format!(
            "{} | replay {:.3}s ({:.0} events/s), verify_all {:.3}s",
            self.timing.line(),
            self.replay.seconds,
            self.replay.n as f64 / self.replay.seconds.max(1e-9),
            self.verify.seconds
        )
    }
}

/// What every task of a run shares.
struct Shared {
    executor: Executor,
    parties: Vec<PartyId>,
    finance: PartyId,
    idempotency: bool,
    /// Makes keys and deposit references unique to the run.
    tag: String,
    next: AtomicUsize,
}

/// What one task saw.
#[derive(Default)]
struct TaskResult {
    latencies_micros: Vec<u64>,
    failures: Vec<String>,
}

impl Bench {
    /// A fresh, empty database for one run, and options to connect to it.
    async fn create_database(&mut self) -> anyhow::Result<(String, PgConnectOptions)> {
        self.next_db += 1;
        let name = format!("dscm_bench_{}_{}", std::process::id(), self.next_db);
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut self.admin)
            .await
            .context("CREATE DATABASE")?;
        if self.config.synchronous_commit == "off" {
            sqlx::query(AssertSqlSafe(format!("ALTER DATABASE {name} SET synchronous_commit = off")))
                .execute(&mut self.admin)
                .await?;
        }
        Ok((name.clone(), self.admin_options.clone().database(&name)))
    }

    /// Drops a run's database once its pool is closed. Not `WITH (FORCE)`: that needs the right
    /// to signal every backend, autovacuum's included; a plain `DROP` cancels autovacuum itself.
    /// A closed pool's sessions can take a moment to end, hence the retries.
    async fn drop_database(&mut self, name: &str) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            let dropped =
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut self.admin).await;
            match dropped {
                Ok(_) => return Ok(()),
                Err(e) if attempt < DROP_DATABASE_ATTEMPTS_MAX => {
                    attempt += 1;
                    eprintln!("# DROP DATABASE {name} failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("DROP DATABASE"),
            }
        }
    }

    async fn checkpoint(&mut self) {
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut self.admin).await {
            eprintln!("# warning: CHECKPOINT failed ({e}); grant pg_checkpoint to the role for steadier runs");
        }
    }

    /// A pool of exactly `size` connections, all open.
    async fn open_pool(options: &PgConnectOptions, size: usize) -> anyhow::Result<PgPool> {
        let size_u32 = u32::try_from(size).context("pool size")?;
        let pool = PgPoolOptions::new()
            .max_connections(size_u32)
            .min_connections(size_u32)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await
            .context("connecting the pool")?;
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(pool.acquire().await.context("opening a pool connection")?);
        }
        drop(held);
        Ok(pool)
    }

    async fn commands_run(&mut self, concurrency: usize, idempotency: bool) -> anyhow::Result<CommandsRun> {
        let (db, options) = self.create_database().await?;
        let result = self.commands_run_in(&options, &db, concurrency, idempotency).await;
        self.drop_database(&db).await?;
        result
    }

    async fn commands_run_in(
        &mut self,
        options: &PgConnectOptions,
        db: &str,
        concurrency: usize,
        idempotency: bool,
    ) -> anyhow::Result<CommandsRun> {
        let config = self.config.clone();
        {
            let pool = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
            command_svc::migrate(&pool).await.context("migrate")?;
            pool.close().await;
        }
        let pool = Self::open_pool(options, concurrency).await?;
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared {
            executor: Executor {
                pool: pool.clone(),
                clock: Arc::new(SystemClock),
                schedule: CommissionSchedule::default(),
                retries_max: config.retries_max,
                metrics: metrics.clone(),
            },
            parties: (0..config.parties).map(|_| PartyId(Uuid::new_v4())).collect(),
            finance: PartyId(Uuid::new_v4()),
            idempotency,
            tag: db.to_owned(),
            next: AtomicUsize::new(0),
        });
        self.checkpoint().await;
        let profiler = if config.profile { Some(Profiler::start(options, db).await?) } else { None };

        let started = Instant::now();
        let mut results = drive(&shared, concurrency, config.parties, deposit).await?;
        shared.next.store(0, Ordering::SeqCst);
        results.extend(drive(&shared, concurrency, config.pairs, hold_and_release).await?);
        let seconds = started.elapsed().as_secs_f64();

        if let Some(profiler) = profiler {
            profiler.finish(options).await?;
        }
        let mut latencies: Vec<u64> = results.iter().flat_map(|r| r.latencies_micros.iter().copied()).collect();
        latencies.sort_unstable();
        let failures: Vec<&String> = results.iter().flat_map(|r| &r.failures).collect();
        if let Some(first) = failures.first() {
            eprintln!("# {} commands failed; the first: {first}", failures.len());
        }
        let retries = metrics.retries.load(Ordering::Relaxed);
        let checks = check(&pool, &shared, config.n()).await?;
        pool.close().await;

        let n = config.n();
        let timing = Timing {
            scenario: "dscm-commands".to_owned(),
            labels: format!(" idempotency={}", if idempotency { "on" } else { "off" }),
            n,
            concurrency,
            seconds,
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
            extra: format!(" retries={retries} failed={} {}", failures.len(), checks.summary),
        };
        Ok(CommandsRun { timing, replay: checks.replay, verify: checks.verify })
    }

    async fn raw_inserts(&mut self) -> anyhow::Result<()> {
        let n = self.config.n();
        let (db, options) = self.create_database().await?;
        let result = async {
            let mut conn = options.connect().await?;
            sqlx::query(
                "CREATE TABLE raw_rows (id BIGINT PRIMARY KEY, aggregate_id TEXT NOT NULL, payload JSONB NOT NULL)",
            )
            .execute(&mut conn)
            .await?;
            for &concurrency in &self.config.concurrency.clone() {
                let mut runs = Vec::new();
                for run in 1..=self.config.runs {
                    sqlx::query("TRUNCATE raw_rows").execute(&mut conn).await?;
                    self.checkpoint().await;
                    let timing = raw_run(&options, concurrency, n).await?;
                    eprintln!("  run {run}: {}", timing.line());
                    runs.push(timing);
                }
                println!("{}", median_by_seconds(runs).line());
            }
            conn.close().await?;
            anyhow::Ok(())
        }
        .await;
        self.drop_database(&db).await?;
        result
    }
}

/// C tasks take items `0..count` from the shared counter and run `work` on each.
async fn drive<F, Fut>(
    shared: &Arc<Shared>,
    concurrency: usize,
    count: usize,
    work: F,
) -> anyhow::Result<Vec<TaskResult>>
where
    F: Fn(Arc<Shared>, usize) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<Duration, String>>> + Send,
{
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = TaskResult::default();
            loop {
                let item = shared.next.fetch_add(1, Ordering::Relaxed);
                if item >= count {
                    break result;
                }
                for outcome in work(shared.clone(), item).await {
                    match outcome {
                        Ok(latency) => {
                            result.latencies_micros.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
                        }
                        Err(failure) => result.failures.push(failure),
                    }
                }
            }
        }));
    }
    let mut results = Vec::with_capacity(concurrency);
    for task in tasks {
        results.push(task.await.context("a benchmark task panicked")?);
    }
    Ok(results)
}

async fn deposit(shared: Arc<Shared>, item: usize) -> Vec<Result<Duration, String>> {
    let external_ref = format!("{}-deposit-{item}", shared.tag);
    let cmd = Command::Deposit(
        DepositId::of(Provider::Stripe, &external_ref),
        DepositCommand::RecordCaptured {
            party: shared.parties[item],
            amount: Money { minor_units: DEPOSIT_MINOR_UNITS, currency: Currency::Eur },
            provider: Provider::Stripe,
            external_ref,
        },
    );
    let finance = Actor { party: shared.finance, role: Role::Finance };
    vec![execute(&shared, cmd, finance, &format!("deposit-{item}")).await]
}

async fn hold_and_release(shared: Arc<Shared>, pair: usize) -> Vec<Result<Duration, String>> {
    let party = shared.parties[(splitmix64(pair as u64) % shared.parties.len() as u64) as usize];
    let payout = PayoutId(Uuid::new_v4());
    let hold = Command::Payout(
        payout,
        PayoutCommand::Request {
            amount: Money { minor_units: HOLD_MINOR_UNITS, currency: Currency::Eur },
            provider: Provider::Stripe,
        },
    );
    let release = Command::Payout(payout, PayoutCommand::Fail { reason: "benchmark release".to_owned() });
    let held = execute(&shared, hold, Actor { party, role: Role::Client }, &format!("hold-{pair}")).await;
    if held.is_err() {
        return vec![held];
    }
    let finance = Actor { party: shared.finance, role: Role::Finance };
    vec![held, execute(&shared, release, finance, &format!("release-{pair}")).await]
}

/// One command through the unit of work, as the HTTP layer runs it (minus HTTP): a fresh
/// command id, the answer body built from what was committed, and (if on) an idempotency key.
async fn execute(shared: &Shared, cmd: Command, actor: Actor, name: &str) -> Result<Duration, String> {
    let key = shared.idempotency.then(|| IdempotencyKey {
        scope: actor.party.to_string(),
        key: format!("{}-{name}", shared.tag),
        request_hash: Sha256::digest(serde_json::to_vec(&cmd).unwrap_or_default()).to_vec(),
    });
    let meta = RequestMeta {
        command_id: Uuid::new_v4(),
        correlation_id: Uuid::new_v4(),
        recorded_actor: format!("{}:{}", actor.role.as_str(), actor.party),
    };
    let command_id = meta.command_id;
    let respond = move |committed: &Committed| Answer { status: 201, body: answer_body(command_id, committed) };
    let started = Instant::now();
    let outcome = shared.executor.execute(cmd, actor, &meta, key.as_ref(), &respond).await;
    let latency = started.elapsed();
    match outcome {
        Ok(Executed::Committed { committed, .. }) if committed.events.len() == 1 => Ok(latency),
        Ok(Executed::Committed { committed, .. }) => {
            Err(format!("{name}: {} events, expected 1", committed.events.len()))
        }
        Ok(Executed::Replayed(_)) => Err(format!("{name}: replayed, expected a new commit")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// The body the HTTP layer stores and answers with (see `http::answer_body`).
fn answer_body(command_id: Uuid, committed: &Committed) -> Vec<u8> {
    let events: Vec<serde_json::Value> = committed
        .events
        .iter()
        .map(|e| {
            json!({
                "position": e.position, "aggregate_type": e.aggregate_type, "aggregate_id": e.aggregate_id,
                "sequence": e.sequence, "event_id": e.event_id, "event_type": e.event_type,
                "event_version": e.event_version, "payload": e.payload,
            })
        })
        .collect();
    let body = json!({ "command_id": command_id, "last_position": committed.last_position, "events": events });
    serde_json::to_vec(&body).unwrap_or_default()
}

struct Checks {
    summary: String,
    replay: Timing,
    verify: Timing,
}

/// The untimed checks of a run, and the timed load-back and verification.
async fn check(pool: &PgPool, shared: &Shared, n: usize) -> anyhow::Result<Checks> {
    let event_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?;
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(pool).await?;

    let mut balances_ok = 0;
    for party in &shared.parties {
        let balance: Option<i64> =
            sqlx::query_scalar("SELECT balance FROM ledger_balances WHERE account = $1 AND currency = 'EUR'")
                .bind(LedgerAccount::Available { party: *party }.to_string())
                .fetch_optional(pool)
                .await?;
        if balance == i64::try_from(DEPOSIT_MINOR_UNITS).ok() {
            balances_ok += 1;
        }
    }

    // Load everything back: the whole log in pages, folded.
    let started = Instant::now();
    let mut market = Marketplace::new(0);
    let mut after = 0;
    loop {
        let page = event_store::read_log(pool, after, REPLAY_PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for stored in page {
            let stream = stream_of(&stored.aggregate_type, &stored.aggregate_id)?;
            let event = Event::from_stored(stream, stored.payload)
                .with_context(|| format!("event at position {} does not parse", stored.position))?;
            market.apply(&event);
        }
    }
    let replay_seconds = started.elapsed().as_secs_f64();
    let folded = market.log.len();
    let aggregates = market.deposits.len() + market.payouts.len() + market.jobs.len() + market.escrows.len();

    let fold_ok = market.ledger.check().is_ok() && ledger_table(pool).await? == ledger_fold(&market);

    let started = Instant::now();
    let report = event_store::verify_all(pool).await?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let intact = report.is_intact() && report.events_checked == n as u64;

    let summary = format!(
        "event_rows={event_rows} outbox_rows={outbox_rows} balances_ok={balances_ok}/{} fold={} verify={}",
        shared.parties.len(),
        if fold_ok { "ok" } else { "MISMATCH" },
        if intact { "intact" } else { "BROKEN" },
    );
    let replay = Timing {
        scenario: "replay-all".to_owned(),
        labels: String::new(),
        n: folded,
        concurrency: 1,
        seconds: replay_seconds,
        p50_ms: None,
        p99_ms: None,
        extra: format!(" unit=events aggregates={aggregates} folded={folded} page={REPLAY_PAGE_SIZE}"),
    };
    let verify = Timing {
        scenario: "verify-all".to_owned(),
        labels: String::new(),
        n: usize::try_from(report.events_checked).unwrap_or(0),
        concurrency: 1,
        seconds: verify_seconds,
        p50_ms: None,
        p99_ms: None,
        extra: format!(" unit=events aggregates={} intact={intact}", report.aggregates_checked),
    };
    Ok(Checks { summary, replay, verify })
}

fn stream_of(aggregate_type: &str, aggregate_id: &str) -> anyhow::Result<StreamId> {
    let id: Uuid = aggregate_id.parse().with_context(|| format!("aggregate id {aggregate_id:?}"))?;
    Ok(match aggregate_type {
        domain::job::Job::TYPE => StreamId::Job(JobId(id)),
        domain::escrow::Escrow::TYPE => StreamId::Escrow(JobId(id)),
        domain::challenge::Challenge::TYPE => StreamId::Challenge(ChallengeId(id)),
        domain::dispute::Dispute::TYPE => StreamId::Dispute(DisputeId(id)),
        domain::worker::Worker::TYPE => StreamId::Worker(PartyId(id)),
        Deposit::TYPE => StreamId::Deposit(DepositId(id)),
        Payout::TYPE => StreamId::Payout(PayoutId(id)),
        other => bail!("unknown aggregate type {other:?}"),
    })
}

/// `ledger_balances`, non-zero rows.
async fn ledger_table(pool: &PgPool) -> anyhow::Result<BTreeMap<(String, String), i128>> {
    let rows = sqlx::query("SELECT account, currency, balance FROM ledger_balances WHERE balance <> 0")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok(((r.try_get("account")?, r.try_get("currency")?), i128::from(r.try_get::<i64, _>("balance")?))))
        .collect()
}

/// The fold's balances of the accounts `ledger_balances` holds (those decisions read as facts:
/// available, per party; ADR 0004), non-zero, keyed like the table.
fn ledger_fold(market: &Marketplace) -> BTreeMap<(String, String), i128> {
    market
        .ledger
        .balances()
        .filter(|(account, _, b)| *b != 0 && matches!(account, domain::ledger::LedgerAccount::Available { .. }))
        .map(|(account, currency, b)| ((account.to_string(), currency.code().to_owned()), b))
        .collect()
}

/// `BEGIN; INSERT one row; COMMIT`, n times from C tasks.
async fn raw_run(options: &PgConnectOptions, concurrency: usize, n: usize) -> anyhow::Result<Timing> {
    let pool = Bench::open_pool(options, concurrency).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO raw_rows (id, aggregate_id, payload) VALUES ($1, $2, $3)")
                    .bind(i64::try_from(i).unwrap_or(i64::MAX))
                    .bind(format!("escrow-{:04}", i % 1000))
                    .bind(json!({"Held": {"amount": HOLD_MINOR_UNITS}}))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                latencies.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.extend(task.await.context("a raw insert task panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_rows").fetch_one(&pool).await?;
    pool.close().await;
    ensure!(usize::try_from(rows).ok() == Some(n), "raw_rows holds {rows} rows, expected {n}");
    latencies.sort_unstable();
    Ok(Timing {
        scenario: "raw-insert-1row-txn".to_owned(),
        labels: String::new(),
        n,
        concurrency,
        seconds,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        extra: " unit=rows".to_owned(),
    })
}

/// `--profile`: where the run's sessions are, sampled from `pg_stat_activity`, and (if the
/// cluster loads `pg_stat_statements`) the statements by total time.
struct Profiler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<(usize, HashMap<String, usize>)>>,
}

impl Profiler {
    async fn start(options: &PgConnectOptions, db: &str) -> anyhow::Result<Profiler> {
        let mut conn = options.connect().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_flag, db) = (stop.clone(), db.to_owned());
        let task = tokio::spawn(async move {
            let mut samples = 0;
            let mut counts: HashMap<String, usize> = HashMap::new();
            while !stop_flag.load(Ordering::Relaxed) {
                let rows = sqlx::query(
                    "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'on CPU') AS wait,
                            left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS query
                     FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                )
                .bind(&db)
                .fetch_all(&mut conn)
                .await?;
                for r in rows {
                    let state: Option<String> = r.try_get("state")?;
                    let state = state.unwrap_or_default();
                    let key = if state == "active" {
                        format!("active {} | {}", r.try_get::<String, _>("wait")?, r.try_get::<String, _>("query")?)
                    } else {
                        format!("{state} (last: {})", r.try_get::<String, _>("query")?)
                    };
                    *counts.entry(key).or_default() += 1;
                }
                samples += 1;
                tokio::time::sleep(PROFILE_SAMPLE_INTERVAL).await;
            }
            conn.close().await?;
            Ok((samples, counts))
        });
        Ok(Profiler { stop, task })
    }

    async fn finish(self, options: &PgConnectOptions) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, counts) = self.task.await.context("the profiler panicked")??;
        let total: usize = counts.values().sum();
        let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
        sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        eprintln!(
            "# profile: {samples} samples of pg_stat_activity, {total} session observations; share of observations:"
        );
        for (what, count) in sorted.iter().take(18) {
            eprintln!("#   {:5.1}%  {what}", 100.0 * *count as f64 / total.max(1) as f64);
        }
        let mut conn = options.connect().await?;
        let statements = sqlx::query(
            "SELECT calls, total_exec_time, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS query
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY total_exec_time DESC LIMIT 15",
        )
        .fetch_all(&mut conn)
        .await;
        match statements {
            Ok(rows) => {
                eprintln!("# pg_stat_statements (server time; includes lock waits and, for COMMIT, the WAL flush):");
                eprintln!("#   {:>7} {:>10} {:>8}  query", "calls", "total_ms", "mean_ms");
                for r in rows {
                    eprintln!(
                        "#   {:>7} {:>10.1} {:>8.3}  {}",
                        r.try_get::<i64, _>("calls")?,
                        r.try_get::<f64, _>("total_exec_time")?,
                        r.try_get::<f64, _>("mean_exec_time")?,
                        r.try_get::<String, _>("query")?
                    );
                }
            }
            Err(e) => {
                eprintln!("# pg_stat_statements unavailable ({e}); start the cluster with DSCM_PG_BENCH_STATEMENTS=1")
            }
        }
        conn.close().await?;
        Ok(())
    }
}
