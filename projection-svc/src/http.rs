//! The read API (axum). Every `/v1` GET goes through [`open`], in this order: authenticate with
//! the same API keys as command-svc (401) → role allowed for the route (403) → query parameters
//! known and well-formed (422) → `min_position` reached by the watermark, waiting a bounded time
//! (503 `projection.behind` with `Retry-After`) → one READ ONLY, REPEATABLE READ transaction on
//! the active read-model schema, so the rows and the `X-Projection-Position` header agree.
//!
//! Scoping: clients see their own jobs, balances, payouts, challenges and disputes; workers their
//! own balances, payouts, reputation, the jobs they work on and the open task board; arbiters
//! every dispute and challenge (the queues) and job; auditors, finance and admin everything.
//! Rows another party may not see answer 404, not 403, so their existence does not leak. Revealed
//! results are hidden from workers (a re-executing worker must not copy the accepted result).
//!
//! Lists use cursor pagination: `limit` 1..=100 (default 20), an opaque `cursor` from the previous
//! page's `next_cursor` (null on the last page).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use command_svc::auth::{self, Principal};
use command_svc::clock::{Clock, SystemClock};
use command_svc::http::error::ApiError;
use domain::{Role, Timestamp};
use serde_json::{Map, Value, json};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::schema::{self, SchemaError};

/// The response header carrying the watermark the answer was read at.
pub const POSITION_HEADER: &str = "x-projection-position";
pub const LIMIT_DEFAULT: i64 = 20;
pub const LIMIT_MAX: i64 = 100;
/// How often a `min_position` wait re-reads the watermark (a consumer in this process also
/// wakes it through a watch channel).
const WAIT_POLL_MS: u64 = 25;

/// The OpenAPI 3.1 document of this API (`GET /openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

use Role::{Admin, Arbiter, Auditor, Client, Finance, Worker};
const EVERYONE: &[Role] = &[Client, Worker, Arbiter, Auditor, Finance, Admin];

/// Every read endpoint: (path, roles allowed). The OpenAPI test walks this table.
pub const ROUTES: &[(&str, &[Role])] = &[
    ("/v1/jobs", EVERYONE),
    ("/v1/jobs/{job}", EVERYONE),
    ("/v1/tasks/open", &[Worker, Auditor, Admin]),
    ("/v1/balances", EVERYONE),
    ("/v1/challenges", EVERYONE),
    ("/v1/disputes", EVERYONE),
    ("/v1/workers/{worker}/reputation", &[Worker, Arbiter, Auditor, Finance, Admin]),
    ("/v1/payouts", &[Client, Worker, Auditor, Finance, Admin]),
    ("/v1/streams/{aggregate_type}/{id}/events", &[Client, Auditor, Finance, Admin]),
];

/// Paths without authentication.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub min_position_wait: Duration,
    /// "Now" for the task board (claim expiry and cooldown).
    pub clock: Arc<dyn Clock>,
    watermark: Option<watch::Receiver<i64>>,
}

impl AppState {
    pub fn new(pool: PgPool, metrics: Arc<Metrics>, min_position_wait_ms: u64) -> AppState {
        AppState {
            pool,
            metrics,
            min_position_wait: Duration::from_millis(min_position_wait_ms),
            clock: Arc::new(SystemClock),
            watermark: None,
        }
    }

    /// Wake `min_position` waits when the in-process consumer commits a batch.
    pub fn with_watermark(mut self, watermark: watch::Receiver<i64>) -> AppState {
        self.watermark = Some(watermark);
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> AppState {
        self.clock = clock;
        self
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{job}", get(job_detail))
        .route("/v1/tasks/open", get(open_tasks))
        .route("/v1/balances", get(balances))
        .route("/v1/challenges", get(challenges))
        .route("/v1/disputes", get(disputes))
        .route("/v1/workers/{worker}/reputation", get(reputation))
        .route("/v1/payouts", get(payouts))
        .route("/v1/streams/{aggregate_type}/{id}/events", get(stream_events))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "request.method_not_allowed", "method not allowed")
        })
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// The common part of every read.

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Parsed query parameters of one request.
#[derive(Debug, Default)]
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: Q, allowed: &[&str]) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::invalid("request.invalid_query", e.body_text()))?;
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            if name != "min_position" && !allowed.contains(&name.as_str()) {
                return Err(ApiError::invalid(
                    "request.unknown_parameter",
                    format!("unknown query parameter {name:?}; this endpoint takes {allowed:?} and min_position"),
                ));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid("request.duplicate_parameter", format!("{name} given twice")));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| ApiError::invalid("request.invalid_filter", format!("{name} must be a UUID")))
            })
            .transpose()
    }

    fn one_of(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => {
                Err(ApiError::invalid("request.invalid_filter", format!("{name}={v:?} is not one of {allowed:?}")))
            }
        }
    }

    fn min_position(&self) -> Result<Option<i64>, ApiError> {
        self.get("min_position")
            .map(|v| {
                v.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| {
                    ApiError::invalid("request.invalid_min_position", "min_position must be a non-negative integer")
                })
            })
            .transpose()
    }

    fn limit(&self) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(LIMIT_DEFAULT),
            Some(v) => v.parse::<i64>().ok().filter(|n| (1..=LIMIT_MAX).contains(n)).ok_or_else(|| {
                ApiError::invalid("request.invalid_limit", format!("limit must be an integer in 1..={LIMIT_MAX}"))
            }),
        }
    }

    /// The decoded cursor's parts (`cursor` is hex of `v1:<part>:<part>…`).
    fn cursor(&self, parts: usize) -> Result<Option<Vec<String>>, ApiError> {
        let Some(raw) = self.get("cursor") else { return Ok(None) };
        let bad = || ApiError::invalid("request.invalid_cursor", "cursor is not one this endpoint returned");
        let text = hex::decode(raw).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
        let body = text.strip_prefix("v1:").ok_or_else(bad)?;
        let fields: Vec<String> = body.split('\u{1f}').map(str::to_owned).collect();
        if fields.len() != parts {
            return Err(bad());
        }
        Ok(Some(fields))
    }

    fn cursor_i64(&self) -> Result<Option<i64>, ApiError> {
        match self.cursor(1)? {
            None => Ok(None),
            Some(f) => f[0]
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid("request.invalid_cursor", "cursor is not one this endpoint returned")),
        }
    }
}

fn encode_cursor(parts: &[String]) -> String {
    hex::encode(format!("v1:{}", parts.join("\u{1f}")))
}

/// One authenticated read on the active schema.
struct ReadCtx {
    principal: Principal,
    params: Params,
    tx: Transaction<'static, Postgres>,
    watermark: i64,
}

impl ReadCtx {
    fn is(&self, roles: &[Role]) -> bool {
        roles.contains(&self.principal.role)
    }

    fn me(&self) -> Uuid {
        self.principal.party.0
    }

    fn respond(self, body: Value) -> Response {
        let watermark = self.watermark;
        // Nothing was written; ending the read-only transaction is all that is left.
        drop(self.tx);
        let mut response = (StatusCode::OK, axum::Json(body)).into_response();
        response.headers_mut().insert(POSITION_HEADER, HeaderValue::from(watermark));
        response
    }
}

fn schema_error(e: SchemaError) -> ApiError {
    match e {
        SchemaError::Database(e) => e.into(),
        other => {
            tracing::error!(error = %other, "read models unavailable");
            ApiError {
                retry_after_secs: Some(5),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "projection.unavailable", other.to_string())
            }
        }
    }
}

async fn open(
    state: &AppState,
    headers: &HeaderMap,
    query: Q,
    route: &str,
    allowed: &[&str],
) -> Result<ReadCtx, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = auth::authenticate(&state.pool, header).await?;
    let roles = ROUTES.iter().find(|(path, _)| *path == route).map_or(&[][..], |(_, roles)| *roles);
    if !roles.contains(&principal.role) {
        return Err(ApiError::forbidden_role(principal.role.as_str()));
    }
    let params = Params::parse(query, allowed)?;
    if let Some(min) = params.min_position()? {
        wait_for(state, min).await?;
    }
    let mut tx = state.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    schema::read_active(&mut tx).await.map_err(schema_error)?;
    let watermark = crate::project::watermark(&mut tx).await?;
    Ok(ReadCtx { principal, params, tx, watermark })
}

/// The active schema's watermark.
async fn current_watermark(pool: &PgPool) -> Result<i64, ApiError> {
    let mut tx = pool.begin().await?;
    schema::read_active(&mut tx).await.map_err(schema_error)?;
    let w = crate::project::watermark(&mut tx).await?;
    tx.commit().await?;
    Ok(w)
}

/// Waits until the watermark reaches `min`, at most `min_position_wait`.
async fn wait_for(state: &AppState, min: i64) -> Result<i64, ApiError> {
    let deadline = Instant::now() + state.min_position_wait;
    let mut rx = state.watermark.clone();
    loop {
        let w = current_watermark(&state.pool).await?;
        if w >= min {
            return Ok(w);
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return Err(ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "projection.behind",
                    format!("the read models are at position {w}, position {min} was asked for; retry"),
                )
            });
        };
        let nap = tokio::time::sleep(left.min(Duration::from_millis(WAIT_POLL_MS)));
        match rx.as_mut() {
            // Woken early by the consumer of this process; the poll covers other writers.
            Some(rx) => {
                tokio::select! {
                    _ = rx.changed() => {}
                    () = nap => {}
                }
            }
            None => nap.await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Presenting rows.

fn time(ms: &Value) -> Value {
    ms.as_i64().map_or(Value::Null, |ms| json!(Timestamp(ms).to_string()))
}

/// Turns a row into its API shape: `x_ms` → `x` (RFC 3339), `x_minor_units` + `currency` →
/// `x: {minor_units, currency}` (`reward` is per replica), recursively for nested objects.
fn present(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let currency = map.get("currency").cloned();
            let mut out = Map::new();
            for (key, v) in map {
                if let Some(name) = key.strip_suffix("_ms") {
                    out.insert(name.to_owned(), time(&v));
                } else if let Some(name) = key.strip_suffix("_minor_units") {
                    let name = if name == "reward" { "reward_per_replica" } else { name };
                    let money = json!({"minor_units": v, "currency": currency.clone().unwrap_or(Value::Null)});
                    out.insert(name.to_owned(), money);
                } else {
                    out.insert(key, present(v));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(present).collect()),
        other => other,
    }
}

/// Removes every revealed result (`result` keys) from a job's tasks.
fn redact_results(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("result");
            map.values_mut().for_each(redact_results);
        }
        Value::Array(items) => items.iter_mut().for_each(redact_results),
        _ => {}
    }
}

fn page(mut items: Vec<Value>, limit: i64, cursor_of: impl Fn(&Value) -> Vec<String>) -> Value {
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more { items.last().map(|last| json!(encode_cursor(&cursor_of(last)))) } else { None };
    json!({"items": items, "next_cursor": next.unwrap_or(Value::Null)})
}

fn pos(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_i64).unwrap_or(0).to_string()
}

fn path_uuid(raw: &str, code: &'static str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, code, "no such resource"))
}

const JOB_STATUSES: &[&str] =
    &["posted", "open", "running", "verifying", "challenge_window", "disputed", "settled", "cancelled", "expired"];
const JOB_CLASSES: &[&str] =
    &["dscm_verified", "scientific_simulation", "biomedical_modeling", "data_analytics", "deterministic_baseline"];
const DISPUTE_STATUSES: &[&str] = &["opened", "under_review", "resolved", "appealed", "closed"];
const CHALLENGE_STATUSES: &[&str] = &["reexecuting", "upheld", "rejected", "escalated"];
const PAYOUT_STATUSES: &[&str] = &["requested", "completed", "failed"];

// ---------------------------------------------------------------------------------------------
// Endpoints.

/// `GET /v1/jobs?status&class&client&cursor&limit`: newest first.
async fn list_jobs(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/jobs", &["status", "class", "client", "cursor", "limit"]).await?;
    let status = ctx.params.one_of("status", JOB_STATUSES)?;
    let class = ctx.params.one_of("class", JOB_CLASSES)?;
    let mut client = ctx.params.uuid("client")?;
    let mut worker = None;
    match ctx.principal.role {
        Client => {
            if client.is_some_and(|c| c != ctx.me()) {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "auth.scope_forbidden", "clients see their own jobs"));
            }
            client = Some(ctx.me());
        }
        Worker => worker = Some(ctx.me()),
        _ => {}
    }
    let limit = ctx.params.limit()?;
    let before = ctx.params.cursor_i64()?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(j) - 'tasks' - 'workers' FROM rm_jobs j
          WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR class = $2)
            AND ($3::uuid IS NULL OR client_id = $3) AND ($4::uuid IS NULL OR $4 = ANY (workers))
            AND ($5::bigint IS NULL OR posted_position < $5)
          ORDER BY posted_position DESC LIMIT $6",
    )
    .bind(status)
    .bind(class)
    .bind(client)
    .bind(worker)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let items = rows.into_iter().map(present).collect();
    let body = page(items, limit, |v| vec![pos(v, "posted_position")]);
    Ok(ctx.respond(body))
}

/// `GET /v1/jobs/{job}`: the job with its tasks, replicas, verification state and window.
async fn job_detail(
    State(state): State<AppState>,
    Path(job): Path<String>,
    headers: HeaderMap,
    query: Q,
) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/jobs/{job}", &[]).await?;
    let job = path_uuid(&job, "job.not_found")?;
    let row: Option<(Value, Uuid, Vec<Uuid>, bool)> = sqlx::query_as(
        "SELECT to_jsonb(j), client_id, workers,
                EXISTS (SELECT 1 FROM rm_open_tasks t WHERE t.job_id = j.job_id)
           FROM rm_jobs j WHERE job_id = $1",
    )
    .bind(job)
    .fetch_optional(&mut *ctx.tx)
    .await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "job.not_found", "no such job");
    let (row, client, workers, on_board) = row.ok_or_else(not_found)?;
    let visible = match ctx.principal.role {
        Client => client == ctx.me(),
        Worker => on_board || workers.contains(&ctx.me()),
        _ => true,
    };
    if !visible {
        return Err(not_found());
    }
    let mut body = present(row);
    if ctx.is(&[Worker]) {
        redact_results(&mut body);
    }
    Ok(ctx.respond(body))
}

/// `GET /v1/tasks/open?class&cursor&limit`: claimable rounds, oldest jobs first. A worker does
/// not see its own tasks' rounds (it may not take two replicas of one task).
async fn open_tasks(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/tasks/open", &["class", "cursor", "limit"]).await?;
    let class = ctx.params.one_of("class", JOB_CLASSES)?;
    let limit = ctx.params.limit()?;
    let cursor = match ctx.params.cursor(3)? {
        None => None,
        Some(f) => {
            let bad = || ApiError::invalid("request.invalid_cursor", "cursor is not one this endpoint returned");
            let p: i64 = f[0].parse().map_err(|_| bad())?;
            let t: i32 = f[1].parse().map_err(|_| bad())?;
            let r: i32 = f[2].parse().map_err(|_| bad())?;
            Some((p, t, r))
        }
    };
    let worker = ctx.is(&[Worker]).then(|| ctx.me());
    let now = state.clock.now().unix_ms();
    // Order: job (oldest first), task, re-execution round before the original one.
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(t) - 'participants' FROM rm_open_tasks t
          WHERE (free_slots > 0 OR cooling_until_ms <= $1) AND (expires_at_ms IS NULL OR expires_at_ms > $1)
            AND ($2::uuid IS NULL OR (client_id <> $2 AND NOT ($2 = ANY (participants))))
            AND ($3::text IS NULL OR class = $3)
            AND ($4::bigint IS NULL OR (posted_position, task, 1 - reexecution::int) > ($4, $5, $6))
          ORDER BY posted_position, task, 1 - reexecution::int LIMIT $7",
    )
    .bind(now)
    .bind(worker)
    .bind(class)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map_or(0, |c| c.1))
    .bind(cursor.map_or(0, |c| c.2))
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            let cooling = r.get("cooling_until_ms").cloned().unwrap_or(Value::Null);
            let free = r.get("free_slots").and_then(Value::as_i64).unwrap_or(0);
            let from = if free > 0 { Value::Null } else { cooling };
            if let Some(map) = r.as_object_mut() {
                map.remove("cooling_until_ms");
                map.insert("claimable_from_ms".to_owned(), from);
            }
            present(r)
        })
        .collect();
    let body = page(items, limit, |v| {
        let reexec = v.get("reexecution").and_then(Value::as_bool).unwrap_or(false);
        vec![pos(v, "posted_position"), pos(v, "task"), i32::from(!reexec).to_string()]
    });
    Ok(ctx.respond(body))
}

/// `GET /v1/balances?party&currency&cursor&limit`: one's own accounts; finance, auditors and
/// admins any party's (`party`), or every account of the ledger.
async fn balances(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/balances", &["party", "currency", "cursor", "limit"]).await?;
    let mut party = ctx.params.uuid("party")?;
    let currency = ctx.params.one_of("currency", &["RUB", "EUR", "USD", "CNY"])?;
    if !ctx.is(&[Finance, Auditor, Admin]) {
        if party.is_some_and(|p| p != ctx.me()) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "auth.scope_forbidden", "only your own balances"));
        }
        party = Some(ctx.me());
    }
    let limit = ctx.params.limit()?;
    let after = ctx.params.cursor(2)?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(b) FROM rm_balances b
          WHERE ($1::uuid IS NULL OR party_id = $1) AND ($2::text IS NULL OR currency = $2)
            AND ($3::text IS NULL OR (account, currency) > ($3, $4))
          ORDER BY account, currency LIMIT $5",
    )
    .bind(party)
    .bind(currency)
    .bind(after.as_ref().map(|a| a[0].clone()))
    .bind(after.as_ref().map(|a| a[1].clone()))
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let items = rows
        .into_iter()
        .map(|mut r| {
            if let Some(map) = r.as_object_mut()
                && let Some(balance) = map.remove("balance")
            {
                map.insert("balance_minor_units".to_owned(), balance);
            }
            present(r)
        })
        .collect();
    let body = page(items, limit, |v| {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        vec![s("account"), s("currency")]
    });
    Ok(ctx.respond(body))
}

/// `GET /v1/challenges?status&job&cursor&limit`: oldest first (a queue).
async fn challenges(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/challenges", &["status", "job", "cursor", "limit"]).await?;
    let status = ctx.params.one_of("status", CHALLENGE_STATUSES)?;
    let job = ctx.params.uuid("job")?;
    let (client, worker) = match ctx.principal.role {
        Client => (Some(ctx.me()), None),
        Worker => (None, Some(ctx.me())),
        _ => (None, None),
    };
    let limit = ctx.params.limit()?;
    let after = ctx.params.cursor_i64()?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(c) FROM rm_challenges c
          WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR job_id = $2)
            AND ($3::uuid IS NULL OR challenger_id = $3
                 OR EXISTS (SELECT 1 FROM rm_jobs j WHERE j.job_id = c.job_id AND j.client_id = $3))
            AND ($4::uuid IS NULL OR challenger_id = $4
                 OR EXISTS (SELECT 1 FROM rm_jobs j WHERE j.job_id = c.job_id AND $4 = ANY (j.workers)))
            AND ($5::bigint IS NULL OR opened_position > $5)
          ORDER BY opened_position LIMIT $6",
    )
    .bind(status)
    .bind(job)
    .bind(client)
    .bind(worker)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let body = page(rows.into_iter().map(present).collect(), limit, |v| vec![pos(v, "opened_position")]);
    Ok(ctx.respond(body))
}

/// `GET /v1/disputes?status&cursor&limit`: oldest first (a queue).
async fn disputes(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/disputes", &["status", "cursor", "limit"]).await?;
    let status = ctx.params.one_of("status", DISPUTE_STATUSES)?;
    let (client, worker) = match ctx.principal.role {
        Client => (Some(ctx.me()), None),
        Worker => (None, Some(ctx.me())),
        _ => (None, None),
    };
    let limit = ctx.params.limit()?;
    let after = ctx.params.cursor_i64()?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(d) FROM rm_disputes d
          WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR client_id = $2)
            AND ($3::uuid IS NULL OR $3 = ANY (workers)) AND ($4::bigint IS NULL OR opened_position > $4)
          ORDER BY opened_position LIMIT $5",
    )
    .bind(status)
    .bind(client)
    .bind(worker)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let body = page(rows.into_iter().map(present).collect(), limit, |v| vec![pos(v, "opened_position")]);
    Ok(ctx.respond(body))
}

/// `GET /v1/workers/{worker}/reputation`: a worker's own; arbiters, auditors, finance, admin any.
/// A worker with no result yet has score 0.
async fn reputation(
    State(state): State<AppState>,
    Path(worker): Path<String>,
    headers: HeaderMap,
    query: Q,
) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/workers/{worker}/reputation", &[]).await?;
    let worker = path_uuid(&worker, "worker.not_found")?;
    if ctx.is(&[Worker]) && worker != ctx.me() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "auth.scope_forbidden", "only your own reputation"));
    }
    let row: Option<Value> = sqlx::query_scalar("SELECT to_jsonb(r) FROM rm_reputation r WHERE worker_id = $1")
        .bind(worker)
        .fetch_optional(&mut *ctx.tx)
        .await?;
    let body = row.map(present).unwrap_or_else(
        || json!({"worker_id": worker, "score": 0, "consecutive_valid": 0, "results": 0, "updated_position": null}),
    );
    Ok(ctx.respond(body))
}

/// `GET /v1/payouts?status&party&cursor&limit`: newest first; one's own, or any for finance,
/// auditors and admins.
async fn payouts(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let mut ctx = open(&state, &headers, query, "/v1/payouts", &["status", "party", "cursor", "limit"]).await?;
    let status = ctx.params.one_of("status", PAYOUT_STATUSES)?;
    let mut party = ctx.params.uuid("party")?;
    if ctx.is(&[Client, Worker]) {
        if party.is_some_and(|p| p != ctx.me()) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "auth.scope_forbidden", "only your own payouts"));
        }
        party = Some(ctx.me());
    }
    let limit = ctx.params.limit()?;
    let before = ctx.params.cursor_i64()?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(p) FROM rm_payouts p
          WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR party_id = $2)
            AND ($3::bigint IS NULL OR requested_position < $3)
          ORDER BY requested_position DESC LIMIT $4",
    )
    .bind(status)
    .bind(party)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let body = page(rows.into_iter().map(present).collect(), limit, |v| vec![pos(v, "requested_position")]);
    Ok(ctx.respond(body))
}

/// `GET /v1/streams/{aggregate_type}/{id}/events?cursor&limit`: one aggregate's full history in
/// sequence order, with hashes, for auditors, finance and admins, and for a job's client (the
/// job's and its escrow's streams).
async fn stream_events(
    State(state): State<AppState>,
    Path((aggregate_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    query: Q,
) -> Result<Response, ApiError> {
    let mut ctx =
        open(&state, &headers, query, "/v1/streams/{aggregate_type}/{id}/events", &["cursor", "limit"]).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "stream.not_found", "no such stream");
    if !command_svc::relay::AGGREGATE_TYPES.contains(&aggregate_type.as_str()) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "stream.unknown_type", "no such aggregate type"));
    }
    let id = path_uuid(&id, "stream.not_found")?;
    if ctx.is(&[Client]) {
        let owner: Option<Uuid> = if matches!(aggregate_type.as_str(), "job" | "escrow") {
            sqlx::query_scalar("SELECT client_id FROM rm_jobs WHERE job_id = $1")
                .bind(id)
                .fetch_optional(&mut *ctx.tx)
                .await?
        } else {
            None
        };
        if owner != Some(ctx.me()) {
            return Err(not_found());
        }
    }
    let limit = ctx.params.limit()?;
    let after = ctx.params.cursor_i64()?.unwrap_or(0);
    let rows = sqlx::query(
        "SELECT to_jsonb(e) - 'recorded_at', (EXTRACT(EPOCH FROM recorded_at) * 1000000)::bigint
           FROM rm_events e
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
          ORDER BY sequence LIMIT $4",
    )
    .bind(&aggregate_type)
    .bind(id.to_string())
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *ctx.tx)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let mut event: Value = row.try_get(0)?;
        let micros: i64 = row.try_get(1)?;
        if let Some(map) = event.as_object_mut() {
            map.insert("recorded_at".to_owned(), json!(crate::event::rfc3339_micros(micros)));
        }
        items.push(event);
    }
    let body = page(items, limit, |v| vec![pos(v, "sequence")]);
    Ok(ctx.respond(body))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match current_watermark(&state.pool).await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            let mut response = e.into_response();
            if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let positions = async {
        let w = current_watermark(&state.pool).await.ok()?;
        let head = event_store::head_position(&state.pool).await.ok()?;
        Some((w, head))
    }
    .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(positions)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_presented_with_times_and_money() {
        let row = json!({"reward_minor_units": 500, "currency": "EUR", "posted_at_ms": 0, "window_closes_at_ms": null,
                         "tasks": [{"replicas": [{"expires_at_ms": 1000, "result": {"digest": "ab"}}]}]});
        let mut shown = present(row);
        assert_eq!(shown["reward_per_replica"], json!({"minor_units": 500, "currency": "EUR"}));
        assert_eq!(shown["posted_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(shown["window_closes_at"], Value::Null);
        assert_eq!(shown["tasks"][0]["replicas"][0]["expires_at"], "1970-01-01T00:00:01.000Z");
        redact_results(&mut shown);
        assert!(shown["tasks"][0]["replicas"][0].get("result").is_none());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor(&["available:x".to_owned(), "EUR".to_owned()]);
        let params = Params(BTreeMap::from([("cursor".to_owned(), cursor)]));
        assert_eq!(params.cursor(2).expect("ok"), Some(vec!["available:x".to_owned(), "EUR".to_owned()]));
        assert!(params.cursor(1).is_err());
        let garbage = Params(BTreeMap::from([("cursor".to_owned(), "zz".to_owned())]));
        assert!(garbage.cursor(1).is_err());
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for path in ROUTES.iter().map(|(p, _)| *p).chain(OPEN_PATHS.iter().copied()) {
            assert!(doc["paths"][path]["get"].is_object(), "{path} is missing from openapi.json");
        }
        let documented = doc["paths"].as_object().map_or(0, Map::len);
        assert_eq!(documented, ROUTES.len() + OPEN_PATHS.len(), "openapi.json documents a path that does not exist");
    }
}
