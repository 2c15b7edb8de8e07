//! Test harness: a fresh database per test (`#[sqlx::test]`), the router driven with
//! `oneshot` (no socket), a hand-moved clock, and API keys for every role.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use command_svc::auth::{self, IssuedKey};
use command_svc::clock::ManualClock;
use command_svc::http::{AppState, router};
use command_svc::settings::{CommandSettings, DatabaseSettings, HttpSettings, Secret, Settings};
use domain::ids::PartyId;
use domain::ledger::LedgerAccount;
use domain::{Currency, Event, Marketplace, Role, StreamId, Timestamp};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tower::ServiceExt;

pub const T0: Timestamp = Timestamp(1_795_651_200_000);

pub struct App {
    pub pool: PgPool,
    pub state: AppState,
    pub router: Router,
    pub clock: Arc<ManualClock>,
    pub keys: BTreeMap<&'static str, IssuedKey>,
    counter: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub raw: Vec<u8>,
    pub content_type: String,
    pub replayed: bool,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub fn settings() -> Settings {
    Settings {
        http: HttpSettings::default(),
        database: DatabaseSettings { url: Secret::new("unused"), max_connections: 40 },
        commands: CommandSettings { retries_max: 50 },
        scheduler: command_svc::settings::SchedulerToggle::default(),
        kafka: None,
    }
}

impl App {
    /// Migrate the test database and issue one key per name: client, client2, worker1..worker5,
    /// arbiter, arbiter2, auditor, finance, admin.
    pub async fn new(pool: PgPool) -> App {
        command_svc::migrate(&pool).await.expect("migrate");
        let clock = Arc::new(ManualClock::new(T0));
        let state = command_svc::state(pool.clone(), clock.clone(), &settings());
        let router = router(state.clone());
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
        App { pool, state, router, clock, keys, counter: Default::default() }
    }

    pub fn party(&self, who: &str) -> PartyId {
        self.keys[who].party
    }

    fn next_key(&self) -> String {
        format!("k-{}", self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// POST with a fresh idempotency key.
    pub async fn post(&self, who: &str, path: &str, body: Value) -> Reply {
        let key = self.next_key();
        self.post_raw(Some(who), path, Some(&key), "application/json", body.to_string().into_bytes()).await
    }

    pub async fn post_with_key(&self, who: &str, path: &str, key: &str, body: Value) -> Reply {
        self.post_raw(Some(who), path, Some(key), "application/json", body.to_string().into_bytes()).await
    }

    pub async fn post_raw(
        &self,
        who: Option<&str>,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::post(path).header("content-type", content_type);
        if let Some(who) = who {
            req = req.header("authorization", format!("Bearer {}", self.keys[who].key));
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        self.send(req.body(Body::from(body)).expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).expect("request")).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let raw = to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply { status, body, raw, content_type, replayed }
    }

    pub async fn event_count(&self) -> i64 {
        event_store::head_position(&self.pool).await.expect("head")
    }

    /// Every event of the log, as domain events.
    pub async fn log(&self) -> Vec<Event> {
        let stored = event_store::read_log(&self.pool, 0, 1_000_000).await.expect("log");
        stored
            .into_iter()
            .map(|e| {
                let id: uuid::Uuid = e.aggregate_id.parse().expect("uuid id");
                let stream = match e.aggregate_type.as_str() {
                    "job" => StreamId::Job(domain::ids::JobId(id)),
                    "escrow" => StreamId::Escrow(domain::ids::JobId(id)),
                    "challenge" => StreamId::Challenge(domain::ids::ChallengeId(id)),
                    "dispute" => StreamId::Dispute(domain::ids::DisputeId(id)),
                    "worker" => StreamId::Worker(PartyId(id)),
                    "deposit" => StreamId::Deposit(domain::ids::DepositId(id)),
                    "payout" => StreamId::Payout(domain::ids::PayoutId(id)),
                    other => panic!("unknown aggregate type {other}"),
                };
                Event::from_stored(stream, e.payload).expect("parses")
            })
            .collect()
    }

    /// The invariants every money test ends with: the balances table equals the fold of the
    /// log's postings, the fold balances (sum zero per currency, nothing negative but clearing),
    /// and every escrow is conserved.
    pub async fn assert_ledger_balances(&self) -> Marketplace {
        let replayed = Marketplace::replay(0, &self.log().await);
        replayed.ledger.check().expect("ledger invariants");
        for (job, escrow) in &replayed.escrows {
            assert!(escrow.is_conserved(), "escrow {job} not conserved: {escrow:?}");
        }
        let rows = sqlx::query("SELECT account, currency, balance FROM ledger_balances")
            .fetch_all(&self.pool)
            .await
            .expect("rows");
        let mut table: BTreeMap<(String, String), i128> = BTreeMap::new();
        for r in rows {
            let b: i64 = r.get("balance");
            if b != 0 {
                table.insert((r.get("account"), r.get("currency")), i128::from(b));
            }
        }
        // The table holds the balances decisions read (available, per party); the fold holds all.
        let fold: BTreeMap<(String, String), i128> = replayed
            .ledger
            .balances()
            .filter(|(a, _, b)| *b != 0 && matches!(a, LedgerAccount::Available { .. }))
            .map(|(a, c, b)| ((a.to_string(), c.code().to_owned()), b))
            .collect();
        assert_eq!(table, fold, "ledger_balances differs from the fold of the event log");
        let report = event_store::verify_all(&self.pool).await.expect("verify");
        assert!(report.is_intact(), "hash chain broken: {report:?}");
        replayed
    }

    /// Any account's balance, from the fold of the log's postings (the ledger's definition).
    pub async fn balance(&self, account: LedgerAccount, currency: Currency) -> i64 {
        let ledger = Marketplace::replay(0, &self.log().await).ledger;
        i64::try_from(ledger.balance(account, currency)).expect("fits i64")
    }

    pub async fn deposit(&self, who: &str, minor_units: u64) -> Reply {
        let r = self
            .post(
                "finance",
                "/v1/deposits",
                json!({"party_id": self.party(who), "amount": {"minor_units": minor_units, "currency": "EUR"},
                       "provider": "manual", "external_ref": format!("wire-{}", self.next_key())}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r
    }

    /// Post a job (EUR) and return its id.
    pub async fn post_job(&self, who: &str, body: Value) -> String {
        let r = self.post(who, "/v1/jobs", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["job_id"].as_str().expect("job_id").to_owned()
    }
}

pub fn job_body(reward: u64, tasks: u32, replication: u8, window_secs: u64) -> Value {
    json!({
        "class": "dscm_verified",
        "reward_per_replica": {"minor_units": reward, "currency": "EUR"},
        "task_count": tasks,
        "workload": {"name": "monte_carlo_pi", "params": "{\"samples\": 1000}"},
        "policy": {"replication": replication, "window_secs": window_secs},
    })
}

pub fn hex32(byte: u8) -> String {
    hex::encode([byte; 32])
}

/// The commitment a worker sends for `result` with `salt`.
pub fn commitment(job: &str, task: u32, worker: PartyId, result: u8, salt: u8) -> String {
    let job = domain::ids::JobId(job.parse().expect("job id"));
    let r = domain::job::ResultValue { digest: domain::digest::Digest([result; 32]), metric_micros: None };
    domain::job::commitment_for(job, task, worker, &r, domain::digest::Digest([salt; 32])).to_hex()
}
