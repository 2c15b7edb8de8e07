//! The read-side benchmark (issue 4): command → read-API latency at a steady rate, and the
//! projection's replay rate, against the platform in process (real PostgreSQL, real tansu, the
//! outbox relay and the projection consumer as `serve` runs them).
//!
//! ```text
//! cargo run --release -p tests --bin read_latency -- [--secs 20] [--rates 50,200] [--replay-events 20000]
//! ```
//!
//! Load: open loop, one `POST /v1/jobs` (one event, `JobPosted`) every 1/rate s, each in its own
//! task. Per command, two latencies from the moment its POST is sent:
//! - `min_position`: until `GET /v1/jobs/{id}?min_position=<last_position>` answers 200 (a 503
//!   is retried at once and counted);
//! - `polled`: until the job appears in `GET /v1/jobs?limit=100` (newest first, no
//!   `min_position`), which one poller reads every 5 ms for all commands in flight (the load
//!   of the measurement does not grow with the rate).
//!
//! Replay: a fresh database filled through [`command_svc::uow::Executor::execute`] (jobs from
//! deposit to settlement, one command per transaction, real reactions and facts) with at least
//! `--replay-events` events, then [`projection_svc::replay::replay`] over it.
//!
//! Needs `DATABASE_URL` (a role with CREATEDB) and `KAFKA_BROKERS` (else `infra/pg.sh` and
//! `infra/kafka.sh` are started). Databases are created per run and dropped at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use command_svc::clock::ManualClock;
use command_svc::uow::{Answer, ExecError, Executed, RequestMeta};
use domain::digest::Digest;
use domain::funds::DepositCommand;
use domain::ids::{DepositId, JobId, PartyId};
use domain::job::{JobCommand, ResultValue, WorkloadSpec, commitment_for};
use domain::ledger::Provider;
use domain::policy::{TaskClass, Verification, VerificationPolicy};
use domain::{Actor, Command, Currency, Money, Role};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tests::api::Api;
use tests::db::TestDb;
use tests::kafka::shared_brokers;
use tests::platform::{Options, Platform, T0};
use tokio::task::JoinSet;
use uuid::Uuid;

/// How often the single poller reads the job list.
const POLL_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug)]
struct Args {
    secs: u64,
    rates: Vec<u64>,
    replay_events: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args { secs: 20, rates: vec![50, 200], replay_events: 20_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => args.secs = value.parse()?,
            "--rates" => args.rates = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--replay-events" => args.replay_events = value.parse()?,
            other => anyhow::bail!("unknown flag {other}; see the module documentation"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = args()?;
    let brokers = shared_brokers();
    let platform = Platform::start(Options {
        manual_clock: None,
        scheduler_tick_ms: command_svc::settings::SchedulerToggle::default().tick_ms,
        ..Options::new(brokers.clone())
    })
    .await;
    let settings = pg_settings(&platform.pool).await?;
    let kafka = projection_svc::settings::KafkaSettings::new("");
    println!("# read_latency: DSCM platform in process (command-svc serve + projection-svc serve), release build");
    println!("# PostgreSQL: {settings}");
    println!("#   the infra/pg.sh test cluster: fsync=off, no durability: commit latency is not a durable one");
    println!(
        "# Kafka: tansu 0.6.0 at {brokers} (memory storage); relay poll 100 ms idle, linger 2 ms; consumer batch ≤ {} msgs / {} ms",
        kafka.batch_size_max, kafka.batch_wait_ms
    );
    println!("# machine: {} cores (shared); {} s per rate; command = POST /v1/jobs (1 event)", cores(), args.secs);
    println!();

    let (client, _) = platform.writes.issue_key(&platform.admin_key, "client", "bench client", None).await;
    println!(
        "| target/s | achieved/s | commands | POST p50 / p99 ms | min_position→200 p50 / p99 / max ms | 503s | polled (no min_position) p50 / p99 / max ms | unseen |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rate in &args.rates {
        let row = run_rate(&platform, &client, *rate, Duration::from_secs(args.secs)).await;
        println!("{row}");
    }
    platform.shutdown().await;

    println!();
    let replay = replay_rate(args.replay_events).await?;
    println!("{replay}");
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

async fn pg_settings(pool: &PgPool) -> anyhow::Result<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || COALESCE(unit, '') FROM pg_settings
          WHERE name IN ('server_version', 'fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers',
                         'max_connections', 'wal_level')
          ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
}

/// One command's measurements.
#[derive(Debug, Default, Clone)]
struct Sample {
    post: Duration,
    min_position: Duration,
    retries_503: u32,
}

async fn run_rate(platform: &Platform, client: &str, rate: u64, length: Duration) -> String {
    // The poller: every 5 ms the newest 100 jobs; the first time each is seen.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let poller = {
        let (reads, key, seen) = (platform.reads.clone(), platform.admin_key.clone(), seen.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop_rx.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                let page = reads.get(Some(&key), "/v1/jobs?limit=100").await;
                let now = Instant::now();
                if let Ok(mut seen) = seen.lock() {
                    for item in page.items() {
                        if let Some(id) = item["job_id"].as_str() {
                            seen.entry(id.to_owned()).or_insert(now);
                        }
                    }
                }
            }
        })
    };

    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let count = (length.as_secs_f64() * rate as f64) as u64;
    let started = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..count {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let (writes, reads, key) = (platform.writes.clone(), platform.reads.clone(), client.to_owned());
        tasks.spawn(async move { one_command(&writes, &reads, &key).await });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        samples.push(done.expect("command task"));
    }
    let elapsed = started.elapsed();
    // Let the poller see the last ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unseen =
            samples.iter().filter(|(id, _, _)| seen.lock().map(|s| !s.contains_key(id)).unwrap_or(true)).count();
        if unseen == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let _ = poller.await;

    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut polled = Vec::new();
    let mut unseen = 0;
    for (id, sent, _) in &samples {
        match seen.get(id) {
            Some(at) => polled.push(at.saturating_duration_since(*sent)),
            None => unseen += 1,
        }
    }
    let posts: Vec<Duration> = samples.iter().map(|(_, _, s)| s.post).collect();
    let min_positions: Vec<Duration> = samples.iter().map(|(_, _, s)| s.min_position).collect();
    let retries: u32 = samples.iter().map(|(_, _, s)| s.retries_503).sum();
    format!(
        "| {rate} | {:.1} | {} | {} | {} | {retries} | {} | {unseen} |",
        samples.len() as f64 / elapsed.as_secs_f64(),
        samples.len(),
        stats(&posts, false),
        stats(&min_positions, true),
        stats(&polled, true),
    )
}

/// POSTs a job, then reads it with `min_position`; returns (job id, when the POST was sent, sample).
async fn one_command(writes: &Api, reads: &Api, client: &str) -> (String, Instant, Sample) {
    let body = json!({"class": "dscm_verified", "reward_per_replica": {"minor_units": 100, "currency": "EUR"},
                      "task_count": 1, "workload": {"name": "bench"}});
    let sent = Instant::now();
    let posted = writes.command(client, "/v1/jobs", &body).await;
    let post = sent.elapsed();
    assert_eq!(posted.event_types(), ["JobPosted"], "one event per command");
    let job = posted.body["job_id"].as_str().expect("job_id").to_owned();
    let path = format!("/v1/jobs/{job}?min_position={}", posted.last_position());
    let mut retries_503 = 0;
    loop {
        let read = reads.get(Some(client), &path).await;
        match read.status {
            StatusCode::OK => break,
            StatusCode::SERVICE_UNAVAILABLE => retries_503 += 1,
            other => panic!("GET {path}: {other} {:#}", read.body),
        }
    }
    (job, sent, Sample { post, min_position: sent.elapsed(), retries_503 })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(samples: &[Duration], with_max: bool) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (ms(percentile(&sorted, 0.50)), ms(percentile(&sorted, 0.99)));
    if with_max {
        format!("{p50:.0} / {p99:.0} / {:.0}", ms(sorted.last().copied().unwrap_or_default()))
    } else {
        format!("{p50:.1} / {p99:.1}")
    }
}

// ---------------------------------------------------------------------------------------------
// Replay rate.

/// Fills a fresh database with at least `target` events through the Executor, then replays.
async fn replay_rate(target: usize) -> anyhow::Result<String> {
    let db = TestDb::create("replay").await;
    let pool = PgPool::connect(&db.url).await?;
    command_svc::migrate(&pool).await?;
    let clock = Arc::new(ManualClock::new(T0));
    let settings = command_svc::settings::Settings {
        http: command_svc::settings::HttpSettings::default(),
        database: command_svc::settings::DatabaseSettings {
            url: command_svc::settings::Secret::new(db.url.clone()),
            max_connections: 8,
        },
        commands: command_svc::settings::CommandSettings::default(),
        scheduler: command_svc::settings::SchedulerToggle { enabled: false, tick_ms: 500, auto_payout: false },
        kafka: None,
    };
    let executor = command_svc::state(pool.clone(), clock.clone(), &settings).executor;
    let started = Instant::now();
    let events = std::cell::Cell::new(0usize);
    let commands = std::cell::Cell::new(0usize);
    let run = async |cmd: Command, actor: Actor| -> anyhow::Result<()> {
        let id = Uuid::new_v4();
        let meta = RequestMeta { command_id: id, correlation_id: id, recorded_actor: format!("bench:{}", actor.party) };
        let respond = |_: &event_store::Committed| Answer { status: 200, body: Vec::new() };
        match executor.execute(cmd, actor, &meta, None, &respond).await {
            Ok(Executed::Committed { committed, .. }) => {
                events.set(events.get() + committed.events.len());
                commands.set(commands.get() + 1);
                Ok(())
            }
            Ok(Executed::Replayed(_)) => anyhow::bail!("unexpected replay"),
            Err(ExecError::Domain(refusal)) => anyhow::bail!("refused: {refusal:?}"),
            Err(e) => Err(anyhow::anyhow!("{e:?}")),
        }
    };
    let actor = |n: u128, role| Actor { party: PartyId(Uuid::from_u128(n)), role };
    let finance = actor(1, Role::Finance);
    let clients: Vec<Actor> = (10..20).map(|n| actor(n, Role::Client)).collect();
    let workers: Vec<Actor> = (20..26).map(|n| actor(n, Role::Worker)).collect();
    let eur = |n| Money { minor_units: n, currency: Currency::Eur };
    for (i, party) in clients.iter().chain(&workers).enumerate() {
        let deposit = DepositCommand::RecordCaptured {
            party: party.party,
            amount: eur(100_000_000),
            provider: Provider::Manual,
            external_ref: format!("seed-{i}"),
        };
        run(Command::Deposit(DepositId(Uuid::from_u128(100 + i as u128)), deposit), finance).await?;
    }
    let policy = VerificationPolicy {
        replication: 3,
        quorum: 2,
        verification: Verification::Exact,
        window_secs: 60,
        collateral_pct: 10,
        slash_pct: 30,
    };
    let mut j: usize = 0;
    while events.get() < target {
        let client = clients[j % clients.len()];
        let job = JobId(Uuid::from_u128(1_000_000 + j as u128));
        let post = JobCommand::Post {
            job,
            class: TaskClass::DscmVerified,
            policy,
            reward_per_replica: eur(1_000),
            task_count: 1,
            workload: WorkloadSpec { name: "bench".into(), params: String::new(), input_digest: None },
            expires_in_secs: 86_400,
        };
        run(Command::Job(job, post), client).await?;
        run(Command::Job(job, JobCommand::Fund), client).await?;
        // The third replica disagrees and is outvoted (slashed); the crew rotates, so no
        // worker's run of valid results grows long enough for adaptive replication to drop a slot.
        let crew: Vec<Actor> = (0..3).map(|k| workers[(j + k) % workers.len()]).collect();
        let result = |k: usize| ResultValue { digest: Digest([if k == 2 { 8 } else { 7 }; 32]), metric_micros: None };
        let salt = Digest([9; 32]);
        for (k, w) in crew.iter().enumerate() {
            run(Command::Job(job, JobCommand::ClaimTask { task: Some(0) }), *w).await?;
            let commitment = commitment_for(job, 0, w.party, &result(k), salt);
            run(Command::Job(job, JobCommand::CommitResult { task: 0, commitment }), *w).await?;
        }
        for (k, w) in crew.iter().enumerate() {
            run(Command::Job(job, JobCommand::RevealResult { task: 0, result: result(k), salt }), *w).await?;
        }
        clock.advance_secs(61);
        run(Command::Job(job, JobCommand::CloseChallengeWindow), Actor::SYSTEM).await?;
        j += 1;
    }
    let written = started.elapsed();
    let report = projection_svc::replay::replay(
        &pool,
        &projection_svc::settings::ReplaySettings { page_size: 1_000, drop_grace_ms: 0, progress: false },
    )
    .await?;
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}.rm_events", report.schema)))
            .fetch_one(&pool)
            .await?;
    anyhow::ensure!(rows == report.head, "replay projected {rows} events of {}", report.head);
    pool.close().await;
    drop(db);
    Ok(format!(
        "| replay | events | jobs (deposit → settled) | written through the Executor | replay seconds | events/s |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | projection_svc::replay::replay, page 1000 | {} | {j} | {} commands in {:.1} s ({:.0} events/s) | {:.2} | {:.0} |",
        report.events,
        commands.get(),
        written.as_secs_f64(),
        events.get() as f64 / written.as_secs_f64(),
        report.elapsed.as_secs_f64(),
        report.events_per_sec
    ))
}
