//! The Challenge aggregate: someone harmed by a verified result contests it with a bond.
//!
//! Opening takes the bond from the challenger's available balance and asks the job for a
//! re-execution round on fresh workers. Their verdict decides: upheld → the accused workers
//! are slashed and the client refunded for the task, the bond returned; rejected → the bond is
//! forfeited to the platform (which bore the re-execution); inconclusive → the bond returned
//! and a dispute opened for an arbiter.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::{CommandCtx, Role};
use crate::ids::{ChallengeId, DisputeId, JobId, PartyId, name_uuid};
use crate::job::ReexecutionVerdict;
use crate::ledger::{HasPostings, LedgerAccount, Posting};
use crate::money::Money;

pub const REASON_LEN_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeCommand {
    Open {
        challenge: ChallengeId,
        job: JobId,
        task: u32,
        reason: String,
        bond: Money,
    },
    /// Reaction to the job's re-execution round completing.
    Resolve {
        verdict: ReexecutionVerdict,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeStatus {
    None,
    Reexecuting,
    Upheld,
    Rejected,
    Escalated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChallengeEvent {
    ChallengeOpened { challenge: ChallengeId, job: JobId, task: u32, challenger: PartyId, reason: String, bond: Money },
    ChallengeUpheld { job: JobId, task: u32, challenger: PartyId, bond_returned: Money },
    ChallengeRejected { job: JobId, task: u32, challenger: PartyId, bond_forfeited: Money },
    ChallengeEscalated { job: JobId, task: u32, challenger: PartyId, dispute: DisputeId, bond_returned: Money },
}

impl DomainEvent for ChallengeEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ChallengeEvent::ChallengeOpened { .. } => "ChallengeOpened",
            ChallengeEvent::ChallengeUpheld { .. } => "ChallengeUpheld",
            ChallengeEvent::ChallengeRejected { .. } => "ChallengeRejected",
            ChallengeEvent::ChallengeEscalated { .. } => "ChallengeEscalated",
        }
    }
}

/// Postings of a challenge's events (the bond's account is named by the challenge id).
pub fn challenge_postings(id: ChallengeId, event: &ChallengeEvent) -> Vec<Posting> {
    use LedgerAccount as A;
    let bond = A::ChallengeBond { challenge: id };
    match event {
        ChallengeEvent::ChallengeOpened { challenger, bond: amount, .. } => {
            vec![Posting::new(A::Available { party: *challenger }, bond, *amount)]
        }
        ChallengeEvent::ChallengeUpheld { challenger, bond_returned, .. }
        | ChallengeEvent::ChallengeEscalated { challenger, bond_returned, .. } => {
            vec![Posting::new(bond, A::Available { party: *challenger }, *bond_returned)]
        }
        ChallengeEvent::ChallengeRejected { bond_forfeited, .. } => {
            vec![Posting::new(bond, A::PlatformFees, *bond_forfeited)]
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("challenge already opened")]
    AlreadyOpened,
    #[error("no such challenge")]
    NotFound,
    #[error("challenge already resolved")]
    AlreadyResolved,
    #[error("only clients and workers challenge results")]
    NotAllowedToChallenge,
    #[error("only the platform resolves challenges (by re-execution)")]
    NotTheSystem,
    #[error("reason must be 1..={max} characters", max = REASON_LEN_MAX)]
    Reason,
    #[error("bond must be positive")]
    ZeroBond,
    #[error("bond {0} is above the maximum of {max} minor units", max = Money::MAX_MINOR_UNITS)]
    BondTooLarge(u64),
    #[error("insufficient funds for the bond: available {available}, bond {bond}")]
    InsufficientFunds { available: Money, bond: Money },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub opened: Option<(ChallengeId, JobId, u32, PartyId, Money)>,
    pub status: Option<ChallengeStatus>,
}

impl Challenge {
    pub fn status(&self) -> ChallengeStatus {
        self.status.unwrap_or(ChallengeStatus::None)
    }
}

impl Aggregate for Challenge {
    const TYPE: &'static str = "challenge";
    type Command = ChallengeCommand;
    type Event = ChallengeEvent;
    type Error = ChallengeError;

    fn handle(&self, cmd: ChallengeCommand, ctx: &CommandCtx<'_>) -> Result<Vec<ChallengeEvent>, ChallengeError> {
        match cmd {
            ChallengeCommand::Open { challenge, job, task, reason, bond } => {
                if self.opened.is_some() {
                    return Err(ChallengeError::AlreadyOpened);
                }
                if !matches!(ctx.actor.role, Role::Client | Role::Worker) {
                    return Err(ChallengeError::NotAllowedToChallenge);
                }
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > REASON_LEN_MAX {
                    return Err(ChallengeError::Reason);
                }
                if bond.is_zero() {
                    return Err(ChallengeError::ZeroBond);
                }
                if bond.minor_units > Money::MAX_MINOR_UNITS {
                    return Err(ChallengeError::BondTooLarge(bond.minor_units));
                }
                let available = ctx.facts.available(ctx.actor.party, bond.currency);
                if available < bond.minor_units {
                    return Err(ChallengeError::InsufficientFunds {
                        available: Money { minor_units: available, currency: bond.currency },
                        bond,
                    });
                }
                Ok(vec![ChallengeEvent::ChallengeOpened {
                    challenge,
                    job,
                    task,
                    challenger: ctx.actor.party,
                    reason,
                    bond,
                }])
            }
            ChallengeCommand::Resolve { verdict } => {
                if !ctx.actor.is_system() {
                    return Err(ChallengeError::NotTheSystem);
                }
                let (id, job, task, challenger, bond) = self.opened.ok_or(ChallengeError::NotFound)?;
                if self.status() != ChallengeStatus::Reexecuting {
                    return Err(ChallengeError::AlreadyResolved);
                }
                Ok(vec![match verdict {
                    ReexecutionVerdict::Upheld => {
                        ChallengeEvent::ChallengeUpheld { job, task, challenger, bond_returned: bond }
                    }
                    ReexecutionVerdict::Rejected => {
                        ChallengeEvent::ChallengeRejected { job, task, challenger, bond_forfeited: bond }
                    }
                    ReexecutionVerdict::Inconclusive => ChallengeEvent::ChallengeEscalated {
                        job,
                        task,
                        challenger,
                        dispute: DisputeId(name_uuid(&["dispute", "challenge", &id.to_string()])),
                        bond_returned: bond,
                    },
                }])
            }
        }
    }

    fn apply(&mut self, event: &ChallengeEvent) {
        match event {
            ChallengeEvent::ChallengeOpened { challenge, job, task, challenger, bond, .. } => {
                self.opened = Some((*challenge, *job, *task, *challenger, *bond));
                self.status = Some(ChallengeStatus::Reexecuting);
            }
            ChallengeEvent::ChallengeUpheld { .. } => self.status = Some(ChallengeStatus::Upheld),
            ChallengeEvent::ChallengeRejected { .. } => self.status = Some(ChallengeStatus::Rejected),
            ChallengeEvent::ChallengeEscalated { .. } => self.status = Some(ChallengeStatus::Escalated),
        }
    }
}

/// Postings need the challenge id, which the events of one stream do not repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeEventOf<'a> {
    pub challenge: ChallengeId,
    pub event: &'a ChallengeEvent,
}

impl HasPostings for ChallengeEventOf<'_> {
    fn postings(&self) -> Vec<Posting> {
        challenge_postings(self.challenge, self.event)
    }
}
