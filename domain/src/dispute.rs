//! The Dispute aggregate: an arbiter decides what a contested task's money does.
//!
//! `Opened → UnderReview → Resolved(refund | payout | split) → [Appealed →] Closed`.
//! Deadlines, and what happens when they pass:
//! - review: `opened_at + review_secs` (≥ 300 s, default 3600 s). Passing it unresolved
//!   resolves the dispute as a **refund** to the client (the platform failed to decide; the
//!   client, who paid, is made whole).
//! - appeal: `resolved_at + 3600 s`. Passing it closes the dispute with the resolution.
//! - appeal decision: `appealed_at + 3600 s`. Passing it closes the dispute with the first
//!   resolution (an appeal nobody decides does not change the outcome).
//!
//! Money moves once, when the dispute **closes** (an appeal can still change the outcome
//! before that).

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::{CommandCtx, Role};
use crate::ids::{DisputeId, JobId, PartyId};
use crate::ledger::{HasPostings, Posting};
use crate::time::Timestamp;

pub const REVIEW_SECS_MIN: u64 = 300;
pub const REVIEW_SECS_DEFAULT: u64 = 3_600;
pub const REVIEW_SECS_MAX: u64 = 30 * 86_400;
pub const APPEAL_SECS: u64 = 3_600;

/// What a dispute decides about the task's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// Everything at stake back to the client.
    Refund,
    /// Everything at stake to the workers.
    Payout,
    /// `client_pct` percent to the client, the rest to the workers.
    Split { client_pct: u8 },
}

impl DisputeOutcome {
    pub fn client_pct(self) -> u8 {
        match self {
            DisputeOutcome::Refund => 100,
            DisputeOutcome::Payout => 0,
            DisputeOutcome::Split { client_pct } => client_pct,
        }
    }
}

/// Why the dispute exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeReason {
    NoQuorum,
    ChallengeInconclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DisputeCommand {
    /// System: a task failed quorum, or a challenge's re-execution was inconclusive.
    Open {
        dispute: DisputeId,
        job: JobId,
        task: u32,
        client: PartyId,
        workers: Vec<PartyId>,
        reason: DisputeReason,
        review_secs: Option<u64>,
    },
    StartReview,
    Resolve {
        outcome: DisputeOutcome,
    },
    Appeal {
        reason: String,
    },
    DecideAppeal {
        outcome: DisputeOutcome,
    },
    /// System: the review deadline passed.
    ExpireReview,
    /// System: the appeal deadline (or the appeal decision deadline) passed.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    None,
    Opened,
    UnderReview,
    Resolved,
    Appealed,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DisputeEvent {
    DisputeOpened {
        dispute: DisputeId,
        job: JobId,
        task: u32,
        client: PartyId,
        workers: Vec<PartyId>,
        reason: DisputeReason,
        review_deadline: Timestamp,
    },
    ReviewStarted {
        arbiter: PartyId,
    },
    DisputeResolved {
        outcome: DisputeOutcome,
        by: Option<PartyId>,
        appeal_deadline: Timestamp,
    },
    DisputeAppealed {
        by: PartyId,
        reason: String,
        decision_deadline: Timestamp,
    },
    /// Money moves on this event (through the job and its escrow).
    DisputeClosed {
        job: JobId,
        task: u32,
        outcome: DisputeOutcome,
    },
}

impl DomainEvent for DisputeEvent {
    fn event_type(&self) -> &'static str {
        match self {
            DisputeEvent::DisputeOpened { .. } => "DisputeOpened",
            DisputeEvent::ReviewStarted { .. } => "ReviewStarted",
            DisputeEvent::DisputeResolved { .. } => "DisputeResolved",
            DisputeEvent::DisputeAppealed { .. } => "DisputeAppealed",
            DisputeEvent::DisputeClosed { .. } => "DisputeClosed",
        }
    }
}

impl HasPostings for DisputeEvent {
    fn postings(&self) -> Vec<Posting> {
        Vec::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisputeError {
    #[error("dispute already opened")]
    AlreadyOpened,
    #[error("no such dispute")]
    NotFound,
    #[error("disputes are opened by the platform")]
    NotTheSystem,
    #[error("only arbiters review and resolve disputes")]
    NotAnArbiter,
    #[error("only the arbiter reviewing this dispute may resolve it")]
    NotTheReviewingArbiter,
    #[error("an appeal is decided by a different arbiter than the first resolution")]
    SameArbiterOnAppeal,
    #[error("only the client or a worker of the task may appeal")]
    NotAParty,
    #[error("dispute is {status:?}; this needs {expected}")]
    WrongStatus { status: DisputeStatus, expected: &'static str },
    #[error("review time must be {min}..={max} s, got {0}", min = REVIEW_SECS_MIN, max = REVIEW_SECS_MAX)]
    ReviewTime(u64),
    #[error("split percentage must be 1..=99 (use refund or payout for 100 and 0)")]
    SplitPct,
    #[error("deadline {deadline} has passed")]
    DeadlinePassed { deadline: Timestamp },
    #[error("deadline {deadline} not reached")]
    DeadlineNotReached { deadline: Timestamp },
    #[error("appeal reason must be 1..=1000 characters")]
    Reason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispute {
    pub opened: Option<(DisputeId, JobId, u32, PartyId, Vec<PartyId>)>,
    pub status: Option<DisputeStatus>,
    pub arbiter: Option<PartyId>,
    pub resolved_by: Option<PartyId>,
    pub outcome: Option<DisputeOutcome>,
    /// The deadline that matters in the current state.
    pub deadline: Option<Timestamp>,
}

impl Dispute {
    pub fn status(&self) -> DisputeStatus {
        self.status.unwrap_or(DisputeStatus::None)
    }

    fn wrong(&self, expected: &'static str) -> DisputeError {
        DisputeError::WrongStatus { status: self.status(), expected }
    }

    fn validate_outcome(outcome: DisputeOutcome) -> Result<(), DisputeError> {
        match outcome {
            DisputeOutcome::Split { client_pct } if !(1..=99).contains(&client_pct) => Err(DisputeError::SplitPct),
            _ => Ok(()),
        }
    }

    fn before_deadline(&self, now: Timestamp) -> Result<(), DisputeError> {
        match self.deadline {
            Some(deadline) if now >= deadline => Err(DisputeError::DeadlinePassed { deadline }),
            _ => Ok(()),
        }
    }

    fn after_deadline(&self, now: Timestamp) -> Result<(), DisputeError> {
        match self.deadline {
            Some(deadline) if now < deadline => Err(DisputeError::DeadlineNotReached { deadline }),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Dispute {
    const TYPE: &'static str = "dispute";
    type Command = DisputeCommand;
    type Event = DisputeEvent;
    type Error = DisputeError;

    fn handle(&self, cmd: DisputeCommand, ctx: &CommandCtx<'_>) -> Result<Vec<DisputeEvent>, DisputeError> {
        let arbiter =
            || if ctx.actor.role == Role::Arbiter { Ok(ctx.actor.party) } else { Err(DisputeError::NotAnArbiter) };
        let system = || if ctx.actor.is_system() { Ok(()) } else { Err(DisputeError::NotTheSystem) };
        if let DisputeCommand::Open { dispute, job, task, client, workers, reason, review_secs } = cmd {
            system()?;
            if self.opened.is_some() {
                return Err(DisputeError::AlreadyOpened);
            }
            let review_secs = review_secs.unwrap_or(REVIEW_SECS_DEFAULT);
            if !(REVIEW_SECS_MIN..=REVIEW_SECS_MAX).contains(&review_secs) {
                return Err(DisputeError::ReviewTime(review_secs));
            }
            return Ok(vec![DisputeEvent::DisputeOpened {
                dispute,
                job,
                task,
                client,
                workers,
                reason,
                review_deadline: ctx.now.plus_secs(review_secs),
            }]);
        }
        let Some((_, job, task, client, workers)) = &self.opened else { return Err(DisputeError::NotFound) };
        let close = |outcome| DisputeEvent::DisputeClosed { job: *job, task: *task, outcome };
        match cmd {
            DisputeCommand::Open { .. } => Err(DisputeError::AlreadyOpened),
            DisputeCommand::StartReview => {
                let arbiter = arbiter()?;
                if self.status() != DisputeStatus::Opened {
                    return Err(self.wrong("an opened dispute"));
                }
                self.before_deadline(ctx.now)?;
                Ok(vec![DisputeEvent::ReviewStarted { arbiter }])
            }
            DisputeCommand::Resolve { outcome } => {
                let by = arbiter()?;
                if self.status() != DisputeStatus::UnderReview {
                    return Err(self.wrong("a dispute under review"));
                }
                if self.arbiter != Some(by) {
                    return Err(DisputeError::NotTheReviewingArbiter);
                }
                Self::validate_outcome(outcome)?;
                self.before_deadline(ctx.now)?;
                Ok(vec![DisputeEvent::DisputeResolved {
                    outcome,
                    by: Some(by),
                    appeal_deadline: ctx.now.plus_secs(APPEAL_SECS),
                }])
            }
            DisputeCommand::Appeal { reason } => {
                let party = ctx.actor.party;
                let is_party = (ctx.actor.role == Role::Client && party == *client)
                    || (ctx.actor.role == Role::Worker && workers.contains(&party));
                if !is_party {
                    return Err(DisputeError::NotAParty);
                }
                if self.status() != DisputeStatus::Resolved {
                    return Err(self.wrong("a resolved dispute"));
                }
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > 1_000 {
                    return Err(DisputeError::Reason);
                }
                self.before_deadline(ctx.now)?;
                Ok(vec![DisputeEvent::DisputeAppealed {
                    by: party,
                    reason,
                    decision_deadline: ctx.now.plus_secs(APPEAL_SECS),
                }])
            }
            DisputeCommand::DecideAppeal { outcome } => {
                let by = arbiter()?;
                if self.status() != DisputeStatus::Appealed {
                    return Err(self.wrong("an appealed dispute"));
                }
                if self.resolved_by == Some(by) {
                    return Err(DisputeError::SameArbiterOnAppeal);
                }
                Self::validate_outcome(outcome)?;
                self.before_deadline(ctx.now)?;
                Ok(vec![close(outcome)])
            }
            DisputeCommand::ExpireReview => {
                system()?;
                if !matches!(self.status(), DisputeStatus::Opened | DisputeStatus::UnderReview) {
                    return Err(self.wrong("a dispute awaiting review"));
                }
                self.after_deadline(ctx.now)?;
                Ok(vec![DisputeEvent::DisputeResolved {
                    outcome: DisputeOutcome::Refund,
                    by: None,
                    appeal_deadline: ctx.now.plus_secs(APPEAL_SECS),
                }])
            }
            DisputeCommand::Close => {
                system()?;
                if !matches!(self.status(), DisputeStatus::Resolved | DisputeStatus::Appealed) {
                    return Err(self.wrong("a resolved or appealed dispute"));
                }
                self.after_deadline(ctx.now)?;
                let outcome = self.outcome.ok_or(DisputeError::NotFound)?;
                Ok(vec![close(outcome)])
            }
        }
    }

    fn apply(&mut self, event: &DisputeEvent) {
        match event {
            DisputeEvent::DisputeOpened { dispute, job, task, client, workers, review_deadline, .. } => {
                self.opened = Some((*dispute, *job, *task, *client, workers.clone()));
                self.status = Some(DisputeStatus::Opened);
                self.deadline = Some(*review_deadline);
            }
            DisputeEvent::ReviewStarted { arbiter } => {
                self.status = Some(DisputeStatus::UnderReview);
                self.arbiter = Some(*arbiter);
            }
            DisputeEvent::DisputeResolved { outcome, by, appeal_deadline } => {
                self.status = Some(DisputeStatus::Resolved);
                self.outcome = Some(*outcome);
                self.resolved_by = *by;
                self.deadline = Some(*appeal_deadline);
            }
            DisputeEvent::DisputeAppealed { decision_deadline, .. } => {
                self.status = Some(DisputeStatus::Appealed);
                self.deadline = Some(*decision_deadline);
            }
            DisputeEvent::DisputeClosed { outcome, .. } => {
                self.status = Some(DisputeStatus::Closed);
                self.outcome = Some(*outcome);
                self.deadline = None;
            }
        }
    }
}
