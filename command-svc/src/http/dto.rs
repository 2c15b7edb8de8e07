//! Request bodies, separate from domain commands. Each converts with a precise error, so bad
//! input dies here and never reaches the domain. Unknown fields are refused.

use domain::digest::Digest;
use domain::dispute::DisputeOutcome;
use domain::ids::PartyId;
use domain::job::{EXPIRY_SECS_MAX, ResultValue, WorkloadSpec};
use domain::ledger::Provider;
use domain::policy::{TaskClass, Verification, VerificationPolicy};
use domain::{Currency, Money};
use serde::Deserialize;

use super::error::ApiError;

pub const DEFAULT_EXPIRY_SECS: u64 = 7 * 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyDto {
    pub minor_units: u64,
    pub currency: String,
}

impl TryFrom<MoneyDto> for Money {
    type Error = ApiError;
    fn try_from(dto: MoneyDto) -> Result<Money, ApiError> {
        let currency: Currency = dto
            .currency
            .parse()
            .map_err(|e: domain::money::UnknownCurrency| ApiError::invalid("money.currency", e.to_string()))?;
        Money::new(dto.minor_units, currency).map_err(|e| ApiError::invalid("money.too_large", e.to_string()))
    }
}

fn digest(field: &'static str, hex: &str) -> Result<Digest, ApiError> {
    Digest::from_hex(hex).map_err(|e| ApiError::invalid("request.digest", format!("{field}: {e}")))
}

pub fn provider(s: &str) -> Result<Provider, ApiError> {
    match s {
        "stripe" => Ok(Provider::Stripe),
        "yookassa" => Ok(Provider::Yookassa),
        "adyen" => Ok(Provider::Adyen),
        "manual" => Ok(Provider::Manual),
        other => Err(ApiError::invalid(
            "request.provider",
            format!("unknown provider {other:?}: expected stripe, yookassa, adyen or manual"),
        )),
    }
}

/// An empty body, for commands that carry nothing but their path.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordDeposit {
    pub party_id: PartyId,
    pub amount: MoneyDto,
    pub provider: String,
    pub external_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub params: String,
    pub input_digest: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverrides {
    pub replication: Option<u8>,
    pub quorum: Option<u8>,
    /// `exact` or `metric`.
    pub verification: Option<String>,
    pub tolerance_micros: Option<u64>,
    pub window_secs: Option<u64>,
    pub collateral_pct: Option<u8>,
    pub slash_pct: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostJob {
    pub class: String,
    pub reward_per_replica: MoneyDto,
    pub task_count: u32,
    pub workload: Workload,
    pub expires_in_secs: Option<u64>,
    #[serde(default)]
    pub policy: PolicyOverrides,
}

pub fn task_class(s: &str) -> Result<TaskClass, ApiError> {
    [
        TaskClass::DscmVerified,
        TaskClass::ScientificSimulation,
        TaskClass::BiomedicalModeling,
        TaskClass::DataAnalytics,
        TaskClass::DeterministicBaseline,
    ]
    .into_iter()
    .find(|c| c.as_str() == s)
    .ok_or_else(|| ApiError::invalid("job.class", format!("unknown task class {s:?}")))
}

/// A job as the domain wants it: the class's default policy with the overrides applied.
#[derive(Debug)]
pub struct JobSpec {
    pub class: TaskClass,
    pub policy: VerificationPolicy,
    pub reward_per_replica: Money,
    pub task_count: u32,
    pub workload: WorkloadSpec,
    pub expires_in_secs: u64,
}

impl TryFrom<PostJob> for JobSpec {
    type Error = ApiError;
    fn try_from(dto: PostJob) -> Result<JobSpec, ApiError> {
        let class = task_class(&dto.class)?;
        let mut policy = class.defaults();
        let o = dto.policy;
        if let Some(n) = o.replication {
            policy.replication = n;
            policy.quorum = VerificationPolicy::default_quorum(n);
        }
        if let Some(m) = o.quorum {
            policy.quorum = m;
        }
        match (o.verification.as_deref(), o.tolerance_micros) {
            (None, None) => {}
            (Some("exact"), None) => policy.verification = Verification::Exact,
            (Some("metric"), Some(t)) => policy.verification = Verification::Metric { tolerance_micros: t },
            (Some("metric"), None) => {
                return Err(ApiError::invalid("policy.tolerance", "a metric policy needs tolerance_micros"));
            }
            (Some("exact") | None, Some(_)) => {
                return Err(ApiError::invalid(
                    "policy.tolerance",
                    "tolerance_micros applies to metric verification only",
                ));
            }
            (Some(other), _) => {
                return Err(ApiError::invalid("policy.verification", format!("unknown verification {other:?}")));
            }
        }
        if let Some(w) = o.window_secs {
            policy.window_secs = w;
        }
        if let Some(c) = o.collateral_pct {
            policy.collateral_pct = c;
        }
        if let Some(s) = o.slash_pct {
            policy.slash_pct = s;
        }
        let expires_in_secs = dto.expires_in_secs.unwrap_or(DEFAULT_EXPIRY_SECS.min(EXPIRY_SECS_MAX));
        let input_digest =
            dto.workload.input_digest.as_deref().map(|h| digest("workload.input_digest", h)).transpose()?;
        Ok(JobSpec {
            class,
            policy,
            reward_per_replica: dto.reward_per_replica.try_into()?,
            task_count: dto.task_count,
            workload: WorkloadSpec { name: dto.workload.name, params: dto.workload.params, input_digest },
            expires_in_secs,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub task: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitResult {
    pub commitment: String,
}

impl CommitResult {
    pub fn commitment(&self) -> Result<Digest, ApiError> {
        digest("commitment", &self.commitment)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealResult {
    pub result_digest: String,
    pub metric_micros: Option<i64>,
    pub salt: String,
}

impl RevealResult {
    pub fn parts(&self) -> Result<(ResultValue, Digest), ApiError> {
        let result =
            ResultValue { digest: digest("result_digest", &self.result_digest)?, metric_micros: self.metric_micros };
        Ok((result, digest("salt", &self.salt)?))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenChallenge {
    pub reason: String,
    pub bond: MoneyDto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// `refund`, `payout` or `split`.
    pub outcome: String,
    pub client_pct: Option<u8>,
}

impl TryFrom<Outcome> for DisputeOutcome {
    type Error = ApiError;
    fn try_from(dto: Outcome) -> Result<DisputeOutcome, ApiError> {
        match (dto.outcome.as_str(), dto.client_pct) {
            ("refund", None) => Ok(DisputeOutcome::Refund),
            ("payout", None) => Ok(DisputeOutcome::Payout),
            ("split", Some(client_pct)) => Ok(DisputeOutcome::Split { client_pct }),
            ("split", None) => Err(ApiError::invalid("dispute.split_pct", "a split needs client_pct")),
            ("refund" | "payout", Some(_)) => {
                Err(ApiError::invalid("dispute.split_pct", "client_pct applies to a split only"))
            }
            (other, _) => Err(ApiError::invalid(
                "dispute.outcome",
                format!("unknown outcome {other:?}: expected refund, payout or split"),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appeal {
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestPayout {
    pub amount: MoneyDto,
    pub provider: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletePayout {
    pub provider_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailPayout {
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    pub role: String,
    pub party_id: Option<PartyId>,
    pub label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireClaim {
    pub worker_id: PartyId,
}
