//! The HTTP write API. Every command endpoint goes through [`dispatch`], in this order:
//! authenticate (401) → role allowed for the endpoint (403) → `Idempotency-Key` present (400)
//! → body parsed and converted to a domain command (400/415/422) → the unit of work (domain
//! refusals 403/404/409/422, contention 409). Success answers carry the events written and the
//! global position of the last one.

pub mod dto;
pub mod error;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use domain::challenge::ChallengeCommand;
use domain::dispute::DisputeCommand;
use domain::funds::{DepositCommand, PayoutCommand};
use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PayoutId};
use domain::job::JobCommand;
use domain::{Actor, Command, Role};
use event_store::Committed;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{self, Principal};
use crate::uow::{Answer, Executed, Executor, IdempotencyKey, RequestMeta};
use error::ApiError;

pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub executor: Arc<Executor>,
    /// The outbox relay's counters (zero when no relay runs in this process).
    pub relay: Arc<crate::relay::RelayMetrics>,
}

/// Every command endpoint. The table below is the single source of paths and roles; the
/// authorization-matrix test walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    RecordDeposit,
    PostJob,
    FundJob,
    CancelJob,
    ClaimTask,
    Heartbeat,
    CommitResult,
    RevealResult,
    OpenChallenge,
    StartReview,
    ResolveDispute,
    Appeal,
    DecideAppeal,
    RequestPayout,
    CompletePayout,
    FailPayout,
    IssueApiKey,
    ExpireJob,
    CloseWindow,
    ExpireClaim,
    ExpireReview,
    CloseDispute,
}

use Role::{Admin, Arbiter, Client, Finance, Worker};

/// (endpoint, path, roles allowed).
pub const ENDPOINTS: &[(Endpoint, &str, &[Role])] = &[
    (Endpoint::RecordDeposit, "/v1/deposits", &[Finance, Admin]),
    (Endpoint::PostJob, "/v1/jobs", &[Client]),
    (Endpoint::FundJob, "/v1/jobs/{job}/fund", &[Client]),
    (Endpoint::CancelJob, "/v1/jobs/{job}/cancel", &[Client]),
    (Endpoint::ClaimTask, "/v1/jobs/{job}/claims", &[Worker]),
    (Endpoint::Heartbeat, "/v1/jobs/{job}/tasks/{task}/heartbeat", &[Worker]),
    (Endpoint::CommitResult, "/v1/jobs/{job}/tasks/{task}/commit", &[Worker]),
    (Endpoint::RevealResult, "/v1/jobs/{job}/tasks/{task}/reveal", &[Worker]),
    (Endpoint::OpenChallenge, "/v1/jobs/{job}/tasks/{task}/challenges", &[Client, Worker]),
    (Endpoint::StartReview, "/v1/disputes/{dispute}/review", &[Arbiter]),
    (Endpoint::ResolveDispute, "/v1/disputes/{dispute}/resolve", &[Arbiter]),
    (Endpoint::Appeal, "/v1/disputes/{dispute}/appeal", &[Client, Worker]),
    (Endpoint::DecideAppeal, "/v1/disputes/{dispute}/appeal-decision", &[Arbiter]),
    (Endpoint::RequestPayout, "/v1/payouts", &[Client, Worker]),
    (Endpoint::CompletePayout, "/v1/payouts/{payout}/complete", &[Finance, Admin]),
    (Endpoint::FailPayout, "/v1/payouts/{payout}/fail", &[Finance, Admin]),
    (Endpoint::IssueApiKey, "/v1/admin/api-keys", &[Admin]),
    (Endpoint::ExpireJob, "/v1/admin/jobs/{job}/expire", &[Admin]),
    (Endpoint::CloseWindow, "/v1/admin/jobs/{job}/close-window", &[Admin]),
    (Endpoint::ExpireClaim, "/v1/admin/jobs/{job}/tasks/{task}/expire-claim", &[Admin]),
    (Endpoint::ExpireReview, "/v1/admin/disputes/{dispute}/expire-review", &[Admin]),
    (Endpoint::CloseDispute, "/v1/admin/disputes/{dispute}/close", &[Admin]),
];

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for (endpoint, path, _) in ENDPOINTS {
        let endpoint = *endpoint;
        router = router.route(
            path,
            post(
                move |State(state): State<AppState>,
                      Path(params): Path<HashMap<String, String>>,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    dispatch(&state, endpoint, &params, &headers, body)
                        .await
                        .unwrap_or_else(IntoResponse::into_response)
                },
            ),
        );
    }
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "request.method_not_allowed", "method not allowed")
        })
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("database: {e}")).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.executor.metrics.render();
    match crate::scheduler::lag(&state.pool, state.executor.clock.now().0).await {
        Ok(lag) => {
            use std::fmt::Write as _;
            let _ = writeln!(text, "# HELP dscm_log_head_position The global position of the last committed event.");
            let _ = writeln!(text, "# TYPE dscm_log_head_position gauge");
            let _ = writeln!(text, "dscm_log_head_position {}", lag.head);
            let _ = writeln!(text, "# HELP dscm_follower_lag_events Events a log follower has not processed yet.");
            let _ = writeln!(text, "# TYPE dscm_follower_lag_events gauge");
            for (name, position) in &lag.followers {
                let _ = writeln!(text, "dscm_follower_lag_events{{follower=\"{name}\"}} {}", lag.head - position);
            }
            let _ = writeln!(text, "# HELP dscm_deadlines Deadlines by state.");
            let _ = writeln!(text, "# TYPE dscm_deadlines gauge");
            let _ = writeln!(text, "dscm_deadlines{{state=\"pending\"}} {}", lag.deadlines_pending);
            let _ = writeln!(text, "dscm_deadlines{{state=\"parked\"}} {}", lag.deadlines_parked);
            let _ = writeln!(text, "dscm_deadlines{{state=\"overdue\"}} {}", lag.deadlines_overdue);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read scheduler lag"),
    }
    text.push_str(&state.relay.render());
    let mut r = text.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// What an endpoint turns a request into.
struct Built {
    command: Command,
    actor: Actor,
    /// Fields added to the answer (e.g. the id of what was created).
    extra: Map<String, Value>,
    created: bool,
}

fn param<T: std::str::FromStr>(params: &HashMap<String, String>, name: &str) -> Result<T, ApiError> {
    params.get(name).and_then(|v| v.parse().ok()).ok_or_else(ApiError::not_found)
}

fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    let body: &[u8] = if empty { b"{}" } else { body };
    if !empty {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !content_type.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request.unsupported_media_type",
                "send the body as application/json",
            ));
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = T::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    value.map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "request.malformed_json", e.to_string())
        } else {
            ApiError::invalid("request.invalid_body", e.to_string())
        }
    })
}

fn build(
    endpoint: Endpoint,
    who: Principal,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Built, ApiError> {
    let me = who.actor();
    let plain = |command| Built { command, actor: me, extra: Map::new(), created: false };
    let system = |command| Built { command, actor: Actor::SYSTEM, extra: Map::new(), created: false };
    let job = || param::<Uuid>(params, "job").map(JobId);
    let task = || param::<u32>(params, "task");
    let dispute = || param::<Uuid>(params, "dispute").map(DisputeId);
    let payout = || param::<Uuid>(params, "payout").map(PayoutId);
    Ok(match endpoint {
        Endpoint::RecordDeposit => {
            let dto: dto::RecordDeposit = parse(headers, body)?;
            let provider = dto::provider(&dto.provider)?;
            let id = DepositId::of(provider, &dto.external_ref);
            let mut extra = Map::new();
            extra.insert("deposit_id".into(), json!(id));
            Built {
                command: Command::Deposit(
                    id,
                    DepositCommand::RecordCaptured {
                        party: dto.party_id,
                        amount: dto.amount.try_into()?,
                        provider,
                        external_ref: dto.external_ref,
                    },
                ),
                actor: me,
                extra,
                created: true,
            }
        }
        Endpoint::PostJob => {
            let spec: dto::JobSpec = parse::<dto::PostJob>(headers, body)?.try_into()?;
            let id = JobId(Uuid::new_v4());
            let mut extra = Map::new();
            extra.insert("job_id".into(), json!(id));
            Built {
                command: Command::Job(
                    id,
                    JobCommand::Post {
                        job: id,
                        class: spec.class,
                        policy: spec.policy,
                        reward_per_replica: spec.reward_per_replica,
                        task_count: spec.task_count,
                        workload: spec.workload,
                        expires_in_secs: spec.expires_in_secs,
                    },
                ),
                actor: me,
                extra,
                created: true,
            }
        }
        Endpoint::FundJob => {
            parse::<dto::Empty>(headers, body)?;
            plain(Command::Job(job()?, JobCommand::Fund))
        }
        Endpoint::CancelJob => {
            parse::<dto::Empty>(headers, body)?;
            plain(Command::Job(job()?, JobCommand::Cancel))
        }
        Endpoint::ClaimTask => {
            let dto: dto::Claim = parse(headers, body)?;
            plain(Command::Job(job()?, JobCommand::ClaimTask { task: dto.task }))
        }
        Endpoint::Heartbeat => {
            parse::<dto::Empty>(headers, body)?;
            plain(Command::Job(job()?, JobCommand::Heartbeat { task: task()? }))
        }
        Endpoint::CommitResult => {
            let dto: dto::CommitResult = parse(headers, body)?;
            plain(Command::Job(job()?, JobCommand::CommitResult { task: task()?, commitment: dto.commitment()? }))
        }
        Endpoint::RevealResult => {
            let dto: dto::RevealResult = parse(headers, body)?;
            let (result, salt) = dto.parts()?;
            plain(Command::Job(job()?, JobCommand::RevealResult { task: task()?, result, salt }))
        }
        Endpoint::OpenChallenge => {
            let dto: dto::OpenChallenge = parse(headers, body)?;
            let id = ChallengeId(Uuid::new_v4());
            let mut extra = Map::new();
            extra.insert("challenge_id".into(), json!(id));
            Built {
                command: Command::Challenge(
                    id,
                    ChallengeCommand::Open {
                        challenge: id,
                        job: job()?,
                        task: task()?,
                        reason: dto.reason,
                        bond: dto.bond.try_into()?,
                    },
                ),
                actor: me,
                extra,
                created: true,
            }
        }
        Endpoint::StartReview => {
            parse::<dto::Empty>(headers, body)?;
            plain(Command::Dispute(dispute()?, DisputeCommand::StartReview))
        }
        Endpoint::ResolveDispute => {
            let dto: dto::Outcome = parse(headers, body)?;
            plain(Command::Dispute(dispute()?, DisputeCommand::Resolve { outcome: dto.try_into()? }))
        }
        Endpoint::Appeal => {
            let dto: dto::Appeal = parse(headers, body)?;
            plain(Command::Dispute(dispute()?, DisputeCommand::Appeal { reason: dto.reason }))
        }
        Endpoint::DecideAppeal => {
            let dto: dto::Outcome = parse(headers, body)?;
            plain(Command::Dispute(dispute()?, DisputeCommand::DecideAppeal { outcome: dto.try_into()? }))
        }
        Endpoint::RequestPayout => {
            let dto: dto::RequestPayout = parse(headers, body)?;
            let id = PayoutId(Uuid::new_v4());
            let mut extra = Map::new();
            extra.insert("payout_id".into(), json!(id));
            Built {
                command: Command::Payout(
                    id,
                    PayoutCommand::Request { amount: dto.amount.try_into()?, provider: dto::provider(&dto.provider)? },
                ),
                actor: me,
                extra,
                created: true,
            }
        }
        Endpoint::CompletePayout => {
            let dto: dto::CompletePayout = parse(headers, body)?;
            plain(Command::Payout(payout()?, PayoutCommand::Complete { provider_ref: dto.provider_ref }))
        }
        Endpoint::FailPayout => {
            let dto: dto::FailPayout = parse(headers, body)?;
            plain(Command::Payout(payout()?, PayoutCommand::Fail { reason: dto.reason }))
        }
        Endpoint::ExpireJob => {
            parse::<dto::Empty>(headers, body)?;
            system(Command::Job(job()?, JobCommand::Expire))
        }
        Endpoint::CloseWindow => {
            parse::<dto::Empty>(headers, body)?;
            system(Command::Job(job()?, JobCommand::CloseChallengeWindow))
        }
        Endpoint::ExpireClaim => {
            let dto: dto::ExpireClaim = parse(headers, body)?;
            system(Command::Job(job()?, JobCommand::ExpireClaim { task: task()?, worker: dto.worker_id }))
        }
        Endpoint::ExpireReview => {
            parse::<dto::Empty>(headers, body)?;
            system(Command::Dispute(dispute()?, DisputeCommand::ExpireReview))
        }
        Endpoint::CloseDispute => {
            parse::<dto::Empty>(headers, body)?;
            system(Command::Dispute(dispute()?, DisputeCommand::Close))
        }
        Endpoint::IssueApiKey => unreachable_endpoint()?,
    })
}

fn unreachable_endpoint() -> Result<Built, ApiError> {
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "endpoint has no command"))
}

fn idempotency_key(
    headers: &HeaderMap,
    who: Principal,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Result<IdempotencyKey, ApiError> {
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "idempotency.key_missing", "send an Idempotency-Key header")
        })?
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_LEN_MAX && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency.key_invalid",
                format!("Idempotency-Key must be 1..={IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"),
            )
        })?;
    let request_hash = Sha256::new()
        .chain_update(method.as_str())
        .chain_update(" ")
        .chain_update(path)
        .chain_update("\n")
        .chain_update(body)
        .finalize();
    Ok(IdempotencyKey { scope: who.party.to_string(), key: key.to_owned(), request_hash: request_hash.to_vec() })
}

fn correlation_id(headers: &HeaderMap) -> Uuid {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(Uuid::new_v4)
}

fn answer_response(answer: Answer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut r = (status, answer.body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

fn endpoint_path(endpoint: Endpoint, params: &HashMap<String, String>) -> String {
    let template = ENDPOINTS.iter().find(|(e, _, _)| *e == endpoint).map_or("", |(_, p, _)| *p);
    params.iter().fold(template.to_owned(), |path, (k, v)| path.replace(&format!("{{{k}}}"), v))
}

async fn dispatch(
    state: &AppState,
    endpoint: Endpoint,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let who = auth::authenticate(&state.pool, header).await?;
    let allowed = ENDPOINTS.iter().find(|(e, _, _)| *e == endpoint).map_or(&[][..], |(_, _, roles)| *roles);
    if !allowed.contains(&who.role) {
        return Err(ApiError::forbidden_role(who.role.as_str()));
    }
    let path = endpoint_path(endpoint, params);
    let key = idempotency_key(headers, who, &Method::POST, &path, &body)?;
    if endpoint == Endpoint::IssueApiKey {
        return issue_api_key(state, who, &key, headers, &body).await;
    }
    let built = build(endpoint, who, params, headers, &body)?;
    let meta = RequestMeta {
        command_id: Uuid::new_v4(),
        correlation_id: correlation_id(headers),
        recorded_actor: format!("{}:{}", who.role.as_str(), who.party),
    };
    let status = if built.created { 201 } else { 200 };
    let extra = built.extra;
    let command_id = meta.command_id;
    let respond = move |committed: &Committed| Answer { status, body: answer_body(command_id, &extra, committed) };
    match state.executor.execute(built.command, built.actor, &meta, Some(&key), &respond).await? {
        Executed::Committed { answer, .. } => Ok(answer_response(answer, false)),
        Executed::Replayed(answer) => Ok(answer_response(answer, true)),
    }
}

fn answer_body(command_id: Uuid, extra: &Map<String, Value>, committed: &Committed) -> Vec<u8> {
    let events: Vec<Value> = committed
        .events
        .iter()
        .map(|e| {
            json!({
                "position": e.position,
                "aggregate_type": e.aggregate_type,
                "aggregate_id": e.aggregate_id,
                "sequence": e.sequence,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "payload": e.payload,
            })
        })
        .collect();
    let mut body = Map::new();
    body.insert("command_id".into(), json!(command_id));
    body.insert("last_position".into(), json!(committed.last_position));
    body.extend(extra.clone());
    body.insert("events".into(), Value::Array(events));
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

/// Issuing a key is not a domain command (keys are not events), but it is idempotent the same
/// way. The stored answer omits the secret: a replay says which key was made, not its secret.
async fn issue_api_key(
    state: &AppState,
    who: Principal,
    key: &IdempotencyKey,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let dto: dto::IssueKey = parse(headers, body)?;
    let role = auth::parse_role(&dto.role)
        .ok_or_else(|| ApiError::invalid("auth.role", format!("unknown role {:?}", dto.role)))?;
    if dto.label.trim().is_empty() || dto.label.len() > auth::LABEL_LEN_MAX {
        return Err(ApiError::invalid("auth.label", format!("label must be 1..={} characters", auth::LABEL_LEN_MAX)));
    }
    let mut tx = state.pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(key.lock_id()).fetch_one(&mut *tx).await?;
    if !locked {
        return Err(crate::uow::ExecError::InFlight.into());
    }
    if let Some(stored) = event_store::lookup_idempotency(&mut *tx, &key.scope, &key.key).await? {
        return if stored.record.request_hash == key.request_hash {
            Ok(answer_response(
                Answer { status: stored.record.response_status, body: stored.record.response_body },
                true,
            ))
        } else {
            Err(crate::uow::ExecError::KeyReused.into())
        };
    }
    let issued = auth::issue_key(&mut *tx, dto.party_id, role, dto.label.trim()).await?;
    let public = json!({ "key_id": issued.key_id, "party_id": issued.party, "role": role.as_str() });
    sqlx::query(
        "INSERT INTO idempotency (scope, key, request_hash, response_status, response_body, created_at)
         VALUES ($1, $2, $3, 201, $4, now())",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(serde_json::to_vec(&json!({ "key_id": issued.key_id, "party_id": issued.party, "role": role.as_str(), "secret_shown_once": true })).unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut body = public;
    body["key"] = json!(issued.key);
    tracing::info!(by = %who.party, key_id = %issued.key_id, role = role.as_str(), "api key issued");
    Ok(answer_response(Answer { status: 201, body: serde_json::to_vec(&body).unwrap_or_default() }, false))
}
