//! End to end, through real HTTP only: command-svc and projection-svc running in process on real
//! ports, against a fresh PostgreSQL database and a real tansu broker.
//!
//! 1. A job's whole life — deposit, post (N=3, M=2, 24 h window), fund, three claims, commits,
//!    reveals (one dishonest), verified — then the manual clock moved past the window and the
//!    scheduler alone closing it and releasing the money; the read API (read-your-writes with
//!    `min_position`) shows the job settled, balances equal to `ledger_balances` and to the fold
//!    of the log, the dishonest worker slashed, and the job's history equal to the event store.
//! 2. The broker away (stopped and restarted empty, or frozen mid-stream and thawed): commands
//!    are still accepted; when it is back the read API catches up, shows every command's effect
//!    once, and the read models equal a clean replay row for row.
//!
//! Each test has its own database, topic prefix and consumer group, so they run in parallel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::api::{Api, Reply};
use tests::kafka::{PrivateBroker, shared_brokers, unique};
use tests::platform::{Options, Platform, status_of};
use tests::truth::{self, available, history_item_key, history_key};
use tests::{eventually, init_tracing};

/// How long the read side may take to show something without `min_position`.
const CATCH_UP: Duration = Duration::from_secs(60);

const WINDOW_SECS: u64 = 86_400;
const REWARD: u64 = 10_000;

fn deposit_body(party: &str, minor_units: u64) -> Value {
    json!({"party_id": party, "amount": {"minor_units": minor_units, "currency": "EUR"},
           "provider": "manual", "external_ref": unique("wire")})
}

/// Who takes part, with the keys the admin API issued.
#[derive(Debug)]
struct Parties {
    finance: String,
    auditor: String,
    client: (String, String),
    workers: Vec<(String, String)>,
}

async fn parties(p: &Platform, workers: usize) -> Parties {
    let w = &p.writes;
    let admin = &p.admin_key;
    let (finance, _) = w.issue_key(admin, "finance", "e2e finance", None).await;
    let (auditor, _) = w.issue_key(admin, "auditor", "e2e auditor", None).await;
    let client = w.issue_key(admin, "client", "e2e client", None).await;
    let mut all = Vec::new();
    for i in 1..=workers {
        all.push(w.issue_key(admin, "worker", &format!("e2e worker {i}"), None).await);
    }
    Parties { finance, auditor, client, workers: all }
}

/// Claims a replica of `job` as `worker`, commits `result`, returns the task.
async fn claim_and_commit(w: &Api, job: &str, (key, party): &(String, String), result: u8) -> u32 {
    let claimed = w.command(key, &format!("/v1/jobs/{job}/claims"), &json!({})).await;
    let event = claimed.body["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_type"] == "ReplicaClaimed"))
        .unwrap_or_else(|| panic!("no ReplicaClaimed in {:#}", claimed.body));
    let task = u32::try_from(event["payload"]["task"].as_u64().expect("task")).expect("u32");
    let job_id = domain::ids::JobId(job.parse().expect("job id"));
    let worker = domain::ids::PartyId(party.parse().expect("party id"));
    let value = domain::job::ResultValue { digest: domain::digest::Digest([result; 32]), metric_micros: None };
    let commitment = domain::job::commitment_for(job_id, task, worker, &value, domain::digest::Digest([7; 32]));
    w.command(key, &format!("/v1/jobs/{job}/tasks/{task}/commit"), &json!({"commitment": commitment.to_hex()})).await;
    task
}

async fn reveal(w: &Api, job: &str, task: u32, (key, _): &(String, String), result: u8) -> Reply {
    let body = json!({"result_digest": hex::encode([result; 32]), "salt": hex::encode([7u8; 32])});
    w.command(key, &format!("/v1/jobs/{job}/tasks/{task}/reveal"), &body).await
}

/// A read with `min_position` answers at once with what the command wrote (no polling).
async fn read_your_write(r: &Api, key: &str, path: &str, command: &Reply) -> Reply {
    let position = command.last_position();
    let sep = if path.contains('?') { '&' } else { '?' };
    let seen = r.read(key, &format!("{path}{sep}min_position={position}")).await;
    let at = seen.projection_position().expect("X-Projection-Position");
    assert!(at >= position, "{path}: answered at {at}, asked for {position}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_deposit_to_settlement_reads_back_through_kafka_and_the_read_api() {
    init_tracing();
    let started = Instant::now();
    let p = Platform::start(Options::new(shared_brokers())).await;
    let (w, r) = (&p.writes, &p.reads);
    let who = parties(&p, 3).await;
    let (client, client_id) = (&who.client.0, &who.client.1);

    // Deposits: the client's money, and each worker's collateral.
    let deposited = w.command(&who.finance, "/v1/deposits", &deposit_body(client_id, 100_000)).await;
    let seen = read_your_write(r, client, "/v1/balances", &deposited).await;
    assert_eq!(seen.items().len(), 1, "{:#}", seen.body);
    assert_eq!(seen.items()[0]["account"], format!("available:{client_id}"));
    assert_eq!(seen.items()[0]["balance"]["minor_units"], 100_000);
    for (key, party) in &who.workers {
        let d = w.command(&who.finance, "/v1/deposits", &deposit_body(party, 1_000)).await;
        let seen = read_your_write(r, key, "/v1/balances", &d).await;
        assert_eq!(available(&balances_of(&seen), party), 1_000);
    }

    // Post (3 replicas, quorum 2, a 24 h window) and fund.
    let posted = w
        .command(
            client,
            "/v1/jobs",
            &json!({"class": "dscm_verified", "reward_per_replica": {"minor_units": REWARD, "currency": "EUR"},
                    "task_count": 1, "workload": {"name": "monte_carlo_pi", "params": "{\"samples\": 1000}"},
                    "policy": {"replication": 3, "quorum": 2, "window_secs": WINDOW_SECS}}),
        )
        .await;
    let job = posted.body["job_id"].as_str().expect("job_id").to_owned();
    let seen = read_your_write(r, client, &format!("/v1/jobs/{job}"), &posted).await;
    assert_eq!(status_of(&seen), "posted", "{:#}", seen.body);
    let funded = w.command(client, &format!("/v1/jobs/{job}/fund"), &json!({})).await;
    let seen = read_your_write(r, client, &format!("/v1/jobs/{job}"), &funded).await;
    assert_eq!((status_of(&seen), &seen.body["funded"]), ("open", &json!(true)), "{:#}", seen.body);

    // A position far in the future: 503 with Retry-After, after the bounded wait.
    let far = funded.last_position() + 1_000_000;
    let behind = r.get(Some(client), &format!("/v1/jobs/{job}?min_position={far}")).await;
    assert_eq!((behind.status, behind.code()), (StatusCode::SERVICE_UNAVAILABLE, "projection.behind"));
    assert!(behind.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()), "{:?}", behind.headers);

    // Three workers claim and commit; two reveal the same result, the third another one.
    let results = [0xAA, 0xAA, 0xBB];
    let mut tasks = Vec::new();
    for (worker, result) in who.workers.iter().zip(results) {
        tasks.push(claim_and_commit(w, &job, worker, result).await);
    }
    assert_eq!(tasks, [0, 0, 0]);
    let mut last = None;
    for (worker, result) in who.workers.iter().zip(results) {
        last = Some(reveal(w, &job, 0, worker, result).await);
    }
    let verified = last.expect("three reveals");
    let types = verified.event_types();
    assert!(
        types.iter().any(|t| t == "TaskVerified") && types.iter().any(|t| t == "ChallengeWindowOpened"),
        "{types:?}"
    );
    let seen = read_your_write(r, client, &format!("/v1/jobs/{job}"), &verified).await;
    assert_eq!(status_of(&seen), "challenge_window", "{:#}", seen.body);
    assert!(seen.body["window_closes_at"].is_string(), "{:#}", seen.body);
    let honest = &who.workers[0];
    let pending = balances_of(&read_your_write(r, &honest.0, "/v1/balances", &verified).await);
    let reward = i128::from(REWARD);
    assert_eq!(pending.get(&(format!("worker_pending:{}", honest.1), "EUR".to_owned())), Some(&reward), "{pending:?}");
    assert_eq!(available(&pending, &honest.1), 0, "nobody is paid before the window closes");

    // Time passes; nobody sends a command: the scheduler closes the window and releases.
    p.manual_clock().advance_secs(WINDOW_SECS + 1);
    let path = format!("/v1/jobs/{job}");
    eventually("the read API to show the job settled", CATCH_UP, || async {
        (status_of(&r.read(client, &path).await) == "settled").then_some(())
    })
    .await;
    let head = p.quiesce(CATCH_UP).await;
    let after_clock_move: Vec<_> =
        truth::stored_log(&p.pool).await.into_iter().filter(|e| e.position > verified.last_position()).collect();
    assert!(!after_clock_move.is_empty());
    for e in &after_clock_move {
        assert!(
            ["system:scheduler", "system:payout-pm"].contains(&e.metadata.actor.as_str()),
            "{} at {} was written by {}, not the scheduler",
            e.event_type,
            e.position,
            e.metadata.actor
        );
    }
    let by_scheduler = |aggregate_type: &str, event_type: &str| {
        after_clock_move.iter().any(|e| {
            (e.aggregate_type.as_str(), e.aggregate_id.as_str(), e.event_type.as_str())
                == (aggregate_type, &job, event_type)
                && e.metadata.actor == "system:scheduler"
        })
    };
    let written: Vec<&str> = after_clock_move.iter().map(|e| e.event_type.as_str()).collect();
    assert!(by_scheduler("job", "JobSettled") && by_scheduler("escrow", "PendingReleased"), "{written:?}");

    // The read API at the head: the job settled, every balance equal to the write side's table
    // and to the fold of the log.
    let at_head = format!("min_position={head}");
    let settled = r.read(client, &format!("/v1/jobs/{job}?{at_head}")).await;
    assert_eq!(status_of(&settled), "settled", "{:#}", settled.body);
    let ledger = truth::fold_balances(&truth::fold(&p.pool).await);
    let table = truth::ledger_table(&p.pool).await;
    assert_eq!(table, truth::available_only(&ledger), "ledger_balances differs from the fold of the log");
    let read_all = truth::read_balances(r, &who.finance, &at_head).await;
    assert_eq!(read_all, ledger, "the read API's ledger differs from the fold of the log");
    assert_eq!(truth::available_only(&read_all), table, "the read API's balances differ from ledger_balances");
    let mut every_party = vec![&who.client];
    every_party.extend(&who.workers);
    for (key, party) in every_party {
        let own = truth::read_balances(r, key, &at_head).await;
        let expected: truth::Balances =
            ledger.iter().filter(|((a, _), _)| a.contains(party.as_str())).map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(own, expected, "party {party}'s own balances");
        assert!(own.contains_key(&(format!("available:{party}"), "EUR".to_owned())), "{own:?}");
    }
    // Collateral 10 % of 10 000 = 1 000; the outvoted worker loses 30 % of it (300) to the
    // client; the client gets 300 and the unspent replica's 10 000 back.
    let dishonest = &who.workers[2].1;
    assert_eq!(available(&read_all, dishonest), 700, "the dishonest worker is slashed");
    assert_eq!(available(&read_all, client_id), 100_000 - 3 * i128::from(REWARD) + 300 + i128::from(REWARD));
    let escrow = r.read_all(client, &format!("/v1/streams/escrow/{job}/events"), &at_head).await;
    let slashed: Vec<&Value> = escrow.iter().filter(|e| e["event_type"] == "CollateralSlashed").collect();
    assert_eq!(slashed.len(), 1, "{escrow:#?}");
    assert_eq!(slashed[0]["payload"]["worker"], json!(dishonest));
    // Released earnings became payout requests (the auto-payout process manager), one per
    // honest worker: 10 000 minus the 8 % commission.
    let payouts = r.read_all(&who.finance, "/v1/payouts", &at_head).await;
    let mut paid: BTreeMap<String, i64> = BTreeMap::new();
    for payout in &payouts {
        *paid.entry(payout["party_id"].as_str().expect("party").to_owned()).or_default() +=
            payout["amount"]["minor_units"].as_i64().expect("amount");
    }
    let expected_paid: BTreeMap<String, i64> = who.workers[..2].iter().map(|(_, p)| (p.clone(), 9_200)).collect();
    assert_eq!(paid, expected_paid, "{payouts:#?}");

    // The job's (and its escrow's) history: every event, in sequence order, positions strictly
    // increasing, equal to the event store's stream.
    for aggregate_type in ["job", "escrow"] {
        let items = r.read_all(&who.auditor, &format!("/v1/streams/{aggregate_type}/{job}/events"), &at_head).await;
        let shown: Vec<_> = items.iter().map(history_item_key).collect();
        let stored = event_store::load_stream(&p.pool, aggregate_type, &job, 0).await.expect("stream");
        assert_eq!(shown, stored.iter().map(history_key).collect::<Vec<_>>(), "{aggregate_type} history");
        assert!(shown.iter().map(|k| k.1).eq(1..=shown.len() as i64), "sequences 1..n");
        assert!(shown.windows(2).all(|w| w[0].0 < w[1].0), "positions strictly increasing");
    }
    assert_eq!(rm_event_count(&p).await, head, "every event projected once");

    p.shutdown().await;
    eprintln!("settlement flow: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_accepted_while_the_broker_is_down_and_the_read_side_catches_up_exactly_once() {
    broker_outage(Outage::StoppedThenRestarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stalled_mid_stream_loses_and_doubles_nothing() {
    broker_outage(Outage::FrozenBriefly).await;
}

/// The outage of the first test, after the read side had consumed events. The local broker keeps
/// its log in memory, so it restarts empty and the relay re-creates the topics; the consumer
/// resumes each partition at the offset PostgreSQL holds from before the outage and would skip
/// the re-created partitions' first messages. The projection's repair pass (projection-svc
/// `repair.rs`) sees the watermark stall behind the event store and fills in from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_consuming_a_broker_that_restarts_empty_loses_nothing() {
    broker_outage(Outage::RestartedEmptyMidStream).await;
}

/// A stall longer than the consumer's `session.timeout.ms` (10 s): librdkafka gives up the
/// session and rejoins, and against tansu 0.6.0 the consumer was seen never to get its
/// partitions back. The repair pass fills the read side in from the event store meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stalled_longer_than_the_session_timeout_loses_nothing() {
    broker_outage(Outage::FrozenLong).await;
}

/// How the broker goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// `infra/kafka.sh stop` before the first event (and before the services start: a consumer
    /// whose first group join is cut by the stop was once seen to come back with no partitions),
    /// `infra/kafka.sh start` after: the broker comes back empty (memory storage).
    StoppedThenRestarted,
    /// The broker process frozen (SIGSTOP) for [`BRIEF_STALL`] after the read side had consumed
    /// events, then thawed (SIGCONT): unreachable for a while, its log and groups intact.
    FrozenBriefly,
    /// Frozen until the relay's round fails (`message.timeout.ms`, 10 s), then thawed.
    FrozenLong,
    /// `infra/kafka.sh stop` after the read side had consumed events, `start` after: empty.
    RestartedEmptyMidStream,
}

/// Shorter than the consumer's session timeout and the relay's message timeout (10 s each).
const BRIEF_STALL: Duration = Duration::from_secs(6);

/// Broker away → commands accepted → broker back → the read side shows every command's effect
/// once, and its read models equal a replay of the event store row for row.
async fn broker_outage(outage: Outage) {
    init_tracing();
    let started = Instant::now();
    let broker = PrivateBroker::start().await;
    let mut options = Options::new(broker.brokers());
    if outage == Outage::StoppedThenRestarted {
        broker.stop().await;
        // Nothing to create topics on: the relay creates them when the broker is back.
        options.create_topics = false;
    }
    let p = Platform::start(options).await;
    let (w, r) = (&p.writes, &p.reads);
    let who = parties(&p, 1).await;
    let (client, client_id) = (&who.client.0, &who.client.1);
    let worker_id = &who.workers[0].1;
    let mut expected_client = 0;

    if outage != Outage::StoppedThenRestarted {
        // The pipeline works, and the read side has consumed from the broker.
        let d = w.command(&who.finance, "/v1/deposits", &deposit_body(client_id, 50_000)).await;
        expected_client += 50_000;
        let seen = read_your_write(r, client, "/v1/balances", &d).await;
        assert_eq!(available(&balances_of(&seen), client_id), expected_client);
    }
    match outage {
        Outage::StoppedThenRestarted => {}
        Outage::FrozenBriefly | Outage::FrozenLong => broker.freeze(),
        Outage::RestartedEmptyMidStream => broker.stop().await,
    }
    let down = Instant::now();

    // Commands only write the outbox: every one is accepted.
    w.command(&who.finance, "/v1/deposits", &deposit_body(client_id, 20_000)).await;
    expected_client += 20_000;
    for n in 0..10 {
        w.command(&who.finance, "/v1/deposits", &deposit_body(client_id, 100 + n)).await;
        expected_client += i128::from(100 + n);
        w.command(&who.finance, "/v1/deposits", &deposit_body(worker_id, 10 + n)).await;
    }
    let posted = w
        .command(
            client,
            "/v1/jobs",
            &json!({"class": "dscm_verified", "reward_per_replica": {"minor_units": 1_000, "currency": "EUR"},
                    "task_count": 2, "workload": {"name": "monte_carlo_pi"}, "policy": {"replication": 3}}),
        )
        .await;
    let job = posted.body["job_id"].as_str().expect("job_id").to_owned();
    let funded = w.command(client, &format!("/v1/jobs/{job}/fund"), &json!({})).await;
    expected_client -= 6_000;
    let last_during_outage = funded.last_position();
    // The read side cannot see them: 503 with Retry-After.
    let behind = r.get(Some(client), &format!("/v1/jobs/{job}?min_position={last_during_outage}")).await;
    assert_eq!(
        (behind.status, behind.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "projection.behind"),
        "{:#}",
        behind.body
    );
    assert!(behind.header("retry-after").is_some());
    if outage == Outage::FrozenBriefly {
        // The outage's length is the test's choice, not a state to wait for.
        tokio::time::sleep(BRIEF_STALL.saturating_sub(down.elapsed())).await;
    } else {
        // The relay notices (its round times out), and says so in /metrics.
        eventually("the relay to report a failed round", CATCH_UP, || async {
            (p.write_metric("dscm_relay_failures_total").await >= 1.0).then_some(())
        })
        .await;
    }
    let down_for = down.elapsed();

    // The broker comes back; more commands.
    match outage {
        Outage::FrozenBriefly | Outage::FrozenLong => broker.thaw(),
        Outage::StoppedThenRestarted | Outage::RestartedEmptyMidStream => broker.restart().await,
    }
    for n in 0..5 {
        w.command(&who.finance, "/v1/deposits", &deposit_body(client_id, 1_000 + n)).await;
        expected_client += i128::from(1_000 + n);
    }
    let head = p.head().await;
    let path = format!("/v1/jobs/{job}");
    let deadline = std::env::var("DSCM_E2E_CATCH_UP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    eventually("the read API to catch up after the broker came back", Duration::from_secs(deadline), || async {
        let seen = r.get(Some(client), &path).await;
        (seen.status == StatusCode::OK && seen.projection_position().is_some_and(|at| at >= head)).then_some(())
    })
    .await;
    let caught_up = down.elapsed();
    let head = p.quiesce(CATCH_UP).await;

    // Every command's effect, nothing doubled.
    let at_head = format!("min_position={head}");
    let job_now = r.read(client, &format!("/v1/jobs/{job}?{at_head}")).await;
    assert_eq!((status_of(&job_now), &job_now.body["funded"]), ("open", &json!(true)));
    let ledger = truth::fold_balances(&truth::fold(&p.pool).await);
    let table = truth::ledger_table(&p.pool).await;
    assert_eq!(table, truth::available_only(&ledger), "ledger_balances differs from the fold of the log");
    let read_all = truth::read_balances(r, &who.finance, &at_head).await;
    assert_eq!(read_all, ledger, "the read API's ledger differs from the fold of the log");
    assert_eq!(truth::available_only(&read_all), table, "the read API's balances differ from ledger_balances");
    assert_eq!(available(&read_all, client_id), expected_client);
    assert_eq!(available(&read_all, worker_id), (10..20).sum::<i128>());
    assert_eq!(rm_event_count(&p).await, head, "every event projected once");

    // The live read models equal a clean replay of the event store, row for row.
    let live = active_dump(&p.pool).await;
    let db = p.shutdown().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let replay = projection_svc::settings::ReplaySettings { page_size: 500, drop_grace_ms: 0, progress: false };
    let report = projection_svc::replay::replay(&pool, &replay).await.expect("replay");
    assert_eq!(report.head, head);
    assert_eq!(active_dump(&pool).await, live, "live read models differ from a replay");
    pool.close().await;
    drop(db);
    eprintln!(
        "broker outage ({outage:?}): {:.1} s down, read side caught up {:.1} s after the outage began, test {:.1} s",
        down_for.as_secs_f64(),
        caught_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn balances_of(reply: &Reply) -> truth::Balances {
    reply
        .items()
        .iter()
        .map(|i| {
            let key = (
                i["account"].as_str().expect("account").to_owned(),
                i["currency"].as_str().expect("currency").to_owned(),
            );
            (key, i128::from(i["balance"]["minor_units"].as_i64().expect("balance")))
        })
        .collect()
}

async fn rm_event_count(p: &Platform) -> i64 {
    let schema = projection_svc::schema::active(&p.pool).await.expect("active").schema;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {schema}.rm_events")))
        .fetch_one(&p.pool)
        .await
        .expect("count")
}

async fn active_dump(pool: &sqlx::PgPool) -> BTreeMap<&'static str, Vec<String>> {
    let schema = projection_svc::schema::active(pool).await.expect("active").schema;
    projection_svc::schema::dump(pool, &schema).await.expect("dump")
}
