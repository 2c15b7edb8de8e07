//! The durable scheduler: deadlines fire by themselves when the clock passes them, exactly
//! once, across restarts and with two instances; a challenge holds the release back.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use command_svc::clock::Clock as _;
use command_svc::scheduler::{Scheduler, SchedulerSettings};
use command_svc::uow::{Answer, IdempotencyKey, RequestMeta};
use domain::ledger::LedgerAccount;
use domain::{Actor, Command, Currency};
use serde_json::json;
use sha2::Digest as _;
use support::{App, commitment, hex32, job_body};

fn scheduler(app: &App, auto_payout: bool) -> Scheduler {
    Scheduler {
        executor: app.state.executor.clone(),
        settings: SchedulerSettings { tick: Duration::from_millis(10), batch_max: 100, auto_payout },
    }
}

/// Poll `check` until it holds or 20 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn claim_and_commit(app: &App, job: &str, worker: &str, task: u32, result: u8) {
    let r = app.post(worker, &format!("/v1/jobs/{job}/claims"), json!({"task": task})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let c = commitment(job, task, app.party(worker), result, 5);
    let r = app.post(worker, &format!("/v1/jobs/{job}/tasks/{task}/commit"), json!({"commitment": c})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn reveal(app: &App, job: &str, worker: &str, task: u32, result: u8) {
    let r = app
        .post(
            worker,
            &format!("/v1/jobs/{job}/tasks/{task}/reveal"),
            json!({"result_digest": hex32(result), "salt": hex32(5)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// A funded N=2 job, verified at T0 with a 24 h window.
async fn verified_job(app: &App) -> String {
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2", "worker3", "worker4", "worker5"] {
        app.deposit(w, 10_000).await;
    }
    let job = app.post_job("client", job_body(1_000, 1, 2, 86_400)).await;
    assert_eq!(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await.status, StatusCode::OK);
    claim_and_commit(app, &job, "worker1", 0, 1).await;
    claim_and_commit(app, &job, "worker2", 0, 1).await;
    reveal(app, &job, "worker1", 0, 1).await;
    reveal(app, &job, "worker2", 0, 1).await;
    job
}

async fn available(app: &App, who: &str) -> i64 {
    app.balance(LedgerAccount::Available { party: app.party(who) }, Currency::Eur).await
}

#[sqlx::test(migrations = false)]
async fn money_reaches_the_workers_when_the_window_closes_with_nobody_calling(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    let _job = verified_job(&app).await;
    // One second before the window closes: a full scheduler pass fires nothing.
    app.clock.advance_secs(86_399);
    let early = scheduler(&app, false).run_once().await.expect("pass");
    assert_eq!(early.fired, 0, "nothing is due before closes_at");
    assert_eq!(available(&app, "worker1").await, 10_000 - 100, "collateral held, nothing paid yet");
    assert_eq!(app.balance(LedgerAccount::WorkerPending { worker: app.party("worker1") }, Currency::Eur).await, 1_000);

    // From here on nobody calls anything: the scheduler runs in the background.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler(&app, false).run(stopped));
    app.clock.advance_secs(1);
    eventually("the window closed and the workers were paid", || async {
        available(&app, "worker1").await == 10_000 + 1_000 - 80
    })
    .await;
    assert_eq!(available(&app, "worker2").await, 10_000 + 1_000 - 80);
    stop.send(true).expect("stop");
    running.await.expect("scheduler joined");
    let m = app.assert_ledger_balances().await;
    assert!(m.jobs.values().all(|j| j.settled));
    let lag = command_svc::scheduler::lag(&app.pool, app.clock.now().0).await.expect("lag");
    assert_eq!((lag.deadlines_pending, lag.deadlines_overdue), (0, 0), "{lag:?}");
}

#[sqlx::test(migrations = false)]
async fn a_challenge_inside_the_window_holds_the_release_until_it_is_decided(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    let job = verified_job(&app).await;
    let s = scheduler(&app, false);
    s.run_once().await.expect("pass");
    app.clock.advance_secs(3_600);
    let r = app
        .post(
            "client",
            &format!("/v1/jobs/{job}/tasks/0/challenges"),
            json!({"reason": "wrong", "bond": {"minor_units": 1_000, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The window closes (T0 + 24 h) with the challenge open: the deadline is parked, nothing is
    // released. (The re-execution round still has until T0 + 25 h.)
    app.clock.advance_secs(82_800);
    s.run_once().await.expect("pass");
    let lag = command_svc::scheduler::lag(&app.pool, app.clock.now().0).await.expect("lag");
    assert_eq!(lag.deadlines_parked, 1, "{lag:?}");
    assert_eq!(available(&app, "worker1").await, 10_000 - 100);
    // Fresh workers disagree with the accepted result: upheld; the workers' pending goes back.
    for w in ["worker3", "worker4", "worker5"] {
        claim_and_commit(&app, &job, w, 0, 9).await;
    }
    for w in ["worker3", "worker4", "worker5"] {
        reveal(&app, &job, w, 0, 9).await;
    }
    s.run_once().await.expect("pass");
    let m = app.assert_ledger_balances().await;
    assert!(m.jobs.values().all(|j| j.settled), "the released window deadline closed the job");
    // Slashed 30 % of 100 collateral each; nothing earned.
    assert_eq!(available(&app, "worker1").await, 10_000 - 30);
    // The client: 100 000 − 2 000 budget + 2 000 clawed back + 2 × 30 slashed; bond returned.
    assert_eq!(available(&app, "client").await, 100_000 + 60);
}

#[sqlx::test(migrations = false)]
async fn an_expired_claim_is_reassigned_and_dispute_deadlines_resolve(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2", "worker3"] {
        app.deposit(w, 10_000).await;
    }
    let job = app.post_job("client", job_body(1_000, 1, 2, 0)).await;
    assert_eq!(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await.status, StatusCode::OK);
    let s = scheduler(&app, false);
    assert_eq!(app.post("worker1", &format!("/v1/jobs/{job}/claims"), json!({})).await.status, StatusCode::OK);
    app.clock.advance_secs(3_600);
    let pass = s.run_once().await.expect("pass");
    assert_eq!(pass.fired, 1, "the claim expired by itself");
    assert_eq!(available(&app, "worker1").await, 10_000, "collateral returned");
    let early = app.post("worker3", &format!("/v1/jobs/{job}/claims"), json!({})).await;
    assert_eq!(early.status, StatusCode::OK, "the other slot is free: {:?}", early.body);
    app.clock.advance_secs(30);
    // After the cooldown the expired slot goes to another worker; two different answers.
    claim_and_commit(&app, &job, "worker2", 0, 1).await;
    let c = commitment(&job, 0, app.party("worker3"), 2, 5);
    assert_eq!(
        app.post("worker3", &format!("/v1/jobs/{job}/tasks/0/commit"), json!({"commitment": c})).await.status,
        StatusCode::OK
    );
    reveal(&app, &job, "worker2", 0, 1).await;
    reveal(&app, &job, "worker3", 0, 2).await;
    s.run_once().await.expect("pass");
    // Nobody reviews: after 3 600 s the dispute resolves as a refund, after 3 600 more it closes.
    app.clock.advance_secs(3_600);
    assert_eq!(s.run_once().await.expect("pass").fired, 1);
    app.clock.advance_secs(3_600);
    assert_eq!(s.run_once().await.expect("pass").fired, 1);
    let m = app.assert_ledger_balances().await;
    assert!(m.jobs.values().all(|j| j.settled));
    assert_eq!(available(&app, "client").await, 100_000, "refunded in full");
    assert_eq!(available(&app, "worker2").await, 10_000, "collateral back, nothing earned");
}

#[sqlx::test(migrations = false)]
async fn each_deadline_applies_once_across_a_crash_and_two_instances(pool: sqlx::PgPool) {
    let app = Arc::new(App::new(pool).await);
    app.deposit("client", 1_000_000).await;
    for w in ["worker1", "worker2", "worker3", "worker4", "worker5"] {
        app.deposit(w, 100_000).await;
    }
    let mut jobs = Vec::new();
    for _ in 0..6 {
        let job = app.post_job("client", job_body(1_000, 5, 1, 0)).await;
        assert_eq!(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await.status, StatusCode::OK);
        for w in ["worker1", "worker2", "worker3", "worker4", "worker5"] {
            assert_eq!(app.post(w, &format!("/v1/jobs/{job}/claims"), json!({})).await.status, StatusCode::OK);
        }
        jobs.push(job);
    }
    let (a, b) = (scheduler(&app, false), scheduler(&app, false));
    a.project_once().await.expect("project");
    app.clock.advance_secs(3_600);

    // A crash right after a deadline's command committed and before its row was deleted:
    // issue one due deadline's command exactly as the scheduler does, and leave the row.
    let row = sqlx::query_as::<_, (String, serde_json::Value, i64)>(
        "SELECT deadline_id, command, armed_at_position FROM deadlines WHERE deadline_id LIKE 'claim:%' LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .expect("a claim deadline");
    let command: Command = serde_json::from_value(row.1.clone()).expect("command");
    let key = IdempotencyKey {
        scope: "system:scheduler".into(),
        key: format!("{}@{}", row.0, row.2),
        request_hash: sha2::Sha256::digest(row.1.to_string().as_bytes()).to_vec(),
    };
    let meta = RequestMeta {
        command_id: uuid::Uuid::new_v4(),
        correlation_id: uuid::Uuid::new_v4(),
        recorded_actor: "system:scheduler".into(),
    };
    let respond = |c: &event_store::Committed| Answer {
        status: 200,
        body: serde_json::to_vec(&json!({ "last_position": c.last_position })).unwrap_or_default(),
    };
    app.state.executor.execute(command, Actor::SYSTEM, &meta, Some(&key), &respond).await.expect("first firing");

    // Two instances fire at once, before either has projected the crashed command's events
    // (which would simply cancel that deadline): the crashed one must be answered from its
    // idempotency record. Then run until nothing is due.
    let (ra, rb) = tokio::join!(a.fire_due(), b.fire_due());
    assert_eq!(ra.expect("a") + rb.expect("b"), jobs.len() * 5, "every due deadline fired by exactly one instance");
    while a.run_once().await.expect("pass").fired > 0 {}

    // The deadline whose command had committed before the "crash" was answered from its
    // idempotency record, not decided again.
    let replayed = app.state.executor.metrics.replayed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(replayed, 1, "the crashed deadline was replayed, not re-decided");
    let log = app.log().await;
    let expired = log.iter().filter(|e| e.event_type() == "ClaimExpired").count();
    assert_eq!(expired, jobs.len() * 5, "every claim expired exactly once");
    let mut seen = std::collections::BTreeSet::new();
    for e in &log {
        if let domain::Event::Job(job, domain::job::JobEvent::ClaimExpired { task, worker, .. }) = e {
            assert!(seen.insert((*job, *task, *worker)), "claim {job}/{task}/{worker} expired twice");
        }
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deadlines WHERE deadline_id LIKE 'claim:%'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
    app.assert_ledger_balances().await;
}

#[sqlx::test(migrations = false)]
async fn released_earnings_become_one_payout_request_each(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    let _job = verified_job(&app).await;
    let (a, b) = (scheduler(&app, true), scheduler(&app, true));
    app.clock.advance_secs(86_400);
    let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
    let requested = ra.expect("a").payouts + rb.expect("b").payouts;
    assert_eq!(requested, 2, "one payout per worker");
    assert_eq!(a.run_once().await.expect("again").payouts, 0, "nothing requested twice");
    // Net earnings (1 000 − 80) are in flight; collateral stays available for the next job.
    assert_eq!(available(&app, "worker1").await, 10_000);
    assert_eq!(app.balance(LedgerAccount::PayoutsInFlight, Currency::Eur).await, 2 * 920);
    let log = app.log().await;
    assert_eq!(log.iter().filter(|e| e.event_type() == "PayoutRequested").count(), 2);
    app.assert_ledger_balances().await;
}
