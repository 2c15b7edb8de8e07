//! The Job aggregate: a client's posted work, its tasks and their replicas, from posting to
//! settlement.
//!
//! Lifecycle: `Posted → Open (funded; tasks claimable) → Running → Verifying →
//! ChallengeWindow → Settled`, with the branches `Cancelled`, `Expired` and `Disputed`.
//! Running/Verifying/ChallengeWindow are read off the tasks (see [`Job::status`]); events
//! record what happened, not derived labels.
//!
//! Each task has N replica slots. A worker claims a slot (TTL 3600 s, extended by
//! heartbeats), computes, commits a hash of its result, and reveals the result only once every
//! slot of the round has committed, so nobody can copy an answer. An expired claim is
//! reassigned after a 30 s cooldown, at most 3 times. When all slots are revealed (or
//! dropped), the quorum rule decides: M equal results verify the task; otherwise a dispute
//! opens. When every task is final, the challenge window opens; when it closes with no
//! challenge or dispute open, the job settles. A challenge adds a re-execution round of k
//! fresh workers to the challenged task.
//!
//! The Job moves no money itself: its events are translated into Escrow, Worker, Challenge and
//! Dispute commands by [`crate::process::react`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::{CommandCtx, Role};
use crate::digest::{Digest, commitment};
use crate::escrow::EscrowTerms;
use crate::ids::{ChallengeId, DisputeId, JobId, PartyId, name_uuid};
use crate::ledger::{HasPostings, Posting};
use crate::money::Money;
use crate::policy::{PolicyError, TaskClass, Verification, VerificationPolicy};
use crate::time::Timestamp;

/// A claim lives this long without a heartbeat.
pub const CLAIM_TTL_SECS: u64 = 3_600;
/// An expired slot can be claimed again after this cooldown…
pub const REASSIGN_COOLDOWN_SECS: u64 = 30;
/// …at most this many times.
pub const REASSIGN_MAX: u8 = 3;
/// Once every slot has committed, each worker has this long to reveal.
pub const REVEAL_TTL_SECS: u64 = 3_600;
/// Fresh workers that re-execute a challenged task.
pub const REEXECUTION_REPLICAS: u8 = 3;
/// A re-execution round not finished in this time is inconclusive: an arbiter decides, so a
/// challenge can never hold the money forever for want of fresh workers.
pub const REEXECUTION_TTL_SECS: u64 = 86_400;
/// BOINC: a worker with at least this many consecutive valid results may run unreplicated.
pub const ADAPTIVE_REPLICATION_MIN_VALID: u32 = 10;
pub const TASK_COUNT_MAX: u32 = 1_000;
pub const EXPIRY_SECS_MIN: u64 = 60;
pub const EXPIRY_SECS_MAX: u64 = 90 * 86_400;
pub const WORKLOAD_NAME_LEN_MAX: usize = 64;
pub const WORKLOAD_PARAMS_LEN_MAX: usize = 4_096;

/// What to run: a named workload with its parameters and optional input digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    pub params: String,
    pub input_digest: Option<Digest>,
}

/// A revealed result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultValue {
    pub digest: Digest,
    pub metric_micros: Option<i64>,
}

impl ResultValue {
    fn agrees_with(&self, other: &ResultValue, verification: Verification) -> bool {
        match verification {
            Verification::Exact => self.digest == other.digest,
            Verification::Metric { tolerance_micros } => match (self.metric_micros, other.metric_micros) {
                (Some(a), Some(b)) => a.abs_diff(b) <= tolerance_micros,
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    Post {
        job: JobId,
        class: TaskClass,
        policy: VerificationPolicy,
        reward_per_replica: Money,
        task_count: u32,
        workload: WorkloadSpec,
        expires_in_secs: u64,
    },
    /// The client commits the budget; the escrow takes it from the client's balance.
    Fund,
    Cancel,
    /// A worker claims a replica slot: of `task`, or the first one it may take.
    ClaimTask {
        task: Option<u32>,
    },
    Heartbeat {
        task: u32,
    },
    CommitResult {
        task: u32,
        commitment: Digest,
    },
    RevealResult {
        task: u32,
        result: ResultValue,
        salt: Digest,
    },
    /// System: a claim passed its deadline.
    ExpireClaim {
        task: u32,
        worker: PartyId,
    },
    /// System: the job passed its deadline with work undone.
    Expire,
    /// System: the challenge window is over.
    CloseChallengeWindow,
    /// Reaction to a challenge being opened.
    RecordChallenge {
        challenge: ChallengeId,
        task: u32,
        challenger: PartyId,
        bond: Money,
    },
    /// Reaction to a challenge being decided.
    ResolveChallenge {
        challenge: ChallengeId,
        outcome: ChallengeOutcome,
    },
    /// System: the challenge's re-execution round did not finish in time.
    ExpireReexecution {
        challenge: ChallengeId,
    },
    /// Reaction to a dispute being closed.
    ResolveDispute {
        dispute: DisputeId,
        client_pct: u8,
    },
}

/// How a challenge ended, as the job needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ChallengeOutcome {
    Upheld,
    Rejected,
    Escalated { dispute: DisputeId },
}

/// The verdict of a re-execution round against the task's accepted result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReexecutionVerdict {
    /// The fresh workers' majority disagrees with the accepted result.
    Upheld,
    /// The fresh workers' majority agrees with it.
    Rejected,
    /// The fresh workers could not agree among themselves.
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    JobPosted {
        job: JobId,
        client: PartyId,
        class: TaskClass,
        policy: VerificationPolicy,
        reward_per_replica: Money,
        task_count: u32,
        budget: Money,
        workload: WorkloadSpec,
        posted_at: Timestamp,
        expires_at: Timestamp,
    },
    /// The escrow takes `budget` from the client on these terms.
    JobFunded {
        budget: Money,
        escrow: EscrowTerms,
    },
    JobCancelled {
        by: PartyId,
    },
    ReplicaClaimed {
        task: u32,
        slot: u8,
        worker: PartyId,
        expires_at: Timestamp,
        collateral: Money,
        reassignment: bool,
        /// Adaptive replication: this task now runs on this one replica.
        unreplicated: bool,
        reexecution: bool,
    },
    ClaimHeartbeat {
        task: u32,
        worker: PartyId,
        expires_at: Timestamp,
    },
    ResultCommitted {
        task: u32,
        worker: PartyId,
        commitment: Digest,
    },
    RevealPhaseStarted {
        task: u32,
        reexecution: bool,
        reveal_deadline: Timestamp,
    },
    ResultRevealed {
        task: u32,
        worker: PartyId,
        result: ResultValue,
    },
    /// The revealed result did not match the commitment: the worker failed verification.
    RevealRejected {
        task: u32,
        worker: PartyId,
    },
    /// A claim expired before the worker committed; the slot cools down and is reassigned.
    ClaimExpired {
        task: u32,
        worker: PartyId,
        at: Timestamp,
        reassignable: bool,
    },
    /// A worker committed but did not reveal in time.
    RevealMissed {
        task: u32,
        worker: PartyId,
    },
    TaskVerified {
        task: u32,
        result: ResultValue,
        accepted: Vec<PartyId>,
        outvoted: Vec<PartyId>,
    },
    /// No quorum: a dispute decides.
    TaskFailedNoQuorum {
        task: u32,
        dispute: DisputeId,
        client: PartyId,
        workers: Vec<PartyId>,
    },
    /// Nobody revealed: nothing to pay for this task.
    TaskAbandoned {
        task: u32,
    },
    JobExpired {
        cancelled_tasks: Vec<u32>,
        collateral_returned: Vec<(u32, PartyId)>,
    },
    ChallengeRecorded {
        challenge: ChallengeId,
        task: u32,
        challenger: PartyId,
        bond: Money,
        reexecution_deadline: Timestamp,
    },
    ReexecutionCompleted {
        challenge: ChallengeId,
        task: u32,
        verdict: ReexecutionVerdict,
    },
    ChallengeOutcomeApplied {
        challenge: ChallengeId,
        task: u32,
        outcome: ChallengeOutcome,
        client: PartyId,
        accused: Vec<PartyId>,
    },
    DisputeOutcomeApplied {
        dispute: DisputeId,
        task: u32,
        client_pct: u8,
        workers: Vec<PartyId>,
    },
    ChallengeWindowOpened {
        closes_at: Timestamp,
    },
    JobSettled {
        verified_tasks: u32,
    },
}

impl DomainEvent for JobEvent {
    fn event_type(&self) -> &'static str {
        match self {
            JobEvent::JobPosted { .. } => "JobPosted",
            JobEvent::JobFunded { .. } => "JobFunded",
            JobEvent::JobCancelled { .. } => "JobCancelled",
            JobEvent::ReplicaClaimed { .. } => "ReplicaClaimed",
            JobEvent::ClaimHeartbeat { .. } => "ClaimHeartbeat",
            JobEvent::ResultCommitted { .. } => "ResultCommitted",
            JobEvent::RevealPhaseStarted { .. } => "RevealPhaseStarted",
            JobEvent::ResultRevealed { .. } => "ResultRevealed",
            JobEvent::RevealRejected { .. } => "RevealRejected",
            JobEvent::ClaimExpired { .. } => "ClaimExpired",
            JobEvent::RevealMissed { .. } => "RevealMissed",
            JobEvent::TaskVerified { .. } => "TaskVerified",
            JobEvent::TaskFailedNoQuorum { .. } => "TaskFailedNoQuorum",
            JobEvent::TaskAbandoned { .. } => "TaskAbandoned",
            JobEvent::JobExpired { .. } => "JobExpired",
            JobEvent::ChallengeRecorded { .. } => "ChallengeRecorded",
            JobEvent::ReexecutionCompleted { .. } => "ReexecutionCompleted",
            JobEvent::ChallengeOutcomeApplied { .. } => "ChallengeOutcomeApplied",
            JobEvent::DisputeOutcomeApplied { .. } => "DisputeOutcomeApplied",
            JobEvent::ChallengeWindowOpened { .. } => "ChallengeWindowOpened",
            JobEvent::JobSettled { .. } => "JobSettled",
        }
    }
}

impl HasPostings for JobEvent {
    /// The job moves no money; its escrow does.
    fn postings(&self) -> Vec<Posting> {
        Vec::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job already posted")]
    AlreadyPosted,
    #[error("job not found")]
    NotFound,
    #[error("only clients post jobs")]
    NotAClient,
    #[error("only the job's client may do this")]
    NotTheClient,
    #[error("only workers claim, commit and reveal")]
    NotAWorker,
    #[error("a party cannot work on its own job")]
    OwnJob,
    #[error("only the platform may do this")]
    NotTheSystem,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("reward per replica must be positive")]
    ZeroReward,
    #[error("task count must be 1..={max}, got {0}", max = TASK_COUNT_MAX)]
    TaskCount(u32),
    #[error("budget overflows")]
    BudgetOverflow,
    #[error("expiry must be {min}..={max} s, got {0}", min = EXPIRY_SECS_MIN, max = EXPIRY_SECS_MAX)]
    Expiry(u64),
    #[error("workload name must be 1..={max} characters of a-z, 0-9, '_' or '-'", max = WORKLOAD_NAME_LEN_MAX)]
    WorkloadName,
    #[error("workload parameters must be at most {max} bytes", max = WORKLOAD_PARAMS_LEN_MAX)]
    WorkloadParams,
    #[error("job is {status:?}; this needs {expected}")]
    WrongStatus { status: JobStatus, expected: &'static str },
    #[error("job has claims; it can no longer be cancelled")]
    HasClaims,
    #[error("job passed its deadline at {expires_at}")]
    JobPastDeadline { expires_at: Timestamp },
    #[error("job deadline {expires_at} not reached")]
    JobDeadlineNotReached { expires_at: Timestamp },
    #[error("no task {0}")]
    NoSuchTask(u32),
    #[error("no slot this worker may claim")]
    NothingToClaim,
    #[error("worker holds no claim on task {0}")]
    NoClaim(u32),
    #[error("claim on task {task} expired at {expires_at}")]
    ClaimExpiredAt { task: u32, expires_at: Timestamp },
    #[error("claim on task {task} is live until {expires_at:?}")]
    ClaimStillLive { task: u32, expires_at: Option<Timestamp> },
    #[error("result already committed")]
    AlreadyCommitted,
    #[error("nothing committed yet")]
    NotCommitted,
    #[error("reveal phase has not started: other replicas have not committed")]
    RevealPhaseNotStarted,
    #[error("result already revealed")]
    AlreadyRevealed,
    #[error("a metric job needs a metric value in the reveal")]
    MetricMissing,
    #[error("challenge window closes at {closes_at}")]
    WindowStillOpen { closes_at: Timestamp },
    #[error("challenge window closed at {closes_at}")]
    WindowClosed { closes_at: Timestamp },
    #[error("challenges or disputes are still open")]
    OpenChallengesOrDisputes,
    #[error("task {0} is not verified")]
    TaskNotVerified(u32),
    #[error("task {0} is already challenged or disputed")]
    TaskAlreadyContested(u32),
    #[error("bond {offered} is below the required {required}")]
    BondTooSmall { offered: Money, required: Money },
    #[error("a worker cannot challenge its own result")]
    ChallengerIsAccused,
    #[error("no such challenge")]
    UnknownChallenge,
    #[error("the re-execution round runs until {until}")]
    ReexecutionStillRunning { until: Timestamp },
    #[error("no such dispute")]
    UnknownDispute,
    #[error("percentage must be 0..=100")]
    Percentage,
}

/// The job's lifecycle state, derived from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Not posted (no events).
    None,
    Posted,
    /// Funded; tasks claimable; nobody has claimed yet.
    Open,
    Running,
    Verifying,
    ChallengeWindow,
    Disputed,
    Settled,
    Cancelled,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Free,
    /// Expired; claimable again from `since + 30 s`.
    Cooling {
        since: Timestamp,
    },
    Claimed {
        worker: PartyId,
        /// `None` while a committed worker waits for the others.
        expires_at: Option<Timestamp>,
        commitment: Option<Digest>,
        revealed: Option<ResultValue>,
    },
    /// Out of this round: reassignments exhausted, reveal missed or rejected, or cut by
    /// adaptive replication.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub state: SlotState,
    pub reassignments: u8,
}

impl Slot {
    fn free() -> Slot {
        Slot { state: SlotState::Free, reassignments: 0 }
    }

    fn worker(&self) -> Option<PartyId> {
        match self.state {
            SlotState::Claimed { worker, .. } => Some(worker),
            _ => None,
        }
    }
}

/// One round of replicas: the original N, or a challenge's k re-executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub slots: Vec<Slot>,
    pub reveal_deadline: Option<Timestamp>,
    pub quorum: u8,
}

impl Round {
    fn new(replicas: u8, quorum: u8) -> Round {
        Round { slots: (0..replicas).map(|_| Slot::free()).collect(), reveal_deadline: None, quorum }
    }

    fn slot_of(&self, worker: PartyId) -> Option<usize> {
        self.slots.iter().position(|s| s.worker() == Some(worker))
    }

    fn all_committed(&self) -> bool {
        self.slots.iter().all(|s| match &s.state {
            SlotState::Claimed { commitment, .. } => commitment.is_some(),
            SlotState::Dropped => true,
            _ => false,
        }) && self.slots.iter().any(|s| s.worker().is_some())
    }

    fn all_final(&self) -> bool {
        self.slots.iter().all(|s| match &s.state {
            SlotState::Claimed { revealed, .. } => revealed.is_some(),
            SlotState::Dropped => true,
            _ => false,
        })
    }

    fn revealed(&self) -> Vec<(PartyId, ResultValue)> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Claimed { worker, revealed: Some(r), .. } => Some((*worker, *r)),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Pending,
    Verified {
        result: ResultValue,
        accepted: Vec<PartyId>,
    },
    NoQuorum {
        dispute: DisputeId,
    },
    Abandoned,
    Cancelled,
    /// A challenge showed the accepted result wrong.
    Overturned,
    /// A dispute decided the task's money.
    DisputeSettled {
        client_pct: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contest {
    pub challenge: Option<ChallengeId>,
    pub dispute: Option<DisputeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub round: Round,
    /// Everyone who ever held a slot of this task, and its challenger: a worker never gets two
    /// replicas of one task, and re-execution goes to fresh workers.
    pub participants: BTreeSet<PartyId>,
    pub outcome: TaskOutcome,
    pub reexecution: Option<(ChallengeId, Round)>,
    pub contest: Option<Contest>,
}

impl Task {
    fn is_final(&self) -> bool {
        !matches!(self.outcome, TaskOutcome::Pending | TaskOutcome::NoQuorum { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub job: JobId,
    pub client: PartyId,
    pub class: TaskClass,
    pub policy: VerificationPolicy,
    pub reward_per_replica: Money,
    pub budget: Money,
    pub workload: WorkloadSpec,
    pub posted_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub terms: Option<Terms>,
    pub funded: bool,
    pub cancelled: bool,
    pub expired: bool,
    pub ever_claimed: bool,
    pub window_closes_at: Option<Timestamp>,
    pub settled: bool,
    pub tasks: Vec<Task>,
    pub open_challenges: BTreeMap<ChallengeId, u32>,
    pub reexecution_deadlines: BTreeMap<ChallengeId, Timestamp>,
    pub open_disputes: BTreeMap<DisputeId, u32>,
}

impl Job {
    pub fn status(&self) -> JobStatus {
        let Some(_) = &self.terms else { return JobStatus::None };
        if self.cancelled {
            return JobStatus::Cancelled;
        }
        if self.settled {
            let verified = self.tasks.iter().any(|t| matches!(t.outcome, TaskOutcome::Verified { .. }));
            return if self.expired && !verified { JobStatus::Expired } else { JobStatus::Settled };
        }
        if !self.funded {
            return if self.expired { JobStatus::Expired } else { JobStatus::Posted };
        }
        if !self.open_disputes.is_empty() {
            return JobStatus::Disputed;
        }
        if self.window_closes_at.is_some() {
            return JobStatus::ChallengeWindow;
        }
        let verifying = self.tasks.iter().any(|t| t.is_final() || t.round.reveal_deadline.is_some());
        if verifying {
            JobStatus::Verifying
        } else if self.ever_claimed {
            JobStatus::Running
        } else {
            JobStatus::Open
        }
    }

    pub fn client(&self) -> Option<PartyId> {
        self.terms.as_ref().map(|t| t.client)
    }

    fn terms(&self) -> Result<&Terms, JobError> {
        self.terms.as_ref().ok_or(JobError::NotFound)
    }

    fn task(&self, task: u32) -> Result<&Task, JobError> {
        self.tasks.get(task as usize).ok_or(JobError::NoSuchTask(task))
    }

    fn wrong(&self, expected: &'static str) -> JobError {
        JobError::WrongStatus { status: self.status(), expected }
    }

    /// The bond a challenger must post: one replica's reward.
    pub fn required_bond(&self) -> Option<Money> {
        self.terms.as_ref().map(|t| t.reward_per_replica)
    }

    fn require_system(ctx: &CommandCtx<'_>) -> Result<(), JobError> {
        if ctx.actor.is_system() { Ok(()) } else { Err(JobError::NotTheSystem) }
    }

    fn require_worker(ctx: &CommandCtx<'_>) -> Result<PartyId, JobError> {
        if ctx.actor.role == Role::Worker { Ok(ctx.actor.party) } else { Err(JobError::NotAWorker) }
    }

    fn require_client(&self, ctx: &CommandCtx<'_>) -> Result<(), JobError> {
        if ctx.actor.role == Role::Client && Some(ctx.actor.party) == self.client() {
            Ok(())
        } else {
            Err(JobError::NotTheClient)
        }
    }

    /// Is the worker's slot in `task` in the original round or the re-execution round?
    /// A task cancelled by the job's expiry voids its claims (their collateral was returned).
    fn round_of(&self, task: &Task, worker: PartyId) -> Option<(bool, usize)> {
        if task.outcome == TaskOutcome::Cancelled {
            return None;
        }
        if let Some(i) = task.round.slot_of(worker) {
            return Some((false, i));
        }
        task.reexecution.as_ref().and_then(|(_, r)| r.slot_of(worker)).map(|i| (true, i))
    }

    fn handle_post(&self, cmd: JobCommand, ctx: &CommandCtx<'_>) -> Result<Vec<JobEvent>, JobError> {
        let JobCommand::Post { job, class, policy, reward_per_replica, task_count, workload, expires_in_secs } = cmd
        else {
            return Err(JobError::NotFound);
        };
        if self.terms.is_some() {
            return Err(JobError::AlreadyPosted);
        }
        if ctx.actor.role != Role::Client {
            return Err(JobError::NotAClient);
        }
        policy.validate()?;
        if reward_per_replica.is_zero() {
            return Err(JobError::ZeroReward);
        }
        if !(1..=TASK_COUNT_MAX).contains(&task_count) {
            return Err(JobError::TaskCount(task_count));
        }
        if !(EXPIRY_SECS_MIN..=EXPIRY_SECS_MAX).contains(&expires_in_secs) {
            return Err(JobError::Expiry(expires_in_secs));
        }
        let name_ok = !workload.name.is_empty()
            && workload.name.len() <= WORKLOAD_NAME_LEN_MAX
            && workload.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(JobError::WorkloadName);
        }
        if workload.params.len() > WORKLOAD_PARAMS_LEN_MAX {
            return Err(JobError::WorkloadParams);
        }
        let budget = reward_per_replica
            .checked_mul(u64::from(policy.replication))
            .and_then(|m| m.checked_mul(u64::from(task_count)))
            .map_err(|_| JobError::BudgetOverflow)?;
        Ok(vec![JobEvent::JobPosted {
            job,
            client: ctx.actor.party,
            class,
            policy,
            reward_per_replica,
            task_count,
            budget,
            workload,
            posted_at: ctx.now,
            expires_at: ctx.now.plus_secs(expires_in_secs),
        }])
    }

    fn handle_claim(&self, wanted: Option<u32>, ctx: &CommandCtx<'_>) -> Result<Vec<JobEvent>, JobError> {
        let terms = self.terms()?;
        let worker = Self::require_worker(ctx)?;
        if worker == terms.client {
            return Err(JobError::OwnJob);
        }
        if !self.funded || self.cancelled || self.settled {
            return Err(self.wrong("a funded, unsettled job"));
        }
        // A challenge's re-execution must be able to finish after the job's own deadline.
        let original_open = !self.expired && ctx.now < terms.expires_at;
        if let Some(t) = wanted {
            self.task(t)?;
        }
        let claimable = |slot: &Slot| match slot.state {
            SlotState::Free => true,
            SlotState::Cooling { since } => ctx.now >= since.plus_secs(REASSIGN_COOLDOWN_SECS),
            _ => false,
        };
        // Re-execution slots first: a challenge is waiting on them.
        for (ti, task) in self.tasks.iter().enumerate() {
            let ti = ti as u32;
            if wanted.is_some_and(|w| w != ti) || task.participants.contains(&worker) {
                continue;
            }
            if let Some((_, round)) = &task.reexecution
                && let Some(si) = round.slots.iter().position(claimable)
            {
                let reassignment = !matches!(round.slots[si].state, SlotState::Free);
                return Ok(vec![JobEvent::ReplicaClaimed {
                    task: ti,
                    slot: si as u8,
                    worker,
                    expires_at: ctx.now.plus_secs(CLAIM_TTL_SECS),
                    collateral: Money::zero(terms.reward_per_replica.currency),
                    reassignment,
                    unreplicated: false,
                    reexecution: true,
                }]);
            }
        }
        for (ti, task) in self.tasks.iter().enumerate() {
            let ti = ti as u32;
            if wanted.is_some_and(|w| w != ti) || task.participants.contains(&worker) {
                continue;
            }
            if !original_open || task.outcome != TaskOutcome::Pending || task.round.reveal_deadline.is_some() {
                continue;
            }
            let Some(si) = task.round.slots.iter().position(claimable) else { continue };
            let reassignment = !matches!(task.round.slots[si].state, SlotState::Free);
            let unreplicated = task.participants.is_empty()
                && task.round.slots.len() > 1
                && trusted_to_run_alone(ctx.facts.consecutive_valid(worker), ctx.facts.random_u64());
            return Ok(vec![JobEvent::ReplicaClaimed {
                task: ti,
                slot: si as u8,
                worker,
                expires_at: ctx.now.plus_secs(CLAIM_TTL_SECS),
                collateral: terms.reward_per_replica.percent_floor(terms.policy.collateral_pct),
                reassignment,
                unreplicated,
                reexecution: false,
            }]);
        }
        if original_open {
            Err(JobError::NothingToClaim)
        } else {
            Err(JobError::JobPastDeadline { expires_at: terms.expires_at })
        }
    }

    /// Evaluate a round that has become final, plus whatever follows for the job.
    fn conclude(&self, task_ix: u32, ctx: &CommandCtx<'_>, out: &mut Vec<JobEvent>) {
        // Work on a scratch copy that already has `out` applied.
        let mut scratch = self.clone();
        for e in out.iter() {
            scratch.apply(e);
        }
        let Some(terms) = scratch.terms.clone() else { return };
        let Some(task) = scratch.tasks.get(task_ix as usize) else { return };
        let verification = terms.policy.verification;
        if let Some((challenge, round)) = &task.reexecution
            && round.all_final()
        {
            let verdict = match (&task.outcome, majority(&round.revealed(), round.quorum, verification)) {
                (_, None) => ReexecutionVerdict::Inconclusive,
                (TaskOutcome::Verified { result, .. }, Some((winner, _))) => {
                    if winner.agrees_with(result, verification) {
                        ReexecutionVerdict::Rejected
                    } else {
                        ReexecutionVerdict::Upheld
                    }
                }
                (_, Some(_)) => ReexecutionVerdict::Inconclusive,
            };
            out.push(JobEvent::ReexecutionCompleted { challenge: *challenge, task: task_ix, verdict });
            return;
        }
        if task.outcome == TaskOutcome::Pending && task.round.all_final() {
            let revealed = task.round.revealed();
            let event = if revealed.is_empty() {
                JobEvent::TaskAbandoned { task: task_ix }
            } else {
                match majority(&revealed, task.round.quorum, verification) {
                    Some((result, accepted)) => {
                        let outvoted = revealed.iter().map(|(w, _)| *w).filter(|w| !accepted.contains(w)).collect();
                        JobEvent::TaskVerified { task: task_ix, result, accepted, outvoted }
                    }
                    None => JobEvent::TaskFailedNoQuorum {
                        task: task_ix,
                        dispute: DisputeId(name_uuid(&[
                            "dispute",
                            "no_quorum",
                            &terms.job.to_string(),
                            &task_ix.to_string(),
                        ])),
                        client: terms.client,
                        workers: revealed.iter().map(|(w, _)| *w).collect(),
                    },
                }
            };
            scratch.apply(&event);
            out.push(event);
        }
        scratch.maybe_finish(ctx, out);
    }

    /// When every task is final and nothing is contested: open the window, or settle.
    fn maybe_finish(&self, ctx: &CommandCtx<'_>, out: &mut Vec<JobEvent>) {
        let Some(terms) = &self.terms else { return };
        if self.settled || self.window_closes_at.is_some() || !self.tasks.iter().all(Task::is_final) {
            return;
        }
        if !self.open_disputes.is_empty() || !self.open_challenges.is_empty() {
            return;
        }
        let verified = self.tasks.iter().filter(|t| matches!(t.outcome, TaskOutcome::Verified { .. })).count() as u32;
        if verified > 0 && terms.policy.window_secs > 0 {
            out.push(JobEvent::ChallengeWindowOpened { closes_at: ctx.now.plus_secs(terms.policy.window_secs) });
        } else {
            out.push(JobEvent::JobSettled { verified_tasks: verified });
        }
    }
}

/// BOINC's adaptive replication: with `cv` consecutive valid results (at least 10), run
/// unreplicated with probability `1 − 1/cv`. `draw` is uniform over u64; integers only.
pub fn trusted_to_run_alone(consecutive_valid: u32, draw: u64) -> bool {
    if consecutive_valid < ADAPTIVE_REPLICATION_MIN_VALID {
        return false;
    }
    let cv = u128::from(consecutive_valid);
    // draw / 2^64 < (cv - 1) / cv  <=>  draw * cv < (cv - 1) * 2^64
    u128::from(draw) * cv < (cv - 1) << 64
}

/// The largest group of agreeing results, if it reaches `quorum` and no different group is
/// as large.
fn majority(
    revealed: &[(PartyId, ResultValue)],
    quorum: u8,
    verification: Verification,
) -> Option<(ResultValue, Vec<PartyId>)> {
    let mut best: Option<(ResultValue, Vec<PartyId>)> = None;
    let mut tied = false;
    for (_, candidate) in revealed {
        let group: Vec<PartyId> =
            revealed.iter().filter(|(_, r)| r.agrees_with(candidate, verification)).map(|(w, _)| *w).collect();
        match &best {
            Some((_, g)) if group.len() < g.len() => {}
            Some((_, g)) if group.len() == g.len() => tied |= group != *g,
            _ => {
                tied = false;
                best = Some((*candidate, group));
            }
        }
    }
    // Two different groups of the same size (possible when M <= N/2) are no majority: an
    // arbiter decides rather than the order of the reveals.
    best.filter(|(_, g)| !tied && g.len() >= usize::from(quorum))
}

impl Aggregate for Job {
    const TYPE: &'static str = "job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;

    fn handle(&self, cmd: JobCommand, ctx: &CommandCtx<'_>) -> Result<Vec<JobEvent>, JobError> {
        if matches!(cmd, JobCommand::Post { .. }) {
            return self.handle_post(cmd, ctx);
        }
        let terms = self.terms()?;
        match cmd {
            JobCommand::Post { .. } => Err(JobError::AlreadyPosted),
            JobCommand::Fund => {
                self.require_client(ctx)?;
                if self.status() != JobStatus::Posted {
                    return Err(self.wrong("a posted, unfunded job"));
                }
                if ctx.now >= terms.expires_at {
                    return Err(JobError::JobPastDeadline { expires_at: terms.expires_at });
                }
                Ok(vec![JobEvent::JobFunded {
                    budget: terms.budget,
                    escrow: EscrowTerms {
                        job: terms.job,
                        client: terms.client,
                        reward_per_replica: terms.reward_per_replica,
                        slash_pct: terms.policy.slash_pct,
                    },
                }])
            }
            JobCommand::Cancel => {
                self.require_client(ctx)?;
                match self.status() {
                    JobStatus::Posted | JobStatus::Open => Ok(vec![JobEvent::JobCancelled { by: ctx.actor.party }]),
                    JobStatus::Running | JobStatus::Verifying => Err(JobError::HasClaims),
                    _ => Err(self.wrong("a posted or open job")),
                }
            }
            JobCommand::ClaimTask { task } => self.handle_claim(task, ctx),
            JobCommand::Heartbeat { task } => {
                let worker = Self::require_worker(ctx)?;
                let t = self.task(task)?;
                let (reexec, si) = self.round_of(t, worker).ok_or(JobError::NoClaim(task))?;
                let round = if reexec { &t.reexecution.as_ref().ok_or(JobError::NoClaim(task))?.1 } else { &t.round };
                match &round.slots[si].state {
                    SlotState::Claimed { expires_at: Some(at), revealed: None, .. } if ctx.now >= *at => {
                        Err(JobError::ClaimExpiredAt { task, expires_at: *at })
                    }
                    SlotState::Claimed { expires_at: Some(_), commitment: None, .. } => {
                        Ok(vec![JobEvent::ClaimHeartbeat {
                            task,
                            worker,
                            expires_at: ctx.now.plus_secs(CLAIM_TTL_SECS),
                        }])
                    }
                    // Committed or revealed: nothing to keep alive (the reveal deadline is fixed).
                    SlotState::Claimed { .. } => Err(JobError::AlreadyCommitted),
                    _ => Err(JobError::NoClaim(task)),
                }
            }
            JobCommand::CommitResult { task, commitment } => {
                let worker = Self::require_worker(ctx)?;
                let t = self.task(task)?;
                let (reexec, si) = self.round_of(t, worker).ok_or(JobError::NoClaim(task))?;
                let round = if reexec { &t.reexecution.as_ref().ok_or(JobError::NoClaim(task))?.1 } else { &t.round };
                match &round.slots[si].state {
                    SlotState::Claimed { commitment: Some(_), .. } => Err(JobError::AlreadyCommitted),
                    SlotState::Claimed { expires_at: Some(at), .. } if ctx.now >= *at => {
                        Err(JobError::ClaimExpiredAt { task, expires_at: *at })
                    }
                    SlotState::Claimed { .. } => {
                        let mut out = vec![JobEvent::ResultCommitted { task, worker, commitment }];
                        let mut scratch = self.clone();
                        scratch.apply(&out[0]);
                        let t2 = &scratch.tasks[task as usize];
                        let r2 = if reexec { t2.reexecution.as_ref().map(|(_, r)| r) } else { Some(&t2.round) };
                        if r2.is_some_and(Round::all_committed) {
                            out.push(JobEvent::RevealPhaseStarted {
                                task,
                                reexecution: reexec,
                                reveal_deadline: ctx.now.plus_secs(REVEAL_TTL_SECS),
                            });
                        }
                        Ok(out)
                    }
                    _ => Err(JobError::NoClaim(task)),
                }
            }
            JobCommand::RevealResult { task, result, salt } => {
                let worker = Self::require_worker(ctx)?;
                let t = self.task(task)?;
                let (reexec, si) = self.round_of(t, worker).ok_or(JobError::NoClaim(task))?;
                let round = if reexec { &t.reexecution.as_ref().ok_or(JobError::NoClaim(task))?.1 } else { &t.round };
                let SlotState::Claimed { commitment, revealed, .. } = &round.slots[si].state else {
                    return Err(JobError::NoClaim(task));
                };
                let Some(committed) = commitment else { return Err(JobError::NotCommitted) };
                if revealed.is_some() {
                    return Err(JobError::AlreadyRevealed);
                }
                let Some(deadline) = round.reveal_deadline else { return Err(JobError::RevealPhaseNotStarted) };
                if ctx.now >= deadline {
                    return Err(JobError::ClaimExpiredAt { task, expires_at: deadline });
                }
                if matches!(terms.policy.verification, Verification::Metric { .. }) && result.metric_micros.is_none() {
                    return Err(JobError::MetricMissing);
                }
                let expected = commitment_for(terms.job, task, worker, &result, salt);
                let mut out = vec![if expected == *committed {
                    JobEvent::ResultRevealed { task, worker, result }
                } else {
                    JobEvent::RevealRejected { task, worker }
                }];
                self.conclude(task, ctx, &mut out);
                Ok(out)
            }
            JobCommand::ExpireClaim { task, worker } => {
                Self::require_system(ctx)?;
                let t = self.task(task)?;
                let (reexec, si) = self.round_of(t, worker).ok_or(JobError::NoClaim(task))?;
                let round = if reexec { &t.reexecution.as_ref().ok_or(JobError::NoClaim(task))?.1 } else { &t.round };
                let slot = &round.slots[si];
                let SlotState::Claimed { expires_at, commitment, revealed, .. } = &slot.state else {
                    return Err(JobError::NoClaim(task));
                };
                if revealed.is_some() {
                    return Err(JobError::AlreadyRevealed);
                }
                let deadline = if commitment.is_some() { round.reveal_deadline } else { *expires_at };
                match deadline {
                    Some(at) if ctx.now >= at => {}
                    other => return Err(JobError::ClaimStillLive { task, expires_at: other }),
                }
                let mut out = vec![if commitment.is_some() {
                    JobEvent::RevealMissed { task, worker }
                } else {
                    JobEvent::ClaimExpired {
                        task,
                        worker,
                        at: ctx.now,
                        reassignable: slot.reassignments < REASSIGN_MAX,
                    }
                }];
                // A dropped slot counts as committed: if it was the last one the others waited
                // for, their reveal phase starts now (or they would wait forever).
                if commitment.is_none() && round.reveal_deadline.is_none() {
                    let mut scratch = self.clone();
                    scratch.apply(&out[0]);
                    let t2 = &scratch.tasks[task as usize];
                    let r2 = if reexec { t2.reexecution.as_ref().map(|(_, r)| r) } else { Some(&t2.round) };
                    if r2.is_some_and(Round::all_committed) {
                        out.push(JobEvent::RevealPhaseStarted {
                            task,
                            reexecution: reexec,
                            reveal_deadline: ctx.now.plus_secs(REVEAL_TTL_SECS),
                        });
                    }
                }
                self.conclude(task, ctx, &mut out);
                Ok(out)
            }
            JobCommand::Expire => {
                Self::require_system(ctx)?;
                if ctx.now < terms.expires_at {
                    return Err(JobError::JobDeadlineNotReached { expires_at: terms.expires_at });
                }
                if self.expired || self.cancelled || self.settled || self.window_closes_at.is_some() {
                    return Err(self.wrong("a job still waiting for work"));
                }
                let mut cancelled_tasks = Vec::new();
                let mut collateral_returned = Vec::new();
                for (ti, t) in self.tasks.iter().enumerate() {
                    if t.outcome != TaskOutcome::Pending {
                        continue;
                    }
                    cancelled_tasks.push(ti as u32);
                    for s in &t.round.slots {
                        if let Some(w) = s.worker() {
                            collateral_returned.push((ti as u32, w));
                        }
                    }
                }
                let mut out = vec![JobEvent::JobExpired { cancelled_tasks, collateral_returned }];
                // An unfunded job has no escrow to settle (its `Release` would be refused).
                if self.funded {
                    let mut scratch = self.clone();
                    scratch.apply(&out[0]);
                    scratch.maybe_finish(ctx, &mut out);
                }
                Ok(out)
            }
            JobCommand::CloseChallengeWindow => {
                Self::require_system(ctx)?;
                let Some(closes_at) = self.window_closes_at else {
                    return Err(self.wrong("an open challenge window"));
                };
                if self.settled {
                    return Err(self.wrong("an open challenge window"));
                }
                if ctx.now < closes_at {
                    return Err(JobError::WindowStillOpen { closes_at });
                }
                if !self.open_challenges.is_empty() || !self.open_disputes.is_empty() {
                    return Err(JobError::OpenChallengesOrDisputes);
                }
                let verified = self.tasks.iter().filter(|t| matches!(t.outcome, TaskOutcome::Verified { .. })).count();
                Ok(vec![JobEvent::JobSettled { verified_tasks: verified as u32 }])
            }
            JobCommand::RecordChallenge { challenge, task, challenger, bond } => {
                Self::require_system(ctx)?;
                let Some(closes_at) = self.window_closes_at.filter(|_| !self.settled) else {
                    return Err(self.wrong("an open challenge window"));
                };
                if ctx.now >= closes_at {
                    return Err(JobError::WindowClosed { closes_at });
                }
                let t = self.task(task)?;
                let TaskOutcome::Verified { accepted, .. } = &t.outcome else {
                    return Err(JobError::TaskNotVerified(task));
                };
                if t.contest.is_some() {
                    return Err(JobError::TaskAlreadyContested(task));
                }
                if accepted.contains(&challenger) {
                    return Err(JobError::ChallengerIsAccused);
                }
                let required = terms.reward_per_replica;
                if bond.currency != required.currency || bond.minor_units < required.minor_units {
                    return Err(JobError::BondTooSmall { offered: bond, required });
                }
                Ok(vec![JobEvent::ChallengeRecorded {
                    challenge,
                    task,
                    challenger,
                    bond,
                    reexecution_deadline: ctx.now.plus_secs(REEXECUTION_TTL_SECS),
                }])
            }
            JobCommand::ResolveChallenge { challenge, outcome } => {
                Self::require_system(ctx)?;
                let task = *self.open_challenges.get(&challenge).ok_or(JobError::UnknownChallenge)?;
                let accused = match &self.task(task)?.outcome {
                    TaskOutcome::Verified { accepted, .. } => accepted.clone(),
                    _ => Vec::new(),
                };
                let mut out =
                    vec![JobEvent::ChallengeOutcomeApplied { challenge, task, outcome, client: terms.client, accused }];
                let mut scratch = self.clone();
                scratch.apply(&out[0]);
                if scratch.window_closes_at.is_none() {
                    scratch.maybe_finish(ctx, &mut out);
                }
                Ok(out)
            }
            JobCommand::ExpireReexecution { challenge } => {
                Self::require_system(ctx)?;
                let task = *self.open_challenges.get(&challenge).ok_or(JobError::UnknownChallenge)?;
                let until = *self.reexecution_deadlines.get(&challenge).ok_or(JobError::UnknownChallenge)?;
                if ctx.now < until {
                    return Err(JobError::ReexecutionStillRunning { until });
                }
                Ok(vec![JobEvent::ReexecutionCompleted { challenge, task, verdict: ReexecutionVerdict::Inconclusive }])
            }
            JobCommand::ResolveDispute { dispute, client_pct } => {
                Self::require_system(ctx)?;
                if client_pct > 100 {
                    return Err(JobError::Percentage);
                }
                let task = *self.open_disputes.get(&dispute).ok_or(JobError::UnknownDispute)?;
                let t = self.task(task)?;
                let workers = match &t.outcome {
                    TaskOutcome::Verified { accepted, .. } => accepted.clone(),
                    _ => t.round.revealed().into_iter().map(|(w, _)| w).collect(),
                };
                let mut out = vec![JobEvent::DisputeOutcomeApplied { dispute, task, client_pct, workers }];
                let mut scratch = self.clone();
                scratch.apply(&out[0]);
                scratch.maybe_finish(ctx, &mut out);
                Ok(out)
            }
        }
    }

    fn apply(&mut self, event: &JobEvent) {
        match event {
            JobEvent::JobPosted {
                job,
                client,
                class,
                policy,
                reward_per_replica,
                task_count,
                budget,
                workload,
                posted_at,
                expires_at,
            } => {
                self.tasks = (0..*task_count)
                    .map(|_| Task {
                        round: Round::new(policy.replication, policy.quorum),
                        participants: BTreeSet::new(),
                        outcome: TaskOutcome::Pending,
                        reexecution: None,
                        contest: None,
                    })
                    .collect();
                self.terms = Some(Terms {
                    job: *job,
                    client: *client,
                    class: *class,
                    policy: *policy,
                    reward_per_replica: *reward_per_replica,
                    budget: *budget,
                    workload: workload.clone(),
                    posted_at: *posted_at,
                    expires_at: *expires_at,
                });
            }
            JobEvent::JobFunded { .. } => self.funded = true,
            JobEvent::JobCancelled { .. } => self.cancelled = true,
            JobEvent::ReplicaClaimed {
                task,
                slot,
                worker,
                expires_at,
                reassignment,
                unreplicated,
                reexecution,
                ..
            } => {
                self.ever_claimed = true;
                let Some(t) = self.tasks.get_mut(*task as usize) else { return };
                t.participants.insert(*worker);
                let round = if *reexecution {
                    match t.reexecution.as_mut() {
                        Some((_, r)) => r,
                        None => return,
                    }
                } else {
                    &mut t.round
                };
                if *unreplicated {
                    round.slots.truncate(1);
                    round.quorum = 1;
                }
                if let Some(s) = round.slots.get_mut(*slot as usize) {
                    if *reassignment {
                        s.reassignments += 1;
                    }
                    s.state = SlotState::Claimed {
                        worker: *worker,
                        expires_at: Some(*expires_at),
                        commitment: None,
                        revealed: None,
                    };
                }
            }
            JobEvent::ClaimHeartbeat { task, worker, expires_at } => {
                self.with_slot(*task, *worker, |s| {
                    if let SlotState::Claimed { expires_at: e, .. } = &mut s.state {
                        *e = Some(*expires_at);
                    }
                });
            }
            JobEvent::ResultCommitted { task, worker, commitment: c } => {
                self.with_slot(*task, *worker, |s| {
                    if let SlotState::Claimed { expires_at, commitment, .. } = &mut s.state {
                        *commitment = Some(*c);
                        *expires_at = None;
                    }
                });
            }
            JobEvent::RevealPhaseStarted { task, reexecution, reveal_deadline } => {
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    let round = if *reexecution { t.reexecution.as_mut().map(|(_, r)| r) } else { Some(&mut t.round) };
                    if let Some(r) = round {
                        r.reveal_deadline = Some(*reveal_deadline);
                    }
                }
            }
            JobEvent::ResultRevealed { task, worker, result } => {
                self.with_slot(*task, *worker, |s| {
                    if let SlotState::Claimed { revealed, .. } = &mut s.state {
                        *revealed = Some(*result);
                    }
                });
            }
            JobEvent::RevealRejected { task, worker } | JobEvent::RevealMissed { task, worker } => {
                self.with_slot(*task, *worker, |s| s.state = SlotState::Dropped);
            }
            JobEvent::ClaimExpired { task, worker, at, reassignable } => {
                self.with_slot(*task, *worker, |s| {
                    s.state = if *reassignable { SlotState::Cooling { since: *at } } else { SlotState::Dropped };
                });
            }
            JobEvent::TaskVerified { task, result, accepted, .. } => {
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.outcome = TaskOutcome::Verified { result: *result, accepted: accepted.clone() };
                }
            }
            JobEvent::TaskFailedNoQuorum { task, dispute, .. } => {
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.outcome = TaskOutcome::NoQuorum { dispute: *dispute };
                    t.contest = Some(Contest { challenge: None, dispute: Some(*dispute) });
                }
                self.open_disputes.insert(*dispute, *task);
            }
            JobEvent::TaskAbandoned { task } => {
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.outcome = TaskOutcome::Abandoned;
                }
            }
            JobEvent::JobExpired { cancelled_tasks, .. } => {
                self.expired = true;
                for ti in cancelled_tasks {
                    if let Some(t) = self.tasks.get_mut(*ti as usize) {
                        t.outcome = TaskOutcome::Cancelled;
                    }
                }
            }
            JobEvent::ChallengeRecorded { challenge, task, challenger, reexecution_deadline, .. } => {
                self.open_challenges.insert(*challenge, *task);
                self.reexecution_deadlines.insert(*challenge, *reexecution_deadline);
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.contest = Some(Contest { challenge: Some(*challenge), dispute: None });
                    t.participants.insert(*challenger);
                    t.reexecution = Some((*challenge, Round::new(REEXECUTION_REPLICAS, REEXECUTION_REPLICAS / 2 + 1)));
                }
            }
            JobEvent::ReexecutionCompleted { challenge, .. } => {
                self.reexecution_deadlines.remove(challenge);
            }
            JobEvent::ChallengeOutcomeApplied { challenge, task, outcome, .. } => {
                self.open_challenges.remove(challenge);
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.reexecution = None;
                    match outcome {
                        ChallengeOutcome::Upheld => {
                            t.outcome = TaskOutcome::Overturned;
                            t.contest = None;
                        }
                        ChallengeOutcome::Rejected => t.contest = None,
                        ChallengeOutcome::Escalated { dispute } => {
                            t.contest = Some(Contest { challenge: None, dispute: Some(*dispute) });
                            self.open_disputes.insert(*dispute, *task);
                        }
                    }
                }
            }
            JobEvent::DisputeOutcomeApplied { dispute, task, client_pct, .. } => {
                self.open_disputes.remove(dispute);
                if let Some(t) = self.tasks.get_mut(*task as usize) {
                    t.contest = None;
                    t.outcome = TaskOutcome::DisputeSettled { client_pct: *client_pct };
                }
            }
            JobEvent::ChallengeWindowOpened { closes_at } => self.window_closes_at = Some(*closes_at),
            JobEvent::JobSettled { .. } => self.settled = true,
        }
    }
}

impl Job {
    fn with_slot(&mut self, task: u32, worker: PartyId, f: impl FnOnce(&mut Slot)) {
        let Some(t) = self.tasks.get_mut(task as usize) else { return };
        if let Some(i) = t.round.slot_of(worker) {
            f(&mut t.round.slots[i]);
        } else if let Some((_, r)) = t.reexecution.as_mut()
            && let Some(i) = r.slot_of(worker)
        {
            f(&mut r.slots[i]);
        }
    }
}

/// The commitment a worker must have sent for this reveal.
pub fn commitment_for(job: JobId, task: u32, worker: PartyId, result: &ResultValue, salt: Digest) -> Digest {
    commitment(job, task, worker, result.digest, result.metric_micros, salt)
}

#[cfg(test)]
mod tests;
