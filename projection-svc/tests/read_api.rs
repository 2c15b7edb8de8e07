//! The read API against real PostgreSQL: role scoping, cursor pagination, the task board,
//! stream histories, problem+json errors, and `min_position` waiting or answering 503.

mod support;

use axum::http::StatusCode;
use projection_svc::Projector;
use serde_json::Value;
use std::collections::BTreeSet;
use support::{Harness, Ids, get, scenario};

async fn projected(pool: sqlx::PgPool) -> (Harness, Ids) {
    let h = Harness::new(pool).await;
    let ids = scenario(&h).await;
    h.project(&mut Projector::default(), 50).await;
    (h, ids)
}

fn ids_of(items: &[Value], key: &str) -> BTreeSet<String> {
    items.iter().filter_map(|i| i[key].as_str().map(str::to_owned)).collect()
}

fn set(items: &[&String]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).clone()).collect()
}

#[sqlx::test(migrations = false)]
async fn each_role_sees_its_own_slice(pool: sqlx::PgPool) {
    let (h, ids) = projected(pool).await;
    let reads = h.reads(100);
    let head = h.head().await;
    let jobs = |who: &'static str| {
        let reads = reads.clone();
        let h = &h;
        async move {
            let r = get(h, &reads, Some(who), "/v1/jobs?limit=100").await;
            assert_eq!(r.status, StatusCode::OK, "{who}: {:?}", r.body);
            assert_eq!(r.position(), Some(head), "X-Projection-Position");
            ids_of(&r.items(), "job_id")
        }
    };
    let all = set(&[&ids.settled_job, &ids.disputed_job, &ids.cancelled_job, &ids.open_job, &ids.posted_job]);
    assert_eq!(jobs("auditor").await, all);
    assert_eq!(jobs("arbiter").await, all);
    let mut own = all.clone();
    own.remove(&ids.posted_job);
    assert_eq!(jobs("client").await, own);
    assert_eq!(jobs("client2").await, set(&[&ids.posted_job]));
    assert_eq!(jobs("worker1").await, set(&[&ids.settled_job, &ids.disputed_job, &ids.open_job]));
    assert_eq!(jobs("worker4").await, set(&[&ids.settled_job]), "re-execution counts as working on it");

    // Details: the owner, not another client (404, no leak); workers without results.
    let detail = get(&h, &reads, Some("client"), &format!("/v1/jobs/{}", ids.settled_job)).await;
    assert_eq!(detail.status, StatusCode::OK);
    assert_eq!(detail.body["status"], "settled");
    assert_eq!(detail.body["reward_per_replica"]["minor_units"], 1_000);
    assert_eq!(detail.body["tasks"][0]["outcome"]["kind"], "verified");
    assert!(detail.body["tasks"][0]["outcome"]["result"].is_object(), "the client sees the result");
    assert!(detail.body["window_closes_at"].is_string());
    let other = get(&h, &reads, Some("client2"), &format!("/v1/jobs/{}", ids.settled_job)).await;
    assert_eq!((other.status, other.code()), (StatusCode::NOT_FOUND, "job.not_found"));
    let worker = get(&h, &reads, Some("worker1"), &format!("/v1/jobs/{}", ids.settled_job)).await;
    assert_eq!(worker.status, StatusCode::OK);
    assert!(!worker.body.to_string().contains("\"result\""), "results hidden from workers: {}", worker.body);
    let board_job = get(&h, &reads, Some("worker5"), &format!("/v1/jobs/{}", ids.open_job)).await;
    assert_eq!(board_job.status, StatusCode::OK, "a job on the board is visible to any worker");
    assert_eq!(board_job.body["tasks"][0]["replicas"][0]["state"], "claimed");
    let forbidden = get(&h, &reads, Some("client"), &format!("/v1/jobs?client={}", h.party("client2"))).await;
    assert_eq!((forbidden.status, forbidden.code()), (StatusCode::FORBIDDEN, "auth.scope_forbidden"));

    // Balances: own by default; finance any party; a client cannot ask for another's.
    let own = get(&h, &reads, Some("client"), "/v1/balances").await;
    let accounts = ids_of(&own.items(), "account");
    assert_eq!(accounts, BTreeSet::from([format!("available:{}", h.party("client"))]));
    let worker_balance = get(&h, &reads, Some("finance"), &format!("/v1/balances?party={}", h.party("worker1"))).await;
    assert!(worker_balance.items().iter().all(|b| b["party_id"] == serde_json::json!(h.party("worker1"))));
    assert!(!worker_balance.items().is_empty());
    let everything = get(&h, &reads, Some("auditor"), "/v1/balances?limit=100").await;
    assert!(ids_of(&everything.items(), "account").contains("platform_fees"));
    let not_yours = get(&h, &reads, Some("worker1"), &format!("/v1/balances?party={}", h.party("worker2"))).await;
    assert_eq!(not_yours.status, StatusCode::FORBIDDEN);

    // Disputes and challenges: the arbiters' queues; parties see theirs.
    let queue = get(&h, &reads, Some("arbiter"), "/v1/disputes?status=closed").await;
    assert_eq!(ids_of(&queue.items(), "dispute_id"), set(&[&ids.dispute]));
    assert_eq!(queue.items()[0]["outcome"]["kind"], "payout");
    assert_eq!(get(&h, &reads, Some("worker2"), "/v1/disputes").await.items().len(), 1);
    assert!(get(&h, &reads, Some("client2"), "/v1/disputes").await.items().is_empty());
    assert!(get(&h, &reads, Some("arbiter"), "/v1/disputes?status=opened").await.items().is_empty());
    let challenges = get(&h, &reads, Some("arbiter"), "/v1/challenges").await;
    assert_eq!(ids_of(&challenges.items(), "challenge_id"), set(&[&ids.challenge]));
    assert_eq!(challenges.items()[0]["bond"]["minor_units"], 1_000);
    assert_eq!(get(&h, &reads, Some("client"), "/v1/challenges").await.items().len(), 1);
    assert!(get(&h, &reads, Some("client2"), "/v1/challenges").await.items().is_empty());

    // Reputation: oneself, or an arbiter; not another worker, not a client.
    let w1 = h.party("worker1");
    let mine = get(&h, &reads, Some("worker1"), &format!("/v1/workers/{w1}/reputation")).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(mine.body["score"].as_i64().unwrap_or(0) > 0);
    assert_eq!(get(&h, &reads, Some("arbiter"), &format!("/v1/workers/{w1}/reputation")).await.status, StatusCode::OK);
    assert_eq!(
        get(&h, &reads, Some("worker2"), &format!("/v1/workers/{w1}/reputation")).await.status,
        StatusCode::FORBIDDEN
    );
    let client = get(&h, &reads, Some("client"), &format!("/v1/workers/{w1}/reputation")).await;
    assert_eq!((client.status, client.code()), (StatusCode::FORBIDDEN, "auth.role_forbidden"));

    // Payouts: own; finance all, filtered.
    let mine = get(&h, &reads, Some("worker1"), "/v1/payouts").await;
    assert_eq!(ids_of(&mine.items(), "payout_id"), set(&[&ids.failed_payout]));
    assert_eq!(mine.items()[0]["failure_reason"], "account closed");
    let completed = get(&h, &reads, Some("finance"), "/v1/payouts?status=completed").await;
    assert_eq!(ids_of(&completed.items(), "payout_id"), set(&[&ids.completed_payout]));
    assert_eq!(get(&h, &reads, Some("arbiter"), "/v1/payouts").await.status, StatusCode::FORBIDDEN);

    // Histories: auditors any stream, a client its own job's; hashes chain.
    let path = format!("/v1/streams/job/{}/events?limit=100", ids.settled_job);
    let history = get(&h, &reads, Some("auditor"), &path).await;
    let events = history.items();
    assert_eq!(events[0]["event_type"], "JobPosted");
    assert_eq!(events[0]["prev_hash"], "0".repeat(64));
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "hash chain");
        assert_eq!(pair[1]["sequence"].as_i64(), pair[0]["sequence"].as_i64().map(|s| s + 1));
    }
    assert_eq!(get(&h, &reads, Some("client"), &path).await.items(), events);
    assert_eq!(get(&h, &reads, Some("client2"), &path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&h, &reads, Some("worker1"), &path).await.status, StatusCode::FORBIDDEN);
    let unknown = get(&h, &reads, Some("auditor"), &format!("/v1/streams/nope/{}/events", ids.settled_job)).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "stream.unknown_type"));

    // Unauthenticated, unknown parameters, wrong filters: problem+json with a code.
    let anonymous = get(&h, &reads, None, "/v1/jobs").await;
    assert_eq!((anonymous.status, anonymous.code()), (StatusCode::UNAUTHORIZED, "auth.unauthenticated"));
    assert_eq!(anonymous.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    for (path, code) in [
        ("/v1/jobs?colour=red", "request.unknown_parameter"),
        ("/v1/jobs?status=happy", "request.invalid_filter"),
        ("/v1/jobs?limit=0", "request.invalid_limit"),
        ("/v1/jobs?limit=101", "request.invalid_limit"),
        ("/v1/jobs?cursor=zz", "request.invalid_cursor"),
        ("/v1/jobs?min_position=-1", "request.invalid_min_position"),
        ("/v1/jobs?limit=1&limit=2", "request.duplicate_parameter"),
    ] {
        let r = get(&h, &reads, Some("auditor"), path).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{path}");
    }
}

#[sqlx::test(migrations = false)]
async fn lists_page_with_opaque_cursors(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    for _ in 0..23 {
        h.post_job("client", 100, 1, 1, 0).await;
    }
    h.project(&mut Projector::default(), 100).await;
    let reads = h.reads(100);
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=10&status=posted".to_owned();
    let mut pages = 0;
    loop {
        let r = get(&h, &reads, Some("client"), &path).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        pages += 1;
        seen.extend(r.items().iter().map(|j| j["posted_position"].as_i64().unwrap_or(0)));
        match r.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/jobs?limit=10&status=posted&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 23);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats: {seen:?}");
    let default = get(&h, &reads, Some("client"), "/v1/jobs").await;
    assert_eq!(default.items().len(), 20, "default limit");
}

#[sqlx::test(migrations = false)]
async fn the_task_board_follows_claims_and_time(pool: sqlx::PgPool) {
    let (h, ids) = projected(pool).await;
    let reads = h.reads(100);
    let board = |who: &'static str| {
        let reads = reads.clone();
        let h = &h;
        async move {
            let r = get(h, &reads, Some(who), "/v1/tasks/open").await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            r.items()
                .iter()
                .map(|t| (t["job_id"].as_str().unwrap_or("").to_owned(), t["task"].as_i64().unwrap_or(-1)))
                .collect::<Vec<_>>()
        }
    };
    let open = ids.open_job.clone();
    assert_eq!(board("worker2").await, vec![(open.clone(), 0), (open.clone(), 1)]);
    assert_eq!(board("worker1").await, vec![(open.clone(), 1)], "not a second replica of its own task");
    let item = get(&h, &reads, Some("worker2"), "/v1/tasks/open").await.items()[0].clone();
    assert_eq!(item["reward_per_replica"]["minor_units"], 700);
    assert_eq!(item["collateral"]["minor_units"], 70);
    assert_eq!(item["free_slots"], 2);
    assert!(item.get("participants").is_none());
    let client = get(&h, &reads, Some("client"), "/v1/tasks/open").await;
    assert_eq!((client.status, client.code()), (StatusCode::FORBIDDEN, "auth.role_forbidden"));
    // Past the job's deadline (posted at T0, 7 days by default) nothing is claimable, although
    // no event says so yet.
    h.clock.set(domain::Timestamp(support::T0.0 + 7 * 86_400_000));
    assert!(board("worker2").await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn min_position_waits_for_the_projection_or_answers_503(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    let head = h.head().await;
    let log = h.log().await;
    let (first, rest) = log.split_at(log.len() - 3);
    let mut projector = Projector::default();
    h.apply(&mut projector, first).await;

    let impatient = h.reads(50);
    let r = get(&h, &impatient, Some("auditor"), &format!("/v1/jobs?min_position={head}")).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "projection.behind"));
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let behind = get(&h, &impatient, Some("auditor"), &format!("/v1/jobs?min_position={}", head - 3)).await;
    assert_eq!((behind.status, behind.position()), (StatusCode::OK, Some(head - 3)));

    // A patient read waits while the rest is projected, then answers at the new position.
    let patient = h.reads(10_000);
    let keys = h.keys["auditor"].key.clone();
    let waiting = tokio::spawn(async move {
        let req = axum::http::Request::get(format!("/v1/jobs?min_position={head}"))
            .header("authorization", format!("Bearer {keys}"))
            .body(axum::body::Body::empty())
            .expect("request");
        support::send(&patient, req).await
    });
    // The impatient read takes its 50 ms; the patient one is waiting meanwhile.
    let again = get(&h, &impatient, Some("auditor"), &format!("/v1/jobs?min_position={head}")).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!waiting.is_finished(), "the patient read waits for the projection");
    h.apply(&mut projector, rest).await;
    let answered = waiting.await.expect("join");
    assert_eq!(answered.status, StatusCode::OK, "{:?}", answered.body);
    assert_eq!(answered.position(), Some(head));
}

#[sqlx::test(migrations = false)]
async fn service_endpoints_answer(pool: sqlx::PgPool) {
    let (h, _) = projected(pool).await;
    let reads = h.reads(100);
    assert_eq!(get(&h, &reads, None, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&h, &reads, None, "/readyz").await.status, StatusCode::OK);
    let doc = get(&h, &reads, None, "/openapi.json").await;
    assert_eq!((doc.status, doc.body["openapi"].as_str()), (StatusCode::OK, Some("3.1.0")));
    let metrics = get(&h, &reads, None, "/metrics").await;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    let head = h.head().await;
    assert!(text.contains(&format!("dscm_projection_watermark {head}")), "{text}");
    assert!(text.contains("dscm_projection_lag_events 0"), "{text}");
    assert!(text.contains("dscm_projection_gaps_total"), "{text}");
    assert_eq!(get(&h, &reads, Some("auditor"), "/v1/nowhere").await.status, StatusCode::NOT_FOUND);
}
