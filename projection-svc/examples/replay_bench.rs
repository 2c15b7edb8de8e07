//! Replay throughput: builds a log of real domain events (jobs from deposit to settlement, run
//! by the in-memory `Marketplace`, one event-store commit per unit of work) in a fresh database,
//! then times `projection-svc replay` on it.
//!
//! ```text
//! DATABASE_URL=postgres://…/dscm cargo run --release -p projection-svc --example replay_bench -- [jobs]
//! ```
//! The role needs CREATEDB; the database `dscm_replay_bench_<pid>` is dropped at the end.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use domain::digest::Digest;
use domain::funds::DepositCommand;
use domain::ids::{DepositId, JobId, PartyId};
use domain::job::{JobCommand, ResultValue, WorkloadSpec, commitment_for};
use domain::ledger::Provider;
use domain::policy::{TaskClass, Verification, VerificationPolicy};
use domain::{Actor, Command, Currency, Event, Marketplace, Money, Role, StreamId, Timestamp};
use event_store::{Commit, EventMetadata, NewEvent, StreamAppend};
use projection_svc::settings::ReplaySettings;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const TASKS: u32 = 2;
const REPLICAS: u8 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: u128 = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(500);
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let name = format!("dscm_replay_bench_{}", std::process::id());
    let mut admin = PgConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
    let (base, _) = url.rsplit_once('/').context("DATABASE_URL has no database name")?;
    let pool = PgPool::connect(&format!("{base}/{name}")).await?;
    let result = run(&pool, jobs).await;
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&mut admin).await?;
    result
}

async fn run(pool: &PgPool, jobs: u128) -> anyhow::Result<()> {
    command_svc::migrate(pool).await?;
    let started = Instant::now();
    let events = write_log(pool, jobs).await?;
    eprintln!("wrote {events} events in {:.1} s", started.elapsed().as_secs_f64());
    let report =
        projection_svc::replay::replay(pool, &ReplaySettings { page_size: 1_000, drop_grace_ms: 0, progress: true })
            .await?;
    println!(
        "replay events={} seconds={:.2} events_per_s={:.0}",
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_sec
    );
    Ok(())
}

/// Units of work from the in-memory marketplace, committed one per transaction.
async fn write_log(pool: &PgPool, jobs: u128) -> anyhow::Result<usize> {
    let mut m = Marketplace::new(7);
    let mut sequences: BTreeMap<StreamId, i64> = BTreeMap::new();
    let mut now = Timestamp(1_795_651_200_000);
    let mut written = 0;
    let actor = |n: u128, role| Actor { party: PartyId(Uuid::from_u128(n)), role };
    let finance = actor(1, Role::Finance);
    let clients: Vec<Actor> = (10..20).map(|n| actor(n, Role::Client)).collect();
    let workers: Vec<Actor> = (20..26).map(|n| actor(n, Role::Worker)).collect();
    let eur = |n| Money { minor_units: n, currency: Currency::Eur };
    let mut run = async |m: &mut Marketplace, cmd: Command, who: Actor, now: &mut Timestamp| -> anyhow::Result<()> {
        *now = now.plus_secs(1);
        let events = m.execute(cmd, who, *now).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        written += events.len();
        commit(pool, &mut sequences, &events, *now).await
    };
    for (i, party) in clients.iter().chain(&workers).enumerate() {
        let deposit = DepositCommand::RecordCaptured {
            party: party.party,
            amount: eur(100_000_000),
            provider: Provider::Manual,
            external_ref: format!("seed-{i}"),
        };
        run(&mut m, Command::Deposit(DepositId(Uuid::from_u128(100 + i as u128)), deposit), finance, &mut now).await?;
    }
    let policy = VerificationPolicy {
        replication: REPLICAS,
        quorum: 2,
        verification: Verification::Exact,
        window_secs: 0,
        collateral_pct: 10,
        slash_pct: 30,
    };
    for j in 0..jobs {
        let client = clients[(j % clients.len() as u128) as usize];
        let job = JobId(Uuid::from_u128(1_000_000 + j));
        let post = JobCommand::Post {
            job,
            class: TaskClass::DscmVerified,
            policy,
            reward_per_replica: eur(1_000),
            task_count: TASKS,
            workload: WorkloadSpec { name: "bench".into(), params: String::new(), input_digest: None },
            expires_in_secs: 86_400,
        };
        run(&mut m, Command::Job(job, post), client, &mut now).await?;
        run(&mut m, Command::Job(job, JobCommand::Fund), client, &mut now).await?;
        for task in 0..TASKS {
            let crew: Vec<Actor> =
                (0..usize::from(REPLICAS)).map(|k| workers[(j as usize + k) % workers.len()]).collect();
            // The third replica disagrees and is outvoted: it keeps every worker's run of valid
            // results short, so adaptive replication never drops a slot.
            let result =
                |k: usize| ResultValue { digest: Digest([if k == 2 { 8 } else { 7 }; 32]), metric_micros: None };
            let salt = Digest([9; 32]);
            for (k, w) in crew.iter().enumerate() {
                run(&mut m, Command::Job(job, JobCommand::ClaimTask { task: Some(task) }), *w, &mut now).await?;
                let commitment = commitment_for(job, task, w.party, &result(k), salt);
                run(&mut m, Command::Job(job, JobCommand::CommitResult { task, commitment }), *w, &mut now).await?;
            }
            for (k, w) in crew.iter().enumerate() {
                let reveal = JobCommand::RevealResult { task, result: result(k), salt };
                run(&mut m, Command::Job(job, reveal), *w, &mut now).await?;
            }
        }
    }
    Ok(written)
}

async fn commit(
    pool: &PgPool,
    sequences: &mut BTreeMap<StreamId, i64>,
    events: &[Event],
    now: Timestamp,
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut streams: Vec<(StreamId, Vec<NewEvent>)> = Vec::new();
    for e in events {
        let new = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: e.event_type().to_owned(),
            event_version: i32::try_from(e.event_version())?,
            payload: e.payload()?,
        };
        match streams.iter_mut().find(|(s, _)| *s == e.stream()) {
            Some((_, list)) => list.push(new),
            None => streams.push((e.stream(), vec![new])),
        }
    }
    let appends = streams
        .into_iter()
        .map(|(stream, events)| {
            let expected = sequences.get(&stream).copied().unwrap_or(0);
            sequences.insert(stream, expected + events.len() as i64);
            StreamAppend {
                aggregate_type: stream.aggregate_type().to_owned(),
                aggregate_id: stream.aggregate_id().to_string(),
                expected_sequence: expected,
                expected_last_hash: None,
                events,
            }
        })
        .collect();
    let id = Uuid::new_v4();
    let metadata = EventMetadata { actor: "bench".into(), command_id: id, correlation_id: id, causation_id: id };
    event_store::commit(
        pool,
        Commit { streams: appends, metadata, recorded_at_unix_micros: now.unix_ms() * 1000, idempotency: None },
    )
    .await?;
    Ok(())
}
