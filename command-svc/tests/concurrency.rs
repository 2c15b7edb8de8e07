//! Concurrency: 32 commands at once against one job's escrow. Every one is either applied or
//! answered (never lost), conflicts are retried, and the ledger balances afterwards.

mod support;

use std::sync::Arc;

use axum::http::StatusCode;
use command_svc::auth;
use domain::ledger::LedgerAccount;
use domain::{Currency, Role};
use serde_json::json;
use support::{App, job_body};

#[sqlx::test(migrations = false)]
async fn thirty_two_concurrent_claims_on_one_escrow_lose_nothing(pool: sqlx::PgPool) {
    let app = App::new(pool.clone()).await;
    app.deposit("client", 10_000_000).await;
    // 11 tasks × 3 replicas = 33 slots for 32 workers, collateral 10 % of 1 000 each.
    let job = app.post_job("client", job_body(1_000, 11, 3, 3_600)).await;
    assert_eq!(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await.status, StatusCode::OK);
    let mut workers = Vec::new();
    for i in 0..32 {
        let key = auth::issue_key(&pool, None, Role::Worker, &format!("w{i}")).await.expect("key");
        let r = app
            .post(
                "finance",
                "/v1/deposits",
                json!({"party_id": key.party, "amount": {"minor_units": 5_000, "currency": "EUR"},
                       "provider": "manual", "external_ref": format!("w{i}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        workers.push(key);
    }
    let app = Arc::new(app);
    let mut handles = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let app = app.clone();
        let (key, job) = (w.key.clone(), job.clone());
        handles.push(tokio::spawn(async move {
            let req = axum::http::Request::post(format!("/v1/jobs/{job}/claims"))
                .header("authorization", format!("Bearer {key}"))
                .header("idempotency-key", format!("claim-{i}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .expect("request");
            app.send(req).await
        }));
    }
    let mut ok = 0;
    for h in handles {
        let r = h.await.expect("task");
        match r.status {
            StatusCode::OK => ok += 1,
            other => panic!("a claim was neither applied nor retried to success: {other} {:?}", r.body),
        }
    }
    assert_eq!(ok, 32);
    let retries = app.state.executor.metrics.retries.load(std::sync::atomic::Ordering::Relaxed);
    println!("32 concurrent claims: {retries} retries after conflicts");

    // Every claim holds collateral exactly once.
    let m = app.assert_ledger_balances().await;
    let job_id = domain::ids::JobId(job.parse().expect("uuid"));
    assert_eq!(m.escrows[&job_id].collateral.len(), 32);
    for w in &workers {
        assert_eq!(app.balance(LedgerAccount::WorkerCollateral { worker: w.party }, Currency::Eur).await, 100);
        assert_eq!(app.balance(LedgerAccount::Available { party: w.party }, Currency::Eur).await, 4_900);
    }
    let claimed: usize = m.jobs[&job_id].tasks.iter().map(|t| t.participants.len()).sum();
    assert_eq!(claimed, 32, "each claim is in the job once");
}

#[sqlx::test(migrations = false)]
async fn a_concurrent_duplicate_of_an_in_flight_request_is_answered_409_or_replayed(pool: sqlx::PgPool) {
    let app = Arc::new(App::new(pool).await);
    app.deposit("client", 100_000).await;
    let body = job_body(1_000, 1, 1, 0);
    let (a, b) = tokio::join!(
        app.post_with_key("client", "/v1/jobs", "same-key", body.clone()),
        app.post_with_key("client", "/v1/jobs", "same-key", body.clone())
    );
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&StatusCode::CREATED), "{statuses:?}");
    for r in [&a, &b] {
        assert!(
            r.status == StatusCode::CREATED
                || (r.status == StatusCode::CONFLICT && r.code() == "idempotency.in_flight"),
            "{:?}",
            r.body
        );
    }
    // Whatever the interleaving, exactly one job was posted.
    let posted = app.log().await.iter().filter(|e| e.event_type() == "JobPosted").count();
    assert_eq!(posted, 1);
    if a.status == b.status {
        assert_eq!(a.raw, b.raw, "the replay is byte-identical");
    }
}
