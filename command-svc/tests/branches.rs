//! Every endpoint's success path through HTTP: challenges, disputes with appeal, payouts,
//! cancellation, expiry and the admin deadline commands — each ending with a balanced ledger.

mod support;

use axum::http::StatusCode;
use domain::Currency;
use domain::ledger::LedgerAccount;
use serde_json::{Value, json};
use support::{App, Reply, commitment, hex32, job_body};

fn events_of<'a>(r: &'a Reply, event_type: &str) -> Vec<&'a Value> {
    r.body["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["event_type"] == event_type).collect())
        .unwrap_or_default()
}

async fn ok(r: Reply) -> Reply {
    assert!(r.status.is_success(), "{} {:?}", r.status, r.body);
    r
}

/// Claim `task`, commit `result`, return nothing; reveals come later.
async fn claim_and_commit(app: &App, job: &str, worker: &str, task: u32, result: u8) {
    ok(app.post(worker, &format!("/v1/jobs/{job}/claims"), json!({"task": task})).await).await;
    let c = commitment(job, task, app.party(worker), result, 9);
    ok(app.post(worker, &format!("/v1/jobs/{job}/tasks/{task}/commit"), json!({"commitment": c})).await).await;
}

async fn reveal(app: &App, job: &str, worker: &str, task: u32, result: u8) -> Reply {
    ok(app
        .post(
            worker,
            &format!("/v1/jobs/{job}/tasks/{task}/reveal"),
            json!({"result_digest": hex32(result), "salt": hex32(9)}),
        )
        .await)
    .await
}

#[sqlx::test(migrations = false)]
async fn a_rejected_challenge_forfeits_the_bond_and_the_window_then_pays(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2", "worker3", "worker4", "worker5"] {
        app.deposit(w, 10_000).await;
    }
    let job = app.post_job("client", job_body(1_000, 1, 2, 3_600)).await;
    ok(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await).await;
    claim_and_commit(&app, &job, "worker1", 0, 1).await;
    claim_and_commit(&app, &job, "worker2", 0, 1).await;
    reveal(&app, &job, "worker1", 0, 1).await;
    let verified = reveal(&app, &job, "worker2", 0, 1).await;
    assert_eq!(events_of(&verified, "TaskVerified").len(), 1);

    let challenge = ok(app
        .post(
            "client",
            &format!("/v1/jobs/{job}/tasks/0/challenges"),
            json!({"reason": "looks wrong", "bond": {"minor_units": 1_000, "currency": "EUR"}}),
        )
        .await)
    .await;
    assert_eq!(events_of(&challenge, "ChallengeRecorded").len(), 1);
    // Three fresh workers re-execute and agree with the accepted result.
    for w in ["worker3", "worker4", "worker5"] {
        claim_and_commit(&app, &job, w, 0, 1).await;
    }
    reveal(&app, &job, "worker3", 0, 1).await;
    reveal(&app, &job, "worker4", 0, 1).await;
    let done = reveal(&app, &job, "worker5", 0, 1).await;
    assert_eq!(events_of(&done, "ChallengeRejected").len(), 1, "{:?}", done.body);
    assert_eq!(app.balance(LedgerAccount::PlatformFees, Currency::Eur).await, 1_000, "bond forfeited");

    app.clock.advance_secs(3_600);
    ok(app.post("admin", &format!("/v1/admin/jobs/{job}/close-window"), json!({})).await).await;
    // Workers: collateral back (10 % of 1 000) + 1 000 − 8 % commission.
    assert_eq!(
        app.balance(LedgerAccount::Available { party: app.party("worker1") }, Currency::Eur).await,
        10_000 + 1_000 - 80
    );
    app.assert_ledger_balances().await;
}

#[sqlx::test(migrations = false)]
async fn a_dispute_is_reviewed_resolved_appealed_and_decided_by_another_arbiter(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2"] {
        app.deposit(w, 10_000).await;
    }
    // N=2, M=2 with two different answers: no quorum → a dispute.
    let job = app.post_job("client", job_body(1_000, 1, 2, 0)).await;
    ok(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await).await;
    claim_and_commit(&app, &job, "worker1", 0, 1).await;
    claim_and_commit(&app, &job, "worker2", 0, 2).await;
    reveal(&app, &job, "worker1", 0, 1).await;
    let failed = reveal(&app, &job, "worker2", 0, 2).await;
    let opened = events_of(&failed, "DisputeOpened");
    assert_eq!(opened.len(), 1, "{:?}", failed.body);
    let dispute = opened[0]["aggregate_id"].as_str().expect("dispute id").to_owned();

    ok(app.post("arbiter", &format!("/v1/disputes/{dispute}/review"), json!({})).await).await;
    let not_reviewer =
        app.post("arbiter2", &format!("/v1/disputes/{dispute}/resolve"), json!({"outcome": "refund"})).await;
    assert_eq!(
        (not_reviewer.status, not_reviewer.code()),
        (StatusCode::FORBIDDEN, "dispute.not_the_reviewing_arbiter")
    );
    ok(app
        .post("arbiter", &format!("/v1/disputes/{dispute}/resolve"), json!({"outcome": "split", "client_pct": 50}))
        .await)
    .await;
    ok(app.post("worker1", &format!("/v1/disputes/{dispute}/appeal"), json!({"reason": "my result was right"})).await)
        .await;
    let same =
        app.post("arbiter", &format!("/v1/disputes/{dispute}/appeal-decision"), json!({"outcome": "payout"})).await;
    assert_eq!((same.status, same.code()), (StatusCode::FORBIDDEN, "dispute.same_arbiter_on_appeal"));
    let closed = ok(app
        .post("arbiter2", &format!("/v1/disputes/{dispute}/appeal-decision"), json!({"outcome": "payout"}))
        .await)
    .await;
    assert_eq!(events_of(&closed, "DisputeClosed").len(), 1);
    assert_eq!(events_of(&closed, "JobSettled").len(), 1, "window 0: settles at once");
    // Payout: both workers get their reward minus commission; collateral (100 each) back.
    for w in ["worker1", "worker2"] {
        assert_eq!(
            app.balance(LedgerAccount::Available { party: app.party(w) }, Currency::Eur).await,
            10_000 + 1_000 - 80
        );
    }
    app.assert_ledger_balances().await;
}

#[sqlx::test(migrations = false)]
async fn deadlines_run_through_the_admin_endpoints(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2"] {
        app.deposit(w, 10_000).await;
    }
    let job = app
        .post_job(
            "client",
            json!({
        "class": "dscm_verified", "reward_per_replica": {"minor_units": 1_000, "currency": "EUR"}, "task_count": 2,
        "workload": {"name": "w"}, "expires_in_secs": 7_200, "policy": {"replication": 1, "window_secs": 0}}),
        )
        .await;
    ok(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await).await;
    ok(app.post("worker1", &format!("/v1/jobs/{job}/claims"), json!({"task": 0})).await).await;
    ok(app.post("worker1", &format!("/v1/jobs/{job}/tasks/0/heartbeat"), json!({})).await).await;
    let early = app
        .post(
            "admin",
            &format!("/v1/admin/jobs/{job}/tasks/0/expire-claim"),
            json!({"worker_id": app.party("worker1")}),
        )
        .await;
    assert_eq!((early.status, early.code()), (StatusCode::CONFLICT, "job.claim_still_live"));
    app.clock.advance_secs(3_600);
    let expired = ok(app
        .post(
            "admin",
            &format!("/v1/admin/jobs/{job}/tasks/0/expire-claim"),
            json!({"worker_id": app.party("worker1")}),
        )
        .await)
    .await;
    assert_eq!(events_of(&expired, "CollateralReturned").len(), 1);
    // The cooldown passes; another worker takes the slot and finishes the task.
    app.clock.advance_secs(30);
    claim_and_commit(&app, &job, "worker2", 0, 3).await;
    reveal(&app, &job, "worker2", 0, 3).await;
    // Task 1 is never done: the job expires; task 0 is paid, task 1 refunded.
    app.clock.advance_secs(3_600);
    let ended = ok(app.post("admin", &format!("/v1/admin/jobs/{job}/expire"), json!({})).await).await;
    assert_eq!(events_of(&ended, "JobExpired").len(), 1);
    assert_eq!(events_of(&ended, "JobSettled").len(), 1);
    assert_eq!(
        app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await,
        100_000 - 1_000
    );
    app.assert_ledger_balances().await;
}

#[sqlx::test(migrations = false)]
async fn payouts_complete_or_fail_and_cancel_refunds(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 50_000).await;
    let job = app.post_job("client", job_body(1_000, 1, 1, 0)).await;
    ok(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await).await;
    let cancelled = ok(app.post("client", &format!("/v1/jobs/{job}/cancel"), json!({})).await).await;
    assert_eq!(events_of(&cancelled, "EscrowRefunded").len(), 1);

    let p1 = ok(app
        .post(
            "client",
            "/v1/payouts",
            json!({"amount": {"minor_units": 20_000, "currency": "EUR"}, "provider": "stripe"}),
        )
        .await)
    .await;
    let p2 = ok(app
        .post(
            "client",
            "/v1/payouts",
            json!({"amount": {"minor_units": 10_000, "currency": "EUR"}, "provider": "stripe"}),
        )
        .await)
    .await;
    let (p1, p2) =
        (p1.body["payout_id"].as_str().expect("id").to_owned(), p2.body["payout_id"].as_str().expect("id").to_owned());
    ok(app.post("finance", &format!("/v1/payouts/{p1}/complete"), json!({"provider_ref": "po_1"})).await).await;
    ok(app.post("finance", &format!("/v1/payouts/{p2}/fail"), json!({"reason": "account closed"})).await).await;
    let twice = app.post("finance", &format!("/v1/payouts/{p1}/fail"), json!({"reason": "late"})).await;
    assert_eq!((twice.status, twice.code()), (StatusCode::CONFLICT, "payout.already_finished"));
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await, 30_000);
    let m = app.assert_ledger_balances().await;
    assert_eq!(m.ledger.held_by_platform(Currency::Eur), 30_000, "deposits − completed payouts");

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.raw).expect("utf8");
    assert!(text.contains("dscm_commands_total{outcome=\"accepted\"}"), "{text}");
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(app.get("/nowhere").await.status, StatusCode::NOT_FOUND);
}
