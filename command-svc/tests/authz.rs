//! Authorization: every endpoint × every role, and ownership (a foreign client, a worker
//! without the claim, an arbiter who is not reviewing) → 403, with nothing written.

mod support;

use axum::http::StatusCode;
use command_svc::http::ENDPOINTS;
use domain::Role;
use serde_json::json;
use support::{App, commitment, job_body};

const ROLES: [(&str, Role); 6] = [
    ("client", Role::Client),
    ("worker1", Role::Worker),
    ("arbiter", Role::Arbiter),
    ("auditor", Role::Auditor),
    ("finance", Role::Finance),
    ("admin", Role::Admin),
];

#[sqlx::test(migrations = false)]
async fn every_endpoint_admits_exactly_its_roles(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    let before = app.event_count().await;
    let mut checked = 0;
    for (endpoint, template, allowed) in ENDPOINTS {
        let path = template
            .replace("{job}", "00000000-0000-0000-0000-00000000000a")
            .replace("{task}", "0")
            .replace("{dispute}", "00000000-0000-0000-0000-00000000000b")
            .replace("{payout}", "00000000-0000-0000-0000-00000000000c");
        for (who, role) in ROLES {
            let r = app.post(who, &path, json!({})).await;
            if allowed.contains(&role) {
                assert!(
                    r.status != StatusCode::FORBIDDEN || r.code() != "auth.role_forbidden",
                    "{endpoint:?} must admit {role:?}: {:?}",
                    r.body
                );
                assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{endpoint:?} {role:?}");
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (StatusCode::FORBIDDEN, "auth.role_forbidden"),
                    "{endpoint:?} must refuse {role:?}"
                );
            }
            checked += 1;
        }
        let anonymous = app.post_raw(None, &path, Some("k"), "application/json", b"{}".to_vec()).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{endpoint:?}");
    }
    assert_eq!(checked, ENDPOINTS.len() * ROLES.len());
    assert_eq!(app.event_count().await, before, "no unauthorized or invalid request wrote anything");
}

#[sqlx::test(migrations = false)]
async fn foreign_owners_are_refused(pool: sqlx::PgPool) {
    let app = App::new(pool).await;
    app.deposit("client", 100_000).await;
    app.deposit("client2", 100_000).await;
    for w in ["worker1", "worker2"] {
        app.deposit(w, 10_000).await;
    }
    let job = app.post_job("client", job_body(1_000, 1, 1, 0)).await;
    let before = app.event_count().await;

    // Another client cannot fund or cancel it.
    for action in ["fund", "cancel"] {
        let r = app.post("client2", &format!("/v1/jobs/{job}/{action}"), json!({})).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "job.not_the_client"), "{action}");
    }
    assert_eq!(app.event_count().await, before);

    // Only the worker holding the claim commits or reveals.
    assert_eq!(app.post("client", &format!("/v1/jobs/{job}/fund"), json!({})).await.status, StatusCode::OK);
    let claim = app.post("worker1", &format!("/v1/jobs/{job}/claims"), json!({})).await;
    assert_eq!(claim.status, StatusCode::OK, "{:?}", claim.body);
    let before = app.event_count().await;
    let c = commitment(&job, 0, app.party("worker2"), 1, 1);
    let r = app.post("worker2", &format!("/v1/jobs/{job}/tasks/0/commit"), json!({"commitment": c})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "job.no_claim"));
    let r = app.post("worker2", &format!("/v1/jobs/{job}/tasks/0/heartbeat"), json!({})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "job.no_claim"));
    assert_eq!(app.event_count().await, before);
    app.assert_ledger_balances().await;
}
