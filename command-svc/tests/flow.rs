//! A job's whole life through the HTTP API against a real PostgreSQL: deposit, post, fund,
//! claim, commit, reveal, window, settle — and the ledger table equals the fold of the log.

mod support;

use axum::http::StatusCode;
use domain::Currency;
use domain::ledger::LedgerAccount;
use serde_json::json;
use support::{App, commitment, hex32, job_body};

async fn claim_commit(app: &App, job: &str, worker: &str, result: u8) -> u32 {
    let r = app.post(worker, &format!("/v1/jobs/{job}/claims"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "claim: {:?}", r.body);
    let claimed = r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_type"] == "ReplicaClaimed")
        .expect("claimed")
        .clone();
    let task = u32::try_from(claimed["payload"]["task"].as_u64().expect("task")).expect("u32");
    let c = commitment(job, task, app.party(worker), result, 7);
    let r = app.post(worker, &format!("/v1/jobs/{job}/tasks/{task}/commit"), json!({"commitment": c})).await;
    assert_eq!(r.status, StatusCode::OK, "commit: {:?}", r.body);
    task
}

async fn reveal(app: &App, job: &str, worker: &str, task: u32, result: u8) -> support::Reply {
    app.post(
        worker,
        &format!("/v1/jobs/{job}/tasks/{task}/reveal"),
        json!({"result_digest": hex32(result), "salt": hex32(7)}),
    )
    .await
}

#[sqlx::test(migrations = false)]
async fn a_job_goes_from_deposit_to_paid_workers_through_the_api(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    for w in ["worker1", "worker2", "worker3"] {
        app.deposit(w, 1_000).await;
    }
    let job = app.post_job("client", job_body(10_000, 1, 3, 86_400)).await;
    let r = app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["last_position"].as_i64().expect("position") > 0);
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await, 70_000);

    // Two honest workers and one dishonest one.
    let t1 = claim_commit(&app, &job, "worker1", 0xAA).await;
    let t2 = claim_commit(&app, &job, "worker2", 0xAA).await;
    let t3 = claim_commit(&app, &job, "worker3", 0xBB).await;
    assert_eq!((t1, t2, t3), (0, 0, 0));
    assert_eq!(reveal(&app, &job, "worker1", 0, 0xAA).await.status, StatusCode::OK);
    assert_eq!(reveal(&app, &job, "worker2", 0, 0xAA).await.status, StatusCode::OK);
    let last = reveal(&app, &job, "worker3", 0, 0xBB).await;
    assert_eq!(last.status, StatusCode::OK, "{:?}", last.body);
    let types: Vec<&str> =
        last.body["events"].as_array().expect("events").iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert!(types.contains(&"TaskVerified") && types.contains(&"ChallengeWindowOpened"), "{types:?}");

    // Nobody is paid before the window closes.
    let w1 = LedgerAccount::Available { party: app.party("worker1") };
    assert_eq!(app.balance(LedgerAccount::WorkerPending { worker: app.party("worker1") }, Currency::Eur).await, 10_000);
    let early = app.post("admin", &format!("/v1/admin/jobs/{job}/close-window"), json!({})).await;
    assert_eq!((early.status, early.code()), (StatusCode::CONFLICT, "job.window_still_open"));

    app.clock.advance_secs(86_400);
    let closed = app.post("admin", &format!("/v1/admin/jobs/{job}/close-window"), json!({})).await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);

    // Collateral 10 % of 10 000 = 1 000; worker3 outvoted: slashed 30 % = 300 to the client.
    // Honest workers: 1 000 back + 10 000 − 8 % commission (800) = 10 200 available.
    assert_eq!(app.balance(w1, Currency::Eur).await, 1_000 + 10_000 - 800);
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("worker3") }, Currency::Eur).await, 700);
    // Client: 100 000 − 30 000 + 300 slash + 10 000 unspent (worker3's replica) refunded.
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await, 80_300);
    assert_eq!(app.balance(LedgerAccount::PlatformFees, Currency::Eur).await, 1_600);
    let m = app.assert_ledger_balances().await;
    assert_eq!(m.ledger.held_by_platform(Currency::Eur), 103_000);
}

#[sqlx::test(migrations = false)]
async fn a_replayed_idempotency_key_returns_the_same_bytes_and_writes_nothing(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    let body = json!({"party_id": app.party("client"), "amount": {"minor_units": 500, "currency": "EUR"},
                      "provider": "manual", "external_ref": "wire-77"});
    let first = app.post_with_key("finance", "/v1/deposits", "dep-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let events = app.event_count().await;
    let again = app.post_with_key("finance", "/v1/deposits", "dep-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.raw, first.raw, "byte-identical answer");
    assert!(again.replayed);
    assert_eq!(app.event_count().await, events, "no new event");

    let mut changed = body;
    changed["amount"]["minor_units"] = json!(501);
    let reused = app.post_with_key("finance", "/v1/deposits", "dep-1", changed).await;
    assert_eq!((reused.status, reused.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency.key_reused"));
    assert_eq!(app.event_count().await, events);
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await, 500);

    // The same capture under another key is recognised by its reference: no second credit.
    let mut same_capture = json!({"party_id": app.party("client"), "amount": {"minor_units": 500, "currency": "EUR"},
                      "provider": "manual", "external_ref": "wire-77"});
    let dup = app.post_with_key("finance", "/v1/deposits", "dep-2", same_capture.take()).await;
    assert_eq!(dup.status, StatusCode::CREATED, "{:?}", dup.body);
    assert_eq!(dup.body["events"].as_array().map(Vec::len), Some(0));
    assert_eq!(app.balance(LedgerAccount::Available { party: app.party("client") }, Currency::Eur).await, 500);
    app.assert_ledger_balances().await;
}

/// (who, path, body, content type, expected status, expected code)
type BadCase = (&'static str, &'static str, Vec<u8>, &'static str, StatusCode, &'static str);

#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_with_a_problem_and_changes_nothing(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 10_000).await;
    let before = app.event_count().await;
    let p = app.party("client");
    let cases: Vec<BadCase> = vec![
        ("finance", "/v1/deposits", b"{not json".to_vec(), "application/json", StatusCode::BAD_REQUEST, "request.malformed_json"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":5,"currency":"EUR"}},"provider":"manual","external_ref":"x","extra":1}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "request.invalid_body"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":-5,"currency":"EUR"}},"provider":"manual","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "request.invalid_body"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":18446744073709551616,"currency":"EUR"}},"provider":"manual","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "request.invalid_body"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":1000000000000001,"currency":"EUR"}},"provider":"manual","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "money.too_large"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":5,"currency":"XBT"}},"provider":"manual","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "money.currency"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":0,"currency":"EUR"}},"provider":"manual","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "deposit.zero_amount"),
        ("finance", "/v1/deposits", format!(r#"{{"party_id":"{p}","amount":{{"minor_units":5,"currency":"EUR"}},"provider":"paypal","external_ref":"x"}}"#).into_bytes(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "request.provider"),
        ("finance", "/v1/deposits", b"{}".to_vec(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "request.unsupported_media_type"),
        ("client", "/v1/jobs", br#"{"class":"dscm_verified","reward_per_replica":{"minor_units":10,"currency":"EUR"},"task_count":0,"workload":{"name":"w"}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "job.task_count"),
        ("client", "/v1/jobs", br#"{"class":"dscm_verified","reward_per_replica":{"minor_units":10,"currency":"EUR"},"task_count":1,"workload":{"name":"w"},"policy":{"replication":6}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "policy.replication"),
        ("client", "/v1/jobs", br#"{"class":"dscm_verified","reward_per_replica":{"minor_units":10,"currency":"EUR"},"task_count":1,"workload":{"name":"w"},"policy":{"window_secs":604801}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "policy.window"),
        ("client", "/v1/jobs", br#"{"class":"nope","reward_per_replica":{"minor_units":10,"currency":"EUR"},"task_count":1,"workload":{"name":"w"}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "job.class"),
        ("client", "/v1/jobs", br#"{"class":"dscm_verified","reward_per_replica":{"minor_units":1000000000000000,"currency":"EUR"},"task_count":1000,"workload":{"name":"w"}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "job.budget_overflow"),
        ("client", "/v1/jobs", br#"{"class":"dscm_verified","reward_per_replica":{"minor_units":10,"currency":"EUR"},"task_count":1,"workload":{"name":"Bad Name!"}}"#.to_vec(), "application/json", StatusCode::UNPROCESSABLE_ENTITY, "job.workload_name"),
        ("client", "/v1/jobs/not-a-uuid/fund", b"".to_vec(), "application/json", StatusCode::NOT_FOUND, "request.not_found"),
        ("client", "/v1/jobs/00000000-0000-0000-0000-000000000001/fund", b"".to_vec(), "application/json", StatusCode::NOT_FOUND, "job.not_found"),
        ("client", "/v1/payouts", br#"{"amount":{"minor_units":20000,"currency":"EUR"},"provider":"stripe"}"#.to_vec(), "application/json", StatusCode::CONFLICT, "payout.insufficient_funds"),
        ("client", "/v1/payouts", br#"{"amount":{"minor_units":100,"currency":"USD"},"provider":"stripe"}"#.to_vec(), "application/json", StatusCode::CONFLICT, "payout.insufficient_funds"),
    ];
    for (i, (who, path, body, content_type, status, code)) in cases.into_iter().enumerate() {
        let key = format!("bad-{i}");
        let r = app.post_raw(Some(who), path, Some(&key), content_type, body).await;
        assert_eq!((r.status, r.code()), (status, code), "case {i} {path}: {:?}", r.body);
        assert_eq!(r.content_type, "application/problem+json", "case {i}");
        assert!(r.body["type"].as_str().is_some_and(|t| t.starts_with("urn:dscm:problem:")), "case {i}");
    }
    let missing_key = app.post_raw(Some("client"), "/v1/jobs", None, "application/json", b"{}".to_vec()).await;
    assert_eq!((missing_key.status, missing_key.code()), (StatusCode::BAD_REQUEST, "idempotency.key_missing"));
    let no_auth = app.post_raw(None, "/v1/jobs", Some("k"), "application/json", b"{}".to_vec()).await;
    assert_eq!((no_auth.status, no_auth.code()), (StatusCode::UNAUTHORIZED, "auth.unauthenticated"));
    assert_eq!(app.event_count().await, before, "no refused request wrote an event");
    app.assert_ledger_balances().await;
}
