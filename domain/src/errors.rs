//! Every refusal gets a stable machine code (`<aggregate>.<rule>`) and a kind that says what
//! sort of refusal it is. The HTTP layer turns the kind into a status and the code into the
//! `code` of a problem+json body; clients may match on codes, so a code never changes meaning.
//! The matches are exhaustive: a new error variant does not compile until it is classified.

use crate::challenge::ChallengeError;
use crate::dispute::DisputeError;
use crate::escrow::EscrowError;
use crate::funds::{DepositError, PayoutError};
use crate::job::JobError;
use crate::market::MarketError;
use crate::policy::PolicyError;
use crate::worker::WorkerError;

/// What sort of refusal an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The actor may not do this (role or ownership).
    Forbidden,
    /// The thing addressed does not exist.
    NotFound,
    /// The request is well-formed but breaks a rule about values (bad amount, bad policy).
    Invalid,
    /// The request is fine but the current state does not allow it (wrong status, deadline,
    /// insufficient funds).
    Conflict,
}

impl MarketError {
    pub fn code(&self) -> &'static str {
        self.classify().0
    }

    pub fn kind(&self) -> ErrorKind {
        self.classify().1
    }

    fn classify(&self) -> (&'static str, ErrorKind) {
        use ErrorKind::*;
        match self {
            MarketError::Job(e) => match e {
                JobError::AlreadyPosted => ("job.already_posted", Conflict),
                JobError::NotFound => ("job.not_found", NotFound),
                JobError::NotAClient => ("job.not_a_client", Forbidden),
                JobError::NotTheClient => ("job.not_the_client", Forbidden),
                JobError::NotAWorker => ("job.not_a_worker", Forbidden),
                JobError::OwnJob => ("job.own_job", Forbidden),
                JobError::NotTheSystem => ("job.not_the_system", Forbidden),
                JobError::Policy(p) => (policy_code(p), Invalid),
                JobError::ZeroReward => ("job.zero_reward", Invalid),
                JobError::TaskCount(_) => ("job.task_count", Invalid),
                JobError::BudgetOverflow => ("job.budget_overflow", Invalid),
                JobError::Expiry(_) => ("job.expiry", Invalid),
                JobError::WorkloadName => ("job.workload_name", Invalid),
                JobError::WorkloadParams => ("job.workload_params", Invalid),
                JobError::WrongStatus { .. } => ("job.wrong_status", Conflict),
                JobError::HasClaims => ("job.has_claims", Conflict),
                JobError::JobPastDeadline { .. } => ("job.past_deadline", Conflict),
                JobError::JobDeadlineNotReached { .. } => ("job.deadline_not_reached", Conflict),
                JobError::NoSuchTask(_) => ("job.no_such_task", NotFound),
                JobError::NothingToClaim => ("job.nothing_to_claim", Conflict),
                JobError::NoClaim(_) => ("job.no_claim", Forbidden),
                JobError::ClaimExpiredAt { .. } => ("job.claim_expired", Conflict),
                JobError::ClaimStillLive { .. } => ("job.claim_still_live", Conflict),
                JobError::AlreadyCommitted => ("job.already_committed", Conflict),
                JobError::NotCommitted => ("job.not_committed", Conflict),
                JobError::RevealPhaseNotStarted => ("job.reveal_phase_not_started", Conflict),
                JobError::AlreadyRevealed => ("job.already_revealed", Conflict),
                JobError::MetricMissing => ("job.metric_missing", Invalid),
                JobError::WindowStillOpen { .. } => ("job.window_still_open", Conflict),
                JobError::WindowClosed { .. } => ("job.window_closed", Conflict),
                JobError::OpenChallengesOrDisputes => ("job.open_challenges_or_disputes", Conflict),
                JobError::TaskNotVerified(_) => ("job.task_not_verified", Conflict),
                JobError::TaskAlreadyContested(_) => ("job.task_already_contested", Conflict),
                JobError::BondTooSmall { .. } => ("job.bond_too_small", Invalid),
                JobError::ChallengerIsAccused => ("job.challenger_is_accused", Forbidden),
                JobError::UnknownChallenge => ("job.unknown_challenge", NotFound),
                JobError::ReexecutionStillRunning { .. } => ("job.reexecution_still_running", Conflict),
                JobError::UnknownDispute => ("job.unknown_dispute", NotFound),
                JobError::Percentage => ("job.percentage", Invalid),
            },
            MarketError::Escrow(e) => match e {
                EscrowError::NotTheSystem => ("escrow.not_the_system", Forbidden),
                EscrowError::AlreadyFunded => ("escrow.already_funded", Conflict),
                EscrowError::NotFunded => ("escrow.not_funded", Conflict),
                EscrowError::Closed => ("escrow.closed", Conflict),
                EscrowError::WrongCurrency { .. } => ("escrow.wrong_currency", Invalid),
                EscrowError::ZeroAmount => ("escrow.zero_amount", Invalid),
                EscrowError::InsufficientFunds { .. } => ("escrow.insufficient_funds", Conflict),
                EscrowError::CollateralAlreadyHeld { .. } => ("escrow.collateral_already_held", Conflict),
                EscrowError::EscrowExhausted { .. } => ("escrow.exhausted", Conflict),
                EscrowError::AlreadyPaid { .. } => ("escrow.already_paid", Conflict),
                EscrowError::ReleaseBeforeWindowClosed { .. } => ("escrow.release_before_window_closed", Conflict),
                EscrowError::Percentage => ("escrow.percentage", Invalid),
                EscrowError::PendingPayments => ("escrow.pending_payments", Conflict),
            },
            MarketError::Challenge(e) => match e {
                ChallengeError::AlreadyOpened => ("challenge.already_opened", Conflict),
                ChallengeError::NotFound => ("challenge.not_found", NotFound),
                ChallengeError::AlreadyResolved => ("challenge.already_resolved", Conflict),
                ChallengeError::NotAllowedToChallenge => ("challenge.not_allowed", Forbidden),
                ChallengeError::NotTheSystem => ("challenge.not_the_system", Forbidden),
                ChallengeError::Reason => ("challenge.reason", Invalid),
                ChallengeError::ZeroBond => ("challenge.zero_bond", Invalid),
                ChallengeError::BondTooLarge(_) => ("challenge.bond_too_large", Invalid),
                ChallengeError::InsufficientFunds { .. } => ("challenge.insufficient_funds", Conflict),
            },
            MarketError::Dispute(e) => match e {
                DisputeError::AlreadyOpened => ("dispute.already_opened", Conflict),
                DisputeError::NotFound => ("dispute.not_found", NotFound),
                DisputeError::NotTheSystem => ("dispute.not_the_system", Forbidden),
                DisputeError::NotAnArbiter => ("dispute.not_an_arbiter", Forbidden),
                DisputeError::NotTheReviewingArbiter => ("dispute.not_the_reviewing_arbiter", Forbidden),
                DisputeError::SameArbiterOnAppeal => ("dispute.same_arbiter_on_appeal", Forbidden),
                DisputeError::NotAParty => ("dispute.not_a_party", Forbidden),
                DisputeError::WrongStatus { .. } => ("dispute.wrong_status", Conflict),
                DisputeError::ReviewTime(_) => ("dispute.review_time", Invalid),
                DisputeError::SplitPct => ("dispute.split_pct", Invalid),
                DisputeError::DeadlinePassed { .. } => ("dispute.deadline_passed", Conflict),
                DisputeError::DeadlineNotReached { .. } => ("dispute.deadline_not_reached", Conflict),
                DisputeError::Reason => ("dispute.reason", Invalid),
            },
            MarketError::Worker(e) => match e {
                WorkerError::NotTheSystem => ("worker.not_the_system", Forbidden),
            },
            MarketError::Deposit(e) => match e {
                DepositError::NotFinance => ("deposit.not_finance", Forbidden),
                DepositError::ZeroAmount => ("deposit.zero_amount", Invalid),
                DepositError::AmountTooLarge(_) => ("deposit.amount_too_large", Invalid),
                DepositError::ExternalRef => ("deposit.external_ref", Invalid),
                DepositError::ReferenceReused { .. } => ("deposit.reference_reused", Conflict),
            },
            MarketError::Payout(e) => match e {
                PayoutError::AlreadyRequested => ("payout.already_requested", Conflict),
                PayoutError::NotFound => ("payout.not_found", NotFound),
                PayoutError::AlreadyFinished(_) => ("payout.already_finished", Conflict),
                PayoutError::NotAllowed => ("payout.not_allowed", Forbidden),
                PayoutError::NotFinance => ("payout.not_finance", Forbidden),
                PayoutError::ZeroAmount => ("payout.zero_amount", Invalid),
                PayoutError::AmountTooLarge(_) => ("payout.amount_too_large", Invalid),
                PayoutError::InsufficientFunds { .. } => ("payout.insufficient_funds", Conflict),
            },
            MarketError::TooManyReactions => ("market.too_many_reactions", Conflict),
        }
    }
}

fn policy_code(e: &PolicyError) -> &'static str {
    match e {
        PolicyError::Replication(_) => "policy.replication",
        PolicyError::Quorum { .. } => "policy.quorum",
        PolicyError::Window(_) => "policy.window",
        PolicyError::CollateralPct(_) => "policy.collateral_pct",
        PolicyError::SlashPct(_) => "policy.slash_pct",
        PolicyError::Tolerance(_) => "policy.tolerance",
    }
}
