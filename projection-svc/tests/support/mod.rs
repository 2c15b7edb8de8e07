//! Test harness: a fresh database per test (`#[sqlx::test]`), the event store and write model
//! migrated with `command_svc::migrate`, commands run through command-svc's own router with a
//! hand-moved clock (so the log holds real domain events), the read API driven with `oneshot`,
//! and a scenario that exercises every read model.

#![allow(dead_code, unreachable_pub)]

pub mod kafka;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use command_svc::auth::{self, IssuedKey};
use command_svc::clock::ManualClock;
use command_svc::settings::{CommandSettings, DatabaseSettings, HttpSettings, SchedulerToggle, Secret, Settings};
use domain::ids::PartyId;
use domain::{Role, Timestamp};
use projection_svc::http::AppState;
use projection_svc::metrics::Metrics;
use projection_svc::{ProjectedEvent, Projector, schema};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

pub const T0: Timestamp = Timestamp(1_795_651_200_000);

pub struct Harness {
    pub pool: PgPool,
    pub writes: Router,
    pub clock: Arc<ManualClock>,
    pub keys: BTreeMap<&'static str, IssuedKey>,
    pub metrics: Arc<Metrics>,
    counter: AtomicU64,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn position(&self) -> Option<i64> {
        self.headers.get("x-projection-position").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    }

    pub fn items(&self) -> Vec<Value> {
        self.body["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn events_of(&self, event_type: &str) -> Vec<Value> {
        self.body["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["event_type"] == event_type).cloned().collect())
            .unwrap_or_default()
    }
}

fn command_settings() -> Settings {
    Settings {
        http: HttpSettings::default(),
        database: DatabaseSettings { url: Secret::new("unused"), max_connections: 10 },
        commands: CommandSettings { retries_max: 50 },
        scheduler: SchedulerToggle { enabled: false, tick_ms: 500, auto_payout: false },
        kafka: None,
    }
}

impl Harness {
    /// Migrates the event store, the write model and the read models; issues one key per name.
    pub async fn new(pool: PgPool) -> Harness {
        command_svc::migrate(&pool).await.expect("migrate");
        schema::ensure(&pool).await.expect("read-model schema");
        let clock = Arc::new(ManualClock::new(T0));
        let writes = command_svc::http::router(command_svc::state(pool.clone(), clock.clone(), &command_settings()));
        let mut keys = BTreeMap::new();
        for (name, role) in [
            ("client", Role::Client),
            ("client2", Role::Client),
            ("worker1", Role::Worker),
            ("worker2", Role::Worker),
            ("worker3", Role::Worker),
            ("worker4", Role::Worker),
            ("worker5", Role::Worker),
            ("arbiter", Role::Arbiter),
            ("arbiter2", Role::Arbiter),
            ("auditor", Role::Auditor),
            ("finance", Role::Finance),
            ("admin", Role::Admin),
        ] {
            keys.insert(name, auth::issue_key(&pool, None, role, name).await.expect("key"));
        }
        Harness { pool, writes, clock, keys, metrics: Arc::default(), counter: AtomicU64::new(0) }
    }

    pub fn party(&self, who: &str) -> PartyId {
        self.keys[who].party
    }

    /// A command through command-svc; panics unless it succeeded.
    pub async fn post(&self, who: &str, path: &str, body: Value) -> Reply {
        let key = format!("k-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.keys[who].key))
            .header("idempotency-key", key)
            .body(Body::from(body.to_string()))
            .expect("request");
        let reply = send(&self.writes, req).await;
        assert!(reply.status.is_success(), "{path}: {} {:?}", reply.status, reply.body);
        reply
    }

    /// The read API with this harness's clock and a `min_position` wait of `wait_ms`.
    pub fn reads(&self, wait_ms: u64) -> Router {
        let state = AppState::new(self.pool.clone(), self.metrics.clone(), wait_ms).with_clock(self.clock.clone());
        projection_svc::http::router(state)
    }

    pub async fn head(&self) -> i64 {
        event_store::head_position(&self.pool).await.expect("head")
    }

    /// The whole log from the event store, as the projector sees it.
    pub async fn log(&self) -> Vec<ProjectedEvent> {
        event_store::read_log(&self.pool, 0, 1_000_000).await.expect("log").iter().map(ProjectedEvent::from).collect()
    }

    pub async fn active(&self) -> String {
        schema::active(&self.pool).await.expect("active schema").schema
    }

    /// Every read-model row of the active schema.
    pub async fn dump(&self) -> BTreeMap<&'static str, Vec<String>> {
        schema::dump(&self.pool, &self.active().await).await.expect("dump")
    }

    pub async fn deposit(&self, who: &str, minor_units: u64) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.post(
            "finance",
            "/v1/deposits",
            json!({"party_id": self.party(who), "amount": {"minor_units": minor_units, "currency": "EUR"},
                   "provider": "manual", "external_ref": format!("wire-{n}")}),
        )
        .await;
    }

    pub async fn post_job(&self, who: &str, reward: u64, tasks: u32, replication: u8, window_secs: u64) -> String {
        let body = json!({
            "class": "dscm_verified",
            "reward_per_replica": {"minor_units": reward, "currency": "EUR"},
            "task_count": tasks,
            "workload": {"name": "monte_carlo_pi", "params": "{}"},
            "policy": {"replication": replication, "window_secs": window_secs},
        });
        let r = self.post(who, "/v1/jobs", body).await;
        r.body["job_id"].as_str().expect("job_id").to_owned()
    }

    pub async fn claim_and_commit(&self, job: &str, worker: &str, task: u32, result: u8) {
        self.post(worker, &format!("/v1/jobs/{job}/claims"), json!({"task": task})).await;
        let job_id = domain::ids::JobId(job.parse().expect("job id"));
        let r = domain::job::ResultValue { digest: domain::digest::Digest([result; 32]), metric_micros: None };
        let c = domain::job::commitment_for(job_id, task, self.party(worker), &r, domain::digest::Digest([9; 32]));
        self.post(worker, &format!("/v1/jobs/{job}/tasks/{task}/commit"), json!({"commitment": c.to_hex()})).await;
    }

    pub async fn reveal(&self, job: &str, worker: &str, task: u32, result: u8) -> Reply {
        self.post(
            worker,
            &format!("/v1/jobs/{job}/tasks/{task}/reveal"),
            json!({"result_digest": hex::encode([result; 32]), "salt": hex::encode([9u8; 32])}),
        )
        .await
    }

    /// Applies everything in the store above the active schema's watermark, `batch` events per
    /// transaction, and returns the batches' outcomes.
    pub async fn project(&self, projector: &mut Projector, batch: usize) -> Vec<projection_svc::BatchOutcome> {
        let mut outcomes = Vec::new();
        let mut conn = self.pool.acquire().await.expect("conn");
        let from = projection_svc::replay::schema_watermark(&mut conn, &self.active().await).await.expect("watermark");
        let log: Vec<ProjectedEvent> = self.log().await.into_iter().filter(|e| e.position > from).collect();
        for chunk in log.chunks(batch.max(1)) {
            outcomes.push(self.apply(projector, chunk).await);
        }
        outcomes
    }

    /// One batch in one transaction on the active schema.
    pub async fn apply(&self, projector: &mut Projector, events: &[ProjectedEvent]) -> projection_svc::BatchOutcome {
        let mut tx = self.pool.begin().await.expect("begin");
        schema::lock_active(&mut tx).await.expect("active");
        let outcome = projector.apply_batch(&mut tx, events).await.expect("apply");
        tx.commit().await.expect("commit");
        outcome
    }
}

pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let response = router.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let raw = to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let body = serde_json::from_slice(&raw).unwrap_or(Value::String(String::from_utf8_lossy(&raw).into_owned()));
    Reply { status, headers, body }
}

/// `GET path` on the read API as `who` (no header for `None`).
pub async fn get(h: &Harness, reads: &Router, who: Option<&str>, path: &str) -> Reply {
    let mut req = Request::get(path);
    if let Some(who) = who {
        req = req.header("authorization", format!("Bearer {}", h.keys[who].key));
    }
    send(reads, req.body(Body::empty()).expect("request")).await
}

/// What [`scenario`] created.
#[derive(Debug, Clone)]
pub struct Ids {
    /// Verified, challenged (rejected), window closed: settled.
    pub settled_job: String,
    /// No quorum → dispute → split → appeal → payout: settled.
    pub disputed_job: String,
    pub dispute: String,
    pub challenge: String,
    pub cancelled_job: String,
    /// Funded, 2 tasks × 3 replicas, worker1 holds a slot of task 0: running, on the board.
    pub open_job: String,
    /// client2's, posted only.
    pub posted_job: String,
    pub completed_payout: String,
    pub failed_payout: String,
}

/// A marketplace's worth of history through the write API: every read model gets rows.
pub async fn scenario(h: &Harness) -> Ids {
    h.deposit("client", 100_000).await;
    h.deposit("client2", 50_000).await;
    for w in ["worker1", "worker2", "worker3", "worker4", "worker5"] {
        h.deposit(w, 10_000).await;
    }
    // A verified job, challenged by its client, the challenge rejected by re-execution, then paid.
    let settled_job = h.post_job("client", 1_000, 1, 2, 3_600).await;
    h.post("client", &format!("/v1/jobs/{settled_job}/fund"), json!({})).await;
    h.claim_and_commit(&settled_job, "worker1", 0, 1).await;
    h.claim_and_commit(&settled_job, "worker2", 0, 1).await;
    h.reveal(&settled_job, "worker1", 0, 1).await;
    h.reveal(&settled_job, "worker2", 0, 1).await;
    let challenged = h
        .post(
            "client",
            &format!("/v1/jobs/{settled_job}/tasks/0/challenges"),
            json!({"reason": "looks wrong", "bond": {"minor_units": 1_000, "currency": "EUR"}}),
        )
        .await;
    let challenge = challenged.events_of("ChallengeOpened")[0]["aggregate_id"].as_str().expect("id").to_owned();
    for w in ["worker3", "worker4", "worker5"] {
        h.claim_and_commit(&settled_job, w, 0, 1).await;
    }
    for w in ["worker3", "worker4", "worker5"] {
        h.reveal(&settled_job, w, 0, 1).await;
    }
    // No quorum → a dispute, resolved, appealed and decided by another arbiter.
    let disputed_job = h.post_job("client", 1_000, 1, 2, 0).await;
    h.post("client", &format!("/v1/jobs/{disputed_job}/fund"), json!({})).await;
    h.claim_and_commit(&disputed_job, "worker1", 0, 1).await;
    h.claim_and_commit(&disputed_job, "worker2", 0, 2).await;
    h.reveal(&disputed_job, "worker1", 0, 1).await;
    let failed = h.reveal(&disputed_job, "worker2", 0, 2).await;
    let dispute = failed.events_of("DisputeOpened")[0]["aggregate_id"].as_str().expect("dispute").to_owned();
    h.post("arbiter", &format!("/v1/disputes/{dispute}/review"), json!({})).await;
    h.post("arbiter", &format!("/v1/disputes/{dispute}/resolve"), json!({"outcome": "split", "client_pct": 50})).await;
    h.post("worker1", &format!("/v1/disputes/{dispute}/appeal"), json!({"reason": "my result was right"})).await;
    h.post("arbiter2", &format!("/v1/disputes/{dispute}/appeal-decision"), json!({"outcome": "payout"})).await;
    // Cancelled after funding.
    let cancelled_job = h.post_job("client", 500, 1, 1, 0).await;
    h.post("client", &format!("/v1/jobs/{cancelled_job}/fund"), json!({})).await;
    h.post("client", &format!("/v1/jobs/{cancelled_job}/cancel"), json!({})).await;
    // Open, one slot taken.
    let open_job = h.post_job("client", 700, 2, 3, 3_600).await;
    h.post("client", &format!("/v1/jobs/{open_job}/fund"), json!({})).await;
    h.post("worker1", &format!("/v1/jobs/{open_job}/claims"), json!({"task": 0})).await;
    let posted_job = h.post_job("client2", 300, 1, 1, 0).await;
    // The settled job's window closes: money released.
    h.clock.advance_secs(3_600);
    h.post("admin", &format!("/v1/admin/jobs/{settled_job}/close-window"), json!({})).await;
    // Payouts: one completed, one failed.
    let p = |who: &'static str, n: u64| {
        h.post(who, "/v1/payouts", json!({"amount": {"minor_units": n, "currency": "EUR"}, "provider": "stripe"}))
    };
    let completed_payout = p("client", 1_000).await.body["payout_id"].as_str().expect("payout").to_owned();
    let failed_payout = p("worker1", 500).await.body["payout_id"].as_str().expect("payout").to_owned();
    h.post("finance", &format!("/v1/payouts/{completed_payout}/complete"), json!({"provider_ref": "po_1"})).await;
    h.post("finance", &format!("/v1/payouts/{failed_payout}/fail"), json!({"reason": "account closed"})).await;
    Ids {
        settled_job,
        disputed_job,
        dispute,
        challenge,
        cancelled_job,
        open_job,
        posted_job,
        completed_payout,
        failed_payout,
    }
}

/// Polls `check` until it returns `Some`, at most `deadline`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
